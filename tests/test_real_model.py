"""A whole swarm against a real model: SmolLM2-135M served by llama-cpp-python on loopback.

The model is tiny, so this asserts the mechanics (structured output enforced by the server's
grammar, validation, usage, a swarm that ends), not the quality of what it writes.
"""

from __future__ import annotations

import json

import pytest
from conftest import run_goal

from swarm_core.config import load_blueprint
from swarm_core.engine import Engine
from swarm_core.models import TERMINAL

# A CPU model shares 2 cores with whatever else runs: allow it time rather than fail on load.
pytestmark = [pytest.mark.real_model, pytest.mark.timeout(1800)]


def test_swarm_against_smollm2_ends_cleanly_with_usage(smollm2_url, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_BASE_URL", smollm2_url)
    bp = load_blueprint()
    bp.stores.state = f"file://{tmp_path}"
    # llama-cpp-python enforces only its own {"type": "json_object", "schema": ...} form.
    bp.llm = bp.llm.model_copy(update={"model": "smollm2", "mode": "json_object_schema", "max_tokens": 400, "max_retries": 1, "timeout_s": 600})
    bp.budgets = bp.budgets.model_copy(update={"max_nodes": 8, "max_rounds": 1, "max_depth": 2, "max_llm_calls": 20})
    engine = Engine(bp)
    sid = run_goal(engine, "Write a haiku about the sea and translate it to French.", timeout=900)
    st = engine.status(sid)
    for _ in range(10):  # a tiny model may ask the user something: answer, the branch goes on
        if st["status"] != "waiting_user":
            break
        for waiting in st["waiting"]:
            engine.answer(sid, waiting["node_id"], "Use your best judgement.")
        assert engine.dispatcher.wait(900), "the swarm did not go idle after an answer"
        st = engine.status(sid)
    nodes = {n.node_id: (n.blueprint.action, n.status, (n.error or "")[:200]) for n in engine.nodes(sid)}
    assert st["status"] in ("done", "failed"), (st, nodes, engine.dispatcher.errors)
    assert all(n.status in TERMINAL for n in engine.nodes(sid))
    assert st["usage"]["llm_calls"] >= 2 and st["usage"]["prompt_tokens"] > 0 and st["usage"]["completion_tokens"] > 0
    assert not engine.dispatcher.errors
    root_call = engine.events(sid)[1].llm_calls[0]
    assert root_call.schema_name == "break_down_goal" and root_call.completion_tokens > 0
    # the server's grammar held the answers to the schema: most passed validation as they came
    calls = [c for e in engine.events(sid) for c in e.llm_calls]
    valid = [c for c in calls if c.error is None and c.response]
    assert len(valid) * 2 > len(calls), [(c.schema_name, c.error) for c in calls]
    # strict=False: as the engine reads answers (a raw newline inside a string is a tiny model's habit)
    assert any(c.schema_name == "break_down_goal" and json.loads(c.response, strict=False)["subtasks"] for c in valid)
