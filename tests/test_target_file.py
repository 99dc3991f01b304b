"""Target files: what users write to point the harness at their server."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.targets.target_file import load_target


def write(tmp_path, text: str):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return path


def test_full_target_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MH_PW", "s3cret")
    t = load_target(write(tmp_path, """
name: staging
imap: {url: "imap://mail.example.org", starttls: true}
pop3: pop3s://mail.example.org:1995
lmtp: lmtp://127.0.0.1:2424
accounts:
  pattern: "student{n}@example.org"
  range: [3, 5]
  password_env: MH_PW
profile: dovecot
disposable: true
"""))
    assert t.name == "staging"
    assert (t.imap.host, t.imap.port, t.imap.starttls, t.imap.tls) == ("mail.example.org", 143, True, False)
    assert (t.pop3.port, t.pop3.tls) == (1995, True)
    assert t.delivery.port == 2424
    assert [a.user for a in t.accounts] == ["student3@example.org", "student4@example.org", "student5@example.org"]
    assert {a.password for a in t.accounts} == {"s3cret"}
    assert "s3cret" not in repr(t)
    assert t.disposable and t.profile == "dovecot"


def test_accounts_default_not_disposable(tmp_path):
    t = load_target(write(tmp_path, "name: x\nimap: imap://127.0.0.1:1143\naccounts:\n  - {user: a, password: b}\n"))
    assert t.disposable is False
    assert t.imap.tls_verify is True


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("name: x\nimap: imap://h\naccounts:\n  - {user: a, password: b}\nfoo: 1\n", ":5: foo: unknown key 'foo'"),
        ("name: x\nimap: http://h\naccounts:\n  - {user: a, password: b}\n", ":2: imap:"),
        ("name: x\naccounts:\n  - {user: a, password: b}\n", "give at least one of imap or pop3"),
        ("name: x\nimap: imap://h\naccounts:\n  - {user: a}\n", ":4: accounts"),
        ("name: x\nimap: imap://h\naccounts:\n  - {user: a, password_env: NOPE_NOT_SET}\n", ":4: password_env: environment variable NOPE_NOT_SET is not set"),
        ("name: x\nimap: imap://h:notaport\naccounts:\n  - {user: a, password: b}\n", "bad port"),
        ("name: x\nimap: imaps://h\n  bad: indent\n", "YAML syntax error"),
        ("name: x\nimap: imap://h\naccounts:\n  - {user: a, password: b}\n  - {user: a, password: c}\n", "a user is listed twice"),
        ("name: x\nimap: {url: 'imaps://h', starttls: true}\naccounts:\n  - {user: a, password: b}\n", "starttls makes no sense"),
    ],
)
def test_invalid_target_names_file_line_and_key(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_target(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert fragment in message, message


def test_missing_target_file(tmp_path):
    with pytest.raises(ConfigError, match="target file not found"):
        load_target(tmp_path / "nope.yaml")


def test_a_profile_name_is_the_bundled_profile_even_beside_a_directory_of_that_name(tmp_path, monkeypatch):
    from harness.engine.profiles import resolve_profile_path
    from harness.paths import profiles_dir

    (tmp_path / "dovecot").mkdir()  # e.g. a checkout of the server's sources
    monkeypatch.chdir(tmp_path)
    assert resolve_profile_path("dovecot") == profiles_dir() / "dovecot.yaml"
    (tmp_path / "mine.yaml").write_text("server: x\ndeviations: {}\n")
    assert resolve_profile_path("mine.yaml") == Path("mine.yaml")
