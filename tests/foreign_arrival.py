"""A pytest plugin for `mailharness run --pytest-arg -p --pytest-arg foreign_arrival` (tests/ on PYTHONPATH):
a message the harness did not create arrives in account 1's INBOX during each test's set-up, after the
accounts were checked and before the test's own mail is stored. So it gets the lowest message number,
which is what a real delivery racing the set-up can do (issue 10 item 4: "3 of 5 tries").

MH_FOREIGN_FOLDER names another folder to put it in (over IMAP), for tests that work there.
"""

from __future__ import annotations

import os

from harness.engine import plugin
from harness.engine.accounts import admin_client
from harness.sessions.lmtp import deliver, recipient

FOREIGN = b"From: boss@example.org\r\nSubject: keep me\r\nMessage-ID: <keep@example.org>\r\n\r\nimportant\r\n"

_original = plugin.SuiteItem._setup_mail


def _setup_mail_after_a_delivery(self, target) -> None:
    account = self.accounts[0]
    folder = os.environ.get("MH_FOREIGN_FOLDER")
    if folder:
        with admin_client(target, account) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            client.append(folder, FOREIGN)
    else:
        deliver(target.delivery, recipient(account.user), FOREIGN, timeout=target.timeout, ca_file=target.ca_file)
    _original(self, target)


plugin.SuiteItem._setup_mail = _setup_mail_after_a_delivery
