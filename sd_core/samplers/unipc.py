"""UniPC: the unified predictor-corrector of Zhao et al. 2023, "UniPC: A Unified Predictor-
Corrector Framework for Fast Sampling of Diffusion Models" (Algorithms 1-2, B(h) = e^h - 1,
"bh2"), as diffusers' UniPCMultistepScheduler runs it for SD (order 2, data prediction).

With λ = -log σ, h = λ_t - λ_s and hh = -h (data prediction), each step i

  1. evaluates x̂0_i = D(x_i; σ_i);
  2. corrects x_i (UniC, order p of the previous step) using x̂0_i, which costs no extra call:
         x_i ← (σ_i/σ_{i-1})·x_{i-1} - φ1·x̂0_{i-1} - B(h)·(Σ_k ρ_k·D1_k + ρ_p·(x̂0_i - x̂0_{i-1}));
  3. predicts x_{i+1} (UniP, order p = min(2, N - i, i + 1)):
         x_{i+1} = (σ_{i+1}/σ_i)·x_i - φ1·x̂0_i - B(h)·Σ_k ρ_k·D1_k,
     where φ1 = e^{hh} - 1, D1_k = (x̂0_{i-k} - x̂0_i) / r_k, r_k = (λ_{i-k} - λ_i) / h, and the
     ρ solve the order conditions R·ρ = b of the paper (ρ = 1/2 in the order-2 predictor).

These are diffusers' VP-space formulas divided by α_{i+1}. The last step (into σ = 0) is first
order and returns x̂0 of the last (corrected) state.
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


def _corrector_rhos(h: float, r: float | None) -> tuple[float, ...]:
    """ρ of UniC: order 1 → (1/2,); order 2 → the solution of [[1, 1], [r, 1]]·ρ = b.

    b_k = k!·hh·φ_{k+1}(hh) / B(h) with hh = -h, B(h) = e^{hh} - 1 (bh2) and
    φ_{k+1}(z) = (e^z - Σ_{j≤k} z^j / j!) / z^{k+1}, the order conditions of the paper.
    """
    if r is None:
        return (0.5,)
    hh = -h
    b_h = math.expm1(hh)
    hh_phi_2 = math.expm1(hh) / hh - 1  # hh·φ_2(hh)
    hh_phi_3 = hh_phi_2 / hh - 0.5  # hh·φ_3(hh)
    b1 = 1 * hh_phi_2 / b_h
    b2 = 2 * hh_phi_3 / b_h
    rho_0 = (b1 - b2) / (1 - r)
    return (rho_0, b1 - rho_0)


def sample_unipc(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    callback: StepCallback | None = None,
) -> Tensor:
    """UniPC-2 (bh2) steps with the UniC corrector; `noise` is never called.

    x: (B, C, h, w) at sigmas[0]; sigmas: (N+1,) decreasing → (B, C, h, w) final latent.
    """
    n = check_inputs(x, sigmas)
    lambdas = [-math.log(float(s)) if float(s) > 0 else math.inf for s in sigmas]
    history: list[Tensor] = []  # x̂0 of earlier steps, newest last
    x_last: Tensor | None = None  # x_{i-1}, the state the last predictor started from
    last_order = 0
    for i in range(n):
        sigma = float(sigmas[i])
        # 1. x̂0_i = D(x_i; σ_i).
        denoised = denoise(x, batch_sigma(x, sigmas[i]))
        # 2. UniC: correct x_i with the new x̂0_i.
        if x_last is not None:
            h = lambdas[i] - lambdas[i - 1]
            m0 = history[-1]
            r = (lambdas[i - 2] - lambdas[i - 1]) / h if last_order == 2 else None
            rhos = _corrector_rhos(h, r)
            x_corr = (sigma / float(sigmas[i - 1])) * x_last - math.expm1(-h) * m0
            residual = rhos[-1] * (denoised - m0)
            if r is not None:
                residual = residual + rhos[0] * (history[-2] - m0) / r
            x = x_corr - math.expm1(-h) * residual
        history = [*history[-1:], denoised]
        # 3. UniP to σ_{i+1}, of order min(2, N - i, i + 1).
        order = min(2, n - i, i + 1)
        x_last = x
        if float(sigmas[i + 1]) == 0:
            # e^{-h} = 0 and φ1 = -1: the first-order predictor lands on x̂0_i.
            x = denoised
        else:
            h = lambdas[i + 1] - lambdas[i]
            x = (float(sigmas[i + 1]) / sigma) * x_last - math.expm1(-h) * denoised
            if order == 2:
                r = (lambdas[i - 1] - lambdas[i]) / h
                x = x - math.expm1(-h) * 0.5 * (history[-2] - denoised) / r
        last_order = order
        if callback is not None:
            callback(i + 1, n, x, denoised)
    return final_latent(x, sigmas[-1])
