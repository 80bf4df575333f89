"""Image upscalers: PIL's resamplers and ESRGAN-family model files, by name.

    None        no upscaling: the image as it is
    Lanczos     PIL's Lanczos resize to the target size
    Nearest     PIL's nearest-neighbour resize
    <file stem> a model file in the upscalers folder (`data/upscalers/`): `.safetensors`, or a
                `.pth`/`.pt` pickle read with `torch.load(weights_only=True)`, which refuses a
                file that would run code. The architecture (ESRGAN, Real-ESRGAN, SwinIR, HAT,
                Compact, …) is recognised from the tensors by the `spandrel` library.

A model upscales by its own factor (usually 4); it is run again while the image is still
smaller than the target (at most `MAX_PASSES` times), then Lanczos brings it to the exact size,
as A1111 does. Images larger than a tile are cut into tiles, each run with `TILE_PAD` pixels of
its neighbours around it and only its own part kept, so memory stays bounded and no seams show.

Model files are found through a `FileLibrary` (names looked up among the files found, never
joined to a path) and kept loaded while the file is unchanged. torch and `spandrel` are
imported on the first model upscale, so listing and the built-ins cost no torch import; without
spandrel the built-ins work and a model file answers with an `UpscalerError` saying so.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sd_core.file_library import FileLibrary, stem_name

NONE, LANCZOS, NEAREST = "None", "Lanczos", "Nearest"
BUILTINS = (NONE, LANCZOS, NEAREST)
MODEL_SUFFIXES = (".safetensors", ".pth", ".pt")
MAX_SCALE = 8.0
MAX_SIDE = 8192  # the largest output width or height
MAX_PASSES = 3
TILE, TILE_PAD = 256, 16
# The model purposes an upscaler may have (spandrel's words); inpainting and face models are not.
UPSCALING_PURPOSES = ("SR", "Restoration")


class UpscalerError(ValueError):
    """An upscaler or scale that cannot be used, with the reason in words."""


@dataclass(frozen=True)
class UpscaleModel:
    """A loaded model file: its name, file, factor, architecture and spandrel descriptor."""

    name: str
    path: Path
    scale: int
    architecture: str
    descriptor: Any  # spandrel.ImageModelDescriptor (spandrel ships no type information)


@contextmanager
def _placeholder_torchvision() -> Iterator[None]:
    """While spandrel imports, stand in for torchvision when it is not installed.

    spandrel imports two torchvision functions at import time, for its inpainting (LaMa) and
    face-restoration (RestoreFormer) models, neither of which is an upscaler. A CPU torch from
    download.pytorch.org has no matching torchvision on PyPI, so Dali does not require it; the
    placeholder modules are removed again once spandrel is imported, and calling one raises.
    """
    if importlib.util.find_spec("torchvision") is not None:
        yield
        return

    def missing(name: str) -> Any:
        if name.startswith("__"):  # `__file__`, `__path__`, …: what a module may lack
            raise AttributeError(name)

        def call(*args: object, **kwargs: object) -> None:
            raise RuntimeError(f"torchvision is not installed (needed for {name})")

        return call

    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    modules = {name: types.ModuleType(name) for name in names}
    modules["torchvision.transforms.functional"].__getattr__ = missing  # type: ignore[method-assign]
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in modules.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


def import_spandrel() -> Any:
    """The `spandrel` module, or UpscalerError when it is not installed."""
    try:
        with _placeholder_torchvision():
            import spandrel
    except ImportError as e:
        raise UpscalerError(
            "model upscalers need the spandrel package: pip install spandrel==0.4.2 "
            f"(see requirements-upscalers.txt) ({e})"
        ) from e
    return spandrel


def read_state_dict(path: Path) -> dict[str, Any]:
    """The tensors of a model file: safetensors parsed by `TensorSource`, a pickle loaded with
    `weights_only=True` (nested dicts such as Real-ESRGAN's `params_ema` kept for spandrel)."""
    from sd_core.tensor_source import CheckpointError, TensorSource, safe_torch_load

    if path.suffix.lower() == ".safetensors":
        source = TensorSource(path, "upscaler")
        return {key: source.pop(key) for key in source.keys()}  # noqa: SIM118
    obj = safe_torch_load(path, "upscaler")
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"upscaler {str(path)!r} holds a {type(obj).__name__}, not a state dict"
        )
    return dict(obj)


def load_model(path: Path) -> UpscaleModel:
    """Read a model file and build its network (on the CPU, float32, in eval mode)."""
    spandrel = import_spandrel()
    state_dict = read_state_dict(path)
    try:
        descriptor = spandrel.ModelLoader("cpu").load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError as e:
        raise UpscalerError(
            f"upscaler {path.name!r}: the architecture of its weights is not one spandrel knows"
        ) from e
    except (KeyError, RuntimeError, ValueError) as e:
        raise UpscalerError(f"upscaler {path.name!r} could not be built: {e}") from e
    purpose = getattr(descriptor, "purpose", None)
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or purpose not in (
        UPSCALING_PURPOSES
    ):
        raise UpscalerError(f"upscaler {path.name!r} is a {purpose} model, not an upscaler")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UpscalerError(f"upscaler {path.name!r} does not take and give RGB images")
    descriptor.eval()
    return UpscaleModel(
        stem_name(path), path, int(descriptor.scale), str(descriptor.architecture.name), descriptor
    )


def model_library(folder: Path) -> FileLibrary[UpscaleModel]:
    return FileLibrary(folder, MODEL_SUFFIXES, load_model)


_libraries: dict[Path, FileLibrary[UpscaleModel]] = {}


def library(folder: Path) -> FileLibrary[UpscaleModel]:
    """The one library of `folder` in this process (so a loaded model is loaded once)."""
    key = Path(folder).resolve()
    found = _libraries.get(key)
    if found is None:
        found = _libraries.setdefault(key, model_library(key))
    return found


def upscaler_names(folder: Path | None) -> list[str]:
    """The built-ins, then the model files of `folder` (none when it is None or missing)."""
    models = library(folder).names() if folder is not None else []
    return [*BUILTINS, *(name for name in models if name not in BUILTINS)]


def target_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """The output size for `scale` (each side at least 1), or UpscalerError when out of range."""
    if not math.isfinite(scale) or not 0 < scale <= MAX_SCALE:
        raise UpscalerError(f"scale {scale} is out of range: more than 0, at most {MAX_SCALE:g}")
    width, height = (max(1, round(side * scale)) for side in size)
    if max(width, height) > MAX_SIDE:
        raise UpscalerError(
            f"the upscaled image would be {width}×{height}; at most {MAX_SIDE} pixels a side"
        )
    return width, height


def upscale_image(
    image: Image.Image,
    name: str,
    scale: float,
    folder: Path | None,
    *,
    size: tuple[int, int] | None = None,
) -> Image.Image:
    """`image` upscaled by `scale` (or to `size`, when given) with the upscaler `name`.

    "None" gives the image unchanged. An unknown name, a bad scale or a model file that cannot
    be used raise UpscalerError; a refused or damaged file raises `tensor_source`'s
    CheckpointError. Both are ValueErrors.
    """
    if name == NONE:
        return image.copy()
    width, height = size if size is not None else target_size(image.size, scale)
    if size is not None and (min(size) < 1 or max(size) > MAX_SIDE):
        raise UpscalerError(f"size {width}×{height} is out of range: 1 … {MAX_SIDE} a side")
    if name in (LANCZOS, NEAREST):
        method = Image.Resampling.LANCZOS if name == LANCZOS else Image.Resampling.NEAREST
        return image.resize((width, height), method)
    model = library(folder).get(name) if folder is not None else None
    if model is None:
        raise UpscalerError(f"no upscaler called {name!r}; there are: {upscaler_names(folder)}")
    return model_upscale(image, model, (width, height))


def model_upscale(image: Image.Image, model: UpscaleModel, size: tuple[int, int]) -> Image.Image:
    """Run `model` until the image reaches `size`, then resize to it exactly (Lanczos); an
    alpha channel is resized with Lanczos alone."""
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    current = image.convert("RGB")
    for _ in range(MAX_PASSES):
        if current.width >= size[0] and current.height >= size[1]:
            break
        current = run_tiled(model, current)
    if current.size != size:
        current = current.resize(size, Image.Resampling.LANCZOS)
    if alpha is not None:
        current.putalpha(alpha.resize(size, Image.Resampling.LANCZOS))
    return current


def run_tiled(model: UpscaleModel, image: Image.Image, tile: int = TILE) -> Image.Image:
    """One pass of `model` over an RGB image, `tile`×`tile` pieces at a time."""
    import numpy as np
    import torch

    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    pixels = pixels.permute(2, 0, 1).unsqueeze(0)  # 1 × 3 × H × W in [0, 1]
    _, _, height, width = pixels.shape
    s = model.scale
    out = torch.empty((1, 3, height * s, width * s))
    with torch.inference_mode():
        for y in range(0, height, tile):
            for x in range(0, width, tile):
                y0, x0 = max(0, y - TILE_PAD), max(0, x - TILE_PAD)
                y1, x1 = min(height, y + tile + TILE_PAD), min(width, x + tile + TILE_PAD)
                result = model.descriptor(pixels[:, :, y0:y1, x0:x1])
                h, w = min(tile, height - y), min(tile, width - x)
                keep = result[
                    :, :, (y - y0) * s : (y - y0 + h) * s, (x - x0) * s : (x - x0 + w) * s
                ]
                out[:, :, y * s : (y + h) * s, x * s : (x + w) * s] = keep
    array = (out[0].permute(1, 2, 0).clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    return Image.fromarray(array, "RGB")
