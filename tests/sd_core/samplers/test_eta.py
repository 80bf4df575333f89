"""A sampler's eta (AUTOMATIC1111's "Eta"): DDIM with an eta equals diffusers' DDIM given the same
`eta`, and an ancestral sampler with eta 0 adds no noise, so Euler a becomes Euler."""

from __future__ import annotations

import pytest
import torch

from sd_core.config import ScheduleConfig
from sd_core.samplers import SAMPLERS, get_sampler
from sd_core.schedule import NoiseSchedule
from tests.sd_core.samplers.test_samplers_vs_diffusers import (
    SHAPE,
    analytic_eps,
    relative_error,
    run_diffusers,
    run_sd_core,
)

pytest.importorskip("diffusers")
SCHEDULE = NoiseSchedule(ScheduleConfig())
MEAN = torch.randn((1, *SHAPE[1:]), generator=torch.Generator().manual_seed(7)) * 0.8


@pytest.mark.parametrize("eta", [0.5, 1.0])
@pytest.mark.parametrize("steps", [2, 10])
def test_ddim_with_eta_equals_diffusers(eta: float, steps: int) -> None:
    eps = analytic_eps(SCHEDULE, MEAN)
    expected = run_diffusers("ddim", steps, eps, step_options={"eta": eta})
    calls: list[int] = []
    actual = run_sd_core(get_sampler("ddim"), SCHEDULE, steps, eps, calls=calls, eta=eta)
    assert len(calls) == steps  # one variance draw a step, as diffusers makes
    assert relative_error(actual, expected) < 1e-4, relative_error(actual, expected)
    plain = run_sd_core(get_sampler("ddim"), SCHEDULE, steps, eps)
    assert relative_error(plain, expected) > 1e-2  # the eta is not lost on the way


def test_ddim_img2img_with_eta_equals_diffusers() -> None:
    eps = analytic_eps(SCHEDULE, MEAN)
    init = MEAN.expand(2, -1, -1, -1).clone()
    expected = run_diffusers("ddim", 10, eps, init, 0.6, step_options={"eta": 0.8})
    actual = run_sd_core(get_sampler("ddim"), SCHEDULE, 10, eps, init, 0.6, eta=0.8)
    assert relative_error(actual, expected) < 1e-4


@pytest.mark.parametrize(("ancestral", "plain"), [("euler_a", "euler")])
def test_an_ancestral_sampler_at_eta_0_takes_the_plain_steps(ancestral: str, plain: str) -> None:
    eps = analytic_eps(SCHEDULE, MEAN)
    without_noise = run_sd_core(get_sampler(ancestral), SCHEDULE, 8, eps, eta=0.0)
    assert torch.equal(without_noise, run_sd_core(get_sampler(plain), SCHEDULE, 8, eps))
    half = run_sd_core(get_sampler(ancestral), SCHEDULE, 8, eps, eta=0.5)
    full = run_sd_core(get_sampler(ancestral), SCHEDULE, 8, eps)
    assert relative_error(half, full) > 1e-2 and relative_error(half, without_noise) > 1e-2


def test_which_samplers_take_an_eta() -> None:
    settable = {name for name, spec in SAMPLERS.items() if spec.eta_settable}
    assert settable == {"ddim", "euler_a", "dpm2_a", "dpmpp_2s_a"}
    fixed = {name: spec.eta for name, spec in SAMPLERS.items() if spec.eta is not None}
    assert fixed == {
        "ddim": 0.0, "euler_a": 1.0, "dpm2_a": 1.0, "dpmpp_2s_a": 1.0, "dpmpp_sde": 1.0,
        "dpmpp_sde_karras": 1.0, "dpmpp_2m_sde": 1.0, "dpmpp_2m_sde_karras": 1.0,
        "dpmpp_3m_sde": 1.0, "dpmpp_3m_sde_karras": 1.0,
    }  # fmt: skip


@pytest.mark.parametrize("name", ["ddim", "euler_a", "dpm2_a", "dpmpp_2s_a"])
def test_their_own_eta_changes_nothing_and_another_changes_the_result(name: str) -> None:
    spec = get_sampler(name)
    assert spec.eta is not None
    eps = analytic_eps(SCHEDULE, MEAN)
    default = run_sd_core(spec, SCHEDULE, 6, eps)
    assert torch.equal(run_sd_core(spec, SCHEDULE, 6, eps, eta=spec.eta), default)
    other = run_sd_core(spec, SCHEDULE, 6, eps, eta=0.5)
    assert relative_error(other, default) > 1e-2
