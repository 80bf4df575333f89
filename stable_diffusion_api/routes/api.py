"""The JSON API under /api/v1. Each route validates, calls one service method, shapes the reply.

None of them runs the model; generations are queued and answered with 202. Blocking work (the
database, files) runs in the thread pool. The routes every page and client polls, and the
generation POST, are `async def` handing that work to the pool once; a plain `def` route costs
two hand-offs (FastAPI validates its answer in the pool too) plus one per plain `def`
dependency, and each hand-off waits its turn for the interpreter lock under load. The rarer
writes stay plain `def`.
"""

from __future__ import annotations

from email.utils import format_datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from stable_diffusion_api.auth import identity_of
from stable_diffusion_api.deps import (
    GenerationDep,
    Id,
    ImageDep,
    ProjectDep,
    SearchText,
    StudioDep,
)
from stable_diffusion_api.errors import NotFound
from stable_diffusion_api.models import STATUSES
from stable_diffusion_api.routes.responses import (
    BODY,
    GUARDED,
    QUEUE_FULL,
    UNSAFE,
    Responses,
    errors,
)
from stable_diffusion_api.schemas import (
    AutotuneOut,
    AutotuneRequest,
    BenchmarkOut,
    BenchmarkRequest,
    DeviceOut,
    ErrorOut,
    EstimateOut,
    FastPathOut,
    GenerationAccepted,
    GenerationCreate,
    GenerationOut,
    ImageOut,
    InstalledFileOut,
    ModelOut,
    Page,
    ProjectCreate,
    ProjectOut,
    ProjectUpdate,
    SamplerOut,
    Size,
    SpeedOut,
    Steps,
    UpscaleRequest,
    page_of,
)
from stable_diffusion_api.services import Studio
from stable_diffusion_api.services.assets import InstalledFile
from stable_diffusion_api.services.fast_paths import saved_autotunes
from stable_diffusion_api.services.registry import ModelEntry
from stable_diffusion_api.services.storage import content_type
from stable_diffusion_api.services.workers import BenchmarkView

# Credentials are checked in front of every route (auth.AuthGuard), not here.
router = APIRouter(prefix="/api/v1", responses=GUARDED)

STATUS_PATTERN = "^(" + "|".join(STATUSES) + ")$"
Offset = Annotated[int, Query(ge=0, le=10**9)]
Limit = Annotated[int, Query(ge=1, le=100)]
# Generated images never change under an id (ids are never reused): cache them for good.
IMMUTABLE = "max-age=31536000, immutable"
FILE: Responses = errors(404, 503) | {
    304: {"description": "Not modified: the copy of If-None-Match is current"}
}
UNHEALTHY: Responses = {
    503: {"description": "Unhealthy: the studio cannot save its work (`problems`)"}
}


def model_out(entry: ModelEntry) -> ModelOut:
    return ModelOut(
        name=entry.name,
        filename=entry.filename,
        label=entry.label,
        builtin=entry.builtin,
        available=entry.available,
        size_bytes=entry.size_bytes,
        variant=entry.variant,
        dtype=entry.dtype,
        sha256=entry.sha256,
        short_hash=entry.short_hash,
        parameters=entry.parameters,
        native_size=entry.native_size,
        error=entry.error,
    )


def benchmark_out(benchmark: BenchmarkView) -> BenchmarkOut:
    return BenchmarkOut(
        device=benchmark.device,
        dtype=benchmark.dtype,
        model=benchmark.model,
        width=benchmark.width,
        height=benchmark.height,
        steps=benchmark.steps,
        status=benchmark.status,
        error=benchmark.error,
        kind=benchmark.kind,
        result=benchmark.result,
    )


def autotune_out(device: str, entry: dict[str, Any]) -> AutotuneOut:
    """One device's entry of the autotune file (`sd_core.autotune.AutotuneResult.as_json`)."""
    results = []
    for r in entry.get("results", []):
        fast = r.get("fast_path", {})
        results.append(
            FastPathOut(
                label=r.get("label", ""),
                mode=fast.get("mode", ""),
                dtype=fast.get("dtype") or "",
                fused_qkv=bool(fast.get("fused_qkv", False)),
                status=r.get("status", ""),
                seconds=r.get("seconds"),
                first_s=r.get("first_s"),
                error=r.get("error"),
                note=r.get("note", ""),
            )
        )
    labels = {(r.mode, r.dtype, r.fused_qkv): r.label for r in results}
    chosen = {
        dtype: labels.get((f.get("mode"), dtype, bool(f.get("fused_qkv"))), str(f.get("mode")))
        for dtype, f in entry.get("chosen", {}).items()
    }
    return AutotuneOut(
        device=device,
        device_name=str(entry.get("device_name", "")),
        results=results,
        chosen=chosen,
        skipped={str(k): str(v) for k, v in entry.get("skipped", {}).items()},
    )


def _immutable_file(
    studio: Studio, request: Request, key: str, name: str, missing: NotFound
) -> Response:
    """Serve the stored file `key`, streamed from the store (one request to it, never read
    whole into memory) with its type, length and time; `missing` when it is not there (or a
    tampered row points outside the store). The content under an id never changes, so `name`
    (made of the id) is a strong validator and the file may be cached for good: a matching
    If-None-Match gets 304 without asking the store. Blocking (the store's first read): call
    it from a thread, not the event loop."""
    visibility = "private" if studio.settings.auth_configured else "public"
    stem = name.rsplit(".", 1)[0]
    headers = {"Cache-Control": f"{visibility}, {IMMUTABLE}", "ETag": f'"{stem}"'}
    if headers["ETag"] in _entity_tags(request.headers.get("if-none-match", "")):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    opened = studio.storage.open_stream(key)
    if opened is None:
        raise missing
    found, body = opened
    headers["Content-Length"] = str(found.size)
    headers["Last-Modified"] = format_datetime(found.modified, usegmt=True)
    headers["Content-Disposition"] = f'inline; filename="{name}"'
    return StreamingResponse(body, media_type=content_type(key), headers=headers)


def _entity_tags(header: str) -> set[str]:
    """The entity tags an If-None-Match header lists (a weak W/ tag compares as its strong
    twin, as RFC 9110 has it for If-None-Match)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


@router.get("/health", responses=UNHEALTHY)
def health(studio: StudioDep, request: Request, response: Response) -> dict[str, object]:
    """200 "ok"; 503 "unhealthy" with the problems when the studio cannot save its work.

    Open without credentials (for load balancers and monitors), and then it says only "ok" or
    "unhealthy": the devices and the problems (which name files) need credentials."""
    problems = studio.db.problems()
    details = identity_of(request) is not None
    if problems:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"status": "unhealthy"} | ({"problems": problems} if details else {})
    devices = [d.id for d in studio.hardware.devices]
    return {"status": "ok"} | ({"devices": devices} if details else {})


# -- hardware, models, samplers ---------------------------------------------------------------


@router.get("/hardware")
def hardware(studio: StudioDep) -> list[DeviceOut]:
    """Every live node's devices, ids `node/device`, with the speeds measured on each."""
    speeds = studio.speeds.list()
    listed = []
    for d in studio.hardware.devices:
        node, device = d.id.split("/", 1)
        listed.append(
            DeviceOut(
                id=d.id,
                node=node,
                device=device,
                kind=d.kind,
                name=d.name,
                total_memory=d.total_memory,
                free_memory=d.free_memory,
                cores=d.cores,
                compute_capability=d.compute_capability,
                dtypes=list(d.dtypes),
                default_dtype=d.default_dtype,
                speeds=[SpeedOut.model_validate(s) for s in speeds if s.device == d.id],
            )
        )
    return listed


@router.post("/hardware/benchmark", status_code=status.HTTP_202_ACCEPTED, responses=BODY)
def benchmark(request: BenchmarkRequest, studio: StudioDep) -> BenchmarkOut:
    """Measure steps/s of a model at a size on a device (a short run, queued on its worker;
    another node's device: asked of that node, which takes it up at its next heartbeat)."""
    queued = studio.workers.benchmark(request.device, request.dtype, request.model,
                                      request.width, request.height, request.steps)  # fmt: skip
    return benchmark_out(queued)


@router.post("/hardware/autotune", status_code=status.HTTP_202_ACCEPTED, responses=BODY)
def autotune(request: AutotuneRequest, studio: StudioDep) -> BenchmarkOut:
    """Try the fast paths valid on a device (eager, channels_last, torch.compile, CUDA graphs,
    each dtype, fused QKV) with a model, keep the fastest within tolerance of float32 eager per
    dtype for later jobs (queued on the device's worker; the figures: GET /hardware/autotune)."""
    return benchmark_out(studio.workers.autotune(request.device, request.model, request.steps))


@router.get("/hardware/autotune")
def autotune_results(studio: StudioDep) -> list[AutotuneOut]:
    """Each device's last autotune: every fast path tried, its figures, the one kept."""
    saved = saved_autotunes(studio.settings.autotune_file)
    return [autotune_out(device, entry) for device, entry in saved.items()]


@router.get("/hardware/benchmarks")
def benchmarks(studio: StudioDep) -> list[BenchmarkOut]:
    """This host's benchmarks this session, then those asked of other nodes."""
    return [benchmark_out(b) for b in studio.workers.benchmark_views()]


@router.get("/models")
async def models(studio: StudioDep) -> list[ModelOut]:
    return [model_out(entry) for entry in await run_in_threadpool(studio.models.list)]


@router.get("/samplers")
async def samplers(studio: StudioDep) -> list[SamplerOut]:
    return [
        SamplerOut(
            name=s.name,
            display_name=s.display_name,
            aliases=list(s.aliases),
            max_steps=s.max_steps,
        )
        for s in studio.samplers.list()
    ]


# -- projects --------------------------------------------------------------------------------


def installed_out(files: list[InstalledFile]) -> list[InstalledFileOut]:
    return [InstalledFileOut.model_validate(f, from_attributes=True) for f in files]


@router.get("/loras")
def loras(studio: StudioDep) -> list[InstalledFileOut]:
    """LoRAs in the LoRA folder; a prompt uses one as `<lora:name:weight>`."""
    return installed_out(studio.assets.loras())


@router.get("/embeddings")
def embeddings(studio: StudioDep) -> list[InstalledFileOut]:
    """Textual-inversion embeddings; a prompt uses one by writing its name."""
    return installed_out(studio.assets.embeddings())


@router.get("/vaes")
def vaes(studio: StudioDep) -> list[InstalledFileOut]:
    """VAE files; a request or project chooses one by name in `vae`."""
    return installed_out(studio.assets.vaes())


@router.get("/projects")
async def list_projects(studio: StudioDep) -> list[ProjectOut]:
    return await run_in_threadpool(studio.projects.list)


@router.post("/projects", status_code=status.HTTP_201_CREATED, responses=BODY | errors(409, 503))
def create_project(data: ProjectCreate, studio: StudioDep, response: Response) -> ProjectOut:
    project = studio.projects.create(data)
    response.headers["Location"] = f"/api/v1/projects/{project.id}"
    return project


@router.get("/projects/{project_id}", responses=errors(404))
async def read_project(project: ProjectDep) -> ProjectOut:
    return project


@router.patch("/projects/{project_id}", responses=BODY | errors(404, 409, 503))
def update_project(project: ProjectDep, data: ProjectUpdate, studio: StudioDep) -> ProjectOut:
    return studio.projects.update(project.id, data)


@router.delete(
    "/projects/{project_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=UNSAFE | errors(404, 409, 503),
)
def delete_project(
    project: ProjectDep, studio: StudioDep, confirm: Annotated[bool, Query()] = False
) -> Response:
    """Delete a project; one holding images needs `?confirm=true` (409 otherwise)."""
    studio.projects.delete(project.id, confirm)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/projects/{project_id}/estimate", responses=errors(404))
def estimate(
    project: ProjectDep,
    studio: StudioDep,
    model: Annotated[str | None, Query(max_length=255)] = None,
    width: Annotated[Size | None, Query()] = None,
    height: Annotated[Size | None, Query()] = None,
    steps: Annotated[Steps | None, Query()] = None,
    batch: Annotated[int, Query(ge=1, le=8)] = 1,
    device: Annotated[str | None, Query(max_length=32)] = None,
) -> EstimateOut:
    """Seconds a generation would take on the project's hardware (or `device`)."""
    spec, dtype = studio.hardware.check(device or project.device, None if device else project.dtype)
    result = studio.generations.estimate(
        spec.id,
        dtype,
        model or project.default_model,
        width or project.defaults.width,
        height or project.defaults.height,
        steps or project.defaults.steps,
        batch,
    )
    return EstimateOut(seconds=result.seconds, basis=result.basis)


# -- generations -----------------------------------------------------------------------------


@router.post(
    "/projects/{project_id}/generations",
    status_code=status.HTTP_202_ACCEPTED,
    responses=BODY | errors(404, 503) | QUEUE_FULL,
)
async def create_generation(
    project_id: Id, request: GenerationCreate, studio: StudioDep, response: Response
) -> GenerationAccepted:
    """Queue a generation. The row exists before this answers; follow `events_url` (SSE)."""
    accepted = await run_in_threadpool(studio.generations.submit, project_id, request, "api")
    response.headers["Location"] = accepted.url
    return accepted


@router.get("/projects/{project_id}/generations", responses=errors(404))
async def list_generations(
    project_id: Id,
    studio: StudioDep,
    offset: Offset = 0,
    limit: Limit = 20,
    status_: Annotated[str | None, Query(alias="status", pattern=STATUS_PATTERN)] = None,
) -> Page[GenerationOut]:
    page = studio.generations.page
    items, total = await run_in_threadpool(page, project_id, offset, limit, status_)
    return Page[GenerationOut].model_validate(page_of(items, total, offset, limit))


@router.get("/generations/{generation_id}", responses=errors(404))
async def read_generation(generation: GenerationDep) -> GenerationOut:
    return generation


@router.post("/generations/{generation_id}/cancel", responses=UNSAFE | errors(404, 409, 503))
def cancel_generation(generation: GenerationDep, studio: StudioDep) -> GenerationOut:
    """Cancel: a queued job at once; a running one stops at its next step (409 if finished)."""
    return studio.generations.cancel(generation.id)


@router.get(
    "/generations/{generation_id}/filmstrip", response_class=StreamingResponse, responses=FILE
)
def generation_filmstrip(
    generation: GenerationDep, studio: StudioDep, request: Request
) -> Response:
    """The reverse-process filmstrip PNG (404 when the generation kept none)."""
    key = studio.generations.filmstrip_file(generation.id)
    name = f"dali-generation-{generation.id}-filmstrip.png"
    missing = NotFound("filmstrip of generation", generation.id)
    return _immutable_file(studio, request, key, name, missing)


@router.delete(
    "/generations/{generation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=UNSAFE | errors(404, 409, 503),
)
def delete_generation(generation: GenerationDep, studio: StudioDep) -> Response:
    studio.generations.delete(generation.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- images ----------------------------------------------------------------------------------


@router.get("/images")
async def list_all_images(
    studio: StudioDep, offset: Offset = 0, limit: Limit = 24, q: SearchText = None
) -> Page[ImageOut]:
    """The images of every project, newest first; `q`: only those whose prompt contains it
    (ignoring case; `%` and `_` are plain characters)."""
    items, total = await run_in_threadpool(studio.gallery.everywhere, offset, limit, q)
    return Page[ImageOut].model_validate(page_of(items, total, offset, limit))


@router.get("/projects/{project_id}/images", responses=errors(404))
async def list_images(
    project_id: Id, studio: StudioDep, offset: Offset = 0, limit: Limit = 24, q: SearchText = None
) -> Page[ImageOut]:
    """The project's gallery, newest first; `q`: only the images whose prompt contains it
    (ignoring case; `%` and `_` are plain characters)."""
    items, total = await run_in_threadpool(studio.gallery.page, project_id, offset, limit, q)
    return Page[ImageOut].model_validate(page_of(items, total, offset, limit))


@router.get("/images/{image_id}", responses=errors(404))
async def read_image(image: ImageDep) -> ImageOut:
    return image


@router.get("/images/{image_id}/file", response_class=StreamingResponse, responses=FILE)
def image_file(image_id: Id, studio: StudioDep, request: Request) -> Response:
    key = studio.gallery.file(image_id)
    missing = NotFound("image file", image_id)
    return _immutable_file(studio, request, key, f"dali-{image_id}.png", missing)


@router.get("/images/{image_id}/thumbnail", response_class=StreamingResponse, responses=FILE)
def image_thumbnail(image_id: Id, studio: StudioDep, request: Request) -> Response:
    key = studio.gallery.file(image_id, True)
    missing = NotFound("image file", image_id)
    return _immutable_file(studio, request, key, f"dali-{image_id}-thumb.jpg", missing)


@router.delete(
    "/images/{image_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=UNSAFE | errors(404, 503),
)
def delete_image(image: ImageDep, studio: StudioDep) -> Response:
    studio.gallery.delete(image.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/images/{image_id}/upscale",
    status_code=status.HTTP_201_CREATED,
    responses=BODY
    | errors(503)
    | {404: {"model": ErrorOut, "description": "No image with this id"}},
)
def upscale_image(
    image_id: Id, request: UpscaleRequest, studio: StudioDep, response: Response
) -> ImageOut:
    """Upscale an image into a new image of the gallery: the same project and generation,
    `source_image_id` pointing at this one, A1111's `postprocessing` text. 422 names
    `upscaler` (not installed, or a model file that cannot be used) or `scale` (a result
    larger than 8192 pixels a side, or no larger than the image). Runs in the thread pool,
    one upscale at a time."""
    upscaled = studio.upscales.upscale(image_id, request.upscaler, request.scale)
    response.headers["Location"] = f"/api/v1/images/{upscaled.id}"
    return upscaled
