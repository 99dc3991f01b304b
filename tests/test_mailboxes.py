"""Suite mailbox names -> the server's: namespace prefix and delimiter, INBOX, special-use, validation."""

from __future__ import annotations

import textwrap

import pytest

from harness.engine.mailboxes import MailboxError, MailboxMap, Namespace, raw_mailbox_argument
from harness.engine.model import load_suite
from harness.engine.patterns import Pattern
from harness.errors import ConfigError

CYRUS_LIKE = Namespace("INBOX.", ".")


def test_names_map_into_the_personal_namespace():
    assert CYRUS_LIKE.server_name("Projects/Alpha") == "INBOX.Projects.Alpha"
    assert CYRUS_LIKE.server_name("inbox") == "INBOX"
    assert Namespace().server_name("Projects/Alpha") == "Projects/Alpha"
    with pytest.raises(MailboxError, match="delimiter"):
        CYRUS_LIKE.server_name("v1.2")
    with pytest.raises(MailboxError, match="no hierarchy"):
        Namespace("", None, False).server_name("Projects/Alpha")


def test_commands_and_patterns_use_the_servers_names():
    m = MailboxMap(CYRUS_LIKE, {"\\Sent": "Sent Items"})
    assert m.command("RENAME ${mbox:Projects} ${mbox:Clients/Acme}") == "RENAME INBOX.Projects INBOX.Clients.Acme"
    assert m.command('LIST "" ${mbox:Projects/%}') == 'LIST "" "INBOX.Projects.%"'
    assert m.command("SELECT ${mbox:\\Sent}") == 'SELECT "Sent Items"'
    p = m.pattern(Pattern("* LIST (...) ... ${mbox:Projects/Alpha}"))
    assert p.match('* LIST (\\HasNoChildren) "." INBOX.Projects.Alpha', {}) == {}
    assert p.match('* LIST (\\HasNoChildren) "." "INBOX.Projects.Alpha"', {}) == {}
    assert p.match('* LIST (\\HasNoChildren) "/" Projects/Alpha', {}) is None
    with pytest.raises(MailboxError, match="no folder was found"):
        m.command("SELECT ${mbox:\\Drafts}")


def test_bare_mailbox_arguments_are_found():
    assert raw_mailbox_argument("SELECT Projects") == "Projects"
    assert raw_mailbox_argument("UID COPY 1:* Archive") == "Archive"
    assert raw_mailbox_argument('LIST (SUBSCRIBED) "" "Projects/%"') == '"Projects/%"'
    for ok in ("SELECT INBOX", 'LIST "" "*"', "SELECT ${mbox:Projects}", "STATUS $box (MESSAGES)",
               'LIST "" "*" RETURN (SPECIAL-USE)', "GETQUOTA ${astring:$root}", "FETCH 1 (FLAGS)"):
        assert raw_mailbox_argument(ok) is None, ok


def _suite(tmp_path, steps: str):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent("""\
        tests:
          - id: t.one
            title: x
            area: folders
            rfc: [RFC3501 §6.3.1]
            sessions: {a: imap}
            steps:
        """) + textwrap.indent(textwrap.dedent(steps), "      ") + "suite: x\n")
    return path


@pytest.mark.parametrize("steps, message", [
    ("- a: SELECT Projects\n", r"s.yaml:8: mailbox Projects: write folders as \$\{mbox:Projects\}"),
    ("- a: {append: plain, mailbox: Projects$delim-Alpha}\n", "levels joined by '/'"),
    ("- a: SELECT ${mbox:\\Spam}\n", "not a special-use attribute"),
    ("- a: NOOP\n  untagged: ['re:\\* LIST .* ${mbox:Projects}']\n", "not in re: regexes"),
    ("- a: SELECT ${mbox:X}\n  expect: NO\n  untagged: ['* 0 EXISTS']\n", "would never be checked"),
    ("- a: {append: plain}\n  expect: 'OK [APPENDUID $v $u] ...'\n", r"\[APPENDUID\] is a response code of the UIDPLUS"),
    ("- a: {append: plain}\n  when: {imap: [UIDPLUS]}\n  expect: 'OK [APPENDUID $v $u] ...'\n- a: UID FETCH $u FLAGS\n",
     r"\$u is set only when step 1's `when"),
])
def test_suite_mailbox_mistakes_are_config_errors(tmp_path, steps, message):
    with pytest.raises(ConfigError, match=message):
        load_suite(_suite(tmp_path, steps))


def test_a_test_knows_its_special_use_and_hierarchy_names(tmp_path):
    spec = load_suite(_suite(tmp_path, """\
        - a: CREATE ${mbox:Projects/Alpha}
        - a: {append: plain, mailbox: \\Sent}
        """))[0]
    assert spec.special_uses == ["\\Sent"]
    assert spec.hierarchy_names == ["Projects/Alpha"]


def test_mailbox_attributes_compare_case_insensitively():
    """RFC 3501 §7.2.2 spells \\Noselect; servers also send \\NoSelect, \\SENT (RFC 6154 attributes too)."""
    from harness.engine import accounts

    assert accounts._is_baseline((b"\\HasNoChildren", b"\\SENT"), "Gesendet")
    assert not accounts._is_baseline((b"\\HasNoChildren",), "Projects")

    class Client:  # records what _message_counts examines
        def __init__(self):
            self.examined = []

        def select_folder(self, name, readonly):
            self.examined.append(name)
            return {b"EXISTS": 0}

        def has_capability(self, cap):
            return True

        def unselect_folder(self):
            pass

    client = Client()
    accounts._message_counts(client, [((b"\\NoSelect",), "/", "Parent"), ((b"\\NONEXISTENT",), "/", "Gone"), ((), "/", "INBOX")])
    assert client.examined == ["INBOX"]


def test_a_when_step_may_expect_the_code_and_share_its_variables(tmp_path):
    spec = load_suite(_suite(tmp_path, """\
        - a: {append: plain}
          when: {imap: [UIDPLUS]}
          expect: 'OK [APPENDUID $v $u] ...'
        - a: UID FETCH $u FLAGS
          when: {imap: [UIDPLUS, MOVE]}
        """))[0]
    assert spec.steps[0].when == {"imap": ["UIDPLUS"]}
