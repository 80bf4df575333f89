"""Training on the v2 grammar (`TrainConfig.v2_share`): which captions the autoencoder, the latent
pool and the decoder fine-tune see, that 0 leaves the v1 recipe's draws alone, and the flag."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sd_core.tensor_source import TensorSource
from training import batches
from training.__main__ import main
from training.shapes import (
    EVAL_SEED_BASE,
    PairScene,
    Scene,
    is_held_out,
    render,
    train_scenes,
)


def _is_v2(scene: Scene | PairScene) -> bool:
    return isinstance(scene, PairScene) or scene.style_said


def test_the_pool_gives_a_share_of_its_places_to_v2_training_captions() -> None:
    v1 = train_scenes()
    assert batches.pool_scenes(10, seed=0, v2_share=0.0) == [v1[i] for i in range(10)]
    scenes = batches.pool_scenes(2000, seed=0, v2_share=0.4)
    v2 = [s for s in scenes if _is_v2(s)]
    assert 0.35 < len(v2) / len(scenes) < 0.45
    assert any(isinstance(s, PairScene) for s in v2)
    assert any(isinstance(s, Scene) and s.style == "outline" for s in v2)
    assert not any(is_held_out(s.caption) for s in v2)
    # The v1 places keep the captions in turn, so every v1 caption is still in the pool.
    assert all(s == v1[i % len(v1)] for i, s in enumerate(scenes) if not _is_v2(s))
    assert batches.pool_scenes(2000, seed=0, v2_share=0.4) == scenes  # rebuilt alike on resume
    assert batches.pool_scenes(2000, seed=1, v2_share=0.4) != scenes


def test_batches_without_v2_draw_what_the_v1_recipe_drew() -> None:
    images, _ = batches.weighted_training_batch(np.random.default_rng(7), 6, 4.0, v2_share=0.0)
    rng = np.random.default_rng(7)
    picks = rng.integers(0, len(train_scenes()), size=6)
    seeds = rng.integers(0, EVAL_SEED_BASE, size=6)
    pairs = zip(picks, seeds, strict=True)
    expected = np.stack([render(train_scenes()[i], int(s)) for i, s in pairs])
    assert np.array_equal(images, expected)


def test_batches_with_v2_render_v2_training_captions(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[Scene | PairScene] = []

    def spy(scene, seed, size=64):  # type: ignore[no-untyped-def]
        drawn.append(scene)
        return render(scene, seed, size)

    monkeypatch.setattr(batches, "render", spy)
    images, weights = batches.weighted_training_batch(
        np.random.default_rng(3), 40, 4.0, v2_share=1.0
    )
    assert images.shape == (40, 64, 64, 3) and weights.shape == (40, 64, 64)
    assert all(_is_v2(s) and not is_held_out(s.caption) for s in drawn)
    assert any(isinstance(s, PairScene) for s in drawn)
    # Both objects of a pair are weighted as shape: more than one coloured region per image.
    pair = next(i for i, s in enumerate(drawn) if isinstance(s, PairScene))
    assert (weights[pair] > 1).sum() > 2 * 11 * 11 * 0.4


@pytest.mark.parametrize("value", ["1.5", "-0.1", "half"])
def test_the_share_flag_is_checked(value: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(tmp_path), "--v2-share", value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--v2-share" in err and repr(value) in err


def test_train_all_with_v2_and_128_px_judges_both_beside_v1(tmp_path: Path) -> None:
    out = tmp_path / "run"
    flags = ["--preset", "micro", "--decoder-steps", "2", "--decoder-batch", "2",
             "--decoder-samples", "4", "--judge-count", "3", "--judge-steps", "2",
             "--threads", "1", "--v2-share", "0.5", "--large-every", "2",
             "--large-pool-size", "4"]  # fmt: skip
    assert main(["train-all", "--out", str(out), *flags]) == 0
    metadata = TensorSource(out / "dali-tiny.safetensors").metadata
    assert json.loads(metadata["dali_decoder_finetune"])["v2_share"] == 0.5
    assert json.loads(metadata["dali_train_config"])["v2_share"] == 0.5
    judge = json.loads(metadata["dali_judge"])
    assert judge["v2"]["count"] == 3 and "style" in judge["v2"]["figures"]
    assert judge["128"]["size"] == 128 and judge["128"]["count"] == 3
    assert {"v2", "128"} <= set(json.loads((out / "judge.json").read_text()))


def test_the_f4_preset_gives_16_by_16_latents_at_64_px() -> None:
    import torch

    from sd_core.checkpoint import build_models
    from training.arguments import preset_config
    from training.config import DALI_TINY, DALI_TINY_F4

    config = preset_config("dali-tiny-f4")
    assert config.model == DALI_TINY_F4 and preset_config("dali-tiny").model == DALI_TINY
    assert DALI_TINY_F4.vae.downsample_factor == 4 and DALI_TINY.vae.downsample_factor == 8
    # Only the autoencoder's depth differs: text encoder and UNet are dali-tiny's.
    assert (DALI_TINY_F4.clip, DALI_TINY_F4.unet) == (DALI_TINY.clip, DALI_TINY.unet)
    vae = build_models(DALI_TINY_F4, device=torch.device("meta"))["vae"]
    mean, _ = vae.encode(torch.empty(1, 3, 64, 64, device="meta"))  # type: ignore[operator]
    assert mean.shape == (1, 4, 16, 16)
    assert vae.decode(mean).shape == (1, 3, 64, 64)  # type: ignore[operator]


def test_the_v2_preset_runs_its_three_level_unet_on_16_by_16_latents() -> None:
    import torch

    from sd_core.checkpoint import build_models
    from training.arguments import preset_config
    from training.config import DALI_TINY, DALI_TINY_F4, DALI_TINY_V2

    assert preset_config("dali-tiny-v2").model == DALI_TINY_V2
    assert DALI_TINY_V2.vae == DALI_TINY_F4.vae and DALI_TINY_V2.clip == DALI_TINY.clip
    assert DALI_TINY_V2.unet.channel_mult == (1, 2, 2)
    assert DALI_TINY_V2.unet.attention_resolutions == (2, 4)
    unet = build_models(DALI_TINY_V2, device=torch.device("meta"))["unet"]
    # Three levels: two downsamplings, so 16×16 latents reach 4×4 in the middle block.
    downsamplers = [name for name, _ in unet.named_modules() if name.endswith(".op")]
    assert len(downsamplers) == 2
    context = torch.empty(1, 77, DALI_TINY_V2.unet.context_dim, device="meta")
    out = unet(torch.empty(1, 4, 16, 16, device="meta"), torch.ones(1, device="meta"), context)
    assert out.shape == (1, 4, 16, 16)


def test_the_default_preset_is_the_recipe_the_shipped_file_records() -> None:
    import dataclasses
    import json

    import sd_core
    from sd_core.checkpoint import config_from_metadata
    from sd_core.tensor_source import TensorSource
    from training.__main__ import _parser
    from training.arguments import DEFAULT_PRESET, preset_config
    from training.train import train_config_from_json

    # `python -m training train-all --out DIR` with no flags trains what ships.
    assert DEFAULT_PRESET == "dali-tiny-v2"
    args = _parser().parse_args(["train-all", "--out", "x"])
    assert args.preset == DEFAULT_PRESET
    metadata = TensorSource(sd_core.BUILTIN_MODEL_PATH).metadata
    preset = preset_config(DEFAULT_PRESET)
    recorded = train_config_from_json(metadata["dali_train_config"])  # the model is not in it
    assert dataclasses.replace(recorded, model=preset.model) == preset
    shipped = config_from_metadata(metadata["dali_config"])
    assert (shipped.clip, shipped.unet) == (preset.model.clip, preset.model.unet)
    # The autoencoder's scale factor is measured by the run; its shape is the preset's.
    assert dataclasses.replace(shipped.vae, scale_factor=preset.model.vae.scale_factor) == (
        preset.model.vae
    )
    assert json.loads(metadata["dali_config"])["name"] == preset.model.name == "dali-tiny"
