"""The ASGI application: `uvicorn stable_diffusion_api.sd_api:app`.

`create_app()` wires everything from `Settings` (environment variables `DALI_*`): the studio
(database, services, workers), the routers, the templates, static files and error handlers.
Importing this module builds the app but starts nothing heavy: migrations, hardware detection
and the worker threads start in the lifespan, and models load lazily in the workers.

The seed's command `cd stable_diffusion_api && uvicorn sd_api:app --reload` also works: imported
as a top-level module, this file first puts the repository root on `sys.path` so the package
(and sd_core) can be imported; nothing else differs.

This is the service alone: nothing in `stable_diffusion_api` imports the Gradio UI. The
top-level `dali_app` builds this app and mounts the UI at `/gradio` when `DALI_GRADIO=1`
(`uvicorn dali_app:app`, `python dali_app.py`, `./run.sh`). Served from here with
`DALI_GRADIO=1`, the app says so in a warning at start-up rather than ignore the setting.
"""

# ruff: noqa: E402  (the sys.path line must run before the package imports)
from __future__ import annotations

import logging
import sys
from pathlib import Path

if not __package__:  # `cd stable_diffusion_api && uvicorn sd_api:app`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.routing import Mount

from stable_diffusion_api import __version__
from stable_diffusion_api.auth import Authenticator, AuthGuard
from stable_diffusion_api.config import STATIC_DIR, Settings
from stable_diffusion_api.errors import install_error_handlers
from stable_diffusion_api.middleware import (
    LOOPBACK_HOSTS,
    BodyLimit,
    SameOrigin,
    SecurityHeaders,
)
from stable_diffusion_api.routes import a1111, api, events, login, pages, project_events
from stable_diffusion_api.routes.api_docs import install_api_docs
from stable_diffusion_api.services import Studio
from stable_diffusion_api.services.generator import Generator
from stable_diffusion_api.services.studio import freeze_long_lived_objects

log = logging.getLogger(__name__)

# Where `dali_app` mounts the Gradio UI when `settings.gradio` (DALI_GRADIO=1) is on.
GRADIO_PATH = "/gradio"
UI_ENTRY_POINTS = "`uvicorn dali_app:app`, `python dali_app.py` or `./run.sh`"

DESCRIPTION = """Dali: a self-hosted Stable Diffusion v1.x studio.

Create a project (its hardware, default model and settings), queue generations with
`POST /api/v1/projects/{id}/generations` (202), follow them with Server-Sent Events at
`/api/v1/generations/{id}/events`, and fetch the images from the project's gallery."""


def create_app(settings: Settings | None = None, generator: Generator | None = None) -> FastAPI:
    """Build the application. `generator` replaces the sd_core engine (tests pass a fake).

    A malformed DALI_API_KEY or DALI_API_AUTH raises `auth.AuthConfigError` here, so the
    server refuses to start (saying which variable, and what it allows)."""
    settings = settings if settings is not None else Settings()
    auth = Authenticator.from_settings(settings)
    studio = Studio(settings, generator)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warn_if_gradio_unserved(app, settings)
        warn_if_exposed(settings)
        # On the event loop's (main) thread, which nothing else needs before start-up ends:
        # worker processes spawned there start with Ctrl+C left to the server (worker_process).
        studio.start()
        if auth.enabled:  # after the data folder is known to be this studio's
            auth.sessions.server_secret()
        freeze_long_lived_objects()
        try:
            yield
        finally:
            await run_in_threadpool(studio.stop)

    app = FastAPI(
        title="Dali",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by install_api_docs, from local assets
        redoc_url=None,
    )
    app.state.studio = studio
    app.state.auth = auth
    templates = pages.make_templates()
    app.state.templates = templates

    def render_error(request: Request, status: int, title: str, details: list[str]) -> Response:
        return pages.render_error(templates, request, status, title, details)

    install_error_handlers(app, render_error)
    app.include_router(login.router)
    app.include_router(api.router)
    app.include_router(events.router)
    app.include_router(project_events.router)  # one stream for all of a project's jobs
    app.include_router(a1111.router)  # AUTOMATIC1111-compatible /sdapi/v1, same queue
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    install_api_docs(app)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    # In front of every route and mount (the Gradio UI too): credentials, when configured.
    app.add_middleware(AuthGuard, authenticator=auth)
    app.add_middleware(SameOrigin, allowed_hosts=settings.host_names())
    return app


def warn_if_exposed(settings: Settings) -> bool:
    """At start-up: warn when the server listens beyond this machine with no authentication
    (anyone on the network could then generate, read and delete). Whether it warned."""
    if settings.host in LOOPBACK_HOSTS or settings.host.startswith("127."):
        return False
    if settings.auth_configured:
        return False
    log.warning(
        "DALI_HOST=%s makes the studio reachable from other machines, and neither DALI_API_KEY "
        "nor DALI_API_AUTH is set: anyone who can reach it can generate, read and delete. Set "
        "DALI_API_KEY or DALI_API_AUTH, or bind 127.0.0.1.",
        settings.host,
    )
    return True


def warn_if_gradio_unserved(app: FastAPI, settings: Settings) -> bool:
    """At start-up: warn when `DALI_GRADIO=1` asks for the Gradio UI but nothing is mounted at
    /gradio (the service served alone, not through `dali_app`). Whether it warned."""
    if not settings.gradio:
        return False
    if any(isinstance(route, Mount) and route.path == GRADIO_PATH for route in app.routes):
        return False
    log.warning(
        "DALI_GRADIO=1 is set, but the Gradio UI is not served: this app "
        "(stable_diffusion_api.sd_api:app, which `python -m stable_diffusion_api` serves) is "
        "the service alone. For the UI at %s serve dali_app:app instead: %s.",
        GRADIO_PATH,
        UI_ENTRY_POINTS,
    )
    return True


app = create_app()
