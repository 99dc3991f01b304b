"""Which accounts a test uses, and leaving them as the test found them.

Isolation: xdist worker k of n only ever uses accounts whose index is k mod n, so
concurrently running tests never share an account. Within a worker, tests take
accounts round-robin, so an account is reused only after the others.

Safety: the harness never destroys mail it did not create. Every message it
stores carries an ``X-Mailharness-Corpus`` header. On an account the target
calls disposable, the harness may wipe everything; on any other account it
refuses to start unless the account is empty, and afterwards removes only
messages with that header and folders that did not exist before the test.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from harness.errors import HarnessError, UnsafeAccount
from harness.targets.target_file import Account, Target

HARNESS_HEADER = "X-Mailharness-Corpus"
SPECIAL_USE = {b"\\Sent", b"\\Drafts", b"\\Trash", b"\\Junk", b"\\Archive", b"\\All", b"\\Flagged"}


class NotEnoughAccounts(Exception):
    pass


class AccountNotEmpty(HarnessError):
    """A disposable account could not be emptied: the test cannot start from a known state."""


class AccountPool:
    def __init__(self, accounts: list[Account], worker_index: int = 0, worker_count: int = 1):
        self.accounts = accounts[worker_index::worker_count]
        self._cursor = 0

    def take(self, n: int) -> list[Account]:
        if n > len(self.accounts):
            raise NotEnoughAccounts(
                f"the test needs {n} accounts; this worker has {len(self.accounts)} "
                f"(give more accounts in the target file or run fewer workers)"
            )
        picked = [self.accounts[(self._cursor + i) % len(self.accounts)] for i in range(n)]
        self._cursor = (self._cursor + n) % len(self.accounts)
        return picked


def admin_client(target: Target, account: Account, timeout: float = 10.0) -> IMAPClient:
    """A plain IMAPClient for setup and clean-up; not part of any transcript."""
    ep = target.imap
    context = None
    if ep.tls or ep.starttls:
        context = ssl.create_default_context(cafile=target.ca_file)
        if not ep.tls_verify:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    client = IMAPClient(ep.host, ep.port, ssl=ep.tls, ssl_context=context, timeout=timeout)
    if ep.starttls:
        client.starttls(context)
    client.login(account.user, account.password)
    return client


def _is_baseline(flags, name: str) -> bool:
    """INBOX and special-use folders exist on a fresh account; never delete them."""
    return name.upper() == "INBOX" or bool(SPECIAL_USE & set(flags))


@dataclass
class AccountState:
    account: Account
    folders: set[str] = field(default_factory=set)  # folders that existed before the test


def _folders(client: IMAPClient) -> list[tuple[tuple, str, str]]:
    return [(flags, delim.decode() if isinstance(delim, bytes) else delim, name) for flags, delim, name in client.list_folders()]


def _message_counts(client: IMAPClient, folders) -> dict[str, int]:
    counts = {}
    for flags, _, name in folders:
        if b"\\Noselect" in flags or b"\\NonExistent" in flags:
            continue
        counts[name] = client.folder_status(name, ["MESSAGES"])[b"MESSAGES"]
    return counts


def inspect_account(target: Target, account: Account) -> list[str]:
    """What the account holds beyond a fresh account's empty INBOX and special-use folders."""
    with admin_client(target, account) as client:
        folders = _folders(client)
        found = [f"{count} message(s) in {name}" for name, count in _message_counts(client, folders).items() if count]
        found += [f"folder {name}" for flags, _, name in folders if not _is_baseline(flags, name)]
        return found


def prepare(target: Target, account: Account) -> AccountState:
    """Make the account empty (disposable) or check that it is (otherwise); remember its folders."""
    with admin_client(target, account) as client:
        folders = _folders(client)
        counts = _message_counts(client, folders)
        extra = [name for flags, _, name in folders if not _is_baseline(flags, name)]
        if any(counts.values()) or extra:
            if not target.disposable:
                held = [f"{c} message(s) in {n}" for n, c in counts.items() if c] + [f"folder {n}" for n in extra]
                raise UnsafeAccount(
                    f"account {account.user} holds mail the harness did not create ({', '.join(held[:5])}); "
                    "refusing to touch it. Use empty accounts, or set `disposable: true` in the target file "
                    "if everything in these accounts may be deleted."
                )
            _wipe(client, folders, counts)
            folders = _folders(client)
            left = {n: c for n, c in _message_counts(client, folders).items() if c}
            extra = [name for flags, _, name in folders if not _is_baseline(flags, name)]
            if left or extra:  # the server acknowledged EXPUNGE/DELETE but kept things
                held = [f"{c} message(s) in {n}" for n, c in left.items()] + [f"folder {n}" for n in extra]
                raise AccountNotEmpty(f"could not empty account {account.user} before the test: the server still shows {', '.join(held[:5])}")
        return AccountState(account, {name for _, _, name in folders})


def _wipe(client: IMAPClient, folders, counts: dict[str, int]) -> None:
    for flags, delim, name in sorted(folders, key=lambda f: -f[2].count(f[1] or "/")):
        if _is_baseline(flags, name):
            if counts.get(name):
                client.select_folder(name)
                client.delete_messages(client.search("ALL"), silent=True)
                client.expunge()
                client.close_folder()
        else:
            try:
                client.delete_folder(name)
            except IMAPClientError:
                pass  # a \Noselect parent vanishes with its last child on most servers
    for _, _, name in client.list_sub_folders():
        if not any(name == f[2] for f in folders if _is_baseline(f[0], f[2])):
            try:
                client.unsubscribe_folder(name)
            except IMAPClientError:
                pass


def cleanup(target: Target, state: AccountState) -> list[str]:
    """Remove what the test created. Returns notes on anything left alone."""
    notes = []
    with admin_client(target, state.account) as client:
        folders = _folders(client)
        if target.disposable:
            _wipe(client, folders, _message_counts(client, folders))
            return notes
        uidplus = client.has_capability("UIDPLUS")
        for flags, delim, name in sorted(folders, key=lambda f: -f[2].count(f[1] or "/")):
            if b"\\Noselect" in flags:
                continue
            client.select_folder(name)
            mine = client.search(["HEADER", HARNESS_HEADER, ""])
            if mine:
                client.delete_messages(mine, silent=True)
                client.uid_expunge(mine) if uidplus else client.expunge()
            left = client.search("ALL")
            client.close_folder()
            if name not in state.folders:
                if left:
                    notes.append(f"left folder {name} of {state.account.user}: it holds {len(left)} message(s) the harness did not create")
                else:
                    client.delete_folder(name)
        for _, _, name in client.list_sub_folders():
            if name not in state.folders:
                try:
                    client.unsubscribe_folder(name)
                except IMAPClientError:
                    pass
    return notes
