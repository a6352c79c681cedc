"""functions-framework entrypoints `load_goal` and `execute_node` — the same file runs under
`functions-framework --target …` locally (`swarm serve`) and as Cloud Run functions.

Thin adapters: read at most 1 MB of body, hand it to `functions.handlers`, write the reply.
Importing this module imports no cloud SDK: each dispatcher and store imports its own on use.
"""

from __future__ import annotations

import json
import logging
import sys

import flask
import functions_framework

from functions import handlers

_out = logging.StreamHandler(sys.stdout)  # one JSON line per invocation, read by Cloud Logging
_out.setFormatter(logging.Formatter("%(message)s"))
handlers.invocations.addHandler(_out)
handlers.invocations.setLevel(logging.INFO)
handlers.invocations.propagate = False


def _body(request: flask.Request) -> bytes | None:
    if request.content_length is not None and request.content_length > handlers.MAX_BODY:
        return None  # refused unread
    data = request.stream.read(handlers.MAX_BODY + 1)
    return None if len(data) > handlers.MAX_BODY else data


def _respond(reply: handlers.Reply) -> flask.Response:
    if reply.status == 413:  # streamed, so functions-framework does not read the refused body first
        body = json.dumps(reply.body)
        return flask.Response(iter([body]), status=413, mimetype="application/json", headers={"Connection": "close"})
    if reply.run is None:
        return flask.Response(json.dumps(reply.body), status=reply.status, mimetype="application/json")
    run = reply.run

    def stream():  # the status line and first line acknowledge; the second comes when the node ran
        yield json.dumps(reply.body) + "\n"
        yield json.dumps(run()) + "\n"

    return flask.Response(stream(), status=reply.status, mimetype="application/x-ndjson")


@functions_framework.http
def load_goal(request: flask.Request) -> flask.Response:
    return _respond(handlers.load_goal(request.method, _body(request), request.headers))


@functions_framework.http
def execute_node(request: flask.Request) -> flask.Response:
    return _respond(handlers.execute_node(request.method, _body(request), request.headers))
