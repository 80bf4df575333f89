"""AUTOMATIC1111's API under /sdapi/v1 (and its /internal/ping), so A1111 clients work unchanged.

Thin routes over `A1111Service` (stable_diffusion_api/a1111/): validate, call one method, answer.
txt2img and img2img answer once their images exist, as in A1111, but the work goes through the
same queue and worker as everything else; they wait on the event loop, holding no thread, and a
client that disconnects has its jobs canceled.

Authentication is the app's, checked in front of every route (`auth.AuthGuard`): with
DALI_API_AUTH (A1111's `--api-auth`) or DALI_API_KEY set, HTTP Basic with a user's password or
the key as the password, or the key in X-API-Key / a Bearer token. `GET /internal/ping` stays
open, as in A1111.

The service is built on first use and kept in `app.state.a1111`; a test may put its own there.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request

from stable_diffusion_api.a1111.extras import (
    ExtrasBatchImagesRequest,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
    NameItem,
    RealesrganItem,
    UpscalerItem,
)
from stable_diffusion_api.a1111.schemas import (
    EmbeddingsResponse,
    GenerationResponse,
    Img2ImgRequest,
    LoraItem,
    PngInfoRequest,
    PngInfoResponse,
    ProgressResponse,
    SamplerItem,
    SchedulerItem,
    ScriptsList,
    SDModelItem,
    SDVaeItem,
    TaskProgressRequest,
    TaskProgressResponse,
    Txt2ImgRequest,
)
from stable_diffusion_api.a1111.service import PROJECT_HEADER, A1111Service
from stable_diffusion_api.a1111.settings import A1111Settings
from stable_diffusion_api.deps import StudioDep
from stable_diffusion_api.routes.responses import (
    ANY,
    BODY,
    GUARDED,
    QUEUE_FULL,
    UNSAFE,
    Message,
    Responses,
    errors,
)

_create_lock = threading.Lock()


def get_a1111(request: Request, studio: StudioDep) -> A1111Service:
    service: A1111Service | None = getattr(request.app.state, "a1111", None)
    if service is None:
        with _create_lock:
            service = getattr(request.app.state, "a1111", None)
            if service is None:
                service = A1111Service(studio, A1111Settings.for_service(studio.settings))
                request.app.state.a1111 = service
    return service


A1111Dep = Annotated[A1111Service, Depends(get_a1111)]
ProjectHeader = Annotated[str | None, Header(alias=PROJECT_HEADER, max_length=100)]


sdapi = APIRouter(
    prefix="/sdapi/v1",
    tags=["AUTOMATIC1111"],
    responses=GUARDED,
)
internal = APIRouter(prefix="/internal", tags=["AUTOMATIC1111"], responses=ANY)
# A generation answers once its images exist: its job may fail on the way, as in A1111.
GENERATED: Responses = (
    BODY
    | QUEUE_FULL
    | {
        500: {"description": "The engine failed (out of memory included, as A1111 answers it)"},
        503: {
            "model": Message,
            "description": "The server stopped while the job ran, or the database cannot be "
            "written",
        },
    }
)
NOT_HERE = UNSAFE | errors(501)


@sdapi.post("/txt2img", responses=GENERATED)
async def txt2img(
    request: Txt2ImgRequest, http: Request, a1111: A1111Dep, project: ProjectHeader = None
) -> GenerationResponse:
    return await a1111.generate(request, project, http.is_disconnected)


@sdapi.post("/img2img", responses=GENERATED)
async def img2img(
    request: Img2ImgRequest, http: Request, a1111: A1111Dep, project: ProjectHeader = None
) -> GenerationResponse:
    return await a1111.generate(request, project, http.is_disconnected)


@sdapi.get("/progress")
def progress(
    a1111: A1111Dep, skip_current_image: Annotated[bool, Query()] = False
) -> ProgressResponse:
    return a1111.tasks.progress(include_image=not skip_current_image)


@sdapi.post("/interrupt", responses=UNSAFE)
def interrupt(a1111: A1111Dep) -> dict[str, Any]:
    a1111.tasks.interrupt()
    return {}


@sdapi.post("/skip", responses=UNSAFE)
def skip(a1111: A1111Dep) -> None:
    a1111.tasks.skip()


@sdapi.get("/samplers")
def samplers(a1111: A1111Dep) -> list[SamplerItem]:
    return a1111.samplers()


@sdapi.get("/schedulers")
def schedulers(a1111: A1111Dep) -> list[SchedulerItem]:
    return a1111.schedulers()


@sdapi.get("/sd-models")
def sd_models(a1111: A1111Dep) -> list[SDModelItem]:
    return a1111.sd_models()


@sdapi.post("/refresh-checkpoints", responses=UNSAFE)
def refresh_checkpoints(a1111: A1111Dep) -> None:
    a1111.sd_models()  # the registry looks at the models folder again on every listing


# LoRAs, embeddings and VAE files: their folders are listed again on every use (and a changed
# file is read again), so the refresh endpoints have nothing to do; they answer 200 with null,
# as A1111 does.


@sdapi.get("/loras")
def loras(a1111: A1111Dep) -> list[LoraItem]:
    return a1111.assets.loras()


@sdapi.post("/refresh-loras", responses=UNSAFE)
def refresh_loras() -> None:
    pass


@sdapi.get("/embeddings")
def embeddings(a1111: A1111Dep, project: ProjectHeader = None) -> EmbeddingsResponse:
    return a1111.embeddings(project)


@sdapi.post("/refresh-embeddings", responses=UNSAFE)
def refresh_embeddings() -> None:
    pass


@sdapi.get("/sd-vae")
def sd_vae(a1111: A1111Dep) -> list[SDVaeItem]:
    return a1111.assets.vaes()


@sdapi.post("/refresh-vae", responses=UNSAFE)
def refresh_vae() -> None:
    pass


# Extras (upscaling): run here in the route's thread, not on the worker (see a1111/extras.py).


@sdapi.get("/upscalers")
def upscalers(a1111: A1111Dep) -> list[UpscalerItem]:
    return a1111.extras.upscalers()


@sdapi.get("/latent-upscale-modes")
def latent_upscale_modes(a1111: A1111Dep) -> list[NameItem]:
    return a1111.extras.latent_upscale_modes()


@sdapi.get("/face-restorers")
def face_restorers() -> list[dict[str, Any]]:
    return []  # none installed: GFPGAN / CodeFormer visibility above 0 is refused


@sdapi.get("/realesrgan-models")
def realesrgan_models(a1111: A1111Dep) -> list[RealesrganItem]:
    return a1111.extras.realesrgan_models()


@sdapi.post("/extra-single-image", responses=BODY)
def extra_single_image(
    request: ExtrasSingleImageRequest, a1111: A1111Dep
) -> ExtrasSingleImageResponse:
    return a1111.extras.single(request)


@sdapi.post("/extra-batch-images", responses=BODY)
def extra_batch_images(
    request: ExtrasBatchImagesRequest, a1111: A1111Dep
) -> ExtrasBatchImagesResponse:
    return a1111.extras.batch(request)


@sdapi.get("/options")
def get_options(a1111: A1111Dep, project: ProjectHeader = None) -> dict[str, Any]:
    return a1111.get_options(project)


@sdapi.post("/options", responses=BODY | errors(503))
def set_options(
    options: Annotated[dict[str, Any], Body()], a1111: A1111Dep, project: ProjectHeader = None
) -> None:
    a1111.set_options(options, project)


@sdapi.post("/png-info", responses=BODY)
def png_info(request: PngInfoRequest, a1111: A1111Dep) -> PngInfoResponse:
    return a1111.png_info(request.image)


@sdapi.get("/memory")
def memory(a1111: A1111Dep) -> dict[str, Any]:
    return a1111.memory()


@sdapi.get("/cmd-flags")
def cmd_flags(a1111: A1111Dep) -> dict[str, Any]:
    return a1111.cmd_flags()


@sdapi.get("/prompt-styles")
def prompt_styles(a1111: A1111Dep) -> list[dict[str, str]]:
    return a1111.prompt_styles()


@sdapi.get("/scripts")
def scripts() -> ScriptsList:
    """No A1111 scripts or extensions exist here (clients probe this for ControlNet & co)."""
    return ScriptsList(txt2img=[], img2img=[])


# The rest of A1111's surface: what Dali has none of answers an empty list; what it cannot do
# answers 501 saying so, never a bare 404.


def _not_here(what: str) -> HTTPException:
    return HTTPException(status_code=501, detail=f"{what} (Dali's A1111 API does not do this)")


@sdapi.get("/hypernetworks")
def hypernetworks() -> list[dict[str, Any]]:
    return []  # no hypernetworks: Dali loads LoRAs and embeddings only


@sdapi.get("/sd-modules")
def sd_modules() -> list[dict[str, Any]]:
    return []  # no separate text-encoder / UNet modules (SDXL-era); SD v1 checkpoints only


@sdapi.get("/script-info")
def script_info() -> list[dict[str, Any]]:
    return []


@sdapi.get("/extensions")
def extensions() -> list[dict[str, Any]]:
    return []


@sdapi.post("/interrogate", responses=NOT_HERE)
def interrogate() -> None:
    raise _not_here("interrogate needs a CLIP interrogator or DeepBooru model; none is installed")


@sdapi.post("/unload-checkpoint", responses=UNSAFE)
def unload_checkpoint() -> None:
    """Models load into the device's worker for the job that needs them and are dropped from
    its cache when memory is wanted (DALI_PIPELINE_CACHE_MB): nothing to unload by hand."""


@sdapi.post("/reload-checkpoint", responses=UNSAFE)
def reload_checkpoint() -> None:
    """The next job loads the current model (the project's) as needed."""


@sdapi.post("/create/embedding", responses=NOT_HERE)
@sdapi.post("/create/hypernetwork", responses=NOT_HERE)
@sdapi.post("/train/embedding", responses=NOT_HERE)
@sdapi.post("/train/hypernetwork", responses=NOT_HERE)
def training() -> None:
    raise _not_here("training embeddings and hypernetworks is not supported")


@sdapi.post("/server-kill", responses=NOT_HERE)
@sdapi.post("/server-restart", responses=NOT_HERE)
@sdapi.post("/server-stop", responses=NOT_HERE)
def server_control() -> None:
    raise _not_here("the server is not stopped or restarted over the API; stop its process")


@internal.get("/ping")
def ping() -> dict[str, Any]:
    return {}


@internal.post("/progress", responses=errors(401) | BODY)
def task_progress(request: TaskProgressRequest, a1111: A1111Dep) -> TaskProgressResponse:
    """A1111's per-task progress, for a task started with `force_task_id`."""
    return a1111.tasks.task_progress(request.id_task, request.live_preview, request.id_live_preview)


router = APIRouter()
router.include_router(sdapi)
router.include_router(internal)
