"""Real servers delay failed logins; the suites must wait for that, and must not let it slow the rest of a run.

Measured on Dovecot 2.3.19.1 with Debian's defaults (`mailharness run --server dovecot-stock`): a wrong
password is answered after auth_failure_delay, 2.0 s; the next login from the same address, right or wrong,
then waits again for anvil's auth penalty (4.0 s, and 6.0 s for a second failure in a row; Dovecot's cap is
15 s) until a login from that address succeeds. Penalties are per client IP, and shared by IMAP and POP3.

So:
* a step that sends credentials (PASS, APOP, AUTH, LOGIN, AUTHENTICATE) may take up to LOGIN_WAIT seconds;
  so may the harness's own logins (it cannot know whether another test just failed one from its address);
* the sessions that send the wrong credentials, the ones a test logs in itself (`login: false`), connect
  from an address of their own when the target is on loopback (any 127.x.y.z reaches a server on
  127.0.0.1 on Linux), so the penalty they earn stays with them and never reaches the other tests' logins.
  Against a remote target that is not possible: there a failed-login test delays the next login from this
  machine by some seconds (the login timeout covers it), and the suites keep wrong-password logins few.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket

LOGIN_WAIT = 25.0  # seconds: Dovecot's 15 s penalty cap plus its 2 s failure delay, with room for a busy machine
CREDENTIAL_VERBS = {"PASS", "APOP", "AUTH", "LOGIN", "AUTHENTICATE"}

# 127.<block>.<hi>.<lo>: a block per process, so two runs (or xdist workers) on one machine do not share addresses
_BLOCK = 16 + os.getpid() % 200
_counter = itertools.count()


def sends_credentials(command_line: str, protocol: str) -> bool:
    """Does this suite command line carry credentials a server may answer slowly?"""
    words = command_line.split()
    if protocol == "imap":  # "<tag> LOGIN ..." is written without the tag in suites
        words = words[:1]
    return bool(words) and words[0].upper() in CREDENTIAL_VERBS


def login_timeout(step_timeout: float) -> float:
    return max(step_timeout, LOGIN_WAIT)


def own_source_address(host: str) -> str | None:
    """A fresh loopback address to connect from when `host` is on loopback (IPv4), else None."""
    if not _is_loopback(host):
        return None
    n = next(_counter) % (254 * 254)
    return f"127.{_BLOCK}.{1 + n // 254}.{1 + n % 254}"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 4 and ipaddress.ip_address(host).is_loopback
    except ValueError:
        if host != "localhost":
            return False
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False
