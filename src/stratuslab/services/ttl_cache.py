"""A small bounded map whose entries expire: what the controller's credential caches share."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """``key -> value`` for ``ttl`` seconds after the value was put (``ttl`` 0: nothing is
    kept). Times are the caller's monotonic clock. When ``size`` entries are held, the next
    put empties the cache first: cheap, and an emptied cache costs only lookups again."""

    def __init__(self, ttl: float, size: int = 100_000) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: K, *, now: float) -> V | None:
        if self.ttl <= 0:
            return None
        found = self._entries.get(key)
        if found is None or now - found[0] > self.ttl:
            return None
        return found[1]

    def put(self, key: K, value: V, *, now: float) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.size:
                self._entries.clear()
            self._entries[key] = (now, value)

    def discard_if(self, stale: Callable[[V], bool]) -> None:
        """Drop every entry whose value is ``stale``."""
        with self._lock:
            self._entries = {k: e for k, e in self._entries.items() if not stale(e[1])}
