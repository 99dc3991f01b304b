"""A throwaway Cyrus IMAP 3.6 on 127.0.0.1: IMAP, POP3, LMTP, quota and IDLE (idled).

Config, sasldb, mail spool and databases live in one temp dir. The settings are
Debian 12's stock ones (namespace "INBOX." with "."); see cyrus-imapd.conf.tmpl.

Debian's cyrus-imapd and cyrus-pop3d conflict with dovecot-imapd, so install-cyrus.sh
unpacks them into CYRUS_ROOT (no maintainer scripts) beside the installed cyrus-common,
whose master, lmtpd and ctl_cyrusdb this uses.
"""

from __future__ import annotations

import imaplib
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
from harness.tls import client_context

HERE = Path(__file__).parent
INSTALL_SCRIPT = HERE / "install-cyrus.sh"
CYRUS_ROOT = Path(os.environ.get("MAILHARNESS_CYRUS_ROOT", "/opt/mailharness/cyrus"))
LIBEXEC = Path("/usr/lib/cyrus/bin")  # from cyrus-common: master, lmtpd, ctl_cyrusdb
SASLPASSWD = "/usr/sbin/saslpasswd2"
INSTALL_HINT = (
    "Cyrus IMAP is not installed for mailharness. As root, run `make apt-cyrus` in the mailharness checkout, or\n"
    f"    sh {INSTALL_SCRIPT}\n"
    "(apt-get install cyrus-common cyrus-admin cyrus-clients sasl2-bin, then cyrus-imapd and cyrus-pop3d unpacked into\n"
    f"{CYRUS_ROOT}, since they conflict with dovecot-imapd). Or point the harness at your own server with --target FILE."
)
ADMIN = "cyrus"
CONFIG_DIRS = ("db", "proc", "socket", "log", "msg", "user", "quota", "lock", "sync", "sieve")
HASHED = ("user", "quota")  # what `cyrus makedirs` gives a..z subdirectories


def _installed_common_version() -> str | None:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Version}", "cyrus-common"],
                         capture_output=True, text=True)
    status, _, version = out.stdout.partition(" ")
    return version.strip() if out.returncode == 0 and status.startswith("ii") else None


def cyrus_binaries() -> dict[str, Path]:
    """The programs this target runs; TargetUnavailable with the install hint when any is missing or mismatched."""
    bin_dir = CYRUS_ROOT / "usr/lib/cyrus/bin"
    paths = {
        "imapd": bin_dir / "imapd", "pop3d": bin_dir / "pop3d", "idled": bin_dir / "idled",
        "master": LIBEXEC / "master", "lmtpd": LIBEXEC / "lmtpd", "ctl_cyrusdb": LIBEXEC / "ctl_cyrusdb",
        "saslpasswd2": Path(SASLPASSWD),
    }
    missing = [str(p) for p in paths.values() if not os.access(p, os.X_OK)]
    if missing:
        raise TargetUnavailable(f"{INSTALL_HINT}\n(missing: {', '.join(missing)})")
    unpacked = (CYRUS_ROOT / "VERSION").read_text().strip() if (CYRUS_ROOT / "VERSION").exists() else None
    common = _installed_common_version()
    if unpacked != common:
        raise TargetUnavailable(
            f"{INSTALL_HINT}\n(the unpacked cyrus-imapd is {unpacked or 'of unknown version'} but cyrus-common is {common}: "
            "they must match; the install script re-unpacks)"
        )
    return paths


class ManagedCyrus(ManagedServer):
    """Start with ``with ManagedCyrus(accounts=20) as cy: cy.target``. Registered as "cyrus" (managed.py)."""

    PROFILE = "cyrus"
    INSTALL_HINT = INSTALL_HINT
    ROOT_PREFIX = "mailharness-cyrus-"
    START_TIMEOUT = 20.0
    TERM_PROCESS_GROUP = False  # the master signals its children and exits

    def __init__(self, accounts: int = 40, *, quota_mb: int = 50, root: Path | None = None, tls: bool | str = False):
        super().__init__(accounts, root=root, tls=tls)

        self.quota_mb = quota_mb
        self._admin_password = ""

    # -- lifecycle -----------------------------------------------------------------
    def _start(self, timeout: float) -> Target:
        binaries = cyrus_binaries()
        if os.geteuid() != 0:
            raise TargetUnavailable("the managed Cyrus runs as root (its master switches to the cyrus user); run as root or give --target")
        imap_port, pop3_port, lmtp_port, imaps_port, pop3s_port = free_ports(5) if self.tls else [*free_ports(3), 0, 0]
        password = secrets.token_urlsafe(12)
        self._admin_password = secrets.token_urlsafe(12)
        accounts = [Account(f"user{n}", password) for n in range(1, self.account_count + 1)]
        if self.tls:
            self._make_certs()
        self._write_files(binaries, imap_port, pop3_port, lmtp_port, imaps_port, pop3s_port)
        self._set_passwords([Account(ADMIN, self._admin_password), *accounts])
        with open(self.root / "master.stderr", "wb") as stderr:
            self.procs["master"] = subprocess.Popen(
                [str(binaries["master"]), "-l", "512", "-C", str(self.root / "imapd.conf"), "-M", str(self.root / "cyrus.conf"),
                 "-p", str(self.root / "master.pid")],
                stdout=stderr, stderr=stderr,
                start_new_session=True,  # our signals, not the terminal's
            )
        deadline = time.monotonic() + timeout
        for port in filter(None, (imap_port, pop3_port, lmtp_port, imaps_port, pop3s_port)):
            if not wait_port(port, deadline, lambda: self.proc.poll() is None) or self.proc.poll() is not None:
                why = f"exited with status {self.proc.returncode}" if self.proc.poll() is not None else \
                    f"did not start listening on 127.0.0.1:{port} within {timeout:.0f}s"
                raise TargetUnavailable(f"Cyrus master {why}\n{self._stderr_tail()}")
        self.target = Target(
            name=f"managed Cyrus IMAP ({self.version()}){self._tls_label()}",
            accounts=accounts,
            **self._endpoints(imap_port, pop3_port, imaps_port, pop3s_port),
            lmtp=Endpoint("lmtp", "127.0.0.1", lmtp_port),
            profile=self.PROFILE,
            disposable=True,
        )
        self._create_mailboxes(accounts)
        return self.target

    def add_accounts(self, accounts: list[Account], timeout: float = 5.0) -> None:
        """Add accounts to the running server (sasldb entries, INBOX and quota); they can log in on return."""
        self._set_passwords(accounts)
        self._create_mailboxes(accounts)

    # -- helpers -------------------------------------------------------------------
    def version(self) -> str:
        return f"Cyrus IMAP {(_installed_common_version() or '').split('-')[0]}".strip()

    def _stderr_tail(self, lines: int = 20) -> str:
        return tail(self.root / "master.stderr", lines)

    def _write_files(self, binaries: dict[str, Path], imap_port: int, pop3_port: int, lmtp_port: int,
                     imaps_port: int = 0, pop3s_port: int = 0) -> None:
        self.root.chmod(0o755)  # the cyrus user must reach into it
        config, spool = self.root / "config", self.root / "spool"
        for sub in CONFIG_DIRS:
            (config / sub).mkdir(parents=True, exist_ok=True)
        for sub in HASHED:
            for letter in "abcdefghijklmnopqrstuvwxyz":
                (config / sub / letter).mkdir(exist_ok=True)
        (spool / "stage.").mkdir(parents=True, exist_ok=True)
        values = {
            "root": self.root, "admin": ADMIN, "syslog_prefix": f"mailharness-{self.root.name}",
            "imapd_conf": self.root / "imapd.conf", "bin": binaries["imapd"].parent, "libexec": binaries["lmtpd"].parent,
            "imap_port": imap_port, "pop3_port": pop3_port, "lmtp_port": lmtp_port,
            "tls_settings": self._tls_settings(), "tls_services": self._tls_services(binaries, imaps_port, pop3s_port),
        }
        (self.root / "imapd.conf").write_text(Template((HERE / "cyrus-imapd.conf.tmpl").read_text()).substitute(values))
        (self.root / "cyrus.conf").write_text(Template((HERE / "cyrus.conf.tmpl").read_text()).substitute(values))
        for path in (config, spool, *config.rglob("*"), *spool.rglob("*")):
            shutil.chown(path, "cyrus", "mail")
        if self.certs:  # imapd and pop3d read the key as the cyrus user
            for path in (self.certs.cert, self.certs.key):
                shutil.chown(path, "cyrus", "mail")

    def _tls_settings(self) -> str:
        if not self.tls:
            return "allowplaintext: yes"
        # harness (TLS): as production runs it, no cleartext passwords before TLS (LOGINDISABLED; POP3 USER refused)
        return (f"allowplaintext: no\ntls_server_cert: {self.certs.cert}\ntls_server_key: {self.certs.key}\n"
                f"tls_client_ca_file: {self.certs.ca}\ntls_versions: tls1_2 tls1_3")

    def _tls_services(self, binaries: dict[str, Path], imaps_port: int, pop3s_port: int) -> str:
        if not self.tls:
            return ""
        conf, bin_dir = self.root / "imapd.conf", binaries["imapd"].parent
        return (f'  imaps cmd="{bin_dir}/imapd -s -C {conf} -U 30" listen="127.0.0.1:{imaps_port}" prefork=0 maxchild=100\n'
                f'  pop3s cmd="{bin_dir}/pop3d -s -C {conf} -U 30" listen="127.0.0.1:{pop3s_port}" prefork=0 maxchild=50\n')

    def _set_passwords(self, accounts: list[Account]) -> None:
        sasldb = self.root / "sasldb2"
        for account in accounts:  # the realm must equal servername, or logins fail
            subprocess.run([SASLPASSWD, "-p", "-c", "-f", str(sasldb), "-u", "localhost", account.user],
                           input=account.password.encode(), check=True, capture_output=True)
        shutil.chown(sasldb, "cyrus", "mail")
        sasldb.chmod(0o640)

    def _create_mailboxes(self, accounts: list[Account]) -> None:
        """The admin creates each INBOX and sets its quota (the admin's namespace names it user.NAME)."""
        kb = self.quota_mb * 1024
        if self.tls:  # no cleartext LOGIN with TLS on, for the admin either
            imap = imaplib.IMAP4_SSL("127.0.0.1", self.target.imaps.port, timeout=30,
                                     ssl_context=client_context(True, str(self.certs.ca)))
        else:
            imap = imaplib.IMAP4("127.0.0.1", self.target.imap.port, timeout=30)
        try:
            imap.login(ADMIN, self._admin_password)
            for account in accounts:
                for command, args in (("CREATE", (f"user.{account.user}",)), ("SETQUOTA", (f"user.{account.user}", f"(STORAGE {kb})"))):
                    typ, data = imap._simple_command(command, *args)
                    if typ != "OK":
                        raise TargetUnavailable(f"Cyrus refused {command} user.{account.user}: {data}")
            imap.logout()
        except imaplib.IMAP4.error as exc:
            raise TargetUnavailable(f"Cyrus admin set-up failed: {exc}") from None

    def _is_leftover(self, cmdline: bytes) -> bool:
        """Children the master did not take down; each one's argv names our imapd.conf."""
        return str(self.root / "imapd.conf").encode() in cmdline.split(b"\0")
