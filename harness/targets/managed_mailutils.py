"""A throwaway GNU Mailutils (imap4d + pop3d) on 127.0.0.1, as Debian 12 packages it.

Everything (configs, the virtdomain passwd file, the mbox homes, pid files, logs)
lives in one temp dir, so several instances run side by side and stopping one
leaves nothing behind. Mailutils has no QUOTA and no LMTP: the Target has no
delivery endpoint, and the suites store their mail with IMAP APPEND.

Login names are ``userN@localhost``: in daemon mode virtdomain splits the login
at ``@`` and looks the user up in ``passwd/<domain>``; a bare ``userN`` is refused.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
import warnings
from pathlib import Path
from string import Template

from harness.errors import TargetUnavailable
from harness.targets.managed_server import ManagedServer, free_ports, tail
from harness.targets.target_file import Account, Target

PACKAGES = "mailutils-imap4d mailutils-pop3d"
INSTALL_HINT = (
    "GNU Mailutils is not installed. The managed Mailutils target needs Debian's packages:\n"
    "    make apt-mailutils\n"
    f"(or, as root: apt-get update && apt-get install -y {PACKAGES}, behind a /usr/sbin/policy-rc.d\n"
    "that exits 101 so the packages' own daemons do not start on 0.0.0.0:143 and :110)."
)
TEMPLATE = Path(__file__).with_name("mailutils.conf.tmpl")
PROGRAMS = ("imap4d", "pop3d")
DOMAIN = "localhost"
MAIL_UID = MAIL_GID = 8  # Debian's `mail` user; virtdomain sessions run as root, files are group mail


def mailutils_binary(program: str) -> str:
    """The daemon from MAILHARNESS_MAILUTILS_SBIN (a source build, say) if set, else PATH, else /usr/sbin."""
    where = os.environ.get("MAILHARNESS_MAILUTILS_SBIN")
    if where:
        path = os.path.join(where, program) if os.access(os.path.join(where, program), os.X_OK) else None
    else:
        path = shutil.which(program) or (f"/usr/sbin/{program}" if os.path.exists(f"/usr/sbin/{program}") else None)
    if not path:
        raise TargetUnavailable(INSTALL_HINT + (f"\n(MAILHARNESS_MAILUTILS_SBIN={where} has no {program})" if where else ""))
    return path


def sha512_crypt(password: str) -> str:
    """A crypt(3) "$6$" hash, what Mailutils' `generic` authentication checks against."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # stdlib crypt: deprecated in 3.11, gone in 3.13
            import crypt
    except ImportError:
        crypt = None
    if crypt is not None:
        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))
    out = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _listens(pid: int | None, port: int) -> bool:
    """True when process `pid` (None: any process) holds the listening socket on 127.0.0.1:port."""
    inodes = set()
    try:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":  # 127.0.0.1, LISTEN
                inodes.add(f"socket:[{fields[9]}]")
        if pid is None or not inodes:
            return bool(inodes)
        return any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


class ManagedMailutils(ManagedServer):
    """Start with ``with ManagedMailutils(accounts=20) as mu: mu.target``."""

    PROFILE = "mailutils"
    INSTALL_HINT = INSTALL_HINT

    ROOT_PREFIX = "mailharness-mailutils-"

    def __init__(self, accounts: int = 40, *, quota_mb: int | None = None, root: Path | None = None,
                 tls: bool | str = False):
        # quota_mb is accepted like every managed server's, and unused: Mailutils has no QUOTA.
        super().__init__(accounts, root=root, tls=tls)


    # -- lifecycle -----------------------------------------------------------------
    def _start(self, timeout: float) -> Target:
        binaries = {program: mailutils_binary(program) for program in PROGRAMS}
        if os.geteuid() != 0:
            raise TargetUnavailable("the managed Mailutils runs as root (virtdomain sessions run as root); run as root or give --target")
        ports = dict(zip(PROGRAMS, free_ports(len(PROGRAMS))))
        implicit_ports = dict(zip(PROGRAMS, free_ports(len(PROGRAMS)))) if self.tls else {}
        password = secrets.token_urlsafe(12)
        accounts = [Account(f"user{n}@{DOMAIN}", password) for n in range(1, self.account_count + 1)]
        if self.tls:
            self._make_certs()
        self._write_files(ports, implicit_ports)
        self._write_accounts(accounts)
        for program, binary in binaries.items():
            conf = self.root / f"{program}.conf"
            lint = subprocess.run([binary, f"--config-file={conf}", "--config-lint"], capture_output=True, text=True)
            if lint.returncode != 0 or "ignoring" in lint.stderr:
                raise TargetUnavailable(f"generated {program} config is invalid:\n{lint.stderr.strip()}")
        for program, binary in binaries.items():
            with open(self.root / f"{program}.log", "wb") as log:
                self.procs[program] = subprocess.Popen(
                    [binary, f"--config-file={self.root / f'{program}.conf'}"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # our signals, not the terminal's; killpg takes its children
                )
        deadline = time.monotonic() + timeout
        for program, port in [*ports.items(), *implicit_ports.items()]:
            self._wait_listening(program, port, deadline, timeout)
        self.target = Target(
            name=f"managed GNU Mailutils ({self.version()}){self._tls_label()}",
            accounts=accounts,
            **self._endpoints(ports["imap4d"], ports["pop3d"], implicit_ports.get("imap4d"), implicit_ports.get("pop3d")),
            profile=self.PROFILE,
            disposable=True,
        )
        return self.target

    def _wait_listening(self, program: str, port: int, deadline: float, timeout: float) -> None:
        """Until the daemon itself listens on the port, not just anyone: free_ports has a race, and
        a daemon that lost it usually exits ("cannot open connection ... Address already in use")."""
        proc = self.procs[program]
        while True:
            if proc.poll() is not None:
                why = f"exited with status {proc.returncode}"
            elif _listens(proc.pid, port):
                return
            elif time.monotonic() > deadline:
                why = f"did not start listening on 127.0.0.1:{port} within {timeout:.0f}s"
                if _listens(None, port):
                    why += " (another process holds the port)"
            else:
                time.sleep(0.02)
                continue
            raise TargetUnavailable(f"Mailutils {program} {why}\n{self.log_tail(program)}")

    def add_accounts(self, accounts: list[Account], timeout: float = 5.0) -> None:
        """Add accounts to the running server; virtdomain reads the passwd file at every login.

        Each user name must be ``NAME@localhost``, the form that logs in."""
        for account in accounts:
            if not account.user.endswith(f"@{DOMAIN}"):
                raise TargetUnavailable(f"Mailutils account {account.user!r}: login names are NAME@{DOMAIN} (virtdomain)")
        self._write_accounts(accounts, append=True)

    # -- helpers -------------------------------------------------------------------
    def version(self) -> str:
        out = subprocess.run([mailutils_binary("imap4d"), "--version"], capture_output=True, text=True).stdout
        first = out.splitlines()[0] if out else ""
        return f"GNU Mailutils {first.rsplit(' ', 1)[-1]}" if "Mailutils" in first else "GNU Mailutils"

    def log_tail(self, program: str = "imap4d", lines: int = 20) -> str:
        return tail(self.root / f"{program}.log", lines)

    def _write_files(self, ports: dict[str, int], implicit_ports: dict[str, int] | None = None) -> None:
        for sub in ("run", "passwd", "home"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        for program, port in ports.items():
            tls = {"tls_settings": "", "tls_mode": "false", "implicit_server": ""}
            if self.tls:
                tls = {
                    "tls_settings": f"tls {{\n  ssl-certificate-file {self.certs.cert};\n  ssl-key-file {self.certs.key};\n}}",
                    "tls_mode": "required",  # STARTTLS/STLS before any authentication (LOGINDISABLED)
                    "implicit_server": f"server 127.0.0.1:{implicit_ports[program]} {{\n  tls-mode connection;\n  backlog 512;\n}}",
                }
            conf = Template(TEMPLATE.read_text()).substitute(root=self.root, program=program, port=port, **tls)
            (self.root / f"{program}.conf").write_text(conf)

    def _write_accounts(self, accounts: list[Account], append: bool = False) -> None:
        """passwd(5) lines; the home holds the mbox INBOX and the folders."""
        hashes: dict[str, str] = {}
        lines = []
        for account in accounts:
            name = account.user.removesuffix(f"@{DOMAIN}")
            home = self.root / "home" / name
            home.mkdir(exist_ok=True)
            os.chown(home, MAIL_UID, MAIL_GID)
            # An empty INBOX, as an MTA leaves it after the first delivery: imap4d answers an
            # APPEND to an INBOX file that does not exist yet with NO [TRYCREATE].
            inbox = home / "INBOX"
            inbox.touch(mode=0o600)
            os.chown(inbox, MAIL_UID, MAIL_GID)
            if account.password not in hashes:  # one hash per distinct password: crypt is slow on purpose
                hashes[account.password] = sha512_crypt(account.password)
            lines.append(f"{name}:{hashes[account.password]}:{MAIL_UID}:{MAIL_GID}:mailharness {name}:{home}:/bin/false\n")
        passwd = self.root / "passwd" / DOMAIN
        with open(passwd, "a" if append else "w") as f:
            f.writelines(lines)
        passwd.chmod(0o600)

    def _is_leftover(self, cmdline: bytes) -> bool:
        """Session processes that outlived their master; their argv names our config file."""
        return f"--config-file={self.root}/".encode() in cmdline
