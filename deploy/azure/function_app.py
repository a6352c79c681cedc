"""Azure Functions app (Python v2 programming model): the same two handlers as
functions/main.py, as HTTP triggers, plus a queue trigger that runs `execute_node` for
every message the `azure_queue` dispatcher sends.

HTTP triggers: POST /api/load_goal and POST /api/execute_node (function key, plus the
bearer SWARM_API_TOKEN when set). Queue trigger: queue %SWARM_AZURE_QUEUE% on the
`AzureWebJobsStorage` connection; a 5xx raises so the host retries it (host.json
maxDequeueCount) and then moves it to `<queue>-poison`; on the last attempt the handler
fails the node instead, so the swarm still ends.
"""

from __future__ import annotations

import json
import logging

import azure.functions as func

from functions import handlers

handlers.invocations.setLevel(logging.INFO)  # one JSON line per invocation, to Application Insights
app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


def _http(reply: handlers.Reply) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(reply.body), status_code=reply.status, mimetype="application/json")


@app.route(route="load_goal", methods=["POST"])
def load_goal(req: func.HttpRequest) -> func.HttpResponse:
    return _http(handlers.load_goal(req.method, req.get_body(), dict(req.headers)))


@app.route(route="execute_node", methods=["POST"])
def execute_node(req: func.HttpRequest) -> func.HttpResponse:
    # No early acknowledgment here: Azure answers when the function returns, so it runs the node first.
    return _http(handlers.execute_node(req.method, req.get_body(), dict(req.headers), allow_async=False))


@app.queue_trigger(arg_name="msg", queue_name="%SWARM_AZURE_QUEUE%", connection="AzureWebJobsStorage")
def execute_node_queue(msg: func.QueueMessage) -> None:
    reply = handlers.execute_node(
        "POST", msg.get_body(), {}, allow_async=False, trusted=True, attempt=getattr(msg, "dequeue_count", None)
    )
    if reply.status >= 500:  # the host retries the message, then parks it in the poison queue
        raise RuntimeError(f"execute_node failed ({reply.status}): {reply.body.get('detail')}")
    if reply.status >= 400:  # a message that can never succeed: drop it, the log line says why
        logging.getLogger("swarm").warning("dropped queue message: %s", reply.body)
