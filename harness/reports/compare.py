"""`mailharness compare`: what changed between a baseline run and a candidate run (release certification)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from harness.errors import ConfigError
from harness.reports.formatting import format_when, headline, one_line, plural
from harness.reports.results import BAD_OUTCOMES, OUTCOME_LABELS, failure_location, load_results, validate_results
from harness.reports.terminal import OUTCOME_STYLE, Painter, want_color

DESCRIPTION = """\
Compare a candidate run with a baseline, typically the last certified release of the same server:
keep the results.json of every certified run, test the new release with the same profile, compare.

  mailharness compare certified/dovecot-2.3.19.json reports/demo/results.json
  mailharness compare last.json new.json --html diff.html --json diff.json

Reported, most important first:
  regressions      passed in the baseline, and now fail, error or pass unexpectedly
  capabilities     IMAP and POP3 capabilities the server added or dropped
  identity         changed target name, greetings, profile or harness version
  fixes            failed in the baseline, pass now
  other changes    any other outcome change (passed -> skipped, expected deviation -> passed, ...)
  new warnings     passed in the baseline, a SHOULD check does not hold now (warning)
  new / removed    tests only in the candidate / only in the baseline

The banner shows the candidate's own verdict next to the comparison: a candidate that failed, did not
complete or could not run is never certified, even when nothing regressed.

An HTML version is written to compare.html next to CANDIDATE unless --html says otherwise.
Exit codes: 0 no regression and the candidate passed,
            1 a regression, a candidate that failed, errored or is incomplete, baseline tests missing
              from the candidate (unless --allow-removed), or new warnings with --strict,
            2 unreadable or invalid input.
"""

# Regressions are listed most serious first: a real failure before a stale profile entry.
_SEVERITY = {"error": 0, "failed": 1, "xpassed": 2, "warning": 3}

# Identity fields worth a line when they change. URLs are left out: the embedded server gets new ports every run.
_IDENTITY_FIELDS = (
    ("target name", lambda r: r["target"]["name"]),
    ("IMAP greeting", lambda r: r["target"]["imap_greeting"]),
    ("POP3 greeting", lambda r: r["target"]["pop3_greeting"]),
    ("profile", lambda r: (r["profile"] or {}).get("name") or ""),
    ("harness version", lambda r: r["harness_version"]),
)


def add_arguments(p) -> None:
    p.add_argument("baseline", type=Path, metavar="BASELINE.json", help="the reference run (e.g. last certified)")
    p.add_argument("candidate", type=Path, metavar="CANDIDATE.json", help="the run to judge")
    p.add_argument("--html", type=Path, metavar="FILE", help="HTML comparison (default: compare.html next to CANDIDATE)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the comparison as JSON (for scripts)")
    p.add_argument("--allow-removed", action="store_true",
                   help="tests of the baseline missing from the candidate are intended (a smaller -k, a retired test)")
    p.add_argument("--strict", action="store_true", help="new warnings (failed SHOULD checks) count as regressions")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour in the terminal summary (default auto: on a terminal, unless NO_COLOR is set)")


def run(args) -> int:
    baseline = load_results(args.baseline)
    candidate = load_results(args.candidate)
    comparison = compare_results(baseline, candidate, allow_removed=getattr(args, "allow_removed", False),
                                 strict=getattr(args, "strict", False))
    color = {"auto": None, "always": True, "never": False}[getattr(args, "color", "auto")]
    print_comparison(comparison, sys.stdout, color=color)

    html_path = args.html or args.candidate.parent / "compare.html"
    write_compare_html(comparison, baseline, candidate, html_path)
    print(f"HTML comparison: {html_path}")
    if args.json:
        try:
            args.json.write_text(json.dumps(comparison, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{args.json}: cannot write: {exc.strerror}") from None
        print(f"JSON comparison: {args.json}")
    return 0 if comparison["certified"] else 1


# --- the comparison itself --------------------------------------------------------------------


def compare_results(baseline: dict, candidate: dict, allow_removed: bool = False, strict: bool = False) -> dict:
    """Everything that changed from ``baseline`` to ``candidate`` (both results format 1), as plain data.

    Keys: baseline, candidate (run identity and counts), regressions, new_warnings, fixes, other_changes,
    still_failing, new_tests, removed_tests (lists of test entries), capabilities
    ({"imap"|"pop3": {"added": [...], "removed": [...]}}), identity_changes, unchanged (count), regressed (bool),
    problems (why the candidate cannot be certified, one sentence each), certified (bool: exit 0).
    """
    baseline = validate_results(baseline, "baseline")
    candidate = validate_results(candidate, "candidate")
    before = {t["id"]: t for t in baseline["tests"]}
    after = {t["id"]: t for t in candidate["tests"]}

    regressions, warnings, fixes, other, still_failing, new = [], [], [], [], [], []
    unchanged = 0
    for test_id, now in after.items():
        then = before.get(test_id)
        if then is None:
            new.append(_entry(now, before=None))
            continue
        was, is_ = then["outcome"], now["outcome"]
        entry = _entry(now, before=then)
        if was == is_:
            unchanged += 1
            if is_ in BAD_OUTCOMES:
                still_failing.append(entry)
        elif was == "passed" and is_ in BAD_OUTCOMES:
            regressions.append(entry)
        elif is_ == "warning" and was not in BAD_OUTCOMES:  # a SHOULD that held (or was not checked) before
            (regressions if strict else warnings).append(entry)
        elif was in BAD_OUTCOMES and is_ == "passed":
            fixes.append(entry)
        else:
            other.append(entry)
    regressions.sort(key=lambda e: _SEVERITY[e["after"]])  # stable: keeps suite order within a severity
    # New tests that fail come first: they are the ones an admin has to look at.
    new.sort(key=lambda e: e["after"] not in BAD_OUTCOMES)
    removed = [_entry(then, before=then, removed=True) for test_id, then in before.items() if test_id not in after]
    problems = _certification_problems(candidate, removed, allow_removed, strict, warnings)

    return {
        "baseline": _run_identity(baseline),
        "candidate": _run_identity(candidate),
        "regressed": bool(regressions),
        "certified": not regressions and not problems,
        "problems": problems,
        "allow_removed": allow_removed,
        "regressions": regressions,
        "new_warnings": warnings,
        "capabilities": {
            proto: _diff_capabilities(baseline["target"][f"{proto}_capabilities"],
                                      candidate["target"][f"{proto}_capabilities"])
            for proto in ("imap", "pop3")
        },
        "identity_changes": [
            {"what": what, "before": get(baseline), "after": get(candidate)}
            for what, get in _IDENTITY_FIELDS
            if get(baseline) != get(candidate)
        ],
        "fixes": fixes,
        "other_changes": other,
        "new_tests": new,
        "removed_tests": removed,
        "still_failing": still_failing,
        "unchanged": unchanged,
    }


def _certification_problems(candidate: dict, removed: list, allow_removed: bool, strict: bool, warnings: list) -> list[str]:
    """Why the candidate cannot be certified even without a regression: it did not pass, or tests did not run."""
    problems = []
    verdict = candidate["verdict"]
    if verdict != "pass":
        problems.append(f"the candidate's own verdict is {verdict.upper()}: {candidate['verdict_reason']}")
    if removed and not allow_removed:
        problems.append(f"{plural(len(removed), 'test')} of the baseline did not run in the candidate "
                        "(--allow-removed if that is intended)")
    return problems


def _entry(test: dict, before: dict | None, removed: bool = False) -> dict:
    return {
        "id": test["id"],
        "title": test["title"],
        "area": test["area"],
        "protocol": test["protocol"],
        "file": test["file"],
        "line": test["line"],
        "location": "" if removed else failure_location(test),
        "before": before["outcome"] if before else None,
        "after": None if removed else test["outcome"],
        # Why the candidate has this outcome, in one line; a passing test needs no explanation.
        "message": "" if removed or test["outcome"] == "passed" else headline(test, width=300),
    }


def _run_identity(results: dict) -> dict:
    return {
        "target": results["target"]["name"],
        "started_at": results["started_at"],
        "harness_version": results["harness_version"],
        "profile": (results["profile"] or {}).get("name"),
        "verdict": results["verdict"],
        "verdict_reason": results["verdict_reason"],
        "summary": results["summary"],
        "run": results["run"],
    }


def _diff_capabilities(before: list[str], after: list[str]) -> dict:
    # Capability names are case-insensitive (RFC 3501 §7.2.1); compare that way, show them as the server wrote them.
    old = {c.upper(): c for c in before}
    new = {c.upper(): c for c in after}
    return {
        "added": sorted((new[k] for k in new.keys() - old.keys()), key=str.upper),
        "removed": sorted((old[k] for k in old.keys() - new.keys()), key=str.upper),
    }


def capability_change_count(comparison: dict) -> int:
    return sum(len(c["added"]) + len(c["removed"]) for c in comparison["capabilities"].values())


# --- output -------------------------------------------------------------------------------------


def print_comparison(comparison: dict, stream: TextIO | None = None, color: bool | None = None) -> None:
    """Terminal summary of ``compare_results``: regressions at the top, a one-line conclusion at the bottom."""
    stream = stream or sys.stdout
    paint = Painter(want_color(stream, color))
    c = comparison
    out = [paint("Release comparison", "bold")]
    for role in ("baseline", "candidate"):
        run = c[role]
        verdict = paint(run["verdict"].upper(), "green" if run["verdict"] == "pass" else "red")
        ran = f"{run['run']['ran']} of {plural(run['run']['collected'], 'test')} ran"
        out.append(f"  {role:<9}  {run['target'] or '(unnamed)'} · {format_when(run['started_at']) or 'time unknown'}"
                   f" · {verdict} ({ran})")

    def section(title: str, entries: list, note: str = "", style: tuple = ("bold",)) -> None:
        if not entries:
            return
        out.append("")
        out.append(paint(f"{title} ({len(entries)})", *style) + (paint(f"  {note}", "dim") if note else ""))
        # Pad on the plain text: ANSI codes have no width.
        width = max(len(_transition(e, Painter(False))) for e in entries)
        for e in entries:
            pad = " " * (width - len(_transition(e, Painter(False))))
            where = e["location"] or _where(e)
            out.append(f"  {_transition(e, paint)}{pad}  {e['id']}" + (paint(f"  {where}", "dim") if where else ""))
            if e["message"]:
                out.append(f"  {' ' * width}  {one_line(e['message'])}")

    if c["problems"]:
        out.append("")
        out.append(paint("NOT CERTIFIED", "bold", "red"))
        out.extend(f"  {p}" for p in c["problems"])
    section("REGRESSIONS", c["regressions"], "passed in the baseline, not now", ("bold", "red"))
    section("NEW WARNINGS", c["new_warnings"], "a SHOULD check that does not hold now (--strict: a regression)",
            ("bold", "yellow"))
    caps = [(proto.upper(), kind, d[kind]) for proto, d in c["capabilities"].items()
            for kind in ("removed", "added") if d[kind]]
    if caps:
        out.append("")
        out.append(paint("CAPABILITY CHANGES", "bold"))
        for proto, kind, names in caps:
            sign = paint("-", "red") if kind == "removed" else paint("+", "green")
            out.append(f"  {proto} {kind:<7}  " + " ".join(f"{sign}{n}" for n in names))
    if c["identity_changes"]:
        out.append("")
        out.append(paint("IDENTITY CHANGES", "bold"))
        for change in c["identity_changes"]:
            out.append(f"  {change['what']}:")
            out.append(f"      before: {change['before'] or '(none)'}")
            out.append(f"      now:    {change['after'] or '(none)'}")
    section("FIXES", c["fixes"], "failed in the baseline, pass now", ("bold", "green"))
    section("OTHER OUTCOME CHANGES", c["other_changes"])
    section("NEW TESTS", c["new_tests"], "only in the candidate")
    section("REMOVED TESTS", c["removed_tests"], "only in the baseline")
    section("STILL FAILING", c["still_failing"], "same failure in both runs")

    out.append("")
    out.append(conclusion(comparison, paint))
    stream.write("\n".join(out) + "\n")
    stream.flush()


def conclusion(comparison: dict, paint=None) -> str:
    """``REGRESSION: 2 regressions · 1 fix, 3 capability changes, ...`` / ``NO REGRESSION: ...``"""
    paint = paint or Painter(False)
    c = comparison
    parts = [plural(len(c["new_warnings"]), "new warning"),
             plural(len(c["fixes"]), "fix", "fixes"), plural(len(c["other_changes"]), "other change"),
             plural(capability_change_count(c), "capability change"), f"{len(c['new_tests'])} new",
             f"{len(c['removed_tests'])} removed", f"{c['unchanged']} unchanged"]
    head = headline_word(c)
    if c["regressions"]:
        head = paint(f"{head}:", "bold", "red") + " " + plural(len(c["regressions"]), "regression") + " · "
    elif not c["certified"]:
        head = paint(f"{head}:", "bold", "red") + " "
    else:
        head = paint(f"{head}:", "bold", "green") + " "
    return head + ", ".join(parts)


def headline_word(comparison: dict) -> str:
    """What the banner says. Green NO REGRESSION only for a candidate that itself passed and ran every baseline test."""
    c = comparison
    verdict = c["candidate"]["verdict"].upper()
    if c["regressions"]:
        return "REGRESSION" if verdict == "FAIL" else f"REGRESSION, candidate {verdict}"
    if c["certified"]:
        return "NO REGRESSION"
    if verdict != "PASS":
        return f"NO REGRESSION, BUT CANDIDATE {verdict}"
    return "NO REGRESSION, BUT TESTS MISSING"


def _transition(entry: dict, paint) -> str:
    def word(outcome):
        return paint(OUTCOME_LABELS[outcome], OUTCOME_STYLE[outcome]) if outcome else paint("(absent)", "dim")

    if entry["before"] is None:
        return f"new, {word(entry['after'])}"
    if entry["after"] is None:
        return f"was {word(entry['before'])}"
    if entry["before"] == entry["after"]:
        return word(entry["after"])
    return f"{word(entry['before'])} -> {word(entry['after'])}"


def _where(entry: dict) -> str:
    if not entry["file"]:
        return ""
    return f"{entry['file']}:{entry['line']}" if entry["line"] else entry["file"]


def write_compare_html(comparison: dict, baseline: dict, candidate: dict, path: Path | str) -> Path:
    """Self-contained HTML version of the comparison, with the candidate's evidence for each regression."""
    from harness.reports.rendering import write_page  # jinja2 only when writing: keeps `mailharness --help` fast

    baseline = validate_results(baseline, "baseline")
    candidate = validate_results(candidate, "candidate")
    return write_page(
        path,
        "compare.html.j2",
        c=comparison,
        base=baseline,
        cand=candidate,
        cand_tests={t["id"]: t for t in candidate["tests"]},
        capability_changes=capability_change_count(comparison),
        headline=headline_word(comparison),
    )
