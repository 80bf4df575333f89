"""LoRAs, embeddings and VAE files through the /sdapi/v1 routes, in process over the fake
engine: A1111's list shapes, the `sd_vae` option (options, override_settings, infotext), the
VAE and the engine's warnings in `info`, and `png-info` reading the asset keys back."""

from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

from stable_diffusion_api.a1111.assets import safetensors_metadata, text_encoder_width
from stable_diffusion_api.config import Settings
from tests.api.fakes import FakeGenerator

TXT2IMG = "/sdapi/v1/txt2img"
SMALL = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64}
VAE = "x.vae.safetensors"


def write_assets(settings: Settings) -> dict[str, Path]:
    """A few files in each asset folder; only the embeddings need to be real."""
    folders = settings.asset_folders
    paths = {
        "style": folders.loras / "sub" / "style.safetensors",
        "old": folders.loras / "old.pt",
        "good": folders.embeddings / "good768.safetensors",
        "narrow": folders.embeddings / "narrow.safetensors",
        "broken": folders.embeddings / "broken.pt",
        "x": folders.vaes / VAE,
        "y": folders.vaes / "y.vae.pt",
    }
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"ss_network_dim": "4", "ss_tag_frequency": '{"cats": {"cat": 3}}'}
    save_file({"x": torch.zeros(2)}, paths["style"], metadata=metadata)
    paths["old"].write_bytes(b"a LoRA is only listed, never loaded, by /loras")
    save_file({"emb_params": torch.randn(2, 768)}, paths["good"])
    save_file({"emb_params": torch.randn(3, 32)}, paths["narrow"])
    paths["broken"].write_bytes(b"not a pickle")
    save_file({"decoder.conv_out.bias": torch.zeros(3)}, paths["x"])
    paths["y"].write_bytes(b"listed by name only")
    return paths


@pytest.fixture
def assets(settings: Settings) -> dict[str, Path]:
    return write_assets(settings)


def info_of(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return json.loads(response.json()["info"])  # type: ignore[no-any-return]


def test_lists_in_a1111_shapes(client: TestClient, assets: dict[str, Path]) -> None:
    loras = client.get("/sdapi/v1/loras").json()
    assert loras == [
        {"name": "old", "alias": "old", "path": str(assets["old"]), "metadata": {}},
        {
            "name": "style",
            "alias": "style",
            "path": str(assets["style"]),  # absolute, as A1111 answers
            "metadata": {"ss_network_dim": "4", "ss_tag_frequency": {"cats": {"cat": 3}}},
        },
    ]
    assert Path(loras[0]["path"]).is_absolute()

    # The fake checkpoint has no readable header: the current model's width is SD v1.x's.
    embeddings = client.get("/sdapi/v1/embeddings").json()
    empty = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None}
    assert embeddings == {
        "loaded": {"good768": {**empty, "shape": 768, "vectors": 2}},
        "skipped": {
            "broken": {**empty, "shape": None, "vectors": None},
            "narrow": {**empty, "shape": 32, "vectors": 3},
        },
    }

    assert client.get("/sdapi/v1/sd-vae").json() == [
        {"model_name": VAE, "filename": str(assets["x"])},
        {"model_name": "y.vae.pt", "filename": str(assets["y"])},
    ]
    for name in ("loras", "embeddings", "vae"):
        refreshed = client.post(f"/sdapi/v1/refresh-{name}")
        assert refreshed.status_code == 200 and refreshed.json() is None

    # A file dropped in shows at once; an embedding rewritten is read again.
    save_file({"emb_params": torch.randn(1, 768)}, assets["narrow"])
    (assets["old"].parent / "new.safetensors").write_bytes(b"")
    assert client.get("/sdapi/v1/embeddings").json()["loaded"]["narrow"]["vectors"] == 1
    assert [lora["name"] for lora in client.get("/sdapi/v1/loras").json()] == [
        "new", "old", "style",
    ]  # fmt: skip


def test_empty_folders(client: TestClient) -> None:
    assert client.get("/sdapi/v1/loras").json() == []
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    assert client.get("/sdapi/v1/sd-vae").json() == []


def test_sd_vae_option_is_the_project_default(
    client: TestClient, fake: FakeGenerator, assets: dict[str, Path]
) -> None:
    assert client.get("/sdapi/v1/options").json()["sd_vae"] == "Automatic"
    info = info_of(client.post(TXT2IMG, json=SMALL))
    assert fake.calls[-1].params.vae is None
    assert info["sd_vae_name"] is None and "VAE:" not in info["infotexts"][0]

    assert client.post("/sdapi/v1/options", json={"sd_vae": VAE.upper()}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_vae"] == VAE  # the file's own spelling
    info = info_of(client.post(TXT2IMG, json=SMALL))
    assert fake.calls[-1].params.vae == VAE
    assert info["sd_vae_name"] == VAE and f"VAE: {VAE}" in info["infotexts"][0]

    # Per request: "Automatic" keeps the default, "None" is the checkpoint's own.
    automatic = {**SMALL, "override_settings": {"sd_vae": "Automatic"}}
    assert info_of(client.post(TXT2IMG, json=automatic))["sd_vae_name"] == VAE
    own = {**SMALL, "override_settings": {"sd_vae": "None"}}
    assert info_of(client.post(TXT2IMG, json=own))["sd_vae_name"] is None
    assert fake.calls[-1].params.vae is None
    other = {**SMALL, "override_settings": {"sd_vae": "y.vae.pt"}}
    assert info_of(client.post(TXT2IMG, json=other))["sd_vae_name"] == "y.vae.pt"
    assert client.get("/sdapi/v1/options").json()["sd_vae"] == VAE  # overrides don't stick

    for reset in ("None", "Automatic"):
        client.post("/sdapi/v1/options", json={"sd_vae": VAE})
        assert client.post("/sdapi/v1/options", json={"sd_vae": reset}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["sd_vae"] == "Automatic"


def test_unknown_sd_vae_is_refused_naming_the_option(
    client: TestClient, fake: FakeGenerator, assets: dict[str, Path]
) -> None:
    bad = client.post(
        "/sdapi/v1/options", json={"sd_vae": "nope.pt", "CLIP_stop_at_last_layers": 3}
    )
    assert bad.status_code == 422
    assert "sd_vae" in bad.text and VAE in bad.text and "y.vae.pt" in bad.text
    # Nothing of a refused request is applied.
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1
    assert client.post("/sdapi/v1/options", json={"sd_vae": 5}).status_code == 422

    bad = client.post(TXT2IMG, json={**SMALL, "override_settings": {"sd_vae": "nope.pt"}})
    assert bad.status_code == 422
    assert "override_settings" in bad.text and "sd_vae" in bad.text and VAE in bad.text
    assert fake.calls == []


def test_vae_read_back_from_an_infotext(
    client: TestClient, fake: FakeGenerator, assets: dict[str, Path]
) -> None:
    infotext = "a blue square\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 3, Size: 64x64"
    info = info_of(client.post(TXT2IMG, json={"infotext": f"{infotext}, VAE: {VAE}"}))
    assert fake.calls[-1].params.vae == VAE and info["sd_vae_name"] == VAE
    assert info["warnings"] == []
    # A VAE this server lacks: the image is made with the default VAE, and the client told.
    info = info_of(client.post(TXT2IMG, json={"infotext": f"{infotext}, VAE: elsewhere.pt"}))
    assert fake.calls[-1].params.vae is None
    assert len(info["warnings"]) == 1 and "'elsewhere.pt' is not installed" in info["warnings"][0]
    # A VAE the request names wins over the infotext's; a bad one is still refused.
    body = {"infotext": f"{infotext}, VAE: elsewhere.pt", "override_settings": {"sd_vae": "None"}}
    assert info_of(client.post(TXT2IMG, json=body))["warnings"] == []
    body["override_settings"] = {"sd_vae": "nope.pt"}
    assert client.post(TXT2IMG, json=body).status_code == 422


def test_engine_warnings_reach_the_info_and_the_log(
    client: TestClient, fake: FakeGenerator, caplog: pytest.LogCaptureFixture
) -> None:
    fake.warnings = ("LoRA 'nosuch' is not installed; the prompt's tag was left out",)
    with caplog.at_level(logging.WARNING, logger="stable_diffusion_api.a1111"):
        info = info_of(client.post(TXT2IMG, json={**SMALL, "batch_size": 10}))  # two jobs
    assert len(info["infotexts"]) == 10
    assert info["warnings"] == list(fake.warnings)  # once, though both jobs warned
    assert "nosuch" in caplog.text
    fake.warnings = ()
    assert info_of(client.post(TXT2IMG, json=SMALL))["warnings"] == []


def test_png_info_reads_the_asset_keys(client: TestClient) -> None:
    infotext = (
        "a cat <lora:style:0.8> good768\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 3, "
        f'Size: 64x64, VAE: {VAE}, VAE hash: 0123456789, Lora hashes: "style: 0123456789ab", '
        'TI hashes: "good768: ba9876543210", Clip skip: 2'
    )
    chunk = PngImagePlugin.PngInfo()
    chunk.add_text("parameters", infotext)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=chunk)
    body = {"image": base64.b64encode(buffer.getvalue()).decode()}
    read = client.post("/sdapi/v1/png-info", json=body).json()
    assert read["info"] == infotext
    parameters = read["parameters"]
    assert parameters["Prompt"] == "a cat <lora:style:0.8> good768"
    assert (parameters["VAE"], parameters["VAE hash"]) == (VAE, "0123456789")
    assert parameters["Lora hashes"] == "style: 0123456789ab"  # unquoted, as A1111 reads it
    assert parameters["TI hashes"] == "good768: ba9876543210"
    assert parameters["Clip skip"] == "2"


def test_header_readers(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file(
        {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(5, 24)},
        path,
        metadata={"list": "[1, 2]", "bad": "{oops", "plain": "x"},
    )  # fmt: skip
    assert text_encoder_width(path) == 24
    assert safetensors_metadata(path) == {"list": [1, 2], "bad": "{oops", "plain": "x"}
    pickled = tmp_path / "m.ckpt"  # never unpickled for this: SD v1.x's width is assumed
    pickled.write_bytes(b"\xff" * 16)
    for other in (pickled, tmp_path / "missing.safetensors"):
        assert text_encoder_width(other) == 768 and safetensors_metadata(other) == {}
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    assert safetensors_metadata(garbage) == {} and text_encoder_width(garbage) == 768
