"""Never PASS for what did not run (issue 10 item 1).

A malformed suite, no matching test, --collect-only, an unusable target, Ctrl-C or SIGTERM: the run's
verdict is `error` or `incomplete`, the exit code is not 0, and results.json, junit.xml and report.html
are still written, saying why in one sentence and how many tests ran of how many were collected.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_signals import sigint_as_in_a_terminal

ROOT = Path(__file__).resolve().parent.parent

QUICK = """
  - id: t.quick
    title: quick
    area: session
    rfc: [RFC1939 §5]
    sessions: {p: pop3}
    steps: [{p: STAT}]
"""

SUITE = "tests:" + QUICK + """
  - id: t.slow
    title: slow
    area: session
    rfc: [RFC1939 §5]
    sessions: {p: pop3}
    steps: [{p: STAT}, {sleep: 25}, {p: STAT}]
  - id: t.never
    title: after the slow one
    area: session
    rfc: [RFC1939 §5]
    sessions: {p: pop3}
    steps: [{p: STAT}]
"""

MALFORMED = """
tests:
  - id: t.bad
    title: x
    area: deletion
    rfc: [RFC1939 §6]
    sessions: {p: pop3}
    steps:
      - p: STAT
      - q: STAT
"""


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, **kwargs)


def write(path: Path, text: str) -> Path:
    text = textwrap.dedent(text).lstrip()
    if path.suffix == ".yaml" and text.startswith("tests:"):  # a suite: `suite:` marks it (last, so lines stay)
        text = text.rstrip("\n") + "\nsuite: a test suite\n"
    path.write_text(text)
    return path


def reports(report_dir: Path) -> tuple[dict, ET.Element, str]:
    """All three files exist; results.json's verdict and reason are what report.html shows."""
    results = json.loads((report_dir / "results.json").read_text())
    junit = ET.parse(report_dir / "junit.xml").getroot()
    html = (report_dir / "report.html").read_text()
    assert results["verdict"] in ("error", "incomplete")
    assert f'data-verdict="{results["verdict"]}"' in html
    assert "Every test" not in html and "PASS" not in html.split("<main")[0].split("<header")[-1]
    assert results["verdict_reason"].endswith(".") and results["verdict_reason"].count(". ") == 0  # one sentence
    return results, junit, html


def test_a_malformed_suite_is_an_error_not_a_pass(tmp_path, target_file):
    bad = write(tmp_path / "bad.yaml", MALFORMED)
    good = write(tmp_path / "good.yaml", "tests:" + QUICK)
    proc = run_cli("run", "--target", str(target_file), "--suite", str(bad), "--suite", str(good),
                   "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    results, junit, html = reports(tmp_path / "r")
    assert results["verdict"] == "error"
    assert results["run"]["ran"] == 0 and results["run"]["collected"] == 1
    assert f"{bad}:9:" in results["verdict_reason"] and "0 of 1 test ran" in results["verdict_reason"]
    assert results["run"]["interrupted"] is None  # pytest's stop after collection errors is no interrupt
    assert f"{bad}:9:" in html
    assert junit.find(".//error") is not None
    assert "ERROR: 1 suite file could not be loaded" in proc.stdout


def test_no_matching_test_is_an_error(tmp_path, target_file):
    good = write(tmp_path / "good.yaml", "tests:" + QUICK)
    proc = run_cli("run", "--target", str(target_file), "--suite", str(good), "-k", "no_such_test",
                   "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 2
    results, _, _ = reports(tmp_path / "r")
    assert results["verdict"] == "error"
    assert results["verdict_reason"] == "No test matched the selection (check --suite and -k); nothing ran."


def test_collect_only_is_incomplete(tmp_path, target_file):
    good = write(tmp_path / "good.yaml", SUITE)
    proc = run_cli("run", "--target", str(target_file), "--suite", str(good), "--pytest-arg=--collect-only",
                   "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    results, _, _ = reports(tmp_path / "r")
    assert results["verdict"] == "incomplete"
    assert (results["run"]["collected"], results["run"]["ran"]) == (3, 0)
    assert "INCOMPLETE: Tests were only collected (--collect-only): 3 tests found, none ran." in proc.stdout


class FakeIMAP:
    """A server that is no use: `silent` never greets; `hang-after-login` greets, accepts LOGIN, then says nothing."""

    def __init__(self, mode: str):
        self.mode = mode
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.clients: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.clients.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        if self.mode == "silent":
            return
        try:
            client.sendall(b"* OK fake ready\r\n")
            for line in client.makefile("rb"):
                tag = line.split(b" ", 1)[0]
                if b" LOGIN " in line.upper():
                    client.sendall(tag + b" OK logged in\r\n")
                    return  # and never answer again
                client.sendall(b"* CAPABILITY IMAP4rev1\r\n" + tag + b" OK done\r\n")
        except OSError:
            pass

    def close(self):
        self.listener.close()
        for client in self.clients:
            client.close()


@pytest.mark.parametrize("mode, said", [("silent", "no greeting within 2"), ("hang-after-login", "no response to")])
def test_an_unusable_target_is_an_error_with_all_three_reports(tmp_path, mode, said):
    server = FakeIMAP(mode)
    target = write(tmp_path / "t.yaml", f"""
        name: fake {mode}
        imap: imap://127.0.0.1:{server.port}
        accounts: [{{user: a, password: secret-pw}}]
        disposable: true
        timeout: 2
        """)
    try:
        proc = run_cli("run", "--target", str(target), "--suite", "examples/", "--report-dir", str(tmp_path / "r"))
    finally:
        server.close()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    results, junit, html = reports(tmp_path / "r")
    assert results["verdict"] == "error"
    assert said in results["verdict_reason"] and results["verdict_reason"].startswith("The run could not start: ")
    assert said in junit.find(".//error").get("message")
    assert said in html
    assert "secret-pw" not in proc.stdout + proc.stderr + html + json.dumps(results)
    assert "Traceback" not in proc.stderr


def test_a_managed_server_that_cannot_start_under_xdist_is_an_error_and_leaves_nothing(tmp_path):
    """Under -n the managed server starts while xdist starts the workers: its failure still ends the run with all
    three reports saying why, exit 2, no worker or temp dir left."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dovecot"  # the generated config passes doveconf; this "Dovecot" notes it and dies
    fake.write_text(f"#!/bin/sh\necho \"$2\" > {tmp_path / 'conf-path'}\necho 'Fatal: the fake dovecot refuses' >&2\nexit 1\n")
    fake.chmod(0o755)
    proc = run_cli("run", "-n", "2", "--suite", "examples/", "--report-dir", str(tmp_path / "r"),
                   env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    results, junit, html = reports(tmp_path / "r")
    assert results["verdict"] == "error" and results["verdict_reason"].startswith("The run could not start: ")
    assert "Dovecot exited with status 1" in results["verdict_reason"] and "the fake dovecot refuses" in results["verdict_reason"]
    assert "Dovecot exited with status 1" in junit.find(".//error").get("message")
    assert "Dovecot exited with status 1" in html
    assert "Traceback" not in proc.stderr and "INTERNALERROR" not in proc.stdout + proc.stderr
    root = Path((tmp_path / "conf-path").read_text().strip()).parent
    assert root.name.startswith("mailharness-dovecot-") and not root.exists()


def test_a_bad_profile_under_xdist_is_an_error_after_the_server_started(tmp_path):
    proc = run_cli("run", "-n", "2", "--suite", "examples/", "--profile", "no-such-profile",
                   "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    results, junit, html = reports(tmp_path / "r")
    assert results["verdict"] == "error" and "no profile named 'no-such-profile'" in results["verdict_reason"]
    assert "no profile named 'no-such-profile'" in junit.find(".//error").get("message")
    assert results["run"]["ran"] == 0 and "Traceback" not in proc.stderr and "INTERNALERROR" not in proc.stdout


@pytest.mark.parametrize("sig, name, code", [(signal.SIGINT, "Ctrl-C", 130), (signal.SIGTERM, "SIGTERM", 143)])
def test_an_interrupted_run_is_incomplete_and_says_how_far_it_got(tmp_path, target_file, sig, name, code):
    suite = write(tmp_path / "s.yaml", SUITE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", "-v", "--target", str(target_file), "--suite", str(suite),
         "--report-dir", str(tmp_path / "r")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=sigint_as_in_a_terminal)
    seen = b""
    deadline = time.monotonic() + 120
    while b"t.slow" not in seen and time.monotonic() < deadline:  # -v names each test as it starts
        chunk = proc.stdout.read1(4096)
        if not chunk:
            break
        seen += chunk
    assert b"t.slow" in seen, seen.decode()
    time.sleep(1)  # inside the slow test's sleep step
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    out = (seen + out).decode()
    assert proc.returncode == code, out
    results, junit, html = reports(tmp_path / "r")
    assert results["verdict"] == "incomplete"
    assert results["run"]["interrupted"] == name
    assert (results["run"]["collected"], results["run"]["ran"]) == (3, 1)
    outcomes = {t["id"]: t["outcome"] for t in results["tests"]}
    assert outcomes == {"t.quick": "passed", "t.slow": "error"}  # never "passed" for the one cut short
    assert results["verdict_reason"] == f"The run was interrupted ({name}): 1 of 3 tests ran; 1 error."
    assert f"INCOMPLETE: The run was interrupted ({name})" in out
