"""Requirement levels (issue 9 item 6): a failed MUST fails, a failed SHOULD warns, a MAY is behaviour.

Run against the real embedded Dovecot; each check is made to not hold with an expectation Dovecot
cannot meet (NOOP answers OK, never NO), so the outcome depends only on the level.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.engine.model import load_suite
from harness.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

SUITE = """
    defaults: {area: session, rfc: [RFC3501 §6.1.2], sessions: {a: imap}}
    tests:
      - id: lv.should-step
        title: one SHOULD step inside a MUST test; the MUST steps after it still run
        steps:
          - a: NOOP
            expect: NO
            level: SHOULD
            why: a made-up SHOULD
          - a: NOOP
      - id: lv.must-after-should
        title: a MUST check after a SHOULD one still fails the test
        steps:
          - {a: NOOP, expect: NO, level: SHOULD}
          - {a: NOOP, expect: BAD}
      - id: lv.may
        title: a MAY test whose check does not hold is behaviour
        level: MAY
        steps:
          - {a: NOOP, expect: NO}
      - id: lv.blocked
        title: a value only the SHOULD check would have captured
        steps:
          - a: CAPABILITY
            untagged: ["* CAPABILITY $caps NO-SUCH-CAPABILITY"]
            level: SHOULD
          - a: NOOP $caps
      - id: lv.must-override
        title: a SHOULD test with a MUST step
        level: SHOULD
        steps:
          - {a: NOOP, expect: NO, level: MUST}
      - id: lv.holds
        title: a SHOULD test whose checks hold passes
        level: SHOULD
        steps:
          - a: NOOP
"""


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def write(path: Path, text: str) -> Path:
    text = textwrap.dedent(text).lstrip()
    if text.startswith(("tests:", "defaults:")):  # a suite: `suite:` marks it (last, so lines stay)
        text = text.rstrip("\n") + "\nsuite: levels\n"
    path.write_text(text)
    return path


def results_of(report: Path) -> dict:
    return json.loads((report / "results.json").read_text())


def test_levels_parse_with_test_default_and_step_override(tmp_path):
    specs = {s.id: s for s in load_suite(write(tmp_path / "s.yaml", SUITE))}
    assert specs["lv.should-step"].level == "MUST"
    assert specs["lv.should-step"].level_of(specs["lv.should-step"].steps[0]) == "SHOULD"
    assert specs["lv.should-step"].level_of(specs["lv.should-step"].steps[1]) == "MUST"
    assert specs["lv.must-override"].level == "SHOULD"
    assert specs["lv.must-override"].level_of(specs["lv.must-override"].steps[0]) == "MUST"
    defaults = write(tmp_path / "d.yaml", """
        defaults: {area: session, rfc: [RFC3501 §6.1.2], sessions: {a: imap}, level: SHOULD}
        tests: [{id: d.one, title: x, steps: [{a: NOOP}]}]
        """)
    assert load_suite(defaults)[0].level == "SHOULD"


@pytest.mark.parametrize("text, line, fragment", [
    ("""
        tests:
          - id: t.one
            title: x
            area: session
            rfc: [RFC3501 §6.1.2]
            sessions: {a: imap}
            level: should
            steps: [{a: NOOP}]
        """, ":7:", "level"),
    ("""
        tests:
          - id: t.one
            title: x
            area: session
            rfc: [RFC3501 §6.1.2]
            sessions: {a: imap}
            steps:
              - a: NOOP
              - sleep: 1
                level: SHOULD
        """, ":10:", "level: a sleep step does not check this"),
])
def test_a_bad_level_names_file_and_line(tmp_path, text, line, fragment):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    assert f"{path}{line}" in str(info.value) and fragment in str(info.value), str(info.value)


def test_should_warns_may_is_behaviour_must_fails(tmp_path, target_file):
    suite = write(tmp_path / "s.yaml", SUITE)
    proc = run_cli("run", "--target", str(target_file), "--suite", str(suite), "-k", "not lv.must", "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stdout + proc.stderr  # warnings and behaviour do not fail the run
    results = results_of(tmp_path / "r")
    by_id = {t["id"]: t for t in results["tests"]}
    assert {i: t["outcome"] for i, t in by_id.items()} == {
        "lv.should-step": "warning", "lv.may": "behaviour", "lv.blocked": "warning", "lv.holds": "passed"}
    assert results["verdict"] == "pass"
    assert results["summary"]["warning"] == 2 and results["summary"]["behaviour"] == 1
    warned = by_id["lv.should-step"]
    assert warned["failure"]["level"] == "SHOULD" and warned["failure"]["expected"] == "`NO`"
    assert warned["message"].startswith("SHOULD not met: step 1 `a: NOOP`")
    assert "a made-up SHOULD" in warned["message"]
    # the MUST step after the SHOULD one ran
    assert warned["transcript"].count("C: A0003 NOOP") == 1
    assert "step 2 did not run: $caps is not set" in by_id["lv.blocked"]["message"]
    assert "Warnings (2): SHOULD checks that did not hold" in proc.stdout
    assert "Optional behaviour (1): MAY checks" in proc.stdout
    assert "PASS: 1 passed, 2 warnings, 1 optional behaviour" in proc.stdout
    html = (tmp_path / "r" / "report.html").read_text()
    assert 'id="warnings"' in html and 'id="behaviours"' in html and "warning (SHOULD)" in html
    junit = ET.parse(tmp_path / "r" / "junit.xml").getroot()
    assert junit.find(".//failure") is None
    assert {p.get("value") for p in junit.iter("property") if p.get("name") == "mailharness_outcome"} == {"warning", "behaviour"}


def test_strict_makes_warnings_fail_but_not_behaviour(tmp_path, target_file):
    suite = write(tmp_path / "s.yaml", SUITE)
    proc = run_cli("run", "--target", str(target_file), "--suite", str(suite), "-k", "should-step or may",
                   "--strict", "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    results = results_of(tmp_path / "r")
    assert {t["id"]: t["outcome"] for t in results["tests"]} == {"lv.should-step": "warning", "lv.may": "behaviour"}
    assert results["verdict"] == "fail" and results["run"]["strict"] is True
    assert results["verdict_reason"] == "1 warning (--strict); 2 of 2 tests ran."
    junit = ET.parse(tmp_path / "r" / "junit.xml").getroot()
    assert len(junit.findall(".//failure")) == 1  # CI sees the warning that fails the run
    proc = run_cli("run", "--target", str(target_file), "--suite", str(suite), "-k", "may", "--strict",
                   "--report-dir", str(tmp_path / "r2"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_must_failures_stay_failures_whatever_came_before(tmp_path, target_file):
    suite = write(tmp_path / "s.yaml", SUITE)
    proc = run_cli("run", "--target", str(target_file), "--suite", str(suite), "-k", "lv.must", "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    by_id = {t["id"]: t for t in results_of(tmp_path / "r")["tests"]}
    assert by_id["lv.must-after-should"]["outcome"] == "failed"
    assert by_id["lv.must-after-should"]["failure"]["step"] == "a: NOOP" and by_id["lv.must-after-should"]["failure"]["expected"] == "`BAD`"
    assert "before it: step 1: a SHOULD check did not hold" in by_id["lv.must-after-should"]["message"]
    assert [d["level"] for d in by_id["lv.must-after-should"]["deviations"]] == ["SHOULD"]
    assert by_id["lv.must-override"]["outcome"] == "failed"


def test_profile_expect_warning_covers_a_warning_only(tmp_path, target_file):
    suite = write(tmp_path / "s.yaml", SUITE)
    profile = write(tmp_path / "p.yaml", """
        server: test
        deviations:
          lv.should-step: {expect: warning, reason: answers OK where the RFC says NO should come}
          lv.must-after-should: {expect: warning, reason: a warning entry does not cover a MUST failure}
          lv.holds: {expect: warning, reason: "stale entry: the server now does what it should"}
          lv.blocked: {expect: fail, reason: the test was MUST before; a warning is the deviation now}
        """)
    proc = run_cli("run", "--target", str(target_file), "--suite", str(suite), "--profile", str(profile), "-k", "not may and not override",
                   "--strict", "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    outcomes = {t["id"]: t["outcome"] for t in results_of(tmp_path / "r")["tests"]}
    assert outcomes == {"lv.should-step": "xfailed", "lv.must-after-should": "failed", "lv.holds": "xpassed",
                        "lv.blocked": "xfailed"}


EVENTUALLY = """
    defaults: {area: notification, rfc: [RFC3501 §5.2], sessions: {a: imap, b: imap}}
    tests:
      - id: ev.late
        title: EXISTS that comes only with the next NOOP is late (a warning), not missing
        steps:
          - a: SELECT INBOX
          - b: {append: plain}
          - a: {await: ["* 1 EXISTS"], within: 0.5}
            level: SHOULD
            eventually: MUST
          - a: NOOP
          - a: FETCH 1 (FLAGS)
      - id: ev.never
        title: responses that never come are a MUST failure at the session's next command
        steps:
          - a: SELECT INBOX
          - a: {await: ["* 7 EXISTS"], within: 0.5}
            level: SHOULD
            eventually: MUST
          - a: NOOP
"""


def test_an_await_that_is_late_warns_and_one_that_never_comes_fails(tmp_path, target_file):
    """IDLE may push late (SHOULD at once), but a size update must come while a command runs (MUST)."""
    suite = write(tmp_path / "s.yaml", EVENTUALLY)
    proc = run_cli("run", "--target", str(target_file), "--suite", str(suite), "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    by_id = {t["id"]: t for t in results_of(tmp_path / "r")["tests"]}
    assert by_id["ev.late"]["outcome"] == "warning", by_id["ev.late"]["message"]
    assert "step 3's responses came late, by step 4" in by_id["ev.late"]["transcript"]
    never = by_id["ev.never"]
    assert never["outcome"] == "failed"
    assert never["failure"]["step"] == "a: NOOP" and never["failure"]["level"] == "MUST"
    assert "the untagged responses step 2 waited for: `* 7 EXISTS`" in never["failure"]["expected"]
