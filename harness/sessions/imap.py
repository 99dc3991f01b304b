"""An IMAP session (RFC 3501 / RFC 9051) on a raw socket, so tests see exactly the bytes on the wire.

We frame responses ourselves (lines and literals, against a deadline); imapclient's parser only
takes FETCH data apart for `Untagged.fetch()`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from imapclient.exceptions import ProtocolError as ImapclientProtocolError
from imapclient.response_parser import parse_fetch_response

from harness.known_secrets import SECRETS
from harness.sessions.base import Session
from harness.sessions.errors import ConnectionClosed, ProtocolError, ResponseTooLarge, SessionError
from harness.sessions.literals import MARKER_ANYWHERE, MARKER_AT_END, frame, marker_at_end
from harness.sessions.redact import MASK
from harness.sessions.transcript import Transcript
from harness.sessions.wire import MAX_RESPONSE, BareLineFeed, LineTooLong, WireClosed, WireTimeout

CRLF = b"\r\n"
# One command's untagged responses, at most (or while waiting for unsolicited ones): far beyond what a test's
# mailbox of a few messages produces, and what keeps a server that never ends its answer from filling memory.
MAX_UNTAGGED = 100_000
_FETCH = re.compile(r"\* (\d+) FETCH ", re.IGNORECASE)
_LITERAL8 = re.compile(rb"~\{(\d+\+?)\}$")
_ATOM = re.compile(r"[!#$&'+-Z^-z|}~]+")  # ASTRING-CHARs without "]", "%", "*", "\"", "\\", "{", "(", ")"


@dataclass
class Untagged:
    text: str  # one line for matching; literal data left out, its "{N}" marker kept
    raw: bytes  # exactly as received, literal data included
    literals: list[bytes] = field(default_factory=list)
    arrived: float = 0.0  # time.monotonic() when the last byte arrived

    @property
    def inline_text(self) -> str:
        """`text` with each short one-line literal written as the quoted string it equals (RFC 3501 §4.3:
        both are forms of one string), so a pattern can match a mailbox name however it was sent.
        FETCH responses (message data) keep `text`."""
        if not self.literals or _FETCH.match(self.text):
            return self.text
        out = []
        pieces = frame(self.raw)[0]
        for i, piece in enumerate(pieces):
            data = self.raw[piece.start:piece.end]
            if piece.kind == "literal":
                if len(data) > 1024 or any(c in data for c in b"\r\n\0"):
                    return self.text
                out.append(b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"')
            elif i + 1 < len(pieces) and pieces[i + 1].kind == "literal":
                out.append(MARKER_AT_END.sub(b"", data))
            else:
                out.append(data)
        return b"".join(out).decode("utf-8", "backslashreplace")

    def fetch(self) -> dict | None:
        """For ``* n FETCH (...)``: the items keyed like imapclient does (b"SEQ", b"FLAGS", b"BODY[1]<0>", ...)."""
        m = _FETCH.match(self.text)
        if not m:
            return None
        # Rebuild what imaplib would hand imapclient: "n (...{N}" + literal tuples, then the rest of the line.
        data: list = []
        pieces = frame(self.raw)[0]
        for i, piece in enumerate(pieces):
            if piece.kind != "line":
                continue
            text = self.raw[piece.start:piece.end]
            if i == 0:
                text = m.group(1).encode() + b" " + text[m.end():]
            nxt = pieces[i + 1] if i + 1 < len(pieces) else None
            if nxt and nxt.kind == "literal":
                text = _LITERAL8.sub(rb"{\1}", text)  # BINARY's ~{N} (RFC 3516); imapclient knows only {N}
                data.append((text, self.raw[nxt.start:nxt.end]))
            else:
                data.append(text)
        try:
            return dict(parse_fetch_response(data, normalise_times=False, uid_is_key=False)[int(m.group(1))])
        except (ImapclientProtocolError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise ProtocolError(f"malformed FETCH response `{self.text[:200]}`: {exc}") from None


@dataclass
class IMAPResponse:
    tag: str
    status: str  # "OK", "NO" or "BAD"
    text: str  # after the status, response code included: "[APPENDUID 1 2] Append completed."
    code: str | None  # inside the brackets: "APPENDUID 1 2", "OVERQUOTA"
    line: str  # the tagged line without the tag: "OK [APPENDUID 1 2] Append completed."
    untagged: list[Untagged]  # everything untagged since the last hand-out, in order
    continued: int = 0  # "+" requests answered with a line of `continuations` (SASL)

    @property
    def ok(self) -> bool:
        return self.status == "OK"


@dataclass
class _Received:
    kind: str  # "untagged", "continuation" or "tagged"
    text: str
    raw: bytes
    literals: list[bytes]
    arrived: float

    def untagged(self) -> Untagged:
        return Untagged(self.text, self.raw, self.literals, self.arrived)


class IMAPSession(Session):
    scheme = "imap"
    literals = True
    line_end_rfc = "RFC 3501 §2.2, RFC 9051 §2.2"

    def __init__(self, host: str, port: int, *, tls: bool = False, starttls: bool = False, tls_verify: bool = True,
                 ca_file: str | None = None, name: str = "a", transcript: Transcript | None = None,
                 timeout: float = 5.0, strict_line_ends: bool = True, source: str | None = None,
                 client_cert: tuple[str, str | None] | None = None):
        super().__init__(host, port, tls=tls, starttls=starttls, tls_verify=tls_verify, ca_file=ca_file, name=name,
                         transcript=transcript, timeout=timeout, strict_line_ends=strict_line_ends, source=source,
                         client_cert=client_cert)
        self._tag_counter = 0
        self._pending: list[Untagged] = []
        self._idle: tuple[str, str] | None = None  # (tag, command line) while IDLE is active
        deadline, seconds = self._deadline(None)
        try:
            first = self._read_one(deadline)
        except (WireTimeout, WireClosed, LineTooLong, BareLineFeed) as exc:
            raise self._read_error(exc, None, seconds, None) from None
        self.greeting = first.text
        status = first.text.split(" ", 2)[1].upper() if first.kind == "untagged" and " " in first.text else ""
        if status == "BYE":
            raise self._fail(ProtocolError(f"{self.url} refused the session: {first.text}"))
        if status not in ("OK", "PREAUTH"):
            raise self._fail(ProtocolError(f"malformed greeting from {self.url}: {first.text!r}"))
        self.preauth = status == "PREAUTH"
        if starttls:
            resp = self.command("STARTTLS")
            if not resp.ok:
                raise self._fail(ProtocolError(f"{self.url} refused STARTTLS: {resp.line}"))
            self._tls_upgrade(self._deadline(None)[0])

    # -- commands --------------------------------------------------------------------------
    def command(self, line: str, *, timeout: float | None = None, literals: Sequence[bytes] = (),
                continuations: Sequence[str] = (), pipelined: bytes = b"") -> IMAPResponse:
        """Send ``<tag> <line>`` and read up to the tagged response.

        With `literals`, `line` holds one ``{N}`` marker (or ``{N+}``, ``~{N}``) per literal; we wait for the
        "+" continuation before each synchronizing one. If the server answers with a tagged response
        instead (e.g. NO [OVERQUOTA] to an APPEND), that is returned and the rest is not sent.
        `continuations`: lines to send, one per "+" request after the command (AUTHENTICATE).
        `pipelined`: bytes sent in the same write right after the command line, whose answers are not read
        (only without literals).
        """
        if "\r" in line or "\n" in line:
            raise ValueError("an IMAP command line cannot contain CR or LF; send data as literals")
        if self._idle:
            raise SessionError(f"cannot send `{self._describe(line)}` while IDLE is active; call idle_done() first")
        tag = self._next_tag()
        full = f"{tag} {line}"
        self._check_open(full)
        deadline, seconds = self._deadline(timeout)
        chunks = _split_at_literals(full, literals)
        if pipelined:
            if literals:
                raise ValueError("pipelined bytes go with a command without literals")
            chunks = [(chunks[0][0] + pipelined, False)]
        since = len(self._pending)
        for chunk, waits in chunks:
            self._send(chunk, deadline, full)
            if waits:
                tagged = self._collect(tag, deadline, full, seconds, since, lambda _: True)
                if tagged:
                    self._note("the server answered instead of inviting the literal; the rest was not sent")
                    return self._response(tagged)
        replies = list(continuations)

        def answer(cont: _Received) -> bool:
            if not replies:
                raise self._unexpected_continuation(cont, full)
            self._send(replies.pop(0).encode("utf-8", "surrogateescape") + CRLF, deadline, "(SASL response)")
            return False

        resp = self._response(self._collect(tag, deadline, full, seconds, since, answer))
        resp.continued = len(continuations) - len(replies)
        return resp

    def login(self, user: str, password: str, *, timeout: float | None = None) -> IMAPResponse:
        """LOGIN with user and password as atom, quoted string or literal as needed; ProtocolError unless OK.
        `timeout`: a server may delay logins after failed ones from this address."""
        self._add_secret(password)
        (u, ul), (p, pl) = astring(user), astring(password)
        resp = self.command(f"LOGIN {u} {p}", literals=[x for x in (ul, pl) if x is not None], timeout=timeout)
        if not resp.ok:
            raise ProtocolError(f"{self.url}: login as {user} failed: {self._describe(resp.line)}")
        return resp

    def capabilities(self) -> list[str]:
        """The CAPABILITY command's atoms, uppercase."""
        resp = self.command("CAPABILITY")
        if not resp.ok:
            raise ProtocolError(f"{self.url}: CAPABILITY failed: {resp.line}")
        for u in resp.untagged:
            words = u.text.split()
            if len(words) > 1 and words[1].upper() == "CAPABILITY":
                return [w.upper() for w in words[2:]]
        raise ProtocolError(f"{self.url}: CAPABILITY answered without an untagged CAPABILITY response")

    def logout(self) -> IMAPResponse:
        try:
            return self.command("LOGOUT")
        finally:
            self.drop()

    goodbye_command = "LOGOUT"

    def _goodbye(self, timeout: float) -> None:
        if self._idle:
            self.idle_done(timeout=timeout)
        self.command("LOGOUT", timeout=timeout)

    # -- IDLE and unsolicited responses --------------------------------------------------------
    def idle_start(self, timeout: float | None = None) -> None:
        """Send IDLE and wait for its "+" continuation. Untagged responses before it stay pending."""
        if self._idle:
            raise SessionError("IDLE is already active")
        tag = self._next_tag()
        full = f"{tag} IDLE"
        self._check_open(full)
        deadline, seconds = self._deadline(timeout)
        self._send(full.encode() + CRLF, deadline, full)
        tagged = self._collect(tag, deadline, full, seconds, len(self._pending), lambda _: True)
        if tagged:
            raise ProtocolError(f"{self.url} refused IDLE: {_parse_tagged(tagged)[1]}")
        self._idle = (tag, full)

    def idle_done(self, timeout: float | None = None) -> IMAPResponse:
        """Send DONE and read up to IDLE's tagged response."""
        if not self._idle:
            raise SessionError("idle_done() without idle_start()")
        tag, full = self._idle
        self._idle = None
        deadline, seconds = self._deadline(timeout)
        self._send(b"DONE" + CRLF, deadline, "DONE")

        def refuse(cont: _Received) -> bool:
            raise self._unexpected_continuation(cont, "DONE")

        return self._response(self._collect(tag, deadline, f"DONE (ending `{full}`)", seconds, len(self._pending),
                                            refuse))

    def read_untagged(self, until: Callable[[list[Untagged]], bool] | None, timeout: float) -> list[Untagged]:
        """Untagged responses the server sends on its own (e.g. during IDLE), pending ones first, until
        `until(received)` holds or `timeout` seconds pass. Not an error if nothing comes."""
        got = self.pending()
        size = sum(len(u.raw) for u in got)
        deadline = time.monotonic() + timeout
        while not (until and until(got)) and not self.closed:
            try:
                rec = self._read_one(deadline)
            except WireTimeout:
                break
            except WireClosed as exc:
                if any(_is_bye(u) for u in got):  # the server said goodbye first: that is the answer
                    self.drop()
                    break
                raise self._fail(ConnectionClosed(f"{self.url} closed the connection: {exc}")) from None
            except (LineTooLong, BareLineFeed) as exc:
                raise self._read_error(exc, "(waiting for untagged responses)", timeout, None) from None
            if rec.kind == "continuation":
                raise self._unexpected_continuation(rec, self._idle[1] if self._idle else "(no command)")
            if rec.kind == "tagged":
                raise self._fail(ProtocolError(f"unexpected tagged response from {self.url}: {rec.text!r}"))
            got.append(rec.untagged())
            size += len(rec.raw)
            if len(got) > MAX_UNTAGGED or size > MAX_RESPONSE:
                self._pending = got
                raise self._too_much("waiting for untagged responses", 0, size)
        return got

    def pending(self) -> list[Untagged]:
        """Untagged responses received but not handed out yet; hands them out."""
        out, self._pending = self._pending, []
        return out

    # -- reading ---------------------------------------------------------------------------------
    def _collect(self, tag: str, deadline: float, what: str, seconds: float, since: int,
                 on_continuation: Callable[[_Received], bool]) -> _Received | None:
        """Read responses, keeping untagged ones pending, up to our tagged response (returned) or
        until `on_continuation` returns True for a continuation request (None is returned)."""
        size = 0
        while True:
            try:
                rec = self._read_one(deadline)
            except (WireTimeout, WireClosed, LineTooLong, BareLineFeed) as exc:
                raise self._read_error(exc, what, seconds, self._progress(since)) from None
            if rec.kind == "untagged":
                self._pending.append(rec.untagged())
                size += len(rec.raw)
                if len(self._pending) - since > MAX_UNTAGGED or size > MAX_RESPONSE:
                    raise self._too_much(f"waiting for the answer to `{self._describe(what)}`", since, size)
            elif rec.kind == "continuation":
                if on_continuation(rec):
                    return None
            elif rec.text.split(" ", 1)[0] == tag:
                return rec
            else:
                raise self._fail(ProtocolError(
                    f"response with a foreign tag from {self.url} while waiting for `{self._describe(what)}`: "
                    f"{rec.text!r}"))

    def _read_one(self, deadline: float) -> _Received:
        """One complete response: its lines and literals. Nothing is taken from the buffer until it is all there,
        so a timeout leaves the stream intact."""
        wire, pos = self.wire, 0
        parts: list[bytes] = []
        literals: list[bytes] = []
        while True:
            eol = wire.find_eol(pos, deadline)
            line = wire.peek(pos, eol)
            if line.endswith(b"\r"):
                line = line[:-1]
            parts.append(line)
            pos = eol + 1
            marker = marker_at_end(line)
            if not marker:
                break
            if pos + marker.size > MAX_RESPONSE:
                raise self._fail(ResponseTooLarge(
                    f"{self.url} announced a literal of {marker.size} bytes; one response may have at most "
                    f"{MAX_RESPONSE >> 20} MiB"))
            wire.ensure_until(pos + marker.size, deadline)
            literals.append(wire.peek(pos, pos + marker.size))
            pos += marker.size
        raw = wire.take(pos)  # BareLineFeed when a line ended without CR (and the session is strict)
        arrived = time.monotonic()
        self._record(raw)
        if wire.last_bare_lf:
            self._note(f"{len(wire.last_bare_lf)} line(s) ended with a bare LF instead of CRLF")
        text = b"".join(parts).decode("utf-8", "backslashreplace")
        if parts[0].startswith(b"* "):
            kind = "untagged"
        elif parts[0] == b"+" or parts[0].startswith(b"+ "):
            kind = "continuation"
        elif re.match(rb"[^\s()*+{%\"\\]+ ", parts[0]):
            kind = "tagged"
        else:
            raise self._fail(ProtocolError(f"malformed response line from {self.url}: {text[:200]!r}"))
        return _Received(kind, text, raw, literals, arrived)

    def _response(self, rec: _Received) -> IMAPResponse:
        tag, line = _parse_tagged(rec)
        status, _, text = line.partition(" ")
        if status.upper() not in ("OK", "NO", "BAD"):
            raise self._fail(ProtocolError(f"malformed tagged response from {self.url}: {rec.text!r}"))
        code = text[1:text.index("]")] if text.startswith("[") and "]" in text else None
        return IMAPResponse(tag, status.upper(), text, code, line, self.pending())

    def _too_much(self, while_: str, since: int, size: int) -> SessionError:
        count, last = len(self._pending) - since, self._scrubbed(self._pending[-1].text[:120])
        self._pending = self._pending[:since]  # what the test would see is gone with the session
        return self._fail(ResponseTooLarge(
            f"{self.url} sent {count} untagged responses ({size >> 20} MiB, last `{last}`) while the harness was "
            f"{while_}; it keeps at most {MAX_UNTAGGED} or {MAX_RESPONSE >> 20} MiB"))

    def _scrubbed(self, text: str) -> str:
        """A server line for an error message: this session's and the target's passwords masked (a server may echo them)."""
        for secret in self._secrets:
            text = text.replace(secret, MASK.decode())
        return SECRETS.scrub(text)

    def _progress(self, since: int) -> str | None:
        got = []
        new = self._pending[since:]
        if new:
            got.append(f"{len(new)} untagged response{'s' if len(new) > 1 else ''}, last `{self._scrubbed(new[-1].text[:120])}`")
        if self.wire.unread:
            got.append(f"{self.wire.unread} bytes of an incomplete response")
        return "; ".join(got) or None

    def _unexpected_continuation(self, rec: _Received, what: str) -> SessionError:
        return self._fail(ProtocolError(
            f"unexpected continuation request `{rec.text[:200]}` from {self.url} in response to "
            f"`{self._describe(what)}`"))

    def _next_tag(self) -> str:
        self._tag_counter += 1
        return f"A{self._tag_counter:04d}"


def _parse_tagged(rec: _Received) -> tuple[str, str]:
    tag, _, line = rec.text.partition(" ")
    return tag, line


def _is_bye(u: Untagged) -> bool:
    return u.text[2:5].upper() == "BYE"


def _split_at_literals(line: str, literals: Sequence[bytes]) -> list[tuple[bytes, bool]]:
    """The command as chunks to send, each flagged if we must wait for "+" after it."""
    data = line.encode("utf-8", "surrogateescape")
    if not literals:
        return [(data + CRLF, False)]
    markers = list(MARKER_ANYWHERE.finditer(data))
    if len(markers) != len(literals):
        raise ValueError(f"the command has {len(markers)} literal marker(s) but {len(literals)} literal(s) were given")
    chunks: list[tuple[bytes, bool]] = []
    current, pos = b"", 0
    for n, (m, literal) in enumerate(zip(markers, literals, strict=True), 1):
        if int(m.group(1)) != len(literal):
            raise ValueError(f"literal {n}: the marker says {m.group(1).decode()} bytes but it has {len(literal)}")
        current += data[pos:m.end()] + CRLF
        if not m.group(2):  # synchronizing: wait for "+" before the data
            chunks.append((current, True))
            current = b""
        current += literal
        pos = m.end()
    chunks.append((current + data[pos:] + CRLF, False))
    return chunks


def astring(value: str) -> tuple[str, bytes | None]:
    """How to send `value` as an IMAP astring: (text for the command line, literal data or None)."""
    if _ATOM.fullmatch(value):
        return value, None
    if value.isascii() and value.isprintable():
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"', None
    data = value.encode("utf-8")
    return f"{{{len(data)}}}", data

