"""After a run: drain the download-and-delete mailboxes, then count delivered vs retrieved.

Every message delivered to a download-and-delete account during the run must be
retrieved exactly once, by a poller during the run or by the final drain. Uncertain
journal entries (see ledger.py) are settled by what the drain finds:
  - a session that sent QUIT but never saw the answer committed iff its messages are
    gone, i.e. nobody (no other session, not the drain) retrieved them afterwards;
  - a delivery whose reply was never seen happened iff the message turned up.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.load.ledger import read_ledger
from harness.load.messages import ID_HEADER
from harness.load.pop3_client import Pop3Client
from harness.load.wire import WireError
from harness.targets.target_file import Account, Target

SHOW_IDS = 20  # ids listed in reports per problem kind


@dataclass
class DrainResult:
    retrieved: Counter = field(default_factory=Counter)  # id -> times
    without_id: int = 0  # seeded mail and other mail the run did not send
    errors: list[str] = field(default_factory=list)


@dataclass
class Accounting:
    delivered: int  # confirmed deliveries to download-and-delete mailboxes
    delivered_unconfirmed_found: int  # reply never seen, but the message was retrieved
    delivered_unconfirmed_missing: int  # reply never seen and the message never showed up: not counted
    delivered_elsewhere: int  # deliveries to other user kinds (not part of the exactly-once check)
    retrieved_during_run: int
    retrieved_by_drain: int
    uncertain_sessions: int
    sessions: int
    lost: list[str]
    duplicated: list[str]
    not_from_this_run: int  # ids retrieved that this run never sent (left over from an earlier run)
    drain_errors: list[str]
    ledger_files: int

    @property
    def ok(self) -> bool:
        return not self.lost and not self.duplicated and not self.drain_errors

    def to_dict(self) -> dict:
        out = asdict(self)
        out["lost_count"], out["duplicated_count"] = len(self.lost), len(self.duplicated)
        out["lost"], out["duplicated"] = self.lost[:SHOW_IDS], self.duplicated[:SHOW_IDS]
        out["ok"] = self.ok
        return out


def drain_account(target: Target, account: Account) -> tuple[list[str], int]:
    """RETR and DELE everything in one mailbox; (ids found, messages without an id)."""
    client = Pop3Client(target.pop3, timeout=max(target.timeout, 30), ca_file=target.ca_file)
    client.connect()
    ids, without = [], 0
    try:
        client.login(account.user, account.password)
        count, _ = client.stat()
        for number in range(1, count + 1):
            value = client.retr(number, header=ID_HEADER)
            if value:
                ids.append(value.decode())
            else:
                without += 1
            client.dele(number)
        client.quit()
    finally:
        client.close()
    return ids, without


def drain(target: Target, accounts: list[Account], workers: int = 8) -> DrainResult:
    result = DrainResult()

    def one(account: Account):
        try:
            return account, drain_account(target, account), None
        except (OSError, WireError) as exc:
            return account, ([], 0), exc

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(accounts)))) as pool:
        for account, (ids, without), error in pool.map(one, accounts):
            result.retrieved.update(ids)
            result.without_id += without
            if error:
                result.errors.append(f"{account.user}: {error}")
    return result


def settle(ledger_dir: Path, drained: DrainResult) -> Accounting:
    ledger = read_ledger(ledger_dir)
    counts: Counter = Counter()
    run_retrieved: Counter = Counter()
    uncertain = []
    for session, ids in ledger.sessions.items():
        if session in ledger.committed:
            run_retrieved.update(ids)
        else:
            uncertain.append(ids)
    counts.update(run_retrieved)
    counts.update(drained.retrieved)
    for ids in uncertain:
        for message_id in ids:
            if counts[message_id] == 0:  # nobody found it afterwards: that QUIT went through
                counts[message_id] += 1
                run_retrieved[message_id] += 1

    to_deleters = {i for i, (_, role) in ledger.sent.items() if role == "pop3_delete"}
    confirmed = to_deleters & ledger.delivered
    unconfirmed = to_deleters - ledger.delivered
    found_unconfirmed = {i for i in unconfirmed if counts[i]}
    expected = confirmed | found_unconfirmed
    return Accounting(
        delivered=len(confirmed),
        delivered_unconfirmed_found=len(found_unconfirmed),
        delivered_unconfirmed_missing=len(unconfirmed) - len(found_unconfirmed),
        delivered_elsewhere=len((set(ledger.sent) - to_deleters) & ledger.delivered),
        retrieved_during_run=sum(1 for i in run_retrieved if i in expected),
        retrieved_by_drain=sum(1 for i in drained.retrieved if i in expected),
        uncertain_sessions=len(uncertain),
        sessions=len(ledger.sessions),
        lost=sorted(i for i in confirmed if counts[i] == 0),
        duplicated=sorted(i for i, n in counts.items() if n > 1),
        not_from_this_run=sum(1 for i in counts if i not in ledger.sent),
        drain_errors=drained.errors,
        ledger_files=ledger.files,
    )
