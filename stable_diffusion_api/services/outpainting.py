"""A REST request's `outpaint` margins turned into an ordinary inpainting request: the init
image padded, the mask drawn over the new margins (sd_core/outpaint.py), the size set."""

from __future__ import annotations

from PIL import Image

from sd_core.outpaint import FILL, Margins, outpaint_inputs
from stable_diffusion_api.errors import InvalidField
from stable_diffusion_api.schemas import GenerationCreate


def outpaint_request(
    request: GenerationCreate, init_image: Image.Image | None, mask: Image.Image | None
) -> tuple[GenerationCreate, Image.Image, Image.Image]:
    """(the request sized to the grown picture, the padded init image, its mask); InvalidField
    when there is no init image, a mask was sent too, or the new size is too large."""
    margins = request.outpaint
    assert margins is not None
    if init_image is None:
        raise InvalidField("outpaint", None, "outpainting needs an init_image to grow")
    if mask is not None:
        raise InvalidField("mask", "<image>", "send a mask or outpaint margins, not both")
    sides = Margins(margins.left, margins.right, margins.top, margins.bottom)
    try:
        canvas, new_mask = outpaint_inputs(init_image, sides, margins.overlap)
    except ValueError as exc:
        raise InvalidField("outpaint", margins.model_dump(), str(exc)) from None
    update: dict[str, object] = {"width": canvas.width, "height": canvas.height}
    if "inpainting_fill" not in request.model_fields_set:
        update["inpainting_fill"] = FILL
    return request.model_copy(update=update), canvas, new_mask
