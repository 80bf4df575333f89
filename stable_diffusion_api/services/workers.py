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
gone are removed (a generation whose filmstrip file has gone forgets it) and image or filmstrip
files no row points at are deleted, so no row points at a missing file.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from PIL import Image as PILImage
from sqlalchemy import delete, select, update

from stable_diffusion_api.config import Settings
from stable_diffusion_api.db import Database
from stable_diffusion_api.models import RUNNING, Generation, Image, WorkerProcess, utcnow
from stable_diffusion_api.services.device_worker import (
    Benchmark,
    DeviceWorker,
    benchmark_key,
)
from stable_diffusion_api.services.generator import Generator
from stable_diffusion_api.services.hardware import HardwareService
from stable_diffusion_api.services.job_queue import JobQueue
from stable_diffusion_api.services.progress import ProgressHub
from stable_diffusion_api.services.registry import ModelRegistry
from stable_diffusion_api.services.speeds import SpeedService
from stable_diffusion_api.services.storage import ImageStorage
from stable_diffusion_api.services.worker_process import ProcessWorker

log = logging.getLogger(__name__)


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
        mode: str = "thread",
    ) -> None:
        self.settings = settings
        self.db = db
        self.queue = JobQueue(db)  # the per-image statements: claim, succeed, finish
        self.generator = generator
        self.hardware = hardware
        self.models = models
        self.storage = storage
        self.hub = hub
        self.speeds = speeds
        self.mode = mode  # "thread" or "process" (services/worker_process.py)
        self.instance_id = f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stopping = threading.Event()
        self.benchmarks: dict[tuple[object, ...], Benchmark] = {}
        self._workers: dict[str, DeviceWorker | ProcessWorker] = {}
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
            worker: DeviceWorker | ProcessWorker
            if self.mode == "process":
                worker = ProcessWorker(self, device.id)
            else:
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
            worker.stop()
        deadline = time.monotonic() + timeout
        for worker in self._workers.values():
            worker.join(max(0.0, deadline - time.monotonic()))
        if self._heartbeat is not None:
            self._heartbeat.join(max(0.0, deadline - time.monotonic()))
        with self.db.session() as session:
            session.execute(delete(WorkerProcess).where(WorkerProcess.id == self.instance_id))

    @property
    def workers(self) -> dict[str, DeviceWorker | ProcessWorker]:
        return dict(self._workers)

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
        return self.queue.fail_orphaned(alive)

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
            strips = session.execute(
                select(Generation.id, Generation.filmstrip_path).where(
                    Generation.filmstrip_path.is_not(None)
                )
            ).all()
            for generation_id, strip in strips:
                if strip is not None and self.storage.exists(strip):
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
        key = benchmark_key(benchmark)
        current = self.benchmarks.get(key)
        if current is not None and current.status in ("queued", "running"):
            return current
        self.benchmarks[key] = benchmark
        worker = self._workers[benchmark.device]
        worker.benchmarks.append(benchmark)
        worker.wake.set()
        return benchmark


__all__ = ["Benchmark", "DeviceWorker", "RecoveryReport", "WorkerPool"]
