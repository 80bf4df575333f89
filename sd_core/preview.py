"""Cheap latent → RGB previews for live progress (no VAE decode).

SD v1.x latents (scaled by 0.18215) map to RGB roughly linearly; the 4×3 factors below are the
widely used least-squares fit of SD v1.x decoder output to its latents. Output images are the
latent's size (1/8 of the final image): enough for a progress thumbnail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # the web server draws previews from numpy latents without loading torch
    from torch import Tensor

# rows: latent channels 0..3; columns: R, G, B
SD_V1_LATENT_RGB_FACTORS = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)


def latent_to_rgb(latent: np.ndarray) -> Image.Image:
    """One (4, h, w) scaled latent, as a numpy array → an RGB image of size w×h."""
    if latent.ndim != 3 or latent.shape[0] != len(SD_V1_LATENT_RGB_FACTORS):
        raise ValueError(
            f"a latent must have shape ({len(SD_V1_LATENT_RGB_FACTORS)}, h, w), "
            f"got {tuple(latent.shape)}"
        )
    factors = np.asarray(SD_V1_LATENT_RGB_FACTORS, dtype=np.float32)
    rgb = np.einsum("chw,cr->hwr", latent.astype(np.float32, copy=False), factors)
    return Image.fromarray((np.clip((rgb + 1) / 2, 0, 1) * 255).round().astype(np.uint8))


def latents_to_rgb(latents: Tensor) -> list[Image.Image]:
    """(B, 4, h, w) scaled latents → B RGB images of size w×h."""
    if latents.ndim != 4 or latents.shape[1] != len(SD_V1_LATENT_RGB_FACTORS):
        raise ValueError(
            f"latents must have shape (B, {len(SD_V1_LATENT_RGB_FACTORS)}, h, w), "
            f"got {tuple(latents.shape)}"
        )
    return [latent_to_rgb(latent) for latent in latents.detach().float().cpu().numpy()]
