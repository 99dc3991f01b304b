"""`mailharness init DIR`: a small suite and a target file to start from, both valid."""

from __future__ import annotations

import sys
from pathlib import Path

from harness.errors import ConfigError

DESCRIPTION = """\
Write a starting point into DIR: suites/example.yaml (a POP3 and an IMAP
test, commented) and target.yaml (your server's endpoints and accounts, to
edit). Existing files are never overwritten.

examples:
  mailharness init my-checks
  mailharness validate my-checks/suites --target my-checks/target.yaml
  mailharness run --suite my-checks/suites                        against a throwaway Dovecot
  mailharness run --suite my-checks/suites --target my-checks/target.yaml
"""

SUITE = """\
# An example suite: edit it, copy it, add files next to it (docs/suite-format.md).
# `suite:` marks this file as a suite: pytest collects only YAML files that have it.
suite: My first checks
defaults:                      # copied into every test that does not set the key
  rfc: ["RFC1939 §6"]
tests:
  - id: my.pop3.dele-commits-at-quit
    title: DELE marks a message, QUIT removes it; a later session no longer sees it
    area: deletion
    tags: [smoke]              # free markers: mailharness list -m smoke
    sessions: {p: pop3}        # p: a POP3 session logged in as the test's account
    setup:
      INBOX: [plain, multipart-alternative]   # corpus messages stored before the first step
    steps:
      - p: DELE ${msg:plain}   # the number of the message that is corpus `plain`
      - p: RETR ${msg:plain}
        expect: -ERR
        why: a message marked as deleted must not be retrieved in the same session
      - p: QUIT
      - p: STAT                # a new session: the deletion was committed
        expect: "+OK 1 ${size:multipart-alternative}"

  - id: my.imap.append-visible
    title: A message appended by one IMAP client is seen by another
    area: append
    rfc: ["RFC3501 §6.3.11"]
    sessions: {a: imap, b: imap}
    steps:
      - a: SELECT INBOX
        untagged: ["* 0 EXISTS"]
      - b: {append: plain}
        expect: "OK ..."
      - a: NOOP
        untagged: ["* 1 EXISTS"]
        why: RFC 3501 §7.3.1 - the server reports the new size of the selected mailbox
"""

TARGET = """\
# Where your server is and which accounts the harness may use (docs/targets.md).
# The accounts must exist and hold no mail of their own: the harness stores and removes test mail.
name: my-server
imap: imap://127.0.0.1:143           # imaps://host:993 for TLS from the first byte
pop3: pop3://127.0.0.1:110           # pop3s://host:995
accounts:
  - {user: mh-test1, password_env: MH_PASSWORD_1}   # the password comes from the environment
  - {user: mh-test2, password_env: MH_PASSWORD_2}
disposable: false                    # true only for accounts whose mail may all be deleted
"""

FILES = {Path("suites/example.yaml"): SUITE, Path("target.yaml"): TARGET}


def add_arguments(p) -> None:
    p.add_argument("directory", type=Path, metavar="DIR", help="where to write (created if missing)")


def run(args) -> int:
    root: Path = args.directory
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root}: exists and is not a directory")
    existing = [str(root / name) for name in FILES if (root / name).exists()]
    if existing:
        raise ConfigError(f"{', '.join(existing)}: already there; init never overwrites (pick another DIR)")
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    print(f"""
next:
  mailharness validate {root / 'suites'} --target {root / 'target.yaml'}
  mailharness run --suite {root / 'suites'}                    (a throwaway Dovecot on 127.0.0.1)
  edit {root / 'target.yaml'}, set MH_PASSWORD_1 and MH_PASSWORD_2, then
  mailharness run --suite {root / 'suites'} --target {root / 'target.yaml'}""", file=sys.stdout)
    return 0
