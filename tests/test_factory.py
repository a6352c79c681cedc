"""The function factory and exec_function with a scripted LLM, in and out of a swarm."""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path

import pytest
from conftest import make_engine, run_goal
from scripted import NTH_PRIME, NTH_PRIME_SPEC, NTH_PRIME_TESTS, scripted
from test_llm_http import http_responder

from swarm_core.actions import ActionSpace, ActionSpec
from swarm_core.config import SandboxSettings, load_blueprint
from swarm_core.engine import Engine
from swarm_core.executor import FunctionError, exec_function
from swarm_core.space import SpaceStore
from swarm_core.store import open_store

GOAL = "Write a function that returns the n-th prime and use it to compute the 100th prime."
OFF_BY_ONE = NTH_PRIME.replace("while count < n:", "while count <= n:")  # returns the (n+1)-th prime
FACTORY = {"write_code": {"code": NTH_PRIME}, "extract_spec": NTH_PRIME_SPEC, "write_tests": NTH_PRIME_TESTS}


def create(responder, text="Write a function that returns the n-th prime.", **factory):
    engine = make_engine(responder)
    engine.blueprint.factory = engine.blueprint.factory.model_copy(update=factory)
    steps = []
    record = engine.functions().create(text, progress=lambda step, info: steps.append((step, info)))
    return engine, record, steps


def prompts(engine_or_session, name):
    return [c.messages[-1]["content"] for c in engine_or_session.calls if c.schema_name == name]


# --- create_function ----------------------------------------------------------------


def test_passes_first_time_in_three_calls_and_is_routable_at_once():
    responder = scripted(FACTORY)
    engine, record, steps = create(responder)
    assert record.spec.status == "active" and record.spec.version == 1 and record.repairs == 0
    assert record.report.passed == 4 and record.report.ok
    assert dict(responder.calls) == {"write_code": 1, "extract_spec": 1, "write_tests": 1}
    assert [s for s, _ in steps] == ["code", "spec", "tests", "run", "saved"]
    spec = engine.actions.load().get("nth_prime")
    assert spec.routable and spec.parent == "functions" and spec.type == "python"
    assert spec.input_schema["properties"] == {"n": {"type": "integer"}} and spec.output_schema == {"type": "integer"}
    assert engine.exec_function("nth_prime", {"n": 100}).result == 541
    assert [c["name"] for c in engine.actions.version("nth_prime").spec.tests] == ["first", "sixth", "tenth", "is odd later"]


def test_tests_are_written_from_the_description_not_the_code():
    seen = {}

    def tests(messages, schema_name, schema, key):
        seen["prompt"] = messages[-1]["content"]
        seen["args_schema"] = schema["properties"]["cases"]["items"]["properties"]["args"]
        seen["expected"] = schema["properties"]["cases"]["items"]["properties"]["expected"]
        return NTH_PRIME_TESTS

    create(scripted({**FACTORY, "write_tests": tests}))
    assert "returns the n-th prime" in seen["prompt"] and "def nth_prime(n: int) -> int" in seen["prompt"]
    assert "candidate" not in seen["prompt"]  # nothing of the code's body
    assert seen["args_schema"]["properties"] == {"n": {"type": "integer"}}
    assert "object" not in seen["expected"]["type"]  # any value but an object: it returns an int


def test_numbers_keep_integers_and_a_draft_is_named_after_the_request():
    from swarm_core.llm import model_from_schema

    model = model_from_schema("x", {"type": "object", "properties": {"a": {"type": "number"}}})
    assert model.model_validate({"a": 1}).model_dump() == {"a": 1} and model.model_validate({"a": 1.5}).model_dump() == {"a": 1.5}
    never = {"code": "def gcd(a, b)\n    return 1"}
    _, record, _ = create(scripted({**FACTORY, "write_code": never, "repair_code": never}), "Write `gcd(a, b)` for two integers.")
    assert record.spec.id == "gcd" and record.spec.status == "draft" and "does not parse" in record.summary()


def test_repaired_after_a_failing_test():
    responder = scripted({**FACTORY, "write_code": {"code": OFF_BY_ONE}, "repair_code": {"code": NTH_PRIME}})
    engine, record, steps = create(responder, samples=0)
    assert record.spec.status == "active" and record.repairs == 1 and record.report.ok
    assert record.code == NTH_PRIME
    assert [s for s, _ in steps] == ["code", "spec", "tests", "run", "repair", "run", "saved"]
    assert steps[3][1]["failed"] == 3 and steps[5][1]["failed"] == 0


def test_repair_prompt_carries_the_failures():
    got = []

    def repair(messages, schema_name, schema, key):
        got.append(messages[-1]["content"])
        return {"code": NTH_PRIME}

    create(scripted({**FACTORY, "write_code": {"code": OFF_BY_ONE}, "repair_code": repair}), samples=0)
    assert "first: called with {\"n\": 1}: expected 2, got 3" in got[0]
    assert "while count <= n:" in got[0] and "Keep the signature `def nth_prime(n: int) -> int`" in got[0]


def test_gives_up_as_a_draft_with_the_failing_report():
    responder = scripted({**FACTORY, "write_code": {"code": OFF_BY_ONE}, "repair_code": {"code": OFF_BY_ONE}})
    engine, record, steps = create(responder, max_repairs=2)
    assert record.spec.status == "draft" and record.repairs == 2
    assert responder.calls == {"write_code": 5, "extract_spec": 1, "write_tests": 1, "repair_code": 2}  # 4 fresh drafts
    assert record.report.failed == 3 and "expected 2, got 3" in record.summary()
    assert "saved as a draft (not routable)" in record.summary()
    assert not engine.actions.load().get("nth_prime").routable
    with pytest.raises(FunctionError, match="has only drafts") as err:
        engine.functions().run("nth_prime", {"n": 1})
    assert err.value.usage
    assert engine.functions().run("nth_prime", {"n": 1}, version=1).result == 3  # a draft runs when named


def test_a_fresh_draft_is_tried_before_any_repair():
    responder = scripted({**FACTORY, "write_code": [{"code": OFF_BY_ONE}, {"code": NTH_PRIME}]})
    _, record, steps = create(responder, samples=2)
    assert record.spec.status == "active" and record.code == NTH_PRIME and record.repairs == 0
    assert [s for s, _ in steps] == ["code", "spec", "tests", "run", "sample", "saved"]  # the first passing draft ends it
    assert steps[4][1] == {"draft": 1, "passed": 4, "failed": 0, "error": None}


def test_drafts_that_agree_beat_expected_values_that_are_wrong():
    """The model's tests expect wrong values, so nothing passes; of the drafts, the two that
    return the same values on every input are kept over the one that raises and the loner."""
    wrong_tests = {"cases": [{"name": f"n={n}", "args": {"n": n}, "expected": 7919, "assertion": None} for n in (1, 2, 3)]}
    other_prime = NTH_PRIME.replace('"""The', '"""Other text, same values: the')
    raising = "def nth_prime(n: int) -> int:\n    return undefined_name\n"
    drafts = [{"code": raising}, {"code": OFF_BY_ONE}, {"code": NTH_PRIME}, {"code": other_prime}]
    responder = scripted({**FACTORY, "write_tests": wrong_tests, "write_code": drafts, "repair_code": {"code": raising}})
    _, record, steps = create(responder, samples=3, max_repairs=1)
    assert record.code == NTH_PRIME and record.spec.status == "draft" and record.report.passed == 0
    assert [c.actual for c in record.report.cases] == [2, 3, 5]
    assert [s for s, _ in steps].count("sample") == 3 and responder.calls["repair_code"] == 1


def test_a_repair_that_agrees_with_the_drafts_does_not_displace_the_first_of_them():
    from swarm_core.factory import Candidate, choose
    from swarm_core.sandbox import CaseResult, TestReport

    spec = ActionSpec(id="f", name="f", description="d", type="python")

    def candidate(code, actuals, draft=True):
        cases = [CaseResult(name=str(i), passed=i == 0, actual=a) for i, a in enumerate(actuals)]
        return Candidate(code, spec, TestReport(cases=cases, passed=1, failed=len(cases) - 1), draft)

    pool = [candidate("first", [[], []]), candidate("raises", [None, None]), candidate("second", [[], []]), candidate("repair", [[], []], draft=False)]
    assert choose(pool).code == "first"
    assert choose(pool[1:]).code == "second"  # agreement outranks order: "raises" came first
    # a repair of "second" agreeing with it adds no vote: one draft each, so the earlier one wins
    split = [candidate("first", [[1], [1]]), candidate("second", [[2], [2]]), candidate("repair", [[2], [2]], draft=False)]
    assert choose(split).code == "first"


def test_code_can_be_answered_as_a_markdown_block():
    seen = []

    def write(messages, schema_name, schema, key):
        seen.append(messages[-1]["content"])
        return f"Sure! Here is the function:\n```python\n{NTH_PRIME}```\nIt loops over candidates."

    _, record, _ = create(scripted({**FACTORY, "write_code": write}), code_answer="text")
    assert record.code == NTH_PRIME and record.spec.status == "active"
    assert seen[0].rstrip().endswith("Answer with the complete code in one ```python block.")


def test_example_calls_around_the_function_are_dropped():
    chatty = f"import math\nLIMIT = 10\n{NTH_PRIME}\nprint(nth_prime(3))\nassert nth_prime(1) == 2\nx = nth_prime(2)\nif __name__ == '__main__':\n    print(x)\n"
    _, record, _ = create(scripted({**FACTORY, "write_code": {"code": chatty}}))
    assert record.code == f"import math\nLIMIT = 10\n{NTH_PRIME}" and record.spec.status == "active"


def test_code_that_does_not_parse_is_repaired_before_anything_else():
    responder = scripted({**FACTORY, "write_code": {"code": "def nth_prime(n: int) -> int\n    return 2"}, "repair_code": {"code": NTH_PRIME}})
    _, record, steps = create(responder)
    assert record.spec.status == "active" and record.repairs == 1
    assert steps[1] == ("repair", {"round": 1, "problem": "the code does not parse: expected ':' (line 1)"})


def test_the_code_signature_wins_over_a_wrong_description_and_fences_are_stripped():
    wrong = {**NTH_PRIME_SPEC, "args": {"n": "string"}, "returns": "string"}
    fenced = {"code": f"```python\n{NTH_PRIME}```"}
    _, record, _ = create(scripted({**FACTORY, "write_code": fenced, "extract_spec": wrong}))
    spec = record.spec
    assert (spec.id, spec.entry) == ("nth_prime", "nth_prime") and record.code == NTH_PRIME
    assert spec.input_schema["properties"]["n"] == {"type": "integer"} and spec.output_schema == {"type": "integer"}


def test_spec_call_is_shaped_by_the_code_and_tests_overrule_a_described_type():
    code = "def helper(x):\n    return x\n\ndef nth_prime(n, start=2):\n    return helper(541)\n"
    seen = {}

    def spec(messages, schema_name, schema, key):
        seen.update(schema["properties"])
        return {"name": "nth_prime", "description": "n-th prime", "args": {"n": "integer", "start": "integer"}, "returns": "string"}

    _, record, _ = create(scripted({**FACTORY, "write_code": {"code": code}, "extract_spec": spec, "write_tests": {"cases": [
        {"name": "ok", "args": {"n": 100}, "expected": 541, "assertion": None},
        {"name": "not an assertion", "args": {"n": 1}, "expected": None, "assertion": "NoneType"},
    ]}}))
    assert seen["name"]["enum"] == ["nth_prime", "helper"]  # the guess (named in the request) first
    assert list(seen["args"]["properties"]) == ["n", "start"] and seen["args"]["additionalProperties"] is False
    spec = record.spec
    assert spec.input_schema["required"] == ["n"] and spec.input_schema["properties"]["start"] == {"type": "integer"}
    assert [c["name"] for c in spec.tests] == ["ok", "not an assertion"] and "assertion" not in spec.tests[1]
    assert spec.status == "active" and spec.output_schema == {}  # "string" was contradicted by the result 541


def test_a_second_creation_is_a_new_version_unless_it_wrote_the_same_function():
    store = f"memory://{uuid.uuid4().hex}"
    first = make_engine(scripted(FACTORY), store=store).functions().create("nth prime")
    same = make_engine(scripted(FACTORY), store=store).functions().create("nth prime, again")
    assert same == first  # the same code and spec: the version already saved
    faster = NTH_PRIME.replace("candidate += 1", "candidate += 1  # next")
    engine = make_engine(scripted({**FACTORY, "write_code": {"code": faster}}), store=store)
    second = engine.functions().create("nth prime, faster")
    assert (first.spec.version, second.spec.version) == (1, 2) and engine.actions.version("nth_prime", 1) == first
    assert engine.actions.load().get("nth_prime").version == 2 and engine.actions.versions("nth_prime") == [1, 2]


def test_a_different_function_with_a_taken_name_gets_its_own_id():
    """Two requests whose code is both `def solve(...)`: the second takes other arguments, so it is
    another function, saved as `solve_2`; `solve` keeps its code, card and routing."""

    def made(code: str, args: dict, case: dict):
        spec = {"name": "solve", "description": "solve it", "args": args, "returns": "any"}
        return scripted({"write_code": {"code": code}, "extract_spec": spec, "write_tests": {"cases": [case]}})

    current = [made("def solve(n: int) -> int:\n    return n * 2\n", {"n": "integer"}, {"name": "a", "args": {"n": 2}, "expected": 4, "assertion": None})]
    engine = make_engine(lambda *a: current[0](*a))
    first = engine.functions().create("double n")
    current[0] = made("def solve(items: list) -> int:\n    return len(items)\n", {"items": "array"}, {"name": "b", "args": {"items": [1, 2]}, "expected": 2, "assertion": None})
    other = engine.functions().create("count the items")
    again = engine.functions().create("count the items, again")  # the same arguments: the same function
    assert (first.spec.id, other.spec.id, again.spec.id) == ("solve", "solve_2", "solve_2")
    assert again == other and engine.actions.versions("solve") == [1]  # the same code too: its version
    assert engine.exec_function("solve", {"n": 5}).result == 10 and engine.exec_function("solve_2", {"items": [1, 2, 3]}).result == 3


def test_a_function_named_like_the_root_or_a_folder_is_saved_under_another_id():
    from swarm_core.space import folder

    for name in ("root", "maths"):  # `def root(x)` for a square root; a folder the deployment added
        code = f"def {name}(x: float) -> float:\n    return x ** 0.5\n"
        spec = {"name": name, "description": "square root", "args": {"x": "number"}, "returns": "number"}
        tests = {"cases": [{"name": "four", "args": {"x": 4}, "expected": 2, "assertion": None}]}
        engine = make_engine(scripted({"write_code": {"code": code}, "extract_spec": spec, "write_tests": tests}))
        engine.actions.add(folder("maths", "maths functions", parent="software"))
        record = engine.functions().create(f"Write {name}(x), the square root of x.")
        assert (record.spec.id, record.spec.status) == (f"{name}_fn", "active")
        assert engine.exec_function(f"{name}_fn", {"x": 9}).result == 3


# --- exec_function --------------------------------------------------------------------


def test_exec_function_validates_args_and_result():
    engine = make_engine(scripted(FACTORY))
    engine.functions().create("nth prime")
    run = engine.functions().run
    result = run("nth_prime", {"n": 10})
    assert (result.result, result.version, result.stdout) == (29, 1, "") and result.duration_s > 0
    for args, needle in [({"n": "x"}, "arguments at n: 'x' is not of type 'integer'"), ({}, "'n' is a required property"), ({"n": 1, "m": 2}, "Additional properties")]:
        with pytest.raises(FunctionError, match=needle) as err:
            run("nth_prime", args)
        assert err.value.usage
    with pytest.raises(FunctionError, match="unknown function 'nope'"):
        run("nope", {})
    with pytest.raises(FunctionError, match="has no version 9"):
        run("nth_prime", {"n": 1}, version=9)


def test_exec_function_runs_python_llm_and_builtin_actions():
    space = SpaceStore(
        open_store("memory://exec-kinds"),
        ActionSpace(
            {
                "capwords": ActionSpec(
                    id="capwords", name="capwords", description="Title-case", type="builtin", entry="string:capwords",
                    input_schema={"type": "object", "properties": {"s": {"type": "string"}}}, output_schema={"type": "string"},
                )
            }
        ),
    )
    settings = SandboxSettings()
    assert exec_function(space, "capwords", {"s": "hello world"}, sandbox=settings).result == "Hello World"
    # main(input) style, printing, and a result that breaks the declared type
    code = "def main(input: dict) -> int:\n    print('summing', input)\n    return sum(input['xs'])\n"
    schema = {"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "integer"}}}}
    space.add(ActionSpec(id="total", name="total", description="sum", type="python", input_schema=schema, output_schema={"type": "integer"}), code=code)
    out = exec_function(space, "total", {"xs": [1, 2, 3]}, sandbox=settings)
    assert out.result == 6 and out.stdout == "summing {'xs': [1, 2, 3]}\n"
    space.new_version(space.version("total").spec.model_copy(update={"output_schema": {"type": "string"}}), code=code)
    with pytest.raises(FunctionError, match="returned a bad result: result: 6 is not of type 'string'") as err:
        exec_function(space, "total", {"xs": [1, 2, 3]}, sandbox=settings)
    assert not err.value.usage and "summing" in err.value.stdout
    space.add(ActionSpec(id="boom", name="boom", description="raises", type="python"), code="def main():\n    raise ValueError('no')\n")
    with pytest.raises(FunctionError, match="boom v1 failed: ValueError: no"):
        exec_function(space, "boom", {}, sandbox=settings)
    # an llm action is one structured call
    from swarm_core.llm import FunctionTransport, LLMSession, LLMSettings

    space.add(
        ActionSpec(
            id="greet", name="greet", description="greets", type="llm", prompt="Greet {{who}}.",
            input_schema={"type": "object", "properties": {"who": {"type": "string"}}, "required": ["who"]},
            output_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        )
    )
    llm = LLMSession(FunctionTransport(lambda m, n, s, k: {"text": m[-1]["content"].replace("Greet", "Hello")}), LLMSettings(), "t/0")
    assert exec_function(space, "greet", {"who": "Ada"}, sandbox=settings, llm=llm).result == {"text": "Hello Ada."}
    space.add(  # an argument's name may have capitals and digits, as a Python argument's may
        ActionSpec(
            id="greet2", name="greet2", description="greets two", type="llm", prompt="Greet {{who2}} and {{Other}}.",
            input_schema={"type": "object", "properties": {"who2": {"type": "string"}, "Other": {"type": "string"}}},
            output_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        )
    )
    assert exec_function(space, "greet2", {"who2": "Ada", "Other": "Bo"}, sandbox=settings, llm=llm).result == {"text": "Hello Ada and Bo."}


# --- in the swarm -------------------------------------------------------------------------


def echo_supervisor(messages, schema_name, schema, key):
    """A supervisor that says done and passes the subtasks' reports on, as a real one would."""
    reports = messages[-1]["content"].split("Results of its subtasks:", 1)[1]
    return {"done": True, "report": reports.strip(), "feedback": ""}


def nth_prime_swarm_script(**extra):
    return scripted(
        {
            **FACTORY,
            "break_down_goal": {
                "subtasks": [
                    {"task": "Write a function that returns the n-th prime.", "action": "write_python"},
                    {"task": "Use the n-th prime function to compute the 100th prime.", "action": None},
                ],
                "mode": "sequential",
                "question": None,
            },
            "route": lambda m, n, schema, k: {
                "choice": next(o for o in ("software", "functions", "nth_prime") if o in schema["properties"]["choice"]["enum"]),
                "reason": "",
            },
            "apply_function": {"apply": False, "args": {"n": 1}},
            "function_args": {"args": {"n": 100}},
            "supervise": echo_supervisor,
            **extra,
        }
    )


def test_goal_nth_prime_saves_the_function_and_reports_541():
    engine = make_engine(nth_prime_swarm_script())
    sid = run_goal(engine, GOAL)
    st = engine.status(sid)
    assert st["status"] == "done" and "`nth_prime(n=100)` = `541`" in st["report"]
    saved = engine.actions.version("nth_prime")
    assert saved.spec.status == "active" and saved.report.ok and saved.request.startswith("Write a function")
    nodes = {n.node_id: n for n in engine.nodes(sid)}
    assert "Saved function `nth_prime` v1" in nodes["root.0.0"].report
    assert nodes["root.0.1.0.0"].blueprint.action == "nth_prime" and nodes["root.0.1.0.0"].data["result"] == 541
    # every factory call is in the node's history, so the swarm replays offline
    calls = [c.schema_name for e in engine.events(sid) if e.node_id == "root.0.0" for c in e.llm_calls]
    assert calls == ["write_code", "extract_spec", "write_tests", "apply_function"]


def test_a_replay_saves_no_second_version_of_the_function_its_original_wrote():
    """The replay writes the same code with the same spec: that is the version already saved,
    not a new one, so the replay's reports are its original's ("v1", not "v2")."""
    engine = make_engine(nth_prime_swarm_script())
    sid = run_goal(engine, GOAL)
    rid, _ = engine.load_goal(GOAL, llm_source=f"replay:{sid}", replay_of=sid)
    assert engine.dispatcher.wait(30) and engine.status(rid)["status"] == "done"
    assert engine.actions.versions("nth_prime") == [1]
    reports = lambda s: [(n.node_id, n.report) for n in engine.nodes(s)]
    assert reports(rid) == reports(sid)


def test_one_write_python_leaf_can_both_create_and_apply():
    responder = nth_prime_swarm_script(
        break_down_goal={"subtasks": [{"task": GOAL, "action": "write_python"}], "mode": "parallel", "question": None},
        apply_function={"apply": True, "args": {"n": 100}},
    )
    engine = make_engine(responder)
    sid = run_goal(engine, GOAL)
    leaf = {n.node_id: n for n in engine.nodes(sid)}["root.0.0"]
    assert leaf.data == {"function": "nth_prime", "version": 1, "args": {"n": 100}, "result": 541}
    assert "541" in engine.status(sid)["report"]


def test_a_draft_fails_its_node_with_the_report_and_the_swarm_goes_on():
    responder = nth_prime_swarm_script(repair_code={"code": OFF_BY_ONE}, write_code={"code": OFF_BY_ONE})
    engine = make_engine(responder)
    engine.blueprint.factory = engine.blueprint.factory.model_copy(update={"max_repairs": 1})
    sid = run_goal(engine, GOAL)
    nodes = {n.node_id: n for n in engine.nodes(sid)}
    assert nodes["root.0.0"].status == "failed" and "saved as a draft" in nodes["root.0.0"].error
    assert "expected 2, got 3" in nodes["root.0.0"].error
    assert nodes["root.0.1"].status == "cancelled" and engine.status(sid)["status"] == "done"


SECRET = "sk-test-do-not-leak-0123456789"


def test_secrets_in_the_worker_never_reach_a_created_function(monkeypatch):
    for name in ("OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "AZURE_OPENAI_API_KEY", "SWARM_API_TOKEN"):
        monkeypatch.setenv(name, SECRET)
    code = "import os\n\ndef environment() -> dict:\n    print(sorted(os.environ))\n    return dict(os.environ)\n"
    responder = nth_prime_swarm_script(
        break_down_goal={"subtasks": [{"task": "Show the environment", "action": "write_python"}], "mode": "parallel", "question": None},
        write_code={"code": code},
        extract_spec={**NTH_PRIME_SPEC, "name": "environment", "args": {}, "returns": "object"},
        write_tests={"cases": [{"name": "runs", "args": {}, "expected": None, "assertion": "isinstance(result, dict)"}]},
        apply_function={"apply": True, "args": {}},
    )
    engine = make_engine(responder)
    sid = run_goal(engine, "Show the environment")
    leaf = {n.node_id: n for n in engine.nodes(sid)}["root.0.0"]
    assert leaf.status == "done" and "PATH" in leaf.data["result"]
    assert not any(SECRET in str(v) or "OPENAI" in k or "AWS" in k for k, v in leaf.data["result"].items())
    store = engine.state
    assert not [k for k in store.list("") if SECRET.encode() in store.read(k)]  # nowhere in storage either


def test_a_created_function_cannot_read_the_file_stores(readable_folder):
    # Outside /tmp, like the default ./.swarm: the stores' files are readable by any user.
    folder = str(readable_folder)
    engine = make_engine(
        scripted(
            {
                "write_code": {"code": "def peek(path: str) -> str:\n    return open(path).read()\n"},
                "extract_spec": {**NTH_PRIME_SPEC, "name": "peek", "args": {"path": "string"}, "returns": "string"},
                "write_tests": {"cases": [{"name": "reads", "args": {"path": f"{folder}/x"}, "expected": None, "assertion": "len(result) > 0"}]},
            }
        ),
        store=f"file://{folder}",
    )
    engine.blueprint.factory = engine.blueprint.factory.model_copy(update={"max_repairs": 0, "samples": 0})
    engine.state.write("x", SECRET.encode())
    made = engine.functions().create("Write peek(path) that returns a file's text.")
    assert made.spec.status == "draft" and SECRET not in made.report.model_dump_json()
    with pytest.raises(FunctionError) as failed:
        engine.exec_function("peek", {"path": f"{folder}/x"}, version=1)
    assert SECRET not in str(failed.value) and SECRET not in failed.value.stdout


ATTACKS = {
    "loop forever": ("def attack(n: int) -> int:\n    while True:\n        pass\n", "longer than 1 s"),
    "allocate 8 GB": ("def attack(n: int) -> int:\n    return len(bytearray(8 * 1024 ** 3))\n", "MemoryError"),
    "fork bomb": ("import os\n\ndef attack(n: int) -> int:\n    while True:\n        os.fork()\n", "BlockingIOError"),
    "print the environment": ("import os\n\ndef attack(n: int) -> int:\n    print(dict(os.environ))\n    return 1\n", None),
    "write to ../": ("def attack(n: int) -> int:\n    open('../escaped.txt', 'w').write('x')\n    return 1\n", "writing outside the working directory is not allowed"),
    "import a package not allowed": ("import requests\n\ndef attack(n: int) -> int:\n    return 1\n", "'requests' is not on the blueprint's allow-list"),
}


def test_hostile_code_is_contained_reported_and_the_swarm_goes_on(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)

    def write_code(messages, schema_name, schema, key):
        request = messages[-1]["content"].split("request:\n\n", 1)[1].split("\n")[0]
        return {"code": ATTACKS[request][0]}

    responder = scripted(
        {
            "break_down_goal": {"subtasks": [{"task": t, "action": "write_python"} for t in ATTACKS], "mode": "parallel", "question": None},
            "write_code": write_code,
            "extract_spec": {**NTH_PRIME_SPEC, "name": "attack"},
            "write_tests": {"cases": [{"name": "one", "args": {"n": 1}, "expected": 1, "assertion": None}]},
            "apply_function": {"apply": False, "args": {"n": 1}},
            "supervise": echo_supervisor,
        }
    )
    engine = make_engine(responder)
    engine.blueprint.factory = engine.blueprint.factory.model_copy(update={"max_repairs": 0})
    engine.blueprint.sandbox = engine.blueprint.sandbox.model_copy(update={"case_timeout_s": 1, "memory_mb": 256, "max_procs": 16})
    sid = run_goal(engine, "Attack the sandbox")
    leaves = {n.blueprint.input["task"]: n for n in engine.nodes(sid) if n.node_id.startswith("root.0.")}
    printed = leaves.pop("print the environment")
    assert printed.status == "done"  # harmless: it printed what the sandbox gave it
    stdout = engine.actions.version("attack", printed.data["version"]).report.cases[0].stdout
    assert "PATH" in stdout and SECRET not in stdout and "OPENAI" not in stdout
    for task, (_, needle) in ATTACKS.items():
        if task not in leaves:
            continue
        assert leaves[task].status == "failed", task
        assert "saved as a draft" in leaves[task].error and needle in leaves[task].error, (task, leaves[task].error)
        assert SECRET not in leaves[task].error
    assert engine.status(sid)["status"] == "done" and not engine.dispatcher.errors
    assert not list(Path(tempfile.gettempdir()).glob("escaped.txt")) and not Path("../escaped.txt").exists()
    assert engine.actions.validate() == []


def test_swarm_through_the_real_openai_sdk_against_the_stub(stub, tmp_path):
    stub.responder = http_responder(nth_prime_swarm_script())
    bp = load_blueprint()
    bp.stores.state = f"file://{tmp_path}"
    bp.llm = bp.llm.model_copy(update={"base_url": stub.base_url, "model": "stub-model", "max_retries": 0})
    engine = Engine(bp)
    sid = run_goal(engine, GOAL)
    st = engine.status(sid)
    assert st["status"] == "done" and "= `541`" in st["report"], st
    names = [req["response_format"]["json_schema"]["name"] for req in stub.requests]
    assert {"write_code", "extract_spec", "write_tests", "route", "function_args"} <= set(names)
    assert st["usage"]["llm_calls"] == len(stub.requests) and st["usage"]["prompt_tokens"] == 100 * len(stub.requests)
    assert json.loads((tmp_path / "actions" / "space.json").read_text())["entries"]["nth_prime"]["version"] == 1


def test_function_benchmark_quick_checks_the_pipeline():
    from benchmarks.functions.run import main

    summary = main(["--quick", "--limit", "8", "--json"])
    assert summary["one_shot"]["pass_rate"] == 50.0 and summary["factory"]["pass_rate"] == 100.0
    # even tasks: code, spec, tests; odd ones also 4 fresh drafts (the stub again) and 1 repair
    assert summary["factory"]["calls_per_function"] == 5.5 and summary["one_shot"]["calls_per_function"] == 1
    assert summary["factory"]["tokens_per_function"] > summary["one_shot"]["tokens_per_function"] > 0
