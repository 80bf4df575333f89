"""The shipped built-in model: small, self-describing, and it draws what it is told."""

from __future__ import annotations

import json
from pathlib import Path

import sd_core
from sd_core.checkpoint import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX
from sd_core.tensor_source import TensorSource
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
    # The 300-caption evaluation recorded in the file meets every target of issue 3.
    assert set(record["meets_targets"]) == set(TARGETS)
    assert all(record["meets_targets"].values()), record
    shares = {**record["accuracy"], "all_four": record["all_four"]}
    assert all(shares[name] >= target for name, target in TARGETS.items()), shares
    # The same seed with another colour word draws that colour; the seed moves the shape.
    variation = record["variation"]
    assert variation["colour_word_detected_share"] == 1.0
    assert variation["seed_min_changed_pixels"] > 0


def test_shipped_model_draws_what_it_is_told() -> None:
    pipe = sd_core.load_pipeline()  # no checkpoint: the built-in model
    assert pipe.model_name == "dali-tiny"
    guidance = json.loads(TensorSource(MODEL).metadata["dali_eval"])["guidance"]
    # The 60 held-out captions past the 300 of the recorded evaluation, with their own seeds:
    # the file draws what its record says, not just on the recorded images. On 60 images a
    # share's sampling error is about 4 points (an earlier file's shape was 82.5 % on the first
    # 40 of them and 91.0 % on the 300), so each may fall up to 10 points below its target here.
    scenes = held_out_scenes()[300:360]
    seeds = [eval_seed(300 + i) for i in range(len(scenes))]
    result = score(pipe, scenes, seeds, 20, pipe.config.default_sampler, guidance)
    shares = {**result.accuracy, "all_four": result.all_four}
    for name, target in TARGETS.items():
        assert shares[name] >= target - 0.10, result.summary()
