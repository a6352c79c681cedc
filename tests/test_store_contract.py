"""The storage contract (DESIGN.md §3), one suite run against every backend.

`store_uri` (tests/emulators.py) gives each test a fresh location on file,
memory, S3 (moto), GCS (fake-gcs-server), Azure (Azurite) and Firestore (its
emulator); the emulators start once per session, when first needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from emulators import *  # noqa: F401,F403  (store_uri and the session emulators)
from swarm_core.store import KeyNotFound, Store, StoreError, check_key, open_store

pytestmark = pytest.mark.emulator

CLASSES = {"file": "FileStore", "memory": "MemoryStore", "s3": "S3Store", "gs": "GCSStore",
           "az": "AzureStore", "firestore": "FirestoreStore"}
MIB = 1024 * 1024


@pytest.fixture
def store(store_uri) -> Store:
    return open_store(store_uri)


def _race(n: int, fn):
    """Run fn(i) on n threads released together; return the results in order."""
    start = threading.Barrier(n)

    def run(i):
        start.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_read_write_list_delete(store):
    store.write("a/one.json", b'{"n": 1}')
    store.write("a/two.json", b"2")
    store.write("b/three", b"3")
    store.write("empty", b"")
    assert store.read("a/one.json") == b'{"n": 1}'
    assert store.read("empty") == b""
    store.write("a/one.json", b"rewritten")
    assert store.read("a/one.json") == b"rewritten"
    assert store.list("a/") == ["a/one.json", "a/two.json"]
    assert store.list("a") == ["a/one.json", "a/two.json"]  # a prefix names a folder
    assert store.list("") == ["a/one.json", "a/two.json", "b/three", "empty"]
    assert store.list("nothing/") == []
    assert store.exists("b/three") and not store.exists("b/four")
    store.delete("a/two.json")
    assert store.list("a/") == ["a/one.json"]
    assert not store.exists("a/two.json")


def test_keys_named_like_temporary_or_lock_files_are_keys(store):
    # a backend's own bookkeeping must not take names a key can have
    store.write("a/report.tmp", b"1")
    assert store.create("a/state.lock", b"2")
    store.write("a/x.json.tmp", b"3")
    assert store.list("a/") == ["a/report.tmp", "a/state.lock", "a/x.json.tmp"]
    assert store.read("a/state.lock") == b"2"


def test_file_store_never_lists_a_dead_writers_temporary_files(tmp_path):
    store = open_store(f"file://{tmp_path}")
    store.write("a/k.json", b"1")
    (tmp_path / "a" / "k.json~123.456").write_bytes(b"{tor")  # killed between write and rename
    (tmp_path / "a" / "k.json.123.456.tmp").write_bytes(b"{tor")  # the same, named by older versions
    assert store.list("a/") == ["a/k.json"] and store.read("a/k.json") == b"1"


def test_file_store_write_on_a_full_disk_names_the_key_and_leaves_no_temporary_file(tmp_path):
    # A file size limit fails os.write as a full disk does (EFBIG for ENOSPC), in a child: the
    # limit must not reach pytest's own files. Each key's retries used to leave a temporary file.
    code = ("import resource, signal, sys; from swarm_core.store import open_store, StoreError\n"
            "store = open_store(sys.argv[1]); store.write('a/k', b'old')\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
            "for op, key in ((store.write, 'a/k'), (store.write, 'a/new'), (store.create, 'a/made')):\n"
            "    try: op(key, b'x' * 10000)\n"
            "    except StoreError as exc: print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code, f"file://{tmp_path}"], capture_output=True, text=True,
                         timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), check=True)
    assert [line.split(" in file://")[0] for line in out.stdout.splitlines()] == \
        ["cannot write a/k", "cannot write a/new", "cannot create a/made"], out.stdout + out.stderr
    assert sorted(os.listdir(tmp_path / "a")) == ["k"]
    assert open_store(f"file://{tmp_path}").read("a/k") == b"old"


def test_file_store_a_failed_rename_leaves_no_temporary_file(tmp_path):
    store = open_store(f"file://{tmp_path}")
    store.write("dir/file", b"1")
    with pytest.raises(StoreError, match="cannot write dir in file://"):
        store.write("dir", b"a folder is in its place")
    assert [name for name in os.listdir(tmp_path) if name.startswith("dir")] == ["dir"]


@pytest.mark.parametrize("op", ["write", "delete"])
def test_file_store_a_write_never_lands_between_a_swaps_check_and_its_rename(tmp_path, monkeypatch, op):
    # The swap checks the version, then another thread's write (or delete) is let in: it lands, or
    # waits on the swap's lock. Then the swap renames: the write must not be the one that is lost.
    import fcntl

    import backends.local

    store = open_store(f"file://{tmp_path}")
    store.write("k", b"old")
    version = store.version("k")
    writer_in = threading.Event()
    real_flock, real_version = fcntl.flock, type(store).version

    def flock(fd, op):
        if threading.current_thread() is writer and op == fcntl.LOCK_EX:
            writer_in.set()  # about to wait for the swap's lock
        return real_flock(fd, op)

    def write():
        store.write("k", b"written") if op == "write" else store.delete("k")
        writer_in.set()

    def version_then_let_the_writer_in(self, key):
        current = real_version(self, key)
        writer.start()
        writer_in.wait()
        return current

    writer = threading.Thread(target=write)
    monkeypatch.setattr(backends.local.fcntl, "flock", flock)
    monkeypatch.setattr(type(store), "version", version_then_let_the_writer_in)
    swapped = store.swap("k", b"swapped", version)
    writer.join()
    assert swapped and (store.read("k") == b"written" if op == "write" else not store.exists("k"))


def test_file_store_writes_on_after_its_folders_were_removed(tmp_path):
    # a long-lived process (swarm serve) must not keep believing a folder it once made is there
    store = open_store(f"file://{tmp_path / 'store'}")
    store.write("swarms/x/k", b"1")
    assert store.swap("swarms/x/k", b"2", store.version("swarms/x/k"))
    shutil.rmtree(tmp_path / "store")
    store.write("swarms/x/k", b"3")
    assert store.create("swarms/x/j", b"4")
    assert store.swap("swarms/x/k", b"5", store.version("swarms/x/k"))
    assert store.list("") == ["swarms/x/j", "swarms/x/k"] and store.read("swarms/x/k") == b"5"


def test_missing_keys_raise_key_not_found(store):
    for op in (store.read, store.version, store.delete, store.read_versioned):
        with pytest.raises(KeyNotFound) as err:
            op("no/such/key.json")
        assert isinstance(err.value, StoreError) and isinstance(err.value, KeyError)
        assert "no/such/key.json" in str(err.value)
    assert store.swap("no/such/key.json", b"x", "1") is False
    assert not store.exists("no/such/key.json")


def test_a_folder_is_not_a_key(store):
    store.write("dir/file", b"x")
    for op in (store.read, store.version, store.delete):
        with pytest.raises(KeyNotFound):
            op("dir")
    assert not store.exists("dir")
    assert store.read("dir/file") == b"x"


def test_unicode_content_and_deep_keys(store):
    text = "héllo wörld — 你好, мир 🌍\n\x00\xff".encode()
    deep = "/".join(f"level{i}" for i in range(12)) + "/leaf-file_v1.2.json"
    store.write(deep, text)
    assert store.read(deep) == text
    assert store.list("level0/") == [deep]
    assert store.list("level0/level1/level2/") == [deep]
    assert store.list("level0/level1/x/") == []


def _put_beside_the_store(store, name: str) -> None:
    """An object the store did not write, named `name` under its root: by a console, a sync tool, a user."""
    scheme = store.uri.partition("://")[0]
    full = f"{store.prefix}/{name}" if getattr(store, "prefix", "") else name
    if scheme == "file":
        os.makedirs(os.path.dirname(os.path.join(store.root, name)), exist_ok=True)
        if not name.endswith("/") and "//" not in name:  # neither can be a file's name
            with open(os.path.join(store.root, name), "wb"):
                pass
    elif scheme == "s3":
        store.client.put_object(Bucket=store.bucket_name, Key=full, Body=b"")
    elif scheme == "gs":
        store.bucket.blob(full).upload_from_string(b"")
    elif scheme == "az":
        store.container.get_blob_client(full).upload_blob(b"")
    elif scheme == "firestore":
        store.col.document(name.replace("/", "|")).set({"data": b"", "chunks": 0, "writer": "other"})


def test_list_skips_names_that_are_not_keys(store):
    # a console's "create folder" makes `odd/folder/`: listed, every reader of the listing failed on it
    store.write("odd/ok", b"1")
    for name in ("odd/folder/", "odd//double", "odd/with space", "odd/notes~1"):
        _put_beside_the_store(store, name)
    assert store.list("odd/") == ["odd/ok"] and store.list("") == ["odd/ok"]


def test_invalid_keys_are_rejected(store):
    store.write("ok", b"1")
    too_long = ("a" * 201, "/".join(["a" * 100] * 11))  # a segment over 200, a key over 1024 characters
    for bad in ("../x", "a/../../x", "/abs", "a//b", "./a", "a/", "", "a b", "a\\b", "..", "é", *too_long):
        for op in (store.read, store.version, store.delete, lambda k: store.write(k, b"x"),
                   lambda k: store.create(k, b"x"), lambda k: store.swap(k, b"x", "1")):
            with pytest.raises(StoreError) as err:
                op(bad)
            assert not isinstance(err.value, KeyNotFound), bad
    assert store.list("") == ["ok"]


def test_list_refuses_prefixes_that_leave_the_store(store):
    store.write("a/k", b"1")
    for bad in ("../", "..", "a/../../", "/abs/", "a//", "./"):
        with pytest.raises(StoreError) as err:
            store.list(bad)
        assert "invalid storage prefix" in str(err.value), bad
    assert store.list("a/") == store.list("a") == ["a/k"] and store.list("") == ["a/k"]


def test_versions_change_on_write_and_guard_swap(store):
    store.write("v", b"one")
    first = store.version("v")
    assert store.read_versioned("v") == (b"one", first)
    store.write("v", b"two")
    second = store.version("v")
    assert second != first
    assert store.swap("v", b"three", first) is False  # stale
    assert store.swap("v", b"three", "not-a-version") is False
    assert store.read("v") == b"two"
    assert store.swap("v", b"three", second) is True
    data, third = store.read_versioned("v")
    assert data == b"three" and third not in (first, second)
    assert store.create("v", b"again") is False
    assert store.read("v") == b"three"


def test_a_swap_from_a_token_no_store_issued_never_writes(store):
    # "" made S3 send no If-Match, "*" made Azure match any object, "0"/"00" made GCS create if absent
    store.write("there", b"kept")
    for token in ("", " ", "*", '"*"', "0", "00", "-1", "\n", "é"):
        for key in ("there", "absent"):
            assert store.swap(key, b"overwritten", token) is False, (token, key)
    assert store.read("there") == b"kept" and store.list("") == ["there"]


def test_ten_mib_object_round_trip(store):
    big = os.urandom(10 * MIB) + b"tail"
    store.write("blobs/big.bin", big)
    assert store.read("blobs/big.bin") == big
    data, ver = store.read_versioned("blobs/big.bin")
    assert data == big
    # conditional writes of big values hold too (GCS: no resumable upload; Firestore: chunked)
    assert store.create("blobs/made.bin", big) is True
    assert store.create("blobs/made.bin", big[::-1]) is False
    assert store.read("blobs/made.bin") == big
    assert store.swap("blobs/big.bin", b"small now", ver) is True
    assert store.swap("blobs/big.bin", big, ver) is False
    assert store.read("blobs/big.bin") == b"small now"
    store.write("blobs/big.bin", big[::-1])
    assert store.read("blobs/big.bin") == big[::-1]
    store.delete("blobs/made.bin")
    assert store.list("blobs/") == ["blobs/big.bin"]


def test_create_if_absent_raced_by_16_threads(store):
    for rnd in range(3):
        key = f"joins/parent/{rnd}/resumed"
        won = _race(16, lambda i: store.create(key, f"winner-{i}".encode()))
        assert won.count(True) == 1, won
        assert store.read(key) == f"winner-{won.index(True)}".encode()


def test_compare_and_swap_counter_raced_by_4_threads(store_uri, store):
    threads = 4
    per_thread = 200 if store_uri.startswith(("memory", "file")) else 25  # fast stores need more turns to collide
    store.write("counter", b"0")

    def increment(_):
        tries = 0
        for _ in range(per_thread):
            while True:
                tries += 1
                data, ver = store.read_versioned("counter")
                time.sleep(0)  # let another thread in between the read and the swap: a fast store raced too rarely
                if store.swap("counter", str(int(data) + 1).encode(), ver):
                    break
        return tries

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # so threads interleave inside a store call, not only at network waits
    try:
        attempts = _race(threads, increment)
    finally:
        sys.setswitchinterval(switch)
    assert sum(attempts) > threads * per_thread, "no swap was ever lost: the race proved nothing"
    assert int(store.read("counter")) == threads * per_thread, attempts


def test_listing_thousands_of_keys(store):
    keys = [f"events/{i:06d}-node{i % 7}-done.json" for i in range(2000)]
    others = ["events2/x.json", "event", "other/events/y.json"]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.write(k, k.encode()), keys + others))
    assert store.list("events/") == keys
    assert len(store.list("")) == len(keys) + len(others)


def _lose_first_answer(store, monkeypatch, before=None):
    """Make the next conditional write fail the way a dropped connection does (once): it lands
    and its answer is lost; or, given `before`, another writer's call runs first and ours never
    lands, so the SDK's retry meets the other writer's object."""
    lost = []

    def once(real, make_error):
        def call(*args, **kwargs):
            if lost:
                return real(*args, **kwargs)
            lost.append(True)
            if before:
                before()
            else:
                real(*args, **kwargs)
            raise make_error(args, kwargs)
        return call

    scheme = store.uri.partition("://")[0]
    if scheme == "s3":  # botocore retried after the lost answer and met a put: 412 after a retry
        from botocore.exceptions import ClientError
        real = store.client.put_object

        def put_twice(**kw):
            if lost:
                return real(**kw)
            lost.append(True)
            before() if before else real(**kw)
            try:
                return real(**kw)
            except ClientError as exc:
                exc.response["ResponseMetadata"]["RetryAttempts"] = 1
                raise
        monkeypatch.setattr(store.client, "put_object", put_twice)
    elif scheme == "gs":
        import requests
        monkeypatch.setattr(store.session, "post", once(store.session.post,
                                                        lambda a, k: requests.ConnectionError("reset")))
    elif scheme == "az":
        from azure.core.exceptions import ServiceResponseError
        from azure.storage.blob import BlobClient
        monkeypatch.setattr(BlobClient, "upload_blob", once(BlobClient.upload_blob,
                                                            lambda a, k: ServiceResponseError("reset")))
    elif scheme == "firestore":
        from google.api_core.exceptions import ServiceUnavailable
        from google.cloud.firestore_v1.document import DocumentReference
        monkeypatch.setattr(DocumentReference, "create", once(DocumentReference.create,
                                                              lambda a, k: ServiceUnavailable("reset")))
    return lost


@pytest.mark.parametrize("store_uri", ["s3", "gcs", "azure", "firestore"], indirect=True)
def test_a_retried_create_that_had_landed_still_wins(store_uri, store, monkeypatch):
    store.write("warm", b"")  # the bucket exists: the lost answer is the create's own
    lost = _lose_first_answer(store, monkeypatch)
    assert store.create("joins/p/0/resumed", b"mine") is True
    assert lost, "the fault was not injected"
    assert store.create("joins/p/0/resumed", b"theirs") is False
    assert store.read("joins/p/0/resumed") == b"mine"


@pytest.mark.parametrize("store_uri", ["s3", "gcs", "azure", "firestore"], indirect=True)
def test_a_retried_create_that_never_landed_loses_to_the_writer_that_did(store_uri, store, monkeypatch):
    # The retry meets an object as it would after its own lost answer: only the writer token
    # tells the two apart. Taking it for ours would let a parent resume twice.
    store.write("warm", b"")
    other = open_store(store_uri)
    lost = _lose_first_answer(store, monkeypatch, before=lambda: other.create("joins/p/0/resumed", b"theirs"))
    assert store.create("joins/p/0/resumed", b"mine") is False
    assert lost, "the fault was not injected"
    assert store.read("joins/p/0/resumed") == b"theirs"


def _refusal(scheme: str) -> Exception:
    """The SDK's own answer to a bucket creation the credentials do not allow."""
    if scheme == "s3":
        from botocore.exceptions import ClientError
        return ClientError({"Error": {"Code": "AccessDenied", "Message": "denied"}}, "CreateBucket")
    if scheme == "gs":
        from google.api_core.exceptions import Forbidden
        return Forbidden("denied")
    from azure.core.exceptions import HttpResponseError
    return HttpResponseError(message="denied")


@pytest.mark.parametrize("store_uri", ["s3", "gcs", "azure"], indirect=True)
def test_a_bucket_that_cannot_be_made_is_named(store_uri, store, monkeypatch):
    def refuse():
        raise _refusal(store.uri.partition("://")[0])

    monkeypatch.setattr(store, "_create_bucket", refuse)
    bucket = store_uri.partition("://")[2].split("/")[0]
    for op in (lambda: store.write("k", b"x"), lambda: store.create("k", b"x")):
        with pytest.raises(StoreError, match=rf"{bucket}' does not exist and could not be created .*denied"):
            op()
    assert store.list("") == [] and store.swap("k", b"x", "1") is False


@pytest.mark.parametrize("uri", ["s3://", "gs://", "az:///"])
def test_a_bucket_uri_without_a_bucket_is_refused(uri):
    with pytest.raises(StoreError, match=r"needs a (bucket|container): \w+://(BUCKET|CONTAINER)/PREFIX"):
        open_store(uri)


@pytest.mark.parametrize("uri", ["s3://bucket/run/../other", "gs://bucket/./run", "az://container/a//b"])
def test_a_bucket_prefix_with_dot_or_empty_folders_is_refused(uri):
    # on S3 and GCS they were kept as literal names; Azure's service resolved "..", so the signed path
    # differed and every call failed as an authentication error
    with pytest.raises(StoreError, match="a prefix has no empty, '.' or '..' folder"):
        open_store(uri)


@pytest.mark.parametrize("uri", ["s3://AKIAEXAMPLE:hunter2@bucket/run", "gs://user:hunter2@bucket",
                                 "az://account:hunter2@container/run", "firestore://user:hunter2@project/col",
                                 "postgres://admin:hunter2@db/swarm", "redis://:hunter2@cache"])
def test_credentials_in_a_uri_are_never_echoed(uri):
    # every later message names the store by its URI: a password in it would reach logs and HTTP answers
    with pytest.raises(StoreError) as err:
        open_store(uri)
    assert "hunter2" not in str(err.value)


def test_memory_stores_never_nest():
    # memory://t/sub wrote where memory://t keeps sub/k, so memory://t read it but never listed it,
    # and the two took different locks for it: two creates could both win
    with pytest.raises(StoreError, match="without '/'"):
        open_store("memory://t/sub")
    assert open_store("memory://t/").uri == "memory://t"


def test_open_store_picks_the_backend_by_uri(store_uri):
    scheme = store_uri.partition("://")[0]
    opened = open_store(store_uri)
    assert type(opened).__name__ == CLASSES[scheme]
    assert type(opened).__module__.startswith("backends.")
    assert opened.uri.partition("://")[0] == scheme


def test_cloud_sdks_are_imported_only_by_their_backend():
    code = ("import sys, swarm_core.store, backends.local, backends.memory; "
            "from swarm_core.store import open_store; open_store('memory://x'); "
            "sdks = ('boto3', 's3fs', 'gcsfs', 'adlfs', 'google.cloud.storage', 'google.cloud.firestore', "
            "'azure.storage.blob', 'backends.s3', 'backends.gcs', 'backends.azure', 'backends.firestore'); "
            "print(','.join(m for m in sdks if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


class MyStore(Store):
    """A user's own adapter: a dict guarded by a lock, registered by dotted path."""

    def __init__(self, name: str = ""):
        self.uri = f"mystore://{name}"
        self.objects: dict[str, tuple[bytes, int]] = {}
        self.lock = threading.Lock()
        self.writes = 0

    def _put(self, key, data):
        self.writes += 1
        self.objects[key] = (bytes(data), self.writes)

    def read(self, key):
        return self.read_versioned(key)[0]

    def read_versioned(self, key):
        with self.lock:
            if check_key(key) not in self.objects:
                raise KeyNotFound(f"{key} not found in {self.uri}")
            data, ver = self.objects[key]
            return data, str(ver)

    def write(self, key, data):
        with self.lock:
            self._put(check_key(key), data)

    def create(self, key, data):
        with self.lock:
            if check_key(key) in self.objects:
                return False
            self._put(key, data)
            return True

    def swap(self, key, data, expected_version):
        with self.lock:
            if check_key(key) not in self.objects or str(self.objects[key][1]) != expected_version:
                return False
            self._put(key, data)
            return True

    def version(self, key):
        return self.read_versioned(key)[1]

    def list(self, prefix):
        folder = prefix.strip("/")
        with self.lock:
            return sorted(k for k in self.objects if not folder or k.startswith(folder + "/"))

    def delete(self, key):
        with self.lock:
            if self.objects.pop(check_key(key), None) is None:
                raise KeyNotFound(f"{key} not found in {self.uri}")


def test_a_users_adapter_registered_by_dotted_path():
    for spec in (f"{__name__}:MyStore?team-a", f"{__name__}.MyStore?team-a"):
        mine = open_store(spec)
        assert type(mine).__name__ == "MyStore" and mine.uri == "mystore://team-a"
        assert mine.create("joins/p/0/resumed", b"me") and not mine.create("joins/p/0/resumed", b"you")
        data, ver = mine.read_versioned("joins/p/0/resumed")
        assert mine.swap("joins/p/0/resumed", b"next", ver) and not mine.swap("joins/p/0/resumed", b"x", ver)
        assert mine.list("joins/") == ["joins/p/0/resumed"]
        mine.delete("joins/p/0/resumed")
        with pytest.raises(KeyNotFound):
            mine.read("joins/p/0/resumed")
    with pytest.raises(StoreError, match="not a swarm_core.store.Store subclass"):
        open_store(f"{__name__}:CLASSES")
    with pytest.raises(StoreError, match="cannot load"):
        open_store(f"{__name__}:NoSuchStore")
