"""results.json (format 1): loading, validation, the summary/verdict rule and RFC links.

`mailharness run` writes the file; the reports read it. Both sides use ``summarize`` so the
verdict in the file and the one a report shows are computed by the same rule.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.reports.formatting import plural

FORMAT = 1

# Order used by every table and summary line.
# "warning": a SHOULD check did not hold; "behaviour": a MAY check did not hold (reported, never a failure).
OUTCOMES = ("passed", "failed", "warning", "behaviour", "xfailed", "xpassed", "skipped", "error")

# Words for people: "xfailed" means the profile declared that this server deviates here.
OUTCOME_LABELS = {
    "passed": "passed",
    "failed": "failed",
    "warning": "warning (SHOULD)",
    "behaviour": "behaviour (MAY)",
    "xfailed": "expected deviation",
    "xpassed": "unexpected pass",
    "skipped": "skipped",
    "error": "error",
}

# Outcomes that make the verdict "fail". An unexpected pass counts: the profile is out of date.
BAD_OUTCOMES = frozenset({"failed", "error", "xpassed"})

# Verdicts, worst first. "error": what was asked could not run (malformed suite, no matching test, unusable
# target); "incomplete": it stopped before every collected test ran (interrupt, --collect-only, -x).
# Neither is ever "pass": a run is never certified for tests that did not run.
VERDICTS = ("error", "incomplete", "fail", "pass")

REQUIRED_KEYS = ("format", "target", "tests", "summary", "verdict")
REQUIRED_TEST_KEYS = ("id", "outcome")

# Optional keys and what a missing one means, so templates never test for presence.
_RESULTS_DEFAULTS: dict[str, Any] = {
    "harness_version": "",
    "started_at": "",
    "finished_at": "",
    "duration_s": None,
    "command": "",
    "profile": None,
}
_TARGET_DEFAULTS: dict[str, Any] = {
    "name": "",
    "imap_url": "",
    "pop3_url": "",
    "imap_greeting": "",
    "imap_capabilities": [],
    "pop3_greeting": "",
    "pop3_capabilities": [],
}
_TEST_DEFAULTS: dict[str, Any] = {
    "title": "",
    "file": "",
    "line": None,
    "area": "other",
    "protocol": "",
    "rfc": [],
    "duration_s": None,
    "message": "",
    "failure": None,
    "transcript": "",
    "profile_reason": None,
    "metrics": {},
    "level": "MUST",
    "deviations": [],
}


def bad_outcomes(strict: bool = False) -> frozenset:
    """Outcomes that make the verdict "fail"; with ``--strict`` a warning (failed SHOULD) does too."""
    return BAD_OUTCOMES | {"warning"} if strict else BAD_OUTCOMES


def run_defaults(tests: list[dict]) -> dict:
    """The ``run`` block of a results file that has none (written before it existed): everything ran."""
    return {"collected": len(tests), "ran": len(tests), "strict": False, "interrupted": None,
            "collect_only": False, "collection_errors": [], "error": None}


def summarize(tests: list[dict], run: dict | None = None) -> dict:
    """``{"summary": {...}, "run": {...}, "verdict": ..., "verdict_reason": "one sentence"}`` for a run.

    ``run`` says what happened around the tests (see docs/results.md): how many were collected, whether
    the run was interrupted, collection errors, a target that could not be used, --strict. Without it,
    every test is taken to have run. The engine does ``results.update(summarize(tests, run))``.
    """
    summary = dict.fromkeys(OUTCOMES, 0)
    for test in tests:
        outcome = test["outcome"]
        if outcome not in summary:
            raise ValueError(f"test {test.get('id')!r}: unknown outcome {outcome!r}")
        summary[outcome] += 1
    summary["total"] = len(tests)
    run = {**run_defaults(tests), **(run or {})}
    verdict, reason = _verdict(summary, run)
    return {"summary": summary, "run": run, "verdict": verdict, "verdict_reason": reason}


def _verdict(summary: dict, run: dict) -> tuple[str, str]:
    collected, ran = run["collected"], run["ran"]
    of = f"{ran} of {plural(collected, 'test')} ran" if collected else "no test had been collected"
    bad = [_count_words(summary, o) for o in ("failed", "error", "xpassed") if summary.get(o)]
    if run["strict"] and summary.get("warning"):
        bad.append(_count_words(summary, "warning") + " (--strict)")
    found = f"; {', '.join(bad)}" if bad else ""
    errors = run["collection_errors"]
    if errors:
        first = errors[0].splitlines()[0] if errors[0] else "(no message)"
        more = f" and {len(errors) - 1} more" if len(errors) > 1 else ""
        return "error", f"{plural(len(errors), 'suite file')} could not be loaded ({first}{more}); {of}."
    if run["error"]:
        return "error", f"The run could not start: {run['error']}; " + (f"{of}." if ran else "no test ran.")
    if run["interrupted"]:
        return "incomplete", f"The run was interrupted ({run['interrupted']}): {of}{found}."
    if not collected:
        return "error", "No test matched the selection (check --suite and -k); nothing ran."
    if run["collect_only"]:
        return "incomplete", f"Tests were only collected (--collect-only): {plural(collected, 'test')} found, none ran."
    if ran < collected:
        return "incomplete", f"The run stopped early: {of}{found}."
    if bad:
        return "fail", f"{', '.join(bad)}; {of}."
    skipped = summary.get("skipped", 0)
    if skipped and skipped >= collected:  # a skip checks nothing: never PASS for what did not run
        return "incomplete", f"Every one of the {plural(collected, 'test')} was skipped (see each test's reason): nothing was checked."
    soft = [_count_words(summary, o) for o in ("warning", "behaviour") if summary.get(o)]
    if skipped:
        soft.append(f"{skipped} skipped")
    return "pass", f"All {plural(collected, 'test')} ran; none failed" + (f" ({', '.join(soft)})" if soft else "") + "."


def _count_words(summary: dict, outcome: str) -> str:
    n = summary[outcome]
    return {
        "failed": f"{n} failed",
        "error": plural(n, "error"),
        "xpassed": plural(n, "unexpected pass", "unexpected passes"),
        "warning": plural(n, "warning"),
        "behaviour": plural(n, "optional behaviour"),
    }[outcome]


def counts_by(tests: list[dict], key: str) -> dict[str, dict[str, int]]:
    """Outcome counts per value of ``key`` ("area", "protocol"), in order of first appearance."""
    groups: dict[str, dict[str, int]] = {}
    for test in tests:
        counts = groups.setdefault(test.get(key) or "(none)", dict.fromkeys((*OUTCOMES, "total"), 0))
        counts[test["outcome"]] += 1
        counts["total"] += 1
    return groups


def load_results(path: Path | str) -> dict:
    """Read and validate a results.json; every problem is a ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such results file (results.json is written by `mailharness run`)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
    return validate_results(data, source=str(path))


def validate_results(data: Any, source: str = "results") -> dict:
    """Check the shape of a results dict and return a copy with every optional key filled in.

    Writers call this too, so a dict straight from the engine gets the same checks as a file.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object (a results.json from `mailharness run`), "
                          f"got {type(data).__name__}")
    if "format" not in data:
        raise ConfigError(f"{source}: no 'format' key; is this a results.json from `mailharness run`?")
    if data["format"] != FORMAT:
        raise ConfigError(f"{source}: results format {data['format']!r} is not supported "
                          f"(this mailharness reads format {FORMAT}; the file was written by "
                          f"mailharness {data.get('harness_version') or 'unknown'})")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise ConfigError(f"{source}: missing key(s): {', '.join(missing)}")
    if not isinstance(data["target"], dict):
        raise ConfigError(f"{source}: 'target' must be an object")
    if not isinstance(data["tests"], list):
        raise ConfigError(f"{source}: 'tests' must be a list")
    if not isinstance(data["summary"], dict):
        raise ConfigError(f"{source}: 'summary' must be an object")
    if data["verdict"] not in VERDICTS:
        raise ConfigError(f"{source}: 'verdict' must be one of {', '.join(VERDICTS)}, not {data['verdict']!r}")
    if data.get("run") is not None and not isinstance(data["run"], dict):
        raise ConfigError(f"{source}: 'run' must be an object")
    if data.get("profile") is not None and not isinstance(data["profile"], dict):
        raise ConfigError(f"{source}: 'profile' must be an object or null")

    results = copy.deepcopy(data)
    _fill(results, _RESULTS_DEFAULTS)
    _fill(results["target"], _TARGET_DEFAULTS)
    seen: set[str] = set()
    for index, test in enumerate(results["tests"]):
        where = f"{source}: tests[{index}]"
        if not isinstance(test, dict):
            raise ConfigError(f"{where}: must be an object")
        missing = [key for key in REQUIRED_TEST_KEYS if key not in test]
        if missing:
            raise ConfigError(f"{where}: missing key(s): {', '.join(missing)}")
        where = f"{where} ({test['id']})"
        if test["outcome"] not in OUTCOMES:
            raise ConfigError(f"{where}: unknown outcome {test['outcome']!r} (expected one of {', '.join(OUTCOMES)})")
        if test["id"] in seen:
            # compare and matrix match tests by id; a duplicate would silently hide one of them.
            raise ConfigError(f"{where}: duplicate test id")
        seen.add(test["id"])
        _fill(test, _TEST_DEFAULTS)
        test["area"] = test["area"] or "other"
        if isinstance(test["rfc"], str):
            test["rfc"] = [test["rfc"]]
    # The engine writes the summary with summarize(); fill any gap the same way.
    computed = summarize(results["tests"])
    for key, value in computed["summary"].items():
        results["summary"].setdefault(key, value)
    results["run"] = {**run_defaults(results["tests"]), **(results.get("run") or {})}
    if not results.get("verdict_reason"):
        results["verdict_reason"] = summarize(results["tests"], results["run"])["verdict_reason"]
    return results


def _fill(target: dict, defaults: dict) -> None:
    for key, value in defaults.items():
        if target.get(key) is None and value is not None:
            target[key] = copy.copy(value)
        else:
            target.setdefault(key, value)


def failure_location(test: dict) -> str:
    """``file:line`` of the failing step if known, else of the test itself ("" when neither)."""
    failure = test.get("failure") or {}
    file = failure.get("file") or test.get("file") or ""
    line = failure.get("line") if failure.get("file") else test.get("line")
    if not file:
        return ""
    return f"{file}:{line}" if line else file


# --- RFC references -------------------------------------------------------------------------

# The RFCs the suites cite; any other number still links to the same place.
RFC_TITLES = {
    1939: "Post Office Protocol - Version 3",
    2449: "POP3 Extension Mechanism",
    2595: "Using TLS with IMAP, POP3 and ACAP",
    2177: "IMAP4 IDLE command",
    2342: "IMAP4 Namespace",
    2971: "IMAP4 ID extension",
    3348: "IMAP4 Child Mailbox Extension",
    3501: "Internet Message Access Protocol - Version 4rev1",
    3691: "IMAP UNSELECT command",
    4315: "IMAP UIDPLUS extension",
    4959: "IMAP Extension for SASL Initial Client Response",
    4978: "The IMAP COMPRESS Extension",
    5034: "The POP3 SASL Authentication Mechanism",
    5161: "The IMAP ENABLE Extension",
    5256: "IMAP SORT and THREAD Extensions",
    5322: "Internet Message Format",
    5530: "IMAP Response Codes",
    6154: "IMAP LIST Extension for Special-Use Mailboxes",
    6851: "IMAP MOVE Extension",
    7162: "IMAP CONDSTORE and QRESYNC",
    7888: "IMAP4 Non-synchronizing Literals",
    8314: "Cleartext Considered Obsolete: Use of TLS for Email Submission and Access",
    9051: "Internet Message Access Protocol (IMAP) - Version 4rev2",
    9208: "IMAP QUOTA Extension",
}

RFC_URL = "https://www.rfc-editor.org/rfc/rfc{number}"
RFC_URLS = {number: RFC_URL.format(number=number) for number in RFC_TITLES}

# "RFC1939 §6", "RFC 3501", "rfc3501 section 6.4.8", "RFC 9051 §A.1"
_RFC_REF = re.compile(
    r"^\s*RFC[\s-]*(?P<number>\d{1,5})\s*(?:(?:§|section|sec\.?)\s*(?P<section>[A-Za-z0-9]+(?:\.[A-Za-z0-9]+)*))?\.?\s*$",
    re.IGNORECASE,
)


def rfc_link(ref: str) -> str | None:
    """rfc-editor.org URL for an RFC reference, with the section anchor; None if ``ref`` is not one."""
    match = _RFC_REF.match(ref or "")
    if not match:
        return None
    number = int(match["number"])
    url = RFC_URLS.get(number) or RFC_URL.format(number=number)
    section = match["section"]
    if section:
        # rfc-editor anchors: "#section-6.4.8" for sections, "#appendix-A.1" for appendices.
        kind = "appendix" if section[0].isalpha() else "section"
        url += f"#{kind}-{section}"
    return url


def rfc_sort_key(ref: str) -> tuple:
    """RFC number, then section numerically (§6.4.10 after §6.4.9); anything else last."""
    match = _RFC_REF.match(ref or "")
    if not match:
        return (1 << 30, (), ref)
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in (match["section"] or "").split(".") if p)
    return (int(match["number"]), parts, ref)


def rfc_title(ref: str) -> str:
    """Title of the cited RFC for a tooltip ("" when unknown)."""
    match = _RFC_REF.match(ref or "")
    if not match:
        return ""
    title = RFC_TITLES.get(int(match["number"]))
    return f"RFC {int(match['number'])}: {title}" if title else ""
