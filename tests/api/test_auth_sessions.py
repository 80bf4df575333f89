"""The login session (stable_diffusion_api/auth/sessions.py) and the failure limit
(auth/limiter.py): the cookie holds a signed, expiring token, never a secret; a forged,
expired, logged-out or outdated token is refused; failed attempts lock an address out."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from stable_diffusion_api.auth import LEGACY_COOKIE, SESSION_COOKIE, Authenticator
from stable_diffusion_api.auth.limiter import FailureLimiter
from stable_diffusion_api.auth.sessions import SECRET_FILE, load_or_create_secret
from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app
from tests.api.fakes import FakeGenerator

KEY = "the-key-4f9a"
ANN = ("ann", "ann's pass:word")
HTML = {"accept": "text/html"}


def configured(settings: Settings, **update: object) -> Settings:
    base = {"api_key": SecretStr(KEY), "api_auth": SecretStr(f"{ANN[0]}:{ANN[1]}")}
    return settings.model_copy(update=base | update)


@pytest.fixture
def client(settings: Settings, fake: FakeGenerator) -> Iterator[TestClient]:
    with TestClient(create_app(configured(settings), fake)) as test_client:
        yield test_client
    fake.release.set()


def log_in(client: TestClient, username: str, password: str) -> str:
    """Log in through the form; the session token the cookie got."""
    response = client.post(
        "/login", data={"username": username, "password": password}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    token: str = response.cookies[SESSION_COOKIE]
    return token


def session_cookie(response: httpx.Response) -> set[str]:
    """The attributes of the session cookie a response sets, lower case."""
    headers = response.headers.get_list("set-cookie")
    [cookie] = [h for h in headers if h.startswith(f"{SESSION_COOKIE}=")]
    return {part.strip().lower() for part in cookie.split(";")}


def opens(client: TestClient, token: str) -> bool:
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, token)
    response = client.get("/api/v1/projects")
    client.cookies.clear()
    return response.status_code == 200


def test_the_cookie_is_a_signed_session_never_the_secret(client: TestClient) -> None:
    response = client.post("/login", data={"password": KEY}, follow_redirects=False)
    token = response.cookies[SESSION_COOKIE]
    payload = base64.urlsafe_b64decode(token.split(".")[1] + "==")
    assert KEY not in " ".join(response.headers.get_list("set-cookie"))
    assert KEY.encode() not in payload and b'"sub":"key"' in payload
    attributes = session_cookie(response)
    assert {"httponly", "samesite=strict", "path=/", "max-age=86400"} <= attributes
    assert "secure" not in attributes  # plain HTTP: a Secure cookie would never come back
    # The old cookie, which held the key, is deleted from the browser.
    assert f'{LEGACY_COOKIE}=""' in " ".join(response.headers.get_list("set-cookie"))
    assert opens(client, token)
    user_token = log_in(client, *ANN)
    assert ANN[1] not in user_token and opens(client, user_token)


def test_over_https_the_cookie_is_secure(settings: Settings, fake: FakeGenerator) -> None:
    app = create_app(configured(settings, session_hours=2.5), fake)
    with TestClient(app, base_url="https://testserver") as client:
        response = client.post("/login", data={"password": KEY}, follow_redirects=False)
        attributes = session_cookie(response)
        assert {"secure", "httponly", "samesite=strict", "max-age=9000"} <= attributes
        assert client.get("/api/v1/projects").status_code == 200


def test_the_server_secret_is_private_to_its_owner(client: TestClient, settings: Settings) -> None:
    secret = settings.resolved_data_dir / SECRET_FILE  # made at start-up, not at a request
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(load_or_create_secret(secret)) == 32
    assert KEY not in secret.read_text() and ANN[1] not in secret.read_text()


def test_a_loose_or_damaged_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / SECRET_FILE
    first = load_or_create_secret(secret)
    secret.chmod(0o644)  # copied with looser permissions: tightened, and kept
    assert load_or_create_secret(secret) == first
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    secret.write_text("not hex")
    with pytest.raises(RuntimeError, match="is damaged: delete it"):
        load_or_create_secret(secret)


def forge(token: str, **changes: object) -> str:
    """`token` with its payload changed and its signature kept."""
    version, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body |= changes
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    return f"{version}.{forged}.{signature}"


def test_a_forged_or_expired_session_is_refused(client: TestClient) -> None:
    token = log_in(client, *ANN)
    assert opens(client, token)
    assert not opens(client, forge(token, sub="key"))  # another subject
    assert not opens(client, forge(token, exp=2**40))  # a later expiry
    assert not opens(client, token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
    for junk in ("", "v1..", "v1.e30.", "x" * 2000, "v1.!!!.abc", KEY):
        assert not opens(client, junk), junk
    # The old cookie, holding the key itself, opens nothing any more.
    client.cookies.set(LEGACY_COOKIE, KEY)
    assert client.get("/api/v1/projects").status_code == 401
    client.cookies.clear()
    # Past its expiry, a token signed by this very server is refused.
    auth: Authenticator = client.app.state.auth  # type: ignore[attr-defined]
    lifetime = auth.sessions.lifetime_s
    now = auth.sessions.clock()
    assert opens(client, auth.sessions.issue("user:ann", now=now - lifetime + 60))
    assert not opens(client, auth.sessions.issue("user:ann", now=now - lifetime - 1))


def test_another_server_secret_or_a_changed_password_ends_the_session(
    settings: Settings, fake: FakeGenerator, tmp_path: Path
) -> None:
    with TestClient(create_app(configured(settings), fake)) as client:
        key_token, ann_token = log_in(client, "", KEY), log_in(client, *ANN)
    elsewhere = configured(settings, data_dir=tmp_path / "elsewhere")
    with TestClient(create_app(elsewhere, fake)) as client:
        assert not opens(client, key_token) and not opens(client, ann_token)
    # Ann's password changes: her session ends; the key's, unchanged, goes on.
    changed = configured(settings, api_auth=SecretStr("ann:a new password"))
    with TestClient(create_app(changed, fake)) as client:
        assert opens(client, key_token)
        assert not opens(client, ann_token)
    # The key is taken away: its sessions end too.
    no_key = configured(settings, api_key=None)
    with TestClient(create_app(no_key, fake)) as client:
        assert not opens(client, key_token)


def test_logout_ends_the_session_and_clears_the_cookie(client: TestClient) -> None:
    token = log_in(client, *ANN)
    page = client.get("/", headers=HTML)
    assert page.status_code == 200 and 'action="/logout"' in page.text
    # Signed in with a header, not a session: nothing to log out of.
    client.cookies.clear()
    assert 'action="/logout"' not in client.get("/", headers={"x-api-key": KEY}).text
    client.cookies.set(SESSION_COOKIE, token)
    out = client.post("/logout", follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert {f'{SESSION_COOKIE}=""', "max-age=0"} <= session_cookie(out)
    assert not opens(client, token)  # a copy of the cookie is refused too


def test_login_goes_back_only_to_a_page_of_this_site(client: TestClient) -> None:
    for target, lands in [
        ("/projects/1?x=2", "/projects/1?x=2"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example", "/"),
    ]:
        response = client.post(
            "/login", data={"password": KEY, "next": target}, follow_redirects=False
        )
        assert response.headers["location"] == lands, target


def test_five_failed_logins_lock_the_address_out(client: TestClient) -> None:
    for _ in range(5):
        wrong = client.post("/login", data={"username": "ann", "password": "guess"})
        assert wrong.status_code == 401 and "wrong user name, password or key" in wrong.text
    locked = client.post("/login", data={"username": ANN[0], "password": ANN[1]})
    assert locked.status_code == 429
    assert 1 <= int(locked.headers["retry-after"]) <= 60
    assert "too many failed sign-in attempts" in locked.text
    # The key and Basic are locked out too (the same address), before they are even checked.
    for headers in ({"x-api-key": KEY}, {"authorization": f"Bearer {KEY}"}):
        response = client.get("/api/v1/projects", headers=headers)
        assert response.status_code == 429 and response.headers["retry-after"]
        assert "try again in" in response.json()["detail"]
    assert client.get("/api/v1/projects", auth=ANN).status_code == 429
    # Another address is not.
    other = TestClient(client.app, client=("192.0.2.7", 4000))  # the same running app
    assert other.get("/api/v1/projects", headers={"x-api-key": KEY}).status_code == 200


def test_a_session_still_works_while_its_address_is_locked_out(client: TestClient) -> None:
    token = log_in(client, *ANN)
    client.cookies.set(SESSION_COOKIE, token)
    for _ in range(5):  # a wrong header is refused, even beside a valid cookie
        assert client.get("/api/v1/projects", headers={"x-api-key": "guess"}).status_code == 401
    assert client.get("/api/v1/projects", headers={"x-api-key": KEY}).status_code == 429
    assert opens(client, token)  # a valid session is no guess
    # While locked out, the open health check tells nothing about a guess either.
    health = client.get("/api/v1/health", headers={"x-api-key": KEY})
    assert health.status_code == 200 and health.json() == {"status": "ok"}


def test_the_limit_counts_failures_within_a_minute() -> None:
    now = [1000.0]
    limiter = FailureLimiter(clock=lambda: now[0])
    for _ in range(4):
        limiter.failed("10.0.0.1")
        now[0] += 10
    assert limiter.retry_after("10.0.0.1") is None  # four failures: one more try allowed
    limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == pytest.approx(20.0)  # the first is 40 s old
    assert limiter.retry_after("10.0.0.2") is None
    now[0] += 20.5
    assert limiter.retry_after("10.0.0.1") is None  # the oldest failure left the window
    limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == pytest.approx(9.5)
