"""The state tracker: what a mailbox and each session's view of it may look like, checked per response.

Only what the RFCs require is a violation, and only where concurrency cannot explain it:
- a sequence number above the session's announced count, an EXPUNGE beyond it, an EXISTS that shrinks;
- a slot's UID other than the session's map holds, UIDs not ascending, a UID naming a second message;
- EXPUNGE during a (non-UID) FETCH, STORE or SEARCH (RFC 3501 §7.4.1);
- a message vanishing that no session marked \\Deleted, moved, or deleted over POP3;
- static data of a UID changing (size, ENVELOPE, BODYSTRUCTURE, INTERNALDATE, section bytes), or differing
  from the bytes appended;
- FETCH FLAGS naming a keyword the session was never told of (RFC 3501 §7.2.6);
- a keyword its owner stored missing from the owner's own FETCH FLAGS. Each session owns one keyword that
  only it changes, so its state is known exactly; another session's view may lag (servers differ on when
  they show other sessions' changes), so those are compared only at checkpoints, after NOOP.
Messages that may be gone (\\Deleted set, moved, POP3-deleted) are never held to anything: servers legally
differ in what they answer for them (imaptest's "Expunge fetch"/"Expunge store" categories).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import Counter, defaultdict
from datetime import datetime

from harness.stress.messages import header_of
from harness.stress.responses import Response, ResponseError, parse_fetch, parse_list, response_code, untagged_kind
from harness.stress.violations import Transcript, ViolationLog

_PERSONAL = re.compile(rb'\* NAMESPACE \(\("([^"]*)"', re.IGNORECASE)
SKIP_ITEMS = frozenset({b"SEQ", b"UID", b"FLAGS", b"MODSEQ"})
GUARDED = frozenset({"FETCH", "STORE", "SEARCH"})  # RFC 3501 §7.4.1: no EXPUNGE while these run (UID forms may)


def _lower(flags) -> frozenset[bytes]:
    return frozenset(f.lower() for f in flags)


class MailboxModel:
    """One mailbox (INBOX of one account) as all sessions of this process see it."""

    def __init__(self, name: str, log: ViolationLog):
        self.name = name
        self.log = log
        self.uidvalidity: int | None = None
        self.uid_msgid: dict[int, bytes] = {}
        self.msgid_uid: dict[bytes, int] = {}
        self.static: dict[int, dict] = {}
        # Mail this run put there: Message-ID -> (size or None for delivered mail, regenerate(), internal day or None)
        self.created: dict[bytes, tuple] = {}
        self.uncertain: set[bytes] = set()  # sent, but the answer never came (timeout, drop)
        self.vanishing_uids: set[int] = set()  # \\Deleted set or MOVE sent: may be expunged any time now
        self.vanishing_msgids: set[bytes] = set()  # POP3 DELE + QUIT
        self.pop3_deleted = False
        self.gone: set[int] = set()  # an EXPUNGE for it was seen
        self.owned: dict[bytes, dict[int, bool]] = defaultdict(dict)  # keyword -> uid -> set by its owner?
        self.recent: dict[int, set[str]] = defaultdict(set)  # uid -> sessions that saw \\Recent on it
        self.pop3_uidl: dict[bytes, bytes] = {}  # POP3 unique-id -> Message-ID
        self.pop3_msgid: dict[bytes, bytes] = {}  # Message-ID -> POP3 unique-id
        self.sessions: list = []  # every session's transcript so far (bounded), for violation context
        self.transcripts: list[Transcript] = []
        self.counter = 0
        self.delivered = 0
        self.appended = 0
        self.counts: Counter[str] = Counter()  # violations in this mailbox, by kind
        self.degraded = False  # UIDVALIDITY was renewed: UIDs no longer name one message across sessions
        self.added_octets = 0  # appended messages the server reports bigger (it added header fields: legal)
        self.removals = 0  # \Deleted stores, MOVEs and POP3 DELEs sent: an upper bound of the messages removed

    # -- violations --------------------------------------------------------------------------
    def violation(self, kind: str, detail: str, session: SessionView | None = None,
                  transcript: Transcript | None = None) -> None:
        transcript = session.transcript if session else transcript
        label = transcript.label if transcript else f"{self.name} model"
        if transcript:
            transcript.note(f"VIOLATION {kind}: {detail}")
        self.counts[kind] += 1
        self.log.add(kind, detail, self.name, label, self.transcripts[-12:], transcript)

    def add_transcript(self, transcript: Transcript) -> None:
        self.transcripts.append(transcript)
        if len(self.transcripts) > 24:
            del self.transcripts[0]

    # -- what may be gone --------------------------------------------------------------------
    def may_vanish(self, uid: int | None) -> bool:
        if uid is None or self.degraded:
            return True
        if uid in self.vanishing_uids or uid in self.gone:
            return True
        msgid = self.uid_msgid.get(uid)
        if msgid is None:
            return self.pop3_deleted
        return msgid in self.vanishing_msgids

    def expunged(self, uid: int, session: SessionView) -> None:
        if not self.may_vanish(uid):
            self.violation("expunged-undeleted", f"UID {uid} ({self.uid_msgid.get(uid, b'?').decode(errors='replace')}) "
                           "was expunged, but no session set \\Deleted on it, moved it or deleted it over POP3", session)
        self.gone.add(uid)
        msgid = self.uid_msgid.get(uid)
        if msgid is not None and msgid in self.created and msgid not in self.vanishing_msgids:
            self.vanishing_msgids.add(msgid)

    # -- identity and static data ------------------------------------------------------------
    def check_uidvalidity(self, value: int, session: SessionView) -> None:
        """Within a session UIDVALIDITY cannot change; between sessions it may (RFC 3501 §2.3.1.1: UIDs SHOULD
        persist, and MUST come with a new UIDVALIDITY when they do not). From a renewal on, UIDs of two
        generations are in use at once: the checks that key on a UID across sessions stop for this mailbox."""
        if session.uidvalidity is not None and value != session.uidvalidity:
            self.violation("uidvalidity-changed", f"UIDVALIDITY {value} within the session, was {session.uidvalidity}", session)
        session.uidvalidity = value
        if self.uidvalidity is None:
            self.uidvalidity = value
        elif value != self.uidvalidity:
            self.violation("uidvalidity-renewed", f"a new session got UIDVALIDITY {value}, earlier ones {self.uidvalidity}: "
                           "UIDs did not persist; checks across sessions by UID stop for this mailbox", session)
            self.uidvalidity = value
            self.degraded = True

    def bind(self, uid: int, msgid: bytes, session: SessionView | None) -> None:
        if self.degraded:
            return
        old = self.uid_msgid.get(uid)
        if old is not None:
            if old != msgid:
                self.violation("uid-reused", f"UID {uid} is {msgid.decode(errors='replace')}, was {old.decode(errors='replace')}", session)
                self.uid_msgid[uid] = msgid
            return
        self.uid_msgid[uid] = msgid
        other = self.msgid_uid.get(msgid)
        if other is not None and other != uid:
            if msgid in self.created:
                self.violation("mail-duplicated", f"{msgid.decode(errors='replace')} is UID {uid} and UID {other}", session)
        else:
            self.msgid_uid[msgid] = uid

    def on_static(self, uid: int, items: dict, session: SessionView) -> None:
        if self.degraded or uid in self.vanishing_uids or uid in self.gone or self.uid_msgid.get(uid) in self.vanishing_msgids:
            return  # an expunged message may answer with anything cached, or nothing
        msgid = None
        env = items.get(b"ENVELOPE")
        if env is not None and getattr(env, "message_id", None):
            msgid = env.message_id
        stored = self.static.setdefault(uid, {})
        for key, value in items.items():
            if key in SKIP_ITEMS:
                continue
            if key.startswith(b"BODY[HEADER.FIELDS") and isinstance(value, bytes) and msgid is None:
                msgid = _message_id(value)
            if isinstance(value, bytes):
                if b"<" in key:
                    key = key + b"/%d" % len(value)
                canon = (len(value), hash(value))
            else:
                canon = _canonical(value)
            prev = stored.get(key)
            if prev is None:
                stored[key] = canon
            elif prev != canon:
                self.violation("static-changed", f"UID {uid} {key.decode()} changed: was {_show(prev)}, now {_show(canon)}", session)
                stored[key] = canon
        if msgid:
            self.bind(uid, msgid, session)
        msgid = msgid or self.uid_msgid.get(uid)
        if msgid is not None and msgid in self.created:
            self._against_created(uid, msgid, items, session)

    def _against_created(self, uid: int, msgid: bytes, items: dict, session: SessionView) -> None:
        """The appended bytes, as the server reports them. A server may add header fields (Received:, Status:,
        X-UID: ...), so a bigger message with every appended header line and the same body is legal; fewer
        octets, or a body that differs, is not."""
        size, regenerate, _day = self.created[msgid]
        if size is None:
            return  # delivered: the server adds trace headers
        got = items.get(b"RFC822.SIZE")
        if isinstance(got, int) and got < size:
            self.violation("content-differs", f"UID {uid} RFC822.SIZE {got}, but {size} octets were appended", session)
        elif isinstance(got, int) and got > size:
            self.added_octets += 1
        bodies = [(k, v) for k, v in items.items() if isinstance(v, bytes) and k.startswith(b"BODY[")
                  and (k.startswith(b"BODY[]") or k in (b"BODY[HEADER]", b"BODY[TEXT]"))]
        if not bodies:
            return
        data = regenerate()
        reported = self.static.get(uid, {}).get(b"RFC822.SIZE")
        for key, value in bodies:
            if key == b"BODY[HEADER]":
                ok = value == header_of(data) or _headers_kept(header_of(data), value)
            elif key == b"BODY[TEXT]":
                ok = value == data[len(header_of(data)):]  # the body: header fields a server adds do not touch it
            elif key.startswith(b"BODY[]<"):
                if reported != size:
                    continue  # offsets shift with added header fields: judged only on an unchanged message
                offset = int(key[7:].split(b">")[0])
                ok = value == data[offset : offset + len(value)]
            else:
                ok = value == data or (_headers_kept(header_of(data), header_of(value))
                                       and value[len(header_of(value)):] == data[len(header_of(data)):])
            if not ok:
                self.violation("content-differs", f"UID {uid} {key.decode()}: {len(value)} octets that differ from the "
                               f"{len(data)} appended", session)

    def size_of(self, uid: int) -> int | None:
        """RFC822.SIZE as the server reported it (SEARCH LARGER/SMALLER go by the server's size, which may
        count header fields it added)."""
        value = self.static.get(uid, {}).get(b"RFC822.SIZE")
        return value if isinstance(value, int) else None

    def day_of(self, uid: int) -> int | None:
        """The day of INTERNALDATE as the server reported it (a server that ignores APPEND's date-time breaks
        only a SHOULD, RFC 3501 §6.3.11, so SEARCH SINCE/BEFORE go by the reported date)."""
        value = self.static.get(uid, {}).get(b"INTERNALDATE")
        if not isinstance(value, str):
            return None
        try:
            return datetime.fromisoformat(value).date().toordinal()
        except ValueError:
            return None

    # -- POP3 --------------------------------------------------------------------------------
    def pop3_bind(self, uidl: bytes, msgid: bytes, transcript: Transcript) -> None:
        old = self.pop3_uidl.get(uidl)
        if old is not None and old != msgid:
            self.violation("pop3-uidl-changed", f"unique-id {uidl.decode(errors='replace')} is {msgid.decode(errors='replace')}, "
                           f"was {old.decode(errors='replace')}", None, transcript)
        old_uidl = self.pop3_msgid.get(msgid)
        if old_uidl is not None and old_uidl != uidl and msgid in self.created:
            self.violation("pop3-uidl-changed", f"{msgid.decode(errors='replace')} has unique-id {uidl.decode(errors='replace')}, "
                           f"was {old_uidl.decode(errors='replace')}", None, transcript)
        self.pop3_uidl[uidl] = msgid
        self.pop3_msgid.setdefault(msgid, uidl)

    def next_number(self) -> int:
        self.counter += 1
        return self.counter


def _message_id(header: bytes) -> bytes | None:
    for line in header.split(b"\r\n"):
        if line[:11].lower() == b"message-id:":
            return line[11:].strip() or None
    return None


def _canonical(value):
    """A comparable form of a parsed FETCH item (imapclient's Envelope, BodyData, datetimes with offsets)."""
    if isinstance(value, (bytes, int, str, type(None))):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (tuple, list)):
        return tuple(_canonical(v) for v in value)
    if dataclasses.is_dataclass(value):
        return tuple(_canonical(getattr(value, f.name)) for f in dataclasses.fields(value))
    return repr(value)


def _headers_kept(appended: bytes, served: bytes) -> bool:
    """Every header line appended is still there (the server may have added its own)."""
    have = set(served.split(b"\r\n"))
    return all(line in have for line in appended.split(b"\r\n") if line)


def _show(canon) -> str:
    if isinstance(canon, tuple) and len(canon) == 2 and isinstance(canon[0], int):
        return f"{canon[0]} octets"
    return str(canon)[:120]


class SessionView:
    """One IMAP session's view of its selected mailbox: the sequence -> UID map, flags, announced keywords."""

    def __init__(self, mailbox: MailboxModel, label: str, keyword: bytes | None):
        self.mailbox = mailbox
        self.label = label
        self.keyword = keyword.lower() if keyword else None
        self.transcript = Transcript(label)
        mailbox.add_transcript(self.transcript)
        self.uids: list[int | None] = []
        self.flags: list[frozenset | None] = []
        self.announced: set[bytes] = set()
        self.warned_keywords: set[bytes] = set()
        self.permanent: set[bytes] = set()
        self.expunged: set[int] = set()
        self.command = ""  # the command in progress ("FETCH", "UID STORE", ...)
        self.uidvalidity: int | None = None
        self.modseq: dict[int, int] = {}  # UID -> last MODSEQ seen (CONDSTORE, once a checkpoint enabled it)
        self.storing: set[int] = set()  # UIDs of this session's own keyword STORE in flight
        self.search: list[tuple] = []  # results of * SEARCH lines: (numbers, count then, UIDs known expunged then)
        self.checking = True
        self.caps: set[bytes] = set()
        self.prefix = b""  # the personal namespace's prefix ("INBOX." on Cyrus): where our folders go
        self.fetched: dict[int, dict] = {}  # seq -> items of FETCH responses during the current command
        self.needs_sync = True  # unknown UIDs: the next command should be FETCH n:* (UID FLAGS)

    @property
    def count(self) -> int:
        return len(self.uids)

    def violation(self, kind: str, detail: str) -> None:
        self.mailbox.violation(kind, detail, self)

    def resync(self) -> None:
        """After a violation that breaks the map: forget it and let the next FETCH 1:* rebuild it."""
        self.uids = [None] * len(self.uids)
        self.flags = [None] * len(self.flags)
        self.needs_sync = True

    # -- untagged responses ------------------------------------------------------------------
    def apply(self, resp: Response) -> None:
        number, word = untagged_kind(resp.line)
        if word == b"FETCH":
            if not self.checking:
                return
            try:
                seq, items = parse_fetch(resp)
            except ResponseError as exc:
                self.violation("bad-response", str(exc))
                return
            self.on_fetch(seq, items)
        elif word == b"EXISTS":
            self.on_exists(number)
        elif word == b"EXPUNGE":
            self.on_expunge(number)
        elif word == b"SEARCH":
            self.search.append(([int(w) for w in resp.line.split()[2:] if w.isdigit()], len(self.uids), frozenset(self.expunged)))
        elif word == b"NAMESPACE":
            m = _PERSONAL.match(resp.line)
            self.prefix = m.group(1) if m else b""
        elif word == b"CAPABILITY":
            self.caps = set(resp.line.upper().split()[2:])
        elif word == b"FLAGS":
            self.announced = _lower(parse_list(resp.line))
        elif number is not None and word not in (b"RECENT",):
            self.violation("bad-response", f"unknown message data {resp.line[:80].decode(errors='replace')!r}: RFC 3501 §7.4 "
                           "defines only EXPUNGE and FETCH (and §7.3 EXISTS, RECENT) after a number")
        elif word in (b"OK", b"NO", b"BAD"):
            code = response_code(resp.line)
            if code and code[0] == b"UIDVALIDITY" and code[1].isdigit():
                self.mailbox.check_uidvalidity(int(code[1]), self)
            elif code and code[0] == b"PERMANENTFLAGS":
                self.permanent = set(_lower(parse_list(b"(" + code[1] + b")")))

    def on_exists(self, n: int) -> None:
        if n < len(self.uids):
            if self.checking:
                self.violation("exists-decreased", f"* {n} EXISTS, but the session holds {len(self.uids)} messages")
            del self.uids[n:], self.flags[n:]
            self.resync()
        elif n > len(self.uids):
            grow = n - len(self.uids)
            self.uids += [None] * grow
            self.flags += [None] * grow
            self.needs_sync = True

    def on_expunge(self, n: int) -> None:
        if self.checking and self.command in GUARDED:
            self.violation("expunge-during-command", f"* {n} EXPUNGE during {self.command}")
        if not 1 <= n <= len(self.uids):
            if self.checking:
                self.violation("expunge-beyond-exists", f"* {n} EXPUNGE, but the session holds {len(self.uids)} messages")
            return
        uid = self.uids.pop(n - 1)
        self.flags.pop(n - 1)
        if uid is not None and self.checking:
            self.expunged.add(uid)
            self.mailbox.expunged(uid, self)

    def on_fetch(self, seq: int, items: dict) -> None:
        if not 1 <= seq <= len(self.uids):
            self.violation("seq-beyond-exists", f"* {seq} FETCH, but the session holds {len(self.uids)} messages")
            return
        slot = seq - 1
        self.fetched[seq] = items
        uid = items.get(b"UID")
        known = self.uids[slot]
        if uid is not None:
            if known is None:
                prev = next((u for u in reversed(self.uids[:slot]) if u is not None), None)
                after = next((u for u in self.uids[slot + 1 :] if u is not None), None)
                if (prev is not None and uid <= prev) or (after is not None and uid >= after):
                    self.violation("uid-not-ascending", f"* {seq} FETCH UID {uid} lies between UIDs {prev} and {after}")
                    self.resync()
                    return
                if uid in self.expunged:
                    self.violation("uid-reused", f"* {seq} FETCH UID {uid}, which the session was told is expunged")
                self.uids[slot] = uid
            elif known != uid:
                self.violation("uid-map-changed", f"* {seq} FETCH UID {uid}, but sequence {seq} is UID {known}")
                self.resync()
                return
        else:
            uid = known
        flags = items.get(b"FLAGS")
        if flags is not None:
            self.on_flags(slot, uid, flags)
        modseq = items.get(b"MODSEQ")
        if uid is not None and isinstance(modseq, tuple) and modseq and isinstance(modseq[0], int):
            old = self.modseq.get(uid)
            if old is not None and modseq[0] < old:
                self.violation("modseq-decreased", f"UID {uid} MODSEQ {modseq[0]}, was {old} (RFC 7162 §3.1.1)")
            self.modseq[uid] = modseq[0]
        if uid is not None and any(k not in SKIP_ITEMS for k in items):
            self.mailbox.on_static(uid, items, self)

    def on_flags(self, slot: int, uid: int | None, flags) -> None:
        fl = _lower(flags)
        for f in fl:
            if f[:1] != b"\\" and f not in self.announced and f not in self.warned_keywords:
                self.warned_keywords.add(f)
                self.violation("keyword-not-announced", f"FETCH FLAGS has {f.decode(errors='replace')}, the last FLAGS "
                               f"response listed ({' '.join(sorted(x.decode(errors='replace') for x in self.announced))})")
        if uid is not None and b"\\recent" in fl:
            self.mailbox.recent[uid].add(self.label)
        if uid is not None and b"\\deleted" in fl:
            self.mailbox.vanishing_uids.add(uid)  # set by someone (an earlier run, another client): EXPUNGE may take it
        self.flags[slot] = fl
        kw = self.keyword
        if kw is not None and uid is not None and uid not in self.storing:
            truth = self.mailbox.owned[kw].get(uid)
            if truth is not None and truth != (kw in fl) and not self.mailbox.may_vanish(uid):
                state = "missing, though this session stored +FLAGS" if truth else "present, though this session stored -FLAGS"
                self.violation("keyword-lost", f"UID {uid}: keyword {kw.decode()} {state} and no one else changes it")
                self.mailbox.owned[kw][uid] = kw in fl

    # -- helpers for the command code ---------------------------------------------------------
    def uid_at(self, seq: int) -> int | None:
        return self.uids[seq - 1] if 1 <= seq <= len(self.uids) else None

    def seq_of(self, uid: int) -> int | None:
        try:
            return self.uids.index(uid) + 1
        except ValueError:
            return None

    def snapshot(self) -> tuple[list, list]:
        return list(self.uids), [f - {b"\\recent"} if f is not None else None for f in self.flags]


def now() -> float:
    return time.time()
