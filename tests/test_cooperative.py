"""The `greenlets` runner of the local dispatcher: every node a greenlet on one asyncio loop,
every blocking call on a node's path made off that loop (swarm_core/cooperative.py)."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import uuid
from typing import ClassVar

import pytest
import test_lifecycle
from conftest import FANOUT, REPO, make_engine, run_goal
from scripted import default_responder
from stub_openai import Reply
from test_cli import DEMO_GOAL, swarm
from test_llm_http import http_responder, schema_name_of

from backends.memory import MemoryStore
from swarm_core import cooperative
from swarm_core.config import ConfigError, load_blueprint
from swarm_core.dispatch import CooperativeDispatcher, LocalDispatcher
from swarm_core.dispatchers import make_dispatcher
from swarm_core.engine import Engine
from swarm_core.llm import OpenAITransport
from swarm_core.models import NodeBlueprint
from swarm_core.sandbox import call_function
from swarm_core.store import OffloadedStore


def until(condition, what: str, timeout: float = 60.0):
    """Poll `condition` until it returns something true; fail naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)
    return found


def test_a_wide_fan_out_holds_no_thread_per_pending_call_and_resumes_the_parent_once(tmp_path):
    n = 200
    dispatcher = CooperativeDispatcher(256)
    engine = make_engine(default_responder(subtasks=[f"part {i}" for i in range(n)]), store=f"file://{tmp_path}",
                         blueprint=FANOUT, dispatcher=dispatcher, delay_s=2.5, budgets={"max_nodes": n + 10})
    threads_before = threading.active_count()
    sid, _ = engine.load_goal("Fan out wide")

    def all_leaves_pending():
        leaves = [r.status for r in engine.nodes(sid) if r.blueprint.parent_id == "root" and r.blueprint.action == "write_text"]
        assert "done" not in leaves, "a leaf finished before every leaf's call was pending: the calls ran one at a time"
        return len(leaves) == n and set(leaves) == {"running"} and threading.active_count()

    # All 200 scripted calls are waiting out their delay at once, on the loop's one thread.
    assert until(all_leaves_pending, "200 leaves running at once") - threads_before <= 2  # the loop, and no pool thread
    assert dispatcher.wait(60) and not dispatcher.errors
    assert engine.status(sid)["status"] == "done" and engine.status(sid)["nodes"] == n + 2
    assert [e.round for e in engine.events(sid) if e.kind == "resumed"] == [1, 2]  # once after the leaves, once after the supervisor
    assert len(engine.read_join(sid, "root", 0)) == n
    assert engine.counters(sid)[0].llm_calls == n + 2
    dispatcher.close()


def _greenlet_engine(stub, concurrency: int = 16, max_retries: int = 0) -> Engine:
    bp = load_blueprint()
    bp.stores.state = f"memory://{uuid.uuid4().hex}"
    bp.llm = bp.llm.model_copy(update={"base_url": stub.base_url, "model": "stub-model", "max_retries": max_retries})
    return Engine(bp, transport=OpenAITransport(bp.llm), dispatcher=CooperativeDispatcher(concurrency))


def test_the_openai_sdk_over_http_is_awaited_on_the_loop_with_no_thread_per_pending_call(stub):
    leaves = 8
    script = http_responder(default_responder(subtasks=[f"part {i}" for i in range(leaves)]))
    together = threading.Barrier(leaves, timeout=30)  # passes only with every leaf's call in flight at once

    def respond(req):
        if schema_name_of(req)[0] == "write_text":
            together.wait()  # the stub's handler thread: a broken barrier fails the call (HTTP 500)
        return script(req)

    stub.responder = respond
    engine = _greenlet_engine(stub)
    sid = run_goal(engine)
    assert engine.status(sid)["status"] == "done" and not engine.dispatcher.errors
    assert len(stub.requests) == leaves + 2  # plan, the leaves, supervisor
    assert not engine.dispatcher._pool._threads  # no call ever went to a pool thread: all were awaited on the loop
    engine.dispatcher.close()


def test_the_first_import_of_the_openai_sdk_is_made_off_the_loop():
    """A fresh process: the SDK's import (about half a second) must not stall every node on the
    loop, nor set off the runner's "kept the loop" warning against the node that made it."""
    script = textwrap.dedent(
        """
        import json, sys, threading, uuid
        sys.path.insert(0, "tests")
        where = []

        class Spy:  # notes the thread that imports the SDK, imports nothing itself
            def find_spec(self, name, path=None, target=None):
                if name == "openai":
                    where.append(threading.current_thread().name)

        sys.meta_path.insert(0, Spy())
        from scripted import default_responder
        from stub_openai import Reply, StubOpenAI
        from swarm_core.config import load_blueprint
        from swarm_core.dispatch import CooperativeDispatcher
        from swarm_core.engine import Engine

        script = default_responder(subtasks=["a", "b"])
        def respond(req):
            form = req["response_format"]["json_schema"]
            return Reply(content=json.dumps(script(req["messages"], form["name"], form["schema"], "")))

        with StubOpenAI(respond) as stub:
            bp = load_blueprint()
            bp.stores.state = f"memory://{uuid.uuid4().hex}"
            bp.llm = bp.llm.model_copy(update={"base_url": stub.base_url, "model": "stub-model"})
            engine = Engine(bp, dispatcher=CooperativeDispatcher(4))
            assert "openai" not in sys.modules
            sid, _ = engine.load_goal("Do two things")
            assert engine.dispatcher.wait(60)
            print(json.dumps({"status": engine.status(sid)["status"], "where": where, "loop": engine.dispatcher._loop_thread.name}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "done" and out["where"] and out["loop"] not in out["where"], out


def test_an_http_error_on_the_loop_fails_the_node_naming_the_server(stub):
    stub.responder = lambda req: Reply(status=401, content="bad key")
    engine = _greenlet_engine(stub)
    sid = run_goal(engine)
    status = engine.status(sid)
    assert status["status"] == "failed" and f"LLM server {stub.base_url}" in status["error"] and "HTTP 401" in status["error"]
    engine.dispatcher.close()


def test_the_retry_waits_on_the_loop_hold_no_node_back(stub):
    leaves, seen = 6, set()
    script = http_responder(default_responder(subtasks=[f"part {i}" for i in range(leaves)]))

    def respond(req):
        first = json.dumps(req["messages"]) not in seen
        seen.add(json.dumps(req["messages"]))
        if schema_name_of(req)[0] == "write_text" and first:
            return Reply(status=429, headers={"retry-after": "1.5"})
        return script(req)

    stub.responder = respond
    engine = _greenlet_engine(stub, max_retries=1)
    started = time.monotonic()
    sid = run_goal(engine)
    assert engine.status(sid)["status"] == "done" and len(stub.requests) == 2 * leaves + 2
    assert time.monotonic() - started < leaves * 1.5 / 2  # the leaves waited out their 1.5 s together, not in turn
    assert not engine.dispatcher._pool._threads
    engine.dispatcher.close()


class ScriptedEngine:
    """Stands in for the engine: `execute_node` runs the function the test gave for that node."""

    def __init__(self, **nodes):
        self.nodes = nodes

    def execute_node(self, swarm_id, bp):
        return self.nodes[bp.node_id]()


def node(node_id: str) -> NodeBlueprint:
    return NodeBlueprint(node_id=node_id, action="write_text")


def test_stop_drops_queued_nodes_ignores_new_ones_and_lets_the_running_one_finish():
    started, release = [], threading.Event()

    def slow():
        started.append(threading.current_thread().name)
        cooperative.blocking(release.wait, 10)  # a node waiting on a blocking call, off the loop

    d = CooperativeDispatcher(1)
    d.bind(ScriptedEngine(**{f"root.0.{i}": slow for i in range(4)}))
    for i in range(3):
        d.dispatch("sw", node(f"root.0.{i}"))
    until(lambda: started, "the first node started")
    assert not d.wait(0.2) and d.busy and started == ["swarm-loop"]
    assert d.stop() == 1  # root.0.1 and root.0.2 were queued: dropped
    d.dispatch("sw", node("root.0.3"))
    release.set()
    assert d.wait(10) and started == ["swarm-loop"] and not d.errors and not d.busy
    d.close()


def test_an_exception_in_a_node_is_recorded_wherever_it_was_raised():
    def after_a_sleep():
        cooperative.sleep(0.01)
        raise ValueError("late")

    def in_a_blocking_call():
        def fails():
            raise OSError(f"on {threading.current_thread().name}")

        cooperative.blocking(fails)

    def at_once():
        raise RuntimeError("boom")

    d = CooperativeDispatcher(4)
    d.bind(ScriptedEngine(a=at_once, b=after_a_sleep, c=in_a_blocking_call, d=lambda: None))
    for node_id in "abcd":
        d.dispatch("sw", node(node_id))
    assert d.wait(10)
    assert sorted(d.errors) == ["sw a: RuntimeError: boom", "sw b: ValueError: late", "sw c: OSError: on swarm-node_0"]
    d.close()


def test_what_asyncio_cannot_carry_or_would_let_end_the_loop_is_recorded_and_the_loop_goes_on():
    seen = []

    def no_match():  # asyncio cannot put a StopIteration in a future: the node used to hang
        cooperative.blocking(lambda: next(iter([])))

    def exits():  # a handler's SystemExit used to end the loop thread, stranding every node
        raise SystemExit("bye")

    def deep():
        raise KeyError("deep down")

    def keeps_frames():
        try:
            cooperative.blocking(deep)
        except KeyError as exc:
            seen.extend(frame.name for frame in traceback.extract_tb(exc.__traceback__))

    d = CooperativeDispatcher(4)
    d.bind(ScriptedEngine(a=no_match, b=exits, c=keeps_frames, d=lambda: None))
    for node_id in "ab":
        d.dispatch("sw", node(node_id))
    assert d.wait(10), "a node never finished"
    for node_id in "cd":  # the loop still runs nodes
        d.dispatch("sw", node(node_id))
    assert d.wait(10) and sorted(d.errors) == ["sw a: StopIteration: ", "sw b: SystemExit: bye"]
    assert "deep" in seen  # the frames of the pool thread where it was raised
    d.close()


def test_a_node_that_blocks_the_loop_is_named_in_a_warning(caplog, monkeypatch):
    monkeypatch.setattr(cooperative, "HOLD_WARNING_S", 0.2)

    def blocks():
        time.sleep(0.3)  # not through cooperative.blocking: every other node waits

    def yields():
        cooperative.sleep(0.3)

    d = CooperativeDispatcher(4)
    d.bind(ScriptedEngine(a=blocks, b=yields))
    for node_id in "ab":
        d.dispatch("sw", node(node_id))
    assert d.wait(10) and not d.errors
    warned = [r.getMessage() for r in caplog.records if "without yielding" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("sw a kept the greenlet runner's loop for 0.3 s"), warned
    d.close()


def test_a_wide_fan_out_gives_the_loop_back_as_it_writes():
    # A manager writing its children's records in one go keeps every other node on the greenlet
    # runner's loop waiting: 1000 of them on this VM's disk took over a second and set off the
    # hold warning. Between blocks of 32 records the loop must run something else: a ticker
    # task on the same loop counts the turns it gets, and each record notes the count.
    ticks, seen, stop = [0], [], threading.Event()

    class Watched(MemoryStore):
        def create(self, key, data):
            if "/nodes/root.0." in key:  # a leaf's record, written by the root's fan-out
                seen.append(ticks[0])
            return super().create(key, data)

    async def ticker():
        while not stop.is_set():
            ticks[0] += 1
            await asyncio.sleep(0)

    n = 200
    d = CooperativeDispatcher(256)
    engine = make_engine(default_responder(subtasks=[f"part {i}" for i in range(n)]), blueprint=FANOUT,
                         dispatcher=d, budgets={"max_nodes": n + 10})
    engine.state = engine.stores.state = Watched(f"watched-{uuid.uuid4().hex}")
    ticking = asyncio.run_coroutine_threadsafe(ticker(), d._start_loop())
    sid = run_goal(engine)
    stop.set()
    ticking.result(10)
    assert engine.status(sid)["status"] == "done" and not d.errors
    assert len(seen) == n and len(set(seen)) >= n // 32, f"the loop ran nothing else during the fan-out: {sorted(set(seen))}"
    d.close()


def test_threads_that_run_no_node_loop_never_touch_greenlet(monkeypatch):
    # Only a node loop's thread asks greenlet where it is: pool threads, the main thread and the
    # threads runner get no greenlet state to tear down when they end.
    loop_threads = set()

    def getcurrent():
        assert threading.get_ident() in cooperative._LOOP_THREADS, threading.current_thread().name
        loop_threads.add(threading.current_thread().name)
        return real()

    real = cooperative.getcurrent
    monkeypatch.setattr(cooperative, "getcurrent", getcurrent)
    responder = default_responder(subtasks=("a", "b"))
    for dispatcher in (LocalDispatcher(4), CooperativeDispatcher(4)):
        engine = make_engine(responder, dispatcher=dispatcher, delay_s=0.01)
        assert engine.status(run_goal(engine))["status"] == "done" and not dispatcher.errors
        cooperative.blocking(lambda: None)  # the main thread too
        dispatcher.close()
    assert loop_threads == {"swarm-loop"}


def test_close_closes_the_loops_http_clients(stub):
    stub.responder = http_responder(default_responder(subtasks=("a",)))
    engine = _greenlet_engine(stub)
    run_goal(engine)
    clients = list(cooperative._PER_LOOP[engine.dispatcher._loop].values())
    assert clients and not any(c.is_closed() for c in clients)
    engine.dispatcher.close()
    assert all(c.is_closed() for c in clients)  # a keep-alive connection would hold the loop and its socket


def test_the_server_is_chosen_once_for_both_runners(stub, monkeypatch):
    stub.responder = http_responder(default_responder(subtasks=("a",)))
    engine = _greenlet_engine(stub)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # after the transport was made
    sid = run_goal(engine)
    assert engine.status(sid)["status"] == "done" and len(stub.requests) == 3
    engine.dispatcher.close()


def test_a_sandbox_run_does_not_stall_the_other_nodes():
    order, d = [], CooperativeDispatcher(4)

    def runs_code():
        d.dispatch("sw", node("quick"))  # ready to run before this node reaches the sandbox
        order.append("sandbox starts")
        out = call_function("def f(x):\n    return x * 2\n", "f", {"x": 21})
        order.append(f"sandbox returned {out.value}")

    d.bind(ScriptedEngine(slow=runs_code, quick=lambda: order.append("the other node ran")))
    d.dispatch("sw", node("slow"))
    assert d.wait(60) and not d.errors
    assert order == ["sandbox starts", "the other node ran", "sandbox returned 42"]
    d.close()


class FarStore(MemoryStore):
    """A memory store that says it does network I/O, like a cloud adapter, and notes the thread of each call."""

    inline = False
    threads: ClassVar[list[str]] = []

    def _noted(self, call, *args):
        self.threads.append(threading.current_thread().name)
        return call(*args)

    def read_versioned(self, key):
        return self._noted(super().read_versioned, key)

    def create(self, key, data):
        return self._noted(super().create, key, data)

    def swap(self, key, data, expected_version):
        return self._noted(super().swap, key, data, expected_version)

    def list(self, prefix):
        return self._noted(super().list, prefix)


def test_a_store_that_is_not_inline_is_called_off_the_loop():
    FarStore.threads.clear()
    engine = make_engine(default_responder(subtasks=("a", "b", "c")), store=f"{__name__}:FarStore?{uuid.uuid4().hex}",
                         dispatcher=CooperativeDispatcher(8))
    assert isinstance(engine.state, OffloadedStore) and isinstance(engine.state.inner, FarStore)
    sid = run_goal(engine)
    assert engine.status(sid)["status"] == "done" and not engine.dispatcher.errors
    nodes = [name for name in FarStore.threads if name != "MainThread"]  # load_goal's and status's own calls
    assert len(nodes) > 5 * 13 and all(name.startswith("swarm-node") for name in nodes), set(nodes)


# --- configuration -----------------------------------------------------------------


def test_the_runner_is_chosen_by_the_blueprint_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SWARM_DISPATCHER_RUNNER", raising=False)  # a SWARM_TEST_RUNNER pass sets it
    assert type(make_dispatcher(load_blueprint())) is LocalDispatcher  # threads stay the default
    file = tmp_path / "blueprint.toml"
    file.write_text(f'action_dirs = ["{REPO}/blueprints/default/actions"]\n[dispatcher]\nrunner = "greenlets"\n')
    assert type(make_dispatcher(load_blueprint(file))) is CooperativeDispatcher
    monkeypatch.setenv("SWARM_DISPATCHER_RUNNER", "threads")
    assert type(make_dispatcher(load_blueprint(file))) is LocalDispatcher
    monkeypatch.setenv("SWARM_DISPATCHER_RUNNER", "greenlets")
    bp = load_blueprint()
    bp.stores.state = f"memory://{uuid.uuid4().hex}"
    assert type(make_dispatcher(bp)) is CooperativeDispatcher
    assert type(Engine(bp).dispatcher) is CooperativeDispatcher  # an Engine built without a dispatcher too


@pytest.mark.parametrize(
    "env, blueprint",
    [  # a local runner from one place under a remote kind from another: not used, not refused
        ({"SWARM_DISPATCHER": "http", "SWARM_EXECUTE_NODE_URL": "http://127.0.0.1:9/"}, '[dispatcher]\nrunner = "greenlets"\n'),
        ({"SWARM_DISPATCHER_RUNNER": "greenlets"}, '[dispatcher]\nkind = "http"\nurl = "http://127.0.0.1:9/"\n'),
    ],
)
def test_a_runner_under_a_remote_kind_from_elsewhere_is_not_used(tmp_path, monkeypatch, env, blueprint):
    monkeypatch.delenv("SWARM_DISPATCHER_RUNNER", raising=False)  # a SWARM_TEST_RUNNER pass sets it
    from swarm_core.dispatchers import HttpDispatcher

    file = tmp_path / "blueprint.toml"
    file.write_text(f'action_dirs = ["{REPO}/blueprints/default/actions"]\n{blueprint}')
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert type(make_dispatcher(load_blueprint(file))) is HttpDispatcher


def test_swarm_serve_does_not_pass_the_local_runner_to_its_functions(monkeypatch):
    from swarm_core.serve import function_env

    monkeypatch.setenv("SWARM_DISPATCHER_RUNNER", "greenlets")
    env = function_env("127.0.0.1", 8080, store="file:///tmp/x")
    assert env["SWARM_DISPATCHER"] == "http" and "SWARM_DISPATCHER_RUNNER" not in env


@pytest.mark.parametrize(
    "env, blueprint, needle",
    [
        ({"SWARM_DISPATCHER_RUNNER": "fibres"}, "", "blueprint setting dispatcher.runner from SWARM_DISPATCHER_RUNNER: Input should be 'threads' or 'greenlets'"),
        ({}, '[dispatcher]\nrunner = "fibres"\n', "blueprint setting dispatcher.runner from {file}: Input should be 'threads' or 'greenlets'"),
        ({"SWARM_DISPATCHER_RUNNER": "greenlets", "SWARM_DISPATCHER": "http", "SWARM_EXECUTE_NODE_URL": "http://127.0.0.1:9/"}, "",
         "[dispatcher] runner (from SWARM_DISPATCHER_RUNNER) is a setting of kind \"local\" only; this dispatcher is 'http'"),
        ({}, '[dispatcher]\nkind = "http"\nurl = "http://127.0.0.1:9/"\nrunner = "threads"\n',
         "[dispatcher] runner (from the blueprint) is a setting of kind \"local\" only; this dispatcher is 'http'"),
    ],
)
def test_a_wrong_runner_is_one_line_naming_its_source(tmp_path, monkeypatch, env, blueprint, needle):
    monkeypatch.delenv("SWARM_DISPATCHER_RUNNER", raising=False)  # a SWARM_TEST_RUNNER pass sets it
    file = tmp_path / "blueprint.toml"
    file.write_text(f'action_dirs = ["{REPO}/blueprints/default/actions"]\n{blueprint}')
    proc = swarm("list", "--blueprint", str(file), "--store", f"file://{tmp_path}", env={"SWARM_DISPATCHER_RUNNER": "", **env}, check=2)
    assert needle.format(file=file) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="runner"):
        make_dispatcher(load_blueprint(file))


# --- the CLI, and lifecycle tests, on greenlets --------------------------------------


def test_the_demo_runs_to_the_end_on_greenlets(tmp_path):
    store = f"file://{tmp_path}"
    out = json.loads(swarm("run", DEMO_GOAL, "--store", store, "--json", env={"SWARM_DISPATCHER_RUNNER": "greenlets"}, check=0).stdout)
    assert out["status"] == "done" and out["usage"]["llm_calls"] == 7 and "Three days in Lisbon" in out["report"]


def on_greenlets(test):
    """Run a lifecycle test with `SWARM_DISPATCHER_RUNNER=greenlets`: its engines' default dispatcher is then a
    CooperativeDispatcher (checked)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        made = []
        real = CooperativeDispatcher.__init__

        def init(self, *a, **kw):
            made.append(self)
            real(self, *a, **kw)

        os.environ["SWARM_DISPATCHER_RUNNER"] = "greenlets"
        CooperativeDispatcher.__init__ = init
        try:
            test(*args, **kwargs)
        finally:
            CooperativeDispatcher.__init__ = real
            del os.environ["SWARM_DISPATCHER_RUNNER"]
        assert made and all(d._loop_thread is not None for d in made), "no node ran on greenlets"

    return run


test_parallel_join_on_greenlets = on_greenlets(test_lifecycle.test_parallel_join_resumes_parent_once_with_every_report)
test_sequential_steps_on_greenlets = on_greenlets(test_lifecycle.test_sequential_steps_run_in_order_and_see_earlier_reports)
test_sequential_failure_on_greenlets = on_greenlets(test_lifecycle.test_sequential_failure_cancels_later_steps)
test_another_round_on_greenlets = on_greenlets(test_lifecycle.test_supervisor_not_done_plans_another_round_with_feedback)
test_budgets_on_greenlets = on_greenlets(test_lifecycle.test_budgets_fail_a_branch_and_the_swarm_still_ends)
test_ask_user_on_greenlets = on_greenlets(test_lifecycle.test_ask_user_waits_on_its_branch_while_the_rest_goes_on)
test_repairs_on_greenlets = on_greenlets(test_lifecycle.test_invalid_answer_is_repaired_then_fails_cleanly)
test_replay_on_greenlets = on_greenlets(test_lifecycle.test_replay_from_history_gives_the_same_tree_without_the_model)
