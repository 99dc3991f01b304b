"""A POP3 session (RFC 1939) on a raw socket, so tests see exactly the bytes on the wire."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.sessions.base import Session
from harness.sessions.errors import ProtocolError, ResponseTooLarge
from harness.sessions.transcript import ABBREVIATE_OVER, Transcript
from harness.sessions.wire import MAX_RESPONSE, BareLineFeed, LineTooLong, WireClosed, WireTimeout

# Commands whose +OK answer has a body; LIST and UIDL only without an argument. A bare AUTH is no RFC's
# (RFC 5034 lists mechanisms in CAPA's SASL line), but the servers that answer it +OK list the mechanisms
# one per line, ended by "." (the form clients from before RFC 2449 used).
MULTILINE_ALWAYS = {"CAPA", "RETR", "TOP"}
MULTILINE_WITHOUT_ARG = {"LIST", "UIDL", "AUTH"}


@dataclass
class POP3Response:
    ok: bool
    status: str  # "+OK" or "-ERR"
    text: str  # the status line after the status indicator
    line: str  # the whole status line
    lines: list[bytes] | None = None  # multi-line body, dot-unstuffed, without line ends
    body: bytes | None = None  # the lines, each ended by CRLF: for RETR, the message
    wire_octets: int = 0  # body bytes as sent, before unstuffing, without the final ".\r\n"
    bare_lf_lines: int = 0  # lines (status included) the server ended with LF instead of CRLF
    continued: int = 0  # "+ " requests answered with a line of `continuations` (SASL)


def is_multiline(line: str) -> bool:
    verb, _, arg = line.strip().partition(" ")
    verb = verb.upper()
    return verb in MULTILINE_ALWAYS or (verb in MULTILINE_WITHOUT_ARG and not arg.strip())


class POP3Session(Session):
    scheme = "pop3"
    line_end_rfc = "RFC 1939 §3"

    def __init__(self, host: str, port: int, *, tls: bool = False, starttls: bool = False, tls_verify: bool = True,
                 ca_file: str | None = None, name: str = "p", transcript: Transcript | None = None,
                 timeout: float = 5.0, strict_line_ends: bool = True, source: str | None = None,
                 client_cert: tuple[str, str | None] | None = None):
        super().__init__(host, port, tls=tls, starttls=starttls, tls_verify=tls_verify, ca_file=ca_file, name=name,
                         transcript=transcript, timeout=timeout, strict_line_ends=strict_line_ends, source=source,
                         client_cert=client_cert)
        deadline, seconds = self._deadline(None)
        raw = self._readline(deadline, None, seconds, None)
        self._record(raw)
        self.greeting = _strip_eol(raw).decode("utf-8", "backslashreplace")
        status, _ = _parse_status(self.greeting)
        if status != "+OK":
            problem = "refused the session" if status else "sent a malformed greeting"
            raise self._fail(ProtocolError(f"{self.url} {problem}: {self.greeting!r}"))
        if starttls:
            resp = self.command("STLS")
            if not resp.ok:
                raise self._fail(ProtocolError(f"{self.url} refused STLS: {resp.line}"))
            self._tls_upgrade(self._deadline(None)[0])

    # -- the general command ---------------------------------------------------------
    def command(self, line: str, *, timeout: float | None = None, multiline: bool | None = None,
                continuations: Sequence[str] = (), pipelined: bytes = b"") -> POP3Response:
        """Send `line`, read the answer. `continuations`: lines to send, one per "+ " request, during AUTH.
        `pipelined`: bytes sent in the same write right after the line, whose answers are not read here."""
        if "\r" in line or "\n" in line:
            raise ValueError("a POP3 command line cannot contain CR or LF; it is ended for you")
        self._check_open(line)
        deadline, seconds = self._deadline(timeout)
        self._send(_wire(line) + pipelined, deadline, line)
        replies = list(continuations)
        while True:
            raw = self._readline(deadline, line, seconds, None)
            self._record(raw)
            status_line = _strip_eol(raw).decode("utf-8", "backslashreplace")
            if not (status_line == "+" or status_line.startswith("+ ")):
                break
            if not replies:
                raise self._fail(ProtocolError(
                    f"unexpected continuation request `{status_line}` from {self.url} in response to "
                    f"`{self._describe(line)}`"))
            self._send(_wire(replies.pop(0)), deadline, "(SASL response)")
        status, text = _parse_status(status_line)
        if status is None:
            raise self._fail(ProtocolError(
                f"malformed status line from {self.url} in response to `{self._describe(line)}`: {status_line!r}"))
        resp = POP3Response(ok=status == "+OK", status=status, text=text, line=status_line,
                            bare_lf_lines=int(not raw.endswith(b"\r\n")), continued=len(continuations) - len(replies))
        if resp.ok and (is_multiline(line) if multiline is None else multiline):
            self._read_body(resp, deadline, line, seconds, raw)
        if resp.bare_lf_lines:
            self._note(f"{resp.bare_lf_lines} line(s) ended with a bare LF instead of CRLF")
        return resp

    def _read_body(self, resp: POP3Response, deadline: float, line: str, seconds: float, status: bytes) -> None:
        # Two flat buffers, not a list of line objects: a body without end costs its bytes and no more
        # (a list of 5-byte lines costs ten times that), up to MAX_RESPONSE.
        body = bytearray()  # dot-unstuffed, each line ended by CRLF
        wire_lines = bytearray()  # as received, for the transcript
        count = 0
        while True:
            raw = self._readline(deadline, line, seconds, f"{count} lines", offset=len(status) + len(wire_lines),
                                 head=status, earlier=wire_lines)
            content = _strip_eol(raw)
            resp.bare_lf_lines += not raw.endswith(b"\r\n")
            if content == b".":
                break
            wire_lines += raw
            count += 1
            if len(wire_lines) > MAX_RESPONSE:
                self._record_partial(wire_lines)
                raise self._fail(ResponseTooLarge(
                    f"response from {self.url} to `{self._describe(line)}` exceeds {MAX_RESPONSE >> 20} MiB "
                    f"({count} lines without the final \".\")"))
            # RFC 1939 §3: a line starting with the termination octet has that first octet removed.
            body += content[1:] if content.startswith(b".") else content
            body += b"\r\n"
        self._record(bytes(wire_lines), literals=False)
        resp.body = bytes(body)
        resp.lines = resp.body.split(b"\r\n")[:-1]  # a line's content holds no LF, so no CRLF either
        resp.wire_octets = len(wire_lines)

    def _readline(self, deadline: float, line: str | None, seconds: float, progress: str | None, *,
                  offset: int = 0, head: bytes | None = None, earlier: bytearray | None = None) -> bytes:
        """One line. For a bare-LF failure, `offset` and `head` place it in its multi-line response, and
        `earlier` (body lines not yet in the transcript) goes into the transcript before it."""
        try:
            return self.wire.readline(deadline)
        except BareLineFeed as exc:
            if earlier:  # the transcript shows the body up to the bad line, and offsets count from there
                before = bytes(earlier)
                exc, offset = BareLineFeed(before + exc.data, [o + len(before) for o in exc.offsets]), offset - len(before)
            raise self._read_error(exc, line, seconds, progress, offset=offset, head=head) from None
        except (WireTimeout, WireClosed, LineTooLong) as exc:
            if earlier:
                self._record_partial(earlier)
            raise self._read_error(exc, line, seconds, progress, offset=offset, head=head) from None

    def _record_partial(self, body: bytearray) -> None:
        """The start of a body that never ended, for the transcript (which would only keep a preview anyway)."""
        self._record(bytes(body[:ABBREVIATE_OVER]), literals=False)
        if len(body) > ABBREVIATE_OVER:
            self._note(f"... {len(body) - ABBREVIATE_OVER} more bytes of this body arrived ({len(body)} in all)")

    # -- conveniences ------------------------------------------------------------------
    def login(self, user: str, password: str, *, timeout: float | None = None) -> POP3Response:
        """USER/PASS; raises ProtocolError unless both are accepted. `timeout`: for PASS, which a server
        may delay after failed logins from this address."""
        self._add_secret(password)
        resp = self.command(f"USER {user}")
        if not resp.ok:
            raise ProtocolError(f"{self.url}: USER {user} rejected: {self._describe(resp.line)}")
        resp = self.command(f"PASS {password}", timeout=timeout)
        if not resp.ok:
            raise ProtocolError(f"{self.url}: login as {user} failed: {self._describe(resp.line)}")
        return resp

    def capa(self) -> list[str]:
        """The CAPA lines (RFC 2449); raises ProtocolError if the server refuses CAPA."""
        resp = self.command("CAPA")
        if not resp.ok:
            raise ProtocolError(f"{self.url}: CAPA failed: {resp.line}")
        return [x.decode("utf-8", "backslashreplace") for x in resp.lines or []]

    def quit(self) -> POP3Response:
        try:
            return self.command("QUIT", multiline=False)
        finally:
            self.drop()

    def _goodbye(self, timeout: float) -> None:
        self.command("QUIT", timeout=timeout, multiline=False)


def _parse_status(line: str) -> tuple[str | None, str]:
    for status in ("+OK", "-ERR"):
        if line == status:
            return status, ""
        if line.startswith(status + " "):
            return status, line[len(status) + 1:]
    return None, ""


def _strip_eol(raw: bytes) -> bytes:
    return raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith(b"\n") else raw


def _wire(line: str) -> bytes:
    return line.encode("utf-8", "surrogateescape") + b"\r\n"
