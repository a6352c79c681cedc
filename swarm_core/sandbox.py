"""Run untrusted, LLM-written Python in a separate, contained process.

Generated code never runs in the worker's own interpreter. Each run gets a
fresh working directory and a fresh interpreter started with ``-S`` (no site
packages, no ``.pth`` hooks) whose entry point is ``_driver`` below. The
driver splits in two: a supervisor that stays outside, and the code's process,
which sets up containment and runs the job: a script (``run_python``), one
function call (``call_function``) or a batch of test cases (``run_tests``).
Results travel back on a private pipe, never on stdout, so printed text cannot
pose as a result.

Layers, strongest first:

* As root (CI, containers) the code gets its own PID namespace, mount
  namespace (size-bounded tmpfs for the work dir and shared temp dirs, empty
  read-only ones over ``Limits.hidden``, a /proc showing only its own
  processes) and, unless ``Limits.network``, an empty network namespace,
  then drops to a throwaway uid/gid leased for this run
  alone. The kernel then enforces ``RLIMIT_NPROC``, file and signal
  permissions, and kills every process of the run when its first one exits.
  Without CAP_SYS_ADMIN the namespaces are skipped; the uid drop remains.
* Always: rlimits (CPU, address space, file size, processes, open files), a
  wall-clock deadline enforced by the parent, a supervisor that kills and
  reaps whatever the code leaves behind, a scrubbed environment, bounded
  output capture and a fresh working directory removed afterwards.
* Tripwires that turn ordinary mistakes into clear errors: an import gate
  (stdlib, the code's own files and the blueprint's allow-list) and an audit
  hook refusing writes outside the working directory, process creation beyond
  ``max_procs`` and network connections. Code that uses ``ctypes`` can step
  around these two; the kernel-enforced layers are the boundary.

Linux only (namespaces, /proc, pidfd, rlimits).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.metadata
import inspect
import json
import math
import os
import random
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from .cooperative import blocking  # every run waits on a pool thread, not on the loop

__all__ = [
    "CallError",
    "CallResult",
    "CaseResult",
    "Limits",
    "RunResult",
    "SandboxError",
    "TestCase",
    "TestReport",
    "call_function",
    "ensure_packages",
    "run_python",
    "run_tests",
]


# --------------------------------------------------------------------------- types


class SandboxError(Exception):
    """The sandbox refused a request or could not set up a run.

    Failures of the code itself are never raised: they come back inside the
    result, where the caller (often an LLM) can read and fix them.
    """


class Limits(BaseModel):
    """What one sandboxed run may use. The defaults suit unit-test-sized work."""

    model_config = ConfigDict(frozen=True)

    wall_s: float = Field(default=10.0, gt=0)
    """Wall clock, enforced by the parent: catches sleeps and blocked I/O that CPU limits miss."""
    cpu_s: int = Field(default=10, ge=1)
    """CPU seconds per process (RLIMIT_CPU)."""
    memory_mb: int = Field(default=512, ge=64)
    """Address space per process (RLIMIT_AS): a big allocation fails with MemoryError."""
    file_mb: int = Field(default=16, ge=0)
    """Largest file a process may write (RLIMIT_FSIZE)."""
    disk_mb: int = Field(default=64, ge=1)
    """As root: size of each private tmpfs (work dir, /tmp, /var/tmp, /dev/shm); RAM-backed."""
    max_procs: int = Field(default=32, ge=1)
    """Processes plus threads the code may have at once (RLIMIT_NPROC); also caps forks in the audit hook."""
    output_kb: int = Field(default=64, ge=1)
    """stdout and stderr are each kept up to this size (half head, half tail)."""
    network: bool = False
    """False: no network (an empty network namespace as root, the audit hook otherwise)."""
    allowed_packages: frozenset[str] = frozenset()
    """PyPI distributions the blueprint allows the code to install and import."""
    hidden: frozenset[str] = frozenset()
    """Folders the code must not read (the deployment's file stores): as root an empty read-only
    tmpfs covers each; otherwise the audit hook refuses to open anything inside them."""


class RunResult(BaseModel):
    """How one ``run_python`` ended."""

    returncode: int
    """Exit status; negative when a signal ended the process (as in ``subprocess``)."""
    stdout: str
    stderr: str
    duration_s: float
    killed: str | None = None
    """Which limit stopped the run: "timeout", "cpu", "memory", "file_size", "disk", "procs" or "signal N"."""
    truncated: bool = False
    """stdout or stderr exceeded ``Limits.output_kb`` and was cut in the middle."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.killed is None


class CallError(BaseModel):
    """An exception from the code, or the limit that stopped it, as text an LLM can act on."""

    type: str
    """Exception class ("ValueError", "solution.ParseError"), or "LimitExceeded" / "SandboxProtocolError"."""
    message: str
    traceback: str = ""
    """The tail of the traceback, the sandbox's own frames left out, paths relative to the work dir."""

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


class CallResult(BaseModel):
    """How one ``call_function`` ended: a JSON value or an error, never both."""

    value: Any = None
    error: CallError | None = None
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0
    killed: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class TestCase(BaseModel):
    """One check: call the function with ``args`` as keyword arguments, then judge the result.

    ``expected`` is compared with the JSON form of the result (floats with a
    relative tolerance of 1e-9); ``None`` means "not checked", so write the
    assertion ``"result is None"`` to expect ``None``. ``assertion`` is a
    Python expression over ``result`` (its JSON form: tuples become lists),
    ``args`` and ``math``. With neither, the case passes when the call returns
    without raising.
    """

    __test__: ClassVar[bool] = False  # not a pytest test class

    name: str
    args: dict[str, Any] = Field(default_factory=dict)
    expected: Any = None
    assertion: str | None = None


class CaseResult(BaseModel):
    """The verdict on one ``TestCase``."""

    name: str
    passed: bool
    actual: Any = None
    """The JSON value returned; the ``repr()`` text when it is not JSON-serialisable."""
    error: str | None = None
    """Why the case failed, written for a human or an LLM."""
    stdout: str = ""
    duration_s: float = 0.0


class TestReport(BaseModel):
    """Per-case verdicts and totals of one ``run_tests``."""

    __test__: ClassVar[bool] = False

    cases: list[CaseResult]
    passed: int
    failed: int
    error: str | None = None
    """Set when the whole run went wrong: the code did not load, a limit stopped it, ..."""
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0
    killed: str | None = None

    @property
    def total(self) -> int:
        return len(self.cases)

    @property
    def ok(self) -> bool:
        return self.error is None and self.failed == 0


DEFAULT_LIMITS = Limits()

# --------------------------------------------------------------------------- public API


def run_python(
    files: Mapping[str, str],
    script: str,
    *,
    limits: Limits = DEFAULT_LIMITS,
    stdin: str | None = None,
    requirements: Sequence[str] = (),
) -> RunResult:
    """Write ``files`` into a fresh directory and run ``python <script>`` there.

    ``requirements`` are installed first (``ensure_packages``) against
    ``limits.allowed_packages``; the run then uses that environment.
    """
    if _relative_path(script) not in {_relative_path(name) for name in files}:
        raise SandboxError(f"script {script!r} is not one of the files given")
    out = blocking(_execute, "script", files, {"script": _relative_path(script)}, limits, requirements, stdin)
    return RunResult(
        returncode=out.returncode,
        stdout=out.stdout,
        stderr=out.stderr,
        duration_s=out.duration_s,
        killed=out.killed,
        truncated=out.truncated,
    )


def call_function(
    code: str,
    function: str,
    args: Mapping[str, Any] | None = None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    requirements: Sequence[str] = (),
) -> CallResult:
    """Load ``code`` as module ``solution`` and return ``function(**args)`` as a JSON value.

    Arguments are always keyword arguments: a ``main(input)`` style function
    is called with ``args={"input": {...}}``. A return value that is not
    JSON-serialisable is reported as a ``TypeError``. The call runs in a child
    of the sandboxed driver, which relays its answer: the code can choose its
    own return value, never the record that reaches the caller.
    """
    job = {"function": function, "args": _json_text(dict(args or {}), "args")}
    out = blocking(_execute, "call", {"solution.py": code}, job, limits, requirements, None)
    common: dict[str, Any] = {
        "stdout": out.stdout,
        "stderr": out.stderr,
        "duration_s": out.duration_s,
        "killed": out.killed,
    }
    results = [r for r in out.records if r.get("kind") in ("return", "error", "load_error")]
    if out.garbled or len(results) > 1:
        error = CallError(type="SandboxProtocolError", message=_TAMPERED)
    elif results and results[0]["kind"] == "return":
        return CallResult(value=results[0].get("value"), **common)
    elif results:
        error = _call_error(results[0])
    elif out.killed:
        error = CallError(type="LimitExceeded", message=_limit_message(out.killed, limits))
    else:
        error = CallError(
            type="SandboxError",
            message=f"the process exited with status {out.returncode} without returning a result",
            traceback=_tail(out.stderr, 2000),
        )
    return CallResult(error=error, **common)


def run_tests(
    code: str,
    function: str,
    cases: Sequence[TestCase | Mapping[str, Any]],
    *,
    limits: Limits = DEFAULT_LIMITS,
    requirements: Sequence[str] = (),
    case_timeout_s: float = 2.0,
) -> TestReport:
    """Run every case against ``solution.<function>`` in one sandbox and judge each.

    One interpreter starts; each case then runs in a child forked from it, so
    cases share no state (fresh import, fresh arguments) and a case that hangs,
    even inside C code, or exits is killed or reported alone
    (``case_timeout_s``). The driver relays each case's JSON result and
    evaluates assertions on it; expected values are compared here, in the
    trusted parent. The stdlib and allowed packages the code imports are loaded
    once before the first fork, so a case costs a few milliseconds.
    """
    checked = [c if isinstance(c, TestCase) else TestCase.model_validate(c) for c in cases]
    job = {
        "function": function,
        "cases": [{"args": _json_text(c.args, f"args of case {c.name!r}"), "assertion": c.assertion} for c in checked],
        "case_timeout_s": min(case_timeout_s, limits.wall_s),
    }
    out = blocking(_execute, "tests", {"solution.py": code}, job, limits, requirements, None)

    records: dict[int, dict[str, Any]] = {}
    tampered = out.garbled
    for record in out.records:
        if record.get("kind") == "case":
            tampered |= record.get("index") in records
            records[record.get("index", -1)] = record
    load_error = next((r for r in out.records if r.get("kind") == "load_error"), None)
    finished = any(r.get("kind") == "done" for r in out.records)

    if tampered:
        error: str | None = _TAMPERED
    elif load_error is not None:
        error = f"the code could not be loaded: {_call_error(load_error)}"
        if load_error.get("traceback"):
            error += "\n" + load_error["traceback"]
    elif out.killed:
        error = _limit_message(out.killed, limits)
    elif not finished:
        error = f"the process exited with status {out.returncode} before finishing the cases"
    else:
        error = None

    verdicts = []
    for index, case in enumerate(checked):
        found = records.get(index)
        if tampered or load_error is not None or found is None:
            verdicts.append(CaseResult(name=case.name, passed=False, error=f"not run: {error}"))
        else:
            verdicts.append(_judge(case, found))
    passed = sum(v.passed for v in verdicts)
    return TestReport(
        cases=verdicts,
        passed=passed,
        failed=len(verdicts) - passed,
        error=error,
        stdout=out.stdout,
        stderr=out.stderr,
        duration_s=out.duration_s,
        killed=out.killed,
    )


def ensure_packages(requirements: Sequence[str], allowed: Collection[str]) -> Path:
    """Return a cached venv holding ``requirements``, installing it once if needed.

    Every requirement must name a package on ``allowed`` (the blueprint's
    allow-list); their own dependencies come along. The venv lives under
    ``$SWARM_SANDBOX_CACHE`` (default ``~/.cache/swarm/sandbox-envs``) in a
    folder keyed by the sorted requirement set and the interpreter, so later
    runs reuse it. Only wheels are accepted: building an sdist would run the
    package's own code, as this (maybe root) process, before any sandbox.
    """
    names = [_requirement_name(r) for r in requirements]
    permitted = {_normalise(p) for p in allowed}
    for name in names:
        if name not in permitted:
            raise SandboxError(f"package {name!r} is not on the blueprint's allow-list: {sorted(allowed)}")
    wanted = sorted({r.strip() for r in requirements})
    identity = json.dumps([wanted, sys.version, os.path.realpath(sys.executable)])
    key = hashlib.sha256(identity.encode()).hexdigest()[:24]
    root = _cache_root()
    env = root / key
    if (env / _ENV_READY).is_file():
        return env
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / f"{key}.lock"):
        if (env / _ENV_READY).is_file():  # built by someone else while we waited
            return env
        shutil.rmtree(env, ignore_errors=True)  # a half-built one from a crash
        try:
            _tool([sys.executable, "-m", "venv", "--without-pip", str(env)], "creating the venv")
            if wanted:
                pip = [sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install"]
                flags = ["--no-input", "--disable-pip-version-check", "--quiet", "--only-binary=:all:"]
                _tool([*pip, *flags, *wanted], f"pip install {' '.join(wanted)}")
            modules = sorted(_top_level_modules(_site_packages(env)))
            (env / _ENV_IMPORTS).write_text(json.dumps(modules))
            (env / _ENV_READY).write_text(identity)
        except BaseException:
            shutil.rmtree(env, ignore_errors=True)
            raise
    return env


# --------------------------------------------------------------------------- running one job

_UID_FIRST, _UID_COUNT = 2_000_000, 4096  # leased uids/gids: in no passwd file, one per concurrent run
_MAX_VALUE_BYTES = 4 << 20  # one returned value or test record
_MAX_CHANNEL_BYTES = 64 << 20  # everything on the result pipe
_CASE_OUTPUT_CHARS = 4096  # stdout kept per test case
_ENV_READY, _ENV_IMPORTS = "swarm-ready", "swarm-imports.json"
_TAMPERED = "the result channel carried data the sandbox did not write (or overflowed): the code tampered with it"


@dataclass
class _Outcome:
    returncode: int
    stdout: str
    stderr: str
    truncated: bool
    duration_s: float
    killed: str | None
    records: list[dict[str, Any]]
    garbled: bool


def _execute(
    mode: str,
    files: Mapping[str, str],
    job: dict[str, Any],
    limits: Limits,
    requirements: Sequence[str],
    stdin: str | None,
) -> _Outcome:
    """Prepare a work dir and identity, run the driver under supervision, clean everything up."""
    python, site_dir, imports = _interpreter(requirements, limits.allowed_packages)
    with _leased_uid() as uid:
        workdir = _make_workdir(files, uid)
        try:
            config = {
                "mode": mode,
                "workdir": workdir,
                "uid": uid,
                "site_packages": site_dir,
                "allowed_imports": sorted(imports | {_normalise(p).replace("-", "_") for p in limits.allowed_packages}),
                "allowed_packages": sorted(limits.allowed_packages),
                "hidden": sorted(os.path.realpath(path) for path in limits.hidden),
                "network": limits.network,
                "max_procs": limits.max_procs,
                "disk_mb": limits.disk_mb,
                "rlimits": _rlimits(limits, uid, runner=mode != "script"),
                "max_value_bytes": _MAX_VALUE_BYTES,
                "case_output_chars": _CASE_OUTPUT_CHARS,
                **job,
            }
            return _supervise(python, workdir, config, limits, uid, stdin)
        finally:
            if uid is not None:
                _remove_files_of(uid)  # without a mount namespace, writes to /tmp stay on the host
            _remove_tree(workdir)


def _supervise(
    python: str, workdir: str, config: dict[str, Any], limits: Limits, uid: int | None, stdin: str | None
) -> _Outcome:
    """Start the driver, feed and drain its pipes, enforce the wall clock, classify the end."""
    cfg_r, cfg_w = os.pipe()
    res_r, res_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r, in_w = os.pipe() if stdin is not None else (None, None)
    child_ends = [fd for fd in (cfg_r, res_w, out_w, err_w, in_r) if fd is not None]
    parent_ends = [fd for fd in (cfg_w, res_r, out_r, err_r, in_w) if fd is not None]
    try:
        proc = subprocess.Popen(
            [python, "-S", "-B", "-P", "-c", _driver_source(), str(cfg_r), str(res_w)],
            stdin=in_r if in_r is not None else subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            pass_fds=(cfg_r, res_w),
            cwd=workdir,
            env=_sandbox_env(workdir),
            process_group=0,
        )
    except BaseException:
        for fd in parent_ends:
            os.close(fd)
        raise
    finally:
        for fd in child_ends:
            os.close(fd)

    start = time.monotonic()
    keep = limits.output_kb * 1024
    out, err, res = _Sink(keep), _Sink(keep), _Sink(_MAX_CHANNEL_BYTES, tail=False)
    writes = {cfg_w: json.dumps(config).encode()}
    if in_w is not None:
        writes[in_w] = (stdin or "").encode()
    pipes = _Pipes(writes, {out_r: out, err_r: err, res_r: res}, proc.pid)
    status = usage = None
    timed_out = False
    deadline = start + limits.wall_s
    try:
        while status is None:
            now = time.monotonic()
            if now >= deadline:
                if not timed_out:  # the driver's supervisor kills the code, reaps and reports
                    timed_out = True
                    _signal(proc.pid, signal.SIGTERM)
                else:  # it did not wind down: end its whole group
                    _killpg(proc.pid)
                    if uid is not None:
                        _kill_uid(uid)
                deadline = now + 2.0
            pipes.step(deadline - now)
            pid, raw_status, raw_usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status, usage = raw_status, raw_usage
        proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen never waits on a reused pid
        duration = time.monotonic() - start
        # Backstop for anything the supervisor missed (it was killed, say): the leased uid, or our group.
        if uid is not None:
            _kill_uid(uid)
        else:
            _killpg(proc.pid)
        pipes.drain(time.monotonic() + 1.0)
        records, garbled = _parse_records(res)
    finally:
        pipes.close()

    # The supervisor's last word says how the code's own process ended; it comes after the code is gone.
    assert status is not None and usage is not None
    cpu_s = usage.ru_utime + usage.ru_stime
    exits = [r for r in records if r.get("kind") == "exit"]
    if exits:
        status, cpu_s = exits[-1]["status"], exits[-1]["cpu_s"]
    reported = next((r.get("reason") for r in records if r.get("kind") == "limit"), None)
    return _Outcome(
        returncode=os.waitstatus_to_exitcode(status),
        stdout=out.text(),
        stderr=err.text(),
        truncated=out.cut or err.cut,
        duration_s=round(duration, 4),
        killed=_classify(status, cpu_s, timed_out, reported, limits),
        records=[r for r in records if r.get("kind") not in ("started", "exit")],
        garbled=garbled,
    )


def _classify(status: int, cpu_s: float, timed_out: bool, reported: str | None, limits: Limits) -> str | None:
    """Name the limit that ended the run, from the exit status and what the driver reported."""
    if timed_out:
        return "timeout"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= limits.cpu_s - 0.05):
            return "cpu"
        return reported or f"signal {sig}"
    return reported if reported in ("memory", "file_size", "disk", "procs") else None


def _limit_message(killed: str, limits: Limits) -> str:
    return {
        "timeout": f"stopped at the wall-clock limit of {limits.wall_s:g} s (Limits.wall_s)",
        "cpu": f"stopped at the CPU-time limit of {limits.cpu_s} s (Limits.cpu_s)",
        "memory": f"ran out of memory: the limit is {limits.memory_mb} MB of address space (Limits.memory_mb)",
        "file_size": f"tried to write a file larger than {limits.file_mb} MB (Limits.file_mb)",
        "disk": f"filled the {limits.disk_mb} MB of disk space of the run (Limits.disk_mb)",
        "procs": f"hit the limit of {limits.max_procs} processes and threads (Limits.max_procs)",
    }.get(killed, f"killed by {killed}")


def _parse_records(sink: _Sink) -> tuple[list[dict[str, Any]], bool]:
    """Decode the result pipe: one JSON object per line. ``garbled`` flags anything else."""
    records, garbled = [], sink.cut
    for line in bytes(sink.head).splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if b"\\ud" in line:  # printed or raised text with a lone surrogate: stored as UTF-8 it would fail
                record = json.loads(json.dumps(record, ensure_ascii=False).encode("utf-8", "replace"))
        except ValueError:
            garbled = True
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            garbled = True
    return records, garbled


def _call_error(record: Mapping[str, Any]) -> CallError:
    return CallError(
        type=str(record.get("type", "Error")),
        message=str(record.get("message", "")),
        traceback=str(record.get("traceback", "")),
    )


def _judge(case: TestCase, record: Mapping[str, Any]) -> CaseResult:
    """Turn the driver's raw record of one case into a verdict, comparing expected values here."""
    common = {"name": case.name, "stdout": record.get("stdout", ""), "duration_s": record.get("duration_s", 0.0)}
    if record.get("error"):
        failure = _call_error(record["error"])
        text = str(failure) + (f"\n{failure.traceback}" if failure.traceback else "")
        return CaseResult(passed=False, error=text, **common)
    has_json = "result" in record
    actual = record["result"] if has_json else record.get("result_repr")
    problems = []
    if case.expected is not None:
        if not has_json:
            problems.append(f"expected {_brief(case.expected)}, got a value that is not JSON-serialisable: {actual}")
        elif not _same(record["result"], case.expected):
            problems.append(f"expected {_brief(case.expected)}, got {_brief(record['result'])}")
    if case.assertion:
        if record.get("assertion_error"):
            problems.append(f"assertion {case.assertion!r} raised {_call_error(record['assertion_error'])}")
        elif record.get("assertion") is not True:
            problems.append(f"assertion failed: {case.assertion} (result = {_brief(actual)})")
    return CaseResult(passed=not problems, actual=actual, error="; ".join(problems) or None, **common)


def _same(actual: Any, expected: Any) -> bool:
    """JSON equality, with floats compared to a relative 1e-9 and bools never equal to numbers."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(actual, (int, float)) and isinstance(expected, (int, float)):
        return math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-12) or actual == expected
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(map(_same, actual, expected))
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(_same(actual[k], expected[k]) for k in actual)
    return actual == expected


def _brief(value: Any, size: int = 300) -> str:
    text = json.dumps(value)
    return text if len(text) <= size else text[: size - 3] + "..."


def _tail(text: str, size: int) -> str:
    return text if len(text) <= size else "..." + text[-size:]


def _json_text(value: Any, what: str) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise SandboxError(f"{what} must be JSON-serialisable: {exc}") from None


# --------------------------------------------------------------------------- pipes


class _Sink:
    """Bounded capture of one pipe: the head and (optionally) the tail, the middle dropped."""

    def __init__(self, limit: int, tail: bool = True):
        self.limit, self.keep_tail = limit, tail
        self.head = bytearray()
        self.end = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        head_room = (self.limit // 2 if self.keep_tail else self.limit) - len(self.head)
        if head_room > 0:
            self.head += chunk[:head_room]
            chunk = chunk[head_room:]
        if chunk and self.keep_tail:
            self.end += chunk
            if len(self.end) > self.limit:  # trim in big steps to stay linear
                del self.end[: len(self.end) - self.limit // 2]

    @property
    def cut(self) -> bool:
        return self.total > len(self.head) + len(self.end[-(self.limit // 2) :])

    def text(self) -> str:
        head = self.head.decode("utf-8", "replace")
        end = bytes(self.end[-(self.limit // 2) :])
        if not self.cut:
            return head + end.decode("utf-8", "replace")
        dropped = self.total - len(self.head) - len(end)
        return f"{head}\n[... {dropped} bytes of output dropped ...]\n{end.decode('utf-8', 'replace')}"


class _Pipes:
    """Feeds the driver's input pipes and drains its output pipes without blocking on any one."""

    def __init__(self, writes: dict[int, bytes], reads: dict[int, _Sink], pid: int):
        self.selector = selectors.DefaultSelector()
        self.pending: dict[int, memoryview] = {}
        self.sinks = reads
        for fd, data in writes.items():
            os.set_blocking(fd, False)
            self.pending[fd] = memoryview(data)
            self.selector.register(fd, selectors.EVENT_WRITE)
        for fd in reads:
            self.selector.register(fd, selectors.EVENT_READ)
        try:  # wakes the loop the moment the driver exits (Linux >= 5.3)
            self.pidfd: int | None = os.pidfd_open(pid)
            self.selector.register(self.pidfd, selectors.EVENT_READ)
        except (AttributeError, OSError):
            self.pidfd = None
        self.open = set(writes) | set(reads)

    def step(self, timeout: float) -> None:
        """Move whatever data is ready within ``timeout`` seconds."""
        if self.pidfd is None:
            timeout = min(timeout, 0.01)  # no exit notification: poll
        for key, _ in self.selector.select(max(timeout, 0)):
            fd = key.fd
            if fd == self.pidfd:
                self.selector.unregister(fd)  # readable from now on; wait4 takes over
                continue
            if fd in self.pending:
                data = self.pending[fd]
                try:
                    sent = os.write(fd, data[: 1 << 16])
                except BlockingIOError:
                    continue
                except OSError:  # the driver closed it (or died): the rest is moot
                    sent = len(data)
                self.pending[fd] = data[sent:]
                if not self.pending[fd]:
                    self._close(fd)
            else:
                chunk = os.read(fd, 1 << 16)
                if chunk:
                    self.sinks[fd].feed(chunk)
                else:
                    self._close(fd)

    def drain(self, deadline: float) -> None:
        """Read the output pipes to their end, or until the deadline if something still holds them."""
        for fd in list(self.pending):
            self._close(fd)
        while self.open and time.monotonic() < deadline:
            self.step(deadline - time.monotonic())

    def close(self) -> None:
        for fd in list(self.open):
            self._close(fd)
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        self.selector.close()

    def _close(self, fd: int) -> None:
        if fd in self.open:
            self.open.discard(fd)
            self.pending.pop(fd, None)
            self.selector.unregister(fd)
            os.close(fd)


# --------------------------------------------------------------------------- identity, processes, files


def _rlimits(limits: Limits, uid: int | None, runner: bool) -> dict[str, list[int]]:
    """The rlimits the driver applies to itself before running the code.

    ``runner``: the code runs in a child of the driver's process, which needs a slot of its own.
    """
    procs = limits.max_procs + runner
    if uid is None:  # without a uid of its own, RLIMIT_NPROC counts every task of our user
        procs += _count_tasks(os.getuid())
    return {
        "RLIMIT_CPU": [limits.cpu_s, limits.cpu_s + 1],  # SIGXCPU at the soft limit, SIGKILL a second later
        "RLIMIT_AS": [limits.memory_mb << 20] * 2,
        "RLIMIT_FSIZE": [limits.file_mb << 20] * 2,
        "RLIMIT_NPROC": [procs] * 2,
        "RLIMIT_NOFILE": [1024] * 2,
        "RLIMIT_CORE": [0, 0],
    }


def _sandbox_env(workdir: str) -> dict[str, str]:
    """The whole environment the code sees. Nothing is inherited: no API keys, no cloud credentials."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONHASHSEED": "0",  # the same set order on every run: replays stay replays
        "PYTHONUTF8": "1",
        "PYTHONUNBUFFERED": "1",  # output printed before a timeout is not lost in a buffer
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",  # numeric libraries would start a thread per core
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",  # each glibc arena reserves 64 MB of the address-space limit
    }


@contextmanager
def _leased_uid() -> Iterator[int | None]:
    """As root, lease a uid no other run is using, so NPROC, signals and files are per run.

    Yields None when not root: the code then runs as our own user.
    """
    if os.geteuid() != 0:
        yield None
        return
    pool = _uid_pool()
    locks = _lock_dir()
    candidates = random.sample(pool, min(len(pool), 64)) + [random.choice(pool)]
    for attempt, uid in enumerate(candidates):
        fd = os.open(locks / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:  # the last attempt waits for its lock instead of giving up
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if attempt == len(candidates) - 1 else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield uid
        finally:
            os.close(fd)
        return
    raise SandboxError("no sandbox uid could be leased")  # pragma: no cover - the last attempt blocks


@functools.cache
def _uid_pool() -> list[int]:
    """The uids to lease: a private range if this user namespace maps it, else just nobody."""

    def mapped(table: str, first: int, count: int) -> bool:
        try:
            rows = [list(map(int, line.split())) for line in Path(table).read_text().splitlines()]
        except OSError:
            return True  # no user namespaces: every id exists
        return any(inside <= first and first + count <= inside + size for inside, _, size in rows)

    for first, count in ((_UID_FIRST, _UID_COUNT), (65534, 1)):
        if mapped("/proc/self/uid_map", first, count) and mapped("/proc/self/gid_map", first, count):
            return list(range(first, first + count))
    raise SandboxError("no unprivileged uid is mapped in this user namespace; cannot run code safely as root")


def _lock_dir() -> Path:
    """A root-only directory for the uid leases, checked so no sandbox user can plant locks in it."""
    for path in (Path("/run/swarm-sandbox"), Path(tempfile.gettempdir()) / "swarm-sandbox-uids"):
        try:
            path.mkdir(mode=0o700, exist_ok=True)
            info = path.lstat()
        except OSError:
            continue
        if path.is_dir() and not path.is_symlink() and info.st_uid == 0 and not info.st_mode & 0o022:
            return path
    raise SandboxError("no safe directory for sandbox uid leases (/run/swarm-sandbox)")


def _kill_uid(uid: int) -> None:
    """SIGKILL every process whose uids are all the leased one, until none is left.

    A scan of /proc rather than ``kill(-1)``: as root a slip there would kill the machine. Each
    match is pinned with a pidfd and checked again before the signal, so a pid reused meanwhile
    by someone else's process is never hit.
    """
    if uid == 0:
        raise SandboxError("refusing to kill processes of uid 0")
    for _ in range(100):
        found = False
        for pid in _pids_of(uid):
            found = True
            try:
                handle = os.pidfd_open(pid)
            except OSError:
                continue  # gone already
            try:
                if _runs_as(pid, uid):
                    signal.pidfd_send_signal(handle, signal.SIGKILL)
            except OSError:
                pass
            finally:
                os.close(handle)
        if not found:
            return
        time.sleep(0.001)


def _pids_of(uid: int) -> Iterator[int]:
    """Live processes whose real, effective, saved and filesystem uids are all ``uid``."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _runs_as(int(entry.name), uid):
            yield int(entry.name)


def _runs_as(pid: int, uid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            text = status.read()
    except OSError:
        return False
    return f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}\n" in text and "State:\tZ" not in text


def _count_tasks(uid: int) -> int:
    """Tasks (threads included) whose real uid is ``uid``: what RLIMIT_NPROC counts."""
    total = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/status") as status:
                    fields = dict(line.split(":", 1) for line in status if ":" in line)
                if int(fields["Uid"].split()[0]) == uid:
                    total += int(fields["Threads"])
            except (OSError, KeyError, ValueError):
                continue
    return total


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _relative_path(name: str) -> str:
    """A file name inside the work dir, or SandboxError: no absolute paths, no '..'."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or not path.parts:
        raise SandboxError(f"file name {name!r} must be a relative path inside the working directory")
    return str(path)


def _make_workdir(files: Mapping[str, str], uid: int | None) -> str:
    """A fresh 0700 directory holding ``files``, owned by the leased uid when there is one."""
    names = {_relative_path(name): text for name, text in files.items()}
    workdir = tempfile.mkdtemp(prefix="swarm-sandbox-")
    try:
        for name, text in names.items():
            path = os.path.join(workdir, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
        if uid is not None:
            for folder, _, entries in os.walk(workdir):
                os.chown(folder, uid, uid)
                for entry in entries:
                    os.chown(os.path.join(folder, entry), uid, uid)
    except BaseException:
        _remove_tree(workdir)
        raise
    return workdir


def _remove_tree(path: str) -> None:
    def unlock_and_retry(func: Any, target: str, _exc: Any) -> None:
        try:  # the code may have made its own folders read-only
            os.chmod(os.path.dirname(target), 0o700)
            func(target)
        except OSError:
            pass

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=unlock_and_retry)


def _remove_files_of(uid: int) -> None:
    """Delete what the leased uid left at the top of the world-writable temp dirs.

    File permissions stop its writes everywhere else; these dirs are the gap.
    """
    for folder in {tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"}:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    _remove_tree(entry.path)
                else:
                    os.unlink(entry.path)
            except OSError:
                continue


# --------------------------------------------------------------------------- packages


def _interpreter(requirements: Sequence[str], allowed: Collection[str]) -> tuple[str, str | None, set[str]]:
    """The interpreter, extra sys.path entry and importable top-level names for a run."""
    if not requirements:
        return sys.executable, None, set()
    env = ensure_packages(requirements, allowed)
    return str(env / "bin" / "python"), str(_site_packages(env)), set(json.loads((env / _ENV_IMPORTS).read_text()))


_REQUIREMENT = re.compile(
    r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(\[[A-Za-z0-9._,\s-]*\])?\s*([^@;]*)(;[^@]*)?$"
)


def _requirement_name(requirement: str) -> str:
    """The normalised project name of a plain requirement; URLs, paths and pip options are refused."""
    match = _REQUIREMENT.match(requirement)
    if not match or "/" in requirement or not re.fullmatch(r"[\s<>=!~.,*+A-Za-z0-9_-]*", match.group(3)):
        raise SandboxError(f"requirement {requirement!r} is not a plain 'name[extras] version' requirement")
    return _normalise(match.group(1))


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _cache_root() -> Path:
    configured = os.environ.get("SWARM_SANDBOX_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "swarm" / "sandbox-envs"


def _site_packages(env: Path) -> Path:
    return env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _top_level_modules(site: Path) -> set[str]:
    """Every top-level module the installed distributions provide: what the import gate lets through."""
    names: set[str] = set()
    for dist in importlib.metadata.distributions(path=[str(site)]):
        names.update(line.strip() for line in (dist.read_text("top_level.txt") or "").splitlines() if line.strip())
        for file in dist.files or ():
            first = file.parts[0] if file.parts else ""
            if first in ("..", "__pycache__", "bin") or first.endswith((".dist-info", ".data", ".pth", ".egg-info")):
                continue
            names.add(first.split(".", 1)[0])
    return names


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _tool(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SandboxError(f"{what} failed (exit {done.returncode}): {_tail(done.stderr.strip(), 2000)}")


# --------------------------------------------------------------------------- the driver


@functools.cache
def _driver_source() -> str:
    return textwrap.dedent(inspect.getsource(_driver)) + "\n_driver()\n"


def _driver():  # type: ignore[no-untyped-def]  # pragma: no cover - runs in the sandboxed interpreter
    """Entry point of the sandboxed interpreter (``python -S -c <this source> CFG_FD RESULT_FD``).

    Self-contained on purpose: stdlib imports only, nothing from this module's
    globals. Order matters: read the job; fork into a supervisor, which stays
    outside (root when we are) to reap and report, and the code's process,
    which as root enters new PID, network and mount namespaces and drops to
    the leased uid; apply rlimits and the import gate; install the audit hook
    last, just before the code runs. For a call or test cases the code's
    process becomes a relay that forks a fresh child for each.
    """
    import builtins
    import errno
    import io
    import json
    import os
    import resource
    import signal
    import sys
    import time

    cfg_fd, out_fd = int(sys.argv[1]), int(sys.argv[2])
    raw = bytearray()
    while chunk := os.read(cfg_fd, 1 << 16):
        raw += chunk
    os.close(cfg_fd)
    cfg = json.loads(raw)
    del raw
    os.set_inheritable(out_fd, False)  # programs the code starts do not get the result pipe
    workdir, uid, mode = cfg["workdir"], cfg["uid"], cfg["mode"]

    def send(record):
        data = (json.dumps(record) + "\n").encode()
        while data:
            data = data[os.write(out_fd, data) :]

    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        text, flags = ctypes.c_char_p, ctypes.c_ulong
        libc.mount.argtypes = [text, text, text, flags, text]
        libc.prctl.argtypes = [ctypes.c_int, flags, flags, flags, flags]
    except (ImportError, OSError, AttributeError):
        libc = None

    def prctl(option, value):
        return libc is not None and libc.prctl(option, value, 0, 0, 0) == 0

    def unshare(flags):
        return libc is not None and libc.unshare(flags) == 0

    def mount(source, target, fstype, flags, data):
        encode = lambda text: None if text is None else text.encode()  # noqa: E731
        return libc is not None and libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)) == 0

    pr_set_pdeathsig, pr_set_dumpable, pr_set_child_subreaper, pr_set_no_new_privs = 1, 4, 36, 38
    clone_newns, clone_newpid, clone_newnet = 0x00020000, 0x20000000, 0x40000000
    ms_rdonly, ms_nosuid, ms_nodev, ms_noexec, ms_rec, ms_private = 1, 2, 4, 8, 1 << 14, 1 << 18
    prctl(pr_set_pdeathsig, signal.SIGKILL)  # die with the worker that supervises us

    isolate = uid is not None and os.geteuid() == 0
    if isolate and uid == 0:
        raise SystemExit("sandbox: refusing to run code as uid 0")
    pidns = bool(isolate and unshare(clone_newpid))
    send({"kind": "started", "pidns": pidns})

    # Split in two. The code runs in the child. This process stays outside as its supervisor (root
    # when we are): a subreaper, so everything the code leaves behind becomes its child and is
    # killed and reaped here, and the one that reports how the code ended. The worker asks for a
    # stop with SIGTERM.
    child = 0

    def stop_code(signum, frame):
        if child:
            os.kill(child, signal.SIGKILL)  # not reaped yet, so the pid is still the code's
        else:
            os._exit(1)

    signal.signal(signal.SIGTERM, stop_code)
    prctl(pr_set_child_subreaper, 1)
    child = os.fork()
    if child:
        prctl(pr_set_dumpable, 0)  # the code, same uid when we are not root, cannot reach our fds
        _, status, usage = os.wait4(child, 0)
        # Kill and reap what is left (nothing when a PID namespace went down with the code).
        orphan_of_ours = f"PPid:\t{os.getpid()}\n"
        while True:
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                break
            for name in os.listdir("/proc"):
                if name.isdigit():
                    try:
                        with open(f"/proc/{name}/status") as handle:
                            if orphan_of_ours not in handle.read():
                                continue
                        os.kill(int(name), signal.SIGKILL)
                    except OSError:
                        pass
            time.sleep(0.002)
        send({"kind": "exit", "status": status, "cpu_s": usage.ru_utime + usage.ru_stime})
        os._exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    if cfg["site_packages"]:
        sys.path.append(cfg["site_packages"])
    if isolate:
        if not cfg["network"]:
            unshare(clone_newnet)  # an empty network namespace: not even loopback is up

        def world_traversable(path):
            path = os.path.abspath(path)
            while True:
                if not os.stat(path).st_mode & 0o001:
                    return False
                if path == "/":
                    return True
                path = os.path.dirname(path)

        # The interpreter may live under a root-only dir (pyenv in /root), a package env under a temp
        # dir the mounts below will cover: keep such library dirs reachable through descriptors opened
        # now, for sys.path and for packages already loaded.
        covered = ("/tmp/", "/var/tmp/", "/dev/shm/", *(folder + "/" for folder in cfg["hidden"]))
        moved = {}
        for index, entry in enumerate(sys.path):
            if not entry or not os.path.isdir(entry):
                continue
            if not world_traversable(entry) or (os.path.realpath(entry) + "/").startswith(covered):
                moved[entry] = sys.path[index] = f"/proc/self/fd/{os.open(entry, os.O_PATH | os.O_DIRECTORY)}"
        for module in list(sys.modules.values()):
            search = getattr(module, "__path__", None)
            for index, folder in enumerate(search if isinstance(search, list) else ()):
                for old, new in moved.items():
                    if folder.startswith(old + "/"):
                        search[index] = new + folder[len(old) :]
        # A private mount namespace: size-bounded tmpfs for the work dir and every shared temp dir,
        # and a /proc showing only this run's processes. Making "/" private first keeps our mounts
        # from propagating to the host; if that fails nothing is mounted.
        if unshare(clone_newns) and mount(None, "/", None, ms_rec | ms_private, None):
            files = []
            for folder, _, names in os.walk(workdir):
                for name in names:
                    path = os.path.join(folder, name)
                    with open(path, "rb") as handle:
                        files.append((os.path.relpath(path, workdir), handle.read()))
            size = f"size={cfg['disk_mb']}m"
            for folder in cfg["hidden"]:  # not one that holds the work dir: that is a temp dir, covered below
                if os.path.isdir(folder) and not workdir.startswith(folder.rstrip("/") + "/"):
                    mount("tmpfs", folder, "tmpfs", ms_rdonly | ms_nosuid | ms_nodev | ms_noexec, "size=4k,mode=0555")
            for shared in ("/tmp", "/var/tmp", "/dev/shm"):
                if os.path.isdir(shared) and not os.path.islink(shared):
                    mount("tmpfs", shared, "tmpfs", ms_nosuid | ms_nodev, f"{size},mode=1777")
            os.makedirs(workdir, exist_ok=True)
            mount("tmpfs", workdir, "tmpfs", ms_nosuid | ms_nodev, f"{size},mode=0700")
            for name, data in files:
                path = os.path.join(workdir, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as handle:
                    handle.write(data)
            for folder, dirs, names in os.walk(workdir):
                for name in [folder, *(os.path.join(folder, n) for n in dirs + names)]:
                    os.chown(name, uid, uid)
            if pidns:
                mount("proc", "/proc", "proc", ms_nosuid | ms_nodev | ms_noexec, None)

        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        prctl(pr_set_pdeathsig, signal.SIGKILL)  # the credential change cleared it
    prctl(pr_set_no_new_privs, 1)  # setuid programs cannot hand privileges back

    for name, (soft, hard) in cfg["rlimits"].items():
        kind = getattr(resource, name)
        _, current = resource.getrlimit(kind)
        if current != resource.RLIM_INFINITY:
            hard = min(hard, current)
        resource.setrlimit(kind, (min(soft, hard), hard))

    me = [os.getpid()]  # the process that speaks for the run; a fork of it must stay silent
    os.chdir(workdir)
    home = os.path.realpath(workdir)
    builtins.exit = builtins.quit = sys.exit  # what the skipped site module would have added
    memory_line = b'{"kind": "limit", "reason": "memory"}\n'  # ready before memory runs out

    def report(record):
        if os.getpid() == me[0]:  # a forked child returning into the driver must not report
            send(record)

    def flush():
        for stream in (sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except BaseException:
                pass

    def leave_if_forked(code):
        if os.getpid() != me[0]:
            flush()
            os._exit(code)

    # -- import gate: a clear error naming the module, rather than a bare ModuleNotFoundError
    import importlib.machinery

    allowed = frozenset(cfg["allowed_imports"]) | sys.stdlib_module_names | frozenset(sys.builtin_module_names)
    allow_list = cfg["allowed_packages"]

    local_modules = [False]  # only where the code runs: the relay must never import it

    class ImportGate:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if "." in name or name in allowed:
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, [workdir]) if local_modules[0] else None
            if spec is not None:
                return spec  # the code's own modules
            raise ModuleNotFoundError(
                f"import of {name!r} is not allowed in the sandbox: it is neither in the standard "
                f"library nor on the blueprint's allow-list {allow_list}",
                name=name,
            )

        @staticmethod
        def invalidate_caches():
            pass

    sys.meta_path.insert(0, ImportGate)

    # -- audit hook: refuse what ordinary code should not do, with an error that says why
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    # event -> (path argument, its dir_fd argument, whether a final symlink is followed)
    path_events = {
        "os.mkdir": ((0, 2, False),),
        "os.rmdir": ((0, 1, False),),
        "os.remove": ((0, 1, False),),
        "os.rename": ((0, 2, False), (1, 3, False)),
        "os.symlink": ((1, 2, False),),
        "os.link": ((0, 2, True), (1, 3, False)),
        "os.chmod": ((0, 2, True),),
        "os.chown": ((0, 3, True),),
        "os.truncate": ((0, None, True),),
        "os.utime": ((0, 3, True),),
        "shutil.rmtree": ((0, 1, False),),
    }
    spawn_events = frozenset({"os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen"})
    net_events = frozenset({"socket.connect", "socket.sendto", "socket.sendmsg"})
    own_fds = ("/dev/null", "/dev/stdout", "/dev/stderr")
    max_procs, network = cfg["max_procs"], cfg["network"]
    guard_proc = not isolate  # as root the kernel already hides other users' /proc entries, and mounts the stores'
    hidden = cfg["hidden"]
    spawned = 0

    def resolve(path, dir_fd, follow):
        path = os.fsdecode(path)
        if not os.path.isabs(path):
            base = os.readlink(f"/proc/self/fd/{dir_fd}") if isinstance(dir_fd, int) and dir_fd >= 0 else os.getcwd()
            path = os.path.join(base, path)
        if follow:
            return os.path.realpath(path)
        folder, name = os.path.split(path)
        return os.path.join(os.path.realpath(folder), name)

    def inside(path, dir_fd=None, follow=True):
        if isinstance(path, int):
            return True
        try:
            if os.fsdecode(path) in own_fds:
                return True
            path = resolve(path, dir_fd, follow)
        except (TypeError, ValueError, OSError):
            return False
        return path == home or path.startswith(home + "/")

    def refuse_write(path):
        raise PermissionError(errno.EACCES, "sandbox: writing outside the working directory is not allowed", path)

    def audit(event, args):
        nonlocal spawned
        if event == "open":
            path, _, flags = args
            if path is None or isinstance(path, int):
                return
            if isinstance(flags, int) and flags & write_flags:
                if not inside(path):
                    refuse_write(path)
            elif guard_proc:
                try:
                    target = resolve(path, None, True)
                except (TypeError, ValueError, OSError):
                    return
                parts = target.split("/")
                if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and int(parts[2]) != os.getpid():
                    raise PermissionError(errno.EACCES, "sandbox: other processes' /proc entries are off limits", path)
                if any((target + "/").startswith(folder.rstrip("/") + "/") for folder in hidden):
                    raise PermissionError(errno.EACCES, "sandbox: the swarm's stores are off limits", path)
        elif event in path_events:
            for at, fd_at, follow in path_events[event]:
                dir_fd = args[fd_at] if fd_at is not None and fd_at < len(args) else None
                if at < len(args) and not inside(args[at], dir_fd, follow):
                    refuse_write(args[at])
        elif event in spawn_events:
            spawned += 1
            if spawned > max_procs:
                raise BlockingIOError(errno.EAGAIN, f"sandbox: process limit reached (max_procs={max_procs})")
        elif event in net_events and not network and getattr(args[0], "family", None) != 1:  # 1: AF_UNIX
            raise PermissionError(errno.EACCES, "sandbox: network access is disabled (Limits.network is False)")

    # -- reporting helpers
    def own_frame(filename):
        return filename.startswith(home + "/") or filename.startswith(workdir + "/") or filename[:1] not in "</"

    def describe(exc, lines=40):
        """Exception as {type, message, traceback}: the driver's frames out, paths made relative."""
        import traceback

        try:
            te = traceback.TracebackException.from_exception(exc)
            traceback.clear_frames(exc.__traceback__)  # let go of the code's locals (a MemoryError's hog)
            frames = list(te.stack)
            first = next((i for i, f in enumerate(frames) if own_frame(f.filename)), len(frames))
            kept = [f for f in frames[first:] if f.filename != "<string>" and not f.filename.startswith("<frozen")]
            te.stack = traceback.StackSummary.from_list(kept)
            text = "".join(te.format()).replace(home + "/", "").replace(workdir + "/", "")
            text = "\n".join(text.splitlines()[-lines:])
        except BaseException:
            text = ""
        try:
            message = str(exc)
        except BaseException:
            message = "<unprintable exception>"
        cls = type(exc)
        name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
        return {"type": name, "message": message[:4000], "traceback": text}

    def limit_of(exc):
        """The limit an exception reveals, if any."""
        if isinstance(exc, MemoryError):
            return "memory"
        if isinstance(exc, OSError) and exc.errno in (errno.EFBIG, errno.ENOSPC):
            return "file_size" if exc.errno == errno.EFBIG else "disk"
        if isinstance(exc, BlockingIOError) or (isinstance(exc, RuntimeError) and "can't start new thread" in str(exc)):
            return "procs"
        return None

    def as_json(value):
        """(json text, None) or (None, why not)."""
        try:
            text = json.dumps(value, allow_nan=False)  # inf and NaN are not JSON: stored, they would turn into null
            if "\\ud" in text:  # maybe a lone surrogate (chr(0xdcff)): not Unicode, so never storable as UTF-8
                json.dumps(value, ensure_ascii=False).encode()
        except (TypeError, ValueError, RecursionError, OverflowError) as exc:
            return None, f"not JSON-serialisable ({exc})"
        if len(text) > cfg["max_value_bytes"]:
            return None, f"larger than {cfg['max_value_bytes']} bytes as JSON"
        return text, None

    def short_repr(value):
        try:
            text = repr(value)
        except BaseException:
            text = f"<{type(value).__name__} with a failing repr>"
        return text if len(text) <= 1000 else text[:997] + "..."

    # -- a script runs right here
    if mode == "script":
        import runpy

        sys.path.insert(0, workdir)
        local_modules[0] = True
        sys.addaudithook(audit)
        sys.argv = [cfg["script"]]
        code = 0
        try:
            runpy.run_path(cfg["script"], run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except BaseException as exc:
            leave_if_forked(1)
            reason = limit_of(exc)
            if reason == "memory":
                os.write(out_fd, memory_line)
            elif reason:
                report({"kind": "limit", "reason": reason})
            try:
                sys.stderr.write(describe(exc, lines=200)["traceback"] + "\n")
            except BaseException:
                pass
            code = 1
        leave_if_forked(code)
        flush()
        raise SystemExit(code)  # a normal exit: atexit handlers and threads finish as in plain python

    # -- a call or test cases: the code runs in a fresh child per call or case; this process relays.
    # The child closes the result pipe before the code runs and cannot reopen it (this process and
    # the supervisor are not dumpable), so what arrives there is the driver's word, not the code's.
    # Assertions are evaluated here, on the JSON form of the result.
    import ast
    import importlib
    import math
    import select

    prctl(pr_set_dumpable, 0)
    importlib.import_module("traceback")  # used by describe() in every child: load it once
    sys.argv = ["solution.py"]
    cpu_limit = cfg["rlimits"]["RLIMIT_CPU"][0]

    # Load the stdlib and allowed packages the code imports once, here, so each child starts warm.
    try:
        with open("solution.py", "rb") as handle:
            tree = ast.parse(handle.read())
        wanted = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                wanted.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                wanted.add(node.module)
    except BaseException:
        wanted = set()
    for name in sorted(wanted):
        top = name.partition(".")[0]
        noisy = top in ("antigravity", "this", "turtle", "tkinter", "idlelib")  # side effects on import
        if top in allowed and not noisy and importlib.machinery.PathFinder.find_spec(top, [workdir]) is None:
            try:
                importlib.import_module(name)
            except BaseException:
                pass

    def load():
        module = importlib.import_module("solution")
        function = getattr(module, cfg["function"], None)
        if not callable(function):
            raise AttributeError(f"solution.py defines no function {cfg['function']!r}")
        return function

    def run_child(task, timeout):
        """Run task() in a fresh child; return (its record or None, wait status, rusage, timed out)."""
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            os.close(out_fd)
            me[0] = os.getpid()
            sys.path.insert(0, workdir)
            local_modules[0] = True
            sys.addaudithook(audit)
            try:
                data = (json.dumps(task()) + "\n").encode()
            except BaseException as exc:
                leave_if_forked(1)
                data = (json.dumps({"kind": "error", **describe(exc)}) + "\n").encode()
            leave_if_forked(0)
            flush()  # before the record: the relay may end this process as soon as it has it
            try:
                while data:
                    data = data[os.write(write_end, data) :]
            finally:
                os._exit(0)
        os.close(write_end)
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        cap = cfg["max_value_bytes"] + (1 << 20)
        deadline = None if timeout is None else time.monotonic() + timeout
        data, status, usage, timed_out = bytearray(), None, None, False
        while b"\n" not in data and len(data) <= cap:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                timed_out = True
                break
            poll = remaining if pidfd is not None else min(0.02, remaining if remaining is not None else 0.02)
            ready = select.select([read_end] + ([pidfd] if pidfd is not None else []), [], [], poll)[0]
            if read_end in ready:
                chunk = os.read(read_end, 1 << 16)
                if not chunk:
                    break
                data += chunk
            elif pidfd is None or pidfd in ready:
                done, raw_status, raw_usage = os.wait4(pid, os.WNOHANG)
                if done:
                    status, usage = raw_status, raw_usage
                    os.set_blocking(read_end, False)  # take what it wrote before it went
                    try:
                        while len(data) <= cap and (chunk := os.read(read_end, 1 << 16)):
                            data += chunk
                    except BlockingIOError:
                        pass
                    break
        if status is None:
            os.kill(pid, signal.SIGKILL)  # out of time, or done talking
            _, status, usage = os.wait4(pid, 0)
        os.close(read_end)
        if pidfd is not None:
            os.close(pidfd)
        # Strays the code left (daemons, grandchildren) must not run into the next case. As the
        # namespace's first process, kill(-1) reaches exactly the other processes of this run.
        if pidns and os.getpid() == 1 and os.getuid() != 0:
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        record = None
        if b"\n" in data:
            try:
                record = json.loads(bytes(data).partition(b"\n")[0])
            except ValueError:
                record = None
        return (record if isinstance(record, dict) else None), status, usage, timed_out

    def death(status, usage):
        """(limit, message) for a child that ended without reporting."""
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and usage.ru_utime + usage.ru_stime >= cpu_limit - 0.05):
                return "cpu", f"stopped at the CPU-time limit of {cpu_limit} s"
            return None, f"the process running the code was killed by signal {sig}"
        code = os.waitstatus_to_exitcode(status)
        return None, f"the process running the code exited with status {code} before returning (os._exit?)"

    def clean_error(error):
        """Only the fields we expect, as the types we expect: the child's record is not trusted."""
        error = error if isinstance(error, dict) else {}
        return {key: str(error.get(key, ""))[:8000] for key in ("type", "message", "traceback")}

    def error_limit(error):
        limit = error.get("limit")
        return limit if limit in ("memory", "file_size", "disk", "procs") else None

    def failure(exc):
        described = describe(exc)
        described["limit"] = limit_of(exc)
        return described

    if mode == "call":

        def call():
            try:
                function = load()
            except BaseException as exc:
                return {"kind": "load_error", **failure(exc)}
            try:
                value = function(**json.loads(cfg["args"]))
            except BaseException as exc:
                leave_if_forked(1)
                return {"kind": "error", **failure(exc)}
            leave_if_forked(0)
            text, why = as_json(value)
            if text is None:
                message = f"the return value of type {type(value).__name__} is {why}: {short_repr(value)}"
                return {"kind": "error", "type": "TypeError", "message": message, "traceback": ""}
            return {"kind": "return", "value": json.loads(text)}

        record, status, usage, _ = run_child(call, None)
        if record is None or record.get("kind") not in ("return", "error", "load_error"):
            limit, message = death(status, usage)
            if limit:
                report({"kind": "limit", "reason": limit})
            else:
                report({"kind": "error", "type": "ProcessExit", "message": message, "traceback": ""})
        elif record["kind"] == "return":
            report({"kind": "return", "value": record.get("value")})
        else:
            if error_limit(record):
                report({"kind": "limit", "reason": error_limit(record)})
            report({"kind": record["kind"], **clean_error(record)})
        flush()
        os._exit(0)

    # mode == "tests"
    class CaseTimeout(BaseException):
        pass

    def on_alarm(signum, frame):
        raise CaseTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    limit_s = cfg["case_timeout_s"]

    class Capture(io.RawIOBase):  # under a text wrapper: code that writes to sys.stdout.buffer works as it does outside tests
        def __init__(self, size):
            self.kept, self.room, self.dropped = bytearray(), size, 0

        def writable(self):
            return True

        def write(self, data):
            kept = bytes(data[: max(self.room, 0)])
            self.kept += kept
            self.room -= len(kept)
            self.dropped += len(data) - len(kept)
            return len(data)

        def value(self):
            return self.kept.decode("utf-8", "replace") + (f"\n[... {self.dropped} more bytes]" if self.dropped else "")

    def case_task(case):
        def task():
            capture = Capture(cfg["case_output_chars"])
            sys.stdout = io.TextIOWrapper(capture, encoding="utf-8", errors="replace", write_through=True)
            try:
                function = load()
            except BaseException as exc:
                return {"kind": "load_error", **failure(exc)}
            record, started = {"kind": "case"}, time.perf_counter()
            try:
                result = function(**json.loads(case["args"]))
            except BaseException as exc:
                leave_if_forked(1)
                record["error"] = failure(exc)
            else:
                leave_if_forked(0)
                text, why = as_json(result)
                if text is not None:
                    record["result"] = json.loads(text)
                else:
                    record["result_repr"] = f"{short_repr(result)} ({why})"
            record["duration_s"] = round(time.perf_counter() - started, 6)
            record["stdout"] = capture.value()
            return record

        return task

    for index, case in enumerate(cfg["cases"]):
        got, status, usage, timed_out = run_child(case_task(case), limit_s)
        if got is not None and got.get("kind") == "load_error":
            report({"kind": "load_error", **clean_error(got)})
            break
        record = {"kind": "case", "index": index}
        if timed_out:
            record["error"] = {"type": "Timeout", "message": f"the case ran longer than {limit_s:g} s", "traceback": ""}
        elif got is None or got.get("kind") != "case":
            limit, message = death(status, usage)
            record["error"] = {"type": "LimitExceeded" if limit else "ProcessExit", "message": message, "traceback": ""}
        else:
            if "error" in got:
                record["error"] = clean_error(got["error"])
            elif "result" in got:
                record["result"] = got["result"]
            else:
                record["result_repr"] = str(got.get("result_repr", ""))[:2000]
            record["stdout"] = str(got.get("stdout", ""))[: cfg["case_output_chars"] + 100]
            duration = got.get("duration_s")
            record["duration_s"] = duration if isinstance(duration, (int, float)) else 0.0
        if "error" not in record and case["assertion"]:
            if "result" not in record:
                message = "the result is not JSON-serialisable, so the assertion cannot be evaluated"
                record["assertion_error"] = {"type": "TypeError", "message": message, "traceback": ""}
            else:
                scope = {
                    "__builtins__": builtins,
                    "math": math,
                    "result": record["result"],
                    "args": json.loads(case["args"]),
                }
                try:
                    try:
                        signal.setitimer(signal.ITIMER_REAL, limit_s)
                        record["assertion"] = bool(eval(compile(case["assertion"], "<assertion>", "eval"), scope))
                    finally:
                        signal.setitimer(signal.ITIMER_REAL, 0)
                except CaseTimeout:
                    message = f"the assertion ran longer than {limit_s:g} s"
                    record["assertion_error"] = {"type": "Timeout", "message": message, "traceback": ""}
                except BaseException as exc:
                    record["assertion_error"] = describe(exc)
        report(record)
    else:
        report({"kind": "done"})
    flush()
    os._exit(0)
