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


class ImapClient(WireClient):
    """One IMAP session. Every command is reported as (name, ms, bytes received, exception)."""

    def __init__(self, endpoint: Endpoint, **options):
        super().__init__(endpoint, **options)
        self.exists = 0  # message count of the selected mailbox, as last announced by the server
        self._tag = 0
        self._idle_tag = b""
        self.literal_plus = False  # the greeting's CAPABILITY has LITERAL+ (non-synchronising literals)
        self.exists_arrived = 0.0  # see wait_for_exists

    # -- session ---------------------------------------------------------------------
    def connect(self) -> None:
        """TCP connect, greeting (and STARTTLS when the endpoint asks for it): "IMAP connect"."""
        try:
            with Step(self, "IMAP connect"):
                greeting = self._open().read_line()
                if not greeting.startswith(b"* OK"):
                    raise CommandFailed(f"IMAP greeting: {greeting[:200].decode(errors='replace')}")
                self.literal_plus = b" LITERAL+" in greeting.upper()
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
        return self.selected(self.command(name, self.select_command(mailbox, readonly), collect=True))

    @staticmethod
    def select_command(mailbox: str = "INBOX", readonly: bool = False) -> bytes:
        return (b"EXAMINE " if readonly else b"SELECT ") + quote(mailbox)

    def selected(self, untagged: bytes) -> int:
        """Remember (and return) the message count announced in a SELECT's untagged responses."""
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

    def pipeline(self, commands: list[tuple[str, bytes]], *, collect: bool = False) -> bytes:
        """Send several commands [(name, command)] in one write, then read up to each one's tagged line.

        RFC 3501 §5.5 lets a client send a command before the previous one completed, and lets the server
        run them at once: Dovecot sends the untagged data of a later FETCH before the tagged OK of an
        earlier one, so untagged responses belong to the batch, not to a command. With ``collect`` all of
        the batch's come back as one bytes object (else b""). Each command is still reported on its own,
        timed from the write to its tagged line, with the bytes that arrived since the previous one's. A
        NO/BAD is reported and raised once all were read, so the stream stays in step; a timeout or a lost
        connection ends the batch at once.
        """
        conn = self._connected(commands[0][0])
        tags = []
        for _ in commands:
            self._tag += 1
            tags.append(b"a%d " % self._tag)
        started = monotonic()
        conn.deadline = started + self.timeout
        failure: CommandFailed | None = None
        untagged = []
        try:
            try:
                conn.send(b"".join(tag + command + _CRLF for tag, (_, command) in zip(tags, commands)))
            except Exception as lost:  # the batch never went out: its first command is the failed request
                self.report(commands[0][0], (monotonic() - started) * 1000, 0, lost)
                raise
            consumed = conn.received - len(conn.buf) + conn.pos
            for tag, (name, _) in zip(tags, commands):
                exc = None
                try:
                    untagged.append(self._read_until_tagged(tag, name, collect))
                except CommandFailed as failed:
                    exc = failure = failure or failed
                except Exception as lost:
                    self.report(name, (monotonic() - started) * 1000, conn.received - len(conn.buf) + conn.pos - consumed, lost)
                    raise
                except BaseException as killed:  # the run ended (Locust killed the user) while it waited
                    report_if_late(self, name, (monotonic() - started) * 1000, 0, killed)
                    raise
                now, now_consumed = monotonic(), conn.received - len(conn.buf) + conn.pos
                self.report(name, (now - started) * 1000, now_consumed - consumed, exc)
                consumed = now_consumed
                conn.deadline = now + self.timeout
        finally:
            conn.deadline = 0.0
        if failure:
            raise failure
        return b"".join(untagged)

    def append(self, mailbox: str, message: bytes, *, name: str = "IMAP APPEND") -> None:
        """APPEND: with LITERAL+ (RFC 7888, as the greeting announced) command and message go in one write;
        otherwise a synchronising literal, waiting for "+" before the data."""
        if self.literal_plus:
            self.command(name, b"APPEND " + quote(mailbox) + b" {%d+}\r\n" % len(message) + message)
            return
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
    # One pass over the buffer: from the first unread byte, the reader jumps from literal to literal
    # (a "{n}" CRLF marker can only end a line, so its n bytes are passed without looking at them)
    # up to the first line that starts with the tag outside any literal. Literals are only looked for
    # before that line: with pipelining the buffer may already hold the next commands' answers.

    def _read_until_tagged(self, tag: bytes, name: str, collect: bool) -> bytes:
        """Read up to the tagged line of `tag`. With `collect` the untagged part (literals included) stays
        in the buffer until it is returned whole; otherwise it is consumed as it passes (a 300 KB
        attachment is never held) and b"" is returned. The hot path of the whole load generator."""
        conn = self.conn
        tag_line = _CRLF + tag
        literal = _LITERAL.search
        done = 0  # bytes after conn.pos already passed (collect mode only; counting consumes them)
        line_start = True  # conn.pos + done begins a line
        while True:
            buf = conn.buf
            base = conn.pos
            pos, end = base + done, len(buf)
            tagged = -1  # where the tagged line starts (end: not in the buffer yet), valid while >= pos
            passed = pos
            while pos <= end:
                if tagged < pos:
                    if line_start and pos == passed and buf.startswith(tag, pos):
                        tagged = pos
                    else:
                        tagged = buf.find(tag_line, pos)
                        tagged = tagged + 2 if tagged >= 0 else end
                marker = literal(buf, pos, tagged)
                if marker is None:
                    break
                size = int(marker[1])
                pos = marker.end() + size  # the literal is jumped over, never scanned
            if pos != passed:
                line_start = False  # a literal was passed: pos is inside its line
            if pos > end:  # a literal goes on beyond what has arrived
                if size > MAX_LITERAL:  # (literals that ended inside the buffer are smaller than it)
                    raise ResponseTooLarge(f"{name}: a literal of {size} bytes (at most {MAX_LITERAL // 2**20} MB)")
                if collect:
                    done = pos - base
                    conn.fill()
                else:
                    conn.pos = end
                    conn.skip(pos - end)  # consumed as it arrives: the buffer stays small
                    done = 0
                continue
            if tagged < end:
                eol = buf.find(_CRLF, tagged)
                if eol >= 0:
                    conn.pos = eol + 2
                    return self._status(buf[tagged + len(tag) : eol], name, bytes(buf[base:tagged]) if collect else b"")
                pos, line_start = tagged, True  # the tagged line is still arriving
            else:
                # Pass the complete lines: the next scan starts at the last (partial) one, so a server that
                # never stops sending costs linear time (and, counting, flat memory).
                last = buf.rfind(_CRLF, pos)
                if last >= 0:
                    pos, line_start = last + 2, True
            if collect:
                done = pos - base
            else:
                conn.pos = pos
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
                    self.exists_arrived = conn.arrived  # kernel time of the read that brought it (0: not noted)
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
