"""`exec_function`: one entrypoint that runs any action of the space as a function.

Arguments are checked against the action's `input_schema`, the result against its
`output_schema`. `python` actions run in the sandbox (never in this process, with the
sandbox's scrubbed environment: no key or credential reaches them); `llm` actions are one
structured call; `builtin` actions of the blueprint call their dotted `entry` in-process.
"""

from __future__ import annotations

import ast
import sys
import time
from collections.abc import Collection
from typing import Any

from pydantic import BaseModel

from .actions import ActionError, ActionSpec, load_handler, render
from .config import SandboxSettings
from .cooperative import blocking
from .llm import LLMError, LLMSession, json_problem
from .sandbox import Limits, SandboxError, call_function
from .space import FunctionVersion, SpaceError, SpaceStore


class FunctionError(Exception):
    """`exec_function` could not return a valid result; the message says why.

    `usage` is True when the caller asked for something wrong (unknown function, a draft,
    arguments that do not fit): the CLI exits 2 for those, 1 for a function that failed or a
    corrupted record."""

    def __init__(self, message: str, *, usage: bool = False, stdout: str = ""):
        super().__init__(message)
        self.usage = usage
        self.stdout = stdout


class ExecResult(BaseModel):
    function: str
    version: int
    result: Any = None
    stdout: str = ""
    duration_s: float = 0.0


def exec_function(
    space: SpaceStore,
    name: str,
    args: dict[str, Any],
    version: int | None = None,
    *,
    sandbox: SandboxSettings,
    llm: LLMSession | None = None,
    system_prompt: str = "",
    hidden: Collection[str] = (),
) -> ExecResult:
    """Run action `name` (at `version`, default the active one) with `args`; raise FunctionError.
    `hidden`: folders a python action must not read (the deployment's file stores)."""
    try:
        record = space.version(name, version)
    except SpaceError as exc:
        raise FunctionError(str(exc), usage=True) from None
    except ActionError as exc:  # a corrupted record: the store's trouble, not the caller's mistake
        raise FunctionError(str(exc)) from None
    spec = record.spec
    if version is None and spec.status == "draft":
        raise FunctionError(f"{name} has only drafts (their tests fail); run one explicitly with version=N", usage=True)
    if not isinstance(args, dict):
        raise FunctionError(f"arguments of {name} must be a JSON object, got {type(args).__name__}", usage=True)
    problem = json_problem(spec.input_schema, args, "arguments")
    if problem:
        raise FunctionError(f"{name} v{spec.version}: {problem}", usage=True)
    started = time.monotonic()
    stdout = ""
    if spec.type == "python":
        result, stdout = _run_python(record, args, sandbox.limits(hidden))
    elif spec.type == "llm":
        result = _run_llm(spec, args, llm, system_prompt)
    elif spec.entry:
        result = _run_builtin(spec, args)
    else:
        raise FunctionError(f"{name} is a node action ({spec.role}), not a function: it has no entry", usage=True)
    problem = json_problem(spec.output_schema, result, "result")
    if problem:
        raise FunctionError(f"{name} v{spec.version} returned a bad result: {problem}", stdout=stdout)
    return ExecResult(function=name, version=spec.version, result=result, stdout=stdout, duration_s=round(time.monotonic() - started, 4))


def requirements(dependencies: list[str]) -> list[str]:
    """The PyPI packages to install: declared dependencies that are not the standard library."""
    return sorted({d.strip() for d in dependencies if d.strip() and d.strip().split(".")[0] not in sys.stdlib_module_names})


def call_args(code: str, entry: str, args: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """`main(**args)` as is; a `main(input)` whose schema has no `input` property gets `{"input": args}`."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return args
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry:
            params = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
            if params == ["input"] and "input" not in schema.get("properties", {}):
                return {"input": args}
    return args


def _run_python(record: FunctionVersion, args: dict[str, Any], limits: Limits) -> tuple[Any, str]:
    spec = record.spec
    try:
        out = call_function(
            record.code,
            spec.entry,
            call_args(record.code, spec.entry, args, spec.input_schema),
            limits=limits,
            requirements=requirements(spec.dependencies),
        )
    except SandboxError as exc:
        raise FunctionError(f"{spec.id} v{spec.version} cannot run: {exc}") from None
    if out.error is not None:
        detail = f"\n{out.error.traceback}" if out.error.traceback else ""
        raise FunctionError(f"{spec.id} v{spec.version} failed: {out.error}{detail}", stdout=out.stdout)
    return out.value, out.stdout


def _run_llm(spec: ActionSpec, args: dict[str, Any], llm: LLMSession | None, system_prompt: str) -> Any:
    if llm is None:
        raise FunctionError(f"{spec.id} is an llm action and no LLM is configured", usage=True)
    messages = [{"role": "system", "content": s} for s in [system_prompt] if s]
    messages.append({"role": "user", "content": render(spec.prompt, {"task": "", **args})})
    try:
        return llm.ask(messages, spec.id, spec.output_schema)
    except LLMError as exc:
        raise FunctionError(str(exc)) from None


def _run_builtin(spec: ActionSpec, args: dict[str, Any]) -> Any:
    try:
        fn = load_handler(spec.entry if ":" in spec.entry else ":".join(spec.entry.rsplit(".", 1)))
        return blocking(fn, **args)  # a user's function may block: not on the greenlet runner's loop
    except ActionError as exc:
        raise FunctionError(str(exc)) from None
    except Exception as exc:  # a built-in's own failure, reported like a sandboxed one
        raise FunctionError(f"{spec.id} failed: {type(exc).__name__}: {exc}") from None
