"""The messages between the server and a device's worker process, both directions.

Small frozen dataclasses, pickled by `multiprocessing.Connection`. Each report a worker makes
to the progress hub travels as the call it is (a job id and a few numbers), never the whole
progress state. Measured on the project's 2-core machine, a `JobStepped` costs about 3 µs more
than the string-tagged tuple it replaced (building, pickling and unpickling it: 3.7 µs against
0.6; 137 bytes against 37) — next to the 0.22 ms a step report takes end to end, noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stable_diffusion_api.models import FailureKind
from stable_diffusion_api.services.generator import ForwardResult, ForwardSpec
from stable_diffusion_api.services.worker_context import Benchmark

if TYPE_CHECKING:
    import numpy as np

    from stable_diffusion_api.services.progress import ProgressHub

# -- server → worker process ---------------------------------------------------------------


@dataclass(frozen=True)
class Wake:
    """A job was queued: look at the queue now."""


@dataclass(frozen=True)
class Cancel:
    job_id: int
    keep_partial: bool = False  # stop keeping what it made (A1111's interrupt)


@dataclass(frozen=True)
class RunBenchmark:
    benchmark: Benchmark


@dataclass(frozen=True)
class RunForward:
    request_id: int
    spec: ForwardSpec


@dataclass(frozen=True)
class Stop:
    """Finish (a running job ends at its next step, interrupted) and exit."""


ToWorker = Wake | Cancel | RunBenchmark | RunForward | Stop

# -- worker process → server ---------------------------------------------------------------


@dataclass(frozen=True)
class JobStarted:
    job_id: int
    total: int


@dataclass(frozen=True)
class JobStepped:
    job_id: int
    step: int
    total: int
    step_seconds: float | None


@dataclass(frozen=True)
class JobPreview:
    """A preview's latent, (4, h, w) float32: the server draws it (the worker keeps sampling)."""

    job_id: int
    latent: np.ndarray
    step: int


@dataclass(frozen=True)
class JobFinished:
    job_id: int
    status: str  # a JobStatus
    result: dict[str, Any] | None  # the finished generation's view, on success


@dataclass(frozen=True)
class JobProblem:
    job_id: int
    message: str  # why its outcome is not in the database yet


@dataclass(frozen=True)
class BenchmarkChanged:
    key: tuple[object, ...]  # benchmark_key
    status: str
    error: str | None
    result: dict[str, object] | None = None  # an autotune's figures, when done


@dataclass(frozen=True)
class ForwardDone:
    request_id: int
    result: ForwardResult | None
    kind: FailureKind | None = None  # when it failed
    error: str | None = None


FromWorker = (
    JobStarted | JobStepped | JobPreview | JobFinished | JobProblem | BenchmarkChanged | ForwardDone
)

# A running job's reports: what a worker's hub was told, sent over a pipe or NOTIFY.
Report = JobStarted | JobStepped | JobPreview | JobProblem | JobFinished


def replay(hub: ProgressHub, message: FromWorker) -> bool:
    """Hand a job's report to `hub`, as the call it was on the worker's hub (the most frequent
    first); False when `message` is not a job report."""
    match message:
        case JobStepped(job_id, step, total, step_seconds):
            hub.step(job_id, step, total, step_seconds)
        case JobPreview(job_id, latent, step):
            hub.preview_latent(job_id, latent, step)
        case JobStarted(job_id, total):
            hub.start(job_id, total)
        case JobFinished(job_id, status, result):
            hub.finish(job_id, status, result)
        case JobProblem(job_id, problem):
            hub.problem(job_id, problem)
        case _:
            return False
    return True
