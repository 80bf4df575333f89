"""`python sd_gradio.py` as a real process, driven through Gradio's own client.

The server gets a fresh data directory (`DALI_DATA_DIR`); what it writes is then read back
through the service's own `Studio` over the same database, so "the image landed in the project"
is checked where the web app would look. The model is the built-in one when it has been
trained; until then a random-weight checkpoint at the tiny test config, picked by name.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import sd_core
from sd_core.samplers import get_sampler, sampler_names
from stable_diffusion_api.config import Settings
from stable_diffusion_api.models import SUCCEEDED, Generation
from stable_diffusion_api.services import Studio
from tests.servers import stop

# Every test here talks to one `python sd_gradio.py` process.
pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "Gradio test"
START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"sd_gradio.py exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"sd_gradio.py did not listen within {START_TIMEOUT_S} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("gradio")
    data = tmp / "data"
    model = ""  # the project default: the built-in model
    if not sd_core.BUILTIN_MODEL_PATH.exists():
        from sd_core.checkpoint import save_checkpoint
        from sd_core.config import TINY_TEST
        from tests.reference import random_checkpoint

        save_checkpoint(
            data / "models" / "tiny-random.safetensors", random_checkpoint(TINY_TEST), TINY_TEST
        )
        model = "tiny-random"
    port = free_port()
    env = {
        **os.environ,
        "DALI_DATA_DIR": str(data),
        # Gradio's own variable, not --port: the UI must listen where it says (issue 16).
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_TEMP_DIR": str(tmp / "gradio-cache"),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONUNBUFFERED": "1",
        # One thread: the models are tiny, and on a shared machine spinning threads are slow.
        "OMP_NUM_THREADS": "1",
    }
    log = tmp / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "sd_gradio.py"), "--project", PROJECT],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_port(port, process, log)
        client = Client(
            f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp / "downloads")
        )
        studio = Studio(Settings(data_dir=data))
        yield {"client": client, "studio": studio, "model": model, "tmp": tmp, "log": log}
        studio.db.dispose()
    finally:
        stop(process)


def txt2img(app: dict[str, Any], prompt: str = "a red circle", **kw: Any) -> tuple[Any, ...]:
    args = {
        "project": PROJECT, "model": app["model"], "device": "cpu", "dtype": "auto",
        "prompt": prompt, "negative_prompt": "", "sampler": "euler", "steps": 2, "guidance": 7.0,
        "seed": 1, "width": 0, "height": 0, "batch": 1, "clip_skip": 1, "vae": "",
    }  # fmt: skip
    args.update(kw)
    return tuple(app["client"].predict(*args.values(), api_name="/txt2img"))


def image_args(app: dict[str, Any], **kw: Any) -> list[Any]:
    """img2img/inpaint arguments after the tab's own inputs: prompt … batch."""
    args = {
        "prompt": "a blue square", "negative_prompt": "", "sampler": "euler", "steps": 4,
        "guidance": 7.0, "seed": 3, "width": 0, "height": 0, "batch": 1,
    }  # fmt: skip
    args.update(kw)
    return list(args.values())


def common(app: dict[str, Any]) -> list[Any]:
    return [PROJECT, app["model"], "cpu", "auto"]


def assert_user_error(call: Any, *fragments: str) -> str:
    with pytest.raises(AppError) as caught:
        call()
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "Traceback" not in message and 'File "' not in message, message
    return message


def project_generations(app: dict[str, Any]) -> list[Any]:
    studio: Studio = app["studio"]
    project = next(p for p in studio.projects.list() if p.name == PROJECT)
    generations, _ = studio.generations.page(project.id, 0, 1000)
    return generations


# --------------------------------------------------------------------------- the API surface


def test_every_tab_has_a_named_endpoint(app: dict[str, Any]) -> None:
    api = app["client"].view_api(return_format="dict", print_info=False)
    named = set(api["named_endpoints"])
    assert {
        "/txt2img", "/img2img", "/inpaint", "/cancel", "/gallery", "/png_info", "/forward",
        "/forward_strip", "/filmstrip",
    } <= named  # fmt: skip
    assert not any(name.startswith("/ui_") for name in named)  # UI wiring stays private
    samplers = next(
        p for p in api["named_endpoints"]["/txt2img"]["parameters"] if p["label"] == "Sampler"
    )
    assert set(sampler_names()) <= set(samplers["type"]["enum"])


# --------------------------------------------------------------------------- generating


def test_every_sampler_generates_into_the_project(app: dict[str, Any]) -> None:
    before = len(project_generations(app))
    for name in sampler_names():
        gallery, _, info, status, details = txt2img(app, sampler=name, steps=2, seed=7)
        assert len(gallery) == 1, (name, status)
        with Image.open(gallery[0]["image"]) as image:
            assert image.format == "PNG" and image.size == (64, 64)
        assert f"Sampler: {get_sampler(name).display_name}," in info
        assert details["status"] == "succeeded" and details["sampler"] == name
        assert details["source"] == "gradio"
    rows = project_generations(app)
    assert len(rows) - before == len(sampler_names())
    made = {row.sampler for row in rows[: len(sampler_names())]}
    assert made == set(sampler_names())
    assert all(row.status == "succeeded" and len(row.images) == 1 for row in rows)


def test_batch_lands_in_gallery_and_png_metadata_round_trips(app: dict[str, Any]) -> None:
    client: Client = app["client"]
    gallery, _, info, status, details = txt2img(
        app, prompt="a green triangle", negative_prompt="blurry", seed=1234, batch=2, steps=3,
        sampler="euler_a", guidance=6.5,
    )  # fmt: skip
    assert [item["caption"].split("seed ")[1] for item in gallery] == ["1234", "1235"]
    # The same images through the Studio, as the web app's gallery sees them.
    studio: Studio = app["studio"]
    view = studio.generations.view(details["id"])
    assert [image.seed for image in view.images] == [1234, 1235]
    assert view.images[0].parameters == info
    project = studio.projects.view(view.project_id)
    assert project.name == PROJECT
    page, _ = studio.gallery.page(project.id, 0, 100)
    assert {i.id for i in view.images} <= {i.id for i in page}
    # Gradio's gallery endpoint lists them too.
    listed, count = client.predict(PROJECT, api_name="/gallery")
    listed_ids = {int(item["caption"].split(" ")[0].removeprefix("#")) for item in listed}
    assert listed_ids >= {i.id for i in view.images} and PROJECT in count
    # PNG info reads back what the file carries.
    parameters, fields, dali = client.predict(
        handle_file(gallery[1]["image"]), api_name="/png_info"
    )
    assert parameters == view.images[1].parameters
    assert fields["prompt"] == "a green triangle" and fields["negative_prompt"] == "blurry"
    assert fields["seed"] == 1235 and fields["steps"] == 3 and fields["sampler"] == "Euler a"
    assert fields["cfg_scale"] == 6.5 and (fields["width"], fields["height"]) == (64, 64)
    assert dali["project"] == PROJECT and dali["generation_id"] == details["id"]
    assert dali["sampler"] == "euler_a" and dali["device"] == "cpu"


def test_img2img_and_inpaint(app: dict[str, Any]) -> None:
    client: Client = app["client"]
    tmp: Path = app["tmp"]
    Image.new("RGB", (64, 64), (20, 160, 40)).save(tmp / "init.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(tmp / "mask.png")
    # A painted layer as the editor sends it: transparent, white where the brush went.
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (0, 0, 32, 64))
    layer.save(tmp / "layer.png")

    gallery, _, info, _, details = client.predict(
        *common(app), handle_file(tmp / "init.png"), 0.5, *image_args(app), api_name="/img2img"
    )
    assert len(gallery) == 1 and details["has_init_image"] and not details["has_mask"]
    assert "Denoising strength: 0.5" in info
    for editor_layers, upload in (
        ([handle_file(tmp / "layer.png")], None),
        ([], handle_file(tmp / "mask.png")),
    ):
        editor = {
            "background": handle_file(tmp / "init.png"),
            "layers": editor_layers,
            "composite": None,
        }
        gallery, _, _, _, details = client.predict(
            *common(app), editor, upload, 0.75, *image_args(app), api_name="/inpaint"
        )
        assert len(gallery) == 1 and details["has_init_image"] and details["has_mask"]
    # The stored mask is the painted half: white on the left, black on the right.
    studio: Studio = app["studio"]
    first_inpaint = details["id"] - 1
    with Image.open(studio.settings.inputs_dir / str(first_inpaint) / "mask.png") as stored:
        assert stored.getpixel((5, 30)) == 255 and stored.getpixel((60, 30)) == 0


def test_clip_skip_and_vae_reach_the_engine(app: dict[str, Any]) -> None:
    client: Client = app["client"]
    _, _, info, _, details = txt2img(app, seed=11, clip_skip=2, vae="None")
    assert details["clip_skip"] == 2 and details["vae"] is None  # "None": the model's own
    assert "Clip skip: 2" in info and "VAE:" not in info
    # A caller that leaves both out (an older client) gets clip skip 1 and the project's VAE.
    old_style = [*common(app), "a red circle", "", "euler", 2, 7.0, 12, 0, 0, 1]
    *_, details = client.predict(*old_style, api_name="/txt2img")
    assert details["clip_skip"] == 1 and details["vae"] is None
    assert_user_error(lambda: txt2img(app, vae="nope.vae.pt"), "nope.vae.pt", "VAE")


# --------------------------------------------------------------------------- bad input


def test_bad_input_gets_a_clear_message(app: dict[str, Any]) -> None:
    client: Client = app["client"]
    tmp: Path = app["tmp"]
    before = len(project_generations(app))
    assert_user_error(lambda: txt2img(app, prompt="   "), "Prompt", "empty")
    assert_user_error(lambda: txt2img(app, width=1004), "Width", "1004", "multiple of 8")
    assert_user_error(lambda: txt2img(app, height=4096), "Height", "4096", "2048")
    assert_user_error(lambda: txt2img(app, steps=0), "Steps", "minimum")
    assert_user_error(lambda: txt2img(app, sampler="nope"), "Sampler", "nope")
    assert_user_error(
        lambda: txt2img(app, model="no-such-model"), "no-such-model", "installed models"
    )

    (tmp / "not-an-image.png").write_text("this is text, not a PNG")
    Image.new("RGB", (64, 64)).save(tmp / "init64.png")
    Image.new("L", (32, 32), 255).save(tmp / "mask32.png")
    assert_user_error(
        lambda: client.predict(
            *common(app), handle_file(tmp / "not-an-image.png"), 0.5, *image_args(app),
            api_name="/img2img",
        ),
        "Image", "could not be read as an image",
    )  # fmt: skip
    assert_user_error(
        lambda: client.predict(
            *common(app), None, 0.5, *image_args(app), api_name="/img2img",
        ),
        "upload the image",
    )  # fmt: skip
    editor = {"background": handle_file(tmp / "init64.png"), "layers": [], "composite": None}
    assert_user_error(
        lambda: client.predict(
            *common(app), editor, handle_file(tmp / "mask32.png"), 0.75, *image_args(app),
            api_name="/inpaint",
        ),
        "mask", "32x32", "64x64",
    )  # fmt: skip
    assert_user_error(
        lambda: client.predict(
            *common(app), editor, None, 0.75, *image_args(app), api_name="/inpaint"
        ),
        "Mask", "paint over",
    )  # fmt: skip
    assert_user_error(
        lambda: client.predict(handle_file(tmp / "not-an-image.png"), api_name="/png_info"),
        "could not be read as an image",
    )
    # Nothing reached the queue.
    assert len(project_generations(app)) == before
    # And the server never printed a traceback for any of it.
    assert "Traceback" not in app["log"].read_text()


# --------------------------------------------------------------------------- the explorer


def test_forward_process_and_filmstrip(app: dict[str, Any]) -> None:
    client: Client = app["client"]
    tmp: Path = app["tmp"]
    Image.new("RGB", (600, 300), (200, 40, 40)).save(tmp / "red.png")
    explorer = [app["model"], "cpu", "auto"]
    clean, noisy, stats = client.predict(
        handle_file(tmp / "red.png"), 0, 0, *explorer, api_name="/forward"
    )
    assert "t = 0" in stats and "SNR" in stats and "1175" in stats  # ᾱ_0 / (1 - ᾱ_0)
    with Image.open(clean) as a, Image.open(noisy) as b:
        # Scaled to fit the model's native size, or 256 px for tiny models, keeping the aspect.
        limit = (
            256 if app["model"] else max(256, app["studio"].models.resolve(None).native_size or 0)
        )
        assert a.size == b.size == (limit, limit // 2)
    _, _, stats = client.predict(
        handle_file(tmp / "red.png"), 999, 0, *explorer, api_name="/forward"
    )
    assert "t = 999" in stats and "0.00466" in stats  # ᾱ_999
    strip = client.predict(handle_file(tmp / "red.png"), 0, *explorer, api_name="/forward_strip")
    assert [item["caption"].split(" ")[0] for item in strip] == [
        "t=0", "t=100", "t=250", "t=500", "t=750", "t=999",
    ]  # fmt: skip
    # One noise draw per seed, whichever button: the strip's t=500 is "Add noise" at t=500.
    _, noisy_500, _ = client.predict(
        handle_file(tmp / "red.png"), 500, 0, *explorer, api_name="/forward"
    )
    with Image.open(noisy_500) as single, Image.open(strip[3]["image"]) as cell:
        assert single.size == cell.size
        a = np.asarray(single.convert("RGB"), dtype=np.int16)
        b = np.asarray(cell.convert("RGB"), dtype=np.int16)
        assert int(np.abs(a - b).max()) <= 2  # decoded in batches of 2 and 7: float rounding
    # The worker checks the model, hardware and precision as it does for a generation.
    assert_user_error(
        lambda: client.predict(
            handle_file(tmp / "red.png"), 0, 0, "no-such-model", "cpu", "auto", api_name="/forward"
        ),
        "no-such-model", "installed models",
    )  # fmt: skip
    assert_user_error(
        lambda: client.predict(
            handle_file(tmp / "red.png"), 0, app["model"], "cpu", "float16",
            api_name="/forward_strip",
        ),
        "float16", "cpu takes",
    )  # fmt: skip

    # "" is the model's default sampler: the run records the one that actually ran.
    for sampler in ("", "heun"):
        *_, details = txt2img(app, steps=10, sampler=sampler, seed=99)
        frames, note = client.predict(details["id"], api_name="/filmstrip")
        captions = [item["caption"] for item in frames]
        assert len(frames) == 16  # 8 frames × (noisy x_t, predicted x0)
        steps = [int(c.split("/")[0].removeprefix("step ")) for c in captions[::2]]
        assert steps == [1, 2, 4, 5, 6, 7, 9, 10]
        assert all("noisy x_t" in c for c in captions[::2])
        assert all("predicted x₀" in c for c in captions[1::2])
        assert "σ=0" in captions[-2]  # both samplers end on σ = 0
        assert f"Generation #{details['id']}" in note
    assert_user_error(lambda: client.predict(10_000, api_name="/filmstrip"), "10000", "not found")


def test_filmstrip_of_a_run_made_by_another_process_is_the_stored_strip(
    app: dict[str, Any],
) -> None:
    """A generation this UI did not run (the web app's worker made it, say) has no recording
    here: the explorer cuts the strip stored with it into its cells instead."""
    studio: Studio = app["studio"]
    project = studio.projects.get_or_create(PROJECT)
    colours = [[(200, 0, 0), (0, 200, 0), (0, 0, 200)], [(90, 90, 0), (0, 90, 90), (90, 0, 90)]]
    strip = Image.new("RGB", (3 * 8, 2 * 8))
    for row, line in enumerate(colours):
        for column, colour in enumerate(line):
            strip.paste(colour, (column * 8, row * 8, column * 8 + 8, row * 8 + 8))
    frames = [{"step": step, "total": 6, "sigma": sigma}
              for step, sigma in ((2, 5.5), (4, 1.25), (6, 0.0))]  # fmt: skip
    with studio.db.session() as session:
        row = Generation(project_id=project.id, status=SUCCEEDED, device="cpu", model="elsewhere",
                         prompt="made elsewhere", steps=6, guidance=7.0, seed=5, sampler="euler",
                         filmstrip={"width": 24, "height": 16, "frames": frames,
                                    "decoder": "approximate"})  # fmt: skip
        session.add(row)
        session.flush()
        row.filmstrip_path = studio.storage.filmstrip_path(project.id, row.id)
        generation_id = row.id
    studio.storage.write_filmstrip(strip, row.filmstrip_path)

    items, note = app["client"].predict(generation_id, api_name="/filmstrip")
    assert [item["caption"] for item in items] == [
        "step 2/6 · noisy x_t · σ=5.5", "step 2/6 · predicted x₀",
        "step 4/6 · noisy x_t · σ=1.25", "step 4/6 · predicted x₀",
        "step 6/6 · noisy x_t · σ=0", "step 6/6 · predicted x₀",
    ]  # fmt: skip
    for index, item in enumerate(items):
        with Image.open(item["image"]) as cell:
            assert cell.size == (8, 8)
            assert cell.convert("RGB").getpixel((4, 4)) == colours[index % 2][index // 2]
    assert f"Generation #{generation_id}" in note and "stored with it" in note
    assert "quick latent preview" in note

    # Without a stored strip either: a clear message, no traceback.
    studio.storage.delete(row.filmstrip_path)
    assert_user_error(
        lambda: app["client"].predict(generation_id, api_name="/filmstrip"),
        f"Generation #{generation_id}", "DALI_FILMSTRIP_FRAMES=0",
    )  # fmt: skip


# --------------------------------------------------------------------------- canceling


def test_progress_per_step_then_cancel(app: dict[str, Any]) -> None:
    client: Client = app["client"]
    studio: Studio = app["studio"]
    job = client.submit(
        PROJECT, app["model"], "cpu", "auto", "a long one", "", "euler", 150, 7.0, 5, 256, 256, 1,
        api_name="/txt2img",
    )  # fmt: skip
    deadline = time.monotonic() + 60
    running = None
    while time.monotonic() < deadline and running is None:
        running = next((g for g in project_generations(app) if g.status == "running"), None)
        time.sleep(0.2)
    assert running is not None, "the generation never started"
    # The client sees the progress bar move step by step.
    seen: set[tuple[int | None, int | None, str | None]] = set()
    while time.monotonic() < deadline and len({s for s in seen if s[0]}) < 2:
        for unit in job.status().progress_data or []:
            seen.add((unit.index, unit.length, unit.unit))
        time.sleep(0.1)
    steps = {s for s in seen if s[0]}
    assert len(steps) >= 2 and all(length == 150 and unit == "steps" for _, length, unit in steps)
    message = client.predict(api_name="/cancel")
    assert f"#{running.id}" in message
    gallery, _, _, status, details = job.result(timeout=60)
    assert gallery == [] and "canceled" in status
    assert studio.generations.view(running.id).status == "canceled"
    assert client.predict(api_name="/cancel") == "Nothing is running."
