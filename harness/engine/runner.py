"""Runs one TestSpec: opens sessions as steps need them, sends, and checks what comes back."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from harness.engine import credentials
from harness.engine.foreign_mail import ForeignMail, MailGuard, is_ours
from harness.engine.login_delays import login_timeout, own_source_address, sends_credentials
from harness.engine.mailboxes import MailboxError, MailboxMap
from harness.engine.model import BodySpec, Step, TestSpec
from harness.engine.patterns import (
    Pattern,
    PatternError,
    PatternTimeout,
    fetch_item_name,
    function_tokens,
    match_deadline,
    split_literals,
    substitute,
)
from harness.engine.phases import PhaseClock
from harness.engine.pop3_view import Pop3View, ViewError, build_view, compare_message
from harness.sessions import IMAPSession, POP3Session, open_session
from harness.sessions.errors import ProtocolTimeout, ResponseTooLarge, SessionError
from harness.sessions.imap import astring
from harness.sessions.transcript import Transcript
from harness.targets.target_file import Account, Endpoint, Target

MAX_SHOWN = 15  # untagged responses or lines quoted in a failure
DROP_WAIT = 2.0  # seconds a `drop:` waits for the server to close its end (it has seen the drop then)


@dataclass
class StepFailure(Exception):
    """A check that did not hold, with everything a reader needs to see why."""

    test: TestSpec
    step: Step | None
    expected: str
    got: str
    # A session that broke (no answer, a malformed response) is a failure at any level: every command
    # gets a complete response (RFC 1939 §3, RFC 3501 §2.2.2), and the session's state is unknown after it.
    broken: bool = False
    # "pop3"/"imap": the step got no complete answer over that protocol: none in time, or one without end
    timed_out: str | None = None
    judged_at: str | None = None  # a level fixed by the check itself (an await's `eventually:`)

    @property
    def location(self) -> str:
        return f"{self.test.file}:{self.step.line if self.step else self.test.line}"

    @property
    def level(self) -> str:
        return "MUST" if self.broken else self.judged_at or self.test.level_of(self.step)

    def __str__(self) -> str:
        where = f"step {self.step.index} `{self.step.describe()}`" if self.step else "setup"
        text = f"{where} at {self.location}\n  expected: {_indent(self.expected)}\n  got:      {_indent(self.got)}"
        if self.step and self.step.why:
            text += f"\n  why:      {self.step.why}"
        return text


class SoftDeviation(StepFailure):
    """Raised after the steps when only SHOULD/MAY checks did not hold: for a profile that expects this
    deviation (strict xfail), or for --strict. The test's outcome stays `warning`/`behaviour`."""


class StepSkipped(Exception):
    """The server gave an answer the step's skip_if allows: the rest of the test cannot be checked."""


def session_endpoint(target: Target, spec) -> Endpoint | None:
    """The endpoint a session connects to: the target's own for its protocol, or, with `connect:`, its
    cleartext (never upgraded here: the test sends STARTTLS) or its implicit-TLS endpoint."""
    if spec.connect == "cleartext":
        return target.starttls_endpoint(spec.protocol)
    if spec.connect == "implicit-tls":
        return target.implicit_tls_endpoint(spec.protocol)
    return getattr(target, spec.protocol)


def _indent(text: str) -> str:
    return text.replace("\n", "\n            ")


def _shown(items: list[str]) -> str:
    if not items:
        return "(nothing)"
    more = f"\n... and {len(items) - MAX_SHOWN} more" if len(items) > MAX_SHOWN else ""
    return "\n".join(items[:MAX_SHOWN]) + more


def describe_bytes_difference(expected: bytes, got: bytes) -> str:
    if len(expected) != len(got):
        head = f"{len(got)} octets, expected {len(expected)}"
    else:
        head = f"{len(got)} octets, same length"
    for i, (a, b) in enumerate(zip(expected, got)):
        if a != b:
            return f"{head}; first difference at offset {i}: expected {expected[max(0, i - 20):i + 30]!r}, got {got[max(0, i - 20):i + 30]!r}"
    shorter = "got stops" if len(got) < len(expected) else "got continues"
    return f"{head}; identical up to offset {min(len(got), len(expected))}, then {shorter}: {(got or expected)[min(len(got), len(expected)):][:50]!r}"


class _Ended(Exception):
    """The server ended what the rest of the test would look at, in a way the RFC allows and that already
    answers the test's question (a STARTTLS with pipelined bytes refused, or a handshake those bytes broke)."""


class _Blocked(Exception):
    """A step needs a value that only a SHOULD/MAY check that did not hold would have captured."""


class TestRun:
    def __init__(self, spec: TestSpec, target: Target, accounts: list[Account], transcript: Transcript, timeout: float | None = None,
                 mailboxes: MailboxMap | None = None, advertises: Callable[[str, str], bool] | None = None,
                 clock: PhaseClock | None = None):
        self.spec = spec
        self.clock = clock or PhaseClock()  # connect and waits; the caller counts the rest of the call as steps
        self.advertises = advertises or (lambda proto, cap: False)  # (protocol, capability): does the server list it?
        self.unchecked: list[str] = []  # steps whose `when:` did not hold: only their status was checked
        self.mailboxes = mailboxes or MailboxMap()  # suite names -> the server's (namespace, special-use)
        self.target = target
        self.accounts = accounts
        self.transcript = transcript
        self.timeout = spec.timeout or timeout or 5.0  # the test's own default wins over the run's
        self.sessions: dict[str, IMAPSession | POP3Session | None] = {name: None for name in spec.sessions}
        self.buffers: dict[str, list] = {name: [] for name in spec.sessions}  # untagged not yet checked
        self.variables: dict[str, str] = {}
        self.account_variables: list[str] = []
        for i, account in enumerate(accounts, start=1):
            suffix = "" if i == 1 else str(i)
            self.variables[f"user{suffix}"] = account.user
            self.variables[f"password{suffix}"] = account.password
            self.account_variables += [f"user{suffix}", f"password{suffix}"]
            transcript.add_secret(account.password)
            for form in credentials.sasl_forms(account):  # ${sasl:...} sends these; a server may echo them
                transcript.add_secret(form)
        self.metrics: dict[str, float] = {}
        self._apop_greetings: dict[str, object] = {}  # APOP timestamp -> the session whose greeting had it
        # SHOULD and MAY checks that did not hold, in order. The test goes on after each (RFC 2119: a server
        # may have valid reasons), so the MUST checks after them are still made.
        self.deviations: list[StepFailure] = []
        self.not_run: str | None = None  # why the steps after a deviation could not run, if they could not
        self.ended: str | None = None  # why the test ended early, its question answered (_Ended)
        self.unusable: dict[str, str] = {}  # session -> why its later steps cannot run (a second TLS layer is due)
        self.owed: dict[str, Step] = {}  # session -> a late await whose responses are still due (`eventually:`)
        self._last_step_end = time.monotonic()
        # POP3: per connection, which number is which corpus message, and LIST's sizes (pop3_view.py)
        self.views: dict[str, Pop3View | None] = {name: None for name in spec.sessions}
        self.list_sizes: dict[str, dict[int, int]] = {name: {} for name in spec.sessions}
        self._view_users = {step.session for step in spec.steps
                            if step.session and spec.sessions[step.session].protocol == "pop3" and _pop3_tokens(step)}
        # On accounts that are not disposable, destructive commands first confirm they hit only the harness's mail.
        self.guard = None if target.disposable else MailGuard(
            lambda account: _set_up_client(target, account), lambda session: accounts[spec.sessions[session].account - 1],
            transcript.note)

    # -- whole test -----------------------------------------------------------------
    def run(self) -> None:
        try:
            for step in self.spec.steps:
                try:
                    self._run_step(step)
                except StepFailure as failure:
                    if failure.level == "MUST":
                        raise
                    failure.transcript_entries = len(self.transcript.entries)
                    self.deviations.append(failure)
                    self.transcript.note("*", f"step {step.index}: a {failure.level} check did not hold; the test goes on")
                except _Ended as ended:
                    self.ended = f"step {step.index}: {ended}; the test ends here"
                    self.transcript.note("*", self.ended)
                    break
                except _Blocked as blocked:
                    left = len(self.spec.steps) - step.index + 1
                    self.not_run = (f"steps {step.index}-{len(self.spec.steps)}" if left > 1 else f"step {step.index}") + \
                        f" did not run: {blocked}"
                    self.transcript.note("*", self.not_run)
                    break
                self._last_step_end = time.monotonic()
        except StepFailure as failure:
            failure.transcript_entries = len(self.transcript.entries)  # before the goodbyes: reports mark the exchange
            raise
        except ForeignMail:
            for session in self.sessions.values():
                if session is not None:
                    session.drop()  # no QUIT: POP3 commits none of the test's marks either
            raise
        finally:
            for session in self.sessions.values():
                if session is not None:
                    session.close()

    @property
    def soft_outcome(self) -> str | None:
        """`warning` if a SHOULD check did not hold, `behaviour` if only MAY checks did, None if all held."""
        levels = {d.level for d in self.deviations}
        return "warning" if "SHOULD" in levels else "behaviour" if levels else None

    def _run_step(self, step: Step) -> None:
        timeout = step.timeout or self.timeout
        missing = self._missing(step.when)
        if missing:
            step = _status_only(step)
            note = f"step {step.index}: the server lacks {missing}, so only the status of `{step.describe()}` was checked"
            self.unchecked.append(note)
            self.transcript.note(step.session or "harness", note)
        try:
            step = self.mailboxes.resolve_step(step)
        except MailboxError as exc:
            raise StepFailure(self.spec, step, "mailbox names the server's namespace can express", str(exc)) from None
        try:
            handler = getattr(self, f"_step_{step.kind}")
            with match_deadline(timeout):
                handler(step, timeout)
        except PatternTimeout as exc:
            raise StepFailure(self.spec, step, "patterns that match within the step's timeout", str(exc), broken=True) from None
        except SessionError as exc:
            failure = StepFailure(self.spec, step, "a complete, well-formed response", str(exc), broken=True)
            if isinstance(exc, (ProtocolTimeout, ResponseTooLarge)) and step.session in self.spec.sessions:
                failure.timed_out = self.spec.sessions[step.session].protocol
            raise failure from None
        except PatternError as exc:
            if self.deviations:  # the value would have come from a check that did not hold: no new failure
                earlier = self.deviations[-1]
                raise _Blocked(f"{exc}; step {earlier.step.index} would have captured it, but its "
                               f"{earlier.level} check did not hold") from None
            raise StepFailure(self.spec, step, "a step whose variables are all set", str(exc), broken=True) from None
        except credentials.CredentialError as exc:  # e.g. ${apop:...} and a greeting without a timestamp
            raise StepFailure(self.spec, step, "what the step's credential tokens need", str(exc), broken=True) from None

    def _missing(self, when: dict) -> str:
        """What of a step's `when:` the server lacks ("" if nothing)."""
        out = []
        for proto in ("imap", "pop3"):
            out += [f"{proto.upper()} {c}" for c in when.get(proto, []) if not self.advertises(proto, c)]
        out += [f"a folder marked {a}" for a in when.get("special-use", []) if a not in self.mailboxes.special or a in self.mailboxes.stand_ins]
        if when.get("delivery") and self.target.delivery is None:
            out.append("an lmtp or smtp endpoint")
        return ", ".join(out)

    # -- sessions -------------------------------------------------------------------
    def _session(self, name: str, timeout: float):
        if name in self.unusable:
            raise _Blocked(self.unusable[name])
        session = self.sessions[name]
        if session is not None and not session.closed:
            return session
        spec = self.spec.sessions[name]
        endpoint = session_endpoint(self.target, spec)
        if endpoint is None:
            raise SessionError(f"the target has no {spec.connect + ' ' if spec.connect else ''}{spec.protocol} endpoint")
        # a session that logs in by itself is the one that may fail a login: its own address keeps the
        # server's failed-login penalty away from everyone else's logins (login_delays.py). A cleartext
        # session needs one too: a server may count a connection from its own address as secure (Dovecot).
        source = None if spec.login and spec.connect != "cleartext" else own_source_address(endpoint.host)
        with self.clock.phase("connect"):
            session = self._open(name, spec, endpoint, source, timeout)
        if name in self._view_users and spec.login:  # at once, before a step marks or another session removes anything
            self._view(name, session, timeout)
        return session

    def _open(self, name: str, spec, endpoint, source: str | None, timeout: float):
        session = open_session(spec.protocol, endpoint, name=name, transcript=self.transcript, timeout=timeout,
                               ca_file=self.target.ca_file, source=source)
        self.sessions[name] = session
        if self.guard:
            self.guard.opened(name, logged_in=False)
        self.buffers[name] = []
        self.views[name] = None  # message numbers belong to one connection
        self.list_sizes[name] = {}
        if spec.login:
            account = self.accounts[spec.account - 1]
            session.login(account.user, account.password, timeout=login_timeout(timeout))
            if self.guard:
                self.guard.opened(name, logged_in=True)
        return session

    def _view(self, name: str, session: POP3Session, timeout: float) -> Pop3View:
        if self.views[name] is None:
            try:
                self.views[name] = build_view(session.command, lambda text: self.transcript.note(name, text),
                                              timeout, self.list_sizes[name])
            except ViewError as exc:
                raise SessionError(str(exc)) from None
        return self.views[name]

    def _known_pop3(self, name: str, number: int) -> bool | None:
        """Whether this session's view (if it has one) already says message `number` is the harness's."""
        view = self.views[name]
        if view is None or number not in view.headers:
            return None
        return is_ours(view.headers[number])

    def _pop3_variables(self, step: Step, session: POP3Session, timeout: float) -> dict[str, str]:
        """The test's variables plus this session's ${msg:NAME} and ${size:NAME} values."""
        tokens = _pop3_tokens(step)
        if not tokens:
            return self.variables
        return {**self.variables, **self._view(step.session, session, timeout).bindings(tokens)}

    def _imap_variables(self) -> dict[str, str]:
        """Account names and passwords as IMAP astrings: a password with a space or quote must still log in."""
        out = dict(self.variables)
        for name in self.account_variables:
            text, literal = astring(out[name])
            out[name] = text if literal is None else "${literal:%s}" % out[name]
        return out

    # -- step kinds -----------------------------------------------------------------
    def _step_command(self, step: Step, timeout: float) -> None:
        if sends_credentials(step.command, self.spec.sessions[step.session].protocol):
            timeout = login_timeout(timeout)  # a failed login is answered late, and so may the next one be
        session = self._session(step.session, timeout)
        if isinstance(session, POP3Session):
            variables = self._pop3_variables(step, session, timeout)
        else:
            variables = self._imap_variables()
        line = substitute(self._credentials(step, step.command, session), variables)
        verb = line.split()[0].upper() if line.split() else ""
        # SASL lines are sent as they are: no astring quoting of $user/$password there
        replies = [substitute(self._credentials(step, text, session), self.variables) for text in step.continuations]
        pipelined = b"".join(substitute(text, variables).encode("utf-8", "surrogateescape") + b"\r\n" for text in step.pipeline)
        if isinstance(session, POP3Session):
            if self.guard:
                self.guard.pop3(step.session, session, line, timeout, lambda number: self._known_pop3(step.session, number),
                                self.advertises("pop3", "TOP"))
            response = session.command(line, timeout=timeout, continuations=replies, pipelined=pipelined)
            self._second_tls(step, session, verb, response.ok)
            if self.guard:
                self.guard.answered(step.session, line, response.ok)
            self._check_continued(step, response.continued, response.line)
            self._check_status(step, response.line, "+OK", variables)
            self._learn_list_sizes(step.session, line, response)
            self._check_retr_size(step, line, response)
            self._check_pop3_body(step, response, variables)
            if verb == "QUIT":
                session.drop()
            elif verb == "STLS":
                self._start_tls(step, session, response.ok, response.line, timeout)
        else:
            line, literals = split_literals(line)
            if pipelined and literals:  # e.g. a password that must go as a literal
                raise StepFailure(self.spec, step, "a command without literals (pipeline: sends it and the lines in one write)",
                                  f"`{self.transcript.redact(line)}` needs {len(literals)} literal(s)", broken=True)
            if self.guard:
                self.guard.imap(step.session, session, line, literals, timeout, self.buffers[step.session])
            response = session.command(line, timeout=timeout, literals=literals, continuations=replies, pipelined=pipelined)
            self._second_tls(step, session, verb, response.ok)
            if self.guard:
                self.guard.answered(step.session, line, response.ok)
            self._check_continued(step, response.continued, response.line)
            self._check_imap(step, response)
            if verb == "LOGOUT":
                session.drop()
            elif verb == "STARTTLS":
                self._start_tls(step, session, response.ok, response.line, timeout)

    def _second_tls(self, step: Step, session, verb: str, ok: bool) -> None:
        """A server that accepts STARTTLS/STLS inside TLS now waits for a handshake inside TLS: whatever the
        step's checks make of that answer, nothing more can run on this session."""
        if ok and verb in ("STARTTLS", "STLS") and session.tls_active:
            session.drop()
            self.unusable[step.session] = (f"session {step.session} accepted {verb} inside TLS (step {step.index}) and now "
                                           "waits for a TLS handshake inside TLS, so its later steps cannot run")

    def _start_tls(self, step: Step, session, ok: bool, line: str, timeout: float) -> None:
        """After STARTTLS/STLS (its answer checked by the step): on OK the handshake starts at once (RFC 2595
        §3.1, §4). A session already in TLS is not wrapped again: the step's checks have judged that answer.

        With `pipeline:` (cleartext sent after the command in the same write) a server may refuse the command,
        or take those bytes as the start of the TLS stream so that the handshake fails: either way nothing
        the client pipelined runs inside TLS, which is what such a test asks, and it ends there."""
        if session.tls_active or session.closed:  # closed: a second STARTTLS accepted (_second_tls)
            return
        if not ok:
            if step.pipeline:
                raise _Ended(f"the server refused `{step.command}` with cleartext pipelined after it ({line}): "
                             "no TLS session, so nothing pipelined ran inside one")
            return
        if session.wire.unread:
            data = session.wire.peek(0, session.wire.unread)
            session.drop()
            raise StepFailure(self.spec, step, "the TLS handshake right after the CRLF of the OK (RFC 3501 §6.2.1, RFC 2595 §4)",
                              f"{len(data)} more cleartext bytes first: {data[:200].decode('utf-8', 'backslashreplace')}")
        try:
            session.start_tls(timeout)
        except SessionError as exc:
            if not step.pipeline:
                raise
            raise _Ended(f"the TLS handshake failed ({exc}): the server took the pipelined cleartext as the start of "
                         "the TLS stream (RFC 3501 §6.2.1: negotiation begins right after the OK), so none of it ran "
                         "inside TLS") from None

    def _credentials(self, step: Step, text: str, session) -> str:
        greeting = getattr(session, "greeting", None)
        if credentials.TOKEN.search(text) and "${apop:" in text:
            # RFC 1939 §7: the timestamp MUST be different each time the server issues a greeting
            stamp = credentials.greeting_timestamp(greeting)
            earlier = self._apop_greetings.setdefault(stamp, session) if stamp else session
            if earlier is not session:
                raise StepFailure(self.spec, step, "an APOP timestamp not used in an earlier greeting (RFC 1939 §7)",
                                  f"the same timestamp {stamp} as an earlier session's greeting: {greeting}")
        return credentials.expand(text, self.accounts, greeting)

    def _check_continued(self, step: Step, continued: int, line: str) -> None:
        """Each `continue:` line answers one "+" request; a server that answers before asking for them all
        (a SASL exchange that ends early: LOGIN accepted without the password) fails the step."""
        if continued < len(step.continuations):
            raise StepFailure(
                self.spec, step, f"{len(step.continuations)} continuation request(s) (\"+\"), one per `continue:` line",
                f"{continued} before the answer: {line}")

    def _step_append(self, step: Step, timeout: float) -> None:
        session = self._session(step.session, timeout)
        data = step.message.data()
        flags = " ".join(step.message.flags)
        mailbox, literals = split_literals(_mailbox_argument(step.mailbox))
        date = f' "{step.date}"' if step.date else ""
        response = session.command(f"APPEND {mailbox} ({flags}){date} {{{len(data)}}}", timeout=timeout, literals=[*literals, data])
        self._check_imap(step, response)

    def _step_idle_start(self, step: Step, timeout: float) -> None:
        self._session(step.session, timeout).idle_start(timeout=timeout)

    def _step_idle_done(self, step: Step, timeout: float) -> None:
        session = self._session(step.session, timeout)
        self._check_imap(step, session.idle_done(timeout=timeout))

    def _step_await(self, step: Step, timeout: float) -> None:
        """Wait for untagged responses the server sends on its own (IDLE, or after NOOP)."""
        session = self._session(step.session, timeout)
        buffer = self.buffers[step.session]
        buffer.extend(session.pending())
        started = self._last_step_end

        def satisfied(received) -> bool:
            return self._match_all(step.untagged, buffer + list(received), dict(self.variables)) is not None

        if not satisfied([]):
            with self.clock.phase("waits"):
                buffer.extend(session.read_untagged(until=satisfied, timeout=timeout))
        matched = self._match_all(step.untagged, buffer, dict(self.variables))
        if matched is None:
            missing = [str(p) for p in step.untagged]
            if step.eventually:  # late is a SHOULD; never is judged at the session's next command
                self.owed[step.session] = step
            raise StepFailure(
                self.spec, step,
                f"within {timeout:g} s, untagged responses matching: {', '.join(missing)}",
                "untagged responses:\n" + _shown([u.text for u in buffer]),
            )
        captures, used = matched
        self.variables.update(captures)
        latest = max(buffer[i].arrived for i in used)
        self.metrics[step.metric or f"step{step.index}_latency_s"] = round(max(0.0, latest - started), 4)
        for i in sorted(used, reverse=True):
            del buffer[i]
        self._check_absent(step, [u.inline_text for u in buffer])

    def _step_quiet(self, step: Step, timeout: float) -> None:
        """Nothing may arrive unasked: after STARTTLS, bytes here are the answer to a command the server should
        have discarded (plaintext pipelined after STARTTLS, executed inside TLS: CVE-2011-0411)."""
        session = self._session(step.session, timeout)
        data = session.unsolicited(step.seconds)
        if data:
            raise StepFailure(self.spec, step, f"nothing from the server for {step.seconds:g} s (it was asked nothing)",
                              f"{len(data)} bytes: {data[:300].decode('utf-8', 'backslashreplace')}")

    def _step_drop(self, step: Step, timeout: float) -> None:
        session = self.sessions.get(step.session)
        self.transcript.note(step.session, "connection dropped without QUIT/LOGOUT")
        if session is not None:  # the next step sees what the server made of the drop, not a race with it
            with self.clock.phase("waits"):
                session.hang_up(min(timeout, DROP_WAIT))

    def _step_sleep(self, step: Step, timeout: float) -> None:
        with self.clock.phase("waits"):
            time.sleep(step.seconds)

    def _step_deliver(self, step: Step, timeout: float) -> None:
        from harness.sessions.lmtp import deliver
        from harness.sessions.lmtp import recipient as recipient_of

        endpoint = self.target.delivery
        if endpoint is None:
            raise SessionError("the target has no lmtp or smtp endpoint for delivery")
        recipient = recipient_of(self.accounts[step.to - 1].user)
        self.transcript.note("lmtp", f"deliver {step.message.name} to {recipient}")
        deliver(endpoint, recipient, step.message.data(), timeout=timeout, ca_file=self.target.ca_file)

    # -- checks ---------------------------------------------------------------------
    def _check_status(self, step: Step, line: str, default: str, variables: dict | None = None) -> None:
        for pattern in step.skip_if:  # a legal refusal that leaves nothing to check: never a pass, never a failure
            if pattern.match(line, self.variables if variables is None else variables, allow_tail=True) is not None:
                raise StepSkipped(f"step {step.index} `{step.describe()}` at {self.spec.file}:{step.line} was answered "
                                  f"`{self.transcript.redact(line)}`, which the RFC allows (skip_if: {pattern}); "
                                  "what the rest of the test checks cannot be seen on this server")
        patterns = step.expect or [Pattern(default)]
        for pattern in patterns:
            captures = pattern.match(line, self.variables if variables is None else variables, allow_tail=True)
            if captures is not None:
                self.variables.update(captures)
                return
        raise StepFailure(self.spec, step, " or ".join(f"`{p}`" for p in patterns), line or "(empty line)")

    def _learn_list_sizes(self, session: str, line: str, response) -> None:
        """Remember what LIST said, so a RETR in the same connection can be held to it."""
        words = line.split()
        if not response.ok or not words or words[0].upper() != "LIST":
            return
        pairs = [response.text.split()[:2]] if len(words) > 1 else [x.decode("latin-1").split()[:2] for x in response.lines or []]
        for pair in pairs:
            if len(pair) == 2 and pair[0].isdigit() and pair[1].isdigit():
                self.list_sizes[session][int(pair[0])] = int(pair[1])  # the latest LIST is the one RETR answers to

    def _check_retr_size(self, step: Step, line: str, response) -> None:
        """RFC 1939 §5: LIST gives the exact size; within a session RETR sends that many octets (unstuffed, CRLF)."""
        words = line.split()
        if not response.ok or response.body is None or len(words) != 2 or words[0].upper() != "RETR" or not words[1].isdigit():
            return
        listed = self.list_sizes[step.session].get(int(words[1]))
        if listed is not None and listed != len(response.body):
            raise StepFailure(self.spec, step, f"{listed} octets, the size this session's last LIST gave for message {words[1]}",
                              f"{len(response.body)} octets (RFC 1939 §5: LIST's size is the message's exact size)")

    def _check_pop3_body(self, step: Step, response, variables: dict | None = None) -> None:
        """Checks of a multi-line answer; a -ERR the step allows has no body to check."""
        variables = self.variables if variables is None else variables
        wants_body = step.count is not None or step.lines or step.absent_lines or step.all_lines or step.body
        if not wants_body or not response.ok:
            return
        if response.lines is None:
            raise StepFailure(self.spec, step, "a multi-line response", f"single line: {response.line}")
        texts = [line.decode("utf-8", "replace") for line in response.lines]
        if step.count is not None and len(texts) != step.count:
            raise StepFailure(self.spec, step, f"{step.count} line(s)", f"{len(texts)} line(s):\n" + _shown(texts))
        self._match_lines(step, step.lines, texts, "a line matching", variables)
        variables = {**variables, **self.variables}  # with what the lines just captured
        for pattern in step.absent_lines:
            hits = [t for t in texts if pattern.match(t, variables) is not None]
            if hits:
                raise StepFailure(self.spec, step, f"no line matching `{pattern}`", _shown(hits))
        if step.all_lines:
            for text in texts:
                if not any(p.match(text, variables) is not None for p in step.all_lines):
                    raise StepFailure(self.spec, step, "every line matching " + " or ".join(f"`{p}`" for p in step.all_lines), text)
        if step.body is not None:  # (a line ended by a bare LF has already failed the step: sessions are strict)
            self._compare_content(step, step.body, response.body)  # POP3: fields the server adds are allowed

    def _match_lines(self, step: Step, patterns: list[Pattern], texts: list[str], what: str, variables: dict) -> None:
        for pattern in patterns:
            for text in texts:
                captures = pattern.match(text, {**variables, **self.variables})
                if captures is not None:
                    self.variables.update(captures)
                    break
            else:
                raise StepFailure(self.spec, step, f"{what} `{pattern}`", "lines:\n" + _shown(texts))

    def _compare_content(self, step: Step, spec: BodySpec, got: bytes) -> None:
        """Whether `got` is the message of `spec`: the body and the original header fields byte for byte and in
        order; fields the server adds (POP3 always, IMAP with `added_fields: allowed`) are allowed and noted."""
        expected = spec.expected()
        problem, added = compare_message(expected, got)
        if problem:
            raise StepFailure(self.spec, step, f"the body and the header fields of {spec.describe()} ({len(expected)} octets)",
                              f"{len(got)} octets; {problem}")
        if added:
            names = ", ".join(dict.fromkeys(f.split(b":", 1)[0].decode("latin-1") for f in added))
            self.transcript.note(step.session, f"the server added header fields: {names}")

    def _compare(self, step: Step, spec: BodySpec, got: bytes | None) -> None:
        if spec.added_fields and got is not None:
            return self._compare_content(step, spec, got)
        expected = spec.expected()
        if got != expected:
            detail = "nothing" if got is None else describe_bytes_difference(expected, got)
            raise StepFailure(self.spec, step, f"the bytes of {spec.describe()} ({len(expected)} octets)", detail)

    def _check_imap(self, step: Step, response) -> None:
        untagged = self.buffers[step.session] + list(response.untagged)
        self.buffers[step.session] = []
        untagged = self._settle_owed(step, untagged)
        self._check_status(step, response.line, "OK")
        texts = [u.inline_text for u in untagged]
        if not response.ok:  # a NO or BAD the step allows (expect: [OK, "NO"]): what OK would carry is not due
            self._check_absent(step, texts)
            return
        matched = self._match_all(step.untagged, untagged, dict(self.variables))
        if matched is None:
            missing = [str(p) for p in step.untagged if self._match_all([p], untagged, dict(self.variables)) is None]
            raise StepFailure(
                self.spec, step,
                "untagged responses matching: " + ", ".join(f"`{m}`" for m in (missing or map(str, step.untagged))),
                "untagged responses:\n" + _shown(texts),
            )
        captures, used = matched
        self.variables.update(captures)
        self._check_absent(step, texts)
        if step.only:
            allowed = step.untagged + step.may
            stray = [u.inline_text for i, u in enumerate(untagged) if i not in used and not any(p.match(u.inline_text, self.variables) is not None for p in allowed)]
            if stray:
                raise StepFailure(self.spec, step, "no untagged responses besides the listed ones", _shown(stray))
        if step.fetch:
            self._check_fetch(step, untagged)

    def _settle_owed(self, step: Step, untagged: list) -> list:
        """What an `eventually:` await did not get in time must have come by the end of the session's next
        command after IDLE (RFC 3501 §5.2: size updates MUST be sent while a command runs; IDLE's push at once
        is only a SHOULD, RFC 2177 §3)."""
        owed = self.owed.pop(step.session, None)
        if owed is None:
            return untagged
        matched = self._match_all(owed.untagged, untagged, dict(self.variables))
        if matched is None and step.kind == "idle_done":  # IDLE's end may still be before the server looks
            self.owed[step.session] = owed
            return untagged
        if matched is None:
            raise StepFailure(
                self.spec, step,
                f"by the end of this command, the untagged responses step {owed.index} waited for: "
                + ", ".join(f"`{p}`" for p in owed.untagged),
                "untagged responses:\n" + _shown([u.text for u in untagged]), judged_at=owed.eventually,
            )
        captures, used = matched
        self.variables.update(captures)
        self.transcript.note("*", f"step {owed.index}'s responses came late, by step {step.index}")
        return [u for i, u in enumerate(untagged) if i not in used]

    def _check_absent(self, step: Step, texts: list[str]) -> None:
        for pattern in step.absent:
            hits = [t for t in texts if pattern.match(t, self.variables) is not None]
            if hits:
                raise StepFailure(self.spec, step, f"no untagged response matching `{pattern}`", _shown(hits))

    def _match_all(self, patterns: list[Pattern], untagged: list, variables: dict) -> tuple[dict, set[int]] | None:
        """Each pattern matched by a distinct response, in any order; captures flow left to right."""
        used: set[int] = set()
        captures: dict[str, str] = {}
        for pattern in patterns:
            for i, response in enumerate(untagged):
                if i in used:
                    continue
                got = pattern.match(response.inline_text, {**variables, **captures})
                if got is not None:
                    captures.update(got)
                    used.add(i)
                    break
            else:
                return None
        return captures, used

    def _check_fetch(self, step: Step, untagged: list) -> None:
        fetches = [f for f in (u.fetch() for u in untagged) if f]
        for item, spec in step.fetch.items():
            values = [f[key] for f in fetches for key in f if _item_name(key) == item]
            if not values:
                seen = sorted({_item_name(k) for f in fetches for k in f})
                raise StepFailure(self.spec, step, f"a FETCH response with {item}", f"FETCH items: {', '.join(seen) or '(no FETCH response)'}")
            value = values[0]
            if isinstance(spec, BodySpec):
                got = value if isinstance(value, bytes) or value is None else str(value).encode()
                self._compare(step, spec, b"" if got is None else got)
            else:
                text = _fetch_value_text(value)
                captures = spec.match(text, self.variables)
                if captures is None:
                    raise StepFailure(self.spec, step, f"{item} matching `{spec}`", text)
                self.variables.update(captures)


def _set_up_client(target: Target, account: Account):
    from harness.engine.accounts import admin_client

    return admin_client(target, account)


def _pop3_tokens(step: Step) -> list[tuple[str, str]]:
    """The ${msg:...} and ${size:...} tokens of a POP3 step: those need the session's view."""
    sources = [step.command or ""] + [p.source for p in step.expect + step.lines + step.absent_lines + step.all_lines]
    return [t for source in sources for t in function_tokens(source) if t[0] in ("msg", "size")]


def _status_only(step: Step) -> Step:
    """The step with its checks reduced to the status word of each `expect` (OK [APPENDUID ...] -> OK)."""
    expect = [p if p.source.startswith("re:") else Pattern(p.source.split()[0]) for p in step.expect if p.source.split()]
    return replace(step, expect=expect, untagged=[] if step.kind != "await" else step.untagged, absent=[], may=[],
                   only=False, fetch={}, count=None, lines=[], absent_lines=[], all_lines=[], body=None)


def _item_name(key) -> str:
    return fetch_item_name(key.decode() if isinstance(key, bytes) else str(key))


def _fetch_value_text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (tuple, list)):
        return "(" + " ".join(_fetch_value_text(v) for v in value) + ")"
    return str(value)


def _mailbox_argument(name: str) -> str:
    """A mailbox name as an astring; a name captured from LIST may already be quoted."""
    if len(name) >= 2 and name.startswith('"') and name.endswith('"'):
        return name
    text, literal = astring(name)
    return text if literal is None else "${literal:%s}" % name
