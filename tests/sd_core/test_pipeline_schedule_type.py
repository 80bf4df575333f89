"""The `scheduler` parameter (A1111's "Schedule type") through pipe.generate and its metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sd_core
from sd_core.checkpoint import save_checkpoint
from sd_core.config import TINY_TEST
from sd_core.infotext import parse_infotext
from sd_core.params import GenerationParams, InvalidParam
from tests.reference import random_checkpoint


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return sd_core.load_pipeline(
        save_checkpoint(path, random_checkpoint(TINY_TEST, seed=5), TINY_TEST)
    )


def run(pipe, **settings):  # type: ignore[no-untyped-def]
    return pipe.generate(GenerationParams("a cat", seed=3, steps=3, **settings))


def test_a_schedule_type_changes_the_image_and_is_recorded(pipe) -> None:  # type: ignore[no-untyped-def]
    plain = run(pipe, sampler="DPM++ 2M")
    karras = run(pipe, sampler="DPM++ 2M", scheduler="Karras")
    assert karras.params.scheduler == "karras"
    # The same as the registered "DPM++ 2M Karras", pixel for pixel.
    own = run(pipe, sampler="DPM++ 2M Karras")
    assert np.array_equal(np.asarray(karras.images[0]), np.asarray(own.images[0]))
    assert not np.array_equal(np.asarray(karras.images[0]), np.asarray(plain.images[0]))
    text = karras.infotext(0)
    assert "Sampler: DPM++ 2M, Schedule type: Karras, CFG scale" in text
    assert parse_infotext(text).schedule_type == "Karras"
    assert "Schedule type" not in plain.infotext(0)
    assert json.loads(json.dumps(karras.metadata(0)))["scheduler"] == "karras"


@pytest.mark.parametrize("scheduler", ["exponential", "SGM Uniform"])
def test_every_schedule_type_runs_img2img_too(pipe, scheduler: str) -> None:  # type: ignore[no-untyped-def]
    start = run(pipe, sampler="Euler", scheduler=scheduler).images[0]
    again = pipe.generate(
        GenerationParams("a cat", seed=3, steps=4, sampler="LMS", scheduler=scheduler),
        init_image=start,
    )
    assert again.images[0].size == start.size


def test_unknown_or_unusable_schedule_types_name_the_field(pipe) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParam, match="scheduler.*Automatic, Karras") as info:
        run(pipe, scheduler="Beta")
    assert info.value.field == "scheduler"
    with pytest.raises(InvalidParam, match="DDIM has its own timesteps") as info:
        run(pipe, sampler="DDIM", scheduler="karras")
    assert info.value.field == "scheduler"
    assert GenerationParams("x", scheduler="Automatic").check().scheduler is None
