"""Scenario files (loadtests/scenarios/*.yaml): the user mix, think times, mailboxes, deliveries,
shape and pass/fail rules of a load run. Validated against harness/schemas/scenario.schema.json,
then for meaning; every error names the file, the line and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import ConfigError
from harness.load.messages import DEFAULT_SIZE_MIX
from harness.load.source_addresses import parse_source_addresses
from harness.load.thresholds import Threshold, parse_rate, parse_threshold
from harness.paths import resolve_named_yaml
from harness.yaml_source import line_of, load_document

_PACKAGE = Path(__file__).resolve().parents[1]
# The source checkout's loadtests/, or the copy a wheel bundles (like harness/paths.py does for suites).
LOADTESTS_DIR = next((d for d in (_PACKAGE.parent / "loadtests", _PACKAGE / "bundled" / "loadtests") if d.is_dir()),
                     _PACKAGE.parent / "loadtests")
SCENARIO_DIR = LOADTESTS_DIR / "scenarios"
ROLES = ("pop3_delete", "pop3_keep", "imap_webmail", "imap_idle", "stress")
DEFAULT_THINK = {"pop3_delete": (30.0, 90.0), "pop3_keep": (30.0, 90.0), "imap_webmail": (3.0, 15.0), "imap_idle": (1.0, 5.0),
                 "stress": (0.0, 0.0)}


@dataclass(frozen=True)
class UserKind:
    role: str
    weight: float
    think_time: tuple[float, float]  # uniform random pause between visits, seconds
    options: dict = field(default_factory=dict)  # kind-specific keys (headers, devices, first_poll, ...)


@dataclass(frozen=True)
class Delivery:
    rate: float  # messages/s over the whole run
    senders: int
    to: dict[str, float]  # role -> weight
    size_mix: dict[str, int]


@dataclass(frozen=True)
class Shape:
    ramp: str | float  # "40%" of --run-time, or seconds
    steps: int

    def ramp_seconds(self, run_time: float) -> float:
        if isinstance(self.ramp, str) and self.ramp.endswith("%"):
            return run_time * float(self.ramp[:-1]) / 100
        return float(self.ramp)


@dataclass(frozen=True)
class Scenario:
    name: str
    source: Path
    description: str
    users: dict[str, UserKind]
    accounts: dict[str, int]
    messages: int
    size_mix: dict[str, int]
    seed: int
    delivery: Delivery | None
    shape: Shape | None
    thresholds: list[Threshold]
    max_error_rate: float | None
    timeout: float | None
    source_addresses: tuple[str, ...] = ()  # local addresses to connect from, round-robin per user


def available_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def resolve_scenario(name_or_path: str) -> Path:
    """A scenario name (loadtests/scenarios/NAME.yaml) or a path to a YAML file."""
    return resolve_named_yaml(name_or_path, SCENARIO_DIR, "scenario")


def load_scenario(name_or_path: str) -> Scenario:
    path = resolve_scenario(name_or_path)
    data = load_document(path, "scenario.schema.json", "a scenario has users:, mailbox:, delivery:, ...")
    return _build(data, path)


def _duration(text) -> float:
    if isinstance(text, (int, float)):
        return float(text)
    number, unit = float(text[:-1]), text[-1]
    return number * {"s": 1, "m": 60, "h": 3600}[unit]


def _build(data: dict, path: Path) -> Scenario:
    def where(*keys) -> str:
        return f"{path}:{line_of(data, list(keys))}: {'.'.join(str(k) for k in keys)}: "

    users = {}
    for role, spec in data["users"].items():
        think = spec.get("think_time", DEFAULT_THINK[role])
        if isinstance(think, dict):
            if think["min"] > think["max"]:
                raise ConfigError(f"{where('users', role, 'think_time')}min {think['min']} is above max {think['max']}")
            think = (float(think["min"]), float(think["max"]))
        elif not isinstance(think, tuple):
            think = (float(think), float(think))
        options = {k: v for k, v in spec.items() if k not in ("weight", "think_time")}
        users[role] = UserKind(role, float(spec.get("weight", 1)), think, options)
    if not any(u.weight for u in users.values()):
        raise ConfigError(f"{where('users')}every weight is 0; give at least one user kind a weight above 0")

    accounts = dict(data.get("accounts", {}))
    for role in accounts:
        if role not in users:
            raise ConfigError(f"{where('accounts', role)}no such user kind in users: ({', '.join(users)})")

    delivery = None
    if "delivery" in data:
        d = data["delivery"]
        to = dict(d.get("to", {role: 1 for role in users}))
        for role in to:
            if role not in users:
                raise ConfigError(f"{where('delivery', 'to', role)}no such user kind in users: ({', '.join(users)})")
        if not any(to.values()):
            raise ConfigError(f"{where('delivery', 'to')}every weight is 0")
        mix = dict(d.get("size_mix", DEFAULT_SIZE_MIX))
        if not any(mix.values()):
            raise ConfigError(f"{where('delivery', 'size_mix')}every weight is 0")
        delivery = Delivery(float(d["rate"]), int(d.get("senders", 1)), to, mix)

    mailbox = data.get("mailbox", {})
    size_mix = dict(mailbox.get("size_mix", DEFAULT_SIZE_MIX))
    if not any(size_mix.values()):
        raise ConfigError(f"{where('mailbox', 'size_mix')}every weight is 0")

    shape = None
    if "shape" in data:
        s = data["shape"]
        ramp = s["ramp"]
        if isinstance(ramp, str) and not ramp.endswith("%"):
            ramp = _duration(ramp)
        if isinstance(ramp, str) and not 0 < float(ramp[:-1]) <= 100:
            raise ConfigError(f"{where('shape', 'ramp')}{ramp} is not a share of the run between 0% and 100%")
        shape = Shape(ramp, int(s.get("steps", 0)))

    thresholds = [parse_threshold(str(t), where("thresholds", i)) for i, t in enumerate(data.get("thresholds", []))]
    max_error_rate = parse_rate(data["max_error_rate"], where("max_error_rate")) if "max_error_rate" in data else None

    return Scenario(
        name=re.sub(r"\.ya?ml$", "", path.name),
        source=path,
        description=str(data.get("description", "")).strip(),
        users=users,
        accounts=accounts,
        messages=int(mailbox.get("messages", 50)),
        size_mix=size_mix,
        seed=int(mailbox.get("seed", 1)),
        delivery=delivery,
        shape=shape,
        thresholds=thresholds,
        max_error_rate=max_error_rate,
        timeout=float(data["timeout"]) if "timeout" in data else None,
        source_addresses=tuple(parse_source_addresses(data["source_address"], where("source_address")))
        if "source_address" in data else (),
    )


def check_target_fits(scenario: Scenario, target) -> None:
    """Every user kind needs its protocol on the target; say which endpoint is missing."""
    needs = {"pop3_delete": "pop3", "pop3_keep": "pop3", "imap_webmail": "imap", "imap_idle": "imap", "stress": "imap"}
    for role, kind in scenario.users.items():
        if kind.weight > 0 and getattr(target, needs[role]) is None:
            raise ConfigError(f"{scenario.source}: users.{role} speaks {needs[role].upper()}, "
                              f"but target {target.name!r} has no {needs[role]}: endpoint")
    if scenario.delivery and target.delivery is None:
        raise ConfigError(f"{scenario.source}: delivery: sends mail over LMTP (or SMTP), "
                          f"but target {target.name!r} has no lmtp: or smtp: endpoint")
