"""The three generation tabs — txt2img, img2img, inpaint — which share one panel of prompt,
settings and output widgets, and their handlers: a request goes through the studio's queue
(`Studio.generations.submit`) and the handler follows the job, streaming progress and
previews, until it has finished."""

from __future__ import annotations

import io
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image
from pydantic import ValidationError

from dali_gradio.choices import AUTO_DTYPE, Choices
from dali_gradio.hires import FIRST as HIRES_FIRST
from dali_gradio.hires import hires_fields, hires_inputs
from dali_gradio.inpaint import inpaint_fields, inpaint_image_inputs, inpaint_settings
from dali_gradio.inputs import (
    dropdown,
    explain,
    image_upload,
    input_error,
    mask_from_layers,
    open_image,
    optional_int,
    png_base64,
    private,
    size_or_native,
    slider,
)
from dali_gradio.networks import NetworkPicker, Networks
from dali_gradio.styles import Styles, picked_styles
from stable_diffusion_api.errors import Conflict, DomainError
from stable_diffusion_api.models import CANCELED, FINISHED, QUEUED, SUCCEEDED
from stable_diffusion_api.schemas import MAX_BATCH, MAX_CLIP_SKIP, GenerationCreate, GenerationOut
from stable_diffusion_api.services import Studio

SOURCE = "gradio"


@dataclass
class Panel:
    """The widgets one generation tab shares with the others."""

    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    sampler: gr.Dropdown
    steps: gr.Slider
    guidance: gr.Slider
    seed: gr.Number
    width: gr.Slider
    height: gr.Slider
    batch: gr.Slider
    clip_skip: gr.Slider
    vae: gr.Dropdown
    networks: NetworkPicker
    styles: gr.Dropdown  # passed last of all, after the tab's own controls
    generate: gr.Button
    cancel: gr.Button
    gallery: gr.Gallery
    preview: gr.Image
    info: gr.Textbox
    status: gr.Markdown
    details: gr.JSON

    def settings(self) -> list[gr.components.Component]:
        return [
            self.prompt,
            self.negative_prompt,
            self.sampler,
            self.steps,
            self.guidance,
            self.seed,
            self.width,
            self.height,
            self.batch,
            self.clip_skip,
            self.vae,
        ]

    def outputs(self) -> list[gr.components.Component]:
        return [self.gallery, self.preview, self.info, self.status, self.details]

    def sendable(self) -> list[gr.components.Component]:
        """What "send to" fills in from an infotext: the settings, less the batch size."""
        return [c for c in self.settings() if c is not self.batch]

    def asset_lists(self) -> list[gr.components.Component]:
        """What `Networks.refresh` fills in: the LoRA, embedding and VAE lists, the note."""
        p = self.networks
        return [p.loras, p.embeddings, self.vae, p.note]


GenerationUpdate = tuple[Any, Any, Any, Any, Any]


@dataclass
class GenerationWidgets:
    """The three tabs' panels and their image inputs."""

    t2i: Panel
    i2i: Panel
    inp: Panel
    init_image: gr.Image
    strength: gr.Slider
    editor: gr.ImageEditor
    mask_upload: gr.Image
    inpaint_strength: gr.Slider
    hires: list[Any]  # txt2img's hires fix controls (dali_gradio/hires.py)
    inpaint: list[Any]  # the inpaint tab's mask settings (dali_gradio/inpaint.py)


class GenerationTabs:
    """The generation tabs' handlers and layout over a `Studio`."""

    def __init__(self, studio: Studio, choices: Choices) -> None:
        self.studio = studio
        self.choices = choices
        self.networks = Networks(studio)
        self.styles = Styles(studio)
        self._running: dict[str, int] = {}  # session → the generation it is following
        self.last: dict[str, int] = {}  # session → its newest finished generation

    def _project_id(self, name: str | None, device: str | None) -> int:
        name = (name or "").strip()
        if not name:
            raise input_error("Project: choose a project or type a new name.")
        try:
            return self.studio.projects.get_or_create(name, device or "cpu").id
        except (DomainError, ValidationError, ValueError) as exc:
            raise input_error(explain(exc)) from None

    def _request(
        self,
        model: str | None,
        device: str | None,
        dtype: str | None,
        prompt: str | None,
        negative_prompt: str | None,
        sampler: str | None,
        steps: float | None,
        guidance: float | None,
        seed: float | None,
        width: float | None,
        height: float | None,
        batch: float | None,
        clip_skip: float | None,
        vae: str | None,
        **images: Any,
    ) -> GenerationCreate:
        if not (prompt or "").strip():
            raise input_error("Prompt: it is empty — describe the image you want.")
        seed_value = optional_int(seed)
        try:
            return GenerationCreate(
                prompt=prompt or "",
                negative_prompt=negative_prompt or "",
                sampler=sampler or None,
                steps=optional_int(steps),
                guidance=guidance,
                seed=None if seed_value is None or seed_value < 0 else seed_value,
                width=size_or_native(width),
                height=size_or_native(height),
                batch=optional_int(batch) or 1,
                model=model or None,
                device=device or None,
                dtype=None if not dtype or dtype == AUTO_DTYPE else dtype,
                clip_skip=optional_int(clip_skip),
                vae=(vae or "").strip() or None,  # "": the project's default
                **images,
            )
        except ValidationError as exc:
            raise input_error(explain(exc)) from None

    def _run(
        self,
        request: gr.Request | None,
        progress: gr.Progress,
        project: str | None,
        body: GenerationCreate,
    ) -> Iterator[GenerationUpdate]:
        project_id = self._project_id(project, body.device)
        try:
            accepted = self.studio.generations.submit(project_id, body, SOURCE)
        except (DomainError, ValidationError, ValueError) as exc:
            raise input_error(explain(exc)) from None
        session = request.session_hash if request is not None and request.session_hash else ""
        self._running[session] = accepted.id
        try:
            view = yield from self._follow(accepted.id, progress)
        finally:
            self._running.pop(session, None)
        self.last[session] = view.id
        yield self._result(view)

    def _follow(
        self, job_id: int, progress: gr.Progress
    ) -> Generator[GenerationUpdate, None, GenerationOut]:
        """Report queue position, steps and previews until the job has finished; its view."""
        hub, generations = self.studio.hub, self.studio.generations
        version, preview_step = 0, -1
        progress(0, desc="Queued")
        while True:
            state = hub.wait(job_id, version, 0.5)
            if state is not None and state.version > version:
                version = state.version
                if state.total:
                    eta = f", about {state.eta_s:.0f} s left" if state.eta_s is not None else ""
                    progress(
                        (state.step, state.total),
                        desc=f"Step {state.step}/{state.total}{eta}",
                        unit="steps",
                    )
                if state.preview_png is not None and state.preview_step != preview_step:
                    preview_step = state.preview_step
                    with Image.open(io.BytesIO(state.preview_png)) as preview:
                        preview.load()
                        yield (
                            gr.update(),
                            preview.copy(),
                            gr.update(),
                            f"Step {state.step} of {state.total}",
                            gr.update(),
                        )
                if state.status == "running":
                    continue
            view = generations.view(job_id)
            if view.status in FINISHED:
                return view
            if view.status == QUEUED and view.position:
                progress(0, desc=f"Queued: {view.position} job(s) ahead")

    def _result(self, view: GenerationOut) -> GenerationUpdate:
        details = view.model_dump(mode="json")
        if view.status == CANCELED:
            return ([], None, "", f"Generation #{view.id} canceled.", details)
        if view.status != SUCCEEDED:
            raise input_error(f"Generation #{view.id} failed: {view.error or 'no reason given'}")
        items = []
        for image in view.images:
            path = self.studio.gallery.local_file(image.id)
            items.append((str(path), f"#{image.id} · seed {image.seed}"))
        speed = f", {view.step_seconds:.2f} s/step" if view.step_seconds else ""
        status = (
            f"Generation #{view.id}: {len(view.images)} image(s) with {view.model} on "
            f"{view.device}{speed}. Seeds {', '.join(str(i.seed) for i in view.images)}."
        )
        # What the user should know about it: a prompt the built-in model was never taught…
        status += "".join(f"\n\n**Note:** {warning}" for warning in view.warnings)
        info = view.images[0].parameters if view.images else ""
        return (items, None, info, status, details)

    def txt2img(
        self,
        project: str,
        model: str,
        device: str,
        dtype: str,
        prompt: str,
        negative_prompt: str,
        sampler: str,
        steps: float,
        guidance: float,
        seed: float,
        width: float,
        height: float,
        batch: float,
        clip_skip: float,
        vae: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio finds it by this default)
        *options: Any,  # hires fix controls, styles, the later hires controls (dali_gradio/
        # hires.py; callers may leave out any tail of them)
    ) -> Iterator[GenerationUpdate]:
        hires, styles = options[:HIRES_FIRST], options[HIRES_FIRST : HIRES_FIRST + 1]
        later = options[HIRES_FIRST + 1 :]  # empty unless all of the first ones were sent
        body = self._request(
            model, device, dtype, prompt, negative_prompt, sampler, steps, guidance, seed, width,
            height, batch, clip_skip, vae, styles=picked_styles(*styles),
            **hires_fields(*hires, *later),
        )  # fmt: skip
        yield from self._run(request, progress, project, body)

    def img2img(
        self,
        project: str,
        model: str,
        device: str,
        dtype: str,
        init_image: str | None,
        strength: float,
        prompt: str,
        negative_prompt: str,
        sampler: str,
        steps: float,
        guidance: float,
        seed: float,
        width: float,
        height: float,
        batch: float,
        clip_skip: float,
        vae: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
        *styles: Any,  # the styles (last: callers may leave them out)
    ) -> Iterator[GenerationUpdate]:
        image = open_image(init_image, "Image")
        if image is None:
            raise input_error("Image: upload the image to start from.")
        body = self._request(
            model, device, dtype, prompt, negative_prompt, sampler, steps, guidance, seed, width,
            height, batch, clip_skip, vae, init_image=png_base64(image), strength=strength,
            styles=picked_styles(*styles[:1]),
        )  # fmt: skip
        yield from self._run(request, progress, project, body)

    def inpaint(
        self,
        project: str,
        model: str,
        device: str,
        dtype: str,
        editor: dict[str, Any] | None,
        mask_upload: str | None,
        strength: float,
        prompt: str,
        negative_prompt: str,
        sampler: str,
        steps: float,
        guidance: float,
        seed: float,
        width: float,
        height: float,
        batch: float,
        clip_skip: float,
        vae: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
        *options: Any,  # mask settings, then styles (last: callers may leave them out)
    ) -> Iterator[GenerationUpdate]:
        settings, styles = options[:5], options[5:6]
        background = (editor or {}).get("background")
        if background is None:
            raise input_error("Image: upload the image to inpaint, then paint over what to redo.")
        image = background.convert("RGB")
        mask = open_image(mask_upload, "Mask")
        if mask is None:
            mask = mask_from_layers(list((editor or {}).get("layers") or []), image.size)
        if mask is None:
            raise input_error(
                "Mask: paint over the area to repaint (white brush) or upload a mask."
            )
        body = self._request(
            model, device, dtype, prompt, negative_prompt, sampler, steps, guidance, seed, width,
            height, batch, clip_skip, vae, init_image=png_base64(image),
            mask=png_base64(mask.convert("L")),
            strength=strength, styles=picked_styles(*styles), **inpaint_fields(*settings),
        )  # fmt: skip
        yield from self._run(request, progress, project, body)

    def cancel(self, request: gr.Request) -> str:
        job_id = self._running.get(request.session_hash or "") if request is not None else None
        if job_id is None:
            return "Nothing is running."
        try:
            view = self.studio.generations.cancel(job_id)
        except Conflict:
            return f"Generation #{job_id} has already finished."
        except DomainError as exc:
            return explain(exc)
        return f"Canceling generation #{view.id}…"

    # -- gallery and PNG info ---------------------------------------------------------------

    # -- layout -----------------------------------------------------------------------------

    def panel(
        self, tab: str, extra: Callable[[], list[Any]] | None = None
    ) -> tuple[Panel, list[Any]]:
        """Prompt, settings and output widgets of one generation tab (`extra` adds the image
        inputs above the prompt); returns the panel and the extra inputs."""
        extra_inputs: list[Any] = []
        with gr.Row():
            with gr.Column(scale=3):
                if extra is not None:
                    extra_inputs = extra()
                prompt = gr.Textbox(
                    label="Prompt",
                    lines=3,
                    placeholder="a red circle on a blue background",
                    elem_id=f"{tab}-prompt",
                )
                networks = self.networks.layout(tab)
                negative = gr.Textbox(label="Negative prompt", lines=2, placeholder="what to avoid")
                styles = self.styles.picker(tab)
            with gr.Column(scale=1, min_width=160):
                generate = gr.Button(
                    "Generate", variant="primary", size="lg", elem_id=f"{tab}-generate"
                )
                cancel = gr.Button("Cancel", variant="stop")
        with gr.Row():
            with gr.Column(scale=1):
                sampler = dropdown(self.choices.sampler_choices(), value="", label="Sampler")
                steps = slider(1, 150, value=20, step=1, label="Steps")
                guidance = slider(0, 30, value=7.0, step=0.5, label="CFG scale")
                with gr.Row(equal_height=True):
                    seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", scale=4)
                    dice = gr.Button("Random", scale=1, min_width=80, size="sm")
                with gr.Row():
                    width = slider(0, 2048, value=0, step=8, label="Width (0 = native size)")
                    height = slider(0, 2048, value=0, step=8, label="Height (0 = native size)")
                batch = slider(1, MAX_BATCH, value=1, step=1, label="Batch size")
                with gr.Row():
                    clip_skip = slider(
                        1, MAX_CLIP_SKIP, value=1, step=1, label="Clip skip",
                        info="1 = the text encoder's last layer",
                    )  # fmt: skip
                    vae = self.networks.vae_dropdown()
            with gr.Column(scale=1):
                preview = gr.Image(
                    label="Live preview", height=160, interactive=False, format="png"
                )
                gallery = gr.Gallery(
                    label="Images", columns=4, height="auto", format="png", object_fit="contain"
                )
                status = gr.Markdown("Ready.")
                info = gr.Textbox(
                    label="Generation info", lines=3, interactive=False, buttons=["copy"]
                )
                with gr.Accordion("Details", open=False):
                    details = gr.JSON(label="Generation")
        dice.click(lambda: -1, None, seed, **private())
        self.networks.wire(networks, prompt, vae)
        panel = Panel(
            prompt, negative, sampler, steps, guidance, seed, width, height, batch, clip_skip,
            vae, networks, styles, generate, cancel, gallery, preview, info, status, details,
        )  # fmt: skip
        return panel, extra_inputs

    @staticmethod
    def img2img_inputs() -> list[Any]:
        """The image to start from and how much of it to redo, above img2img's prompt."""
        return [
            image_upload(
                label="Image",
                type="filepath",
                image_mode=None,
                height=320,
                sources=["upload", "clipboard"],
            ),
            slider(0, 1, value=0.75, step=0.01, label="Denoising strength"),
        ]

    def layout(self) -> GenerationWidgets:
        """The txt2img, img2img and inpaint tabs (inside the app's `gr.Tabs`)."""
        with gr.Tab("txt2img", id="txt2img"):
            t2i, _ = self.panel("txt2img")
            hires = hires_inputs(self.choices.sampler_choices()[1:])  # not "Model default"
        with gr.Tab("img2img", id="img2img"):
            i2i, (init_image, strength) = self.panel("img2img", self.img2img_inputs)
        with gr.Tab("Inpaint", id="inpaint"):
            inp, (editor, mask_upload, inpaint_strength) = self.panel(
                "inpaint", inpaint_image_inputs
            )
            inpaint = inpaint_settings()
        return GenerationWidgets(
            t2i, i2i, inp, init_image, strength, editor, mask_upload, inpaint_strength, hires,
            inpaint,
        )  # fmt: skip

    def wire(self, widgets: GenerationWidgets, common: list[Any]) -> None:
        """Each tab's Generate button (and Enter in its prompt) and Cancel; `common` are the
        project, model, hardware and precision pickers above the tabs."""
        w = widgets
        inpaint_images = [w.editor, w.mask_upload, w.inpaint_strength]
        hires, later_hires = w.hires[:HIRES_FIRST], w.hires[HIRES_FIRST:]
        for name, panel, fn, extra, after, last in (
            ("txt2img", w.t2i, self.txt2img, [], hires, later_hires),
            ("img2img", w.i2i, self.img2img, [w.init_image, w.strength], [], []),
            ("inpaint", w.inp, self.inpaint, inpaint_images, w.inpaint, []),
        ):
            inputs = [*common, *extra, *panel.settings(), *after, panel.styles, *last]
            panel.generate.click(
                fn, inputs, panel.outputs(), api_name=name, concurrency_id="generate"
            )
            panel.prompt.submit(fn, inputs, panel.outputs(), **private(), concurrency_id="generate")
            # One public /cancel; every tab's button does the same.
            cancel_api = {"api_name": "cancel"} if name == "txt2img" else private()
            panel.cancel.click(self.cancel, None, panel.status, queue=False, **cancel_api)
