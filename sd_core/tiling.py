"""Seamless tiling (AUTOMATIC1111's "Tiling"): images whose left edge continues their right edge
and whose top continues their bottom, so they repeat without a seam.

Every 2-D convolution of the UNet and of the VAE pads its input circularly instead of with
zeros for the run: what a convolution sees past an edge is the opposite edge, so the model
paints a torus. `circular_padding` switches the layers and puts their own padding back
afterwards (also on an error or a cancel), so the cached model is unchanged for the next job;
`tiling_aware` applies it around a pipeline method when `params.tiling` is on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Concatenate, Literal, ParamSpec, Protocol, TypeVar

from torch import nn

from sd_core.params import GenerationParams

PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
CIRCULAR: PaddingMode = "circular"


@contextmanager
def circular_padding(*models: nn.Module) -> Iterator[int]:
    """Circular padding in every padded `nn.Conv2d` of `models` inside the block; yields how
    many layers were switched."""
    switched: list[tuple[nn.Conv2d, PaddingMode]] = []
    try:
        for model in models:
            for layer in model.modules():
                if not isinstance(layer, nn.Conv2d) or layer.padding_mode == CIRCULAR:
                    continue
                if any(layer._reversed_padding_repeated_twice):  # a 1×1 conv pads nothing
                    switched.append((layer, layer.padding_mode))
                    layer.padding_mode = CIRCULAR
        yield len(switched)
    finally:
        for layer, mode in switched:
            layer.padding_mode = mode


class _Models(Protocol):
    @property
    def unet(self) -> nn.Module: ...

    def vae_for(self, params: GenerationParams) -> nn.Module: ...


S = TypeVar("S", bound=_Models)
P = ParamSpec("P")
R = TypeVar("R")


def tiling_aware(
    method: Callable[Concatenate[S, GenerationParams, P], R],
) -> Callable[Concatenate[S, GenerationParams, P], R]:
    """Run a pipeline method `(self, params, …)` with circular padding in the UNet and the
    VAE that `params` decodes with when `params.tiling` is on; as it is otherwise."""

    @functools.wraps(method)
    def run(self: S, params: GenerationParams, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if not getattr(params, "tiling", False):
            return method(self, params, *args, **kwargs)
        with circular_padding(self.unet, self.vae_for(params)):
            return method(self, params, *args, **kwargs)

    return run
