"""YAML loading that remembers where every value came from.

Suites, target files, profiles and scenarios are all YAML written by people;
an error must point at the file and line to fix. Mappings and sequences load
as ``dict``/``list`` subclasses that carry their line and the line of each key,
and schema errors are turned into ``ConfigError("file:line: key: problem")``.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from harness.errors import ConfigError

if TYPE_CHECKING:
    import jsonschema


class Located:
    """Mixin for loaded containers: ``line`` is 1-based; ``key_lines`` maps key/index to line."""

    line: int = 0
    key_lines: dict


class LDict(dict, Located):
    pass


class LList(list, Located):
    pass


# Limits for files written by people, so a hostile or broken file fails with file:line, not a
# RecursionError or gigabytes: no person nests 64 levels, and no suite needs megabytes.
MAX_DEPTH = 64
MAX_FILE_BYTES = 4_000_000
# An alias is a reference, but whoever walks the data (schema checks, json.dumps) walks every copy:
# the whole document, aliases expanded, may weigh no more than a file of MAX_FILE_BYTES could.
MAX_EXPANDED_WEIGHT = MAX_FILE_BYTES


def _line(node_or_event) -> int:
    return node_or_event.start_mark.line + 1


class _Located:
    """Composing with limits, constructing with lines: shared by both loaders below."""

    def _start_checks(self) -> None:
        self._depth = 0
        self._weights: dict[int, int] = {}  # id(node) -> weight with aliases expanded (node done composing)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None and id(node) not in self._weights:
                raise ConfigError(f"line {_line(event)}: alias *{event.anchor} refers to a node that contains it (a cycle)")
            return yaml.composer.Composer.compose_node(self, parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ConfigError(f"line {_line(self.peek_event())}: nested more than {MAX_DEPTH} levels deep")
        node = yaml.composer.Composer.compose_node(self, parent, index)
        self._depth -= 1
        self._weigh(node)
        return node

    def _weigh(self, node) -> None:
        """1 per node plus the characters of scalars, counting every copy an alias stands for.

        The root's weight is the whole expanded document, so checking each node as it completes
        stops a bomb at the first level that outgrows the cap, before anything walks it.
        """
        if isinstance(node, yaml.ScalarNode):
            weight = 1 + len(node.value)
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
            weight = 1 + sum(self._weights.get(id(child), 0) for child in children)
        self._weights[id(node)] = weight
        if weight > MAX_EXPANDED_WEIGHT:
            raise ConfigError(f"line {_line(node)}: aliases expand this document beyond {MAX_EXPANDED_WEIGHT:,} "
                              "nodes and characters (an alias bomb?)")

    def construct_mapping(self, node, deep=False):
        mapping = LDict()
        mapping.line = node.start_mark.line + 1
        mapping.key_lines = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                kind = "list" if isinstance(key, list) else "mapping" if isinstance(key, dict) else type(key).__name__
                raise ConfigError(f"line {_line(key_node)}: a {kind} cannot be a mapping key; keys are plain words") from None
            if key in mapping:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
            mapping[key] = self.construct_object(value_node, deep=True)
            mapping.key_lines[key] = key_node.start_mark.line + 1
        return mapping

    def construct_sequence(self, node, deep=False):
        seq = LList(self.construct_object(child, deep=True) for child in node.value)
        seq.line = node.start_mark.line + 1
        seq.key_lines = {i: child.start_mark.line + 1 for i, child in enumerate(node.value)}
        return seq


class _LineLoader(_Located, yaml.SafeLoader):
    """Pure Python: where PyYAML was built without libyaml."""

    def __init__(self, stream):
        yaml.SafeLoader.__init__(self, stream)
        self._start_checks()


try:
    from yaml._yaml import CParser
except ImportError:  # PyYAML without libyaml
    CParser = None

if CParser is not None:
    class _FastLineLoader(_Located, yaml.composer.Composer, CParser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
        """libyaml scans and parses (five times faster: suites are loaded by every worker of every run); the
        nodes are composed in Python, so the depth, alias and size limits above hold as they do without it."""

        def __init__(self, stream):
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            self._start_checks()


# YAML 1.1 reads NO, yes, on, off as booleans; in suites `expect: NO` is an IMAP status.
# Only true/false are booleans here.
_BOOL = "tag:yaml.org,2002:bool"
_LOADERS = [_LineLoader] + ([_FastLineLoader] if CParser is not None else [])
for _loader in _LOADERS:
    _loader.yaml_implicit_resolvers = {
        first: [(tag, regex) for tag, regex in resolvers if tag != _BOOL]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _finite_float(loader: _LineLoader, node) -> float:
    # .nan and .inf pass every `minimum` in a schema (comparisons with NaN are false) and then
    # break timeouts and sleeps far from the file; no setting here means them.
    value = yaml.SafeLoader.construct_yaml_float(loader, node)
    if not math.isfinite(value):
        raise ConfigError(f"line {_line(node)}: {node.value} is not a finite number")
    return value


for _loader in _LOADERS:
    _loader.yaml_constructors = dict(yaml.SafeLoader.yaml_constructors)
    _loader.add_constructor("tag:yaml.org,2002:float", _finite_float)
    _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _Located.construct_mapping)
    _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _Located.construct_sequence)


def load_yaml(path: Path | str) -> Any:
    """Parse one YAML file with line information; syntax errors become ConfigError."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_FILE_BYTES:,} bytes; not a file written by hand")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return yaml.load(text, Loader=_LOADERS[-1])
    except ConfigError as exc:
        raise ConfigError(f"{path}:{str(exc).removeprefix('line ')}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        if "maximum nesting depth" in str(exc.problem):  # libyaml's own cap (1000) came before ours
            raise ConfigError(f"{path}:{line}: nested more than {MAX_DEPTH} levels deep") from None
        raise ConfigError(f"{path}:{line}: YAML syntax error: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {exc}") from None


def line_of(data: Any, path: list) -> int:
    """The line of the deepest node along ``path`` that we know a line for."""
    line = getattr(data, "line", 0)
    node = data
    for key in path:
        lines = getattr(node, "key_lines", None)
        if lines is not None and key in lines:
            line = lines[key]
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            break
        line = getattr(node, "line", line) or line
    return line


def describe_path(path: list) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out or "(top level)"


def load_schema(name: str) -> dict:
    return json.loads((Path(__file__).parent / "schemas" / name).read_text())


def _best_error(errors: list) -> jsonschema.ValidationError:
    # jsonschema's relevance picks the most specific error inside oneOf/anyOf.
    import jsonschema

    return jsonschema.exceptions.best_match(errors)


def _required_alternatives(schemas) -> list[str] | None:
    """``oneOf: [{required: [password]}, {required: [password_env]}]`` -> ["password", "password_env"]."""
    names = []
    for schema in schemas if isinstance(schemas, list) else []:
        if not (isinstance(schema, dict) and set(schema) == {"required"} and len(schema["required"]) == 1):
            return None
        names.append(schema["required"][0])
    return names or None


def _leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """The errors a person fixes: inside oneOf/anyOf, those of the branch written for this kind of value."""
    if error.validator not in ("oneOf", "anyOf") or _required_alternatives(error.validator_value):
        return [error]
    branches: dict = {}
    for sub in error.context or []:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    # a branch whose own type (mapping, string, ...) fits the value
    fitting = [errs for errs in branches.values() if not any(e.validator == "type" and not e.relative_path for e in errs)]
    if len(fitting) != 1:
        return [_best_error([error]) if error.context else error]
    return [leaf for sub in fitting[0] for leaf in _leaves(sub)]


def _explain(data: Any, error: jsonschema.ValidationError) -> tuple[list, str]:
    """(path, message) for one schema error, in words: no Python reprs of whole mappings."""
    path = list(error.absolute_path)
    alternatives = _required_alternatives(error.validator_value) if error.validator in ("oneOf", "anyOf") else None
    if alternatives:
        if error.context:  # none of them given
            rest = " or ".join(repr(n) for n in alternatives[1:])
            return path, f"{alternatives[0]!r} is a required property (or {rest})"
        return path, "give one of " + ", ".join(repr(n) for n in alternatives) + ", not several"
    if error.validator == "additionalProperties":
        # Point at the unknown key itself rather than its parent mapping.
        node = data
        for key in path:
            node = node[key]
        known = error.schema.get("properties", {})
        unknown = [k for k in node if k not in known]
        if unknown:
            allowed = ", ".join(sorted(known))
            return path + [unknown[0]], f"unknown key {unknown[0]!r} ({_suggestion(unknown[0], known)}allowed: {allowed})"
    message = error.message
    if error.validator == "enum" and isinstance(error.validator_value, list):
        return path, f"{error.instance!r} is not one of: " + ", ".join(map(str, error.validator_value))
    if isinstance(error.instance, dict | list):
        message = message.replace(repr(error.instance), "this " + ("mapping" if isinstance(error.instance, dict) else "list"), 1)
    return path, message


def _suggestion(word: str, known) -> str:
    close = difflib.get_close_matches(str(word), sorted(map(str, known)), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


_FAST_VALIDATORS: dict[str, Any] = {}


def _fast_valid(data: Any, schema: dict) -> bool:
    """True if jsonschema-rs finds `data` valid: it checks a suite in well under 1 ms, where jsonschema takes
    tens (every worker of every run loads every suite). What it finds invalid (or where it is missing) goes
    to jsonschema, whose errors the messages are made of; so only the answer "valid" is taken from it."""
    key = json.dumps(schema, sort_keys=True)
    validator = _FAST_VALIDATORS.get(key)
    if validator is None:
        try:
            import jsonschema_rs
        except ImportError:
            return False
        validator = _FAST_VALIDATORS[key] = jsonschema_rs.validator_for(schema)
    try:
        return validator.is_valid(data)
    except Exception:  # noqa: BLE001 - a value it cannot take (a YAML date, say): jsonschema decides
        return False


def schema_problems(data: Any, schema: dict, source: Path | str) -> list[tuple[list, str]]:
    """Every schema error as (path, "file:line: key: problem"), in file order."""
    if _fast_valid(data, schema):
        return []
    # imported here: the pytest plugin imports this module in every pytest run of the environment (~0.3 s)
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    found = []
    for error in validator.iter_errors(data):
        for leaf in _leaves(error):
            path, message = _explain(data, leaf)
            line = line_of(data, path)
            found.append((line, tuple(path), f"{source}:{line}: {describe_path(path)}: {message}"))
    found = sorted(dict.fromkeys(found), key=lambda item: item[0])
    return [(list(path), text) for _, path, text in found]


def validate(data: Any, schema: dict, source: Path | str) -> None:
    """Validate ``data`` against ``schema``; raise ConfigError naming file, line and key of every problem."""
    problems = schema_problems(data, schema, source)
    if problems:
        raise ConfigError(problems=[text for _, text in problems])


def load_document(path: Path | str, schema_name: str, shape_hint: str):
    """Load a YAML file that must be a mapping valid under ``schemas/<schema_name>``.

    ``shape_hint`` says what the mapping holds, for the error when the file is empty or not a mapping.
    """
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping ({shape_hint})")
    validate(data, load_schema(schema_name), path)
    return data
