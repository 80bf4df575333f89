"""Restart: Xu et al. 2023, "Restart Sampling for Improving Generative Processes".

Deterministic ODE samplers make small errors that add up; stochastic ones contract them but
need many steps. Restart takes the ODE path (Heun's method, as `heun`) and, once at a low
noise level σ_j ≈ t_min, repeats K times: jump forward to t_max by adding fresh noise of
standard deviation sqrt(t_max² - σ_j²), then integrate the ODE back down to σ_j. The added
noise contracts the error accumulated so far; the ODE keeps the discretisation error small.
Then the main path goes on to σ = 0.

This implementation's choices (the paper's Stable Diffusion setting, one restart interval):
t_min = 0.1, t_max = 2, K = 2; j is the inner σ of the schedule nearest t_min among those
below t_max (no restart when there is none, e.g. 1 step); each return from t_max to σ_j takes
`restart_steps` Heun steps on σ's evenly spaced in log σ, by default as many as the main path
takes over that range (one more than its σ's strictly between σ_j and t_max), 2 to 10: the
ODE error of the return then matches the main path's, and at most 40 model calls are added
(e.g. 20 steps: 39 calls on the main path, 36 in the restarts). Noise: K draws at σ_j, from the
`NoiseSource`. There is no diffusers scheduler for Restart; see its
test for the independent check.
"""

from __future__ import annotations

import math

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


def heun_step(
    denoise: Denoiser, x: Tensor, sigma: float, sigma_next: float
) -> tuple[Tensor, Tensor]:
    """One Heun step σ → σ' (Euler into σ' = 0); returns (x at σ', x̂0 at σ)."""
    denoised = denoise(x, batch_sigma(x, torch.tensor(sigma, dtype=torch.float32)))
    d = ode_slope(x, denoised, sigma)
    x_euler = x + d * (sigma_next - sigma)
    if sigma_next == 0:
        return x_euler, denoised
    d_next = ode_slope(
        x_euler,
        denoise(x_euler, batch_sigma(x, torch.tensor(sigma_next, dtype=torch.float32))),
        sigma_next,
    )
    return x + (d + d_next) / 2 * (sigma_next - sigma), denoised


def restart_index(sigmas: list[float], t_min: float, t_max: float) -> int | None:
    """j: the inner σ (not the first, not the last) nearest t_min among those below t_max."""
    inner = [i for i in range(1, len(sigmas) - 1) if 0 < sigmas[i] < t_max]
    if not inner:
        return None
    return min(inner, key=lambda i: abs(math.log(sigmas[i]) - math.log(t_min)))


def sample_restart(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    callback: StepCallback | None = None,
    t_min: float = 0.1,
    t_max: float = 2.0,
    restarts: int = 2,
    restart_steps: int | None = None,
) -> Tensor:
    """Heun steps with `restarts` returns from t_max to σ_j ≈ t_min; calls `noise` `restarts`
    times, at σ_j (none when the schedule has no σ_j).

    x: (B, C, h, w) at sigmas[0]; sigmas: (N+1,) decreasing → (B, C, h, w) final latent.
    The callback sees the main steps 1 … N only; step j's x is the one after the restarts.
    """
    n = check_inputs(x, sigmas)
    if not 0 < t_min < t_max or restarts < 0 or (restart_steps is not None and restart_steps < 1):
        raise ValueError(
            "need 0 < t_min < t_max, restarts >= 0 and restart_steps >= 1, got "
            f"{t_min}, {t_max}, {restarts}, {restart_steps}"
        )
    values = [float(s) for s in sigmas]
    j = restart_index(values, t_min, t_max)
    m = restart_steps
    if m is None:
        between = sum(1 for s in values if j is not None and values[j] < s < t_max)
        m = min(10, max(2, between + 1))
    for i in range(n):
        # 1. The main path: a Heun step σ_i → σ_{i+1}.
        x, denoised = heun_step(denoise, x, values[i], values[i + 1])
        if i + 1 == j:
            # 2. At σ_j: K times, noise up to t_max and integrate back down in m Heun steps.
            back = torch.logspace(
                math.log10(t_max), math.log10(values[j]), m + 1, dtype=torch.float64
            )
            back_values = [t_max, *back[1:-1].tolist(), values[j]]
            for _ in range(restarts):
                x = x + noise() * math.sqrt(t_max**2 - values[j] ** 2)
                for a, b in zip(back_values[:-1], back_values[1:], strict=True):
                    x, _ = heun_step(denoise, x, a, b)
        if callback is not None:
            callback(i + 1, n, x, denoised)
    return final_latent(x, sigmas[-1])
