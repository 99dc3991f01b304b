"""A stress run as results.json (format 1), so `compare` and `matrix` take it like a suite run.

One test per violation kind ("stress::<kind>": failed with its count, passed only if the checks behind it
ran) and one per classification category ("stress-class::<category>": passed for imaptest's ideal answer,
behaviour otherwise, the answer in the message).
"""

from __future__ import annotations

from datetime import datetime

from harness import __version__
from harness.reports.results import FORMAT, summarize
from harness.stress.violations import KINDS, SHOULD_KINDS

POP3_KINDS = {"pop3-uidl-changed", "pop3-uidl-duplicate", "pop3-size-mismatch"}
CHECKPOINT_KINDS = {"checkpoint-differs", "atomic-flags-lost"}
AUDIT_KINDS = {"mail-lost", "mail-duplicated"}
IDEAL = {"Checkpoint": "Yes", "\\Recent": "Yes", "Atomic flags": "Yes", "Expunge fetch": "Yes", "Expunge store": "Yes"}
RFC = {"expunge-during-command": ["RFC 3501 §7.4.1"], "uid-reused": ["RFC 3501 §2.3.1.1"], "uid-not-ascending": ["RFC 3501 §2.3.1.1"],
       "uid-map-changed": ["RFC 3501 §2.3.1.1"], "uidvalidity-changed": ["RFC 3501 §2.3.1.1"], "seq-beyond-exists": ["RFC 3501 §7.4.1"],
       "keyword-not-announced": ["RFC 3501 §7.2.6"], "pop3-uidl-changed": ["RFC 1939 §7"], "pop3-uidl-duplicate": ["RFC 1939 §7"],
       "pop3-size-mismatch": ["RFC 1939 §5"], "expunge-beyond-exists": ["RFC 3501 §7.4.1"], "exists-decreased": ["RFC 3501 §7.3.1"]}


def _ran(kind: str, result: dict) -> str | None:
    """None if the checks behind ``kind`` ran; else why they did not."""
    boxes = list(result["mailboxes"].values())
    if not result.get("checking", True):
        return "checking was off"
    if kind in POP3_KINDS:
        return None if result.get("pop3_visits") else "no POP3 session ran"
    if kind in CHECKPOINT_KINDS:
        done = sum(b["checkpoints"]["completed"] for b in boxes)
        if kind == "atomic-flags-lost":
            done = sum(b["checkpoints"]["atomic_trials"] for b in boxes)
        return None if done else "no checkpoint (or atomic-flags trial) completed"
    if kind in AUDIT_KINDS:
        audited = [b for b in boxes if isinstance(b.get("audit"), dict) and "present" in b["audit"]]
        return None if audited and len(audited) == len(boxes) else "the end-of-run audit did not run for every mailbox"
    return None if result.get("commands") else "no IMAP command ran"


def results_json(result: dict, target, command: str) -> dict:
    tests = []
    for kind, meaning in KINDS.items():
        count = result["counts"].get(kind, 0)
        first = result["first"].get(kind, {})
        skipped = None if count else _ran(kind, result)
        tests.append({
            "id": f"stress::{kind}", "title": meaning, "area": "stress", "protocol": "pop3" if kind in POP3_KINDS else "imap",
            "outcome": ("warning" if kind in SHOULD_KINDS else "failed") if count else "skipped" if skipped else "passed",
            "level": "SHOULD" if kind in SHOULD_KINDS else "MUST", "rfc": RFC.get(kind, []),
            "message": (f"{count} violation(s); first: {first.get('session', '?')}: {first.get('detail', '')}" if count
                        else skipped or f"0 in {result.get('commands', 0)} commands"),
            "transcript": "\n".join(f"{r['t']:.3f} {r['session']} {r['dir']} {r['line']}" for r in first.get("transcript", [])),
        })
    for category, ideal in IDEAL.items():
        answer = result.get("classification", {}).get(category)
        measured = answer is not None and not str(answer).startswith("not ")
        tests.append({
            "id": f"stress-class::{category}", "title": f"imaptest compliancy category: {category}", "area": "stress",
            "protocol": "imap", "level": "MAY", "outcome": "skipped" if not measured else "passed" if answer == ideal else "behaviour",
            "message": str(answer or "not measured"),
        })
    facts = result.get("facts", {})
    out = {
        "format": FORMAT, "harness_version": __version__, "command": command,
        "started_at": facts.get("started", ""), "finished_at": datetime.now().isoformat(timespec="seconds"),
        "duration_s": facts.get("wall_seconds"),
        "target": {"name": target.name, "imap_url": target.imap.url if target.imap else "",
                   "pop3_url": target.pop3.url if target.pop3 else ""},
        "tests": tests,
    }
    out.update(summarize(tests))
    return out
