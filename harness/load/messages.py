"""The mail the load tests put on the server: seeded mailbox content and live deliveries.

Three size classes stand for what students receive: short text mails, mails with a
document attached, and mails with a large attachment (slides, scans). Medium and large
messages are multipart/mixed with the attachment as part 2, which the webmail reader
fetches on its own, as webmail does when a user clicks the attachment.

Headers the harness relies on:
  X-Mailharness-Seed: n   seeded message number n; `mailharness seed` counts these to top up
  X-Mailharness-Id: id    a delivery made during a load run; the ledger accounts for it
  X-Mailharness-Sent: t   the delivery's send time (Unix seconds), for new-mail notification latency
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass
from email.utils import formatdate

from harness.errors import ConfigError

SEED_HEADER = b"X-Mailharness-Seed"
ID_HEADER = b"X-Mailharness-Id"
SENT_HEADER = b"X-Mailharness-Sent"


@dataclass(frozen=True)
class SizeClass:
    text_bytes: int  # body text
    attachment_bytes: int  # decoded attachment size; 0 = single-part text/plain


SIZE_CLASSES = {
    "small": SizeClass(text_bytes=1_500, attachment_bytes=0),  # ~2 KB on the wire
    "medium": SizeClass(text_bytes=2_500, attachment_bytes=20_000),  # ~30 KB
    "large": SizeClass(text_bytes=4_000, attachment_bytes=250_000),  # ~345 KB
}
DEFAULT_SIZE_MIX = {"small": 70, "medium": 25, "large": 5}

WORDS = ["lecture", "seminar", "deadline", "exam", "room", "timetable", "library", "thesis", "draft", "essay", "group", "project", "reading", "list", "campus", "enrolment", "tutor", "lab", "report", "feedback", "module", "credit", "grade", "schedule", "please", "note", "tomorrow", "friday", "week", "registration", "portal", "password", "account", "office", "hours"]


def parse_size_mix(text: str) -> dict[str, int]:
    """'small=70,medium=25,large=5' -> {'small': 70, ...}; weights, not necessarily summing to 100."""
    mix: dict[str, int] = {}
    for part in text.split(","):
        name, sep, weight = part.strip().partition("=")
        if not sep or name not in SIZE_CLASSES or not weight.strip().isdigit():
            raise ConfigError(
                f"size mix {text!r}: write it as small=70,medium=25,large=5 (classes: {', '.join(SIZE_CLASSES)})"
            )
        mix[name] = int(weight)
    if not any(mix.values()):
        raise ConfigError(f"size mix {text!r}: at least one weight must be above 0")
    return mix


def size_class_for(n: int, mix: dict[str, int], seed: int) -> str:
    """The size class of seeded message n: random by weight, but the same on every run and account."""
    rng = random.Random(f"{seed}:{n}:size")
    names = [name for name in SIZE_CLASSES if mix.get(name)]
    return rng.choices(names, weights=[mix[name] for name in names])[0]


def _text(rng: random.Random, size: int) -> bytes:
    words, length = [], 0
    while length < size:
        line = " ".join(rng.choices(WORDS, k=11)).capitalize() + "."
        words.append(line)
        length += len(line) + 2
    return "\r\n".join(words).encode() + b"\r\n"


def _body(rng: random.Random, size: SizeClass) -> tuple[bytes, bytes]:
    """(extra headers, body) for a size class."""
    text = _text(rng, size.text_bytes)
    if not size.attachment_bytes:
        return b"Content-Type: text/plain; charset=us-ascii\r\n", text
    boundary = b"=_mailharness_%08x" % rng.getrandbits(32)
    encoded = base64.encodebytes(rng.randbytes(size.attachment_bytes)).replace(b"\n", b"\r\n")
    body = (
        b"This is a multi-part message in MIME format.\r\n\r\n--" + boundary + b"\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + text + b"\r\n--" + boundary + b"\r\n"
        b"Content-Type: application/pdf; name=\"handout.pdf\"\r\n"
        b"Content-Disposition: attachment; filename=\"handout.pdf\"\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"\r\n--" + boundary + b"--\r\n"
    )
    headers = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n"
    return headers, body


def seed_message(n: int, size_name: str, seed: int) -> bytes:
    """Seeded message n: identical bytes on every account and every run (CRLF line ends)."""
    rng = random.Random(f"{seed}:{n}:body")
    extra, body = _body(rng, SIZE_CLASSES[size_name])
    subject = " ".join(rng.choices(WORDS, k=5)).capitalize()
    headers = (
        f"From: Registry <registry@mailharness.test>\r\n"
        f"To: Students <students@mailharness.test>\r\n"
        f"Subject: [{n}] {subject}\r\n"
        f"Date: {formatdate(1_700_000_000 + n * 3600)}\r\n"
        f"Message-ID: <seed-{seed}-{n}@mailharness.test>\r\n"
    ).encode()
    return headers + SEED_HEADER + b": %d\r\n" % n + extra + b"\r\n" + body


class DeliveryFactory:
    """Live deliveries: unique id and send time in the headers; bodies built once per size class."""

    def __init__(self, mix: dict[str, int], seed: int = 0):
        self.mix = {k: v for k, v in mix.items() if v}
        self.rng = random.Random(seed or None)
        self._bodies = {name: _body(random.Random(name), SIZE_CLASSES[name]) for name in self.mix}

    def message(self, message_id: str, sent_at: float) -> bytes:
        name = self.rng.choices(list(self.mix), weights=list(self.mix.values()))[0]
        extra, body = self._bodies[name]
        headers = (
            f"From: Lecturer <lecturer@mailharness.test>\r\n"
            f"To: Student <student@mailharness.test>\r\n"
            f"Subject: Course update {message_id}\r\n"
            f"Date: {formatdate(sent_at)}\r\n"
            f"Message-ID: <{message_id}@mailharness.test>\r\n"
        ).encode()
        return (
            headers
            + ID_HEADER + b": " + message_id.encode() + b"\r\n"
            + SENT_HEADER + b": %.6f\r\n" % sent_at
            + extra + b"\r\n" + body
        )
