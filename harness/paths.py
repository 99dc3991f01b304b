"""Where the bundled suites and profiles are: the source checkout, or the installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _first_existing(*candidates: Path) -> Path:
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]


def suites_dir() -> Path:
    return _first_existing(_PACKAGE.parent / "suites", _PACKAGE / "bundled" / "suites")


def profiles_dir() -> Path:
    return _first_existing(_PACKAGE.parent / "profiles", _PACKAGE / "bundled" / "profiles")
