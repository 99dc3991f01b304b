"""The measured process of `mailharness bench`: Locust users in this process only, nothing else.

Run as ``python -m harness.load.bench_generator`` with a JSON job on stdin; prints one JSON
result line. Kept apart from the parent so that the CPU time measured (time.process_time())
is the generator's alone: not the embedded server's, not the seeding's, not the report's.

Modes:
  commands  users run the scenario's user kinds with no think time; counts commands per CPU-second
  idle      users hold IDLE while mail arrives; reports the peak number of connections idling
  stress    the stress mode's sessions (harness/stress), with the model's checking on or off (job "checking")
"""

from __future__ import annotations

import functools
import json
import os
import resource
import sys
import time

import gevent
from locust import events
from locust.env import Environment
from locust.event import Events
from locust.stats import calculate_response_time_percentile

from harness.errors import HarnessError
from harness.load import cheap_stats
from harness.load.accounts import AccountAllocator
from harness.load.fd_tables import MAX_TABLES, FdTableThread, open_descriptors, tables_needed
from harness.load.locust_plugin import build_run, configure_user_classes
from harness.load.open_files import raise_open_file_limit
from harness.load.users import IdleUser, MailDelivery, WebmailReader, idling

NOTIFY_NAMES = ("IMAP notify latency", "IMAP notify server", "IMAP notify generator")  # samples, not commands
NOT_COMMANDS = {"IMAP connect", "POP3 connect", "LMTP connect", *NOTIFY_NAMES}


def _snapshot(envs: list[Environment]) -> dict[str, tuple[int, int]]:
    """Requests and failures per name so far, all environments (one per fd table) together."""
    out: dict[str, tuple[int, int]] = {}
    for env in envs:
        # list(): another thread's users may add an entry meanwhile (a copy under the GIL, not an iteration)
        for (name, method), entry in list(env.stats.entries.items()):
            if method != "STRESS":  # STRESS entries are violations the model reported, not commands
                requests, failures = out.get(name, (0, 0))
                out[name] = (requests + entry.num_requests, failures + entry.num_failures)
    return out


def _notify_times(envs: list[Environment], name: str = "IMAP notify latency", method: str = "IMAP") -> dict[int, int]:
    """Locust's histogram of a notification figure so far: {rounded ms: count}, all environments together."""
    out: dict[int, int] = {}
    for env in envs:
        entry = env.stats.entries.get((name, method))
        for ms, n in (dict(entry.response_times) if entry else {}).items():
            out[ms] = out.get(ms, 0) + n
    return out


def _rss_mb() -> float:
    """Resident memory of this process now (MB)."""
    try:
        pages = int(open("/proc/self/statm").read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _window_percentiles(before: dict[int, int], after: dict[int, int]) -> tuple[int, int | None, int | None]:
    """(samples, p50, p95) of the latencies recorded between two histograms."""
    window = {ms: n - before.get(ms, 0) for ms, n in after.items() if n > before.get(ms, 0)}
    total = sum(window.values())
    if not total:
        return 0, None, None
    return total, calculate_response_time_percentile(window, total, 0.5), calculate_response_time_percentile(window, total, 0.95)


def _rusage_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_job(job: dict) -> dict:
    fd_limit = raise_open_file_limit(job["users"] + 1000)
    if job.get("fd_limit") and (fd_limit == resource.RLIM_INFINITY or job["fd_limit"] < fd_limit):  # --fd-limit
        fd_limit = job["fd_limit"]
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    load = build_run(job["target_file"], job["scenario_file"], None)
    if job["mode"] == "stress":
        from harness.stress.users import StressRun, StressUser

        user_classes = [StressUser]
    else:
        user_classes = [IdleUser, MailDelivery] if job["mode"] == "idle" else [WebmailReader]
    env = Environment(user_classes=user_classes, events=events)
    env.mailharness = load
    if job["mode"] == "stress":
        env.mailharness_stress = StressRun(env)
        env.mailharness_stress.checking = job.get("checking", True)
    configure_user_classes(env, load.scenario)
    load.allocator = AccountAllocator(load.plan)
    runner = env.create_local_runner()
    cheap_stats.install(env.stats)  # as in every load run (locust_plugin)
    users, spawn_rate = job["users"], job["spawn_rate"]
    rss_before = _rss_mb()
    envs, tables = [env], []
    ramp_started = time.monotonic()
    senders = load.scenario.delivery.senders if load.scenario.delivery else 0
    idle_users = users - senders
    try:
        main_users = users
        if job["mode"] == "idle":
            shares = _split_over_fd_tables(idle_users, fd_limit)
            for number, share in enumerate(shares[1:], 2):
                # before this thread opens its connections: the new table starts as a copy of this one
                table = FdTableThread(f"fd-table-{number}", functools.partial(
                    _hold_in_own_table, load, share, spawn_rate * share / users, envs))
                tables.append(table)
                table.start()
            main_users = shares[0] + senders
        runner.start(main_users, spawn_rate=spawn_rate * main_users / users)

        if job["mode"] == "idle":
            # Wait until every IDLE user got its "+ idling" (or the ramp deadline passes).
            ramp_deadline = ramp_started + job["ramp_timeout"]
            while _idling(envs) < idle_users and time.monotonic() < ramp_deadline:
                _check_tables(tables)
                gevent.sleep(0.2)
            ramp_seconds = min(job["ramp_timeout"], time.monotonic() - ramp_started)
        else:
            gevent.sleep(job["warmup"])
            ramp_seconds = job["warmup"]

        before, cpu0, wall0, times0 = _snapshot(envs), time.process_time(), time.perf_counter(), os.times()
        notify_before = {name: _notify_times(envs, name) for name in NOTIFY_NAMES}
        delivery_before = _notify_times(envs, "LMTP deliver", "LMTP")
        peak_idling = low_idling = _idling(envs)
        end = wall0 + job["duration"]
        rss_peak = _rss_mb()
        while (left := end - time.perf_counter()) > 0:
            gevent.sleep(min(0.5, left))
            _check_tables(tables)
            now_idling = _idling(envs)
            peak_idling = max(peak_idling, now_idling)
            low_idling = min(low_idling, now_idling)
            rss_peak = max(rss_peak, _rss_mb())
        after, cpu1, wall1, times1 = _snapshot(envs), time.process_time(), time.perf_counter(), os.times()
        notify = {name: _window_percentiles(notify_before[name], _notify_times(envs, name)) for name in NOTIFY_NAMES}
        delivery = _window_percentiles(delivery_before, _notify_times(envs, "LMTP deliver", "LMTP"))
        per_env_idling = [idling(e) for e in envs]
    finally:
        runner.quit()
        for table in tables:
            table.stop(gevent.sleep)
    _check_tables(tables)
    notify_samples, notify_p50, notify_p95 = notify["IMAP notify latency"]

    per_name = {}
    for name, (requests, failures) in after.items():
        r0, f0 = before.get(name, (0, 0))
        per_name[name] = {"requests": requests - r0, "failures": failures - f0}
    commands = sum(v["requests"] for n, v in per_name.items() if n not in NOT_COMMANDS)
    return {
        "mode": job["mode"],
        "users": users,
        "commands": commands,
        "failures": sum(v["failures"] for v in per_name.values()),
        "cpu_seconds": cpu1 - cpu0,
        "cpu_user_seconds": times1.user - times0.user,
        "cpu_system_seconds": times1.system - times0.system,  # mostly the kernel's loopback TCP work
        "wall_seconds": wall1 - wall0,
        "ramp_seconds": ramp_seconds,
        "per_name": per_name,
        "idling_peak": peak_idling,
        "idling_low": low_idling,
        "notify_samples": notify_samples,  # seen during the measured window, like the counts above
        "notify_p50_ms": notify_p50,
        "notify_p95_ms": notify_p95,
        # the same notifications split where the kernel received the EXISTS (SO_TIMESTAMPNS)
        "notify_server_p50_ms": notify["IMAP notify server"][1],
        "notify_server_p95_ms": notify["IMAP notify server"][2],
        "notify_generator_p50_ms": notify["IMAP notify generator"][1],
        "notify_generator_p95_ms": notify["IMAP notify generator"][2],
        "notify_split_samples": notify["IMAP notify server"][0],
        # part of the server's time: LMTP from the delivery's first byte to the server's 250 (mail stored)
        "delivery_p50_ms": delivery[1],
        "delivery_p95_ms": delivery[2],
        "rss_before_mb": rss_before,
        "rss_peak_mb": rss_peak,
        "rss_per_connection_kb": (rss_peak - rss_before) * 1024 / peak_idling if job["mode"] == "idle" and peak_idling else None,
        "max_rss_mb": _rusage_mb(),
        "fd_limit": fd_limit,
        "pid": os.getpid(),
        "fd_tables": len(envs),  # > 1: threads with their own fd table (harness/load/fd_tables.py), one process
        "idling_per_fd_table": per_env_idling,
        "violations": dict(env.mailharness_stress.log.counts) if job["mode"] == "stress" else {},
    }


def _idling(envs: list[Environment]) -> int:
    return sum(idling(env) for env in envs)


def _split_over_fd_tables(idle_users: int, fd_limit: int) -> list[int]:
    """IDLE users per fd table: all in this thread's table when the limit allows it, else shared evenly
    with threads that have a table of their own (this one keeps the delivery user besides)."""
    limit = sys.maxsize if fd_limit == resource.RLIM_INFINITY else fd_limit
    count, per_table = tables_needed(idle_users, limit, open_descriptors())
    if not 1 <= count <= MAX_TABLES:
        raise HarnessError(f"{idle_users:,} IDLE connections do not fit {MAX_TABLES} fd tables of {fd_limit:,} descriptors")
    shares = [min(per_table, idle_users - n * per_table) for n in range(count)]
    return [share for share in shares if share > 0]


def _hold_in_own_table(load, users: int, spawn_rate: float, envs: list[Environment], table: FdTableThread) -> None:
    """The body of an fd-table thread: its own Locust environment (own events, so its own statistics) and
    runner, holding `users` IDLE users until asked to stop. Shares the LoadRun (accounts, source addresses)."""
    env = Environment(user_classes=[IdleUser], events=Events())
    env.mailharness = load
    runner = env.create_local_runner()
    runner.start(users, spawn_rate=spawn_rate)
    gevent.sleep(min(1.0, 5 / spawn_rate))  # the first users connect, log in and idle: their imports done
    envs.append(env)
    table.ready()
    try:
        while not table.stopping:
            gevent.sleep(0.2)
    finally:
        runner.quit()


def _check_tables(tables: list[FdTableThread]) -> None:
    for table in tables:
        if table.error:
            raise HarnessError(f"the IDLE users of {table.name} failed:\n{table.error}")


def main() -> int:
    job = json.loads(sys.stdin.read())
    result = run_job(job)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
