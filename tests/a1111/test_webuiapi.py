"""A real uvicorn serving Dali with the real engine, driven by `webuiapi` (the A1111 client
library from PyPI) exactly as it drives AUTOMATIC1111.

The model is the built-in one when `data/models/dali-tiny.safetensors` exists; otherwise a
random-weight tiny checkpoint written into the server's models folder, selected through
`/options` as an A1111 user switches models. A copy of that checkpoint under a second name is
the model the switch test goes to and back from. Images are 64×64 with a few steps.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from PIL import Image

from sd_core.infotext import parse_infotext
from tests.a1111.live_server import Server, running_server, title_of, write_random_checkpoint

PROMPT = "a red circle on a blue background"
SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("a1111-server")
    models = root / "models"
    models.mkdir()
    write_random_checkpoint(models / "tiny-random.safetensors")
    shutil.copyfile(models / "tiny-random.safetensors", models / "tiny-other.safetensors")
    with running_server(root) as running:
        yield running


@pytest.fixture(scope="module")
def api(server: Server) -> Any:
    """The client, its current model the built-in one or else the random checkpoint."""
    client = server.api()
    if not server.builtin:
        # The built-in model is missing: nothing is usable until a model is chosen.
        assert client.get_options()["sd_model_checkpoint"] is None
        refused = client.session.post(f"{client.baseurl}/txt2img", json={"prompt": PROMPT})
        assert refused.status_code == 422, refused.text
        client.util_set_model(title_of(client, "tiny-random"))
    return client


def test_model_switch_through_options(api: Any) -> None:
    main = api.util_get_current_model()
    other = title_of(api, "tiny-other")
    entry = next(m for m in api.get_sd_models() if m["title"] == other)
    assert other == f"tiny-other.safetensors [{entry['hash']}]"
    assert len(entry["sha256"]) == 64 and entry["sha256"].startswith(entry["hash"])

    api.util_set_model(other)  # webuiapi: POST /options {"sd_model_checkpoint": title}
    assert api.util_get_current_model() == other
    result = api.txt2img(prompt=PROMPT, seed=1, width=64, height=64, steps=1)
    assert result.info["sd_model_name"] == "tiny-other"
    assert parse_infotext(result.images[0].info["parameters"]).model == "tiny-other"

    api.set_options({"sd_model_checkpoint": main})
    api.refresh_checkpoints()
    assert api.util_get_current_model() == main
    # A per-request override uses the model without switching.
    result = api.txt2img(prompt=PROMPT, seed=1, width=64, height=64, steps=1,
                         override_settings={"sd_model_checkpoint": other})  # fmt: skip
    assert result.info["sd_model_name"] == "tiny-other"
    assert api.util_get_current_model() == main


def test_sampler_and_scheduler_lists(api: Any) -> None:
    names = api.util_get_sampler_names()
    assert {"Euler a", "Euler", "DDIM", "DPM++ 2M", "DPM++ 2M Karras", "UniPC"} <= set(names)
    assert {"automatic", "karras"} <= set(api.util_get_scheduler_names())


def test_txt2img_img2img_png_info_and_gallery(server: Server, api: Any) -> None:
    model = next(m for m in api.get_sd_models() if m["title"] == api.util_get_current_model())

    result = api.txt2img(prompt=PROMPT, seed=5, batch_size=2, sampler_name="Euler a", **SMALL)
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert result.info["all_seeds"] == [5, 6]
    assert (result.info["sd_model_name"], result.info["sd_model_hash"]) == (
        model["model_name"], model["hash"],
    )  # fmt: skip
    written = parse_infotext(result.images[0].info["parameters"])
    assert (written.prompt, written.seed, written.steps) == (PROMPT, 5, 2)
    assert (written.sampler, written.width, written.height) == ("Euler a", 64, 64)
    assert written.model_hash == model["hash"]
    assert result.info["infotexts"][1] == result.images[1].info["parameters"]

    # PNG Info: webuiapi re-encodes the PIL image; the raw endpoint bytes work the same.
    read = api.png_info(result.images[1])
    assert read.info == result.info["infotexts"][1]  # a string, as A1111 answers
    assert read.parameters["Seed"] == "6" and read.parameters["Sampler"] == "Euler a"
    raw = api.session.post(f"{api.baseurl}/png-info", json={"image": result.json["images"][0]})
    assert raw.json()["info"] == result.info["infotexts"][0]

    again = api.img2img(
        images=[result.images[0]], prompt=PROMPT, denoising_strength=0.5, seed=7,
        sampler_name="DDIM", width=64, height=64, steps=4,
    )  # fmt: skip
    assert [image.size for image in again.images] == [(64, 64)]
    params = parse_infotext(again.images[0].info["parameters"])
    assert (params.seed, params.sampler, params.denoising_strength) == (7, "DDIM", 0.5)
    assert again.info["denoising_strength"] == 0.5

    # Every image is in the API project's gallery, with the same infotext.
    projects = {p["name"]: p for p in server.rest("/api/v1/projects")}
    images = server.rest(f"/api/v1/projects/{projects['API']['id']}/images?limit=100")["items"]
    stored = {image["seed"]: image["parameters"] for image in images}
    assert stored[5] == result.info["infotexts"][0] and stored[6] == result.info["infotexts"][1]
    assert stored[7] == again.info["infotexts"][0]
    png = requests.get(server.url + images[0]["url"], timeout=30)
    assert png.headers["content-type"] == "image/png"


def test_interrupt_during_a_run(server: Server, api: Any) -> None:
    outcome: dict[str, Any] = {}

    def long_run() -> None:
        started = time.monotonic()
        outcome["result"] = api.txt2img(prompt=PROMPT, seed=9, width=64, height=64, steps=150)
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=long_run)
    thread.start()
    deadline = time.monotonic() + 180
    while True:
        progress = api.get_progress()
        if progress["state"]["sampling_step"] >= 2 and progress["current_image"]:
            break
        assert thread.is_alive() and time.monotonic() < deadline, progress
        time.sleep(0.1)
    assert progress["state"]["sampling_steps"] == 150
    assert progress["state"]["job"] == "scripts_txt2img" and 0 < progress["progress"] < 1
    preview = Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))
    assert preview.format == "PNG"
    step_at_interrupt = progress["state"]["sampling_step"]

    assert api.interrupt() == {}
    thread.join(120)
    assert not thread.is_alive()
    # A1111 answers with the partly denoised image, the step it stopped at in its dali chunk.
    (partial,) = outcome["result"].images
    assert partial.size == (64, 64) and "Steps: 150," in partial.info["parameters"]
    assert step_at_interrupt <= json.loads(partial.info["dali"])["interrupted_at"] < 150
    assert outcome["result"].info["all_seeds"] == [9]
    projects = {p["name"]: p for p in server.rest("/api/v1/projects")}
    newest = server.rest(f"/api/v1/projects/{projects['API']['id']}/generations?limit=1")
    assert newest["items"][0]["status"] == "interrupted"
    assert newest["items"][0]["steps"] == 150 and step_at_interrupt < 150
    assert api.get_progress()["state"]["job_count"] == 0  # idle again: util_wait_for_ready
