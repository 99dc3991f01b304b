"""Reports: results.json loading, HTML report, terminal summary, compare and matrix (harness/reports)."""

from __future__ import annotations

import argparse
import copy
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser

import pytest
from report_data import make_results, make_test, passing_results, with_evidence, with_outcomes, write_json

from harness.errors import ConfigError, HarnessError
from harness.reports import compare, matrix
from harness.reports.compare import compare_results
from harness.reports.html_report import write_html_report
from harness.reports.matrix import build_matrix, write_matrix_html
from harness.reports.results import load_results, rfc_link, summarize, validate_results
from harness.reports.terminal import print_summary

# --- helpers ---------------------------------------------------------------------------------------


class _ById(HTMLParser):
    """Collects the text inside every element that has an id."""

    VOID = frozenset({"meta", "input", "br", "img", "link", "hr"})

    def __init__(self):
        super().__init__()
        self.stack: list[str | None] = []
        self.text: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        self.handle_data(" ")  # tags separate words, as a browser's layout would
        if tag in self.VOID:
            return
        element_id = dict(attrs).get("id")
        self.stack.append(element_id)
        if element_id:
            self.text.setdefault(element_id, "")

    def handle_endtag(self, tag):
        self.handle_data(" ")
        if tag not in self.VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        for element_id in self.stack:
            if element_id:
                self.text[element_id] += data


def text_by_id(html: str) -> dict[str, str]:
    parser = _ById()
    parser.feed(html)
    return {k: " ".join(v.split()) for k, v in parser.text.items()}


def run_cli(argv: list[str]) -> int:
    """``harness.cli.main(argv)``; while sibling subcommands are still being written, the same thing
    with a parser holding only the report subcommands (same error handling as cli.main)."""
    try:
        from harness import cli

        cli.build_parser()
    except ImportError:
        parser = argparse.ArgumentParser(prog="mailharness")
        sub = parser.add_subparsers(dest="command")
        for name, module in (("compare", compare), ("matrix", matrix)):
            module.add_arguments(sub.add_parser(name))
        args = parser.parse_args(argv)
        try:
            return int(sys.modules[f"harness.reports.{args.command}"].run(args) or 0)
        except HarnessError as exc:
            print(f"mailharness {args.command}: error: {exc}", file=sys.stderr)
            return exc.exit_code
    return cli.main(argv)


# External references a self-contained page may carry: links to RFCs, nothing that loads.
_URL = re.compile(r"""(?:href|src|action)\s*=\s*["']?([^"'\s>]+)""", re.IGNORECASE)


def assert_self_contained(html: str) -> None:
    for url in _URL.findall(html):
        # links to RFCs, and relative links to local suite files (a navigation, nothing loads)
        local_suite = re.fullmatch(r"(?:\.\./)*[\w./-]+\.ya?ml", url) is not None and ":" not in url
        assert url.startswith(("#", "https://www.rfc-editor.org/rfc/")) or local_suite, url
    assert re.search(r"<(link|img|iframe|object|embed)\b", html, re.IGNORECASE) is None
    assert "@import" not in html and "url(" not in html
    assert "Content-Security-Policy" in html


@pytest.fixture
def results():
    return make_results()


# --- results.json -----------------------------------------------------------------------------------


def test_summarize_counts_every_outcome_and_sets_the_verdict():
    out = summarize(make_results()["tests"])
    assert out["summary"] == {"passed": 6, "failed": 2, "warning": 0, "behaviour": 0, "xfailed": 2, "xpassed": 1,
                              "skipped": 2, "error": 1, "total": 14}
    assert out["verdict"] == "fail"
    # Expected deviations and skips do not break the verdict; an unexpected pass does.
    assert summarize([make_test("a.b.c"), make_test("a.b.d", "xfailed"), make_test("a.b.e", "skipped")])["verdict"] == "pass"
    assert summarize([make_test("a.b.c", "xpassed")])["verdict"] == "fail"
    # A run in which every test was skipped (a server without what they need) checked nothing: never a PASS.
    skipped = summarize([make_test("a.b.c", "skipped"), make_test("a.b.d", "skipped")])
    assert skipped["verdict"] == "incomplete" and "Every one of the 2 tests was skipped" in skipped["verdict_reason"]
    assert summarize([])["summary"]["total"] == 0


@pytest.mark.parametrize("run, verdict, reason", [
    ({}, "pass", "All 3 tests ran; none failed (1 warning, 1 optional behaviour)."),
    ({"strict": True}, "fail", "1 warning (--strict); 3 of 3 tests ran."),
    ({"collected": 0}, "error", "No test matched the selection (check --suite and -k); nothing ran."),
    ({"collection_errors": ["malformed suite: s.yaml:9: 'q' is neither a session"], "collected": 3}, "error",
     "1 suite file could not be loaded (malformed suite: s.yaml:9: 'q' is neither a session); 3 of 3 tests ran."),
    ({"error": "target x: IMAP: no greeting within 2.0 s", "collected": 0}, "error",
     "The run could not start: target x: IMAP: no greeting within 2.0 s; no test had been collected."),
    ({"error": "target x: IMAP: no greeting within 2.0 s", "collected": 0, "ran": 0}, "error",
     "The run could not start: target x: IMAP: no greeting within 2.0 s; no test ran."),
    ({"interrupted": "SIGTERM", "collected": 40}, "incomplete", "The run was interrupted (SIGTERM): 3 of 40 tests ran."),
    ({"collect_only": True, "ran": 0}, "incomplete", "Tests were only collected (--collect-only): 3 tests found, none ran."),
    ({"collected": 5}, "incomplete", "The run stopped early: 3 of 5 tests ran."),
])
def test_a_verdict_is_never_pass_for_what_did_not_run(run, verdict, reason):
    tests = [make_test("a.b.c"), make_test("a.b.d", "warning"), make_test("a.b.e", "behaviour")]
    out = summarize(tests, run)
    assert (out["verdict"], out["verdict_reason"]) == (verdict, reason)
    results = make_results(tests)
    results.update(out)
    stream = io.StringIO()
    print_summary(results, stream, color=False)
    last = stream.getvalue().rstrip().splitlines()[-1]
    if verdict in ("error", "incomplete"):
        assert last == f"{verdict.upper()}: {reason}"
    else:
        assert last.startswith(f"{verdict.upper()}:")


def test_html_report_of_an_incomplete_run_says_why(tmp_path):
    results = make_results([make_test("a.b.c")])
    results.update(summarize(results["tests"], {"collected": 0, "error": "target x: IMAP: no greeting within 2.0 s"}))
    write_html_report(results, tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    text = text_by_id(html)
    assert text["verdict"] == "ERROR"
    assert "could not start: target x: IMAP: no greeting" in text["verdict-reason"]
    assert "Every test" not in html
    assert "no greeting within 2.0 s" in text["run-problems"]


@pytest.mark.parametrize("ref, url", [
    ("RFC1939 §6", "https://www.rfc-editor.org/rfc/rfc1939#section-6"),
    ("RFC3501 §6.4.8", "https://www.rfc-editor.org/rfc/rfc3501#section-6.4.8"),
    ("RFC 3501", "https://www.rfc-editor.org/rfc/rfc3501"),
    ("rfc2177 section 3", "https://www.rfc-editor.org/rfc/rfc2177#section-3"),
    ("RFC 9051 §A.1", "https://www.rfc-editor.org/rfc/rfc9051#appendix-A.1"),
    ("RFC 4444", "https://www.rfc-editor.org/rfc/rfc4444"),
    ("Dovecot wiki", None),
    ("", None),
])
def test_rfc_link(ref, url):
    assert rfc_link(ref) == url


def test_load_results_round_trip_fills_optional_keys(tmp_path, results):
    del results["tests"][0]["metrics"], results["tests"][0]["transcript"], results["command"]
    loaded = load_results(write_json(tmp_path / "results.json", results))
    assert loaded["tests"][0]["metrics"] == {} and loaded["tests"][0]["transcript"] == ""
    assert loaded["command"] == ""
    assert loaded["summary"] == results["summary"]


@pytest.mark.parametrize("content, problem", [
    (None, "no such results file"),
    ("{not json", "not valid JSON"),
    ("[]", "expected a JSON object"),
    (json.dumps({"format": 2, "harness_version": "9.0"}), "format 2 is not supported"),
    (json.dumps({"tests": []}), "no 'format' key"),
    (json.dumps({"format": 1, "tests": [], "target": {}}), "missing key(s): summary, verdict"),
])
def test_load_results_rejects_bad_files_naming_them(tmp_path, content, problem):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_results(path)
    assert str(path) in str(info.value) and problem in str(info.value)


def test_validate_results_rejects_bad_tests(results):
    bad = copy.deepcopy(results)
    bad["tests"][2]["outcome"] = "exploded"
    with pytest.raises(ConfigError, match=r"tests\[2\] \(pop3.deletion.marks-only\): unknown outcome 'exploded'"):
        validate_results(bad)
    bad = copy.deepcopy(results)
    bad["tests"].append(copy.deepcopy(bad["tests"][0]))
    with pytest.raises(ConfigError, match="duplicate test id"):
        validate_results(bad)


# --- HTML report --------------------------------------------------------------------------------------


def test_html_report_shows_verdict_counts_identity_and_evidence(tmp_path, results):
    path = tmp_path / "out" / "report.html"
    write_html_report(results, path)
    html = path.read_text()
    text = text_by_id(html)

    assert text["verdict"] == "FAIL"
    for outcome, n in results["summary"].items():
        assert text[f"count-{outcome}"] == str(n)
    assert "2 failed, 1 error, 1 unexpected pass" in text["verdict-reason"]
    assert text["target-name"] == "embedded Dovecot (Dovecot 2.3.19.1)"
    assert "Dovecot (Debian) ready." in html and "<li>THREAD=REFERENCES</li>" in html and "<li>SASL PLAIN</li>" in html
    assert "profiles/dovecot.yaml" in html and "0.1.0" in html and "12.3 s" in html

    # Every test is listed, with its outcome.
    for test in results["tests"]:
        assert f'id="t-{test["id"]}"' in html
        assert f'data-outcomes="{test["outcome"]}"' in html
    # A failure: what was expected, what came, where, and the transcript folded away.
    failure = text["t-pop3.deletion.marks-only"]
    assert "expected -ERR" in failure and "got +OK 1523 octets" in failure
    assert "suites/pop3/deletion.yaml:23" in failure and "step p: RETR 1" in failure
    # a failure's transcript is open (issue 12 item 8)
    assert re.search(r"<details class=\"transcript\" open><summary>Transcript \(9 lines\)</summary><pre>"
                     r"  0.001 p S: \+OK Dovecot \(Debian\) ready.", html)
    # A message that only restates expected/got (the engine's) is not repeated above the table.
    idle = text["t-imap.idle.notify-exists"]
    assert "step 4" not in idle and "expected `* 2 EXISTS` got (nothing within 5 s)" in idle
    assert "i1: wait EXISTS: expected `* 2 EXISTS`, got (nothing within 5 s)" in text["attention"]
    # Profile reasons for expected deviations and skips.
    assert "Dovecot returns the whole body for &lt;0.0&gt; partial fetches" in html
    assert "profile disables the quota plugin tests" in text["t-imap.quota.getquotaroot"]
    # RFC references link to the section; metrics are shown with units.
    assert '<a class="rfc" href="https://www.rfc-editor.org/rfc/rfc1939#section-5"' in html
    assert "notify latency: 210 ms" in text["t-imap.idle.done-ends"]
    assert "imap.idle.notify-exists notify latency 5.0 s" in text["metrics"]
    # Counts by area and by protocol.
    assert "pop3+imap" in text["breakdown"] and "deletion" in text["breakdown"]
    assert "Needs attention" in text["attention"] and "imap.search.charset-utf8" in text["attention"]
    assert_self_contained(html)


def test_html_report_for_a_passing_run(tmp_path):
    path = tmp_path / "report.html"
    write_html_report(passing_results(), path)
    html = path.read_text()
    text = text_by_id(html)
    assert text["verdict"] == "PASS" and text["count-failed"] == "0"
    assert "attention" not in text  # nothing needs attention
    assert "banner-pass" in html


def test_writers_escape_server_text_and_add_nothing_beyond_the_input(tmp_path, monkeypatch, results):
    # Server-controlled text must stay text; data outside the results must not leak in.
    monkeypatch.setenv("MAILHARNESS_PASSWORD", "canary-env-secret")
    evil = '<script>alert("x")</script>'
    results["target"]["imap_greeting"] = f"* OK {evil}"
    results["target"]["password"] = "canary-extra-key"  # an unknown key: reports render known fields only
    results["tests"][2]["message"] = f"got {evil}"
    results["tests"][2]["credentials"] = "canary-test-key"
    results["tests"][0]["id"] = 'pop3.auth."quoted"'
    candidate = with_outcomes(results, **{"pop3.uidl.stable": "failed"})

    write_html_report(results, tmp_path / "report.html")
    comparison = compare_results(results, candidate)
    compare.write_compare_html(comparison, results, candidate, tmp_path / "compare.html")
    write_matrix_html(build_matrix([results, candidate]), tmp_path / "matrix.html")
    terminal = io.StringIO()
    print_summary(results, terminal)
    compare.print_comparison(comparison, terminal)
    outputs = {p.name: p.read_text() for p in tmp_path.glob("*.html")}
    outputs["terminal"] = terminal.getvalue()
    outputs["compare.json"] = json.dumps(comparison)

    for name, out in outputs.items():
        for canary in ("canary-env-secret", "canary-extra-key", "canary-test-key"):
            assert canary not in out, name
        if name.endswith(".html"):
            assert evil not in out, name
            assert 'pop3.auth."quoted"' not in out
            assert_self_contained(out)
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in outputs["report.html"]


# --- terminal ---------------------------------------------------------------------------------------------


def test_terminal_summary_for_ci_logs(results):
    out = io.StringIO()
    print_summary(results, out)
    text = out.getvalue()
    assert "\033[" not in text  # not a TTY: no colour
    lines = text.splitlines()
    header = next(line for line in lines if line.split()[:1] == ["area"])
    assert header.split() == ["area", "passed", "failed", "xfail", "skip", "error", "xpass", "total"]
    assert next(line for line in lines if line.split()[:1] == ["deletion"]).split() == ["deletion", "2", "1", "0", "0", "0", "0", "3"]
    assert next(line for line in lines if line.split()[:1] == ["total"]).split() == ["total", "6", "2", "2", "2", "1", "1", "14"]
    assert re.search(r"FAILED\s+pop3.deletion.marks-only\s+suites/pop3/deletion.yaml:23\n\s+RETR of a message", text)
    assert re.search(r"FAILED\s+imap.idle.notify-exists\s+suites/imap/idle.yaml:18\n"
                     r"\s+i1: wait EXISTS: expected `\* 2 EXISTS`, got \(nothing within 5 s\)\n", text)
    assert re.search(r"ERROR\s+imap.search.unknown-charset", text)
    assert re.search(r"XPASS\s+imap.search.charset-utf8\s+\S+\n\s+profile expected a deviation: older Dovecot", text)
    assert lines[-1] == ("FAIL: 2 failed, 1 error, 1 unexpected pass · 6 passed, 2 expected deviations, 2 skipped "
                         "(14 tests, 12.3 s)")


def test_terminal_summary_colour_rules(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    tty = Tty()
    print_summary(passing_results(), tty)
    assert "\033[1;32mPASS:" in tty.getvalue()
    assert "error" not in tty.getvalue().split("\n")[2]  # no error/xpass columns when there are none
    monkeypatch.setenv("NO_COLOR", "1")
    tty = Tty()
    print_summary(passing_results(), tty)
    assert "\033[" not in tty.getvalue()
    forced = io.StringIO()
    print_summary(passing_results(), forced, color=True)
    assert "\033[" in forced.getvalue()


# --- compare -----------------------------------------------------------------------------------------------


def _candidate(baseline: dict) -> dict:
    """A new release: one regression of each kind, a fix, other changes, a new and a removed test, new caps."""
    cand = with_evidence(with_outcomes(baseline, **{
        "pop3.deletion.marks-only": "failed",      # regression
        "imap.search.unknown-charset": "error",    # regression
        "imap.idle.done-ends": "xpassed",          # regression (profile now out of date)
        "imap.fetch.partial": "passed",            # other: expected deviation -> passed
        "pop3.uidl.stable": "skipped",             # other: passed -> skipped
    }))
    cand["tests"] = [t for t in cand["tests"] if t["id"] != "pop3.auth.apop"]
    cand["tests"].append(make_test("imap.move.copyuid", "failed", message="MOVE answered without COPYUID"))
    cand["tests"].append(make_test("imap.move.basic"))
    cand["target"]["name"] = "embedded Dovecot (Dovecot 2.4.0)"
    cand["target"]["imap_capabilities"] = [c for c in cand["target"]["imap_capabilities"] if c != "IDLE"] + ["objectid"]
    cand["target"]["pop3_capabilities"].append("STLS")
    cand.update(summarize(cand["tests"]))
    return cand


def test_compare_results_classifies_every_change():
    baseline = with_outcomes(passing_results(), **{"imap.idle.notify-exists": "failed", "imap.quota.getquotaroot": "failed"})
    candidate = with_outcomes(_candidate(baseline), **{"imap.idle.notify-exists": "passed"})
    c = compare_results(baseline, candidate)

    ids = {key: [e["id"] for e in c[key]] for key in
           ("regressions", "fixes", "other_changes", "new_tests", "removed_tests", "still_failing")}
    # Most serious first: errors, then failures, then unexpected passes.
    assert ids["regressions"] == ["imap.search.unknown-charset", "pop3.deletion.marks-only", "imap.idle.done-ends"]
    assert [(e["before"], e["after"]) for e in c["regressions"]] == [("passed", "error"), ("passed", "failed"),
                                                                     ("passed", "xpassed")]
    assert ids["fixes"] == ["imap.idle.notify-exists"]
    assert sorted(ids["other_changes"]) == ["imap.fetch.partial", "pop3.uidl.stable"]
    assert ids["new_tests"] == ["imap.move.copyuid", "imap.move.basic"]  # the failing new test first
    assert ids["removed_tests"] == ["pop3.auth.apop"]
    assert ids["still_failing"] == ["imap.quota.getquotaroot"]
    assert c["capabilities"] == {"imap": {"added": ["objectid"], "removed": ["IDLE"]},
                                 "pop3": {"added": ["STLS"], "removed": []}}
    assert c["identity_changes"] == [{"what": "target name", "before": "embedded Dovecot (Dovecot 2.3.19.1)",
                                      "after": "embedded Dovecot (Dovecot 2.4.0)"}]
    assert c["regressed"] is True
    assert c["regressions"][1]["location"] == "suites/pop3/deletion.yaml:23"


def test_compare_same_run_has_no_changes(results):
    c = compare_results(results, copy.deepcopy(results))
    assert not any(c[k] for k in ("regressions", "fixes", "other_changes", "new_tests", "removed_tests",
                                  "identity_changes"))
    assert c["unchanged"] == len(results["tests"]) and len(c["still_failing"]) == 4
    # Capability case does not count as a change (IMAP capabilities are case-insensitive).
    other = copy.deepcopy(results)
    other["target"]["imap_capabilities"] = [cap.lower() for cap in other["target"]["imap_capabilities"]]
    assert compare_results(results, other)["capabilities"]["imap"] == {"added": [], "removed": []}


def test_compare_cli_regression_exit_1_with_terminal_html_and_json(tmp_path, capsys):
    baseline = passing_results(started_at="2026-11-01T09:00:00+00:00")
    base = write_json(tmp_path / "base.json", baseline)
    (tmp_path / "new").mkdir()
    cand = write_json(tmp_path / "new" / "results.json", _candidate(baseline))

    assert run_cli(["compare", str(base), str(cand), "--json", str(tmp_path / "diff.json")]) == 1
    out = capsys.readouterr().out
    # Regressions come first, and the conclusion is the last line of the summary.
    assert out.index("REGRESSIONS (3)") < out.index("CAPABILITY CHANGES") < out.index("NEW TESTS (2)")
    assert re.search(r"passed -> failed\s+pop3.deletion.marks-only\s+suites/pop3/deletion.yaml:23", out)
    assert "IMAP removed  -IDLE" in out and "POP3 added    +STLS" in out
    assert "REMOVED TESTS (1)" in out and "pop3.auth.apop" in out
    assert "REGRESSION: 3 regressions" in out

    html = (tmp_path / "new" / "compare.html").read_text()  # default: next to the candidate
    text = text_by_id(html)
    assert text["verdict"] == "REGRESSION" and text["count-regressions"] == "3"
    assert "expected -ERR got +OK 1523 octets" in text["regressions"]  # the candidate's evidence
    assert "IDLE" in text["capabilities"] and "STLS" in text["capabilities"]
    assert "Dovecot 2.4.0" in text["identity-changes"]
    assert "imap.move.copyuid" in text["new-tests"] and "pop3.auth.apop" in text["removed-tests"]
    assert_self_contained(html)
    assert [e["id"] for e in json.loads((tmp_path / "diff.json").read_text())["removed_tests"]] == ["pop3.auth.apop"]


def test_compare_cli_no_regression_exit_0(tmp_path, capsys):
    baseline = with_outcomes(passing_results(), **{"pop3.deletion.marks-only": "failed"})
    candidate = passing_results()  # a fix only, and the candidate itself passes
    html = tmp_path / "diff.html"
    code = run_cli(["compare", str(write_json(tmp_path / "a.json", baseline)),
                    str(write_json(tmp_path / "b.json", candidate)), "--html", str(html)])
    assert code == 0
    out = capsys.readouterr().out
    assert "FIXES (1)" in out and "NO REGRESSION:" in out and "REGRESSIONS" not in out
    assert text_by_id(html.read_text())["verdict"] == "NO REGRESSION"
    assert not (tmp_path / "compare.html").exists()


def test_compare_a_failing_candidate_is_never_a_green_no_regression(tmp_path, capsys):
    """The same failures in both runs are no regression, but the candidate FAILED: exit 1, and the banner says so."""
    baseline = make_results()
    candidate = with_outcomes(baseline, **{"pop3.deletion.marks-only": "passed"})  # still fails elsewhere
    html = tmp_path / "diff.html"
    code = run_cli(["compare", str(write_json(tmp_path / "a.json", baseline)),
                    str(write_json(tmp_path / "b.json", candidate)), "--html", str(html)])
    assert code == 1
    out = capsys.readouterr().out
    assert "NO REGRESSION, BUT CANDIDATE FAIL:" in out.splitlines()[-2]
    assert "the candidate's own verdict is FAIL" in out
    text = text_by_id(html.read_text())
    assert text["verdict"] == "NO REGRESSION, BUT CANDIDATE FAIL"
    assert "Candidate verdict: FAIL" in text["candidate-verdict"]
    assert 'class="banner banner-fail"' in html.read_text()


def _incomplete(results: dict, **run) -> dict:
    results = copy.deepcopy(results)
    results.update(summarize(results["tests"], {"collected": len(results["tests"]) + 30, **run}))
    return results


@pytest.mark.parametrize("run, verdict", [
    ({"interrupted": "SIGTERM"}, "incomplete"),
    ({"collection_errors": ["suites/x.yaml:3: unknown key 'stesp'"]}, "error"),
    ({"error": "IMAP: no greeting within 5.0 s"}, "error"),
])
def test_compare_exits_1_when_the_candidate_did_not_run_everything(tmp_path, capsys, run, verdict):
    baseline = passing_results()
    candidate = _incomplete(passing_results(), **run)
    assert candidate["verdict"] == verdict
    code = run_cli(["compare", str(write_json(tmp_path / "a.json", baseline)), str(write_json(tmp_path / "b.json", candidate)),
                    "--html", str(tmp_path / "d.html")])
    assert code == 1
    out = capsys.readouterr().out
    assert f"NO REGRESSION, BUT CANDIDATE {verdict.upper()}" in out
    assert f"14 of {14 + 30} tests ran" in out


def test_compare_tests_missing_from_the_candidate_need_allow_removed(tmp_path, capsys):
    baseline = passing_results()
    candidate = copy.deepcopy(baseline)
    candidate["tests"] = [t for t in candidate["tests"] if not t["id"].startswith("imap.")]
    candidate.update(summarize(candidate["tests"]))
    a, b = write_json(tmp_path / "a.json", baseline), write_json(tmp_path / "b.json", candidate)
    assert run_cli(["compare", str(a), str(b), "--html", str(tmp_path / "d.html")]) == 1
    out = capsys.readouterr().out
    assert "did not run in the candidate (--allow-removed if that is intended)" in out
    assert "NO REGRESSION, BUT TESTS MISSING:" in out
    assert run_cli(["compare", str(a), str(b), "--html", str(tmp_path / "d.html"), "--allow-removed"]) == 0
    assert "NO REGRESSION:" in capsys.readouterr().out


def test_compare_shows_new_warnings_and_strict_counts_them(tmp_path, capsys):
    baseline = passing_results()
    candidate = with_outcomes(baseline, **{"imap.idle.done-ends": "warning"})
    assert candidate["verdict"] == "pass"
    c = compare_results(baseline, candidate)
    assert [e["id"] for e in c["new_warnings"]] == ["imap.idle.done-ends"] and c["certified"]
    assert compare_results(baseline, candidate, strict=True)["regressions"][0]["id"] == "imap.idle.done-ends"
    a, b = write_json(tmp_path / "a.json", baseline), write_json(tmp_path / "b.json", candidate)
    assert run_cli(["compare", str(a), str(b), "--html", str(tmp_path / "d.html")]) == 0
    out = capsys.readouterr().out
    assert "NEW WARNINGS (1)" in out and "passed -> warning (SHOULD)" in out
    assert text_by_id((tmp_path / "d.html").read_text())["count-new-warnings"] == "1"
    assert run_cli(["compare", str(a), str(b), "--html", str(tmp_path / "d.html"), "--strict"]) == 1


def test_compare_cli_bad_input_exit_2(tmp_path, capsys):
    good = write_json(tmp_path / "good.json", make_results())
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": 1, "tests": [')
    assert run_cli(["compare", str(tmp_path / "missing.json"), str(good)]) == 2
    assert "missing.json: no such results file" in capsys.readouterr().err
    assert run_cli(["compare", str(good), str(bad)]) == 2
    assert "bad.json:1: not valid JSON" in capsys.readouterr().err


# --- matrix --------------------------------------------------------------------------------------------------


def _three_runs() -> list[dict]:
    dovecot23 = passing_results(started_at="2026-11-01T09:00:00+00:00")
    dovecot24 = _candidate(dovecot23)
    cyrus = make_results(profile=None, started_at="2026-11-20T08:30:00+00:00")
    cyrus["target"]["name"] = "Cyrus IMAP 3.8"
    cyrus["tests"] = [t for t in cyrus["tests"] if not t["id"].startswith("cross.")]
    cyrus.update(summarize(cyrus["tests"]))
    return [dovecot23, dovecot24, cyrus]


def test_matrix_renders_all_tests_and_runs(tmp_path):
    runs = _three_runs()
    mx = build_matrix(runs)
    all_ids = {t["id"] for r in runs for t in r["tests"]}
    assert mx["test_count"] == len(all_ids)
    path = write_matrix_html(mx, tmp_path / "matrix.html")
    html = path.read_text()
    text = text_by_id(html)
    for test_id in all_ids:
        assert f'data-id="{test_id}"' in html
    for i, run in enumerate(runs, 1):
        assert run["target"]["name"] in text[f"run-{i}"]
    assert "2026-11-20 08:30 UTC" in text["run-3"] and "FAIL" in text["run-3"]
    # One cell per run in every row; absent tests get an explicit empty cell.
    rows = re.findall(r"<tr class=\"test-line.*?</tr>", html, re.DOTALL)
    assert len(rows) == len(all_ids)
    assert all(row.count('<td class="cell') == 3 for row in rows)
    cross = next(row for row in rows if 'data-id="cross.flags.seen-after-retr"' in row)
    assert 'class="cell o-missing"' in cross and 'data-differs="1"' in cross
    marks = next(row for row in rows if 'data-id="pop3.deletion.marks-only"' in row)
    assert re.search(r'class="cell o-failed" title="pop3.deletion.marks-only: failed\nRETR of a message', marks)
    assert "10 / 10" in text["by-area"] or "3 / 3" in text["by-area"]
    assert_self_contained(html)


def test_matrix_cli_labels_and_errors(tmp_path, capsys):
    paths = [str(write_json(tmp_path / f"run{i}.json", r)) for i, r in enumerate(_three_runs())]
    out = tmp_path / "m.html"
    labels = ["--label", "Dovecot 2.3", "--label", "Dovecot 2.4", "--label", "Cyrus"]
    assert run_cli(["matrix", *paths, "-o", str(out), *labels]) == 0
    assert "matrix of 3 runs × 16 tests written to" in capsys.readouterr().out
    text = text_by_id(out.read_text())
    assert text["run-1"].startswith("Dovecot 2.3 embedded Dovecot (Dovecot 2.3.19.1)") and "Cyrus" in text["run-3"]
    assert run_cli(["matrix", *paths, "-o", str(out), "--label", "only one"]) == 2
    assert "--label given 1 time for 3 runs" in capsys.readouterr().err
    assert run_cli(["matrix", paths[0], str(tmp_path / "nope.json"), "-o", str(out)]) == 2


def test_matrix_markdown_lists_every_test_that_is_not_a_plain_pass(tmp_path):
    runs = _three_runs()
    paths = [str(write_json(tmp_path / f"run{i}.json", r)) for i, r in enumerate(runs)]
    out = tmp_path / "matrix.md"
    assert run_cli(["matrix", *paths, "-o", str(out), "--label", "A", "--label", "B", "--label", "C"]) == 0
    md = out.read_text()
    rows = {line.split("|")[1].strip().strip("`"): [c.strip() for c in line.split("|")[2:-1]]
            for line in md.splitlines() if line.startswith("| `")}
    not_plain = {t["id"] for r in runs for t in r["tests"] if t["outcome"] != "passed"}
    missing = {t["id"] for r in runs for t in r["tests"]} - {t["id"] for t in runs[2]["tests"]}
    assert set(rows) == not_plain | missing
    assert rows["pop3.deletion.marks-only"][2] == "**FAIL**"
    assert rows["cross.flags.seen-after-retr"][2] == "-"
    assert "- `pop3.deletion.marks-only` on C: RETR of a message" in md


# --- in a real browser -----------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (`make setup-test` or apt-get install chromium)")


def browser_dom(url: str) -> str:
    """The DOM after scripts ran; fails on any script error or blocked load (CSP) logged to the console."""
    with tempfile.TemporaryDirectory(prefix="mh-chromium-") as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True, text=True, timeout=90, check=False,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    return proc.stdout


@needs_chromium
def test_report_in_chromium_shows_verdict_counts_and_filters(tmp_path, results):
    path = tmp_path / "report.html"
    write_html_report(results, path)

    dom = browser_dom(path.as_uri())
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-ready="1"' in body and "data-script-error" not in body
    text = text_by_id(dom)
    assert text["verdict"] == "FAIL"
    assert text["count-failed"] == "2" and text["count-passed"] == "6" and text["count-total"] == "14"
    assert text["filter-shown"] == "14"

    # A link such as report.html#outcome=failed,error&area=idle opens a filtered view.
    dom = browser_dom(path.as_uri() + "#outcome=failed,error&area=idle")
    assert 'data-shown="1"' in re.search(r"<body[^>]*>", dom).group(0)
    visible = re.findall(r'<li class="test[^"]*" id="t-([^"]+)"(?![^>]*hidden)', dom)
    assert visible == ["imap.idle.notify-exists"]
    assert re.search(r'<section class="group" data-filter-group="" data-area="deletion" hidden=""', dom)


@needs_chromium
def test_compare_and_matrix_pages_run_in_chromium(tmp_path):
    runs = _three_runs()
    comparison = compare_results(runs[0], runs[1])
    compare.write_compare_html(comparison, runs[0], runs[1], tmp_path / "compare.html")
    write_matrix_html(build_matrix(runs), tmp_path / "matrix.html")

    dom = browser_dom((tmp_path / "compare.html").as_uri())
    assert 'data-ready="1"' in re.search(r"<body[^>]*>", dom).group(0)
    assert text_by_id(dom)["verdict"] == "REGRESSION"
    dom = browser_dom((tmp_path / "matrix.html").as_uri() + "#differs=1")
    body = re.search(r"<body[^>]*>", dom).group(0)
    differing = sum(row["differs"] for area in build_matrix(runs)["areas"] for row in area["tests"])
    assert 'data-ready="1"' in body and f'data-shown="{differing}"' in body


def test_terminal_shows_expected_and_got_of_a_multi_line_failure():
    """The engine's message indents a multi-line "got"; the summary still shows expected and got, not just the step."""
    failure = {"file": "suites/imap/append.yaml", "line": 238, "step": "a: STATUS INBOX (MESSAGES)",
               "expected": "untagged responses matching: `* STATUS INBOX (MESSAGES 0)`",
               "got": "untagged responses:\n* STATUS INBOX (MESSAGES 1)"}
    message = ("imap.append.status-counts: step 1 `a: STATUS INBOX (MESSAGES)` at suites/imap/append.yaml:238\n"
               "  expected: untagged responses matching: `* STATUS INBOX (MESSAGES 0)`\n"
               "  got:      untagged responses:\n            * STATUS INBOX (MESSAGES 1)")
    results = passing_results()
    results["tests"].append(make_test("imap.append.status-counts", "failed", message=message, failure=failure))
    results["summary"], results["verdict"] = summarize(results["tests"]), "fail"
    out = io.StringIO()
    print_summary(results, out)
    assert re.search(r"FAILED\s+imap.append.status-counts\s+suites/imap/append.yaml:238\n\s+a: STATUS INBOX \(MESSAGES\): "
                     r"expected untagged responses matching: `\* STATUS INBOX \(MESSAGES 0\)`, got untagged responses: "
                     r"\* STATUS INBOX \(MESSAGES 1\)\n", out.getvalue()), out.getvalue()
