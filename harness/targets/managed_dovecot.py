"""A throwaway Dovecot on 127.0.0.1: the embedded default target.

Everything (config, passwd file, maildirs, sockets, logs) lives in one temp dir,
so several instances run side by side and stopping one leaves nothing behind.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from string import Template

from harness.errors import TargetUnavailable
from harness.targets.managed_server import ManagedServer, free_ports, tail, wait_port
from harness.targets.target_file import Account, Endpoint, Target

INSTALL_HINT = (
    "Dovecot is not installed. The embedded target needs Debian's packages:\n"
    "    apt-get update && apt-get install -y dovecot-imapd dovecot-pop3d dovecot-lmtpd\n"
    "(or run `make setup`), or point the harness at your own server with --target FILE."
)
TEMPLATE = Path(__file__).with_name("dovecot.conf.tmpl")
SPECIAL_MAILBOXES = (("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"), ("Junk", "\\Junk"))

# Where the embedded target departs from Debian's defaults to keep tests fast and folders at hand; with
# stock=True each setting keeps Debian's default (the comment says which), so the suites are also run against
# a Dovecot that delays failed logins and creates no folders of its own.
EMBEDDED_SETTINGS = {
    "auth_failure_delay": "# Test accounts need no brute-force brake; failed-login tests stay fast.\nauth_failure_delay = 0",
    "mailbox_auto": "    auto = subscribe",
    "anvil_penalty": ("  # No auth penalty: failed-login tests must not slow every later login from 127.0.0.1.\n"
                      "  unix_listener anvil-auth-penalty {\n    mode = 0\n  }"),
    # auth_failure_delay = 0 still answers a failed login at the auth process's next 500 ms tick; a failure
    # that carries the passdb field `nodelay` is answered at once. The same NO / -ERR [AUTH] as before.
    # A wrong password (PLAIN, LOGIN, USER/PASS) fails the passwd-file lookup and ends in the static passdb below;
    # a wrong APOP digest does not: APOP asks the passwd-file for the user's secret (a credentials lookup, which
    # succeeds) and the mechanism itself compares the digest, so its failure carries the passwd-file's fields.
    "failed_login": ("  default_fields = nodelay=yes\n"
                     "  result_failure = continue\n}\n"
                     "# a login the passwd-file refused ends here: failed, with nodelay\n"
                     "passdb {\n  driver = static\n  args = nopassword=y nodelay=yes\n  mechanisms = plain login apop\n  result_success = return-fail"),
    # A throwaway store needs no fsync (Dovecot's own advice for tests); and the imap/pop3 processes serve one
    # login after another instead of one each (all users are the mail user): a login then costs about 4 ms,
    # not 15. Neither changes a byte on the wire.
    "processes": ("mail_fsync = never\n"
                  "service imap {\n  service_count = 0\n  process_min_avail = 2\n}\n"
                  "service pop3 {\n  service_count = 0\n  process_min_avail = 2\n}"),
}
STOCK_SETTINGS = {
    "auth_failure_delay": "# auth_failure_delay: Debian's default, 2 s before a failed login is answered",
    "mailbox_auto": "    # no auto = ...: as in Debian's 15-mailboxes.conf, the folder exists once a client creates it",
    "anvil_penalty": "  # anvil's auth penalty as in Debian: the delay doubles per failed login from one IP, up to 15 s",
    "failed_login": "  # a refused login is answered after auth_failure_delay, as in Debian",
    "processes": "# mail_fsync and the imap/pop3 services as in Debian: fsync where it matters, a process per login",
}


# For `idle_clients` (mailharness bench --idle-users): an IMAP session idling longer than imap_hibernate_timeout
# moves to an imap-hibernate process (thousands per process, a few KB each) and its imap process exits, so the
# server holds tens of thousands of IDLE connections instead of one process each. Hibernating needs one inotify
# instance per session: fs.inotify.max_user_instances (Linux default 128) must exceed the IDLE connections.
IDLE_SETTINGS = """\
# Sized for {clients} IDLE connections (mailharness bench --idle-users).
imap_hibernate_timeout = 2 secs
service imap-hibernate {{
  client_limit = 5000
  process_limit = 50
}}
service imap {{
  # imap-hibernate (the internal user) hands a woken session back through this socket
  unix_listener imap-master {{
    user = $default_internal_user
  }}
}}
"""


def dovecot_binary() -> str:
    path = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)
    if not path:
        raise TargetUnavailable(INSTALL_HINT)
    return path


class ManagedDovecot(ManagedServer):
    """Start with ``with ManagedDovecot(accounts=20) as dc: dc.target``. Registered as "dovecot" (managed.py)."""

    PROFILE = "dovecot"
    INSTALL_HINT = INSTALL_HINT
    ROOT_PREFIX = "mailharness-dovecot-"

    def __init__(self, accounts: int = 40, *, quota_mb: int = 50, pop3_lock: bool = False, root: Path | None = None,
                 namespace_prefix: str = "", separator: str = "/", special_use_folders: bool = True, stock: bool = False,
                 tls: bool | str = False, idle_clients: int = 0):
        """`namespace_prefix`, `separator` and `special_use_folders` shape the personal namespace: the
        default is "" with "/" and auto-subscribed Sent/Drafts/Trash/Junk; ``"INBOX.", ".", False``
        plays a Cyrus-like server with no special-use folders (the tests run the suites against it).
        `stock`: Debian's defaults for failed-login delays (auth_failure_delay, anvil's penalty) and for
        special-use folders (declared, not auto-created); everything else as the embedded target.
        `tls`: imaps and pop3s besides STARTTLS/STLS on imap and pop3, `disable_plaintext_auth = yes` (so
        LOGINDISABLED before TLS), a throwaway CA in the target's ca_file (ManagedServer).
        `idle_clients`: size the server for that many concurrent IDLE connections (`mailharness bench
        --idle-users`): idling sessions hibernate, and the master gets file descriptors for them."""
        super().__init__(accounts, root=root, tls=tls)
        self.idle_clients = idle_clients
        self.stock = stock
        self.quota_mb = quota_mb
        self.pop3_lock = pop3_lock
        self.namespace_prefix = namespace_prefix
        self.separator = separator
        self.special_use_folders = special_use_folders

    # -- lifecycle -----------------------------------------------------------------
    def _start(self, timeout: float) -> Target:
        binary = dovecot_binary()
        if os.geteuid() != 0:
            raise TargetUnavailable("the embedded Dovecot runs as root (it switches to the mail user itself); run as root or give --target")
        imap_port, pop3_port, lmtp_port, imaps_port, pop3s_port = free_ports(5) if self.tls else [*free_ports(3), 0, 0]
        password = secrets.token_urlsafe(12)
        accounts = [Account(f"user{n}", password) for n in range(1, self.account_count + 1)]
        if self.tls:
            self._make_certs()
        self._write_files(imap_port, pop3_port, lmtp_port, accounts, imaps_port, pop3s_port)
        conf = self.root / "dovecot.conf"
        check = subprocess.run([shutil.which("doveconf") or "doveconf", "-c", str(conf), "-n"], capture_output=True, text=True)
        if check.returncode != 0:
            raise TargetUnavailable(f"generated Dovecot config is invalid: {check.stderr.strip()}")
        with open(self.root / "dovecot.stderr", "wb") as stderr:
            self.procs["dovecot"] = subprocess.Popen(
                [binary, "-c", str(conf), "-F"],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # our signals, not the terminal's
                preexec_fn=self._raise_fd_limit if self.idle_clients else None,
            )
        deadline = time.monotonic() + timeout
        for port in filter(None, (imap_port, pop3_port, lmtp_port, imaps_port, pop3s_port)):
            if not wait_port(port, deadline, lambda: self.proc.poll() is None) or self.proc.poll() is not None:
                log = "\n".join(filter(None, [self._stderr_tail(), self.log_tail()]))  # config errors go to stderr
                why = f"exited with status {self.proc.returncode}" if self.proc.poll() is not None else \
                    f"did not start listening on 127.0.0.1:{port} within {timeout:.0f}s"
                raise TargetUnavailable(f"Dovecot {why}\n{log}")
        self.target = Target(
            name=f"{'stock-settings' if self.stock else 'embedded'} Dovecot ({self.version()}){self._tls_label()}",
            accounts=accounts,
            **self._endpoints(imap_port, pop3_port, imaps_port, pop3s_port),
            lmtp=Endpoint("lmtp", "127.0.0.1", lmtp_port),
            profile="dovecot-lock" if self.pop3_lock else self.PROFILE,
            disposable=True,
        )
        return self.target

    def add_accounts(self, accounts: list[Account], timeout: float = 5.0) -> None:
        """Add accounts to the running server and return once each can log in over IMAP.

        Dovecot re-reads a changed passwd-file, but looks at it at most once a second
        (passwd_file_sync), so a login right after the write may still be refused."""
        from harness.sessions import IMAPSession, SessionError  # sessions import targets' types

        with open(self.root / "passwd", "a") as passwd:
            passwd.writelines(f"{a.user}:{a.password}\n" for a in accounts)
        deadline = time.monotonic() + timeout
        for account in accounts:
            while True:
                try:
                    with IMAPSession("127.0.0.1", self.target.imap.port, name="add-accounts", timeout=timeout) as imap:
                        imap.login(account.user, account.password)
                    break
                except SessionError:
                    if time.monotonic() > deadline:
                        raise TargetUnavailable(f"Dovecot did not accept the new account {account.user} within {timeout:.0f}s") from None
                    time.sleep(0.2)

    # -- helpers -------------------------------------------------------------------
    def version(self) -> str:
        out = subprocess.run([dovecot_binary(), "--version"], capture_output=True, text=True).stdout.split()
        return f"Dovecot {out[0]}" if out else "Dovecot"

    def log_tail(self, lines: int = 20) -> str:
        return tail(self.root / "dovecot.log", lines)

    def _stderr_tail(self, lines: int = 20) -> str:
        return tail(self.root / "dovecot.stderr", lines)

    def _write_files(self, imap_port: int, pop3_port: int, lmtp_port: int, accounts: list[Account],
                     imaps_port: int = 0, pop3s_port: int = 0) -> None:
        for sub in ("run", "state", "mail"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the mail and dovecot users must reach into it
        shutil.chown(self.root / "mail", "mail", "mail")
        passwd = self.root / "passwd"
        passwd.write_text("".join(f"{a.user}:{a.password}\n" for a in accounts))
        shutil.chown(passwd, "root", "dovecot")
        passwd.chmod(0o640)
        settings = STOCK_SETTINGS if self.stock else EMBEDDED_SETTINGS
        conf = Template(TEMPLATE.read_text()).substitute(
            root=self.root,
            instance=f"mailharness-{self.root.name}",
            imap_port=imap_port,
            pop3_port=pop3_port,
            lmtp_port=lmtp_port,
            imaps_port=imaps_port,
            pop3s_port=pop3s_port,
            ssl_settings=self._ssl_settings(),
            quota_kb=f"{self.quota_mb * 1024}k",
            pop3_lock="yes" if self.pop3_lock else "no",
            namespace_settings=f"  separator = {self.separator}\n" + (f"  prefix = {self.namespace_prefix}\n" if self.namespace_prefix else ""),
            special_mailboxes="".join(
                f"  mailbox {name} {{\n    special_use = {attr}\n{settings['mailbox_auto']}\n  }}\n" for name, attr in SPECIAL_MAILBOXES
            ) if self.special_use_folders else "",
            auth_failure_delay=settings["auth_failure_delay"],
            anvil_penalty=settings["anvil_penalty"],
            failed_login=settings["failed_login"],
            processes=settings["processes"],
            idle_settings=IDLE_SETTINGS.format(clients=self.idle_clients) if self.idle_clients else "",
        )
        (self.root / "dovecot.conf").write_text(conf)

    def _raise_fd_limit(self) -> None:
        """In the child, before exec: file descriptors for every IDLE client (a socket and an inotify
        instance each in imap-hibernate), as root may set them."""
        import resource

        needed = 2 * self.idle_clients + 10_000
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            if hard != resource.RLIM_INFINITY and hard < needed:
                resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))  # needs CAP_SYS_RESOURCE
            else:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # Dovecot then warns in its log about the limit it got
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def _ssl_settings(self) -> str:
        if not self.tls:
            return "ssl = no\ndisable_plaintext_auth = no"
        # As production runs it: TLS offered everywhere, plaintext authentication refused before it
        # (LOGINDISABLED; USER/PASS refused). Dovecot counts a connection whose remote address equals its
        # own as secure: the suites' own sessions connect from other 127.x addresses (login_delays.py).
        return (f"ssl = yes\nssl_cert = <{self.certs.cert}\nssl_key = <{self.certs.key}\nssl_ca = <{self.certs.ca}\n"
                "ssl_min_protocol = TLSv1.2\ndisable_plaintext_auth = yes")

    def _is_leftover(self, cmdline: bytes) -> bool:
        """Children outlive the master while clients hold connections; their argv names our instance."""
        return cmdline.startswith(f"dovecot-mailharness-{self.root.name}/".encode())  # how Dovecot names them (instance_name)


class ManagedDovecotInboxNamespace(ManagedDovecot):
    """Dovecot shaped like Cyrus's default: personal namespace "INBOX." with ".", and no special-use
    folders at all. Registered as "dovecot-inbox-ns" (managed.py); the suites must give the same verdicts
    on it as on "dovecot" (tests/test_namespace_variant.py)."""

    def __init__(self, accounts: int = 40, **options):
        options = {"namespace_prefix": "INBOX.", "separator": ".", "special_use_folders": False, **options}
        super().__init__(accounts, **options)


class StockDovecot(ManagedDovecot):
    """The managed Dovecot with Debian's defaults for failed logins and folders: registered as "dovecot-stock".

    Failed logins wait auth_failure_delay (2 s) and anvil's penalty; Sent, Drafts, Trash and Junk are declared
    special-use but not created. Same profile as the embedded target: nothing else differs."""

    def __init__(self, accounts: int = 40, **options):
        super().__init__(accounts, stock=True, **options)
