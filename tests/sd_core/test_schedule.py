"""NoiseSchedule: ᾱ_t and σ_t equal diffusers', σ <-> t conversions, inference spacings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sd_core.config import ScheduleConfig
from sd_core.schedule import NoiseSchedule

CONFIG = json.loads((Path(__file__).parents[1] / "fixtures" / "scheduler_config.json").read_text())


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule(ScheduleConfig())


def test_tables_equal_diffusers(schedule: NoiseSchedule) -> None:
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.EulerDiscreteScheduler.from_config(CONFIG)
    assert schedule.alphas_cumprod.dtype == torch.float64
    assert schedule.alphas_cumprod.shape == (1000,)
    assert torch.equal(schedule.alphas_cumprod, reference.alphas_cumprod.double())
    # diffusers keeps σ_t (flipped, with a trailing 0) in float32.
    expected_sigmas = reference.sigmas[:-1].flip(0).double()
    assert torch.equal(schedule.sigmas, expected_sigmas)
    assert schedule.sigma_min == pytest.approx(0.029168, abs=1e-6)
    assert schedule.sigma_max == pytest.approx(14.6146, abs=1e-4)


def test_close_to_the_float64_ldm_schedule(schedule: NoiseSchedule) -> None:
    """The original LDM code builds the same schedule in float64; the two agree to ~1e-6."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), alphas_cumprod, rtol=2e-5)
    assert not np.array_equal(schedule.alphas_cumprod.numpy(), alphas_cumprod)


@pytest.mark.parametrize("interpolation", ["log", "linear"])
def test_sigma_to_t_exact_at_integer_t(schedule: NoiseSchedule, interpolation: str) -> None:
    t = schedule.sigma_to_t(schedule.sigmas, interpolation=interpolation)  # type: ignore[arg-type]
    assert t.dtype == torch.float64
    torch.testing.assert_close(t, torch.arange(1000, dtype=torch.float64), rtol=0, atol=1e-9)
    back = schedule.t_to_sigma(torch.arange(1000.0), interpolation=interpolation)  # type: ignore[arg-type]
    torch.testing.assert_close(back, schedule.sigmas, rtol=1e-12, atol=0)


@pytest.mark.parametrize("interpolation", ["log", "linear"])
def test_round_trips(schedule: NoiseSchedule, interpolation: str) -> None:
    t = torch.rand(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 999
    sigma = schedule.t_to_sigma(t, interpolation=interpolation)  # type: ignore[arg-type]
    torch.testing.assert_close(
        schedule.sigma_to_t(sigma, interpolation=interpolation),  # type: ignore[arg-type]
        t,
        rtol=0,
        atol=1e-8,
    )
    sigma = torch.exp(torch.empty(300, dtype=torch.float64).uniform_(-3.5, 2.68))
    t = schedule.sigma_to_t(sigma, interpolation=interpolation)  # type: ignore[arg-type]
    torch.testing.assert_close(
        schedule.t_to_sigma(t, interpolation=interpolation),  # type: ignore[arg-type]
        sigma,
        rtol=1e-10,
        atol=0,
    )


def test_interpolations_differ_between_integers(schedule: NoiseSchedule) -> None:
    """log-σ and σ interpolation agree at integer t only; at t = 0.5 they differ by 1.5%."""
    half = torch.tensor(0.5, dtype=torch.float64)
    log_sigma = schedule.t_to_sigma(half, interpolation="log")
    lin_sigma = schedule.t_to_sigma(half, interpolation="linear")
    torch.testing.assert_close(log_sigma, (schedule.sigmas[0] * schedule.sigmas[1]).sqrt())
    torch.testing.assert_close(lin_sigma, (schedule.sigmas[0] + schedule.sigmas[1]) / 2)
    assert float(lin_sigma / log_sigma) > 1.01


def test_sigma_to_t_matches_diffusers_sigma_to_t(schedule: NoiseSchedule) -> None:
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.EulerDiscreteScheduler.from_config(CONFIG)
    log_sigmas = np.log(schedule.sigmas.numpy())
    sigma = np.exp(np.linspace(-3.5, 2.68, 97))
    expected = reference._sigma_to_t(sigma, log_sigmas)
    actual = schedule.sigma_to_t(torch.from_numpy(sigma)).numpy()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-9)
    # Outside the trained range the timestep clamps to [0, 999], as in diffusers.
    assert schedule.sigma_to_t(torch.tensor([1e-3, 0.0, 100.0])).tolist() == [0.0, 0.0, 999.0]


def test_linear_t_to_sigma_is_np_interp(schedule: NoiseSchedule) -> None:
    t = np.linspace(0, 999, 50, dtype=np.float32)[::-1].copy()
    expected = np.interp(t, np.arange(1000), schedule.sigmas.numpy())
    actual = schedule.t_to_sigma(torch.from_numpy(t), interpolation="linear").numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-14)


def test_spacings(schedule: NoiseSchedule) -> None:
    leading = schedule.leading(10)
    assert leading.timesteps.tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert leading.sigmas[-1] == 0 and leading.sigmas.shape == (11,)
    assert (
        float(schedule.leading(10, final_sigma=schedule.sigma_min).sigmas[-1]) == schedule.sigma_min
    )
    assert schedule.linspace(10).timesteps.tolist() == [999 - 111 * i for i in range(10)]
    assert schedule.linspace_rounded(10).timesteps.tolist() == [
        999, 899, 799, 699, 599, 500, 400, 300, 200, 100,
    ]  # fmt: skip
    karras = schedule.karras(10)
    assert float(karras.sigmas[0]) == pytest.approx(schedule.sigma_max, rel=1e-12)
    assert float(karras.sigmas[-2]) == pytest.approx(schedule.sigma_min, rel=1e-12)
    assert karras.timesteps[0] == 999 and karras.timesteps[-1] == 0
    assert torch.equal(karras.timesteps, karras.timesteps.round())
    for plan in (leading, schedule.linspace(7), schedule.linspace_rounded(7), karras):
        assert len(plan.timesteps) == len(plan.sigmas) - 1
        assert bool((plan.sigmas[1:] < plan.sigmas[:-1]).all())
    one = schedule.linspace(1)
    assert one.timesteps.tolist() == [0.0] and one.sigmas.tolist() == [schedule.sigma_min, 0.0]


def test_errors_name_the_argument(schedule: NoiseSchedule) -> None:
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        schedule.linspace(0)
    with pytest.raises(ValueError, match="steps must be at most"):
        schedule.leading(1001)
    with pytest.raises(ValueError, match="steps must be at most 999 for this spacing"):
        schedule.linspace_rounded(1000)
    with pytest.raises(ValueError, match="steps_offset 1 pushes timestep 1000 past 999"):
        schedule.leading(1000)
    with pytest.raises(ValueError, match="interpolation must be 'log' or 'linear', got 'cubic'"):
        schedule.sigma_to_t(torch.tensor([1.0]), interpolation="cubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"t must lie in \[0, 999\]"):
        schedule.t_to_sigma(torch.tensor([1000.0]))
    with pytest.raises(ValueError, match="beta_start and beta_end"):
        NoiseSchedule(ScheduleConfig(beta_start=0.02, beta_end=0.01))
