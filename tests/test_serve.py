"""`swarm serve` and the two functions as real functions-framework processes over real HTTP.

Every node is its own HTTP invocation; the processes keep nothing between calls, which the
restart tests prove by replacing the execute_node server while a swarm is running.
Helpers here are shared by the other serverless test files.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import CLEAN_ENV, REPO
from scripted import default_responder, task_of
from test_llm_http import http_responder

from swarm_core import serve

HOST = "127.0.0.1"


# --- helpers shared by the serverless tests ----------------------------------------------------


def free_port_pair() -> int:
    """A port P with P and P+1 both free on loopback."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port < 65000 and _free(port + 1):
            return port
    raise RuntimeError("no free port pair")


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds: TIME_WAIT is no obstacle
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def post(url: str, body, headers: dict | None = None, timeout: float = 60, method: str = "POST"):
    """(status, parsed JSON or text) of one request; never raises on an HTTP error status."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def swarm_cli(*args, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "swarm_core.cli", *args],
        capture_output=True, text=True, env={**CLEAN_ENV, **(env or {})}, cwd=REPO, timeout=timeout,
    )  # fmt: skip


def wait_status(store: str, swarm_id: str, want=("done", "failed"), timeout: float = 90) -> dict:
    """Poll `swarm status --json` (a separate process reading the store) until the swarm ends."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        proc = swarm_cli("status", swarm_id, "--json", "--store", store)
        if proc.stdout.strip():
            last = json.loads(proc.stdout)
            if last.get("status") in want:
                return last
        time.sleep(0.3)
    raise AssertionError(f"swarm {swarm_id} did not reach {want} in {timeout}s; last status: {last}")


def log_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


class FrontEnd:
    """A TCP front end on one port that forwards every connection to the current instance —
    what Cloud Run's front end does — so an instance can be replaced behind a stable URL."""

    def __init__(self, port: int):
        self.backend = 0
        self._server = socket.create_server((HOST, port), reuse_port=False)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._forward, args=(client, self.backend), daemon=True).start()

    def _forward(self, client: socket.socket, port: int) -> None:
        try:
            upstream = socket.create_connection((HOST, port), timeout=5)
        except OSError:
            client.close()  # like a front end with no instance: the dispatcher retries
            return
        upstream.settimeout(None)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)

    def close(self) -> None:
        self._server.close()


class Functions:
    """load_goal on PORT and execute_node on PORT+1, each a functions-framework process; the
    execute_node URL is a `FrontEnd`, so its instance can be restarted mid-swarm."""

    def __init__(self, tmp: Path, env: dict, port: int | None = None):
        self.tmp, self.port = tmp, port or free_port_pair()
        self.env = {**CLEAN_ENV, **env}
        self.env.setdefault("SWARM_DISPATCHER", "http")
        self.env.setdefault("SWARM_EXECUTE_NODE_URL", f"http://{HOST}:{self.port + 1}/")
        self.env.setdefault("THREADS", "64")
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.procs: dict[str, subprocess.Popen] = {}
        self.retired: list[subprocess.Popen] = []
        self.generation = 0
        self.front: FrontEnd | None = None

    @property
    def load_goal(self) -> str:
        return f"http://{HOST}:{self.port}/"

    @property
    def execute_node(self) -> str:
        return f"http://{HOST}:{self.port + 1}/"

    def log(self, target: str, generation: int = 0) -> Path:
        return self.tmp / f"{target}.{generation}.log"

    def _spawn(self, target: str, port: int, generation: int) -> subprocess.Popen:
        out = open(self.log(target, generation), "wb")
        proc = serve.spawn(target, HOST, port, self.env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        serve.wait_ready(HOST, port, proc)
        return proc

    def __enter__(self) -> Functions:
        self.front = FrontEnd(self.port + 1)
        self.procs["load_goal"] = self._spawn("load_goal", self.port, 0)
        self.front.backend = free_port_pair()
        self.procs["execute_node"] = self._spawn("execute_node", self.front.backend, 0)
        return self

    def restart_execute_node(self, sig: int = signal.SIGTERM) -> subprocess.Popen:
        """Start a fresh execute_node instance, route new requests to it, then stop the old one:
        SIGTERM lets its in-flight invocations finish (Cloud Run scaling in), SIGKILL loses them.
        Returns the old process."""
        assert self.front is not None
        old = self.procs["execute_node"]
        if sig == signal.SIGKILL:
            os.killpg(old.pid, signal.SIGKILL)  # the arbiter and its worker: nothing drains
            old.wait(10)
        self.generation += 1
        port = free_port_pair()
        self.procs["execute_node"] = self._spawn("execute_node", port, self.generation)
        self.front.backend = port
        if sig != signal.SIGKILL:
            old.send_signal(sig)
        self.retired.append(old)
        return old

    def __exit__(self, *exc) -> None:
        everything = [*self.procs.values(), *self.retired]
        for proc in everything:
            if proc.poll() is None:
                proc.terminate()
        for proc in everything:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.front:
            self.front.close()

    def invocations(self, generation: int, target: str = "execute_node") -> list[dict]:
        return [x for x in log_lines(self.log(target, generation)) if x.get("entrypoint") == target]


def slow_writers(stub, parts: int, delay_s: float):
    """The scripted swarm: a plan of `parts` subtasks, each written in `delay_s`."""
    script = http_responder(default_responder(subtasks=[f"part {i}" for i in range(parts)]))

    def respond(req):
        reply = script(req)
        if req["response_format"]["json_schema"]["name"] == "write_text":
            reply.delay_s = delay_s
        return reply

    stub.responder = respond


def schema_counts(stub) -> dict[str, int]:
    counts: dict[str, int] = {}
    for req in stub.requests:
        name = req["response_format"]["json_schema"]["name"]
        counts[name] = counts.get(name, 0) + 1
    return counts


# --- tests ---------------------------------------------------------------------------------------


def test_swarm_over_http_survives_an_execute_node_restart(stub, tmp_path):
    slow_writers(stub, parts=6, delay_s=1.0)
    store = f"file://{tmp_path / 'store'}"
    with Functions(tmp_path, {"SWARM_STORE": store, "OPENAI_BASE_URL": stub.base_url}) as fns:
        status, body = post(fns.load_goal, {"goal": "Write six parts"})
        assert status == 202 and set(body) == {"swarm_id", "root_node_id"}, body
        sid = body["swarm_id"]
        deadline = time.time() + 30
        while schema_counts(stub).get("write_text", 0) < 6:  # every child is running in the first process
            assert time.time() < deadline, f"children never started: {schema_counts(stub)}"
            time.sleep(0.05)
        old = fns.restart_execute_node(signal.SIGTERM)
        final = wait_status(store, sid)
        assert old.wait(30) == 0  # it drained its in-flight nodes and exited cleanly
    assert final["status"] == "done", final
    assert final["nodes"] == 8 and final["by_status"] == {"done": 8}  # root, 6 parts, supervisor
    assert schema_counts(stub) == {"break_down_goal": 1, "write_text": 6, "supervise": 1}  # each action ran once
    first, second = fns.invocations(0), fns.invocations(1)
    assert {x["node_id"] for x in first} >= {f"root.0.{i}" for i in range(6)}
    assert {(x["node_id"], x["round"]) for x in second} >= {("root", 1), ("root.1.0", 0), ("root", 2)}  # a fresh process went on
    ran = [(x["node_id"], x["round"]) for x in first + second if x.get("llm_calls")]
    assert len(ran) == len(set(ran))  # no node and round made its LLM calls in both processes


def test_sigkill_of_execute_node_mid_swarm_then_resume_finishes(stub, tmp_path):
    slow_writers(stub, parts=4, delay_s=1.5)
    store = f"file://{tmp_path / 'store'}"
    env = {"SWARM_STORE": store, "OPENAI_BASE_URL": stub.base_url}
    with Functions(tmp_path, env) as fns:
        status, body = post(fns.load_goal, {"goal": "Write four parts"})
        assert status == 202
        sid = body["swarm_id"]
        deadline = time.time() + 30
        while schema_counts(stub).get("write_text", 0) < 4:
            assert time.time() < deadline, "children never started"
            time.sleep(0.05)
        fns.restart_execute_node(signal.SIGKILL)  # the four running invocations are lost
        time.sleep(2.5)
        stuck = json.loads(swarm_cli("status", sid, "--json", "--store", store).stdout)
        assert stuck["status"] == "running" and stuck["by_status"].get("running") == 4, stuck
        resumed = swarm_cli("resume", sid, "--json", "--store", store, env={**env, "SWARM_DISPATCHER": "http", "SWARM_EXECUTE_NODE_URL": fns.execute_node})
        assert resumed.returncode == 0 and json.loads(resumed.stdout)["status"] == "done", resumed.stderr  # it followed the swarm to its end
        final = wait_status(store, sid)
    assert final["status"] == "done" and final["by_status"] == {"done": 6}, final
    assert schema_counts(stub)["write_text"] == 8  # at-least-once: the four killed runs ran again, nothing more
    assert schema_counts(stub)["supervise"] == 1 and schema_counts(stub)["break_down_goal"] == 1


def test_swarm_run_through_a_remote_dispatcher_follows_the_swarm_to_its_end(stub, tmp_path):
    """The nodes run in the functions, not in `swarm run`: it hands the root over, then follows
    the store until the swarm ends, and exits as for a local run."""
    slow_writers(stub, parts=2, delay_s=1.0)
    store = f"file://{tmp_path / 'store'}"
    env = {"SWARM_STORE": store, "OPENAI_BASE_URL": stub.base_url}
    with Functions(tmp_path, env) as fns:
        run = swarm_cli("run", "Write two parts", "--json", env={**env, "SWARM_DISPATCHER": "http", "SWARM_EXECUTE_NODE_URL": fns.execute_node})
        ran_here = fns.invocations(0)
        # Ctrl-C stops following, not the swarm: it ends in the functions all the same.
        stub.requests.clear()
        watcher = subprocess.Popen(
            [sys.executable, "-m", "swarm_core.cli", "run", "Write two more parts", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            env={**CLEAN_ENV, **env, "SWARM_DISPATCHER": "http", "SWARM_EXECUTE_NODE_URL": fns.execute_node},
        )  # fmt: skip
        deadline = time.time() + 30
        while schema_counts(stub).get("write_text", 0) < 2:
            assert time.time() < deadline, f"children never started: {schema_counts(stub)}"
            time.sleep(0.05)
        watcher.send_signal(signal.SIGINT)
        stdout, _ = watcher.communicate(timeout=60)
        stopped = json.loads(stdout)
        final = wait_status(store, stopped["swarm_id"])
    out = json.loads(run.stdout)
    assert run.returncode == 0 and out["status"] == "done" and len(out["nodes"]) == 4, (run.returncode, run.stderr)
    assert {x["node_id"] for x in ran_here} >= {"root", "root.0.0", "root.0.1", "root.1.0"}  # every node ran in the function
    assert watcher.returncode == 130 and "it goes on where its nodes run" in stopped["error"], stopped
    assert final["status"] == "done" and final["nodes"] == 4, final


def test_swarm_serve_prints_both_urls_runs_a_goal_and_stops_both(stub, tmp_path):
    stub.responder = http_responder(default_responder(subtasks=("a", "b")))
    store = f"file://{tmp_path / 'store'}"
    port = free_port_pair()
    env = {**CLEAN_ENV, "OPENAI_BASE_URL": stub.base_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarm_core.serve", "--port", str(port), "--store", store, "--json"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        info = json.loads(proc.stdout.readline())
        assert info["load_goal"] == f"http://127.0.0.1:{port}/" and info["execute_node"] == f"http://127.0.0.1:{port + 1}/"
        assert info["store"] == store and info["dispatcher"] == "http"
        status, body = post(info["load_goal"], {"goal": "Write two things"})
        assert status == 202, body
        final = wait_status(store, body["swarm_id"])
        assert final["status"] == "done" and final["nodes"] == 4
        tree = json.loads(swarm_cli("tree", body["swarm_id"], "--json", "--store", store).stdout)
        assert {n["node_id"] for n in tree["nodes"]} == {"root", "root.0.0", "root.0.1", "root.1.0"}
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    for pid in info["pids"]:  # both functions stopped with it
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert _free(port) and _free(port + 1)


def test_swarm_serve_without_a_model_says_only_the_demo_goal_runs(tmp_path):
    """Else the README's curl answers only `misconfigured deployment, incident …` for any other goal."""
    port = free_port_pair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarm_core.serve", "--port", str(port), "--store", f"file://{tmp_path}", "--json"],
        env=CLEAN_ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert json.loads(proc.stdout.readline())["dispatcher"] == "http"  # started
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert stderr.startswith("swarm serve: no LLM configured: only the recorded demo goal runs; set OPENAI_API_KEY"), stderr


def test_swarm_serve_refuses_a_memory_store(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "swarm_core.serve", "--store", "memory://x"],
        env=CLEAN_ENV, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "not memory://" in proc.stderr


def test_swarm_serve_refuses_a_port_in_use_before_starting_anything(tmp_path):
    port = free_port_pair()
    with socket.create_server((HOST, port + 1)):  # another server on execute_node's port: it would answer for ours
        proc = swarm_cli("serve", "--port", str(port), "--store", f"file://{tmp_path}", "--json", timeout=60)
    assert proc.returncode == 2, proc.stderr
    error = json.loads(proc.stdout)
    assert error["exit_code"] == 2 and f"cannot serve on {HOST} port {port + 1}: Address already in use" in error["error"]
    assert proc.stderr.strip() == f"swarm: error: {error['error']}"
    assert _free(port)  # nothing was started on the free one


@pytest.mark.parametrize(("args", "needle"), [
    (["--port", "65535"], "argument --port: wants a port from 1 to 65534 (execute_node takes PORT+1), got '65535'"),
    (["--port", "0"], "argument --port: wants a port from 1 to 65534"),
    (["--threads", "1"], "argument --threads: wants at least 2 threads"),  # gunicorn took 0, 1 or -1: a wedged execute_node
    (["--threads", "-4"], "argument --threads: wants at least 2 threads"),
    (["--js"], "unrecognized arguments: --js"),  # no abbreviations, as in every other command
])
def test_swarm_serve_refuses_bad_arguments_before_starting_anything(args, needle):
    proc = swarm_cli("serve", *args, "--store", "memory://x", timeout=60)  # memory://: serve refuses it, were an argument let through
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr


def test_execute_node_answers_synchronously_without_prefer_and_redelivery_changes_nothing(stub, tmp_path):
    stub.responder = http_responder(default_responder(subtasks=("a", "b")))
    store_dir = tmp_path / "store"
    store = f"file://{store_dir}"
    with Functions(tmp_path, {"SWARM_STORE": store, "OPENAI_BASE_URL": stub.base_url}) as fns:
        status, body = post(fns.load_goal, {"goal": "Write two things"})
        sid = body["swarm_id"]
        assert wait_status(store, sid)["status"] == "done"
        calls = len(stub.requests)
        def contents():
            return {p.relative_to(store_dir): p.read_bytes() for p in store_dir.rglob("*") if p.is_file()}

        before = contents()
        tree = json.loads(swarm_cli("tree", sid, "--json", "--store", store).stdout)["nodes"]
        for node in tree:  # each node's last invocation (the root's is round 2), delivered once more
            for rnd in sorted({0, node["round"]}):
                bp = {"node_id": node["node_id"], "parent_id": node["parent_id"], "action": node["action"], "input": {"task": node["task"]}, "depth": node["depth"], "round": rnd}
                status, reply = post(fns.execute_node, {"swarm_id": sid, "node": bp})
                assert status == 200 and reply == {"swarm_id": sid, "node_id": node["node_id"], "status": "done"}, reply
    assert max(n["round"] for n in tree) == 2  # the root's resumes were among the re-deliveries
    assert len(stub.requests) == calls
    assert contents() == before  # not one byte written


def test_swarm_answer_through_a_remote_dispatcher_follows_the_answered_branch(stub, tmp_path):
    """`swarm run` and `swarm answer` hand nodes to the functions and follow the store: `run` until
    every branch left asks (exit 3); `answer` must not stop at once because the node, answered
    but not picked up yet, still reads `waiting_user`."""

    def respond(messages, schema_name, schema, key):
        if schema_name == "write_text" and "The user answered" not in messages[-1]["content"]:
            return {"report": "", "question": f"Which colour for {task_of(messages)}?"}
        return default_responder(subtasks=("a", "b"))(messages, schema_name, schema, key)

    stub.responder = http_responder(respond)
    store = f"file://{tmp_path / 'store'}"
    with Functions(tmp_path, {"SWARM_STORE": store, "OPENAI_BASE_URL": stub.base_url}) as fns:
        env = {"OPENAI_BASE_URL": stub.base_url, "SWARM_DISPATCHER": "http", "SWARM_EXECUTE_NODE_URL": fns.execute_node}
        run = swarm_cli("run", "Write a and b", "--json", "--store", store, env=env)  # followed until both branches ask
        sid = json.loads(run.stdout)["swarm_id"]
        assert run.returncode == 3 and len(json.loads(run.stdout)["waiting"]) == 2, run.stderr
        one = swarm_cli("answer", sid, "root.0.0", "blue", "--json", "--store", store, env=env)
        out = json.loads(one.stdout)
        assert one.returncode == 3 and out["waiting"] == [{"node_id": "root.0.1", "question": "Which colour for b?"}], one.stderr
        assert {n["node_id"]: n["status"] for n in out["nodes"]}["root.0.0"] == "done"  # it followed a to its end
        two = swarm_cli("answer", sid, "root.0.1", "red", "--json", "--store", store, env=env)
        assert two.returncode == 0 and json.loads(two.stdout)["status"] == "done", two.stderr


def test_a_question_is_answered_through_execute_node_over_http(stub, tmp_path):
    from scripted import asks_colour

    stub.responder = http_responder(asks_colour())
    store = f"file://{tmp_path / 'store'}"
    with Functions(tmp_path, {"SWARM_STORE": store, "OPENAI_BASE_URL": stub.base_url}) as fns:
        status, body = post(fns.load_goal, {"goal": "Write a and b"})
        sid = body["swarm_id"]
        waiting = wait_status(store, sid, want=("waiting_user",))
        assert waiting["waiting"] == [{"node_id": "root.0.1", "question": "Which colour?"}]
        status, reply = post(fns.execute_node, {"swarm_id": sid, "node_id": "root.0.1", "answer": "blue"})
        assert status == 200 and reply["swarm_id"] == sid and reply["node_id"] == "root.0.1", reply
        final = wait_status(store, sid)
        status, again = post(fns.execute_node, {"swarm_id": sid, "node_id": "root.0.1", "answer": "red"})
        assert status == 409 and "is done, not waiting" in again["detail"]
    assert final["status"] == "done", final
    answered = [r for r in stub.requests if "The user answered" in r["messages"][-1]["content"]]
    assert len(answered) == 1 and "blue" in answered[0]["messages"][-1]["content"]
    tree = json.loads(swarm_cli("tree", sid, "--json", "--store", store).stdout)["nodes"]
    assert {n["node_id"]: n["report"] for n in tree}["root.0.1"] == "did b in blue"
