"""IMAP responses for the stress sessions: framing (line + literals) and parsing.

The stress sessions need every untagged response taken apart (the model checks each), so they
read responses one at a time off the load client's Connection instead of the counting fast
path. FETCH data goes through imapclient's parser; the most common response of all, a bare
``* n FETCH (UID u FLAGS (...))``, has a regex fast path (imapclient costs ~40 us for it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imapclient.exceptions import ProtocolError as ImapclientProtocolError
from imapclient.response_parser import parse_fetch_response

from harness.load.wire import CommandFailed, Connection, WireError

_LITERAL_AT_END = re.compile(rb"~?\{(\d+)\+?\}$")
_UNTAGGED_NUM = re.compile(rb"\* (\d+) ([A-Za-z]+)")
_FLAGS_ONLY = re.compile(rb"\* (\d+) FETCH \((?:UID (\d+) )?FLAGS \(([^()]*)\)(?: UID (\d+))?\)$", re.IGNORECASE)
_CODE = re.compile(rb"\[([A-Za-z-]+)(?: ([^\]]*))?\]")
MAX_LITERAL = 8 * 1024 * 1024  # a stress message is ~30 KB; more is a hostile server
MAX_RESPONSE = 32 * 1024 * 1024  # all literals of one response together


class ResponseError(WireError):
    """A response the stress session could not take apart."""


@dataclass(slots=True)
class Response:
    """One response: ``segments`` alternate line, literal, line, ...; lines without CRLF."""

    segments: list[bytes]

    @property
    def line(self) -> bytes:
        return self.segments[0]

    def text(self) -> bytes:
        """The response with literal data replaced by its length marker (for transcripts)."""
        return self.segments[0] if len(self.segments) == 1 else b" ".join(
            s if i % 2 == 0 else b"<%d octets>" % len(s) for i, s in enumerate(self.segments))


def read_response(conn: Connection) -> Response:
    """The next whole response (its literals included) from the connection."""
    segments = [conn.read_line()]
    total = 0
    while (m := _LITERAL_AT_END.search(segments[-1])) is not None:
        size = int(m.group(1))
        total += size
        if size > MAX_LITERAL or total > MAX_RESPONSE:
            raise ResponseError(f"a literal of {size} octets ({total} in this response)")
        segments.append(conn.take(size))
        segments.append(conn.read_line())
    return Response(segments)


def untagged_kind(line: bytes) -> tuple[int | None, bytes]:
    """(3, b"EXISTS") for ``* 3 EXISTS``; (None, b"FLAGS") for ``* FLAGS (...)``."""
    m = _UNTAGGED_NUM.match(line)
    if m:
        return int(m.group(1)), m.group(2).upper()
    word = line[2:].split(b" ", 1)[0]
    return None, word.upper()


def parse_fetch(resp: Response) -> tuple[int, dict]:
    """(sequence number, items) of a ``* n FETCH (...)``; items keyed like imapclient (b"UID", b"FLAGS", b"BODY[]<0>")."""
    if len(resp.segments) == 1:
        m = _FLAGS_ONLY.match(resp.line)
        if m:
            items: dict = {b"FLAGS": tuple(m.group(3).split())}
            uid = m.group(2) or m.group(4)
            if uid:
                items[b"UID"] = int(uid)
            return int(m.group(1)), items
    words = resp.line.split(b" ", 2)
    if len(words) < 3:
        raise ResponseError(f"malformed FETCH response {resp.line[:120]!r}")
    data: list = []
    segs = resp.segments
    first = words[1] + b" " + words[2][len(b"FETCH "):] if words[2][:6].upper() == b"FETCH " else None
    if first is None:
        raise ResponseError(f"malformed FETCH response {resp.line[:120]!r}")
    lines = [first, *segs[2::2]]
    for i, text in enumerate(lines):
        literal = segs[2 * i + 1] if 2 * i + 1 < len(segs) else None
        if literal is not None:
            data.append((_LITERAL_AT_END.sub(lambda m: b"{%s}" % m.group(1), text), literal))
        else:
            data.append(text)
    try:
        parsed = parse_fetch_response(data, normalise_times=False, uid_is_key=False)
        seq = int(words[1])
        return seq, dict(parsed[seq])
    except (ImapclientProtocolError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ResponseError(f"malformed FETCH response {resp.text()[:200]!r}: {exc}") from None


def parse_list(text: bytes) -> list[bytes]:
    """The atoms of a parenthesized flag list: b"(\\Seen $x)" -> [b"\\Seen", b"$x"]."""
    start, end = text.find(b"("), text.rfind(b")")
    return text[start + 1 : end].split() if 0 <= start < end else []


def response_code(line: bytes) -> tuple[bytes, bytes] | None:
    """(b"UIDVALIDITY", b"123") of ``* OK [UIDVALIDITY 123] ...`` or a tagged line's code."""
    m = _CODE.search(line)
    return (m.group(1).upper(), m.group(2) or b"") if m else None


def tagged_status(line: bytes, tag: bytes) -> tuple[bytes, bytes]:
    """(b"OK", rest) of the tagged line; CommandFailed for a line of some other tag."""
    if not line.startswith(tag):
        raise CommandFailed(f"unexpected tagged line {line[:200]!r}")
    status, _, rest = line[len(tag) :].partition(b" ")
    return status.upper(), rest
