"""The PNG info tab: the generation parameters a PNG carries (the A1111 `parameters` infotext
and Dali's `dali` JSON), and turning an infotext back into a generation tab's settings
(its `Clip skip` and `VAE` included)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import UnidentifiedImageError

from dali_gradio.inputs import UPLOAD_HINT, image_upload, input_error
from stable_diffusion_api.errors import DomainError
from stable_diffusion_api.schemas import MAX_CLIP_SKIP
from stable_diffusion_api.services import Studio
from stable_diffusion_api.services.assets import MODEL_OWN_VAE


@dataclass
class PngInfoWidgets:
    png: gr.Image
    parameters: gr.Textbox
    to_t2i: gr.Button
    to_i2i: gr.Button


class PngInfoTab:
    """PNG metadata reading, and "send to" for both this tab and the gallery."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    def png_info(self, path: str | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """The PNG's `parameters` infotext, its fields, and its `dali` JSON."""
        from sd_core.pngmeta import read_png_metadata

        if not path:
            return "", {}, {}
        try:
            parameters, dali = read_png_metadata(path)
        except (OSError, UnidentifiedImageError, ValueError):
            raise input_error(f"PNG info: the file is not a readable PNG; {UPLOAD_HINT}.") from None
        if parameters is None:
            return "This PNG holds no generation parameters.", {}, dali or {}
        from sd_core.infotext import format_infotext

        return format_infotext(parameters), parameters.to_dict(), dali or {}

    def _clip_skip(self, text: str | None) -> Any:
        """ "Clip skip" → the slider's value: absent is 1 (A1111 writes it only when it is not
        1); a value the slider cannot hold keeps the current one."""
        if text is None:
            return 1
        try:
            value = int(text.strip())
        except ValueError:
            return gr.update()
        return value if 1 <= value <= MAX_CLIP_SKIP else gr.update()

    def _vae(self, name: str | None) -> Any:
        """ "VAE" → the dropdown's value: absent is the model's own (A1111 writes it only for
        a separate file); a file not installed here keeps the current choice."""
        if name is None:
            return MODEL_OWN_VAE
        try:
            return self.studio.assets.check_vae(name) or MODEL_OWN_VAE
        except DomainError:
            return gr.update()

    def send_parameters(self, infotext: str) -> list[Any]:
        """Infotext → updates for a tab's prompt, negative prompt, sampler … height, clip skip
        and VAE (a tab's `sendable()`), then Tabs."""
        from sd_core.infotext import parse_infotext

        if not (infotext or "").strip():
            raise input_error("Nothing to send: there are no parameters.")
        try:
            p = parse_infotext(infotext)
        except ValueError as exc:
            raise input_error(f"Parameters could not be read: {exc}") from None
        sampler: Any = gr.update()
        if p.sampler:
            try:
                sampler = self.studio.samplers.canonical(p.sampler) or ""
            except DomainError:
                sampler = gr.update()  # a sampler Dali does not have: keep the current choice

        def keep(value: Any) -> Any:
            return gr.update() if value is None else value

        return [
            p.prompt,
            p.negative_prompt,
            sampler,
            keep(p.steps),
            keep(p.cfg_scale),
            keep(p.seed),
            keep(p.width),
            keep(p.height),
            self._clip_skip(p.extra.get("Clip skip")),
            self._vae(p.extra.get("VAE")),
        ]

    def layout(self) -> PngInfoWidgets:
        """The tab (inside the app's `gr.Tabs`)."""
        with gr.Tab("PNG info", id="pnginfo"), gr.Row():
            png = image_upload(
                label="Drop a PNG",
                elem_id="png-info-image",
                type="filepath",
                image_mode=None,
                sources=["upload", "clipboard"],
                height=320,
            )
            with gr.Column():
                parameters = gr.Textbox(label="Parameters", lines=6, interactive=False)
                fields = gr.JSON(label="Fields")
                dali = gr.JSON(label="Dali metadata")
                with gr.Row():
                    to_t2i = gr.Button("Send to txt2img")
                    to_i2i = gr.Button("Send to img2img")
        png.change(self.png_info, png, [parameters, fields, dali], api_name="png_info")
        return PngInfoWidgets(png, parameters, to_t2i, to_i2i)
