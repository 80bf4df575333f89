"""The hires fix: a txt2img first pass, an upscale, then an img2img second pass at the new size.

`GenerationParams.hires` turns it on (txt2img only). What runs, for a batch of B images:

1. The first pass: the params as asked, without hires, at `width` × `height`.
2. The upscale to the target size (`hires_size`): `hires_scale` × the first size rounded down
   to multiples of 8, or `hires_width` / `hires_height` (one alone keeps the aspect ratio; both
   scale to cover, then crop the centre). A latent mode (`LATENT_MODES`, AUTOMATIC1111's names)
   resizes the latents themselves with `torch.nn.functional.interpolate`. A pixel upscaler
   decodes, makes 8-bit images (as saving would), resizes them (`PIXEL_RESAMPLERS`, or a model
   upscaler the pipeline was given as `pipe.upscale_image(image, name, scale)`), and the second
   pass encodes them again.
3. The second pass: img2img from those latents or images with `hires_steps` (0: the first
   pass's steps), `hires_strength`, `hires_sampler`, `hires_scheduler` (the schedule type;
   "automatic": the hires sampler's own σ's), `hires_guidance` (the CFG scale), `hires_prompt`
   and `hires_negative_prompt` (None or "": the first pass's).

Seeds: the second pass draws its noise as a new img2img run with the same seeds would (as
AUTOMATIC1111 does, it reuses the seed): image i gets a fresh `torch.Generator("cpu")` seeded
`seed + i`, from which a pixel upscaler's VAE posterior sample is drawn first and then the
noise at the new size; the variation seed blends that noise as in the first pass. So a hires
image equals, for a latent mode, `generate_latents(first)`, `upscale_latents`, then
`generate_latents(second, init_latents=…)`; for a pixel upscaler and one image, `generate(first)`,
`upscale_pixels`, then `generate(second, init_image=…)` (tests/sd_core/test_hires.py shows both).

Progress counts both passes' steps as one run; the trace hook (the filmstrip) sees the first
pass only (its frames must all have one size). An interrupt during the first pass (or right
after it) ends the run with the first pass's images, as A1111 does; during the second pass,
with that pass's images so far.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from sd_core.params import (
    HIRES_AUTOMATIC,
    MAX_SIZE,
    SIZE_MULTIPLE,
    GenerationParams,
    InvalidParam,
)
from sd_core.schedule_types import schedule_label, schedule_type

if TYPE_CHECKING:
    from sd_core.hooks import GenerationHooks
    from sd_core.pipeline import SampledLatents, StableDiffusionPipeline

# A1111's latent upscale modes: name → (interpolate mode, antialias).
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# Pixel upscalers built in ("None" is A1111's: no model, a Lanczos resize to the size).
PIXEL_RESAMPLERS: dict[str, Image.Resampling] = {
    "None": Image.Resampling.LANCZOS,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}
# A model upscaler: (image, its name, scale) → the image about `scale` times larger.
UpscaleImage = Callable[[Image.Image, str, float], Image.Image]


def _round(value: float) -> int:
    return int(value) // SIZE_MULTIPLE * SIZE_MULTIPLE


def hires_size(p: GenerationParams) -> tuple[tuple[int, int], tuple[int, int]]:
    """((cover width, height), (target width, height)) of resolved params: the upscale goes to
    the cover size, whose centre is cropped to the target (equal unless both hires_width and
    hires_height change the aspect ratio). InvalidParam when the target leaves 64 … 2048."""
    assert p.width is not None and p.height is not None
    w, h, rw, rh = p.width, p.height, p.hires_width, p.hires_height
    value: float | None
    if rw is None and rh is None:
        target = cover = (_round(w * p.hires_scale), _round(h * p.hires_scale))
        field, value = "hires_scale", p.hires_scale
    else:
        field, value = ("hires_width", rw) if rw is not None else ("hires_height", rh)
        if rw is None:
            assert rh is not None
            target = cover = (_round(rh * w / h), rh)
        elif rh is None:
            target = cover = (rw, _round(rw * h / w))
        else:
            scale = max(rw / w, rh / h)
            target = (rw, rh)
            cover = (max(rw, _round(w * scale)), max(rh, _round(h * scale)))
    if not all(SIZE_MULTIPLE <= s <= MAX_SIZE for s in (*target, *cover)):
        raise InvalidParam(
            field, value,
            f"the hires fix would make {cover[0]}x{cover[1]} from {w}x{h}; each side must stay "
            f"from {SIZE_MULTIPLE} to {MAX_SIZE}",
        )  # fmt: skip
    return cover, target


def check_upscaler(name: str, model_upscaler: UpscaleImage | None) -> None:
    """InvalidParam("hires_upscaler") unless `name` is a latent mode, a built-in pixel
    upscaler, or there is a model upscaler to ask."""
    if name in LATENT_MODES or name in PIXEL_RESAMPLERS or model_upscaler is not None:
        return
    known = ", ".join(repr(n) for n in (*LATENT_MODES, *PIXEL_RESAMPLERS))
    raise InvalidParam(
        "hires_upscaler", name, f"hires_upscaler {name!r} is not one of {known} (no upscaler "
        "model files are available to this pipeline)",
    )  # fmt: skip


def _crop(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred `target` in `size`."""
    left, top = (size[0] - target[0]) // 2, (size[1] - target[1]) // 2
    return left, top, left + target[0], top + target[1]


def upscale_latents(
    latents: Tensor, mode: str, cover: tuple[int, int], target: tuple[int, int], *, factor: int
) -> Tensor:
    """(B, C, h, w) latents resized by latent mode `mode` to cover/`factor`, centre cropped to
    target/`factor` (sizes in pixels, as (width, height); `factor`: the VAE's downsampling)."""
    how, antialias = LATENT_MODES[mode]
    size = (cover[1] // factor, cover[0] // factor)
    if how.startswith("nearest"):
        resized = F.interpolate(latents, size=size, mode=how)
    else:
        resized = F.interpolate(
            latents, size=size, mode=how, antialias=antialias, align_corners=False
        )
    left, top, right, bottom = _crop((size[1], size[0]), (target[0] // factor, target[1] // factor))
    return resized[:, :, top:bottom, left:right]


def upscale_pixels(
    image: Image.Image,
    name: str,
    cover: tuple[int, int],
    target: tuple[int, int],
    model_upscaler: UpscaleImage | None = None,
) -> Image.Image:
    """`image` upscaled by pixel upscaler `name` to `cover`, centre cropped to `target`. A name
    that is not built in goes to `model_upscaler(image, name, scale)`, whose answer is then
    resized (Lanczos) to the exact cover size."""
    resample = PIXEL_RESAMPLERS.get(name)
    if resample is None:
        if model_upscaler is None:
            check_upscaler(name, None)
        assert model_upscaler is not None
        scale = max(cover[0] / image.width, cover[1] / image.height)
        image, resample = model_upscaler(image, name, scale), Image.Resampling.LANCZOS
    if image.size != cover:
        image = image.resize(cover, resample)
    return image if cover == target else image.crop(_crop(cover, target))


def second_pass_params(p: GenerationParams) -> GenerationParams:
    """The img2img params of the second pass of resolved hires params `p`."""
    _, (width, height) = hires_size(p)
    return replace(
        p,
        hires=False,
        width=width,
        height=height,
        steps=p.hires_steps or p.steps,
        strength=p.hires_strength,
        sampler=p.hires_sampler or p.sampler,
        scheduler=_second_pass_schedule(p),
        guidance=p.guidance if p.hires_guidance is None else p.hires_guidance,
        prompt=p.hires_prompt or p.prompt,
        negative_prompt=p.hires_negative_prompt or p.negative_prompt,
    )


def _second_pass_schedule(p: GenerationParams) -> str | None:
    """The schedule type the second pass of `p` runs with (None: its sampler's own)."""
    if p.hires_scheduler is None:
        return p.scheduler
    return None if p.hires_scheduler == HIRES_AUTOMATIC else p.hires_scheduler


def _second_pass_steps(pipe: StableDiffusionPipeline, p: GenerationParams) -> int:
    """How many sampler steps the img2img pass of `p` walks (for the progress total)."""
    from sd_core.samplers import get_sampler

    if p.strength <= 0:
        return 0
    assert p.sampler is not None
    plan = get_sampler(p.sampler).img2img(pipe.schedule, p.steps, p.strength, p.scheduler)
    return len(plan.sigmas) - 1


def hires_latents(
    pipe: StableDiffusionPipeline, params: GenerationParams, hooks: GenerationHooks
) -> SampledLatents:
    """Both passes of `params` (hires on): the pipeline's `SampledLatents` with the second pass's
    latents, the resolved params as asked (hires on, first-pass size) and both passes' times."""
    from sd_core.hooks import GenerationHooks
    from sd_core.image_tensors import image_to_tensor, tensor_to_images
    from sd_core.pipeline import SampledLatents
    from sd_core.result import TXT2IMG

    p = pipe.resolve(params)
    second = second_pass_params(p)
    check_upscaler(p.hires_upscaler, pipe.upscale_image)
    cover, target = hires_size(p)
    remaining = _second_pass_steps(pipe, second)
    first_total = [0]

    def first_step(step: int, n: int, x0: Tensor) -> None:
        first_total[0] = n
        if hooks.on_step is not None:
            hooks.on_step(step, n + remaining, x0)

    def second_step(step: int, n: int, x0: Tensor) -> None:
        if hooks.on_step is not None:
            hooks.on_step(first_total[0] + step, first_total[0] + n, x0)

    first = pipe.sample_latents(
        replace(p, hires=False), None, None, replace(hooks, on_step=first_step)
    )
    n = first.interrupted[1] if first.interrupted is not None else first_total[0]
    if first.interrupted is not None or (hooks.interrupt is not None and hooks.interrupt()):
        done_steps = first.interrupted[0] if first.interrupted is not None else n
        return replace(first, params=p, interrupted=(done_steps, n + remaining))
    second_hooks = GenerationHooks(
        on_step=second_step, cancel=hooks.cancel, interrupt=hooks.interrupt
    )
    if p.hires_upscaler in LATENT_MODES:
        latents = upscale_latents(first.latents, p.hires_upscaler, cover, target,
                                  factor=pipe.config.vae.downsample_factor)  # fmt: skip
        done = pipe.sample_latents(second, None, None, second_hooks, init_latents=latents)
    else:
        images = tensor_to_images(pipe.decode_latents(first.latents, first.vae))
        pixels = torch.cat(
            [
                image_to_tensor(
                    upscale_pixels(image, p.hires_upscaler, cover, target, pipe.upscale_image),
                    *target,
                )
                for image in images
            ]
        )
        done = pipe.sample_latents(second, None, None, second_hooks, init_pixels=pixels)
    return SampledLatents(
        params=p,
        mode=TXT2IMG,
        latents=done.latents,
        vae=done.vae,
        text_encoding_s=first.text_encoding_s + done.text_encoding_s,
        sampling_s=first.sampling_s + done.sampling_s,
        warnings=tuple(dict.fromkeys((*first.warnings, *done.warnings))),
        assets=tuple(dict.fromkeys((*first.assets, *done.assets))),
        interrupted=(
            None if done.interrupted is None else (n + done.interrupted[0], n + done.interrupted[1])
        ),
    )


def hires_infotext(p: GenerationParams) -> dict[str, str]:
    """A1111's infotext keys of the hires fix (none when it is off): `Hires upscale` or `Hires
    resize`, `Hires steps` (when set), `Hires upscaler`, `Hires sampler`, `Hires schedule type`,
    `Hires CFG Scale`, `Hires prompt` and `Hires negative prompt` (when they differ from the
    first pass's). `Denoising strength` is the result's."""
    if not p.hires:
        return {}
    out: dict[str, str] = {}
    if p.hires_width is None and p.hires_height is None:
        scale = p.hires_scale
        out["Hires upscale"] = str(int(scale)) if scale.is_integer() else str(scale)
    else:
        out["Hires resize"] = f"{p.hires_width or 0}x{p.hires_height or 0}"
    if p.hires_steps:
        out["Hires steps"] = str(p.hires_steps)
    out["Hires upscaler"] = p.hires_upscaler
    if p.hires_sampler is not None and p.hires_sampler != p.sampler:
        from sd_core.samplers import get_sampler

        out["Hires sampler"] = get_sampler(p.hires_sampler).display_name
    if p.hires_scheduler is not None and _second_pass_schedule(p) != p.scheduler:
        out["Hires schedule type"] = schedule_label(_second_pass_schedule(p))
    if p.hires_guidance is not None and p.hires_guidance != p.guidance:
        value = p.hires_guidance
        out["Hires CFG Scale"] = str(int(value)) if value.is_integer() else str(value)
    if p.hires_prompt and p.hires_prompt != p.prompt:
        out["Hires prompt"] = p.hires_prompt
    if p.hires_negative_prompt and p.hires_negative_prompt != p.negative_prompt:
        out["Hires negative prompt"] = p.hires_negative_prompt
    return out


def hires_from_infotext(extra: dict[str, str]) -> dict[str, object]:
    """GenerationParams fields from an infotext's hires keys (`GenerationParameters.extra`);
    {} when it has none. Values that do not read are left out; the caller sets
    `hires_strength` from `Denoising strength`."""
    if "Hires upscale" not in extra and "Hires resize" not in extra:
        return {}
    fields: dict[str, object] = {"hires": True}
    try:
        if "Hires upscale" in extra:
            fields["hires_scale"] = float(extra["Hires upscale"])
        if "Hires resize" in extra:
            rw, _, rh = extra["Hires resize"].partition("x")
            fields["hires_width"] = int(rw) or None
            fields["hires_height"] = int(rh) or None
        if "Hires steps" in extra:
            fields["hires_steps"] = int(extra["Hires steps"])
        if "Hires CFG Scale" in extra:
            fields["hires_guidance"] = float(extra["Hires CFG Scale"])
    except ValueError:
        pass
    if "Hires schedule type" in extra:  # a label; "Automatic": the hires sampler's own
        try:
            kind = schedule_type(extra["Hires schedule type"])
            fields["hires_scheduler"] = HIRES_AUTOMATIC if kind is None else kind
        except ValueError:
            pass
    names = {
        "Hires upscaler": "hires_upscaler",
        "Hires sampler": "hires_sampler",
        "Hires prompt": "hires_prompt",
        "Hires negative prompt": "hires_negative_prompt",
    }
    fields.update({name: extra[key] for key, name in names.items() if key in extra})
    return fields
