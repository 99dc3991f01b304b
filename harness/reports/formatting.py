"""Turning raw result values into short text for people; shared by the HTML and terminal reports."""

from __future__ import annotations

from datetime import datetime, timedelta


def format_when(iso: str, seconds: bool = False) -> str:
    """``2026-11-22T10:00:00+00:00`` -> ``2026-11-22 10:00 UTC``; anything unparsable is shown as given."""
    if not iso:
        return ""
    try:
        when = datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return str(iso)
    text = when.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    offset = when.utcoffset()
    if offset is None:
        return text
    if offset == timedelta(0):
        return f"{text} UTC"
    zone = when.strftime("%z")  # "+0200"
    return f"{text} {zone[:3]}:{zone[3:5]}"


def format_date(iso: str) -> str:
    """Just the day, for narrow column headers."""
    return format_when(iso)[:10]


def format_duration(seconds: float | None) -> str:
    """Human duration: ``0.05`` -> ``50 ms``, ``12.3`` -> ``12.3 s``, ``125`` -> ``2 min 5 s``."""
    if seconds is None or seconds == "":
        return ""
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        return str(seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def metric_name(key: str) -> str:
    """``notify_latency_s`` -> ``notify latency``: the unit goes with the value."""
    for suffix in ("_s", "_ms", "_bytes", "_count"):
        if key.endswith(suffix):
            key = key[: -len(suffix)]
            break
    return key.replace("_", " ")


def metric_value(key: str, value) -> str:
    """A metric value with its unit, taken from the key's suffix (``_s`` seconds, ``_ms``, ``_bytes``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if key.endswith("_s"):
        return format_duration(value)
    if key.endswith("_ms"):
        return f"{value:g} ms"
    if key.endswith("_bytes"):
        return f"{value:,} bytes"
    return f"{value:.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


def one_line(text: str, width: int = 160) -> str:
    """First non-empty line of ``text``, cut to ``width`` characters for a list entry."""
    for line in (text or "").splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= width else line[: width - 1] + "…"
    return ""


def squash(text: str, width: int) -> str:
    """All of ``text`` on one line (a multi-line "got" is a label, then the lines), cut to ``width``."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def restates_failure(test: dict) -> bool:
    """True when ``message`` only repeats the structured ``failure`` (expected and got), as the engine's does."""
    failure = test.get("failure") or {}
    message = test.get("message") or ""
    expected, got = str(failure.get("expected") or ""), str(failure.get("got") or "")
    flat = " ".join(message.split())  # the engine indents the continuation lines of a multi-line "got"
    return bool(message and expected and got and " ".join(expected.split()) in flat and " ".join(got.split()) in flat)


def restates_reason(test: dict) -> bool:
    """True when ``message`` only repeats the profile's reason (xfail/skip messages often do)."""
    reason = (test.get("profile_reason") or "").strip()
    return bool(reason and reason in (test.get("message") or ""))


def headline(test: dict, width: int = 160) -> str:
    """One line saying why a test did not simply pass, for lists and CI logs ("" for a clean pass)."""
    failure = test.get("failure")
    if failure and (not test.get("message") or restates_failure(test)):
        step = f"{failure['step']}: " if failure.get("step") else ""
        if failure.get("level") in ("SHOULD", "MAY") and test.get("outcome") in ("warning", "behaviour"):
            step = f"{failure['level']} · {step}"
        return one_line(f"{step}expected {squash(str(failure.get('expected')), 70)}, "
                        f"got {squash(str(failure.get('got')), 70)}", width)
    message = test.get("message") or ""
    # The engine prefixes errors with the test id, which every list already shows.
    message = message.removeprefix(f"{test.get('id')}: ")
    if test.get("outcome") == "xpassed" and test.get("profile_reason") and not restates_reason(test):
        message = f"profile expected a deviation: {test['profile_reason']}"
    return one_line(message or test.get("profile_reason") or "", width)


def plural(n: int, word: str, plural_word: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural_word or word + 's')}"


def transcript_html(test: dict):
    """The transcript, escaped, with the failing step's exchange in <mark> (lines from failure.transcript_lines).

    Escaped in one piece around the marked lines, not line by line: one Markup per line was most of the time
    report.html took to render (tens of thousands of lines in a full run)."""
    from markupsafe import Markup, escape

    text = (test.get("transcript") or "").rstrip("\n")
    first, last = ((test.get("failure") or {}).get("transcript_lines") or [0, -1])[:2]
    lines = text.split("\n")
    low, high = max(first, 1), min(last, len(lines))  # 1-based, inclusive
    if low > high:
        return escape(text)
    parts = [escape("\n".join(lines[: low - 1]))] if low > 1 else []
    parts += [Markup('<mark class="failing">') + escape(line) + Markup("</mark>") for line in lines[low - 1 : high]]
    if high < len(lines):
        parts.append(escape("\n".join(lines[high:])))
    return Markup("\n").join(parts)
