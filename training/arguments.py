"""The training command's argument types and presets: each flag's value checked with a message
that names it and what is allowed (argparse adds the flag), and the TrainConfig a preset names."""

from __future__ import annotations

import argparse
from typing import Any

PRESETS = ("dali-tiny-v2", "dali-tiny", "dali-tiny-f4", "micro")
DEFAULT_PRESET = "dali-tiny-v2"  # the recipe of the shipped file
# Train flags that map one-to-one onto TrainConfig fields (flag --vae-steps → vae_steps).
TRAIN_FIELDS = {
    "seed": int,
    "vae_steps": int,
    "vae_batch": int,
    "unet_steps": int,
    "unet_batch": int,
    "pool_size": int,
    "checkpoint_every": int,
    "eval_count": int,
    "tune_count": int,
    "lr": float,
    "vae_lr": float,
    "large_every": int,
    "large_pool_size": int,
    "v2_share": float,
}


def positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value

    return parse


def share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; allowed: 0..1")
    return value


def preset_config(name: str) -> Any:
    """The TrainConfig a --preset names (before the train flags are applied)."""
    from training.config import DALI_TINY_F4, DALI_TINY_V2, MICRO_TRAIN, TrainConfig

    if name == "micro":
        return MICRO_TRAIN
    if name == "dali-tiny-v2":  # the shipped file's recipe (docs/dali-tiny.md)
        return TrainConfig(model=DALI_TINY_V2, pool_size=24000, unet_steps=4500, large_every=16,
                           large_pool_size=3000, v2_share=0.4)  # fmt: skip
    return TrainConfig(model=DALI_TINY_F4) if name == "dali-tiny-f4" else TrainConfig()


def flag_parser(name: str, kind: type) -> Any:
    """The parser of the train flag of TrainConfig field `name`."""
    if name == "seed":
        return non_negative_int
    return share if name == "v2_share" else positive(kind)


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value
