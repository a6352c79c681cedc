"""The two entrypoints against bad input, without a token, and when deliveries keep failing —
real functions-framework processes over real HTTP, a file store that must stay untouched
by every refused request."""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import CLEAN_ENV, REPO
from scripted import default_responder
from test_llm_http import http_responder
from test_serve import Functions, free_port_pair, post, swarm_cli, wait_status

TOKEN = "tok-" + "7" * 40
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UNKNOWN = "sw_" + "0" * 26


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """Both functions with a bearer token, a file store, the stub LLM; one finished swarm and
    one whose root waits for children that never come (so its nodes exist but wait)."""
    from stub_openai import StubOpenAI

    tmp = tmp_path_factory.mktemp("functions")
    store_dir = tmp / "store"
    with StubOpenAI(http_responder(default_responder(subtasks=("a", "b")))) as stub:
        env = {"SWARM_STORE": f"file://{store_dir}", "OPENAI_BASE_URL": stub.base_url, "SWARM_API_TOKEN": TOKEN}
        with Functions(tmp, env) as fns:
            status, body = post(fns.load_goal, {"goal": "Write two things"}, AUTH)
            assert status == 202, body
            assert wait_status(f"file://{store_dir}", body["swarm_id"])["status"] == "done"
            yield fns, store_dir, body["swarm_id"], stub


LOAD_GOAL_BAD = [
    (b'{"goal": "x"', 400, "malformed JSON"),
    (b"[1, 2]", 400, "expected a JSON object"),
    (b"\xff\xfe", 400, "malformed JSON"),
    (b"[" * 50000 + b"]" * 50000, 400, "the JSON is nested too deeply"),
    ({}, 400, "missing field(s): goal"),
    ({"goal": "x", "extra": 1}, 400, "unknown field(s): extra"),
    ({"goal": 42}, 400, "goal must be a string"),
    ({"goal": "   "}, 400, "the goal is empty"),
    ({"goal": "x" * 20001}, 400, "the limit is 20000"),
    (b'{"goal": "a\\ud800b"}', 400, "the goal is not Unicode text"),  # valid JSON, but no record could hold it
    ({"goal": "x", "budgets": [1]}, 400, "budgets must be an object of integers"),
    ({"goal": "x", "budgets": []}, 400, "budgets must be an object of integers"),
    ({"goal": "x", "budgets": 0}, 400, "budgets must be an object of integers"),
    ({"goal": "x", "budgets": False}, 400, "budgets must be an object of integers"),
    ({"goal": "x", "budgets": {"max_nodes": True}}, 400, "budgets must be an object of integers"),
    ({"goal": "x", "budgets": {"max_nodez": 5}}, 400, "invalid budgets: max_nodez"),
    ({"goal": "x", "budgets": {"max_nodes": 0}}, 400, "invalid budgets: max_nodes"),
    ({"goal": "x", "blueprint": "fanout"}, 400, "this deployment runs blueprint 'default'"),
    ({"goal": "x", "blueprint": 7}, 400, "blueprint must be a string"),
    (b'{"goal": "' + b"x" * (1024 * 1024) + b'"}', 413, "over 1048576 bytes"),
]


@pytest.mark.parametrize("body, code, needle", LOAD_GOAL_BAD, ids=range(len(LOAD_GOAL_BAD)))
def test_load_goal_refuses_bad_input_and_writes_nothing(deployed, body, code, needle):
    fns, store_dir, _, _ = deployed
    before = files(store_dir)
    status, reply = post(fns.load_goal, body, AUTH)
    assert status == code and set(reply) == {"error", "detail"}, reply
    assert needle in reply["detail"]
    assert files(store_dir) == before


def execute_bad(sid: str) -> list:
    node = {"node_id": "root.0.0", "parent_id": "root", "action": "write_text", "input": {"task": "a"}, "depth": 1, "round": 0}
    return [
        ({"swarm_id": "sw_../../etc/passwd", "node": node}, 400, "invalid swarm id"),
        ({"swarm_id": "../" + sid, "node": node}, 400, "invalid swarm id"),
        ({"swarm_id": 5, "node": node}, 400, "swarm_id must be a string"),
        ({"swarm_id": sid}, 400, "missing field(s): node"),
        ({"swarm_id": sid, "node": node, "x": 1}, 400, "unknown field(s): x"),
        ({"swarm_id": sid, "node": "root"}, 400, "node must be an object"),
        ({"swarm_id": sid, "node": {**node, "node_id": "../../x"}}, 400, "invalid node id"),
        ({"swarm_id": sid, "node": {**node, "round": -1}}, 400, "node.round"),
        ({"swarm_id": sid, "node": {**node, "extra": 1}}, 400, "node.extra"),
        ({"swarm_id": sid, "node": {k: v for k, v in node.items() if k != "action"}}, 400, "node.action: Field required"),
        ({"swarm_id": UNKNOWN, "node": node}, 404, f"unknown swarm {UNKNOWN}"),
        ({"swarm_id": sid, "node": {**node, "node_id": "root.9.9"}}, 404, "unknown node root.9.9"),
        ({"swarm_id": sid, "node_id": "root.0.0", "answer": "yes"}, 409, "not waiting for an answer"),
        ({"swarm_id": sid, "node_id": "root.0.0"}, 400, "missing field(s): answer"),
        ({"swarm_id": sid, "node_id": "root.0.0", "answer": 3}, 400, "answer must be a string"),
        ({"swarm_id": sid, "node_id": "root.0.0", "answer": " "}, 400, "the answer is empty"),
        ({"swarm_id": sid, "node_id": "root.0.0", "answer": "a\ud800"}, 400, "the answer is not Unicode text"),
        ({"swarm_id": sid, "node_id": "root.0.0", "answer": "x" * 20001}, 400, "the answer is 20001 characters; the limit is 20000"),
        ({"swarm_id": UNKNOWN, "node_id": "root", "answer": "x"}, 404, "unknown swarm"),
        ({"swarm_id": sid, "node_id": "nope.x", "answer": "x"}, 404, "unknown node"),
        ({"swarm_id": sid, "node_id": "../x", "answer": "x"}, 400, "invalid node id"),
        ({"message": {"data": "%%%"}, "subscription": "s"}, 400, "not base64"),
        ({"message": {"data": base64.b64encode(b"[]").decode()}, "subscription": "s"}, 400, "expected a JSON object"),
        ({"message": {}, "subscription": "s", "other": 1}, 400, "unknown field(s): other"),
    ]


def test_execute_node_refuses_bad_input_and_writes_nothing(deployed):
    fns, store_dir, sid, stub = deployed
    calls = len(stub.requests)
    for prefer in ({}, {"Prefer": "respond-async"}):
        for body, code, needle in execute_bad(sid):
            before = files(store_dir)
            status, reply = post(fns.execute_node, body, {**AUTH, **prefer})
            assert status == code and set(reply) == {"error", "detail"}, (body, reply)
            assert needle in reply["detail"], (body, reply)
            assert files(store_dir) == before, body
    assert len(stub.requests) == calls


def test_a_500_names_an_incident_not_the_store(deployed):
    fns, store_dir, _, _ = deployed
    broken = "sw_" + "1" * 26
    header = store_dir / "swarms" / broken / "swarm.json"
    header.parent.mkdir(parents=True)
    header.write_text("{}")  # a corrupted record: its error names the key and the store
    try:
        status, reply = post(fns.execute_node, {"swarm_id": broken, "node_id": "root", "answer": "x"}, AUTH)
        assert status == 500 and reply["error"] == "internal", reply
        assert str(store_dir) not in reply["detail"] and "swarm.json" not in reply["detail"]
        incident = reply["detail"].split("incident ")[1].split(":")[0]
        logs = "".join(p.read_text() for p in fns.tmp.glob("*.log"))
        line = next(x for x in logs.splitlines() if f"incident {incident}" in x)
        assert f"swarms/{broken}/swarm.json" in line and "corrupted record" in line  # the whole story, in the logs
    finally:
        shutil.rmtree(header.parent)


def test_a_misconfigured_deployment_is_a_500_with_an_incident_and_no_credentials(monkeypatch, caplog, tmp_path):
    from functions import handlers

    monkeypatch.setenv("SWARM_STORE", f"file://{tmp_path}")
    monkeypatch.setenv("SWARM_DISPATCHER", "http")
    monkeypatch.setenv("SWARM_EXECUTE_NODE_URL", "ftp://user:hunter2@example.com/")
    reply = handlers.load_goal("POST", b'{"goal": "x"}', {"Content-Type": "application/json"})
    assert reply.status == 500 and reply.body["error"] == "misconfigured", reply.body
    assert reply.body["detail"].startswith("misconfigured deployment, incident ") and "example.com" not in reply.body["detail"]
    incident = reply.body["detail"].split("incident ")[1].split(":")[0]
    line = next(r.getMessage() for r in caplog.records if f"incident {incident}" in r.getMessage())
    assert "execute_node URL must be http(s)" in line and "'ftp://example.com/'" in line  # the whole story, in the logs
    assert "hunter2" not in caplog.text


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}])
def test_both_entrypoints_want_the_bearer_token(deployed, headers):
    fns, store_dir, sid, _ = deployed
    before = files(store_dir)
    for url, body in ((fns.load_goal, {"goal": "x"}), (fns.execute_node, {"swarm_id": sid, "node_id": "root", "answer": "x"})):
        status, reply = post(url, body, headers)
        assert status == 401 and reply["error"] == "unauthorized", reply
    assert files(store_dir) == before


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
def test_a_body_a_browser_could_send_to_any_origin_is_refused(deployed, content_type):
    """Without a preflight a web page may POST text/plain, a form or no type at all to `swarm serve`
    on loopback: such a request must not start a swarm (spending the model's tokens) or answer one."""
    fns, store_dir, sid, _ = deployed
    before = files(store_dir)
    for port, body in ((fns.port, {"goal": "x"}), (fns.port + 1, {"swarm_id": sid, "node_id": "root", "answer": "x"})):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
        conn.request("POST", "/", json.dumps(body).encode(), headers)
        resp = conn.getresponse()
        reply = json.loads(resp.read())
        assert resp.status == 415 and reply["error"] == "unsupported_media_type", reply
        assert "Content-Type must be application/json" in reply["detail"]
    assert files(store_dir) == before


def test_get_is_refused_and_an_oversized_body_is_refused_unread(deployed):
    fns, *_ = deployed
    status, reply = post(fns.load_goal, None, AUTH, method="GET")
    assert status == 405 and reply["error"] == "method_not_allowed"
    conn = http.client.HTTPConnection("127.0.0.1", fns.port, timeout=10)
    conn.putrequest("POST", "/")
    conn.putheader("Content-Length", str(50 * 1024 * 1024))
    conn.putheader("Authorization", AUTH["Authorization"])
    conn.endheaders()
    conn.send(b"{")  # the other 50 MB never come: the server must answer without waiting for them
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"] == "payload_too_large"


def test_one_json_log_line_per_invocation_and_no_secret(deployed):
    fns, _, sid, _ = deployed
    lines = fns.invocations(0) + fns.invocations(0, "load_goal")
    text = "".join(p.read_text() for p in fns.tmp.glob("*.log"))
    assert TOKEN not in text
    ok = [x for x in lines if x.get("swarm_id") == sid and x["http_status"] in (200, 202)]
    runs = [x for x in ok if x["entrypoint"] == "execute_node"]
    assert sorted((x["node_id"], x["round"]) for x in runs) == [("root", 0), ("root", 1), ("root", 2), ("root.0.0", 0), ("root.0.1", 0), ("root.1.0", 0)]
    for x in runs:
        assert {"severity", "message", "swarm_id", "node_id", "action", "status", "duration_ms", "tokens", "llm_calls"} <= set(x)
    assert sum(x["tokens"] for x in runs) == 4 * 120
    refused = [x for x in lines if x["http_status"] >= 400]
    assert refused and all(x["severity"] == ("ERROR" if x["http_status"] >= 500 else "WARNING") and x["error"] for x in refused)


def test_the_configured_token_is_read_without_its_trailing_newline(monkeypatch):
    from functions.handlers import Rejected, authenticate
    from swarm_core.config import ConfigError

    monkeypatch.setenv("SWARM_API_TOKEN", TOKEN + "\n")  # as a secret mounted from a file often is
    authenticate({"authorization": f"Bearer {TOKEN}"})
    with pytest.raises(Rejected):
        authenticate({"authorization": "Bearer " + TOKEN[:-1]})
    monkeypatch.setenv("SWARM_API_TOKEN", " \n")  # blank: a mistake, and it must not open the functions
    with pytest.raises(ConfigError, match="set but blank"):
        authenticate({"authorization": "Bearer  "})


def test_serve_on_an_ipv6_host_gives_the_dispatcher_a_url_it_accepts():
    from swarm_core.dispatchers import HttpDispatcher
    from swarm_core.serve import function_env

    url = function_env("::1", 8080, store="memory://x", env={})["SWARM_EXECUTE_NODE_URL"]
    assert url == "http://[::1]:8081/" and HttpDispatcher(url).url == url


def test_importing_the_functions_pulls_in_no_cloud_sdk():
    probe = (
        "import sys, functions.main\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('openai', 'boto3', 'botocore', 'gcsfs', 'adlfs', 'azure', 'httpx', 'grpc')"
        " or m.startswith(('google.cloud.storage', 'google.cloud.tasks', 'google.cloud.pubsub', 'google.cloud.firestore', 'google.api_core')))\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, env=CLEAN_ENV, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


class FlakyFront:
    """In front of execute_node: refuses every delivery of one node (503) and the first try of
    every other one, so retries are exercised and one node's deliveries keep failing."""

    def __init__(self, upstream_port: int, doomed: str):
        self.seen: dict[str, int] = {}
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                node = json.loads(raw)["node"]["node_id"]
                key = f"{node}@{json.loads(raw)['node']['round']}"
                front.seen[key] = front.seen.get(key, 0) + 1
                if node == doomed or front.seen[key] == 1:
                    return self._send(503, b'{"error": "unavailable"}')
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                conn.request("POST", "/", raw, {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "prefer", "authorization")})
                resp = conn.getresponse()  # the acknowledgment; the run goes on upstream
                self._send(resp.status, b"{}")
                conn.close()

            def _send(self, code, body):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()


def test_deliveries_are_retried_and_a_node_that_keeps_failing_fails_while_the_swarm_ends(stub, tmp_path):
    stub.responder = http_responder(default_responder(subtasks=("a", "b", "c")))
    store = f"file://{tmp_path / 'store'}"
    port = free_port_pair()
    flaky = FlakyFront(port + 1, doomed="root.0.1")
    env = {"SWARM_STORE": store, "OPENAI_BASE_URL": stub.base_url, "SWARM_DELIVERY_ATTEMPTS": "3", "SWARM_EXECUTE_NODE_URL": flaky.url}
    with Functions(tmp_path, env, port=port) as fns:
        status, body = post(fns.load_goal, {"goal": "Write three things"})
        assert status == 202
        final = wait_status(store, body["swarm_id"])
    flaky.server.shutdown()
    nodes = {n["node_id"]: n for n in json.loads(swarm_cli("tree", body["swarm_id"], "--json", "--store", store).stdout)["nodes"]}
    assert nodes["root.0.1"]["status"] == "failed"
    assert "delivery of root.0.1 (round 0) via http failed after 3 attempt(s): HTTP 503" in nodes["root.0.1"]["error"]
    assert flaky.seen["root.0.1@0"] == 3
    assert nodes["root.0.0"]["status"] == nodes["root.0.2"]["status"] == "done"
    assert final["status"] == "done" and final["finished_at"]  # the manager resumed and its supervisor judged
    assert all(count == 2 for key, count in flaky.seen.items() if not key.startswith("root.0.1@")), flaky.seen


def test_a_goal_whose_root_cannot_be_delivered_is_a_502_naming_the_failed_swarm(stub, tmp_path):
    """Not a 202 for a swarm that has already failed: the caller learns it at once, and which one."""
    stub.responder = http_responder(default_responder())
    store = f"file://{tmp_path / 'store'}"
    port = free_port_pair()
    flaky = FlakyFront(port + 1, doomed="root")
    env = {"SWARM_STORE": store, "OPENAI_BASE_URL": stub.base_url, "SWARM_DELIVERY_ATTEMPTS": "2", "SWARM_EXECUTE_NODE_URL": flaky.url}
    try:
        with Functions(tmp_path, env, port=port) as fns:
            status, body = post(fns.load_goal, {"goal": "Write three things"})
    finally:
        flaky.server.shutdown()
    assert status == 502 and body["error"] == "undelivered", body
    swarm_id = body["detail"].split()[1]
    assert body["detail"].startswith(f"swarm {swarm_id} was created, but its root could not be delivered, so it failed: ")
    assert "delivery of root (round 0) via http failed after 2 attempt(s): HTTP 503" in body["detail"]
    final = json.loads(swarm_cli("status", swarm_id, "--json", "--store", store).stdout)
    assert final["status"] == "failed" and flaky.seen["root@0"] == 2


def test_the_queues_last_attempt_gives_up_the_claim_its_delivery_made(monkeypatch, tmp_path):
    # execute_node claimed the root, its outcome event failed, and handing the claim back failed
    # too; on the queue's last attempt the handler must fail the node it claimed, so the swarm ends.
    from conftest import make_engine
    from stub_openai import StubOpenAI
    from test_lifecycle import Recorder, failing_outcome_and_hand_back

    from functions import handlers

    store = f"file://{tmp_path}"
    d = Recorder()
    sid, _ = make_engine(store=store, dispatcher=d).load_goal("Do a thing")
    _, root = d.queue.pop()
    with StubOpenAI(http_responder(default_responder(subtasks=("a", "b")))) as stub:
        for name, value in {"SWARM_STORE": store, "SWARM_DISPATCHER": "http", "OPENAI_BASE_URL": stub.base_url,
                            "SWARM_EXECUTE_NODE_URL": "http://127.0.0.1:9/execute_node"}.items():
            monkeypatch.setenv(name, value)
        eng = handlers.engine()
        create, swap = failing_outcome_and_hand_back(eng, "root")
        monkeypatch.setattr(eng.history, "create", create)
        monkeypatch.setattr(eng.state, "swap", swap)
        body = json.dumps({"swarm_id": sid, "node": root.model_dump(mode="json")}).encode()
        reply = handlers.execute_node("POST", body, {"X-CloudTasks-TaskRetryCount": "4"}, trusted=True)
    assert (reply.status, reply.body["status"]) == (200, "failed")
    assert "failed on its last delivery: StoreError: history store unavailable" in eng.node(sid, "root")[0].error
    assert eng.header(sid).status == "failed"
