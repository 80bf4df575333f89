"""From AUTOMATIC1111's vocabulary to Dali's queue, and back.

An A1111 request becomes a `Plan`: the checks A1111 would make, then `n_iter` iterations of
`batch_size` images, each cut into queue jobs of at most the service's batch limit. Seeds follow
A1111's rule: image i of the whole request has seed `seed + i` (and variation seed
`subseed + i`), and since the engine gives image i of a job seed `job seed + i` with its own
generator, cutting a batch into jobs changes no pixel.

Back the other way: the `info` JSON string A1111 answers with (`Processed.js()`), the base64
images, and the `png-info` reading of a file's infotext.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import io
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from fastapi.exceptions import RequestValidationError
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError
from pydantic import ValidationError

from sd_core.infotext import parse_infotext
from sd_core.params import INPAINT_FILLS
from stable_diffusion_api import __version__
from stable_diffusion_api.a1111.fields import check_refused
from stable_diffusion_api.a1111.hires import HIRES_FIELDS, hires_infotext
from stable_diffusion_api.a1111.schemas import (
    MAX_INIT_IMAGES,
    A1111Request,
    Img2ImgRequest,
    PngInfoResponse,
)
from stable_diffusion_api.errors import InvalidField
from stable_diffusion_api.schemas import (
    MAX_BATCH,
    MAX_CLIP_SKIP,
    MAX_SEED,
    GenerationCreate,
    GenerationOut,
)
from stable_diffusion_api.services.registry import ModelEntry
from stable_diffusion_api.services.samplers import SamplerCatalog
from stable_diffusion_api.services.storage import decode_image

VERSION = f"dali-{__version__}"
DEFAULT_MASK_BLUR = 4  # A1111's default
# Names of GenerationCreate fields in A1111's words, for error messages.
A1111_FIELD = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "sampler": "sampler_name",
    "steps": "steps",
    "guidance": "cfg_scale",
    "seed": "seed",
    "width": "width",
    "height": "height",
    "batch": "batch_size",
    "model": "override_settings.sd_model_checkpoint",
    "init_image": "init_images.0",
    "strength": "denoising_strength",
    "mask": "mask",
    "clip_skip": "override_settings.CLIP_stop_at_last_layers",
    "vae": "override_settings.sd_vae",
}
CLIP_SKIP_OPTION = "CLIP_stop_at_last_layers"
# A1111's VAE option: a VAE file's name, "Automatic" (Dali: the project's default) or "None"
# (the checkpoint's own). The infotext keys of the VAE an image was decoded with follow.
SD_VAE_OPTION = "sd_vae"
AUTOMATIC_VAE = "Automatic"
# Infotext keys read back into override settings ("use these settings").
INFOTEXT_OPTIONS = {"Clip skip": CLIP_SKIP_OPTION, "VAE": SD_VAE_OPTION}


@dataclass(frozen=True)
class Job:
    """One queue job of a plan: `batch` images from `seed` (and `variation_seed`) upwards."""

    seed: int
    batch: int
    variation_seed: int | None = None


@dataclass
class Plan:
    """What an A1111 request asks the queue for."""

    mode: str  # "txt2img" | "img2img"
    base: dict[str, Any]  # GenerationCreate fields shared by every job
    jobs: list[Job]
    seed: int
    subseed: int
    subseed_strength: float
    model: ModelEntry
    timestamp: str = field(default_factory=lambda: dt.datetime.now().strftime("%Y%m%d%H%M%S"))

    @property
    def all_seeds(self) -> list[int]:
        return [job.seed + i for job in self.jobs for i in range(job.batch)]

    @property
    def all_subseeds(self) -> list[int]:
        return [self.subseed + i for i in range(len(self.all_seeds))]

    def generation(self, job: Job) -> GenerationCreate:
        fields = {**self.base, "seed": job.seed, "batch": job.batch}
        if job.variation_seed is not None:
            fields["variation_seed"] = job.variation_seed
            fields["variation_strength"] = self.subseed_strength
        return GenerationCreate.model_validate(fields)


# -- checks ---------------------------------------------------------------------------------------


def clip_skip_option(value: Any, field_name: str) -> int:
    """A1111's `CLIP_stop_at_last_layers` option (1 … 12; A1111's UI sends it as a number,
    some clients as a float like 2.0, an infotext as text): Dali's `clip_skip`. InvalidField
    names `field_name`."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CLIP_SKIP:
        raise InvalidField(field_name, value, f"an integer from 1 to {MAX_CLIP_SKIP}")
    return value


def check_supported(request: A1111Request) -> None:
    """Refuse (422) what Dali would otherwise silently not do (`fields.check_refused`)."""
    if not request.prompt.strip():
        # A1111 takes an empty prompt; Dali's queue needs one to name and find the image by.
        raise InvalidField("prompt", request.prompt, "send a prompt that is not blank")
    check_refused(request)


def draw_seed(seed: int, count: int, field_name: str) -> int:
    """The first seed of `count` consecutive ones: `seed`, or random for -1 (A1111)."""
    if seed == -1:
        return secrets.randbelow(MAX_SEED - count + 2)
    if seed + count - 1 > MAX_SEED:
        raise InvalidField(
            field_name, seed, f"seed + images - 1 must stay ≤ {MAX_SEED}; {count} images asked"
        )
    return seed


def split_jobs(seed: int, subseed: int | None, n_iter: int, batch_size: int) -> list[Job]:
    """n_iter iterations of batch_size images, each cut into jobs of at most MAX_BATCH."""
    jobs = []
    offset = 0
    for _ in range(n_iter):
        left = batch_size
        while left:
            batch = min(left, MAX_BATCH)
            variation = subseed + offset if subseed is not None else None
            jobs.append(Job(seed + offset, batch, variation))
            offset += batch
            left -= batch
    return jobs


def inpaint_infotext(extra: dict[str, str]) -> dict[str, Any]:
    """An img2img infotext's inpainting settings; A1111 reads a key left out as its UI's
    default (inpaint masked, original, whole picture, padding 32; no blur key: not set)."""
    content = extra.get("Masked content", "original")
    return {
        "mask_blur": extra.get("Mask blur"),
        "inpainting_mask_invert": int(extra.get("Mask mode") == "Inpaint not masked"),
        "inpainting_fill": {v: k for k, v in INPAINT_FILLS.items()}.get(content, 1),
        "inpaint_full_res": extra.get("Inpaint area") == "Only masked",
        "inpaint_full_res_padding": extra.get("Masked area padding", 32),
    }


def _flag(text: str | None) -> bool | str | None:
    """An infotext's "True"/"False" as a boolean (the request's booleans are strict); any
    other text is passed on, to be refused naming its field."""
    if text is None:
        return None
    return {"true": True, "false": False}.get(text.strip().lower(), text)


def infotext_defaults(request: A1111Request) -> dict[str, Any]:
    """A1111 ≥ 1.8's `infotext` field: values read from it fill the fields not sent."""
    if not request.infotext:
        return {}
    parsed = parse_infotext(request.infotext)
    values = {
        "prompt": parsed.prompt or None,
        "negative_prompt": parsed.negative_prompt or None,
        "steps": parsed.steps,
        "sampler_name": parsed.sampler,
        "scheduler": parsed.schedule_type,
        "cfg_scale": parsed.cfg_scale,
        "seed": parsed.seed,
        "width": parsed.width,
        "height": parsed.height,
        "denoising_strength": parsed.denoising_strength,
        # The image's own variation seed and blend, so it is made again as it was.
        "subseed": parsed.extra.get("Variation seed"),
        "subseed_strength": parsed.extra.get("Variation seed strength"),
        "tiling": _flag(parsed.extra.get("Tiling")),
        "eta": parsed.extra.get("Eta DDIM") or parsed.extra.get("Eta"),
    }
    if isinstance(request, Img2ImgRequest):
        values.update(inpaint_infotext(parsed.extra))
    else:
        values.update(hires_infotext(parsed.extra))
    chosen: dict[str, Any] = {
        key: value
        for key, value in values.items()
        if value is not None and key not in request.model_fields_set
    }
    options = {
        option: parsed.extra[key]
        for key, option in INFOTEXT_OPTIONS.items()
        if key in parsed.extra and option not in request.override_settings
    }
    if options:
        chosen["override_settings"] = {**request.override_settings, **options}
    return chosen


def a1111_field(name: str) -> str:
    """A `GenerationCreate` field's name as A1111's request spells it."""
    return A1111_FIELD.get(name, HIRES_FIELDS.get(name, name))


def request_error(exc: ValidationError) -> RequestValidationError:
    """The queue schema's errors, located at the A1111 field the value came from."""
    errors = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        field = a1111_field(loc[0]) if loc else "body"
        errors.append(
            {
                "type": error["type"],
                "loc": ["body", *field.split("."), *loc[1:]],
                "msg": error["msg"],
            }
        )
    return RequestValidationError(errors)


# -- images ---------------------------------------------------------------------------------------


def decode_base64(data: str, field_name: str) -> bytes:
    """The bytes of a base64 string or `data:` URL; InvalidField naming `field_name` otherwise."""
    payload = data.strip()
    if payload.startswith("data:"):
        payload = payload.partition(",")[2]
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not raw:
        raise InvalidField(field_name, "<data>", "send the image as base64 (or a data: URL)")
    return raw


def encode_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def fit(image: Image.Image, width: int, height: int, resize_mode: int) -> Image.Image:
    """A1111's resize modes: 0 (and 3) stretch, 1 crop to fill, 2 fit and fill the borders."""
    size = (width, height)
    if image.size == size:
        return image
    if resize_mode == 1:
        return ImageOps.fit(image, size, Image.Resampling.LANCZOS)
    if resize_mode == 2:
        # The borders get the stretched image, blurred, so no hard edge shows through.
        background = image.resize(size, Image.Resampling.LANCZOS)
        background = background.filter(ImageFilter.GaussianBlur(max(width, height) / 32))
        inner = ImageOps.contain(image, size, Image.Resampling.LANCZOS)
        background.paste(inner, ((width - inner.width) // 2, (height - inner.height) // 2))
        return background
    return image.resize(size, Image.Resampling.LANCZOS)


def snap_size(value: int) -> int:
    """A pixel size rounded down to the engine's grid: a multiple of 8 in 64–2048."""
    return max(64, min(2048, value - value % 8))


def prepare_img2img(request: Img2ImgRequest, base: dict[str, Any]) -> None:
    """Decode and resize the inputs; set them and the mask's settings into `base`.

    Width and height not sent (and not in the project's defaults) default to the init image's
    size snapped to the engine's grid, rather than the model's native size. The engine inverts,
    blurs, fills and crops (sd_core/inpaint.py) with A1111's API defaults: blur 4, "fill",
    "only masked" with no padding.
    """
    if not request.init_images:
        raise InvalidField("init_images", None, "img2img needs one base64 image in init_images")
    if len(request.init_images) > MAX_INIT_IMAGES:
        raise InvalidField(
            "init_images", f"{len(request.init_images)} images", "send exactly one init image"
        )
    init = decode_image(request.init_images[0], "init_images.0").convert("RGB")
    width = base.get("width") or snap_size(init.width)
    height = base.get("height") or snap_size(init.height)
    base["width"], base["height"] = width, height
    base["init_image"] = encode_png(fit(init, width, height, request.resize_mode))
    base["strength"] = (
        request.denoising_strength if request.denoising_strength is not None else 0.75
    )
    if request.mask is None:
        return
    mask = decode_image(request.mask, "mask")
    # A transparent-background mask paints where it is opaque; otherwise white = repaint.
    mask = mask.getchannel("A") if mask.mode in ("RGBA", "LA") else mask.convert("L")
    base["mask"] = encode_png(fit(mask, width, height, request.resize_mode))
    base["mask_blur"] = mask_blur(request)
    base["inpainting_mask_invert"] = bool(request.inpainting_mask_invert)
    base["inpainting_fill"] = request.inpainting_fill
    base["inpaint_full_res"] = bool(request.inpaint_full_res)
    base["inpaint_full_res_padding"] = request.inpaint_full_res_padding


def mask_blur(request: Img2ImgRequest) -> int:
    """The mask's blur: `mask_blur`, else `mask_blur_x` / `mask_blur_y` (A1111's two ways, which
    Dali takes when they agree), else A1111's 4."""
    if request.mask_blur is not None:
        return request.mask_blur
    x, y = request.mask_blur_x, request.mask_blur_y
    if x is not None and y is not None and x != y:
        raise InvalidField(
            "mask_blur_y", y, f"the mask is blurred alike both ways: send {x} as mask_blur_x"
        )
    chosen = x if x is not None else y
    return DEFAULT_MASK_BLUR if chosen is None else chosen


# -- responses ------------------------------------------------------------------------------------


def info_json(
    plan: Plan,
    request: A1111Request,
    done: list[GenerationOut],
    catalog: SamplerCatalog,
    warnings: list[str] | None = None,
) -> str:
    """A1111's `info` string (`Processed.js()`) for the images of the finished jobs `done`.

    The VAE's name and hash come from the first image's own infotext (what the engine wrote),
    so `info` and `infotexts` agree. `warnings` is a Dali extension (A1111 has no field for
    them): what the request and the engine warned about (a LoRA not installed, …); None → the
    jobs' own (`unique_warnings`).
    """
    images = [image for generation in done for image in generation.images]
    first = done[0] if done else None
    infotexts = [image.parameters for image in images]
    written = parse_infotext(infotexts[0]) if infotexts else None
    sampler = written.sampler if written else None
    if sampler is None and first is not None:
        sampler = catalog.display_name(first.sampler)
    count = len(plan.all_seeds)
    prompt = first.prompt if first else str(plan.base.get("prompt", ""))
    negative = first.negative_prompt if first else str(plan.base.get("negative_prompt") or "")
    info: dict[str, Any] = {
        "prompt": prompt,
        "all_prompts": [prompt] * count,
        "negative_prompt": negative,
        "all_negative_prompts": [negative] * count,
        "seed": plan.seed,
        "all_seeds": plan.all_seeds,
        "subseed": plan.subseed,
        "all_subseeds": plan.all_subseeds,
        "subseed_strength": plan.subseed_strength,
        "width": images[0].width if images else (first.width if first else plan.base.get("width")),
        "height": (
            images[0].height if images else (first.height if first else plan.base.get("height"))
        ),
        "sampler_name": sampler,
        "cfg_scale": first.guidance if first else plan.base.get("guidance"),
        "steps": first.steps if first else plan.base.get("steps"),
        "batch_size": request.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": plan.model.name,
        "sd_model_hash": plan.model.short_hash,
        "sd_vae_name": written.extra.get("VAE") if written else (first.vae if first else None),
        "sd_vae_hash": written.extra.get("VAE hash") if written else None,
        "seed_resize_from_w": request.seed_resize_from_w,
        "seed_resize_from_h": request.seed_resize_from_h,
        "denoising_strength": (
            plan.base.get("strength") if plan.mode == "img2img" else request.denoising_strength
        ),
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": list(request.styles),
        "job_timestamp": plan.timestamp,
        "clip_skip": first.clip_skip if first else plan.base.get("clip_skip", 1),
        "is_using_inpainting_conditioning": plan.model.variant == "sd-v1-inpainting",
        "version": VERSION,
        "warnings": warnings if warnings is not None else unique_warnings([], done),
    }
    return json.dumps(info)


def unique_warnings(first: list[str], done: list[GenerationOut]) -> list[str]:
    """`first`, then every job's warnings, each once, in the order met."""
    return list(dict.fromkeys([*first, *(w for generation in done for w in generation.warnings)]))


def echo_parameters(request: A1111Request) -> dict[str, Any]:
    """The request as A1111 echoes it; init images and mask only with include_init_images."""
    echoed = request.model_dump()
    if isinstance(request, Img2ImgRequest) and not request.include_init_images:
        echoed["init_images"] = None
        echoed["mask"] = None
    echoed.pop("include_init_images", None)
    return echoed


def _unquote(raw: str) -> str:
    # A value A1111 wrote as a JSON string (it held "," or ":") is read back decoded.
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return raw
        return value if isinstance(value, str) else raw
    return raw


def png_info(raw: bytes) -> PngInfoResponse:
    """A1111's `/png-info`: the infotext, the other text chunks, and the infotext's fields.

    `parameters` is shaped as A1111's `parse_generation_parameters` shapes it: "Prompt",
    "Negative prompt", then every key with its value as text; "Size" also as "Size-1"/"Size-2".
    """
    try:
        with Image.open(io.BytesIO(raw)) as image:
            chunks = {str(k): str(v) for k, v in image.info.items() if isinstance(v, str)}
            if image.format == "PNG":
                chunks.update({str(k): str(v) for k, v in getattr(image, "text", {}).items()})
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise InvalidField("image", "<data>", "not a readable image") from None
    infotext = chunks.pop("parameters", "")
    parameters: dict[str, Any] = {}
    if infotext:
        parsed = parse_infotext(infotext)
        parameters = {"Prompt": parsed.prompt, "Negative prompt": parsed.negative_prompt}
        for key, written in parsed.as_written.items():
            value = _unquote(written)
            parameters[key] = value
            size = value.split("x")
            if len(size) == 2 and all(part.isdigit() for part in size):
                parameters[f"{key}-1"], parameters[f"{key}-2"] = size
    return PngInfoResponse(info=infotext, items=chunks, parameters=parameters)
