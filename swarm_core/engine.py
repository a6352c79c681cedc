"""The lifecycle of DESIGN.md §2: load_goal → execute_node → spawn | terminate → join → resume.

The engine keeps no swarm state in memory: every call reads what it needs from the
stores and leaves everything it learned there, so any invocation may run in a fresh
process. Idempotency comes from three conditional writes:
  - a node is claimed by compare-and-swap on its record (pending → running);
  - children, join markers and events are created only if absent;
  - a parent's resume is claimed with create-if-absent on `joins/<parent>/<round>/resumed`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ValidationError

from . import cooperative
from .actions import ActionError, ActionSpace, ActionSpec, NodeContext, run_action
from .config import ConfigError, SwarmBlueprint, load_recording
from .dispatch import Dispatcher, local_dispatcher
from .executor import ExecResult, FunctionError
from .factory import Functions, Progress
from .llm import BudgetExceeded, LLMError, LLMSession, OpenAITransport, RecordedTransport, Transport
from .models import (
    ROOT_ID,
    SWARM_ID,
    TERMINAL,
    AskUser,
    Budgets,
    ChildReport,
    Counters,
    Event,
    Fail,
    InvalidId,
    JoinSlot,
    NodeBlueprint,
    NodeRecord,
    Result,
    Spawn,
    SwarmHeader,
    Usage,
    check_node_id,
    check_swarm_id,
    child_id,
    first_error,
    new_swarm_id,
    now,
)
from .space import FunctionVersion, SpaceStore
from .store import KeyNotFound, Store, StoreError, offload, open_store

log = logging.getLogger("swarm")
# A child's first LLM call is counted in the swarm's counters when its parent spawns it, so
# max_llm_calls holds across siblings that cannot see each other's usage until their parent
# resumes. Its record starts with that call as `committed`: a child that makes none gives it
# back through its report (usage - committed = -1) when the parent resumes.
RESERVED = Usage(llm_calls=1)
STALE = "a later claim of this round counted its spawn"  # what _bump answers a spawn that was taken over
JOIN_GROUP = 32  # a wide parallel join reports in groups of this many: each child lists O(group + size/group) keys
M = TypeVar("M", bound=BaseModel)
_SHARED = (SwarmHeader, Counters)  # parsed once per content by `Engine._load`
MAX_TEXT_CHARS = 20_000  # a goal or an answer: each goes whole into a prompt


class SwarmError(Exception):
    """A request the engine refuses; `code` maps to the HTTP status and the CLI exit code."""

    code = 400


class UnknownSwarm(SwarmError):
    code = 404


class UnknownNode(SwarmError):
    code = 404


class NotWaiting(SwarmError):
    code = 409


class CorruptRecord(SwarmError):
    code = 500


@dataclass
class Stores:
    state: Store
    history: Store
    actions: Store
    memory: Store

    @classmethod
    def open(cls, blueprint: SwarmBlueprint) -> Stores:
        uris = blueprint.stores.uris()
        opened: dict[str, Store] = {}
        for uri in set(uris.values()):
            opened[uri] = open_store(uri)
        return cls(**{c: opened[u] for c, u in uris.items()})

    def __post_init__(self) -> None:  # a store doing network I/O must not block the greenlet runner's loop
        for concern in ("state", "history", "actions", "memory"):
            setattr(self, concern, offload(getattr(self, concern)))


def dump(model: BaseModel) -> bytes:
    return model.model_dump_json(exclude_defaults=False).encode()


class Engine:
    def __init__(
        self,
        blueprint: SwarmBlueprint,
        *,
        stores: Stores | None = None,
        dispatcher: Dispatcher | None = None,
        transport: Transport | None = None,
    ):
        self.blueprint = blueprint
        self.stores = stores or Stores.open(blueprint)
        self.state, self.history = self.stores.state, self.stores.history
        self.dispatcher = dispatcher or local_dispatcher(blueprint.dispatcher)
        self.dispatcher.bind(self)
        self.space = ActionSpace.from_dirs(blueprint.action_paths)  # the built-ins
        # The deployment's own actions: read from the actions store at every node invocation.
        self.actions = SpaceStore(self.stores.actions, self.space)
        # Fail at start-up, not on the first goal or the first subtask nothing fits.
        if problems := self.space.problems():
            folders = ", ".join(map(str, blueprint.action_paths))
            raise ConfigError(f"blueprint {blueprint.name} (actions from {folders}): {'; '.join(problems)}")
        if not isinstance(self.space.entries.get(blueprint.root_action), ActionSpec):
            raise ConfigError(f"blueprint {blueprint.name}: root_action {blueprint.root_action!r} is not an action")
        fallback = blueprint.router.fallback
        if not _routable(self.space, fallback) and not _routable(self.actions.load(), fallback):
            raise ConfigError(f"blueprint {blueprint.name}: [router] fallback {fallback!r} is not a routable action")
        self._transport = transport
        self._transports: dict[str, Transport] = {}
        self._parsed: dict[bytes, BaseModel] = {}  # see `_load`

    # --- keys -------------------------------------------------------------------

    @staticmethod
    def key(swarm_id: str, *parts: str) -> str:
        return "/".join(("swarms", swarm_id) + parts)

    def node_key(self, swarm_id: str, node_id: str) -> str:
        return self.key(swarm_id, "nodes", f"{node_id}.json")

    def join_prefix(self, swarm_id: str, parent_id: str, round: int) -> str:
        return self.key(swarm_id, "joins", parent_id, str(round)) + "/"

    def _load(self, store: Store, key: str, cls: type[M], missing: Callable[[], SwarmError]) -> tuple[M, str]:
        """Read and parse one record. A header or the counters is parsed once per content:
        every node reads both, and they change far less often than nodes run. So those two
        come back shared between callers: change them with `model_copy`, never in place."""
        try:
            data, version = store.read_versioned(key)
        except KeyNotFound:
            raise missing() from None
        shared = cls in _SHARED
        if shared and (hit := self._parsed.get(data)) is not None and type(hit) is cls:
            return hit, version  # type: ignore[return-value]
        try:
            parsed = cls.model_validate_json(data)
            if shared:
                if len(self._parsed) >= 64:
                    self._parsed.clear()
                self._parsed[data] = parsed
            return parsed, version
        except ValidationError as exc:
            raise CorruptRecord(f"corrupted record {key} in {store.uri}: {first_error(exc)}") from None

    # --- reading ----------------------------------------------------------------

    def header(self, swarm_id: str) -> SwarmHeader:
        check_swarm_id(swarm_id)
        return self._load(
            self.state, self.key(swarm_id, "swarm.json"), SwarmHeader, lambda: UnknownSwarm(f"unknown swarm {swarm_id}")
        )[0]

    def node(self, swarm_id: str, node_id: str) -> tuple[NodeRecord, str]:
        check_node_id(node_id)
        return self._load(
            self.state,
            self.node_key(swarm_id, node_id),
            NodeRecord,
            lambda: UnknownNode(f"unknown node {node_id} in swarm {swarm_id}"),
        )

    def nodes(self, swarm_id: str) -> list[NodeRecord]:
        self.header(swarm_id)
        recs = []
        for key in self.state.list(self.key(swarm_id, "nodes") + "/"):
            name = key.rsplit("/", 1)[1]
            try:
                if not name.endswith(".json"):
                    raise InvalidId(name)
                recs.append(self.node(swarm_id, name.removesuffix(".json"))[0])
            except (InvalidId, UnknownNode):  # a stray object (or one gone since the list): not as the engine left it
                raise CorruptRecord(f"unexpected object {key} in {self.state.uri}: not a node record") from None
        return sorted(recs, key=lambda r: _order(r.node_id))

    def counters(self, swarm_id: str) -> tuple[Counters, str]:
        return self._load(
            self.state, self.key(swarm_id, "counters.json"), Counters, lambda: UnknownSwarm(f"unknown swarm {swarm_id}")
        )

    def events(self, swarm_id: str) -> list[Event]:
        self.header(swarm_id)
        out = []
        for key in self.history.list(self.key(swarm_id, "events") + "/"):
            out.append(self._load(self.history, key, Event, lambda: UnknownSwarm(key))[0])
        return out

    def read_join(self, swarm_id: str, parent_id: str, round: int) -> list[ChildReport]:
        reports = []
        prefix = self.join_prefix(swarm_id, parent_id, round)
        for key in self.state.list(prefix):
            rel = key[len(prefix) :]
            if rel != "resumed" and not rel.startswith("groups/"):
                reports.append(self._load(self.state, key, ChildReport, lambda: UnknownNode(key))[0])
        return sorted(reports, key=lambda r: _order(r.node_id))

    def swarm_ids(self) -> list[str]:
        """Every swarm in the state store, newest first (ids sort by creation time). An object under
        `index/` whose name is no swarm id (a hand-made file, a tool's folder placeholder) is none."""
        names = (k.rsplit("/", 1)[1] for k in self.state.list("index/"))
        return sorted((name for name in names if SWARM_ID.fullmatch(name)), reverse=True)

    # --- entrypoints -----------------------------------------------------------

    def load_goal(
        self,
        goal: str,
        *,
        budgets: dict[str, Any] | None = None,
        llm_source: str = "openai",
        replay_of: str | None = None,
    ) -> tuple[str, str]:
        """Create a swarm for `goal` and dispatch its root manager. Returns (swarm_id, root_node_id)."""
        check_goal(goal)
        try:
            limits = Budgets.model_validate({**self.blueprint.budgets.model_dump(), **(budgets or {})})
        except ValidationError as exc:
            raise SwarmError(f"invalid budgets: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
        swarm_id = new_swarm_id()
        header = SwarmHeader(
            swarm_id=swarm_id,
            goal=goal.strip(),
            budgets=limits,
            blueprint={"name": self.blueprint.name, "model": self.blueprint.llm.model, "mode": self.blueprint.llm.mode},
            llm_source=llm_source,
            replay_of=replay_of,
        )
        root = NodeBlueprint(node_id=ROOT_ID, action=self.blueprint.root_action, input={"task": header.goal})
        # The index entry first: if a later write fails, `swarm list` still shows the swarm.
        self.state.create(f"index/{swarm_id}", b"")
        self.state.create(self.key(swarm_id, "swarm.json"), dump(header))
        self.state.create(self.key(swarm_id, "counters.json"), dump(Counters(nodes=1)))
        self.state.create(self.node_key(swarm_id, ROOT_ID), dump(NodeRecord(blueprint=root)))
        self._event(swarm_id, Event(kind="created", node_id=ROOT_ID, data={"goal": header.goal}))
        self.dispatcher.dispatch(swarm_id, root)
        return swarm_id, ROOT_ID

    def execute_node(self, swarm_id: str, blueprint: NodeBlueprint | dict) -> str:
        """Run one delivery of a node. Any number of deliveries of the same (node, round) run the
        action at most once; the stored record, not the payload, says what the node is.
        Returns the node's status after this delivery."""
        check_swarm_id(swarm_id)
        bp = blueprint if isinstance(blueprint, NodeBlueprint) else NodeBlueprint.model_validate(blueprint)
        started = time.monotonic()
        header = self.header(swarm_id)
        rec, version = self.node(swarm_id, bp.node_id)
        current = rec.blueprint.round
        resuming = bp.round == current + 1 and rec.status in ("waiting_children", "waiting_user")
        if resuming and not self._released(swarm_id, rec):
            log.warning("%s/%s: a delivery of round %d, which nothing has released (it is %s): ignored",
                        swarm_id, bp.node_id, bp.round, rec.status)
            return rec.status
        if not resuming and bp.round == current and rec.status == "waiting_children":
            self._fan_out(header, rec, recovering=True)  # re-delivery after a crash mid-spawn
            return rec.status
        if not resuming and bp.round == current and rec.status in TERMINAL:
            self._terminate(header, rec, recovering=True)  # re-delivery after a crash mid-termination
            return rec.status
        if not resuming and bp.round == current and rec.status == "waiting_user":
            self._answer_as_recorded(header, rec)  # a replay's re-delivery after a crash before its answer
            return rec.status
        if not resuming and not (bp.round == current and rec.status == "pending"):
            if rec.status == "running" and rec.lease_until and rec.lease_until < time.time() and bp.round == current:
                pass  # the previous claimer's lease ran out: it died, take over
            else:
                return rec.status  # a duplicate or stale delivery: nothing to do
        was = rec.status
        if was == "running" and bp.round > 0:  # taking over a resumed round: resume as the dead claimer did
            was = _waited_in(rec)
            resuming = True
        claimed = (_spent(rec) if rec.status == "running" else rec).model_copy(
            update={
                "blueprint": rec.blueprint.model_copy(update={"round": bp.round}),
                "memo": copy.deepcopy(rec.memo),  # the action edits it: `rec` must stay as it was claimed from
                "status": "running",
                "attempt": rec.attempt + 1,
                "lease_until": time.time() + self.blueprint.dispatcher.lease_seconds,
                "worker": this_worker(),
                "updated_at": now(),
            }
        )
        claim = dump(claimed)
        if not self.state.swap(self.node_key(swarm_id, bp.node_id), claim, version):
            return "running"  # another delivery claimed it first
        try:
            if rec.status == "running":  # taken over: a spawn the dead claim counted will never stand
                self._bump(swarm_id, unspawn=(f"{bp.node_id}/{bp.round}", rec.attempt))
            reports = None
            if resuming and was == "waiting_children":
                reports = self._count_join(swarm_id, bp.node_id, bp.round - 1)
            outcome, session, reserved, earlier = self._run(header, claimed, reports)
            settled = self._settle(header, claimed, claim, outcome, session, reserved, earlier)
        except Exception as exc:
            exc.claim_attempt = claimed.attempt  # type: ignore[attr-defined]  # for fail_node, if this was the last try
            self._unclaim(swarm_id, rec, claimed, claim)
            raise
        rec = settled
        if log.isEnabledFor(logging.INFO):  # the JSON line costs a few percent of a node's CPU
            log.info(
                json.dumps(
                    {
                        "swarm_id": swarm_id,
                        "node_id": rec.node_id,
                        "action": rec.blueprint.action,
                        "round": rec.blueprint.round,
                        "status": rec.status,
                        "duration_s": round(time.monotonic() - started, 4),
                        "llm_calls": session.usage.llm_calls,
                        "tokens": session.usage.tokens,
                    }
                )
            )
        return rec.status

    def _released(self, swarm_id: str, rec: NodeRecord) -> bool:
        """Whether a waiting node may run its next round: its join's resume was claimed (every
        child reported), or its question was answered. The round in a delivery proves nothing:
        a stale or forged one must not resume a node with children still running."""
        if rec.status == "waiting_user":
            return rec.answer is not None
        return self.state.exists(self.join_prefix(swarm_id, rec.node_id, rec.blueprint.round) + "resumed")

    def _count_join(self, swarm_id: str, parent_id: str, round: int) -> list[ChildReport]:
        """Add a join's reports to the counters, once whoever resumes the parent; return them."""
        reports = self.read_join(swarm_id, parent_id, round)
        self._bump(swarm_id, join=f"{parent_id}/{round}", **_usage_delta(sum((r.usage for r in reports), Usage())))
        return reports

    def _unclaim(self, swarm_id: str, before: NodeRecord, claimed: NodeRecord, claim: bytes) -> None:
        """A delivery failed after claiming its node and before settling it (a store error, say):
        hand the record back as it was, so the queue's redelivery can claim it again rather than
        find it `running` under a live lease and count itself delivered. Best effort: if the store
        still fails, the claim stands until its lease runs out or `swarm resume` takes it over."""
        key = self.node_key(swarm_id, claimed.node_id)
        try:
            stored, version = self.state.read_versioned(key)
            if stored != claim:  # `claim`: the bytes the claim wrote, as `_settle` checks them
                return  # settled before the failure (its re-delivery finishes the job), or claimed again
            # with the claim's attempt number: the next claim gets a number of its own
            back = _spent(before).model_copy(update={"attempt": claimed.attempt})
            self.state.swap(key, dump(back), version)
        except Exception:
            log.warning("could not hand back the claim on %s/%s", swarm_id, claimed.node_id, exc_info=True)

    def answer(self, swarm_id: str, node_id: str, text: str, *, recorded: bool = False) -> None:
        """Deliver the user's answer to a node waiting for it; the node then runs again.
        `recorded`: a replay's, given as its recording got it (maybe before today's limit)."""
        if not recorded:
            check_text(text, "answer")
        header = self.header(swarm_id)
        if header.replay_of and not recorded:  # its calls come from the original's history, which has none for this answer
            raise SwarmError(f"{swarm_id} replays {header.replay_of}: answer {header.replay_of}, then replay it again")
        while True:  # until this answer is stored, or the node says why it takes none (answered meanwhile)
            rec, version = self.node(swarm_id, node_id)
            if rec.status != "waiting_user":
                raise NotWaiting(f"node {node_id} is {rec.status}, not waiting for an answer")
            if rec.answer is not None:  # answered; its branch has not picked the answer up yet
                raise NotWaiting(f"node {node_id} was already answered")
            updated = rec.model_copy(update={"answer": text.strip(), "updated_at": now()})
            if self.state.swap(self.node_key(swarm_id, node_id), dump(updated), version):
                break
        self._event(swarm_id, Event(kind="answered", node_id=node_id, round=rec.blueprint.round, data={"answer": text}))
        self.dispatcher.dispatch(swarm_id, rec.blueprint.model_copy(update={"round": rec.blueprint.round + 1}))

    def fail_node(self, swarm_id: str, blueprint: NodeBlueprint, error: str, *, claim: int | None = None) -> bool:
        """Give up on a delivery that keeps failing: mark the node failed with `error` and terminate
        it like any failed node, so its parent resumes and the swarm still ends. Only while the
        record is where this delivery would have taken it from (pending, or waiting for this
        resume); `claim`, the attempt a crashed delivery had claimed (`claim_attempt` on the
        exception `execute_node` raised), also allows that claim, still `running`, or a dead
        claim it had taken over and handed back. True if failed here."""
        rec, version = self.node(swarm_id, blueprint.node_id)
        current = rec.blueprint.round
        first_run = rec.status == "pending" and blueprint.round == current
        resume = rec.status in ("waiting_children", "waiting_user") and blueprint.round == current + 1
        # its own claim, or the dead one just before it that it took over and handed back
        mine = claim is not None and (rec.status, current) == ("running", blueprint.round) and (
            rec.attempt == claim or (rec.attempt == claim - 1 and bool(rec.lease_until) and rec.lease_until < time.time())
        )
        if not (first_run or resume or mine):
            return False  # terminal, or it moved on without this delivery (or another holds it)
        header = self.header(swarm_id)
        if resume and rec.status == "waiting_children":  # what the resume would have counted
            self._count_join(swarm_id, rec.node_id, current)
        elif mine and current > 0 and _waited_in(rec) == "waiting_children":  # the claim may have died before counting it
            self._count_join(swarm_id, rec.node_id, current - 1)
        if mine:  # a spawn its claim (or the dead one before it) counted will never stand
            self._bump(swarm_id, unspawn=(f"{rec.node_id}/{current}", claim))
        fail = Fail(error=error)
        failed = (_spent(rec) if mine else rec).model_copy(
            update={"status": "failed", "error": error, "outcome": fail, "lease_until": None, "updated_at": now()}
        )
        if not self.state.swap(self.node_key(swarm_id, rec.node_id), dump(failed), version):
            return False
        # the attempt of the claim it fails (or of the record's last claim): it outranks that claim's own event
        data = {"action": rec.blueprint.action, "attempt": max(rec.attempt, claim or 0), "outcome": fail.model_dump(), "delivery_failed": True}
        self._event(swarm_id, Event(kind="outcome", node_id=rec.node_id, round=current, data=data))
        self._terminate(header, failed)
        return True

    def resume(self, swarm_id: str) -> int:
        """Finish a swarm whose workers died: re-deliver whatever was left in flight.

        A node marked running is taken over at once, unless its claim is held by a process still
        alive on this host (another `swarm resume`, the `swarm run` that started it) with its lease
        not run out: that process finishes it. A claim made elsewhere cannot be checked: it is
        taken over (so run this when no other host works on the swarm). Safe to run twice, or at
        the same time: every step it repeats is idempotent. Returns how many deliveries it made."""
        header = self.header(swarm_id)
        sent = 0
        held: list[NodeRecord] = []
        for rec in self.nodes(swarm_id):
            if rec.status == "running":
                rec, version = self.node(swarm_id, rec.node_id)  # as it is now: another resume may have taken it over
                if rec.status != "running":
                    continue
                if rec.lease_until and rec.lease_until > time.time() and _alive(rec.worker):
                    held.append(rec)
                    continue
                # Its claimer died: hand the node back the state it was claimed from, deliver it again.
                if rec.blueprint.round == 0:
                    back = _spent(rec).model_copy(update={"status": "pending", "lease_until": None})
                else:
                    back = _spent(rec).model_copy(
                        update={
                            "status": _waited_in(rec),
                            "lease_until": None,
                            "blueprint": rec.blueprint.model_copy(update={"round": rec.blueprint.round - 1}),
                        }
                    )
                if self.state.swap(self.node_key(swarm_id, rec.node_id), dump(back), version):
                    self._bump(swarm_id, unspawn=(f"{rec.node_id}/{rec.blueprint.round}", rec.attempt))
                    self.dispatcher.dispatch(swarm_id, rec.blueprint)
                    sent += 1
            elif rec.status == "pending" and (rec.join is None or rec.join.mode == "parallel" or rec.join.index == 0):
                self.dispatcher.dispatch(swarm_id, rec.blueprint)
                sent += 1
            elif rec.status == "waiting_children":
                self._fan_out(header, rec, recovering=True)
                sent += 1
            elif rec.status == "waiting_user" and rec.answer is not None:  # answered; its delivery was lost
                self.dispatcher.dispatch(swarm_id, rec.blueprint.model_copy(update={"round": rec.blueprint.round + 1}))
                sent += 1
            elif rec.status == "waiting_user":
                sent += self._answer_as_recorded(header, rec)  # a replay that died before its answer
            elif rec.status in TERMINAL:
                self._terminate(header, rec, recovering=True)
        if held:
            owners = ", ".join(sorted({(r.worker or "").split("/")[2] for r in held}))
            names = ", ".join(r.node_id for r in held[:5]) + (", …" if len(held) > 5 else "")
            log.warning("%s: %d node(s) running in process %s on this host, which finishes them: %s",
                        swarm_id, len(held), owners, names)
        return sent

    # --- running one node ------------------------------------------------------

    def transport_for(self, header: SwarmHeader) -> Transport:
        if self._transport is not None:
            return self._transport
        source = header.llm_source
        if source not in self._transports:  # a cache of clients, not swarm state
            if source.startswith("recording:"):
                path = Path(source.split(":", 1)[1])
                self._transports[source] = RecordedTransport(load_recording(path)["answers"], str(path))
            elif source.startswith("replay:"):
                self._transports[source] = self.replay_transport(source.split(":", 1)[1])
            else:
                self._transports[source] = OpenAITransport(self.blueprint.llm)
        return self._transports[source]

    def _recording(self, header: SwarmHeader) -> RecordedTransport | None:
        """The recording a replay runs from, if it is one: it decides the replay's budgets (the
        calls and stops it recorded). Never builds a model client (a replay runs where no key is set)."""
        if self._transport is None and not header.llm_source.startswith("replay:"):
            return None  # the shipped demo recording answers like a model: budgets apply as to one
        transport = self.transport_for(header)
        return transport if isinstance(transport, RecordedTransport) else None

    def functions(self, key_prefix: str = "cli/0") -> Functions:
        """The factory and executor outside any swarm (`swarm fn`, scripts), on the engine's LLM.
        Without a configured model, python functions still run; the factory and llm actions refuse."""
        try:
            transport = self._transport or OpenAITransport(self.blueprint.llm).connected()
        except LLMError:  # no key and no server configured
            return Functions(self.actions, None, self.blueprint)
        return Functions(self.actions, LLMSession(transport=transport, settings=self.blueprint.llm, key_prefix=key_prefix), self.blueprint)

    def exec_function(self, name: str, args: dict[str, Any], version: int | None = None) -> ExecResult:
        """Run a function of the action space (see executor.exec_function)."""
        return self.functions().run(name, args, version)

    def create_function(self, description: str, progress: Progress | None = None) -> FunctionVersion:
        """Write, test and save a function (see factory.create_function)."""
        return self.functions().create(description, progress)

    def recorded_answers(self, swarm_id: str) -> dict[str, dict[str, Any]]:
        """Every LLM answer a swarm received (with its token counts, or the error the server
        gave), keyed `<node>/<round>/<seq>`."""
        return self.replay_transport(swarm_id).answers

    def replay_transport(self, swarm_id: str) -> RecordedTransport:
        """The swarm's history as a recording: its answers (with token counts) and the budget
        failures of each node and round, enough to replay it to the same tree."""
        answers: dict[str, dict[str, Any]] = {}
        stops: dict[str, str] = {}
        events = self.events(swarm_id)
        # A late worker's outcome event can land after the takeover's, just before its record
        # write loses: its `superseded` event names it.
        dropped = {(e.node_id, e.round, e.data.get("attempt")) for e in events if e.kind == "superseded"}
        # A crash between a node's outcome event and its record write leaves that attempt's event
        # beside the re-run's; a late worker's can even land after its takeover's. Every claim has
        # a higher attempt than the one it followed: the highest stands (on a tie, the later event,
        # a delivery's failure recorded after its claim's outcome).
        stood: dict[tuple[str, int], Event] = {}
        for e in events:
            if e.kind == "outcome" and (e.node_id, e.round, e.data.get("attempt")) not in dropped:
                before = stood.get((e.node_id, e.round))
                if before is None or _attempt(e) >= _attempt(before):
                    stood[(e.node_id, e.round)] = e
        said = {f"{e.node_id}/{e.round}": e.data["answer"] for e in events if e.kind == "answered"}
        for event in stood.values():
            if "answer" in event.data:  # the answer the round ran with
                said[f"{event.node_id}/{event.round - 1}"] = event.data["answer"]
            outcome = event.data.get("outcome", {})
            if outcome.get("kind") == "fail" and outcome.get("error", "").startswith("budget "):
                stops[f"{event.node_id}/{event.round}"] = outcome["error"]
            for call in event.llm_calls:
                if call.response is not None:
                    answers[f"{event.node_id}/{event.round}/{call.seq}"] = {
                        "text": call.response, "prompt_tokens": call.prompt_tokens, "completion_tokens": call.completion_tokens,
                        **({"refusal": call.refusal} if call.refusal else {}),
                    }
                elif call.error:  # the server failed: so does the replay, with the same error
                    answers[f"{event.node_id}/{event.round}/{call.seq}"] = {"error": call.error}
        return RecordedTransport(answers, f"replay:{swarm_id}", stops, said)

    def _run(self, header: SwarmHeader, rec: NodeRecord, child_reports: list[ChildReport] | None):
        """Run the node's action. Returns its outcome, its LLM session, the calls it reserved in
        the swarm's counters beyond its spawn's reservation (see `_budget_check`), and the tokens
        the earlier steps of its sequential plan used (not in the counters yet either)."""
        swarm_id, bp = header.swarm_id, rec.blueprint
        reserved = [Usage()]
        previous: list[ChildReport] = []
        session = LLMSession(
            transport=self.transport_for(header),
            settings=self.blueprint.llm,
            key_prefix=f"{bp.node_id}/{bp.round}",
        )
        try:
            previous = self._earlier_steps(swarm_id, rec)
            session.budget_check = self._budget_check(header, rec, session, previous, reserved)
            space = self.actions.load()
            ctx = NodeContext(
                swarm=header,
                record=rec,
                action=space.get(bp.action),
                space=space,
                llm=session,
                system_prompt=self.blueprint.system_prompt,
                router_fallback=self.blueprint.router.fallback,
                child_reports=child_reports,
                previous_reports=previous,
                read_join=lambda node, rnd: self.read_join(swarm_id, node, rnd),
                functions=Functions(self.actions, session, self.blueprint),
            )
            outcome = run_action(ctx)
        except (LLMError, BudgetExceeded, ActionError, FunctionError) as exc:
            outcome = Fail(error=str(exc))
        except (StoreError, SwarmError):
            raise  # infrastructure trouble: leave the claim, a re-delivery or `swarm resume` retries
        except Exception as exc:  # an action's bug fails its node, never the worker
            log.exception("action %s failed on %s/%s", bp.action, swarm_id, bp.node_id)
            outcome = Fail(error=f"{bp.action} raised {type(exc).__name__}: {exc}")
        return outcome, session, reserved[0], sum(r.usage.tokens for r in previous)

    def _earlier_steps(self, swarm_id: str, rec: NodeRecord) -> list[ChildReport]:
        """The reports of the steps before this one, if it is a step of a sequential plan: what
        they used is not in the counters until their parent resumes."""
        j = rec.join
        if not (j and j.mode == "sequential" and j.index > 0):
            return []
        return [r for r in self.read_join(swarm_id, j.parent_id, j.round) if _order(r.node_id) < _order(rec.node_id)]

    def _budget_check(
        self, header: SwarmHeader, rec: NodeRecord, session: LLMSession, previous: list[ChildReport], reserved: list[Usage]
    ) -> Callable[[], None]:
        """The check before each of a node's LLM calls, against the swarm's counters plus what
        this node knows is not in them yet: its own calls beyond what it reserved, and what the
        earlier steps of a sequential plan used (committed when their parent resumes).

        A call the node's spawn did not reserve (a repair, a second routing level, the
        factory's calls) is reserved in the counters by compare-and-swap before it is made, so
        parallel siblings, which cannot see each other's usage, still hold max_llm_calls
        together. A node's first call was reserved by its spawn: it costs no write."""
        b = header.budgets
        # not in the counters before this delivery's calls: this node's, the earlier steps'
        calls = rec.usage.llm_calls - rec.committed.llm_calls
        tokens = rec.usage.tokens - rec.committed.tokens + sum(r.usage.tokens for r in previous)
        before = sum(r.usage.llm_calls for r in previous)
        recording = self._recording(header)

        def check() -> None:
            own_calls = calls + session.usage.llm_calls - reserved[0].llm_calls
            spent = tokens + session.usage.tokens
            veto: Callable[[Counters], str | None] | None = lambda c: _llm_veto(b, c, own_calls + before, spent)
            if recording is not None:  # the recording decides: a recorded call is made
                if f"{session.key_prefix}/{len(session.calls)}" in recording.answers:
                    veto = None
                elif stop := recording.stops.get(session.key_prefix):
                    raise BudgetExceeded(stop)
            if own_calls + 1 <= 0:  # covered by a reservation already in the counters
                reason = veto(self.counters(header.swarm_id)[0]) if veto else None
            else:
                need = own_calls + 1
                reason = self._bump(header.swarm_id, check=veto, llm_calls=need)
                if not reason:
                    reserved[0] = reserved[0] + Usage(llm_calls=need)
            if reason:
                raise BudgetExceeded(reason)

        return check

    def _bump(
        self,
        swarm_id: str,
        check: Callable[[Counters], str | None] | None = None,
        join: str | None = None,
        spawn: tuple[str, int, int] | None = None,
        unspawn: tuple[str, int] | None = None,
        **delta: int,
    ) -> str | None:
        """Add to the swarm's counters by compare-and-swap; `check` may veto with a reason.

        `join` ("<parent>/<round>"): `delta` is that join's reports, added once whoever resumes
        the parent. `spawn` ("<node>/<round>", attempt, children): `delta` counts that spawn.
        It replaces the spawn an earlier claim of the round counted before it died; if a later
        claim's is there, nothing is added and STALE is returned. `unspawn` ("<node>/<round>",
        attempt): take back the spawn counted by that claim or an earlier one, none of which
        will stand; a later claim's stays."""
        if check is None and spawn is None and unspawn is None and not any(delta.values()):
            return None
        key = self.key(swarm_id, "counters.json")
        for attempt in range(1000):
            counters, version = self.counters(swarm_id)
            if join in counters.joins:
                return None  # counted by an earlier delivery of this resume (taken over, or handed back)
            base, spawns = counters, dict(counters.spawns)
            if spawn or unspawn:
                round_key, claim = (spawn or unspawn)[:2]  # type: ignore[index]
                prev = spawns.get(round_key)
                if spawn and prev and prev[0] > claim:
                    return STALE
                if prev and (spawn or prev[0] <= claim):  # replaced, or taken back
                    gone = {"nodes": counters.nodes - prev[1], "llm_calls": counters.llm_calls - prev[1] * RESERVED.llm_calls}
                    base = counters.model_copy(update=gone)
                    del spawns[round_key]
                if spawn:
                    spawns[round_key] = [claim, spawn[2]]
            if check and (reason := check(base)):
                if base is counters:
                    return reason
                # refused, but the earlier claim's spawn it would have replaced still goes
                del spawns[round_key]
                if self.state.swap(key, dump(base.model_copy(update={"spawns": spawns})), version):
                    return reason
                continue
            update: dict[str, Any] = {k: getattr(base, k) + v for k, v in delta.items()}
            if join is not None:
                update["joins"] = counters.joins + [join]
                spawns.pop(join, None)  # that round's spawn stood: its entry has done its job
            updated = base.model_copy(update={**update, "spawns": spawns})
            if updated == counters or self.state.swap(key, dump(updated), version):
                return None
            cooperative.sleep(random.uniform(0, 0.002 * min(attempt + 1, 20)))
        raise StoreError(f"could not update {key}: too much contention")

    def _settle(
        self, header: SwarmHeader, rec: NodeRecord, claim: bytes, outcome, session: LLMSession, reserved: Usage, earlier: int
    ) -> NodeRecord:
        """Persist the outcome, then act on it (spawn children, terminate, or wait for the user).

        Only while the stored record is still `claim`, the bytes this delivery's claim wrote: a
        worker that outlived its lease finds the node taken over, and drops its outcome rather
        than spawn or report a second time. The record's final write is a compare-and-swap
        against the version checked here. `reserved`: the calls `_run` reserved in the
        counters, now committed like the spawn's; `earlier`: the tokens of the earlier steps, which
        a spawn is checked against too."""
        swarm_id = header.swarm_id
        key = self.node_key(swarm_id, rec.node_id)
        if reserved.llm_calls:
            rec = rec.model_copy(update={"committed": rec.committed + reserved})
        own = rec.usage + session.usage - rec.committed  # this delivery's usage not in the counters
        stored, version = self.state.read_versioned(key)
        if stored != claim:
            return self._superseded(swarm_id, self.node(swarm_id, rec.node_id)[0], rec, session, own)
        spawned = None  # ("<node>/<round>", attempt) once the spawn is counted
        try:
            if isinstance(outcome, Spawn):
                outcome, spawned = self._count_spawn(header, rec, outcome, own, earlier)
                if spawned:
                    rec = rec.model_copy(update={"committed": rec.usage + session.usage})
            if outcome is not None:  # None: a later claim of this round counted its spawn (a takeover)
                data = {"action": rec.blueprint.action, "attempt": rec.attempt, "outcome": outcome.model_dump()}
                if isinstance(rec.outcome, AskUser) and rec.answer is not None:  # resumed by this answer
                    data["answer"] = rec.answer  # history has it even if `answer` died before its event
                self._event(swarm_id, Event(kind="outcome", node_id=rec.node_id, round=rec.blueprint.round, data=data, llm_calls=session.calls))
        except Exception:  # the claim is handed back and the node runs again: count this run as dropped
            self._recount(swarm_id, own, spawned)
            raise
        if outcome is None:
            return self._superseded(swarm_id, self.node(swarm_id, rec.node_id)[0], rec, session, own)
        update: dict[str, Any] = {"outcome": outcome, "usage": rec.usage + session.usage, "lease_until": None, "updated_at": now()}
        if isinstance(outcome, Spawn):
            update.update(status="waiting_children", children=rec.children + [c.node_id for c in outcome.children])
        elif isinstance(outcome, AskUser):
            update.update(status="waiting_user", question=outcome.question, answer=None)
        elif isinstance(outcome, Result):
            update.update(status="done", report=outcome.report, data=outcome.data, error=None)
        else:
            update.update(status="failed", error=outcome.error)
        settled = rec.model_copy(update=update)
        final = dump(settled)
        try:
            landed = self.state.swap(key, final, version)
        except Exception:  # unless the write landed after all, its count does not stand
            try:
                stood = self.state.read(key) == final
            except Exception:
                stood = True  # unknown: keep the count, which errs on the side of the budgets
            if not stood:
                self._recount(swarm_id, own, spawned)
            raise
        if not landed:  # taken over since the check above
            return self._superseded(swarm_id, self.node(swarm_id, rec.node_id)[0], rec, session, own, spawned)
        if isinstance(outcome, Spawn):
            self._fan_out(header, settled)
        elif not isinstance(outcome, AskUser):
            self._terminate(header, settled)
        else:
            self._answer_as_recorded(header, settled)
        return settled

    def _answer_as_recorded(self, header: SwarmHeader, rec: NodeRecord) -> bool:
        """In a replay, give a waiting node the answer the user gave in the recorded swarm."""
        recording = self._recording(header)
        said = recording.user_answers.get(f"{rec.node_id}/{rec.blueprint.round}") if recording else None
        if said is None or rec.answer is not None:
            return False
        try:
            self.answer(header.swarm_id, rec.node_id, said, recorded=True)
        except NotWaiting:  # answered meanwhile (by hand, or by another delivery)
            return False
        return True

    def _count_spawn(
        self, header: SwarmHeader, rec: NodeRecord, spawn: Spawn, own: Usage, earlier: int
    ) -> tuple[Spawn | Fail | None, tuple[str, int] | None]:
        """Check a spawn against the budgets and count it (nodes, this delivery's usage, one
        reserved call per child) in one compare-and-swap. Returns the outcome (a Fail naming the
        budget if vetoed; None if a later claim of the round has counted its own spawn) and, if
        counted, ("<node>/<round>", attempt), which `_recount` can take back. A replay refuses
        the spawns its recording refused, and only those."""
        b, n, bp = header.budgets, len(spawn.children), rec.blueprint
        deep = [c.node_id for c in spawn.children if c.depth > b.max_depth]
        if deep:
            return Fail(error=f"budget max_depth={b.max_depth} exceeded by {', '.join(deep[:3])}"), None
        round_key = f"{bp.node_id}/{bp.round}"
        recording = self._recording(header)
        if recording and (stop := recording.stops.get(round_key)):
            return Fail(error=stop), None
        delta = {"nodes": n, **_usage_delta(own)}
        delta["llm_calls"] += n * RESERVED.llm_calls  # each child's first call, reserved now

        def check(c: Counters) -> str | None:
            if c.nodes + n > b.max_nodes:
                return f"budget max_nodes={b.max_nodes} exceeded: {c.nodes} nodes exist, {n} more were asked for"
            if c.llm_calls + delta["llm_calls"] > b.max_llm_calls:
                return (f"budget max_llm_calls={b.max_llm_calls} exceeded: {c.llm_calls + own.llm_calls} calls made or "
                        f"reserved, {n} more children would make at least one each")
            if spent := _tokens_spent(b, c, own.tokens + earlier):
                return f"{spent}: no tokens left for {n} children"
            return None

        veto = self._bump(header.swarm_id, check=None if recording else check, spawn=(round_key, rec.attempt, n), **delta)
        if veto == STALE:
            return None, None
        return (Fail(error=veto), None) if veto else (spawn, (round_key, rec.attempt))

    def _recount(self, swarm_id: str, own: Usage, spawned: tuple[str, int] | None) -> None:
        """A delivery whose outcome will not stand (taken over, or handed back after an error):
        leave in the counters what it spent (`own`), not the spawn it counted. Best effort: if
        the store fails too, the counters stay high until a later claim's spawn replaces it."""
        try:
            if spawned:  # its usage went in with the spawn, and stays
                self._bump(swarm_id, unspawn=spawned)
            else:
                self._bump(swarm_id, **_usage_delta(own))
        except Exception:
            log.warning("could not correct the counters of %s", swarm_id, exc_info=True)

    def _superseded(
        self, swarm_id: str, current: NodeRecord, mine: NodeRecord, session: LLMSession, own: Usage, spawned: tuple[str, int] | None = None
    ) -> NodeRecord:
        """Drop the outcome of a delivery whose claim was taken over. Its LLM calls were paid for:
        they stay in the counters and, as a `superseded` event, go into the history (replay
        skips it). Its spawn, if it counted one, is taken back out."""
        log.warning(
            "%s/%s attempt %d outlived its lease and was taken over (now %s, attempt %d): "
            "its outcome is dropped, its %d LLM calls are counted",
            swarm_id, mine.node_id, mine.attempt, current.status, current.attempt, session.usage.llm_calls,
        )
        self._recount(swarm_id, own, spawned)
        data = {"action": mine.blueprint.action, "attempt": mine.attempt, "taken_over_by": current.attempt}
        self._event(swarm_id, Event(kind="superseded", node_id=mine.node_id, round=mine.blueprint.round, data=data, llm_calls=session.calls))
        return current

    def _fan_out(self, header: SwarmHeader, rec: NodeRecord, recovering: bool = False) -> None:
        """Write the children's records (create-if-absent) and dispatch the runnable ones."""
        swarm_id = header.swarm_id
        spawn = rec.outcome
        assert isinstance(spawn, Spawn)
        size = len(spawn.children)
        records = []
        for i, child in enumerate(spawn.children):
            slot = JoinSlot(parent_id=rec.node_id, round=rec.blueprint.round, index=i, size=size, mode=spawn.mode)
            child_rec = NodeRecord(blueprint=child, join=slot, committed=RESERVED)
            if not self.state.create(self.node_key(swarm_id, child.node_id), dump(child_rec)) and recovering:
                child_rec = self.node(swarm_id, child.node_id)[0]
            records.append(child_rec)
            if i % JOIN_GROUP == JOIN_GROUP - 1:  # a wide fan-out on a slow disk must not keep the greenlet
                cooperative.sleep(0)  # runner's loop from its other nodes (nor set off its hold warning)
        if not recovering:
            for child_rec in records if spawn.mode == "parallel" else records[:1]:
                self.dispatcher.dispatch(swarm_id, child_rec.blueprint)
            return
        live = [r for r in records if r.status not in TERMINAL]
        if spawn.mode == "sequential" and live:
            k = records.index(live[0])
            if k and records[k - 1].status != "done":  # a failed step: the steps after it are cancelled, never run
                self._terminate(header, records[k - 1], recovering=True)
                return
            live = live[:1]
        for child_rec in live:
            if child_rec.status == "pending":
                self.dispatcher.dispatch(swarm_id, child_rec.blueprint)
        if not live:
            self._join(swarm_id, records[0].join, recovering=True, every_group=True)  # type: ignore[arg-type]

    def _terminate(self, header: SwarmHeader, rec: NodeRecord, recovering: bool = False) -> None:
        """A node reached done/failed/cancelled: report to the parent's join, or end the swarm."""
        swarm_id, slot = header.swarm_id, rec.join
        if slot is None:
            self._finish_swarm(swarm_id, rec)
            return
        marker = ChildReport(
            node_id=rec.node_id,
            action=rec.blueprint.action,
            status=rec.status,  # type: ignore[arg-type]
            report=rec.report or "",
            data=rec.data,
            error=rec.error,
            usage=rec.usage - rec.committed,
        )
        self.state.create(self._marker_key(swarm_id, slot, rec.node_id), dump(marker))
        if slot.mode == "sequential" and slot.index + 1 < slot.size:
            nxt, nxt_version = self.node(swarm_id, child_id(slot.parent_id, slot.round, slot.index + 1))
            if rec.status == "done":
                if nxt.status == "pending":
                    self.dispatcher.dispatch(swarm_id, nxt.blueprint)
                return
            if nxt.status == "pending":  # a failed step cancels the steps after it, one at a time
                cancelled = nxt.model_copy(update={"status": "cancelled", "error": f"cancelled: {rec.node_id} failed", "updated_at": now()})
                if self.state.swap(self.node_key(swarm_id, nxt.node_id), dump(cancelled), nxt_version):
                    nxt = cancelled
                else:  # changed meanwhile: go on from what it is now
                    nxt = self.node(swarm_id, nxt.node_id)[0]
            if nxt.status == "cancelled":  # by this delivery, or by one that died before finishing the cascade
                self._terminate(header, nxt, recovering)
            return
        self._join(swarm_id, slot, recovering)

    def _marker_key(self, swarm_id: str, slot: JoinSlot, node_id: str) -> str:
        prefix = self.join_prefix(swarm_id, slot.parent_id, slot.round)
        if slot.mode == "parallel" and slot.size > JOIN_GROUP:
            return f"{prefix}g{slot.index // JOIN_GROUP}/{node_id}"
        return prefix + node_id

    def _join(self, swarm_id: str, slot: JoinSlot, recovering: bool = False, every_group: bool = False) -> None:
        """If every child of this join group has reported, resume the parent exactly once.

        A wide parallel join is two-level: children report under `g<k>/` (JOIN_GROUP each);
        whoever sees its group complete creates `groups/g<k>`; whoever then sees every group
        marker claims the resume. A child lists at most JOIN_GROUP + size/JOIN_GROUP keys,
        not all `size` of them (which made a fan-out of N cost O(N^2))."""
        prefix = self.join_prefix(swarm_id, slot.parent_id, slot.round)
        if slot.mode == "parallel" and slot.size > JOIN_GROUP:
            groups = -(-slot.size // JOIN_GROUP)
            for g in range(groups) if every_group else (slot.index // JOIN_GROUP,):
                members = min(JOIN_GROUP, slot.size - g * JOIN_GROUP)
                if len(self.state.list(f"{prefix}g{g}/")) < members:
                    if every_group:
                        continue
                    return
                self.state.create(f"{prefix}groups/g{g}", b"")  # lost: a sibling got here too; both go on
            if len(self.state.list(prefix + "groups/")) < groups:
                return
        else:
            reported = [k for k in self.state.list(prefix) if not k.endswith("/resumed")]
            if len(reported) < slot.size:
                return
        claimed = self.state.create(prefix + "resumed", now().encode())
        parent, _ = self.node(swarm_id, slot.parent_id)
        if claimed or (recovering and parent.status == "waiting_children" and parent.blueprint.round == slot.round):
            self._event(swarm_id, Event(kind="resumed", node_id=slot.parent_id, round=slot.round + 1))
            self.dispatcher.dispatch(swarm_id, parent.blueprint.model_copy(update={"round": slot.round + 1}))

    def _finish_swarm(self, swarm_id: str, root: NodeRecord) -> None:
        """End the swarm: its header, then its `swarm_done` event and its report. A header already
        ended means a recovery (a re-delivery, `swarm resume`): the worker that ended it may have
        died before the event or the report, so whichever is missing is written now."""
        key = self.key(swarm_id, "swarm.json")
        header, version = self._load(self.state, key, SwarmHeader, lambda: UnknownSwarm(swarm_id))
        recovering = header.status in ("done", "failed")
        if not recovering:
            update = {"status": "done" if root.status == "done" else "failed", "report": root.report, "error": root.error, "finished_at": now()}
            header = header.model_copy(update=update)
            if not self.state.swap(key, dump(header), version):
                return  # another delivery ended it, and writes the rest
        events = self.history.list(self.key(swarm_id, "events") + "/") if recovering else []
        if not any(k.endswith("-swarm_done.json") for k in events):
            self._event(swarm_id, Event(kind="swarm_done", node_id=root.node_id, round=root.blueprint.round, data={"status": header.status}))
        report = f"reports/{swarm_id}.md"
        if header.report and not (recovering and self.stores.memory.exists(report)):
            self.stores.memory.write(report, f"# {header.goal}\n\n{header.report}\n".encode())

    def _event(self, swarm_id: str, event: Event) -> None:
        stamp = f"{time.time_ns():020d}"
        key = self.key(swarm_id, "events", f"{stamp}-{event.node_id}-{event.round}-{event.kind}.json")
        self.history.create(key, dump(event))

    # --- views -------------------------------------------------------------------

    def status(self, swarm_id: str) -> dict[str, Any]:
        """The header plus what the nodes say: counts per status, usage, waiting questions."""
        header = self.header(swarm_id)
        nodes = self.nodes(swarm_id)
        total = sum((n.usage for n in nodes), Usage())
        counts: dict[str, int] = {}
        for n in nodes:
            counts[n.status] = counts.get(n.status, 0) + 1
        status = header.status
        by_id = {n.node_id: n for n in nodes}

        def queued(n: NodeRecord) -> bool:  # runnable: pending and not a step behind an unfinished one,
            if n.status in ("waiting_user", "waiting_children"):  # or released (answered, or its join resumed)
                return self._released(swarm_id, n)
            j = n.join
            if n.status != "pending" or not (j and j.mode == "sequential" and j.index > 0):
                return n.status == "pending"
            before = by_id.get(child_id(j.parent_id, j.round, j.index - 1))
            return before is None or before.status in TERMINAL

        if status == "running" and counts.get("waiting_user") and not counts.get("running") and not any(map(queued, nodes)):
            status = "waiting_user"
        return {
            "swarm_id": swarm_id,
            "goal": header.goal,
            "status": status,
            "report": header.report,
            "error": header.error,
            "llm_source": header.llm_source,
            "replay_of": header.replay_of,
            "created_at": header.created_at,
            "finished_at": header.finished_at,
            "nodes": len(nodes),
            "by_status": counts,
            "usage": {**total.model_dump(exclude={"seconds"}), "seconds": round(total.seconds, 3)},
            "waiting": [{"node_id": n.node_id, "question": n.question} for n in nodes if n.status == "waiting_user" and n.answer is None],
        }

    def snapshot(self, swarm_id: str) -> dict[str, Any]:
        """The whole tree as one JSON-able object."""
        header = self.header(swarm_id)
        nodes = self.nodes(swarm_id)
        return {
            "swarm": header.model_dump(),
            "counters": self.counters(swarm_id)[0].model_dump(),
            "nodes": [
                {"node_id": n.node_id, "parent_id": n.blueprint.parent_id, **n.model_dump(exclude={"blueprint"}), "blueprint": n.blueprint.model_dump()}
                for n in nodes
            ],
        }


def _routable(space: ActionSpace, action_id: str) -> bool:
    entry = space.entries.get(action_id)
    return isinstance(entry, ActionSpec) and entry.routable


def _attempt(event: Event) -> float:
    """The claim an outcome event came from; events written before events carried it sort last."""
    return event.data.get("attempt", math.inf)


_WORKER: tuple[int, str] | None = None


def this_worker() -> str:
    """Who makes a claim, as `host/boot/pid/start`: `resume` can then tell a claim whose process
    died from one a process on this host still holds. The boot id and the process's start time
    tell a reused pid from the claimer (on Linux; elsewhere they are empty)."""
    global _WORKER
    pid = os.getpid()
    if _WORKER is None or _WORKER[0] != pid:  # a forked worker is a worker of its own
        _WORKER = pid, f"{socket.gethostname()}/{_boot_id()}/{pid}/{_started(pid)}"
    return _WORKER[1]


def _alive(worker: str | None) -> bool:
    """Whether the process that made a claim is still running; False if it died, or if the claim
    names none or another host (then nothing says it is alive: it is taken over, as before)."""
    try:
        host, boot, pid, started = (worker or "").split("/")
        if (host, boot) != (socket.gethostname(), _boot_id()):
            return False
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    except (ValueError, OSError):
        return False
    return _started(int(pid)) == started


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _started(pid: int) -> str:
    """When process `pid` started, in clock ticks since boot ("" where /proc does not say, or
    for a zombie: a killed process its parent has not reaped yet)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return "" if fields[0] in "ZX" else fields[19]
    except (OSError, IndexError):
        return ""


def _waited_in(rec: NodeRecord) -> str:
    """The status a record claimed for a resume (round > 0) was claimed from: its outcome says."""
    return "waiting_user" if isinstance(rec.outcome, AskUser) else "waiting_children"


def _spent(rec: NodeRecord) -> NodeRecord:
    """`rec` as a claim hands it on (taken over, handed back): the call its spawn reserved may
    have been made by that claim, so the next one reserves its own. At worst one call counted
    that was never made; never one made that was not counted."""
    unused = rec.committed.llm_calls - rec.usage.llm_calls
    return rec.model_copy(update={"committed": rec.committed - Usage(llm_calls=unused)}) if unused > 0 else rec


def _llm_veto(b: Budgets, counters: Counters, calls: int, tokens: int) -> str | None:
    """Why the next LLM call is refused, if it is: the counters plus the calls and tokens not in them yet."""
    if counters.llm_calls + calls >= b.max_llm_calls:
        return f"budget max_llm_calls={b.max_llm_calls} reached"
    return _tokens_spent(b, counters, tokens)


def _tokens_spent(b: Budgets, counters: Counters, tokens: int) -> str | None:
    """Why max_tokens stops the next call or spawn, if it does: the counters plus the tokens not in them yet."""
    used = counters.prompt_tokens + counters.completion_tokens + tokens
    return f"budget max_tokens={b.max_tokens} reached ({used} used)" if used >= b.max_tokens else None


def _usage_delta(u: Usage) -> dict[str, int]:
    return {"llm_calls": u.llm_calls, "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens}


def check_goal(goal: Any) -> str:
    return check_text(goal, "goal")


def check_text(text: Any, what: str) -> str:
    """A user's text (a goal, an answer): refused before anything is stored if no record could hold it."""
    if not isinstance(text, str) or not text.strip():
        raise SwarmError(f"the {what} is empty")
    try:
        text.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate: valid JSON (\ud800) or undecodable bytes in argv
        raise SwarmError(f"the {what} is not Unicode text: {exc.reason} at character {exc.start}") from None
    if len(text) > MAX_TEXT_CHARS:
        raise SwarmError(f"the {what} is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
    return text


def _order(node_id: str) -> tuple:
    """Tree order: `root.0.10` after `root.0.9`."""
    return tuple(int(p) if p.isdigit() else -1 for p in node_id.split(".")[1:])
