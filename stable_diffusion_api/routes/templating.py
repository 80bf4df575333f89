"""The pages' Jinja2 environment: its filters and globals, and the two ways pages answer.

`make_templates()` is built once per app (`create_app()` keeps it in `app.state.templates`);
`render` answers a page with it, `render_error` answers an error view for the error handlers.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from stable_diffusion_api import __version__
from stable_diffusion_api.auth import identity_of
from stable_diffusion_api.config import STATIC_DIR, TEMPLATES_DIR

SIZE_CHOICES = (64, 128, 256, 320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960, 1024)


def filesize(value: int | None) -> str:
    if value is None:
        return "unknown"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def when(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""


def seconds(value: float | None) -> str:
    if value is None:
        return "not measured"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def static(path: str) -> str:
    # The file's mtime in the URL: browsers may cache static files, and still see new ones.
    stamp = int((STATIC_DIR / path).stat().st_mtime) if (STATIC_DIR / path).exists() else 0
    return f"/static/{path}?v={stamp}"


def signed_in(request: Request) -> bool:
    """Whether the page was asked for with a login session (and so offers "Log out")."""
    identity = identity_of(request)
    return identity is not None and identity.method == "session"


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    templates.env.filters.update(filesize=filesize, when=when, seconds=seconds)
    templates.env.globals.update(
        static=static, version=__version__, size_choices=SIZE_CHOICES, signed_in=signed_in
    )
    return templates


def render(
    request: Request, template: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(request, template, context, status_code=status_code)


def render_error(
    templates: Jinja2Templates, request: Request, status: int, title: str, details: list[str]
) -> Response:
    return templates.TemplateResponse(
        request,
        "error.html",
        {"status": status, "title": title, "details": details},
        status_code=status,
    )
