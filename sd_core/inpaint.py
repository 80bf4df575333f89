"""Inpainting as AUTOMATIC1111 does it, around the pipeline's sampling.

`prepare` turns the caller's init image and mask into what the sampler works on, and
`Inpainting.paste_back` turns the decoded images into the results:

1. The mask is made binary (white ≥ 128 repaints), inverted with `inpainting_mask_invert`,
   then feathered by a Gaussian blur of `mask_blur` pixels.
2. With `inpaint_full_res` ("Only masked") the work is a crop: the bounding box of the mask,
   grown by `inpaint_full_res_padding` pixels, then widened or heightened to the output's
   aspect ratio (inside the picture); the crop of the image and of the mask are scaled to the
   output size and inpainted there, so a small masked area gets every pixel of the model.
3. After decoding, each image is (for "Only masked": scaled back and put at the crop's place,
   then) laid over the init image through the feathered mask, so the unmasked area is the init
   image's own pixels exactly. The whole-picture overlay uses the mask doubled (a feathered
   mask ≥ 0.5 repaints fully), the crop's overlay the feathered mask itself, as A1111 does.

`inpainting_fill` says what the masked area starts from (see `fill_image` and
`fill_latents`): 0 the colours around it, 1 the original, 2 latent noise, 3 latent zeros.
The canvas is the init image at the output size (as the sampler sees it), so a result always
has the size the params ask for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image, ImageFilter, ImageOps
from torch import Tensor

from sd_core.params import GenerationParams

FILL, ORIGINAL, LATENT_NOISE, LATENT_NOTHING = 0, 1, 2, 3
Box = tuple[int, int, int, int]  # left, top, right (exclusive), bottom (exclusive)


@dataclass(frozen=True)
class Inpainting:
    """The inputs as the sampler gets them, and what pasting back needs.

    image, mask: the init image and the (processed) mask at the output size, cropped and
    scaled for "Only masked"; canvas: the init image at the output size; overlay: the
    mask ("L") the results are laid over the canvas through; crop: the crop's box on the
    canvas, or None for the whole picture.
    """

    image: Image.Image
    mask: Image.Image
    canvas: Image.Image
    overlay: Image.Image
    crop: Box | None = None

    def paste_back(self, images: list[Image.Image]) -> list[Image.Image]:
        """Each decoded image put into the canvas, with the unmasked pixels the canvas's own."""
        results = []
        for image in images:
            image = image.convert("RGB")
            if self.crop is not None:
                left, top, right, bottom = self.crop
                base = self.canvas.copy()
                size = (right - left, bottom - top)
                base.paste(image.resize(size, Image.Resampling.LANCZOS), (left, top))
                image = base
            results.append(Image.composite(image, self.canvas, self.overlay))
        return results


def process_mask(mask: Image.Image, p: GenerationParams) -> Image.Image:
    """The mask made binary, inverted if asked, feathered by `mask_blur` pixels ("L")."""
    binary = mask.convert("L").point(lambda v: 255 if v >= 128 else 0)
    if p.inpainting_mask_invert:
        binary = ImageOps.invert(binary)
    if p.mask_blur > 0:
        binary = binary.filter(ImageFilter.GaussianBlur(p.mask_blur))
    return binary


def crop_box(mask: Image.Image, padding: int, width: int, height: int) -> Box | None:
    """The box around the mask's non-zero pixels, grown by `padding` on each side and then to
    the aspect ratio width:height where the picture allows; None for an empty mask."""
    bbox = mask.getbbox()
    if bbox is None:
        return None
    full_w, full_h = mask.size
    left, top = max(bbox[0] - padding, 0), max(bbox[1] - padding, 0)
    right, bottom = min(bbox[2] + padding, full_w), min(bbox[3] + padding, full_h)
    box_w, box_h = right - left, bottom - top
    if box_w * height > box_h * width:  # too wide: make it taller
        top, bottom = _grow(top, bottom, int(box_w * height / width), full_h)
    else:  # too tall: make it wider
        left, right = _grow(left, right, int(box_h * width / height), full_w)
    return left, top, right, bottom


def _grow(low: int, high: int, want: int, limit: int) -> tuple[int, int]:
    """[low, high) grown evenly to `want` long, shifted to stay in [0, limit), capped there."""
    want = min(want, limit)
    extra = want - (high - low)
    low -= extra // 2
    high += extra - extra // 2
    if low < 0:
        high, low = high - low, 0
    if high > limit:
        low, high = max(low - (high - limit), 0), limit
    return low, high


def prepare(init_image: Image.Image, mask: Image.Image, p: GenerationParams) -> Inpainting:
    """What the sampler inpaints, from the init image and mask (same size) and resolved params."""
    assert p.width is not None and p.height is not None
    size = (p.width, p.height)
    canvas = init_image.convert("RGB")
    if canvas.size != size:
        canvas = canvas.resize(size, Image.Resampling.LANCZOS)
    full_mask = mask.convert("L")
    if full_mask.size != size:
        full_mask = full_mask.resize(size, Image.Resampling.LANCZOS)
    processed = process_mask(full_mask, p)
    box = crop_box(processed, p.inpaint_full_res_padding, *size) if p.inpaint_full_res else None
    if box is None:
        doubled = processed.point(lambda v: min(2 * v, 255))
        return Inpainting(canvas, processed, canvas, doubled)
    image = canvas.crop(box).resize(size, Image.Resampling.LANCZOS)
    crop_mask = processed.crop(box).resize(size, Image.Resampling.LANCZOS)
    return Inpainting(image, crop_mask, canvas, processed, box)


def fill_image(image: Tensor, mask: Tensor) -> Tensor:
    """inpainting_fill 0: the masked area of `image` (B, 3, H, W) painted with the colours
    around it: Gaussian averages of the unmasked pixels only, from wide to narrow, each pass
    keeping the narrower one where it has enough unmasked pixels to average."""
    keep = (mask < 0.5).float()
    if keep.sum() == 0:
        return image
    filled = (image * keep).sum((2, 3), keepdim=True) / keep.sum()  # the mean colour
    filled = filled.expand_as(image).clone()
    for sigma in (64.0, 16.0, 4.0, 1.0):
        weight = _blur(keep, sigma)
        average = _blur(image * keep, sigma) / weight.clamp_min(1e-6)
        filled = torch.where(weight > 1e-3, average, filled)
    return image * keep + filled * (1 - keep)


def _blur(x: Tensor, sigma: float) -> Tensor:
    """A separable Gaussian blur of (B, C, H, W), zero outside the picture; a wide one runs
    on a smaller copy (averaged down, blurred, scaled back up), as fast as a narrow one."""
    factor = int(sigma // 4)
    if factor > 1:
        small = torch.nn.functional.avg_pool2d(x, factor, ceil_mode=True)
        blurred = _blur(small, sigma / factor)
        return torch.nn.functional.interpolate(blurred, size=x.shape[-2:], mode="bilinear")
    radius = min(int(3 * sigma), max(x.shape[-2:]))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    x = torch.nn.functional.conv2d(x, horizontal, padding=(0, radius), groups=channels)
    return torch.nn.functional.conv2d(x, vertical, padding=(radius, 0), groups=channels)


def fill_latents(latents: Tensor, latent_mask: Tensor, noise: Tensor, fill: int) -> Tensor:
    """The init latents (B, C, h, w) the sampler starts from, by `inpainting_fill`: 2 puts the
    image's own starting noise (N(0, 1), its seed's first draw, as A1111) in the masked area,
    3 zeros; 0 and 1 change nothing here (0 filled the picture before it was encoded)."""
    if fill == LATENT_NOISE:
        return latents * (1 - latent_mask) + noise * latent_mask
    if fill == LATENT_NOTHING:
        return latents * (1 - latent_mask)
    return latents
