"""What a target says about itself: greetings and capabilities, and whether an account can log in."""

from __future__ import annotations

from imapclient.response_parser import parse_response

from harness.engine.mailboxes import Namespace
from harness.sessions import IMAPSession, POP3Session, SessionError
from harness.targets.target_file import Account, Endpoint, Target


def probe_target(target: Target, account_index: int = 0) -> dict:
    """Greetings and capabilities over IMAP and POP3 (each only if configured), and human-readable
    problems in "errors" (never with a password in them)."""
    info: dict = {
        "imap_greeting": None,
        "imap_capabilities": [],
        "imap_namespace": None,
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
    for proto in ("imap", "pop3"):
        _probe_cleartext(proto, target, info)
    return info


def _probe_cleartext(proto: str, target: Target, info: dict) -> None:
    """What the cleartext endpoint (where STARTTLS/STLS is offered) lists before TLS, for the TLS suites'
    `requires: {cleartext: ...}`: "<proto>_cleartext_capabilities" (IMAP atoms, POP3 CAPA keywords, upper
    case), or "<proto>_cleartext_error". Not a problem of the run: only those tests need it."""
    from harness.engine.login_delays import own_source_address  # the engine imports targets, not the reverse

    endpoint = target.starttls_endpoint(proto)
    if endpoint is None:
        return
    # from an address of its own: a server may count a connection from its own address as secure (Dovecot)
    source = own_source_address(endpoint.host)
    try:
        if proto == "imap":
            with IMAPSession(endpoint.host, endpoint.port, name="probe-cleartext", timeout=target.timeout,
                             strict_line_ends=False, source=source) as imap:
                info["imap_cleartext_capabilities"] = imap.capabilities()
        else:
            with POP3Session(endpoint.host, endpoint.port, name="probe-cleartext", timeout=target.timeout,
                             strict_line_ends=False, source=source) as pop3:
                info["pop3_cleartext_capabilities"] = [line.split()[0].upper() for line in pop3.capa() if line.strip()]
    except SessionError as exc:
        info[f"{proto}_cleartext_error"] = str(exc)


def _connect(cls, endpoint: Endpoint, target: Target, name: str):
    # Lenient line ends: a server that ends lines with a bare LF still gets a run, whose tests each fail on it.
    return cls(endpoint.host, endpoint.port, tls=endpoint.tls, starttls=endpoint.starttls,
               tls_verify=endpoint.tls_verify, ca_file=target.ca_file, name=name, timeout=target.timeout,
               strict_line_ends=False, client_cert=endpoint.client_certificate)


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
        info["imap_namespace"] = _probe_namespace(imap, info["imap_capabilities"]).to_dict()


def _decode(value) -> str | None:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _probe_namespace(imap: IMAPSession, capabilities: list[str]) -> Namespace:
    """The personal namespace (RFC 2342): its prefix and delimiter from NAMESPACE, or, without it, the
    delimiter from LIST "" "" (RFC 3501 §6.3.8) and no prefix. Whether a new folder can have children
    is learnt later, by the first test that needs it (accounts.folders_take_children): the probe stores nothing."""
    prefix, delimiter, source = "", None, "LIST"
    caps = {c.upper() for c in capabilities}
    if "NAMESPACE" in caps:
        response = imap.command("NAMESPACE")
        for u in response.untagged if response.ok else []:
            if u.text.upper().startswith("* NAMESPACE "):
                personal = parse_response([u.inline_text[len("* NAMESPACE "):].encode()])[0]
                if personal:  # NIL: no personal namespace; fall back to LIST
                    prefix, delimiter, source = _decode(personal[0][0]) or "", _decode(personal[0][1]), "NAMESPACE"
    if source == "LIST":
        response = imap.command('LIST "" ""')
        for u in response.untagged if response.ok else []:
            if u.text.upper().startswith("* LIST "):
                delimiter = _decode(parse_response([u.inline_text[len("* LIST "):].encode()])[1])
    if not delimiter:
        return Namespace(prefix, None, False, source, "the LIST delimiter is NIL: the server has no hierarchy")
    return Namespace(prefix, delimiter, True, source)


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
