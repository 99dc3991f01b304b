"""What every managed server shares: a temp dir, its processes, start-with-cleanup, stop, detach.

A subclass writes its config and starts its daemons in ``_start`` (each Popen goes into
``self.procs``) and says which processes are its own in ``_is_leftover``; the base makes
sure that a failed start, a stop, or a `mailharness target down` leaves no process and no
file behind. The registry of servers by name is managed.py.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness.errors import ConfigError
from harness.targets.certificates import CertFiles
from harness.targets.target_file import TLS_MODES, Endpoint, Target


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out on 127.0.0.1 (closed again, so there is a small race)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_port(port: int, deadline: float, running: Callable[[], bool] = lambda: True) -> bool:
    """True once 127.0.0.1:port accepts a connection; False at the deadline or when `running` turns false."""
    while time.monotonic() < deadline and running():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def alive(pid: int) -> bool:
    """True while the process runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# A store on tmpfs needs this much room left, or the server goes to the system's temp dir instead.
SCRATCH_MIN_FREE = 1 << 30


def scratch_dir() -> str | None:
    """Where a throwaway server keeps its mail: tmpfs when there is one with room. On disk the server's own
    work was mostly the file system's (ext4 allocating inodes for each message, index and folder: half the
    embedded Dovecot's CPU in a suite run), and this mail is thrown away anyway. None: the system's temp dir."""
    shm = "/dev/shm"
    try:
        if os.access(shm, os.W_OK | os.X_OK) and shutil.disk_usage(shm).free >= SCRATCH_MIN_FREE:
            return shm
    except OSError:
        pass
    return None


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, or "" when there is none."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ManagedServer:
    """Base of the managed servers; use one as ``with Server(accounts=20) as s: s.target``."""

    PROFILE: str = ""
    INSTALL_HINT: str = ""
    ROOT_PREFIX = "mailharness-server-"
    START_TIMEOUT = 15.0
    # `target down` sends SIGTERM to each master's whole process group; False: to the master alone
    # (Cyrus' master signals its children itself).
    TERM_PROCESS_GROUP = True

    def __init__(self, accounts: int = 40, *, root: Path | None = None, tls: bool | str = False):
        """`tls`: False, or serve TLS with a throwaway CA (harness/targets/certificates.py) and refuse
        plaintext logins before it; the sessions use "implicit" TLS (True means this) or "starttls"."""
        self.tls = "implicit" if tls is True else tls or None
        if self.tls not in (None, *TLS_MODES):
            raise ConfigError(f"tls: {tls!r}; use one of {', '.join(TLS_MODES)}")
        self.certs: CertFiles | None = None
        self.account_count = accounts
        self._own_root = root is None
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix=self.ROOT_PREFIX, dir=scratch_dir()))
        self.procs: dict[str, subprocess.Popen] = {}
        self.target: Target | None = None

    @property
    def proc(self) -> subprocess.Popen | None:
        """The (first) master process."""
        return next(iter(self.procs.values()), None)

    # -- what a subclass provides ---------------------------------------------------
    def _start(self, timeout: float) -> Target:
        raise NotImplementedError

    def _is_leftover(self, cmdline: bytes) -> bool:
        """True for a process of this instance (by its NUL-separated argv)."""
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------------
    def start(self, timeout: float | None = None) -> Target:
        try:
            return self._start(self.START_TIMEOUT if timeout is None else timeout)
        except BaseException:
            self.stop()  # no temp dir or half-started server left behind
            raise

    # Seconds the masters get to exit on SIGTERM before their process groups are killed. A throwaway server
    # loses nothing it needs in a hard stop (its temp dir goes next); Dovecot's master takes a second to exit.
    STOP_GRACE = 0.25

    def stop(self, timeout: float | None = None) -> None:
        timeout = self.STOP_GRACE if timeout is None else timeout
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # each master takes its children with it
        for proc in self.procs.values():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # session children the master left running
            except OSError:
                pass
            proc.wait()
        self.procs = {}
        self._kill_leftovers()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- TLS -----------------------------------------------------------------------
    def _make_certs(self) -> CertFiles:
        """A CA and server certificate for this instance, in its temp dir (gone with it)."""
        self.certs = CertFiles.make(self.root / "tls")
        self.certs.directory.chmod(0o755)  # daemons that drop privileges read the certificate
        return self.certs

    def _endpoints(self, imap_port: int, pop3_port: int | None, imaps_port: int | None = None,
                   pop3s_port: int | None = None) -> dict:
        """The Target's IMAP and POP3 endpoints (and ca_file): cleartext without TLS; with TLS, the sessions
        use imaps/pop3s or STARTTLS on imap/pop3 as `self.tls` says, and the other ports stay known."""
        host = "127.0.0.1"
        plain = {"imap": Endpoint("imap", host, imap_port)}
        if pop3_port:
            plain["pop3"] = Endpoint("pop3", host, pop3_port)
        if not self.tls:
            return plain
        implicit = {"imaps": Endpoint("imaps", host, imaps_port, tls=True)}
        if pop3s_port:
            implicit["pop3s"] = Endpoint("pop3s", host, pop3s_port, tls=True)
        out = {**implicit, "tls_mode": self.tls, "ca_file": str(self.certs.ca)}
        if self.tls == "starttls":
            return {**out, **{proto: dataclasses.replace(ep, starttls=True) for proto, ep in plain.items()}}
        return {**out, **{proto: implicit[proto + "s"] for proto in plain}, "cleartext": plain}

    def _tls_label(self) -> str:
        return f" with TLS ({'STARTTLS' if self.tls == 'starttls' else 'implicit TLS'} for the sessions)" if self.tls else ""

    # -- detached use (`mailharness target up` / `down`) ------------------------------
    def detach(self) -> dict:
        """Leave the server running after this process exits; the dict lets `stop_detached` find it."""
        assert self.procs and self.target
        pids = [p.pid for p in self.procs.values()]
        return {"root": str(self.root), "pid": pids[0], "pids": pids, "target": self.target.to_dict()}

    @classmethod
    def stop_detached(cls, state: dict) -> None:
        server = cls(root=Path(state["root"]))
        server._own_root = True
        pids = [int(p) for p in state.get("pids") or [state["pid"]]]
        for pid in pids:
            try:
                (os.killpg if cls.TERM_PROCESS_GROUP else os.kill)(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.05)
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        server.stop()

    # -- helpers -------------------------------------------------------------------
    def _kill_leftovers(self) -> None:
        """Processes of this instance that outlived their master (clients still held connections)."""
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                cmdline = (pid_dir / "cmdline").read_bytes()
            except OSError:
                continue
            if self._is_leftover(cmdline):
                try:
                    os.kill(int(pid_dir.name), signal.SIGKILL)
                except OSError:
                    pass
