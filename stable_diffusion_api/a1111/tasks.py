"""A1111 tasks in flight: what `/progress` reports and what `/interrupt` and `/skip` act on.

AUTOMATIC1111 runs one request at a time and keeps its state (`shared.state`) in one global:
the job, how many jobs (`n_iter`) and which one is running, the sampling step, the live preview.
Here an A1111 request is a *task*: a series of queue jobs run one after the other through the
same queue as every other front end. The tracker keeps the tasks of this process; `/progress`
shows the oldest one (the one A1111 would be running), and `/interrupt` and `/skip` act on it:

- interrupt: stop its current job and submit no more; the request then answers with the images
  made so far, as A1111 does: a running job stops at its next step and keeps its images as
  they are then, partly denoised (it ends `interrupted`), a queued one is canceled.
- skip: stop its current job in the same way; the next iteration starts.

Jobs queued through the REST API, pages or Gradio are never touched from here. Step, total and
preview come from the service's `ProgressHub`, which the worker updates every step.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from stable_diffusion_api.a1111.schemas import ProgressResponse, TaskProgressResponse
from stable_diffusion_api.services.progress import Progress, ProgressHub

# How many finished task ids `/internal/progress` still answers "completed" for.
KEEP_COMPLETED = 256
IDLE_STATE: dict[str, object] = {
    "skipped": False,
    "interrupted": False,
    "job": "",
    "job_count": 0,
    "job_timestamp": "0",
    "job_no": 0,
    "sampling_step": 0,
    "sampling_steps": 0,
}


@dataclass
class Task:
    id: str
    job: str  # A1111's job name, "scripts_txt2img" or "scripts_img2img"
    job_count: int
    timestamp: str  # A1111's job_timestamp, "%Y%m%d%H%M%S"
    started: float = field(default_factory=time.monotonic)
    job_no: int = 0
    generation_id: int | None = None
    interrupted: bool = False
    skipped: bool = False


@dataclass(frozen=True)
class _Snapshot:
    """Where a task stands: its job's live progress (if running) and the derived numbers."""

    task: Task
    progress: Progress | None  # None while the job waits in the queue
    step: int
    total: int
    fraction: float
    eta_s: float


class TaskTracker:
    def __init__(self, hub: ProgressHub, cancel: Callable[[int], None]) -> None:
        """`cancel(generation_id)` stops a queued or running job, a running one keeping what it
        made (a finished one: no-op)."""
        self._hub = hub
        self._cancel = cancel
        self._lock = threading.Lock()
        self._active: OrderedDict[str, Task] = OrderedDict()
        self._completed: deque[str] = deque(maxlen=KEEP_COMPLETED)

    # -- the task's own thread ------------------------------------------------------------------

    def begin(self, task_id: str | None, job: str, job_count: int, timestamp: str) -> Task:
        """Register a task; `task_id` is A1111's `force_task_id` (a random id when None)."""
        with self._lock:
            task_id = task_id or f"task({secrets.token_hex(8)})"
            while task_id in self._active:  # a reused force_task_id must not hide a task
                task_id = f"{task_id}-{secrets.token_hex(2)}"
            task = Task(task_id, job, job_count, timestamp)
            self._active[task_id] = task
            return task

    def next_job(self, task: Task, job_no: int) -> bool:
        """Move to job `job_no`; False once the task was interrupted (submit nothing more)."""
        with self._lock:
            if task.interrupted:
                return False
            task.job_no, task.skipped, task.generation_id = job_no, False, None
            return True

    def attach(self, task: Task, generation_id: int) -> None:
        """The task's current job is now `generation_id`; an interrupt that came while it was
        being submitted cancels it at once."""
        with self._lock:
            task.generation_id = generation_id
            stop = task.interrupted or task.skipped
        if stop:
            self._cancel(generation_id)

    def end(self, task: Task) -> None:
        with self._lock:
            self._active.pop(task.id, None)
            self._completed.append(task.id)

    # -- other requests -------------------------------------------------------------------------

    def current(self) -> Task | None:
        with self._lock:
            return next(iter(self._active.values()), None)

    def interrupt(self) -> Task | None:
        return self._stop(interrupt=True)

    def skip(self) -> Task | None:
        return self._stop(interrupt=False)

    def _stop(self, interrupt: bool) -> Task | None:
        with self._lock:
            task = next(iter(self._active.values()), None)
            if task is None:
                return None
            if interrupt:
                task.interrupted = True
            task.skipped = True
            generation_id = task.generation_id
        if generation_id is not None:
            self._cancel(generation_id)
        return task

    def _snapshot(self, task: Task) -> _Snapshot:
        with self._lock:
            job_no, generation_id = task.job_no, task.generation_id
        progress = self._hub.get(generation_id) if generation_id is not None else None
        if progress is not None and progress.status != "running":
            progress = None
        step = progress.step if progress else 0
        total = progress.total if progress else 0
        fraction = (job_no + (step / total if total else 0.0)) / max(1, task.job_count)
        fraction = min(1.0, max(0.0, fraction))
        elapsed = time.monotonic() - task.started
        if progress is not None and progress.eta_s is not None and progress.step_seconds:
            # This job's remaining steps, then the jobs still to come at the same pace.
            later = max(0, task.job_count - job_no - 1) * total * progress.step_seconds
            eta = progress.eta_s + later
        elif fraction > 0:
            eta = elapsed / fraction - elapsed  # A1111's own estimate
        else:
            eta = 0.0
        return _Snapshot(task, progress, step, total, fraction, max(0.0, eta))

    def progress(self, include_image: bool = True) -> ProgressResponse:
        """A1111's `/progress` for the oldest task in flight (all zero when idle)."""
        task = self.current()
        if task is None:
            return ProgressResponse(progress=0.0, eta_relative=0.0, state=dict(IDLE_STATE))
        snap = self._snapshot(task)
        image = None
        if include_image and snap.progress is not None and snap.progress.preview_png:
            image = base64.b64encode(snap.progress.preview_png).decode("ascii")
        return ProgressResponse(
            progress=snap.fraction,
            eta_relative=snap.eta_s,
            state={
                "skipped": task.skipped and not task.interrupted,
                "interrupted": task.interrupted,
                "job": task.job,
                "job_count": task.job_count,
                "job_timestamp": task.timestamp,
                "job_no": task.job_no,
                "sampling_step": snap.step,
                "sampling_steps": snap.total,
            },
            current_image=image,
            textinfo=_textinfo(snap),
        )

    def task_progress(
        self, task_id: str | None, live_preview: bool, id_live_preview: int
    ) -> TaskProgressResponse:
        """A1111's `/internal/progress` for one task named by its `force_task_id`."""
        with self._lock:
            task = self._active.get(task_id) if task_id else None
            completed = task_id in self._completed
        if task is None:
            return TaskProgressResponse(
                active=False,
                queued=False,
                completed=completed,
                id_live_preview=-1,
                textinfo="Finished" if completed else "Unknown task",
            )
        snap = self._snapshot(task)
        preview = None
        preview_id = id_live_preview
        fresh = snap.progress is not None and snap.progress.preview_step != id_live_preview
        if live_preview and fresh and snap.progress is not None and snap.progress.preview_png:
            encoded = base64.b64encode(snap.progress.preview_png).decode("ascii")
            preview = "data:image/png;base64," + encoded
            preview_id = snap.progress.preview_step
        return TaskProgressResponse(
            active=snap.progress is not None,
            queued=snap.progress is None,
            completed=False,
            progress=snap.fraction,
            eta=snap.eta_s,
            live_preview=preview,
            id_live_preview=preview_id,
            textinfo=_textinfo(snap),
        )


def _textinfo(snap: _Snapshot) -> str:
    job = f"job {snap.task.job_no + 1}/{snap.task.job_count}"
    if snap.progress is None:
        return f"Waiting in the queue ({job})"
    return f"Sampling step {snap.step}/{snap.total} ({job})"
