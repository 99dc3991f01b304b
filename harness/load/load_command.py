"""`mailharness load`: one bounded Locust run, then the mail accounting and the capacity report."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path

from harness import interrupts
from harness.arguments import finite_float
from harness.errors import ConfigError, HarnessError, UnsafeAccount
from harness.known_secrets import scrub, scrub_bytes
from harness.load.accounts import AccountPlan
from harness.load.cpu_sampler import CpuSampler, read_cpu_csv, summarize
from harness.load.scenario import LOADTESTS_DIR, Scenario, available_scenarios, check_target_fits, load_scenario
from harness.load.source_addresses import parse_source_addresses
from harness.load.thresholds import error_rate_verdict, evaluate, parse_rate, parse_threshold
from harness.targets.target_file import Target, load_target

LOCUSTFILE = LOADTESTS_DIR / "locustfile.py"
MAX_USERS = 20_000
MAX_RUN_TIME = 4 * 3600
MAX_WORKERS = 64
MAX_STOP_TIMEOUT = 600
STOP_GRACE = 1.5  # seconds Locust gets to write its files after Ctrl-C/SIGTERM (the CSV history is written as it runs)
# The embedded Dovecot's graceful shutdown is of no use (its master takes a second over it, its files are
# deleted anyway): its process group is killed at once, at the end of a run and after Ctrl-C/SIGTERM alike.
SERVER_STOP_GRACE = 0.0
SEED_DEADLINE = 1800  # seconds for topping the mailboxes up before the run
MAX_EMBEDDED_ACCOUNTS = 5_000
CSV_PREFIX = "locust"

DESCRIPTION = f"""\
Run a load scenario with Locust (headless, bounded) and write a capacity report.

  mailharness load --scenario term-start --users 200 --run-time 2m
      a throwaway Dovecot on 127.0.0.1, seeded, under 200 users ramping up and holding
  mailharness load --target staging.yaml --scenario webmail --users 2000 --spawn-rate 50 \\
                   --run-time 15m --workers 2 --threshold 'IMAP FETCH headers:p95<200ms'
      your server (the target must say disposable: true), two local generator processes

Scenarios (loadtests/scenarios/): {", ".join(available_scenarios()) or "none found"}; or a path to your
own YAML file. Each says which clients run (POP3 download-and-delete, POP3 leave-on-server,
IMAP webmail, IMAP IDLE on several devices), think times, mailbox sizes, LMTP delivery rate,
the ramp shape, and thresholds. See loadtests/README.md.

Written to --report-dir (default reports/<scenario>-<time>/):
  capacity.html            throughput and p50/p95/p99 per command over time, errors by kind,
                           new-mail notification latency, delivered vs retrieved, thresholds
  locust.html, locust_*.csv  Locust's own report and statistics (full history)
  run.json                 the verdicts and accounting, for scripts

Thresholds: 'NAME:METRIC<VALUE' with METRIC p50..p100, avg, median, max (ms or s), errors (%)
or rps (>), e.g. 'POP3 RETR:p99<1s', 'Aggregated:errors<1%', 'IMAP FETCH headers:rps>50'.

Exit code 1 when a threshold is breached, the error rate is above --max-error-rate, or a
delivered message was lost or retrieved twice; 2 for usage and configuration errors.
Limits: at most {MAX_USERS} users, {MAX_RUN_TIME // 3600} h and {MAX_WORKERS} workers; the run stops by itself.
"""


def parse_duration(text: str) -> int:
    """'90', '90s', '5m', '1h30m' -> seconds."""
    text = text.strip().lower()
    if text.isdigit():
        return int(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or not parts or not any(parts.groups()):
        raise ConfigError(f"--run-time {text!r}: write seconds or e.g. 90s, 5m, 1h30m")
    h, m, s = (int(g or 0) for g in parts.groups())
    return h * 3600 + m * 60 + s


def add_arguments(p) -> None:
    p.add_argument("--target", type=Path, metavar="FILE",
                   help="target file of the server to load (must be disposable: true). Default: start an embedded Dovecot and seed it")
    p.add_argument("--scenario", default="term-start", metavar="NAME|PATH",
                   help="scenario name in loadtests/scenarios/ or a YAML path (default term-start)")
    p.add_argument("--users", type=int, required=True, metavar="N", help=f"peak concurrent users (required, at most {MAX_USERS})")
    p.add_argument("--spawn-rate", type=finite_float, default=10.0, metavar="R",
                   help="users started per second when the scenario has no shape (default 10)")
    p.add_argument("--run-time", required=True, metavar="T", help=f"how long the run lasts: 90s, 5m, 1h (required, at most {MAX_RUN_TIME // 3600}h)")
    p.add_argument("--workers", type=int, default=0, metavar="K",
                   help="generator processes (Locust --processes K); 0 runs users in one process (default)")
    p.add_argument("--report-dir", type=Path, metavar="DIR", help="where reports go (default reports/<scenario>-<YYYYmmdd-HHMMSS>)")
    p.add_argument("--threshold", action="append", default=[], metavar="RULE",
                   help="fail the run unless RULE holds, e.g. 'IMAP FETCH headers:p95<200ms' (repeatable; adds to the scenario's)")
    p.add_argument("--max-error-rate", metavar="PCT", help="fail if more than PCT of all requests fail, e.g. 0.1%% (overrides the scenario)")
    p.add_argument("--accounts", type=int, metavar="N",
                   help=f"embedded server only: accounts to create (default: max(users, 8), at most {MAX_EMBEDDED_ACCOUNTS})")
    p.add_argument("--seed", action="store_true", help="with --target: top the mailboxes up to the scenario's mailbox before the run")
    p.add_argument("--think-scale", type=finite_float, default=1.0, metavar="F",
                   help="multiply the scenario's think times by F: 0.1 turns a scenario written for hours into a quick smoke run")
    p.add_argument("--stop-timeout", type=finite_float, default=10.0, metavar="S",
                   help="seconds users get to finish their current poll when the run ends (default 10)")
    p.add_argument("--source-address", metavar="RANGE", default=None,
                   help="local addresses to connect from, round-robin per user: 127.0.0.2-127.0.0.9 or a comma list "
                        "(overrides the scenario's source_address; one address has about 28,000 ephemeral ports "
                        "towards one server port)")
    p.add_argument("--quiet", action="store_true", help="keep Locust's console output in the report dir (locust.out) instead of showing it")


def run(args) -> int:
    started_wall = time.time()
    scenario = load_scenario(args.scenario)
    users, run_time, workers = _bounded(args)
    sources = (parse_source_addresses(args.source_address, "--source-address") if args.source_address
               else list(scenario.source_addresses))  # a bad range fails here, before any server starts
    thresholds = list(scenario.thresholds) + [parse_threshold(t, "--threshold ") for t in args.threshold]
    max_error_rate = parse_rate(args.max_error_rate, "--max-error-rate ") if args.max_error_rate else scenario.max_error_rate
    run_dir = args.report_dir or Path("reports") / f"{scenario.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "ledger").exists():
        shutil.rmtree(run_dir / "ledger")  # a journal from an earlier run here would confuse the accounting
    if (run_dir / "processes").exists():
        shutil.rmtree(run_dir / "processes")  # likewise the stress sessions' verdicts

    with _target_for_run(args, users, scenario) as (target, target_file, embedded, server_session):
        check_target_fits(scenario, target)
        plan = AccountPlan.for_scenario(target.accounts, scenario)
        if "pop3_delete" in plan.pools and len(plan.pools["pop3_delete"]) < max(1, workers):
            raise ConfigError(f"pop3_delete gets {len(plan.pools['pop3_delete'])} account(s) but --workers is {workers}; "
                              "each generator process needs its own download-and-delete mailboxes")
        seeding = "not seeded (as found)"
        if embedded or args.seed:
            from harness.load.seeding import seed_accounts

            result = seed_accounts(target, plan.all_accounts(), scenario.messages, scenario.size_mix, seed=scenario.seed,
                                   deadline=SEED_DEADLINE)
            if result.failed:
                raise HarnessError(f"seeding failed for {len(result.failed)} deliveries, e.g. {result.failed[0]}")
            seeding = f"seeded to {scenario.messages} messages each ({result.added} added, {result.present} already there)"
        _prepare_reports()
        print(f"mailharness load: {scenario.name} on {target.name}: {users} users, {run_time}s, "
              f"{f'{workers} workers' if workers else 'one process'}; accounts {plan.describe()}", file=sys.stderr)
        interrupted = None
        try:
            exit_code = _run_locust(args, target_file, scenario, run_dir, users, run_time, workers, server_session)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: Locust is stopped; report the part that ran
            interrupted, exit_code = interrupts.describe(), None
        finally:
            scrub_files(run_dir)
        accounting = None
        if interrupted:
            pass  # no drain: stopping promptly matters more than the lost/duplicated count
        elif "pop3_delete" in plan.pools and scenario.delivery and scenario.delivery.to.get("pop3_delete"):
            from harness.load.accounting import drain, settle

            accounting = settle(run_dir / "ledger", drain(target, plan.pools["pop3_delete"])).to_dict()

    from harness.load.capacity_report import CsvSet, write_capacity_report

    csvs = CsvSet.load(run_dir, CSV_PREFIX)
    if interrupted and not csvs.stats:
        (run_dir / "run.json").write_text(json.dumps({
            "passed": False, "interrupted": interrupted, "locust_exit_code": None,
            "problems": [f"interrupted ({interrupted}) before Locust wrote any statistics"]}, indent=2))
        print(f"mailharness load: interrupted ({interrupted}) before Locust wrote any statistics; see {run_dir / 'run.json'}",
              file=sys.stderr)
        return interrupts.exit_code()
    if not csvs.stats:
        output = _tail(run_dir / "locust.out") if args.quiet else ""
        raise HarnessError(f"Locust wrote no statistics (exit code {exit_code}); see {run_dir / 'locust.log'}\n"
                           f"{_tail(run_dir / 'locust.log')}\n{output}".rstrip())
    verdicts = evaluate(thresholds, csvs.stats)
    if max_error_rate is not None:
        verdicts.append(error_rate_verdict(max_error_rate, csvs.stats))
    problems = [f"threshold breached: {v.threshold.text} (observed {v.shown})" for v in verdicts if not v.passed]
    if interrupted:
        problems.insert(0, f"interrupted ({interrupted}) after {time.time() - started_wall:.0f}s of a planned {run_time}s "
                           "run: the figures cover the part that ran, and no mail accounting was done")
    if accounting and not accounting["ok"]:
        problems.append(f"mail accounting: {accounting['lost_count']} lost, {accounting['duplicated_count']} duplicated"
                        + (f", drain errors: {'; '.join(accounting['drain_errors'])}" if accounting["drain_errors"] else ""))
    if exit_code not in (0, 1, None):
        problems.append(f"Locust exited with code {exit_code} (see locust.log)")
    from harness.stress.command import consistency_of

    consistency = consistency_of(run_dir)
    if consistency and consistency["must"]:
        problems.append(f"{sum(consistency['must'].values())} consistency violation(s): "
                        + ", ".join(f"{k} {n}" for k, n in sorted(consistency["must"].items())))
    facts = _facts(args, scenario, target, plan, run_dir, users, run_time, workers, seeding, started_wall)
    if sources:
        facts["source_addresses"] = _describe_sources(sources)
    section = ""
    if consistency:
        from harness.stress.report import section_html

        section = section_html(consistency)
    report = write_capacity_report(run_dir, facts=facts, verdicts=verdicts, accounting=accounting, problems=problems, csvs=csvs,
                                   consistency=section)
    (run_dir / "run.json").write_text(scrub(json.dumps({
        "passed": not problems, "interrupted": interrupted, "problems": problems, "facts": facts,
        "thresholds": [{"rule": v.threshold.text, "observed": v.shown, "passed": v.passed} for v in verdicts],
        "accounting": accounting, "request_counts": csvs.request_counts(), "locust_exit_code": exit_code,
        "consistency": consistency,
    }, indent=2)))
    _print_summary(csvs, verdicts, accounting, problems, report)
    if interrupted:
        return interrupts.exit_code()
    return 1 if problems else 0


def check_run_bounds(args, max_users: int = MAX_USERS) -> int:
    """--users, --run-time and --workers within their bounds (load and stress); the run time in seconds."""
    if not 1 <= args.users <= max_users:
        raise ConfigError(f"--users must be between 1 and {max_users}")
    run_time = parse_duration(args.run_time)
    if not 1 <= run_time <= MAX_RUN_TIME:
        raise ConfigError(f"--run-time must be between 1s and {MAX_RUN_TIME // 3600}h")
    if not 0 <= args.workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be between 0 and {MAX_WORKERS}")
    return run_time


def _bounded(args) -> tuple[int, int, int]:
    run_time = check_run_bounds(args)
    if args.spawn_rate <= 0:
        raise ConfigError("--spawn-rate must be above 0")
    if not 0 < args.think_scale <= 100:
        raise ConfigError("--think-scale must be above 0 (and at most 100)")
    if not 0 <= args.stop_timeout <= MAX_STOP_TIMEOUT:
        raise ConfigError(f"--stop-timeout must be between 0 and {MAX_STOP_TIMEOUT} seconds")
    return args.users, run_time, args.workers


@contextmanager
def _target_for_run(args, users: int, scenario: Scenario):
    """(target, target file path, embedded?) for the run; an embedded Dovecot is stopped afterwards."""
    if args.target:
        target = load_target(args.target)
        target.print_warnings()
        if not target.disposable:
            raise UnsafeAccount(
                f"{args.target}: a load run deletes mail (POP3 download-and-delete, the final drain) and sets flags; "
                "add `disposable: true` to the target file if these accounts are the harness's to use"
            )
        if args.accounts:
            raise ConfigError("--accounts only applies to the embedded server; with --target the target file lists the accounts")
        yield target, args.target, False, None
        return
    from harness.targets.managed_dovecot import ManagedDovecot

    accounts = args.accounts or min(MAX_EMBEDDED_ACCOUNTS, max(users, 8))
    if not 1 <= accounts <= MAX_EMBEDDED_ACCOUNTS:
        raise ConfigError(f"--accounts must be between 1 and {MAX_EMBEDDED_ACCOUNTS}")
    with tempfile.TemporaryDirectory(prefix="mailharness-load-") as private:
        dovecot = ManagedDovecot(accounts=accounts)
        dovecot.start()
        try:
            target_file = Path(private) / "target.yaml"  # holds passwords: not in the report dir
            dovecot.target.dump(target_file)
            yield dovecot.target, target_file, True, dovecot.proc.pid  # its session: the master and its children
        finally:
            dovecot.stop(timeout=SERVER_STOP_GRACE)


def _prepare_reports() -> None:
    """Import the report code and compile capacity.html's template before the run: after Ctrl-C or
    SIGTERM that work (about half a second on a busy machine) would delay the exit."""
    from harness.load.capacity_report import template
    from harness.stress.command import consistency_of  # noqa: F401
    from harness.stress.report import section_html  # noqa: F401

    template()


def _run_locust(args, target_file: Path, scenario: Scenario, run_dir: Path, users: int, run_time: int, workers: int,
                server_session: int | None = None) -> int:
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--users", str(users), "--spawn-rate", str(args.spawn_rate), "--run-time", f"{run_time}s",
        "--stop-timeout", f"{math.ceil(args.stop_timeout)}s",
        "--html", str(run_dir / "locust.html"), "--csv", str(run_dir / CSV_PREFIX), "--csv-full-history",
        "--logfile", str(run_dir / "locust.log"), "--loglevel", "INFO",
        "--exit-code-on-error", "0",  # failed requests are judged by thresholds, not by Locust
        "--target-file", str(target_file), "--scenario", str(scenario.source), "--ledger-dir", str(run_dir / "ledger"),
        "--think-scale", str(args.think_scale),
        "--stress-out", str(run_dir / "processes"),  # where the stress scenario's sessions leave their verdicts
    ]
    if getattr(args, "source_address", None):
        command += ["--source-address", args.source_address]
    if workers:
        command += ["--processes", str(workers), *master_on_loopback()]
    # Hard stop well after --run-time: a wedged run must not hold the machine (or CI) forever.
    deadline = run_time + args.stop_timeout + 120
    with open(run_dir / "locust.out", "wb") if args.quiet else nullcontext() as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True)
        try:
            with CpuSampler(run_dir, proc.pid, server_session):  # cpu.csv: generator vs server, for the report
                return wait_interruptibly(proc, deadline)
        except subprocess.TimeoutExpired:
            _kill_session(proc)
            raise HarnessError(f"Locust did not stop within {deadline}s of starting; killed it (see {run_dir / 'locust.log'})") from None
        except BaseException:  # Ctrl-C, SIGTERM, any error: Locust and its workers must not outlive us
            try:
                os.killpg(proc.pid, signal.SIGINT)  # Locust writes its reports on the way out
                proc.wait(timeout=STOP_GRACE)
            except (subprocess.TimeoutExpired, KeyboardInterrupt, ProcessLookupError):  # wedged, or a second Ctrl-C
                pass
            _kill_session(proc)  # its --processes workers too, whatever Locust managed
            raise


def master_on_loopback() -> list[str]:
    """Locust options for --processes: master and workers talk over 127.0.0.1 on a free port. Locust's default
    (every interface, port 5557) lets two runs on one machine cross: the second master cannot bind, and its
    workers join the first run's master."""
    from harness.targets.managed_server import free_ports

    port = str(free_ports(1)[0])
    return ["--master-bind-host", "127.0.0.1", "--master-bind-port", port, "--master-host", "127.0.0.1", "--master-port", port]


def wait_interruptibly(proc: subprocess.Popen, timeout: float) -> int:
    """proc.wait(timeout), but a Ctrl-C or SIGTERM reaches the caller at once: Popen.wait, interrupted, first
    waits another 0.25 s for the child to exit (assuming the terminal's SIGINT reached it too; Locust runs in
    its own session and gets the signal only from us)."""
    deadline = time.monotonic() + timeout
    while (code := proc.poll()) is None:
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        time.sleep(0.1)
    return code


def scrub_files(run_dir: Path) -> None:
    """Locust's own files (CSVs, HTML, log, console copy) with known passwords masked, in place.

    The users already mask what they report; this also covers what Locust records by itself
    (an exception's traceback, a log line of a library)."""
    for path in run_dir.glob("locust*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        clean = scrub_bytes(data)
        if clean != data:
            path.write_bytes(clean)


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL Locust's whole session (its --processes workers too) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass
    proc.wait()


def _facts(args, scenario, target: Target, plan, run_dir, users, run_time, workers, seeding, started_wall) -> dict:
    delivery = scenario.delivery
    shape = scenario.shape
    return {
        "run_name": run_dir.name,
        "scenario": scenario.name,
        "scenario_description": scenario.description,
        "scenario_file": str(scenario.source),
        "target": target.name,
        "users": users,
        "spawn_rate": args.spawn_rate,
        "run_time": run_time,
        "think_scale": args.think_scale,
        "generator": f"{workers} worker processes (Locust --processes)" if workers else "one process",
        "accounts": plan.describe(),
        "seeding": seeding,
        "delivery": (f"{delivery.rate:g}/s over LMTP by {delivery.senders} sender(s) to "
                     + ", ".join(f"{k} ({v:g})" for k, v in delivery.to.items())) if delivery else "none",
        "shape": (f"ramp {shape.ramp if isinstance(shape.ramp, str) else f'{shape.ramp:g}s'}"
                  + (f" in {shape.steps} steps" if shape.steps else "") + ", then hold") if shape else "",
        "started": datetime.fromtimestamp(started_wall).isoformat(timespec="seconds"),
        "wall_seconds": round(time.time() - started_wall, 1),
        "generator_cpu": _cpu_facts(run_dir),
        "files": [("locust.html", "locust.html"), ("stats", f"{CSV_PREFIX}_stats.csv"),
                  ("history", f"{CSV_PREFIX}_stats_history.csv"), ("failures", f"{CSV_PREFIX}_failures.csv"),
                  ("exceptions", f"{CSV_PREFIX}_exceptions.csv"), ("log", "locust.log")],
    }


def _describe_sources(addresses: list[str]) -> str:
    shown = ", ".join(addresses[:4]) + (f", ... {addresses[-1]}" if len(addresses) > 4 else "")
    return f"{len(addresses)} local address{'es' if len(addresses) > 1 else ''} ({shown}), round-robin per user"


def _cpu_facts(run_dir: Path) -> dict | None:
    summary = summarize(read_cpu_csv(run_dir))
    if summary is None:
        return None
    return {"generator_cores_mean": round(summary.generator_cores_mean, 2),
            "generator_cores_peak": round(summary.generator_cores_peak, 2),
            "generator_busiest_process": round(summary.generator_busiest_core_peak, 2),
            "server_cores_mean": None if summary.server_cores_mean is None else round(summary.server_cores_mean, 2),
            "server_cores_peak": None if summary.server_cores_peak is None else round(summary.server_cores_peak, 2),
            "machine_cores_mean": None if summary.machine_cores_mean is None else round(summary.machine_cores_mean, 2),
            "cpus": summary.cpus, "verdict": summary.verdict()}


def _print_summary(csvs, verdicts, accounting, problems, report: Path) -> None:
    total = next((r for r in csvs.stats if r["Name"] == "Aggregated"), None)
    if total:
        print(f"requests: {total['Request Count']}, failures: {total['Failure Count']}, {float(total['Requests/s']):.1f}/s")
    for v in verdicts:
        print(f"  {'ok ' if v.passed else 'BREACH'} {v.threshold.text}  (observed {v.shown})")
    if accounting:
        print(f"mail accounting: {accounting['delivered']} delivered, {accounting['retrieved_during_run']} retrieved during the run, "
              f"{accounting['retrieved_by_drain']} by the drain, {accounting['lost_count']} lost, {accounting['duplicated_count']} duplicated")
    print(("FAILED: " + "; ".join(problems)) if problems else "PASSED")
    print(f"capacity report: {report}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
