"""What a target says about itself: greetings and capabilities, and whether an account can log in."""

from __future__ import annotations

from harness.sessions import IMAPSession, POP3Session, SessionError
from harness.targets.target_file import Account, Endpoint, Target


def probe_target(target: Target, account_index: int = 0) -> dict:
    """Greetings and capabilities over IMAP and POP3 (each only if configured), and human-readable
    problems in "errors" (never with a password in them)."""
    info: dict = {
        "imap_greeting": None,
        "imap_capabilities": [],
        "pop3_greeting": None,
        "pop3_capabilities": [],
        # Before login, where the SASL mechanisms are listed (servers drop AUTH=/SASL after it)
        "imap_capabilities_before_login": [],
        "pop3_capa_before_login": [],  # whole CAPA lines: "SASL PLAIN LOGIN"
        "errors": [],
    }
    if not 0 <= account_index < len(target.accounts):
        info["errors"].append(f"the target has no account number {account_index + 1}")
        return info
    account = target.accounts[account_index]
    if target.imap:
        try:
            _probe_imap(target.imap, account, target, info)
        except SessionError as exc:
            info["errors"].append(f"IMAP: {exc}")
    if target.pop3:
        try:
            _probe_pop3(target.pop3, account, target, info)
        except SessionError as exc:
            info["errors"].append(f"POP3: {exc}")
    return info


def _connect(cls, endpoint: Endpoint, target: Target, name: str):
    # Lenient line ends: a server that ends lines with a bare LF still gets a run, whose tests each fail on it.
    return cls(endpoint.host, endpoint.port, tls=endpoint.tls, starttls=endpoint.starttls,
               tls_verify=endpoint.tls_verify, ca_file=target.ca_file, name=name, timeout=target.timeout,
               strict_line_ends=False)


def _probe_imap(endpoint: Endpoint, account: Account, target: Target, info: dict) -> None:
    with _connect(IMAPSession, endpoint, target, "probe-imap") as imap:
        info["imap_greeting"] = imap.greeting
        try:
            info["imap_capabilities_before_login"] = imap.capabilities()
        except SessionError:
            if imap.closed:
                raise
        imap.login(account.user, account.password)
        info["imap_capabilities"] = imap.capabilities()


def _probe_pop3(endpoint: Endpoint, account: Account, target: Target, info: dict) -> None:
    with _connect(POP3Session, endpoint, target, "probe-pop3") as pop3:
        info["pop3_greeting"] = pop3.greeting
        try:
            info["pop3_capa_before_login"] = [line.strip() for line in pop3.capa() if line.strip()]
        except SessionError:
            pass  # CAPA is optional (RFC 2449)
        if pop3.closed:
            return
        try:
            pop3.login(account.user, account.password)
        except SessionError as exc:  # CAPA still works before login
            info["errors"].append(f"POP3: {exc}")
        if pop3.closed:
            return
        try:
            info["pop3_capabilities"] = [line.split()[0].upper() for line in pop3.capa() if line.strip()]
        except SessionError:
            info["pop3_capabilities"] = []  # CAPA is optional (RFC 2449)
