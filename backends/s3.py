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

import boto3
import s3fs
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .bucket import BucketStore, Lost, Missing, Retry

_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}


def _code(exc: Exception) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) if isinstance(exc, ClientError) else ""


class S3Store(BucketStore):
    scheme, label, grant = "s3", "S3", "s3:CreateBucket"
    errors = (ClientError, BotoCoreError)
    read_options = {"max_concurrency": 1}  # one GET: no HEAD to plan a parallel download
    put_attempts = 8

    def __init__(self, location: str = ""):
        super().__init__(location)
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, config=Config(retries={"mode": "standard"}))
        self.fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)

    def _is_missing(self, exc: Exception) -> bool:
        return super()._is_missing(exc) or _code(exc) in _MISSING

    def _create_bucket(self) -> None:
        region = self.client.meta.region_name
        kw = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        try:
            self.client.create_bucket(Bucket=self.bucket_name, **kw)
        except ClientError as exc:
            if _code(exc) != "BucketAlreadyOwnedByYou":
                raise

    def _remove(self, path: str) -> None:
        if self.fs.info(path)["type"] != "file":  # S3 deletes of absent keys succeed silently
            raise FileNotFoundError(path)
        self.fs.rm_file(path)

    def _names(self, start: str):
        # boto3's paginated listing: one request per 1000 keys (s3fs's find probes empty paths as files)
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket_name, Prefix=start)
        return [obj["Key"] for page in pages for obj in page.get("Contents", ())]

    def _head(self, name: str) -> str:
        return self.client.head_object(Bucket=self.bucket_name, Key=name)["ETag"]

    def _get(self, name: str) -> tuple[bytes, str]:
        got = self.client.get_object(Bucket=self.bucket_name, Key=name)
        return got["Body"].read(), got["ETag"]

    def _metadata(self, name: str) -> dict:
        return self.client.head_object(Bucket=self.bucket_name, Key=name).get("Metadata", {})

    def _put(self, name: str, data: bytes, metadata: dict, expected: str | None) -> None:
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        try:
            self.client.put_object(Bucket=self.bucket_name, Key=name, Body=data, Metadata=metadata, **condition)
        except ClientError as exc:
            code = _code(exc)
            if code == "PreconditionFailed":  # botocore resends on its own: after a resend it may be ours
                raise Lost(retried=exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) > 0) from exc
            if code in _MISSING:
                raise Missing(bucket=code == "NoSuchBucket") from exc
            if code == "ConditionalRequestConflict":  # a concurrent conditional put: S3 asks to retry
                raise Retry("conditional put kept conflicting", sent=False) from exc
            raise

    def _pause(self, attempt: int) -> None:
        time.sleep(0.05 * (attempt + 1))
