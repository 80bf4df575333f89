"""LMS: a linear multistep (Adams–Bashforth-type) solver of the probability-flow ODE in σ.

Katherine Crowson's k-diffusion `sample_lms`, as diffusers' LMSDiscreteScheduler runs it (order
4): the slope d(σ) = (x - D(x; σ)) / σ is approximated by the Lagrange polynomial through the
last k slopes (k = 1 … 4 while the history fills), and each step integrates that polynomial
exactly over [σ_i, σ_{i+1}]:

    x_{i+1} = x_i + Σ_j c_j·d_{i-j},   c_j = ∫_{σ_i}^{σ_{i+1}} Π_{m≠j} (τ - σ_{i-m}) / (σ_{i-j} - σ_{i-m}) dτ.
"""

from __future__ import annotations

import numpy as np
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


def lms_coefficients(nodes: list[float], sigma_to: float) -> list[float]:
    """c_j for nodes [σ_i, σ_{i-1}, …] (newest first): ∫ over [σ_i, σ_to] of the j-th Lagrange basis.

    The integrands are polynomials of degree < 4, so the integral is exact (diffusers gets the
    same numbers from scipy's adaptive quadrature).
    """
    coefficients = []
    for j, node_j in enumerate(nodes):
        others = [node for m, node in enumerate(nodes) if m != j]
        basis = (
            np.polynomial.Polynomial.fromroots(others)
            if others
            else np.polynomial.Polynomial([1.0])
        )
        basis = basis / float(np.prod([node_j - node for node in others]))
        antiderivative = basis.integ()
        coefficients.append(float(antiderivative(sigma_to) - antiderivative(nodes[0])))
    return coefficients


def sample_lms(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    callback: StepCallback | None = None,
    order: int = 4,
    prior_sigmas: Tensor | None = None,
) -> Tensor:
    """LMS steps of up to `order`; `noise` is never called.

    x: (B, C, h, w) at sigmas[0]; sigmas: (N+1,) decreasing → (B, C, h, w) final latent.
    prior_sigmas: the σ's of a longer schedule that precede sigmas[0] but are not visited. Only
        for matching diffusers' img2img, whose LMS builds its polynomials over the full
        schedule's nodes (σ_{i-j} of skipped steps included) while it has only the slopes of the
        visited ones: with them, step k uses order min(len(prior) + k + 1, `order`) and pairs
        the newest slopes with the first coefficients. None (the default) is plain LMS.
    """
    n = check_inputs(x, sigmas)
    if order < 1:
        raise ValueError(f"order must be at least 1, got {order}")
    prior = [] if prior_sigmas is None else [float(s) for s in prior_sigmas]
    nodes_all = prior + [float(s) for s in sigmas]
    offset = len(prior)
    slopes: list[Tensor] = []  # newest last
    for i in range(n):
        k = offset + i  # this step's index in the full schedule
        # 1. d_i = (x_i - D(x_i; σ_i)) / σ_i.
        denoised = denoise(x, batch_sigma(x, sigmas[i]))
        slopes.append(ode_slope(x, denoised, nodes_all[k]))
        if len(slopes) > order:
            slopes.pop(0)
        # 2. Coefficients over the last min(k + 1, order) nodes of the schedule, newest first.
        current_order = min(k + 1, order)
        nodes = [nodes_all[k - j] for j in range(current_order)]
        coefficients = lms_coefficients(nodes, nodes_all[k + 1])
        # 3. x_{i+1} = x_i + Σ_j c_j·d_{i-j}; with fewer slopes than coefficients (img2img
        #    history) the surplus coefficients go unused, as in diffusers.
        step = torch.zeros_like(x)
        for c, d in zip(coefficients, reversed(slopes), strict=False):
            step = step + c * d
        x = x + step
        if callback is not None:
            callback(i + 1, n, x, denoised)
    return final_latent(x, sigmas[-1])
