"""The generate page's styles picker: styles.csv's styles, applied by name as A1111 does, the
expanded prompt stored and shown, and "use these settings" giving it back without the styles
(so they are not applied twice)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from stable_diffusion_api.config import Settings
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, wait_for

STYLES = (
    "name,prompt,negative_prompt\n"
    'sharp,"{prompt}, sharp focus",blurry\n'
    "oil,oil painting,\n"
    "unused,never,never\n"
)


def write_styles(settings: Settings) -> None:
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    (settings.resolved_data_dir / "styles.csv").write_text(STYLES, encoding="utf-8")


def selected_options(page: str, select_id: str) -> list[str]:
    select = re.search(rf'<select id="{select_id}"[^>]*>(.*?)</select>', page, re.S)
    assert select is not None, f"no select #{select_id}"
    return re.findall(r'<option value="([^"]*)"[^>]*\bselected\b', select.group(1))


def test_the_page_lists_the_styles_or_says_where_the_file_goes(
    client: TestClient, settings: Settings
) -> None:
    project = make_project(client)
    page = client.get(f"/projects/{project['id']}").text
    assert "No styles yet" in page and 'id="styles"' not in page
    assert str(settings.resolved_data_dir / "styles.csv") in page
    write_styles(settings)  # read again when it changes: no restart
    page = client.get(f"/projects/{project['id']}").text
    options = re.findall(r'<option value="([^"]*)" title="([^"]*)"', page)
    assert options == [
        ("sharp", "{prompt}, sharp focus · negative: blurry"),
        ("oil", "oil painting"),
        ("unused", "never · negative: never"),
    ]
    assert selected_options(page, "styles") == []


def test_styles_picked_in_the_form_expand_the_prompts_and_round_trip(
    client: TestClient, settings: Settings, fake: FakeGenerator
) -> None:
    write_styles(settings)
    project = make_project(client)
    sent = {"prompt": "a red circle", "negative_prompt": "", "steps": "2", "seed": "5",
            "styles": ["sharp", "oil"]}  # fmt: skip
    post = client.post(f"/projects/{project['id']}/generate", data=sent, follow_redirects=False)
    assert post.status_code == 303, post.text
    done = wait_for(client, int(post.headers["location"].rsplit("/", 1)[1]))
    expanded = "a red circle, sharp focus, oil painting"  # in the order sent, as A1111
    assert (done["prompt"], done["negative_prompt"]) == (expanded, "blurry")
    params = fake.calls[-1].params
    assert (params.prompt, params.negative_prompt) == (expanded, "blurry")
    image = done["images"][0]
    assert image["parameters"].startswith(f"{expanded}\nNegative prompt: blurry\n")

    # "Use these settings": the expanded prompt, no style picked (it would apply twice).
    page = client.get(f"/projects/{project['id']}?from_image={image['id']}").text
    assert f">{expanded}</textarea>" in page and ">blurry</textarea>" in page
    assert selected_options(page, "styles") == []
    again = {"prompt": expanded, "negative_prompt": "blurry", "steps": "2", "seed": "5"}
    post = client.post(f"/projects/{project['id']}/generate", data=again, follow_redirects=False)
    redone = wait_for(client, int(post.headers["location"].rsplit("/", 1)[1]))
    assert redone["images"][0]["parameters"] == image["parameters"]


def test_an_unknown_style_is_refused_beside_the_picker(
    client: TestClient, settings: Settings
) -> None:
    write_styles(settings)
    project = make_project(client)
    url = f"/projects/{project['id']}/generate"
    sent = {"prompt": "a red circle", "styles": ["oil", "gone"]}
    bad = client.post(url, data=sent)
    assert bad.status_code == 422
    message = re.search(r'<p class="field-error" id="styles-error" role="alert">([^<]*)', bad.text)
    assert message is not None and "gone" in message.group(1)
    assert "oil, sharp, unused" in message.group(1)  # what is installed
    # The picks are kept, the one the file lacks marked.
    assert selected_options(bad.text, "styles") == ["oil", "gone"]
    assert "gone — not in the styles file" in bad.text
    # The page's script gets it by field too.
    bad = client.post(url, data=sent, headers={"accept": "application/json"})
    [error] = bad.json()["detail"]
    assert error["loc"] == ["body", "styles"] and "gone" in error["msg"]
    listed = client.get(f"/api/v1/projects/{project['id']}/generations").json()
    assert listed["items"] == []  # nothing was queued
