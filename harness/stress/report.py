"""The consistency report of a stress run: consistency.html, and the section the capacity report embeds.

Violations by kind with counts over time, the first violation of each kind with the time-aligned
interleaved transcript of its mailbox's sessions, and the behaviour classification beside the
categories imaptest publishes.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from harness.known_secrets import scrub
from harness.load.svg_charts import Series, line_chart
from harness.stress.violations import BUCKET, KINDS

TEMPLATE_DIR = Path(__file__).with_name("templates")
# imaptest's compliancy categories and what each answer means (imapwiki.org/ImapTest/ServerStatus)
CATEGORIES = {
    "Checkpoint": "after CHECK/NOOP in all sessions, their state looks identical (Yes / No)",
    "\\Recent": "exactly one session sees a new message as \\Recent, no more and no less (Yes / No)",
    "Atomic flags": "flags and keywords changed in several sessions at once: none drops another's change (Yes / No)",
    "Expunge fetch": "a session that still sees a message another expunged can fetch: Yes (everything) / Cached (cached data only) / No (flags only)",
    "Expunge store": "... can store flags on it: Yes (a 3rd session sees it) / Session (only that session) / Delayed "
                     "(a 3rd session sees no change until EXPUNGEs are reported) / Ignored (OK, no change) / No (NO)",
}


def timeline_chart(result: dict) -> str:
    series = [Series(kind, [(int(b) * BUCKET, n) for b, n in sorted(points.items(), key=lambda x: int(x[0]))])
              for kind, points in sorted(result["timeline"].items())]
    return line_chart(series, title="Violations per 5 s, by kind", y_label="violations", width=900, height=240) if series else ""


def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True,
                              trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)


def section_html(result: dict) -> str:
    """The consistency section (an HTML fragment) for consistency.html and the capacity report."""
    classification = {k: v for k, v in result.get("classification", {}).items() if k in CATEGORIES}
    return _env().get_template("consistency_section.html.j2").render(
        result=result, kinds=KINDS, chart=timeline_chart(result), categories=CATEGORIES, classification=classification)


def write_report(run_dir: Path, result: dict) -> Path:
    html = _env().get_template("consistency.html.j2").render(result=result, section=section_html(result))
    path = run_dir / "consistency.html"
    path.write_text(scrub(html), encoding="utf-8")
    return path
