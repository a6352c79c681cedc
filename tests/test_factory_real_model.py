"""The function factory against a real model: SmolLM2-135M served by llama-cpp-python on loopback.

The model is tiny, so this asserts the mechanics (code comes as a Markdown block, the other
steps' calls are grammar-constrained and validated, the tests run in the sandbox, a version is saved whatever the outcome), not quality:
benchmarks/functions measures that.
"""

from __future__ import annotations

import pytest

from swarm_core.config import load_blueprint
from swarm_core.engine import Engine

# A CPU model shares 2 cores with whatever else runs: allow it time rather than fail on load.
pytestmark = [pytest.mark.real_model, pytest.mark.timeout(1800)]


def test_factory_against_smollm2_saves_a_version_either_way(smollm2_url, tmp_path):
    bp = load_blueprint()
    bp.stores.state = f"file://{tmp_path}"
    bp.llm = bp.llm.model_copy(update={"base_url": smollm2_url, "model": "smollm2", "mode": "json_object_schema", "max_tokens": 400, "max_retries": 1, "timeout_s": 600})
    bp.factory = bp.factory.model_copy(update={"max_repairs": 1, "samples": 1, "code_answer": "text"})  # SmolLM2's settings
    functions = Engine(bp).functions()
    steps = []
    record = functions.create("Write a Python function `add(a, b)` that returns the sum of a and b.", progress=lambda s, i: steps.append(s))
    assert steps[0] == "code" and steps[-1] == "saved" and "spec" in steps
    assert record.spec.status in ("active", "draft") and record.spec.version == 1 and record.code.strip()
    assert functions.space.version(record.spec.id, 1) == record and functions.space.validate() == []
    calls = [c.schema_name for c in functions.llm.calls]
    assert calls[:1] == ["write_code"] and functions.llm.usage.completion_tokens > 0
    if record.spec.status == "active":
        assert record.report.ok and functions.run(record.spec.id, record.spec.tests[0]["args"]).version == 1
