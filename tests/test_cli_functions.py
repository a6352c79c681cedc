"""`swarm fn …` and `swarm actions …` as a user runs them: subprocesses, a stub LLM server, exit codes."""

from __future__ import annotations

import json

from scripted import NTH_PRIME, NTH_PRIME_SPEC, NTH_PRIME_TESTS, scripted
from test_cli import swarm
from test_llm_http import http_responder

FACTORY = {"write_code": {"code": NTH_PRIME}, "extract_spec": NTH_PRIME_SPEC, "write_tests": NTH_PRIME_TESTS}


def test_fn_create_list_show_test_run(stub, tmp_path):
    stub.responder = http_responder(scripted(FACTORY))
    store = ["--store", f"file://{tmp_path}"]
    env = {"OPENAI_BASE_URL": stub.base_url}
    created = swarm("fn", "create", "Write a function that returns the n-th prime.", *store, env=env, check=0)
    steps = [line.split(":")[0] for line in created.stderr.splitlines() if line[:2] in ("1/", "2/", "3/", "4/", "5/")]
    assert steps == ["1/5 code", "2/5 spec", "3/5 tests", "4/5 run", "5/5 saved nth_prime v1 (active)"], created.stderr
    assert "Saved function `nth_prime` v1" in created.stdout and "3 LLM calls" in created.stderr
    faster = NTH_PRIME.replace("candidate += 1", "candidate += 1  # next")  # other code: a new version
    stub.responder = http_responder(scripted({**FACTORY, "write_code": {"code": faster}}))
    again = json.loads(swarm("fn", "create", "nth prime again", *store, "--json", env=env, check=0).stdout)
    assert again["version"] == 2 and again["status"] == "active" and again["usage"]["llm_calls"] == 3
    assert [s["step"] for s in again["steps"]] == ["code", "spec", "tests", "run", "saved"]

    listed = json.loads(swarm("fn", "list", *store, "--json", check=0).stdout)["functions"]
    assert [(f["id"], f["version"], f["versions"], f["signature"]) for f in listed] == [("nth_prime", 2, [1, 2], "def nth_prime(n: int) -> int")]
    shown = json.loads(swarm("fn", "show", "nth_prime", "--version", "1", *store, "--json", check=0).stdout)
    assert shown["spec"]["version"] == 1 and shown["code"] == NTH_PRIME and shown["report"]["passed"] == 4
    assert "def nth_prime(n: int) -> int" in swarm("fn", "show", "nth_prime", *store, check=0).stdout
    tested = json.loads(swarm("fn", "test", "nth_prime", *store, "--json", check=0).stdout)
    assert tested["ok"] and tested["report"]["passed"] == 4
    ran = json.loads(swarm("fn", "run", "nth_prime", "--args", '{"n": 100}', *store, "--json", check=0).stdout)
    assert ran["result"] == 541 and ran["version"] == 2 and set(ran) >= {"result", "stdout", "duration_s"}
    assert swarm("fn", "run", "nth_prime", "--args", '{"n": 10}', *store, check=0).stdout.strip() == "29"


def test_fn_create_of_a_draft_exits_1(stub, tmp_path):
    bad = NTH_PRIME.replace("while count < n:", "while count <= n:")
    stub.responder = http_responder(scripted({**FACTORY, "write_code": {"code": bad}, "repair_code": {"code": bad}}))
    out = swarm("fn", "create", "nth prime", "--store", f"file://{tmp_path}", "--json", env={"OPENAI_BASE_URL": stub.base_url}, check=1)
    made = json.loads(out.stdout)
    assert made["status"] == "draft" and made["repairs"] == 3 and made["tests"]["passed"] == 1
    assert "saved as a draft" in made["summary"]
    assert [s["step"] for s in made["steps"]].count("sample") == 4  # fresh drafts before repairs
    shown = swarm("fn", "create", "nth prime", "--store", f"file://{tmp_path}", env={"OPENAI_BASE_URL": stub.base_url}, check=1)
    assert "    draft 4/4: 1/4 passed" in shown.stderr and "    repair 3/3" in shown.stderr, shown.stderr
    tested = swarm("fn", "test", "nth_prime", "--version", "1", "--store", f"file://{tmp_path}", check=1).stdout
    assert tested.count("✗") == 3 and tested.strip().endswith("nth_prime v1: 1/4 passed"), tested
    assert json.loads(swarm("fn", "test", "nth_prime", "--version", "1", "--store", f"file://{tmp_path}", "--json", check=1).stdout)["version"] == 1


def test_fn_errors_exit_with_clear_codes(tmp_path):
    store = ["--store", f"file://{tmp_path}"]
    for args, code, needle in [
        (["fn", "create", "anything"], 2, "no LLM configured"),
        (["fn", "run", "nope"], 2, "unknown function 'nope'"),
        (["fn", "run", "nope", "--args", "{bad"], 2, "--args is not JSON"),
        (["fn", "run", "nope", "--args", "[" * 5000 + "]" * 5000], 2, "--args is nested too deeply"),
        (["fn", "show", "nope"], 2, "unknown function 'nope'"),
        (["fn", "show", "../../swarms/x", "--version", "1"], 2, "unknown function '../../swarms/x'"),  # never a storage key
        (["fn", "run", "a/b", "--version", "1"], 2, "unknown function 'a/b'"),
        (["actions", "rm", "write_text"], 2, "write_text is a built-in"),
        (["actions", "add", "x"], 2, "give --folder, or --spec"),
        (["actions", "add", "x", "--folder"], 2, "needs --description"),
        (["actions", "add", "x", "--spec", "s.json", "--fallback", "write_text"], 2, "--fallback is a folder's"),  # not ignored
        (["actions", "move", "ghost", "software"], 2, "unknown entry 'ghost'"),
    ]:
        proc = swarm(*args, *store)
        assert proc.returncode == code and needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
    assert json.loads(swarm("fn", "run", "nope", *store, "--json").stdout) == {"error": "unknown function 'nope'", "exit_code": 2}


def test_actions_add_wants_a_json_object_in_the_spec_file(tmp_path):
    for text, says in (('"a string"', "--spec must hold a JSON object"), ("[]", "--spec must hold"), ("3", "--spec must hold"),
                       ("[" * 50_000 + "]" * 50_000, "--spec is nested too deeply")):
        (tmp_path / "spec.json").write_text(text)
        proc = swarm("actions", "add", "x", "--spec", str(tmp_path / "spec.json"), "--store", f"file://{tmp_path}", "--json", check=2)
        assert json.loads(proc.stdout)["error"].startswith(says), proc.stdout
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_corrupted_function_version_exits_1_on_every_command(tmp_path):
    store = ["--store", f"file://{tmp_path}"]
    (tmp_path / "inc.json").write_text(json.dumps({"description": "adds one", "type": "python", "entry": "inc", "input_schema": {"type": "object"}}))
    (tmp_path / "inc.py").write_text("def inc(x):\n    return x + 1\n")
    swarm("actions", "add", "inc", "--spec", str(tmp_path / "inc.json"), "--code", str(tmp_path / "inc.py"), *store, check=0)
    (tmp_path / "actions" / "versions" / "inc" / "1.json").write_text('{"spec": ')
    for args in (["fn", "run", "inc", "--args", '{"x": 1}'], ["fn", "show", "inc"], ["fn", "test", "inc"]):
        proc = swarm(*args, *store, "--json")
        assert proc.returncode == 1 and "corrupted actions/versions/inc/1.json" in json.loads(proc.stdout)["error"], (args, proc.stderr)


def test_actions_add_move_rm_tree_validate(tmp_path):
    store = ["--store", f"file://{tmp_path}"]
    (tmp_path / "inc.json").write_text(
        json.dumps(
            {
                "description": "adds one to x",
                "type": "python",
                "entry": "inc",
                "input_schema": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
                "output_schema": {"type": "integer"},
                "tests": [{"name": "one", "args": {"x": 1}, "expected": 2}],
            }
        )
    )
    (tmp_path / "inc.py").write_text("def inc(x: int) -> int:\n    return x + 1\n")
    swarm("actions", "add", "maths", "--folder", "--description", "Arithmetic on [/var/log] list[int]", "--parent", "functions", *store, check=0)
    added = json.loads(swarm("actions", "add", "inc", "--spec", str(tmp_path / "inc.json"), "--code", str(tmp_path / "inc.py"), "--parent", "maths", *store, "--json", check=0).stdout)
    assert added["added"]["handler"] == "swarm_core.actions:run_function"
    dup = swarm("actions", "add", "inc", "--spec", str(tmp_path / "inc.json"), "--code", str(tmp_path / "inc.py"), *store)
    assert dup.returncode == 2 and "already exists" in dup.stderr
    assert swarm("fn", "run", "inc", "--args", '{"x": 41}', *store, check=0).stdout.strip() == "42"
    assert swarm("fn", "test", "inc", *store, check=0).stdout.strip().endswith("inc v1: 1/1 passed")
    tree = json.loads(swarm("actions", "tree", *store, "--json", check=0).stdout)["tree"]
    software = next(n for n in tree if n["id"] == "software")
    functions = next(n for n in software["children"] if n["id"] == "functions")
    assert functions["children"][0]["id"] == "maths" and functions["children"][0]["children"][0]["id"] == "inc"
    text = swarm("actions", "tree", *store, check=0).stdout
    assert "inc python v1" in text and "maths/ Arithmetic on [/var/log] list[int]" in text  # text, not markup
    # piped: each entry one whole line, not cut at 80 columns (the software folder's tags come last)
    assert "software/ Produce or run code: Python functions, scripts, calculations done by … (built-in) · fallback write_python\n" in text
    assert swarm("actions", "rm", "maths", *store).returncode == 2  # not empty
    swarm("actions", "move", "inc", "software", *store, check=0)
    swarm("actions", "rm", "maths", *store, check=0)
    assert json.loads(swarm("actions", "validate", *store, "--json", check=0).stdout) == {"valid": True, "problems": [], "entries": 9}
    space = tmp_path / "actions" / "space.json"
    raw = json.loads(space.read_text())
    raw["entries"]["inc"]["parent"] = "nowhere"
    space.write_text(json.dumps(raw))
    invalid = json.loads(swarm("actions", "validate", *store, "--json", check=1).stdout)
    assert invalid["problems"] == ["inc: parent 'nowhere' is not a folder"]
