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


def resolve_named_yaml(name_or_path: str, directory: Path, kind: str) -> Path:
    """``NAME`` -> ``directory/NAME.yaml``; anything that looks like a file path is taken as one."""
    from harness.errors import ConfigError

    path = Path(name_or_path)
    # a bare name is a bundled file even if the working directory has a directory (or other non-file) of that name
    if path.suffix in (".yaml", ".yml") or "/" in name_or_path or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{path}: {kind} file not found")
        return path
    candidate = directory / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = ", ".join(sorted(p.stem for p in directory.glob("*.yaml"))) or "none"
        raise ConfigError(f"no {kind} named {name_or_path!r} (known: {known}; or give a path to a .yaml file)")
    return candidate
