"""Where bytes come in: one receive buffer over a socket, read as lines and literals, with a deadline and size caps.

Both protocol clients stand on this and stay apart above it, because their jobs differ:
  harness/sessions/wire.py   strict: every read against the command's deadline, bare LFs noted, errors that
                             name the command (the conformance suites)
  harness/load/wire.py       lean: gevent, one watchdog instead of a timer per read, bytes counted for Locust
                             (the load generator)

``buf[pos:]`` is what has been received and not yet consumed. Offsets given to and returned by the
methods below count from ``pos`` (the first unread byte), so they stay valid when a read compacts the
buffer. The load clients' hot paths scan ``buf`` in place from ``pos`` (``find`` with offsets) rather
than splitting it into line objects.

Every byte enters through ``Reader.receive``: the deadline, the caps and the count are enforced there
and in ``fill``, once for both clients. A subclass chooses what each failure raises (the ``_*_error``
hooks), so each client keeps its own exceptions and wording.
"""

from __future__ import annotations

import functools
import re
import socket
import sys
from collections.abc import Callable
from time import monotonic

# A literal announced at the end of a line: "{N}" (synchronizing), "{N+}" (LITERAL+), "~{N}" (literal8, RFC 3516).
LITERAL_AT_END = re.compile(rb"~?\{(\d+)(\+?)\}$")  # on a line given without its line end
LITERAL_ANYWHERE = re.compile(rb"~?\{(\d+)(\+?)\}")  # markers inside a command line
# In a buffer of CRLF-ended lines: quoted strings cannot hold CR or LF, so "{N}" CRLF can only end a line.
# It matches the "{N}" of "~{N}" too. Group 1 is the size.
LITERAL_IN_STREAM = re.compile(rb"\{(\d+)\}\r\n")

YIELD_EVERY = 4  # reads in a row that found data ready; see Reader.receive


class FramingError(Exception):
    """Base of what a Reader raises by default."""


class ReadTimeout(FramingError):
    """The deadline passed before the data arrived."""


class PeerClosed(FramingError):
    """The peer closed (or reset) the connection."""


class LineTooLong(FramingError):
    """No line end within the line cap."""


class BufferFull(FramingError):
    """More unread data than the buffer cap, without the answer ending."""


def _cooperative_yield() -> Callable[[], None] | None:
    """gevent.sleep(0) when the socket module is gevent's (inside Locust), else None.

    A server that floods data keeps every recv() ready, and gevent only switches greenlets when
    one would block: without this a reading user would starve Locust's own greenlets (the one
    that ends the run at --run-time included). Sessions outside gevent pay nothing."""
    global _SLEEP_0
    if _SLEEP_0 is None:  # found once per process (gevent patches before any connection opens)
        monkey = sys.modules.get("gevent.monkey")
        if monkey is None or not monkey.is_module_patched("socket"):
            return None
        from gevent import sleep

        _SLEEP_0 = functools.partial(sleep, 0)
    return _SLEEP_0


_SLEEP_0: Callable[[], None] | None = None


class Reader:
    """A socket's receive side: a buffer read as lines, literals and counted bytes.

    ``deadline`` (time.monotonic(); 0: none) bounds every read when ``timed_reads`` is set: each recv()
    gets the time left as its socket timeout, so a server trickling one byte at a time cannot hold a
    read past it. Without ``timed_reads`` the socket's own timeout (or none, with a watchdog) applies.
    ``max_line`` caps a line (literals excluded); ``max_buffered`` (None: no cap) the unread data a
    ``fill`` may add to.
    """

    __slots__ = ("_reads", "_yield", "awaiting", "buf", "deadline", "max_buffered", "max_line", "pos",
                 "received", "recv", "recv_after_send", "recv_size", "sock", "timed_reads")

    def __init__(self, sock: socket.socket, *, max_line: int, max_buffered: int | None, recv_size: int,
                 timed_reads: bool):
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0
        self.received = 0  # every byte read so far
        self.deadline = 0.0
        self.timed_reads = timed_reads
        self.max_line = max_line
        self.max_buffered = max_buffered
        self.recv_size = recv_size
        self.recv: Callable[[int], bytes] = sock.recv
        # The first read after a send may use another call (the load clients wait for readiness first);
        # `awaiting` says a command was sent and nothing of its answer read yet.
        self.recv_after_send: Callable[[int], bytes] = sock.recv
        self.awaiting = False
        self._yield = _cooperative_yield()
        self._reads = 0

    def use_socket(self, sock: socket.socket) -> None:
        """Read from `sock` from now on (after a TLS upgrade)."""
        self.sock = sock
        self.recv = self.recv_after_send = sock.recv

    # -- what failures raise: subclasses give their own exceptions and wording ------------------
    def _timeout_error(self, started: bool) -> Exception:
        """The deadline passed: before a read (`started` False) or while one waited (True)."""
        return ReadTimeout()

    def _lost_error(self, exc: OSError | None) -> Exception:
        """The peer closed (`exc` None: an orderly end of stream) or the socket failed."""
        return PeerClosed(str(exc) if exc else "connection closed by the server")

    def _line_error(self) -> Exception:
        return LineTooLong()

    def _buffer_error(self) -> Exception:
        return BufferFull()

    # -- the one place where bytes come in ---------------------------------------------------
    def receive(self) -> bytes:
        """One recv() of up to ``recv_size`` bytes, counted; never empty (an end of stream raises)."""
        if self.deadline:
            # Also with a watchdog (timed_reads off): its shutdown() wakes a read that waits, but not one
            # that never has to, against a server that floods without end (an endless {2000000000} literal).
            left = self.deadline - monotonic()
            if left <= 0:
                raise self._timeout_error(False)
            if self.timed_reads:
                self.sock.settimeout(left)
        recv = self.recv
        if self.awaiting:  # the first read of an answer waits for it: other greenlets run meanwhile
            self.awaiting = False
            recv = self.recv_after_send
            self._reads = 0
        elif self._yield is not None:  # reads that find data ready never let them run: every few, yield
            self._reads += 1
            if self._reads >= YIELD_EVERY:
                self._reads = 0
                self._yield()
        try:
            chunk = recv(self.recv_size)
        except TimeoutError:
            raise self._timeout_error(True) from None
        except OSError as exc:
            raise self._lost_error(exc) from None
        if not chunk:
            raise self._lost_error(None)
        self.received += len(chunk)
        return chunk

    def fill(self) -> None:
        """Receive once more into the buffer (consumed data is dropped first)."""
        if self.max_buffered is not None and len(self.buf) - self.pos > self.max_buffered:
            raise self._buffer_error()
        chunk = self.receive()
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += chunk

    # -- reading ---------------------------------------------------------------------------
    @property
    def unread(self) -> int:
        return len(self.buf) - self.pos

    def find(self, sep: bytes, start: int = 0) -> int:
        """Offset of the first `sep` at or after offset `start`, receiving as needed. Takes nothing.

        `start` begins a line: LineTooLong (the hook's exception) if no `sep` follows within ``max_line``."""
        scan = start
        while True:
            i = self.buf.find(sep, self.pos + scan)
            if i >= 0:
                i -= self.pos
                if i - start > self.max_line:
                    raise self._line_error()
                return i
            unread = len(self.buf) - self.pos
            if unread - start > self.max_line:
                raise self._line_error()
            scan = max(start, unread - len(sep) + 1)
            self.fill()

    def read_line(self) -> bytes:
        """The next CRLF-ended line, without its CRLF."""
        buf, pos = self.buf, self.pos
        eol = buf.find(b"\r\n", pos)
        if eol < 0 or eol - pos > self.max_line:
            eol = self.find(b"\r\n") + self.pos
            buf, pos = self.buf, self.pos
        line = bytes(buf[pos:eol])
        self.pos = eol + 2
        return line

    def ensure(self, size: int) -> None:
        """Receive until at least `size` bytes are unread. Takes nothing."""
        while len(self.buf) - self.pos < size:
            self.fill()

    def peek(self, start: int, end: int) -> bytes:
        """Unread bytes from offset `start` to `end`, left in the buffer."""
        return bytes(self.buf[self.pos + start : self.pos + end])

    def take(self, size: int) -> bytes:
        """The next `size` bytes (a literal, a line), consumed; receives as needed."""
        if len(self.buf) - self.pos < size:
            self.ensure(size)
        data = bytes(self.buf[self.pos : self.pos + size])
        self.pos += size
        return data

    def skip(self, size: int) -> None:
        """Consume `size` bytes without keeping them (a literal only counted): the buffer stays small."""
        available = len(self.buf) - self.pos
        if available >= size:
            self.pos += size
            return
        size -= available
        self.buf.clear()
        self.pos = 0
        while size > 0:
            chunk = self.receive()
            if len(chunk) > size:
                self.buf += chunk[size:]
            size -= len(chunk)
