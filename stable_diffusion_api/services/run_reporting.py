"""How a device worker follows one run: `RunTiming` (when each step ended, where the time went)
and `StepReporter` (the engine's step and cancel callbacks, feeding the progress hub).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from stable_diffusion_api.config import Settings
from stable_diffusion_api.services.generator import PreviewFn
from stable_diffusion_api.services.progress import ProgressHub


@dataclass
class RunTiming:
    """Step timestamps of one run: the first step also pays for loading and text encoding,
    so speed is measured from the first step's end to the last step's end."""

    started: float = field(default_factory=time.monotonic)
    first_step: float | None = None
    last_step: float | None = None
    steps: int = 0
    # Where the run's time went (schemas.GenerationTimings), in seconds.
    engine: float = 0.0
    reporting: float = 0.0
    saving: float = 0.0

    def step(self, step: int) -> None:
        now = time.monotonic()
        if self.first_step is None:
            self.first_step = now
        self.last_step, self.steps = now, step

    @property
    def step_seconds(self) -> float | None:
        if self.first_step is None or self.last_step is None:
            return None
        if self.steps < 2:
            return self.first_step - self.started
        return (self.last_step - self.first_step) / (self.steps - 1)

    def spent(self) -> dict[str, float]:
        """The columns of `Generation.timings`."""
        return {"engine_s": self.engine, "reporting_s": self.reporting, "saving_s": self.saving}


class StepReporter:
    """The engine's callbacks for one run: progress to the hub at most every
    `progress_interval_s` (the first and last step always), with a preview at least
    `preview_every` steps and `preview_interval_s` apart, and the cancel and interrupt checks.
    The time the engine waits for them is counted in `timing.reporting`."""

    def __init__(
        self,
        hub: ProgressHub,
        settings: Settings,
        job_id: int,
        timing: RunTiming,
        cancel_requested: Callable[[int], bool],
        interrupt_requested: Callable[[int], bool],
    ) -> None:
        self.hub, self.settings, self.job_id, self.timing = hub, settings, job_id, timing
        self._cancel_requested = cancel_requested
        self._interrupt_requested = interrupt_requested
        self._reported_at = 0.0
        self._preview_at = 0.0
        self._preview_step = 0

    def on_step(self, step: int, total: int, preview: PreviewFn) -> None:
        began = time.perf_counter()
        timing, settings = self.timing, self.settings
        timing.step(step)
        if step == 1 or step >= total or began - self._reported_at >= settings.progress_interval_s:
            self._reported_at = began
            # The first step also paid for loading: no ETA until a pure step is measured.
            self.hub.step(self.job_id, step, total, timing.step_seconds if step > 1 else None)
            if (
                step < total
                and step - self._preview_step >= settings.preview_every
                and began - self._preview_at >= settings.preview_interval_s
            ):
                self._preview_step, self._preview_at = step, began
                self.hub.preview_latent(self.job_id, preview(), step)
        timing.reporting += time.perf_counter() - began

    def should_cancel(self) -> bool:
        return self._timed(self._cancel_requested)

    def should_interrupt(self) -> bool:
        return self._timed(self._interrupt_requested)

    def _timed(self, asked: Callable[[int], bool]) -> bool:
        began = time.perf_counter()
        try:
            return asked(self.job_id)
        finally:
            self.timing.reporting += time.perf_counter() - began
