"""HTML forms → the REST schemas, with each error beside the field it is about.

A browser sends every field as text, an empty input as "", an unticked box not at all and a
file as an upload; the JSON API's schemas (`ProjectCreate`, `GenerationCreate`, …) want
numbers, `None` for "not given" and base64 for images. The functions here translate, and
turn a pydantic `ValidationError` into `FormInvalid`: one `FieldError` per field, naming the
field, the value it was sent and what is wrong with it. `field_errors` gives the pages their
`errors` mapping (field → message) for `FormInvalid` and for the domain errors services raise
about a field (`InvalidField`, a name's `Conflict`).

Reading the request body is the one async step (`FormDep`); the rest is plain functions,
called from the pages' plain `def` handlers in the thread pool.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from stable_diffusion_api.error_text import human_message
from stable_diffusion_api.errors import Conflict, InvalidField
from stable_diffusion_api.schemas import (
    GenerationCreate,
    GenerationDefaults,
    ProjectCreate,
    ProjectUpdate,
    UpscaleRequest,
    VariationRequest,
)

Schema = TypeVar("Schema", bound=BaseModel)

DEFAULTS_FIELDS = (
    "negative_prompt",
    "sampler",
    "steps",
    "guidance",
    "width",
    "height",
    "clip_skip",
    "vae",  # a VAE file's name, or "None" for the checkpoint's own; empty → the default
)
GENERATION_FIELDS = DEFAULTS_FIELDS + ("prompt", "seed", "batch", "model", "strength")
# A gallery image as the init image ("send to img2img"): a hidden field with the image's id.
STORED_INIT_FIELD = "init_image_id"
# The mask's settings (sd_core/inpaint.py): numbers, then checkboxes.
INPAINT_FIELDS = ("mask_blur", "inpainting_fill", "inpaint_full_res_padding")
INPAINT_CHECKS = ("inpainting_mask_invert", "inpaint_full_res")
UPLOAD_FIELDS = ("init_image", "mask")
# The hires fix (sd_core/hires.py): the box that turns it on, then its settings.
HIRES_FIELDS = (
    "hires_scale",
    "hires_upscaler",
    "hires_steps",
    "hires_strength",
    "hires_scheduler",  # empty: the first pass's
    "hires_guidance",  # empty: the first pass's
)


async def read_form(request: Request) -> FormData:
    """The posted form (urlencoded or multipart); cheap, and async so handlers need not be."""
    return await request.form()


FormDep = Annotated[FormData, Depends(read_form)]


@dataclass(frozen=True)
class FieldError:
    field: str  # the form field's name ("form" when the error is about no one field)
    value: object  # what the form sent for it (None: nothing)
    message: str


class FormInvalid(Exception):
    """A form whose fields do not make a valid request."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}={e.value!r}: {e.message}" for e in errors))
        self.errors = errors


def field_errors(exc: FormInvalid | InvalidField | Conflict) -> dict[str, str]:
    """Field name → message, what the templates show beside each field (the first per field)."""
    if isinstance(exc, FormInvalid):
        found: dict[str, str] = {}
        for error in exc.errors:
            found.setdefault(error.field, error.message)
        return found
    if isinstance(exc, InvalidField):
        # "defaults.sampler" is the form's "sampler"; "styles.1" (a list's item) its "styles".
        parts = [part for part in exc.field.split(".") if not part.isdigit()]
        return {parts[-1]: exc.message}
    return {"name": exc.message}  # the only conflict a form can make: a name already taken


def error_detail(exc: FormInvalid | InvalidField | Conflict) -> list[dict[str, Any]]:
    """`field_errors` in FastAPI's 422 shape, for the page's script (which places each
    message beside the input of that name, as it does for the REST API's errors)."""
    return [
        {"type": "value_error", "loc": ["body", field], "msg": message}
        for field, message in field_errors(exc).items()
    ]


def text(form: FormData, name: str) -> str | None:
    """A text field's value; None when it is absent or left empty (so the default applies)."""
    value = form.get(name)
    if isinstance(value, str) and value.strip() != "":
        return value
    return None


def ticked(form: FormData, name: str) -> bool:
    return form.get(name) == "on"


def picked(form: FormData, name: str) -> list[str]:
    """The options chosen in a multiple select, in the page's order (none: [])."""
    return [value for value in form.getlist(name) if isinstance(value, str) and value.strip()]


def _sent(form: FormData, field: str) -> object:
    value = form.get(field)
    if isinstance(value, UploadFile):
        return value.filename
    return value


def validate(schema: type[Schema], fields: dict[str, Any], form: FormData) -> Schema:
    """`schema` from `fields`, or FormInvalid naming each bad field and what `form` sent."""
    try:
        return schema.model_validate(fields)
    except ValidationError as exc:
        errors = []
        for error in exc.errors():
            loc = [str(part) for part in error["loc"]]
            # A project's defaults are nested in the schema but are top-level inputs in the form.
            field = loc[-1] if loc and loc[0] == "defaults" else (loc[0] if loc else "form")
            errors.append(FieldError(field, _sent(form, field), human_message(dict(error))))
        raise FormInvalid(errors) from exc


def _project_fields(form: FormData) -> dict[str, Any]:
    defaults = {key: text(form, key) for key in DEFAULTS_FIELDS}
    return {
        "name": form.get("name", ""),
        "description": form.get("description", ""),
        "device": text(form, "device") or "cpu",
        "dtype": text(form, "dtype"),
        "low_memory": ticked(form, "low_memory"),
        "default_model": text(form, "default_model"),
        "defaults": {key: value for key, value in defaults.items() if value is not None},
    }


def project_create(form: FormData) -> ProjectCreate:
    return validate(ProjectCreate, _project_fields(form), form)


def project_update(form: FormData) -> ProjectUpdate:
    """Every field of the edit form; settings left empty go back to their defaults."""
    fields = _project_fields(form)
    fields["defaults"] = validate(GenerationDefaults, fields["defaults"], form)
    return validate(ProjectUpdate, fields, form)


def upload(form: FormData, name: str) -> str | None:
    """A file input's content as base64; None when no file (or an empty one) was chosen.

    Blocking (a large upload is spooled to disk): call it from a plain `def` handler."""
    value = form.get(name)
    if isinstance(value, UploadFile) and value.filename:
        value.file.seek(0)
        data = value.file.read()
        if data:
            return base64.b64encode(data).decode("ascii")
    return None


def generation_create(form: FormData) -> GenerationCreate:
    names = GENERATION_FIELDS + INPAINT_FIELDS + (STORED_INIT_FIELD,)
    fields: dict[str, Any] = {key: text(form, key) for key in names}
    fields.update({key: ticked(form, key) for key in INPAINT_CHECKS})
    if ticked(form, "hires"):
        fields.update({"hires": True, **{key: text(form, key) for key in HIRES_FIELDS}})
    fields["negative_prompt"] = form.get("negative_prompt", "")
    if ticked(form, "random_seed"):
        fields["seed"] = None
    for name in UPLOAD_FIELDS:
        fields[name] = upload(form, name)
    fields["styles"] = picked(form, "styles")
    return validate(
        GenerationCreate, {key: value for key, value in fields.items() if value is not None}, form
    )


def generation_values(form: FormData) -> dict[str, Any]:
    """What the generate page shows again after an error: the text sent, the seed box."""
    values: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
    values["random_seed"] = ticked(form, "random_seed")
    values.update({key: True for key in INPAINT_CHECKS if ticked(form, key)})
    values["hires"] = ticked(form, "hires")
    values["styles"] = picked(form, "styles")
    return values


def upscale_request(form: FormData) -> UpscaleRequest:
    """The image page's upscale form: the upscaler chosen and the scale typed (empty → 2)."""
    fields = {key: text(form, key) for key in ("upscaler", "scale")}
    return validate(
        UpscaleRequest, {key: value for key, value in fields.items() if value is not None}, form
    )


def variation_request(form: FormData) -> VariationRequest:
    """The image page's variations form: the strength typed (empty → 0.3) and the first
    variation seed (empty → random)."""
    fields = {key: text(form, key) for key in ("variation_seed", "variation_strength")}
    return validate(
        VariationRequest, {key: value for key, value in fields.items() if value is not None}, form
    )
