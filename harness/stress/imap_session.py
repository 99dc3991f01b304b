"""One stress IMAP session: weighted random commands on a shared INBOX, every response fed to the model.

The session rides on the load generator's ImapClient (connect, login, Locust reporting, the watchdog)
and its Connection; it frames responses itself, one at a time, because each must be checked in order
(an EXISTS before the FETCH that names the new message).
"""

from __future__ import annotations

import random
import time
from datetime import date

from harness.load.imap_client import ImapClient, quote
from harness.load.wire import CommandFailed, Step, WireError
from harness.stress.messages import make_message, message_id
from harness.stress.model import MailboxModel, SessionView
from harness.stress.responses import read_response, response_code, tagged_status

CRLF = b"\r\n"
OTHER_FOLDER = "mailharness-stress"
SHARED_FLAGS = (b"\\Flagged", b"\\Answered")  # \Seen and \Draft are the atomic-flags trial's
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
DEFAULT_COMMANDS = {
    "append": 8, "fetch_flags": 10, "fetch_envelope": 6, "fetch_bodystructure": 3, "fetch_section": 4,
    "fetch_partial": 3, "fetch_body": 2, "uid_fetch": 4, "store_keyword": 10, "store_flags": 5, "delete": 4,
    "expunge": 2, "uid_expunge": 2, "search": 6, "uid_search": 3, "copy": 2, "move": 2, "noop": 4, "check": 2, "idle": 3,
}


class StressImap:
    """``step()`` sends one weighted random command; the caller handles checkpoints and reconnects."""

    def __init__(self, client: ImapClient, mailbox: MailboxModel, label: str, index: int, rng: random.Random,
                 options: dict, run_id: str, checking: bool = True):
        self.client = client
        self.mailbox = mailbox
        self.rng = rng
        self.run_id = run_id
        self.options = options
        self.keyword = b"$MhS%d" % index
        self.view = SessionView(mailbox, label, self.keyword)
        self.view.checking = checking
        self.tr = self.view.transcript
        mix = dict(DEFAULT_COMMANDS)
        mix.update(options.get("commands", {}))
        self.mix = {k: float(v) for k, v in mix.items() if v and k in DEFAULT_COMMANDS}
        self.names, self.weights = list(self.mix), list(self.mix.values())
        self.min_messages = int(options.get("min_messages", 10))
        self.max_messages = int(options.get("max_messages", 60))
        self.idle_seconds = float(options.get("idle_seconds", 1.0))
        self.tags = 0

    # -- wire --------------------------------------------------------------------------------
    def send(self, command: bytes) -> bytes:
        self.tags += 1
        tag = b"s%d " % self.tags
        self.client.conn.send(tag + command + CRLF)
        self.tr.sent(tag + command)
        return tag

    def finish(self, tag: bytes, *, continuation: bool = False) -> tuple[bytes, bytes]:
        """Read and apply responses up to the tagged one: (status, rest). With ``continuation``, a "+" ends it too."""
        conn = self.client.conn
        view = self.view
        while True:
            resp = read_response(conn)
            line = resp.line
            self.tr.received(resp.text())
            if line[:2] == b"* ":
                view.apply(resp)
                continue
            if line[:1] == b"+":
                if continuation:
                    return b"+", line
                continue  # IDLE's continuation is read by idle(); anything else is ignored
            return tagged_status(line, tag)

    def run(self, name: str, command: bytes, *, allow_no: bool = False) -> tuple[bytes, bytes]:
        """One command as a Locust request "IMAP <name>"; NO/BAD fail it unless ``allow_no``."""
        words = command.split(b" ", 2)
        verb = (words[0] + b" " + words[1] if words[0].upper() == b"UID" and len(words) > 1 else words[0]).upper().decode()
        self.view.command = verb
        self.view.fetched = {}
        self.view.search = []
        self.mailbox.log.commands += 1
        try:
            with Step(self.client, "IMAP " + name):
                if self.client.conn is None:
                    raise WireError(f"IMAP {name}: not connected")
                status, rest = self.finish(self.send(command))
                if status != b"OK" and not (allow_no and status == b"NO"):
                    raise CommandFailed(f"IMAP {name}: {(status + b' ' + rest)[:300].decode(errors='replace')}")
        finally:
            self.view.command = ""
        return status, rest

    # -- session -----------------------------------------------------------------------------
    def open(self, user: str, password: str) -> None:
        """Connect, log in, learn capabilities, make sure the second folder exists, SELECT INBOX, map it."""
        self.client.connect()
        self.client.login(user, password)
        self.run("CAPABILITY", b"CAPABILITY")
        if self.has(b"NAMESPACE"):
            self.run("NAMESPACE", b"NAMESPACE")
        self.other = quote(self.view.prefix.decode() + OTHER_FOLDER)
        self.run("CREATE", b"CREATE " + self.other, allow_no=True)
        self.view.uids, self.view.flags = [], []
        self.run("SELECT", b"SELECT INBOX")
        self.sync()

    @property
    def can_keywords(self) -> bool:
        return b"\\*" in self.view.permanent

    def has(self, cap: bytes) -> bool:
        return cap in self.view.caps

    def sync(self) -> None:
        """FETCH the UIDs and flags of every slot the session does not know yet."""
        view = self.view
        first = next((i for i, u in enumerate(view.uids) if u is None), None)
        view.needs_sync = False
        if first is not None:
            self.run("FETCH sync", b"FETCH %d:%d (UID FLAGS)" % (first + 1, view.count), allow_no=True)
            self.check_fetched(first + 1, view.count, "FETCH sync")

    # -- picking messages --------------------------------------------------------------------
    def known(self, *, keep_vanishing: bool = False, bound: bool = False) -> list[tuple[int, int]]:
        """(seq, uid) of slots with a known UID, by default only of messages not on their way out;
        ``bound``: only messages whose Message-ID is known (what is deleted must be accounted for)."""
        mb = self.mailbox
        return [(i + 1, u) for i, u in enumerate(self.view.uids)
                if u is not None and (keep_vanishing or not mb.may_vanish(u)) and (not bound or u in mb.uid_msgid)]

    def seq_range(self) -> tuple[int, int]:
        count = self.view.count
        lo = self.rng.randint(1, count)
        return lo, min(count, lo + self.rng.randint(0, 9))

    def range_may_fail(self, lo: int, hi: int) -> bool:
        mb = self.mailbox
        return any(mb.may_vanish(self.view.uid_at(s)) for s in range(lo, hi + 1))

    def check_fetched(self, lo: int, hi: int, what: str) -> None:
        """Every message of lo:hi still standing must have been answered."""
        view, mb = self.view, self.mailbox
        if not view.checking:
            return
        for seq in range(lo, min(hi, view.count) + 1):
            uid = view.uid_at(seq)
            if uid is not None and seq not in self.view.fetched and not mb.may_vanish(uid):
                view.violation("fetch-missing", f"{what}: no FETCH response for {seq} (UID {uid}) of {lo}:{hi}")
                return

    # -- the random step ---------------------------------------------------------------------
    def step(self) -> None:
        view = self.view
        if view.needs_sync:
            self.sync()
            return
        name = self.rng.choices(self.names, self.weights)[0]
        if view.count < self.min_messages:
            name = "append"
        elif view.count >= self.max_messages and name == "append":
            name = self.rng.choice(("delete", "expunge"))
        if view.count == 0 and name != "append":
            name = "noop"
        getattr(self, "c_" + name)()

    # -- commands ----------------------------------------------------------------------------
    def c_append(self) -> None:
        mb, rng = self.mailbox, self.rng
        msgid = message_id(self.run_id, mb.name, mb.next_number()).encode()
        seed = rng.getrandbits(64)
        when = time.time()
        day = date(rng.randint(2001, 2019), rng.randint(1, 12), rng.randint(1, 28))

        def regenerate(seed=seed, msgid=msgid, when=when) -> bytes:
            return make_message(random.Random(seed), msgid.decode(), when)

        data = regenerate()
        mb.created[msgid] = (len(data), regenerate, day.toordinal())
        flags = b" ".join(f for f in SHARED_FLAGS if rng.random() < 0.3)
        stamp = b'"%02d-%s-%d 12:00:00 +0000"' % (day.day, MONTHS[day.month - 1].encode(), day.year)
        head = b"APPEND INBOX (" + flags + b") " + stamp
        self.view.command = "APPEND"
        mb.log.commands += 1
        try:
            with Step(self.client, "IMAP APPEND"):
                if self.has(b"LITERAL+"):
                    tag = self.send(head + b" {%d+}" % len(data) + CRLF + data)
                else:
                    tag = self.send(head + b" {%d}" % len(data))
                    status, rest = self.finish(tag, continuation=True)
                    if status != b"+":
                        raise CommandFailed(f"IMAP APPEND: {(status + b' ' + rest)[:300].decode(errors='replace')}")
                    self.client.conn.send(data + CRLF)
                status, rest = self.finish(tag)
                if status != b"OK":
                    mb.created.pop(msgid, None)
                    raise CommandFailed(f"IMAP APPEND: {(status + b' ' + rest)[:300].decode(errors='replace')}")
        except BaseException:  # a failed command, or the run ending (the greenlet killed) with the APPEND in flight
            if msgid in mb.created:
                mb.uncertain.add(msgid)
            raise
        finally:
            self.view.command = ""
        mb.appended += 1
        code = response_code(rest)
        if code and code[0] == b"APPENDUID":
            parts = code[1].split()
            if len(parts) == 2 and parts[1].isdigit():
                mb.bind(int(parts[1]), msgid, self.view)

    def _fetch(self, name: str, items: bytes, lo: int, hi: int) -> None:
        seqs = b"%d" % lo if lo == hi else b"%d:%d" % (lo, hi)
        status, _ = self.run(name, b"FETCH " + seqs + b" (" + items + b")", allow_no=self.range_may_fail(lo, hi))
        if status == b"OK":
            self.check_fetched(lo, hi, name)

    def c_fetch_flags(self) -> None:
        self._fetch("FETCH flags", b"UID FLAGS", *self.seq_range())

    def c_fetch_envelope(self) -> None:
        self._fetch("FETCH envelope", b"UID ENVELOPE INTERNALDATE RFC822.SIZE", *self.seq_range())

    def c_fetch_bodystructure(self) -> None:
        seq = self.rng.randint(1, self.view.count)
        self._fetch("FETCH bodystructure", b"UID BODYSTRUCTURE", seq, seq)

    def c_fetch_section(self) -> None:
        seq = self.rng.randint(1, self.view.count)
        section = self.rng.choice((b"HEADER", b"1", b"TEXT", b"HEADER.FIELDS (MESSAGE-ID SUBJECT)"))
        self._fetch("FETCH section", b"UID BODY.PEEK[" + section + b"]", seq, seq)

    def c_fetch_partial(self) -> None:
        seq = self.rng.randint(1, self.view.count)
        offset, length = self.rng.randint(0, 2000), self.rng.randint(1, 1500)
        self._fetch("FETCH partial", b"UID RFC822.SIZE BODY.PEEK[]<%d.%d>" % (offset, length), seq, seq)
        items = self.view.fetched.get(seq)
        uid = self.view.uid_at(seq)
        if items and uid is not None and not self.mailbox.may_vanish(uid):
            data, size = items.get(b"BODY[]<%d>" % offset), items.get(b"RFC822.SIZE")
            if isinstance(data, bytes) and isinstance(size, int) and len(data) != max(0, min(length, size - offset)):
                self.view.violation("content-differs", f"UID {uid} BODY[]<{offset}.{length}>: {len(data)} octets "
                                    f"of a {size}-octet message")

    def c_fetch_body(self) -> None:
        seq = self.rng.randint(1, self.view.count)
        self._fetch("FETCH body", b"UID RFC822.SIZE BODY.PEEK[]", seq, seq)

    def c_uid_fetch(self) -> None:
        known = self.known(keep_vanishing=True)
        if not known:
            return self.c_noop()
        a = self.rng.randrange(len(known))
        b = min(len(known) - 1, a + self.rng.randint(0, 5))
        self.run("UID FETCH", b"UID FETCH %d:%d (FLAGS RFC822.SIZE)" % (known[a][1], known[b][1]), allow_no=True)

    def c_store_keyword(self) -> None:
        if not self.can_keywords:
            return self.c_store_flags()
        known = self.known()
        if not known:
            return self.c_noop()
        seq, uid = self.rng.choice(known)
        kw, owned = self.keyword, self.mailbox.owned[self.keyword.lower()]
        add = not owned.get(uid, False) if self.rng.random() < 0.8 else self.rng.random() < 0.5
        silent = self.rng.random() < 0.4
        op = (b"+" if add else b"-") + b"FLAGS" + (b".SILENT" if silent else b"")
        by_uid = self.rng.random() < 0.5
        command = (b"UID STORE %d " % uid if by_uid else b"STORE %d " % seq) + op + b" (" + kw + b")"
        self.view.storing.add(uid)
        owned.pop(uid, None)  # unknown while in flight
        try:
            status, _ = self.run("STORE keyword", command, allow_no=True)
        finally:
            self.view.storing.discard(uid)
        if status != b"OK":
            return  # refused (the message went meanwhile): its keyword is unknown from now on
        owned[uid] = add
        fetched = self.view.fetched
        items = next((i for i in fetched.values() if i.get(b"UID") == uid), None) or (None if by_uid else fetched.get(seq))
        got = items.get(b"FLAGS") if items else None
        if got is not None and (kw.lower() in {f.lower() for f in got}) != add:
            self.view.violation("store-not-applied", f"{command.decode()} answered FLAGS ({b' '.join(got).decode()})")

    def c_store_flags(self) -> None:
        lo, hi = self.seq_range()
        flag = self.rng.choice(SHARED_FLAGS)
        op = self.rng.choice((b"+FLAGS", b"-FLAGS", b"+FLAGS.SILENT", b"-FLAGS.SILENT"))
        self.run("STORE flags", b"STORE %d:%d %s (%s)" % (lo, hi, op, flag), allow_no=self.range_may_fail(lo, hi))

    def c_delete(self) -> None:
        known = self.known(bound=True)
        if not known:
            return self.c_fetch_envelope()
        _, uid = self.rng.choice(known)
        self.mailbox.vanishing_uids.add(uid)  # before sending: another session may expunge it as soon as it is set
        self.mailbox.removals += 1
        self.run("STORE deleted", b"UID STORE %d +FLAGS.SILENT (\\Deleted)" % uid, allow_no=True)

    def c_expunge(self) -> None:
        self.run("EXPUNGE", b"EXPUNGE")

    def c_uid_expunge(self) -> None:
        if not self.has(b"UIDPLUS"):
            return self.c_expunge()
        doomed = [u for u in self.view.uids if u is not None and u in self.mailbox.vanishing_uids]
        if not doomed:
            return self.c_noop()
        self.run("UID EXPUNGE", b"UID EXPUNGE " + b",".join(b"%d" % u for u in doomed[:10]))

    def c_copy(self) -> None:
        lo, hi = self.seq_range()
        self.run("COPY", b"COPY %d:%d %s" % (lo, hi, self.other), allow_no=self.range_may_fail(lo, hi))

    def c_move(self) -> None:
        if not self.has(b"MOVE"):
            return self.c_copy()
        known = self.known(bound=True)
        if not known:
            return self.c_fetch_envelope()
        seq, uid = self.rng.choice(known)
        self.mailbox.vanishing_uids.add(uid)
        self.mailbox.removals += 1
        if self.rng.random() < 0.5:
            self.run("MOVE", b"UID MOVE %d %s" % (uid, self.other), allow_no=True)
        else:
            self.run("MOVE", b"MOVE %d %s" % (seq, self.other), allow_no=True)

    def c_noop(self) -> None:
        self.run("NOOP", b"NOOP")

    def c_check(self) -> None:
        self.run("CHECK", b"CHECK")

    def c_idle(self) -> None:
        if not self.has(b"IDLE"):
            return self.c_noop()
        conn, view = self.client.conn, self.view
        view.command = "IDLE"
        self.mailbox.log.commands += 1
        try:
            with Step(self.client, "IMAP IDLE"):
                tag = self.send(b"IDLE")
                status, rest = self.finish(tag, continuation=True)
                if status != b"+":
                    raise CommandFailed(f"IMAP IDLE: {(status + b' ' + rest)[:300].decode(errors='replace')}")
            deadline = time.monotonic() + self.rng.uniform(0.1, self.idle_seconds)
            while (left := deadline - time.monotonic()) > 0:
                if not self._wait_readable(left):
                    break
                resp = read_response(conn)
                self.tr.received(resp.text())
                if resp.line[:2] == b"* ":
                    view.apply(resp)
            with Step(self.client, "IMAP DONE"):
                conn.send(b"DONE" + CRLF)
                self.tr.sent(b"DONE")
                status, rest = self.finish(tag)
                if status != b"OK":
                    raise CommandFailed(f"IMAP DONE: {(status + b' ' + rest)[:300].decode(errors='replace')}")
        finally:
            view.command = ""

    def _wait_readable(self, timeout: float) -> bool:
        """True when a response has begun to arrive within ``timeout`` (it is read whole afterwards)."""
        conn = self.client.conn
        if conn.pos < len(conn.buf):
            return True
        sock = conn.sock
        sock.settimeout(timeout)
        try:
            conn.fill()
            return True
        except TimeoutError:
            return False
        finally:
            sock.settimeout(conn.read_timeout)

    # -- SEARCH ------------------------------------------------------------------------------
    def c_search(self) -> None:
        view, mb, rng = self.view, self.mailbox, self.rng
        kind = rng.choice(("all", "range", "keyword", "unkeyword", "larger", "smaller", "since", "before"))
        if kind in ("keyword", "unkeyword") and not self.can_keywords:
            kind = "all"
        lo, hi = self.seq_range()
        size = rng.randint(500, 6000)
        day = date(rng.randint(2002, 2018), rng.randint(1, 12), 15)
        key = {
            "all": b"ALL", "range": b"%d:%d" % (lo, hi), "keyword": b"KEYWORD " + self.keyword,
            "unkeyword": b"UNKEYWORD " + self.keyword, "larger": b"LARGER %d" % size, "smaller": b"SMALLER %d" % size,
            "since": b"SINCE %02d-%s-%d" % (day.day, MONTHS[day.month - 1].encode(), day.year),
            "before": b"BEFORE %02d-%s-%d" % (day.day, MONTHS[day.month - 1].encode(), day.year),
        }[kind]
        self.run("SEARCH", b"SEARCH " + key)
        if not view.checking or len(view.search) != 1:
            return
        found, count, _ = view.search[0]
        if any(n > count or n < 1 for n in found):
            view.violation("seq-beyond-exists", f"SEARCH {key.decode()} answered {max(found)}, the session holds {count}")
            return
        if count != view.count:
            return  # the view changed after the SEARCH line (an EXPUNGE in the tagged answer's wake): judge next time
        got = set(found)
        owned = mb.owned[self.keyword.lower()]
        ordinal = day.toordinal()
        for seq in range(1, count + 1):
            uid = view.uid_at(seq)
            if uid is None or mb.may_vanish(uid):
                continue
            if kind == "all":
                want = True
            elif kind == "range":
                want = lo <= seq <= hi
            elif kind in ("keyword", "unkeyword"):
                if uid not in owned and mb.uid_msgid.get(uid) not in mb.created:
                    continue  # mail from before this run may carry the keyword from an earlier run
                want = owned.get(uid, False) == (kind == "keyword")
            elif kind in ("larger", "smaller"):
                msg_size = mb.size_of(uid)
                if msg_size is None:
                    continue
                want = msg_size > size if kind == "larger" else msg_size < size
            else:
                msg_day = mb.day_of(uid)
                if msg_day is None or abs(msg_day - ordinal) <= 1:
                    continue  # time zones: a day either side is not judged
                want = msg_day >= ordinal if kind == "since" else msg_day < ordinal
            if want != (seq in got):
                view.violation("search-mismatch", f"SEARCH {key.decode()}: {seq} (UID {uid}) "
                               f"{'missing' if want else 'listed'}")
                return

    def c_uid_search(self) -> None:
        view, mb = self.view, self.mailbox
        self.run("UID SEARCH", b"UID SEARCH ALL")
        if not view.checking or len(view.search) != 1 or view.search[0][1] != view.count:
            return
        got = set(view.search[0][0])
        for uid in view.uids:
            if uid is not None and not mb.may_vanish(uid) and uid not in got:
                view.violation("search-mismatch", f"UID SEARCH ALL: UID {uid} missing")
                return
        stale = got & view.search[0][2]
        if stale:
            view.violation("search-mismatch", f"UID SEARCH ALL lists UID {min(stale)}, which the session was told is expunged")
