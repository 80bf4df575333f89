"""How the Gradio UI shows things: galleries show whole images (never cropped to a square),
and a bad value reads in words, not in pydantic's."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dali_gradio import DaliUI
from dali_gradio.inputs import explain
from stable_diffusion_api.schemas import GenerationCreate


def test_every_gallery_shows_whole_images(ui: DaliUI) -> None:
    demo = ui.build()
    galleries = [c for c in demo.config["components"] if c["type"] == "gallery"]
    assert len(galleries) >= 4  # generate, gallery, the explorer's two
    assert {g["props"]["label"]: g["props"]["object_fit"] for g in galleries} == {
        g["props"]["label"]: "contain" for g in galleries
    }


def test_a_bad_value_is_explained_in_words() -> None:
    with pytest.raises(ValidationError) as exc:
        GenerationCreate.model_validate({"prompt": "x", "steps": 0})
    assert explain(exc.value) == "Steps (0): must be at least 1"
