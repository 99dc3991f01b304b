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
from concurrent.futures import ThreadPoolExecutor, wait
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


class SeedAborted(TargetUnavailable):
    """Seeding stopped before it was done: its deadline passed."""


class _Connections:
    """The clients seeding has open, so a deadline or Ctrl-C can cut them all at once.

    Worker threads cannot be interrupted; closing their sockets makes each blocked read fail at
    once, so the pool drains in milliseconds instead of waiting out every command's timeout.
    """

    def __init__(self, deadline: float | None):
        self.deadline = deadline  # time.monotonic() value, or None
        self.stopped = threading.Event()
        self.why = ""
        self._clients: set = set()
        self._lock = threading.Lock()

    def opened(self, client):
        with self._lock:
            if self.stopped.is_set():
                raise WireError(self.why)
            self._clients.add(client)
        return client

    def closed(self, client) -> None:
        with self._lock:
            self._clients.discard(client)

    def check(self) -> None:
        if not self.stopped.is_set() and self.deadline is not None and time.monotonic() > self.deadline:
            self.stop("the seeding deadline passed")
        if self.stopped.is_set():
            raise WireError(self.why)

    def stop(self, why: str) -> None:
        with self._lock:
            self.why = self.why or why
            self.stopped.set()
            clients = list(self._clients)
        for client in clients:
            conn = client.conn
            if conn is not None:
                conn.expire()  # shutdown(): the blocked recv in the worker thread returns at once

    def run(self, fn, items: list, workers: int) -> list:
        """fn over items in a pool; on Ctrl-C or the deadline, live connections are cut and the pool is left
        without waiting. Items not started after a stop are passed to fn, which fails fast via check()."""
        pool = ThreadPoolExecutor(max_workers=max(1, workers))
        futures = [pool.submit(fn, item) for item in items]
        try:
            out = []
            for future in futures:
                # Short waits: the deadline is checked, and Ctrl-C lands between them. (Not result(timeout=):
                # its TimeoutError could not be told from a job's own.)
                while not wait([future], timeout=0.5).done:
                    if self.deadline is not None and time.monotonic() > self.deadline:
                        self.stop("the seeding deadline passed")
                out.append(future.result())
            return out
        except BaseException:
            self.stop("interrupted")
            raise
        finally:
            pool.shutdown(wait=not self.stopped.is_set(), cancel_futures=True)


def inventory(target: Target, account: Account, connections: _Connections | None = None) -> set[int]:
    """The seed numbers already in the account's INBOX."""
    client = ImapClient(target.imap, timeout=max(target.timeout, 30), ca_file=target.ca_file)
    if connections:
        connections.check()
        connections.opened(client)
    try:
        client.connect()
    except BaseException:
        if connections:
            connections.closed(client)
        raise
    try:
        client.login(account.user, account.password)
        if client.select("INBOX", readonly=True) == 0:
            return set()
        data = client.command("IMAP FETCH seed", b"FETCH 1:* (BODY.PEEK[HEADER.FIELDS (" + SEED_HEADER + b")])", collect=True)
        client.logout()
        return {int(n) for n in _SEED_VALUE.findall(data)}
    finally:
        client.close()
        if connections:
            connections.closed(client)


def seed_accounts(
    target: Target,
    accounts: list[Account],
    messages: int,
    size_mix: dict[str, int],
    *,
    seed: int = 1,
    connections: int = 4,
    stream: TextIO | None = None,
    deadline: float | None = None,
) -> SeedResult:
    """Top every account up to seeded messages 1..``messages``, within ``deadline`` seconds if given
    (SeedAborted after it); Ctrl-C cuts every connection and returns at once."""
    started = time.monotonic()
    live = _Connections(None if deadline is None else started + deadline)
    if not target.imap:
        raise ConfigError(f"target {target.name}: seeding needs an imap: endpoint to count what is already there")
    if not accounts or messages <= 0:
        return SeedResult(len(accounts), 0, 0)
    try:
        found = dict(zip((a.user for a in accounts), live.run(lambda a: inventory(target, a, live), accounts, min(16, len(accounts)))))
    except (OSError, WireError) as exc:
        if live.stopped.is_set() and live.why != "interrupted":
            raise SeedAborted(f"seeding: {live.why} ({deadline:g}s) while reading the mailboxes on {target.imap.url}") from None
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
    sender = _LmtpSeeder(target, live) if target.delivery else _AppendSeeder(target, live)
    failed: list[str] = []

    def run(job):
        n, recipients = job
        message = seed_message(n, size_class_for(n, size_mix, seed), seed)
        try:
            live.check()
            errors = sender.send(recipients, message)
        except (OSError, WireError) as exc:
            sender.reset()
            errors = [f"{a.user}: message {n}: {exc}" for a in recipients]
        progress.advance(len(recipients))
        return errors

    try:
        for errors in live.run(run, jobs, connections):
            failed.extend(errors)
    finally:
        if not live.stopped.is_set():
            sender.close()
        progress.close()
    if live.stopped.is_set():
        raise SeedAborted(f"seeding: {live.why} ({deadline:g}s); {progress.done - len(failed)} of {progress.total} deliveries done")
    added = progress.total - len(failed)
    return SeedResult(len(accounts), present, added, failed, time.monotonic() - started)


class _LmtpSeeder:
    """One LMTP connection per thread, reused for all of that thread's transactions."""

    def __init__(self, target: Target, live: _Connections):
        self.target = target
        self.live = live
        self.local = threading.local()
        self.clients: list[LmtpClient] = []
        self.lock = threading.Lock()

    def _client(self) -> LmtpClient:
        client = getattr(self.local, "client", None)
        if client is None or client.conn is None:
            client = self.live.opened(LmtpClient(self.target.delivery, timeout=max(self.target.timeout, 60), ca_file=self.target.ca_file))
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

    def __init__(self, target: Target, live: _Connections):
        self.target = target
        self.live = live

    def send(self, recipients: list[Account], message: bytes) -> list[str]:
        if b"\r\n" not in message:
            message = message.replace(b"\n", b"\r\n")
        errors = []
        for account in recipients:
            client = self.live.opened(ImapClient(self.target.imap, timeout=max(self.target.timeout, 60), ca_file=self.target.ca_file))
            try:
                client.connect()
                client.login(account.user, account.password)
                client.append("INBOX", message)
                client.logout()
            except (OSError, WireError) as exc:
                errors.append(f"{account.user}: {exc}")
            finally:
                client.close()
                self.live.closed(client)
        return errors

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass
