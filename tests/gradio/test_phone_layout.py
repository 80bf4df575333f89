"""The Gradio UI at phone width in Chromium: a dropdown's text never runs under its arrow."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.test_browser import ARGS, CHROMIUM, PHONE
from tests.servers import free_port, serving

pytestmark = [pytest.mark.browser, pytest.mark.server]


@pytest.fixture(scope="module")
def ui_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("gradio-phone")
    env = {key: value for key, value in os.environ.items() if not key.startswith("DALI_")}
    env.update(
        DALI_GRADIO="1",
        DALI_DATA_DIR=str(tmp / "data"),
        GRADIO_TEMP_DIR=str(tmp / "gradio-cache"),
        OMP_NUM_THREADS="1",
    )
    with serving("dali_app.py", free_port(), env, tmp / "server.log", "/internal/ping") as url:
        yield f"{url}/gradio/"


# Each dropdown: its text, where its text area ends and where the drawn arrow (its path) begins.
DROPDOWNS = """() => [...document.querySelectorAll('.secondary-wrap input[role=combobox]')]
  .filter(input => input.offsetParent !== null)
  .map(input => {
    const arrow = input.parentElement.querySelector('.icon-wrap svg path').getBoundingClientRect();
    const box = input.getBoundingClientRect();
    const padding = parseFloat(getComputedStyle(input).paddingRight);
    return {text: input.value, textEnd: box.right - padding, arrowStart: arrow.left,
            ellipsis: getComputedStyle(input).textOverflow};
  })"""


def test_dropdown_text_stops_before_the_arrow_on_a_phone(ui_url: str, tmp_path: Path) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    assert CHROMIUM.exists(), "Debian chromium is needed (test.sh installs it)"
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport=PHONE)
        page.goto(ui_url, timeout=120_000)
        page.wait_for_selector(".secondary-wrap input[role=combobox]", timeout=120_000)
        dropdowns = page.evaluate(DROPDOWNS)
        page.screenshot(path=str(tmp_path / "gradio-phone.png"))
        browser.close()
    assert len(dropdowns) >= 4  # project, model, hardware, precision, sampler…
    overlapping = [d for d in dropdowns if d["textEnd"] > d["arrowStart"] + 0.5]
    assert overlapping == []
    assert {d["ellipsis"] for d in dropdowns} == {"ellipsis"}
