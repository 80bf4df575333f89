"""An LRU cache of loaded pipelines, bounded by a memory budget.

Keyed by (model path, device, dtype, low-memory mode). Loading happens once per key, in the
worker that asks first; another worker asking for the same key waits for that load instead of
starting a second one. When a new pipeline would not fit in the budget, the least recently used
ones are dropped first (the newest always loads, even alone over budget: a budget too small for
one model must not make generation impossible).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class PipelineCache(Generic[T]):
    def __init__(
        self,
        load: Callable[[Hashable], T],
        budget_bytes: int,
        on_evict: Callable[[Hashable, T], None] | None = None,
    ) -> None:
        self._load = load
        self.budget_bytes = budget_bytes
        self._on_evict = on_evict
        self._entries: OrderedDict[Hashable, tuple[T, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}
        self.loads = 0  # how many times `load` ran: tests and logs use it

    def get(self, key: Hashable, size_bytes: int) -> T:
        """The pipeline for `key`, loading it (estimated at `size_bytes`) when absent."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key][0]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:  # another thread may have loaded it while we waited
                if key in self._entries:
                    self._entries.move_to_end(key)
                    return self._entries[key][0]
                self._evict_for(size_bytes)
            value = self._load(key)
            with self._lock:
                self.loads += 1
                self._evict_for(size_bytes)
                self._entries[key] = (value, size_bytes)
                self._loading.pop(key, None)
            return value

    def _evict_for(self, size_bytes: int) -> None:
        while self._entries and self.used_bytes + size_bytes > self.budget_bytes:
            key, (value, _) = self._entries.popitem(last=False)
            if self._on_evict is not None:
                self._on_evict(key, value)

    @property
    def used_bytes(self) -> int:
        return sum(size for _, size in self._entries.values())

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            while self._entries:
                key, (value, _) = self._entries.popitem(last=False)
                if self._on_evict is not None:
                    self._on_evict(key, value)
