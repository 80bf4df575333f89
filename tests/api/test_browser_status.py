"""What the pages say about a job, in Chromium: the steps a job really ran, a cancelled job
not called finished, a benchmark followed live on the hardware page, and an image page that
names its generation."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.api.test_browser import DESKTOP, browser, data_dir, run_job, server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser


def wait_until(page, condition: str, timeout_s: float) -> None:  # type: ignore[no-untyped-def]  # noqa: ANN001
    """Poll `condition` from here (the pages' CSP forbids the eval wait_for_function needs)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(condition):
        assert time.monotonic() < deadline, f"not true after {timeout_s} s: {condition}"
        time.sleep(0.05)


def new_project(base: str, model: str, name: str) -> int:
    body = {"name": name, "device": "cpu"} | ({"default_model": model} if model else {})
    return int(httpx.post(f"{base}/api/v1/projects", json=body, timeout=30).json()["id"])


def open_page(browser, url: str):  # type: ignore[no-untyped-def]  # noqa: ANN001, F811
    page = browser.new_page(viewport=DESKTOP)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    return page, errors


def test_img2img_reports_the_steps_it_ran(server, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    base, model = server
    project = new_project(base, model, "Status img2img")
    pixels = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "init.png")
    page, errors = open_page(browser, f"{base}/projects/{project}")
    page.fill("#prompt", "a red circle on a blue background")
    page.fill("#steps", "20")
    page.select_option("#width", "64")
    page.select_option("#height", "64")
    page.click("text=Start from an image")
    page.set_input_files("#init_image", str(tmp_path / "init.png"))
    page.fill("#strength", "0.5")
    page.click("#generate-button")
    page.wait_for_selector("#results a.thumb img", timeout=300_000)
    detail = page.inner_text("#jobs .job-detail")
    assert re.fullmatch(r"Finished in .+ \(10 steps( at .+/step)?\)", detail), detail  # 20 × 0.5
    assert errors == []
    page.close()


def test_a_cancelled_job_is_not_called_finished(server, browser) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    base, model = server
    project = new_project(base, model, "Status cancel")
    page, errors = open_page(browser, f"{base}/projects/{project}")
    page.fill("#prompt", "a red circle on a blue background")
    page.fill("#steps", "150")
    page.select_option("#width", "64")
    page.select_option("#height", "64")
    page.click("#generate-button")
    page.wait_for_selector("#jobs .job-card")
    wait_until(page, "document.querySelector('#jobs .job-progress').value >= 2", 300)
    page.click("#jobs .job-cancel button")
    wait_until(page, "document.querySelector('#jobs .job-status').textContent === 'Canceled'", 60)
    detail = page.inner_text("#jobs .job-detail")
    assert re.fullmatch(r"Canceled after \d+ of 150 steps \(.+\)", detail), detail
    assert "Finished" not in detail
    assert errors == []
    page.close()


def test_a_benchmark_is_followed_live_and_the_image_page_names_its_generation(  # type: ignore[no-untyped-def]
    server,  # noqa: F811
    browser,  # noqa: F811
) -> None:
    base, model = server
    page, errors = open_page(browser, f"{base}/hardware")
    if model:
        page.select_option("#bench-model-1", model)
    page.click("text=Measure speed")
    page.wait_for_url(f"{base}/hardware")
    badge = page.locator("#benchmarks .status").last
    assert (badge.text_content() or "").strip() in ("queued", "running", "done")
    started = time.monotonic()
    # No reload by the test: the page follows the benchmark, then redraws with the speed.
    page.wait_for_selector("#benchmarks .status-done", timeout=300_000)
    page.wait_for_selector("table", timeout=30_000)
    assert time.monotonic() - started < 300
    assert errors == []

    project = new_project(base, model, "Status image page")
    job = {"prompt": "a green square on a white background", "steps": 2, "batch": 2,
           "width": 64, "height": 64}  # fmt: skip
    done = run_job(base, project, job)
    second = done["images"][1]
    page.goto(f"{base}/images/{second['id']}")
    origin = page.inner_text("#image-origin")
    assert origin == f"Image 2 of 2 from generation #{done['id']}"
    page.click("#image-origin a")
    page.wait_for_url(f"**/generations/{done['id']}")
    page.close()
