"""sd_core: a from-scratch PyTorch implementation of Stable Diffusion v1.x.

Importing this package is cheap: models are built only by `load_pipeline`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sd_core.params import GenerationParams

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
BUILTIN_MODEL_NAME = "dali-tiny"
BUILTIN_MODEL_PATH = DATA_DIR / "models" / f"{BUILTIN_MODEL_NAME}.safetensors"

if TYPE_CHECKING:
    import torch

    from sd_core.hooks import GenerationHooks
    from sd_core.pipeline import StableDiffusionPipeline
    from sd_core.result import GenerationResult


class GenerationCancelled(Exception):
    """Raised by `StableDiffusionPipeline.generate` when its `cancel` callable returns True."""


def load_pipeline(
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    low_memory: bool = False,
) -> StableDiffusionPipeline:
    """Load a checkpoint (None → the built-in model) into a ready-to-generate pipeline."""
    from sd_core.pipeline import StableDiffusionPipeline

    return StableDiffusionPipeline.from_checkpoint(
        checkpoint, device=device, dtype=dtype, low_memory=low_memory
    )


def __getattr__(name: str) -> Any:
    if name == "StableDiffusionPipeline":
        from sd_core.pipeline import StableDiffusionPipeline

        return StableDiffusionPipeline
    if name == "GenerationHooks":
        from sd_core.hooks import GenerationHooks

        return GenerationHooks
    if name == "GenerationResult":
        from sd_core.result import GenerationResult

        return GenerationResult
    raise AttributeError(name)


__all__ = [
    "BUILTIN_MODEL_NAME",
    "BUILTIN_MODEL_PATH",
    "DATA_DIR",
    "GenerationCancelled",
    "GenerationHooks",
    "GenerationParams",
    "GenerationResult",
    "StableDiffusionPipeline",
    "load_pipeline",
]
