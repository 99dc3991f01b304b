"""Load testing: real Locust runs against an embedded Dovecot (slow), plus the pieces they rest on.

The slow tests run `mailharness load` end to end: each scenario for a few seconds with its
think times compressed (--think-scale), two local workers with the mail accounting, a
threshold breach, and seeding. Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import cli
from harness.errors import ConfigError
from harness.load import wire
from harness.load.accounting import DrainResult, settle
from harness.load.accounts import AccountAllocator, AccountPlan
from harness.load.cpu_sampler import CpuSampler, read_cpu_csv, summarize
from harness.load.imap_client import ImapClient
from harness.load.ledger import Ledger
from harness.load.load_command import LOCUSTFILE
from harness.load.pop3_client import Pop3Client
from harness.load.scenario import load_scenario
from harness.load.seeding import seed_accounts
from harness.load.thresholds import evaluate, parse_threshold
from harness.load.wire import CommandFailed, Connection, Watchdog
from harness.targets.managed_dovecot import ManagedDovecot
from harness.targets.target_file import Account, Endpoint

EXPECTED = {
    "term-start": ["IMAP LOGIN", "IMAP LIST", "IMAP SELECT", "IMAP FETCH headers", "IMAP FETCH body", "IMAP STORE seen",
                   "IMAP IDLE", "POP3 STAT", "POP3 RETR", "POP3 DELE", "POP3 UIDL", "POP3 QUIT", "LMTP deliver"],
    "pop3-pollers": ["POP3 connect", "POP3 USER", "POP3 PASS", "POP3 STAT", "POP3 RETR", "POP3 DELE", "POP3 UIDL",
                     "POP3 QUIT", "LMTP deliver"],
    "webmail": ["IMAP LOGIN", "IMAP LIST", "IMAP SELECT", "IMAP FETCH headers", "IMAP FETCH body",
                "IMAP FETCH attachment", "IMAP STORE seen", "LMTP deliver"],
    "idle-notify": ["IMAP LOGIN", "IMAP SELECT", "IMAP IDLE", "IMAP DONE", "IMAP FETCH new", "IMAP notify latency",
                    "LMTP deliver"],
}


def load(*args: str) -> int:
    return cli.main(["load", "--quiet", *args])


def stats_rows(run_dir: Path) -> dict[str, dict]:
    with (run_dir / "locust_stats.csv").open(newline="") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle)}


# -- end to end (slow) ------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_scenario_runs_against_embedded_dovecot(scenario, tmp_path):
    run_dir = tmp_path / scenario
    code = load("--scenario", scenario, "--users", "8", "--spawn-rate", "8", "--run-time", "5s",
                "--think-scale", "0.05", "--report-dir", str(run_dir))
    assert code == 0, (run_dir / "run.json").read_text()
    rows = stats_rows(run_dir)
    for name in EXPECTED[scenario]:
        assert int(rows[name]["Request Count"]) > 0, f"no {name!r} requests in {scenario}"
    assert rows["Aggregated"]["Failure Count"] == "0"
    report = (run_dir / "capacity.html").read_text()
    assert "PASSED" in report and "<svg" in report and "<script" not in report
    assert (run_dir / "locust.html").stat().st_size > 10_000
    assert (run_dir / "locust_stats_history.csv").exists()


@pytest.mark.slow
def test_two_workers_retrieve_every_delivered_message_exactly_once(tmp_path):
    scenario = tmp_path / "busy-pollers.yaml"
    scenario.write_text("""
users:
  pop3_delete: {weight: 3, think_time: {min: 0.2, max: 0.6}}
  pop3_keep: {weight: 1, think_time: {min: 0.5, max: 1}}
accounts: {pop3_delete: 4, pop3_keep: 2}
mailbox: {messages: 5, size_mix: {small: 1}}
delivery: {rate: 40, to: {pop3_delete: 4, pop3_keep: 1}, size_mix: {small: 9, medium: 1}}
max_error_rate: 0%
""")
    run_dir = tmp_path / "run"
    code = load("--scenario", str(scenario), "--users", "7", "--spawn-rate", "20", "--run-time", "6s",
                "--workers", "2", "--accounts", "8", "--report-dir", str(run_dir))
    result = json.loads((run_dir / "run.json").read_text())
    assert code == 0, result
    accounting = result["accounting"]
    assert accounting["delivered"] >= 10  # 40/s for 6 s; fewer on a busy machine, enough to interleave with polling
    assert accounting["retrieved_during_run"] > 0 and accounting["sessions"] > 0
    assert accounting["lost_count"] == 0 and accounting["duplicated_count"] == 0
    assert (accounting["delivered"] + accounting["delivered_unconfirmed_found"]
            == accounting["retrieved_during_run"] + accounting["retrieved_by_drain"])
    # deliveries and retrievals were journalled by more than one process
    assert len(list((run_dir / "ledger").glob("*.jsonl"))) >= 2
    assert result["facts"]["generator"].startswith("2 worker processes")
    assert int(stats_rows(run_dir)["POP3 RETR"]["Request Count"]) > 0
    report = (run_dir / "capacity.html").read_text()
    assert "exactly once, every message" in report
    # generator CPU beside throughput: Locust's master and its 2 workers, and the embedded server, were sampled
    cpu = result["facts"]["generator_cpu"]
    assert cpu["generator_cores_mean"] > 0 and cpu["server_cores_mean"] > 0 and cpu["verdict"]
    assert max(int(r["generator_processes"]) for r in read_cpu_csv(run_dir)) >= 3
    assert "CPU: generator and server" in report and "Generator CPU" in report


@pytest.mark.slow
def test_threshold_breach_fails_the_run_and_shows_in_the_report(tmp_path):
    run_dir = tmp_path / "run"
    code = load("--scenario", "webmail", "--users", "3", "--run-time", "3s", "--think-scale", "0.05",
                "--threshold", "IMAP FETCH headers:rps>100000", "--threshold", "IMAP LOGIN:p99<30s",
                "--report-dir", str(run_dir))
    assert code == 1
    result = json.loads((run_dir / "run.json").read_text())
    verdicts = {t["rule"]: t["passed"] for t in result["thresholds"]}
    assert verdicts["IMAP FETCH headers: rps>100000"] is False
    assert verdicts["IMAP LOGIN: p99<30s"] is True
    report = (run_dir / "capacity.html").read_text()
    assert "BREACHED" in report and "FAILED" in report


@pytest.mark.slow
def test_seeding_tops_up_and_never_duplicates(tmp_path, capsys):
    with ManagedDovecot(accounts=3) as dovecot:
        target = dovecot.target
        first = seed_accounts(target, target.accounts, 12, {"small": 60, "medium": 40})
        assert (first.present, first.added, first.failed) == (0, 36, [])
        again = seed_accounts(target, target.accounts, 12, {"small": 60, "medium": 40})
        assert (again.present, again.added) == (36, 0)

        pop3 = Pop3Client(target.pop3)  # take two messages away, as a download-and-delete user would
        pop3.connect()
        pop3.login(target.accounts[0].user, target.accounts[0].password)
        pop3.dele(1)
        pop3.dele(5)
        pop3.quit()

        target_file = tmp_path / "target.yaml"
        target.dump(target_file)
        assert cli.main(["seed", "--target", str(target_file), "--messages", "12",
                         "--size-mix", "small=60,medium=40", "--accounts", "1-2"]) == 0
        assert "22 seeded messages were there, 2 added" in capsys.readouterr().out
        for account in target.accounts:
            imap = ImapClient(target.imap)
            imap.connect()
            imap.login(account.user, account.password)
            assert imap.select() == 12
            imap.logout()


# -- configuration errors (fast) ----------------------------------------------------------

def test_bad_scenario_file_names_file_line_and_key(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("users:\n  imap_webmail:\n    weight: 1\n    think_time: 3\n    header: 50\n")
    assert load("--scenario", str(path), "--users", "1", "--run-time", "1s") == 2
    err = capsys.readouterr().err
    assert f"{path}:5: users.imap_webmail.header: unknown key 'header'" in err


def test_scenario_meaning_errors_point_at_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("users:\n  pop3_delete: {weight: 1}\ndelivery:\n  rate: 5\n  to:\n    imap_idle: 1\n")
    with pytest.raises(ConfigError, match=rf"{path}:6: delivery.to.imap_idle: no such user kind"):
        load_scenario(str(path))
    path.write_text("users:\n  pop3_delete: {weight: 1}\nthresholds:\n  - 'POP3 RETR: p95 < fast'\n")
    with pytest.raises(ConfigError, match=rf"{path}:4: thresholds.0: threshold"):
        load_scenario(str(path))


def test_every_shipped_scenario_is_valid():
    for name in EXPECTED:
        scenario = load_scenario(name)
        assert scenario.users and scenario.thresholds


def test_load_refuses_targets_that_are_not_disposable(tmp_path, capsys):
    path = tmp_path / "prod.yaml"
    path.write_text("name: prod\nimap: imap://127.0.0.1:1\naccounts: [{user: a, password: b}]\n")
    assert load("--target", str(path), "--scenario", "webmail", "--users", "1", "--run-time", "1s") == 2
    assert "disposable: true" in capsys.readouterr().err


def test_locustfile_refuses_targets_that_are_not_disposable(tmp_path):
    # Plain `locust -f loadtests/locustfile.py` (not `mailharness load`): the same refusal, before any user starts.
    # In a subprocess: importing Locust here would monkey-patch the test process for gevent.
    path = tmp_path / "prod.yaml"
    path.write_text("name: prod\npop3: pop3://127.0.0.1:1\nimap: imap://127.0.0.1:1\nlmtp: lmtp://127.0.0.1:1\n"
                    "accounts: [{user: a, password: b}, {user: c, password: d}]\n")  # fits the scenario: only `disposable` is missing
    proc = subprocess.run([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "1", "-t", "1s",
                           "--target-file", str(path), "--scenario", "pop3-pollers"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"{path}: the load users delete mail" in proc.stderr
    assert "add `disposable: true` to the target file only if its accounts are test accounts" in proc.stderr


@pytest.mark.slow
def test_load_source_address_flag_spreads_the_connections(dovecot, target_file, tmp_path):
    # The flag is the scenario key's twin: the server sees the logins of the two webmail users (the third user
    # delivers) come from the addresses given.
    run_dir = tmp_path / "run"
    code = load("--target", str(target_file), "--scenario", "webmail", "--users", "3", "--spawn-rate", "3", "--run-time", "3s",
                "--think-scale", "0.01", "--source-address", "127.0.0.5-127.0.0.6", "--report-dir", str(run_dir))
    run = json.loads((run_dir / "run.json").read_text())
    # The shared server's INBOXes may be empty: thresholds on FETCHes that never ran are the only problem allowed.
    assert code in (0, 1) and all("(observed no requests)" in p for p in run["problems"]), run["problems"]
    assert run["request_counts"].get("IMAP LOGIN", 0) > 0
    logins = [line for line in dovecot.log_tail(5000).splitlines() if "imap-login: Info: Login:" in line]
    assert any("rip=127.0.0.5," in line for line in logins) and any("rip=127.0.0.6," in line for line in logins)
    assert run["facts"]["source_addresses"].startswith("2 local addresses")


def test_load_source_address_flag_refuses_a_bad_range_before_starting_anything(capsys):
    for bad, why in (("127.0.0.9-127.0.0.2", "the range must go up"), ("localhost", "is not an IP address")):
        assert load("--scenario", "webmail", "--users", "1", "--run-time", "1s", "--source-address", bad) == 2
        err = capsys.readouterr().err
        assert f"--source-address: {bad!r}" in err and why in err and "Traceback" not in err and "seeding" not in err


def test_users_and_run_time_are_bounded(capsys):
    assert load("--scenario", "webmail", "--users", "50000", "--run-time", "1m") == 2
    assert load("--scenario", "webmail", "--users", "5", "--run-time", "9h") == 2


# -- building blocks (fast) ---------------------------------------------------------------

def test_thresholds_parse_and_evaluate():
    rows = [{"Name": "POP3 RETR", "Request Count": "200", "Failure Count": "1", "Requests/s": "20.0",
             "95%": "120", "99%": "900", "Average Response Time": "30.5", "Median Response Time": "10",
             "Max Response Time": "1200"}]
    rules = [parse_threshold(t) for t in ("POP3 RETR:p95<200ms", "POP3 RETR: p99 < 0.5s", "POP3 RETR:errors<1%",
                                          "POP3 RETR:rps>10", "IMAP LOGIN:p95<1s")]
    assert [v.passed for v in evaluate(rules, rows)] == [True, False, True, True, False]
    with pytest.raises(ConfigError, match="unknown metric"):
        parse_threshold("POP3 RETR:p42<1s")


def test_account_pools_are_disjoint_and_deleters_split_by_worker(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("users:\n  pop3_delete: {weight: 1}\n  pop3_keep: {weight: 1}\n  imap_idle: {weight: 2, devices: 2}\n"
                    "accounts: {pop3_delete: 4}\n")
    accounts = [Account(f"u{n}", "pw") for n in range(20)]
    plan = AccountPlan.for_scenario(accounts, load_scenario(str(path)))
    assert [len(plan.pools[r]) for r in ("pop3_delete", "pop3_keep", "imap_idle")] == [4, 6, 10]
    assert len({a.user for a in plan.all_accounts()}) == 20
    w0, w1 = AccountAllocator(plan, 0, 2), AccountAllocator(plan, 1, 2)
    taken0 = {w0.next_account("pop3_delete").user for _ in range(4)}
    taken1 = {w1.next_account("pop3_delete").user for _ in range(4)}
    assert taken0 and taken1 and not taken0 & taken1
    idle = [w0.next_account("imap_idle", devices=2).user for _ in range(4)]
    assert idle[0] == idle[1] != idle[2] == idle[3]
    with pytest.raises(ConfigError, match="pop3_delete has 4 account"):
        AccountAllocator(plan, 0, 5)


def test_accounting_finds_lost_duplicated_and_settles_interrupted_sessions(tmp_path):
    ledger = Ledger(tmp_path)
    for n in range(1, 7):
        ledger.sending(f"m{n}", "u1", "pop3_delete")
    for n in range(1, 6):  # m6: the generator stopped before the server's reply
        ledger.delivered(f"m{n}")
    ledger.sending("k1", "u9", "pop3_keep")
    ledger.delivered("k1")
    ledger.quit_sent("s1", "u1", ["m1", "m2"])
    ledger.committed("s1")
    ledger.quit_sent("s2", "u1", ["m3"])  # QUIT answer never seen; m3 is gone from the server: it went through
    ledger.quit_sent("s3", "u1", ["m4"])  # QUIT answer never seen; the drain found m4: it did not
    ledger.quit_sent("s4", "u1", ["m2"])
    ledger.committed("s4")  # m2 retrieved twice
    drained = DrainResult()
    drained.retrieved.update(["m4", "m6", "old-1"])
    result = settle(tmp_path, drained)
    assert result.lost == ["m5"]
    assert result.duplicated == ["m2"]
    assert (result.delivered, result.delivered_unconfirmed_found, result.delivered_unconfirmed_missing) == (5, 1, 0)
    assert (result.uncertain_sessions, result.not_from_this_run, result.delivered_elsewhere) == (2, 1, 1)
    assert not result.ok


class CannedServer:
    """A one-connection TCP server on 127.0.0.1 that answers each command line with canned bytes."""

    def __init__(self, greeting: bytes, replies: list[bytes], chunk: int = 7, greet_when: threading.Event | None = None):
        """`greet_when`: send the greeting only once this is set (else at once on accept)."""
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = Endpoint("imap", "127.0.0.1", self.listener.getsockname()[1])
        self.greeting, self.replies, self.chunk, self.greet_when = greeting, replies, chunk, greet_when
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.listener.accept()
        with conn:
            if self.greet_when:
                self.greet_when.wait(10)
            conn.sendall(self.greeting)
            reader = conn.makefile("rb")
            for reply in self.replies:  # one reply per command line received
                reader.readline()
                for i in range(0, len(reply), self.chunk):  # dribble it out: the reader must cope with any split
                    conn.sendall(reply[i : i + self.chunk])
            with contextlib.suppress(ConnectionResetError):  # a client giving up mid-handshake resets
                reader.read()  # then stay silent until the client hangs up


def test_imap_reader_skips_literals_even_when_they_contain_the_tag():
    body = b"Subject: hi\r\n\r\na2 OK not the end\r\na3 OK nor this\r\n{5}\r\n"

    def fetch(tag: bytes) -> tuple[bytes, bytes]:
        untagged = b"* 1 FETCH (BODY[] {%d}\r\n" % len(body) + body + b")\r\n* 2 FETCH (FLAGS (\\Seen))\r\n"
        return untagged, untagged + tag + b" OK Fetch completed.\r\n"

    (_, fetch_a2), (untagged_a3, fetch_a3) = fetch(b"a2"), fetch(b"a3")
    server = CannedServer(b"* OK ready\r\n", [b"a1 OK logged in\r\n", fetch_a2, fetch_a3, b"a4 NO [OVERQUOTA] full\r\n"])
    seen = []
    client = ImapClient(server.endpoint, report=lambda *r: seen.append(r))
    client.connect()
    client.login("u", "p")
    assert client.command("IMAP FETCH all", b"FETCH 1:2 BODY[]") == b""
    assert client.command("IMAP FETCH all", b"FETCH 1:2 BODY[]", collect=True) == untagged_a3
    with pytest.raises(CommandFailed, match="OVERQUOTA"):
        client.command("IMAP APPEND", b"NOOP")
    reported = [(name, nbytes, exc is None) for name, _, nbytes, exc in seen]
    assert reported[2] == ("IMAP FETCH all", len(fetch_a2), True)
    assert reported[-1][0] == "IMAP APPEND" and reported[-1][2] is False


def _fetch_answer(tag: bytes, body: bytes) -> tuple[bytes, bytes]:
    untagged = b"* 1 FETCH (BODY[] {%d}\r\n" % len(body) + body + b")\r\n"
    return untagged, untagged + tag + b" OK Fetch completed.\r\n"


def test_imap_reader_stops_at_its_tagged_line_when_later_answers_are_already_buffered():
    # Pipelined answers arrive together: the reader of a2 must not jump through a3's literal (which holds
    # a line looking like a2's tagged one) and so miss its own tagged line.
    _, a2 = _fetch_answer(b"a2", b"plain text\r\n")
    untagged_a3, a3 = _fetch_answer(b"a3", b"a2 OK fake\r\n{3}\r\nxyz\r\n")
    server = CannedServer(b"* OK ready\r\n", [b"a1 OK logged in\r\n", a2 + a3, b""], chunk=1 << 16)
    client = ImapClient(server.endpoint, timeout=2)
    client.connect()
    client.login("u", "p")
    time.sleep(0.1)  # let the first answer carry both
    assert client.command("IMAP FETCH", b"FETCH 1 BODY[]") == b""
    assert client.command("IMAP FETCH", b"FETCH 1 BODY[]", collect=True) == untagged_a3


def test_pipeline_sends_one_write_and_reports_each_answer_with_its_own_bytes():
    untagged, fetched = _fetch_answer(b"a3", b"body\r\n")
    answers = [b"* 2 EXISTS\r\na2 OK selected\r\n", fetched, b"a4 NO [CANNOT] no\r\n", b"a5 OK done\r\n"]
    server = CannedServer(b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n", [b"a1 OK in\r\n", b"".join(answers), b"", b"", b""],
                          chunk=5)
    seen = []
    client = ImapClient(server.endpoint, timeout=2, report=lambda *r: seen.append(r))
    client.connect()
    client.login("u", "p")
    assert client.literal_plus
    with pytest.raises(CommandFailed, match="CANNOT"):
        client.pipeline([("IMAP SELECT", b"SELECT INBOX"), ("IMAP FETCH", b"FETCH 1 BODY[]"),
                         ("IMAP STORE", b"STORE 1 +FLAGS (x)"), ("IMAP NOOP", b"NOOP")], collect=True)
    reported = [(name, nbytes, exc is None) for name, _, nbytes, exc in seen[2:]]
    assert reported == [("IMAP SELECT", len(answers[0]), True), ("IMAP FETCH", len(answers[1]), True),
                        ("IMAP STORE", len(answers[2]), False), ("IMAP NOOP", len(answers[3]), True)]
    # Untagged responses belong to the batch: a server may answer a later command before an earlier one ends.
    server = CannedServer(b"* OK ready\r\n", [b"a1 OK in\r\n", b"* 3 EXISTS\r\n" + untagged + b"a2 OK\r\na3 OK\r\n", b""],
                          chunk=1 << 16)
    client = ImapClient(server.endpoint, timeout=2)
    client.connect()
    client.login("u", "p")
    data = client.pipeline([("IMAP SELECT", b"SELECT INBOX"), ("IMAP FETCH", b"FETCH 1 BODY[]")], collect=True)
    assert data == b"* 3 EXISTS\r\n" + untagged and client.selected(data) == 3


def _read_as_rfc3501_says(stream: bytes, tag: bytes) -> tuple[bytes, bytes, int]:
    """(untagged, status, bytes used) of `tag`'s answer, read response by response: a line ending in {n} is
    followed by n bytes of literal and the rest of its line (RFC 3501 4.3, 7.5). The reference for the reader."""
    pos = 0
    while not stream.startswith(tag, pos):
        while True:
            eol = stream.index(b"\r\n", pos)
            marker = re.search(rb"\{(\d+)\}\Z", stream[pos:eol])
            pos = eol + 2 + (int(marker[1]) if marker else 0)
            if not marker:
                break
    eol = stream.index(b"\r\n", pos)
    return stream[:pos], stream[pos + len(tag) : eol], eol + 2


def _random_answer(rng: random.Random, tag: bytes) -> bytes:
    """Untagged lines and FETCH responses with literals (some large, some holding what looks like a tagged line
    or a literal marker, of this command or the others), then the tagged status."""
    def text(crlf: bool) -> bytes:
        pieces = [b"hi", b"{", b"}", b"{12}", b"a2 OK fake", b"a3 ", b"x" * rng.randint(0, 3000)]
        if crlf:
            pieces += [b"\r\n", b"{5}\r\n", b"{400}\r\n", b"\r\na2 OK not yet\r\n", b"\r\na3 NO nor this\r\n", b"\r\na4 "]
        return b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 5)))

    out = b""
    for _ in range(rng.randint(0, 5)):
        if rng.random() < 0.6:
            out += b"* 1 FETCH (UID 1"
            for _ in range(rng.randint(1, 4)):
                body = text(crlf=True)
                out += b" BODY[] {%d}\r\n" % len(body) + body
            out += b")\r\n"
        else:
            out += b"* " + text(crlf=False) + b" .\r\n"  # a line that does not end in a literal marker
    return out + tag + rng.choice([b" OK done", b" NO [CANNOT] no", b" BAD what"]) + b"\r\n"


@pytest.mark.parametrize("seed", range(8))
def test_imap_reader_reads_pipelined_answers_as_rfc3501_frames_them(seed):
    # Whatever the literals hold and however the bytes are split, each command ends at its own tagged line.
    rng = random.Random(seed)
    for _ in range(4):
        tags = [b"a2", b"a3", b"a4"]
        answers = [_random_answer(rng, tag) for tag in tags]
        stream, untagged, statuses, sizes = b"".join(answers), [], [], []
        for tag in tags:
            part, status, used = _read_as_rfc3501_says(stream, tag + b" ")
            untagged.append(part)
            statuses.append(status)
            sizes.append(used)
            stream = stream[used:]
        assert stream == b"" and sizes == [len(a) for a in answers]  # the generator makes what the reference reads
        server = CannedServer(b"* OK ready\r\n", [b"a1 OK in\r\n", b"".join(answers), b"", b"", b""],
                              chunk=rng.choice([1, 5, 300, 1 << 16]))
        seen = []
        client = ImapClient(server.endpoint, timeout=5, report=lambda *r, seen=seen: seen.append(r))
        client.connect()
        client.login("u", "p")
        collect = rng.random() < 0.5
        failed = next((s for s in statuses if not s.startswith(b"OK")), None)
        try:
            data = client.pipeline([(f"IMAP {t.decode()}", b"NOOP") for t in tags], collect=collect)
        except CommandFailed as exc:
            assert failed is not None and failed.decode() in str(exc)
        else:
            assert failed is None and data == (b"".join(untagged) if collect else b"")
        assert [(name, nbytes, exc is None) for name, _, nbytes, exc in seen[2:]] == [
            (f"IMAP {t.decode()}", size, status.startswith(b"OK")) for t, size, status in zip(tags, sizes, statuses)]
        client.close()


def test_pop3_reader_finds_the_terminator_and_one_header_across_splits():
    message = b"Subject: x\r\nX-Mailharness-Id: abc-1\r\n\r\n..dot-stuffed line\r\nbody\r\n"
    server = CannedServer(b"+OK ready\r\n", [b"+OK 2 messages\r\n" + message + b".\r\n", b"+OK\r\n.\r\n"])
    server.endpoint = Endpoint("pop3", "127.0.0.1", server.endpoint.port)
    seen = []
    client = Pop3Client(server.endpoint, report=lambda *r: seen.append(r))
    client.connect()
    assert client.retr(1, header=b"X-Mailharness-Id") == b"abc-1"
    assert client.uidl() == []
    assert seen[1][0] == "POP3 RETR" and seen[1][2] == len(b"+OK 2 messages\r\n" + message + b".\r\n")


class Pop3Maildrop:
    """A one-connection POP3 server on 127.0.0.1 over a few messages, noting which commands arrived together.

    ``arrivals`` groups the command lines by the read that brought them; every reply waits 20 ms, so a
    client that sends before the previous reply came is seen with two or more commands in one group."""

    def __init__(self, messages: list[bytes], pipelining: bool):
        self.messages, self.capabilities = messages, [b"TOP", b"UIDL", b"USER"] + ([b"PIPELINING"] if pipelining else [])
        self.arrivals: list[list[bytes]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = Endpoint("pop3", "127.0.0.1", self.listener.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _reply(self, line: bytes) -> bytes:
        verb, _, arg = line.partition(b" ")
        if verb == b"CAPA":
            return b"+OK\r\n" + b"".join(c + b"\r\n" for c in self.capabilities) + b".\r\n"
        if verb in (b"RETR", b"DELE") and not (arg.isdigit() and 1 <= int(arg) <= len(self.messages)):
            return b"-ERR no such message\r\n"
        if verb == b"RETR":
            return b"+OK message follows\r\n" + self.messages[int(arg) - 1] + b".\r\n"
        if verb == b"STAT":
            return b"+OK %d 100\r\n" % len(self.messages)
        return b"+OK\r\n"

    def _serve(self):
        conn, _ = self.listener.accept()
        with conn:
            conn.sendall(b"+OK ready\r\n")
            pending = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                pending += data
                lines, _, pending = pending.rpartition(b"\r\n")
                if not lines:
                    pending = lines + pending
                    continue
                self.arrivals.append(lines.split(b"\r\n"))
                for line in self.arrivals[-1]:
                    time.sleep(0.02)
                    conn.sendall(self._reply(line))
                    if line == b"QUIT":
                        return


def _poll_batch(count: int) -> list:
    return [command for n in range(1, count + 1) for command in (
        ("POP3 RETR", b"RETR %d" % n, True, b"X-Mailharness-Id"), ("POP3 DELE", b"DELE %d" % n, False, None))]


@pytest.mark.parametrize("pipelining", [True, False])
def test_pop3_batch_pipelines_only_when_capa_lists_pipelining(pipelining):
    messages = [b"X-Mailharness-Id: m%d\r\nSubject: x\r\n\r\n..stuffed\r\n" % n for n in (1, 2, 3)]
    server = Pop3Maildrop(messages, pipelining)
    seen = []
    client = Pop3Client(server.endpoint, timeout=5, report=lambda *r: seen.append(r))
    client.connect()
    assert (b"PIPELINING" in client.capa()) is pipelining is client.pipelining
    client.login("u", "p")
    replies = client.batch(_poll_batch(3))
    assert replies[0::2] == [b"m1", b"m2", b"m3"] and all(r.startswith(b"+OK") for r in replies[1::2])
    client.quit()
    sent = [line for group in server.arrivals for line in group]
    assert sent == [b"CAPA", b"USER u", b"PASS p", b"RETR 1", b"DELE 1", b"RETR 2", b"DELE 2", b"RETR 3", b"DELE 3", b"QUIT"]
    if pipelining:  # the poll's six commands in one write; nothing else sent before its reply came
        assert [len(group) for group in server.arrivals] == [1, 1, 1, 6, 1]
    else:
        assert all(len(group) == 1 for group in server.arrivals)
    # Each reply is its own request, with its own bytes, timed to its own end (later ones later, when pipelined).
    batch = seen[4:10]
    assert [name for name, *_ in batch] == ["POP3 RETR", "POP3 DELE"] * 3 and all(exc is None for *_, exc in batch)
    assert [nbytes for _, _, nbytes, _ in batch[0::2]] == [len(b"+OK message follows\r\n" + m + b".\r\n") for m in messages]
    assert [nbytes for _, _, nbytes, _ in batch[1::2]] == [len(b"+OK\r\n")] * 3
    times = [ms for _, ms, _, _ in batch]
    assert times == sorted(times) if pipelining else all(15 <= ms for ms in times)


def test_pop3_pipelined_batch_reads_every_reply_after_an_err_and_then_raises():
    server = Pop3Maildrop([b"X-Mailharness-Id: m1\r\n\r\nx\r\n"], pipelining=True)
    seen = []
    client = Pop3Client(server.endpoint, timeout=5, report=lambda *r: seen.append(r))
    client.connect()
    client.capa()
    with pytest.raises(CommandFailed, match="POP3 RETR: -ERR no such message"):
        client.batch(_poll_batch(2))  # message 2 does not exist
    assert [(name, exc is None) for name, _, _, exc in seen[2:]] == [
        ("POP3 RETR", True), ("POP3 DELE", True), ("POP3 RETR", False), ("POP3 DELE", False)]
    assert client.command("POP3 NOOP", b"NOOP") == b"+OK"  # still in step with the server
    client.close()


def test_a_batch_that_cannot_be_written_is_a_failed_request():
    server = Pop3Maildrop([], pipelining=True)
    seen = []
    client = Pop3Client(server.endpoint, timeout=5, report=lambda *r: seen.append(r))
    client.connect()
    client.capa()
    client.conn.sock.close()  # the write fails (as after a reset): the poll must not vanish from the statistics
    with pytest.raises(OSError):
        client.batch(_poll_batch(2))
    assert [(name, type(exc).__name__) for name, _, _, exc in seen[2:]] == [("POP3 RETR", "OSError")]
    imap_server = CannedServer(b"* OK ready\r\n", [])
    imap_seen = []
    imap = ImapClient(imap_server.endpoint, timeout=5, report=lambda *r: imap_seen.append(r))
    imap.connect()
    imap.conn.sock.close()
    with pytest.raises(OSError):
        imap.pipeline([("IMAP SELECT", b"SELECT INBOX"), ("IMAP LIST", b'LIST "" "*"')])
    assert [(name, type(exc).__name__) for name, _, _, exc in imap_seen[1:]] == [("IMAP SELECT", "OSError")]


def test_pop3_poll_is_pipelined_against_dovecot_and_commits_on_quit(dovecot):
    # Dovecot lists PIPELINING: RETR/DELE go in batches of MAX_PIPELINE, and QUIT commits every DELE.
    from harness.load.pop3_client import MAX_PIPELINE

    account = dovecot.target.accounts[-1]
    imap = ImapClient(dovecot.target.imap)
    imap.connect()
    imap.login(account.user, account.password)
    ids = [b"pipe-%d" % n for n in range(MAX_PIPELINE)]  # 2 writes of RETR/DELE pairs
    for message_id in ids:
        imap.append("INBOX", b"X-Mailharness-Id: %s\r\nSubject: pipelined\r\n\r\nbody\r\n" % message_id)
    imap.logout()
    seen = []
    client = Pop3Client(dovecot.target.pop3, timeout=10, report=lambda *r: seen.append(r))
    client.connect()
    assert b"PIPELINING" in client.capa() and client.pipelining
    client.login(account.user, account.password)
    count, _ = client.stat()
    replies = client.batch(_poll_batch(count))
    assert set(ids) <= set(replies[0::2])
    client.quit()
    assert all(exc is None for *_, exc in seen)
    assert sum(1 for name, *_ in seen if name == "POP3 RETR") == count
    check = Pop3Client(dovecot.target.pop3)
    check.connect()
    check.login(account.user, account.password)
    assert check.stat()[0] == 0
    check.quit()


def test_watchdog_turns_a_silent_server_into_a_timeout():
    server = CannedServer(b"* OK ready\r\n", [])  # greets, then never answers
    watchdog = Watchdog(interval=0.05)
    threading.Thread(target=watchdog.run, args=(time.sleep,), daemon=True).start()
    seen = []
    client = ImapClient(server.endpoint, timeout=0.2, watchdog=watchdog, report=lambda *r: seen.append(r))
    client.connect()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no answer within 0.2s"):
        client.command("IMAP NOOP", b"NOOP")
    assert 0.2 <= time.monotonic() - started < 4
    assert seen[-1][0] == "IMAP NOOP" and isinstance(seen[-1][3], TimeoutError)


def test_failed_tls_setup_leaves_no_socket_open(tmp_path, monkeypatch):
    opened = []
    open_tcp, wrap_socket = wire._open_tcp, ssl.SSLContext.wrap_socket
    monkeypatch.setattr(wire, "_open_tcp", lambda *a: opened.append(open_tcp(*a)) or opened[-1])
    monkeypatch.setattr(ssl.SSLContext, "wrap_socket", lambda *a, **k: opened.append(wrap_socket(*a, **k)) or opened[-1])

    plain = CannedServer(b"* OK not TLS\r\n", [])  # an imaps:// endpoint that speaks plain IMAP: the handshake fails
    with pytest.raises(ssl.SSLError):
        Connection(Endpoint("imaps", "127.0.0.1", plain.endpoint.port, tls=True, tls_verify=False), 5.0)
    bad_ca = CannedServer(b"", [])  # a CA file that is not there: fails after the TCP connect, before any TLS
    with pytest.raises(FileNotFoundError):
        Connection(Endpoint("imaps", "127.0.0.1", bad_ca.endpoint.port, tls=True), 5.0, str(tmp_path / "missing.pem"))
    assert len(opened) >= 2 and all(sock.fileno() == -1 for sock in opened)


def test_source_addresses_parse_ranges_and_lists_and_refuse_nonsense():
    from harness.load.source_addresses import SourceAddresses, parse_source_addresses

    assert parse_source_addresses("127.0.0.2-127.0.0.4", "x") == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert parse_source_addresses(["10.0.0.9", "10.0.0.7"], "x") == ["10.0.0.9", "10.0.0.7"]
    for bad in ("127.0.0.9-127.0.0.2", "localhost", "127.0.0.1-::1", ""):
        with pytest.raises(ConfigError, match="x: "):
            parse_source_addresses(bad, "x")
    cycle = SourceAddresses(["a", "b"])
    assert [cycle.next() for _ in range(3)] == ["a", "b", "a"] and SourceAddresses(None).next() is None


def test_load_connections_come_from_the_source_address_and_note_arrival_times():
    stamping = threading.Event()
    server = CannedServer(b"* OK ready\r\n", [b"a1 OK done\r\n"], chunk=1 << 16, greet_when=stamping)
    conn = Connection(server.endpoint, 2.0, source="127.0.0.3")
    assert conn.sock.getsockname()[0] == "127.0.0.3"
    assert conn.timestamp_arrivals()
    # Greet only once the kernel stamps: data queued before SO_TIMESTAMPNS was set, or before Linux's deferred
    # switch-on of stamping ran (the first stamping socket on the machine), carries no time. This flaked.
    wait_until_the_kernel_stamps()
    stamping.set()
    assert conn.read_line() == b"* OK ready"
    assert 0 < conn.arrived <= time.time()
    greeted = conn.arrived
    conn.send(b"a1 NOOP\r\n")
    assert conn.read_line() == b"a1 OK done"  # the first read after a send is stamped too
    assert greeted < conn.arrived <= time.time()
    conn.close()


def wait_until_the_kernel_stamps(within: float = 10.0) -> None:
    """Until a loopback TCP segment arrives with its SO_TIMESTAMPNS time (Linux enables stamping in a work item)."""
    option = getattr(socket, "SO_TIMESTAMPNS", 35)
    deadline = time.monotonic() + within
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname()) as client, listener.accept()[0] as peer:
            client.setsockopt(socket.SOL_SOCKET, option, 1)
            while time.monotonic() < deadline:
                peer.sendall(b"x")
                _, ancillary, _, _ = client.recvmsg(1, socket.CMSG_SPACE(16))
                if ancillary:
                    return
                time.sleep(0.01)
    raise AssertionError("the kernel never stamped a loopback segment")


def test_bench_reads_imaptests_totals_and_its_user_template():
    from harness.load.bench_command import imaptest_totals, imaptest_users

    output = ("Logi List Fetc \n100% 100% 100% \n  31  139  133  20/ 20\n\nTotals:\nLogi List Fetc \n"
              "100% 100% 100% \n 119  938  928 \n")
    assert imaptest_totals(output) == {"Logi": 119, "List": 938, "Fetc": 928}
    assert imaptest_totals("Fatal: Missing username\n") is None
    assert imaptest_users([Account("user1", "pw"), Account("user2", "pw")]) == ("user%d", "pw")
    with pytest.raises(ConfigError, match="share a password"):
        imaptest_users([Account("user1", "pw"), Account("user2", "other")])
    assert cli.main(["bench", "--compare-imaptest", "/nonexistent/imaptest"]) == 2


def test_bench_comparison_pairs_rounds_back_to_back_in_abba_order(monkeypatch, tmp_path):
    # No imaptest here: the two runners are replaced by ones that note the order and give known figures.
    import argparse

    from harness.load import bench_command

    order, figures = [], iter([1000, 500, 600, 1200, 900, 600, 800, 800, 700, 350])
    def ours(job, target, dovecot):
        order.append("ours")
        return {"commands": 10, "commands_per_cpu_second": next(figures), "per_name": {}, "failures": 0}
    def theirs(args, target, users, tmp, dovecot):
        order.append("imaptest")
        return {"commands_per_cpu_second": next(figures), "commands_per_second": 1.0, "errors": 0}
    monkeypatch.setattr(bench_command, "_run_generator", ours)
    monkeypatch.setattr(bench_command, "_run_imaptest", theirs)
    args = argparse.Namespace(compare_imaptest=Path("imaptest"), no_pipelining=False, source_address=None, messages=1,
                              spawn_rate=None, warmup=1, duration=1)
    target = argparse.Namespace(name="t")
    result = bench_command._measure(args, "stress", 2, 5, tmp_path, tmp_path, target, None, tmp_path)
    assert order == ["ours", "imaptest", "imaptest", "ours"] * 2 + ["ours", "imaptest"]
    assert result["ratios"] == [2.0, 2.0, 1.5, 1.0, 2.0]  # each pair's own two runs, whichever went first
    assert result["ratio"] == 2.0 and result["ratio_range"] == [1.0, 2.0] and result["ratio_quartiles"] == [1.5, 2.0]


@pytest.mark.slow
@pytest.mark.parametrize("pipelining", [True, False])
def test_bench_runs_the_webmail_mix_without_failures(pipelining, capsys):
    # Sessions cycle (LOGOUT and LOGIN every 10 views); pipelined, a later session's first view goes in one write
    # with the count its user saw in the last one, so a stale range or a lost answer would show as failures.
    args = ["bench", "--users", "3", "--duration", "3", "--warmup", "1", "--messages", "20", "--json"]
    assert cli.main(args + ([] if pipelining else ["--no-pipelining"])) == 0
    result = json.loads(capsys.readouterr().out)
    counts = {name: v["requests"] for name, v in result["per_name"].items()}
    assert result["failures"] == 0 and result["pipelining"] is pipelining
    for name in ("IMAP LIST", "IMAP SELECT", "IMAP FETCH headers", "IMAP FETCH body", "IMAP STORE seen"):
        assert counts.get(name, 0) > 10, counts
    assert counts.get("IMAP LOGIN", 0) >= 2 and result["commands_per_cpu_second"] > 0


def test_cpu_sampler_sums_a_sessions_processes_and_names_the_busier_side(tmp_path):
    burner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"],
                              start_new_session=True)
    with CpuSampler(tmp_path, burner.pid, interval=0.3):
        burner.wait()
    rows = read_cpu_csv(tmp_path)
    assert rows and all(int(r["generator_processes"]) <= 1 for r in rows)
    assert max(float(r["generator_busiest_core"]) for r in rows) > 0.05  # it burnt CPU (a busy machine gives it less)
    assert all(r["server_cores"] == "" for r in rows)
    saturated = summarize([{"generator_cores": "1.9", "generator_busiest_core": "0.97", "server_cores": "0.4"}] * 3)
    assert saturated.verdict().startswith("the generator was saturated")
    all_cores = str(os.cpu_count())
    server_bound = summarize([{"generator_cores": "0.2", "generator_busiest_core": "0.1", "server_cores": all_cores}] * 3)
    assert server_bound.verdict().startswith("the server was the bottleneck")
    crowded = summarize([{"generator_cores": "0.2", "generator_busiest_core": "0.2", "server_cores": "0.4",
                          "machine_cores": all_cores}] * 3)
    assert crowded.verdict().startswith("the machine was") and "other processes" in crowded.verdict()
