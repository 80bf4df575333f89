"""Pictures ↔ tensors for the pipeline, the check of a run's input images, and the spherical
blend of two noise draws.

Images travel as (B, 3, H, W) float32 in [-1, 1], masks as (1, 1, H, W) of 0/1 (1 = repaint).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from sd_core.result import IMG2IMG, INPAINT, TXT2IMG


def slerp(t: float, a: Tensor, b: Tensor) -> Tensor:
    """Spherical interpolation per image between noise tensors a and b (B, C, h, w)."""
    a_flat, b_flat = a.flatten(1), b.flatten(1)
    dot = (
        a_flat / a_flat.norm(dim=1, keepdim=True) * b_flat / b_flat.norm(dim=1, keepdim=True)
    ).sum(1)
    omega = torch.acos(dot.clamp(-1.0, 1.0)).view(-1, 1, 1, 1)
    so = torch.sin(omega)
    safe = so.abs() > 1e-6
    mixed = (torch.sin((1.0 - t) * omega) * a + torch.sin(t * omega) * b) / torch.where(
        safe, so, 1.0
    )
    return torch.where(safe, mixed, (1.0 - t) * a + t * b)


def image_to_tensor(image: Image.Image, width: int, height: int) -> Tensor:
    """PIL image → (1, 3, height, width) float32 in [-1, 1], resized if needed."""
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0


def mask_to_tensor(mask: Image.Image, width: int, height: int) -> Tensor:
    """PIL mask → (1, 1, height, width) float32 of 0/1; white (≥ 0.5) marks what to repaint."""
    mask = mask.convert("L")
    if mask.size != (width, height):
        mask = mask.resize((width, height), Image.Resampling.LANCZOS)
    array = np.asarray(mask, dtype=np.float32) / 255.0
    return (torch.from_numpy(array) >= 0.5).float()[None, None]


def tensor_to_images(images: Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] → PIL images (rounded like diffusers' numpy_to_pil)."""
    array = (images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]


def check_images(
    init_image: Image.Image | None, mask: Image.Image | None, inpainting_model: bool
) -> str:
    """The run's mode ("txt2img", "img2img", "inpaint") from its input images; ValueError for
    images that don't fit together."""
    if mask is not None and init_image is None:
        raise ValueError("mask needs an init_image to inpaint; got a mask without init_image")
    if init_image is not None and not isinstance(init_image, Image.Image):
        raise ValueError(f"init_image must be a PIL image, got {type(init_image).__name__}")
    if mask is not None:
        assert init_image is not None
        if not isinstance(mask, Image.Image):
            raise ValueError(f"mask must be a PIL image, got {type(mask).__name__}")
        if mask.size != init_image.size:
            raise ValueError(
                f"mask size {mask.size[0]}x{mask.size[1]} must equal init_image size "
                f"{init_image.size[0]}x{init_image.size[1]}"
            )
    if inpainting_model and mask is None:
        raise ValueError(
            "this is an inpainting checkpoint (UNet in_channels 9): it needs init_image and mask"
        )
    return INPAINT if mask is not None else IMG2IMG if init_image is not None else TXT2IMG
