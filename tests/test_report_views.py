"""report.html views people open (issue 12 item 8): YAML links, the failing exchange, skip reasons, by RFC."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from report_data import make_results, make_test

from harness.reports.html_report import counts_by_rfc, write_html_report
from harness.reports.results import rfc_sort_key

TRANSCRIPT = """\
  0.001 p S: +OK Dovecot (Debian) ready.
  0.002 p C: USER user1
  0.003 p S: +OK
  0.012 p C: DELE 1
  0.013 p S: +OK Marked to be deleted.
  0.013 p C: RETR 1
  0.014 p S: +OK 1523 octets
  0.015 p S: <b>not markup</b>
  0.016 p C: QUIT
  0.017 p S: +OK Logging out.
"""


def _tests(suite: Path) -> list[dict]:
    failure = {"file": str(suite), "line": 14, "step": "p: RETR 1", "expected": "`-ERR`", "got": "+OK 1523 octets",
               "transcript_lines": [6, 8]}
    return [
        make_test("pop3.dele.marked", "failed", file=str(suite), line=7, rfc=["RFC1939 §6", "RFC1939 §10"],
                  failure=failure, message="step 2 `p: RETR 1` ...", transcript=TRANSCRIPT),
        make_test("pop3.dele.rset", "passed", file=str(suite), line=20, rfc=["RFC1939 §6"], transcript=TRANSCRIPT),
        make_test("imap.quota.get", "skipped", file="elsewhere/imap/quota.yaml", rfc=["RFC9208 §4.2"],
                  message="server does not advertise IMAP capability QUOTA"),
        make_test("imap.quota.set", "skipped", file="elsewhere/imap/quota.yaml", rfc=["RFC9208 §4.1"],
                  message="server does not advertise IMAP capability QUOTA"),
        make_test("imap.lock.x", "skipped", file="suites/imap/x.yaml", rfc=["RFC3501 §6.3.1"],
                  message="profile dovecot: not on this server"),
    ]


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: dict[str, str] = {}
        self._href = None
        self.open_transcripts = 0
        self.marked: list[str] = []
        self._in_mark = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a":
            self._href = attrs.get("href")
        if tag == "details" and "transcript" in (attrs.get("class") or "") and "open" in attrs:
            self.open_transcripts += 1
        if tag == "mark" and attrs.get("class") == "failing":
            self._in_mark = True
            self.marked.append("")

    def handle_endtag(self, tag):
        if tag == "a":
            self._href = None
        if tag == "mark":
            self._in_mark = False

    def handle_data(self, data):
        if self._href and re.search(r"\.yaml:\d+$", data.strip()):
            self.links[data.strip()] = self._href
        if self._in_mark:
            self.marked[-1] += data


def _render(tmp_path: Path) -> tuple[str, _Collect]:
    suite = tmp_path / "suites" / "pop3" / "deletion.yaml"
    suite.parent.mkdir(parents=True)
    suite.write_text("suite: x\n")
    out = tmp_path / "reports" / "latest" / "report.html"
    write_html_report(make_results(_tests(suite)), out)
    html = out.read_text()
    parser = _Collect()
    parser.feed(html)
    return html, parser


def test_yaml_locations_link_to_local_files_only(tmp_path):
    html, parsed = _render(tmp_path)
    suite = tmp_path / "suites" / "pop3" / "deletion.yaml"
    assert parsed.links[f"{suite}:7"] == "../../suites/pop3/deletion.yaml"  # relative to the report: survives a copy
    assert parsed.links[f"{suite}:14"] == "../../suites/pop3/deletion.yaml"  # the failing step, in Needs attention
    assert not any("quota.yaml" in text for text in parsed.links)  # not here: text, not a dead link
    assert "elsewhere/imap/quota.yaml:10" in html


def test_a_failed_transcript_is_open_with_the_failing_exchange_marked(tmp_path):
    html, parsed = _render(tmp_path)
    assert parsed.open_transcripts == 1  # the failed test's; the passed test's stays closed
    assert parsed.marked == [
        "  0.013 p C: RETR 1", "  0.014 p S: +OK 1523 octets", "  0.015 p S: <b>not markup</b>",
    ]
    assert "<b>not markup</b>" not in html  # escaped inside the mark


def test_skip_reasons_are_listed_most_common_first(tmp_path):
    html, _ = _render(tmp_path)
    section = html.split('id="skips"', 1)[1].split("</section>", 1)[0]
    first, second = section.index("IMAP capability QUOTA"), section.index("not on this server")
    assert first < second
    assert "(2 tests)" in section and "imap.quota.get" in section and "imap.quota.set" in section


def test_by_rfc_view_counts_each_cited_section(tmp_path):
    html, _ = _render(tmp_path)
    groups = {ref: counts for ref, counts, _ in counts_by_rfc(_tests(tmp_path / "s.yaml"))}
    assert list(groups) == ["RFC1939 §6", "RFC1939 §10", "RFC3501 §6.3.1", "RFC9208 §4.1", "RFC9208 §4.2"]
    assert (groups["RFC1939 §6"]["failed"], groups["RFC1939 §6"]["passed"], groups["RFC1939 §6"]["total"]) == (1, 1, 2)
    assert groups["RFC1939 §10"]["failed"] == 1 and groups["RFC1939 §10"]["total"] == 1
    section = html.split('id="by-rfc"', 1)[1].split("</section>", 1)[0]
    assert "https://www.rfc-editor.org/rfc/rfc1939#section-10" in section
    assert section.index("RFC1939 §6") < section.index("RFC1939 §10") < section.index("RFC9208 §4.1")


def test_rfc_sections_sort_numerically():
    refs = ["RFC3501 §6.4.10", "RFC1939", "RFC3501 §6.4.9", "RFC3501 §A.1", "not an rfc", "RFC3501 §6"]
    assert sorted(refs, key=rfc_sort_key) == ["RFC1939", "RFC3501 §6", "RFC3501 §6.4.9", "RFC3501 §6.4.10",
                                              "RFC3501 §A.1", "not an rfc"]
