"""The generation tabs' Clip skip, VAE and LoRA & embedding controls, over a studio whose
generator is the API tests' fake: a pick lands in the prompt, the controls reach the request,
and "send to" carries an infotext's `Clip skip` and `VAE` back into them.

Listing reads file names only, so the asset files here hold no tensors; the fake generator
loads nothing either. test_gradio_app.py runs the real server and engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import pytest

from dali_gradio import DaliUI
from dali_gradio.networks import lora_tag, with_tag
from stable_diffusion_api.config import Settings
from stable_diffusion_api.schemas import GenerationDefaults, ProjectCreate
from tests.api.fakes import FakeGenerator

VAE = "mse.vae.safetensors"


def install(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"names are all a listing reads")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Folders of their own, as DALI_LORAS_DIR etc. would set them (`fake` and `ui` from
    # conftest.py take these settings).
    return Settings(data_dir=tmp_path / "data", loras_dir=tmp_path / "loras",
                    embeddings_dir=tmp_path / "embeddings", vae_dir=tmp_path / "vae",
                    poll_s=0.05, heartbeat_s=0.2)  # fmt: skip


def test_with_tag_spaces_the_tag_from_the_words() -> None:
    assert with_tag("", "<lora:a:1>") == "<lora:a:1>"
    assert with_tag(None, "x") == "x"
    assert with_tag("a cat", "<lora:a:1>") == "a cat <lora:a:1>"
    assert with_tag("a cat, ", "ink") == "a cat, ink"
    assert with_tag("a cat (", "ink") == "a cat (ink"
    assert lora_tag("add_detail") == "<lora:add_detail:1>"


def test_the_lists_show_the_installed_files_and_where_to_put_more(
    ui: DaliUI, settings: Settings
) -> None:
    networks = ui.generation.networks
    folders = settings.asset_folders
    assert networks.lora_names() == [] and networks.embedding_names() == []
    assert networks.vae_choices() == [("Project default", ""), ("Model's own", "None")]
    note = networks.note()
    for kind, folder in (("LoRAs", folders.loras), ("embeddings", folders.embeddings),
                         ("VAE files", folders.vaes)):  # fmt: skip
        assert f"No {kind} yet" in note and f"`{folder}`" in note

    install(folders.loras, "add_detail.safetensors", "styles/ink.pt", "readme.md")
    install(folders.embeddings, "easynegative.safetensors")
    install(folders.vaes, VAE)
    loras, embeddings, vae, hint = networks.refresh()  # "↻": the folders read again
    assert loras["choices"] == ["add_detail", "ink"] and loras["value"] is None
    assert embeddings["choices"] == ["easynegative"]
    assert vae["choices"] == [("Project default", ""), ("Model's own", "None"), (VAE, VAE)]
    assert hint["visible"] is False and networks.note() == ""


def test_a_pick_is_appended_to_the_prompt_and_the_list_cleared(ui: DaliUI) -> None:
    networks = ui.generation.networks
    prompt, picked = networks.insert_lora("add_detail", "a red circle")
    assert prompt == "a red circle <lora:add_detail:1>" and picked["value"] is None
    prompt, picked = networks.insert_embedding("easynegative", prompt)
    assert prompt == "a red circle <lora:add_detail:1> easynegative" and picked["value"] is None
    unchanged, _ = networks.insert_lora(None, prompt)  # the list cleared: nothing to add
    assert unchanged == {"__type__": "update"}


def run(ui: DaliUI, clip_skip: float, vae: str) -> dict[str, Any]:
    """txt2img through the tab's handler; the finished generation's details."""
    updates = list(
        ui.generation.txt2img(
            "Networks", "", "cpu", "auto", "a red circle <lora:add_detail:1>", "", "", 2, 7.0,
            5, 0, 0, 1, clip_skip, vae, None, lambda *args, **kwargs: None,
        )
    )  # fmt: skip
    *_, details = updates[-1]
    return details


def test_clip_skip_and_vae_reach_the_request(
    ui: DaliUI, settings: Settings, fake: FakeGenerator
) -> None:
    install(settings.asset_folders.vaes, VAE)
    defaults = GenerationDefaults(vae=VAE, clip_skip=3)
    ui.studio.projects.create(ProjectCreate(name="Networks", defaults=defaults))
    details = run(ui, 2, VAE.upper())  # the file's own spelling is what the job gets
    assert details["clip_skip"] == 2 and details["vae"] == VAE
    params = fake.calls[-1].params
    assert (params.clip_skip, params.vae) == (2, VAE)
    assert params.prompt == "a red circle <lora:add_detail:1>"
    details = run(ui, 1, "None")  # "Model's own", over the project's VAE
    assert fake.calls[-1].params.vae is None and details["vae"] is None
    run(ui, 4, "")  # "Project default": the project's VAE; the slider's clip skip
    assert (fake.calls[-1].params.vae, fake.calls[-1].params.clip_skip) == (VAE, 4)

    calls = len(fake.calls)
    with pytest.raises(gr.Error) as caught:
        run(ui, 1, "nope.pt")
    assert "nope.pt" in caught.value.message and VAE in caught.value.message
    with pytest.raises(gr.Error, match="Clip skip"):
        run(ui, 13, "")
    assert len(fake.calls) == calls  # neither reached the queue


def test_send_to_carries_clip_skip_and_vae(ui: DaliUI, settings: Settings) -> None:
    install(settings.asset_folders.vaes, VAE)
    send = ui.png_info.send_parameters
    base = "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64"
    # Sent as prompt, negative prompt, sampler, steps, guidance, seed, width, height, clip
    # skip, VAE: a tab's `sendable()`.
    assert send(f"{base}, VAE: MSE.vae.safetensors, Clip skip: 2")[-2:] == [2, VAE]
    assert send(base)[-2:] == [1, "None"]  # absent: A1111's 1 and the checkpoint's own VAE
    # A file not installed here, a clip skip out of range: the current choices stay.
    kept = send(f"{base}, VAE: other.pt, Clip skip: 40")[-2:]
    assert kept == [{"__type__": "update"}, {"__type__": "update"}]


def test_each_tab_has_the_controls_and_the_api_takes_them(ui: DaliUI) -> None:
    demo = ui.build()
    api = demo.get_api_info()
    assert api is not None
    tabs = ("txt2img", "img2img", "inpaint")
    # After them come the tab's own controls: the hires fix (test_hires_controls.py) and the
    # mask settings (test_inpaint_controls.py), then the styles (test_styles_controls.py),
    # then txt2img's later hires controls.
    after = {"txt2img": 5 + 1 + 3, "img2img": 1, "inpaint": 5 + 1}
    for tab in tabs:
        parameters = api["named_endpoints"][f"/{tab}"]["parameters"]
        parameters = parameters[: len(parameters) - after[tab]]
        clip_skip, vae = parameters[-2:]
        assert (clip_skip["label"], vae["label"]) == ("Clip skip", "VAE")
        # Callers that leave them out get clip skip 1 and the project's VAE.
        assert (clip_skip["parameter_default"], vae["parameter_default"]) == (1, "")
    ids = {block.elem_id for block in demo.blocks.values()}
    parts = ("networks", "loras", "embeddings", "networks-refresh")
    assert {f"{tab}-{part}" for tab in tabs for part in parts} <= ids
