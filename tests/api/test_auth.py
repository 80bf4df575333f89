"""The optional API key: required on the API and pages when set, cookie login for pages."""

from __future__ import annotations

from fastapi.testclient import TestClient
from pydantic import SecretStr

from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app
from tests.api.fakes import FakeGenerator


def test_api_key_guards_api_and_pages(settings: Settings, fake: FakeGenerator) -> None:
    secured = settings.model_copy(update={"api_key": SecretStr("s3cret")})
    with TestClient(create_app(secured, fake)) as client:
        refused = client.get("/api/v1/projects")
        assert refused.status_code == 401 and "API key" in refused.json()["detail"]
        assert client.get("/api/v1/projects", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/api/v1/projects", headers={"X-API-Key": "s3cret"}).status_code == 200
        bearer = {"Authorization": "Bearer s3cret"}
        assert client.get("/api/v1/projects", headers=bearer).status_code == 200

        page = client.get("/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login?next=/"
        assert client.get("/static/style.css").status_code == 200  # assets stay public
        wrong = client.post("/login", data={"api_key": "nope", "next": "/"})
        assert wrong.status_code == 401
        login = client.post(
            "/login", data={"api_key": "s3cret", "next": "//evil.example"}, follow_redirects=False
        )
        assert login.status_code == 303 and login.headers["location"] == "/"
        assert "httponly" in login.headers["set-cookie"].lower()
        assert client.get("/").status_code == 200  # the cookie now opens pages and the API
        assert client.get("/api/v1/projects").status_code == 200


def test_without_a_key_everything_is_open(client: TestClient) -> None:
    assert client.get("/api/v1/projects").status_code == 200
    assert client.get("/").status_code == 200
