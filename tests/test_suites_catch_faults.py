"""The conformance suites can fail: each fault of the fault proxy is caught by the suites of its area.

A check that cannot fail proves nothing. For every fault in ``tests.faultproxy.FAULTS`` the suites run
(through ``mailharness run``, as a user would) against the real embedded Dovecot behind a proxy that
breaks exactly that one behaviour, and at least one test *of the fault's area* must come out ``failed``
(``warning`` for the few faults in SHOULD_FAULTS, which break only a SHOULD of the RFC)
(not ``error``: a test that could not even set up, e.g. "could not empty account" when the fault breaks
the harness's own clean-up, proves nothing about the suite). The case is parametrized over FAULTS, so a
new fault without a suite test that catches it fails here.

The other half of the proof: through a transparent proxy the whole of ``suites/`` passes (only passed,
xfailed by the Dovecot profile, or skipped), so the proxy is honest and the catches are the fault's doing.

Speed: each fault run selects only the tests of its area (by id, from the suite files) that speak the
fault's protocol, in one process (``-n 0``) per run, so ``pytest -n 2`` keeps two runs going at a time;
each xdist worker reuses its session's ManagedDovecot (tests/conftest.py), and a second, locking one
for the faults whose ``profile`` is "dovecot-lock".
"""

from __future__ import annotations

import collections
import functools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.engine.model import load_suite
from tests.faultproxy import FAULTS, proxied_target, target_for

ROOT = Path(__file__).resolve().parents[1]
SUITES = ROOT / "suites"
HONEST = {"passed", "xfailed", "skipped"}  # all a transparent proxy may produce
RUN_TIMEOUT = 300  # seconds for one `mailharness run` subprocess

# Faults the suites of their area do not catch yet: fault -> what the suites lack. Each becomes a
# strict xfail, so it turns red the day a suite test catches it (then delete the entry).
GAPS: dict[str, str] = {}

# Faults that break only what the RFC says a server SHOULD do: the suites report them as outcome
# `warning` (issue 9 item 6), and that is the catch. Every other fault must make a test fail.
SHOULD_FAULTS: dict[str, str] = {
    "imap-no-flag-notify": "RFC 3501 §5.2: a server SHOULD send message flag updates automatically",
    "imap-internaldate-ignored": "RFC 3501 §6.3.11: the internal date SHOULD be set from APPEND's date-time",
    "pop3-in-use-code-dropped": "RFC 1939 §4: the lock is taken 'as necessary'; [IN-USE] says why (RFC 2449 §8.1.2)",
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(RUN_TIMEOUT + 120)]


@functools.cache
def _suite_tests() -> tuple[tuple[str, str, str], ...]:
    """(id, area, protocol) of every test in suites/, collected the way the harness's plugin does."""
    out = []
    for path in sorted(SUITES.rglob("*")):
        if path.suffix in (".yaml", ".yml") and not path.name.startswith("_") and path.is_file():
            out += [(spec.id, spec.area, spec.protocol) for spec in load_suite(path)]
    return tuple(out)


def _speaks(protocol: str, test_protocol: str) -> bool:
    """Does a test of `test_protocol` ("pop3", "imap", "pop3+imap") talk `protocol`?"""
    return protocol in test_protocol.split("+")


def _area_ids(protocol: str, area: str) -> list[str]:
    return [tid for tid, t_area, t_proto in _suite_tests() if t_area == area and _speaks(protocol, t_proto)]


def _run_suites(target, workdir: Path, keyword: str | None = None, profile: str = "dovecot",
                workers: int = 0) -> tuple[list[dict], str]:
    """`mailharness run` against `target`; (results.json tests, the run's output tail)."""
    workdir.mkdir(parents=True, exist_ok=True)
    target_file = workdir / "target.yaml"
    target.profile = profile  # the Dovecot deviations are expected failures, not catches
    target.dump(target_file)
    report_dir = workdir / "report"
    cmd = [sys.executable, "-m", "harness.cli", "run", "--target", str(target_file), "--suite", "suites/",
           "-n", str(workers), "--report-dir", str(report_dir)]
    if keyword:
        cmd += ["-k", keyword]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    output = f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    results = report_dir / "results.json"
    assert results.exists(), f"mailharness run wrote no results.json:\n{output}"
    return json.loads(results.read_text())["tests"], output


def _line(t: dict) -> str:
    message = " ".join((t.get("message") or "").split())
    return f"  {t['outcome']:8} {t['id']} [{t['area']}, {t['protocol']}]" + (f": {message[:200]}" if message else "")


def test_transparent_proxy_passes_whole_suite(target, tmp_path):
    """No fault: every suite in suites/ passes through the proxy (xfail = Dovecot profile, skip = not offered)."""
    with proxied_target(target) as proxied:
        tests, output = _run_suites(proxied, tmp_path, workers=2)  # the whole suite: two workers halve its waits
        proxies = proxied.proxies
    counts = collections.Counter(t["outcome"] for t in tests)
    print(f"transparent: {len(tests)} tests, {dict(counts)}")
    bad = [t for t in tests if t["outcome"] not in HONEST]
    assert not bad, "through a transparent proxy these tests did not pass:\n" + "\n".join(map(_line, bad))
    assert len(tests) == len(_suite_tests()), f"ran {len(tests)} of {len(_suite_tests())} tests\n{output}"
    for proto, proxy in proxies.items():
        assert not proxy.errors, f"{proto} proxy raised:\n" + "\n".join(proxy.errors)
        assert not proxy.fired, f"transparent {proto} proxy reports faults: {proxy.fired[:5]}"
        assert proxy.connections, f"no {proto} connection went through the proxy: the run bypassed it"


@pytest.mark.parametrize(
    "fault",
    [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=GAPS[name])) if name in GAPS else name
     for name in sorted(FAULTS)],
)
def test_suites_catch_fault(fault, request, tmp_path, record_property):
    spec = FAULTS[fault]
    profile = spec.implementation.profile
    target = target_for(profile, request)
    ids = _area_ids(spec.protocol, spec.area)
    assert ids, (f"fault {fault} ({spec.description}): suites/ has no {spec.protocol} test of area {spec.area!r} "
                 "to catch it")
    bad_ids = [i for i in ids if not re.fullmatch(r"[\w.:+\-\[\]/]+", i) or i in ("and", "or", "not")]
    assert not bad_ids, f"test ids not usable in a -k expression: {bad_ids}"

    started = time.monotonic()
    with proxied_target(target, fault=fault) as proxied:
        tests, output = _run_suites(proxied, tmp_path, " or ".join(ids), profile)
        proxy = proxied.proxies[spec.protocol]
        fired, errors = list(proxy.fired), list(proxy.errors)
    elapsed = time.monotonic() - started

    in_area = [t for t in tests if t["area"] == spec.area and _speaks(spec.protocol, t["protocol"])]
    catches = ("failed", "warning") if fault in SHOULD_FAULTS else ("failed",)
    caught = [t for t in in_area if t["outcome"] in catches]
    counts = collections.Counter(t["outcome"] for t in in_area)
    summary = (f"{fault}: {len(caught)}/{len(in_area)} {spec.protocol} {spec.area} test(s) failed "
               f"({dict(counts)}; fault fired {len(fired)}x; {elapsed:.1f}s): {[t['id'] for t in caught]}")
    print(summary)
    record_property("caught", [t["id"] for t in caught])
    record_property("summary", summary)

    assert not errors, f"fault {fault}: the proxy raised:\n" + "\n".join(errors)
    not_passed = [t for t in tests if t["outcome"] != "passed"]
    assert caught, (
        f"fault {fault} ({spec.description}) was NOT caught: no {spec.protocol} test of area {spec.area!r} "
        f"{'failed or warned' if fault in SHOULD_FAULTS else 'failed'}.\n"
        f"ran {len(tests)} test(s), {len(in_area)} of the area: {dict(counts)}\n"
        f"the fault fired {len(fired)} time(s)" + (f", e.g. {fired[:5]}" if fired else " (it never had a chance)")
        + "\nnot passed:\n" + ("\n".join(map(_line, not_passed)) or "  (none)")
        + f"\n--- mailharness run ---\n{output}"
    )


def _pop3_variants() -> list[str]:
    from tests.faultproxy import VARIANTS

    return sorted(name for name, spec in VARIANTS.items() if spec.protocol == "pop3")


@pytest.mark.parametrize("variant", _pop3_variants())
def test_legal_pop3_variant_passes_pop3_suites(variant, target, tmp_path):
    """A legal POP3 server unlike Dovecot (other message order, added header fields; RFC 1939 allows both)
    passes every test that speaks POP3, as Dovecot itself does: the suites assume only what the RFC says."""
    ids = [tid for tid, _area, proto in _suite_tests() if _speaks("pop3", proto)]
    with proxied_target(target, pop3_fault=variant) as proxied:
        tests, output = _run_suites(proxied, tmp_path, " or ".join(ids))
        proxy = proxied.proxies["pop3"]
        fired, errors = list(proxy.fired), list(proxy.errors)
    assert not errors, f"variant {variant}: the proxy raised:\n" + "\n".join(errors)
    assert fired, f"variant {variant} never changed anything: the run proves nothing"
    # a legal server may lack something optional: a MAY check then reports "behaviour" (bare AUTH refused)
    bad = [t for t in tests if t["outcome"] not in HONEST | {"behaviour"}]
    assert not bad, f"through variant {variant} these tests did not pass:\n" + "\n".join(map(_line, bad))
    assert len(tests) == len(ids), f"ran {len(tests)} of {len(ids)} tests\n{output}"
