"""`mailharness matrix`: several runs side by side in one HTML table (servers, or releases, by tests)."""

from __future__ import annotations

from pathlib import Path

from harness.errors import ConfigError
from harness.reports.formatting import format_when, plural
from harness.reports.results import BAD_OUTCOMES, OUTCOME_LABELS, OUTCOMES, load_results, validate_results

DESCRIPTION = """\
One HTML table of several runs: a row per test (grouped by area), a column per run, each cell
coloured by its outcome, with the failure message or profile reason as a tooltip. A first table
counts passes per area and run. Use it to compare servers, or the releases of one server.

  mailharness matrix dovecot/results.json cyrus/results.json
  mailharness matrix 2.3.json 2.4.json --label "Dovecot 2.3" --label "Dovecot 2.4" -o matrix.html

Columns are labelled with the target name and date of each run unless --label is given (once per run,
in the same order). An output name ending in .md writes a Markdown page instead (counts per area, then
every test that is not a plain pass somewhere, with its reason), for a README or a pull request.
Exit codes: 0 written, 2 unreadable or invalid input.
"""

# Cell text: short, and loud for the outcomes that break a verdict.
CELL_TEXT = {"passed": "pass", "failed": "FAIL", "error": "ERROR", "xpassed": "XPASS", "xfailed": "xfail",
             "skipped": "skip", "warning": "warn", "behaviour": "may"}


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN.json", help="results.json files, one column each")
    p.add_argument("-o", "--output", type=Path, default=Path("matrix.html"), metavar="FILE",
                   help="where to write the table; a name ending in .md writes Markdown (default: matrix.html)")
    p.add_argument("--label", action="append", metavar="NAME",
                   help="column heading for the next run, repeat once per run (default: target name and date)")


def run(args) -> int:
    runs = [load_results(path) for path in args.runs]
    matrix = build_matrix(runs, args.label)
    write = write_matrix_markdown if args.output.suffix.lower() == ".md" else write_matrix_html
    path = write(matrix, args.output)
    print(f"matrix of {plural(len(runs), 'run')} × {plural(matrix['test_count'], 'test')} written to {path}")
    return 0


def build_matrix(runs: list[dict], labels: list[str] | None = None) -> dict:
    """Arrange runs (results format 1) as areas -> tests -> one cell per run (None where a run lacks the test)."""
    if not runs:
        raise ConfigError("matrix needs at least one results file")
    if labels and len(labels) != len(runs):
        raise ConfigError(f"--label given {plural(len(labels), 'time')} for {plural(len(runs), 'run')}; "
                          "give one per run, in the same order, or none")
    runs = [validate_results(r, f"run {i + 1}") for i, r in enumerate(runs)]

    columns = []
    for i, r in enumerate(runs):
        name = r["target"]["name"] or f"run {i + 1}"
        when = format_when(r["started_at"])
        columns.append({
            "label": labels[i] if labels else name,
            "sublabel": f"{name} · {when}" if labels else when,
            "verdict": r["verdict"],
            "verdict_reason": r["verdict_reason"],
            "run": r["run"],
            "summary": r["summary"],
            "profile": (r["profile"] or {}).get("name"),
        })

    # Rows: the union of all tests, in the order they first appear (suite order), grouped by area.
    rows: dict[str, dict] = {}
    for i, r in enumerate(runs):
        for t in r["tests"]:
            row = rows.setdefault(t["id"], {"id": t["id"], "title": t["title"], "area": t["area"],
                                            "protocol": t["protocol"], "rfc": t["rfc"], "cells": [None] * len(runs)})
            row["cells"][i] = {"outcome": t["outcome"], "text": CELL_TEXT[t["outcome"]], "tip": _tooltip(t)}
    areas: dict[str, list] = {}
    for row in rows.values():
        outcomes = {c["outcome"] if c else "missing" for c in row["cells"]}
        row["outcomes"] = " ".join(sorted(outcomes))
        row["differs"] = len(outcomes) > 1
        areas.setdefault(row["area"], []).append(row)

    return {
        "runs": columns,
        "areas": [{"name": name, "tests": tests, "counts": _area_counts(tests, len(runs))}
                  for name, tests in areas.items()],
        "test_count": len(rows),
        # How many rows have each outcome in at least one run (for the filter checkboxes).
        "row_outcomes": {o: sum(o in row["outcomes"].split() for row in rows.values()) for o in OUTCOMES},
    }


def _tooltip(test: dict) -> str:
    lines = [f"{test['id']}: {OUTCOME_LABELS[test['outcome']]}"]
    if test["message"]:
        lines.append(test["message"])
    if test["profile_reason"]:
        lines.append(f"profile: {test['profile_reason']}")
    return "\n".join(lines)


def _area_counts(tests: list[dict], n_runs: int) -> list[dict]:
    counts = []
    for i in range(n_runs):
        cells = [t["cells"][i] for t in tests if t["cells"][i]]
        counts.append({
            "passed": sum(c["outcome"] == "passed" for c in cells),
            "bad": sum(c["outcome"] in BAD_OUTCOMES for c in cells),
            "warnings": sum(c["outcome"] == "warning" for c in cells),
            "ran": len(cells),
        })
    return counts


def write_matrix_html(matrix: dict, path: Path | str) -> Path:
    """Write the matrix from ``build_matrix`` as one self-contained HTML page."""
    from harness.reports.rendering import write_page  # jinja2 only when writing: keeps `mailharness --help` fast

    return write_page(path, "matrix.html.j2", mx=matrix)


# Markdown has no tooltips: a deviation's reason goes into the list under the tables instead.
MD_CELL = {"passed": "pass", "failed": "**FAIL**", "error": "**ERROR**", "xpassed": "**XPASS**",
           "xfailed": "deviation", "skipped": "skip", "warning": "warning", "behaviour": "MAY: differs"}


def _md(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def write_matrix_markdown(matrix: dict, path: Path | str) -> Path:
    """The same matrix as Markdown: per-area counts, then each test that is not a plain pass in some run."""
    runs = matrix["runs"]
    head = "| " + " | ".join(["area", *(_md(r["label"]) for r in runs)]) + " |"
    rule = "|" + "---|" * (len(runs) + 1)
    out = ["# Compliancy matrix", "",
           "Generated by `mailharness matrix` from the results.json of each run. A cell of the area table reads "
           "passed/ran, then deviations the server's profile expects (xfail), warnings (failed SHOULDs) and "
           "failures.", "",
           "| run | verdict | profile | " + " | ".join(OUTCOME_LABELS[o] for o in OUTCOMES) + " |",
           "|---|---|---|" + "---|" * len(OUTCOMES)]
    for r in runs:
        counts = r["summary"]
        out.append(f"| {_md(r['label'])} ({_md(r['sublabel'])}) | {r['verdict']} | {_md(r['profile'] or '-')} | "
                   + " | ".join(str(counts.get(o, 0)) for o in OUTCOMES) + " |")
    out += ["", head, rule]
    for area in matrix["areas"]:
        cells = []
        for i, c in enumerate(area["counts"]):
            xfail = sum(1 for t in area["tests"] if t["cells"][i] and t["cells"][i]["outcome"] == "xfailed")
            cells.append(f"{c['passed']}/{c['ran']}" + (f", {xfail} deviation" if xfail else "")
                         + (f", {c['warnings']} warning" if c["warnings"] else "")
                         + (f", **{c['bad']} bad**" if c["bad"] else ""))
        out.append(f"| {area['name']} | " + " | ".join(cells) + " |")
    out += ["", "## Tests that are not a plain pass everywhere", "", head.replace("area", "test"), rule]
    notes = []
    for area in matrix["areas"]:
        for t in area["tests"]:
            if all(c and c["outcome"] == "passed" for c in t["cells"]):
                continue
            cells = []
            for run, c in zip(runs, t["cells"]):
                if c is None:
                    cells.append("-")
                    continue
                cells.append(MD_CELL[c["outcome"]])
                if c["outcome"] != "passed":
                    notes.append(f"- `{t['id']}` on {_md(run['label'])}: {_md(c['tip'].split(chr(10), 1)[-1])[:600]}")
            out.append(f"| `{t['id']}` | " + " | ".join(cells) + " |")
    out += ["", "## Reasons", "", *notes, ""]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out), encoding="utf-8")
    return path
