"""Input helpers shared by every tab: messages that name the field, image opening, component
constructors whose input errors say which field they are about, and number conversions."""

from __future__ import annotations

import base64
import io
import itertools
import math
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from stable_diffusion_api.error_text import human_message
from stable_diffusion_api.errors import DomainError

UPLOAD_HINT = "use a PNG, JPEG, WebP or BMP image"
# Names of the request fields as the UI labels them, for error messages.
FIELD_LABELS = {
    "prompt": "Prompt",
    "negative_prompt": "Negative prompt",
    "sampler": "Sampler",
    "steps": "Steps",
    "guidance": "CFG scale",
    "seed": "Seed",
    "width": "Width",
    "height": "Height",
    "batch": "Batch size",
    "clip_skip": "Clip skip",
    "vae": "VAE",
    "model": "Model",
    "init_image": "Image",
    "strength": "Denoising strength",
    "mask": "Mask",
    "device": "Hardware",
    "dtype": "Precision",
    "name": "Project",
}


def explain(exc: BaseException) -> str:
    """A message for the person at the UI: which field, which value, what is allowed."""
    if isinstance(exc, ValidationError):
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()))
            label = FIELD_LABELS.get(where, where or "Input")
            value = error.get("input")
            shown = "" if isinstance(value, dict | list) or value is None else f" ({value!r})"
            message = human_message(dict(error))
            parts.append(f"{label}{shown}: {message}")
        return "; ".join(parts)
    if isinstance(exc, DomainError):
        return exc.message  # already names the field, the value and what is allowed
    return str(exc) or type(exc).__name__


def input_error(message: str) -> gr.Error:
    """An error about what the person entered: shown in the UI, not logged as a crash."""
    return gr.Error(message, print_exception=False)


_private_names = itertools.count()


def private() -> dict[str, Any]:
    """Event options for UI-only wiring: out of the API page, under a name of its own (so a
    private event never takes a public endpoint's name)."""
    return {"api_visibility": "private", "api_name": f"ui_{next(_private_names)}"}


def _image_error(label: str) -> gr.Error:
    return input_error(f"{label}: the file could not be read as an image; {UPLOAD_HINT}.")


def open_image(path: str | None, label: str) -> Image.Image | None:
    """The uploaded file at `path`, fully decoded (None when nothing was uploaded)."""
    if not path:
        return None
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        raise _image_error(label) from None


# Gradio checks inputs itself ("Value 4096 is greater than maximum value 2048.", a file PIL
# cannot open); the components made below say which field the message is about.

_UNREADABLE = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


def _named(label: Any, preprocess: Callable[[Any], Any], payload: Any, image: bool) -> Any:
    try:
        return preprocess(payload)
    except gr.Error as exc:
        raise input_error(f"{label}: {exc.message}") from None
    except _UNREADABLE:
        if not image:
            raise
        raise _image_error(str(label)) from None


ComponentT = TypeVar("ComponentT", bound="gr.components.Component")


def _with_field_names(component: ComponentT, default_label: str, image: bool) -> ComponentT:
    """`component`, whose input errors now name its field (and say an unreadable image is one).

    An instance attribute rather than a subclass: Gradio writes a `.pyi` stub beside any module
    that subclasses a component, a frozen copy of that module which mypy then reads instead.
    """
    preprocess = component.preprocess

    def checked(payload: Any) -> Any:
        return _named(component.label or default_label, preprocess, payload, image=image)

    component.preprocess = checked  # type: ignore[method-assign]
    return component


def image_upload(**kwargs: Any) -> gr.Image:
    return _with_field_names(gr.Image(**kwargs), "Image", image=True)


def mask_editor(**kwargs: Any) -> gr.ImageEditor:
    return _with_field_names(gr.ImageEditor(**kwargs), "Image", image=True)


def slider(*args: Any, **kwargs: Any) -> gr.Slider:
    return _with_field_names(gr.Slider(*args, **kwargs), "Value", image=False)


def dropdown(*args: Any, **kwargs: Any) -> gr.Dropdown:
    return _with_field_names(gr.Dropdown(*args, **kwargs), "Choice", image=False)


def radio(*args: Any, **kwargs: Any) -> gr.Radio:
    return _with_field_names(gr.Radio(*args, **kwargs), "Choice", image=False)


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def mask_from_layers(layers: list[Image.Image | None], size: tuple[int, int]) -> Image.Image | None:
    """White where any layer is painted in a light colour, black elsewhere (L, `size`).

    Painted means opaque enough (alpha > 0) and light (luma ≥ 128): the editor's white brush,
    or an uploaded black-and-white mask used as a layer. None when nothing is painted.
    """
    mask = Image.new("L", size, 0)
    for layer in layers:
        if layer is None:
            continue
        rgba = layer.convert("RGBA")
        if rgba.size != size:
            raise input_error(
                f"Mask: the painted layer is {rgba.width}×{rgba.height} but the image is "
                f"{size[0]}×{size[1]}; they must be the same size."
            )
        light = rgba.convert("L").point(lambda v: 255 if v >= 128 else 0)
        opaque = rgba.getchannel("A").point(lambda v: 255 if v > 0 else 0)
        painted = Image.composite(light, Image.new("L", size, 0), opaque)
        mask = Image.composite(Image.new("L", size, 255), mask, painted)
    return mask if mask.getbbox() is not None else None


def optional_int(value: float | int | None) -> int | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return int(value)


def size_or_native(value: float | int | None) -> int | None:
    """0 (or empty) means "the model's native size"."""
    size = optional_int(value)
    return size if size else None
