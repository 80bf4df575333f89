"""The built-in model's grammar check: every caption of its grammar (v1 and v2) passes, anything
else is named."""

from __future__ import annotations

import numpy as np
import pytest

from sd_core import shapes_grammar
from sd_core.shapes_grammar import prompt_warning, read_prompt
from training import shapes


def test_its_words_are_the_training_data_s() -> None:
    assert tuple(shapes.COLORS) == shapes_grammar.COLORS
    assert tuple(shapes.BACKGROUND_COLORS) == shapes_grammar.BACKGROUNDS
    assert shapes_grammar.SHAPES == shapes.SHAPES
    assert set(shapes_grammar.SIZES) == set(shapes.SIZES) - {"medium"}  # medium goes unsaid
    assert shapes_grammar.POSITIONS == shapes.POSITIONS
    assert shapes_grammar.STYLES == shapes.STYLES
    assert shapes_grammar.RELATIONS == shapes.RELATIONS


def test_every_caption_the_model_was_trained_on_is_understood() -> None:
    scenes = shapes.all_scenes()
    assert len(scenes) == 3456
    assert [s.caption for s in scenes if prompt_warning(s.caption)] == []
    rng = np.random.default_rng(0)  # the v2 captions, both sides of the split
    v2 = [shapes.random_v2_scene(rng, held_out=i % 2 == 0).caption for i in range(2000)]
    assert [caption for caption in v2 if prompt_warning(caption)] == []
    assert all(shapes.parse_any(example) for example in shapes_grammar.SUGGESTIONS)


@pytest.mark.parametrize(
    "prompt",
    [
        "a red circle left of a red square on a blue background",  # one colour for both
        "a red circle above a blue square on a blue background",  # background of one of them
        "a large red circle below a blue square on a white background",  # pairs: small or medium
        "a red circle left of a blue square",  # no background
        "a red outline filled circle on a blue background",
    ],
)
def test_what_the_v2_grammar_rules_out_is_not_understood(prompt: str) -> None:
    assert not read_prompt(prompt).understood
    with pytest.raises(ValueError):
        shapes.parse_any(prompt)


@pytest.mark.parametrize(
    "prompt",
    [
        "A red circle on a blue background.",  # case, end punctuation
        "a  red circle   on a blue background",  # spaces
        "a (red:1.3) circle on a [blue] background",  # A1111's attention syntax
        "a red circle on a blue background <lora:detail:0.8>",  # an extra-network tag
        "a large green square in the top left BREAK on a white background",
    ],
)
def test_a1111_spelling_of_a_taught_prompt_is_understood(prompt: str) -> None:
    assert prompt_warning(prompt) is None, read_prompt(prompt)


def test_unknown_words_are_named_with_the_pattern_and_an_example() -> None:
    warning = prompt_warning("a photo of a cat, masterpiece")
    assert warning is not None
    assert "'photo', 'cat', 'masterpiece'" in warning  # "of" it knows: "left of"
    assert shapes_grammar.PATTERN in warning and shapes_grammar.PAIR_PATTERN in warning
    assert shapes_grammar.SUGGESTIONS[0] in warning and shapes_grammar.SUGGESTIONS[3] in warning
    assert "circle, square, triangle" in warning


@pytest.mark.parametrize(
    ("prompt", "why"),
    [
        ("a red circle on a red background", "not in this order or combination"),
        ("red circle blue background", "not in this order or combination"),
        ("a red circle", "not in this order or combination"),
        ("", "empty prompt"),
        ("a pink circle on a blue background", "'pink'"),
        ("a red hexagon on a blue background", "'hexagon'"),
    ],
)
def test_prompts_outside_the_grammar_say_why(prompt: str, why: str) -> None:
    warning = prompt_warning(prompt)
    assert warning is not None and why in warning


def test_a_long_list_of_unknown_words_is_cut() -> None:
    warning = prompt_warning(" ".join(f"word{chr(97 + i)}x" for i in range(12)))
    assert warning is not None and "'wordhx' …" in warning and "wordix" not in warning
