"""The one mapping between the service's spellings of a generation and `GenerationParams`.

- `params_from_request`: a REST request (`GenerationCreate`, which the pages, the A1111 routes
  and the Gradio UI also build) plus the project's defaults → params, checked against the one
  set of limits (`sd_core.params`).
- `row_values` / `params_from_row`: params ↔ the `generations` row. A field with a column of
  its own name is stored there; every other field goes into the row's `extra_params` JSON, so
  a new parameter needs no migration.
- `params_view`: the fields `GenerationOut` shows, read from the row's params.

Fields of `GenerationCreate` that share a name with a `GenerationParams` field and need no
project default are copied as they are: a new parameter reaches the engine by being declared in
`GenerationParams` and in the REST schema, nothing here.
"""

from __future__ import annotations

from typing import Any

from sd_core.params import GenerationParams, InvalidParam, field_names
from stable_diffusion_api.errors import InvalidField
from stable_diffusion_api.models import Generation
from stable_diffusion_api.schemas import GenerationCreate, GenerationDefaults, GenerationOut

# Fields that `params_from_request` fills from the project's defaults when left out.
_FROM_DEFAULTS = ("negative_prompt", "sampler", "steps", "guidance", "width", "height", "clip_skip")


def _column_names() -> frozenset[str]:
    return frozenset(column.name for column in Generation.__table__.columns)


def params_from_request(
    request: GenerationCreate, defaults: GenerationDefaults, sampler: str | None, vae: str | None
) -> GenerationParams:
    """The request's params, the project's `defaults` where it left a field out; `sampler` is
    the canonical name the catalog resolved (None → the model's default), `vae` the installed
    VAE file the request or the project chose (None → the checkpoint's own). Random seeds are
    drawn here, so the row (and the gallery) always shows the seed. Raises InvalidField naming
    the field when a value breaks the engine's limits."""
    chosen: dict[str, Any] = {
        name: getattr(request, name)
        for name in field_names()
        if name in GenerationCreate.model_fields and name not in (*_FROM_DEFAULTS, "vae")
    }
    for name in _FROM_DEFAULTS:
        value = getattr(request, name)
        chosen[name] = value if value is not None else getattr(defaults, name)
    chosen["sampler"] = sampler
    chosen["vae"] = vae
    try:
        return GenerationParams(**chosen).with_seeds()
    except InvalidParam as exc:
        raise InvalidField(exc.field, exc.value, str(exc)) from None


def row_values(params: GenerationParams) -> dict[str, Any]:
    """The `generations` columns that store `params` (extra_params None when all have one)."""
    columns = _column_names()
    values = params.to_dict()
    stored = {name: value for name, value in values.items() if name in columns}
    extra = {name: value for name, value in values.items() if name not in columns}
    stored["extra_params"] = extra or None
    return stored


def params_from_row(row: Generation) -> GenerationParams:
    """The params a queued or finished row stands for."""
    columns = _column_names()
    values = {name: getattr(row, name) for name in field_names() if name in columns}
    extra = {k: v for k, v in (row.extra_params or {}).items() if k in field_names()}
    return GenerationParams(**values, **extra)


def params_view(row: Generation) -> dict[str, Any]:
    """The params fields of `GenerationOut`, from the row."""
    values = params_from_row(row).to_dict()
    return {name: value for name, value in values.items() if name in GenerationOut.model_fields}
