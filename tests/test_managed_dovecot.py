"""The embedded Dovecot: starts on loopback, serves both protocols, leaves nothing behind."""

from __future__ import annotations

import imaplib
import os
import poplib
import smtplib
import time
from pathlib import Path

import pytest

from harness.errors import TargetUnavailable
from harness.targets import managed_dovecot
from harness.targets.managed_dovecot import ManagedDovecot


def instance_processes(marker: str) -> list[int]:
    pids = []
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit():
            try:
                if marker.encode() in (pid_dir / "cmdline").read_bytes():
                    pids.append(int(pid_dir.name))
            except OSError:
                pass
    return pids


def no_processes_left(marker: str, timeout: float = 5.0) -> bool:
    """SIGKILLed processes take a moment to vanish from /proc; poll rather than guess a sleep."""
    deadline = time.monotonic() + timeout
    while instance_processes(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_starts_serves_both_protocols_and_stops_clean():
    dc = ManagedDovecot(accounts=2)
    target = dc.start()
    root = dc.root
    try:
        assert target.imap.host == target.pop3.host == target.lmtp.host == "127.0.0.1"
        assert len({target.imap.port, target.pop3.port, target.lmtp.port}) == 3
        assert target.disposable and target.profile == "dovecot"
        a1, a2 = target.accounts
        imap = imaplib.IMAP4(target.imap.host, target.imap.port)
        assert imap.login(a1.user, a1.password)[0] == "OK"
        names = b" ".join(imap.list()[1])
        for special in (b"\\Sent", b"\\Drafts", b"\\Trash"):
            assert special in names
        assert imap.getquotaroot("INBOX")[0] == "OK"
        # LMTP delivery lands in the INBOX that IMAP and POP3 read
        with smtplib.LMTP(target.lmtp.host, target.lmtp.port) as lmtp:
            lmtp.sendmail("t@localhost", [f"{a2.user}@localhost"], b"Subject: hi\r\n\r\nbody\r\n")
        pop = poplib.POP3(target.pop3.host, target.pop3.port)
        pop.user(a2.user)
        assert pop.pass_(a2.password).startswith(b"+OK")
        assert pop.stat()[0] == 1
        with pytest.raises(poplib.error_proto):
            bad = poplib.POP3(target.pop3.host, target.pop3.port)
            bad.user(a1.user)
            bad.pass_("wrong password")
        assert instance_processes(root.name), "no Dovecot processes while running?"
        # leave the clients connected: stop must still take every process down
    finally:
        dc.stop()
    assert no_processes_left(root.name)
    assert not root.exists()


def test_failed_logins_are_refused_without_the_auth_tick_apop_included():
    """The embedded Dovecot answers a failed login at once (passdb field nodelay), where Dovecot would wait for its
    auth process's next 500 ms tick: a wrong password, and also a wrong APOP digest, which fails in the APOP
    mechanism after a successful secret lookup, not in a passdb. The fastest of three attempts: load only adds."""
    import hashlib
    import re

    with ManagedDovecot(accounts=1) as dc:
        account = dc.target.accounts[0]

        def refused_after(*commands: bytes) -> float:
            pop = poplib.POP3(dc.target.pop3.host, dc.target.pop3.port)
            try:
                timestamp = re.search(rb"<[^>]+>", pop.getwelcome()).group(0)
                for command in commands[:-1]:
                    pop._shortcmd(command.decode())
                wrong = hashlib.md5(timestamp + b"not the " + account.password.encode()).hexdigest().encode()
                started = time.monotonic()
                with pytest.raises(poplib.error_proto, match="AUTH"):
                    pop._shortcmd(commands[-1].replace(b"DIGEST", wrong).decode())
                return time.monotonic() - started
            finally:
                pop.close()

        user = account.user.encode()
        assert min(refused_after(b"APOP " + user + b" DIGEST") for _ in range(3)) < 0.3
        assert min(refused_after(b"USER " + user, b"PASS wrong") for _ in range(3)) < 0.3


def test_two_instances_side_by_side():
    with ManagedDovecot(accounts=1) as one, ManagedDovecot(accounts=1) as two:
        assert one.target.imap.port != two.target.imap.port
        for dc in (one, two):
            acc = dc.target.accounts[0]
            m = imaplib.IMAP4("127.0.0.1", dc.target.imap.port)
            assert m.login(acc.user, acc.password)[0] == "OK"
            m.logout()


def test_pop3_lock_setting():
    with ManagedDovecot(accounts=1, pop3_lock=True) as dc:
        acc = dc.target.accounts[0]
        first = poplib.POP3("127.0.0.1", dc.target.pop3.port)
        first.user(acc.user)
        first.pass_(acc.password)
        first.stat()
        second = poplib.POP3("127.0.0.1", dc.target.pop3.port)
        second.user(acc.user)
        with pytest.raises(poplib.error_proto, match=r"IN-USE"):
            second.pass_(acc.password)
        assert dc.target.profile == "dovecot-lock"


def test_missing_dovecot_says_what_to_install(monkeypatch):
    monkeypatch.setattr(managed_dovecot.shutil, "which", lambda name: None)
    monkeypatch.setattr(managed_dovecot.os.path, "exists", lambda p: False)
    with pytest.raises(TargetUnavailable, match="apt-get install -y dovecot-imapd dovecot-pop3d dovecot-lmtpd"):
        ManagedDovecot(accounts=1).start()


@pytest.mark.skipif(os.geteuid() != 0, reason="the embedded Dovecot runs as root")
def test_detached_up_and_down():
    dc = ManagedDovecot(accounts=1)
    dc.start()
    state = dc.detach()
    marker = Path(state["root"]).name
    assert instance_processes(marker)
    ManagedDovecot.stop_detached(state)
    assert no_processes_left(marker)
    assert not Path(state["root"]).exists()


def test_a_dovecot_that_exits_at_start_says_why(monkeypatch, tmp_path):
    """Dovecot's own complaint (on stderr, not in its log) reaches the user, and no temp dir is left."""
    broken = tmp_path / "dovecot.conf.tmpl"
    broken.write_text(managed_dovecot.TEMPLATE.read_text() + "\npop3_deleted_flag = $$NoSuchVariable\n")
    monkeypatch.setattr(managed_dovecot, "TEMPLATE", broken)
    dc = ManagedDovecot(accounts=1)
    with pytest.raises(TargetUnavailable, match=r"(?s)Dovecot exited with status \d+.*Unknown variable: \$NoSuchVariable"):
        dc.start(timeout=30)
    assert not dc.root.exists()
