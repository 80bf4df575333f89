"""The image tools in Chromium (static/image_tools.js): an image pasted or dropped on the generate
page becomes the init image (preview, mask editor, and the job's input pixel for pixel), a
file that is not an image is refused in words, and "Send to inpaint" from an image's page opens
the mask editor over that image, which the job then starts from."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.api.test_browser import (  # noqa: F401  (fixtures)
    DESKTOP,
    browser,
    data_dir,
    server,
    shoot,
    unlabelled_controls,
)
from tests.api.test_browser_status import new_project, open_page, wait_until

pytestmark = pytest.mark.browser

# Builds a DataTransfer holding one file from base64, in the page (the CSP forbids eval, so
# this is a function `page.evaluate` calls with its argument, not a string it evaluates).
DISPATCH = """([kind, selector, name, type, data]) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, { type }));
    const target = document.querySelector(selector);
    const event = kind === "paste"
        ? new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true })
        : new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true });
    target.dispatchEvent(event);
    return event.defaultPrevented;
}"""


def png_bytes(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def generate_and_wait(page: Any, base: str) -> dict[str, Any]:
    """Submit the generate form (the script posts it) and return the finished job."""
    page.click("#generate-button")
    page.wait_for_selector("#results a.thumb img", timeout=300_000)
    job = page.get_attribute("#jobs .job-card .job-link", "href")  # the newest card
    assert job is not None
    done: dict[str, Any] = httpx.get(f"{base}/api/v1{job}", timeout=30).json()
    assert done["status"] == "succeeded", done
    return done


def stored_input(data_dir: Path, job: int, name: str) -> np.ndarray:  # noqa: F811
    with Image.open(data_dir / "inputs" / str(job) / f"{name}.png") as stored:
        return np.asarray(stored.convert("RGB" if name == "init" else "L"))


def test_a_pasted_image_is_the_init_image(server, data_dir: Path, browser) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    base, model = server
    project = new_project(base, model, "Tools paste")
    pixels = np.random.default_rng(11).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    page, errors = open_page(browser, f"{base}/projects/{project}")
    page.fill("#prompt", "a red circle on a blue background")
    page.fill("#steps", "2")
    page.select_option("#width", "64")
    page.select_option("#height", "64")
    assert page.locator("#init-preview-figure").is_hidden()

    # Pasted while typing in the prompt: the image is taken, the text box left alone.
    page.focus("#prompt")
    args = ["paste", "#prompt", "image.png", "image/png", png_bytes(pixels)]
    assert page.evaluate(DISPATCH, args) is True  # the browser's own paste did not happen
    wait_until(page, "() => document.querySelector('#init-preview').naturalWidth === 64", 30)
    assert page.locator("#init-tools").get_attribute("open") is not None  # opened to show it
    assert page.locator("#init-preview-figure").is_visible()
    assert "image.png" in page.inner_text("#init-preview-caption")
    assert page.evaluate("() => document.querySelector('#init_image').files[0].name") == "image.png"
    page.wait_for_selector("#mask-editor:not([hidden])")
    assert page.evaluate("() => document.querySelector('#mask-image').width") == 64
    assert page.input_value("#prompt") == "a red circle on a blue background"
    assert unlabelled_controls(page) == []
    shoot(page, "tools-1-pasted")

    done = generate_and_wait(page, base)
    assert done["has_init_image"] and not done["has_mask"]
    assert (stored_input(data_dir, done["id"], "init") == pixels).all()
    assert errors == []
    page.close()


def test_a_dropped_file_must_be_an_image(server, browser) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    base, model = server
    project = new_project(base, model, "Tools drop")
    page, errors = open_page(browser, f"{base}/projects/{project}")
    page.click("text=Start from an image")

    text = base64.b64encode(b"not a picture").decode()
    page.evaluate(DISPATCH, ["drop", "#init-drop", "notes.txt", "text/plain", text])
    assert page.locator("#init-drop-error").is_visible()
    message = page.inner_text("#init-drop-error")
    assert "“notes.txt” is not an image" in message and "PNG, JPEG, WebP or BMP" in message
    assert page.evaluate("() => document.querySelector('#init_image').files.length") == 0
    assert page.locator("#init-preview-figure").is_hidden()

    pixels = np.full((48, 40, 3), (200, 30, 60), dtype=np.uint8)
    page.evaluate(DISPATCH, ["drop", "#init-drop", "red.png", "image/png", png_bytes(pixels)])
    wait_until(page, "() => document.querySelector('#init-preview').naturalWidth === 40", 30)
    assert page.locator("#init-drop-error").is_hidden()  # the refusal is gone with its cause
    assert page.evaluate("() => document.querySelector('#init_image').files[0].name") == "red.png"
    page.wait_for_selector("#mask-editor:not([hidden])")

    page.click("#init-clear")  # and taken away again
    assert page.locator("#init-preview-figure").is_hidden()
    assert page.locator("#mask-editor").is_hidden()
    assert page.evaluate("() => document.querySelector('#init_image').files.length") == 0
    assert errors == []
    page.close()


def test_send_to_inpaint_opens_the_mask_editor_over_the_image(  # type: ignore[no-untyped-def]
    server,  # noqa: F811
    data_dir: Path,  # noqa: F811
    browser,  # noqa: F811
) -> None:
    base, model = server
    project = new_project(base, model, "Tools send")
    body = {"prompt": "a green square on a white background", "steps": 2, "width": 64,
            "height": 64, "seed": 5}  # fmt: skip
    job = httpx.post(f"{base}/api/v1/projects/{project}/generations", json=body, timeout=30)
    deadline = time.monotonic() + 300
    while (source := httpx.get(f"{base}/api/v1/generations/{job.json()['id']}").json())[
        "status"
    ] != "succeeded":
        assert time.monotonic() < deadline and source["status"] in ("queued", "running"), source
        time.sleep(0.2)
    image = source["images"][0]
    with Image.open(io.BytesIO(httpx.get(base + image["url"], timeout=30).content)) as opened:
        pixels = np.asarray(opened.convert("RGB"))

    page, errors = open_page(browser, f"{base}/images/{image['id']}")
    page.click("#send-inpaint")
    page.wait_for_url(f"**/projects/{project}?init_from={image['id']}&inpaint=1#init-tools")
    page.wait_for_selector("#mask-editor:not([hidden])")
    drawn = page.evaluate(
        """() => { const c = document.querySelector('#mask-image');
                   return [c.width, c.height,
                           Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]; }"""
    )
    assert drawn[:2] == [64, 64]
    assert (np.array(drawn[2], dtype=np.uint8).reshape(64, 64, 4)[..., :3] == pixels).all()
    wait_until(
        page,
        """() => { const box = document.querySelector('#mask-canvas').getBoundingClientRect();
                   return box.top >= 0 && box.bottom <= window.innerHeight; }""",
        30,
    )  # brought into view
    assert page.input_value("#init_image_id") == str(image["id"])
    assert unlabelled_controls(page) == []
    shoot(page, "tools-2-send-to-inpaint")

    page.locator("#brush_size").fill("8")
    page.locator("#mask-canvas").scroll_into_view_if_needed()
    canvas = page.locator("#mask-canvas").bounding_box()
    assert canvas is not None
    scale = canvas["width"] / 64
    page.mouse.move(canvas["x"] + 8 * scale, canvas["y"] + 32 * scale)
    page.mouse.down()
    page.mouse.move(canvas["x"] + 56 * scale, canvas["y"] + 32 * scale, steps=8)
    page.mouse.up()
    done = generate_and_wait(page, base)
    assert done["has_init_image"] and done["has_mask"]
    assert (stored_input(data_dir, done["id"], "init") == pixels).all()
    mask = stored_input(data_dir, done["id"], "mask")
    assert (mask[30:35, 12:52] == 255).all() and (mask[:20] == 0).all()
    assert errors == []
    page.close()
