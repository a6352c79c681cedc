"""200 siblings finishing at the same instant on the file store: the parent resumes exactly once."""

from __future__ import annotations

import threading

from conftest import FANOUT, make_engine
from scripted import default_responder
from test_lifecycle import Recorder

from swarm_core.engine import JOIN_GROUP


def test_200_siblings_finish_at_once_and_parent_resumes_once(tmp_path):
    n = 200
    dispatcher = Recorder()
    engine = make_engine(
        default_responder(subtasks=[f"part {i}" for i in range(n)]),
        store=f"file://{tmp_path}",
        blueprint=FANOUT,
        dispatcher=dispatcher,
    )
    sid, _ = engine.load_goal("Fan out wide")
    engine.execute_node(*dispatcher.queue.pop())
    children, dispatcher.queue = dispatcher.queue, []
    assert len(children) == n
    barrier = threading.Barrier(n)

    def finish(delivery):
        barrier.wait()
        engine.execute_node(*delivery)

    threads = [threading.Thread(target=finish, args=(d,)) for d in children]
    [t.start() for t in threads]
    [t.join() for t in threads]
    resumes = [bp for _, bp in dispatcher.queue if bp.node_id == "root"]
    assert len(resumes) == 1 and resumes[0].round == 1
    assert len(engine.read_join(sid, "root", 0)) == n
    assert engine.state.exists(f"swarms/{sid}/joins/root/0/resumed")
    # the resumed manager hands all 200 reports to its supervisor
    while dispatcher.queue:
        engine.execute_node(*dispatcher.queue.pop(0))
    assert engine.status(sid)["status"] == "done"
    sup = [e for e in engine.events(sid) if e.node_id == "root.1.0" and e.kind == "outcome"][0]
    prompt = sup.llm_calls[0].messages[-1]["content"]
    assert all(f"did part {i}\n" in prompt + "\n" for i in range(n))


def test_a_wide_join_reports_in_groups_and_recovers_a_lost_group_marker(tmp_path):
    """Joins wider than JOIN_GROUP are two-level, so a finishing child lists O(group) keys, not
    O(N); a completer that died before writing its group marker is made good by `resume`."""
    n = 100
    d = Recorder()
    engine = make_engine(default_responder(subtasks=[f"part {i}" for i in range(n)]), store=f"file://{tmp_path}", blueprint=FANOUT, dispatcher=d)
    sid, _ = engine.load_goal("Fan out wide")
    root_delivery = d.queue.pop()
    engine.execute_node(*root_delivery)
    children, d.queue = d.queue, []
    listed: list[int] = []
    real_list = engine.state.list
    engine.state.list = lambda prefix: (keys := real_list(prefix), listed.append(len(keys)))[0]
    most = 0
    for c in children:
        listed.clear()
        engine.execute_node(*c)
        most = max(most, sum(listed))
    engine.state.list = real_list
    groups = -(-n // JOIN_GROUP)
    assert most <= JOIN_GROUP + groups  # not n: each child lists its group, the last ones the group markers
    assert [bp.node_id for _, bp in d.queue] == ["root"]

    def crash():  # the completer of group 1 died before writing its group marker and the resume claim
        engine.state.delete(f"swarms/{sid}/joins/root/0/groups/g1")
        engine.state.delete(f"swarms/{sid}/joins/root/0/resumed")
        d.queue = []

    crash()
    engine.execute_node(*root_delivery)  # a re-delivery of the spawn checks every group
    assert engine.state.exists(f"swarms/{sid}/joins/root/0/groups/g1")
    assert [(bp.node_id, bp.round) for _, bp in d.queue] == [("root", 1)]
    crash()
    engine.resume(sid)
    assert engine.state.exists(f"swarms/{sid}/joins/root/0/groups/g1")
    assert {(bp.node_id, bp.round) for _, bp in d.queue} == {("root", 1)}  # at-least-once, as for a flat join
    engine.resume(sid)
    while d.queue:
        engine.execute_node(*d.queue.pop(0))
    st = engine.status(sid)
    assert st["status"] == "done" and st["usage"]["llm_calls"] == n + 2
    assert len(engine.read_join(sid, "root", 0)) == n
    assert len(engine.nodes(sid)) == n + 2
    assert [e.round for e in engine.events(sid) if e.kind == "outcome" and e.node_id == "root"] == [0, 1, 2]
