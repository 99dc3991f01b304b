"""POP3 body checks that hold on any RFC 1939 server: the original header fields and the body, not the bytes.

The suites run through a proxy that renumbers messages and adds header fields (tests/faultproxy.py,
variant pop3-reordered-added-headers); these tests pin down the comparison itself.
"""

from __future__ import annotations

import pytest

from harness import corpus
from harness.corpus.sections import top
from harness.engine.pop3_view import Pop3View, compare_message, corpus_name, header_and_body

PLAIN = corpus.message("plain")
HEADER, BODY = header_and_body(PLAIN)


def test_identical_bytes_compare_equal():
    assert compare_message(PLAIN, PLAIN) == (None, [])


def test_added_fields_anywhere_are_allowed_and_reported():
    got = b"Return-Path: <a@b>\r\nReceived: from x\r\n by y; Tue, 1 Dec 2026\r\n" + HEADER[:-2] + b"Status: RO\r\nX-UID: 4\r\n\r\n" + BODY
    problem, added = compare_message(PLAIN, got)
    assert problem is None
    assert [f.split(b":")[0] for f in added] == [b"Return-Path", b"Received", b"Status", b"X-UID"]


@pytest.mark.parametrize("label, mangle, fragment", [
    ("a body byte changed", lambda m: m[:-5] + b"X" + m[-4:], "body"),
    ("a body line lost", lambda m: m[:m.rindex(b"Carol")], "body"),
    ("an original field changed", lambda m: m.replace(b"Subject: Project sync", b"Subject: project sync"), "Subject"),
    ("an original field dropped", lambda m: m.replace(b"MIME-Version: 1.0\r\n", b""), "MIME-Version"),
    ("fields reordered", lambda m: m.replace(b"From: Carol Jones <carol@example.com>\r\nTo: Dave Smith <dave@example.com>\r\n",
                                             b"To: Dave Smith <dave@example.com>\r\nFrom: Carol Jones <carol@example.com>\r\n"), "out of order"),
    ("no blank line after the header", lambda m: m.replace(b"\r\n\r\n", b"\r\n"), "blank line"),
    ("a header line that is no field", lambda m: b"garbage line\r\n" + m, "not a header field"),
])
def test_real_differences_fail(label, mangle, fragment):
    got = mangle(PLAIN)
    assert got != PLAIN, label
    problem, _ = compare_message(PLAIN, got)
    assert problem and fragment in problem, (label, problem)


def test_top_compares_exactly_n_body_lines():
    message = corpus.message("plain-long")
    expected = top(message, 3)
    assert compare_message(expected, top(message, 3))[0] is None
    assert "body" in compare_message(expected, top(message, 4))[0]
    assert "body" in compare_message(expected, top(message, 2))[0]


def test_corpus_name_is_read_from_the_harness_field_whatever_its_case():
    assert corpus_name(HEADER) == "plain"
    assert corpus_name(HEADER.replace(b"X-Mailharness-Corpus", b"x-mailharness-corpus")) == "plain"
    assert corpus_name(b"Subject: foreign mail\r\n\r\n") is None


def test_view_sizes_follow_the_servers_header_and_the_corpus_body():
    view = Pop3View(numbers={"plain": [2], "dot-lines": [1]},
                    headers={2: b"Status: RO\r\n" + HEADER, 1: header_and_body(corpus.message("dot-lines"))[0]})
    assert view.bindings([("msg", "plain"), ("size", "plain"), ("size", "plain+dot-lines")]) == {
        "msg:plain": "2",
        "size:plain": str(len(PLAIN) + len(b"Status: RO\r\n")),
        "size:plain+dot-lines": str(len(PLAIN) + 12 + len(corpus.message("dot-lines"))),
    }


def test_an_unknown_or_ambiguous_message_is_a_clear_error():
    from harness.engine.patterns import PatternError

    view = Pop3View(numbers={"plain": [1, 2]}, headers={1: HEADER, 2: HEADER})
    with pytest.raises(PatternError, match=r"2 messages \(1, 2\) of this session's maildrop are corpus plain|2 messages"):
        view.number("plain")
    with pytest.raises(PatternError, match="no message of this session's maildrop is corpus attachment"):
        view.number("attachment")
