"""The ordered log of one test's protocol exchanges, across all its sessions.

Secrets are masked when recorded, never later: an entry never holds a password. Big data
(literals, message bodies) is shortened to its size and first bytes so reports stay readable.
A server that never stops talking cannot grow it without bound either: a test keeps the first
MAX_KEPT_TEXT characters of entries and its last TAIL_ENTRIES entries (where it failed), and says
how many were left out between them.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from harness.known_secrets import SECRETS
from harness.sessions.literals import frame
from harness.sessions.redact import MASK, ClientRedactor

ABBREVIATE_OVER = 2048
PREVIEW_BYTES = 200
MAX_KEPT_TEXT = 256 * 1024
TAIL_ENTRIES = 40


@dataclass(frozen=True)
class Entry:
    t: float  # seconds since the transcript started
    session: str
    direction: str  # "C" client, "S" server, "*" note by the harness
    text: str  # may span several lines


class _SessionState:
    def __init__(self) -> None:
        self.redactor = ClientRedactor()
        self.client_due = 0  # literal bytes the client announced and has not sent yet


class Transcript:
    def __init__(self, secrets: Iterable[str] = ()):
        self._start = time.monotonic()
        self._secrets: set[str] = set()
        self._sessions: dict[str, _SessionState] = {}
        self._lock = threading.Lock()
        self._head: list[Entry] = []  # from the start, up to MAX_KEPT_TEXT characters
        self._head_text = 0
        self._tail: deque[Entry] = deque(maxlen=TAIL_ENTRIES)  # the latest, once the head is full
        self.dropped = 0  # entries that fell out between the two
        self._dropped_text = 0
        for s in secrets:
            self.add_secret(s)

    @property
    def entries(self) -> list[Entry]:
        """What is kept, in order; where entries were left out, a note in their place says how many."""
        if not self.dropped:
            return self._head + list(self._tail)
        gap = Entry(self._tail[0].t, "harness", "*",
                    f"transcript cap: {self.dropped} entries ({self._dropped_text} characters) left out here; a test "
                    f"keeps its first {MAX_KEPT_TEXT >> 10} KiB of transcript and its last {TAIL_ENTRIES} entries")
        return [*self._head, gap, *self._tail]

    def add_secret(self, secret: str) -> None:
        if not secret or secret in self._secrets:
            return
        with self._lock:
            self._secrets.add(secret)
            # Mask it in what was recorded before we knew it was secret.
            mask = MASK.decode()
            self._head = [Entry(e.t, e.session, e.direction, e.text.replace(secret, mask)) for e in self._head]
            self._tail = deque((Entry(e.t, e.session, e.direction, e.text.replace(secret, mask)) for e in self._tail),
                               maxlen=TAIL_ENTRIES)

    def client(self, session: str, text: str | bytes, *, literals: bool = True) -> None:
        """What the client sent: one chunk of wire data. `literals`: recognise IMAP literals (not for POP3)."""
        data = _bytes(text)
        with self._lock:
            state = self._state(session)
            due_before = state.client_due
            state.client_due = frame(data, due_before)[1] if literals else 0
            data = state.redactor.client(data, due_before, state.client_due)
            self._append(session, "C", self._scrub(data), literals, due_before)

    def server(self, session: str, text: str | bytes, *, literals: bool = True) -> None:
        """What the server sent: a complete response, or (POP3) a status line or a multi-line body."""
        data = _bytes(text)
        with self._lock:
            state = self._state(session)
            state.redactor.server(data)
            if state.client_due and not data.startswith((b"* ", b"+")):
                # Answered instead of "+": the announced literal will never come.
                state.client_due = 0
                state.redactor.abandon()
            self._append(session, "S", self._scrub(data), literals, 0)

    def note(self, session: str, text: str) -> None:
        with self._lock:
            self._add(session, "*", _display_line(self._scrub(_bytes(text))))

    def redact(self, text: str) -> str:
        """Mask this transcript's secrets in any other text (failure messages quote server lines)."""
        for secret in self._secrets:
            text = text.replace(secret, MASK.decode())
        return SECRETS.scrub(text)

    def render(self) -> str:
        out = []
        for e in self.entries:
            for line in e.text.split("\n"):
                out.append(f"{e.t:7.3f} {e.session} {e.direction}: {line}")
        return "\n".join(out) + ("\n" if out else "")

    # -- internals -----------------------------------------------------------------
    def _state(self, session: str) -> _SessionState:
        return self._sessions.setdefault(session, _SessionState())

    def _scrub(self, data: bytes) -> bytes:
        for secret in self._secrets:
            data = data.replace(secret.encode("utf-8", "surrogateescape"), MASK)
        return SECRETS.scrub_bytes(data)  # every password of the target, also quoted or in base64

    def _append(self, session: str, direction: str, data: bytes, literals: bool, due: int) -> None:
        if not literals:
            if len(data) > ABBREVIATE_OVER:
                text = _abbreviated(data)
            else:
                text = "\n".join(_display_line(line) for line in _lines(data))
        else:
            text = _display_framed(data, due)
        self._add(session, direction, text)

    def _add(self, session: str, direction: str, text: str) -> None:
        entry = Entry(round(time.monotonic() - self._start, 6), session, direction, text)
        if not self._tail and self._head_text + len(text) <= MAX_KEPT_TEXT:
            self._head.append(entry)
            self._head_text += len(text)
            return
        if len(self._tail) == TAIL_ENTRIES:
            self.dropped += 1
            self._dropped_text += len(self._tail[0].text)
        self._tail.append(entry)


def _bytes(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")


def _lines(data: bytes) -> list[bytes]:
    """Lines without their CRLF/LF; a final line end does not start another line."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"" and len(lines) > 1:
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _display_framed(data: bytes, due: int) -> str:
    """IMAP wire data as display lines; literals show as the lines they contain, big ones shortened in place."""
    lines = [""]

    def add(chunk: bytes) -> None:
        first, *rest = chunk.split(b"\n")
        lines[-1] += _display_line(first.removesuffix(b"\r") if rest else first)
        for i, line in enumerate(rest):
            lines.append(_display_line(line if i == len(rest) - 1 else line.removesuffix(b"\r")))

    for piece in frame(data, due)[0]:
        chunk = data[piece.start:piece.end]
        if len(chunk) > ABBREVIATE_OVER:
            lines[-1] += _abbreviated(chunk)
        else:
            add(chunk)
        if piece.eol:
            lines.append("")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    return "\n".join(lines)


def _abbreviated(data: bytes) -> str:
    return f"{{{len(data)} bytes: {_display_line(data[:PREVIEW_BYTES], show_eol=True)}…}}"


# Control characters (but TAB) and DEL as \xNN, for _display_line; str.translate does it at C speed.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f) if c != 0x09}
_ESCAPES_EOL = {**_ESCAPES, 0x0d: "\\r", 0x0a: "\\n"}
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")  # most lines have none: then the text is shown as it is


def _display_line(line: bytes, *, show_eol: bool = False) -> str:
    """One line for display: UTF-8 where valid, backslash escapes for other bytes and control characters.
    `show_eol`: CR and LF as \\r and \\n (so a preview of many lines stays on one)."""
    text = line.decode("utf-8", "backslashreplace")
    return text.translate(_ESCAPES_EOL if show_eol else _ESCAPES) if _CONTROL.search(text) else text
