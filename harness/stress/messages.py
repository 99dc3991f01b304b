"""The mail of a stress run: small single-part and multipart messages, each with its own Message-ID.

The bytes of every appended message are known, so the model can hold the server to them (size,
whole body, header, partial fetches); delivered (LMTP) mail gains trace headers on the way in,
so for it only stability is checked.
"""

from __future__ import annotations

import random
from email.utils import formatdate

WORDS = ("exam", "lecture", "room", "draft", "thesis", "deadline", "library", "group", "lab", "report", "campus", "week")
DOMAIN = "stress.mailharness.test"


def message_id(run: str, mailbox: str, number: int) -> str:
    return f"<{run}.{number}.{mailbox}@{DOMAIN}>"


def make_message(rng: random.Random, msgid: str, when: float) -> bytes:
    """CRLF line ends throughout; one in three is multipart/mixed (BODYSTRUCTURE with parts, BODY[2])."""
    lines = [" ".join(rng.choices(WORDS, k=9)).capitalize() + "." for _ in range(rng.randint(3, 40))]
    text = ("\r\n".join(lines) + "\r\n").encode()
    headers = (
        f"From: Stress <stress@{DOMAIN}>\r\nTo: Mailbox <box@{DOMAIN}>\r\n"
        f"Subject: stress {rng.choice(WORDS)} {rng.randint(1, 10**6)}\r\nDate: {formatdate(when)}\r\n"
        f"Message-ID: {msgid}\r\n"
    ).encode()
    if rng.random() < 0.67:
        return headers + b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + text
    boundary = b"=_stress_%08x" % rng.getrandbits(32)
    attachment = b"".join(b"%064x\r\n" % rng.getrandbits(256) for _ in range(rng.randint(1, 60)))
    body = (b"--" + boundary + b"\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + text
            + b"--" + boundary + b"\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: 7bit\r\n\r\n" + attachment + b"--" + boundary + b"--\r\n")
    return headers + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n\r\n" + body


def header_of(message: bytes) -> bytes:
    """BODY[HEADER]: the header block with the blank line ending it."""
    end = message.find(b"\r\n\r\n")
    return message[: end + 4] if end >= 0 else message
