"""`GenerationParams`: every setting of one generation, the one type every layer speaks.

The REST schema, the database row, the A1111 translation, the Gradio UI and the command line
each map their own spelling to and from this dataclass; the engine takes it
(`StableDiffusionPipeline.generate(params, …)`) and hands it back resolved in its
`GenerationResult`, from which the PNG metadata is written. The limits below are the only ones:
front ends may be stricter only where they document why.

Limits (checked by `GenerationParams.check`):

- prompt, negative_prompt: text (the engine reads at most 75 tokens of each today).
- seed: 0 … 2³² − 1, and seed + batch − 1 must stay within it (image i has seed + i); None or
  −1 asks for a random one, drawn by `resolve`.
- steps: 1 … 150 (LCM: 1 … 50, its distillation schedule's timesteps; `resolve` checks);
  guidance (CFG scale): 0 … 30, no CFG at ≤ 1.
- width, height: 64 … 2048, multiples of 8; None → the model's native size.
- batch: 1 … 8 images in one job (front ends split larger requests into several jobs).
- strength: 0 … 1, how much of an init image is repainted (img2img / inpainting only).
- variation_seed: like seed (None → random when variation_strength > 0);
  variation_strength: 0 … 1, the spherical blend towards that seed's noise.
- scheduler: the σ schedule type (`sd_core.schedule_types`: karras, exponential, sgm_uniform;
  A1111's labels accepted), or None for the sampler's own (A1111's "Automatic"); only the
  k-diffusion-style samplers take one (`resolve` checks).
- clip_skip: 1 … 12, AUTOMATIC1111's "Clip skip" (1: the text encoder's last layer; N: the
  output N − 1 layers earlier); at most the model's text-encoder layers (12 for SD v1.x).
- vae: the name of a separate VAE file (its file name, as A1111's `sd_vae`), or None for the
  checkpoint's own; the pipeline checks that it is installed.
- tiling: True for a seamless texture (AUTOMATIC1111's "Tiling"; `sd_core/tiling.py`).
- eta: 0 … 1, the share of each step's noise a stochastic step draws fresh (AUTOMATIC1111's
  "Eta"), or None for the sampler's own (DDIM 0, the ancestral and SDE samplers 1). DDIM and
  the ancestral samplers (Euler a, DPM2 a, DPM++ 2S a) take any; the SDE samplers only 1; the
  others have none (`resolve` checks, for both passes of the hires fix).
- Inpainting (only with a mask; sd_core/inpaint.py says what each does): mask_blur 0 … 64
  pixels (A1111's "Mask blur"; 0 keeps the mask's hard edge); inpainting_mask_invert (repaint
  the black area instead); inpainting_fill 0 fill · 1 original · 2 latent noise · 3 latent
  nothing (A1111's "Masked content"); inpaint_full_res ("Only masked": inpaint a crop around
  the mask at the full size, paste it back) with inpaint_full_res_padding 0 … 256 pixels.
  Every inpainting result keeps the unmasked pixels of the init image exactly.
- hires (AUTOMATIC1111's hires fix, txt2img only; off by default): hires_scale 1 … 4, or
  hires_width / hires_height (64 … 2048, multiples of 8; one alone keeps the aspect ratio, both
  crop to cover) instead; the target size must stay ≤ 2048. hires_upscaler: a latent mode
  ("Latent", "Latent (antialiased)", …) or a pixel upscaler ("Lanczos", "Nearest", "None", or
  a model upscaler the pipeline knows); hires_steps 0 … 150 (0: the first pass's steps);
  hires_strength 0 … 1; hires_sampler, hires_prompt, hires_negative_prompt: None → the first
  pass's; hires_scheduler: None → the first pass's schedule type, "automatic" → the hires
  sampler's own, else a schedule type the hires sampler takes (`resolve` checks);
  hires_guidance: 0 … 30, None → the first pass's CFG scale (see `sd_core/hires.py`).

LoRAs and textual-inversion embeddings are not fields: the prompt names them (`<lora:name:w>`,
an embedding's file name), as in AUTOMATIC1111.

How to add a parameter: see docs/architecture.md ("Adding a generation parameter").
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from sd_core.schedule_types import schedule_type

MIN_SIZE, MAX_SIZE, SIZE_MULTIPLE = 64, 2048, 8
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_BATCH = 8
MAX_SEED = 2**32 - 1
MAX_CLIP_SKIP = 12
MAX_HIRES_SCALE = 4.0
# hires_scheduler's value for the hires sampler's own σ's (A1111's "Automatic"), as opposed to
# None, the first pass's schedule type.
HIRES_AUTOMATIC = "automatic"
# A field whose metadata names an infotext key is written to AUTOMATIC1111's infotext under
# that key whenever it differs from its default (`infotext_extras`).
INFOTEXT_KEY = "infotext"
# A field may also name the words its values are written as ({True: "Only masked"}).
INFOTEXT_VALUES = "infotext_values"
MAX_MASK_BLUR = 64
MAX_INPAINT_PADDING = 256
INPAINT_FILLS = {0: "fill", 1: "original", 2: "latent noise", 3: "latent nothing"}


class InvalidParam(ValueError):
    """A generation parameter outside its limits; the message names the field, the value and
    what is allowed, and `field` / `value` say which for front ends that point at the field."""

    def __init__(self, field: str, value: Any, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


def _int(name: str, value: Any, low: int, high: int, extra: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParam(
            name, value, f"{name} must be an integer from {low} to {high}{extra}, got {value!r}"
        )
    if not low <= value <= high:
        raise InvalidParam(name, value, f"{name} must be from {low} to {high}{extra}, got {value}")
    return value


def _float(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParam(
            name, value, f"{name} must be a number from {low:g} to {high:g}, got {value!r}"
        )
    number = float(value)
    if not (math.isfinite(number) and low <= number <= high):
        raise InvalidParam(name, value, f"{name} must be from {low:g} to {high:g}, got {value}")
    return number


def _size(name: str, value: Any) -> int:
    size = _int(name, value, MIN_SIZE, MAX_SIZE, f" and a multiple of {SIZE_MULTIPLE}")
    if size % SIZE_MULTIPLE:
        raise InvalidParam(
            name,
            value,
            f"{name} must be a multiple of {SIZE_MULTIPLE} from {MIN_SIZE} to {MAX_SIZE}, got {size}",
        )
    return size


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidParam(name, value, f"{name} must be a string, got {type(value).__name__}")
    return value


_FILLS = " (0 fill, 1 original, 2 latent noise, 3 latent nothing)"


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidParam(name, value, f"{name} must be true or false, got {value!r}")
    return value


def _hires_schedule(value: Any) -> str:
    """hires_scheduler's canonical value: HIRES_AUTOMATIC for A1111's "Automatic", else a
    schedule type's canonical name. InvalidParam for anything else."""
    if not isinstance(value, str):
        raise InvalidParam("hires_scheduler", value, "hires_scheduler must be a string")
    try:
        kind = schedule_type(value)
    except ValueError as error:
        raise InvalidParam("hires_scheduler", value, f"hires_scheduler: {error}") from None
    return HIRES_AUTOMATIC if kind is None else kind


def random_seed(batch: int = 1) -> int:
    """A random seed that leaves room for `batch` consecutive seeds."""
    return secrets.randbelow(MAX_SEED - batch + 2)


@dataclass(frozen=True)
class GenerationParams:
    """The settings of one generation (a job of `batch` images; image i has seed + i).

    None means "not chosen": a random seed, the model's default sampler, its native size.
    `resolve` fills those in; `check` validates everything and names the field at fault.
    """

    prompt: str
    negative_prompt: str = ""
    seed: int | None = None
    steps: int = 20
    sampler: str | None = None
    scheduler: str | None = None
    guidance: float = 7.0
    width: int | None = None
    height: int | None = None
    batch: int = 1
    strength: float = 0.75
    variation_seed: int | None = field(default=None, metadata={INFOTEXT_KEY: "Variation seed"})
    variation_strength: float = field(
        default=0.0, metadata={INFOTEXT_KEY: "Variation seed strength"}
    )
    clip_skip: int = field(default=1, metadata={INFOTEXT_KEY: "Clip skip"})
    vae: str | None = field(default=None, metadata={INFOTEXT_KEY: "VAE"})
    tiling: bool = field(default=False, metadata={INFOTEXT_KEY: "Tiling"})
    eta: float | None = None  # None: the sampler's own (its infotext key: `result.eta_infotext`)
    mask_blur: int = field(default=0, metadata={INFOTEXT_KEY: "Mask blur"})
    inpainting_mask_invert: bool = field(
        default=False,
        metadata={INFOTEXT_KEY: "Mask mode", INFOTEXT_VALUES: {True: "Inpaint not masked"}},
    )
    inpainting_fill: int = field(
        default=1, metadata={INFOTEXT_KEY: "Masked content", INFOTEXT_VALUES: INPAINT_FILLS}
    )
    inpaint_full_res: bool = field(
        default=False,
        metadata={INFOTEXT_KEY: "Inpaint area", INFOTEXT_VALUES: {True: "Only masked"}},
    )
    inpaint_full_res_padding: int = field(default=0, metadata={INFOTEXT_KEY: "Masked area padding"})
    # The hires fix (sd_core/hires.py writes its infotext keys, only when it is on).
    hires: bool = False
    hires_scale: float = 2.0
    hires_width: int | None = None
    hires_height: int | None = None
    hires_upscaler: str = "Latent"
    hires_steps: int = 0
    hires_strength: float = 0.7
    hires_sampler: str | None = None
    hires_prompt: str | None = None
    hires_negative_prompt: str | None = None
    hires_scheduler: str | None = None  # None: the first pass's; HIRES_AUTOMATIC: the sampler's
    hires_guidance: float | None = None  # None: the first pass's

    def check(self) -> GenerationParams:
        """Validate every field against the limits above; return the params with numbers normalised
        (ints stay ints, guidance and strengths become floats). Raises InvalidParam naming the
        field, its value and what is allowed. Unresolved fields (None) are allowed; the
        sampler's name is checked by `resolve` (the registry lives with the engine)."""
        batch = _int("batch", self.batch, 1, MAX_BATCH)
        seed = self.seed
        if seed is not None and seed != -1:
            seed = _int("seed", seed, 0, MAX_SEED, " (or -1/None for random)")
            if seed + batch - 1 > MAX_SEED:
                raise InvalidParam(
                    "seed",
                    seed,
                    f"seed + batch - 1 must stay ≤ {MAX_SEED} (image i has seed + i), "
                    f"got seed {seed} with batch {batch}",
                )
        variation_seed = self.variation_seed
        if variation_seed is not None and variation_seed != -1:
            variation_seed = _int(
                "variation_seed", variation_seed, 0, MAX_SEED, " (or -1/None for random)"
            )
        if self.sampler is not None and not isinstance(self.sampler, str):
            raise InvalidParam("sampler", self.sampler, "sampler must be a sampler's name")
        scheduler = self.scheduler
        if scheduler is not None:
            try:
                scheduler = schedule_type(str(scheduler))
            except ValueError as error:
                raise InvalidParam("scheduler", self.scheduler, f"scheduler: {error}") from None
        hires_scheduler = self.hires_scheduler
        if hires_scheduler is not None:
            hires_scheduler = _hires_schedule(hires_scheduler)
        if self.vae is not None and (not isinstance(self.vae, str) or not self.vae.strip()):
            raise InvalidParam(
                "vae", self.vae, "vae must be a VAE file's name, or None for the model's own"
            )
        if not isinstance(self.tiling, bool):
            raise InvalidParam("tiling", self.tiling, "tiling must be true or false")
        if not isinstance(self.hires, bool):
            raise InvalidParam("hires", self.hires, "hires must be true or false")
        for name in ("hires_upscaler", "hires_sampler", "hires_prompt", "hires_negative_prompt"):
            value = getattr(self, name)
            if not (value is None and name != "hires_upscaler") and not isinstance(value, str):
                raise InvalidParam(name, value, f"{name} must be a string, got {value!r}")
        return replace(
            self,
            prompt=_text("prompt", self.prompt),
            negative_prompt=_text("negative_prompt", self.negative_prompt),
            seed=seed,
            scheduler=scheduler,
            steps=_int("steps", self.steps, 1, MAX_STEPS),
            guidance=_float("guidance", self.guidance, 0.0, MAX_GUIDANCE),
            width=None if self.width is None else _size("width", self.width),
            height=None if self.height is None else _size("height", self.height),
            batch=batch,
            strength=_float("strength", self.strength, 0.0, 1.0),
            variation_seed=variation_seed,
            variation_strength=_float("variation_strength", self.variation_strength, 0.0, 1.0),
            clip_skip=_int("clip_skip", self.clip_skip, 1, MAX_CLIP_SKIP),
            mask_blur=_int("mask_blur", self.mask_blur, 0, MAX_MASK_BLUR),
            inpainting_mask_invert=_bool("inpainting_mask_invert", self.inpainting_mask_invert),
            inpainting_fill=_int("inpainting_fill", self.inpainting_fill, 0, 3, _FILLS),
            inpaint_full_res=_bool("inpaint_full_res", self.inpaint_full_res),
            inpaint_full_res_padding=_int(
                "inpaint_full_res_padding", self.inpaint_full_res_padding, 0, MAX_INPAINT_PADDING
            ),
            hires_scale=_float("hires_scale", self.hires_scale, 1.0, MAX_HIRES_SCALE),
            hires_width=(
                None if self.hires_width is None else _size("hires_width", self.hires_width)
            ),
            hires_height=(
                None if self.hires_height is None else _size("hires_height", self.hires_height)
            ),
            hires_steps=_int(
                "hires_steps", self.hires_steps, 0, MAX_STEPS, " (0: as the first pass)"
            ),
            hires_strength=_float("hires_strength", self.hires_strength, 0.0, 1.0),
            hires_scheduler=hires_scheduler,
            hires_guidance=(
                None
                if self.hires_guidance is None
                else _float("hires_guidance", self.hires_guidance, 0.0, MAX_GUIDANCE)
            ),
            eta=None if self.eta is None else _float("eta", self.eta, 0.0, 1.0),
        )

    def with_seeds(self) -> GenerationParams:
        """Checked params with the random seed drawn (and the variation seed, when the noise
        blends; without a blend there is none to record)."""
        params = self.check()
        seed = params.seed
        if seed is None or seed == -1:
            seed = random_seed(params.batch)
        variation_seed = params.variation_seed
        if params.variation_strength == 0:
            variation_seed = None
        elif variation_seed is None or variation_seed == -1:
            variation_seed = random_seed(params.batch)
        return replace(params, seed=seed, variation_seed=variation_seed)

    def resolve(self, native_size: int, default_sampler: str) -> GenerationParams:
        """Checked params with nothing left open: seeds drawn (`with_seeds`), the sampler's
        canonical name, the model's native size where none was asked for."""
        from sd_core.samplers import get_sampler

        params = self.with_seeds()
        spec = get_sampler(params.sampler or default_sampler)
        check_sampler_steps(spec.display_name, spec.max_steps, params.steps, "steps")
        check_sampler_eta(spec.display_name, spec.eta, spec.eta_settable, params.eta)
        if params.hires:
            hires_spec = get_sampler(params.hires_sampler or params.sampler or default_sampler)
            check_sampler_eta(
                hires_spec.display_name, hires_spec.eta, hires_spec.eta_settable, params.eta
            )
            steps = params.hires_steps or params.steps  # 0: as many as the first pass
            check_sampler_steps(hires_spec.display_name, hires_spec.max_steps, steps, "hires_steps")
            hires_schedule = params.hires_scheduler or params.scheduler  # None: the first pass's
            if hires_schedule not in (None, HIRES_AUTOMATIC) and not hires_spec.takes_schedule_type:
                raise InvalidParam(
                    "hires_scheduler", params.hires_scheduler,
                    f"the hires sampler {hires_spec.display_name} has its own timesteps and takes "
                    f"no schedule type (the hires pass would use {hires_schedule}); set "
                    f"hires_scheduler to {HIRES_AUTOMATIC}",
                )  # fmt: skip
        if params.scheduler is not None and not spec.takes_schedule_type:
            raise InvalidParam(
                "scheduler",
                params.scheduler,
                f"sampler {spec.display_name} has its own timesteps and takes no schedule type "
                f"(got {params.scheduler}); leave scheduler empty (Automatic)",
            )
        return replace(
            params,
            sampler=get_sampler(params.sampler or default_sampler).name,
            hires_sampler=params.hires_sampler and get_sampler(params.hires_sampler).name,
            width=native_size if params.width is None else params.width,
            height=native_size if params.height is None else params.height,
        )

    def seeds(self) -> list[int]:
        """The seed of each image of the batch (resolved params only)."""
        if self.seed is None:
            raise ValueError("seeds() needs resolved params (the seed is still random)")
        return [self.seed + i for i in range(self.batch)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, one key per field."""
        return asdict(self)


def check_sampler_steps(sampler: str, max_steps: int, steps: int, field_name: str) -> None:
    """InvalidParam naming `field_name` when `steps` is more than sampler `sampler` (its
    display name) takes; `max_steps` is its limit (`SamplerSpec.max_steps`: 50 for LCM)."""
    if steps > max_steps:
        raise InvalidParam(
            field_name, steps,
            f"{field_name} must be from 1 to {max_steps} with sampler {sampler}, got {steps}",
        )  # fmt: skip


def check_sampler_eta(sampler: str, own: float | None, settable: bool, eta: float | None) -> None:
    """InvalidParam("eta") when sampler `sampler` (its display name; `own`: the η it runs with,
    None for none; `settable`: whether it takes another) cannot run with `eta` (None: its own)."""
    if eta is None or eta == own or (settable and own is not None):
        return
    if own is None:
        allowed = "it has no eta; leave eta out"
    else:
        allowed = f"it runs with eta {own:g} only"
    raise InvalidParam("eta", eta, f"eta {eta:g} cannot apply to sampler {sampler}: {allowed}")


def field_names() -> tuple[str, ...]:
    """The names of `GenerationParams`' fields, in declaration order."""
    return tuple(f.name for f in fields(GenerationParams))


def infotext_extras(params: GenerationParams) -> dict[str, str]:
    """The infotext keys of the fields that declare one and differ from their default, e.g.
    {"Clip skip": "2"}; fields at their default are left out, as AUTOMATIC1111 does."""
    extras = {}
    for f in fields(GenerationParams):
        key = f.metadata.get(INFOTEXT_KEY)
        value = getattr(params, f.name)
        if key is not None and value != f.default:
            if INFOTEXT_VALUES in f.metadata:  # in words, as A1111 writes them
                extras[key] = f.metadata[INFOTEXT_VALUES][value]
                continue
            # 0.5 → "0.5", 1.0 → "1": numbers as A1111's UI hands them to its infotext.
            integral = isinstance(value, float) and value.is_integer()
            extras[key] = str(int(value)) if integral else str(value)
    return extras
