"""A schedule type on a k-diffusion-style sampler equals its diffusers scheduler so configured.

"karras" ↔ `use_karras_sigmas=True`, "exponential" ↔ `use_exponential_sigmas=True`,
"sgm_uniform" ↔ `timestep_spacing="trailing"`: same model calls (timesteps and scaled
inputs) and the same final latents, with the analytic model of test_samplers_vs_diffusers.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from sd_core.config import ScheduleConfig
from sd_core.samplers import get_sampler
from sd_core.schedule import NoiseSchedule
from sd_core.schedule_types import SCHEDULE_TYPES, schedule_label, schedule_type
from tests.sd_core.samplers.test_samplers_vs_diffusers import (
    SHAPE,
    TIMESTEP_ATOL,
    Trace,
    analytic_eps,
    relative_error,
    run_diffusers,
    run_sd_core,
)

pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array_wrap__ must accept context:DeprecationWarning"
)

OPTIONS: dict[str, dict[str, Any]] = {
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "sgm_uniform": {"timestep_spacing": "trailing"},
}
SAMPLERS = (
    "euler",
    "euler_a",
    "heun",
    "lms",
    "dpm2",
    "dpm2_a",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_3m",
    "dpmpp_3m_sde",
    "unipc",
)
STEP_COUNTS = (1, 2, 10, 50)
# Not compared with diffusers, but checked another way below:
# - Euler a: diffusers' EulerAncestralDiscreteScheduler has no Karras or exponential σ's
#   (0.42); it takes the σ's and timesteps of Euler's, which are compared
#   (test_euler_a_takes_the_schedule_types_of_euler).
# - 1 step of Karras/exponential on the Euler family: diffusers takes σ_min and σ_max from its
#   own linspace σ's, which for 1 step are the single σ at t = 0, so it "samples" from σ_min
#   (a quirk: the image stays noise). sd_core starts at σ_max, as k-diffusion and A1111 do
#   (test_one_typed_step_goes_from_sigma_max_to_the_denoised_start).
NO_REFERENCE: set[tuple[str, str, int]] = {
    *(("euler_a", kind, steps) for kind in ("karras", "exponential") for steps in STEP_COUNTS),
    *(
        (name, kind, 1)
        for name in ("euler", "euler_a", "heun", "lms", "dpm2", "dpm2_a")
        for kind in ("karras", "exponential")
    ),
}
# diffusers' DPM2 a evaluates its midpoint at exactly σ_{i+1} with the log-interpolated
# timestep, while σ_{i+1} itself gets its rounded Karras timestep (see TIMESTEP_ATOL): a
# σ-keyed Denoiser feeds the rounded one to both, up to half a training step apart, which
# moves the final latents by up to ~2e-4 relative (10 and 50 steps).
DPM2_A_KARRAS_ATOL = 0.5
DPM2_A_KARRAS_RTOL = 5e-4


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule(ScheduleConfig())


@pytest.fixture(scope="module")
def data_mean() -> Tensor:
    return torch.randn((1, *SHAPE[1:]), generator=torch.Generator().manual_seed(7)) * 0.8


COMPARED = [
    (name, scheduler, steps)
    for name in SAMPLERS
    for scheduler in SCHEDULE_TYPES
    for steps in STEP_COUNTS
    if (name, scheduler, steps) not in NO_REFERENCE
]


@pytest.mark.parametrize(("name", "scheduler", "steps"), COMPARED)
def test_schedule_type_equals_diffusers(
    name: str, scheduler: str, steps: int, schedule: NoiseSchedule, data_mean: Tensor
) -> None:
    reference_calls: Trace = []
    calls: Trace = []
    expected = run_diffusers(
        name,
        steps,
        analytic_eps(schedule, data_mean, reference_calls),
        options=OPTIONS[scheduler],
    )
    actual = run_sd_core(
        get_sampler(name),
        schedule,
        steps,
        analytic_eps(schedule, data_mean, calls),
        scheduler=scheduler,
    )
    tolerance = DPM2_A_KARRAS_RTOL if (name, scheduler) == ("dpm2_a", "karras") else 1e-4
    assert len(calls) == len(reference_calls)
    for (t, model_in), (t_ref, model_in_ref) in zip(calls, reference_calls, strict=True):
        atol = DPM2_A_KARRAS_ATOL if (name, scheduler) == ("dpm2_a", "karras") else None
        torch.testing.assert_close(t, t_ref, rtol=1e-6, atol=atol or TIMESTEP_ATOL.get(name, 1e-4))
        assert relative_error(model_in, model_in_ref) < tolerance
    assert torch.isfinite(actual).all()
    assert relative_error(actual, expected) < tolerance, relative_error(actual, expected)


@pytest.mark.parametrize("scheduler", list(SCHEDULE_TYPES))
@pytest.mark.parametrize("name", ("euler", "lms", "dpmpp_2m"))
def test_schedule_type_img2img_equals_diffusers(
    name: str, scheduler: str, schedule: NoiseSchedule, data_mean: Tensor
) -> None:
    eps = analytic_eps(schedule, data_mean)
    init_latent = torch.randn(SHAPE, generator=torch.Generator().manual_seed(99))
    expected = run_diffusers(name, 10, eps, init_latent, 0.75, options=OPTIONS[scheduler])
    actual = run_sd_core(
        get_sampler(name), schedule, 10, eps, init_latent, 0.75, scheduler=scheduler
    )
    assert relative_error(actual, expected) < 1e-4, relative_error(actual, expected)


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("scheduler", ("karras", "exponential"))
def test_euler_a_takes_the_schedule_types_of_euler(
    scheduler: str, steps: int, schedule: NoiseSchedule
) -> None:
    ancestral = get_sampler("euler_a").schedule(schedule, steps, scheduler)
    euler = get_sampler("euler").schedule(schedule, steps, scheduler)
    assert torch.equal(ancestral.sigmas, euler.sigmas)
    assert torch.equal(ancestral.timesteps, euler.timesteps)


@pytest.mark.parametrize("scheduler", ("karras", "exponential"))
@pytest.mark.parametrize("name", ("euler", "euler_a", "heun", "lms", "dpm2", "dpm2_a"))
def test_one_typed_step_goes_from_sigma_max_to_the_denoised_start(
    name: str, scheduler: str, schedule: NoiseSchedule
) -> None:
    """One step from σ_max to 0 is a single Euler step to σ = 0 for every one of these (an
    ancestral step adds no noise when it ends at 0): the result is the denoiser's prediction
    at the start."""
    spec = get_sampler(name)
    sigmas = spec.sigmas(schedule, 1, scheduler)
    assert sigmas.tolist() == [pytest.approx(schedule.sigma_max, rel=1e-6), 0.0]
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)) * sigmas[0]

    def denoise(x_in: Tensor, sigma: Tensor) -> Tensor:
        return torch.tanh(x_in / (1 + sigma.reshape(-1, 1, 1, 1) ** 2) ** 0.5)

    generator = torch.Generator().manual_seed(4)
    result = spec.fn(denoise, x, sigmas, noise=lambda: torch.randn(SHAPE, generator=generator))
    # x + (0 − σ)·(x − D)/σ in float32 at σ ≈ 14.6 rounds to D within a few 1e-6.
    torch.testing.assert_close(result, denoise(x, sigmas[:1]), rtol=1e-6, atol=1e-5)


def test_karras_on_dpmpp_2m_is_dpmpp_2m_karras(schedule: NoiseSchedule) -> None:
    own = get_sampler("DPM++ 2M Karras").schedule(schedule, 20)
    typed = get_sampler("DPM++ 2M").schedule(schedule, 20, "karras")
    assert torch.equal(own.sigmas, typed.sigmas) and torch.equal(own.timesteps, typed.timesteps)


def test_schedule_types_change_the_sigmas(schedule: NoiseSchedule) -> None:
    euler = get_sampler("euler")
    plain = euler.sigmas(schedule, 10)
    for name in SCHEDULE_TYPES:
        typed = euler.sigmas(schedule, 10, name)
        assert typed.shape == plain.shape and float(typed[-1]) == 0.0
        assert not torch.equal(typed, plain), name


@pytest.mark.parametrize("name", ("ddim", "plms", "ddpm"))
def test_samplers_with_their_own_timesteps_refuse_a_schedule_type(
    name: str, schedule: NoiseSchedule
) -> None:
    spec = get_sampler(name)
    assert not spec.takes_schedule_type
    with pytest.raises(ValueError, match="takes no schedule type"):
        spec.sigmas(schedule, 10, "karras")


def test_schedule_type_names() -> None:
    assert schedule_type(None) is None and schedule_type("Automatic") is None
    assert schedule_type("") is None
    assert schedule_type("Karras") == "karras" and schedule_type("SGM Uniform") == "sgm_uniform"
    assert schedule_type(" exponential ") == "exponential"
    assert schedule_label("sgm_uniform") == "SGM Uniform" and schedule_label(None) == "Automatic"
    with pytest.raises(ValueError, match="Automatic, Karras"):
        schedule_type("Beta")
