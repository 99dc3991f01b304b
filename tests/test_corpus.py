"""The message corpus and the reference implementation of IMAP body sections.

Unit tests use small inline messages with hand-computed answers; the Dovecot tests then check
the reference against a real server for every corpus message, byte for byte.
"""

from __future__ import annotations

import re

import pytest

from harness import corpus
from harness.corpus.sections import SectionError, parts, section, size, top
from harness.sessions import IMAPSession
from harness.targets.managed_dovecot import ManagedDovecot

SIMPLE = b"From: a@example.com\r\nSubject: hello\r\n world\r\n\r\nline1\r\nline2\r\n"

MULTI = (
    b"Content-Type: multipart/mixed; boundary=XX\r\n"
    b"\r\n"
    b"preamble\r\n"
    b"--XX\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"part one\r\n"
    b"--XX  \r\n"  # transport padding after the boundary is allowed
    b"\r\n"
    b"part two, no header\r\n"
    b"\r\n"
    b"--XX--\r\n"
    b"epilogue\r\n"
)

INNER = (
    b"Subject: inner\r\n"
    b"Content-Type: multipart/alternative; boundary=\"i\"\r\n"
    b"\r\n"
    b"--i\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"inner text\r\n"
    b"--i\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<p>inner</p>\r\n"
    b"--i--"
)
NESTED = (
    b"Content-Type: multipart/mixed; boundary=\"o\"\r\n"
    b"\r\n"
    b"--o\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"hi\r\n"
    b"--o\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n" + INNER + b"\r\n"
    b"--o\r\n"
    b"Content-Type: MESSAGE/RFC822\r\n"
    b"\r\n"
    b"Subject: simple inner\r\n"
    b"\r\n"
    b"just text\r\n"
    b"--o--\r\n"
)


# -- sections: hand-computed expectations ------------------------------------------------------
def test_sections_of_a_single_part_message():
    header = b"From: a@example.com\r\nSubject: hello\r\n world\r\n\r\n"
    assert section(SIMPLE, "") == SIMPLE
    assert section(SIMPLE, "HEADER") == header
    assert section(SIMPLE, "TEXT") == b"line1\r\nline2\r\n"
    assert section(SIMPLE, "1") == b"line1\r\nline2\r\n"  # the only part is the body
    assert section(SIMPLE, "1.MIME") == header
    assert section(SIMPLE, "2") == b""  # nonexistent parts are empty
    assert section(SIMPLE, "1.1") == b""
    assert section(SIMPLE, "1.HEADER") == b""  # HEADER of a part needs message/rfc822
    assert section(SIMPLE, "header.fields (subject)") == b"Subject: hello\r\n world\r\n\r\n"
    assert section(SIMPLE, "HEADER.FIELDS (X-NONE)") == b"\r\n"
    assert section(SIMPLE, "HEADER.FIELDS.NOT (SUBJECT)") == b"From: a@example.com\r\n\r\n"
    assert parts(SIMPLE) == {"1": "text/plain"}


def test_sections_of_a_multipart():
    assert section(MULTI, "1") == b"part one"  # the CRLF before the delimiter belongs to it
    assert section(MULTI, "1.MIME") == b"Content-Type: text/plain\r\n\r\n"
    assert section(MULTI, "2") == b"part two, no header\r\n"
    assert section(MULTI, "2.MIME") == b"\r\n"
    assert section(MULTI, "3") == b""
    assert section(MULTI, "TEXT").startswith(b"preamble\r\n--XX\r\n")
    assert section(MULTI, "TEXT").endswith(b"--XX--\r\nepilogue\r\n")
    assert parts(MULTI) == {"1": "text/plain", "2": "text/plain"}


def test_sections_of_encapsulated_messages():
    assert section(NESTED, "1") == b"hi"
    assert section(NESTED, "2") == INNER  # the whole encapsulated message
    assert section(NESTED, "2.MIME") == b"Content-Type: message/rfc822\r\n\r\n"
    assert section(NESTED, "2.HEADER") == INNER[:INNER.index(b"\r\n\r\n") + 4]
    assert section(NESTED, "2.TEXT") == INNER[INNER.index(b"\r\n\r\n") + 4:]
    assert section(NESTED, "2.1") == b"inner text"
    assert section(NESTED, "2.2") == b"<p>inner</p>"
    assert section(NESTED, "2.2.MIME") == b"Content-Type: text/html\r\n\r\n"
    assert section(NESTED, "2.3") == b""
    assert section(NESTED, "2.HEADER.FIELDS (SUBJECT)") == b"Subject: inner\r\n\r\n"
    # A non-multipart encapsulated message has one part: its body.
    assert section(NESTED, "3.1") == b"just text"
    assert section(NESTED, "3.1.MIME") == b"Subject: simple inner\r\n\r\n"
    assert section(NESTED, "3.TEXT") == b"just text"
    assert parts(NESTED) == {
        "1": "text/plain", "2": "message/rfc822", "2.1": "text/plain", "2.2": "text/html",
        "3": "message/rfc822", "3.1": "text/plain",
    }


def test_partial_slices_like_origin_dot_length():
    assert section(SIMPLE, "TEXT", (2, 5)) == b"ne1\r\n"
    assert section(SIMPLE, "TEXT", (0, 1000)) == b"line1\r\nline2\r\n"
    assert section(SIMPLE, "TEXT", (14, 10)) == b""  # origin at the end
    assert section(SIMPLE, "TEXT", (500, 10)) == b""  # origin past the end


def test_digest_parts_default_to_message_rfc822():
    digest = (
        b"Content-Type: multipart/digest; boundary=d\r\n\r\n"
        b"--d\r\n\r\nSubject: one\r\n\r\nfirst\r\n"
        b"--d--\r\n"
    )
    assert parts(digest) == {"1": "message/rfc822", "1.1": "text/plain"}
    assert section(digest, "1.TEXT") == b"first"


def test_missing_close_delimiter_runs_to_the_end():
    msg = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\none\r\n--b\r\n\r\ntwo\r\n"
    assert section(msg, "1") == b"one"
    assert section(msg, "2") == b"two\r\n"


@pytest.mark.parametrize("spec", ["0", "1.0", "MIME", "HEADER.FIELDS", "TEXT (A)", "1HEADER", "FOO", "1..2"])
def test_malformed_section_specs_are_rejected(spec):
    with pytest.raises(SectionError):
        section(SIMPLE, spec)


def test_top_and_size():
    header = b"From: a@example.com\r\nSubject: hello\r\n world\r\n\r\n"
    assert top(SIMPLE, 0) == header
    assert top(SIMPLE, 1) == header + b"line1\r\n"
    assert top(SIMPLE, 99) == SIMPLE
    assert top(b"Subject: x\r\n\r\nno final line end", 5) == b"Subject: x\r\n\r\nno final line end\r\n"
    assert size(SIMPLE) == len(SIMPLE)


# -- the corpus ------------------------------------------------------------------------------------
REQUIRED = [
    "plain", "plain-long", "multipart-alternative", "attachment", "nested-rfc822", "eight-bit", "dot-lines",
    "large", "search-alpha", "search-beta",
]


def _header(msg: bytes) -> bytes:
    return section(msg, "HEADER")


def _field(msg: bytes, name: str) -> bytes:
    pattern = rb"^" + name.encode() + rb":[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)"
    m = re.search(pattern, _header(msg), re.IGNORECASE | re.MULTILINE)
    assert m, f"no {name}"
    return m.group(1)


def test_corpus_has_the_named_messages():
    assert set(REQUIRED) <= set(corpus.names())
    assert corpus.names() == sorted(corpus.names())
    with pytest.raises(KeyError, match="no corpus message 'nope'"):
        corpus.message("nope")


@pytest.mark.parametrize("name", REQUIRED)
def test_every_message_is_well_formed(name):
    msg = corpus.message(name)
    assert msg is corpus.message(name)  # cached
    assert b"\n" not in msg.replace(b"\r\n", b""), "only CRLF line ends"
    assert msg.endswith(b"\r\n")
    for field in ("Message-ID", "Date", "From", "To", "Subject"):
        _field(msg, field)
    assert _field(msg, "X-Mailharness-Corpus") == name.encode()
    assert _header(msg).isascii(), "header fields are ASCII (non-ASCII names use RFC 2047)"


def test_corpus_shapes():
    assert len(section(corpus.message("plain-long"), "TEXT").split(b"\r\n")) > 60
    assert parts(corpus.message("multipart-alternative")) == {"1": "text/plain", "2": "text/html"}
    att = corpus.message("attachment")
    assert parts(att) == {"1": "text/plain", "2": "application/pdf", "3": "text/csv"}
    assert 3500 < len(section(att, "2")) < 4500  # ~3 KB once decoded
    nested = parts(corpus.message("nested-rfc822"))
    assert nested["3"] == "message/rfc822" and nested["3.1"] == "text/plain" and nested["3.2"] == "text/html"
    eight = corpus.message("eight-bit")
    assert not section(eight, "TEXT").isascii()
    assert _field(eight, "Subject").startswith(b"=?UTF-8?") and _field(eight, "From").startswith(b"=?UTF-8?")
    dot_body = section(corpus.message("dot-lines"), "TEXT").split(b"\r\n")
    assert {b".", b"..", b" ."} <= set(dot_body) and any(x.startswith(b".hidden") for x in dot_body)
    large = corpus.message("large")
    assert 380_000 < len(large) < 420_000
    assert parts(large)["2"] == "application/octet-stream"


def test_search_messages_differ_as_the_search_tests_need():
    alpha, beta = corpus.message("search-alpha"), corpus.message("search-beta")
    assert b"alice@example.org" in _field(alpha, "From") and _field(alpha, "Subject") == b"Quarterly report alpha"
    assert b"bob@example.net" in _field(beta, "From") and _field(beta, "Subject") == b"Lunch plans beta"
    assert b"zebrafish" in alpha and b"zebrafish" not in beta
    assert b"okapi" in beta and b"okapi" not in alpha
    assert len(beta) - len(alpha) >= 2048
    assert b"2024" in _field(alpha, "Date") and b"2025" in _field(beta, "Date")


def test_subject_override_changes_only_the_subject_line():
    base = corpus.message("plain-long")  # its Subject is folded over two lines
    new = corpus.message("plain-long", subject="Unique subject 42")
    assert _field(new, "Subject") == b"Unique subject 42"
    old_subject = re.search(rb"^Subject:.*\r\n(?:[ \t].*\r\n)*", base, re.MULTILINE).group(0)
    assert new == base.replace(old_subject, b"Subject: Unique subject 42\r\n")
    assert corpus.message("plain-long") == base  # the cached original is untouched
    encoded = corpus.message("plain", subject="Grüße")
    assert _field(encoded, "Subject").startswith(b"=?utf-8?")


def test_extra_headers_go_at_the_end_of_the_header():
    msg = corpus.message("plain", extra_headers={"X-Run": "7", "Keywords": "a, b"})
    assert section(msg, "HEADER").endswith(b"X-Mailharness-Corpus: plain\r\nX-Run: 7\r\nKeywords: a, b\r\n\r\n")
    assert section(msg, "TEXT") == section(corpus.message("plain"), "TEXT")
    with pytest.raises(ValueError):
        corpus.message("plain", extra_headers=[("Bad Name", "x")])


# -- the reference against a real server -------------------------------------------------------------
@pytest.fixture(scope="module")
def inbox():
    """Every corpus message APPENDed to a fresh account's INBOX; yields (session, {name: sequence number})."""
    with ManagedDovecot(accounts=1) as dc:
        account = dc.target.accounts[0]
        with IMAPSession(dc.target.imap.host, dc.target.imap.port, timeout=10) as s:
            s.login(account.user, account.password)
            seq = {}
            for n, name in enumerate(corpus.names(), 1):
                msg = corpus.message(name)
                assert s.command(f"APPEND INBOX {{{len(msg)}}}", literals=[msg]).ok
                seq[name] = n
            assert s.command("EXAMINE INBOX").ok
            yield s, seq


def _specs(msg: bytes) -> list[tuple[str, tuple[int, int] | None]]:
    specs: list[tuple[str, tuple[int, int] | None]] = [
        ("", None), ("HEADER", None), ("TEXT", None),
        ("HEADER.FIELDS (FROM SUBJECT)", None), ("HEADER.FIELDS.NOT (SUBJECT DATE)", None),
        ("", (0, 100)), ("TEXT", (10, 50)), ("", (len(msg) - 5, 100)), ("TEXT", (len(msg) + 10, 5)),
    ]
    for number, mime_type in parts(msg).items():
        specs += [(number, None), (f"{number}.MIME", None), (number, (3, 40))]
        if mime_type == "message/rfc822":
            specs += [(f"{number}.HEADER", None), (f"{number}.TEXT", None)]
    specs += [("9", None), ("1.9", None)]  # nonexistent: empty
    return specs


@pytest.mark.parametrize("name", corpus.names())
def test_reference_sections_match_dovecot(inbox, name):
    session, seq = inbox
    msg = corpus.message(name)
    specs = _specs(msg)
    items = " ".join(f"BODY.PEEK[{spec}]" + (f"<{p[0]}.{p[1]}>" if p else "") for spec, p in specs)
    resp = session.command(f"FETCH {seq[name]} (RFC822.SIZE {items})", timeout=10)
    assert resp.ok, resp.line
    data = resp.untagged[-1].fetch()
    assert data[b"RFC822.SIZE"] == size(msg)
    fetched = {k.upper(): v for k, v in data.items()}
    for spec, partial in specs:
        key = f"BODY[{spec}]" + (f"<{partial[0]}>" if partial else "")
        got = fetched[key.upper().encode()]
        assert (got or b"") == section(msg, spec, partial), f"{name}: BODY[{spec}]{partial or ''}"
