"""TLS for every connection the harness opens: the one place that builds a client SSLContext, and the one
place that words a failed handshake.

Sessions, load users, seeding and delivery all call ``client_context`` (or ``endpoint_context``), so a
target's ``ca_file``, ``tls_verify: false`` and client certificate mean the same everywhere.
"""

from __future__ import annotations

import functools
import ssl

ClientCert = tuple[str, str | None]  # (certificate file, key file; None: the key is in the certificate file)


def client_context(verify: bool = True, ca_file: str | None = None, client_cert: ClientCert | None = None) -> ssl.SSLContext:
    """A client context: the system's trust store plus `ca_file`; hostname checked unless `verify` is False.

    Cached: loading the trust store costs milliseconds, and load users open thousands of connections. An
    SSLContext may be shared by any number of connections and threads. The key includes the SSLContext
    class, so a context made before gevent patched `ssl` (Locust) is not handed to a patched caller."""
    return _context(ssl.SSLContext, verify, ca_file, client_cert)


@functools.lru_cache(maxsize=64)
def _context(_kind: type, verify: bool, ca_file: str | None, client_cert: ClientCert | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if client_cert:
        ctx.load_cert_chain(client_cert[0], client_cert[1])
    return ctx


def endpoint_context(endpoint, ca_file: str | None) -> ssl.SSLContext:
    """The context for a target Endpoint (its tls_verify and client certificate) and the target's ca_file."""
    return client_context(endpoint.tls_verify, ca_file, endpoint.client_certificate)


# OpenSSL's verification results (X509_V_ERR_*) a user can act on, and what to do about each.
_VERIFY_HINTS = {
    10: "the server needs a renewed certificate",
    9: "the certificate is not valid yet: check the server's (and this machine's) clock",
    18: "the server's certificate is self-signed: give it (or the CA that signed it) as ca_file in the target file",
    19: "the chain ends in a self-signed CA this machine does not trust: give that CA as ca_file in the target file",
    20: "no trusted CA signed the certificate: give the CA's certificate as ca_file in the target file",
    21: "no trusted CA signed the certificate: give the CA's certificate as ca_file in the target file",
    62: "the certificate does not name the host the target file connects to: use a host name it lists",
    64: "the certificate does not name the IP address the target file connects to: use a host name it lists",
}


def failure_reason(exc: BaseException) -> str:
    """Why a TLS handshake failed, in words that say what to fix."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = _VERIFY_HINTS.get(exc.verify_code)
        return f"certificate verification failed: {exc.verify_message}" + (f" ({hint})" if hint else "")
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if reason == "WRONG_VERSION_NUMBER":  # a cleartext greeting where a TLS record was due
            reason += " (the port does not speak TLS from the first byte: for STARTTLS use imap:// or pop3:// with starttls: true)"
        elif "ALERT_CERTIFICATE_REQUIRED" in reason or "ALERT_HANDSHAKE_FAILURE" in reason:
            reason += " (the server may want a client certificate: client_cert in the target file)"
        return reason
    return str(exc) or type(exc).__name__
