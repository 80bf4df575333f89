"""A1111's extras and upscaler lists through the routes (TestClient, fake engine)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import save_file

from stable_diffusion_api.a1111.extras import LATENT_UPSCALE_MODES, scale_in_name
from stable_diffusion_api.config import Settings
from tests.sd_core.test_upscalers import esrgan_state_dict, needs_spandrel


def b64_png(image: Image.Image, parameters: str | None = None) -> str:
    buffer = io.BytesIO()
    info = PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decoded(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def picture(width: int = 32, height: int = 24) -> Image.Image:
    array = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(array, "RGB")


@pytest.fixture
def upscalers(settings: Settings) -> Path:
    folder = settings.resolved_data_dir / "upscalers"
    folder.mkdir(parents=True)
    return folder


def test_lists(client: TestClient, upscalers: Path) -> None:
    save_file(esrgan_state_dict(), upscalers / "RealESRGAN_x2plus.safetensors")
    (upscalers / "sub").mkdir()
    save_file(esrgan_state_dict(), upscalers / "sub" / "4x-Tiny.safetensors")
    listed = client.get("/sdapi/v1/upscalers").json()
    assert [u["name"] for u in listed] == [
        "None", "Lanczos", "Nearest", "4x-Tiny", "RealESRGAN_x2plus",
    ]  # fmt: skip
    assert listed[1] == {
        "name": "Lanczos", "model_name": None, "model_path": None, "model_url": None, "scale": 4,
    }  # fmt: skip
    assert listed[3]["model_path"] == "sub/4x-Tiny.safetensors" and listed[3]["scale"] == 4
    assert client.get("/sdapi/v1/realesrgan-models").json() == [
        {"name": "RealESRGAN_x2plus", "path": "RealESRGAN_x2plus.safetensors", "scale": 2}
    ]
    modes = client.get("/sdapi/v1/latent-upscale-modes").json()
    assert modes == [{"name": mode} for mode in LATENT_UPSCALE_MODES]
    assert modes[0] == {"name": "Latent"} and len(modes) == 6
    assert client.get("/sdapi/v1/face-restorers").json() == []


def test_scale_in_name() -> None:
    assert [scale_in_name(n) for n in ("4x-UltraSharp", "RealESRGAN_x2plus", "ESRGAN_2x")] == [
        4, 2, 2,
    ]  # fmt: skip
    assert scale_in_name("RealESRGAN_x4plus_anime_6B") == 4
    assert scale_in_name("SwinIR") == 4


def test_single_image_lanczos_by_scale_and_to_size(client: TestClient) -> None:
    image = picture()
    body = {"image": b64_png(image, "a cat\nSteps: 2"), "upscaler_1": "Lanczos"}
    answer = client.post("/sdapi/v1/extra-single-image", json={**body, "upscaling_resize": 2.5})
    assert answer.status_code == 200, answer.text
    out = decoded(answer.json()["image"])
    assert out.size == (80, 60)
    assert out.tobytes() == image.resize((80, 60), Image.Resampling.LANCZOS).tobytes()
    assert out.info["parameters"] == "a cat\nSteps: 2"
    assert "Postprocess upscaler: Lanczos" in out.info["postprocessing"]
    assert "Postprocess upscale by: 2.5" in answer.json()["html_info"]
    to_size = {**body, "resize_mode": 1, "upscaling_resize_w": 100, "upscaling_resize_h": 40}
    cropped = client.post("/sdapi/v1/extra-single-image", json=to_size).json()
    assert decoded(cropped["image"]).size == (100, 40)
    uncropped = client.post(
        "/sdapi/v1/extra-single-image", json={**to_size, "upscaling_crop": False}
    ).json()
    assert decoded(uncropped["image"]).size == (100, 75)  # by the larger ratio, 100/32


def test_second_upscaler_blends(client: TestClient) -> None:
    image = picture()
    body = {
        "image": b64_png(image), "upscaler_1": "Lanczos", "upscaler_2": "Nearest",
        "extras_upscaler_2_visibility": 0.5, "upscaling_resize": 2,
    }  # fmt: skip
    answer = client.post("/sdapi/v1/extra-single-image", json=body)
    assert answer.status_code == 200, answer.text
    expected = Image.blend(
        image.resize((64, 48), Image.Resampling.LANCZOS),
        image.resize((64, 48), Image.Resampling.NEAREST),
        0.5,
    )
    assert decoded(answer.json()["image"]).tobytes() == expected.tobytes()


def test_batch(client: TestClient) -> None:
    images = [{"data": b64_png(picture(16 + 8 * i, 16)), "name": f"i{i}"} for i in range(3)]
    answer = client.post(
        "/sdapi/v1/extra-batch-images",
        json={"imageList": images, "upscaler_1": "nearest", "upscaling_resize": 3},
    )
    assert answer.status_code == 200, answer.text
    sizes = [decoded(data).size for data in answer.json()["images"]]
    assert sizes == [(48, 48), (72, 48), (96, 48)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"upscaler_1": "R-ESRGAN 4x+"}, "upscaler_1"),
        ({"upscaler_1": "Lanczos", "upscaler_2": "../../etc/passwd"}, "upscaler_2"),
        ({"gfpgan_visibility": 0.5}, "gfpgan_visibility"),
        ({"codeformer_visibility": 1}, "codeformer_visibility"),
        ({"upscaler_1": "Lanczos", "image": "not base64!"}, "image"),
        ({"upscaler_1": "Lanczos", "upscaling_resize": 20}, "upscaling_resize"),
    ],
)
def test_refusals_name_the_field(client: TestClient, body: dict[str, object], field: str) -> None:
    answer = client.post("/sdapi/v1/extra-single-image", json={"image": b64_png(picture()), **body})
    assert answer.status_code == 422, answer.text
    assert field in str(answer.json()["detail"])


@needs_spandrel
def test_model_upscale_and_bad_file(client: TestClient, upscalers: Path) -> None:
    save_file(esrgan_state_dict(), upscalers / "4x-Tiny.safetensors")
    body = {"image": b64_png(picture()), "upscaler_1": "4x-Tiny", "upscaling_resize": 4}
    answer = client.post("/sdapi/v1/extra-single-image", json=body)
    assert answer.status_code == 200, answer.text
    assert decoded(answer.json()["image"]).size == (128, 96)
    (upscalers / "broken.pth").write_bytes(b"not a torch file")
    refused = client.post("/sdapi/v1/extra-single-image", json={**body, "upscaler_1": "broken"})
    assert refused.status_code == 422 and "upscaler_1" in refused.text
