"""Prompt styles (`styles.csv`): reading A1111's file, applying styles, and the `styles` of the
A1111 routes and of the REST request."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stable_diffusion_api.config import Settings
from stable_diffusion_api.errors import InvalidField
from stable_diffusion_api.services.styles import StyleLibrary, apply_text, parse_styles
from tests.a1111.test_routes import SMALL, TXT2IMG
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for

CSV = """name,prompt,negative_prompt
Cinematic,"cinematic still of {prompt}, film grain",cartoon
Sharp,"sharp focus, 8k","blurry, lowres"
"""


def write_styles(settings: Settings, text: str = CSV) -> Path:
    path = settings.resolved_data_dir / "styles.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_apply_text_inserts_or_appends() -> None:
    assert apply_text("photo of {prompt}, bokeh", "a cat") == "photo of a cat, bokeh"
    assert apply_text("sharp focus", "a cat") == "a cat, sharp focus"
    assert apply_text("sharp focus", "") == "sharp focus"
    assert apply_text("", "a cat") == "a cat"


def test_parse_reports_bad_rows_and_keeps_the_rest() -> None:
    text = CSV + ',"no name here",\nSharp,again,\n'
    styles, problems = parse_styles(text)
    assert [s.name for s in styles] == ["Cinematic", "Sharp"]
    assert styles[1].negative_prompt == "blurry, lowres"
    assert problems == [
        "line 4: the style has no name",
        "line 5: a second style named 'Sharp' (the first is kept)",
    ]
    assert parse_styles("title,text\nA,b\n") == ([], [
        "the header row must name the columns name, prompt, negative_prompt; "
        "it has ['title', 'text']"
    ])  # fmt: skip


def test_library_missing_file_changes_and_unknown_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    library = StyleLibrary(tmp_path / "styles.csv")
    assert library.all() == []
    (tmp_path / "styles.csv").write_text(CSV + ",orphan,\n")
    with caplog.at_level(logging.WARNING):
        assert [s.name for s in library.all()] == ["Cinematic", "Sharp"]
    assert "line 4: the style has no name" in caplog.text
    assert library.apply(["Cinematic", "Sharp"], "a cat", "") == (
        "cinematic still of a cat, film grain, sharp focus, 8k",
        "cartoon, blurry, lowres",
    )
    with pytest.raises(InvalidField) as error:
        library.apply(["Sharp", "Noir"], "a cat", "")
    assert error.value.field == "styles.1" and "Cinematic, Sharp" in str(error.value)
    (tmp_path / "styles.csv").write_text("name,prompt,negative_prompt\nNoir,noir,\n")
    assert [s.name for s in library.all()] == ["Noir"]


def test_a1111_prompt_styles_and_txt2img_styles(
    client: TestClient, settings: Settings, fake: FakeGenerator
) -> None:
    assert client.get("/sdapi/v1/prompt-styles").json() == []
    write_styles(settings)
    assert client.get("/sdapi/v1/prompt-styles").json() == [
        {"name": "Cinematic", "prompt": "cinematic still of {prompt}, film grain",
         "negative_prompt": "cartoon"},
        {"name": "Sharp", "prompt": "sharp focus, 8k", "negative_prompt": "blurry, lowres"},
    ]  # fmt: skip
    body = {**SMALL, "negative_prompt": "ugly", "styles": ["Cinematic", "Sharp"]}
    response = client.post(TXT2IMG, json=body)
    assert response.status_code == 200, response.text
    params = fake.calls[-1].params
    assert params.prompt == "cinematic still of a red circle, film grain, sharp focus, 8k"
    assert params.negative_prompt == "ugly, cartoon, blurry, lowres"

    calls = len(fake.calls)
    refused = client.post(TXT2IMG, json={**SMALL, "styles": ["Sharp", "Noir"]})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "styles", "1"]
    assert len(fake.calls) == calls  # nothing was queued


def test_rest_generation_stores_the_expanded_prompt(client: TestClient, settings: Settings) -> None:
    write_styles(settings)
    project = make_project(client, "Styled")
    job = submit(client, project["id"], prompt="a fox", styles=["Sharp"])
    done = wait_for(client, job["id"])
    assert done["prompt"] == "a fox, sharp focus, 8k"
    assert done["negative_prompt"] == "blurry, lowres"
    response = client.post(
        f"/api/v1/projects/{project['id']}/generations", json={"prompt": "a", "styles": ["X"]}
    )
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][1] == "styles"
