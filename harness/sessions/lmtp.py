"""Delivering a message through LMTP (or SMTP) with the standard library: how tests put mail in a mailbox
the way a mail server would, as opposed to APPEND."""

from __future__ import annotations

import smtplib
import ssl

from harness.sessions.errors import ProtocolError, ProtocolTimeout
from harness.targets.target_file import Endpoint
from harness.tls import endpoint_context


def recipient(user: str) -> str:
    """The address that reaches an account: its name, or name@localhost when it has no domain."""
    return user if "@" in user else f"{user}@localhost"


def deliver(endpoint: Endpoint, recipient: str, message: bytes, *, sender: str = "mailharness@localhost",
            timeout: float = 5.0, ca_file: str | None = None) -> None:
    """Deliver `message` to `recipient` at an lmtp:// or smtp:// endpoint; ProtocolError if it is refused."""
    if endpoint.scheme not in ("lmtp", "smtp"):
        raise ValueError(f"cannot deliver through {endpoint.url}; give an lmtp:// or smtp:// endpoint")
    client_class = smtplib.LMTP if endpoint.scheme == "lmtp" else smtplib.SMTP
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
