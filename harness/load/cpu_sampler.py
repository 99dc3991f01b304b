"""CPU of the load generator and of the embedded server during a load run, sampled from /proc.

A capacity planner must tell "the generator was saturated" from "the server was": one Python
generator process tops out at one core, so a busiest process near 100% means more --workers (or
machines) are needed, while a server near all of its cores is the finding itself. Locust runs in
its own session (its --processes workers too) and so does the embedded Dovecot: a session's
processes are summed per sample. Linux only; elsewhere nothing is sampled.
"""

from __future__ import annotations

import csv
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

FIELDS = ["seconds", "generator_cores", "generator_busiest_core", "generator_processes", "server_cores", "machine_cores"]
CSV_NAME = "cpu.csv"


def session_ticks(session: int) -> dict[int, int]:
    """{pid: utime + stime in clock ticks} of every process in the session `session`."""
    out = {}
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 12 and int(fields[3]) == session:  # field 6 of stat: the session id
            out[int(pid)] = int(fields[11]) + int(fields[12])
    return out


def machine_ticks() -> int:
    """Busy clock ticks of all CPUs together since boot (/proc/stat: everything but idle and iowait)."""
    try:
        with open("/proc/stat", "rb") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return 0
    return sum(fields[:8]) - fields[3] - fields[4]


@dataclass
class CpuSummary:
    generator_cores_mean: float
    generator_cores_peak: float
    generator_busiest_core_peak: float  # the busiest single generator process, share of one core (90th percentile)
    server_cores_mean: float | None
    server_cores_peak: float | None
    cpus: int
    samples: int
    machine_cores_mean: float | None = None  # every process on the machine, ours and others'

    def verdict(self) -> str:
        """Which side bounded the run, in words for the report."""
        if self.generator_busiest_core_peak >= 0.9:
            return (f"the generator was saturated: its busiest process used {self.generator_busiest_core_peak:.0%} of a "
                    "core (one Python process tops out at one core); add --workers or generator machines")
        if self.server_cores_peak is not None and self.server_cores_peak >= 0.8 * self.cpus:
            return (f"the server was the bottleneck: it used up to {self.server_cores_peak:.1f} of this machine's "
                    f"{self.cpus} cores while the busiest generator process stayed at {self.generator_busiest_core_peak:.0%}")
        if self.machine_cores_mean is not None and self.machine_cores_mean >= 0.85 * self.cpus:
            return (f"the machine was: its {self.cpus} cores were {self.machine_cores_mean / self.cpus:.0%} busy on average, "
                    f"the generator using {self.generator_cores_mean:.2f} and "
                    + (f"the server {self.server_cores_mean:.2f} of them" if self.server_cores_mean is not None else "the rest other work")
                    + "; other processes took the CPU the server could have used")
        return (f"neither side was saturated: busiest generator process {self.generator_busiest_core_peak:.0%} of a core"
                + (f", server up to {self.server_cores_peak:.1f} of {self.cpus} cores" if self.server_cores_peak is not None else ""))


class CpuSampler:
    """Samples the generator's session (and the server's, if given) every `interval` seconds into cpu.csv."""

    def __init__(self, run_dir: Path, generator_session: int, server_session: int | None = None, interval: float = 2.0):
        self.path = run_dir / CSV_NAME
        self.generator_session, self.server_session = generator_session, server_session
        self.interval = interval
        self.rows: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        if os.path.exists("/proc/self/stat"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)

    def _run(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        started = time.monotonic()
        before_at, generator_before, machine_before = started, session_ticks(self.generator_session), machine_ticks()
        server_before = session_ticks(self.server_session) if self.server_session else {}
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            generator = session_ticks(self.generator_session)
            server = session_ticks(self.server_session) if self.server_session else {}
            machine = machine_ticks()
            elapsed = (now - before_at) * tick
            deltas = [ticks - generator_before.get(pid, ticks) for pid, ticks in generator.items()]
            row = {
                "seconds": round(now - started, 1),
                "generator_cores": round(sum(deltas) / elapsed, 3),
                "generator_busiest_core": round(max(deltas, default=0) / elapsed, 3),
                "generator_processes": len(generator),
                "server_cores": round(sum(t - server_before.get(p, t) for p, t in server.items()) / elapsed, 3)
                if self.server_session else "",
                "machine_cores": round((machine - machine_before) / elapsed, 3),
            }
            self.rows.append(row)
            before_at, generator_before, server_before, machine_before = now, generator, server, machine


def read_cpu_csv(run_dir: Path) -> list[dict]:
    path = run_dir / CSV_NAME
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def summarize(rows: list[dict]) -> CpuSummary | None:
    """Over the samples while the generator ran; the first (Locust starting up) is left out when there are more.
    The busiest process's figure is its 90th percentile, so one busy moment does not read as saturation."""
    rows = rows[1:] if len(rows) > 2 else rows
    if not rows:
        return None
    generator = [float(r["generator_cores"]) for r in rows]
    busiest = sorted(float(r["generator_busiest_core"]) for r in rows)
    server = [float(r["server_cores"]) for r in rows if r.get("server_cores") not in (None, "")]
    machine = [float(r["machine_cores"]) for r in rows if r.get("machine_cores") not in (None, "")]
    return CpuSummary(
        generator_cores_mean=sum(generator) / len(generator), generator_cores_peak=max(generator),
        generator_busiest_core_peak=busiest[min(len(busiest) - 1, int(0.9 * len(busiest)))],
        server_cores_mean=sum(server) / len(server) if server else None, server_cores_peak=max(server) if server else None,
        cpus=os.cpu_count() or 1, samples=len(rows), machine_cores_mean=sum(machine) / len(machine) if machine else None)
