"""`DaliUI`: the Gradio Blocks of Dali's UI over a `Studio` — the pickers above the tabs, each
tab from its own module, and the wiring that reaches across tabs ("send to", "Filmstrip")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from dali_gradio.choices import AUTO_DTYPE, DEFAULT_PROJECT, DTYPES, Choices
from dali_gradio.explorer import ExplorerTab
from dali_gradio.gallery import GalleryTab
from dali_gradio.generate import GenerationTabs
from dali_gradio.inputs import dropdown, private
from dali_gradio.png_info import PngInfoTab
from stable_diffusion_api.services import Studio


class DaliUI:
    """The Gradio Blocks over a `Studio`, and every event handler (one object per tab)."""

    def __init__(self, studio: Studio, default_project: str = DEFAULT_PROJECT) -> None:
        self.studio = studio
        self.default_project = default_project
        self.choices = Choices(studio, default_project)
        self.generation = GenerationTabs(studio, self.choices)
        self.gallery = GalleryTab(studio)
        self.png_info = PngInfoTab(studio)
        self.explorer = ExplorerTab(studio, self.choices, self.generation.last)

    def build(self) -> gr.Blocks:
        choices = self.choices
        with gr.Blocks(title="Dali", analytics_enabled=False) as demo:
            gr.Markdown("## Dali — Stable Diffusion studio", elem_id="dali-title")
            with gr.Row(equal_height=True):
                project = dropdown(
                    choices.project_names(), value=self.default_project, label="Project",
                    allow_custom_value=True, info="type a new name to start a project", scale=2,
                )  # fmt: skip
                # Any name may be typed (or sent over the API): the service checks it and
                # answers with the installed models.
                model = dropdown(
                    choices.model_choices(),
                    value=choices.default_model(),
                    label="Model",
                    allow_custom_value=True,
                    scale=2,
                )
                devices = choices.device_choices()
                device = dropdown(
                    devices, value=devices[0][1] if devices else "cpu", label="Hardware", scale=2
                )
                dtype = dropdown(list(DTYPES), value=AUTO_DTYPE, label="Precision", scale=1)
                refresh = gr.Button("↻ Refresh", scale=0, min_width=100)
            refresh.click(choices.refresh, None, [project, model, device], **private())
            project.change(choices.project_selected, project, [model, device, dtype], **private())

            with gr.Tabs() as tabs:
                generation = self.generation.layout()
                gallery = self.gallery.layout(project)
                png = self.png_info.layout()
                explorer = self.explorer.layout(model, device, dtype)
            self.generation.wire(generation, [project, model, device, dtype])

            # -- across tabs: "send to" and the gallery's "Filmstrip" ---------------------------
            def send(tab: str) -> Callable[[str], list[Any]]:
                def handler(infotext: str) -> list[Any]:
                    return [*self.png_info.send_parameters(infotext), gr.Tabs(selected=tab)]

                return handler

            t2i_fields = [*generation.t2i.sendable(), tabs]
            i2i_fields = [*generation.i2i.sendable(), tabs]
            inp_fields = [*generation.inp.sendable(), tabs]
            picked, init_image = gallery.picked, generation.init_image
            gallery.to_t2i.click(send("txt2img"), gallery.parameters, t2i_fields, **private())
            gallery.to_i2i.click(send("img2img"), gallery.parameters, i2i_fields, **private()).then(
                lambda path: path, picked, init_image, **private()
            )
            gallery.to_inpaint.click(send("inpaint"), gallery.parameters, inp_fields, **private()).then(
                lambda path: {"background": path, "layers": [], "composite": path} if path else None,
                picked, generation.editor, **private(),
            )  # fmt: skip
            png.to_t2i.click(send("txt2img"), png.parameters, t2i_fields, **private())
            png.to_i2i.click(send("img2img"), png.parameters, i2i_fields, **private()).then(
                lambda path: path, png.png, init_image, **private()
            )
            gallery.to_filmstrip.click(
                lambda number: (number, gr.Tabs(selected="explorer")), gallery.generation,
                [explorer.generation, tabs], **private(),
            ).then(
                self.explorer.filmstrip, explorer.generation, [explorer.film, explorer.note],
                **private(),
            )  # fmt: skip
            demo.load(choices.refresh, None, [project, model, device], **private())
            # Files dropped into the asset folders since the UI was built show on a reload.
            # So do styles added to styles.csv.
            for panel in (generation.t2i, generation.i2i, generation.inp):
                demo.load(self.generation.networks.refresh, None, panel.asset_lists(), **private())
                demo.load(self.generation.styles.refresh, None, panel.styles, **private())
        return demo
