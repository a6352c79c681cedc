"""The action space: stored operations and their validation, and the hierarchical router over it."""

from __future__ import annotations

import json
import threading

import pytest
from conftest import make_engine, run_goal
from scripted import default_responder, scripted, task_of

from swarm_core.actions import ActionSpec
from swarm_core.space import SPACE_KEY, SpaceError, folder, space_tree, version_key

ADD = "def main(x: int) -> int:\n    return x + {k}\n"


def py(entry_id: str, description: str = "", *, parent: str = "root", code_k: int = 1, **kw) -> tuple[ActionSpec, str]:
    fields = {
        "name": entry_id,
        "input_schema": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
        "output_schema": {"type": "integer"},
        **kw,
    }
    spec = ActionSpec(id=entry_id, description=description or f"adds {code_k} to x", type="python", parent=parent, **fields)
    return spec, ADD.format(k=code_k)


def add_py(space, entry_id, **kw):
    spec, code = py(entry_id, **kw)
    return space.add(spec, code=code)


# --- operations and validation ------------------------------------------------------


def test_add_move_remove_with_validation():
    space = make_engine().actions
    space.add(folder("maths", "Arithmetic"))
    add_py(space, "plus_one", parent="maths")
    assert space.load().get("plus_one").routable and space.version("plus_one").code.startswith("def main")
    bad = [
        (lambda: add_py(space, "plus_one"), "already exists"),
        (lambda: add_py(space, "write_text"), "built-in id"),
        (lambda: add_py(space, "Bad-Id"), "id must match"),
        (lambda: add_py(space, "orphan", parent="nowhere"), "parent 'nowhere' is not a folder"),
        (lambda: add_py(space, "in_action", parent="plus_one"), "parent 'plus_one' is not a folder"),
        (lambda: add_py(space, "twin", parent="maths", name="PLUS_ONE"), "name 'PLUS_ONE' is already used by 'plus_one'"),
        (lambda: add_py(space, "schema", output_schema={"type": "integr"}), "output_schema is not valid JSON Schema"),
        (lambda: space.add(ActionSpec(id="native", name="n", description="d", type="builtin", entry="os:system")), "only the blueprint"),
        (lambda: space.add(ActionSpec(id="nocode", name="n", description="d", type="python")), "needs its code"),
        (lambda: space.move("plus_one", "writing_nope"), "is not a folder"),
        (lambda: space.move("write_text", "maths"), "built-in"),
        (lambda: space.remove("maths"), "not empty: move or remove plus_one"),
        (lambda: space.remove("software"), "built-in"),
        (lambda: space.remove("ghost"), "unknown entry"),
        (lambda: space.add(folder("loop", "x", fallback="write_text_nope")), "fallback 'write_text_nope' is not a routable action"),
    ]
    for op, needle in bad:
        with pytest.raises(SpaceError, match=needle):
            op()
    space.add(folder("inner", "Nested", parent="maths"))
    with pytest.raises(SpaceError, match="inside itself"):
        space.move("maths", "inner")
    space.move("plus_one", "software")
    assert space.load().entries["plus_one"].parent == "software"
    space.remove("inner")
    space.remove("plus_one")
    assert "plus_one" not in space.load().entries and space.versions("plus_one") == [1]  # versions are kept
    assert space.validate() == []


def test_versions_are_immutable_and_only_active_ones_run_by_default():
    space = make_engine().actions
    v1 = space.new_version(*py("inc", code_k=1)[:1], code=ADD.format(k=1))
    first = space.store.read(version_key("inc", 1))
    v2 = space.new_version(py("inc", code_k=2)[0], code=ADD.format(k=2))
    draft = space.new_version(py("inc", code_k=3)[0].model_copy(update={"status": "draft"}), code=ADD.format(k=3))
    assert (v1.spec.version, v2.spec.version, draft.spec.version) == (1, 2, 3)
    assert space.store.read(version_key("inc", 1)) == first  # later versions leave v1's bytes alone
    card = space.load().get("inc")
    assert card.version == 2 and card.status == "active"  # a draft does not replace an active version
    assert space.version("inc", 3).spec.status == "draft" and space.versions("inc") == [1, 2, 3]
    # an action with only drafts shows its draft, which the router never offers
    space.new_version(py("wip")[0].model_copy(update={"status": "draft"}), code=ADD.format(k=0))
    assert space.load().get("wip").status == "draft"
    assert "wip" not in [e.id for e in space.load().children("root")]


def test_concurrent_adds_and_versions_lose_nothing(tmp_path):
    space = make_engine(store=f"file://{tmp_path}").actions
    barrier = threading.Barrier(16)

    def worker(i):
        barrier.wait()
        if i % 2:
            add_py(space, f"fn_{i}")
        else:
            space.new_version(py("shared")[0], code=ADD.format(k=i))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    own = space.own()
    assert {f"fn_{i}" for i in range(1, 16, 2)} <= set(own)
    assert space.versions("shared") == list(range(1, 9)) and own["shared"].version == 8
    assert space.validate() == []


def test_validate_reports_what_does_not_resolve():
    space = make_engine().actions
    add_py(space, "ok")
    add_py(space, "broken")
    raw = json.loads(space.store.read(SPACE_KEY))
    raw["entries"]["broken"]["version"] = 7  # a card pointing at a version that does not exist
    raw["entries"]["write_text"] = raw["entries"]["ok"] | {"id": "write_text", "name": "shadow"}
    raw["entries"]["ok"]["entry"] = "missing"
    space.store.write(SPACE_KEY, json.dumps(raw).encode())
    problems = "\n".join(space.validate())
    assert "broken: broken has no version 7; it has [1]" in problems
    assert "write_text: a stored entry has the id of a built-in" in problems
    assert "ok: v1 code defines no function 'missing'" in problems
    assert space.load().get("write_text").type == "llm"  # the built-in wins


def test_tree_lists_folders_with_children():
    space = make_engine().actions
    add_py(space, "inc", parent="functions")
    nodes = {n["id"]: n for n in space_tree(space.load())}
    software = {c["id"]: c for c in nodes["software"]["children"]}
    assert software["functions"]["children"][0]["id"] == "inc" and software["functions"]["builtin"]
    assert not software["functions"]["children"][0]["builtin"]


# --- the hierarchical router --------------------------------------------------------

AREAS, SUBS, OPS = 4, 5, 6  # 120 actions, three levels below the root


def big_space(engine):
    space = engine.actions
    for a in range(AREAS):
        space.add(folder(f"area_{a}", f"Area {a}: operations of family {a}"))
        for s in range(SUBS):
            space.add(folder(f"area_{a}_sub_{s}", f"Family {a}, group {s}", parent=f"area_{a}"))
            for o in range(OPS):
                add_py(space, f"op_{a}_{s}_{o}", parent=f"area_{a}_sub_{s}", code_k=100 * a + 10 * s + o, description=f"op {a}.{s}.{o}")
    return space


def router_for(target: str):
    """Pick the option on the path to `target` (op_A_S_O): area_A, then area_A_sub_S, then the op."""
    _, a, s, _ = target.split("_")

    def route(messages, schema_name, schema, key):
        options = schema["properties"]["choice"]["enum"]
        for want in (target, f"area_{a}_sub_{s}", f"area_{a}"):
            if want in options:
                return {"choice": want, "reason": "on the path"}
        return {"choice": "none", "reason": "nothing fits"}

    return route


def test_router_walks_120_actions_in_three_small_calls():
    responder = scripted(
        {
            "break_down_goal": {"subtasks": [{"task": "apply op 2.3.4 to 5", "action": None}], "mode": "parallel", "question": None},
            "route": router_for("op_2_3_4"),
            "function_args": {"args": {"x": 5}},
        }
    )
    engine = make_engine(responder)
    space = big_space(engine)
    assert sum(e.kind == "action" for e in space.own().values()) == 120 and space.validate() == []
    sid = run_goal(engine, "Use the operations")
    assert responder.calls["route"] == 3  # O(depth): one call per level, not one per action
    route_calls = [c for e in engine.events(sid) for c in e.llm_calls if c.schema_name == "route"]
    assert max(c.messages[-1]["content"].count("\n- ") for c in route_calls) <= 7  # each call lists one level
    node = {n.node_id: n for n in engine.nodes(sid)}["root.0.0.0.0"]
    assert node.blueprint.action == "op_2_3_4" and node.data["result"] == 5 + 234
    assert "`op_2_3_4(x=5)` = `239`" in node.report
    assert engine.status(sid)["status"] == "done"


def test_router_nothing_fits_in_software_creates_a_function_at_the_top_writes_text():
    from scripted import NTH_PRIME, NTH_PRIME_SPEC, NTH_PRIME_TESTS

    def route(messages, schema_name, schema, key):
        options = schema["properties"]["choice"]["enum"]
        if "software" in options:  # the top level
            return {"choice": "software" if "prime" in task_of(messages) else "none", "reason": ""}
        return {"choice": "none", "reason": "no saved function computes primes"}

    responder = scripted(
        {
            "break_down_goal": {
                "subtasks": [{"task": "the 10th prime", "action": None}, {"task": "a limerick", "action": None}],
                "mode": "parallel",
                "question": None,
            },
            "route": route,
            "write_code": {"code": NTH_PRIME},
            "extract_spec": NTH_PRIME_SPEC,
            "write_tests": NTH_PRIME_TESTS,
            "apply_function": {"apply": True, "args": {"n": 10}},
        }
    )
    engine = make_engine(responder)
    add_py(engine.actions, "inc", parent="functions")  # something to refuse at the Software level
    sid = run_goal(engine)
    nodes = {n.node_id: n for n in engine.nodes(sid)}
    assert nodes["root.0.0.0.0"].blueprint.action == "write_python" and nodes["root.0.0.0.0"].data["result"] == 29
    assert nodes["root.0.1.0.0"].blueprint.action == "write_text"
    assert engine.actions.load().get("nth_prime").routable  # saved: the next swarm can route to it


def test_a_function_added_while_the_engine_runs_is_routable_at_once():
    responder = scripted(
        {
            "break_down_goal": {"subtasks": [{"task": "add one to 41", "action": None}], "mode": "parallel", "question": None},
            "route": lambda m, n, schema, k: {"choice": next(o for o in ("software", "functions", "plus_one") if o in schema["properties"]["choice"]["enum"]), "reason": ""},
            "function_args": {"args": {"x": 41}},
        }
    )
    engine = make_engine(responder)
    assert "functions" not in [e.id for e in engine.actions.load().children("software")]  # empty: not offered
    add_py(engine.actions, "plus_one", parent="functions")
    sid = run_goal(engine)
    assert [n.data for n in engine.nodes(sid) if n.blueprint.action == "plus_one"][0]["result"] == 42
    assert responder.calls["route"] == 3


def test_planner_lists_builtins_only_and_may_still_name_a_saved_function():
    prompts = []

    def plan(messages, schema_name, schema, key):
        prompts.append(messages[-1]["content"])
        return {"subtasks": [{"task": "add one to 1", "action": "plus_one"}], "mode": "parallel", "question": None}

    engine = make_engine(scripted({"break_down_goal": plan, "function_args": {"args": {"x": 1}}}, default_responder()))
    add_py(engine.actions, "plus_one", parent="functions")
    sid = run_goal(engine)
    assert "- write_text:" in prompts[0] and "plus_one" not in prompts[0]
    assert {n.node_id: n for n in engine.nodes(sid)}["root.0.0"].data["result"] == 2
