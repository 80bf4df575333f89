"""Server-Sent Events: every job of one project, live, on one stream.

`GET /api/v1/projects/{id}/events` streams, as `text/event-stream`, the events of a job's own
stream (`events.py`) for every job of the project; each event's data carries the job's `id`:

    event: status    data: a job (GenerationOut) — first one per queued or running job, oldest
                           first; then one per job submitted since (from a page, the REST API,
                           A1111 or Gradio), and on every status or queue-position change
    event: progress  data: {"id", "step", "total", "eta_s", "step_seconds", "preview"?}
    event: problem   data: {"id", "error"} — that job's outcome cannot be saved now
    event: done      data: a finished job (GenerationOut), once per job; {"id", "status":
                           "deleted"} for a job deleted while it was followed

The stream goes on until the client leaves (or the project is deleted). `?after=N`: jobs with
a larger id that ended before the stream saw them running still get their `done` (the generate
page passes the newest id it was drawn with, so a quick job submitted from it before its
stream opened is not lost); by default, the project's newest job when the stream opens. Each
`id:` line carries the oldest id the stream still needs: a browser that reconnects sends it
back (`Last-Event-ID`, which takes the place of `after`) and misses nothing; a job that ended
shortly before may be announced again, so a client keeps the first `done` of each job.

Cost, as for a job's stream: progress comes from the in-memory hub, which wakes the stream the
moment one of its jobs changes; the database is read at most every half second per project
however many streams watch it (`Watchers.project_jobs`: one read of its queued and running jobs
and of those newer than the oldest id any of its streams needs, by index). It counts toward
`event_watch.STREAMS_PER_CLIENT`. One stream for a page with many jobs: browsers open at most six
HTTP/1.1 connections to a host, so one stream per job would starve a page with six queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from stable_diffusion_api.db import DatabaseUnavailable
from stable_diffusion_api.deps import ProjectDep, StudioDep
from stable_diffusion_api.errors import NotFound
from stable_diffusion_api.models import FINISHED
from stable_diffusion_api.routes.events import KEEPALIVE_S, ProgressNews, StreamSlot, sse
from stable_diffusion_api.routes.responses import GUARDED, errors
from stable_diffusion_api.services import Studio
from stable_diffusion_api.services.event_watch import STATUS_EVERY_S, Watchers
from stable_diffusion_api.services.generations import ProjectJobs
from stable_diffusion_api.services.progress import ProgressHub

# Credentials are checked in front of every route (auth.AuthGuard), streams included.
router = APIRouter(prefix="/api/v1", responses=GUARDED)

MAX_ID = 2**62  # ids are 64-bit in the database (deps.Id)


@dataclass
class _Followed:
    """A job the stream follows (queued or running when it last looked): what it has sent."""

    news: ProgressNews
    stack: contextlib.ExitStack  # its watch on the hub
    said: tuple[str, int | None] | None = None  # the status and queue position last sent
    problems: set[str] = field(default_factory=set)


class ProjectFeed:
    """One project stream's memory: the jobs it follows, what it has said of each, and the
    newest job id it has dealt with (`after`)."""

    def __init__(self, hub: ProgressHub, changed: asyncio.Event, after: int | None) -> None:
        self.hub = hub
        self.changed = changed  # set by the hub on news of any followed job
        self.after = after  # None until the first read says what the newest job is
        self.following: dict[int, _Followed] = {}
        # Jobs announced `done` that the last read still called active (it was made before
        # the end, or the end here came before the database's): not to be followed again.
        self.ended: set[int] = set()
        self._cursor_sent: int | None = None

    def floor(self) -> int:
        """The oldest job id the stream still needs: below every job it follows, at most
        `after` (before the first read: none but the running and queued)."""
        if self.after is None:
            return MAX_ID
        return min([self.after, *(job - 1 for job in self.following)])

    def read(self, found: ProjectJobs) -> str:
        """The events for one read of the project's jobs: new jobs, changed ones, ended ones."""
        if self.after is None:
            self.after = found.latest_id
        events = []
        for view in found.jobs:
            if view.id in self.ended:
                continue
            followed = self.following.get(view.id)
            if view.status in FINISHED:
                if followed is not None or view.id > self.after:
                    events.append(self._done(view.id, view.model_dump(mode="json")))
                continue  # else it ended before this stream, or was announced already
            if followed is None:
                followed = self._follow(view.id)
            if (view.status, view.position) != followed.said:
                followed.said = (view.status, view.position)
                events.append(sse("status", view.model_dump(mode="json", exclude={"progress"})))
        listed = {view.id for view in found.jobs}
        for gone in [job for job in self.following if job not in listed]:  # deleted meanwhile
            events.append(self._done(gone, {"id": gone, "status": "deleted", "error": None}))
        if found.jobs:
            self.after = max(self.after, found.jobs[-1].id)
        self.ended &= {view.id for view in found.jobs if view.status not in FINISHED}
        return "".join(events)

    def ended_here(self) -> tuple[str, bool]:
        """`done` for the followed jobs whose worker here sent its finished view along (no
        database read for the news), and whether one ended here without it (read it)."""
        events, unsure = [], False
        for job in list(self.following):
            state = self.hub.get(job)
            if state is None or state.status == "running":
                continue
            if state.result is not None:
                events.append(self._done(job, state.result))
            else:
                unsure = True
        return "".join(events), unsure

    def progress(self) -> str:
        """The hub's news of every followed job since the last call."""
        return "".join(filter(None, (f.news.event(self.hub) for f in self.following.values())))

    def problems(self, database: str | None) -> str:
        """Why a followed job's outcome cannot be saved (its worker's word, or the database's
        refusal to be read: `database`), each said once per job."""
        events = []
        for job, followed in self.following.items():
            state = self.hub.get(job)
            for problem in (state.problem if state is not None else None, database):
                if problem is not None and problem not in followed.problems:
                    followed.problems.add(problem)
                    events.append(sse("problem", {"id": job, "error": problem}))
        return "".join(events)

    def cursor(self) -> str:
        """An `id:` line when the oldest id the stream needs has moved (a reconnecting browser
        sends it back as Last-Event-ID)."""
        if self.after is None or self.floor() == self._cursor_sent:
            return ""
        self._cursor_sent = self.floor()
        return f"id: {self._cursor_sent}\n\n"

    def close(self) -> None:
        for followed in self.following.values():
            followed.stack.close()
        self.following.clear()

    def _follow(self, job: int) -> _Followed:
        stack = contextlib.ExitStack()
        stack.enter_context(self.hub.watch(job, self.changed))
        followed = self.following[job] = _Followed(ProgressNews(job), stack)
        return followed

    def _done(self, job: int, view: dict[str, Any]) -> str:
        """The last steps not sent yet (if it was followed), then the end; it is followed no
        more."""
        followed = self.following.pop(job, None)
        self.ended.add(job)
        if followed is None:
            return sse("done", view)
        followed.stack.close()
        return (followed.news.event(self.hub) or "") + sse("done", view)


async def project_events_stream(
    request: Request, studio: Studio, project_id: int, slot: tuple[Watchers, str], after: int | None
) -> AsyncIterator[str]:
    watch, client = slot
    with (
        watch.project_stream(client, project_id) as token,
        studio.hub.watch_project(project_id, asyncio.Event()) as changed,
    ):
        feed = ProjectFeed(studio.hub, changed, after)
        try:
            async for chunk in _events(request, studio, project_id, watch, token, feed):
                yield chunk
        finally:
            feed.close()


async def _events(
    request: Request,
    studio: Studio,
    project_id: int,
    watch: Watchers,
    token: int,
    feed: ProjectFeed,
) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    last_db = 0.0
    last_sent = time.monotonic()
    submitted = -1
    while not studio.workers.stopping.is_set():
        now = time.monotonic()
        # A job that just finished here is announced at once, not at the next read.
        ended, unsure = feed.ended_here()
        news = [ended]
        database = None
        # Read the jobs on the read's turn, and at once when one was submitted here.
        if (
            now - last_db >= STATUS_EVERY_S
            or unsure
            or studio.hub.submissions(project_id) != submitted
        ):
            last_db = now
            submitted = studio.hub.submissions(project_id)
            if await request.is_disconnected():
                return
            try:
                found = await watch.project_jobs(studio, project_id, token, feed.floor())
            except NotFound:  # the project was deleted: nothing is left to follow
                return
            except DatabaseUnavailable as exc:
                database = exc.message
            else:
                news.append(feed.read(found))
        news += [feed.progress(), feed.problems(database), feed.cursor()]
        if chunk := "".join(news):
            yield chunk
            last_sent = now
        elif now - last_sent > KEEPALIVE_S:
            yield ": keep-alive\n\n"  # a comment line: keeps proxies from closing it
            last_sent = now
        # Sleep until the hub has news of a followed job or of a new one (instantly), or the
        # next read.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(feed.changed.wait(), STATUS_EVERY_S)
        feed.changed.clear()


@router.get(
    "/projects/{project_id}/events",
    response_class=StreamingResponse,
    responses=errors(404, 429),
)
async def project_events(
    project: ProjectDep,
    studio: StudioDep,
    request: Request,
    slot: StreamSlot,
    after: Annotated[
        int | None,
        Query(ge=0, le=MAX_ID, description="also announce the end of every job newer than this"),
    ] = None,
    last_event_id: Annotated[
        int | None,
        Header(ge=0, le=MAX_ID, description="a reconnecting browser's last `id:` (as `after`)"),
    ] = None,
) -> StreamingResponse:
    """Every job of the project, live: status, progress, problems and the end of each (SSE)."""
    since = last_event_id if last_event_id is not None else after
    return StreamingResponse(
        project_events_stream(request, studio, project.id, slot, since),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
