"""The nouns of a swarm: ids, node blueprints and records, outcomes, events, usage, budgets.

A node blueprint is the only payload that moves between invocations (beside the
swarm id); everything else is read from storage.
"""

from __future__ import annotations

import os
import re
import time
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

_B32 = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lowercase
SWARM_ID = re.compile(r"sw_[0-9abcdefghjkmnpqrstvwxyz]{26}")  # fullmatch: `$` would let a final "\n" by
NODE_ID = re.compile(r"[a-z][a-z0-9]*(\.[a-z0-9]+){0,64}")
ROOT_ID = "root"

NodeStatus = Literal["pending", "running", "waiting_children", "waiting_user", "done", "failed", "cancelled"]
TERMINAL = ("done", "failed", "cancelled")
SwarmStatus = Literal["running", "waiting_user", "done", "failed"]


class InvalidId(ValueError):
    """An id that is not of the expected form (also what path traversal attempts hit)."""


def new_swarm_id() -> str:
    """`sw_` + 10 chars of millisecond time + 16 random chars: sortable by creation time."""
    n = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_B32[n & 31])
        n >>= 5
    return "sw_" + "".join(reversed(chars))


def check_swarm_id(value: str) -> str:
    if not isinstance(value, str) or not SWARM_ID.fullmatch(value):
        raise InvalidId(f"invalid swarm id {str(value)[:80]!r}: expected 'sw_' + 26 lowercase base32 chars")
    return value


def check_node_id(value: str) -> str:
    if not isinstance(value, str) or not NODE_ID.fullmatch(value):
        raise InvalidId(f"invalid node id {str(value)[:80]!r}: expected e.g. 'root' or 'root.0.2'")
    return value


def child_id(parent_id: str, round: int, index: int) -> str:
    """Children are named by parent, parent round and position: re-running a spawn names them again."""
    return f"{parent_id}.{round}.{index}"


_SECOND: tuple[int, str] = (0, "")  # the last whole second formatted: one tuple, swapped atomically


def now() -> str:
    """UTC, ISO 8601 to the millisecond: `2026-12-03T07:51:42.207+00:00`. A node stamps several
    records; formatting the second once per second costs a third of `datetime.isoformat`."""
    global _SECOND
    t = time.time()
    second = int(t)
    cached = _SECOND
    if cached[0] != second:
        cached = _SECOND = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{int((t - second) * 1000):03d}+00:00"


def first_error(exc: ValidationError) -> str:
    """A validation error in one line: its first problem, and where (`budgets.max_nodes: ...`)."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return f"{where}: {first['msg']}"


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Usage(Model):
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            llm_calls=self.llm_calls + other.llm_calls,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            seconds=round(self.seconds + other.seconds, 6),
        )

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            llm_calls=self.llm_calls - other.llm_calls,
            prompt_tokens=self.prompt_tokens - other.prompt_tokens,
            completion_tokens=self.completion_tokens - other.completion_tokens,
            seconds=round(self.seconds - other.seconds, 6),
        )

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Budgets(Model):
    """Hard limits for one swarm; checked before every spawn and every LLM call."""

    max_nodes: int = Field(200, ge=1)
    # A level of the tree adds up to 4 segments to a node id (a plan's child, and the router's
    # child beside it): 16 levels stay within the 64 segments an id may have (NODE_ID).
    max_depth: int = Field(4, ge=1, le=16)
    max_rounds: int = Field(3, ge=1)
    max_llm_calls: int = Field(400, ge=1)
    max_tokens: int = Field(2_000_000, ge=1)


class NodeBlueprint(Model):
    """What an invocation receives: enough to find everything else in storage.

    `round` counts the node's invocations: 0 for its first run, +1 each time it is
    resumed after its children (or the user) answered.
    """

    node_id: str
    parent_id: str | None = None
    action: str
    input: dict[str, Any] = Field(default_factory=dict)
    depth: int = Field(0, ge=0)
    round: int = Field(0, ge=0)

    def model_post_init(self, _: Any) -> None:
        check_node_id(self.node_id)
        if self.parent_id is not None:
            check_node_id(self.parent_id)


class Result(Model):
    kind: Literal["result"] = "result"
    report: str
    data: dict[str, Any] | None = None


class Spawn(Model):
    kind: Literal["spawn"] = "spawn"
    children: list[NodeBlueprint] = Field(min_length=1)
    mode: Literal["parallel", "sequential"] = "parallel"


class AskUser(Model):
    kind: Literal["ask_user"] = "ask_user"
    question: str


class Fail(Model):
    kind: Literal["fail"] = "fail"
    error: str


Outcome = Annotated[Union[Result, Spawn, AskUser, Fail], Field(discriminator="kind")]


class JoinSlot(Model):
    """Where a child reports when it terminates: its parent's join group for one round."""

    parent_id: str
    round: int
    index: int
    size: int
    mode: Literal["parallel", "sequential"] = "parallel"


class ChildReport(Model):
    """What a terminated child leaves in its parent's join group."""

    node_id: str
    action: str
    status: Literal["done", "failed", "cancelled"]
    report: str = ""
    data: dict[str, Any] | None = None
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)  # the child's usage not yet in the swarm's counters


class NodeRecord(Model):
    blueprint: NodeBlueprint
    status: NodeStatus = "pending"
    join: JoinSlot | None = None
    outcome: Outcome | None = None
    children: list[str] = Field(default_factory=list)
    report: str | None = None
    data: dict[str, Any] | None = None
    error: str | None = None
    question: str | None = None
    answer: str | None = None
    memo: dict[str, Any] = Field(default_factory=dict)  # an action's own state across its rounds
    usage: Usage = Field(default_factory=Usage)
    committed: Usage = Field(default_factory=Usage)  # the part of `usage` already in the swarm's counters
    attempt: int = 0
    lease_until: float | None = None
    worker: str | None = None  # the process that made the last claim (see `engine.this_worker`)
    created_at: str = Field(default_factory=now)
    updated_at: str = Field(default_factory=now)

    @property
    def node_id(self) -> str:
        return self.blueprint.node_id


class SwarmHeader(Model):
    swarm_id: str
    goal: str
    status: SwarmStatus = "running"
    root_node_id: str = ROOT_ID
    report: str | None = None
    error: str | None = None
    budgets: Budgets = Field(default_factory=Budgets)
    blueprint: dict[str, Any] = Field(default_factory=dict)
    llm_source: str = ""
    replay_of: str | None = None
    created_at: str = Field(default_factory=now)
    finished_at: str | None = None


class Counters(Model):
    """Swarm-wide totals the budgets are checked against (one object, updated by compare-and-swap)."""

    nodes: int = 0
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    joins: list[str] = Field(default_factory=list)  # "<parent>/<round>": joins whose reports are counted
    # "<node>/<round>": [attempt, children] of the spawn counted for that round, until its join is
    spawns: dict[str, list[int]] = Field(default_factory=dict)


class LLMCall(Model):
    """One request/response pair, kept in history so a swarm can be replayed offline."""

    seq: int
    schema_name: str
    messages: list[dict[str, Any]]
    response: str | None
    error: str | None = None
    refusal: str | None = None  # the model's refusal instead of an answer (replay gives it back)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


EventKind = Literal["created", "outcome", "superseded", "terminated", "resumed", "answered", "swarm_done", "error"]


class Event(Model):
    kind: EventKind
    node_id: str
    round: int = 0
    at: str = Field(default_factory=now)
    data: dict[str, Any] = Field(default_factory=dict)
    llm_calls: list[LLMCall] = Field(default_factory=list)
