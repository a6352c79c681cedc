"""DESIGN.md §5: killing any process at any point loses nothing that was acknowledged, and the
swarm still finishes. Each case kills the worker at the k-th storage operation of a small swarm
(just before it, or just after it took effect), for every k, then recovers the way production
does: `swarm resume`, or the queue redelivering the delivery it never saw acknowledged."""

from __future__ import annotations

import collections

import pytest
from conftest import make_engine
from scripted import default_responder
from test_lifecycle import Recorder

OPS = ("read", "read_versioned", "write", "create", "swap", "list", "delete", "version")


class Died(BaseException):
    """The worker process dies: nothing after this point runs, no handler cleans up."""


def kill_at(store, k: int, after: bool) -> dict:
    """Make the k-th top-level operation on `store` kill the worker; returns the op counter."""
    state = {"n": 0, "armed": True, "depth": 0}

    def wrap(real):
        def op(*args, **kw):
            if not state["armed"] or state["depth"]:
                return real(*args, **kw)
            state["n"] += 1
            hit = state["n"] == k
            if hit and not after:
                state["armed"] = False
                raise Died
            state["depth"] += 1
            try:
                return real(*args, **kw)
            finally:
                state["depth"] -= 1
                if hit:
                    state["armed"] = False
                    raise Died  # noqa: B012 - the write took effect, then the process died

        return op

    for name in OPS:
        setattr(store, name, wrap(getattr(store, name)))
    return state


def basic():
    return default_responder(subtasks=("a", "b"))


def asks():  # one leaf asks the user, who answers
    def respond(messages, schema_name, schema, key):
        if schema_name == "write_text" and key == "root.0.1/0/0":
            return {"report": "", "question": "which?"}
        return default_responder(subtasks=("a", "b"))(messages, schema_name, schema, key)

    return respond


def sequential_routed_repaired():  # step 0 needs a repair, step 1 goes through the router
    def respond(messages, schema_name, schema, key):
        if schema_name == "break_down_goal":
            plan = [{"task": "a", "action": "write_text"}, {"task": "b", "action": "not_an_action"}]
            return {"subtasks": plan, "mode": "sequential", "question": None}
        if schema_name == "write_text" and key == "root.0.0/0/0":
            return "not json"
        return default_responder()(messages, schema_name, schema, key)

    return respond


def sequential_failed_step():  # step 0 fails after its repairs: steps 1 and 2 are cancelled, never run
    def respond(messages, schema_name, schema, key):
        if schema_name == "write_text" and key.startswith("root.0.0/"):
            return "not json"
        return default_responder(subtasks=("a", "b", "c"), mode="sequential")(messages, schema_name, schema, key)

    return respond


def not_done_once():  # the first supervisor asks for another round
    def respond(messages, schema_name, schema, key):
        if schema_name == "supervise" and key.startswith("root.1.0/"):
            return {"done": False, "report": "r", "feedback": "more"}
        return default_responder(subtasks=("a",))(messages, schema_name, schema, key)

    return respond


SHAPES = {
    "basic": (basic, None),
    "asks": (asks, None),
    "sequential": (sequential_routed_repaired, None),
    "failed step": (sequential_failed_step, None),
    "not done": (not_done_once, None),
    "max_llm_calls": (sequential_routed_repaired, {"max_llm_calls": 5}),
    "max_nodes": (basic, {"max_nodes": 3}),
}


def counting(responder):
    made = []

    def respond(messages, schema_name, schema, key):
        made.append(key)
        return responder(messages, schema_name, schema, key)

    respond.made = made
    return respond


def drive(engine, d, sid, lost: list):
    """Deliver everything queued, answering questions; `lost` keeps the delivery in hand."""
    while True:
        while d.queue:
            lost[:] = [d.queue.pop(0)]
            engine.execute_node(*lost[0])
        lost.clear()
        waiting = [n for n in engine.nodes(sid) if n.status == "waiting_user" and n.answer is None]
        if not waiting:
            return
        for n in waiting:
            engine.answer(sid, n.node_id, "the blue one")


def tree(engine, sid):
    return [(n.node_id, n.blueprint.action, n.blueprint.round, n.status, n.error) for n in engine.nodes(sid)]


def run(shape: str, k: int | None, after: bool = False, recover: str = "resume"):
    """One swarm of `shape`, killed at the k-th store operation (None: never). Returns
    (engine, swarm id, calls made, killed, where the kill happened)."""
    factory, budgets = SHAPES[shape]
    responder = counting(factory())
    d = Recorder()
    engine = make_engine(responder, dispatcher=d, budgets=budgets)
    engine.blueprint.dispatcher.lease_seconds = 0  # a redelivery may take a dead claim over at once
    sid, _ = engine.load_goal("Do a thing")
    lost: list = []
    killed = None
    if k is not None:
        killed = kill_at(engine.state, k, after)
    try:
        drive(engine, d, sid, lost)
    except Died:
        if recover == "resume" or not lost:  # a kill inside `answer`: only resume finds it
            engine.resume(sid)
        else:
            d.queue.insert(0, lost[0])  # the queue never saw it acknowledged: it delivers it again
        drive(engine, d, sid, [])
        return engine, sid, responder.made, True
    assert killed is None or killed["n"] < k  # ran to the end before the k-th operation
    return engine, sid, responder.made, False


def _replay(engine, sid, budgets):
    """A replay of the swarm from its history, in a store of its own, answering as the user did."""
    replay = make_engine(lambda *a: pytest.fail("a replay must not call the model"), dispatcher=Recorder(), budgets=budgets)
    replay._transport = engine.replay_transport(sid)
    rid, _ = replay.load_goal(engine.header(sid).goal)
    while replay.dispatcher.queue:
        replay.execute_node(*replay.dispatcher.queue.pop(0))
    return tree(replay, rid)


@pytest.mark.parametrize("recover", ["resume", "redelivery"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_worker_killed_at_any_storage_operation_loses_nothing(shape, recover):
    budgets = SHAPES[shape][1]
    engine, sid, made, _ = run(shape, None)
    baseline = tree(engine, sid)
    expected_outcomes = len([e for e in engine.events(sid) if e.kind == "outcome"])
    assert engine.header(sid).status in ("done", "failed")
    problems = []
    for after in (False, True):
        k = 0
        while True:
            k += 1
            engine, sid, made, killed = run(shape, k, after, recover)
            if not killed:
                break
            at = f"k={k} {'after' if after else 'before'}"
            header, counters, events = engine.header(sid), engine.counters(sid)[0], engine.events(sid)
            if header.status not in ("done", "failed"):
                problems.append(f"{at}: the swarm did not end ({header.status})")
            now = tree(engine, sid)
            other = [t for t in now if t not in baseline]
            # A dead claim may have spent its reserved call, so recovery counts one call more:
            # under a budget that tight, a branch may stop on the budget where it did not before.
            if other and not (budgets and any(t[3] == "failed" and "budget" in (t[4] or "") for t in other)):
                problems.append(f"{at}: a different tree: {other[:2]}")
            # Each node's action ran once per round; a claim killed between its outcome event
            # and its record leaves that one event more, and its round ran again.
            outcomes = collections.Counter((e.node_id, e.round) for e in events if e.kind == "outcome")
            if sum(outcomes.values()) > expected_outcomes + 1:
                problems.append(f"{at}: actions ran more than once: {outcomes}")
            # what a dead claim had made stays counted: at most one call that was never made
            if not len(made) <= counters.llm_calls <= len(made) + 1:
                problems.append(f"{at}: counters say {counters.llm_calls} calls, {len(made)} were made")
            if counters.nodes != len(now):
                problems.append(f"{at}: counters say {counters.nodes} nodes, {len(now)} exist")
            replayed = engine.replay_transport(sid).answers
            if set(replayed) - set(made):
                problems.append(f"{at}: the recording has answers no call got: {set(replayed) - set(made)}")
            ended = [e for e in events if e.kind == "swarm_done"]
            if len(ended) != 1:
                problems.append(f"{at}: {len(ended)} swarm_done events")
            if header.report and not engine.stores.memory.exists(f"reports/{sid}.md"):
                problems.append(f"{at}: the final report was never written")
            if problems:
                continue
            replayed_tree = _replay(engine, sid, budgets)
            if replayed_tree != now:  # the history is enough to replay it
                problems.append(f"{at}: its replay gives another tree: {[t for t in replayed_tree if t not in now][:3]}")
    assert not problems, "\n".join(problems[:10])
