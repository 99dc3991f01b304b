"""Which accounts a test uses.

Isolation: xdist worker k of n only ever uses accounts whose index is k mod n, so
concurrently running tests never share an account. Within a worker, tests take
accounts round-robin from the first ROTATION of them, so an account rests for a
couple of tests before it is used again (a server may still be finishing the last
session's work) while only those few pay the server's first-use cost: Dovecot
creates a fresh account's folders and indexes when they are first opened, about
50 ms an account, which was a twentieth of a whole run when every test took a new one.
"""

from __future__ import annotations

from harness.errors import HarnessError
from harness.targets.target_file import Account

ROTATION = 6  # three times the most accounts a bundled test takes (`accounts: 2`)


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
        rotation = min(len(self.accounts), max(ROTATION, 3 * n))
        picked = [self.accounts[(self._cursor + i) % rotation] for i in range(n)]
        self._cursor = (self._cursor + n) % rotation
        return picked
