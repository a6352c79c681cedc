"""Lifecycle rules of DESIGN.md §2 with a scripted LLM on the memory store."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from conftest import make_engine, run_goal
from scripted import default_responder, scripted, task_of

from swarm_core import cooperative
from swarm_core.engine import CorruptRecord, NotWaiting, SwarmError
from swarm_core.models import Budgets, InvalidId, NodeBlueprint
from swarm_core.store import StoreError

DEFAULT_ACTIONS = Path(__file__).resolve().parent.parent / "blueprints" / "default" / "actions"


def kinds(engine, swarm_id, kind):
    return [e for e in engine.events(swarm_id) if e.kind == kind]


def test_parallel_join_resumes_parent_once_with_every_report():
    engine = make_engine(default_responder(subtasks=("a", "b", "c")))
    sid = run_goal(engine, "Write three things")
    st = engine.status(sid)
    assert st["status"] == "done" and st["report"].startswith("combined")
    nodes = {n.node_id: n for n in engine.nodes(sid)}
    assert set(nodes) == {"root", "root.0.0", "root.0.1", "root.0.2", "root.1.0"}
    assert [e.round for e in kinds(engine, sid, "resumed")] == [1, 2]  # once after workers, once after supervisor
    reports = engine.read_join(sid, "root", 0)
    assert [r.report for r in reports] == ["did a", "did b", "did c"]
    # the supervisor saw all three reports
    sup_prompt = kinds(engine, sid, "outcome")
    sup = [e for e in sup_prompt if e.node_id == "root.1.0"][0].llm_calls[0].messages[-1]["content"]
    assert all(f"did {t}" in sup for t in "abc")
    assert st["usage"]["llm_calls"] == 5
    # leaves' usage reaches the swarm's counters through their parent's resume: none lost, none twice
    counters = engine.counters(sid)[0]
    assert (counters.llm_calls, counters.prompt_tokens) == (5, st["usage"]["prompt_tokens"])


def test_children_run_concurrently():
    peak, lock = [0], threading.Lock()
    active = [0]

    def responder(messages, schema_name, schema, key):
        if schema_name == "write_text":
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            cooperative.sleep(0.2)  # time.sleep on threads; on greenlets, other nodes run meanwhile
            with lock:
                active[0] -= 1
        return default_responder(subtasks=("a", "b", "c", "d"))(messages, schema_name, schema, key)

    engine = make_engine(responder)
    run_goal(engine)
    assert peak[0] == 4


def test_sequential_steps_run_in_order_and_see_earlier_reports():
    seen = []

    def responder(messages, schema_name, schema, key):
        if schema_name == "write_text":
            seen.append((task_of(messages), messages[-1]["content"]))
        return default_responder(subtasks=("one", "two", "three"), mode="sequential")(messages, schema_name, schema, key)

    engine = make_engine(responder)
    sid = run_goal(engine)
    assert [t for t, _ in seen] == ["one", "two", "three"]
    assert "did one" not in seen[0][1]
    assert "did one" in seen[1][1] and "did two" in seen[2][1] and "did one" in seen[2][1]
    assert engine.status(sid)["status"] == "done"


def test_sequential_failure_cancels_later_steps():
    def responder(messages, schema_name, schema, key):
        if key.startswith("root.0.1/"):  # every attempt of step two
            return "not json at all"
        return default_responder(subtasks=("one", "two", "three"), mode="sequential")(messages, schema_name, schema, key)

    engine = make_engine(responder)
    sid = run_goal(engine)
    status = {n.node_id: n.status for n in engine.nodes(sid)}
    assert status["root.0.0"] == "done" and status["root.0.1"] == "failed" and status["root.0.2"] == "cancelled"
    assert engine.status(sid)["status"] == "done"  # the supervisor still decides on what was done


def test_supervisor_not_done_plans_another_round_with_feedback():
    verdicts = iter([False, True])
    plans = []

    def responder(messages, schema_name, schema, key):
        if schema_name == "supervise":
            done = next(verdicts)
            return {"done": done, "report": "final" if done else "partial", "feedback": "" if done else "add a conclusion"}
        if schema_name == "break_down_goal":
            plans.append(messages[-1]["content"])
        return default_responder()(messages, schema_name, schema, key)

    engine = make_engine(responder)
    sid = run_goal(engine)
    assert engine.status(sid)["status"] == "done" and engine.status(sid)["report"] == "final"
    assert len(plans) == 2 and "add a conclusion" in plans[1] and "did first part" in plans[1]
    ids = {n.node_id for n in engine.nodes(sid)}
    assert {"root.2.0", "root.2.1", "root.3.0"} <= ids  # round-2 workers and second supervisor


def test_max_rounds_fails_the_branch_naming_the_budget():
    engine = make_engine(default_responder(done=False), budgets={"max_rounds": 2})
    sid = run_goal(engine)
    st = engine.status(sid)
    assert st["status"] == "failed" and "budget max_rounds=2" in st["error"]


@pytest.mark.parametrize(
    "budgets, needle",
    [
        ({"max_nodes": 3}, "budget max_nodes=3"),
        ({"max_llm_calls": 2}, "budget max_llm_calls=2"),
        ({"max_tokens": 50}, "budget max_tokens=50"),
    ],
)
def test_budgets_fail_a_branch_and_the_swarm_still_ends(budgets, needle):
    engine = make_engine(default_responder(subtasks=("a", "b", "c")), budgets=budgets)
    sid = run_goal(engine)
    st = engine.status(sid)
    errors = " ".join(n.error or "" for n in engine.nodes(sid)) + (st["error"] or "")
    assert needle in errors
    assert st["status"] in ("done", "failed")
    assert not engine.dispatcher.errors


def test_the_deepest_tree_max_depth_allows_has_valid_node_ids():
    # Every manager's subtask goes through the router to another manager: 4 id segments a level.
    def responder(messages, schema_name, schema, key):
        if schema_name == "route":
            enum = schema["properties"]["choice"]["enum"]
            return {"choice": next(a for a in ("break_down_goal", "writing", "write_text", *enum) if a in enum), "reason": "deeper"}
        return default_responder(subtasks=("x",), action="not_an_action")(messages, schema_name, schema, key)

    deepest = Budgets.model_fields["max_depth"].metadata[-1].le
    engine = make_engine(responder, budgets={"max_depth": deepest, "max_nodes": 1000, "max_llm_calls": 1000})
    sid = run_goal(engine, timeout=120)
    nodes = engine.nodes(sid)
    assert max(n.blueprint.depth for n in nodes) == deepest - 1  # a manager delegates while depth + 1 < max_depth
    assert not [n.error for n in nodes if n.error and "budget" not in n.error]


def test_max_tokens_counts_the_earlier_steps_before_a_step_spawns():
    # Step two goes through the router, which spawns: the tokens step one used are not in the
    # counters until the manager resumes, so the spawn must count them itself.
    def responder(messages, schema_name, schema, key):
        if schema_name == "break_down_goal":
            plan = [{"task": "a " * 200, "action": "write_text"}, {"task": "b", "action": "not_an_action"}]
            return {"subtasks": plan, "mode": "sequential", "question": None}
        return default_responder()(messages, schema_name, schema, key)

    engine = make_engine(responder)
    sid = run_goal(engine)
    used = {n.node_id: n.usage.tokens for n in engine.nodes(sid)}
    limit = used["root"] + used["root.0.0"] + used["root.0.1"]  # all spent by the time the router spawns
    engine = make_engine(responder, budgets={"max_tokens": limit})
    sid = run_goal(engine)
    nodes = {n.node_id: n for n in engine.nodes(sid)}
    assert "root.0.1.0.0" not in nodes, "a call was made after max_tokens was used up"
    assert f"budget max_tokens={limit} reached" in nodes["root.0.1"].error


def test_the_shipped_demo_recording_keeps_the_budgets():
    from swarm_core.config import load_blueprint
    from swarm_core.engine import Engine

    bp = load_blueprint(None)
    bp.stores.state = f"memory://{uuid.uuid4().hex}"
    recording = bp.root / "recordings" / "lisbon.json"
    goal = json.loads(recording.read_text())["goal"]
    engine = Engine(bp)
    sid = run_goal(engine, goal, llm_source=f"recording:{recording}", budgets={"max_nodes": 2})
    st = engine.status(sid)
    assert st["status"] == "failed" and "budget max_nodes=2 exceeded" in st["error"] and st["nodes"] == 1


def test_max_llm_calls_holds_across_siblings_that_cannot_see_each_other():
    # 8 sequential steps each make one call: only one is ever in flight, and before reservations
    # each step saw only the plan's call in the counters, so max_llm_calls=2 ended with 9 calls.
    engine = make_engine(default_responder(subtasks=[f"s{i}" for i in range(8)], mode="sequential"), budgets={"max_llm_calls": 2})
    sid = run_goal(engine)
    st = engine.status(sid)
    assert st["usage"]["llm_calls"] == 1 and st["status"] == "failed"
    assert "budget max_llm_calls=2 exceeded: 1 calls made or reserved, 8 more children" in st["error"]
    # room for the plan and the 8 steps, not for the supervisor: exactly the budget is spent
    engine = make_engine(default_responder(subtasks=[f"s{i}" for i in range(8)], mode="sequential"), budgets={"max_llm_calls": 9})
    sid = run_goal(engine)
    st = engine.status(sid)
    assert st["usage"]["llm_calls"] == 9 and "budget max_llm_calls=9 exceeded" in st["error"]
    assert [n.status for n in engine.nodes(sid) if n.node_id.startswith("root.0.")] == ["done"] * 8


def test_max_llm_calls_holds_for_parallel_siblings_calls_beyond_the_first():
    # Each of 4 parallel leaves needs a repair: 2 calls. The spawn reserved one call per leaf;
    # a call beyond a node's reservation is reserved in the counters before it is made, so
    # with room for 7 calls (plan + 4 + 2) only two leaves get their repair. Before, each leaf
    # saw only the spawn's reservations and all four repaired: 9 calls against a budget of 7.
    def responder(messages, schema_name, schema, key):
        if schema_name == "write_text" and key.endswith("/0"):
            return "not json"
        return default_responder(subtasks=("a", "b", "c", "d"))(messages, schema_name, schema, key)

    engine = make_engine(responder, budgets={"max_llm_calls": 7})
    sid = run_goal(engine)
    st = engine.status(sid)
    assert st["usage"]["llm_calls"] == 7 and st["status"] == "failed"
    leaves = [n for n in engine.nodes(sid) if n.node_id.startswith("root.0.")]
    assert sorted(n.status for n in leaves) == ["done", "done", "failed", "failed"]
    assert all("budget max_llm_calls=7 reached" in n.error for n in leaves if n.status == "failed")
    assert engine.counters(sid)[0].llm_calls == 7  # what was reserved is what was made
    # Without a budget in the way the extra reservations reconcile to the calls made.
    engine = make_engine(responder)
    sid = run_goal(engine)
    assert engine.status(sid)["usage"]["llm_calls"] == engine.counters(sid)[0].llm_calls == 10


def test_a_spawn_is_refused_once_the_tokens_are_spent():
    engine = make_engine(default_responder(subtasks=("a", "b", "c")), budgets={"max_tokens": 50})
    sid = run_goal(engine)
    st = engine.status(sid)
    assert st["status"] == "failed" and st["nodes"] == 1  # no child created only to fail at its first call
    assert "budget max_tokens=50 reached" in st["error"] and "no tokens left for 3 children" in st["error"]


def test_reserved_calls_are_reconciled_when_parents_resume():
    engine = make_engine(default_responder(subtasks=("a", "b", "c")))
    sid = run_goal(engine)
    st = engine.status(sid)
    assert st["status"] == "done" and st["usage"]["llm_calls"] == 5  # plan, 3 leaves, supervisor
    assert engine.counters(sid)[0].llm_calls == 5  # every reservation was matched by the call it stood for
    assert all(n.committed.llm_calls == 1 for n in engine.nodes(sid) if n.node_id != "root")
    # children that never make their call (their delivery was given up) give their reservation back
    d = Recorder()
    engine = make_engine(default_responder(subtasks=("a", "b", "c")), dispatcher=d)
    sid, _ = engine.load_goal("Do a thing")
    engine.execute_node(*d.queue.pop())
    assert engine.counters(sid)[0].llm_calls == 4  # the plan, and 3 reserved
    for _, bp in d.queue[:2]:
        assert engine.fail_node(sid, bp, "delivery gave up")
    d.queue = d.queue[2:]
    while d.queue:
        engine.execute_node(*d.queue.pop(0))
    st = engine.status(sid)
    assert st["status"] == "done" and st["usage"]["llm_calls"] == 3  # plan, one leaf, supervisor
    assert engine.counters(sid)[0].llm_calls == 3


def test_recursive_planner_is_bounded_by_depth_and_nodes():
    # A planner that always delegates to another manager must still end.
    engine = make_engine(default_responder(subtasks=("x", "y"), action="break_down_goal"), budgets={"max_depth": 3, "max_nodes": 40})
    sid = run_goal(engine)
    nodes = engine.nodes(sid)
    assert engine.status(sid)["status"] in ("done", "failed")
    assert max(n.blueprint.depth for n in nodes) <= 3 and len(nodes) <= 40
    # at the depth limit the planner is not offered managers: its subtasks go elsewhere, so no
    # node has to be failed by the max_depth check
    by_id = {n.node_id: n for n in nodes}
    deepest = [n for n in nodes if n.blueprint.depth == 2 and n.blueprint.action == "break_down_goal"]
    assert deepest and all(d.children for d in deepest)
    assert all(by_id[c].blueprint.action != "break_down_goal" for d in deepest for c in d.children)
    assert not any("max_depth" in (n.error or "") for n in nodes)


class Recorder:
    """A dispatcher that only records deliveries; the test delivers them itself."""

    def __init__(self):
        self.queue = []

    def bind(self, engine):
        self.engine = engine

    def dispatch(self, swarm_id, bp):
        self.queue.append((swarm_id, bp))


def drain_twice_concurrently(engine, dispatcher):
    """Deliver every blueprint twice at the same instant, as an at-least-once queue may."""
    while dispatcher.queue:
        batch, dispatcher.queue = dispatcher.queue, []
        for swarm_id, bp in batch:
            barrier = threading.Barrier(2)

            def deliver():
                barrier.wait()
                engine.execute_node(swarm_id, bp)

            threads = [threading.Thread(target=deliver) for _ in range(2)]
            [t.start() for t in threads]
            [t.join() for t in threads]


def test_a_delivery_of_the_next_round_resumes_nothing_that_was_not_released():
    # A stale or forged delivery carries round + 1: a parent whose children have not all
    # reported, or a node whose question has no answer, must not run on it.
    def responder(messages, schema_name, schema, key):
        if key.startswith("root.0.1/"):
            return {"report": "", "question": "Which one?"}
        return default_responder(subtasks=("a", "b", "c"))(messages, schema_name, schema, key)

    d = Recorder()
    engine = make_engine(responder, dispatcher=d)
    sid, _ = engine.load_goal("Do a thing")
    engine.execute_node(*d.queue.pop(0))  # the root plans a, b, c
    engine.execute_node(*d.queue.pop(0))  # a is done
    engine.execute_node(*d.queue.pop(0))  # b asks the user
    for node_id in ("root", "root.0.1"):
        rec = engine.node(sid, node_id)[0]
        forged = rec.blueprint.model_copy(update={"round": rec.blueprint.round + 1})
        assert engine.execute_node(sid, forged) == rec.status
        assert engine.node(sid, node_id)[0] == rec
    assert [bp.node_id for _, bp in d.queue] == ["root.0.2"]  # nothing else was dispatched
    engine.execute_node(*d.queue.pop(0))
    engine.answer(sid, "root.0.1", "the second")
    while d.queue:
        engine.execute_node(*d.queue.pop(0))
    st = engine.status(sid)
    assert st["status"] == "done" and st["nodes"] == 5
    sup = next(e for e in kinds(engine, sid, "outcome") if e.node_id == "root.1.0").llm_calls[0].messages[-1]["content"]
    assert all(f"did {t}" in sup for t in "ac")


def test_a_replay_follows_the_claim_that_stood_even_if_a_late_worker_wrote_last():
    # A worker outlives its lease; the node is taken over and settled; then the late worker's
    # outcome event lands, and it dies before recording that it was superseded.
    plans = iter([("a", "b", "c"), ("x", "y")])

    def responder(messages, schema_name, schema, key):
        if schema_name == "break_down_goal":
            return default_responder(subtasks=next(plans))(messages, schema_name, schema, key)
        return default_responder()(messages, schema_name, schema, key)

    class Died(BaseException):
        pass

    d = Recorder()
    engine = make_engine(responder, dispatcher=d)
    engine.blueprint.dispatcher.lease_seconds = 0  # the first claim's lease has run out at once
    sid, _ = engine.load_goal("Do a thing")
    root = d.queue.pop(0)
    real_event, late = engine._event, [True]

    def event(swarm_id, ev):
        if ev.kind == "outcome" and ev.node_id == "root" and late:
            late.clear()
            engine.execute_node(*root)  # the takeover settles first
            real_event(swarm_id, ev)
            raise Died
        return real_event(swarm_id, ev)

    engine._event = event
    with pytest.raises(Died):
        engine.execute_node(*root)
    engine._event = real_event
    while d.queue:
        engine.execute_node(*d.queue.pop(0))
    assert [n.node_id for n in engine.nodes(sid)] == ["root", "root.0.0", "root.0.1", "root.1.0"]
    replay, rid = _replay(engine, sid)
    assert _tree(replay, rid) == _tree(engine, sid)


def test_duplicate_concurrent_deliveries_run_each_action_once():
    calls = Counter()

    def responder(messages, schema_name, schema, key):
        calls[key] += 1
        return default_responder(subtasks=("a", "b", "c"))(messages, schema_name, schema, key)

    dispatcher = Recorder()
    engine = make_engine(responder, dispatcher=dispatcher)
    sid, _ = engine.load_goal("Do a thing")
    drain_twice_concurrently(engine, dispatcher)
    assert engine.status(sid)["status"] == "done"
    assert all(n == 1 for n in calls.values()), calls
    assert len(engine.nodes(sid)) == 5
    outcomes = Counter((e.node_id, e.round) for e in kinds(engine, sid, "outcome"))
    assert all(n == 1 for n in outcomes.values()), outcomes


def test_redelivering_finished_nodes_changes_nothing():
    engine = make_engine(default_responder())
    sid = run_goal(engine)
    store = engine.state
    before = {k: store.read(k) for k in store.list(f"swarms/{sid}/")}
    events_before = len(engine.events(sid))
    for n in engine.nodes(sid):
        for rnd in range(n.blueprint.round + 1):
            engine.execute_node(sid, n.blueprint.model_copy(update={"round": rnd}).model_dump())
    engine.dispatcher.wait(10)
    after = {k: store.read(k) for k in store.list(f"swarms/{sid}/")}
    assert after == before and len(engine.events(sid)) == events_before


def test_ask_user_waits_on_its_branch_while_the_rest_goes_on():
    def responder(messages, schema_name, schema, key):
        if schema_name == "write_text" and task_of(messages) == "b":
            content = messages[-1]["content"]
            if "The user answered" in content:
                assert "blue" in content
                return {"report": "did b in blue", "question": None}
            return {"report": "", "question": "Which colour?"}
        return default_responder(subtasks=("a", "b"))(messages, schema_name, schema, key)

    engine = make_engine(responder)
    sid = run_goal(engine)
    st = engine.status(sid)
    assert st["status"] == "waiting_user"
    assert st["waiting"] == [{"node_id": "root.0.1", "question": "Which colour?"}]
    assert {n.node_id: n.status for n in engine.nodes(sid)}["root.0.0"] == "done"
    with pytest.raises(NotWaiting):
        engine.answer(sid, "root.0.0", "blue")
    engine.answer(sid, "root.0.1", "blue")
    engine.dispatcher.wait(30)
    assert engine.status(sid)["status"] == "done"
    assert "did b in blue" in [r.report for r in engine.read_join(sid, "root", 0)]


def test_of_two_answers_at_one_instant_one_is_taken_and_the_other_is_told_why():
    from scripted import asks_colour

    calls = []

    def responder(messages, schema_name, schema, key):
        calls.append(key)
        return asks_colour()(messages, schema_name, schema, key)

    engine = make_engine(responder)
    sid = run_goal(engine)
    real = engine.state.swap

    def swap(key, data, version):  # "red" lands between "blue"'s read of the node and its write
        if key.endswith("/root.0.1.json") and b'"blue"' in data:
            engine.state.swap = real
            engine.answer(sid, "root.0.1", "red")
        return real(key, data, version)

    engine.state.swap = swap
    with pytest.raises(NotWaiting, match="root.0.1 (was already answered|is running, not waiting)"):
        engine.answer(sid, "root.0.1", "blue")  # not "try again": no later try can be taken either
    assert engine.dispatcher.wait(30) and engine.status(sid)["status"] == "done"
    assert [e.data["answer"] for e in kinds(engine, sid, "answered")] == ["red"]
    assert [k for k in calls if k.startswith("root.0.1/1/")] == ["root.0.1/1/0"]  # the node ran once on it


def test_an_answer_longer_than_a_goal_may_be_is_refused_before_anything_is_stored():
    from scripted import asks_colour

    engine = make_engine(asks_colour())
    sid = run_goal(engine)
    before = {k: engine.state.read(k) for k in engine.state.list(f"swarms/{sid}/")}
    with pytest.raises(SwarmError, match="the answer is 20001 characters; the limit is 20000"):
        engine.answer(sid, "root.0.1", "x" * 20001)  # it would go whole into the node's prompt
    assert {k: engine.state.read(k) for k in engine.state.list(f"swarms/{sid}/")} == before
    assert not kinds(engine, sid, "answered")
    engine.answer(sid, "root.0.1", "x" * 20000)  # the question can still be answered
    assert engine.dispatcher.wait(30) and engine.status(sid)["status"] == "done"


def test_a_replay_waiting_where_its_original_waits_is_answered_on_the_original():
    """The replay's answers come from its original's history: one given to the replay by hand
    has no recorded call to go with it, so it is refused, naming the swarm to answer."""
    from scripted import asks_colour

    engine = make_engine(asks_colour())
    sid = run_goal(engine)
    rid, _ = engine.load_goal(engine.header(sid).goal, llm_source=f"replay:{sid}", replay_of=sid)
    assert engine.dispatcher.wait(30) and engine.status(rid)["status"] == "waiting_user"
    before = {k: engine.state.read(k) for k in engine.state.list(f"swarms/{rid}/")}
    with pytest.raises(SwarmError, match=f"{rid} replays {sid}: answer {sid}, then replay it again"):
        engine.answer(rid, "root.0.1", "blue")
    assert {k: engine.state.read(k) for k in engine.state.list(f"swarms/{rid}/")} == before
    engine.answer(sid, "root.0.1", "blue")
    assert engine.dispatcher.wait(30) and engine.status(sid)["status"] == "done"


def test_a_node_that_asks_again_after_the_answer_fails_rather_than_report_its_raw_answer():
    def responder(messages, schema_name, schema, key):
        if schema_name == "write_text" and task_of(messages) == "b":  # answered or not, it only asks
            return {"report": "", "question": "Which colour? And which size?"}
        return default_responder(subtasks=("a", "b"))(messages, schema_name, schema, key)

    engine = make_engine(responder)
    sid = run_goal(engine)
    engine.answer(sid, "root.0.1", "blue")
    assert engine.dispatcher.wait(30)
    node = engine.node(sid, "root.0.1")[0]
    assert (node.status, node.report) == ("failed", None)
    assert node.error == "no report: it asked again after the user's answer: Which colour? And which size?"


def test_a_blank_question_from_the_model_is_no_question():
    """A question of only spaces would park the node waiting for an answer to nothing."""
    def responder(messages, schema_name, schema, key):
        if schema_name == "write_text":
            return {"report": f"did {task_of(messages)}", "question": " \n\t"}
        if schema_name == "break_down_goal":
            plan = default_responder(subtasks=("a", "b"))(messages, schema_name, schema, key)
            return {**plan, "question": "  "}
        return default_responder()(messages, schema_name, schema, key)

    engine = make_engine(responder)
    sid = run_goal(engine)
    st = engine.status(sid)
    assert (st["status"], st["waiting"]) == ("done", [])
    assert sorted(r.report for r in engine.read_join(sid, "root", 0)) == ["did a", "did b"]


@pytest.mark.parametrize("then", [["x", "y"], []])
def test_a_planner_can_ask_the_user_before_it_has_any_subtask(then):
    asked = {"subtasks": [], "mode": "parallel", "question": "Which city?"}
    planned = {"subtasks": [{"task": t, "action": "write_text"} for t in then], "mode": "parallel", "question": None}
    engine = make_engine(scripted({"break_down_goal": [asked, planned]}))
    sid = run_goal(engine, "Plan my trip")
    assert engine.status(sid)["waiting"] == [{"node_id": "root", "question": "Which city?"}]
    engine.answer(sid, "root", "Lisbon")
    assert engine.dispatcher.wait(30)
    st = engine.status(sid)
    if then:
        assert st["status"] == "done" and len(engine.read_join(sid, "root", 1)) == len(then)
    else:  # still no subtask, and no question left to ask
        assert st["status"] == "failed" and st["error"] == "empty plan: the planner gave no subtasks"


def test_a_re_plan_that_asks_the_user_plans_with_the_supervisors_feedback_once_answered():
    plans = {}

    def responder(messages, schema_name, schema, key):
        if schema_name == "supervise":  # not done the first time
            first = key.startswith("root.1.0/")
            return {"done": not first, "report": "ok", "feedback": "add the prices" if first else ""}
        if "subtasks" in schema.get("properties", {}):
            plans[key] = messages[-1]["content"]
            if key.startswith("root/2/"):  # the re-plan asks first
                return {"subtasks": [], "mode": "parallel", "question": "Which city?"}
        return default_responder(subtasks=("a",))(messages, schema_name, schema, key)

    engine = make_engine(responder)
    sid = run_goal(engine)
    assert engine.status(sid)["waiting"] == [{"node_id": "root", "question": "Which city?"}]
    engine.answer(sid, "root", "Lisbon")
    assert engine.dispatcher.wait(30) and engine.status(sid)["status"] == "done"
    replan = plans["root/3/0"]
    assert "Lisbon" in replan and "add the prices" in replan and "did a" in replan  # answer, feedback, earlier results


def test_invalid_answer_is_repaired_then_fails_cleanly():
    bad = Counter()

    def responder(messages, schema_name, schema, key):
        task = {"root.0.0": "a", "root.0.1": "b"}.get(key.split("/")[0])
        if task:
            bad[task] += 1
            if task == "a" and bad[task] == 1:
                assert "invalid" not in messages[-1]["content"]
                return '{"report": 12'  # truncated JSON
            if task == "b":
                return {"wrong": "shape"}
            return {"report": "did a", "question": None}
        return default_responder(subtasks=("a", "b"))(messages, schema_name, schema, key)

    engine = make_engine(responder)
    sid = run_goal(engine)
    nodes = {n.node_id: n for n in engine.nodes(sid)}
    assert nodes["root.0.0"].status == "done" and bad["a"] == 2
    assert nodes["root.0.1"].status == "failed" and bad["b"] == 3  # 1 try + max_repairs=2
    assert "write_text: no valid answer after 3 attempts" in nodes["root.0.1"].error
    assert "report: Field required" in nodes["root.0.1"].error
    assert engine.status(sid)["status"] == "done"
    calls = [e for e in kinds(engine, sid, "outcome") if e.node_id == "root.0.1"][0].llm_calls
    assert "Your answer was invalid" in calls[1].messages[-1]["content"]


def test_an_action_that_raises_fails_its_node_not_the_worker(monkeypatch):
    import swarm_core.actions as actions

    def boom(ctx):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(actions, "write_python", boom)
    engine = make_engine(default_responder(subtasks=("a",), action="write_python"))
    sid = run_goal(engine)
    node = {n.node_id: n for n in engine.nodes(sid)}["root.0.0"]
    assert node.status == "failed" and "RuntimeError: kaboom" in node.error
    assert engine.status(sid)["status"] == "done" and not engine.dispatcher.errors


def test_replay_from_history_gives_the_same_tree_without_the_model():
    engine = make_engine(default_responder(subtasks=("a", "b", "c")))
    sid = run_goal(engine)
    replay, rid = _replay(engine, sid)
    shape = lambda e, s: [(n.node_id, n.blueprint.action, n.status, n.report) for n in e.nodes(s)]  # noqa: E731
    assert shape(replay, rid) == shape(engine, sid)
    assert replay.status(rid)["usage"]["prompt_tokens"] == engine.status(sid)["usage"]["prompt_tokens"] > 0
    # a swarm stopped by its token budget replays to the same stop: the recording keeps the usage
    engine = make_engine(default_responder(subtasks=("a", "b", "c")), budgets={"max_tokens": 50})
    sid = run_goal(engine)
    replay, rid = _replay(engine, sid, max_tokens=50)
    assert shape(replay, rid) == shape(engine, sid) and replay.status(rid)["error"] == engine.status(sid)["error"]


def test_bad_input_is_refused_and_nothing_is_overwritten():
    engine = make_engine()
    with pytest.raises(SwarmError, match="empty"):
        engine.load_goal("   ")
    with pytest.raises(SwarmError, match="limit is 20000"):
        engine.load_goal("x" * 20001)
    with pytest.raises(SwarmError, match="max_nodes"):
        engine.load_goal("ok", budgets={"max_nodes": 0})
    for bad in ("../../etc/passwd", "sw_" + "A" * 26, "", "sw_0000"):
        with pytest.raises(InvalidId):
            engine.header(bad)
    with pytest.raises(ValueError, match="invalid node id"):
        NodeBlueprint(node_id="../x", action="write_text")
    sid = run_goal(engine)
    for bad_sid, bad_node in ((sid + "\n", "root"), (sid, "root\n")):  # a final newline: an id check, not a storage error
        with pytest.raises(ValueError, match="invalid (swarm|node) id"):  # InvalidId, or pydantic's error naming it
            engine.execute_node(bad_sid, {"node_id": bad_node, "action": "write_text"})
    key = engine.node_key(sid, "root.0.0")
    good = engine.state.read(key)
    engine.state.write(key, b'{"blueprint": {"node_id": "root.0.0"')
    with pytest.raises(CorruptRecord, match=r"corrupted record swarms/.*/nodes/root.0.0.json"):
        engine.nodes(sid)
    with pytest.raises(CorruptRecord):
        engine.execute_node(sid, {"node_id": "root.0.0", "action": "write_text"})
    assert engine.state.read(key) == b'{"blueprint": {"node_id": "root.0.0"'
    engine.state.write(key, good)
    # stray files, which are not node records: named as such, not "unknown node"
    for stray in ("Root_copy.json", "root.json.bak", "notes.txt"):
        engine.state.write(engine.key(sid, "nodes", stray), b"{}")
        with pytest.raises(CorruptRecord, match=rf"unexpected object swarms/.*/nodes/{stray} in memory://"):
            engine.nodes(sid)
        engine.state.delete(engine.key(sid, "nodes", stray))


def test_a_swarm_whose_creation_failed_half_way_is_still_listed():
    engine = make_engine()
    real = engine.state.create

    def create(key, data):
        if key.endswith("/swarm.json"):
            raise StoreError("disk full")
        return real(key, data)

    engine.state.create = create
    with pytest.raises(StoreError):
        engine.load_goal("Do a thing")
    [sid] = engine.swarm_ids()
    with pytest.raises(SwarmError, match=f"unknown swarm {sid}"):
        engine.header(sid)


def test_forged_payload_cannot_change_what_a_node_does():
    dispatcher = Recorder()
    engine = make_engine(dispatcher=dispatcher)
    sid, _ = engine.load_goal("Do a thing")
    _, bp = dispatcher.queue.pop()
    forged = bp.model_copy(update={"action": "write_python", "input": {"task": "rm -rf /"}})
    engine.execute_node(sid, forged)
    rec, _ = engine.node(sid, "root")
    assert rec.blueprint.action == "break_down_goal" and rec.blueprint.input == bp.input
    # and what ran was the stored action on the stored input
    outcome = [e for e in engine.events(sid) if e.kind == "outcome"]
    assert rec.status == "waiting_children" and len(outcome) == 1
    assert [c.schema_name for c in outcome[0].llm_calls] == ["break_down_goal"]
    assert "rm -rf" not in json.dumps(outcome[0].llm_calls[0].messages)


def test_resume_finishes_a_swarm_whose_deliveries_were_lost():
    dispatcher = Recorder()
    engine = make_engine(default_responder(subtasks=("a", "b", "c")), dispatcher=dispatcher)
    sid, _ = engine.load_goal("Do a thing")
    # run the root and one child, then "crash": the other deliveries are lost
    engine.execute_node(*dispatcher.queue.pop(0))
    engine.execute_node(*dispatcher.queue.pop(0))
    dispatcher.queue.clear()
    # a node that was claimed when its worker died
    rec, version = engine.node(sid, "root.0.1")
    engine.state.swap(engine.node_key(sid, "root.0.1"), rec.model_copy(update={"status": "running", "lease_until": 1e12}).model_dump_json().encode(), version)
    fresh = make_engine(default_responder(subtasks=("a", "b", "c")), store=engine.state.uri)
    fresh.resume(sid)
    fresh.dispatcher.wait(30)
    assert fresh.status(sid)["status"] == "done"
    assert [n.node_id for n in fresh.nodes(sid)] == ["root", "root.0.0", "root.0.1", "root.0.2", "root.1.0"]
    fresh.resume(sid)  # twice is harmless
    fresh.dispatcher.wait(30)
    assert len(kinds(fresh, sid, "swarm_done")) == 1


def test_events_are_append_only_objects():
    engine = make_engine()
    sid = run_goal(engine)
    keys = engine.history.list(f"swarms/{sid}/events/")
    events = engine.events(sid)
    # one object per event, listed in the order things happened
    assert len(keys) == len(events) and events[0].kind == "created" and events[-1].kind == "swarm_done"
    at = {(e.node_id, e.round, e.kind): i for i, e in enumerate(events)}
    leaves = [at[k] for k in at if k[0].startswith("root.0.") and k[2] == "outcome"]
    assert len(leaves) == 2 and at[("root", 0, "outcome")] < min(leaves) < max(leaves) < at[("root", 1, "resumed")]
    before = {k: engine.history.read(k) for k in keys}
    assert engine.resume(sid) == 0  # re-driving a finished swarm writes no event and rewrites none
    assert {k: engine.history.read(k) for k in engine.history.list(f"swarms/{sid}/events/")} == before
    # a re-delivered node's outcome is not recorded twice
    root = engine.node(sid, "root")[0].blueprint
    engine.execute_node(sid, root)
    assert engine.history.list(f"swarms/{sid}/events/") == keys


def test_a_question_in_a_sequential_step_makes_the_swarm_wait_for_the_user():
    def responder(messages, schema_name, schema, key):
        if key.startswith("root.0.0/0/"):
            return {"report": "", "question": "Which colour?"}
        return default_responder(subtasks=("one", "two"), mode="sequential")(messages, schema_name, schema, key)

    engine = make_engine(responder)
    sid = run_goal(engine)
    st = engine.status(sid)
    assert st["by_status"] == {"waiting_children": 1, "waiting_user": 1, "pending": 1}
    assert st["status"] == "waiting_user"  # step two waits behind step one: nothing else can run
    # until the branch picks its answer up, a second answer is refused rather than replacing it
    engine.dispatcher = Recorder()
    engine.dispatcher.bind(engine)
    engine.answer(sid, "root.0.0", "blue")
    with pytest.raises(NotWaiting, match="already answered"):
        engine.answer(sid, "root.0.0", "red")
    assert engine.node(sid, "root.0.0")[0].answer == "blue"
    assert [e.data["answer"] for e in engine.events(sid) if e.kind == "answered"] == ["blue"]


def test_an_answered_question_or_a_released_join_is_not_waiting_for_the_user():
    # A remote `swarm answer` or `run` stops following the swarm once it is waiting for the user:
    # that must not be while an answered node, or a manager whose children all reported, has yet to run.
    def responder(messages, schema_name, schema, key):
        if key.startswith("root.0.1/0/"):
            return {"report": "", "question": "Which colour?"}
        if key.startswith("root/0/"):  # a manager and a writer
            plan = [{"task": "a", "action": "break_down_goal"}, {"task": "b", "action": "write_text"}]
            return {"subtasks": plan, "mode": "parallel", "question": None}
        return default_responder()(messages, schema_name, schema, key)

    d = Recorder()
    engine = make_engine(responder, dispatcher=d)
    sid, _ = engine.load_goal("Do a thing")
    while d.queue[0][1].node_id != "root.0.0" or d.queue[0][1].round != 1:  # until manager root.0.0 is released
        engine.execute_node(*d.queue.pop(0))
    st = engine.status(sid)
    assert engine.node(sid, "root.0.1")[0].status == "waiting_user" and st["status"] == "running", st
    while d.queue:
        engine.execute_node(*d.queue.pop(0))
    assert engine.status(sid)["status"] == "waiting_user"
    engine.answer(sid, "root.0.1", "blue")
    st = engine.status(sid)
    assert (st["status"], st["waiting"]) == ("running", [])  # answered: its next round is on its way
    while d.queue:
        engine.execute_node(*d.queue.pop(0))
    assert engine.status(sid)["status"] == "done"


def _fail_once_settling(engine, delivery):
    """Deliver once while the history store refuses the node's outcome event (after its claim)."""
    real, failed = engine.history.create, []
    bp = delivery[1]

    def create(key, data):
        if f"-{bp.node_id}-{bp.round}-outcome" in key and not failed:
            failed.append(key)
            raise StoreError("history store unavailable")
        return real(key, data)

    engine.history.create = create
    with pytest.raises(StoreError):
        engine.execute_node(*delivery)
    assert failed, "the fault was not injected"


def test_a_delivery_that_fails_after_its_claim_hands_the_node_back():
    # A queue redelivers on a 5xx: the redelivery must find the node claimable, not `running`
    # under the failed delivery's lease (it would answer 200 and the queue would stop).
    d = Recorder()
    engine = make_engine(dispatcher=d)
    sid, _ = engine.load_goal("Do a thing")
    delivery = d.queue.pop()
    _fail_once_settling(engine, delivery)
    rec = engine.node(sid, "root")[0]
    assert (rec.status, rec.attempt, rec.lease_until) == ("pending", 1, None)  # the next claim is attempt 2
    assert engine.execute_node(*delivery) == "waiting_children"  # the redelivery runs it


def _to_root_resume(engine, d):
    """Deliver by hand until the root's round-1 delivery (its resume after the workers) is next."""
    sid, _ = engine.load_goal("Do a thing")
    while d.queue[0][1].node_id != "root" or d.queue[0][1].round != 1:
        engine.execute_node(*d.queue.pop(0))
    return sid, d.queue.pop(0)


def test_a_handed_back_claim_keeps_the_memo_it_was_claimed_with():
    d = Recorder()
    engine = make_engine(dispatcher=d)
    sid, delivery = _to_root_resume(engine, d)
    _fail_once_settling(engine, delivery)
    engine.execute_node(*delivery)  # the queue's redelivery: the manager still owes its supervisor
    assert [(bp.node_id, bp.action) for _, bp in d.queue] == [("root.1.0", "supervise")]


def test_taking_over_a_resumed_round_after_the_lease_ran_out_reads_the_children():
    class Died(BaseException):
        pass

    d = Recorder()
    engine = make_engine(dispatcher=d)
    engine.blueprint.dispatcher.lease_seconds = 0.05
    sid, delivery = _to_root_resume(engine, d)
    real_run = engine._run
    engine._run = lambda *a: (_ for _ in ()).throw(Died())  # the worker dies mid-run, leaving its claim
    with pytest.raises(Died):
        engine.execute_node(*delivery)
    engine._run = real_run
    assert engine.node(sid, "root")[0].status == "running"
    time.sleep(0.1)
    engine.execute_node(*delivery)  # a redelivery after the lease: takes over, with the workers' reports
    assert [(bp.node_id, bp.action) for _, bp in d.queue] == [("root.1.0", "supervise")]


def test_resume_delivers_an_answer_whose_delivery_was_lost():
    def responder(messages, schema_name, schema, key):
        if key.startswith("root.0.1/0/"):
            return {"report": "", "question": "Which colour?"}
        return default_responder()(messages, schema_name, schema, key)

    engine = make_engine(responder)
    sid = run_goal(engine)
    engine.dispatcher = Recorder()  # the answer's delivery goes nowhere
    engine.dispatcher.bind(engine)
    engine.answer(sid, "root.0.1", "blue")
    engine.dispatcher.queue.clear()
    engine.resume(sid)
    assert [(bp.node_id, bp.round) for _, bp in engine.dispatcher.queue] == [("root.0.1", 1)]
    while engine.dispatcher.queue:
        engine.execute_node(*engine.dispatcher.queue.pop(0))
    assert engine.status(sid)["status"] == "done"


def test_a_stopped_local_dispatcher_drops_queued_nodes_and_ignores_new_ones():
    from swarm_core.dispatch import LocalDispatcher

    started, release = [], threading.Event()

    class SlowEngine:
        def execute_node(self, swarm_id, bp):
            started.append(bp.node_id)
            release.wait(10)

    d = LocalDispatcher(1)
    d.bind(SlowEngine())
    for i in range(3):
        d.dispatch("sw", NodeBlueprint(node_id=f"root.0.{i}", action="write_text"))
    assert not d.wait(0.2) and started == ["root.0.0"]
    assert d.stop() == 1  # root.0.1 and root.0.2 were queued: dropped
    d.dispatch("sw", NodeBlueprint(node_id="root.0.3", action="write_text"))
    release.set()
    assert d.wait(5) and started == ["root.0.0"] and not d.errors


def _late_worker_and_takeover(first_plan=lambda: None):
    """An engine with a 50 ms lease whose root plans two subtasks (x, y) at its first delivery
    (after calling `first_plan`) and three (a, b, c) at the next. Returns the engine, its
    Recorder, the swarm id and the root's delivery, not yet run."""
    plans = []

    def responder(messages, schema_name, schema, key):
        if "subtasks" in schema.get("properties", {}) and key.startswith("root/0/"):
            plans.append(key)
            first = len(plans) == 1
            if first:
                first_plan()
            return default_responder(subtasks=("x", "y") if first else ("a", "b", "c"))(messages, schema_name, schema, key)
        return default_responder()(messages, schema_name, schema, key)

    d = Recorder()
    engine = make_engine(responder, dispatcher=d)
    engine.blueprint.dispatcher.lease_seconds = 0.05
    sid, _ = engine.load_goal("Do a thing")
    return engine, d, sid, d.queue.pop()


def test_a_worker_that_outlived_its_lease_cannot_settle_a_node_taken_over():
    # The first claimer's model call outlasts the lease; a redelivery takes the node over and
    # spawns three children. When the slow call returns, its plan of two must change nothing:
    # neither the record, nor the children, nor the history's outcome for that round.
    slow_started, release = threading.Event(), threading.Event()

    def first_plan():
        slow_started.set()
        release.wait(10)

    engine, d, sid, delivery = _late_worker_and_takeover(first_plan)
    slow_status = []
    slow = threading.Thread(target=lambda: slow_status.append(engine.execute_node(*delivery)))
    slow.start()
    assert slow_started.wait(10)
    time.sleep(0.1)  # the lease runs out
    assert engine.execute_node(*delivery) == "waiting_children"  # the takeover
    release.set()
    slow.join(10)
    rec = engine.node(sid, "root")[0]
    assert rec.children == ["root.0.0", "root.0.1", "root.0.2"]
    assert [c.input["task"] for c in rec.outcome.children] == ["a", "b", "c"]
    assert [task_of_bp.input["task"] for _, task_of_bp in d.queue] == ["a", "b", "c"]
    assert {n.join.size for n in engine.nodes(sid) if n.join} == {3}
    assert len([e for e in kinds(engine, sid, "outcome") if e.node_id == "root"]) == 1
    assert slow_status == ["waiting_children"]  # it reports what the node is, not what it made
    # Its call was paid for: counted, and kept in the history apart from the round's outcome.
    [dropped] = kinds(engine, sid, "superseded")
    assert (dropped.node_id, dropped.data["attempt"], dropped.data["taken_over_by"]) == ("root", 1, 2)
    assert '"x"' in dropped.llm_calls[0].response
    # 2 plan calls (one dropped) + 3 children's reserved first calls
    assert engine.counters(sid)[0].llm_calls == 5
    assert '"a"' in engine.recorded_answers(sid)["root/0/0"]["text"]  # a replay follows the takeover


@pytest.mark.parametrize("moment", ["counting its spawn", "writing its outcome"])
def test_a_takeover_after_the_claim_check_wins_over_the_late_worker(moment):
    # The late worker passed the claim check in _settle, then the node was taken over (and
    # settled) while it counted its spawn, or after that, while it wrote its outcome event
    # (which then lands after the takeover's). Its record write (compare-and-swap) loses, the
    # replay follows the takeover, and the counters hold the takeover's spawn only.
    engine, d, sid, delivery = _late_worker_and_takeover()
    took_over, started = [], []

    def take_over():
        started.append(True)
        time.sleep(0.1)  # the lease runs out
        took_over.append(engine.execute_node(*delivery))

    if moment == "counting its spawn":
        real_swap, counted = engine.state.swap, []

        def swap(key, data, version):
            if key.endswith("counters.json") and not started:
                counted.append(key)
                if len(counted) == 2:  # the late worker's spawn (its first was its call's reservation)
                    take_over()
            return real_swap(key, data, version)

        engine.state.swap = swap
    else:
        real_event = engine._event

        def event(swarm_id, e):
            if e.kind == "outcome" and not started:
                take_over()
            return real_event(swarm_id, e)

        engine._event = event
    assert engine.execute_node(*delivery) == "waiting_children"
    assert took_over == ["waiting_children"]
    rec = engine.node(sid, "root")[0]
    assert [c.input["task"] for c in rec.outcome.children] == ["a", "b", "c"]
    assert [bp.input["task"] for _, bp in d.queue] == ["a", "b", "c"]
    outcomes = kinds(engine, sid, "outcome")
    if moment == "writing its outcome":
        assert '"x"' in outcomes[-1].llm_calls[0].response  # the late worker's event came last
    assert len(kinds(engine, sid, "superseded")) == 1
    assert '"a"' in engine.recorded_answers(sid)["root/0/0"]["text"]
    counters = engine.counters(sid)[0]
    assert (counters.nodes, counters.llm_calls) == (4, 5)  # root + 3 children; 2 plans + 3 reserved
    _finish_by_hand(engine, d)
    st = engine.status(sid)
    assert st["status"] == "done" and engine.counters(sid)[0].llm_calls == st["usage"]["llm_calls"] + 1  # + the dropped plan


def _finish_by_hand(engine, d):
    while d.queue:
        engine.execute_node(*d.queue.pop(0))


def test_a_takeover_spends_its_own_reservation_not_the_late_workers():
    # The leaf's first call is covered by its spawn's reservation. The slow delivery spent it;
    # the delivery that takes over must reserve its own, and here the budget has no room left.
    made, started, release = [], threading.Event(), threading.Event()

    def responder(messages, schema_name, schema, key):
        made.append(key)
        if key == "root.0.0/0/0" and not started.is_set():
            started.set()
            release.wait(10)
        return default_responder(subtasks=("a",))(messages, schema_name, schema, key)

    d = Recorder()
    engine = make_engine(responder, dispatcher=d, budgets={"max_llm_calls": 2})
    sid, _ = engine.load_goal("Do a thing")
    engine.execute_node(*d.queue.pop())  # the plan: 1 call + 1 reserved for the leaf
    leaf = d.queue.pop()
    engine.blueprint.dispatcher.lease_seconds = 0.05
    slow = threading.Thread(target=engine.execute_node, args=leaf)
    slow.start()
    assert started.wait(10)
    time.sleep(0.1)
    assert engine.execute_node(*leaf) == "failed"  # the takeover: no call left
    release.set()
    slow.join(10)
    assert "budget max_llm_calls=2 reached" in engine.node(sid, "root.0.0")[0].error
    _finish_by_hand(engine, d)
    assert len(made) == 2 and engine.counters(sid)[0].llm_calls == 2


def _cancelled_steps_at_root_resume():
    """Step 0 of a sequential plan fails after three calls; steps 1 and 2 are cancelled and give
    their reservations back (-1 each). Returns the engine, its Recorder, the swarm id, the
    root's resume delivery (not yet run) and the calls made."""
    made = []

    def responder(messages, schema_name, schema, key):
        made.append(key)
        if schema_name == "write_text" and key.startswith("root.0.0/"):
            return "not json"
        return default_responder(subtasks=("a", "b", "c"), mode="sequential")(messages, schema_name, schema, key)

    d = Recorder()
    engine = make_engine(responder, dispatcher=d)
    sid, delivery = _to_root_resume(engine, d)
    assert [r.usage.llm_calls for r in engine.read_join(sid, "root", 0)] == [0, -1, -1]  # step 0's 3 calls were reserved
    return engine, d, sid, delivery, made


def test_the_reports_of_a_join_are_counted_once_whoever_resumes_the_parent():
    # The root's resume is delivered, handed back after a store error, and delivered again:
    # the join's usage must reach the counters once, not twice.
    engine, d, sid, delivery, made = _cancelled_steps_at_root_resume()
    _fail_once_settling(engine, delivery)
    engine.execute_node(*delivery)
    _finish_by_hand(engine, d)
    st = engine.status(sid)
    assert st["status"] == "done" and st["usage"]["llm_calls"] == len(made) == 5
    assert engine.counters(sid)[0].llm_calls == 5


def test_a_store_error_after_the_spawn_was_counted_leaves_no_phantom_children():
    made = []

    def responder(*a):
        made.append(a[3])
        return default_responder(subtasks=("a", "b", "c"))(*a)

    d = Recorder()
    engine = make_engine(responder, dispatcher=d)
    sid, _ = engine.load_goal("Do a thing")
    delivery = d.queue.pop()
    _fail_once_settling(engine, delivery)  # the outcome event fails after the spawn was counted
    engine.execute_node(*delivery)  # the queue's redelivery
    _finish_by_hand(engine, d)
    st, counters = engine.status(sid), engine.counters(sid)[0]
    assert st["status"] == "done" and (st["nodes"], counters.nodes) == (5, 5)
    assert counters.llm_calls == len(made) == 6  # two plans (one lost with its delivery), 3 leaves, supervisor


def _replay(engine, sid, **budgets):
    replay = make_engine(lambda *a: pytest.fail("a replay must not call the model"), store=engine.state.uri, budgets=budgets)
    replay._transport = engine.replay_transport(sid)
    return replay, run_goal(replay, engine.header(sid).goal)


def _tree(engine, sid):
    return [(n.node_id, n.blueprint.action, n.status, n.error) for n in engine.nodes(sid)]


def test_a_replay_stops_where_the_recording_stopped_whatever_order_its_siblings_run_in():
    # Four leaves each need a repair and the budget has room for two: which two got theirs was
    # decided by timing (0 and 1 were slow). A replay runs with no delays, in its own order:
    # the recording, not the race, must decide again.
    def responder(messages, schema_name, schema, key):
        if schema_name == "write_text" and key.endswith("/0"):
            if key.startswith(("root.0.0/", "root.0.1/")):
                cooperative.sleep(0.3)
            return "not json"
        return default_responder(subtasks=("a", "b", "c", "d"))(messages, schema_name, schema, key)

    engine = make_engine(responder, budgets={"max_llm_calls": 7})
    sid = run_goal(engine)
    assert [n.status for n in engine.nodes(sid)][1:] == ["failed", "failed", "done", "done"]
    replay, rid = _replay(engine, sid, max_llm_calls=7)
    assert _tree(replay, rid) == _tree(engine, sid)


def test_a_replay_refuses_the_spawn_the_recording_refused():
    # Two routers share room for one more child; the slow one lost the race in the recording.
    def responder(messages, schema_name, schema, key):
        if key == "root.0.0/0/0":
            cooperative.sleep(0.3)
        return default_responder(subtasks=("a", "b"), action="no_such_action")(messages, schema_name, schema, key)

    engine = make_engine(responder, budgets={"max_llm_calls": 4})
    sid = run_goal(engine)
    nodes = {n.node_id: n for n in engine.nodes(sid)}
    assert "root.0.1.0.0" in nodes and "root.0.0.0.0" not in nodes  # the fast router won
    assert "budget max_llm_calls=4 exceeded" in nodes["root.0.0"].error
    replay, rid = _replay(engine, sid, max_llm_calls=4)
    assert _tree(replay, rid) == _tree(engine, sid)


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("root_action", "no_such_action", "root_action 'no_such_action' is not an action"),
    ("router.fallback", "nope_action", "[router] fallback 'nope_action' is not a routable action"),
    ("router.fallback", "route", "[router] fallback 'route' is not a routable action"),
])
def test_a_blueprint_naming_a_missing_action_fails_at_start_up(setting, value, message):
    from swarm_core.config import ConfigError, load_blueprint
    from swarm_core.engine import Engine

    bp = load_blueprint(None)
    bp.stores.state = "memory://start-up-check"
    if setting == "root_action":
        bp.root_action = value
    else:
        bp.router.fallback = value
    with pytest.raises(ConfigError) as err:
        Engine(bp)
    assert message in str(err.value)


def test_a_blueprint_folder_overrides_an_action_file_by_file(tmp_path):
    """`actions/write_text/prompt.md` alone replaces the default's prompt and keeps its settings and schema."""
    from swarm_core.actions import ActionError

    (tmp_path / "actions" / "write_text").mkdir(parents=True)
    (tmp_path / "actions" / "write_text" / "prompt.md").write_text("In a pirate's voice. Your task: {{task}}")
    (tmp_path / "blueprint.toml").write_text(f'action_dirs = ["{DEFAULT_ACTIONS}", "actions"]\n')
    prompts = []

    def responder(messages, schema_name, schema, key):
        if schema_name == "write_text":
            prompts.append(messages[-1]["content"])
        return default_responder()(messages, schema_name, schema, key)

    engine = make_engine(responder, blueprint=str(tmp_path))
    spec = engine.space.get("write_text")
    assert spec.parent == "writing" and spec.output_schema["required"]  # kept from the default
    assert engine.header(run_goal(engine)).status == "done"
    assert sorted(prompts) == ["In a pirate's voice. Your task: first part", "In a pirate's voice. Your task: second part"]
    typo = tmp_path / "typo"  # a folder that overrides nothing says so
    (typo / "actions" / "write_txt").mkdir(parents=True)
    (typo / "actions" / "write_txt" / "prompt.md").write_text("x")
    (typo / "blueprint.toml").write_text(f'action_dirs = ["{DEFAULT_ACTIONS}", "actions"]\n')
    with pytest.raises(ActionError, match=r"write_txt: no action.toml here or in an earlier action folder"):
        make_engine(blueprint=str(typo))


def test_giving_up_a_resume_still_counts_its_join():
    # The manager's resume delivery is given up (fail_node): the reports it would have added to
    # the counters, the cancelled steps' give-backs included, must still be added, once.
    engine, d, sid, delivery, made = _cancelled_steps_at_root_resume()
    assert engine.fail_node(sid, delivery[1], "delivery gave up")
    st = engine.status(sid)
    assert st["status"] == "failed" and engine.counters(sid)[0].llm_calls == len(made) == 4


def test_giving_up_a_resume_whose_claim_died_before_counting_its_join_still_counts_it():
    # The resume's claim stands (its hand-back failed too), but it never counted the join.
    engine, d, sid, delivery, made = _cancelled_steps_at_root_resume()
    real_list, real_swap, claimed = engine.state.list, engine.state.swap, []

    def list_(prefix):
        if "/joins/root/0/" in prefix:
            raise StoreError("joins unavailable")
        return real_list(prefix)

    def swap(key, data, version):
        if key.endswith("/nodes/root.json") and claimed:
            raise StoreError("state unavailable")  # the hand-back of the claim
        ok = real_swap(key, data, version)
        claimed.append(key.endswith("/nodes/root.json") and ok)
        return ok

    engine.state.list, engine.state.swap = list_, swap
    with pytest.raises(StoreError) as err:
        engine.execute_node(*delivery)
    engine.state.list, engine.state.swap = real_list, real_swap
    assert engine.node(sid, "root")[0].status == "running"
    assert engine.fail_node(sid, delivery[1], "gave up", claim=err.value.claim_attempt)
    assert engine.header(sid).status == "failed" and engine.counters(sid)[0].llm_calls == len(made) == 4


def failing_outcome_and_hand_back(engine, node_id):
    """Replacements for the engine's history `create` and state `swap`: the node's first
    outcome event fails, and so does every hand-back of its claim (a store that is down)."""
    real_create, real_swap, failed = engine.history.create, engine.state.swap, []

    def create(key, data):
        if f"-{node_id}-0-outcome" in key and not failed:
            failed.append(key)
            raise StoreError("history store unavailable")
        return real_create(key, data)

    def swap(key, data, version):
        if key.endswith(f"nodes/{node_id}.json") and b'"status":"pending"' in data:
            raise StoreError("state store unavailable")
        return real_swap(key, data, version)

    return create, swap


def test_giving_up_a_last_delivery_fails_only_the_claim_it_made():
    # The last delivery made its call, then the store failed, hand-back included: giving it up
    # fails its own claim and counts the call. A duplicate that failed before claiming anything
    # must not fail the node another delivery is running.
    made = []

    def responder(*a):
        made.append(a[3])
        return default_responder(subtasks=("a", "b"))(*a)

    d = Recorder()
    engine = make_engine(responder, dispatcher=d)
    sid, _ = engine.load_goal("Do a thing")
    engine.execute_node(*d.queue.pop(0))
    leaf = d.queue.pop(0)
    real_create, real_swap = engine.history.create, engine.state.swap
    engine.history.create, engine.state.swap = failing_outcome_and_hand_back(engine, "root.0.0")
    with pytest.raises(StoreError) as err:
        engine.execute_node(*leaf)
    engine.history.create, engine.state.swap = real_create, real_swap
    assert engine.node(sid, "root.0.0")[0].status == "running"
    assert not engine.fail_node(sid, leaf[1], "a duplicate gave up", claim=None)  # not its claim
    assert not engine.fail_node(sid, leaf[1], "an older claim gave up", claim=err.value.claim_attempt - 1)
    assert engine.fail_node(sid, leaf[1], "gave up", claim=err.value.claim_attempt)
    _finish_by_hand(engine, d)
    assert engine.status(sid)["status"] == "done"
    assert engine.counters(sid)[0].llm_calls == len(made)  # its call counted, though it never reported


def test_a_replay_answers_the_questions_and_meets_the_errors_of_its_recording():
    from swarm_core.llm import LLMError

    def responder(messages, schema_name, schema, key):
        if key == "root.0.0/0/0":
            return {"report": "", "question": "Which colour?"}
        if key == "root.0.1/0/0":
            raise LLMError("LLM server http://llm:8000/v1 answered HTTP 503: overloaded")
        return default_responder()(messages, schema_name, schema, key)

    engine = make_engine(responder)
    sid = run_goal(engine)
    engine.answer(sid, "root.0.0", "blue")
    assert engine.dispatcher.wait(10) and engine.status(sid)["status"] == "done"
    replay, rid = _replay(engine, sid)
    assert _tree(replay, rid) == _tree(engine, sid)
    assert replay.node(rid, "root.0.0")[0].answer == "blue"
    assert "HTTP 503: overloaded" in replay.node(rid, "root.0.1")[0].error


def test_a_replay_gives_a_recorded_answer_longer_than_answers_may_be_now(monkeypatch):
    from scripted import asks_colour

    from swarm_core import engine as engine_module

    engine = make_engine(asks_colour())
    sid = run_goal(engine)
    monkeypatch.setattr(engine_module, "MAX_TEXT_CHARS", 10**6)  # answered before answers had a limit
    engine.answer(sid, "root.0.1", "blue " * 6000)
    monkeypatch.undo()
    assert engine.dispatcher.wait(10) and engine.status(sid)["status"] == "done"
    replay, rid = _replay(engine, sid)
    assert _tree(replay, rid) == _tree(engine, sid)
    assert replay.node(rid, "root.0.1")[0].answer == engine.node(sid, "root.0.1")[0].answer


def test_azure_without_its_key_is_not_configured_and_fails_the_node_not_the_swarm(monkeypatch):
    import uuid

    from swarm_core.config import load_blueprint
    from swarm_core.engine import Engine
    from swarm_core.runtime import llm_configured

    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-azure")  # the Azure SDK does not read it
    bp = load_blueprint()
    bp.stores.state = f"memory://{uuid.uuid4().hex}"
    bp.llm = bp.llm.model_copy(update={"provider": "azure", "max_retries": 0})
    assert not llm_configured(bp)
    for name in ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_AD_TOKEN"):
        monkeypatch.setenv(name, "k")
        assert llm_configured(bp)
        monkeypatch.delenv(name)
    engine = Engine(bp)  # as `swarm serve` or a script would, asking nothing of llm_configured
    sid = run_goal(engine)
    st = engine.status(sid)
    assert st["status"] == "failed" and st["error"].startswith("cannot set up the LLM client: Missing credentials")
    assert engine.functions().llm is None  # python functions still run; the factory refuses


@pytest.mark.parametrize("then", ["redelivered", "given up", "re-planned over budget"])
def test_a_settle_write_that_fails_takes_its_spawn_back(then):
    # The root counted its spawn of 2, then its final record write failed: the claim is handed
    # back, and whatever the next delivery does, the counters must hold only nodes that exist.
    plans = []

    def responder(messages, schema_name, schema, key):
        if key.startswith("root/0/"):
            plans.append(key)
            if then == "re-planned over budget" and len(plans) > 1:
                return default_responder(subtasks=("a", "b", "c", "d"))(messages, schema_name, schema, key)
        return default_responder(subtasks=("a", "b"))(messages, schema_name, schema, key)

    d = Recorder()
    engine = make_engine(responder, dispatcher=d, budgets={"max_nodes": 4})
    sid, _ = engine.load_goal("Do a thing")
    real, failed = engine.state.swap, []

    def swap(key, data, version):
        if key.endswith("nodes/root.json") and b'"waiting_children"' in data and not failed:
            failed.append(key)
            raise StoreError("settle write timed out")
        return real(key, data, version)

    engine.state.swap = swap
    delivery = d.queue.pop(0)
    with pytest.raises(StoreError) as err:
        engine.execute_node(*delivery)
    if then == "given up":
        assert engine.fail_node(sid, delivery[1], "gave up", claim=err.value.claim_attempt)
    else:
        d.queue.insert(0, delivery)
    _finish_by_hand(engine, d)
    counters = engine.counters(sid)[0]
    assert counters.nodes == len(engine.nodes(sid)) and not counters.spawns


def _root_with_a_dead_claim():
    """A swarm whose root is `running` under a claim (attempt 1) whose lease ran out long ago.
    Returns the engine, its Recorder, the swarm id and the root's delivery."""
    d = Recorder()
    engine = make_engine(dispatcher=d)
    sid, _ = engine.load_goal("Do a thing")
    delivery = d.queue.pop(0)
    rec, version = engine.node(sid, "root")
    dead = rec.model_copy(update={"status": "running", "attempt": 1, "lease_until": 1.0})
    engine.state.swap(engine.node_key(sid, "root"), dead.model_dump_json().encode(), version)
    return engine, d, sid, delivery


def test_a_takeover_whose_counters_write_fails_can_still_be_given_up():
    engine, d, sid, delivery = _root_with_a_dead_claim()
    real = engine.state.swap

    def swap(key, data, version):
        if key.endswith("counters.json"):
            raise StoreError("counters unavailable")
        return real(key, data, version)

    engine.state.swap = swap
    with pytest.raises(StoreError) as err:
        engine.execute_node(*delivery)  # takes over, then cannot take the dead claim's spawn back
    engine.state.swap = real
    assert err.value.claim_attempt == 2
    assert engine.fail_node(sid, delivery[1], "gave up", claim=err.value.claim_attempt)
    assert engine.header(sid).status == "failed"


def test_a_replay_repairs_an_empty_answer_as_the_recording_did():
    def responder(messages, schema_name, schema, key):
        if key == "root.0.0/0/0":
            return None  # the model gave no text; the session repairs
        return default_responder()(messages, schema_name, schema, key)

    engine = make_engine(responder)
    sid = run_goal(engine)
    assert engine.node(sid, "root.0.0")[0].status == "done"
    replay, rid = _replay(engine, sid)
    assert _tree(replay, rid) == _tree(engine, sid)


def test_a_replay_that_died_before_giving_its_recorded_answer_is_resumed():
    from test_crash_sweep import Died

    def responder(messages, schema_name, schema, key):
        if key == "root.0.0/0/0":
            return {"report": "", "question": "Which colour?"}
        return default_responder()(messages, schema_name, schema, key)

    engine = make_engine(responder)
    sid = run_goal(engine)
    engine.answer(sid, "root.0.0", "blue")
    assert engine.dispatcher.wait(10)
    d = Recorder()
    replay = make_engine(lambda *a: pytest.fail("a replay must not call the model"), store=engine.state.uri, dispatcher=d)
    replay._transport = engine.replay_transport(sid)
    rid, _ = replay.load_goal(engine.header(sid).goal)
    real_answer, died = replay.answer, []

    def answer(*a, **kw):
        if not died:
            died.append(True)
            raise Died  # right after the question was stored, before its recorded answer
        return real_answer(*a, **kw)

    replay.answer = answer
    with pytest.raises(Died):
        _finish_by_hand(replay, d)
    replay.resume(rid)
    _finish_by_hand(replay, d)
    assert _tree(replay, rid) == _tree(engine, sid)


def test_giving_up_never_fails_a_later_claim_that_took_the_node_over():
    # B's call outlives its lease and C takes over; C's lease runs out too while its call goes
    # on. B then fails on its last delivery: giving B up must leave C's claim alone.
    b_started, c_started, b_done, calls = threading.Event(), threading.Event(), threading.Event(), []

    def responder(messages, schema_name, schema, key):
        calls.append(key)
        if len(calls) == 1:  # B
            b_started.set()
            assert c_started.wait(10)
            time.sleep(0.3)  # C's lease runs out too
            raise StoreError("B: store error mid-run")
        c_started.set()  # C
        assert b_done.wait(10)
        return default_responder()(messages, schema_name, schema, key)

    d = Recorder()
    engine = make_engine(responder, dispatcher=d)
    engine.blueprint.dispatcher.lease_seconds = 0.2
    sid, _ = engine.load_goal("Do a thing")
    delivery = d.queue.pop(0)
    c_status = []
    c = threading.Thread(target=lambda: (b_started.wait(10), time.sleep(0.3), c_status.append(engine.execute_node(*delivery))))
    c.start()
    with pytest.raises(StoreError) as err:
        engine.execute_node(*delivery)  # B
    assert not engine.fail_node(sid, delivery[1], "B gave up", claim=err.value.claim_attempt)
    b_done.set()
    c.join(10)
    assert c_status == ["waiting_children"] and engine.node(sid, "root")[0].status == "waiting_children"


def test_a_settle_write_that_fails_after_a_takeover_keeps_no_spawn():
    # B passed its claim check; C took the node over (and failed) before B counted its spawn;
    # then B's final write raised. B's spawn never stood: it must not stay counted.
    plans = []

    def responder(messages, schema_name, schema, key):
        if key.startswith("root/0/"):
            plans.append(key)
            if len(plans) > 1:
                return "not json"  # C fails: no spawn of its own replaces B's
        return default_responder(subtasks=("a", "b", "c"))(messages, schema_name, schema, key)

    d = Recorder()
    engine = make_engine(responder, dispatcher=d, max_repairs=0)
    engine.blueprint.dispatcher.lease_seconds = 0.1
    sid, _ = engine.load_goal("Do a thing")
    delivery = d.queue.pop(0)
    real, state = engine.state.swap, {"took_over": False, "settle_failed": False}

    def swap(key, data, version):
        if key.endswith("counters.json") and b'"root/0"' in data and not state["took_over"]:
            state["took_over"] = True  # B is about to count its spawn: C takes over first
            time.sleep(0.15)
            assert engine.execute_node(*delivery) == "failed"
            return real(key, data, engine.counters(sid)[1])
        if key.endswith("nodes/root.json") and b'"waiting_children"' in data and not state["settle_failed"]:
            state["settle_failed"] = True
            raise StoreError("settle write timed out")
        return real(key, data, version)

    engine.state.swap = swap
    with pytest.raises(StoreError):
        engine.execute_node(*delivery)  # B
    counters = engine.counters(sid)[0]
    assert (counters.nodes, counters.spawns) == (1, {})


def test_giving_up_takes_back_its_own_spawn_and_the_dead_claims():
    engine, d, sid, delivery = _root_with_a_dead_claim()
    real, state = engine.state.swap, {"settle": False, "counters": False}

    def swap(key, data, version):
        if key.endswith("nodes/root.json") and b'"waiting_children"' in data and not state["settle"]:
            state["settle"] = state["counters"] = True
            raise StoreError("settle write timed out")
        if key.endswith("counters.json") and state["counters"]:
            state["counters"] = False
            raise StoreError("counters unavailable")  # the recount fails too
        return real(key, data, version)

    engine.state.swap = swap
    with pytest.raises(StoreError) as err:
        engine.execute_node(*delivery)  # takes over the dead claim, spawns, cannot write
    assert engine.counters(sid)[0].spawns == {"root/0": [2, 2]}
    assert engine.fail_node(sid, delivery[1], "gave up", claim=err.value.claim_attempt)
    counters = engine.counters(sid)[0]
    assert (counters.nodes, counters.spawns) == (1, {})


def test_timestamps_are_iso_utc_to_the_millisecond():
    from datetime import UTC, datetime

    from swarm_core.models import now

    before = datetime.now(UTC)
    stamp = now()
    after = datetime.now(UTC)
    assert len(stamp) == len("2026-12-03T07:51:42.207+00:00") and stamp.endswith("+00:00")
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= datetime.fromisoformat(stamp) <= after
