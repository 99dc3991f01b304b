"""The managed GNU Mailutils: starts on loopback, serves one mail store over IMAP and POP3, leaves nothing behind."""

from __future__ import annotations

import imaplib
import json
import os
import poplib
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.errors import TargetUnavailable
from harness.targets import managed_mailutils
from harness.targets.managed_mailutils import ManagedMailutils
from tests.test_managed_dovecot import instance_processes, no_processes_left

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the managed Mailutils runs as root"),
    pytest.mark.skipif(not os.path.exists("/usr/sbin/imap4d"), reason="mailutils-imap4d is not installed (make apt-mailutils)"),
]


def test_starts_serves_both_protocols_on_one_store_and_stops_clean():
    mu = ManagedMailutils(accounts=2)
    target = mu.start()
    root = mu.root
    try:
        assert target.imap.host == target.pop3.host == "127.0.0.1"
        assert target.imap.port != target.pop3.port
        assert target.lmtp is None and target.smtp is None  # no delivery: tests that need it are skipped
        assert target.disposable and target.profile == "mailutils"
        a1, a2 = target.accounts
        assert a1.user == "user1@localhost"  # the names that log in in daemon mode
        imap = imaplib.IMAP4(target.imap.host, target.imap.port)
        assert imap.login(a2.user, a2.password)[0] == "OK"
        assert imap.append("INBOX", None, None, b"Subject: hi\r\n\r\nbody\r\n")[0] == "OK"
        imap.logout()
        # what IMAP stored, POP3 serves: one mbox per user
        pop = poplib.POP3(target.pop3.host, target.pop3.port)
        pop.user(a2.user)
        assert pop.pass_(a2.password).startswith(b"+OK")
        assert pop.stat()[0] == 1
        assert b"body" in pop.retr(1)[1]
        with pytest.raises(poplib.error_proto):
            bad = poplib.POP3(target.pop3.host, target.pop3.port)
            bad.user(a1.user)
            bad.pass_("wrong password")
        # the account's bare name is refused, so a Target carrying it could not log in
        refused = imaplib.IMAP4(target.imap.host, target.imap.port)
        with pytest.raises(imaplib.IMAP4.error):
            refused.login(a1.user.removesuffix("@localhost"), a1.password)
        assert instance_processes(root.name), "no Mailutils processes while running?"
        # leave the POP3 client connected: stop must still take every process down
    finally:
        mu.stop()
    assert no_processes_left(root.name)
    assert not root.exists()


def test_listens_on_loopback_only():
    with ManagedMailutils(accounts=1) as mu:
        ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        pids = {str(p.pid) for p in mu.procs.values()}
        ours = [line for line in ss.splitlines() if any(f"pid={pid}," in line for pid in pids)]
        assert len(ours) == 2, ss
        assert all(" 127.0.0.1:" in line for line in ours), ours


def test_system_accounts_cannot_log_in():
    """`authorization virtdomain:system` is there for getpwuid(0); root must still be refused."""
    with ManagedMailutils(accounts=1) as mu:
        imap = imaplib.IMAP4("127.0.0.1", mu.target.imap.port)
        for user in ("root", "root@localhost", "mail"):
            with pytest.raises(imaplib.IMAP4.error):
                imap.login(user, "x")


def test_add_accounts_log_in_at_once():
    from harness.targets.target_file import Account

    with ManagedMailutils(accounts=1) as mu:
        new = Account("extra7@localhost", "another-password")
        mu.add_accounts([new])
        imap = imaplib.IMAP4("127.0.0.1", mu.target.imap.port)
        assert imap.login(new.user, new.password)[0] == "OK"
        with pytest.raises(TargetUnavailable, match="NAME@localhost"):
            mu.add_accounts([Account("bare", "x")])


def test_missing_mailutils_says_what_to_install(monkeypatch):
    monkeypatch.setattr(managed_mailutils.shutil, "which", lambda name: None)
    monkeypatch.setattr(managed_mailutils.os.path, "exists", lambda p: False)
    mu = ManagedMailutils(accounts=1)
    with pytest.raises(TargetUnavailable, match=r"(?s)make apt-mailutils.*apt-get install -y mailutils-imap4d mailutils-pop3d"):
        mu.start()
    assert not mu.root.exists()


def test_missing_packages_on_the_command_line_is_exit_2_without_traceback(tmp_path):
    env = {**os.environ, "MAILHARNESS_MAILUTILS_SBIN": str(tmp_path / "nowhere")}
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--server", "mailutils", "--report-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, env=env, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "apt-get install -y mailutils-imap4d mailutils-pop3d" in out and "make apt-mailutils" in out
    assert "Traceback" not in out


def test_detached_up_and_down():
    mu = ManagedMailutils(accounts=1)
    mu.start()
    state = mu.detach()
    marker = Path(state["root"]).name
    # a session child that outlives its master: stop_detached must take it too
    held = socket.create_connection(("127.0.0.1", mu.target.imap.port))
    held.recv(100)
    assert len(instance_processes(marker)) >= 3
    ManagedMailutils.stop_detached(state)
    held.close()
    assert no_processes_left(marker)
    assert not Path(state["root"]).exists()


def test_a_daemon_that_cannot_start_says_why(monkeypatch, tmp_path):
    """The daemon's own complaint (its stderr) reaches the user at once, and no temp dir is left."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    monkeypatch.setattr(managed_mailutils, "free_ports", lambda n: [port] * n)
    mu = ManagedMailutils(accounts=1)
    try:
        with pytest.raises(TargetUnavailable, match=rf"(?s)Mailutils imap4d exited with status \d+.*127.0.0.1:{port}: Address already in use"):
            mu.start(timeout=30)
    finally:
        taken.close()
        mu.stop()  # a start that wrongly succeeded must not leave its daemons running
    assert not mu.root.exists()


def test_a_broken_config_is_reported_with_the_daemons_words(monkeypatch, tmp_path):
    broken = tmp_path / "mailutils.conf.tmpl"
    broken.write_text(managed_mailutils.TEMPLATE.read_text() + "\nno-such-statement yes;\n")
    monkeypatch.setattr(managed_mailutils, "TEMPLATE", broken)
    mu = ManagedMailutils(accounts=1)
    with pytest.raises(TargetUnavailable, match=r"(?s)generated imap4d config is invalid.*no-such-statement"):
        mu.start()
    assert not mu.root.exists()



def test_target_up_and_down_with_server_mailutils(tmp_path):
    from tests.test_cli import cli

    state = tmp_path / "state"
    up = cli("target", "up", "--server", "mailutils", "--accounts", "2", "--write", str(tmp_path / "t.yaml"), "--state-dir", str(state))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "IMAP imap://127.0.0.1:" in up.stdout and "LMTP" not in up.stdout
        root = Path(json.loads((state / "embedded-target.json").read_text())["root"])
        assert instance_processes(root.name)
        target = (tmp_path / "t.yaml").read_text()
        assert "user: user2@localhost" in target and "profile: mailutils" in target and "lmtp" not in target
    finally:
        down = cli("target", "down", "--state-dir", str(state))
    assert down.returncode == 0 and "mailutils" in down.stdout
    assert no_processes_left(root.name)
    assert not root.exists()


SAME_MESSAGE = """
    suite: added fields
    defaults: {area: retrieval, rfc: ["RFC3501 §6.4.5"], sessions: {a: imap}}
    tests:
      - id: t.same-message
        title: added_fields allowed - the message imap4d serves with X-IMAPbase/X-UID is still corpus plain
        steps:
          - a: {append: plain}
          - a: SELECT INBOX
          - a: FETCH 1 (BODY.PEEK[] BODY.PEEK[HEADER])
            fetch:
              "BODY[]": {message: plain, added_fields: allowed}
              "BODY[HEADER]": {message: plain, section: HEADER, added_fields: allowed}
      - id: t.same-bytes
        title: without it, the bytes must be the appended bytes
        steps:
          - a: {append: plain}
          - a: SELECT INBOX
          - a: FETCH 1 (BODY.PEEK[])
            fetch: {"BODY[]": {message: plain}}
      - id: t.other-message
        title: added_fields allowed still tells one message from another
        steps:
          - a: {append: plain}
          - a: SELECT INBOX
          - a: FETCH 1 (BODY.PEEK[])
            fetch: {"BODY[]": {message: search-alpha, added_fields: allowed}}
"""


def test_added_fields_allowed_against_mailutils_bookkeeping(tmp_path):
    """imap4d serves its mbox bookkeeping fields (X-IMAPbase:, X-UID:) in BODY[]: a real server that adds fields."""
    from tests.test_cli import cli

    suite = tmp_path / "s.yaml"
    suite.write_text(textwrap.dedent(SAME_MESSAGE))
    proc = cli("run", "--server", "mailutils", "--suite", str(suite), "--accounts", "3", "--report-dir", str(tmp_path / "r"))
    assert (tmp_path / "r" / "results.json").exists(), proc.stdout + proc.stderr
    tests = {t["id"]: t for t in json.loads((tmp_path / "r" / "results.json").read_text())["tests"]}
    assert tests["t.same-message"]["outcome"] == "passed", tests["t.same-message"]["message"]
    assert "the server added header fields: X-IMAPbase, X-UID" in tests["t.same-message"]["transcript"]
    assert tests["t.same-bytes"]["outcome"] == "failed" and "X-IMAPbase" in tests["t.same-bytes"]["message"]
    assert tests["t.other-message"]["outcome"] == "failed"
    assert proc.returncode == 1
