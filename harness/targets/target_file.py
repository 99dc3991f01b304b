"""The target file: where the server is, which accounts to use, and how much the harness may touch.

See docs/targets.md for the format.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from harness.errors import ConfigError
from harness.known_secrets import SECRETS
from harness.yaml_source import line_of, load_schema, load_yaml, validate

DEFAULT_PORTS = {"imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995, "lmtp": 24, "smtp": 25}
MAX_ACCOUNTS = 1_000_000  # more than any load run uses (20,000 users), few enough to list in memory
SCHEMES = {"imap": ("imap", "imaps"), "pop3": ("pop3", "pop3s"), "lmtp": ("lmtp",), "smtp": ("smtp",),
           "imaps": ("imaps",), "pop3s": ("pop3s",)}
TLS_MODES = ("implicit", "starttls")  # `tls:` in a target file: how the sessions reach imap and pop3


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    tls: bool = False  # TLS from the first byte (imaps://, pop3s://)
    starttls: bool = False
    tls_verify: bool = True
    client_cert: str | None = None  # a client certificate for servers that ask for one (PEM; may hold the key)
    client_key: str | None = None

    @property
    def client_certificate(self) -> tuple[str, str | None] | None:
        return (self.client_cert, self.client_key) if self.client_cert else None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class Account:
    user: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        # Whatever this process writes or prints is scrubbed of every password it has seen.
        SECRETS.add(self.password)

    def __repr__(self) -> str:  # never print a password, even in a traceback
        return f"Account(user={self.user!r})"


@dataclass
class Target:
    name: str
    accounts: list[Account]
    imap: Endpoint | None = None
    pop3: Endpoint | None = None
    lmtp: Endpoint | None = None
    smtp: Endpoint | None = None
    profile: str | None = None
    disposable: bool = False
    ca_file: str | None = None
    timeout: float = 5.0
    source: Path | None = None
    # TLS endpoints besides the ones the sessions use (imap, pop3), for the TLS suites: implicit TLS
    # (imaps://, pop3s://), and the cleartext port that offers STARTTLS when the sessions use implicit TLS.
    imaps: Endpoint | None = None
    pop3s: Endpoint | None = None
    cleartext: dict[str, Endpoint] = field(default_factory=dict)
    tls_mode: str | None = None  # "implicit" or "starttls": what `tls:` in the target file chose

    @property
    def delivery(self) -> Endpoint | None:
        return self.lmtp or self.smtp

    def starttls_endpoint(self, proto: str) -> Endpoint | None:
        """The cleartext endpoint of `proto` where STARTTLS/STLS may be offered, not upgraded (the test does it)."""
        ep = self.cleartext.get(proto) or getattr(self, proto)
        return dataclasses.replace(ep, starttls=False) if ep and not ep.tls else None

    def implicit_tls_endpoint(self, proto: str) -> Endpoint | None:
        """The endpoint of `proto` that speaks TLS from the first byte (imaps://, pop3s://), if the target has one."""
        ep = getattr(self, proto + "s") or getattr(self, proto)
        return ep if ep and ep.tls else None

    def warnings(self) -> list[str]:
        """What the user must know about this target before trusting a run against it."""
        out = []
        for proto in ("imap", "pop3", "lmtp", "smtp", "imaps", "pop3s"):
            ep = getattr(self, proto)
            if proto in ("imaps", "pop3s") and ep == getattr(self, proto[:-1]):
                continue  # tls: implicit: the sessions' endpoint, already said
            if ep and (ep.tls or ep.starttls) and not ep.tls_verify:
                out.append(f"{proto}: tls_verify is false: {ep.url}'s certificate is not checked, so anyone on the "
                           "path could pose as the server and read the passwords")
        return out

    def print_warnings(self, stream=None) -> None:
        for warning in self.warnings():
            print(f"mailharness: warning: {warning}", file=stream or sys.stderr)

    @property
    def passwords(self) -> set[str]:
        return {a.password for a in self.accounts if a.password}

    def to_dict(self, *, with_passwords: bool = True) -> dict:
        """The target-file form; written by `mailharness target up`."""
        out: dict = {"name": self.name}
        for proto in ("imap", "pop3", "lmtp", "smtp"):
            ep = getattr(self, proto)
            if proto in self.cleartext and self.tls_mode == "implicit":
                ep = dataclasses.replace(self.cleartext[proto], starttls=True)  # `tls: implicit` picks imaps/pop3s again
            if ep:
                out[proto] = _written(ep)
            if proto in ("imap", "pop3") and getattr(self, proto + "s"):
                out[proto + "s"] = _written(getattr(self, proto + "s"))
        if self.tls_mode:
            out["tls"] = self.tls_mode
        if self.ca_file:
            out["ca_file"] = self.ca_file
        endpoints = [ep for ep in (self.imap, self.pop3, self.lmtp, self.smtp, self.imaps, self.pop3s) if ep]
        cert = next((ep.client_certificate for ep in endpoints if ep.client_certificate), None)
        if cert:
            out["client_cert"] = cert[0]
            if cert[1]:
                out["client_key"] = cert[1]
        out["accounts"] = [
            {"user": a.user, "password": a.password if with_passwords else "***"} for a in self.accounts
        ]
        if self.profile:
            out["profile"] = self.profile
        out["disposable"] = self.disposable
        return out

    def dump(self, path: Path) -> None:
        """Write the target file, passwords included: created 0600, never readable by others even briefly."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        with os.fdopen(fd, "w") as out:
            # libyaml's emitter where PyYAML has it: the same text, five times faster (every run writes one)
            out.write(yaml.dump(self.to_dict(), Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False))


def _written(ep: Endpoint):
    """An endpoint as a target file gives it: the URL, or a mapping when it has options."""
    options = {"starttls": True} if ep.starttls else {}
    if not ep.tls_verify:
        options["tls_verify"] = False
    return {"url": ep.url, **options} if options else ep.url


def _endpoint(proto: str, value, source, line: int, verify_default: bool, client_cert: tuple) -> Endpoint:
    if isinstance(value, str):
        value = {"url": value}
    try:
        parts = urlsplit(value["url"])
        parts.port  # noqa: B018 -- parses the port: raises for a non-number or one above 65535
    except ValueError as exc:
        raise ConfigError(f"{source}:{line}: {proto}: bad port or address in {value['url']!r} ({exc})") from None
    if parts.scheme not in SCHEMES[proto]:
        raise ConfigError(
            f"{source}:{line}: {proto}: scheme {parts.scheme!r} does not fit; use {' or '.join(s + '://' for s in SCHEMES[proto])}"
        )
    if not parts.hostname:
        raise ConfigError(f"{source}:{line}: {proto}: no host in {value['url']!r}")
    port = DEFAULT_PORTS[parts.scheme] if parts.port is None else parts.port
    if not 1 <= port <= 65535:  # urlsplit accepts port 0; connecting to it means nothing
        raise ConfigError(f"{source}:{line}: {proto}: port {port} in {value['url']!r} is not a port (1-65535)")
    tls = parts.scheme in ("imaps", "pop3s")
    starttls = bool(value.get("starttls", False))
    if tls and starttls:
        raise ConfigError(f"{source}:{line}: {proto}: starttls makes no sense with {parts.scheme}://")
    return Endpoint(parts.scheme, parts.hostname, port, tls, starttls, value.get("tls_verify", verify_default), *client_cert)


UNSET_PASSWORD_ENV = "password_env: environment variable"


def _password(entry, source, line: int) -> str:
    if "password" in entry:
        return str(entry["password"])
    var = entry["password_env"]
    if var not in os.environ:
        raise ConfigError(f"{source}:{line}: {UNSET_PASSWORD_ENV} {var} is not set")
    return os.environ[var]


def _accounts(spec, source, data, problems: list[str]) -> list[Account]:
    if isinstance(spec, list):
        out = []
        for i, entry in enumerate(spec):
            password = _checked(problems, _password, entry, source, line_of(data, ["accounts", i]))
            out.append(Account(str(entry["user"]), password or ""))
        return out
    first, last = spec["range"]
    line = line_of(data, ["accounts"])
    if last < first:
        problems.append(f"{source}:{line}: accounts.range: {first} > {last}")
    if last - first + 1 > MAX_ACCOUNTS:  # refused before listing them: 10^11 accounts would take every byte of memory
        problems.append(f"{source}:{line}: accounts.range: {last - first + 1:,} accounts; at most {MAX_ACCOUNTS:,}")
        return []
    password = _checked(problems, _password, spec, source, line) or ""
    return [Account(spec["pattern"].replace("{n}", str(n)), password) for n in range(first, last + 1)]


def _checked(problems: list[str], check, *args):
    """One check; its problem is recorded so the file's other problems are reported too."""
    try:
        return check(*args)
    except ConfigError as exc:
        problems += exc.problems
        return None


def parse_target(data, source: Path | str = "<target>") -> Target:
    validate(data, load_schema("target.schema.json"), source)
    verify = data.get("tls_verify", True)
    problems: list[str] = []
    client_cert = (_existing_file(problems, data, "client_cert", source), _existing_file(problems, data, "client_key", source))
    if client_cert[1] and not client_cert[0]:
        problems.append(f"{source}:{line_of(data, ['client_key'])}: client_key needs client_cert (the certificate it belongs to)")
    endpoints = {
        proto: _checked(problems, _endpoint, proto, data[proto], source, line_of(data, [proto]), verify, client_cert)
        for proto in ("imap", "pop3", "lmtp", "smtp", "imaps", "pop3s")
        if proto in data
    }
    if not any(proto in data for proto in ("imap", "pop3", "imaps", "pop3s")):
        problems.append(f"{source}:{getattr(data, 'line', 1)}: give at least one of imap or pop3")
    cleartext = {}
    for proto in ("imap", "pop3"):
        sessions, cleartext_ep = _tls_choice(problems, data, proto, endpoints, source)
        if sessions is not None:
            endpoints[proto] = sessions
        if cleartext_ep is not None:
            cleartext[proto] = cleartext_ep
    accounts = _accounts(data["accounts"], source, data, problems)
    ca_file = _existing_file(problems, data, "ca_file", source)
    users = [a.user for a in accounts]
    if len(set(users)) != len(users):
        problems.append(f"{source}:{line_of(data, ['accounts'])}: accounts: a user is listed twice")
    if problems:
        raise ConfigError(problems=sorted(problems, key=_line_number))
    return Target(
        name=data["name"],
        accounts=accounts,
        profile=data.get("profile"),
        disposable=data.get("disposable", False),
        ca_file=ca_file,
        timeout=float(data.get("timeout", 5.0)),
        source=Path(source) if not isinstance(source, Path) else source,
        cleartext=cleartext,
        tls_mode=data.get("tls"),
        **endpoints,
    )


def _existing_file(problems: list[str], data, key: str, source) -> str | None:
    """The expanded path of a file key (ca_file, client_cert, client_key), or None; a missing file is a problem."""
    value = data.get(key)
    if value is None:
        return None
    if not Path(value).expanduser().is_file():
        problems.append(f"{source}:{line_of(data, [key])}: {key}: {value} does not exist or is not a file")
    return str(Path(value).expanduser())


def _tls_choice(problems: list[str], data, proto: str, endpoints: dict, source) -> tuple[Endpoint | None, Endpoint | None]:
    """(the endpoint `proto`'s sessions use, the cleartext endpoint kept for the STARTTLS tests) as `tls:` says.

    No `tls:`: the sessions use `imap:` as written (or `imaps:` when there is no `imap:`). `tls: implicit`:
    `imaps:` (or an imaps:// `imap:`). `tls: starttls`: `imap:` (imap://) with STARTTLS."""
    mode, written, implicit = data.get("tls"), endpoints.get(proto), endpoints.get(proto + "s")
    if written is None and implicit is None:
        return None, None
    line = line_of(data, ["tls"] if mode else [proto + "s"])
    if mode == "implicit":
        chosen = implicit or (written if written and written.tls else None)
        if chosen is None:
            problems.append(f"{source}:{line}: tls: implicit: {proto} has no implicit-TLS endpoint; add {proto}s: {proto}s://HOST")
        return chosen, written if written and not written.tls else None
    if mode == "starttls":
        if written is None or written.tls:
            problems.append(f"{source}:{line}: tls: starttls: {proto} needs a cleartext endpoint ({proto}://HOST) to upgrade")
            return None, None
        return dataclasses.replace(written, starttls=True), None
    return written or implicit, None


def _line_number(problem: str) -> int:
    parts = problem.split(":")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def load_target(path: Path | str) -> Target:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: target file not found")
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: a target file is a mapping (name:, imap:, accounts:, ...)")
    return parse_target(data, path)
