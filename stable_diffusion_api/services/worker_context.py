"""What a device worker needs, given to it explicitly, and the interface every worker offers.

`WorkerContext` holds exactly the services a `DeviceWorker` uses — settings, the job queue (the
only writer of job status), the engine, the model registry, storage, the progress hub, the
speed service — plus the id its jobs are claimed under and the event that says the server is
stopping. The server builds one for its worker threads; a worker process builds its own (its
own database connections, engine and a hub that relays over the pipe) and nothing else.

`Worker` is what the `WorkerPool` holds for each device: the thread (`DeviceWorker`) or the
server's end of a worker process (`ProcessWorker`) alike.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from stable_diffusion_api.config import Settings
from stable_diffusion_api.models import FailureKind
from stable_diffusion_api.services.generator import ForwardResult, ForwardSpec, Generator
from stable_diffusion_api.services.job_queue import JobQueue
from stable_diffusion_api.services.progress import ProgressHub
from stable_diffusion_api.services.registry import ModelEntry, ModelRegistry
from stable_diffusion_api.services.speeds import SpeedService
from stable_diffusion_api.services.storage import ImageStorage


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    jobs: JobQueue
    engine: Generator
    models: ModelRegistry
    storage: ImageStorage
    hub: ProgressHub
    speeds: SpeedService
    instance_id: str  # jobs are claimed under the server process's id (its heartbeat)
    stopping: threading.Event
    # On stopping, a running job goes back to the queue (a node's worker command) rather than
    # ending interrupted (the single machine, as if it had crashed).
    hand_back: bool = False


@dataclass
class Benchmark:
    """A short speed measurement asked of a device's worker (run ahead of waiting jobs)."""

    device: str
    dtype: str | None
    model: ModelEntry
    width: int | None
    height: int | None
    steps: int
    status: str = "queued"  # queued, running, done, failed
    error: str | None = None
    # "speed": steps/s for the estimates; "autotune": the device's fast paths tried and one
    # kept per dtype (`Generator.autotune`), whose figures land in `result`.
    kind: str = "speed"
    result: dict[str, object] | None = None

    def mark(
        self, status: str, error: str | None = None, result: dict[str, object] | None = None
    ) -> None:
        self.status, self.error = status, error
        if result is not None:
            self.result = result


@dataclass(frozen=True)
class BenchmarkView:
    """A benchmark as listed: run here (`Benchmark`) or asked of another node (its request
    row); `device` is `node/device` for the latter."""

    device: str
    dtype: str | None
    model: str
    width: int | None
    height: int | None
    steps: int
    status: str  # queued, running, done, failed
    error: str | None
    kind: str = "speed"  # or "autotune" (run here only)
    result: dict[str, object] | None = None  # an autotune's figures

    @classmethod
    def of(cls, benchmark: Benchmark, node: str) -> BenchmarkView:
        """`benchmark`, run by `node`'s worker."""
        return cls(f"{node}/{benchmark.device}", benchmark.dtype, benchmark.model.name, benchmark.width,
                   benchmark.height, benchmark.steps, benchmark.status, benchmark.error,
                   benchmark.kind, benchmark.result)  # fmt: skip


def benchmark_key(benchmark: Benchmark) -> tuple[object, ...]:
    """One measurement per kind, device, dtype, model and size: asking twice waits for the
    first."""
    return (benchmark.kind, benchmark.device, benchmark.dtype, benchmark.model.name,
            benchmark.width, benchmark.height)  # fmt: skip


class ForwardFailed(RuntimeError):
    """A forward-process task failed for a reason other than its inputs (those raise
    ValueError): out of memory, an internal error, or the worker stopped before running it."""

    def __init__(self, message: str, kind: FailureKind) -> None:
        super().__init__(message)
        self.kind = kind


def forward_error(kind: FailureKind, message: str) -> Exception:
    """The exception a forward-process task that failed with `kind` raises to its caller, the
    same whether it ran in a thread or in a worker process."""
    if kind is FailureKind.INVALID_INPUT:
        return ValueError(message)
    return ForwardFailed(message, kind)


class Worker(Protocol):
    """One device's worker, in a thread or a process."""

    device: str

    def start(self) -> None: ...

    def wake(self) -> None:
        """Look at the queue now (a job was just queued)."""
        ...

    def request_cancel(self, job_id: int, keep_partial: bool = False) -> None:
        """Stop `job_id` at its next step if this worker is running it; `keep_partial`: keep
        the images as they are then (the job ends interrupted) instead of dropping them."""
        ...

    def request_benchmark(self, benchmark: Benchmark) -> None:
        """Measure `benchmark` before the next job; its status changes as it runs."""
        ...

    def request_forward(self, spec: ForwardSpec) -> Future[ForwardResult]:
        """Run the engine's forward process before the next job; the future's result, or
        ValueError (inputs refused) or ForwardFailed."""
        ...

    def stop(self) -> None:
        """Begin stopping (the pool has set the stopping event); a running job ends at its
        next step, interrupted."""
        ...

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...

    @property
    def pid(self) -> int | None:
        """The process that runs the engine."""
        ...
