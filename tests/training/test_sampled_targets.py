"""The targets a sampled drawing is decoded towards: what its caption allows, nearest to it."""

from __future__ import annotations

import numpy as np
import pytest

from training.sampled_targets import nearest_allowed_render
from training.shapes import BACKGROUND_COLORS, Scene, render, train_scenes


def _blur(image: np.ndarray, passes: int) -> np.ndarray:
    out = image.astype(np.float64)
    for _ in range(passes):  # a 3×3 box blur, edges repeated
        padded = np.pad(out, ((1, 1), (1, 1), (0, 0)), mode="edge")
        out = sum(padded[dy : dy + 64, dx : dx + 64] for dy in range(3) for dx in range(3)) / 9
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("index", range(0, 3096, 97))
def test_a_clean_render_is_its_own_target(index: int) -> None:
    scene = train_scenes()[index]
    image = render(scene, seed=index)
    target = nearest_allowed_render(image, scene)
    assert target is not None
    # Area and centroid fix the render: at most a level here and there from the rounding.
    difference = np.abs(target.astype(int) - image.astype(int))
    assert difference.mean() < 0.1 and (difference > 40).mean() < 0.001


def test_a_blurred_drawing_gets_the_sharp_shape_back() -> None:
    scene = Scene("red", "triangle", "blue", size="small", position="top left")
    clean = render(scene, seed=3)
    blurred = _blur(clean, passes=2)
    target = nearest_allowed_render(blurred, scene)
    assert target is not None
    assert (
        np.abs(target.astype(int) - clean.astype(int)).mean()
        < np.abs(blurred.astype(int) - clean.astype(int)).mean() / 2
    )


def test_the_target_is_the_captions_shape_whatever_was_drawn() -> None:
    white = np.array(BACKGROUND_COLORS["white"])
    drawn = render(Scene("green", "circle", "white", size="large"), seed=1)
    target = nearest_allowed_render(drawn, Scene("green", "square", "white", size="large"))
    assert target is not None
    # A square fills its bounding box; the drawn circle fills π/4 of its own.
    for image, fill in ((drawn, np.pi / 4), (target, 1.0)):
        ys, xs = np.nonzero(np.abs(image.astype(int) - white).sum(-1) > 150)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert len(ys) / box == pytest.approx(fill, abs=0.06)


def test_drawings_far_from_the_anchor_or_empty_are_left_out() -> None:
    scene = Scene("yellow", "square", "gray", size="small", position="top left")
    elsewhere = render(Scene("yellow", "square", "gray", size="small", position="bottom right"), 0)
    assert nearest_allowed_render(elsewhere, scene) is None
    empty = np.full((64, 64, 3), BACKGROUND_COLORS["gray"], np.uint8)
    assert nearest_allowed_render(empty, scene) is None


def test_outline_captions_are_refused_by_name() -> None:
    scene = Scene("red", "square", "white", style="outline", style_said=True)
    with pytest.raises(ValueError, match="style 'outline'"):
        nearest_allowed_render(render(scene, seed=0), scene)


def test_a_shape_drawn_too_big_is_clamped_into_its_size_class() -> None:
    big = render(Scene("blue", "circle", "yellow", size="large"), seed=2)
    scene = Scene("blue", "circle", "yellow", size="small")
    target = nearest_allowed_render(big, scene)
    assert target is not None
    yellow = np.array(BACKGROUND_COLORS["yellow"])
    covered = (np.abs(target.astype(int) - yellow).sum(-1) > 150).sum()
    assert covered <= np.pi / 4 * 14.5**2  # no larger than the largest small circle


def test_the_decoder_fine_tune_learns_the_sampled_latents_targets(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every target a magenta image, the sampled latents decode nearer magenta after
    a short fine-tune than before: half of each batch is those pairs."""
    import json

    import torch

    import training.sampled_targets as st
    from sd_core.checkpoint import load_models
    from sd_core.tensor_source import TensorSource
    from training.__main__ import main
    from training.finetune import finetune_decoder

    model, tuned = tmp_path / "micro.safetensors", tmp_path / "tuned.safetensors"
    run = ["train", "--out", str(tmp_path / "run"), "--preset", "micro", "--no-eval"]
    assert main([*run, "--export", str(model)]) == 0
    magenta = np.zeros((64, 64, 3), np.uint8)
    magenta[..., 0] = magenta[..., 2] = 255
    kept: list[torch.Tensor] = []
    real = st.sample_targets

    def remembering(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        out = real(*args, **kwargs)
        kept.append(out.latents)
        return out

    monkeypatch.setattr(st, "nearest_allowed_render", lambda image, scene: magenta)
    monkeypatch.setattr("training.finetune.sample_targets", remembering)
    record = finetune_decoder(model, tuned, torch.device("cpu"), steps=30, batch=4, lr=5e-3,
                              samples=8, sample_steps=2)  # fmt: skip
    assert record["samples"]["drawn"] == 8 and record["samples"]["kept"] == 8
    assert json.loads(TensorSource(tuned).metadata["dali_decoder_finetune"])["samples"]
    again = tmp_path / "again.safetensors"
    finetune_decoder(tuned, again, torch.device("cpu"), steps=1, batch=2)
    assert json.loads(TensorSource(again).metadata["dali_decoder_finetune"])["previous"] == record

    def distance_to_magenta(path) -> float:  # noqa: ANN001
        _config, models, _meta = load_models(path, device=torch.device("cpu"))
        with torch.no_grad():
            decoded = models["vae"].decode(kept[0]).clamp(-1, 1)
        goal = torch.tensor([1.0, -1.0, 1.0])[None, :, None, None]
        return float((decoded - goal).abs().mean())

    assert distance_to_magenta(tuned) < 0.5 * distance_to_magenta(model)
