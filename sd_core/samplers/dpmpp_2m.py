"""DPM++ 2M: the second-order multistep DPM-Solver++ of Lu et al. 2022, "DPM-Solver++: Fast
Solver for Guided Sampling of Diffusion Probabilistic Models" (Algorithm 2, data prediction).

With λ = -log σ (half the log-SNR in sigma space) and h_i = λ_{i+1} - λ_i, one step is

    D_i = (1 + 1 / (2r_i))·x̂0_i - 1 / (2r_i)·x̂0_{i-1},   r_i = h_{i-1} / h_i,
    x_{i+1} = (σ_{i+1} / σ_i)·x_i - (e^{-h_i} - 1)·D_i,

i.e. the "midpoint" form of diffusers' DPMSolverMultistepScheduler (solver_order=2,
algorithm_type="dpmsolver++") divided by α_{i+1}. As there, the first step and the final step
into σ = 0 are first order (D_i = x̂0_i); the final one returns x̂0 itself.
"""

from __future__ import annotations

import math

from torch import Tensor

from sd_core.samplers.base import (
    Denoiser,
    NoiseSource,
    StepCallback,
    batch_sigma,
    check_inputs,
    final_latent,
)


def sample_dpmpp_2m(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    callback: StepCallback | None = None,
) -> Tensor:
    """DPM++ 2M steps; `noise` is never called.

    x: (B, C, h, w) at sigmas[0]; sigmas: (N+1,) decreasing → (B, C, h, w) final latent.
    """
    n = check_inputs(x, sigmas)
    previous: Tensor | None = None  # x̂0 of the step before
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # 1. x̂0_i = D(x_i; σ_i).
        denoised = denoise(x, batch_sigma(x, sigmas[i]))
        if sigma_next == 0:
            # 2a. Final step, first order: e^{-h} = σ_{i+1} / σ_i = 0, so x_{i+1} = x̂0_i.
            x = denoised
        else:
            # 2b. h_i = λ_{i+1} - λ_i = log(σ_i / σ_{i+1}).
            h = math.log(sigma) - math.log(sigma_next)
            if previous is None:
                d = denoised
            else:
                # 3. r_i = h_{i-1} / h_i and the extrapolated D_i.
                h_last = math.log(float(sigmas[i - 1])) - math.log(sigma)
                r = h_last / h
                d = denoised + (denoised - previous) / (2 * r)
            # 4. x_{i+1} = (σ_{i+1} / σ_i)·x_i - (e^{-h} - 1)·D_i.
            x = (sigma_next / sigma) * x - math.expm1(-h) * d
        previous = denoised
        if callback is not None:
            callback(i + 1, n, x, denoised)
    return final_latent(x, sigmas[-1])
