"""`mailharness validate`: check suites and profiles without touching a server."""

from __future__ import annotations

import sys
from pathlib import Path

from harness.engine.model import load_suite
from harness.engine.profiles import load_profile
from harness.engine.suite_files import is_suite_file, is_unmarked_suite, yaml_files
from harness.engine.suite_files import suite_files as find_suites
from harness.engine.suite_files import test_ids as scanned_test_ids
from harness.errors import ConfigError, HarnessError
from harness.paths import profiles_dir, suites_dir
from harness.targets.target_file import UNSET_PASSWORD_ENV, load_target

DESCRIPTION = """\
Check suite files (schema, sessions, corpus names, patterns, variables),
profiles and target files, and report every problem with its file and line:
all schema problems of a file, then all meaning problems. Needs no server.

examples:
  mailharness validate                      the bundled suites and profiles
  mailharness validate my-suites/ --profile profiles/cyrus.yaml
  mailharness validate my-suites/ --target staging.yaml
"""


def add_arguments(p) -> None:
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="suite files or directories (default: bundled suites)")
    p.add_argument("--profile", action="append", default=[], metavar="NAME|FILE", help="profile to check (default: all bundled)")
    p.add_argument("--target", action="append", default=[], type=Path, metavar="FILE",
                   help="target file to check too: every key, endpoint and account (no connection; `target check` logs in)")


def suite_files(paths: list[Path]) -> list[Path]:
    """Named files as given; in directories, the YAML files pytest would collect (a top-level `suite:`)
    and those that have `tests:` without it (reported: they would silently not run)."""
    for path in paths:
        if not path.exists():
            raise HarnessError(f"{path}: no such file or directory")
    return [p for p in yaml_files(paths) if p in paths or is_suite_file(p) or is_unmarked_suite(p)]


def run(args) -> int:
    problems: list[str] = []
    where: dict[str, str] = {}  # test id -> file:line, to catch ids repeated across files
    files = suite_files(args.paths or [suites_dir()])
    for file in files:
        try:
            specs = load_suite(file)
        except ConfigError as exc:
            problems += exc.problems
            continue
        except HarnessError as exc:
            problems.append(str(exc))
            continue
        for spec in specs:
            if spec.id in where:
                problems.append(f"{spec.location}: duplicate test id {spec.id!r} (first at {where[spec.id]})")
            else:
                where[spec.id] = spec.location
    test_ids = set(where)
    bundled_ids = scanned_test_ids(find_suites([suites_dir()]))
    profiles = args.profile or [str(p) for p in sorted(profiles_dir().glob("*.yaml"))]
    for name in profiles:
        try:
            profile = load_profile(name)
        except ConfigError as exc:
            problems += exc.problems
            continue
        except HarnessError as exc:
            problems.append(str(exc))
            continue
        # against the given suites and the bundled ones: a profile for the bundled suites may be checked with yours
        problems += profile.unused_problems(test_ids | bundled_ids)
    notes = []
    for target in args.target:
        try:
            load_target(target)
        except ConfigError as exc:
            for problem in exc.problems:
                # the file is right; this shell lacks the secret, which `run` and `target check` will need
                if UNSET_PASSWORD_ENV in problem:
                    notes.append(f"{problem} here (fine for validate; run and target check need it)")
                else:
                    problems.append(problem)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for problem in problems:
        print(problem, file=sys.stderr)
    targets = f", {len(args.target)} target file(s)" if args.target else ""
    print(f"{len(files)} suite file(s), {len(test_ids)} test(s), {len(profiles)} profile(s){targets}: "
          f"{len(problems)} problem(s)")
    return 2 if problems else 0
