"""Real-world-shaped test messages, addressable by name from suites.

Stored as ``messages/<name>.eml`` with LF line ends; `message()` gives the exact bytes a test
APPENDs or delivers (CRLF line ends). ``large`` is generated here rather than stored.
Every message has Message-ID, Date, From, To, Subject and ``X-Mailharness-Corpus: <name>``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from email.header import Header
from functools import cache
from pathlib import Path

MESSAGES_DIR = Path(__file__).with_name("messages")
GENERATED = ("large",)


def names() -> list[str]:
    return list(_names())


@cache
def _names() -> tuple[str, ...]:
    return tuple(sorted([*(p.stem for p in MESSAGES_DIR.glob("*.eml")), *GENERATED]))


def message(name: str, *, subject: str | None = None,
            extra_headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None) -> bytes:
    """The message called `name`, CRLF line ends.

    `subject` replaces the Subject field (RFC 2047-encoded if not ASCII); `extra_headers` are
    added at the end of the header. Nothing else changes, byte for byte.
    """
    data = _base(name)
    if subject is not None:
        data = _replace_subject(data, subject)
    if extra_headers:
        pairs = extra_headers.items() if isinstance(extra_headers, Mapping) else extra_headers
        data = _add_headers(data, list(pairs))
    return data


@cache
def _base(name: str) -> bytes:
    if name == "large":
        return _large()
    path = MESSAGES_DIR / f"{name}.eml"
    if not path.is_file():
        raise KeyError(f"no corpus message {name!r}; known: {', '.join(names())}")
    return path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _header_end(data: bytes) -> int:
    """Index just past the header's last line end, i.e. where the blank line starts."""
    return data.index(b"\r\n\r\n") + 2


def _replace_subject(data: bytes, subject: str) -> bytes:
    if "\r" in subject or "\n" in subject:
        raise ValueError("a subject cannot contain CR or LF")
    end = _header_end(data)
    # The field and its folded continuation lines.
    m = re.search(rb"^Subject:.*\r\n(?:[ \t].*\r\n)*", data[:end], re.IGNORECASE | re.MULTILINE)
    if not m:
        raise ValueError("the message has no Subject field")
    encoded = subject if subject.isascii() else Header(subject, "utf-8").encode(linesep="\r\n")
    field = f"Subject: {encoded}\r\n".encode("ascii")
    return data[:m.start()] + field + data[m.end():]


def _add_headers(data: bytes, pairs: list[tuple[str, str]]) -> bytes:
    fields = []
    for name, value in pairs:
        if not re.fullmatch(r"[!-9;-~]+", name) or "\r" in value or "\n" in value:
            raise ValueError(f"not a valid header field: {name!r}: {value!r}")
        fields.append(f"{name}: {value}\r\n".encode())
    end = _header_end(data)
    return data[:end] + b"".join(fields) + data[end:]


def _large() -> bytes:
    """About 400 KB: multipart/mixed with a short text part and a big base64 part of numbered lines."""
    payload = b"".join(
        b"%06d mailharness large corpus message: deterministic filler line\n" % n for n in range(1, 4301)
    )
    b64 = base64.b64encode(payload)
    encoded = b"\r\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))
    text = b"\r\n".join(f"Line {n} of the text part.".encode() for n in range(1, 41))
    return b"\r\n".join([
        b"Message-ID: <large.20241001000000.400k@example.com>",
        b"Date: Tue, 01 Oct 2024 00:00:00 +0000",
        b"From: Archive Service <archive@example.com>",
        b"To: Kim Archer <kim@example.com>",
        b"Subject: Monthly archive export (large attachment)",
        b"MIME-Version: 1.0",
        b'Content-Type: multipart/mixed; boundary="large-boundary-0001"',
        b"X-Mailharness-Corpus: large",
        b"",
        b"--large-boundary-0001",
        b"Content-Type: text/plain; charset=us-ascii",
        b"",
        text,
        b"",
        b"--large-boundary-0001",
        b'Content-Type: application/octet-stream; name="archive-2024-09.txt"',
        b'Content-Disposition: attachment; filename="archive-2024-09.txt"',
        b"Content-Transfer-Encoding: base64",
        b"",
        encoded,
        b"--large-boundary-0001--",
        b"",
    ])
