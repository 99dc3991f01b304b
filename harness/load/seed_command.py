"""`mailharness seed`: fill a target's accounts with messages before a load run."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from harness.arguments import finite_float
from harness.errors import ConfigError, UnsafeAccount
from harness.load.messages import DEFAULT_SIZE_MIX, SIZE_CLASSES, parse_size_mix
from harness.targets.target_file import Account, load_target

MAX_MESSAGES = 100_000
DEFAULT_DEADLINE = 3600.0  # a hostile or wedged server cannot hold a CI job longer than this

DESCRIPTION = f"""\
Fill the target's INBOXes with seeded messages, fast and idempotently.

  mailharness seed --target target.yaml --messages 200
  mailharness seed --target target.yaml --messages 50 --size-mix small=70,medium=25,large=5 --accounts 1-100

Seeded message n carries the header "X-Mailharness-Seed: n" and the same bytes on every
account and every run. A re-run counts what each INBOX already holds and only adds the
missing numbers, so running it twice adds nothing the second time, and running it after a
load test tops up what POP3 download-and-delete users took away.

Delivery is over the target's LMTP endpoint (one transaction fills up to 100 mailboxes,
several pipelined connections at once); without LMTP, IMAP APPEND is used. Counting what
is there needs the imap: endpoint. The target must say disposable: true.

Size classes: {", ".join(f"{name} (~{(c.text_bytes + c.attachment_bytes * 4 // 3) // 1000 + 1} KB{', attachment' if c.attachment_bytes else ''})" for name, c in SIZE_CLASSES.items())}.
"""


def add_arguments(p) -> None:
    p.add_argument("--target", type=Path, required=True, metavar="FILE", help="target file (see docs/targets.md)")
    p.add_argument("--messages", type=int, required=True, metavar="N", help=f"seeded messages per account, 1..N (at most {MAX_MESSAGES})")
    p.add_argument("--size-mix", default=",".join(f"{k}={v}" for k, v in DEFAULT_SIZE_MIX.items()), metavar="MIX",
                   help="weights of the size classes (default small=70,medium=25,large=5)")
    p.add_argument("--accounts", metavar="RANGE",
                   help="which of the target's accounts, by position from 1: '1-100', '5', '1-10,21-30' (default all)")
    p.add_argument("--seed", type=int, default=1, metavar="N",
                   help="content seed: the same seed gives the same messages (default 1, as the scenarios use)")
    p.add_argument("--connections", type=int, default=4, metavar="K", help="parallel delivery connections (default 4)")
    p.add_argument("--deadline", type=finite_float, default=DEFAULT_DEADLINE, metavar="S",
                   help=f"give up after S seconds in all, cutting every connection (default {DEFAULT_DEADLINE:g})")


def select_accounts(accounts: list[Account], spec: str | None) -> list[Account]:
    """Accounts by 1-based position ranges: '1-100', '5', '1-10,21-30'."""
    if not spec:
        return list(accounts)
    chosen: dict[int, Account] = {}
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise ConfigError(f"--accounts {spec!r}: write positions like 1-100, 5 or 1-10,21-30")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if not 1 <= first <= last <= len(accounts):
            raise ConfigError(f"--accounts {spec!r}: {part.strip()} is outside 1-{len(accounts)} (the target lists {len(accounts)} accounts)")
        for i in range(first, last + 1):
            chosen[i] = accounts[i - 1]
    return [chosen[i] for i in sorted(chosen)]


def run(args) -> int:
    from harness.load.seeding import seed_accounts

    if not 1 <= args.messages <= MAX_MESSAGES:
        raise ConfigError(f"--messages must be between 1 and {MAX_MESSAGES}")
    if not 1 <= args.connections <= 32:
        raise ConfigError("--connections must be between 1 and 32")
    if not 1 <= args.deadline <= 7 * 86400:
        raise ConfigError("--deadline must be between 1 second and 7 days")
    mix = parse_size_mix(args.size_mix)
    target = load_target(args.target)
    target.print_warnings()
    if not target.disposable:
        raise UnsafeAccount(f"{args.target}: seeding adds mail to every account; it needs `disposable: true` in the target file")
    accounts = select_accounts(target.accounts, args.accounts)
    result = seed_accounts(target, accounts, args.messages, mix, seed=args.seed, connections=args.connections,
                           deadline=args.deadline)
    print(f"{result.accounts} account(s): {result.present} seeded messages were there, {result.added} added "
          f"in {result.seconds:.1f}s" + (f", {len(result.failed)} failed" if result.failed else ""))
    for line in result.failed[:10]:
        print(f"  failed: {line}", file=sys.stderr)
    if result.failed:
        # The server refused some mail (over quota, a rejected recipient): a result, not a usage error.
        print(f"mailharness seed: {len(result.failed)} of {result.added + len(result.failed)} deliveries were refused "
              f"(first: {result.failed[0]})", file=sys.stderr)
        return 1
    return 0
