"""`s3://BUCKET/PREFIX`: Amazon S3 (or any S3 API: moto, MinIO) through s3fs and boto3.

s3fs carries plain I/O. The conditional writes are boto3 `put_object` with
`IfNoneMatch='*'` (create) and `IfMatch=<etag>` (swap); the version is the ETag,
the MD5 of the content for these single-part puts, so rewriting identical bytes
keeps the version (a swap from it replaces equal content: harmless).
Settings: `AWS_ENDPOINT_URL` and the usual AWS credential chain.
"""

from __future__ import annotations

import os
import time
import uuid

import boto3
import s3fs
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from swarm_core.store import KeyNotFound, Store, StoreError, check_key

WRITER = "swarmwriter"  # metadata naming the call that wrote an object: a retried conditional put knows its own
_MISSING = {"NoSuchKey", "404", "NotFound"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _brief(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


class S3Store(Store):
    def __init__(self, location: str = ""):
        self.bucket, _, prefix = location.strip("/").partition("/")
        self.prefix = prefix.strip("/")
        if not self.bucket:
            raise StoreError("an S3 store needs a bucket: s3://BUCKET/PREFIX")
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, config=Config(retries={"mode": "standard"}))
        self.fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _path(self, key: str) -> str:
        return f"{self.bucket}/{self._name(key)}"

    def _fail(self, op: str, key: str, exc: Exception) -> StoreError:
        return StoreError(f"{op} {key!r} in {self.uri} failed: {_brief(exc)}")

    def _make_bucket(self) -> None:
        """Create the missing bucket, or say clearly that it is missing."""
        region = self.client.meta.region_name
        kw = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        try:
            self.client.create_bucket(Bucket=self.bucket, **kw)
        except ClientError as exc:
            if _code(exc) != "BucketAlreadyOwnedByYou":
                raise StoreError(f"S3 bucket {self.bucket!r} does not exist and could not be created "
                                 f"({_code(exc) or _brief(exc)}); create it or grant s3:CreateBucket") from None

    # -- plain I/O: s3fs
    def read(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return self.fs.cat_file(path, max_concurrency=1)  # one GET: no HEAD to plan a parallel download
        except FileNotFoundError:
            raise KeyNotFound(f"{key} not found in {self.uri}") from None
        except Exception as exc:
            raise self._fail("read", key, exc) from exc

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            try:
                self.fs.pipe_file(path, bytes(data))
            except FileNotFoundError:  # a put only misses its bucket
                self._make_bucket()
                self.fs.pipe_file(path, bytes(data))
        except StoreError:
            raise
        except Exception as exc:
            raise self._fail("write", key, exc) from exc

    def list(self, prefix: str) -> list[str]:
        # boto3's paginated listing: one request per 1000 keys (s3fs's find probes empty paths as files)
        start = "/".join(p for p in (self.prefix, prefix.strip("/")) if p)
        start = start + "/" if start else ""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)
            names = [obj["Key"] for page in pages for obj in page.get("Contents", ())]
        except ClientError as exc:
            if _code(exc) == "NoSuchBucket":
                return []
            raise self._fail("list", prefix, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("list", prefix, exc) from exc
        cut = len(self.prefix) + 1 if self.prefix else 0
        return sorted(name[cut:] for name in names)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            if self.fs.info(path)["type"] != "file":  # S3 deletes of absent keys succeed silently
                raise FileNotFoundError(path)
            self.fs.rm_file(path)
        except FileNotFoundError:
            raise KeyNotFound(f"{key} not found in {self.uri}") from None
        except Exception as exc:
            raise self._fail("delete", key, exc) from exc

    # -- versions and conditional writes: boto3
    def version(self, key: str) -> str:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._name(key))["ETag"]
        except ClientError as exc:
            if _code(exc) in _MISSING or _code(exc) == "NoSuchBucket":
                raise KeyNotFound(f"{key} not found in {self.uri}") from None
            raise self._fail("version", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("version", key, exc) from exc

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self._name(key))
            return got["Body"].read(), got["ETag"]
        except ClientError as exc:
            if _code(exc) in _MISSING or _code(exc) == "NoSuchBucket":
                raise KeyNotFound(f"{key} not found in {self.uri}") from None
            raise self._fail("read", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("read", key, exc) from exc

    def create(self, key: str, data: bytes) -> bool:
        return self._put_if("create", key, data, IfNoneMatch="*")

    def swap(self, key: str, data: bytes, expected_version: str) -> bool:
        return self._put_if("swap", key, data, IfMatch=expected_version)

    def _put_if(self, op: str, key: str, data: bytes, **condition: str) -> bool:
        name, token = self._name(key), uuid.uuid4().hex
        for attempt in range(8):
            try:
                self.client.put_object(Bucket=self.bucket, Key=name, Body=bytes(data),
                                       Metadata={WRITER: token}, **condition)
                return True
            except ClientError as exc:
                code = _code(exc)
                if code == "PreconditionFailed":  # lost, unless it is an SDK retry of a put that had landed
                    retried = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) > 0
                    return retried and self._wrote(name, token)
                if op == "swap" and (code in _MISSING or code == "NoSuchBucket"):  # If-Match on an absent key
                    return False
                if code == "NoSuchBucket" and attempt == 0:
                    self._make_bucket()
                    continue
                if code == "ConditionalRequestConflict":  # a concurrent conditional put: S3 asks to retry
                    time.sleep(0.05 * (attempt + 1))
                    continue
                raise self._fail(op, key, exc) from exc
            except BotoCoreError as exc:
                raise self._fail(op, key, exc) from exc
        raise StoreError(f"{op} {key!r} in {self.uri} failed: conditional put kept conflicting")

    def _wrote(self, name: str, token: str) -> bool:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=name)
        except ClientError:
            return False
        return head.get("Metadata", {}).get(WRITER) == token
