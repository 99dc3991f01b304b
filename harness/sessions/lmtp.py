"""Delivering a message through LMTP (or SMTP) with the standard library: how tests put mail in a mailbox
the way a mail server would, as opposed to APPEND."""

from __future__ import annotations

import smtplib
import ssl
import time

from harness.sessions.errors import ProtocolError, ProtocolTimeout
from harness.targets.target_file import Endpoint
from harness.tls import endpoint_context

MAX_REPLY_LINES = 1000  # lines of one reply (EHLO/LHLO lists a dozen extensions)


class _ReplyLimits:
    """smtplib reads a reply's lines while they keep coming, whatever their number and however long it takes
    (its timeout ends only a read that gets nothing): each reply here gets the timeout and MAX_REPLY_LINES."""

    def getreply(self):
        if self.file is None:
            self.file = _LimitedLines(self.sock.makefile("rb"))
        self.file.start(self.timeout)
        return super().getreply()


class _LimitedLines:
    def __init__(self, file):
        self._file, self._lines, self._deadline, self._seconds = file, 0, 0.0, 0.0

    def start(self, seconds: float | None) -> None:
        self._lines, self._seconds = 0, seconds or 0.0
        self._deadline = time.monotonic() + seconds if seconds else 0.0

    def readline(self, size: int = -1) -> bytes:
        self._lines += 1
        if self._lines > MAX_REPLY_LINES:  # OSError: smtplib closes and raises SMTPServerDisconnected
            raise OSError(f"more than {MAX_REPLY_LINES} lines in one reply")
        if self._deadline and time.monotonic() > self._deadline:
            raise OSError(f"no complete reply within {self._seconds:g} s")
        return self._file.readline(size)

    def close(self) -> None:
        self._file.close()


class _LMTP(_ReplyLimits, smtplib.LMTP):
    pass


class _SMTP(_ReplyLimits, smtplib.SMTP):
    pass


def recipient(user: str) -> str:
    """The address that reaches an account: its name, or name@localhost when it has no domain."""
    return user if "@" in user else f"{user}@localhost"


def deliver(endpoint: Endpoint, recipient: str, message: bytes, *, sender: str = "mailharness@localhost",
            timeout: float = 5.0, ca_file: str | None = None) -> None:
    """Deliver `message` to `recipient` at an lmtp:// or smtp:// endpoint; ProtocolError if it is refused."""
    if endpoint.scheme not in ("lmtp", "smtp"):
        raise ValueError(f"cannot deliver through {endpoint.url}; give an lmtp:// or smtp:// endpoint")
    client_class = _LMTP if endpoint.scheme == "lmtp" else _SMTP
    try:
        client = client_class(endpoint.host, endpoint.port, timeout=timeout)
    except TimeoutError:
        raise ProtocolTimeout(f"no greeting from {endpoint.url} within {timeout:g} s") from None
    except (OSError, smtplib.SMTPException) as exc:
        raise ProtocolError(f"cannot connect to {endpoint.url}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        if endpoint.starttls:
            client.starttls(context=endpoint_context(endpoint, ca_file))
        refused = client.sendmail(sender, [recipient], message)
        if refused:  # only possible with several recipients; kept for completeness
            raise ProtocolError(f"{endpoint.url} refused {recipient}: {refused}")
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = exc.recipients.get(recipient, (0, b""))
        raise ProtocolError(f"{endpoint.url} refused recipient {recipient}: {code} {_text(text)}") from None
    except smtplib.SMTPResponseException as exc:
        raise ProtocolError(
            f"{endpoint.url} rejected the delivery to {recipient}: {exc.smtp_code} {_text(exc.smtp_error)}") from None
    except TimeoutError:
        raise ProtocolTimeout(
            f"{endpoint.url} did not complete the delivery to {recipient} within {timeout:g} s") from None
    except (OSError, ssl.SSLError, smtplib.SMTPException) as exc:
        raise ProtocolError(f"delivery to {recipient} through {endpoint.url} failed: {exc}") from None
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
