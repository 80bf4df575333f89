"""Each generation tab's styles picker: the styles of the studio's styles.csv, applied by name
(as A1111 does, in the order picked) by the service before the job is queued; the last input of
every tab, so callers that leave it out get no style."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pytest
from PIL import Image

from dali_gradio import DaliUI
from dali_gradio.styles import picked_styles
from stable_diffusion_api.config import Settings
from tests.api.fakes import FakeGenerator

STYLES = 'name,prompt,negative_prompt\nsharp,"{prompt}, sharp focus",blurry\noil,oil painting,\n'
COMMON = ["Styles", "", "cpu", "auto"]
# prompt … vae, as every tab has them after its own image inputs.
SETTINGS = ["a red circle", "", "", 2, 7.0, 5, 64, 64, 1, 1, ""]
HIRES_OFF = [False, 2.0, "Latent", 0, 0.7]
MASK_DEFAULTS = [0, False, "original", "Whole picture", 0]


@pytest.fixture
def styled(settings: Settings) -> Settings:
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    (settings.resolved_data_dir / "styles.csv").write_text(STYLES, encoding="utf-8")
    return settings


def last(updates: Any) -> dict[str, Any]:
    *_, details = list(updates)[-1]
    return details  # type: ignore[no-any-return]


def no_progress(*args: Any, **kwargs: Any) -> None:
    return None


def run(ui: DaliUI, tab: str, *options: Any) -> dict[str, Any]:
    """One generation from `tab` with the tab's own controls and the styles in `options`."""
    progress: Any = no_progress
    g = ui.generation
    if tab == "txt2img":
        return last(g.txt2img(*COMMON, *SETTINGS, None, progress, *options))  # type: ignore[arg-type]
    image = Image.new("RGB", (64, 64), (20, 160, 40))
    if tab == "img2img":
        path = str(ui.studio.settings.resolved_data_dir / "init.png")
        image.save(path)
        return last(g.img2img(*COMMON, path, 0.5, *SETTINGS, None, progress, *options))  # type: ignore[arg-type]
    layer = Image.new("RGBA", (64, 64), (255, 255, 255, 255))
    editor = {"background": image, "layers": [layer]}
    return last(g.inpaint(*COMMON, editor, None, 0.75, *SETTINGS, None, progress, *options))  # type: ignore[arg-type]


def test_every_tab_applies_the_styles_picked(
    ui: DaliUI, fake: FakeGenerator, styled: Settings
) -> None:
    expanded = ("a red circle, sharp focus, oil painting", "blurry")
    for tab, before in (("txt2img", HIRES_OFF), ("img2img", []), ("inpaint", MASK_DEFAULTS)):
        details = run(ui, tab, *before, ["sharp", "oil"])
        assert (details["prompt"], details["negative_prompt"]) == expanded, tab
        assert (fake.calls[-1].params.prompt, fake.calls[-1].params.negative_prompt) == expanded
        assert (
            ui.studio.generations.view(details["id"])
            .images[0]
            .parameters.startswith(f"{expanded[0]}\nNegative prompt: blurry\n")
        )
    # The order picked is the order applied.
    assert (
        run(ui, "img2img", ["oil", "sharp"])["prompt"] == "a red circle, oil painting, sharp focus"
    )
    # None picked, or the picker left out: the prompt as typed.
    assert run(ui, "txt2img", *HIRES_OFF, [])["prompt"] == "a red circle"
    assert run(ui, "txt2img")["prompt"] == "a red circle"
    assert run(ui, "inpaint", *MASK_DEFAULTS)["prompt"] == "a red circle"


def test_an_unknown_style_is_refused_naming_it_and_the_installed_ones(
    ui: DaliUI, styled: Settings
) -> None:
    with pytest.raises(gr.Error) as caught:
        run(ui, "img2img", ["oil", "gone"])
    assert "styles.1: 'gone' is not allowed; installed styles: oil, sharp" in str(caught.value)
    assert ui.studio.generations.page(1, 0, 10)[1] == 0  # nothing was queued


def test_the_picker_lists_the_styles_and_follows_each_tabs_first_controls(
    ui: DaliUI, styled: Settings
) -> None:
    demo = ui.build()
    api = demo.get_api_info()
    assert api is not None
    # Last, but for txt2img's hires schedule type, CFG and sampler, which came after the styles
    # (test_hires_controls.py)
    for tab, position in (("txt2img", -4), ("img2img", -1), ("inpaint", -1)):
        styles = api["named_endpoints"][f"/{tab}"]["parameters"][position]
        assert (styles["label"], styles["parameter_default"]) == ("Styles", []), tab
    pickers = [b for b in demo.blocks.values() if (b.elem_id or "").endswith("-styles")]
    assert sorted(p.elem_id for p in pickers) == ["img2img-styles", "inpaint-styles", "txt2img-styles"]  # fmt: skip
    assert [c[0] for c in pickers[0].choices] == ["sharp", "oil"]  # type: ignore[attr-defined]
    # A style added to the file shows when the page loads again.
    path = styled.resolved_data_dir / "styles.csv"
    path.write_text(STYLES + "pop,pop art,\n", encoding="utf-8")
    assert ui.generation.styles.refresh()["choices"] == ["sharp", "oil", "pop"]


def test_picked_styles_takes_what_the_picker_or_an_api_caller_sends() -> None:
    assert picked_styles() == [] and picked_styles(None) == [] and picked_styles([]) == []
    assert picked_styles("oil") == ["oil"]  # one name as a string
    assert picked_styles(["oil", " ", "sharp"]) == ["oil", "sharp"]
