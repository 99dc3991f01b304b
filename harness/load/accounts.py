"""Which account each load user logs in as.

The target's accounts are cut into one pool per user kind (contiguous, in a fixed order),
so download-and-delete pollers never touch a mailbox a leave-on-server poller or a webmail
user reads. The cut depends only on the target file and the scenario, so the master, every
worker, the delivery user and the post-run drain all compute the same pools.

Inside a pool, each generator process takes its own slice (worker i of K takes accounts
i, i+K, ...) and hands the slice out round-robin, so users get distinct accounts for as
long as there are enough of them.
"""

from __future__ import annotations

import itertools
import math

from harness.errors import ConfigError
from harness.load.scenario import ROLES, Scenario
from harness.targets.target_file import Account


class AccountPlan:
    def __init__(self, pools: dict[str, list[Account]]):
        self.pools = pools

    @classmethod
    def for_scenario(cls, accounts: list[Account], scenario: Scenario) -> AccountPlan:
        roles = [r for r in ROLES if r in scenario.users and (scenario.users[r].weight > 0 or r in scenario.accounts)]
        fixed = {r: n for r, n in scenario.accounts.items() if r in roles}
        if sum(fixed.values()) > len(accounts):
            raise ConfigError(
                f"{scenario.source}: accounts: asks for {sum(fixed.values())} accounts, the target has {len(accounts)}"
            )
        shared = [r for r in roles if r not in fixed]
        left = len(accounts) - sum(fixed.values())
        if len(shared) > left:
            raise ConfigError(
                f"{scenario.source}: {len(roles)} user kinds need at least one account each; "
                f"the target lists {len(accounts)} account(s) ({left} left after accounts:)"
            )
        sizes = dict(fixed)
        sizes.update(_largest_remainder(left, {r: scenario.users[r].weight for r in shared}))
        pools, start = {}, 0
        for role in roles:
            pools[role] = accounts[start : start + sizes[role]]
            start += sizes[role]
        return cls(pools)

    def all_accounts(self) -> list[Account]:
        return [a for pool in self.pools.values() for a in pool]

    def describe(self) -> str:
        return ", ".join(f"{role} {len(pool)}" for role, pool in self.pools.items())


def _largest_remainder(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``total`` by weight, every key getting at least 1."""
    if not weights:
        return {}
    keys = list(weights)
    weight_sum = sum(weights.values()) or len(keys)
    spare = total - len(keys)  # one each first
    exact = {k: spare * (weights[k] or 0) / weight_sum for k in keys}
    sizes = {k: 1 + math.floor(exact[k]) for k in keys}
    for k in sorted(keys, key=lambda k: exact[k] - math.floor(exact[k]), reverse=True)[: total - sum(sizes.values())]:
        sizes[k] += 1
    return sizes


class AccountAllocator:
    """Hands out accounts to the users of one generator process."""

    def __init__(self, plan: AccountPlan, worker_index: int = 0, worker_count: int = 1):
        worker_count = max(1, worker_count)
        worker_index %= worker_count
        self.slices: dict[str, list[Account]] = {}
        for role, pool in plan.pools.items():
            if role == "pop3_delete" and len(pool) < worker_count:
                # Two processes deleting from one mailbox would race for the same messages.
                raise ConfigError(
                    f"pop3_delete has {len(pool)} account(s) for {worker_count} generator processes; "
                    "give it at least one per process (scenario accounts: or a bigger target)"
                )
            own = pool[worker_index::worker_count]
            if not own:
                own = pool  # readers may share; start them at different accounts per process
                shift = worker_index % len(pool)
                own = own[shift:] + own[:shift]
            self.slices[role] = own
        self._counters = {role: itertools.count() for role in plan.pools}

    def next_account(self, role: str, devices: int = 1) -> Account:
        """Round-robin; with ``devices`` > 1, that many consecutive users share an account."""
        own = self.slices[role]
        return own[(next(self._counters[role]) // max(1, devices)) % len(own)]
