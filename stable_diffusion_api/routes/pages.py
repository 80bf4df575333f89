"""The HTML pages (Jinja2 templates in /templates, plain CSS/JS in /static; no CDN, no build).

Every form posts to a page route and works without JavaScript (post → redirect → get); the
script in static/dali.js upgrades the generate page to queue over the JSON API and show live
progress over SSE. Bad form input re-renders the same page with each message beside its field.
"""

from __future__ import annotations

import base64
import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from stable_diffusion_api.deps import (
    API_KEY_COOKIE,
    Id,
    StudioDep,
    key_ok,
    require_login,
)
from stable_diffusion_api.errors import Conflict, InvalidField, NotFound
from stable_diffusion_api.models import FINISHED
from stable_diffusion_api.routes.templating import make_templates, render, render_error, seconds
from stable_diffusion_api.schemas import (
    GenerationCreate,
    GenerationDefaults,
    ProjectCreate,
    ProjectOut,
    ProjectUpdate,
)
from stable_diffusion_api.services import Studio
from stable_diffusion_api.services.workers import Benchmark

# `create_app()` builds the template environment and error view through this module.
__all__ = ["make_templates", "render_error", "router"]

router = APIRouter(include_in_schema=False)
pages = APIRouter(include_in_schema=False, dependencies=[Depends(require_login)])
GALLERY_PAGE = 24


# -- form helpers ------------------------------------------------------------------------------


def _errors(exc: Exception) -> dict[str, str]:
    """Field name → message, for a pydantic ValidationError or a domain error."""
    if isinstance(exc, ValidationError):
        found: dict[str, str] = {}
        for error in exc.errors():
            loc = [str(part) for part in error["loc"]]
            field = loc[-1] if loc and loc[0] == "defaults" else (loc[0] if loc else "form")
            found.setdefault(field, error["msg"])
        return found
    if isinstance(exc, InvalidField):
        return {exc.field.split(".")[-1]: exc.message}
    if isinstance(exc, Conflict):
        return {"name": exc.message}
    return {"form": str(exc)}


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if isinstance(value, str) and value.strip() != "":
        return value
    return None


def _project_fields(form: FormData) -> dict[str, Any]:
    defaults = {
        key: _text(form, key)
        for key in ("negative_prompt", "sampler", "steps", "guidance", "width", "height")
    }
    return {
        "name": form.get("name", ""),
        "description": form.get("description", ""),
        "device": _text(form, "device") or "cpu",
        "dtype": _text(form, "dtype"),
        "low_memory": form.get("low_memory") == "on",
        "default_model": _text(form, "default_model"),
        "defaults": {key: value for key, value in defaults.items() if value is not None},
    }


async def _upload(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if isinstance(value, UploadFile) and value.filename:
        data = await value.read()
        if data:
            return base64.b64encode(data).decode("ascii")
    return None


def _choices(studio: Studio, project: ProjectOut | None = None) -> dict[str, Any]:
    """What every form offers: devices (with estimated time per image), models, samplers."""
    models = studio.models.list()
    estimates: dict[str, str] = {}
    usable = [m.name for m in models if m.available]
    # The project's model; else the built-in, or the first usable one if it is not installed.
    model = project.default_model if project and project.default_model else None
    if model is None and usable:
        model = usable[0]
    steps = project.defaults.steps if project else 20
    for device in studio.hardware.devices:
        if model is None:
            estimates[device.id] = "no model installed yet"
            continue
        try:
            estimate = studio.generations.estimate(device.id, None, model, None, None, steps, 1)
        except InvalidField:  # the project's model is gone or broken
            estimates[device.id] = "its model cannot be used"
            continue
        estimates[device.id] = (
            f"≈ {seconds(estimate.seconds)} per image ({steps} steps, {model})"
            if estimate.seconds is not None
            else f"speed not measured yet ({model})"
        )
    return {
        "devices": studio.hardware.devices,
        "estimates": estimates,
        "models": models,
        "samplers": studio.samplers.list(),
    }


# -- login -------------------------------------------------------------------------------------


@router.get("/login")
def login_form(request: Request, next: str = "/") -> HTMLResponse:
    return render(request, "login.html", {"next": next, "error": None})


@router.post("/login")
def login(
    request: Request,
    studio: StudioDep,
    api_key: Annotated[str, Form(max_length=500)],
    next: Annotated[str, Form(max_length=500)] = "/",
) -> Response:
    if not key_ok(studio, api_key):
        return render(request, "login.html", {"next": next, "error": "wrong key"}, 401)
    # Only local paths: a login link must not be able to send the user to another site.
    target = next if next.startswith("/") and not next.startswith("//") else "/"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(API_KEY_COOKIE, api_key, httponly=True, samesite="strict")
    return response


# -- projects ----------------------------------------------------------------------------------


@pages.get("/")
def home(request: Request, studio: StudioDep) -> HTMLResponse:
    context = {"projects": studio.projects.list(), "values": {}, "errors": {}}
    return render(request, "home.html", context | _choices(studio))


@pages.post("/projects")
async def create_project(request: Request, studio: StudioDep) -> Response:
    form = await request.form()
    try:
        data = ProjectCreate.model_validate(_project_fields(form))
        project = studio.projects.create(data)
    except (ValidationError, InvalidField, Conflict) as exc:
        status = 409 if isinstance(exc, Conflict) else 422
        context = {"projects": studio.projects.list(), "values": dict(form), "errors": _errors(exc)}
        return render(request, "home.html", context | _choices(studio), status)
    return RedirectResponse(f"/projects/{project.id}", status_code=303)


@pages.get("/projects/{project_id}/edit")
def edit_project(request: Request, project_id: Id, studio: StudioDep) -> HTMLResponse:
    project = studio.projects.view(project_id)
    values = project.model_dump() | project.defaults.model_dump()
    context = {"project": project, "values": values, "errors": {}}
    return render(request, "project_form.html", context | _choices(studio, project))


@pages.post("/projects/{project_id}/edit")
async def update_project(request: Request, project_id: Id, studio: StudioDep) -> Response:
    project = studio.projects.view(project_id)
    form = await request.form()
    fields = _project_fields(form)
    try:
        fields["defaults"] = GenerationDefaults.model_validate(fields["defaults"])
        studio.projects.update(project_id, ProjectUpdate.model_validate(fields))
    except (ValidationError, InvalidField, Conflict) as exc:
        status = 409 if isinstance(exc, Conflict) else 422
        context = {"project": project, "values": dict(form), "errors": _errors(exc)}
        return render(request, "project_form.html", context | _choices(studio, project), status)
    return RedirectResponse(f"/projects/{project_id}", status_code=303)


@pages.post("/projects/{project_id}/delete")
async def delete_project(request: Request, project_id: Id, studio: StudioDep) -> Response:
    project = studio.projects.view(project_id)
    form = await request.form()
    try:
        studio.projects.delete(project_id, confirm=form.get("confirm") == "on")
    except Conflict as exc:
        values = project.model_dump() | project.defaults.model_dump()
        context = {"project": project, "values": values, "errors": {"confirm": exc.message}}
        return render(request, "project_form.html", context | _choices(studio, project), 409)
    return RedirectResponse("/", status_code=303)


# -- generating --------------------------------------------------------------------------------


def _generate_context(
    studio: Studio, project: ProjectOut, values: dict[str, Any], errors: dict[str, str]
) -> dict[str, Any]:
    recent, _ = studio.gallery.page(project.id, 0, 8)
    active, _ = studio.generations.page(project.id, 0, 10)
    active = [g for g in active if g.status not in FINISHED]
    context = {
        "project": project,
        "values": values,
        "errors": errors,
        "recent": recent,
        "active": active,
        "builtin": studio.models.list()[0],
    }
    return context | _choices(studio, project)


@pages.get("/projects/{project_id}")
def generate_page(
    request: Request,
    project_id: Id,
    studio: StudioDep,
    from_image: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> HTMLResponse:
    project = studio.projects.view(project_id)
    values: dict[str, Any] = project.defaults.model_dump() | {
        "model": project.default_model or "",
        "random_seed": True,
        "batch": 1,
    }
    if from_image is not None:
        # A stale link (image deleted) starts from the project's defaults instead.
        with contextlib.suppress(NotFound):
            settings = studio.gallery.settings_of(from_image)
            values |= settings | {
                "sampler": settings["sampler"] or "",
                "random_seed": False,
                "batch": 1,
            }
    context = _generate_context(studio, project, values, {})
    return render(request, "generate.html", context)


@pages.post("/projects/{project_id}/generate")
async def generate(request: Request, project_id: Id, studio: StudioDep) -> Response:
    """The no-JavaScript path: queue, then show the generation's own page."""
    project = studio.projects.view(project_id)
    form = await request.form()
    fields: dict[str, Any] = {
        key: _text(form, key)
        for key in ("prompt", "negative_prompt", "sampler", "steps", "guidance", "seed")
        + ("width", "height", "batch", "model", "strength")
    }
    fields["negative_prompt"] = form.get("negative_prompt", "")
    if form.get("random_seed") == "on":
        fields["seed"] = None
    fields["init_image"] = await _upload(form, "init_image")
    fields["mask"] = await _upload(form, "mask")
    try:
        request_ = GenerationCreate.model_validate(
            {key: value for key, value in fields.items() if value is not None}
        )
        accepted = studio.generations.submit(project_id, request_, source="page")
    except (ValidationError, InvalidField) as exc:
        values: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
        values["random_seed"] = form.get("random_seed") == "on"
        context = _generate_context(studio, project, values, _errors(exc))
        return render(request, "generate.html", context, 422)
    return RedirectResponse(f"/generations/{accepted.id}", status_code=303)


@pages.get("/generations/{generation_id}")
def generation_page(request: Request, generation_id: Id, studio: StudioDep) -> HTMLResponse:
    generation = studio.generations.view(generation_id)
    project = studio.projects.view(generation.project_id)
    context = {
        "generation": generation,
        "project": project,
        "finished": generation.status in FINISHED,
        "sampler_label": studio.samplers.display_name(generation.sampler),
    }
    return render(request, "generation.html", context)


@pages.post("/generations/{generation_id}/cancel")
def cancel_generation(generation_id: Id, studio: StudioDep) -> Response:
    with contextlib.suppress(Conflict):  # it finished meanwhile: its page shows how
        studio.generations.cancel(generation_id)
    return RedirectResponse(f"/generations/{generation_id}", status_code=303)


# -- gallery -----------------------------------------------------------------------------------


@pages.get("/projects/{project_id}/gallery")
def gallery(
    request: Request,
    project_id: Id,
    studio: StudioDep,
    page: Annotated[int, Query(ge=1, le=10**6)] = 1,
) -> HTMLResponse:
    project = studio.projects.view(project_id)
    images, total = studio.gallery.page(project_id, (page - 1) * GALLERY_PAGE, GALLERY_PAGE)
    pages_count = max(1, -(-total // GALLERY_PAGE))
    context = {
        "project": project,
        "images": images,
        "total": total,
        "page": page,
        "pages": pages_count,
    }
    return render(request, "gallery.html", context)


@pages.get("/images/{image_id}")
def image_page(request: Request, image_id: Id, studio: StudioDep) -> HTMLResponse:
    image = studio.gallery.get(image_id)
    generation = studio.generations.view(image.generation_id)
    project = studio.projects.view(image.project_id)
    newer, older = studio.gallery.neighbours(image)
    context = {
        "image": studio.gallery.view(image_id),
        "generation": generation,
        "project": project,
        "sampler_label": studio.samplers.display_name(generation.sampler),
        "newer": newer,
        "older": older,
    }
    return render(request, "image.html", context)


@pages.post("/images/{image_id}/delete")
def delete_image(image_id: Id, studio: StudioDep) -> Response:
    image = studio.gallery.get(image_id)
    studio.gallery.delete(image_id)
    return RedirectResponse(f"/projects/{image.project_id}/gallery", status_code=303)


# -- hardware ----------------------------------------------------------------------------------


@pages.get("/hardware")
def hardware_page(request: Request, studio: StudioDep) -> HTMLResponse:
    studio.hardware.refresh()  # free memory changes: show it as it is now
    speeds = studio.speeds.list()
    names = {m.short_hash: m.name for m in studio.models.list() if m.short_hash}
    context = {
        "speeds": speeds,
        "model_names": names,
        "benchmarks": list(studio.workers.benchmarks.values()),
    } | _choices(studio)
    return render(request, "hardware.html", context)


@pages.post("/hardware/benchmark")
async def benchmark(request: Request, studio: StudioDep) -> Response:
    form = await request.form()
    device, dtype = studio.hardware.check(str(form.get("device", "cpu")), None)
    model = studio.models.resolve(_text(form, "model"))
    studio.workers.request_benchmark(Benchmark(device.id, dtype, model, None, None, 8))
    return RedirectResponse("/hardware", status_code=303)


router.include_router(pages)
