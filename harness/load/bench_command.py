"""`mailharness bench`: how much load one generator process can produce, so capacity runs know
how many workers they need (and that the generator, not the server, is not the limit)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from harness.arguments import finite_float
from harness.errors import ConfigError, HarnessError, UnsafeAccount
from harness.targets.target_file import load_target

IMAPTEST_CMDS_PER_CPU_SECOND = 11_000  # Dovecot's C imaptest on a similar mix and machine (shared notes)
MAX_USERS = 5_000
MAX_IDLE_USERS = 20_000
MAX_DURATION = 600

DESCRIPTION = f"""\
Measure the load generator itself: protocol commands per generator CPU-second.

  mailharness bench                        webmail mix, 20 users without think time, embedded Dovecot
  mailharness bench --users 50 --duration 30 --target staging.yaml
  mailharness bench --idle-users 2000      how many concurrent IDLE connections one process holds

The webmail mix is what `imap_webmail` users do per page view: LIST, SELECT INBOX, FETCH
headers of the newest 50, FETCH BODYSTRUCTURE + text of one message, FETCH its attachment
part if it has one, STORE \\Seen; LOGOUT and LOGIN again every 10 views. The users run in a
separate process that does nothing else, and its time.process_time() is the CPU figure
(connects are not counted as commands). For scale: imaptest (C) reaches about
{IMAPTEST_CMDS_PER_CPU_SECOND:,} commands per CPU-second on a similar mix on a 2-core machine.

Without --target an embedded Dovecot is started on 127.0.0.1 and seeded; its CPU use is
reported too. A --target must be disposable: true (the mix sets \\Seen flags).
"""


def add_arguments(p) -> None:
    p.add_argument("--target", type=Path, metavar="FILE", help="target file (disposable: true); default: embedded Dovecot")
    p.add_argument("--users", type=int, default=20, metavar="N", help=f"concurrent webmail users without think time (default 20, at most {MAX_USERS})")
    p.add_argument("--duration", type=finite_float, default=15.0, metavar="S", help=f"measured seconds (default 15, at most {MAX_DURATION})")
    p.add_argument("--warmup", type=finite_float, default=3.0, metavar="S", help="seconds of load before measuring (default 3)")
    p.add_argument("--messages", type=int, default=100, metavar="N", help="messages seeded per account (default 100)")
    p.add_argument("--idle-users", type=int, default=0, metavar="N",
                   help="instead: open N IMAP connections holding IDLE (one account each) while mail arrives, "
                        "and report how many one process held and the notification latency")
    p.add_argument("--delivery-rate", type=finite_float, default=20.0, metavar="R", help="with --idle-users: messages per second delivered (default 20)")
    p.add_argument("--tls", action="store_true",
                   help="run the measurement twice against the embedded Dovecot, cleartext and over implicit TLS "
                        "(throwaway CA), and print commands per CPU-second of each side by side (harness/load/bench_tls.py)")
    p.add_argument("--server-tls", choices=["implicit", "starttls"], help=argparse.SUPPRESS)  # one side of --tls
    p.add_argument("--json", action="store_true", help="print the raw result as JSON")


def run(args) -> int:
    if args.tls:
        from harness.load.bench_tls import compare

        return compare(args, run)
    idle = args.idle_users > 0
    users = args.idle_users if idle else args.users
    if not 1 <= users <= (MAX_IDLE_USERS if idle else MAX_USERS):
        raise ConfigError(f"{'--idle-users' if idle else '--users'} must be between 1 and {MAX_IDLE_USERS if idle else MAX_USERS}")
    if not 1 <= args.duration <= MAX_DURATION:
        raise ConfigError(f"--duration must be between 1 and {MAX_DURATION} seconds")
    with tempfile.TemporaryDirectory(prefix="mailharness-bench-") as tmp:
        tmp = Path(tmp)
        scenario_file = tmp / "bench.yaml"
        scenario_file.write_text(yaml.safe_dump(_scenario(args, idle)))
        if args.target:
            target = load_target(args.target)
            if not target.disposable:
                raise UnsafeAccount(f"{args.target}: the benchmark sets \\Seen flags and adds mail; it needs disposable: true")
            result = _measure(args, idle, users, args.target, scenario_file, target, None)
        else:
            from harness.targets.managed_dovecot import ManagedDovecot

            with ManagedDovecot(accounts=users, tls=args.server_tls or False) as dovecot:
                target_file = tmp / "target.yaml"
                dovecot.target.dump(target_file)
                result = _measure(args, idle, users, target_file, scenario_file, dovecot.target, dovecot)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result, idle)
    return 0


def _scenario(args, idle: bool) -> dict:
    if idle:
        return {
            "users": {"imap_idle": {"weight": 1, "think_time": 1, "devices": 1, "reidle_after": 1700}},
            "mailbox": {"messages": 0},
            "delivery": {"rate": args.delivery_rate, "to": {"imap_idle": 1}, "size_mix": {"small": 100}},
            "timeout": 60,
        }
    return {
        "users": {"imap_webmail": {"weight": 1, "think_time": 0, "headers": 50, "actions_per_session": 10}},
        "mailbox": {"messages": args.messages, "size_mix": {"small": 70, "medium": 25, "large": 5}},
    }


def _measure(args, idle: bool, users: int, target_file: Path, scenario_file: Path, target, dovecot) -> dict:
    if not idle:
        from harness.load.seeding import seed_accounts

        seeded = seed_accounts(target, target.accounts[:users], args.messages, {"small": 70, "medium": 25, "large": 5})
        if seeded.failed:
            raise HarnessError(f"seeding failed: {seeded.failed[0]}")
    job = {
        "mode": "idle" if idle else "commands",
        "target_file": str(target_file),
        "scenario_file": str(scenario_file),
        "users": users + (1 if idle else 0),  # + the delivery user
        "spawn_rate": min(200.0, float(users)) if idle else float(users),
        "warmup": args.warmup,
        "duration": args.duration,
        "ramp_timeout": max(30.0, users / 100 + 30),
    }
    server_cpu = ServerCpu(dovecot) if dovecot is not None else None
    started = time.monotonic()
    timeout = job["ramp_timeout"] + args.warmup + args.duration + 120
    proc = subprocess.run([sys.executable, "-m", "harness.load.bench_generator"], input=json.dumps(job),
                          capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise HarnessError(f"the generator process failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["server"] = target.name
    if server_cpu is not None:  # over the generator's whole life (warm-up included), not only the measured window
        result["server_cpu_seconds"] = server_cpu.seconds()
        result["server_wall_seconds"] = time.monotonic() - started
    result["commands_per_cpu_second"] = result["commands"] / result["cpu_seconds"] if result["cpu_seconds"] else 0.0
    result["commands_per_second"] = result["commands"] / result["wall_seconds"] if result["wall_seconds"] else 0.0
    return result


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
        print(f"IDLE hold against {result['server']}: {result['users'] - 1} users in one generator process")
        print(f"  connections idling: peak {result['idling_peak']}, lowest during the hold {result['idling_low']} "
              f"(all were idling after {result['ramp_seconds']:.1f} s)")
        p50, p95 = result["notify_p50_ms"], result["notify_p95_ms"]
        delivered = result["per_name"].get("LMTP deliver", {}).get("requests", 0)
        print(f"  new-mail notifications: {result['notify_samples']} for {delivered} deliveries during the hold, "
              f"p50 {p50} ms, p95 {p95} ms")
        if delivered and (result["notify_samples"] < 0.9 * delivered or (p95 or 0) > 5000):
            print("  note: many deliveries were not announced promptly. On Linux, Dovecot watches a mailbox with one\n"
                  "  inotify instance per IMAP process and falls back to polling (mailbox_idle_check_interval, 30 s)\n"
                  "  beyond fs.inotify.max_user_instances (default 128) per mail uid; raise that sysctl on the server.")
        print(f"  failures: {result['failures']}; generator CPU {result['cpu_seconds'] / result['wall_seconds']:.0%} of a core; "
              f"max RSS {result['max_rss_mb']:.0f} MB; open-files limit {result['fd_limit']}")
        return
    print(f"webmail mix against {result['server']}: {result['users']} users, {result['wall_seconds']:.1f} s measured")
    print(f"  commands: {result['commands']:,} ({result['failures']} failed)")
    print(f"  generator: {result['cpu_seconds']:.2f} CPU-s -> {result['commands_per_cpu_second']:,.0f} commands per CPU-second "
          f"(imaptest, C: ~{IMAPTEST_CMDS_PER_CPU_SECOND:,})")
    print(f"  wall clock: {result['commands_per_second']:,.0f} commands/s; generator busy "
          f"{result['cpu_seconds'] / result['wall_seconds']:.0%} of one core", end="")
    if "server_cpu_seconds" in result:
        print(f"; Dovecot used {result['server_cpu_seconds'] / result['server_wall_seconds']:.2f} cores")
    else:
        print()
    for name, counts in sorted(result["per_name"].items()):
        print(f"    {name:<24} {counts['requests']:>9,}")


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
