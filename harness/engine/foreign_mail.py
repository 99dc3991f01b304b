"""The guard before a test's destructive commands, on accounts the target does not call disposable.

Set-up refuses an account that holds mail the harness did not create, but mail may still arrive while
a test runs (a delivery racing the set-up gets a low message number: `DELE 1` would take it). So on such
an account every command that removes or changes messages first confirms it hits only messages with the
harness's X-Mailharness-Corpus field:

  POP3  DELE n                        TOP n 0 (RETR n where TOP is refused), or the session's view
  IMAP  STORE, MOVE, COPY (UID too)  FETCH of the set: that field of each message
        EXPUNGE, CLOSE, UID EXPUNGE   FETCH of the messages flagged \\Deleted (in the UID set)
        DELETE, RENAME (its source)   the folder's messages, over the set-up client

If any would not, the command is not sent and the test ends as an error (ForeignMail); the runner then
drops its connections without QUIT, so POP3 commits no mark either. The checks run in the test's own
session (message numbers belong to it) and show in its transcript; untagged responses that arrive with
them are kept for the test's next check. Left open: a message arriving in the milliseconds between the
check and an IMAP command whose set ends in `*`; the EXPUNGE that would remove it is checked again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from harness.engine.login_delays import CREDENTIAL_VERBS
from harness.engine.pop3_view import corpus_name, header_and_body
from harness.errors import HarnessError
from harness.sessions import IMAPSession, POP3Session

HARNESS_FIELD = "X-Mailharness-Corpus"
_SEQUENCE_SET = re.compile(r"[0-9*:,]+")
# Commands on a message set that remove or change messages; COPY too: a copy of the owner's mail in a folder
# the harness made would outlive the clean-up (which leaves folders holding mail it did not create).
_SET_VERBS = {"STORE", "UID STORE", "MOVE", "UID MOVE", "COPY", "UID COPY"}


class ForeignMail(HarnessError):
    """A destructive command would have hit mail the harness did not create: the test is an error."""


def is_ours(header: bytes) -> bool:
    """The rule of set-up and clean-up (pop3_accounts.py, accounts.py): the header carries the harness's field."""
    return corpus_name(header_and_body(header)[0]) is not None


class MailGuard:
    """One test's guard. `account_of(session)`: the user whose mail a session works on; `note`: the transcript."""

    def __init__(self, set_up_client: Callable, account_of: Callable[[str], object], note: Callable[[str, str], None]):
        self._client = set_up_client  # account -> a context-managed IMAPClient (accounts.admin_client)
        self._account_of = account_of
        self._note = note
        # Per session: logged in, and (IMAP) a mailbox selected. Only then can a command hit messages, and
        # only then is a check sent: a server counts bad commands before login and may hang up (Dovecot).
        self._authenticated: dict[str, bool] = {}
        self._selected: dict[str, bool] = {}

    def opened(self, name: str, logged_in: bool) -> None:
        self._authenticated[name], self._selected[name] = logged_in, False

    def answered(self, name: str, line: str, ok: bool) -> None:
        """Follow the session's state from the test's own commands."""
        verb = line.split(" ", 1)[0].upper()
        if ok and verb in CREDENTIAL_VERBS and len(line.split()) > 1:  # a bare POP3 AUTH lists mechanisms
            self._authenticated[name] = True
        elif verb in ("SELECT", "EXAMINE"):
            self._selected[name] = ok  # a failed SELECT leaves no mailbox selected (RFC 3501 §6.3.1)
        elif ok and verb in ("CLOSE", "UNSELECT"):
            self._selected[name] = False

    # -- POP3 --------------------------------------------------------------------------
    def pop3(self, name: str, session: POP3Session, line: str, timeout: float, known: Callable[[int], bool | None],
             has_top: bool) -> None:
        """Before `DELE n`. `known(n)`: True/False if the session's view already says whose message n is;
        `has_top`: CAPA lists TOP (else a refused TOP is tried again as RETR)."""
        words = line.split()
        if len(words) < 2 or words[0].upper() != "DELE" or not words[1].isdigit() or not self._authenticated.get(name):
            return  # marks nothing a server could mistake for a message (a -ERR is the test's business)
        number = int(words[1])
        ours = known(number)
        if ours is None:
            self._note(name, f"harness: the account is not disposable: is message {number} the harness's? (TOP {number} 0)")
            resp = session.command(f"TOP {number} 0", timeout=timeout)
            if not resp.ok and not has_top:  # TOP is optional (RFC 1939 §7)
                resp = session.command(f"RETR {number}", timeout=timeout)
            if not resp.ok or resp.body is None:
                return  # no such message, or already marked: DELE cannot remove anything
            ours = is_ours(resp.body)
        if not ours:
            raise self._refuse(name, line, f"message {number} of the maildrop")

    # -- IMAP --------------------------------------------------------------------------
    def imap(self, name: str, session: IMAPSession, line: str, literals: Sequence[bytes], timeout: float,
             keep: list) -> None:
        """Before a command that removes or changes messages; untagged responses not the guard's go to `keep`."""
        words = line.split()
        uid = bool(words) and words[0].upper() == "UID"
        verb = " ".join(words[:2] if uid else words[:1]).upper()
        args = words[2:] if uid else words[1:]
        if not self._authenticated.get(name) or (verb not in ("DELETE", "RENAME") and not self._selected.get(name)):
            return  # no message to hit: the server refuses the command
        if verb in _SET_VERBS and args and _SEQUENCE_SET.fullmatch(args[0]):
            self._check_set(name, session, line, uid, args[0], False, timeout, keep)
        elif verb in ("EXPUNGE", "CLOSE"):
            self._check_set(name, session, line, False, "1:*", True, timeout, keep)
        elif verb == "UID EXPUNGE" and args and _SEQUENCE_SET.fullmatch(args[0]):
            self._check_set(name, session, line, True, args[0], True, timeout, keep)
        elif verb == "DELETE" and args:
            self._check_folder(name, line, _mailbox(line.split(None, 1)[1].strip(), literals))
        elif verb == "RENAME" and args:  # moves every message of the source (RENAME INBOX: RFC 3501 §6.3.5)
            self._check_folder(name, line, _mailbox(_first_astring(line.split(None, 1)[1].strip()), literals))

    def _check_set(self, name, session, line, uid, msgset, only_deleted, timeout, keep) -> None:
        items = f"{'FLAGS ' if only_deleted else ''}BODY.PEEK[HEADER.FIELDS ({HARNESS_FIELD})]"
        self._note(name, f"harness: the account is not disposable: does `{line}` hit only the harness's messages?")
        resp = session.command(f"{'UID ' if uid else ''}FETCH {msgset} ({items})", timeout=timeout)
        foreign = []
        for response in resp.untagged:
            data = response.fetch()
            header = next((v for k, v in (data or {}).items() if bytes(k).upper().startswith(b"BODY[HEADER.FIELDS")), None)
            if header is None:
                keep.append(response)  # not the guard's: EXISTS, EXPUNGE, a flag change the test may wait for
                continue
            flags = {bytes(f).lower() for f in data.get(b"FLAGS", ())}
            if only_deleted and b"\\deleted" not in flags:
                continue
            if not is_ours(header if isinstance(header, bytes) else b""):
                foreign.append(str(data.get(b"UID") if uid else data.get(b"SEQ")))
        # A refused FETCH (no mailbox selected, a set naming no message) means the command names nothing either.
        if foreign:
            what = "UID" if uid else "message"
            raise self._refuse(name, line, f"{what}{'s' if len(foreign) > 1 else ''} {', '.join(foreign)} of the selected mailbox")

    def _check_folder(self, name: str, line: str, mailbox: bytes | None) -> None:
        if mailbox is None:
            return
        from imapclient.exceptions import IMAPClientError

        self._note(name, f"harness: the account is not disposable: does {mailbox.decode('utf-8', 'replace')} hold only the harness's mail?")
        try:
            with self._client(self._account_of(name)) as client:
                client.folder_encode = False  # the name is already as on the wire (modified UTF-7)
                try:
                    exists = client.select_folder(mailbox.decode("ascii"), readonly=True)[b"EXISTS"]
                except IMAPClientError:
                    return  # no such folder (or not selectable): DELETE removes no message
                except UnicodeError:  # an 8-bit name (UTF8=ACCEPT) the set-up client cannot send
                    self._note(name, "harness: the folder's name is not ASCII; its mail could not be checked")
                    return
                foreign = len(client.search(["NOT", "HEADER", HARNESS_FIELD, ""])) if exists else 0
        except (IMAPClientError, OSError) as exc:
            raise ForeignMail(f"could not confirm that `{line}` hits only the harness's mail ({exc}); "
                              "the command was not sent") from None
        if foreign:
            raise self._refuse(name, line, f"{foreign} message(s) in the folder")

    def _refuse(self, name: str, line: str, what: str) -> ForeignMail:
        account = self._account_of(name)
        text = (f"foreign mail arrived during the test: `{line}` would hit {what} that the harness did not create "
                f"(account {account.user}, which the target does not call disposable). The command was not sent "
                "and nothing was deleted.")
        self._note(name, text)
        return ForeignMail(text)


def _first_astring(arguments: str) -> str:
    """The first of several astring arguments: a quoted string (escapes honoured), a literal marker or an atom."""
    if arguments.startswith('"'):
        i = 1
        while i < len(arguments) and arguments[i] != '"':
            i += 2 if arguments[i] == "\\" else 1
        return arguments[:i + 1]
    return arguments.split(" ", 1)[0]


def _mailbox(argument: str, literals: Sequence[bytes]) -> bytes | None:
    """DELETE's mailbox as on the wire: an atom, a quoted string or the (first) literal."""
    if re.fullmatch(r"~?\{\d+\+?\}", argument):
        return literals[0] if literals else None
    if len(argument) >= 2 and argument.startswith('"') and argument.endswith('"'):
        return re.sub(r'\\(.)', r"\1", argument[1:-1]).encode("utf-8", "surrogateescape")
    return argument.encode("utf-8", "surrogateescape")
