"""Authentication on a real server: a malformed setting stops the start, a login behind a
trusted HTTPS proxy gets a Secure cookie, and a person logs in and out in a real Chromium."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stable_diffusion_api.auth import SESSION_COOKIE
from tests.api.test_browser import browser  # noqa: F401  (the Chromium fixture, reused)
from tests.servers import ROOT, free_port, serving

KEY = "server-test-key-5d21"
USER, PASSWORD = "ann", "a long pass phrase"
HTML = {"accept": "text/html"}


def environment(data: Path, **settings: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DALI_")}
    return env | {"DALI_DATA_DIR": str(data), "OMP_NUM_THREADS": "1"} | settings


@pytest.mark.server
@pytest.mark.parametrize(
    ("command", "settings", "named"),
    [
        (["dali_app.py"], {"DALI_API_AUTH": "ann:pw-one,hunter-two"}, "DALI_API_AUTH entry 2"),
        (["-m", "stable_diffusion_api"], {"DALI_API_AUTH": "ann:"}, "DALI_API_AUTH entry 1"),
        (["dali_app.py"], {"DALI_API_KEY": ""}, "DALI_API_KEY is set but empty"),
    ],
)
def test_a_malformed_setting_stops_the_server_before_it_serves(
    tmp_path: Path, command: list[str], settings: dict[str, str], named: str
) -> None:
    env = environment(tmp_path / "data", DALI_PORT=str(free_port()), **settings)
    done = subprocess.run(
        [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert named in output and "AuthConfigError" in output, output
    assert "Uvicorn running" not in output
    assert "hunter-two" not in output and "pw-one" not in output  # no password in the log


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python dali_app.py` with a key and a user."""
    tmp = tmp_path_factory.mktemp("auth-server")
    env = environment(tmp / "data", DALI_API_KEY=KEY, DALI_API_AUTH=f"{USER}:{PASSWORD}")
    with serving("dali_app.py", free_port(), env, tmp / "server.log", "/internal/ping") as url:
        yield url


@pytest.mark.server
def test_behind_a_trusted_https_proxy_the_cookie_is_secure(server: str) -> None:
    """uvicorn believes X-Forwarded-Proto from the proxies it trusts (127.0.0.1 by default),
    so the login sees https and marks the cookie Secure; over plain http it does not."""
    login = {"password": KEY}
    plain = httpx.post(f"{server}/login", data=login, timeout=30)
    proxied = httpx.post(
        f"{server}/login", data=login, headers={"x-forwarded-proto": "https"}, timeout=30
    )
    for response, secure in ((plain, False), (proxied, True)):
        assert response.status_code == 303, response.text
        [cookie] = [c for c in response.headers.get_list("set-cookie") if SESSION_COOKIE in c]
        assert ("; secure" in cookie.lower()) is secure, cookie
    assert httpx.get(f"{server}/api/v1/projects", timeout=30).status_code == 401
    assert httpx.get(f"{server}/api/v1/health", timeout=30).json() == {"status": "ok"}


@pytest.mark.server
@pytest.mark.browser
def test_a_person_logs_in_and_out_in_a_browser(server: str, browser: Any) -> None:  # noqa: F811
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{server}/hardware")
    assert page.url == f"{server}/login?next=/hardware"
    page.fill("#username", USER)
    page.fill("#password", "not it")
    page.click("button[type=submit]")
    assert page.locator("#password-error").inner_text() == "wrong user name, password or key"
    page.fill("#username", USER)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server}/hardware")
    assert page.locator("h1").first.is_visible()
    [cookie] = [c for c in context.cookies() if c["name"] == SESSION_COOKIE]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
    assert PASSWORD not in cookie["value"] and KEY not in cookie["value"]
    assert SESSION_COOKIE not in page.evaluate("document.cookie")  # scripts cannot read it
    # The pages' script reaches the API with the session too.
    status = page.evaluate("fetch('/api/v1/projects').then(r => r.status)")
    assert status == 200
    page.click("text=Log out")
    page.wait_for_url(f"{server}/login")
    page.goto(f"{server}/")
    assert page.url == f"{server}/login?next=/"
    context.close()
