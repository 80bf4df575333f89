"""The event streams open now (`routes/events.py`, `routes/project_events.py`): a cap per
client, and one shared database read per job or per project.

Each stream used to read its job from the database every half second: 500 idle streams took
the p50 of every read from 5 ms to 1.2 s. Now the streams of one job share one read per
`STATUS_EVERY_S`, the streams of one project share one read of its jobs per `STATUS_EVERY_S`
(`project_jobs`), and one client may hold at most `STREAMS_PER_CLIENT` streams of either kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from starlette.concurrency import run_in_threadpool

from stable_diffusion_api.errors import DomainError
from stable_diffusion_api.schemas import GenerationOut
from stable_diffusion_api.services import Studio
from stable_diffusion_api.services.generations import ProjectJobs

STATUS_EVERY_S = 0.5
STREAMS_PER_CLIENT = 32


class _Read(NamedTuple):
    """One read of a project's jobs, kept for the project's other streams."""

    at: float  # time.monotonic()
    after: int  # the oldest job id it covers (the active jobs come whatever their id)
    submitted: int  # the hub's count of the project's submissions before it was made
    found: ProjectJobs


@dataclass
class _ProjectReads:
    """The streams of one project: the oldest job id each still asks about, and the last read
    of the project's jobs."""

    floors: dict[int, int] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last: _Read | None = None


class Watchers:
    """The streams open now: how many each client holds, each watched job's last view and
    each watched project's last read of its jobs, read from the database at most every
    STATUS_EVERY_S and shared by all the streams watching it."""

    def __init__(self, per_client: int = STREAMS_PER_CLIENT) -> None:
        self.per_client = per_client
        self.clients: dict[str, int] = {}
        self._views: dict[int, tuple[float, GenerationOut]] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._watching: dict[int, int] = {}
        self._projects: dict[int, _ProjectReads] = {}
        self._tokens = itertools.count(1)

    @contextlib.contextmanager
    def _slot(self, client: str) -> Iterator[None]:
        """Count one stream of `client`; TooManyStreams over the cap."""
        if self.clients.get(client, 0) >= self.per_client:
            raise TooManyStreams(self.per_client)
        self.clients[client] = self.clients.get(client, 0) + 1
        try:
            yield
        finally:
            self.clients[client] -= 1
            if not self.clients[client]:
                del self.clients[client]

    @contextlib.contextmanager
    def stream(self, client: str, generation_id: int) -> Iterator[None]:
        """Count one stream of `client` on the job; TooManyStreams over the cap."""
        with self._slot(client):
            self._watching[generation_id] = self._watching.get(generation_id, 0) + 1
            try:
                yield
            finally:
                self._watching[generation_id] -= 1
                if not self._watching[generation_id]:  # the last watcher left: forget the job
                    del self._watching[generation_id]
                    self._views.pop(generation_id, None)
                    self._locks.pop(generation_id, None)

    @contextlib.contextmanager
    def project_stream(self, client: str, project_id: int) -> Iterator[int]:
        """Count one stream of `client` on the project (TooManyStreams over the cap); yields
        the stream's token for `project_jobs`."""
        with self._slot(client):
            reads = self._projects.setdefault(project_id, _ProjectReads())
            token = next(self._tokens)
            try:
                yield token
            finally:
                reads.floors.pop(token, None)
                if not reads.floors and self._projects.get(project_id) is reads:
                    del self._projects[project_id]  # the last watcher left: forget the read

    async def project_jobs(
        self, studio: Studio, project_id: int, token: int, after: int
    ) -> ProjectJobs:
        """The project's active jobs and those newer than `after`, read at most STATUS_EVERY_S
        ago and since its last submission here; one read, from the lowest `after` of its
        streams, serves them all. NotFound when the project is gone."""
        reads = self._projects.setdefault(project_id, _ProjectReads())
        reads.floors[token] = after
        async with reads.lock:  # the streams that ask together wait for one read
            submitted = studio.hub.submissions(project_id)
            last = reads.last
            if (
                last is not None
                and time.monotonic() - last.at < STATUS_EVERY_S
                and last.submitted == submitted
                and last.after <= after
            ):
                return last.found
            floor = min(reads.floors.values())
            found = await run_in_threadpool(studio.generations.project_jobs, project_id, floor)
            reads.last = _Read(time.monotonic(), floor, submitted, found)
            return found

    async def view(self, studio: Studio, generation_id: int) -> GenerationOut:
        """The job's view, at most STATUS_EVERY_S old; NotFound when it is gone."""
        lock = self._locks.setdefault(generation_id, asyncio.Lock())
        async with lock:  # the streams that ask together wait for one read
            cached = self._views.get(generation_id)
            if cached is not None and time.monotonic() - cached[0] < STATUS_EVERY_S:
                return cached[1]
            view = await run_in_threadpool(studio.generations.view, generation_id)
            self._views[generation_id] = (time.monotonic(), view)
            return view


class TooManyStreams(DomainError):
    status_code = 429

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this client already has {limit} event streams open, the most allowed; close one "
            "(or watch a whole project's jobs on one stream: /api/v1/projects/{id}/events)"
        )
