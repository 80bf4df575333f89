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

Nodes (services/nodes.py): a pool with workers registers its process as a node — its name,
its devices, the models it holds — and its heartbeat keeps the models current. Every process's
heartbeat also sweeps: the running jobs of a process whose heartbeat stopped (or that was
killed on this host) are failed naming its node, whichever live process sees it first. A pool
without workers (`DALI_RUN_WORKERS=false`, a web host) only beats and sweeps.
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
from typing import Any, cast

from PIL import Image as PILImage
from sqlalchemy import CursorResult, delete, select, update

from stable_diffusion_api.config import Settings
from stable_diffusion_api.db import Database
from stable_diffusion_api.errors import InvalidField
from stable_diffusion_api.models import (
    RUNNING,
    BenchmarkRequest,
    FailureKind,
    Generation,
    Image,
    WorkerProcess,
    utcnow,
)
from stable_diffusion_api.services.device_worker import DeviceWorker
from stable_diffusion_api.services.generator import (
    DeviceSpec,
    ForwardResult,
    ForwardSpec,
    Generator,
)
from stable_diffusion_api.services.hardware import HardwareService
from stable_diffusion_api.services.job_queue import JobQueue
from stable_diffusion_api.services.nodes import (
    Node,
    NodeRegistry,
    held_models,
    model_json,
    pid_exists,
    spec_json,
)
from stable_diffusion_api.services.progress import ProgressHub
from stable_diffusion_api.services.registry import ModelRegistry
from stable_diffusion_api.services.speeds import SpeedService
from stable_diffusion_api.services.storage import ImageStorage
from stable_diffusion_api.services.worker_context import (
    Benchmark,
    BenchmarkView,
    ForwardFailed,
    Worker,
    WorkerContext,
    benchmark_key,
)
from stable_diffusion_api.services.worker_process import ProcessWorker

log = logging.getLogger(__name__)


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
        nodes: NodeRegistry | None = None,
        hand_back: bool = False,
    ) -> None:
        """`nodes`: where it registers its node (None: it registers none); `hand_back`: on
        stopping, running jobs go back to the queue (the worker command)."""
        self.db = db
        self.hardware = hardware
        self.nodes = nodes
        self.mode = mode  # "thread" or "process" (services/worker_process.py)
        self.benchmarks: dict[tuple[object, ...], Benchmark] = {}
        # Benchmarks other nodes asked of this one, by request id, until they end.
        self._asked: dict[int, Benchmark] = {}
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
            hand_back=hand_back,
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

    def start(self, recover_files: bool = True) -> RecoveryReport:
        """Register this process (as a node when it runs workers: NodeNameTaken when its name
        is another live node's), recover, start one worker per local device. `recover_files`
        False: leave image rows and files alone (a node whose data folder is not the
        studio's only one)."""
        devices = self.hardware.local_devices
        node = self._node(devices)
        if node is not None and self.nodes is not None:
            self.nodes.check_name_free(explicit=self.settings.node_name is not None)
        with self.db.session() as session:
            session.add(self._process_row(node))
        if self.nodes is not None:
            self.nodes.set_own(node)
        report = self.recover() if recover_files else self._recover_jobs()
        if report.interrupted:
            log.warning("marked interrupted jobs failed: %s", report.interrupted)
        for device in devices:
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

    def _node(self, devices: list[DeviceSpec]) -> Node | None:
        """This process as a node: None when it runs no workers."""
        if self.nodes is None or not self.settings.run_workers:
            return None
        return Node(self.nodes.name, tuple(devices), held_models(self.models.list()))

    def _recover_jobs(self) -> RecoveryReport:
        return RecoveryReport(self._fail_orphaned_jobs(), 0, 0)

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
        """A job for `device` was queued: wake the local workers that may run it (any of
        them for "cuda", "auto", …; a node on another host finds it at its next poll)."""
        for worker in list(self._workers.values()):
            if isinstance(worker, (DeviceWorker, ProcessWorker)) and device not in worker.forms:
                continue
            worker.wake()

    def _cancel(self, job_id: int, keep_partial: bool = False) -> None:
        """A cancel asked on the hub: every worker hears it; the one running the job stops."""
        for worker in list(self._workers.values()):
            worker.request_cancel(job_id, keep_partial)

    def _beat(self) -> None:
        """Beat (keeping a node's models current) and sweep: a dead process's running jobs
        failed, every beat, so within the stale window of its last."""
        while not self.stopping.wait(self.settings.heartbeat_s):
            try:
                values: dict[str, object] = {"heartbeat_at": utcnow()}
                own = self.nodes.own if self.nodes is not None else None
                if own is not None:
                    node = Node(own.name, own.devices, held_models(self.models.list()))
                    assert self.nodes is not None
                    self.nodes.set_own(node)
                    values["models"] = [model_json(m) for m in node.models or ()]
                with self.db.session() as session:
                    beat = session.execute(
                        update(WorkerProcess)
                        .where(WorkerProcess.id == self.instance_id)
                        .values(**values)
                    )
                    if (
                        cast("CursorResult[Any]", beat).rowcount == 0
                    ):  # swept while the database was away: back again
                        session.add(self._process_row(own))
                self.db.writes_work()  # a refusal (disk full, …) is over: /health says so
                if own is not None:
                    self._remote_benchmarks()
                failed = self._fail_orphaned_jobs()
                if failed:
                    log.warning("jobs of stopped processes marked failed: %s", failed)
            except Exception:  # the heartbeat must outlive a locked or briefly absent database
                log.exception("heartbeat failed")

    def _process_row(self, node: Node | None) -> WorkerProcess:
        """This process's row in `worker_processes`, with its node's registration."""
        return WorkerProcess(
            id=self.instance_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            node=node.name if node is not None else None,
            devices=[spec_json(d) for d in node.devices] if node is not None else None,
            models=[model_json(m) for m in node.models or ()] if node is not None else None,
        )

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

    def autotune(self, device: str, model: str | None, steps: int) -> BenchmarkView:
        """Try the fast paths valid on one of this host's devices with `model` (each image
        `steps` steps; sd_core/autotune.py) on its worker, keeping the fastest for later jobs.
        InvalidField for another node's device: an autotune runs on the host the device is in
        (its own studio page or worker), since its choice is kept in that host's data folder."""
        local = self.hardware.local(device)
        entry = self.models.resolve(model)
        asked = self.request_benchmark(
            Benchmark(local.id, None, entry, None, None, steps, kind="autotune")
        )
        return BenchmarkView.of(asked, self.hardware.node_name)

    def benchmark(
        self,
        device: str,
        dtype: str | None,
        model: str | None,
        width: int | None,
        height: int | None,
        steps: int,
    ) -> BenchmarkView:
        """Measure `model` on `device`: on this host's worker when the device is its own,
        else asked of the first live node whose device it names (that node's heartbeat takes
        it up). InvalidField for an unknown device, dtype or model."""
        spec, chosen = self.hardware.check(device, dtype)
        try:
            local = self.hardware.local(device)
        except InvalidField:
            local = None
        if local is not None:
            entry = self.models.resolve(model)
            asked = self.request_benchmark(Benchmark(local.id, chosen, entry, width, height, steps))
            return BenchmarkView.of(asked, self.hardware.node_name)
        node, on_node = self.hardware.matching(spec.id)[0].split("/", 1)
        assert self.nodes is not None  # another node is live, so there is a registry
        name = model
        if name is None or self.models.find(name) is not None:
            name = self.models.resolve(model).name
        return _request_view(
            self.nodes.ask_benchmark(node, on_node, chosen, name, width, height, steps)
        )

    def benchmark_views(self) -> list[BenchmarkView]:
        """The benchmarks run here this session, then those asked of other nodes."""
        here = [BenchmarkView.of(b, self.hardware.node_name) for b in self.benchmarks.values()]
        if self.nodes is None:
            return here
        asked = [r for r in self.nodes.benchmark_requests() if r.node != self.nodes.name]
        return here + [_request_view(r) for r in asked]

    def _remote_benchmarks(self) -> None:
        """Run the benchmarks asked of this node, and write how the finished ones ended."""
        assert self.nodes is not None
        for request in self.nodes.take_benchmarks():
            try:
                entry = self.models.resolve(request.model)
                if request.device not in self._workers:
                    raise InvalidField("device", request.device, "no worker for it here")
            except InvalidField as exc:
                self.nodes.benchmark_ended(request.id, "failed", str(exc))
                continue
            self._asked[request.id] = self.request_benchmark(
                Benchmark(
                    request.device,
                    request.dtype,
                    entry,
                    request.width,
                    request.height,
                    request.steps,
                )  # fmt: skip
            )
        for request_id, benchmark in list(self._asked.items()):
            if benchmark.status in ("done", "failed"):
                self.nodes.benchmark_ended(request_id, benchmark.status, benchmark.error)
                del self._asked[request_id]

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
        local = self.hardware.local(device)
        spec_device, chosen = self.hardware.check(local.id, dtype)
        spec_device = local
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


def _request_view(request: BenchmarkRequest) -> BenchmarkView:
    return BenchmarkView(f"{request.node}/{request.device}", request.dtype, request.model,
                         request.width, request.height, request.steps, request.state,
                         request.error)  # fmt: skip


__all__ = [
    "Benchmark",
    "BenchmarkView",
    "DeviceWorker",
    "ForwardFailed",
    "RecoveryReport",
    "WorkerPool",
]
