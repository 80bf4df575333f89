"""Large results and everyday conveniences, in Chromium against a real uvicorn: the lightbox
(open, zoom, arrows, Esc and the focus back), the image page's large picture, keyboard
navigation in the gallery, dark mode.

Screenshots of each state go to $DALI_SCREENSHOTS (default /tmp/dali-screenshots), at desktop
and phone width, for a human to look at.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.test_browser import (  # noqa: F401  (fixtures)
    DESKTOP,
    PHONE,
    browser,
    data_dir,
    run_job,
    server,
    shoot,
    unlabelled_controls,
)
from tests.api.test_browser_status import new_project, open_page, wait_until

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


def lightbox_state(page) -> dict[str, object]:  # type: ignore[no-untyped-def]  # noqa: ANN001
    return page.evaluate(
        """() => { const box = document.querySelector('#lightbox');
                   const image = document.querySelector('#lightbox-image');
                   return { open: !!(box && box.open), src: image && image.getAttribute('src'),
                            width: image && image.getBoundingClientRect().width,
                            natural: image && image.naturalWidth,
                            pixelated: !!image && getComputedStyle(image).imageRendering === 'pixelated',
                            zoom: box && document.querySelector('#lightbox-zoom').textContent,
                            caption: box && document.querySelector('#lightbox-caption').textContent,
                            focus: document.activeElement.getAttribute('href')
                                   || document.activeElement.dataset.action }; }"""
    )  # fmt: skip


def zoom_of(page) -> int:  # type: ignore[no-untyped-def]  # noqa: ANN001
    """The lightbox's zoom, in per cent of the image's own size (as it shows it, rounded)."""
    return int(str(lightbox_state(page)["zoom"]).rstrip("%"))


def about(value: float) -> object:
    """Equal to `value` within the rounding of a zoom shown in whole per cent."""
    return pytest.approx(value, abs=1)


def test_the_lightbox_zooms_steps_and_gives_the_focus_back(server, browser, gallery) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    base, _ = server
    project, images = gallery
    page, errors = open_page(browser, f"{base}/projects/{project}/gallery")
    assert unlabelled_controls(page) == []
    assert page.locator("#gallery-keys-hint").is_visible()
    # The keyboard: the arrows move along the grid, Enter opens the image large.
    page.locator(".gallery a.thumb").first.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.getAttribute('href')") == f"/images/{images[2]}"
    page.keyboard.press("Enter")
    wait_until(page, "document.querySelector('#lightbox-image').naturalWidth === 64", 30)
    state = lightbox_state(page)
    assert state["open"] and state["src"] == f"/api/v1/images/{images[2]}/file"
    assert state["caption"] == (
        f"Image {images[2]}: a green square on a white background — 3 of 6"
    )  # fmt: skip
    # Fitted to the screen: a 64 px image drawn many times larger, with sharp pixels.
    assert float(state["width"]) > 600 and state["pixelated"]  # type: ignore[arg-type]
    assert page.get_attribute("[data-action=fit]", "aria-pressed") == "true"
    assert unlabelled_controls(page) == []
    fitted = zoom_of(page)
    shoot(page, "lightbox-1-open")
    # Back at desktop size, fitted again (on the resize event, a frame later).
    wait_until(page, f"document.querySelector('#lightbox-zoom').textContent === '{fitted}%'", 10)
    page.keyboard.press("+")
    assert zoom_of(page) == about(fitted * 1.5)
    page.keyboard.press("-")
    assert zoom_of(page) == fitted
    page.keyboard.press("1")  # actual size: 64 px, no longer pixelated (1:1)
    state = lightbox_state(page)
    assert state["zoom"] == "100%" and state["width"] == 64 and not state["pixelated"]
    assert page.get_attribute("[data-action=actual]", "aria-pressed") == "true"
    shoot(page, "lightbox-2-actual-size")
    page.keyboard.press("0")
    assert zoom_of(page) == fitted
    page.click("#lightbox-image")  # a click zooms in to twice the fitted size
    assert zoom_of(page) == about(fitted * 2)
    page.click("[data-action=fit]")
    assert zoom_of(page) == fitted

    page.keyboard.press("ArrowRight")
    assert lightbox_state(page)["caption"].endswith("— 4 of 6")  # type: ignore[union-attr]
    for _ in range(4):
        page.keyboard.press("ArrowLeft")
    state = lightbox_state(page)  # around the start, to the last
    assert state["src"] == f"/api/v1/images/{images[5]}/file" and state["zoom"] != "100%"
    assert str(state["caption"]).endswith("— 6 of 6")
    page.keyboard.press("Escape")
    state = lightbox_state(page)
    assert not state["open"]
    assert state["focus"] == f"/images/{images[5]}"  # the image last shown
    # The "Image page" link of the lightbox leads where the thumbnail does.
    page.keyboard.press("Enter")
    wait_until(page, "document.querySelector('#lightbox').open", 10)
    page.click("#lightbox-page")
    page.wait_for_url(f"**/images/{images[5]}")
    assert errors == []
    page.close()


def test_the_gallery_grid_moves_by_rows_and_links_work_without_script(  # type: ignore[no-untyped-def]
    server,  # noqa: F811
    browser,  # noqa: F811
    gallery,
) -> None:
    base, _ = server
    project, images = gallery
    page, errors = open_page(browser, f"{base}/projects/{project}/gallery")
    page.set_viewport_size(PHONE)  # two images a row
    page.locator(".gallery a.thumb").first.focus()
    focused = "document.activeElement.getAttribute('href')"
    page.keyboard.press("ArrowDown")
    assert page.evaluate(focused) == f"/images/{images[2]}"
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowUp")
    assert page.evaluate(focused) == f"/images/{images[1]}"
    page.keyboard.press("ArrowUp")  # the first row: stays
    assert page.evaluate(focused) == f"/images/{images[1]}"
    page.keyboard.press("End")
    assert page.evaluate(focused) == f"/images/{images[5]}"
    page.keyboard.press("Home")
    assert page.evaluate(focused) == f"/images/{images[0]}"
    assert errors == []
    page.close()

    # Without JavaScript a thumbnail is a plain link to the image page, which shows the image.
    context = browser.new_context(viewport=DESKTOP, java_script_enabled=False)
    plain = context.new_page()
    plain.goto(f"{base}/projects/{project}/gallery")
    assert plain.locator("#gallery-keys-hint").is_hidden()  # only true with the script
    plain.locator(".gallery a.thumb").first.click()
    plain.wait_for_url(f"**/images/{images[0]}")
    assert plain.evaluate("document.querySelector('img.full').naturalWidth") == 64
    context.close()


def test_the_image_page_shows_the_image_large(server, browser, gallery) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    base, _ = server
    _, images = gallery
    page, errors = open_page(browser, f"{base}/images/{images[0]}")
    shown = page.evaluate(
        """() => { const image = document.querySelector('img.full');
                   return [image.getBoundingClientRect().width, image.naturalWidth,
                           getComputedStyle(image).imageRendering]; }"""
    )
    assert shown[0] > 500 and shown[1] == 64 and shown[2] == "pixelated", shown
    page.click("img.full")
    wait_until(page, "document.querySelector('#lightbox-image').naturalWidth === 64", 30)
    assert page.locator("[data-action=next]").is_hidden()  # one image: nothing to step to
    assert page.locator("#lightbox-page").is_hidden()  # this is its page
    page.keyboard.press("ArrowRight")
    assert lightbox_state(page)["src"] == f"/api/v1/images/{images[0]}/file"
    page.click("[data-action=close]")
    assert page.evaluate("document.activeElement.className") == "open-large"
    assert page.url == f"{base}/images/{images[0]}"

    # A generation's page: its images in batch order (here ids images[2], [1], [0]).
    page.click("#image-origin a")
    page.wait_for_url("**/generations/*")
    page.click("#results a.thumb >> nth=1")
    wait_until(page, "document.querySelector('#lightbox').open", 10)
    assert str(lightbox_state(page)["caption"]).endswith("— 2 of 3")
    page.keyboard.press("ArrowRight")
    assert lightbox_state(page)["src"] == f"/api/v1/images/{images[0]}/file"
    shoot(page, "lightbox-3-generation-page")
    page.keyboard.press("Escape")
    assert page.evaluate("document.activeElement.getAttribute('href')") == f"/images/{images[0]}"
    assert errors == []
    page.close()


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
