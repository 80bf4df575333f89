"""What every sampler shares: the denoiser it calls, its noise source, its progress callback.

All samplers work in k-diffusion's sigma space, x = x0 + σ·ε (see `sd_core.schedule`). A
sampler never sees the UNet: it calls a `Denoiser` that returns the predicted x0 for a noisy x
at noise level σ. Every sampler function has the one signature

    fn(denoise, x, sigmas, *, noise, callback=None) -> Tensor

x: (B, C, h, w) float32, the starting latent in sigma space at sigmas[0].
sigmas: (N+1,) decreasing; the sampler takes N steps, from sigmas[0] to sigmas[N].
noise: draws fresh standard-normal noise of x's shape; a stochastic sampler calls it exactly
    when, and as often as, its diffusers scheduler draws step noise, so that per-image CPU
    generators give diffusers' images bit for bit.
callback: called after step i (1 … N) with (i, N, x, denoised); x is the running latent at
    sigmas[i] in sigma space, and the sampler continues from that very tensor, so a caller may
    edit it in place (inpainting blends the known region in this way).

The result is `final_latent(x, sigmas[-1])`: the latent scaled as the model sees it at the last
noise level, x / sqrt(σ_N² + 1). That is x0 itself when σ_N = 0, and exactly what diffusers'
DDIM/PNDM return when their last step lands on ᾱ_0 (σ_N = σ at t=0) rather than on ᾱ = 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import torch
from torch import Tensor


class Denoiser(Protocol):
    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        """x (B, C, h, w) in sigma space, sigma (B,) float → predicted x0 (B, C, h, w)."""
        ...


class NoiseSource(Protocol):
    def __call__(self) -> Tensor:
        """A fresh standard-normal draw of the latent batch's shape, on its device and dtype."""
        ...


# (step 1..N done, N total, x at sigmas[step] in sigma space, denoised x0 of that step)
StepCallback = Callable[[int, int, Tensor, Tensor], None]
SamplerFn = Callable[..., Tensor]
FloatT = TypeVar("FloatT", float, Tensor)


def check_inputs(x: Tensor, sigmas: Tensor) -> int:
    """Validate a sampler's x and sigmas; return the number of steps N = len(sigmas) - 1."""
    if x.dim() != 4:
        raise ValueError(f"x must be a (B, C, h, w) latent batch, got shape {tuple(x.shape)}")
    if sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError(
            f"sigmas must be a 1-D tensor of at least 2 noise levels, got shape {tuple(sigmas.shape)}"
        )
    if bool((sigmas[1:] >= sigmas[:-1]).any()) or bool((sigmas < 0).any()):
        raise ValueError(
            f"sigmas must be non-negative and strictly decreasing, got {sigmas.tolist()}"
        )
    return sigmas.numel() - 1


def batch_sigma(x: Tensor, sigma: Tensor) -> Tensor:
    """The scalar σ repeated for each image of the batch: (B,) float32, on σ's own device.

    The pipeline keeps the σ schedule on the CPU, so a denoiser can read a σ (for its
    timestep) without waiting for the accelerator: no host sync inside the sampling loop. A
    denoiser moves σ to x's device itself where it computes with it."""
    return sigma.to(torch.float32).reshape(1).expand(x.shape[0])


def final_latent(x: Tensor, sigma_last: Tensor) -> Tensor:
    """x / sqrt(σ_N² + 1): the final latent in the model's scaling (x itself when σ_N = 0)."""
    if float(sigma_last) == 0.0:
        return x
    return x / (float(sigma_last) ** 2 + 1.0) ** 0.5


def ode_slope(x: Tensor, denoised: Tensor, sigma: float | Tensor) -> Tensor:
    """dx/dσ = (x − D(x; σ)) / σ, the probability-flow ODE's slope in sigma space (Karras et
    al. 2022, eq. 4 with σ(t) = t); it is also the noise ε the model predicted."""
    return (x - denoised) / sigma


def ancestral_split(
    sigma_from: FloatT, sigma_to: FloatT, eta: float = 1.0
) -> tuple[FloatT, FloatT]:
    """(σ_down, σ_up) of an ancestral step σ_from → σ_to (Ho et al. 2020 in sigma space):
    σ_up² = η²·σ_to²·(σ_from² − σ_to²) / σ_from², σ_down² = σ_to² − σ_up², so the deterministic
    step to σ_down plus fresh noise σ_up lands on σ_to. η (0 … 1) is DDIM's eta (Song et al.
    2021, eq. 16, divided by sqrt(ᾱ_{t-1}) as every step here is): 1 is ancestral sampling, 0
    a deterministic step. Floats or float tensors alike."""
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    if eta != 1.0:
        sigma_up = sigma_up * eta
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up
