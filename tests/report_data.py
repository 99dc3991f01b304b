"""Realistic results.json data for the report tests (format 1, as `mailharness run` writes it).

``make_results()`` gives a failing Dovecot run across several areas and protocols: failures with
transcripts, expected deviations with profile reasons, skips, an error, metrics. Tests derive
variants with ``with_outcomes`` / ``with_target`` instead of editing the dict by hand.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from harness.reports.results import summarize

GREETING_IMAP = "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot (Debian) ready."
IMAP_CAPS = ["IMAP4REV1", "SASL-IR", "LOGIN-REFERRALS", "ID", "ENABLE", "IDLE", "SORT", "THREAD=REFERENCES",
             "MULTIAPPEND", "UNSELECT", "CHILDREN", "NAMESPACE", "UIDPLUS", "LIST-EXTENDED", "I18NLEVEL=1",
             "CONDSTORE", "QRESYNC", "ESEARCH", "MOVE", "SPECIAL-USE", "LITERAL+"]
POP3_CAPS = ["CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE", "USER", "SASL PLAIN"]

RETR_TRANSCRIPT = """\
  0.001 p S: +OK Dovecot (Debian) ready.
  0.002 p C: USER user1
  0.003 p S: +OK
  0.003 p C: PASS ********
  0.011 p S: +OK Logged in.
  0.012 p C: DELE 1
  0.013 p S: +OK Marked to be deleted.
  0.013 p C: RETR 1
  0.014 p S: +OK 1523 octets
"""

IDLE_TRANSCRIPT = """\
  0.001 i1 S: * OK [CAPABILITY IMAP4rev1 IDLE] Dovecot (Debian) ready.
  0.004 i1 C: a1 LOGIN user2 ********
  0.012 i1 S: a1 OK Logged in
  0.013 i1 C: a2 SELECT INBOX
  0.015 i1 S: a2 OK [READ-WRITE] Select completed.
  0.016 i1 C: a3 IDLE
  0.016 i1 S: + idling
  5.017 i1 -- timeout: no untagged EXISTS within 5 s
"""


def make_test(test_id: str, outcome: str = "passed", **fields) -> dict:
    """One test entry with plausible defaults; ``fields`` override any key."""
    protocol = test_id.split(".", 1)[0]
    test = {
        "id": test_id,
        "title": test_id.rsplit(".", 1)[-1].replace("-", " ").capitalize(),
        "file": f"suites/{protocol}/{test_id.split('.')[1]}.yaml",
        "line": 10,
        "area": test_id.split(".")[1],
        "protocol": protocol if protocol in ("pop3", "imap") else "pop3+imap",
        "rfc": [],
        "outcome": outcome,
        "duration_s": 0.04,
        "message": "",
        "failure": None,
        "transcript": "",
        "profile_reason": None,
        "metrics": {},
    }
    test.update(fields)
    return test


def make_tests() -> list[dict]:
    return [
        make_test("pop3.auth.user-pass", rfc=["RFC1939 §7"], file="suites/pop3/auth.yaml", line=3),
        make_test("pop3.auth.apop", "skipped", file="suites/pop3/auth.yaml", line=21, rfc=["RFC1939 §7"],
                  message="server does not offer APOP (no timestamp in greeting)"),
        make_test("pop3.deletion.marks-only", "failed", title="DELE only marks the message; RETR of it fails",
                  file="suites/pop3/deletion.yaml", line=12, rfc=["RFC1939 §5", "RFC 1939 §6"],
                  message="RETR of a message marked as deleted answered +OK; RFC 1939 §6 requires -ERR.",
                  failure={"file": "suites/pop3/deletion.yaml", "line": 23, "step": "p: RETR 1",
                           "expected": "-ERR", "got": "+OK 1523 octets"},
                  transcript=RETR_TRANSCRIPT),
        make_test("pop3.deletion.rset-undeletes", file="suites/pop3/deletion.yaml", line=40, rfc=["RFC1939 §6"]),
        make_test("pop3.uidl.stable", rfc=["RFC1939 §7"], duration_s=0.12),
        make_test("imap.fetch.body-peek", rfc=["RFC3501 §6.4.5"]),
        make_test("imap.fetch.partial", "xfailed", rfc=["RFC3501 §6.4.5"],
                  profile_reason="Dovecot returns the whole body for <0.0> partial fetches (known, harmless)",
                  message="expected BODY[]<0> {0}, got the full literal"),
        make_test("imap.idle.notify-exists", "failed", title="IDLE reports new mail with EXISTS",
                  file="suites/imap/idle.yaml", line=7, rfc=["RFC2177 §3"],
                  # As the engine words it: the message restates the structured failure.
                  message="imap.idle.notify-exists: step 4 `i1: wait EXISTS` at suites/imap/idle.yaml:18\n"
                          "  expected: `* 2 EXISTS`\n  got:      (nothing within 5 s)",
                  failure={"file": "suites/imap/idle.yaml", "line": 18, "step": "i1: wait EXISTS",
                           "expected": "`* 2 EXISTS`", "got": "(nothing within 5 s)"},
                  transcript=IDLE_TRANSCRIPT, metrics={"notify_latency_s": 5.0}),
        make_test("imap.idle.done-ends", rfc=["RFC2177 §3"], metrics={"notify_latency_s": 0.21}),
        make_test("imap.quota.getquotaroot", "skipped", rfc=["RFC9208 §4.3"],
                  profile_reason="profile disables the quota plugin tests", message="QUOTA not advertised"),
        make_test("imap.search.charset-utf8", "xpassed", rfc=["RFC 3501 §6.4.4"],
                  profile_reason="older Dovecot rejected CHARSET UTF-8 with BADCHARSET"),
        make_test("imap.search.unknown-charset", "error", rfc=["RFC3501 §7.1"],
                  message="connection reset by peer during SEARCH",
                  transcript="  0.001 i1 C: a4 SEARCH CHARSET X-UNKNOWN TEXT foo\n  0.002 i1 -- connection reset\n"),
        make_test("cross.deletion.pop3-dele-imap-sees", rfc=["RFC1939 §6", "RFC3501 §6.4.8"],
                  file="suites/cross/deletion.yaml", line=5),
        make_test("cross.flags.seen-after-retr", "xfailed", file="suites/cross/flags.yaml", line=9,
                  profile_reason="Dovecot does not set \\Seen on POP3 RETR (pop3_no_flag_updates)"),
    ]


def make_results(tests: list[dict] | None = None, **fields) -> dict:
    """A complete results dict; summary and verdict are computed from ``tests``."""
    tests = make_tests() if tests is None else tests
    results = {
        "format": 1,
        "harness_version": "0.1.0",
        "started_at": "2026-11-22T10:00:00+00:00",
        "finished_at": "2026-11-22T10:00:12+00:00",
        "duration_s": 12.3,
        "command": "mailharness run -n 2",
        "profile": {"name": "dovecot", "server": "Dovecot 2.3", "path": "profiles/dovecot.yaml"},
        "target": {
            "name": "embedded Dovecot (Dovecot 2.3.19.1)",
            "imap_url": "imap://127.0.0.1:1234",
            "pop3_url": "pop3://127.0.0.1:1235",
            "imap_greeting": GREETING_IMAP,
            "imap_capabilities": list(IMAP_CAPS),
            "pop3_greeting": "+OK Dovecot (Debian) ready.",
            "pop3_capabilities": list(POP3_CAPS),
        },
        "tests": tests,
    }
    results.update(fields)
    results.update(summarize(results["tests"]))
    return results


def with_outcomes(results: dict, **outcomes: str) -> dict:
    """Copy of ``results`` with some outcomes changed: ``with_outcomes(r, **{"pop3.uidl.stable": "failed"})``."""
    results = copy.deepcopy(results)
    by_id = {t["id"]: t for t in results["tests"]}
    for test_id, outcome in outcomes.items():
        by_id[test_id]["outcome"] = outcome
        if outcome == "passed":
            by_id[test_id].update(message="", failure=None)
    results.update(summarize(results["tests"]))
    return results


def with_evidence(results: dict) -> dict:
    """Copy of ``results`` where tests that have their ``make_tests()`` outcome get its message, failure and
    transcript back (``passing_results`` drops them; a candidate that fails again should carry them)."""
    results = copy.deepcopy(results)
    originals = {t["id"]: t for t in make_tests()}
    for test in results["tests"]:
        original = originals.get(test["id"])
        if original and original["outcome"] == test["outcome"]:
            test.update({k: original[k] for k in ("message", "failure", "transcript", "profile_reason", "metrics")})
    return results


def passing_results(**fields) -> dict:
    """The same tests, with every failure fixed (a certifiable baseline)."""
    results = make_results(**fields)
    for test in results["tests"]:
        if test["outcome"] in ("failed", "error", "xpassed"):
            test.update(outcome="passed", message="", failure=None, transcript="")
    results.update(summarize(results["tests"]))
    return results


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path
