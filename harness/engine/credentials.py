"""Credential tokens in suite commands: SASL responses and APOP digests computed from the test's accounts.

    ${sasl:plain}           base64 of "\\0user\\0password" (RFC 4616 PLAIN, no authorization identity)
    ${sasl:user}            base64 of the user name      (the LOGIN mechanism's first answer)
    ${sasl:password}        base64 of the password       (its second answer)
    ${apop:password}        MD5 hex digest of the POP3 greeting's timestamp and the password (RFC 1939 §7)

A digit names another account of the test (``${sasl:plain2}``); ``-wrong`` uses a wrong password
(``${sasl:plain-wrong}``, ``${apop:password-wrong}``). Every SASL form of a password is a secret: the
transcript and failure messages mask it like the password itself.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from harness.targets.target_file import Account

TOKEN = re.compile(r"\$\{(?P<fn>sasl|apop):(?P<arg>[A-Za-z0-9._+-]*)\}")
_ARG = {
    "sasl": re.compile(r"(?P<what>plain|user|password)(?P<account>[2-4]?)(?P<wrong>-wrong)?"),
    "apop": re.compile(r"(?P<what>password)(?P<account>[2-4]?)(?P<wrong>-wrong)?"),
}
# RFC 1939 §7: the timestamp has the syntax of an RFC 822 msg-id
APOP_TIMESTAMP = re.compile(r"<[^<>\s@]*@[^<>\s]*>")


class CredentialError(ValueError):
    """A token the suite should not have (unknown form, account the test lacks, no timestamp)."""


@dataclass(frozen=True)
class Token:
    fn: str  # "sasl" | "apop"
    what: str  # plain | user | password
    account: int  # 1-based
    wrong: bool
    text: str = ""  # as written: ${sasl:plain2}


def parse(fn: str, arg: str) -> Token:
    m = _ARG[fn].fullmatch(arg)
    if not m:
        forms = "plain, user, password" if fn == "sasl" else "password"
        raise CredentialError(f"${{{fn}:{arg}}}: unknown form (known: {forms}; a digit 2-4 for another account, "
                              "-wrong for a wrong password)")
    if m["what"] == "user" and m["wrong"]:
        raise CredentialError(f"${{{fn}:{arg}}}: -wrong goes with a password (plain, password), not the user name")
    return Token(fn, m["what"], int(m["account"] or 1), bool(m["wrong"]), f"${{{fn}:{arg}}}")


def tokens_in(text: str) -> list[Token]:
    """The credential tokens of a command or continuation line; CredentialError for a malformed one."""
    return [parse(m["fn"], m["arg"]) for m in TOKEN.finditer(text)]


def wrong_password(password: str) -> str:
    return f"wrong-{password}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def sasl_forms(account: Account) -> list[str]:
    """Every SASL encoding of this account's secrets a suite can send (padded and not): to be masked."""
    out = []
    for password in (account.password, wrong_password(account.password)):
        for text in (f"\0{account.user}\0{password}", password):
            encoded = _b64(text)
            out += [encoded, encoded.rstrip("=")]
    return out


def expand(text: str, accounts: list[Account], greeting: str | None = None) -> str:
    """`text` with its credential tokens replaced. `greeting`: the POP3 session's, for APOP."""

    def value(m: re.Match) -> str:
        token = parse(m["fn"], m["arg"])
        if token.account > len(accounts):
            raise CredentialError(f"{m[0]}: the test has only {len(accounts)} account(s)")
        account = accounts[token.account - 1]
        password = wrong_password(account.password) if token.wrong else account.password
        if token.fn == "apop":
            stamp = APOP_TIMESTAMP.search(greeting or "")
            if not stamp:
                raise CredentialError(f"{m[0]}: the greeting has no APOP timestamp <...@...> (RFC 1939 §7): "
                                      f"{greeting!r}")
            return hashlib.md5((stamp[0] + password).encode("utf-8")).hexdigest()
        if token.what == "plain":
            return _b64(f"\0{account.user}\0{password}")
        return _b64(account.user if token.what == "user" else password)

    return TOKEN.sub(value, text)


def greeting_timestamp(greeting: str | None) -> str | None:
    m = APOP_TIMESTAMP.search(greeting or "")
    return m[0] if m else None
