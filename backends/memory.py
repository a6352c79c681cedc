"""`memory://NAME`: fsspec's in-process memory filesystem, for tests and benchmarks.

fsspec's memory store is one dict per process, so stores with the same NAME share
objects; a lock makes `create` and `swap` atomic between threads. fsspec's `find` scans
every object of every memory store in the process, so this adapter lists from its own
per-folder index (and tests existence with `isfile`, a dict lookup).
"""

from __future__ import annotations

import threading
from collections import defaultdict

import fsspec

from swarm_core.store import KeyNotFound, Store, check_key

_LOCKS: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
_VERSIONS: defaultdict[str, dict[str, int]] = defaultdict(dict)
_FOLDERS: defaultdict[str, defaultdict[str, set[str]]] = defaultdict(lambda: defaultdict(set))


class MemoryStore(Store):
    def __init__(self, name: str = "swarm"):
        self.name = (name or "swarm").strip("/")
        self.uri = f"memory://{self.name}"
        self.fs = fsspec.filesystem("memory")
        self._lock = _LOCKS[self.name]
        self._versions = _VERSIONS[self.name]
        self._folders = _FOLDERS[self.name]  # folder key -> names of the objects written in it

    def _path(self, key: str) -> str:
        return f"/{self.name}/{check_key(key)}"

    def read(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            raise KeyNotFound(f"{key} not found in {self.uri}") from None

    def _put(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(key), bytes(data))
        self._versions[key] = self._versions.get(key, 0) + 1
        folder, _, name = key.rpartition("/")
        self._folders[folder].add(name)

    def write(self, key: str, data: bytes) -> None:
        with self._lock:
            self._put(key, data)

    def create(self, key: str, data: bytes) -> bool:
        with self._lock:
            if self.fs.isfile(self._path(key)):
                return False
            self._put(key, data)
            return True

    def swap(self, key: str, data: bytes, expected_version: str) -> bool:
        with self._lock:
            if not self.fs.isfile(self._path(key)) or self._ver(key) != expected_version:
                return False
            self._put(key, data)
            return True

    def _ver(self, key: str) -> str:
        # fsspec's memory objects carry no generation; count writes made through this process.
        return str(self._versions.setdefault(key, 1))

    def version(self, key: str) -> str:
        with self._lock:
            if not self.fs.isfile(self._path(key)):
                raise KeyNotFound(f"{key} not found in {self.uri}")
            return self._ver(key)

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        with self._lock:
            return self.read(key), self._ver(key)

    def list(self, prefix: str) -> list[str]:
        top = prefix.rstrip("/")
        if top:
            check_key(top)
        keys = []
        with self._lock:
            for folder, names in self._folders.items():
                if not top or folder == top or folder.startswith(top + "/"):
                    keys.extend(f"{folder}/{n}" if folder else n for n in names)
        store, root = self.fs.store, f"/{self.name}/"
        return sorted(k for k in keys if root + k in store)  # the fsspec dict may have been cleared

    def delete(self, key: str) -> None:
        with self._lock:
            try:
                self.fs.rm_file(self._path(key))
            except FileNotFoundError:
                raise KeyNotFound(f"{key} not found in {self.uri}") from None
            self._versions.pop(key, None)
            folder, _, name = key.rpartition("/")
            self._folders[folder].discard(name)
