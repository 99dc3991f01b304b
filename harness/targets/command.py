"""`mailharness target`: start and stop a managed server (Dovecot, Cyrus, ...), or check a target file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.arguments import add_tls_argument
from harness.errors import ConfigError, HarnessError
from harness.targets.managed import DEFAULT_SERVER, managed_server, server_class, server_names
from harness.targets.target_file import load_target

DESCRIPTION = """\
Manage the server under test.

  mailharness target up --write target.yaml    start a throwaway Dovecot on 127.0.0.1 and keep it running
  mailharness target up --server cyrus         the same with another managed server ({servers})
  mailharness target down                      stop it and delete its temp dir (mail included)
  mailharness target check target.yaml         validate a target file and log in over IMAP and POP3

`target up` prints the target file (accounts and their generated password) or writes it
with --write (mode 0600). Pass it to `mailharness run --target`, `seed` or `load`.
""".format(servers=", ".join(server_names()))

UP_DESCRIPTION = """\
Start a throwaway mail server on 127.0.0.1 (free ports, a temp dir, accounts
user1..userN with one generated password) and leave it running, for `run
--target`, `seed` or `load`. Without --write the target file is printed.

examples:
  mailharness target up --write target.yaml
  mailharness target up --server cyrus --accounts 8 --write cyrus.yaml
"""

DOWN_DESCRIPTION = """\
Stop the server `target up` started (found through --state-dir) and delete its
temp dir, mail included. Nothing is up: says so and exits 0.

example:
  mailharness target down
"""

CHECK_DESCRIPTION = """\
Validate a target file (every problem, with file:line), then connect to each
endpoint, log in with the first account and print the greetings and
capabilities. Exit 0 when everything works, 2 otherwise.

example:
  mailharness target check staging.yaml
"""

STATE_FILE = "embedded-target.json"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="start a managed server and leave it running", description=UP_DESCRIPTION,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    up.add_argument("--server", default=DEFAULT_SERVER, metavar="NAME",
                    help=f"which managed server: {', '.join(server_names())} (default {DEFAULT_SERVER})")
    up.add_argument("--accounts", type=int, default=40, metavar="N", help="number of accounts user1..userN (default 40)")
    up.add_argument("--quota-mb", type=int, default=50, metavar="MB", help="per-account storage quota (default 50)")
    add_tls_argument(up, "the server")
    up.add_argument("--pop3-lock", action="store_true", help="Dovecot only: refuse a second POP3 session with [IN-USE] (pop3_lock_session = yes)")
    up.add_argument("--write", type=Path, metavar="FILE", help="write the target file here instead of printing it")
    up.add_argument("--state-dir", type=Path, default=Path(".mailharness"), help="where `down` finds the running server (default .mailharness)")
    down = sub.add_parser("down", help="stop the server started by `target up`", description=DOWN_DESCRIPTION,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    down.add_argument("--state-dir", type=Path, default=Path(".mailharness"))
    check = sub.add_parser("check", help="validate a target file and try to log in", description=CHECK_DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("file", type=Path)


def run(args) -> int:
    return {"up": _up, "down": _down, "check": _check}[args.action](args)


def _up(args) -> int:
    state_path = args.state_dir / STATE_FILE
    if state_path.exists():
        raise ConfigError(f"a managed target is already up ({state_path}); run `mailharness target down` first")
    if args.accounts < 1:
        raise ConfigError("--accounts must be at least 1")
    if args.write and not args.write.parent.is_dir():
        raise ConfigError(f"--write {args.write}: directory {args.write.parent} does not exist")
    options = {"quota_mb": args.quota_mb}
    if args.tls:
        options["tls"] = args.tls
    if args.pop3_lock:
        if args.server != "dovecot":
            raise ConfigError("--pop3-lock is a Dovecot setting (pop3_lock_session); drop it or use --server dovecot")
        options["pop3_lock"] = True
    server = managed_server(args.server, accounts=args.accounts, **options)
    target = server.start()
    args.state_dir.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps({"server": args.server, **server.detach()}))
    state_path.chmod(0o600)
    if args.write:
        target.dump(args.write)
        urls: dict[str, str] = {}  # url -> protocol; with tls: implicit, imap is the imaps endpoint too
        for proto in ("imap", "imaps", "pop3", "pop3s", "lmtp"):
            ep = target.cleartext.get(proto) or getattr(target, proto)
            if ep:
                urls.setdefault(ep.url, proto)
        endpoints = ", ".join(f"{proto.upper()} {url}" for url, proto in urls.items())
        print(f"{target.name} is up: {endpoints}")  # Mailutils has no LMTP
        print(f"target file: {args.write}   stop with: mailharness target down")
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump(target.to_dict(), sort_keys=False))
    return 0


def _down(args) -> int:
    state_path = args.state_dir / STATE_FILE
    if not state_path.exists():
        print("no managed target is up", file=sys.stderr)
        return 0
    state = json.loads(state_path.read_text())
    name = state.pop("server", DEFAULT_SERVER)  # state files from before --server are Dovecot's
    server_class(name).stop_detached(state)
    state_path.unlink()
    print(f"managed target ({name}) stopped")
    return 0


def _check(args) -> int:
    from harness.targets.probe import probe_target

    target = load_target(args.file)
    target.print_warnings()
    info = probe_target(target)
    print(f"target {target.name}: {len(target.accounts)} account(s), "
          + ("disposable (the harness may empty them)" if target.disposable else "not disposable (foreign mail is left alone)"))
    for proto, endpoint in (("IMAP", target.imap), ("POP3", target.pop3)):
        if endpoint is None:
            print(f"  {proto}: not configured")
            continue
        key = proto.lower()
        print(f"  {proto} {endpoint.url}")
        print(f"    greeting:     {info.get(key + '_greeting') or '(none)'}")
        print(f"    capabilities: {' '.join(info.get(key + '_capabilities') or []) or '(none)'}")
    for error in info.get("errors") or []:
        print(f"  problem: {error}")
    if info.get("errors"):
        raise HarnessError("; ".join(info["errors"]))
    return 0
