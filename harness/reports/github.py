"""GitHub Actions output: annotations on the YAML lines, and a Markdown job summary.

Written when ``GITHUB_ACTIONS=true`` (GitHub sets it in every job): each failing
test becomes an ``::error file=...,line=...::`` workflow command, which GitHub
shows on the suite file in the pull request, each warning a ``::warning``; the
summary (verdict, counts by area, failures with expected/got) is appended to
the file named by ``$GITHUB_STEP_SUMMARY``.
See https://docs.github.com/actions/reference/workflow-commands-for-github-actions
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.reports.results import OUTCOME_LABELS, counts_by, failure_location

# outcome -> workflow command; the others (passed, skipped, expected deviations) are not annotated
ANNOTATED = {"failed": "error", "error": "error", "xpassed": "error", "warning": "warning"}


def enabled(environ=os.environ) -> bool:
    return environ.get("GITHUB_ACTIONS") == "true"


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _prop(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def _repo_path(file: str, environ) -> str:
    """Annotations attach to paths relative to the checkout ($GITHUB_WORKSPACE)."""
    workspace = environ.get("GITHUB_WORKSPACE")
    path = Path(file)
    if workspace and path.is_absolute():
        try:
            return str(path.relative_to(workspace))
        except ValueError:
            pass
    return file


def expected_got(test: dict) -> str:
    failure = test.get("failure") or {}
    if failure.get("expected") or failure.get("got"):
        step = f"{failure['step']}: " if failure.get("step") else ""
        return f"{step}expected {failure.get('expected')}, got {failure.get('got')}"
    return (test.get("message") or "").strip()


def annotations(tests: list[dict], environ=os.environ) -> list[str]:
    out = []
    for test in tests:
        command = ANNOTATED.get(test["outcome"])
        if not command:
            continue
        location = failure_location(test)
        file, _, line = location.rpartition(":") if location.rpartition(":")[2].isdigit() else (location, "", "")
        props = []
        if file:
            props.append(f"file={_prop(_repo_path(file, environ))}")
        if line:
            props.append(f"line={line}")
        props.append(f"title={_prop(test['id'] + ' ' + OUTCOME_LABELS.get(test['outcome'], test['outcome']))}")
        out.append(f"::{command} {','.join(props)}::{_data(expected_got(test))}")
    return out


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def step_summary(results: dict) -> str:
    """The job summary in Markdown."""
    tests = results["tests"]
    summary = results["summary"]
    verdict = results["verdict"].upper()
    target = (results.get("target") or {}).get("name") or "(unnamed target)"
    profile = (results.get("profile") or {}).get("name")
    lines = [f"## mailharness: {verdict}", "",
             f"{target}" + (f" · profile {profile}" if profile else "") + f" · {summary.get('total', len(tests))} tests", ""]
    by_area = counts_by(tests, "area")
    outcomes = [o for o in summary if o != "total" and summary[o]]
    if by_area and outcomes:
        lines += ["| area | " + " | ".join(OUTCOME_LABELS.get(o, o) for o in outcomes) + " | total |",
                  "|---|" + "---:|" * (len(outcomes) + 1)]
        for area, counts in by_area.items():
            lines.append(f"| {area} | " + " | ".join(str(counts.get(o, 0)) for o in outcomes) + f" | {counts['total']} |")
        lines.append("")
    bad = [t for t in tests if t["outcome"] in ANNOTATED]
    if bad:
        lines += ["### Needs attention", "", "| test | outcome | where | expected / got |", "|---|---|---|---|"]
        for test in bad:
            lines.append(f"| `{test['id']}` | {OUTCOME_LABELS.get(test['outcome'], test['outcome'])} | "
                         f"`{failure_location(test)}` | {_cell(expected_got(test))[:500]} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_step_summary(results: dict, environ=os.environ) -> Path | None:
    path = environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return None
    with open(path, "a", encoding="utf-8") as f:  # other steps' summaries share the file
        f.write(step_summary(results))
    return Path(path)
