"""The app the A1111 tests serve: `create_app()` with the A1111 router included.

`with_a1111` adds the router only when create_app() does not include it already, so the tests
run the same either way. `build` is the factory the uvicorn subprocess of `test_webuiapi.py`
serves (`uvicorn --factory tests.a1111.server_app:build`), with settings from the environment.
"""

from __future__ import annotations

from fastapi import FastAPI

from stable_diffusion_api.routes.a1111 import router


def with_a1111(app: FastAPI) -> FastAPI:
    if not any(getattr(route, "path", "") == "/sdapi/v1/txt2img" for route in app.routes):
        app.include_router(router)
    return app


def build() -> FastAPI:
    from stable_diffusion_api.sd_api import create_app

    return with_a1111(create_app())
