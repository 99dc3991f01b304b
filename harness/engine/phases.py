"""Where a test's time goes: set-up, connecting (and logging in), steps, waits, clean-up.

Each SuiteItem keeps one PhaseClock; its totals land in results.json (`tests[].phases`) and
`mailharness run --durations N` prints them (harness/reports/durations.py). Waits are the time a step
spends waiting for something the server does on its own (an `await`'s untagged responses, a `sleep:`);
steps are the rest of the call, the commands and their answers.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

PHASES = ("setup", "connect", "steps", "waits", "cleanup")


class PhaseClock:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def take(self, name: str, seconds: float) -> None:
        """Move `seconds` out of phase `name`'s total (they were counted inside it, as another phase)."""
        self.seconds[name] = max(0.0, self.seconds.get(name, 0.0) - seconds)

    def rounded(self) -> dict[str, float]:
        return {name: round(self.seconds[name], 4) for name in PHASES if name in self.seconds}
