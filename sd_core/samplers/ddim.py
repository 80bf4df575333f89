"""DDIM: the sampler of Song et al. 2021, "Denoising Diffusion Implicit Models", deterministic
(η = 0) unless asked for an η.

Eq. (12) of the paper with σ_t = 0, as diffusers' DDIMScheduler runs it for SD (leading
timesteps, set_alpha_to_one=False, so the last step lands on ᾱ_0 rather than on ᾱ = 1):

    x_{t-1} = sqrt(ᾱ_{t-1})·x̂0 + sqrt(1 - ᾱ_{t-1})·ε_θ(x_t, t),   x̂0 = (x_t - sqrt(1 - ᾱ_t)·ε_θ) / sqrt(ᾱ_t).

Divided by sqrt(ᾱ_{t-1}) this is exactly an Euler step in sigma space, x' = x̂0 + σ_{t-1}·ε_θ,
which is how it is computed here. With η > 0 (eq. 12 with σ_t of eq. 16) the direction term
shrinks to σ_down·ε_θ and fresh noise σ_up·z is added, σ_down and σ_up being the ancestral
split of σ_t → σ_{t-1} with that η (`ancestral_split`): the same step diffusers takes with
`eta`, drawing its variance noise once a step.
"""

from __future__ import annotations

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


def sample_ddim(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM steps; `noise` is called once a step when `eta` > 0, never with η = 0.

    x: (B, C, h, w) at sigmas[0]; sigmas: (N+1,) decreasing, for SD ending at σ(t=0) → the final
    latent sqrt(ᾱ_0)·(x̂0 + σ_0·ε_θ), which is what diffusers' DDIM returns.
    """
    n = check_inputs(x, sigmas)
    for i in range(n):
        sigma, sigma_prev = float(sigmas[i]), float(sigmas[i + 1])
        # 1. x̂0 = D(x_t; σ_t), the "predicted x0" of eq. (12).
        denoised = denoise(x, batch_sigma(x, sigmas[i]))
        # 2. ε_θ = (x_t - x̂0) / σ_t, the "direction pointing to x_t".
        eps = ode_slope(x, denoised, sigma)
        # 3. x_{t-1} = x̂0 + σ_{t-1}·ε_θ (eq. 12 divided by sqrt(ᾱ_{t-1})); with η > 0 the
        #    direction goes to σ_down and fresh noise makes up σ_up.
        if eta > 0:
            sigma_down, sigma_up = ancestral_split(sigma, sigma_prev, eta)
            x = denoised + eps * sigma_down + noise() * sigma_up
        else:
            x = denoised + eps * sigma_prev
        if callback is not None:
            callback(i + 1, n, x, denoised)
    return final_latent(x, sigmas[-1])
