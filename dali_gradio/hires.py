"""The txt2img tab's hires fix controls (sd_core/hires.py): a box that turns it on, the
upscale factor, the upscaler, the second pass's steps and denoising strength, and (A1111's
"Hires schedule type", "Hires CFG Scale" and "Hires sampling method") its schedule type, CFG
scale and sampler.

The API takes the first five before the styles and the last three after them: they came later,
and a positional caller written before them still sends the styles where it did."""

from __future__ import annotations

from typing import Any

import gradio as gr

from dali_gradio.inputs import dropdown, optional_int, slider

# A1111's latent modes and the built-in pixel upscalers, as the engine names them.
UPSCALERS = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
    "None",
    "Lanczos",
    "Nearest",
)
SAME = "Use same scheduler"  # A1111's words for "as the first pass"
# A1111's schedule type names → the engine's (GenerationCreate.hires_scheduler).
SCHEDULES = {
    SAME: None,
    "Automatic": "automatic",
    "Karras": "karras",
    "Exponential": "exponential",
    "SGM Uniform": "sgm_uniform",
}
SAME_SAMPLER = "Use same sampler"  # A1111's words; the value is ""
FIRST = 5  # controls before the styles in the API; the rest come after them


def hires_inputs(samplers: list[tuple[str, str]]) -> list[Any]:
    """The controls, in an accordion under the txt2img panel, in `hires_fields`' order;
    `samplers` are the (label, name) choices of the second pass's sampler."""
    with gr.Accordion("Hires fix", open=False), gr.Row():
        enabled = gr.Checkbox(value=False, label="Hires fix", info="upscale, then a second pass")
        scale = slider(1, 4, value=2.0, step=0.05, label="Upscale by")
        upscaler = dropdown(list(UPSCALERS), value="Latent", label="Upscaler")
        steps = slider(0, 150, value=0, step=1, label="Hires steps", info="0 = as above")
        strength = slider(0, 1, value=0.7, step=0.01, label="Denoising strength")
        schedule = dropdown(list(SCHEDULES), value=SAME, label="Hires schedule type")
        cfg = slider(0, 30, value=0, step=0.5, label="Hires CFG Scale", info="0 = as above")
        sampler = dropdown([(SAME_SAMPLER, ""), *samplers], value="", label="Hires sampling method")
    return [enabled, scale, upscaler, steps, strength, schedule, cfg, sampler]


def hires_fields(
    enabled: bool | None = False,
    scale: float | None = None,
    upscaler: str | None = None,
    steps: float | None = None,
    strength: float | None = None,
    schedule: str | None = None,
    cfg: float | None = None,
    sampler: str | None = None,
) -> dict[str, Any]:
    """GenerationCreate's hires fields from the controls ({} while the box is not ticked). An
    unknown schedule type or sampler is passed on as written, for the service to refuse by
    name."""
    if not enabled:
        return {}
    fields: dict[str, Any] = {"hires": True, "hires_upscaler": upscaler or "Latent"}
    if scale is not None:
        fields["hires_scale"] = scale
    if optional_int(steps) is not None:
        fields["hires_steps"] = optional_int(steps)
    if strength is not None:
        fields["hires_strength"] = strength
    scheduler = SCHEDULES.get(schedule, schedule) if schedule else None
    if scheduler is not None:
        fields["hires_scheduler"] = scheduler
    if cfg:
        fields["hires_guidance"] = cfg
    if sampler and sampler != SAME_SAMPLER:
        fields["hires_sampler"] = sampler
    return fields
