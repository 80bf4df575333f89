"""The ASGI application: `uvicorn stable_diffusion_api.sd_api:app`.

`create_app()` wires everything from `Settings` (environment variables `DALI_*`): the studio
(database, services, workers), the routers, the templates, static files and error handlers.
Importing this module builds the app but starts nothing heavy: migrations, hardware detection
and the worker threads start in the lifespan, and models load lazily in the workers.

The seed's command `cd stable_diffusion_api && uvicorn sd_api:app --reload` also works: imported
as a top-level module, this file first puts the repository root on `sys.path` so the package
(and sd_core) can be imported; nothing else differs.
"""

# ruff: noqa: E402  (the sys.path line must run before the package imports)
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # `cd stable_diffusion_api && uvicorn sd_api:app`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from stable_diffusion_api import __version__
from stable_diffusion_api.config import STATIC_DIR, Settings
from stable_diffusion_api.deps import LoginRequired
from stable_diffusion_api.errors import install_error_handlers
from stable_diffusion_api.routes import a1111, api, events, pages
from stable_diffusion_api.services import Studio
from stable_diffusion_api.services.generator import Generator
from stable_diffusion_api.services.studio import freeze_long_lived_objects

DESCRIPTION = """Dali: a self-hosted Stable Diffusion v1.x studio.

Create a project (its hardware, default model and settings), queue generations with
`POST /api/v1/projects/{id}/generations` (202), follow them with Server-Sent Events at
`/api/v1/generations/{id}/events`, and fetch the images from the project's gallery."""


def create_app(settings: Settings | None = None, generator: Generator | None = None) -> FastAPI:
    """Build the application. `generator` replaces the sd_core engine (tests pass a fake)."""
    settings = settings if settings is not None else Settings()
    studio = Studio(settings, generator)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(studio.start)
        freeze_long_lived_objects()
        try:
            yield
        finally:
            await run_in_threadpool(studio.stop)

    app = FastAPI(title="Dali", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.studio = studio
    templates = pages.make_templates()
    app.state.templates = templates

    def render_error(request: Request, status: int, title: str, details: list[str]) -> Response:
        return pages.render_error(templates, request, status, title, details)

    install_error_handlers(app, render_error)

    async def login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        return RedirectResponse(f"/login?next={exc.next_path}", status_code=303)

    app.add_exception_handler(LoginRequired, login_required)
    app.include_router(api.router)
    app.include_router(events.router)
    app.include_router(a1111.router)  # AUTOMATIC1111-compatible /sdapi/v1, same queue
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if settings.gradio:  # DALI_GRADIO=1: the Gradio UI at /gradio, same process and studio
        from sd_gradio import mount_gradio

        mount_gradio(app)
    return app


app = create_app()
