"""Server profiles: a server's known, legal deviations from what a suite expects, each with a reason.

A suite says what the RFC requires. ``profiles/NAME.yaml`` says, for one server
and its settings, which tests are expected to fail (strict xfail: if one starts
passing, the run says so) or cannot run, and why.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from harness.paths import profiles_dir, resolve_named_yaml
from harness.yaml_source import load_document


@dataclass
class Deviation:
    expect: str  # "fail" | "skip"
    reason: str


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

    def summary(self) -> dict:
        return {"name": self.name, "server": self.server, "path": str(self.path)}


def resolve_profile_path(name_or_path: str) -> Path:
    return resolve_named_yaml(name_or_path, profiles_dir(), "profile")


def load_profile(name_or_path: str) -> Profile:
    path = resolve_profile_path(name_or_path)
    data = load_document(path, "profile.schema.json", "a profile has `server:` and `deviations:`")
    deviations = {tid: Deviation(d["expect"], d["reason"]) for tid, d in (data.get("deviations") or {}).items()}
    return Profile(path.stem, data["server"], path, deviations)
