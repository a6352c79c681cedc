"""The two entrypoints as plain functions from (method, body, headers) to a `Reply`, shared by
functions-framework (functions/main.py) and Azure Functions (deploy/azure/function_app.py).

Each one parses, validates, authenticates and calls the engine — nothing else. A request
that is refused is refused before anything is written. No swarm state lives here between
calls: the cached `Engine` is a cache of configuration and connections only.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from pydantic import ValidationError

from swarm_core.config import ConfigError, load_blueprint, without_userinfo
from swarm_core.dispatchers import RemoteDispatcher, decode_pubsub_push, env_int, give_up, make_dispatcher
from swarm_core.engine import Engine, SwarmError, check_goal
from swarm_core.models import InvalidId, NodeBlueprint, check_swarm_id, first_error
from swarm_core.runtime import build_engine, llm_source_for

MAX_BODY = 1024 * 1024
ERRORS = {
    400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 409: "conflict",
    413: "payload_too_large", 415: "unsupported_media_type", 500: "internal",
}  # fmt: skip
ENV = (
    "SWARM_BLUEPRINT", "SWARM_STORE", "SWARM_MODEL", "SWARM_LLM_MODE", "SWARM_DISPATCHER", "SWARM_DISPATCHER_RUNNER", "SWARM_EXECUTE_NODE_URL",
    "SWARM_TASKS_QUEUE", "SWARM_PUBSUB_TOPIC", "SWARM_AZURE_QUEUE",
)  # fmt: skip
invocations = logging.getLogger("swarm.invocations")


class Rejected(Exception):
    def __init__(self, status: int, detail: str, error: str | None = None):
        super().__init__(detail)
        self.status, self.detail, self.error = status, detail, error or ERRORS.get(status, "error")


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    run: Callable[[], dict[str, Any]] | None = None  # an acknowledged node still to run (http dispatcher)
    log: dict[str, Any] = field(default_factory=dict)


# --- the engine, cached per process as configuration, never as swarm state ----------------

_engines: dict[tuple, Engine] = {}
_engines_lock = threading.Lock()


def engine() -> Engine:
    key = tuple(os.environ.get(k) for k in ENV)
    with _engines_lock:
        if key not in _engines:
            bp = load_blueprint()
            if bp.stores.state.startswith("memory://"):
                raise ConfigError("the functions need a store every instance shares: memory:// lives in one process (set SWARM_STORE)")
            dispatcher = make_dispatcher(bp)
            if not isinstance(dispatcher, RemoteDispatcher):
                raise ConfigError(
                    "execute_node must not run children in its own process: set SWARM_DISPATCHER to "
                    "http (with SWARM_EXECUTE_NODE_URL), cloud_tasks, pubsub or azure_queue"
                )
            _engines[key] = build_engine(bp, dispatcher=dispatcher)
        return _engines[key]


# --- one JSON log line per invocation -----------------------------------------------------

_tls = threading.local()


class _EngineLine(logging.Filter):
    """Folds the engine's own per-node JSON line into the invocation's line (one line per call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(_tls, "fields", None)
        if fields is None or record.levelno != logging.INFO:
            return True
        try:
            data = json.loads(record.getMessage())
        except ValueError:
            return True
        if isinstance(data, dict) and "node_id" in data:
            fields.update({k: data[k] for k in ("action", "round", "status", "llm_calls", "tokens") if k in data})
            return False
        return True


_swarm_log = logging.getLogger("swarm")
_swarm_log.addFilter(_EngineLine())
if _swarm_log.level == logging.NOTSET or _swarm_log.level > logging.INFO:
    _swarm_log.setLevel(logging.INFO)  # so its per-node line reaches the filter above


def _emit(entrypoint: str, started: float, reply: Reply, fields: dict[str, Any]) -> None:
    line = {
        "severity": "ERROR" if reply.status >= 500 else "WARNING" if reply.status >= 400 else "INFO",
        "entrypoint": entrypoint,
        **{k: v for k, v in fields.items() if v is not None},
        "http_status": reply.status,
        "duration_ms": round((time.monotonic() - started) * 1000, 1),
    }
    if reply.status >= 400:
        line["error"] = reply.body.get("error")
        line["detail"] = str(reply.body.get("detail", ""))[:300]
    line["message"] = f"{entrypoint} {fields.get('swarm_id', '-')} {fields.get('node_id', '')} {fields.get('status', reply.status)}".strip()
    invocations.info(json.dumps(line))


def _logged(entrypoint: str, call: Callable[[dict[str, Any]], Reply]) -> Reply:
    started = time.monotonic()
    fields: dict[str, Any] = {}
    _tls.fields = fields
    try:
        reply = _guard(lambda: call(fields))
    finally:
        _tls.fields = None
    if reply.run is None:
        _emit(entrypoint, started, reply, fields)
        return reply
    run = reply.run

    def logged_run() -> dict[str, Any]:  # the log line is written once the acknowledged node ran
        _tls.fields = fields
        try:
            done = _guard(lambda: Reply(200, run()))
        finally:
            _tls.fields = None
        _emit(entrypoint, started, done, fields)
        return done.body

    reply.run = logged_run
    return reply


def _guard(call: Callable[[], Reply]) -> Reply:
    """Every refusal becomes `{error, detail}` with its status; nothing escapes as a traceback."""
    try:
        return call()
    except Rejected as exc:
        return Reply(exc.status, {"error": exc.error, "detail": exc.detail})
    except InvalidId as exc:
        return Reply(400, {"error": "bad_request", "detail": str(exc)})
    except ValidationError as exc:
        return Reply(400, {"error": "bad_request", "detail": first_error(exc)})
    except SwarmError as exc:
        if exc.code >= 500:  # a corrupted record: its message names the store
            return _internal(exc)
        return Reply(exc.code, {"error": ERRORS.get(exc.code, "error"), "detail": str(exc)})
    except Exception as exc:  # a misconfiguration, storage trouble or a bug: a queue redelivers on 5xx
        return _internal(exc)


def _internal(exc: Exception) -> Reply:
    """A 500 says what happened only in the logs: messages name stores, buckets and paths, which
    are the deployment's business, not the caller's. The incident id joins the two. The logs get
    no URL's user:password; a misconfiguration's message says it all, without a traceback."""
    incident = uuid.uuid4().hex[:12]
    trace = "" if isinstance(exc, ConfigError) else "\n" + "".join(traceback.format_exception(exc)).rstrip()
    logging.getLogger("swarm").error("invocation failed, incident %s: %s", incident, without_userinfo(f"{type(exc).__name__}: {exc}{trace}"))
    error, what = ("misconfigured", "misconfigured deployment") if isinstance(exc, ConfigError) else (ERRORS[500], "internal error")
    return Reply(500, {"error": error, "detail": f"{what}, incident {incident}: see the function's logs"})


# --- parsing and validation ----------------------------------------------------------------


def _lower(headers: Mapping[str, str] | None) -> dict[str, str]:
    return {k.lower(): v for k, v in (headers or {}).items()}


def authenticate(headers: dict[str, str]) -> None:
    """Bearer `SWARM_API_TOKEN` when it is set; without it the platform's IAM fronts the function."""
    raw = os.environ.get("SWARM_API_TOKEN")
    if not raw:
        return
    token = raw.strip()  # a secret mounted from a file often ends in a newline
    if not token:  # fail closed: a blank token must not open the functions
        raise ConfigError("SWARM_API_TOKEN is set but blank: set a token, or unset it when IAM fronts the functions")
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Rejected(401, "missing or wrong bearer token (Authorization: Bearer $SWARM_API_TOKEN)")


def parse(method: str, body: bytes | None, headers: dict[str, str], *, trusted: bool = False) -> dict[str, Any]:
    if method.upper() != "POST":
        raise Rejected(405, f"{method} is not allowed: POST a JSON object")
    if body is None or len(body) > MAX_BODY:
        raise Rejected(413, f"the body is over {MAX_BODY} bytes")
    if not trusted:
        authenticate(headers)
        # A browser sends text/plain or a form to any origin without asking first: only JSON may start a swarm.
        if headers.get("content-type", "").partition(";")[0].strip().lower() != "application/json":
            raise Rejected(415, f"Content-Type must be application/json, not {headers.get('content-type', '(none)')[:80]!r}")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected(400, f"malformed JSON: {exc}") from None
    except RecursionError:  # under the size limit, "[" * 50000 still exhausts the parser's stack
        raise Rejected(400, "the JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise Rejected(400, "expected a JSON object")
    return data


def exact(data: dict[str, Any], required: set[str], optional: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    missing = required - data.keys()
    extra = data.keys() - required - optional
    if missing:
        raise Rejected(400, f"missing field(s): {', '.join(sorted(missing))}")
    if extra:
        raise Rejected(400, f"unknown field(s): {', '.join(sorted(extra))[:200]}")


def _string(data: dict[str, Any], name: str) -> str:
    value = data[name]
    if not isinstance(value, str):
        raise Rejected(400, f"{name} must be a string, not {type(value).__name__}")
    return value


# --- load_goal ------------------------------------------------------------------------------


def load_goal(method: str, body: bytes | None, headers: Mapping[str, str] | None = None) -> Reply:
    """POST {goal, blueprint?, budgets?} → 202 {swarm_id, root_node_id}."""
    return _logged("load_goal", lambda fields: _load_goal(method, body, _lower(headers), fields))


def _load_goal(method: str, body: bytes | None, headers: dict[str, str], fields: dict[str, Any]) -> Reply:
    data = parse(method, body, headers)
    exact(data, {"goal"}, {"blueprint", "budgets"})
    goal = _string(data, "goal")
    budgets = data.get("budgets")
    budgets = {} if budgets is None else budgets  # not `or {}`: [] or 0 are wrong, not absent
    if not isinstance(budgets, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in budgets.values()):
        raise Rejected(400, "budgets must be an object of integers, e.g. {\"max_nodes\": 50}")
    eng = engine()
    if data.get("blueprint") is not None:
        name = _string(data, "blueprint")
        if name != eng.blueprint.name:
            raise Rejected(400, f"this deployment runs blueprint {eng.blueprint.name!r}, not {name[:80]!r}; deploy one per blueprint")
    source = llm_source_for(check_goal(goal), eng.blueprint)
    with eng.dispatcher.batch() as undelivered:  # type: ignore[attr-defined]
        swarm_id, root = eng.load_goal(goal, budgets=budgets, llm_source=source)
        fields.update(swarm_id=swarm_id, node_id=root, status="created")
    if undelivered:  # the root was given up, which fails the swarm: no 202 for it
        fields["undelivered"] = len(undelivered)
        try:
            ended = eng.header(swarm_id).status == "failed"
        except Exception:  # noqa: BLE001 - the store is down too: the swarm was not marked failed
            ended = False
        then = "so it failed" if ended else f"and it could not be marked failed (`swarm resume {swarm_id}` delivers it again)"
        raise Rejected(502, f"swarm {swarm_id} was created, but its root could not be delivered, {then}: {undelivered[0]}", "undelivered")
    return Reply(202, {"swarm_id": swarm_id, "root_node_id": root})


# --- execute_node ---------------------------------------------------------------------------


def execute_node(
    method: str,
    body: bytes | None,
    headers: Mapping[str, str] | None = None,
    *,
    allow_async: bool = True,
    trusted: bool = False,
    attempt: int | None = None,
) -> Reply:
    """POST {swarm_id, node} runs one node and dispatches what follows → 200 {swarm_id, node_id, status};
    POST {swarm_id, node_id, answer} answers a node waiting for the user. Also accepts a Pub/Sub
    push envelope around the first form. `trusted` skips the bearer check (a queue trigger);
    `attempt` is the delivery attempt when the caller knows it (Azure's dequeue count)."""
    return _logged("execute_node", lambda fields: _execute_node(method, body, _lower(headers), fields, allow_async, trusted, attempt))


def _execute_node(method, body, headers, fields, allow_async, trusted, attempt) -> Reply:
    data = parse(method, body, headers, trusted=trusted)
    if "message" in data and "subscription" in data:  # a Pub/Sub push request
        exact(data, {"message", "subscription"}, {"deliveryAttempt"})
        if not isinstance(data["message"], dict) or not isinstance(data["message"].get("data", ""), str):
            raise Rejected(400, "message.data must be a base64 string")
        try:
            inner, attempt = decode_pubsub_push(data)
        except ValueError as exc:
            raise Rejected(400, f"message.data is not base64: {exc}") from None
        data = parse("POST", inner, headers, trusted=True)
        allow_async = False
    if "x-cloudtasks-taskretrycount" in headers:
        try:
            attempt = int(headers["x-cloudtasks-taskretrycount"]) + 1
        except ValueError:
            pass
    fields["delivery_attempt"] = attempt
    if "answer" in data or "node_id" in data:
        exact(data, {"swarm_id", "node_id", "answer"})
        swarm_id = check_swarm_id(_string(data, "swarm_id"))
        node_id, answer = _string(data, "node_id"), _string(data, "answer")
        fields.update(swarm_id=swarm_id, node_id=node_id)
        eng = engine()
        with eng.dispatcher.batch():  # type: ignore[attr-defined]
            eng.answer(swarm_id, node_id, answer)
        status = eng.node(swarm_id, node_id)[0].status
        fields["status"] = f"answered, {status}"
        return Reply(200, {"swarm_id": swarm_id, "node_id": node_id, "status": status})
    exact(data, {"swarm_id", "node"})
    swarm_id = check_swarm_id(_string(data, "swarm_id"))
    if not isinstance(data["node"], dict):
        raise Rejected(400, "node must be an object (a node blueprint)")
    try:
        bp = NodeBlueprint.model_validate(data["node"])
    except ValidationError as exc:
        raise Rejected(400, f"node.{first_error(exc)}") from None
    fields.update(swarm_id=swarm_id, node_id=bp.node_id, action=bp.action, round=bp.round)
    eng = engine()
    if allow_async and "respond-async" in headers.get("prefer", "").lower():
        eng.header(swarm_id)  # unknown swarm or node: refuse now, not after the acknowledgment
        eng.node(swarm_id, bp.node_id)
        fields["status"] = "accepted"
        return Reply(202, {"swarm_id": swarm_id, "node_id": bp.node_id, "accepted": True}, run=lambda: _run(eng, swarm_id, bp, fields, final=True).body)
    final = attempt is not None and attempt >= env_int("SWARM_MAX_DELIVERY_ATTEMPTS", 5)
    return _run(eng, swarm_id, bp, fields, final=final)


def _run(eng: Engine, swarm_id: str, bp: NodeBlueprint, fields: dict[str, Any], *, final: bool) -> Reply:
    """Run one delivery. On a crash, a queue redelivers (5xx) unless this was its last try
    (or nobody will redeliver): then the node is failed with the error and the swarm goes on."""
    with eng.dispatcher.batch() as undelivered:  # type: ignore[attr-defined]
        try:
            status = eng.execute_node(swarm_id, bp)
        except (SwarmError, InvalidId, ValidationError):
            raise
        except Exception as exc:
            if not final:
                raise
            error = f"execute_node of {bp.node_id} failed on its last delivery: {type(exc).__name__}: {exc}"
            logging.getLogger("swarm").exception("giving up %s/%s", swarm_id, bp.node_id)
            give_up(eng, swarm_id, bp, error, claim=getattr(exc, "claim_attempt", None))
            status = eng.node(swarm_id, bp.node_id)[0].status
    fields["status"] = status
    if undelivered:
        fields["undelivered"] = len(undelivered)
    return Reply(200, {"swarm_id": swarm_id, "node_id": bp.node_id, "status": status})
