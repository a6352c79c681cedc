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
import re
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

from swarm_core.store import StoreError

from .bucket import TRANSIENT, BucketStore, Lost, Missing, Retry, brief


class GCSStore(BucketStore):
    scheme, label, grant = "gs", "GCS", "storage.buckets.create"
    errors = (gexc.GoogleAPIError,)

    def __init__(self, location: str = ""):
        super().__init__(location)
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
            raise StoreError(f"cannot open {self.uri}: {brief(exc)}") from exc
        self.bucket = self.client.bucket(self.bucket_name)
        self.session = AuthorizedSession(creds)
        self.fs = GCSFileSystem(project=project, token=token, endpoint_url=self.endpoint if emulator else None,
                                skip_instance_cache=True, use_listings_cache=False)

    def _is_missing(self, exc: Exception) -> bool:
        return super()._is_missing(exc) or isinstance(exc, gexc.NotFound)

    def _create_bucket(self) -> None:
        try:
            self.client.create_bucket(self.bucket_name)
        except gexc.Conflict:
            pass

    def _names(self, start: str):
        # the client's paginated listing: one request per 1000 keys (gcsfs's find lists twice when empty)
        return [b.name for b in self.client.list_blobs(self.bucket_name, prefix=start,
                                                       fields="items(name),nextPageToken")]

    def _head(self, name: str) -> str:
        blob = self.bucket.get_blob(name)
        if blob is None:
            raise FileNotFoundError(name)
        return str(blob.generation)

    def _get(self, name: str) -> tuple[bytes, str]:
        blob = self.bucket.blob(name)
        data = blob.download_as_bytes()  # one GET: the generation comes back in its headers
        return data, str(blob.generation)

    def _metadata(self, name: str) -> dict:
        blob = self.bucket.get_blob(name)
        return (blob.metadata or {}) if blob is not None else {}

    def _put(self, name: str, data: bytes, metadata: dict, expected: str | None) -> None:
        if expected is not None and not re.fullmatch(r"[1-9][0-9]*", expected):
            raise Lost()  # not a generation ("0" would mean "if absent"): it cannot match
        generation = int(expected or 0)
        boundary = uuid.uuid4().hex
        while boundary.encode() in data:
            boundary = uuid.uuid4().hex
        meta = json.dumps({"name": name, "metadata": metadata}).encode()
        body = b"".join((
            b"--", boundary.encode(), b"\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n", meta,
            b"\r\n--", boundary.encode(), b"\r\nContent-Type: application/octet-stream\r\n\r\n", data,
            b"\r\n--", boundary.encode(), b"--\r\n"))
        url = f"{self.endpoint}/upload/storage/v1/b/{quote(self.bucket_name, safe='')}/o"
        params = {"uploadType": "multipart", "ifGenerationMatch": str(generation)}
        headers = {"Content-Type": f'multipart/related; boundary="{boundary}"'}
        try:
            resp = self.session.post(url, params=params, data=body, headers=headers, timeout=120)
        except requests.RequestException as exc:
            raise Retry(brief(exc), sent=True) from exc
        if resp.status_code == 200:
            return
        if resp.status_code == 412:
            raise Lost()
        if resp.status_code == 404:  # no bucket, or (swap) no object
            raise Missing(bucket=expected is None)
        if resp.status_code in TRANSIENT:
            raise Retry(f"HTTP {resp.status_code} {resp.text.strip()[:300]}", sent=True)
        raise gexc.from_http_status(resp.status_code, resp.text.strip()[:300])
