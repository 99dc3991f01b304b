"""Mailbox names as the user sees them -> the names a server uses (RFC 2342 namespaces, RFC 6154 special-use).

Suites write every folder as a user sees it, with "/" between levels: ``${mbox:Projects/Alpha}``
in commands and patterns, ``Projects/Alpha`` as a set-up key or an append's ``mailbox:``. The
engine maps it into the server's personal namespace: ``INBOX.Projects.Alpha`` on a server whose
NAMESPACE says ``(("INBOX." "."))``. INBOX stays INBOX. ``\\Sent`` (``${mbox:\\Sent}``) names the
folder the server marks \\Sent for account 1, or, when it has none, a plain folder the harness
creates for the test and removes afterwards.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from harness.engine.patterns import Pattern, PatternError
from harness.sessions.imap import astring

MBOX_TOKEN = re.compile(r"\$\{mbox:(?P<name>[^}]*)\}")
SPECIAL_USE = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")  # RFC 6154 §2
STAND_IN_PREFIX = "Mailharness-"  # a plain folder standing in for a special-use folder the server lacks


class MailboxError(PatternError):
    """A suite's mailbox name the server's namespace cannot express."""


def special_use_attribute(name: str) -> str | None:
    """``\\sent`` -> ``\\Sent``; None for a name that is not a special-use attribute."""
    if not name.startswith("\\"):
        return None
    for attr in SPECIAL_USE:
        if attr.lower() == name.lower():
            return attr
    return None


def check_name(name: str) -> str | None:
    """What is wrong with a suite's mailbox name, or None."""
    if not name:
        return "an empty mailbox name"
    if name.startswith("\\"):
        if special_use_attribute(name) is None:
            return f"{name}: not a special-use attribute (known: {', '.join(SPECIAL_USE)})"
        return None
    if "$" in name:
        return (f"{name}: a mailbox name is written as the user sees it, levels joined by '/' "
                "(Projects/Alpha), not with variables; the engine inserts the server's delimiter")
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return f"{name}: an empty level between '/'"
    return None


def uses_hierarchy(name: str) -> bool:
    return not name.startswith("\\") and "/" in name.strip("/%*")


@dataclass(frozen=True)
class Namespace:
    """The personal namespace (RFC 2342 §5) the suites' folders live in."""

    prefix: str = ""
    delimiter: str | None = "/"
    hierarchy: bool = True  # False: no delimiter (NIL), or new folders come back \NoInferiors
    source: str = "default"  # where it was learnt: NAMESPACE, LIST, default
    why_flat: str = ""  # why there is no hierarchy, for skip reasons

    @classmethod
    def from_probe(cls, info: dict | None) -> "Namespace":
        if not info:
            return cls()
        return cls(info.get("prefix", ""), info.get("delimiter"), bool(info.get("hierarchy", True)),
                   info.get("source", "default"), info.get("why_flat", ""))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def server_name(self, name: str) -> str:
        """``Projects/Alpha`` -> ``INBOX.Projects.Alpha`` (prefix ``INBOX.``, delimiter ``.``)."""
        if name.upper() == "INBOX":
            return "INBOX"
        levels = name.split("/")
        if len(levels) > 1 and not self.delimiter:
            raise MailboxError(f"{name}: the server has no hierarchy ({self.why_flat or 'no delimiter'})")
        delim = self.delimiter or "/"
        for level in levels:
            if delim != "/" and delim in level:
                raise MailboxError(f"{name}: the level {level!r} contains the server's delimiter {delim!r}")
        return self.prefix + delim.join(levels)


@dataclass
class MailboxMap:
    """One test's view: the namespace, plus where its special-use names point (account 1)."""

    namespace: Namespace = field(default_factory=Namespace)
    special: dict[str, str] = field(default_factory=dict)  # "\\Sent" -> server name
    stand_ins: set[str] = field(default_factory=set)  # attributes the server has no folder for: a plain one stands in

    def server_name(self, name: str) -> str:
        attr = special_use_attribute(name)
        if attr is not None:
            if attr not in self.special:
                raise MailboxError(f"{name}: no folder was found or made for it in set-up")
            return self.special[attr]
        return self.namespace.server_name(name)

    def stand_in(self, attr: str) -> str:
        return self.namespace.server_name(STAND_IN_PREFIX + attr[1:])

    # -- rewriting a step -----------------------------------------------------------------
    def command(self, text: str) -> str:
        """``SELECT ${mbox:Projects}`` -> ``SELECT INBOX.Projects`` (an atom, quoted string or ${literal:...})."""

        def repl(m: re.Match) -> str:
            name = self.server_name(m.group("name"))
            sent, literal = astring(name)
            if literal is not None:
                return "${literal:%s}" % name
            return sent.replace("$", "$$")

        return MBOX_TOKEN.sub(repl, text)

    def pattern(self, pattern: Pattern) -> Pattern:
        """``* LIST (...) ... ${mbox:Projects}`` -> ``... ${astring:INBOX.Projects}``: any astring form of the name."""
        if "${mbox:" not in pattern.source:
            return pattern

        def repl(m: re.Match) -> str:
            name = self.server_name(m.group("name"))
            if "}" in name or "$" in name:
                raise MailboxError(f"the server's name {name!r} cannot be matched by a pattern")
            return "${astring:%s}" % name

        return Pattern(MBOX_TOKEN.sub(repl, pattern.source))

    def resolve_step(self, step):
        """A copy of ``step`` with every mailbox name the server's."""
        p = self.pattern
        changes = {
            "expect": [p(x) for x in step.expect], "untagged": [p(x) for x in step.untagged],
            "absent": [p(x) for x in step.absent], "may": [p(x) for x in step.may],
            "fetch": {k: p(v) if isinstance(v, Pattern) else v for k, v in step.fetch.items()},
        }
        if step.command is not None:
            changes["command"] = self.command(step.command)
        if step.kind == "append":
            changes["mailbox"] = self.server_name(step.mailbox)
        return dataclasses.replace(step, **changes)


def names_in(text: str) -> list[str]:
    """The suite names in ``${mbox:...}`` tokens of a command or pattern."""
    return [m.group("name") for m in MBOX_TOKEN.finditer(text)]


# -- commands whose arguments are mailboxes ------------------------------------------------
_ARG = re.compile(r'"(?:[^"\\]|\\.)*"|\$\{[^}]*\}|\([^)]*\)|\S+')
_VARIABLE = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*|\$\{[A-Za-z_][A-Za-z0-9_]*\}")  # a name the server gave
_MAILBOX_ARGS = {  # verb -> positions of mailbox arguments (RFC 3501 §6.3, RFC 9051, RFC 9208, RFC 6851)
    "SELECT": (0,), "EXAMINE": (0,), "CREATE": (0,), "DELETE": (0,), "SUBSCRIBE": (0,), "UNSUBSCRIBE": (0,),
    "STATUS": (0,), "APPEND": (0,), "GETQUOTAROOT": (0,), "RENAME": (0, 1), "COPY": (1,), "MOVE": (1,),
    "LIST": (0, 1), "LSUB": (0, 1),
}


def raw_mailbox_argument(command: str) -> str | None:
    """The first mailbox argument of a command that is written as a bare name instead of ``${mbox:...}``."""
    args = _ARG.findall(command)
    if not args:
        return None
    verb = args[0].upper()
    args = args[1:]
    if verb == "UID" and args:
        verb, args = args[0].upper(), args[1:]
    if verb in ("LIST", "LSUB") and args and args[0].startswith("("):
        args = args[1:]  # LIST-EXTENDED selection options
    for i in _MAILBOX_ARGS.get(verb, ()):
        if i >= len(args):
            continue
        arg = args[i]
        bare = arg[1:-1] if len(arg) >= 2 and arg[0] == arg[-1] == '"' else arg
        if bare.upper() == "INBOX" or bare in ("", "*") or arg.startswith(("${mbox:", "${astring:$")) or _VARIABLE.fullmatch(arg):
            continue
        return arg
    return None
