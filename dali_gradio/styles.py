"""The styles picker of each generation tab: the styles of the studio's `styles.csv`
(AUTOMATIC1111's file, in the data directory; `services/styles.py`), picked by name.

The names go in the request's `styles`; the service applies them in the order picked, as
A1111 does, before the job is queued, so the generation info and "send to" carry the expanded
prompt and no style needs picking again. Any name may be typed (or sent over the API): the
service checks it and answers with the installed styles. The list is read again when the
page loads, so styles added to the file meanwhile show after a reload.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from dali_gradio.inputs import dropdown
from stable_diffusion_api.services import Studio


def picked_styles(value: str | list[str] | None = None) -> list[str]:
    """The request's `styles` from the picker's value (none picked, or left out: [])."""
    if not value:
        return []
    names = [value] if isinstance(value, str) else list(value)
    return [name for name in names if isinstance(name, str) and name.strip()]


class Styles:
    """What the pickers offer, read from the studio's styles file."""

    def __init__(self, studio: Studio) -> None:
        self.library = studio.generations.styles

    def names(self) -> list[str]:
        return [style.name for style in self.library.all()]

    def info(self) -> str:
        if self.names():
            return "added to the prompts in the order picked"
        return f"none yet: put A1111's styles.csv at {self.library.path}"

    def picker(self, tab: str) -> gr.Dropdown:
        """One tab's multiple choice (under its negative prompt)."""
        return dropdown(
            self.names(), value=[], multiselect=True, allow_custom_value=True, label="Styles",
            info=self.info(), elem_id=f"{tab}-styles",
        )  # fmt: skip

    def refresh(self) -> Any:
        """The choices read again (the picks kept)."""
        return gr.update(choices=self.names(), info=self.info())
