"""`DeviceWorker`: the thread that runs one device's jobs, one at a time, oldest first.

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

Between jobs it runs the small tasks asked of it, ahead of waiting jobs: benchmarks and the
diffusion explorer's forward process.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any

from sd_core.params import GenerationParams
from sd_core.result import GenerationResult
from stable_diffusion_api.db import DatabaseUnavailable
from stable_diffusion_api.errors import DomainError
from stable_diffusion_api.models import (
    CANCELED,
    FAILED,
    SUCCEEDED,
    WITH_IMAGES,
    FailureKind,
    Generation,
    JobStatus,
    utcnow,
)
from stable_diffusion_api.services.generations import generation_view
from stable_diffusion_api.services.generator import (
    Filmstrip,
    ForwardResult,
    ForwardSpec,
    JobCanceled,
    JobSpec,
)
from stable_diffusion_api.services.job_outcomes import Outcomes, Unsaved
from stable_diffusion_api.services.job_params import params_from_row
from stable_diffusion_api.services.job_queue import CANCELED_RUNNING, INTERRUPTED
from stable_diffusion_api.services.registry import ModelEntry
from stable_diffusion_api.services.run_reporting import RunTiming, StepReporter
from stable_diffusion_api.services.worker_context import (
    Benchmark,
    ForwardFailed,
    WorkerContext,
    forward_error,
)

log = logging.getLogger(__name__)

BENCHMARK_PROMPT = "a red circle in the center on a blue background"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether the engine ran out of device memory: torch's `OutOfMemoryError` (CUDA), or a
    RuntimeError saying so (MPS, the CPU allocator). By name, so torch need not be imported."""
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class ServerGone(JobCanceled):
    """The server process a worker process reports to is gone (killed, crashed): its job was
    interrupted, not broken — recorded as such, not as an internal BrokenPipeError."""


def failure_of(exc: Exception) -> tuple[FailureKind, str]:
    """The kind and the message a run that raised `exc` ends with (JobCanceled aside)."""
    if isinstance(exc, DatabaseUnavailable):  # not the inputs' fault
        return FailureKind.INTERNAL, f"internal error: {exc.reason}"
    if isinstance(exc, (ValueError, DomainError)):  # the engine or a check refused the inputs
        return FailureKind.INVALID_INPUT, str(exc)
    # The message is worded as it always was; the kind tells the two apart.
    message = f"internal error: {type(exc).__name__}: {exc}"
    return FailureKind.OUT_OF_MEMORY if is_out_of_memory(exc) else FailureKind.INTERNAL, message


class DeviceWorker(threading.Thread):
    """Runs one device's jobs, one at a time, oldest first (a `Worker`)."""

    def __init__(self, context: WorkerContext, device: str) -> None:
        super().__init__(name=f"dali-worker-{device}", daemon=True)
        self.context = context
        self.device = device
        self._wakeup = threading.Event()
        self._benchmarks: deque[Benchmark] = deque()
        self._forwards: deque[tuple[ForwardSpec, Future[ForwardResult]]] = deque()
        self._cancels: set[int] = set()
        self._interrupts: set[int] = set()  # cancels that keep what the run made
        self._db_interrupt = False  # the running job's row asked for an interrupt
        self._last_db_check = 0.0
        self._outcomes = Outcomes(context)

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
                    self._wakeup.wait(context.settings.poll_s)
                    continue
                claimed = context.jobs.claim(self.device, context.instance_id)
                if claimed is None:
                    self._wakeup.wait(context.settings.poll_s)
                    continue
                try:
                    self._run(*claimed)
                finally:
                    # Requests for jobs it is not running (another device's, or ended) go too:
                    # a job is only canceled once it runs, after its claim.
                    self._cancels.clear()
                    self._interrupts.clear()
            except DatabaseUnavailable:  # the database has logged why; look again after a poll
                time.sleep(context.settings.poll_s)
            except Exception:  # a broken job or a database hiccup must not kill the worker
                log.exception("worker %s: unexpected error", self.device)
                time.sleep(context.settings.poll_s)
        while self._forwards:  # nobody is going to run them: their callers hear it now
            _, future = self._forwards.popleft()
            if future.set_running_or_notify_cancel():
                future.set_exception(
                    ForwardFailed("the worker stopped before running it", FailureKind.INTERRUPTED)
                )

    def _should_cancel(self, job_id: int) -> bool:
        context = self.context
        if context.stopping.is_set() or job_id in self._cancels:
            return True
        now = time.monotonic()
        if now - self._last_db_check < 1.0:
            return False
        # Another process (the Gradio UI, a second server) may have asked: look once a second.
        self._last_db_check = now
        try:
            asked = context.jobs.stop_requested(job_id)  # a cancel also when the project is gone
        except DatabaseUnavailable:  # it cannot say now; the run goes on
            return False
        self._db_interrupt = asked.interrupt
        return asked.cancel

    def _should_interrupt(self, job_id: int) -> bool:
        """Whether to end the run keeping what it made: asked here, or by the row (read with
        the cancel check, once a second)."""
        return job_id in self._interrupts or self._db_interrupt

    def _run(self, row: Generation, project_name: str) -> None:
        context = self.context
        job_id = row.id
        context.hub.start(job_id, row.steps)
        timing = RunTiming()
        # The claim has just seen the row queued; the database is next asked in a second.
        self._last_db_check, self._db_interrupt = time.monotonic(), False
        written: list[str] = []
        status: JobStatus = FAILED
        kind, error, result = FailureKind.INTERNAL, "internal error: the run did not end", None
        measured: Callable[[], None] | None = None
        try:
            model = context.models.resolve(row.model)
            spec = self._job_spec(row, model)
            filmstrips: list[Filmstrip] = []
            reporter = StepReporter(context.hub, context.settings, job_id, timing,
                                    self._should_cancel, self._should_interrupt)  # fmt: skip
            began = time.perf_counter()
            made = context.engine.generate(
                spec, reporter.on_step, reporter.should_cancel, on_filmstrip=filmstrips.append,
                should_interrupt=reporter.should_interrupt,
            )  # fmt: skip
            # Stopped early on request: its images as they were then, the job interrupted.
            ending = SUCCEEDED if made.interrupted_at is None else JobStatus.INTERRUPTED
            sampled = time.monotonic()
            timing.engine = time.perf_counter() - began - timing.reporting
            began = time.perf_counter()
            images_rows = self._save(row, project_name, made, written)
            filmstrip = self._save_filmstrip(row, filmstrips[-1], written) if filmstrips else None
            timing.saving = time.perf_counter() - began
            result = self._succeed(
                row, model, made, images_rows, timing, written, filmstrip, ending
            )
            if result is not None:
                status = ending
                if images_rows and ending == SUCCEEDED:
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
            if isinstance(exc, ServerGone) or stopped:
                kind, error = FailureKind.INTERRUPTED, INTERRUPTED
            else:
                status, kind, error = CANCELED, FailureKind.CANCELLED, CANCELED_RUNNING
        except Exception as exc:
            kind, error = failure_of(exc)
            if kind is not FailureKind.INVALID_INPUT:
                log.exception("generation %d failed", job_id)
        finally:
            if status not in WITH_IMAGES:
                context.storage.delete(*written)
                columns = {"step_seconds": timing.step_seconds}
                result = self._outcomes.finish(row, status, kind, error, columns)
            context.hub.finish(job_id, status, result)
        if measured is not None:  # after the news is out: nobody waits for an estimate's input
            measured()

    def _job_spec(self, row: Generation, model: ModelEntry) -> JobSpec:
        """The engine's job for the claimed `row`, run with `model`."""
        storage = self.context.storage
        return JobSpec(
            model=model.on(row.device, row.dtype, row.low_memory),
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
            dali.update(project=project_name, project_id=row.project_id, generation_id=row.id)
            image.info["dali"] = json.dumps(dali)
            path, thumb = self.context.storage.image_paths(row.project_id, row.id, index)
            written.append(path)
            self.context.engine.save_png(image, self.context.storage.resolve(path))
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
                row.device,
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
        """Run the engine's forward process for a caller waiting on `future` (unless it has
        given up waiting). Refused inputs come back as ValueError, anything else as
        ForwardFailed with its kind — as they would from a worker process."""
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = self.context.engine.forward_process(spec)
        except Exception as exc:
            kind, message = failure_of(exc)
            if kind is not FailureKind.INVALID_INPUT:
                log.exception("forward process on %s failed", self.device)
            error = forward_error(kind, message)
            error.__cause__ = exc
            future.set_exception(error)
        else:
            future.set_result(result)

    def _benchmark(self, benchmark: Benchmark) -> None:
        if benchmark.kind == "autotune":
            self._autotune(benchmark)
            return
        context = self.context
        benchmark.mark("running")
        timing = RunTiming()
        spec = JobSpec(
            model=benchmark.model.on(benchmark.device, benchmark.dtype),
            params=GenerationParams(
                BENCHMARK_PROMPT,
                seed=0,
                steps=benchmark.steps,
                width=benchmark.width,
                height=benchmark.height,
            ),
        )
        try:
            images = context.engine.generate(
                spec, lambda step, total, preview: timing.step(step), context.stopping.is_set
            ).images
            decoded = time.monotonic()
            buffer = io.BytesIO()
            images[0].save(buffer, format="PNG")  # saving is part of the per-image cost
            overhead = (decoded - (timing.last_step or decoded)) + (time.monotonic() - decoded)
            step_seconds = timing.step_seconds
            if step_seconds and benchmark.model.short_hash:
                context.speeds.record(
                    benchmark.device,
                    benchmark.model.short_hash,
                    benchmark.dtype,
                    images[0].width,
                    images[0].height,
                    1.0 / step_seconds,
                    overhead,
                    "benchmark",
                )
            if benchmark.width is None:
                context.models.learn_native_size(benchmark.model, images[0].width)
            benchmark.mark("done")
        except JobCanceled:
            benchmark.mark("failed", "the server stopped")
        except Exception as exc:  # reported on the hardware page; the worker carries on
            log.exception("benchmark failed")
            benchmark.mark("failed", f"{type(exc).__name__}: {exc}")

    def _autotune(self, benchmark: Benchmark) -> None:
        """Try the device's fast paths with the benchmark's model (`Generator.autotune`); the
        figures go into `benchmark.result`, the choice into the engine's file."""
        benchmark.mark("running")
        model = benchmark.model.on(benchmark.device, benchmark.dtype)
        try:
            result = self.context.engine.autotune(model, benchmark.steps)
        except Exception as exc:  # reported on the hardware page; the worker carries on
            log.exception("autotune failed")
            benchmark.mark("failed", f"{type(exc).__name__}: {exc}")
        else:
            benchmark.mark("done", None, result)
