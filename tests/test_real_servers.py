"""The full suites against each managed server other than the embedded Dovecot, as a user runs them.

`mailharness run --server NAME` must exit 0: every test passes, warns, is skipped, or fails exactly
as profiles/NAME.yaml expects. A verdict that changes on any of these servers (a new failure, an
error, or an expected failure that now passes) fails CI. (The whole of suites/ against the embedded
Dovecot runs in test_suites_catch_faults.py, behind a transparent proxy.)
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 600  # seconds for one full run (Mailutils: ~3 min alone, ~6 min on a busy 2-core machine)

# One entry per managed server whose suites run in CI (see harness/targets/managed.py).
SERVERS = ["cyrus", "mailutils"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(RUN_TIMEOUT + 60)]


@pytest.mark.parametrize("server", SERVERS)
def test_full_suites_match_the_servers_profile(server, tmp_path):
    report = tmp_path / "report"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--server", server, "-n", "4", "--accounts", "12", "--report-dir", str(report)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )
    output = f"exit {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    results = json.loads((report / "results.json").read_text())
    counts = collections.Counter(t["outcome"] for t in results["tests"])
    assert results["profile"]["name"] == server, output
    unexpected = {t["id"]: t["message"][:300] for t in results["tests"] if t["outcome"] in ("failed", "error", "xpassed")}
    assert not unexpected, f"{dict(counts)}\n" + "\n".join(f"{k}: {v}" for k, v in unexpected.items())
    assert proc.returncode == 0, output
    # Most of the suites really ran (passed, or failed as the profile expects), and a good part passed:
    # Mailutils' profile expects about a third of the tests to fail (mbox bookkeeping, stale views, IDLE).
    ran = counts["passed"] + counts["xfailed"] + counts["warning"] + counts["behaviour"]
    assert ran > len(results["tests"]) // 2 and counts["passed"] > len(results["tests"]) // 3, dict(counts)
