"""Violations of one generator process: counted by kind and over time, the first of each kind kept with
the time-aligned transcripts of the sessions of its mailbox, and each one fired as a Locust request failure.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable

from harness.known_secrets import scrub

# What each kind means; the report prints this beside the counts.
KINDS = {
    "seq-beyond-exists": "a response names a sequence number above the announced message count (RFC 3501 §7.4.1, §2.3.1.2)",
    "exists-decreased": "EXISTS announced fewer messages than the session holds: only EXPUNGE removes a sequence number (RFC 3501 §2.3.1.2, §7.4.1)",
    "expunge-beyond-exists": "EXPUNGE names a sequence number the session does not have (RFC 3501 §7.4.1)",
    "expunge-during-command": "EXPUNGE sent while a FETCH, STORE or SEARCH was in progress (RFC 3501 §7.4.1 MUST NOT)",
    "expunged-undeleted": "a message vanished that no session marked \\Deleted, moved or deleted over POP3 (mail lost)",
    "uid-map-changed": "a sequence number's UID is not the one the session's map holds (RFC 3501 §2.3.1.1)",
    "uid-not-ascending": "UIDs do not ascend with sequence numbers (RFC 3501 §2.3.1.1)",
    "uid-reused": "a UID names a different message than before (RFC 3501 §2.3.1.1: never reused)",
    "uidvalidity-changed": "UIDVALIDITY changed within a session (RFC 3501 §2.3.1.1)",
    "uidvalidity-renewed": "a later session got a new UIDVALIDITY: UIDs did not persist between sessions (RFC 3501 §2.3.1.1 SHOULD)",
    "static-changed": "a message's static data (size, ENVELOPE, BODYSTRUCTURE, INTERNALDATE, section bytes) changed",
    "content-differs": "an appended message comes back with fewer octets or changed bytes (added header fields are allowed) (RFC 3501 §6.3.11)",
    "keyword-not-announced": "FETCH FLAGS names a keyword the session was never told of in FLAGS (RFC 3501 §7.2.6; a warning)",
    "keyword-lost": "a keyword a session stored (and nobody removed) is missing from its FETCH FLAGS",
    "atomic-flags-lost": "two sessions' concurrent +FLAGS on one message, both answered OK: one of the flags is missing afterwards",
    "store-not-applied": "the FETCH answering a non-silent STORE +FLAGS/-FLAGS does not show the change",
    "search-mismatch": "SEARCH results disagree with the model (sequence sets, keywords, sizes, dates)",
    "modseq-decreased": "a message's MODSEQ went down (RFC 7162 §3.1.1: mod-sequences only grow)",
    "checkpoint-differs": "after all sessions of a mailbox quiesced and ran NOOP, their views differ (RFC 3501 §5.2 size updates; "
                          "§2.3.2: concurrent sessions see changes of permanent flags)",
    "mail-duplicated": "one delivered or appended message (Message-ID) appears twice in the mailbox",
    "mail-lost": "a delivered or appended message nobody deleted is gone at the end of the run",
    "pop3-uidl-changed": "a POP3 unique-id names a different message than before, or a message's unique-id changed (RFC 1939 §7)",
    "pop3-uidl-duplicate": "two messages of one POP3 listing share a unique-id (RFC 1939 §7)",
    "pop3-size-mismatch": "RETR sent a different number of octets than LIST announced (RFC 1939 §5)",
    "fetch-missing": "a FETCH left out a message of its sequence set that no one deleted (RFC 3501 §6.4.5)",
    "bad-response": "a response the model could not take apart, or one no RFC defines (\"* 1 EXPUNGED\")",
}

# Kinds that break a SHOULD: warnings, shown and counted, never a failed run. Everything else breaks a MUST.
# FETCH FLAGS naming a keyword no FLAGS response listed: RFC 3501 §7.2.6 says FLAGS lists the flags "applicable
# for this mailbox" but never that the server must send it again when a keyword appears (imaptest counts it as an error).
SHOULD_KINDS = frozenset({"uidvalidity-renewed", "keyword-not-announced"})

TRANSCRIPT_LINES = 40  # per session, in its ring buffer
FIRST_LINES = 80  # of the interleaved transcript kept with the first violation of a kind
BUCKET = 5.0  # seconds per point of the violations-over-time series


class Transcript:
    """The last lines one session sent and received, time-stamped, for a violation's context."""

    __slots__ = ("label", "lines")

    def __init__(self, label: str):
        self.label = label
        self.lines: deque[tuple[float, str, bytes]] = deque(maxlen=TRANSCRIPT_LINES)

    def sent(self, data: bytes) -> None:
        self.lines.append((time.time(), "C", data[:200]))

    def received(self, data: bytes) -> None:
        self.lines.append((time.time(), "S", data[:200]))

    def note(self, text: str) -> None:
        self.lines.append((time.time(), "!", text.encode()[:300]))


def interleave(transcripts: list[Transcript], focus: Transcript | None = None, limit: int = FIRST_LINES) -> list[dict]:
    """The lines of the sessions, time-aligned: all of ``focus``'s, and the others' from its first line on."""
    since = focus.lines[0][0] if focus is not None and focus.lines else 0.0
    rows = [(t, tr.label, d, data) for tr in transcripts if tr is not focus for (t, d, data) in tr.lines if t >= since]
    rows.sort(key=lambda r: r[0])
    rows = rows[-(limit - (len(focus.lines) if focus else 0)):]
    if focus is not None:
        rows += [(t, focus.label, d, data) for (t, d, data) in focus.lines]
        rows.sort(key=lambda r: r[0])
    return [{"t": round(t, 3), "session": label, "dir": d, "line": scrub(data.decode("utf-8", "replace"))}
            for t, label, d, data in rows[-limit:]]


class ViolationLog:
    """This process's violations. ``fire(kind, text)`` reports one to Locust (a request failure named by kind)."""

    def __init__(self, fire: Callable[[str, str], None] | None = None):
        self.fire = fire
        self.started = time.time()
        self.counts: Counter[str] = Counter()
        self.timeline: defaultdict[str, Counter[int]] = defaultdict(Counter)
        self.first: dict[str, dict] = {}
        self.commands = 0  # commands checked (for the report's rate)
        self.pop3_visits = 0  # POP3 sessions that got as far as their listing

    def add(self, kind: str, detail: str, mailbox: str, session: str, transcripts: list[Transcript],
            focus: Transcript | None = None) -> None:
        now = time.time()
        self.counts[kind] += 1
        self.timeline[kind][int((now - self.started) // BUCKET)] += 1
        if kind not in self.first:
            self.first[kind] = {
                "kind": kind, "detail": scrub(detail), "mailbox": mailbox, "session": session, "t": round(now, 3),
                "at_seconds": round(now - self.started, 1),
                "sessions": sorted({tr.label for tr in transcripts}),
                "transcript": interleave(transcripts, focus),
            }
        if self.fire:
            self.fire(kind, f"{session}: {detail}")

    def to_dict(self) -> dict:
        return {
            "started": self.started,
            "counts": dict(self.counts),
            "timeline": {k: {str(b): n for b, n in sorted(v.items())} for k, v in self.timeline.items()},
            "first": self.first,
            "commands": self.commands,
            "pop3_visits": self.pop3_visits,
        }
