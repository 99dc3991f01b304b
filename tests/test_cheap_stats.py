"""harness/load/cheap_stats.py computes what Locust's own request bookkeeping computes.

In a subprocess: importing Locust monkey-patches the importing process for gevent.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

COMPARE = r'''
import random, sys, time
from locust import stats as S
from harness.load import cheap_stats

def figures(stats):
    out = {}
    for key, e in [(("Aggregated", ""), stats.total), *sorted(stats.entries.items())]:
        cache = {t: (dict(c.response_times), c.num_requests, c.num_none_requests)
                 for t, c in (e.response_times_cache or {}).items()}
        out[key] = (e.num_requests, e.num_none_requests, e.total_response_time, e.min_response_time, e.max_response_time,
                    dict(e.response_times), dict(e.num_reqs_per_sec), e.last_request_timestamp, e.total_content_length, cache)
    return out

clock = [1_800_000_000.0]
time.time = lambda: clock[0]  # one clock for both: Locust reads it once per entry, cheap_stats once per request
for cache in (True, False):
    stock, cheap = S.RequestStats(use_response_times_cache=cache), S.RequestStats(use_response_times_cache=cache)
    if not cheap_stats.install(cheap):
        print("SKIP", cheap_stats.fingerprint()); sys.exit(0)
    rng = random.Random(7)
    for n in range(20_000):
        clock[0] += rng.choice([0.0, 0.0, 0.001, 0.3, 1.0, 2.5])  # requests within a second, and seconds passing
        name, method = rng.choice([("IMAP FETCH headers", "IMAP"), ("POP3 RETR", "POP3"), ("IMAP FETCH headers", "POP3")])
        rt = rng.choice([None, 0, 0.4, 3, 47.5, 99.6, 100, 147, 999.9, 3432, 58760.2, rng.uniform(0, 20000),
                         60000 + n * 0.01, 1 / (n + 1)])  # new maxima and minima by less than 1 ms
        size = rng.randrange(0, 100_000)
        stock.log_request(method, name, rt, size)
        cheap.log_request(method, name, rt, size)
    assert type(cheap).log_request is not cheap.log_request.__func__
    a, b = figures(stock), figures(cheap)
    assert a == b, [k for k in a if a[k] != b.get(k)]
    assert stock.serialize_stats() == cheap.serialize_stats()
print("SAME")
'''


def test_cheap_request_stats_match_locusts_own():
    proc = subprocess.run([sys.executable, "-c", COMPARE], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    if proc.stdout.startswith("SKIP"):
        pytest.skip(f"Locust's stats code is not the one harness/load/cheap_stats.py was checked against "
                    f"(fingerprint {proc.stdout.split()[1]}): Locust's own bookkeeping runs; check it and add the fingerprint")
    assert proc.stdout.strip() == "SAME"
