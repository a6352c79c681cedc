"""deploy/azure/function_app.py: import the Azure Functions app and run a whole swarm through
its handlers — HTTP trigger for load_goal, the azure_queue dispatcher sending to a real
queue (Azurite), and the queue trigger fed the way the Functions host feeds it."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import REPO
from scripted import default_responder
from test_llm_http import http_responder

TOOLS = Path(os.environ.get("SWARM_TOOLS") or Path.home() / ".cache" / "swarm-tools")
HINT = "run `bash .ci/install_serverless.sh` (installs it into $SWARM_TOOLS, default ~/.cache/swarm-tools)"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="  # Azurite's published dev key
TOKEN = "azure-token-" + "5" * 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"emulator exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"emulator did not listen on {port} in {timeout}s:\n{log.read_text()[-3000:]}")


@contextmanager
def emulator(cmd: list[str], port: int, log: Path, env: dict | None = None):
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        wait_port(port, proc, log)
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def azurite(tmp_path):
    binary = TOOLS / "azurite" / "node_modules" / ".bin" / "azurite-queue"
    if not binary.exists():
        pytest.fail(f"Azurite is not installed at {binary}: {HINT}")
    port = free_port()
    cmd = [str(binary), "--queueHost", "127.0.0.1", "--queuePort", str(port), "--location", str(tmp_path / "azurite"), "--silent", "--skipApiVersionCheck", "--loose"]
    with emulator(cmd, port, tmp_path / "azurite.log"):
        yield (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={AZURITE_KEY};QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        )


def load_app():
    try:
        import azure.functions  # noqa: F401
        from azure.storage.queue import QueueClient  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"{exc}: {HINT}")
    spec = importlib.util.spec_from_file_location("swarm_azure_function_app", REPO / "deploy" / "azure" / "function_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    declared = module.app.get_functions()  # indexes the app, as the worker does (once)
    return {f.get_function_name(): f.get_user_function() for f in declared}, declared


def test_the_app_declares_two_http_triggers_and_a_queue_trigger():
    functions, declared = load_app()
    assert set(functions) == {"load_goal", "execute_node", "execute_node_queue"}
    bindings = {f.get_function_name(): json.loads(f.get_function_json())["bindings"] for f in declared}
    assert bindings["execute_node_queue"][0]["queueName"] == "%SWARM_AZURE_QUEUE%"
    assert bindings["execute_node_queue"][0]["connection"] == "AzureWebJobsStorage"
    for name in ("load_goal", "execute_node"):
        trigger = bindings[name][0]
        assert trigger["type"] == "httpTrigger" and trigger["methods"] == ["POST"] and trigger["authLevel"].lower() == "function"
    host = json.loads((REPO / "deploy/azure/host.json").read_text())
    assert host["extensions"]["queues"]["maxDequeueCount"] == 5  # = SWARM_MAX_DELIVERY_ATTEMPTS's default


def test_a_swarm_runs_through_the_azure_handlers_and_a_real_queue(azurite, stub, tmp_path, monkeypatch):
    import azure.functions as func
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    stub.responder = http_responder(default_responder(subtasks=("a", "b", "c")))
    store = f"file://{tmp_path / 'store'}"
    for name, value in {
        "SWARM_STORE": store, "SWARM_DISPATCHER": "azure_queue", "SWARM_AZURE_QUEUE": "swarm-nodes",
        "AzureWebJobsStorage": azurite, "OPENAI_BASE_URL": stub.base_url, "SWARM_API_TOKEN": TOKEN,
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    queue = QueueClient.from_connection_string(azurite, "swarm-nodes", message_decode_policy=TextBase64DecodePolicy())
    queue.create_queue()
    functions, _ = load_app()

    def http(name: str, body, headers=None):
        headers = {"Content-Type": "application/json", **(headers or {})}
        req = func.HttpRequest("POST", f"http://localhost/api/{name}", headers=headers, body=body if isinstance(body, bytes) else json.dumps(body).encode())
        resp = functions[name](req)
        return resp.status_code, json.loads(resp.get_body())

    assert http("load_goal", {"goal": "Write three things"})[0] == 401
    status, body = http("load_goal", {"goal": "Write three things"}, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 202, body
    sid = body["swarm_id"]
    status, bad = http("execute_node", {"swarm_id": "sw_../../x", "node": {}}, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 400 and bad["error"] == "bad_request"

    delivered: list[str] = []
    deadline = time.time() + 60
    while time.time() < deadline:  # the Functions host's loop: receive, run the trigger, delete on success
        batch = list(queue.receive_messages(messages_per_page=16, visibility_timeout=30))
        if not batch:
            from functions import handlers

            if handlers.engine().status(sid)["status"] in ("done", "failed"):
                break
            time.sleep(0.1)
            continue
        for message in batch:
            functions["execute_node_queue"](func.QueueMessage(id=message.id, body=message.content.encode(), pop_receipt=message.pop_receipt))
            delivered.append(json.loads(message.content)["node"]["node_id"])
            queue.delete_message(message)
    from functions import handlers

    final = handlers.engine().status(sid)
    assert final["status"] == "done" and final["nodes"] == 5, final
    assert sorted(delivered) == ["root", "root", "root", "root.0.0", "root.0.1", "root.0.2", "root.1.0"]
    names = [r["response_format"]["json_schema"]["name"] for r in stub.requests]
    assert sorted(names) == ["break_down_goal", "supervise", "write_text", "write_text", "write_text"]


def test_a_long_goal_in_another_script_still_fits_one_queue_message(azurite, tmp_path, monkeypatch):
    """A goal may have 20,000 characters in any script: as \\uXXXX escapes this 12,000-character Russian
    one took 62 KB, over the queue's 48 KB, so the root's delivery was refused and the swarm failed at once."""
    import azure.functions as func
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    from functions import handlers

    for name, value in {
        "SWARM_STORE": f"file://{tmp_path / 'store'}", "SWARM_DISPATCHER": "azure_queue", "SWARM_AZURE_QUEUE": "long-goals",
        "AzureWebJobsStorage": azurite, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "SWARM_DELIVERY_ATTEMPTS": "1",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    queue = QueueClient.from_connection_string(azurite, "long-goals", message_decode_policy=TextBase64DecodePolicy())
    queue.create_queue()
    goal = "Спланируй поездку. " * 630  # 11,970 characters
    req = func.HttpRequest("POST", "http://localhost/api/load_goal", headers={"Content-Type": "application/json"}, body=json.dumps({"goal": goal}).encode())
    resp = load_app()[0]["load_goal"](req)
    assert resp.status_code == 202, resp.get_body()
    sid = json.loads(resp.get_body())["swarm_id"]
    assert handlers.engine().status(sid)["status"] != "failed", handlers.engine().node(sid, "root")[0].error
    [message] = queue.receive_messages()
    assert json.loads(message.content)["node"]["input"]["task"] == goal.strip()
