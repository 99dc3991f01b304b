"""A lean IMAP client for load generation: send a tagged command, scan for the tag, count bytes.

Nothing is parsed that the load users do not need: literals (message headers and
bodies) are skipped by their announced size, untagged responses are only looked at
when a caller asks for them (``collect=True``). imapclient would build envelopes and
Python objects for every response; at thousands of commands per second that cost is
the difference between measuring the server and measuring the generator.
"""

from __future__ import annotations

import re
from time import monotonic

from harness.framing import LITERAL_IN_STREAM as _LITERAL
from harness.load.wire import (
    MAX_LITERAL,
    CommandFailed,
    ResponseTooLarge,
    Step,
    WireClient,
    WireError,
    report_if_late,
)
from harness.targets.target_file import Endpoint

EXISTS = re.compile(rb"^\* (\d+) EXISTS\r?$", re.MULTILINE)
_CRLF = b"\r\n"


def quote(text: str) -> bytes:
    """An IMAP quoted string (user names and passwords are ASCII in practice; UTF-8 otherwise)."""
    if "\r" in text or "\n" in text:
        raise ValueError("CR/LF cannot be sent in an IMAP quoted string")
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'


def _tagged_line(buf: bytearray, pos: int, tag: bytes, tag_line: bytes, line_start: bool) -> tuple[int, int]:
    """(start, end) of the tagged status line at or after ``pos``, end at its CRLF; (-1, -1) until it is all there.

    ``tag_line`` is CRLF + tag; ``line_start``: ``pos`` is known to begin a line, so the tag may stand right there.
    """
    if line_start and buf.startswith(tag, pos):
        start = pos
    else:
        start = buf.find(tag_line, pos)
        if start < 0:
            return -1, -1
        start += 2
    return start, buf.find(_CRLF, start)


class ImapClient(WireClient):
    """One IMAP session. Every command is reported as (name, ms, bytes received, exception)."""

    def __init__(self, endpoint: Endpoint, **options):
        super().__init__(endpoint, **options)
        self.exists = 0  # message count of the selected mailbox, as last announced by the server
        self._tag = 0
        self._idle_tag = b""

    # -- session ---------------------------------------------------------------------
    def connect(self) -> None:
        """TCP connect, greeting (and STARTTLS when the endpoint asks for it): "IMAP connect"."""
        try:
            with Step(self, "IMAP connect"):
                greeting = self._open().read_line()
                if not greeting.startswith(b"* OK"):
                    raise CommandFailed(f"IMAP greeting: {greeting[:200].decode(errors='replace')}")
                if self.endpoint.starttls:
                    self._read_until_tagged(self._send(b"STARTTLS"), "IMAP STARTTLS", collect=False)
                    self.conn.start_tls()
        except BaseException:
            self.close()
            raise

    def login(self, user: str, password: str) -> None:
        self.command("IMAP LOGIN", b"LOGIN " + quote(user) + b" " + quote(password))

    def select(self, mailbox: str = "INBOX", *, name: str = "IMAP SELECT", readonly: bool = False) -> int:
        """SELECT (or EXAMINE); returns and remembers the message count."""
        verb = b"EXAMINE " if readonly else b"SELECT "
        untagged = self.command(name, verb + quote(mailbox), collect=True)
        match = EXISTS.search(untagged)
        self.exists = int(match.group(1)) if match else 0
        return self.exists

    def logout(self) -> None:
        """LOGOUT; the connection is closed whatever the answer."""
        try:
            self.command("IMAP LOGOUT", b"LOGOUT")
        finally:
            self.close()

    # -- commands --------------------------------------------------------------------
    def command(self, name: str, command: bytes, *, collect: bool = False) -> bytes:
        """Send one command and wait for its tagged OK; NO/BAD raise CommandFailed.

        With ``collect`` the untagged responses (literals included) come back as one bytes
        object; otherwise they are only counted and b"" is returned.
        """
        # The hot path: the same as ``with Step(...)``, written out to save its per-command cost.
        conn = self.conn
        started = monotonic()
        received = conn.received if conn else 0
        try:
            if conn is None:
                raise WireError(f"{name}: not connected")
            conn.deadline = started + self.timeout
            out = self._read_until_tagged(self._send(command), name, collect)
        except Exception as exc:
            self.report(name, (monotonic() - started) * 1000, conn.received - received if conn else 0, exc)
            raise
        except BaseException as exc:  # the run ended (Locust killed the user) while it waited
            report_if_late(self, name, (monotonic() - started) * 1000, conn.received - received if conn else 0, exc)
            raise
        finally:
            if conn:
                conn.deadline = 0.0
        self.report(name, (monotonic() - started) * 1000, conn.received - received, None)
        return out

    def append(self, mailbox: str, message: bytes, *, name: str = "IMAP APPEND") -> None:
        """APPEND with a synchronising literal (LITERAL+ is not universal): wait for "+" before the data."""
        with Step(self, name):
            conn = self._connected(name)
            tag = self._send(b"APPEND " + quote(mailbox) + b" {%d}" % len(message))
            line = conn.read_line()
            if not line.startswith(b"+"):
                raise CommandFailed(f"{name}: {line[:300].decode(errors='replace')}")
            conn.send(message + _CRLF)
            self._read_until_tagged(tag, name, collect=False)

    def _send(self, command: bytes) -> bytes:
        """Send a command under a new tag; returns the tag (with its trailing space)."""
        self._tag += 1
        tag = b"a%d " % self._tag
        self.conn.send(tag + command + _CRLF)
        return tag

    # -- reading responses -----------------------------------------------------------
    # Both readers jump from literal to literal instead of walking lines: a literal marker
    # "{n}" CRLF can only end a line, and the tagged line ends the response, so the first
    # tag line after the last literal is the answer.

    def _read_until_tagged(self, tag: bytes, name: str, collect: bool) -> bytes:
        if collect:
            return self._collect_until_tagged(tag, name)
        # Counting: the hot path of the whole load generator. Literals are consumed as they
        # are passed (a 300 KB attachment is never held), nothing is copied; the regex engine
        # finds the markers, Python only adds up their sizes.
        conn = self.conn
        tag_line = _CRLF + tag
        while True:
            buf = conn.buf
            pos = conn.pos
            for marker in _LITERAL.finditer(buf, pos):
                if marker.start() >= pos:  # else it lies inside a literal already counted
                    size = int(marker.group(1))
                    if size > MAX_LITERAL:
                        raise ResponseTooLarge(f"{name}: a literal of {size} bytes (at most {MAX_LITERAL // 2**20} MB)")
                    pos = marker.end() + size
            if pos > len(buf):  # the last literal goes on beyond what has arrived
                conn.pos = len(buf)
                conn.skip(pos - len(buf))
                continue
            conn.pos = pos
            start, eol = _tagged_line(buf, pos, tag, tag_line, True)
            if eol >= 0:
                conn.pos = eol + 2
                return self._status(buf[start + len(tag) : eol], name, b"")
            if start < 0:
                # Untagged lines are not kept here: pass the complete ones, so the next scan starts at the
                # last (partial) line and a server that never stops sending costs linear time, flat memory.
                last = buf.rfind(_CRLF, pos)
                if last >= 0:
                    conn.pos = last + 2
            conn.fill()

    def _collect_until_tagged(self, tag: bytes, name: str) -> bytes:
        """Like counting, but the response stays in the buffer (at conn.pos) and is returned whole."""
        conn = self.conn
        tag_line = _CRLF + tag
        offset = 0  # bytes after conn.pos already scanned
        while True:
            buf = conn.buf
            pos = conn.pos + offset
            close = buf.find(b"}\r\n", pos)
            while close >= 0:
                brace = buf.rfind(b"{", pos, close)
                digits = buf[brace + 1 : close]
                if brace >= 0 and digits.isdigit():
                    break
                close = buf.find(b"}\r\n", close + 3)
            if close >= 0:
                end = close + 3 + int(digits)
                if end > len(buf):
                    offset = brace - conn.pos  # back to this marker once more has arrived
                    conn.fill()
                else:
                    offset = end - conn.pos
                continue
            start, eol = _tagged_line(buf, pos, tag, tag_line, offset == 0)
            if eol >= 0:
                untagged = bytes(buf[conn.pos : start])
                conn.pos = eol + 2
                return self._status(buf[start + len(tag) : eol], name, untagged)
            last = buf.rfind(_CRLF, pos)  # resume at the last line end rather than rescanning lines
            offset = (max(pos, last - 1) if last >= 0 else pos) - conn.pos
            conn.fill()

    @staticmethod
    def _status(status: bytearray, name: str, untagged: bytes) -> bytes:
        if status.startswith(b"OK"):
            return untagged
        raise CommandFailed(f"{name}: {bytes(status[:300]).decode(errors='replace')}")

    # -- IDLE ------------------------------------------------------------------------
    def idle(self) -> None:
        """Send IDLE and wait for the continuation: "IMAP IDLE" measures the time to "+ idling"."""
        with Step(self, "IMAP IDLE"):
            conn = self._connected("IMAP IDLE")
            self._idle_tag = self._send(b"IDLE")
            while True:
                line = conn.read_line()
                if line.startswith(b"+"):
                    return
                if line.startswith(self._idle_tag):
                    raise CommandFailed(f"IMAP IDLE: {line[:300].decode(errors='replace')}")
                self._note_untagged(line)

    def wait_for_exists(self, timeout: float) -> int | None:
        """While idling: block until the server announces a larger message count; None on timeout.

        Keep-alives ("* OK Still here"), FLAGS and EXPUNGE updates are read and passed over.
        A timeout leaves a half-received line in the buffer, to be completed by the next read.
        The wait is not a command: the watchdog leaves it alone, a socket timeout ends it.
        """
        conn = self._connected("IMAP IDLE")
        before = self.exists
        conn.sock.settimeout(timeout)
        try:
            while True:
                self._note_untagged(conn.read_line())
                if self.exists > before:
                    return self.exists
        except TimeoutError:
            if conn.expired:
                raise
            return None
        finally:
            conn.sock.settimeout(conn.read_timeout)

    def done(self) -> None:
        """End IDLE: "IMAP DONE" measures DONE to the tagged OK of the IDLE command."""
        with Step(self, "IMAP DONE"):
            self._connected("IMAP DONE").send(b"DONE\r\n")
            untagged = self._read_until_tagged(self._idle_tag, "IMAP DONE", collect=True)
            for line in untagged.split(_CRLF):
                self._note_untagged(line)

    def _note_untagged(self, line: bytes) -> None:
        if line.endswith(b" EXISTS") and line.startswith(b"* "):
            self.exists = int(line[2:-7])
        elif line.endswith(b" EXPUNGE") and line.startswith(b"* "):
            self.exists -= 1
