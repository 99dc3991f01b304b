"""Pass/fail rules for a load run, checked against Locust's end-of-run statistics (the *_stats.csv).

A threshold reads ``NAME: METRIC OP VALUE``:
  IMAP FETCH headers: p95 < 200ms     latency percentile (p50 p66 p75 p80 p90 p95 p98 p99 p99.9 p99.99 p100)
  POP3 RETR: avg < 80ms               also: median, max
  IMAP notify latency: p99 < 2s       units ms (default) or s
  POP3 RETR: errors < 0.5%            failed requests of that name / all requests of that name
  IMAP FETCH headers: rps > 100       throughput floor (requests per second over the run)
NAME is the request name as Locust shows it, or "Aggregated" for all requests together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.errors import ConfigError

PERCENTILE_COLUMNS = {"p50": "50%", "p66": "66%", "p75": "75%", "p80": "80%", "p90": "90%", "p95": "95%",
                      "p98": "98%", "p99": "99%", "p99.9": "99.9%", "p99.99": "99.99%", "p100": "100%"}
LATENCY_COLUMNS = {**PERCENTILE_COLUMNS, "avg": "Average Response Time", "median": "Median Response Time",
                   "max": "Max Response Time"}
_RULE = re.compile(r"^\s*(?P<metric>[a-z0-9.]+)\s*(?P<op><=|<|>=|>)\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|%)?\s*$")


@dataclass(frozen=True)
class Threshold:
    name: str
    metric: str  # a LATENCY_COLUMNS key, "errors" or "rps"
    op: str
    value: float  # ms for latency, a fraction for errors, requests/s for rps
    text: str  # as written, for reports

    def holds(self, observed: float) -> bool:
        return {"<": observed < self.value, "<=": observed <= self.value,
                ">": observed > self.value, ">=": observed >= self.value}[self.op]


@dataclass(frozen=True)
class Verdict:
    threshold: Threshold
    observed: float | None  # None: no requests of that name
    passed: bool
    shown: str  # the observed value with its unit


def parse_rate(text: str, where: str = "") -> float:
    """'0.1%' -> 0.001."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", text)
    if not match:
        raise ConfigError(f"{where}error rate {text!r}: write a percentage, e.g. 0.1%")
    if float(match.group(1)) > 100:
        raise ConfigError(f"{where}error rate {text!r}: a share of requests is at most 100%")
    return float(match.group(1)) / 100


def parse_threshold(text: str, where: str = "") -> Threshold:
    """Parse one rule; ``where`` ("file:line: ") prefixes errors."""
    name, sep, rule = text.rpartition(":")
    name = name.strip()
    match = _RULE.match(rule) if sep else None
    if not name or not match:
        raise ConfigError(
            f"{where}threshold {text!r}: write NAME: METRIC < VALUE, e.g. 'IMAP FETCH headers: p95 < 200ms' "
            "(metrics: p50..p100, avg, median, max, errors, rps)"
        )
    metric, op, value, unit = match["metric"], match["op"], float(match["value"]), match["unit"]
    if metric in LATENCY_COLUMNS:
        if unit == "%":
            raise ConfigError(f"{where}threshold {text!r}: {metric} is a time; use ms or s")
        value = value * 1000 if unit == "s" else value
    elif metric == "errors":
        if unit != "%":
            raise ConfigError(f"{where}threshold {text!r}: errors is a share of requests; write e.g. 'errors < 0.5%'")
        if value > 100:
            raise ConfigError(f"{where}threshold {text!r}: a share of requests is at most 100%")
        value /= 100
    elif metric == "rps":
        if unit:
            raise ConfigError(f"{where}threshold {text!r}: rps takes a plain number (requests per second)")
    else:
        raise ConfigError(
            f"{where}threshold {text!r}: unknown metric {metric!r} (use {', '.join(LATENCY_COLUMNS)}, errors, rps)"
        )
    return Threshold(name=name, metric=metric, op=op, value=value, text=f"{name}: {rule.strip()}")


def _number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None  # Locust writes "N/A" for percentiles without samples


def evaluate(thresholds: list[Threshold], stats_rows: list[dict]) -> list[Verdict]:
    """Check each threshold against the rows of Locust's *_stats.csv."""
    by_name = {row["Name"]: row for row in stats_rows}
    verdicts = []
    for t in thresholds:
        row = by_name.get(t.name)
        requests = int(row["Request Count"]) if row else 0
        if not row or requests == 0:
            verdicts.append(Verdict(t, None, False, "no requests"))
            continue
        if t.metric == "errors":
            observed = int(row["Failure Count"]) / requests
            shown = f"{observed * 100:.3g}%"
        elif t.metric == "rps":
            observed = _number(row["Requests/s"]) or 0.0
            shown = f"{observed:.1f}/s"
        else:
            observed = _number(row[LATENCY_COLUMNS[t.metric]])
            if observed is None:
                verdicts.append(Verdict(t, None, False, "no samples"))
                continue
            shown = f"{observed:.0f} ms"
        verdicts.append(Verdict(t, observed, t.holds(observed), shown))
    return verdicts


def error_rate_verdict(limit: float, stats_rows: list[dict]) -> Verdict:
    """The whole run's failed share against --max-error-rate."""
    total = next((row for row in stats_rows if row["Name"] == "Aggregated"), None)
    requests = int(total["Request Count"]) if total else 0
    observed = int(total["Failure Count"]) / requests if requests else 0.0
    rule = Threshold("Aggregated", "errors", "<=", limit, f"all requests: errors <= {limit * 100:g}%")
    return Verdict(rule, observed, rule.holds(observed), f"{observed * 100:.3g}%")
