"""Restart (Xu et al. 2023), which has no diffusers scheduler.

Checked against an independent implementation written here: the whole path as one flat list of
moves (Heun steps and noise jumps) built up front from the paper's description, then run by a
plain Heun loop on the same noise draws; and by what it samples with the exact denoiser of
Gaussian data x0 ~ N(μ, s²).
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
    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        if calls is not None:
            calls.append(float(sigma[0]))
        shrink = (DATA_STD**2 / (DATA_STD**2 + sigma**2)).view(-1, 1, 1, 1)
        return mean + shrink * (x - mean)

    return denoise


def reference_path(sigmas: list[float], m: int) -> list[tuple[str, float, float]]:
    """("ode", σ, σ') and ("noise", σ, t_max) moves: t_min 0.1, t_max 2, two restarts."""
    inner = [i for i in range(1, len(sigmas) - 1) if sigmas[i] < 2.0]
    j = min(inner, key=lambda i: abs(math.log(sigmas[i] / 0.1))) if inner else None
    moves = []
    for i in range(len(sigmas) - 1):
        moves.append(("ode", sigmas[i], sigmas[i + 1]))
        if i + 1 == j:
            ratio = (sigmas[j] / 2.0) ** (1 / m)
            back = [2.0 * ratio**k for k in range(m)] + [sigmas[j]]
            for _ in range(2):
                moves.append(("noise", sigmas[j], 2.0))
                moves += [("ode", a, b) for a, b in zip(back[:-1], back[1:], strict=True)]
    return moves


def run_reference(
    denoise: Callable[..., Tensor], x: Tensor, moves: list, noise: Callable
) -> Tensor:
    def d(v: Tensor, s: float) -> Tensor:
        return (v - denoise(v, torch.full((v.shape[0],), s))) / s

    for kind, a, b in moves:
        if kind == "noise":
            x = x + noise() * math.sqrt(b * b - a * a)
        elif b == 0:
            x = x + d(x, a) * (b - a)
        else:
            predictor = x + d(x, a) * (b - a)
            x = x + (d(x, a) + d(predictor, b)) / 2 * (b - a)
    return x


def per_image_noise(seed: int) -> Callable[[], Tensor]:
    generators = [torch.Generator().manual_seed(seed + i) for i in range(SHAPE[0])]
    return lambda: torch.cat([torch.randn((1, *SHAPE[1:]), generator=g) for g in generators])


@pytest.mark.parametrize("steps", (1, 2, 10, 50))
def test_equals_an_independent_implementation(steps: int, schedule: NoiseSchedule) -> None:
    spec = get_sampler("Restart")
    mean = torch.randn((1, *SHAPE[1:]), generator=torch.Generator().manual_seed(5)) * 0.8
    sigmas = spec.sigmas(schedule, steps)
    start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9)) * float(sigmas[0])
    calls: list[float] = []
    draws: list[int] = []
    noise = per_image_noise(40)

    def counted() -> Tensor:
        draws.append(1)
        return noise()

    actual = spec.fn(exact_denoiser(mean, calls), start.clone(), sigmas, noise=counted)
    values = sigmas.tolist()
    # Restart steps: as many as the main path spends between σ_j and 2, clamped to 2 … 10:
    # 2 steps restart at σ_1 = 0.029 with no σ between (2); 10 steps at σ_9 = 0.029 with 5
    # between (1.95 … 0.369, so 6); 50 steps at σ_48 = 0.139 with 22 between (10).
    m = {1: 2, 2: 2, 10: 6, 50: 10}[steps]
    moves = reference_path(values, m)
    expected = run_reference(exact_denoiser(mean), start.clone(), moves, per_image_noise(40))
    error = float((actual - expected).abs().max() / expected.abs().max())
    assert error < 1e-5, error
    restarted = any(kind == "noise" for kind, _, _ in moves)
    assert restarted == (steps > 1)
    assert len(draws) == (2 if restarted else 0)
    # Heun: two calls a step but the last; each restart adds m two-call steps.
    assert len(calls) == 2 * steps - 1 + (4 * m if restarted else 0)


def test_without_restarts_it_is_heun(schedule: NoiseSchedule) -> None:
    mean = torch.zeros(1, *SHAPE[1:])
    sigmas = get_sampler("restart").sigmas(schedule, 10)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * float(sigmas[0])
    plain = get_sampler("heun").fn(exact_denoiser(mean), x, sigmas, noise=torch.randn)
    none = get_sampler("restart").fn(exact_denoiser(mean), x, sigmas, noise=torch.randn, restarts=0)
    torch.testing.assert_close(none, plain, rtol=0, atol=0)
    with pytest.raises(ValueError, match="t_min < t_max"):
        get_sampler("restart").fn(exact_denoiser(mean), x, sigmas, noise=torch.randn, t_max=0.05)


def test_samples_the_data_distribution(schedule: NoiseSchedule) -> None:
    """With the exact denoiser the path stays on the data distribution: 20 steps give N(μ, s²)
    (per-element means within 4.5 standard errors, spread within 4% over 6400 values); too few
    steps back from t_max (2) leave a visible error."""
    shape = (400, 4, 2, 2)
    mean = torch.randn((1, 4, 2, 2), generator=torch.Generator().manual_seed(3))
    spec = get_sampler("restart")
    generator = torch.Generator().manual_seed(0)
    sigmas = spec.sigmas(schedule, 20)
    x = mean + torch.randn(shape, generator=generator) * float(sigmas[0])
    out = spec.fn(
        exact_denoiser(mean), x, sigmas, noise=lambda: torch.randn(shape, generator=generator)
    )
    assert float((out.mean(0) - mean[0]).abs().max()) < 4.5 * DATA_STD / math.sqrt(400)
    assert float((out - mean).pow(2).mean().sqrt()) == pytest.approx(DATA_STD, rel=0.04)
    coarse = spec.fn(
        exact_denoiser(mean),
        x,
        sigmas,
        noise=lambda: torch.randn(shape, generator=generator),
        restart_steps=2,
    )
    assert float((coarse - mean).pow(2).mean().sqrt()) > 1.1 * DATA_STD
