"""Outpainting: grow the picture in any direction and inpaint the new margins.

`outpaint(pipe, params, image, left=…, right=…, top=…, bottom=…)` pads the image (the new
margins start as copies of its edge pixels), masks the margins plus `overlap` pixels of the
image beside them (so the seam is repainted too), and inpaints with the params' settings and
`inpainting_fill` "fill" unless told otherwise. Each margin is grown so the new size is a
multiple of 8. Like every inpaint, the image's pixels outside the mask come back exactly.
AUTOMATIC1111 does this with scripts ("poor man's outpainting", "outpainting mk2"); this is
the same idea as one engine-level call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from sd_core.params import MAX_SIZE, SIZE_MULTIPLE, GenerationParams

if TYPE_CHECKING:
    from sd_core.hooks import GenerationHooks
    from sd_core.pipeline import StableDiffusionPipeline
    from sd_core.result import GenerationResult

FILL = 0  # inpainting_fill "fill" (no torch here: the service pads images with this module)


@dataclass(frozen=True)
class Margins:
    """Pixels added on each side."""

    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0

    def snapped(self, width: int, height: int) -> Margins:
        """The margins grown (on the right / bottom, or the left / top when only that one
        grows) so that the new size is a multiple of 8."""
        if min(self.left, self.right, self.top, self.bottom) < 0:
            raise ValueError(f"outpaint margins must be ≥ 0, got {self}")
        extra_w = -(width + self.left + self.right) % SIZE_MULTIPLE
        extra_h = -(height + self.top + self.bottom) % SIZE_MULTIPLE
        grown = replace(self)
        if self.left and not self.right:
            grown = replace(grown, left=self.left + extra_w)
        else:
            grown = replace(grown, right=self.right + extra_w)
        if self.top and not self.bottom:
            return replace(grown, top=self.top + extra_h)
        return replace(grown, bottom=self.bottom + extra_h)


def outpaint_inputs(
    image: Image.Image, margins: Margins, overlap: int = 8
) -> tuple[Image.Image, Image.Image]:
    """(the padded picture, its mask): margins snapped to the grid, filled with the image's
    edge pixels; the mask white over the margins and `overlap` pixels into the image."""
    source = np.asarray(image.convert("RGB"))
    height, width = source.shape[:2]
    m = margins.snapped(width, height)
    padded = np.pad(source, ((m.top, m.bottom), (m.left, m.right), (0, 0)), mode="edge")
    if max(padded.shape[:2]) > MAX_SIZE:
        raise ValueError(f"outpainted size {padded.shape[1]}x{padded.shape[0]} is over {MAX_SIZE}")
    mask = np.full(padded.shape[:2], 255, np.uint8)
    # The image's own area stays, less `overlap` pixels on each side that grows.
    top = m.top + (overlap if m.top else 0)
    left = m.left + (overlap if m.left else 0)
    bottom = max(m.top + height - (overlap if m.bottom else 0), 0)
    right = max(m.left + width - (overlap if m.right else 0), 0)
    mask[top:bottom, left:right] = 0
    return Image.fromarray(padded), Image.fromarray(mask)


def outpaint(
    pipe: StableDiffusionPipeline,
    params: GenerationParams,
    image: Image.Image,
    *,
    left: int = 0,
    right: int = 0,
    top: int = 0,
    bottom: int = 0,
    overlap: int = 8,
    fill: int = FILL,
    hooks: GenerationHooks | None = None,
) -> GenerationResult:
    """`image` grown by the margins, the new area painted by `pipe` (width and height of
    `params` are set to the new size; `fill` is the masked content, 0 "fill" by default)."""
    canvas, mask = outpaint_inputs(image, Margins(left, right, top, bottom), overlap)
    p = replace(params, width=canvas.width, height=canvas.height, inpainting_fill=fill)
    return pipe.generate(p, init_image=canvas, mask=mask, hooks=hooks)
