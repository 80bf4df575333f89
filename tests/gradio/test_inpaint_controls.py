"""The inpaint tab's mask settings (blur, invert, masked content, inpaint area and padding)
reach the request and the engine's params; callers that leave them out (an older client, a
positional call) get the REST API's defaults, as before the settings were there."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pytest
from gradio.helpers import special_args
from PIL import Image

from dali_gradio import DaliUI
from dali_gradio.inpaint import inpaint_fields
from tests.api.fakes import FakeGenerator

COMMON = ["Inpaint", "", "cpu", "auto"]
# After the editor and the uploaded mask: strength, prompt … vae.
SETTINGS = [0.75, "a red circle", "", "", 2, 7.0, 5, 64, 64, 1, 1, ""]
FIELDS = ("mask_blur", "inpainting_mask_invert", "inpainting_fill", "inpaint_full_res",
          "inpaint_full_res_padding")  # fmt: skip


def editor() -> dict[str, Any]:
    """The image editor's value: a picture and a layer painted white on its left half."""
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (0, 0, 32, 64))
    return {"background": Image.new("RGB", (64, 64), (20, 160, 40)), "layers": [layer]}


def run(ui: DaliUI, *settings: Any) -> dict[str, Any]:
    def no_progress(*args: Any, **kwargs: Any) -> None:
        return None

    handler = ui.generation.inpaint
    progress: Any = no_progress
    updates = list(handler(*COMMON, editor(), None, *SETTINGS, None, progress, *settings))  # type: ignore[arg-type]
    *_, details = updates[-1]
    assert details["status"] == "succeeded" and details["has_mask"], details
    return details  # type: ignore[no-any-return]


def test_the_settings_reach_the_request_and_the_engine(ui: DaliUI, fake: FakeGenerator) -> None:
    details = run(ui, 8, True, "latent noise", "Only masked", 32)
    assert [details[f] for f in FIELDS] == [8, True, 2, True, 32]
    p = fake.calls[-1].params
    assert [getattr(p, f) for f in FIELDS] == [8, True, 2, True, 32]
    details = run(ui, 0, False, "fill", "Whole picture", 0)
    assert [details[f] for f in FIELDS] == [0, False, 0, False, 0]
    assert fake.calls[-1].params.inpainting_fill == 0
    assert [run(ui)[f] for f in FIELDS] == [0, False, 1, False, 0]  # left out: the defaults


def test_gradio_puts_request_and_progress_before_the_settings(ui: DaliUI) -> None:
    before = [*COMMON, editor(), None, *SETTINGS]
    settings = [4, False, "original", "Only masked", 16]
    inputs, progress_index, _, _ = special_args(
        ui.generation.inpaint, [*before, *settings], request=None
    )
    assert progress_index == len(before) + 1
    assert inputs[len(before)] is None and inputs[-5:] == settings


def test_a_bad_choice_is_refused_naming_the_field() -> None:
    with pytest.raises(gr.Error, match="Masked content: 'paint' is not one of fill, original"):
        inpaint_fields(4, False, "paint", "Whole picture", 0)
    with pytest.raises(gr.Error, match="Inpaint area: 'crop' is not one of Whole picture"):
        inpaint_fields(4, False, "fill", "crop", 0)
    assert inpaint_fields(4.0, None, None, None, None) == {
        "inpainting_mask_invert": False, "mask_blur": 4,
    }  # fmt: skip


def test_the_api_lists_the_settings_last_with_their_defaults(ui: DaliUI) -> None:
    api = ui.build().get_api_info()
    assert api is not None
    settings = api["named_endpoints"]["/inpaint"]["parameters"][-6:-1]  # then the styles
    assert [p["label"] for p in settings] == [
        "Mask blur", "Inpaint not masked", "Masked content", "Inpaint area",
        "Only masked padding, pixels",
    ]  # fmt: skip
    assert [p["parameter_default"] for p in settings] == [0, False, "original", "Whole picture", 0]
