"""The workers: one per device (a thread, or a process: services/worker_process.py), running
that device's queued jobs in order, and small engine tasks between them.

The pool builds one `WorkerContext` (services/worker_context.py) for its worker threads and
holds each device's worker as a `Worker`, whatever runs it. A worker claims the oldest queued row of its device (a conditional UPDATE queued → running, so
two workers, even in two processes sharing the database, never run the same job), runs it
through the `Generator`, writes each PNG atomically and its thumbnail, and only then, in one
transaction, inserts the image rows and marks the job succeeded. Progress goes to the
`ProgressHub` for the event streams.

Crash recovery: every process registers itself in `worker_processes` and beats a heartbeat. At
start-up (and periodically) a job left `running` by a process whose heartbeat stopped is marked
**failed with the reason "interrupted"** — never silently re-run, since a job that crashed the
server once would crash it again — while queued jobs simply continue. Image rows whose file has
gone are removed (a generation whose filmstrip file has gone forgets it) and image or filmstrip
files no row points at are deleted, so no row points at a missing file.

The diffusion explorer's forward process runs on the device's worker too
(`WorkerPool.forward_process`), so the web process never loads a second pipeline.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, replace

from PIL import Image as PILImage
from sqlalchemy import delete, select, update

from stable_diffusion_api.config import Settings
from stable_diffusion_api.db import Database
from stable_diffusion_api.models import (
    RUNNING,
    FailureKind,
    Generation,
    Image,
    WorkerProcess,
    utcnow,
)
from stable_diffusion_api.services.device_worker import DeviceWorker
from stable_diffusion_api.services.generator import ForwardResult, ForwardSpec, Generator
from stable_diffusion_api.services.hardware import HardwareService
from stable_diffusion_api.services.job_queue import JobQueue
from stable_diffusion_api.services.progress import ProgressHub
from stable_diffusion_api.services.registry import ModelRegistry
from stable_diffusion_api.services.speeds import SpeedService
from stable_diffusion_api.services.storage import ImageStorage
from stable_diffusion_api.services.worker_context import (
    Benchmark,
    ForwardFailed,
    Worker,
    WorkerContext,
    benchmark_key,
)
from stable_diffusion_api.services.worker_process import ProcessWorker

log = logging.getLogger(__name__)


def pid_exists(pid: int) -> bool:
    """Whether a process with this pid runs on this host (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return pid > 0


@dataclass(frozen=True)
class RecoveryReport:
    interrupted: list[int]
    removed_rows: int
    quarantined_files: int  # files no row points at, moved to <data>/quarantine, not deleted


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
        mode: str = "thread",
        jobs: JobQueue | None = None,
    ) -> None:
        self.db = db
        self.hardware = hardware
        self.mode = mode  # "thread" or "process" (services/worker_process.py)
        self.benchmarks: dict[tuple[object, ...], Benchmark] = {}
        self._context = WorkerContext(
            settings=settings,
            jobs=jobs if jobs is not None else JobQueue(db),
            engine=generator,
            models=models,
            storage=storage,
            hub=hub,
            speeds=speeds,
            instance_id=f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
            stopping=threading.Event(),
        )
        self._workers: dict[str, Worker] = {}
        self._heartbeat: threading.Thread | None = None
        hub.cancel_listeners.append(self._cancel)

    @property
    def context(self) -> WorkerContext:
        return self._context

    @property
    def settings(self) -> Settings:
        return self._context.settings

    @property
    def jobs(self) -> JobQueue:
        return self._context.jobs

    @property
    def models(self) -> ModelRegistry:
        return self._context.models

    @property
    def storage(self) -> ImageStorage:
        return self._context.storage

    @property
    def instance_id(self) -> str:
        return self._context.instance_id

    @property
    def stopping(self) -> threading.Event:
        return self._context.stopping

    @property
    def generator(self) -> Generator:
        """The engine the worker threads run (a worker process builds its own)."""
        return self._context.engine

    @generator.setter
    def generator(self, engine: Generator) -> None:
        """Swap the engine (sd_gradio's tracing adapter): running threads take it for their
        next job."""
        self._context = replace(self._context, engine=engine)
        for worker in self._workers.values():
            if isinstance(worker, DeviceWorker):
                worker.context = self._context

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
            worker: Worker
            if self.mode == "process":
                worker = ProcessWorker(self._context, device.id)
            else:
                worker = DeviceWorker(self._context, device.id)
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
            worker.stop()
        deadline = time.monotonic() + timeout
        for worker in self._workers.values():
            worker.join(max(0.0, deadline - time.monotonic()))
        if self._heartbeat is not None:
            self._heartbeat.join(max(0.0, deadline - time.monotonic()))
        with self.db.session() as session:
            session.execute(delete(WorkerProcess).where(WorkerProcess.id == self.instance_id))

    @property
    def workers(self) -> dict[str, Worker]:
        return dict(self._workers)

    def wake(self, device: str) -> None:
        worker = self._workers.get(device)
        if worker is not None:
            worker.wake()

    def _cancel(self, job_id: int, keep_partial: bool = False) -> None:
        """A cancel asked on the hub: every worker hears it; the one running the job stops."""
        for worker in list(self._workers.values()):
            worker.request_cancel(job_id, keep_partial)

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
                self.db.writes_work()  # a refusal (disk full, …) is over: /health says so
                if time.monotonic() - last_sweep > self.settings.stale_after_s:
                    last_sweep = time.monotonic()
                    self._fail_orphaned_jobs()
            except Exception:  # the heartbeat must outlive a locked or briefly absent database
                log.exception("heartbeat failed")

    # -- recovery ---------------------------------------------------------------------------

    def _fail_orphaned_jobs(self) -> list[int]:
        """Mark failed the running jobs of processes whose heartbeat stopped, or which ran on
        this host under a pid that no longer exists (killed: no need to wait for the heartbeat
        to go stale)."""
        cutoff = utcnow() - dt.timedelta(seconds=self.settings.stale_after_s)
        here = socket.gethostname()
        with self.db.session() as session:
            fresh = session.execute(
                select(WorkerProcess.id, WorkerProcess.hostname, WorkerProcess.pid).where(
                    WorkerProcess.heartbeat_at >= cutoff
                )
            ).all()
            alive = {
                process_id
                for process_id, hostname, pid in fresh
                if hostname != here or pid_exists(pid)
            }
            alive.add(self.instance_id)
            session.execute(delete(WorkerProcess).where(WorkerProcess.id.not_in(alive)))
        return self.jobs.fail_orphaned(alive)

    def recover(self) -> RecoveryReport:
        """Start-up repair: interrupted jobs failed, dangling image rows and stray files gone."""
        interrupted = self._fail_orphaned_jobs()
        removed_rows = 0
        with self.db.session() as session:
            rows = session.execute(select(Image.id, Image.path, Image.thumb_path)).all()
            strips = session.execute(
                select(Generation.id, Generation.filmstrip_path).where(
                    Generation.filmstrip_path.is_not(None)
                )
            ).all()
            # One listing, taken after the rows were read (a row's file was written before the
            # row), instead of a request per file: on S3 that is thousands fewer round trips.
            present = self.storage.keys("images")
            known: set[str] = set()
            for image_id, path, thumb in rows:
                if path not in present:
                    session.execute(delete(Image).where(Image.id == image_id))
                    self.storage.delete(thumb)
                    removed_rows += 1
                    continue
                known.update((path, thumb))
                if thumb not in present:  # a thumbnail can always be made again
                    with self.storage.open_image(path) as image:
                        self.storage.write_thumbnail(image, thumb)
            for generation_id, strip in strips:
                if strip is not None and strip in present:
                    known.add(strip)
                else:
                    session.execute(
                        update(Generation)
                        .where(Generation.id == generation_id)
                        .values(filmstrip_path=None, filmstrip=None)
                    )
            running = set(
                session.scalars(select(Generation.id).where(Generation.status == RUNNING))
            )
        self.storage.remove_partial_writes(older_than_s=self.settings.stale_after_s)
        quarantined = 0
        # Files younger than the grace period are left alone: another node may have written
        # them and not yet the rows that point at them.
        settled = self.storage.generation_files(settled_for_s=self.settings.orphan_grace_s)
        for generation_id, keys in settled.items():
            if generation_id in running:
                continue  # another process is writing these right now
            for key in keys:
                if key not in known:
                    self.storage.quarantine(key)
                    quarantined += 1
        return RecoveryReport(interrupted, removed_rows, quarantined)

    # -- benchmarks -------------------------------------------------------------------------

    def request_benchmark(self, benchmark: Benchmark) -> Benchmark:
        """Queue a short speed measurement on the device's worker (ahead of waiting jobs)."""
        key = benchmark_key(benchmark)
        current = self.benchmarks.get(key)
        if current is not None and current.status in ("queued", "running"):
            return current
        self.benchmarks[key] = benchmark
        self._workers[benchmark.device].request_benchmark(benchmark)
        return benchmark

    # -- engine tasks -----------------------------------------------------------------------

    def forward_process(
        self,
        model: str,
        device: str,
        dtype: str | None,
        image: PILImage.Image,
        timesteps: list[int],
        seed: int,
        timeout: float,
    ) -> ForwardResult:
        """The forward process q(x_t | x0) of `image` at each of `timesteps` (one noise draw
        from `seed`), run by `device`'s worker with `model` ("" → the built-in) in `dtype`
        (None → the device's default), after the job it may be running. Raises InvalidField
        for an unknown model, device or dtype, ValueError for inputs the engine refuses (a
        timestep out of range), ForwardFailed when the run failed otherwise, TimeoutError after
        `timeout` seconds (the task is then dropped if it has not begun)."""
        entry = self.models.resolve(model or None)
        spec_device, chosen = self.hardware.check(device, dtype)
        worker = self._workers.get(spec_device.id)
        if worker is None or self.stopping.is_set():
            raise ForwardFailed("the workers are not running", FailureKind.INTERRUPTED)
        future = worker.request_forward(
            ForwardSpec(
                checkpoint=entry.path,
                model_name=entry.name,
                device=spec_device.id,
                dtype=chosen,
                image=image,
                timesteps=tuple(timesteps),
                seed=seed,
                parameter_count=entry.parameter_count,
            )
        )
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"the {spec_device.id} worker did not run the forward process within {timeout:g} s"
            ) from None


__all__ = ["Benchmark", "DeviceWorker", "ForwardFailed", "RecoveryReport", "WorkerPool"]
