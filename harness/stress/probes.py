"""Sequential probes for imaptest's compliancy categories that random traffic cannot pin down.

Three sessions A, B, C select a folder of the harness's own (``mailharness-probe``), A appends three
messages, all three sync. Then:
  \\Recent        how many of the three sessions see each new message as \\Recent (exactly one: Yes)
  Expunge fetch  A expunges messages 1 and 2; B, not yet told, fetches 1:
                 Yes (its body comes whole), Cached (only ENVELOPE/size), No (nothing but flags)
  Expunge store  B stores +FLAGS \\Flagged on 2 (expunged) and 3 (not); C, not yet told, fetches both:
                 No (STORE answered NO), Ignored (OK, but B's own FETCH lacks it), Yes (C sees 2 flagged),
                 Session (C sees only 3), Delayed (C sees neither)
Definitions as in imaptest's compliancy table (imapwiki.org/ImapTest/ServerStatus). Nothing here is a
failure: RFC 3501 leaves it open (RFC 2180 §4.1 lists the options). Violations the model sees on the way
(an EXPUNGE during FETCH, say) are returned with the classification.
"""

from __future__ import annotations

import random
import time

from harness.load.imap_client import ImapClient, quote
from harness.load.wire import WireError
from harness.stress.imap_session import StressImap
from harness.stress.messages import make_message
from harness.stress.model import MailboxModel
from harness.stress.violations import ViolationLog

FOLDER = "mailharness-probe"
TIMEOUT = 15.0


def _session(target, model: MailboxModel, label: str, index: int) -> StressImap:
    account = target.accounts[0]
    client = ImapClient(target.imap, timeout=TIMEOUT, ca_file=target.ca_file)
    s = StressImap(client, model, label, index, random.Random(index), {}, "probe")
    client.connect()
    client.login(account.user, account.password)
    s.run("CAPABILITY", b"CAPABILITY")
    if s.has(b"NAMESPACE"):
        s.run("NAMESPACE", b"NAMESPACE")
    s.folder = quote(s.view.prefix.decode() + FOLDER)
    return s


def run_probes(target) -> dict:
    log = ViolationLog()
    model = MailboxModel(f"{target.accounts[0].user}/{FOLDER}", log)
    sessions: list[StressImap] = []
    try:
        result = _probe(target, model, sessions)
    except (WireError, OSError) as exc:
        result = {"Expunge fetch": f"not measured ({exc})", "Expunge store": "not measured", "\\Recent": "not measured"}
    finally:
        _clean_up(sessions)
    if log.counts:
        result["probe violations"] = dict(log.counts)
        result["probe first violations"] = log.first
    return result


def _probe(target, model: MailboxModel, sessions: list[StressImap]) -> dict:
    a = _session(target, model, "probe-A", 0)
    sessions.append(a)
    a.run("CREATE", b"CREATE " + a.folder, allow_no=True)
    a.run("SELECT", b"SELECT " + a.folder)
    if a.view.count:  # left over from an interrupted probe: the folder is the harness's own
        model.pop3_deleted = True  # its messages are unknown to the model: let them go unjudged
        a.run("STORE", b"STORE 1:* +FLAGS.SILENT (\\Deleted)")
        a.run("EXPUNGE", b"EXPUNGE")
    a.run("CLOSE", b"CLOSE")
    # Appended while no session has the folder selected (GNU Mailutils 3.15 loses appends to the mailbox
    # the appending session has selected); then A, B and C select it, in that order.
    bodies = []
    for n in range(3):
        data = make_message(random.Random(n), f"<probe.{n}.{time.time():.0f}@stress.mailharness.test>", time.time())
        bodies.append(data)
        if a.has(b"LITERAL+"):
            a.run("APPEND", b"APPEND " + a.folder + b" {%d+}\r\n" % len(data) + data)
        else:
            _append_sync(a, data)
    a.view.uids, a.view.flags = [], []
    a.run("SELECT", b"SELECT " + a.folder)
    for label, index in (("probe-B", 1), ("probe-C", 2)):
        s = _session(target, model, label, index)
        sessions.append(s)
        s.run("SELECT", b"SELECT " + s.folder)
    b, c = sessions[1], sessions[2]
    for s in sessions:
        if s.view.count:
            s.run("FETCH", b"FETCH 1:%d (UID FLAGS)" % s.view.count)
    if min(s.view.count for s in sessions) != 3:
        return {"\\Recent": "not measured", "Expunge fetch": "not measured (the three appends were not all seen)",
                "Expunge store": "not measured"}
    recent = []
    for seq in (1, 2, 3):
        recent.append(sum(1 for s in sessions if b"\\recent" in (s.view.flags[seq - 1] or ())))
    out = {"\\Recent": "Yes" if all(n == 1 for n in recent) else
           "No (a new message is \\Recent in no session)" if min(recent) == 0 else "No (\\Recent in several sessions)"}

    model.vanishing_uids.update(u for u in a.view.uids[:2] if u is not None)
    a.run("STORE", b"STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    a.run("EXPUNGE", b"EXPUNGE")
    # Expunge fetch: B still holds message 1.
    status, _ = b.run("FETCH expunged", b"FETCH 1 (BODY.PEEK[])", allow_no=True)
    body = b.view.fetched.get(1, {}).get(b"BODY[]")
    if status == b"OK" and body == bodies[0]:
        out["Expunge fetch"] = "Yes"
    else:
        status, _ = b.run("FETCH expunged", b"FETCH 1 (ENVELOPE RFC822.SIZE)", allow_no=True)
        items = b.view.fetched.get(1, {})
        out["Expunge fetch"] = "Cached" if items.get(b"ENVELOPE") is not None or items.get(b"RFC822.SIZE") else "No"
    # Expunge store: B flags 2 (expunged) and 3 (not); C looks.
    status, _ = b.run("STORE expunged", b"STORE 2 +FLAGS (\\Flagged)", allow_no=True)
    if status != b"OK":
        out["Expunge store"] = "No"
    else:
        b.run("STORE", b"STORE 3 +FLAGS (\\Flagged)")
        b.run("FETCH", b"FETCH 2 (FLAGS)", allow_no=True)
        own = b.view.fetched.get(2, {}).get(b"FLAGS")
        if own is None or b"\\flagged" not in {f.lower() for f in own}:
            out["Expunge store"] = "Ignored"
        else:
            c.run("FETCH", b"FETCH 2:3 (FLAGS)", allow_no=True)
            flags = {seq: {f.lower() for f in items.get(b"FLAGS", ())} for seq, items in c.view.fetched.items()}
            two, three = b"\\flagged" in flags.get(2, set()), b"\\flagged" in flags.get(3, set())
            out["Expunge store"] = "Yes" if two else "Session" if three else "Delayed"
    return out


def _append_sync(s: StressImap, data: bytes) -> None:
    """APPEND with a synchronizing literal (no LITERAL+)."""
    tag = s.send(b"APPEND " + s.folder + b" {%d}" % len(data))
    status, _ = s.finish(tag, continuation=True)
    if status == b"+":
        s.client.conn.send(data + b"\r\n")
        s.finish(tag)


def _clean_up(sessions: list[StressImap]) -> None:
    for s in reversed(sessions):
        try:
            if s is sessions[0]:
                s.run("CLOSE", b"CLOSE", allow_no=True)
                s.run("DELETE", b"DELETE " + s.folder, allow_no=True)
            s.client.logout()
        except (WireError, OSError):
            s.client.close()
