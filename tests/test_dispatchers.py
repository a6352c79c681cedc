"""The queue-backed dispatchers against the emulators on this machine: a whole swarm through
Pub/Sub (push subscription to execute_node) and through Cloud Tasks (HTTP tasks to
execute_node), each with two functions-framework processes and the stub LLM."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import CLEAN_ENV, REPO
from scripted import default_responder
from test_deploy_azure import HINT, TOOLS, emulator, free_port
from test_llm_http import http_responder
from test_serve import Functions, post, schema_counts, wait_status

from swarm_core.config import ConfigError, load_blueprint
from swarm_core.dispatchers import CloudTasksDispatcher, HttpDispatcher, make_dispatcher
from swarm_core.models import NodeBlueprint

PROJECT = "swarm-test"
TOKEN = "tasks-token-" + "3" * 30


def test_pubsub_push_runs_a_swarm(stub, tmp_path, monkeypatch):
    if not shutil.which("gcloud"):
        pytest.fail("gcloud is not installed: the Pub/Sub emulator is `gcloud beta emulators pubsub start` (Google Cloud SDK with pubsub-emulator)")
    try:
        from google.cloud import pubsub_v1
    except ImportError as exc:
        pytest.fail(f"{exc}: {HINT}")
    stub.responder = http_responder(default_responder(subtasks=("a", "b", "c")))
    port = free_port()
    cmd = ["gcloud", "beta", "emulators", "pubsub", "start", f"--host-port=127.0.0.1:{port}", f"--project={PROJECT}", "--quiet"]
    store = f"file://{tmp_path / 'store'}"
    topic = f"projects/{PROJECT}/topics/swarm-nodes"
    with emulator(cmd, port, tmp_path / "pubsub.log"):
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{port}")
        env = {"SWARM_STORE": store, "OPENAI_BASE_URL": stub.base_url, "SWARM_DISPATCHER": "pubsub", "SWARM_PUBSUB_TOPIC": topic, "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{port}"}
        with Functions(tmp_path, env) as fns:
            pubsub_v1.PublisherClient().create_topic(name=topic)
            pubsub_v1.SubscriberClient().create_subscription(
                name=f"projects/{PROJECT}/subscriptions/swarm-execute-node",
                topic=topic,
                push_config={"push_endpoint": fns.execute_node},
                ack_deadline_seconds=60,
            )
            status, body = post(fns.load_goal, {"goal": "Write three things"})
            assert status == 202, body
            final = wait_status(store, body["swarm_id"], timeout=120)
            runs = fns.invocations(0)
    assert final["status"] == "done" and final["nodes"] == 5, final
    assert schema_counts(stub) == {"break_down_goal": 1, "write_text": 3, "supervise": 1}
    pushed = sorted((x["node_id"], x["round"]) for x in runs if x.get("http_status") == 200)
    assert pushed[:3] == [("root", 0), ("root", 1), ("root", 2)] and len(set(pushed)) == 7


def test_cloud_tasks_runs_a_swarm_with_the_token_in_each_task(stub, tmp_path):
    binary = TOOLS / "tasks-emulator" / "bin" / "gcloud-tasks-emulator"
    if not binary.exists():
        pytest.fail(f"gcloud-tasks-emulator is not installed at {binary}: {HINT}")
    try:
        from google.cloud import tasks_v2  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"{exc}: {HINT}")
    stub.responder = http_responder(default_responder(subtasks=("a", "b")))
    port = free_port()
    queue = f"projects/{PROJECT}/locations/here/queues/swarm-nodes"
    store = f"file://{tmp_path / 'store'}"
    cmd = [str(binary), "start", "--port", str(port), "--default-queue", queue, "--max-retries", "5", "--quiet"]
    with emulator(cmd, port, tmp_path / "tasks.log"):
        env = {
            "SWARM_STORE": store, "OPENAI_BASE_URL": stub.base_url, "SWARM_DISPATCHER": "cloud_tasks",
            "SWARM_TASKS_QUEUE": queue, "CLOUD_TASKS_EMULATOR_HOST": f"127.0.0.1:{port}", "SWARM_API_TOKEN": TOKEN,
        }  # fmt: skip
        with Functions(tmp_path, env) as fns:
            status, body = post(fns.load_goal, {"goal": "Write two things"}, {"Authorization": f"Bearer {TOKEN}"})
            assert status == 202, body
            final = wait_status(store, body["swarm_id"], timeout=120)
            runs = fns.invocations(0)
    assert final["status"] == "done" and final["nodes"] == 4, final
    assert schema_counts(stub) == {"break_down_goal": 1, "write_text": 2, "supervise": 1}
    ok = [x for x in runs if x.get("http_status") == 200]
    assert len(ok) == 6 and all(x["delivery_attempt"] == 1 for x in ok)  # X-CloudTasks-TaskRetryCount 0, token accepted


def test_task_names_are_derived_from_swarm_node_and_round(tmp_path, monkeypatch):
    bp = NodeBlueprint(node_id="root.0.12", parent_id="root", action="write_text", round=3)
    sid = "sw_" + "a" * 26
    assert CloudTasksDispatcher.task_id(sid, bp) == sid + "-root_0_12-r3"
    # the name reaches the queue with the task (the emulator lists it)
    binary = TOOLS / "tasks-emulator" / "bin" / "gcloud-tasks-emulator"
    if not binary.exists():
        pytest.fail(f"gcloud-tasks-emulator is not installed at {binary}: {HINT}")
    port = free_port()
    queue = f"projects/{PROJECT}/locations/here/queues/names"
    cmd = [str(binary), "start", "--port", str(port), "--default-queue", queue, "--max-retries", "5", "--quiet"]
    with emulator(cmd, port, tmp_path / "tasks.log"):
        monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", f"127.0.0.1:{port}")
        d = CloudTasksDispatcher("http://127.0.0.1:9/", queue=queue)  # nothing listens: the task stays queued
        d.send(sid, bp)
        assert [t.name for t in d.client().list_tasks(parent=queue)] == [f"{queue}/tasks/{sid}-root_0_12-r3"]
    # A second delivery of the same node and round is refused by Cloud Tasks with ALREADY_EXISTS
    # (the emulator accepts duplicates, so the queue's answer is played here): that counts as delivered.
    from google.api_core import exceptions as gexc

    class Refusing:
        def create_task(self, **_):
            raise gexc.AlreadyExists(f"{queue}/tasks/{sid}-root_0_12-r3")

    d._client = Refusing()
    d.send(sid, bp)  # no error, no retry
    assert not d.errors


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"SWARM_DISPATCHER": "http"}, "needs the execute_node URL"),
        ({"SWARM_DISPATCHER": "http", "SWARM_EXECUTE_NODE_URL": "ftp://x"}, "must be http(s)"),
        ({"SWARM_DISPATCHER": "cloud_tasks", "SWARM_EXECUTE_NODE_URL": "https://x"}, "SWARM_TASKS_QUEUE"),
        ({"SWARM_DISPATCHER": "pubsub", "SWARM_PUBSUB_TOPIC": "nodes"}, "SWARM_PUBSUB_TOPIC=projects/"),
        ({"SWARM_DISPATCHER": "azure_queue"}, "SWARM_AZURE_QUEUE"),
        ({"SWARM_DISPATCHER": "carrier_pigeon"}, "unknown dispatcher"),
    ],
)
def test_a_misconfigured_dispatcher_says_what_to_set(monkeypatch, env, needle):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        make_dispatcher(load_blueprint())


def test_a_refused_execute_node_url_is_shown_without_its_password():
    with pytest.raises(ConfigError, match="got 'ftp://example.com/'") as err:
        HttpDispatcher("ftp://user:hunter2@example.com/")
    assert "hunter2" not in str(err.value)


def test_creating_each_dispatcher_imports_no_sdk_until_it_sends():
    probe = (
        "import os, sys\n"
        "from swarm_core.config import load_blueprint\n"
        "from swarm_core.dispatchers import make_dispatcher\n"
        "for kind, extra in [('http', {'SWARM_EXECUTE_NODE_URL': 'http://127.0.0.1:9/'}),"
        " ('cloud_tasks', {'SWARM_EXECUTE_NODE_URL': 'https://x', 'SWARM_TASKS_QUEUE': 'projects/p/locations/l/queues/q'}),"
        " ('pubsub', {'SWARM_PUBSUB_TOPIC': 'projects/p/topics/t'}), ('azure_queue', {'SWARM_AZURE_QUEUE': 'q'})]:\n"
        "    os.environ.update(SWARM_DISPATCHER=kind, **extra)\n"
        "    make_dispatcher(load_blueprint())\n"
        "print(sorted(m for m in sys.modules if m.startswith(('google.cloud.', 'azure.', 'grpc', 'google.api_core'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, env=CLEAN_ENV, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
