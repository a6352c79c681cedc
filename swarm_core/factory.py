"""`create_function`: a description in, a tested, saved, routable function out.

1. code   — one LLM call whose only job is the code, answered inside the structured output
            or, with `factory.code_answer = "text"`, as a Markdown block (small models write
            working code far more often that way);
2. spec   — a second call describes it: name, description, typed arguments, return type.
            The code itself is the truth where it says something: names and required-ness
            from its signature, types from its annotations (else the described ones),
            dependencies from its imports outside the standard library;
3. tests  — a third call writes test cases from the DESCRIPTION and the signature, never
            from the code, so they check what was asked rather than what was written. Cases
            whose arguments do not fit the signature, and assertions that are not an
            expression about `result`, are left out;
4. the tests run in the sandbox. When the code fails them, `factory.samples` fresh drafts are
   written (at `factory.sample_temperature`) and tested too; then the failures of the best
   code so far go back to the model, which repairs it, at most `factory.max_repairs` rounds.
   "Best" (`choose`) is: most tests passed, then agreement with the other drafts on every
   test input, so a wrong expected value in a generated test does not throw good code away,
   and a bad repair never replaces better code;
5. the result is saved as the action's next version (space.py): active, and routable at once,
   when every test passes; otherwise a draft with its failing report. The action is the one of
   the function's name, unless that one takes other arguments: then `name_2` (`_own_id`).

`Functions` bundles the factory and the executor on one LLM session: a node's (so calls are
budgeted and recorded in its history) or the CLI's.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, NamedTuple

from .actions import ROOT_FOLDER, ActionSpec, FolderSpec, render
from .config import SwarmBlueprint
from .executor import ExecResult, call_args, exec_function, json_problem, requirements
from .llm import LLMError, LLMSession
from .sandbox import CaseResult, SandboxError, TestCase, TestReport, run_tests
from .space import FunctionVersion, SpaceStore, signature

Progress = Callable[[str, dict[str, Any]], None]
JSON_TYPES = ["any", "integer", "number", "string", "boolean", "array", "object", "null"]  # "any" first: the safe pick
_ANNOTATIONS = {
    "int": "integer", "float": "number", "complex": None, "str": "string", "bool": "boolean", "None": "null",
    "list": "array", "tuple": "array", "set": None, "List": "array", "Tuple": "array", "Sequence": "array",
    "dict": "object", "Dict": "object", "Mapping": "object",
}  # fmt: skip
CODE_SCHEMA = {
    "type": "object",
    "properties": {"code": {"type": "string", "minLength": 1, "maxLength": 8000}},
    "required": ["code"],
    "additionalProperties": False,
}
@dataclass
class Functions:
    """The factory and the executor, on one LLM session and one deployment's space."""

    space: SpaceStore
    llm: LLMSession | None
    config: SwarmBlueprint

    def create(self, description: str, progress: Progress | None = None) -> FunctionVersion:
        return create_function(description, space=self.space, llm=self._llm(), config=self.config, progress=progress)

    def run(self, name: str, args: dict[str, Any], version: int | None = None) -> ExecResult:
        config = self.config
        return exec_function(
            self.space, name, args, version, sandbox=config.sandbox, llm=self.llm, system_prompt=config.system_prompt, hidden=store_folders(config)
        )

    def test(self, name: str, version: int | None = None) -> tuple[FunctionVersion, TestReport]:
        """Run a saved version's own tests again."""
        record = self.space.version(name, version)
        cases = [TestCase.model_validate(c) for c in record.spec.tests]
        return record, check(record.code, record.spec, cases, self.config)

    def choose_args(self, task: str, spec: ActionSpec, *, context: str = "", optional: bool = False) -> dict[str, Any] | None:
        """One call reads the arguments for `spec` from the task text. `optional`: the task may
        not ask for a call at all (then None)."""
        props = spec.input_schema.get("properties", {})
        if not props and not optional:
            return {}
        args_schema = spec.input_schema if props else {"type": "object", "properties": {}}
        properties: dict[str, Any] = {"args": args_schema}
        if optional:
            properties = {"apply": {"type": "boolean"}, **properties}
        schema = {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}
        out = _ask(
            self._llm(),
            self.config,
            "apply" if optional else "args",
            "apply_function" if optional else "function_args",
            schema,
            task=task,
            context=f"Earlier results:\n{context}" if context else "",
            signature=signature(spec),
            description=spec.description,
        )
        if optional and not out["apply"]:
            return None
        return out["args"]

    def _llm(self) -> LLMSession:
        if self.llm is None:
            raise LLMError("no LLM configured: the factory needs one")
        return self.llm


def create_function(
    description: str,
    *,
    space: SpaceStore,
    llm: LLMSession,
    config: SwarmBlueprint,
    progress: Progress | None = None,
) -> FunctionVersion:
    """Write, describe, test, repair and save a function for `description` (see the module doc).
    Returns the saved version; `spec.status` says whether it is active or a draft."""
    say = progress or (lambda step, info: None)
    settings = config.factory
    code = _write(llm, config, description)
    say("code", {"code": code, "lines": len(code.splitlines())})
    repairs = 0
    while (problem := structure_problem(code)) and repairs < settings.max_repairs:
        repairs += 1
        say("repair", {"round": repairs, "problem": problem})
        code = _repair(llm, config, description, code, problem, "")
    spec = _spec(llm, config, space, description, code, say)
    cases: list[TestCase] = []
    if problem:
        report = TestReport(cases=[], passed=0, failed=0, error=problem)
    else:
        cases = _tests(llm, config, description, spec, say)
        pool = [Candidate(code, spec, check(code, spec, cases, config))]
        say("run", {"round": 0, **_tally(pool[0].report)})
        for n in range(settings.samples if cases and not pool[0].report.ok else 0):
            try:
                draft = _write(llm, config, description, temperature=settings.sample_temperature)
            except LLMError as exc:
                say("sample", {"draft": n + 1, "error": str(exc)})
                break
            if broken := structure_problem(draft):  # a draft is not repaired: there are others
                say("sample", {"draft": n + 1, "error": broken})
                continue
            fixed = _derive(draft, spec)
            pool.append(Candidate(draft, fixed, check(draft, fixed, cases, config)))
            say("sample", {"draft": n + 1, **_tally(pool[-1].report)})
            if pool[-1].report.ok:
                break
        best = choose(pool)
        while cases and not best.report.ok and repairs < settings.max_repairs:
            repairs += 1
            say("repair", {"round": repairs, "failures": best.report.failed, "error": best.report.error})
            try:
                candidate = _repair(llm, config, description, best.code, failures(best.report, cases), signature(best.spec))
            except LLMError as exc:
                say("repair", {"round": repairs, "error": str(exc)})
                break
            fixed = _derive(candidate, best.spec)
            pool.append(Candidate(candidate, fixed, check(candidate, fixed, cases, config), draft=False))
            say("run", {"round": repairs, **_tally(pool[-1].report)})
            best = choose(pool)
        code, spec, report, _ = best
    spec = fit_output(spec, report)
    status = "active" if report.ok and report.total > 0 else "draft"
    if not cases and not report.error:
        report = report.model_copy(update={"error": "no test cases were written, so the function is unverified"})
    spec = spec.model_copy(update={"status": status, "tests": [c.model_dump(exclude_none=True) for c in cases]})
    record = space.new_version(spec, code=code, report=report, request=description, repairs=repairs)
    say("saved", {"id": record.spec.id, "version": record.spec.version, "status": status, "summary": record.summary()})
    return record


class Candidate(NamedTuple):
    code: str
    spec: ActionSpec
    report: TestReport
    draft: bool = True  # written afresh (it votes in `choose`), not repaired from another


def _tally(report: TestReport) -> dict[str, Any]:
    return {"passed": report.passed, "failed": report.failed, "error": report.error}


def choose(pool: list[Candidate]) -> Candidate:
    """The best code so far: the most tests passed; then the most fresh drafts (itself included)
    that return exactly the same values on every test input (independent drafts that agree are likely
    right even when the model's expected values are not: execution agreement, as in CodeT;
    only fresh drafts count, since a repair starts from the code it would vote for); then the
    fewest calls that raise or return nothing; then the earliest written."""
    outputs = [tuple(json.dumps(c.actual, sort_keys=True, default=repr) if c.actual is not None else f"none {i}" for c in p.report.cases) for i, p in enumerate(pool)]

    def rank(i: int) -> tuple:
        cases = pool[i].report.cases
        votes = sum(p.draft and outputs[j] == outputs[i] for j, p in enumerate(pool)) if cases else 0  # self included
        return pool[i].report.passed, votes, sum(c.actual is not None for c in cases), -i

    return pool[max(range(len(pool)), key=rank)]


def check(code: str, spec: ActionSpec, cases: list[TestCase], config: SwarmBlueprint) -> TestReport:
    """Run `cases` against the code in the sandbox."""
    if not cases:
        return TestReport(cases=[], passed=0, failed=0, error="no test cases")
    wrapped = [c.model_copy(update={"args": call_args(code, spec.entry, c.args, spec.input_schema)}) for c in cases]
    try:
        report = run_tests(
            code,
            spec.entry,
            wrapped,
            limits=config.sandbox.limits(store_folders(config)),
            requirements=requirements(spec.dependencies),
            case_timeout_s=config.sandbox.case_timeout_s,
        )
    except SandboxError as exc:
        verdicts = [CaseResult(name=c.name, passed=False, error=f"not run: {exc}") for c in cases]
        return TestReport(cases=verdicts, passed=0, failed=len(cases), error=str(exc))
    return report


def store_folders(config: SwarmBlueprint) -> list[str]:
    """The folders of the blueprint's file stores: generated code must not read swarms, histories
    or other functions (files there are readable by any user)."""
    uris = set(config.stores.uris().values())
    return [os.path.abspath(os.path.expanduser(u[len("file://") :] or ".swarm")) for u in uris if u.startswith("file://")]


def fit_output(spec: ActionSpec, report: TestReport) -> ActionSpec:
    """Drop a declared return type that a passing test's result contradicts: the tests are the
    evidence, and exec_function must not refuse what the tests accepted."""
    if any(c.passed and json_problem(spec.output_schema, c.actual, "result") for c in report.cases):
        return spec.model_copy(update={"output_schema": {}})
    return spec


def failures(report: TestReport, cases: list[TestCase], limit: int = 3000) -> str:
    """The failing cases as text the model can act on."""
    lines = [f"The whole run failed: {report.error}"] if report.error else []
    by_name = {c.name: c for c in cases}
    for verdict in report.cases:
        if not verdict.passed:
            case = by_name.get(verdict.name)
            call = json.dumps(case.args) if case else "?"
            lines.append(f"- {verdict.name}: called with {call}: {verdict.error}")
    text = "\n".join(lines)
    return text if len(text) <= limit else text[:limit] + "\n…"


def structure_problem(code: str) -> str | None:
    """Why the module cannot be a function at all (does not parse, defines none), or None."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return f"the code does not parse: {exc.msg} (line {exc.lineno})"
    if not _defs(tree):
        return "the code defines no top-level function"
    return None


# --- the steps ---------------------------------------------------------------------


@lru_cache(maxsize=32)
def _prompt(folder: Path, name: str) -> str:
    return (folder / f"{name}.md").read_text()


def _ask(
    llm: LLMSession, config: SwarmBlueprint, prompt: str, schema_name: str, schema: dict,
    text_field: str | None = None, temperature: float | None = None, **variables: Any,
) -> dict:  # fmt: skip
    messages = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
    messages.append({"role": "user", "content": render(_prompt(config.prompts_path, prompt), variables)})
    return llm.ask(messages, schema_name, schema, text_field=text_field, temperature=temperature)


def _code(answer: dict) -> str:
    """The code of an answer: its first Markdown block that defines something, else what comes
    before a closing fence; then, if it does not parse, its longest prefix of whole lines that does
    and defines a function (small models run on into prose or close with a stray brace)."""
    code = answer["code"].strip()
    blocks = [b for b in re.findall(r"```[a-z]*[ \t]*\n(.*?)(?:```|$)", code, re.S) if "def " in b]
    code = (blocks[0] if blocks else code.split("```")[0]).strip()
    lines = code.splitlines()
    for n in range(len(lines), 0, -1):
        for last in (lines[n - 1], lines[n - 1].rstrip().rstrip("}").rstrip()):
            prefix = "\n".join(lines[: n - 1] + [last])
            if prefix.strip() and structure_problem(prefix) is None:
                return _definitions_only(prefix.rstrip() + "\n")
    return code + "\n"


def _definitions_only(code: str) -> str:
    """`code` without the top-level statements that are not definitions (example calls, prints,
    asserts, a __main__ block, `x = f(...)` of its own functions): the request forbids them, and
    small models add them anyway, so that importing the module fails or prints."""
    tree = ast.parse(code)
    own = set(_defs(tree))

    def keep(node: ast.stmt, first: bool) -> bool:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):  # constants, unless computed by its own functions
            return not any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in own for n in ast.walk(node))
        return first and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)  # the module docstring

    drop = {i for n, stmt in enumerate(tree.body) if not keep(stmt, n == 0) for i in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1)}
    if not drop:
        return code
    return "\n".join(line for i, line in enumerate(code.splitlines(), 1) if i not in drop).rstrip() + "\n"


_ANSWER = {"json": 'Put the complete code in "code".', "text": "Answer with the complete code in one ```python block."}


def _write(llm: LLMSession, config: SwarmBlueprint, description: str, temperature: float | None = None) -> str:
    allowed = ", ".join(config.sandbox.allowed_packages)
    packages = f", plus these packages if they help: {allowed}" if allowed else ""
    return _code(_ask_code(llm, config, "code", "write_code", temperature, description=description, packages=packages))


def _repair(llm: LLMSession, config: SwarmBlueprint, description: str, code: str, problems: str, sig: str) -> str:
    keep = f"Keep the signature `{sig}`." if sig else ""
    return _code(_ask_code(llm, config, "repair", "repair_code", None, description=description, code=code, failures=problems, keep=keep))


def _ask_code(llm: LLMSession, config: SwarmBlueprint, prompt: str, schema_name: str, temperature: float | None, **variables: Any) -> dict:
    """A code-writing call, in the blueprint's `factory.code_answer` form."""
    form = config.factory.code_answer
    text_field = "code" if form == "text" else None
    return _ask(llm, config, prompt, schema_name, CODE_SCHEMA, text_field, temperature, answer=_ANSWER[form], **variables)


def spec_schema(names: list[str], params: list[str]) -> dict[str, Any]:
    """The spec call's answer, shaped by the code: the function is one of its top-level names,
    and the argument types are asked for exactly the entry's parameters."""
    kinds = {"type": "string", "enum": JSON_TYPES}
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string", "enum": names},
            "description": {"type": "string", "maxLength": 300},
            "args": {"type": "object", "properties": {p: kinds for p in params}, "required": params, "additionalProperties": False},
            "returns": kinds,
        },
        "required": ["name", "description", "args", "returns"],
        "additionalProperties": False,
    }


def _spec(llm: LLMSession, config: SwarmBlueprint, space: SpaceStore, description: str, code: str, say: Progress) -> ActionSpec:
    """The described spec, reconciled with what the code itself declares."""
    entries = space.load().entries
    folder = config.factory.folder if isinstance(entries.get(config.factory.folder), FolderSpec) else ROOT_FOLDER
    draft = ActionSpec(id="function", name="function", description=description.strip()[:300], type="python", parent=folder)
    guess = _derive(code, draft)  # names and annotations; entry guessed from the code and the request
    names = sorted(_defs_of(code), key=lambda n: n != guess.entry)  # the guess first: small models pick the first
    params = list(guess.input_schema.get("properties", {}))
    described: dict[str, Any] = {}
    if names:
        try:
            described = _ask(llm, config, "spec", "extract_spec", spec_schema(names, params), code=code, description=description, entry=guess.entry)
        except LLMError as exc:  # the code's own signature is enough to go on
            say("spec", {"warning": f"the spec call failed, using the code's signature only: {exc}"})
    draft = draft.model_copy(
        update={
            "description": (described.get("description") or description).strip()[:300],
            "input_schema": {"type": "object", "properties": {k: _typed(v) for k, v in described.get("args", {}).items()}},
            "output_schema": _typed(described.get("returns", "any")),
            "entry": described.get("name") or guess.entry,
        }
    )
    spec = _derive(code, draft)
    named = re.search(r"([A-Za-z_]\w*)\(", description)  # "Write `gcd(a, b)` that ..." names it
    ident = _ident(spec.entry or (named.group(1) if named else description))
    if ident == ROOT_FOLDER or ident in space.builtins.entries or isinstance(entries.get(ident), FolderSpec):
        ident += "_fn"  # `def root(x)` or a folder's name: the space would refuse the id after all the work
    ident = _own_id(ident, set(spec.input_schema.get("properties", {})), entries)
    spec = spec.model_copy(update={"id": ident, "name": ident})
    say("spec", {"id": spec.id, "signature": signature(spec), "description": spec.description, "dependencies": spec.dependencies})
    return spec


def _own_id(ident: str, params: set[str], entries: dict[str, Any]) -> str:
    """`ident`, or `ident_2`, `ident_3`, ... when an action of that id takes other arguments: a
    function with the same name and arguments is a new version of it; with other arguments it is
    another function, and saving it as a version would change what swarms routing to it run."""
    candidate, n = ident, 1
    while (taken := entries.get(candidate)) is not None and not (
        isinstance(taken, ActionSpec) and set(taken.input_schema.get("properties", {})) == params
    ):
        n += 1
        candidate = f"{ident[: 63 - len(str(n))]}_{n}"  # ids are at most 64 characters
    return candidate


def _tests(llm: LLMSession, config: SwarmBlueprint, description: str, spec: ActionSpec, say: Progress) -> list[TestCase]:
    # Arguments follow the signature. Expected values come from the request, so they are not
    # forced into a return type the spec step may have guessed wrong; only an object is ruled
    # out when the function is said not to return one (small models write {"result": 3}).
    kinds = spec.output_schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds] if kinds else []
    expected = {} if not kinds or "object" in kinds else {"type": ["integer", "number", "string", "boolean", "array", "null"]}
    schema = {
        "type": "object",
        "properties": {
            "cases": {
                "type": "array",
                "minItems": 1,
                "maxItems": config.factory.max_tests,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "maxLength": 80},
                        "args": spec.input_schema,
                        "expected": expected,
                        "assertion": {"type": ["string", "null"], "maxLength": 300},
                    },
                    "required": ["name", "args", "expected", "assertion"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["cases"],
        "additionalProperties": False,
    }
    try:
        out = _ask(
            llm, config, "tests", "write_tests", schema, description=description, signature=signature(spec), count=config.factory.max_tests
        )
    except LLMError as exc:
        say("tests", {"cases": 0, "error": str(exc)})
        return []
    cases, names, dropped = [], set(), 0
    for i, raw in enumerate(out["cases"]):
        args = raw.get("args") or {}
        if json_problem(spec.input_schema, args, "args"):  # cannot be a call of this signature
            dropped += 1
            continue
        name = (raw.get("name") or "").strip()[:80] or f"case {i + 1}"
        name = name if name not in names else f"{name} ({i + 1})"
        names.add(name)
        cases.append(TestCase(name=name, args=args, expected=raw.get("expected"), assertion=_assertion(raw.get("assertion"))))
    say("tests", {"cases": len(cases), "dropped": dropped, "names": [c.name for c in cases]})
    return cases


def _assertion(text: str | None) -> str | None:
    """An assertion is a Python expression about `result`; anything else is left out."""
    if not text or not text.strip():
        return None
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return None
    return text.strip() if any(isinstance(n, ast.Name) and n.id == "result" for n in ast.walk(tree)) else None


# --- reading the code's own signature ---------------------------------------------------


def _defs(tree: ast.Module) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    return {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _defs_of(code: str) -> list[str]:
    try:
        return list(_defs(ast.parse(code)))
    except SyntaxError:
        return []


def _derive(code: str, described: ActionSpec) -> ActionSpec:
    """Entry, argument names and required-ness from the code; each type from its annotation,
    else from the description (`described`); imports outside the stdlib become dependencies."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return described
    defs = _defs(tree)
    if not defs:
        return described
    public = [n for n in defs if not n.startswith("_")] or list(defs)
    named = [n for n in public if f"{n}(" in described.description]  # the request names it
    entry = described.entry if described.entry in defs else (named or public)[-1]  # helpers usually come first
    fn = defs[entry]
    known = described.input_schema.get("properties", {})
    params = fn.args.posonlyargs + fn.args.args
    defaults = [None] * (len(params) - len(fn.args.defaults)) + list(fn.args.defaults)
    pairs = list(zip(params, defaults)) + list(zip(fn.args.kwonlyargs, fn.args.kw_defaults))
    props, required = {}, []
    for arg, default in pairs:
        props[arg.arg] = _annotation(arg.annotation) or known.get(arg.arg, {})
        if default is None:
            required.append(arg.arg)
    imports = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imports.add(node.module.split(".")[0])
    deps = sorted(m for m in imports if m not in sys.stdlib_module_names)  # what it imports, not what it claims
    return described.model_copy(
        update={
            "entry": entry,
            "input_schema": {"type": "object", "properties": props, "required": required, "additionalProperties": False},
            "output_schema": _annotation(fn.returns) or described.output_schema,
            "dependencies": requirements(deps),
        }
    )


def _annotation(node: ast.expr | None) -> dict[str, Any] | None:
    """A JSON Schema for a simple annotation (int, list[str], Optional[int], int | None), else None."""
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            return _annotation(ast.parse(node.value, mode="eval").body)
        except SyntaxError:
            return None
    if isinstance(node, ast.Constant) and node.value is None:
        return {"type": "null"}
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        parts = [_annotation(node.left), _annotation(node.right)]
        return _union(parts)
    if isinstance(node, ast.Subscript):
        base = _name(node.value)
        if base == "Optional":
            return _union([_annotation(node.slice), {"type": "null"}])
        if base == "Union":
            elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            return _union([_annotation(e) for e in elts])
        return _simple(base)
    return _simple(_name(node))


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _simple(name: str) -> dict[str, Any] | None:
    kind = _ANNOTATIONS.get(name)
    return {"type": kind} if kind else None


def _union(parts: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    if any(p is None or "type" not in p for p in parts):
        return None  # a part we cannot express: leave the whole untyped
    types: list[str] = []
    for p in parts:
        for t in p["type"] if isinstance(p["type"], list) else [p["type"]]:  # type: ignore[index]
            if t not in types:
                types.append(t)
    return {"type": types[0] if len(types) == 1 else types}


def _typed(kind: str) -> dict[str, Any]:
    return {} if kind in ("any", "", None) else {"type": kind}


def _ident(text: str) -> str:
    """A valid action id from a function name (or, failing that, a description)."""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text).lower()
    ident = "_".join(re.findall(r"[a-z0-9]+", words)[:6])[:60] or "function"
    return ident if ident[0].isalpha() else f"f_{ident}"
