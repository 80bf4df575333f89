"""PLMS: the pseudo linear multistep sampler of Liu et al. 2022, "Pseudo Numerical Methods for
Diffusion Models on Manifolds" (PNDM), without its Runge–Kutta warm-up.

As CompVis' PLMS and diffusers' PNDMScheduler with skip_prk_steps=True run it for SD: ε_θ is
extrapolated by the Adams–Bashforth formulas of eq. (12) and moved with the "transfer" φ of
eq. (9), which equals a DDIM step (in sigma space: x' = x + (σ' - σ)·ε). The first step is
taken twice: once with ε_0, then again from the same x with (ε_0 + ε_1) / 2, where ε_1 is
evaluated at the first result (a Heun-like start; diffusers' timestep list repeats the second
timestep for it). So N steps cost N + 1 denoiser calls when N > 1.
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


def sample_plms(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    callback: StepCallback | None = None,
) -> Tensor:
    """PLMS steps; `noise` is never called.

    x: (B, C, h, w) at sigmas[0]; sigmas: (N+1,) decreasing, for SD ending at σ(t=0) → the final
    latent in the model's scaling, as diffusers' PNDM returns it.
    """
    n = check_inputs(x, sigmas)
    eps_history: list[Tensor] = []  # ε of past steps, newest last (ε_1 of the restart excluded)
    for i in range(n):
        sigma, sigma_prev = float(sigmas[i]), float(sigmas[i + 1])
        # 1. ε_θ(x_t, t) = (x_t - D(x_t; σ_t)) / σ_t.
        denoised = denoise(x, batch_sigma(x, sigmas[i]))
        eps = ode_slope(x, denoised, sigma)
        eps_history = [*eps_history[-3:], eps]
        # 2. ε' of eq. (12): Adams–Bashforth over the history.
        if len(eps_history) == 1:
            eps_prime = eps
        elif len(eps_history) == 2:
            eps_prime = (3 * eps_history[-1] - eps_history[-2]) / 2
        elif len(eps_history) == 3:
            eps_prime = (23 * eps_history[-1] - 16 * eps_history[-2] + 5 * eps_history[-3]) / 12
        else:
            eps_prime = (
                55 * eps_history[-1]
                - 59 * eps_history[-2]
                + 37 * eps_history[-3]
                - 9 * eps_history[-4]
            ) / 24
        # 3. x_{t-δ} = φ(x_t, ε', t, t-δ), the DDIM transfer of eq. (9).
        x_next = x + eps_prime * (sigma_prev - sigma)
        if i == 0 and n > 1:
            # 4. Restart of the first step with the mean of ε at both ends.
            eps_end = ode_slope(x_next, denoise(x_next, batch_sigma(x, sigmas[1])), sigma_prev)
            x_next = x + (eps + eps_end) / 2 * (sigma_prev - sigma)
        x = x_next
        if callback is not None:
            callback(i + 1, n, x, denoised)
    return final_latent(x, sigmas[-1])
