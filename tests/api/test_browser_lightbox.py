"""Everyday conveniences, in Chromium against a real uvicorn: dark mode.

Screenshots of each state go to $DALI_SCREENSHOTS (default /tmp/dali-screenshots), at desktop
and phone width, for a human to look at.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.test_browser import (  # noqa: F401  (fixtures)
    browser,
    data_dir,
    run_job,
    server,
    shoot,
)
from tests.api.test_browser_status import new_project, open_page

pytestmark = pytest.mark.browser


def generate(base: str, project: int, **job: object) -> dict[str, Any]:
    """A small job (64×64, 2 steps unless `job` says otherwise), run to the end."""
    return run_job(base, project, {"steps": 2, "width": 64, "height": 64} | job)


@pytest.fixture(scope="module")
def gallery(server: tuple[str, str]) -> tuple[int, list[int]]:  # noqa: F811
    """A project with six 64×64 images: (project id, image ids newest first)."""
    base, model = server
    project = new_project(base, model, "Lightbox")
    images: list[int] = []
    for prompt in ("a red circle on a blue background", "a green square on a white background"):
        done = generate(base, project, prompt=prompt, batch=3)
        images = [image["id"] for image in done["images"]][::-1] + images
    return project, images


def test_dark_mode_follows_the_system(server, browser, gallery) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    base, _ = server
    project, images = gallery
    page, errors = open_page(browser, f"{base}/projects/{project}/gallery")
    colours = """() => [document.documentElement, document.querySelector('.card, .search input')]
                         .map(el => getComputedStyle(el).backgroundColor.match(/\\d+/g).slice(0, 3)
                                                                      .map(Number))"""
    light = page.evaluate(colours)
    assert all(min(rgb) > 200 for rgb in light), light
    page.emulate_media(color_scheme="dark")
    dark = page.evaluate(colours)
    assert all(max(rgb) < 50 for rgb in dark), dark
    text = page.evaluate("getComputedStyle(document.body).color.match(/\\d+/g).map(Number)")
    assert min(text[:3]) > 200, text  # light text on it
    shoot(page, "dark-1-gallery")
    for url, name in [
        (f"/projects/{project}", "dark-2-generate"),
        (f"/images/{images[0]}", "dark-3-image"),
        ("/gallery", "dark-4-all-images"),
    ]:
        page.goto(base + url)
        assert page.evaluate(colours)[0] == dark[0]
        shoot(page, name)
    assert errors == []
    page.close()
