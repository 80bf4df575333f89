"""The engine tasks a device's worker runs besides jobs, ahead of waiting jobs: the diffusion
explorer's forward process, a speed benchmark, an autotune of the device's fast paths. Each is
given the worker's context (and its node and device) and reports to its caller: a future, or
the `Benchmark` the hardware page follows."""

from __future__ import annotations

import io
import logging
import time
from concurrent.futures import Future

from sd_core.params import GenerationParams
from stable_diffusion_api.models import FailureKind
from stable_diffusion_api.services.generator import ForwardResult, ForwardSpec, JobCanceled, JobSpec
from stable_diffusion_api.services.nodes import qualified
from stable_diffusion_api.services.run_failures import failure_of
from stable_diffusion_api.services.run_reporting import RunTiming
from stable_diffusion_api.services.worker_context import Benchmark, WorkerContext, forward_error

log = logging.getLogger(__name__)

BENCHMARK_PROMPT = "a red circle in the center on a blue background"


def run_forward(
    context: WorkerContext, device: str, spec: ForwardSpec, future: Future[ForwardResult]
) -> None:
    """Run the engine's forward process for a caller waiting on `future` (unless it has
    given up waiting). Refused inputs come back as ValueError, anything else as
    ForwardFailed with its kind — as they would from a worker process."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = context.engine.forward_process(spec)
    except Exception as exc:
        kind, message = failure_of(exc)
        if kind is not FailureKind.INVALID_INPUT:
            log.exception("forward process on %s failed", device)
        error = forward_error(kind, message)
        error.__cause__ = exc
        future.set_exception(error)
    else:
        future.set_result(result)


def run_benchmark(context: WorkerContext, node: str, benchmark: Benchmark) -> None:
    """Measure the speed `benchmark` asks for (its speed kept under `node/device`), or, for an
    autotune, try the device's fast paths."""
    if benchmark.kind == "autotune":
        run_autotune(context, benchmark)
        return
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
                qualified(node, benchmark.device),
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


def run_autotune(context: WorkerContext, benchmark: Benchmark) -> None:
    """Try the device's fast paths with the benchmark's model (`Generator.autotune`); the
    figures go into `benchmark.result`, the choice into the engine's file."""
    benchmark.mark("running")
    model = benchmark.model.on(benchmark.device, benchmark.dtype)
    try:
        result = context.engine.autotune(model, benchmark.steps)
    except Exception as exc:  # reported on the hardware page; the worker carries on
        log.exception("autotune failed")
        benchmark.mark("failed", f"{type(exc).__name__}: {exc}")
    else:
        benchmark.mark("done", None, result)
