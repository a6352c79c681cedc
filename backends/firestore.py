"""`firestore://PROJECT/COLLECTION`: Cloud Firestore (native mode) through google-cloud-firestore.

Each key is one document of COLLECTION, its id the key with '/' spelled '|'
(ids cannot hold '/'; a leading '__' is escaped with one more '|'), so `list` is
one range query on document ids. A document holds `data` (bytes), `chunks` and
`writer`: values over ~1 MB (a document's limit is 1 MiB) go to immutable chunk
documents `<doc>/chunks/<writer>.<n>` written first, and the main document that
names them flips atomically, so readers never see a torn value.
The version is the document's `update_time` (plus the chunk set it names):
`create()` is Firestore's create (fails if the document exists), `swap` and
`write` are updates with an `update_time` precondition — no transactions, so
no lock contention. Settings: `FIRESTORE_EMULATOR_HOST`, Google default credentials.
"""

from __future__ import annotations

import time
import uuid

import google.auth.exceptions
from google.api_core import exceptions as gexc
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from swarm_core.store import (
    KeyNotFound,
    Store,
    StoreError,
    check_key,
    check_prefix,
    is_key,
)

CHUNK = 1_000_000  # bytes per document, under the 1 MiB document limit with room for the name
CHUNKS_PER_COMMIT = 3  # a commit stays under 4 MiB: the emulator's gRPC cap (Firestore's is 10 MiB)
_LOST = (gexc.AlreadyExists, gexc.FailedPrecondition, gexc.NotFound)  # a precondition did not hold
_TRANSIENT = (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError, gexc.Aborted)


def _brief(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


def _doc_id(key: str) -> str:
    doc_id = key.replace("/", "|")
    return "|" + doc_id if doc_id.startswith("__") else doc_id  # ids matching __.*__ are reserved


def _key(doc_id: str) -> str:
    return doc_id.removeprefix("|").replace("|", "/")


class FirestoreStore(Store):
    def __init__(self, location: str = ""):
        project, _, collection = location.strip("/").partition("/")
        collection = collection.strip("/") or "swarm"
        if collection.count("/") % 2:
            raise StoreError(f"firestore://{project}/{collection}: the path must name a collection, not a document")
        try:
            self.client = firestore.Client(project=project or None)
        except (gexc.GoogleAPIError, google.auth.exceptions.GoogleAuthError) as exc:
            raise StoreError(f"cannot open firestore://{project}/{collection}: {_brief(exc)}") from exc
        self.col = self.client.collection(collection)
        self.uri = f"firestore://{self.client.project}/{collection}"

    def _ref(self, key: str):
        return self.col.document(_doc_id(check_key(key)))

    def _fail(self, op: str, key: str, exc: Exception) -> StoreError:
        return StoreError(f"{op} {key!r} in {self.uri} failed: {_brief(exc)}")

    @staticmethod
    def _chunk(ref, writer: str, n: int):
        return ref.collection("chunks").document(f"{writer}.{n:05d}")

    @staticmethod
    def _version(snap) -> str:
        doc = snap.to_dict() or {}
        stamp = snap.update_time.rfc3339()
        return f"{stamp}|{doc['writer']}|{doc['chunks']}" if doc.get("chunks") else stamp

    def _get(self, ref, op: str, key: str):
        try:
            return ref.get()
        except gexc.GoogleAPIError as exc:
            raise self._fail(op, key, exc) from exc

    def _data(self, ref, snap) -> bytes | None:
        """The value a snapshot names; None if its chunks were replaced meanwhile."""
        doc = snap.to_dict() or {}
        if not doc.get("chunks"):
            return doc.get("data") or b""
        refs = [self._chunk(ref, doc["writer"], n) for n in range(doc["chunks"])]
        got = {s.id: s for s in self.client.get_all(refs)}
        if not all(r.id in got and got[r.id].exists for r in refs):
            return None
        return b"".join(got[r.id].get("data") for r in refs)

    def _stage(self, ref, data: bytes) -> dict:
        """The main document for `data`, its chunk documents (if any) already written."""
        writer, data = uuid.uuid4().hex, bytes(data)
        if len(data) <= CHUNK:
            return {"data": data, "chunks": 0, "writer": writer}
        parts = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
        for start in range(0, len(parts), CHUNKS_PER_COMMIT):
            batch = self.client.batch()
            for n in range(start, min(start + CHUNKS_PER_COMMIT, len(parts))):
                batch.set(self._chunk(ref, writer, n), {"data": parts[n]})
            batch.commit()
        return {"data": None, "chunks": len(parts), "writer": writer}

    def _drop(self, ref, writer: str | None, chunks: int) -> None:
        """Delete a chunk set nothing names any more (best effort: leftovers are never read)."""
        if not chunks or not writer:
            return
        try:
            batch = self.client.batch()
            for n in range(chunks):
                batch.delete(self._chunk(ref, writer, n))
            batch.commit()
        except gexc.GoogleAPIError:
            pass

    def _commit(self, ref, doc: dict, last_update=None) -> bool:
        """Create (no `last_update`) or update-if-unchanged; True if this document landed."""
        uncertain = False  # an earlier attempt may have landed unseen
        for attempt in range(6):
            try:
                if last_update is None:
                    ref.create(doc, retry=None)
                else:
                    ref.update(doc, option=self.client.write_option(last_update_time=last_update), retry=None)
                return True
            except _LOST:  # lost, unless a retry of a commit that had landed: the writer says
                if not uncertain:
                    return False
                snap = ref.get()
                return snap.exists and (snap.to_dict() or {}).get("writer") == doc["writer"]
            except _TRANSIENT:
                if attempt == 5:
                    raise
                uncertain = True
                time.sleep(0.1 * 2**attempt)
        return False  # unreachable: the last attempt returns or raises

    # -- the Store contract
    def read(self, key: str) -> bytes:
        return self.read_versioned(key)[0]

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        ref = self._ref(key)
        for _ in range(50):
            snap = self._get(ref, "read", key)
            if not snap.exists:
                raise KeyNotFound(f"{key} not found in {self.uri}")
            try:
                data = self._data(ref, snap)
            except gexc.GoogleAPIError as exc:
                raise self._fail("read", key, exc) from exc
            if data is not None:
                return data, self._version(snap)
        raise StoreError(f"read {key!r} in {self.uri} failed: the value kept changing under the reader")

    def version(self, key: str) -> str:
        snap = self._get(self._ref(key), "version", key)
        if not snap.exists:
            raise KeyNotFound(f"{key} not found in {self.uri}")
        return self._version(snap)

    def write(self, key: str, data: bytes) -> None:
        ref = self._ref(key)
        try:
            doc = self._stage(ref, data)
            while True:  # update-if-unchanged, so the chunks it replaces are known and dropped
                snap = ref.get()
                old = (snap.to_dict() or {}) if snap.exists else {}
                if self._commit(ref, doc, snap.update_time if snap.exists else None):
                    self._drop(ref, old.get("writer"), old.get("chunks", 0))
                    return
        except gexc.GoogleAPIError as exc:
            raise self._fail("write", key, exc) from exc

    def create(self, key: str, data: bytes) -> bool:
        ref = self._ref(key)
        try:
            doc = self._stage(ref, data)
            if self._commit(ref, doc):
                return True
        except gexc.GoogleAPIError as exc:
            raise self._fail("create", key, exc) from exc
        self._drop(ref, doc["writer"], doc["chunks"])
        return False

    def swap(self, key: str, data: bytes, expected_version: str) -> bool:
        ref = self._ref(key)
        stamp, _, rest = expected_version.partition("|")
        old_writer, _, old_chunks = rest.partition("|")
        try:
            last_update = DatetimeWithNanoseconds.from_rfc3339(stamp)
        except ValueError:
            return False  # not a version of this store: it cannot match
        try:
            doc = self._stage(ref, data)
            if self._commit(ref, doc, last_update):
                self._drop(ref, old_writer, int(old_chunks or 0))
                return True
        except gexc.GoogleAPIError as exc:
            raise self._fail("swap", key, exc) from exc
        self._drop(ref, doc["writer"], doc["chunks"])
        return False

    def list(self, prefix: str) -> list[str]:
        folder = check_prefix(prefix)
        query = self.col
        if folder:
            low = _doc_id(folder) + "|"
            high = low[:-1] + "}"  # '}' follows '|': every id starting with `low` sorts below it
            query = query.where(filter=FieldFilter("__name__", ">=", self.col.document(low))) \
                         .where(filter=FieldFilter("__name__", "<", self.col.document(high)))
        try:
            return sorted(key for snap in query.select([]).stream() if is_key(key := _key(snap.id)))
        except gexc.GoogleAPIError as exc:
            raise self._fail("list", prefix, exc) from exc

    def delete(self, key: str) -> None:
        ref = self._ref(key)
        try:
            while True:  # delete-if-unchanged, so the chunks it held are known and dropped
                snap = ref.get()
                if not snap.exists:
                    raise KeyNotFound(f"{key} not found in {self.uri}")
                try:
                    ref.delete(option=self.client.write_option(last_update_time=snap.update_time))
                except _LOST:
                    continue
                old = snap.to_dict() or {}
                self._drop(ref, old.get("writer"), old.get("chunks", 0))
                return
        except gexc.GoogleAPIError as exc:
            raise self._fail("delete", key, exc) from exc
