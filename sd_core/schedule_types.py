"""The σ schedules a user may pick for a sampler: AUTOMATIC1111's "Schedule type" split.

Since A1111 1.9 a sampler ("DPM++ 2M") and the spacing of its noise levels ("Karras") are two
choices. `GenerationParams.scheduler` holds the canonical name below, or None for the
sampler's own schedule (A1111's "Automatic"). Plain data, no torch: every layer may import it;
`sd_core.samplers.SamplerSpec.schedule` builds the σ's and says which samplers take which.

- karras: Karras et al. 2022 eq. 5, ρ = 7 (diffusers' `use_karras_sigmas`).
- exponential: evenly spaced in log σ (diffusers' `use_exponential_sigmas`).
- sgm_uniform: "trailing" integer timesteps T-1, …, T/N - 1 (diffusers'
  `timestep_spacing="trailing"`, as diffusers maps A1111's "SGM Uniform").
"""

from __future__ import annotations

# canonical name → AUTOMATIC1111's label, in the order a UI lists them.
SCHEDULE_TYPES: dict[str, str] = {
    "karras": "Karras",
    "exponential": "Exponential",
    "sgm_uniform": "SGM Uniform",
}
# What "the sampler's own schedule" is called in A1111 (its first schedule type).
AUTOMATIC_LABEL = "Automatic"

_LOOKUP = {
    **{name: name for name in SCHEDULE_TYPES},
    **{label.lower(): name for name, label in SCHEDULE_TYPES.items()},
    "sgm uniform": "sgm_uniform",
    "sgm-uniform": "sgm_uniform",
    "trailing": "sgm_uniform",
}


def schedule_type(value: str | None) -> str | None:
    """The canonical schedule type for a name or A1111 label, case-insensitively; None for
    None, "" or "Automatic". Raises ValueError naming the choices for anything else."""
    if value is None:
        return None
    key = value.strip().lower()
    if key in ("", AUTOMATIC_LABEL.lower()):
        return None
    name = _LOOKUP.get(key)
    if name is None:
        choices = ", ".join([AUTOMATIC_LABEL, *SCHEDULE_TYPES.values()])
        raise ValueError(f"unknown schedule type {value!r}; choose one of: {choices}")
    return name


def schedule_label(name: str | None) -> str:
    """A1111's label for a canonical schedule type ("Automatic" for None)."""
    return AUTOMATIC_LABEL if name is None else SCHEDULE_TYPES[name]
