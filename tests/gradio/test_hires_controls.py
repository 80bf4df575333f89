"""The txt2img tab's hires fix controls reach the request; callers that leave them out (an
older client, a positional call) still work."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pytest
from gradio.helpers import special_args

from dali_gradio import DaliUI
from dali_gradio.hires import hires_fields
from tests.api.fakes import FakeGenerator

SETTINGS = ["Hires", "", "cpu", "auto", "a red circle", "", "", 2, 7.0, 5, 0, 0, 1, 1, ""]


def run(ui: DaliUI, *hires: Any) -> dict[str, Any]:
    updates = list(ui.generation.txt2img(*SETTINGS, None, lambda *a, **k: None, *hires))  # type: ignore[arg-type]
    *_, details = updates[-1]
    return details  # type: ignore[no-any-return]


def test_the_controls_reach_the_request(ui: DaliUI, fake: FakeGenerator) -> None:
    details = run(ui, True, 1.5, "Lanczos", 3, 0.4)
    assert (details["hires"], details["hires_scale"], details["hires_upscaler"]) == (
        True, 1.5, "Lanczos",
    )  # fmt: skip
    assert (details["hires_steps"], details["hires_strength"]) == (3, 0.4)
    assert fake.calls[-1].params.hires is True
    assert run(ui, False, 3.0, "Nearest", 1, 0.1)["hires"] is False
    assert run(ui)["hires"] is False  # left out: off


def test_gradio_puts_request_and_progress_before_the_hires_controls(ui: DaliUI) -> None:
    inputs, progress_index, _, _ = special_args(
        ui.generation.txt2img, [*SETTINGS, True, 2.0, "Latent", 0, 0.7], request=None
    )
    assert progress_index == len(SETTINGS) + 1
    assert inputs[len(SETTINGS)] is None and inputs[-5:] == [True, 2.0, "Latent", 0, 0.7]


def test_hires_fields_only_when_ticked() -> None:
    assert hires_fields(False, 2.0, "Latent", 0, 0.7) == {}
    assert hires_fields(True, 2.0, None, None, None) == {
        "hires": True, "hires_upscaler": "Latent", "hires_scale": 2.0,
    }  # fmt: skip


def test_the_api_lists_the_controls_last_with_their_defaults(ui: DaliUI) -> None:
    api = ui.build().get_api_info()
    assert api is not None
    parameters = api["named_endpoints"]["/txt2img"]["parameters"]
    hires, styles, later = parameters[-9:-4], parameters[-4], parameters[-3:]
    assert [p["label"] for p in hires] == [
        "Hires fix", "Upscale by", "Upscaler", "Hires steps", "Denoising strength",
    ]  # fmt: skip
    assert [p["parameter_default"] for p in hires] == [False, 2.0, "Latent", 0, 0.7]
    # The schedule type and CFG came later: after the styles, where positional callers written
    # before them send nothing.
    assert styles["label"] == "Styles"
    assert [p["label"] for p in later] == [
        "Hires schedule type", "Hires CFG Scale", "Hires sampling method",
    ]  # fmt: skip
    assert [p["parameter_default"] for p in later] == ["Use same scheduler", 0, ""]


def test_the_schedule_type_and_cfg_reach_the_engine(ui: DaliUI, fake: FakeGenerator) -> None:
    details = run(ui, True, 1.5, "Latent", 3, 0.4, [], "Karras", 4.5)
    assert (details["hires_scheduler"], details["hires_guidance"]) == ("karras", 4.5)
    params = fake.calls[-1].params
    assert (params.hires_scheduler, params.hires_guidance) == ("karras", 4.5)
    # "Use same scheduler" and CFG 0: the first pass's, as when the controls are left out
    same = run(ui, True, 1.5, "Latent", 3, 0.4, [], "Use same scheduler", 0)
    assert (same["hires_scheduler"], same["hires_guidance"]) == (None, None)
    params = fake.calls[-1].params
    assert (params.hires_scheduler, params.hires_guidance) == (None, None)


def test_the_hires_sampler_reaches_the_engine(ui: DaliUI, fake: FakeGenerator) -> None:
    details = run(ui, True, 1.5, "Latent", 3, 0.4, [], "Karras", 0, "dpmpp_2m")
    assert details["hires_sampler"] == "dpmpp_2m"
    # The first pass keeps the model's default (None until the engine resolves it).
    assert (fake.calls[-1].params.sampler, fake.calls[-1].params.hires_sampler) == (
        None, "dpmpp_2m",
    )  # fmt: skip
    # A1111's display name is taken too; "Use same sampler" ("") keeps the first pass's.
    assert run(ui, True, 1.5, "Latent", 3, 0.4, [], "Karras", 0, "DPM++ 2M")["hires_sampler"] == (
        "dpmpp_2m"
    )
    assert run(ui, True, 1.5, "Latent", 3, 0.4, [], "Karras", 0, "")["hires_sampler"] is None
    assert fake.calls[-1].params.hires_sampler is None
    with pytest.raises(gr.Error, match="hires_sampler.*wobbly"):
        run(ui, True, 1.5, "Latent", 3, 0.4, [], "Karras", 0, "wobbly")


def test_an_unknown_schedule_type_is_refused_by_name(ui: DaliUI) -> None:
    hires = [True, 2.0, "Latent", 0, 0.7, [], "Wobbly", 0]
    with pytest.raises(gr.Error, match="hires_scheduler.*Wobbly.*Karras"):
        list(ui.generation.txt2img(*SETTINGS, None, lambda *a, **k: None, *hires))  # type: ignore[arg-type]
