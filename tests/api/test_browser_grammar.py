"""The built-in model's grammar on the generate page, in Chromium: shown while that model is
chosen (examples and words that write the prompt), hidden for another checkpoint, and the note
on a job whose prompt it was never taught — said on its card at once and kept when it ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.test_browser import (  # noqa: F401  (fixtures)
    browser,
    data_dir,
    server,
    shoot,
    unlabelled_controls,
)
from tests.api.test_browser_status import new_project, open_page, wait_until

pytestmark = pytest.mark.browser


def test_the_grammar_follows_the_model_and_a_foreign_prompt_gets_a_note(  # noqa: F811
    server,  # noqa: ANN001, F811
    browser,  # noqa: ANN001, F811
    data_dir: Path,  # noqa: F811
) -> None:
    from sd_core.checkpoint import save_checkpoint
    from sd_core.config import TINY_TEST
    from tests.reference import random_checkpoint

    base, model = server
    assert model == "", "the built-in model ships in data/models"
    other = data_dir / "models" / "other-model.safetensors"
    save_checkpoint(other, random_checkpoint(TINY_TEST, seed=2), TINY_TEST)
    project = new_project(base, model, "Grammar")
    page, errors = open_page(browser, f"{base}/projects/{project}")

    grammar = page.locator("#grammar")
    shown = grammar.inner_text()
    assert grammar.is_visible() and "a [small|large] <color> [filled|outline] <shape>" in shown
    assert "<left of|right of|above|below>" in shown
    page.click(
        "#grammar button[data-prompt='a small yellow triangle in the bottom right on a gray background']"
    )
    assert page.input_value("#prompt") == (
        "a small yellow triangle in the bottom right on a gray background"
    )
    page.fill("#prompt", "")
    for word in ("a", "large", "red", "circle", "in the top left", "on a", "blue", "background"):
        page.click(f"#grammar button[data-insert='{word}']")
    assert page.input_value("#prompt") == "a large red circle in the top left on a blue background"
    page.fill("#prompt", "")
    for word in ("a", "red", "outline", "circle", "left of", "a", "blue", "square", "on a",
                 "white", "background"):  # fmt: skip
        page.click(f"#grammar button[data-insert='{word}']")
    written = page.input_value("#prompt")
    assert written == "a red outline circle left of a blue square on a white background"

    page.select_option("#model", "other-model")
    assert not grammar.is_visible()
    page.select_option("#model", "")
    assert grammar.is_visible()
    assert unlabelled_controls(page) == []
    shoot(page, "grammar")

    page.fill("#prompt", "a photo of a cat")
    page.fill("#steps", "2")
    page.click("#generate-button")
    note = page.locator("#jobs .job-card .job-notes")
    wait_until(page, "document.querySelector('#jobs .job-notes')?.hidden === false", 30)
    assert "never taught 'photo', 'cat'" in note.inner_text()  # from the 202 answer
    page.wait_for_selector("#results a.thumb img", timeout=120_000)
    assert note.is_visible() and note.inner_text().count("Note:") == 1  # kept when it ended
    shoot(page, "grammar-note")
    assert errors == []
    page.close()
