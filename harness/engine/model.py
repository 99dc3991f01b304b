"""Suite files -> TestSpec objects, validated by schema and then by meaning.

The schema catches shape errors; this module catches what a schema cannot:
a step naming a session the test does not declare, an unknown corpus message,
a POP3 check on an IMAP session, a variable used before anything sets it.
Every error names the file and line.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness import corpus
from harness.engine import credentials, mailboxes
from harness.engine.patterns import Pattern, PatternError, _compile, fetch_item_name, function_tokens, variables_in
from harness.errors import ConfigError
from harness.yaml_source import line_of, load_schema, load_yaml, schema_problems

STEP_KEYWORDS = {
    "expect", "untagged", "absent", "may", "only", "count", "lines", "absent_lines",
    "all_lines", "body", "fetch", "timeout", "why", "metric", "to", "continue", "level", "when", "skip_if",
    "eventually", "pipeline",
}
# Requirement levels of RFC 2119: what a check that does not hold becomes (failed, warning, behaviour).
LEVELS = ("MUST", "SHOULD", "MAY")
# Response codes that belong to an extension: a suite may expect one only where the capability is declared,
# in the test's `requires` or the step's `when` (RFC 4315, RFC 9208, RFC 7162, RFC 2449 §8, RFC 3206)
CODE_CAPABILITY = {
    "imap": {"APPENDUID": "UIDPLUS", "COPYUID": "UIDPLUS", "UIDNOTSTICKY": "UIDPLUS", "OVERQUOTA": "QUOTA",
             "HIGHESTMODSEQ": "CONDSTORE", "NOMODSEQ": "CONDSTORE", "MODIFIED": "CONDSTORE"},
    "pop3": {"IN-USE": "RESP-CODES", "LOGIN-DELAY": "RESP-CODES", "SYS/TEMP": "RESP-CODES", "SYS/PERM": "RESP-CODES",
             "AUTH": "AUTH-RESP-CODE"},
}
_CODE = re.compile(r"\[([A-Za-z][A-Za-z0-9/-]*)")
SPECIAL_STEPS = ("drop", "sleep", "deliver")
IMAP_ONLY = {"untagged", "absent", "may", "only", "fetch"}
POP3_ONLY = {"count", "lines", "absent_lines", "all_lines"}
# Which checks each kind of step evaluates; any other key would be silently ignored, so it is an error.
ALLOWED_KEYWORDS = {
    "command": STEP_KEYWORDS - {"metric", "to", "eventually"},
    "append": {"expect", "untagged", "absent", "may", "only", "timeout", "why", "level", "when", "skip_if"},
    "idle_start": {"timeout", "why"},
    "idle_done": {"expect", "untagged", "absent", "may", "only", "timeout", "why", "level", "when"},
    "await": {"absent", "timeout", "why", "metric", "level", "eventually"},
    "quiet": {"why", "level"},
    "drop": {"why"},
    "sleep": {"why"},
    "deliver": {"to", "timeout", "why"},
}


def builtin_vars(accounts: int) -> set[str]:
    """$user/$password for account 1, $user2/$password2 ... for the others the test declares."""
    out = {"user", "password"}
    for i in range(2, accounts + 1):
        out |= {f"user{i}", f"password{i}"}
    return out


@dataclass
class SessionSpec:
    name: str
    protocol: str  # "imap" | "pop3"
    account: int = 1
    login: bool = True
    connect: str | None = None  # "cleartext" | "implicit-tls"; None: the endpoint the target's sessions use


@dataclass
class MessageRef:
    name: str
    flags: list[str] = field(default_factory=list)
    subject: str | None = None

    def data(self) -> bytes:
        return corpus.message(self.name, subject=self.subject)


@dataclass
class SetupEntry:
    account: int
    mailbox: str
    messages: list[MessageRef]


@dataclass
class BodySpec:
    """Expected bytes: a corpus message, optionally one IMAP section, a <o.l> range, or POP3 TOP lines."""

    message: MessageRef
    section: str = ""
    partial: tuple[int, int] | None = None
    top: int | None = None
    decode: bool = False
    added_fields: bool = False  # the same message, not the same bytes: fields the server adds are allowed

    def expected(self) -> bytes:
        from harness.corpus import sections

        data = self.message.data()
        if self.top is not None:
            return sections.top(data, self.top)
        if self.decode:
            return sections._slice(sections.decoded(data, self.section), self.partial)
        return sections.section(data, self.section, self.partial)

    def describe(self) -> str:
        out = self.message.name
        if self.top is not None:
            return f"{out} (headers + {self.top} body lines)"
        if self.section:
            out += f" section {self.section}" + (" decoded" if self.decode else "")
        if self.partial:
            out += f" <{self.partial[0]}.{self.partial[1]}>"
        if self.added_fields:
            out += " (header fields the server adds allowed)"
        return out


@dataclass
class Step:
    index: int  # 1-based position in the test
    line: int
    kind: str  # command | append | idle_start | idle_done | await | drop | sleep | deliver
    session: str | None = None
    command: str | None = None
    continuations: list[str] = field(default_factory=list)  # lines answering the server's "+" requests, in order
    pipeline: list[str] = field(default_factory=list)  # lines sent in the command's own write, never answered here
    message: MessageRef | None = None  # append / deliver
    mailbox: str = "INBOX"
    date: str | None = None  # append: internal date
    to: int = 1
    seconds: float = 0.0  # sleep
    expect: list[Pattern] = field(default_factory=list)
    skip_if: list[Pattern] = field(default_factory=list)  # a status line that ends the test as skipped
    untagged: list[Pattern] = field(default_factory=list)
    absent: list[Pattern] = field(default_factory=list)
    may: list[Pattern] = field(default_factory=list)
    only: bool = False
    count: int | None = None
    lines: list[Pattern] = field(default_factory=list)
    absent_lines: list[Pattern] = field(default_factory=list)
    all_lines: list[Pattern] = field(default_factory=list)
    body: BodySpec | None = None
    fetch: dict[str, BodySpec | Pattern] = field(default_factory=dict)
    timeout: float | None = None
    why: str | None = None
    metric: str | None = None
    level: str | None = None  # MUST/SHOULD/MAY of this step's checks; None: the test's level
    eventually: str | None = None  # await: the level at which responses that came too late must still come
    when: dict = field(default_factory=dict)  # the checks apply only if the server has these (else: status only)

    def describe(self) -> str:
        if self.kind == "command":
            return f"{self.session}: {self.command}"
        if self.kind == "append":
            return f"{self.session}: append {self.message.name} to {self.mailbox}"
        if self.kind in ("idle_start", "idle_done"):
            return f"{self.session}: idle {self.kind[5:]}"
        if self.kind == "await":
            return f"{self.session}: await {', '.join(map(str, self.untagged))}"
        if self.kind == "quiet":
            return f"{self.session}: quiet for {self.seconds:g} s"
        if self.kind == "drop":
            return f"drop {self.session}"
        if self.kind == "sleep":
            return f"sleep {self.seconds}"
        return f"deliver {self.message.name} to account {self.to}"


@dataclass
class TestSpec:
    id: str
    title: str
    file: Path
    line: int
    area: str
    rfc: list[str]
    sessions: dict[str, SessionSpec]
    steps: list[Step]
    description: str = ""
    requires: dict = field(default_factory=dict)
    accounts: int = 1
    timeout: float | None = None  # None: the run's default (--timeout, the target's, 5 s)
    setup: list[SetupEntry] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    level: str = "MUST"  # the RFC level of the test's checks; a step may say otherwise

    def level_of(self, step: Step | None) -> str:
        """The level a failed check of ``step`` is judged at; set-up and session failures are always MUST."""
        return (step.level if step and step.level else None) or self.level
    mailbox_names: set[str] = field(default_factory=set)  # every suite mailbox name the test uses

    @property
    def special_uses(self) -> list[str]:
        """Special-use attributes (\\Sent ...) the test names as mailboxes."""
        return sorted({a for a in map(mailboxes.special_use_attribute, self.mailbox_names) if a})

    @property
    def hierarchy_names(self) -> list[str]:
        """Names with more than one level (Projects/Alpha): the test needs a server with hierarchy."""
        return sorted(n for n in self.mailbox_names if mailboxes.uses_hierarchy(n))

    @property
    def protocol(self) -> str:
        protos = sorted({s.protocol for s in self.sessions.values()}, key=["pop3", "imap"].index)
        return "+".join(protos)

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"


class _Ctx:
    """Error helper bound to one file: ``fail`` ends the current step (or test); ``problems`` keeps them all."""

    def __init__(self, path: Path, data):
        self.path, self.data = path, data
        self.problems: list[str] = []

    def fail(self, keys: list, message: str):
        raise ConfigError(f"{self.path}:{line_of(self.data, keys)}: {message}")

    def checked(self, check, *args):
        """Run one check; a problem is recorded (None returned) and the caller goes on with the next one."""
        try:
            return check(*args)
        except ConfigError as exc:
            self.problems += exc.problems
            return None


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _message_ref(ctx: _Ctx, keys: list, value) -> MessageRef:
    if isinstance(value, str):
        value = {"message": value}
    name = value["message"]
    if name not in corpus.names():
        ctx.fail(keys, f"no corpus message named {name!r} (known: {', '.join(corpus.names())})")
    return MessageRef(name, list(value.get("flags", [])), value.get("subject"))


def _patterns(ctx: _Ctx, keys: list, value, names: set[str] | None = None) -> list[Pattern]:
    out = []
    for i, text in enumerate(_as_list(value)):
        pattern = Pattern(str(text))
        where = keys + [i] if isinstance(value, list) else keys
        if pattern.source.startswith("re:") and "${mbox:" in pattern.source:
            ctx.fail(where, f"bad pattern `{text}`: ${{mbox:...}} works in plain patterns, not in re: regexes")
        _check_mailbox_names(ctx, where, mailboxes.names_in(pattern.source), names)
        placeholders = tuple(sorted({(f"msg:{arg}", "1") for fn, arg in function_tokens(pattern.source) if fn == "msg"}))
        try:
            _compile(mailboxes.MBOX_TOKEN.sub("${astring:x}", pattern.source), placeholders, False)
        except (PatternError, Exception) as exc:  # re.error too
            ctx.fail(where, f"bad pattern `{text}`: {exc}")
        out.append(pattern)
    return out


def _check_mailbox_names(ctx: _Ctx, keys: list, found: list[str], names: set[str] | None) -> None:
    for name in found:
        problem = mailboxes.check_name(name)
        if problem:
            ctx.fail(keys, problem)
        if names is not None:
            names.add(name)


def _body(ctx: _Ctx, keys: list, value) -> BodySpec:
    if isinstance(value, str):
        value = {"message": value}
    ref = _message_ref(ctx, keys, {k: v for k, v in value.items() if k in ("message", "subject")})
    partial = tuple(value["partial"]) if "partial" in value else None
    spec = BodySpec(ref, str(value.get("section", "")).upper(), partial, value.get("top"), bool(value.get("decode")),
                    value.get("added_fields") == "allowed")
    if spec.decode and not spec.section:
        ctx.fail(keys, "decode: needs a section (the part to decode), e.g. section: \"2\"")
    if spec.added_fields and (spec.section not in ("", "HEADER") or spec.partial or spec.decode or spec.top is not None):
        ctx.fail(keys, "added_fields: allowed compares a whole message or its HEADER, not a part, a range or TOP lines")
    try:
        spec.expected()
    except Exception as exc:  # the reference implementation rejects the section
        ctx.fail(keys, f"cannot compute {spec.describe()}: {exc}")
    return spec


def _sessions(ctx: _Ctx, keys: list, raw: dict, accounts: int) -> dict[str, SessionSpec]:
    out = {}
    for name, value in raw.items():
        if isinstance(value, str):
            value = {"protocol": value}
        spec = SessionSpec(name, value["protocol"], value.get("account", 1), value.get("login", True), value.get("connect"))
        if spec.account > accounts:
            ctx.fail(keys + [name], f"session {name} uses account {spec.account} but the test has accounts: {accounts}")
        out[name] = spec
    return out


def _setup(ctx: _Ctx, keys: list, raw, accounts: int) -> list[SetupEntry]:
    if isinstance(raw, dict):
        raw = [{"account": 1, "mailbox": box, "messages": msgs} for box, msgs in raw.items()]
        entries_keys = [keys + [e["mailbox"]] for e in raw]
    else:
        entries_keys = [keys + [i] for i in range(len(raw))]
    out = []
    for entry, ekeys in zip(raw, entries_keys):
        account = entry.get("account", 1)
        if account > accounts:
            ctx.fail(ekeys, f"setup uses account {account} but the test has accounts: {accounts}")
        problem = mailboxes.check_name(entry["mailbox"])
        if problem:
            ctx.fail(ekeys, problem)
        msgs = [_message_ref(ctx, ekeys, m) for m in entry.get("messages", [])]
        out.append(SetupEntry(account, entry["mailbox"], msgs))
    return out


def _step(ctx: _Ctx, keys: list, raw: dict, index: int, sessions: dict[str, SessionSpec], known_vars: set[str],
          accounts: int, names: set[str] | None = None) -> Step:
    names = set() if names is None else names
    line = line_of(ctx.data, keys)
    step = Step(index=index, line=line, kind="command")
    actors = [k for k in raw if k not in STEP_KEYWORDS]
    for key in actors:
        if key not in sessions and key not in SPECIAL_STEPS:
            close = difflib.get_close_matches(str(key), sorted(STEP_KEYWORDS | set(SPECIAL_STEPS)), n=1, cutoff=0.7)
            if close:  # a misspelt check, not a session: `expcet: -ERR`
                ctx.fail(keys + [key], f"unknown step key {key!r} (did you mean `{close[0]}`?)")
    if len(actors) != 1:
        if not actors:
            ctx.fail(keys, "a step needs a session (e.g. `a: NOOP`) or one of drop/sleep/deliver")
        ctx.fail(keys, f"a step does one thing; this one names {', '.join(actors)}")
    actor = actors[0]
    value = raw[actor]
    if actor in SPECIAL_STEPS:
        step.kind = actor
        if actor == "drop":
            if value not in sessions:
                ctx.fail(keys + [actor], f"drop: no session {value!r} in this test (sessions: {', '.join(sessions)})")
            step.session = value
        elif actor == "sleep":
            step.seconds = float(value)
        else:
            step.message = _message_ref(ctx, keys + [actor], value)
            step.to = raw.get("to", 1)
    else:
        if actor not in sessions:
            known = ", ".join(sorted(sessions)) or "none"
            ctx.fail(keys + [actor], f"{actor!r} is neither a session of this test ({known}) nor a step keyword ({', '.join(sorted(STEP_KEYWORDS))})")
        step.session = actor
        if isinstance(value, str):
            step.command = value.strip()
            if sessions[actor].protocol == "imap":
                raw_name = mailboxes.raw_mailbox_argument(step.command)
                if raw_name is not None:
                    ctx.fail(keys + [actor], f"mailbox {raw_name}: write folders as ${{mbox:{raw_name.strip(chr(34))}}} "
                             "(levels joined by '/'), so the engine maps them into the server's namespace; "
                             "INBOX, \"\", \"*\" and captured $variables may stay as they are")
            _check_mailbox_names(ctx, keys + [actor], mailboxes.names_in(step.command), names)
            step.continuations = [str(x) for x in _as_list(raw.get("continue"))]
            step.pipeline = [str(x) for x in _as_list(raw.get("pipeline"))]
            if step.pipeline and (step.continuations or "${literal:" in step.command):
                ctx.fail(keys + ["pipeline"], "pipeline: goes with a one-line command (no continue:, no ${literal:...}): "
                         "the lines are sent in the same write as the command")
            lines = [(keys + [actor], step.command)] + [
                (keys + ["continue"] + ([i] if isinstance(raw["continue"], list) else []), text)
                for i, text in enumerate(step.continuations)]
            for where, text in lines:
                for var in variables_in(text):
                    if var not in known_vars and var not in builtin_vars(accounts):
                        ctx.fail(where, f"${var} is used before any step captures it")
                _check_credentials(ctx, where, text, accounts, sessions[actor])
        else:
            _action(ctx, keys + [actor], value, step, sessions[actor])
    protocol = sessions[step.session].protocol if step.session else None
    present = set(raw) & STEP_KEYWORDS
    if protocol == "pop3" and present & IMAP_ONLY:
        ctx.fail(keys + [sorted(present & IMAP_ONLY)[0]], f"{sorted(present & IMAP_ONLY)[0]}: only for IMAP sessions; {step.session} is POP3")
    if protocol == "imap" and present & POP3_ONLY:
        ctx.fail(keys + [sorted(present & POP3_ONLY)[0]], f"{sorted(present & POP3_ONLY)[0]}: only for POP3 sessions; {step.session} is IMAP")
    unused = sorted(present - ALLOWED_KEYWORDS[step.kind])
    if unused:
        allowed = ", ".join(sorted(ALLOWED_KEYWORDS[step.kind])) or "none"
        kind = step.kind.replace("_", " ")
        ctx.fail(keys + [unused[0]], f"{unused[0]}: {'an' if kind[0] in 'aeiou' else 'a'} {kind} step does not check this (it takes: {allowed})")
    if step.kind == "append":
        _check_mailbox_names(ctx, keys + [actor], [step.mailbox], names)
    step.expect = _patterns(ctx, keys + ["expect"], raw.get("expect"), names)
    step.skip_if = _patterns(ctx, keys + ["skip_if"], raw.get("skip_if"), names)
    for pattern in step.untagged:  # an await's, read by _action
        _check_mailbox_names(ctx, keys + [actor], mailboxes.names_in(pattern.source), names)
    step.untagged += _patterns(ctx, keys + ["untagged"], raw.get("untagged"), names)
    step.absent = _patterns(ctx, keys + ["absent"], raw.get("absent"), names)
    step.may = _patterns(ctx, keys + ["may"], raw.get("may"), names)
    step.only = bool(raw.get("only", False))
    step.count = raw.get("count")
    step.lines = _patterns(ctx, keys + ["lines"], raw.get("lines"))
    step.absent_lines = _patterns(ctx, keys + ["absent_lines"], raw.get("absent_lines"))
    step.all_lines = _patterns(ctx, keys + ["all_lines"], raw.get("all_lines"))
    if "body" in raw:
        step.body = _body(ctx, keys + ["body"], raw["body"])
    for item, spec in (raw.get("fetch") or {}).items():
        if isinstance(spec, str):
            step.fetch[fetch_item_name(item)] = _patterns(ctx, keys + ["fetch", item], spec, names)[0]
        else:
            step.fetch[fetch_item_name(item)] = _body(ctx, keys + ["fetch", item], spec)
    _check_message_numbers(ctx, keys, step, protocol)
    step.timeout = raw.get("timeout", step.timeout)
    step.why = raw.get("why")
    step.metric = raw.get("metric")
    step.level = raw.get("level")
    step.eventually = raw.get("eventually")
    step.when = dict(raw.get("when") or {})
    tls_keys = sorted(set(step.when) & {"cleartext", "implicit-tls"})
    if tls_keys:
        ctx.fail(keys + ["when"], f"when: {tls_keys[0]} is about the target's endpoints: put it in the test's requires")
    names.update(step.when.get("special-use", []))  # so set-up looks for them
    if protocol == "imap" and step.expect and (step.untagged and step.kind != "await" or step.fetch or step.only):
        if not any(p.source.startswith("re:") or p.source.split()[0].upper() == "OK" for p in step.expect if p.source.split()):
            ctx.fail(keys + ["expect"], "untagged, fetch and only are checked on an OK answer; this step expects no OK, "
                     "so they would never be checked")
    fetch_patterns = [p for p in step.fetch.values() if isinstance(p, Pattern)]
    for pattern in step.expect + step.untagged + step.lines + step.all_lines + fetch_patterns:
        known_vars.update(variables_in(pattern.source))
    return step


def _check_message_numbers(ctx: _Ctx, keys: list, step: Step, protocol: str | None) -> None:
    """${msg:NAME} is a POP3 message number: only POP3 steps have one, and NAME is a corpus message."""
    sources = [step.command or ""] + [p.source for p in step.expect + step.lines + step.absent_lines + step.all_lines
                                      + step.untagged + step.absent + step.may]
    for fn, arg in (t for source in sources for t in function_tokens(source)):
        if fn != "msg":
            continue
        if protocol != "pop3":
            ctx.fail(keys, f"${{msg:{arg}}}: a message number is a POP3 notion; in IMAP steps use sequence numbers or UIDs")
        if arg not in corpus.names():
            ctx.fail(keys, f"${{msg:{arg}}}: no corpus message named {arg!r} (known: {', '.join(corpus.names())})")


def _check_credentials(ctx: _Ctx, keys: list, text: str, accounts: int, session: SessionSpec) -> None:
    try:
        tokens = credentials.tokens_in(text)
    except credentials.CredentialError as exc:
        ctx.fail(keys, str(exc))
    for token in tokens:
        if token.account > accounts:
            ctx.fail(keys, f"{token.text} uses account {token.account} but the test has accounts: {accounts}")
        if token.fn == "apop" and session.protocol != "pop3":
            ctx.fail(keys, f"{token.text} is a POP3 digest (RFC 1939 §7); {session.name} is {session.protocol}")


def _action(ctx: _Ctx, keys: list, value: dict, step: Step, session: SessionSpec) -> None:
    kinds = [k for k in ("append", "idle", "await", "quiet") if k in value]
    if len(kinds) != 1:
        ctx.fail(keys, "an action is exactly one of append, idle, await, quiet")
    if session.protocol != "imap" and kinds[0] != "quiet":
        ctx.fail(keys, f"{kinds[0]}: only for IMAP sessions; {session.name} is POP3")
    kind = kinds[0]
    extra = set(value) - {"append": {"append", "mailbox", "flags", "subject", "date"}, "idle": {"idle"}, "await": {"await", "within"},
                          "quiet": {"quiet"}}[kind]
    if extra:
        ctx.fail(keys + [sorted(extra)[0]], f"{sorted(extra)[0]}: does not go with {kind}")
    if kind == "append":
        step.kind = "append"
        step.message = _message_ref(ctx, keys, {"message": value["append"], "flags": value.get("flags", []), **({"subject": value["subject"]} if "subject" in value else {})})
        step.mailbox = value.get("mailbox", "INBOX")
        step.date = value.get("date")
    elif kind == "idle":
        step.kind = "idle_" + value["idle"]
    elif kind == "quiet":
        step.kind = "quiet"
        step.seconds = float(value["quiet"])
    else:
        step.kind = "await"
        step.untagged = _patterns(ctx, keys + ["await"], value["await"])
        step.timeout = value.get("within")


# Markers with a meaning already (pytest's own and the harness's): a tag must not reuse one.
RESERVED_MARKERS = {"skip", "skipif", "xfail", "parametrize", "usefixtures", "filterwarnings", "timeout",
                    "mailharness", "slow", "must", "should", "may", "pop3", "imap"}
SUITE_KEY_HINT = "a suite file has a top-level `suite:` key (its title, e.g. `suite: POP3 deletion`): pytest collects only YAML files that have one"


def _covers(have: dict, needed: dict) -> bool:
    return all({c.upper() for c in have.get(k, [])} >= {c.upper() for c in v} for k, v in needed.items() if isinstance(v, list)) \
        and (not needed.get("delivery") or have.get("delivery"))


def _step_patterns(step: Step) -> list[Pattern]:
    fetch = [p for p in step.fetch.values() if isinstance(p, Pattern)]
    return step.expect + step.untagged + step.absent + step.may + step.lines + step.absent_lines + step.all_lines + fetch


def _check_capability_gates(ctx: _Ctx, keys: list, steps: list[Step], sessions: dict[str, SessionSpec], requires: dict) -> None:
    """Extension response codes only where their capability is declared; a variable a `when:` step captures
    is used only by steps with the same `when:` (on a server without it, the variable is never set)."""
    plain: set[str] = set()
    gated: dict[str, tuple[int, dict]] = {}
    for step in steps:
        protocol = sessions[step.session].protocol if step.session in sessions else None
        skeys = keys + ["steps", step.index - 1]
        for pattern in _step_patterns(step) if protocol else []:
            if pattern.source.startswith("re:"):
                continue
            for code in _CODE.findall(pattern.source):
                cap = CODE_CAPABILITY[protocol].get(code.upper())
                if cap and not _covers(requires, {protocol: [cap]}) and not _covers(step.when, {protocol: [cap]}):
                    ctx.checked(ctx.fail, skeys, f"[{code}] is a response code of the {cap} extension: expect it only where "
                                f"the server advertises {cap}, with `requires: {{{protocol}: [{cap}]}}` on the test or "
                                f"`when: {{{protocol}: [{cap}]}}` on the step")
        used = variables_in(step.command or "") + [v for p in _step_patterns(step) for v in variables_in(p.source)]
        for var in used:
            if var in gated and var not in plain and not _covers(step.when, gated[var][1]):
                first, when = gated[var]
                ctx.checked(ctx.fail, skeys, f"${var} is set only when step {first}'s `when: {when}` holds; give this step "
                            "the same `when:`, or make it a requirement of the test")
                break
        captured = {v for p in _step_patterns(step) for v in variables_in(p.source)}
        if step.when:
            for var in captured - plain:
                gated.setdefault(var, (step.index, step.when))
        else:
            plain |= captured


def load_suite(path: Path) -> list[TestSpec]:
    """All tests of one suite file; ConfigError listing every problem (file:line: problem) when anything is wrong.

    Schema problems come first; meaning problems follow for the tests whose shape is right.
    """
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping (a suite has `suite:` and a `tests:` list)")
    shape = schema_problems(data, load_schema("suite.schema.json"), path)
    ctx = _Ctx(path, data)
    if "suite" not in data:
        ctx.problems.append(f"{path}:1: {SUITE_KEY_HINT}")
    misshapen = {p[1] for p, _ in shape if len(p) > 1 and p[0] == "tests"}
    if any(len(p) < 2 or p[0] != "tests" for p, _ in shape) or not isinstance(data.get("tests"), list):
        raise ConfigError(problems=[text for _, text in shape] + ctx.problems)  # no test can be read safely
    defaults = data.get("defaults", {})
    tests, seen = [], {}
    for i, raw in enumerate(data["tests"]):
        if i not in misshapen:
            spec = ctx.checked(_test, ctx, i, raw, defaults, seen)
            if spec is not None:
                tests.append(spec)
    problems = [text for _, text in shape] + ctx.problems
    if problems:
        raise ConfigError(problems=problems)
    return tests


def _test(ctx: _Ctx, i: int, raw: dict, defaults: dict, seen: dict) -> TestSpec:
    keys = ["tests", i]
    path, data = ctx.path, ctx.data
    merged = {**defaults, **raw}
    if raw["id"] in seen:
        ctx.fail(keys + ["id"], f"duplicate test id {raw['id']!r} (first at line {seen[raw['id']]})")
    seen[raw["id"]] = line_of(data, keys)
    for required in ("area", "rfc", "sessions"):
        if required not in merged:
            ctx.fail(keys, f"test {raw['id']}: `{required}` is required (here or in defaults)")
    reserved = sorted(set(merged.get("tags", [])) & RESERVED_MARKERS)
    if reserved:
        ctx.fail(keys + ["tags"] if "tags" in raw else ["defaults", "tags"],
                 f"tags: {reserved[0]!r} is a marker pytest or the harness already uses; pick another name")
    accounts = merged.get("accounts", 1)
    sessions = _sessions(ctx, keys + ["sessions"] if "sessions" in raw else ["defaults", "sessions"], merged["sessions"], accounts)
    setup_keys = keys + ["setup"] if "setup" in raw else ["defaults", "setup"]
    setup = ctx.checked(_setup, ctx, setup_keys, merged.get("setup", {}), accounts)  # reported; the steps are still checked
    known_vars: set[str] = set()
    names = {entry.mailbox for entry in setup or []} | set(merged.get("requires", {}).get("special-use", []))
    steps = []
    for j, raw_step in enumerate(raw["steps"]):
        step = ctx.checked(_step, ctx, keys + ["steps", j], raw_step, j + 1, sessions, known_vars, accounts, names)
        if step is None:  # reported; what it would have captured is known, so later steps are not blamed for it
            known_vars.update(_captures_of(raw_step))
            continue
        steps.append(step)
        if step.kind == "deliver" and step.to > accounts:
            ctx.checked(ctx.fail, keys + ["steps", j], f"deliver to account {step.to} but the test has accounts: {accounts}")
    _check_capability_gates(ctx, keys, steps, sessions, dict(merged.get("requires", {})))
    _check_connect(ctx, keys, sessions, dict(merged.get("requires", {})))
    return TestSpec(
        id=raw["id"],
        title=raw["title"],
        file=path,
        line=line_of(data, keys),
        area=merged["area"],
        rfc=list(merged["rfc"]),
        sessions=sessions,
        steps=steps,
        description=raw.get("description", ""),
        requires=dict(merged.get("requires", {})),
        accounts=accounts,
        timeout=float(merged["timeout"]) if "timeout" in merged else None,
        setup=setup or [],
        tags=list(merged.get("tags", [])),
        level=merged.get("level", "MUST"),
        mailbox_names=names,
    )


def _check_connect(ctx: _Ctx, keys: list, sessions: dict[str, SessionSpec], requires: dict) -> None:
    """A session with `connect:` needs the endpoint declared in `requires`, so a target without it skips the test
    (with the reason) instead of failing it."""
    for spec in sessions.values():
        if spec.connect == "cleartext" and spec.protocol not in (requires.get("cleartext") or {}):
            ctx.checked(ctx.fail, keys + ["sessions"], f"session {spec.name} connects to the cleartext endpoint: the test needs "
                        f"`requires: {{cleartext: {{{spec.protocol}: [...]}}}}` (e.g. [{'STARTTLS' if spec.protocol == 'imap' else 'STLS'}])")
        if spec.connect == "implicit-tls" and spec.protocol not in requires.get("implicit-tls", []):
            ctx.checked(ctx.fail, keys + ["sessions"], f"session {spec.name} connects with implicit TLS: the test needs "
                        f"`requires: {{implicit-tls: [{spec.protocol}]}}`")


def _captures_of(raw_step) -> set[str]:
    """Variables a (malformed) step's patterns would capture."""
    out: set[str] = set()
    if not isinstance(raw_step, dict):
        return out
    values = [raw_step.get(k) for k in ("expect", "untagged", "lines", "all_lines")]
    values += [v.get("await") for v in raw_step.values() if isinstance(v, dict)]
    values += list((raw_step.get("fetch") or {}).values()) if isinstance(raw_step.get("fetch"), dict) else []
    for value in values:
        for text in _as_list(value):
            if isinstance(text, str):
                out.update(variables_in(text))
    return out
