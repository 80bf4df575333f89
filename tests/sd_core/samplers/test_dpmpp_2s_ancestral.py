"""DPM++ 2S a, which has no diffusers reference (DPMSolverSinglestepScheduler is not ancestral
and takes its intermediate points from the timestep grid).

Checked two ways instead: (1) step for step against an independent implementation written
here from the paper's variance-preserving formulation (Lu et al. 2022, Algorithm 1 with
x_t = α_t·x0 + σ_t·ε, α_t = 1/sqrt(1 + σ²), λ_t = log(α_t/σ_t)) plus the ancestral split, on
the same noise draws; (2) by what it samples: with the exact denoiser of Gaussian data
x0 ~ N(μ, s²), enough steps must give N(μ, s²), and wrong noise must not.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from sd_core.config import ScheduleConfig
from sd_core.samplers import get_sampler
from sd_core.schedule import NoiseSchedule

DATA_STD = 0.5
SHAPE = (2, 4, 6, 6)


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule(ScheduleConfig())


def exact_denoiser(mean: Tensor, calls: list[float] | None = None) -> Callable[..., Tensor]:
    """D(x; σ) = μ + s²/(s² + σ²)·(x - μ): the exact x̂0 for x0 ~ N(μ, s²) elementwise."""

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        if calls is not None:
            calls.append(float(sigma[0]))
        shrink = (DATA_STD**2 / (DATA_STD**2 + sigma.double() ** 2)).view(-1, 1, 1, 1)
        return (mean.double() + shrink * (x.double() - mean.double())).to(x.dtype)

    return denoise


def reference_2s_ancestral(
    denoise: Callable[..., Tensor], x: Tensor, sigmas: list[float], noise: Callable[[], Tensor]
) -> Tensor:
    """Independent DPM++ 2S a in VP variables (float64): x̃ = α·x, steps in λ = log(α/σ_vp)."""

    def alpha(s: float) -> float:
        return 1.0 / math.sqrt(1.0 + s * s)

    def lam(s: float) -> float:
        return math.log(alpha(s) / (s * alpha(s)))

    def x0(x_vp: Tensor, s: float) -> Tensor:
        batch_sigma = torch.full((x_vp.shape[0],), s, dtype=torch.float32)
        return denoise((x_vp / alpha(s)).float(), batch_sigma).double()

    x_vp = x.double() * alpha(sigmas[0])
    for s_from, s_to in zip(sigmas[:-1], sigmas[1:], strict=True):
        pred = x0(x_vp, s_from)
        if s_to == 0:
            x_vp = pred
            continue
        # Posterior split in sigma space: σ_up² = σ_to²(σ_from² - σ_to²)/σ_from².
        up = s_to * math.sqrt(s_from**2 - s_to**2) / s_from
        down = math.sqrt(s_to**2 - up**2)
        # DPM-Solver++(2S), r = 1/2: λ_mid halfway between λ(σ_from) and λ(σ_down).
        h = lam(down) - lam(s_from)
        s_mid = math.exp(-(lam(s_from) + h / 2))
        vp = lambda s: s * alpha(s)  # noqa: E731  (σ_t of the VP process)
        u_vp = (vp(s_mid) / vp(s_from)) * x_vp - alpha(s_mid) * (math.exp(-h / 2) - 1) * pred
        pred_mid = x0(u_vp, s_mid)
        x_down_vp = (vp(down) / vp(s_from)) * x_vp - alpha(down) * (math.exp(-h) - 1) * pred_mid
        # Back to sigma space at σ_down, add σ_up of noise, and on to VP at σ_to.
        x_vp = (x_down_vp / alpha(down) + up * noise().double()) * alpha(s_to)
    return x_vp.float()  # the final latent in the model's scaling is the VP latent itself


def per_image_noise(seed: int, shape: tuple[int, ...] = SHAPE) -> Callable[[], Tensor]:
    generators = [torch.Generator().manual_seed(seed + i) for i in range(shape[0])]
    return lambda: torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in generators])


@pytest.mark.parametrize("steps", (1, 2, 10, 50))
def test_equals_an_independent_implementation(steps: int, schedule: NoiseSchedule) -> None:
    spec = get_sampler("DPM++ 2S a")
    mean = torch.randn((1, *SHAPE[1:]), generator=torch.Generator().manual_seed(5)) * 0.8
    sigmas = spec.sigmas(schedule, steps)
    start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    start = start * spec.initial_noise_scale(sigmas)
    draws: list[int] = []
    noise = per_image_noise(40)

    def counted() -> Tensor:
        draws.append(1)
        return noise()

    calls: list[float] = []
    actual = spec.fn(exact_denoiser(mean, calls), start.clone(), sigmas, noise=counted)
    expected = reference_2s_ancestral(
        exact_denoiser(mean), start.clone(), sigmas.tolist(), per_image_noise(40)
    )
    error = float((actual - expected).abs().max() / expected.abs().max())
    assert error < 1e-5, error
    # Two model calls per step but the last (into σ = 0), one draw per step that adds noise.
    assert len(calls) == 2 * steps - 1 and len(draws) == steps - 1
    assert spec.stochastic


def sample(schedule: NoiseSchedule, mean: Tensor, steps: int, noise_scale: float) -> Tensor:
    shape = (400, 4, 2, 2)
    spec = get_sampler("dpmpp_2s_a")
    generator = torch.Generator().manual_seed(steps)
    sigmas = spec.sigmas(schedule, steps)
    x = torch.randn(shape, generator=generator) * spec.initial_noise_scale(sigmas)

    def noise() -> Tensor:
        return torch.randn(shape, generator=generator) * noise_scale

    return spec.fn(exact_denoiser(mean), x, sigmas, noise=noise)


def test_samples_the_data_distribution(schedule: NoiseSchedule) -> None:
    """100 steps give N(μ, s²): per-element means within 4.5 standard errors, spread within 4%
    (6400 values); 10% too much noise or none misses the spread."""
    mean = torch.randn((1, 4, 2, 2), generator=torch.Generator().manual_seed(3))
    out = sample(schedule, mean, 100, 1.0)
    assert float((out.mean(0) - mean[0]).abs().max()) < 4.5 * DATA_STD / math.sqrt(400)
    assert float((out - mean).pow(2).mean().sqrt()) == pytest.approx(DATA_STD, rel=0.04)
    for scale in (1.1, 0.0):
        spread = float((sample(schedule, mean, 100, scale) - mean).pow(2).mean().sqrt())
        assert abs(spread / DATA_STD - 1) > 0.06
