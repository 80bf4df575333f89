"""AUTOMATIC1111's request and response bodies, as its API clients send and expect them.

Requests follow A1111's `StableDiffusionTxt2ImgProcessingAPI` / `…Img2ImgProcessingAPI`: every
field may be left out or sent as null (null means "the default"). Each of A1111's own fields is
declared here, and `fields.py` says for each whether Dali honours it, whether it is meaningless
here, or which values only it takes (another is a 422 naming it); fields of extensions and
unknown ones are ignored. A field left out takes the project's default (steps, CFG scale, size,
sampler, negative prompt), the way A1111 falls back to its UI settings.

The limits are Dali's engine limits, so a bad value is a 422 naming the A1111 field:
steps 1–150, cfg_scale 0–30, width/height multiples of 8 in 64–2048, seeds -1 … 2³²−1.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from stable_diffusion_api.schemas import (
    MAX_HIRES_SCALE,
    MAX_PROMPT,
    MAX_SEED,
    MAX_SIZE,
    MAX_STEPS,
    MAX_UPLOAD_CHARS,
    CleanText,
    Guidance,
    Number,
    Seed,
    Size,
    Steps,
    Strength,
)

# A1111 has no limits here; these keep one request from filling the queue (n_iter jobs of
# batch_size images, split into jobs of at most the service's batch limit).
MAX_BATCH_SIZE = 64
MAX_ITERATIONS = 100
MAX_INIT_IMAGES = 1

Text = Annotated[CleanText, Field(max_length=MAX_PROMPT)]
Name = Annotated[CleanText, Field(max_length=255)]


class A1111Request(BaseModel):
    """Fields shared by txt2img and img2img."""

    model_config = ConfigDict(extra="ignore")

    prompt: Text = ""
    negative_prompt: Text | None = None
    styles: list[str] = Field(default_factory=list)
    seed: Seed = -1
    subseed: Annotated[int, Field(ge=-1, le=MAX_SEED), Number] = -1
    subseed_strength: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False), Number] = 0.0
    seed_resize_from_h: Annotated[int, Number] = -1
    seed_resize_from_w: Annotated[int, Number] = -1
    sampler_name: Name | None = None
    sampler_index: Name | None = None  # A1111's older name for sampler_name
    scheduler: Name | None = None  # "automatic", "karras", … (A1111 ≥ 1.9)
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE), Number] = 1
    n_iter: Annotated[int, Field(ge=1, le=MAX_ITERATIONS), Number] = 1
    steps: Steps | None = None
    cfg_scale: Guidance | None = None
    width: Size | None = None
    height: Size | None = None
    denoising_strength: Strength | None = None
    restore_faces: StrictBool | None = None
    tiling: StrictBool | None = None
    do_not_save_samples: StrictBool = False
    do_not_save_grid: StrictBool = False
    eta: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False), Number] | None = None
    s_min_uncond: Annotated[float, Number] = 0.0
    s_churn: Annotated[float, Number] = 0.0
    s_tmax: Annotated[float, Number] | None = None
    s_tmin: Annotated[float, Number] = 0.0
    s_noise: Annotated[float, Number] = 1.0
    refiner_checkpoint: Name | None = None
    refiner_switch_at: Annotated[float, Number] | None = None
    disable_extra_networks: StrictBool = False
    comments: dict[str, Any] | None = None
    override_settings: dict[str, Any] = Field(default_factory=dict)
    override_settings_restore_afterwards: StrictBool = True
    script_name: Name | None = None
    script_args: list[Any] = Field(default_factory=list)
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    send_images: StrictBool = True
    save_images: StrictBool = False
    force_task_id: Name | None = None
    infotext: Annotated[CleanText, Field(max_length=MAX_PROMPT * 3)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        # A1111's fields are all Optional and clients send null for "use the default".
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class Txt2ImgRequest(A1111Request):
    # The hires fix (a1111/hires.py). hr_checkpoint_name: only the first pass's model (a
    # second checkpoint is a 422); hr_scheduler: "Use same scheduler" or none → the first pass's.
    enable_hr: StrictBool = False
    hr_scale: Annotated[float, Field(ge=1, le=MAX_HIRES_SCALE, allow_inf_nan=False), Number] = 2.0
    hr_upscaler: Name | None = None  # None: "Latent"
    hr_second_pass_steps: Annotated[int, Field(ge=0, le=MAX_STEPS), Number] = 0
    hr_resize_x: Annotated[int, Field(ge=0, le=MAX_SIZE), Number] = 0
    hr_resize_y: Annotated[int, Field(ge=0, le=MAX_SIZE), Number] = 0
    hr_sampler_name: Name | None = None
    hr_scheduler: Name | None = None
    hr_cfg: Guidance | None = None  # None: the first pass's cfg_scale
    hr_checkpoint_name: Name | None = None
    hr_prompt: Text = ""
    hr_negative_prompt: Text = ""
    firstphase_width: Annotated[int, Number] = 0
    firstphase_height: Annotated[int, Number] = 0
    firstpass_image: Annotated[str, Field(max_length=MAX_UPLOAD_CHARS)] | None = None


class Img2ImgRequest(A1111Request):
    init_images: (
        Annotated[list[Annotated[str, Field(max_length=MAX_UPLOAD_CHARS)]], Field(min_length=1)]
        | None
    ) = None
    resize_mode: Annotated[int, Field(ge=0, le=3), Number] = 0
    mask: Annotated[str, Field(max_length=MAX_UPLOAD_CHARS)] | None = None
    mask_blur: Annotated[int, Field(ge=0, le=64), Number] | None = None
    mask_blur_x: Annotated[int, Field(ge=0, le=64), Number] | None = None
    mask_blur_y: Annotated[int, Field(ge=0, le=64), Number] | None = None
    mask_round: StrictBool = True
    image_cfg_scale: Annotated[float, Number] | None = None
    initial_noise_multiplier: Annotated[float, Number] = 1.0
    latent_mask: Annotated[str, Field(max_length=MAX_UPLOAD_CHARS)] | None = None
    inpainting_fill: Annotated[int, Field(ge=0, le=3), Number] = 0
    inpaint_full_res: StrictBool | int = True
    inpaint_full_res_padding: Annotated[int, Number] = 0
    inpainting_mask_invert: Annotated[int, Field(ge=0, le=1), Number] = 0
    include_init_images: StrictBool = False


class GenerationResponse(BaseModel):
    """`TextToImageResponse` / `ImageToImageResponse`: base64 PNGs, the request, info JSON."""

    images: list[str] | None
    parameters: dict[str, Any]
    info: str


class PngInfoRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image: Annotated[str, Field(max_length=MAX_UPLOAD_CHARS)]


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: dict[str, Any]
    current_image: str | None = None
    textinfo: str | None = None


class TaskProgressRequest(BaseModel):
    """`POST /internal/progress`: the progress of one task named by `force_task_id`."""

    model_config = ConfigDict(extra="ignore")

    id_task: Name | None = None
    id_live_preview: Annotated[int, Number] = -1
    live_preview: StrictBool = True


class TaskProgressResponse(BaseModel):
    active: bool
    queued: bool
    completed: bool
    progress: float | None = None
    eta: float | None = None
    live_preview: str | None = None
    id_live_preview: int | None = None
    textinfo: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class SDModelItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None = None


class ScriptsList(BaseModel):
    txt2img: list[str]
    img2img: list[str]


class LoraItem(BaseModel):
    """`GET /loras`: one LoRA file, as A1111's Lora extension lists it."""

    name: str
    alias: str
    path: str  # absolute, as A1111 answers
    metadata: dict[str, Any]


class EmbeddingItem(BaseModel):
    """One textual-inversion embedding of `GET /embeddings`: `shape` is the vector width,
    `vectors` how many vectors (prompt tokens) it takes; None when the file cannot be read."""

    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int | None = None
    vectors: int | None = None


class EmbeddingsResponse(BaseModel):
    """`loaded`: usable with the current model; `skipped`: not (another width, or unreadable)."""

    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem]


class SDVaeItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str  # the file name, what `sd_vae` takes
    filename: str  # absolute path
