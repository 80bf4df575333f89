"""Error messages in people's words, in the API, the page forms and every error kind we send.

pydantic's own text ("Input should be greater than or equal to 1", "Value error, …") is never
what a user reads; the API keeps each error's `type` and `loc` for clients.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field, ValidationError

from stable_diffusion_api.error_text import human_message
from stable_diffusion_api.routes import forms
from stable_diffusion_api.routes.forms import FormInvalid
from tests.api.test_forms import form, invalid

PYDANTIC_WORDING = ("Input should", "Value error", "String should", "Field required")


class Sample(BaseModel):
    steps: int = Field(ge=1, le=150)
    scale: float = Field(gt=0, lt=10, allow_inf_nan=False)
    name: str = Field(min_length=1, max_length=5)
    tags: list[str] = Field(default_factory=list, max_length=2)


def messages(**data: object) -> dict[str, str]:
    with pytest.raises(ValidationError) as exc:
        Sample.model_validate(data)
    return {str(e["loc"][0]): human_message(dict(e)) for e in exc.value.errors()}


def test_each_kind_reads_as_a_sentence() -> None:
    assert messages(steps=0, scale=10, name="", tags=["a", "b", "c"]) == {
        "steps": "must be at least 1",
        "scale": "must be less than 10",
        "name": "must not be empty",
        "tags": "takes at most 2 items",
    }
    assert messages(steps=151, scale=0, name="abcdef") == {
        "steps": "must be at most 150",
        "scale": "must be more than 0",
        "name": "must be at most 5 characters long",
    }
    assert messages(steps="many", scale="nan", name=3) == {
        "steps": "must be a whole number",
        "scale": "must be a finite number (not NaN or infinity)",
        "name": "must be text",
    }
    assert messages(scale=1, name="a") == {"steps": "is required"}


def test_value_errors_lose_pydantics_prefix_and_context_less_errors_keep_their_text() -> None:
    assert human_message({"type": "value_error", "msg": "Value error, must not be blank"}) == (
        "must not be blank"
    )
    # An error rebuilt without its context (e.g. relocated to an A1111 field) is left as is.
    rebuilt = {"type": "greater_than_equal", "msg": "Input should be >= 1"}
    assert human_message(rebuilt) == "Input should be >= 1"


def test_the_api_answers_in_words_and_keeps_type_and_location(client: TestClient) -> None:
    response = client.post(
        "/api/v1/projects", json={"name": "  ", "defaults": {"steps": 0, "sampler": 5}}
    )
    assert response.status_code == 422
    errors = {tuple(e["loc"]): e for e in response.json()["detail"]}
    steps = errors[("body", "defaults", "steps")]
    assert steps["type"] == "greater_than_equal" and steps["msg"] == "must be at least 1"
    assert errors[("body", "name")]["msg"] == "must not be blank"
    for error in errors.values():
        assert not error["msg"].startswith(PYDANTIC_WORDING), error


def test_a_page_form_shows_the_same_words_beside_the_field(client: TestClient) -> None:
    with pytest.raises(FormInvalid) as exc:
        forms.project_create(form(name="x", steps="0", guidance="lots"))
    assert invalid(exc, "steps").message == "must be at least 1"
    assert invalid(exc, "guidance").message == "must be a number"
    page = client.post(
        "/projects", data={"name": "x", "steps": "0"}, headers={"accept": "text/html"}
    )
    assert page.status_code == 422
    assert "must be at least 1" in page.text
    assert not any(wording in page.text for wording in PYDANTIC_WORDING)


def test_bad_json_is_named_plainly(client: TestClient) -> None:
    response = client.post(
        "/api/v1/projects", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["type"] == "json_invalid" and error["msg"].startswith("is not valid JSON")
