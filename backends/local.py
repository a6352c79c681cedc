"""`file://PATH`: the local filesystem, the default store (`file://./.swarm`).

fsspec's LocalFileSystem does deletes. Writes go through a temporary file and `os.replace`,
so a killed process never leaves a torn object; `create` links the temporary file in (which
fails if the key exists). A temporary file is named `KEY~PID.THREAD`: no key contains "~", so
one left by a dead writer is never listed or mistaken for a key. `swap` holds an `flock` on
one of 256 lock files under `~locks/`, chosen by the key's hash, so it is atomic across
processes on one machine; `write` and `delete` hold it too, so neither lands between a swap's
check and its rename (the engine's writes are `create` and `swap`: it costs them nothing). Striped locks, not one lock file per key: creating a file costs
0.02-0.9 ms on this VM's ext4, and a per-key lock file made every claim of a node create one
more.

Objects are read and written with `os.open`/`os.read`/`os.write`, not `open()`: a
buffered file also calls fstat, ioctl and lseek, and every system call lets another
thread take the GIL, which with hundreds of node threads costs more than the call.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import re
import threading

import fsspec

from swarm_core.store import KeyNotFound, Store, StoreError, check_key, check_prefix, is_key


LOCKS = "~locks"  # "~" is not allowed in keys (store.check_key): never listed, never a key
STRIPES = 256
_OLD_TMP = re.compile(r"\.\d+\.\d+\.tmp\Z")  # `KEY.PID.THREAD.tmp`: temporary files of versions before "~"


_CHUNK = 1 << 16  # under malloc's mmap threshold: a bigger buffer costs an mmap and munmap per read


def _read_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunk = os.read(fd, _CHUNK)  # a folder raises IsADirectoryError here
        if len(chunk) < _CHUNK:  # a regular file reads short only at its end: one call for a record
            return chunk
        chunks = [chunk]
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _open(path: str, flags: int) -> int:
    """os.open, making the file's folder when it is missing: new, or removed since this store wrote there."""
    try:
        return os.open(path, flags | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, flags | os.O_CLOEXEC, 0o644)


def _os_errors(doing: str):
    """A method whose OSError (no permission, a full disk, a file where a folder must be) leaves
    as a StoreError naming the store and the key, like every other backend's failures."""

    def wrap(method):
        @functools.wraps(method)
        def run(self, key, *args):
            try:
                return method(self, key, *args)
            except OSError as exc:
                where = f" ({exc.filename})" if exc.filename else ""
                raise StoreError(f"cannot {doing} {key} in {self.uri}: {exc.strerror or exc}{where}") from None

        return run

    return wrap


def _version(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


class FileStore(Store):
    inline = True  # local and quick: the greenlet runner calls it on its loop's thread

    def __init__(self, path: str = "./.swarm"):
        self.root = os.path.abspath(os.path.expanduser(path or "./.swarm"))
        self.uri = f"file://{self.root}"
        self.fs = fsspec.filesystem("file")
        # The root is made by the first write: a read of a mistyped path must not create it.
        if os.path.lexists(self.root) and not os.path.isdir(self.root):
            raise StoreError(f"store folder {self.root} is not a folder")

    def _path(self, key: str) -> str:
        return os.path.join(self.root, check_key(key))

    @_os_errors("read")
    def read(self, key: str) -> bytes:
        try:
            return _read_file(self._path(key))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise KeyNotFound(f"{key} not found in {self.uri}") from None

    def _aside(self, path: str, data: bytes) -> str:
        """Write `data` to a temporary file beside `path`; return its name. A failed write (a full
        disk) removes what it wrote, so retries do not fill the disk with temporary files."""
        tmp = f"{path}~{os.getpid()}.{threading.get_ident()}"  # "~": a name no key can have
        fd = _open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        return tmp

    def _put(self, path: str, data: bytes) -> None:
        tmp = self._aside(path, data)
        try:
            os.replace(tmp, path)
        except BaseException:  # a folder in the key's place: its temporary file must not stay behind
            os.unlink(tmp)
            raise

    @_os_errors("write")
    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with self._locked(key):  # never between a swap's check of the version and its rename
            self._put(path, data)

    @_os_errors("create")
    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = self._aside(path, data)  # written aside first, then linked in: O_EXCL-like and never torn
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    @contextlib.contextmanager
    def _locked(self, key: str):
        """An exclusive flock on the key's stripe. flock belongs to the open file, so threads
        of one process exclude each other too (each opens its own)."""
        stripe = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=2).digest(), "big") % STRIPES
        fd = _open(os.path.join(self.root, LOCKS, str(stripe)), os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # the open file's only descriptor: closing it releases the flock

    @_os_errors("swap")
    def swap(self, key: str, data: bytes, expected_version: str) -> bool:
        path = self._path(key)  # the key checked before a lock file is opened for it
        with self._locked(key):
            try:
                current = self.version(key)
            except KeyNotFound:
                return False
            if current != expected_version:
                return False
            self._put(path, data)
            return True

    def version(self, key: str) -> str:
        return _version(self.read(key))

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        data = self.read(key)
        return data, _version(data)

    @_os_errors("list")
    def list(self, prefix: str) -> list[str]:
        rel = check_prefix(prefix)
        keys: list[str] = []
        self._scan(os.path.join(self.root, rel) if rel else self.root, f"{rel}/" if rel else "", keys)
        return sorted(keys)

    def _scan(self, folder: str, rel: str, keys: list[str]) -> None:
        # scandir knows file from folder without a stat per entry: a join group of 1000 is one call
        try:
            entries = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return
        with entries:
            for entry in entries:
                if not is_key(entry.name):  # ~locks, a temporary KEY~PID.THREAD, a name no key has
                    continue
                if entry.is_dir(follow_symlinks=False):
                    self._scan(entry.path, f"{rel}{entry.name}/", keys)
                elif not _OLD_TMP.search(entry.name):  # a temporary file of versions before "~"
                    keys.append(rel + entry.name)

    @_os_errors("delete")
    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._locked(key):  # a swap must not bring back what was deleted after its check
            if not os.path.isfile(path):
                raise KeyNotFound(f"{key} not found in {self.uri}")
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                raise KeyNotFound(f"{key} not found in {self.uri}") from None
