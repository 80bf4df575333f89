"""A1111 requests through the real sd_core engine: images made again from their own infotext
(variation seeds included), and seamless tiling."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app
from tests.a1111.server_app import with_a1111
from tests.api.test_real_engine import data_with_model

BASE = {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "sampler_name": "Euler a"}


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data, model = data_with_model(tmp_path_factory, "a1111-real")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("DALI_API_AUTH", raising=False)
        env.delenv("DALI_A1111_PROJECT", raising=False)
        with TestClient(with_a1111(create_app(Settings(data_dir=data, poll_s=0.05)))) as client:
            if model is not None:
                client.post("/sdapi/v1/options", json={"sd_model_checkpoint": model})
            yield client


def txt2img(client: TestClient, **body: Any) -> tuple[list[np.ndarray], dict[str, Any]]:
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    images = [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
        for data in answer["images"]
    ]
    return images, json.loads(answer["info"])


def test_a_variation_image_is_made_again_from_its_infotext(real: TestClient) -> None:
    images, info = txt2img(real, **BASE, seed=5, subseed=77, subseed_strength=0.4)
    (infotext,) = info["infotexts"]
    assert "Variation seed: 77, Variation seed strength: 0.4" in infotext

    again, _ = txt2img(real, infotext=infotext)
    assert np.array_equal(again[0], images[0])
    # The variation matters: the same infotext without it gives another image.
    plain = infotext.replace(", Variation seed: 77, Variation seed strength: 0.4", "")
    other, _ = txt2img(real, infotext=plain)
    assert np.abs(other[0].astype(int) - images[0]).max() > 8


def test_each_image_of_a_batch_names_its_own_variation_seed(real: TestClient) -> None:
    images, info = txt2img(real, **BASE, seed=5, subseed=77, subseed_strength=0.4, batch_size=2)
    first, second = info["infotexts"]
    assert "Seed: 5," in first and "Variation seed: 77, Variation seed strength: 0.4" in first
    assert "Seed: 6," in second and "Variation seed: 78, Variation seed strength: 0.4" in second
    assert info["all_subseeds"] == [77, 78] and info["subseed_strength"] == 0.4
    again, _ = txt2img(real, infotext=second)
    # Alone rather than in a batch of two, the CPU's float sums may round one level apart
    # (as they do without a variation seed).
    assert np.abs(again[0].astype(int) - images[1]).max() <= 1


def test_tiling_is_honoured_written_and_read_back(real: TestClient) -> None:
    images, info = txt2img(real, **BASE, seed=9, tiling=True)
    (infotext,) = info["infotexts"]
    assert "Tiling: True" in infotext
    plain, _ = txt2img(real, **BASE, seed=9)
    assert not np.array_equal(plain[0], images[0])
    again, _ = txt2img(real, infotext=infotext)
    assert np.array_equal(again[0], images[0])
