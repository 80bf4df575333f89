"""AUTOMATIC1111's hires fix fields (`enable_hr`, `hr_*`) ↔ Dali's `hires_*` (sd_core/hires.py).

A txt2img request with `enable_hr` runs Dali's hires fix: `hr_scale`, or `hr_resize_x` /
`hr_resize_y` (0: from the other side's aspect ratio; rounded down to multiples of 8, as the
latent size rounds in A1111), `hr_upscaler` (None: "Latent"), `hr_second_pass_steps`,
`denoising_strength` (not sent: 0.75, A1111's txt2img default), `hr_sampler_name` ("Use same
sampler" or none: the first pass's), `hr_scheduler` ("Use same scheduler" or none: the first
pass's, as A1111 names it), `hr_cfg` (none: the first pass's `cfg_scale`), `hr_prompt` and
`hr_negative_prompt` (empty: the first pass's). `hr_checkpoint_name` may only name the first
pass's model ("Use same checkpoint", empty, or that model): the engine runs one checkpoint a
job, so another is a 422. An infotext's `Hires …` keys give those fields back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sd_core.params import HIRES_AUTOMATIC
from stable_diffusion_api.a1111.sampling import (
    SCHEDULER_LABELS,
    resolve_sampler,
    resolve_scheduler,
    sampler_and_schedule,
)
from stable_diffusion_api.a1111.schemas import Txt2ImgRequest
from stable_diffusion_api.errors import InvalidField

if TYPE_CHECKING:
    from stable_diffusion_api.services.registry import ModelEntry
    from stable_diffusion_api.services.samplers import SamplerCatalog

# A1111's hires denoising strength when a request leaves denoising_strength out.
DEFAULT_HIRES_STRENGTH = 0.75
SAME_SAMPLER = "use same sampler"
SAME_SCHEDULER = "use same scheduler"
SAME_CHECKPOINT = "use same checkpoint"
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
    "hires_scheduler": "hr_scheduler",
    "hires_guidance": "hr_cfg",
    "hires_prompt": "hr_prompt",
    "hires_negative_prompt": "hr_negative_prompt",
}


def hires_fields(
    request: Any,
    catalog: SamplerCatalog,
    model: ModelEntry,
    resolve_model: Callable[[str, str], ModelEntry],
) -> dict[str, Any]:
    """GenerationCreate's hires fields for an A1111 request ({} unless a txt2img request with
    `enable_hr`), whose first pass runs `model`. InvalidField names `hr_sampler_name` or
    `hr_scheduler` for a sampler or scheduler that is not there, `hr_checkpoint_name` for a
    model other than `model` (`resolve_model(name, field)` finds it)."""
    if not isinstance(request, Txt2ImgRequest) or not request.enable_hr:
        return {}
    check_hires_checkpoint(request.hr_checkpoint_name, model, resolve_model)
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
    fields.update(hires_sampling(request, catalog))
    if request.hr_cfg is not None:
        fields["hires_guidance"] = request.hr_cfg
    if request.hr_prompt:
        fields["hires_prompt"] = request.hr_prompt
    if request.hr_negative_prompt:
        fields["hires_negative_prompt"] = request.hr_negative_prompt
    return fields


def _chosen(value: str | None, same: str) -> str | None:
    """A hires choice as sent; None for none, empty, or A1111's "Use same …"."""
    value = (value or "").strip()
    return None if not value or value.casefold() == same else value


def hires_sampling(request: Txt2ImgRequest, catalog: SamplerCatalog) -> dict[str, Any]:
    """`hires_sampler` and `hires_scheduler` for `hr_sampler_name` and `hr_scheduler`.

    A1111 keeps the first pass's scheduler for "Use same scheduler", also with another hires
    sampler; a first pass on a joined name ("DPM++ 2M Karras") has the scheduler in the name,
    so it is passed on to the hires sampler explicitly.
    """
    sampler = _chosen(request.hr_sampler_name, SAME_SAMPLER)
    scheduler = _chosen(request.hr_scheduler, SAME_SCHEDULER)
    if sampler is None and scheduler is None:
        return {}  # both as the first pass
    first, first_schedule = resolve_sampler(request, catalog), resolve_scheduler(request, catalog)
    in_name = _scheduler_in_name(first, catalog)
    if sampler is not None:
        canonical = catalog.canonical(sampler, "hr_sampler_name")
    else:  # the first pass's, without the scheduler A1111 splits off its name
        canonical = _without_scheduler(first, in_name, catalog)
    if scheduler is None:  # the first pass's, as A1111 names it
        scheduler = first_schedule or in_name
    joined, schedule = sampler_and_schedule(catalog, canonical, scheduler, "hr_scheduler")
    fields: dict[str, Any] = {}
    if joined != first:
        fields["hires_sampler"] = joined
    if schedule != first_schedule:  # Dali's hires_scheduler None: the first pass's
        fields["hires_scheduler"] = schedule or HIRES_AUTOMATIC
    return fields


def _scheduler_in_name(sampler: str | None, catalog: SamplerCatalog) -> str | None:
    """The A1111 scheduler a registered sampler's name ends in ("DPM++ 2M Karras" → karras)."""
    if sampler is None:
        return None
    display = catalog.display_name(sampler)
    return next((n for n, label in SCHEDULER_LABELS.items() if display.endswith(f" {label}")), None)


def _without_scheduler(
    sampler: str | None, scheduler: str | None, catalog: SamplerCatalog
) -> str | None:
    """The registered sampler named like `sampler` without scheduler `scheduler` at its end
    ("DPM++ 2M Karras" → "DPM++ 2M"), or `sampler` itself when there is none."""
    if sampler is None or scheduler is None:
        return sampler
    plain = catalog.display_name(sampler).removesuffix(f" {SCHEDULER_LABELS[scheduler]}")
    return next((s.name for s in catalog.list() if s.display_name == plain), sampler)


def check_hires_checkpoint(
    name: str | None, model: ModelEntry, resolve_model: Callable[[str, str], ModelEntry]
) -> None:
    """InvalidField("hr_checkpoint_name") unless `name` asks for the first pass's `model`."""
    chosen = _chosen(name, SAME_CHECKPOINT)
    if chosen is None:
        return
    found = resolve_model(chosen, "hr_checkpoint_name")
    if found.name != model.name:
        raise InvalidField(
            "hr_checkpoint_name", chosen,
            f"the hires pass runs the first pass's model ({model.name}): send \"Use same "
            "checkpoint\" or leave it out",
        )  # fmt: skip


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
        "hr_scheduler": extra.get("Hires schedule type"),
        "hr_cfg": extra.get("Hires CFG Scale"),
        "hr_checkpoint_name": extra.get("Hires checkpoint"),
        "hr_prompt": extra.get("Hires prompt"),
        "hr_negative_prompt": extra.get("Hires negative prompt"),
    }
