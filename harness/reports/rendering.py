"""The jinja2 environment shared by the HTML reports, and writing a rendered page to disk.

Autoescape is on for every template: test ids, messages, greetings and transcripts come from
the server under test and must never become markup. Pages are self-contained (inline CSS/JS,
see templates/base.html.j2) so they can be mailed, attached to CI runs and opened from file://.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import jinja2

from harness import __version__
from harness.errors import ConfigError
from harness.known_secrets import scrub
from harness.reports import formatting
from harness.reports.results import BAD_OUTCOMES, OUTCOME_LABELS, OUTCOMES, failure_location, rfc_link, rfc_title

TEMPLATE_DIR = Path(__file__).parent / "templates"


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    """Compiled templates kept between runs (jinja checks each against its template's source): compiling the
    report's templates took a few tenths of a second of every run and every report. None where no cache
    directory can be made; the templates are then compiled as before."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    directory = base / "mailharness" / f"templates-{__version__}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return jinja2.FileSystemBytecodeCache(str(directory))


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        bytecode_cache=_bytecode_cache(),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a typo in a template fails the tests instead of rendering blank
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.do"],
    )
    env.filters.update(
        when=formatting.format_when,
        date=formatting.format_date,
        duration=formatting.format_duration,
        one_line=formatting.one_line,
        headline=formatting.headline,
        restates_failure=formatting.restates_failure,
        restates_reason=formatting.restates_reason,
        metric_name=formatting.metric_name,
        rfc_link=rfc_link,
        rfc_title=rfc_title,
        location=failure_location,
        groupby_first=groupby_first,
        transcript_html=formatting.transcript_html,
    )
    env.globals.update(
        OUTCOMES=OUTCOMES,
        OUTCOME_LABELS=OUTCOME_LABELS,
        BAD_OUTCOMES=BAD_OUTCOMES,
        writer_version=__version__,
        metric_value=formatting.metric_value,
        plural=formatting.plural,
    )
    return env


def groupby_first(items, key: str) -> list[tuple]:
    """Like jinja's groupby, but groups keep the order of first appearance (suite order), not sorted."""
    groups: dict = {}
    for item in items:
        groups.setdefault(item[key], []).append(item)
    return list(groups.items())


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)


def write_page(path: Path | str, template: str, **context) -> Path:
    """Render ``template`` and write it to ``path`` atomically (a browser reload never sees half a page)."""
    path = Path(path)
    html = scrub(render(template, **context))  # a server may have echoed a password into what the page shows
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(html)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp, path)
    except OSError as exc:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        raise ConfigError(f"{path}: cannot write report: {exc.strerror or exc}") from None
    return path
