"""`mailharness validate`: check suites and profiles without touching a server."""

from __future__ import annotations

import sys
from pathlib import Path

from harness.engine.model import load_suite
from harness.engine.profiles import load_profile
from harness.errors import HarnessError
from harness.paths import profiles_dir, suites_dir

DESCRIPTION = """\
Check suite files (schema, sessions, corpus names, patterns, variables) and
profiles, and report every problem with its file and line. Needs no server.

examples:
  mailharness validate                      the bundled suites and profiles
  mailharness validate my-suites/ --profile profiles/cyrus.yaml
"""


def add_arguments(p) -> None:
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="suite files or directories (default: bundled suites)")
    p.add_argument("--profile", action="append", default=[], metavar="NAME|FILE", help="profile to check (default: all bundled)")


def suite_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.y*ml") if not p.name.startswith("_"))
        elif path.exists():
            files.append(path)
        else:
            raise HarnessError(f"{path}: no such file or directory")
    return list(dict.fromkeys(files))  # a file named twice is read once


def run(args) -> int:
    problems: list[str] = []
    where: dict[str, str] = {}  # test id -> file:line, to catch ids repeated across files
    files = suite_files(args.paths or [suites_dir()])
    for file in files:
        try:
            specs = load_suite(file)
        except HarnessError as exc:
            problems.append(str(exc))
            continue
        for spec in specs:
            if spec.id in where:
                problems.append(f"{spec.location}: duplicate test id {spec.id!r} (first at {where[spec.id]})")
            else:
                where[spec.id] = spec.location
    test_ids = set(where)
    profiles = args.profile or [str(p) for p in sorted(profiles_dir().glob("*.yaml"))]
    for name in profiles:
        try:
            profile = load_profile(name)
        except HarnessError as exc:
            problems.append(str(exc))
            continue
        if not args.paths:  # ids only make sense against the full bundled suites
            for unused in profile.unused(test_ids):
                problems.append(f"{profile.path}: deviation {unused!r} matches no test")
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(files)} suite file(s), {len(test_ids)} test(s), {len(profiles)} profile(s): "
          f"{len(problems)} problem(s)")
    return 2 if problems else 0
