"""What every managed server shares: a temp dir, its processes, start-with-cleanup, stop, detach.

A subclass writes its config and starts its daemons in ``_start`` (each Popen goes into
``self.procs``) and says which processes are its own in ``_is_leftover``; the base makes
sure that a failed start, a stop, or a `mailharness target down` leaves no process and no
file behind. The registry of servers by name is managed.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness.targets.target_file import Target


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

    def __init__(self, accounts: int = 40, *, root: Path | None = None):
        self.account_count = accounts
        self._own_root = root is None
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix=self.ROOT_PREFIX, dir=self._temp_parent()))
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

    def _temp_parent(self) -> str | None:
        """Where the temp dir goes (None: the system's temp dir)."""
        return None

    # -- lifecycle -----------------------------------------------------------------
    def start(self, timeout: float | None = None) -> Target:
        try:
            return self._start(self.START_TIMEOUT if timeout is None else timeout)
        except BaseException:
            self.stop()  # no temp dir or half-started server left behind
            raise

    def stop(self, timeout: float = 10.0) -> None:
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
