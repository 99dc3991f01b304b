"""The harness never destroys mail it did not create."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from harness.engine.accounts import admin_client, cleanup, prepare
from harness.errors import UnsafeAccount

ROOT = Path(__file__).resolve().parent.parent
FOREIGN = b"From: boss@example.org\r\nSubject: keep me\r\nMessage-ID: <keep@example.org>\r\n\r\nimportant\r\n"


@pytest.fixture
def careful_target(target):
    """Two accounts of the session's Dovecot, declared not disposable, emptied before and after."""
    accounts = target.accounts[-2:]
    wipeable = replace(target, accounts=accounts, disposable=True)
    for account in accounts:
        cleanup(wipeable, prepare(wipeable, account))
    yield replace(target, accounts=accounts, disposable=False)
    for account in accounts:
        cleanup(wipeable, prepare(wipeable, account))


def messages(target, account, folder="INBOX") -> list[bytes]:
    with admin_client(target, account) as client:
        client.select_folder(folder)
        uids = client.search("ALL")
        return [d[b"BODY[]"] for d in client.fetch(uids, ["BODY.PEEK[]"]).values()] if uids else []


def test_run_refuses_an_account_holding_foreign_mail_and_touches_nothing(careful_target, tmp_path):
    account = careful_target.accounts[0]
    with admin_client(careful_target, account) as client:
        client.append("INBOX", FOREIGN)
        client.create_folder("Projects")
    target_file = tmp_path / "t.yaml"
    careful_target.dump(target_file)
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--target", str(target_file), "--suite", "examples/", "--report-dir", str(tmp_path / "r")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert f"account {account.user} holds mail the harness did not create" in out
    assert "disposable: true" in out
    assert messages(careful_target, account) == [FOREIGN]
    with admin_client(careful_target, account) as client:
        assert client.folder_exists("Projects")


def test_prepare_refuses_and_cleanup_removes_only_harness_mail(careful_target):
    from harness import corpus

    account = careful_target.accounts[1]
    state = prepare(careful_target, account)  # empty: allowed
    with admin_client(careful_target, account) as client:
        client.append("INBOX", corpus.message("plain"))  # what a test stores
        client.create_folder("Harness-made")
        client.append("Harness-made", corpus.message("plain"))
        client.create_folder("Mixed")
        client.append("Mixed", corpus.message("plain"))
        client.append("INBOX", FOREIGN)  # mail that arrived while the test ran
        client.append("Mixed", FOREIGN)
    notes = cleanup(careful_target, state)
    assert messages(careful_target, account) == [FOREIGN]
    with admin_client(careful_target, account) as client:
        assert not client.folder_exists("Harness-made")
        assert client.folder_exists("Mixed")
    assert messages(careful_target, account, "Mixed") == [FOREIGN]
    assert any("Mixed" in note and "did not create" in note for note in notes)
    with pytest.raises(UnsafeAccount, match="refusing to touch it"):
        prepare(careful_target, account)


def test_run_on_empty_non_disposable_accounts_leaves_them_empty(careful_target, tmp_path):
    target_file = tmp_path / "t.yaml"
    careful_target.dump(target_file)
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--target", str(target_file), "--suite", "examples/", "--report-dir", str(tmp_path / "r")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "r" / "results.json").read_text())["summary"]["passed"] == 3
    for account in careful_target.accounts:
        with admin_client(careful_target, account) as client:
            for _flags, _, name in client.list_folders():
                assert client.folder_status(name, ["MESSAGES"])[b"MESSAGES"] == 0, name
            assert sorted(n for _, _, n in client.list_folders()) == ["Drafts", "INBOX", "Junk", "Sent", "Trash"]


def test_cleanup_without_uidplus_never_expunges_the_owners_deleted_mail(careful_target):
    """Without UID EXPUNGE, clean-up may only EXPUNGE when no message of the owner's is flagged \\Deleted."""
    from harness import corpus
    from tests.faultproxy import proxied_target

    account = careful_target.accounts[1]
    state = prepare(careful_target, account)
    with admin_client(careful_target, account) as client:
        client.append("INBOX", corpus.message("plain"))  # what a test stores
        client.append("INBOX", FOREIGN, flags=[b"\\Deleted"])  # the owner deleted it and has not expunged yet
    with proxied_target(careful_target, imap_fault="imap-no-uidplus") as plain:
        with admin_client(plain, account) as client:
            assert not client.has_capability("UIDPLUS")
        notes = cleanup(plain, state)
        fired = plain.proxies["imap"].fired
        assert not any("UID EXPUNGE" in event for event in fired), fired  # it never tried UID EXPUNGE
        assert any("no UIDPLUS" in note for note in notes), notes
        assert len(messages(careful_target, account)) == 2 and FOREIGN in messages(careful_target, account)

        with admin_client(careful_target, account) as client:  # the owner changes their mind
            client.select_folder("INBOX")
            client.remove_flags(client.search(["HEADER", "Subject", "keep me"]), [b"\\Deleted"])
        assert cleanup(plain, state) == []
    assert messages(careful_target, account) == [FOREIGN]  # a plain EXPUNGE took the harness's message only


def test_cleanup_removes_only_the_subscriptions_the_harness_made(careful_target):
    """RFC 3501 §6.3.6: a subscription may name a folder that does not exist (a deleted one, another client's)."""
    account = careful_target.accounts[1]
    with admin_client(careful_target, account) as client:
        client.create_folder("Owners-Old-Folder")
        client.subscribe_folder("Owners-Old-Folder")
        client.delete_folder("Owners-Old-Folder")  # the subscription stays (RFC 3501 §6.3.4)
    state = prepare(careful_target, account)
    with admin_client(careful_target, account) as client:
        client.create_folder("Harness-made")  # what a test creates and subscribes to
        client.subscribe_folder("Harness-made")
        client.create_folder("Harness-deleted")  # and one it deleted again, leaving the subscription
        client.subscribe_folder("Harness-deleted")
        client.delete_folder("Harness-deleted")
    cleanup(careful_target, state)
    with admin_client(careful_target, account) as client:
        subscribed = {name for _, _, name in client.list_sub_folders()}
        client.unsubscribe_folder("Owners-Old-Folder")
    assert "Owners-Old-Folder" in subscribed
    assert not subscribed & {"Harness-made", "Harness-deleted"}, subscribed


@pytest.mark.parametrize("selection", [
    "pop3.dele.all-then-quit-empty or imap.deletion.deleted-mark-is-not-removal",  # DELE 1, STORE 1 +FLAGS (\\Deleted)
    "rename-inbox-moves-messages",  # RENAME INBOX moves all of INBOX
], ids=["dele-store", "rename-inbox"])
def test_foreign_mail_arriving_during_set_up_is_never_deleted(careful_target, tmp_path, selection):
    """A delivery racing the set-up gets message number 1 (tests/foreign_arrival.py): `DELE 1` would take it.
    The test ends as an error, its POP3 marks are never committed, and the foreign message stays."""
    target_file = tmp_path / "t.yaml"
    careful_target.dump(target_file)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--target", str(target_file), "--report-dir", str(tmp_path / "r"),
         "-k", selection,
         "--pytest-arg=-p", "--pytest-arg=foreign_arrival"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, env=env,
    )
    tests = json.loads((tmp_path / "r" / "results.json").read_text())["tests"]
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [t["outcome"] for t in tests] == ["error"] * len(tests) and tests, [(t["id"], t["message"][:300]) for t in tests]
    assert all("foreign mail arrived during the test" in t["message"] for t in tests), [t["message"] for t in tests]
    kept = [m for account in careful_target.accounts for m in messages(careful_target, account)]
    assert len(kept) == len(tests) and all(m.endswith(FOREIGN) for m in kept), kept  # one per test (LMTP adds a header)


def test_a_disposable_account_holding_foreign_mail_is_warned_about_before_the_run(careful_target, tmp_path):
    account = careful_target.accounts[0]
    with admin_client(careful_target, account) as client:
        client.append("INBOX", FOREIGN)
    target_file = tmp_path / "t.yaml"
    replace(careful_target, disposable=True).dump(target_file)
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--target", str(target_file), "--suite", "examples/", "--report-dir", str(tmp_path / "r")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warning = f"warning: account {account.user} holds mail the harness did not create (1 message(s) in INBOX)"
    assert warning in proc.stdout and "so the run empties it" in proc.stdout, proc.stdout
    assert proc.stdout.index(warning) < proc.stdout.index("passed"), proc.stdout  # before the tests, not after
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert any(account.user in w for w in results["target"]["warnings"]), results["target"]
