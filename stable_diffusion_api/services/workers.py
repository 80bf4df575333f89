"""The workers: one thread per device, running that device's queued jobs in order.

A worker claims the oldest queued row of its device (a conditional UPDATE queued → running, so
two workers, even in two processes sharing the database, never run the same job), runs it
through the `Generator`, writes each PNG atomically and its thumbnail, and only then, in one
transaction, inserts the image rows and marks the job succeeded. Progress goes to the
`ProgressHub` for the event streams.

Crash recovery: every process registers itself in `worker_processes` and beats a heartbeat. At
start-up (and periodically) a job left `running` by a process whose heartbeat stopped is marked
**failed with the reason "interrupted"** — never silently re-run, since a job that crashed the
server once would crash it again — while queued jobs simply continue. Image rows whose file has
gone are removed and image files no row points at are deleted, so no row points at a missing file.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from PIL import Image as PILImage
from sqlalchemy import delete, select, update

from stable_diffusion_api.config import Settings
from stable_diffusion_api.db import Database
from stable_diffusion_api.errors import DomainError
from stable_diffusion_api.models import (
    CANCELED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Generation,
    Image,
    WorkerProcess,
    utcnow,
)
from stable_diffusion_api.services.generator import Generator, JobCanceled, JobSpec, PreviewFn
from stable_diffusion_api.services.hardware import HardwareService
from stable_diffusion_api.services.progress import ProgressHub
from stable_diffusion_api.services.registry import ModelEntry, ModelRegistry
from stable_diffusion_api.services.speeds import SpeedService
from stable_diffusion_api.services.storage import ImageStorage

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the server stopped while this job was running"
BENCHMARK_PROMPT = "a red circle in the center on a blue background"


@dataclass
class Benchmark:
    device: str
    dtype: str | None
    model: ModelEntry
    width: int | None
    height: int | None
    steps: int
    status: str = "queued"  # queued, running, done, failed
    error: str | None = None


@dataclass
class _Timing:
    """Step timestamps of one run: the first step also pays for loading and text encoding,
    so speed is measured from the first step's end to the last step's end."""

    started: float = field(default_factory=time.monotonic)
    first_step: float | None = None
    last_step: float | None = None
    steps: int = 0

    def step(self, step: int) -> None:
        now = time.monotonic()
        if self.first_step is None:
            self.first_step = now
        self.last_step, self.steps = now, step

    @property
    def step_seconds(self) -> float | None:
        if self.first_step is None or self.last_step is None:
            return None
        if self.steps < 2:
            return self.first_step - self.started
        return (self.last_step - self.first_step) / (self.steps - 1)


@dataclass(frozen=True)
class RecoveryReport:
    interrupted: list[int]
    removed_rows: int
    removed_files: int


class WorkerPool:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        generator: Generator,
        hardware: HardwareService,
        models: ModelRegistry,
        storage: ImageStorage,
        hub: ProgressHub,
        speeds: SpeedService,
    ) -> None:
        self.settings = settings
        self.db = db
        self.generator = generator
        self.hardware = hardware
        self.models = models
        self.storage = storage
        self.hub = hub
        self.speeds = speeds
        self.instance_id = f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stopping = threading.Event()
        self.benchmarks: dict[tuple[object, ...], Benchmark] = {}
        self._workers: dict[str, DeviceWorker] = {}
        self._heartbeat: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> RecoveryReport:
        with self.db.session() as session:
            session.add(
                WorkerProcess(id=self.instance_id, hostname=socket.gethostname(), pid=os.getpid())
            )
        report = self.recover()
        if report.interrupted:
            log.warning("marked interrupted jobs failed: %s", report.interrupted)
        for device in self.hardware.devices:
            worker = DeviceWorker(self, device.id)
            self._workers[device.id] = worker
            worker.start()
        self._heartbeat = threading.Thread(target=self._beat, name="dali-heartbeat", daemon=True)
        self._heartbeat.start()
        return report

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every worker: a running job is canceled at its next step and marked
        interrupted, exactly as if the server had crashed."""
        self.stopping.set()
        for worker in self._workers.values():
            worker.wake.set()
        deadline = time.monotonic() + timeout
        for worker in self._workers.values():
            worker.join(max(0.0, deadline - time.monotonic()))
        if self._heartbeat is not None:
            self._heartbeat.join(max(0.0, deadline - time.monotonic()))
        with self.db.session() as session:
            session.execute(delete(WorkerProcess).where(WorkerProcess.id == self.instance_id))

    def wake(self, device: str) -> None:
        worker = self._workers.get(device)
        if worker is not None:
            worker.wake.set()

    def _beat(self) -> None:
        last_sweep = 0.0
        while not self.stopping.wait(self.settings.heartbeat_s):
            try:
                with self.db.session() as session:
                    session.execute(
                        update(WorkerProcess)
                        .where(WorkerProcess.id == self.instance_id)
                        .values(heartbeat_at=utcnow())
                    )
                if time.monotonic() - last_sweep > self.settings.stale_after_s:
                    last_sweep = time.monotonic()
                    self._fail_orphaned_jobs()
            except Exception:  # the heartbeat must outlive a locked or briefly absent database
                log.exception("heartbeat failed")

    # -- recovery ---------------------------------------------------------------------------

    def _fail_orphaned_jobs(self) -> list[int]:
        """Mark failed the running jobs of processes whose heartbeat stopped."""
        cutoff = utcnow() - dt.timedelta(seconds=self.settings.stale_after_s)
        with self.db.session() as session:
            alive = set(
                session.scalars(
                    select(WorkerProcess.id).where(WorkerProcess.heartbeat_at >= cutoff)
                )
            )
            alive.add(self.instance_id)
            session.execute(delete(WorkerProcess).where(WorkerProcess.id.not_in(alive)))
            orphans = [
                job_id
                for job_id, worker_id in session.execute(
                    select(Generation.id, Generation.worker_id).where(Generation.status == RUNNING)
                )
                if worker_id not in alive
            ]
            if orphans:
                session.execute(
                    update(Generation)
                    .where(Generation.id.in_(orphans), Generation.status == RUNNING)
                    .values(status=FAILED, error=INTERRUPTED, finished_at=utcnow())
                )
        return orphans

    def recover(self) -> RecoveryReport:
        """Start-up repair: interrupted jobs failed, dangling image rows and stray files gone."""
        interrupted = self._fail_orphaned_jobs()
        removed_rows = 0
        with self.db.session() as session:
            rows = session.execute(select(Image.id, Image.path, Image.thumb_path)).all()
            known: set[str] = set()
            for image_id, path, thumb in rows:
                if not self.storage.exists(path):
                    session.execute(delete(Image).where(Image.id == image_id))
                    self.storage.delete(thumb)
                    removed_rows += 1
                    continue
                known.update((path, thumb))
                if not self.storage.exists(thumb):  # a thumbnail can always be made again
                    with PILImage.open(self.storage.resolve(path)) as image:
                        self.storage.write_thumbnail(image, thumb)
            running = set(
                session.scalars(select(Generation.id).where(Generation.status == RUNNING))
            )
        removed_files = 0
        for generation_id, paths in self.storage.generation_files().items():
            if generation_id in running:
                continue  # another process is writing these right now
            for file in paths:
                if file.relative_to(self.storage.root).as_posix() not in known:
                    file.unlink(missing_ok=True)
                    removed_files += 1
        return RecoveryReport(interrupted, removed_rows, removed_files)

    # -- benchmarks -------------------------------------------------------------------------

    def request_benchmark(self, benchmark: Benchmark) -> Benchmark:
        """Queue a short speed measurement on the device's worker (ahead of waiting jobs)."""
        key = (benchmark.device, benchmark.dtype, benchmark.model.name, benchmark.width,
               benchmark.height)  # fmt: skip
        current = self.benchmarks.get(key)
        if current is not None and current.status in ("queued", "running"):
            return current
        self.benchmarks[key] = benchmark
        worker = self._workers[benchmark.device]
        worker.benchmarks.append(benchmark)
        worker.wake.set()
        return benchmark


class DeviceWorker(threading.Thread):
    """Runs one device's jobs, one at a time, oldest first."""

    def __init__(self, pool: WorkerPool, device: str) -> None:
        super().__init__(name=f"dali-worker-{device}", daemon=True)
        self.pool = pool
        self.device = device
        self.wake = threading.Event()
        self.benchmarks: deque[Benchmark] = deque()
        self._last_db_check = 0.0

    def run(self) -> None:
        pool = self.pool
        while not pool.stopping.is_set():
            try:
                self.wake.clear()  # before looking, so a wake-up during the look is kept
                if self.benchmarks:
                    self._benchmark(self.benchmarks.popleft())
                    continue
                job_id = self._claim()
                if job_id is None:
                    self.wake.wait(pool.settings.poll_s)
                    continue
                self._run(job_id)
            except Exception:  # a broken job or a database hiccup must not kill the worker
                log.exception("worker %s: unexpected error", self.device)
                time.sleep(pool.settings.poll_s)

    def _claim(self) -> int | None:
        with self.pool.db.session() as session:
            for _ in range(3):
                job_id = session.scalar(
                    select(Generation.id)
                    .where(Generation.status == QUEUED, Generation.device == self.device)
                    .order_by(Generation.id)
                    .limit(1)
                )
                if job_id is None:
                    return None
                claimed = session.execute(
                    update(Generation)
                    .where(Generation.id == job_id, Generation.status == QUEUED)
                    .values(status=RUNNING, worker_id=self.pool.instance_id, started_at=utcnow())
                )
                if getattr(claimed, "rowcount", 0) == 1:
                    return job_id
        return None

    def _should_cancel(self, job_id: int) -> bool:
        pool = self.pool
        if pool.stopping.is_set() or pool.hub.cancel_requested(job_id):
            return True
        now = time.monotonic()
        if now - self._last_db_check < 1.0:
            return False
        # Another process (the Gradio UI, a second server) may have asked: look once a second.
        self._last_db_check = now
        with pool.db.session() as session:
            row = session.execute(
                select(Generation.cancel_requested).where(Generation.id == job_id)
            ).first()
        return row is None or bool(row[0])  # a vanished row: its project was deleted

    def _run(self, job_id: int) -> None:
        pool = self.pool
        with pool.db.session() as session:
            row = session.get(Generation, job_id)
            assert row is not None, "a claimed job cannot vanish inside the claim"
            project_name = row.project.name
        pool.hub.start(job_id, row.steps)
        timing = _Timing()
        self._last_db_check = 0.0
        written: list[str] = []
        status, error = FAILED, None
        try:
            model = pool.models.resolve(row.model)
            spec = JobSpec(
                checkpoint=model.path,
                model_name=model.name,
                device=row.device,
                dtype=row.dtype,
                low_memory=row.low_memory,
                prompt=row.prompt,
                negative_prompt=row.negative_prompt,
                seed=row.seed,
                steps=row.steps,
                sampler=row.sampler,
                guidance=row.guidance,
                width=row.width,
                height=row.height,
                batch=row.batch,
                init_image=pool.storage.load_input(row.init_image) if row.init_image else None,
                strength=row.strength,
                mask=pool.storage.load_input(row.mask) if row.mask else None,
                variation_seed=row.variation_seed,
                variation_strength=row.variation_strength,
                parameter_count=model.parameter_count,
            )

            def on_step(step: int, total: int, preview: PreviewFn) -> None:
                timing.step(step)
                pool.hub.step(job_id, step, total, timing.step_seconds)
                if step % pool.settings.preview_every == 0 and step < total:
                    buffer = io.BytesIO()
                    preview().save(buffer, format="PNG")
                    pool.hub.preview(job_id, buffer.getvalue(), step)

            images = pool.generator.generate(spec, on_step, lambda: self._should_cancel(job_id))
            sampled = time.monotonic()
            images_rows = self._save(row, project_name, images, written)
            status = self._succeed(row, model, images_rows, timing)
            if status == SUCCEEDED:
                self._record_speed(row, model, images[0], timing, sampled)
        except JobCanceled:
            if pool.stopping.is_set() and not pool.hub.cancel_requested(job_id):
                error = INTERRUPTED
            else:
                status, error = CANCELED, "canceled while running"
        except (ValueError, DomainError) as exc:  # the engine or a check refused the inputs
            error = str(exc)
        except Exception as exc:
            log.exception("generation %d failed", job_id)
            error = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            if status != SUCCEEDED:
                pool.storage.delete(*written)
                self._finish(job_id, status, error, timing)
            pool.hub.finish(job_id, status)

    def _save(
        self, row: Generation, project_name: str, images: list[PILImage.Image], written: list[str]
    ) -> list[Image]:
        """Write every PNG (metadata naming the project) and thumbnail; the rows to insert."""
        rows = []
        for index, image in enumerate(images):
            try:
                dali = json.loads(str(image.info.get("dali", "{}")))
            except json.JSONDecodeError:
                dali = {}
            if not isinstance(dali, dict):
                dali = {}
            dali.update(project=project_name, project_id=row.project_id, generation_id=row.id)
            image.info["dali"] = json.dumps(dali)
            path, thumb = self.pool.storage.image_paths(row.project_id, row.id, index)
            written.append(path)
            self.pool.generator.save_png(image, self.pool.storage.resolve(path))
            written.append(thumb)
            self.pool.storage.write_thumbnail(image, thumb)
            rows.append(
                Image(
                    generation_id=row.id,
                    project_id=row.project_id,
                    index=index,
                    seed=int(image.info.get("seed", row.seed + index)),
                    path=path,
                    thumb_path=thumb,
                    width=image.width,
                    height=image.height,
                    parameters=str(image.info.get("parameters", "")),
                )
            )
        return rows

    def _succeed(
        self, row: Generation, model: ModelEntry, images: list[Image], timing: _Timing
    ) -> str:
        """Insert the image rows and mark the job succeeded, in one transaction — unless the
        job's row is gone (project deleted) or no longer ours (then the files are dropped)."""
        with self.pool.db.session() as session:
            marked = session.execute(
                update(Generation)
                .where(
                    Generation.id == row.id,
                    Generation.status == RUNNING,
                    Generation.worker_id == self.pool.instance_id,
                )
                .values(
                    status=SUCCEEDED,
                    finished_at=utcnow(),
                    step_seconds=timing.step_seconds,
                    model_hash=model.short_hash,
                )
            )
            if getattr(marked, "rowcount", 0) != 1:
                return CANCELED
            session.add_all(images)
        if row.width is None and images:
            self.pool.models.learn_native_size(model, images[0].width)
        return SUCCEEDED

    def _finish(self, job_id: int, status: str, error: str | None, timing: _Timing) -> None:
        with self.pool.db.session() as session:
            session.execute(
                update(Generation)
                .where(Generation.id == job_id, Generation.status == RUNNING)
                .values(
                    status=status,
                    error=error,
                    finished_at=utcnow(),
                    step_seconds=timing.step_seconds,
                )
            )

    def _record_speed(
        self,
        row: Generation,
        model: ModelEntry,
        image: PILImage.Image,
        timing: _Timing,
        sampled: float,
    ) -> None:
        step_seconds = timing.step_seconds
        if row.batch != 1 or timing.steps < 2 or not step_seconds or model.short_hash is None:
            return
        overhead = (sampled - (timing.last_step or sampled)) + (time.monotonic() - sampled)
        self.pool.speeds.record(
            row.device,
            model.short_hash,
            row.dtype,
            image.width,
            image.height,
            1.0 / step_seconds,
            overhead,
            "generation",
        )

    def _benchmark(self, benchmark: Benchmark) -> None:
        pool = self.pool
        benchmark.status = "running"
        timing = _Timing()
        spec = JobSpec(
            checkpoint=benchmark.model.path,
            model_name=benchmark.model.name,
            device=benchmark.device,
            dtype=benchmark.dtype,
            low_memory=False,
            prompt=BENCHMARK_PROMPT,
            seed=0,
            steps=benchmark.steps,
            width=benchmark.width,
            height=benchmark.height,
            parameter_count=benchmark.model.parameter_count,
        )
        try:
            images = pool.generator.generate(
                spec, lambda step, total, preview: timing.step(step), pool.stopping.is_set
            )
            decoded = time.monotonic()
            buffer = io.BytesIO()
            images[0].save(buffer, format="PNG")  # saving is part of the per-image cost
            overhead = (decoded - (timing.last_step or decoded)) + (time.monotonic() - decoded)
            step_seconds = timing.step_seconds
            if step_seconds and benchmark.model.short_hash:
                pool.speeds.record(
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
                pool.models.learn_native_size(benchmark.model, images[0].width)
            benchmark.status = "done"
        except JobCanceled:
            benchmark.status, benchmark.error = "failed", "the server stopped"
        except Exception as exc:  # reported on the hardware page; the worker carries on
            log.exception("benchmark failed")
            benchmark.status, benchmark.error = "failed", f"{type(exc).__name__}: {exc}"
