"""What a protocol session raises. These are test outcomes (the server misbehaved), not user errors."""


class SessionError(Exception):
    """Base of everything a POP3/IMAP/LMTP session raises."""


class ProtocolError(SessionError):
    """The server answered wrongly: refused connection, malformed or over-long response, unexpected close."""


class ConnectionClosed(ProtocolError):
    """The server closed the connection while we were waiting for it."""


class ProtocolTimeout(SessionError):
    """No (complete) response before the deadline."""


class ResponseTooLarge(ProtocolError):
    """More than the harness keeps for one answer (a body, or untagged responses, without end): memory stays bounded."""
