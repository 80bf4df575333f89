"""A half-precision VAE decode that never hands back NaN (a black image): the decode is checked,
and an image whose float16 / bfloat16 decode overflowed is decoded again in float32.

SD v1's VAE decoder has activations in the thousands in its last up-blocks; in float16 (largest
finite value 65504) some latents overflow there, and the infinity becomes NaN in the next
GroupNorm, a black PNG. AUTOMATIC1111 answers the same with its "revert VAE to 32-bit floats"
option; here it is always on: the check costs one reduction per image, and float32 runs only for
an image that needs it. A float32 decode is returned as it is (no check, no copy).
"""

from __future__ import annotations

import logging
import weakref

import torch
from torch import Tensor

from sd_core.tiled_vae import VaeTiling, vae_decode
from sd_core.vae import AutoencoderKL

log = logging.getLogger(__name__)

# The float32 copy of each half-precision VAE that once needed one, kept while the VAE lives.
_FLOAT32: weakref.WeakKeyDictionary[AutoencoderKL, AutoencoderKL] = weakref.WeakKeyDictionary()


def float32_copy(vae: AutoencoderKL) -> AutoencoderKL:
    """A float32 copy of `vae` on its device, built once (from its state dict, so a compiled
    or otherwise transformed VAE gives a plain one)."""
    copy = _FLOAT32.get(vae)
    if copy is None:
        parameter = next(vae.parameters())
        copy = AutoencoderKL(vae.config).to(parameter.device)
        copy.load_state_dict({k: v.float() for k, v in vae.state_dict().items()})
        copy.eval().requires_grad_(False)
        _FLOAT32[vae] = copy
    return copy


def decode_finite(vae: AutoencoderKL, z: Tensor, tiling: VaeTiling) -> Tensor:
    """`vae_decode(vae, z, tiling)`; (1, C, h, w) → (1, 3, 8h, 8w). When `z` is half precision
    and the decode holds a NaN or an infinity, the same latents decoded by a float32 copy of
    the VAE instead (float32 out)."""
    out = vae_decode(vae, z, tiling)
    if z.dtype == torch.float32 or bool(torch.isfinite(out).all()):
        return out
    log.warning("the %s VAE decode overflowed; decoding this image in float32", z.dtype)
    return vae_decode(float32_copy(vae), z.float(), tiling)
