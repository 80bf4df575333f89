"""Upscalers and extras through `webuiapi` (the A1111 client from PyPI) against a real uvicorn.

No checkpoint is needed: extras never touch the diffusion model. The server's upscalers folder
holds a small random-weight ESRGAN (×4) when spandrel is installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from tests.a1111.live_server import Server, running_server
from tests.sd_core.test_upscalers import HAS_SPANDREL, esrgan_state_dict, needs_spandrel


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("a1111-extras")
    (root / "models").mkdir()
    upscalers = root / "data" / "upscalers"
    upscalers.mkdir(parents=True)
    if HAS_SPANDREL:
        save_file(esrgan_state_dict(), upscalers / "4x-Tiny.safetensors")
    with running_server(root) as running:
        yield running


@pytest.fixture(scope="module")
def api(server: Server) -> Any:
    return server.api()


def picture() -> Image.Image:
    array = np.random.default_rng(2).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    return Image.fromarray(array, "RGB")


def test_lists(api: Any) -> None:
    names = [u["name"] for u in api.get_upscalers()]
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    assert ("4x-Tiny" in names) == HAS_SPANDREL
    assert [m["name"] for m in api.get_latent_upscale_modes()][:2] == [
        "Latent", "Latent (antialiased)",
    ]  # fmt: skip
    assert api.get_face_restorers() == []
    assert api.get_realesrgan_models() == []


def test_extra_single_image(api: Any) -> None:
    result = api.extra_single_image(picture(), upscaler_1="Lanczos", upscaling_resize=3)
    assert result.image.size == (120, 72)
    assert "Lanczos" in result.info


def test_extra_batch_images(api: Any) -> None:
    result = api.extra_batch_images(
        [picture(), picture().resize((16, 16))], upscaler_1="Nearest", upscaling_resize=2
    )
    assert [image.size for image in result.images] == [(80, 48), (32, 32)]


@needs_spandrel
def test_model_upscaler(api: Any) -> None:
    result = api.extra_single_image(picture(), upscaler_1="4x-Tiny", upscaling_resize=4)
    assert result.image.size == (160, 96)


def test_bad_upscaler_is_422_naming_it(api: Any) -> None:
    with pytest.raises(RuntimeError) as refused:
        api.extra_single_image(picture(), upscaler_1="R-ESRGAN 4x+")
    status, text = refused.value.args
    assert status == 422 and "upscaler_1" in text and "R-ESRGAN 4x+" in text
