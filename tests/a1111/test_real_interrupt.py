"""A1111's interrupt through the real engine in a worker process: the txt2img call answers with
the image as it was when the interrupt came (the predicted x0 of the step it stopped after),
with the request's infotext, and the studio keeps it as an `interrupted` generation."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import sd_core
from sd_core.params import GenerationParams
from sd_core.pipeline import GenerationHooks
from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app
from tests.a1111.server_app import with_a1111
from tests.api.test_real_engine import data_with_model

BODY = {"prompt": "a red circle on a blue background", "steps": 150, "width": 64, "height": 64, "seed": 12,
        "sampler_name": "Euler a"}  # fmt: skip


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Any]]:
    data, model = data_with_model(tmp_path_factory, "a1111-interrupt")
    checkpoint = None if model is None else data / "models" / f"{model}.safetensors"
    with pytest.MonkeyPatch.context() as env:
        env.delenv("DALI_API_AUTH", raising=False)
        env.delenv("DALI_A1111_PROJECT", raising=False)
        settings = Settings(data_dir=data, poll_s=0.05, progress_interval_s=0.0)
        assert settings.worker_mode == "process"
        with TestClient(with_a1111(create_app(settings))) as client:
            if model is not None:
                client.post("/sdapi/v1/options", json={"sd_model_checkpoint": model})
            yield client, checkpoint


def test_interrupt_answers_with_the_partly_denoised_image(real: tuple[TestClient, Any]) -> None:
    client, checkpoint = real
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(client.post("/sdapi/v1/txt2img",
                                                                    json=BODY)))  # fmt: skip
    thread.start()
    deadline = time.monotonic() + 120
    while client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] < 3:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.01)
    assert client.post("/sdapi/v1/interrupt").json() == {}
    thread.join(120)
    response = out[0]
    assert response.status_code == 200, response.text
    (data,) = response.json()["images"]
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    stopped = json.loads(image.text["dali"])["interrupted_at"]
    assert 3 <= stopped < 150
    info = json.loads(response.json()["info"])
    assert "Steps: 150," in info["infotexts"][0] and "Seed: 12," in info["infotexts"][0]
    assert f"interrupted after step {stopped} of 150" in info["warnings"][0]

    # The image is the model's prediction at that step, as the engine makes it here.
    pipe = sd_core.load_pipeline(checkpoint)
    params = GenerationParams(BODY["prompt"], seed=12, steps=150, sampler="euler_a",
                              width=64, height=64)  # fmt: skip
    done: list[int] = []
    hooks = GenerationHooks(
        on_step=lambda step, _n, _x0: done.append(step), interrupt=lambda: done[-1] >= stopped
    )
    expected = pipe.generate(params, hooks=hooks).images[0]
    diff = np.abs(np.asarray(image.convert("RGB"), int) - np.asarray(expected, int))
    assert diff.max() <= 1  # the worker process may run other thread counts than this one

    # The studio shows it: an interrupted generation with that image in the API project.
    projects = {p["name"]: p for p in client.get("/api/v1/projects").json()}
    (generation,) = client.get(f"/api/v1/projects/{projects['API']['id']}/generations").json()[
        "items"
    ]
    assert generation["status"] == "interrupted"
    assert client.get(generation["images"][0]["url"]).content == base64.b64decode(data)
