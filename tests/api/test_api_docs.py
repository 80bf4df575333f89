"""`/docs` and `/redoc` work offline: their pages load every asset from this server.

FastAPI's default pages pull Swagger UI and ReDoc from a CDN, so without internet access they
were blank. The first tests read the HTML and fetch what it names; the browser test renders
both pages in Chromium and fails on any request that leaves 127.0.0.1.
"""

from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest
from fastapi.testclient import TestClient

from tests.api.test_browser import DESKTOP, browser, data_dir, server  # noqa: F401  (fixtures)

REDOC_LOGO_BLOCKED = "Loading the image 'https://cdn.redoc.ly/redoc/logo-mini.svg' violates"
ASSET = re.compile(r"""(?:src|href|url)\s*[=:(]\s*['"]([^'"]+)['"]""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_name_only_local_assets(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    html = response.text
    assert "cdn." not in html and "fonts.googleapis" not in html
    urls = ASSET.findall(html)
    scripts = [url for url in urls if url.endswith(".js")]
    assert scripts, f"{page} names no script"
    for url in urls:
        assert url.startswith("/"), f"{page} loads {url} from elsewhere"
        asset = client.get(url)
        assert asset.status_code == 200, url
        if url.endswith(".js"):
            assert len(asset.content) > 100_000, f"{url} is not the real bundle"


def test_openapi_schema_still_served(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "/api/v1/projects" in schema["paths"]
    # The docs routes themselves are not API operations.
    assert "/docs" not in schema["paths"] and "/redoc" not in schema["paths"]


@pytest.mark.browser
@pytest.mark.parametrize(
    ("page", "rendered"),
    [("/docs", ".opblock"), ("/redoc", "[data-section-id^='operation/']")],
)
def test_docs_render_in_a_browser_without_leaving_this_machine(
    server: tuple[str, str],  # noqa: F811
    browser,  # noqa: F811, ANN001
    page: str,
    rendered: str,
) -> None:
    base, _ = server
    context = browser.new_context(viewport=DESKTOP)
    tab = context.new_page()
    outside: list[str] = []
    errors: list[str] = []

    def guard(route) -> None:  # noqa: ANN001
        # Every request that reaches the network layer passes here; one for another host
        # is recorded and stopped (a request the page's CSP blocks never gets this far).
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    tab.on("pageerror", lambda error: errors.append(str(error)))

    def console(message) -> None:  # noqa: ANN001
        # The one error expected: the CSP stopping ReDoc's hard-wired CDN logo.
        if message.type == "error" and REDOC_LOGO_BLOCKED not in message.text:
            errors.append(message.text)

    tab.on("console", console)
    tab.goto(f"{base}{page}")
    tab.wait_for_selector(rendered, timeout=30_000)
    operations = tab.locator(rendered).count()
    context.close()
    assert outside == [], f"{page} asked the internet for {outside}"
    assert errors == []
    assert operations >= 20, f"{page} shows only {operations} operations"
