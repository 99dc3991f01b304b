"""Which YAML files are suites.

The plugin is installed as a pytest11 entry point, so it is loaded by every
pytest run in the environment, including other projects' runs that hold YAML
of their own (Tavern tests, CI configs, fixtures). It therefore collects only
files that say they are suites: a ``.yaml``/``.yml`` file, not starting with
``_``, with a top-level ``suite:`` key (the suite's title). Anything else is
left to other plugins, unread beyond a text scan for that key.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from pathlib import Path

SUFFIXES = (".yaml", ".yml")
# A key at column 0 is a top-level key: block scalars and nested mappings are indented.
_SUITE_KEY = re.compile(rb"^suite[ \t]*:", re.MULTILINE)
_TESTS_KEY = re.compile(rb"^tests[ \t]*:", re.MULTILINE)
_SCAN_LIMIT = 1 << 20  # a suite is a few kB; a huge YAML file is someone else's data
# Directories a scan for suites never enters (as pytest's default norecursedirs).
SKIP_DIRS = ("*.egg", ".*", "_darcs", "build", "CVS", "dist", "node_modules", "venv", "{arch}", "__pycache__")


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(_SCAN_LIMIT)
    except OSError:
        return b""


def is_candidate(path: Path) -> bool:
    return path.suffix in SUFFIXES and not path.name.startswith("_")


def is_suite_file(path: Path) -> bool:
    """A YAML file with a top-level ``suite:`` key."""
    return is_candidate(path) and path.is_file() and bool(_SUITE_KEY.search(_head(path)))


def is_unmarked_suite(path: Path) -> bool:
    """Has ``tests:`` but no ``suite:``: meant as a suite, but pytest would not collect it."""
    if not is_candidate(path) or not path.is_file():
        return False
    head = _head(path)
    return bool(_TESTS_KEY.search(head)) and not _SUITE_KEY.search(head)


_ID = re.compile(rb"(?:^[ \t]*-[ \t]*\{?|[{,][ \t]*)id[ \t]*:[ \t]*[\"']?([a-z0-9][a-z0-9._-]*)", re.MULTILINE)


def test_ids(paths: Iterable[Path]) -> set[str]:
    """The test ids of suite files, by a text scan (no YAML parse: cheap enough for every run's start).
    A superset at worst, which only makes checks against it lenient."""
    return {m.group(1).decode() for path in paths for m in _ID.finditer(_head(path))}


def _walk(directory: Path, skip: Iterable[str]) -> Iterable[Path]:
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            if not any(fnmatch.fnmatch(entry.name, pattern) for pattern in skip) and not (entry / "pyvenv.cfg").exists():
                yield from _walk(entry, skip)
        elif is_candidate(entry):
            yield entry


def yaml_files(paths: Iterable[Path], skip: Iterable[str] = SKIP_DIRS) -> list[Path]:
    """Candidate YAML files under ``paths`` (files are taken as given), each once, in order."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += _walk(path, tuple(skip))
        elif path.is_file():
            out.append(path)
    return list(dict.fromkeys(out))


def suite_files(paths: Iterable[Path], skip: Iterable[str] = SKIP_DIRS) -> list[Path]:
    return [p for p in yaml_files(paths, skip) if is_suite_file(p)]
