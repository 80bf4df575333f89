"""Serving the UI: alone (`main`, what `python sd_gradio.py` runs) or mounted inside Dali's
FastAPI app (`mount_gradio`, what `dali_app` does when `DALI_GRADIO=1`)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import gradio as gr
from fastapi import FastAPI

from dali_gradio.app import DaliUI
from dali_gradio.choices import DEFAULT_PROJECT
from stable_diffusion_api.config import Settings
from stable_diffusion_api.services import Studio

log = logging.getLogger("dali.gradio")

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
THEME_FONTS = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "monospace"]
CSS = """
#dali-title h2 { margin: 0.2em 0; }
footer { display: none !important; }
"""


def theme() -> gr.themes.Base:
    # System fonts only: the default theme fetches web fonts, and Dali works offline.
    return gr.themes.Soft(
        primary_hue="orange", neutral_hue="slate", font=THEME_FONTS, font_mono=MONO_FONTS
    )


def _launch_options(studio: Studio) -> dict[str, Any]:
    """What both ways of serving need: the stored images may be served, and how it looks."""
    return {
        "allowed_paths": [str(studio.settings.images_dir)],
        "theme": theme(),
        "css": CSS,
        "footer_links": ["api"],
        "show_error": True,
    }


def mount_gradio(app: FastAPI, path: str = "/gradio") -> FastAPI:
    """Mount the UI inside Dali's FastAPI app at `path`, over the app's own studio.

    Call it after `app.state.studio` is set (`stable_diffusion_api.sd_api.create_app` does
    that); the app's lifespan starts the studio, the UI only uses it. `dali_app.create_app`
    calls this when `DALI_GRADIO=1`.
    """
    studio: Studio = app.state.studio
    blocks = DaliUI(studio).build()
    blocks.queue(default_concurrency_limit=16)
    return gr.mount_gradio_app(app, blocks, path=path, run_history=False, **_launch_options(studio))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Dali's Gradio UI (same studio as the web app)")
    parser.add_argument("--host", default=os.environ.get("DALI_GRADIO_HOST", DEFAULT_HOST))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("DALI_GRADIO_PORT", DEFAULT_PORT))
    )
    parser.add_argument("--project", default=DEFAULT_PROJECT, help="the project picked at start")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests

    settings = Settings()
    studio = Studio(settings)
    studio.start()
    try:
        studio.projects.get_or_create(args.project)
        demo = DaliUI(studio, default_project=args.project).build()
        demo.queue(default_concurrency_limit=16)
        log.info("data directory %s", settings.resolved_data_dir)
        demo.launch(
            server_name=args.host, server_port=args.port, share=False, inbrowser=False,
            run_history=False, **_launch_options(studio),
        )  # fmt: skip
    finally:
        studio.stop()
