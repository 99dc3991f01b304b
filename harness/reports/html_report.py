"""The HTML conformance report of one run: verdict, server identity, counts, every test with its evidence."""

from __future__ import annotations

from pathlib import Path

from harness.reports.rendering import write_page
from harness.reports.results import counts_by, validate_results


def write_html_report(results: dict, path: Path) -> None:
    """Write ``results`` (format 1, from `mailharness run` or ``load_results``) as one self-contained HTML file."""
    results = validate_results(results)
    write_page(
        path,
        "report.html.j2",
        r=results,
        by_area=counts_by(results["tests"], "area"),
        by_protocol=counts_by(results["tests"], "protocol"),
    )
