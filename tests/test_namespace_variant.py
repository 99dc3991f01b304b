"""The suites hold on a server shaped unlike the embedded default: personal namespace "INBOX." with
"." (as Cyrus has it), and no special-use folders at all (as Dovecot with Debian's defaults): the
managed server "dovecot-inbox-ns" (harness/targets/managed_dovecot.py).

The same Dovecot, configured that way, must give the verdicts the standard embedded target gives
(tests/test_suites_catch_faults.py runs the whole of suites/ against that one): nothing fails, no
set-up error; only the tests that check a special-use attribute itself are skipped, saying why.
Before the engine learnt NAMESPACE and SPECIAL-USE, 17 tests failed and 20 had set-up errors here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the areas that name folders (commands, LIST patterns, set-up, special-use), and the cross-protocol ones
AREAS = "folders or sent or quota or append or uid or deletion or cross"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_inbox_prefixed_namespace_without_special_use_folders(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "-n", "2", "--server", "dovecot-inbox-ns", "--accounts", "6",
         "-k", AREAS, "--report-dir", str(tmp_path / "r")],
        capture_output=True, text=True, cwd=ROOT, timeout=540,
    )
    out = proc.stdout + proc.stderr
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["target"]["imap_namespace"]["prefix"] == "INBOX.", results["target"]
    assert results["target"]["imap_namespace"]["delimiter"] == "."
    by_outcome: dict[str, list] = {}
    for t in results["tests"]:
        by_outcome.setdefault(t["outcome"], []).append(t)
    bad = [f"{t['id']}: {t.get('message', '')[:300]}" for o in ("failed", "error", "xpassed") for t in by_outcome.get(o, [])]
    assert not bad, "\n".join(bad) + "\n" + out[-3000:]
    assert proc.returncode == 0, out[-3000:]
    assert len(by_outcome["passed"]) > 60
    for t in by_outcome.get("skipped", []):  # capabilities this Dovecot lacks, or no folder with the attribute
        assert "does not advertise" in t["message"] or "no folder marked" in t["message"], f"{t['id']}: {t['message']}"
    assert any("SPECIAL-USE" in t["message"] for t in by_outcome["skipped"])
    # the folders really lived under INBOX.: the transcripts show the mapped names on the wire
    transcripts = " ".join(t.get("transcript", "") for t in by_outcome["passed"])
    assert "CREATE INBOX.Projects" in transcripts
    assert "INBOX.Mailharness-Sent" in transcripts  # the stand-in for the missing \Sent folder
