"""DPM++ 2M SDE: the second-order multistep SDE solver of Lu et al. 2022, "DPM-Solver++: Fast
Solver for Guided Sampling of Diffusion Probabilistic Models" (appendix, SDE-DPM-Solver++(2M)).

The data-prediction SDE, integrated exactly in its linear part: with λ = -log σ and
h_i = λ_{i+1} - λ_i (so e^{-h_i} = σ_{i+1} / σ_i), one step in sigma space is

    D_i = x̂0_i + (x̂0_i - x̂0_{i-1}) / (2r_i),   r_i = h_{i-1} / h_i,
    x_{i+1} = (σ_{i+1} / σ_i)·e^{-h_i}·x_i + (1 - e^{-2h_i})·D_i + σ_{i+1}·sqrt(1 - e^{-2h_i})·z_i,

z_i ~ N(0, I): half of each step's decay is spent on the drift, and the noise refills exactly
the variance the deterministic part removes. This is diffusers' DPMSolverMultistepScheduler
(algorithm_type="sde-dpmsolver++", solver_order=2, midpoint) divided by α_{i+1}. As there, the
first step is first order (D_i = x̂0_i), as is the last (into σ = 0 it returns x̂0_i), and z_i is
drawn on every step, the last included, where its weight is 0.
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


def sde_step(x: Tensor, d: Tensor, sigma: float, sigma_next: float, z: Tensor) -> Tensor:
    """One SDE-DPM-Solver++ step σ → σ' with the combined data estimate d (σ' > 0):
    x' = (σ'/σ)·e^{-h}·x + (1 - e^{-2h})·d + σ'·sqrt(1 - e^{-2h})·z, h = log(σ/σ')."""
    h = math.log(sigma) - math.log(sigma_next)
    one_minus = -math.expm1(-2 * h)  # 1 - e^{-2h}, accurate for small h
    return (sigma_next / sigma) * math.exp(-h) * x + one_minus * d + sigma_next * one_minus**0.5 * z


def sample_dpmpp_2m_sde(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    callback: StepCallback | None = None,
) -> Tensor:
    """DPM++ 2M SDE steps; calls `noise` once per step, the last included.

    x: (B, C, h, w) at sigmas[0]; sigmas: (N+1,) decreasing → (B, C, h, w) final latent.
    """
    n = check_inputs(x, sigmas)
    previous: Tensor | None = None  # x̂0 of the step before
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # 1. x̂0_i = D(x_i; σ_i), then z_i, drawn every step as diffusers draws it.
        denoised = denoise(x, batch_sigma(x, sigmas[i]))
        z = noise()
        if sigma_next == 0:
            # 2a. Last step, first order: e^{-h} = 0, so x_{i+1} = x̂0_i (z has weight 0).
            x = denoised
        else:
            d = denoised
            if previous is not None and i < n - 1:
                # 2b. r_i = h_{i-1} / h_i and the extrapolated D_i.
                h = math.log(sigma) - math.log(sigma_next)
                r = (math.log(float(sigmas[i - 1])) - math.log(sigma)) / h
                d = denoised + (denoised - previous) / (2 * r)
            # 3. The exact linear part, the weighted D_i and σ_{i+1}·sqrt(1 - e^{-2h})·z_i.
            x = sde_step(x, d, sigma, sigma_next, z)
        previous = denoised
        if callback is not None:
            callback(i + 1, n, x, denoised)
    return final_latent(x, sigmas[-1])
