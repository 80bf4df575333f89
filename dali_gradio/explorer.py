"""The diffusion explorer tab: the forward process q(x_t | x0) of any image at a chosen t, with
its signal-to-noise ratio, and the reverse process of a generation as the filmstrip the worker
stored with it (the noisy latent x_t and the predicted x0 at evenly spaced steps).

Both go through the studio's workers, like a generation: the forward process is a task for the
chosen device's worker (`WorkerPool.forward_process`, which encodes, noises and decodes with
the pipeline that worker has cached), and the reverse process is what the worker recorded
during the run. The web process never loads a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import UnidentifiedImageError

from dali_gradio.choices import AUTO_DTYPE, Choices
from dali_gradio.inputs import (
    explain,
    image_upload,
    input_error,
    open_image,
    optional_int,
    private,
    slider,
)
from stable_diffusion_api.errors import DomainError
from stable_diffusion_api.models import WITH_IMAGES
from stable_diffusion_api.schemas import GenerationOut
from stable_diffusion_api.services import Studio
from stable_diffusion_api.services.generator import ForwardResult
from stable_diffusion_api.services.workers import ForwardFailed

FORWARD_STRIP = (0, 100, 250, 500, 750, 999)
# How long the explorer waits for the worker, which runs the forward process after the
# generation it may be running (the forward process itself takes a second or so).
FORWARD_TIMEOUT_S = 300.0


@dataclass
class ExplorerWidgets:
    generation: gr.Number
    film: gr.Gallery
    note: gr.Markdown


class ExplorerTab:
    """The explorer's handlers and layout over a `Studio`; `last` maps a session to its newest
    finished generation (the filmstrip's "0 = your latest")."""

    def __init__(self, studio: Studio, choices: Choices, last: dict[str, int]) -> None:
        self.studio = studio
        self.choices = choices
        self.last = last

    def _forward(
        self,
        path: str | None,
        timesteps: list[int],
        seed: float | None,
        model: str | None,
        device: str | None,
        dtype: str | None,
    ) -> ForwardResult:
        """The forward process of the uploaded image at `timesteps`, run by the chosen
        hardware's worker with the chosen model (this process loads no model)."""
        if not path:
            raise input_error("Image: upload an image to noise.")
        image = open_image(path, "Image")
        assert image is not None
        try:
            return self.studio.workers.forward_process(
                model or self.choices.default_model(),
                device or "cpu",
                None if not dtype or dtype == AUTO_DTYPE else dtype,
                image,
                timesteps,
                optional_int(seed) or 0,
                FORWARD_TIMEOUT_S,
            )
        except DomainError as exc:  # an unknown model, hardware or precision
            raise input_error(explain(exc)) from None
        except ValueError as exc:  # inputs the engine refused
            raise input_error(f"Forward process: {exc}") from None
        except TimeoutError as exc:
            raise gr.Error(f"The forward process did not run: {exc}; try again later.") from None
        except ForwardFailed as exc:
            raise gr.Error(f"The forward process failed ({exc.kind}): {exc}") from None

    def forward(
        self, image: str | None, t: float, seed: float, model: str, device: str, dtype: str
    ) -> tuple[Any, Any, str]:
        """x0 through the VAE, x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε decoded, and the numbers."""
        result = self._forward(image, [int(t)], seed, model, device, dtype)
        step = result.steps[0]
        stats = (
            f"**t = {step.t}** · ᾱ_t = {step.alpha_bar:.5f} · signal {math.sqrt(step.alpha_bar):.4f}"
            f" · noise {math.sqrt(1 - step.alpha_bar):.4f} · **SNR = ᾱ/(1−ᾱ) = {step.snr:.4g}**"
            f" ({step.snr_db:+.1f} dB) · σ = {step.sigma:.4g}"
        )
        return result.clean, step.image, stats

    def forward_strip(
        self, image: str | None, seed: float, model: str, device: str, dtype: str
    ) -> list[tuple[Any, str]]:
        """The forward process at several t with one noise draw: signal fading into noise."""
        result = self._forward(image, list(FORWARD_STRIP), seed, model, device, dtype)
        return [(step.image, f"t={step.t} · SNR {step.snr:.3g}") for step in result.steps]

    def filmstrip(
        self, generation_id: float | None, request: gr.Request
    ) -> tuple[list[tuple[Any, str]], str]:
        """The reverse process of a generation, as the worker stored it with the generation:
        noisy x_t and predicted x0 per frame."""

        wanted = optional_int(generation_id)
        if not wanted:
            wanted = self.last.get(request.session_hash or "") if request is not None else None
        if not wanted:
            raise input_error(
                "Generation: enter the number of a generation (shown after “Generation #”)."
            )
        try:
            view = self.studio.generations.view(wanted)
        except DomainError as exc:
            raise input_error(explain(exc)) from None
        if view.status not in WITH_IMAGES:
            raise input_error(f"Generation #{wanted} has no images ({view.status}).")
        # The strip the worker stored with the generation, whichever front end asked for it.
        stored = self._stored_filmstrip(view)
        if stored is None:
            raise input_error(
                f"Generation #{wanted} has no filmstrip: it was made with filmstrips off "
                "(DALI_FILMSTRIP_FRAMES=0) or before generations kept one."
            )
        return stored

    def _stored_filmstrip(self, view: GenerationOut) -> tuple[list[tuple[Any, str]], str] | None:
        """The strip stored with the generation, cut into its cells (noisy x_t on the top row,
        predicted x0 below, a column per frame); None when it has none."""
        strip = view.filmstrip
        if strip is None or not strip.frames:
            return None
        try:
            key = self.studio.generations.filmstrip_file(view.id)
            with self.studio.storage.open_image(key) as opened:
                image = opened.convert("RGB")
        except (DomainError, OSError, ValueError, UnidentifiedImageError):
            return None
        cell_width, cell_height = image.width // len(strip.frames), image.height // 2
        items: list[tuple[Any, str]] = []
        for column, frame in enumerate(strip.frames):
            left = column * cell_width
            level = "σ unknown" if frame.sigma is None else f"σ={frame.sigma:.3g}"
            for row, what in ((0, f"noisy x_t · {level}"), (1, "predicted x₀")):
                box = (left, row * cell_height, left + cell_width, (row + 1) * cell_height)
                items.append((image.crop(box), f"step {frame.step}/{frame.total} · {what}"))
        decoded = "the model's VAE" if strip.decoder == "vae" else "the quick latent preview"
        note = (
            f"Generation #{view.id} ({view.sampler or 'model default'} sampler, {view.steps} "
            f"steps): the {len(strip.frames)}-frame strip stored with it ({cell_width}×"
            f"{cell_height} cells, drawn by {decoded}), each the noisy latent x_t next to the "
            "model's current guess of the final image x₀."
        )
        return items, note

    # -- layout -----------------------------------------------------------------------------

    def layout(
        self, model: gr.Dropdown, device: gr.Dropdown, dtype: gr.Dropdown
    ) -> ExplorerWidgets:
        """The tab (inside the app's `gr.Tabs`); the forward process runs with the model,
        hardware and precision picked above the tabs."""
        with gr.Tab("Diffusion explorer", id="explorer"):
            gr.Markdown(
                "**Forward process** — training noises a latent x₀ to "
                "x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε; the signal-to-noise ratio ᾱ_t/(1−ᾱ_t) falls "
                "from about 1,200 at t = 0 to about 0.005 at t = 999. **Reverse process** — "
                "a sampler walks back from noise; the filmstrip shows, at evenly spaced "
                "steps of a generation, the noisy latent and the model's guess of x₀."
            )
            with gr.Row():
                with gr.Column():
                    image = image_upload(
                        label="Image",
                        elem_id="explorer-image",
                        type="filepath",
                        image_mode=None,
                        height=256,
                        sources=["upload", "clipboard"],
                    )
                    t = slider(0, 999, value=500, step=1, label="t (timestep)")
                    seed = gr.Number(value=0, precision=0, label="Noise seed")
                    with gr.Row():
                        go = gr.Button("Add noise", variant="primary")
                        strip_go = gr.Button("Whole forward process")
                with gr.Column():
                    with gr.Row():
                        clean = gr.Image(
                            label="x₀ through the VAE", interactive=False, format="png"
                        )
                        noisy = gr.Image(label="x_t", interactive=False, format="png")
                    stats = gr.Markdown()
            strip = gr.Gallery(
                label="Forward process",
                columns=len(FORWARD_STRIP),
                rows=1,
                height=260,
                format="png",
                object_fit="contain",
            )
            with gr.Row(equal_height=True):
                generation = gr.Number(value=0, precision=0, label="Generation # (0 = your latest)")
                film_go = gr.Button("Show the reverse process", variant="primary")
            note = gr.Markdown()
            film = gr.Gallery(
                label="Reverse process",
                columns=4,
                height="auto",
                format="png",
                object_fit="contain",
            )

        inputs = [image, t, seed, model, device, dtype]
        go.click(self.forward, inputs, [clean, noisy, stats], api_name="forward")
        t.release(self.forward, inputs, [clean, noisy, stats], **private())
        strip_go.click(
            self.forward_strip, [image, seed, model, device, dtype], strip,
            api_name="forward_strip",
        )  # fmt: skip
        film_go.click(self.filmstrip, generation, [film, note], api_name="filmstrip")
        return ExplorerWidgets(generation, film, note)
