"""The lean protocol clients' connection (its receiving is harness/framing.py), and the errors they raise.

The clients use the plain ``socket``/``ssl`` modules: inside Locust, gevent has
monkey-patched them, so every blocking read yields to other users; in `mailharness seed`
and the post-run drain they are ordinary blocking sockets.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
import struct
import sys
import weakref
from collections.abc import Callable
from time import monotonic, perf_counter
from typing import Self

from harness.framing import Reader
from harness.targets.target_file import Endpoint
from harness.tls import endpoint_context

# Called once per protocol command: (name, response time in ms, bytes received, exception or None).
Reporter = Callable[[str, float, int, "BaseException | None"], None]

RECV_SIZE = 65536
# What one connection may hold unread: a message being retrieved (the largest seeded is ~1 MB), a
# FETCH response with its literals. A server that sends more without ending its answer is hostile
# (an endless body, a {2000000000} literal): the command fails rather than the generator's memory.
MAX_BUFFERED = 32 * 1024 * 1024
MAX_LINE = 1024 * 1024  # one response line without its literals (a SEARCH of 100,000 messages is ~700 KB)
# A literal that is only counted, never held (an attachment passed over): larger ones fail at once
# rather than be read for the command's whole timeout.
MAX_LITERAL = 64 * 1024 * 1024
MAX_REPLY_LINES = 1000  # lines of one SMTP/LMTP reply


class WireError(Exception):
    """A protocol step failed; the load users count it as a failed request and reconnect."""


class CommandFailed(WireError):
    """The server answered -ERR, NO or BAD (or an SMTP/LMTP 4xx/5xx)."""


class ConnectionClosed(WireError):
    """The server closed the connection in the middle of a response."""


class ResponseTooLarge(WireError):
    """The server sent more than a response may hold (a line or an answer beyond the caps)."""


class MalformedResponse(WireError):
    """An answer the client cannot read (STAT without its numbers, a LIST line that is not `n size`)."""


def tls_context(endpoint: Endpoint, ca_file: str | None) -> ssl.SSLContext:
    return endpoint_context(endpoint, ca_file)  # harness/tls.py: one place for every connection


_TIMESPEC = struct.Struct("@qq")  # struct timespec of an SCM_TIMESTAMPNS message (64-bit Linux)
# Python's socket module does not name it; SCM_TIMESTAMPNS is the same number (asm-generic/socket.h).
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35) if sys.platform.startswith("linux") and struct.calcsize("P") == 8 else None
# Linux: bind() picks no port, connect() does, so a source address's ports are shared across destinations.
_BIND_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24) if sys.platform.startswith("linux") else None


@functools.lru_cache(maxsize=256)
def _ip_family(host: str) -> int | None:
    """AF_INET/AF_INET6 for an IP literal, None for a name."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None


def _open_tcp(host: str, port: int, timeout: float, source: str | None = None) -> socket.socket:
    """TCP connect, from `source` if given; IP literals skip getaddrinfo (under gevent a thread-pool round
    trip per connect)."""
    family = _ip_family(host)
    if family is None:
        return socket.create_connection((host, port), timeout=timeout, source_address=(source, 0) if source else None)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if source:
            if _BIND_NO_PORT is not None:
                sock.setsockopt(socket.IPPROTO_IP, _BIND_NO_PORT, 1)
            sock.bind((source, 0))
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _gevent_wait_then_recv(sock) -> Callable[[int], bytes] | None:
    """For a gevent-patched plain TCP socket: wait for readability, then one raw recv.

    Right after a command is sent its answer has never arrived yet, so gevent's recv()
    would first fail with EAGAIN (a syscall and an exception) before waiting; waiting first
    saves about 7 us per command, a sixth of gevent's cost per round trip. This uses
    gevent's socket internals (_wait, _read_event, _sock); without them, or over TLS, the
    ordinary recv() is used.
    """
    wait, event, raw = getattr(sock, "_wait", None), getattr(sock, "_read_event", None), getattr(sock, "_sock", None)
    if wait is None or event is None or raw is None or isinstance(sock, ssl.SSLSocket):
        return None
    raw_recv = raw.recv

    def wait_then_recv(size: int) -> bytes:
        wait(event)
        try:
            return raw_recv(size)
        except BlockingIOError:  # a spurious wake-up: let gevent's recv() wait properly
            return sock.recv(size)

    return wait_then_recv


class Watchdog:
    """Per-command timeouts for many connections from one periodic check.

    A socket timeout under gevent costs a timer object per blocking read; at thousands of
    commands per second that is a third of the generator's CPU. Instead, a command arms its
    connection with a deadline, and ``run`` (one greenlet per process) shuts down any
    connection past its deadline, which wakes the blocked read with a TimeoutError.
    Resolution is ``interval`` seconds.
    """

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.connections: weakref.WeakSet[Connection] = weakref.WeakSet()

    def check(self) -> int:
        now, expired = monotonic(), 0
        for conn in list(self.connections):
            if conn.deadline and now > conn.deadline:
                conn.expire()
                expired += 1
        return expired

    def run(self, sleep: Callable[[float], object]) -> None:
        while True:
            sleep(self.interval)
            self.check()


class Connection(Reader):
    """One TCP (or TLS) connection; its receiving side is harness.framing's Reader.

    ``buf[pos:]`` is unread data; protocol clients scan it in place (``find``/``startswith``
    with offsets) instead of splitting it into line objects, which keeps the hot path cheap.
    ``received`` counts every byte read, for Locust's response_length.

    Timeouts: without a watchdog, an ordinary socket timeout, and the command's deadline bounds
    all its reads; with one, the socket blocks without a timeout and clients ``arm()`` a deadline
    around each command.
    """

    __slots__ = ("__weakref__", "_raw_send", "arrived", "ca_file", "endpoint", "expired", "read_timeout", "timeout")

    def __init__(self, endpoint: Endpoint, timeout: float, ca_file: str | None = None, watchdog: Watchdog | None = None,
                 source: str | None = None):
        """`source`: the local address to connect from (harness/load/source_addresses.py)."""
        self.endpoint = endpoint
        self.ca_file = ca_file
        self.timeout = timeout
        self.expired = False
        self.arrived = 0.0  # see timestamp_arrivals()
        raw = sock = _open_tcp(endpoint.host, endpoint.port, timeout, *((source,) if source else ()))
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if endpoint.tls:
                sock = tls_context(endpoint, ca_file).wrap_socket(raw, server_hostname=endpoint.host,
                                                                  do_handshake_on_connect=False)
                sock.do_handshake()
        except BaseException:  # a bad CA file, a failed handshake, a killed greenlet: leave no socket open
            sock.close()  # the TLS socket once wrap_socket took the descriptor over (raw is detached then)
            raw.close()
            raise
        self.read_timeout = None if watchdog else timeout
        sock.settimeout(self.read_timeout)
        # No watchdog (seed, drain): a socket timeout bounds each read, and the command's deadline bounds
        # them all, so a server trickling a byte at a time cannot hold a command forever.
        super().__init__(sock, max_line=MAX_LINE, max_buffered=MAX_BUFFERED, recv_size=RECV_SIZE,
                         timed_reads=watchdog is None)
        self.recv_after_send = _gevent_wait_then_recv(sock) or sock.recv
        # gevent's send() wrapper costs more than the send itself; its raw non-blocking socket takes a command
        # whole (a full buffer falls back to the wrapper). Not over TLS.
        raw_sock = getattr(sock, "_sock", None)
        self._raw_send = raw_sock.send if raw_sock is not None and not isinstance(sock, ssl.SSLSocket) else None
        if watchdog:
            watchdog.connections.add(self)

    def timestamp_arrivals(self) -> bool:
        """From now on, note in ``arrived`` when the kernel received the data of each read (time.time()
        clock; SO_TIMESTAMPNS; 0.0 for data it did not stamp): how long data waited in the socket before
        the generator read it. Plain TCP on Linux only; False if unavailable. Linux turns stamping on for
        the first such socket a moment later (a deferred work item): data arriving meanwhile reads 0.0."""
        option = _SO_TIMESTAMPNS
        if option is None or isinstance(self.sock, ssl.SSLSocket):
            return False
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, option, 1)
        except OSError:
            return False
        sock, space = self.sock, socket.CMSG_SPACE(16)

        def recv_stamped(size: int) -> bytes:
            data, ancillary, _, _ = sock.recvmsg(size, space)
            self.arrived = 0.0  # no stamp (the kernel stamps only once timestamping is on): not noted, never stale
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == option and len(value) >= 16:
                    seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                    self.arrived = seconds + nanoseconds / 1e9
            return data

        self.recv = self.recv_after_send = recv_stamped  # every read: `arrived` is always the last read's
        return True

    def arm(self) -> None:
        """A command starts: it must be answered within ``timeout`` (enforced by the watchdog)."""
        self.deadline = monotonic() + self.timeout

    def disarm(self) -> None:
        self.deadline = 0.0

    def expire(self) -> None:
        self.expired = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def start_tls(self) -> None:
        """Upgrade after STARTTLS/STLS was accepted (nothing may be buffered at this point)."""
        sock = tls_context(self.endpoint, self.ca_file).wrap_socket(self.sock, server_hostname=self.endpoint.host)
        sock.settimeout(self.read_timeout)
        self.use_socket(sock)  # TLS buffers decrypted data: readiness of the fd says nothing, so plain recv()
        self._raw_send = None

    def send(self, data: bytes) -> None:
        # A command fits the socket buffer: one send() does it. gevent's sendall() would also
        # query SO_SNDBUF (a syscall) and slice memoryviews on every call.
        if self._raw_send is not None:
            try:
                sent = self._raw_send(data)
            except BlockingIOError:
                sent = 0
        else:
            sent = self.sock.send(data)
        if sent < len(data):
            self.sock.sendall(data[sent:])
        self.awaiting = True

    # -- what a failed read raises (harness.framing.Reader's hooks) -------------------
    def _lost(self) -> WireError | TimeoutError:
        if self.expired:
            return TimeoutError(f"no answer within {self.timeout:g}s")
        return ConnectionClosed("server closed the connection")

    def _timeout_error(self, started: bool) -> Exception:
        if self.expired:
            return self._lost()
        if not started:
            return TimeoutError(f"no complete answer within {self.timeout:g}s")
        return TimeoutError(f"no answer within {self.timeout:g}s")

    def _lost_error(self, exc: OSError | None) -> Exception:
        if exc is not None and not self.expired:
            return exc  # a reset, a refused TLS record: the OSError as it came
        return self._lost()

    def _line_error(self) -> Exception:
        return ResponseTooLarge(f"a line longer than {MAX_LINE // 1024} KB: {bytes(self.buf[self.pos:self.pos + 60])!r}...")

    def _buffer_error(self) -> Exception:
        return ResponseTooLarge(f"the server sent more than {MAX_BUFFERED // 2**20} MB without ending its answer")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _no_report(name: str, ms: float, nbytes: int, exc: BaseException | None) -> None:
    pass


# A command still unanswered when Locust ends the run (it kills the user: GreenletExit) is a failed request
# once it has waited this share of its timeout: else a server that never greets, or hangs after login, shows
# 0% errors in a run no longer than the timeout. Commands merely in flight at the end are not counted.
LATE_AT_END = 0.5


def report_if_late(client: WireClient, name: str, ms: float, received: int, exc: BaseException) -> None:
    if type(exc).__name__ == "GreenletExit" and ms >= LATE_AT_END * client.timeout * 1000:
        client.report(name, ms, max(0, received), TimeoutError(
            f"still unanswered when the run ended, after {ms / 1000:.1f}s (timeout {client.timeout:g}s)"))


class WireClient:
    """What the POP3, IMAP and LMTP clients share: endpoint, timeouts, reporting and one Connection.

    ``report`` gets every command as (name, ms, bytes received, exception); by default nothing
    is reported (the seeder, the drain).
    """

    default_timeout = 10.0

    def __init__(self, endpoint: Endpoint, *, timeout: float | None = None, ca_file: str | None = None,
                 report: Reporter | None = None, watchdog: Watchdog | None = None, source: str | None = None):
        self.endpoint = endpoint
        self.timeout = self.default_timeout if timeout is None else timeout
        self.ca_file = ca_file
        self.report = report or _no_report
        self.watchdog = watchdog
        self.source = source  # local address to connect from; None: the system's choice
        self.conn: Connection | None = None

    def _open(self) -> Connection:
        """TCP (and TLS) connect; the connection is armed for the greeting. Call inside the connect Step."""
        self.conn = Connection(self.endpoint, self.timeout, self.ca_file, self.watchdog, self.source)
        self.conn.arm()
        return self.conn

    def _connected(self, name: str) -> Connection:
        if self.conn is None:
            raise WireError(f"{name}: not connected")
        return self.conn

    def close(self) -> None:
        if self.conn:
            self.conn.close()
            self.conn = None


class Step:
    """Times one protocol step and reports it when the block ends, failed if it raised.

    Used as ``with Step(client, "IMAP IDLE"):``; the client's connection (if any) is armed
    for the watchdog meanwhile. A greenlet being killed (GreenletExit, a BaseException) is
    not a failed request, unless the step had waited long (see LATE_AT_END).
    """

    __slots__ = ("client", "name", "received", "started")

    def __init__(self, client, name: str):
        self.client = client
        self.name = name

    def __enter__(self) -> Self:
        conn = self.client.conn
        self.received = conn.received if conn else 0
        if conn:
            conn.arm()
        self.started = perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        elapsed = (perf_counter() - self.started) * 1000
        conn = self.client.conn
        received = (conn.received if conn else 0) - self.received
        if conn:
            conn.disarm()
        if exc_type is None:
            self.client.report(self.name, elapsed, max(0, received), None)
        elif issubclass(exc_type, Exception):
            self.client.report(self.name, elapsed, max(0, received), exc)
        else:
            report_if_late(self.client, self.name, elapsed, received, exc)
        return False
