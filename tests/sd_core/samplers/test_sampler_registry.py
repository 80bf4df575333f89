"""The sampler registry: names, σ schedules equal to diffusers', shared sampler conventions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from sd_core.config import ScheduleConfig
from sd_core.samplers import SAMPLERS, SamplerSpec, get_sampler, sampler_names
from sd_core.schedule import NoiseSchedule

# diffusers' KDPM2 schedulers hand torch tensors to NumPy, which warns thousands of times.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array_wrap__ must accept context:DeprecationWarning"
)

CONFIG = json.loads((Path(__file__).parents[2] / "fixtures" / "scheduler_config.json").read_text())

EXPECTED = {
    "ddpm": "DDPM",
    "ddim": "DDIM",
    "plms": "PLMS",
    "euler": "Euler",
    "euler_a": "Euler a",
    "heun": "Heun",
    "lms": "LMS",
    "dpm2": "DPM2",
    "dpm2_a": "DPM2 a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_karras": "DPM++ 2M SDE Karras",
    "dpmpp_3m": "DPM++ 3M",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "dpmpp_3m_sde_karras": "DPM++ 3M SDE Karras",
    "dpmpp_2s_a": "DPM++ 2S a",
    "restart": "Restart",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_sde_karras": "DPM++ SDE Karras",
    "unipc": "UniPC",
    "lcm": "LCM",
}

# sd_core name → diffusers scheduler whose σ's / timesteps it must reproduce. DPM++ SDE's
# reference (DPMSolverSDEScheduler) needs torchsde, which is not installed; its σ's are built
# exactly like EulerDiscreteScheduler's (linspace + np.interp), so that one stands in; so it
# does for DPM++ 2S a and Restart, which have no diffusers scheduler and use k-diffusion's
# (Euler's) σ's.
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
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpmpp_2m_sde_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    "dpmpp_3m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpmpp_3m_sde_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "dpmpp_sde": ("EulerDiscreteScheduler", {}),
    "dpmpp_sde_karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "dpmpp_2s_a": ("EulerDiscreteScheduler", {}),
    "restart": ("EulerDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}
_PROTOTYPES: dict[str, Any] = {}


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule(ScheduleConfig())


def reference(name: str, steps: int) -> Any:
    diffusers = pytest.importorskip("diffusers")
    if name not in _PROTOTYPES:
        cls_name, extra = REFERENCE[name]
        _PROTOTYPES[name] = getattr(diffusers, cls_name).from_config(CONFIG, **extra)
    scheduler = _PROTOTYPES[name]
    scheduler.set_timesteps(steps)
    return scheduler


def test_names_and_order() -> None:
    assert sampler_names() == list(EXPECTED)
    assert list(SAMPLERS) == list(EXPECTED)
    for name, display in EXPECTED.items():
        spec = SAMPLERS[name]
        assert (spec.name, spec.display_name) == (name, display)
        for key in (name, display, display.upper(), f"  {display.lower()} ", *spec.aliases):
            assert get_sampler(key) is spec
    assert get_sampler("k_euler_a") is SAMPLERS["euler_a"]
    assert get_sampler("DPM++ 2M Karras") is SAMPLERS["dpmpp_2m_karras"]
    assert {n for n, s in SAMPLERS.items() if s.stochastic} == {
        "ddpm",
        "euler_a",
        "dpm2_a",
        "dpmpp_2m_sde",
        "dpmpp_2m_sde_karras",
        "dpmpp_3m_sde",
        "dpmpp_3m_sde_karras",
        "dpmpp_2s_a",
        "restart",
        "dpmpp_sde",
        "dpmpp_sde_karras",
        "lcm",
    }


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as error:
        get_sampler("foo")
    message = str(error.value)
    assert message.startswith("unknown sampler 'foo'; choose one of: ddpm, ddim, plms, euler")
    for name in EXPECTED:
        assert name in message
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler(None)  # type: ignore[arg-type]


def distinct(values: Tensor) -> Tensor:
    """Drop the repeats Heun/KDPM2 interleave into their σ and timestep lists."""
    return torch.unique_consecutive(values)


@pytest.mark.parametrize("steps", (1, 7, 20, 50))
@pytest.mark.parametrize("name", list(EXPECTED))
def test_sigmas_and_timesteps_equal_diffusers(
    name: str, steps: int, schedule: NoiseSchedule
) -> None:
    spec = get_sampler(name)
    if (name, steps) == ("dpmpp_sde_karras", 1):
        # diffusers' Euler-family Karras σ's for 1 step start from σ_min (see
        # test_schedule_types_vs_diffusers); DPM++ SDE Karras starts at σ_max, as k-diffusion
        # and A1111 do: the one step goes from σ_max to 0.
        sigmas = spec.sigmas(schedule, 1)
        assert sigmas.tolist() == [pytest.approx(schedule.sigma_max, rel=1e-6), 0.0]
        return
    ref = reference(name, steps)
    plan = spec.schedule(schedule, steps)
    sigmas = spec.sigmas(schedule, steps)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (steps + 1,)
    if name == "lcm":
        # LCM visits integer training timesteps: their own σ's, then σ = 0.
        assert plan.timesteps.tolist() == ref.timesteps.double().tolist()
        expected = torch.cat([schedule.sigmas[ref.timesteps], torch.zeros(1, dtype=torch.float64)])
        torch.testing.assert_close(sigmas, expected.float(), rtol=0, atol=0)
    elif name in ("ddpm", "ddim", "plms"):
        # VP schedulers keep timesteps, not σ's: σ follows from ᾱ at each timestep, and the
        # last step lands on ᾱ = 1 (DDPM) or ᾱ_0 (DDIM, PNDM with set_alpha_to_one=False).
        timesteps = distinct(ref.timesteps) if name == "plms" else ref.timesteps
        assert plan.timesteps.tolist() == timesteps.double().tolist()
        final_alpha = torch.tensor(1.0) if name == "ddpm" else ref.final_alpha_cumprod
        alphas = torch.cat([ref.alphas_cumprod[timesteps], final_alpha.reshape(1)])
        torch.testing.assert_close(sigmas, ((1 - alphas) / alphas) ** 0.5, rtol=1e-6, atol=0)
    else:
        ref_sigmas = (
            ref.sigmas
            if name.startswith(("dpmpp_2m", "dpmpp_3m")) or name == "unipc"
            else distinct(ref.sigmas)
        )
        torch.testing.assert_close(sigmas, ref_sigmas.float(), rtol=1e-6, atol=0)
        ref_timesteps = ref.timesteps.double()
        if name in ("heun", "dpm2", "dpm2_a"):
            ref_timesteps = ref_timesteps[::2]  # the first-order evaluations at σ_i
        # diffusers computes the fractional timesteps of Karras σ's from float32 σ's: ~2e-7.
        rtol = 1e-6 if name == "dpmpp_sde_karras" else 1e-7
        torch.testing.assert_close(plan.timesteps, ref_timesteps, rtol=rtol, atol=0)


@pytest.mark.parametrize("steps", (1, 7, 20))
def test_dpmpp_sde_karras_is_dpmpp_sde_with_karras(steps: int, schedule: NoiseSchedule) -> None:
    """The registered name and A1111's "DPM++ SDE" + scheduler "karras" give the same σ's and
    timesteps, hence the same pixels."""
    named = get_sampler("DPM++ SDE Karras").schedule(schedule, steps)
    typed = get_sampler("DPM++ SDE").schedule(schedule, steps, "karras")
    assert torch.equal(named.sigmas, typed.sigmas) and torch.equal(named.timesteps, typed.timesteps)
    assert get_sampler("DPM++ SDE Karras").fn is get_sampler("DPM++ SDE").fn


@pytest.mark.parametrize("name", list(EXPECTED))
def test_initial_noise_scale_is_init_noise_sigma(name: str, schedule: NoiseSchedule) -> None:
    """x_start = ε·scale in sigma space is diffusers' ε·init_noise_sigma in its own space."""
    spec = get_sampler(name)
    sigmas = spec.sigmas(schedule, 20)
    ref = reference(name, 20)
    init = float(ref.init_noise_sigma)
    if init == 1.0:  # VP latent x_T = ε, i.e. ε·sqrt(σ_max² + 1) in sigma space
        expected = (float(sigmas[0]) ** 2 + 1) ** 0.5
    else:
        expected = init
    assert spec.initial_noise_scale(sigmas) == pytest.approx(expected, rel=1e-6)


def test_timestep_fn(schedule: NoiseSchedule) -> None:
    euler = get_sampler("euler")
    to_t = euler.timestep_fn(schedule, 50)
    plan = euler.schedule(schedule, 50)
    sigmas = euler.sigmas(schedule, 50)
    assert torch.equal(to_t(sigmas[:-1]), plan.timesteps)
    assert to_t(sigmas[3].reshape(1).expand(2)).tolist() == [plan.timesteps[3].item()] * 2
    # Not on the schedule: log-σ interpolation.
    off = torch.tensor([1.2345])
    assert torch.equal(to_t(off), schedule.sigma_to_t(off))
    # Karras σ's come with rounded timesteps, as diffusers feeds them.
    karras = get_sampler("dpmpp_2m_karras")
    t = karras.timestep_fn(schedule, 25)(karras.sigmas(schedule, 25)[:-1])
    assert torch.equal(t, t.round()) and t[0] == 999 and t[-1] == 0


def test_img2img_plan(schedule: NoiseSchedule) -> None:
    euler = get_sampler("euler")
    plan = euler.img2img(schedule, 10, 0.75)
    assert torch.equal(plan.sigmas, euler.sigmas(schedule, 10)[3:])
    assert plan.fn is euler.fn
    # int(steps * strength) as diffusers computes it: 0.29 * 100 = 28.999… → 28 steps.
    assert len(euler.img2img(schedule, 100, 0.29).sigmas) == 29
    assert torch.equal(euler.img2img(schedule, 10, 1.0).sigmas, euler.sigmas(schedule, 10))
    lms = get_sampler("lms")
    lms_plan = lms.img2img(schedule, 10, 0.5)
    assert lms_plan.fn is not lms.fn
    assert torch.equal(lms_plan.fn.keywords["prior_sigmas"], lms.sigmas(schedule, 10)[:5])  # type: ignore[attr-defined]
    assert lms.img2img(schedule, 10, 1.0).fn is lms.fn
    for strength in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="strength must be in"):
            euler.img2img(schedule, 10, strength)


def toy_denoiser(calls: list[float]) -> Any:
    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        assert sigma.shape == (x.shape[0],) and sigma.dtype == torch.float32
        calls.append(float(sigma[0]))
        return 0.5 * x / (1 + sigma.view(-1, 1, 1, 1) ** 2) ** 0.5

    return denoise


@pytest.mark.parametrize("name", list(EXPECTED))
def test_callback_and_in_place_edits(name: str, schedule: NoiseSchedule) -> None:
    """The callback sees steps 1..N with x at σ_step; editing x in place steers the rest."""
    spec: SamplerSpec = get_sampler(name)
    sigmas = spec.sigmas(schedule, 6)
    x0 = torch.randn((2, 4, 3, 3), generator=torch.Generator().manual_seed(0)) * 10
    gen = torch.Generator().manual_seed(1)

    def noise() -> Tensor:
        return torch.randn(x0.shape, generator=gen)

    seen: list[tuple[int, int]] = []
    calls: list[float] = []

    def record(step: int, total: int, x: Tensor, denoised: Tensor) -> None:
        assert x.shape == denoised.shape == x0.shape
        seen.append((step, total))

    spec.fn(toy_denoiser(calls), x0.clone(), sigmas, noise=noise, callback=record)
    assert seen == [(i, 6) for i in range(1, 7)]
    assert calls[0] == float(sigmas[0])

    def run(edit_at: int | None) -> Tensor:
        nonlocal gen
        gen = torch.Generator().manual_seed(1)

        def edit(step: int, total: int, x: Tensor, denoised: Tensor) -> None:
            if step == edit_at:
                x.add_(1.0)

        return spec.fn(toy_denoiser([]), x0.clone(), sigmas, noise=noise, callback=edit)

    plain = run(None)
    assert torch.equal(plain, run(None))
    assert not torch.allclose(plain, run(3))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_bad_inputs(name: str) -> None:
    spec = get_sampler(name)
    x = torch.zeros(1, 4, 2, 2)
    for bad in (torch.tensor([1.0]), torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.0, 0.0])):
        with pytest.raises(ValueError, match="sigmas must be"):
            spec.fn(toy_denoiser([]), x, bad, noise=lambda: torch.zeros_like(x))
    with pytest.raises(ValueError, match="x must be a"):
        spec.fn(toy_denoiser([]), x[0], torch.tensor([1.0, 0.0]), noise=lambda: torch.zeros(4))
