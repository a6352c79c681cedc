"""A deployment's own action space, kept in its actions store beside the blueprint's built-ins.

Keys in the `actions` store:

    actions/space.json              {"entries": {id: card}}: the folders, and each action's card
                                    (its spec at the version that runs, without code and tests).
                                    Changed only by compare-and-swap: concurrent edits never
                                    lose one another.
    actions/versions/<id>/<n>.json  one `FunctionVersion`: spec, code, tests and last test report.
                                    Created with create-if-absent, never rewritten.

Built-ins (the blueprint's action folders) are read-only and win over a stored entry with
the same id. Stored actions are `python` (run in the sandbox) or `llm` (a prompt): nothing a
store holds names code for the worker's own process. Every operation is validated against
the whole space and refused if it would add a problem (`ActionSpace.problems`).
"""

from __future__ import annotations

import ast
import json
import random
from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from . import cooperative
from .actions import ACTION_ID, PYTHON_HANDLER, ROOT_FOLDER, ActionError, ActionSpace, ActionSpec, Entry, FolderSpec
from .models import now
from .sandbox import TestReport
from .store import KeyNotFound, Store, StoreError

SPACE_KEY = "actions/space.json"
LLM_HANDLER = "swarm_core.actions:report"
T = TypeVar("T")
_ENTRY: TypeAdapter[Entry] = TypeAdapter(Entry)  # type: ignore[arg-type]
_PY = {"integer": "int", "number": "float", "string": "str", "boolean": "bool", "array": "list", "object": "dict", "null": "None"}


class SpaceError(ValueError):
    """An operation on the space was refused; the message says why (exit code 2 in the CLI)."""


def version_key(action_id: str, n: int) -> str:
    return f"actions/versions/{action_id}/{n}.json"


class FunctionVersion(BaseModel):
    """One immutable version of a stored action (what `swarm fn show` prints)."""

    model_config = ConfigDict(extra="forbid")

    spec: ActionSpec  # spec.version is this version's number; spec.status active or draft
    code: str = ""  # python actions: the module's source
    report: TestReport | None = None  # the last run of spec.tests
    request: str = ""  # the text it was created from
    repairs: int = 0  # repair rounds the factory needed
    created_at: str = Field(default_factory=now)

    @property
    def signature(self) -> str:
        return signature(self.spec)

    def summary(self) -> str:
        """One paragraph for a node's report: what was saved, and why it is a draft if it is."""
        s, r = self.spec, self.report
        tests = f"{r.passed}/{r.total} tests pass" if r else "no tests"
        if s.status == "active":
            return f"Saved function `{s.id}` v{s.version}: `{self.signature}` ({tests}). {s.description}".strip()
        lines = [f"Function `{s.id}` v{s.version} was saved as a draft (not routable): {tests}"
                 f"{f' after {self.repairs} repair rounds' if self.repairs else ''}."]
        if r and r.error:
            lines.append(f"Error: {r.error.splitlines()[0]}")
        for case in (r.cases if r else [])[:6]:
            if not case.passed:
                lines.append(f"- {case.name}: {(case.error or '').splitlines()[0] if case.error else 'failed'}")
        return "\n".join(lines)


def signature(spec: ActionSpec) -> str:
    """`def name(a: int, b: str = ...) -> list` from the spec's schemas."""
    props = spec.input_schema.get("properties", {})
    required = set(spec.input_schema.get("required", []))
    args = [f"{name}{_hint(sub)}{'' if name in required else ' = ...'}" for name, sub in props.items()]
    ret = _hint(spec.output_schema).replace(": ", " -> ", 1)
    return f"def {spec.entry or spec.id}({', '.join(args)}){ret}"


def _hint(schema: dict[str, Any]) -> str:
    types = schema.get("type")
    if not types:
        return ""
    names = [_PY.get(t, t) for t in (types if isinstance(types, list) else [types])]
    return ": " + " | ".join(names)


class SpaceStore:
    """The action space of one deployment: the blueprint's built-ins plus the store's own entries."""

    def __init__(self, store: Store, builtins: ActionSpace):
        self.store = store
        self.builtins = builtins
        self._cache: tuple[str, ActionSpace] | None = None

    # --- reading ----------------------------------------------------------------

    def load(self) -> ActionSpace:
        """Built-ins plus the stored entries: one read of space.json, parsed once per version."""
        own, ver = self._read()
        if ver is None:
            return self.builtins
        cached = self._cache
        if cached is not None and cached[0] == ver:
            return cached[1]
        space = self._space(own)
        self._cache = (ver, space)
        return space

    def own(self) -> dict[str, Entry]:
        """The stored entries only (what `actions add|move|rm` may change)."""
        return self._read()[0]

    def version(self, action_id: str, n: int | None = None) -> FunctionVersion:
        """Version `n` of an action (default: the one that runs). A built-in has one, without code."""
        if action_id in self.builtins.entries:
            spec = self.builtins.get(action_id)
            if n not in (None, spec.version):
                raise SpaceError(f"{action_id} is a built-in action: it has only version {spec.version}")
            return FunctionVersion(spec=spec)
        if not ACTION_ID.fullmatch(action_id):  # before it goes into a storage key
            raise SpaceError(f"unknown function {action_id!r}: a function's id matches {ACTION_ID.pattern}")
        card = self.own().get(action_id)
        if n is None:
            if not isinstance(card, ActionSpec):
                raise SpaceError(f"unknown function {action_id!r}" + (" (it is a folder)" if card else ""))
            n = card.version
        try:
            return FunctionVersion.model_validate_json(self.store.read(version_key(action_id, n)))
        except KeyNotFound:
            known = self.versions(action_id)
            raise SpaceError(f"{action_id} has no version {n}" + (f"; it has {known}" if known else "")) from None
        except ValidationError as exc:
            raise ActionError(f"corrupted {version_key(action_id, n)}: {exc.errors()[0]['msg']}") from None

    def versions(self, action_id: str) -> list[int]:
        keys = self.store.list(f"actions/versions/{action_id}/")
        return sorted(int(k.rsplit("/", 1)[1][:-5]) for k in keys if k.endswith(".json") and k.rsplit("/", 1)[1][:-5].isdigit())

    # --- operations -------------------------------------------------------------

    def add(self, entry: Entry, *, code: str = "", request: str = "") -> Entry:
        """Add a folder, or an action as its version 1 (python actions need `code`)."""
        if isinstance(entry, FolderSpec):
            self._check_new(entry.id)

            def insert(own: dict[str, Entry]) -> Entry:
                own[entry.id] = entry
                return entry

            return self._edit(insert)
        return self.new_version(entry, code=code, request=request, new=True).spec

    def new_version(
        self,
        spec: ActionSpec,
        *,
        code: str = "",
        report: TestReport | None = None,
        request: str = "",
        repairs: int = 0,
        new: bool = False,
    ) -> FunctionVersion:
        """Save `spec` (+ code, tests, report) as the action's next version, adding the action if
        it is new (`new=True`: only then). Earlier versions are never touched. An active version
        becomes the one that runs and is routable at once; a draft runs only when asked for by
        number, and is what the card shows only while the action has no active version.

        The same code with the same spec as the newest version is that version, returned as it
        is: a replay, or a second save of one function, adds nothing."""
        spec = self._stored_spec(spec, code)
        if new:
            self._check_new(spec.id)
        self._dry_run(spec)
        n = max(self.versions(spec.id), default=0) + 1
        if n > 1 and not new:
            newest = self.version(spec.id, n - 1)
            if newest.code == code and newest.spec == spec.model_copy(update={"version": n - 1}):
                return newest
        while True:  # create-if-absent: a concurrent save of the same action takes the next number
            record = FunctionVersion(spec=spec.model_copy(update={"version": n}), code=code, report=report, request=request, repairs=repairs)
            if self.store.create(version_key(spec.id, n), record.model_dump_json().encode()):
                break
            n += 1

        def publish(own: dict[str, Entry]) -> None:
            card = own.get(spec.id)
            if isinstance(card, FolderSpec):
                raise SpaceError(f"{spec.id} is a folder")
            keep = isinstance(card, ActionSpec) and card.status == "active" and (record.spec.status == "draft" or card.version > n)
            if not keep:
                own[spec.id] = record.spec.model_copy(update={"tests": []})

        self._edit(publish)
        return record

    def move(self, entry_id: str, parent: str) -> Entry:
        self._check_own(entry_id)

        def change(own: dict[str, Entry]) -> Entry:
            own[entry_id] = own[entry_id].model_copy(update={"parent": parent})
            return own[entry_id]

        return self._edit(change)

    def remove(self, entry_id: str) -> Entry:
        """Take an entry out of the space (its versions stay in storage, immutable)."""
        self._check_own(entry_id)
        inside = sorted(k for k, e in self.load().entries.items() if e.parent == entry_id)
        if inside:
            raise SpaceError(f"folder {entry_id} is not empty: move or remove {', '.join(inside[:5])} first")
        return self._edit(lambda own: own.pop(entry_id))

    def validate(self) -> list[str]:
        """Every problem of the space, one line each: `ActionSpace.problems` plus what needs
        storage (stored ids shadowed by built-ins, versions and code that do not resolve)."""
        own, _ = self._read()
        out = self._space(own).problems()
        for key, entry in sorted(own.items()):
            if key in self.builtins.entries:
                out.append(f"{key}: a stored entry has the id of a built-in (the built-in wins)")
            elif isinstance(entry, ActionSpec):
                out.extend(f"{key}: {p}" for p in self._resolve(entry))
        return out

    # --- internals --------------------------------------------------------------

    def _read(self) -> tuple[dict[str, Entry], str | None]:
        try:
            data, ver = self.store.read_versioned(SPACE_KEY)
        except KeyNotFound:
            return {}, None
        try:
            raw = json.loads(data)["entries"]
            return {k: _ENTRY.validate_python(v) for k, v in raw.items()}, ver
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            raise ActionError(f"corrupted {SPACE_KEY} in {self.store.uri}: {str(exc).splitlines()[0]}") from None

    def _space(self, own: dict[str, Entry]) -> ActionSpace:
        return ActionSpace({**own, **self.builtins.entries}, builtin=set(self.builtins.entries))

    def _edit(self, change: Callable[[dict[str, Entry]], T]) -> T:
        """Apply `change` to the stored entries by compare-and-swap, retrying on conflict;
        refused if the result has a problem the space did not have before."""
        for attempt in range(200):
            own, ver = self._read()
            edited = dict(own)
            result = change(edited)
            before = set(self._space(own).problems())
            added = [p for p in self._space(edited).problems() if p not in before]
            if added:
                raise SpaceError("; ".join(added))
            data = json.dumps({"entries": {k: e.model_dump(exclude={"tests"}) for k, e in sorted(edited.items())}}, indent=1)
            done = self.store.create(SPACE_KEY, data.encode()) if ver is None else self.store.swap(SPACE_KEY, data.encode(), ver)
            if done:
                return result
            cooperative.sleep(random.uniform(0, 0.002 * min(attempt + 1, 20)))
        raise StoreError(f"could not update {SPACE_KEY}: too much contention")

    def _dry_run(self, spec: ActionSpec) -> None:
        """Refuse a version whose card would break the space before its file is written."""
        own, _ = self._read()
        card = own.get(spec.id)
        edited = {**own, spec.id: spec if not isinstance(card, ActionSpec) else card.model_copy(update={"parent": spec.parent})}
        before = set(self._space(own).problems())
        added = [p for p in self._space(edited).problems() if p not in before]
        if isinstance(card, FolderSpec):
            added.insert(0, f"{spec.id} is a folder")
        if added:
            raise SpaceError("; ".join(added))

    def _stored_spec(self, spec: ActionSpec, code: str) -> ActionSpec:
        if spec.type not in ("python", "llm"):
            raise SpaceError(f"{spec.id}: a stored action is python or llm; {spec.type!r} code runs in the worker, so only the blueprint may declare it")
        if spec.type == "python" and not code.strip():
            raise SpaceError(f"{spec.id}: a python action needs its code")
        if spec.type == "llm" and not spec.prompt.strip():
            raise SpaceError(f"{spec.id}: an llm action needs a prompt")
        return spec.model_copy(
            update={
                "role": "worker",
                "handler": PYTHON_HANDLER if spec.type == "python" else LLM_HANDLER,
                "entry": spec.entry or ("main" if spec.type == "python" else ""),
                "language": "python" if spec.type == "python" else spec.language,
            }
        )

    def _check_new(self, entry_id: str) -> None:
        if entry_id in self.builtins.entries:
            raise SpaceError(f"{entry_id!r} is a built-in id; choose another")
        if entry_id in self.own():
            raise SpaceError(f"{entry_id!r} already exists (a new version of an action: `swarm fn create` or new_version)")

    def _check_own(self, entry_id: str) -> None:
        if entry_id in self.builtins.entries:
            raise SpaceError(f"{entry_id} is a built-in: change the blueprint's action folders instead")
        if entry_id not in self.own():
            raise SpaceError(f"unknown entry {entry_id!r}")

    def _resolve(self, card: ActionSpec) -> list[str]:
        try:
            record = self.version(card.id, card.version)
        except (SpaceError, ActionError) as exc:
            return [str(exc)]
        out = []
        if record.spec.id != card.id or record.spec.version != card.version:
            out.append(f"version file {version_key(card.id, card.version)} holds {record.spec.id} v{record.spec.version}")
        if card.type == "python":
            try:
                defined = {n.name for n in ast.parse(record.code).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            except SyntaxError as exc:
                return out + [f"v{card.version} code does not parse: {exc.msg} (line {exc.lineno})"]
            if card.entry not in defined:
                out.append(f"v{card.version} code defines no function {card.entry!r}")
        return out


def folder(entry_id: str, description: str, *, name: str = "", parent: str = ROOT_FOLDER, fallback: str | None = None) -> FolderSpec:
    """A FolderSpec with its name defaulting to the id."""
    return FolderSpec(id=entry_id, name=name or entry_id, description=description, parent=parent, fallback=fallback)


def space_tree(space: ActionSpace, at: str = ROOT_FOLDER) -> list[dict[str, Any]]:
    """The space as nested dicts (folders with `children`), for `swarm actions tree --json`."""
    out = []
    for e in sorted((e for e in space.entries.values() if e.parent == at), key=lambda e: (e.kind != "folder", e.id)):
        item: dict[str, Any] = {"id": e.id, "kind": e.kind, "name": e.name, "description": e.description, "builtin": e.id in space.builtin}
        if isinstance(e, FolderSpec):
            item.update(fallback=e.fallback, children=space_tree(space, e.id))
        else:
            item.update(type=e.type, role=e.role, version=e.version, status=e.status)
        out.append(item)
    return out
