"""Response patterns: captures, wildcards, regexes."""

from __future__ import annotations

import pytest

from harness.engine.patterns import Pattern, PatternError, substitute


def test_capture_then_compare():
    p = Pattern("* $n EXISTS")
    assert p.match("* 3 EXISTS", {}) == {"n": "3"}
    assert p.match("* 3 EXISTS", {"n": "3"}) == {}
    assert p.match("* 4 EXISTS", {"n": "3"}) is None
    assert p.match("* 3 RECENT", {}) is None


def test_case_and_whitespace_insensitive():
    assert Pattern("* ok [uidvalidity $uv] ...").match("* OK  [UIDVALIDITY 1700000000] UIDs valid", {}) == {"uv": "1700000000"}


def test_capture_stops_at_brackets_and_parens():
    assert Pattern("OK [APPENDUID $v $u] ...").match("OK [APPENDUID 17 42] Append completed.", {}) == {"v": "17", "u": "42"}
    assert Pattern("* $n FETCH (UID $uid)").match("* 1 FETCH (UID 9)", {}) == {"n": "1", "uid": "9"}


def test_wildcard_and_tail():
    assert Pattern("* 1 FETCH (FLAGS (...\\Seen...))").match("* 1 FETCH (FLAGS (\\Answered \\Seen))", {}) == {}
    assert Pattern("-ERR").match("-ERR no such message", {}, allow_tail=True) == {}
    assert Pattern("-ERR").match("-ERR no such message", {}) is None
    assert Pattern("+OK").match("+OKAY", {}, allow_tail=True) is None


def test_same_new_variable_twice_must_be_equal():
    p = Pattern("$a $a")
    assert p.match("x x", {}) == {"a": "x"}
    assert p.match("x y", {}) is None


def test_regex_pattern():
    assert Pattern(r"re:\+OK (?P<count>\d+) \d+").match("+OK 2 640", {}) == {"count": "2"}


def test_size_function():
    from harness import corpus

    size = len(corpus.message("plain"))
    assert Pattern("+OK 1 ${size:plain}").match(f"+OK 1 {size}", {}) == {}
    with pytest.raises(PatternError, match="no corpus message"):
        Pattern("${size:nope}").match("1", {})


def test_substitute():
    assert substitute("UID FETCH $uid FLAGS", {"uid": "7"}) == "UID FETCH 7 FLAGS"
    with pytest.raises(PatternError, match=r"\$uid is not set"):
        substitute("UID FETCH $uid FLAGS", {})


def test_literal_dollar_and_braced_variables():
    assert substitute("STORE 1 +FLAGS ($$Forwarded)", {}) == "STORE 1 +FLAGS ($Forwarded)"
    assert substitute("CREATE Projects${delim}Alpha", {"delim": "/"}) == "CREATE Projects/Alpha"
    assert Pattern("* 1 FETCH (FLAGS ($$Forwarded))").match("* 1 FETCH (FLAGS ($Forwarded))", {}) == {}
    assert Pattern("* LIST () \"${d}\" A${d}B").match('* LIST () "." A.B', {}) == {"d": "."}


def test_literals_in_commands():
    from harness.engine.patterns import split_literals

    line = substitute("SEARCH CHARSET UTF-8 BODY ${literal:Köln} FROM ${literal:ab}", {})
    assert split_literals(line) == ("SEARCH CHARSET UTF-8 BODY {5} FROM {2}", ["Köln".encode(), b"ab"])


def test_regex_groups_count_as_captures():
    from harness.engine.patterns import variables_in

    assert variables_in(r're:\* QUOTAROOT INBOX (?P<root>"[^"]*"|\S+)') == ["root"]
    assert variables_in("* $n EXISTS ${m} $$x") == ["n", "m"]


def test_astring_matches_atom_and_quoted_string_of_one_value():
    p = Pattern("* LIST (...) ... ${astring:INBOX}")
    assert p.match('* LIST () "/" INBOX', {}) == {}
    assert p.match('* LIST () "/" "INBOX"', {}) == {}
    assert p.match('* LIST () "/" "INBOX2"', {}) is None
    spaced = Pattern("* STATUS ${astring:Old Mail} (MESSAGES 1)")
    assert spaced.match('* STATUS "Old Mail" (MESSAGES 1)', {}) == {}
    assert spaced.match("* STATUS Old Mail (MESSAGES 1)", {}) is None  # two atoms are not one name
    assert Pattern('${astring:a"b}').match(r'"a\"b"', {}) == {}


def test_astring_captures_the_value_and_compares_by_value():
    p = Pattern("* QUOTAROOT ${astring:INBOX} ${astring:$root}...")
    assert p.match('* QUOTAROOT INBOX "User quota"', {}) == {"root": "User quota"}
    assert p.match("* QUOTAROOT INBOX user.x other", {}) == {"root": "user.x"}
    quota = Pattern("* QUOTA ${astring:$root} (...)")
    assert quota.match('* QUOTA "User quota" (STORAGE 1 2)', {"root": "User quota"}) == {}
    assert quota.match("* QUOTA Userquota (STORAGE 1 2)", {"root": "User quota"}) is None
    assert Pattern("* QUOTA ${astring:$r} (...)").match("* QUOTA \"x\" (STORAGE 1 2)", {"r": "x"}) == {}


def test_astring_in_commands_sends_what_the_value_needs():
    assert substitute("GETQUOTA ${astring:$root}", {"root": "User quota"}) == 'GETQUOTA "User quota"'
    assert substitute("GETQUOTA ${astring:$root}", {"root": "x"}) == "GETQUOTA x"
    assert substitute("CREATE ${astring:Köln}", {}) == "CREATE ${literal:Köln}"
    with pytest.raises(PatternError, match=r"\$root is not set"):
        substitute("GETQUOTA ${astring:$root}", {})


def test_a_literal_matches_as_the_quoted_string_it_equals():
    from harness.sessions.imap import Untagged

    u = Untagged('* LIST () "/" {8}', b'* LIST () "/" {8}\r\nOld "Mai\r\n', [b'Old "Mai'])
    assert u.inline_text == r'* LIST () "/" "Old \"Mai"'
    assert Pattern('* LIST (...) ... ${astring:Old "Mai}').match(u.inline_text, {}) == {}


def test_fetch_item_names_compare_header_fields_as_astrings():
    from harness.engine.patterns import fetch_item_name

    assert fetch_item_name('BODY[HEADER.FIELDS ("Subject" From)]') == "BODY[HEADER.FIELDS (SUBJECT FROM)]"
