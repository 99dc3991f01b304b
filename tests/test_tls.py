"""TLS as production servers run it: the managed TLS target, target files with imaps/pop3s/tls/ca_file and a
client certificate, and certificate failures that say why and where.

One TLS Dovecot serves the whole module (tls_dovecot); certificate failures are shown against a tiny TLS
listener in this process, which needs no server at all.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from pathlib import Path

import pytest
import yaml

from harness.errors import ConfigError
from harness.sessions import IMAPSession, POP3Session, ProtocolError
from harness.targets.certificates import CertFiles
from harness.targets.managed_dovecot import ManagedDovecot
from harness.targets.target_file import load_target
from tests.test_cli import cli


@pytest.fixture(scope="module")
def tls_dovecot():
    with ManagedDovecot(accounts=4, tls=True) as dc:
        yield dc


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return path


# -- target files -------------------------------------------------------------------------------

def test_tls_keys_of_a_target_file(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    base = (f"name: x\nimap: {{url: 'imap://mail.example', starttls: true}}\nimaps: imaps://mail.example\n"
            f"pop3: pop3://mail.example\npop3s: pop3s://mail.example:1995\nca_file: {ca}\nclient_cert: {cert}\n"
            "accounts:\n  - {user: a, password: b}\n")
    t = load_target(write(tmp_path, base))
    assert (t.imap.scheme, t.imap.starttls) == ("imap", True) and t.imaps.port == 993
    assert t.starttls_endpoint("imap").port == 143 and not t.starttls_endpoint("imap").starttls
    assert t.implicit_tls_endpoint("pop3").port == 1995
    assert t.imap.client_certificate == (str(cert), None) and t.ca_file == str(ca)

    implicit = load_target(write(tmp_path, base + "tls: implicit\n"))
    assert (implicit.imap.url, implicit.pop3.url) == ("imaps://mail.example:993", "pop3s://mail.example:1995")
    assert implicit.starttls_endpoint("imap").url == "imap://mail.example:143"
    # what `target up` writes reads back the same
    again = tmp_path / "again.yaml"
    implicit.dump(again)
    written = yaml.safe_load(again.read_text())
    assert written["tls"] == "implicit" and written["ca_file"] == str(ca) and written["client_cert"] == str(cert)
    assert written["imap"] == {"url": "imap://mail.example:143", "starttls": True}
    reread = load_target(again)
    assert (reread.imap, reread.starttls_endpoint("imap")) == (implicit.imap, implicit.starttls_endpoint("imap"))

    starttls = load_target(write(tmp_path, "name: x\nimap: imap://mail.example\npop3: pop3://mail.example\n"
                                 "imaps: imaps://mail.example\ntls: starttls\naccounts:\n  - {user: a, password: b}\n"))
    assert starttls.imap.starttls and starttls.pop3.starttls and starttls.pop3.scheme == "pop3"


@pytest.mark.parametrize("extra, fragment", [
    ("tls: implicit\n", "tls: implicit: imap has no implicit-TLS endpoint; add imaps: imaps://HOST"),
    ("tls: sometimes\n", "tls"),
    ("client_key: /nonexistent/key.pem\n", "client_key: /nonexistent/key.pem does not exist"),
    ("imaps: imap://mail.example\n", "imaps: scheme 'imap' does not fit; use imaps://"),
])
def test_bad_tls_keys_are_named_with_their_line(tmp_path, extra, fragment):
    with pytest.raises(ConfigError) as info:
        load_target(write(tmp_path, "name: x\nimap: imap://mail.example\naccounts:\n  - {user: a, password: b}\n" + extra))
    assert fragment in str(info.value) and ":5:" in str(info.value), str(info.value)


# -- the managed TLS target ------------------------------------------------------------------------

def test_managed_tls_dovecot_refuses_plaintext_before_tls(tls_dovecot):
    t = tls_dovecot.target
    assert t.tls_mode == "implicit" and t.imap.tls and Path(t.ca_file).is_file()
    account = t.accounts[0]
    # Dovecot treats a connection from its own address as secure: come from another loopback address
    with IMAPSession("127.0.0.1", t.starttls_endpoint("imap").port, source="127.0.0.2") as plain:
        before = plain.capabilities()
        assert "STARTTLS" in before and "LOGINDISABLED" in before
        assert plain.command(f"LOGIN {account.user} {account.password}").status == "NO"
    with IMAPSession("127.0.0.1", t.starttls_endpoint("imap").port, starttls=True, ca_file=t.ca_file, source="127.0.0.2") as tls:
        assert "LOGINDISABLED" not in tls.capabilities()
        tls.login(account.user, account.password)
    with POP3Session("127.0.0.1", t.implicit_tls_endpoint("pop3").port, tls=True, ca_file=t.ca_file) as pop:
        pop.login(account.user, account.password)
    with POP3Session("127.0.0.1", t.starttls_endpoint("pop3").port, source="127.0.0.2") as plain:
        capa = plain.command("CAPA").lines
        assert b"STLS" in capa and b"USER" not in capa


def test_target_up_tls_writes_ca_file_and_verification_stays_on(tmp_path):
    state, written = tmp_path / "state", tmp_path / "t.yaml"
    up = cli("target", "up", "--tls", "starttls", "--accounts", "1", "--write", str(written), "--state-dir", str(state))
    try:
        assert up.returncode == 0, up.stderr
        data = yaml.safe_load(written.read_text())
        assert data["tls"] == "starttls" and Path(data["ca_file"]).is_file() and "tls_verify" not in data
        assert data["imap"]["starttls"] is True and data["imaps"].startswith("imaps://127.0.0.1:")
        check = cli("target", "check", str(written))
        assert check.returncode == 0 and "tls_verify" not in check.stderr, check.stdout + check.stderr
    finally:
        cli("target", "down", "--state-dir", str(state))


# -- certificates that must be refused --------------------------------------------------------------

class TlsListener:
    """A TLS server on 127.0.0.1 that greets like IMAP: enough for a client to verify (or refuse) its certificate."""

    def __init__(self, cert: Path, key: Path, *, require_client_cert: Path | None = None):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        if require_client_cert:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(require_client_cert)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"* OK ready\r\n")
                    tls.recv(100)
            except (OSError, ssl.SSLError):
                conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return CertFiles.make(tmp_path_factory.mktemp("good"))


@pytest.mark.parametrize("kind, reason", [
    ("expired", "certificate has expired"),
    ("wrong-host", "IP address mismatch"),
    ("self-signed", "self-signed certificate"),
])
def test_a_bad_certificate_fails_with_the_reason_and_the_endpoint(tmp_path, kind, reason):
    if kind == "expired":
        certs = CertFiles.make(tmp_path, expired=True)
    elif kind == "wrong-host":
        certs = CertFiles.make(tmp_path, ("mail.example.org",))
    else:
        certs = CertFiles.self_signed(tmp_path)
    listener = TlsListener(certs.cert, certs.key)
    try:
        with pytest.raises(ProtocolError) as info:
            IMAPSession("127.0.0.1", listener.port, tls=True, ca_file=str(certs.ca))
    finally:
        listener.close()
    message = str(info.value)
    assert f"imaps://127.0.0.1:{listener.port}" in message and reason in message, message


def test_tls_verify_false_accepts_what_verification_refuses(tmp_path):
    certs = CertFiles.self_signed(tmp_path)
    listener = TlsListener(certs.cert, certs.key)
    try:
        with IMAPSession("127.0.0.1", listener.port, tls=True, tls_verify=False) as session:
            assert session.greeting == "* OK ready"
    finally:
        listener.close()


def test_client_certificate_for_a_server_that_requires_one(tmp_path, good):
    listener = TlsListener(good.cert, good.key, require_client_cert=good.ca)
    try:
        with pytest.raises(ProtocolError, match=rf"imaps://127.0.0.1:{listener.port}"):
            # TLS 1.3: the refusal of a missing certificate comes after the handshake, with the first read
            IMAPSession("127.0.0.1", listener.port, tls=True, ca_file=str(good.ca))
        with IMAPSession("127.0.0.1", listener.port, tls=True, ca_file=str(good.ca),
                         client_cert=(str(good.client_cert), None)) as session:
            assert session.greeting == "* OK ready"
    finally:
        listener.close()


# -- the injection tests can fail ---------------------------------------------------------------------

def _run(target, tmp_path: Path, keyword: str) -> dict[str, str]:
    """`mailharness run` of the TLS suites against `target`; test id -> outcome."""
    path = tmp_path / "target.yaml"
    target.dump(path)
    proc = cli("run", "--target", str(path), "--suite", "suites/imap/starttls.yaml", "--suite", "suites/pop3/stls.yaml",
               "-k", keyword, "--report-dir", str(tmp_path / "report"))
    results = tmp_path / "report" / "results.json"
    assert results.exists(), proc.stdout + proc.stderr
    return {t["id"]: t["outcome"] for t in json.loads(results.read_text())["tests"]}


@pytest.mark.parametrize("faulty", [False, True], ids=["discards-injected", "executes-injected"])
def test_injection_tests_fail_against_a_server_that_executes_the_injected_command(tls_dovecot, tmp_path, faulty):
    """A STARTTLS front (tests/faultproxy.py) before the TLS Dovecot's cleartext ports: it drops what the client
    pipelined after STARTTLS/STLS, or, as the CVE-2011-0411 variant, runs it once TLS is up. (Dovecot itself
    passes the injection tests another way: it takes the pipelined bytes as TLS data and the handshake fails.)"""
    import dataclasses

    from tests.faultproxy import StartTlsFront

    target, certs = tls_dovecot.target, tls_dovecot.certs
    fronts = {}
    with contextlib.ExitStack() as stack:
        for proto, variant in (("imap", "imap-starttls-executes-injected"), ("pop3", "pop3-stls-executes-injected")):
            upstream = target.starttls_endpoint(proto)
            fronts[proto] = stack.enter_context(StartTlsFront(upstream.host, upstream.port, proto, certs.cert, certs.key,
                                                              variant if faulty else None))
        proxied = dataclasses.replace(target, cleartext={proto: dataclasses.replace(target.starttls_endpoint(proto), port=f.port)
                                                         for proto, f in fronts.items()})
        outcomes = _run(proxied, tmp_path, "injection" if faulty else "tls")
    if faulty:
        assert outcomes == {"imap.tls.starttls-injection": "failed", "pop3.tls.stls-injection": "failed"}
    else:
        # The front's upstream is Dovecot's cleartext port, which counts the front's connection (from its own
        # address) as secure: it offers cleartext LOGIN and USER, and a second STARTTLS starts its own TLS.
        # The checks of those behaviours fail at their level; the rest passes, the injected command dropped.
        assert outcomes == {
            "imap.tls.logindisabled-before-starttls": "warning", "imap.tls.login-refused-before-starttls": "skipped",
            "imap.tls.capability-after-starttls": "passed", "imap.tls.starttls-twice-refused": "warning",
            "imap.tls.starttls-after-login-refused": "passed", "imap.tls.implicit-greeting": "passed",
            "imap.tls.starttls-injection": "passed", "pop3.tls.no-user-before-stls": "behaviour",
            "pop3.tls.capa-after-stls": "passed", "pop3.tls.stls-twice": "behaviour",
            "pop3.tls.stls-after-login-refused": "passed", "pop3.tls.implicit-greeting": "passed",
            "pop3.tls.stls-injection": "passed",
        }, outcomes
    for front in fronts.values():
        assert not front.errors, front.errors
        assert bool(front.fired) is faulty, front.fired


def test_tls_suites_pass_against_the_embedded_tls_target(tls_dovecot, tmp_path):
    """CI runs every TLS test against the TLS Dovecot: each one runs (none skipped) and passes."""
    outcomes = _run(tls_dovecot.target, tmp_path, "tls")
    assert len(outcomes) == 13 and set(outcomes.values()) == {"passed"}, outcomes


def test_tls_suites_skip_with_the_reason_on_a_target_without_tls(target, tmp_path):
    outcomes = _run(target, tmp_path, "tls")
    assert set(outcomes.values()) == {"skipped"}, outcomes


@pytest.mark.slow
def test_whole_suite_passes_over_tls(tmp_path):
    """`mailharness run --tls` exits 0: every suite, its sessions over implicit TLS, against the embedded TLS target."""
    proc = cli("run", "--tls", "-n", "2", "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "PASS:" in proc.stdout and "implicit TLS for the sessions" in (tmp_path / "r" / "results.json").read_text()


@pytest.mark.slow
def test_sessions_over_starttls(tmp_path):
    """`tls: starttls` in the target file: the sessions upgrade imap:// and pop3:// with STARTTLS/STLS (IMAP session
    and POP3 leave-on-server tests, a fraction of the whole; the whole suite passes over STARTTLS too, issue 11)."""
    proc = cli("run", "--tls", "starttls", "-k", "imap.session or pop3.leave", "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    results = (tmp_path / "r" / "results.json").read_text()
    assert "STARTTLS for the sessions" in results and '"outcome": "passed"' in results


def test_seed_over_tls(tls_dovecot, tmp_path):
    """Seeding counts over IMAP and stores with LMTP, the counting connection over implicit TLS, verified."""
    path = tmp_path / "t.yaml"
    tls_dovecot.target.dump(path)
    proc = cli("seed", "--target", str(path), "--messages", "3", "--accounts", "3-4")
    assert proc.returncode == 0 and "6 added" in proc.stdout, proc.stdout + proc.stderr
    again = cli("seed", "--target", str(path), "--messages", "3", "--accounts", "3-4")
    assert again.returncode == 0 and "0 added" in again.stdout, again.stdout + again.stderr  # it counted them over TLS


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["webmail"])  # the POP3 users connect through the same load/wire.py Connection
def test_load_users_over_tls(tmp_path, scenario):
    state, path = tmp_path / "state", tmp_path / "t.yaml"
    up = cli("target", "up", "--tls", "--accounts", "6", "--write", str(path), "--state-dir", str(state))
    assert up.returncode == 0, up.stderr
    try:
        proc = cli("load", "--target", str(path), "--scenario", scenario, "--users", "4", "--spawn-rate", "4",
                   "--run-time", "8s", "--seed", "--report-dir", str(tmp_path / "load"))
        out = proc.stdout[-3000:] + proc.stderr[-2000:]
        run = json.loads((tmp_path / "load" / "run.json").read_text())
        # the users worked over TLS: logins and fetches, no failed request, no lost mail; a latency threshold
        # that a busy 2-core machine misses is not what this test is about
        # (a threshold breach is a problem too: a short run may see no attachment fetch at all, so only the others count)
        others = [p for p in run["problems"] if not p.startswith("threshold breached:")]
        assert "failures: 0" in proc.stdout and not others and run["locust_exit_code"] == 0, out
        assert run["request_counts"].get("IMAP LOGIN", 0) > 0 and run["request_counts"].get("IMAP FETCH headers", 0) > 0, out
        assert all(t["passed"] or "errors" not in t["rule"] for t in run["thresholds"]), out
        assert proc.returncode == 0 or not all(t["passed"] for t in run["thresholds"]), out
    finally:
        cli("target", "down", "--state-dir", str(state))


@pytest.mark.parametrize("test, fragment", [
    ("sessions: {n: {protocol: imap, login: false, connect: cleartext}}\n    steps: [{n: STARTTLS}]",
     "session n connects to the cleartext endpoint: the test needs `requires: {cleartext: {imap: [...]}}`"),
    ("sessions: {s: {protocol: pop3, login: false, connect: implicit-tls}}\n    steps: [{s: QUIT}]",
     "the test needs `requires: {implicit-tls: [pop3]}`"),
    ("sessions: {a: imap}\n    steps: [{a: NOOP, pipeline: [X NOOP], continue: abc}]", "pipeline: goes with a one-line command"),
    ("sessions: {a: imap}\n    steps: [{a: NOOP, when: {cleartext: {imap: [STARTTLS]}}}]",
     "when: cleartext is about the target's endpoints: put it in the test's requires"),
    ("sessions: {a: imap}\n    steps: [{a: {quiet: 1}, expect: OK}]", "expect: a quiet step does not check this"),
])
def test_tls_suite_keys_are_checked(tmp_path, test, fragment):
    from harness.engine.model import load_suite

    path = tmp_path / "s.yaml"
    path.write_text(f"suite: s\ntests:\n  - id: t.x\n    title: x\n    area: tls\n    rfc: [RFC2595 §3.1]\n    {test}\n")
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    assert fragment in str(info.value), str(info.value)
