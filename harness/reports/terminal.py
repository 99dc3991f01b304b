"""The end-of-run summary on the terminal: a table by area, what needs attention, the verdict.

Written for CI logs first: plain text with fixed columns, colour only on a real terminal.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from harness.reports.formatting import format_duration, format_when, headline, plural
from harness.reports.results import bad_outcomes, counts_by, failure_location, validate_results

# Short column headings; the HTML report spells them out.
COLUMNS = {"passed": "passed", "failed": "failed", "warning": "warn", "behaviour": "may", "xfailed": "xfail",
           "skipped": "skip", "error": "error", "xpassed": "xpass"}
TAGS = {"failed": "FAILED", "error": "ERROR", "xpassed": "XPASS", "warning": "WARNING", "behaviour": "MAY"}
_ANSI = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "magenta": "35", "cyan": "36"}
OUTCOME_STYLE = {"passed": "green", "failed": "red", "error": "red", "xpassed": "yellow", "xfailed": "magenta",
                 "skipped": "", "warning": "yellow", "behaviour": "cyan"}
VERDICT_STYLE = {"pass": "green", "fail": "red", "error": "red", "incomplete": "yellow"}


def want_color(stream: TextIO, color: bool | None) -> bool:
    """Explicit choice wins; otherwise colour only on a TTY and never when NO_COLOR is set (no-color.org)."""
    if color is not None:
        return color
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Painter:
    """Wraps text in ANSI codes, or leaves it alone when colour is off."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, text: str, *styles: str) -> str:
        if not self.enabled or not styles:
            return text
        codes = ";".join(_ANSI[s] for s in styles if s)
        if not codes:
            return text
        return f"\033[{codes}m{text}\033[0m"


def print_summary(results: dict, stream: TextIO | None = None, color: bool | None = None) -> None:
    """Print the summary of one run (results format 1) to ``stream`` (default stdout)."""
    stream = stream or sys.stdout
    results = validate_results(results)
    paint = Painter(want_color(stream, color))
    out = []

    heading = [results["target"]["name"] or "(unnamed target)"]
    if results["profile"]:
        heading.append(f"profile {results['profile'].get('name', '?')}")
    if results["started_at"]:
        heading.append(format_when(results["started_at"]))
    out.append(paint("Results: ", "bold") + " · ".join(heading))
    out.append("")
    out.extend(_area_table(results, paint))

    bad = bad_outcomes(results["run"]["strict"])
    attention = [t for t in results["tests"] if t["outcome"] in bad]
    if attention:
        out.append("")
        out.append(paint(f"Needs attention ({len(attention)}):", "bold"))
        width = max(len(TAGS[t["outcome"]]) for t in attention)
        for test in attention:
            tag = paint(TAGS[test["outcome"]].ljust(width), OUTCOME_STYLE[test["outcome"]], "bold")
            where = failure_location(test)
            out.append(f"  {tag}  {test['id']}" + (f"  {paint(where, 'dim')}" if where else ""))
            text = headline(test)
            if text:
                out.append(f"  {' ' * width}  {text}")
    _soft_list(out, results, paint, bad)

    out.append("")
    out.append(verdict_line(results, paint))
    stream.write("\n".join(out) + "\n")
    stream.flush()


def _soft_list(out: list[str], results: dict, paint: Painter, bad: frozenset) -> None:
    """Warnings (failed SHOULD) and optional behaviour (MAY): shown, apart from what fails the run."""
    # With --strict, warnings are in `bad` and listed under "Needs attention" instead.
    for outcome, word, what in (
            ("warning", "Warnings", "SHOULD checks that did not hold; not failures (--strict fails them)"),
            ("behaviour", "Optional behaviour", "MAY checks the server does not do; never failures")):
        tests = [t for t in results["tests"] if t["outcome"] == outcome and outcome not in bad]
        if not tests:
            continue
        out.append("")
        title = f"{word} ({len(tests)}): {what}"
        out.append(paint(title, "bold"))
        for test in tests:
            where = failure_location(test)
            out.append(f"  {paint(TAGS[outcome], OUTCOME_STYLE[outcome])}  {test['id']}" + (f"  {paint(where, 'dim')}" if where else ""))
            text = headline(test)
            if text:
                out.append(f"  {' ' * len(TAGS[outcome])}  {text}")


def _area_table(results: dict, paint: Painter) -> list[str]:
    summary = results["summary"]
    # rarer columns only when they occur: the table should stay narrow.
    rare = ("error", "xpassed", "warning", "behaviour")
    shown = [o for o in ("passed", "failed", "warning", "behaviour", "xfailed", "skipped", "error", "xpassed")
             if o not in rare or summary.get(o)]
    rows = counts_by(results["tests"], "area")
    name_width = max([len("area"), len("total")] + [len(a) for a in rows])
    widths = {o: max(len(COLUMNS[o]), len(str(summary.get(o, 0)))) for o in shown}

    def line(name: str, counts: dict, total: int) -> str:
        cells = []
        for o in shown:
            n = counts.get(o, 0)
            cell = str(n).rjust(widths[o])
            cells.append(paint(cell, OUTCOME_STYLE[o]) if n and o != "passed" else paint(cell, "dim") if not n else cell)
        return f"  {name.ljust(name_width)}  " + "  ".join(cells) + f"  {str(total).rjust(5)}"

    header = f"  {'area'.ljust(name_width)}  " + "  ".join(COLUMNS[o].rjust(widths[o]) for o in shown) + "  total"
    lines = [paint(header, "bold")]
    lines += [line(area, counts, counts["total"]) for area, counts in rows.items()]
    lines.append(line("total", summary, summary.get("total", len(results["tests"]))))
    return lines


def verdict_line(results: dict, paint: Painter | None = None) -> str:
    """``FAIL: 2 failed, 1 error · 6 passed, 2 expected deviations, 2 skipped (14 tests, 12.3 s)``

    An ``ERROR`` or ``INCOMPLETE`` run gets its reason instead: what did not run, and why.
    """
    paint = paint or Painter(False)
    results = validate_results(results)
    verdict = results["verdict"]
    word = paint(f"{verdict.upper()}:", "bold", VERDICT_STYLE.get(verdict, "red"))
    if verdict in ("error", "incomplete"):
        return f"{word} {results['verdict_reason']}"
    s = results["summary"]
    strict = results["run"]["strict"]
    bad = [_count(s, o) for o in ("failed", "error", "xpassed", *(("warning",) if strict else ())) if s.get(o)]
    good = [_count(s, o) for o in ("passed", *(() if strict else ("warning",)), "behaviour", "xfailed", "skipped")
            if s.get(o)]
    detail = ", ".join(bad) + (" · " if bad and good else "") + ", ".join(good)
    extra = plural(s.get("total", 0), "test")
    if results.get("duration_s") is not None:
        extra += f", {format_duration(results['duration_s'])}"
    text = f" {detail} ({extra})" if detail else " no tests ran"
    return word + text


def _count(summary: dict, outcome: str) -> str:
    n = summary[outcome]
    return {
        "passed": f"{n} passed",
        "failed": f"{n} failed",
        "error": plural(n, "error"),
        "xpassed": plural(n, "unexpected pass", "unexpected passes"),
        "xfailed": plural(n, "expected deviation"),
        "skipped": f"{n} skipped",
        "warning": plural(n, "warning"),
        "behaviour": plural(n, "optional behaviour"),
    }[outcome]

