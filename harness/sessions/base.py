"""What POP3 and IMAP sessions share: the connection, the transcript, deadlines and error wording."""

from __future__ import annotations

from harness.known_secrets import SECRETS
from harness.sessions.errors import ConnectionClosed, ProtocolError, ProtocolTimeout, SessionError
from harness.sessions.redact import MASK, redact_line
from harness.sessions.transcript import Transcript
from harness.sessions.wire import (
    MAX_LINE,
    BareLineFeed,
    LineTooLong,
    Wire,
    WireClosed,
    WireTimeout,
    deadline_after,
)


def secs(seconds: float) -> str:
    """5 -> "5.0", 0.25 -> "0.25": how long we waited, as in the error messages."""
    return f"{seconds:.1f}" if round(seconds, 1) == seconds else f"{seconds:g}"


class Session:
    scheme = ""  # "imap" or "pop3"; "s" is appended for implicit TLS
    literals = False  # does the transcript look for IMAP literals in this protocol?
    line_end_rfc = ""  # where the protocol says every line ends with CRLF

    def __init__(self, host: str, port: int, *, tls: bool, starttls: bool, tls_verify: bool, ca_file: str | None,
                 name: str, transcript: Transcript | None, timeout: float, strict_line_ends: bool = True,
                 source: str | None = None, client_cert: tuple[str, str | None] | None = None):
        """`source`: the local address to connect from (see harness/engine/login_delays.py)."""
        if tls and starttls:
            raise ValueError("tls and starttls exclude each other")
        self.name = name
        self.transcript = transcript
        self.timeout = timeout
        netloc = f"[{host}]" if ":" in host else host  # IPv6 literal
        self.url = f"{self.scheme}{'s' if tls else ''}://{netloc}:{port}"
        self._tls_verify, self._ca_file = tls_verify, ca_file
        self._secrets: set[str] = set()
        self.closed = False
        self.wire = Wire(self.url, host, port, tls=tls, tls_verify=tls_verify, ca_file=ca_file, timeout=timeout,
                         source=source, client_cert=client_cert)
        if source:
            self._note(f"connected from {source}")
        # Strict (the default): a line ended by a bare LF fails the read that received it. The probe is
        # lenient, so such a server still gets a run whose tests each report it.
        self.wire.strict_line_ends = strict_line_ends
        if tls:
            self._note(f"TLS established ({self.wire.tls_version})")

    # -- context manager: `with IMAPSession(...) as s:` closes politely ------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Say goodbye (QUIT, LOGOUT) as far as the server lets us, then close. Never raises.

        After a goodbye the server closes its end; that is waited for (at most a second), so that whatever
        the server does when a session ends (unlocking the mailbox, committing) is done before anything
        that comes next, such as the test's clean-up."""
        if self.closed:
            return
        said = False
        try:
            self._goodbye(min(self.timeout, 2.0))
            said = True
        except Exception as exc:  # noqa: BLE001 - closing must not fail a test that already has its result
            self._note(f"no clean {self.goodbye_command}: {exc}")
        finally:
            if said:
                self.hang_up(min(self.timeout, 1.0))
            else:
                self.drop()

    goodbye_command = "QUIT"

    def _goodbye(self, timeout: float) -> None:
        raise NotImplementedError

    def drop(self) -> None:
        """Close the TCP connection at once, saying nothing to the server."""
        if not self.closed:
            self.closed = True
            self.wire.close()
            self._note("connection closed by the client")

    def hang_up(self, wait: float) -> bool:
        """Drop, as a lost client does, and wait (up to `wait` seconds) until the server has closed its end
        too: what it does about a drop is then done before the next step looks. True if it closed in time."""
        if self.closed:
            return True
        self.closed = True
        closed = self.wire.hang_up(wait)
        self._note("connection closed by the client" + ("" if closed else f"; the server kept its end open for {secs(wait)} s"))
        return closed

    # -- helpers for the protocol classes --------------------------------------------
    def _deadline(self, timeout: float | None) -> tuple[float, float]:
        seconds = self.timeout if timeout is None else timeout
        return deadline_after(seconds), seconds

    def _check_open(self, what: str) -> None:
        if self.closed:
            raise ConnectionClosed(f"cannot send `{self._describe(what)}`: the session to {self.url} is closed")

    def _add_secret(self, secret: str) -> None:
        if secret:
            self._secrets.add(secret)
            if self.transcript:
                self.transcript.add_secret(secret)

    def _describe(self, line: str) -> str:
        """A command as error messages show it: secrets masked."""
        text = redact_line(line)
        for secret in self._secrets:
            text = text.replace(secret, MASK.decode())
        return SECRETS.scrub(text)

    def _send(self, data: bytes, deadline: float, what: str) -> None:
        if self.transcript:
            self.transcript.client(self.name, data, literals=self.literals)
        try:
            self.wire.send(data, deadline)
        except WireTimeout:
            cmd = self._describe(what)
            raise self._fail(ProtocolTimeout(f"could not send `{cmd}` to {self.url} in time")) from None
        except WireClosed as exc:
            cmd = self._describe(what)
            raise self._fail(ConnectionClosed(f"cannot send `{cmd}`: {self.url}: {exc}")) from None

    def _record(self, data: bytes, *, literals: bool | None = None) -> None:
        if self.transcript:
            self.transcript.server(self.name, data, literals=self.literals if literals is None else literals)

    def _note(self, text: str) -> None:
        if self.transcript:
            self.transcript.note(self.name, text)

    def _fail(self, exc: SessionError) -> SessionError:
        """After a timeout or a malformed response the stream is out of step: the session is over."""
        if not self.closed:
            self.closed = True
            self.wire.close()
        self._note(f"session abandoned: {exc}")
        return exc

    def _read_error(self, exc: Exception, what: str | None, seconds: float, progress: str | None, *,
                    offset: int = 0, head: bytes | None = None) -> SessionError:
        """The SessionError for a low-level read failure while waiting for the answer to `what`
        (None: the greeting). `progress` says what did arrive, for a response cut short. For a bare LF:
        `offset` is where the bytes taken start within their response, `head` that response's first line."""
        got = f" (got {progress})" if progress else ""
        answer = f"response to `{self._describe(what)}`" if what is not None else "greeting"
        if isinstance(exc, BareLineFeed):
            self._record(exc.data)  # the reader sees the response as it came
            return self._fail(ProtocolError(self._bare_lf_message(exc, answer, offset, head)))
        if isinstance(exc, WireTimeout):
            partial = "complete " if progress else ""
            return self._fail(ProtocolTimeout(f"no {partial}{answer} within {secs(seconds)} s{got}"
                                              + ("" if what is not None else f" from {self.url}")))
        if isinstance(exc, LineTooLong):
            return self._fail(ProtocolError(
                f"{self.url} sent a line longer than {MAX_LINE >> 20} MiB as its {answer}{got}"))
        if isinstance(exc, WireClosed):
            where = "in the middle of its" if progress else "instead of its" if what is None else "before its"
            return self._fail(ConnectionClosed(f"{self.url} closed the connection {where} {answer}{got}: {exc}"))
        raise exc

    def _bare_lf_message(self, exc: BareLineFeed, answer: str, offset: int, head: bytes | None) -> str:
        first = exc.offsets[0]
        start = exc.data.rfind(b"\n", 0, first) + 1
        line = exc.data[start:first + 1]
        head = exc.data[:exc.data.find(b"\n") + 1] if head is None else head
        shown = _display(head) if start == 0 and offset == 0 else f"{_display(head)} ... {_display(line)}"
        more = f"; {len(exc.offsets)} bare LFs in these {len(exc.data)} bytes" if len(exc.offsets) > 1 else ""
        return (f"{self.url} ended a line with a bare LF instead of CRLF ({self.line_end_rfc}) in its {answer}: "
                f"byte offset {offset + first} of the response {shown}{more}")

    # -- TLS after STARTTLS/STLS, and what comes unasked ----------------------------------
    @property
    def tls_active(self) -> bool:
        return self.wire.tls_version is not None

    def start_tls(self, timeout: float | None = None) -> None:
        """The TLS handshake, now: the server has just accepted STARTTLS (IMAP) or STLS (POP3)."""
        self._tls_upgrade(self._deadline(timeout)[0])

    def unsolicited(self, seconds: float) -> bytes:
        """Bytes the server sends within `seconds` although nothing was asked (b"" when none came). They are
        recorded and left unread: after them the stream is out of step, and the caller fails the test."""
        deadline = deadline_after(seconds)
        if not self.wire.unread:
            self.wire.deadline = deadline
            try:
                self.wire.fill()
            except WireTimeout:
                return b""
            except WireClosed as exc:
                self._note(f"the server closed the connection: {exc}")
                return b""
        data = self.wire.peek(0, self.wire.unread)
        self._record(data)
        return data

    def _tls_upgrade(self, deadline: float) -> None:
        try:
            self.wire.start_tls(self._tls_verify, self._ca_file, deadline)
        except ProtocolError as exc:
            raise self._fail(exc) from None
        self._note(f"TLS established ({self.wire.tls_version})")


def _display(data: bytes, limit: int = 80) -> str:
    """A line for an error message: its bytes shown with escapes (so \\n and \\r are visible), cut at `limit`."""
    # UTF-8 kept as text, not escaped: redaction matches secrets in it by their text
    text = data[:limit].decode("utf-8", "backslashreplace").replace("\r", "\\r").replace("\n", "\\n")
    return f"`{text}{'...' if len(data) > limit else ''}`"
