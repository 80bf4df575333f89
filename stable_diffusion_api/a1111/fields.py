"""What Dali does with each request field of A1111 1.10's txt2img and img2img.

Every field of A1111's own request models is declared in `schemas.py` (fields of extensions
and unknown ones are ignored), and every one is exactly one of:

- HONOURED: it reaches the generation, as in A1111 (the translation in `translate.py`,
  `sampling.py`, `hires.py` and `A1111Service._plan`);
- MEANINGLESS: taken with any value, because it changes nothing Dali makes (each says why);
- REFUSED unless it keeps a value Dali honours: any other is a 422 naming the field
  (`check_refused`), never a request that silently does something else.

`eta` is honoured where the sampler has one (`A1111Service._plan`): DDIM and the ancestral
samplers take any eta from 0 to 1, the SDE samplers only their own 1, and for the samplers
without one (Euler, DPM++ 2M, …) it is meaningless, as in A1111.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stable_diffusion_api.a1111.options import check_fixed
from stable_diffusion_api.a1111.schemas import A1111Request
from stable_diffusion_api.errors import InvalidField
from stable_diffusion_api.services.generator import SamplerSpec

HONOURED = frozenset(
    {
        "prompt", "negative_prompt", "styles", "seed", "subseed", "subseed_strength",
        "sampler_name", "sampler_index", "scheduler", "batch_size", "n_iter", "steps",
        "cfg_scale", "width", "height", "tiling", "denoising_strength", "eta",
        "override_settings", "override_settings_restore_afterwards", "send_images",
        "force_task_id", "infotext",
        # txt2img: the hires fix (hires.py)
        "enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x",
        "hr_resize_y", "hr_sampler_name", "hr_scheduler", "hr_cfg", "hr_checkpoint_name",
        "hr_prompt", "hr_negative_prompt",
        # img2img and inpainting (translate.prepare_img2img)
        "init_images", "resize_mode", "mask", "mask_blur", "mask_blur_x", "mask_blur_y",
        "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
        "inpainting_mask_invert", "include_init_images",
    }
)  # fmt: skip

MEANINGLESS: dict[str, str] = {
    "save_images": "every image is kept in its project's gallery anyway",
    "do_not_save_samples": "the gallery is where Dali keeps images: every one is kept there",
    "do_not_save_grid": "Dali makes no grid image",
    "s_tmin": "it bounds where s_churn applies, and s_churn is always 0 here",
    "s_tmax": "it bounds where s_churn applies, and s_churn is always 0 here",
    "refiner_switch_at": "it says when to switch to refiner_checkpoint, which must be empty",
    "comments": "A1111 shows them beside its results; they change no image",
    "image_cfg_scale": "it weighs the input image of an instruct-pix2pix model; SD v1 "
    "checkpoints have none (A1111 ignores it for them too)",
    "script_args": "they are the arguments of script_name, which must be empty",
}


@dataclass(frozen=True)
class Refused:
    """A field Dali honours only at `honoured` values; `allowed` says what to send."""

    honoured: Callable[[Any], bool]
    allowed: str


def _empty(value: Any) -> bool:
    return value in (None, "", "None", "none") or value == {}


REFUSED: dict[str, Refused] = {
    "restore_faces": Refused(lambda v: not v, "no face restorer is installed; send false"),
    "seed_resize_from_w": Refused(lambda v: v <= 0, "seed resize is not supported; send -1"),
    "seed_resize_from_h": Refused(lambda v: v <= 0, "seed resize is not supported; send -1"),
    "s_churn": Refused(lambda v: v == 0, "Dali's samplers add no churn; send 0"),
    "s_noise": Refused(lambda v: v == 1, "Dali's samplers draw their noise at scale 1; send 1"),
    "s_min_uncond": Refused(
        lambda v: v == 0, "CFG runs at every step (no negative guidance minimum sigma); send 0"
    ),
    "refiner_checkpoint": Refused(_empty, "there is no refiner pass; send null"),
    "disable_extra_networks": Refused(
        lambda v: not v, "LoRA tags in the prompt are always applied; send false"
    ),
    "script_name": Refused(_empty, "no scripts are installed"),
    "alwayson_scripts": Refused(_empty, "no always-on scripts are installed; send {}"),
    # txt2img
    "firstphase_width": Refused(lambda v: v == 0, "send 0 and the size in hr_resize_x"),
    "firstphase_height": Refused(lambda v: v == 0, "send 0 and the size in hr_resize_y"),
    "firstpass_image": Refused(_empty, "the hires fix starts from its own first pass; send null"),
    # img2img
    "initial_noise_multiplier": Refused(lambda v: v == 1, "the noise is not scaled; send 1"),
    "latent_mask": Refused(_empty, "inpainting uses the mask alone; send null"),
    "mask_round": Refused(bool, "the latent mask is always rounded to 0 or 1; send true"),
}


def check_refused(request: A1111Request) -> None:
    """InvalidField naming the first field of `request` at a value Dali does not honour (also
    an `override_settings` key Dali keeps fixed, `options.FIXED`)."""
    for name, rule in REFUSED.items():
        if name in type(request).model_fields:
            value = getattr(request, name)
            if not rule.honoured(value):
                shown = next(iter(value)) if isinstance(value, dict) else value
                raise InvalidField(name, shown, rule.allowed)
    check_fixed(request.override_settings, "override_settings.")


def eta_field(eta: float | None, sampler: SamplerSpec | None) -> dict[str, Any]:
    """GenerationCreate's `eta` for A1111's `eta` with the job's `sampler` (None: the model's
    default, which the engine checks it against): {} when none is sent, when the sampler has
    none (meaningless there, as in A1111) or when it is the sampler's own; InvalidField when
    the sampler runs with its own only (the SDE samplers: 1)."""
    if eta is None or (sampler is not None and (sampler.eta is None or eta == sampler.eta)):
        return {}
    if sampler is not None and not sampler.eta_settable:
        own = f"{sampler.eta:g}"
        raise InvalidField("eta", eta, f"{sampler.display_name} runs with eta {own} only")
    return {"eta": eta}
