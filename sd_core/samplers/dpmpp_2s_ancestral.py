"""DPM++ 2S a: the second-order single-step DPM-Solver++(2S) of Lu et al. 2022, "DPM-Solver++:
Fast Solver for Guided Sampling of Diffusion Probabilistic Models" (Algorithm 1, r = 1/2), made
ancestral as in `euler_ancestral`.

Each step σ_i → σ_{i+1} splits into a deterministic part to σ_down and fresh noise σ_up
(σ_down² + σ_up² = σ_{i+1}², Ho et al. 2020's posterior split). The deterministic part is one
DPM-Solver++(2S) step in λ = -log σ with h = λ(σ_down) - λ(σ_i), through the midpoint
σ_s = sqrt(σ_i·σ_down):

    u   = (σ_s / σ_i)·x_i - (e^{-h/2} - 1)·x̂0_i                    (first order to σ_s)
    x'  = (σ_down / σ_i)·x_i - (e^{-h} - 1)·D(u; σ_s)               (second order to σ_down)
    x_{i+1} = x' + σ_up·z_i.

Where σ_down = 0 (the last step, into σ = 0) the step is first order and lands on x̂0_i, with
no noise. diffusers has no ancestral single-step DPM-Solver (its DPMSolverSinglestepScheduler
is deterministic and picks its intermediate points from the timestep grid), so this sampler is
checked against an independent implementation and by the distribution it samples; its step
noise is one draw per step that adds noise, from the per-image generators.
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
)


def sample_dpmpp_2s_ancestral(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    callback: StepCallback | None = None,
    eta: float = 1.0,
) -> Tensor:
    """DPM++ 2S a steps; calls `noise` once per step into σ > 0 (not on a last step into 0).

    x: (B, C, h, w) at sigmas[0]; sigmas: (N+1,) decreasing → (B, C, h, w) final latent.
    eta: the share of the step's noise drawn fresh (k-diffusion's `eta`; 0: no noise added).
    """
    n = check_inputs(x, sigmas)
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # 1. x̂0_i = D(x_i; σ_i), and the split of the step into σ_down and σ_up.
        denoised = denoise(x, batch_sigma(x, sigmas[i]))
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
        if sigma_down == 0:
            # 2a. Into σ = 0: first order, which lands on x̂0_i.
            x = denoised
        else:
            # 2b. h in λ = -log σ, and the log-space midpoint σ_s.
            h = math.log(sigma) - math.log(sigma_down)
            sigma_s = math.sqrt(sigma * sigma_down)
            # 3. First-order DPM-Solver++ step to σ_s.
            u = (sigma_s / sigma) * x - math.expm1(-h / 2) * denoised
            # 4. The data estimate at the midpoint carries the whole step to σ_down.
            denoised_s = denoise(u, batch_sigma(x, torch.tensor(sigma_s, dtype=torch.float32)))
            x = (sigma_down / sigma) * x - math.expm1(-h) * denoised_s
        if sigma_next > 0:
            # 5. Fresh noise σ_up·z_i up to σ_{i+1}.
            x = x + noise() * sigma_up
        if callback is not None:
            callback(i + 1, n, x, denoised)
    return final_latent(x, sigmas[-1])
