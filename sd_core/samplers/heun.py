"""Heun: the second-order (trapezoidal) solver of the probability-flow ODE.

Algorithm 1 of Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models" (deterministic, no churn), as diffusers' HeunDiscreteScheduler runs it: two denoiser
calls per step, and a plain Euler step for the last step into σ = 0.
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


def sample_heun(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    callback: StepCallback | None = None,
) -> Tensor:
    """Heun steps σ_i → σ_{i+1}; `noise` is never called.

    x: (B, C, h, w) at sigmas[0]; sigmas: (N+1,) decreasing → (B, C, h, w) final latent.
    """
    n = check_inputs(x, sigmas)
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        dt = sigma_next - sigma
        # 1-2. d_i = (x_i - D(x_i; σ_i)) / σ_i.
        denoised = denoise(x, batch_sigma(x, sigmas[i]))
        d = ode_slope(x, denoised, sigma)
        # 3. Euler predictor x' = x_i + (σ_{i+1} - σ_i)·d_i.
        x_euler = x + d * dt
        if sigma_next == 0:
            # 4a. No slope exists at σ = 0: the last step stays first order.
            x = x_euler
        else:
            # 4b. Corrector: d' = (x' - D(x'; σ_{i+1})) / σ_{i+1}; x_{i+1} = x_i + dt·(d_i + d') / 2.
            denoised_next = denoise(x_euler, batch_sigma(x, sigmas[i + 1]))
            d_next = ode_slope(x_euler, denoised_next, sigma_next)
            x = x + (d + d_next) / 2 * dt
        if callback is not None:
            callback(i + 1, n, x, denoised)
    return final_latent(x, sigmas[-1])
