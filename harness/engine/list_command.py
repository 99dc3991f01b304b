"""`mailharness list`: the tests a run would select, without a server.

The selection is pytest's own (collection, then -k and -m), so what `list`
prints is exactly what `run` with the same options would run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from harness.errors import ConfigError, HarnessError
from harness.paths import suites_dir

DESCRIPTION = """\
List suite tests (id, level, area, protocol, file:line, title) as `run` would
select them. Needs no server; a malformed suite is reported with file:line.

examples:
  mailharness list                                   every bundled test
  mailharness list -m "deletion and must"            by marker: area, pop3/imap, must/should/may, tags
  mailharness list -k lock --suite suites/pop3/
  mailharness list --json > tests.json               for scripts

exit codes: 0 tests listed, 2 nothing matched or a suite is malformed.
"""


def add_arguments(p) -> None:
    p.add_argument("--suite", type=Path, action="append", metavar="PATH", help="suite file or directory (repeatable; default: the bundled suites)")
    p.add_argument("-k", dest="keyword", metavar="EXPR", help="pytest -k expression (ids, areas, file names)")
    p.add_argument("-m", dest="markers", metavar="EXPR", help='pytest -m expression over markers, e.g. "pop3 and not lock"')
    p.add_argument("--json", action="store_true", help="one JSON array of tests on stdout")


class _Collector:
    """A pytest plugin that keeps the selected items and the collection errors."""

    def __init__(self):
        self.items: list = []
        self.errors: list[str] = []

    def pytest_collectreport(self, report):
        if report.failed:
            self.errors.append(str(report.longrepr).strip())

    def pytest_collection_finish(self, session):
        self.items = list(session.items)


def describe(spec) -> dict:
    level = getattr(spec, "level", None)
    return {
        "id": spec.id, "title": spec.title, "area": spec.area, "protocol": spec.protocol,
        "level": str(level).upper() if level else None, "rfc": list(spec.rfc), "tags": list(spec.tags),
        "file": str(spec.file), "line": spec.line,
    }


def collect(suites: list[Path], keyword: str | None = None, markers: str | None = None) -> list[dict]:
    """The selected tests as dicts; ConfigError with every collection problem."""
    import pytest

    from harness.engine.plugin import SuiteItem
    from harness.engine.run_command import _display_path, _refuse_unmarked_suites

    for suite in suites:
        if not suite.exists():
            raise ConfigError(f"{suite}: no such suite file or directory")
    _refuse_unmarked_suites(suites)
    # -p names the plugin as its entry point does, so this works with autoloading on or off
    argv = ["-p", "harness.engine.plugin", "-p", "no:cacheprovider", "-p", "no:terminal", "-c", os.devnull,
            "--rootdir", str(Path.cwd()), "--collect-only"]
    if keyword:
        argv += ["-k", keyword]
    if markers:
        argv += ["-m", markers]
    collector = _Collector()
    code = pytest.main(argv + [_display_path(s) for s in suites], plugins=[collector])
    if collector.errors:
        raise ConfigError(problems=[e.removeprefix("malformed suite: ") for e in collector.errors])
    if code not in (0, 5):  # a usage error (a bad -m expression): pytest has said why on stderr
        raise HarnessError("pytest refused the selection (see its message above)")
    return [describe(item.spec) for item in collector.items if isinstance(item, SuiteItem)]


def run(args) -> int:
    tests = collect(args.suite or [suites_dir()], args.keyword, args.markers)
    if args.json:
        json.dump(tests, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        widths = {key: max([len(str(t[key] or "")) for t in tests] + [0]) for key in ("id", "level", "area", "protocol")}
        for t in tests:
            print(f"{t['id']:<{widths['id']}}  {t['level'] or '-':<{max(widths['level'], 1)}}  {t['area']:<{widths['area']}}  "
                  f"{t['protocol']:<{widths['protocol']}}  {t['file']}:{t['line']}  {t['title']}")
        files = len({t["file"] for t in tests})
        print(f"{len(tests)} test(s) in {files} file(s)", file=sys.stderr if not tests else sys.stdout)
    if not tests:
        print("mailharness list: no tests matched (check --suite, -k and -m)", file=sys.stderr)
        return 2
    return 0
