"""Suite files parsed and checked once, kept for the next process that collects them.

Every xdist worker of every run collects every suite file: parsing the YAML and checking it by schema and by
meaning (model.py) took 0.6-1 s per worker, before its first test. A file that loads without a problem is
kept here, pickled, under a key made of its bytes and of every file of the harness package (code, schemas,
corpus: by size and modification time, as Python's bytecode cache) and the parsing libraries' versions, so an
edit to either loads it afresh. A file with a problem is never kept: its errors (file:line,
exit 2) come from model.load_suite on every run. Anything wrong with an entry (unreadable, truncated, from
another Python, holding a class not listed below) is a miss, never an error.

Entries live in $XDG_CACHE_HOME/mailharness (~/.cache/mailharness), beside the report templates' bytecode;
MAILHARNESS_SUITE_CACHE=off turns the cache off. Writers write a temp file and rename it, so concurrent
workers and runs never read half an entry.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import pickle
import sys
import tempfile
from pathlib import Path

from harness import __version__
from harness.engine import model
from harness.yaml_source import MAX_FILE_BYTES

PACKAGE = Path(__file__).resolve().parent.parent
MAX_ENTRIES = 2000  # beyond this the older half goes (a test suite's runs write one entry per suite they make)
STALE_TEMP_SECONDS = 3600  # a temp file this old belongs to a writer that was killed


def cache_dir() -> Path | None:
    if os.environ.get("MAILHARNESS_SUITE_CACHE", "").lower() in ("off", "0", "no"):
        return None
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mailharness" / f"suites-{__version__}"


# The libraries whose behaviour decides what a suite file loads as, or whether it loads at all.
LIBRARIES = ("PyYAML", "regex", "jsonschema", "jsonschema-rs")


@functools.cache
def harness_fingerprint() -> bytes:
    """Everything that could change what a suite file loads as: the harness package's files (not its
    bytecode), the Python, and the versions of the libraries that parse, check and compile. A file counts by
    its size and modification time, as for Python's own bytecode cache (reading all of them took 13-30 ms)."""
    from importlib.metadata import PackageNotFoundError, version

    from harness.engine import patterns

    versions = []
    for name in LIBRARIES:
        try:
            versions.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            versions.append(f"{name} absent")
    digest = hashlib.sha256()
    digest.update("\0".join([__version__, sys.version, str(patterns.MATCH_TIMEOUTS), *versions]).encode() + b"\0")
    files = []
    for directory, subdirs, names in os.walk(PACKAGE):  # os.walk: pathlib's rglob took longer than the stats
        subdirs[:] = [d for d in subdirs if d != "__pycache__"]
        files += [os.path.join(directory, name) for name in names]
    for name in sorted(files):
        stat = os.stat(name)
        digest.update(f"{os.path.relpath(name, PACKAGE)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.digest()


def load_suite(path: Path) -> list[model.TestSpec]:
    """model.load_suite(path), from the cache when this file's bytes were loaded before by this harness."""
    directory = cache_dir()
    try:
        too_big = path.stat().st_size > MAX_FILE_BYTES
        data = None if too_big or directory is None else path.read_bytes()
    except OSError:
        data = None
    if data is None:  # no cache, or a file model.load_suite will say what is wrong with
        return model.load_suite(path)
    entry = directory / (hashlib.sha256(harness_fingerprint() + data).hexdigest()[:40] + ".pickle")
    specs = _read(entry)
    if specs is not None:
        for spec in specs:
            spec.file = path
        return specs
    specs = model.load_suite(path)  # a problem raises ConfigError here: nothing is kept
    try:
        unchanged = path.read_bytes() == data  # what was loaded is what the key says
    except OSError:
        unchanged = False
    if unchanged:
        _write(entry, specs)
    return specs


# What an entry may hold besides builtins: anything else in it is a miss, so an entry cannot run code.
_ALLOWED = {("harness.engine.model", name) for name in ("TestSpec", "SessionSpec", "Step", "MessageRef", "SetupEntry", "BodySpec")}
_ALLOWED |= {("harness.engine.patterns", "Pattern"), ("harness.yaml_source", "LDict"), ("harness.yaml_source", "LList")}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not a suite class")
        return super().find_class(module, name)


def _read(entry: Path) -> list[model.TestSpec] | None:
    try:
        specs = _Unpickler(io.BytesIO(entry.read_bytes())).load()
    except Exception:  # noqa: BLE001 - missing, truncated, foreign: load the file instead
        return None
    if not isinstance(specs, list) or not all(isinstance(spec, model.TestSpec) for spec in specs):
        return None
    return specs


def _write(entry: Path, specs: list[model.TestSpec]) -> None:
    tmp = None
    try:
        blob = pickle.dumps([dataclasses.replace(spec, file=None) for spec in specs], protocol=pickle.HIGHEST_PROTOCOL)
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.stem}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            out.write(blob)
        os.replace(tmp, entry)
        tmp = None
        _prune(entry.parent)
    except (OSError, pickle.PicklingError):
        pass  # no cache this time: the next run loads the file again
    finally:
        if tmp is not None:  # also after Ctrl-C or SIGTERM mid-write: no temp file left behind
            Path(tmp).unlink(missing_ok=True)


def _prune(directory: Path) -> None:
    import time

    entries = list(os.scandir(directory))
    now = time.time()
    for temp in (e for e in entries if e.name.endswith(".tmp")):
        try:
            if now - temp.stat().st_mtime > STALE_TEMP_SECONDS:
                os.unlink(temp.path)
        except OSError:
            pass
    kept = [e for e in entries if e.name.endswith(".pickle")]
    if len(kept) <= MAX_ENTRIES:
        return
    by_age = sorted(kept, key=lambda e: e.stat().st_mtime)
    for old in by_age[: len(kept) - MAX_ENTRIES // 2]:
        try:
            os.unlink(old.path)
        except OSError:
            pass
