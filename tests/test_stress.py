"""Stress mode (issue 13): the model's checks one by one, and real runs against a throwaway Dovecot.

The fault test is one stress run through one proxy that gives each mailbox its own concurrency fault
(FaultsByUser) and leaves the last mailbox alone: every faulty mailbox must show a violation of the
kind its fault breaks, the clean one none. Runs are bounded (seconds, a few dozen sessions, 127.0.0.1).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from harness import cli
from harness.reports.results import load_results
from harness.stress.model import MailboxModel, SessionView
from harness.stress.responses import Response
from harness.stress.violations import ViolationLog
from harness.targets.managed_dovecot import ManagedDovecot
from tests.faultproxy import FaultProxy, FaultsByUser

pytestmark = pytest.mark.timeout(240)

# fault -> the violation kinds that may report it (each fault must produce at least one)
FAULT_KINDS = {
    "imap-flags-session-local": {"keyword-lost", "checkpoint-differs"},
    "imap-expunge-wrong-number": {"expunged-undeleted", "expunge-beyond-exists", "uid-map-changed", "uid-not-ascending"},
    "imap-expunge-during-fetch": {"expunge-during-command"},
    "imap-store-lost-update": {"keyword-lost", "atomic-flags-lost"},
    "imap-idle-no-exists": {"checkpoint-differs", "seq-beyond-exists", "expunge-beyond-exists", "search-mismatch"},
    "imap-size-changes": {"static-changed", "content-differs"},
    "imap-rfc822size-off": {"content-differs"},
    "imap-search-misses": {"search-mismatch"},
    # mail-lost too: the end-of-run audit reads Message-IDs from a FETCH literal, corrupted as well
    "imap-fetch-corrupt": {"content-differs", "static-changed", "mail-lost"},
    "imap-uidvalidity-changes": {"uidvalidity-renewed"},  # a warning: UIDs SHOULD persist between sessions
    "pop3-uidl-unstable": {"pop3-uidl-changed"},
    "pop3-uidl-duplicate": {"pop3-uidl-duplicate"},
    "pop3-list-size-off": {"pop3-size-mismatch"},
}
SESSIONS = 4  # per mailbox: 3 IMAP, 1 POP3


def scenario(tmp_path, **overrides) -> str:
    spec = {"weight": 1, "think_time": 0, "sessions_per_mailbox": SESSIONS, "pop3_sessions": 1, "pop3_pause": 0.3, "lmtp_rate": 2,
            "checkpoint_interval": 1.5, "idle_seconds": 0.8, "min_messages": 6, "max_messages": 25,
            "commands": {"idle": 12, "store_keyword": 14, "delete": 6, "expunge": 4, "search": 12, "uid_search": 8}}
    spec.update(overrides)
    path = tmp_path / "stress-test.yaml"
    path.write_text(yaml.safe_dump({"users": {"stress": spec}, "timeout": 10}))
    return str(path)


def stress(*args: str) -> int:
    return cli.main(["stress", "--quiet", *args])


# -- the model, response by response -------------------------------------------------------

def view_of(*lines: bytes, deleted=()) -> tuple[SessionView, ViolationLog]:
    log = ViolationLog()
    view = SessionView(MailboxModel("box", log), "s1", b"$MhS0")
    view.mailbox.vanishing_uids.update(deleted)
    for line in lines:
        view.apply(Response([line]))
    return view, log


def test_model_accepts_a_consistent_session():
    view, log = view_of(b"* FLAGS (\\Seen $MhS0)", b"* 3 EXISTS", b"* 1 FETCH (UID 4 FLAGS (\\Seen))",
                        b"* 2 FETCH (UID 7 FLAGS ($MhS0))", b"* 3 FETCH (FLAGS () UID 9)", b"* 2 EXPUNGE", b"* 3 EXISTS", deleted={7})
    assert not log.counts
    assert view.uids == [4, 9, None]


@pytest.mark.parametrize("lines, kind", [
    ([b"* 2 EXISTS", b"* 3 FETCH (UID 5 FLAGS ())"], "seq-beyond-exists"),
    ([b"* 3 EXISTS", b"* 2 EXISTS"], "exists-decreased"),
    ([b"* 2 EXISTS", b"* 3 EXPUNGE"], "expunge-beyond-exists"),
    ([b"* 2 EXISTS", b"* 1 FETCH (UID 5 FLAGS ())", b"* 1 FETCH (UID 6 FLAGS ())"], "uid-map-changed"),
    ([b"* 2 EXISTS", b"* 2 FETCH (UID 5 FLAGS ())", b"* 1 FETCH (UID 6 FLAGS ())"], "uid-not-ascending"),
    ([b"* 2 EXISTS", b"* 1 FETCH (UID 5 FLAGS ())", b"* 1 EXPUNGE"], "expunged-undeleted"),
    ([b"* FLAGS (\\Seen)", b"* 1 EXISTS", b"* 1 FETCH (UID 5 FLAGS ($Other))"], "keyword-not-announced"),
    ([b"* OK [UIDVALIDITY 5] x", b"* OK [UIDVALIDITY 6] x"], "uidvalidity-changed"),
    ([b"* 2 EXISTS", b"* 1 EXPUNGED"], "bad-response"),  # GNU Mailutils 3.15
    ([b"* 1 EXISTS", b"* 1 FETCH (UID 5 MODSEQ (9) FLAGS ())", b"* 1 FETCH (UID 5 MODSEQ (8) FLAGS ())"], "modseq-decreased"),
    ([b"* 1 EXISTS", b"* 1 FETCH (UID 5 RFC822.SIZE 100)", b"* 1 FETCH (UID 5 RFC822.SIZE 101)"], "static-changed"),
])
def test_model_catches(lines, kind):
    _, log = view_of(*lines)
    assert kind in log.counts, dict(log.counts)


def test_expunge_during_fetch_is_caught_but_not_during_uid_fetch():
    view, log = view_of(b"* 2 EXISTS", b"* 1 FETCH (UID 5 FLAGS ())")
    view.mailbox.vanishing_uids.add(5)
    view.command = "UID FETCH"
    view.apply(Response([b"* 1 EXPUNGE"]))
    assert not log.counts
    view.command = "FETCH"
    view.apply(Response([b"* 1 EXPUNGE"]))
    assert "expunge-during-command" in log.counts


def test_an_owned_keyword_must_stay_where_its_owner_put_it():
    view, log = view_of(b"* FLAGS ($MhS0)", b"* 1 EXISTS")
    view.mailbox.owned[b"$mhs0"][5] = True
    view.apply(Response([b"* 1 FETCH (UID 5 FLAGS ($MhS0))"]))
    assert not log.counts
    view.apply(Response([b"* 1 FETCH (UID 5 FLAGS ())"]))
    assert "keyword-lost" in log.counts
    # a message on its way out may answer anything (imaptest's "Expunge fetch: Cached/No")
    view2, log2 = view_of(b"* FLAGS ($MhS0)", b"* 1 EXISTS")
    view2.mailbox.owned[b"$mhs0"][5] = True
    view2.mailbox.vanishing_uids.add(5)
    view2.apply(Response([b"* 1 FETCH (UID 5 FLAGS ())"]))
    assert not log2.counts


# -- real runs ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stress_dovecot():
    with ManagedDovecot(accounts=len(FAULT_KINDS) + 1) as dc:
        yield dc


@pytest.mark.slow
def test_stress_finds_each_concurrency_fault_and_nothing_in_a_clean_mailbox(stress_dovecot, tmp_path):
    target = stress_dovecot.target
    users = [a.user for a in target.accounts]
    by_user = dict(zip(users, FAULT_KINDS))  # the last account has no fault: the control
    clean = users[len(FAULT_KINDS)]
    faults = {proto: FaultsByUser({u: f for u, f in by_user.items() if f.startswith(proto)}) for proto in ("imap", "pop3")}
    with FaultProxy(target.imap.host, target.imap.port, "imap") as imap, FaultProxy(target.pop3.host, target.pop3.port, "pop3") as pop3:
        imap.fault, pop3.fault = faults["imap"], faults["pop3"]
        proxied = dataclasses.replace(target, imap=dataclasses.replace(target.imap, host=imap.host, port=imap.port),
                                      pop3=dataclasses.replace(target.pop3, host=pop3.host, port=pop3.port))
        path = tmp_path / "target.yaml"
        proxied.dump(path)
        code = stress("--target", str(path), "--users", str(SESSIONS * len(users)), "--run-time", "10s", "--seed", "5",
                      "--scenario", scenario(tmp_path), "--report-dir", str(tmp_path / "run"), "--no-probes")
    assert not imap.errors and not pop3.errors, imap.errors + pop3.errors
    result = json.loads((tmp_path / "run" / "stress.json").read_text())
    fired = faults["imap"].fired_by_user(imap.fired) | faults["pop3"].fired_by_user(pop3.fired)
    seen = {user: set(box["violations"]) for user, box in result["mailboxes"].items()}
    assert code == 1
    assert not seen[clean], f"violations in the mailbox without a fault: {result['mailboxes'][clean]}"
    for user, name in by_user.items():
        assert fired.get(user), f"{name} never fired ({user})"
        assert seen[user] & FAULT_KINDS[name], f"{name}: fired {len(fired[user])}x, violations {seen[user] or 'none'}"
    html = (tmp_path / "run" / "consistency.html").read_text()
    assert "First expunge-during-command" in html and "<svg" in html
    results = load_results(tmp_path / "run" / "results.json")  # what compare and matrix read
    assert results["verdict"] == "fail"
    outcomes = {t["id"]: t["outcome"] for t in results["tests"]}
    assert outcomes["stress::expunge-during-command"] == "failed"


@pytest.mark.slow
def test_stress_against_dovecot_with_two_workers_reports_no_violation(stress_dovecot, tmp_path):
    code = stress("--target", str(_disposable(stress_dovecot.target, tmp_path)), "--users", "10", "--run-time", "6s",
                  "--workers", "2", "--seed", "1", "--scenario", scenario(tmp_path, pop3_sessions=1, checkpoint_interval=2),
                  "--report-dir", str(tmp_path / "run"))
    result = json.loads((tmp_path / "run" / "stress.json").read_text())
    assert code == 0, result["problems"]
    assert result["processes"] == 2 and result["commands"] > 100
    assert sum(b["checkpoints"]["completed"] for b in result["mailboxes"].values()) > 0
    assert result["classification"]["Expunge fetch"] == "Cached"  # Dovecot 2.3, as imaptest lists it
    assert result["classification"]["Checkpoint"] == "Yes"
    results = load_results(tmp_path / "run" / "results.json")
    assert results["verdict"] == "pass", results["verdict_reason"]
    outcomes = {t["id"]: t["outcome"] for t in results["tests"]}
    assert outcomes["stress::pop3-size-mismatch"] == "passed"  # POP3 sessions ran, so their checks count
    assert outcomes["stress-class::Expunge fetch"] == "behaviour"  # Cached: reported, not failed
    assert "Consistency (state-tracking stress)" in (tmp_path / "run" / "capacity.html").read_text()


def _disposable(target, tmp_path):
    path = tmp_path / "target.yaml"
    target.dump(path)
    return path


def test_stress_refuses_bad_input(tmp_path):
    assert stress("--users", "0", "--run-time", "5s") == 2
    assert stress("--users", "5", "--run-time", "soon") == 2
    assert stress("--users", "5", "--run-time", "5s", "--scenario", "webmail") == 2


def test_a_message_seen_with_deleted_may_go():
    # \Deleted set before the run (an interrupted earlier run, another client): its EXPUNGE is expected
    _, log = view_of(b"* 2 EXISTS", b"* 1 FETCH (UID 5 FLAGS (\\Deleted))", b"* 1 EXPUNGE")
    assert not log.counts
