"""Managed servers: throwaway instances the harness starts itself, chosen by name (--server NAME).

Every managed server class has one interface:
    cls(accounts=40, *, quota_mb=50, root=None, **server_options)
    .start(timeout=...) -> Target     (on free 127.0.0.1 ports, in a temp dir)
    .stop()                           (no process and no file left behind)
    .root, .target, .detach() -> dict, cls.stop_detached(state)
    .add_accounts(accounts)           (optional)
    cls.PROFILE                       profile used by default (profiles/<PROFILE>.yaml)
    cls.INSTALL_HINT                  how to get the packages (raised as TargetUnavailable, exit 2)

They share their lifecycle (start-with-cleanup, stop, detach) through managed_server.ManagedServer.
Classes are imported lazily by module path, so a server whose module or packages are missing
does not break the others.
"""

from __future__ import annotations

import importlib

from harness.errors import ConfigError, TargetUnavailable

DEFAULT_SERVER = "dovecot"

# Registration point: one line per server, name -> "module:Class".
SERVERS: dict[str, str] = {
    "dovecot": "harness.targets.managed_dovecot:ManagedDovecot",
    "dovecot-inbox-ns": "harness.targets.managed_dovecot:ManagedDovecotInboxNamespace",
    "cyrus": "harness.targets.managed_cyrus:ManagedCyrus",
    "mailutils": "harness.targets.managed_mailutils:ManagedMailutils",
    # the embedded Dovecot with Debian's failed-login delays and no auto-created folders
    "dovecot-stock": "harness.targets.managed_dovecot:StockDovecot",
}


def server_names() -> list[str]:
    return list(SERVERS)


def server_class(name: str) -> type:
    """The class of a managed server; an unknown name is a usage error (exit 2) listing the known ones."""
    if name not in SERVERS:
        raise ConfigError(f"unknown managed server {name!r}; choose one of: {', '.join(SERVERS)}")
    module_name, _, class_name = SERVERS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise TargetUnavailable(f"managed server {name!r} is not available in this mailharness ({module_name} is missing)") from None
    return getattr(module, class_name)


def managed_server(name: str, accounts: int = 40, **options):
    """A not yet started instance of the named server."""
    return server_class(name)(accounts=accounts, **options)
