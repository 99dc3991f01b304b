"""Fill accounts with seeded messages, fast and idempotently.

1. Inventory: log in over IMAP (several accounts at once) and read which
   ``X-Mailharness-Seed: n`` headers each INBOX already holds.
2. Top up: for every missing n, deliver message n over LMTP to all accounts lacking it in
   one transaction (up to 100 recipients), over several pipelined connections at once.
   Without an LMTP endpoint, APPEND over IMAP instead.
Message n has the same bytes on every account and run, so a re-run adds nothing that is there.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TextIO

from harness.errors import ConfigError, TargetUnavailable
from harness.load.imap_client import ImapClient
from harness.load.lmtp_client import LmtpClient, dot_stuff
from harness.load.messages import SEED_HEADER, seed_message, size_class_for
from harness.load.wire import WireError
from harness.targets.target_file import Account, Target

RECIPIENTS_PER_TRANSACTION = 100
_SEED_VALUE = re.compile(rb"^" + SEED_HEADER + rb":\s*(\d+)", re.MULTILINE | re.IGNORECASE)


@dataclass
class SeedResult:
    accounts: int
    present: int  # seeded messages found before topping up
    added: int
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal, a line per 10% otherwise)."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None):
        self.total, self.label = total, label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.done = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._last_decile = -1

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            decile = self.done * 10 // max(1, self.total)
            if (self.tty and now - self._last_draw > 0.2) or (not self.tty and decile > self._last_decile):
                self._draw(now)
                self._last_draw, self._last_decile = now, decile

    def _draw(self, now: float, end: str = "") -> None:
        share = self.done / max(1, self.total)
        bar = "#" * int(share * 30)
        rate = self.done / max(1e-6, now - self.started)
        text = f"{self.label} [{bar:<30}] {self.done}/{self.total} ({share:.0%}) {rate:,.0f}/s"
        self.stream.write(("\r" + text) if self.tty else (text + "\n"))
        self.stream.write(end)
        self.stream.flush()

    def close(self) -> None:
        if self.total and self.tty:  # off a terminal, the 100% line has been written already
            self._draw(time.monotonic(), end="\n")


def inventory(target: Target, account: Account) -> set[int]:
    """The seed numbers already in the account's INBOX."""
    client = ImapClient(target.imap, timeout=max(target.timeout, 30), ca_file=target.ca_file)
    client.connect()
    try:
        client.login(account.user, account.password)
        if client.select("INBOX", readonly=True) == 0:
            return set()
        data = client.command("IMAP FETCH seed", b"FETCH 1:* (BODY.PEEK[HEADER.FIELDS (" + SEED_HEADER + b")])", collect=True)
        client.logout()
        return {int(n) for n in _SEED_VALUE.findall(data)}
    finally:
        client.close()


def seed_accounts(
    target: Target,
    accounts: list[Account],
    messages: int,
    size_mix: dict[str, int],
    *,
    seed: int = 1,
    connections: int = 4,
    stream: TextIO | None = None,
) -> SeedResult:
    """Top every account up to seeded messages 1..``messages``."""
    started = time.monotonic()
    if not target.imap:
        raise ConfigError(f"target {target.name}: seeding needs an imap: endpoint to count what is already there")
    if not accounts or messages <= 0:
        return SeedResult(len(accounts), 0, 0)
    with ThreadPoolExecutor(max_workers=min(16, len(accounts))) as pool:
        try:
            found = dict(zip((a.user for a in accounts), pool.map(lambda a: inventory(target, a), accounts)))
        except (OSError, WireError) as exc:
            raise TargetUnavailable(f"seeding: cannot read the mailboxes on {target.imap.url}: {exc}") from None
    missing: dict[int, list[Account]] = {}
    for account in accounts:
        for n in range(1, messages + 1):
            if n not in found[account.user]:
                missing.setdefault(n, []).append(account)
    present = sum(len([n for n in have if 1 <= n <= messages]) for have in found.values())
    jobs = [
        (n, recipients[i : i + RECIPIENTS_PER_TRANSACTION])
        for n, recipients in sorted(missing.items())
        for i in range(0, len(recipients), RECIPIENTS_PER_TRANSACTION)
    ]
    progress = Progress(sum(len(r) for _, r in jobs), "seeding", stream)
    sender = _LmtpSeeder(target) if target.delivery else _AppendSeeder(target)
    failed: list[str] = []

    def run(job):
        n, recipients = job
        message = seed_message(n, size_class_for(n, size_mix, seed), seed)
        try:
            errors = sender.send(recipients, message)
        except (OSError, WireError) as exc:
            sender.reset()
            errors = [f"{a.user}: message {n}: {exc}" for a in recipients]
        progress.advance(len(recipients))
        return errors

    try:
        with ThreadPoolExecutor(max_workers=max(1, connections)) as pool:
            for errors in pool.map(run, jobs):
                failed.extend(errors)
    finally:
        sender.close()
        progress.close()
    added = progress.total - len(failed)
    return SeedResult(len(accounts), present, added, failed, time.monotonic() - started)


class _LmtpSeeder:
    """One LMTP connection per thread, reused for all of that thread's transactions."""

    def __init__(self, target: Target):
        self.target = target
        self.local = threading.local()
        self.clients: list[LmtpClient] = []
        self.lock = threading.Lock()

    def _client(self) -> LmtpClient:
        client = getattr(self.local, "client", None)
        if client is None or client.conn is None:
            client = LmtpClient(self.target.delivery, timeout=max(self.target.timeout, 60), ca_file=self.target.ca_file)
            client.connect()
            self.local.client = client
            with self.lock:
                self.clients.append(client)
        return client

    def send(self, recipients: list[Account], message: bytes) -> list[str]:
        results = self._client().deliver([a.user for a in recipients], dot_stuff(message))
        return [f"{user}: {reply}" for user, reply in results.items() if reply]

    def reset(self) -> None:
        client = getattr(self.local, "client", None)
        if client:
            client.close()

    def close(self) -> None:
        for client in self.clients:
            client.quit()


class _AppendSeeder:
    """APPEND into each account's INBOX (targets without LMTP). One login per account and message."""

    def __init__(self, target: Target):
        self.target = target

    def send(self, recipients: list[Account], message: bytes) -> list[str]:
        if b"\r\n" not in message:
            message = message.replace(b"\n", b"\r\n")
        errors = []
        for account in recipients:
            client = ImapClient(self.target.imap, timeout=max(self.target.timeout, 60), ca_file=self.target.ca_file)
            try:
                client.connect()
                client.login(account.user, account.password)
                client.append("INBOX", message)
                client.logout()
            except (OSError, WireError) as exc:
                errors.append(f"{account.user}: {exc}")
            finally:
                client.close()
        return errors

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass
