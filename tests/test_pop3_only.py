"""POP3-only targets (pop3: and lmtp:, no imap:): set-up delivers, clean-up deletes over POP3, IMAP tests skip.

Shown against the embedded Dovecot through a target file that leaves out its imap: endpoint.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from harness import corpus
from harness.engine import pop3_accounts
from harness.errors import UnsafeAccount
from harness.sessions import POP3Session
from harness.sessions.lmtp import deliver, recipient
from harness.targets.target_file import Account

ROOT = Path(__file__).resolve().parents[1]
FOREIGN = b"From: someone@example.com\r\nSubject: the owner's own mail\r\n\r\nnot the harness's\r\n"


@pytest.mark.slow
def test_every_pop3_suite_runs_on_a_pop3_only_target(target, tmp_path):
    pop_only = replace(target, imap=None, name="embedded Dovecot without imap:")
    pop_only.dump(tmp_path / "target.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--target", str(tmp_path / "target.yaml"),
                           "-n", "2", "--report-dir", str(tmp_path / "report")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    output = f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, output
    tests = json.loads((tmp_path / "report" / "results.json").read_text())["tests"]
    pop3 = [t for t in tests if t["protocol"] == "pop3"]
    others = [t for t in tests if t["protocol"] != "pop3"]
    assert len(pop3) > 60 and others, output
    ran = [t for t in pop3 if t["outcome"] in ("passed", "xfailed")]
    not_run = [(t["id"], t["outcome"], t["message"]) for t in pop3 if t not in ran]
    # only a capability the server does not offer, or a TLS endpoint the target lacks, may keep a POP3 test from running
    assert all(o == "skipped" and ("capability" in m or "no implicit-TLS pop3 endpoint" in m) for _, o, m in not_run), \
        not_run
    assert all(t["outcome"] == "skipped" and "the target has no imap endpoint" in t["message"] for t in others), \
        [(t["id"], t["outcome"], t["message"]) for t in others if "no imap endpoint" not in t["message"]][:5]
    delivered = [t for t in ran if "delivered over LMTP" in (t.get("transcript") or "")]
    assert len(delivered) > 50, "set-up did not deliver over LMTP"
    assert any("the server added header fields: Return-Path" in (t.get("transcript") or "") for t in delivered), \
        "no check met delivery's trace fields: the POP3-only run proves nothing about them"


@pytest.fixture
def own_account(dovecot):
    account = Account(f"pop3only-{secrets.token_hex(3)}", secrets.token_urlsafe(9))
    dovecot.add_accounts([account])
    return account


def _deliver(target, account, data: bytes) -> None:
    deliver(target.lmtp, recipient(account.user), data)


def _subjects(target, account) -> list[bytes]:
    with POP3Session(target.pop3.host, target.pop3.port) as pop3:
        pop3.login(account.user, account.password)
        count = int(pop3.command("STAT").text.split()[0])
        return [next(line for line in pop3.command(f"TOP {n} 0").lines if line.startswith(b"Subject:"))
                for n in range(1, count + 1)]


def test_clean_up_over_pop3_deletes_only_the_harness_mail(target, own_account):
    pop_only = replace(target, imap=None, disposable=False)
    _deliver(target, own_account, FOREIGN)
    assert pop3_accounts.inspect_account(pop_only, own_account) == ["1 message(s) in INBOX"]
    with pytest.raises(UnsafeAccount, match="holds 1 message"):
        pop3_accounts.prepare(pop_only, own_account)  # a leftover of the harness would be removed; this is not one
    pop3_accounts.store(pop_only, own_account, [corpus.message("plain"), corpus.message("dot-lines")])
    assert len(_subjects(target, own_account)) == 3
    state = pop3_accounts.AccountState(own_account, {"INBOX"})
    notes = pop3_accounts.cleanup(pop_only, state)
    assert _subjects(target, own_account) == [b"Subject: the owner's own mail"]
    assert notes == [f"left 1 message(s) of {own_account.user} in INBOX: the harness did not create them"]


def test_a_disposable_pop3_only_account_is_emptied(target, own_account):
    pop_only = replace(target, imap=None, disposable=True)
    _deliver(target, own_account, FOREIGN)
    pop3_accounts.store(pop_only, own_account, [corpus.message("plain")])
    pop3_accounts.prepare(pop_only, own_account)
    assert _subjects(target, own_account) == []
