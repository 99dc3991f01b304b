"""A socket with a receive buffer, and the errors the lean protocol clients raise.

The clients use the plain ``socket``/``ssl`` modules: inside Locust, gevent has
monkey-patched them, so every blocking read yields to other users; in `mailharness seed`
and the post-run drain they are ordinary blocking sockets.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import weakref
from collections.abc import Callable
from time import perf_counter
from typing import Self

from harness.targets.target_file import Endpoint

# Called once per protocol command: (name, response time in ms, bytes received, exception or None).
Reporter = Callable[[str, float, int, "BaseException | None"], None]

RECV_SIZE = 65536
# What one connection may hold unread: a message being retrieved (the largest seeded is ~1 MB), a
# FETCH response with its literals. A server that sends more without ending its answer is hostile
# (an endless body, a {2000000000} literal): the command fails rather than the generator's memory.
MAX_BUFFERED = 32 * 1024 * 1024
MAX_LINE = 1024 * 1024  # one response line without its literals (a SEARCH of 100,000 messages is ~700 KB)
YIELD_EVERY = 4  # reads; see Connection._recv


class WireError(Exception):
    """A protocol step failed; the load users count it as a failed request and reconnect."""


class CommandFailed(WireError):
    """The server answered -ERR, NO or BAD (or an SMTP/LMTP 4xx/5xx)."""


class ConnectionClosed(WireError):
    """The server closed the connection in the middle of a response."""


class ResponseTooLarge(WireError):
    """The server sent more than a response may hold (a line or an answer beyond the caps)."""


def _cooperative_yield() -> Callable[[], None]:
    """gevent.sleep(0) when the socket module is gevent's (inside Locust), else nothing.

    A server that floods data keeps every recv() ready, and gevent only switches greenlets when
    one would block: without this a reading user would starve Locust's own greenlets (the one
    that ends the run at --run-time included)."""
    try:
        from gevent import monkey, sleep
    except ImportError:
        return lambda: None
    return (lambda: sleep(0)) if monkey.is_module_patched("socket") else (lambda: None)


def tls_context(endpoint: Endpoint, ca_file: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file)
    if not endpoint.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _open_tcp(host: str, port: int, timeout: float) -> socket.socket:
    """TCP connect; IP literals skip getaddrinfo (under gevent a thread-pool round trip per connect)."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.create_connection((host, port), timeout=timeout)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
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
        now, expired = perf_counter(), 0
        for conn in list(self.connections):
            if conn.deadline and now > conn.deadline:
                conn.expire()
                expired += 1
        return expired

    def run(self, sleep: Callable[[float], object]) -> None:
        while True:
            sleep(self.interval)
            self.check()


class Connection:
    """One TCP (or TLS) connection and what has been received but not yet consumed.

    ``buf[pos:]`` is unread data; protocol clients scan it in place (``find``/``startswith``
    with offsets) instead of splitting it into line objects, which keeps the hot path cheap.
    ``received`` counts every byte read, for Locust's response_length.

    Timeouts: without a watchdog, an ordinary socket timeout; with one, the socket blocks
    without a timeout and clients ``arm()`` a deadline around each command.
    """

    __slots__ = (
        "__weakref__",
        "_reads",
        "_wait_then_recv",
        "_yield",
        "awaiting",
        "buf",
        "ca_file",
        "deadline",
        "endpoint",
        "expired",
        "pos",
        "read_timeout",
        "received",
        "sock",
        "timeout",
    )

    def __init__(self, endpoint: Endpoint, timeout: float, ca_file: str | None = None, watchdog: Watchdog | None = None):
        self.endpoint = endpoint
        self.ca_file = ca_file
        self.timeout = timeout
        self.deadline = 0.0
        self.expired = False
        raw = sock = _open_tcp(endpoint.host, endpoint.port, timeout)
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
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0
        self.received = 0
        self.awaiting = False  # a command was sent and nothing of its answer read yet
        self._wait_then_recv = _gevent_wait_then_recv(sock)
        self._yield = _cooperative_yield()
        self._reads = 0
        if watchdog:
            watchdog.connections.add(self)

    def arm(self) -> None:
        """A command starts: it must be answered within ``timeout`` (enforced by the watchdog)."""
        self.deadline = perf_counter() + self.timeout

    def disarm(self) -> None:
        self.deadline = 0.0

    def expire(self) -> None:
        self.expired = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _lost(self) -> WireError | TimeoutError:
        if self.expired:
            return TimeoutError(f"no answer within {self.timeout:g}s")
        return ConnectionClosed("server closed the connection")

    def start_tls(self) -> None:
        """Upgrade after STARTTLS/STLS was accepted (nothing may be buffered at this point)."""
        self.sock = tls_context(self.endpoint, self.ca_file).wrap_socket(self.sock, server_hostname=self.endpoint.host)
        self.sock.settimeout(self.read_timeout)
        self._wait_then_recv = None  # TLS buffers decrypted data: readiness of the fd says nothing

    def send(self, data: bytes) -> None:
        # A command fits the socket buffer: one send() does it. gevent's sendall() would also
        # query SO_SNDBUF (a syscall) and slice memoryviews on every call.
        sent = self.sock.send(data)
        if sent < len(data):
            self.sock.sendall(data[sent:])
        self.awaiting = True

    def _recv(self) -> bytes:
        self._reads += 1
        if self._reads % YIELD_EVERY == 0:
            self._yield()
        if self.read_timeout is not None and self.deadline:
            # No watchdog (seed, drain): a socket timeout bounds each read, and the command's deadline
            # bounds them all, so a server trickling a byte at a time cannot hold a command forever.
            left = self.deadline - perf_counter()
            if left <= 0:
                raise TimeoutError(f"no complete answer within {self.timeout:g}s")
            self.sock.settimeout(min(self.read_timeout, left))
        try:
            if self.awaiting and self._wait_then_recv:
                self.awaiting = False
                chunk = self._wait_then_recv(RECV_SIZE)
            else:
                self.awaiting = False
                chunk = self.sock.recv(RECV_SIZE)
        except TimeoutError:
            if self.expired:
                raise self._lost() from None
            raise TimeoutError(f"no answer within {self.timeout:g}s") from None
        except OSError:
            if self.expired:
                raise self._lost() from None
            raise
        if not chunk:
            raise self._lost()
        self.received += len(chunk)
        return chunk

    def fill(self) -> None:
        """Read at least one more byte into the buffer; drop consumed data first."""
        if len(self.buf) - self.pos > MAX_BUFFERED:
            raise ResponseTooLarge(f"the server sent more than {MAX_BUFFERED // 2**20} MB without ending its answer")
        chunk = self._recv()
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += chunk

    def read_line(self) -> bytes:
        """The next line without CRLF."""
        while True:
            eol = self.buf.find(b"\r\n", self.pos)
            if eol >= 0:
                line = bytes(self.buf[self.pos : eol])
                self.pos = eol + 2
                return line
            if len(self.buf) - self.pos > MAX_LINE:
                raise ResponseTooLarge(f"a line longer than {MAX_LINE // 1024} KB: {bytes(self.buf[self.pos:self.pos + 60])!r}...")
            self.fill()

    def skip(self, count: int) -> None:
        """Consume ``count`` bytes without keeping them (the body of a literal we only need to count)."""
        available = len(self.buf) - self.pos
        if available >= count:
            self.pos += count
            return
        count -= available
        self.buf.clear()
        self.pos = 0
        while count > 0:
            chunk = self._recv()
            if len(chunk) > count:
                self.buf += chunk[count:]
            count -= len(chunk)

    def take(self, count: int) -> bytes:
        """Consume and return ``count`` bytes."""
        while len(self.buf) - self.pos < count:
            self.fill()
        data = bytes(self.buf[self.pos : self.pos + count])
        self.pos += count
        return data

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _no_report(name: str, ms: float, nbytes: int, exc: BaseException | None) -> None:
    pass


class WireClient:
    """What the POP3, IMAP and LMTP clients share: endpoint, timeouts, reporting and one Connection.

    ``report`` gets every command as (name, ms, bytes received, exception); by default nothing
    is reported (the seeder, the drain).
    """

    default_timeout = 10.0

    def __init__(self, endpoint: Endpoint, *, timeout: float | None = None, ca_file: str | None = None,
                 report: Reporter | None = None, watchdog: Watchdog | None = None):
        self.endpoint = endpoint
        self.timeout = self.default_timeout if timeout is None else timeout
        self.ca_file = ca_file
        self.report = report or _no_report
        self.watchdog = watchdog
        self.conn: Connection | None = None

    def _open(self) -> Connection:
        """TCP (and TLS) connect; the connection is armed for the greeting. Call inside the connect Step."""
        self.conn = Connection(self.endpoint, self.timeout, self.ca_file, self.watchdog)
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
    not a failed request and is not reported.
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
        return False
