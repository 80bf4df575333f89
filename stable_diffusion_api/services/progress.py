"""Live progress of running jobs, kept in memory for the event streams.

Workers write; request handlers and event streams read. Each job's state carries a version
number that grows with every change, so a reader can wait for "something newer than what I
sent". Cancel requests are also kept here, so the engine's per-step `cancel` poll is a dict
lookup rather than a database query.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Progress:
    generation_id: int
    step: int = 0
    total: int = 0
    step_seconds: float | None = None  # smoothed seconds per step, measured in this run
    preview_png: bytes | None = None
    preview_step: int = 0
    status: str = "running"
    # A finished job's view (GenerationOut as JSON), when its worker sent one: the event streams
    # announce the end with it instead of each reading the database.
    result: dict[str, Any] | None = None
    # Why the job's outcome is not in the database yet (the database refuses writes), if so.
    problem: str | None = None
    version: int = 0
    updated: float = 0.0  # time.monotonic()

    @property
    def eta_s(self) -> float | None:
        if self.step_seconds is None or self.total == 0:
            return None
        return max(0, self.total - self.step) * self.step_seconds

    @property
    def preview_data_url(self) -> str | None:
        if self.preview_png is None:
            return None
        return "data:image/png;base64," + base64.b64encode(self.preview_png).decode("ascii")


_Key = int | tuple[str, int]  # what a stream waits on: a job's id, or ("project", its id)


class ProgressHub:
    # Finished jobs stay visible this long, so a stream that polls just after the end sees it.
    KEEP_FINISHED_S = 120.0

    def __init__(self) -> None:
        self._states: dict[int, Progress] = {}
        self._cancel: set[int] = set()
        self._changed = threading.Condition()
        # Called with the generation id and `keep_partial` on every cancel request: worker
        # processes listen here.
        self.cancel_listeners: list[Callable[[int, bool], None]] = []
        # Event streams waiting for news of a job (keyed by its id) or of a project's new jobs
        # (keyed by ("project", its id)): (their event loop, their asyncio.Event).
        self._watchers: dict[_Key, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        # How many jobs each project has had queued in this process (`submitted`).
        self._submitted: dict[int, int] = {}

    def _put(self, state: Progress) -> None:
        with self._changed:
            old = self._states.get(state.generation_id)
            version = (old.version if old else 0) + 1
            self._states[state.generation_id] = replace(
                state, version=version, updated=time.monotonic()
            )
            self._changed.notify_all()
        self._wake(state.generation_id)

    def _wake(self, key: _Key) -> None:
        with self._changed:
            watchers = list(self._watchers.get(key, ()))
        for loop, event in watchers:
            # Worker threads may not touch an event loop's objects: ask the loop to do it.
            with contextlib.suppress(RuntimeError):  # that loop has closed meanwhile
                loop.call_soon_threadsafe(event.set)

    @contextlib.contextmanager
    def _watch(self, key: _Key, event: asyncio.Event | None) -> Iterator[asyncio.Event]:
        entry = (asyncio.get_running_loop(), event if event is not None else asyncio.Event())
        with self._changed:
            self._watchers.setdefault(key, []).append(entry)
        try:
            yield entry[1]
        finally:
            with self._changed:
                watchers = self._watchers.get(key, [])
                if entry in watchers:
                    watchers.remove(entry)
                if not watchers:
                    self._watchers.pop(key, None)

    def watch(
        self, generation_id: int, event: asyncio.Event | None = None
    ) -> contextlib.AbstractContextManager[asyncio.Event]:
        """An asyncio.Event (for the running loop) set whenever the job's state changes: `event`
        when given, so one stream can wait on several jobs at once, else a new one."""
        return self._watch(generation_id, event)

    def watch_project(
        self, project_id: int, event: asyncio.Event
    ) -> contextlib.AbstractContextManager[asyncio.Event]:
        """`event` (for the running loop) set whenever a job of the project is queued here."""
        return self._watch(("project", project_id), event)

    def submitted(self, project_id: int) -> None:
        """A job of the project was queued (by any front end of this process): its project
        streams read its jobs now rather than at their next turn."""
        with self._changed:
            self._submitted[project_id] = self._submitted.get(project_id, 0) + 1
        self._wake(("project", project_id))

    def submissions(self, project_id: int) -> int:
        """How many jobs of the project were queued in this process: a new number, new jobs."""
        return self._submitted.get(project_id, 0)

    def start(self, generation_id: int, total: int) -> None:
        self._forget_old()
        self._put(Progress(generation_id, total=total))

    def step(self, generation_id: int, step: int, total: int, step_seconds: float | None) -> None:
        state = self._states.get(generation_id) or Progress(generation_id)
        self._put(replace(state, step=step, total=total, step_seconds=step_seconds))

    def preview(self, generation_id: int, png: bytes, step: int) -> None:
        state = self._states.get(generation_id) or Progress(generation_id)
        self._put(replace(state, preview_png=png, preview_step=step))

    def preview_latent(self, generation_id: int, latent: np.ndarray, step: int) -> None:
        """Draw the cheap RGB preview of a (4, h, w) latent, keep it as PNG (`preview`). A worker
        process sends the latent here instead, so its own time goes to sampling."""
        from sd_core.preview import latent_to_rgb

        buffer = io.BytesIO()
        latent_to_rgb(latent).save(buffer, format="PNG")
        self.preview(generation_id, buffer.getvalue(), step)

    def problem(self, generation_id: int, message: str) -> None:
        """The job's outcome cannot be written now (`message` says why): the streams say so.
        The same message again (a worker retrying) is no news."""
        state = self._states.get(generation_id) or Progress(generation_id)
        if state.problem != message:
            self._put(replace(state, problem=message))

    def finish(self, generation_id: int, status: str, result: dict[str, Any] | None = None) -> None:
        state = self._states.get(generation_id) or Progress(generation_id)
        self._put(replace(state, status=status, result=result))
        with self._changed:
            self._cancel.discard(generation_id)

    def get(self, generation_id: int) -> Progress | None:
        return self._states.get(generation_id)

    def running(self) -> list[Progress]:
        return [s for s in list(self._states.values()) if s.status == "running"]

    def wait(self, generation_id: int, after_version: int, timeout: float) -> Progress | None:
        """Block until the job's state is newer than `after_version`, or `timeout` passes."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                state = self._states.get(generation_id)
                if state is not None and state.version > after_version:
                    return state
                left = deadline - time.monotonic()
                if left <= 0:
                    return state
                self._changed.wait(left)

    def request_cancel(self, generation_id: int, keep_partial: bool = False) -> None:
        """Ask the job's worker to stop it at its next step; `keep_partial`: keeping what it
        made (A1111's interrupt) rather than dropping it."""
        with self._changed:
            self._cancel.add(generation_id)
            self._changed.notify_all()
        for listener in list(self.cancel_listeners):
            listener(generation_id, keep_partial)

    def cancel_requested(self, generation_id: int) -> bool:
        return generation_id in self._cancel

    def _forget_old(self) -> None:
        now = time.monotonic()
        with self._changed:
            for key, state in list(self._states.items()):
                if state.status != "running" and now - state.updated > self.KEEP_FINISHED_S:
                    del self._states[key]
