"""Bounds for the set-up and clean-up client (imapclient, over the standard library's imaplib).

imaplib waits for a command's tagged answer as long as lines keep coming, keeps every untagged one, and
reads a literal of any announced size into memory; its socket timeout only ends a read that gets no byte
at all. So a server that floods a set-up command (endless untagged lines, a {2000000000} literal) would
hold a test's set-up forever and fill memory. `bound()` gives each command of one client a deadline, at
most MAX_LINES response lines and literals of at most MAX_LITERAL bytes; past them the command fails
with imaplib's abort (IMAPClientAbortError, an IMAPClientError), as a broken connection does.
"""

from __future__ import annotations

import time

MAX_LINES = 100_000  # response lines (untagged ones included) to one command
MAX_LITERAL = 64 << 20


def bound(client, seconds: float) -> None:
    """Limit every later command of `client` (an IMAPClient) to `seconds`, MAX_LINES and MAX_LITERAL."""
    imap = client._imap  # imaplib.IMAP4: imapclient sends and reads through it
    command, get_line, read = imap._command, imap._get_line, imap.read
    state = {"deadline": 0.0, "lines": 0}

    def _command(*args, **kwargs):
        state["deadline"], state["lines"] = time.monotonic() + seconds, 0
        return command(*args, **kwargs)

    def _get_line():
        state["lines"] += 1
        if state["lines"] > MAX_LINES:
            raise imap.abort(f"more than {MAX_LINES} response lines to one command")
        if state["deadline"] and time.monotonic() > state["deadline"]:
            raise imap.abort(f"no complete answer within {seconds:g} s")
        return get_line()

    def _read(size: int) -> bytes:
        if size > MAX_LITERAL:
            raise imap.abort(f"a literal of {size} bytes (at most {MAX_LITERAL >> 20} MiB)")
        return read(size)

    imap._command, imap._get_line, imap.read = _command, _get_line, _read
