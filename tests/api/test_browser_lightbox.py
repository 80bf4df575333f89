"""Large results and everyday conveniences, in Chromium against a real uvicorn: the lightbox
(open, zoom, arrows, Esc and the focus back), the image page's large picture, keyboard
navigation in the gallery, dark mode, the generate form kept across a reload with its prompt
history, the seed buttons and the Generate button in reach while the form scrolls.

Screenshots of each state go to $DALI_SCREENSHOTS (default /tmp/dali-screenshots), at desktop
and phone width, for a human to look at.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.test_browser import (  # noqa: F401  (fixtures)
    DESKTOP,
    PHONE,
    SHOTS,
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


def test_the_form_is_kept_across_a_reload_with_its_prompt_history(  # type: ignore[no-untyped-def]
    server,  # noqa: F811
    browser,  # noqa: F811
) -> None:
    base, model = server
    project = new_project(base, model, "Form memory")
    page, errors = open_page(browser, f"{base}/projects/{project}")
    assert page.locator("#prompt-history").is_hidden()  # no prompt used yet in this browser
    assert page.locator("#generate-hint").is_visible()
    assert page.locator("#generate-hint").inner_text() == "Ctrl+Enter in any field generates"
    page.fill("#prompt", "a blue circle on a red background")
    page.fill("#steps", "3")
    page.select_option("#width", "64")
    page.select_option("#height", "64")
    page.uncheck("#random_seed")
    page.fill("#seed", "4242")
    wait_until(page, f"(localStorage.getItem('dali.form.{project}') || '').includes('4242')", 10)
    page.reload()
    assert page.input_value("#prompt") == "a blue circle on a red background"
    assert (page.input_value("#steps"), page.input_value("#width")) == ("3", "64")
    assert page.input_value("#seed") == "4242" and not page.is_checked("#random_seed")
    assert page.is_enabled("#seed")  # the page's script saw the box unticked
    assert page.locator("#memory-note").is_visible()
    assert unlabelled_controls(page) == []
    shoot(page, "memory-1-restored")

    # Generate twice: both prompts go to the history, newest first.
    page.locator("#prompt").press("Control+Enter")
    page.wait_for_selector("#results a.thumb img", timeout=300_000)
    page.fill("#prompt", "a small yellow triangle on a black background")
    page.locator("#negative_prompt").press("Control+Enter")  # from any field, as A1111
    wait_until(page, "document.querySelectorAll('#results a.thumb').length === 2", 300)
    newest = page.get_attribute("#results a.thumb", "href")
    page.reload()
    assert page.input_value("#prompt") == "a small yellow triangle on a black background"
    assert page.locator("#prompt-history option").all_inner_texts() == [
        "Recent prompts (2)…",
        "a small yellow triangle on a black background",
        "a blue circle on a red background",
    ]
    page.select_option("#prompt-history", "a blue circle on a red background")
    assert page.input_value("#prompt") == "a blue circle on a red background"
    assert page.evaluate("document.activeElement.id") == "prompt"
    shoot(page, "memory-2-history")

    # "Use these settings" wins over what the browser remembers; the project's page restores.
    page.goto(f"{base}/projects/{project}?from_image={str(newest).rsplit('/', 1)[-1]}")
    assert page.input_value("#prompt") == "a small yellow triangle on a black background"
    assert page.locator("#memory-note").count() == 0
    page.goto(f"{base}/projects/{project}")
    assert page.input_value("#prompt") == "a blue circle on a red background"

    # The project's defaults, on request: nothing remembered any more.
    page.click("#memory-reset")
    assert page.input_value("#prompt") == "" and page.input_value("#steps") == "20"
    assert page.is_checked("#random_seed") and page.is_disabled("#seed")
    page.reload()
    assert page.input_value("#prompt") == "" and page.locator("#memory-note").count() == 0
    assert errors == []
    page.close()


def test_seed_buttons_and_a_generate_button_in_reach(server, browser) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    base, model = server
    project = new_project(base, model, "Seeds")
    generate(base, project, prompt="a red square on a white background", seed=9)
    page, errors = open_page(browser, f"{base}/projects/{project}")
    assert page.is_checked("#random_seed")
    reuse = page.locator("#reuse-seed")
    assert reuse.inner_text() == "Reuse seed 9"  # the newest of the recent images
    reuse.click()
    assert page.input_value("#seed") == "9" and not page.is_checked("#random_seed")
    page.click("#new-seed")
    drawn = int(page.input_value("#seed"))
    assert 0 <= drawn < 2**32 and drawn != 9 and page.is_enabled("#seed")
    # The model's name is not cut off: its select has the row to itself.
    widths = page.evaluate(
        "['#model', '#prompt'].map(s => document.querySelector(s).getBoundingClientRect().width)"
    )
    assert widths[0] == widths[1], widths
    assert unlabelled_controls(page) == []

    # The Generate button stays on screen wherever the form is scrolled, desktop and phone.
    def in_view() -> bool:
        box = page.locator("#generate-button").bounding_box()
        viewport = page.viewport_size
        assert box is not None and viewport is not None
        return bool(box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"])

    for size in (DESKTOP, PHONE):
        page.set_viewport_size(size)
        page.evaluate("window.scrollTo(0, 0)")
        assert in_view(), size
        page.locator("#hires-fix").scroll_into_view_if_needed()
        page.evaluate("window.scrollBy(0, -200)")
        assert in_view(), size
        page.screenshot(path=str(SHOTS / f"sticky-generate-{size['width']}.png"))
    page.set_viewport_size(DESKTOP)
    page.fill("#prompt", "a red square on a white background")
    page.select_option("#width", "64")
    page.select_option("#height", "64")
    page.fill("#steps", "2")
    page.click("#generate-button")  # and it works from there
    wait_until(page, "document.querySelectorAll('#results a.thumb').length === 1", 300)
    result = page.locator("#results a.thumb")
    assert result.get_attribute("data-seed") == str(drawn)  # the drawn seed was used
    assert reuse.inner_text() == f"Reuse seed {drawn}"  # the newest image now
    result.click()  # a new result opens in the lightbox too
    wait_until(page, "document.querySelector('#lightbox').open", 10)
    new_id = str(result.get_attribute("href")).rsplit("/", 1)[-1]
    assert lightbox_state(page)["caption"] == f"Image {new_id}, seed {drawn}"
    shoot(page, "generate-result-lightbox")
    page.keyboard.press("Escape")
    assert page.evaluate("document.activeElement.getAttribute('href')") == result.get_attribute(
        "href"
    )
    assert errors == []
    page.close()
