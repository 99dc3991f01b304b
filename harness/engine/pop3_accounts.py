"""Set-up and clean-up for a POP3-only target (pop3: and lmtp: or smtp:, no imap:).

POP3 cannot store mail, so set-up delivers each message over LMTP/SMTP into INBOX (the only folder POP3
sees); clean-up deletes over POP3. The safety rule is the one of accounts.py: the harness never destroys
mail it did not create. A message is the harness's when its header carries X-Mailharness-Corpus (read with
TOP n 0, or RETR n where TOP is refused); on an account the target does not call disposable, only those are
deleted, and a run does not start on an account that holds anything else.
"""

from __future__ import annotations

import time

from harness.engine.accounts import AccountNotEmpty, AccountState
from harness.engine.login_delays import LOGIN_WAIT
from harness.engine.pop3_view import corpus_name, header_and_body
from harness.errors import ConfigError, UnsafeAccount
from harness.sessions import POP3Session, SessionError
from harness.sessions.lmtp import deliver, recipient
from harness.targets.target_file import Account, Target

LOCK_WAIT = 20.0  # seconds: a server that locks the maildrop may hold it a little after a test's session ends


def _session(target: Target, account: Account) -> POP3Session:
    ep = target.pop3
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        session = POP3Session(ep.host, ep.port, tls=ep.tls, starttls=ep.starttls, tls_verify=ep.tls_verify,
                              ca_file=target.ca_file, name="pop3-setup", timeout=target.timeout,
                              client_cert=ep.client_certificate)
        try:
            session.login(account.user, account.password, timeout=LOGIN_WAIT)
            return session
        except SessionError as exc:
            session.drop()
            if "IN-USE" not in str(exc).upper() or time.monotonic() > deadline:
                raise
            time.sleep(0.5)  # [IN-USE] (RFC 2449 §8.1.2): the maildrop is still locked; try again


def _messages(session: POP3Session) -> list[tuple[int, bool]]:
    """(number, is the harness's) for each message."""
    resp = session.command("LIST")
    if not resp.ok:
        raise SessionError(f"LIST refused: {resp.line}")
    out = []
    for line in resp.lines or []:
        number = int(line.split()[0])
        got = session.command(f"TOP {number} 0")
        if not got.ok:
            got = session.command(f"RETR {number}")
        if not got.ok or got.body is None:
            raise SessionError(f"cannot read message {number}: {got.line}")
        out.append((number, corpus_name(header_and_body(got.body)[0]) is not None))
    return out


def _delete(target: Target, account: Account, *, everything: bool) -> int:
    """Delete the harness's messages (or all); returns how many others stay. The deletions take effect at QUIT."""
    with _session(target, account) as session:
        messages = _messages(session)
        for number, ours in messages:
            if ours or everything:
                resp = session.command(f"DELE {number}")
                if not resp.ok:
                    raise SessionError(f"DELE {number} refused: {resp.line}")
        resp = session.quit()
        if not resp.ok:
            raise SessionError(f"QUIT did not commit the deletions: {resp.line}")
    return 0 if everything else sum(1 for _, ours in messages if not ours)


def inspect_account(target: Target, account: Account) -> list[str]:
    """What the account's maildrop holds that the harness did not put there."""
    with _session(target, account) as session:
        foreign = sum(1 for _, ours in _messages(session) if not ours)
    return [f"{foreign} message(s) in INBOX"] if foreign else []


def prepare(target: Target, account: Account) -> AccountState:
    """An empty maildrop: emptied (disposable), or cleared of the harness's own leftovers and checked."""
    try:
        others = _delete(target, account, everything=target.disposable)
        if others:
            raise UnsafeAccount(
                f"account {account.user} holds {others} message(s) the harness did not create; refusing to touch them. "
                "Use empty accounts, or set `disposable: true` in the target file if everything in them may be deleted.")
        with _session(target, account) as session:
            left = session.command("STAT")
        if not left.ok or not left.text.startswith("0 "):
            raise AccountNotEmpty(f"could not empty account {account.user} before the test: STAT says {left.line}")
    except SessionError as exc:
        raise AccountNotEmpty(f"could not prepare account {account.user} over POP3: {exc}") from None
    return AccountState(account, {"INBOX"})


def store(target: Target, account: Account, messages: list[bytes]) -> None:
    """Deliver the test's set-up mail; each arrives in INBOX, in this order."""
    if target.delivery is None:
        raise ConfigError("a POP3-only target needs lmtp: or smtp: to deliver the tests' mail")
    for data in messages:
        deliver(target.delivery, recipient(account.user), data, timeout=target.timeout, ca_file=target.ca_file)


def cleanup(target: Target, state: AccountState) -> list[str]:
    """Delete what the test left: the harness's messages (everything on a disposable account)."""
    try:
        others = _delete(target, state.account, everything=target.disposable)
    except SessionError as exc:
        raise AccountNotEmpty(f"could not clean up account {state.account.user} over POP3: {exc}") from None
    return [f"left {others} message(s) of {state.account.user} in INBOX: the harness did not create them"] if others else []
