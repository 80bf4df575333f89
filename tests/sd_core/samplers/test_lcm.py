"""LCM beyond the comparison with diffusers' LCMScheduler in test_samplers_vs_diffusers: its
boundary scalings (too close to (0, 1) at LCM's timesteps for the final latents to show them),
its step-count range and its own timesteps."""

from __future__ import annotations

import pytest
import torch

from sd_core.config import ScheduleConfig
from sd_core.params import GenerationParams
from sd_core.samplers import get_sampler
from sd_core.samplers.lcm import boundary_scalings, lcm_schedule, sample_lcm
from sd_core.schedule import NoiseSchedule


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule(ScheduleConfig())


def test_boundary_scalings_equal_diffusers() -> None:
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.LCMScheduler()
    for t in (0, 1, 19, 499, 999):
        expected = reference.get_scalings_for_boundary_condition_discrete(t)
        assert boundary_scalings(t) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert boundary_scalings(0) == (1.0, 0.0)  # the identity at t = 0


def test_the_boundary_scalings_are_applied(schedule: NoiseSchedule) -> None:
    """A σ off LCM's grid near t = 0 makes c_skip large enough to see."""
    x = torch.ones(1, 4, 2, 2)
    sigmas = torch.tensor([float(schedule.sigmas[1]), 0.0])
    out = sample_lcm(lambda v, s: torch.zeros_like(v), x, sigmas, noise=torch.randn)
    c_skip, _ = boundary_scalings(1.0)
    expected = c_skip / (float(sigmas[0]) ** 2 + 1) ** 0.5
    torch.testing.assert_close(out, torch.full_like(x, expected))


def test_steps_and_schedule(schedule: NoiseSchedule) -> None:
    assert lcm_schedule(schedule, 4).timesteps.tolist() == [999, 759, 499, 259]
    assert lcm_schedule(schedule, 50).timesteps.tolist()[-1] == 19
    for steps in (0, 51):
        with pytest.raises(ValueError, match="LCM takes 1 to 50 steps"):
            lcm_schedule(schedule, steps)
    spec = get_sampler("LCM")
    assert not spec.takes_schedule_type
    with pytest.raises(ValueError, match="takes no schedule type"):
        spec.sigmas(schedule, 4, "karras")
    assert GenerationParams(prompt="x", sampler="LCM").resolve(64, "euler_a").sampler == "lcm"
