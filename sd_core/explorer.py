"""The diffusion process made visible: the forward process at any t, the reverse as a filmstrip.

Forward (training's noising, Ho et al. 2020 eq. 4): for a clean latent x0 and timestep t,

    q(x_t | x0) = N(sqrt(ᾱ_t)·x0, (1 - ᾱ_t)·I),   so   x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε,

with ε ~ N(0, I) and signal-to-noise ratio SNR(t) = ᾱ_t / (1 - ᾱ_t) = 1 / σ_t². At t = 0 the
latent is almost untouched (ᾱ_0 = 1 - β_0 ≈ 0.99915); at t = 999 it is almost pure noise.

Reverse: the samplers run in sigma space (x = x0 + σ·ε, see `sd_core.schedule`) and report
after every step the running latent x and their prediction of x0 (the pipeline's `trace` hook).
`FilmstripRecorder` keeps both at evenly spaced steps, the noisy one brought back to the model's
x_t scaling (x / sqrt(σ² + 1)), so a VAE decode shows what the sampler "sees" at each step next
to what it currently believes the final image is.

Everything here is plain torch; decoding goes through a pipeline's own VAE
(`StableDiffusionPipeline.decode_latents`). `compose_filmstrip` lays decoded frames out as the
one strip image the web app keeps for a generation.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch import Tensor

from sd_core.schedule import NoiseSchedule

if TYPE_CHECKING:
    from sd_core.pipeline import StableDiffusionPipeline

DEFAULT_FRAMES = 8


# --------------------------------------------------------------------------- forward process


def check_timestep(t: int, schedule: NoiseSchedule) -> int:
    """t as an int in [0, T-1]; ValueError naming the value and the range otherwise."""
    last = schedule.num_train_timesteps - 1
    if isinstance(t, bool) or not isinstance(t, int):
        raise ValueError(f"t must be an integer timestep from 0 to {last}, got {t!r}")
    if not 0 <= t <= last:
        raise ValueError(f"t must be from 0 to {last}, got {t}")
    return t


def alpha_bar(schedule: NoiseSchedule, t: int) -> float:
    """ᾱ_t, the fraction of the signal's variance left at timestep t."""
    return float(schedule.alphas_cumprod[check_timestep(t, schedule)])


def signal_to_noise(schedule: NoiseSchedule, t: int) -> float:
    """SNR(t) = ᾱ_t / (1 - ᾱ_t); equal to 1 / σ_t²."""
    a = alpha_bar(schedule, t)
    return a / (1.0 - a)


@dataclass(frozen=True)
class ForwardSample:
    """One draw from q(x_t | x0).

    x_t, noise: same shape as x0, float32, on x0's device. snr_db = 10·log10(SNR).
    """

    t: int
    alpha_bar: float
    snr: float
    x_t: Tensor
    noise: Tensor

    @property
    def sigma(self) -> float:
        """The same noise level in sigma space: sqrt((1 - ᾱ_t) / ᾱ_t)."""
        return math.sqrt(1.0 / self.snr)

    @property
    def snr_db(self) -> float:
        return 10.0 * math.log10(self.snr)


def forward_process(
    x0: Tensor,
    t: int,
    schedule: NoiseSchedule,
    *,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> ForwardSample:
    """Noise x0 to timestep t: x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε.

    x0: (B, C, h, w) scaled latents (any shape works). ε is `noise` when given (x0's shape),
    else drawn on the CPU from `generator` (so a seed gives the same picture on every device).
    """
    a = alpha_bar(schedule, t)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
    noise = noise.to(x0.device, torch.float32)
    x_t = math.sqrt(a) * x0.float() + math.sqrt(1.0 - a) * noise
    return ForwardSample(t=t, alpha_bar=a, snr=a / (1.0 - a), x_t=x_t, noise=noise)


# --------------------------------------------------------------------------- reverse process


def evenly_spaced_steps(total: int, count: int) -> list[int]:
    """`count` steps out of 1 … total, evenly spaced, always ending with the last step.

    Fewer when total < count (then every step). 10 steps, 4 frames → [1, 4, 7, 10].
    """
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ValueError(f"total must be a positive number of steps, got {total!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive number of frames, got {count!r}")
    if count >= total:
        return list(range(1, total + 1))
    if count == 1:
        return [total]
    # Points of the line from step 1 to step `total`, rounded half up (Python's round() would
    # round halves to even, spacing frames unevenly); distinct because the spacing
    # (total - 1) / (count - 1) is at least 1.
    return [1 + math.floor(i * (total - 1) / (count - 1) + 0.5) for i in range(count)]


@dataclass(frozen=True)
class FilmstripFrame:
    """The state of image 0 of a batch after `step` of `total` sampler steps.

    noisy: (1, C, h, w) float32 CPU, the running latent in the model's x_t scaling.
    denoised: (1, C, h, w) float32 CPU, the sampler's prediction of x0 at that step.
    sigma: the noise level of `noisy` (0 after the last step of most samplers); None when the
    recorder was not told the σ schedule (then `noisy` is the raw sigma-space latent).
    """

    step: int
    total: int
    sigma: float | None
    noisy: Tensor
    denoised: Tensor

    @property
    def snr(self) -> float | None:
        """1 / σ² (∞ once the noise is gone)."""
        if self.sigma is None:
            return None
        return math.inf if self.sigma == 0 else 1.0 / self.sigma**2


class FilmstripRecorder:
    """A `trace(step, total, x, denoised)` callback keeping `frames` evenly spaced steps.

    sigmas: the σ schedule the sampler runs, (N+1,) decreasing; img2img runs its tail, so the
    last `total + 1` entries are used. Without it, frames carry sigma None. Only the first image
    of a batch is kept, cloned to the CPU in float32, so a frame costs 2·C·h·w floats.
    """

    def __init__(self, sigmas: Tensor | None = None, frames: int = DEFAULT_FRAMES) -> None:
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames must be a positive integer, got {frames!r}")
        self.sigmas = None if sigmas is None else sigmas.detach().to("cpu", torch.float64)
        self.frame_count = frames
        self.frames: list[FilmstripFrame] = []
        self._wanted: set[int] = set()
        self._total: int | None = None
        self._tail: Tensor | None = None

    def _start(self, total: int) -> None:
        self._total = total
        self._wanted = set(evenly_spaced_steps(total, self.frame_count))
        # A schedule that does not fit the run (never expected) leaves σ unknown rather than
        # wrong; the recorder must never make a generation fail.
        if self.sigmas is not None and self.sigmas.numel() >= total + 1:
            self._tail = self.sigmas[-(total + 1) :]
        else:
            self._tail = None

    def __call__(self, step: int, total: int, x: Tensor, denoised: Tensor) -> None:
        if self._total != total:
            self.frames.clear()
            self._start(total)
        if step not in self._wanted:
            return
        noisy = x[:1].detach().to("cpu", torch.float32)
        sigma: float | None = None
        if self._tail is not None:
            sigma = float(self._tail[step])
            noisy = noisy / math.sqrt(sigma * sigma + 1.0)
        self.frames.append(
            FilmstripFrame(
                step=step,
                total=total,
                sigma=sigma,
                noisy=noisy.clone(),
                denoised=denoised[:1].detach().to("cpu", torch.float32).clone(),
            )
        )


def recorder_for_run(
    pipe: StableDiffusionPipeline, sampler: str | None, steps: int, frames: int = DEFAULT_FRAMES
) -> FilmstripRecorder:
    """A recorder for `pipe.generate(params, hooks=GenerationHooks(trace=recorder))`, where
    `params` asks for `sampler` and `steps`.

    It knows the σ schedule that run follows (sampler None: the model's default), so its frames
    carry σ. A sampler or step count the pipeline refuses leaves σ unknown: the run itself
    reports the error, and a recording must never be what makes a generation fail.
    """
    from sd_core.samplers import get_sampler

    sigmas = None
    with contextlib.suppress(ValueError, KeyError, TypeError):
        sigmas = get_sampler(sampler or pipe.config.default_sampler).sigmas(pipe.schedule, steps)
    return FilmstripRecorder(sigmas, frames=frames)


# --------------------------------------------------------------------------- pixels <-> latents


@torch.inference_mode()
def encode_mean(
    pipe: StableDiffusionPipeline, image: Image.Image, width: int, height: int
) -> Tensor:
    """Image → (1, C, height/8, width/8) float32 scaled latent: the VAE posterior's mean × scale.

    The mean, not a sample, so the forward process starts from the image itself and t = 0
    shows it (as far as the VAE can reconstruct it).
    """
    from sd_core.image_tensors import image_to_tensor

    pixels = image_to_tensor(image, width, height)
    vae = pipe.vae
    # The VAE may sit on the CPU between uses (low-memory mode): run it where it is.
    where = next(vae.parameters()).device
    mean, _ = vae.encode(pixels.to(where, pipe.dtype))
    return mean.float() * pipe.latent_scale


def decode_to_images(pipe: StableDiffusionPipeline, latents: Tensor) -> list[Image.Image]:
    """(B, C, h, w) scaled latents → B RGB images of 8h × 8w through the pipeline's VAE."""
    from sd_core.image_tensors import tensor_to_images

    with torch.inference_mode():
        return tensor_to_images(pipe.decode_latents(latents.to(pipe.device)))


def fit_size(width: int, height: int, limit: int, multiple: int = 8) -> tuple[int, int]:
    """(w, h) scaled down to fit within limit × limit, keeping the aspect, rounded down to
    `multiple` (at least `multiple`)."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    scale = min(1.0, limit / max(width, height))
    w = max(multiple, int(width * scale) // multiple * multiple)
    h = max(multiple, int(height * scale) // multiple * multiple)
    return w, h


def filmstrip_images(
    pipe: StableDiffusionPipeline, frames: list[FilmstripFrame]
) -> list[tuple[FilmstripFrame, Image.Image, Image.Image]]:
    """Decode every frame: (frame, noisy latent as an image, predicted x0 as an image)."""
    return _draw_frames(frames, lambda latents: decode_to_images(pipe, latents))


def approximate_filmstrip_images(
    frames: list[FilmstripFrame],
) -> list[tuple[FilmstripFrame, Image.Image, Image.Image]]:
    """Like `filmstrip_images`, but drawn with the cheap linear latent → RGB map of the live
    preview (`sd_core.preview`, fitted to SD v1's VAE) at latent size, with no VAE decode."""
    from sd_core.preview import latents_to_rgb

    return _draw_frames(frames, latents_to_rgb)


def _draw_frames(
    frames: list[FilmstripFrame], draw: Callable[[Tensor], list[Image.Image]]
) -> list[tuple[FilmstripFrame, Image.Image, Image.Image]]:
    """(frame, noisy latent drawn, predicted x0 drawn) for every frame, each row in one call."""
    if not frames:
        return []
    noisy = draw(torch.cat([f.noisy for f in frames]))
    denoised = draw(torch.cat([f.denoised for f in frames]))
    return list(zip(frames, noisy, denoised, strict=True))


# --------------------------------------------------------------------------- one strip image

DecodedFrame = tuple[FilmstripFrame, Image.Image, Image.Image]


def compose_filmstrip(
    decoded: Sequence[DecodedFrame], cell_limit: int | None = None
) -> Image.Image:
    """The decoded frames as one RGB image: noisy x_t on the top row, predicted x0 below, one
    column per frame in the given (step) order, no gaps and no labels (whoever shows it labels
    the columns with step, σ and SNR).

    Each cell is the decoded size scaled down to fit within cell_limit × cell_limit (None: as
    decoded), so the strip is (frames · w) × (2 · h).
    """
    if not decoded:
        raise ValueError("a filmstrip needs at least one decoded frame, got none")
    width, height = decoded[0][1].size
    if cell_limit is not None:
        width, height = fit_size(width, height, cell_limit, multiple=1)
    strip = Image.new("RGB", (width * len(decoded), 2 * height))
    for column, (_, noisy, denoised) in enumerate(decoded):
        for row, picture in enumerate((noisy, denoised)):
            cell = picture.convert("RGB")
            if cell.size != (width, height):
                cell = cell.resize((width, height), Image.Resampling.LANCZOS)
            strip.paste(cell, (column * width, row * height))
    return strip
