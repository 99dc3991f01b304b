"""The suite cache (harness/engine/suite_cache.py): a file loaded once is served from the cache, and the cache
never hides a problem: an edited file, a broken entry or a changed harness loads the file afresh, with its
errors (file:line, exit 2)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.engine import model, suite_cache
from harness.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

SUITE = """\
suite: cache
tests:
  - id: cache.noop
    title: NOOP answers OK
    area: session
    rfc: ["RFC3501 §6.1.2"]
    sessions: {a: imap}
    steps:
      - a: NOOP
        expect: OK ...
      - a: FETCH 1 (FLAGS)
        expect: OK ...
        untagged: "* 1 FETCH (FLAGS ($flags))"
"""


@pytest.fixture
def cache_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "cache-home"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    monkeypatch.delenv("MAILHARNESS_SUITE_CACHE", raising=False)
    return home


def entries(home: Path) -> list[Path]:
    return sorted(home.glob("mailharness/suites-*/*"))


def refuse_parsing(monkeypatch):
    def parse(path):
        raise AssertionError(f"{path} was parsed, not served from the cache")
    monkeypatch.setattr(model, "load_suite", parse)


def test_a_loaded_suite_is_served_from_the_cache_as_it_was_loaded(tmp_path, cache_home, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE)
    first = suite_cache.load_suite(path)
    assert [e.suffix for e in entries(cache_home)] == [".pickle"]
    moved = tmp_path / "elsewhere" / "s.yaml"  # same bytes under another name: the specs say where they are
    moved.parent.mkdir()
    moved.write_text(SUITE)
    refuse_parsing(monkeypatch)
    again = suite_cache.load_suite(path)
    assert again == first and again[0] is not first[0]
    assert [s.file for s in suite_cache.load_suite(moved)] == [moved]
    assert again[0].steps[1].untagged[0].match("* 1 FETCH (FLAGS (\\Seen))", {}) == {"flags": "\\Seen"}


@pytest.mark.parametrize("edit, problem", [
    (lambda s: s.replace("expect: OK ...\n        untagged", "expcet: OK ...\n        untagged"), ":12: unknown step key 'expcet'"),
    (lambda s: s.replace("area: session", "area: [session"), ":6: YAML syntax error"),
    (lambda s: s.replace("    title: NOOP answers OK\n", ""), ":3: tests[0]: 'title' is a required property"),
])
def test_an_edited_file_is_loaded_afresh_and_its_problem_reported(tmp_path, cache_home, edit, problem):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE)
    suite_cache.load_suite(path)
    path.write_text(edit(SUITE))
    for _ in range(2):  # and again: a file with a problem is never kept
        with pytest.raises(ConfigError) as raised:
            suite_cache.load_suite(path)
        assert f"{path}{problem}" in str(raised.value)
    assert len(entries(cache_home)) == 1


class Boom:
    def __reduce__(self):
        return (os.system, ("touch " + str(Path(os.environ["XDG_CACHE_HOME"]) / "pwned"),))


@pytest.mark.parametrize("damage", ["truncated", "code", "not specs"])
def test_a_broken_entry_is_a_miss_and_runs_nothing(tmp_path, cache_home, damage):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE)
    good = suite_cache.load_suite(path)
    [entry] = entries(cache_home)
    blob = entry.read_bytes()
    entry.write_bytes({"truncated": blob[: len(blob) // 2], "code": pickle.dumps([Boom()]),
                       "not specs": pickle.dumps(["a", "list"])}[damage])
    assert suite_cache.load_suite(path) == good
    assert not (cache_home / "pwned").exists()
    assert entry.read_bytes() == blob  # loaded afresh and kept again


def test_a_change_to_the_harness_loads_the_file_afresh(tmp_path, cache_home, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE)
    suite_cache.load_suite(path)
    monkeypatch.setattr(suite_cache, "harness_fingerprint", lambda: b"another harness")
    parsed = []
    real = model.load_suite
    monkeypatch.setattr(model, "load_suite", lambda p: parsed.append(p) or real(p))
    suite_cache.load_suite(path)
    assert parsed == [path] and len(entries(cache_home)) == 2


@pytest.mark.parametrize("changed", ["engine/model.py", "schemas/suite.schema.json", "corpus/messages/plain.eml"])
def test_any_change_to_a_harness_file_changes_the_fingerprint(tmp_path, monkeypatch, changed):
    import shutil

    package = tmp_path / "harness"
    shutil.copytree(suite_cache.PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(suite_cache, "PACKAGE", package)
    suite_cache.harness_fingerprint.cache_clear()
    try:
        before = suite_cache.harness_fingerprint()
        (package / "__pycache__").mkdir(exist_ok=True)
        (package / "__pycache__" / "x.pyc").write_bytes(b"bytecode does not count")
        suite_cache.harness_fingerprint.cache_clear()
        assert suite_cache.harness_fingerprint() == before
        target = package / changed
        target.write_bytes(target.read_bytes() + b"\n")
        suite_cache.harness_fingerprint.cache_clear()
        assert suite_cache.harness_fingerprint() != before
    finally:
        suite_cache.harness_fingerprint.cache_clear()


def test_an_unwritable_cache_still_loads(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    path = tmp_path / "s.yaml"
    path.write_text(SUITE)
    assert [s.id for s in suite_cache.load_suite(path)] == ["cache.noop"]


def test_every_bundled_suite_comes_back_from_the_cache_unchanged(cache_home, monkeypatch):
    from harness.engine.suite_files import suite_files

    files = suite_files([ROOT / "suites"])
    loaded = {f: suite_cache.load_suite(f) for f in files}
    assert len(entries(cache_home)) == len(files)
    refuse_parsing(monkeypatch)
    assert {f: suite_cache.load_suite(f) for f in files} == loaded


def cli(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
    env["XDG_CACHE_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


def test_collection_uses_the_cache_and_a_broken_edit_still_exits_2_with_file_and_line(tmp_path, cache_home):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE)
    proc = cli("list", "--suite", str(path), cwd=tmp_path, home=cache_home)
    assert proc.returncode == 0, proc.stderr
    assert len(entries(cache_home)) == 1  # collected through the cache
    path.write_text(textwrap.dedent(SUITE).replace("expect: OK ...\n        untagged", "expcet: OK ...\n        untagged"))
    proc = cli("list", "--suite", str(path), cwd=tmp_path, home=cache_home)
    assert proc.returncode == 2
    assert "error: s.yaml:12: unknown step key 'expcet'" in proc.stderr and "Traceback" not in proc.stderr
