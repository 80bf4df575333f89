"""sd_core's module trees are the SD v1.x checkpoint's key tree: same keys, same shapes.

Full-size models are built on the meta device, so no weights are allocated.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from sd_core import clip, unet, vae
from sd_core.config import SD_V1, SD_V1_INPAINT, TINY_TEST, ModelConfig

KEYS_FILE = Path(__file__).resolve().parent.parent / "fixtures" / "original_keys.tsv"


def original_keys() -> dict[str, tuple[int, ...]]:
    """key → shape, from the fixture listing every tensor of v1-5-pruned-emaonly (no extras)."""
    shapes = {}
    for line in KEYS_FILE.read_text().splitlines():
        key, shape = line.split("\t")
        shapes[key] = tuple(int(n) for n in shape.strip("[]").split(",") if n.strip())
    return shapes


def meta_models(config: ModelConfig) -> dict[str, nn.Module]:
    """checkpoint prefix → sd_core model built on the meta device."""
    with torch.device("meta"):
        return {
            clip.CHECKPOINT_PREFIX: clip.CLIPTextModel(config.clip),
            vae.CHECKPOINT_PREFIX: vae.AutoencoderKL(config.vae),
            unet.CHECKPOINT_PREFIX: unet.UNetModel(config.unet),
        }


def prefixed_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    return {
        prefix + key: tuple(tensor.shape)
        for prefix, model in meta_models(config).items()
        for key, tensor in model.state_dict().items()
    }


def test_fixture_is_the_full_key_list() -> None:
    assert len(original_keys()) == 1131


def test_sd_v1_keys_and_shapes_equal_the_checkpoint() -> None:
    ours, theirs = prefixed_shapes(SD_V1), original_keys()
    assert sorted(set(ours) - set(theirs)) == []
    assert sorted(set(theirs) - set(ours)) == []
    wrong = {k: (ours[k], theirs[k]) for k in theirs if ours[k] != theirs[k]}
    assert wrong == {}


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (unet.CHECKPOINT_PREFIX, 859_520_964),
        (vae.CHECKPOINT_PREFIX, 83_653_863),
        (clip.CHECKPOINT_PREFIX, 123_060_480),
    ],
)
def test_sd_v1_parameter_counts(prefix: str, expected: int) -> None:
    model = meta_models(SD_V1)[prefix]
    assert sum(p.numel() for p in model.parameters()) == expected
    # Everything in the state dict is a parameter except CLIP's position_ids buffer.
    buffers = [name for name, _ in model.named_buffers()]
    assert buffers == (["embeddings.position_ids"] if prefix == clip.CHECKPOINT_PREFIX else [])


def test_clip_position_ids_buffer_is_int64_1x77() -> None:
    model = clip.CLIPTextModel(TINY_TEST.clip)  # same 77 positions, without 123M weights
    ids = model.state_dict()["embeddings.position_ids"]
    assert ids.dtype == torch.int64
    assert torch.equal(ids, torch.arange(77).unsqueeze(0))


def test_inpainting_unet_takes_nine_channels() -> None:
    shapes = prefixed_shapes(SD_V1_INPAINT)
    theirs = original_keys()
    first_conv = unet.CHECKPOINT_PREFIX + "input_blocks.0.0.weight"
    assert shapes[first_conv] == (320, 9, 3, 3)
    # Nothing else changes.
    assert set(shapes) == set(theirs)
    assert {k for k in theirs if shapes[k] != theirs[k]} == {first_conv}


def test_tiny_config_keeps_every_key_name_with_smaller_shapes() -> None:
    tiny, full = prefixed_shapes(TINY_TEST), original_keys()
    assert set(tiny) == set(full)
    tiny_params = sum(torch.Size(s).numel() for s in tiny.values())
    full_params = sum(torch.Size(s).numel() for s in full.values())
    assert tiny_params < full_params / 50
