"""The Locust users: how students' mail clients behave at the start of term.

Every protocol command fires Locust's ``request`` event (request_type "POP3"/"IMAP"/"LMTP",
name e.g. "IMAP FETCH headers", response time in ms, bytes received, the exception on
-ERR/NO/BAD/timeouts/disconnects), so Locust's statistics, HTML report, CSVs and
distributed mode work unchanged. A failed command is reported once by the wire client;
the user then drops the connection and starts afresh after its think time.

Importing this module imports Locust, which monkey-patches the process for gevent.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import time
from collections import defaultdict
from contextlib import contextmanager
from itertools import count

import gevent
import gevent.monkey
from gevent.lock import BoundedSemaphore
from locust import User, task
from locust.exception import StopUser
from locust.user.task import LOCUST_STATE_RUNNING, LOCUST_STATE_STOPPING, LOCUST_STATE_WAITING

from harness.known_secrets import redacted_exception
from harness.load.imap_client import ImapClient
from harness.load.lmtp_client import LmtpClient, dot_stuff
from harness.load.locust_plugin import run_of
from harness.load.messages import ID_HEADER, SENT_HEADER, DeliveryFactory
from harness.load.pop3_client import Pop3Client
from harness.load.wire import Watchdog, WireClient, WireError

NETWORK_ERRORS = (WireError, OSError)  # already reported as a failed request by the wire client
HEADER_FIELDS = b"(DATE FROM TO CC SUBJECT MESSAGE-ID CONTENT-TYPE)"
_MULTIPART_MIXED = re.compile(rb'\) "mixed"', re.IGNORECASE)  # BODYSTRUCTURE: (part)(part) "mixed" (params)
_SENT = re.compile(SENT_HEADER + rb":\s*([\d.]+)", re.IGNORECASE)
_FETCHED = re.compile(rb"^\* (\d+) FETCH", re.MULTILINE)

# Two download-and-delete sessions on one mailbox would race for the same messages; when this
# process has more such users than accounts, the ones sharing a mailbox take turns.
_mailbox_turns: defaultdict[str, BoundedSemaphore] = defaultdict(BoundedSemaphore)

# One timer greenlet per process and thread enforces every command's timeout (see wire.Watchdog). Per thread:
# a thread with its own fd table (harness/load/fd_tables.py) runs its own gevent hub, and its connections'
# descriptor numbers mean nothing in another thread.
_watchdogs: dict[tuple[int, int], Watchdog] = {}
_thread_ident = gevent.monkey.get_original("_thread", "get_ident")  # the OS thread, not the greenlet


def watchdog() -> Watchdog:
    key = (os.getpid(), _thread_ident())  # a new pid: Locust forked its --processes workers
    found = _watchdogs.get(key)
    if found is None:
        found = _watchdogs[key] = Watchdog()
        gevent.spawn(found.run, gevent.sleep)
    return found


def idling(environment) -> int:
    """IdleUser connections of this Locust environment currently in IDLE (the benchmark reports the peak)."""
    return getattr(environment, "mailharness_idling", 0)


class LoadUser(User):
    """Common ground of every load user: the run context, request reporting, a connection kept between tasks."""

    abstract = True
    role = ""
    request_type = ""
    # The connection a user keeps between tasks (IMAP sessions, the LMTP sender), if any. A class
    # default, so on_stop can run even when on_start stopped the user before opening anything.
    client: WireClient | None = None

    def on_start(self) -> None:
        self.load = run_of(self.environment)  # not self.run: that is Locust's User.run()
        self._fire = self.environment.events.request.fire

    def report(self, name: str, response_time: float, response_length: int, exception: BaseException | None) -> None:
        # The exception's text becomes Locust's failure statistics (CSV, HTML, console): a server that
        # echoes a password in its refusal must not put it there.
        self._fire(request_type=self.request_type, name=name, response_time=response_time,
                   response_length=response_length, exception=exception and redacted_exception(exception), context={})

    def _drop(self) -> None:
        """Close the kept connection (after a failure, or at the end); the next task opens a new one."""
        if self.client:
            self.client.close()
            self.client = None

    def on_stop(self) -> None:
        self._drop()


class MailUser(LoadUser):
    """A mail client: LoadUser plus an account from this process's slice."""

    abstract = True
    devices = 1  # users sharing one account (multi-device IDLE)

    def on_start(self) -> None:
        super().on_start()
        self.kind = self.load.scenario.users[self.role]
        if self.load.allocator is None:  # no account slice for this process (logged when the layout came)
            raise StopUser()
        self.account = self.load.allocator.next_account(self.role, self.kind.options.get("devices", self.devices))
        self.source = self.load.sources.next()  # this user's local address (None: the system's choice)

    @contextmanager
    def interruptible(self):
        """Let Locust stop this user at once while it only waits on the server (a long IDLE).

        Locust kills users immediately only in its "waiting" state (think time); a task in
        progress is otherwise allowed to finish, which an IDLE of minutes never does in time.
        """
        if self._state == LOCUST_STATE_STOPPING:
            raise StopUser()
        self._state = LOCUST_STATE_WAITING
        try:
            yield
        finally:
            self._state = LOCUST_STATE_RUNNING

    def _pop3(self) -> Pop3Client:
        return Pop3Client(self.load.target.pop3, timeout=self.load.timeout, ca_file=self.load.target.ca_file,
                          report=self.report, watchdog=watchdog(), source=self.source)

    def _pop3_login(self, client: Pop3Client) -> None:
        """Connect and log in; with `pipelining` (the default) ask CAPA first, as a client looking for PIPELINING does."""
        client.connect()
        if self.kind.options.get("pipelining", True):
            client.capa()
        client.login(self.account.user, self.account.password)

    def _imap(self) -> ImapClient:
        return ImapClient(self.load.target.imap, timeout=self.load.timeout, ca_file=self.load.target.ca_file,
                          report=self.report, watchdog=watchdog(), source=self.source)


class Pop3DeletePoller(MailUser):
    """A POP3 client set to download and delete: STAT, RETR + DELE every message, QUIT.

    Every X-Mailharness-Id it retrieves is journalled before QUIT and confirmed after,
    for the delivered == retrieved check. With PIPELINING the RETR/DELE pairs go in batches
    (Pop3Client.batch); any failure drops the session without QUIT, so no DELE is committed.
    """

    role = "pop3_delete"
    request_type = "POP3"

    @task
    def poll(self) -> None:
        ledger = self.load.ledger
        with _mailbox_turns[self.account.user]:
            client = self._pop3()
            try:
                self._pop3_login(client)
                messages, _ = client.stat()
                replies = client.batch([command for number in range(1, messages + 1) for command in (
                    ("POP3 RETR", b"RETR %d" % number, True, ID_HEADER), ("POP3 DELE", b"DELE %d" % number, False, None))])
                ids = [message_id.decode() for message_id in replies[0::2] if message_id]
                # Every message is deleted, not only the run's own (X-Mailharness-Id). The accounting
                # needs the run's mail gone once QUIT commits (else it is retrieved twice); it needs
                # the rest gone too, or the seeded backlog is downloaded again on every visit ahead of
                # the new mail: sessions get long, deliveries wait for the final drain (a 5 s term-start
                # run then retrieved none during the run), and the exactly-once check would test the
                # drain, not the pollers under load. Deleting mail the harness did not send is safe only
                # because build_run (locust_plugin) refuses targets without `disposable: true`.
                session = secrets.token_hex(8)
                if ledger and ids:
                    ledger.quit_sent(session, self.account.user, ids)
                client.quit()
                if ledger and ids:
                    ledger.committed(session)
            except NETWORK_ERRORS:
                pass
            finally:
                client.close()


class Pop3KeepPoller(MailUser):
    """A POP3 client that leaves mail on the server: UIDL, RETR only UIDs it has not seen, QUIT.

    It remembers the UIDs it downloaded (per Locust user, like one mail client's state file).
    first_poll: download-all (a newly set-up client fetches the backlog) or skip-existing.
    """

    role = "pop3_keep"
    request_type = "POP3"

    def on_start(self) -> None:
        super().on_start()
        self.seen: set[bytes] | None = None

    @task
    def poll(self) -> None:
        client = self._pop3()
        try:
            self._pop3_login(client)
            listing = client.uidl()
            on_server = {uid for _, uid in listing}
            if self.seen is None and self.kind.options.get("first_poll", "download-all") == "skip-existing":
                self.seen = on_server
            seen = self.seen or set()
            new = [(number, uid) for number, uid in listing if uid not in seen]
            # With PIPELINING in batches; a failure drops the session and this poll's mail is fetched again next time.
            client.batch([("POP3 RETR", b"RETR %d" % number, True, None) for number, _ in new])
            seen.update(uid for _, uid in new)
            self.seen = seen & on_server  # forget what was deleted elsewhere; memory stays bounded
            client.quit()
        except NETWORK_ERRORS:
            pass
        finally:
            client.close()


class WebmailReader(MailUser):
    """A webmail session: per page view LIST, SELECT INBOX, FETCH headers of the newest N,
    open one message (BODYSTRUCTURE + text part), fetch its attachment part if it has one,
    set \\Seen. Logs out and in again after actions_per_session page views.
    """

    role = "imap_webmail"
    request_type = "IMAP"
    client: ImapClient | None = None

    def on_start(self) -> None:
        super().on_start()
        self.views = 0
        self.headers = int(self.kind.options.get("headers", 50))
        self.views_per_session = int(self.kind.options.get("actions_per_session", 10))
        self.pipelining = bool(self.kind.options.get("pipelining", False))
        self.known = 0  # INBOX's message count as this user last saw it, in this session or an earlier one

    @task
    def view_inbox(self) -> None:
        try:
            if self.client is None:
                self.client = self._imap()
                self.client.connect()
                self.client.login(self.account.user, self.account.password)
                self.views = 0
            self.page_view(self.client)
            self.views += 1
            if self.views >= self.views_per_session:
                client, self.client = self.client, None
                client.logout()
        except NETWORK_ERRORS:
            self._drop()
            self.known = 0  # a range from a count gone stale fails: the next session asks SELECT first

    def page_view(self, client: ImapClient) -> None:
        if self.pipelining:
            self.page_view_pipelined(client)
            return
        client.command("IMAP LIST", b'LIST "" "*"')
        newest = client.select("INBOX")
        if not newest:
            return
        oldest = max(1, newest - self.headers + 1)
        client.command("IMAP FETCH headers",
                       b"FETCH %d:%d (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS %s])" % (oldest, newest, HEADER_FIELDS))
        opened = random.randint(oldest, newest)
        structure = client.command("IMAP FETCH body", b"FETCH %d (BODYSTRUCTURE BODY.PEEK[1])" % opened, collect=True)
        if _MULTIPART_MIXED.search(structure):
            client.command("IMAP FETCH attachment", b"FETCH %d BODY.PEEK[2]" % opened)
        client.command("IMAP STORE seen", b"STORE %d +FLAGS.SILENT (\\Seen)" % opened)

    def page_view_pipelined(self, client: ImapClient) -> None:
        """The same commands as a pipelining webmail back end sends them: each write waits only for what it
        needs. A view sends the whole page in one write, SELECT and LIST included, with ranges from the
        message count the user last saw (in this session or its last one: a back end caches the folder's
        count between the IMAP connections it opens; a changed count shows on the next view). Only a user
        that has never seen the count asks SELECT and LIST first. The attachment fetch waits for the structure."""
        select, listing = ("IMAP SELECT", client.select_command("INBOX")), ("IMAP LIST", b'LIST "" "*"')
        page = []
        if self.known:
            page = [select, listing]  # ride in the page's write
        elif not client.selected(client.pipeline([select, listing], collect=True)):
            return
        known = self.known or client.exists
        oldest = max(1, known - self.headers + 1)
        opened = random.randint(oldest, known)
        page += [
            ("IMAP FETCH headers",
             b"FETCH %d:%d (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS %s])" % (oldest, known, HEADER_FIELDS)),
            ("IMAP FETCH body", b"FETCH %d (BODYSTRUCTURE BODY.PEEK[1])" % opened),
            ("IMAP STORE seen", b"STORE %d +FLAGS.SILENT (\\Seen)" % opened),
        ]
        structure = client.pipeline(page, collect=True)
        if page[0] is select:
            client.selected(structure)
        self.known = client.exists  # the count for the next view
        # Only the opened message's structure counts (the headers fetched beside it may say anything), and it
        # ends where its text part's literal begins: the text is not searched.
        start = max(0, structure.find(b"* %d FETCH (BODYSTRUCTURE" % opened))
        end = structure.find(b" BODY[1] ", start)
        if _MULTIPART_MIXED.search(structure, start, end if end > 0 else len(structure)):
            client.command("IMAP FETCH attachment", b"FETCH %d BODY.PEEK[2]" % opened)


class IdleUser(MailUser):
    """A phone (or laptop) holding IDLE on INBOX. On EXISTS: DONE, fetch the new messages'
    headers, IDLE again; every reidle_after seconds DONE + IDLE as RFC 2177 asks.

    New-mail notification latency: the delivery user stamps X-Mailharness-Sent; the time
    from then to this client seeing EXISTS is reported as "IMAP notify latency" (one sample
    per device and message; clocks must agree when generators run on several machines).
    Where Linux timestamps arrivals, it is split at the moment the kernel received the EXISTS:
    "IMAP notify server" (delivery sent -> EXISTS in our socket: LMTP, the server noticing, and
    the network) and "IMAP notify generator" (EXISTS in our socket -> this user handling it:
    time the generator was too busy to read).
    """

    role = "imap_idle"
    request_type = "IMAP"
    client: ImapClient | None = None

    def on_start(self) -> None:
        super().on_start()
        self.fetched = 0  # highest sequence number whose headers this device has fetched
        self.reidle_after = float(self.kind.options.get("reidle_after", 600))

    @task
    def hold_idle(self) -> None:
        try:
            if self.client is None:
                self.client = self._imap()
                self.client.connect()
                self.client.login(self.account.user, self.account.password)
                self.fetched = self.client.select("INBOX")
                self.client.conn.timestamp_arrivals()
            client = self.client
            client.idle()
            env = self.environment  # one per thread: each counts its own (see idling())
            env.mailharness_idling = idling(env) + 1
            try:
                self.idle_until_reidle(client)
            finally:
                env.mailharness_idling -= 1
            client.done()
        except NETWORK_ERRORS:
            self._drop()

    def idle_until_reidle(self, client: ImapClient) -> None:
        deadline = time.monotonic() + self.reidle_after
        while True:
            if client.exists <= self.fetched:  # else EXISTS came with the IDLE continuation already
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                with self.interruptible():
                    if client.wait_for_exists(remaining) is None:
                        return
            seen_at = time.time()
            client.done()
            self.fetch_new(client, seen_at, client.exists_arrived)
            client.exists_arrived = 0.0
            client.idle()

    def fetch_new(self, client: ImapClient, seen_at: float, arrived: float = 0.0) -> None:
        if client.exists <= self.fetched:
            return
        data = client.command("IMAP FETCH new",
                              b"FETCH %d:%d (UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT FROM " % (self.fetched + 1, client.exists)
                              + SENT_HEADER + b")])", collect=True)
        for sent in _SENT.findall(data):
            sent_at = float(sent)
            self.report("IMAP notify latency", max(0.0, (seen_at - sent_at) * 1000), 0, None)
            if arrived >= sent_at:
                self.report("IMAP notify server", (arrived - sent_at) * 1000, 0, None)
                self.report("IMAP notify generator", max(0.0, (seen_at - arrived) * 1000), 0, None)
        numbers = [int(n) for n in _FETCHED.findall(data)]
        self.fetched = max([self.fetched, *numbers])


class MailDelivery(LoadUser):
    """New mail arriving over LMTP at the scenario's rate (senders share it), to mailboxes of the
    user kinds in delivery.to. Each message carries a unique X-Mailharness-Id and its send time.
    """

    role = "delivery"
    request_type = "LMTP"
    fixed_count = 1
    client: LmtpClient | None = None
    _ids = count(1)

    def on_start(self) -> None:
        super().on_start()
        spec = self.load.scenario.delivery
        self.roles = list(spec.to)
        self.role_weights = list(spec.to.values())
        self.factory = DeliveryFactory(spec.size_mix)
        self.prefix = secrets.token_hex(5)  # unique across processes and machines

    @task
    def deliver(self) -> None:
        role = random.choices(self.roles, self.role_weights)[0]
        account = random.choice(self.load.plan.pools[role])
        message_id = f"{self.prefix}-{next(self._ids)}"
        ledger = self.load.ledger
        try:
            if self.client is None:
                target = self.load.target
                self.client = LmtpClient(target.delivery, timeout=self.load.timeout, ca_file=target.ca_file,
                                         report=self.report, watchdog=watchdog())
                self.client.connect()
            if ledger:
                ledger.sending(message_id, account.user, role)
            message = dot_stuff(self.factory.message(message_id, time.time()))
            results = self.client.deliver([account.user], message)
            if ledger and results.get(account.user) is None:
                ledger.delivered(message_id)
        except NETWORK_ERRORS:
            self._drop()
