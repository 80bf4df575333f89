"""Serving the UI: alone (`main`, what `python sd_gradio.py` runs) or mounted inside Dali's
FastAPI app (`mount_gradio`, what `dali_app` does when `DALI_GRADIO=1`)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import gradio as gr
from fastapi import FastAPI
from gradio.exceptions import InvalidPathError

from dali_gradio.address import add_address_arguments, choose_port, parse_address
from dali_gradio.app import DaliUI
from dali_gradio.choices import DEFAULT_PROJECT
from dali_gradio.inputs import input_error
from stable_diffusion_api.auth import Authenticator
from stable_diffusion_api.config import Settings
from stable_diffusion_api.services import Studio

log = logging.getLogger("dali.gradio")

THEME_FONTS = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "monospace"]
CSS = """
#dali-title h2 { margin: 0.2em 0; }
footer { display: none !important; }
/* A dropdown's text stops before its arrow (on a phone it ran under it) and ends in "…". */
.secondary-wrap input[role="combobox"] {
  min-width: 0; text-overflow: ellipsis; padding-right: 1.6em !important;
}
"""


def theme() -> gr.themes.Base:
    # System fonts only: the default theme fetches web fonts, and Dali works offline.
    return gr.themes.Soft(
        primary_hue="orange", neutral_hue="slate", font=THEME_FONTS, font_mono=MONO_FONTS
    )


def _launch_options(studio: Studio) -> dict[str, Any]:
    """What both ways of serving need: the stored images may be served, and how it looks."""
    return {
        "allowed_paths": [str(studio.storage.local_images)],
        "theme": theme(),
        "css": CSS,
        "footer_links": ["api"],
        "show_error": True,
    }


def _uploads_only(blocks: gr.Blocks) -> None:
    """A file Gradio refuses as an input (one it was not sent as an upload) is the caller's
    mistake: a message for them, not a crash with a traceback in the server's log."""
    preprocess = blocks.preprocess_data

    async def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return await preprocess(*args, **kwargs)
        except InvalidPathError as exc:
            raise input_error(f"Only files uploaded to this UI can be read. {exc}") from None

    blocks.preprocess_data = checked  # type: ignore[method-assign]


def mount_gradio(app: FastAPI, path: str = "/gradio") -> FastAPI:
    """Mount the UI inside Dali's FastAPI app at `path`, over the app's own studio.

    Call it after `app.state.studio` is set (`stable_diffusion_api.sd_api.create_app` does
    that); the app's lifespan starts the studio, the UI only uses it. `dali_app.create_app`
    calls this when `DALI_GRADIO=1`.

    Credentials (DALI_API_KEY, DALI_API_AUTH) guard every request under `path` as they guard
    the rest of the app: `stable_diffusion_api.auth.AuthGuard` is in front of the whole app,
    mounts included. A browser's page load without them goes to the login page (and back here
    after it), any other request gets 401, a websocket is closed.

    What `launch()` does that mounting does not, done here: an input's file must be one
    Gradio received as an upload. Gradio checks that only for a launched app
    (`has_launched`); mounted, any `{"path": "/some/file"}` a client sent in place of an
    upload was copied into the cache and read (PNG info, the explorer).
    """
    studio: Studio = app.state.studio
    blocks = DaliUI(studio).build()
    blocks.queue(default_concurrency_limit=16)
    gr.mount_gradio_app(app, blocks, path=path, run_history=False, **_launch_options(studio))
    # What makes Gradio's preprocessing accept only files in its upload folder (and its
    # postprocessing only files it made or `allowed_paths`): see `_check_allowed` in
    # gradio.processing_utils, a no-op until the Blocks count as launched.
    blocks.has_launched = True
    _uploads_only(blocks)
    return app


def _login(auth: Authenticator) -> dict[str, Any]:
    """Served alone, the UI asks for the same credentials as the studio, when any are
    configured, through Gradio's own login form: a DALI_API_AUTH user and password, or any
    user name with the API key (DALI_API_KEY) as the password."""
    if not auth.enabled:
        return {}
    ways = []
    if auth.credentials.has_users:
        ways.append("a user name and password of DALI_API_AUTH")
    if auth.credentials.has_key:
        ways.append("any user name with the API key (DALI_API_KEY) as the password")
    message = "Log in with " + ", or ".join(ways) + "."
    return {"auth": auth.check_password, "auth_message": message}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Dali's Gradio UI (same studio as the web app)")
    add_address_arguments(parser)
    parser.add_argument(
        "--project",
        default=DEFAULT_PROJECT,
        help=f"the project picked at start ({DEFAULT_PROJECT})",
    )
    args = parser.parse_args(argv)
    # Before anything slow: a port that is taken is said at once, in one line.
    address = parse_address(args, os.environ)
    port = choose_port(address)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests

    settings = Settings()
    auth = Authenticator.from_settings(settings)  # a malformed value stops here, not later
    studio = Studio(settings)
    studio.start()
    try:
        studio.projects.get_or_create(args.project)
        demo = DaliUI(studio, default_project=args.project).build()
        demo.queue(default_concurrency_limit=16)
        _uploads_only(demo)
        log.info("data directory %s", settings.resolved_data_dir)
        demo.launch(
            server_name=address.host, server_port=port, share=False, inbrowser=False,
            run_history=False, **_launch_options(studio), **_login(auth),
        )  # fmt: skip
    finally:
        studio.stop()
