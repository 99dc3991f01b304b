"""A POP3 session on a maildrop that IMAP sessions share: UIDL/LIST/TOP/RETR checked, DELE+QUIT or RSET.

Checks: unique-ids unique within a listing and stable across sessions (same id, same Message-ID),
LIST size == the octets RETR sends (RFC 1939 §5: "the exact size"), and messages deleted here are
announced to the IMAP model before QUIT commits them, so their EXPUNGEs are expected.
"""

from __future__ import annotations

import random

from harness.load.pop3_client import Pop3Client
from harness.load.wire import CommandFailed, Step
from harness.stress.model import MailboxModel, _message_id
from harness.stress.violations import Transcript


class StressPop3:
    def __init__(self, client: Pop3Client, mailbox: MailboxModel, label: str, rng: random.Random, checkpoints):
        self.client = client
        self.mailbox = mailbox
        self.label = label
        self.rng = rng
        self.checkpoints = checkpoints
        self.tr = Transcript(label)
        mailbox.add_transcript(self.tr)

    def _multiline(self, name: str, command: bytes, *, allow_err: bool = False) -> tuple[bytes, list[bytes] | None]:
        """(status line, body lines un-dot-stuffed, CRLF removed); body None for an allowed -ERR."""
        conn = self.client.conn
        with Step(self.client, name):
            conn.send(command + b"\r\n")
            self.tr.sent(command)
            status = conn.read_line()
            self.tr.received(status)
            if not status.startswith(b"+OK"):
                if allow_err and status.startswith(b"-ERR"):
                    return status, None
                raise CommandFailed(f"{name}: {status[:300].decode(errors='replace')}")
            lines = []
            while (line := conn.read_line()) != b".":
                lines.append(line[1:] if line.startswith(b".") else line)
            self.tr.received(b"<%d lines>" % len(lines))
            return status, lines

    def _simple(self, name: str, command: bytes) -> bytes:
        self.tr.sent(command)
        line = self.client.command(name, command)
        self.tr.received(line)
        return line

    def visit(self, user: str, password: str) -> None:
        """One POP3 session from login to QUIT."""
        mb, rng = self.mailbox, self.rng
        client = self.client
        client.connect()
        client.login(user, password)
        self.tr.sent(b"USER/PASS")
        self._simple("POP3 STAT", b"STAT")
        _, uidl_lines = self._multiline("POP3 UIDL", b"UIDL")
        _, list_lines = self._multiline("POP3 LIST", b"LIST")
        uidls = dict(_pairs(uidl_lines))
        sizes = {n: int(v) for n, v in _pairs(list_lines) if v.isdigit()}
        mb.log.pop3_visits += 1
        seen: dict[bytes, int] = {}
        for number, uidl in uidls.items():
            if uidl in seen:
                mb.violation("pop3-uidl-duplicate", f"{self.label}: messages {seen[uidl]} and {number} share unique-id "
                             f"{uidl.decode(errors='replace')}", transcript=self.tr)
            seen[uidl] = number
        numbers = sorted(uidls)
        doomed: list[bytes] = []
        for number in rng.sample(numbers, min(len(numbers), rng.randint(1, 4))):
            # -ERR is allowed: an IMAP session may have expunged the message meanwhile (Dovecot: "Message 2 expunged")
            retr = rng.random() < 0.5
            if retr:
                _, lines = self._multiline("POP3 RETR", b"RETR %d" % number, allow_err=True)
            else:
                _, lines = self._multiline("POP3 TOP", b"TOP %d 0" % number, allow_err=True)
            if lines is None:
                continue
            if retr:
                octets = sum(len(line) + 2 for line in lines)
                if number in sizes and octets != sizes[number]:
                    mb.violation("pop3-size-mismatch", f"{self.label}: LIST {number} said {sizes[number]} octets, "
                                 f"RETR sent {octets}", transcript=self.tr)
            header = b"\r\n".join(lines[: lines.index(b"")] if b"" in lines else lines)
            msgid = _message_id(header + b"\r\n")
            if msgid:
                mb.pop3_bind(uidls[number], msgid, self.tr)
                if msgid in mb.created and rng.random() < 0.25:
                    self._simple("POP3 DELE", b"DELE %d" % number)
                    doomed.append(msgid)
        if doomed and rng.random() < 0.3:
            self._simple("POP3 RSET", b"RSET")
            doomed = []
        self.checkpoints.writer_enter()
        try:
            if doomed:
                mb.vanishing_msgids.update(doomed)  # before QUIT commits them: IMAP sessions may see EXPUNGE at once
                mb.removals += len(doomed)
                mb.pop3_deleted = True
            self.tr.sent(b"QUIT")
            client.quit()
        finally:
            self.checkpoints.writer_exit()


def _pairs(lines: list[bytes]):
    for line in lines:
        parts = line.split(b" ", 1)
        if len(parts) == 2 and parts[0].isdigit():
            yield int(parts[0]), parts[1].strip()
