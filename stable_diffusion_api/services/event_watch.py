"""The event streams open now (`routes/events.py`): a cap per client, one shared status read.

Each stream used to read its job from the database every half second: 500 idle streams took
the p50 of every read from 5 ms to 1.2 s. Now the streams of one job share one read per
`STATUS_EVERY_S`, and one client may hold at most `STREAMS_PER_CLIENT` streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from starlette.concurrency import run_in_threadpool

from stable_diffusion_api.errors import DomainError
from stable_diffusion_api.schemas import GenerationOut
from stable_diffusion_api.services import Studio

STATUS_EVERY_S = 0.5
STREAMS_PER_CLIENT = 32


class Watchers:
    """The streams open now: how many each client holds, and each watched job's last view,
    read from the database at most every STATUS_EVERY_S and shared by all its streams."""

    def __init__(self, per_client: int = STREAMS_PER_CLIENT) -> None:
        self.per_client = per_client
        self.clients: dict[str, int] = {}
        self._views: dict[int, tuple[float, GenerationOut]] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._watching: dict[int, int] = {}

    @contextlib.contextmanager
    def stream(self, client: str, generation_id: int) -> Iterator[None]:
        """Count one stream of `client` on the job; TooManyStreams over the cap."""
        if self.clients.get(client, 0) >= self.per_client:
            raise TooManyStreams(self.per_client)
        self.clients[client] = self.clients.get(client, 0) + 1
        self._watching[generation_id] = self._watching.get(generation_id, 0) + 1
        try:
            yield
        finally:
            self.clients[client] -= 1
            if not self.clients[client]:
                del self.clients[client]
            self._watching[generation_id] -= 1
            if not self._watching[generation_id]:  # the last watcher left: forget the job
                del self._watching[generation_id]
                self._views.pop(generation_id, None)
                self._locks.pop(generation_id, None)

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
            "(or watch several jobs from one page)"
        )
