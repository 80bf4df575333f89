"""One authentication model for the whole app (stable_diffusion_api/auth/).

With DALI_API_KEY or DALI_API_AUTH set, every route the app has — walked from `app.routes`,
so a route added later cannot slip through — needs credentials, except the few open ones;
each kind of credential opens every guarded route; a malformed value refuses the start.
Sessions, the cookie and the failure limit: `test_auth_sessions.py`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import SecretStr
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect

from stable_diffusion_api.auth import SESSION_COOKIE, AuthConfigError
from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app
from tests.api.fakes import FakeGenerator

KEY = "s3cret-key-for-tests"
USERS = "alice:wonderland, bob:pa:ss"
HTML = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
# The routes open without credentials, and why: monitors, the way in and out, the login
# page's style sheet, A1111's ping. Everything else is guarded.
OPEN = {
    ("GET", "/api/v1/health"),
    ("GET", "/internal/ping"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),
    ("GET", "/static/"),
}
CONFIGS = {
    "key": {"api_key": SecretStr(KEY)},
    "users": {"api_auth": SecretStr(USERS)},
}


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {token}"}


def every_route(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every route and mount of the app, path parameters filled with 1."""
    app: Any = client.app
    found = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        path = re.sub(r"\{[^}]+\}", "1", context.path or "")
        if isinstance(route, Mount):
            found.append(("GET", path + "/"))
        elif isinstance(route, WebSocketRoute):
            found.append(("WEBSOCKET", path))
        elif isinstance(route, Route):
            found += [
                (method, path) for method in sorted(context.methods or ()) if method != "HEAD"
            ]
        else:
            raise AssertionError(f"a route of a kind this test does not know: {route!r}")
    assert len(found) > 80  # the JSON API, the A1111 API, the pages, the docs
    return found


def send(client: TestClient, method: str, path: str, **kwargs: Any) -> Any:
    if method == "WEBSOCKET":
        with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect(path):
            pass
        return closed.value
    return client.request(method, path, follow_redirects=False, **kwargs)


@pytest.fixture(params=list(CONFIGS))
def secured(
    request: pytest.FixtureRequest, settings: Settings, fake: FakeGenerator
) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update=CONFIGS[request.param]), fake)
    with TestClient(app) as client:
        yield client
    fake.release.set()


def test_every_route_but_the_open_ones_needs_credentials(secured: TestClient) -> None:
    opened = set()
    for method, path in every_route(secured):
        response = send(secured, method, path)
        if method == "WEBSOCKET":
            assert response.code == 1008, path
            continue
        if response.status_code != 401:
            opened.add((method, path))
            continue
        assert response.headers["www-authenticate"].startswith(("Basic", "Bearer")), path
        assert "authentication required" in response.json()["detail"], path
        # A browser asking for a page is sent to the login form; the APIs answer 401 anyway.
        browser = send(secured, method, path, headers=HTML)
        if path.startswith(("/api/", "/sdapi/", "/internal/")):
            assert browser.status_code == 401, (method, path)
        else:
            back = path if method == "GET" else "/"
            assert browser.status_code == 303, (method, path, browser.status_code)
            assert browser.headers["location"] == f"/login?next={back}", (method, path)
    assert opened == OPEN


def test_a_path_no_route_has_is_guarded_too(secured: TestClient) -> None:
    """Nobody learns which paths exist, and a route or mount added later is covered."""
    assert secured.get("/no/such/page").status_code == 401
    assert secured.get("/api/v1/no-such-thing").status_code == 401


def test_the_open_routes_reveal_nothing(secured: TestClient) -> None:
    health = secured.get("/api/v1/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert secured.get("/internal/ping").json() == {}
    assert secured.get("/static/style.css").status_code == 200
    assert "<form" in secured.get("/login").text


def credential_kinds(client: TestClient, config: str) -> dict[str, dict[str, str]]:
    """Headers for each way `config` lets one in; "session" logs in and uses the cookie."""
    if config == "key":
        kinds = {
            "x-api-key": {"x-api-key": KEY},
            "bearer": {"authorization": f"Bearer {KEY}"},
            "basic with the key": basic("anyone", KEY),
        }
        form = {"password": KEY}
    else:
        kinds = {"basic alice": basic("alice", "wonderland"), "basic bob": basic("bob", "pa:ss")}
        form = {"username": "alice", "password": "wonderland"}
    login = client.post("/login", data=form, follow_redirects=False)
    assert login.status_code == 303, login.text
    kinds["session"] = {"cookie": f"{SESSION_COOKIE}={login.cookies[SESSION_COOKIE]}"}
    client.cookies.clear()
    return kinds


@pytest.mark.parametrize("config", list(CONFIGS))
def test_each_kind_of_credential_opens_every_route(
    config: str, settings: Settings, fake: FakeGenerator
) -> None:
    app = create_app(settings.model_copy(update=CONFIGS[config]), fake)
    with TestClient(app) as client:
        guarded = [route for route in every_route(client) if route not in OPEN]
        for kind, headers in credential_kinds(client, config).items():
            for method, path in guarded:
                if method == "WEBSOCKET":
                    continue  # no websocket route exists; the refusal is tested above
                response = send(client, method, path, headers=headers)
                assert response.status_code not in (401, 429), (kind, method, path)
                assert response.status_code not in (500, 502, 503), (kind, method, path)
                location = response.headers.get("location", "")
                assert not location.startswith("/login"), (kind, method, path)
            # The guard lets them through to real answers, not only "not refused".
            assert client.get("/api/v1/projects", headers=headers).json() == [], kind
            assert client.get("/api/v1/health", headers=headers).json()["devices"], kind
            assert "Projects" in client.get("/", headers=headers).text, kind
    fake.release.set()


def test_wrong_credentials_are_refused(secured: TestClient) -> None:
    # A wrong Basic password from a browser is asked again (401), not sent to a login page.
    assert secured.get("/", headers=HTML | basic("alice", "nope")).status_code == 401
    wrong = [
        {"x-api-key": "wrong"},
        {"authorization": "Bearer wrong"},
        basic("eve", "wonderland"),  # a password of another user, under a name that is none
        {"authorization": "Basic not-base64!"},
    ]
    for headers in wrong:
        response = secured.get("/api/v1/projects", headers=headers)
        assert response.status_code == 401, headers
    # That was five failures: the sixth attempt is not even looked at (test_auth_sessions.py).
    assert secured.get("/api/v1/projects", headers=basic("x", "y")).status_code == 429


def test_a_user_and_the_key_together(settings: Settings, fake: FakeGenerator) -> None:
    """Either credential is enough when both are configured; a user's password is not the key."""
    both = settings.model_copy(update=CONFIGS["key"] | CONFIGS["users"])
    with TestClient(create_app(both, fake)) as client:
        assert client.get("/sdapi/v1/samplers", headers=basic("alice", "wonderland")).is_success
        assert client.get("/sdapi/v1/samplers", headers={"x-api-key": KEY}).is_success
        assert client.get("/sdapi/v1/samplers", headers=basic("alice", KEY)).is_success
        refused = client.get("/sdapi/v1/samplers", headers={"x-api-key": "wonderland"})
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == 'Basic realm="Dali", Bearer realm="Dali"'


def test_api_key_guards_api_and_pages(settings: Settings, fake: FakeGenerator) -> None:
    secured = settings.model_copy(update={"api_key": SecretStr("s3cret")})
    with TestClient(create_app(secured, fake)) as client:
        refused = client.get("/api/v1/projects")
        assert refused.status_code == 401 and "API key" in refused.json()["detail"]
        assert client.get("/api/v1/projects", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/api/v1/projects", headers={"X-API-Key": "s3cret"}).status_code == 200
        bearer = {"Authorization": "Bearer s3cret"}
        assert client.get("/api/v1/projects", headers=bearer).status_code == 200

        page = client.get("/", headers=HTML, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login?next=/"
        assert client.get("/static/style.css").status_code == 200  # assets stay public
        wrong = client.post("/login", data={"password": "nope", "next": "/"})
        assert wrong.status_code == 401
        login = client.post(
            "/login", data={"password": "s3cret", "next": "//evil.example"}, follow_redirects=False
        )
        assert login.status_code == 303 and login.headers["location"] == "/"
        assert "httponly" in login.headers["set-cookie"].lower()
        assert "s3cret" not in login.headers["set-cookie"]  # a session, not the key
        assert client.get("/").status_code == 200  # the cookie now opens pages and the API
        assert client.get("/api/v1/projects").status_code == 200


def test_without_credentials_configured_everything_is_open(client: TestClient) -> None:
    assert client.get("/api/v1/projects").status_code == 200
    assert client.get("/").status_code == 200
    assert client.get("/api/v1/health").json()["devices"]
    assert client.get("/login", follow_redirects=False).headers["location"] == "/"


@pytest.mark.parametrize(
    ("update", "words"),
    [
        ({"api_auth": SecretStr("alice:wonderland,hunter2")}, ["DALI_API_AUTH", "entry 2", "':'"]),
        ({"api_auth": SecretStr("alice:")}, ["DALI_API_AUTH", "entry 1", "empty password"]),
        ({"api_auth": SecretStr(":hunter2")}, ["DALI_API_AUTH", "entry 1", "empty user name"]),
        ({"api_auth": SecretStr("bob:hunter2,bob:x")}, ["DALI_API_AUTH", "entry 2", "earlier"]),
        ({"api_auth": SecretStr(" ")}, ["DALI_API_AUTH", "empty"]),
        ({"api_key": SecretStr("")}, ["DALI_API_KEY", "empty"]),
        ({"api_key": SecretStr(" hunter2")}, ["DALI_API_KEY", "white space"]),
    ],
)
def test_a_malformed_setting_refuses_to_build_the_app(
    settings: Settings, fake: FakeGenerator, update: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(AuthConfigError) as refused:
        create_app(settings.model_copy(update=update), fake)
    message = str(refused.value)
    for word in words:
        assert word in message
    assert "hunter2" not in message  # a password is never echoed
    assert "user:password pairs" in message or "DALI_API_KEY" in message
