"""DPM2 ancestral ("DPM2 a"): the DPM2 midpoint step down to σ_down, then noise up to σ_{i+1}.

k-diffusion's `sample_dpm_2_ancestral` (η = 1) as diffusers' KDPM2AncestralDiscreteScheduler
runs it: Karras et al. 2022's second-order midpoint step (see `dpm2`) aimed at σ_down, followed
by the ancestral noise injection σ_up of Ho et al. 2020 (σ_down² + σ_up² = σ_{i+1}², as in
`euler_ancestral`). The last step, into σ = 0, is a plain Euler step and draws no noise.
"""

from __future__ import annotations

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


def sample_dpm2_ancestral(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    callback: StepCallback | None = None,
    eta: float = 1.0,
) -> Tensor:
    """DPM2 ancestral steps; calls `noise` once per step except the last (N - 1 draws).

    x: (B, C, h, w) at sigmas[0]; sigmas: (N+1,) decreasing → (B, C, h, w) final latent.
    eta: the share of the step's noise drawn fresh (k-diffusion's `eta`; 0: no noise added).
    """
    n = check_inputs(x, sigmas)
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # 1. d_i = (x_i - D(x_i; σ_i)) / σ_i.
        denoised = denoise(x, batch_sigma(x, sigmas[i]))
        d = ode_slope(x, denoised, sigma)
        if sigma_next == 0:
            # 2a. Last step: Euler into σ = 0, no noise.
            x = x + d * (sigma_next - sigma)
        else:
            # 2b. σ_up² = σ_{i+1}²·(σ_i² - σ_{i+1}²) / σ_i², σ_down² = σ_{i+1}² - σ_up² (float32,
            #     as diffusers precomputes them), and the log-space midpoint of σ_i and σ_down.
            s, s_next = sigmas[i].float(), sigmas[i + 1].float()
            sigma_down_t, sigma_up_t = ancestral_split(s, s_next, eta)
            sigma_mid_t = torch.lerp(s.log(), sigma_down_t.log(), 0.5).exp()
            sigma_up, sigma_down, sigma_mid = (
                float(sigma_up_t),
                float(sigma_down_t),
                float(sigma_mid_t),
            )
            # 3. x_mid = x_i + (σ_mid - σ_i)·d_i;  d_mid = (x_mid - D(x_mid; σ_mid)) / σ_mid.
            x_mid = x + d * (sigma_mid - sigma)
            denoised_mid = denoise(x_mid, batch_sigma(x, sigma_mid_t))
            d_mid = ode_slope(x_mid, denoised_mid, sigma_mid)
            # 4. x_{i+1} = x_i + (σ_down - σ_i)·d_mid + σ_up·z.
            x = x + d_mid * (sigma_down - sigma)
            x = x + noise() * sigma_up
        if callback is not None:
            callback(i + 1, n, x, denoised)
    return final_latent(x, sigmas[-1])
