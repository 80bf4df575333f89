"""Failed sign-ins, counted per client address: after `limit` failures within `window_s`
seconds, that address may not try again until the oldest of them is `window_s` old.

Every way of presenting credentials counts (the login form, X-API-Key, a Bearer token, HTTP
Basic), so guessing through one way does not get around the limit of another. A valid login
cookie is not an attempt and always works. Kept in memory: a restart forgets the failures.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

FAILURES = 5
WINDOW_S = 60.0
# Addresses remembered at most; past that, those whose failures are all old are dropped first.
MAX_CLIENTS = 10_000


class FailureLimiter:
    def __init__(
        self,
        limit: int = FAILURES,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.get(client, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def retry_after(self, client: str) -> float | None:
        """Seconds until `client` may try again; None when it may now."""
        now = self.clock()
        with self._lock:
            times = self._recent(client, now)
            if len(times) < self.limit:
                return None
            return max(times[0] + self.window_s - now, 0.001)

    def failed(self, client: str) -> None:
        """Count one failed attempt by `client`."""
        now = self.clock()
        with self._lock:
            times = self._recent(client, now)
            times.append(now)
            while len(times) > self.limit:
                times.popleft()
            self._failures[client] = times
            if len(self._failures) > MAX_CLIENTS:
                self._forget_old(now)

    def _forget_old(self, now: float) -> None:
        stale = [c for c, times in self._failures.items() if not self._recent(c, now)]
        for client in stale:
            del self._failures[client]
        while len(self._failures) > MAX_CLIENTS:  # all recent: drop the earliest added
            del self._failures[next(iter(self._failures))]

    def message(self, retry_after_s: float) -> str:
        """What a locked-out client is told."""
        return (
            f"too many failed sign-in attempts from this address ({self.limit} within "
            f"{self.window_s:g} s): try again in {math.ceil(retry_after_s)} s"
        )
