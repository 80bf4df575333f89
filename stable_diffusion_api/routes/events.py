"""Server-Sent Events: the live life of one generation.

`GET /api/v1/generations/{id}/events` streams, as `text/event-stream`:

    event: status    data: the generation (GenerationOut) — first, and on every status or
                           queue-position change
    event: progress  data: {"id", "step", "total", "eta_s", "step_seconds", "preview"?} —
                           every step; "preview" (a data: URL of a small PNG) every few steps
    event: problem   data: {"id", "error"} — the job's outcome cannot be saved now (the
                           database refuses writes, or reads): the stream goes on, and ends
                           with `done` once the worker has given the job up
    event: done      data: the finished generation (succeeded, failed with `error`, canceled),
                           then the stream ends

Progress comes from the in-memory hub, which wakes the stream the moment a job changes; the
database is read only for status changes, at most every half second per job however many
streams watch it (`Watchers`: one read, shared), so hundreds of watchers cost little. A job that
ends here comes with its finished view from the worker, sent at once; one that ended elsewhere
(another process) is read from the database. One client may hold at most
`event_watch.STREAMS_PER_CLIENT` streams at once; the next is a 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from stable_diffusion_api.db import DatabaseUnavailable
from stable_diffusion_api.deps import GenerationDep, StudioDep
from stable_diffusion_api.errors import NotFound
from stable_diffusion_api.models import FINISHED
from stable_diffusion_api.routes.responses import GUARDED, errors
from stable_diffusion_api.services import Studio
from stable_diffusion_api.services.event_watch import STATUS_EVERY_S, TooManyStreams, Watchers
from stable_diffusion_api.services.progress import ProgressHub

# Credentials are checked in front of every route (auth.AuthGuard), streams included.
router = APIRouter(prefix="/api/v1", responses=GUARDED)

KEEPALIVE_S = 15.0


def watchers(request: Request) -> Watchers:
    """The app's one `Watchers` (made on first use)."""
    app_state = request.app.state
    if not hasattr(app_state, "event_watchers"):
        app_state.event_watchers = Watchers()
    found: Watchers = app_state.event_watchers
    return found


def sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


class ProgressNews:
    """What one stream has sent of one job's progress, so that it sends only what is new."""

    def __init__(self, generation_id: int) -> None:
        self.generation_id = generation_id
        self.version = -1
        self.preview_step = -1

    def event(self, hub: ProgressHub) -> str | None:
        """The hub's news of the job since the last call, as a progress event (None if
        nothing new); with a preview when the hub has one the stream has not sent."""
        state = hub.get(self.generation_id)
        if state is None or state.version == self.version or state.total == 0:
            return None
        self.version = state.version
        payload: dict[str, object] = {
            "id": self.generation_id,
            "step": state.step,
            "total": state.total,
            "eta_s": state.eta_s,
            "step_seconds": state.step_seconds,
        }
        if state.preview_step != self.preview_step and state.preview_png is not None:
            self.preview_step = state.preview_step
            payload["preview"] = state.preview_data_url
        return sse("progress", payload)


async def generation_events(
    request: Request, studio: Studio, generation_id: int, watch: Watchers, client: str
) -> AsyncIterator[str]:
    with watch.stream(client, generation_id):
        async for chunk in _events(request, studio, generation_id, watch):
            yield chunk


async def _events(
    request: Request, studio: Studio, generation_id: int, watch: Watchers
) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    last_status: tuple[str, int | None] | None = None
    last_db = 0.0
    last_sent = time.monotonic()
    problems_sent: set[str] = set()
    news = ProgressNews(generation_id)

    def progress() -> str | None:
        return news.event(studio.hub)

    with studio.hub.watch(generation_id) as changed:
        while not studio.workers.stopping.is_set():
            now = time.monotonic()
            state = studio.hub.get(generation_id)
            # A job that just finished here is announced at once, not at the next status read.
            finished_here = state is not None and state.status != "running"
            if finished_here and state is not None and state.result is not None:
                # Its worker sent the finished view along: no database read for the news. The
                # last steps (if any are unsent) and the end go out in one write.
                last_steps = progress() if last_status is not None else None
                yield (last_steps or "") + sse("done", state.result)
                return
            # Why the job's outcome cannot be saved now, if so: the worker's word, or the
            # database's refusal to be read. Each is said once; the worker's news still comes.
            problem = state.problem if state is not None else None
            if now - last_db >= STATUS_EVERY_S or finished_here:
                last_db = now
                if await request.is_disconnected():
                    return
                try:
                    view = await watch.view(studio, generation_id)
                except NotFound:  # deleted while watched
                    yield sse("done", {"id": generation_id, "status": "deleted", "error": None})
                    return
                except DatabaseUnavailable as exc:
                    problem = exc.message
                else:
                    if view.status in FINISHED:
                        # The last steps may have landed since the previous event: send them
                        # first.
                        last_steps = progress() if last_status is not None else None
                        yield (last_steps or "") + sse("done", view.model_dump(mode="json"))
                        return
                    if (view.status, view.position) != last_status:
                        last_status = (view.status, view.position)
                        yield sse("status", view.model_dump(mode="json", exclude={"progress"}))
                        last_sent = now
            if last_status is not None and (event := progress()):
                yield event
                last_sent = now
            if problem is not None and problem not in problems_sent:
                problems_sent.add(problem)
                yield sse("problem", {"id": generation_id, "error": problem})
                last_sent = now
            if now - last_sent > KEEPALIVE_S:
                yield ": keep-alive\n\n"  # a comment line: keeps proxies from closing it
                last_sent = now
            # Sleep until the hub has news of this job (instantly), or the next status read.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), STATUS_EVERY_S)
            changed.clear()


def stream_slot(request: Request) -> tuple[Watchers, str]:
    """The app's watchers and this client's name, refused (429) before the stream starts when
    the client holds as many streams as allowed."""
    watch = watchers(request)
    client = request.client.host if request.client else "unknown"
    if watch.clients.get(client, 0) >= watch.per_client:
        raise TooManyStreams(watch.per_client)
    return watch, client


StreamSlot = Annotated[tuple[Watchers, str], Depends(stream_slot)]


@router.get(
    "/generations/{generation_id}/events",
    response_class=StreamingResponse,
    responses=errors(404, 429),
)
async def events(
    generation: GenerationDep, studio: StudioDep, request: Request, slot: StreamSlot
) -> StreamingResponse:
    watch, client = slot
    return StreamingResponse(
        generation_events(request, studio, generation.id, watch, client),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
