"""The Locust side of stress mode: one user per session, a model per mailbox, LMTP in the background.

Users of the "stress" kind take accounts ``sessions_per_mailbox`` at a time (AccountAllocator's
``devices``), so every session of a mailbox runs in the same generator process: with
``--workers K`` each worker gets its own slice of the accounts, and the mailbox's model, its
checkpoints and its transcripts stay local to that process; the parent merges the per-process
results afterwards (see command.py). Violations are fired as Locust request failures
(request type "STRESS", the kind as the name), so Locust's own statistics show them too.

Options (Locust command line or environment):
  --stress-out DIR         MAILHARNESS_STRESS_OUT   where each process writes consistency-<pid>.json
  --stress-seed S          MAILHARNESS_STRESS_SEED  makes each session's command sequence repeatable
  --stress-checking on|off MAILHARNESS_STRESS_CHECKING  off: the same commands, responses not checked (bench)
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import time
from datetime import date
from pathlib import Path

import gevent
from locust import events, task

from harness.load.imap_client import ImapClient
from harness.load.lmtp_client import LmtpClient, dot_stuff
from harness.load.locust_plugin import run_of
from harness.load.users import NETWORK_ERRORS, MailUser, watchdog
from harness.stress.checkpoint import Checkpoints
from harness.stress.imap_session import StressImap
from harness.stress.messages import make_message, message_id
from harness.stress.model import MailboxModel
from harness.stress.pop3_session import StressPop3
from harness.stress.violations import KINDS, ViolationLog

AUDIT_TIMEOUT = 20.0
AUDIT_ATTEMPTS = 4
_MESSAGE_ID = re.compile(rb"(?im)^Message-ID:[ \t]*(\S+)")


class Violation(Exception):
    """A consistency violation, as Locust records it (failures CSV, HTML report)."""


class StressRun:
    """This process's stress state: the violation log and the mailboxes whose sessions run here."""

    def __init__(self, environment):
        options = environment.parsed_options
        self.out = getattr(options, "stress_out", None)
        self.seed = getattr(options, "stress_seed", None)
        self.checking = getattr(options, "stress_checking", "on") != "off"
        self.run_id = f"{self.seed}" if self.seed is not None else secrets.token_hex(4)
        self.run_id += f"-{secrets.token_hex(3)}"  # Message-IDs unique across runs and processes
        fire = environment.events.request.fire

        def report(kind: str, text: str) -> None:
            # One failure row per kind in Locust's tables: the detail of each is in stress.json.
            fire(request_type="STRESS", name=kind, response_time=0, response_length=0,
                 exception=Violation(KINDS.get(kind, kind)), context={})

        self.log = ViolationLog(report)
        self.mailboxes: dict[str, MailboxModel] = {}
        self.deliveries: list[gevent.Greenlet] = []
        self.written = False

    def mailbox(self, name: str, options: dict) -> MailboxModel:
        box = self.mailboxes.get(name)
        if box is None:
            box = MailboxModel(name, self.log)
            interval = float(options.get("checkpoint_interval", 10)) if self.checking else 0.0  # off: no model, no checkpoints
            box.checkpoints = Checkpoints(box, interval)
            box.indexes = 0
            self.mailboxes[name] = box
        return box

    def rng(self, *parts) -> random.Random:
        return random.Random(":".join(str(p) for p in (self.seed if self.seed is not None else self.run_id, *parts)))

    def summary(self) -> dict:
        boxes = {}
        for name, box in self.mailboxes.items():
            boxes[name] = {
                "checkpoints": box.checkpoints.to_dict(),
                "recent_multi": 0 if box.degraded else sum(1 for s in box.recent.values() if len(s) > 1),
                "degraded": box.degraded, "added_octets": box.added_octets,
                "recent_seen": len(box.recent),
                "appended": box.appended, "delivered": box.delivered, "created": len(box.created),
                "uncertain": len(box.uncertain), "audit": getattr(box, "audit", None), "violations": dict(box.counts),
            }
        return {"pid": os.getpid(), "checking": self.checking, "violations": self.log.to_dict(), "mailboxes": boxes}

    def write(self) -> None:
        if self.written or not self.out:
            return
        self.written = True
        path = Path(self.out) / f"consistency-{os.getpid()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.summary(), indent=1, default=str))


def stress_run(environment) -> StressRun:
    run = getattr(environment, "mailharness_stress", None)
    if run is None:
        run = environment.mailharness_stress = StressRun(environment)
    return run


class StressUser(MailUser):
    """One stress session (IMAP, or POP3 for the first ``pop3_sessions`` of each mailbox)."""

    role = "stress"
    request_type = "IMAP"
    client = None

    def on_start(self) -> None:
        # MailUser hands out accounts `devices` users at a time: all sessions of a mailbox come from one process.
        per_mailbox = int(run_of(self.environment).scenario.users[self.role].options.get("sessions_per_mailbox", 5))
        self.devices = per_mailbox
        super().on_start()
        opts = self.kind.options
        self.stress = stress_run(self.environment)
        self.box = self.stress.mailbox(self.account.user, opts)
        self.index = self.box.indexes
        self.box.indexes += 1
        target = self.load.target
        # The last pop3_sessions of each mailbox speak POP3 (a mailbox with one session stays IMAP).
        self.is_pop3 = bool(target.pop3) and self.index % per_mailbox >= per_mailbox - int(opts.get("pop3_sessions", 1))
        if self.is_pop3:
            self.request_type = "POP3"
        self.pop3_pause = float(opts.get("pop3_pause", 1.0))
        self.label = f"{self.account.user}#{self.index}{'p' if self.is_pop3 else ''}"
        self.rng = self.stress.rng(self.account.user, self.index)
        self.session: StressImap | None = None
        self.visits = 0
        rate = float(opts.get("lmtp_rate", 0.5))
        if self.index == 0 and rate > 0 and target.delivery is not None:
            self.stress.deliveries.append(gevent.spawn(self._deliver_forever, rate))

    # -- IMAP --------------------------------------------------------------------------------
    def _open(self) -> StressImap:
        self.visits += 1
        client = self._imap()
        self.client = client
        session = StressImap(client, self.box, f"{self.label}.{self.visits}", self.index, self.rng, self.kind.options,
                             self.stress.run_id, checking=self.stress.checking)
        session.broken = False
        session.open(self.account.user, self.account.password)
        self.box.checkpoints.join(session)
        return session

    def _drop(self) -> None:
        if self.session is not None:
            self.box.checkpoints.leave(self.session)
            self.session = None
        super()._drop()

    @task
    def work(self) -> None:
        if self.is_pop3:
            return self._pop3_visit()
        try:
            if self.session is None:
                self.session = self._open()
            self.box.checkpoints.gate(self.session)
            if self.session.broken:
                self._drop()
                return
            self.session.step()
        except NETWORK_ERRORS:
            self._drop()

    # -- POP3 --------------------------------------------------------------------------------
    def _pop3_visit(self) -> None:
        client = self._pop3()
        try:
            StressPop3(client, self.box, f"{self.label}.{self.visits}", self.rng, self.box.checkpoints).visit(
                self.account.user, self.account.password)
        except NETWORK_ERRORS:
            pass
        finally:
            client.close()
        self.visits += 1
        with self.interruptible():  # a mail client polls now and then, not in a loop
            gevent.sleep(self.rng.uniform(0, 2 * self.pop3_pause))

    # -- LMTP in the background --------------------------------------------------------------
    def _deliver_forever(self, rate: float) -> None:
        box, target = self.box, self.load.target
        rng = self.stress.rng(self.account.user, "lmtp")
        client = None

        def report(name, ms, nbytes, exc):
            self._fire(request_type="LMTP", name=name, response_time=ms, response_length=nbytes, exception=exc, context={})

        while True:
            gevent.sleep(rng.expovariate(rate))
            msgid = message_id(self.stress.run_id, box.name, box.next_number()).encode()
            data = dot_stuff(make_message(rng, msgid.decode(), time.time()))
            box.checkpoints.writer_enter()
            box.created[msgid] = (None, None, date.today().toordinal())
            try:
                if client is None:
                    client = LmtpClient(target.delivery, timeout=self.load.timeout, ca_file=target.ca_file,
                                        report=report, watchdog=watchdog())
                    client.connect()
                result = client.deliver([self.account.user], data)
                if result.get(self.account.user) is None:
                    box.delivered += 1
                else:
                    box.created.pop(msgid, None)
            except NETWORK_ERRORS:
                box.uncertain.add(msgid)
                if client:
                    client.close()
                client = None
            except BaseException:  # killed at the end of the run with the delivery in flight: it may or may not be there
                box.uncertain.add(msgid)
                raise
            finally:
                box.checkpoints.writer_exit()


# -- the end of the run: audit every mailbox, write this process's results --------------------

def audit(run: StressRun, target) -> None:
    """Every message this run created and nobody deleted must be in INBOX, once."""
    accounts = {a.user: a for a in target.accounts}
    for name, box in run.mailboxes.items():
        account = accounts.get(name)
        if account is None or target.imap is None:
            continue
        blob, error = b"", None
        for attempt in range(AUDIT_ATTEMPTS):  # an mbox server may still hold the lock of a session just closed
            client = ImapClient(target.imap, timeout=AUDIT_TIMEOUT)
            try:
                client.connect()
                client.login(account.user, account.password)
                count = client.select("INBOX")
                blob = client.command("IMAP audit", b"FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])", collect=True) if count else b""
                client.logout()
                error = None
                break
            except NETWORK_ERRORS as exc:
                error = str(exc)
                gevent.sleep(1 + attempt)
            finally:
                client.close()
        if error:
            box.audit = {"error": error}
            continue
        present: dict[bytes, int] = {}
        for msgid in _MESSAGE_ID.findall(blob):
            present[msgid] = present.get(msgid, 0) + 1
        gone_msgids = {box.uid_msgid[u] for u in box.vanishing_uids | box.gone if u in box.uid_msgid}
        excused = box.uncertain | box.vanishing_msgids | gone_msgids
        unbound_deletes = len(box.vanishing_uids - set(box.uid_msgid))
        lost = [m for m in box.created if m not in present and m not in excused]
        duplicated = [m for m in box.created if present.get(m, 0) > 1]
        box.audit = {"present": len(present), "lost": len(lost), "duplicated": len(duplicated),
                     "unbound_deletes": unbound_deletes}
        if box.degraded:
            # Which message went cannot be told any more; how many can: each removal sent takes one at most.
            missing = [m for m in box.created if m not in present and m not in box.uncertain]
            beyond = len(missing) - box.removals
            box.audit["not_judged"] = "UIDVALIDITY was renewed: only counted (missing vs removals sent)"
            box.audit.update(missing=len(missing), removals=box.removals)
            if beyond > 0:
                box.violation("mail-lost", f"{len(missing)} message(s) this run created are gone, but sessions sent only "
                              f"{box.removals} removal(s) (\\Deleted, MOVE, POP3 DELE): at least {beyond} lost, "
                              f"e.g. one of {missing[0].decode(errors='replace')}")
        elif lost and not unbound_deletes:
            box.violation("mail-lost", f"{len(lost)} message(s) this run created are gone, though no one deleted them, "
                          f"e.g. {lost[0].decode(errors='replace')}")
        for m in duplicated[:1]:
            box.violation("mail-duplicated", f"{m.decode(errors='replace')} is in INBOX {present[m]} times ({len(duplicated)} such)")


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    group = parser.add_argument_group("mailharness stress", "State-tracking stress mode (mailharness stress)")
    group.add_argument("--stress-out", env_var="MAILHARNESS_STRESS_OUT", default=None,
                       help="Directory for each process's consistency-<pid>.json")
    group.add_argument("--stress-seed", env_var="MAILHARNESS_STRESS_SEED", type=int, default=None,
                       help="Seed for the sessions' random commands (repeatable runs)")
    group.add_argument("--stress-checking", env_var="MAILHARNESS_STRESS_CHECKING", choices=("on", "off"), default="on",
                       help="off: send the same commands but do not check the responses (benchmark)")


@events.test_stop.add_listener
def _on_test_stop(environment, **_kw) -> None:
    run = getattr(environment, "mailharness_stress", None)
    if run is None or run.written:
        return
    for greenlet in run.deliveries:
        greenlet.kill(block=False)
    load = getattr(environment, "mailharness", None)
    if load is not None and run.checking:
        try:
            audit(run, load.target)
        except Exception as exc:  # noqa: BLE001 - the results must still be written
            run.log.first.setdefault("audit-error", {"kind": "audit-error", "detail": str(exc)})
    run.write()


@events.quitting.add_listener
def _on_quitting(environment, **_kw) -> None:
    run = getattr(environment, "mailharness_stress", None)
    if run is not None:
        run.write()
