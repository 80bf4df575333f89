"""The dali-tiny data generator and the analytic detector that judges the model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from training.detector import ATTRIBUTES, detect
from training.shapes import (
    EVAL_SEED_BASE,
    Scene,
    all_scenes,
    eval_seed,
    held_out_scenes,
    parse_caption,
    render,
    sample_training_batch,
    train_scenes,
)


def _errors(images: list[np.ndarray], scenes: list[Scene]) -> dict[str, int]:
    errors = dict.fromkeys(ATTRIBUTES, 0)
    for image, scene in zip(images, scenes, strict=True):
        for name, ok in detect(image).matches(scene).items():
            errors[name] += not ok
    return errors


# Every 7th caption of the grammar (494): every colour, background, shape, size and position.
_SUBSET = all_scenes()[::7]


def test_grammar_size_and_split() -> None:
    scenes = all_scenes()
    assert len(scenes) == 8 * 3 * 8 * 3 * 6 == len({s.caption for s in scenes})
    train, held = train_scenes(), held_out_scenes()
    assert len(held) >= 300
    assert {s.caption for s in train}.isdisjoint({s.caption for s in held})
    assert len(train) + len(held) == len(scenes)
    # Every attribute value still occurs in training, so held-out captions are new combinations
    # of known words, not unknown words.
    for name in ("color", "shape", "background", "size", "position"):
        assert {getattr(s, name) for s in train} == {getattr(s, name) for s in scenes}


def test_parse_caption_round_trips_every_caption() -> None:
    for scene in all_scenes():
        assert parse_caption(scene.caption) == scene
    assert parse_caption("a red circle on a blue background") == Scene(
        "red", "circle", "blue", "medium", "center", position_said=False, size_said=False
    )
    assert (
        parse_caption("a large green triangle in the top right on a gray background").size
        == "large"
    )


@pytest.mark.parametrize(
    "caption",
    [
        "a red circle",
        "a pink circle on a blue background",
        "a red hexagon on a blue background",
        "a red circle on a red background",
        "a huge red circle on a blue background",
        "a red circle in the middle on a blue background",
    ],
)
def test_parse_caption_rejects_outside_grammar(caption: str) -> None:
    with pytest.raises(ValueError, match="caption|color|shape|background"):
        parse_caption(caption)


def test_render_is_deterministic_per_seed_and_seeds_differ() -> None:
    scene = parse_caption("a red square in the top left on a blue background")
    first = render(scene, 7)
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, render(scene, 7))
    assert not np.array_equal(first, render(scene, 8))
    images, captions = sample_training_batch(np.random.default_rng(3), 4)
    again, captions_again = sample_training_batch(np.random.default_rng(3), 4)
    assert np.array_equal(images, again) and captions == captions_again


def test_training_batches_never_use_held_out_captions_or_seeds() -> None:
    held = {s.caption for s in held_out_scenes()}
    rng = np.random.default_rng(0)
    _, captions = sample_training_batch(rng, 500)
    assert held.isdisjoint(captions)
    seeds = np.random.default_rng(0).integers(0, EVAL_SEED_BASE, size=10_000)
    assert seeds.max() < eval_seed(0)


def test_detector_is_exact_on_clean_renders() -> None:
    for name in ("color", "shape", "background", "size", "position"):
        assert {getattr(s, name) for s in _SUBSET} == {getattr(s, name) for s in all_scenes()}
    images = [render(s, i) for i, s in enumerate(_SUBSET)]
    assert _errors(images, list(_SUBSET)) == dict.fromkeys(ATTRIBUTES, 0)


def test_detector_is_robust_to_noise_and_blur() -> None:
    rng = np.random.default_rng(0)
    scenes = list(_SUBSET[::3])
    noisy = [
        np.clip(render(s, i) + rng.normal(0, 10, (64, 64, 3)), 0, 255).astype(np.uint8)
        for i, s in enumerate(scenes)
    ]
    blurred = [
        np.asarray(Image.fromarray(render(s, i)).filter(ImageFilter.GaussianBlur(1.2)))
        for i, s in enumerate(scenes)
    ]
    for images in (noisy, blurred):
        errors = _errors(images, scenes)
        assert sum(errors.values()) <= len(scenes) // 100, errors


def test_detector_sees_no_shape_in_a_blank_image() -> None:
    blank = np.full((64, 64, 3), 128, dtype=np.uint8)
    detection = detect(blank)
    assert not detection.found and detection.background == "gray"
    with pytest.raises(ValueError, match="square RGB"):
        detect(np.zeros((64, 32, 3), dtype=np.uint8))


def test_detector_works_at_other_sizes() -> None:
    scene = parse_caption("a small purple triangle in the bottom right on a yellow background")
    assert all(detect(render(scene, 5, size=128)).matches(scene).values())
