"""File descriptors for the load generator: one per connection, so a process holding thousands of
IDLE users needs a soft limit (`ulimit -n`) to match. Light to import (no Locust): `mailharness bench`
checks the limit before it starts a server."""

from __future__ import annotations

import resource


def raise_open_file_limit(needed: int = 0) -> int:
    """Every user holds a socket; lift the soft fd limit to the hard one, and (as root) the hard one to
    `needed` if that is higher. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and needed > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))  # needs CAP_SYS_RESOURCE
            return needed
        except (ValueError, OSError):
            pass
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft
