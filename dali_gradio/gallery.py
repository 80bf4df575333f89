"""The gallery tab: a project's newest images, the picked one's parameters, and buttons to
send them to another tab (the app wires those, as they reach across tabs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from dali_gradio.inputs import explain, input_error, private
from stable_diffusion_api.errors import DomainError
from stable_diffusion_api.services import Studio

GALLERY_LIMIT = 60


@dataclass
class GalleryWidgets:
    picked: gr.Image
    parameters: gr.Textbox
    generation: gr.Number
    to_t2i: gr.Button
    to_i2i: gr.Button
    to_inpaint: gr.Button
    to_filmstrip: gr.Button


class GalleryTab:
    """The project gallery over a `Studio` (the same images as the web app's gallery)."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    def gallery(self, project: str) -> tuple[list[tuple[str, str]], list[int], str]:
        name = (project or "").strip()
        found = [p for p in self.studio.projects.list() if p.name.lower() == name.lower()]
        if not found:
            return [], [], f"No project named {name!r} yet: generate an image in it first."
        images, total = self.studio.gallery.page(found[0].id, 0, GALLERY_LIMIT)
        items = [
            (str(self.studio.gallery.local_file(i.id)), f"#{i.id} · seed {i.seed}") for i in images
        ]
        shown = f", the newest {len(images)} shown" if total > len(images) else ""
        return items, [i.id for i in images], f"{found[0].name}: {total} image(s){shown}."

    def gallery_select(self, ids: list[int], evt: gr.SelectData) -> tuple[Any, str, Any]:
        index = evt.index if isinstance(evt.index, int) else None
        if index is None or not 0 <= index < len(ids or []):
            return None, "", None
        try:
            image = self.studio.gallery.view(ids[index])
            path = self.studio.gallery.local_file(image.id)
        except DomainError as exc:
            raise input_error(explain(exc)) from None
        return str(path), image.parameters, image.generation_id

    def layout(self, project: gr.Dropdown) -> GalleryWidgets:
        """The tab (inside the app's `gr.Tabs`) showing the images of `project`."""
        with gr.Tab("Gallery", id="gallery") as tab:
            with gr.Row():
                refresh = gr.Button("↻ Show the project's images", scale=0)
                count = gr.Markdown()
            ids = gr.State([])
            images = gr.Gallery(
                label="Project images",
                columns=6,
                height="auto",
                allow_preview=False,
                object_fit="contain",  # whole images, never cropped to the tile
            )
            with gr.Row():
                picked = gr.Image(
                    label="Selected image", type="filepath", interactive=False, height=256
                )
                with gr.Column():
                    parameters = gr.Textbox(label="Parameters", lines=5, interactive=False)
                    generation = gr.Number(label="Generation #", precision=0, interactive=False)
                    with gr.Row():
                        to_t2i = gr.Button("Send to txt2img")
                        to_i2i = gr.Button("Send to img2img")
                        to_inpaint = gr.Button("Send to inpaint")
                        to_filmstrip = gr.Button("Filmstrip")
        refresh.click(self.gallery, project, [images, ids, count], api_name="gallery")
        # Opening the tab shows the current project's images at once.
        tab.select(self.gallery, project, [images, ids, count], **private())
        images.select(self.gallery_select, ids, [picked, parameters, generation], **private())
        return GalleryWidgets(
            picked, parameters, generation, to_t2i, to_i2i, to_inpaint, to_filmstrip
        )
