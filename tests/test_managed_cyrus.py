"""The managed Cyrus IMAP: IMAP, POP3, LMTP, quota, IDLE on loopback, stock namespace, nothing left behind."""

from __future__ import annotations

import imaplib
import json
import poplib
import smtplib
import socket
import time
from pathlib import Path

import pytest

from harness.errors import TargetUnavailable
from harness.targets import managed, managed_cyrus
from harness.targets.managed_cyrus import ManagedCyrus
from harness.targets.target_file import Account
from tests.test_cli import cli
from tests.test_managed_dovecot import instance_processes, no_processes_left


@pytest.fixture(scope="module")
def cyrus():
    with ManagedCyrus(accounts=3, quota_mb=2) as cy:
        yield cy


def test_registered_as_cyrus_with_its_profile():
    assert managed.server_class("cyrus") is ManagedCyrus
    assert ManagedCyrus.PROFILE == "cyrus"


def test_starts_on_loopback_with_stock_namespace_and_quota(cyrus):
    target = cyrus.target
    assert target.imap.host == target.pop3.host == target.lmtp.host == "127.0.0.1"
    assert len({target.imap.port, target.pop3.port, target.lmtp.port}) == 3
    assert target.disposable and target.profile == "cyrus" and "Cyrus IMAP 3.6" in target.name
    account = target.accounts[0]
    imap = imaplib.IMAP4(target.imap.host, target.imap.port)
    assert b"Cyrus IMAP 3.6" in imap.welcome
    assert imap.login(account.user, account.password)[0] == "OK"
    imap._simple_command("NAMESPACE")
    assert imap.untagged_responses["NAMESPACE"][0].startswith(b'(("INBOX." "."))')  # Debian's default layout
    assert imap.getquotaroot("INBOX") == ("OK", [[b"INBOX INBOX"], [b"INBOX (STORAGE 0 2048)"]])
    for cap in ("IDLE", "QUOTA", "UIDPLUS", "NAMESPACE"):
        assert cap in imap.capabilities
    imap.logout()


def test_lmtp_delivery_reaches_imap_and_pop3_and_counts_against_quota(cyrus):
    target = cyrus.target
    account = target.accounts[1]
    with smtplib.LMTP(target.lmtp.host, target.lmtp.port) as lmtp:
        lmtp.sendmail("t@localhost", [f"{account.user}@localhost"], b"Subject: hi\r\n\r\n" + (b"x" * 70 + b"\r\n") * 50)
    pop = poplib.POP3(target.pop3.host, target.pop3.port)
    pop.user(account.user)
    assert pop.pass_(account.password).startswith(b"+OK")
    assert pop.stat()[0] == 1
    assert b"Subject: hi" in b"\r\n".join(pop.retr(1)[1])
    pop.quit()
    imap = imaplib.IMAP4(target.imap.host, target.imap.port)
    imap.login(account.user, account.password)
    assert imap.select("INBOX") == ("OK", [b"1"])
    used = imap.getquotaroot("INBOX")[1][1][0]
    assert used.startswith(b"INBOX (STORAGE ") and int(used.split()[2]) >= 3  # KB
    imap.logout()


def test_lmtp_does_not_create_mailboxes_for_unknown_users(cyrus):
    with smtplib.LMTP(cyrus.target.lmtp.host, cyrus.target.lmtp.port) as lmtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            lmtp.sendmail("t@localhost", ["nobody@localhost"], b"Subject: x\r\n\r\nx\r\n")


def test_wrong_password_is_refused(cyrus):
    account = cyrus.target.accounts[0]
    imap = imaplib.IMAP4(cyrus.target.imap.host, cyrus.target.imap.port)
    with pytest.raises(imaplib.IMAP4.error):
        imap.login(account.user, "wrong password")
    pop = poplib.POP3(cyrus.target.pop3.host, cyrus.target.pop3.port)
    pop.user(account.user)
    with pytest.raises(poplib.error_proto):
        pop.pass_("wrong password")


def test_idle_hears_another_sessions_append_at_once(cyrus):
    """idled runs: EXISTS arrives well before imapidlepoll's 60 s fallback."""
    target = cyrus.target
    account = target.accounts[2]
    with socket.create_connection((target.imap.host, target.imap.port), timeout=10) as sock:
        f = sock.makefile("rwb")
        f.readline()
        f.write(f"a LOGIN {account.user} {account.password}\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())
        f.flush()
        while not f.readline().startswith(b"+"):
            pass
        other = imaplib.IMAP4(target.imap.host, target.imap.port)
        other.login(account.user, account.password)
        other.append("INBOX", None, None, b"Subject: idle\r\n\r\nbody\r\n")
        t0 = time.monotonic()
        line = f.readline()
        assert line.endswith(b" EXISTS\r\n"), line
        assert time.monotonic() - t0 < 5
        f.write(b"DONE\r\n")
        f.flush()
        other.logout()


def test_add_accounts(cyrus):
    new = Account("late1", "pw-late-1")
    cyrus.add_accounts([new])
    imap = imaplib.IMAP4(cyrus.target.imap.host, cyrus.target.imap.port)
    assert imap.login(new.user, new.password)[0] == "OK"
    assert imap.select("INBOX")[0] == "OK"
    imap.logout()


def test_stop_leaves_no_process_and_no_file_even_with_clients_connected():
    cy = ManagedCyrus(accounts=1)
    target = cy.start()
    marker = str(cy.root)
    account = target.accounts[0]
    imap = imaplib.IMAP4(target.imap.host, target.imap.port)
    imap.login(account.user, account.password)
    pop = poplib.POP3(target.pop3.host, target.pop3.port)
    pop.user(account.user)
    pop.pass_(account.password)
    assert len(instance_processes(marker)) >= 4  # master, idled, imapd, pop3d, lmtpd
    cy.stop()
    assert no_processes_left(marker)
    assert not Path(marker).exists()


def test_target_up_and_down_with_server_cyrus(tmp_path):
    state = tmp_path / "state"
    written = tmp_path / "t.yaml"
    up = cli("target", "up", "--server", "cyrus", "--accounts", "2", "--write", str(written), "--state-dir", str(state))
    root = json.loads((state / "embedded-target.json").read_text())["root"] if (state / "embedded-target.json").exists() else None
    try:
        assert up.returncode == 0, up.stderr
        assert "Cyrus" in up.stdout and "LMTP lmtp://127.0.0.1:" in up.stdout
        check = cli("target", "check", str(written))
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        down = cli("target", "down", "--state-dir", str(state))
    assert down.returncode == 0 and "cyrus" in down.stdout
    assert root and no_processes_left(root) and not Path(root).exists()


def test_missing_packages_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(managed_cyrus, "CYRUS_ROOT", tmp_path / "nowhere")
    cy = ManagedCyrus(accounts=1)
    with pytest.raises(TargetUnavailable, match=r"make apt-cyrus") as info:
        cy.start()
    assert "install-cyrus.sh" in str(info.value) and "cyrus-common" in str(info.value)
    assert not cy.root.exists()


def test_missing_packages_on_the_command_line_is_exit_2_without_traceback(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "MAILHARNESS_CYRUS_ROOT": str(tmp_path / "nowhere")}
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--server", "cyrus", "--report-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "make apt-cyrus" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
