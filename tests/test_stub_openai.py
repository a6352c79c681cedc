"""The stub server speaks enough of the OpenAI API for the real `openai` SDK."""
import json
import time

import httpx
import openai
import pytest

from stub_openai import Reply, StubOpenAI

FAST_RETRY = {"retry-after-ms": "1"}  # `retry-after: 0` is ignored by the SDK (falls back to ~0.5 s backoff)


@pytest.fixture
def stub():
    with StubOpenAI() as s:
        yield s


def client(stub, **kw):
    return openai.OpenAI(base_url=stub.base_url, api_key="test", **kw)


def test_content_reply_and_usage(stub):
    stub.queue(Reply(content='{"answer": 42}', prompt_tokens=7, completion_tokens=3))
    r = client(stub).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_object"})
    msg = r.choices[0].message
    assert json.loads(msg.content) == {"answer": 42}
    assert msg.role == "assistant" and msg.tool_calls is None and msg.refusal is None
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (7, 3, 10)


def test_tool_call_uses_tool_choice_name(stub):
    stub.queue(Reply(tool_args='{"x": 1}'))
    tools = [{"type": "function", "function": {"name": f, "parameters": {"type": "object"}}}
             for f in ("first", "second")]
    r = client(stub).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "go"}], tools=tools,
        tool_choice={"type": "function", "function": {"name": "second"}})
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "second" and json.loads(call.function.arguments) == {"x": 1}
    assert r.choices[0].finish_reason == "tool_calls"


def test_tool_call_defaults_to_first_tool(stub):
    stub.queue(Reply(tool_args="{}"))
    tools = [{"type": "function", "function": {"name": "only", "parameters": {"type": "object"}}}]
    r = client(stub).chat.completions.create(model="m", messages=[], tools=tools)
    assert r.choices[0].message.tool_calls[0].function.name == "only"


def test_refusal(stub):
    stub.queue(Reply(refusal="no"))
    r = client(stub).chat.completions.create(model="m", messages=[])
    assert r.choices[0].message.refusal == "no" and r.choices[0].message.content is None


def test_429_then_success_via_sdk_retries(stub):
    stub.queue(Reply(status=429, headers=FAST_RETRY), Reply(status=429, headers=FAST_RETRY),
               Reply(content="finally"))
    t0 = time.monotonic()
    r = client(stub, max_retries=2).chat.completions.create(model="m", messages=[])
    assert r.choices[0].message.content == "finally"
    assert len(stub.requests) == 3
    assert time.monotonic() - t0 < 2


def test_429_exhausts_retries(stub):
    stub.queue(*[Reply(status=429, headers=FAST_RETRY)] * 3)
    with pytest.raises(openai.RateLimitError):
        client(stub, max_retries=1).chat.completions.create(model="m", messages=[])
    assert len(stub.requests) == 2


def test_500_surfaces_without_retries(stub):
    stub.queue(Reply(status=500, content="boom"))
    with pytest.raises(openai.InternalServerError) as ei:
        client(stub, max_retries=0).chat.completions.create(model="m", messages=[])
    assert ei.value.status_code == 500 and "boom" in str(ei.value)
    assert ei.value.body["type"] == "server_error"


def test_requests_recorded_and_responder_fallback():
    seen = []

    def responder(req):
        seen.append(req["messages"][-1]["content"])
        return Reply(content=req["messages"][-1]["content"].upper())

    with StubOpenAI(responder) as stub:
        stub.queue(Reply(content="scripted"))
        c = client(stub)
        outs = [c.chat.completions.create(model="m", temperature=0, messages=[{"role": "user", "content": t}])
                .choices[0].message.content for t in ("a", "b")]
    assert outs == ["scripted", "B"] and seen == ["b"]
    assert [r["messages"][0]["content"] for r in stub.requests] == ["a", "b"]
    assert stub.requests[0]["model"] == "m" and stub.requests[0]["temperature"] == 0


def test_models_and_404(stub):
    assert [m.id for m in client(stub).models.list()] == ["stub-model"]
    assert httpx.get(stub.base_url + "/nope").status_code == 404
    assert httpx.post(stub.base_url + "/embeddings", json={}).status_code == 404


def test_delay_triggers_sdk_timeout(stub):
    stub.queue(Reply(content="late", delay_s=1.0))
    with pytest.raises(openai.APITimeoutError):
        client(stub, max_retries=0, timeout=0.2).chat.completions.create(model="m", messages=[])
