"""Which accounts a test uses.

Isolation: xdist worker k of n only ever uses accounts whose index is k mod n, so
concurrently running tests never share an account. Within a worker, tests take
accounts round-robin, so an account is reused only after the others; with lanes
(lanes.py) a test claims its accounts and gives them back, and none is handed out
while a running test holds it.
"""

from __future__ import annotations

import threading

from harness.errors import HarnessError
from harness.targets.target_file import Account


class NotEnoughAccounts(HarnessError):
    """A test needs more accounts than this worker owns: the run was set up wrong, the test is an error."""


class AccountPool:
    def __init__(self, accounts: list[Account], worker_index: int = 0, worker_count: int = 1):
        self.accounts = accounts[worker_index::worker_count]
        self._cursor = 0
        self._held: set[str] = set()
        self._freed = threading.Condition()

    def claim(self, n: int, block: bool) -> list[Account] | None:
        """The next n accounts, as take() gives them, held until release(). When one of them is still held:
        None, or with `block` wait until it is free (the tests holding it are running, and end)."""
        with self._freed:
            while True:
                cursor = self._cursor
                picked = self.take(n)
                if not any(a.user in self._held for a in picked):
                    self._held.update(a.user for a in picked)
                    return picked
                self._cursor = cursor
                if not block:
                    return None
                self._freed.wait(0.5)  # in slices: Ctrl-C and SIGTERM reach the main thread

    def release(self, accounts: list[Account]) -> None:
        with self._freed:
            self._held.difference_update(a.user for a in accounts)
            self._freed.notify_all()

    def take(self, n: int) -> list[Account]:
        if n > len(self.accounts):
            raise NotEnoughAccounts(
                f"the test needs {n} accounts; this worker has {len(self.accounts)} of the target's accounts "
                f"(each of the -n workers owns every n-th account): give more accounts or run fewer workers"
            )
        picked = [self.accounts[(self._cursor + i) % len(self.accounts)] for i in range(n)]
        self._cursor = (self._cursor + n) % len(self.accounts)
        return picked
