"""`mailharness run --durations N`: where the run's time went, per phase, and the N slowest tests.

Phases (harness/engine/phases.py): setup (emptying and seeding the accounts), connect (opening the
test's sessions and logging in), steps (commands and their answers), waits (`await` and `sleep:` steps:
time the server decides), cleanup. The totals are summed over tests, which run at once: -n 2 workers with
--lanes 4 each have up to 8 running, so the totals add up to several times the wall time the tests took.
"""

from __future__ import annotations

from typing import TextIO

from harness.engine.phases import PHASES


def print_durations(results: dict, count: int, stream: TextIO) -> None:
    tests = [t for t in results.get("tests", []) if t.get("phases")]
    out = ["", f"time by phase ({len(tests)} tests; seconds summed over tests, mean per test in ms):"]
    totals = {name: sum(t["phases"].get(name, 0.0) for t in tests) for name in PHASES}
    whole = sum(totals.values()) or 1.0
    for name in PHASES:
        mean = totals[name] / len(tests) * 1000 if tests else 0.0
        out.append(f"  {name:<8} {totals[name]:8.2f} s  {100 * totals[name] / whole:5.1f} %  {mean:7.1f} ms")
    out.append(f"  {'total':<8} {sum(totals.values()):8.2f} s")
    timings = results.get("timings") or {}
    if timings.get("target_start_s") is not None:
        out.append(f"  starting and probing the target: {timings['target_start_s']:.2f} s (wall, before the tests)")
    count = count or len(tests)  # 0: every test
    if tests:
        out += ["", f"slowest {min(count, len(tests))} tests (ms):",
                "  " + "  ".join(f"{name:>7}" for name in (*PHASES, "total")) + "  test"]
        ranked = sorted(tests, key=lambda t: -sum(t["phases"].values()))[:count]
        for test in ranked:
            phases = test["phases"]
            cells = [phases.get(name, 0.0) * 1000 for name in PHASES] + [sum(phases.values()) * 1000]
            out.append("  " + "  ".join(f"{c:7.0f}" for c in cells) + f"  {test['id']}")
    stream.write("\n".join(out) + "\n")
