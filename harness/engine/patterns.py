"""Response patterns: readable matching with captured variables.

A pattern is matched against a whole response line, case-insensitively, with
runs of white space matching any white space:

    $name        a token (no space, parentheses or brackets); captured the first
                 time, compared with the captured value afterwards
    ${name}      the same, where letters follow: Projects${delim}Alpha
    $$           a literal "$" (keywords such as $$Forwarded)
    ${size:NAME} the size in octets of corpus message NAME (or A+B: a sum); in a POP3
                 step, of that message as this session's server sends it (see pop3_view.py)
    ${msg:NAME}  (POP3 steps) the message number of the message that is corpus NAME
    ${literal:X} (commands only) X sent as an IMAP literal, UTF-8
    ${astring:X} an IMAP astring equal to X: the atom, the quoted string or the literal
                 (RFC 3501 §9); in commands, X sent as whichever of them it needs.
                 ${astring:$v} compares with variable $v, or captures the astring's value
    ${mbox:NAME} is not handled here: the runner rewrites it into ${astring:...} with the
                 server's name for NAME (harness/engine/mailboxes.py)
    ...          anything, including nothing
    re:REGEX     the rest is a Python regex; (?P<name>...) groups are captured

Everything else is literal, so "* $n EXISTS" or "+OK $count $octets" read like
the responses they match.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import time
from dataclasses import dataclass
from functools import lru_cache

from harness import corpus

try:  # the `regex` library: the same syntax as re, plus a timeout on every match
    import regex as _rx

    MATCH_TIMEOUTS = True
except ImportError:  # a venv from before the dependency (make setup installs it): no timeout, as before
    _rx = re
    MATCH_TIMEOUTS = False

# When the step that is matching must end (time.monotonic()); None outside a step.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("match_deadline", default=None)


@contextlib.contextmanager
def match_deadline(seconds: float):
    """Patterns matched inside the block give up when the block has run ``seconds`` (a step's timeout):
    a catastrophic ``re:`` pattern in a suite fails its step, it does not hold the run."""
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)

_TOKEN = re.compile(
    r"(?P<dollar>\$\$)"
    r"|\$\{(?P<fn>[a-z]+):(?P<arg>[^}]*)\}"
    r"|\$\{(?P<bvar>[A-Za-z_][A-Za-z0-9_]*)\}|\$(?P<var>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<any>\.\.\.)|(?P<ws>\s+)"
)
_CAPTURE = r"[^\s()\[\]]+"
# RFC 3501 §9: ASTRING-CHAR is ATOM-CHAR or "]"; quoted strings escape only " and \
_ATOM_CHARS = r"[^\x00-\x20\x7f(){%*\"\\]"
_QUOTED = r'"(?:[^"\\\r\n]|\\["\\])*"'
_ASTRING_VAR = re.compile(r"\$(?:\{(?P<b>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<v>[A-Za-z_][A-Za-z0-9_]*))\Z")


class PatternError(ValueError):
    pass


class PatternTimeout(PatternError):
    """A pattern took longer to match than its step may last."""


FUNCTIONS = ("size", "msg", "literal", "astring")


def function_tokens(text: str) -> list[tuple[str, str]]:
    """The ${fn:arg} tokens of a pattern or command, e.g. [("msg", "plain"), ("size", "plain+dot-lines")]."""
    if text.startswith("re:"):
        return []
    return [(m.group("fn"), m.group("arg")) for m in _TOKEN.finditer(text) if m.group("fn")]


def expand_function(fn: str, arg: str, bound: dict[str, str] | None = None) -> str:
    """The text of ${fn:arg}; a session may bind its own value under the key "fn:arg" (POP3 numbers, sizes)."""
    if bound and f"{fn}:{arg}" in bound:
        return bound[f"{fn}:{arg}"]
    if fn == "msg":
        raise PatternError(f"${{msg:{arg}}}: message numbers are only known in a POP3 session's steps")
    if fn == "size":  # ${size:plain} or a sum, ${size:plain+dot-lines}
        total = 0
        for name in arg.split("+"):
            try:
                total += len(corpus.message(name))
            except KeyError:
                raise PatternError(f"${{size:{arg}}}: no corpus message named {name!r}") from None
        return str(total)
    raise PatternError(f"unknown function ${{{fn}:...}} (known: {', '.join(FUNCTIONS)}; mbox in suites)")


def astring_regex(value: str) -> str:
    """A regex for the astring forms of ``value``: atom (when it is one) or quoted string.

    A literal is matched as the quoted string it equals: the runner matches untagged responses
    (other than FETCH) with short literals rewritten that way (Untagged.inline_text)."""
    forms = []
    if value and re.fullmatch(_ATOM_CHARS + "+", value):
        forms.append(re.escape(value))
    forms.append('"' + "".join(r"\\" + re.escape(c) if c in '"\\' else re.escape(c) for c in value) + '"')
    return "(?:" + "|".join(forms) + ")"


def astring_value(text: str) -> str | None:
    """The string an astring stands for: atom as is, quoted string unescaped, literal's data; None if malformed."""
    if text.startswith('"'):
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def _astring_variable(arg: str) -> str | None:
    m = _ASTRING_VAR.match(arg)
    return (m.group("b") or m.group("v")) if m else None


@dataclass(frozen=True)
class Pattern:
    source: str

    def match(self, text: str, variables: dict[str, str], *, allow_tail: bool = False) -> dict[str, str] | None:
        """New captures (possibly empty) if ``text`` matches, else None. ``variables`` is not modified."""
        keys = _bound_keys(self.source)  # the cache key holds only the values this pattern reads
        regex, names = _compile(self.source, tuple(sorted((k, variables[k]) for k in keys if k in variables)), allow_tail)
        deadline = _DEADLINE.get()
        try:
            if deadline is not None and MATCH_TIMEOUTS:
                m = regex.fullmatch(text.strip(), timeout=max(0.001, deadline - time.monotonic()))
            else:
                m = regex.fullmatch(text.strip())
        except TimeoutError:
            raise PatternTimeout(f"pattern `{self.source}` did not finish matching within the step's timeout "
                                 f"(catastrophic backtracking?) against: {text.strip()[:200]}") from None
        if not m:
            return None
        out = {}
        for group, name in names.items():
            value = m.group(group)
            if value is not None and group.startswith("a"):  # ${astring:$name}: the value, unquoted
                value = astring_value(value)
                if value is None:
                    return None
            if value is not None:
                out[name] = value
        return out

    def __str__(self) -> str:
        """The pattern as a reader should see it in a failure: ``${size:plain}`` shown as its number."""
        if self.source.startswith("re:"):
            return self.source

        def resolved(m: re.Match) -> str:
            try:
                return expand_function(m.group("fn"), m.group("arg")) if m.group("fn") == "size" else m.group(0)
            except PatternError:
                return m.group(0)

        return _TOKEN.sub(lambda m: resolved(m) if m.group("fn") else m.group(0), self.source)


@lru_cache(maxsize=4096)
def _bound_keys(source: str) -> frozenset[str]:
    """The variables _compile may look up for `source`: its $names, ${astring:$name}s and the "fn:arg" keys
    a session binds (${msg:plain}); an re: pattern uses none. Keying the compiled pattern on these alone,
    not on every variable of the test, compiles each pattern once per value it depends on, not per test."""
    if source.startswith("re:"):
        return frozenset()
    keys = set()
    for m in _TOKEN.finditer(source):
        if m.group("var") or m.group("bvar"):
            keys.add(m.group("var") or m.group("bvar"))
        elif m.group("fn") == "astring":
            name = _astring_variable(m.group("arg"))
            if name:
                keys.add(name)
        elif m.group("fn"):
            keys.add(f"{m.group('fn')}:{m.group('arg')}")
    return frozenset(keys)


@lru_cache(maxsize=4096)
def _compile(source: str, bound: tuple, allow_tail: bool):
    bound_vars = dict(bound)
    if source.startswith("re:"):
        regex = _both(source[3:].strip())
        return regex, {g: g for g in regex.groupindex}
    out, names, seen = [], {}, {}
    pos = 0
    for m in _TOKEN.finditer(source):
        out.append(re.escape(source[pos : m.start()]))
        pos = m.end()
        if m.group("dollar"):
            out.append(re.escape("$"))
        elif m.group("fn") == "astring":
            arg = m.group("arg")
            name = _astring_variable(arg)
            if name is None:
                if "$" in arg:
                    raise PatternError(f"${{astring:{arg}}}: give either text or one variable, e.g. ${{astring:$root}}")
                out.append(astring_regex(arg))
            elif name in bound_vars:
                out.append(astring_regex(bound_vars[name]))
            elif name in seen:
                out.append(f"(?P={seen[name]})")
            else:
                group = f"a{len(names)}"
                names[group] = name
                seen[name] = group
                out.append(rf"(?P<{group}>{_ATOM_CHARS}+|{_QUOTED})")
        elif m.group("fn"):
            out.append(re.escape(expand_function(m.group("fn"), m.group("arg"), bound_vars)))
        elif m.group("var") or m.group("bvar"):
            name = m.group("var") or m.group("bvar")
            if name in bound_vars:
                out.append(re.escape(bound_vars[name]))
            elif name in seen:  # same new variable twice in one pattern: must be equal
                out.append(f"(?P={seen[name]})")
            else:
                group = f"g{len(names)}"
                names[group] = name
                seen[name] = group
                out.append(f"(?P<{group}>{_CAPTURE})")
        elif m.group("any"):
            out.append(".*?")
        else:
            out.append(r"\s+")
    out.append(re.escape(source[pos:]))
    body = "".join(out).strip()
    if allow_tail:
        body += r"(?:\s.*)?"
    return _both(body), names


def _both(body: str):
    """Checked by re (the syntax suites are written in, and its errors), matched by regex (timeouts)."""
    checked = re.compile(body, re.IGNORECASE | re.DOTALL)
    return _rx.compile(body, _rx.IGNORECASE | _rx.DOTALL) if MATCH_TIMEOUTS else checked


def substitute(text: str, variables: dict[str, str]) -> str:
    """Fill $name and ${fn:arg} in a command line; an unknown variable is an error."""

    def repl(m: re.Match) -> str:
        if m.group("dollar"):
            return "$"
        if m.group("fn") == "literal":
            return m.group(0)  # sent as a literal by the session: split_literals()
        if m.group("fn") == "astring":
            return _astring_argument(m.group("arg"), variables)
        if m.group("fn"):
            return expand_function(m.group("fn"), m.group("arg"), variables)
        if m.group("var") or m.group("bvar"):
            name = m.group("var") or m.group("bvar")
            if name not in variables:
                known = ", ".join(sorted("$" + v for v in variables)) or "none yet"
                raise PatternError(f"${name} is not set at this step (set so far: {known})")
            return variables[name]
        return m.group(0)

    return _TOKEN.sub(repl, text)


_QUOTED_IN_ITEM = re.compile(r'"((?:[^"\\]|\\.)*)"')


def fetch_item_name(name: str) -> str:
    """A FETCH item name compared as the grammar means it: header field names are astrings, so
    ``BODY[HEADER.FIELDS ("Subject")]`` is ``BODY[HEADER.FIELDS (SUBJECT)]`` (RFC 3501 §9, header-fld-name)."""
    return " ".join(_QUOTED_IN_ITEM.sub(lambda m: re.sub(r"\\(.)", r"\1", m.group(1)), name).split()).upper()


def _astring_argument(arg: str, variables: dict[str, str]) -> str:
    from harness.sessions.imap import astring

    name = _astring_variable(arg)
    if name is not None:
        if name not in variables:
            known = ", ".join(sorted("$" + v for v in variables)) or "none yet"
            raise PatternError(f"${name} is not set at this step (set so far: {known})")
        arg = variables[name]
    elif "$" in arg:
        raise PatternError(f"${{astring:{arg}}}: give either text or one variable, e.g. ${{astring:$root}}")
    text, literal = astring(arg)
    return text if literal is None else "${literal:%s}" % arg


def variables_in(text: str) -> list[str]:
    """Variables a pattern captures or a command uses; for re: patterns, the named groups."""
    if text.startswith("re:"):
        try:
            return list(re.compile(text[3:].strip()).groupindex)
        except re.error:
            return []
    out = []
    for m in _TOKEN.finditer(text):
        name = m.group("var") or m.group("bvar") or (_astring_variable(m.group("arg")) if m.group("fn") == "astring" else None)
        if name:
            out.append(name)
    return out


_LITERAL = re.compile(r"\$\{literal:(?P<text>[^}]*)\}")


def split_literals(line: str) -> tuple[str, list[bytes]]:
    """``SEARCH CHARSET UTF-8 BODY ${literal:Köln}`` -> ``... BODY {5}`` and the literal's UTF-8 bytes."""
    literals: list[bytes] = []

    def repl(m: re.Match) -> str:
        data = m.group("text").encode("utf-8")
        literals.append(data)
        return "{%d}" % len(data)

    return _LITERAL.sub(repl, line), literals
