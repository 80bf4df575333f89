"""`python -m stable_diffusion_api`: serve the service alone on DALI_HOST:DALI_PORT
(127.0.0.1:8000) — the studio, the REST and AUTOMATIC1111-compatible APIs, no Gradio UI.

The whole of Dali, with the Gradio UI at /gradio when DALI_GRADIO=1, is served from the top
level: `python dali_app.py` (what ./run.sh runs) or `uvicorn dali_app:app`. This command stays
inside the package, and so stays on the service's side of the line: it does not start
"dali_app:app" either, since an import by string is still the service reaching for the UI.
With DALI_GRADIO=1 it logs a warning at start-up naming those commands.

`python -m stable_diffusion_api worker [--device cuda:0]` runs a node instead: this host's
workers and no HTTP server (stable_diffusion_api/worker_command.py). With
`DALI_RUN_WORKERS=false` the server runs no workers of its own (a web host for such nodes).
"""

from __future__ import annotations

import sys

import uvicorn

from stable_diffusion_api.config import Settings

APP = "stable_diffusion_api.sd_api:app"


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        from stable_diffusion_api.worker_command import main as worker

        sys.exit(worker(sys.argv[2:]))
    settings = Settings()
    uvicorn.run(APP, host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
