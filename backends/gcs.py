"""`gs://BUCKET/PREFIX`: Google Cloud Storage through gcsfs and google-cloud-storage.

gcsfs carries plain I/O. The version is the object's generation, read with
google-cloud-storage. The conditional writes are single-request multipart
uploads with `ifGenerationMatch=0` (create) or `=<generation>` (swap): the
client library switches to resumable uploads above 8 MiB, and emulators ignore
preconditions on those, so the one request is sent here on the library's
credentials. Settings: `STORAGE_EMULATOR_HOST` (anonymous credentials, project
`GOOGLE_CLOUD_PROJECT` or `swarm-emulator`), otherwise Google default credentials.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from urllib.parse import quote

import google.auth
import google.auth.exceptions
import requests
from gcsfs.core import GCSFileSystem  # the core class: the experimental zonal/HNS one hangs on emulators
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.auth.transport.requests import AuthorizedSession
from google.cloud import storage

from swarm_core.store import KeyNotFound, Store, StoreError, check_key

WRITER = "swarmwriter"  # metadata naming the call that wrote an object: a retried conditional upload knows its own
_TRANSIENT = {408, 429, 500, 502, 503, 504}


def _brief(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


class GCSStore(Store):
    def __init__(self, location: str = ""):
        self.bucket_name, _, prefix = location.strip("/").partition("/")
        self.prefix = prefix.strip("/")
        if not self.bucket_name:
            raise StoreError("a GCS store needs a bucket: gs://BUCKET/PREFIX")
        self.uri = f"gs://{self.bucket_name}/{self.prefix}".rstrip("/")
        emulator = os.environ.get("STORAGE_EMULATOR_HOST", "").rstrip("/")
        try:
            if emulator:
                self.endpoint = emulator if "://" in emulator else f"http://{emulator}"
                creds = AnonymousCredentials()
                project = os.environ.get("GOOGLE_CLOUD_PROJECT") or "swarm-emulator"
                token = "anon"
            else:
                self.endpoint = "https://storage.googleapis.com"
                creds, project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
                project = os.environ.get("GOOGLE_CLOUD_PROJECT") or project
                token = creds
            self.client = storage.Client(project=project, credentials=creds)
        except (gexc.GoogleAPIError, google.auth.exceptions.GoogleAuthError) as exc:
            raise StoreError(f"cannot open {self.uri}: {_brief(exc)}") from exc
        self.bucket = self.client.bucket(self.bucket_name)
        self.session = AuthorizedSession(creds)
        self.fs = GCSFileSystem(project=project, token=token, endpoint_url=self.endpoint if emulator else None,
                                skip_instance_cache=True, use_listings_cache=False)

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _path(self, key: str) -> str:
        return f"{self.bucket_name}/{self._name(key)}"

    def _fail(self, op: str, key: str, exc: Exception) -> StoreError:
        return StoreError(f"{op} {key!r} in {self.uri} failed: {_brief(exc)}")

    def _make_bucket(self) -> None:
        """Create the missing bucket, or say clearly that it is missing."""
        try:
            self.client.create_bucket(self.bucket_name)
        except gexc.Conflict:
            pass
        except gexc.GoogleAPIError as exc:
            raise StoreError(f"GCS bucket {self.bucket_name!r} does not exist and could not be created "
                             f"({_brief(exc)}); create it or grant storage.buckets.create") from None

    # -- plain I/O: gcsfs
    def read(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            raise KeyNotFound(f"{key} not found in {self.uri}") from None
        except Exception as exc:
            raise self._fail("read", key, exc) from exc

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            try:
                self.fs.pipe_file(path, bytes(data))
            except FileNotFoundError:  # an upload only misses its bucket
                self._make_bucket()
                self.fs.pipe_file(path, bytes(data))
        except StoreError:
            raise
        except Exception as exc:
            raise self._fail("write", key, exc) from exc

    def list(self, prefix: str) -> list[str]:
        # the client's paginated listing: one request per 1000 keys (gcsfs's find lists twice when empty)
        start = "/".join(p for p in (self.prefix, prefix.strip("/")) if p)
        start = start + "/" if start else ""
        try:
            names = [b.name for b in self.client.list_blobs(self.bucket_name, prefix=start,
                                                            fields="items(name),nextPageToken")]
        except gexc.NotFound:
            return []
        except gexc.GoogleAPIError as exc:
            raise self._fail("list", prefix, exc) from exc
        cut = len(self.prefix) + 1 if self.prefix else 0
        return sorted(name[cut:] for name in names)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            raise KeyNotFound(f"{key} not found in {self.uri}") from None
        except Exception as exc:
            raise self._fail("delete", key, exc) from exc

    # -- versions and conditional writes: google-cloud-storage
    def version(self, key: str) -> str:
        try:
            blob = self.bucket.get_blob(self._name(key))
        except gexc.GoogleAPIError as exc:
            raise self._fail("version", key, exc) from exc
        if blob is None:
            raise KeyNotFound(f"{key} not found in {self.uri}")
        return str(blob.generation)

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        blob = self.bucket.blob(self._name(key))
        try:
            data = blob.download_as_bytes()  # one GET: the generation comes back in its headers
        except gexc.NotFound:
            raise KeyNotFound(f"{key} not found in {self.uri}") from None
        except gexc.GoogleAPIError as exc:
            raise self._fail("read", key, exc) from exc
        return data, str(blob.generation)

    def create(self, key: str, data: bytes) -> bool:
        return self._put_if("create", key, data, 0)

    def swap(self, key: str, data: bytes, expected_version: str) -> bool:
        try:
            generation = int(expected_version)
        except ValueError:
            return False  # not a generation: it cannot match
        return self._put_if("swap", key, data, generation)

    def _put_if(self, op: str, key: str, data: bytes, generation: int) -> bool:
        name, token = self._name(key), uuid.uuid4().hex
        boundary = uuid.uuid4().hex
        while boundary.encode() in data:
            boundary = uuid.uuid4().hex
        meta = json.dumps({"name": name, "metadata": {WRITER: token}}).encode()
        body = b"".join((
            b"--", boundary.encode(), b"\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n", meta,
            b"\r\n--", boundary.encode(), b"\r\nContent-Type: application/octet-stream\r\n\r\n", bytes(data),
            b"\r\n--", boundary.encode(), b"--\r\n"))
        url = f"{self.endpoint}/upload/storage/v1/b/{quote(self.bucket_name, safe='')}/o"
        params = {"uploadType": "multipart", "ifGenerationMatch": str(generation)}
        headers = {"Content-Type": f'multipart/related; boundary="{boundary}"'}
        made_bucket = uncertain = False  # uncertain: an earlier attempt may have landed unseen
        for attempt in range(6):
            try:
                resp = self.session.post(url, params=params, data=body, headers=headers, timeout=120)
            except requests.RequestException as exc:
                if attempt == 5:
                    raise self._fail(op, key, exc) from exc
                uncertain = True
                time.sleep(0.2 * 2**attempt)
                continue
            if resp.status_code == 200:
                return True
            if resp.status_code == 412:  # lost, unless a retry of an upload that had landed
                return uncertain and self._wrote(name, token)
            if resp.status_code == 404 and generation == 0 and not made_bucket:
                self._make_bucket()
                made_bucket = True
                continue
            if resp.status_code == 404:
                return False  # swap on an absent key (or bucket)
            if resp.status_code not in _TRANSIENT or attempt == 5:
                raise StoreError(f"{op} {key!r} in {self.uri} failed: HTTP {resp.status_code} "
                                 f"{resp.text.strip()[:300]}")
            uncertain = True
            time.sleep(0.2 * 2**attempt)
        raise StoreError(f"{op} {key!r} in {self.uri} failed: gave up after retries")

    def _wrote(self, name: str, token: str) -> bool:
        try:
            blob = self.bucket.get_blob(name)
        except gexc.GoogleAPIError:
            return False
        return blob is not None and (blob.metadata or {}).get(WRITER) == token
