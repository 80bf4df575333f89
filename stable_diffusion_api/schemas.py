"""Pydantic request and response bodies.

Constraints live on the fields, so a bad value is a 422 whose `loc` names the field. Checks that
need the outside world (is this model installed? this device present?) happen in the services
and raise `InvalidField`, which answers in the same shape.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from sd_core.params import (
    MAX_BATCH,
    MAX_CLIP_SKIP,
    MAX_GUIDANCE,
    MAX_HIRES_SCALE,
    MAX_INPAINT_PADDING,
    MAX_MASK_BLUR,
    MAX_SEED,
    MAX_SIZE,
    MAX_STEPS,
    MIN_SIZE,
    SIZE_MULTIPLE,
)
from sd_core.upscalers import MAX_SCALE as MAX_UPSCALE
from stable_diffusion_api.errors import UNPAIRED_SURROGATE
from stable_diffusion_api.models import FailureKind

# The generation limits are the engine's (sd_core.params, documented there); only the prompt's
# length and the upload size are the service's own.
MAX_PROMPT = 2000
# base64 of a 2048×2048 RGBA PNG with no compression, rounded up.
MAX_UPLOAD_CHARS = 24_000_000
# The image page's "Variations": how many, and how far from the image by default.
VARIATIONS = 4
DEFAULT_VARIATION_STRENGTH = 0.3


def _no_control_characters(value: str) -> str:
    # NUL cannot be stored in PostgreSQL text; other controls are never meant in these fields.
    if any(ord(c) < 32 and c not in "\t\n\r" for c in value):
        raise ValueError("control characters are not allowed")
    # JSON can spell a lone UTF-16 surrogate, which is not text any database can store.
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise ValueError(UNPAIRED_SURROGATE)
    return value


def _not_a_boolean(value: Any) -> Any:
    # Python counts True as 1: `"steps": true` must not quietly mean one step.
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


def _name(value: str) -> str:
    value = " ".join(value.split())
    if not value:
        raise ValueError("must not be blank")
    return value


def _prompt(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


CleanText = Annotated[str, AfterValidator(_no_control_characters)]
Name = Annotated[CleanText, Field(min_length=1, max_length=100), AfterValidator(_name)]
Prompt = Annotated[CleanText, Field(min_length=1, max_length=MAX_PROMPT), AfterValidator(_prompt)]
NegativePrompt = Annotated[CleanText, Field(max_length=MAX_PROMPT)]
Number = BeforeValidator(_not_a_boolean)
Steps = Annotated[int, Field(ge=1, le=MAX_STEPS), Number]
Guidance = Annotated[float, Field(ge=0, le=MAX_GUIDANCE, allow_inf_nan=False), Number]
Size = Annotated[int, Field(ge=MIN_SIZE, le=MAX_SIZE, multiple_of=SIZE_MULTIPLE), Number]
Seed = Annotated[int, Field(ge=-1, le=MAX_SEED, description="-1 or null → random"), Number]
Strength = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False), Number]
ClipSkip = Annotated[
    int, Field(ge=1, le=MAX_CLIP_SKIP, description="A1111's Clip skip: 1 = the last layer"), Number
]
Identifier = Annotated[CleanText, Field(min_length=1, max_length=255)]
VaeName = Annotated[
    Identifier,
    Field(description="a VAE file's name in the VAE folder (GET /api/v1/vaes); 'None' → the "
          "checkpoint's own"),
]  # fmt: skip
Upload = Annotated[str, Field(max_length=MAX_UPLOAD_CHARS)]
# A row's id: 64-bit in the database, so a larger number is a 422, never an overflow.
RowId = Annotated[int, Field(ge=1, le=2**62), Number]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerationDefaults(Strict):
    """A project's default generation settings (what the generate page starts with)."""

    negative_prompt: NegativePrompt = ""
    sampler: Identifier | None = None  # None → the model's default sampler
    steps: Steps = 20
    guidance: Guidance = 7.0
    width: Size | None = None  # None → the model's native size
    height: Size | None = None
    clip_skip: ClipSkip = 1
    vae: VaeName | None = None  # None → the checkpoint's own VAE


class ProjectCreate(Strict):
    name: Name
    description: Annotated[CleanText, Field(max_length=2000)] = ""
    device: Identifier = "cpu"
    dtype: Identifier | None = None  # None → the device's default dtype
    low_memory: StrictBool = False
    default_model: Identifier | None = None  # None → the built-in model
    defaults: GenerationDefaults = Field(default_factory=GenerationDefaults)


class ProjectUpdate(Strict):
    """Only the fields sent change (PATCH)."""

    name: Name | None = None
    description: Annotated[CleanText, Field(max_length=2000)] | None = None
    device: Identifier | None = None
    dtype: Identifier | None = None
    low_memory: StrictBool | None = None
    default_model: Identifier | None = None
    defaults: GenerationDefaults | None = None


HIRES_UPSCALER_HELP = (
    "Latent, Latent (antialiased), Latent (bicubic), Latent (bicubic antialiased), Latent "
    "(nearest), Latent (nearest-exact), None, Lanczos, Nearest"
)
ETA_HELP = (
    "A1111's Eta: the share of each step's noise drawn fresh; null → the sampler's own (DDIM "
    "0, Euler a 1); DDIM, Euler a, DPM2 a and DPM++ 2S a take 0 … 1"
)
HIRES_SCHEDULER_HELP = (
    "the hires pass's schedule type: automatic (its sampler's own), karras, exponential, "
    "sgm_uniform; null → the first pass's"
)
INPAINT_FILL_HELP = "masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing"
Margin = Annotated[int, Field(ge=0, le=MAX_SIZE), Number]


class OutpaintMargins(Strict):
    """Pixels to add on each side of the init image (sd_core/outpaint.py); each margin may grow
    a little so the new size is a multiple of 8. `overlap`: pixels of the image beside a
    margin that are repainted too, hiding the seam."""

    left: Margin = 0
    right: Margin = 0
    top: Margin = 0
    bottom: Margin = 0
    overlap: Annotated[int, Field(ge=0, le=64), Number] = 8


class GenerationCreate(Strict):
    """One generation request. Fields left out take the project's defaults."""

    prompt: Prompt
    negative_prompt: NegativePrompt | None = None
    sampler: Identifier | None = None
    # The σ schedule type (karras, exponential, sgm_uniform or A1111's label); None: the
    # sampler's own ("Automatic").
    scheduler: Identifier | None = None
    steps: Steps | None = None
    guidance: Guidance | None = None
    seed: Seed | None = None
    width: Size | None = None
    height: Size | None = None
    batch: Annotated[int, Field(ge=1, le=MAX_BATCH), Number] = 1
    model: Identifier | None = None
    init_image: Upload | None = Field(default=None, description="base64 PNG/JPEG (img2img)")
    init_image_id: RowId | None = Field(
        default=None, description="a gallery image's id as the init image, instead of init_image"
    )
    strength: Strength = 0.75
    mask: Upload | None = Field(default=None, description="base64; white = repaint (inpainting)")
    device: Identifier | None = None  # None → the project's hardware
    dtype: Identifier | None = None
    # AUTOMATIC1111's variation seeds: the initial noise is blended towards this seed's noise.
    variation_seed: Seed | None = Field(default=None, description="-1 or null → random")
    variation_strength: Strength = 0.0
    clip_skip: ClipSkip | None = None  # None → the project's default
    vae: VaeName | None = None  # None → the project's default; "None" → the checkpoint's own
    tiling: StrictBool = Field(default=False, description="a seamless texture (A1111's Tiling)")
    eta: Strength | None = Field(default=None, description=ETA_HELP)
    # Inpainting as AUTOMATIC1111 (sd_core/inpaint.py); only with a mask. The defaults keep
    # the mask's hard edge and the original under it; A1111's API defaults differ.
    mask_blur: Annotated[
        int, Field(ge=0, le=MAX_MASK_BLUR, description="feather, pixels"), Number
    ] = 0
    inpainting_mask_invert: StrictBool = Field(default=False, description="repaint the black area")
    inpainting_fill: Annotated[int, Field(ge=0, le=3, description=INPAINT_FILL_HELP), Number] = 1
    inpaint_full_res: StrictBool = Field(
        default=False, description="inpaint a crop around the mask"
    )
    inpaint_full_res_padding: Annotated[int, Field(ge=0, le=MAX_INPAINT_PADDING), Number] = 0
    # Outpainting: the init image grown by these margins and the margins inpainted (no mask;
    # width and height become the new size; masked content "fill" unless sent).
    outpaint: OutpaintMargins | None = None
    # The hires fix (txt2img only; sd_core/hires.py): upscale, then a second img2img pass.
    hires: StrictBool = Field(default=False, description="A1111's hires fix (enable_hr)")
    hires_scale: Annotated[float, Field(ge=1, le=MAX_HIRES_SCALE), Number] = 2.0
    hires_width: Size | None = Field(default=None, description="instead of hires_scale")
    hires_height: Size | None = None
    hires_upscaler: Identifier = Field(default="Latent", description=HIRES_UPSCALER_HELP)
    hires_steps: Annotated[int, Field(ge=0, le=MAX_STEPS), Number] = 0  # 0: as the first pass
    hires_strength: Strength = 0.7
    hires_sampler: Identifier | None = None  # None: the first pass's sampler
    hires_scheduler: Identifier | None = Field(default=None, description=HIRES_SCHEDULER_HELP)
    hires_guidance: Guidance | None = None  # None: the first pass's CFG scale
    hires_prompt: Annotated[CleanText, Field(max_length=MAX_PROMPT)] | None = None
    hires_negative_prompt: Annotated[CleanText, Field(max_length=MAX_PROMPT)] | None = None
    styles: list[Identifier] = Field(
        default_factory=list,
        max_length=20,
        description="prompt styles (GET /sdapi/v1/prompt-styles) applied in order before the "
        "params are made, so the stored prompt is the expanded one",
    )


class BenchmarkRequest(Strict):
    device: Identifier = "cpu"
    dtype: Identifier | None = None
    model: Identifier | None = None
    width: Size | None = None
    height: Size | None = None
    steps: Annotated[int, Field(ge=2, le=50), Number] = 8


class AutotuneRequest(Strict):
    device: Identifier = "cpu"
    model: Identifier | None = None
    # Each candidate makes (1 + its repeats) images of this many steps: keep it short.
    steps: Annotated[int, Field(ge=2, le=50), Number] = 4


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class SpeedOut(Out):
    device: str
    model_hash: str
    dtype: str
    width: int
    height: int
    steps_per_s: float
    overhead_s: float
    source: str
    measured_at: dt.datetime


class DeviceOut(Out):
    id: str  # "node/device": "gpu-b/cuda:0"
    node: str  # the node that has it ("gpu-b")
    device: str  # its id on that node ("cuda:0")
    kind: str
    name: str
    total_memory: int | None
    free_memory: int | None
    cores: int | None
    compute_capability: str | None
    dtypes: list[str]
    default_dtype: str
    speeds: list[SpeedOut] = []


class SamplerOut(Out):
    name: str
    display_name: str
    aliases: list[str]
    max_steps: int  # the most steps it takes (LCM: 50)


class ModelOut(Out):
    name: str
    filename: str
    label: str
    builtin: bool
    available: bool
    size_bytes: int | None
    variant: str | None
    dtype: str | None
    sha256: str | None
    short_hash: str | None
    parameters: dict[str, int]
    native_size: int | None
    error: str | None


class ProjectOut(Out):
    id: int
    name: str
    description: str
    device: str
    dtype: str | None
    low_memory: bool
    default_model: str | None
    defaults: GenerationDefaults
    created_at: dt.datetime
    updated_at: dt.datetime
    image_count: int = 0
    cover_image_id: int | None = None


class ImageOut(Out):
    id: int
    generation_id: int
    project_id: int
    index: int
    seed: int
    width: int
    height: int
    parameters: str
    created_at: dt.datetime
    url: str
    thumbnail_url: str
    # An upscale (POST /api/v1/images/{id}/upscale): the image it was made from (None once that
    # is deleted) and A1111's postprocessing text; both None for a generated image.
    source_image_id: int | None = None
    postprocessing: str | None = None


class VariationRequest(Strict):
    """Variations of a gallery image: its settings and seed, the noise blended towards
    `VARIATIONS` consecutive variation seeds (the image page's "Variations" form)."""

    variation_seed: Seed | None = Field(default=None, description="the first; -1 or null → random")
    # Field before Number, so the OpenAPI schema says exclusiveMinimum (not gt).
    variation_strength: Annotated[
        float,
        Field(gt=0, le=1, allow_inf_nan=False, description="0 would give the image itself"),
        Number,
    ] = DEFAULT_VARIATION_STRENGTH


class UpscaleRequest(Strict):
    """An upscale of a gallery image into a new one (`POST /api/v1/images/{id}/upscale`)."""

    upscaler: Identifier = Field(
        description="Lanczos, Nearest, or a model file's name in data/upscalers/ (the names "
        "/sdapi/v1/upscalers lists, but None)"
    )
    # Field before Number, so the OpenAPI schema says exclusiveMinimum/maximum (not gt/le).
    scale: Annotated[
        float,
        Field(gt=1, le=MAX_UPSCALE, allow_inf_nan=False, description="the factor per side"),
        Number,
    ] = 2.0


class ErrorOut(BaseModel):
    """The body of an error other than a 422: what went wrong, in words."""

    detail: str


class ProgressOut(BaseModel):
    step: int
    total: int
    eta_s: float | None
    step_seconds: float | None
    preview: str | None = None  # data: URL of a small PNG


class FilmstripFrameOut(BaseModel):
    step: int  # after this many of `total` sampler steps
    total: int
    sigma: float | None  # noise level left in the noisy latent; None when unknown
    snr: float | None  # 1/σ²; None when σ is unknown or 0 (no noise left: infinite)


class FilmstripOut(BaseModel):
    """The reverse process of image 0, kept from the run: a PNG of two rows (the noisy latent
    x_t decoded on top, the predicted x0 below) and one column per frame, left to right."""

    url: str
    width: int
    height: int
    frames: list[FilmstripFrameOut]
    # "vae": decoded by the model's VAE; "approximate": a cheap linear latent → RGB preview at
    # latent size, used on the CPU when decoding every frame would cost more than the image did
    decoder: str = "vae"


class GenerationTimings(BaseModel):
    """Where a run's time went, in seconds, measured by the worker. What the service adds to
    the engine's own work is everything but `engine_s`: `reporting_s` + `saving_s` + the
    database writes and hand-offs around them (`finished_at − started_at` is the whole run)."""

    engine_s: float  # inside the engine: text encoding, sampling, decoding (and loading the
    # model, when it was not cached; and the filmstrip's frames, when one is kept)
    reporting_s: float  # the step callbacks the engine waited for: progress, previews, cancel
    saving_s: float  # writing the PNGs, thumbnails and filmstrip


class GenerationOut(Out):
    id: int
    project_id: int
    status: str
    position: int | None  # jobs ahead of this one on its device; None once it has started
    # A queued job that no live node can run now, and why ("no live node has model X");
    # None when one can (or once it has started).
    waiting_reason: str | None = None
    source: str
    device: str
    node: str | None = None  # the node that claimed it (services/nodes.py)
    dtype: str | None
    low_memory: bool
    model: str
    model_hash: str | None
    prompt: str
    negative_prompt: str
    sampler: str | None
    scheduler: str | None = None  # the schedule type; None: the sampler's own
    steps: int
    guidance: float
    seed: int
    width: int | None
    height: int | None
    batch: int
    strength: float
    variation_seed: int | None = None
    variation_strength: float = 0.0
    clip_skip: int = 1
    vae: str | None = None  # None: the checkpoint's own
    tiling: bool = False
    eta: float | None = None  # None: the sampler's own
    mask_blur: int = 0
    inpainting_mask_invert: bool = False
    inpainting_fill: int = 1
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 0
    hires: bool = False
    hires_scale: float = 2.0
    hires_width: int | None = None
    hires_height: int | None = None
    hires_upscaler: str = "Latent"
    hires_steps: int = 0
    hires_strength: float = 0.7
    hires_sampler: str | None = None
    hires_scheduler: str | None = None
    hires_guidance: float | None = None
    hires_prompt: str | None = None
    hires_negative_prompt: str | None = None
    has_init_image: bool
    has_mask: bool
    error: str | None
    # Why a failed or canceled job ended (None otherwise): invalid_input, out_of_memory,
    # interrupted, cancelled, internal.
    failure_kind: FailureKind | None = None
    # How the engine read the input, where the user should know (a removed LoRA tag, …).
    warnings: list[str] = []
    step_seconds: float | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    images: list[ImageOut]
    progress: ProgressOut | None = None
    filmstrip: FilmstripOut | None = None  # None: none kept (older row, turned off, not done)
    timings: GenerationTimings | None = None  # None: it did not run to the end


class GenerationAccepted(BaseModel):
    id: int
    status: str
    position: int
    url: str
    events_url: str
    # What the user should know before it runs: a prompt the built-in model was never taught.
    warnings: list[str] = []


class BenchmarkOut(Out):
    device: str
    dtype: str | None
    model: str
    width: int | None
    height: int | None
    steps: int
    status: str  # queued, running, done, failed
    error: str | None
    kind: str = "speed"  # "speed" or "autotune"
    result: dict[str, Any] | None = None  # an autotune's figures (as GET /hardware/autotune)


class FastPathOut(BaseModel):
    """One candidate of an autotune: a fast path and what it measured."""

    label: str  # "compile + fused QKV, float16"
    mode: str  # eager, channels_last, compile, cuda_graphs
    dtype: str
    fused_qkv: bool
    status: str  # ok, outside tolerance, failed
    seconds: float | None  # median seconds per image
    first_s: float | None  # the first image (compilation included)
    error: float | None  # mean |pixel difference| from float32 eager, levels of 255
    note: str


class AutotuneOut(BaseModel):
    """A device's last autotune: every candidate and, per dtype, the label of the one kept."""

    device: str
    device_name: str
    results: list[FastPathOut]
    chosen: dict[str, str]
    skipped: dict[str, str]  # mode → why it cannot run on this device


class EstimateOut(BaseModel):
    seconds: float | None  # None: nothing measured yet for this device
    basis: str  # what the estimate rests on, in words


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    offset: int
    limit: int


def page_of(items: list[Any], total: int, offset: int, limit: int) -> dict[str, Any]:
    return {"items": items, "total": total, "offset": offset, "limit": limit}


class InstalledFileOut(BaseModel):
    """A LoRA, embedding or VAE file: the name prompts and requests use, its path in its
    folder, its size in bytes."""

    name: str
    path: str
    size: int
