"""`GenerationParams.resolve`: the checks that need the sampler registry."""

from __future__ import annotations

import pytest

from sd_core.params import GenerationParams, InvalidParam


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (GenerationParams("x", sampler="lcm", steps=51), "steps"),
        (GenerationParams("x", hires=True, hires_sampler="lcm", steps=51), "hires_steps"),
        (GenerationParams("x", hires=True, hires_sampler="lcm", hires_steps=60), "hires_steps"),
    ],
)
def test_the_engine_refuses_them_when_it_resolves_the_params(
    params: GenerationParams, field: str
) -> None:
    with pytest.raises(InvalidParam) as error:
        params.resolve(64, "euler_a")
    assert error.value.field == field and "LCM" in str(error.value)
