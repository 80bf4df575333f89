"""Generations: submitting jobs to the durable queue, reading, canceling, deleting them.

This is the one entry point for every front end (JSON API, pages, A1111 routes, Gradio): a
request is checked against the project's defaults, the models and the hardware present, then
written as a `queued` row and the device's worker is woken. Nothing here runs the model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from PIL import Image as PILImage
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, selectinload

from sd_core import shapes_grammar
from stable_diffusion_api.config import Settings
from stable_diffusion_api.db import Database
from stable_diffusion_api.errors import Conflict, InvalidField, NotFound, QueueFull
from stable_diffusion_api.models import (
    FINISHED,
    QUEUED,
    RUNNING,
    Generation,
    Image,
    Project,
)
from stable_diffusion_api.schemas import (
    FilmstripFrameOut,
    FilmstripOut,
    GenerationAccepted,
    GenerationCreate,
    GenerationDefaults,
    GenerationOut,
    GenerationTimings,
    ProgressOut,
)
from stable_diffusion_api.services.assets import AssetService
from stable_diffusion_api.services.gallery import GalleryService, image_view
from stable_diffusion_api.services.hardware import HardwareService
from stable_diffusion_api.services.job_params import params_from_request, params_view, row_values
from stable_diffusion_api.services.job_queue import JobQueue
from stable_diffusion_api.services.nodes import Node
from stable_diffusion_api.services.outpainting import outpaint_request
from stable_diffusion_api.services.progress import ProgressHub
from stable_diffusion_api.services.registry import ModelRegistry
from stable_diffusion_api.services.samplers import SamplerCatalog
from stable_diffusion_api.services.speeds import Estimate, SpeedService
from stable_diffusion_api.services.storage import ImageStorage, decode_image
from stable_diffusion_api.services.styles import StyleLibrary

# A job's input images: the init image (RGB) and the mask (greyscale), each None when absent.
Inputs = tuple[PILImage.Image | None, PILImage.Image | None]


def filmstrip_view(row: Generation) -> FilmstripOut | None:
    """What the row says of its filmstrip, with the URL that serves it; None when it has none."""
    meta = row.filmstrip
    if row.filmstrip_path is None or not meta:
        return None
    frames = []
    for frame in meta.get("frames", []):
        sigma = frame.get("sigma")
        snr = 1.0 / sigma**2 if sigma else None
        frames.append(FilmstripFrameOut(step=frame["step"], total=frame["total"], sigma=sigma,
                                        snr=snr))  # fmt: skip
    return FilmstripOut(
        url=f"/api/v1/generations/{row.id}/filmstrip",
        width=meta["width"],
        height=meta["height"],
        frames=frames,
        decoder=meta.get("decoder", "vae"),
    )


def generation_view(
    row: Generation,
    images: list[Image],
    position: int | None = None,
    progress: ProgressOut | None = None,
    waiting_reason: str | None = None,
) -> GenerationOut:
    """The API's view of a generation row and its image rows."""
    return GenerationOut(
        id=row.id,
        project_id=row.project_id,
        status=row.status,
        position=position,
        waiting_reason=waiting_reason,
        source=row.source,
        device=row.device,
        node=row.node,
        dtype=row.dtype,
        low_memory=row.low_memory,
        model=row.model,
        model_hash=row.model_hash,
        **params_view(row),
        has_init_image=row.init_image is not None,
        has_mask=row.mask is not None,
        error=row.error,
        failure_kind=row.failure_kind,
        warnings=row.warnings or [],
        step_seconds=row.step_seconds,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        images=[image_view(image) for image in images],
        progress=progress,
        filmstrip=filmstrip_view(row),
        timings=GenerationTimings.model_validate(row.timings) if row.timings else None,
    )


class ProjectJobs(NamedTuple):
    """One read of a project's jobs (`GenerationService.project_jobs`)."""

    latest_id: int  # the project's newest generation id (0: it has none)
    jobs: list[GenerationOut]  # oldest first


class GenerationService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        models: ModelRegistry,
        hardware: HardwareService,
        samplers: SamplerCatalog,
        storage: ImageStorage,
        hub: ProgressHub,
        speeds: SpeedService,
        wake: Callable[[str], None],
        assets: AssetService,
        gallery: GalleryService,
    ) -> None:
        self._assets = assets
        self._gallery = gallery
        self._settings = settings
        self._db = db
        self._models = models
        self._hardware = hardware
        self._samplers = samplers
        self._storage = storage
        self._hub = hub
        self._speeds = speeds
        self._wake = wake
        self._queue = JobQueue(db)
        self._submit_lock = threading.Lock()
        self.styles = StyleLibrary.under(settings.resolved_data_dir)

    # -- submitting -------------------------------------------------------------------------

    def submit(
        self,
        project_id: int,
        request: GenerationCreate,
        source: str = "api",
        inputs: Inputs | None = None,
    ) -> GenerationAccepted:
        """Check `request`, queue it, wake the worker; raises InvalidField, NotFound, QueueFull.

        `inputs`: the init image and mask already read (a variation of an image made from
        them, `VariationService`), used instead of the request's image fields."""
        project = self._queue.project(project_id)
        if project is None:
            raise NotFound("project", project_id)
        defaults = GenerationDefaults.model_validate(project.defaults or {})
        device, dtype = self._hardware.check(
            request.device or project.device,
            request.dtype if request.device or request.dtype else project.dtype,
        )
        model_name, model_hash = self._model(request.model or project.default_model)
        sampler = self._samplers.canonical(request.sampler or defaults.sampler)
        if request.hires_sampler is not None:
            hires_sampler = self._samplers.canonical(request.hires_sampler, "hires_sampler")
            request = request.model_copy(update={"hires_sampler": hires_sampler})
        init_image, mask = inputs if inputs is not None else self._inputs(request)
        if mask is not None and init_image is None:
            raise InvalidField("mask", "<image>", "a mask needs an init_image to paint into")
        if mask is not None and init_image is not None and mask.size != init_image.size:
            raise InvalidField(
                "mask",
                f"{mask.width}x{mask.height}",
                f"the mask must be the init image's size, {init_image.width}x{init_image.height}",
            )
        if request.outpaint is not None:  # an inpaint of the grown picture's new margins
            request, init_image, mask = outpaint_request(request, init_image, mask)
        vae = self._assets.check_vae(request.vae if request.vae is not None else defaults.vae)
        if request.styles:  # expanded here, so the row keeps the prompt that was run
            negative = request.negative_prompt
            prompt, negative = self.styles.apply(
                request.styles,
                request.prompt,
                negative if negative is not None else defaults.negative_prompt,
            )
            request = request.model_copy(update={"prompt": prompt, "negative_prompt": negative})
        params = params_from_request(request, defaults, sampler, vae)
        self._samplers.check(params)
        # Said in the answer, before it runs; the engine's result (the row's warnings) says it
        # again, for the job's page, the API and the PNG's A1111 clients.
        # The built-in model's registry name is its config's name (sd_core.BUILTIN_MODEL_NAME).
        warnings = list(shapes_grammar.model_warnings(model_name, params.prompt))
        values = {
            "project_id": project_id,
            "source": source,
            "device": device.id,
            "dtype": dtype,
            "low_memory": project.low_memory,
            "model": model_name,
            "model_hash": model_hash,
            **row_values(params),
        }

        def attach(job_id: int) -> dict[str, str]:
            """The input files, named after the job's id, written before the row commits."""
            columns = {}
            if init_image is not None:
                columns["init_image"] = self._storage.save_input(job_id, "init", init_image)
            if mask is not None:
                columns["mask"] = self._storage.save_input(job_id, "mask", mask)
            return columns

        with self._submit_lock:  # makes the queue limit exact within a process
            try:
                queued = self._queue.enqueue(
                    values, self._settings.queue_limit, attach if init_image else None
                )
            except LookupError:  # the project was deleted while this was checked
                raise NotFound("project", project_id) from None
        if queued is None:
            raise QueueFull(self._settings.queue_limit, self.retry_after_s())
        self._wake(device.id)
        self._hub.submitted(project_id)
        return GenerationAccepted(
            id=queued.id,
            status=QUEUED,
            position=queued.ahead,
            url=f"/api/v1/generations/{queued.id}",
            events_url=f"/api/v1/generations/{queued.id}/events",
            warnings=warnings,
        )

    def _model(self, name: str | None) -> tuple[str, str | None]:
        """The name and short hash of the model called `name` (None → the built-in): one in
        this host's models folder, else one a live node holds (a web host need not have the
        files); InvalidField when neither has it."""
        try:
            entry = self._models.resolve(name)
        except InvalidField:
            wanted = (name or "").strip()
            for held in self._hardware.node_models():
                if wanted in (held.name, held.short_hash, held.sha256):
                    return held.name, held.short_hash
            raise
        return entry.name, entry.short_hash

    def _inputs(self, request: GenerationCreate) -> Inputs:
        """What the engine paints from: the init image as RGB (alpha dropped, as the A1111
        route does) — uploaded, or the gallery image `init_image_id` names — and the mask as
        greyscale (white = repaint)."""
        if request.init_image_id is not None:
            if request.init_image:
                raise InvalidField(
                    "init_image_id",
                    request.init_image_id,
                    "send either init_image (an image file) or init_image_id (a gallery "
                    "image), not both",
                )
            init_image = self._gallery.init_image(request.init_image_id)
        elif request.init_image:
            init_image = decode_image(request.init_image, "init_image").convert("RGB")
        else:
            init_image = None
        mask = decode_image(request.mask, "mask").convert("L") if request.mask else None
        return init_image, mask

    def retry_after_s(self) -> float:
        """When a queue slot should free up: the soonest end among running jobs, else 5 s."""
        etas = [p.eta_s for p in self._hub.running() if p.eta_s is not None]
        return min(etas) + 1.0 if etas else 5.0

    # -- reading ----------------------------------------------------------------------------

    def _position(self, session: Session, row: Generation) -> int | None:
        """How many jobs run or wait before `row` on its device; None once it has started."""
        if row.status != QUEUED:
            return None
        ahead = session.scalar(
            select(func.count(Generation.id)).where(
                Generation.device == row.device,
                ((Generation.status == QUEUED) & (Generation.id < row.id))
                | (Generation.status == RUNNING),
            )
        )
        return ahead or 0

    @staticmethod
    def _positions(session: Session, rows: list[Generation]) -> dict[int, int]:
        """`_position` of every queued row in `rows`, from one look at the queue (at most the
        queue limit of rows) rather than one count each."""
        if not any(row.status == QUEUED for row in rows):
            return {}
        queued_before: dict[int, int] = {}  # queued id → queued jobs ahead on its device
        queued: dict[str, int] = {}
        running: dict[str, int] = {}
        active = session.execute(
            select(Generation.device, Generation.id, Generation.status)
            .where(Generation.status.in_((QUEUED, RUNNING)))
            .order_by(Generation.id)
        )
        for device, generation_id, status in active:
            if status == QUEUED:
                queued_before[generation_id] = queued.get(device, 0)
                queued[device] = queued.get(device, 0) + 1
            else:
                running[device] = running.get(device, 0) + 1
        return {
            row.id: queued_before[row.id] + running.get(row.device, 0)
            for row in rows
            if row.id in queued_before
        }

    def _view(
        self,
        session: Session,
        row: Generation,
        position: int | None = None,
        nodes: list[Node] | None = None,
    ) -> GenerationOut:
        """`position`: the row's, when the caller looked it up already; `nodes`: the live
        nodes, when the caller read them already (one read for a whole list)."""
        progress = None
        state = self._hub.get(row.id)
        if row.status == RUNNING and state is not None:
            progress = ProgressOut(
                step=state.step,
                total=state.total,
                eta_s=state.eta_s,
                step_seconds=state.step_seconds,
                preview=state.preview_data_url,
            )
        if position is None:
            position = self._position(session, row)
        waiting = None
        if row.status == QUEUED:
            waiting = self._hardware.waiting_reason(row.device, row.model, row.model_hash, nodes)
        return generation_view(row, row.images, position, progress, waiting)

    def view(self, generation_id: int) -> GenerationOut:
        with self._db.session() as session:
            row = session.scalar(
                select(Generation)
                .options(selectinload(Generation.images))
                .where(Generation.id == generation_id)
            )
            if row is None:
                raise NotFound("generation", generation_id)
            return self._view(session, row)

    def filmstrip_file(self, generation_id: int) -> str:
        """The key of the generation's filmstrip PNG; NotFound when it kept none."""
        with self._db.session() as session:
            row = session.get(Generation, generation_id)
            if row is None:
                raise NotFound("generation", generation_id)
            relative = row.filmstrip_path
        if relative is None:
            raise NotFound("filmstrip of generation", generation_id)
        return relative

    def page(
        self, project_id: int, offset: int, limit: int, status: str | None = None
    ) -> tuple[list[GenerationOut], int]:
        """A project's generations, newest first."""
        with self._db.session() as session:
            if session.get(Project, project_id) is None:
                raise NotFound("project", project_id)
            where = [Generation.project_id == project_id]
            if status is not None:
                where.append(Generation.status == status)
            total = session.scalar(select(func.count(Generation.id)).where(*where))
            rows = session.scalars(
                select(Generation)
                .options(selectinload(Generation.images))
                .where(*where)
                .order_by(Generation.id.desc())
                .offset(offset)
                .limit(limit)
            )
            listed = list(rows)
            positions = self._positions(session, listed)
            nodes = self._hardware.nodes() if positions else None  # some row is queued
            views = [self._view(session, row, positions.get(row.id), nodes) for row in listed]
            return views, total or 0

    def project_jobs(self, project_id: int, after: int) -> ProjectJobs:
        """The project's queued and running jobs, and all its jobs newer than `after` whatever
        their status, oldest first: what its event stream reads (`routes/project_events.py`).
        Two index lookups (by status, and by project from `after` on), so it costs the same in
        a project of ten jobs or of ten thousand. NotFound without the project."""
        with self._db.session() as session:
            if session.get(Project, project_id) is None:
                raise NotFound("project", project_id)
            mine = Generation.project_id == project_id
            latest = session.scalar(select(func.max(Generation.id)).where(mine)) or 0
            active = select(Generation.id).where(mine, Generation.status.in_((QUEUED, RUNNING)))
            newer = select(Generation.id).where(mine, Generation.id > after)
            # (never compared with an id beyond the column's range: 32 bits on PostgreSQL)
            wanted = Generation.id.in_(active.union(newer) if after < latest else active)
            rows = session.scalars(
                select(Generation)
                .options(selectinload(Generation.images))
                .where(wanted)
                .order_by(Generation.id)
            )
            listed = list(rows)
            positions = self._positions(session, listed)
            nodes = self._hardware.nodes() if positions else None  # some row is queued
            views = [self._view(session, row, positions.get(row.id), nodes) for row in listed]
            return ProjectJobs(latest, views)

    def wait(self, generation_id: int, timeout: float) -> GenerationOut:
        """Block until the generation has finished (or `timeout` passed); its final view.

        For synchronous front ends (the A1111 API answers txt2img with the images).
        """
        deadline = time.monotonic() + timeout
        version = 0
        while True:
            view = self.view(generation_id)
            left = deadline - time.monotonic()
            if view.status in FINISHED or left <= 0:
                return view
            # Wake on any progress change, and re-read the database at least every poll period
            # (the job may belong to another process's worker).
            state = self._hub.wait(generation_id, version, min(left, self._settings.poll_s))
            version = state.version if state is not None else version

    def estimate(
        self,
        device: str,
        dtype: str | None,
        model: str | None,
        width: int | None,
        height: int | None,
        steps: int,
        batch: int,
    ) -> Estimate:
        entry = self._models.resolve(model)
        width = width or entry.native_size
        height = height or entry.native_size
        if width is None or height is None:
            return Estimate(None, "the model's native size is not known yet")
        # Speeds are kept per node's device: the first live device the job may run on that
        # has one measured (a plain id from before nodes counts too).
        first: Estimate | None = None
        for candidate in (*self._hardware.matching(device), device):
            found = self._speeds.estimate(
                candidate, entry.short_hash, dtype, width, height, steps, batch
            )
            if found.seconds is not None:
                return found
            first = first or found
        assert first is not None
        return first

    # -- changing ---------------------------------------------------------------------------

    def cancel(self, generation_id: int, keep_partial: bool = False) -> GenerationOut:
        """Cancel a queued job at once, or ask a running one to stop at its next step; with
        `keep_partial` (A1111's interrupt) the running job keeps the images it has made so far,
        partly denoised, and ends `interrupted`. DatabaseUnavailable while the database
        refuses writes."""
        self._db.require_writes()
        outcome = self._queue.cancel(generation_id, keep_partial)
        if outcome is None:
            raise NotFound("generation", generation_id)
        if not outcome.changed:
            raise Conflict(f"generation {generation_id} has already {outcome.status}")
        if outcome.status == RUNNING:
            self._hub.request_cancel(generation_id, keep_partial)
        return self.view(generation_id)

    def delete(self, generation_id: int) -> None:
        """Delete a finished or queued generation and its files; a running one must be
        canceled first (Conflict). DatabaseUnavailable while the database refuses writes."""
        self._db.require_writes()
        with self._db.session() as session:
            row = session.scalar(
                select(Generation)
                .options(selectinload(Generation.images))
                .where(Generation.id == generation_id)
            )
            if row is None:
                raise NotFound("generation", generation_id)
            files: list[str | None] = [row.filmstrip_path]
            files += [p for image in row.images for p in (image.path, image.thumb_path)]
            gone = session.execute(
                delete(Generation).where(
                    Generation.id == generation_id, Generation.status != RUNNING
                )
            )
            if getattr(gone, "rowcount", 0) == 0:
                raise Conflict(f"generation {generation_id} is running; cancel it first")
        self._storage.delete(*files)
        self._storage.delete_inputs(generation_id)
