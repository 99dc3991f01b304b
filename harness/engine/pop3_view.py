"""A POP3 session's view of its maildrop: which message number is which corpus message, and how big each is.

RFC 1939 numbers the messages 1..N in an order it leaves to the server (Dovecot: arrival; GNU Mailutils
and others: their own), and a server may add header fields (Status:, X-UID:; delivery adds Received:,
Return-Path:). So suites say "the message that is corpus plain" (``${msg:plain}``), never "message 1", and
each session looks the numbers up for itself: LIST, then ``TOP n 0`` of every message (``RETR n`` where TOP
is refused), reading the ``X-Mailharness-Corpus`` field every corpus message carries. Message numbers do not
change during a session (RFC 1939 §5), so one look-up per connection is enough.

What stays byte-exact is what RFC 1939 makes exact: the body, the original header fields (in order), the
dot-stuffing, and, within one session, RETR's octets against LIST's size. A message's expected size in a
POP3 step (``${size:plain}``) is the header this server shows plus the corpus body: the corpus size on a
server that adds nothing, and still exact on one that does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from harness import corpus
from harness.corpus.sections import split_header
from harness.engine.patterns import PatternError

HARNESS_FIELD = b"x-mailharness-corpus"
_FIELD_START = re.compile(rb"[!-9;-~]+[ \t]*:")  # RFC 5322 §2.2 field name, then the colon


class ViewError(Exception):
    """The session's messages could not be listed (e.g. LIST refused)."""


@dataclass
class Pop3View:
    numbers: dict[str, list[int]] = field(default_factory=dict)  # corpus name -> message numbers
    headers: dict[int, bytes] = field(default_factory=dict)  # number -> header as sent, blank line included

    def number(self, name: str) -> int:
        found = self.numbers.get(name, [])
        if len(found) != 1:
            listed = ", ".join(f"{n} is {names}" for names, n in sorted(
                ((k, n) for k, ns in self.numbers.items() for n in ns), key=lambda x: x[1])) or "no corpus messages"
            why = "no message" if not found else f"{len(found)} messages ({', '.join(map(str, found))})"
            raise PatternError(f"${{msg:{name}}}: {why} of this session's maildrop is corpus {name} ({listed})")
        return found[0]

    def size(self, names: str) -> int:
        """The size this server should give: its header for the message, then the corpus body (A+B: a sum)."""
        total = 0
        for name in names.split("+"):
            header = self.headers[self.number(name)]
            total += len(header) + len(split_header(corpus.message(name))[1])
        return total

    def bindings(self, tokens: list[tuple[str, str]]) -> dict[str, str]:
        """Values for the step's ${msg:NAME} and ${size:NAME} tokens, keyed as patterns look them up."""
        out = {}
        for fn, arg in tokens:
            if fn == "msg":
                out[f"msg:{arg}"] = str(self.number(arg))
            elif fn == "size":
                out[f"size:{arg}"] = str(self.size(arg))
        return out


def build_view(command: Callable, note: Callable[[str], None], timeout: float, list_sizes: dict[int, int]) -> Pop3View:
    """Look up every message of the session; `command(line, timeout)` sends a POP3 command (a POP3Session's).

    LIST's sizes go into `list_sizes`, for the RETR-equals-LIST check."""
    note("harness: which message number is which corpus message (LIST, then TOP n 0 of each)")
    resp = command("LIST", timeout=timeout)
    if not resp.ok:
        raise ViewError(f"LIST was refused ({resp.line}), so the messages cannot be told apart")
    view = Pop3View()
    use_top = True
    for line in resp.lines or []:
        words = line.split()
        if len(words) < 2 or not words[0].isdigit() or not words[1].isdigit():
            raise ViewError(f"LIST sent a line that is not `n size`: {line!r}")
        number = int(words[0])
        list_sizes[number] = int(words[1])
        got = command(f"TOP {number} 0", timeout=timeout) if use_top else None
        if got is None or not got.ok:
            got = command(f"RETR {number}", timeout=timeout)  # TOP is optional (RFC 1939 §7)
            if got.ok:
                use_top = False
        if not got.ok or got.body is None:
            continue  # gone (another session removed it): no corpus message to find there
        header, _ = header_and_body(got.body)
        view.headers[number] = header
        name = corpus_name(header)
        if name:
            view.numbers.setdefault(name, []).append(number)
    return view


def header_and_body(data: bytes) -> tuple[bytes, bytes | None]:
    """(header with its blank line, body); body None when there is no blank line."""
    if data.startswith(b"\r\n"):
        return b"\r\n", data[2:]
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data, None
    return data[:end + 4], data[end + 4:]


def header_fields(header: bytes) -> list[bytes] | None:
    """Each field with its folded continuation lines; None if a line is neither a field nor a continuation."""
    fields: list[bytes] = []
    for line in header.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        elif _FIELD_START.match(line):
            fields.append(line)
        else:
            return None
    return fields


def corpus_name(header: bytes) -> str | None:
    for f in header_fields(header) or []:
        name, _, value = f.partition(b":")
        if name.strip().lower() == HARNESS_FIELD:
            return value.strip().decode("ascii", "replace")
    return None


def compare_message(expected: bytes, got: bytes) -> tuple[str | None, list[bytes]]:
    """Does `got` (a RETR or TOP answer) carry `expected`: the same body bytes, and every original header
    field, byte for byte and in order? Fields the server added are allowed. (problem or None, added fields)."""
    exp_header, exp_body = header_and_body(expected)
    got_header, got_body = header_and_body(got)
    if got_body is None:
        return "no blank line after the header", []
    if got_body != exp_body:
        return "body " + _difference(exp_body or b"", got_body), []
    exp_fields, got_fields = header_fields(exp_header) or [], header_fields(got_header)
    if got_fields is None:
        bad = next(line for line in got_header.split(b"\r\n") if line and not _FIELD_START.match(line)
                   and line[:1] not in (b" ", b"\t"))
        return f"header line that is not a header field: {bad[:80]!r}", []
    added, i = [], 0
    for f in got_fields:
        if i < len(exp_fields) and f == exp_fields[i]:
            i += 1
        else:
            added.append(f)
    if i < len(exp_fields):
        missing = exp_fields[i]
        similar = [f for f in got_fields if f.split(b":", 1)[0].lower() == missing.split(b":", 1)[0].lower()]
        shown = f"; the server has {similar[0][:120]!r}" if similar else ""
        return f"original header field missing or changed (or out of order): {missing[:120]!r}{shown}", []
    return None, added


def _difference(expected: bytes, got: bytes) -> str:
    from harness.engine.runner import describe_bytes_difference

    return describe_bytes_difference(expected, got)
