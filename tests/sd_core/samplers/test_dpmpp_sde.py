"""DPM++ SDE, checked by what it samples (k-diffusion's Brownian-tree noise is not reproduced).

Data x0 ~ N(μ, s²) elementwise has the exact denoiser D(x; σ) = μ + a(σ)·(x - μ) with
a(σ) = s² / (s² + σ²). Every step of the sampler is then affine in x and in its fresh noise, so
the distribution of its output is Gaussian with a mean and variance that a scalar recursion
over the σ schedule gives exactly (`predicted_moments`, derived from the step definitions, not
from the implementation). The samples must match it within sampling error, and as the steps
grow the prediction must approach the data distribution N(μ, s²).
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

BATCH = 400
SHAPE = (BATCH, 4, 2, 2)
DATA_STD = 0.5


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule(ScheduleConfig())


@pytest.fixture(scope="module")
def data_mean() -> Tensor:
    return torch.randn((1, *SHAPE[1:]), generator=torch.Generator().manual_seed(3))


def exact_denoiser(mean: Tensor, calls: list[float] | None = None) -> Callable[..., Tensor]:
    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        if calls is not None:
            calls.append(float(sigma[0]))
        shrink = (DATA_STD**2 / (DATA_STD**2 + sigma**2)).view(-1, 1, 1, 1)
        return mean + shrink * (x - mean)

    return denoise


def predicted_moments(sigmas: list[float]) -> tuple[float, float]:
    """(g, v): the output is μ + g·(E[x_T] - μ) + N(0, v) when x_T = σ_max·ε.

    One step σ → σ' (λ-midpoint σ_s = sqrt(σσ')), with a = a(σ), and the ancestral split
    split(σ, τ) = (τ_down, τ_up), τ_up² = τ²(σ² - τ²)/σ², τ_down² = τ² - τ_up²:
        u  = μ + k·(x - μ) + u1·z1,                  k = a + (d1/σ)(1 - a), (d1, u1) = split(σ, σ_s)
        x' = μ + (1 - d2/σ)·a(σ_s)·(u - μ) + (d2/σ)·(x - μ) + u2·z2,      (d2, u2) = split(σ, σ')
    and the last step into σ = 0 is x' = D(x).
    """

    def split(sigma: float, target: float) -> tuple[float, float]:
        up = math.sqrt(target**2 * (sigma**2 - target**2) / sigma**2)
        return math.sqrt(target**2 - up**2), up

    def a(sigma: float) -> float:
        return DATA_STD**2 / (DATA_STD**2 + sigma**2)

    gain, variance = 1.0, sigmas[0] ** 2
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        if sigma_next == 0:
            gain, variance = a(sigma) * gain, a(sigma) ** 2 * variance
            break
        sigma_mid = math.sqrt(sigma * sigma_next)
        d1, u1 = split(sigma, sigma_mid)
        k = a(sigma) + d1 / sigma * (1 - a(sigma))
        d2, u2 = split(sigma, sigma_next)
        c = (1 - d2 / sigma) * a(sigma_mid)
        gain = (c * k + d2 / sigma) * gain
        variance = (c * k + d2 / sigma) ** 2 * variance + (c * u1) ** 2 + u2**2
    return gain, variance


def sample(
    schedule: NoiseSchedule,
    mean: Tensor,
    steps: int,
    seed: int,
    *,
    noise_scale: float = 1.0,
    calls: list[float] | None = None,
    draws: list[int] | None = None,
) -> Tensor:
    """One CPU generator for the whole batch: the statistics need no per-image seeds."""
    spec = get_sampler("dpmpp_sde")
    generator = torch.Generator().manual_seed(seed)

    def noise() -> Tensor:
        if draws is not None:
            draws.append(1)
        return torch.randn(SHAPE, generator=generator) * noise_scale

    sigmas = spec.sigmas(schedule, steps)
    x = torch.randn(SHAPE, generator=generator) * spec.initial_noise_scale(sigmas)
    return spec.fn(exact_denoiser(mean, calls), x, sigmas, noise=noise)


def check_distribution(out: Tensor, mean: Tensor, expected_mean: Tensor, std: float) -> None:
    # Per element, the batch mean is within 4.5 standard errors of the expected mean.
    standard_error = std / math.sqrt(BATCH)
    assert float((out.mean(0) - expected_mean[0]).abs().max()) < 4.5 * standard_error
    # The pooled spread (6400 values, relative standard error 0.9%) within 3%.
    spread = float((out - expected_mean).pow(2).mean().sqrt())
    assert spread == pytest.approx(std, rel=0.03)


@pytest.mark.parametrize("steps", (4, 20))
def test_matches_the_exact_output_distribution(
    steps: int, schedule: NoiseSchedule, data_mean: Tensor
) -> None:
    gain, variance = predicted_moments(get_sampler("dpmpp_sde").sigmas(schedule, steps).tolist())
    expected_mean = data_mean - gain * data_mean  # E[x_T] = 0
    out = sample(schedule, data_mean, steps, seed=steps)
    check_distribution(out, data_mean, expected_mean, math.sqrt(variance))


def test_converges_to_the_data_distribution(schedule: NoiseSchedule, data_mean: Tensor) -> None:
    sigmas = {n: get_sampler("dpmpp_sde").sigmas(schedule, n).tolist() for n in (5, 20, 250, 1000)}
    errors = [abs(math.sqrt(predicted_moments(s)[1]) - DATA_STD) for s in sigmas.values()]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.02 * DATA_STD
    # 250 steps sample N(μ, s²) to within 3% in spread.
    check_distribution(sample(schedule, data_mean, 250, seed=0), data_mean, data_mean, DATA_STD)


def test_wrong_noise_is_detected(schedule: NoiseSchedule, data_mean: Tensor) -> None:
    """The statistics have teeth: 10% too much noise, or none, misses the prediction."""
    _, variance = predicted_moments(get_sampler("dpmpp_sde").sigmas(schedule, 20).tolist())
    for scale in (1.1, 0.0):
        out = sample(schedule, data_mean, 20, seed=20, noise_scale=scale)
        spread = float((out - data_mean).pow(2).mean().sqrt())
        assert abs(spread / math.sqrt(variance) - 1) > 0.06


def test_deterministic_given_seeds(schedule: NoiseSchedule, data_mean: Tensor) -> None:
    """Per-image generators, as the pipeline uses them: equal seeds, equal images."""
    spec = get_sampler("dpmpp_sde")
    sigmas = spec.sigmas(schedule, 6)

    def run(seed: int) -> Tensor:
        generators = [torch.Generator().manual_seed(seed + i) for i in range(3)]

        def noise() -> Tensor:
            return torch.cat([torch.randn((1, *SHAPE[1:]), generator=g) for g in generators])

        x = noise() * spec.initial_noise_scale(sigmas)
        return spec.fn(exact_denoiser(data_mean), x, sigmas, noise=noise)

    a = run(11)
    assert torch.equal(a, run(11))
    b = run(12)
    assert float((a - b).abs().mean()) > 0.1
    # Image 1 of seed 11 is image 0 of seed 12: each image depends on its own seed only.
    torch.testing.assert_close(a[1], b[0], rtol=0, atol=1e-6)


def test_calls_and_draws(schedule: NoiseSchedule, data_mean: Tensor) -> None:
    """Two denoiser calls and two draws per step, one call and no draw on the last."""
    calls: list[float] = []
    draws: list[int] = []
    steps = 5
    sample(schedule, data_mean, steps, seed=0, calls=calls, draws=draws)
    assert len(calls) == 2 * steps - 1
    assert len(draws) == 2 * (steps - 1)
    sigmas = get_sampler("dpmpp_sde").sigmas(schedule, steps)
    for i in range(steps - 1):
        assert calls[2 * i] == float(sigmas[i])
        # The intermediate point is the log-σ midpoint of the step.
        midpoint = math.sqrt(float(sigmas[i]) * float(sigmas[i + 1]))
        assert calls[2 * i + 1] == pytest.approx(midpoint, rel=1e-6)
