"""Device workers in their own processes, so sampling never holds the web server's GIL.

A small model spends most of a step in Python (dispatching many short torch operations) while
holding the interpreter lock; a worker thread in the server process would then make every
request wait for it. So by default each device's `DeviceWorker` runs in a child process
(multiprocessing "spawn"), with its own database connections, storage and engine, claiming
jobs from the same SQLite queue under the server's process id (the server's heartbeat covers
it). A pipe carries, to the child: wake-ups, cancel requests, benchmarks, stop; and back:
the hub's reports (start, step, a preview's latent, finish: replayed on the server's hub for
the event streams) and benchmark results.

If a child dies (killed, out of memory), the server marks the job it was running failed with
"interrupted" and starts a new child. If the server dies, the child reads end-of-file on its
pipe and stops too. `DALI_WORKER_MODE=thread` (and any injected generator, as tests use) keeps
the workers as threads in the server process instead.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from stable_diffusion_api.config import Settings
from stable_diffusion_api.models import FAILED
from stable_diffusion_api.services.device_worker import Benchmark, DeviceWorker, benchmark_key
from stable_diffusion_api.services.progress import ProgressHub

if TYPE_CHECKING:
    import numpy as np

    from stable_diffusion_api.services.workers import WorkerPool

log = logging.getLogger(__name__)

WORKER_NICENESS = 10


class _RemoteWake:
    """Looks like the `threading.Event` a thread worker has: `set()` wakes the child."""

    def __init__(self, proxy: ProcessWorker) -> None:
        self._proxy = proxy

    def set(self) -> None:
        self._proxy.send(("wake",))


class _RemoteBenchmarks:
    """Looks like the deque a thread worker has: `append()` sends the benchmark to the child."""

    def __init__(self, proxy: ProcessWorker) -> None:
        self._proxy = proxy

    def append(self, benchmark: Benchmark) -> None:
        self._proxy.send(("benchmark", benchmark))

    def __iter__(self) -> Iterator[Benchmark]:
        return iter(())


class ProcessWorker:
    """The server's side of one device's worker process (same surface as `DeviceWorker`)."""

    def __init__(self, pool: WorkerPool, device: str) -> None:
        self.pool = pool
        self.device = device
        self.wake = _RemoteWake(self)
        self.benchmarks = _RemoteBenchmarks(self)
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._process: Any = None
        self._reader: threading.Thread | None = None
        pool.hub.cancel_listeners.append(lambda job_id: self.send(("cancel", job_id)))

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(
            target=child_main,
            args=(self.pool.settings, self.device, self.pool.instance_id, child),
            name=f"dali-worker-{self.device}",
            daemon=True,
        )
        process.start()
        child.close()
        with self._lock:
            self._conn, self._process = parent, process
        self._reader = threading.Thread(
            target=self._read, args=(parent, process), name=f"dali-relay-{self.device}", daemon=True
        )
        self._reader.start()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            conn = self._conn
            if conn is None:
                return
            # A child that is gone cannot hear; its reader thread restarts it.
            with contextlib.suppress(OSError, ValueError):
                conn.send(message)

    def stop(self) -> None:
        self.send(("stop",))

    def join(self, timeout: float | None = None) -> None:
        process = self._process
        if process is None:
            return
        process.join(timeout)
        if process.is_alive():
            log.warning("worker process for %s did not stop in time; terminating", self.device)
            process.terminate()
            process.join(5)
        if self._reader is not None:
            self._reader.join(5)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _read(self, conn: Connection, process: Any) -> None:
        """Relay the child's reports; when the child dies unexpectedly, clean up and restart."""
        pool = self.pool
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "step":
                pool.hub.step(*message[1:])
            elif kind == "preview_latent":
                pool.hub.preview_latent(*message[1:])
            elif kind == "start":
                pool.hub.start(*message[1:])
            elif kind == "finish":
                pool.hub.finish(*message[1:])
            elif kind == "benchmark":
                _, key, status, error = message
                if key in pool.benchmarks:
                    pool.benchmarks[key].mark(status, error)
        process.join(10)
        with self._lock:
            self._conn = None
        conn.close()
        if pool.stopping.is_set():
            return
        log.error("worker process for %s died (exit code %s); restarting", self.device,
                  process.exitcode)  # fmt: skip
        self._fail_running(process.exitcode)
        self.start()
        self.wake.set()

    def _fail_running(self, code: int | None) -> None:
        """The job the dead child was running: failed, and its hub state finished."""
        for job_id in self.pool.queue.fail_dead_worker(self.device, self.pool.instance_id, code):
            self.pool.hub.finish(job_id, FAILED)


class _RelayHub(ProgressHub):
    """The child's hub: each report goes to the server's hub over the pipe as the call it is,
    a small tuple rather than the whole state (a step report right after sampling: 0.22 ms
    instead of 0.36). Previews go as the latent (`preview_latent`), drawn by the server. It
    keeps only what the worker itself reads: the cancel requests."""

    def __init__(self, conn: Connection, lock: threading.Lock) -> None:
        super().__init__()
        self._conn = conn
        self._send_lock = lock

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._conn.send(message)

    def start(self, generation_id: int, total: int) -> None:
        self._send(("start", generation_id, total))

    def step(self, generation_id: int, step: int, total: int, step_seconds: float | None) -> None:
        self._send(("step", generation_id, step, total, step_seconds))

    def preview_latent(self, generation_id: int, latent: np.ndarray, step: int) -> None:
        self._send(("preview_latent", generation_id, latent, step))  # drawn by the server

    def finish(self, generation_id: int, status: str, result: dict[str, Any] | None = None) -> None:
        self._send(("finish", generation_id, status, result))
        with self._changed:
            self._cancel.discard(generation_id)


class _ChildWorker(DeviceWorker):
    """Reports benchmark status changes back to the server."""

    def __init__(self, pool: WorkerPool, device: str, conn: Connection, lock: threading.Lock):
        super().__init__(pool, device)
        self._conn = conn
        self._send_lock = lock

    def _benchmark(self, benchmark: Benchmark) -> None:
        key = benchmark_key(benchmark)
        self._report(key, "running", None)
        super()._benchmark(benchmark)
        self._report(key, benchmark.status, benchmark.error)

    def _report(self, key: tuple[object, ...], status: str, error: str | None) -> None:
        with self._send_lock:
            self._conn.send(("benchmark", key, status, error))


def lower_priority(priority: str, device: str) -> None:
    """Make this process (and the threads it starts later) yield the CPU to the web server:
    sampling takes whatever CPU is left; a page or an API read must not wait behind it. With
    nice 10 alone the reads' p99 while generating was 58 ms on a 2-core machine, with
    SCHED_IDLE 31–42 ms (docs/benchmarks.md)."""
    if priority == "normal":
        return
    if hasattr(os, "nice"):
        os.nice(WORKER_NICENESS)
    if priority == "idle" and device == "cpu" and hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def child_main(settings: Settings, device: str, instance_id: str, conn: Connection) -> None:
    """The worker process: one `DeviceWorker` thread, steered by messages on `conn`."""
    from stable_diffusion_api.services.studio import Studio, freeze_long_lived_objects

    logging.basicConfig(level=logging.INFO)
    lower_priority(settings.worker_priority, device)
    send_lock = threading.Lock()
    hub = _RelayHub(conn, send_lock)
    studio = Studio(settings, worker_mode="thread", hub=hub)
    pool = studio.workers
    pool.instance_id = instance_id  # jobs are claimed under the server's heartbeat
    import torch  # noqa: F401  (this process exists to run it: import it before the freeze)

    freeze_long_lived_objects()
    worker = _ChildWorker(pool, device, conn, send_lock)
    worker.start()
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the server is gone: stop too
                break
            kind = message[0]
            if kind == "wake":
                worker.wake.set()
            elif kind == "cancel":
                hub.request_cancel(message[1])
            elif kind == "benchmark":
                worker.benchmarks.append(message[1])
                worker.wake.set()
            elif kind == "stop":
                break
    finally:
        pool.stopping.set()
        worker.wake.set()
        worker.join(60)
        studio.db.dispose()
