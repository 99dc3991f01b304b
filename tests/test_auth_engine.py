"""Suites that authenticate: `continue:` lines for "+" requests, ${sasl:...}/${apop:...} tokens, and
requirements gated on the mechanisms a server lists before login. Scripted servers play the
misbehaviour (echoed secrets, reused APOP timestamps, exchanges that end early) a real one will not."""

from __future__ import annotations

import base64
import hashlib
import re
import textwrap
from pathlib import Path

import pytest

from harness.engine import credentials, runner
from harness.engine.model import load_suite
from harness.engine.plugin import advertises
from harness.engine.runner import StepFailure
from harness.errors import ConfigError
from harness.sessions.transcript import Transcript
from harness.targets.target_file import Account, Endpoint, Target
from tests.test_sessions import _lines, scripted_server

ALICE = Account("alice", "s3cret pass")
BOB = Account("bob", "hunter2")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_suite(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(text).lstrip() + "suite: auth engine\n")  # last, so line numbers stay
    return path


# -- tokens ---------------------------------------------------------------------------------------

def test_sasl_and_apop_tokens_expand_from_the_accounts_and_greeting():
    accounts = [ALICE, BOB]
    assert credentials.expand("AUTHENTICATE PLAIN ${sasl:plain}", accounts) == "AUTHENTICATE PLAIN " + b64("\0alice\0s3cret pass")
    assert credentials.expand("${sasl:user2} ${sasl:password2}", accounts) == f"{b64('bob')} {b64('hunter2')}"
    assert credentials.expand("${sasl:plain-wrong}", accounts) == b64("\0alice\0wrong-s3cret pass")
    greeting = "+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>"
    # RFC 1939 §7's example: the digest of the timestamp followed by the secret
    expected = hashlib.md5(b"<1896.697170952@dbc.mtview.ca.us>hunter2").hexdigest()
    assert credentials.expand("APOP bob ${apop:password2}", accounts, greeting) == f"APOP bob {expected}"
    assert credentials.expand("$user ${size:plain}", accounts) == "$user ${size:plain}"  # not ours: left alone
    with pytest.raises(credentials.CredentialError, match="no APOP timestamp"):
        credentials.expand("${apop:password}", accounts, "+OK ready")
    with pytest.raises(credentials.CredentialError, match="only 2 account"):
        credentials.expand("${sasl:plain3}", accounts)
    forms = credentials.sasl_forms(ALICE)
    assert b64("\0alice\0s3cret pass") in forms and b64("s3cret pass").rstrip("=") in forms


MALFORMED = [
    ("unknown sasl form", "- n: AUTHENTICATE PLAIN ${sasl:plian}", ":8:", "${sasl:plian}: unknown form"),
    ("-wrong on the user name", "- n: AUTHENTICATE LOGIN ${sasl:user-wrong}", ":8:", "-wrong goes with a password"),
    ("account the test lacks", "- n: AUTHENTICATE PLAIN ${sasl:plain2}", ":8:", "${sasl:plain2} uses account 2 but the test has accounts: 1"),
    ("apop on imap", "- n: XAPOP ${apop:password}", ":8:", "is a POP3 digest"),
    ("token in a continue line", "- n: AUTHENTICATE PLAIN\n  continue: ['${sasl:nope}']", ":9:", "${sasl:nope}"),
    ("variable in a continue line", "- n: AUTHENTICATE PLAIN\n  continue: $later", ":9:", "$later is used before"),
    ("continue on an idle step", "- n: {idle: start}\n  continue: x", ":9:", "continue: an idle start step does not check this"),
]


@pytest.mark.parametrize("label, step, line, fragment", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_credential_steps_name_file_line_and_problem(tmp_path, label, step, line, fragment):
    path = write_suite(tmp_path, textwrap.dedent("""
        tests:
          - id: t.one
            title: x
            area: auth
            rfc: [RFC4959]
            sessions: {n: {protocol: imap, login: false}}
            steps:
        """) + textwrap.indent(step, "      ") + "\n")
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    assert str(info.value).startswith(f"{path}{line}") and fragment in str(info.value), str(info.value)


def test_requirements_use_the_capabilities_listed_before_login():
    probe = {
        "imap_capabilities": ["IMAP4REV1", "IDLE"],  # after login: no AUTH= any more
        "imap_capabilities_before_login": ["IMAP4REV1", "SASL-IR", "AUTH=PLAIN"],
        "pop3_capabilities": ["UIDL", "TOP"],
        "pop3_capa_before_login": ["UIDL", "USER", "SASL PLAIN LOGIN"],
    }
    assert advertises(probe, "imap", "auth=plain") and advertises(probe, "imap", "IDLE")
    assert not advertises(probe, "imap", "AUTH=CRAM-MD5")
    assert advertises(probe, "pop3", "SASL") and advertises(probe, "pop3", "SASL LOGIN")
    assert advertises(probe, "pop3", "sasl plain") and advertises(probe, "pop3", "TOP")
    assert not advertises(probe, "pop3", "SASL CRAM-MD5") and not advertises(probe, "pop3", "UIDL PLAIN")


# -- runs against scripted servers ------------------------------------------------------------------

def _spec(tmp_path: Path, steps: str, protocol: str = "imap", accounts: int = 1):
    path = write_suite(tmp_path, textwrap.dedent(f"""
        tests:
          - id: t.auth
            title: x
            area: auth
            rfc: [RFC4959]
            accounts: {accounts}
            sessions: {{n: {{protocol: {protocol}, login: false}}}}
            steps:
        """) + textwrap.indent(textwrap.dedent(steps).strip(), "      ") + "\n")
    return load_suite(path)[0]


def _run(spec, port: int, protocol: str = "imap", accounts=(ALICE,)) -> tuple[StepFailure | None, Transcript]:
    target = Target("scripted", list(accounts), **{protocol: Endpoint(protocol, "127.0.0.1", port)})
    transcript = Transcript(secrets=[a.password for a in accounts])
    try:
        runner.TestRun(spec, target, list(accounts), transcript, timeout=2).run()
    except StepFailure as failure:
        return failure, transcript
    return None, transcript


def _echoing_imap(conn, stop):
    """Answers every command BAD, quoting it, and every SASL line too: a server that echoes secrets."""
    conn.sendall(b"* OK ready\r\n")
    tag = b"*"
    for line in _lines(conn):
        words = line.split()
        if len(words) > 1 and words[1].upper() == b"AUTHENTICATE" and len(words) == 3:
            tag = words[0]
            conn.sendall(b"+ \r\n")
        elif tag != b"*":
            conn.sendall(tag + b" NO unknown user in " + line.strip() + b"\r\n")
            tag = b"*"
        elif words:
            conn.sendall(words[0] + b" BAD what is " + line.strip() + b"\r\n")


def test_sasl_secrets_never_appear_in_transcripts_or_failures(tmp_path):
    spec = _spec(tmp_path, """
        - n: AUTHENTICATE PLAIN ${sasl:plain}
          expect: BAD
        - n: AUTHENTICATE PLAIN
          continue: ${sasl:plain-wrong}
          expect: "NO"
        - n: AUTHENTICATE LOGIN
          continue: ${sasl:password}
        """)
    with scripted_server(_echoing_imap) as port:
        failure, transcript = _run(spec, port)
    assert failure is not None and failure.step.index == 3
    shown = transcript.redact(str(failure)) + transcript.render()
    assert "what is A0001 AUTHENTICATE PLAIN ***" in shown and "unknown user in ***" in shown, shown
    for secret in credentials.sasl_forms(ALICE) + [ALICE.password]:
        assert secret not in shown


def _pop3_server(greetings: list[bytes], answers: dict[bytes, list[bytes]]):
    """A POP3 server for len(greetings) connections; `answers`: verb -> lines, sent one per client line."""
    import socket
    import threading
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        for greeting in greetings:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(greeting)
                queue: list[bytes] = []
                for line in _lines(conn):
                    verb = line.split()[0].upper() if line.split() else b""
                    if not queue:
                        queue = list(answers.get(verb, [b"-ERR no\r\n"]))
                    conn.sendall(queue.pop(0))
                    if verb == b"QUIT":
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_apop_timestamp_repeated_in_a_later_greeting_fails(tmp_path):
    spec = _spec(tmp_path, """
        - n: APOP $user ${apop:password}
          expect: +OK
        - n: QUIT
        - n: APOP $user ${apop:password}
          expect: +OK
        """, protocol="pop3")
    same = b"+OK ready <1.2@host>\r\n"
    listener, _ = _pop3_server([same, same], {b"APOP": [b"+OK in\r\n"], b"QUIT": [b"+OK bye\r\n"]})
    with listener:
        failure, _ = _run(spec, listener.getsockname()[1], "pop3")
    assert failure is not None and failure.step.index == 3
    assert "not used in an earlier greeting (RFC 1939 §7)" in failure.expected and "<1.2@host>" in failure.got
    fresh = [b"+OK ready <1.2@host>\r\n", b"+OK ready <1.3@host>\r\n"]
    listener, _ = _pop3_server(fresh, {b"APOP": [b"+OK in\r\n"], b"QUIT": [b"+OK bye\r\n"]})
    with listener:
        failure, transcript = _run(spec, listener.getsockname()[1], "pop3")
    assert failure is None, failure
    digest = hashlib.md5(b"<1.3@host>" + ALICE.password.encode()).hexdigest()
    assert "APOP alice ***" in transcript.render() and digest not in transcript.render()


def test_an_exchange_that_ends_before_every_continue_line_was_asked_for_fails(tmp_path):
    spec = _spec(tmp_path, """
        - n: AUTH LOGIN
          continue: ["${sasl:user}", "${sasl:password}"]
          expect: +OK
        """, protocol="pop3")
    # the server logs in after the user name alone: a LOGIN exchange that never asked for the password
    listener, _ = _pop3_server([b"+OK ready\r\n"], {b"AUTH": [b"+ VXNlcm5hbWU6\r\n", b"+OK in\r\n"]})
    with listener:
        failure, _ = _run(spec, listener.getsockname()[1], "pop3")
    assert failure is not None
    assert failure.expected.startswith("2 continuation request(s)") and failure.got.startswith("1 before the answer: +OK in")


def test_a_continuation_the_step_has_no_line_for_fails_the_step(tmp_path):
    """SASL-IR sent, and the server asks again with "+": the initial response was ignored."""
    spec = _spec(tmp_path, """
        - n: AUTHENTICATE PLAIN ${sasl:plain}
        """)

    def script(conn, stop):
        conn.sendall(b"* OK ready\r\n")
        for line in _lines(conn):
            conn.sendall(b"+ \r\n" if b"AUTHENTICATE" in line else line.split()[0] + b" OK\r\n")

    with scripted_server(script) as port:
        failure, _ = _run(spec, port)
    assert failure is not None and re.search(r"unexpected continuation request `\+ ?`", failure.got), failure.got


# -- SHOULD and MAY checks: legal servers that differ (fault-proxy variants) get warning / behaviour ------

@pytest.mark.slow
@pytest.mark.parametrize("variant, outcomes", [
    ("imap-unknown-mechanism-bad", {"imap.auth.authenticate-unknown-mechanism-refused": "warning"}),
    ("imap-no-capability-code", {"imap.auth.capability-code-after-authenticate": "behaviour",
                                 "imap.auth.capability-after-authenticate": "passed"}),
    ("pop3-bare-auth-refused", {"pop3.auth.bare-auth-lists-mechanisms": "behaviour",
                                "pop3.auth.bare-auth-answer-well-formed": "passed"}),
])
def test_should_and_may_checks_report_their_level(variant, outcomes, target, tmp_path):
    """Each SHOULD/MAY check of the auth suites can fire: against a server that differs legally it reports
    warning or behaviour, never failed, and the MUST tests beside it still pass."""
    from tests.faultproxy import proxied_target
    from tests.test_suites_catch_faults import _run_suites

    with proxied_target(target, fault=variant) as proxied:
        tests, output = _run_suites(proxied, tmp_path, " or ".join(outcomes))
        fired = list(proxied.proxies[variant.split("-")[0]].fired)
    assert fired, f"{variant} never had a chance:\n{output}"
    assert {t["id"]: t["outcome"] for t in tests} == outcomes, output
