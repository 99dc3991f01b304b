"""A TCP (optionally TLS) connection whose reads run against a deadline (the reading is harness/framing.py).

A server that trickles bytes, never ends a line or never answers must not hang the
harness: every read is bounded by an absolute deadline (not a per-recv timeout) and
no single line may grow past MAX_LINE. The sessions turn the low-level exceptions
raised here into messages that name the command being answered.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time

from harness.framing import LineTooLong, PeerClosed, Reader, ReadTimeout  # noqa: F401 - LineTooLong: for the sessions
from harness.sessions.errors import ProtocolError
from harness.tls import ClientCert, client_context, failure_reason

MAX_LINE = 1 << 20  # 1 MiB: far beyond any sane protocol line, small enough to fail fast on garbage
MAX_RESPONSE = 64 << 20  # one whole response, literals included
RECV_SIZE = 256 * 1024


# What a read raises here: the framing layer's own exceptions (the sessions word them per command).
WireTimeout = ReadTimeout
WireClosed = PeerClosed


class BareLineFeed(Exception):
    """A line of a response ended with LF alone; RFC 1939 §3 and RFC 3501 §2.2 end every line with CRLF.

    Raised by `take()` once the bytes are out of the buffer, so the stream stays in step: `data` is what
    was taken, `offsets` the index in it of each bare LF."""

    def __init__(self, data: bytes, offsets: list[int]):
        super().__init__(f"bare LF at offset(s) {offsets}")
        self.data, self.offsets = data, offsets


def deadline_after(seconds: float) -> float:
    return time.monotonic() + seconds


def tls_context(tls_verify: bool, ca_file: str | None, client_cert: ClientCert | None = None) -> ssl.SSLContext:
    return client_context(tls_verify, ca_file, client_cert)  # harness/tls.py: one place for every connection


class Wire(Reader):
    """Bytes in and out of one connection; the receiving is harness.framing's Reader, every read
    against the deadline the caller gives."""

    __slots__ = ("_bare_lf", "_taken", "client_cert", "host", "last_bare_lf", "strict_line_ends", "url")

    def __init__(self, url: str, host: str, port: int, *, tls: bool, tls_verify: bool, ca_file: str | None,
                 timeout: float, source: str | None = None, client_cert: ClientCert | None = None):
        self.url = url
        self.host = host
        self.client_cert = client_cert
        # Line ends are checked here, where every received byte passes, not by each check: with
        # `strict_line_ends`, take() raises BareLineFeed; otherwise `last_bare_lf` says where they were.
        self.strict_line_ends = True
        self.last_bare_lf: list[int] = []
        self._taken = 0  # bytes taken from the stream so far: positions below are stream offsets
        self._bare_lf: set[int] = set()  # stream offsets of line-ending LFs without a CR before them
        try:
            sock = socket.create_connection((host, port), timeout=timeout,
                                            source_address=(source, 0) if source else None)
        except OSError as exc:
            raise ProtocolError(f"cannot connect to {url}: {_reason(exc)}") from None
        super().__init__(sock, max_line=MAX_LINE, max_buffered=None, recv_size=RECV_SIZE, timed_reads=True)
        if tls:
            self.start_tls(tls_verify, ca_file, deadline_after(timeout))

    def start_tls(self, tls_verify: bool, ca_file: str | None, deadline: float) -> None:
        if self.unread:
            # Bytes that arrived in plaintext after the STARTTLS answer would be trusted as if encrypted.
            raise ProtocolError(f"{self.url} sent {self.unread} unexpected bytes before the TLS handshake")
        self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            self.use_socket(tls_context(tls_verify, ca_file, self.client_cert).wrap_socket(self.sock, server_hostname=self.host))
        except (OSError, ssl.SSLError) as exc:
            self.close()
            raise ProtocolError(f"TLS handshake with {self.url} failed: {_reason(exc)}") from None

    @property
    def tls_version(self) -> str | None:
        return self.sock.version() if isinstance(self.sock, ssl.SSLSocket) else None

    # -- sending -----------------------------------------------------------------
    def send(self, data: bytes, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WireTimeout()
        self.sock.settimeout(remaining)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise WireTimeout() from None
        except OSError as exc:
            raise WireClosed(_reason(exc)) from None

    # -- receiving (harness.framing.Reader), with this layer's wording ---------------
    def _lost_error(self, exc: OSError | None) -> Exception:
        return WireClosed(_reason(exc) if exc else "connection closed by the server")

    def find_eol(self, start: int, deadline: float) -> int:
        """Offset of the first LF at or after offset `start`, receiving as needed. Takes nothing."""
        self.deadline = deadline
        i = self.find(b"\n", start)
        if not (i > start and self.buf[self.pos + i - 1] == 0x0D):
            self._bare_lf.add(self._taken + i)  # a set: a timed-out read scans the line again
        return i

    def ensure_until(self, size: int, deadline: float) -> None:
        """Receive until at least `size` bytes are unread. Takes nothing."""
        self.deadline = deadline
        self.ensure(size)

    def take(self, size: int) -> bytes:
        """The next `size` unread bytes, consumed (they must have arrived). BareLineFeed if a line end in them
        was a bare LF (and `strict_line_ends`)."""
        data = super().take(size)
        start, self._taken = self._taken, self._taken + size
        self.last_bare_lf = sorted(pos - start for pos in self._bare_lf if pos < self._taken)
        if self.last_bare_lf:
            self._bare_lf = {pos for pos in self._bare_lf if pos >= self._taken}
            if self.strict_line_ends:
                raise BareLineFeed(data, self.last_bare_lf)
        return data

    def readline(self, deadline: float) -> bytes:
        """One line including its line end (LF or CRLF)."""
        return self.take(self.find_eol(0, deadline) + 1)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def hang_up(self, wait: float, limit: int = 1 << 20) -> bool:
        """Half-close (FIN) and wait up to `wait` seconds for the server to close its end, discarding what
        it still sends (at most `limit` bytes); then close. True if the server closed in time."""
        deadline = deadline_after(wait)
        received = 0
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while received < limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.sock.settimeout(remaining)
                data = self.sock.recv(65536)
                if not data:
                    return True
                received += len(data)
            return False
        except TimeoutError:
            return False
        except OSError:  # reset: the server has closed too
            return True
        finally:
            self.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return failure_reason(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
