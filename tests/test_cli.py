"""The command line: help that teaches, exit codes CI can use, target up/down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_top_level_help_lists_every_command_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out
    assert "Exit codes" in out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_subcommand_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"mailharness {command}" in out
    assert len(out.splitlines()) > 8, out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_missing_target_file_exits_2(tmp_path):
    proc = cli("run", "--target", str(tmp_path / "nope.yaml"), "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert "target file not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_invalid_target_file_exits_2_naming_key(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("name: x\nimap: imap://127.0.0.1:1\naccounts: []\n")
    proc = cli("run", "--target", str(bad), "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert f"{bad}:3: accounts" in proc.stdout + proc.stderr


def test_unreachable_server_exits_2(tmp_path):
    t = tmp_path / "t.yaml"
    t.write_text("name: x\nimap: imap://127.0.0.1:1\npop3: pop3://127.0.0.1:1\naccounts:\n  - {user: a, password: b}\n")
    proc = cli("run", "--target", str(t), "--suite", "examples/", "--report-dir", str(tmp_path / "r"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "cannot connect" in out
    assert "Traceback" not in out


def test_no_matching_tests_exits_2(tmp_path, target_file):
    proc = cli("run", "--target", str(target_file), "--suite", "examples/", "-k", "no_such_test", "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert "no tests matched" in proc.stderr


def test_run_against_a_server_given_by_target_file(tmp_path, target, target_file):
    """A Dovecot the harness did not start for this run, reached through a target file."""
    report = tmp_path / "r"
    proc = cli("run", "--target", str(target_file), "--suite", "examples/", "--report-dir", str(report))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((report / "results.json").read_text())
    assert results["target"]["imap_url"] == target.imap.url
    assert results["target"]["imap_greeting"].startswith("* OK")
    assert "IDLE" in results["target"]["imap_capabilities"]
    assert "UIDL" in results["target"]["pop3_capabilities"]
    assert results["verdict"] == "pass"


def test_profile_expected_failure_is_exit_0_and_unexpected_pass_is_exit_1(tmp_path, target_file):
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "suite: s\n"
        "tests:\n"
        "  - {id: t.fails, title: fails, area: deletion, rfc: [RFC1939 §5], sessions: {p: pop3}, steps: [{p: STAT, expect: '+OK 9 9'}]}\n"
        "  - {id: t.passes, title: passes, area: deletion, rfc: [RFC1939 §5], sessions: {p: pop3}, steps: [{p: STAT}]}\n"
    )
    profile = tmp_path / "p.yaml"
    profile.write_text("server: test\ndeviations:\n  t.fails: {expect: fail, reason: the server is known to count differently}\n")
    proc = cli("run", "--target", str(target_file), "--suite", str(suite), "--profile", str(profile), "--report-dir", str(tmp_path / "r1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outcomes = {t["id"]: t["outcome"] for t in json.loads((tmp_path / "r1" / "results.json").read_text())["tests"]}
    assert outcomes == {"t.fails": "xfailed", "t.passes": "passed"}

    profile.write_text("server: test\ndeviations:\n  t.passes: {expect: fail, reason: 'stale entry, the server was fixed'}\n  t.fails: {expect: skip, reason: not applicable to this server}\n")
    # with workers too: xdist wraps the strict-xfail report differently
    proc = cli("run", "-n", "2", "--target", str(target_file), "--suite", str(suite), "--profile", str(profile), "--report-dir", str(tmp_path / "r2"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    outcomes = {t["id"]: t["outcome"] for t in json.loads((tmp_path / "r2" / "results.json").read_text())["tests"]}
    assert outcomes == {"t.fails": "skipped", "t.passes": "xpassed"}


def test_target_up_and_down(tmp_path):
    state = tmp_path / "state"
    written = tmp_path / "t.yaml"
    up = cli("target", "up", "--accounts", "2", "--write", str(written), "--state-dir", str(state))
    try:
        assert up.returncode == 0, up.stderr
        assert "127.0.0.1" in up.stdout
        assert (written.stat().st_mode & 0o077) == 0, "the target file holds passwords: owner-only"
        again = cli("target", "up", "--state-dir", str(state))
        assert again.returncode == 2 and "already up" in again.stderr
        check = cli("target", "check", str(written))
        assert check.returncode == 0, check.stdout + check.stderr
        assert "IDLE" in check.stdout
    finally:
        down = cli("target", "down", "--state-dir", str(state))
    assert down.returncode == 0
    assert not (state / "embedded-target.json").exists()
