"""Dali's Gradio UI: the same studio as the web app — same engine, database, storage, gallery.

    python sd_gradio.py                       # http://127.0.0.1:7860, offline, analytics off
    python sd_gradio.py --host 0.0.0.0 --port 7861

Gradio is an optional extra (`pip install -r requirements-gradio.txt`). The UI reads the same
`DALI_*` settings as the FastAPI service (data directory, database, models directory), so an
image made here lands in the same project gallery as one made in the browser app, and the
other way round. Generations go through the service's queue and its per-device worker
(`Studio.generations.submit`): there is one way to the device, whichever front end asked.

Inside the FastAPI app (one process) it mounts at `/gradio`, reusing the app's studio:

    from sd_gradio import mount_gradio
    mount_gradio(app)              # in create_app(), e.g. when DALI_GRADIO=1

Tabs: txt2img, img2img, inpaint (drawn or uploaded mask), the project gallery ("send to"), PNG
info, and the diffusion explorer: the forward process q(x_t | x0) of any image at a chosen t
with its signal-to-noise ratio, and the reverse process of a generation as a filmstrip of the
noisy latent and the predicted x0 at evenly spaced steps: the strip the worker recorded during
the run and stored with the generation (`DALI_FILMSTRIP_FRAMES`), whichever front end asked.
Every event has an `api_name`, so `gradio_client` drives the UI the way a person does.
"""

from __future__ import annotations

import os

# Before gradio is imported: it reads these at import time. Dali never phones home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse
import base64
import io
import itertools
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import gradio as gr
from fastapi import FastAPI
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from stable_diffusion_api.config import Settings
from stable_diffusion_api.errors import Conflict, DomainError
from stable_diffusion_api.models import CANCELED, FINISHED, QUEUED, SUCCEEDED
from stable_diffusion_api.schemas import MAX_BATCH, GenerationCreate, GenerationOut
from stable_diffusion_api.services import Studio
from stable_diffusion_api.services.engine import SdCoreGenerator
from stable_diffusion_api.services.generator import JobSpec

log = logging.getLogger("dali.gradio")

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
DEFAULT_PROJECT = "Gradio"
SOURCE = "gradio"
GALLERY_LIMIT = 60
EXPLORER_MIN_SIDE = 256  # the forward process is shown at least this large (tiny models)
FORWARD_STRIP = (0, 100, 250, 500, 750, 999)
AUTO_DTYPE = "auto"
DTYPES = (AUTO_DTYPE, "float32", "float16", "bfloat16")
UPLOAD_HINT = "use a PNG, JPEG, WebP or BMP image"
# Names of the request fields as the UI labels them, for error messages.
FIELD_LABELS = {
    "prompt": "Prompt",
    "negative_prompt": "Negative prompt",
    "sampler": "Sampler",
    "steps": "Steps",
    "guidance": "CFG scale",
    "seed": "Seed",
    "width": "Width",
    "height": "Height",
    "batch": "Batch size",
    "model": "Model",
    "init_image": "Image",
    "strength": "Denoising strength",
    "mask": "Mask",
    "device": "Hardware",
    "dtype": "Precision",
    "name": "Project",
}


# --------------------------------------------------------------------------- input helpers


def explain(exc: BaseException) -> str:
    """A message for the person at the UI: which field, which value, what is allowed."""
    if isinstance(exc, ValidationError):
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()))
            label = FIELD_LABELS.get(where, where or "Input")
            value = error.get("input")
            shown = "" if isinstance(value, dict | list) or value is None else f" ({value!r})"
            message = str(error.get("msg", "is not valid")).removeprefix("Value error, ")
            parts.append(f"{label}{shown}: {message}")
        return "; ".join(parts)
    if isinstance(exc, DomainError):
        return exc.message  # already names the field, the value and what is allowed
    return str(exc) or type(exc).__name__


def input_error(message: str) -> gr.Error:
    """An error about what the person entered: shown in the UI, not logged as a crash."""
    return gr.Error(message, print_exception=False)


_private_names = itertools.count()


def private() -> dict[str, Any]:
    """Event options for UI-only wiring: out of the API page, under a name of its own (so a
    private event never takes a public endpoint's name)."""
    return {"api_visibility": "private", "api_name": f"ui_{next(_private_names)}"}


def _image_error(label: str) -> gr.Error:
    return input_error(f"{label}: the file could not be read as an image; {UPLOAD_HINT}.")


def open_image(path: str | None, label: str) -> Image.Image | None:
    """The uploaded file at `path`, fully decoded (None when nothing was uploaded)."""
    if not path:
        return None
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        raise _image_error(label) from None


# Gradio checks inputs itself ("Value 4096 is greater than maximum value 2048.", a file PIL
# cannot open); the components made below say which field the message is about.

_UNREADABLE = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


def _named(label: Any, preprocess: Callable[[Any], Any], payload: Any, image: bool) -> Any:
    try:
        return preprocess(payload)
    except gr.Error as exc:
        raise input_error(f"{label}: {exc.message}") from None
    except _UNREADABLE:
        if not image:
            raise
        raise _image_error(str(label)) from None


ComponentT = TypeVar("ComponentT", bound="gr.components.Component")


def _with_field_names(component: ComponentT, default_label: str, image: bool) -> ComponentT:
    """`component`, whose input errors now name its field (and say an unreadable image is one).

    An instance attribute rather than a subclass: Gradio writes a `.pyi` stub beside any module
    that subclasses a component, a frozen copy of that module which mypy then reads instead.
    """
    preprocess = component.preprocess

    def checked(payload: Any) -> Any:
        return _named(component.label or default_label, preprocess, payload, image=image)

    component.preprocess = checked  # type: ignore[method-assign]
    return component


def image_upload(**kwargs: Any) -> gr.Image:
    return _with_field_names(gr.Image(**kwargs), "Image", image=True)


def mask_editor(**kwargs: Any) -> gr.ImageEditor:
    return _with_field_names(gr.ImageEditor(**kwargs), "Image", image=True)


def slider(*args: Any, **kwargs: Any) -> gr.Slider:
    return _with_field_names(gr.Slider(*args, **kwargs), "Value", image=False)


def dropdown(*args: Any, **kwargs: Any) -> gr.Dropdown:
    return _with_field_names(gr.Dropdown(*args, **kwargs), "Choice", image=False)


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def mask_from_layers(layers: list[Image.Image | None], size: tuple[int, int]) -> Image.Image | None:
    """White where any layer is painted in a light colour, black elsewhere (L, `size`).

    Painted means opaque enough (alpha > 0) and light (luma ≥ 128): the editor's white brush,
    or an uploaded black-and-white mask used as a layer. None when nothing is painted.
    """
    mask = Image.new("L", size, 0)
    for layer in layers:
        if layer is None:
            continue
        rgba = layer.convert("RGBA")
        if rgba.size != size:
            raise input_error(
                f"Mask: the painted layer is {rgba.width}×{rgba.height} but the image is "
                f"{size[0]}×{size[1]}; they must be the same size."
            )
        light = rgba.convert("L").point(lambda v: 255 if v >= 128 else 0)
        opaque = rgba.getchannel("A").point(lambda v: 255 if v > 0 else 0)
        painted = Image.composite(light, Image.new("L", size, 0), opaque)
        mask = Image.composite(Image.new("L", size, 255), mask, painted)
    return mask if mask.getbbox() is not None else None


def _optional_int(value: float | int | None) -> int | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return int(value)


def _size(value: float | int | None) -> int | None:
    """0 (or empty) means "the model's native size"."""
    size = _optional_int(value)
    return size if size else None


# --------------------------------------------------------------------------- the UI


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
        ]

    def outputs(self) -> list[gr.components.Component]:
        return [self.gallery, self.preview, self.info, self.status, self.details]


GenerationUpdate = tuple[Any, Any, Any, Any, Any]


class DaliUI:
    """The Gradio Blocks over a `Studio`, and every event handler."""

    def __init__(self, studio: Studio, default_project: str = DEFAULT_PROJECT) -> None:
        self.studio = studio
        self.default_project = default_project
        self._running: dict[str, int] = {}  # session → the generation it is following
        self._last: dict[str, int] = {}  # session → its newest finished generation
        self._latents: OrderedDict[tuple[Any, ...], Any] = OrderedDict()  # explorer encodes
        self._lock = threading.Lock()

    # -- choices ----------------------------------------------------------------------------

    # Mounted inside the FastAPI app, the UI is built before the app's lifespan has migrated
    # the database: until the studio has started, the lists hold only their defaults and the
    # page fills them in when it loads.

    def project_names(self) -> list[str]:
        names = [p.name for p in self.studio.projects.list()] if self.studio.started else []
        return names if self.default_project in names else [self.default_project, *names]

    def model_choices(self) -> list[tuple[str, str]]:
        choices = [("Project default", "")]
        if self.studio.started:
            choices += [(e.label, e.name) for e in self.studio.models.list() if e.available]
        return choices

    def default_model(self) -> str:
        """ "" (the project's default) when the built-in model exists, else the first usable."""
        if not self.studio.started:
            return ""
        entries = [e for e in self.studio.models.list() if e.available]
        if not entries or entries[0].builtin:
            return ""
        return entries[0].name

    def device_choices(self) -> list[tuple[str, str]]:
        return [(f"{d.id} — {d.name}", d.id) for d in self.studio.hardware.devices]

    def sampler_choices(self) -> list[tuple[str, str]]:
        return [("Model default", "")] + [
            (s.display_name, s.name) for s in self.studio.samplers.list()
        ]

    def refresh(self) -> tuple[Any, Any, Any]:
        self.studio.hardware.refresh()
        return (
            gr.update(choices=self.project_names()),
            gr.update(choices=self.model_choices()),
            gr.update(choices=self.device_choices()),
        )

    def project_selected(self, name: str) -> tuple[Any, Any, Any]:
        """Show the picked project's own hardware and model (a new name keeps the current)."""
        for project in self.studio.projects.list():
            if project.name.lower() == (name or "").strip().lower():
                return (
                    gr.update(value=project.default_model or ""),
                    gr.update(value=project.device),
                    gr.update(value=project.dtype or AUTO_DTYPE),
                )
        return gr.update(), gr.update(), gr.update()

    # -- generating -------------------------------------------------------------------------

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
        **images: Any,
    ) -> GenerationCreate:
        if not (prompt or "").strip():
            raise input_error("Prompt: it is empty — describe the image you want.")
        seed_value = _optional_int(seed)
        try:
            return GenerationCreate(
                prompt=prompt or "",
                negative_prompt=negative_prompt or "",
                sampler=sampler or None,
                steps=_optional_int(steps),
                guidance=guidance,
                seed=None if seed_value is None or seed_value < 0 else seed_value,
                width=_size(width),
                height=_size(height),
                batch=_optional_int(batch) or 1,
                model=model or None,
                device=device or None,
                dtype=None if not dtype or dtype == AUTO_DTYPE else dtype,
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
        self._last[session] = view.id
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
            path = self.studio.gallery.file(image.id)
            items.append((str(path), f"#{image.id} · seed {image.seed}"))
        speed = f", {view.step_seconds:.2f} s/step" if view.step_seconds else ""
        status = (
            f"Generation #{view.id}: {len(view.images)} image(s) with {view.model} on "
            f"{view.device}{speed}. Seeds {', '.join(str(i.seed) for i in view.images)}."
        )
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
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio finds it by this default)
    ) -> Iterator[GenerationUpdate]:
        body = self._request(
            model, device, dtype, prompt, negative_prompt, sampler, steps, guidance, seed, width,
            height, batch,
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
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> Iterator[GenerationUpdate]:
        image = open_image(init_image, "Image")
        if image is None:
            raise input_error("Image: upload the image to start from.")
        body = self._request(
            model, device, dtype, prompt, negative_prompt, sampler, steps, guidance, seed, width,
            height, batch, init_image=png_base64(image), strength=strength,
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
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> Iterator[GenerationUpdate]:
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
            height, batch, init_image=png_base64(image), mask=png_base64(mask.convert("L")),
            strength=strength,
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

    def gallery(self, project: str) -> tuple[list[tuple[str, str]], list[int], str]:
        name = (project or "").strip()
        found = [p for p in self.studio.projects.list() if p.name.lower() == name.lower()]
        if not found:
            return [], [], f"No project named {name!r} yet: generate an image in it first."
        images, total = self.studio.gallery.page(found[0].id, 0, GALLERY_LIMIT)
        items = [(str(self.studio.gallery.file(i.id)), f"#{i.id} · seed {i.seed}") for i in images]
        shown = f", the newest {len(images)} shown" if total > len(images) else ""
        return items, [i.id for i in images], f"{found[0].name}: {total} image(s){shown}."

    def gallery_select(self, ids: list[int], evt: gr.SelectData) -> tuple[Any, str, Any]:
        index = evt.index if isinstance(evt.index, int) else None
        if index is None or not 0 <= index < len(ids or []):
            return None, "", None
        try:
            image = self.studio.gallery.view(ids[index])
            path = self.studio.gallery.file(image.id)
        except DomainError as exc:
            raise input_error(explain(exc)) from None
        return str(path), image.parameters, image.generation_id

    def png_info(self, path: str | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """The PNG's `parameters` infotext, its fields, and its `dali` JSON."""
        from sd_core.pngmeta import read_png_metadata

        if not path:
            return "", {}, {}
        try:
            parameters, dali = read_png_metadata(path)
        except (OSError, UnidentifiedImageError, ValueError):
            raise input_error(f"PNG info: the file is not a readable PNG; {UPLOAD_HINT}.") from None
        if parameters is None:
            return "This PNG holds no generation parameters.", {}, dali or {}
        from sd_core.infotext import format_infotext

        return format_infotext(parameters), parameters.to_dict(), dali or {}

    def send_parameters(self, infotext: str) -> list[Any]:
        """Infotext → updates for a tab's prompt, negative prompt, sampler … batch, then Tabs."""
        from sd_core.infotext import parse_infotext

        if not (infotext or "").strip():
            raise input_error("Nothing to send: there are no parameters.")
        try:
            p = parse_infotext(infotext)
        except ValueError as exc:
            raise input_error(f"Parameters could not be read: {exc}") from None
        sampler: Any = gr.update()
        if p.sampler:
            try:
                sampler = self.studio.samplers.canonical(p.sampler) or ""
            except DomainError:
                sampler = gr.update()  # a sampler Dali does not have: keep the current choice

        def keep(value: Any) -> Any:
            return gr.update() if value is None else value

        return [
            p.prompt,
            p.negative_prompt,
            sampler,
            keep(p.steps),
            keep(p.cfg_scale),
            keep(p.seed),
            keep(p.width),
            keep(p.height),
        ]

    # -- the diffusion explorer -------------------------------------------------------------

    def _explorer_pipeline(self, model: str, device: str, dtype: str) -> Any:
        engine = self.studio.generator
        if not isinstance(engine, SdCoreGenerator):
            raise input_error("The diffusion explorer needs the sd_core engine.")
        try:
            entry = self.studio.models.resolve(model or self.default_model() or None)
            spec, chosen = self.studio.hardware.check(
                device or "cpu", None if dtype == AUTO_DTYPE else dtype
            )
        except DomainError as exc:
            raise input_error(explain(exc)) from None
        job = JobSpec(
            checkpoint=entry.path, model_name=entry.name, device=spec.id, dtype=chosen,
            low_memory=False, prompt="", parameter_count=entry.parameter_count,
        )  # fmt: skip
        key = (str(job.checkpoint), job.device, job.dtype, job.low_memory)
        try:
            return engine.cache.get(key, engine._size_estimate(job))
        except ValueError as exc:
            raise input_error(f"Model could not be loaded: {exc}") from None

    def _encoded(self, path: str, pipe: Any) -> Any:
        """The image's VAE latent (posterior mean × scale), cached per file and pipeline."""
        from sd_core.explorer import encode_mean, fit_size

        stat = os.stat(path)
        key = (path, stat.st_mtime_ns, id(pipe))
        with self._lock:
            if key in self._latents:
                return self._latents[key]
        image = open_image(path, "Image")
        assert image is not None
        limit = max(pipe.config.native_size, EXPLORER_MIN_SIDE)
        width, height = fit_size(image.width, image.height, limit)
        latent = encode_mean(pipe, image, width, height)
        with self._lock:
            self._latents[key] = latent
            while len(self._latents) > 8:
                self._latents.popitem(last=False)
        return latent

    def forward(
        self, image: str | None, t: float, seed: float, model: str, device: str, dtype: str
    ) -> tuple[Any, Any, str]:
        """x0 through the VAE, x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε decoded, and the numbers."""
        import torch

        from sd_core.explorer import decode_to_images, forward_process

        if not image:
            raise input_error("Image: upload an image to noise.")
        pipe = self._explorer_pipeline(model, device, dtype)
        x0 = self._encoded(image, pipe)
        try:
            sample = forward_process(
                x0,
                int(t),
                pipe.schedule,
                generator=torch.Generator().manual_seed(_optional_int(seed) or 0),
            )
        except ValueError as exc:
            raise input_error(f"t: {exc}") from None
        clean, noisy = decode_to_images(pipe, torch.cat([x0, sample.x_t]))
        stats = (
            f"**t = {sample.t}** · ᾱ_t = {sample.alpha_bar:.5f} · signal {math.sqrt(sample.alpha_bar):.4f}"
            f" · noise {math.sqrt(1 - sample.alpha_bar):.4f} · **SNR = ᾱ/(1−ᾱ) = {sample.snr:.4g}**"
            f" ({sample.snr_db:+.1f} dB) · σ = {sample.sigma:.4g}"
        )
        return clean, noisy, stats

    def forward_strip(
        self, image: str | None, seed: float, model: str, device: str, dtype: str
    ) -> list[tuple[Any, str]]:
        """The forward process at several t with one noise draw: signal fading into noise."""
        import torch

        from sd_core.explorer import decode_to_images, forward_process

        if not image:
            raise input_error("Image: upload an image to noise.")
        pipe = self._explorer_pipeline(model, device, dtype)
        x0 = self._encoded(image, pipe)
        noise = torch.randn(
            x0.shape, generator=torch.Generator().manual_seed(_optional_int(seed) or 0)
        )
        samples = [forward_process(x0, t, pipe.schedule, noise=noise) for t in FORWARD_STRIP]
        images = decode_to_images(pipe, torch.cat([s.x_t for s in samples]))
        return [(img, f"t={s.t} · SNR {s.snr:.3g}") for img, s in zip(images, samples, strict=True)]

    def filmstrip(
        self, generation_id: float | None, request: gr.Request
    ) -> tuple[list[tuple[Any, str]], str]:
        """The reverse process of a generation, as the worker stored it with the generation:
        noisy x_t and predicted x0 per frame."""

        wanted = _optional_int(generation_id)
        if not wanted:
            wanted = self._last.get(request.session_hash or "") if request is not None else None
        if not wanted:
            raise input_error(
                "Generation: enter the number of a generation (shown after “Generation #”)."
            )
        try:
            view = self.studio.generations.view(wanted)
        except DomainError as exc:
            raise input_error(explain(exc)) from None
        if view.status != SUCCEEDED:
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
            path = self.studio.generations.filmstrip_file(view.id)
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (DomainError, OSError, UnidentifiedImageError):
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

    def _panel(
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
                negative = gr.Textbox(label="Negative prompt", lines=2, placeholder="what to avoid")
            with gr.Column(scale=1, min_width=160):
                generate = gr.Button(
                    "Generate", variant="primary", size="lg", elem_id=f"{tab}-generate"
                )
                cancel = gr.Button("Cancel", variant="stop")
        with gr.Row():
            with gr.Column(scale=1):
                sampler = dropdown(self.sampler_choices(), value="", label="Sampler")
                steps = slider(1, 150, value=20, step=1, label="Steps")
                guidance = slider(0, 30, value=7.0, step=0.5, label="CFG scale")
                with gr.Row(equal_height=True):
                    seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", scale=4)
                    dice = gr.Button("Random", scale=1, min_width=80, size="sm")
                with gr.Row():
                    width = slider(0, 2048, value=0, step=8, label="Width (0 = native size)")
                    height = slider(0, 2048, value=0, step=8, label="Height (0 = native size)")
                batch = slider(1, MAX_BATCH, value=1, step=1, label="Batch size")
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
        panel = Panel(
            prompt, negative, sampler, steps, guidance, seed, width, height, batch, generate,
            cancel, gallery, preview, info, status, details,
        )  # fmt: skip
        return panel, extra_inputs

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="Dali", analytics_enabled=False) as demo:
            gr.Markdown("## Dali — Stable Diffusion studio", elem_id="dali-title")
            with gr.Row(equal_height=True):
                project = dropdown(
                    self.project_names(), value=self.default_project, label="Project",
                    allow_custom_value=True, info="type a new name to start a project", scale=2,
                )  # fmt: skip
                # Any name may be typed (or sent over the API): the service checks it and
                # answers with the installed models.
                model = dropdown(
                    self.model_choices(),
                    value=self.default_model(),
                    label="Model",
                    allow_custom_value=True,
                    scale=2,
                )
                devices = self.device_choices()
                device = dropdown(
                    devices, value=devices[0][1] if devices else "cpu", label="Hardware", scale=2
                )
                dtype = dropdown(list(DTYPES), value=AUTO_DTYPE, label="Precision", scale=1)
                refresh = gr.Button("↻ Refresh", scale=0, min_width=100)
            common = [project, model, device, dtype]
            refresh.click(self.refresh, None, [project, model, device], **private())
            project.change(self.project_selected, project, [model, device, dtype], **private())

            with gr.Tabs() as tabs:
                with gr.Tab("txt2img", id="txt2img"):
                    t2i, _ = self._panel("txt2img")
                with gr.Tab("img2img", id="img2img"):
                    i2i, (init_image, strength) = self._panel(
                        "img2img",
                        lambda: [
                            image_upload(
                                label="Image",
                                type="filepath",
                                image_mode=None,
                                height=320,
                                sources=["upload", "clipboard"],
                            ),
                            slider(0, 1, value=0.75, step=0.01, label="Denoising strength"),
                        ],
                    )
                with gr.Tab("Inpaint", id="inpaint"):
                    inp, (editor, mask_upload, inpaint_strength) = self._panel(
                        "inpaint",
                        lambda: [
                            mask_editor(
                                label="Image — paint over what to repaint",
                                elem_id="inpaint-editor", type="pil", format="png",
                                brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24),
                                transforms=(), layers=False, height=360, sources=["upload", "clipboard"],
                            ),
                            image_upload(label="Mask (optional; white = repaint, same size as the image)", type="filepath", image_mode=None, height=160, sources=["upload", "clipboard"]),
                            slider(0, 1, value=0.75, step=0.01, label="Denoising strength"),
                        ],
                    )  # fmt: skip
                with gr.Tab("Gallery", id="gallery") as gallery_tab:
                    with gr.Row():
                        gallery_refresh = gr.Button("↻ Show the project's images", scale=0)
                        gallery_count = gr.Markdown()
                    gallery_ids = gr.State([])
                    project_gallery = gr.Gallery(
                        label="Project images", columns=6, height="auto", allow_preview=False
                    )
                    with gr.Row():
                        picked = gr.Image(
                            label="Selected image", type="filepath", interactive=False, height=256
                        )
                        with gr.Column():
                            picked_parameters = gr.Textbox(
                                label="Parameters", lines=5, interactive=False
                            )
                            picked_generation = gr.Number(
                                label="Generation #", precision=0, interactive=False
                            )
                            with gr.Row():
                                gallery_to_t2i = gr.Button("Send to txt2img")
                                gallery_to_i2i = gr.Button("Send to img2img")
                                gallery_to_inpaint = gr.Button("Send to inpaint")
                                gallery_to_film = gr.Button("Filmstrip")
                with gr.Tab("PNG info", id="pnginfo"), gr.Row():
                    png = image_upload(
                        label="Drop a PNG",
                        elem_id="png-info-image",
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "clipboard"],
                        height=320,
                    )
                    with gr.Column():
                        png_parameters = gr.Textbox(label="Parameters", lines=6, interactive=False)
                        png_fields = gr.JSON(label="Fields")
                        png_dali = gr.JSON(label="Dali metadata")
                        with gr.Row():
                            png_to_t2i = gr.Button("Send to txt2img")
                            png_to_i2i = gr.Button("Send to img2img")
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
                            explore_image = image_upload(
                                label="Image",
                                elem_id="explorer-image",
                                type="filepath",
                                image_mode=None,
                                height=256,
                                sources=["upload", "clipboard"],
                            )
                            explore_t = slider(0, 999, value=500, step=1, label="t (timestep)")
                            explore_seed = gr.Number(value=0, precision=0, label="Noise seed")
                            with gr.Row():
                                explore_go = gr.Button("Add noise", variant="primary")
                                explore_strip_go = gr.Button("Whole forward process")
                        with gr.Column():
                            with gr.Row():
                                explore_clean = gr.Image(
                                    label="x₀ through the VAE", interactive=False, format="png"
                                )
                                explore_noisy = gr.Image(
                                    label="x_t", interactive=False, format="png"
                                )
                            explore_stats = gr.Markdown()
                    explore_strip = gr.Gallery(
                        label="Forward process",
                        columns=len(FORWARD_STRIP),
                        rows=1,
                        height=260,
                        format="png",
                    )
                    with gr.Row(equal_height=True):
                        film_generation = gr.Number(
                            value=0, precision=0, label="Generation # (0 = your latest)"
                        )
                        film_go = gr.Button("Show the reverse process", variant="primary")
                    film_note = gr.Markdown()
                    film = gr.Gallery(
                        label="Reverse process", columns=4, height="auto", format="png"
                    )

            # -- events ----------------------------------------------------------------------
            for name, panel, fn, extra in (
                ("txt2img", t2i, self.txt2img, []),
                ("img2img", i2i, self.img2img, [init_image, strength]),
                ("inpaint", inp, self.inpaint, [editor, mask_upload, inpaint_strength]),
            ):
                panel.generate.click(
                    fn, [*common, *extra, *panel.settings()], panel.outputs(),
                    api_name=name, concurrency_id="generate",
                )  # fmt: skip
                panel.prompt.submit(
                    fn, [*common, *extra, *panel.settings()], panel.outputs(),
                    **private(), concurrency_id="generate",
                )  # fmt: skip
                # One public /cancel; every tab's button does the same.
                cancel_api = {"api_name": "cancel"} if name == "txt2img" else private()
                panel.cancel.click(self.cancel, None, panel.status, queue=False, **cancel_api)

            gallery_refresh.click(
                self.gallery,
                project,
                [project_gallery, gallery_ids, gallery_count],
                api_name="gallery",
            )
            # Opening the tab shows the current project's images at once.
            gallery_tab.select(
                self.gallery, project, [project_gallery, gallery_ids, gallery_count], **private()
            )
            project_gallery.select(
                self.gallery_select, gallery_ids, [picked, picked_parameters, picked_generation],
                **private(),
            )  # fmt: skip
            png.change(
                self.png_info, png, [png_parameters, png_fields, png_dali], api_name="png_info"
            )

            def send(tab: str) -> Callable[[str], list[Any]]:
                def handler(infotext: str) -> list[Any]:
                    return [*self.send_parameters(infotext), gr.Tabs(selected=tab)]

                return handler

            t2i_fields = [
                t2i.prompt,
                t2i.negative_prompt,
                t2i.sampler,
                t2i.steps,
                t2i.guidance,
                t2i.seed,
                t2i.width,
                t2i.height,
                tabs,
            ]
            i2i_fields = [
                i2i.prompt,
                i2i.negative_prompt,
                i2i.sampler,
                i2i.steps,
                i2i.guidance,
                i2i.seed,
                i2i.width,
                i2i.height,
                tabs,
            ]
            inp_fields = [
                inp.prompt,
                inp.negative_prompt,
                inp.sampler,
                inp.steps,
                inp.guidance,
                inp.seed,
                inp.width,
                inp.height,
                tabs,
            ]
            gallery_to_t2i.click(send("txt2img"), picked_parameters, t2i_fields, **private())
            gallery_to_i2i.click(send("img2img"), picked_parameters, i2i_fields, **private()).then(
                lambda path: path, picked, init_image, **private()
            )
            gallery_to_inpaint.click(send("inpaint"), picked_parameters, inp_fields, **private()).then(
                lambda path: {"background": path, "layers": [], "composite": path} if path else None,
                picked, editor, **private(),
            )  # fmt: skip
            png_to_t2i.click(send("txt2img"), png_parameters, t2i_fields, **private())
            png_to_i2i.click(send("img2img"), png_parameters, i2i_fields, **private()).then(
                lambda path: path, png, init_image, **private()
            )
            gallery_to_film.click(
                lambda number: (number, gr.Tabs(selected="explorer")), picked_generation,
                [film_generation, tabs], **private(),
            ).then(self.filmstrip, film_generation, [film, film_note], **private())  # fmt: skip

            explorer_inputs = [explore_image, explore_t, explore_seed, model, device, dtype]
            explore_go.click(
                self.forward,
                explorer_inputs,
                [explore_clean, explore_noisy, explore_stats],
                api_name="forward",
            )
            explore_t.release(
                self.forward,
                explorer_inputs,
                [explore_clean, explore_noisy, explore_stats],
                **private(),
            )
            explore_strip_go.click(
                self.forward_strip, [explore_image, explore_seed, model, device, dtype], explore_strip,
                api_name="forward_strip",
            )  # fmt: skip
            film_go.click(self.filmstrip, film_generation, [film, film_note], api_name="filmstrip")
            demo.load(self.refresh, None, [project, model, device], **private())
        return demo


# --------------------------------------------------------------------------- launching

THEME_FONTS = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "monospace"]
CSS = """
#dali-title h2 { margin: 0.2em 0; }
footer { display: none !important; }
"""


def theme() -> gr.themes.Base:
    # System fonts only: the default theme fetches web fonts, and Dali works offline.
    return gr.themes.Soft(
        primary_hue="orange", neutral_hue="slate", font=THEME_FONTS, font_mono=MONO_FONTS
    )


def _launch_options(studio: Studio) -> dict[str, Any]:
    """What both ways of serving need: the stored images may be served, and how it looks."""
    return {
        "allowed_paths": [str(studio.settings.images_dir)],
        "theme": theme(),
        "css": CSS,
        "footer_links": ["api"],
        "show_error": True,
    }


def mount_gradio(app: FastAPI, path: str = "/gradio") -> FastAPI:
    """Mount the UI inside Dali's FastAPI app at `path`, over the app's own studio.

    Call it in `create_app()` after `app.state.studio` is set (the app's lifespan starts the
    studio; the UI only uses it). Enable with e.g. `if os.environ.get("DALI_GRADIO") == "1":`.
    """
    studio: Studio = app.state.studio
    blocks = DaliUI(studio).build()
    blocks.queue(default_concurrency_limit=16)
    return gr.mount_gradio_app(app, blocks, path=path, run_history=False, **_launch_options(studio))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Dali's Gradio UI (same studio as the web app)")
    parser.add_argument("--host", default=os.environ.get("DALI_GRADIO_HOST", DEFAULT_HOST))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("DALI_GRADIO_PORT", DEFAULT_PORT))
    )
    parser.add_argument("--project", default=DEFAULT_PROJECT, help="the project picked at start")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests

    settings = Settings()
    studio = Studio(settings)
    studio.start()
    try:
        studio.projects.get_or_create(args.project)
        demo = DaliUI(studio, default_project=args.project).build()
        demo.queue(default_concurrency_limit=16)
        log.info("data directory %s", settings.resolved_data_dir)
        demo.launch(
            server_name=args.host, server_port=args.port, share=False, inbrowser=False,
            run_history=False, **_launch_options(studio),
        )  # fmt: skip
    finally:
        studio.stop()


if __name__ == "__main__":
    main()
