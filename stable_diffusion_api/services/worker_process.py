"""Device workers in their own processes, so sampling never holds the web server's GIL.

A small model spends most of a step in Python (dispatching many short torch operations) while
holding the interpreter lock; a worker thread in the server process would then make every
request wait for it. So by default each device's `DeviceWorker` runs in a child process
(multiprocessing "spawn"). The child builds just a `WorkerContext`: its own database
connections and job queue, engine, model registry and storage, and a hub that relays every
report over the pipe; it claims jobs from the same queue under the server's process id (the
server's heartbeat covers it). The pipe carries typed messages (services/worker_messages.py):
to the child, wake-ups, cancel requests, benchmarks, forward-process tasks and stop; back, the
hub's reports (start, step, a preview's latent, a problem saving, finish: replayed on the
server's hub for the event streams), benchmark status and forward-process results.

If a child dies (killed, out of memory), the server has the job queue mark the job it was
running failed (interrupted), fails the forward-process tasks it had, and starts a new child.
If the server dies, the child reads end-of-file on its pipe and stops too.
`DALI_WORKER_MODE=thread` (and any injected generator, as tests use) keeps the workers as
threads in the server process instead.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator, MutableMapping
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from stable_diffusion_api.config import Settings
from stable_diffusion_api.db import DatabaseUnavailable
from stable_diffusion_api.models import FAILED, FailureKind
from stable_diffusion_api.services.device_worker import DeviceWorker, ServerGone
from stable_diffusion_api.services.generator import ForwardResult, ForwardSpec
from stable_diffusion_api.services.nodes import accepted_forms
from stable_diffusion_api.services.progress import ProgressHub
from stable_diffusion_api.services.worker_context import (
    Benchmark,
    ForwardFailed,
    WorkerContext,
    benchmark_key,
    forward_error,
)
from stable_diffusion_api.services.worker_messages import (
    BenchmarkChanged,
    Cancel,
    ForwardDone,
    FromWorker,
    JobFinished,
    JobPreview,
    JobProblem,
    JobStarted,
    JobStepped,
    RunBenchmark,
    RunForward,
    Stop,
    ToWorker,
    Wake,
    replay,
)

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

WORKER_NICENESS = 10


class ProcessWorker:
    """The server's side of one device's worker process (a `Worker`). Of its context it uses
    the settings (to start the child), the job queue (a dead child's job), the hub (the
    child's reports replayed), the instance id and the stopping event."""

    def __init__(self, context: WorkerContext, device: str) -> None:
        self.context = context
        self.device = device
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._process: Any = None
        self._reader: threading.Thread | None = None
        self._benchmarks: dict[tuple[object, ...], Benchmark] = {}
        self._forwards: dict[int, Future[ForwardResult]] = {}
        self._request_ids = itertools.count(1)
        self._running: int | None = None  # the job the child said it started, until its end
        self.forms = accepted_forms(context.settings.resolved_node_name, device)

    def start(self) -> None:
        spawn = multiprocessing.get_context("spawn")
        parent, child = spawn.Pipe()
        process = spawn.Process(
            target=child_main,
            args=(self.context.settings, self.device, self.context.instance_id, child),
            name=f"dali-worker-{self.device}",
            daemon=True,
        )
        with sigint_ignored_if_main_thread():
            process.start()
        child.close()
        with self._lock:
            self._conn, self._process = parent, process
        self._reader = threading.Thread(
            target=self._read, args=(parent, process), name=f"dali-relay-{self.device}", daemon=True
        )
        self._reader.start()

    def _send(self, message: ToWorker) -> None:
        with self._lock:
            conn = self._conn
            if conn is None:
                return
            # A child that is gone cannot hear; its reader thread restarts it.
            with contextlib.suppress(OSError, ValueError):
                conn.send(message)

    def wake(self) -> None:
        self._send(Wake())

    def request_cancel(self, job_id: int, keep_partial: bool = False) -> None:
        self._send(Cancel(job_id, keep_partial))

    def request_benchmark(self, benchmark: Benchmark) -> None:
        self._benchmarks[benchmark_key(benchmark)] = benchmark
        self._send(RunBenchmark(benchmark))

    def request_forward(self, spec: ForwardSpec) -> Future[ForwardResult]:
        future: Future[ForwardResult] = Future()
        request_id = next(self._request_ids)
        with self._lock:
            self._forwards[request_id] = future
        self._send(RunForward(request_id, spec))
        return future

    def stop(self) -> None:
        self._send(Stop())

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

    def is_alive(self) -> bool:
        return self._process is not None and bool(self._process.is_alive())

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _read(self, conn: Connection, process: Any) -> None:
        """Relay the child's reports; when the child dies unexpectedly, clean up and restart."""
        hub = self.context.hub
        while True:
            try:
                message: FromWorker = conn.recv()
            except (EOFError, OSError):
                break
            match message:  # which job the child runs, for its death
                case JobStarted(job_id, _):
                    self._running = job_id
                case JobFinished():
                    self._running = None
            if replay(hub, message):
                continue
            match message:
                case BenchmarkChanged(key, status, error, result):
                    benchmark = self._benchmarks.get(key)
                    if benchmark is not None:
                        benchmark.mark(status, error, result)
                case ForwardDone(request_id, result, kind, error):
                    self._forward_done(request_id, result, kind, error)
        process.join(10)
        with self._lock:
            self._conn = None
            lost, self._forwards = self._forwards, {}
        conn.close()
        for future in lost.values():
            future.set_exception(
                ForwardFailed(
                    "the worker process stopped before answering", FailureKind.INTERRUPTED
                )
            )
        if self.context.stopping.is_set():
            return
        log.error("worker process for %s died (exit code %s); restarting", self.device,
                  process.exitcode)  # fmt: skip
        self._fail_running(process.exitcode)
        self.start()
        self.wake()

    def _forward_done(
        self,
        request_id: int,
        result: ForwardResult | None,
        kind: FailureKind | None,
        error: str | None,
    ) -> None:
        with self._lock:
            future = self._forwards.pop(request_id, None)
        if future is None or not future.set_running_or_notify_cancel():
            return  # its caller gave up waiting
        if result is not None:
            future.set_result(result)
        else:
            future.set_exception(forward_error(kind or FailureKind.INTERNAL, error or "failed"))

    def _fail_running(self, code: int | None) -> None:
        """The job the dead child was running: failed, and its hub state finished. A database
        that refuses the write is asked again every poll until it takes it (or the server
        stops): the job must not stay `running`, and no new child could claim a job before."""
        context = self.context
        while True:
            try:
                failed = context.jobs.fail_dead_worker(
                    self.forms, context.instance_id, code, self._running
                )
            except DatabaseUnavailable:  # the database has logged why
                if context.stopping.wait(context.settings.poll_s):
                    return
                continue
            for job_id in failed:
                context.hub.finish(job_id, FAILED)
            self._running = None
            return


class _RelayHub(ProgressHub):
    """The child's hub: each report goes to the server's hub over the pipe as the call it is, a
    small message rather than the whole state. Previews go as the latent (`preview_latent`),
    drawn by the server."""

    def __init__(self, conn: Connection, lock: threading.Lock) -> None:
        super().__init__()
        self._conn = conn
        self._send_lock = lock

    def send(self, message: FromWorker) -> None:
        """ServerGone when the server's end of the pipe is closed (the server died)."""
        with self._send_lock:
            try:
                self._conn.send(message)
            except (BrokenPipeError, ConnectionError, EOFError, OSError) as exc:
                raise ServerGone(f"the server process is gone ({type(exc).__name__})") from exc

    def start(self, generation_id: int, total: int) -> None:
        self.send(JobStarted(generation_id, total))

    def step(self, generation_id: int, step: int, total: int, step_seconds: float | None) -> None:
        self.send(JobStepped(generation_id, step, total, step_seconds))

    def preview_latent(self, generation_id: int, latent: np.ndarray, step: int) -> None:
        self.send(JobPreview(generation_id, latent, step))  # drawn by the server

    def problem(self, generation_id: int, message: str) -> None:
        with contextlib.suppress(ServerGone):  # nobody to tell; the job's files stay as they are
            self.send(JobProblem(generation_id, message))

    def finish(self, generation_id: int, status: str, result: dict[str, Any] | None = None) -> None:
        with contextlib.suppress(ServerGone):  # the row holds the outcome; nobody to tell
            self.send(JobFinished(generation_id, status, result))


class _ChildWorker(DeviceWorker):
    """Reports benchmark status changes back to the server."""

    def __init__(self, context: WorkerContext, device: str, hub: _RelayHub) -> None:
        super().__init__(context, device)
        self._relay = hub

    def _benchmark(self, benchmark: Benchmark) -> None:
        key = benchmark_key(benchmark)
        self._relay.send(BenchmarkChanged(key, "running", None))
        super()._benchmark(benchmark)
        self._relay.send(BenchmarkChanged(key, benchmark.status, benchmark.error, benchmark.result))

    def run_forward(self, request_id: int, spec: ForwardSpec) -> None:
        """Queue the task; its result goes back to the server when done."""

        def answer(future: Future[ForwardResult]) -> None:
            error = future.exception()
            if error is None:
                self._relay.send(ForwardDone(request_id, future.result()))
            else:
                kind = error.kind if isinstance(error, ForwardFailed) else FailureKind.INVALID_INPUT
                self._relay.send(ForwardDone(request_id, None, kind, str(error)))

        self.request_forward(spec).add_done_callback(answer)


@contextlib.contextmanager
def sigint_ignored_if_main_thread() -> Iterator[None]:
    """SIGINT ignored while a worker process is spawned, so that the worker starts with it
    ignored (an ignored signal stays ignored across exec, and Python then installs no
    KeyboardInterrupt handler). Ctrl+C in a terminal goes to the whole process group; the
    server stops its workers itself, and a worker that took the SIGINT, even while still
    importing, would only print a traceback. Only the main thread may change a handler: the
    studio starts its workers there (the app's lifespan); a restart from another thread relies
    on `child_main` ignoring SIGINT once it runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def wait_without_spinning(environ: MutableMapping[str, str]) -> None:
    """OpenMP's threads, by default, spin for a long while (GNU OpenMP: 300,000 turns) when
    they wait for the next piece of work. On a machine that other programs also use, spinning
    threads fight them for the cores, and each step waits for the thread that was descheduled:
    with one other busy process on 2 cores a 4-step image took 18.5 s in the worker. Not
    spinning at all (`OMP_WAIT_POLICY=PASSIVE`) fixed that but made a small model's steps on an
    idle machine 2.5x slower (every parallel region woke sleeping threads). A short spin
    (`GOMP_SPINCOUNT=10000`) keeps both: 10 steps 0.29 s idle (passive 0.73 s), and 0.9 s with
    two busy processes beside it, against 1.0 s for the CLI (docs/benchmarks.md). What the user
    set is kept. OpenMP reads it once, when torch first loads it: call this before importing
    torch."""
    if "OMP_WAIT_POLICY" not in environ:
        environ.setdefault("GOMP_SPINCOUNT", "10000")


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


def child_context(
    settings: Settings, instance_id: str, hub: ProgressHub
) -> tuple[WorkerContext, Any]:
    """What a worker process needs, built from `settings`, and its database (to dispose of)."""
    from stable_diffusion_api.db import Database
    from stable_diffusion_api.services.engine import SdCoreGenerator
    from stable_diffusion_api.services.job_queue import JobQueue
    from stable_diffusion_api.services.registry import ModelRegistry
    from stable_diffusion_api.services.speeds import SpeedService
    from stable_diffusion_api.services.storage import ImageStorage

    db = Database(settings.resolved_database_url)
    engine = SdCoreGenerator(
        settings.pipeline_cache_bytes,
        settings.torch_threads,
        settings.asset_folders,
        fast_path_file=settings.autotune_file,
    )
    context = WorkerContext(
        settings=settings,
        jobs=JobQueue(db),
        engine=engine,
        models=ModelRegistry(settings, db, engine),
        storage=ImageStorage.open(settings.storage_url, settings.resolved_data_dir),
        hub=hub,
        speeds=SpeedService(db),
        instance_id=instance_id,  # jobs are claimed under the server's heartbeat
        stopping=threading.Event(),
    )
    return context, db


def child_main(settings: Settings, device: str, instance_id: str, conn: Connection) -> None:
    """The worker process: one `DeviceWorker` thread, steered by messages on `conn`."""
    # Ctrl+C is the server's to handle: it stops this worker itself (`stop`, then `terminate`).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from stable_diffusion_api.services.runtime import freeze_long_lived_objects

    logging.basicConfig(level=logging.INFO)
    lower_priority(settings.worker_priority, device)
    wait_without_spinning(os.environ)  # before torch loads OpenMP
    hub = _RelayHub(conn, threading.Lock())
    context, db = child_context(settings, instance_id, hub)
    import torch  # noqa: F401  (this process exists to run it: import it before the freeze)

    freeze_long_lived_objects()
    worker = _ChildWorker(context, device, hub)
    worker.start()
    try:
        while True:
            try:
                message: ToWorker = conn.recv()
            except (EOFError, OSError):  # the server is gone: stop too
                break
            match message:
                case Wake():
                    worker.wake()
                case Cancel(job_id, keep_partial):
                    worker.request_cancel(job_id, keep_partial)
                case RunBenchmark(benchmark):
                    worker.request_benchmark(benchmark)
                case RunForward(request_id, spec):
                    worker.run_forward(request_id, spec)
                case Stop():
                    break
    finally:
        context.stopping.set()
        worker.stop()
        worker.join(60)
        db.dispose()
