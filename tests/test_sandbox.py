"""The sandbox against real subprocesses: each containment claim is checked by an attack on it.

No mocks: every test starts real interpreters. Tests that only make sense as
root (uid drop, namespaces, cleanup of leaked files) say so in their skip
reason; CI runs as root, so they run there.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from swarm_core import sandbox
from swarm_core.sandbox import (
    Limits,
    SandboxError,
    TestCase,
    call_function,
    ensure_packages,
    run_python,
    run_tests,
)

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: checks the uid drop")


def _namespaces_work() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = ["unshare", "--mount", "--pid", "--net", "--fork", "true"]
    return subprocess.run(probe, capture_output=True).returncode == 0


with_namespaces = pytest.mark.skipif(
    not _namespaces_work(), reason="needs root with CAP_SYS_ADMIN: checks the PID, mount and network namespaces"
)


def run(code: str, **kwargs) -> sandbox.RunResult:
    return run_python({"main.py": code}, "main.py", **kwargs)


def processes_of(uid: int) -> list[str]:
    """Processes (zombies included) whose real uid is ``uid``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                status = Path(entry.path, "status").read_text()
            except OSError:
                continue
            if int(status.split("Uid:")[1].split()[0]) == uid:
                found.append(status.splitlines()[0])
    return found


# --------------------------------------------------------------------------- ordinary runs


def test_run_python_captures_output_exit_code_and_stdin():
    result = run(
        "import sys\nprint('out', sys.stdin.read())\nprint('err', file=sys.stderr)\nsys.exit(3)\n",
        stdin="hello",
    )
    assert result.stdout == "out hello\n"
    assert result.stderr == "err\n"
    assert result.returncode == 3
    assert result.killed is None


def test_run_python_with_several_files_and_an_uncaught_exception():
    result = run_python(
        {
            "main.py": "from pkg.helpers import twice\nprint(twice(21))\nraise ValueError('bad')\n",
            "pkg/helpers.py": "def twice(x):\n    return 2 * x\n",
        },
        "main.py",
    )
    assert result.stdout == "42\n"
    assert result.returncode == 1
    assert 'File "main.py", line 3' in result.stderr
    assert result.stderr.rstrip().endswith("ValueError: bad")
    assert "_driver" not in result.stderr  # the sandbox's own frames are hidden


def test_ordinary_code_works_inside_the_limits():
    code = (
        "import threading, subprocess, tempfile, os, json\n"
        "box = []\n"
        "t = threading.Thread(target=box.append, args=(1,)); t.start(); t.join()\n"
        "out = subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout.strip()\n"
        "with tempfile.NamedTemporaryFile('w', delete=False) as f: f.write('x')\n"
        "open('data.json', 'w').write(json.dumps({'k': 1}))\n"
        "print(box, out, os.path.dirname(f.name) == os.getcwd(), json.load(open('data.json')))\n"
    )
    result = run(code)
    assert result.stdout == "[1] child True {'k': 1}\n", result.stderr
    assert result.ok


def test_work_dir_is_fresh_and_removed_afterwards():
    result = run("import os\nprint(os.getcwd())\nprint(sorted(os.listdir('.')))\n")
    workdir, listing = result.stdout.splitlines()
    assert listing == "['main.py']"
    assert not os.path.exists(workdir)


def test_bad_file_names_and_missing_script_are_refused():
    with pytest.raises(SandboxError, match="relative path"):
        run_python({"../evil.py": "print(1)"}, "../evil.py")
    with pytest.raises(SandboxError, match="relative path"):
        run_python({"/etc/evil.py": "print(1)"}, "/etc/evil.py")
    with pytest.raises(SandboxError, match="not one of the files"):
        run_python({"main.py": "print(1)"}, "other.py")


def test_output_is_bounded_and_keeps_head_and_tail():
    started = time.monotonic()
    result = run(
        "print('first')\nfor i in range(300_000):\n    print('spam spam spam spam')\nprint('last')\n",
        limits=Limits(output_kb=16),
    )
    assert result.truncated
    assert len(result.stdout) < 17 * 1024
    assert result.stdout.startswith("first\n") and result.stdout.endswith("last\n")
    assert "bytes of output dropped" in result.stdout
    assert time.monotonic() - started < 10


# --------------------------------------------------------------------------- limits


def test_infinite_loop_is_killed_at_the_wall_clock_limit():
    started = time.monotonic()
    result = run("while True:\n    pass\n", limits=Limits(wall_s=1.5))
    assert result.killed == "timeout"
    assert result.returncode < 0
    assert time.monotonic() - started < 4


def test_sleeping_code_is_killed_at_the_wall_clock_limit():
    result = run("import time\nprint('before', flush=True)\ntime.sleep(60)\n", limits=Limits(wall_s=1))
    assert result.killed == "timeout"
    assert result.stdout == "before\n"  # output from before the kill survives
    assert result.duration_s < 3


def test_busy_loop_is_killed_at_the_cpu_limit():
    started = time.monotonic()
    result = run("while True:\n    pass\n", limits=Limits(cpu_s=1, wall_s=20))
    assert result.killed == "cpu"
    assert time.monotonic() - started < 6


def test_allocating_8_gb_is_stopped_with_a_memory_error():
    result = run("data = bytearray(8 * 1024 ** 3)\nprint('allocated')\n")
    assert result.killed == "memory"
    assert "MemoryError" in result.stderr
    assert "allocated" not in result.stdout


def test_growing_memory_is_stopped_with_a_memory_error_in_call_function():
    code = "def grow():\n    hog = []\n    while True:\n        hog.append(bytearray(10 ** 7))\n"
    result = call_function(code, "grow", limits=Limits(memory_mb=256))
    assert result.killed == "memory"
    assert result.error is not None and result.error.type == "MemoryError"


def test_writing_a_file_over_the_size_limit_fails():
    result = run("open('big.bin', 'wb').write(b'x' * (3 << 20))\n", limits=Limits(file_mb=1))
    assert result.killed == "file_size"
    assert "File too large" in result.stderr


def test_fork_bomb_is_contained_and_reported():
    result = run(
        "import os\nprint(os.getuid(), flush=True)\nwhile True:\n    os.fork()\n", limits=Limits(max_procs=16, wall_s=5)
    )
    assert result.killed in ("procs", "timeout"), result
    if os.geteuid() == 0:
        assert result.killed == "procs"
        assert processes_of(int(result.stdout.split()[0])) == []  # none left, not even a zombie
    assert subprocess.run(["true"]).returncode == 0  # the machine can still start processes


def test_thread_bomb_hits_the_process_limit():
    code = (
        "import threading, time\n"
        "while True:\n"
        "    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
    )
    result = run(code, limits=Limits(max_procs=8, wall_s=5))
    assert result.killed == "procs"
    assert "can't start new thread" in result.stderr
    # it is RLIMIT_NPROC that stops them, not the address-space limit (which would allow ~50)
    counting = (
        "import threading, time\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "        n += 1\n"
        "except RuntimeError:\n"
        "    print(n)\n"
    )
    started = int(run(counting, limits=Limits(max_procs=8, wall_s=5)).stdout)
    assert 0 < started < 8


# --------------------------------------------------------------------------- isolation


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-test-secret")
    monkeypatch.setenv("SWARM_API_TOKEN", "swarm-test-secret")
    code = (
        "import os, sys\n"
        "print(dict(os.environ))\n"
        "try:\n"
        f"    print(open('/proc/{os.getpid()}/environ', 'rb').read())\n"
        "except OSError as exc:\n"
        "    print('refused', type(exc).__name__)\n"
    )
    result = run(code)
    assert "test-secret" not in result.stdout + result.stderr
    # Hidden by the run's own /proc as root, refused by permissions or the audit hook otherwise.
    assert "refused PermissionError" in result.stdout or "refused FileNotFoundError" in result.stdout
    assert "'HOME': '/tmp" in result.stdout or "'HOME': '" + tempfile.gettempdir() in result.stdout


def test_writes_outside_the_work_dir_fail_and_leave_nothing(tmp_path):
    name = f"swarm-escape-{uuid.uuid4().hex}.txt"
    targets = [f"../{name}", str(tmp_path / name), f"/tmp/{name}", f"/var/tmp/{name}"]
    code = f"import os\nfor target in {targets!r}:\n" + (
        "    try:\n"
        "        with open(target, 'w') as f:\n"
        "            f.write('escaped')\n"
        "        print('WROTE', target)\n"
        "    except OSError as exc:\n"
        "        print('refused', type(exc).__name__)\n"
        "try:\n"
        f"    os.rename('main.py', '../{name}')\n"
        "except OSError as exc:\n"
        "    print('refused', type(exc).__name__)\n"
    )
    result = run(code)
    assert "WROTE" not in result.stdout
    assert result.stdout.count("refused PermissionError") == 5, result.stdout + result.stderr
    for target in (Path(tempfile.gettempdir()) / name, tmp_path / name, Path("/tmp") / name, Path("/var/tmp") / name):
        assert not target.exists()


@as_root
def test_a_write_that_bypasses_the_audit_hook_is_cleaned_up():
    # ctypes steps around the audit hook; /tmp is world-writable, so the kernel lets it through.
    name = f"/tmp/swarm-bypass-{uuid.uuid4().hex}.txt"
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None)\n"
        f"fd = libc.open({name.encode()!r}, os.O_CREAT | os.O_WRONLY, 0o644)\n"
        "print('fd', fd)\n"
        "libc.write(fd, b'escaped', 7)\n"
        "print(os.getuid())\n"
    )
    result = run(code)
    assert result.stdout.startswith("fd ") and not result.stdout.startswith("fd -1"), result.stderr
    assert int(result.stdout.split()[-1]) >= sandbox._UID_FIRST
    assert not os.path.exists(name)


@as_root
def test_the_leased_uids_leftovers_are_removed_and_nobody_elses():
    uid = sandbox._UID_FIRST + sandbox._UID_COUNT - 1  # a leased uid no run here holds now
    tag = uuid.uuid4().hex
    mine, dir_of_mine, other = Path(f"/tmp/swarm-left-{tag}"), Path(f"/var/tmp/swarm-left-{tag}"), Path(f"/tmp/swarm-keep-{tag}")
    mine.write_text("x")
    dir_of_mine.mkdir()
    (dir_of_mine / "inner").write_text("x")
    other.write_text("y")
    for path in (mine, dir_of_mine, dir_of_mine / "inner"):
        os.chown(path, uid, uid)
    try:
        sandbox._remove_files_of(uid)
        assert not mine.exists() and not dir_of_mine.exists() and other.read_text() == "y"
    finally:
        for path in (mine, other):
            path.unlink(missing_ok=True)
        shutil.rmtree(dir_of_mine, ignore_errors=True)


@with_namespaces
def test_code_sees_a_private_tmp():
    code = "print([l.split()[4] + ' ' + l.split(' - ')[1].split()[0] for l in open('/proc/self/mountinfo') if l.split()[4] == '/tmp'])\n"
    assert run(code).stdout == "['/tmp tmpfs']\n"


@pytest.mark.parametrize("mode", ["as root", "audit hook alone"])
def test_hidden_folders_cannot_be_read(mode, monkeypatch, readable_folder):
    if mode != "as root":
        monkeypatch.setattr(sandbox, "_leased_uid", contextmanager(lambda: iter([None])))
    here = readable_folder / "swarm.json"
    here.write_text('{"goal": "a secret goal"}')
    here.chmod(0o644)
    code = f"try:\n    print(open({str(here)!r}).read())\nexcept OSError as exc:\n    print(type(exc).__name__)\n"
    assert run(code).stdout == here.read_text() + "\n"  # readable unless hidden
    assert run(code, limits=Limits(hidden=frozenset({str(readable_folder)}))).stdout in ("FileNotFoundError\n", "PermissionError\n")


@as_root
def test_code_runs_as_a_leased_unprivileged_uid():
    result = run("import os\nprint(os.getuid(), os.getgid(), os.getgroups())\n")
    uid, gid, groups = result.stdout.split(maxsplit=2)
    assert int(uid) in range(sandbox._UID_FIRST, sandbox._UID_FIRST + sandbox._UID_COUNT)
    assert gid == uid and groups.strip() == "[]"


@with_namespaces
def test_code_runs_as_the_first_process_of_its_own_pid_namespace():
    assert run("import os\nprint(os.getpid())\n").stdout == "1\n"


@as_root
def test_code_cannot_signal_other_processes():
    code = (
        "import os, signal\n"
        "try:\n"
        f"    os.kill({os.getpid()}, signal.SIGTERM)\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    result = run(code)
    assert result.stdout.strip() in ("PermissionError", "ProcessLookupError")


@contextmanager
def listening_socket():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_network_is_off_by_default_and_on_when_allowed():
    with listening_socket() as port:
        code = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print('refused', type(exc).__name__)\n"
        )
        assert run(code).stdout.startswith("refused")
        assert run(code, limits=Limits(network=True)).stdout == "connected\n"


@with_namespaces
def test_code_sees_no_network_interface_but_loopback():
    # the audit hook refuses connect(), but ctypes steps around it: the empty namespace is the barrier
    assert run("import socket\nprint(sorted(name for _, name in socket.if_nameindex()))\n").stdout == "['lo']\n"


def test_importing_a_package_not_on_the_allow_list_names_it():
    for module in ("requests", "numpy", "pydantic"):
        result = call_function(f"import {module}\ndef f():\n    return 1\n", "f")
        assert result.error is not None
        assert result.error.type == "ModuleNotFoundError"
        assert f"import of '{module}' is not allowed" in result.error.message
        assert "allow-list" in result.error.message
    inline = run("import json, collections.abc, email.mime.text\nimport yaml\n")
    assert "import of 'yaml' is not allowed" in inline.stderr


def test_concurrent_runs_get_their_own_uid_and_dir():
    results = []
    code = "import os\ndef who():\n    return [os.getuid(), os.getcwd()]\n"
    threads = [threading.Thread(target=lambda: results.append(call_function(code, "who"))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.ok for r in results), [r.error for r in results]
    assert len({r.value[1] for r in results}) == 6
    if os.geteuid() == 0:
        assert len({r.value[0] for r in results}) == 6


# --------------------------------------------------------------------------- defence in depth without the uid drop


@pytest.fixture
def without_uid_drop(monkeypatch):
    """Run the driver as the current user, as on a developer laptop: only the audit hook and rlimits remain."""

    @contextmanager
    def no_lease():
        yield None

    monkeypatch.setattr(sandbox, "_leased_uid", no_lease)


def test_audit_hook_alone_refuses_writes_outside(without_uid_drop, tmp_path):
    target = tmp_path / "outside.txt"
    result = run(f"try:\n    open({str(target)!r}, 'w')\nexcept PermissionError as exc:\n    print(exc)\n")
    assert "sandbox: writing outside the working directory" in result.stdout
    assert not target.exists()


def test_audit_hook_alone_bounds_process_creation(without_uid_drop):
    code = (
        "import os\n"
        "for n in range(20):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except BlockingIOError as exc:\n"
        "        print(n, exc)\n"
        "        break\n"
        "    if pid == 0:\n"
        "        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"  # reaped here: nothing is left for init
    )
    result = run(code, limits=Limits(max_procs=5))
    assert result.stdout.startswith("5 ") and "process limit reached" in result.stdout
    assert result.duration_s < 5


def test_audit_hook_alone_refuses_other_processes_environ(without_uid_drop, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    result = run(
        f"try:\n    print(open('/proc/{os.getpid()}/environ').read())\nexcept PermissionError as exc:\n    print(exc)\n"
    )
    assert "sk-test-secret" not in result.stdout
    assert "off limits" in result.stdout


def test_audit_hook_alone_refuses_network(without_uid_drop):
    with listening_socket() as port:
        code = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}))\n"
            "except PermissionError as exc:\n"
            "    print(exc)\n"
        )
        result = run(code)
    assert "network access is disabled" in result.stdout


# --------------------------------------------------------------------------- call_function


def test_call_function_returns_a_json_value():
    result = call_function(
        "def f(a, b=2):\n    print('side note')\n    return {'sum': a + b, 'items': (a, b)}\n", "f", {"a": 1}
    )
    assert result.ok
    assert result.value == {"sum": 3, "items": [1, 2]}
    assert result.stdout == "side note\n"


def test_call_function_main_input_style():
    result = call_function("def main(input):\n    return sorted(input['xs'])\n", "main", {"input": {"xs": [3, 1, 2]}})
    assert result.value == [1, 2, 3]


def test_call_function_reports_the_exception():
    code = "def helper(x):\n    raise ValueError(f'bad value {x}')\n\ndef f(x):\n    return helper(x)\n"
    result = call_function(code, "f", {"x": 7})
    assert not result.ok
    assert result.error.type == "ValueError"
    assert result.error.message == "bad value 7"
    assert 'File "solution.py", line 5, in f' in result.error.traceback
    assert 'File "solution.py", line 2, in helper' in result.error.traceback
    assert "_driver" not in result.error.traceback


def test_call_function_reports_load_errors_and_unknown_functions():
    syntax = call_function("def f(:\n    pass\n", "f")
    assert syntax.error.type == "SyntaxError" and "solution.py" in syntax.error.traceback
    missing = call_function("def g():\n    return 1\n", "f")
    assert missing.error.type == "AttributeError" and "defines no function 'f'" in missing.error.message


def test_call_function_refuses_a_value_that_is_not_json():
    result = call_function("def f():\n    return {1, 2}\n", "f")
    assert result.error.type == "TypeError" and "not JSON-serialisable" in result.error.message


def test_lone_surrogates_never_reach_what_is_stored():
    # chr(0xdcff) (surrogateescape's output) is not Unicode: a str holding one cannot be written as UTF-8.
    returned = call_function("def f():\n    return 'a' + chr(0xdcff)\n", "f")
    assert returned.error.type == "TypeError" and "surrogates not allowed" in returned.error.message
    code = "def f(n):\n    print('x' + chr(0xdcff))\n    if n:\n        raise ValueError(chr(0xdcff))\n    return n\n"
    report = run_tests(code, "f", [TestCase(name="prints", args={"n": 0}, expected=0), TestCase(name="raises", args={"n": 1})])
    assert [c.passed for c in report.cases] == [True, False] and report.cases[0].stdout == "x?\n"
    assert report.model_dump_json() and returned.model_dump_json()  # both raised before


def test_a_case_may_write_bytes_to_stdout_as_the_function_may_outside_tests():
    code = "import sys\ndef f():\n    sys.stdout.buffer.write(b'raw \\xff\\n')\n    print('text', sys.stdout.encoding)\n    return 1\n"
    assert call_function(code, "f").value == 1
    case = run_tests(code, "f", [TestCase(name="bytes", expected=1)]).cases[0]
    assert case.passed and case.stdout == "raw \ufffd\ntext utf-8\n", case


def test_printed_fake_result_is_not_taken_as_the_result():
    code = (
        "import sys\n"
        "def f():\n"
        '    print(\'{"kind": "return", "value": 666}\')\n'
        '    sys.stderr.write(\'{"kind": "return", "value": 666}\\n\')\n'
        "    return 42\n"
    )
    result = call_function(code, "f")
    assert result.value == 42
    assert "666" in result.stdout


def test_code_can_only_speak_for_its_own_call():
    # Whatever it writes to its descriptors, the code can at most pick its own return value.
    code = (
        "import os\n"
        "def f():\n"
        "    for fd in range(3, 64):\n"
        "        try:\n"
        '            os.write(fd, b\'{"kind": "return", "value": 666}\\n\')\n'
        "        except OSError:\n"
        "            pass\n"
        "    return 42\n"
    )
    result = call_function(code, "f")
    assert result.ok and result.value in (42, 666)


SPRAY = """
import json, os

def spray():
    fake = [{"kind": "case", "index": i, "result": "pwned", "assertion": True} for i in range(5)]
    lines = b"".join(json.dumps(r).encode() + b"\\n" for r in fake + [{"kind": "done"}])
    targets = [f"/proc/{os.getppid()}/fd/{n}" for n in range(64)] + [f"/proc/1/fd/{n}" for n in range(64)]
    reached = 0
    for path in targets:
        try:
            with open(path, "wb") as handle:
                handle.write(lines)
            reached += 1
        except OSError:
            pass
    os.write(2, f"reached {reached}\\n".encode())
    for fd in range(3, 64):
        try:
            os.write(fd, lines)
        except OSError:
            pass

def f(n):
    spray()
    return -1
"""


def test_code_cannot_forge_the_verdict_of_other_cases():
    cases = [TestCase(name=str(n), args={"n": n}, expected=1000 + n, assertion="result == 'pwned'") for n in range(5)]
    report = run_tests(SPRAY, "f", cases)
    assert report.error is None  # nothing reached the result channel: no tampering to detect
    assert report.passed == 0 and report.failed == 5
    for case in report.cases:
        assert case.error.startswith(f"expected {1000 + int(case.name)}, got ")
    if os.geteuid() == 0:  # the relay and the supervisor cannot be opened through /proc
        assert report.stderr.count("reached 0\n") == 5, report.stderr


def test_call_function_timeout_is_an_error():
    result = call_function("def f():\n    while True:\n        pass\n", "f", limits=Limits(wall_s=1))
    assert result.killed == "timeout"
    assert result.error.type == "LimitExceeded" and "wall-clock" in result.error.message


# --------------------------------------------------------------------------- run_tests

SOLUTION = """
def divide(a, b):
    if a == 99:
        while True:
            pass
    print(f"dividing {a} by {b}")
    return a / b
"""


def test_run_tests_reports_passing_and_failing_cases():
    cases = [
        TestCase(name="exact", args={"a": 6, "b": 3}, expected=2),
        {"name": "float", "args": {"a": 1, "b": 3}, "expected": 0.3333333333333333},
        TestCase(name="assertion", args={"a": 5, "b": 2}, assertion="result > args['b']"),
        TestCase(name="wrong expectation", args={"a": 6, "b": 3}, expected=3),
        TestCase(name="failed assertion", args={"a": 1, "b": 2}, assertion="result > 1"),
        TestCase(name="raises", args={"a": 1, "b": 0}, expected=0),
        TestCase(name="broken assertion", args={"a": 1, "b": 1}, assertion="result > undefined_name"),
        TestCase(name="hangs", args={"a": 99, "b": 1}, expected=99),
        TestCase(name="after the hang", args={"a": 9, "b": 3}, expected=3.0),
    ]
    report = run_tests(SOLUTION, "divide", cases, case_timeout_s=0.5)
    verdicts = {c.name: c for c in report.cases}
    assert [c.name for c in report.cases if c.passed] == ["exact", "float", "assertion", "after the hang"]
    assert (report.passed, report.failed, report.total, report.ok) == (4, 5, 9, False)
    assert report.error is None
    assert verdicts["exact"].actual == 2.0 and verdicts["exact"].stdout == "dividing 6 by 3\n"
    assert verdicts["wrong expectation"].error == "expected 3, got 2.0"
    assert verdicts["failed assertion"].error == "assertion failed: result > 1 (result = 0.5)"
    assert verdicts["raises"].error.startswith("ZeroDivisionError: division by zero")
    assert 'File "solution.py", line 7, in divide' in verdicts["raises"].error
    assert "NameError" in verdicts["broken assertion"].error
    assert verdicts["hangs"].error.startswith("Timeout: the case ran longer than 0.5 s")


def test_run_tests_all_passing():
    cases = [TestCase(name=f"case {i}", args={"a": i, "b": 2}, expected=i / 2) for i in range(5)]
    report = run_tests(SOLUTION, "divide", cases)
    assert report.ok and report.passed == 5 and report.failed == 0


def test_run_tests_when_the_code_does_not_load():
    report = run_tests("import numpy\n", "divide", [TestCase(name="one", args={}, expected=1)])
    assert not report.ok and report.failed == 1
    assert "import of 'numpy' is not allowed" in report.error
    assert report.cases[0].error.startswith("not run: the code could not be loaded")


def test_run_tests_cases_are_isolated_from_each_other():
    code = "seen = []\ndef f(xs):\n    xs.append(1)\n    seen.append(1)\n    return len(xs) + len(seen)\n"
    cases = [TestCase(name=str(i), args={"xs": []}, expected=2) for i in range(3)]  # neither the args nor `seen` carry over
    report = run_tests(code, "f", cases)
    assert report.ok, [c.error for c in report.cases]


def test_run_tests_case_that_hangs_in_c_code_or_exits_does_not_sink_the_others():
    # Blocking SIGALRM and os._exit: neither an alarm nor an exception could stop these in-process.
    code = (
        "import os, signal\n"
        "def f(n):\n"
        "    if n == 1:\n"
        "        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})\n"
        "        while True:\n"
        "            pass\n"
        "    if n == 2:\n"
        "        os._exit(3)\n"
        "    return n\n"
    )
    cases = [TestCase(name=str(n), args={"n": n}, expected=n) for n in range(4)]
    report = run_tests(code, "f", cases, case_timeout_s=0.5)
    assert [c.passed for c in report.cases] == [True, False, False, True]
    assert report.cases[1].error.startswith("Timeout: the case ran longer than 0.5 s")
    assert report.cases[2].error.startswith("ProcessExit: the process running the code exited with status 3")
    assert report.error is None and report.killed is None


def test_run_tests_when_the_whole_run_is_killed():
    code = "import time\ndef f(n):\n    if n in (1, 2):\n        time.sleep(30)\n    return n\n"
    cases = [TestCase(name=str(n), args={"n": n}, expected=n) for n in range(4)]
    report = run_tests(code, "f", cases, limits=Limits(wall_s=2), case_timeout_s=1.5)
    assert report.killed == "timeout"
    assert [c.passed for c in report.cases] == [True, False, False, False]
    assert report.cases[1].error.startswith("Timeout")
    assert report.cases[3].error.startswith("not run: stopped at the wall-clock limit")


def test_run_tests_module_state_does_not_leak_between_cases():
    code = "calls = []\ndef f():\n    calls.append(1)\n    return len(calls)\n"
    report = run_tests(code, "f", [TestCase(name=str(n), expected=1) for n in range(3)])
    assert report.ok, [c.error for c in report.cases]


# --------------------------------------------------------------------------- packages


def test_ensure_packages_refuses_packages_not_on_the_allow_list(tmp_path, monkeypatch):
    monkeypatch.setenv("SWARM_SANDBOX_CACHE", str(tmp_path))
    with pytest.raises(SandboxError) as refused:
        ensure_packages(["six", "requests>=2"], frozenset({"six"}))
    assert str(refused.value) == "package 'requests' is not on the blueprint's allow-list: ['six']"
    for bad in (
        "-e .",
        "git+https://example.com/x.git",
        "six @ https://example.com/six.whl",
        "./local",
        "six; os_name == '@'",
    ):
        with pytest.raises(SandboxError, match="not a plain"):
            ensure_packages([bad], frozenset({"six"}))
    assert list(tmp_path.iterdir()) == []  # nothing was installed


def test_ensure_packages_refusal_through_call_function():
    with pytest.raises(SandboxError, match="package 'requests' is not on the blueprint's allow-list"):
        call_function(
            "def f():\n    return 1\n",
            "f",
            requirements=["requests"],
            limits=Limits(allowed_packages=frozenset({"six"})),
        )


def test_ensure_packages_installs_from_pypi_caches_and_gates_imports(tmp_path, monkeypatch):
    """Installs the tiny pure-Python package six from PyPI (needs the registry, about 5 s)."""
    monkeypatch.setenv("SWARM_SANDBOX_CACHE", str(tmp_path))
    allowed = frozenset({"six"})
    env = ensure_packages(["six"], allowed)
    assert env.parent == tmp_path and (env / "bin" / "python").exists()
    started = time.monotonic()
    assert ensure_packages([" six "], allowed) == env  # the same set: reused, not reinstalled
    assert time.monotonic() - started < 0.5

    limits = Limits(allowed_packages=allowed)
    code = "import six, sys\ndef f():\n    return [six.__name__, sys.executable]\n"
    result = call_function(code, "f", requirements=["six"], limits=limits)
    assert result.ok, result.error
    assert result.value == ["six", str(env / "bin" / "python")]
    # Installed in the worker's own environment, yet not allowed: still refused.
    blocked = call_function("import six, pydantic\ndef f():\n    return 1\n", "f", requirements=["six"], limits=limits)
    assert "import of 'pydantic' is not allowed" in blocked.error.message


@with_namespaces
def test_disk_use_is_bounded_and_other_processes_are_hidden():
    code = (
        "import os\n"
        "print(sorted(p for p in os.listdir('/proc') if p.isdigit()))\n"
        "for n in range(100):\n"
        "    open(f'part{n}.bin', 'wb').write(b'x' * (1 << 20))\n"
    )
    result = run(code, limits=Limits(disk_mb=8, file_mb=4))
    assert result.stdout == "['1']\n", result.stderr
    assert result.killed == "disk"
    assert "No space left on device" in result.stderr


@as_root
def test_cleanup_by_uid_kills_only_that_uid():
    target, bystander = sandbox._UID_FIRST + sandbox._UID_COUNT - 1, sandbox._UID_FIRST + sandbox._UID_COUNT - 2
    doomed = subprocess.Popen(["sleep", "30"], user=target, group=target, extra_groups=[])
    spared = subprocess.Popen(["sleep", "30"], user=bystander, group=bystander, extra_groups=[])
    try:
        sandbox._kill_uid(target)
        assert doomed.wait(timeout=5) == -9
        assert spared.poll() is None
    finally:
        spared.kill()
        spared.wait()


def test_non_finite_results_are_reported_as_text_not_json():
    """inf and NaN are not JSON: a report holding them would read back with null instead."""
    report = run_tests("def f(x):\n    return [float('inf'), x]\n", "f", [TestCase(name="inf", args={"x": 1}, expected=[1, 1])], limits=Limits(wall_s=20))
    verdict = report.cases[0]
    assert not verdict.passed and verdict.actual.startswith("[inf, 1] (not JSON-serialisable")
    assert type(report).model_validate_json(report.model_dump_json()) == report
