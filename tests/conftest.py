"""Shared fixtures. `tests/` is on sys.path, so helpers import as plain modules."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from llm_servers import smollm2_url  # noqa: E402,F401  (session fixture: a real local model)
from stub_openai import Reply, StubOpenAI  # noqa: E402,F401

from swarm_core.config import load_blueprint  # noqa: E402
from swarm_core.engine import Engine  # noqa: E402
from swarm_core.llm import FunctionTransport  # noqa: E402

REPO = HERE.parent
FANOUT = HERE / "blueprints" / "fanout"
# `SWARM_TEST_RUNNER=greenlets pytest ...` runs every engine the tests make, in-process or through
# the CLI, on that local runner instead of the default (`.ci/test` runs a second pass with it).
RUNNER = os.environ.get("SWARM_TEST_RUNNER", "")
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SWARM_", "AZURE_OPENAI"))}
if RUNNER:
    CLEAN_ENV["SWARM_DISPATCHER_RUNNER"] = RUNNER


@pytest.fixture
def readable_folder():
    """A new world-readable folder outside /tmp, /var/tmp and /dev/shm, as a store's `./.swarm` is
    (the sandbox covers those three anyway, so a folder there would prove nothing about hiding)."""
    import shutil
    import tempfile

    for parent in ("/srv", "/opt", "/var/lib", str(REPO)):
        if os.access(parent, os.W_OK) and not parent.startswith(("/tmp/", "/var/tmp/", "/dev/shm/")):
            folder = Path(tempfile.mkdtemp(dir=parent, prefix="swarm-readable-"))
            folder.chmod(0o755)
            yield folder
            shutil.rmtree(folder, ignore_errors=True)
            return
    pytest.fail("no writable folder outside /tmp, /var/tmp and /dev/shm for a world-readable store")


@pytest.fixture(autouse=True)
def _no_ambient_llm(monkeypatch):
    """Tests never reach a real provider by accident: every LLM comes from the test itself."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "SWARM_", "AZURE_OPENAI")):
            monkeypatch.delenv(name)
    if RUNNER:
        monkeypatch.setenv("SWARM_DISPATCHER_RUNNER", RUNNER)


def make_engine(responder=None, *, store: str | None = None, blueprint=None, dispatcher=None, budgets=None, delay_s=0.0, **llm):
    """An engine on a fresh memory store (or `store`) answering from a scripted LLM."""
    from scripted import default_responder

    bp = load_blueprint(blueprint)
    bp.stores.state = store or f"memory://{uuid.uuid4().hex}"
    if budgets:
        bp.budgets = bp.budgets.model_copy(update=budgets)
    if llm:
        bp.llm = bp.llm.model_copy(update=llm)
    transport = FunctionTransport(responder or default_responder(), delay_s=delay_s)
    return Engine(bp, transport=transport, dispatcher=dispatcher)


def run_goal(engine: Engine, goal: str = "Do a thing", timeout: float = 60, **kw):
    swarm_id, _ = engine.load_goal(goal, **kw)
    assert engine.dispatcher.wait(timeout=timeout), f"swarm did not go idle in {timeout} s"
    return swarm_id


@pytest.fixture
def stub():
    with StubOpenAI() as server:
        yield server
