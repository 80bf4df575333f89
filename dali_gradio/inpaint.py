"""The inpaint tab's inputs: the image with a brush for the mask (or an uploaded mask) and the
denoising strength above the prompt, and under it the mask settings of `sd_core/inpaint.py`,
as AUTOMATIC1111's inpaint tab has them: mask blur, invert ("inpaint not masked"), masked
content, inpaint area and its padding.

The settings' defaults are the REST API's (a hard edge, the original under the mask, the whole
picture), so a caller that leaves them out gets what it got before they were here."""

from __future__ import annotations

from typing import Any

import gradio as gr

from dali_gradio.inputs import (
    image_upload,
    input_error,
    mask_editor,
    optional_int,
    radio,
    slider,
)
from stable_diffusion_api.schemas import MAX_INPAINT_PADDING, MAX_MASK_BLUR

# A1111's labels; the position is the request's `inpainting_fill` (0 fill … 3 latent nothing).
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
WHOLE_PICTURE, ONLY_MASKED = "Whole picture", "Only masked"


def inpaint_image_inputs() -> list[Any]:
    """The image with a brush for the mask, an optional uploaded mask, and the strength."""
    return [
        mask_editor(
            label="Image — paint over what to repaint",
            elem_id="inpaint-editor", type="pil", format="png",
            brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24),
            transforms=(), layers=False, height=360, sources=["upload", "clipboard"],
        ),
        image_upload(label="Mask (optional; white = repaint, same size as the image)", type="filepath", image_mode=None, height=160, sources=["upload", "clipboard"]),
        slider(0, 1, value=0.75, step=0.01, label="Denoising strength"),
    ]  # fmt: skip


def inpaint_settings() -> list[Any]:
    """The mask settings, in an accordion under the inpaint panel, in `inpaint_fields`' order."""
    with gr.Accordion("Inpaint settings", open=True), gr.Row():
        blur = slider(
            0, MAX_MASK_BLUR, value=0, step=1, label="Mask blur", info="feathers the edge, pixels"
        )
        invert = gr.Checkbox(
            value=False, label="Inpaint not masked", info="repaint what is not painted"
        )
        content = radio(list(MASKED_CONTENT), value="original", label="Masked content")
        area = radio([WHOLE_PICTURE, ONLY_MASKED], value=WHOLE_PICTURE, label="Inpaint area")
        padding = slider(
            0, MAX_INPAINT_PADDING, value=0, step=4, label="Only masked padding, pixels",
            info="room around the mask for \"Only masked\"",
        )  # fmt: skip
    return [blur, invert, content, area, padding]


def inpaint_fields(
    blur: float | None = None,
    invert: bool | None = False,
    content: str | None = None,
    area: str | None = None,
    padding: float | None = None,
) -> dict[str, Any]:
    """GenerationCreate's mask settings from the controls; one left out keeps its default."""
    fields: dict[str, Any] = {"inpainting_mask_invert": bool(invert)}
    if optional_int(blur) is not None:
        fields["mask_blur"] = optional_int(blur)
    if content is not None:
        if content not in MASKED_CONTENT:
            allowed = ", ".join(MASKED_CONTENT)
            raise input_error(f"Masked content: {content!r} is not one of {allowed}.")
        fields["inpainting_fill"] = MASKED_CONTENT.index(content)
    if area is not None:
        if area not in (WHOLE_PICTURE, ONLY_MASKED):
            raise input_error(
                f"Inpaint area: {area!r} is not one of {WHOLE_PICTURE}, {ONLY_MASKED}."
            )
        fields["inpaint_full_res"] = area == ONLY_MASKED
    if optional_int(padding) is not None:
        fields["inpaint_full_res_padding"] = optional_int(padding)
    return fields
