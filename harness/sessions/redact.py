"""Which bytes of a client command are secret, so transcripts and error messages never hold them.

Covers IMAP ``LOGIN user pass`` (atom, quoted string or literal), POP3 ``PASS``, ``APOP``'s digest,
SASL initial responses (``AUTHENTICATE mech ir`` / ``AUTH mech ir``) and the payload lines a
client sends while the server is in a SASL exchange. Passwords the harness knows are scrubbed
separately (Transcript secrets); this catches what a suite author typed into a raw command.
"""

from __future__ import annotations

import re

MASK = b"***"
_LITERAL = re.compile(rb"~?\{(\d+)\+?\}\r?\n")


def _tokens(data: bytes) -> tuple[list[tuple[int, int]], int]:
    """Spans of the words of the command in `data` (quoted strings and literal data count as one
    word) and the index where its line ends (len(data) if it has not ended yet)."""
    spans: list[tuple[int, int]] = []
    pos, n = 0, len(data)
    while pos < n:
        c = data[pos]
        if c == 0x20:
            pos += 1
        elif c in (0x0D, 0x0A):
            return spans, pos
        elif c == 0x22:  # quoted string: up to the next unescaped quote
            end = pos + 1
            while end < n and data[end] != 0x22:
                end += 2 if data[end] == 0x5C else 1
            spans.append((pos, min(end + 1, n)))
            pos = end + 1
        elif m := _LITERAL.match(data, pos):
            start = m.end()
            spans.append((start, min(start + int(m.group(1)), n)))
            pos = start + int(m.group(1))
        else:
            end = pos
            while end < n and data[end] not in (0x20, 0x0D, 0x0A):
                end += 1
            spans.append((pos, end))
            pos = end
    return spans, n


def secret_spans(data: bytes) -> tuple[list[tuple[int, int]], bool]:
    """Byte ranges of `data` (one command, possibly incomplete) to mask, and whether it opens a SASL exchange."""
    words, eol = _tokens(data)
    if not words:
        return [], False
    word = [data[s:e].upper() for s, e in words[:2]]
    if word[0] == b"PASS" and len(words) > 1:  # POP3: the password is the rest of the line, spaces included
        return [(words[1][0], eol)], False
    if word[0] == b"APOP" and len(words) > 2:
        return [(words[2][0], eol)], False
    if word[0] == b"AUTH" and len(words) > 1:  # POP3 SASL (RFC 5034); bare AUTH lists mechanisms
        return ([(words[2][0], eol)] if len(words) > 2 else []), True
    if len(words) > 1 and word[1] == b"LOGIN" and len(words) > 3:
        return [words[3]], False
    if len(words) > 2 and word[1] == b"AUTHENTICATE":
        return ([(words[3][0], eol)] if len(words) > 3 else []), True
    return [], False


def mask(data: bytes, spans: list[tuple[int, int]], offset: int = 0) -> bytes:
    """`data` with the parts covered by `spans` replaced by ***; spans are relative to `offset` bytes earlier."""
    out, pos = [], 0
    for start, end in sorted(spans):
        start, end = max(start - offset, pos), min(end - offset, len(data))
        if start >= end:
            continue
        out += [data[pos:start], MASK]
        pos = end
    out.append(data[pos:])
    return b"".join(out)


def redact_line(line: str) -> str:
    """A single command line with its secrets masked, for error messages."""
    data = line.encode("utf-8", "surrogateescape")
    return mask(data, secret_spans(data)[0]).decode("utf-8", "replace")


class ClientRedactor:
    """Masks secrets in the chunks one session sends, tracking SASL exchanges and commands split at literals."""

    def __init__(self) -> None:
        self.sasl = False  # between AUTH/AUTHENTICATE and the server's final answer
        self._command: bytes | None = None  # start of an unfinished command whose secrets may still come
        self._mid_command = False  # inside an unfinished command that holds no secret

    def client(self, chunk: bytes, due_before: int, due_after: int) -> bytes:
        """Mask `chunk`. `due_before`/`due_after`: literal bytes announced but not yet sent, before and after it."""
        if self.sasl and not due_before:
            return MASK + _line_end(chunk)
        if due_before and self._command is None and self._mid_command:
            self._mid_command = due_after > 0
            return chunk
        start = self._command or b""
        full = start + chunk
        spans, opens_sasl = secret_spans(full)
        masked = mask(chunk, spans, len(start))
        if due_after:
            keep = bool(spans) or opens_sasl or _may_hold_secret(full)
            self._command, self._mid_command = (full if keep else None), not keep
        else:
            self._command, self._mid_command = None, False
            self.sasl = opens_sasl
        return masked

    def abandon(self) -> None:
        """The command in progress ended early (the server refused it before its literal data)."""
        self._command, self._mid_command = None, False

    def server(self, chunk: bytes) -> None:
        """A SASL exchange ends with the first server answer that is not a continuation request."""
        if self.sasl and not (chunk.startswith((b"+ ", b"* ")) or chunk.rstrip(b"\r\n") == b"+"):
            self.sasl = False


def _may_hold_secret(command: bytes) -> bool:
    words, _ = _tokens(command)
    verbs = [command[s:e].upper() for s, e in words[:2]]
    return len(verbs) < 2 or verbs[1] in (b"LOGIN", b"AUTHENTICATE")


def _line_end(chunk: bytes) -> bytes:
    return b"\r\n" if chunk.endswith(b"\r\n") else b"\n" if chunk.endswith(b"\n") else b""
