"""`mailharness stress`: a bounded Locust run of the state-tracking sessions, then the consistency verdict."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path

from harness import interrupts
from harness.errors import ConfigError, HarnessError, UnsafeAccount
from harness.known_secrets import scrub
from harness.load.load_command import (
    CSV_PREFIX,
    LOCUSTFILE,
    check_run_bounds,
    master_on_loopback,
    scrub_files,
    wait_interruptibly,
)
from harness.load.scenario import load_scenario
from harness.targets.target_file import load_target

MAX_USERS = 5_000
STOP_TIMEOUT = 5

DESCRIPTION = """\
State-tracking stress: many sessions share each mailbox and send weighted random IMAP commands
(APPEND, FETCH flags/envelope/BODYSTRUCTURE/sections/partial, STORE +/-FLAGS and keywords, SEARCH,
COPY/MOVE, EXPUNGE/UID EXPUNGE, NOOP, CHECK, IDLE), POP3 sessions use the same maildrops and LMTP
delivers in the background. A model of each mailbox and of each session's view checks every response
(sequence <-> UID map, UIDs ascending and never reused, UIDVALIDITY, static data per message, keywords
announced, no EXPUNGE during FETCH/STORE/SEARCH, SEARCH results, POP3 UIDL/LIST/RETR, no mail lost or
duplicated). Every checkpoint_interval seconds the sessions of a mailbox quiesce and must agree.

  mailharness stress --users 50 --run-time 2m
      a throwaway Dovecot on 127.0.0.1, 10 mailboxes of 5 sessions each
  mailharness stress --server cyrus --users 20 --run-time 1m --seed 7
  mailharness stress --target staging.yaml --users 200 --run-time 10m --workers 2
      your server (the target must say disposable: true: the sessions delete mail)

Before the run, three sessions probe how the server treats a message another session expunged
(imaptest's Expunge fetch / Expunge store) and \\Recent; the run adds Checkpoint and Atomic flags.
These are reported as behaviour, not failure.

Written to --report-dir (default reports/stress-<time>/): stress.json (violations by kind and over
time, the first of each kind with the interleaved transcript of its mailbox's sessions, the
classification), consistency.html, and Locust's own files (violations are Locust failures of type
STRESS, named by kind). Exit code 1 on any violation, 2 for usage and configuration errors.
"""


def add_arguments(p) -> None:
    p.add_argument("--target", type=Path, metavar="FILE", help="target file (must say disposable: true); default: a managed server")
    p.add_argument("--server", metavar="NAME", help="managed server to start when no --target (dovecot, cyrus, mailutils; default dovecot)")
    p.add_argument("--users", type=int, required=True, metavar="N", help=f"sessions (required, at most {MAX_USERS})")
    p.add_argument("--run-time", required=True, metavar="T", help="how long: 90s, 2m, 1h (required)")
    p.add_argument("--workers", type=int, default=0, metavar="K",
                   help="generator processes (Locust --processes K); each mailbox's sessions stay in one (default 0: one process)")
    p.add_argument("--seed", type=int, metavar="S", help="seed of the sessions' random commands (a repeatable run)")
    p.add_argument("--scenario", default="stress", metavar="NAME|PATH", help="scenario with a `stress:` user kind (default stress)")
    p.add_argument("--report-dir", type=Path, metavar="DIR", help="where reports go (default reports/stress-<YYYYmmdd-HHMMSS>)")
    p.add_argument("--no-probes", action="store_true", help="skip the Expunge fetch / Expunge store / \\Recent probes")
    p.add_argument("--checking", choices=("on", "off"), default="on", help=argparse_hidden())
    p.add_argument("--quiet", action="store_true", help="keep Locust's console output in the report dir (locust.out)")


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


def run(args) -> int:
    scenario = load_scenario(args.scenario)
    if "stress" not in scenario.users:
        raise ConfigError(f"{scenario.source}: no `stress:` user kind; use --scenario stress or add one")
    run_time = check_run_bounds(args, MAX_USERS)
    if args.target and args.server:
        raise ConfigError("give --target FILE (your server) or --server NAME (a managed one), not both")
    per_mailbox = int(scenario.users["stress"].options.get("sessions_per_mailbox", 5))
    mailboxes = max(1, math.ceil(args.users / per_mailbox), args.workers)
    run_dir = args.report_dir or Path("reports") / f"stress-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True, exist_ok=True)
    out_dir = run_dir / "processes"
    for old in out_dir.glob("consistency-*.json"):
        old.unlink()
    started = time.time()
    with _target(args, mailboxes) as (target, target_file):
        if len(target.accounts) < max(1, args.workers):
            raise ConfigError(f"{len(target.accounts)} account(s) for {args.workers} workers: each process needs its own mailboxes")
        classification = {}
        if not args.no_probes and target.imap is not None:
            from harness.stress.probes import run_probes

            classification = run_probes(target)
        print(f"mailharness stress: {target.name}: {args.users} sessions on {min(mailboxes, len(target.accounts))} mailbox(es), "
              f"{run_time}s, {f'{args.workers} workers' if args.workers else 'one process'}", file=sys.stderr)
        interrupted = None
        try:
            code = _run_locust(args, target_file, scenario, run_dir, out_dir, run_time)
        except KeyboardInterrupt:
            interrupted, code = interrupts.describe(), None
        finally:
            scrub_files(run_dir)
    result = merge([json.loads(p.read_text()) for p in sorted(out_dir.glob("consistency-*.json"))])
    result["classification"] = classify(result, classification)
    result["facts"] = {"target": target.name, "users": args.users, "run_time": run_time, "workers": args.workers,
                       "seed": args.seed, "scenario": str(scenario.source), "sessions_per_mailbox": per_mailbox,
                       "started": datetime.fromtimestamp(started).isoformat(timespec="seconds"),
                       "wall_seconds": round(time.time() - started, 1), "locust_exit_code": code}
    problems = []
    if interrupted:
        problems.append(f"interrupted ({interrupted})")
    if not result["processes"]:
        problems.append("no generator process wrote its results (see locust.log)")
    elif not result["commands"]:
        problems.append("no IMAP command was checked (see locust.log and locust_failures.csv)")
    crashes = _generator_errors(run_dir)
    if crashes:  # a session that died of a bug in the harness checked nothing: never a pass
        problems.append(f"{crashes} error(s) inside the generator's sessions (locust_exceptions.csv)")
    from harness.stress.violations import SHOULD_KINDS

    must = {k: n for k, n in result["counts"].items() if k not in SHOULD_KINDS}
    if must:
        problems.append(f"{sum(must.values())} consistency violation(s): " + ", ".join(f"{k} {n}" for k, n in sorted(must.items())))
    result["warnings"] = {k: n for k, n in result["counts"].items() if k in SHOULD_KINDS}
    result["problems"] = problems
    result["passed"] = not problems
    (run_dir / "stress.json").write_text(scrub(json.dumps(result, indent=1, default=str)))
    from harness.stress.results import results_json

    (run_dir / "results.json").write_text(scrub(json.dumps(results_json(result, target, " ".join(sys.argv)), indent=1)))
    from harness.stress.report import write_report

    report = write_report(run_dir, result)
    _capacity_report(args, scenario, target, run_dir, run_time, started, result)
    _print_summary(result, report)
    if interrupted:
        return interrupts.exit_code()
    return 1 if problems else 0


def _generator_errors(run_dir: Path) -> int:
    from harness.load.capacity_report import read_csv

    return sum(int(row.get("Count") or 0) for row in read_csv(run_dir / f"{CSV_PREFIX}_exceptions.csv"))


@contextmanager
def _target(args, mailboxes: int):
    """(target, target file) for the run; a managed server is stopped afterwards."""
    if args.target:
        target = load_target(args.target)
        target.print_warnings()
        if not target.disposable:
            raise UnsafeAccount(f"{args.target}: stress sessions delete, move and flag mail; add `disposable: true` "
                                "only if these accounts are the harness's to use")
        yield target, args.target
        return
    from harness.targets.managed import DEFAULT_SERVER, managed_server

    with tempfile.TemporaryDirectory(prefix="mailharness-stress-") as private, \
            managed_server(args.server or DEFAULT_SERVER, accounts=max(mailboxes, 2)) as server:
        path = Path(private) / "target.yaml"  # holds passwords: not in the report dir
        server.target.dump(path)
        yield server.target, path


def _run_locust(args, target_file: Path, scenario, run_dir: Path, out_dir: Path, run_time: int) -> int | None:
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--users", str(args.users), "--spawn-rate", str(max(10, args.users)), "--run-time", f"{run_time}s",
        "--stop-timeout", f"{STOP_TIMEOUT}s", "--html", str(run_dir / "locust.html"), "--csv", str(run_dir / CSV_PREFIX),
        "--csv-full-history", "--logfile", str(run_dir / "locust.log"), "--loglevel", "INFO", "--exit-code-on-error", "0",
        "--target-file", str(target_file), "--scenario", str(scenario.source),
        "--stress-out", str(out_dir), "--stress-checking", args.checking,
    ]
    if args.seed is not None:
        command += ["--stress-seed", str(args.seed)]
    if args.workers:
        command += ["--processes", str(args.workers), *master_on_loopback()]
    deadline = run_time + STOP_TIMEOUT + 120
    with open(run_dir / "locust.out", "wb") if args.quiet else nullcontext() as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True)
        try:
            return wait_interruptibly(proc, deadline)
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise HarnessError(f"Locust did not stop within {deadline}s; killed it (see {run_dir / 'locust.log'})") from None
        except BaseException:
            try:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(timeout=5)
            except (subprocess.TimeoutExpired, KeyboardInterrupt, ProcessLookupError):
                pass
            _kill(proc)
            raise


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _capacity_report(args, scenario, target, run_dir: Path, run_time: int, started: float, result: dict) -> None:
    """capacity.html as `mailharness load` writes it (throughput, latency, errors), with the consistency section."""
    from types import SimpleNamespace

    from harness.load.accounts import AccountPlan
    from harness.load.capacity_report import CsvSet, write_capacity_report
    from harness.load.load_command import _facts
    from harness.stress.report import section_html

    csvs = CsvSet.load(run_dir, CSV_PREFIX)
    if not csvs.stats:
        return
    plan = AccountPlan.for_scenario(target.accounts, scenario)
    facts = _facts(SimpleNamespace(spawn_rate=max(10, args.users), think_scale=1.0), scenario, target, plan, run_dir,
                   args.users, run_time, args.workers, "as found (stress sessions append their own mail)", started)
    write_capacity_report(run_dir, facts=facts, verdicts=[], accounting=None, problems=result["problems"], csvs=csvs,
                          consistency=section_html(result))


def consistency_of(run_dir: Path) -> dict | None:
    """For `mailharness load --scenario stress`: the merged per-process results, if stress users ran."""
    parts = [json.loads(p.read_text()) for p in sorted((run_dir / "processes").glob("consistency-*.json"))]
    if not parts:
        return None
    from harness.stress.violations import SHOULD_KINDS

    result = merge(parts)
    result["classification"] = classify(result, {})
    result["must"] = {k: n for k, n in result["counts"].items() if k not in SHOULD_KINDS}
    return result


def merge(parts: list[dict]) -> dict:
    """One result from the per-process files: counts and timelines summed, the earliest first violation of each kind."""
    counts: dict[str, int] = {}
    timeline: dict[str, dict[str, int]] = {}
    first: dict[str, dict] = {}
    mailboxes: dict[str, dict] = {}
    commands = pop3_visits = 0
    start = min((p["violations"]["started"] for p in parts), default=0)
    for part in parts:
        v = part["violations"]
        commands += v.get("commands", 0)
        pop3_visits += v.get("pop3_visits", 0)
        shift = int((v["started"] - start) // 5)
        for kind, n in v["counts"].items():
            counts[kind] = counts.get(kind, 0) + n
        for kind, series in v["timeline"].items():
            line = timeline.setdefault(kind, {})
            for bucket, n in series.items():
                key = str(int(bucket) + shift)
                line[key] = line.get(key, 0) + n
        for kind, item in v["first"].items():
            if kind not in first or item.get("t", 0) < first[kind].get("t", 0):
                first[kind] = item
        mailboxes.update(part["mailboxes"])
    return {"processes": len(parts), "checking": all(p.get("checking", True) for p in parts), "commands": commands,
            "pop3_visits": pop3_visits, "counts": counts, "timeline": timeline, "first": first, "mailboxes": mailboxes}


def classify(result: dict, probes: dict) -> dict:
    """imaptest's compliancy categories: probes (Expunge fetch/store, \\Recent) plus what the run measured."""
    boxes = result["mailboxes"].values()
    completed = sum(b["checkpoints"]["completed"] for b in boxes)
    differed = sum(b["checkpoints"]["differed"] for b in boxes)
    trials = sum(b["checkpoints"]["atomic_trials"] for b in boxes)
    lost = sum(b["checkpoints"]["atomic_lost"] for b in boxes) + result["counts"].get("keyword-lost", 0)
    multi = sum(b["recent_multi"] for b in boxes)
    out = dict(probes)
    out["Checkpoint"] = ("not measured (no checkpoint completed)" if not completed else
                         "Yes" if not differed else f"No ({differed} of {completed} checkpoints differed)")
    run_recent = "" if not boxes else (f"; in the run: {multi} message(s) with \\Recent in 2+ sessions" if multi else "")
    if "\\Recent" in out or run_recent:
        out["\\Recent"] = (out.get("\\Recent", "not probed") + run_recent) if multi else out.get("\\Recent", "not probed")
    out["Atomic flags"] = ("not measured" if not trials and not lost else
                           "Yes" if not lost else f"No ({lost} lost update(s) in {trials} trial(s) and the run)")
    return out


def _print_summary(result: dict, report: Path) -> None:
    print(f"commands checked: {result['commands']}, processes: {result['processes']}")
    from harness.stress.violations import SHOULD_KINDS

    for kind, n in sorted(result["counts"].items()):
        first = result["first"].get(kind, {})
        print(f"  {'WARNING' if kind in SHOULD_KINDS else 'VIOLATION'} {kind}: {n}  (first: {first.get('session', '?')}: {first.get('detail', '')[:150]})")
    for name, value in result["classification"].items():
        if not name.startswith("probe "):
            print(f"  {name}: {value}")
    print(("FAILED: " + "; ".join(result["problems"])) if result["problems"] else "PASSED: 0 violations")
    print(f"report: {report}")
