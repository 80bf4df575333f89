"""A1111's sampler and scheduler names ↔ Dali's samplers and schedule types.

Since 1.9 A1111 names a sampler ("DPM++ 2M") and its scheduler ("karras") apart; Dali registers
some of the joined names A1111 used before ("DPM++ 2M Karras", pixel for pixel the same), and
takes the other schedule types (`sd_core.schedule_types`) on the k-diffusion-style samplers.
"""

from __future__ import annotations

from sd_core.schedule_types import SCHEDULE_TYPES, schedule_type
from stable_diffusion_api.a1111.schemas import A1111Request
from stable_diffusion_api.errors import InvalidField
from stable_diffusion_api.services.samplers import SamplerCatalog

AUTOMATIC = "automatic"
# A1111's scheduler names (`scheduler` field, ≥ 1.9) and the label its older sampler names end in.
SCHEDULER_LABELS = {
    "karras": "Karras",
    "exponential": "Exponential",
    "polyexponential": "Polyexponential",
    "sgm_uniform": "SGM Uniform",
    "uniform": "Uniform",
    "simple": "Simple",
    "normal": "Normal",
    "ddim": "DDIM",
    "beta": "Beta",
    "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps",
}


def resolve_sampler(request: A1111Request, catalog: SamplerCatalog) -> str | None:
    """The canonical sampler for `sampler_name` (or `sampler_index`) and `scheduler`.
    (`resolve_scheduler` says which schedule type goes with it.)

    A1111 ≥ 1.9 sends "DPM++ 2M" with scheduler "karras" for what older versions called
    "DPM++ 2M Karras"; Dali registers the latter, so the two are joined. None: neither was
    sent, and the project's default sampler applies.
    """
    field_name = "sampler_name" if request.sampler_name else "sampler_index"
    name = request.sampler_name or request.sampler_index
    if name is None:
        return None
    canonical = catalog.canonical(name, field_name)
    return sampler_and_schedule(catalog, canonical, request.scheduler)[0]


def resolve_scheduler(request: A1111Request, catalog: SamplerCatalog) -> str | None:
    """The schedule type (`GenerationCreate.scheduler`) for `scheduler`: None when it is
    automatic or already in the sampler's registered name ("DPM++ 2M" + "karras" is "DPM++ 2M
    Karras", pixel for pixel the same); else a canonical type the sampler takes, or InvalidField
    naming what it does take."""
    field_name = "sampler_name" if request.sampler_name else "sampler_index"
    name = request.sampler_name or request.sampler_index
    canonical = None if name is None else catalog.canonical(name, field_name)
    return sampler_and_schedule(catalog, canonical, request.scheduler)[1]


def sampler_and_schedule(
    catalog: SamplerCatalog,
    canonical: str | None,
    scheduler: str | None,
    field_name: str = "scheduler",
) -> tuple[str | None, str | None]:
    """(sampler, schedule type) for canonical sampler `canonical` (None: the project's
    default) with A1111 scheduler name `scheduler`: a scheduler the sampler's registered name
    carries joins them ("DPM++ 2M" + "karras" → "DPM++ 2M Karras", schedule None); automatic
    (or none) is schedule None; else a schedule type the sampler takes, or InvalidField naming
    `field_name` and what it does take."""
    scheduler = (scheduler or "").strip()
    if not scheduler or scheduler.casefold() == AUTOMATIC:
        return canonical, None
    display = catalog.display_name(canonical)
    label = scheduler_label(scheduler)
    if canonical is not None:
        if display.casefold().endswith(" " + label.casefold()):
            return canonical, None  # "DPM++ 2M Karras" with scheduler "karras"
        combined = f"{display} {label}"
        for spec in catalog.list():
            if spec.display_name.casefold() == combined.casefold():
                return spec.name, None
    takes = all(s.takes_schedule_type for s in catalog.list() if s.name == canonical)
    try:
        kind = schedule_type(scheduler)
    except ValueError:
        kind = None
    if kind is None or not takes:
        allowed = [AUTOMATIC, *(SCHEDULE_TYPES if takes else ())]
        raise InvalidField(field_name, scheduler, f"with {display} use: {', '.join(allowed)}")
    return canonical, kind


def scheduler_label(name: str) -> str:
    """A1111's label for a scheduler name ("sgm_uniform" → "SGM Uniform")."""
    key = name.strip().lower().replace(" ", "_")
    return SCHEDULER_LABELS.get(key, name.strip().replace("_", " ").title())


def schedulers(catalog: SamplerCatalog) -> list[str]:
    """Scheduler names: automatic, plus each A1111 scheduler a sampler name ends in (Karras)."""
    found = [AUTOMATIC, *SCHEDULE_TYPES]
    displays = [spec.display_name for spec in catalog.list()]
    for name, label in SCHEDULER_LABELS.items():
        if name not in found and any(display.endswith(" " + label) for display in displays):
            found.append(name)
    return found
