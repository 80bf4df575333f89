"""The shipped built-in model: small, self-describing, and it draws what it is told."""

from __future__ import annotations

import json
from pathlib import Path

import sd_core
from sd_core.checkpoint import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, TensorSource
from training.evaluate import TARGETS, score
from training.shapes import eval_seed, held_out_scenes

MODEL = Path(sd_core.BUILTIN_MODEL_PATH)


def test_shipped_file_is_small_and_describes_itself() -> None:
    assert MODEL.stat().st_size <= 30_000_000
    source = TensorSource(MODEL)
    assert all(key.startswith((CLIP_PREFIX, VAE_PREFIX, UNET_PREFIX)) for key in source.keys())  # noqa: SIM118
    metadata = source.metadata
    config = json.loads(metadata["dali_config"])
    assert config["name"] == "dali-tiny" and config["native_size"] == 64
    assert config["clip"]["vocab_size"] == 49408
    assert 0.05 < config["vae"]["scale_factor"] < 20
    assert metadata["dali_training_command"].startswith("python -m training train")
    record = json.loads(metadata["dali_eval"])
    assert record["count"] == 300 and record["steps"] == 20
    assert record["sampler"] == config["default_sampler"]
    # The recorded figures are the honest ones; whether each issue target is met is recorded
    # beside them (shape and position are not met yet by the shipped file: docs/dali-tiny.md).
    assert set(record["meets_targets"]) == set(TARGETS)


def test_shipped_model_draws_what_it_is_told() -> None:
    pipe = sd_core.load_pipeline()  # no checkpoint: the built-in model
    assert pipe.model_name == "dali-tiny"
    guidance = json.loads(TensorSource(MODEL).metadata["dali_eval"])["guidance"]
    # Held-out captions past the 300 of the recorded evaluation, with their own seeds.
    scenes = held_out_scenes()[300:324]
    seeds = [eval_seed(300 + i) for i in range(len(scenes))]
    result = score(pipe, scenes, seeds, 20, pipe.config.default_sampler, guidance)
    # What the shipped file does reach (300-caption figures: colour 99 %, background 100 %,
    # size 97.7 %); shape (80 %) and position (53 %) are below the targets and are not
    # asserted at those targets here — issue 3 stays open for them.
    assert result.accuracy["color"] >= 0.85 and result.accuracy["background"] >= 0.85, result.summary()
    assert result.accuracy["size"] >= 0.75, result.summary()
