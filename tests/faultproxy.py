"""A fault-injecting POP3/IMAP proxy: proof that the conformance suites can fail.

``FaultProxy`` listens on 127.0.0.1 (an ephemeral port) in front of a real server and relays each
client connection to its own upstream connection. It frames the protocol in both directions (POP3
status lines and multi-line bodies; IMAP commands, responses and literals, synchronizing or not) so
that one named fault from ``FAULTS`` can rewrite, drop or answer exactly the thing it breaks.
Without a fault it is transparent: every byte goes through unchanged, and a client that drops
its connection becomes a dropped connection upstream (the server never sees a QUIT or LOGOUT).

    with FaultProxy(host, port, "pop3", "pop3-dele-ignored") as proxy:
        poplib.POP3("127.0.0.1", proxy.port) ...

    with proxied_target(target, imap_fault="imap-close-keeps-deleted") as t:
        t.dump(path)            # the same Target, its pop3/imap endpoints pointing at proxies

``proxy.fired`` lists what the fault did ("dropped * 3 EXISTS during IDLE"), so a test can tell
"the fault never had a chance" from "the suite did not notice". Not for TLS endpoints: the proxy
must read the protocol.

A fault may also send commands of its own ahead of the client's (``Prefixed``: a hidden RSET before
QUIT, a hidden NOOP before FETCH); their answers are swallowed. ``Fault.profile`` names the embedded
Dovecot a fault is shown against ("dovecot-lock" for the POP3 lock). ``VARIANTS`` are legal servers
that differ from Dovecot (no UIDPLUS), for testing the harness itself rather than the suites.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import re
import secrets
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from typing import NamedTuple, Self

import pytest

__all__ = ["FAULTS", "STRESS_FAULTS", "VARIANTS", "Fault", "FaultProxy", "FaultSpec", "FaultsByUser", "proxied_target",
           "target_for"]

# A line that ends in a literal marker: {N} (synchronizing), {N+} (LITERAL+), ~{N} (literal8).
LITERAL_AT_END = re.compile(rb"~?\{(\d+)(\+?)\}\r?\n\Z")
DRAIN_WAIT = 2.0  # at most this long, a new connection waits for dropped ones to reach the server


def _eol(line: bytes) -> bytes:
    return b"\r\n" if line.endswith(b"\r\n") else b"\n" if line.endswith(b"\n") else b""


def _chomp(line: bytes) -> bytes:
    return line[: len(line) - len(_eol(line))]


class _Reader:
    """Buffered reads from a socket; a reset counts as end of stream (that is what a drop looks like)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.sock.recv(262144)
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def readline(self) -> bytes:
        """One line with its line end; at the end of the stream what is left, then EOFError."""
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                return line
            start = len(self.buf)
            if not self._fill():
                if self.buf:
                    line = bytes(self.buf)
                    self.buf.clear()
                    return line
                raise EOFError

    def read_exact(self, n: int) -> bytes:
        """n bytes, or fewer if the stream ends first."""
        while len(self.buf) < n and self._fill():
            pass
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


# ---------------------------------------------------------------------------------------------------
# Commands and responses as the faults see them


@dataclasses.dataclass
class Pop3Command:
    verb: str  # upper case; "" for an empty line
    args: list[str]
    raw: bytes  # as the client sent it, line end included
    local: bytes | None = None  # the proxy's own answer, for a command it does not forward
    hidden: bool = False  # sent by the proxy itself: its answer is swallowed
    answered: threading.Event | None = None  # Pop3Conn.ask(): set when `answer` has arrived
    answer: tuple[bytes, list[bytes] | None] | None = None

    @property
    def multiline(self) -> bool:
        """Does a +OK answer to this command carry a body (RFC 1939, 2449; Dovecot's bare AUTH)?"""
        return self.verb in ("RETR", "TOP", "CAPA") or (self.verb in ("LIST", "UIDL", "AUTH") and not self.args)


@dataclasses.dataclass
class ImapCommand:
    tag: bytes
    name: str  # upper case, "UID FETCH" for UID commands
    line: bytes  # the first line as the client sent it (up to the first literal), line end included
    wire: bytearray = dataclasses.field(default_factory=bytearray)  # all of it as sent upstream, if small
    hidden: bool = False  # sent by the proxy itself: its tagged answer is swallowed

    def arguments(self, count: int) -> list[bytes | None]:
        """The first `count` arguments as strings (quoted, atom or literal; None if not known).

        Complete once the command has been sent (in imap_response); in imap_command only the first line is."""
        skip = 3 if self.name.startswith("UID ") else 2
        parts = bytes(self.wire or self.line).split(b" ", skip)
        return _astrings(parts[skip] if len(parts) > skip else b"", count)

    @property
    def args(self) -> bytes:
        """The first line after tag and command name, without its line end."""
        words = _chomp(self.line).split(b" ", 3 if self.name.startswith("UID ") else 2)
        return words[-1] if len(words) > (3 if self.name.startswith("UID ") else 2) else b""


class Local(NamedTuple):
    """A fault's verdict on a command: answer it here with `text`, never forward it."""

    text: bytes


class Prefixed(NamedTuple):
    """A fault's verdict on a command: send the `hidden` commands first (their answers are swallowed), then
    the command (POP3: `raw`; IMAP: the client's, and `raw` is ignored). IMAP hidden commands have no tag yet."""

    hidden: list[bytes]
    raw: bytes = b""


@dataclasses.dataclass
class ImapResponse:
    """One IMAP response: [line, literal, line, literal, ..., line]; lines keep their line ends."""

    segments: list[bytes]

    @property
    def line(self) -> bytes:
        return self.segments[0]

    @property
    def kind(self) -> str:
        """"+" (continuation), "*" (untagged) or "tagged"."""
        return "+" if self.line.startswith(b"+") else "*" if self.line.startswith(b"* ") else "tagged"

    @property
    def tag(self) -> bytes:
        return self.line.split(b" ", 1)[0]

    @property
    def untagged(self) -> tuple[int | None, str]:
        """(number, KEYWORD) of an untagged response: (3, "EXISTS"), (None, "LIST")."""
        words = _chomp(self.line).split(b" ", 3)
        if len(words) < 2:
            return None, ""
        if words[1].isdigit() and len(words) > 2:
            return int(words[1]), words[2].upper().decode("latin-1")
        return None, words[1].upper().decode("latin-1")

    @property
    def status(self) -> str:
        """OK / NO / BAD of a tagged response."""
        words = self.line.split(b" ", 2)
        return words[1].upper().decode("latin-1").strip() if len(words) > 1 else ""

    def lines(self) -> Iterator[int]:
        return iter(range(0, len(self.segments), 2))


# ---------------------------------------------------------------------------------------------------
# Faults


class FaultSpec(NamedTuple):
    protocol: str  # "pop3" or "imap"
    area: str  # the suite area whose tests must catch it
    description: str
    implementation: type[Fault]


FAULTS: dict[str, FaultSpec] = {}
# Legal servers that differ from Dovecot (no UIDPLUS, say): for testing the harness itself, not faults
# the suites must catch.
VARIANTS: dict[str, FaultSpec] = {}
# Faults that only show when sessions interleave (a lost update between two concurrent STOREs): the
# scripted suites cannot catch them, the stress mode (tests/test_stress.py) must.
STRESS_FAULTS: dict[str, FaultSpec] = {}


def _spec(name: str) -> FaultSpec:
    spec = FAULTS.get(name) or VARIANTS.get(name) or STRESS_FAULTS.get(name)
    if spec is None:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(sorted(FAULTS) + sorted(VARIANTS) + sorted(STRESS_FAULTS))}")
    return spec


def _register(name: str, protocol: str, area: str, description: str, *,
              registry: dict[str, FaultSpec] = FAULTS) -> Callable[[type[Fault]], type[Fault]]:
    def deco(cls: type[Fault]) -> type[Fault]:
        if name in FAULTS or name in VARIANTS or name in STRESS_FAULTS:
            raise ValueError(f"fault {name} registered twice")
        cls.name = name
        registry[name] = FaultSpec(protocol, area, description, cls)
        return cls

    return deco


class Fault:
    """The transparent proxy; each fault overrides the hooks it needs.

    One instance per proxy: attributes set in __init__ are shared by all its connections
    (guard them with self.lock); per-connection state lives in `conn.state`.
    """

    name: str | None = None
    # the server it is shown against: the embedded Dovecot with this profile's settings
    # ("dovecot-lock": pop3_lock_session = yes)
    profile = "dovecot"

    def __init__(self) -> None:
        self.lock = threading.Lock()

    # POP3 ----------------------------------------------------------------------------------------
    def pop3_command(self, conn: Pop3Conn, cmd: Pop3Command) -> bytes | Local | Prefixed:
        """What to send upstream for `cmd` (normally cmd.raw), Local(answer), or Prefixed(hidden lines, raw)."""
        return cmd.raw

    def pop3_response(self, conn: Pop3Conn, cmd: Pop3Command | None, status: bytes,
                      body: list[bytes] | None) -> tuple[bytes, list[bytes] | None]:
        """The status line and body lines (still dot-stuffed, terminator excluded) to pass on."""
        return status, body

    def sasl_line(self, conn: Pop3Conn | ImapConn, line: bytes) -> bytes:
        """What to send upstream for a client line answering a "+" request during AUTH/AUTHENTICATE."""
        return line

    def pop3_challenge(self, conn: Pop3Conn, line: bytes) -> bytes:
        """A "+ " challenge line of an AUTH exchange, as passed to the client."""
        return line

    def pop3_client_dropped(self, conn: Pop3Conn) -> bytes | None:
        """Bytes to send upstream when the client drops without QUIT; None: drop upstream too."""
        return None

    # IMAP ----------------------------------------------------------------------------------------
    def imap_command(self, conn: ImapConn, cmd: ImapCommand) -> Local | Prefixed | None:
        """Local(b"OK ...") to answer the command here (tag added, literals swallowed); None to forward;
        Prefixed([b"NOOP"]) to send hidden commands first (untagged answers pass, the tagged one is swallowed)."""
        return None

    def imap_client_line(self, conn: ImapConn, cmd: ImapCommand, line: bytes, first: bool) -> bytes:
        """A line of a forwarded command (literal markers and data are not to be touched)."""
        return line

    def imap_response(self, conn: ImapConn, cmd: ImapCommand | None, resp: ImapResponse) -> ImapResponse | None:
        """The response to pass on, or None to drop it. `cmd` is set for tagged responses;
        for untagged ones, conn.pending_names() says which commands are in progress."""
        return resp


# -- POP3 ---------------------------------------------------------------------------------------------


@_register("pop3-dele-ignored", "pop3", "deletion", "DELE is answered +OK by the proxy and never reaches the server")
class Pop3DeleIgnored(Fault):
    def pop3_command(self, conn, cmd):
        if cmd.verb == "DELE" and conn.authenticated:
            conn.fire(f"swallowed DELE {' '.join(cmd.args)}")
            return Local(b"+OK Marked to be deleted.\r\n")
        return cmd.raw


@_register("pop3-rset-ignored", "pop3", "deletion", "RSET is answered +OK by the proxy and never reaches the server")
class Pop3RsetIgnored(Fault):
    def pop3_command(self, conn, cmd):
        if cmd.verb == "RSET" and conn.authenticated:
            conn.fire("swallowed RSET")
            return Local(b"+OK\r\n")
        return cmd.raw


@_register("pop3-drop-commits", "pop3", "deletion",
           "a client that drops the connection without QUIT gets a QUIT sent for it, so DELE marks commit")
class Pop3DropCommits(Fault):
    def pop3_client_dropped(self, conn):
        if conn.authenticated:
            conn.fire("sent QUIT for a dropped client")
            return b"QUIT\r\n"
        return None


@_register("pop3-stat-counts-deleted", "pop3", "deletion",
           "STAT and LIST still count messages marked by DELE in this session")
class Pop3StatCountsDeleted(Fault):
    def pop3_response(self, conn, cmd, status, body):
        st = conn.state
        marks: set[int] = st.setdefault("marks", set())
        sizes: dict[int, int] = st.setdefault("sizes", {})
        if cmd is None:
            return status, body
        ok = status.startswith(b"+OK")
        args = cmd.args

        def size(n: int) -> int:
            return sizes.get(n, st.get("avg", 1024))

        if cmd.verb == "DELE" and ok and args and args[0].isdigit():
            marks.add(int(args[0]))
        elif cmd.verb == "RSET" and ok:
            marks.clear()
        elif cmd.verb == "RETR" and ok and args and args[0].isdigit():
            m = re.match(rb"\+OK (\d+)", status)
            if m:
                sizes[int(args[0])] = int(m[1])
        elif cmd.verb == "STAT" and ok:
            m = re.match(rb"\+OK (\d+) (\d+)(.*)$", _chomp(status), re.DOTALL)
            if m:
                count, octets = int(m[1]), int(m[2])
                if count and not marks:
                    st["avg"] = octets // count
                if marks:
                    conn.fire(f"STAT counts {len(marks)} marked message(s)")
                    status = b"+OK %d %d%s%s" % (count + len(marks), octets + sum(size(n) for n in marks),
                                                 m[3], _eol(status))
        elif cmd.verb == "LIST" and not args and ok and body is not None:
            listed = {}
            for line in body:
                words = line.split()
                if len(words) >= 2 and words[0].isdigit() and words[1].isdigit():
                    listed[int(words[0])] = line
                    sizes[int(words[0])] = int(words[1])
            if marks - listed.keys():
                conn.fire(f"LIST shows marked message(s) {sorted(marks - listed.keys())}")
                for n in marks - listed.keys():
                    listed[n] = b"%d %d\r\n" % (n, size(n))
                body = [listed[n] for n in sorted(listed)]
        elif cmd.verb == "LIST" and args and args[0].isdigit():
            n = int(args[0])
            if ok:
                words = status.split()
                if len(words) >= 3 and words[2].isdigit():
                    sizes[n] = int(words[2])
            elif n in marks:
                conn.fire(f"LIST {n} answered for a marked message")
                status = b"+OK %d %d\r\n" % (n, size(n))
        return status, body


def _rewrite_uidl(cmd: Pop3Command | None, status: bytes, body: list[bytes] | None,
                  new: Callable[[bytes, bytes], bytes]) -> tuple[bytes, list[bytes] | None, bool]:
    """Replace each unique-id in a UIDL answer by new(msg_number, unique_id); returns status, body, changed."""
    if cmd is None or cmd.verb != "UIDL" or not status.startswith(b"+OK"):
        return status, body, False
    if body is not None:
        out = []
        for line in body:
            words = _chomp(line).split(b" ")
            if len(words) >= 2:
                line = b"%s %s%s" % (words[0], new(words[0], words[1]), _eol(line))
            out.append(line)
        return status, out, out != body
    words = _chomp(status).split(b" ")
    if len(words) >= 3:
        return b"+OK %s %s%s" % (words[1], new(words[1], words[2]), _eol(status)), body, True
    return status, body, False


@_register("pop3-uidl-unstable", "pop3", "leave-on-server",
           "every UIDL unique-id gets a random suffix that differs from connection to connection")
class Pop3UidlUnstable(Fault):
    def pop3_response(self, conn, cmd, status, body):
        suffix = conn.state.setdefault("suffix", b"-" + secrets.token_hex(3).encode())
        status, body, changed = _rewrite_uidl(cmd, status, body, lambda num, uid: uid + suffix)
        if changed:
            conn.fire("UIDL ids suffixed " + suffix.decode())
        return status, body


@_register("pop3-uidl-duplicate", "pop3", "leave-on-server", "every UIDL unique-id is the same string")
class Pop3UidlDuplicate(Fault):
    def pop3_response(self, conn, cmd, status, body):
        status, body, changed = _rewrite_uidl(cmd, status, body, lambda num, uid: b"same-uidl-for-all")
        if changed:
            conn.fire("UIDL ids made identical")
        return status, body


@_register("pop3-dot-unstuffed", "pop3", "retrieval",
           "multi-line responses lose the server's dot-stuffing (a line '..x' goes out as '.x')")
class Pop3DotUnstuffed(Fault):
    def pop3_response(self, conn, cmd, status, body):
        if body is None:
            return status, body
        out = []
        for line in body:
            # a lone "." would end the response early and desynchronise the whole session: keep those
            if line.startswith(b"..") and _chomp(line) != b"..":
                conn.fire(f"unstuffed {_chomp(line)[:30]!r}")
                line = line[1:]
            out.append(line)
        return status, out


@_register("pop3-top-ignores-lines", "pop3", "partial-fetch", "TOP n k is sent to the server as TOP n 0")
class Pop3TopIgnoresLines(Fault):
    def pop3_command(self, conn, cmd):
        if cmd.verb == "TOP" and len(cmd.args) == 2 and cmd.args[1] != "0":
            conn.fire(f"TOP {cmd.args[0]} {cmd.args[1]} sent as TOP {cmd.args[0]} 0")
            return b"TOP %s 0%s" % (cmd.args[0].encode(), _eol(cmd.raw))
        return cmd.raw


@_register("pop3-retr-truncated", "pop3", "retrieval", "the last line of every RETR response is dropped")
class Pop3RetrTruncated(Fault):
    def pop3_response(self, conn, cmd, status, body):
        if cmd is not None and cmd.verb == "RETR" and body:
            conn.fire(f"dropped last line {_chomp(body[-1])[:30]!r} of RETR")
            body = body[:-1]
        return status, body


@_register("pop3-bad-pass-accepted", "pop3", "auth", "a PASS the server rejects is answered +OK")
class Pop3BadPassAccepted(Fault):
    def pop3_response(self, conn, cmd, status, body):
        if cmd is not None and cmd.verb == "PASS" and status.startswith(b"-ERR"):
            conn.fire("PASS -ERR turned into +OK")
            status = b"+OK Logged in.\r\n"
        return status, body


@_register("pop3-dele-deferred", "pop3", "deletion",
           "DELE is only remembered by the proxy (sent at QUIT): a marked message stays readable and counted")
class Pop3DeleDeferred(Fault):
    """The lazy implementation: deletions still commit at QUIT, but marks are not honoured in the session."""

    def pop3_command(self, conn, cmd):
        marks: set[str] = conn.state.setdefault("marks", set())
        if not conn.authenticated:
            return cmd.raw
        if cmd.verb == "DELE" and len(cmd.args) == 1:
            if cmd.args[0] in marks:
                return Local(b"-ERR Message is already deleted.\r\n")
            return b"LIST %s%s" % (cmd.args[0].encode(), _eol(cmd.raw))  # does it exist? answer as DELE would
        if cmd.verb == "RSET":
            marks.clear()
        elif cmd.verb == "QUIT" and marks:
            conn.fire(f"sent the deferred DELE {sorted(marks)} at QUIT")
            return Prefixed([b"DELE %s\r\n" % m.encode() for m in sorted(marks)], cmd.raw)
        return cmd.raw

    def pop3_response(self, conn, cmd, status, body):
        if cmd is not None and cmd.verb == "DELE" and status.startswith(b"+OK") and len(cmd.args) == 1:
            conn.state.setdefault("marks", set()).add(cmd.args[0])
            conn.fire(f"DELE {cmd.args[0]} deferred to QUIT")
            status = b"+OK Marked to be deleted.\r\n"
        return status, body


@_register("pop3-quit-discards", "pop3", "deletion", "QUIT in the TRANSACTION state is preceded by a hidden RSET")
class Pop3QuitDiscards(Fault):
    def pop3_command(self, conn, cmd):
        if cmd.verb == "QUIT" and conn.authenticated:
            conn.fire("RSET sent before QUIT")
            return Prefixed([b"RSET\r\n"], cmd.raw)
        return cmd.raw


@_register("pop3-uidl-is-msgnum", "pop3", "leave-on-server",
           "every UIDL unique-id is derived from the message number (unique, but changes when earlier mail goes)")
class Pop3UidlIsMsgnum(Fault):
    def pop3_response(self, conn, cmd, status, body):
        status, body, changed = _rewrite_uidl(cmd, status, body, lambda num, uid: b"msg-" + num)
        if changed:
            conn.fire("UIDL ids replaced by message numbers")
        return status, body


@_register("pop3-list-size-off", "pop3", "retrieval",
           "LIST and STAT report every message one octet smaller than RETR delivers")
class Pop3ListSizeOff(Fault):
    def pop3_response(self, conn, cmd, status, body):
        if cmd is None or not status.startswith(b"+OK"):
            return status, body
        if cmd.verb == "LIST" and body is not None:
            out = []
            for line in body:
                words = _chomp(line).split(b" ")
                if len(words) >= 2 and words[1].isdigit():
                    line = b"%s %d%s" % (words[0], int(words[1]) - 1, _eol(line))
                out.append(line)
            if out != body:
                conn.fire("LIST sizes shrunk by one")
            return status, out
        m = re.match(rb"(\+OK )(\d+) (\d+)(.*)$", _chomp(status), re.DOTALL)
        if m and cmd.verb == "LIST":
            conn.fire("LIST n size shrunk by one")
            return b"%s%s %d%s%s" % (m[1], m[2], int(m[3]) - 1, m[4], _eol(status)), body
        if m and cmd.verb == "STAT" and int(m[2]):
            conn.fire("STAT octets shrunk by the message count")
            return b"%s%s %d%s%s" % (m[1], m[2], int(m[3]) - int(m[2]), m[4], _eol(status)), body
        return status, body


@_register("pop3-top-sends-whole", "pop3", "partial-fetch", "TOP n k is sent to the server as RETR n")
class Pop3TopSendsWhole(Fault):
    def pop3_command(self, conn, cmd):
        if cmd.verb == "TOP" and len(cmd.args) == 2 and conn.authenticated:
            conn.fire(f"TOP {cmd.args[0]} {cmd.args[1]} sent as RETR {cmd.args[0]}")
            return b"RETR %s%s" % (cmd.args[0].encode(), _eol(cmd.raw))
        return cmd.raw


@_register("pop3-top-no-blank-line", "pop3", "partial-fetch",
           "TOP responses lose the empty line that separates the headers from the body")
class Pop3TopNoBlankLine(Fault):
    def pop3_response(self, conn, cmd, status, body):
        if cmd is not None and cmd.verb == "TOP" and body and b"\r\n" in body:
            conn.fire("dropped the blank line after the headers of TOP")
            i = body.index(b"\r\n")
            body = body[:i] + body[i + 1:]
        return status, body


@_register("pop3-bare-lf", "pop3", "retrieval", "RETR and TOP lines end in a bare LF instead of CRLF")
class Pop3BareLf(Fault):
    def pop3_response(self, conn, cmd, status, body):
        if cmd is not None and cmd.verb in ("RETR", "TOP") and body:
            conn.fire(f"{cmd.verb} lines sent with bare LF")
            body = [line[:-2] + b"\n" if line.endswith(b"\r\n") else line for line in body]
        return status, body


@_register("pop3-retr-off-by-one", "pop3", "retrieval",
           "RETR n is sent as RETR n+1 (message numbering off by one; the last one is \"no such message\")")
class Pop3RetrOffByOne(Fault):
    def pop3_command(self, conn, cmd):
        if cmd.verb == "RETR" and len(cmd.args) == 1 and cmd.args[0].isdigit() and conn.authenticated:
            n = int(cmd.args[0])
            conn.fire(f"RETR {n} sent as RETR {n + 1}")
            return b"RETR %d%s" % (n + 1, _eol(cmd.raw))
        return cmd.raw



@_register("pop3-retr-size-not-listed", "pop3", "retrieval",
           "RETR adds a Status: header field that LIST's and STAT's sizes do not count")
class Pop3RetrSizeNotListed(Fault):
    """Adding a field is legal; sending more octets than LIST said is not (RFC 1939 §5: LIST gives the exact
    size). The body checks allow added fields, so only the RETR-equals-LIST check can catch this."""

    def pop3_response(self, conn, cmd, status, body):
        if cmd is not None and cmd.verb == "RETR" and body:
            conn.fire(f"RETR {cmd.args[0] if cmd.args else ''}: Status: added, sizes unchanged")
            return status, [b"Status: RO\r\n", *body]
        return status, body


@_register("pop3-in-use-code-dropped", "pop3", "lock",
           "a PASS refused because the maildrop is locked loses its [IN-USE] response code")
class Pop3InUseCodeDropped(Fault):
    profile = "dovecot-lock"

    def pop3_response(self, conn, cmd, status, body):
        if cmd is not None and cmd.verb == "PASS" and status.upper().startswith(b"-ERR [IN-USE]"):
            conn.fire("[IN-USE] dropped from the PASS refusal")
            status = b"-ERR" + status[len(b"-ERR [IN-USE]"):]
        return status, body

def _bare_lf(line: bytes) -> bytes:
    return line[:-2] + b"\n" if line.endswith(b"\r\n") else line


@_register("pop3-sasl-ir-ignored", "pop3", "auth",
           "AUTH mechanism initial-response reaches the server without its initial response (an RFC 1734-only server)")
class Pop3SaslIrIgnored(Fault):
    def pop3_command(self, conn, cmd):
        if cmd.verb == "AUTH" and len(cmd.args) == 2:
            conn.fire(f"initial response of AUTH {cmd.args[0]} dropped")
            return b"AUTH %s%s" % (cmd.args[0].encode(), _eol(cmd.raw))
        return cmd.raw


@_register("pop3-sasl-cancel-accepted", "pop3", "auth",
           "an AUTH exchange the client cancels with \"*\" is answered +OK (the server's -ERR is replaced)")
class Pop3SaslCancelAccepted(Fault):
    def sasl_line(self, conn, line):
        conn.state["cancelled"] = _chomp(line) == b"*"
        return line

    def pop3_response(self, conn, cmd, status, body):
        if cmd is not None and cmd.verb == "AUTH" and conn.state.pop("cancelled", False) and status.startswith(b"-ERR"):
            conn.fire("cancelled AUTH answered +OK")
            status = b"+OK Logged in.\r\n"
        return status, body


@_register("pop3-auth-continuation-bare-lf", "pop3", "auth",
           "the \"+ \" challenges of an AUTH exchange end with a bare LF instead of CRLF")
class Pop3AuthContinuationBareLf(Fault):
    def pop3_challenge(self, conn, line):
        conn.fire(f"challenge {_chomp(line)[:20]!r} sent with a bare LF")
        return _bare_lf(line)


@_register("pop3-bare-auth-crashes", "pop3", "auth",
           "AUTH without a mechanism closes the connection without an answer (a server that crashes on it)")
class Pop3BareAuthCrashes(Fault):
    def pop3_command(self, conn, cmd):
        if cmd.verb == "AUTH" and not cmd.args:
            conn.fire("bare AUTH: connection closed")
            conn.abort()
            raise EOFError
        return cmd.raw


@_register("pop3-apop-wrong-digest-accepted", "pop3", "auth", "an APOP the server refuses is answered +OK")
class Pop3ApopWrongDigestAccepted(Fault):
    def pop3_response(self, conn, cmd, status, body):
        if cmd is not None and cmd.verb == "APOP" and status.startswith(b"-ERR"):
            conn.fire("APOP -ERR turned into +OK")
            status = b"+OK Logged in.\r\n"
        return status, body


@_register("pop3-apop-accepted-said-err", "pop3", "auth",
           "an APOP the server accepts is answered -ERR, though the session is logged in (state and answer disagree)")
class Pop3ApopAcceptedSaidErr(Fault):
    def pop3_response(self, conn, cmd, status, body):
        if cmd is not None and cmd.verb == "APOP" and status.startswith(b"+OK"):
            conn.fire("APOP +OK turned into -ERR")
            status = b"-ERR [AUTH] Authentication failed.\r\n"
        return status, body


# -- IMAP ---------------------------------------------------------------------------------------------

_LITERAL_ARG = re.compile(rb"~?\{(\d+)\+?\}\r?\n")
WIRE_KEPT = 65536  # bytes of a command kept for parsing its arguments later


def _astrings(data: bytes, count: int) -> list[bytes | None]:
    """The first `count` astrings/atoms/lists of `data`; None for one sent as a literal (and all after it)."""
    out: list[bytes | None] = []
    i, n = 0, len(data)
    while len(out) < count:
        while i < n and data[i:i + 1] == b" ":
            i += 1
        if i >= n:
            break
        c = data[i:i + 1]
        if c == b'"':
            i += 1
            buf = bytearray()
            while i < n and data[i:i + 1] != b'"':
                if data[i:i + 1] == b"\\" and i + 1 < n:
                    i += 1
                buf += data[i:i + 1]
                i += 1
            out.append(bytes(buf))
            i += 1
        elif c in (b"{", b"~"):
            m = _LITERAL_ARG.match(data, i)
            if not m or m.end() + int(m[1]) > n:
                out.extend([None] * (count - len(out)))
                break
            i = m.end() + int(m[1])
            out.append(data[m.end():i])
        elif c == b"(":
            depth, start = 0, i
            while i < n:
                depth += {b"(": 1, b")": -1}.get(data[i:i + 1], 0)
                i += 1
                if depth == 0:
                    break
            out.append(data[start:i])
        else:
            start = i
            while i < n and data[i:i + 1] not in (b" ", b"\r", b"\n"):
                i += 1
            out.append(data[start:i])
    return out


def _mailbox_key(conn: ImapConn, name: bytes) -> tuple[bytes | None, bytes]:
    name = name.rstrip(b"/")
    return conn.user, b"INBOX" if name.upper() == b"INBOX" else name


def _list_name(resp: ImapResponse) -> bytes | None:
    """The mailbox name of `* LIST (flags) "/" name` (also LSUB), literal or not."""
    m = re.match(rb"\* (?:LIST|LSUB) \((?:[^()]*)\) (?:NIL|\"(?:[^\"\\]|\\.)*\") ?(.*)$", _chomp(resp.line), re.IGNORECASE)
    if not m:
        return None
    if len(resp.segments) > 1 and LITERAL_AT_END.search(resp.line):
        return resp.segments[1]
    names = _astrings(m[1], 1)
    return names[0] if names else None


def _pending_any(conn: ImapConn, names: set[str]) -> bool:
    return bool(names & set(conn.pending_names()))


@_register("imap-idle-no-exists", "imap", "notification", "untagged EXISTS is dropped while the client is in IDLE")
class ImapIdleNoExists(Fault):
    def imap_response(self, conn, cmd, resp):
        if resp.kind == "*" and resp.untagged[1] == "EXISTS" and "IDLE" in conn.pending_names():
            conn.fire(f"dropped {_chomp(resp.line).decode('latin-1')} during IDLE")
            return None
        return resp


_EXPUNGING = {"EXPUNGE", "UID EXPUNGE", "CLOSE", "MOVE", "UID MOVE"}


@_register("imap-no-expunge-notify", "imap", "notification",
           "untagged EXPUNGE (and VANISHED) is dropped unless this connection's own EXPUNGE/CLOSE/MOVE is running")
class ImapNoExpungeNotify(Fault):
    def imap_response(self, conn, cmd, resp):
        word = resp.untagged[1]
        announces = word == "EXPUNGE" or (word == "VANISHED" and b"(EARLIER)" not in resp.line.upper())
        if resp.kind == "*" and announces and not _pending_any(conn, _EXPUNGING):
            conn.fire(f"dropped {_chomp(resp.line).decode('latin-1')} (not our expunge)")
            return None
        return resp


_OWN_FLAGS = {"FETCH", "UID FETCH", "STORE", "UID STORE"}


@_register("imap-no-flag-notify", "imap", "notification",
           "unsolicited FETCH (FLAGS ...) is dropped unless this connection's own FETCH/STORE is running")
class ImapNoFlagNotify(Fault):
    def imap_response(self, conn, cmd, resp):
        unsolicited = not _pending_any(conn, _OWN_FLAGS)
        if resp.kind == "*" and resp.untagged[1] == "FETCH" and b"FLAGS" in resp.line.upper() and unsolicited:
            conn.fire(f"dropped {_chomp(resp.line).decode('latin-1')} (unsolicited)")
            return None
        return resp


_FETCHES = frozenset({"FETCH", "UID FETCH"})


class _Rewritten(Fault):
    """The lines of the COMMANDS go upstream with PATTERN replaced by REPLACEMENT."""

    COMMANDS: frozenset[str] = frozenset()
    PATTERN: re.Pattern[bytes]
    REPLACEMENT: bytes = b""
    NOTE = ""  # what proxy.fired says

    def imap_client_line(self, conn, cmd, line, first):
        if cmd.name in self.COMMANDS:
            new = self.PATTERN.sub(self.REPLACEMENT, line)
            if new != line:
                conn.fire(self.NOTE)
                return new
        return line


@_register("imap-peek-sets-seen", "imap", "partial-fetch", "BODY.PEEK[...] (and BINARY.PEEK) is sent as BODY[...]")
class ImapPeekSetsSeen(_Rewritten):
    COMMANDS, PATTERN, REPLACEMENT = _FETCHES, re.compile(rb"(?i)\b(BODY|BINARY)\.PEEK\["), rb"\1["
    NOTE = "BODY.PEEK sent as BODY"


@_register("imap-partial-ignored", "imap", "partial-fetch", "<offset.length> partial specifiers are stripped from FETCH")
class ImapPartialIgnored(_Rewritten):
    COMMANDS, PATTERN, REPLACEMENT = _FETCHES, re.compile(rb"\]<\d+\.\d+>"), b"]"
    NOTE = "partial specifier stripped"


@_register("imap-list-hides-new", "imap", "folders",
           "LIST/LSUB leave out mailboxes another connection through this proxy created or renamed to")
class ImapListHidesNew(Fault):
    def __init__(self) -> None:
        super().__init__()
        self.made: dict[tuple[bytes | None, bytes], int] = {}  # (user, mailbox) -> connection id

    def imap_response(self, conn, cmd, resp):
        if resp.kind == "tagged" and cmd is not None and resp.status == "OK" and cmd.name in ("CREATE", "RENAME"):
            names = cmd.arguments(2)
            name = names[0] if cmd.name == "CREATE" else (names[1] if len(names) > 1 else None)
            if name is not None:
                with self.lock:
                    self.made[_mailbox_key(conn, name)] = conn.id
        elif resp.kind == "*" and resp.untagged[1] in ("LIST", "LSUB"):
            name = _list_name(resp)
            if name is not None:
                with self.lock:
                    maker = self.made.get(_mailbox_key(conn, name))
                if maker is not None and maker != conn.id:
                    conn.fire(f"hid {name!r} from LIST")
                    return None
        return resp


class _Swallowed(Fault):
    """These commands are answered OK by the proxy and never reach the server."""

    COMMANDS: tuple[str, ...] = ()

    def imap_command(self, conn, cmd):
        if cmd.name in self.COMMANDS:
            conn.fire(f"swallowed {cmd.name}")
            return Local(b"OK %s completed." % cmd.name.split()[-1].title().encode())
        return None


@_register("imap-expunge-ignored", "imap", "deletion",
           "EXPUNGE (and UID EXPUNGE) is answered OK by the proxy and never reaches the server")
class ImapExpungeIgnored(_Swallowed):
    COMMANDS = ("EXPUNGE", "UID EXPUNGE")


class _SentAs(Fault):
    """A command goes upstream as another one: SENT_AS maps names; arguments stay unless KEEP_ARGS is off."""

    SENT_AS: dict[str, str] = {}
    KEEP_ARGS = True

    def imap_client_line(self, conn, cmd, line, first):
        other = self.SENT_AS.get(cmd.name) if first else None
        if other is None:
            return line
        conn.fire(f"{cmd.name} sent as {other}")
        args = b" " + cmd.args if self.KEEP_ARGS and cmd.args else b""
        return b"%s %s%s%s" % (cmd.tag, other.encode(), args, _eol(line))


@_register("imap-close-keeps-deleted", "imap", "deletion", "CLOSE is sent to the server as UNSELECT (no expunge)")
class ImapCloseKeepsDeleted(_SentAs):
    SENT_AS = {"CLOSE": "UNSELECT"}


@_register("imap-uidvalidity-changes", "imap", "uid",
           "UIDVALIDITY (and APPENDUID/COPYUID validity) differs on every connection")
class ImapUidvalidityChanges(Fault):
    PATTERN = re.compile(rb"(?i)((?:UIDVALIDITY|\[APPENDUID|\[COPYUID) )(\d+)")

    def imap_response(self, conn, cmd, resp):
        offset = conn.state.setdefault("offset", 1 + secrets.randbelow(1 << 30))
        segs = list(resp.segments)
        for i in resp.lines():
            segs[i] = self.PATTERN.sub(lambda m: m[1] + b"%d" % ((int(m[2]) + offset - 1) % 0xFFFFFFFF + 1), segs[i])
        if segs != resp.segments:
            conn.fire(f"UIDVALIDITY shifted by {offset}")
            return ImapResponse(segs)
        return resp


@_register("imap-search-misses", "imap", "search", "untagged SEARCH responses lose their last number")
class ImapSearchMisses(Fault):
    def imap_response(self, conn, cmd, resp):
        if resp.kind == "*" and resp.untagged[1] == "SEARCH":
            m = re.match(rb"(\* SEARCH)((?: \d+)*)(.*)$", _chomp(resp.line), re.IGNORECASE | re.DOTALL)
            if m and m[2]:
                nums = m[2].split()
                conn.fire(f"dropped {nums[-1].decode()} from SEARCH")
                return ImapResponse([m[1] + b"".join(b" " + n for n in nums[:-1]) + m[3] + _eol(resp.line)])
        return resp


@_register("imap-rename-ignored", "imap", "folders", "RENAME is answered OK by the proxy and never reaches the server")
class ImapRenameIgnored(_Swallowed):
    COMMANDS = ("RENAME",)


@_register("imap-fetch-corrupt", "imap", "retrieval",
           "one byte in the middle of every literal in a FETCH response is changed (length kept)")
class ImapFetchCorrupt(Fault):
    def imap_response(self, conn, cmd, resp):
        if resp.kind != "*" or resp.untagged[1] != "FETCH" or len(resp.segments) < 3:
            return resp
        segs = list(resp.segments)
        for i in range(1, len(segs), 2):
            data = bytearray(segs[i])
            if not data:
                continue
            mid = len(data) // 2
            # the alphanumeric byte nearest the middle, so line structure stays intact; else the middle one
            window = range(max(0, mid - 100), min(len(data), mid + 100))
            pos = min((j for j in window if chr(data[j]).isalnum()), key=lambda j: abs(j - mid), default=mid)
            c = data[pos]
            data[pos] = ord(chr(c).swapcase()) if chr(c).isalpha() else (48 + (c - 47) % 10 if chr(c).isdigit() else c ^ 1)
            segs[i] = bytes(data)
            conn.fire(f"changed byte {pos} of a {len(data)}-byte literal")
        return ImapResponse(segs)


@_register("imap-overquota-accepted", "imap", "quota",
           "APPEND/COPY/MOVE refused with NO [OVERQUOTA] is reported as OK")
class ImapOverquotaAccepted(Fault):
    def imap_response(self, conn, cmd, resp):
        if (resp.kind == "tagged" and cmd is not None and resp.status == "NO"
                and cmd.name in ("APPEND", "COPY", "UID COPY", "MOVE", "UID MOVE")
                and (b"OVERQUOTA" in resp.line.upper() or b"QUOTA" in resp.line.upper())):
            conn.fire(f"{cmd.name} NO [OVERQUOTA] turned into OK")
            return ImapResponse([b"%s OK %s completed.\r\n" % (resp.tag, cmd.name.title().encode())])
        return resp


@_register("imap-sent-invisible", "imap", "sent",
           "APPEND to the Sent mailbox is answered OK by the proxy; the message is thrown away")
class ImapSentInvisible(Fault):
    def __init__(self) -> None:
        super().__init__()
        self.sent_names = {b"SENT", b"SENT ITEMS", b"SENT MESSAGES"}  # upper case; \Sent names from LIST join

    def imap_command(self, conn, cmd):
        if cmd.name == "APPEND":
            name = cmd.arguments(1)
            with self.lock:
                sent = bool(name) and name[0] is not None and name[0].rstrip(b"/").upper() in self.sent_names
            if sent:
                conn.fire(f"threw away an APPEND to {name[0]!r}")
                return Local(b"OK Append completed.")
        return None

    def imap_response(self, conn, cmd, resp):
        if resp.kind == "*" and resp.untagged[1] in ("LIST", "XLIST") and b"\\SENT" in resp.line.upper():
            name = _list_name(resp)
            if name is not None:
                with self.lock:
                    self.sent_names.add(name.upper())
        return resp


@_register("imap-move-copies", "imap", "copy-move", "MOVE is sent to the server as COPY (the source message stays)")
class ImapMoveCopies(_SentAs):
    SENT_AS = {"MOVE": "COPY", "UID MOVE": "UID COPY"}


@_register("imap-store-ignored", "imap", "flags", "STORE is answered OK by the proxy and never reaches the server")
class ImapStoreIgnored(_Swallowed):
    COMMANDS = ("STORE", "UID STORE")


@_register("imap-bad-login-accepted", "imap", "auth", "a LOGIN or AUTHENTICATE the server refuses is answered OK")
class ImapBadLoginAccepted(Fault):
    def imap_response(self, conn, cmd, resp):
        if resp.kind == "tagged" and cmd is not None and cmd.name in ("LOGIN", "AUTHENTICATE") and resp.status == "NO":
            conn.fire(f"{cmd.name} NO turned into OK")
            return ImapResponse([b"%s OK Logged in\r\n" % resp.tag])
        return resp


@_register("imap-append-continuation-bare-lf", "imap", "append",
           "the \"+\" continuation that invites APPEND's literal ends with a bare LF instead of CRLF")
class ImapAppendContinuationBareLf(Fault):
    def imap_response(self, conn, cmd, resp):
        if resp.kind == "+" and "APPEND" in conn.pending_names():
            conn.fire(f"continuation {_chomp(resp.line)[:30]!r} sent with a bare LF")
            return ImapResponse([_bare_lf(resp.line), *resp.segments[1:]])
        return resp


@_register("imap-sasl-ir-ignored", "imap", "auth",
           "AUTHENTICATE mechanism initial-response reaches the server without its initial response (SASL-IR "
           "advertised, not honoured)")
class ImapSaslIrIgnored(_Rewritten):
    COMMANDS = frozenset({"AUTHENTICATE"})
    PATTERN, REPLACEMENT = re.compile(rb"^(\S+ AUTHENTICATE \S+) \S+(?=\r?\n)", re.IGNORECASE), rb"\1"
    NOTE = "initial response dropped from AUTHENTICATE"


@_register("imap-authenticate-cancel-no", "imap", "auth",
           "an AUTHENTICATE exchange the client cancels with \"*\" is answered NO instead of BAD")
class ImapAuthenticateCancelNo(Fault):
    def sasl_line(self, conn, line):
        conn.state["cancelled"] = _chomp(line) == b"*"
        return line

    def imap_response(self, conn, cmd, resp):
        if (resp.kind == "tagged" and cmd is not None and cmd.name == "AUTHENTICATE" and resp.status == "BAD"
                and conn.state.pop("cancelled", False)):
            conn.fire("cancelled AUTHENTICATE answered NO")
            return ImapResponse([b"%s NO%s" % (resp.tag, resp.line[len(resp.tag) + 4:])])
        return resp


@_register("imap-authenticate-continuation-bare-lf", "imap", "auth",
           "the \"+\" challenges of an AUTHENTICATE exchange end with a bare LF instead of CRLF")
class ImapAuthenticateContinuationBareLf(Fault):
    def imap_response(self, conn, cmd, resp):
        if resp.kind == "+" and "AUTHENTICATE" in conn.pending_names():
            conn.fire(f"challenge {_chomp(resp.line)[:20]!r} sent with a bare LF")
            return ImapResponse([_bare_lf(resp.line), *resp.segments[1:]])
        return resp


_CAPABILITY_LIST = re.compile(rb"(?i)(\[CAPABILITY |^\* CAPABILITY )([^\]\r\n]*)")


@_register("imap-claims-rev2-bad-base64-no", "imap", "auth",
           "IMAP4rev2 is added to every capability list, while invalid base64 in AUTHENTICATE stays a NO "
           "(RFC 9051 §6.2.2 wants BAD)")
class ImapClaimsRev2BadBase64No(Fault):
    def imap_response(self, conn, cmd, resp):
        if resp.kind in ("*", "tagged") and b"CAPABILITY" in resp.line.upper() and b"IMAP4REV2" not in resp.line.upper():
            line = _CAPABILITY_LIST.sub(lambda m: m[1] + m[2] + b" IMAP4rev2", resp.line, count=1)
            if line != resp.line:
                conn.fire("IMAP4rev2 added to a capability list")
                return ImapResponse([line, *resp.segments[1:]])
        return resp


@_register("imap-capability-code-without-rev1", "imap", "capability",
           "the CAPABILITY response code in a successful AUTHENTICATE's tagged OK loses IMAP4rev1")
class ImapCapabilityCodeWithoutRev1(Fault):
    def imap_response(self, conn, cmd, resp):
        if resp.kind == "tagged" and cmd is not None and cmd.name == "AUTHENTICATE" and resp.status == "OK":
            line = re.sub(rb"(?i)(\[CAPABILITY[^\]]*?) IMAP4rev1\b", rb"\1", resp.line, count=1)
            if line != resp.line:
                conn.fire("IMAP4rev1 dropped from AUTHENTICATE's [CAPABILITY]")
                return ImapResponse([line, *resp.segments[1:]])
        return resp


# Faults that rewrite the section a FETCH asks for, and rename the answer back, so the client sees the
# section it asked for with the content of another one.
class _FetchSectionRewrite(Fault):
    def rewrite(self, conn: ImapConn, line: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """(line to send, [(key in the server's answer, key the client expects)])."""
        raise NotImplementedError

    def imap_client_line(self, conn, cmd, line, first):
        if cmd.name in _FETCHES:
            new, renames = self.rewrite(conn, line)
            if new != line:
                conn.state.setdefault("renames", []).extend(renames)
                conn.fire(f"FETCH rewritten: {_chomp(line)[-60:]!r} -> {_chomp(new)[-60:]!r}")
                return new
        return line

    def imap_response(self, conn, cmd, resp):
        renames = conn.state.get("renames")
        if resp.kind == "*" and resp.untagged[1] == "FETCH" and renames:
            segs = list(resp.segments)
            for i in resp.lines():
                for server_key, client_key in renames:
                    segs[i] = segs[i].replace(server_key, client_key)
            return ImapResponse(segs)
        if resp.kind == "tagged" and cmd is not None and cmd.name in _FETCHES:
            conn.state.pop("renames", None)
        return resp


@_register("imap-header-fields-ignored", "imap", "partial-fetch",
           "BODY[HEADER.FIELDS (...)] and .NOT are answered with the whole header (BODY[HEADER])")
class ImapHeaderFieldsIgnored(_FetchSectionRewrite):
    PATTERN = re.compile(rb"(?i)\b(BODY(?:\.PEEK)?)\[((?:\d+\.)*)(HEADER\.FIELDS(?:\.NOT)? \([^)]*\))\]")

    def rewrite(self, conn, line):
        renames = [(b"BODY[%sHEADER]" % m[2], b"BODY[%s%s]" % (m[2], m[3])) for m in self.PATTERN.finditer(line)]
        return self.PATTERN.sub(rb"\1[\2HEADER]", line), renames


@_register("imap-nested-part-flattened", "imap", "partial-fetch",
           "BODY[a.b...] is answered with BODY[b...]: nested part numbers lose their first level")
class ImapNestedPartFlattened(_FetchSectionRewrite):
    PATTERN = re.compile(rb"(?i)\b(BODY(?:\.PEEK)?|BINARY(?:\.PEEK)?)\[(\d+)\.(\d+(?:\.[\w.]+)?)\]")

    def rewrite(self, conn, line):
        renames = [(b"%s[%s]" % (m[1].upper().replace(b".PEEK", b""), m[3]),
                    b"%s[%s.%s]" % (m[1].upper().replace(b".PEEK", b""), m[2], m[3])) for m in self.PATTERN.finditer(line)]
        return self.PATTERN.sub(rb"\1[\3]", line), renames


@_register("imap-binary-not-decoded", "imap", "partial-fetch",
           "BINARY[n] is answered with the still-encoded BODY[n]")
class ImapBinaryNotDecoded(_FetchSectionRewrite):
    PATTERN = re.compile(rb"(?i)\bBINARY(\.PEEK)?\[([\d.]*)\]")

    def rewrite(self, conn, line):
        renames = [(b"BODY[%s]" % m[2], b"BINARY[%s]" % m[2]) for m in self.PATTERN.finditer(line)]
        return self.PATTERN.sub(lambda m: b"BODY%s[%s]" % (m[1] or b"", m[2]), line), renames


@_register("imap-body-fetch-peeks", "imap", "partial-fetch", "BODY[...] is sent as BODY.PEEK[...] (\\Seen never set)")
class ImapBodyFetchPeeks(_Rewritten):
    COMMANDS, PATTERN, REPLACEMENT = _FETCHES, re.compile(rb"(?i)\bBODY\["), b"BODY.PEEK["
    NOTE = "BODY sent as BODY.PEEK"


@_register("imap-rfc822size-off", "imap", "partial-fetch", "RFC822.SIZE is reported one octet short")
class ImapRfc822SizeOff(Fault):
    def imap_response(self, conn, cmd, resp):
        if resp.kind == "*" and resp.untagged[1] == "FETCH":
            segs = list(resp.segments)
            for i in resp.lines():
                segs[i] = re.sub(rb"(?i)(RFC822\.SIZE )(\d+)", lambda m: m[1] + b"%d" % (int(m[2]) - 1), segs[i])
            if segs != resp.segments:
                conn.fire("RFC822.SIZE shrunk by one")
                return ImapResponse(segs)
        return resp


@_register("imap-noop-no-exists", "imap", "notification",
           "untagged EXISTS is dropped while only NOOP/CHECK is running (a poller is never told of new mail)")
class ImapNoopNoExists(Fault):
    def imap_response(self, conn, cmd, resp):
        pending = set(conn.pending_names())
        if resp.kind == "*" and resp.untagged[1] == "EXISTS" and pending and pending <= {"NOOP", "CHECK"}:
            conn.fire(f"dropped {_chomp(resp.line).decode('latin-1')} during {sorted(pending)}")
            return None
        return resp


_SYSTEM_FLAGS = {b"\\SEEN", b"\\ANSWERED", b"\\FLAGGED", b"\\DELETED", b"\\DRAFT"}


def _sequence_numbers(text: bytes) -> list[int] | None:
    """The numbers of a sequence set without `*`, or None."""
    out: list[int] = []
    for part in text.split(b","):
        a, _, b = part.partition(b":")
        if not a.isdigit() or (b and not b.isdigit()):
            return None
        lo, hi = sorted((int(a), int(b or a)))
        if hi - lo > 10000:
            return None
        out += range(lo, hi + 1)
    return out


@_register("imap-flags-session-local", "imap", "flags",
           "STORE (by sequence number) is kept by the proxy for this connection only: its own FETCH shows the flags, "
           "no other session (or later one) ever sees them")
class ImapFlagsSessionLocal(Fault):
    STORE = re.compile(rb"(?i)^(\S+) STORE (\S+) ([+-]?)FLAGS(\.SILENT)? \(([^)]*)\)\r?\n\Z")

    def imap_command(self, conn, cmd):
        m = self.STORE.match(cmd.line) if cmd.name == "STORE" else None
        nums = _sequence_numbers(m[2]) if m else None
        if not m or nums is None:
            return None
        flags = {f for f in m[5].split() if f}
        added: dict[int, set[bytes]] = conn.state.setdefault("added", {})
        removed: dict[int, set[bytes]] = conn.state.setdefault("removed", {})
        for n in nums:
            add, rem = added.setdefault(n, set()), removed.setdefault(n, set())
            if m[3] == b"-":
                add -= flags
                rem |= flags
            else:
                add |= flags
                rem -= flags
                if not m[3]:  # FLAGS replaces: every other system flag goes
                    rem |= {f for f in _SYSTEM_FLAGS if f not in {g.upper() for g in flags}}
            if not m[4]:
                conn.write_client(b"* %d FETCH (FLAGS (%s))\r\n" % (n, b" ".join(sorted(add))))
        conn.fire(f"kept STORE {m[2].decode()} {m[3].decode()}FLAGS ({m[5].decode()}) to this connection")
        return Local(b"OK Store completed.")

    def imap_response(self, conn, cmd, resp):
        added = conn.state.get("added")
        m = re.match(rb"\* (\d+) FETCH (.*)FLAGS \(([^)]*)\)", resp.line) if resp.kind == "*" and added else None
        if m and int(m[1]) in added:
            n = int(m[1])
            upper = {f.upper() for f in conn.state["removed"].get(n, set())}
            flags = [f for f in m[3].split() if f.upper() not in upper]
            flags += [f for f in added[n] if f.upper() not in {g.upper() for g in flags}]
            line = resp.line[:m.start(3)] + b" ".join(flags) + resp.line[m.end(3):]
            return ImapResponse([line, *resp.segments[1:]])
        return resp


@_register("imap-create-existing-ok", "imap", "folders", "CREATE of an existing mailbox is answered OK")
class ImapCreateExistingOk(Fault):
    def imap_response(self, conn, cmd, resp):
        if resp.kind == "tagged" and cmd is not None and cmd.name == "CREATE" and resp.status == "NO":
            conn.fire("CREATE NO turned into OK")
            return ImapResponse([b"%s OK Create completed.\r\n" % resp.tag])
        return resp


@_register("imap-delete-ignored", "imap", "folders", "DELETE is answered OK by the proxy and never reaches the server")
class ImapDeleteIgnored(_Swallowed):
    COMMANDS = ("DELETE",)


@_register("imap-subscribe-ignored", "imap", "folders",
           "SUBSCRIBE and UNSUBSCRIBE are answered OK by the proxy and never reach the server")
class ImapSubscribeIgnored(_Swallowed):
    COMMANDS = ("SUBSCRIBE", "UNSUBSCRIBE")


@_register("imap-uid-expunge-all", "imap", "deletion", "UID EXPUNGE <set> is sent as a plain EXPUNGE (every \\Deleted goes)")
class ImapUidExpungeAll(_SentAs):
    SENT_AS, KEEP_ARGS = {"UID EXPUNGE": "EXPUNGE"}, False


@_register("imap-unselect-expunges", "imap", "deletion", "UNSELECT is sent as CLOSE (\\Deleted messages are expunged)")
class ImapUnselectExpunges(_SentAs):
    SENT_AS = {"UNSELECT": "CLOSE"}


@_register("imap-internaldate-ignored", "imap", "append", "the date-time argument of APPEND is dropped")
class ImapInternaldateIgnored(_Rewritten):
    COMMANDS, PATTERN = frozenset({"APPEND"}), re.compile(rb' "[ \d]\d-[A-Za-z]{3}-\d{4} \d\d:\d\d:\d\d [+-]\d{4}"')
    NOTE = "dropped the APPEND date-time"


@_register("imap-search-text-ignored", "imap", "search", "SEARCH criteria BODY x and TEXT x are sent as ALL")
class ImapSearchTextIgnored(_Rewritten):
    COMMANDS = frozenset({"SEARCH", "UID SEARCH"})
    PATTERN, REPLACEMENT = re.compile(rb'(?i)\b(?:BODY|TEXT) (?:"(?:[^"\\]|\\.)*"|[^\s()"{]+)'), b"ALL"
    NOTE = "BODY/TEXT search criteria sent as ALL"


@_register("imap-quota-hidden", "imap", "quota", "untagged QUOTA responses are dropped (QUOTAROOT is kept)")
class ImapQuotaHidden(Fault):
    def imap_response(self, conn, cmd, resp):
        if resp.kind == "*" and resp.untagged[1] == "QUOTA":
            conn.fire("dropped a QUOTA response")
            return None
        return resp


@_register("imap-appenduid-off", "imap", "uid", "the UID in APPENDUID is one too high")
class ImapAppenduidOff(Fault):
    def imap_response(self, conn, cmd, resp):
        if resp.kind == "tagged" and b"[APPENDUID " in resp.line.upper():
            conn.fire("APPENDUID shifted by one")
            line = re.sub(rb"(?i)(\[APPENDUID \d+ )(\d+)", lambda m: m[1] + b"%d" % (int(m[2]) + 1), resp.line)
            return ImapResponse([line])
        return resp


@_register("imap-copyuid-off", "imap", "uid", "the destination UIDs in COPYUID are one too high")
class ImapCopyuidOff(Fault):
    def imap_response(self, conn, cmd, resp):
        if resp.kind in ("*", "tagged") and b"[COPYUID " in resp.line.upper():
            def shift(m: re.Match) -> bytes:
                return m[1] + re.sub(rb"\d+", lambda d: b"%d" % (int(d[0]) + 1), m[2])
            conn.fire("COPYUID destination shifted by one")
            return ImapResponse([re.sub(rb"(?i)(\[COPYUID \d+ \S+ )([\d:,]+)", shift, resp.line), *resp.segments[1:]])
        return resp


@_register("imap-expunge-during-fetch", "imap", "notification",
           "a hidden NOOP goes ahead of each FETCH/STORE/SEARCH, so other sessions' EXPUNGEs arrive during them")
class ImapExpungeDuringFetch(Fault):
    """RFC 3501 §7.4.1: the client's sequence numbers would shift in the middle of its own command."""

    COMMANDS = ("FETCH", "STORE", "SEARCH")

    def imap_command(self, conn, cmd):
        if cmd.name in self.COMMANDS:
            conn.state["during"] = cmd.tag
            return Prefixed([b"NOOP"])
        return None

    def imap_response(self, conn, cmd, resp):
        during = conn.state.get("during")
        if resp.kind == "*" and resp.untagged[1] == "EXPUNGE" and during:
            conn.fire(f"{_chomp(resp.line).decode('latin-1')} during {during.decode('latin-1')}")
        elif resp.kind == "tagged" and resp.tag == during:
            conn.state.pop("during", None)
        return resp


@_register("imap-expunge-wrong-number", "imap", "notification",
           "untagged EXPUNGE names the message after the one that went (n+1)")
class ImapExpungeWrongNumber(Fault):
    def imap_response(self, conn, cmd, resp):
        number, word = resp.untagged
        if resp.kind == "*" and word == "EXPUNGE" and number is not None:
            conn.fire(f"EXPUNGE {number} announced as {number + 1}")
            return ImapResponse([b"* %d EXPUNGE%s" % (number + 1, _eol(resp.line))])
        return resp


@_register("imap-uidnext-low", "imap", "uid", "UIDNEXT (SELECT, EXAMINE, STATUS) is reported one lower")
class ImapUidnextLow(Fault):
    def imap_response(self, conn, cmd, resp):
        if resp.kind == "*" and b"UIDNEXT " in resp.line.upper():
            conn.fire("UIDNEXT lowered by one")
            return ImapResponse([re.sub(rb"(?i)(UIDNEXT )(\d+)", lambda m: m[1] + b"%d" % (int(m[2]) - 1), resp.line),
                                 *resp.segments[1:]])
        return resp


@_register("imap-status-messages-off", "imap", "folders", "STATUS reports MESSAGES one higher than the mailbox holds")
class ImapStatusMessagesOff(Fault):
    def imap_response(self, conn, cmd, resp):
        if resp.kind == "*" and resp.untagged[1] == "STATUS" and b"MESSAGES " in resp.line.upper():
            conn.fire("STATUS MESSAGES raised by one")
            return ImapResponse([re.sub(rb"(?i)(MESSAGES )(\d+)", lambda m: m[1] + b"%d" % (int(m[2]) + 1), resp.line),
                                 *resp.segments[1:]])
        return resp



@_register("imap-examine-is-select", "imap", "deletion", "EXAMINE is sent as SELECT (the mailbox opens read-write)")
class ImapExamineIsSelect(_SentAs):
    SENT_AS = {"EXAMINE": "SELECT"}

    def imap_response(self, conn, cmd, resp):
        if resp.kind == "tagged" and cmd is not None and cmd.name == "EXAMINE":
            return ImapResponse([re.sub(rb"\[READ-WRITE\]", b"[READ-ONLY]", resp.line)])  # looks right to the client
        return resp


@_register("imap-append-flags-dropped", "imap", "append", "the flag list of APPEND is sent empty")
class ImapAppendFlagsDropped(_Rewritten):
    COMMANDS = frozenset({"APPEND"})
    PATTERN, REPLACEMENT = re.compile(rb" \([^()]+\)( \"[^\"]*\")? (~?\{\d+\+?\}\r?\n)$"), rb" ()\1 \2"
    NOTE = "APPEND flags dropped"


@_register("imap-keywords-dropped", "imap", "flags", "keywords (flags without a backslash) are dropped from STORE")
class ImapKeywordsDropped(Fault):
    STORE = re.compile(rb"(?i)^(\S+ (?:UID )?STORE \S+ [+-]?FLAGS(?:\.SILENT)? \()([^)]*)(\).*)$", re.DOTALL)

    def imap_client_line(self, conn, cmd, line, first):
        m = self.STORE.match(line) if first and cmd.name in ("STORE", "UID STORE") else None
        if m:
            kept = [f for f in m[2].split() if f.startswith(b"\\")]
            if len(kept) != len(m[2].split()):
                conn.fire(f"keywords dropped from {_chomp(line)!r}")
                return m[1] + b" ".join(kept) + m[3]
        return line


@_register("imap-uid-fetch-no-uid", "imap", "uid", "FETCH responses to UID FETCH leave out the UID item")
class ImapUidFetchNoUid(Fault):
    def imap_response(self, conn, cmd, resp):
        if resp.kind == "*" and resp.untagged[1] == "FETCH" and _pending_any(conn, {"UID FETCH"}) \
                and not _pending_any(conn, {"FETCH"}):
            line = re.sub(rb"(?<=[( ])UID \d+ ?", b"", resp.line).replace(b" )", b")")
            if line != resp.line:
                conn.fire("UID left out of a UID FETCH response")
                return ImapResponse([line, *resp.segments[1:]])
        return resp

# -- Variants: legal, but not what Dovecot does ----------------------------------------------------


@_register("imap-no-uidplus", "imap", "uid", "a server without UIDPLUS (RFC 4315): not advertised, UID EXPUNGE unknown",
           registry=VARIANTS)
class ImapNoUidplus(Fault):
    def imap_command(self, conn, cmd):
        if cmd.name == "UID EXPUNGE":
            conn.fire("refused UID EXPUNGE")
            return Local(b"BAD Error in IMAP command UID: Unknown command.")
        return None

    def imap_response(self, conn, cmd, resp):
        line = resp.line
        if b"CAPABILITY" in line.upper():
            line = re.sub(rb"(?i) UIDPLUS\b", b"", line)
        line = re.sub(rb"(?i)\[(?:APPENDUID|COPYUID) [^\]]*\] ?", b"", line)
        if line == resp.line:
            return resp
        conn.fire("UIDPLUS, APPENDUID or COPYUID taken out of a response")
        return ImapResponse([line, *resp.segments[1:]])



@_register("imap-unknown-mechanism-bad", "imap", "auth",
           "AUTHENTICATE with a mechanism the server does not know is answered BAD, not NO (legal; NO is a SHOULD)",
           registry=VARIANTS)
class ImapUnknownMechanismBad(Fault):
    def imap_response(self, conn, cmd, resp):
        if resp.kind == "tagged" and cmd is not None and cmd.name == "AUTHENTICATE" and resp.status == "NO" \
                and cmd.args.upper().startswith(b"X-"):
            conn.fire("unknown mechanism answered BAD")
            return ImapResponse([b"%s BAD%s" % (resp.tag, resp.line[len(resp.tag) + 3:])])
        return resp


@_register("imap-no-capability-code", "imap", "capability",
           "no CAPABILITY response code in the tagged OK of LOGIN and AUTHENTICATE (legal: a MAY)", registry=VARIANTS)
class ImapNoCapabilityCode(Fault):
    def imap_response(self, conn, cmd, resp):
        if resp.kind == "tagged" and cmd is not None and cmd.name in ("LOGIN", "AUTHENTICATE"):
            line = re.sub(rb"(?i)\[CAPABILITY [^\]]*\] ?", b"", resp.line, count=1)
            if line != resp.line:
                conn.fire(f"[CAPABILITY] dropped from {cmd.name}'s OK")
                return ImapResponse([line, *resp.segments[1:]])
        return resp


@_register("pop3-bare-auth-refused", "pop3", "auth", "AUTH without a mechanism is -ERR (legal: no RFC defines it)",
           registry=VARIANTS)
class Pop3BareAuthRefused(Fault):
    def pop3_command(self, conn, cmd):
        if cmd.verb == "AUTH" and not cmd.args:
            conn.fire("bare AUTH refused")
            return Local(b"-ERR Unknown command.\r\n")
        return cmd.raw


@_register("pop3-reordered-added-headers", "pop3", "retrieval",
           "a server that numbers the messages in the reverse of Dovecot's order and adds Received:, Status: and "
           "X-UID: header fields to every message (LIST, STAT and RETR sizes grow to match)", registry=VARIANTS)
class Pop3ReorderedAddedHeaders(Fault):
    """Legal under RFC 1939 (numbers 1..N in the server's order; a server may add header fields): what
    GNU Mailutils and mail delivered over LMTP look like. The suites must pass through it unchanged."""

    FIRST = b"Received: from variant.invalid by mailharness-proxy; Tue, 01 Dec 2026 00:00:00 +0000\r\n"
    LAST = b"Status: RO\r\nX-UID: 7\r\n"
    ADDED = len(FIRST) + len(LAST)
    NUMBERED = {"RETR", "TOP", "DELE", "LIST", "UIDL"}

    def _count(self, conn) -> int | None:
        if not conn.authenticated:
            return None
        if "count" not in conn.state:  # the first command after login: learn N, the size of the session's view
            status, _ = conn.ask(b"STAT\r\n")
            words = _chomp(status).split()
            conn.state["count"] = int(words[1]) if status.startswith(b"+OK") and len(words) > 1 and words[1].isdigit() else 0
        return conn.state["count"]

    @staticmethod
    def _flip(number: bytes, count: int) -> bytes:
        return b"%d" % (count + 1 - int(number)) if number.isdigit() and 1 <= int(number) <= count else number

    def pop3_command(self, conn, cmd):
        count = self._count(conn)
        if count is None or cmd.verb not in self.NUMBERED or not cmd.args:
            return cmd.raw
        words = _chomp(cmd.raw).split(b" ")
        words[1] = self._flip(words[1], count)
        conn.fire(f"{cmd.verb} {cmd.args[0]} sent as {words[1].decode('latin-1')}")
        return b" ".join(words) + _eol(cmd.raw)

    def pop3_response(self, conn, cmd, status, body):
        count = conn.state.get("count")
        if cmd is None or count is None or not status.startswith(b"+OK"):
            return status, body
        words = _chomp(status).split(b" ")
        if cmd.verb == "STAT" and len(words) >= 3 and words[1].isdigit() and words[2].isdigit():
            words[2] = b"%d" % (int(words[2]) + int(words[1]) * self.ADDED)
        elif cmd.verb in ("LIST", "UIDL") and cmd.args and len(words) >= 3:
            words[1] = self._flip(words[1], count)
            if cmd.verb == "LIST" and words[2].isdigit():
                words[2] = b"%d" % (int(words[2]) + self.ADDED)
        elif cmd.verb == "RETR" and len(words) >= 2 and words[1].isdigit():
            words[1] = b"%d" % (int(words[1]) + self.ADDED)  # Dovecot's "+OK 312 octets"
        status = b" ".join(words) + _eol(status)
        if body is not None and cmd.verb in ("LIST", "UIDL"):
            lines = []
            for line in body:
                parts = _chomp(line).split(b" ")
                if len(parts) >= 2:
                    parts[0] = self._flip(parts[0], count)
                    if cmd.verb == "LIST" and parts[1].isdigit():
                        parts[1] = b"%d" % (int(parts[1]) + self.ADDED)
                lines.append(b" ".join(parts) + _eol(line))
            body = sorted(lines, key=lambda x: int(x.split(b" ")[0]) if x.split(b" ")[0].isdigit() else 0)
        elif body is not None and cmd.verb in ("RETR", "TOP"):
            end = next((i for i, line in enumerate(body) if line == b"\r\n"), len(body))
            body = [self.FIRST, *body[:end], self.LAST, *body[end:]]
        return status, body


# -- concurrency faults for the stress mode ------------------------------------------------------------

_STORE_ADD = re.compile(rb"(?i)^(\S+) (UID )?STORE (\d+) \+FLAGS(\.SILENT)? \(([^)]*)\)\r?\n\Z")


@_register("imap-store-lost-update", "imap", "flags",
           "STORE +FLAGS of one message becomes a slow read-modify-write (FETCH FLAGS, 50 ms, STORE FLAGS old+new): "
           "a STORE another session makes meanwhile is lost", registry=STRESS_FAULTS)
class ImapStoreLostUpdate(Fault):
    WINDOW = 0.05

    def imap_command(self, conn, cmd):
        m = _STORE_ADD.match(cmd.line) if cmd.name in ("STORE", "UID STORE") else None
        if not m:
            return None
        conn.state["rmw"] = {"target": int(m[3]), "uid": bool(m[2]), "flags": None}
        return Prefixed([(b"UID FETCH " if m[2] else b"FETCH ") + m[3] + b" (FLAGS)"])

    def imap_response(self, conn, cmd, resp):
        rmw = conn.state.get("rmw")
        if rmw and rmw["flags"] is None and resp.kind == "*" and resp.untagged[1] == "FETCH":
            uid = re.search(rb"(?i)\bUID (\d+)", resp.line)
            if (int(uid[1]) if rmw["uid"] and uid else resp.untagged[0]) == rmw["target"]:
                flags = re.search(rb"(?i)FLAGS \(([^)]*)\)", resp.line)
                rmw["flags"] = [f for f in flags[1].split() if f.lower() != b"\\recent"] if flags else []
                return None  # the answer to the proxy's own FETCH
        return resp

    def imap_client_line(self, conn, cmd, line, first):
        rmw = conn.state.pop("rmw", None) if first else None
        m = _STORE_ADD.match(line) if rmw and rmw["flags"] is not None else None
        if not m:
            return line
        time.sleep(self.WINDOW)  # the read and the write are apart: a concurrent STORE lands in between
        old = rmw["flags"]
        new = old + [f for f in m[5].split() if f.lower() not in {x.lower() for x in old}]
        conn.fire(f"STORE {m[3].decode()} +FLAGS ({m[5].decode()}) sent as FLAGS ({b' '.join(new).decode()})")
        return b"%s %sSTORE %s FLAGS%s (%s)\r\n" % (m[1], m[2] or b"", m[3], m[4] or b"", b" ".join(new))


@_register("imap-size-changes", "imap", "append",
           "a message's RFC822.SIZE grows by one octet after the first time it was reported", registry=STRESS_FAULTS)
class ImapSizeChanges(Fault):
    def __init__(self) -> None:
        super().__init__()
        self.reported: set[tuple[bytes | None, int]] = set()

    def imap_response(self, conn, cmd, resp):
        if resp.kind != "*" or resp.untagged[1] != "FETCH" or b"RFC822.SIZE" not in resp.line.upper():
            return resp
        uid = re.search(rb"(?i)\bUID (\d+)", resp.line)
        if not uid:
            return resp
        key = (conn.user, int(uid[1]))
        with self.lock:
            first = key not in self.reported
            self.reported.add(key)
        if first:
            return resp
        conn.fire(f"UID {uid[1].decode()}: RFC822.SIZE grown by one")
        segs = list(resp.segments)
        segs[0] = re.sub(rb"(?i)(RFC822\.SIZE )(\d+)", lambda m: m[1] + b"%d" % (int(m[2]) + 1), segs[0])
        return ImapResponse(segs)


class FaultsByUser(Fault):
    """One proxy, a fault per account: each user's connections get their own fault (by name), other users'
    pass unchanged. Lets one stress run prove several faults at once, with a clean mailbox as the control."""

    def __init__(self, by_user: dict[str, str]) -> None:
        super().__init__()
        self.faults = {user.encode(): _spec(name).implementation() for user, name in by_user.items()}
        self.plain = Fault()
        self.conn_users: dict[int, bytes] = {}

    def _fault(self, conn) -> Fault:
        user = getattr(conn, "user", None) or conn.state.get("by_user")
        if user is not None:
            self.conn_users[conn.id] = user
        return self.faults.get(user, self.plain) if user is not None else self.plain

    def pop3_command(self, conn, cmd):
        if cmd.verb == "USER" and cmd.args:
            conn.state["by_user"] = cmd.args[0].encode()
        return self._fault(conn).pop3_command(conn, cmd)

    def pop3_response(self, conn, cmd, status, body):
        return self._fault(conn).pop3_response(conn, cmd, status, body)

    def pop3_client_dropped(self, conn):
        return self._fault(conn).pop3_client_dropped(conn)

    def imap_command(self, conn, cmd):
        return self._fault(conn).imap_command(conn, cmd)

    def imap_client_line(self, conn, cmd, line, first):
        return self._fault(conn).imap_client_line(conn, cmd, line, first)

    def imap_response(self, conn, cmd, resp):
        return self._fault(conn).imap_response(conn, cmd, resp)

    def fired_by_user(self, fired: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for line in fired:
            m = re.match(r"conn (\d+): (.*)", line)
            user = self.conn_users.get(int(m[1])) if m else None
            if user is not None:
                out.setdefault(user.decode(), []).append(m[2])
        return out


# ---------------------------------------------------------------------------------------------------
# Connections


class _Conn:
    """One client connection and its upstream connection; two pumps, one per direction."""

    def __init__(self, proxy: FaultProxy, conn_id: int, client: socket.socket, server: socket.socket):
        self.proxy, self.id = proxy, conn_id
        self.fault = proxy.fault
        self.client, self.server = client, server
        self.creader, self.sreader = _Reader(client), _Reader(server)
        self.lock = threading.RLock()  # guards the state below and every write to the client
        self.state: dict = {}  # per-connection state of the fault
        self.client_gone = False
        self.server_gone = False

    # plumbing --------------------------------------------------------------------------------
    def fire(self, what: str) -> None:
        self.proxy._fired(f"conn {self.id}: {what}")

    def write_client(self, data: bytes) -> None:
        if not data:
            return
        with self.lock:
            if self.client_gone:
                return
            try:
                self.client.sendall(data)
            except OSError:
                self.client_gone = True

    def write_server(self, data: bytes) -> None:
        if not data or self.server_gone:
            return
        try:
            self.server.sendall(data)
        except OSError:
            self.server_gone = True

    def run(self) -> None:
        s2c = threading.Thread(target=self._guard, args=(self.server_loop, "server->client"), daemon=True,
                               name=f"faultproxy-{self.proxy.protocol}-{self.id}-s2c")
        s2c.start()
        self._guard(self.client_loop, "client->server")
        # the client has gone (or was cut off because the server went): let the server side finish
        with self.proxy._cond:
            self.proxy._draining.add(self.id)
        self.client_dropped()
        s2c.join(DRAIN_WAIT + 3)
        self.abort()

    def _guard(self, loop: Callable[[], None], where: str) -> None:
        try:
            loop()
        except (EOFError, OSError):
            pass
        except Exception:  # noqa: BLE001 - a bug in the proxy or a fault: record it, cut the connection
            self.proxy.errors.append(f"conn {self.id} {where}:\n{traceback.format_exc()}")
            self.abort()

    def client_dropped(self) -> None:
        """The client closed (or reset) its side: close the upstream side so the server sees a drop."""
        _shutdown(self.server, socket.SHUT_WR)

    def server_closed(self) -> None:
        """The server closed: pass that on, and stop reading the client."""
        self.server_gone = True
        _shutdown(self.client, socket.SHUT_RDWR)

    def abort(self) -> None:
        for s in (self.client, self.server):
            _shutdown(s, socket.SHUT_RDWR)

    def close(self) -> None:
        for s in (self.client, self.server):
            with contextlib.suppress(OSError):
                s.close()


def _shutdown(sock: socket.socket, how: int) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(how)


class Pop3Conn(_Conn):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.pending: deque[Pop3Command] = deque()  # sent (or answered locally), response not yet passed on
        self.sasl_line_due = False  # the server asked "+ " during AUTH: the client's next line is SASL data
        self.authenticated = False
        self.quit_sent = False

    def client_loop(self) -> None:
        while True:
            line = self.creader.readline()
            with self.lock:
                sasl, self.sasl_line_due = self.sasl_line_due, False
            if sasl:
                self.write_server(self.fault.sasl_line(self, line))
                continue
            words = line.decode("latin-1").split()
            cmd = Pop3Command(words[0].upper() if words else "", words[1:], line)
            out = self.fault.pop3_command(self, cmd)
            if isinstance(out, Local):
                cmd.local = out.text
                with self.lock:  # answered in turn: after the answers still due from the server
                    if self.pending:
                        self.pending.append(cmd)
                    else:
                        self.write_client(out.text)
                continue
            hidden: list[bytes] = []
            if isinstance(out, Prefixed):
                hidden, out = out.hidden, out.raw
            with self.lock:
                for extra in hidden:
                    words = extra.decode("latin-1").split()
                    self.pending.append(Pop3Command(words[0].upper(), words[1:], extra, hidden=True))
                self.pending.append(cmd)
                if cmd.verb == "QUIT":
                    self.quit_sent = True
            self.write_server(b"".join(hidden) + out)

    def ask(self, line: bytes, timeout: float = 10.0) -> tuple[bytes, list[bytes] | None]:
        """Send a hidden command now, from the client loop, and wait for its answer (status, body lines):
        for a fault or variant that must know something (say, the message count) before it rewrites a command."""
        words = line.decode("latin-1").split()
        cmd = Pop3Command(words[0].upper(), words[1:], line, hidden=True, answered=threading.Event())
        with self.lock:
            self.pending.append(cmd)
        self.write_server(line)
        if not cmd.answered.wait(timeout) or cmd.answer is None:
            raise EOFError(f"no answer to the proxy's own {_chomp(line)!r}")
        return cmd.answer

    def client_dropped(self) -> None:
        with self.lock:
            quit_line = None if self.quit_sent or self.server_gone else self.fault.pop3_client_dropped(self)
            if quit_line:
                self.pending.append(Pop3Command("QUIT", [], quit_line))
                self.quit_sent = True
        if quit_line:
            self.write_server(quit_line)  # the server answers and closes; no half-close before that
        else:
            _shutdown(self.server, socket.SHUT_WR)

    def server_loop(self) -> None:
        try:
            self.write_client(self.fault.pop3_response(self, None, self.sreader.readline(), None)[0])  # greeting
            while True:
                self._one_response()
        finally:
            self.server_closed()

    def _one_response(self) -> None:
        line = self.sreader.readline()
        with self.lock:
            cmd = self.pending[0] if self.pending else None
        if cmd is not None and cmd.verb == "AUTH" and (line.startswith(b"+ ") or _chomp(line) == b"+"):
            with self.lock:
                self.sasl_line_due = True
                self.write_client(self.fault.pop3_challenge(self, line))
            return
        body: list[bytes] | None = None
        end = b""
        if cmd is not None and cmd.multiline and line.startswith(b"+OK") and _eol(line):
            body = []
            try:
                while True:
                    part = self.sreader.readline()
                    if _chomp(part) == b"." and _eol(part):
                        end = part
                        break
                    body.append(part)
            except EOFError:
                pass  # cut short: pass on what came, then the close
        if cmd is not None and cmd.hidden:
            with self.lock:
                self.pending.popleft()
            if cmd.answered is not None:
                cmd.answer = (line, body)
                cmd.answered.set()
            return
        status, body = self.fault.pop3_response(self, cmd, line, body)
        with self.lock:
            if cmd is not None:
                self.pending.popleft()
                if cmd.verb in ("PASS", "APOP", "AUTH") and line.startswith(b"+OK") and (cmd.args or cmd.verb != "AUTH"):
                    self.authenticated = True
            self.write_client(status + b"".join(body or ()) + end)
            while self.pending and self.pending[0].local is not None:
                self.write_client(self.pending.popleft().local)
        if body is not None and not end:
            raise EOFError


class ImapConn(_Conn):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.pending: dict[bytes, ImapCommand] = {}  # tag -> command sent, not completed
        self.idle_tag: bytes | None = None  # IDLE in progress and DONE not yet sent
        self.sasl_tag: bytes | None = None
        self.sasl_line_due = False
        self.literal_cv = threading.Condition(self.lock)
        self.literal_tag: bytes | None = None  # a synchronizing literal of this command waits for "+"
        self.literal_go: bool | None = None
        self.user: bytes | None = None
        self.hidden_count = 0

    def pending_names(self) -> list[str]:
        with self.lock:
            return [c.name for c in self.pending.values() if not c.hidden]

    def client_loop(self) -> None:
        while True:
            line = self.creader.readline()
            with self.lock:
                sasl, self.sasl_line_due = self.sasl_line_due, False
                done = self.idle_tag is not None
                self.idle_tag = None
            if sasl:
                self._note_sasl_user(line)
                self.write_server(self.fault.sasl_line(self, line))
                continue
            if done:  # the DONE that ends IDLE
                self.write_server(line)
                continue
            cmd = _parse_command(line)
            local = self.fault.imap_command(self, cmd) if cmd.tag else None
            if isinstance(local, Prefixed):
                self._send_hidden(local.hidden)
                local = None
            if local is not None:
                self._answer_locally(cmd, line, local.text)
                continue
            if cmd.name == "AUTHENTICATE":
                words = cmd.args.split()
                if len(words) == 2:
                    self._note_sasl_user(words[1])
            with self.lock:
                if cmd.tag:
                    self.pending[cmd.tag] = cmd
                if cmd.name == "IDLE":
                    self.idle_tag = cmd.tag
                elif cmd.name == "AUTHENTICATE":
                    self.sasl_tag = cmd.tag
            self._forward(cmd, line)
            if cmd.name == "LOGIN":
                self.user = cmd.arguments(1)[0] if cmd.arguments(1) else None

    def _forward(self, cmd: ImapCommand, line: bytes) -> None:
        first = True
        while True:
            line = self.fault.imap_client_line(self, cmd, line, first)
            first = False
            self._keep(cmd, line)
            m = LITERAL_AT_END.search(line)
            sync = bool(m) and not m[2]
            if sync:
                with self.lock:
                    self.literal_tag, self.literal_go = cmd.tag, None
            self.write_server(line)
            if not m:
                return
            if sync:
                with self.literal_cv:
                    while self.literal_go is None and not self.server_gone:
                        self.literal_cv.wait(1)
                    go, self.literal_tag, self.literal_go = bool(self.literal_go), None, None
                if not go:  # the server answered the command instead: the client sends no literal
                    return
            data = self.creader.read_exact(int(m[1]))
            self._keep(cmd, data)
            self.write_server(data)
            line = self.creader.readline()

    def _send_hidden(self, commands: list[bytes], timeout: float = 5.0) -> None:
        """Send the proxy's own commands and wait for their completion: a server may hold untagged
        responses back while a pipelined client command is in progress (RFC 3501 §7.4.1)."""
        tags = []
        for text in commands:
            with self.lock:
                self.hidden_count += 1
                tag = b"fp%d" % self.hidden_count
                self.pending[tag] = ImapCommand(tag, text.split()[0].upper().decode("latin-1"), text, hidden=True)
            tags.append(tag)
            self.write_server(b"%s %s\r\n" % (tag, text))
        deadline = time.monotonic() + timeout
        with self.literal_cv:
            while any(t in self.pending for t in tags) and not self.server_gone and time.monotonic() < deadline:
                self.literal_cv.wait(0.5)

    @staticmethod
    def _keep(cmd: ImapCommand, data: bytes) -> None:
        cmd.wire += data[: max(0, WIRE_KEPT - len(cmd.wire))]  # a cut-off literal parses as unknown

    def _answer_locally(self, cmd: ImapCommand, line: bytes, text: bytes) -> None:
        while True:
            m = LITERAL_AT_END.search(line)
            if not m:
                break
            if not m[2]:
                self.write_client(b"+ OK\r\n")
            self.creader.read_exact(int(m[1]))
            line = self.creader.readline()
        self.write_client(b"%s %s\r\n" % (cmd.tag, text))

    def _note_sasl_user(self, line: bytes) -> None:
        with contextlib.suppress(ValueError, TypeError):
            parts = base64.b64decode(_chomp(line), validate=True).split(b"\0")
            if len(parts) == 3:
                self.user = parts[1]

    def server_loop(self) -> None:
        try:
            while True:
                segs = [self.sreader.readline()]
                complete = True
                while complete and (m := LITERAL_AT_END.search(segs[-1])):
                    data = self.sreader.read_exact(int(m[1]))
                    segs.append(data)
                    try:
                        segs.append(self.sreader.readline())
                    except EOFError:
                        segs.append(b"")
                        complete = False
                    complete = complete and len(data) == int(m[1])
                self._one_response(ImapResponse(segs))
                if not complete:
                    return
        finally:
            with self.literal_cv:
                self.server_gone = True
                if self.literal_tag is not None and self.literal_go is None:
                    self.literal_go = False
                self.literal_cv.notify_all()
            self.server_closed()

    def _one_response(self, resp: ImapResponse) -> None:
        kind = resp.kind
        cmd = None
        if kind == "tagged":
            with self.lock:
                cmd = self.pending.get(resp.tag)
        out = None if cmd is not None and cmd.hidden else self.fault.imap_response(self, cmd, resp)
        with self.lock:
            if kind == "+":
                if self.literal_tag is not None and self.literal_go is None:
                    self.literal_go = True
                    self.literal_cv.notify_all()
                elif self.sasl_tag is not None:
                    self.sasl_line_due = True
            elif kind == "tagged":
                if self.pending.pop(resp.tag, None) is not None and cmd is not None and cmd.hidden:
                    self.literal_cv.notify_all()  # _send_hidden waits for it
                if resp.tag == self.literal_tag and self.literal_go is None:
                    self.literal_go = False
                    self.literal_cv.notify_all()
                if resp.tag == self.idle_tag:
                    self.idle_tag = None
                if resp.tag == self.sasl_tag:
                    self.sasl_tag, self.sasl_line_due = None, False
            if out is not None:
                self.write_client(b"".join(out.segments))


def _parse_command(line: bytes) -> ImapCommand:
    words = _chomp(line).split(b" ", 3)
    tag = words[0] if words and words[0] else b""
    name = words[1].upper().decode("latin-1") if len(words) > 1 else ""
    if name == "UID" and len(words) > 2:
        name = "UID " + words[2].upper().decode("latin-1")
    return ImapCommand(tag, name, line)


# ---------------------------------------------------------------------------------------------------
# The proxy


class _StartedInWith:
    """start() on entering a with block, stop() on leaving it (the proxy and the STARTTLS front)."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class FaultProxy(_StartedInWith):
    """``FaultProxy(host, port, "pop3" | "imap", fault=None)``; ``.start()`` returns the local port."""

    def __init__(self, upstream_host: str, upstream_port: int, protocol: str, fault: str | None = None):
        if protocol not in ("pop3", "imap"):
            raise ValueError(f"protocol must be pop3 or imap, not {protocol!r}")
        if fault is not None and _spec(fault).protocol != protocol:
            raise ValueError(f"fault {fault} is for {_spec(fault).protocol}, this proxy speaks {protocol}")
        self.upstream = (upstream_host, upstream_port)
        self.protocol = protocol
        self.fault_name = fault
        self.fault: Fault = _spec(fault).implementation() if fault else Fault()
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.fired: list[str] = []  # what the fault did, in order
        self.errors: list[str] = []  # tracebacks from inside the proxy: a test should see none
        self.connections = 0  # accepted so far
        self._cond = threading.Condition()
        self._conns: dict[int, _Conn] = {}
        self._draining: set[int] = set()  # client gone, upstream not yet closed
        self._active = 0
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._ids = iter(range(1, 1 << 62))

    def __repr__(self) -> str:
        return (f"FaultProxy({self.protocol} 127.0.0.1:{self.port} -> {self.upstream[0]}:{self.upstream[1]}, "
                f"fault={self.fault_name})")

    # lifecycle ----------------------------------------------------------------------------------
    def start(self) -> int:
        if self._listener is not None:
            raise RuntimeError("already started")
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, 0))
        self._listener.listen(256)
        self.port = self._listener.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, daemon=True, name=f"faultproxy-{self.protocol}-accept")
        t.start()
        self._threads.append(t)
        return self.port

    def stop(self) -> None:
        self._stopping = True
        if self._listener is not None:
            _shutdown(self._listener, socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._cond:
            conns = list(self._conns.values())
        for conn in conns:
            conn.abort()
        for t in list(self._threads):
            t.join(5)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every connection so far has closed on both sides (e.g. after a drop)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._active == 0, timeout)

    # internals ----------------------------------------------------------------------------------
    def _fired(self, what: str) -> None:
        with self._cond:
            self.fired.append(what)

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._stopping:
                client.close()
                return
            with self._cond:
                self._active += 1
                self.connections += 1
            t = threading.Thread(target=self._serve, args=(client,), daemon=True,
                                 name=f"faultproxy-{self.protocol}-conn")
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def _serve(self, client: socket.socket) -> None:
        conn_id = next(self._ids)
        try:
            # a client that dropped a connection and reconnects must find the drop already done upstream
            with self._cond:
                self._cond.wait_for(lambda: not self._draining, DRAIN_WAIT)
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                return
            server.settimeout(None)
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = (Pop3Conn if self.protocol == "pop3" else ImapConn)(self, conn_id, client, server)
            with self._cond:
                self._conns[conn_id] = conn
            if self._stopping:
                conn.abort()
            try:
                conn.run()
            finally:
                conn.close()
        finally:
            with self._cond:
                self._conns.pop(conn_id, None)
                self._draining.discard(conn_id)
                self._active -= 1
                self._cond.notify_all()


def target_for(profile: str, request: pytest.FixtureRequest):
    """The test session's embedded target (fixtures in tests/conftest.py) whose settings `profile` describes."""
    return request.getfixturevalue("lock_target" if profile == "dovecot-lock" else "target")


@contextlib.contextmanager
def proxied_target(target, pop3_fault: str | None = None, imap_fault: str | None = None, *,
                   fault: str | None = None):
    """A copy of `target` whose POP3 and IMAP endpoints go through FaultProxy instances (LMTP/SMTP untouched).

    `fault` picks pop3_fault or imap_fault by the fault's protocol. The proxies are in `.proxies`
    ({"pop3": FaultProxy, "imap": FaultProxy}) of the Target yielded.
    """
    if fault is not None:
        if _spec(fault).protocol == "pop3":
            pop3_fault = fault
        else:
            imap_fault = fault
    with contextlib.ExitStack() as stack:
        changes, proxies = {}, {}
        for proto, name in (("pop3", pop3_fault), ("imap", imap_fault)):
            ep = getattr(target, proto)
            if ep is None:
                if name:
                    raise ValueError(f"fault {name} needs a {proto} endpoint, and the target has none")
                continue
            if ep.tls or ep.starttls:
                raise ValueError(f"{ep.url}: the fault proxy cannot read TLS; use a plain-text endpoint")
            proxy = stack.enter_context(FaultProxy(ep.host, ep.port, proto, name))
            changes[proto] = dataclasses.replace(ep, host=proxy.host, port=proxy.port)
            proxies[proto] = proxy
        faults = ", ".join(f for f in (pop3_fault, imap_fault) if f) or "transparent"
        proxied = dataclasses.replace(target, name=f"{target.name} via fault proxy ({faults})", **changes)
        proxied.proxies = proxies
        yield proxied


# ---------------------------------------------------------------------------------------------------
# STARTTLS in front of a cleartext server: the command-injection variant (CVE-2011-0411)
#
# The proxy above reads the protocol, so it cannot sit inside TLS. StartTlsFront answers STARTTLS/STLS itself,
# does the TLS handshake with the client (a throwaway CA's certificate), and relays everything after it to
# the server's cleartext port, so the TLS suites see a server that offers STARTTLS. What the client sent in
# cleartext after STARTTLS, in the same packet, is dropped (as a correct server drops it), or, with the
# variant, sent on to the server once TLS is up: the injected command runs and its answer comes back inside
# TLS, which is the bug the injection tests must catch.

TLS_VARIANTS: dict[str, str] = {
    "imap-starttls-executes-injected": "plaintext pipelined after STARTTLS in the same packet is executed inside TLS (CVE-2011-0411)",
    "pop3-stls-executes-injected": "plaintext pipelined after STLS in the same packet is executed inside TLS (CVE-2011-0411)",
}


class StartTlsFront(_StartedInWith):
    """``StartTlsFront(host, port, "imap" | "pop3", cert, key, variant=None)``; ``.start()`` returns the local port.

    One thread per connection, one select loop (an SSL socket must not be read and written from two threads)."""

    def __init__(self, upstream_host: str, upstream_port: int, protocol: str, cert, key, variant: str | None = None):
        if variant is not None and (variant not in TLS_VARIANTS or not variant.startswith(protocol + "-")):
            raise ValueError(f"unknown {protocol} STARTTLS variant {variant!r}; known: {', '.join(TLS_VARIANTS)}")
        import ssl

        self.ssl = ssl
        self.upstream = (upstream_host, upstream_port)
        self.protocol = protocol
        self.variant = variant
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.fired: list[str] = []
        self.errors: list[str] = []
        self.host, self.port = "127.0.0.1", None
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []

    def start(self) -> int:
        self._listener = socket.create_server((self.host, 0))
        self.port = self._listener.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, daemon=True, name="starttls-front-accept")
        t.start()
        self._threads.append(t)
        return self.port

    def stop(self) -> None:
        if self._listener is not None:
            _shutdown(self._listener, socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self._listener.close()
        for s in list(self._socks):
            _shutdown(s, socket.SHUT_RDWR)
        for t in list(self._threads):
            t.join(5)

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(client,), daemon=True, name="starttls-front-conn")
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        self._socks += [client, server]
        try:
            tls = self._cleartext_phase(client, server)
            if tls is not None:
                self._pump(tls, server)
        except (OSError, EOFError):
            pass
        except Exception:  # noqa: BLE001 - a bug in the front: record it, cut the connection
            self.errors.append(traceback.format_exc())
        finally:
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.close()

    def _is_starttls(self, line: bytes) -> bytes | None:
        """The answer to give, if `line` is the STARTTLS (IMAP) or STLS (POP3) command."""
        words = line.split()
        if self.protocol == "imap" and len(words) == 2 and words[1].upper() == b"STARTTLS":
            return words[0] + b" OK Begin TLS negotiation now.\r\n"
        if self.protocol == "pop3" and len(words) == 1 and words[0].upper() == b"STLS":
            return b"+OK Begin TLS negotiation now.\r\n"
        return None

    def _cleartext_phase(self, client: socket.socket, server: socket.socket):
        """Relay lines until the client's STARTTLS; then the handshake. The TLS socket, or None at the end."""
        import select

        pending = b""
        while True:
            ready, _, _ = select.select([client, server], [], [], 60)
            if not ready:
                return None
            if server in ready:
                data = server.recv(65536)
                if not data:
                    return None
                client.sendall(data)
            if client in ready:
                data = client.recv(65536)
                if not data:
                    return None
                pending += data
                while b"\n" in pending:
                    line, _, pending = pending.partition(b"\n")
                    answer = self._is_starttls(line + b"\n")
                    if answer is None:
                        server.sendall(line + b"\n")
                        continue
                    client.sendall(answer)
                    injected = pending  # cleartext the client sent after STARTTLS, before any answer
                    client.settimeout(10)
                    tls = self.context.wrap_socket(client, server_side=True)
                    tls.settimeout(None)
                    if injected and self.variant:
                        self.fired.append(f"executed {len(injected)} bytes pipelined after STARTTLS: {injected[:60]!r}")
                        server.sendall(injected)
                    return tls

    def _pump(self, tls, server: socket.socket) -> None:
        import select

        while True:
            ready = [tls] if tls.pending() else select.select([tls, server], [], [], 60)[0]
            if not ready:
                return
            for sock in ready:
                try:
                    data = sock.recv(65536)
                except self.ssl.SSLWantReadError:
                    continue
                if not data:
                    return
                (server if sock is tls else tls).sendall(data)
