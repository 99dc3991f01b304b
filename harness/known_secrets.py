"""Every password this process has seen, and the scrubber applied to whatever leaves the process.

The sessions mask what they send (harness/sessions/redact.py) and each test's transcript masks its
accounts' passwords; this is the last line of defence for everything else a server can make us
write: reports, Locust's statistics and logs, error messages, the terminal. A password is known as
soon as an ``Account`` holding it exists (target files, managed servers), in every process.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import html
import json
import logging
import re
import sys
from urllib.parse import quote

MASK = "***"

_MIN_DERIVED = 4  # shorter passwords are not scrubbed from everything (they would match everywhere)
_BASE64_TOKEN = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{8,}={0,2}")


def _forms(password: str) -> set[str]:
    """The password as a server or a file may show it: raw, IMAP quoted-string / JSON escaped,
    Python-repr escaped, HTML escaped, %-encoded. (Base64 is recognised by decoding, see scrub.)"""
    forms = {
        password,
        password.replace("\\", "\\\\").replace('"', '\\"'),  # IMAP quoted string (RFC 3501 §4.3)
        json.dumps(password)[1:-1],
        json.dumps(password, ensure_ascii=False)[1:-1],
        repr(password)[1:-1],
        html.escape(password),
        html.escape(password, quote=False),
        quote(password, safe=""),
    }
    return {f for f in forms if f}


class KnownSecrets:
    """Every password this process has loaded (target files, managed servers): the last line of defence,
    applied to whatever leaves the process (reports, Locust statistics, logs, the terminal)."""

    def __init__(self) -> None:
        self._passwords: set[str] = set()
        self._pattern: re.Pattern | None = None
        self._encoded: list[bytes] = []
        self._cores: list[str] | None = None  # see _base64_cores

    def add(self, password: str) -> None:
        # A password of one to three characters would mask that text everywhere (the test targets'
        # "b" in every "disposable"); the sessions still mask it where they send it.
        if len(password) >= _MIN_DERIVED and password not in self._passwords:
            self._passwords.add(password)
            self._pattern = None

    def __bool__(self) -> bool:
        return bool(self._passwords)

    def _compiled(self) -> re.Pattern:
        if self._pattern is None:
            forms = sorted({f for p in self._passwords for f in _forms(p)}, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(f) for f in forms))
            self._encoded = [p.encode("utf-8", "surrogateescape") for p in self._passwords]
            self._cores = _base64_cores(self._encoded)
        return self._pattern

    def scrub(self, text: str) -> str:
        """`text` with every known password masked, also inside base64 (SASL PLAIN, LOGIN) of any user."""
        if not self._passwords or not text:
            return text
        text = self._compiled().sub(MASK, text)
        if self._encoded and (self._cores is None or any(core in text for core in self._cores)):
            text = _BASE64_TOKEN.sub(self._mask_base64, text)
        return text

    def scrub_bytes(self, data: bytes) -> bytes:
        if not self._passwords or not data:
            return data
        return self.scrub(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")

    def _mask_base64(self, m: re.Match) -> str:
        token = m.group(0)
        try:
            decoded = base64.b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return token
        return MASK if any(p in decoded for p in self._encoded) else token


def _base64_cores(passwords: list[bytes]) -> list[str] | None:
    """What base64 text that decodes to a password must contain, for each of the three ways the password can
    sit in the 3-byte groups: the encoding of its whole groups. Text with none of these needs no decoding
    (a transcript's base64 attachment lines are thousands of tokens). None: a password too short to say."""
    cores = []
    for password in passwords:
        for offset in range(3):
            start = (3 - offset) % 3
            whole = (len(password) - start) // 3 * 3
            if whole <= 0:
                return None
            cores.append(base64.b64encode(password[start:start + whole]).decode("ascii"))
    return cores


SECRETS = KnownSecrets()


def scrub(text: str) -> str:
    return SECRETS.scrub(text)


def redacted_exception(exc: BaseException | None) -> BaseException | None:
    """`exc`, or one of the same type whose message has the known passwords masked."""
    if exc is None:
        return None
    text = str(exc)
    clean = SECRETS.scrub(text)
    if clean == text:
        return exc
    try:
        return type(exc)(clean)
    except Exception:  # noqa: BLE001 - an exception type with another signature
        return RuntimeError(clean)


class ScrubbingStream:
    """A text stream (sys.stdout, sys.stderr) that masks known passwords in what is written to it.

    Writes are masked one at a time: print() and pytest's terminal write whole lines, which is
    what a server's echo arrives in.
    """

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(SECRETS.scrub(text) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def scrubbed_terminal():
    """sys.stdout and sys.stderr mask known passwords while the block runs."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ScrubbingStream(sys.stdout), ScrubbingStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


class ScrubbingFilter(logging.Filter):
    """Masks known passwords in log records (Locust's log file and console)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if SECRETS:
            message = record.getMessage()
            clean = SECRETS.scrub(message)
            if clean != message or record.exc_info:
                if record.exc_info:  # the traceback text holds the exception's message
                    clean = SECRETS.scrub(message + "\n" + logging.Formatter().formatException(record.exc_info))
                    record.exc_info = record.exc_text = None
                record.msg, record.args = clean, None
        return True


def scrub_bytes(data: bytes) -> bytes:
    return SECRETS.scrub_bytes(data)
