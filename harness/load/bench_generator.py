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

import json
import os
import sys
import time

import gevent
from locust import events
from locust.env import Environment
from locust.stats import calculate_response_time_percentile

from harness.load.accounts import AccountAllocator
from harness.load.locust_plugin import build_run, configure_user_classes
from harness.load.open_files import raise_open_file_limit
from harness.load.users import IdleUser, MailDelivery, WebmailReader

NOTIFY_NAMES = ("IMAP notify latency", "IMAP notify server", "IMAP notify generator")  # samples, not commands
NOT_COMMANDS = {"IMAP connect", "POP3 connect", "LMTP connect", *NOTIFY_NAMES}


def _snapshot(env: Environment) -> dict[str, tuple[int, int]]:
    # STRESS entries are violations the model reported, not commands
    return {name: (entry.num_requests, entry.num_failures) for (name, method), entry in env.stats.entries.items()
            if method != "STRESS"}


def _notify_times(env: Environment, name: str = "IMAP notify latency") -> dict[int, int]:
    """Locust's histogram of a notification figure so far: {rounded ms: count}."""
    entry = env.stats.entries.get((name, "IMAP"))
    return dict(entry.response_times) if entry else {}


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
    users, spawn_rate = job["users"], job["spawn_rate"]
    rss_before = _rss_mb()
    runner.start(users, spawn_rate=spawn_rate)

    if job["mode"] == "idle":
        # Wait until every IDLE user got its "+ idling" (or the ramp deadline passes).
        ramp_deadline = time.monotonic() + job["ramp_timeout"]
        idle_users = users - (load.scenario.delivery.senders if load.scenario.delivery else 0)
        while IdleUser.idling < idle_users and time.monotonic() < ramp_deadline:
            gevent.sleep(0.2)
        ramp_seconds = job["ramp_timeout"] - max(0.0, ramp_deadline - time.monotonic())
    else:
        gevent.sleep(job["warmup"])
        ramp_seconds = job["warmup"]

    before, cpu0, wall0, times0 = _snapshot(env), time.process_time(), time.perf_counter(), os.times()
    notify_before = {name: _notify_times(env, name) for name in NOTIFY_NAMES}
    peak_idling = low_idling = IdleUser.idling
    end = wall0 + job["duration"]
    rss_peak = _rss_mb()
    while (left := end - time.perf_counter()) > 0:
        gevent.sleep(min(0.5, left))
        peak_idling = max(peak_idling, IdleUser.idling)
        low_idling = min(low_idling, IdleUser.idling)
        rss_peak = max(rss_peak, _rss_mb())
    after, cpu1, wall1, times1 = _snapshot(env), time.process_time(), time.perf_counter(), os.times()
    notify = {name: _window_percentiles(notify_before[name], _notify_times(env, name)) for name in NOTIFY_NAMES}
    notify_samples, notify_p50, notify_p95 = notify["IMAP notify latency"]
    runner.quit()

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
        "rss_before_mb": rss_before,
        "rss_peak_mb": rss_peak,
        "rss_per_connection_kb": (rss_peak - rss_before) * 1024 / peak_idling if job["mode"] == "idle" and peak_idling else None,
        "max_rss_mb": _rusage_mb(),
        "fd_limit": fd_limit,
        "violations": dict(env.mailharness_stress.log.counts) if job["mode"] == "stress" else {},
    }


def main() -> int:
    job = json.loads(sys.stdin.read())
    result = run_job(job)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
