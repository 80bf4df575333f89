"""The interactive API documentation (`/docs`, Swagger UI; `/redoc`, ReDoc), served offline.

FastAPI's own pages load their scripts and styles from a CDN, so on a studio without internet
access they were blank. Here the same pages load them from this server: the assets come from the
`fastapi-offline` package (which ships Swagger UI's and ReDoc's builds), mounted at
`ASSETS_PATH`. Nothing on these pages asks for anything beyond this server (no CDN, no Google
Fonts, no remote favicon); a browser test holds them to that.

`create_app()` builds the app with `docs_url=None, redoc_url=None` and calls `install_api_docs`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/docs-assets"
SWAGGER_JS = f"{ASSETS_PATH}/swagger-ui-bundle.js"
SWAGGER_CSS = f"{ASSETS_PATH}/swagger-ui.css"
REDOC_JS = f"{ASSETS_PATH}/redoc.standalone.js"
FAVICON = "/static/favicon.svg"
# The pages' own policy (the studio-wide one in middleware.py has no room for their inline
# start-up scripts). ReDoc's bundle shows a logo from cdn.redoc.ly that no option turns off:
# `img-src` keeps the browser from fetching it. ReDoc runs its search in a blob: worker.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'"
)


def assets_dir() -> Path:
    """The folder of Swagger UI's and ReDoc's built files inside the installed package."""
    return Path(str(files("fastapi_offline") / "static"))


def install_api_docs(app: FastAPI) -> None:
    """Add `/docs` and `/redoc` (hidden from the schema) and mount their assets."""
    title = f"{app.title} API"
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return with_policy(
            get_swagger_ui_html(
                openapi_url=openapi_url,
                title=title,
                swagger_js_url=SWAGGER_JS,
                swagger_css_url=SWAGGER_CSS,
                swagger_favicon_url=FAVICON,
                # No badge fetched from validator.swagger.io: the spec is checked by nobody else.
                swagger_ui_parameters={"validatorUrl": None},
            )
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return with_policy(
            get_redoc_html(
                openapi_url=openapi_url,
                title=title,
                redoc_js_url=REDOC_JS,
                redoc_favicon_url=FAVICON,
                with_google_fonts=False,
            )
        )

    app.mount(ASSETS_PATH, StaticFiles(directory=assets_dir()), name="docs-assets")


def with_policy(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page
