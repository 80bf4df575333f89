"""The studio in a real browser: Debian's Chromium driven by Playwright against a real uvicorn.

Create a project, pick the CPU, generate, watch the progress bar move, see the image in the
gallery, reopen it with "use these settings"; put a LoRA into the prompt with the picker and
find it on the generation's page; pick styles and the hires fix; paint an inpainting
mask; upscale an image from its page. Screenshots of every page, at desktop and phone
width, go to $DALI_SCREENSHOTS (default /tmp/dali-screenshots) for a human to look at.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("DALI_SCREENSHOTS", "/tmp/dali-screenshots"))
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


LORA = "browser_test"
STYLES = "name,prompt,negative_prompt\ncentered,{prompt} in the center,\nwhite,,white background\n"


def write_lora(path: Path) -> None:
    """A valid LoRA file whose one layer fits no module: the engine loads it, applies nothing
    and says so in a note, so the generation still succeeds."""
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_nowhere.lora_down.weight": torch.zeros(1, 4),
               "lora_unet_nowhere.lora_up.weight": torch.zeros(4, 1),
               "lora_unet_nowhere.alpha": torch.tensor(1.0)}, str(path))  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_job(base: str, project: int, job: dict[str, object]) -> dict[str, Any]:
    """Queue `job` in `project` over REST and wait until it has succeeded: its generation."""
    queued = httpx.post(f"{base}/api/v1/projects/{project}/generations", json=job, timeout=30)
    assert queued.status_code == 202, queued.text
    deadline = time.monotonic() + 300
    while (done := httpx.get(f"{base}/api/v1/generations/{queued.json()['id']}").json())[
        "status"
    ] != "succeeded":
        assert done["status"] in ("queued", "running") and time.monotonic() < deadline, done
        time.sleep(0.2)
    return dict(done)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's data directory (DALI_DATA_DIR): its database, images and job inputs."""
    data = tmp_path_factory.mktemp("browser") / "data"
    data.mkdir(parents=True, exist_ok=True)
    return data


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[tuple[str, str]]:
    """A uvicorn process on a free loopback port; yields (base URL, model to pick or "")."""
    import sd_core

    data = data_dir
    model = ""
    if not Path(sd_core.BUILTIN_MODEL_PATH).is_file():
        from sd_core.checkpoint import save_checkpoint
        from sd_core.config import TINY_TEST
        from tests.reference import random_checkpoint

        save_checkpoint(data / "models" / "tiny-random.safetensors",
                        random_checkpoint(TINY_TEST), TINY_TEST)  # fmt: skip
        model = "tiny-random"
    write_lora(data / "loras" / f"{LORA}.safetensors")
    (data / "styles.csv").write_text(STYLES, encoding="utf-8")
    port = free_port()
    # One torch thread: on a shared CI machine, spinning torch threads can slow sampling
    # down many times over (the test is about the pages, not about speed). Progress on every
    # step: a 12-step tiny image takes ~0.2 s, so the default 0.1 s report interval left the
    # bar only two values to show, and the test watches the bar follow the steps.
    env = os.environ | {"DALI_DATA_DIR": str(data), "DALI_PREVIEW_EVERY": "2",
                        "DALI_TORCH_THREADS": "1", "DALI_PROGRESS_INTERVAL_S": "0"}  # fmt: skip
    log = (data / "uvicorn.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "stable_diffusion_api.sd_api:app",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/api/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"uvicorn did not start:\n{(data / 'uvicorn.log').read_text()}"
                )
            time.sleep(0.2)
        yield base, model
    finally:
        process.terminate()
        process.wait(30)
        log.close()


LOOPBACK = re.compile(r"^(https?|wss?)://127\.0\.0\.1(:\d+)?/|^(data|blob|about):")


class LocalOnlyBrowser:
    """Chromium, with every request of every page and context it opens recorded: the studio
    says it runs entirely on this machine, so a test fails on any request that leaves
    127.0.0.1 (a CDN font, an analytics ping, a script from elsewhere)."""

    def __init__(self, chromium: Any) -> None:
        self._chromium = chromium
        self.outside: list[str] = []

    def _watch(self, target: Any) -> Any:
        def guard(route: Any) -> None:
            # Every request that reaches the network layer passes here (one the page's CSP
            # blocks, such as ReDoc's logo, never gets this far); one for another host is
            # recorded and stopped.
            if LOOPBACK.match(route.request.url):
                route.continue_()
            else:
                self.outside.append(route.request.url)
                route.abort()

        target.route("**/*", guard)
        return target

    def new_context(self, **options: Any) -> Any:
        return self._watch(self._chromium.new_context(**options))

    def new_page(self, **options: Any) -> Any:
        return self._watch(self._chromium.new_page(**options))

    def close(self) -> None:
        self._chromium.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    with playwright_api.sync_playwright() as playwright:
        chromium = LocalOnlyBrowser(
            playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        )
        yield chromium
        chromium.close()
        assert chromium.outside == [], "requests left 127.0.0.1"


def shoot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    """Screenshots at desktop and phone width, then back to desktop."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size(DESKTOP)
    page.screenshot(path=str(SHOTS / f"{name}-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(SHOTS / f"{name}-phone.png"), full_page=True)
    # Nothing may be wider than a phone screen (no sideways scrolling).
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"] + 1, name
    page.set_viewport_size(DESKTOP)


def unlabelled_controls(page) -> list[str]:  # type: ignore[no-untyped-def]
    """Form controls a screen reader could not name (keyboard users need labels too)."""
    return page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
              .filter(el => el.type !== 'hidden' && !el.hidden)
              .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                            && !(el.tagName === 'BUTTON' && el.textContent.trim()))
              .map(el => el.outerHTML)"""
    )


def test_create_generate_watch_gallery_reuse(server: tuple[str, str], browser) -> None:  # type: ignore[no-untyped-def]
    base, model = server
    context = browser.new_context(viewport=DESKTOP)
    outside: list[str] = []
    # Works offline: any request leaving this server is recorded and refused.
    context.route(
        "**/*",
        lambda route: route.continue_() if route.request.url.startswith(base)
        else (outside.append(route.request.url), route.abort()),
    )  # fmt: skip
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(base + "/")
    assert page.locator("h1").inner_text() == "Projects"
    assert page.locator("input[name=device][value=cpu]").is_checked()  # a sensible default
    assert "built-in: shapes only" in page.content()
    assert unlabelled_controls(page) == []
    shoot(page, "1-home")

    # Create a project with the keyboard only.
    page.locator("#name").focus()
    page.keyboard.type("Browser shapes")
    page.locator("input[name=device][value=cpu]").check()
    if model:
        page.select_option("#default_model", model)
    page.locator("#project-form button[type=submit]").focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**/projects/*")
    assert page.locator("h1").inner_text() == "Browser shapes"
    assert unlabelled_controls(page) == []
    shoot(page, "2-generate")

    page.fill("#prompt", "a red circle in the top left on a blue background")
    page.fill("#steps", "12")
    page.uncheck("#random_seed")
    page.fill("#seed", "1234")
    # Record the progress bar as it moves (the script sets its value on every SSE step).
    page.evaluate(
        """() => { window.seen = []; setInterval(() => {
                     const bar = document.querySelector('#jobs .job-progress');
                     if (bar) window.seen.push([bar.value, bar.max]); }, 15); }"""
    )
    page.locator("#prompt").press("Control+Enter")
    page.wait_for_selector("#jobs .job-card")
    # Polled from here: wait_for_function evaluates its text with eval, which the studio's
    # Content-Security-Policy (script-src 'self') forbids in the page, as it should.
    deadline = time.monotonic() + 300
    while not page.evaluate("window.seen.some(([v, m]) => v > 0 && v < m)"):
        assert time.monotonic() < deadline, "the progress bar never moved"
        page.wait_for_timeout(50)
    shoot(page, "3-generating")
    page.wait_for_selector("#results a.thumb img", timeout=300_000)
    assert page.locator("#jobs .job-status").inner_text().startswith("Done")
    assert page.locator("#jobs .job-preview").is_hidden()
    seen = page.evaluate("window.seen")
    values = [v for v, m in seen if 0 < v < m]
    assert len(set(values)) >= 3 and values == sorted(values), seen
    shoot(page, "4-done")

    page.click("text=Gallery")
    page.wait_for_url("**/gallery")
    thumbs = page.locator(".gallery a.thumb")
    assert thumbs.count() == 1
    page.wait_for_selector(".gallery img", state="visible")
    loaded = "document.querySelector('.gallery img').complete"
    deadline = time.monotonic() + 30  # on a slow run the thumbnail may still be loading
    while not page.evaluate(loaded) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert page.evaluate("document.querySelector('.gallery img').naturalWidth") > 0
    shoot(page, "5-gallery")

    thumbs.first.click()  # opens it large (static/lightbox.js); its "Image page" link leads on
    page.click("#lightbox-page")
    page.wait_for_url("**/images/*")
    assert "1234" in page.locator(".params").inner_text()
    assert page.evaluate("document.querySelector('img.full').naturalWidth") > 0
    shoot(page, "6-image")

    page.click("#use-settings")
    page.wait_for_url("**/projects/*?from_image=*")
    assert page.input_value("#prompt") == "a red circle in the top left on a blue background"
    assert page.input_value("#seed") == "1234" and not page.is_checked("#random_seed")
    assert page.input_value("#steps") == "12"

    page.goto(base + "/hardware")
    shoot(page, "7-hardware")
    page.goto(base + "/projects/999999")
    assert page.locator(".error-code").inner_text() == "404"
    shoot(page, "8-error")

    assert outside == [] and errors == []
    context.close()


def test_the_lora_picker_writes_into_the_prompt(server: tuple[str, str], browser) -> None:  # type: ignore[no-untyped-def]
    base, model = server
    body = {"name": "Browser LoRA", "device": "cpu"} | ({"default_model": model} if model else {})
    project = httpx.post(f"{base}/api/v1/projects", json=body, timeout=30).json()
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{base}/projects/{project['id']}")
    assert page.locator("#vae option").all_inner_texts() == ["Model's own"]  # none installed

    page.fill("#prompt", "a red circle on a blue background")
    # The cursor after "circle": the tag goes there, spaced from the words either side.
    page.evaluate("document.querySelector('#prompt').setSelectionRange(12, 12)")
    page.click("#networks summary")
    assert "No embeddings yet" in page.locator("#networks").inner_text()
    page.get_by_role("button", name=f"Insert LoRA {LORA}").click()
    prompt = f"a red circle <lora:{LORA}:1> on a blue background"
    assert page.input_value("#prompt") == prompt
    assert page.evaluate("document.activeElement.id") == "prompt"  # back to typing
    assert unlabelled_controls(page) == []
    shoot(page, "9-lora-picker")

    page.fill("#steps", "4")
    page.click("#generate-button")
    page.wait_for_selector("#jobs .job-link")
    page.wait_for_selector("#results a.thumb img", timeout=300_000)
    assert page.locator("#jobs .job-status").inner_text().startswith("Done")
    page.click("#jobs .job-link")
    page.wait_for_url("**/generations/*")
    card = page.locator("#generation").inner_text()
    assert f"“{prompt}”" in card and "VAE: model's own" in card
    # The file fits no layer of the model: applied as nothing, with a note saying so.
    assert LORA in page.locator(".notice").first.inner_text()
    assert errors == []
    context.close()


def test_an_image_is_upscaled_from_its_page(server: tuple[str, str], browser) -> None:  # type: ignore[no-untyped-def]
    base, model = server
    body = {"name": "Browser upscale", "device": "cpu"} | (
        {"default_model": model} if model else {}
    )
    project = httpx.post(f"{base}/api/v1/projects", json=body, timeout=30).json()
    job = {"prompt": "a green square on a white background", "steps": 2, "width": 64, "height": 64}
    source = run_job(base, project["id"], job)["images"][0]["id"]
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{base}/images/{source}")
    assert page.locator("#upscaler option").all_inner_texts() == ["Lanczos", "Nearest"]
    assert unlabelled_controls(page) == []

    page.fill("#scale", "9")  # beyond the limit: the browser's own check stops the form
    page.click("#upscale-form button[type=submit]")
    assert page.evaluate("document.querySelector('#scale').validity.rangeOverflow")
    assert page.url == f"{base}/images/{source}"

    page.select_option("#upscaler", "Nearest")
    page.fill("#scale", "3")
    page.click("#upscale-form button[type=submit]")
    page.wait_for_url(lambda url: url.rstrip("/").rsplit("/", 1)[-1] not in ("", str(source)))
    assert page.evaluate("document.querySelector('img.full').naturalWidth") == 192
    assert f"from image #{source}" in page.locator("#upscaled-from").inner_text()
    shoot(page, "10-upscaled")
    page.click(f"#upscaled-from a[href='/images/{source}']")
    page.wait_for_url(f"**/images/{source}")
    assert errors == []
    context.close()


def test_the_script_posts_every_field_of_the_form(server: tuple[str, str], browser) -> None:  # type: ignore[no-untyped-def]
    """The script queues the form as it is: settings it has no code of its own for (here the
    hires fix and the styles) reach the job just as they do without JavaScript."""
    base, model = server
    body = {"name": "Browser form", "device": "cpu"} | ({"default_model": model} if model else {})
    project = httpx.post(f"{base}/api/v1/projects", json=body, timeout=30).json()
    page = browser.new_page(viewport=DESKTOP)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{base}/projects/{project['id']}")
    page.fill("#prompt", "a blue square")
    page.select_option("#styles", ["centered", "white"])
    assert unlabelled_controls(page) == []
    shoot(page, "10-styles")
    page.fill("#steps", "2")
    page.select_option("#width", "64")
    page.select_option("#height", "64")
    page.click("#hires-fix summary")
    page.check("#hires")
    page.fill("#hires_scale", "1.5")
    page.fill("#hires_steps", "1")
    page.click("#generate-button")
    page.wait_for_selector("#results a.thumb img", timeout=300_000)
    job = page.get_attribute("#jobs .job-link", "href")
    assert job is not None and page.url.endswith(f"/projects/{project['id']}")  # no reload
    done = httpx.get(f"{base}/api/v1{job}", timeout=30).json()
    assert (done["hires"], done["hires_scale"], done["hires_steps"]) == (True, 1.5, 1)
    assert done["prompt"] == "a blue square in the center"
    assert done["negative_prompt"] == "white background"
    assert (done["images"][0]["width"], done["images"][0]["height"]) == (96, 96)  # 64 × 1.5
    assert errors == []
    page.close()


def test_the_mask_is_painted_over_the_init_image(  # type: ignore[no-untyped-def]
    server: tuple[str, str], data_dir: Path, browser, tmp_path: Path
) -> None:
    """Brush, eraser and clear on the canvas over the chosen image: the job gets the mask as
    drawn (white where painted and not erased, black elsewhere) and the result keeps every
    pixel outside it."""
    import numpy as np
    from PIL import Image

    base, model = server
    body = {"name": "Browser mask", "device": "cpu"} | ({"default_model": model} if model else {})
    project = httpx.post(f"{base}/api/v1/projects", json=body, timeout=30).json()
    pixels = np.random.default_rng(7).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "init.png")
    page = browser.new_page(viewport=DESKTOP)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{base}/projects/{project['id']}")
    assert page.locator("#mask-editor").is_hidden()  # no image, nothing to paint on
    page.fill("#prompt", "a red circle on a blue background")
    page.fill("#steps", "2")
    page.select_option("#width", "64")
    page.select_option("#height", "64")
    page.click("text=Start from an image")
    page.set_input_files("#init_image", str(tmp_path / "init.png"))
    page.wait_for_selector("#mask-editor:not([hidden])")
    assert unlabelled_controls(page) == []

    def stroke(*points: tuple[int, int]) -> None:
        """Drag through `points`, given in the image's pixels."""
        page.locator("#mask-canvas").scroll_into_view_if_needed()
        canvas = page.locator("#mask-canvas").bounding_box()
        assert canvas is not None and canvas["width"] > 64 * 4  # a small image is shown larger
        scale = canvas["width"] / 64
        screen = [(canvas["x"] + x * scale, canvas["y"] + y * scale) for x, y in points]
        page.mouse.move(*screen[0])
        page.mouse.down()
        for point in screen[1:]:
            page.mouse.move(*point, steps=8)
        page.mouse.up()

    page.locator("#brush_size").fill("8")
    assert page.locator("#brush-size-value").inner_text() == "8"
    stroke((8, 50), (56, 50))  # then cleared: not in the mask
    page.click("#mask-clear")
    stroke((8, 20), (56, 20))
    page.click("#mask-eraser")
    stroke((44, 20), (60, 20))  # erases the stroke's right end
    assert page.get_attribute("#mask-eraser", "aria-pressed") == "true"
    page.click("#mask-brush")
    shoot(page, "11-mask")

    page.click("#generate-button")
    page.wait_for_selector("#results a.thumb img", timeout=300_000)
    job = page.get_attribute("#jobs .job-link", "href")
    assert job is not None
    done = httpx.get(f"{base}/api/v1{job}", timeout=30).json()
    assert done["has_mask"] and done["status"] == "succeeded"
    with Image.open(data_dir / "inputs" / str(done["id"]) / "mask.png") as stored:
        mask = np.asarray(stored.convert("L"))
    assert mask.shape == (64, 64)
    assert (mask[17:24, 10:40] == 255).all()  # painted
    assert (mask[:12] == 0).all() and (mask[28:] == 0).all()  # never painted, or cleared
    assert (mask[14:27, 48:] == 0).all()  # erased
    with Image.open(data_dir / "inputs" / str(done["id"]) / "init.png") as stored:
        assert (np.asarray(stored.convert("RGB")) == pixels).all()
    result = httpx.get(base + done["images"][0]["url"], timeout=30)
    from io import BytesIO

    with Image.open(BytesIO(result.content)) as image:
        out = np.asarray(image.convert("RGB"))
    kept = mask < 128  # the engine repaints where the mask is at least mid-grey
    assert (out[kept] == pixels[kept]).all()  # every pixel outside the mask as it was sent
    assert (out[~kept] != pixels[~kept]).any()  # and the painted part repainted
    assert errors == []
    page.close()
