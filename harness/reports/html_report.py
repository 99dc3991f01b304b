"""The HTML conformance report of one run: verdict, server identity, counts, every test with its evidence."""

from __future__ import annotations

import os
from pathlib import Path

from harness.reports.rendering import write_page
from harness.reports.results import OUTCOMES, counts_by, rfc_sort_key, validate_results


def write_html_report(results: dict, path: Path) -> None:
    """Write ``results`` (format 1, from `mailharness run` or ``load_results``) as one self-contained HTML file."""
    results = validate_results(results)
    path = Path(path)
    write_page(
        path,
        "report.html.j2",
        r=results,
        by_area=counts_by(results["tests"], "area"),
        by_protocol=counts_by(results["tests"], "protocol"),
        by_rfc=counts_by_rfc(results["tests"]),
        skip_reasons=skip_reasons(results["tests"]),
        source_links=source_links(results["tests"], path.parent),
    )


def counts_by_rfc(tests: list[dict]) -> list[tuple[str, dict[str, int], list[dict]]]:
    """(RFC section, outcome counts, tests) for every section a test cites, in RFC and section order.
    A test citing several sections counts in each: server developers read their bugs by section."""
    groups: dict[str, tuple[dict, list]] = {}
    for test in tests:
        for ref in dict.fromkeys(test.get("rfc") or ["(no RFC cited)"]):
            counts, members = groups.setdefault(ref, (dict.fromkeys((*OUTCOMES, "total"), 0), []))
            counts[test["outcome"]] = counts.get(test["outcome"], 0) + 1
            counts["total"] += 1
            members.append(test)
    return [(ref, counts, members) for ref, (counts, members) in sorted(groups.items(), key=lambda g: rfc_sort_key(g[0]))]


def skip_reasons(tests: list[dict]) -> list[tuple[str, list[dict]]]:
    """Skipped tests grouped by why, the most common reason first."""
    groups: dict[str, list[dict]] = {}
    for test in tests:
        if test["outcome"] == "skipped":
            reason = test.get("message") or test.get("profile_reason") or "(no reason given)"
            groups.setdefault(reason, []).append(test)
    return sorted(groups.items(), key=lambda g: (-len(g[1]), g[0]))


def source_links(tests: list[dict], report_dir: Path) -> dict[str, str]:
    """YAML file -> href relative to the report, for the files that exist here (a report opened where it was
    written, or next to the checkout in a CI artifact, links to the suite)."""
    out = {}
    files = {t.get("file") for t in tests} | {(t.get("failure") or {}).get("file") for t in tests}
    for file in filter(None, files):
        path = Path(file)
        if path.is_file():
            out[file] = Path(os.path.relpath(path.resolve(), report_dir.resolve())).as_posix()
    return out
