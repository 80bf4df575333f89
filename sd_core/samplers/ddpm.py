"""DDPM: ancestral sampling of Ho et al. 2020, "Denoising Diffusion Probabilistic Models".

Each step draws x_{t-1} from the posterior q(x_{t-1} | x_t, x̂0) of eq. (6)-(7) with the
"fixed_small" variance β̃_t, as diffusers' DDPMScheduler does for SD (leading timesteps that may
skip many training steps, so β_t means 1 - ᾱ_t / ᾱ_{t-1} between visited timesteps; the last
step goes to ᾱ = 1):

    x_{t-1} = sqrt(ᾱ_{t-1})·β_t / (1 - ᾱ_t)·x̂0 + sqrt(α_t)·(1 - ᾱ_{t-1}) / (1 - ᾱ_t)·x_t + sqrt(β̃_t)·z,
    β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t)·β_t.

The state is kept in sigma space between steps (x = x_t / sqrt(ᾱ_t)) and converted around
each update.
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
)


def sample_ddpm(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    callback: StepCallback | None = None,
) -> Tensor:
    """DDPM steps; calls `noise` once per step, the last included (where β̃ is ~0).

    x: (B, C, h, w) at sigmas[0]; sigmas: (N+1,) decreasing → (B, C, h, w) final latent.
    """
    n = check_inputs(x, sigmas)
    for i in range(n):
        sigma, sigma_prev = float(sigmas[i]), float(sigmas[i + 1])
        # 1. ᾱ_t, ᾱ_{t-1}, and the step's α_t = ᾱ_t / ᾱ_{t-1}, β_t = 1 - α_t.
        alpha_bar = 1.0 / (1.0 + sigma**2)
        alpha_bar_prev = 1.0 / (1.0 + sigma_prev**2)
        alpha = alpha_bar / alpha_bar_prev
        beta = 1.0 - alpha
        # 2. x̂0 = D(x_t; σ_t), and x_t in the model's scaling.
        denoised = denoise(x, batch_sigma(x, sigmas[i]))
        x_t = x * alpha_bar**0.5
        # 3. Posterior mean μ̃_t(x_t, x̂0) of eq. (7).
        mean = (alpha_bar_prev**0.5 * beta / (1 - alpha_bar)) * denoised + (
            alpha**0.5 * (1 - alpha_bar_prev) / (1 - alpha_bar)
        ) * x_t
        # 4. x_{t-1} = μ̃ + sqrt(β̃_t)·z; β̃ is clamped to 1e-20 as diffusers does, and z is drawn
        #    on every step (diffusers draws whenever t > 0, which the leading timesteps always are).
        variance = max((1 - alpha_bar_prev) / (1 - alpha_bar) * beta, 1e-20)
        x_prev = mean + noise() * variance**0.5
        # 5. Back to sigma space at σ_{t-1}.
        x = x_prev / alpha_bar_prev**0.5
        if callback is not None:
            callback(i + 1, n, x, denoised)
    return final_latent(x, sigmas[-1])
