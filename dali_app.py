"""Dali as one app: the service (`stable_diffusion_api`) and, when asked, the Gradio UI
(`dali_gradio`) mounted inside it at /gradio — one process, one studio.

    python dali_app.py [--host H] [--port P]   # what ./run.sh starts; DALI_HOST / DALI_PORT
    uvicorn dali_app:app                        # the same app under your own uvicorn flags
    DALI_GRADIO=1 python dali_app.py            # plus the Gradio UI at /gradio

The layers: `stable_diffusion_api` is the service and imports nothing of the UI; `dali_gradio`
is the UI and uses the service; this module, at the top, is the only place that knows both.
`DALI_GRADIO=1` needs the optional extra (`pip install -r requirements-gradio.txt`); without it
the UI is never imported, so `./run.sh` works on the base requirements.

Why the serving command lives here rather than in `python -m stable_diffusion_api`: that
command is inside the service package, and having it start `"dali_app:app"` — an import by
string, which a check of the package's imports would not see — would make the service depend on
the UI after all (and on this file being importable from wherever it runs). So
`python -m stable_diffusion_api` keeps serving the service alone, and served that way with
`DALI_GRADIO=1` it logs a warning at start-up naming the commands above.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI

from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import GRADIO_PATH
from stable_diffusion_api.sd_api import create_app as create_service_app
from stable_diffusion_api.services.generator import Generator

GRADIO_EXTRA = "requirements-gradio.txt"


def create_app(settings: Settings | None = None, generator: Generator | None = None) -> FastAPI:
    """The service app (`stable_diffusion_api.sd_api.create_app`, same arguments) with the
    Gradio UI at /gradio when `settings.gradio` (DALI_GRADIO=1) is on."""
    settings = settings if settings is not None else Settings()
    app = create_service_app(settings, generator)
    if settings.gradio:
        mount_ui(app)
    return app


def mount_ui(app: FastAPI) -> None:
    """Mount the Gradio UI at /gradio over `app`'s studio; a clear error when the optional
    Gradio extra is not installed."""
    try:
        from dali_gradio import mount_gradio
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in {"gradio", "gradio_client"}:
            raise
        raise RuntimeError(
            f"DALI_GRADIO=1 asks for the Gradio UI, but Gradio is not installed: "
            f"pip install -r {GRADIO_EXTRA} (or unset DALI_GRADIO)."
        ) from exc
    mount_gradio(app, GRADIO_PATH)


app = create_app()


def main(argv: list[str] | None = None) -> None:
    """`python dali_app.py`: serve `app` on DALI_HOST:DALI_PORT (127.0.0.1:8000)."""
    settings = Settings()
    parser = argparse.ArgumentParser(
        description="Dali: the studio, its APIs and (DALI_GRADIO=1) the Gradio UI at /gradio"
    )
    parser.add_argument("--host", default=settings.host, help="default: DALI_HOST")
    parser.add_argument("--port", type=int, default=settings.port, help="default: DALI_PORT")
    args = parser.parse_args(argv)
    # The app object itself: `python dali_app.py` runs this file as __main__, and a
    # "dali_app:app" string would import it a second time and build a second app.
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
