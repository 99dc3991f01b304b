"""No password in any output, even when the server echoes it (issue 10 item 3).

A fake server refuses every login and quotes the password back in the forms a real one might:
raw, as an IMAP quoted string, and the SASL PLAIN response it was sent (base64). Every command
that logs in (target check, run's probe, seed, load's Locust users) runs against it; nothing it
prints and no file it writes may hold the password in any form.
"""

from __future__ import annotations

import base64
import html
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
USER = "mh-user1"
PASSWORD = 'Pw"q\\z-7Hx<&>'  # a quote and a backslash (escaped forms), <&> (HTML escaping)


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def forbidden_forms() -> list[str]:
    plain = b64(f"\0{USER}\0{PASSWORD}")
    forms = {PASSWORD, quoted(PASSWORD)[1:-1], json.dumps(PASSWORD)[1:-1], html.escape(PASSWORD), repr(PASSWORD)[1:-1],
             plain, plain.rstrip("="), b64(PASSWORD).rstrip("=")}
    return sorted(forms)


class _EchoingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    accepting = False  # True: logins succeed (with the password in the welcome); every later command is refused, quoting it


def _lines(rfile):
    while True:
        line = rfile.readline(65536)
        if not line:
            return
        yield line.decode("utf-8", "replace").rstrip("\r\n")


def _sasl_payload(handler: socketserver.StreamRequestHandler, words: list[str], at: int) -> str:
    """AUTHENTICATE's (AUTH's) initial response, words[at]; without one, the line the client sends after "+ "."""
    if len(words) > at:
        return words[at]
    handler.wfile.write(b"+ \r\n")
    return next(_lines(handler.rfile), "")


class ImapEcho(socketserver.StreamRequestHandler):
    def handle(self):
        send = self.wfile.write
        send(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN] fake IMAP ready\r\n")
        for line in _lines(self.rfile):
            tag, _, rest = line.partition(" ")
            verb = rest.split(" ", 1)[0].upper()
            if verb == "CAPABILITY":
                send(f"* CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN\r\n{tag} OK done\r\n".encode())
            elif verb == "LOGIN" and self.server.accepting:
                send(f"{tag} OK [CAPABILITY IMAP4rev1 UIDPLUS] welcome, your password is {quoted(PASSWORD)}\r\n".encode())
            elif verb == "LOGIN":
                send(f"{tag} NO [AUTHENTICATIONFAILED] bad password {PASSWORD} (you sent {quoted(PASSWORD)})\r\n".encode())
            elif verb == "AUTHENTICATE":
                send(f"{tag} NO bad password {PASSWORD} for {_sasl_payload(self, rest.split(' '), 2)}\r\n".encode())
            elif verb == "LOGOUT":
                send(f"* BYE\r\n{tag} OK bye\r\n".encode())
                return
            else:
                send(f"{tag} BAD log in first, {PASSWORD}\r\n".encode())


class Pop3Echo(socketserver.StreamRequestHandler):
    def handle(self):
        send = self.wfile.write
        send(b"+OK fake POP3 ready\r\n")
        for line in _lines(self.rfile):
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == "CAPA":
                send(b"+OK\r\nUSER\r\nSASL PLAIN\r\nUIDL\r\nTOP\r\n.\r\n")
            elif verb == "USER":
                send(b"+OK\r\n")
            elif verb == "PASS" and self.server.accepting:
                send(f"+OK welcome, {arg}\r\n".encode())
            elif verb == "PASS":
                send(f"-ERR bad password {arg} {quoted(arg)}\r\n".encode())
            elif verb == "AUTH":
                send(f"-ERR bad password {PASSWORD} for {_sasl_payload(self, arg.split(' '), 1)}\r\n".encode())
            elif verb == "QUIT":
                send(b"+OK bye\r\n")
                return
            else:
                send(f"-ERR log in first, {PASSWORD}\r\n".encode())


def _echo_target(tmp_path_factory, accepting: bool):
    servers = [_EchoingServer(("127.0.0.1", 0), handler) for handler in (ImapEcho, Pop3Echo)]
    for server in servers:
        server.accepting = accepting
        threading.Thread(target=server.serve_forever, daemon=True).start()
    imap_port, pop3_port = (s.server_address[1] for s in servers)
    path = tmp_path_factory.mktemp("echo") / "target.yaml"
    path.write_text(f"name: echoing fake\nimap: imap://127.0.0.1:{imap_port}\npop3: pop3://127.0.0.1:{pop3_port}\n"
                    f"accounts:\n  - {{user: {USER}, password: '{PASSWORD}'}}\n  - {{user: mh-user2, password: '{PASSWORD}'}}\n"
                    "disposable: true\ntimeout: 3\n")
    yield path
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def echo_target(tmp_path_factory):
    yield from _echo_target(tmp_path_factory, accepting=False)


@pytest.fixture(scope="module")
def welcoming_target(tmp_path_factory):
    """Logins succeed, then every command is refused: the set-up client, the suite sessions and the probe
    all read the password back."""
    yield from _echo_target(tmp_path_factory, accepting=True)


def mailharness(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this tree's harness, whatever the venv has installed
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=180, env=env)


def assert_clean(texts: dict[str, str]) -> None:
    leaks = [(where, form) for where, text in texts.items() for form in forbidden_forms() if form in text]
    assert not leaks, f"password forms found: {leaks}"


def files_of(directory: Path) -> dict[str, str]:
    out = {str(p): p.read_text(errors="replace") for p in directory.rglob("*") if p.is_file()}
    assert out, f"nothing written in {directory}"
    return out


def test_the_fake_server_does_echo_the_password(echo_target):
    with socket.create_connection(("127.0.0.1", int(echo_target.read_text().split("127.0.0.1:")[1].split()[0]))) as sock:
        f = sock.makefile("rwb")
        f.readline()
        f.write(f"a LOGIN {USER} {quoted(PASSWORD)}\r\n".encode())
        f.flush()
        assert PASSWORD.encode() in f.readline()


def test_target_check_prints_no_password(echo_target, tmp_path):
    proc = mailharness("target", "check", str(echo_target), cwd=tmp_path)
    assert proc.returncode != 0
    assert "bad password" in proc.stdout + proc.stderr  # the refusal is shown, its password masked
    assert_clean({"stdout": proc.stdout, "stderr": proc.stderr})


def test_run_writes_no_password(echo_target, tmp_path):
    report_dir = tmp_path / "reports"
    proc = mailharness("run", "--target", str(echo_target), "--report-dir", str(report_dir), "-k", "pop3.dele", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "bad password" in proc.stdout + proc.stderr
    assert_clean({"stdout": proc.stdout, "stderr": proc.stderr, **files_of(report_dir)})


def test_seed_prints_no_password(echo_target, tmp_path):
    proc = mailharness("seed", "--target", str(echo_target), "--messages", "2", cwd=tmp_path)
    assert proc.returncode != 0
    assert "bad password" in proc.stdout + proc.stderr
    assert_clean({"stdout": proc.stdout, "stderr": proc.stderr})


@pytest.mark.slow
def test_load_writes_no_password(echo_target, tmp_path):
    report_dir = tmp_path / "load"
    scenario = tmp_path / "logins.yaml"
    scenario.write_text("description: users that only log in\nusers:\n"
                        "  pop3_keep: {weight: 1, think_time: {min: 0.2, max: 0.3}}\n"
                        "  imap_webmail: {weight: 1, think_time: {min: 0.2, max: 0.3}, headers: 5, actions_per_session: 1}\n")
    proc = mailharness("load", "--target", str(echo_target), "--scenario", str(scenario), "--users", "2", "--run-time", "3s",
                       "--stop-timeout", "1", "--report-dir", str(report_dir), cwd=tmp_path)
    files = files_of(report_dir)
    failures = next((text for name, text in files.items() if name.endswith("locust_failures.csv")), "")
    assert "bad password" in failures, (proc.stdout + proc.stderr)[-3000:]
    assert_clean({"stdout": proc.stdout, "stderr": proc.stderr, **files})


def test_tls_verify_false_is_a_warning_on_the_terminal_and_in_the_report(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: insecure\nimap: {url: 'imaps://127.0.0.1:1', tls_verify: false}\n"
                    "accounts: [{user: a, password: secret-123}]\n")
    checked = mailharness("target", "check", str(path), cwd=tmp_path)
    assert "warning: imap: tls_verify is false" in checked.stderr, checked.stderr
    proc = mailharness("run", "--target", str(path), "--report-dir", str(tmp_path / "r"), "-k", "imap.select", cwd=tmp_path)
    assert "warning: imap: tls_verify is false" in proc.stdout, proc.stdout[-2000:]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert any("tls_verify is false" in w for w in results["target"]["warnings"])
    assert "Warning: imap: tls_verify is false" in (tmp_path / "r" / "report.html").read_text()


@pytest.mark.slow
def test_set_up_client_writes_no_password(welcoming_target, tmp_path):
    report_dir = tmp_path / "reports"
    proc = mailharness("run", "--target", str(welcoming_target), "--report-dir", str(report_dir), "-k", "pop3.dele", cwd=tmp_path)
    files = files_of(report_dir)
    results = json.loads((report_dir / "results.json").read_text())
    assert results["tests"], proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "log in first, ***" in files[str(report_dir / "results.json")]  # the set-up client's error, masked
    assert_clean({"stdout": proc.stdout, "stderr": proc.stderr, **files})
