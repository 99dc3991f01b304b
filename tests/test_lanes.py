"""Lanes (harness/engine/lanes.py): a process runs the next tests of its queue at once, on their own
accounts, and reports them one by one in order; against a server of the user's, one at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness.engine.account_pool import AccountPool
from harness.targets.target_file import Account

ROOT = Path(__file__).resolve().parent.parent
MAILHARNESS = Path(sys.executable).parent / "mailharness"

# Each test holds its POP3 session open for a while: run one at a time they cannot overlap, on lanes they must.
WAIT = """\
  - id: t.wait-{n}
    title: waits {n}
    area: session
    rfc: [RFC1939 §5]
    sessions: {{p: pop3}}
    steps: [{{p: STAT}}, {{sleep: 0.6}}, {{p: NOOP}}]
"""
FAILS = """\
  - id: t.fails
    title: fails
    area: session
    rfc: [RFC1939 §5]
    sessions: {p: pop3}
    steps: [{p: NOOP, expect: "-ERR*"}]
"""


def _suite(*tests: str) -> str:
    return "suite: lanes\ntests:\n" + "".join(tests)


SUITE = _suite(*(WAIT.format(n=n) for n in range(4)), FAILS)

# Records, for each test, the thread and the interval its steps ran in, and the accounts it used.
PROBE = '''
import json, os, threading, time
from harness.engine import plugin

_original = plugin.SuiteItem._timed_runtest

def _recorded(self):
    started = time.monotonic()
    try:
        return _original(self)
    finally:
        with open(os.environ["LANES_LOG"], "a") as log:
            log.write(json.dumps({"id": self.spec.id, "thread": threading.current_thread().name, "pid": os.getpid(),
                                  "start": started, "end": time.monotonic(),
                                  "accounts": [a.user for a in self.accounts]}) + "\\n")

plugin.SuiteItem._timed_runtest = _recorded
'''


def _run(tmp_path: Path, *args: str, suite_text: str = SUITE, workers: str = "0") -> tuple[subprocess.CompletedProcess, list[dict], dict]:
    suite = tmp_path / "lanes.yaml"
    suite.write_text(suite_text)
    (tmp_path / "lanes_probe.py").write_text(PROBE)
    log = tmp_path / "lanes.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "LANES_LOG": str(log)}
    proc = subprocess.run([str(MAILHARNESS), "run", "--suite", str(suite), "-n", workers,
                           "--report-dir", str(tmp_path / "reports"), "--pytest-arg=-planes_probe", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    results = json.loads((tmp_path / "reports" / "results.json").read_text())
    return proc, runs, results


def _most_at_once(runs: list[dict]) -> int:
    """The most tests one process had running at the same moment."""
    return max(sum(1 for o in runs if o["pid"] == r["pid"] and o["start"] <= r["start"] < o["end"]) for r in runs)


def _overlapping(runs: list[dict]) -> int:
    waits = sorted((r for r in runs if r["id"].startswith("t.wait")), key=lambda r: r["start"])
    return sum(1 for a, b in zip(waits, waits[1:]) if b["start"] < a["end"])


def test_a_managed_server_gets_lanes_and_verdicts_stay_in_order(tmp_path):
    proc, runs, results = _run(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # t.fails fails, nothing else
    assert _overlapping(runs) >= 2, runs  # the waits ran at once ...
    assert {r["thread"] for r in runs} != {"MainThread"}
    outcomes = {t["id"]: t["outcome"] for t in results["tests"]}
    assert outcomes == {**{f"t.wait-{n}": "passed" for n in range(4)}, "t.fails": "failed"}
    assert [t["id"] for t in results["tests"]] == [*(f"t.wait-{n}" for n in range(4)), "t.fails"]  # ... reported in order
    held = {}  # tests that ran at the same time never shared an account
    for r in runs:
        for other in runs:
            if other is not r and other["start"] < r["end"] and r["start"] < other["end"]:
                held.setdefault(r["id"], set()).update(set(r["accounts"]) & set(other["accounts"]))
    assert not any(held.values()), held


def test_a_server_of_the_users_runs_one_test_at_a_time(tmp_path, target_file):
    proc, runs, results = _run(tmp_path, "--target", str(target_file))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert _overlapping(runs) == 0 and {r["thread"] for r in runs} == {"MainThread"}, runs
    assert {t["id"]: t["outcome"] for t in results["tests"]}["t.fails"] == "failed"


def test_each_xdist_worker_is_given_enough_tests_for_its_lanes(tmp_path):
    """xdist's own scheduling leaves a worker 2 tests while its tests take 0.1 s or more: 2 lanes at most."""
    proc, runs, results = _run(tmp_path, "--lanes", "4", suite_text=_suite(*(WAIT.format(n=n) for n in range(12))), workers="2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(runs) == 12 and len({r["pid"] for r in runs}) == 2
    assert _most_at_once(runs) >= 3, runs


def test_lanes_1_turns_them_off_on_a_managed_server(tmp_path):
    _, runs, _ = _run(tmp_path, "--lanes", "1")
    assert _overlapping(runs) == 0 and {r["thread"] for r in runs} == {"MainThread"}, runs


def test_exitfirst_reports_no_test_after_the_failure(tmp_path):
    """-x with lanes: the tests after the failure may have started, but none is reported, and the run ends."""
    suite = tmp_path / "lanes.yaml"
    suite.write_text(_suite(FAILS, *(WAIT.format(n=n) for n in range(4))))
    proc = subprocess.run([str(MAILHARNESS), "run", "--suite", str(suite), "-n", "0", "--pytest-arg=-x",
                           "--report-dir", str(tmp_path / "reports")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "INCOMPLETE: The run stopped early: 1 of 5 tests ran" in proc.stdout, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "reports" / "results.json").read_text())
    assert [(t["id"], t["outcome"]) for t in results["tests"]] == [("t.fails", "failed")]


@pytest.mark.parametrize("block", [False, True])
def test_an_account_is_not_handed_out_while_a_running_test_holds_it(block):
    pool = AccountPool([Account(f"u{n}", "pw") for n in range(3)])
    first = pool.claim(2, block=False)
    assert [a.user for a in first] == ["u0", "u1"]
    if not block:
        assert pool.claim(2, block=False) is None  # u2 is free, u0 is not
        pool.release(first)
        assert [a.user for a in pool.claim(2, block=False)] == ["u2", "u0"]  # the same turn as before, not skipped
        return
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.claim(2, block=True)))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and not got  # it waits for u0 ...
    pool.release(first)
    waiter.join(5)
    assert [a.user for a in got[0]] == ["u2", "u0"]  # ... and gets it once the test holding it ends
