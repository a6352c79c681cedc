"""`az://CONTAINER/PREFIX`: Azure Blob Storage (or Azurite) through adlfs and azure-storage-blob.

adlfs carries plain I/O. The conditional writes are azure-storage-blob uploads
with `If-None-Match: *` (create: `overwrite=False`) and `If-Match: <etag>` (swap);
the version is the ETag, which changes on every write.
Settings: `AZURE_STORAGE_CONNECTION_STRING`, or `AZURE_STORAGE_ACCOUNT_NAME` with
whatever `DefaultAzureCredential` finds (managed identity, az login, env vars).
"""

from __future__ import annotations

import os
import time
import uuid

import adlfs
from azure.core import MatchConditions
from azure.core.exceptions import (AzureError, HttpResponseError, ResourceExistsError, ResourceModifiedError,
                                   ResourceNotFoundError, ServiceRequestError, ServiceResponseError)
from azure.storage.blob import BlobServiceClient

from swarm_core.store import KeyNotFound, Store, StoreError, check_key

WRITER = "swarmwriter"  # metadata naming the call that wrote a blob: a retried conditional upload knows its own
_TRANSIENT = {408, 429, 500, 502, 503, 504}


def _brief(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


class AzureStore(Store):
    def __init__(self, location: str = ""):
        self.container_name, _, prefix = location.strip("/").partition("/")
        self.prefix = prefix.strip("/")
        if not self.container_name:
            raise StoreError("an Azure store needs a container: az://CONTAINER/PREFIX")
        self.uri = f"az://{self.container_name}/{self.prefix}".rstrip("/")
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        account = os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")
        opts = {"skip_instance_cache": True, "use_listings_cache": False}
        if conn:
            try:
                self.service = BlobServiceClient.from_connection_string(conn)
            except ValueError:
                raise StoreError(f"cannot open {self.uri}: AZURE_STORAGE_CONNECTION_STRING is malformed") from None
            self.fs = adlfs.AzureBlobFileSystem(connection_string=conn, **opts)
        elif account:
            from azure.identity import DefaultAzureCredential

            self.service = BlobServiceClient(f"https://{account}.blob.core.windows.net",
                                             credential=DefaultAzureCredential())
            self.fs = adlfs.AzureBlobFileSystem(account_name=account, anon=False, **opts)
        else:
            raise StoreError(f"cannot open {self.uri}: set AZURE_STORAGE_CONNECTION_STRING, or "
                             "AZURE_STORAGE_ACCOUNT_NAME with credentials DefaultAzureCredential can find")
        self.container = self.service.get_container_client(self.container_name)

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _path(self, key: str) -> str:
        return f"{self.container_name}/{self._name(key)}"

    def _fail(self, op: str, key: str, exc: Exception) -> StoreError:
        return StoreError(f"{op} {key!r} in {self.uri} failed: {_brief(exc)}")

    def _make_container(self) -> None:
        """Create the missing container, or say clearly that it is missing."""
        try:
            self.container.create_container()
        except ResourceExistsError:
            pass
        except AzureError as exc:
            raise StoreError(f"Azure container {self.container_name!r} does not exist and could not be created "
                             f"({_brief(exc)}); create it or grant the Storage Blob Data Contributor role") from None

    # -- plain I/O: adlfs
    def read(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return self.fs.cat_file(path)
        except (FileNotFoundError, ResourceNotFoundError):
            raise KeyNotFound(f"{key} not found in {self.uri}") from None
        except Exception as exc:
            raise self._fail("read", key, exc) from exc

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            try:
                self.fs.pipe_file(path, bytes(data))
            except (FileNotFoundError, ResourceNotFoundError):  # an upload only misses its container
                self._make_container()
                self.fs.pipe_file(path, bytes(data))
        except StoreError:
            raise
        except Exception as exc:
            raise self._fail("write", key, exc) from exc

    def list(self, prefix: str) -> list[str]:
        # the SDK's paginated listing: one request per 5000 keys (adlfs's find adds HEADs on the path)
        start = "/".join(p for p in (self.prefix, prefix.strip("/")) if p)
        start = start + "/" if start else ""
        try:
            names = list(self.container.list_blob_names(name_starts_with=start or None))
        except ResourceNotFoundError:
            return []
        except AzureError as exc:
            raise self._fail("list", prefix, exc) from exc
        cut = len(self.prefix) + 1 if self.prefix else 0
        return sorted(name[cut:] for name in names)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            self.fs.rm_file(path)
        except (FileNotFoundError, ResourceNotFoundError):
            raise KeyNotFound(f"{key} not found in {self.uri}") from None
        except Exception as exc:
            raise self._fail("delete", key, exc) from exc

    # -- versions and conditional writes: azure-storage-blob
    def version(self, key: str) -> str:
        try:
            return self.container.get_blob_client(self._name(key)).get_blob_properties().etag
        except ResourceNotFoundError:
            raise KeyNotFound(f"{key} not found in {self.uri}") from None
        except AzureError as exc:
            raise self._fail("version", key, exc) from exc

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        try:
            download = self.container.get_blob_client(self._name(key)).download_blob()
            return download.readall(), download.properties.etag
        except ResourceNotFoundError:
            raise KeyNotFound(f"{key} not found in {self.uri}") from None
        except AzureError as exc:
            raise self._fail("read", key, exc) from exc

    def create(self, key: str, data: bytes) -> bool:
        return self._put_if("create", key, data, overwrite=False)

    def swap(self, key: str, data: bytes, expected_version: str) -> bool:
        return self._put_if("swap", key, data, overwrite=True, etag=expected_version,
                            match_condition=MatchConditions.IfNotModified)

    def _put_if(self, op: str, key: str, data: bytes, **condition) -> bool:
        name, token = self._name(key), uuid.uuid4().hex
        blob = self.container.get_blob_client(name)
        made_container = uncertain = False  # uncertain: an earlier attempt may have landed unseen
        for attempt in range(6):
            try:
                blob.upload_blob(bytes(data), metadata={WRITER: token}, retry_total=0, **condition)
                return True
            except (ResourceExistsError, ResourceModifiedError):  # lost, unless a retry of an upload that landed
                return uncertain and self._wrote(blob, token)
            except ResourceNotFoundError as exc:
                if op == "swap":
                    return False  # If-Match on an absent blob
                if made_container or getattr(exc, "error_code", None) != "ContainerNotFound":
                    raise self._fail(op, key, exc) from exc
                self._make_container()
                made_container = True
                continue
            except HttpResponseError as exc:
                if exc.status_code in (409, 412):
                    return uncertain and self._wrote(blob, token)
                if exc.status_code not in _TRANSIENT or attempt == 5:
                    raise self._fail(op, key, exc) from exc
                uncertain = True
            except (ServiceRequestError, ServiceResponseError) as exc:
                if attempt == 5:
                    raise self._fail(op, key, exc) from exc
                uncertain = uncertain or isinstance(exc, ServiceResponseError)  # sent, answer lost
            except AzureError as exc:
                raise self._fail(op, key, exc) from exc
            time.sleep(0.2 * 2**attempt)
        raise StoreError(f"{op} {key!r} in {self.uri} failed: gave up after retries")

    def _wrote(self, blob, token: str) -> bool:
        try:
            return (blob.get_blob_properties().metadata or {}).get(WRITER) == token
        except AzureError:
            return False
