"""DPM++ SDE: DPM-Solver++(2S) of Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided
Sampling of Diffusion Probabilistic Models" (Algorithm 1, r = 1/2), made stochastic.

As k-diffusion's `sample_dpmpp_sde` (η = 1, s_noise = 1): each step from σ_i to σ_{i+1} goes
through the log-space midpoint σ_s = sqrt(σ_i·σ_{i+1}), and both of its stages are ancestral:
a first-order DPM-Solver++ move to σ_down (for σ = 0 that is x̂0, in general
x̂0 + (σ_down/σ)·(x - x̂0)) followed by fresh noise σ_up, where σ_down² + σ_up² is the stage's
target σ² (Ho et al. 2020's posterior split, as in `euler_ancestral`). k-diffusion draws the
stage noise from a Brownian tree; here it comes from the `NoiseSource`, two independent draws
per step, which gives the same distribution of images (not the same images). The last step,
into σ = 0, is a plain Euler step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sd_core.samplers.base import (
    Denoiser,
    NoiseSource,
    StepCallback,
    ancestral_split,
    batch_sigma,
    check_inputs,
    final_latent,
    ode_slope,
)


def sample_dpmpp_sde(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    callback: StepCallback | None = None,
    r: float = 0.5,
) -> Tensor:
    """DPM++ SDE steps; calls `noise` twice per step except the last.

    x: (B, C, h, w) at sigmas[0]; sigmas: (N+1,) decreasing → (B, C, h, w) final latent.
    r: where the intermediate point sits in λ = -log σ, as a fraction of the step.
    """
    n = check_inputs(x, sigmas)
    if not 0.0 < r <= 1.0:
        raise ValueError(f"r must be in (0, 1], got {r}")
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # 1. x̂0_i = D(x_i; σ_i).
        denoised = denoise(x, batch_sigma(x, sigmas[i]))
        if sigma_next == 0:
            # Last step: Euler into σ = 0, which lands on x̂0_i.
            x = x + ode_slope(x, denoised, sigma) * (sigma_next - sigma)
        else:
            # 2. λ_i = -log σ_i, h = λ_{i+1} - λ_i, and the intermediate s_i = λ_i + r·h.
            lam, lam_next = -math.log(sigma), -math.log(sigma_next)
            sigma_s = math.exp(-(lam + r * (lam_next - lam)))
            # 3. Stage 1: first-order step to σ_s's σ_down, then σ_up of noise → u_i.
            down, up = ancestral_split(sigma, sigma_s)
            u = denoised + (down / sigma) * (x - denoised) + noise() * up
            denoised_s = denoise(u, batch_sigma(x, torch.tensor(sigma_s, dtype=torch.float32)))
            # 4. Stage 2: D_i = (1 - 1/(2r))·x̂0_i + 1/(2r)·x̂0(u_i), then the same ancestral
            #    first-order step from x_i to σ_{i+1}.
            fac = 1 / (2 * r)
            d = (1 - fac) * denoised + fac * denoised_s
            down, up = ancestral_split(sigma, sigma_next)
            x = d + (down / sigma) * (x - d) + noise() * up
        if callback is not None:
            callback(i + 1, n, x, denoised)
    return final_latent(x, sigmas[-1])
