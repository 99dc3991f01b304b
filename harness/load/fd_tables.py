"""More connections than one file-descriptor table allows, still in one process: threads with their own table.

RLIMIT_NOFILE bounds the descriptor *numbers* of one fd table (open() fails with EMFILE at the soft limit),
and a process's threads normally share one table. A thread that calls unshare(CLONE_FILES) gets a private
copy of the table: the same limit again, for its own descriptors. So where the limit cannot be raised
(a hard limit of 20,000 and no CAP_SYS_RESOURCE), one process (one PID, one address space, one RSS)
holds N x the limit in N such threads.

What that asks of the code running in such a thread (see FdTableThread):
- it owns its connections end to end: a descriptor number means another file (or nothing) in another
  thread's table, and a gevent socket belongs to the hub of the thread that made it;
- it runs its own gevent hub (gevent has one per thread) and hands results back as Python objects;
- the copy made at unshare time holds every descriptor then open (the caller's log files, pipes): those
  stay open, but nothing may rely on them, nor on files the other threads open later.

Linux only (unshare(2)); Python 3.11 has no os.unshare, hence ctypes.
"""

from __future__ import annotations

import ctypes
import os
import sys
import traceback
from collections.abc import Callable

CLONE_FILES = 0x400  # <sched.h>
READY_TIMEOUT = 60.0
# Descriptors kept free in every table besides one per connection: Locust's and gevent's own, the delivery
# connection, /proc reads, a connection being replaced.
TABLE_HEADROOM = 200
MAX_TABLES = 8


def unshare_files() -> None:
    """Give the calling thread its own copy of the fd table (unshare(CLONE_FILES))."""
    if not sys.platform.startswith("linux"):
        raise OSError("unshare(CLONE_FILES) is Linux only")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_FILES) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare(CLONE_FILES): {os.strerror(errno)}")


def open_descriptors() -> int:
    """Descriptors open in the calling thread's table now."""
    try:
        return len(os.listdir("/proc/thread-self/fd"))
    except OSError:
        return len(os.listdir("/proc/self/fd"))


def tables_needed(connections: int, limit: int, open_now: int) -> tuple[int, int]:
    """(tables, connections per table) for `connections` sockets when each table takes descriptor numbers
    below `limit` and starts with `open_now` of them taken (the copy at unshare time), keeping some free
    in every table (TABLE_HEADROOM, a quarter of a small limit). (0, 0) when a table has no room at all."""
    per_table = limit - open_now - min(TABLE_HEADROOM, limit // 4)
    if per_table <= 0:
        return 0, 0
    tables = max(1, -(-connections // per_table))
    return tables, -(-connections // tables)


def probe() -> str | None:
    """Why this machine cannot give a thread its own fd table (None: it can). For a process without gevent."""
    import threading

    failure: list[str] = []

    def attempt() -> None:
        try:
            unshare_files()
        except OSError as exc:
            failure.append(str(exc))

    thread = threading.Thread(target=attempt, name="fd-table-probe")
    thread.start()
    thread.join()
    return failure[0] if failure else None


class FdTableThread:
    """An OS thread with its own fd table and gevent hub, running ``body(self)`` until it returns.

    ``start()`` blocks the calling thread (its whole hub, on purpose) until the body calls ``ready()``:
    two threads creating gevent hubs and importing modules at once deadlocked on the import locks, so a
    body calls ready() once its set-up (hub, imports, first connections) is done. The body watches
    ``stopping`` and returns when it is set; ``error`` holds its traceback if it failed.
    """

    def __init__(self, name: str, body: Callable[[FdTableThread], None]):
        self.name = name
        self.body = body
        self.stopping = False
        self.is_ready = False
        self.done = False
        self.error: str | None = None

    def start(self) -> None:
        from gevent import monkey

        start_thread = monkey.get_original("_thread", "start_new_thread")  # a real thread, not a greenlet
        real_sleep = monkey.get_original("time", "sleep")
        start_thread(self._main, ())
        waited = 0.0
        while not (self.is_ready or self.done) and waited < READY_TIMEOUT:
            real_sleep(0.01)
            waited += 0.01
        if self.error:
            raise OSError(f"fd table thread {self.name}: {self.error.strip().splitlines()[-1]}")
        if not self.is_ready:
            raise OSError(f"fd table thread {self.name}: not ready within {READY_TIMEOUT:.0f} s")

    def ready(self) -> None:
        self.is_ready = True

    def _main(self) -> None:
        try:
            unshare_files()  # first: before this thread opens anything
            import gevent

            gevent.get_hub()
            self.body(self)
        except BaseException:  # reported to the starting thread through self.error
            self.error = traceback.format_exc()
        finally:
            self.done = True

    def stop(self, wait: Callable[[float], object], timeout: float = 30.0) -> bool:
        """Ask the body to return; `wait` is the caller's sleep (gevent.sleep in a hub). True if it did in time."""
        self.stopping = True
        waited = 0.0
        while not self.done and waited < timeout:
            wait(0.05)
            waited += 0.05
        return self.done
