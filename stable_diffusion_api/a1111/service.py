"""`A1111Service`: AUTOMATIC1111's API over the Studio facade.

Nothing here runs the model. A txt2img/img2img request is planned (`translate.py`), each of its
jobs is submitted to the same durable queue as every other front end (source "a1111") and
waited for, and the finished images are read back from the gallery's files — so every A1111
image lands in a project ("API" unless the X-Dali-Project header names another) and shows in
its gallery. The "current model" of `/options` is that project's default model, so switching it
from an A1111 client also shows in the web studio, and survives a restart.

Domain errors (InvalidField, NotFound, QueueFull) go to the app's one error mapping; the
pydantic errors of the queue's own schema are re-raised as request errors with A1111's field
names, so a bad value is always a 422 with `detail`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from stable_diffusion_api import __version__
from stable_diffusion_api.a1111.assets import A1111Assets
from stable_diffusion_api.a1111.extras import Extras
from stable_diffusion_api.a1111.fields import eta_field
from stable_diffusion_api.a1111.hires import hires_fields
from stable_diffusion_api.a1111.options import FIXED, OptionStore, check_fixed
from stable_diffusion_api.a1111.sampling import (
    resolve_sampler,
    resolve_scheduler,
    scheduler_label,
    schedulers,
)
from stable_diffusion_api.a1111.schemas import (
    A1111Request,
    EmbeddingsResponse,
    GenerationResponse,
    Img2ImgRequest,
    PngInfoResponse,
    SamplerItem,
    SchedulerItem,
    SDModelItem,
)
from stable_diffusion_api.a1111.settings import A1111Settings
from stable_diffusion_api.a1111.tasks import Task, TaskTracker
from stable_diffusion_api.a1111.translate import (
    AUTOMATIC_VAE,
    CLIP_SKIP_OPTION,
    SD_VAE_OPTION,
    Plan,
    a1111_field,
    check_supported,
    clip_skip_option,
    decode_base64,
    draw_seed,
    echo_parameters,
    info_json,
    infotext_defaults,
    png_info,
    prepare_img2img,
    request_error,
    split_jobs,
    unique_warnings,
)
from stable_diffusion_api.errors import Conflict, DomainError, InvalidField, NotFound
from stable_diffusion_api.models import FAILED, FINISHED, WITH_IMAGES, FailureKind, Project
from stable_diffusion_api.schemas import (
    GenerationCreate,
    GenerationDefaults,
    GenerationOut,
    Name,
    ProjectUpdate,
)
from stable_diffusion_api.services import Studio
from stable_diffusion_api.services.assets import MODEL_OWN_VAE
from stable_diffusion_api.services.registry import ModelEntry

log = logging.getLogger(__name__)

SOURCE = "a1111"
PROJECT_HEADER = "X-Dali-Project"
# A waiting A1111 call sleeps until the progress hub says its job changed (a finish seen by
# this process, local worker or remote node alike); it reads the job's row when the hub says
# it finished, and at least every REREAD_S in case a report was missed. It looks whether its
# client left every GONE_CHECK_S. Reading every 0.1 s instead, 60 waiting calls kept a core
# busy with 600 reads a second on a 2-core machine, beside the generation they waited for.
REREAD_S = 1.0
GONE_CHECK_S = 0.25
FINISH_WRITE_S = 0.05  # the hub said finished, the row did not yet: look again this soon


class ClientGone(DomainError):
    """The A1111 client disconnected while its job ran; the job was canceled. Answered 499
    (nginx's "client closed request"), which nobody reads: not an error of ours."""

    status_code = 499

    def __init__(self, generation_id: int) -> None:
        super().__init__(f"the client disconnected; generation {generation_id} was canceled")


@dataclass(frozen=True)
class Prepared:
    """An A1111 request read and planned, its task begun: what `_run` and `_respond` need."""

    request: A1111Request
    mode: str
    plan: Plan
    project_id: int
    generations: list[GenerationCreate]
    dropped: str | None
    task: Task


_PROJECT_NAME: TypeAdapter[str] = TypeAdapter(Name)


def _header_text(value: str) -> str:
    """A header value as the client meant it. HTTP hands values over as Latin-1 characters,
    but clients send a name like `Äpfel` as UTF-8 bytes: read those as UTF-8 (text that is
    not valid UTF-8 was Latin-1 indeed, and stays as it came)."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


class GenerationFailed(DomainError):
    """A queued job ended `failed`: 422 when the engine refused its inputs, 500 for a fault of
    ours (running out of memory included, as A1111 answers it), 503 when the server stopped
    under it."""

    STATUS_CODES = {FailureKind.INVALID_INPUT: 422, FailureKind.INTERRUPTED: 503}

    def __init__(self, message: str, kind: FailureKind | None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status_code = self.STATUS_CODES.get(kind, 500) if kind is not None else 500


class A1111Service:
    def __init__(self, studio: Studio, settings: A1111Settings) -> None:
        self.studio = studio
        self.settings = settings
        self.tasks = TaskTracker(studio.hub, self._interrupt)
        self.assets = A1111Assets(studio.assets)
        self.options = OptionStore(studio.db)
        self.extras = Extras.under(studio.settings.resolved_data_dir)

    def _interrupt(self, generation_id: int) -> None:
        """A1111's interrupt and skip: a running job stops at its next step keeping what it
        made (its partly denoised images); a queued one is canceled. A job that finished (or
        was deleted) meanwhile has nothing left to stop."""
        with contextlib.suppress(Conflict, NotFound):
            self.studio.generations.cancel(generation_id, keep_partial=True)

    # -- project and model ----------------------------------------------------------------------

    def project(self, header: str | None) -> Project:
        """The project requests land in: the header's, else the configured one; made if new
        (on the fastest device present)."""
        name = _header_text(header) if header is not None else self.settings.a1111_project
        try:
            name = _PROJECT_NAME.validate_python(name)
        except ValidationError:
            raise InvalidField(
                PROJECT_HEADER, name, "a project name of 1–100 printable characters", "header"
            ) from None
        return self.studio.projects.get_or_create(name, self._fastest_device())

    def _fastest_device(self) -> str:
        """Where a new A1111 project runs: a CUDA GPU, else Apple's GPU, else the CPU — A1111
        clients expect the GPU. The project's hardware can be changed in the studio."""
        devices = self.studio.hardware.local_devices or self.studio.hardware.choices()
        for kind in ("cuda", "mps"):
            # A plain id ("cuda:0"): that device on whichever node has it.
            found = next((d.id.split("/")[-1] for d in devices if d.kind == kind), None)
            if found is not None:
                return found
        return "cpu"

    def current_model(self, project: Project) -> ModelEntry | None:
        """The project's default model (the built-in when it has none); None if unusable."""
        if project.default_model:
            return self.studio.models.find(project.default_model)
        entries = self.studio.models.list()
        return entries[0] if entries and entries[0].available else None

    # -- txt2img / img2img ----------------------------------------------------------------------

    async def generate(
        self, request: A1111Request, header: str | None, gone: Callable[[], Awaitable[bool]]
    ) -> GenerationResponse:
        """Run an A1111 txt2img or img2img request to the end, as A1111 does, but without
        holding a thread while the jobs run (a hundred waiting clients must not starve the
        other routes); `gone()` tells whether the client disconnected, and then its jobs are
        canceled instead of generating for nobody."""
        prepared = await run_in_threadpool(self._prepare, request, header)
        try:
            done = await self._run(prepared, gone)
        finally:
            self.tasks.end(prepared.task)
        return await run_in_threadpool(self._respond, prepared, done)

    def _prepare(self, request: A1111Request, header: str | None) -> Prepared:
        """Everything before the first job is queued: the request read (infotext defaults
        applied), checked, planned into jobs, every job checked, the task begun."""
        mode = "img2img" if isinstance(request, Img2ImgRequest) else "txt2img"
        defaults = infotext_defaults(request)
        dropped = self.assets.drop_missing_infotext_vae(defaults, request)
        if defaults:
            try:
                request = type(request).model_validate(
                    {**request.model_dump(exclude_unset=True), **defaults}
                )
            except ValidationError as exc:  # e.g. "Steps: 500" in the infotext
                raise request_error(exc) from None
        check_supported(request)
        project = self.project(header)
        plan = self._plan(request, mode, project)
        try:  # every job is checked before the first is queued
            generations = [plan.generation(job) for job in plan.jobs]
        except ValidationError as exc:
            raise request_error(exc) from None
        task = self.tasks.begin(
            request.force_task_id, f"scripts_{mode}", len(plan.jobs), plan.timestamp
        )
        return Prepared(request, mode, plan, project.id, generations, dropped, task)

    def _respond(self, prepared: Prepared, done: list[GenerationOut]) -> GenerationResponse:
        request, mode, plan = prepared.request, prepared.mode, prepared.plan
        images = []
        if request.send_images:
            for generation in done:
                for image in generation.images:
                    data = self.studio.gallery.read(image.id)
                    images.append(base64.b64encode(data).decode("ascii"))
        # A1111's response has no place for warnings: they go into `info` (and the log).
        dropped = prepared.dropped
        warnings = unique_warnings([dropped] if dropped else [], done)
        for warning in warnings:
            log.warning("A1111 %s (task %s): %s", mode, prepared.task.id, warning)
        return GenerationResponse(
            images=images,
            parameters=echo_parameters(request),
            info=info_json(plan, request, done, self.studio.samplers, warnings),
        )

    def _plan(self, request: A1111Request, mode: str, project: Project) -> Plan:
        override = request.override_settings.get("sd_model_checkpoint")
        if override is not None and not isinstance(override, str):
            raise InvalidField(
                "override_settings.sd_model_checkpoint", override, "a model title or name"
            )
        model = self.studio.models.resolve(
            override or project.default_model, "override_settings.sd_model_checkpoint"
        )
        if override and not request.override_settings_restore_afterwards:
            # A1111 keeps an override it was told not to restore: it becomes the current model.
            self.studio.projects.update(project.id, ProjectUpdate(default_model=model.name))
        count = request.n_iter * request.batch_size
        seed = draw_seed(request.seed, count, "seed")
        subseed = draw_seed(request.subseed, count, "subseed")
        variation = request.subseed_strength > 0
        base: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "sampler": resolve_sampler(request, self.studio.samplers),
            "scheduler": resolve_scheduler(request, self.studio.samplers),
            "steps": request.steps,
            "guidance": request.cfg_scale,
            "width": request.width,
            "height": request.height,
            "model": model.name,
        }
        styles = [name for name in request.styles if name.strip()]
        if styles:  # checked now, so an unknown name fails before anything is queued
            self.studio.generations.styles.find(styles, "styles")
            base["styles"] = styles
        if request.tiling:
            base["tiling"] = True
        defaults = GenerationDefaults.model_validate(project.defaults or {})
        sampler = base["sampler"] or self.studio.samplers.canonical(defaults.sampler)
        base.update(eta_field(request.eta, self.studio.samplers.find(sampler)))
        if CLIP_SKIP_OPTION in request.override_settings:
            value = request.override_settings[CLIP_SKIP_OPTION]
            base["clip_skip"] = clip_skip_option(value, f"override_settings.{CLIP_SKIP_OPTION}")
        if SD_VAE_OPTION in request.override_settings:
            value = request.override_settings[SD_VAE_OPTION]
            vae = self.assets.vae_choice(value, f"override_settings.{SD_VAE_OPTION}")
            if vae is not None:  # "Automatic": the project's default, as if not sent
                base["vae"] = vae
        base.update(hires_fields(request, self.studio.samplers, model, self.studio.models.resolve))
        if isinstance(request, Img2ImgRequest):
            prepare_img2img(request, base)
        return Plan(
            mode=mode,
            base=base,
            jobs=split_jobs(
                seed, subseed if variation else None, request.n_iter, request.batch_size
            ),
            seed=seed,
            subseed=subseed,
            subseed_strength=request.subseed_strength,
            model=model,
        )

    async def _run(
        self, prepared: Prepared, gone: Callable[[], Awaitable[bool]]
    ) -> list[GenerationOut]:
        """Submit the jobs one after the other, waiting for each; those that kept images."""
        done: list[GenerationOut] = []
        generations = self.studio.generations
        for number, generation in enumerate(prepared.generations):
            if not self.tasks.next_job(prepared.task, number):
                break  # interrupted: A1111 answers with what it has
            try:
                accepted = await run_in_threadpool(
                    generations.submit, prepared.project_id, generation, SOURCE
                )
            except InvalidField as exc:  # the service's check, in A1111's words
                raise exc.renamed(a1111_field(exc.field)) from None
            self.tasks.attach(prepared.task, accepted.id)
            view = await self._wait(accepted.id, gone)
            if view.status in WITH_IMAGES:  # interrupted: its images as they were, as A1111
                done.append(view)
            elif view.status == FAILED:
                raise GenerationFailed(view.error or "the generation failed", view.failure_kind)
            # canceled: skipped, interrupted, or canceled from elsewhere; go on with the next
        return done

    async def _wait(self, generation_id: int, gone: Callable[[], Awaitable[bool]]) -> GenerationOut:
        """The job's final view, awaited without holding a thread; the job is canceled (and
        ClientGone raised) when the client disconnects first."""
        generations, hub = self.studio.generations, self.studio.hub
        with hub.watch(generation_id) as changed:
            reread_at = 0.0
            while True:
                changed.clear()  # before the look: a change after it wakes the wait below
                state = hub.get(generation_id)
                hub_finished = state is not None and state.status in FINISHED
                if hub_finished or time.monotonic() >= reread_at:
                    view = await run_in_threadpool(generations.view, generation_id)
                    if view.status in FINISHED:
                        return view
                    reread_at = time.monotonic() + REREAD_S
                if await gone():
                    with contextlib.suppress(DomainError):  # finished meanwhile: nothing to stop
                        await run_in_threadpool(generations.cancel, generation_id)
                    raise ClientGone(generation_id)
                wait_s = FINISH_WRITE_S if hub_finished else GONE_CHECK_S
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), wait_s)

    # -- models, options, samplers --------------------------------------------------------------

    def sd_models(self) -> list[SDModelItem]:
        return [
            SDModelItem(
                title=entry.title,
                model_name=entry.name,
                hash=entry.short_hash,
                sha256=entry.sha256,
                filename=str(entry.path),
                config=None,
            )
            for entry in self.studio.models.list()
            if entry.available
        ]

    def get_options(self, header: str | None) -> dict[str, Any]:
        project = self.project(header)
        model = self.current_model(project)
        defaults = GenerationDefaults.model_validate(project.defaults or {})
        return {
            **self.options.get(project),  # kept as sent; what follows is Dali's own
            **FIXED,
            "sd_model_checkpoint": model.title if model else None,
            "sd_checkpoint_hash": model.sha256 if model else None,
            # No default VAE file: the checkpoint's own, which A1111 calls "Automatic" too.
            SD_VAE_OPTION: defaults.vae or AUTOMATIC_VAE,
            CLIP_SKIP_OPTION: defaults.clip_skip,
            "samples_save": True,
            "live_previews_enable": True,
            "show_progress_every_n_steps": self.studio.settings.preview_every,
            "dali_project": project.name,
        }

    def set_options(self, options: dict[str, Any], header: str | None) -> None:
        """`sd_model_checkpoint` sets the project's default model, `CLIP_stop_at_last_layers`
        its default clip skip and `sd_vae` its default VAE ("Automatic" and "None": the
        checkpoint's own). Every value is checked before any is applied. Options Dali cannot
        change must keep their value (`options.FIXED`); any other is kept per project and
        answered back by `get_options` (`options.OptionStore`)."""
        check_fixed(options)
        updates: dict[str, Any] = {}
        if CLIP_SKIP_OPTION in options:
            updates["clip_skip"] = clip_skip_option(options[CLIP_SKIP_OPTION], CLIP_SKIP_OPTION)
        if SD_VAE_OPTION in options:
            vae = self.assets.vae_choice(options[SD_VAE_OPTION], SD_VAE_OPTION)
            updates["vae"] = None if vae == MODEL_OWN_VAE else vae
        model = None
        if "sd_model_checkpoint" in options:
            wanted = options["sd_model_checkpoint"]
            if not isinstance(wanted, str) or not wanted.strip():
                raise InvalidField("sd_model_checkpoint", wanted, "a model title or name")
            model = self.studio.models.resolve(wanted, "sd_model_checkpoint")
        applied = (CLIP_SKIP_OPTION, SD_VAE_OPTION, "sd_model_checkpoint", *FIXED)
        rest = {key: value for key, value in options.items() if key not in applied}
        if not rest and not updates and model is None:
            return
        project = self.project(header)
        if rest:
            self.options.set(project.id, rest)
        if not updates and model is None:
            return
        change: dict[str, Any] = {}
        if updates:
            defaults = GenerationDefaults.model_validate(project.defaults or {})
            change["defaults"] = defaults.model_copy(update=updates)
        if model is not None:
            change["default_model"] = model.name
        self.studio.projects.update(project.id, ProjectUpdate(**change))

    def embeddings(self, header: str | None) -> EmbeddingsResponse:
        """The embeddings, sorted by whether the current model (the project's) can use them."""
        return self.assets.embeddings(self.current_model(self.project(header)))

    def samplers(self) -> list[SamplerItem]:
        items = []
        for spec in self.studio.samplers.list():
            options = {"scheduler": "karras"} if spec.display_name.endswith(" Karras") else {}
            items.append(
                SamplerItem(
                    name=spec.display_name, aliases=[spec.name, *spec.aliases], options=options
                )
            )
        return items

    def schedulers(self) -> list[SchedulerItem]:
        return [
            SchedulerItem(
                name=name,
                label=scheduler_label(name),
                aliases=None,
                default_rho=7.0 if name == "karras" else -1.0,
                need_inner_model=False,
            )
            for name in schedulers(self.studio.samplers)
        ]

    def prompt_styles(self) -> list[dict[str, str]]:
        """A1111's `/prompt-styles`: the styles of `styles.csv` in the data directory."""
        return [
            {"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
            for s in self.studio.generations.styles.all()
        ]

    def png_info(self, image: str) -> PngInfoResponse:
        return png_info(decode_base64(image, "image"))

    # -- the machine ----------------------------------------------------------------------------

    def memory(self) -> dict[str, Any]:
        """A1111's `/memory`: RAM and the first CUDA device, in bytes."""
        devices = self.studio.hardware.refresh()
        ram: dict[str, Any]
        try:
            page = os.sysconf("SC_PAGE_SIZE")
            total, free = page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
            ram = {"free": free, "used": total - free, "total": total}
        except (ValueError, OSError, AttributeError):  # no sysconf: ask the engine instead
            cpu = next((d for d in devices if d.kind == "cpu"), None)
            if cpu is not None and cpu.total_memory is not None and cpu.free_memory is not None:
                used = cpu.total_memory - cpu.free_memory
                ram = {"free": cpu.free_memory, "used": used, "total": cpu.total_memory}
            else:
                ram = {"error": "the amount of memory is not known on this system"}
        cuda: dict[str, Any] = {"error": "no CUDA device"}
        gpu = next((d for d in devices if d.kind == "cuda"), None)
        if gpu is not None and gpu.total_memory is not None and gpu.free_memory is not None:
            used = gpu.total_memory - gpu.free_memory
            cuda = {"system": {"free": gpu.free_memory, "used": used, "total": gpu.total_memory}}
        return {"ram": ram, "cuda": cuda}

    def cmd_flags(self) -> dict[str, Any]:
        """A1111's `/cmd-flags`, as far as Dali has an equivalent (never a secret)."""
        settings = self.studio.settings
        return {
            "api": True,
            "nowebui": False,
            "listen": settings.host not in ("127.0.0.1", "localhost", "::1"),
            "server_name": settings.host,
            "port": settings.port,
            "api_auth": None,  # set or not, never shown
            "ckpt_dir": str(settings.resolved_models_dir),
            "data_dir": str(settings.resolved_data_dir),
            "use_cpu": [],
            "device_id": None,
            "lowvram": False,
            "medvram": False,
            "no_half": False,
            "dali_version": __version__,
        }
