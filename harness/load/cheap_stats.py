"""Locust's per-request bookkeeping, the same numbers for less CPU.

Every protocol command fires Locust's ``request`` event, and Locust's runner logs it twice (its
entry and the "Aggregated" total), each through four method calls and a clock read. At thousands
of commands per second that is a tenth of the generator's CPU. ``install(stats)`` gives one
RequestStats a ``log_request`` that makes the same updates inline, both entries from one clock
read: request counts, requests per second, the response-time histogram (Locust's own
``bucket_response_time``) and its per-second cache, min/max/total and content length.

It is only installed over the Locust code it was checked against (a fingerprint of that code);
if Locust changes any of it, Locust's own code keeps running. tests/test_cheap_stats.py feeds
both the same requests and compares every figure.
"""

from __future__ import annotations

import hashlib
import inspect
import time
import types

from locust import stats as locust_stats

# sha256 of the source of RequestStats.log_request, StatsEntry.log, ._log_time_of_request and ._log_response_time
# that log_request below reproduces (Locust 2.47).
CHECKED = {"4b847143da4bf048e8bac65c37789e993623c89c3fbfcfcf49bcd9a134d940ba"}


def fingerprint() -> str:
    parts = (locust_stats.RequestStats.log_request, locust_stats.StatsEntry.log,
             locust_stats.StatsEntry._log_time_of_request, locust_stats.StatsEntry._log_response_time)
    try:
        source = "".join(inspect.getsource(part) for part in parts)
    except (OSError, TypeError):  # no source to compare: keep Locust's
        return ""
    return hashlib.sha256(source.encode()).hexdigest()


def install(stats) -> bool:
    """Give `stats` (a locust.stats.RequestStats) the inline log_request; False (nothing changed) if Locust's
    code is not the one checked."""
    if fingerprint() not in CHECKED:
        return False
    stats.log_request = types.MethodType(log_request, stats)
    return True


def log_request(self, method: str, name: str, response_time, content_length: int) -> None:
    """RequestStats.log_request: self.total.log(...) then self.entries[(name, method)].log(...), inline."""
    now = time.time()
    second = int(now)
    entry = self.entries.get((name, method))
    if entry is None:
        entry = self.entries[(name, method)]  # Locust's EntriesDict creates it
    bucket = None if response_time is None else locust_stats.bucket_response_time(response_time)
    for e in (self.total, entry):
        last = e.last_request_timestamp
        # Locust's `second > int(last)`, without the call: the same for any timestamp >= 0 (second is whole)
        if last and second > last and e.use_response_times_cache:
            e._cache_response_times(second - 1)
        e.num_requests += 1
        e.num_reqs_per_sec[second] += 1
        e.last_request_timestamp = now
        if bucket is None:
            e.num_none_requests += 1
        else:
            e.total_response_time += response_time
            low = e.min_response_time
            if low is None or response_time < low:
                e.min_response_time = response_time
            if response_time > e.max_response_time:
                e.max_response_time = response_time
            e.response_times[bucket] += 1
        e.total_content_length += content_length
