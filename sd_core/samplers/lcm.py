"""LCM: multistep sampling of a latent consistency model (Luo et al. 2023, "Latent Consistency
Models: Synthesizing High-Resolution Images with Few-Step Inference", Algorithm 1).

A consistency model maps any noisy x straight to its data point, so each step takes the model's
estimate f(x_i; t_i) and re-noises it to the next level:

    f = c_out(t_i)·x̂0_i + c_skip(t_i)·x_i / sqrt(σ_i² + 1),
    x_{i+1} = f + σ_{i+1}·z_i                 (the last step returns f, with no draw),

in sigma space; x_i / sqrt(σ_i² + 1) is the latent as the model sees it. The boundary
scalings, with σ_data = 1/2 and the timestep scaled by 10 as in diffusers' LCMScheduler,

    c_skip(t) = σ_data² / ((10t)² + σ_data²),   c_out(t) = 10t / sqrt((10t)² + σ_data²),

make f the identity at t = 0; at LCM's timesteps (≥ 19) they are within 1e-5 of (0, 1). The
timesteps are the training ones of the σ's (the LCM schedule visits integer timesteps only;
see `lcm_schedule`), recovered from the σ's through `schedule`, SD v1's by default.

The math is that of any model, but only an LCM-distilled model (or LCM LoRA) gives good
images in 2-8 steps; on an ordinary SD checkpoint the results are blurry.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from sd_core.config import ScheduleConfig
from sd_core.samplers.base import (
    Denoiser,
    NoiseSource,
    StepCallback,
    batch_sigma,
    check_inputs,
    final_latent,
)
from sd_core.schedule import NoiseSchedule, SigmaSchedule

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0
# diffusers' LCMScheduler: the distillation schedule has this many timesteps, k·j - 1.
ORIGINAL_STEPS = 50


@functools.cache
def _default_schedule() -> NoiseSchedule:
    return NoiseSchedule(ScheduleConfig())


def lcm_schedule(schedule: NoiseSchedule, steps: int) -> SigmaSchedule:
    """LCMScheduler's timesteps for `steps` (1 … 50): the distillation timesteps k·j - 1
    (k = T / 50, j = 50 … 1), `steps` of them evenly spaced by index from the top, with their
    training σ's and a final σ = 0."""
    if not 1 <= steps <= ORIGINAL_STEPS:
        raise ValueError(f"LCM takes 1 to {ORIGINAL_STEPS} steps, got {steps}")
    k = schedule.num_train_timesteps // ORIGINAL_STEPS
    origin = torch.arange(ORIGINAL_STEPS, 0, -1, dtype=torch.int64) * k - 1
    # floor(linspace(0, 50, steps, endpoint=False)), in exact integer arithmetic.
    index = torch.arange(steps, dtype=torch.int64) * ORIGINAL_STEPS // steps
    timesteps = origin[index]
    sigmas = torch.cat([schedule.sigmas[timesteps], schedule.sigmas.new_zeros(1)])
    return SigmaSchedule(sigmas=sigmas, timesteps=timesteps.double())


def boundary_scalings(t: float) -> tuple[float, float]:
    """(c_skip, c_out) at training timestep t."""
    scaled = t * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip, c_out


def sample_lcm(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    callback: StepCallback | None = None,
    schedule: NoiseSchedule | None = None,
) -> Tensor:
    """LCM steps; calls `noise` once per step but the last.

    x: (B, C, h, w) at sigmas[0]; sigmas: (N+1,) decreasing → (B, C, h, w) final latent.
    schedule: the training schedule whose timesteps the σ's are (SD v1's when None).
    """
    n = check_inputs(x, sigmas)
    schedule = schedule or _default_schedule()
    timesteps = schedule.sigma_to_t(sigmas[:-1].detach().to("cpu", torch.float64)).round()
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # 1. x̂0_i = D(x_i; σ_i) and the consistency function's boundary scalings at t_i.
        denoised = denoise(x, batch_sigma(x, sigmas[i]))
        c_skip, c_out = boundary_scalings(float(timesteps[i]))
        estimate = c_out * denoised + (c_skip / (sigma**2 + 1.0) ** 0.5) * x
        # 2. Re-noise the estimate to σ_{i+1}, except after the last step.
        x = estimate if i == n - 1 else estimate + noise() * sigma_next
        if callback is not None:
            callback(i + 1, n, x, denoised)
    return final_latent(x, sigmas[-1])
