"""Happy paths through the real sd_core engine (no fake): the built-in model when it has been
trained, else a random-weight tiny checkpoint in the SD v1 layout written by the fixture."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app
from tests.api.helpers import make_project, submit, wait_for

sd_core = pytest.importorskip("sd_core")


@pytest.fixture(scope="module")
def engine_client(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TestClient, str | None]]:
    data = tmp_path_factory.mktemp("engine") / "data"
    model: str | None = None  # None → the built-in model
    if not Path(sd_core.BUILTIN_MODEL_PATH).is_file():
        from sd_core.checkpoint import save_checkpoint
        from sd_core.config import TINY_TEST
        from tests.reference import random_checkpoint

        save_checkpoint(data / "models" / "tiny-random.safetensors",
                        random_checkpoint(TINY_TEST), TINY_TEST)  # fmt: skip
        model = "tiny-random"
    settings = Settings(data_dir=data, poll_s=0.05, preview_every=1)
    with TestClient(create_app(settings)) as client:
        yield client, model


def project_for(client: TestClient, model: str | None, name: str) -> dict[str, Any]:
    return make_project(client, name, **({"default_model": model} if model else {}))


def test_real_hardware_samplers_and_models(engine_client: tuple[TestClient, str | None]) -> None:
    client, model = engine_client
    devices = client.get("/api/v1/hardware").json()
    assert devices[0]["id"] == "cpu" and devices[0]["cores"] and "float32" in devices[0]["dtypes"]
    names = {s["name"]: s["display_name"] for s in client.get("/api/v1/samplers").json()}
    assert names["euler_a"] == "Euler a" and names["ddim"] == "DDIM" and len(names) >= 10
    models = {m["name"]: m for m in client.get("/api/v1/models").json()}
    chosen = models[model or "dali-tiny"]
    assert chosen["available"] and chosen["variant"] == "sd-v1" and len(chosen["short_hash"]) == 10


def test_generate_with_the_real_engine(engine_client: tuple[TestClient, str | None]) -> None:
    client, model = engine_client
    project = project_for(client, model, "Real engine")
    job = submit(client, project["id"], prompt="a red circle on a blue background", steps=3,
                 seed=11, batch=2, sampler="Euler a")  # fmt: skip
    done = wait_for(client, job["id"], timeout=120)
    assert [i["seed"] for i in done["images"]] == [11, 12]
    png = client.get(done["images"][1]["url"])
    image = Image.open(io.BytesIO(png.content))
    assert image.size == (done["images"][1]["width"], done["images"][1]["height"])
    parameters = image.info["parameters"]
    assert parameters.startswith("a red circle on a blue background\n")
    assert "Steps: 3, Sampler: Euler a, CFG scale: 7" in parameters and "Seed: 12" in parameters
    dali = json.loads(image.info["dali"])
    assert dali["project"] == "Real engine" and dali["device"] == "cpu" and dali["seed"] == 12
    assert done["model_hash"] and f"Model hash: {done['model_hash']}" in parameters


def test_progress_preview_and_cancel_with_the_real_engine(
    engine_client: tuple[TestClient, str | None],
) -> None:
    client, model = engine_client
    project = project_for(client, model, "Cancel me")
    job = submit(client, project["id"], steps=150, seed=3)
    deadline = time.monotonic() + 120
    while True:
        view = client.get(f"/api/v1/generations/{job['id']}").json()
        if view["progress"] and view["progress"]["step"] >= 2 and view["progress"]["preview"]:
            break
        assert time.monotonic() < deadline and view["status"] in ("queued", "running"), view
        time.sleep(0.05)
    assert view["progress"]["preview"].startswith("data:image/png;base64,")
    assert client.post(f"/api/v1/generations/{job['id']}/cancel").status_code == 200
    done = wait_for(client, job["id"], ("canceled", "succeeded", "failed"), timeout=60)
    assert done["status"] == "canceled" and done["images"] == []


def test_workers_run_in_their_own_process_and_survive_its_death(
    engine_client: tuple[TestClient, str | None],
) -> None:
    import os
    import signal

    client, model = engine_client
    studio = client.app.state.studio  # type: ignore[attr-defined]
    worker = studio.workers.workers["cpu"]
    assert worker.pid is not None and worker.pid != os.getpid()  # sampling is not in this process
    project = project_for(client, model, "Killed worker")
    job = submit(client, project["id"], steps=150)
    wait_for(client, job["id"], ("running",), timeout=120)
    os.kill(worker.pid, signal.SIGKILL)
    died = wait_for(client, job["id"], ("failed", "succeeded", "canceled"), timeout=60)
    assert died["status"] == "failed" and died["error"].startswith("interrupted")
    # A new worker process takes the next job.
    after = wait_for(client, submit(client, project["id"], steps=2)["id"], timeout=120)
    assert after["status"] == "succeeded"


def test_benchmarks_run_in_the_worker_process(
    engine_client: tuple[TestClient, str | None],
) -> None:
    client, model = engine_client
    body = {"device": "cpu", "steps": 3, **({"model": model} if model else {})}
    assert client.post("/api/v1/hardware/benchmark", json=body).status_code == 202
    deadline = time.monotonic() + 120
    while (status := client.get("/api/v1/hardware/benchmarks").json()[0]["status"]) != "done":
        assert status in ("queued", "running") and time.monotonic() < deadline, status
        time.sleep(0.1)
    speeds = [s for s in client.get("/api/v1/hardware").json()[0]["speeds"]
              if s["source"] == "benchmark"]  # fmt: skip
    assert speeds and speeds[0]["steps_per_s"] > 0
