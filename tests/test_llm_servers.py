"""Smoke test: the real SmolLM2 server starts and enforces a JSON schema via response_format json_object."""
import json

import openai
import pytest

from llm_servers import smollm2_url  # noqa: F401  (session fixture)

pytestmark = pytest.mark.real_model

PLAN_SCHEMA = {
    "type": "object",
    "properties": {"subtasks": {
        "type": "array", "minItems": 1, "maxItems": 4,
        "items": {"type": "object", "properties": {"task": {"type": "string", "maxLength": 200}},
                  "required": ["task"]}}},
    "required": ["subtasks"],
}


def test_models_endpoint(smollm2_url):  # noqa: F811
    models = openai.OpenAI(base_url=smollm2_url, api_key="test").models.list()
    assert len(models.data) >= 1


def test_json_object_with_schema_is_enforced(smollm2_url):  # noqa: F811
    client = openai.OpenAI(base_url=smollm2_url, api_key="test", max_retries=0, timeout=120)
    r = client.chat.completions.create(
        model="smollm2", temperature=0, max_tokens=512,
        messages=[{"role": "user", "content": "Break this goal into subtasks: "
                   "write a haiku about the sea and translate it to French"}],
        response_format={"type": "json_object", "schema": PLAN_SCHEMA},
    )
    data = json.loads(r.choices[0].message.content, strict=False)
    assert isinstance(data["subtasks"], list) and 1 <= len(data["subtasks"]) <= 4
    assert all(isinstance(t["task"], str) for t in data["subtasks"])
    assert r.usage.completion_tokens > 0
