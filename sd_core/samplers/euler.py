"""Euler: the first-order solver of the probability-flow ODE dx/dσ = (x - D(x; σ)) / σ.

Algorithm 2 of Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models", with no churn (γ = 0) and no second-order correction; diffusers' EulerDiscreteScheduler.
"""

from __future__ import annotations

from torch import Tensor

from sd_core.samplers.base import (
    Denoiser,
    NoiseSource,
    StepCallback,
    batch_sigma,
    check_inputs,
    final_latent,
    ode_slope,
)


def sample_euler(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    callback: StepCallback | None = None,
) -> Tensor:
    """Deterministic Euler steps σ_i → σ_{i+1}; `noise` is never called.

    x: (B, C, h, w) at sigmas[0]; sigmas: (N+1,) decreasing → (B, C, h, w) final latent.
    """
    n = check_inputs(x, sigmas)
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # 1. D(x_i; σ_i), the denoised estimate of x0.
        denoised = denoise(x, batch_sigma(x, sigmas[i]))
        # 2. d_i = (x_i - D) / σ_i, the ODE's slope.
        d = ode_slope(x, denoised, sigma)
        # 3. x_{i+1} = x_i + (σ_{i+1} - σ_i)·d_i.
        x = x + d * (sigma_next - sigma)
        if callback is not None:
            callback(i + 1, n, x, denoised)
    return final_latent(x, sigmas[-1])
