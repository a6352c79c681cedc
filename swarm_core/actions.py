"""Actions: what a node does. Specs are data (blueprints/<name>/actions/<id>/, or a deployment's
actions store, see space.py), handlers are small functions from a `NodeContext` to an `Outcome`.

An `llm` action renders its prompt, asks the model for its output schema (one call),
and passes the answer to its handler; a `builtin` action is a dotted-path function; a
`python` action is a saved function run in the sandbox (`run_function`).

The space is one flat map id -> entry. Each entry names its folder in `parent` (the one
source of truth: an entry is in exactly one folder); a folder's children are derived.
"""

from __future__ import annotations

import importlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .llm import LLMSession
from .models import AskUser, ChildReport, Fail, NodeBlueprint, NodeRecord, Outcome, Result, Spawn, SwarmHeader, child_id, first_error

ROOT_FOLDER = "root"
SUPERVISOR = "supervise"
ROUTER = "route"
PYTHON_HANDLER = "swarm_core.actions:run_function"
ACTION_ID = re.compile(r"[a-z][a-z0-9_]{0,63}")  # fullmatch: `$` would let a final "\n" by
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")  # an input property may be any Python name
# What a prompt may name: `NodeContext.variables`, the node's input, and what a built-in handler adds.
VARIABLES = ("goal", "task", "context", "answer", "question", "depth", "max_depth")
HANDLER_VARIABLES = {
    "swarm_core.actions:report": (),
    "swarm_core.actions:manage": ("actions", "feedback", "earlier"),
    "swarm_core.actions:supervise": ("reports",),
    "swarm_core.actions:route": ("options",),
}

if TYPE_CHECKING:
    from .factory import Functions


class ActionError(Exception):
    """An action spec is invalid or unknown."""


class FolderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["folder"] = "folder"
    id: str
    name: str
    description: str
    parent: str = ROOT_FOLDER
    fallback: str | None = None  # the action the router uses when nothing in this folder fits


class ActionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["action"] = "action"
    id: str
    name: str
    description: str
    type: Literal["llm", "builtin", "python"] = "llm"
    role: Literal["worker", "manager", "router", "supervisor"] = "worker"
    language: str = "text"
    input_schema: dict[str, Any] = Field(default_factory=dict)
    output_schema: dict[str, Any] = Field(default_factory=dict)
    dependencies: list[str] = Field(default_factory=list)
    entry: str = ""
    handler: str = "swarm_core.actions:report"
    version: int = 1
    tests: list[dict[str, Any]] = Field(default_factory=list)  # sandbox.TestCase fields
    parent: str = ROOT_FOLDER
    prompt: str = ""
    status: Literal["active", "draft"] = "active"  # a draft's tests fail: kept, never routed

    @model_validator(mode="after")
    def _python_runs_in_the_sandbox(self) -> ActionSpec:
        if self.type == "python" and "handler" not in self.model_fields_set:
            self.handler = PYTHON_HANDLER
        return self

    @property
    def routable(self) -> bool:
        return self.role in ("worker", "manager") and self.status == "active"


Entry = ActionSpec | FolderSpec


class ActionSpace:
    """A flat map id -> entry; folders give it its hierarchy for the router.

    `builtin` names the entries that come from the blueprint (read-only); the others
    are a deployment's own, from its actions store (see space.py).
    """

    def __init__(self, entries: dict[str, Entry], builtin: set[str] | None = None):
        self.entries = entries
        self.builtin = set(entries) if builtin is None else builtin

    @classmethod
    def from_dirs(cls, dirs: list[Path]) -> ActionSpace:
        """A later folder overrides an earlier one file by file: `<id>/prompt.md` alone replaces
        that action's prompt and keeps the rest (a new `<id>/action.toml` replaces its settings)."""
        parts: dict[str, dict[str, Any]] = {}
        folders: dict[str, FolderSpec] = {}
        for d in dirs:
            if not d.is_dir():
                raise ActionError(f"action folder not found: {d}")
            own_folders, own_parts = _load_dir(str(d))
            for fid, folder in own_folders:
                folders[fid] = folder
                parts.pop(fid, None)
            for action_id, found in own_parts:
                if "toml" not in found and action_id not in parts:
                    raise ActionError(f"action {d / action_id}: no action.toml here or in an earlier action folder")
                folders.pop(action_id, None)
                parts.setdefault(action_id, {}).update(found)
        entries: dict[str, Entry] = dict(folders)
        for action_id, found in parts.items():
            raw = {**found["toml"], **{k: v for k, v in found.items() if k not in ("toml", "source")}}
            try:
                entries[action_id] = ActionSpec(id=action_id, **raw)
            except Exception as exc:
                raise ActionError(f"action {found['source']}: {_first_error(exc)}") from None
        return cls(entries)

    def get(self, action_id: str) -> ActionSpec:
        entry = self.entries.get(action_id)
        if not isinstance(entry, ActionSpec):
            raise ActionError(f"unknown action {action_id!r}")
        return entry

    def children(self, folder: str, *, managers: bool = True) -> list[Entry]:
        """What the router offers inside `folder`: routable actions and folders that hold one."""
        out = []
        for e in self.entries.values():
            if e.parent != folder:
                continue
            if isinstance(e, ActionSpec) and (not e.routable or (e.role == "manager" and not managers)):
                continue
            if isinstance(e, FolderSpec) and not self.children(e.id, managers=managers):
                continue
            out.append(e)
        return sorted(out, key=lambda e: e.id)

    def fallback_for(self, folder: str, default: str) -> str:
        """The nearest folder's `fallback`, from `folder` up to the root; else `default`."""
        seen: set[str] = set()
        while folder in self.entries and folder not in seen:
            seen.add(folder)
            entry = self.entries[folder]
            if isinstance(entry, FolderSpec) and entry.fallback:
                return entry.fallback
            folder = entry.parent
        return default

    def problems(self) -> list[str]:
        """What is wrong with the space as a whole, one line each; empty when it is valid.

        Checks: ids well-formed and equal to their key, parents are folders (the root is
        implicit), no folder inside itself, names unique within a folder, schemas are valid
        JSON Schema, prompts name only what fills them, handlers import, folder fallbacks name
        routable actions. (space.py adds the checks that
        need storage: every version and its code resolve.)"""
        out = []
        names: dict[tuple[str, str], str] = {}
        for key, e in sorted(self.entries.items()):
            where = f"{key}:"
            if e.id != key:
                out.append(f"{where} stored under another id ({e.id!r})")
            if not ACTION_ID.fullmatch(e.id) or e.id == ROOT_FOLDER:
                out.append(f"{where} id must match {ACTION_ID.pattern} and not be {ROOT_FOLDER!r}")
            parent = self.entries.get(e.parent)
            if e.parent != ROOT_FOLDER and not isinstance(parent, FolderSpec):
                out.append(f"{where} parent {e.parent!r} is not a folder")
            other = names.setdefault((e.parent, e.name.strip().lower()), key)
            if other != key:
                out.append(f"{where} name {e.name!r} is already used by {other!r} in folder {e.parent!r}")
            if isinstance(e, FolderSpec):
                if self._inside_itself(e.id):
                    out.append(f"{where} folder is inside itself")
                fallback = self.entries.get(e.fallback or "")
                if e.fallback and not (isinstance(fallback, ActionSpec) and fallback.routable):
                    out.append(f"{where} fallback {e.fallback!r} is not a routable action")
            else:
                for part in ("input_schema", "output_schema"):
                    problem = schema_problem(getattr(e, part))
                    if problem:
                        out.append(f"{where} {part} is not valid JSON Schema: {problem}")
                out.extend(f"{where} {p}" for p in _prompt_problems(e))
                try:
                    load_handler(e.handler)
                    if e.type == "builtin" and e.entry:
                        load_handler(e.entry)
                except ActionError as exc:
                    out.append(f"{where} {exc}")
        return out

    def _inside_itself(self, folder: str) -> bool:
        seen, at = set(), self.entries[folder].parent
        while at in self.entries and at not in seen:
            if at == folder:
                return True
            seen.add(at)
            at = self.entries[at].parent
        return False


def _prompt_problems(spec: ActionSpec) -> list[str]:
    """An llm action without a prompt, or a prompt naming what its handler never fills (a typo
    would otherwise reach the model as an empty string). A handler of your own is not checked."""
    if spec.type == "llm" and not spec.prompt.strip():
        return ["an llm action needs a prompt (prompt.md)"]
    if spec.handler not in HANDLER_VARIABLES:
        return []
    known = {*VARIABLES, *HANDLER_VARIABLES[spec.handler], *spec.input_schema.get("properties", {})}
    unknown = sorted({name for name in PLACEHOLDER.findall(spec.prompt) if name not in known})
    if not unknown:
        return []
    return [f"prompt names {', '.join('{{' + n + '}}' for n in unknown)}, which nothing fills (it may use {', '.join(sorted(known))})"]


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why `schema` is not valid JSON Schema (Draft 2020-12 unless it says otherwise), or None."""
    return _schema_problem(json.dumps(schema, sort_keys=True))


@lru_cache(maxsize=4096)  # checking a schema costs ~1 ms; a space holds many equal ones
def _schema_problem(text: str) -> str | None:
    schema = json.loads(text)
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as exc:
        return f"{exc.message} (at {'/'.join(str(p) for p in exc.path) or 'the top'})"
    return None


@lru_cache(maxsize=8)
def _load_dir(actions_dir: str) -> tuple[tuple[tuple[str, FolderSpec], ...], tuple[tuple[str, dict[str, Any]], ...]]:
    """Read `folders.toml` and, per `<id>/` folder, what it holds of action.toml (`toml`),
    prompt.md and *.schema.json, parsed but not yet made into specs (see `from_dirs`)."""
    root = Path(actions_dir)
    folders: dict[str, FolderSpec] = {}
    folders_file = root / "folders.toml"
    if folders_file.exists():
        try:
            table = tomllib.loads(folders_file.read_text(encoding="utf-8"))
        except Exception as exc:  # noqa: BLE001 - unreadable or not TOML: one line naming the file
            raise ActionError(f"action folders {folders_file}: {exc}") from None
        for fid, raw in table.items():
            try:
                if not isinstance(raw, dict):
                    raise TypeError("a folder is a [table], not a value")
                folders[fid] = FolderSpec(id=fid, **raw)
            except Exception as exc:  # noqa: BLE001 - any wrong folder entry: one line naming it
                raise ActionError(f"action folders {folders_file}: [{fid}] {_first_error(exc)}") from None
    actions: dict[str, dict[str, Any]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        found: dict[str, Any] = {}
        spec_file = folder / "action.toml"
        try:
            if spec_file.exists():
                found["toml"] = tomllib.loads(spec_file.read_text(encoding="utf-8"))
            for part in ("input", "output"):
                schema_file = folder / f"{part}.schema.json"
                if schema_file.exists():
                    found[f"{part}_schema"] = json.loads(schema_file.read_text(encoding="utf-8"))
            if (folder / "prompt.md").exists():
                found["prompt"] = (folder / "prompt.md").read_text(encoding="utf-8")
        except Exception as exc:  # noqa: BLE001 - unreadable, not TOML or not JSON: one line naming the file
            raise ActionError(f"action {spec_file}: {exc}") from None
        if not found:
            continue  # not an action's folder
        if not ACTION_ID.fullmatch(folder.name):
            raise ActionError(f"action {spec_file}: id {folder.name!r} must match {ACTION_ID.pattern}")
        found["source"] = spec_file if "toml" in found else folder
        actions[folder.name] = found
    return tuple(folders.items()), tuple(actions.items())


def _first_error(exc: Exception) -> str:
    """One line for a spec that does not validate: its first error, where it is."""
    return first_error(exc) if isinstance(exc, ValidationError) else str(exc)


def render(template: str, variables: dict[str, Any]) -> str:
    """Fill `{{name}}` placeholders; unknown names become empty strings."""

    def value(m: re.Match) -> str:
        v = variables.get(m.group(1), "")
        return v if isinstance(v, str) else json.dumps(v, indent=1, ensure_ascii=False)

    return PLACEHOLDER.sub(value, template)


def _clip(text: str, limit: int = 4000) -> str:
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more chars]"


def summarize(reports: list[ChildReport], limit: int = 4000) -> str:
    """Reports as prompt text, each clipped so a wide fan-out stays within the context."""
    lines = []
    for r in reports:
        body = r.report if r.status == "done" else f"FAILED: {r.error}"
        lines.append(f"### {r.node_id} ({r.action}, {r.status})\n{_clip(body or '', limit)}")
    return "\n\n".join(lines) or "(none)"


@dataclass
class NodeContext:
    """Everything an action may use. Actions never touch storage or the dispatcher directly."""

    swarm: SwarmHeader
    record: NodeRecord
    action: ActionSpec
    space: ActionSpace
    llm: LLMSession
    system_prompt: str = ""
    router_fallback: str = "write_text"
    child_reports: list[ChildReport] | None = None  # set when resumed after a join
    previous_reports: list[ChildReport] = field(default_factory=list)  # earlier sequential steps
    read_join: Callable[[str, int], list[ChildReport]] = lambda node, rnd: []
    functions: Functions | None = None  # the factory and executor, on this node's LLM session

    @property
    def blueprint(self) -> NodeBlueprint:
        return self.record.blueprint

    @property
    def input(self) -> dict[str, Any]:
        return self.blueprint.input

    @property
    def task(self) -> str:
        return str(self.input.get("task") or self.swarm.goal)

    @property
    def memo(self) -> dict[str, Any]:
        return self.record.memo

    @property
    def answer(self) -> str | None:
        return self.record.answer

    def variables(self, **extra: Any) -> dict[str, Any]:
        base = {
            "goal": self.swarm.goal,
            "task": self.task,
            "context": summarize(self.previous_reports) if self.previous_reports else "",
            "answer": f"The user answered your question ({self.record.question}): {self.answer}" if self.answer else "",
            "question": self.record.question or "",
            "depth": self.blueprint.depth,
            "max_depth": self.swarm.budgets.max_depth,
        }
        base.update({k: v for k, v in self.input.items() if k not in base})
        base.update(extra)
        return base

    def ask(self, schema: dict | None = None, schema_name: str | None = None, prompt: str | None = None, **extra) -> dict:
        """One structured LLM call with this action's prompt and output schema (or the ones given)."""
        messages = []
        system = "\n\n".join(p for p in (self.system_prompt, self.action.description) if p)
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": render(prompt or self.action.prompt, self.variables(**extra))})
        return self.llm.ask(messages, schema_name or self.action.id, schema or self.action.output_schema)

    def child(self, index: int, action: str, input: dict[str, Any], *, same_depth: bool = False) -> NodeBlueprint:
        bp = self.blueprint
        return NodeBlueprint(
            node_id=child_id(bp.node_id, bp.round, index),
            parent_id=bp.node_id,
            action=action,
            input=input,
            depth=bp.depth + (0 if same_depth else 1),
        )


Handler = Callable[[NodeContext], Outcome]


def load_handler(path: str) -> Handler:
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ActionError(f"cannot load action handler {path!r}: {exc}") from None


def run_action(ctx: NodeContext) -> Outcome:
    """The fixed logic around one action: resume rules first, then the action's handler."""
    if ctx.child_reports is not None and ctx.action.role != "manager":
        return combine(ctx.child_reports)
    return load_handler(ctx.action.handler)(ctx)


def combine(reports: list[ChildReport]) -> Outcome:
    """A non-manager that delegated finishes with what its children reported."""
    done = [r for r in reports if r.status == "done"]
    if not done:
        return Fail(error="; ".join(f"{r.node_id}: {r.error}" for r in reports) or "no child finished")
    if len(done) == 1:
        return Result(report=done[0].report, data=done[0].data)
    return Result(report=summarize(done, limit=100_000))


# --- built-in handlers --------------------------------------------------------


def _question(out: dict[str, Any]) -> str:
    """The model's question to the user, or "": one of only spaces asks nothing (it would
    park the node waiting for an answer to a blank)."""
    return str(out.get("question") or "").strip()


def report(ctx: NodeContext) -> Outcome:
    """Default for llm actions: the answer's `report` (or `text`) is the node's result;
    a non-empty `question` (before the user answered) asks the user instead."""
    out = ctx.ask()
    question = _question(out)
    if question and not ctx.answer:
        return AskUser(question=question)
    text = out.get("report") or out.get("text")
    if not text and question:  # answered, yet it cannot do the task: not a report to pass on
        return Fail(error=f"no report: it asked again after the user's answer: {question}")
    if text is None:
        text = json.dumps(out, ensure_ascii=False)
    return Result(report=str(text), data=out)


def manage(ctx: NodeContext) -> Outcome:
    """A manager: plan → children → supervisor → done, or plan again within `max_rounds`."""
    reports, memo = ctx.child_reports, ctx.memo
    if reports is None:  # the first plan, or a plan that asked the user: with the feedback it had
        return _plan(ctx, feedback=memo.get("feedback", ""))
    if memo.get("phase") == "supervise":
        verdict = reports[0]
        if verdict.status != "done" or not verdict.data:
            return Fail(error=f"the supervisor failed: {verdict.error}")
        if verdict.data.get("done"):
            return Result(report=verdict.report, data={"rounds": memo.get("plan_round", 1)})
        feedback = verdict.data.get("feedback") or "the goal is not met yet"
        if memo.get("plan_round", 1) >= ctx.swarm.budgets.max_rounds:
            return Fail(
                error=f"budget max_rounds={ctx.swarm.budgets.max_rounds} reached and the supervisor "
                f"says the goal is not met: {feedback}"
            )
        memo["feedback"] = feedback
        return _plan(ctx, feedback=feedback)
    memo["phase"] = "supervise"
    memo["work_round"] = ctx.blueprint.round - 1
    return Spawn(
        children=[
            ctx.child(0, SUPERVISOR, {"task": ctx.task, "reports_of": [ctx.blueprint.node_id, ctx.blueprint.round - 1]})
        ]
    )


def _plan(ctx: NodeContext, feedback: str = "") -> Outcome:
    memo = ctx.memo
    can_delegate = ctx.blueprint.depth + 1 < ctx.swarm.budgets.max_depth
    options = [e for e in ctx.space.entries.values() if isinstance(e, ActionSpec) and e.routable]
    if not can_delegate:
        options = [e for e in options if e.role != "manager"]
    allowed = {e.id for e in options}
    # The plan lists the blueprint's actions only; a deployment's saved functions (maybe
    # hundreds) are reached through the router, one folder level per call.
    options = [e for e in options if e.id in ctx.space.builtin]
    earlier = ""
    if feedback and "work_round" in memo:
        earlier = summarize(ctx.read_join(ctx.blueprint.node_id, memo["work_round"]), limit=1500)
    out = ctx.ask(
        actions="\n".join(f"- {e.id}: {e.description}" for e in sorted(options, key=lambda e: e.id)),
        feedback=f"A supervisor reviewed the previous attempt and said: {feedback}" if feedback else "",
        earlier=f"Results of the previous attempt:\n{earlier}" if earlier else "",
    )
    question = _question(out)
    if question and not ctx.answer:
        return AskUser(question=question)
    if not out["subtasks"]:  # the schema lets a plan that asks the user have none
        return Fail(error="empty plan: the planner gave no subtasks")
    children = []
    for i, sub in enumerate(out["subtasks"]):
        action = sub.get("action") if sub.get("action") in allowed else ROUTER
        children.append(ctx.child(i, action, {"task": sub["task"]}))
    memo["phase"] = "work"
    memo["plan_round"] = memo.get("plan_round", 0) + 1
    return Spawn(children=children, mode=out.get("mode") or "parallel")


def supervise(ctx: NodeContext) -> Outcome:
    node, rnd = ctx.input["reports_of"]
    out = ctx.ask(reports=summarize(ctx.read_join(node, rnd)))
    return Result(report=out["report"], data=out)


def route(ctx: NodeContext) -> Outcome:
    """Walk the action space one folder at a time: O(depth) small calls, not one huge prompt.

    When nothing fits ("none", or an empty level) the subtask goes to the fallback of the
    folder the walk stopped in, or of its nearest ancestor that has one, else to
    `router.fallback`: "none" inside Software creates a new function (`write_python`)
    instead of forcing a bad match; "none" at the top writes text."""
    managers = ctx.blueprint.depth + 1 < ctx.swarm.budgets.max_depth
    folder, chosen = ROOT_FOLDER, None
    while chosen is None:
        options = ctx.space.children(folder, managers=managers)
        if not options:
            break
        schema = {
            "type": "object",
            "properties": {
                "choice": {"type": "string", "enum": [e.id for e in options] + ["none"]},
                "reason": {"type": "string", "maxLength": 300},
            },
            "required": ["choice", "reason"],
            "additionalProperties": False,
        }
        listing = "\n".join(f"- {e.id} ({e.kind}): {e.description}" for e in options)
        pick = ctx.ask(schema=schema, schema_name="route", options=listing)["choice"]
        if pick == "none":
            break
        entry = ctx.space.entries[pick]
        if isinstance(entry, FolderSpec):
            folder = entry.id
        else:
            chosen = entry
    action = chosen.id if chosen else ctx.space.fallback_for(folder, ctx.router_fallback)
    # Routing is bookkeeping, not a level of the task tree: the chosen action keeps this depth.
    return Spawn(children=[ctx.child(0, action, dict(ctx.input), same_depth=True)], mode="sequential")


def write_python(ctx: NodeContext) -> Outcome:
    """A leaf that needs code: the factory writes, tests and saves a function (routable at
    once). If the task also asks for a value, one more call picks the arguments and it runs."""
    functions = _functions(ctx)
    made = functions.create(ctx.task + (f"\n\nContext:\n{summarize(ctx.previous_reports, 1500)}" if ctx.previous_reports else ""))
    if made.spec.status != "active":
        return Fail(error=made.summary())
    data: dict[str, Any] = {"function": made.spec.id, "version": made.spec.version}
    text = made.summary() + f"\n\n```python\n{made.code.strip()}\n```"
    args = functions.choose_args(ctx.task, made.spec, optional=True)
    if args is not None:
        run = functions.run(made.spec.id, args, made.spec.version)
        data.update(args=args, result=run.result)
        text = f"{_call_text(made.spec.id, args, run.result)}\n\n{text}"
    return Result(report=text, data=data)


def run_function(ctx: NodeContext) -> Outcome:
    """A saved python function as a node: one call reads its arguments from the task, then
    it runs in the sandbox (a function without arguments needs no call)."""
    functions = _functions(ctx)
    spec = ctx.action
    context = summarize(ctx.previous_reports, 1500) if ctx.previous_reports else ""
    args = functions.choose_args(ctx.task, spec, context=context) or {}
    run = functions.run(spec.id, args, spec.version)
    return Result(report=_call_text(spec.id, args, run.result, run.stdout), data={"function": spec.id, "version": spec.version, "args": args, "result": run.result})


def _functions(ctx: NodeContext) -> Functions:
    if ctx.functions is None:
        raise ActionError(f"{ctx.action.id} needs the function factory, which this engine does not provide")
    return ctx.functions


def _call_text(name: str, args: dict[str, Any], result: Any, stdout: str = "") -> str:
    call = ", ".join(f"{k}={json.dumps(v)}" for k, v in args.items())
    text = f"`{name}({call})` = `{json.dumps(result, ensure_ascii=False)}`"
    return text + (f"\n\nIt printed:\n```\n{_clip(stdout, 2000)}\n```" if stdout.strip() else "")
