"""DPM2: the second-order midpoint solver of Karras et al. 2022 ("Elucidating the Design Space
of Diffusion-Based Generative Models", Algorithm 1 with the midpoint of their Appendix D.2).

k-diffusion's `sample_dpm_2` as diffusers' KDPM2DiscreteScheduler runs it: the slope at σ_i
takes x to the log-space midpoint σ_mid = sqrt(σ_i·σ_{i+1}); the slope found there carries x_i
the whole way to σ_{i+1}. The last step, into σ = 0, is a plain Euler step.
"""

from __future__ import annotations

import torch
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


def sample_dpm2(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    callback: StepCallback | None = None,
) -> Tensor:
    """DPM2 steps; `noise` is never called.

    x: (B, C, h, w) at sigmas[0]; sigmas: (N+1,) decreasing → (B, C, h, w) final latent.
    """
    n = check_inputs(x, sigmas)
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # 1. d_i = (x_i - D(x_i; σ_i)) / σ_i.
        denoised = denoise(x, batch_sigma(x, sigmas[i]))
        d = ode_slope(x, denoised, sigma)
        if sigma_next == 0:
            # 2a. Last step: Euler into σ = 0, which is x = D(x_i; σ_i).
            x = x + d * (sigma_next - sigma)
        else:
            # 2b. Midpoint in log σ, computed in float32 the way diffusers computes it.
            sigma_mid_t = torch.lerp(
                sigmas[i + 1].float().log(), sigmas[i].float().log(), 0.5
            ).exp()
            sigma_mid = float(sigma_mid_t)
            # 3. x_mid = x_i + (σ_mid - σ_i)·d_i;  d_mid = (x_mid - D(x_mid; σ_mid)) / σ_mid.
            x_mid = x + d * (sigma_mid - sigma)
            denoised_mid = denoise(x_mid, batch_sigma(x, sigma_mid_t))
            d_mid = ode_slope(x_mid, denoised_mid, sigma_mid)
            # 4. x_{i+1} = x_i + (σ_{i+1} - σ_i)·d_mid.
            x = x + d_mid * (sigma_next - sigma)
        if callback is not None:
            callback(i + 1, n, x, denoised)
    return final_latent(x, sigmas[-1])
