"""Cheap latent → RGB previews for live progress (no VAE decode).

SD v1.x latents (scaled by 0.18215) map to RGB roughly linearly; the 4×3 factors below are the
widely used least-squares fit of SD v1.x decoder output to its latents. Output images are the
latent's size (1/8 of the final image): enough for a progress thumbnail.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

# rows: latent channels 0..3; columns: R, G, B
SD_V1_LATENT_RGB_FACTORS = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)


def latents_to_rgb(latents: Tensor) -> list[Image.Image]:
    """(B, 4, h, w) scaled latents → B RGB images of size w×h."""
    if latents.ndim != 4 or latents.shape[1] != len(SD_V1_LATENT_RGB_FACTORS):
        raise ValueError(
            f"latents must have shape (B, {len(SD_V1_LATENT_RGB_FACTORS)}, h, w), "
            f"got {tuple(latents.shape)}"
        )
    factors = torch.tensor(SD_V1_LATENT_RGB_FACTORS, dtype=torch.float32)
    rgb = torch.einsum("bchw,cr->bhwr", latents.detach().float().cpu(), factors)
    array = ((rgb + 1) / 2).clamp(0, 1).numpy()
    return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]
