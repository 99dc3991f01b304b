"""Protocol sessions: raw POP3 and IMAP conversations with deadlines, recorded in a Transcript."""

from __future__ import annotations

from harness.sessions.errors import ConnectionClosed, ProtocolError, ProtocolTimeout, SessionError
from harness.sessions.imap import IMAPResponse, IMAPSession, Untagged
from harness.sessions.pop3 import POP3Response, POP3Session
from harness.sessions.transcript import Entry, Transcript
from harness.targets.target_file import Endpoint

__all__ = [
    "ConnectionClosed", "Entry", "IMAPResponse", "IMAPSession", "POP3Response", "POP3Session", "ProtocolError",
    "ProtocolTimeout", "SessionError", "Transcript", "Untagged", "open_session",
]


def open_session(protocol: str, endpoint: Endpoint, *, name: str, transcript: Transcript | None = None,
                 timeout: float = 5.0, ca_file: str | None = None, source: str | None = None) -> IMAPSession | POP3Session:
    """Connect to `endpoint` ("imap" or "pop3") and read the greeting; TLS as the endpoint says."""
    classes = {"imap": IMAPSession, "pop3": POP3Session}
    if protocol not in classes:
        raise ValueError(f"unknown protocol {protocol!r}; use imap or pop3")
    return classes[protocol](endpoint.host, endpoint.port, tls=endpoint.tls, starttls=endpoint.starttls,
                             tls_verify=endpoint.tls_verify, ca_file=ca_file, name=name, transcript=transcript,
                             timeout=timeout, source=source, client_cert=endpoint.client_certificate)
