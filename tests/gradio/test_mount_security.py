"""The Gradio UI mounted at /gradio (DALI_GRADIO=1) sits behind the same API key as the rest of
Dali, and reads no file on the server that a user did not upload to it.

- With DALI_API_KEY set, every request under /gradio (the page, its config and assets, the
  queue, uploads, file downloads, API calls) needs the key (X-API-Key, a Bearer token or the
  pages' login session): a browser's page load without it is sent to `/login?next=…`,
  anything else gets a 401. The same holds for DALI_API_AUTH's users: the app's one guard
  (stable_diffusion_api/auth/) is in front of the mount. Without credentials configured
  nothing changes (`test_mount.py`).
- An input's file must be one Gradio received as an upload: a call that names a path on the
  server (`{"path": "/etc/hostname"}` instead of an uploaded file) is refused, and the file is
  neither read nor copied into Gradio's cache.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from gradio_client import Client, handle_file
from PIL import Image, PngImagePlugin
from pydantic import SecretStr

import dali_app
from stable_diffusion_api.auth import LEGACY_COOKIE, SESSION_COOKIE
from stable_diffusion_api.config import Settings
from tests.servers import free_port, serving

KEY = "gradio-test-key-1234"
SECRET = "Steps: 7, Sampler: Euler, CFG scale: 5, Seed: 424242, Size: 64x64 NOTFORYOU"
HTML = {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def png_bytes(parameters: str | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


# Every kind of request the mounted app answers: page, config, assets, API description, queue,
# upload, file download, a direct API call.
GUARDED: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/gradio/config", {}),
    ("GET", "/gradio/theme.css", {}),
    ("GET", "/gradio/gradio_api/info", {}),
    ("GET", "/gradio/gradio_api/file=/etc/hostname", {}),
    ("POST", "/gradio/gradio_api/queue/join", {"json": {"data": [], "fn_index": 0}}),
    ("GET", "/gradio/gradio_api/queue/data?session_hash=abc", {}),
    ("POST", "/gradio/gradio_api/call/png_info", {"json": {"data": [None]}}),
    ("POST", "/gradio/gradio_api/run/png_info", {"json": {"data": [None]}}),
    (
        "POST",
        "/gradio/gradio_api/upload",
        {"files": {"files": ("a.png", png_bytes(), "image/png")}},
    ),
]


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[TestClient]:
    app = dali_app.create_app(
        Settings(data_dir=tmp_path / "data", gradio=True, api_key=SecretStr(KEY))
    )
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client


def test_without_the_key_every_gradio_request_is_refused(keyed: TestClient) -> None:
    page = keyed.get("/gradio/", headers=HTML, follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=/gradio/"
    # A script's request for the page (no text/html accepted) is a 401, like the rest.
    assert keyed.get("/gradio/", follow_redirects=False).status_code == 401
    for method, path, kwargs in GUARDED:
        response = keyed.request(method, path, follow_redirects=False, **kwargs)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["content-type"].startswith("application/json"), path
        assert "API key" in response.json()["detail"], path
    # A wrong key is no key; neither is a forged session, nor the old cookie with the key.
    for headers in ({"x-api-key": "wrong"}, {"authorization": "Bearer wrong"}):
        assert keyed.get("/gradio/config", headers=headers).status_code == 401
    keyed.cookies.set(SESSION_COOKIE, "wrong")
    assert keyed.get("/gradio/", headers=HTML, follow_redirects=False).status_code == 303
    keyed.cookies.clear()
    keyed.cookies.set(LEGACY_COOKIE, KEY)
    assert keyed.get("/gradio/", headers=HTML, follow_redirects=False).status_code == 303


def test_with_the_key_or_the_login_cookie_the_ui_answers(keyed: TestClient) -> None:
    for headers in ({"x-api-key": KEY}, {"authorization": f"Bearer {KEY}"}):
        config = keyed.get("/gradio/config", headers=headers)
        assert config.status_code == 200, config.text
        assert "png_info" in {d.get("api_name") for d in config.json()["dependencies"]}
        uploaded = keyed.post(
            "/gradio/gradio_api/upload",
            headers=headers,
            files={"files": ("a.png", png_bytes(), "image/png")},
        )
        assert uploaded.status_code == 200, uploaded.text
    # The pages' login: the form sends the person back to the UI with the cookie set.
    login = keyed.post("/login", data={"password": KEY, "next": "/gradio/"}, follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == "/gradio/"
    assert SESSION_COOKIE in keyed.cookies
    page = keyed.get("/gradio/", headers=HTML, follow_redirects=False)
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert keyed.get("/gradio/config").status_code == 200
    # The service's own API is guarded as before, by its own routes.
    keyed.cookies.clear()
    assert keyed.get("/api/v1/projects").status_code == 401


def test_users_alone_guard_the_ui_too(tmp_path: Path) -> None:
    """DALI_API_AUTH without a key: the same guard, a user's credentials open the UI."""
    users = Settings(data_dir=tmp_path / "data", gradio=True, api_auth=SecretStr("ann:pass-word"))
    with TestClient(dali_app.create_app(users), base_url="http://127.0.0.1") as client:
        page = client.get("/gradio/", headers=HTML, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login?next=/gradio/"
        for method, path, kwargs in GUARDED:
            response = client.request(method, path, follow_redirects=False, **kwargs)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"].startswith("Basic"), path
        assert client.get("/gradio/config", auth=("ann", "pass-word")).status_code == 200
        login = client.post(
            "/login",
            data={"username": "ann", "password": "pass-word", "next": "/gradio/"},
            follow_redirects=False,
        )
        assert login.status_code == 303 and login.headers["location"] == "/gradio/"
        assert client.get("/gradio/config").status_code == 200


# --------------------------------------------------------------------------- a real server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`python dali_app.py` with DALI_GRADIO=1 and DALI_API_KEY, on a fresh data directory
    (one for the session: tests/gradio/test_phone_layout.py looks at the same UI)."""
    tmp = tmp_path_factory.mktemp("gradio-mount")
    port = free_port()
    cache = tmp / "gradio-cache"
    env = {key: value for key, value in os.environ.items() if not key.startswith("DALI_")}
    env.update(
        DALI_GRADIO="1",
        DALI_API_KEY=KEY,
        DALI_DATA_DIR=str(tmp / "data"),
        GRADIO_TEMP_DIR=str(cache),
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )
    log = tmp / "server.log"
    with serving("dali_app.py", port, env, log, "/internal/ping") as url:
        yield {"url": url, "tmp": tmp, "cache": cache, "log": log}


def call(url: str, api_name: str, data: list[Any], headers: dict[str, str]) -> str:
    """POST /gradio_api/call/<name> then read its event stream: the whole stream's text."""
    with httpx.Client(base_url=f"{url}/gradio", headers=headers, timeout=60) as http:
        started = http.post(f"/gradio_api/call/{api_name}", json={"data": data})
        assert started.status_code == 200, started.text
        event_id = started.json()["event_id"]
        return http.get(f"/gradio_api/call/{api_name}/{event_id}").text


def server_file(path: Path | str) -> dict[str, Any]:
    """What a client sends in place of an upload to name a file on the server."""
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


@pytest.mark.server
def test_real_server_refuses_without_the_key(server: dict[str, Any]) -> None:
    url = server["url"]
    page = httpx.get(f"{url}/gradio/", headers=HTML, follow_redirects=False, timeout=30)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/gradio/"
    assert httpx.get(f"{url}/gradio/config", timeout=30).status_code == 401
    started = httpx.post(
        f"{url}/gradio/gradio_api/call/png_info", json={"data": [None]}, timeout=30
    )
    assert started.status_code == 401
    uploaded = httpx.post(
        f"{url}/gradio/gradio_api/upload",
        files={"files": ("a.png", png_bytes(SECRET), "image/png")},
        timeout=30,
    )
    assert uploaded.status_code == 401
    with pytest.raises(Exception, match="credentials were not provided|401"):
        Client(f"{url}/gradio/", verbose=False)


@pytest.mark.server
def test_real_server_with_the_key_reads_an_uploaded_png(server: dict[str, Any]) -> None:
    tmp: Path = server["tmp"]
    (tmp / "upload.png").write_bytes(png_bytes(SECRET.replace("NOTFORYOU", "uploaded")))
    client = Client(
        f"{server['url']}/gradio/",
        headers={"X-API-Key": KEY},
        verbose=False,
        download_files=str(tmp / "downloads"),
    )
    text, fields, _ = client.predict(handle_file(tmp / "upload.png"), api_name="/png_info")
    assert "Seed: 424242" in text and fields["seed"] == 424242
    # The login's session cookie does as well as the header.
    login = httpx.post(
        f"{server['url']}/login", data={"password": KEY}, follow_redirects=False, timeout=30
    )
    assert login.status_code == 303, login.text
    headers = {"cookie": f"{SESSION_COOKIE}={login.cookies[SESSION_COOKIE]}"}
    with httpx.Client(base_url=f"{server['url']}/gradio", headers=headers, timeout=60) as http:
        uploaded = http.post(
            "/gradio_api/upload", files={"files": ("b.png", png_bytes(SECRET), "image/png")}
        )
        assert uploaded.status_code == 200, uploaded.text
        [path] = uploaded.json()
    stream = call(server["url"], "png_info", [server_file(path)], headers)
    assert "event: complete" in stream and "424242" in stream, stream


@pytest.mark.server
@pytest.mark.parametrize("api_name", ["png_info", "forward", "forward_strip"])
def test_real_server_reads_no_file_it_was_not_sent(server: dict[str, Any], api_name: str) -> None:
    """A path on the server in place of an upload: refused, not read, not copied to the cache."""
    tmp: Path = server["tmp"]
    cache: Path = server["cache"]
    secret = tmp / f"secret-{api_name}.png"
    secret.write_bytes(png_bytes(SECRET))
    hostname = Path("/etc/hostname")
    targets = [secret] + ([hostname] if hostname.is_file() else [])
    rest = {
        "png_info": [],
        "forward": [0, 0, "", "cpu", "auto"],
        "forward_strip": [0, "", "cpu", "auto"],
    }
    headers = {"x-api-key": KEY}
    for target in targets:
        stream = call(server["url"], api_name, [server_file(target), *rest[api_name]], headers)
        assert "event: error" in stream, stream
        assert "event: complete" not in stream, stream
        assert "NOTFORYOU" not in stream and "424242" not in stream, stream
        if target == hostname:
            content = hostname.read_text().strip()
            assert not content or content not in stream.replace(str(hostname), ""), stream
        assert "uploaded" in _error_message(stream), stream
        copies = list(cache.rglob(target.name)) if cache.exists() else []
        assert copies == [], copies


def _error_message(stream: str) -> str:
    for line in stream.splitlines():
        if line.startswith("data:"):
            try:
                data = json.loads(line.removeprefix("data:").strip())
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("message"):
                return str(data["message"])
            if isinstance(data, str):
                return data
    return stream


@pytest.mark.server
def test_standalone_launcher_asks_for_the_key(tmp_path: Path) -> None:
    """`python sd_gradio.py` with DALI_API_KEY and DALI_API_AUTH: Gradio's own login, with the
    key as the password (any user name) or a user's own password."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("DALI_")}
    env.update(
        DALI_API_KEY=KEY,
        DALI_API_AUTH="ann:pass-word",
        DALI_DATA_DIR=str(tmp_path / "data"),
        GRADIO_TEMP_DIR=str(tmp_path / "gradio-cache"),
        OMP_NUM_THREADS="1",
    )
    log = tmp_path / "server.log"
    with (
        serving("sd_gradio.py", port, env, log, "/config") as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        assert http.get("/config").status_code == 401
        wrong = http.post("/login", data={"username": "me", "password": "wrong"})
        assert wrong.status_code >= 400
        assert http.get("/config").status_code == 401
        assert http.post("/login", data={"username": "me", "password": KEY}).status_code == 200
        assert http.get("/config").status_code == 200
        http.cookies.clear()
        assert http.post("/login", data={"username": "ann", "password": "nope"}).status_code >= 400
        ann = {"username": "ann", "password": "pass-word"}
        assert http.post("/login", data=ann).status_code == 200
        assert http.get("/config").status_code == 200
