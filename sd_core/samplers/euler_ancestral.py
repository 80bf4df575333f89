"""Euler ancestral ("Euler a"): an Euler step down to σ_down, then fresh noise up to σ_{i+1}.

The ancestral sampling of Ho et al. 2020 ("Denoising Diffusion Probabilistic Models", eq. 6-7)
in sigma space, as k-diffusion's `sample_euler_ancestral` (η = 1) and diffusers'
EulerAncestralDiscreteScheduler do it: the step σ_i → σ_{i+1} splits into a deterministic part
to σ_down and a noise injection of σ_up, with σ_down² + σ_up² = σ_{i+1}².
"""

from __future__ import annotations

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


def sample_euler_ancestral(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    callback: StepCallback | None = None,
    eta: float = 1.0,
) -> Tensor:
    """Euler ancestral steps; calls `noise` once per step, the last included (where σ_up = 0).

    x: (B, C, h, w) at sigmas[0]; sigmas: (N+1,) decreasing → (B, C, h, w) final latent.
    eta: the share of the step's noise drawn fresh (k-diffusion's `eta`; 0 gives Euler).
    """
    n = check_inputs(x, sigmas)
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # 1. D(x_i; σ_i).
        denoised = denoise(x, batch_sigma(x, sigmas[i]))
        # 2. Split the step: σ_up² = σ_{i+1}²·(σ_i² - σ_{i+1}²) / σ_i², σ_down² = σ_{i+1}² - σ_up².
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
        # 3. Euler step to σ_down: x ← x + (σ_down - σ_i)·(x - D) / σ_i.
        x = x + ode_slope(x, denoised, sigma) * (sigma_down - sigma)
        # 4. Add σ_up·z, z ~ N(0, I); diffusers draws z even when σ_up = 0.
        x = x + noise() * sigma_up
        if callback is not None:
            callback(i + 1, n, x, denoised)
    return final_latent(x, sigmas[-1])
