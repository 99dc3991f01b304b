"""The registry of managed servers and the --server option of `run`, `target up` and the pytest plugin."""

from __future__ import annotations

import json

import pytest

from harness.errors import ConfigError, TargetUnavailable
from harness.targets import managed
from harness.targets.managed_dovecot import ManagedDovecot
from tests.test_cli import cli


def test_dovecot_is_the_default_and_has_the_common_interface():
    cls = managed.server_class(managed.DEFAULT_SERVER)
    assert cls is ManagedDovecot
    assert cls.PROFILE == "dovecot" and "apt-get install" in cls.INSTALL_HINT
    for name in ("start", "stop", "detach", "stop_detached"):
        assert callable(getattr(cls, name))


def test_unknown_server_lists_the_known_ones():
    with pytest.raises(ConfigError, match=", ".join(managed.server_names())):
        managed.server_class("exchange")


def test_a_registered_server_whose_module_is_missing_does_not_break_the_others(monkeypatch):
    monkeypatch.setitem(managed.SERVERS, "ghost", "harness.targets.managed_ghost:ManagedGhost")
    with pytest.raises(TargetUnavailable, match="'ghost' is not available"):
        managed.server_class("ghost")
    assert managed.server_class("dovecot") is ManagedDovecot


@pytest.mark.parametrize("command", [("run",), ("target", "up")])
def test_unknown_server_on_the_command_line_is_exit_2_with_the_list(command, tmp_path):
    proc = cli(*command, "--server", "exchange", *(["--report-dir", str(tmp_path)] if command == ("run",) else ["--state-dir", str(tmp_path)]))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "unknown managed server 'exchange'; choose one of: " + ", ".join(managed.server_names()) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_refuses_target_and_server_together(tmp_path, target_file):
    proc = cli("run", "--target", str(target_file), "--server", "dovecot", "--report-dir", str(tmp_path))
    assert proc.returncode == 2 and "not both" in proc.stderr


def test_pop3_lock_is_refused_for_other_servers(tmp_path):
    proc = cli("target", "up", "--server", "cyrus", "--pop3-lock", "--state-dir", str(tmp_path))
    assert proc.returncode == 2 and "Dovecot setting" in proc.stderr


def test_run_server_dovecot_uses_its_profile(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "suite: s\n"
        "tests:\n"
        "  - {id: t.stat, title: stat, area: deletion, rfc: [RFC1939 §5], sessions: {p: pop3}, steps: [{p: STAT}]}\n"
    )
    proc = cli("run", "--server", "dovecot", "--suite", str(suite), "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["profile"]["name"] == "dovecot"
    assert results["target"]["name"].startswith("embedded Dovecot")


def test_target_up_records_which_server_down_stops(tmp_path):
    state = tmp_path / "state"
    up = cli("target", "up", "--server", "dovecot", "--accounts", "1", "--write", str(tmp_path / "t.yaml"), "--state-dir", str(state))
    try:
        assert up.returncode == 0, up.stderr
        assert json.loads((state / "embedded-target.json").read_text())["server"] == "dovecot"
    finally:
        down = cli("target", "down", "--state-dir", str(state))
    assert down.returncode == 0 and "dovecot" in down.stdout


def test_accounts_option_is_for_managed_servers_only(tmp_path, target_file):
    proc = cli("run", "--target", str(target_file), "--accounts", "3", "--report-dir", str(tmp_path))
    assert proc.returncode == 2 and "--accounts" in proc.stderr


@pytest.mark.parametrize("name", ["dovecot", "mailutils", "cyrus"])
def test_a_managed_server_keeps_its_mail_on_tmpfs_when_there_is_room(name, monkeypatch):
    import os
    import shutil
    from pathlib import Path

    from harness.targets import managed_server

    if not (os.access("/dev/shm", os.W_OK) and shutil.disk_usage("/dev/shm").free >= managed_server.SCRATCH_MIN_FREE):
        pytest.skip("this machine has no writable /dev/shm with 1 GiB free")
    server = managed.managed_server(name, accounts=1)  # the temp dir is made here; nothing is started
    try:
        assert server.root.parent == Path("/dev/shm")
    finally:
        server.stop()
    assert not server.root.exists()
    monkeypatch.setattr(managed_server, "SCRATCH_MIN_FREE", shutil.disk_usage("/dev/shm").free + (1 << 40))
    server = managed.managed_server(name, accounts=1)  # not enough room left: the system's temp dir
    try:
        assert server.root.parent != Path("/dev/shm")
    finally:
        server.stop()
