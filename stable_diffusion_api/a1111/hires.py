"""AUTOMATIC1111's hires fix fields (`enable_hr`, `hr_*`) ↔ Dali's `hires_*` (sd_core/hires.py).

A txt2img request with `enable_hr` runs Dali's hires fix: `hr_scale`, or `hr_resize_x` /
`hr_resize_y` (0: from the other side's aspect ratio; rounded down to multiples of 8, as the
latent size rounds in A1111), `hr_upscaler` (None: "Latent"), `hr_second_pass_steps`,
`denoising_strength` (not sent: 0.75, A1111's txt2img default), `hr_sampler_name` ("Use same
sampler" or none: the first pass's), `hr_prompt` and `hr_negative_prompt` (empty: the first
pass's). An infotext's `Hires …` keys give those fields back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stable_diffusion_api.a1111.schemas import Txt2ImgRequest

if TYPE_CHECKING:
    from stable_diffusion_api.services.samplers import SamplerCatalog

# A1111's hires denoising strength when a request leaves denoising_strength out.
DEFAULT_HIRES_STRENGTH = 0.75
SAME_SAMPLER = "use same sampler"
# GenerationCreate's hires fields in A1111's words, for error messages.
HIRES_FIELDS = {
    "hires": "enable_hr",
    "hires_scale": "hr_scale",
    "hires_width": "hr_resize_x",
    "hires_height": "hr_resize_y",
    "hires_upscaler": "hr_upscaler",
    "hires_steps": "hr_second_pass_steps",
    "hires_strength": "denoising_strength",
    "hires_sampler": "hr_sampler_name",
    "hires_prompt": "hr_prompt",
    "hires_negative_prompt": "hr_negative_prompt",
}


def hires_fields(request: Any, catalog: SamplerCatalog) -> dict[str, Any]:
    """GenerationCreate's hires fields for an A1111 request ({} unless a txt2img request with
    `enable_hr`). InvalidField names `hr_sampler_name` for an unknown sampler."""
    if not isinstance(request, Txt2ImgRequest) or not request.enable_hr:
        return {}
    strength = request.denoising_strength
    fields: dict[str, Any] = {
        "hires": True,
        "hires_scale": request.hr_scale,
        "hires_upscaler": request.hr_upscaler or "Latent",
        "hires_steps": request.hr_second_pass_steps,
        "hires_strength": DEFAULT_HIRES_STRENGTH if strength is None else strength,
    }
    if request.hr_resize_x or request.hr_resize_y:
        fields["hires_width"] = request.hr_resize_x // 8 * 8 or None
        fields["hires_height"] = request.hr_resize_y // 8 * 8 or None
    sampler = (request.hr_sampler_name or "").strip()
    if sampler and sampler.casefold() != SAME_SAMPLER:
        fields["hires_sampler"] = catalog.canonical(sampler, "hr_sampler_name")
    if request.hr_prompt:
        fields["hires_prompt"] = request.hr_prompt
    if request.hr_negative_prompt:
        fields["hires_negative_prompt"] = request.hr_negative_prompt
    return fields


def hires_infotext(extra: dict[str, str]) -> dict[str, Any]:
    """A1111 request fields from an infotext's `Hires …` keys (`GenerationParameters.extra`):
    {} when it has neither `Hires upscale` nor `Hires resize`; None for a key it lacks."""
    if "Hires upscale" not in extra and "Hires resize" not in extra:
        return {}
    width, _, height = extra.get("Hires resize", "").partition("x")
    return {
        "enable_hr": True,
        "hr_scale": extra.get("Hires upscale"),
        "hr_resize_x": width or None,
        "hr_resize_y": height or None,
        "hr_second_pass_steps": extra.get("Hires steps"),
        "hr_upscaler": extra.get("Hires upscaler"),
        "hr_sampler_name": extra.get("Hires sampler"),
        "hr_prompt": extra.get("Hires prompt"),
        "hr_negative_prompt": extra.get("Hires negative prompt"),
    }
