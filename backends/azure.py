"""`az://CONTAINER/PREFIX`: Azure Blob Storage (or Azurite) through adlfs and azure-storage-blob.

adlfs carries plain I/O. The conditional writes are azure-storage-blob uploads
with `If-None-Match: *` (create: `overwrite=False`) and `If-Match: <etag>` (swap);
the version is the ETag, which changes on every write.
Settings: `AZURE_STORAGE_CONNECTION_STRING`, or `AZURE_STORAGE_ACCOUNT_NAME` with
whatever `DefaultAzureCredential` finds (managed identity, az login, env vars).
"""

from __future__ import annotations

import os

import adlfs
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobServiceClient

from swarm_core.store import StoreError

from .bucket import TRANSIENT, BucketStore, Lost, Missing, Retry, brief


class AzureStore(BucketStore):
    scheme, label, kind, grant = "az", "Azure", "container", "the Storage Blob Data Contributor role"
    errors = (AzureError,)

    def __init__(self, location: str = ""):
        super().__init__(location)
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
        self.container = self.service.get_container_client(self.bucket_name)

    def _is_missing(self, exc: Exception) -> bool:
        return super()._is_missing(exc) or isinstance(exc, ResourceNotFoundError)

    def _create_bucket(self) -> None:
        try:
            self.container.create_container()
        except ResourceExistsError:
            pass

    def _names(self, start: str):
        # the SDK's paginated listing: one request per 5000 keys (adlfs's find adds HEADs on the path)
        return list(self.container.list_blob_names(name_starts_with=start or None))

    def _head(self, name: str) -> str:
        return self.container.get_blob_client(name).get_blob_properties().etag

    def _get(self, name: str) -> tuple[bytes, str]:
        download = self.container.get_blob_client(name).download_blob()
        return download.readall(), download.properties.etag

    def _metadata(self, name: str) -> dict:
        return self.container.get_blob_client(name).get_blob_properties().metadata or {}

    def _put(self, name: str, data: bytes, metadata: dict, expected: str | None) -> None:
        condition = ({"overwrite": False} if expected is None else
                     {"overwrite": True, "etag": expected, "match_condition": MatchConditions.IfNotModified})
        try:
            self.container.get_blob_client(name).upload_blob(data, metadata=metadata, retry_total=0, **condition)
        except (ResourceExistsError, ResourceModifiedError):
            raise Lost() from None
        except ResourceNotFoundError as exc:
            raise Missing(bucket=getattr(exc, "error_code", None) == "ContainerNotFound") from exc
        except HttpResponseError as exc:
            if exc.status_code in (409, 412):
                raise Lost() from None
            if exc.status_code in TRANSIENT:
                raise Retry(brief(exc), sent=True) from exc
            raise
        except ServiceRequestError as exc:  # never sent
            raise Retry(brief(exc), sent=False) from exc
        except ServiceResponseError as exc:  # sent, answer lost
            raise Retry(brief(exc), sent=True) from exc
