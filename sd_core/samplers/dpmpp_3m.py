"""DPM++ 3M and DPM++ 3M SDE: the third-order multistep DPM-Solver++ of Lu et al. 2022,
"DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models", deterministic
(data-prediction ODE) and stochastic (data-prediction SDE, as in `dpmpp_2m_sde`).

With λ = -log σ, h = λ_{i+1} - λ_i and the two previous step sizes h_0 = λ_i - λ_{i-1},
h_1 = λ_{i-1} - λ_{i-2}, r_0 = h_0 / h, r_1 = h_1 / h, the last three x̂0's give the divided
differences

    D1_0 = (x̂0_i - x̂0_{i-1}) / r_0,   D1_1 = (x̂0_{i-1} - x̂0_{i-2}) / r_1,
    D1 = D1_0 + r_0 / (r_0 + r_1)·(D1_0 - D1_1),   D2 = (D1_0 - D1_1) / (r_0 + r_1),

and one step in sigma space (φ's are the exponential integrator's weights) is

    ODE: x_{i+1} = (σ_{i+1}/σ_i)·x_i - (e^{-h} - 1)·x̂0_i + ((e^{-h} - 1)/h + 1)·D1
                   - ((e^{-h} - 1 + h)/h² - 1/2)·D2
    SDE: x_{i+1} = (σ_{i+1}/σ_i)·e^{-h}·x_i + (1 - e^{-2h})·x̂0_i + ((1 - e^{-2h})/(-2h) + 1)·D1
                   + ((1 - e^{-2h} - 2h)/(2h)² - 1/2)·D2 + σ_{i+1}·sqrt(1 - e^{-2h})·z_i.

This is diffusers' DPMSolverMultistepScheduler (solver_order=3, algorithm_type "dpmsolver++" /
"sde-dpmsolver++") divided by α_{i+1}, with its warm-up and wind-down: step 1 is first order,
step 2 second order (the midpoint form of `dpmpp_2m` / `dpmpp_2m_sde`); the last step is first
order, and when the whole schedule has fewer than 15 steps the one before it is second order.
"Whole schedule" counts the steps img2img skips, so img2img passes them as `prior_sigmas` (the
registry binds them, as for LMS). The SDE variant draws z_i every step, the last included.
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

# diffusers' lower_order_final: below this many steps, the second-to-last step is second order.
_LOWER_ORDER_BELOW = 15


def _sample_3m(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource | None,
    callback: StepCallback | None,
    prior_sigmas: Tensor | None,
) -> Tensor:
    n = check_inputs(x, sigmas)
    total = n + (0 if prior_sigmas is None else prior_sigmas.numel())
    lam = [-math.log(float(s)) if float(s) > 0 else math.inf for s in sigmas]
    history: list[Tensor] = []  # the x̂0's of the last three steps, newest last
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # 1. x̂0_i = D(x_i; σ_i); the SDE's z_i, drawn every step as diffusers draws it.
        denoised = denoise(x, batch_sigma(x, sigmas[i]))
        history = [*history[-2:], denoised]
        z = noise() if noise is not None else None
        if sigma_next == 0:
            # 2a. Last step into σ = 0, first order: x_{i+1} = x̂0_i.
            x = denoised
        else:
            # 2b. The order: what the history allows, lowered at the end of the schedule.
            order = min(len(history), 3)
            if i == n - 1:
                order = 1
            elif i == n - 2 and total < _LOWER_ORDER_BELOW:
                order = min(order, 2)
            h = lam[i + 1] - lam[i]
            d1 = d2 = None
            if order == 2:
                r0 = (lam[i] - lam[i - 1]) / h
                d1 = 0.5 * (denoised - history[-2]) / r0  # the midpoint weight ½ folded in
            elif order == 3:
                r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
                d1_0 = (denoised - history[-2]) / r0
                d1_1 = (history[-2] - history[-3]) / r1
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
            x = _step(x, denoised, d1, d2, order, sigma, sigma_next, h, z)
        if callback is not None:
            callback(i + 1, n, x, denoised)
    return final_latent(x, sigmas[-1])


def _step(
    x: Tensor,
    d0: Tensor,
    d1: Tensor | None,
    d2: Tensor | None,
    order: int,
    sigma: float,
    sigma_next: float,
    h: float,
    z: Tensor | None,
) -> Tensor:
    """One step of the given order, ODE when z is None, else SDE (see the module docstring)."""
    if z is None:
        em1 = math.expm1(-h)  # e^{-h} - 1
        out = (sigma_next / sigma) * x - em1 * d0
        if order == 2 and d1 is not None:
            out = out - em1 * d1
        elif order == 3 and d1 is not None and d2 is not None:
            out = out + (em1 / h + 1.0) * d1 - ((em1 + h) / h**2 - 0.5) * d2
        return out
    one_minus = -math.expm1(-2 * h)  # 1 - e^{-2h}
    out = (sigma_next / sigma) * math.exp(-h) * x + one_minus * d0
    if order == 2 and d1 is not None:
        out = out + one_minus * d1
    elif order == 3 and d1 is not None and d2 is not None:
        out = out + (one_minus / (-2 * h) + 1.0) * d1
        out = out + ((one_minus - 2 * h) / (2 * h) ** 2 - 0.5) * d2
    return out + sigma_next * one_minus**0.5 * z


def sample_dpmpp_3m(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    callback: StepCallback | None = None,
    prior_sigmas: Tensor | None = None,
) -> Tensor:
    """DPM++ 3M steps; `noise` is never called.

    x: (B, C, h, w) at sigmas[0]; sigmas: (N+1,) decreasing → (B, C, h, w) final latent.
    prior_sigmas: the σ's of the schedule before sigmas[0] that img2img skips (only their count
    matters: it decides whether the second-to-last step is lowered to second order).
    """
    return _sample_3m(denoise, x, sigmas, None, callback, prior_sigmas)


def sample_dpmpp_3m_sde(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    callback: StepCallback | None = None,
    prior_sigmas: Tensor | None = None,
) -> Tensor:
    """DPM++ 3M SDE steps; calls `noise` once per step, the last included.

    x, sigmas, prior_sigmas: as `sample_dpmpp_3m`.
    """
    return _sample_3m(denoise, x, sigmas, noise, callback, prior_sigmas)
