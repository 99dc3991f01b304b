"""What keeps a test's set-up and clean-up cheap, without changing what a test sees: one kept-alive admin
connection per account, the corpus stored in one command, a drop that waits for the server instead of a
sleep, an embedded Dovecot that answers failed logins at once, suites parsed by libyaml."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

from harness import yaml_source
from harness.engine import accounts
from harness.engine.accounts import AdminConnections, admin_client, store_messages
from harness.engine.suite_files import suite_files
from harness.paths import suites_dir
from harness.sessions import IMAPSession, POP3Session, SessionError

ROOT = Path(__file__).resolve().parent.parent


def _logins(dovecot, user: str) -> int:
    log = (dovecot.root / "dovecot.log").read_text(errors="replace")
    return log.count(f"imap-login: Info: Login: user=<{user}>")


def _wait_logins(dovecot, user: str, at_least: int) -> int:
    deadline = time.monotonic() + 5  # the log line is written by another process
    while _logins(dovecot, user) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return _logins(dovecot, user)


def test_set_up_and_clean_up_share_one_kept_alive_connection(dovecot):
    target, account = dovecot.target, dovecot.target.accounts[0]
    connections = AdminConnections(target)
    before = _logins(dovecot, account.user)
    try:
        for _ in range(3):
            state = accounts.prepare(target, account, connections)
            with connections.client(account) as client:
                store_messages(client, "INBOX", [(b"Subject: a\r\nX-Mailharness-Corpus: a\r\n\r\nx\r\n", [])])
            accounts.cleanup(target, state, connections)
        assert _wait_logins(dovecot, account.user, before + 1) == before + 1, "three tests' set-up and clean-up logged in more than once"

        with connections.client(account) as client:
            client.logout()  # the server says BYE and closes: the next user must get a fresh connection
        with connections.client(account) as client:
            assert client.noop()
        assert _wait_logins(dovecot, account.user, before + 2) == before + 2

        with connections.client(account) as client:  # a kept connection that fails its work: a fresh one redoes it
            from imapclient.exceptions import IMAPClientError

            def stale(*args, **kwargs):
                raise IMAPClientError("select failed: EXAMINE Could not open INBOX.lock: No such file or directory")

            client.list_folders = stale
        state = accounts.prepare(target, account, connections)
        assert state.folders and _wait_logins(dovecot, account.user, before + 3) == before + 3

        with pytest.raises(RuntimeError), connections.client(account) as client:
            broken = client
            raise RuntimeError("a failure half-way through set-up")
        with connections.client(account) as client:
            assert client is not broken, "a connection whose use failed was handed out again"
    finally:
        connections.close()


@pytest.mark.parametrize("multiappend", [True, False])
def test_corpus_messages_are_stored_in_order_with_their_flags(dovecot, multiappend, monkeypatch):
    target, account = dovecot.target, dovecot.target.accounts[1]
    state = accounts.prepare(target, account)
    messages = [(f"Subject: m{i}\r\nX-Mailharness-Corpus: m\r\n\r\nbody {i}\r\n".encode(), flags)
                for i, flags in enumerate([[], ["\\Seen"], ["\\Flagged", "\\Answered"]])]
    sent = []
    with admin_client(target, account) as client:
        if not multiappend:  # a server without MULTIAPPEND (RFC 3502): one APPEND each
            caps = tuple(c for c in client.capabilities() if c != b"MULTIAPPEND")
            monkeypatch.setattr(client, "capabilities", lambda: caps)
        real = client._raw_command
        monkeypatch.setattr(client, "_raw_command", lambda *a, **k: sent.append(a[0]) or real(*a, **k))
        store_messages(client, "INBOX", messages)
        client.select_folder("INBOX", readonly=True)
        got = client.fetch("1:*", ["BODY.PEEK[]", "FLAGS"])
    accounts.cleanup(target, state)
    assert [got[uid][b"BODY[]"] for uid in sorted(got)] == [data for data, _ in messages]
    assert [{f.decode() for f in got[uid][b"FLAGS"]} - {"\\Recent"} for uid in sorted(got)] == [set(f) for _, f in messages]
    if multiappend:
        assert sent == [b"APPEND"], "three messages were not stored in one MULTIAPPEND command"


def test_a_drop_waits_until_the_server_has_closed_its_end(dovecot):
    target, account = dovecot.target, dovecot.target.accounts[2]
    session = POP3Session("127.0.0.1", target.pop3.port, tls=False, starttls=False, tls_verify=False, ca_file=None,
                          name="p", transcript=None, timeout=5)
    session.login(account.user, account.password)
    started = time.monotonic()
    assert session.hang_up(2.0) is True
    assert time.monotonic() - started < 1.0
    assert session.closed


def test_a_drop_gives_up_waiting_on_a_server_that_keeps_its_end_open():
    listener = socket.create_server(("127.0.0.1", 0))
    held = []

    def serve():
        conn, _ = listener.accept()
        held.append(conn)
        conn.sendall(b"+OK ready\r\n")  # and never closes, whatever the client does

    threading.Thread(target=serve, daemon=True).start()
    try:
        session = POP3Session("127.0.0.1", listener.getsockname()[1], tls=False, starttls=False, tls_verify=False,
                              ca_file=None, name="p", transcript=None, timeout=5)
        started = time.monotonic()
        assert session.hang_up(0.3) is False
        assert 0.25 < time.monotonic() - started < 2.0
    finally:
        for conn in held:
            conn.close()
        listener.close()


def test_the_embedded_dovecot_answers_a_failed_login_at_once_and_still_knows_who_exists(dovecot):
    target, account = dovecot.target, dovecot.target.accounts[3]
    for user, password in ((account.user, "wrong"), ("mailharness-no-such-user", "x")):
        started = time.monotonic()
        with pytest.raises(SessionError, match="AUTHENTICATIONFAILED"), \
                IMAPSession("127.0.0.1", target.imap.port, name="a", timeout=5) as imap:
            imap.login(user, password)
        assert time.monotonic() - started < 0.3, "a failed login waited for the auth process's 500 ms tick"
    with IMAPSession("127.0.0.1", target.imap.port, name="a", timeout=5) as imap:
        imap.login(account.user, account.password)  # the right password still logs in
    from harness.sessions.errors import ProtocolError
    from harness.sessions.lmtp import deliver

    with pytest.raises(ProtocolError, match="mailharness-no-such-user"):  # LMTP still refuses unknown users
        deliver(target.lmtp, "mailharness-no-such-user", b"Subject: x\r\n\r\nx\r\n")


def test_libyaml_loads_every_suite_as_the_pure_python_loader_does():
    if len(yaml_source._LOADERS) < 2:
        pytest.skip("PyYAML was built without libyaml")

    def shape(value):
        if isinstance(value, dict):
            return ("map", value.line, dict(value.key_lines), {k: shape(v) for k, v in value.items()})
        if isinstance(value, list):
            return ("seq", value.line, dict(value.key_lines), [shape(v) for v in value])
        return (type(value).__name__, value)

    paths = suite_files([suites_dir()]) + sorted((ROOT / "profiles").glob("*.yaml"))
    assert len(paths) > 20
    for path in paths:
        text = path.read_text()
        assert shape(yaml.load(text, Loader=yaml_source._LOADERS[-1])) == shape(yaml.load(text, Loader=yaml_source._LineLoader)), path


def test_the_default_worker_count_fits_io_bound_runs_and_the_accounts(tmp_path):
    from argparse import Namespace

    from harness.engine.run_command import AUTO_MAX_WORKERS, auto_workers

    cores = len(__import__("os").sched_getaffinity(0))
    full = [suites_dir()]

    def workers(**kw):
        return auto_workers(Namespace(**{"keyword": None, "target": None, "accounts": None, **kw}), full)

    assert workers() == min(AUTO_MAX_WORKERS, 2 * cores) or cores == 1 and workers() == 0
    assert workers(keyword="pop3") == 0  # a subset: one process is quicker
    assert auto_workers(Namespace(keyword=None, target=None, accounts=None), [ROOT / "examples"]) == 0
    assert workers(accounts=4) == min(2, AUTO_MAX_WORKERS, 2 * cores)  # two tests' worth of accounts each
    assert workers(accounts=3) == 0


@pytest.mark.parametrize("password", ["abcd", "pässwörd-1", "E5TanP_6a-SWpSa4"])
def test_the_base64_shortcut_masks_what_decoding_every_token_masks(password):
    import base64

    from harness.known_secrets import KnownSecrets

    gated, full = KnownSecrets(), KnownSecrets()
    for secrets in (gated, full):
        secrets.add(password)
        secrets.scrub("x")  # compiles
    full._cores = None  # decode every token, as before the shortcut
    for before in range(8):
        for after in range(3):
            data = b"\0user1\0"[:before] + password.encode() + b"xyz"[:after]
            text = f"C: AUTHENTICATE PLAIN {base64.b64encode(data).decode()}"
            assert gated.scrub(text) == full.scrub(text), (before, after)
    sasl = base64.b64encode(b"\0user1\0" + password.encode()).decode()
    assert gated.scrub(f"A1 AUTHENTICATE PLAIN {sasl}") == "A1 AUTHENTICATE PLAIN ***"
    attachment = base64.encodebytes(bytes(range(128, 256)) * 80).decode()  # base64 lines without the password
    assert gated.scrub(attachment) == attachment


@pytest.mark.parametrize("linger, waited", [(0.3, (0.25, 0.9)), (None, (0.9, 1.6))])
def test_closing_a_session_waits_for_the_server_to_finish_it(linger, waited):
    """After QUIT's +OK the server may still be unlocking the maildrop: clean-up must not race it."""
    listener = socket.create_server(("127.0.0.1", 0))
    held = []

    def serve():
        conn, _ = listener.accept()
        held.append(conn)
        conn.sendall(b"+OK ready\r\n")
        conn.recv(100)  # QUIT
        conn.sendall(b"+OK bye\r\n")
        if linger is not None:  # finishes the session a little later, then closes
            time.sleep(linger)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        session = POP3Session("127.0.0.1", listener.getsockname()[1], tls=False, starttls=False, tls_verify=False,
                              ca_file=None, name="p", transcript=None, timeout=5)
        started = time.monotonic()
        session.close()
        assert waited[0] < time.monotonic() - started < waited[1]
    finally:
        for conn in held:
            conn.close()
        listener.close()


def _fill(target, account) -> None:
    with admin_client(target, account) as client:
        for folder in ("INBOX", "Trash"):
            client.append(folder, b"Subject: left\r\nX-Mailharness-Corpus: a\r\n\r\nleft by the last test\r\n")
        client.create_folder("Left-over")
        client.subscribe_folder("Left-over")


def _held(target, account) -> dict:
    """Messages per folder by EXAMINE, and the folders and subscriptions a fresh account lacks."""
    with admin_client(target, account) as client:
        folders = [name for _, _, name in client.list_folders()]
        counts = {name: client.select_folder(name, readonly=True)[b"EXISTS"] for name in folders}
        return {"mail": {n: c for n, c in counts.items() if c},
                "folders": [n for n in folders if n not in ("INBOX", "Sent", "Drafts", "Trash", "Junk")],
                "subscribed": [n for _, _, n in client.list_sub_folders() if n == "Left-over"]}


def test_set_up_selects_only_the_folders_that_hold_mail(dovecot, monkeypatch):
    target, account = dovecot.target, dovecot.target.accounts[4]
    monkeypatch.setattr(accounts, "_STATUS_DISAGREED", set())
    connections = AdminConnections(target)
    try:
        accounts.prepare(target, account, connections)
        _fill(target, account)
        with connections.client(account) as client:
            real = client._imap._simple_command
            sent = []
            monkeypatch.setattr(client._imap, "_simple_command", lambda name, *a: sent.append((name, *a)) or real(name, *a))
        accounts.prepare(target, account, connections)
    finally:
        connections.close()
    assert _held(target, account) == {"mail": {}, "folders": [], "subscribed": []}
    opened = sorted(a[0].decode().strip('"') for name, *a in sent if name in ("SELECT", "EXAMINE"))
    assert opened == ["INBOX", "Trash"], sent  # Sent, Drafts and Junk said MESSAGES 0 to STATUS
    assert not accounts._STATUS_DISAGREED


def test_set_up_stops_trusting_a_status_that_disagrees_with_select(dovecot, monkeypatch):
    """A server whose STATUS says 0 for folders that hold mail: INBOX's SELECT catches it out, and every folder
    is then SELECTed, so no test starts with the last test's mail."""
    target, account = dovecot.target, dovecot.target.accounts[5]
    monkeypatch.setattr(accounts, "_STATUS_DISAGREED", set())
    accounts.prepare(target, account)
    _fill(target, account)
    monkeypatch.setattr(accounts, "_statuses", lambda client, names: {name: 0 for name in names})
    accounts.prepare(target, account)
    assert (target.imap.host, target.imap.port) in accounts._STATUS_DISAGREED
    assert _held(target, account) == {"mail": {}, "folders": [], "subscribed": []}


def test_a_run_leaves_the_disposable_accounts_of_a_users_server_empty(target, tmp_path):
    """Set-up empties an account before each test, so tests do not clean up after themselves; the process's
    last act empties the accounts it used, as a clean-up after each test did."""
    import subprocess
    import sys
    from dataclasses import replace

    users = replace(target, accounts=target.accounts[6:8], disposable=True)
    users.dump(tmp_path / "t.yaml")
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--target", str(tmp_path / "t.yaml"), "-n", "0",
                           "--suite", "examples/", "--report-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for account in users.accounts:
        assert _held(users, account) == {"mail": {}, "folders": [], "subscribed": []}


def test_bench_suite_times_whole_runs_and_says_where_the_time_went():
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "--suite", "examples/", "--rounds", "2",
                           "--workers", "0", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["rounds"] == 2 and result["verdicts"] == ["pass", "pass"]
    assert result["command"] == "mailharness run -n 0 --suite examples"
    assert 0 < result["session_s"]["median"] < result["wall_s"]["median"]
    assert result["phases_s"]["setup"]["median"] > 0 and result["phases_s"]["waits"]["median"] > 0  # the IDLE example waits
    assert result["outcomes"][0]["passed"] >= 3
    assert "round 2/2" in proc.stderr


def test_set_up_selects_every_folder_where_a_status_is_refused(dovecot, monkeypatch):
    """STATUS commands go out together; one refused (here: a folder that vanished) leaves the others' answers in
    order, the server's STATUS is no longer trusted, and the folders are SELECTed."""
    target, account = dovecot.target, dovecot.target.accounts[3]
    monkeypatch.setattr(accounts, "_STATUS_DISAGREED", set())
    with admin_client(target, account) as client:
        assert accounts._statuses(client, ["INBOX", "Mailharness-no-such-folder", "Sent"]) == {"INBOX": 0, "Sent": 0}
        assert (target.imap.host, target.imap.port) in accounts._STATUS_DISAGREED
        assert client.noop()  # the connection is still in step
    accounts.prepare(target, account)
    _fill(target, account)
    accounts.prepare(target, account)
    assert _held(target, account) == {"mail": {}, "folders": [], "subscribed": []}
