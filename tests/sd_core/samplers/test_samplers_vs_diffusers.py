"""Every deterministic-noise sampler equals its diffusers scheduler, txt2img and img2img.

Both loops run the same analytic ε-model: the data is x0 ~ N(μ, s²) elementwise, for which the
exact noise prediction at noise level σ is ε(x_t, t) = σ·(x - μ) / (s² + σ²), x = x_t·sqrt(σ² + 1).
The model reads σ from the timestep alone (σ = t_to_sigma(t)), as a UNet does, so a wrong
timestep, a wrong input scaling or a wrong update all change the result. diffusers runs its
scheduler the way StableDiffusionPipeline does, with a list of per-image CPU generators;
sd_core runs the registered sampler through a Denoiser built like the pipeline's, with fresh
generators seeded the same.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from sd_core.config import ScheduleConfig
from sd_core.samplers import SamplerSpec, get_sampler
from sd_core.schedule import NoiseSchedule

diffusers = pytest.importorskip("diffusers")
# diffusers' LMS integrates with scipy.integrate.quad, which trips a NumPy 2 deprecation
# warning thousands of times per run.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array_wrap__ must accept context:DeprecationWarning"
)

CONFIG = json.loads((Path(__file__).parents[2] / "fixtures" / "scheduler_config.json").read_text())
SHAPE = (2, 4, 6, 6)
SEED = 1234
DATA_STD = 0.5

# sd_core name → (diffusers scheduler class, extra config)
REFERENCE: dict[str, tuple[str, dict[str, Any]]] = {
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "plms": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpm2": ("KDPM2DiscreteScheduler", {}),
    "dpm2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"solver_order": 2}),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"solver_order": 2, "use_karras_sigmas": True},
    ),
    "dpmpp_2m_sde": (
        "DPMSolverMultistepScheduler",
        {"solver_order": 2, "algorithm_type": "sde-dpmsolver++"},
    ),
    "dpmpp_2m_sde_karras": (
        "DPMSolverMultistepScheduler",
        {"solver_order": 2, "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    "dpmpp_3m_sde": (
        "DPMSolverMultistepScheduler",
        {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"},
    ),
    "dpmpp_3m_sde_karras": (
        "DPMSolverMultistepScheduler",
        {"solver_order": 3, "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "unipc": ("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2"}),
    "lcm": ("LCMScheduler", {}),
}
STEP_COUNTS = (1, 2, 10, 50)
# Step counts a reference scheduler refuses; none of them refuses 1, 2, 10 or 50 (diffusers
# 0.42), but the skip stays explicit so that a future refusal is visible rather than silent.
# diffusers' KDPM2 ancestral evaluates its midpoint at sqrt(σ_i·σ_down) = σ_{i+1} exactly, yet
# feeds it the log-σ-interpolated timestep, while σ_{i+1} itself (next step) gets its linspace
# timestep, linearly interpolated in σ. One σ, two timesteps: a σ-keyed Denoiser must pick one
# (sd_core picks the schedule's own), which at fractional timesteps (50 steps) differs by up
# to 0.003 of a training step. Everything else matches to float32 round-off.
TIMESTEP_ATOL = {"dpm2_a": 5e-3}


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule(ScheduleConfig())


@pytest.fixture(scope="module")
def data_mean() -> Tensor:
    return torch.randn((1, *SHAPE[1:]), generator=torch.Generator().manual_seed(7)) * 0.8


Trace = list[tuple[Tensor, Tensor]]


def analytic_eps(
    schedule: NoiseSchedule, mean: Tensor, trace: Trace | None = None
) -> Callable[[Tensor, Any], Tensor]:
    """ε(x_t, t) for x0 ~ N(mean, DATA_STD²); x_t is the model input, t a scalar or (B,).

    trace: if given, every call appends (t as (B,) float64, model input).
    """

    def eps(model_in: Tensor, t: Any) -> Tensor:
        t64 = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        if trace is not None:
            trace.append((t64.expand(model_in.shape[0]).clone(), model_in.clone()))
        sigma = schedule.t_to_sigma(t64).view(-1, 1, 1, 1)
        x = model_in.double() * (sigma**2 + 1).sqrt()
        out = sigma * (x - mean.double()) / (DATA_STD**2 + sigma**2)
        return out.to(model_in.dtype)

    return eps


def generators(seed: int = SEED) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(SHAPE[0])]


def draw(gens: list[torch.Generator]) -> Tensor:
    return torch.cat([torch.randn((1, *SHAPE[1:]), generator=g) for g in gens])


_PROTOTYPES: dict[str, Any] = {}


def make_scheduler(name: str, options: dict[str, Any] | None = None) -> Any:
    """A fresh reference scheduler (KDPM2's constructor alone takes ~1 s, so copy a prototype).

    options: config entries on top of REFERENCE's (a schedule type's, say)."""
    key = json.dumps([name, options or {}], sort_keys=True)
    if key not in _PROTOTYPES:
        cls_name, extra = REFERENCE[name]
        _PROTOTYPES[key] = getattr(diffusers, cls_name).from_config(
            CONFIG, **extra, **(options or {})
        )
    return copy.deepcopy(_PROTOTYPES[key])


def run_diffusers(
    name: str,
    steps: int,
    eps: Callable[[Tensor, Any], Tensor],
    init_latent: Tensor | None = None,
    strength: float = 1.0,
    options: dict[str, Any] | None = None,
    step_options: dict[str, Any] | None = None,
) -> Tensor:
    """StableDiffusion(Img2Img)Pipeline's denoising loop around the reference scheduler
    (`step_options`: what the pipeline passes its `step` besides the generators, as `eta`)."""
    if name == "lms":
        pytest.importorskip("scipy")  # diffusers' LMS integrates its coefficients with scipy
    scheduler = make_scheduler(name, options)
    scheduler.set_timesteps(steps)
    gens = generators()
    timesteps = scheduler.timesteps
    if init_latent is None:
        latents = draw(gens) * scheduler.init_noise_sigma
    else:
        # StableDiffusionImg2ImgPipeline.get_timesteps + prepare_latents.
        init_timestep = min(int(steps * strength), steps)
        t_start = max(steps - init_timestep, 0)
        timesteps = scheduler.timesteps[t_start * scheduler.order :]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        noise = draw(gens)
        latents = scheduler.add_noise(init_latent, noise, timesteps[:1].repeat(SHAPE[0]))
    accepts_generator = "generator" in scheduler.step.__code__.co_varnames
    for t in timesteps:
        model_in = scheduler.scale_model_input(latents, t)
        kwargs = {"generator": gens} if accepts_generator else {}
        kwargs.update(step_options or {})
        latents = scheduler.step(eps(model_in, t), t, latents, **kwargs).prev_sample
    return latents


def run_sd_core(
    spec: SamplerSpec,
    schedule: NoiseSchedule,
    steps: int,
    eps: Callable[[Tensor, Any], Tensor],
    init_latent: Tensor | None = None,
    strength: float = 1.0,
    calls: list[int] | None = None,
    scheduler: str | None = None,
    **fn_options: Any,
) -> Tensor:
    """The pipeline's use of a SamplerSpec, with the analytic model in place of the UNet
    (`fn_options`: passed to the sampler function, as `eta`)."""
    gens = generators()
    to_t = spec.timestep_fn(schedule, steps, scheduler)

    def noise() -> Tensor:
        if calls is not None:
            calls.append(1)
        return draw(gens)

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        scale = (sigma.float() ** 2 + 1).rsqrt().view(-1, 1, 1, 1)
        e = eps(x * scale, to_t(sigma))
        return x - sigma.float().view(-1, 1, 1, 1) * e

    if init_latent is None:
        sigmas = spec.sigmas(schedule, steps, scheduler)
        x = draw(gens) * spec.initial_noise_scale(sigmas)
        fn = spec.fn
    else:
        plan = spec.img2img(schedule, steps, strength, scheduler)
        sigmas, fn = plan.sigmas, plan.fn
        x = init_latent + draw(gens) * sigmas[0]
    return fn(denoise, x, sigmas, noise=noise, **fn_options)


def relative_error(actual: Tensor, expected: Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("name", list(REFERENCE))
def test_txt2img_equals_diffusers(
    name: str, steps: int, schedule: NoiseSchedule, data_mean: Tensor
) -> None:
    reference_calls: Trace = []
    calls: Trace = []
    expected = run_diffusers(name, steps, analytic_eps(schedule, data_mean, reference_calls))
    actual = run_sd_core(
        get_sampler(name), schedule, steps, analytic_eps(schedule, data_mean, calls)
    )
    # Same model calls: as many, with the same timesteps and the same (scaled) inputs.
    assert len(calls) == len(reference_calls)
    for (t, model_in), (t_ref, model_in_ref) in zip(calls, reference_calls, strict=True):
        torch.testing.assert_close(t, t_ref, rtol=1e-6, atol=TIMESTEP_ATOL.get(name, 1e-4))
        assert relative_error(model_in, model_in_ref) < 1e-4
    # Same final latents.
    assert actual.shape == expected.shape and actual.dtype == torch.float32
    assert torch.isfinite(actual).all()
    assert relative_error(actual, expected) < 1e-4, relative_error(actual, expected)


@pytest.mark.parametrize("strength", (0.5, 0.75))
@pytest.mark.parametrize(
    "name",
    [
        "euler",
        "euler_a",
        "ddim",
        "dpmpp_2m",
        "heun",
        "lms",
        "ddpm",
        "dpm2",
        "dpm2_a",
        "dpmpp_2m_karras",
        "dpmpp_2m_sde",
        "dpmpp_2m_sde_karras",
        "dpmpp_3m",
        "dpmpp_3m_sde",
        "dpmpp_3m_sde_karras",
        "unipc",
        "lcm",
    ],
)
def test_img2img_equals_diffusers(
    name: str, strength: float, schedule: NoiseSchedule, data_mean: Tensor
) -> None:
    eps = analytic_eps(schedule, data_mean)
    init_latent = torch.randn(SHAPE, generator=torch.Generator().manual_seed(99))
    expected = run_diffusers(name, 10, eps, init_latent, strength)
    actual = run_sd_core(get_sampler(name), schedule, 10, eps, init_latent, strength)
    assert relative_error(actual, expected) < 1e-4, relative_error(actual, expected)


def test_lms_img2img_needs_the_skipped_sigmas(schedule: NoiseSchedule, data_mean: Tensor) -> None:
    """Plain LMS on the tail of the schedule is not what diffusers' img2img computes."""
    eps = analytic_eps(schedule, data_mean)
    init_latent = torch.randn(SHAPE, generator=torch.Generator().manual_seed(99))
    expected = run_diffusers("lms", 10, eps, init_latent, 0.5)
    spec = get_sampler("lms")
    plain = spec.img2img(schedule, 10, 0.5)
    gens = generators()
    to_t = spec.timestep_fn(schedule, 10)

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        e = eps(x * (sigma**2 + 1).rsqrt().view(-1, 1, 1, 1), to_t(sigma))
        return x - sigma.view(-1, 1, 1, 1) * e

    x = init_latent + draw(gens) * plain.sigmas[0]
    unbound = spec.fn(denoise, x, plain.sigmas, noise=lambda: draw(gens))
    assert relative_error(unbound, expected) > 1e-3


@pytest.mark.parametrize("name", ["dpmpp_3m", "dpmpp_3m_sde"])
def test_dpmpp_3m_img2img_counts_the_skipped_steps(
    name: str, schedule: NoiseSchedule, data_mean: Tensor
) -> None:
    """20 steps at strength 0.5: diffusers keeps the second-to-last step third order, as the
    whole schedule has 15 steps or more; run on the 10-step tail alone it would be lowered."""
    eps = analytic_eps(schedule, data_mean)
    init_latent = torch.randn(SHAPE, generator=torch.Generator().manual_seed(99))
    expected = run_diffusers(name, 20, eps, init_latent, 0.5)
    spec = get_sampler(name)
    actual = run_sd_core(spec, schedule, 20, eps, init_latent, 0.5)
    assert relative_error(actual, expected) < 1e-4, relative_error(actual, expected)
    plan = spec.img2img(schedule, 20, 0.5)
    gens = generators()
    to_t = spec.timestep_fn(schedule, 20)

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        e = eps(x * (sigma**2 + 1).rsqrt().view(-1, 1, 1, 1), to_t(sigma))
        return x - sigma.view(-1, 1, 1, 1) * e

    x = init_latent + draw(gens) * plan.sigmas[0]
    unbound = spec.fn(denoise, x, plan.sigmas, noise=lambda: draw(gens))
    assert relative_error(unbound, expected) > 1e-4


@pytest.mark.parametrize("name", list(REFERENCE))
def test_noise_draws_match_diffusers(name: str, schedule: NoiseSchedule, data_mean: Tensor) -> None:
    """A stochastic sampler draws once per diffusers draw; a deterministic one never draws."""
    calls: list[int] = []
    eps = analytic_eps(schedule, data_mean)
    run_sd_core(get_sampler(name), schedule, 5, eps, calls=calls)
    expected = {
        "ddpm": 5,
        "euler_a": 5,
        "dpm2_a": 4,
        "dpmpp_2m_sde": 5,
        "dpmpp_2m_sde_karras": 5,
        "dpmpp_3m_sde": 5,
        "dpmpp_3m_sde_karras": 5,
        "lcm": 4,
    }.get(name, 0)
    assert len(calls) == expected
    assert get_sampler(name).stochastic == (expected > 0)


def test_diffusers_scale_checks_are_meaningful(schedule: NoiseSchedule, data_mean: Tensor) -> None:
    """Guard against a vacuous comparison: the latents move, and samplers disagree."""
    eps = analytic_eps(schedule, data_mean)
    euler = run_diffusers("euler", 10, eps)
    heun = run_diffusers("heun", 10, eps)
    assert relative_error(heun, euler) > 1e-3
    # Third order is not second order in disguise.
    assert (
        relative_error(run_diffusers("dpmpp_3m", 10, eps), run_diffusers("dpmpp_2m", 10, eps))
        > 1e-3
    )
    # The result sits near the data (mean μ, spread s), far from the initial noise (σ ≈ 14.6).
    assert float(euler.std()) < 3 * DATA_STD
    assert math.isclose(float((euler - data_mean).mean()), 0.0, abs_tol=0.3)
