"""Structured LLM calls: one schema in, one validated pydantic object out.

`Transport` is the wire (the official `openai` SDK, a recording, or a test script);
`LLMSession` is one node invocation's conversation with it: it checks the budget
before every call, validates every answer, re-asks with the validation error at
most `max_repairs` times, and keeps every request/response for history and replay.
"""

from __future__ import annotations

import email.utils
import importlib
import itertools
import json
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from . import cooperative
from .models import LLMCall, Usage

Mode = Literal["json_schema", "json_object_schema", "tools", "prompt"]


class LLMError(Exception):
    """The model could not be reached or never gave a valid answer; the node fails with this."""


class BudgetExceeded(Exception):
    """A swarm budget would be exceeded; the message names the budget."""


class LLMSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "gpt-4o-mini"
    mode: Mode = "json_schema"
    provider: Literal["openai", "azure"] = "openai"
    base_url: str | None = None
    temperature: float = 0.2
    max_tokens: int = Field(4096, ge=16)
    max_retries: int = Field(4, ge=0)
    timeout_s: float = Field(120, gt=0)
    max_repairs: int = Field(2, ge=0)
    azure_api_version: str = "2024-10-21"
    # An OpenAI reasoning model (o1, o3, o4-mini, gpt-5...) answers HTTP 400 to `max_tokens` and to
    # any temperature: it gets `max_completion_tokens` and none. None: known by the model's name.
    reasoning: bool | None = None

    @property
    def is_reasoning(self) -> bool:
        return bool(_REASONING_MODEL.match(self.model)) if self.reasoning is None else self.reasoning


# o1, o3-mini, o4-mini, gpt-5, gpt-5.1, gpt-5-mini; a router's "openai/o3" too
_REASONING_MODEL = re.compile(r"([\w.-]+/)?(o[1-9]|gpt-5)(?![0-9a-z])", re.IGNORECASE)


@dataclass
class Completion:
    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    refusal: str | None = None
    cut: bool = False  # stopped at max_tokens (finish_reason "length")


class Transport(Protocol):
    """Sends one chat request and returns the raw answer text (and token counts).
    `text=True`: a free-text answer, asked for without the structured-output form;
    `temperature`: this call's, instead of the settings' one. A transport that waits on I/O
    does it through `cooperative.blocking`, or it stalls every node of the greenlet runner."""

    def complete(
        self, messages: list[dict], schema_name: str, schema: dict, key: str, *, text: bool = False, temperature: float | None = None
    ) -> Completion: ...


# --- JSON Schema -> pydantic ---------------------------------------------------

# "number" keeps integers as they are: JSON Schema numbers include them, and an argument 1 must not become 1.0
_SCALARS: dict[str, Any] = {"string": str, "integer": int, "number": int | float, "boolean": bool, "null": type(None)}


def model_from_schema(name: str, schema: dict) -> type[BaseModel]:
    """Build a pydantic model from the JSON Schema subset our action schemas use
    (objects, arrays, scalars, enums, nullable type lists, length/item bounds)."""
    return _compiled(name, schema)[0]


def _compiled(name: str, schema: dict) -> tuple[Any, bool]:
    """The model for `schema`, and whether it holds every rule of it (`model_holds`): made once per schema."""
    seen = _SEEN.get(id(schema))
    if seen is not None and seen[0] is schema and seen[1] == name:  # an action's schema object, asked again
        return seen[2]
    key = (name, json.dumps(schema, sort_keys=True))
    if key not in _MODELS:  # building a pydantic model costs ~0.7 ms: once per schema, not per call
        _MODELS[key] = (_type_for(name, schema), model_holds(schema))
    if len(_SEEN) >= 1024:  # schemas built per call (the factory's) must not pile up
        _SEEN.clear()
    _SEEN[id(schema)] = (schema, name, _MODELS[key])  # holding `schema` keeps its id from being reused
    return _MODELS[key]


_MODELS: dict[tuple[str, str], tuple[Any, bool]] = {}
_SEEN: dict[int, tuple[dict, str, tuple[Any, bool]]] = {}  # id(schema) -> `_compiled`'s answer: skips the canonical dump


def _type_for(name: str, schema: dict) -> Any:
    if "enum" in schema:
        return Literal[tuple(schema["enum"])]  # type: ignore[misc]
    if "type" not in schema:
        return Any  # `{}`: any JSON value (a function's untyped argument or result)
    types = schema["type"]
    if isinstance(types, list):
        options = [_type_for(name, {**schema, "type": t}) for t in types]
        out = options[0]
        for opt in options[1:]:
            out = out | opt
        return out
    if types == "object":
        required = set(schema.get("required", []))
        fields: dict[str, Any] = {}
        for i, (prop, sub) in enumerate(schema.get("properties", {}).items()):
            typ = _type_for(f"{name}_{prop}", sub)
            taken = prop.startswith("_") or hasattr(BaseModel, prop)  # pydantic's own names ("_id", "json"): an alias
            fields[f"aliased_{i}" if taken else prop] = (typ, _field(sub, prop in required, alias=prop if taken else None))
        if not fields:
            return dict[str, Any]
        extra = "forbid" if schema.get("additionalProperties") is False else "ignore"
        return create_model(_camel(name), __config__=ConfigDict(extra=extra), **fields)
    if types == "array":
        return list[_type_for(f"{name}_item", schema.get("items", {}))]  # type: ignore[misc]
    return _SCALARS.get(types, Any)


def _field(sub: dict, required: bool, alias: str | None = None) -> Any:
    bounds = {
        "max_length": sub.get("maxLength", sub.get("maxItems")),
        "min_length": sub.get("minLength", sub.get("minItems")),
        "ge": sub.get("minimum"),
        "le": sub.get("maximum"),
    }
    bounds = {k: v for k, v in bounds.items() if v is not None}
    if required:
        return Field(..., alias=alias, **bounds)
    return Field(sub.get("default"), alias=alias, **bounds)


def _camel(name: str) -> str:
    return "".join(p.capitalize() for p in re.split(r"[^A-Za-z0-9]+", name) if p) or "Output"


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: stored as JSON it would come back as null
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _loads(text: str) -> Any:
    return json.loads(text, strict=False, parse_float=_finite, parse_constant=_no_constant)


_THINKING = re.compile(r"\s*<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def _without_thinking(text: str) -> str:
    """The answer after the `<think>...</think>` block a reasoning model (DeepSeek-R1, Qwen3, QwQ)
    may put first when its server does not take it out: its braces and drafts are no answer."""
    return text[m.end() :] if (m := _THINKING.match(text)) else text


def parse_json(text: str) -> Any:
    """Parse an answer: plain JSON, JSON inside a ``` fence, or the outermost {...} of chatty text,
    after any leading thinking. `strict=False` because grammar-constrained servers can emit raw
    newlines in strings; numbers must be finite (NaN, Infinity and 1e999 are not JSON: stored,
    they would come back as null)."""
    text = _without_thinking(text).strip()
    try:
        return _loads(text)
    except json.JSONDecodeError as first:
        fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
        candidates = [fenced.group(1)] if fenced else []
        if "{" in text and "}" in text:
            candidates.append(text[text.index("{") : text.rindex("}") + 1])
        for cand in candidates:
            try:
                return _loads(cand)
            except json.JSONDecodeError:
                continue
        raise first


def _text_answer(text: str, field: str) -> dict:
    try:
        answer = parse_json(text)
    except ValueError:
        answer = None
    return answer if isinstance(answer, dict) and field in answer else {field: _without_thinking(text)}


_HELD = {"type", "properties", "required", "additionalProperties", "items", "enum", "default", "description", "title"}
_HELD_ON_A_PROPERTY = {"maxLength", "minLength", "maxItems", "minItems", "minimum", "maximum"}  # `_field`'s bounds


def model_holds(schema: dict[str, Any]) -> bool:
    """Whether the pydantic model `model_from_schema` builds holds every rule of `schema`, so that
    checking an answer against the JSON Schema too (`json_problem`, a fifth of a node's CPU)
    would find nothing more. `_compiled` keeps the answer with the model."""
    return _holds(schema, on_a_property=False)


def _holds(schema: Any, on_a_property: bool) -> bool:
    if not isinstance(schema, dict):
        return False
    for keyword in schema:
        if keyword not in _HELD and not (on_a_property and keyword in _HELD_ON_A_PROPERTY):
            return False
    if schema.get("additionalProperties", False) not in (True, False):  # a schema for the extra properties
        return False
    if "items" in schema and not _holds(schema["items"], on_a_property=False):  # `_type_for` puts no bounds on items
        return False
    return all(_holds(sub, on_a_property=True) for sub in schema.get("properties", {}).values())


def json_problem(schema: dict[str, Any], value: Any, what: str) -> str | None:
    """Why `value` does not fit `schema` (the most relevant error, with its path), or None."""
    if not schema:
        return None
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    error = jsonschema.exceptions.best_match(cls(schema).iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{what}{f' at {where}' if where else ''}: {error.message[:300]}"


def _error_summary(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            parts.append(f"{loc}: {err['msg']}")
        return "; ".join(parts)
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    return str(exc)


# --- the session ----------------------------------------------------------------


@dataclass
class LLMSession:
    """One node invocation's LLM calls: budgeted, validated, repaired, recorded."""

    transport: Transport
    settings: LLMSettings
    key_prefix: str  # "<node_id>/<round>": with the call's seq, the replay key
    budget_check: Callable[[], None] = lambda: None
    calls: list[LLMCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)

    def ask(
        self, messages: list[dict], schema_name: str, schema: dict, *, text_field: str | None = None, temperature: float | None = None
    ) -> dict:
        """Return the answer as a validated dict (dumped from the pydantic model).

        `text_field`: the answer is free text that becomes this one string field (a JSON object
        that has the field is taken as it is). For code: a small model writes working code in a
        Markdown block far more often than inside a JSON string (README, "Functions")."""
        output_model, holds = _compiled(schema_name, schema)
        if not (isinstance(output_model, type) and issubclass(output_model, BaseModel)):  # e.g. `{}`
            output_model = create_model(_camel(schema_name), value=(output_model, ...))
            schema_is_value = True
        else:
            schema_is_value = False
        convo = list(messages)
        problem = "no attempt made"
        for _attempt in range(self.settings.max_repairs + 1):
            self.budget_check()
            seq = len(self.calls)
            started = time.monotonic()
            try:
                comp = self.transport.complete(
                    convo, schema_name, schema, f"{self.key_prefix}/{seq}", text=text_field is not None, temperature=temperature
                )
            except LLMError as exc:
                self._record(seq, schema_name, convo, None, str(exc), started, Completion(None))
                raise
            if comp.cut:  # asked again with the same limit, it would be cut again: paid for nothing
                error = f"{schema_name}: answer cut at max_tokens={self.settings.max_tokens} (raise [llm] max_tokens)"
                self._record(seq, schema_name, convo, None, error, started, comp)  # no response: replay fails it too
                raise LLMError(error)
            # "" for no text: a call recorded without a response is one the server failed (replay)
            self._record(seq, schema_name, convo, comp.text if comp.text is not None else "", None, started, comp)
            try:
                if comp.refusal:
                    raise ValueError(f"the model refused: {comp.refusal}")
                if not comp.text or not comp.text.strip():
                    raise ValueError("empty answer")
                # exclude_unset: an optional field the model left out stays out (a function's default applies)
                answer = _text_answer(comp.text, text_field) if text_field else parse_json(comp.text)
                if schema_is_value:
                    value = output_model.model_validate({"value": answer}).model_dump(by_alias=True)["value"]
                else:
                    value = output_model.model_validate(answer).model_dump(exclude_unset=True, by_alias=True)
                # the rules the model above does not hold (pattern, const, nested bounds...), which `_portable` drops
                if not holds and (mismatch := json_problem(schema, value, "the answer")):
                    raise ValueError(mismatch)
                return value
            except (ValueError, ValidationError) as exc:
                problem = _error_summary(exc)
                self.calls[-1].error = problem
                again = f"only the {text_field}" if text_field else f"only a JSON object that matches the schema:\n{json.dumps(schema)}"
                convo = convo + [
                    {"role": "assistant", "content": comp.text or ""},
                    {"role": "user", "content": f"Your answer was invalid: {problem}. Reply again with {again}"},
                ]
        raise LLMError(
            f"{schema_name}: no valid answer after {self.settings.max_repairs + 1} attempts; last problem: {problem}"
        )

    def _record(self, seq, schema_name, convo, text, error, started, comp: Completion) -> None:
        seconds = round(time.monotonic() - started, 6)
        self.calls.append(
            LLMCall(
                seq=seq,
                schema_name=schema_name,
                messages=convo,
                response=text,
                error=error,
                refusal=comp.refusal,
                prompt_tokens=comp.prompt_tokens,
                completion_tokens=comp.completion_tokens,
                seconds=seconds,
            )
        )
        self.usage = self.usage + Usage(
            llm_calls=1,
            prompt_tokens=comp.prompt_tokens,
            completion_tokens=comp.completion_tokens,
            seconds=seconds,
        )


# --- transports -----------------------------------------------------------------

_CLIENTS: dict[tuple, Any] = {}
_SDK_IMPORTED = False


def _import_sdk() -> None:
    """The first `import openai` of a process takes about half a second: made through
    `cooperative.blocking`, so on the greenlet runner it holds a pool thread, not the loop every
    node runs on. A flag, not `sys.modules`: the module is there before its import has ended."""
    global _SDK_IMPORTED
    if not _SDK_IMPORTED:
        cooperative.blocking(importlib.import_module, "openai")
        _SDK_IMPORTED = True
AZURE_CREDENTIALS = ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_AD_TOKEN")  # what the Azure SDK reads: one of them is needed


class OpenAITransport:
    """Chat Completions through the official SDK. A 429, a 5xx, a timeout or a lost connection
    is retried `max_retries` times with exponential backoff, honouring `retry-after`; no other
    answer is (the SDK's own retries, off here, also retry 408, 409 and any `x-should-retry`)."""

    def __init__(self, settings: LLMSettings):
        _import_sdk()
        self.settings = settings
        # Where and how to connect, read from the settings and the environment once: the
        # blocking client and the greenlet runner's async clients all use the same server.
        s = settings
        if s.provider == "azure":
            self._connect = {
                "azure_endpoint": os.environ.get("AZURE_OPENAI_ENDPOINT") or s.base_url,  # the environment wins, as for OpenAI
                "api_version": os.environ.get("OPENAI_API_VERSION", s.azure_api_version),
                "max_retries": 0,  # retried in `_create`
                "timeout": s.timeout_s,
            }
        else:
            base_url = os.environ.get("OPENAI_BASE_URL") or s.base_url
            # Local OpenAI-compatible servers need no key, but the SDK insists on one.
            api_key = os.environ.get("OPENAI_API_KEY") or ("not-needed" if base_url else None)
            self._connect = {"base_url": base_url, "api_key": api_key, "max_retries": 0, "timeout": s.timeout_s}
        env = tuple(map(os.environ.get, AZURE_CREDENTIALS)) if s.provider == "azure" else None  # the Azure SDK reads them itself
        self._key = (s.provider, hash((tuple(sorted(self._connect.items())), env)))

    @property
    def client(self):
        """The blocking client, made at the first call: settings the SDK refuses (no key) fail
        that call, and so its node, rather than whatever built the transport."""
        if self._key not in _CLIENTS:
            _CLIENTS[self._key] = self._make(asynchronous=False)
        return _CLIENTS[self._key]

    def connected(self) -> OpenAITransport:
        """This transport, its client made now: an LLMError here if the settings cannot make one."""
        _ = self.client
        return self

    def _make(self, asynchronous: bool):
        import openai

        if self.settings.provider == "azure":
            make = openai.AsyncAzureOpenAI if asynchronous else openai.AzureOpenAI
        else:
            make = openai.AsyncOpenAI if asynchronous else openai.OpenAI
        try:
            return make(**self._connect)
        except openai.OpenAIError as exc:  # no key, no endpoint
            raise LLMError(f"cannot set up the LLM client: {exc}") from None

    def _create_async(self, **request):
        """The request on the greenlet runner's loop, through that loop's own async client
        (an httpx async client belongs to the loop it first ran on; closed with the loop)."""
        client = cooperative.per_loop(("openai", self._key), lambda: self._make(asynchronous=True))
        return client.chat.completions.create(**request)

    def _error(self, message: str) -> LLMError:
        """An LLMError whose message (stored in the history) has no key in it, should the server
        have echoed the one it was sent ("invalid key sk-...")."""
        secrets = [self._connect.get("api_key")] + ([os.environ.get(v) for v in AZURE_CREDENTIALS] if self.settings.provider == "azure" else [])
        for secret in secrets:
            if secret and len(secret) >= 8 and secret != "not-needed":
                message = message.replace(secret, "***")
        return LLMError(message)

    @property
    def server(self) -> str:
        """The client's base URL for messages (which are stored): scheme, host, port and path only,
        since a key may ride in its user:password or its query (`?api-key=`)."""
        return str(self.client.base_url.copy_with(username=None, password=None, query=None, fragment=None))

    def complete(self, messages, schema_name, schema, key, *, text=False, temperature=None) -> Completion:
        import openai

        s = self.settings
        if s.is_reasoning:
            kwargs: dict[str, Any] = {"model": s.model, "max_completion_tokens": s.max_tokens}
        else:
            kwargs = {"model": s.model, "temperature": s.temperature if temperature is None else temperature, "max_tokens": s.max_tokens}
        mode = "text" if text else s.mode  # a free-text answer goes without any structured-output form
        if mode == "json_schema":
            strict = _is_strict(schema)
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": _portable(schema) if strict else schema, "strict": strict},
            }
        elif mode == "json_object_schema":
            kwargs["response_format"] = {"type": "json_object", "schema": _grammar_safe(schema)}
        elif mode == "tools":
            kwargs["tools"] = [{"type": "function", "function": {"name": schema_name, "parameters": schema}}]
            kwargs["tool_choice"] = {"type": "function", "function": {"name": schema_name}}
        if mode in ("json_object_schema", "prompt"):
            messages = _with_schema_hint(messages, schema)
        try:
            resp = self._create(messages=messages, **kwargs)
        except (openai.APIResponseValidationError, ValueError) as exc:  # a body that is not JSON
            raise self._error(f"LLM server {self.server} gave an unreadable answer: {_error_summary(exc)}") from None
        try:
            return _answer(resp, mode)
        except Exception as exc:  # noqa: BLE001 - the SDK builds answers unchecked: any field may be missing or odd
            raise self._error(f"LLM server {self.server} gave an unreadable answer: {exc}") from None

    def _create(self, **request):
        """The request, retried on a 429, a 5xx, a timeout or a lost connection."""
        import openai

        for retry in itertools.count():
            try:
                # On the greenlet runner the call is awaited on the loop: a pending call holds no thread.
                return cooperative.awaiting(
                    lambda: self._create_async(**request), lambda: self.client.chat.completions.create(**request)
                )
            except openai.APIStatusError as exc:
                if retry == self.settings.max_retries or not _retryable(exc):
                    raise self._error(f"LLM server {self.server} answered HTTP {exc.status_code}: {_api_message(exc)}") from None
                wait = _retry_wait(retry, exc.response.headers)
            except openai.APIConnectionError as exc:  # a timeout too
                # a base URL with no http:// or https:// ("localhost:11434/v1") would fail every retry too
                if retry == self.settings.max_retries or self.client.base_url.scheme not in ("http", "https"):
                    raise self._error(f"cannot reach the LLM server {self.server}: {_connection_problem(exc)}") from None
                wait = _retry_wait(retry, {})
            cooperative.sleep(wait)  # on the greenlet runner: an asyncio.sleep, no thread waits


def _retryable(exc: Any) -> bool:
    """A 429 or a 5xx, except OpenAI's 429 for an account out of credit: waiting does not pay it."""
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error", body)
    out_of_credit = isinstance(err, dict) and "insufficient_quota" in (err.get("code"), err.get("type"))
    return (exc.status_code == 429 and not out_of_credit) or exc.status_code >= 500


def _connection_problem(exc: Exception) -> str:
    """The SDK's "Connection error." with what it hides: refused, no such host, TLS, the URL's scheme."""
    import openai

    cause = exc.__cause__
    if cause is None or isinstance(exc, openai.APITimeoutError) or not str(cause):
        return str(exc)
    return f"{exc} ({str(cause)[:300]})"


_RETRY_FIRST_S, _RETRY_MAX_S = 0.5, 8.0  # the backoff: 0.5, 1, 2, 4, 8, 8 ... seconds, less up to a quarter (jitter)
_RETRY_AFTER_MAX_S = 60.0  # a server's retry-after is followed up to this


def _retry_wait(retry: int, headers) -> float:
    """Seconds before retry number `retry` (from 0): what the server's `retry-after-ms` or
    `retry-after` says, when it says it, else exponential backoff with jitter."""
    after = _retry_after(headers)
    if after is not None and math.isfinite(after):
        return min(max(after, 0.0), _RETRY_AFTER_MAX_S)
    return min(_RETRY_FIRST_S * 2**retry, _RETRY_MAX_S) * (1 - 0.25 * random.random())


def _retry_after(headers) -> float | None:
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000
        if "retry-after" not in headers:
            return None
        try:
            return float(headers["retry-after"])
        except ValueError:  # an HTTP date
            return email.utils.parsedate_to_datetime(headers["retry-after"]).timestamp() - time.time()
    except (TypeError, ValueError):  # a header we cannot read is no header
        return None


def _answer(resp: Any, mode: str) -> Completion:
    """The text and token counts of a chat completion; an error for whatever else a server sent."""
    if isinstance(resp, str) or not isinstance(getattr(resp, "choices", None), list):  # an HTML page, `{"error": ...}`
        raise TypeError(f"not a chat completion: {(resp if isinstance(resp, str) else resp.to_json(indent=None))[:200]}")
    prompt_tokens, completion_tokens = _tokens(resp.usage)
    if not resp.choices:
        return Completion(None, prompt_tokens, completion_tokens)
    msg = resp.choices[0].message
    if msg is None:
        raise ValueError("its choice has no message")
    text, what = msg.content, "content"
    if mode == "tools" and msg.tool_calls:
        text, what = msg.tool_calls[0].function.arguments, "tool call's arguments"
        if isinstance(text, dict):  # some servers send the arguments as an object, not as its JSON text
            text = json.dumps(text)
    refusal = getattr(msg, "refusal", None)
    for value, name in ((text, what), (refusal, "refusal")):
        if value is not None and not isinstance(value, str):  # the SDK does not check: stored as it is, it would not validate
            raise TypeError(f"its message's {name} is not a string: {json.dumps(value)[:100]}")
    finish = resp.choices[0].finish_reason
    if refusal is None and not text and finish == "content_filter":  # Azure OpenAI's filter: kept as a refusal, so replays say it too
        refusal = "the server's content filter withheld its answer (finish_reason content_filter)"
    return Completion(text, prompt_tokens, completion_tokens, refusal=refusal, cut=finish == "length")


def _tokens(usage: Any) -> tuple[int, int]:
    """The prompt and completion token counts; 0 for one a server left out or sent as null."""
    counts = (getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))
    return tuple(n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else 0 for n in counts)  # type: ignore[return-value]


def _api_message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
    return str(getattr(exc, "message", exc))[:300]


def _with_schema_hint(messages: list[dict], schema: dict) -> list[dict]:
    """The schema, in the first system message: llama.cpp's chat formats (chatml, qwen, llama-2)
    keep only one system message, so a second would drop the swarm's own."""
    hint = "Answer with only one JSON object that matches this JSON Schema, no prose:\n" + json.dumps(schema)
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{hint}"}, *messages[1:]]
    return [{"role": "system", "content": hint}, *messages]


_BOUNDS = {"minLength", "maxLength", "minItems", "maxItems", "minimum", "maximum", "pattern", "format", "default"}


def _portable(schema: Any) -> Any:
    """The strict subset every json_schema server accepts: bounds are dropped here and
    enforced by our own validation (and repair) instead."""
    if not isinstance(schema, dict):
        return schema
    out = {k: v for k, v in schema.items() if k not in _BOUNDS}
    if "properties" in out:  # property names are not keywords: keep every one
        out["properties"] = {name: _portable(sub) for name, sub in out["properties"].items()}
    if "items" in out:
        out["items"] = _portable(out["items"])
    return out


_GRAMMAR_MAX_REPEAT = 1000


def _grammar_safe(schema: Any) -> Any:
    """Length bounds clamped to 1000 for grammar-enforcing servers: llama.cpp unrolls them into
    grammar rules and at ~1500 its server dies on the request; unbounded, a small model never
    closes its string and the answer is cut at max_tokens. Our own validation keeps the
    schema's real bounds."""
    if isinstance(schema, list):
        return [_grammar_safe(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k in ("maxLength", "maxItems") and isinstance(v, int):
            out[k] = min(v, _GRAMMAR_MAX_REPEAT)
        elif k == "properties" and isinstance(v, dict):  # property names are not keywords
            out[k] = {name: _grammar_safe(sub) for name, sub in v.items()}
        else:
            out[k] = _grammar_safe(v) if k not in ("enum", "const", "default") else v
    return out


def _is_strict(schema: Any, top: bool = True) -> bool:
    """OpenAI's strict mode needs an object at the top, a type on every schema (it answers HTTP 400
    to `{}`, a function's untyped argument, and to an array without items), and every object
    closed with every property required."""
    if not isinstance(schema, dict) or "type" not in schema:
        return False
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    if top and types != ["object"]:
        return False
    if "object" in types or "properties" in schema:
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is not False or set(schema.get("required", [])) != set(props):
            return False
        return all(_is_strict(p, top=False) for p in props.values())
    if "array" in types or "items" in schema:
        return _is_strict(schema.get("items"), top=False)
    return True


class RecordedTransport:
    """Answers from a recording: `{"<node_id>/<round>/<seq>": answer}`. No network. An answer is
    its text, or `{"text", "prompt_tokens", "completion_tokens"}` when the recording kept the
    usage (a swarm's own history does), with `"refusal"` when the model refused.

    The recording also decides the budgets, so that a replay gives the same tree whatever order
    its nodes run in: a recorded call is made, and `stops` (`{"<node_id>/<round>": error}`, the
    budget failures of the recorded run) fail the same nodes with the same error. A call that
    failed (`{"error": ...}`) fails again with the same error; `user_answers`
    (`{"<node_id>/<round>": text}`) answer the questions the user answered."""

    def __init__(
        self, answers: dict[str, Any], source: str, stops: dict[str, str] | None = None, user_answers: dict[str, str] | None = None
    ):
        self.answers = answers
        self.source = source
        self.stops = stops or {}
        self.user_answers = user_answers or {}

    def complete(self, messages, schema_name, schema, key, **_) -> Completion:
        if key not in self.answers:
            raise LLMError(f"the recording {self.source} has no answer for call {key} ({schema_name})")
        answer = self.answers[key]
        if isinstance(answer, dict) and "error" in answer:
            raise LLMError(answer["error"])
        if isinstance(answer, dict):
            return Completion(
                answer["text"], answer.get("prompt_tokens", 0), answer.get("completion_tokens", 0), refusal=answer.get("refusal")
            )
        return Completion(answer, prompt_tokens=0, completion_tokens=0)


class FunctionTransport:
    """Answers from a Python function `(messages, schema_name, schema, key) -> str | dict`:
    the scripted LLM of tests and benchmarks. It waits `delay_s` with `cooperative.sleep`, so on
    the greenlet runner a pending call holds no thread; `fn` itself runs on the loop and must not block."""

    def __init__(self, fn: Callable[..., Any], delay_s: float = 0.0):
        self.fn = fn
        self.delay_s = delay_s

    def complete(self, messages, schema_name, schema, key, **_) -> Completion:
        if self.delay_s:
            cooperative.sleep(self.delay_s)
        out = self.fn(messages, schema_name, schema, key)
        text = out if isinstance(out, str) or out is None else json.dumps(out)
        return Completion(text, prompt_tokens=len(json.dumps(messages)) // 4, completion_tokens=len(text or "") // 4)
