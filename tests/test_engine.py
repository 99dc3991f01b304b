"""The suite engine end to end: YAML tests run against the real embedded Dovecot.

Tests written to fail check that the failure says what was expected, what came,
and where in the YAML; malformed files must name file, line and key.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from harness.engine.model import load_suite
from harness.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=cwd or ROOT, timeout=300
    )


def write_suite(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    """A suite file; `suite:` (what marks a YAML file as a suite) goes last, so line numbers stay as written."""
    text = textwrap.dedent(text).lstrip()
    if not re.search(r"^suite:", text, re.MULTILINE):
        text = text.rstrip("\n") + "\nsuite: a test suite\n"
    path = tmp_path / name
    path.write_text(text)
    return path


# -- malformed suites: file, line, key, no traceback ---------------------------------

MALFORMED = [
    ("unknown test key", """
        tests:
          - id: t.one
            title: x
            area: deletion
            rfc: [RFC1939 §6]
            sessions: {p: pop3}
            stesp: []
            steps: [{p: NOOP}]
        """, ":7:", "unknown key 'stesp'"),
    ("unknown area", """
        tests:
          - id: t.one
            title: x
            area: deleting
            rfc: [RFC1939 §6]
            sessions: {p: pop3}
            steps: [{p: NOOP}]
        """, ":4:", "area"),
    ("step names a session the test lacks", """
        tests:
          - id: t.one
            title: x
            area: deletion
            rfc: [RFC1939 §6]
            sessions: {p: pop3}
            steps:
              - p: STAT
              - q: STAT
        """, ":9:", "'q' is neither a session of this test (p)"),
    ("unknown corpus message", """
        tests:
          - id: t.one
            title: x
            area: deletion
            rfc: [RFC1939 §6]
            sessions: {p: pop3}
            setup: {INBOX: [plian]}
            steps: [{p: STAT}]
        """, ":7:", "no corpus message named 'plian'"),
    ("variable used before capture", """
        tests:
          - id: t.one
            title: x
            area: uid
            rfc: [RFC3501 §2.3.1.1]
            sessions: {a: imap}
            steps:
              - a: SELECT INBOX
              - a: UID FETCH $uid FLAGS
        """, ":9:", "$uid is used before any step captures it"),
    ("IMAP check on a POP3 session", """
        tests:
          - id: t.one
            title: x
            area: deletion
            rfc: [RFC1939 §6]
            sessions: {p: pop3}
            steps:
              - p: STAT
                untagged: ["* 1 EXISTS"]
        """, ":9:", "untagged: only for IMAP sessions"),
    ("YAML syntax", """
        tests:
          - id: t.one
            title: [unclosed
        """, ":", "YAML syntax error"),
    ("duplicate id", """
        tests:
          - {id: t.one, title: x, area: deletion, rfc: [RFC1939 §6], sessions: {p: pop3}, steps: [{p: STAT}]}
          - {id: t.one, title: y, area: deletion, rfc: [RFC1939 §6], sessions: {p: pop3}, steps: [{p: STAT}]}
        """, ":3:", "duplicate test id 't.one' (first at line 2)"),
    ("check a step never evaluates", """
        tests:
          - id: t.one
            title: x
            area: notification
            rfc: [RFC2177]
            sessions: {a: imap}
            steps:
              - a: {idle: start}
                untagged: ["* 1 EXISTS"]
        """, ":9:", "untagged: an idle start step does not check this"),
    ("second account's variables need accounts: 2", """
        tests:
          - id: t.one
            title: x
            area: auth
            rfc: [RFC3501 §6.2.3]
            sessions: {a: {protocol: imap, login: false}}
            steps:
              - a: LOGIN $user2 $password2
        """, ":8:", "$user2 is used before any step captures it"),
    ("empty await", """
        tests:
          - id: t.one
            title: x
            area: notification
            rfc: [RFC2177]
            sessions: {a: imap}
            steps:
              - a: {await: []}
        """, ":8:", "await"),
    ("a POP3 message number in an IMAP step", """
        tests:
          - id: t.one
            title: x
            area: retrieval
            rfc: [RFC3501 §6.4.5]
            sessions: {a: imap}
            steps:
              - a: FETCH ${msg:plain} (FLAGS)
        """, ":8:", "${msg:plain}: a message number is a POP3 notion"),
    ("a POP3 message number of no corpus message", """
        tests:
          - id: t.one
            title: x
            area: retrieval
            rfc: [RFC1939 §5]
            sessions: {p: pop3}
            steps:
              - p: RETR ${msg:plian}
        """, ":8:", "${msg:plian}: no corpus message named 'plian'"),
    ("added fields allowed on a range", """
        tests:
          - id: t.one
            title: x
            area: retrieval
            rfc: [RFC3501 §6.4.5]
            sessions: {a: imap}
            steps:
              - a: FETCH 1 (BODY.PEEK[]<0.10>)
                fetch: {"BODY[]<0>": {message: plain, partial: [0, 10], added_fields: allowed}}
        """, ":9:", "added_fields: allowed compares a whole message or its HEADER"),
    ("bad rfc reference", """
        tests:
          - {id: t.one, title: x, area: deletion, rfc: [rfc-1939], sessions: {p: pop3}, steps: [{p: STAT}]}
        """, ":2:", "rfc"),
]


@pytest.mark.parametrize("label, text, line, fragment", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_suite_names_file_line_and_problem(tmp_path, label, text, line, fragment):
    path = write_suite(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    message = str(info.value)
    assert message.startswith(f"{path}{line}"), message
    assert fragment in message, message


def test_unquoted_no_is_a_status_and_fetch_captures_count(tmp_path):
    path = write_suite(tmp_path, """
        tests:
          - id: t.one
            title: x
            area: flags
            rfc: [RFC3501 §6.4.5]
            sessions: {a: imap}
            steps:
              - a: SELECT ${mbox:Nonexistent}
                expect: NO
              - a: FETCH 1 (UID)
                expect: [OK, NO]
                fetch: {UID: "$u"}
              - a: UID FETCH $u FLAGS
        """)
    steps = load_suite(path)[0].steps
    assert str(steps[0].expect[0]) == "NO"


def test_examples_validate():
    specs = load_suite(ROOT / "examples" / "basics.yaml")
    assert [s.protocol for s in specs] == ["pop3", "imap", "pop3+imap"]


def test_malformed_suite_via_cli_exits_2_without_traceback(tmp_path, target_file):
    path = write_suite(tmp_path, MALFORMED[2][1])
    proc = run_cli("run", "--target", str(target_file), "--suite", str(path), "--report-dir", str(tmp_path / "r"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert f"{path}:9:" in out
    assert "Traceback" not in out


# -- passing and failing runs -------------------------------------------------------

def test_examples_pass_with_two_workers(tmp_path, target_file):
    report = tmp_path / "report"
    proc = run_cli("run", "--target", str(target_file), "--suite", "examples/", "-n", "2", "--report-dir", str(report),
                   "--durations", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((report / "results.json").read_text())
    assert results["summary"]["passed"] == 3, results["summary"]
    idle = next(t for t in results["tests"] if t["id"] == "example.imap.idle-sees-append")
    assert 0 <= idle["metrics"]["notify_latency_s"] < 3
    # --durations: where each test's time went; the IDLE test's wait for its notification is a wait
    for test in results["tests"]:
        assert set(test["phases"]) >= {"setup", "connect", "steps", "cleanup"}, test["phases"]
        assert abs(sum(test["phases"].values()) - test["duration_s"]) < 0.1, (test["phases"], test["duration_s"])
    assert idle["phases"]["waits"] >= idle["metrics"]["notify_latency_s"] - 0.05, idle
    assert "time by phase (3 tests" in proc.stdout and "slowest 2 tests" in proc.stdout, proc.stdout
    assert results["timings"]["target_start_s"] >= 0
    assert (report / "junit.xml").exists() and (report / "report.html").exists()
    for test in results["tests"]:
        # every test logged in, and the transcript shows the login with the password masked
        assert "PASS ***" in test["transcript"] or "LOGIN user" in test["transcript"] and "***" in test["transcript"], test["id"]
    password = next(iter(target_passwords(target_file)))
    for name in ("results.json", "junit.xml", "report.html"):
        assert password not in (report / name).read_text(), name


def target_passwords(target_file: Path) -> set[str]:
    from harness.targets.target_file import load_target

    return load_target(target_file).passwords


FAILING = """
    tests:
      - id: fail.count
        title: wrong expected message count
        area: deletion
        rfc: [RFC1939 §5]
        sessions: {p: pop3}
        setup: {INBOX: [plain, plain-long]}
        steps:
          - p: STAT
            expect: "+OK 3 $octets"
            why: two messages were stored
      - id: fail.untagged
        title: missing untagged response
        area: notification
        rfc: [RFC3501 §7.3.1]
        sessions: {a: imap}
        setup: {INBOX: [plain]}
        steps:
          - a: SELECT INBOX
            untagged: ["* 5 EXISTS"]
      - id: fail.bytes
        title: wrong bytes
        area: partial-fetch
        rfc: [RFC3501 §6.4.5]
        sessions: {a: imap}
        setup: {INBOX: [multipart-alternative]}
        steps:
          - a: SELECT INBOX
          - a: FETCH 1 (BODY.PEEK[1])
            fetch:
              "BODY[1]": {message: multipart-alternative, section: "2"}
      - id: fail.await
        title: nothing arrives
        area: notification
        rfc: [RFC2177]
        sessions: {a: imap}
        steps:
          - a: SELECT INBOX
          - a: {idle: start}
          - a: {await: ["* 1 EXISTS"], within: 0.5}
      - id: pass.after.failures
        title: the run goes on after failures
        area: deletion
        rfc: [RFC1939 §5]
        sessions: {p: pop3}
        steps:
          - p: STAT
            expect: "+OK 0 0"
"""


def test_failures_say_expected_got_and_where(tmp_path, target_file):
    path = write_suite(tmp_path, FAILING)
    report = tmp_path / "report"
    proc = run_cli("run", "-n", "2", "--target", str(target_file), "--suite", str(path), "--report-dir", str(report))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    results = json.loads((report / "results.json").read_text())
    by_id = {t["id"]: t for t in results["tests"]}
    assert by_id["pass.after.failures"]["outcome"] == "passed"
    for test in results["tests"]:  # with workers too, a message starts with what went wrong, not xdist's "[gw1] linux ..."
        assert test["outcome"] == "passed" or test["message"].startswith("step "), test["message"][:200]

    count = by_id["fail.count"]
    assert count["outcome"] == "failed"
    assert count["failure"]["line"] == 9 and count["failure"]["step"] == "p: STAT"
    assert count["failure"]["expected"] == "`+OK 3 $octets`"
    assert count["failure"]["got"].startswith("+OK 2 ")
    assert f"{path}:9" in count["message"] and "two messages were stored" in count["message"]

    untagged = by_id["fail.untagged"]
    assert "`* 5 EXISTS`" in untagged["failure"]["expected"]
    assert "* 1 EXISTS" in untagged["failure"]["got"]

    wrong = by_id["fail.bytes"]["failure"]
    assert "multipart-alternative section 2" in wrong["expected"]
    assert "first difference at offset" in wrong["got"]

    waited = by_id["fail.await"]
    assert "within 0.5 s" in waited["failure"]["expected"]
    assert waited["duration_s"] < 5
    # the terminal shows the failure with its location too
    assert f"{path}:9" in proc.stdout


# -- a hung or garbage-spewing server fails its test, not the run ---------------------

class MisbehavingProxy:
    """Forwards POP3 lines to the real server, but hangs on DELE and spews garbage on NOOP."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket):
        server = socket.create_connection(self.upstream)
        threading.Thread(target=self._pump, args=(server, client), daemon=True).start()
        buf = b""
        try:
            while chunk := client.recv(4096):
                buf += chunk
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    verb = line.split(b" ")[0].upper()
                    if verb == b"DELE":
                        continue  # never answer
                    if verb == b"NOOP":
                        self._spew(client)
                        return
                    server.sendall(line + b"\r\n")
        except OSError:
            pass

    @staticmethod
    def _spew(client: socket.socket):
        try:
            while True:
                client.sendall(b"\x00garbage" * 8192)
        except OSError:
            pass

    @staticmethod
    def _pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass

    def close(self):
        self.listener.close()


def test_hung_and_garbage_servers_fail_their_test_within_the_timeout(tmp_path, target):
    proxy = MisbehavingProxy((target.pop3.host, target.pop3.port))
    proxied = replace(target, pop3=replace(target.pop3, port=proxy.port))
    target_path = tmp_path / "target.yaml"
    proxied.dump(target_path)
    suite = write_suite(tmp_path, """
        defaults: {area: deletion, rfc: [RFC1939 §6], sessions: {p: pop3}, setup: {INBOX: [plain]}}
        tests:
          - id: hang.dele
            title: server never answers DELE
            steps: [{p: DELE 1, timeout: 1}]
          - id: garbage.noop
            title: server spews garbage
            steps: [{p: NOOP, timeout: 1}]
          - id: still.runs
            title: later tests still run
            steps: [{p: STAT}]
        """)
    report = tmp_path / "report"
    try:
        proc = run_cli("run", "--target", str(target_path), "--suite", str(suite), "--report-dir", str(report))
    finally:
        proxy.close()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    by_id = {t["id"]: t for t in json.loads((report / "results.json").read_text())["tests"]}
    assert by_id["hang.dele"]["outcome"] == "failed"
    assert "no response to `DELE 1` within 1" in by_id["hang.dele"]["message"]
    assert by_id["hang.dele"]["duration_s"] < 5
    assert by_id["garbage.noop"]["outcome"] == "failed"
    assert by_id["garbage.noop"]["duration_s"] < 5
    assert by_id["still.runs"]["outcome"] == "passed"


FEATURES = """
    defaults: {area: partial-fetch, rfc: [RFC3516], sessions: {a: imap}}
    tests:
      - id: feature.binary-decode
        title: BINARY content compared with the decoded corpus part
        requires: {imap: [BINARY]}
        setup: {INBOX: [attachment]}
        steps:
          - a: SELECT INBOX
          - a: FETCH 1 (BINARY.PEEK[2] FLAGS)
            fetch:
              "BINARY[2]": {message: attachment, section: "2", decode: true}
              FLAGS: "(...)"
            absent: ["* 1 FETCH (...\\\\Seen...)"]
      - id: feature.literal-date-dollar
        title: literals in commands, APPEND dates, $$ keywords, regex captures
        steps:
          - a: {append: eight-bit, date: "01-Jan-2024 10:00:00 +0000"}
          - a: SELECT INBOX
          - a: STORE 1 +FLAGS ($$Forwarded)
          - a: FETCH 1 (INTERNALDATE FLAGS)
            untagged: ['re:\\* 1 FETCH \\(INTERNALDATE "(?P<date>01-Jan-2024 10:00:00 \\+0000)" FLAGS \\((?P<flags>[^)]*)\\)\\)']
            fetch: {FLAGS: "(...$$Forwarded...)"}
          - a: SEARCH CHARSET UTF-8 SUBJECT ${literal:Grüße}
            untagged: ["* SEARCH 1"]
          - a: SEARCH SENTON $date
            expect: [OK, BAD]
"""


def test_engine_features_against_dovecot(tmp_path, target_file):
    path = write_suite(tmp_path, FEATURES)
    report = tmp_path / "report"
    proc = run_cli("run", "--target", str(target_file), "--suite", str(path), "--report-dir", str(report))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outcomes = {t["id"]: t["outcome"] for t in json.loads((report / "results.json").read_text())["tests"]}
    assert outcomes == {"feature.binary-decode": "passed", "feature.literal-date-dollar": "passed"}


def test_passwords_with_spaces_quotes_and_non_ascii_log_in(tmp_path, dovecot):
    """$user/$password go into IMAP commands as astrings, so odd passwords still log in."""
    from harness.targets.target_file import Account

    odd = [Account("odd1", 'pa ss"w\\rd'), Account("odd2", "pässwört")]
    dovecot.add_accounts(odd)
    target_path = tmp_path / "odd.yaml"
    replace(dovecot.target, accounts=odd).dump(target_path)
    suite = write_suite(tmp_path, """
        defaults: {area: auth, rfc: [RFC3501 §6.2.3], sessions: {n: {protocol: imap, login: false}}}
        tests:
          - id: odd.login
            title: LOGIN with a password that needs quoting or a literal
            steps:
              - n: LOGIN $user $password
              - n: SELECT INBOX
          - id: odd.pop3
            title: POP3 PASS takes the rest of the line
            sessions: {p: pop3}
            steps:
              - p: STAT
        """)
    proc = run_cli("run", "-n", "2", "--target", str(target_path), "--suite", str(suite), "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = (tmp_path / "r" / "results.json").read_text()
    for account in odd:
        assert account.password not in report and json.dumps(account.password)[1:-1] not in report


def test_validate_reports_ids_repeated_across_files(tmp_path):
    text = (ROOT / "examples" / "basics.yaml").read_text()
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text(text)
    proc = run_cli("validate", str(tmp_path))
    assert proc.returncode == 2
    assert f"{tmp_path / 'b.yaml'}:" in proc.stderr and "duplicate test id 'example.pop3.dele-commits-at-quit'" in proc.stderr


def test_a_setup_error_reads_as_one_sentence_not_a_traceback(tmp_path, target):
    """A server that acknowledges DELETE but keeps the folder leaves the next test's account dirty:
    that test is an error whose message says why, with no pytest internals in it."""
    from tests.faultproxy import proxied_target

    suite = write_suite(tmp_path, """
        defaults: {area: folders, rfc: [RFC3501 §6.3.4], sessions: {a: imap}}
        tests:
          - id: leftover.create
            title: creates a folder that clean-up cannot remove
            steps: [{a: "CREATE ${mbox:Leftover}"}]
          - id: leftover.next
            title: needs an empty account
            steps: [{a: NOOP}]
        """)
    one_account = replace(target, accounts=target.accounts[-1:])
    with proxied_target(one_account, imap_fault="imap-delete-ignored") as proxied:
        proxied.dump(tmp_path / "t.yaml")
        proc = run_cli("run", "-n", "0", "--target", str(tmp_path / "t.yaml"), "--suite", str(suite),
                       "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    by_id = {t["id"]: t for t in json.loads((tmp_path / "r" / "results.json").read_text())["tests"]}
    assert by_id["leftover.create"]["outcome"] == "passed", by_id["leftover.create"].get("message")
    second = by_id["leftover.next"]
    assert second["outcome"] == "error"
    assert second["message"].startswith("setup failed: could not empty account"), second["message"]
    assert "folder Leftover" in second["message"]
    assert "Traceback" not in second["message"] and "_pytest" not in second["message"]
    assert "setup failed: could not empty account" in proc.stdout


def test_a_target_that_cannot_store_mail_is_a_configuration_error(tmp_path, target):
    """Set-up stores mail over IMAP, or delivers it over LMTP/SMTP: with neither, the run stops at once (exit 2)."""
    replace(target, imap=None, lmtp=None).dump(tmp_path / "pop-only.yaml")
    proc = run_cli("run", "--target", str(tmp_path / "pop-only.yaml"), "-k", "pop3.dele", "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "has neither an imap: endpoint nor lmtp:/smtp:" in proc.stderr and "Traceback" not in proc.stderr


# -- capability-gated checks (`when:`) and the personal namespace -------------------------

def test_when_applies_checks_only_where_the_server_has_the_capability(tmp_path, target_file):
    suite = write_suite(tmp_path, """
        defaults: {area: uid, rfc: [RFC4315 §3], sessions: {a: imap}}
        tests:
          - id: when.absent-capability
            title: the checks of a step whose capability is missing are not applied, and the result says so
            steps:
              - a: {append: plain}
                when: {imap: [X-NO-SUCH-EXTENSION]}
                expect: "OK [X-NEVER-SENT]"
                untagged: ["* 99 EXISTS"]
          - id: when.present-capability
            title: with the capability advertised, the step's checks apply (and this one is wrong)
            steps:
              - a: {append: plain}
                when: {imap: [UIDPLUS]}
                expect: "OK [APPENDUID 1 999999] ..."
        """)
    proc = run_cli("run", "-n", "0", "--target", str(target_file), "--suite", str(suite), "--report-dir", str(tmp_path / "r"))
    by_id = {t["id"]: t for t in json.loads((tmp_path / "r" / "results.json").read_text())["tests"]}
    assert by_id["when.present-capability"]["outcome"] == "failed", proc.stdout + proc.stderr
    absent = by_id["when.absent-capability"]
    assert absent["outcome"] == "passed", absent.get("message")
    assert "lacks IMAP X-NO-SUCH-EXTENSION" in absent["unchecked"][0]
    assert "only the status" in absent["transcript"]


def test_mailbox_names_go_on_the_wire_in_the_servers_namespace(tmp_path, target_file):
    """On the embedded target (prefix "", "/") the names are the suite's; a nested name keeps its "/"."""
    suite = write_suite(tmp_path, """
        defaults: {area: folders, rfc: [RFC3501 §6.3.3], sessions: {a: imap}}
        tests:
          - id: mbox.on-the-wire
            title: ${mbox:...} in commands, patterns, set-up and append
            setup: {Projects/Alpha: [plain]}
            steps:
              - a: CREATE ${mbox:Old Mail}
              - a: {append: attachment, mailbox: Old Mail}
              - a: LIST "" ${mbox:Projects/%}
                untagged: ["* LIST (...) ... ${mbox:Projects/Alpha}"]
                only: true
              - a: STATUS ${mbox:Old Mail} (MESSAGES)
                untagged: ["* STATUS ${mbox:Old Mail} (MESSAGES 1)"]
              - a: {append: plain, mailbox: \\Sent}
              - a: STATUS ${mbox:\\Sent} (MESSAGES)
                untagged: ['* STATUS ${mbox:\\Sent} (MESSAGES 1)']
        """)
    proc = run_cli("run", "-n", "0", "--target", str(target_file), "--suite", str(suite), "--report-dir", str(tmp_path / "r"))
    test = json.loads((tmp_path / "r" / "results.json").read_text())["tests"][0]
    assert test["outcome"] == "passed", test.get("message", "") + proc.stdout
    assert 'CREATE "Old Mail"' in test["transcript"]
    assert 'LIST "" "Projects/%"' in test["transcript"]
    assert "\\Sent is Sent" in test["transcript"]  # found by attribute, not by name


def test_skip_if_ends_a_test_as_skipped_never_passed_or_failed(tmp_path, target_file):
    """A legal refusal that leaves nothing to check (IMAP refused while POP3 holds an mbox lock) skips the test."""
    path = write_suite(tmp_path, """
        suite: skip_if
        tests:
          - id: skip.on-refusal
            title: x
            area: cross-protocol
            rfc: [RFC3501 §6.3.1]
            sessions: {a: imap}
            steps:
              - a: SELECT ${mbox:Nonexistent-Folder}
                skip_if: NO
              - a: FETCH 1 (UID)
                untagged: ["* 99 FETCH (UID 1)"]
          - id: skip.not-taken
            title: y
            area: cross-protocol
            rfc: [RFC3501 §6.3.1]
            sessions: {a: imap}
            steps:
              - a: SELECT INBOX
                skip_if: NO
              - a: NOOP
                untagged: ["* 99 EXISTS"]
        """)
    report = tmp_path / "report"
    proc = run_cli("run", "--target", str(target_file), "--suite", str(path), "--report-dir", str(report))
    by_id = {t["id"]: t for t in json.loads((report / "results.json").read_text())["tests"]}
    skipped = by_id["skip.on-refusal"]
    assert skipped["outcome"] == "skipped", skipped
    assert "step 1 `a: SELECT Nonexistent-Folder`" in skipped["message"] and "skip_if: NO" in skipped["message"]
    assert by_id["skip.not-taken"]["outcome"] == "failed", "skip_if must not hide what follows when the answer is OK"
    assert proc.returncode == 1
