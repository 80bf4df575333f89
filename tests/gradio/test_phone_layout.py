"""The Gradio UI at phone width in Chromium: a dropdown's text never runs under its arrow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.api.test_browser import ARGS, CHROMIUM, PHONE
from tests.gradio.test_mount_security import KEY, server  # noqa: F401  (the served UI)

pytestmark = [pytest.mark.browser, pytest.mark.server]


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


def test_dropdown_text_stops_before_the_arrow_on_a_phone(
    server: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    assert CHROMIUM.exists(), "Debian chromium is needed (test.sh installs it)"
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport=PHONE, extra_http_headers={"X-API-Key": KEY})
        page.goto(f"{server['url']}/gradio/", timeout=120_000)
        page.wait_for_selector(".secondary-wrap input[role=combobox]", timeout=120_000)
        dropdowns = page.evaluate(DROPDOWNS)
        page.screenshot(path=str(tmp_path / "gradio-phone.png"))
        browser.close()
    assert len(dropdowns) >= 4  # project, model, hardware, precision, sampler…
    overlapping = [d for d in dropdowns if d["textEnd"] > d["arrowStart"] + 0.5]
    assert overlapping == []
    assert {d["ellipsis"] for d in dropdowns} == {"ellipsis"}
