"""`DeviceWorker`: the thread that runs one device's jobs, oldest first, one at a time or, with
DALI_BATCH_MAX above 1, several matching ones in one denoising loop.

It is given a `WorkerContext` (services/worker_context.py) — nothing else — so the same class
runs in the server process and in a worker process. For each job it claims the row (queued →
running, a conditional UPDATE), resolves the model, runs the `Generator` with a step callback
(progress, ETA, a preview every few steps) and a cancel check (its own cancel requests, server
stopping, or — once a second — the row's `cancel_requested`, so another process can cancel),
writes every PNG and thumbnail (and the run's filmstrip, when the engine kept one), and then in
one transaction inserts the image rows and marks the job succeeded — or interrupted, when an
interrupt (`keep_partial`, or the row's `interrupt_requested`) stopped it keeping its images.
Any failure leaves no file behind and is recorded with its `FailureKind` (through the job
queue, like every status change). A database that refuses that last write delays it, up to a
point (services/job_outcomes.py).

Batching: `JobQueue.claim_batch` claims the oldest queued job and up to DALI_BATCH_MAX − 1
younger ones that match it, and `Generator.generate_batch` runs them together (on the CPU
each image bit for bit as alone: sd_core/batched.py). Each job keeps its own step callbacks
(progress, previews, its cancel and interrupt), and is saved and ended on its own: one job's
failure or cancel never loses another's images.

Between jobs it runs the small tasks asked of it, ahead of waiting jobs: benchmarks and the
diffusion explorer's forward process.

Its node (services/nodes.py) is `settings.resolved_node_name`: it claims the jobs that ask for
one of its device's forms ("gpu-b/cuda:0", "cuda:0", "cuda", "auto") and a model its node
holds, records the node in the row and the PNG's `dali` chunk, and keeps measured speeds under
the `node/device` id. With nothing to claim it waits in `wait_for_work`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sd_core.result import GenerationResult
from stable_diffusion_api.db import DatabaseUnavailable
from stable_diffusion_api.errors import DomainError
from stable_diffusion_api.models import (
    CANCELED,
    FAILED,
    QUEUED,
    SUCCEEDED,
    WITH_IMAGES,
    FailureKind,
    Generation,
    JobStatus,
    utcnow,
)
from stable_diffusion_api.services.generations import generation_view
from stable_diffusion_api.services.generator import (
    BatchEntry,
    Filmstrip,
    ForwardResult,
    ForwardSpec,
    JobCanceled,
    JobSpec,
)
from stable_diffusion_api.services.job_outcomes import Outcomes, Unsaved
from stable_diffusion_api.services.job_params import params_from_row
from stable_diffusion_api.services.job_queue import CANCELED_RUNNING, INTERRUPTED
from stable_diffusion_api.services.nodes import accepted_forms, held_models, qualified
from stable_diffusion_api.services.registry import ModelEntry
from stable_diffusion_api.services.run_failures import failure_of
from stable_diffusion_api.services.run_reporting import RunTiming, StepReporter
from stable_diffusion_api.services.worker_context import (
    Benchmark,
    ForwardFailed,
    WorkerContext,
)
from stable_diffusion_api.services.worker_tasks import run_benchmark, run_forward

log = logging.getLogger(__name__)

# The longest wait between two looks at a database that refuses them (doubling from the poll).
MAX_BACKOFF_S = 15.0


class ServerGone(JobCanceled):
    """The server process a worker process reports to is gone (killed, crashed): its job was
    interrupted, not broken — recorded as such, not as an internal BrokenPipeError."""


@dataclass
class _Running:
    """A claimed job on its way through the worker: its row, its project's name, its timing
    and step callbacks, its model once resolved, the filmstrip the engine hands over."""

    row: Generation
    project_name: str
    timing: RunTiming
    reporter: StepReporter
    model: ModelEntry | None = None
    filmstrips: list[Filmstrip] = field(default_factory=list)
    began: float = 0.0  # when its engine run started (perf_counter)


def _raise(exc: Exception) -> GenerationResult:
    raise exc


def _given(result: GenerationResult) -> GenerationResult:
    return result


class DeviceWorker(threading.Thread):
    """Runs one device's jobs, oldest first, alone or batched (a `Worker`)."""

    def __init__(self, context: WorkerContext, device: str) -> None:
        super().__init__(name=f"dali-worker-{device}", daemon=True)
        self.context = context
        self.device = device
        self._wakeup = threading.Event()
        self._benchmarks: deque[Benchmark] = deque()
        self._forwards: deque[tuple[ForwardSpec, Future[ForwardResult]]] = deque()
        self._cancels: set[int] = set()
        self._interrupts: set[int] = set()  # cancels that keep what the run made
        # Per running job: its row asked for an interrupt; when its row was last read.
        self._db_interrupts: set[int] = set()
        self._db_checked: dict[int, float] = {}
        self._outcomes = Outcomes(context)
        self.node = context.settings.resolved_node_name
        self.forms = accepted_forms(self.node, device)  # the jobs' devices it runs
        self._held: tuple[list[str], list[str]] = ([], [])  # its node's models: names, hashes
        self._held_at: float | None = None
        self._backoff = 0.0  # seconds to wait after the database refused the last look

    @property
    def pid(self) -> int | None:
        return os.getpid()

    # -- what others ask of it (any thread) -------------------------------------------------

    def wake(self) -> None:
        self._wakeup.set()

    def request_cancel(self, job_id: int, keep_partial: bool = False) -> None:
        (self._interrupts if keep_partial else self._cancels).add(job_id)

    def request_benchmark(self, benchmark: Benchmark) -> None:
        self._benchmarks.append(benchmark)
        self._wakeup.set()

    def request_forward(self, spec: ForwardSpec) -> Future[ForwardResult]:
        future: Future[ForwardResult] = Future()
        self._forwards.append((spec, future))
        self._wakeup.set()
        return future

    def stop(self) -> None:
        """Wake the thread so it sees `context.stopping` (set by the pool) and ends."""
        self._wakeup.set()

    # -- the thread -------------------------------------------------------------------------

    def run(self) -> None:
        context = self.context
        while not context.stopping.is_set():
            try:
                self._wakeup.clear()  # before looking, so a wake-up during the look is kept
                if self._forwards:
                    self._forward(*self._forwards.popleft())
                    continue
                if self._benchmarks:
                    self._benchmark(self._benchmarks.popleft())
                    continue
                # A job's end the database refused goes in first: no claim before (a claim is
                # a write, too).
                if not self._outcomes.write_unwritten():
                    self.wait_for_work()
                    continue
                claimed = self._claim()
                self._backoff = 0.0
                if not claimed:
                    self.wait_for_work()
                    continue
                try:
                    if len(claimed) == 1:
                        self._run(*claimed[0])
                    else:
                        self._run_batch(claimed)
                finally:
                    # Requests for jobs it is not running (another device's, or ended) go too:
                    # a job is only canceled once it runs, after its claim.
                    self._cancels.clear()
                    self._interrupts.clear()
                    self._db_interrupts.clear()
                    self._db_checked.clear()
            except DatabaseUnavailable:  # the database has logged why: look again, backing off
                poll = context.settings.poll_s
                self._backoff = min(max(poll, 2 * self._backoff), max(poll, MAX_BACKOFF_S))
                context.stopping.wait(self._backoff)
            except Exception:  # a broken job or a database hiccup must not kill the worker
                log.exception("worker %s: unexpected error", self.device)
                time.sleep(context.settings.poll_s)
        while self._forwards:  # nobody is going to run them: their callers hear it now
            _, future = self._forwards.popleft()
            if future.set_running_or_notify_cancel():
                future.set_exception(
                    ForwardFailed("the worker stopped before running it", FailureKind.INTERRUPTED)
                )

    def _claim(self) -> list[tuple[Generation, str]]:
        """The next job this worker may run (its device forms, its node's models), or with
        DALI_BATCH_MAX above 1 up to that many that run together (`JobQueue.claim_batch`);
        empty when nothing waits."""
        context = self.context
        route = (self.forms, context.instance_id)
        held, most = self._models_held(), context.settings.batch_max
        if most > 1:
            return context.jobs.claim_batch(*route, most, held, self.node)
        claimed = context.jobs.claim(*route, held, self.node)
        return [] if claimed is None else [claimed]

    def wait_for_work(self) -> None:
        """The one place this worker waits for work: until `wake()` (a job queued in this
        process, a benchmark, a stop) or the poll interval, after which it looks at the queue
        again. A node on another host than the web server learns of new jobs by this poll;
        a PostgreSQL notification (LISTEN/NOTIFY) can call `wake()` to cut the wait short."""
        self._wakeup.wait(self.context.settings.poll_s)

    def _models_held(self) -> tuple[list[str], list[str]]:
        """The names and short hashes of the models its node holds, looked up again every
        heartbeat interval (a file dropped in is claimed for soon after)."""
        now = time.monotonic()
        if self._held_at is None or now - self._held_at > self.context.settings.heartbeat_s:
            held = held_models(self.context.models.list())
            names = [m.name for m in held]
            self._held = (names, [m.short_hash for m in held if m.short_hash])
            self._held_at = now
        return self._held

    def _should_cancel(self, job_id: int) -> bool:
        context = self.context
        if context.stopping.is_set() or job_id in self._cancels:
            return True
        now = time.monotonic()
        if now - self._db_checked.get(job_id, 0.0) < 1.0:
            return False
        # Another process (the Gradio UI, a second server) may have asked: look once a second.
        self._db_checked[job_id] = now
        try:
            asked = context.jobs.stop_requested(job_id)  # a cancel also when the project is gone
        except DatabaseUnavailable:  # it cannot say now; the run goes on
            return False
        if asked.interrupt:
            self._db_interrupts.add(job_id)
        return asked.cancel

    def _should_interrupt(self, job_id: int) -> bool:
        """Whether to end the run keeping what it made: asked here, or by the row (read with
        the cancel check, once a second)."""
        return job_id in self._interrupts or job_id in self._db_interrupts

    def _begin(self, row: Generation, project_name: str) -> _Running:
        """A claimed job announced to the hub, with its timing and step callbacks."""
        context = self.context
        context.hub.start(row.id, row.steps)
        timing = RunTiming()
        # The claim has just seen the row queued; the database is next asked in a second.
        self._db_checked[row.id] = time.monotonic()
        self._db_interrupts.discard(row.id)
        reporter = StepReporter(context.hub, context.settings, row.id, timing,
                                self._should_cancel, self._should_interrupt)  # fmt: skip
        return _Running(row, project_name, timing, reporter)

    def _prepare(self, job: _Running) -> JobSpec:
        """The engine's job for `job` (its model resolved: kept on it)."""
        job.model = self._model(job.row)
        return self._job_spec(job.row, job.model)

    def _run(self, row: Generation, project_name: str) -> None:
        job = self._begin(row, project_name)

        def make() -> GenerationResult:
            spec = self._prepare(job)
            job.began = time.perf_counter()
            return self.context.engine.generate(
                spec, job.reporter.on_step, job.reporter.should_cancel,
                on_filmstrip=job.filmstrips.append, should_interrupt=job.reporter.should_interrupt,
            )  # fmt: skip

        self._settle(job, make)

    def _run_batch(self, claimed: list[tuple[Generation, str]]) -> None:
        """Run jobs `claim_batch` gave together (one `Generator.generate_batch` call), then
        save and end each one on its own: one job's failure or cancel is its own."""
        jobs = [self._begin(row, project_name) for row, project_name in claimed]
        ready: list[tuple[_Running, JobSpec]] = []
        for job in jobs:
            try:
                ready.append((job, self._prepare(job)))
            except Exception as exc:
                self._settle(job, partial(_raise, exc))
        if not ready:
            return
        began = time.perf_counter()
        for job, _ in ready:
            job.began = began
        entries = [
            BatchEntry(
                spec,
                job.reporter.on_step,
                job.reporter.should_cancel,
                job.filmstrips.append,
                job.reporter.should_interrupt,
            )  # fmt: skip
            for job, spec in ready
        ]
        try:
            outcomes: list[GenerationResult | Exception] = list(
                self.context.engine.generate_batch(entries)
            )
        except Exception as exc:  # shared by every job of the run
            outcomes = [exc] * len(ready)
        for (job, _), outcome in zip(ready, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self._settle(job, partial(_raise, outcome), alone=False)
            else:
                self._settle(job, partial(_given, outcome), alone=False)

    def _settle(
        self,
        job: _Running,
        make: Callable[[], GenerationResult],
        alone: bool = True,
    ) -> None:
        """Get the run's result from `make` (which may raise), save its images and end the
        job: succeeded, interrupted, canceled or failed, each through the job queue, and told
        to the hub. A job run `alone` records the
        speed it measured (a shared run's steps served several jobs)."""
        context, row = self.context, job.row
        job_id, timing, filmstrips = row.id, job.timing, job.filmstrips
        written: list[str] = []
        status: JobStatus = FAILED
        kind, error, result = FailureKind.INTERNAL, "internal error: the run did not end", None
        measured: Callable[[], None] | None = None
        handed_back = False
        try:
            made = make()
            model = job.model
            assert model is not None, "make() resolved the model"
            # Stopped early on request: its images as they were then, the job interrupted.
            ending = SUCCEEDED if made.interrupted_at is None else JobStatus.INTERRUPTED
            sampled = time.monotonic()
            timing.engine = time.perf_counter() - job.began - timing.reporting
            began = time.perf_counter()
            images_rows = self._save(row, job.project_name, made, written)
            filmstrip = self._save_filmstrip(row, filmstrips[-1], written) if filmstrips else None
            timing.saving = time.perf_counter() - began
            result = self._succeed(
                row, model, made, images_rows, timing, written, filmstrip, ending
            )
            if result is not None:
                status = ending
                if images_rows and ending == SUCCEEDED and alone:
                    measured = partial(
                        self._record_speed, row, model, images_rows[0], timing, sampled
                    )
            else:  # the row went (project deleted) or is no longer ours: nothing to record
                status, kind, error = CANCELED, FailureKind.CANCELLED, CANCELED_RUNNING
        except Unsaved as exc:  # its files are in quarantine now
            kind, error = FailureKind.INTERNAL, str(exc)
            written.clear()
        except JobCanceled as exc:
            stopped = context.stopping.is_set() and job_id not in self._cancels
            if stopped and context.hand_back and not isinstance(exc, ServerGone):
                handed_back = True  # a node stopping: the job goes back to the queue
            elif isinstance(exc, ServerGone) or stopped:
                kind, error = FailureKind.INTERRUPTED, INTERRUPTED
            else:
                status, kind, error = CANCELED, FailureKind.CANCELLED, CANCELED_RUNNING
        except Exception as exc:
            kind, error = failure_of(exc)
            if kind is not FailureKind.INVALID_INPUT:
                log.exception("generation %d failed", job_id)
        finally:
            if handed_back and self._hand_back(job_id, written):
                context.hub.finish(job_id, QUEUED)
            else:
                if status not in WITH_IMAGES:
                    context.storage.delete(*written)
                    columns = {"step_seconds": timing.step_seconds}
                    result = self._outcomes.finish(row, status, kind, error, columns)
                context.hub.finish(job_id, status, result)
        if measured is not None:  # after the news is out: nobody waits for an estimate's input
            measured()

    def _model(self, row: Generation) -> ModelEntry:
        """The claimed job's model: by its name, or — a node may name the same file
        otherwise — by its short hash."""
        try:
            return self.context.models.resolve(row.model)
        except DomainError:
            if row.model_hash is None:
                raise
            return self.context.models.resolve(row.model_hash)

    def _hand_back(self, job_id: int, written: list[str]) -> bool:
        """Drop what the stopped run wrote and return its job to the queue; False when the
        database refuses (then the job ends interrupted, as any stopped run)."""
        self.context.storage.delete(*written)
        try:
            back = self.context.jobs.hand_back(job_id, self.context.instance_id)
        except DatabaseUnavailable:
            return False
        if back:
            log.info("generation %d handed back to the queue (node %s stopping)", job_id,
                     self.node)  # fmt: skip
        return back

    def _job_spec(self, row: Generation, model: ModelEntry) -> JobSpec:
        """The engine's job for the claimed `row`, run with `model`."""
        storage = self.context.storage
        return JobSpec(
            model=model.on(self.device, row.dtype, row.low_memory),
            params=params_from_row(row),
            init_image=storage.load_input(row.init_image) if row.init_image else None,
            mask=storage.load_input(row.mask) if row.mask else None,
            filmstrip_frames=self.context.settings.filmstrip_frames,
        )

    def _save(
        self, row: Generation, project_name: str, made: GenerationResult, written: list[str]
    ) -> list[dict[str, Any]]:
        """Write every PNG (metadata naming the project) and thumbnail; the rows to insert."""
        rows = []
        for index, image in enumerate(made.images):
            dali = made.metadata(index)
            dali.update(project=project_name, project_id=row.project_id, generation_id=row.id,
                        node=self.node)  # fmt: skip
            image.info["dali"] = json.dumps(dali)
            if self.context.hand_back:  # a node of a scaled-out studio: its infotext names it
                image.info["parameters"] = f"{image.info['parameters']}, Node: {self.node}"
            path, thumb = self.context.storage.image_paths(row.project_id, row.id, index)
            written.append(path)
            self.context.storage.save_png(image, path)
            written.append(thumb)
            self.context.storage.write_thumbnail(image, thumb)
            rows.append(
                {
                    "generation_id": row.id,
                    "project_id": row.project_id,
                    "index": index,
                    "seed": made.seeds[index],
                    "path": path,
                    "thumb_path": thumb,
                    "width": image.width,
                    "height": image.height,
                    "parameters": str(image.info["parameters"]),  # as the result wrote it
                }
            )
        return rows

    def _save_filmstrip(
        self, row: Generation, filmstrip: Filmstrip, written: list[str]
    ) -> dict[str, object]:
        """Write the strip PNG; the generation's columns that point at it and describe it."""
        path = self.context.storage.filmstrip_path(row.project_id, row.id)
        written.append(path)
        self.context.storage.write_filmstrip(filmstrip.image, path)
        frames = [{"step": f.step, "total": f.total, "sigma": f.sigma} for f in filmstrip.frames]
        meta = {
            "width": filmstrip.image.width,
            "height": filmstrip.image.height,
            "frames": frames,
            "decoder": filmstrip.decoder,
        }
        return {"filmstrip_path": path, "filmstrip": meta}

    def _succeed(
        self,
        row: Generation,
        model: ModelEntry,
        made: GenerationResult,
        images: list[dict[str, Any]],
        timing: RunTiming,
        written: list[str],
        filmstrip: dict[str, object] | None = None,
        status: JobStatus = SUCCEEDED,
    ) -> dict[str, Any] | None:
        """Insert the image rows and mark the job succeeded (or, with `status`, interrupted),
        in one transaction — unless the job's row is gone (project deleted) or no longer ours
        (then None, and the files are to be dropped). A job asking for the model's default
        sampler records the sampler that ran (from `made`, with the prompt's warnings);
        `filmstrip` holds the filmstrip columns when the run kept one. Returns the finished generation's view (for the event streams).
        Unsaved when the database refuses it for too long (`written`, its files, are then in
        quarantine)."""
        if row.width is None and images:
            try:
                self.context.models.learn_native_size(model, images[0]["width"])
            except DatabaseUnavailable:  # only a hint for estimates: the job matters more
                log.warning("generation %d: the model's native size was not saved", row.id)
        columns = {
            "finished_at": utcnow(),
            "step_seconds": timing.step_seconds,
            "model_hash": model.short_hash,
            "sampler": made.params.sampler,
            "warnings": list(made.warnings) or None,
            "timings": timing.spent(),
            **(filmstrip or {}),
        }
        done = self._outcomes.succeed(row.id, columns, images, written, status)
        if done is None:
            return None
        return generation_view(*done).model_dump(mode="json")

    def _record_speed(
        self,
        row: Generation,
        model: ModelEntry,
        image: dict[str, Any],
        timing: RunTiming,
        sampled: float,
    ) -> None:
        """Keep the speed a finished single-image run measured (for estimates); `sampled` is
        when sampling and decoding ended. A failure here is logged: the job has succeeded."""
        step_seconds = timing.step_seconds
        if row.batch != 1 or timing.steps < 2 or not step_seconds or model.short_hash is None:
            return
        overhead = (sampled - (timing.last_step or sampled)) + (time.monotonic() - sampled)
        try:
            self.context.speeds.record(
                qualified(self.node, self.device),
                model.short_hash,
                row.dtype,
                image["width"],
                image["height"],
                1.0 / step_seconds,
                overhead,
                "generation",
            )
        except Exception:
            log.exception("generation %d: recording its speed failed", row.id)

    def _forward(self, spec: ForwardSpec, future: Future[ForwardResult]) -> None:
        run_forward(self.context, self.device, spec, future)

    def _benchmark(self, benchmark: Benchmark) -> None:
        run_benchmark(self.context, self.node, benchmark)
