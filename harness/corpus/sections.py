"""Reference implementation of IMAP body sections (RFC 3501 §6.4.5, RFC 9051 §6.4.5) on raw bytes.

`section(message, "2.1")` is what a server must return for ``BODY[2.1]``. The rules, from the RFCs:

* ``HEADER`` ends with (and includes) the blank line; ``TEXT`` is everything after it.
* Part N of a multipart is the part's content without its MIME header; ``N.MIME`` is that header.
* A non-multipart message has only part 1: its body (and ``1.MIME`` is the message header).
* A message/rfc822 part's number means the whole encapsulated message; ``N.HEADER``/``N.TEXT``
  are its header and body, ``N.M`` goes into the encapsulated message's parts.
* The CRLF before a boundary delimiter belongs to the delimiter, not to the part before it.
* A part that does not exist is the empty string (as Dovecot answers; the RFCs do not make it an error).

`tests/test_corpus.py` checks all of this against a real Dovecot, byte for byte.
Messages are expected as they are APPENDed: CRLF line ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise

CRLF = b"\r\n"
_SPEC = re.compile(
    r"(?P<path>[1-9]\d*(?:\.[1-9]\d*)*)?"
    r"(?:(?(path)\.)(?P<kind>HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME)"
    r"(?:\s*\((?P<fields>[^()]*)\))?)?",
    re.IGNORECASE,
)
_PARAM = re.compile(rb';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s;]+)')


class SectionError(ValueError):
    """The section spec itself is malformed (a server would answer BAD)."""


@dataclass(frozen=True)
class _Entity:
    """A message or body part: its header (with the blank line) and its content."""

    header: bytes
    body: bytes
    default_type: str = "text/plain"

    @cached_property
    def _content_type(self) -> tuple[str, dict[bytes, bytes]]:
        value = header_value(self.header, "content-type")
        if value is None:
            return self.default_type, {}
        mime_type = value.split(b";", 1)[0].strip().lower().decode("ascii", "replace")
        if "/" not in mime_type:  # unparsable: RFC 2045 says treat as the default
            return self.default_type, {}
        params = {k.lower(): _unquote(v) for k, v in _PARAM.findall(value)}
        return mime_type, params

    @property
    def mime_type(self) -> str:
        return self._content_type[0]

    @property
    def is_message(self) -> bool:
        return self.mime_type == "message/rfc822"

    def children(self) -> list[_Entity] | None:
        """The parts of a multipart (None if this is not a multipart with a boundary)."""
        mime_type, params = self._content_type
        boundary = params.get(b"boundary")
        if not mime_type.startswith("multipart/") or not boundary:
            return None
        default = "message/rfc822" if mime_type == "multipart/digest" else "text/plain"
        return [_parse(chunk, default) for chunk in _split_multipart(self.body, boundary)]


def _parse(data: bytes, default_type: str = "text/plain") -> _Entity:
    header, body = split_header(data)
    return _Entity(header, body, default_type)


def split_header(data: bytes) -> tuple[bytes, bytes]:
    """(header including the blank line, body). Without a blank line everything is header."""
    if data.startswith((b"\r\n", b"\n")):
        n = 2 if data.startswith(b"\r\n") else 1
        return data[:n], data[n:]
    m = re.search(rb"\n\r?\n", data)
    if not m:
        return data, b""
    return data[:m.end()], data[m.end():]


def header_fields(header: bytes) -> list[tuple[str, bytes]]:
    """(lowercase name, the raw field with its continuation lines and line end), in order."""
    fields: list[tuple[str, bytes]] = []
    for line in _lines(header):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + line)
        else:
            fields.append((line.split(b":", 1)[0].strip().lower().decode("ascii", "replace"), line))
    return fields


def header_value(header: bytes, name: str) -> bytes | None:
    """The unfolded value of the first field called `name`, or None."""
    for field_name, raw in header_fields(header):
        if field_name == name:
            value = raw.split(b":", 1)[1] if b":" in raw else b""
            return re.sub(rb"\r?\n[ \t]", b" ", value).strip()
    return None


def _unquote(value: bytes) -> bytes:
    if value.startswith(b'"') and value.endswith(b'"') and len(value) >= 2:
        return re.sub(rb"\\(.)", rb"\1", value[1:-1])
    return value


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts between the boundary delimiters (preamble and epilogue dropped)."""
    delimiter = b"--" + boundary
    found: list[tuple[int, int]] = []  # (where the delimiter's preceding line end starts, where the part after starts)
    pos = 0
    while pos < len(body):
        lf = body.find(b"\n", pos)
        end = len(body) if lf < 0 else lf + 1
        line = body[pos:end]
        if line.startswith(delimiter):
            rest = line[len(delimiter):].rstrip(b"\r\n")
            closing = rest.startswith(b"--")
            if not rest[2 if closing else 0:].strip(b" \t"):  # only transport padding may follow
                found.append((_line_end_before(body, pos), end))
                if closing:
                    return _between(body, found, closed=True)
        pos = end
    return _between(body, found, closed=False)


def _line_end_before(body: bytes, pos: int) -> int:
    """Where the line end just before `pos` starts (it belongs to the delimiter that follows)."""
    if body[max(pos - 2, 0):pos] == CRLF:
        return pos - 2
    if pos and body[pos - 1:pos] == b"\n":
        return pos - 1
    return pos


def _between(body: bytes, found: list[tuple[int, int]], closed: bool) -> list[bytes]:
    parts = []
    for (_, start), (end, _) in pairwise(found):
        parts.append(body[start:max(start, end)])
    if found and not closed:  # no close delimiter: the last part runs to the end
        parts.append(body[found[-1][1]:])
    return parts


def _message_parts(message: _Entity) -> list[_Entity]:
    """Parts numbered inside a message: a multipart's children, else just the body (part 1)."""
    children = message.children()
    return children if children is not None else [message]


def _subparts(part: _Entity) -> list[_Entity]:
    children = part.children()
    if children is not None:
        return children
    if part.is_message:
        return _message_parts(_parse(part.body))
    return []


def _find(message: bytes, path: list[int]) -> _Entity | None:
    candidates = _message_parts(_parse(message))
    entity = None
    for n in path:
        if n > len(candidates):
            return None
        entity = candidates[n - 1]
        candidates = _subparts(entity)
    return entity


def section(message: bytes, spec: str, partial: tuple[int, int] | None = None) -> bytes:
    """What ``BODY[spec]<origin.length>`` returns for `message`."""
    m = _SPEC.fullmatch(spec.strip())
    if not m or (m["fields"] is not None) != (m["kind"] or "").upper().startswith("HEADER.FIELDS"):
        raise SectionError(f"not an IMAP section: {spec!r}")
    kind = (m["kind"] or "").upper()
    path = [int(n) for n in m["path"].split(".")] if m["path"] else []
    if kind == "MIME" and not path:
        raise SectionError("MIME needs a part number, e.g. 1.MIME")

    if not path:
        target = message
    else:
        entity = _find(message, path)
        if entity is None:
            return b""
        if kind == "MIME":
            return _slice(entity.header, partial)
        if not kind:
            return _slice(entity.body, partial)
        if not entity.is_message:  # HEADER/TEXT only address an encapsulated message
            return b""
        target = entity.body

    if not kind:
        data = target
    elif kind == "TEXT":
        data = split_header(target)[1]
    elif kind == "HEADER":
        data = split_header(target)[0]
    else:
        wanted = {f.lower() for f in m["fields"].split()}
        wanted = {f.strip('"') for f in wanted}
        keep = kind == "HEADER.FIELDS"
        fields = header_fields(split_header(target)[0])
        data = b"".join(raw for name, raw in fields if (name in wanted) == keep) + CRLF
    return _slice(data, partial)


def decoded(message: bytes, part: str) -> bytes:
    """What ``BINARY[part]`` returns (RFC 3516): the part's content with its transfer encoding undone."""
    import base64
    import quopri

    raw = section(message, part)
    encoding = (header_value(section(message, f"{part}.MIME"), "content-transfer-encoding") or b"").strip().lower()
    if encoding == b"base64":
        return base64.b64decode(raw)
    if encoding == b"quoted-printable":
        return quopri.decodestring(raw)
    return raw


def _slice(data: bytes, partial: tuple[int, int] | None) -> bytes:
    if partial is None:
        return data
    origin, length = partial
    if origin < 0 or length < 0:
        raise SectionError(f"bad partial <{origin}.{length}>")
    return data[origin:origin + length]


def parts(message: bytes) -> dict[str, str]:
    """Every part number in `message`, depth first, with its content type: {"1": "text/plain", ...}."""
    out: dict[str, str] = {}

    def walk(entities: list[_Entity], prefix: str) -> None:
        for n, entity in enumerate(entities, 1):
            number = f"{prefix}{n}"
            out[number] = entity.mime_type
            walk(_subparts(entity), number + ".")

    walk(_message_parts(_parse(message)), "")
    return out


def top(message: bytes, n_lines: int) -> bytes:
    """What POP3 ``TOP msg n`` returns (unstuffed): header, blank line, the first n body lines, CRLF ends."""
    header, body = split_header(message)
    lines = _lines(body)[:n_lines] if n_lines > 0 else []
    return _crlf(header) + b"".join(_crlf(line) for line in lines)


def _crlf(data: bytes) -> bytes:
    """Every line ended by CRLF (a missing final line end added)."""
    if not data:
        return data
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join(line.removesuffix(b"\r") + CRLF for line in lines)


def _lines(data: bytes) -> list[bytes]:
    """Lines with their line ends; only LF ends a line (a bare CR is data)."""
    return re.findall(rb"[^\n]*\n|[^\n]+$", data)


def size(message: bytes) -> int:
    """RFC822.SIZE and the POP3 LIST size: octets, with CRLF line ends."""
    return len(message)
