"""The suites against a Dovecot with Debian's defaults for failed logins and folders (`--server dovecot-stock`).

The embedded target answers wrong passwords at once, has no anvil penalty and creates Sent, Drafts, Trash
and Junk itself; nothing in the suites may depend on that. Here failed logins take 2 s, the penalty delays
the next logins from the same address, and the special-use folders do not exist until a client creates them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.engine.login_delays import own_source_address
from harness.targets.managed_dovecot import StockDovecot

ROOT = Path(__file__).resolve().parents[1]
HONEST = {"passed", "xfailed", "skipped"}

# Tests that still fail on stock settings for a reason another change fixes: id -> why. Each must fail (strict),
# so the entry goes when the fix lands.
PENDING: dict[str, str] = {}


@pytest.fixture(scope="module")
def stock():
    with StockDovecot(accounts=8) as dc:  # -n 2 workers x 2 accounts per test, with room
        yield dc.target


def _pass(port: int, user: str, password: str, source: str | None = None) -> tuple[bool, float]:
    """USER/PASS on a raw socket; (accepted, seconds PASS took)."""
    with socket.create_connection(("127.0.0.1", port), timeout=40, source_address=(source, 0) if source else None) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(f"USER {user}\r\n".encode())
        f.readline()
        started = time.monotonic()
        s.sendall(f"PASS {password}\r\n".encode())
        line = f.readline()
        took = time.monotonic() - started
        s.sendall(b"QUIT\r\n")
        return line.startswith(b"+OK"), took


def test_a_failed_login_is_slow_and_slows_the_next_login_from_its_address_only(stock):
    """Why the wrong-password sessions connect from addresses of their own (harness/engine/login_delays.py)."""
    port, account = stock.pop3.port, stock.accounts[0]
    own = own_source_address("127.0.0.1")
    assert own and own != "127.0.0.1"
    accepted, failed_after = _pass(port, account.user, "wrong-password", own)
    assert not accepted and failed_after >= 1.5, f"a wrong password was answered after {failed_after:.2f} s (stock: 2 s)"
    elsewhere = _pass(port, account.user, account.password)  # 127.0.0.1, like every other test's logins
    same = _pass(port, account.user, account.password, own)
    assert elsewhere[0] and same[0]
    assert same[1] >= 1.5, f"the penalty did not delay the next login from {own} ({same[1]:.2f} s)"
    assert elsewhere[1] < same[1] / 2, f"a login from 127.0.0.1 took {elsewhere[1]:.2f} s, from {own} {same[1]:.2f} s"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_suite_passes_on_stock_settings(stock, tmp_path):
    target_file = tmp_path / "target.yaml"
    stock.dump(target_file)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--target", str(target_file), "-n", "2",
                           "--report-dir", str(tmp_path / "report")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    output = f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    tests = results["tests"]
    assert len(tests) > 200, output
    bad = [t for t in tests if t["outcome"] not in HONEST and t["id"] not in PENDING]
    assert not bad, "on stock settings:\n" + "\n".join(
        f"  {t['outcome']} {t['id']}: {' '.join((t.get('message') or '').split())[:300]}" for t in bad)
    still_passing = [t["id"] for t in tests if t["id"] in PENDING and t["outcome"] != "failed"]
    assert not still_passing, f"remove from PENDING, they pass now: {still_passing}"
    logins = [t for t in tests if "connected from 127." in (t.get("transcript") or "")]
    assert logins, "no session connected from an address of its own: the wrong-password tests share 127.0.0.1"
