"""The term-start load shape: users arrive over a ramp up to the peak (--users), then the peak holds
until --run-time. The ramp is the scenario's shape.ramp ("40%" of the run, or a duration),
smooth or in shape.steps equal plateaus (each plateau a measurable capacity level).
A scenario without shape: runs plain Locust style, --users at --spawn-rate, held to the end.
"""

from __future__ import annotations

import logging
import math

from locust import LoadTestShape

log = logging.getLogger("mailharness")


class TermStartShape(LoadTestShape):
    use_common_options = True  # --users, --spawn-rate and --run-time keep their meaning

    def tick(self):
        environment = self.runner.environment
        options = environment.parsed_options
        run = getattr(environment, "mailharness", None)
        peak = int(options.num_users or 1)
        spawn_rate = float(options.spawn_rate or 1)
        run_time = options.run_time
        elapsed = self.get_run_time()
        if run_time and elapsed >= run_time:
            return None
        shape = run.scenario.shape if run else None
        if shape is None:
            return peak, spawn_rate
        if isinstance(shape.ramp, str) and not run_time:
            if not getattr(self, "_warned", False):
                log.warning("shape.ramp %s is a share of --run-time, which is not set: spawning at --spawn-rate", shape.ramp)
                self._warned = True
            return peak, spawn_rate
        ramp = max(shape.ramp_seconds(run_time or 0), 0.001)
        if shape.steps <= 0:
            return peak, max(peak / ramp, 0.01)  # Locust spawns at this rate: a straight line to the peak
        step_length = ramp / shape.steps
        step = min(shape.steps, int(elapsed // step_length) + 1)
        users = math.ceil(peak * step / shape.steps)
        # Reach each plateau within a tenth of the step, so most of the step is measured at that level.
        return users, max(spawn_rate, peak / shape.steps / max(step_length * 0.1, 0.001))
