"""Hostile servers (issue 10 item 5): each fails its own tests within a timeout and bounded memory.

The servers are tests/hostile_server.py. Wall times are not asserted (they belong in benchmarks);
what is asserted is the mechanism that bounds them: a hung protocol stops being waited for,
caps end a response that never ends, a deadline ends seeding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile_server import HostileServer

from harness.load.imap_client import ImapClient
from harness.load.pop3_client import Pop3Client
from harness.load.wire import MAX_BUFFERED, ResponseTooLarge, WireError
from harness.targets.target_file import Endpoint

ROOT = Path(__file__).resolve().parent.parent


def mailharness(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)


@pytest.mark.slow
def test_a_hung_pop3_server_fails_the_rest_of_its_tests_at_once(target, tmp_path):
    with HostileServer("hang-after-login") as hung:
        accounts = "".join(f"  - {{user: {a.user}, password: '{a.password}'}}\n" for a in target.accounts)
        path = tmp_path / "t.yaml"
        path.write_text(f"name: hung pop3\nimap: {target.imap.url}\npop3: pop3://127.0.0.1:{hung.pop3_port}\n"
                        f"accounts:\n{accounts}disposable: true\ntimeout: 1\n")
        proc = mailharness("run", "--target", str(path), "-k", "pop3.dele", "--report-dir", str(tmp_path / "r"), cwd=ROOT)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    tests = json.loads((tmp_path / "r" / "results.json").read_text())["tests"]
    stopped = [t for t in tests if "target stopped answering" in (t.get("message") or "")]
    assert len(tests) > 5 and len(stopped) >= len(tests) - 3, [t.get("message") for t in tests]
    assert all(t["outcome"] == "failed" for t in tests)


def _endpoint(proto: str, port: int) -> Endpoint:
    return Endpoint(proto, "127.0.0.1", port)


@pytest.mark.parametrize("mode", ["huge-literal", "endless-lines"])
def test_lean_imap_client_caps_an_endless_response(mode):
    with HostileServer(mode) as server:
        client = ImapClient(_endpoint("imap", server.imap_port), timeout=30)
        client.connect()
        client.login("u1", "secret-1")
        started = time.monotonic()
        with pytest.raises(WireError) as info:
            client.command("IMAP FETCH", b"FETCH 1 BODY[]", collect=True)
        client.close()
    assert isinstance(info.value, ResponseTooLarge), info.value
    assert time.monotonic() - started < 30  # the cap ended it, not the timeout
    assert any(cap in str(info.value) for cap in (f"{MAX_BUFFERED // 2**20} MB", "line longer", "a literal of"))


def test_lean_pop3_client_caps_an_endless_body():
    with HostileServer("huge-literal") as server:
        client = Pop3Client(_endpoint("pop3", server.pop3_port), timeout=30)
        client.connect()
        client.login("u1", "secret-1")
        with pytest.raises(ResponseTooLarge):
            client.retr(1)
        client.close()


def test_strict_imap_session_caps_endless_untagged_responses_and_its_transcript(monkeypatch):
    from harness.sessions import IMAPSession, imap
    from harness.sessions.errors import ResponseTooLarge as SessionResponseTooLarge
    from harness.sessions.transcript import MAX_KEPT_TEXT, TAIL_ENTRIES, Transcript

    monkeypatch.setattr(imap, "MAX_UNTAGGED", 20_000)  # the mechanism, at a size this server reaches quickly
    with HostileServer("endless-lines") as server:
        transcript = Transcript()
        session = IMAPSession("127.0.0.1", server.imap_port, timeout=120, transcript=transcript)
        session.login("u1", "secret-1")
        with pytest.raises(SessionResponseTooLarge, match="20001 untagged responses"):
            session.command("NOOP")  # 20001 lines: the cap ended it, long before the timeout
    entries = transcript.entries
    gap = [e for e in entries if e.text.startswith("transcript cap:")]
    assert len(gap) == 1 and "entries" in gap[0].text, [e.text for e in entries[-3:]]
    assert len(entries) < 20_000 and sum(len(e.text) for e in entries) < MAX_KEPT_TEXT + TAIL_ENTRIES * 2048
    assert "session abandoned" in entries[-1].text  # the end, where it failed, is kept


# endless lines end at the deadline or at the line cap, whichever a machine's speed reaches first: both bound it
@pytest.mark.parametrize("mode, said", [("endless-lines", "no complete answer within 2 s|more than 100000 response lines"),
                                        ("huge-literal", "a literal of 2000000000 bytes")])
def test_the_set_up_client_gives_up_on_a_flood(tmp_path, mode, said):
    """imaplib alone waits while lines keep coming and reads any literal into memory (1.6 GB in 20 s)."""
    from imapclient.exceptions import IMAPClientError

    from harness.engine.accounts import admin_client
    from harness.targets.target_file import load_target

    with HostileServer(mode) as server:
        path = tmp_path / "t.yaml"
        path.write_text(server.target_yaml())
        target = load_target(path)
        with admin_client(target, target.accounts[0], timeout=2) as client:
            started = time.monotonic()
            with pytest.raises(IMAPClientError, match=said):
                client.list_folders()
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("line", [b"250-x\r\n", b"250-" + b"x" * 8000 + b"\r\n"], ids=["many-lines", "long-lines"])
def test_delivery_gives_up_on_an_endless_lmtp_reply(line):
    """smtplib reads a reply's lines as long as they come: a set-up delivery (POP3-only targets) or a `deliver:`
    step against such a server never ended."""
    import socket
    import threading

    from harness.sessions.errors import SessionError
    from harness.sessions.lmtp import deliver

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"220 hostile LMTP\r\n")
            conn.recv(1024)  # LHLO
            try:
                while not stop.is_set():
                    conn.sendall(line * 64)
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    endpoint = Endpoint("lmtp", "127.0.0.1", listener.getsockname()[1])
    started = time.monotonic()
    try:
        with pytest.raises(SessionError, match="more than 1000 lines|no complete reply within"):
            deliver(endpoint, "u1@localhost", b"Subject: x\r\n\r\nx\r\n", timeout=2)
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - started < 30


def test_strict_pop3_session_reads_an_endless_body_into_bounded_memory(monkeypatch):
    import tracemalloc

    from harness.sessions import POP3Session, pop3
    from harness.sessions.errors import ResponseTooLarge as SessionResponseTooLarge
    from harness.sessions.transcript import Transcript

    cap = 2 << 20
    monkeypatch.setattr(pop3, "MAX_RESPONSE", cap)
    with HostileServer("huge-literal") as server:  # POP3: "+OK" and 15-byte lines without the final "."
        session = POP3Session("127.0.0.1", server.pop3_port, timeout=120, transcript=Transcript())
        session.login("u1", "secret-1")
        tracemalloc.start()
        try:
            with pytest.raises(SessionResponseTooLarge, match="exceeds 2 MiB"):
                session.command("RETR 1")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 4 * cap, peak  # the body's bytes as sent and unstuffed: not an object per line (ten times more)


def test_lean_imap_client_under_a_watchdog_ends_a_flood_at_its_deadline():
    """Inside Locust a watchdog ends a command by shutting its socket down, which wakes a read that waits but not
    one that never has to: a server that floods without end kept `--run-time 10s` going for a minute."""
    from harness.load.wire import Watchdog

    with HostileServer("endless-lines") as server:
        client = ImapClient(_endpoint("imap", server.imap_port), timeout=1, watchdog=Watchdog())  # never run here
        client.connect()
        client.login("u1", "secret-1")
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            client.command("IMAP NOOP", b"NOOP")  # counting mode: complete lines are passed, the buffer stays small
        client.close()
    assert time.monotonic() - started < 30  # ended by the command's deadline (1 s), with slack for a busy machine


def test_lean_imap_client_refuses_a_two_gigabyte_literal_at_once():
    from harness.load.wire import MAX_LITERAL

    with HostileServer("huge-literal") as server:
        client = ImapClient(_endpoint("imap", server.imap_port), timeout=30)
        client.connect()
        client.login("u1", "secret-1")
        started = time.monotonic()
        with pytest.raises(ResponseTooLarge, match="2000000000 bytes"):
            client.command("IMAP FETCH", b"FETCH 1 BODY[]")  # counted, not collected: it would be read, not held
        client.close()
    assert MAX_LITERAL < 2_000_000_000 and time.monotonic() - started < 25  # not read for the whole timeout


def test_lean_pop3_client_counts_an_unreadable_stat_as_a_failed_request():
    from harness.load.wire import MalformedResponse

    reported = []
    with HostileServer("huge-literal") as server:  # answers STAT with "+OK here it comes" (and a body)
        client = Pop3Client(_endpoint("pop3", server.pop3_port), timeout=5,
                            report=lambda name, ms, size, exc: reported.append((name, exc)))
        client.connect()
        client.login("u1", "secret-1")
        with pytest.raises(MalformedResponse):  # a WireError, which the users catch: not a ValueError traceback
            client.stat()
        client.close()
    assert reported[-1][0] == "POP3 STAT" and isinstance(reported[-1][1], MalformedResponse), reported


@pytest.mark.slow
def test_load_against_a_server_that_never_greets_counts_its_connects_as_errors(tmp_path):
    """The run (4 s) is shorter than a command's timeout (6 s): every connect is still waiting when it ends."""
    scenario = tmp_path / "s.yaml"
    scenario.write_text("description: connects only\nusers:\n  pop3_keep: {weight: 1, think_time: {min: 1, max: 2}}\n"
                        "  imap_webmail: {weight: 1, think_time: {min: 1, max: 2}}\nmailbox: {messages: 0}\n"
                        "timeout: 6\nmax_error_rate: 100%\n")
    with HostileServer("silent") as server:
        target = tmp_path / "t.yaml"
        target.write_text(server.target_yaml())
        proc = mailharness("load", "--target", str(target), "--scenario", str(scenario), "--users", "2",
                           "--spawn-rate", "2", "--run-time", "4s", "--stop-timeout", "1", "--quiet",
                           "--report-dir", str(tmp_path / "r"), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    [rate] = [v for v in run["thresholds"] if "errors" in v["rule"]]
    assert rate["observed"] == "100%", (rate, run["request_counts"])
    assert sum(run["request_counts"].values()) == 2, run["request_counts"]  # one connect per user, each failed
    failures = (tmp_path / "r" / "locust_failures.csv").read_text()
    assert "still unanswered when the run ended" in failures, failures


@pytest.mark.parametrize("mode", ["slowloris", "garbage"])
def test_lean_client_greeting_ends_within_its_timeout(mode):
    with HostileServer(mode) as server:
        client = Pop3Client(_endpoint("pop3", server.pop3_port), timeout=1)
        started = time.monotonic()
        with pytest.raises((WireError, TimeoutError, OSError)):
            client.connect()
        client.close()
    assert time.monotonic() - started < 10  # a byte every half second must not renew the timeout forever


@pytest.mark.slow
def test_seed_ends_at_its_deadline(tmp_path):
    with HostileServer("slowloris") as server:
        path = tmp_path / "t.yaml"
        path.write_text(server.target_yaml(timeout=30, pop3=False))
        started = time.monotonic()
        proc = mailharness("seed", "--target", str(path), "--messages", "2", "--deadline", "3", cwd=tmp_path, timeout=120)
        took = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    assert "deadline" in proc.stderr, proc.stderr
    assert took < 60, took  # generous for a busy machine: without the deadline it waits 30 s per connection


CATASTROPHIC = "re:NO .*: (a|aa)+c"  # exponential in the number of a's: the line below never finishes


def test_a_catastrophic_pattern_gives_up_at_the_deadline_naming_itself():
    from harness.engine.patterns import MATCH_TIMEOUTS, Pattern, PatternTimeout, match_deadline

    assert MATCH_TIMEOUTS, "the regex library is a dependency (pyproject.toml)"
    started = time.monotonic()
    with pytest.raises(PatternTimeout) as info, match_deadline(0.2):
        Pattern(CATASTROPHIC).match("NO Mailbox doesn't exist: " + "a" * 80, {})
    assert CATASTROPHIC in str(info.value)
    assert time.monotonic() - started < 60  # the regex library measures CPU time: slack for a busy machine


@pytest.mark.slow
def test_a_catastrophic_pattern_in_a_suite_fails_its_step(target_file, tmp_path):
    suite = tmp_path / "slow-regex.yaml"
    suite.write_text("suite: a regex that backtracks forever\ndefaults: {area: syntax, rfc: [\"RFC3501 §6.3.1\"], sessions: {a: imap}}\ntests:\n"
                     "  - id: local.regex.catastrophic\n    title: t\n    timeout: 1\n    steps:\n"
                     f"      - a: SELECT ${{mbox:{'a' * 60}}}\n        expect: \"{CATASTROPHIC}\"\n")
    proc = mailharness("run", "--target", str(target_file), "--suite", str(suite), "--report-dir", str(tmp_path / "r"),
                       cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    [test] = json.loads((tmp_path / "r" / "results.json").read_text())["tests"]
    assert test["outcome"] == "failed" and "did not finish matching" in test["message"] and CATASTROPHIC in test["message"]


@pytest.mark.slow
def test_seed_with_refused_deliveries_exits_1_with_the_count(tmp_path):
    from harness.targets.managed_dovecot import ManagedDovecot

    with ManagedDovecot(accounts=1, quota_mb=1) as dovecot:
        path = tmp_path / "t.yaml"
        dovecot.target.dump(path)
        proc = mailharness("seed", "--target", str(path), "--messages", "6", "--size-mix", "large=100",
                          # one connection: parallel deliveries can each pass the quota check before any is counted
                          "--connections", "1", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # a result (the server said no), not a usage error
    assert "deliveries were refused" in proc.stderr and " of 6 " in proc.stderr, proc.stderr
