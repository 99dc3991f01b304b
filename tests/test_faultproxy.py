"""The fault proxy against the embedded Dovecot: transparent when asked, and each fault really breaks
the one behaviour it names.

Every fault in FAULTS needs a demonstration in DEMOS: a small scenario that returns True when the
behaviour is broken. It runs twice: through a transparent proxy (must return False, so the scenario
is sound) and through the faulty one (must return True, and the fault must have fired).
"""

from __future__ import annotations

import poplib
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from tests.faultproxy import FAULTS, Fault, FaultProxy, proxied_target, target_for

# dot-stuffing material, a bare "." line, a fake literal marker, 8-bit bytes: the awkward cases in one message
MSG = (b"From: Alice <alice@example.com>\r\nTo: bob@example.com\r\nSubject: fault proxy\r\n"
       b"Message-ID: <fp-1@example.com>\r\n\r\n"
       b"first line\r\n.dot line\r\n..two dots\r\n.\r\nnot a literal {5}\r\n\xc3\xa9t\xc3\xa9 \xff\r\n"
       b"middle " + b"abcdefghij" * 20 + b"\r\nlast line\r\n")
MSG2 = b"From: carol@example.com\r\nSubject: second\r\n\r\nshort body\r\n"
SPECIAL = {"INBOX", "Sent", "Drafts", "Trash", "Junk"}
AREAS = {"deletion", "leave-on-server", "retrieval", "lock", "auth", "session", "folders", "notification",
         "partial-fetch", "flags", "search", "quota", "uid", "copy-move", "append", "sent", "cross-protocol",
         "capability", "syntax"}

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------------------------
# A raw IMAP client: lines and literals, deadlines, nothing hidden


@dataclass
class Resp:
    text: bytes  # the lines joined, literal markers kept, literal data left out
    literals: list[bytes] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Resp({self.text!r})"


def _parse(buf: bytes) -> tuple[Resp, int] | None:
    pos, text, lits = 0, b"", []
    while True:
        i = buf.find(b"\r\n", pos)
        if i < 0:
            return None
        line = buf[pos:i]
        text += line
        pos = i + 2
        m = re.search(rb"\{(\d+)\+?\}$", line)
        if not m:
            return Resp(text, lits), pos
        n = int(m[1])
        if len(buf) < pos + n:
            return None
        lits.append(buf[pos:pos + n])
        pos += n


class Imap:
    def __init__(self, host: str, port: int, account=None):
        self.sock = socket.create_connection((host, port), timeout=5)
        self.buf = b""
        self.n = 0
        self.unclaimed: list[Resp] = []
        self.greeting = self.read(5)
        assert self.greeting and self.greeting.text.startswith(b"* OK"), self.greeting
        if account is not None:
            tagged, _ = self.cmd(f"LOGIN {account.user} {account.password}")
            assert tagged.text.split()[1] == b"OK", tagged

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, timeout: float) -> Resp | None:
        """One complete response, or None if none is complete within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            parsed = _parse(self.buf)
            if parsed:
                resp, used = parsed
                self.buf = self.buf[used:]
                return resp
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not data:
                raise EOFError("server closed the connection")
            self.buf += data

    def _tag(self) -> bytes:
        self.n += 1
        return b"t%d" % self.n

    def _until_tagged(self, tag: bytes, timeout: float = 5) -> tuple[Resp, list[Resp]]:
        untagged = []
        while True:
            r = self.read(timeout)
            assert r is not None, f"no tagged response for {tag!r}"
            if r.text.startswith(tag + b" "):
                return r, untagged
            if r.text.startswith(b"*"):
                untagged.append(r)

    def cmd(self, line: str | bytes, literal: bytes | None = None, plus: bool = False) -> tuple[Resp, list[Resp]]:
        """Send `line` (with one trailing literal if given) and read up to the tagged response."""
        tag = self._tag()
        line = line.encode() if isinstance(line, str) else line
        if literal is None:
            self.send(tag + b" " + line + b"\r\n")
            return self._until_tagged(tag)
        self.send(tag + b" " + line + b" {%d%s}\r\n" % (len(literal), b"+" if plus else b""))
        if not plus:
            r = self.read(5)
            assert r is not None
            if r.text.startswith(tag + b" "):
                return r, []
            assert r.text.startswith(b"+"), r
        self.send(literal + b"\r\n")
        return self._until_tagged(tag)

    def ok(self, line: str | bytes, literal: bytes | None = None) -> list[Resp]:
        tagged, untagged = self.cmd(line, literal)
        assert tagged.text.split()[1] == b"OK", tagged
        return untagged

    def idle_start(self) -> None:
        self.idle_tag = self._tag()
        self.send(self.idle_tag + b" IDLE\r\n")
        while True:
            r = self.read(5)
            assert r is not None, "no + for IDLE"
            if r.text.startswith(b"+"):
                return
            self.unclaimed.append(r)

    def idle_done(self) -> list[Resp]:
        self.send(b"DONE\r\n")
        tagged, untagged = self._until_tagged(self.idle_tag)
        assert tagged.text.split()[1] == b"OK", tagged
        return untagged

    def wait_for(self, pattern: bytes, timeout: float, give_up: Callable[[], bool] = lambda: False) -> Resp | None:
        """The first (unclaimed or arriving) response matching `pattern`, or None."""
        for r in self.unclaimed:
            if re.match(pattern, r.text):
                return r
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not give_up():
            r = self.read(0.05)
            if r is None:
                continue
            if re.match(pattern, r.text):
                return r
            self.unclaimed.append(r)
        return None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------------
# The test environment: one account, emptied before use; direct access for checking


class Env:
    def __init__(self, target, account):
        self.target, self.account = target, account
        self.clients: list = []
        self.proxies: list[FaultProxy] = []
        self.admin = self.imap()
        self.reset()

    # connections -------------------------------------------------------------------------------
    def imap(self, proxy: FaultProxy | None = None, login: bool = True) -> Imap:
        host, port = (proxy.host, proxy.port) if proxy else (self.target.imap.host, self.target.imap.port)
        c = Imap(host, port, self.account if login else None)
        self.clients.append(c)
        return c

    def pop(self, proxy: FaultProxy | None = None, login: bool = True, timeout: float = 5) -> poplib.POP3:
        host, port = (proxy.host, proxy.port) if proxy else (self.target.pop3.host, self.target.pop3.port)
        p = poplib.POP3(host, port, timeout=timeout)
        self.clients.append(p)
        if login:
            p.user(self.account.user)
            p.pass_(self.account.password)
        return p

    def proxy(self, protocol: str, fault: str | None) -> FaultProxy:
        ep = getattr(self.target, protocol)
        proxy = FaultProxy(ep.host, ep.port, protocol, fault)
        proxy.start()
        self.proxies.append(proxy)
        return proxy

    def close(self) -> None:
        for c in self.clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001, S110 - best effort
                pass
        self.clients.clear()
        for p in self.proxies:
            p.stop()
        self.proxies.clear()

    # mail ----------------------------------------------------------------------------------------
    def seed(self, *messages: bytes, mailbox: str = "INBOX") -> None:
        for m in messages:
            self.admin.ok(f"APPEND {mailbox}", m)

    def maildrop(self, proxy: FaultProxy, *messages: bytes) -> poplib.POP3:
        """`messages` appended to INBOX, then a POP3 session through `proxy`, logged in."""
        self.seed(*messages)
        return self.pop(proxy)

    def inbox(self, proxy: FaultProxy, *messages: bytes) -> Imap:
        """`messages` appended to INBOX, then an IMAP session through `proxy` with INBOX selected."""
        self.seed(*messages)
        a = self.imap(proxy)
        a.ok("SELECT INBOX")
        return a

    def count(self, mailbox: str = "INBOX") -> int:
        untagged = self.admin.ok(f"STATUS {mailbox} (MESSAGES)")
        return int(re.search(rb"MESSAGES (\d+)", untagged[0].text)[1])

    def flags(self, n: int = 1) -> bytes:
        c = self.imap()
        c.ok("EXAMINE INBOX")
        untagged = c.ok(f"FETCH {n} FLAGS")
        c.close()
        return re.search(rb"FLAGS \(([^)]*)\)", untagged[0].text)[1]

    def mailboxes(self) -> list[str]:
        names = []
        for r in self.admin.ok('LIST "" "*"'):
            m = re.match(rb'\* LIST \([^)]*\) (?:NIL|"[^"]*") "?([^"]*)"?$', r.text)
            names.append(m[1].decode())
        return names

    def reset(self) -> None:
        for name in sorted(self.mailboxes(), key=len, reverse=True):
            if name not in SPECIAL:
                self.admin.ok(f'DELETE "{name}"')
        for name in SPECIAL:
            if self.count(name):
                self.admin.ok(f"SELECT {name}")
                self.admin.ok("STORE 1:* +FLAGS.SILENT (\\Deleted)")
                self.admin.ok("CLOSE")


@pytest.fixture
def env(target):
    e = Env(target, target.accounts[-1])
    yield e
    e.close()


@pytest.fixture
def fault_env(request):
    """An Env on the embedded Dovecot whose settings the fault is shown against (see Fault.profile)."""
    name = request.node.callspec.params["name"]
    target = target_for(FAULTS[name].implementation.profile, request)
    e = Env(target, target.accounts[-1])
    yield e
    e.close()


def drop(p: poplib.POP3) -> None:
    """Close a POP3 connection without QUIT."""
    p.file.close()
    p.sock.close()


# ---------------------------------------------------------------------------------------------------
# Transparent mode


def _pop3_stream(host: str, port: int, account) -> bytes:
    """Everything the server says to a pipelined POP3 session, up to its close."""
    script = (f"USER {account.user}\r\nPASS {account.password}\r\nSTAT\r\nLIST\r\nUIDL\r\nRETR 1\r\nTOP 1 3\r\n"
              "LIST 2\r\nUIDL 2\r\nCAPA\r\nRETR 2\r\nTOP 2 0\r\nNOOP\r\nRETR 9\r\nQUIT\r\n").encode()
    with socket.create_connection((host, port), timeout=5) as s:
        s.recv(1024)  # the greeting, then the rest in one go
        s.sendall(script)
        out = b""
        while data := s.recv(65536):
            out += data
    return out


def test_transparent_pop3_is_byte_exact(env):
    env.seed(MSG, MSG2)
    proxy = env.proxy("pop3", None)
    direct = _pop3_stream(env.target.pop3.host, env.target.pop3.port, env.account)
    via = _pop3_stream(proxy.host, proxy.port, env.account)
    assert b"...two dots\r\n" in direct and direct.endswith(b"+OK Logging out.\r\n")
    assert via == direct
    # and, one command at a time, with a stock client
    p, q = env.pop(), env.pop(proxy)
    assert q.retr(1) == p.retr(1)
    assert q.top(1, 2) == p.top(1, 2)
    assert q.capa() == p.capa()
    # bare AUTH (before login): Dovecot lists the mechanisms as a multi-line answer
    p, q = env.pop(login=False), env.pop(proxy, login=False)
    assert q._longcmd("AUTH") == p._longcmd("AUTH")
    assert q.user(env.account.user).startswith(b"+OK")
    assert not proxy.errors and not proxy.fired


def test_transparent_pop3_sasl_and_drop(env):
    """AUTH PLAIN's continuation passes; a dropped client is a dropped session upstream; QUIT commits."""
    import base64

    env.seed(MSG)
    proxy = env.proxy("pop3", None)
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"+OK")
        s.sendall(b"AUTH PLAIN\r\n")
        assert f.readline().startswith(b"+ ")
        s.sendall(base64.b64encode(b"\0%s\0%s" % (env.account.user.encode(), env.account.password.encode())) + b"\r\n")
        assert f.readline().startswith(b"+OK")
        s.sendall(b"STAT\r\n")
        assert f.readline().startswith(b"+OK 1 ")
        f.close()
    p = env.pop(proxy)
    p.dele(1)
    drop(p)
    assert proxy.wait_idle(5)
    assert env.count() == 1, "a dropped POP3 session through the proxy committed its DELE"
    p = env.pop(proxy)
    p.dele(1)
    p.quit()
    assert env.count() == 0
    assert not proxy.errors


def test_transparent_imap_literals(env):
    proxy = env.proxy("imap", None)
    a = env.imap(proxy)
    a.ok("APPEND INBOX", MSG)  # synchronizing literal, containing a line that looks like a literal marker
    tagged, _ = a.cmd("APPEND INBOX (\\Seen)", MSG2, plus=True)  # LITERAL+
    assert tagged.text.split()[1] == b"OK"
    # refused before the literal is sent: the proxy must not wait for (or swallow) literal data
    tagged, _ = a.cmd("APPEND NoSuchBox", MSG)
    assert b"NO [TRYCREATE]" in tagged.text
    a.ok("NOOP")
    tagged, _ = a.cmd("APPEND INBOX {60000000}")  # over quota: refused before the data, too
    assert b"NO [OVERQUOTA]" in tagged.text
    a.ok("SELECT INBOX")
    via = a.ok("FETCH 1:2 (BODY.PEEK[] BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    d = env.imap()
    d.ok("SELECT INBOX")
    direct = d.ok("FETCH 1:2 (BODY.PEEK[] BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert [r.literals for r in via] == [r.literals for r in direct]
    assert via[0].literals[0] == MSG and via[1].literals[0] == MSG2
    # a literal in a command's middle, and quoted strings with specials
    a.ok(b"CREATE {7}\r\nFP lit1")  # sent as one chunk: the client here does not wait for "+" (server must)
    assert "FP lit1" in env.mailboxes()
    assert not proxy.errors and not proxy.fired


def test_transparent_imap_idle_and_sasl(env):
    import base64

    proxy = env.proxy("imap", None)
    a = env.imap(proxy, login=False)
    a.send(b"t1 AUTHENTICATE PLAIN\r\n")
    assert a.read(5).text.startswith(b"+")
    a.n = 1
    a.send(base64.b64encode(b"\0%s\0%s" % (env.account.user.encode(), env.account.password.encode())) + b"\r\n")
    r = a.read(5)
    assert r.text.startswith(b"t1 OK"), r
    a.ok("SELECT INBOX")
    a.idle_start()
    env.seed(MSG)
    assert a.wait_for(rb"\* 1 EXISTS", 5), "no EXISTS during IDLE through the transparent proxy"
    a.idle_done()
    a.ok("NOOP")
    assert not proxy.errors


def test_proxied_target(target, tmp_path):
    from harness.targets.target_file import load_target

    with proxied_target(target, imap_fault="imap-search-misses") as t:
        assert t.lmtp == target.lmtp
        assert t.pop3.port == t.proxies["pop3"].port != target.pop3.port
        assert t.proxies["imap"].fault_name == "imap-search-misses" and t.proxies["pop3"].fault_name is None
        t.dump(tmp_path / "t.yaml")
        loaded = load_target(tmp_path / "t.yaml")
        assert (loaded.imap.host, loaded.imap.port) == ("127.0.0.1", t.imap.port)
        p = poplib.POP3(t.pop3.host, t.pop3.port, timeout=5)
        assert p.getwelcome().startswith(b"+OK")
        p.quit()
    with proxied_target(target, fault="pop3-dele-ignored") as t:
        assert t.proxies["pop3"].fault_name == "pop3-dele-ignored"
    with pytest.raises(ValueError):
        FaultProxy("127.0.0.1", 1, "pop3", "imap-search-misses")


def test_pipelined_local_answers_stay_in_order(env):
    """A command the fault answers itself is answered after the server's answers to earlier commands."""
    env.seed(MSG, MSG2)
    proxy = env.proxy("pop3", "pop3-dele-ignored")
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(f"USER {env.account.user}\r\nPASS {env.account.password}\r\n".encode())
        f.readline(), f.readline()
        s.sendall(b"LIST\r\nDELE 1\r\nSTAT\r\nDELE 2\r\nUIDL\r\nQUIT\r\n")
        lines = f.read().split(b"\r\n")
    assert lines[0].startswith(b"+OK") and lines[1:4] == [b"1 %d" % len(MSG), b"2 %d" % len(MSG2), b"."]
    assert lines[4] == b"+OK Marked to be deleted."
    assert lines[5].startswith(b"+OK 2 ")
    assert lines[6] == b"+OK Marked to be deleted."
    assert lines[7].startswith(b"+OK") and lines[10] == b"." and lines[11].startswith(b"+OK Logging out")


# ---------------------------------------------------------------------------------------------------
# One demonstration per fault: True when the behaviour is broken

DEMOS: dict[str, Callable[[Env, FaultProxy], bool]] = {}


def demo(name: str):
    def deco(fn):
        DEMOS[name] = fn
        return fn

    return deco


@demo("pop3-dele-ignored")
def _(env, proxy):
    p = env.maildrop(proxy, MSG)
    p.dele(1)
    p.quit()
    return env.count() == 1


@demo("pop3-rset-ignored")
def _(env, proxy):
    p = env.maildrop(proxy, MSG)
    p.dele(1)
    p.rset()
    p.quit()
    return env.count() == 0


@demo("pop3-drop-commits")
def _(env, proxy):
    p = env.maildrop(proxy, MSG)
    p.dele(1)
    drop(p)
    assert proxy.wait_idle(5)
    return env.count() == 0


@demo("pop3-stat-counts-deleted")
def _(env, proxy):
    p = env.maildrop(proxy, MSG, MSG2)
    p.dele(1)
    count = p.stat()[0]
    listed = p.list()[1]
    return count != 1 or listed != [b"2 %d" % len(MSG2)]


@demo("pop3-uidl-unstable")
def _(env, proxy):
    p = env.maildrop(proxy, MSG)
    first = p.uidl()[1]
    p.quit()
    q = env.pop(proxy)
    return q.uidl()[1] != first


@demo("pop3-uidl-duplicate")
def _(env, proxy):
    p = env.maildrop(proxy, MSG, MSG2)
    ids = [line.split()[1] for line in p.uidl()[1]]
    return len(set(ids)) != 2


@demo("pop3-dot-unstuffed")
def _(env, proxy):
    env.seed(MSG)
    lines = env.pop(proxy).retr(1)[1]  # poplib undoes the stuffing: ".." -> "."
    return b"..two dots" not in lines


@demo("pop3-top-ignores-lines")
def _(env, proxy):
    env.seed(MSG)
    lines = env.pop(proxy).top(1, 2)[1]
    return lines[lines.index(b"") + 1:] != [b"first line", b".dot line"]


@demo("pop3-retr-truncated")
def _(env, proxy):
    env.seed(MSG)
    return env.pop(proxy).retr(1)[1] != MSG.split(b"\r\n")[:-1]


@demo("pop3-bad-pass-accepted")
def _(env, proxy):
    p = env.pop(proxy, login=False)
    p.user(env.account.user)
    try:
        p.pass_("not the password")
    except poplib.error_proto:
        return False
    return True


@demo("imap-idle-no-exists")
def _(env, proxy):
    a = env.imap(proxy)
    a.ok("SELECT INBOX")
    a.idle_start()
    env.seed(MSG)
    fired_at = []

    def dropped() -> bool:  # the proxy threw the EXISTS away: no need to sit out the whole timeout
        if proxy.fired and not fired_at:
            fired_at.append(time.monotonic())
        return bool(fired_at) and time.monotonic() - fired_at[0] > 0.2

    got = a.wait_for(rb"\* 1 EXISTS", 5, dropped)
    a.idle_done()
    return got is None


@demo("imap-no-expunge-notify")
def _(env, proxy):
    a = env.inbox(proxy, MSG, MSG2)
    b = env.imap()
    b.ok("SELECT INBOX")
    b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    return not any(re.match(rb"\* 1 EXPUNGE", r.text) for r in a.ok("NOOP"))


@demo("imap-no-flag-notify")
def _(env, proxy):
    a = env.inbox(proxy, MSG)
    b = env.imap()
    b.ok("SELECT INBOX")
    b.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
    own = a.ok("STORE 1 +FLAGS (\\Answered)")  # its own STORE's FETCH still comes through
    assert any(b"\\Answered" in r.text for r in own)
    b.ok("STORE 1 -FLAGS.SILENT (\\Answered)")
    return not any(re.match(rb"\* 1 FETCH \(.*FLAGS", r.text) for r in a.ok("NOOP"))


@demo("imap-peek-sets-seen")
def _(env, proxy):
    a = env.inbox(proxy, MSG)
    got = a.ok("FETCH 1 BODY.PEEK[]")
    assert got[0].literals == [MSG]
    return b"\\Seen" in env.flags(1)


@demo("imap-partial-ignored")
def _(env, proxy):
    a = env.inbox(proxy, MSG)
    got = a.ok("FETCH 1 BODY.PEEK[]<0.10>")
    return got[0].literals != [MSG[:10]] or b"BODY[]<0>" not in got[0].text


@demo("imap-list-hides-new")
def _(env, proxy):
    a, b = env.imap(proxy), env.imap(proxy)
    a.ok('CREATE "FP new"')
    a.ok(b"RENAME {6+}\r\nFP new {6+}\r\nFP two")
    assert any(b"FP two" in r.text for r in a.ok('LIST "" "*"'))  # its creator still sees it
    return not any(b"FP two" in r.text for r in b.ok('LIST "" "*"'))


@demo("imap-expunge-ignored")
def _(env, proxy):
    a = env.inbox(proxy, MSG)
    a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    a.ok("EXPUNGE")
    return env.count() == 1


@demo("imap-close-keeps-deleted")
def _(env, proxy):
    a = env.inbox(proxy, MSG)
    a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    a.ok("CLOSE")
    return env.count() == 1


@demo("imap-uidvalidity-changes")
def _(env, proxy):
    def uidvalidity(c: Imap) -> bytes:
        return next(re.search(rb"UIDVALIDITY (\d+)", r.text)[1] for r in c.ok("SELECT INBOX") if b"UIDVALIDITY" in r.text)

    return uidvalidity(env.imap(proxy)) != uidvalidity(env.imap(proxy))


@demo("imap-search-misses")
def _(env, proxy):
    a = env.inbox(proxy, MSG, MSG2, MSG)
    return [r.text for r in a.ok("SEARCH ALL")] != [b"* SEARCH 1 2 3"]


@demo("imap-rename-ignored")
def _(env, proxy):
    env.admin.ok('CREATE "FP old"')
    env.imap(proxy).ok('RENAME "FP old" "FP renamed"')
    return "FP renamed" not in env.mailboxes()


@demo("imap-fetch-corrupt")
def _(env, proxy):
    a = env.inbox(proxy, MSG)
    got = a.ok("FETCH 1 BODY.PEEK[]")[0].literals[0]
    assert len(got) == len(MSG)
    return got != MSG


@demo("imap-overquota-accepted")
def _(env, proxy):
    tagged, _ = env.imap(proxy).cmd("APPEND INBOX {60000000}")  # 60 MB into a 50 MB quota
    return tagged.text.split()[1] == b"OK"


@demo("imap-sent-invisible")
def _(env, proxy):
    a = env.imap(proxy)
    a.ok('LIST "" "*"')
    a.ok("APPEND Sent (\\Seen)", MSG2)
    a.ok("APPEND INBOX", MSG2)
    assert env.count("INBOX") == 1
    return env.count("Sent") == 0


@demo("imap-move-copies")
def _(env, proxy):
    a = env.inbox(proxy, MSG)
    a.ok("MOVE 1 Trash")
    assert env.count("Trash") == 1
    return env.count("INBOX") == 1


@demo("imap-store-ignored")
def _(env, proxy):
    a = env.inbox(proxy, MSG)
    a.ok("STORE 1 +FLAGS (\\Flagged)")
    return b"\\Flagged" not in env.flags(1)


@demo("imap-bad-login-accepted")
def _(env, proxy):
    tagged, _ = env.imap(proxy, login=False).cmd(f"LOGIN {env.account.user} not-the-password")
    return tagged.text.split()[1] == b"OK"


@demo("imap-append-continuation-bare-lf")
def _(env, proxy):
    a = env.imap(proxy)
    a.send(b"t9 APPEND INBOX {%d}\r\n" % len(MSG2))
    deadline = time.monotonic() + 5
    while b"\n" not in a.buf and time.monotonic() < deadline:
        a.buf += a.sock.recv(65536)
    line = a.buf.split(b"\n", 1)[0] + b"\n"
    assert line.startswith(b"+"), line
    a.send(MSG2 + b"\r\n")
    return not line.endswith(b"\r\n")


# -- authentication ------------------------------------------------------------------------------

def _plain(account) -> bytes:
    import base64

    return base64.b64encode(b"\0%s\0%s" % (account.user.encode(), account.password.encode()))


class _RawLines:
    """A POP3 or IMAP connection read line by line, line ends kept (to see a bare LF)."""

    def __init__(self, proxy: FaultProxy):
        self.sock = socket.create_connection((proxy.host, proxy.port), timeout=5)
        self.f = self.sock.makefile("rb")
        self.greeting = self.f.readline()

    def say(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.f.readline()

    def close(self) -> None:
        self.f.close()
        self.sock.close()


@demo("pop3-sasl-ir-ignored")
def _(env, proxy):
    c = _RawLines(proxy)
    answer = c.say(b"AUTH PLAIN " + _plain(env.account))
    c.close()
    return answer.startswith(b"+ ") or answer.rstrip() == b"+"


def _answer_to_cancel(proxy, command: bytes) -> bytes:
    """The answer to "*" (cancel) after `command`, an authentication without initial response, got its "+"."""
    c = _RawLines(proxy)
    assert c.say(command).startswith(b"+")
    answer = c.say(b"*")
    c.close()
    return answer


def _continuation(proxy, command: bytes) -> bytes:
    """The "+" continuation line `command` (an authentication) gets; then cancelled."""
    c = _RawLines(proxy)
    challenge = c.say(command)
    assert challenge.startswith(b"+"), challenge
    c.say(b"*")
    c.close()
    return challenge


@demo("pop3-sasl-cancel-accepted")
def _(env, proxy):
    return _answer_to_cancel(proxy, b"AUTH PLAIN").startswith(b"+OK")


@demo("pop3-auth-continuation-bare-lf")
def _(env, proxy):
    return not _continuation(proxy, b"AUTH LOGIN").endswith(b"\r\n")


@demo("pop3-bare-auth-crashes")
def _(env, proxy):
    c = _RawLines(proxy)
    answer = c.say(b"AUTH")
    c.close()
    return not answer.startswith((b"+OK", b"-ERR"))


@demo("pop3-apop-wrong-digest-accepted")
def _(env, proxy):
    c = _RawLines(proxy)
    assert re.search(rb"<[^>]+@[^>]+>", c.greeting), f"the embedded Dovecot offers APOP: {c.greeting!r}"
    answer = c.say(b"APOP %s %s" % (env.account.user.encode(), b"0" * 32))
    c.close()
    return answer.startswith(b"+OK")


@demo("pop3-apop-accepted-said-err")
def _(env, proxy):
    import hashlib

    c = _RawLines(proxy)
    stamp = re.search(rb"<[^>]+@[^>]+>", c.greeting)[0]
    digest = hashlib.md5(stamp + env.account.password.encode()).hexdigest().encode()
    answer = c.say(b"APOP %s %s" % (env.account.user.encode(), digest))
    stat = c.say(b"STAT")
    c.close()
    return answer.startswith(b"-ERR") and stat.startswith(b"+OK")


@demo("imap-sasl-ir-ignored")
def _(env, proxy):
    c = _RawLines(proxy)
    answer = c.say(b"t1 AUTHENTICATE PLAIN " + _plain(env.account))
    if answer.startswith(b"+"):
        c.say(b"*")
    c.close()
    return answer.startswith(b"+")


@demo("imap-authenticate-cancel-no")
def _(env, proxy):
    return _answer_to_cancel(proxy, b"t1 AUTHENTICATE PLAIN").startswith(b"t1 NO")


@demo("imap-authenticate-continuation-bare-lf")
def _(env, proxy):
    return not _continuation(proxy, b"t1 AUTHENTICATE LOGIN").endswith(b"\r\n")


@demo("imap-claims-rev2-bad-base64-no")
def _(env, proxy):
    c = _RawLines(proxy)
    claims = b"IMAP4REV2" in c.say(b"t1 CAPABILITY").upper()
    c.f.readline()  # t1 OK
    assert c.say(b"t2 AUTHENTICATE PLAIN").startswith(b"+")
    answer = c.say(b"@@not-base64@@")
    c.close()
    return claims and answer.startswith(b"t2 NO")


@demo("imap-capability-code-without-rev1")
def _(env, proxy):
    c = _RawLines(proxy)
    assert c.say(b"t1 AUTHENTICATE PLAIN").startswith(b"+")
    answer = c.say(_plain(env.account))
    while answer.startswith(b"* "):
        answer = c.f.readline()
    c.close()
    code = re.search(rb"\[CAPABILITY ([^\]]*)\]", answer)
    assert answer.startswith(b"t1 OK") and code, answer
    return b"IMAP4REV1" not in code[1].upper()


# nested parts and an encoded part, for the section faults: 1 text, 2 alternative (2.1, 2.2), 3 base64
MULTI = (b"From: Alice <alice@example.com>\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
         b"Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
         b"--outer\r\nContent-Type: text/plain\r\n\r\nouter text\r\n"
         b"--outer\r\nContent-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n"
         b"--inner\r\nContent-Type: text/plain\r\n\r\ninner plain\r\n"
         b"--inner\r\nContent-Type: text/html\r\n\r\n<p>inner html</p>\r\n--inner--\r\n"
         b"--outer\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
         b"aGVsbG8gYmluYXJ5\r\n--outer--\r\n")


def _uid(c: Imap, n: int = 1) -> bytes:
    return re.search(rb"UID (\d+)", c.ok(f"FETCH {n} UID")[0].text)[1]


def _top_zero_wrong(env, proxy) -> bool:
    env.seed(MSG)
    headers = MSG.split(b"\r\n\r\n")[0].split(b"\r\n")
    return env.pop(proxy).top(1, 0)[1] != [*headers, b""]


demo("pop3-top-sends-whole")(_top_zero_wrong)
demo("pop3-top-no-blank-line")(_top_zero_wrong)


@demo("pop3-dele-deferred")
def _(env, proxy):
    p = env.maildrop(proxy, MSG, MSG2)
    p.dele(1)
    try:
        p.retr(1)
        readable = True
    except poplib.error_proto:
        readable = False
    p.quit()
    assert env.count() == 1  # the deletion still commits at QUIT: only the in-session view is wrong
    return readable


@demo("pop3-quit-discards")
def _(env, proxy):
    p = env.maildrop(proxy, MSG)
    p.dele(1)
    assert b"Logging out" in p.quit()  # the hidden RSET's answer is swallowed, QUIT's comes through
    return env.count() == 1


@demo("pop3-uidl-is-msgnum")
def _(env, proxy):
    p = env.maildrop(proxy, MSG, MSG2)
    second = p.uidl(2).split()[2]
    p.dele(1)
    p.quit()
    return env.pop(proxy).uidl(1).split()[2] != second


@demo("pop3-list-size-off")
def _(env, proxy):
    p = env.maildrop(proxy, MSG)
    return p.list()[1] != [b"1 %d" % len(MSG)] or p.stat() != (1, len(MSG))


@demo("pop3-retr-size-not-listed")
def _(env, proxy):
    p = env.maildrop(proxy, MSG)
    listed = int(p.list()[1][0].split()[1])
    sent = sum(len(line) + 2 for line in p.retr(1)[1])  # unstuffed lines, CRLF each
    return listed == len(MSG) and sent != listed


@demo("imap-header-fields-ignored")
def _(env, proxy):
    a = env.inbox(proxy, MSG)
    return a.ok("FETCH 1 BODY.PEEK[HEADER.FIELDS (Subject)]")[0].literals != [b"Subject: fault proxy\r\n\r\n"]


@demo("imap-nested-part-flattened")
def _(env, proxy):
    a = env.inbox(proxy, MULTI)
    return a.ok("FETCH 1 BODY.PEEK[2.1]")[0].literals != [b"inner plain"]


@demo("imap-binary-not-decoded")
def _(env, proxy):
    a = env.inbox(proxy, MULTI)
    return a.ok("FETCH 1 BINARY.PEEK[3]")[0].literals != [b"hello binary"]


@demo("imap-body-fetch-peeks")
def _(env, proxy):
    a = env.inbox(proxy, MSG)
    a.ok("FETCH 1 BODY[TEXT]")
    return b"\\Seen" not in env.flags(1)


@demo("imap-rfc822size-off")
def _(env, proxy):
    a = env.inbox(proxy, MSG)
    return a.ok("FETCH 1 RFC822.SIZE")[0].text != b"* 1 FETCH (RFC822.SIZE %d)" % len(MSG)


@demo("imap-noop-no-exists")
def _(env, proxy):
    a = env.imap(proxy)
    a.ok("SELECT INBOX")
    env.seed(MSG)
    return not any(re.match(rb"\* 1 EXISTS", r.text) for r in a.ok("NOOP"))


@demo("imap-flags-session-local")
def _(env, proxy):
    a = env.inbox(proxy, MSG)
    assert any(b"\\Flagged" in r.text for r in a.ok("STORE 1 +FLAGS (\\Flagged)"))  # looks right to the storer
    assert any(b"\\Flagged" in r.text for r in a.ok("FETCH 1 FLAGS"))
    return b"\\Flagged" not in env.flags(1)


@demo("imap-create-existing-ok")
def _(env, proxy):
    a = env.imap(proxy)
    a.ok('CREATE "FP dup"')
    tagged, _ = a.cmd('CREATE "FP dup"')
    return tagged.text.split()[1] == b"OK"


@demo("imap-delete-ignored")
def _(env, proxy):
    env.admin.ok('CREATE "FP gone"')
    env.imap(proxy).ok('DELETE "FP gone"')
    return "FP gone" in env.mailboxes()


@demo("imap-subscribe-ignored")
def _(env, proxy):
    env.admin.ok('CREATE "FP sub"')
    env.imap(proxy).ok('SUBSCRIBE "FP sub"')
    subscribed = any(b"FP sub" in r.text for r in env.admin.ok('LSUB "" "*"'))
    env.admin.cmd('UNSUBSCRIBE "FP sub"')  # subscriptions outlive the mailbox: leave none for the next run
    return not subscribed


@demo("imap-uid-expunge-all")
def _(env, proxy):
    a = env.inbox(proxy, MSG, MSG2)
    a.ok("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    a.ok(b"UID EXPUNGE " + _uid(a, 2))
    return env.count() != 1


@demo("imap-unselect-expunges")
def _(env, proxy):
    a = env.inbox(proxy, MSG)
    a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    a.ok("UNSELECT")
    return env.count() == 0


@demo("imap-internaldate-ignored")
def _(env, proxy):
    env.imap(proxy).ok('APPEND INBOX "15-Jan-2020 12:00:00 +0000"', MSG)
    env.admin.ok("EXAMINE INBOX")
    return b'INTERNALDATE "15-Jan-2020' not in env.admin.ok("FETCH 1 INTERNALDATE")[0].text


@demo("imap-search-text-ignored")
def _(env, proxy):
    a = env.inbox(proxy, MSG, MSG2)
    return [r.text for r in a.ok('SEARCH BODY "short body"')] != [b"* SEARCH 2"]


@demo("imap-quota-hidden")
def _(env, proxy):
    return not any(r.text.startswith(b"* QUOTA ") for r in env.imap(proxy).ok("GETQUOTAROOT INBOX"))


@demo("imap-appenduid-off")
def _(env, proxy):
    tagged, _ = env.imap(proxy).cmd("APPEND INBOX", MSG)
    claimed = re.search(rb"\[APPENDUID \d+ (\d+)\]", tagged.text)[1]
    env.admin.ok("EXAMINE INBOX")
    return claimed != _uid(env.admin)


@demo("imap-copyuid-off")
def _(env, proxy):
    a = env.inbox(proxy, MSG)
    tagged, _ = a.cmd("COPY 1 Trash")
    claimed = re.search(rb"\[COPYUID \d+ \d+ (\d+)\]", tagged.text)[1]
    env.admin.ok("EXAMINE Trash")
    return claimed != _uid(env.admin)


@demo("pop3-bare-lf")
def _(env, proxy):
    env.seed(MSG, MSG2)
    return re.search(rb"[^\r]\n", _pop3_stream(proxy.host, proxy.port, env.account)) is not None


def _expunge_first_elsewhere(env) -> None:
    b = env.imap()
    b.ok("SELECT INBOX")
    b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")


@demo("imap-expunge-during-fetch")
def _(env, proxy):
    a = env.inbox(proxy, MSG, MSG2)
    _expunge_first_elsewhere(env)
    _, untagged = a.cmd("FETCH 1:2 (UID)")
    return any(b"EXPUNGE" in r.text for r in untagged)


@demo("imap-expunge-wrong-number")
def _(env, proxy):
    a = env.inbox(proxy, MSG, MSG2)
    _expunge_first_elsewhere(env)
    return [r.text for r in a.ok("NOOP") if b"EXPUNGE" in r.text] != [b"* 1 EXPUNGE"]


@demo("imap-uidnext-low")
def _(env, proxy):
    env.seed(MSG)
    status = env.imap(proxy).ok("STATUS INBOX (UIDNEXT)")[0].text
    return status != env.admin.ok("STATUS INBOX (UIDNEXT)")[0].text


@demo("imap-status-messages-off")
def _(env, proxy):
    env.seed(MSG)
    return b"MESSAGES 1)" not in env.imap(proxy).ok("STATUS INBOX (MESSAGES)")[0].text


@demo("pop3-retr-off-by-one")
def _(env, proxy):
    env.seed(MSG, MSG2)
    return env.pop(proxy).retr(1)[1] != MSG.split(b"\r\n")[:-1]


@demo("imap-examine-is-select")
def _(env, proxy):
    env.seed(MSG)
    a = env.imap(proxy)
    a.ok("EXAMINE INBOX")
    a.cmd("STORE 1 +FLAGS (\\Flagged)")  # refused in a read-only mailbox
    return b"\\Flagged" in env.flags(1)


@demo("imap-append-flags-dropped")
def _(env, proxy):
    env.imap(proxy).ok("APPEND INBOX (\\Flagged)", MSG)
    return b"\\Flagged" not in env.flags(1)


@demo("imap-keywords-dropped")
def _(env, proxy):
    a = env.inbox(proxy, MSG)
    a.ok("STORE 1 +FLAGS (Urgent \\Answered)")
    flags = env.flags(1)
    assert b"\\Answered" in flags
    return b"Urgent" not in flags


@demo("imap-uid-fetch-no-uid")
def _(env, proxy):
    a = env.inbox(proxy, MSG)
    return not any(re.search(rb"\bUID \d+", r.text) for r in a.ok("UID FETCH 1:* (FLAGS)"))


@demo("pop3-in-use-code-dropped")
def _(env, proxy):
    env.seed(MSG)
    holder = env.pop()  # holds the maildrop lock
    second = env.pop(proxy, login=False, timeout=30)  # Dovecot waits about 10 s for the lock before it refuses
    second.user(env.account.user)
    with pytest.raises(poplib.error_proto) as refused:
        second.pass_(env.account.password)
    holder.quit()
    return b"[IN-USE]" not in refused.value.args[0]


def test_fault_registry():
    assert len(FAULTS) >= 40
    for name, (protocol, area, description, impl) in FAULTS.items():
        assert name.startswith(protocol + "-") and protocol in ("pop3", "imap")
        assert area in AREAS, f"{name}: area {area} is not a suite area"
        assert description and issubclass(impl, Fault) and impl is not Fault


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fault_breaks_its_behaviour(fault_env, name):
    env = fault_env
    scenario = DEMOS.get(name)
    assert scenario is not None, f"fault {name} has no demonstration in DEMOS"
    protocol = FAULTS[name].protocol
    clean = env.proxy(protocol, None)
    assert scenario(env, clean) is False, f"{name}: the scenario fails even without the fault"
    env.close()  # fresh connections and an empty account for the faulty run
    env.admin = env.imap()
    env.reset()
    faulty = env.proxy(protocol, name)
    assert scenario(env, faulty) is True, f"{name}: the fault did not break the behaviour (fired: {faulty.fired})"
    assert faulty.fired, f"{name}: behaviour changed but the fault never fired?"
    assert not clean.fired
    assert not clean.errors and not faulty.errors, clean.errors + faulty.errors
