"""A lean POP3 client for load generation: status lines, multi-line bodies counted, not split.

RETR scans the buffer for the CRLF.CRLF terminator in place; the message is never
un-dot-stuffed or parsed, except that one header can be picked out of it (the
download-and-delete poller reads X-Mailharness-Id to account for every delivery).

A server that lists PIPELINING in CAPA (RFC 2449 section 6.6) may be sent a batch of commands
in one write (``batch``); its replies come back in order, each reported on its own.
"""

from __future__ import annotations

from time import monotonic

from harness.load.wire import CommandFailed, MalformedResponse, Step, WireClient, report_if_late

_TERMINATOR = b"\r\n.\r\n"
# Commands per write when pipelining: a poll of 100 messages is 200 commands; each write stays far below the
# socket buffer (so sending never waits on the server reading), and a reply is never queued behind more than
# this many others of the same write.
MAX_PIPELINE = 16

# One command of a batch: (request name, command without CRLF, multi-line answer?, header to pick out of it or None)
Pop3Command = tuple[str, bytes, bool, "bytes | None"]


class Pop3Client(WireClient):
    """One POP3 session. Every command is reported as (name, ms, bytes received, exception)."""

    def __init__(self, endpoint, **options):
        super().__init__(endpoint, **options)
        self.pipelining = False  # CAPA listed PIPELINING (see capa(); off until asked)

    # -- session ---------------------------------------------------------------------
    def connect(self) -> None:
        """TCP connect and greeting (and STLS when the endpoint asks for it): "POP3 connect"."""
        try:
            with Step(self, "POP3 connect"):
                self._open()
                self._status("POP3 connect")
                if self.endpoint.starttls:
                    self.conn.send(b"STLS\r\n")
                    self._status("POP3 STLS")
                    self.conn.start_tls()
        except BaseException:
            self.close()
            raise

    def capa(self) -> set[bytes]:
        """CAPA (RFC 2449): the capability names, upper-cased; notes whether PIPELINING is among them.

        A server that predates CAPA answers -ERR: it has no capabilities to list, which is not a failure."""
        with Step(self, "POP3 CAPA"):
            conn = self._connected("POP3 CAPA")
            conn.send(b"CAPA\r\n")
            line = conn.read_line()
            body = self._read_body(True, None) if line.startswith(b"+OK") else b""
            names = {entry.split(b" ", 1)[0].upper() for entry in body.split(b"\r\n") if entry}
        self.pipelining = b"PIPELINING" in names
        return names

    def login(self, user: str, password: str) -> None:
        if "\r" in user + password or "\n" in user + password:
            raise ValueError("CR/LF cannot be sent in USER/PASS")
        self.command("POP3 USER", b"USER " + user.encode())
        self.command("POP3 PASS", b"PASS " + password.encode())

    def quit(self) -> None:
        """QUIT commits the session's DELEs; the connection is closed whatever the answer."""
        try:
            self.command("POP3 QUIT", b"QUIT")
        finally:
            self.close()

    # -- commands --------------------------------------------------------------------
    def stat(self) -> tuple[int, int]:
        """(message count, total octets)."""
        return self.command("POP3 STAT", b"STAT", parse=lambda line: _numbers("POP3 STAT", line.split()[1:3]))

    def dele(self, number: int) -> None:
        self.command("POP3 DELE", b"DELE %d" % number)

    def noop(self) -> None:
        self.command("POP3 NOOP", b"NOOP")

    def uidl(self) -> list[tuple[int, bytes]]:
        """[(message number, unique id)] for the whole maildrop."""
        def parse(body: bytes) -> list[tuple[int, bytes]]:
            out = []
            for line in body.split(b"\r\n"):
                if line:
                    number, _, uid = line.partition(b" ")
                    out.append((_numbers("POP3 UIDL", [number], 1)[0], uid))
            return out

        return self._multiline("POP3 UIDL", b"UIDL", keep=True, parse=parse)

    def list(self) -> list[tuple[int, int]]:
        """[(message number, size)] for the whole maildrop."""
        return self._multiline("POP3 LIST", b"LIST", keep=True, parse=lambda body: [
            _numbers("POP3 LIST", line.split()) for line in body.split(b"\r\n") if line])

    def retr(self, number: int, header: bytes | None = None) -> bytes | None:
        """RETR a message; returns the value of ``header`` (e.g. b"X-Mailharness-Id") if asked for."""
        return self._multiline("POP3 RETR", b"RETR %d" % number, header=header)

    def batch(self, commands: list[Pop3Command]) -> list[bytes | None]:
        """Run the commands in order; returns each one's result: a single-line command's +OK line, a multi-line
        one's header value (or None). -ERR raises CommandFailed.

        When CAPA listed PIPELINING they go out MAX_PIPELINE to a write and the replies are read in order, each
        reported on its own: timed from the write to the end of its own reply (as the client waits for it), with
        the bytes received since the reply before. A -ERR is reported and raised once the write's replies were
        all read, so the stream stays in step (a poller then drops the session without QUIT, and nothing a
        later DELE marked is committed); a timeout or a lost connection ends the batch at once. Without
        PIPELINING, one command at a time, stopping at the first -ERR."""
        if not self.pipelining:
            return [self._multiline(name, command, header=header) if multiline else self.command(name, command)
                    for name, command, multiline, header in commands]
        results: list[bytes | None] = []
        for start in range(0, len(commands), MAX_PIPELINE):
            results += self._pipelined(commands[start : start + MAX_PIPELINE])
        return results

    def _pipelined(self, commands: list[Pop3Command]) -> list[bytes | None]:
        conn = self._connected(commands[0][0])
        results: list[bytes | None] = []
        failure: CommandFailed | None = None
        started = monotonic()
        conn.deadline = started + self.timeout
        try:
            try:
                conn.send(b"".join(command + b"\r\n" for _, command, _, _ in commands))
            except Exception as lost:  # the batch never went out: its first command is the failed request
                self.report(commands[0][0], (monotonic() - started) * 1000, 0, lost)
                raise
            consumed = conn.received - conn.unread
            for name, _, multiline, header in commands:
                result = exc = None
                try:
                    result = self._status(name)
                    if multiline:
                        result = self._read_body(False, header)
                except CommandFailed as failed:
                    exc, failure = failed, failure or failed
                except Exception as lost:
                    self.report(name, (monotonic() - started) * 1000, conn.received - conn.unread - consumed, lost)
                    raise
                except BaseException as killed:  # the run ended (Locust killed the user) while it waited
                    report_if_late(self, name, (monotonic() - started) * 1000, conn.received - conn.unread - consumed, killed)
                    raise
                now_consumed = conn.received - conn.unread
                self.report(name, (monotonic() - started) * 1000, now_consumed - consumed, exc)
                consumed = now_consumed
                results.append(result)
                conn.deadline = monotonic() + self.timeout
        finally:
            conn.deadline = 0.0
        if failure:
            raise failure
        return results

    def command(self, name: str, command: bytes, parse=None):
        """A single-line command; returns the +OK line (or what `parse` makes of it). -ERR raises CommandFailed."""
        with Step(self, name):  # parsed inside the step: an answer it cannot read is a failed request
            self._connected(name).send(command + b"\r\n")
            line = self._status(name)
            return parse(line) if parse else line

    # -- reading ---------------------------------------------------------------------
    def _status(self, name: str) -> bytes:
        line = self.conn.read_line()
        if not line.startswith(b"+OK"):
            raise CommandFailed(f"{name}: {line[:300].decode(errors='replace')}")
        return line

    def _multiline(self, name: str, command: bytes, *, keep: bool = False, header: bytes | None = None, parse=None):
        with Step(self, name):
            self._connected(name).send(command + b"\r\n")
            self._status(name)
            body = self._read_body(keep, header)
            return parse(body) if parse else body

    def _read_body(self, keep: bool, header: bytes | None):
        """Consume a multi-line body up to CRLF.CRLF; return it (``keep``), one header's value, or None."""
        conn = self.conn
        scanned = 0  # bytes after conn.pos already searched for the terminator
        while True:
            buf, pos = conn.buf, conn.pos
            if buf.startswith(b".\r\n", pos):  # empty body
                conn.pos = pos + 3
                return b"" if keep else None
            end = buf.find(_TERMINATOR, pos + scanned)
            if end >= 0:
                break
            scanned = max(0, len(buf) - pos - 4)
            conn.fill()
        result = None
        if keep:
            result = bytes(buf[pos : end + 2])
        elif header is not None:
            result = _header_value(buf, pos, end, header)
        conn.pos = end + 5
        return result


def _header_value(buf: bytearray, start: int, end: int, name: bytes) -> bytes | None:
    """The value of header ``name`` in the message at buf[start:end], looking only at the header block."""
    header_end = buf.find(b"\r\n\r\n", start, end)
    if header_end < 0:
        header_end = end
    prefix = name + b":"
    if buf.startswith(prefix, start):
        at = start
    else:
        at = buf.find(b"\r\n" + prefix, start, header_end)
        if at < 0:
            return None
        at += 2
    eol = buf.find(b"\r\n", at, end + 2)
    return bytes(buf[at + len(prefix) : eol]).strip()


def _numbers(name: str, words: list[bytes], count: int = 2) -> tuple[int, ...]:
    """`count` decimal numbers, or MalformedResponse (not a ValueError: the users count it as a failed request)."""
    if len(words) < count or not all(w.isdigit() for w in words[:count]):
        raise MalformedResponse(f"{name}: expected {count} number(s), got {b' '.join(words)[:200]!r}")
    return tuple(int(w) for w in words[:count])
