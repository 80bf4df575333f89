"""The choices every tab shares: the project, model, hardware and precision pickers above the
tabs, and the sampler lists of the generation tabs."""

from __future__ import annotations

from typing import Any

import gradio as gr

from stable_diffusion_api.services import Studio

DEFAULT_PROJECT = "Gradio"
AUTO_DTYPE = "auto"
DTYPES = (AUTO_DTYPE, "float32", "float16", "bfloat16")


class Choices:
    """What the pickers offer, read from the studio (and refreshed when the page loads).

    Mounted inside the FastAPI app, the UI is built before the app's lifespan has migrated
    the database: until the studio has started, the lists hold only their defaults and the
    page fills them in when it loads.
    """

    def __init__(self, studio: Studio, default_project: str = DEFAULT_PROJECT) -> None:
        self.studio = studio
        self.default_project = default_project

    def project_names(self) -> list[str]:
        names = [p.name for p in self.studio.projects.list()] if self.studio.started else []
        return names if self.default_project in names else [self.default_project, *names]

    def model_choices(self) -> list[tuple[str, str]]:
        choices = [("Project default", "")]
        if self.studio.started:
            choices += [(e.label, e.name) for e in self.studio.models.list() if e.available]
        return choices

    def default_model(self) -> str:
        """ "" (the project's default) when the built-in model exists, else the first usable."""
        if not self.studio.started:
            return ""
        entries = [e for e in self.studio.models.list() if e.available]
        if not entries or entries[0].builtin:
            return ""
        return entries[0].name

    def device_choices(self) -> list[tuple[str, str]]:
        return [(f"{d.id} — {d.name}", d.id) for d in self.studio.hardware.choices()]

    def sampler_choices(self) -> list[tuple[str, str]]:
        return [("Model default", "")] + [
            (s.display_name, s.name) for s in self.studio.samplers.list()
        ]

    def refresh(self) -> tuple[Any, Any, Any]:
        self.studio.hardware.refresh()
        return (
            gr.update(choices=self.project_names()),
            gr.update(choices=self.model_choices()),
            gr.update(choices=self.device_choices()),
        )

    def project_selected(self, name: str) -> tuple[Any, Any, Any]:
        """Show the picked project's own hardware and model (a new name keeps the current)."""
        for project in self.studio.projects.list():
            if project.name.lower() == (name or "").strip().lower():
                return (
                    gr.update(value=project.default_model or ""),
                    gr.update(value=project.device),
                    gr.update(value=project.dtype or AUTO_DTYPE),
                )
        return gr.update(), gr.update(), gr.update()

    # -- generating -------------------------------------------------------------------------
