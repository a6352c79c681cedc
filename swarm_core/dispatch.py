"""Dispatchers deliver `(swarm_id, node blueprint)` to an `execute_node` somewhere.

Delivery is at-least-once everywhere, so the engine makes execution idempotent; a
dispatcher only has to get the blueprint there. `local` runs nodes on a thread pool
in this process; the cloud dispatchers live in `swarm_core.dispatchers` (lazy SDKs).
"""

from __future__ import annotations

import logging
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

from .models import NodeBlueprint

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("swarm")


class Dispatcher(Protocol):
    def bind(self, engine: Engine) -> None: ...

    def dispatch(self, swarm_id: str, blueprint: NodeBlueprint) -> None: ...


class PooledDispatcher:
    """A thread pool that counts what is in flight, so a caller can wait until it is idle."""

    def __init__(self, concurrency: int, name: str = "swarm-node"):
        self.concurrency = concurrency
        self._pool = ThreadPoolExecutor(max(1, concurrency), thread_name_prefix=name)
        self._outstanding = 0
        self._idle = threading.Condition()
        self.errors: list[str] = []
        self.engine: Engine | None = None

    def bind(self, engine: Engine) -> None:
        self.engine = engine

    def _started(self) -> None:
        with self._idle:
            self._outstanding += 1

    def _finished(self) -> None:
        with self._idle:
            self._outstanding -= 1
            if not self._outstanding:
                self._idle.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._outstanding, timeout)

    @property
    def busy(self) -> bool:
        return self._outstanding > 0

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class LocalDispatcher(PooledDispatcher):
    """Runs every dispatched node on a thread pool: siblings really run at once, up to
    `concurrency`, and no subtree waits for an unrelated one."""

    def __init__(self, concurrency: int, name: str = "swarm-node"):
        super().__init__(concurrency, name)
        self.stopped = False

    def dispatch(self, swarm_id: str, blueprint: NodeBlueprint) -> None:
        if self.stopped:
            log.info("not starting %s %s round %d: stopping (swarm resume delivers it)", swarm_id, blueprint.node_id, blueprint.round)
            return
        self._started()
        try:
            future = self._pool.submit(self._run, swarm_id, blueprint)
        except RuntimeError:  # stop() shut the pool down meanwhile
            self._finished()
            return
        future.add_done_callback(self._dropped)

    def _dropped(self, future) -> None:
        if future.cancelled():  # queued when stop() came: never ran, so never finished
            self._finished()

    def stop(self) -> int:
        """Start nothing more. Queued nodes are dropped and later dispatches ignored: their
        records stay where they are (pending, or a claimed join), as after a crash, so
        `swarm resume` delivers them. Running nodes finish their step; `wait()` waits for them.
        Returns how many are running."""
        self.stopped = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._idle:
            return self._outstanding

    def _run(self, swarm_id: str, blueprint: NodeBlueprint) -> None:
        try:
            assert self.engine is not None, "dispatcher not bound to an engine"
            self.engine.execute_node(swarm_id, blueprint)
        except Exception as exc:  # the node's record keeps its state; `swarm resume` retries it
            msg = f"{swarm_id} {blueprint.node_id}: {type(exc).__name__}: {exc}"
            self.errors.append(msg)
            log.error("execute_node failed: %s\n%s", msg, traceback.format_exc(limit=4))
        finally:
            self._finished()
