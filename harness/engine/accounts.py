"""Leaving accounts as the test found them (which accounts: account_pool.py).

Safety: the harness never destroys mail it did not create. Every message it
stores carries an ``X-Mailharness-Corpus`` header. On an account the target
calls disposable, the harness may wipe everything; on any other account it
refuses to start unless the account is empty, and afterwards removes only
messages with that header and folders that did not exist before the test.
"""

from __future__ import annotations

import select
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from imapclient.response_parser import parse_response

from harness.engine.client_limits import bound
from harness.errors import ConfigError, HarnessError, UnsafeAccount
from harness.targets.target_file import Account, Target
from harness.tls import endpoint_context

HARNESS_HEADER = "X-Mailharness-Corpus"
EMPTY_WAIT = 2.0  # seconds set-up keeps trying to empty an account whose server refused a DELETE for a moment
SPECIAL_USE = {b"\\sent", b"\\drafts", b"\\trash", b"\\junk", b"\\archive", b"\\all", b"\\flagged"}


def _attributes(flags) -> set[bytes]:
    """Mailbox attributes in lower case: servers spell them \\Noselect or \\NoSelect (RFC 3501 §7.2.2 says
    the case does not matter)."""
    return {(f if isinstance(f, bytes) else str(f).encode()).lower() for f in flags}


class AccountNotEmpty(HarnessError):
    """A disposable account could not be emptied: the test cannot start from a known state."""


def admin_client(target: Target, account: Account, timeout: float = 10.0) -> IMAPClient:
    """A plain IMAPClient for setup and clean-up; not part of any transcript."""
    ep = target.imap
    if ep is None:
        raise ConfigError("the harness stores and removes test mail over IMAP: give the target an imap: endpoint")
    context = endpoint_context(ep, target.ca_file) if ep.tls or ep.starttls else None
    client = IMAPClient(ep.host, ep.port, ssl=ep.tls, ssl_context=context, timeout=timeout)
    if ep.starttls:
        client.starttls(context)
    if (account.user + account.password).isascii():
        client.login(account.user, account.password)
    else:  # imaplib sends LOGIN arguments as ASCII; SASL PLAIN carries UTF-8
        client.plain_login(account.user, account.password)
    bound(client, timeout)  # a server that floods a set-up command cannot hold the test or fill memory
    return client


class AdminConnections:
    """One kept-alive admin connection per account, for a process's set-up and clean-up.

    A login costs more than all the rest of a test's set-up (Dovecot forks a process for it: about 15 ms
    of 25), and each test used to log in three times. Between tests a connection rests in the authenticated
    state with no mailbox selected: it holds no lock and sees no mailbox's changes. One that failed in any
    way is closed, never reused (its state is unknown), and one the server has closed or written to since
    (an idle-timeout BYE, a restart) is replaced before use. POP3-only targets keep none: a POP3 session
    would hold the maildrop's lock."""

    def __init__(self, target: Target):
        self.target = target
        self._clients: dict[str, IMAPClient] = {}

    @contextmanager
    def client(self, account: Account) -> Iterator[IMAPClient]:
        client = self._clients.pop(account.user, None)
        if client is not None and not _resting(client):
            _close(client)
            client = None
        if client is None:
            client = admin_client(self.target, account)
        try:
            yield client
        except BaseException:
            _close(client)
            raise
        if not client.has_capability("UNSELECT"):  # leave_mailbox left INBOX examined: do not keep it open
            _close(client)
            return
        self._clients[account.user] = client

    def holds(self, account: Account) -> bool:
        return account.user in self._clients

    def close(self) -> None:
        while self._clients:
            _, client = self._clients.popitem()
            try:
                client.logout()
            except (IMAPClientError, OSError):
                pass
            _close(client)


def _resting(client: IMAPClient) -> bool:
    """Open, and nothing arrived since its last command (no BYE, no EOF, no stray data)."""
    imap = client._imap
    try:
        sock = imap.sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():  # decrypted bytes select() cannot see
            return False
        readable, _, _ = select.select([sock], [], [], 0)
        return not readable
    except (OSError, ValueError, AttributeError):
        return False


def _close(client: IMAPClient) -> None:
    try:
        client.shutdown()
    except (IMAPClientError, OSError):
        pass


def _is_baseline(flags, name: str) -> bool:
    """INBOX and special-use folders exist on a fresh account; never delete them."""
    return name.upper() == "INBOX" or bool(SPECIAL_USE & _attributes(flags))


@dataclass
class AccountState:
    account: Account
    folders: set[str] = field(default_factory=set)  # folders that existed before the test
    # subscriptions before the test: the owner's may name folders that do not exist (RFC 3501 §6.3.6)
    subscriptions: set[str] = field(default_factory=set)


def _folders(client: IMAPClient) -> list[tuple[tuple, str, str]]:
    return [(flags, delim.decode() if isinstance(delim, bytes) else delim, name) for flags, delim, name in client.list_folders()]


def _message_counts(client: IMAPClient, folders) -> dict[str, int]:
    """Messages per selectable folder, from EXAMINE's EXISTS.

    Set-up and clean-up lean on the fewest, most basic server features (EXAMINE, STORE, EXPUNGE, DELETE)
    rather than STATUS or SEARCH, so a server that gets those wrong fails the tests that check them
    instead of failing every test's set-up."""
    counts = {}
    for flags, _, name in folders:
        if _attributes(flags) & {b"\\noselect", b"\\nonexistent"}:
            continue
        counts[name] = client.select_folder(name, readonly=True)[b"EXISTS"]
    if counts:
        leave_mailbox(client)
    return counts


def inspect_account(target: Target, account: Account) -> list[str]:
    """What the account holds beyond a fresh account's empty INBOX and special-use folders."""
    with admin_client(target, account) as client:
        folders = _folders(client)
        foreign = {}
        for name, count in _message_counts(client, folders).items():
            if count:
                client.select_folder(name, readonly=True)
                foreign[name] = len(client.search(["NOT", "HEADER", HARNESS_HEADER, ""]))
                leave_mailbox(client)
        found = [f"{count} message(s) in {name}" for name, count in foreign.items() if count]
        found += [f"folder {name}" for flags, _, name in folders if not _is_baseline(flags, name)]
        return found


def _with_connection(target: Target, account: Account, connections: AdminConnections | None, work):
    """work(client) over the account's kept-alive connection (a fresh one without `connections`). If a kept
    connection fails it, a fresh one does it again: a connection that sat through a test may see state a
    fresh one would not (Mailutils: EXAMINE "Could not open ...: No such file or directory" after the test
    rewrote the mbox), and a kept connection must never change what set-up or clean-up does. Preparing
    and cleaning up are safe to run twice."""
    if connections is None:
        with admin_client(target, account) as client:
            return work(client)
    kept = connections.holds(account)
    try:
        with connections.client(account) as client:
            return work(client)
    except (IMAPClientError, OSError):
        if not kept:
            raise
    with connections.client(account) as client:  # the failed one was closed: this one is fresh
        return work(client)


def prepare(target: Target, account: Account, connections: AdminConnections | None = None) -> AccountState:
    """Make the account empty (disposable) or check that it is (otherwise); remember its folders."""
    return _with_connection(target, account, connections, lambda client: _prepare(target, account, client))


def _prepare(target: Target, account: Account, client: IMAPClient) -> AccountState:
    if target.disposable:
        return _empty(account, client)
    folders = _folders(client)
    counts = _message_counts(client, folders)
    extra = [name for flags, _, name in folders if not _is_baseline(flags, name)]
    if any(counts.values()):
        # leftovers of an interrupted earlier run are ours to remove; then count what is not
        notes: list[str] = []
        counts = {name: _remove_harness_mail(client, name, notes, account.user) for name in counts}
    if any(counts.values()) or extra:
        held = [f"{c} message(s) in {n}" for n, c in counts.items() if c] + [f"folder {n}" for n in extra]
        raise UnsafeAccount(
            f"account {account.user} holds mail the harness did not create ({', '.join(held[:5])}); "
            "refusing to touch it. Use empty accounts, or set `disposable: true` in the target file "
            "if everything in these accounts may be deleted."
        )
    return AccountState(account, {name for _, _, name in folders}, {name for _, _, name in client.list_sub_folders()})


def _empty(account: Account, client: IMAPClient) -> AccountState:
    """Empty a disposable account in one pass (_empty_once), then look again at what that pass changed: a
    server may acknowledge EXPUNGE or DELETE and keep things."""
    deadline = time.monotonic() + EMPTY_WAIT
    folders = _folders(client)
    while True:
        trusted = _status_trusted(client)
        expunged, deleted = _empty_once(client, folders)
        if trusted and not _status_trusted(client):  # STATUS was caught out during the pass: SELECT them all
            more, deleted_more = _empty_once(client, folders)
            expunged, deleted = sorted(set(expunged + more)), deleted or deleted_more
        if deleted:
            folders = _folders(client)
        left = _counts_after_expunge(client, expunged)
        extra = [name for flags, _, name in folders if not _is_baseline(flags, name)]
        if not (left or extra):
            return AccountState(account, {name for _, _, name in folders})
        if time.monotonic() >= deadline:  # the server acknowledged EXPUNGE/DELETE but kept things
            held = [f"{c} message(s) in {n}" for n, c in left.items()] + [f"folder {n}" for n in extra]
            raise AccountNotEmpty(f"could not empty account {account.user}: the server still shows {', '.join(held[:5])}")
        # Cyrus (delete_mode: delayed) renames a deleted folder to DELETED.<name>.<second>: a folder deleted
        # twice within one second (a test deleted and re-created it, the next set-up deleted it again) is
        # refused until the next second. Try again for a moment before calling the account unusable.
        time.sleep(0.25)


def _empty_once(client: IMAPClient, folders) -> tuple[list[str], bool]:
    """Expunge what each folder a fresh account has (INBOX, special-use) holds, delete every other folder,
    deepest first, and drop every other subscription. Returns the folders expunged and whether any was deleted.

    A folder is SELECTed only when it holds mail: on Dovecot a SELECT costs eight times a STATUS, and most
    special-use folders are empty before most tests. INBOX is always SELECTed, and its STATUS checked against
    that SELECT's EXISTS first: if they ever disagree, this process stops trusting the server's STATUS and
    SELECTs every folder (a stale STATUS would leave a test mail it did not expect)."""
    expunged: list[str] = []
    deleted = selected = False
    # INBOX first: its SELECT checks STATUS before STATUS is trusted for any other folder
    ordered = sorted(folders, key=lambda f: (f[2].upper() != "INBOX", -f[2].count(f[1] or "/")))
    kept = [name for flags, _, name in ordered
            if _is_baseline(flags, name) and not _attributes(flags) & {b"\\noselect", b"\\nonexistent"}]
    said_by_status = _statuses(client, kept) if _status_trusted(client) else {}
    for flags, _delim, name in ordered:
        if not _is_baseline(flags, name):
            _try(client.delete_folder, name)  # a \Noselect parent vanishes with its last child on most servers
            deleted = True
            continue
        if name not in kept:
            continue
        inbox = name.upper() == "INBOX"
        said = said_by_status.get(name) if _status_trusted(client) else None
        if said == 0 and not inbox:
            continue
        selected = True
        exists = client.select_folder(name)[b"EXISTS"]
        if said is not None and said != exists:
            _STATUS_DISAGREED.add(_server_of(client))
        if exists:
            client.delete_messages("1:*", silent=True)  # all UIDs; no SEARCH needed
            client.expunge()
            expunged.append(name)
    if selected:
        leave_mailbox(client)
    for _, _, name in client.list_sub_folders():
        if not any(name == f[2] for f in folders if _is_baseline(f[0], f[2])):
            _try(client.unsubscribe_folder, name)
    return expunged, deleted


# Servers (host, port) whose STATUS MESSAGES once disagreed with SELECT's EXISTS in this process.
_STATUS_DISAGREED: set[tuple[str, int]] = set()


def _server_of(client: IMAPClient) -> tuple[str, int]:
    return (client.host, client.port)


def _status_trusted(client: IMAPClient) -> bool:
    return _server_of(client) not in _STATUS_DISAGREED


def _statuses(client: IMAPClient, names: list[str]) -> dict[str, int]:
    """MESSAGES of each folder by STATUS, the commands sent together and their answers read in order: one
    round trip, not one each (RFC 3501 §5.5: STATUS commands do not affect one another). A folder whose
    STATUS is refused (NO, BAD) or unreadable is missing from the result, and the server's STATUS is then
    no longer trusted."""
    imap = client._imap
    imap.untagged_responses.pop("STATUS", None)
    tags = [(name, imap._command("STATUS", client._normalise_folder(name), "(MESSAGES)")) for name in names]
    found: dict[str, int] = {}
    for name, tag in tags:
        try:
            typ, _ = imap._command_complete("STATUS", tag)
        except imap.abort:
            raise  # the connection is gone or over its limits (client_limits.bound)
        except IMAPClientError:  # BAD: read to its tagged line; the other commands' answers follow in order
            typ = "BAD"
        answers = imap.untagged_responses.pop("STATUS", [])
        try:
            if typ != "OK" or len(answers) != 1:
                raise ValueError(f"STATUS {name}: {typ} with {len(answers)} STATUS line(s)")
            items = parse_response(answers)[-1]  # (b"MESSAGES", n)
            found[name] = int(dict(zip(items[::2], items[1::2]))[b"MESSAGES"])
        except (IMAPClientError, KeyError, ValueError, TypeError, IndexError):
            _STATUS_DISAGREED.add(_server_of(client))  # a server that cannot say: SELECT everything
    return found


def _counts_after_expunge(client: IMAPClient, names: list[str]) -> dict[str, int]:
    """The folders of `names` that still hold mail (none selected): by STATUS while the server's has agreed
    with SELECT, else by EXAMINE (_message_counts)."""
    if _status_trusted(client):
        said = _statuses(client, names)
        if _status_trusted(client):
            return {name: count for name, count in said.items() if count}
    return {name: count for name, count in _message_counts(client, [((), None, name) for name in names]).items() if count}


def store_messages(client: IMAPClient, mailbox: str, messages: list[tuple[bytes, list[str]]]) -> None:
    """Append (data, flags) pairs to `mailbox`, in order: in one command where the server offers MULTIAPPEND
    (RFC 3502; imapclient sends the literals non-synchronizing where it offers LITERAL+, RFC 7888), else
    one APPEND each. A MULTIAPPEND the server refuses stored nothing (RFC 3502 §3: all or none), which is
    checked before the messages are appended one by one."""
    if len(messages) > 1 and client.has_capability("MULTIAPPEND"):
        try:
            client.multiappend(mailbox, [{"msg": data, "flags": flags} for data, flags in messages])
            return
        except IMAPClientError:
            if client.select_folder(mailbox, readonly=True)[b"EXISTS"]:
                raise  # not all-or-none: nothing here is safe to retry
            leave_mailbox(client)
    for data, flags in messages:
        client.append(mailbox, data, flags=flags)


def special_use_folders(client: IMAPClient) -> dict[str, str]:
    """Attribute (\\Sent, ...) -> the folder's name on the wire (modified UTF-7), for this account.

    RFC 6154: LIST "" "*" RETURN (SPECIAL-USE) where the server offers it (SPECIAL-USE or
    LIST-EXTENDED), and the attributes a plain LIST shows in any case."""
    from imapclient.imap_utf7 import encode

    from harness.engine.mailboxes import special_use_attribute

    listings = [client.list_folders()]
    if client.has_capability("SPECIAL-USE") or client.has_capability("LIST-EXTENDED"):
        typ, data = client._imap._simple_command("LIST", '""', '"*"', "RETURN", "(SPECIAL-USE)")
        if typ == "OK":
            typ, data = client._imap._untagged_response(typ, data, "LIST")
            listings.append(client._proc_folder_list(data))
    found: dict[str, str] = {}
    for flags, _delim, name in sorted((f for listing in listings for f in listing), key=lambda f: str(f[2])):
        for flag in flags:
            attr = special_use_attribute(flag.decode() if isinstance(flag, bytes) else str(flag))
            if attr and attr not in found:
                found[attr] = encode(name).decode() if isinstance(name, str) else name.decode()
    return found


def folders_take_children(client: IMAPClient, name: str) -> bool:
    """Create ``name``, see whether LIST calls it \\NoInferiors (an mbox file, say: RFC 3501 §7.2.2), delete it.
    Run in a test's set-up, after prepare(), so its clean-up removes the folder if DELETE did not."""
    client.create_folder(name)
    try:
        flags = [f for f, _, _ in client.list_folders("", name)]
    finally:
        _try(client.delete_folder, name)
    return not any(b"\\noinferiors" in _attributes(f) for f in flags)


def _try(action, *args) -> None:
    try:
        action(*args)
    except IMAPClientError:
        pass


def _has_children(client: IMAPClient, name: str, delim: str | None) -> bool:
    return bool(delim) and bool(client.list_folders(name + delim, "*"))


def _remove_harness_mail(client: IMAPClient, folder: str, notes: list[str], user: str) -> int:
    """Expunge the messages carrying the harness's header; returns how many others the folder holds."""
    client.select_folder(folder)
    mine = client.search(["HEADER", HARNESS_HEADER, ""])
    if mine:
        client.delete_messages(mine, silent=True)
        if client.has_capability("UIDPLUS"):
            client.uid_expunge(mine)
        elif client.search(["DELETED", "NOT", "HEADER", HARNESS_HEADER, ""]):
            # a plain EXPUNGE would take the owner's own \Deleted messages too
            notes.append(f"{user}/{folder}: left {len(mine)} harness message(s) flagged \\Deleted: "
                         "no UIDPLUS and the owner has \\Deleted messages of their own")
        else:
            client.expunge()
    others = len(client.search(["NOT", "HEADER", HARNESS_HEADER, ""]))
    leave_mailbox(client)
    return others


def leave_mailbox(client: IMAPClient) -> None:
    """Deselect without CLOSE: CLOSE would expunge the owner's own \\Deleted messages."""
    if client.has_capability("UNSELECT"):
        client.unselect_folder()
    else:
        client.select_folder("INBOX", readonly=True)


def cleanup(target: Target, state: AccountState, connections: AdminConnections | None = None) -> list[str]:
    """Remove what the test created. Returns notes on anything left alone."""
    return _with_connection(target, state.account, connections, lambda client: _cleanup(target, state, client))


def _cleanup(target: Target, state: AccountState, client: IMAPClient) -> list[str]:
    notes: list[str] = []
    if target.disposable:
        _empty(state.account, client)
        return notes
    folders = _folders(client)
    for flags, delim, name in sorted(folders, key=lambda f: -f[2].count(f[1] or "/")):
        if b"\\noselect" in _attributes(flags):
            if name not in state.folders and not _has_children(client, name, delim):
                _try(client.delete_folder, name)  # a hierarchy parent the test created
            continue
        left = _remove_harness_mail(client, name, notes, state.account.user)
        if name not in state.folders:
            if left:
                notes.append(f"left folder {name} of {state.account.user}: it holds {left} message(s) the harness did not create")
            else:
                client.delete_folder(name)
    for _, _, name in client.list_sub_folders():
        if name not in state.subscriptions:  # only what the test subscribed to
            _try(client.unsubscribe_folder, name)
    return notes
