"""capacity.html: what a capacity planner needs from one load run, on one self-contained page.

Built from Locust's own CSVs in the run directory (<prefix>_stats.csv, _stats_history.csv with
--csv-full-history, _failures.csv) plus the run's verdicts and mail accounting:
throughput and p50/p95/p99 latency per command over time, users over time, errors by kind,
new-mail notification latency, delivered-vs-retrieved, thresholds. Charts are inline SVG.
"""

from __future__ import annotations

import csv
import functools
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import jinja2
import markupsafe

from harness.known_secrets import scrub
from harness.load.cpu_sampler import read_cpu_csv
from harness.load.svg_charts import Series, bar_chart, line_chart

NOTIFY = "IMAP notify latency"
TEMPLATE_DIR = Path(__file__).with_name("templates")
RATE_WINDOW = 3  # history samples per throughput point: smooths the 3 s reporting beat of workers
PERCENTILE_WINDOW = 10  # seconds; Locust's CURRENT_RESPONSE_TIME_PERCENTILE_WINDOW


def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _num(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _ms(value) -> str:
    number = _num(value)
    return "n/a" if number is None else f"{number:.0f}"


@dataclass
class CsvSet:
    stats: list[dict]
    history: list[dict]
    failures: list[dict]

    @classmethod
    def load(cls, run_dir: Path, prefix: str = "locust") -> CsvSet:
        return cls(
            stats=read_csv(run_dir / f"{prefix}_stats.csv"),
            history=read_csv(run_dir / f"{prefix}_stats_history.csv"),
            failures=read_csv(run_dir / f"{prefix}_failures.csv"),
        )

    def request_counts(self) -> dict[str, int]:
        return {row["Name"]: int(row["Request Count"]) for row in self.stats if row["Name"] != "Aggregated"}


def _history_by_name(history: list[dict]) -> tuple[dict[str, list[dict]], float]:
    by_name: dict[str, list[dict]] = defaultdict(list)
    for row in history:
        if _num(row.get("Timestamp")) is not None:
            by_name[row["Name"]].append(row)
    for rows in by_name.values():
        rows.sort(key=lambda r: float(r["Timestamp"]))
    start = min((float(rows[0]["Timestamp"]) for rows in by_name.values()), default=0.0)
    return by_name, start


def _throughput(rows: list[dict], start: float, column: str = "Total Request Count") -> list[tuple[float, float]]:
    """Requests (or failures) per second from the growth of Locust's running totals."""
    points = []
    for i in range(1, len(rows)):
        j = max(0, i - RATE_WINDOW)
        dt = float(rows[i]["Timestamp"]) - float(rows[j]["Timestamp"])
        if dt > 0:
            points.append((float(rows[i]["Timestamp"]) - start, (int(rows[i][column]) - int(rows[j][column])) / dt))
    return points


def _percentile_series(rows: list[dict], start: float, column: str) -> list[tuple[float, float]]:
    """Locust's current-window percentile at each sample, where that window held any requests.

    An empty window reads 0 (or N/A), which would draw a false drop to zero; so does a window
    the master has not yet filled from its workers' reports (its max reads 0 although every
    request so far took a millisecond or more).
    """
    points, times, counts = [], [float(r["Timestamp"]) for r in rows], [int(r["Total Request Count"]) for r in rows]
    earliest = 0
    for i, row in enumerate(rows):
        while times[earliest] < times[i] - PERCENTILE_WINDOW:
            earliest += 1
        window_had_requests = counts[i] > (counts[earliest - 1] if earliest else 0)
        window_unfilled = _num(row.get("100%")) == 0 and (_num(row.get("Total Min Response Time")) or 0) >= 1
        if window_had_requests and not window_unfilled and (value := _num(row.get(column))) is not None:
            points.append((times[i] - start, value))
    return points


def _latency_chart(name: str, rows: list[dict], start: float, width: int = 430) -> str:
    series = [Series(label, _percentile_series(rows, start, column), color)
              for label, column, color in (("p50", "50%", "#2ca02c"), ("p95", "95%", "#ff7f0e"), ("p99", "99%", "#d62728"))]
    return line_chart(series, title=name, y_label="ms", width=width, height=210)


def cpu_chart(rows: list[dict]) -> str:
    """Generator and server CPU over the run, in cores, to set beside the throughput."""
    def points(column: str) -> list[tuple[float, float]]:
        return [(float(r["seconds"]), float(r[column])) for r in rows if r.get(column) not in (None, "")]

    series = [Series("generator, all processes", points("generator_cores"), "#1f77b4"),
              Series("busiest generator process (saturates at 1)", points("generator_busiest_core"), "#ff7f0e")]
    if any(r.get("server_cores") not in (None, "") for r in rows):
        series.append(Series("server (embedded Dovecot)", points("server_cores"), "#2ca02c"))
    if any(r.get("machine_cores") not in (None, "") for r in rows):
        series.append(Series("whole machine", points("machine_cores"), "#7f7f7f", True))
    return line_chart(series, title="CPU: generator and server", y_label="cores")


def build_charts(csvs: CsvSet, cpu: list[dict] | None = None) -> dict:
    by_name, start = _history_by_name(csvs.history)
    total = by_name.pop("Aggregated", [])
    commands = sorted(n for n in by_name if n != NOTIFY)
    charts: dict = {}
    charts["users"] = line_chart(
        [Series("users", [(float(r["Timestamp"]) - start, float(r["User Count"])) for r in total], "#393b79")],
        title="Users", y_label="concurrent users")
    charts["total_rps"] = line_chart(
        [Series("all commands", _throughput(total, start), "#1f77b4"),
         Series("failures", _throughput(total, start, "Total Failure Count"), "#d62728", True)],
        title="Throughput, all commands", y_label="commands/s")
    charts["cpu"] = cpu_chart(cpu) if cpu else ""
    by_protocol: dict[str, list[str]] = defaultdict(list)
    for name in commands:
        by_protocol[name.split(" ", 1)[0]].append(name)
    charts["throughput"] = [
        line_chart([Series(n, _throughput(by_name[n], start)) for n in names],
                   title=f"{proto} throughput per command", y_label="commands/s")
        for proto, names in sorted(by_protocol.items())
    ]
    charts["latency"] = [_latency_chart(n, by_name[n], start) for n in commands]
    charts["notify"] = _latency_chart(NOTIFY + " (delivery to EXISTS seen)", by_name.get(NOTIFY, []), start, width=640)
    errors = defaultdict(float)
    for row in failure_table(csvs):
        errors[row["label"]] += row["occurrences"]
    charts["errors"] = bar_chart(list(errors.items()), title="Errors by kind (occurrences)", width=900)
    return charts


def _error_text(name: str, error: str) -> str:
    """Locust stores repr(exception): "CommandFailed('IMAP LOGIN: NO ...')" -> "NO ..."."""
    match = re.fullmatch(r"(\w+)\((['\"])(.*)\2\)", error.strip(), re.DOTALL)
    kind, text = (match.group(1), match.group(3)) if match else ("", error)
    text = text.removeprefix(f"{name}: ")
    if kind in ("TimeoutError", "ConnectionClosed", "ConnectionRefusedError", "ConnectionResetError"):
        text = f"{kind}: {text}"
    return text


def failure_table(csvs: CsvSet) -> list[dict]:
    rows = []
    for row in csvs.failures:
        text = _error_text(row["Name"], row["Error"])
        rows.append({"name": row["Name"], "error": text, "occurrences": _num(row.get("Occurrences")) or 0,
                     "label": f"{row['Name']}: {text[:80]}"})
    return sorted(rows, key=lambda r: r["occurrences"], reverse=True)


def stats_table(csvs: CsvSet) -> list[dict]:
    rows = []
    for row in csvs.stats:
        requests = int(row["Request Count"])
        rows.append({
            "type": row["Type"], "name": row["Name"], "requests": requests, "failures": int(row["Failure Count"]),
            "fail_pct": (int(row["Failure Count"]) / requests * 100) if requests else 0.0,
            "rps": _num(row["Requests/s"]) or 0.0,
            "p50": _ms(row.get("50%")), "p95": _ms(row.get("95%")), "p99": _ms(row.get("99%")),
            "max": _ms(row.get("Max Response Time")),
            "avg_bytes": _num(row.get("Average Content Size")) or 0.0,
        })
    return rows


@functools.cache
def template() -> jinja2.Template:
    """The compiled page template. `mailharness load` calls this before the run starts: after a Ctrl-C
    or SIGTERM, compiling it (a few hundred ms on a busy machine) would delay the exit."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return env.get_template("capacity.html.j2")


def write_capacity_report(run_dir: Path, *, facts: dict, verdicts: list, accounting: dict | None,
                          problems: list[str], csvs: CsvSet | None = None, consistency: str = "") -> Path:
    """Render capacity.html into ``run_dir``; ``problems`` are the reasons the run failed (empty: passed).

    ``consistency``: the stress mode's section (HTML, from harness.stress.report), when the run had one."""
    csvs = csvs or CsvSet.load(run_dir)
    notify = next((r for r in stats_table(csvs) if r["name"] == NOTIFY), None)
    html = template().render(
        facts=facts, verdicts=verdicts, accounting=accounting, problems=problems,
        charts=build_charts(csvs, read_cpu_csv(run_dir)), stats=stats_table(csvs), notify=notify, failures=failure_table(csvs),
        consistency=markupsafe.Markup(consistency),
    )
    path = run_dir / "capacity.html"
    path.write_text(scrub(html), encoding="utf-8")
    return path
