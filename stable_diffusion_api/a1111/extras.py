"""AUTOMATIC1111's "Extras": upscaling images, and the upscaler lists its clients read.

Upscalers are `sd_core.upscalers`' (None, Lanczos, Nearest, and the model files in
`<data>/upscalers/`: ESRGAN, Real-ESRGAN, SwinIR, … through spandrel), looked up by name among
the files found. A1111's request shape: `resize_mode` 0 scales by `upscaling_resize`, 1 scales
to `upscaling_resize_w` × `upscaling_resize_h` (by the larger of the two ratios; cropped to
exactly that size around the centre when `upscaling_crop`). `upscaler_2`, blended in with
`extras_upscaler_2_visibility`, upscales the original too. No face restorers are installed, so
`gfpgan_visibility` / `codeformer_visibility` above 0 are refused (422 naming them).

Where it runs: in the web process, in the route's thread (the routes are plain `def`), one
upscale at a time (`_lock`), with torch imported on the first model upscale. Built-ins are
quick; a model upscale of a large image on the CPU can take minutes and holds a thread pool
thread meanwhile — moving those to the device worker's queue is left to do.

The list's `scale` of a model file is read from its name ("4x-UltraSharp", "RealESRGAN_x2plus")
so listing loads no model; a name without one says 4, the factor of almost every such file.
"""

from __future__ import annotations

import base64
import io
import re
import threading
from pathlib import Path
from typing import Annotated, Literal

from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from sd_core.assets import UPSCALERS_DIR
from sd_core.upscalers import (
    BUILTINS,
    MAX_SCALE,
    NONE,
    library,
    upscale_image,
    upscaler_names,
)
from stable_diffusion_api.errors import InvalidField
from stable_diffusion_api.schemas import Number, Upload
from stable_diffusion_api.services.storage import decode_image

# A1111's latent upscale modes for the hires fix (sd_core/hires.py implements them).
LATENT_UPSCALE_MODES = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
)
MAX_BATCH_IMAGES = 32
DEFAULT_MODEL_SCALE = 4
_SCALE_IN_NAME = re.compile(r"(?<![0-9a-z])([1-8])x|x([1-8])(?![0-9])", re.IGNORECASE)
_REAL_ESRGAN = re.compile(r"real[-_ ]?esrgan", re.IGNORECASE)

Visibility = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False), Number]
UpscalerName = Annotated[str, Field(max_length=255)]
Side = Annotated[int, Field(ge=1, le=8192), Number]


class ExtrasRequest(BaseModel):
    """A1111's `ExtrasBaseRequest`; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    resize_mode: Annotated[Literal[0, 1], Number] = 0
    show_extras_results: StrictBool = True
    gfpgan_visibility: Visibility = 0.0
    codeformer_visibility: Visibility = 0.0
    codeformer_weight: Visibility = 0.0
    upscaling_resize: Annotated[float, Field(gt=0, le=MAX_SCALE, allow_inf_nan=False), Number] = 2.0
    upscaling_resize_w: Side = 512
    upscaling_resize_h: Side = 512
    upscaling_crop: StrictBool = True
    upscaler_1: UpscalerName | None = NONE
    upscaler_2: UpscalerName | None = NONE
    extras_upscaler_2_visibility: Visibility = 0.0
    upscale_first: StrictBool = False


class ExtrasSingleImageRequest(ExtrasRequest):
    image: Upload = ""


class ExtrasImage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data: Upload
    name: Annotated[str, Field(max_length=255)] = ""


class ExtrasBatchImagesRequest(ExtrasRequest):
    imageList: Annotated[list[ExtrasImage], Field(max_length=MAX_BATCH_IMAGES)]  # noqa: N815


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None
    model_path: str | None
    model_url: str | None
    scale: float


class RealesrganItem(BaseModel):
    name: str
    path: str | None
    scale: int | None


class NameItem(BaseModel):
    name: str


def scale_in_name(name: str) -> int:
    """The factor a model file's name states ("4x-…", "…_x2plus"), else 4."""
    match = _SCALE_IN_NAME.search(name)
    return int(match.group(1) or match.group(2)) if match else DEFAULT_MODEL_SCALE


class Extras:
    """The upscalers of `folder` for A1111's lists and extras endpoints."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()

    @classmethod
    def under(cls, data_dir: Path) -> Extras:
        return cls(data_dir / UPSCALERS_DIR)

    # -- lists ----------------------------------------------------------------------------------

    def upscalers(self) -> list[UpscalerItem]:
        items = [
            UpscalerItem(name=name, model_name=None, model_path=None, model_url=None, scale=4)
            for name in BUILTINS
        ]
        for entry in library(self.folder).files():
            if entry.name in BUILTINS:
                continue
            items.append(
                UpscalerItem(
                    name=entry.name,
                    model_name=entry.path.name,
                    model_path=entry.path.relative_to(self.folder).as_posix(),
                    model_url=None,
                    scale=scale_in_name(entry.name),
                )
            )
        return items

    def realesrgan_models(self) -> list[RealesrganItem]:
        return [
            RealesrganItem(name=item.name, path=item.model_path, scale=int(item.scale))
            for item in self.upscalers()
            if item.model_path is not None and _REAL_ESRGAN.search(item.name)
        ]

    @staticmethod
    def latent_upscale_modes() -> list[NameItem]:
        return [NameItem(name=mode) for mode in LATENT_UPSCALE_MODES]

    # -- upscaling ------------------------------------------------------------------------------

    def check(self, request: ExtrasRequest) -> tuple[str, str]:
        """The two upscaler names, checked ("None" for one left out); InvalidField naming the
        field otherwise, before any image is decoded."""
        for field in ("gfpgan_visibility", "codeformer_visibility"):
            value = getattr(request, field)
            if value > 0:
                raise InvalidField(
                    field, value, "no face restorers are installed (send 0; see /face-restorers)"
                )
        names = upscaler_names(self.folder)
        chosen = []
        for field in ("upscaler_1", "upscaler_2"):
            name = getattr(request, field) or NONE
            known = next((n for n in names if n == name), None) or next(
                (n for n in names if n.lower() == name.lower()), None
            )
            if known is None:
                raise InvalidField(field, name, f"upscalers installed: {', '.join(names)}")
            chosen.append(known)
        return chosen[0], chosen[1]

    def single(self, request: ExtrasSingleImageRequest) -> ExtrasSingleImageResponse:
        names = self.check(request)
        image = decode_image(request.image, "image")
        result, info = self._upscale(image, request, names, "image")
        return ExtrasSingleImageResponse(html_info=html_info(info), image=encode(result, info))

    def batch(self, request: ExtrasBatchImagesRequest) -> ExtrasBatchImagesResponse:
        names = self.check(request)
        images = [
            decode_image(item.data, f"imageList.{i}.data")
            for i, item in enumerate(request.imageList)
        ]
        encoded, info = [], ""
        for i, image in enumerate(images):
            result, info = self._upscale(image, request, names, f"imageList.{i}.data")
            encoded.append(encode(result, info))
        return ExtrasBatchImagesResponse(html_info=html_info(info), images=encoded)

    def _upscale(
        self, image: Image.Image, request: ExtrasRequest, names: tuple[str, str], field: str
    ) -> tuple[Image.Image, str]:
        first, second = names
        if request.resize_mode == 1:
            width, height = request.upscaling_resize_w, request.upscaling_resize_h
            scale = max(width / image.width, height / image.height)
        else:
            width = height = 0
            scale = request.upscaling_resize
        parameters = image.info.get("parameters")
        with self._lock:
            result = self._run(image, first, scale, "upscaler_1")
            visibility = request.extras_upscaler_2_visibility
            if second != NONE and visibility > 0:
                other = self._run(image, second, scale, "upscaler_2").resize(result.size)
                result = Image.blend(result.convert("RGB"), other.convert("RGB"), visibility)
        if request.resize_mode == 1 and request.upscaling_crop and first != NONE:
            result = ImageOps.fit(result, (width, height), Image.Resampling.LANCZOS)
        fields = {"Postprocess upscale by": f"{scale:g}", "Postprocess upscaler": first}
        if request.resize_mode == 1:
            fields = {"Postprocess upscale to": f"{width}x{height}", **fields}
            fields["Postprocess crop to fit"] = str(request.upscaling_crop)
        if second != NONE and request.extras_upscaler_2_visibility > 0:
            fields["Postprocess upscaler 2"] = second
            fields["Postprocess upscaler 2 visibility"] = f"{visibility:g}"
        info = ", ".join(f"{key}: {value}" for key, value in fields.items())
        if isinstance(parameters, str):
            result.info["parameters"] = parameters
        return result, info

    def _run(self, image: Image.Image, name: str, scale: float, field: str) -> Image.Image:
        try:
            return upscale_image(image, name, scale, self.folder)
        except ValueError as e:  # UpscalerError, CheckpointError: a bad scale, a refused file
            raise InvalidField(field, name, str(e)) from None


def html_info(info: str) -> str:
    return f"<p>{info}</p>" if info else ""


def encode(image: Image.Image, info: str) -> str:
    """A PNG in base64, with the original's infotext (if any) and A1111's `postprocessing`."""
    chunks = PngInfo()
    parameters = image.info.get("parameters")
    if isinstance(parameters, str):
        chunks.add_text("parameters", parameters)
    chunks.add_text("postprocessing", info)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=chunks)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
