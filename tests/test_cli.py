"""The `swarm` command as a user runs it: subprocesses, exit codes, JSON output, kill and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import CLEAN_ENV, REPO, Reply
from scripted import asks_colour, default_responder
from test_llm_http import http_responder

from swarm_core.store import StoreError

DEMO_GOAL = json.loads((REPO / "blueprints/default/recordings/lisbon.json").read_text())["goal"]


def swarm(*args, env=None, check=None, timeout=120, stdin=None):
    proc = subprocess.run(
        [sys.executable, "-m", "swarm_core.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**CLEAN_ENV, **(env or {})},
        cwd=REPO,
        timeout=timeout,
    )
    if check is not None:
        assert proc.returncode == check, proc.stderr + proc.stdout
    return proc


def test_demo_runs_offline_from_the_shipped_recording(tmp_path):
    store = f"file://{tmp_path}"
    proc = swarm("run", DEMO_GOAL, "--store", store, check=0)
    assert "replaying the shipped recording" in proc.stderr
    assert "Three days in Lisbon" in proc.stdout
    out = json.loads(swarm("run", DEMO_GOAL, "--store", store, "--json", check=0).stdout)
    assert out["status"] == "done" and out["usage"]["llm_calls"] == 7
    assert out["report"].strip() in proc.stdout  # piped: the whole report, no line cut at 80 columns
    assert {n["node_id"] for n in out["nodes"]} >= {"root", "root.0.1.0.0", "root.1.0"}
    listed = json.loads(swarm("list", "--json", "--store", store, check=0).stdout)["swarms"]
    assert [s["swarm_id"] for s in listed] == sorted((s["swarm_id"] for s in listed), reverse=True)
    assert listed[0]["swarm_id"] == out["swarm_id"] and len(listed) == 2
    sid = out["swarm_id"]
    tree = json.loads(swarm("tree", sid, "--json", "--store", store, check=0).stdout)
    assert all({"node_id", "parent_id", "status"} <= set(n) for n in tree["nodes"])
    text = swarm("tree", sid, "--store", store, check=0).stdout  # piped: labels whole, not cut at 80 columns
    assert f"root break_down_goal {DEMO_GOAL[:69]}…" in text and DEMO_GOAL in text
    assert "\n6 nodes: 6 done\n" in text  # counts per status: the live view's progress on a wide swarm
    snap = json.loads(swarm("snapshot", sid, "--json", "--store", store, check=0).stdout)
    assert len(snap["nodes"]) == 6 and snap["swarm"]["status"] == "done"
    hist = json.loads(swarm("history", sid, "--json", "--store", store, check=0).stdout)
    assert hist["events"][0]["kind"] == "created" and hist["events"][-1]["kind"] == "swarm_done"
    assert hist["events"][-1]["round"] == hist["events"][-2]["round"] == 2  # the root's final round
    status = json.loads(swarm("status", sid, "--json", "--store", store, check=0).stdout)
    assert status["status"] == "done" and status["nodes"] == 6
    assert "\n6 nodes: 6 done · llm: recording:" in swarm("status", sid, "--store", store, check=0).stdout  # words, not a dict
    replay = json.loads(swarm("replay", sid, "--json", "--store", store, check=0).stdout)
    assert replay["identical"] is True and replay["replay_of"] == sid and replay["status"] == "done"


def test_list_says_how_many_more_its_limit_left_out(tmp_path):
    store = f"file://{tmp_path}"
    newest = [_demo_swarm(store), _demo_swarm(store)][-1]
    listed = json.loads(swarm("list", "--limit", "1", "--json", "--store", store, check=0).stdout)
    assert [s["swarm_id"] for s in listed["swarms"]] == [newest] and listed["more"] == 1
    assert json.loads(swarm("list", "--json", "--store", store, check=0).stdout)["more"] == 0
    proc = swarm("list", "--limit", "1", "--store", store, check=0)
    assert proc.stdout.startswith(newest) and len(proc.stdout.splitlines()) == 1
    assert "1 more swarm(s); --limit N lists more" in proc.stderr
    for bad in ("0", "-1"):
        assert "argument --limit: wants a number of at least 1" in swarm("list", "--limit", bad, "--store", store, check=2).stderr


def test_list_skips_a_stray_object_in_the_index(tmp_path):
    store = f"file://{tmp_path}"
    sid = _demo_swarm(store)
    (tmp_path / "index" / "junk").write_text("")  # a hand-made file or a tool's placeholder
    listed = json.loads(swarm("list", "--json", "--store", store, check=0).stdout)
    assert [s["swarm_id"] for s in listed["swarms"]] == [sid] and listed["more"] == 0
    assert swarm("list", "--store", store, check=0).stdout.startswith(sid)


def test_version_is_the_installed_package_version():
    import tomllib

    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert swarm("--version", check=0).stdout.strip() == f"swarm {expected}"
    for line in (["--version", "--json"], ["--json", "--version"]):  # one JSON object, like every command
        assert json.loads(swarm(*line, check=0).stdout) == {"version": expected}


def test_every_environment_variable_read_is_in_the_readme():
    import re

    code = "".join(p.read_text() for d in ("swarm_core", "functions", "backends") for p in (REPO / d).glob("*.py"))
    read = set(re.findall(r"""(?:environ\.get\(|environ\[|env_int\()["'](SWARM_[A-Z_]+)""", code))
    assert read >= {"SWARM_STORE", "SWARM_SANDBOX_CACHE", "SWARM_DELIVERY_ATTEMPTS"}
    assert not {v for v in read if v not in (REPO / "README.md").read_text()}


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["status", "sw_../../etc/passwd"], 2, "invalid swarm id"),
        (["tree", "../../x"], 2, "invalid swarm id"),
        (["status", "sw_00000000000000000000000000"], 2, "unknown swarm sw_00000000000000000000000000 in file:///"),
        (["run", ""], 2, "the goal is empty"),
        (["run", "x" * 20001], 2, "limit is 20000"),
        (["run", "a\udcffb"], 2, "the goal is not Unicode text"),  # the byte 0xff in argv: no record could hold it
        (["run", "an unrecorded goal"], 2, "no LLM configured"),
        (["run", DEMO_GOAL, "--budget", "max_nodes=zero"], 2, "--budget wants NAME=N"),
        (["run", DEMO_GOAL, "--budget", "max_nodes=²"], 2, "--budget wants NAME=N"),
        (["run", DEMO_GOAL, "--budget", "max_node=5"], 2, "unknown budget 'max_node' (one of max_nodes, max_depth,"),
        (["run", DEMO_GOAL, "--budget", "=5"], 2, "the budget's name is missing (one of max_nodes,"),
        (["run", DEMO_GOAL, "--budget", "max_depth=99"], 2, "--budget max_depth: Input should be less than or equal to 16"),
        (["run", "an unrecorded goal", "--budget", "max_nodes=0"], 2, "--budget max_nodes: Input should be greater"),
        (["run", DEMO_GOAL, "--blueprint", "/nonexistent"], 2, "blueprint not found"),
        (["list", "--store", "nosuch://x"], 2, "unknown storage scheme 'nosuch'"),
        (["list", "--store", "./.swarm"], 2, "unknown storage './.swarm': use a URI like file://PATH"),
        (["list", "--store", "~/x.d"], 2, "unknown storage '~/x.d': use a URI like file://PATH"),
        (["list", "--store", ":Store"], 2, "cannot load storage adapter ':Store': Empty module name"),
        (["list", "--store", f"file://{REPO / 'README.md'}"], 2, "README.md is not a folder"),
        (["run", DEMO_GOAL, "--budget", "max_nodes=" + "9" * 5000], 2, "--budget wants NAME=N with N a whole number"),
    ],
)
def test_bad_usage_exits_2_with_one_clear_line(tmp_path, args, code, needle):
    proc = swarm(*args, *(["--store", f"file://{tmp_path}"] if "--store" not in args else []))
    assert proc.returncode == code
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_plain_path_as_the_store_says_to_write_a_uri():
    proc = swarm("list", "--json", env={"SWARM_STORE": ".swarm"}, check=2)
    assert json.loads(proc.stdout) == {"error": "unknown storage '.swarm': use a URI like file://PATH or memory://NAME", "exit_code": 2}
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("kind, needle", [("binary", "is not UTF-8 text"), ("folder", "cannot read blueprint {file}: Is a directory")])
def test_an_unreadable_blueprint_is_one_line_naming_the_file(tmp_path, kind, needle):
    file = tmp_path / "blueprint.toml"
    if kind == "binary":
        file.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe")  # `--blueprint /bin/ls`
    else:
        file.mkdir()  # `--blueprint DIR` reads DIR/blueprint.toml
    proc = swarm("list", "--blueprint", str(file if kind == "binary" else tmp_path), "--store", f"file://{tmp_path}", check=2)
    assert needle.format(file=file) in proc.stderr and str(file) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("source", ["env", "file"])
def test_a_bad_setting_is_one_line_naming_the_setting_and_its_source(tmp_path, source):
    env, blueprint = {}, tmp_path / "blueprint.toml"
    if source == "env":
        env, blueprint = {"SWARM_LLM_MODE": "bogus"}, REPO / "blueprints/default"
        where, setting = "SWARM_LLM_MODE", "llm.mode"
    else:
        blueprint.write_text('[budgets]\nmax_nodes = "many"\n')
        where, setting = str(blueprint), "budgets.max_nodes"
    proc = swarm("list", "--blueprint", str(blueprint), "--store", f"file://{tmp_path}", env=env, check=2)
    assert proc.stderr.startswith(f"swarm: error: blueprint setting {setting} from {where}: Input should be ")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize(
    "setting, where",
    [("[budgets]\nmax_nodes = true", "budgets.max_nodes"), ('[budgets]\nmax_depth = "2"', "budgets.max_depth"),
     ("[llm]\nmax_repairs = false", "llm.max_repairs"), ('[dispatcher]\nconcurrency = "8"', "dispatcher.concurrency")],
)
def test_a_setting_of_the_wrong_type_is_refused_not_converted(tmp_path, setting, where):
    """TOML has types: `true` is not the number 1, nor "2" the number 2 (a quoted value is a mistake)."""
    file = tmp_path / "blueprint.toml"
    file.write_text(f'action_dirs = ["{REPO}/blueprints/default/actions"]\n{setting}\n')
    proc = swarm("list", "--blueprint", str(file), "--store", f"file://{tmp_path}/s", check=2)
    assert proc.stderr.strip() == f"swarm: error: blueprint setting {where} from {file}: Input should be a valid integer"


@pytest.mark.parametrize(
    "setting, needle",
    [
        ('[router]\nfallback = "nope_action"', "[router] fallback 'nope_action' is not a routable action"),
        ('[factory]\nprompts = "factroy"', "blueprint setting factory.prompts from {file}: folder {dir}/factroy not found"),
    ],
)
def test_a_setting_naming_what_does_not_exist_is_refused_at_start(tmp_path, setting, needle):
    file = tmp_path / "blueprint.toml"
    file.write_text(f'action_dirs = ["{REPO}/blueprints/default/actions"]\n{setting}\n')
    proc = swarm("list", "--blueprint", str(file), "--store", f"file://{tmp_path}", check=2)
    assert needle.format(file=file, dir=tmp_path) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def _refused_with_actions(tmp_path, files: dict[str, str], start: str, needle: str) -> None:
    """A blueprint stacking `tmp_path/actions` (holding `files`) on the default actions is refused
    by any command, in one line starting `swarm: error: {start}` and holding `needle`."""
    for name, text in files.items():
        (tmp_path / "actions" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "actions" / name).write_text(text)
    file = tmp_path / "blueprint.toml"
    file.write_text(f'action_dirs = ["{REPO}/blueprints/default/actions", "actions"]\n')
    proc = swarm("list", "--blueprint", str(file), "--store", f"file://{tmp_path}/s", check=2)
    assert proc.stderr.startswith(f"swarm: error: {start}")
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize(
    "folders, needle",
    [('[x]\nnme = "X"\n', "[x] name: Field required"), ("[x\n", "Expected ']'"), ('x = "X"\n', "[x] a folder is a [table]")],
)
def test_a_bad_folders_toml_is_one_line_naming_the_file(tmp_path, folders, needle):
    _refused_with_actions(tmp_path, {"folders.toml": folders}, f"action folders {tmp_path}/actions/folders.toml: ", needle)


@pytest.mark.parametrize(
    "files, needle",
    [
        ({"prompt.md": "Do {{taks}}."}, "write_text: prompt names {{taks}}, which nothing fills (it may use answer, context, "),
        ({"prompt.md": "Do {{Task}} as {{task2}} said."}, "write_text: prompt names {{Task}}, {{task2}}, which nothing fills"),
        ({"output.schema.json": '{"type": "objekt"}'}, "write_text: output_schema is not valid JSON Schema: "),
        ({"action.toml": 'name = "Poem"\ndescription = "d"\n', "prompt.md": " \n"}, "write_text: an llm action needs a prompt (prompt.md)"),
        ({"action.toml": 'name = "Poem"\ndescription = "d"\nhandler = "nope:run"\n'}, "write_text: cannot load action handler 'nope:run'"),
        ({"action.toml": 'name = "Poem"\ndescription = "d"\nparent = "poetry"\n'}, "write_text: parent 'poetry' is not a folder"),
    ],
)
def test_an_action_the_blueprint_gets_wrong_is_refused_at_start(tmp_path, files, needle):
    start = f"blueprint default (actions from {REPO}/blueprints/default/actions, {tmp_path}/actions): "
    _refused_with_actions(tmp_path, {f"write_text/{name}": text for name, text in files.items()}, start, needle)


@pytest.mark.parametrize(
    "recording, needle",
    [(None, "recording not found: {file}"), ('{"goal": ', "recording {file} is not readable JSON: "),
     ('{"goal": 3}', 'recording {file}: expected an object with a "goal" string and an "answers" object')],
)
def test_a_recording_the_blueprint_names_that_is_missing_or_broken_is_one_line(tmp_path, recording, needle):
    """Without a model a goal needs the recording; a typo'd path is not "no LLM configured" with no hint."""
    file = tmp_path / "demo.json"
    if recording is not None:
        file.write_text(recording)
    blueprint = tmp_path / "blueprint.toml"
    blueprint.write_text(f'action_dirs = ["{REPO}/blueprints/default/actions"]\nrecording = "demo.json"\n')
    proc = swarm("run", "hello", "--blueprint", str(blueprint), "--store", f"file://{tmp_path}/s", check=2)
    assert proc.stderr.startswith("swarm: error: " + needle.format(file=file)) and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize(
    "args, code",
    [(["run", ""], 2), (["status", "sw_00000000000000000000000000"], 2), (["tree", "sw_00000000000000000000000000"], 2), (["list"], 0)],
)
def test_a_command_that_writes_nothing_makes_no_store_folder(tmp_path, args, code):
    swarm(*args, "--store", f"file://{tmp_path}/typo", check=code)
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize(
    "args, needle",
    [(["status"], "the following arguments are required: ID"), (["nope"], "invalid choice: 'nope'"), (["fn"], "swarm fn needs a command")],
)
def test_a_usage_error_with_json_is_one_json_object_too(args, needle):
    proc = swarm(*args, "--json", check=2)
    out = json.loads(proc.stdout)
    assert out["exit_code"] == 2 and needle in out["error"] and needle in proc.stderr
    assert swarm(*args, check=2).stdout == ("" if args != ["fn"] else swarm("fn", "--help").stdout)


@pytest.mark.parametrize(
    "uri, sdk, extra",
    [("s3://b", "boto3", "aws"), ("gs://b", "gcsfs", "gcp"), ("firestore://p", "google", "gcp"), ("az://c", "adlfs", "azure")],
)
def test_a_cloud_store_without_its_sdk_says_which_extra_installs_it(tmp_path, uri, sdk, extra):
    # the SDK hidden (None in sys.modules fails its import) whether or not this machine has it
    run = f"import sys; sys.modules[{sdk!r}] = None; from swarm_core.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", run, "list", "--store", uri], capture_output=True, text=True, env=CLEAN_ENV, cwd=tmp_path)
    assert proc.returncode == 2 and f"pip install -e '.[{extra}]'" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_corrupted_record_names_the_key_and_keeps_the_bytes(tmp_path):
    store = f"file://{tmp_path}"
    sid = json.loads(swarm("run", DEMO_GOAL, "--store", store, "--json", check=0).stdout)["swarm_id"]
    node = tmp_path / "swarms" / sid / "nodes" / "root.0.2.json"
    node.write_text('{"blueprint": ')
    proc = swarm("tree", sid, "--store", store)
    assert proc.returncode == 1
    assert f"corrupted record swarms/{sid}/nodes/root.0.2.json" in proc.stderr
    assert node.read_text() == '{"blueprint": '


def _demo_swarm(store: str) -> str:
    return json.loads(swarm("run", DEMO_GOAL, "--store", store, "--json", check=0).stdout)["swarm_id"]


@pytest.mark.parametrize("command", ["run", "replay", "snapshot"])
def test_an_unwritable_store_is_one_storage_error_naming_the_store_and_the_key(tmp_path, command):
    # a file where the store needs a folder: refused even to root, which ignores file modes
    store = f"file://{tmp_path}"
    sid = _demo_swarm(store)
    if command == "snapshot":
        blocked, args, key = tmp_path / "swarms" / sid / "snapshots", [sid], f"swarms/{sid}/snapshots/"
    else:
        blocked, args, key = tmp_path / "index", [DEMO_GOAL if command == "run" else sid], "index/sw_"
        shutil.rmtree(blocked)
    blocked.write_text("")
    proc = swarm(command, *args, "--store", store, "--json")
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["exit_code"] == 1
    line = proc.stderr.strip()
    assert line.startswith("swarm: error: storage: cannot ") and f" in {store}: " in line and key in line, line
    assert len(line.splitlines()) == 1


def test_snapshot_prints_the_tree_and_checks_out_before_storing(tmp_path):
    store = f"file://{tmp_path}"
    sid = _demo_swarm(store)
    snap = json.loads(swarm("snapshot", sid, "--store", store, check=0).stdout)  # text mode too: the JSON on stdout
    assert len(snap["nodes"]) == 6
    proc = swarm("snapshot", sid, "--store", store, "--out", str(tmp_path / "nodir" / "x.json"), check=2)
    assert f"folder {tmp_path / 'nodir'} not found" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    for out in (str(tmp_path), ""):  # a folder, nothing
        assert "give a file name" in swarm("snapshot", sid, "--store", store, "--out", out, check=2).stderr
    assert len(list((tmp_path / "swarms" / sid / "snapshots").iterdir())) == 1  # the first one only


@pytest.mark.parametrize("args", [["tree", "{sid}", "--json"], ["status", "{sid}"], ["list"]])
def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path, args):
    # `swarm tree ID --json | true`: the pipe's reader is gone before the command writes
    store = f"file://{tmp_path}"
    sid = _demo_swarm(store)
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarm_core.cli", *(a.format(sid=sid) for a in args), "--store", store],
        env=CLEAN_ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGPIPE and stderr == ""


@pytest.mark.parametrize(("args", "needle"), [
    (["list", "--limit", "9" * 5000], "argument --limit: wants a number of at least 1"),
    (["status", "--js", "sw_00000000000000000000000000"], "unrecognized arguments: --js"),  # no abbreviations of --json
])
def test_argparse_refusals_exit_2_with_the_usage(tmp_path, args, needle):
    proc = swarm(*args, "--store", f"file://{tmp_path}", check=2)
    assert proc.stderr.startswith("usage: swarm") and needle in proc.stderr and "Traceback" not in proc.stderr


def test_a_closed_stdout_is_no_traceback(tmp_path):
    proc = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -m swarm_core.cli list --store file://{tmp_path} >&-'],
        env=CLEAN_ENV, cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr


def test_replay_of_a_corrupted_swarm_is_refused_before_a_new_swarm_is_made(tmp_path):
    store = f"file://{tmp_path}"
    sid = _demo_swarm(store)
    (tmp_path / "swarms" / sid / "nodes" / "root.0.2.json").write_text('{"blueprint": ')
    proc = swarm("replay", sid, "--store", store, check=1)
    assert f"corrupted record swarms/{sid}/nodes/root.0.2.json" in proc.stderr
    assert [s["swarm_id"] for s in json.loads(swarm("list", "--json", "--store", store, check=0).stdout)["swarms"]] == [sid]


class _AdapterError(StoreError):
    """A store adapter's own error type, built from other arguments than a message."""

    def __init__(self, key: str, code: int):
        super().__init__(f"cannot read {key}: HTTP {code}")


@pytest.mark.parametrize("error", [StoreError, lambda message: _AdapterError(message.split()[2], 503)])
def test_a_replay_that_fails_once_started_names_the_new_swarm(tmp_path, monkeypatch, capsys, error):
    from swarm_core import cli
    from swarm_core.engine import Engine

    store = f"file://{tmp_path}"
    sid = _demo_swarm(store)

    def unreadable(self, swarm_id):
        raise error(f"cannot read swarms/{swarm_id}/swarm.json in {store}: Input/output error")

    monkeypatch.setattr(Engine, "status", unreadable)
    assert cli.main(["replay", sid, "--store", store, "--json"]) == 1
    new = [s for s in os.listdir(tmp_path / "index") if s != sid]
    assert len(new) == 1 and f"replay {new[0]} of {sid}: cannot read" in json.loads(capsys.readouterr().out)["error"]


def test_brackets_in_a_goal_task_error_or_question_are_text_not_markup(stub, tmp_path):
    text = "[/var/log] list[int]"  # rich would fail on the first ("closing tag with nothing to close"), eat the second
    plan = http_responder(default_responder(subtasks=[f"ask {text}", f"refuse {text}"]))

    def respond(req):
        if req["response_format"]["json_schema"]["name"] == "write_text" and "Your task: refuse" in req["messages"][1]["content"]:
            return Reply(refusal=text)
        if req["response_format"]["json_schema"]["name"] == "write_text":
            return Reply(content=json.dumps({"report": "", "question": f"which {text}?"}))
        return plan(req)

    stub.responder = respond
    store = f"file://{tmp_path}"
    run = swarm("run", f"sort {text}", "--store", store, env={"OPENAI_BASE_URL": stub.base_url}, check=3)
    assert f"asks: which {text}?" in run.stderr
    sid = json.loads(swarm("list", "--json", "--store", store, check=0).stdout)["swarms"][0]["swarm_id"]
    status = swarm("status", sid, "--store", store, check=3).stdout
    assert f"waiting_user  sort {text}" in status and f"asks: which {text}?" in status
    tree = swarm("tree", sid, "--store", store, check=0).stdout
    for shown in (f"sort {text}", f"write_text ask {text}", f"asks: which {text}?", f"the model refused: {text}"):
        assert shown in tree, tree


def test_control_characters_a_model_writes_never_reach_the_terminal(stub, tmp_path):
    """ESC sequences in a question or a report (a window title, a screen clear, an OSC 52
    clipboard write) are shown as U+FFFD, never written out for the terminal to act on."""
    evil = "\x1b]0;pwned\x07 \x1b[2J"
    plan = default_responder(subtasks=("a",))

    def respond(req):
        name = req["response_format"]["json_schema"]["name"]
        if name == "write_text" and asking:
            return Reply(content=json.dumps({"report": "", "question": f"which{evil}?"}))
        if name == "supervise":
            return Reply(content=json.dumps({"done": True, "report": f"# Done{evil}", "feedback": ""}))
        return http_responder(plan)(req)

    stub.responder = respond
    store = f"file://{tmp_path}"
    env = {"OPENAI_BASE_URL": stub.base_url}
    asking = True
    shown = [swarm("run", "ask", "--store", store, env=env, check=3)]
    sid = json.loads(swarm("list", "--json", "--store", store, check=0).stdout)["swarms"][0]["swarm_id"]
    shown += [swarm(*cmd, sid, "--store", store, check=code) for cmd, code in ((["status"], 3), (["tree"], 0), (["history", "--llm"], 0))]
    asking = False
    shown.append(swarm("run", "report", "--store", store, env=env, check=0))
    text = "".join(p.stdout + p.stderr for p in shown)
    assert "\x1b" not in text and "\x07" not in text
    assert "which\ufffd]0;pwned\ufffd \ufffd[2J?" in shown[1].stdout and "# Done\ufffd]0;pwned" in shown[-1].stdout


def test_failed_swarm_exits_1(stub, tmp_path):
    stub.responder = lambda req: Reply(content="not json")
    proc = swarm("run", "anything", "--json", "--store", f"file://{tmp_path}", env={"OPENAI_BASE_URL": stub.base_url})
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["status"] == "failed" and "break_down_goal: no valid answer after 3 attempts" in out["error"]


def test_a_key_in_the_base_urls_query_is_stored_nowhere(tmp_path):
    from procs import free_port

    blueprint = tmp_path / "blueprint.toml"
    blueprint.write_text(f'action_dirs = ["{REPO}/blueprints/default/actions"]\n[llm]\nmax_retries = 0\n')
    url = f"http://127.0.0.1:{free_port()}/v1?api-key=SECRETQ"  # a closed port: the run fails naming the server
    proc = swarm("run", "anything", "--json", "--blueprint", str(blueprint), "--store", f"file://{tmp_path}/s", env={"OPENAI_BASE_URL": url}, check=1)
    assert "cannot reach the LLM server http://127.0.0.1:" in proc.stdout and "SECRETQ" not in proc.stdout + proc.stderr
    assert not [p for p in (tmp_path / "s").rglob("*") if p.is_file() and b"SECRETQ" in p.read_bytes()]


def _waiting_swarm(stub, store: str) -> str:
    """A swarm run on the stub model until its node root.0.1 asks the user a question."""
    stub.responder = http_responder(asks_colour())
    return json.loads(swarm("run", "Write a and b", "--store", store, "--json", env={"OPENAI_BASE_URL": stub.base_url}, check=3).stdout)["swarm_id"]


def test_a_goal_or_an_answer_given_as_a_dash_is_read_from_standard_input(stub, tmp_path):
    store = f"file://{tmp_path}"
    out = json.loads(swarm("run", "-", "--store", store, "--json", stdin=DEMO_GOAL + "\n", check=0).stdout)
    assert out["status"] == "done" and out["usage"]["llm_calls"] == 7  # the recorded goal: read whole, not "-"
    sid = _waiting_swarm(stub, store)
    swarm("answer", sid, "root.0.1", "-", "--store", store, "--json", stdin="blue\n", env={"OPENAI_BASE_URL": stub.base_url}, check=0)
    nodes = json.loads(swarm("snapshot", sid, "--json", "--store", store, check=0).stdout)["nodes"]
    assert [n["answer"] for n in nodes if n["node_id"] == "root.0.1"] == ["blue"]
    assert "the goal is empty" in swarm("run", "-", "--store", store, stdin="\n", check=2).stderr


def test_answer_or_resume_without_the_swarms_model_is_refused_before_anything_is_stored(stub, tmp_path):
    store = f"file://{tmp_path}"
    sid = _waiting_swarm(stub, store)
    def files():
        return {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    before = files()
    for args in (["answer", sid, "root.0.1", "blue"], ["resume", sid]):
        proc = swarm(*args, "--store", store, "--json", check=2)  # no OPENAI_API_KEY / OPENAI_BASE_URL now
        error = json.loads(proc.stdout)["error"]
        assert error.startswith(f"no LLM configured: swarm {sid} was started on a live model and needs one. Set OPENAI_API_KEY"), error
        assert proc.stderr == f"swarm: error: {error}\n"
    assert files() == before  # the answer was not taken: it can still be given
    done = swarm("answer", sid, "root.0.1", "blue", "--store", store, "--json", env={"OPENAI_BASE_URL": stub.base_url}, check=0)
    assert json.loads(done.stdout)["status"] == "done"


def test_an_azure_endpoint_without_its_key_is_no_model_and_the_answer_is_refused(stub, tmp_path):
    store = f"file://{tmp_path / 'store'}"
    sid = _waiting_swarm(stub, store)
    blueprint = tmp_path / "azure.toml"  # an endpoint, but no key the Azure SDK reads: no client can be made
    blueprint.write_text(f'action_dirs = ["{REPO}/blueprints/default/actions"]\n[llm]\nprovider = "azure"\n')
    env = {"AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9", "OPENAI_API_KEY": "sk-not-for-azure"}
    proc = swarm("answer", sid, "root.0.1", "blue", "--blueprint", str(blueprint), "--store", store, "--json", env=env, check=2)
    assert json.loads(proc.stdout)["error"].startswith(f"no LLM configured: swarm {sid} was started on a live model")
    assert json.loads(swarm("status", sid, "--json", "--store", store).stdout)["waiting"]  # the answer was not taken


def test_an_answer_whose_branch_cannot_run_says_why_and_exits_1(stub, tmp_path, monkeypatch, capsys):
    from swarm_core import cli
    from swarm_core.engine import Engine

    store = f"file://{tmp_path}"
    sid = _waiting_swarm(stub, store)
    real = Engine.execute_node

    def execute_node(self, swarm_id, blueprint):  # the store fails under the answered node's delivery
        if blueprint.node_id == "root.0.1":
            raise StoreError(f"cannot read swarms/{swarm_id}/nodes/root.0.1.json in {store}: Input/output error")
        return real(self, swarm_id, blueprint)

    monkeypatch.setattr(Engine, "execute_node", execute_node)
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    assert cli.main(["answer", sid, "root.0.1", "blue", "--store", store, "--json"]) == 1  # incomplete, not waiting (3)
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "running" and not out["waiting"], out  # answered: not waiting for the user any more
    assert out["error"].startswith("1 invocation(s) failed, first: "), out
    assert "Input/output error" in out["error"] and out["error"].endswith(f"finish with `swarm resume {sid}`")


def test_verbose_logs_the_swarm_and_not_the_http_requests(stub, tmp_path):
    stub.responder = http_responder(default_responder(subtasks=("a",)))
    url = stub.base_url.replace("http://", "http://user:hunter2@")
    proc = swarm("-v", "run", "Write a thing", "--store", f"file://{tmp_path}", env={"OPENAI_BASE_URL": url}, check=0)
    assert '"action": "break_down_goal"' in proc.stderr  # the node lines -v is for
    assert "hunter2" not in proc.stderr and "HTTP Request" not in proc.stderr


def _fanned_out_run(stub, tmp_path, leaf_delay_s: float, runner: str = "threads"):
    """`swarm run --json` of six slow leaves in a subprocess, on `runner`; returns once all six are running."""
    slow = http_responder(default_responder(subtasks=[f"part {i}" for i in range(6)]))

    def respond(req):
        reply = slow(req)
        if req["response_format"]["json_schema"]["name"] == "write_text":
            reply.delay_s = leaf_delay_s
        return reply

    stub.responder = respond
    env = {**CLEAN_ENV, "OPENAI_BASE_URL": stub.base_url, "SWARM_DISPATCHER_RUNNER": runner}
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarm_core.cli", "run", "six parts", "--store", f"file://{tmp_path}", "--json"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 30
    while time.time() < deadline:  # once the children are running
        found = list(tmp_path.glob("swarms/*/nodes"))
        if found and len(list(found[0].glob("root.0.*.json"))) == 6 and len(stub.requests) >= 7:
            return proc, found[0].parent.name
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the run never fanned out")


def _resume_completes_once(stub, store: str, sid: str) -> None:
    out = json.loads(swarm("resume", sid, "--json", "--store", store, env={"OPENAI_BASE_URL": stub.base_url}, check=0).stdout)
    assert out["status"] == "done"
    ids = [n["node_id"] for n in out["nodes"]]
    assert len(ids) == len(set(ids)) == 8  # root, 6 parts, supervisor
    assert all(n["status"] == "done" for n in out["nodes"])


@pytest.mark.parametrize("sig, code, runner", [(signal.SIGINT, 130, "threads"), (signal.SIGTERM, 143, "threads"), (signal.SIGINT, 130, "greenlets")])
def test_ctrl_c_or_sigterm_lets_running_nodes_finish_starts_nothing_new_and_names_the_swarm(stub, tmp_path, sig, code, runner):
    proc, sid = _fanned_out_run(stub, tmp_path, leaf_delay_s=2.0, runner=runner)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert json.loads(stdout) == {"error": f"interrupted; `swarm resume {sid}` finishes the swarm", "exit_code": code, "swarm_id": sid}
    assert "waiting for 6 running node(s)" in stderr and "Traceback" not in stderr
    names = [req["response_format"]["json_schema"]["name"] for req in stub.requests]
    assert names.count("write_text") == 6 and "supervise" not in names  # the leaves' answers kept, no new node
    status = json.loads(swarm("status", sid, "--json", "--store", f"file://{tmp_path}", check=0).stdout)
    assert status["by_status"] == {"waiting_children": 1, "done": 6}
    _resume_completes_once(stub, f"file://{tmp_path}", sid)


def test_a_second_ctrl_c_quits_at_once_and_resume_finishes(stub, tmp_path):
    proc, sid = _fanned_out_run(stub, tmp_path, leaf_delay_s=30.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=10)  # not the leaves' 30 s
    assert proc.returncode == 130, stderr
    assert json.loads(stdout)["error"] == f"quit; `swarm resume {sid}` finishes the swarm"
    stub.responder = http_responder(default_responder(subtasks=[f"part {i}" for i in range(6)]))
    _resume_completes_once(stub, f"file://{tmp_path}", sid)


def test_sigkill_mid_run_then_resume_completes_without_duplicates(stub, tmp_path):
    proc, sid = _fanned_out_run(stub, tmp_path, leaf_delay_s=1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = f"file://{tmp_path}"
    before = json.loads(swarm("status", sid, "--json", "--store", store, check=0).stdout)
    assert before["status"] == "running" and before["by_status"].get("running")
    _resume_completes_once(stub, store, sid)
    # nothing ran twice that had finished: one plan, one supervisor, one outcome per node and round
    names = [r["response_format"]["json_schema"]["name"] for r in stub.requests]
    assert names.count("break_down_goal") == 1 and names.count("supervise") == 1
    events = json.loads(swarm("history", sid, "--json", "--store", store, check=0).stdout)["events"]
    outcomes = [(e["node_id"], e["round"]) for e in events if e["kind"] == "outcome"]
    assert len(outcomes) == len(set(outcomes)) == 10  # root r0, 6 parts, supervisor, root r1 and r2


def _held_leaves(stub, gate: threading.Event, held: int = 6):
    """The six-leaf plan, whose first `held` leaf calls wait for `gate` (a process that holds its nodes)."""
    plan = http_responder(default_responder(subtasks=[f"part {i}" for i in range(6)]))
    seen = []

    def respond(req):
        if req["response_format"]["json_schema"]["name"] == "write_text":
            with lock:
                seen.append(req)
                wait = len(seen) <= held
            if wait:
                gate.wait(60)
        return plan(req)

    lock = threading.Lock()
    stub.responder = respond


def _until(check, what: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout  # a safety net: `check` says when
    while not check():
        assert time.time() < deadline, f"never: {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("holder", ["the run", "another resume"])
def test_resume_leaves_the_nodes_a_live_process_is_running_to_it(stub, tmp_path, holder):
    """`swarm resume` takes over at once only the claims whose process died: two resumes at once,
    or one while `swarm run` still runs, run no node twice."""
    store, gate = f"file://{tmp_path}", threading.Event()
    env = {**CLEAN_ENV, "OPENAI_BASE_URL": stub.base_url}
    leaves = lambda: [r for r in stub.requests if r["response_format"]["json_schema"]["name"] == "write_text"]
    if holder == "the run":
        _held_leaves(stub, gate)
        cmd = ["run", "six parts"]
    else:  # a run killed with its six leaves running, then a resume that holds them again
        proc, sid = _fanned_out_run(stub, tmp_path, leaf_delay_s=30.0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _held_leaves(stub, gate)
        cmd = ["resume", sid]
    before = len(leaves())
    holding = subprocess.Popen(
        [sys.executable, "-m", "swarm_core.cli", *cmd, "--store", store, "--json"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _until(lambda: len(leaves()) == before + 6, "the six leaves running")
        sid = next(tmp_path.glob("swarms/*")).name
        second = swarm("resume", sid, "--store", store, "--json", env=env, check=1)
        assert len(leaves()) == before + 6  # it ran none of them again
        assert "6 node(s) running in process" in second.stderr and "Traceback" not in second.stderr
        assert "still running in another process" in json.loads(second.stdout)["error"]
        gate.set()
        stdout, stderr = holding.communicate(timeout=60)
    finally:
        gate.set()
        holding.kill()
    assert holding.returncode == 0, stderr
    assert json.loads(stdout)["status"] == "done"
    assert len(leaves()) == before + 6
    events = json.loads(swarm("history", sid, "--json", "--store", store, check=0).stdout)["events"]
    assert not [e for e in events if e["kind"] == "superseded"]
    outcomes = [(e["node_id"], e["round"]) for e in events if e["kind"] == "outcome"]
    assert len(outcomes) == len(set(outcomes)) == 10


def test_following_a_swarm_reads_its_nodes_at_most_a_tenth_of_the_time():
    """`swarm run` shows progress by reading every node: on a cloud store a thousand reads take
    seconds, so the next read waits ten times as long as the last took (a fake clock)."""
    from swarm_core.cli import _Paced

    now, reads = [0.0], []

    def read_nodes(seconds):
        reads.append(now[0])
        now[0] += seconds

    took = [0.01]
    paced = _Paced(lambda: read_nodes(took[0]), interval=0.3, clock=lambda: now[0])
    assert paced() and not paced()  # due at once, then not before `interval`
    now[0] = 0.3
    took[0] = 2.0  # a slow store
    assert paced()
    for t in (2.3, 10.0, 20.2):
        now[0] = t
        assert not paced()
    now[0] = 20.3
    assert paced() and reads == [0.0, 0.3, 20.3]
