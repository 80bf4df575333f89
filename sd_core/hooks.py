"""`GenerationHooks`: what a caller of `StableDiffusionPipeline.generate` sees of a run while it
samples, and asks of it (progress, cancel, the filmstrip's trace, A1111's interrupt)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

# (steps done 1..N, N, the predicted x0 of that step (B, C, h, w))
ProgressCallback = Callable[[int, int, Tensor], None]
CancelCheck = Callable[[], bool]
# (steps done, N, the running latent x in sigma space, the predicted x0), after every step
TraceCallback = Callable[[int, int, Tensor, Tensor], None]


@dataclass(frozen=True)
class GenerationHooks:
    """What a caller sees of a run while it samples.

    on_step: progress after every step (see ProgressCallback).
    cancel: asked before every model call; True stops the run with GenerationCancelled.
    trace: sees the noisy latent and the predicted x0 after every step (the filmstrip).
    interrupt: asked after every step but the last; True ends the run there, keeping what it
        made: the images are that step's predicted x0, decoded (AUTOMATIC1111's interrupt),
        and the result's `interrupted_at` says after which step.
    """

    on_step: ProgressCallback | None = None
    cancel: CancelCheck | None = None
    trace: TraceCallback | None = None
    interrupt: CancelCheck | None = None


class Interrupted(Exception):  # noqa: N818 (a signal, not an error)
    """Raised out of a sampler's step callback to end the run at `step`; `denoised` is that
    step's predicted x0, (B, C, h, w) in the model's scaling."""

    def __init__(self, step: int, denoised: Tensor) -> None:
        super().__init__(f"interrupted after step {step}")
        self.step = step
        self.denoised = denoised


def interrupted_warning(interrupted: tuple[int, int] | None) -> tuple[str, ...]:
    """The warning a result carries when an interrupt ended its run after step `done` of
    `total` (`interrupted`; none when it ran to the end)."""
    if interrupted is None:
        return ()
    done, total = interrupted
    return (
        f"interrupted after step {done} of {total}: the image is the model's prediction at that "
        "step, only partly denoised",
    )
