"""POP3 and IMAP sessions against a real Dovecot, and against tiny scripted servers that misbehave."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from harness import corpus
from harness.corpus.sections import size, top
from harness.sessions import (
    ConnectionClosed,
    IMAPSession,
    POP3Session,
    ProtocolError,
    ProtocolTimeout,
    SessionError,
    Transcript,
    open_session,
)
from harness.sessions.imap import astring
from harness.sessions.lmtp import deliver
from harness.sessions.redact import redact_line
from harness.targets.managed_dovecot import ManagedDovecot
from harness.targets.probe import probe_target
from harness.targets.target_file import Account, Endpoint, Target

POP3_MESSAGES = ["plain", "dot-lines", "eight-bit", "attachment", "plain-long", "large"]


@pytest.fixture(scope="module")
def server():
    with ManagedDovecot(accounts=30) as dc:
        dc.target.unused_accounts = iter(dc.target.accounts)
        yield dc.target


@pytest.fixture
def account(server) -> Account:
    """A different account for every test, so its mailboxes start empty."""
    return next(server.unused_accounts)


def imap(server, account=None, **kw) -> IMAPSession:
    s = IMAPSession(server.imap.host, server.imap.port, **kw)
    if account:
        s.login(account.user, account.password)
    return s


def pop3(server, account=None, **kw) -> POP3Session:
    s = POP3Session(server.pop3.host, server.pop3.port, **kw)
    if account:
        s.login(account.user, account.password)
    return s


def append(session: IMAPSession, msg: bytes, mailbox: str = "INBOX"):
    resp = session.command(f"APPEND {mailbox} {{{len(msg)}}}", literals=[msg])
    assert resp.ok, resp.line
    return resp


# -- POP3 against Dovecot ------------------------------------------------------------------------------
@pytest.fixture
def pop3_mailbox(server, account):
    """The account's INBOX holding POP3_MESSAGES in order."""
    with imap(server, account) as s:
        for name in POP3_MESSAGES:
            append(s, corpus.message(name))
    return account


def test_pop3_stat_list_retr_are_byte_exact(server, pop3_mailbox):
    messages = [corpus.message(n) for n in POP3_MESSAGES]
    with pop3(server, pop3_mailbox) as p:
        assert p.greeting.startswith("+OK")
        stat = p.command("STAT")
        assert stat.ok and stat.lines is None and stat.body is None
        assert stat.text == f"{len(messages)} {sum(map(size, messages))}"
        listing = p.command("LIST")
        assert listing.lines == [f"{i} {size(m)}".encode() for i, m in enumerate(messages, 1)]
        for i, (name, msg) in enumerate(zip(POP3_MESSAGES, messages, strict=True), 1):
            resp = p.command(f"RETR {i}", timeout=10)
            assert resp.ok and resp.body == msg, name
            stuffed = sum(line.startswith(b".") for line in msg.split(b"\r\n"))
            assert resp.wire_octets == size(msg) + stuffed, name
            assert resp.bare_lf_lines == 0


def test_pop3_unstuffs_dot_lines(server, pop3_mailbox):
    with pop3(server, pop3_mailbox) as p:
        resp = p.command(f"RETR {POP3_MESSAGES.index('dot-lines') + 1}")
        assert {b".", b"..", b" .", b"...three dots"} <= set(resp.lines)
        assert resp.body == corpus.message("dot-lines")


def test_pop3_top_matches_the_reference(server, pop3_mailbox):
    with pop3(server, pop3_mailbox) as p:
        for name in ("plain-long", "dot-lines", "attachment"):
            msg = corpus.message(name)
            for n in (0, 1, 5, 10_000):
                resp = p.command(f"TOP {POP3_MESSAGES.index(name) + 1} {n}")
                assert resp.ok and resp.body == top(msg, n), (name, n)


def test_pop3_multiline_detection_and_errors(server, pop3_mailbox):
    with pop3(server, pop3_mailbox) as p:
        assert p.command("LIST 1").lines is None  # with an argument: single line
        assert p.command("list").lines is not None  # verbs are case-insensitive
        uidl = p.command("UIDL")
        assert len(uidl.lines) == len(POP3_MESSAGES)
        missing = p.command("RETR 99")
        assert not missing.ok and missing.status == "-ERR" and missing.lines is None
        assert "TOP" in [line.split()[0] for line in p.capa()]
        forced = p.command("NOOP", multiline=False)
        assert forced.ok
        assert p.quit().ok
        assert p.closed
        with pytest.raises(ConnectionClosed, match="closed"):
            p.command("NOOP")


def test_pop3_dropped_connection_deletes_nothing(server, pop3_mailbox):
    p = pop3(server, pop3_mailbox)
    assert p.command("DELE 1").ok
    p.drop()
    assert p.closed
    time.sleep(0.2)  # let Dovecot notice the close
    with pop3(server, pop3_mailbox) as p2:
        assert p2.command("STAT").text.startswith(f"{len(POP3_MESSAGES)} ")


# -- IMAP against Dovecot ---------------------------------------------------------------------------------
def test_imap_append_with_literal_then_fetch(server, account):
    msg = corpus.message("nested-rfc822")
    with imap(server, account) as s:
        assert s.greeting.startswith("* OK")
        assert "IMAP4REV1" in s.capabilities()
        resp = s.command(f"APPEND INBOX (\\Flagged) {{{len(msg)}}}", literals=[msg])
        assert resp.ok and resp.status == "OK" and resp.code.startswith("APPENDUID ")
        assert resp.line.startswith("OK [APPENDUID") and resp.tag.startswith("A")
        select = s.command("SELECT INBOX")
        assert any(u.text == "* 1 EXISTS" for u in select.untagged)
        assert select.code == "READ-WRITE"
        fetch = s.command("FETCH 1 (UID FLAGS BODY.PEEK[] BODY.PEEK[3.1]<0.5>)")
        (u,) = fetch.untagged
        assert u.text.startswith("* 1 FETCH (UID 1 FLAGS (\\Flagged") and f"BODY[] {{{len(msg)}}}" in u.text
        assert u.literals == [msg, b"09:00"]
        assert msg in u.raw and u.arrived <= time.monotonic()
        data = u.fetch()
        assert data[b"SEQ"] == 1 and data[b"UID"] == 1 and b"\\Flagged" in data[b"FLAGS"]
        assert data[b"BODY[]"] == msg and data[b"BODY[3.1]<0>"] == b"09:00"
        assert select.untagged[0].fetch() is None


def test_imap_literal_plus_and_refused_literal(server, account):
    msg = corpus.message("plain")
    with imap(server, account) as s:
        assert s.command(f"APPEND INBOX {{{len(msg)}+}}", literals=[msg]).ok  # LITERAL+: no wait for "+"
        # Too big for the 50 MB quota: Dovecot answers NO instead of "+", and we do not send the data.
        huge = 60 * 1024 * 1024
        resp = s.command(f"APPEND INBOX {{{huge}}}", literals=[b"x" * huge])
        assert resp.status == "NO" and resp.code in ("OVERQUOTA", "TOOBIG", "LIMIT")
        assert s.command("NOOP").ok  # the stream is still in step
        with pytest.raises(ValueError, match="marker"):
            s.command("APPEND INBOX {3}", literals=[b"four"])


def test_idle_reports_exists_after_another_session_appends(server, account):
    with imap(server, account, name="a") as a, imap(server, account, name="b") as b:
        assert a.command("SELECT INBOX").ok
        a.idle_start()
        with pytest.raises(SessionError, match="IDLE is active"):
            a.command("NOOP")
        append(b, corpus.message("plain"))
        got = a.read_untagged(lambda us: any(u.text == "* 1 EXISTS" for u in us), timeout=5)
        assert any(u.text == "* 1 EXISTS" for u in got)
        done = a.idle_done()
        assert done.ok and done.tag != ""
        assert a.pending() == []


def test_untagged_from_other_sessions_arrive_with_the_next_command(server, account):
    with imap(server, account, name="a") as a, imap(server, account, name="b") as b:
        assert a.command("SELECT INBOX").ok
        append(b, corpus.message("plain"))
        noop = a.command("NOOP")
        assert "* 1 EXISTS" in [u.text for u in noop.untagged]
        assert a.read_untagged(None, timeout=0.2) == []  # nothing more: returns after the timeout


def test_logout_and_closed_session(server, account):
    s = imap(server, account)
    resp = s.logout()
    assert resp.ok and any(u.text.startswith("* BYE") for u in resp.untagged)
    assert s.closed
    with pytest.raises(ConnectionClosed):
        s.command("NOOP")
    s.close()  # never raises, also when already closed


def test_open_session_uses_the_endpoint(server):
    with open_session("imap", server.imap, name="x", timeout=2) as s:
        assert isinstance(s, IMAPSession) and s.name == "x"
    with open_session("pop3", server.pop3, name="y", timeout=2) as s:
        assert isinstance(s, POP3Session)
    with pytest.raises(ValueError):
        open_session("smtp", server.imap, name="z")


# -- transcript ------------------------------------------------------------------------------------------------
def test_transcript_records_both_sessions_without_passwords(server, account):
    transcript = Transcript()
    with imap(server, name="a", transcript=transcript) as a, pop3(server, name="p", transcript=transcript) as p:
        a.login(account.user, account.password)
        p.login(account.user, account.password)
        # A suite author's raw commands: redacted by their shape, the password not being registered.
        other = Transcript()
        with imap(server, name="r", transcript=other) as r:
            r.command(f'LOGIN {account.user} "{account.password}"')
        with pop3(server, name="q", transcript=other) as q:
            q.command(f"USER {account.user}")
            q.command(f"PASS {account.password}")
        append(a, corpus.message("large"))
        a.command("SELECT INBOX")
        a.command("FETCH 1 BODY.PEEK[]")
        p.command("RETR 1")
    text = transcript.render() + other.render()
    assert account.password not in text
    assert f"a C: A0001 LOGIN {account.user} ***" in text
    assert f'r C: A0001 LOGIN {account.user} ***' in text
    assert "p C: PASS ***" in text and "q C: PASS ***" in text
    assert "a S: * 1 EXISTS" in text
    assert f"{{{len(corpus.message('large'))} bytes: " in text  # the big literal is abbreviated
    assert len(text) < 20_000
    first = transcript.entries[0]
    assert first.session == "a" and first.direction == "S" and first.t >= 0
    assert [e.t for e in transcript.entries] == sorted(e.t for e in transcript.entries)
    line = text.splitlines()[0]
    assert line[:7].strip().replace(".", "").isdigit() and line[7:].startswith(" a S: * OK")


def test_transcript_redaction_rules():
    t = Transcript(secrets=["hunter2"])
    t.client("a", b'A1 LOGIN "bob" "pa ss"\r\n')
    t.client("a", b"A2 LOGIN {3}\r\n")
    t.server("a", b"+ OK\r\n")
    t.client("a", b"bob {6}\r\n")
    t.server("a", b"+ OK\r\n")
    t.client("a", b"sesame\r\n")
    t.client("a", b"A3 AUTHENTICATE PLAIN\r\n")
    t.server("a", b"+ \r\n")
    t.client("a", b"AGJvYgBzZXNhbWU=\r\n")
    t.server("a", b"A3 OK done\r\n")
    t.client("a", b"A4 AUTHENTICATE PLAIN AGJvYgBzZXNhbWU=\r\n")
    t.server("a", b"A4 OK done\r\n")
    t.client("a", b"A5 NOOP\r\n")
    t.client("a", b"A6 APPEND INBOX {17}\r\n")
    t.client("a", b"PASS in a message\r\n")  # literal data: not a command
    t.client("a", b"A7 LOGIN {3}\r\n")
    t.server("a", b"A7 NO too early\r\n")  # the literal is refused: what follows is a new command
    t.client("a", b"A8 LOGIN bob sesame\r\n")
    t.client("p", b"PASS my secret\r\n", literals=False)
    t.client("p", b"APOP bob c4c9334bac560ecc979e58001b3e22fb\r\n", literals=False)
    t.client("p", b"AUTH PLAIN AGJvYgBzZXNhbWU=\r\n", literals=False)
    t.server("p", b"+OK\r\n", literals=False)
    t.note("p", "hunter2 is registered")
    t.server("p", b"bad \xff byte\r\n", literals=False)
    lines = [line.split(": ", 1)[1] for line in t.render().splitlines()]
    assert lines == [
        "A1 LOGIN \"bob\" ***",
        "A2 LOGIN {3}", "+ OK", "bob {6}", "+ OK", "***",
        "A3 AUTHENTICATE PLAIN", "+ ", "***", "A3 OK done",
        "A4 AUTHENTICATE PLAIN ***", "A4 OK done",
        "A5 NOOP",
        "A6 APPEND INBOX {17}", "PASS in a message",
        "A7 LOGIN {3}", "A7 NO too early", "A8 LOGIN bob ***",
        "PASS ***", "APOP bob ***", "AUTH PLAIN ***", "+OK",
        "*** is registered",
        "bad \\xff byte",
    ]
    t.add_secret("bob")  # also masked in what was recorded before
    assert "bob" not in t.render()
    assert redact_line("A1 LOGIN user secret") == "A1 LOGIN user ***"


# -- LMTP and probing -------------------------------------------------------------------------------------------
def test_lmtp_delivery(server, account):
    msg = corpus.message("plain")
    deliver(server.lmtp, account.user, msg)
    with pop3(server, account) as p:
        body = p.command("RETR 1").body
    assert body.endswith(msg)  # Dovecot prepends Return-Path and Delivered-To
    with pytest.raises(ProtocolError, match="nobody-here"):
        deliver(server.lmtp, "nobody-here", msg)
    with pytest.raises(ProtocolError, match="cannot connect to lmtp://127.0.0.1:1"):
        deliver(Endpoint("lmtp", "127.0.0.1", 1), account.user, msg)


def test_probe_target(server):
    info = probe_target(server)
    assert info["errors"] == []
    assert info["imap_greeting"].startswith("* OK") and "IMAP4REV1" in info["imap_capabilities"]
    assert info["pop3_greeting"].startswith("+OK") and "UIDL" in info["pop3_capabilities"]


# -- misbehaving servers -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def scripted_server(script: Callable[[socket.socket, threading.Event], None]) -> Iterator[int]:
    """A one-connection server on 127.0.0.1 running `script(conn, stop)`; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    accepted: list[socket.socket] = []

    def run() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            accepted.append(conn)
            with conn:
                script(conn, stop)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        for conn in accepted:  # wakes a script blocked in recv
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        thread.join(5)


def _lines(conn: socket.socket) -> Iterator[bytes]:
    f = conn.makefile("rb")
    while line := f.readline():
        yield line


def test_a_server_that_never_answers_times_out_with_the_command():
    def script(conn, stop):
        conn.sendall(b"+OK ready\r\n")
        stop.wait(10)

    with scripted_server(script) as port:
        p = POP3Session("127.0.0.1", port, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(ProtocolTimeout, match=r"no response to `DELE 1` within 0.5 s"):
            p.command("DELE 1")
        assert time.monotonic() - started < 3  # bounded by the deadline, with slack for a busy CI machine
        assert p.closed  # out of step: the session is over


def test_silent_greeting_and_partial_response_time_out():
    silent = scripted_server(lambda conn, stop: stop.wait(10))
    with silent as port, pytest.raises(ProtocolTimeout, match="no greeting within 0.3 s from imap://127.0.0.1"):
        IMAPSession("127.0.0.1", port, timeout=0.3)

    def script(conn, stop):
        conn.sendall(b"+OK ready\r\n")
        for line in _lines(conn):
            if line.startswith(b"RETR"):
                conn.sendall(b"+OK\r\nline 1\r\nline 2\r\nline 3\r\n")
                stop.wait(10)

    with scripted_server(script) as port:
        p = POP3Session("127.0.0.1", port, timeout=0.5)
        with pytest.raises(ProtocolTimeout, match=r"no complete response to `RETR 1` within 0.5 s \(got 3 lines\)"):
            p.command("RETR 1")


def test_a_trickling_server_is_bounded_by_the_deadline():
    def script(conn, stop):
        conn.sendall(b"* OK ready\r\n")
        conn.recv(100)
        while not stop.wait(0.05):  # one byte at a time, never a line end
            conn.sendall(b"*")

    with scripted_server(script) as port:
        s = IMAPSession("127.0.0.1", port, timeout=0.6)
        started = time.monotonic()
        with pytest.raises(ProtocolTimeout, match=r"no complete response to `A0001 NOOP` within 0.6 s"):
            s.command("NOOP")
        assert time.monotonic() - started < 3  # the deadline holds although bytes keep arriving


def test_endless_garbage_without_newlines_fails_fast():
    def script(conn, stop):
        conn.sendall(b"+OK ready\r\n")
        conn.recv(100)
        while not stop.is_set():
            conn.sendall(b"garbage " * 8192)

    with scripted_server(script) as port:
        p = POP3Session("127.0.0.1", port, timeout=10)
        started = time.monotonic()
        with pytest.raises(ProtocolError, match="longer than 1 MiB"):
            p.command("STAT")
        assert time.monotonic() - started < 8  # the size limit, not the 10 s timeout, ended it


def test_connection_closed_mid_response():
    def script(conn, stop):
        conn.sendall(b"* OK ready\r\n")
        conn.recv(100)
        conn.sendall(b"* 1 FETCH (BODY[] {100}\r\nonly a few bytes")

    with scripted_server(script) as port:
        s = IMAPSession("127.0.0.1", port, timeout=2)
        with pytest.raises(ConnectionClosed, match=r"closed the connection in the middle of its response to `A0001"):
            s.command("FETCH 1 BODY[]")
        assert s.closed


def test_connection_refused():
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    with pytest.raises(ProtocolError, match=f"cannot connect to imap://127.0.0.1:{port}: Connection refused"):
        IMAPSession("127.0.0.1", port)


def test_scripted_imap_pending_unexpected_continuation_and_bye():
    def script(conn, stop):
        conn.sendall(b"* OK ready\r\n")
        for line in _lines(conn):
            if b"IDLE" in line:
                conn.sendall(b"* 5 EXISTS\r\n+ idling\r\n")
                time.sleep(0.05)
                conn.sendall(b"* 6 EXISTS\r\n")
            elif line.startswith(b"DONE"):
                conn.sendall(b"A0001 OK done\r\n")
            elif b"NOOP" in line:
                conn.sendall(b"+ what?\r\n")

    with scripted_server(script) as port:
        s = IMAPSession("127.0.0.1", port, timeout=2)
        s.idle_start()
        assert [u.text for u in s.pending()] == ["* 5 EXISTS"]
        assert s.pending() == []  # handing out clears them
        got = s.read_untagged(lambda us: len(us) >= 1, timeout=2)
        assert [u.text for u in got] == ["* 6 EXISTS"]
        assert s.idle_done().ok
        with pytest.raises(ProtocolError, match=r"unexpected continuation request `\+ what\?`"):
            s.command("NOOP")

    busy = scripted_server(lambda conn, stop: conn.sendall(b"* BYE too busy\r\n"))
    with busy as port, pytest.raises(ProtocolError, match="refused the session: \\* BYE too busy"):
        IMAPSession("127.0.0.1", port, timeout=2)


def test_pop3_lenient_session_accepts_bare_lf_and_counts_it():
    def script(conn, stop):
        conn.sendall(b"+OK ready\r\n")
        for line in _lines(conn):
            if line.startswith(b"RETR"):
                conn.sendall(b"+OK\nSubject: x\n\nbody\n..dot\n.\n")

    with scripted_server(script) as port:
        transcript = Transcript()
        p = POP3Session("127.0.0.1", port, timeout=2, transcript=transcript, strict_line_ends=False)
        resp = p.command("RETR 1")
        assert resp.body == b"Subject: x\r\n\r\nbody\r\n.dot\r\n"
        assert resp.bare_lf_lines == 6 and resp.wire_octets == len(b"Subject: x\n\nbody\n..dot\n")
        assert "bare LF" in transcript.render()


def _pop3_serving(answers: dict[bytes, bytes], greeting: bytes = b"+OK ready\r\n"):
    def script(conn, stop):
        conn.sendall(greeting)
        for line in _lines(conn):
            conn.sendall(answers.get(line.split()[0].upper(), b"-ERR what\r\n"))

    return scripted_server(script)


@pytest.mark.parametrize("answer, offset, shown", [
    (b"+OK 2 320\n", 9, "`+OK 2 320\\n`"),  # the status line
    (b"+OK\r\nSubject: x\r\n\r\nbody\n.\r\n", 23, "`+OK\\r\\n` ... `body\\n`"),  # a body line
    (b"+OK\r\nSubject: x\r\n\r\nbody\r\n.\n", 26, "`+OK\\r\\n` ... `.\\n`"),  # the terminating dot
])
def test_pop3_bare_lf_fails_the_read_with_its_position(answer, offset, shown):
    verb = b"STAT" if answer.startswith(b"+OK 2") else b"RETR"
    with _pop3_serving({verb: answer, b"NOOP": b"+OK\r\n"}) as port:
        transcript = Transcript()
        p = POP3Session("127.0.0.1", port, timeout=2, transcript=transcript)
        with pytest.raises(ProtocolError) as exc:
            p.command(verb.decode() + (" 1" if verb == b"RETR" else ""))
        message = str(exc.value)
        assert "bare LF instead of CRLF (RFC 1939 §3)" in message and f"response to `{verb.decode()}" in message
        assert f"byte offset {offset} of the response {shown}" in message, message
        assert p.closed  # out of step: the session is over
        assert "body" in transcript.render() or verb == b"STAT"  # the transcript shows what came


def test_pop3_bare_lf_in_greeting_and_continuation_fails():
    with _pop3_serving({}, greeting=b"+OK ready\n") as port, \
            pytest.raises(ProtocolError, match=r"bare LF .* in its greeting: byte offset 9 of the response `\+OK ready\\n`"):
        POP3Session("127.0.0.1", port, timeout=2)
    with _pop3_serving({b"AUTH": b"+ \n", b"QUIT": b"+OK\r\n"}) as port:
        p = POP3Session("127.0.0.1", port, timeout=2)
        with pytest.raises(ProtocolError, match=r"response to `AUTH PLAIN`: byte offset 2 of the response `\+ \\n`"):
            p.command("AUTH PLAIN", continuations=["AGEAYg=="])
    with _pop3_serving({b"STAT": b"+OK 1 2\r\n"}) as port:  # CRLF everywhere: nothing to report
        assert POP3Session("127.0.0.1", port, timeout=2).command("STAT").ok


def test_imap_bare_lf_fails_the_read_with_its_position():
    def script(conn, stop):
        conn.sendall(b"* OK ready\r\n")
        for line in _lines(conn):
            tag = line.split()[0]
            if b"CAPABILITY" in line:
                conn.sendall(b"* CAPABILITY IMAP4rev1\n" + tag + b" OK done\r\n")
            elif b"AUTHENTICATE" in line:
                conn.sendall(b"+ \n")
            elif b"FETCH" in line:  # a bare LF inside a literal is data, not a line end
                conn.sendall(b"* 1 FETCH (BODY[] {7}\r\na\nb\r\nc)\r\n" + tag + b" OK done\n")
            else:
                conn.sendall(tag + b" OK\r\n")

    for command, pattern in [
        ("CAPABILITY", r"response to `A0001 CAPABILITY`: byte offset 22 of the response `\* CAPABILITY IMAP4rev1\\n`"),
        ("AUTHENTICATE PLAIN", r"response to `A0001 AUTHENTICATE PLAIN`: byte offset 2 of the response `\+ \\n`"),
        ("FETCH 1 BODY[]", r"response to `A0001 FETCH 1 BODY\[\]`: byte offset 13 of the response `A0001 OK done\\n`"),
    ]:
        with scripted_server(script) as port:
            s = IMAPSession("127.0.0.1", port, timeout=2)
            with pytest.raises(ProtocolError, match=r"bare LF instead of CRLF \(RFC 3501 §2.2, RFC 9051 §2.2\) in its "
                               + pattern):
                s.command(command, continuations=["AGEAYg=="])
            assert s.closed


def test_bare_lf_message_keeps_utf8_text_so_secrets_can_be_masked():
    with _pop3_serving({b"PASS": "-ERR wrong pässwört\n".encode()}) as port:
        p = POP3Session("127.0.0.1", port, timeout=2)
        with pytest.raises(ProtocolError) as exc:
            p.command("PASS pässwört")
    assert "`-ERR wrong pässwört\\n`" in str(exc.value)
    assert "pässwört" not in Transcript(secrets=["pässwört"]).redact(str(exc.value))


def test_imap_lenient_session_notes_bare_lf():
    def script(conn, stop):
        conn.sendall(b"* OK ready\n")
        for line in _lines(conn):
            conn.sendall(line.split()[0] + b" OK fine\n")

    with scripted_server(script) as port:
        transcript = Transcript()
        s = IMAPSession("127.0.0.1", port, timeout=2, transcript=transcript, strict_line_ends=False)
        assert s.command("NOOP").ok and s.command("NOOP").ok
        assert transcript.render().count("line(s) ended with a bare LF") == 3


@pytest.fixture(scope="module")
def tls_server_context(tmp_path_factory):
    """A server context with a fresh self-signed certificate for 127.0.0.1; returns (context, cert path)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True, capture_output=True,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    return ctx, str(d / "cert.pem")


def test_implicit_tls_and_starttls(tls_server_context):
    ctx, cert = tls_server_context

    def answer_one(conn, greeting=b""):
        if greeting:
            conn.sendall(greeting)
        line = conn.makefile("rb").readline()
        conn.sendall(b"+OK fine\r\n" if not line.startswith(b"A0") else line.split()[0] + b" OK fine\r\n")

    def implicit(conn, stop):
        with contextlib.suppress(ssl.SSLError):
            answer_one(ctx.wrap_socket(conn, server_side=True), b"* OK secure\r\n")

    def stls(conn, stop):
        conn.sendall(b"+OK ready\r\n")
        assert conn.recv(100) == b"STLS\r\n"
        conn.sendall(b"+OK begin TLS\r\n")
        answer_one(ctx.wrap_socket(conn, server_side=True))

    transcript = Transcript()
    with scripted_server(implicit) as port:
        s = IMAPSession("127.0.0.1", port, tls=True, ca_file=cert, transcript=transcript, timeout=3)
        assert s.url.startswith("imaps://") and s.command("NOOP").ok
        s.drop()
    with scripted_server(stls) as port:
        p = POP3Session("127.0.0.1", port, starttls=True, tls_verify=False, transcript=transcript, timeout=3)
        assert p.command("NOOP").ok
        p.drop()
    assert "TLS established (TLSv1." in transcript.render()
    with scripted_server(implicit) as port, pytest.raises(ProtocolError, match="certificate verification failed"):
        IMAPSession("127.0.0.1", port, tls=True, timeout=3)  # self-signed, not in the default trust store


def test_failed_logins_never_show_the_password():
    def pop3_script(conn, stop):
        conn.sendall(b"+OK ready\r\n")
        for line in _lines(conn):
            conn.sendall(b"+OK\r\n" if line.startswith(b"USER") else b"-ERR [AUTH] Authentication failed.\r\n")

    transcript = Transcript()
    with scripted_server(pop3_script) as port:
        p = POP3Session("127.0.0.1", port, timeout=2, transcript=transcript)
        with pytest.raises(ProtocolError, match="login as bob failed: -ERR") as exc:
            p.login("bob", "Wrong-Secret-123")
        p.drop()
    assert "Wrong-Secret-123" not in str(exc.value) + transcript.render()
    assert "p C: PASS ***" in transcript.render()

    received = []

    def imap_script(conn, stop):
        f = conn.makefile("rb")
        conn.sendall(b"* OK ready\r\n")
        line = f.readline()
        received.append(line)
        while line.rstrip().endswith(b"}"):  # a literal follows once we say go
            conn.sendall(b"+ go ahead\r\n")
            size = int(line.rstrip()[:-1].rsplit(b"{", 1)[1])
            received.append(f.read(size))
            line = f.readline()
            received.append(line)
        tag = received[0].split()[0]
        conn.sendall(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")

    with scripted_server(imap_script) as port:
        s = IMAPSession("127.0.0.1", port, timeout=2, transcript=transcript, name="a")
        with pytest.raises(ProtocolError, match="login as bob failed: NO") as exc:
            s.login("bob", "Wrong-Sécret-123")  # not ASCII: sent as a literal
        s.drop()
    assert received == [b"A0001 LOGIN bob {17}\r\n", "Wrong-Sécret-123".encode(), b"\r\n"]
    assert "Sécret" not in str(exc.value) + transcript.render()
    assert astring("plain") == ("plain", None)
    assert astring('pa ss"\\') == ('"pa ss\\"\\\\"', None)


def test_probe_reports_a_failed_login_without_the_password():
    def script(conn, stop):
        conn.sendall(b"* OK ready\r\n")
        for line in _lines(conn):
            tag, verb = line.split()[:2]
            reply = {b"LOGIN": b"NO [AUTHENTICATIONFAILED] Authentication failed.", b"LOGOUT": b"OK bye"}
            conn.sendall(tag + b" " + reply.get(verb.upper(), b"BAD what") + b"\r\n")

    with scripted_server(script) as port:
        target = Target(name="only imap", accounts=[Account("user1", "Wrong-Secret-123")],
                        imap=Endpoint("imap", "127.0.0.1", port), timeout=2)
        info = probe_target(target)
    assert info["imap_greeting"] == "* OK ready" and info["imap_capabilities"] == []
    assert info["pop3_greeting"] is None and info["pop3_capabilities"] == []
    assert len(info["errors"]) == 1 and "login as user1 failed: NO [AUTHENTICATIONFAILED]" in info["errors"][0]
    assert "Wrong-Secret-123" not in str(info)
    assert probe_target(target, account_index=3)["errors"] == ["the target has no account number 4"]
