"""The real `openai` SDK over HTTP against a local OpenAI-compatible stub server."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, Reply, run_goal
from scripted import default_responder

from swarm_core import cooperative
from swarm_core.config import load_blueprint
from swarm_core.engine import Engine
from swarm_core.llm import (
    LLMError,
    LLMSession,
    LLMSettings,
    OpenAITransport,
    RecordedTransport,
)

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "n": {"type": "integer", "minimum": 0}},
    "required": ["answer", "n"],
    "additionalProperties": False,
}


def session(stub, **settings) -> LLMSession:
    s = LLMSettings(**{"base_url": stub.base_url, "model": "stub-model", "max_retries": 2, **settings})
    return LLMSession(transport=OpenAITransport(s), settings=s, key_prefix="root/0")


def schema_name_of(req: dict) -> tuple[str, dict]:
    if "response_format" in req and req["response_format"]["type"] == "json_schema":
        js = req["response_format"]["json_schema"]
        return js["name"], js["schema"]
    tool = req["tools"][0]["function"]
    return tool["name"], tool["parameters"]


def http_responder(script):
    """Answer each HTTP request from a scripted responder keyed by the request's schema name."""

    def respond(req):
        name, schema = schema_name_of(req)
        out = script(req["messages"], name, schema, "")
        return Reply(content=json.dumps(out), prompt_tokens=100, completion_tokens=20)

    return respond


def test_json_schema_request_is_strict_and_answer_validated(stub):
    stub.queue(Reply(content='{"answer": "yes", "n": 3}'))
    out = session(stub).ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)
    assert out == {"answer": "yes", "n": 3}
    rf = stub.requests[0]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
    assert rf["json_schema"]["name"] == "probe"
    # length/number bounds are left out of strict schemas (not every server accepts them) ...
    assert rf["json_schema"]["schema"]["properties"]["n"] == {"type": "integer"}


def _closed(props: dict) -> dict:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


@pytest.mark.parametrize(("schema", "answer"), [
    (_closed({"args": _closed({"x": {}})}), '{"args": {"x": [1, "a"]}}'),  # a function's untyped argument
    (_closed({"args": _closed({"xs": {"type": "array"}})}), '{"args": {"xs": [1]}}'),  # `xs: list`
    ({"type": "array", "items": {"type": "integer"}}, "[1, 2]"),  # an llm function's result
], ids=["untyped", "array-without-items", "top-not-an-object"])
def test_a_schema_openai_strict_mode_refuses_is_sent_not_strict(stub, schema, answer):
    """OpenAI answers HTTP 400 to strict mode with a schema that has no type, an array without
    items or a top that is not an object ("schema must have a 'type' key"): sent not strict, validated here."""
    stub.queue(Reply(content=answer))
    assert session(stub).ask([{"role": "user", "content": "hi"}], "function_args", schema) == json.loads(answer)
    sent = stub.requests[0]["response_format"]["json_schema"]
    assert sent["strict"] is False and sent["schema"] == schema


@pytest.mark.parametrize(("model", "reasoning", "sent"), [
    ("gpt-4o-mini", None, {"max_tokens": 999, "temperature": 0.3}),
    ("o4-mini", None, {"max_completion_tokens": 999}),  # OpenAI answers 400 to max_tokens or a temperature
    ("gpt-5-mini", None, {"max_completion_tokens": 999}),
    ("my-azure-deployment", True, {"max_completion_tokens": 999}),  # a deployment's name says nothing
    ("o3", False, {"max_tokens": 999, "temperature": 0.3}),  # a server of your own named like one
], ids=["chat", "o-series", "gpt-5", "named-reasoning", "named-not-reasoning"])
def test_a_reasoning_model_gets_max_completion_tokens_and_no_temperature(stub, model, reasoning, sent):
    stub.queue(Reply(content='{"answer": "a", "n": 1}'), Reply(content='{"answer": "a", "n": 1}'))
    s = session(stub, model=model, reasoning=reasoning, max_tokens=999, temperature=0.3)
    s.ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)
    s.ask([{"role": "user", "content": "hi"}], "probe", SCHEMA, temperature=0.8)  # a factory draft's
    for req in stub.requests:
        assert {k: req[k] for k in ("max_tokens", "max_completion_tokens", "temperature") if k in req} == (
            sent if "temperature" not in sent else {**sent, "temperature": req["temperature"]})
    assert [r.get("temperature") for r in stub.requests] == ([0.3, 0.8] if "temperature" in sent else [None, None])


def test_bounds_left_out_of_the_request_are_still_enforced(stub):
    stub.queue(Reply(content='{"answer": "x", "n": -1}'), Reply(content='{"answer": "x", "n": 1}'))
    s = session(stub)
    assert s.ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)["n"] == 1  # ... but validated here
    assert "greater than or equal to 0" in s.calls[0].error


def test_429_then_success_is_retried(stub):
    stub.queue(Reply(status=429, headers={"retry-after-ms": "1"}), Reply(content='{"answer": "ok", "n": 1}'))
    s = session(stub)
    assert s.ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)["answer"] == "ok"
    assert len(stub.requests) == 2 and s.usage.llm_calls == 1 and s.usage.prompt_tokens == 10


@pytest.mark.parametrize(("status", "requests"), [(429, 3), (500, 3), (503, 3), (400, 1), (401, 1), (404, 1), (408, 1), (409, 1), (422, 1)])
def test_only_429_and_5xx_are_retried_whatever_the_server_says(stub, status, requests):
    stub.queue(*[Reply(status=status, headers={"retry-after-ms": "1", "x-should-retry": "true"})] * 3)
    with pytest.raises(LLMError, match=f"answered HTTP {status}"):
        session(stub).ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)
    assert len(stub.requests) == requests  # the first request and max_retries=2 retries, or the first only


def test_a_429_for_an_account_out_of_credit_is_not_retried(stub):
    quota = {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                       "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}
    stub.queue(*[Reply(status=429, body=json.dumps(quota), headers={"retry-after-ms": "1"})] * 3)
    with pytest.raises(LLMError, match="answered HTTP 429: You exceeded your current quota"):
        session(stub).ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)
    assert len(stub.requests) == 1


def test_a_timeout_is_retried(stub):
    stub.queue(Reply(content='{"answer": "late", "n": 1}', delay_s=3), Reply(content='{"answer": "ok", "n": 1}'))
    assert session(stub, timeout_s=0.5).ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)["answer"] == "ok"
    assert len(stub.requests) == 2


def test_retries_wait_as_the_server_says_within_a_minute_else_back_off_with_jitter(stub, monkeypatch):
    waits = []
    monkeypatch.setattr(cooperative, "sleep", waits.append)
    stub.queue(Reply(status=429, headers={"retry-after": "120"}), Reply(status=503, headers={"retry-after-ms": "1500"}),
               Reply(status=502), Reply(status=500), Reply(content='{"answer": "ok", "n": 1}'))
    assert session(stub, max_retries=4).ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)["answer"] == "ok"
    assert waits[:2] == [60, 1.5]
    assert 0.375 <= waits[2] / 4 <= 0.5 and 0.375 <= waits[3] / 8 <= 0.5  # 2 s and 4 s, less up to a quarter


def test_schema_rules_beyond_the_pydantic_model_are_checked_and_repaired(stub):
    schema = {"type": "object", "properties": {"args": {"type": "object", "properties": {
        "xs": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "code": {"type": "string", "pattern": "^[A-Z]{3}$"}}, "required": ["xs", "code"], "additionalProperties": False}},
        "required": ["args"], "additionalProperties": False}
    stub.queue(Reply(content='{"args": {"xs": [1], "code": "euro"}}'), Reply(content='{"args": {"xs": [-7], "code": "EUR"}}'),
               Reply(content='{"args": {"xs": [7], "code": "EUR"}}'))
    s = session(stub)
    assert s.ask([{"role": "user", "content": "hi"}], "function_args", schema) == {"args": {"xs": [7], "code": "EUR"}}
    assert [c.error for c in s.calls] == [
        "the answer at args/code: 'euro' does not match '^[A-Z]{3}$'", "the answer at args/xs/0: -7 is less than the minimum of 0", None,
    ]


def test_the_json_schema_check_runs_only_where_the_model_misses_a_rule():
    import glob
    from pathlib import Path

    from swarm_core.llm import model_holds

    for path in glob.glob(str(REPO / "blueprints/default/actions/*/output.schema.json")):  # every node's answer: held
        assert model_holds(json.loads(Path(path).read_text())), path
    bounded = {"type": "object", "properties": {"q": {"type": ["string", "null"], "maxLength": 3}, "n": {"type": "integer", "maximum": 3}}}
    assert model_holds(bounded)
    for missed in ({"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}}},
                   {"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "integer", "minimum": 0}}}},
                   {"type": "string", "maxLength": 3},  # a bound the model puts only on a property
                   {"type": "object", "additionalProperties": {"type": "integer"}}):
        assert not model_holds(missed), missed


def test_property_names_pydantic_keeps_for_itself_are_answered_as_they_are(stub):
    props = {"_id": {"type": "string"}, "model_config": {"type": "integer"}, "json": {"type": "string"}}
    schema = {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}
    stub.queue(Reply(content='{"model_config": 1, "json": "j"}'), Reply(content='{"_id": "a", "model_config": 1, "json": "j"}'))
    s = session(stub)
    assert s.ask([{"role": "user", "content": "hi"}], "probe", schema) == {"_id": "a", "model_config": 1, "json": "j"}
    assert s.calls[0].error == "_id: Field required"


def test_invalid_json_is_repaired_with_the_error(stub):
    stub.queue(Reply(content='{"answer": "x", "n": -4}'), Reply(content='{"answer": "x", "n": 4}'))
    s = session(stub)
    assert s.ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)["n"] == 4
    repair = stub.requests[1]["messages"]
    assert repair[-2] == {"role": "assistant", "content": '{"answer": "x", "n": -4}'}
    assert "n: Input should be greater than or equal to 0" in repair[-1]["content"]
    assert len(s.calls) == 2 and s.calls[0].error


@pytest.mark.parametrize("bad", ["1e999", "NaN", "-Infinity"])
def test_numbers_that_json_cannot_store_are_repaired(stub, bad):
    """Python's json reads them, but stored they would come back as null: re-ask instead."""
    stub.queue(Reply(content='{"answer": "x", "n": %s}' % bad), Reply(content='{"answer": "x", "n": 4}'))
    s = session(stub)
    assert s.ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)["n"] == 4
    assert bad in s.calls[0].error and ("out of range" in s.calls[0].error or "not a JSON number" in s.calls[0].error)


def test_invalid_twice_raises_a_clean_error(stub):
    stub.queue(Reply(content="nope"), Reply(content="{}"))
    s = session(stub, max_repairs=1)
    with pytest.raises(LLMError, match=r"probe: no valid answer after 2 attempts; last problem: answer: Field required"):
        s.ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)


def test_refusal_and_server_errors_are_reported(stub):
    stub.queue(Reply(refusal="I can't help with that"), Reply(content='{"answer": "a", "n": 0}'))
    s = session(stub)
    s.ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)
    assert "the model refused: I can't help with that" in s.calls[0].error
    stub.queue(*[Reply(status=500, content="boom")] * 3)
    with pytest.raises(LLMError, match=f"LLM server {stub.base_url}/? answered HTTP 500: boom"):
        session(stub).ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)


UNREADABLE = [
    (Reply(body="<html>Bad gateway</html>", headers={"Content-Type": "text/html"}), "not a chat completion: <html>Bad gateway</html>"),
    (Reply(body="<html>oops</html>"), "not valid JSON"),  # labelled JSON
    (Reply(body='{"error": {"message": "overloaded"}}'), 'not a chat completion: {"error":{"message":"overloaded"}}'),
    (Reply(body='{"id": "x", "choices": [{"index": 0, "finish_reason": "stop", "message": null}]}'), "its choice has no message"),
    (Reply(body='{"choices": [{"index": 0, "message": {"content": [{"type": "text", "text": "{}"}]}}]}'),
     """its message's content is not a string: [{"type": "text", "text": "{}"}]"""),
    (Reply(body='{"choices": [{"index": 0, "message": {"content": null, "refusal": {"why": "no"}}}]}'),
     """its message's refusal is not a string: {"why": "no"}"""),
]


@pytest.mark.parametrize(("reply", "problem"), UNREADABLE, ids=["html", "not-json", "error-object", "null-message", "content-list", "refusal-object"])
def test_an_answer_the_sdk_cannot_read_is_a_recorded_llm_error(stub, reply, problem):
    stub.queue(reply)
    s = session(stub)
    with pytest.raises(LLMError, match=f"LLM server {stub.base_url}/? gave an unreadable answer: ") as err:
        s.ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)
    assert problem in str(err.value) and len(stub.requests) == 1  # not retried, not re-asked
    assert [(c.response, c.error) for c in s.calls] == [(None, str(err.value))] and s.usage.llm_calls == 1


def _completion_body(message: dict, usage: dict | None) -> str:
    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", **message}}
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice],
                       **({"usage": usage} if usage is not None else {})})


@pytest.mark.parametrize("usage", [None, {"prompt_tokens": None, "completion_tokens": None}, {"prompt_tokens": 7, "total_tokens": 7}],
                         ids=["missing", "nulls", "no-completion-tokens"])
def test_an_answer_with_incomplete_usage_is_taken_with_the_counts_it_has(stub, usage):
    stub.queue(Reply(body=_completion_body({"content": '{"answer": "a", "n": 1}'}, usage)))
    s = session(stub)
    assert s.ask([{"role": "user", "content": "hi"}], "probe", SCHEMA) == {"answer": "a", "n": 1}
    assert (s.usage.llm_calls, s.usage.prompt_tokens, s.usage.completion_tokens) == (1, (usage or {}).get("prompt_tokens") or 0, 0)
    assert s.calls[0].response == '{"answer": "a", "n": 1}'


def test_an_answer_withheld_by_a_content_filter_says_so_and_replays_alike(stub):
    """Azure OpenAI's filter: no content, finish_reason "content_filter"; not "empty answer"."""
    filtered = json.loads(_completion_body({"content": None}, {"prompt_tokens": 3, "completion_tokens": 0}))
    filtered["choices"][0]["finish_reason"] = "content_filter"
    stub.queue(Reply(body=json.dumps(filtered)), Reply(content='{"answer": "a", "n": 1}'))
    s = session(stub)
    assert s.ask([{"role": "user", "content": "hi"}], "probe", SCHEMA) == {"answer": "a", "n": 1}
    assert s.calls[0].error == "the model refused: the server's content filter withheld its answer (finish_reason content_filter)"
    assert s.calls[0].refusal  # recorded, so a replay gives the same error back


def test_tool_call_arguments_sent_as_an_object_are_taken_as_its_json(stub):
    call = {"id": "c", "type": "function", "function": {"name": "probe", "arguments": {"answer": "a", "n": 1}}}
    stub.queue(Reply(body=_completion_body({"content": None, "tool_calls": [call]}, {"prompt_tokens": 3, "completion_tokens": 2})))
    s = session(stub, mode="tools")
    assert s.ask([{"role": "user", "content": "hi"}], "probe", SCHEMA) == {"answer": "a", "n": 1}
    assert s.calls[0].response == '{"answer": "a", "n": 1}'


def test_the_tokens_of_an_answer_with_no_choice_are_counted(stub):
    stub.queue(Reply(body=json.dumps({"id": "x", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 0}})),
               Reply(content='{"answer": "a", "n": 1}'))
    s = session(stub)
    assert s.ask([{"role": "user", "content": "hi"}], "probe", SCHEMA) == {"answer": "a", "n": 1}
    assert s.calls[0].error == "empty answer" and s.calls[0].prompt_tokens == 3 and s.usage.prompt_tokens == 3 + 10


def test_a_swarm_failed_by_an_unreadable_answer_replays_to_the_same_error(stub, monkeypatch):
    stub.responder = lambda req: Reply(body="<html>Welcome to nginx</html>", headers={"Content-Type": "text/html"})
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    bp = load_blueprint()
    bp.stores.state = "memory://http-unreadable"
    engine = Engine(bp)
    sid = run_goal(engine, "Write a thing")
    st = engine.status(sid)
    assert st["status"] == "failed" and "gave an unreadable answer: not a chat completion" in st["error"]
    assert st["usage"]["llm_calls"] == 1
    replay = Engine(bp, transport=engine.replay_transport(sid))
    assert replay.status(run_goal(replay, "Write a thing"))["error"] == st["error"]


def test_an_answer_cut_at_max_tokens_fails_at_once_and_replays_so(stub):
    stub.queue(Reply(content='{"answer": "word word', finish_reason="length", completion_tokens=64))
    s = session(stub, max_tokens=64)
    cut = r"probe: answer cut at max_tokens=64 \(raise \[llm\] max_tokens\)"
    with pytest.raises(LLMError, match=cut):
        s.ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)
    assert len(stub.requests) == 1 and s.usage.completion_tokens == 64  # not re-asked with the same limit
    assert s.calls[0].response is None and s.calls[0].completion_tokens == 64
    replay = LLMSession(transport=RecordedTransport({"root/0/0": {"error": s.calls[0].error}}, "test"), settings=s.settings, key_prefix="root/0")
    with pytest.raises(LLMError, match=cut):  # what replay_transport makes of the recorded call
        replay.ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)


def _longest(schema: dict) -> int:
    """The most characters an answer to `schema` may hold in its strings."""
    if schema.get("type") == "object" or "properties" in schema:
        return sum(_longest(sub) for sub in schema.get("properties", {}).values())
    if "items" in schema:
        return schema.get("maxItems", 1) * _longest(schema["items"])
    return schema.get("maxLength", 0)


def test_the_default_max_tokens_holds_the_longest_answer_a_built_in_action_allows():
    schemas = [json.loads(p.read_text()) for p in (REPO / "blueprints/default/actions").glob("*/output.schema.json")]
    longest = max(map(_longest, schemas))
    assert longest >= 12000 and longest / 4 <= load_blueprint().llm.max_tokens == LLMSettings().max_tokens  # ~4 characters a token


def test_a_refusal_is_recorded_and_replayed_as_a_refusal(stub, monkeypatch):
    script = http_responder(default_responder(subtasks=("a", "b")))
    refused = "Your task: b"
    stub.responder = lambda req: Reply(refusal="I can't help with that") if refused in req["messages"][-1]["content"] else script(req)
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    bp = load_blueprint()
    bp.stores.state = "memory://http-refusal"
    bp.llm = bp.llm.model_copy(update={"max_repairs": 0})
    engine = Engine(bp)
    sid = run_goal(engine, "Write two things")
    leaf = next(n for n in engine.nodes(sid) if n.status == "failed")
    assert leaf.error.endswith("last problem: the model refused: I can't help with that")
    replay = Engine(bp, transport=engine.replay_transport(sid))
    rid = run_goal(replay, "Write two things")
    assert replay.node(rid, leaf.node_id)[0].error == leaf.error
    assert len(stub.requests) == 4  # the replay asked nothing


@pytest.mark.parametrize("url", ["http://user:hunter2@127.0.0.1:9/v1", "http://127.0.0.1:9/v1?api-key=hunter2#hunter2"])
def test_an_unreachable_server_is_named_without_its_credentials(monkeypatch, url):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    s = LLMSettings(base_url=url, model="m", max_retries=0, timeout_s=5)
    with pytest.raises(LLMError, match=r"cannot reach the LLM server http://127.0.0.1:9/v1/?: ") as err:
        LLMSession(transport=OpenAITransport(s), settings=s, key_prefix="root/0").ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)
    assert "hunter2" not in str(err.value) and str(err.value).endswith("Connection error. ([Errno 111] Connection refused)")


@pytest.mark.parametrize("url", ["127.0.0.1:9/v1", "localhost:9/v1"])
def test_a_base_url_with_no_http_scheme_fails_at_once_saying_so(monkeypatch, url):
    waits = []
    monkeypatch.setattr(cooperative, "sleep", waits.append)
    s = LLMSettings(base_url=url, model="m", max_retries=3)
    with pytest.raises(LLMError, match=r"Connection error\. \(Request URL (is missing an 'http://'|has an unsupported protocol)"):
        LLMSession(transport=OpenAITransport(s), settings=s, key_prefix="root/0").ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)
    assert waits == []  # not retried: it would fail the same way


def test_azure_goes_to_the_endpoint_the_environment_names_over_the_blueprints(stub, monkeypatch):
    """AZURE_OPENAI_ENDPOINT overrides `[llm] base_url` as OPENAI_BASE_URL does for OpenAI, and
    as `llm_configured` reads it; the request takes Azure's route with the deployment and key."""
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", stub.root)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-key-1")
    stub.queue(Reply(content='{"answer": "yes", "n": 3}'))
    s = session(stub, provider="azure", base_url="http://127.0.0.1:9", model="my-deployment", max_retries=0)
    assert s.ask([{"role": "user", "content": "hi"}], "probe", SCHEMA) == {"answer": "yes", "n": 3}
    assert stub.paths[0].startswith("/openai/deployments/my-deployment/chat/completions?api-version=")
    assert stub.api_keys == ["azure-key-1"]


def test_a_key_the_server_echoes_in_its_error_is_kept_out_of_the_message(stub, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    stub.queue(Reply(status=401, body=json.dumps({"error": {"message": "Incorrect API key provided: sk-test-0123456789abcdef."}})))
    with pytest.raises(LLMError) as err:
        session(stub).ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)
    assert str(err.value).endswith("answered HTTP 401: Incorrect API key provided: ***."), str(err.value)
    assert stub.requests and "sk-test-0123456789abcdef" not in str(err.value)


@pytest.mark.parametrize("mode", ["json_schema", "json_object_schema", "tools"])
def test_a_text_answer_goes_without_structured_output_and_fills_one_field(stub, mode):
    code = "Here you are:\n```python\ndef f():\n    return 1\n```"
    stub.queue(Reply(content=""), Reply(content=code))
    s = session(stub, mode=mode)
    out = s.ask([{"role": "user", "content": "code?"}], "write_code", {"type": "object", "properties": {"code": {"type": "string", "minLength": 1}}, "required": ["code"]}, text_field="code", temperature=0.9)
    assert out == {"code": code}  # the caller takes the block out of the text
    for req in stub.requests:
        assert "response_format" not in req and "tools" not in req and req["temperature"] == 0.9
        assert not any("JSON Schema" in m["content"] for m in req["messages"])
    assert stub.requests[1]["messages"][-1]["content"] == "Your answer was invalid: empty answer. Reply again with only the code"


@pytest.mark.parametrize("mode", ["json_object_schema", "tools", "prompt"])
def test_every_structured_output_mode_builds_its_request_and_validates(stub, mode):
    if mode == "tools":
        stub.queue(Reply(tool_args='{"answer": "t", "n": 2}'))
    else:  # chatty text around the JSON is tolerated in every non-strict mode
        stub.queue(Reply(content='Sure!\n```json\n{"answer": "t", "n": 2}\n```'))
    assert session(stub, mode=mode).ask([{"role": "user", "content": "hi"}], "probe", SCHEMA)["n"] == 2
    req = stub.requests[0]
    if mode == "json_object_schema":
        assert req["response_format"] == {"type": "json_object", "schema": SCHEMA}
    elif mode == "tools":
        assert req["tool_choice"] == {"type": "function", "function": {"name": "probe"}}
        assert req["tools"][0]["function"]["parameters"] == SCHEMA
    else:
        assert "response_format" not in req and "tools" not in req
        assert json.dumps(SCHEMA) in req["messages"][0]["content"]


def test_a_reasoning_models_thinking_before_its_answer_is_left_out(stub):
    """DeepSeek-R1 or Qwen3 on a server that keeps `<think>` in the content: braces and drafts in it are no answer."""
    stub.queue(Reply(content='<think>It wants {answer, n}. Draft: {"answer": "draft", "n": 0}</think>\n{"answer": "t", "n": 2}'),
               Reply(content='<think>Code? ```python\ndef draft(): ...\n```</think>\n```python\ndef f():\n    return 1\n```'))
    s = session(stub, mode="prompt")
    assert s.ask([{"role": "user", "content": "hi"}], "probe", SCHEMA) == {"answer": "t", "n": 2}
    code = s.ask([{"role": "user", "content": "code?"}], "write_code", {"type": "object", "properties": {"code": {"type": "string"}}}, text_field="code")
    assert code == {"code": "\n```python\ndef f():\n    return 1\n```"} and s.calls[0].response.startswith("<think>")  # recorded as sent


@pytest.mark.parametrize("mode", ["json_object_schema", "prompt"])
def test_the_schema_joins_the_system_prompt_in_one_system_message(stub, mode):
    """llama.cpp's chat formats keep only the first system message."""
    stub.queue(Reply(content='{"answer": "t", "n": 2}'))
    session(stub, mode=mode).ask([{"role": "system", "content": "You are one agent."}, {"role": "user", "content": "hi"}], "probe", SCHEMA)
    system, user = stub.requests[0]["messages"]
    assert system["role"] == "system" and system["content"].startswith("You are one agent.\n\nAnswer with only one JSON object")
    assert system["content"].endswith(json.dumps(SCHEMA)) and user == {"role": "user", "content": "hi"}


def test_a_whole_swarm_over_http_records_usage_and_history(stub, monkeypatch):
    stub.responder = http_responder(default_responder(subtasks=("a", "b")))
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-4242")
    bp = load_blueprint()
    bp.stores.state = "memory://http-e2e"
    bp.llm = bp.llm.model_copy(update={"model": "stub-model", "max_retries": 1})
    engine = Engine(bp)
    sid = run_goal(engine, "Write two things")
    st = engine.status(sid)
    assert st["status"] == "done"
    assert st["usage"] == {"llm_calls": 4, "prompt_tokens": 400, "completion_tokens": 80, "seconds": st["usage"]["seconds"]}
    assert len(stub.requests) == 4 and {r["model"] for r in stub.requests} == {"stub-model"}
    assert sum(n.usage.prompt_tokens for n in engine.nodes(sid)) == 400
    answers = engine.recorded_answers(sid)
    assert len(answers) == 4 and "root/0/0" in answers
    stored = b"".join(engine.state.read(k) for k in engine.state.list(f"swarms/{sid}/"))
    assert b"sk-test-secret-4242" not in stored  # the key reaches the server, never storage
    assert stub.authorizations == ["Bearer sk-test-secret-4242"] * 4
