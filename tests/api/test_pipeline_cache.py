"""The pipeline cache: one load per key, LRU eviction within a memory budget."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable

from stable_diffusion_api.services.pipeline_cache import PipelineCache


def test_loads_once_per_key_and_evicts_least_recently_used() -> None:
    loaded: list[Hashable] = []
    evicted: list[Hashable] = []
    cache: PipelineCache[str] = PipelineCache(
        lambda key: loaded.append(key) or f"pipe {key}", budget_bytes=100,
        on_evict=lambda key, value: evicted.append(key),
    )  # fmt: skip
    assert cache.get("a", 40) == "pipe a"
    assert cache.get("a", 40) == "pipe a" and loaded == ["a"]
    cache.get("b", 40)
    cache.get("a", 40)  # a is now the most recently used
    cache.get("c", 40)  # 120 > 100: the least recently used (b) goes
    assert evicted == ["b"] and cache.keys() == ["a", "c"] and cache.used_bytes == 80
    cache.get("big", 500)  # over budget alone: everything else goes, it still loads
    assert cache.keys() == ["big"] and evicted == ["b", "a", "c"]
    cache.clear()
    assert cache.keys() == [] and cache.loads == 4


def test_concurrent_requests_for_one_key_share_one_load() -> None:
    started = threading.Event()

    def slow_load(key: Hashable) -> object:
        started.set()
        time.sleep(0.2)
        return object()

    cache: PipelineCache[object] = PipelineCache(slow_load, budget_bytes=10)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("k", 1))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.loads == 1 and len({id(r) for r in results}) == 1
