"""The HTML pages (Jinja2 templates in /templates, plain CSS/JS in /static; no CDN, no build).

Every form posts to a page route and works without JavaScript (post → redirect → get); the
script in static/dali.js upgrades the generate page to post its form for a JSON answer (the
same route and form reader), and static/jobs.js follows all of its jobs live over one SSE
stream. Bad form input re-renders the same page with each message beside its field.

Thin like the JSON API: `forms` turns form fields into the API's schemas, `templating` holds
the Jinja environment, and every read and write goes through a service of the studio. The
services block (database, files), so the handlers are plain `def`, run in the thread pool; the
request body is read by the async `FormDep` dependency before the handler starts.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from sd_core import shapes_grammar
from sd_core.schedule_types import SCHEDULE_TYPES
from stable_diffusion_api.deps import Id, SearchText, StudioDep
from stable_diffusion_api.errors import Conflict, InvalidField, NotFound
from stable_diffusion_api.models import FINISHED
from stable_diffusion_api.routes import forms
from stable_diffusion_api.routes.forms import FormDep, FormInvalid, field_errors
from stable_diffusion_api.routes.templating import make_templates, render, render_error, seconds
from stable_diffusion_api.schemas import DEFAULT_VARIATION_STRENGTH, VARIATIONS, ProjectOut
from stable_diffusion_api.services import Studio
from stable_diffusion_api.services.fast_paths import saved_autotunes
from stable_diffusion_api.services.gallery import SEARCH_MAX_CHARS
from stable_diffusion_api.services.generator import DeviceSpec

# `create_app()` builds the template environment and error view through this module.
__all__ = ["make_templates", "render_error", "router"]

# Credentials are checked in front of every route (auth.AuthGuard); the login is routes/login.py.
router = APIRouter(include_in_schema=False)
pages = APIRouter(include_in_schema=False)
GALLERY_PAGE = 24
ONLY_ACTIVE = 2**62  # newer than every job id: `project_jobs` gives the queued and running only


def _estimates(
    studio: Studio, devices: list[DeviceSpec], project: ProjectOut | None = None
) -> dict[str, str]:
    """Each device's estimated time per image of the project's model (else the built-in)."""
    models = studio.models.list()
    estimates: dict[str, str] = {}
    usable = [m.name for m in models if m.available]
    # The project's model; else the built-in, or the first usable one if it is not installed.
    model = project.default_model if project and project.default_model else None
    if model is None and usable:
        model = usable[0]
    steps = project.defaults.steps if project else 20
    for device in devices:
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
    return estimates


def _choices(studio: Studio, project: ProjectOut | None = None) -> dict[str, Any]:
    """What every form offers: devices (with estimated time per image), models, samplers,
    the installed VAE files (and the folder they go in)."""
    models = studio.models.list()
    devices = studio.hardware.choices()
    estimates = _estimates(studio, devices, project)
    return {
        "devices": devices,
        "estimates": estimates,
        "models": models,
        "samplers": studio.samplers.list(),
        "schedule_types": SCHEDULE_TYPES,  # the hires fix's schedule type
        "vaes": studio.assets.vaes(),
        "asset_folders": studio.assets.folders,
    }


# -- projects ----------------------------------------------------------------------------------


@pages.get("/")
def home(request: Request, studio: StudioDep) -> HTMLResponse:
    context = {"projects": studio.projects.list(), "values": {}, "errors": {}}
    return render(request, "home.html", context | _choices(studio))


@pages.post("/projects")
def create_project(request: Request, studio: StudioDep, form: FormDep) -> Response:
    try:
        project = studio.projects.create(forms.project_create(form))
    except (FormInvalid, InvalidField, Conflict) as exc:
        status = 409 if isinstance(exc, Conflict) else 422
        context = {"projects": studio.projects.list(), "values": dict(form)}
        context["errors"] = field_errors(exc)
        return render(request, "home.html", context | _choices(studio), status)
    return RedirectResponse(f"/projects/{project.id}", status_code=303)


@pages.get("/projects/{project_id}/edit")
def edit_project(request: Request, project_id: Id, studio: StudioDep) -> HTMLResponse:
    project = studio.projects.view(project_id)
    values = project.model_dump() | project.defaults.model_dump()
    context = {"project": project, "values": values, "errors": {}}
    return render(request, "project_form.html", context | _choices(studio, project))


@pages.post("/projects/{project_id}/edit")
def update_project(request: Request, project_id: Id, studio: StudioDep, form: FormDep) -> Response:
    project = studio.projects.view(project_id)
    try:
        studio.projects.update(project_id, forms.project_update(form))
    except (FormInvalid, InvalidField, Conflict) as exc:
        status = 409 if isinstance(exc, Conflict) else 422
        context = {"project": project, "values": dict(form), "errors": field_errors(exc)}
        return render(request, "project_form.html", context | _choices(studio, project), status)
    return RedirectResponse(f"/projects/{project_id}", status_code=303)


@pages.post("/projects/{project_id}/delete")
def delete_project(request: Request, project_id: Id, studio: StudioDep, form: FormDep) -> Response:
    project = studio.projects.view(project_id)
    try:
        studio.projects.delete(project_id, confirm=forms.ticked(form, "confirm"))
    except Conflict as exc:
        values = project.model_dump() | project.defaults.model_dump()
        context = {"project": project, "values": values, "errors": {"confirm": exc.message}}
        return render(request, "project_form.html", context | _choices(studio, project), 409)
    return RedirectResponse("/", status_code=303)


# -- generating --------------------------------------------------------------------------------


GRAMMAR_HINT = {
    "pattern": shapes_grammar.PATTERN,
    "pair_pattern": shapes_grammar.PAIR_PATTERN,
    "suggestions": shapes_grammar.SUGGESTIONS,
    "words": (
        "a",
        *shapes_grammar.SIZES,
        *shapes_grammar.COLORS,
        *shapes_grammar.STYLES,
        *shapes_grammar.SHAPES,
        *(f"in the {position}" for position in shapes_grammar.POSITIONS),
        *shapes_grammar.RELATIONS,
        "on a",
        "gray",
        "background",
    ),
}


def _generate_context(
    studio: Studio, project: ProjectOut, values: dict[str, Any], errors: dict[str, str]
) -> dict[str, Any]:
    recent, _ = studio.gallery.page(project.id, 0, 8)
    jobs = studio.generations.project_jobs(project.id, after=ONLY_ACTIVE)
    stored_init = str(values.get("init_image_id") or "")
    context = {
        "project": project,
        "values": values,
        "errors": errors,
        # The gallery image the form starts from (its id in a hidden field), if any.
        "stored_init": int(stored_init) if stored_init.isdigit() else None,
        "recent": recent,
        # Its queued and running jobs, newest first, and its newest job id: the page's script
        # follows them and every later one on the project's event stream.
        "active": jobs.jobs[::-1],
        "latest_id": jobs.latest_id,
        "builtin": studio.models.list()[0],
        # What the built-in model understands, shown under the prompt while it is chosen.
        "grammar": GRAMMAR_HINT,
        # The prompt's picker: a click writes `<lora:name:1>` or the embedding's name.
        "loras": studio.assets.loras(),
        "embeddings": studio.assets.embeddings(),
        # Prompt styles from the studio's styles.csv, applied by name when the job is queued.
        "styles": studio.generations.styles.all(),
        "styles_file": studio.generations.styles.path,
    }
    return context | _choices(studio, project)


def _settings_values(studio: Studio, image_id: int) -> dict[str, Any]:
    """The generate form's values that make image `image_id` again; NotFound if it is gone."""
    settings = studio.gallery.settings_of(image_id)
    return settings | {"sampler": settings["sampler"] or "", "batch": 1}


@pages.get("/projects/{project_id}")
def generate_page(
    request: Request,
    project_id: Id,
    studio: StudioDep,
    from_image: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    init_from: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    inpaint: bool = False,
) -> HTMLResponse:
    """The generate form: the project's defaults, or an image's settings ("use these
    settings": `from_image`), or an image to start from ("send to img2img / inpaint":
    `init_from`, its settings with a random seed; `inpaint` opens the mask editor on it)."""
    project = studio.projects.view(project_id)
    values: dict[str, Any] = project.defaults.model_dump() | {
        "model": project.default_model or "",
        "random_seed": True,
        "batch": 1,
    }
    errors: dict[str, str] = {}
    if from_image is not None:
        # "Use these settings". A stale link (image deleted) starts from the defaults instead.
        with contextlib.suppress(NotFound):
            values |= _settings_values(studio, from_image) | {"random_seed": False}
    if init_from is not None:
        # A new picture from the image: its settings, a new seed, the image itself.
        try:
            values |= _settings_values(studio, init_from) | {"init_image_id": init_from}
        except NotFound:
            errors["init_image_id"] = f"Image #{init_from} is not in the gallery any more."
    values["inpaint"] = inpaint  # the init image section open, with the mask's hint
    context = _generate_context(studio, project, values, errors)
    # The page's script puts back the form this browser last had for the project, unless an
    # image chose the settings ("use these settings", "send to"; the form shown again after
    # bad input keeps what was sent).
    context["remember"] = "restore" if from_image is None and init_from is None else "keep"
    return render(request, "generate.html", context, 404 if errors else 200)


@pages.post("/projects/{project_id}/generate")
def generate(request: Request, project_id: Id, studio: StudioDep, form: FormDep) -> Response:
    """Queue the form's generation, then show the generation's own page (bad values: the form
    again, each message beside its field).

    The page's script posts the same form asking for JSON (`Accept: application/json`) and
    gets the REST API's answers instead: 202 with the job, or 422 with the fields' errors in
    FastAPI's shape. So with or without JavaScript every field goes through `forms`."""
    project = studio.projects.view(project_id)
    as_json = "application/json" in request.headers.get("accept", "")
    try:
        accepted = studio.generations.submit(
            project_id, forms.generation_create(form), source="page"
        )
    except (FormInvalid, InvalidField) as exc:
        if as_json:
            return JSONResponse({"detail": forms.error_detail(exc)}, status_code=422)
        values = forms.generation_values(form)
        context = _generate_context(studio, project, values, field_errors(exc))
        return render(request, "generate.html", context, 422)
    if as_json:
        return JSONResponse(accepted.model_dump(mode="json"), status_code=202)
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
    q: SearchText = None,
) -> HTMLResponse:
    """The project's images, newest first; `q` keeps those whose prompt contains it."""
    project = studio.projects.view(project_id)
    return _gallery_page(request, studio, project, page, q)


@pages.get("/gallery")
def all_images(
    request: Request,
    studio: StudioDep,
    page: Annotated[int, Query(ge=1, le=10**6)] = 1,
    q: SearchText = None,
) -> HTMLResponse:
    """The images of every project, newest first, each naming its project; `q` as above."""
    return _gallery_page(request, studio, None, page, q)


def _gallery_page(
    request: Request, studio: Studio, project: ProjectOut | None, page: int, q: str | None
) -> HTMLResponse:
    """One project's gallery (`project`) or every project's (None); a search too long shows
    its error beside the search box (422)."""
    offset = (page - 1) * GALLERY_PAGE
    context: dict[str, Any] = {
        "nav": "gallery" if project is None else "projects",
        "project": project,
        "page": page,
        "q": (q or "").strip(),
        "search_max": SEARCH_MAX_CHARS,
        "errors": {},
    }
    try:
        if project is None:
            images, total = studio.gallery.everywhere(offset, GALLERY_PAGE, q)
            context["project_names"] = {p.id: p.name for p in studio.projects.list()}
        else:
            images, total = studio.gallery.page(project.id, offset, GALLERY_PAGE, q)
    except InvalidField as exc:
        context |= {"images": [], "total": 0, "pages": 1, "errors": field_errors(exc)}
        return render(request, "gallery.html", context, 422)
    context |= {"images": images, "total": total, "pages": max(1, -(-total // GALLERY_PAGE))}
    return render(request, "gallery.html", context)


def _image_context(
    studio: Studio, image_id: int, values: dict[str, Any], errors: dict[str, str]
) -> dict[str, Any]:
    """The image page: the image, how it was made, its neighbours and the upscale form."""
    image = studio.gallery.get(image_id)
    generation = studio.generations.view(image.generation_id)
    newer, older = studio.gallery.neighbours(image)
    return {
        "image": studio.gallery.view(image_id),
        "generation": generation,
        "project": studio.projects.view(image.project_id),
        "sampler_label": studio.samplers.display_name(generation.sampler),
        "newer": newer,
        "older": older,
        "upscalers": studio.upscales.upscalers(),
        "upscalers_folder": studio.assets.folders.upscalers,
        "variations": VARIATIONS,
        "values": values,
        "errors": errors,
    }


@pages.get("/images/{image_id}")
def image_page(request: Request, image_id: Id, studio: StudioDep) -> HTMLResponse:
    values = {"upscaler": "Lanczos", "scale": 2, "variation_strength": DEFAULT_VARIATION_STRENGTH}
    context = _image_context(studio, image_id, values, {})
    return render(request, "image.html", context)


@pages.post("/images/{image_id}/upscale")
def upscale_image(request: Request, image_id: Id, studio: StudioDep, form: FormDep) -> Response:
    """Upscale into a new gallery image and show its page; errors beside the form's fields."""
    try:
        upscale = forms.upscale_request(form)
        upscaled = studio.upscales.upscale(image_id, upscale.upscaler, upscale.scale)
    except (FormInvalid, InvalidField) as exc:
        values = {key: value for key, value in form.items() if isinstance(value, str)}
        context = _image_context(studio, image_id, values, field_errors(exc))
        return render(request, "image.html", context, 422)
    return RedirectResponse(f"/images/{upscaled.id}", status_code=303)


@pages.post("/images/{image_id}/variations")
def vary_image(request: Request, image_id: Id, studio: StudioDep, form: FormDep) -> Response:
    """Queue `VARIATIONS` variations of the image (one job each), then show its project's
    generate page, which lists them in the queue; errors beside the form's fields."""
    try:
        wanted = forms.variation_request(form)
        studio.variations.queue(image_id, wanted.variation_seed, wanted.variation_strength)
    except (FormInvalid, InvalidField) as exc:
        errors = field_errors(exc)
        if not errors.keys() <= {"variation_seed", "variation_strength"}:
            errors = {"variations": " ".join(errors.values())}  # a setting of the image's
        values = {key: value for key, value in form.items() if isinstance(value, str)}
        context = _image_context(studio, image_id, values, errors)
        return render(request, "image.html", context, 422)
    project_id = studio.gallery.get(image_id).project_id
    return RedirectResponse(f"/projects/{project_id}", status_code=303)


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
    context = _choices(studio) | {
        "devices": studio.hardware.devices,  # every live node's, as node/device
        "estimates": _estimates(studio, studio.hardware.devices),
        "own_node": studio.hardware.node_name,
        "speeds": speeds,
        "model_names": names,
        "benchmarks": studio.workers.benchmark_views(),
        "autotunes": saved_autotunes(studio.settings.autotune_file),
    }
    return render(request, "hardware.html", context)


@pages.post("/hardware/benchmark")
def benchmark(studio: StudioDep, form: FormDep) -> Response:
    studio.workers.benchmark(str(form.get("device", "cpu")), None, forms.text(form, "model"),
                             None, None, 8)  # fmt: skip
    return RedirectResponse("/hardware", status_code=303)


@pages.post("/hardware/autotune")
def autotune(studio: StudioDep, form: FormDep) -> Response:
    """Queue an autotune of the device with the model (4 steps per image: short on a CPU)."""
    studio.workers.autotune(str(form.get("device", "cpu")), forms.text(form, "model"), 4)
    return RedirectResponse("/hardware", status_code=303)


router.include_router(pages)
