"""`mailharness bench --suite`: how long `mailharness run` takes for the bundled suites, and where the time goes.

Each round is a whole `mailharness run -n W` in a child process, as a user types it (server start, pytest
start-up and collection in every worker, the tests, the reports), timed from outside; results.json gives the
session's own duration and the tests' phases (docs/results.md). Rounds run one after another; the medians
and ranges are printed, so a busy machine shows as a wide range instead of one unlucky figure.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.errors import ConfigError

PHASES = ("setup", "connect", "steps", "waits", "cleanup")
ROUND_TIMEOUT = 900  # seconds: a run of the bundled suites that takes longer is broken, not slow


def run_suite_bench(args) -> int:
    rounds = args.rounds or 3
    workers = args.workers if args.workers is not None else 2
    if workers < 0:
        raise ConfigError("--workers must be 0 or more")
    command = [sys.executable, "-m", "harness.cli", "run", "-n", str(workers)]
    if args.target:
        command += ["--target", str(args.target)]
    if args.server:
        command += ["--server", args.server]
    if args.suite is not True:  # a path: those suites only
        if not args.suite.exists():
            raise ConfigError(f"{args.suite}: no such suite file or directory")
        command += ["--suite", str(args.suite)]
    measured = []
    with tempfile.TemporaryDirectory(prefix="mailharness-bench-suite-") as tmp:
        for index in range(rounds):
            report_dir = Path(tmp) / f"round-{index + 1}"
            started = time.perf_counter()
            try:
                proc = subprocess.run(command + ["--report-dir", str(report_dir)], capture_output=True, text=True,
                                      timeout=ROUND_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise ConfigError(f"round {index + 1}: `mailharness run` did not finish within {ROUND_TIMEOUT} s") from None
            wall = time.perf_counter() - started
            results_file = report_dir / "results.json"
            if proc.returncode not in (0, 1) or not results_file.exists():
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
                raise ConfigError(f"round {index + 1}: `mailharness run` exited {proc.returncode}:\n{tail}")
            measured.append(_round(wall, json.loads(results_file.read_text())))
            print(f"round {index + 1}/{rounds}: {wall:.1f} s", file=sys.stderr, flush=True)
    result = _summary(measured, workers, " ".join(["mailharness"] + command[3:]))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0


def _round(wall: float, results: dict) -> dict:
    phases = {p: 0.0 for p in PHASES}
    for test in results["tests"]:
        for phase, seconds in (test.get("phases") or {}).items():
            phases[phase] = phases.get(phase, 0.0) + seconds
    return {
        "wall_s": wall,
        "session_s": results["duration_s"],
        "target_start_s": (results.get("timings") or {}).get("target_start_s") or 0.0,
        "phases_s": phases,
        "outcomes": {k: v for k, v in results["summary"].items() if v},
        "verdict": results["verdict"],
    }


def _spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def _summary(rounds: list[dict], workers: int, command: str) -> dict:
    return {
        "command": command,
        "rounds": len(rounds),
        "workers": workers,
        "wall_s": _spread([r["wall_s"] for r in rounds]),
        "session_s": _spread([r["session_s"] for r in rounds]),
        "outside_session_s": _spread([r["wall_s"] - r["session_s"] for r in rounds]),
        "target_start_s": _spread([r["target_start_s"] for r in rounds]),
        "phases_s": {p: _spread([r["phases_s"].get(p, 0.0) for r in rounds]) for p in PHASES},
        "outcomes": [r["outcomes"] for r in rounds],
        "verdicts": [r["verdict"] for r in rounds],
    }


def _fmt(spread: dict) -> str:
    return f"{spread['median']:.2f} s ({spread['min']:.2f}-{spread['max']:.2f})"


def _print(result: dict) -> None:
    rounds = result["rounds"]
    print(f"{result['command']}: {rounds} round{'s' if rounds != 1 else ''}, median (range)")
    print(f"  wall                 {_fmt(result['wall_s'])}")
    print(f"  pytest session       {_fmt(result['session_s'])}   (of it, starting the server {_fmt(result['target_start_s'])})")
    print(f"  outside the session  {_fmt(result['outside_session_s'])}   (interpreter and pytest start-up, reports, exit)")
    print(f"  test phases, summed over the tests ({max(result['workers'], 1)} worker(s), each running several at once: see --lanes):")
    for phase, spread in result["phases_s"].items():
        print(f"    {phase:9s}          {_fmt(spread)}")
    verdicts = sorted(set(result["verdicts"]))
    print(f"  verdicts: {', '.join(verdicts)}; outcomes of round 1: "
          + ", ".join(f"{n} {k}" for k, n in result["outcomes"][0].items() if k != "total"))
