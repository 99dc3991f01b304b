"""Checkpoints: every N seconds the sessions of a mailbox quiesce, each runs NOOP, and their views must agree.

All sessions of a mailbox live in one process (gevent greenlets), so the last one to arrive at the
barrier drives the others' connections itself while they wait: NOOP in each, then FETCH 1:* (UID FLAGS)
in each, then compare count, UID map and flags (\\Recent aside), and each owner's keyword with what it
stored. Background writers (LMTP delivery, a POP3 QUIT) hold the barrier off while they write.

After the comparison, an atomic-flags trial: two sessions send +FLAGS \\Seen and +FLAGS \\Draft on
one message at the same moment; a third look must find both (imaptest's "Atomic flags").
"""

from __future__ import annotations

import time

import gevent
from gevent.event import Event

BARRIER_WAIT = 15.0  # seconds a session waits for the others before the checkpoint is given up
WRITER_WAIT = 10.0


class Checkpoints:
    def __init__(self, mailbox, interval: float):
        self.mailbox = mailbox
        self.interval = interval
        self.next_at = time.monotonic() + interval
        self.members: set = set()  # StressImap sessions currently selected
        self.arrived: set = set()
        self.active = False
        self.running = False
        self.done = Event()
        self.done.set()
        self.writers = 0
        self.completed = 0
        self.differed = 0
        self.abandoned = 0
        self.atomic_trials = 0
        self.atomic_lost = 0

    # -- sessions ----------------------------------------------------------------------------
    def _wait(self) -> None:
        """Wait for the checkpoint in progress to end; give it up if it never got all its sessions."""
        while self.active and not self.done.wait(BARRIER_WAIT):
            if not self.running:  # still waiting for a session that never came (stuck in a long command)
                self.abandoned += 1
                self._finish()

    def join(self, session) -> None:
        self._wait()
        self.members.add(session)

    def leave(self, session) -> None:
        self.members.discard(session)
        self.arrived.discard(session)
        if self.active and not self.running and self.arrived >= self.members:
            self.abandoned += 1  # the one the others waited for went away: go on without a checkpoint
            self._finish()

    def gate(self, session) -> None:
        """Called by each session before each command: take part in a checkpoint when one is due."""
        if not self.active:
            if self.interval <= 0 or time.monotonic() < self.next_at or len(self.members) < 1:
                return
            self.active = True
            self.done = Event()
            self.arrived = set()
        self.arrived.add(session)
        if not self.running and self.arrived >= self.members:
            self.running = True  # this session drives the others' connections while they wait
            try:
                self._run()
            finally:
                self.running = False
                self._finish()
            return
        self._wait()

    def _finish(self) -> None:
        self.active = False
        self.arrived = set()
        self.next_at = time.monotonic() + self.interval
        self.done.set()

    # -- writers outside the IMAP sessions (LMTP, POP3 QUIT) ----------------------------------
    def writer_enter(self) -> None:
        self._wait()
        self.writers += 1

    def writer_exit(self) -> None:
        self.writers -= 1

    # -- the checkpoint itself ---------------------------------------------------------------
    def _run(self) -> None:
        deadline = time.monotonic() + WRITER_WAIT
        while self.writers > 0 and time.monotonic() < deadline:
            gevent.sleep(0.05)
        if self.writers > 0:
            self.abandoned += 1
            return
        sessions = sorted(self.members, key=lambda s: s.view.label)
        try:
            for s in sessions:
                s.run("NOOP checkpoint", b"NOOP")
            # With CONDSTORE, MODSEQ too (RFC 7162: FETCH MODSEQ enables it for the session).
            condstore = all(s.has(b"CONDSTORE") for s in sessions)
            items = b"(UID FLAGS MODSEQ)" if condstore else b"(UID FLAGS)"
            for s in sessions:
                s.view.needs_sync = False
                if s.view.count:
                    s.run("FETCH checkpoint", b"FETCH 1:%d %s" % (s.view.count, items))
        except Exception:  # noqa: BLE001 - a failed command is already a Locust failure; its session reconnects
            self.abandoned += 1
            for s in sessions:
                s.broken = True
            return
        self.completed += 1
        self._compare(sessions)
        if len(sessions) >= 2:
            self._atomic_trial(sessions)

    def _compare(self, sessions) -> None:
        mb = self.mailbox
        # Sessions that selected under different UIDVALIDITY values hold different UIDs: compare like with like.
        generation = max((s.view.uidvalidity or 0 for s in sessions), default=0)
        sessions = [s for s in sessions if (s.view.uidvalidity or 0) == generation]
        if not sessions:
            return
        base = sessions[0]
        base_uids, base_flags = base.view.snapshot()
        differs = None
        for s in sessions[1:]:
            uids, flags = s.view.snapshot()
            if uids != base_uids:
                differs = (f"{s.view.label} holds {len(uids)} messages, {base.view.label} {len(base_uids)}"
                           if len(uids) != len(base_uids) else
                           f"{s.view.label} and {base.view.label} map sequence numbers to different UIDs "
                           f"(first at {next(i + 1 for i, (a, b) in enumerate(zip(uids, base_uids)) if a != b)})")
                break
            for i, (a, b) in enumerate(zip(flags, base_flags)):
                if a != b and a is not None and b is not None:
                    differs = (f"UID {uids[i]}: {s.view.label} sees FLAGS ({' '.join(sorted(x.decode() for x in a))}), "
                               f"{base.view.label} ({' '.join(sorted(x.decode() for x in b))})")
                    break
            if differs:
                break
            for uid in uids:
                a, b = s.view.modseq.get(uid), base.view.modseq.get(uid)
                if a is not None and b is not None and a != b:
                    differs = f"UID {uid}: {s.view.label} sees MODSEQ {a}, {base.view.label} {b}"
                    break
            if differs:
                break
        if differs:
            self.differed += 1
            mb.violation("checkpoint-differs", differs, base.view)
        # Each owner's keyword as it stored it, in every session's view.
        for s in sessions:
            for kw, truth in mb.owned.items():
                for i, uid in enumerate(s.view.uids):
                    want = truth.get(uid)
                    flags = s.view.flags[i]
                    if want is None or uid is None or flags is None or mb.may_vanish(uid):
                        continue
                    if (kw in flags) != want:
                        mb.violation("keyword-lost", f"checkpoint: UID {uid} keyword {kw.decode()} "
                                     f"{'missing' if want else 'present'} in {s.view.label}, though its owner stored "
                                     f"{'+' if want else '-'}FLAGS", s.view)
                        truth[uid] = kw in flags
                        return

    def _atomic_trial(self, sessions) -> None:
        """A sends +FLAGS \\Seen and B +FLAGS \\Draft on one message at once. Afterwards (NOOP, FETCH) each must
        still see its own flag: one that vanished from its own session's view was overwritten by the other STORE.
        (Seeing the other's flag too is the checkpoint's business: some servers show it late.)"""
        a, b = sessions[0], sessions[1]
        candidates = [u for u in a.view.uids if u is not None and not self.mailbox.may_vanish(u) and u in b.view.uids]
        if not candidates:
            return
        uid = candidates[len(candidates) // 2]
        try:
            a.run("STORE atomic", b"UID STORE %d -FLAGS.SILENT (\\Seen \\Draft)" % uid)
            tag_a = a.send(b"UID STORE %d +FLAGS.SILENT (\\Seen)" % uid)
            tag_b = b.send(b"UID STORE %d +FLAGS.SILENT (\\Draft)" % uid)
            ok_a, _ = a.finish(tag_a)
            ok_b, _ = b.finish(tag_b)
            for s in (a, b):
                s.run("NOOP atomic", b"NOOP")
                s.run("FETCH atomic", b"UID FETCH %d (FLAGS)" % uid)
        except Exception:  # noqa: BLE001
            for s in sessions:
                s.broken = True
            return
        if ok_a != b"OK" or ok_b != b"OK" or self.mailbox.may_vanish(uid):
            return
        views = {}
        for s in (a, b):
            seq = s.view.seq_of(uid)
            views[s] = s.view.flags[seq - 1] if seq else None
        if views[a] is None or views[b] is None:
            return
        self.atomic_trials += 1
        lost = [(s, flag) for s, flag in ((a, b"\\seen"), (b, b"\\draft")) if flag not in views[s]]
        if lost:
            self.atomic_lost += 1
            s, flag = lost[0]
            self.mailbox.violation("atomic-flags-lost", f"UID {uid}: +FLAGS (\\Seen) from {a.view.label} and +FLAGS (\\Draft) "
                                   f"from {b.view.label} at once, both answered OK; afterwards {s.view.label} lacks its own "
                                   f"{flag.decode()}: FLAGS ({' '.join(sorted(f.decode() for f in views[s]))})", s.view)

    def to_dict(self) -> dict:
        return {"completed": self.completed, "differed": self.differed, "abandoned": self.abandoned,
                "atomic_trials": self.atomic_trials, "atomic_lost": self.atomic_lost}
