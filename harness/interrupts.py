"""SIGTERM ends a command the way Ctrl-C does, so every `finally` and `with` cleans up.

Without this a SIGTERM (CI cancelling a job, `timeout`, systemd) kills the process at once and
leaves its embedded Dovecot, Locust processes and temp files (with passwords) behind. `run`
has its own handler in the pytest plugin, which also marks the reports.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys

received: str | None = None  # "SIGTERM" once one arrived; None for Ctrl-C (or nothing)


def sigterm_interrupts() -> None:
    """Install the handler (main thread only; a handler someone else installed is kept)."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def interrupt(signum, frame):
        global received
        received = signal.Signals(signum).name
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        pass


def exit_code() -> int:
    return 143 if received == "SIGTERM" else 130


def describe() -> str:
    return received or "Ctrl-C"


def leave(code: int) -> None:
    """Exit at once after an interrupt, without the interpreter's teardown.

    Freeing every module's objects (pytest's, Locust's, jinja's) took 0.4-1.3 s on a busy machine, and a
    command should be gone within 2 s of Ctrl-C or SIGTERM. Nothing is lost: the atexit handlers (logging,
    temp dirs' finalizers) still run, the terminal streams are flushed, and every report and temp dir of
    the command was closed or removed by its own `with`/`finally` before this."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
