"""Dali's Gradio UI: the same studio as the web app — same engine, database, storage, gallery.

    python sd_gradio.py                       # http://127.0.0.1:7860, offline, analytics off
    python sd_gradio.py --host 0.0.0.0 --port 7861

Gradio is an optional extra (`pip install -r requirements-gradio.txt`). The UI reads the same
`DALI_*` settings as the FastAPI service (data directory, database, models directory), so an
image made here lands in the same project gallery as one made in the browser app, and the
other way round. Generations go through the service's queue and its per-device worker
(`Studio.generations.submit`): there is one way to the device, whichever front end asked.

This package sits above the service: it imports `stable_diffusion_api`, never the other way
round. Inside the FastAPI app (one process) it mounts at `/gradio`, reusing the app's studio;
the top-level `dali_app` does that when `DALI_GRADIO=1`:

    from dali_gradio import mount_gradio
    mount_gradio(app)              # app built by stable_diffusion_api.sd_api.create_app

Tabs: txt2img, img2img, inpaint (drawn or uploaded mask), the project gallery ("send to"), PNG
info, and the diffusion explorer: the forward process q(x_t | x0) of any image at a chosen t
with its signal-to-noise ratio, and the reverse process of a generation as a filmstrip of the
noisy latent and the predicted x0 at evenly spaced steps: the strip the worker recorded during
the run and stored with the generation (`DALI_FILMSTRIP_FRAMES`), whichever front end asked.
Every event has an `api_name`, so `gradio_client` drives the UI the way a person does.

Modules: `app` (the Blocks and the wiring across tabs), `choices` (the pickers above the tabs),
`generate` (txt2img, img2img, inpaint), `gallery`, `png_info`, `explorer`, `inputs` (field-named
errors, image opening, component constructors) and `launch` (`main`, `mount_gradio`).
"""

from __future__ import annotations

import os

# Before gradio is imported (every module of this package imports it, and this file runs
# first): gradio reads these at import time. Dali never phones home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from dali_gradio.app import DaliUI  # noqa: E402
from dali_gradio.launch import main, mount_gradio  # noqa: E402

__all__ = ["DaliUI", "main", "mount_gradio"]
