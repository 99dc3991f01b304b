"""Server profiles: a server's known, legal deviations from what a suite expects, each with a reason.

A suite says what the RFC requires. ``profiles/NAME.yaml`` says, for one server
and its settings, which tests are expected to fail (strict xfail: if one starts
passing, the run says so) or cannot run, and why.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from harness.paths import profiles_dir, resolve_named_yaml
from harness.yaml_source import load_document


@dataclass
class Deviation:
    expect: str  # "fail" | "warning" (a known failed SHOULD: the test's warning becomes an expected deviation) | "skip"
    reason: str
    line: int = 0  # of its id in the profile file


@dataclass
class Profile:
    name: str
    server: str
    path: Path
    deviations: dict[str, Deviation] = field(default_factory=dict)

    def lookup(self, test_id: str) -> Deviation | None:
        if test_id in self.deviations:
            return self.deviations[test_id]
        for pattern, deviation in self.deviations.items():
            if fnmatch.fnmatchcase(test_id, pattern):  # the same rule as unused()
                return deviation
        return None

    def unused(self, test_ids: set[str]) -> list[str]:
        return [p for p in self.deviations if not any(fnmatch.fnmatchcase(t, p) for t in test_ids)]

    def unused_problems(self, test_ids: set[str]) -> list[str]:
        """``file:line: deviation 'x' matches no test`` for each deviation no test id matches."""
        out = []
        for pattern in self.unused(test_ids):
            close = difflib.get_close_matches(pattern, sorted(test_ids), n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.append(f"{self.path}:{self.deviations[pattern].line}: deviation {pattern!r} matches no test{hint}")
        return out

    def summary(self) -> dict:
        return {"name": self.name, "server": self.server, "path": str(self.path)}


def resolve_profile_path(name_or_path: str) -> Path:
    return resolve_named_yaml(name_or_path, profiles_dir(), "profile")


def load_profile(name_or_path: str) -> Profile:
    path = resolve_profile_path(name_or_path)
    data = load_document(path, "profile.schema.json", "a profile has `server:` and `deviations:`")
    raw = data.get("deviations") or {}
    lines = getattr(raw, "key_lines", {})
    deviations = {tid: Deviation(d["expect"], d["reason"], lines.get(tid, 0)) for tid, d in raw.items()}
    return Profile(path.stem, data["server"], path, deviations)
