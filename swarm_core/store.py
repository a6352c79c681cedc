"""The storage adapter contract (DESIGN.md §3) and the registry that opens one from a URI.

Every concern (state, history, actions, memory) goes through `Store`. Keys are
relative POSIX paths (`swarms/<id>/nodes/root.json`); backends map them under
their own root. Cloud SDKs are imported only by the backend that needs them.
"""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from typing import Any

from .cooperative import blocking

# Segments of letters, digits and `_.-`, none of them `.` or `..`: one match per key. At most 200
# characters a segment (a file name, with the file store's temporary suffix, fits in 255) and 1024
# a key (S3, GCS and Azure refuse longer names; their emulators do not, so tests would not tell).
_SEGMENT = r"(?!\.\.?(?:/|\Z))[A-Za-z0-9_.\-]{1,200}"
_KEY = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
MAX_KEY = 1024


class StoreError(Exception):
    """A storage operation failed; the message names the store and the key."""


class KeyNotFound(StoreError, KeyError):
    """`read`/`version`/`delete` of a key that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else "key not found"


def is_key(key: str) -> bool:
    """Whether `check_key` accepts `key`. Listings skip other names: a bucket console's folder
    placeholder `a/b/`, a stray file `notes 1.txt`, would be listed but could never be read."""
    return len(key) <= MAX_KEY and _KEY.fullmatch(key) is not None


def check_key(key: str) -> str:
    """Reject keys that could escape the store's root (`..`, absolute, empty segments)."""
    if not is_key(key):
        raise StoreError(f"invalid storage key {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """The folder a `list` prefix names: `a/b/` and `a/b` name `a/b`, `` names the whole store.
    Rejected like a key otherwise (`../` must not list what lies beside the store's root)."""
    folder = prefix[:-1] if prefix.endswith("/") else prefix
    if folder and not _KEY.fullmatch(folder):
        raise StoreError(f"invalid storage prefix {prefix!r}")
    return folder


class Store(ABC):
    """One small interface for every backend.

    `create` and `swap` are the only conditional writes the engine needs: exactly
    one concurrent `create` of a key returns True, and `swap` replaces an object
    only while its version is still `expected_version`.
    """

    uri: str = ""
    # True for a store whose calls are quick local work (file, memory): the greenlet runner makes
    # them on its loop's thread. Every other store's calls go through `cooperative.blocking`
    # (`Stores` wraps them with `offload`), so a slow request holds a pool thread, not every node.
    inline: bool = False

    @abstractmethod
    def read(self, key: str) -> bytes:
        """Return the object's bytes; raise KeyNotFound if absent."""

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Create or replace the object atomically (readers never see a torn write)."""

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Write only if absent. True for exactly one of any concurrent callers."""

    @abstractmethod
    def swap(self, key: str, data: bytes, expected_version: str) -> bool:
        """Replace the object only if its version is `expected_version`; False otherwise."""

    @abstractmethod
    def version(self, key: str) -> str:
        """An opaque token that changes whenever the object's bytes change; raise KeyNotFound if
        absent. Rewriting identical bytes may keep it (file and S3 hash the content), so a caller
        must not count on a rewrite alone to spoil a version: the engine's records carry a time."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix` (a folder-like prefix ending in '/'), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; raise KeyNotFound if absent."""

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        """Bytes and version read together; backends override it to make it one call."""
        while True:
            ver = self.version(key)
            data = self.read(key)
            if self.version(key) == ver:
                return data, ver

    def exists(self, key: str) -> bool:
        try:
            self.version(key)
            return True
        except KeyNotFound:
            return False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.uri}>"


class OffloadedStore(Store):
    """A store that does network I/O, each call made through `cooperative.blocking`."""

    inline = True  # its calls suspend the node rather than block the loop

    def __init__(self, inner: Store):
        self.inner = inner
        self.uri = inner.uri

    def __getattr__(self, name: str) -> Any:  # the adapter's own extras (a client, a bucket name)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def read(self, key: str) -> bytes:
        return blocking(self.inner.read, key)

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        return blocking(self.inner.read_versioned, key)

    def version(self, key: str) -> str:
        return blocking(self.inner.version, key)

    def exists(self, key: str) -> bool:
        return blocking(self.inner.exists, key)

    def write(self, key: str, data: bytes) -> None:
        blocking(self.inner.write, key, data)

    def create(self, key: str, data: bytes) -> bool:
        return blocking(self.inner.create, key, data)

    def swap(self, key: str, data: bytes, expected_version: str) -> bool:
        return blocking(self.inner.swap, key, data, expected_version)

    def list(self, prefix: str) -> list[str]:
        return blocking(self.inner.list, prefix)

    def delete(self, key: str) -> None:
        blocking(self.inner.delete, key)


def offload(store: Store) -> Store:
    """`store` itself when its calls are `inline`, else it wrapped so they leave the loop."""
    return store if store.inline else OffloadedStore(store)


# scheme -> "module:Class"; the module is imported only when the scheme is used.
BACKENDS: dict[str, str] = {
    "file": "backends.local:FileStore",
    "memory": "backends.memory:MemoryStore",
    "gs": "backends.gcs:GCSStore",
    "gcs": "backends.gcs:GCSStore",
    "az": "backends.azure:AzureStore",
    "azure": "backends.azure:AzureStore",
    "s3": "backends.s3:S3Store",
    "firestore": "backends.firestore:FirestoreStore",
}
# backend module -> the extra (pyproject.toml) that installs its cloud SDKs
EXTRAS = {"backends.gcs": "gcp", "backends.firestore": "gcp", "backends.azure": "azure", "backends.s3": "aws"}


def _load(path: str) -> type[Store]:
    module, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:  # ValueError: `:Class`, no module
        hint = f" (pip install -e '.[{EXTRAS[module]}]' installs it)" if isinstance(exc, ImportError) and module in EXTRAS else ""
        raise StoreError(f"cannot load storage adapter {path!r}: {exc}{hint}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Store)):
        raise StoreError(f"storage adapter {path!r} is not a swarm_core.store.Store subclass")
    return cls


def open_store(spec: str) -> Store:
    """Open a store from a URI (`file://./.swarm`, `memory://name`, `gs://bucket/prefix`, ...),
    a short backend name (`memory`), or a dotted path `pkg.module:Class` / `pkg.module.Class`
    of a user's own adapter (given the rest of the URI after `?`, if any).

    Entry points in the `swarm_core.backends` group add schemes: `myfs = mypkg.store:MyStore`.
    """
    spec = spec.strip()
    if not spec:
        raise StoreError("empty storage URI")
    scheme, sep, rest = spec.partition("://")
    if not sep:
        if spec in BACKENDS:  # a short name: default location for that backend
            scheme, rest = spec, ""
        elif ("." in spec or ":" in spec) and not spec.startswith((".", "/", "~")):  # `./.swarm` is a path, not an adapter
            path, _, arg = spec.partition("?")
            return _load(path)(arg)
        else:
            raise StoreError(f"unknown storage {spec!r}: use a URI like file://PATH or memory://NAME")
    target = BACKENDS.get(scheme)
    if target is None:
        for ep in entry_points(group="swarm_core.backends"):
            if ep.name == scheme:
                target = ep.value
                break
    if target is None:  # the spec is not echoed: `scheme://user:password@host` holds a secret
        raise StoreError(f"unknown storage scheme {scheme!r}; known: {', '.join(sorted(BACKENDS))}")
    if target.partition(":")[0] in EXTRAS and "@" in rest.partition("/")[0]:  # no cloud names a bucket with "@"
        raise StoreError(f"a {scheme}:// URI takes no credentials (it is not echoed here): "
                         "give them in the environment, as the backend's documentation says")
    return _load(target)(rest)
