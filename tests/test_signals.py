"""Ctrl-C and SIGTERM (issue 10 item 6): the command stops promptly and leaves nothing behind.

"Promptly" is asserted with slack for a busy CI machine (the goal, 2 s, is a benchmark figure: each
test prints the seconds from the signal to the exit, and records them as the junit property
`stop_seconds`); what must hold exactly: no Dovecot, no Locust process, no temp dir of the command
survives it, and Locust finishes its own shutdown (final statistics, locust.html) rather than being killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hostile_server import HostileServer

ROOT = Path(__file__).resolve().parent.parent
SLACK = 15  # seconds; the measured figure is about 1 s (load 30 on 2 cores)


@pytest.fixture
def private_tmp():
    """The command's TMPDIR: what it leaves there is what it left behind (other runs share /tmp).
    Short, for the Dovecot's unix socket paths."""
    path = Path(tempfile.mkdtemp(prefix="mh-sig-", dir="/tmp"))
    path.chmod(0o755)  # Dovecot's unprivileged processes must reach their files under it
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start(*args: str, cwd: Path, tmp: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"TMPDIR": str(tmp)} if tmp else {})}
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=cwd, env=env, preexec_fn=sigint_as_in_a_terminal)


def sigint_as_in_a_terminal() -> None:
    """A shell's background job (`make test &`, nohup) ignores SIGINT, and children inherit that: Ctrl-C
    tests would then test nothing. Give the child the disposition a terminal gives it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def processes_mentioning(text: str) -> list[str]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                out.append(f"{proc.name}: {cmdline[:200]}")
    return out


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 120, stream=None) -> None:
    deadline = time.monotonic() + timeout
    for line in stream or proc.stderr:
        if needle in line:
            return
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"never saw {needle!r}")


def stop_and_time(proc: subprocess.Popen, signum: int, record=None) -> tuple[float, str, str]:
    """Seconds from the signal to the process's exit (printed, and recorded when given record_property)."""
    started = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - started
    print(f"{signal.Signals(signum).name} to exit: {took:.2f} s (goal 2 s; load average {os.getloadavg()[0]:.1f})")
    if record:
        record("stop_seconds", round(took, 2))
    return took, out, err


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_load_writes_the_reports_and_leaves_nothing(tmp_path, private_tmp, signum, record_property):
    scenario = tmp_path / "quick.yaml"
    scenario.write_text("description: pollers\nmailbox: {messages: 2}\n"
                        "users:\n  pop3_keep: {weight: 1, think_time: {min: 0.2, max: 0.5}}\n")
    report_dir = tmp_path / "load"
    proc = start("load", "--scenario", str(scenario), "--users", "2", "--run-time", "5m", "--report-dir", str(report_dir),
                 cwd=tmp_path, tmp=private_tmp)
    wait_for_line(proc, "mailharness load: ")  # Locust is starting
    deadline = time.monotonic() + 60
    while not (report_dir / "locust_stats_history.csv").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # users are running once Locust writes its first statistics
    time.sleep(2)
    took, out, err = stop_and_time(proc, signum, record_property)
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    assert proc.returncode == (143 if signum == signal.SIGTERM else 130), err[-3000:]
    assert took < SLACK, took
    assert not processes_mentioning(str(report_dir)), "a Locust process outlived the run"
    assert not processes_mentioning(str(private_tmp)), "the Dovecot outlived the run"
    assert not list(private_tmp.iterdir())  # the Dovecot's and the target file's temp dirs are gone
    run = json.loads((report_dir / "run.json").read_text())
    assert run["interrupted"] == name and not run["passed"]
    assert f"interrupted ({name})" in (report_dir / "capacity.html").read_text()
    # Locust shut down by itself within its grace (killed, it would leave the last second out of its files)
    assert "Shutting down (exit code" in (report_dir / "locust.log").read_text()
    assert (report_dir / "locust.html").stat().st_size > 0
    assert run["request_counts"] and all(n > 0 for n in run["request_counts"].values())


@pytest.mark.slow
def test_sigterm_during_run_stops_its_dovecot(tmp_path, private_tmp, record_property):
    proc = start("run", "-v", "-k", "pop3", "--report-dir", str(tmp_path / "r"), cwd=ROOT, tmp=private_tmp)
    wait_for_line(proc, " PASSED", stream=proc.stdout)  # Dovecot started, tests running (-k pop3: ~100 more to go)
    took, out, err = stop_and_time(proc, signal.SIGTERM, record_property)
    assert proc.returncode in (2, 143), err[-3000:]
    assert took < SLACK, took
    assert not processes_mentioning(str(private_tmp)), "the Dovecot outlived the run"
    assert not list(private_tmp.iterdir())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_the_managed_server_starts_under_xdist_leaves_nothing(tmp_path, signum, record_property):
    """Under -n the managed server starts in a thread while xdist starts the workers: a signal then must still stop
    the run promptly and take the half-started server and its temp dir with it. This "Dovecot" never listens."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    nap = f"3600.{os.getpid()}{signum}"
    (bin_dir / "dovecot").write_text(f"#!/bin/sh\necho \"$2\" > {tmp_path / 'conf-path'}\nexec sleep {nap}\n")
    (bin_dir / "dovecot").chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "-n", "2", "--suite", "examples/",
                             "--report-dir", str(tmp_path / "r")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=env, preexec_fn=sigint_as_in_a_terminal)
    deadline = time.monotonic() + 60
    while not processes_mentioning(f"sleep {nap}") and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert processes_mentioning(f"sleep {nap}"), "the fake Dovecot never started"
    took, out, err = stop_and_time(proc, signum, record_property)
    assert proc.returncode in (2, 130, 143), err[-3000:]
    assert took < SLACK, took
    assert "Traceback" not in err, err[-3000:]
    deadline = time.monotonic() + 5  # a SIGKILLed process leaves /proc a moment later
    while processes_mentioning(f"sleep {nap}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_mentioning(f"sleep {nap}"), "the half-started server outlived the run"
    root = Path((tmp_path / "conf-path").read_text().strip()).parent
    assert root.name.startswith("mailharness-dovecot-") and not root.exists()


def test_ctrl_c_during_seed_against_a_slow_server_stops_promptly(tmp_path, record_property):
    with HostileServer("slowloris") as server:
        path = tmp_path / "t.yaml"
        path.write_text(server.target_yaml(timeout=60, pop3=False))
        proc = start("seed", "--target", str(path), "--messages", "5", cwd=tmp_path)
        time.sleep(3)
        took, out, err = stop_and_time(proc, signal.SIGINT, record_property)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert took < SLACK, took  # was 87 s: every connection's timeout waited out
