"""Happy paths through the real sd_core engine (no fake): the built-in model when it has been
trained, else a random-weight tiny checkpoint in the SD v1 layout written by the fixture."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app
from tests.api.helpers import make_project, submit, wait_for

sd_core = pytest.importorskip("sd_core")


def data_with_model(tmp_path_factory: pytest.TempPathFactory, name: str) -> tuple[Path, str | None]:
    """A fresh data directory and the model to ask for: None (the built-in model) when it has
    been trained, else a random-weight tiny checkpoint written into the directory."""
    data = tmp_path_factory.mktemp(name) / "data"
    if Path(sd_core.BUILTIN_MODEL_PATH).is_file():
        return data, None
    from sd_core.checkpoint import save_checkpoint
    from sd_core.config import TINY_TEST
    from tests.reference import random_checkpoint

    save_checkpoint(data / "models" / "tiny-random.safetensors",
                    random_checkpoint(TINY_TEST), TINY_TEST)  # fmt: skip
    return data, "tiny-random"


@pytest.fixture(scope="module")
def engine_client(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TestClient, str | None]]:
    data, model = data_with_model(tmp_path_factory, "engine")
    settings = Settings(data_dir=data, poll_s=0.05, preview_every=1)
    with TestClient(create_app(settings)) as client:
        yield client, model


def project_for(client: TestClient, model: str | None, name: str) -> dict[str, Any]:
    return make_project(client, name, **({"default_model": model} if model else {}))


def test_real_hardware_samplers_and_models(engine_client: tuple[TestClient, str | None]) -> None:
    client, model = engine_client
    devices = client.get("/api/v1/hardware").json()
    cpu = devices[0]  # this machine's CPU, named as a node's device: "<node>/cpu"
    assert cpu["device"] == "cpu" and cpu["id"] == f"{cpu['node']}/cpu" and cpu["cores"]
    assert "float32" in cpu["dtypes"]
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
    # The worker process kept the run's filmstrip: 3 steps, fewer than the 8 frames, so all.
    strip = done["filmstrip"]
    assert [(f["step"], f["total"]) for f in strip["frames"]] == [(1, 3), (2, 3), (3, 3)]
    assert strip["frames"][-1]["sigma"] == 0.0  # Euler a ends without noise
    with Image.open(io.BytesIO(client.get(strip["url"]).content)) as film:
        assert film.size == (strip["width"], strip["height"]) == (3 * image.width, 2 * image.height)


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
    # It runs like any program (DALI_WORKER_PRIORITY=normal, the default): niceness and policy
    # as the server's (test_worker_priority.py checks the other settings).
    assert os.getpriority(os.PRIO_PROCESS, worker.pid) == os.getpriority(os.PRIO_PROCESS, 0)
    assert os.sched_getscheduler(worker.pid) == os.SCHED_OTHER
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


# --------------------------------------------------------------------------- filmstrips


def test_the_engine_records_evenly_spaced_frames_and_decodes_them(
    engine_client: tuple[TestClient, str | None],
) -> None:
    import numpy as np

    from sd_core.explorer import evenly_spaced_steps
    from sd_core.params import GenerationParams
    from sd_core.samplers import get_sampler
    from stable_diffusion_api.services.engine import SdCoreGenerator
    from stable_diffusion_api.services.generator import Filmstrip, JobSpec

    client, model = engine_client
    entry = client.app.state.studio.models.resolve(model)  # type: ignore[attr-defined]
    engine = SdCoreGenerator(0)
    params = GenerationParams("a red circle on a blue background", seed=5, steps=20,
                              sampler="euler")  # fmt: skip
    job = JobSpec(entry.on("cpu", None), params, filmstrip_frames=8)
    strips: list[Filmstrip] = []
    (image,) = engine.generate(job, lambda *_: None, lambda: False, strips.append).images
    (strip,) = strips
    steps = [f.step for f in strip.frames]
    assert steps == evenly_spaced_steps(20, 8) == [1, 4, 6, 9, 12, 15, 17, 20]
    assert {f.total for f in strip.frames} == {20}
    pipe = engine.cache.get((str(entry.path), "cpu", None, False), 0)
    sigmas = get_sampler("euler").sigmas(pipe.schedule, 20)
    assert [f.sigma for f in strip.frames] == pytest.approx([float(sigmas[s]) for s in steps])
    w, h = image.size
    assert strip.image.mode == "RGB" and strip.image.size == (8 * w, 2 * h)
    # Euler's last step lands on σ = 0: the last predicted x0 is the generated image itself.
    last = strip.image.crop((7 * w, h, 8 * w, 2 * h))
    assert np.array_equal(np.asarray(last), np.asarray(image.convert("RGB")))
    # The first noisy frame is mostly noise: far from the image, unlike the last one.
    first_noisy = np.asarray(strip.image.crop((0, 0, w, h)), dtype=float)
    assert np.abs(first_noisy - np.asarray(image.convert("RGB"), dtype=float)).mean() > 10

    # No frames asked for, or nobody to hand them to: nothing recorded, nothing decoded.
    two_steps = replace(params, steps=2)
    engine.generate(replace(job, filmstrip_frames=0, params=two_steps), lambda *_: None,
                    lambda: False, strips.append)  # fmt: skip
    engine.generate(replace(job, params=two_steps), lambda *_: None, lambda: False)
    assert len(strips) == 1
    assert strip.decoder == "vae"


def test_a_cpu_filmstrip_too_costly_to_decode_is_drawn_with_the_cheap_preview(
    engine_client: tuple[TestClient, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the CPU decode budget (SD v1.5 at 512² is 50× over it) the frames are drawn with
    the linear latent preview at latent size instead of 16 VAE decodes."""
    from sd_core.params import GenerationParams
    from stable_diffusion_api.services import engine as engine_module
    from stable_diffusion_api.services.generator import Filmstrip, JobSpec

    client, model = engine_client
    entry = client.app.state.studio.models.resolve(model)  # type: ignore[attr-defined]
    engine = engine_module.SdCoreGenerator(0)
    params = GenerationParams("a red circle on a blue background", seed=5, steps=4,
                              sampler="euler")  # fmt: skip
    job = JobSpec(entry.on("cpu", None), params, filmstrip_frames=4)
    strips: list[Filmstrip] = []
    (image,) = engine.generate(job, lambda *_: None, lambda: False, strips.append).images
    assert strips[0].decoder == "vae"
    monkeypatch.setattr(engine_module, "FILMSTRIP_CPU_DECODE_BUDGET", 0)
    engine.generate(job, lambda *_: None, lambda: False, strips.append)
    strip = strips[1]
    w, h = image.size
    assert strip.decoder == "approximate"
    f = sd_core.load_pipeline(entry.path).config.vae.downsample_factor
    assert strip.image.size == (4 * (w // f), 2 * (h // f))  # latent-sized cells


@pytest.fixture(scope="module")
def thread_client(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TestClient, str | None, Path]]:
    data, model = data_with_model(tmp_path_factory, "thread")
    settings = Settings(data_dir=data, poll_s=0.05, worker_mode="thread", filmstrip_frames=4)
    with TestClient(create_app(settings)) as client:
        yield client, model, data


def test_a_real_generation_keeps_its_filmstrip_until_deleted(
    thread_client: tuple[TestClient, str | None, Path],
) -> None:
    client, model, data = thread_client
    project = project_for(client, model, "Filmstrip")
    done = wait_for(client, submit(client, project["id"], steps=6, seed=2, sampler="DDIM")["id"],
                    timeout=120)  # fmt: skip
    strip = done["filmstrip"]
    assert [f["step"] for f in strip["frames"]] == [1, 3, 4, 6]
    sigmas = [f["sigma"] for f in strip["frames"]]
    assert sigmas == sorted(sigmas, reverse=True) and all(s is not None for s in sigmas)
    width, height = done["images"][0]["width"], done["images"][0]["height"]
    path = data / "images" / str(project["id"]) / "filmstrips" / f"{done['id']}.png"
    with Image.open(path) as film:
        assert film.size == (strip["width"], strip["height"]) == (4 * width, 2 * height)
    page = client.get(f"/generations/{done['id']}", headers={"accept": "text/html"}).text
    assert f'src="{strip["url"]}"' in page and "step 6/6" in page and "Top row" in page
    assert strip["decoder"] == "vae" and "decoded by the VAE" in page
    assert client.delete(f"/api/v1/generations/{done['id']}").status_code == 204
    assert not path.exists()


def test_prompt_warnings_reach_the_rest_api_and_weights_work(
    engine_client: tuple[TestClient, str | None],
) -> None:
    client, model = engine_client
    project = project_for(client, model, "Prompt syntax")
    tagged = wait_for(
        client,
        submit(
            client,
            project["id"],
            prompt="a red circle on a blue background <lora:detail:0.8>",
            seed=3,
            steps=2,
        )["id"],
    )
    assert tagged["status"] == "succeeded", tagged
    assert len(tagged["warnings"]) == 1 and "<lora:detail:0.8>" in tagged["warnings"][0]
    plain = wait_for(
        client,
        submit(client, project["id"], prompt="a red circle on a blue background", seed=3, steps=2)[
            "id"
        ],
    )
    assert plain["warnings"] == []
    same = wait_for(
        client,
        submit(
            client, project["id"], prompt="a (red circle:1.0) on a blue background", seed=3, steps=2
        )["id"],
    )
    files = [
        client.get(f"/api/v1/images/{g['images'][0]['id']}/file").content
        for g in (tagged, plain, same)
    ]
    pixels = [np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in files]
    assert np.array_equal(pixels[0], pixels[1]) and np.array_equal(pixels[1], pixels[2])


def test_a_prompt_the_built_in_model_was_never_taught_is_said_at_once_and_after(
    engine_client: tuple[TestClient, str | None],
) -> None:
    client, model = engine_client
    assert model is None, "the built-in model ships in data/models"
    project = project_for(client, model, "Grammar")
    accepted = submit(client, project["id"], prompt="a photo of a cat", seed=3, steps=2)
    [said] = accepted["warnings"]
    assert "'photo', 'cat'" in said and "a [small|large] <color> [filled|outline] <shape>" in said
    done = wait_for(client, accepted["id"], timeout=60)  # loads the model
    assert done["status"] == "succeeded" and done["warnings"] == [said]
    parameters = done["images"][0]["parameters"]
    assert parameters.startswith("a photo of a cat\n")  # the image is still made, as asked
    taught = submit(client, project["id"], prompt="A red circle on a blue background.", steps=2)
    assert taught["warnings"] == []
    assert wait_for(client, taught["id"], timeout=60)["warnings"] == []
