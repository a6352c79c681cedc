"""`memory://NAME`: fsspec's in-process memory filesystem, for tests and benchmarks.

fsspec's memory store is one dict per process (path -> `MemoryFile`), so stores with
the same NAME share objects, and `fsspec.open("memory://NAME/KEY")` reads what this
adapter wrote.

The adapter reads and writes that dict itself rather than through the filesystem's
methods: `pipe_file`/`cat_file` normalise the path and walk its parents on every call,
which was a third of a node's CPU time (benchmarks/README.md), and `find` scans every
object of every memory store in the process, so listing uses a per-folder index.

Every write puts a new `MemoryFile` in the dict, stamped with a version drawn from one
process-wide counter (so a deleted and re-created key never repeats a version). Replacing
a dict entry is atomic, so reads take no lock and always see bytes and version of one
write. Writes to one key exclude each other with one of 64 striped locks, chosen by the
key: one lock per store made a thousand concurrent nodes queue on it (0.51 -> 0.22 ms per
node once reads stopped taking it). The folder index changes by atomic dict and set
operations only.
"""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime
from io import BytesIO

import fsspec
from fsspec.implementations.memory import MemoryFile

from swarm_core.store import KeyNotFound, Store, StoreError, check_key, check_prefix

STRIPES = 64
# Per store name, shared by every MemoryStore of that name. Filled with dict.setdefault, which is
# atomic: two stores opened at once must not end up with different locks for one name.
_LOCKS: dict[str, tuple[threading.Lock, ...]] = {}
_FOLDERS: dict[str, dict[str, set[str]]] = {}
_STAMPS = itertools.count(1)  # next() is atomic in CPython


class _Object(MemoryFile):
    """fsspec's MemoryFile (what fsspec's own calls find in its dict), stamped with a version.
    Made without MemoryFile.__init__'s debug log and two clock reads: 5% of a node's CPU."""

    def __init__(self, fs, path: str, data: bytes):
        BytesIO.__init__(self, data)
        self.fs, self.path = fs, path
        self.created = self.modified = datetime.now(tz=UTC)
        self.swarm_version = next(_STAMPS)


class MemoryStore(Store):
    inline = True  # local and quick: the greenlet runner calls it on its loop's thread

    def __init__(self, name: str = "swarm"):
        self.name = (name or "swarm").strip("/")
        if "/" in self.name:  # memory://a/b's objects would be memory://a's keys under b/, unlisted and unlocked
            raise StoreError(f"memory store name {self.name!r}: a name is one word, without '/'")
        self.uri = f"memory://{self.name}"
        self.fs = fsspec.filesystem("memory")
        self._objects = self.fs.store  # fsspec's own dict: "/NAME/KEY" -> MemoryFile
        self._locks = _LOCKS.setdefault(self.name, tuple(threading.Lock() for _ in range(STRIPES)))
        self._folders = _FOLDERS.setdefault(self.name, {})  # folder key -> names of the objects written in it

    def _path(self, key: str) -> str:
        return f"/{self.name}/{check_key(key)}"

    def _get(self, key: str) -> MemoryFile:
        try:
            return self._objects[self._path(key)]
        except KeyError:
            raise KeyNotFound(f"{key} not found in {self.uri}") from None

    @staticmethod
    def _ver(obj: MemoryFile) -> str:
        # an object written through fsspec itself carries no stamp
        return str(getattr(obj, "swarm_version", 0))

    def read(self, key: str) -> bytes:
        return self._get(key).getvalue()

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        obj = self._get(key)
        return obj.getvalue(), self._ver(obj)

    def version(self, key: str) -> str:
        return self._ver(self._get(key))

    def _put(self, path: str, key: str, data: bytes) -> None:
        obj = _Object(self.fs, path, bytes(data))
        self._objects[path] = obj
        folder, _, name = key.rpartition("/")
        self._folders.setdefault(folder, set()).add(name)

    def _lock(self, path: str) -> threading.Lock:
        return self._locks[hash(path) % STRIPES]

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with self._lock(path):
            self._put(path, key, data)

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        with self._lock(path):
            if path in self._objects:
                return False
            self._put(path, key, data)
            return True

    def swap(self, key: str, data: bytes, expected_version: str) -> bool:
        path = self._path(key)
        with self._lock(path):
            current = self._objects.get(path)
            if current is None or self._ver(current) != expected_version:
                return False
            self._put(path, key, data)
            return True

    def list(self, prefix: str) -> list[str]:
        top = check_prefix(prefix)
        keys = []
        for folder, names in list(self._folders.items()):  # list(): a snapshot, taken atomically
            if not top or folder == top or folder.startswith(top + "/"):
                keys.extend(f"{folder}/{n}" if folder else n for n in list(names))
        root = f"/{self.name}/"
        return sorted(k for k in keys if root + k in self._objects)  # the fsspec dict may have been cleared

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._lock(path):
            if self._objects.pop(path, None) is None:
                raise KeyNotFound(f"{key} not found in {self.uri}")
            folder, _, name = key.rpartition("/")
            self._folders.get(folder, set()).discard(name)
