"""Which accounts a test uses.

Isolation: xdist worker k of n only ever uses accounts whose index is k mod n, so
concurrently running tests never share an account. Within a worker, tests take
accounts round-robin, so an account is reused only after the others.
"""

from __future__ import annotations

from harness.errors import HarnessError
from harness.targets.target_file import Account


class NotEnoughAccounts(HarnessError):
    """A test needs more accounts than this worker owns: the run was set up wrong, the test is an error."""


class AccountPool:
    def __init__(self, accounts: list[Account], worker_index: int = 0, worker_count: int = 1):
        self.accounts = accounts[worker_index::worker_count]
        self._cursor = 0

    def take(self, n: int) -> list[Account]:
        if n > len(self.accounts):
            raise NotEnoughAccounts(
                f"the test needs {n} accounts; this worker has {len(self.accounts)} of the target's accounts "
                f"(each of the -n workers owns every n-th account): give more accounts or run fewer workers"
            )
        picked = [self.accounts[(self._cursor + i) % len(self.accounts)] for i in range(n)]
        self._cursor = (self._cursor + n) % len(self.accounts)
        return picked
