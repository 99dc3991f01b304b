"""`mailharness bench`: how much load one generator process can produce, so capacity runs know
how many workers they need (and that the generator, not the server, is not the limit)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from harness.arguments import finite_float
from harness.errors import ConfigError, HarnessError, UnsafeAccount
from harness.load.source_addresses import parse_source_addresses
from harness.targets.target_file import load_target

MAX_USERS = 5_000
MAX_IDLE_USERS = 30_000
MAX_DURATION = 600
MAX_ROUNDS = 15
# Paired rounds of a comparison: other work on the machine moves between a round of ours and imaptest's next to it
# (and slows our interpreter more than imaptest). Many short pairs, each pair's two runs back to back and every
# other pair in the opposite order (ABBA), ride that out better than a few long ones: 9 pairs of 8 s take about as
# long as 5 of 15 s.
COMPARE_ROUNDS = 9
COMPARE_DURATION = 8.0
DURATION = 15.0
# Other processes using more than this share of a core during a round (on average) make the ratio read low.
BUSY_OTHERS = 0.25
# imaptest's side of the comparison: its webmail-like mix (shared/tools/imaptest/README.md). "-" zeroes every
# state but LOGIN, SELECT and LOGOUT; then LIST, FETCH (flags and headers of a range), FETCH2 (one
# message's body) and STORE each page view, LOGOUT in 10% of them.
IMAPTEST_MIX = ["-", "list=100", "fetch=100", "fetch2=100,0", "store=100", "logout=10"]

DESCRIPTION = """\
Measure the load generator itself: protocol commands per generator CPU-second.

  mailharness bench                        webmail mix, 20 users without think time, embedded Dovecot
  mailharness bench --compare-imaptest /path/to/imaptest
                                           the same, interleaved with Dovecot's imaptest (C) on its webmail
                                           mix against the same server: both figures and the ratio
  mailharness bench --users 50 --duration 30 --target staging.yaml
  mailharness bench --idle-users 25000 --source-address 127.0.0.2-127.0.0.9
  mailharness bench --suite                whole `mailharness run -n 2` runs of the bundled suites, 3 rounds
                                           how many IDLE connections one process holds, notification latency

The webmail mix is what `imap_webmail` users do per page view: LIST, SELECT INBOX, FETCH
headers of the newest 50, FETCH BODYSTRUCTURE + text of one message, FETCH its attachment
part if it has one, STORE \\Seen; LOGOUT and LOGIN again every 10 views. Pipelined (the
default, as imaptest's default): the page's commands go in one write, using the message count
the session last saw; the attachment fetch waits for the structure. The users run in a
separate process that does nothing else, and its time.process_time() over the measured
window is the CPU figure (connects are not counted as commands). imaptest's figure is its
commands (logins included) over its user+system CPU (getrusage of the child), whole run.
Runs go in pairs, back to back, every other pair imaptest first (ours, imaptest, imaptest, ours, ...);
the ratio is the median of the paired ratios, shown with their range and middle half. Each run
says how many cores other processes used meanwhile: other work makes the ratio read low.

Without --target an embedded Dovecot is started on 127.0.0.1 and seeded; its CPU use is
reported too. A --target must be disposable: true (the mix sets \\Seen flags).
"""


def add_arguments(p) -> None:
    p.add_argument("--target", type=Path, metavar="FILE", help="target file (disposable: true); default: embedded Dovecot")
    p.add_argument("--users", type=int, default=20, metavar="N", help=f"concurrent webmail users without think time (default 20, at most {MAX_USERS})")
    p.add_argument("--duration", type=finite_float, default=None, metavar="S",
                   help=f"measured seconds of each run (default {DURATION:g}; {COMPARE_DURATION:g} with --compare-imaptest; "
                        f"at most {MAX_DURATION})")
    p.add_argument("--warmup", type=finite_float, default=3.0, metavar="S", help="seconds of load before measuring (default 3)")
    p.add_argument("--messages", type=int, default=100, metavar="N", help="messages seeded per account (default 100)")
    p.add_argument("--no-pipelining", action="store_true",
                   help="one command at a time, waiting for each answer (for imaptest too: no_pipelining)")
    p.add_argument("--compare-imaptest", type=Path, metavar="PATH",
                   help="an imaptest binary: run its webmail mix against the same server, interleaved with ours, "
                        "and print both figures and the ratio")
    p.add_argument("--rounds", type=int, default=None, metavar="N",
                   help=f"measured runs of each generator, interleaved; medians are printed (default {COMPARE_ROUNDS} "
                        f"with --compare-imaptest, else 1; at most {MAX_ROUNDS})")
    p.add_argument("--idle-users", type=int, default=0, metavar="N",
                   help="instead: open N IMAP connections holding IDLE (one account each) while mail arrives, "
                        "and report how many one process held, the notification latency and RSS per connection. "
                        "Connections beyond one fd table's limit (ulimit -Hn, when it cannot be raised) go to a "
                        "second thread with its own fd table (unshare(CLONE_FILES)); still one process")
    p.add_argument("--fd-limit", type=int, default=None, metavar="N",
                   help="with --idle-users: use at most N file descriptors per fd table, as on a machine whose limit "
                        "is N (default: the hard limit); shows the several-fd-table path on a machine that needs none")
    p.add_argument("--delivery-rate", type=finite_float, default=20.0, metavar="R", help="with --idle-users: messages per second delivered (default 20)")
    p.add_argument("--spawn-rate", type=finite_float, default=None, metavar="R",
                   help="with --idle-users: new connections per second while ramping up (default 100; each is a login "
                        "the server must keep up with)")
    p.add_argument("--tls", action="store_true",
                   help="run the measurement twice against the embedded Dovecot, cleartext and over implicit TLS "
                        "(throwaway CA), and print commands per CPU-second of each side by side (harness/load/bench_tls.py)")
    p.add_argument("--server-tls", choices=["implicit", "starttls"], help=argparse.SUPPRESS)  # one side of --tls
    p.add_argument("--source-address", metavar="RANGE", default=None,
                   help="local addresses to connect from, spread round-robin: 127.0.0.2-127.0.0.9 or a comma list "
                        "(one address has about 28,000 ephemeral ports towards one server port)")
    p.add_argument("--stress", action="store_true",
                   help="instead: the stress mode's sessions (5 per mailbox, random commands), measured with the model's "
                        "checking on and then off, side by side")
    p.add_argument("--suite", nargs="?", const=True, default=None, metavar="PATH", type=Path,
                   help="instead: time whole `mailharness run -n W` runs of the bundled suites (or the suite file or "
                        "directory PATH): server start, start-up, tests, reports; print the medians, with where the "
                        "tests' time went (default 3 rounds)")
    p.add_argument("--workers", type=int, default=None, metavar="W", help="with --suite: -n of each run (default 2)")
    p.add_argument("--server", metavar="NAME", help="with --suite: the managed server to run against (default dovecot)")
    p.add_argument("--json", action="store_true", help="print the raw result as JSON")


def run(args) -> int:
    if args.duration is None:
        args.duration = COMPARE_DURATION if args.compare_imaptest else DURATION
    if args.suite is not None:
        from harness.engine.suite_bench import run_suite_bench

        return run_suite_bench(args)
    if args.workers is not None or args.server:
        raise ConfigError("--workers and --server go with --suite")
    if args.tls and args.compare_imaptest:
        raise ConfigError("--compare-imaptest runs imaptest in cleartext; leave out --tls")
    if args.tls:
        from harness.load.bench_tls import compare

        return compare(args, run)
    if args.stress:
        if args.compare_imaptest or args.idle_users:
            raise ConfigError("--stress measures the stress sessions; leave out --compare-imaptest and --idle-users")
        return _stress(args)
    idle = args.idle_users > 0
    users = args.idle_users if idle else args.users
    if not 1 <= users <= (MAX_IDLE_USERS if idle else MAX_USERS):
        raise ConfigError(f"{'--idle-users' if idle else '--users'} must be between 1 and {MAX_IDLE_USERS if idle else MAX_USERS}")
    if not 1 <= args.duration <= MAX_DURATION:
        raise ConfigError(f"--duration must be between 1 and {MAX_DURATION} seconds")
    if args.spawn_rate is not None and not 0 < args.spawn_rate <= 1000:
        raise ConfigError("--spawn-rate must be above 0 and at most 1000 per second")
    rounds = args.rounds if args.rounds is not None else (COMPARE_ROUNDS if args.compare_imaptest else 1)
    if not 1 <= rounds <= MAX_ROUNDS:
        raise ConfigError(f"--rounds must be between 1 and {MAX_ROUNDS}")
    if args.compare_imaptest:
        if idle:
            raise ConfigError("--compare-imaptest measures the webmail mix; leave out --idle-users")
        if not (args.compare_imaptest.is_file() and os.access(args.compare_imaptest, os.X_OK)):
            raise ConfigError(f"--compare-imaptest {args.compare_imaptest}: not an executable file")
    if args.source_address:
        parse_source_addresses(args.source_address, "--source-address")  # a bad range fails before any server starts
    if args.fd_limit is not None and not idle:
        raise ConfigError("--fd-limit goes with --idle-users")
    if args.fd_limit is not None and not 64 <= args.fd_limit:
        raise ConfigError("--fd-limit must be at least 64")
    if idle:
        check_fd_limit(users, args.fd_limit)
    with tempfile.TemporaryDirectory(prefix="mailharness-bench-") as tmp:
        tmp = Path(tmp)
        scenario_file = tmp / "bench.yaml"
        scenario_file.write_text(yaml.safe_dump(_scenario(args, idle)))
        if args.target:
            target = load_target(args.target)
            if not target.disposable:
                raise UnsafeAccount(f"{args.target}: the benchmark sets \\Seen flags and adds mail; it needs disposable: true")
            _show(args, _measure(args, idle, users, rounds, args.target, scenario_file, target, None, tmp), idle)
        else:
            from harness.targets.managed_dovecot import ManagedDovecot

            with ManagedDovecot(accounts=users, tls=args.server_tls or False, **_server_options(idle, users)) as dovecot:
                target_file = tmp / "target.yaml"
                dovecot.target.dump(target_file)
                # shown before the server is taken down: removing 20,000 mailboxes takes minutes on some disks
                _show(args, _measure(args, idle, users, rounds, target_file, scenario_file, dovecot.target, dovecot, tmp), idle)
    return 0


def _show(args, result: dict, idle: bool) -> None:
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result, idle)
    sys.stdout.flush()


def _server_options(idle: bool, users: int) -> dict:
    """The embedded Dovecot sized for the benchmark: many IDLE users need hibernation and high limits."""
    return {"idle_clients": users} if idle else {}


STRESS_SCENARIO = {
    "users": {"stress": {"weight": 1, "think_time": 0, "sessions_per_mailbox": 5, "pop3_sessions": 0, "lmtp_rate": 0,
                         "checkpoint_interval": 10}},
    "mailbox": {"messages": 0},
    "timeout": 30,
}


def _stress(args) -> int:
    """Commands per generator CPU-second of the stress sessions, with checking on and off, on one embedded Dovecot."""
    if not 1 <= args.users <= MAX_USERS:
        raise ConfigError(f"--users must be between 1 and {MAX_USERS}")
    if not 1 <= args.duration <= MAX_DURATION:
        raise ConfigError(f"--duration must be between 1 and {MAX_DURATION} seconds")
    results = {}
    with tempfile.TemporaryDirectory(prefix="mailharness-bench-") as tmp:
        tmp = Path(tmp)
        scenario_file = tmp / "stress.yaml"
        scenario_file.write_text(yaml.safe_dump(STRESS_SCENARIO))
        if args.target:
            target = load_target(args.target)
            if not target.disposable:
                raise UnsafeAccount(f"{args.target}: stress sessions delete and flag mail; the target needs disposable: true")
            for checking in (True, False):
                results["on" if checking else "off"] = _measure(args, "stress", args.users, 1, args.target, scenario_file,
                                                                target, None, tmp, checking=checking)
        else:
            from harness.targets.managed_dovecot import ManagedDovecot

            with ManagedDovecot(accounts=max(2, args.users // 5 + 1)) as dovecot:
                target_file = tmp / "target.yaml"
                dovecot.target.dump(target_file)
                for checking in (True, False):
                    results["on" if checking else "off"] = _measure(args, "stress", args.users, 1, target_file, scenario_file,
                                                                    dovecot.target, dovecot, tmp, checking=checking)
    on, off = results["on"], results["off"]
    ratio = on["commands_per_cpu_second"] / off["commands_per_cpu_second"] if off["commands_per_cpu_second"] else 0.0
    results["ratio"] = ratio
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"stress sessions against {on['server']}: {args.users} sessions (5 per mailbox), {args.duration:g} s measured each")
    for label, r in (("checking on ", on), ("checking off", off)):
        print(f"  {label}: {r['commands']:,} commands, {r['cpu_seconds']:.2f} generator CPU-s -> "
              f"{r['commands_per_cpu_second']:,.0f} commands per CPU-second ({r['commands_per_second']:,.0f}/s wall, "
              f"generator busy {r['cpu_seconds'] / r['wall_seconds']:.0%}; {r['failures']} failed)")
    print(f"  checking costs {1 - ratio:.0%} of the rate (on/off = {ratio:.2f}; the goal is at least 0.5)")
    if on.get("violations"):
        print(f"  violations while measuring: {on['violations']}")
    return 0


def _scenario(args, idle: bool) -> dict:
    extra = {"source_address": args.source_address} if args.source_address else {}
    if idle:
        return {
            "users": {"imap_idle": {"weight": 1, "think_time": 1, "devices": 1, "reidle_after": 1700}},
            "mailbox": {"messages": 0},
            "delivery": {"rate": args.delivery_rate, "to": {"imap_idle": 1}, "size_mix": {"small": 100}},
            "timeout": 60,
            **extra,
        }
    return {
        "users": {"imap_webmail": {"weight": 1, "think_time": 0, "headers": 50, "actions_per_session": 10,
                                   **({} if args.no_pipelining else {"pipelining": True})}},
        "mailbox": {"messages": args.messages, "size_mix": {"small": 70, "medium": 25, "large": 5}},
        **extra,
    }


def _measure(args, idle: bool | str, users: int, rounds: int, target_file: Path, scenario_file: Path, target, dovecot,
             tmp: Path, checking: bool = True) -> dict:
    """``idle``: True (IDLE hold), False (webmail commands) or "stress" (the stress sessions, ``checking`` on or off)."""
    stress = idle == "stress"
    if stress:
        idle = False
    elif not idle:
        from harness.load.seeding import seed_accounts

        seeded = seed_accounts(target, target.accounts[:users], args.messages, {"small": 70, "medium": 25, "large": 5})
        if seeded.failed:
            raise HarnessError(f"seeding failed: {seeded.failed[0]}")
    spawn_rate = min(args.spawn_rate or 100.0, float(users)) if idle else float(users)
    job = {
        "mode": "stress" if stress else "idle" if idle else "commands",
        "checking": checking,
        "target_file": str(target_file),
        "scenario_file": str(scenario_file),
        "users": users + (1 if idle else 0),  # + the delivery user
        "spawn_rate": spawn_rate,
        "warmup": args.warmup,
        "duration": args.duration,
        "ramp_timeout": max(30.0, users / spawn_rate * 1.5 + 30),
        "fd_limit": getattr(args, "fd_limit", None),
    }
    ours, theirs = [], []
    for n in range(rounds):
        # Each pair back to back, every other pair imaptest first (ABBA): a drift in the machine's other work
        # during the comparison favours neither side.
        if args.compare_imaptest and n % 2:
            theirs.append(_run_imaptest(args, target, users, tmp, dovecot))
            ours.append(_run_generator(job, target, dovecot))
            continue
        ours.append(_run_generator(job, target, dovecot))
        if args.compare_imaptest:
            theirs.append(_run_imaptest(args, target, users, tmp, dovecot))
    result = dict(ours[len(ours) // 2] if rounds == 1 else _median_round(ours))
    result["server"] = target.name
    result["pipelining"] = not args.no_pipelining
    if args.source_address:
        result["source_addresses"] = args.source_address
    if idle:
        result["server_warnings"] = idle_server_warnings(users, dovecot)
    if rounds > 1:
        result["rounds"] = [{"mailharness": round_figures(o), **({"imaptest": t} if theirs else {})}
                            for o, t in zip(ours, theirs or [None] * rounds)]
    if theirs:
        ratios = [o["commands_per_cpu_second"] / t["commands_per_cpu_second"]
                  for o, t in zip(ours, theirs) if t["commands_per_cpu_second"]]
        result["imaptest"] = {
            "binary": str(args.compare_imaptest),
            "mix": " ".join(IMAPTEST_MIX + (["no_pipelining"] if args.no_pipelining else [])),
            "commands_per_cpu_second": statistics.median(t["commands_per_cpu_second"] for t in theirs),
            "commands_per_second": statistics.median(t["commands_per_second"] for t in theirs),
            "failures": sum(t["errors"] for t in theirs),
        }
        result["ratio"] = statistics.median(ratios) if ratios else 0.0
        result["ratio_range"] = [min(ratios), max(ratios)] if ratios else []
        result["ratio_quartiles"] = quartiles(ratios) if len(ratios) >= 4 else []
        result["ratios"] = ratios
    return result


FD_MARGIN = 256  # file descriptors the generator needs besides one per connection (Locust, logs, delivery)
GENERATOR_OPEN_FDS = 64  # about what the generator has open before its users connect (imports, pipes, epoll)


def check_fd_limit(users: int, cap: int | None = None) -> int:
    """One process holds every connection: it needs a file descriptor each. Returns how many fd tables the
    generator will use: 1 when the open-files limit covers the users (raised here as far as allowed), more
    when it cannot be raised and threads with their own fd table can (harness/load/fd_tables.py). Refuses
    a run neither covers."""
    from harness.load.fd_tables import MAX_TABLES, probe, tables_needed
    from harness.load.open_files import raise_open_file_limit

    needed = users + FD_MARGIN
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    got = raise_open_file_limit(needed)  # in this process too: it shows what the generator will get
    if cap is not None:  # --fd-limit: as if the machine allowed no more
        got = hard = cap if got == resource.RLIM_INFINITY else min(got, cap)
    if got == resource.RLIM_INFINITY or got >= needed:
        return 1
    allowed = max(got, hard)
    raise_it = (f"raise the hard limit for one fd table (ulimit -Hn {needed} as root with CAP_SYS_RESOURCE, "
                f"LimitNOFILE={needed} for a service, or nofile in /etc/security/limits.conf)")
    tables, _ = tables_needed(users, got, GENERATOR_OPEN_FDS)
    if not 1 <= tables <= MAX_TABLES:
        raise ConfigError(
            f"--idle-users {users:,} needs about {needed:,} file descriptors, and this machine allows {allowed:,} per "
            f"fd table (ulimit -Hn); even {MAX_TABLES} fd tables in one process would not hold them: {raise_it}, "
            f"or ask for fewer users")
    why_not = probe()
    if why_not:
        raise ConfigError(
            f"--idle-users {users:,} needs about {needed:,} file descriptors in one process, but this machine allows "
            f"{allowed:,} (ulimit -Hn) and a thread cannot get its own fd table here ({why_not}): {raise_it}, "
            f"or ask for at most {allowed - FD_MARGIN:,} users")
    return tables


def idle_server_warnings(users: int, dovecot) -> list[str]:
    """What on this machine keeps a local server from announcing new mail to `users` IDLE sessions promptly."""
    warnings = []
    try:
        instances = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    except (OSError, ValueError):
        instances = None
    if instances is not None and instances < users + 200:
        warnings.append(f"fs.inotify.max_user_instances is {instances}: Dovecot can watch (and hibernate) only that "
                        f"many IDLE sessions; the rest poll. For {users:,}: sysctl -w fs.inotify.max_user_instances="
                        f"{max(users * 2, 1024)}")
    if dovecot is not None:
        log = dovecot.log_tail(400)
        for marker in ("process_limit", "client_limit", "Too many open files", "inotify"):
            line = next((line for line in reversed(log.splitlines()) if marker in line), None)
            if line:
                warnings.append(f"Dovecot's log: {line[-300:]}")
    return warnings


def quartiles(values: list[float]) -> list[float]:
    """The first and third quartiles: the middle half of the paired ratios lies between them."""
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return [q1, q3]


def round_figures(r: dict) -> dict:
    keys = ("commands", "failures", "cpu_seconds", "wall_seconds", "commands_per_cpu_second", "commands_per_second",
            "machine_load", "others_cores")
    return {k: r[k] for k in keys if k in r}


def _median_round(results: list[dict]) -> dict:
    """The round with the median commands per CPU-second (its per-command counts come with it)."""
    ordered = sorted(results, key=lambda r: r["commands_per_cpu_second"])
    return ordered[len(ordered) // 2]


def _run_generator(job: dict, target, dovecot) -> dict:
    server_cpu = ServerCpu(dovecot) if dovecot is not None else None
    machine, children = MachineCpu(), resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    timeout = job["ramp_timeout"] + job["warmup"] + job["duration"] + 120
    proc = subprocess.run([sys.executable, "-m", "harness.load.bench_generator"], input=json.dumps(job),
                          capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise HarnessError(f"the generator process failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if server_cpu is not None:  # over the generator's whole life (warm-up included), not only the measured window
        result["server_cpu_seconds"] = server_cpu.seconds()
        result["server_wall_seconds"] = time.monotonic() - started
        result["others_cores"] = machine.others(time.monotonic() - started, _children_cpu(children),
                                                result["server_cpu_seconds"])
    result["machine_load"] = os.getloadavg()[0]  # the 1-minute average as the run ends: how busy the machine was
    result["commands_per_cpu_second"] = result["commands"] / result["cpu_seconds"] if result["cpu_seconds"] else 0.0
    result["commands_per_second"] = result["commands"] / result["wall_seconds"] if result["wall_seconds"] else 0.0
    return result


def _run_imaptest(args, target, users: int, tmp: Path, dovecot) -> dict:
    """One run of imaptest's webmail mix: its commands (all states, logins included) per CPU-second of its process."""
    from harness.load.messages import seed_message

    template, password = imaptest_users(target.accounts[:users])
    mbox = tmp / "imaptest.mbox"
    if not mbox.exists():
        with open(mbox, "wb") as out:  # messages for APPEND, which this mix never sends, but imaptest wants the file
            for n in range(1, 11):
                out.write(b"From mailharness@localhost Thu Jan  1 00:00:00 2026\n"
                          + seed_message(n, "small", 1).replace(b"\r\n", b"\n") + b"\n")
    secs = max(1, round(args.duration))
    command = [str(args.compare_imaptest), f"host={target.imap.host}", f"port={target.imap.port}",
               f"user={template}", f"users={users}", f"pass={password}", f"clients={users}", f"secs={secs}", f"mbox={mbox}", *IMAPTEST_MIX]
    if args.no_pipelining:
        command.append("no_pipelining")
    server_cpu = ServerCpu(dovecot) if dovecot is not None else None
    machine = MachineCpu()
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=secs + 120, check=False)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"imaptest did not finish within {secs + 120} s") from None
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic() - started
    server_seconds = server_cpu.seconds() if server_cpu is not None else None
    counts = imaptest_totals(proc.stdout)
    if proc.returncode != 0 or counts is None:
        raise HarnessError(f"imaptest failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    commands = sum(counts.values())
    errors = sum(1 for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error:"))
    result = {"commands": commands, "per_command": counts, "errors": errors, "cpu_seconds": cpu, "wall_seconds": wall,
              "machine_load": os.getloadavg()[0],
              "commands_per_cpu_second": commands / cpu if cpu else 0.0, "commands_per_second": commands / wall}
    if server_seconds is not None:
        result["server_cpu_seconds"] = server_seconds
        result["others_cores"] = machine.others(wall, cpu, server_seconds)
    return result


def imaptest_users(accounts) -> tuple[str, str]:
    """imaptest's user template and password for accounts PREFIX1..PREFIXn sharing one password."""
    prefix = accounts[0].user.rstrip("0123456789")
    if any(a.user != f"{prefix}{n}" for n, a in enumerate(accounts, 1)) or len({a.password for a in accounts}) > 1:
        raise ConfigError("--compare-imaptest: imaptest logs in as user%d with one password; the target's accounts "
                          f"must be named {prefix or 'user'}1..{prefix or 'user'}{len(accounts)} and share a password")
    return prefix.replace("%", "%%") + "%d", accounts[0].password


def imaptest_totals(output: str) -> dict[str, int] | None:
    """imaptest's final per-state command counts, from the lines after "Totals:" (names, weights, counts)."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "Totals:" and i + 3 < len(lines):
            names, counts = lines[i + 1].split(), lines[i + 3].split()
            if len(names) == len(counts) and all(c.isdigit() for c in counts):
                return dict(zip(names, map(int, counts)))
    return None


def _children_cpu(before) -> float:
    """User + system seconds of the child processes reaped since `before` (a RUSAGE_CHILDREN snapshot)."""
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


class MachineCpu:
    """How busy the whole machine's CPUs were since this snapshot (/proc/stat), so a round can say how much of them
    processes other than the measured generator and the server used: the load average cannot tell, since the
    benchmark itself keeps 20 server processes runnable."""

    def __init__(self):
        self.start = self._busy()

    @staticmethod
    def _busy() -> float | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is inside user)
        return busy / os.sysconf("SC_CLK_TCK")

    def others(self, wall: float, *measured: float) -> float | None:
        """Cores that other processes kept busy on average over `wall` seconds, besides the `measured` CPU seconds."""
        end = self._busy()
        if self.start is None or end is None or wall <= 0:
            return None
        return max(0.0, (end - self.start - sum(measured)) / wall)


class ServerCpu:
    """CPU seconds the embedded Dovecot spends between two snapshots, all its processes together.

    A process that exits in between is counted through the master's reaped-children time,
    which holds its whole life; its share from before the first snapshot is taken off again.
    """

    def __init__(self, dovecot):
        self.dovecot = dovecot
        self.start = self._snapshot()

    def _snapshot(self) -> tuple[dict[int, int], int]:
        marker, master = self.dovecot.root.name.encode(), self.dovecot.proc.pid
        own, reaped = {}, 0
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            pid = int(pid_dir.name)
            try:
                if pid != master and marker not in (pid_dir / "cmdline").read_bytes():
                    continue
                fields = (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            own[pid] = int(fields[11]) + int(fields[12])  # utime + stime
            if pid == master:
                reaped = int(fields[13]) + int(fields[14])  # cutime + cstime
        return own, reaped

    def seconds(self) -> float:
        (own0, reaped0), (own1, reaped1) = self.start, self._snapshot()
        ticks = sum(cpu - own0.get(pid, 0) for pid, cpu in own1.items()) + (reaped1 - reaped0)
        ticks -= sum(cpu for pid, cpu in own0.items() if pid not in own1)
        return max(0, ticks) / os.sysconf("SC_CLK_TCK")


def _print(result: dict, idle: bool) -> None:
    if idle:
        held = result["users"] - 1
        print(f"IDLE hold against {result['server']}: {held:,} users in one generator process"
              + (f", from {result['source_addresses']}" if result.get("source_addresses") else ""))
        print(f"  connections idling: peak {result['idling_peak']:,}, lowest during the hold {result['idling_low']:,} "
              f"(ramp {result['ramp_seconds']:.1f} s)")
        if result.get("fd_tables", 1) > 1:
            per_table = " + ".join(f"{n:,}" for n in result["idling_per_fd_table"])
            print(f"  fd tables: {result['fd_tables']} (open-files limit {result['fd_limit']:,} per table), idling at the end "
                  f"{per_table}: connections beyond one fd table's limit went to threads with their own fd table "
                  f"(unshare(CLONE_FILES)); still one process (pid {result['pid']})")
        p50, p95 = result["notify_p50_ms"], result["notify_p95_ms"]
        delivered = result["per_name"].get("LMTP deliver", {}).get("requests", 0)
        print(f"  new-mail notifications: {result['notify_samples']} for {delivered} deliveries during the hold, "
              f"p50 {p50} ms, p95 {p95} ms")
        if result.get("notify_split_samples"):
            print(f"    server (delivery sent -> EXISTS in the generator's socket): p50 {result['notify_server_p50_ms']} ms, "
                  f"p95 {result['notify_server_p95_ms']} ms")
            if result.get("delivery_p50_ms") is not None:
                print(f"      of which LMTP delivery (sent -> 250, mail stored): p50 {result['delivery_p50_ms']} ms, "
                      f"p95 {result['delivery_p95_ms']} ms; the rest is the server noticing and waking the session")
            print(f"    generator (EXISTS in the socket -> handled): p50 {result['notify_generator_p50_ms']} ms, "
                  f"p95 {result['notify_generator_p95_ms']} ms")
        if delivered and (result["notify_samples"] < 0.9 * delivered or (p95 or 0) > 5000):
            print("  note: many deliveries were not announced promptly. Dovecot hears of a change through one inotify\n"
                  "  instance per IDLE session (imap or imap-hibernate) and falls back to polling every\n"
                  "  mailbox_idle_check_interval beyond fs.inotify.max_user_instances (default 128) per mail uid.")
        per_connection = result.get("rss_per_connection_kb")
        print(f"  memory: RSS {result['rss_before_mb']:.0f} MB before the users, {result['rss_peak_mb']:.0f} MB holding them"
              + (f" ({per_connection:.1f} KB per connection)" if per_connection else ""))
        print(f"  failures: {result['failures']}; generator CPU {result['cpu_seconds'] / result['wall_seconds']:.0%} of a core; "
              f"open-files limit {result['fd_limit']:,}")
        for warning in result.get("server_warnings", []):
            print(f"  server: {warning}")
        return
    rounds = result.get("rounds")
    mode = "pipelined" if result.get("pipelining") else "one command at a time"
    print(f"webmail mix ({mode}) against {result['server']}: {result['users']} users, "
          f"{len(rounds) if rounds else 1} x {result['wall_seconds']:.0f} s measured")
    if rounds:
        for n, r in enumerate(rounds, 1):
            ours = r["mailharness"]
            line = f"  round {n}: mailharness {ours['commands_per_cpu_second']:>7,.0f} cmds/CPU-s ({ours['commands']:,} in {ours['cpu_seconds']:.2f} CPU-s)"
            if "imaptest" in r:
                theirs = r["imaptest"]
                line += (f"   imaptest {theirs['commands_per_cpu_second']:>7,.0f} ({theirs['commands']:,} in {theirs['cpu_seconds']:.2f} CPU-s)"
                         f"   ratio {ours['commands_per_cpu_second'] / theirs['commands_per_cpu_second']:.2f}" if theirs["commands_per_cpu_second"] else "")
            others = [x["others_cores"] for x in (ours, r.get("imaptest") or {}) if x.get("others_cores") is not None]
            print(line + (f"   (others {'/'.join(f'{x:.2f}' for x in others)} cores)" if others else ""))
    print(f"  commands: {result['commands']:,} ({result['failures']} failed)" + (" in the median round" if rounds else ""))
    print(f"  generator: {result['cpu_seconds']:.2f} CPU-s -> {result['commands_per_cpu_second']:,.0f} commands per CPU-second"
          f" (user {result['cpu_user_seconds']:.2f} s, system {result['cpu_system_seconds']:.2f} s)")
    print(f"  wall clock: {result['commands_per_second']:,.0f} commands/s; generator busy "
          f"{result['cpu_seconds'] / result['wall_seconds']:.0%} of one core", end="")
    if "server_cpu_seconds" in result:
        print(f"; Dovecot used {result['server_cpu_seconds'] / result['server_wall_seconds']:.2f} cores")
    else:
        print()
    for name, counts in sorted(result["per_name"].items()):
        print(f"    {name:<24} {counts['requests']:>9,}")
    if "imaptest" in result:
        it = result["imaptest"]
        low, high = result["ratio_range"] or [0, 0]
        print(f"  imaptest ({it['mix']}): {it['commands_per_cpu_second']:,.0f} commands per CPU-second (median), "
              f"{it['commands_per_second']:,.0f} commands/s; {it['failures']} errors")
        middle = result.get("ratio_quartiles")
        print(f"  ratio mailharness / imaptest, commands per CPU-second: {result['ratio']:.2f}x "
              f"(median of {len(rounds or [1])} paired rounds; range {low:.2f}-{high:.2f}"
              + (f", middle half {middle[0]:.2f}-{middle[1]:.2f})" if middle else ")"))
        others = [x["others_cores"] for r in rounds or [] for x in r.values() if x.get("others_cores") is not None]
        if others and max(others) > BUSY_OTHERS:
            print(f"  note: other processes used up to {max(others):.2f} cores in a round (of {os.cpu_count()}; the "
                  "server and both generators not counted): other work on the cores costs our interpreter more per "
                  "command than imaptest, so the ratio reads low then; see loadtests/README.md")


def main(argv: list[str] | None = None) -> int:
    """Entry point for loadtests/bench_commands.py."""
    parser = argparse.ArgumentParser(prog="bench_commands.py", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except HarnessError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return exc.exit_code
