"""What the object-store backends (S3, GCS, Azure Blob) share: `BUCKET/PREFIX` locations,
fsspec for plain I/O, a bucket made on first miss, prefix listing, and the retry rule of
conditional writes.

A cloud module supplies only what differs: its clients, how it lists, reads a version,
creates a bucket, and sends one conditional put (translating its SDK's answer into
`Lost`, `Missing` or `Retry`). No SDK is imported here.
"""

from __future__ import annotations

import re
import time
import uuid
from abc import abstractmethod
from typing import Any, ClassVar

from swarm_core.store import (
    KeyNotFound,
    Store,
    StoreError,
    check_key,
    check_prefix,
    is_key,
)

WRITER = "swarmwriter"  # metadata naming the call that wrote an object: a retried conditional put knows its own
TRANSIENT = {408, 429, 500, 502, 503, 504}
# What a version token can be: printable ASCII but space and "*". An If-Match of "*" (Azure) or ""
# (S3 sends none) would match any object, and a swap of a token no store issued must simply lose.
_TOKEN = re.compile(r"[!-)+-~]+")


def brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


class Lost(Exception):
    """A conditional put's precondition did not hold. `retried`: the SDK resent it, so it may be our own."""

    def __init__(self, retried: bool = False):
        super().__init__("precondition failed")
        self.retried = retried


class Missing(Exception):
    """A conditional put met no object (swap) or no bucket (`bucket=True`)."""

    def __init__(self, bucket: bool):
        super().__init__("bucket not found" if bucket else "object not found")
        self.bucket = bucket


class Retry(Exception):
    """A transient failure worth another attempt; `sent`: the request may have landed unseen."""

    def __init__(self, reason: str, sent: bool):
        super().__init__(reason)
        self.sent = sent


class BucketStore(Store):
    scheme = ""  # the URI scheme, e.g. "s3"
    label = ""  # the cloud's name in messages, e.g. "S3"
    kind = "bucket"  # what the first path segment names ("container" on Azure)
    grant = ""  # the permission that lets a missing bucket be created
    errors: ClassVar[tuple[type[Exception], ...]] = ()  # the SDK's exceptions: each becomes a StoreError naming the key
    read_options: ClassVar[dict[str, Any]] = {}  # extra arguments of the fsspec `cat_file`
    put_attempts = 6

    def __init__(self, location: str = ""):
        self.bucket_name, _, prefix = location.strip("/").partition("/")
        self.prefix = prefix.strip("/")
        if not self.bucket_name:
            raise StoreError(f"the {self.label} store needs a {self.kind}: "
                             f"{self.scheme}://{self.kind.upper()}/PREFIX")
        self.uri = f"{self.scheme}://{self.bucket_name}/{self.prefix}".rstrip("/")
        if {"", ".", ".."} & set(self.prefix.split("/")) and self.prefix:  # Azure's URL resolves "..": a 403
            raise StoreError(f"{self.uri}: a prefix has no empty, '.' or '..' folder")

    # -- what each cloud supplies
    def _is_missing(self, exc: Exception) -> bool:
        """True if `exc` says the object (or its bucket) does not exist."""
        return isinstance(exc, FileNotFoundError)

    @abstractmethod
    def _create_bucket(self) -> None:
        """Create the bucket; one that already exists is not an error."""

    @abstractmethod
    def _names(self, start: str):
        """Every object name beginning with `start` (the SDK's paginated listing)."""

    @abstractmethod
    def _head(self, name: str) -> str:
        """The object's version."""

    @abstractmethod
    def _get(self, name: str) -> tuple[bytes, str]:
        """The object's bytes and version, in one request."""

    @abstractmethod
    def _metadata(self, name: str) -> dict:
        """The object's user metadata (where WRITER is)."""

    @abstractmethod
    def _put(self, name: str, data: bytes, metadata: dict, expected: str | None) -> None:
        """One conditional put: if absent (`expected` None) or if the version is `expected`.
        Raises Lost, Missing or Retry for those answers; anything else is an error."""

    def _remove(self, path: str) -> None:
        self.fs.rm_file(path)

    def _pause(self, attempt: int) -> None:
        time.sleep(0.2 * 2**attempt)

    # -- keys and errors
    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _path(self, key: str) -> str:
        return f"{self.bucket_name}/{self._name(key)}"

    def _fail(self, op: str, key: str, exc: BaseException) -> StoreError:
        return StoreError(f"{op} {key!r} in {self.uri} failed: {brief(exc)}")

    def _not_found(self, key: str) -> KeyNotFound:
        return KeyNotFound(f"{key} not found in {self.uri}")

    def _make_bucket(self) -> None:
        """Create the missing bucket, or say clearly that it is missing."""
        try:
            self._create_bucket()
        except self.errors as exc:
            raise StoreError(f"{self.label} {self.kind} {self.bucket_name!r} does not exist and could not be "
                             f"created ({brief(exc)}); create it or grant {self.grant}") from None

    # -- plain I/O: fsspec
    def read(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return self.fs.cat_file(path, **self.read_options)
        except Exception as exc:
            if self._is_missing(exc):
                raise self._not_found(key) from None
            raise self._fail("read", key, exc) from exc

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            try:
                self.fs.pipe_file(path, bytes(data))
            except Exception as exc:
                if not self._is_missing(exc):  # a put only misses its bucket
                    raise
                self._make_bucket()
                self.fs.pipe_file(path, bytes(data))
        except StoreError:
            raise
        except Exception as exc:
            raise self._fail("write", key, exc) from exc

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            self._remove(path)
        except Exception as exc:
            if self._is_missing(exc):
                raise self._not_found(key) from None
            raise self._fail("delete", key, exc) from exc

    def list(self, prefix: str) -> list[str]:
        start = "/".join(p for p in (self.prefix, check_prefix(prefix)) if p)
        start = start + "/" if start else ""
        try:
            names = list(self._names(start))
        except self.errors as exc:
            if self._is_missing(exc):  # no bucket yet: nothing in it
                return []
            raise self._fail("list", prefix, exc) from exc
        cut = len(self.prefix) + 1 if self.prefix else 0
        return sorted(key for name in names if is_key(key := name[cut:]))

    # -- versions and conditional writes: the cloud's SDK
    def version(self, key: str) -> str:
        return self._ask("version", key, self._head)

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        return self._ask("read", key, self._get)

    def _ask(self, op: str, key: str, call):
        try:
            return call(self._name(key))
        except (FileNotFoundError, *self.errors) as exc:
            if self._is_missing(exc):
                raise self._not_found(key) from None
            raise self._fail(op, key, exc) from exc

    def create(self, key: str, data: bytes) -> bool:
        return self._put_if("create", key, data, None)

    def swap(self, key: str, data: bytes, expected_version: str) -> bool:
        if not _TOKEN.fullmatch(expected_version):
            check_key(key)
            return False
        return self._put_if("swap", key, data, expected_version)

    def _put_if(self, op: str, key: str, data: bytes, expected: str | None) -> bool:
        name, token, data = self._name(key), uuid.uuid4().hex, bytes(data)
        made_bucket = uncertain = False  # uncertain: an earlier attempt may have landed unseen
        for attempt in range(self.put_attempts):
            try:
                self._put(name, data, {WRITER: token}, expected)
                return True
            except Lost as lost:  # lost, unless a retry of a put that had landed: the writer token says
                return (uncertain or lost.retried) and self._wrote(name, token)
            except Missing as missing:
                if expected is not None:
                    return False  # a swap of an absent object
                if made_bucket or not missing.bucket:
                    raise self._fail(op, key, missing.__cause__ or missing) from missing.__cause__
                self._make_bucket()
                made_bucket = True
            except Retry as retry:
                uncertain = uncertain or retry.sent
                if attempt + 1 == self.put_attempts:
                    raise StoreError(f"{op} {key!r} in {self.uri} failed: {retry}") from retry.__cause__
                self._pause(attempt)
            except self.errors as exc:
                raise self._fail(op, key, exc) from exc
        raise StoreError(f"{op} {key!r} in {self.uri} failed: gave up after retries")

    def _wrote(self, name: str, token: str) -> bool:
        try:
            return self._metadata(name).get(WRITER) == token
        except (FileNotFoundError, *self.errors):
            return False
