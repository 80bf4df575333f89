"""The `Generator` protocol: the service's only door to the engine.

Everything the service needs from sd_core goes through an object with these methods, so tests
inject a fake (queue mechanics without a model) and the real one (`SdCoreGenerator` in
`services/engine.py`) stays a thin adapter. All methods are blocking; only worker threads call
`generate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from sd_core.params import MAX_STEPS, GenerationParams
from sd_core.result import GenerationResult


class JobCanceled(Exception):
    """Raised out of `Generator.generate` when its `should_cancel` callable said so."""


@dataclass(frozen=True)
class DeviceSpec:
    """One device a pipeline can run on (mirrors sd_core.devices.DeviceInfo)."""

    id: str  # "cpu", "cuda:0", "mps"
    kind: str  # "cpu" | "cuda" | "mps"
    name: str
    total_memory: int | None  # bytes; RAM for the CPU and MPS
    free_memory: int | None
    cores: int | None
    compute_capability: str | None
    dtypes: tuple[str, ...]
    default_dtype: str


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # canonical, e.g. "euler_a"
    display_name: str  # AUTOMATIC1111's label, e.g. "Euler a"
    aliases: tuple[str, ...] = ()
    takes_schedule_type: bool = True  # whether a schedule type (Karras, …) may apply to it
    max_steps: int = MAX_STEPS  # the most steps it takes (LCM: 50)
    eta: float | None = None  # the eta it runs with (A1111's "Eta"); None: it has none
    eta_settable: bool = False  # whether it takes another eta (0 … 1)


@dataclass(frozen=True)
class CheckpointSpec:
    """What a checkpoint file is (sd_core.checkpoint.CheckpointInfo, minus the engine types)."""

    variant: str  # "sd-v1" | "sd-v1-inpainting"
    dtype: str
    parameters: dict[str, int]
    sha256: str
    short_hash: str
    native_size: int | None = None  # the size the model was trained at, when known


@dataclass(frozen=True)
class ModelSpec:
    """Which weights on which hardware: the key of a loaded pipeline."""

    checkpoint: Path
    model_name: str
    device: str
    dtype: str | None  # None → the device's default dtype
    low_memory: bool = False
    parameter_count: int | None = None  # sizes the pipeline cache; None → from the file size


@dataclass(frozen=True)
class JobSpec:
    """One generation, resolved: the model to run and the `GenerationParams` to run it with,
    plus the input images of img2img / inpainting."""

    model: ModelSpec
    params: GenerationParams
    init_image: Image.Image | None = None
    mask: Image.Image | None = None
    # Record the reverse process of image 0 at this many evenly spaced steps; 0 → none.
    filmstrip_frames: int = 0


@dataclass(frozen=True)
class FilmstripFrame:
    """One column of a filmstrip: the state after `step` of `total` sampler steps.

    sigma: the noise level left in the noisy latent (0 once it is gone; None when unknown).
    """

    step: int
    total: int
    sigma: float | None


@dataclass(frozen=True)
class Filmstrip:
    """The reverse process of image 0, kept from the run (sd_core.explorer, minus the tensors).

    image: RGB, two rows — the noisy latent x_t decoded on top, the predicted x0 below — and one
    column per frame, all cells the same size, no labels.
    """

    image: Image.Image
    frames: tuple[FilmstripFrame, ...]
    # "vae": decoded by the model's own VAE; "approximate": the cheap linear latent → RGB preview
    # at latent size (chosen where 2 · frames full VAE decodes would cost too much).
    decoder: str = "vae"


@dataclass(frozen=True)
class ForwardSpec:
    """The forward process q(x_t | x0) of one image (the diffusion explorer's), resolved: which
    weights on which hardware, the image, the timesteps and the noise's seed."""

    checkpoint: Path
    model_name: str
    device: str
    dtype: str | None  # None → the device's default dtype
    image: Image.Image
    timesteps: tuple[int, ...]
    seed: int = 0
    parameter_count: int | None = None  # sizes the pipeline cache; None → from the file size


@dataclass(frozen=True)
class ForwardStep:
    """x_t at one timestep, decoded, and its numbers: ᾱ_t, SNR = ᾱ/(1−ᾱ) (and in dB), and the
    same noise level as sigma = sqrt((1−ᾱ)/ᾱ)."""

    t: int
    alpha_bar: float
    snr: float
    snr_db: float
    sigma: float
    image: Image.Image


@dataclass(frozen=True)
class ForwardResult:
    """The image as the VAE gives it back (x0 decoded) and one `ForwardStep` per timestep asked
    for, in order, all drawn with one noise sample. Plain data: it crosses a process pipe."""

    clean: Image.Image
    steps: tuple[ForwardStep, ...]


# The first image's current latent, (4, h, w) float32 scaled (a copy), for the hub to draw a
# cheap preview from: the worker only hands the numbers over, on demand.
PreviewFn = Callable[[], np.ndarray]
# (steps done 1..N, N, the preview's latent on demand)
StepCallback = Callable[[int, int, PreviewFn], None]
FilmstripCallback = Callable[[Filmstrip], None]


@dataclass(frozen=True)
class BatchEntry:
    """One job of a `Generator.generate_batch` call with its own callbacks, as `generate`
    takes them."""

    job: JobSpec
    on_step: StepCallback
    should_cancel: Callable[[], bool]
    on_filmstrip: FilmstripCallback | None = None
    should_interrupt: Callable[[], bool] | None = None


class Generator(Protocol):
    def list_devices(self) -> list[DeviceSpec]:
        """The hardware present, the CPU first."""
        ...

    def samplers(self) -> list[SamplerSpec]: ...

    def builtin_checkpoint(self) -> Path:
        """Where the built-in model's file is (it may not exist)."""
        ...

    def inspect_checkpoint(self, path: Path) -> CheckpointSpec:
        """Read and hash a checkpoint; ValueError says why an unusable file is unusable."""
        ...

    def generate(
        self,
        job: JobSpec,
        on_step: StepCallback,
        should_cancel: Callable[[], bool],
        on_filmstrip: FilmstripCallback | None = None,
        should_interrupt: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Run one job: its images (each carrying info["parameters"], info["dali"] and
        info["seed"]) and the resolved params that made them. Raises JobCanceled when `should_cancel()` returned True (checked every
        step) and ValueError for inputs the engine refuses.

        `should_interrupt()`, asked after every step but the last, True ends the run there
        keeping what it made (A1111's interrupt): the images are that step's prediction, the
        result's `interrupted_at` is that step, and a warning says so.

        With `job.filmstrip_frames` > 0, the run's reverse process is recorded on the way (no
        second generation) and, once the images are made, handed to `on_filmstrip` as one
        `Filmstrip` — at most once; an engine that cannot record one never calls it."""
        ...

    def generate_batch(self, entries: Sequence[BatchEntry]) -> list[GenerationResult | Exception]:
        """Run txt2img jobs of one model together: per entry, in order, what `generate` would
        return for it, or the exception it would raise (JobCanceled for its cancel). Each job
        keeps its callbacks; one job's cancel or failure leaves the others running. Jobs that
        cannot share a run (sd_core.batched.batch_key) run one after another."""
        ...

    def autotune(self, model: ModelSpec, steps: int) -> dict[str, object]:
        """Try the fast paths valid on `model.device` with `model` (a `steps`-step image at its
        native size), keep the fastest within tolerance per dtype for the pipelines loaded
        afterwards, and return every figure (`sd_core.autotune.AutotuneResult.as_json`)."""
        ...

    def forward_process(self, spec: ForwardSpec) -> ForwardResult:
        """Encode `spec.image` with the model's VAE (scaled down to fit the model's native size,
        at least 256 pixels a side), noise the latent to each timestep with one noise draw
        from `spec.seed`, and decode them all. ValueError for a timestep out of range."""
        ...
