"""A Store that counts every call the engine makes, for the benchmarks (fanout.py, storage.py)."""

from __future__ import annotations

import collections
import threading

from swarm_core.store import Store


class CountingStore(Store):
    """Delegates every call to `inner` and counts it by operation (thread-safe).

    `exists` is not overridden: it costs one `version`, counted as such. `create`/`swap` calls
    that returned False count too (a request was made) and again as `create_lost`/`swap_lost`;
    a lost swap of a swarm's counters object also counts as `counter_retries` (the engine
    re-reads and tries again). `listed_keys` is the number of keys the `list` calls returned."""

    def __init__(self, inner: Store):
        self.inner, self.uri = inner, inner.uri
        self.inline = inner.inline  # counting adds no I/O: off the greenlet runner's loop only if `inner` is
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def _count(self, op: str, n: int = 1) -> None:
        with self._lock:
            self.counts[op] += n

    def read(self, key: str) -> bytes:
        self._count("read")
        return self.inner.read(key)

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        self._count("read_versioned")
        return self.inner.read_versioned(key)

    def version(self, key: str) -> str:
        self._count("version")
        return self.inner.version(key)

    def list(self, prefix: str) -> list[str]:
        keys = self.inner.list(prefix)
        self._count("list")
        self._count("listed_keys", len(keys))
        return keys

    def write(self, key: str, data: bytes) -> None:
        self._count("write")
        self.inner.write(key, data)

    def create(self, key: str, data: bytes) -> bool:
        self._count("create")
        won = self.inner.create(key, data)
        if not won:
            self._count("create_lost")
        return won

    def swap(self, key: str, data: bytes, expected_version: str) -> bool:
        self._count("swap")
        won = self.inner.swap(key, data, expected_version)
        if not won:
            self._count("swap_lost")
            if key.endswith("/counters.json"):
                self._count("counter_retries")
        return won

    def delete(self, key: str) -> None:
        self._count("delete")
        self.inner.delete(key)
