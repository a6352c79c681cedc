"""A local OpenAI-compatible HTTP server for tests.

Works with the real ``openai.OpenAI(base_url=stub.base_url, api_key="test")`` client::

    with StubOpenAI() as stub:
        stub.queue(Reply(status=429), Reply(content='{"ok": true}'))
        client = openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=2)
        ...
        assert len(stub.requests) == 2

Azure OpenAI's route, ``POST /openai/deployments/NAME/chat/completions?api-version=...``, is
served the same way (``openai.AzureOpenAI(azure_endpoint=stub.root, ...)``); ``stub.paths`` and
``stub.api_keys`` keep each request's path and ``api-key`` header.

Scripted replies are consumed FIFO, one per chat completion request; when the
queue is empty ``responder(request_json) -> Reply`` is called (default: ``Reply(content="ok")``).
"""
from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

MODEL = "stub-model"
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 429: "rate_limit_exceeded"}


@dataclass
class Reply:
    content: str | None = None
    tool_args: str | None = None  # -> a tool call to the function named in tool_choice / first tool
    status: int = 200
    headers: dict = field(default_factory=dict)
    refusal: str | None = None
    prompt_tokens: int = 10
    completion_tokens: int = 5
    delay_s: float = 0
    body: str | None = None  # sent as it is instead of a completion (a proxy's HTML page, a broken server)
    finish_reason: str | None = None  # instead of "stop" / "tool_calls"


def _tool_name(req: dict) -> str:
    choice = req.get("tool_choice")
    if isinstance(choice, dict):
        return (choice.get("function") or {}).get("name") or choice.get("name", "tool")
    tools = req.get("tools") or []
    return ((tools[0].get("function") or {}).get("name", "tool")) if tools else "tool"


def _completion(req: dict, r: Reply) -> dict:
    tool_calls = None
    if r.tool_args is not None:
        tool_calls = [{"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                       "function": {"name": _tool_name(req), "arguments": r.tool_args}}]
    finish = r.finish_reason or ("tool_calls" if tool_calls else "stop")
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
        "created": int(time.time()), "model": req.get("model") or MODEL,
        "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                     "message": {"role": "assistant", "content": r.content,
                                 "tool_calls": tool_calls, "refusal": r.refusal}}],
        "usage": {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                  "total_tokens": r.prompt_tokens + r.completion_tokens},
    }


def _error(r: Reply) -> dict:
    kind = _ERROR_TYPES.get(r.status, "server_error" if r.status >= 500 else "invalid_request_error")
    return {"error": {"message": r.content or f"stub error {r.status}", "type": kind, "code": str(r.status)}}


class StubOpenAI:
    def __init__(self, responder: Callable[[dict], Reply] | None = None):
        self.responder = responder or (lambda req: Reply(content="ok"))
        self.requests: list[dict] = []
        self.authorizations: list[str | None] = []  # each request's Authorization header, in order
        self.paths: list[str] = []  # each request's path, query included
        self.api_keys: list[str | None] = []  # each request's api-key header (Azure's)
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    def queue(self, *replies: Reply) -> None:
        with self._lock:
            self._replies.extend(replies)

    def _next(self, req: dict, authorization: str | None = None) -> Reply:
        with self._lock:
            self.requests.append(req)
            self.authorizations.append(authorization)
            if self._replies:
                return self._replies.popleft()
        return self.responder(req)

    def start(self) -> "StubOpenAI":
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, body: dict | str, headers: dict | None = None):
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                headers = {"Content-Type": "application/json", **(headers or {})}
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")  # no keep-alive: stop() really stops serving
                for k, v in headers.items():
                    self.send_header(k, str(v))
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # client gave up (e.g. its timeout)
                    pass

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [
                        {"id": MODEL, "object": "model", "created": 0, "owned_by": "stub"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}",
                                               "type": "not_found_error", "code": "404"}})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                route = self.path.partition("?")[0].rstrip("/")
                azure = re.fullmatch(r"/openai/deployments/[^/]+/chat/completions", route)
                if route != "/v1/chat/completions" and not azure:
                    return self._send(404, {"error": {"message": f"no route {self.path}",
                                                      "type": "not_found_error", "code": "404"}})
                try:
                    req = json.loads(raw or b"{}")
                except json.JSONDecodeError as e:
                    return self._send(400, {"error": {"message": f"bad JSON: {e}",
                                                      "type": "invalid_request_error", "code": "400"}})
                with stub._lock:
                    stub.paths.append(self.path)
                    stub.api_keys.append(self.headers.get("api-key"))
                r = stub._next(req, self.headers.get("Authorization"))
                if r.delay_s:
                    time.sleep(r.delay_s)
                body = r.body if r.body is not None else _completion(req, r) if r.status == 200 else _error(r)
                self._send(r.status, body, r.headers)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.root = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.base_url = f"{self.root}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> "StubOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
