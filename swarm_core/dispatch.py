"""Dispatchers deliver `(swarm_id, node blueprint)` to an `execute_node` somewhere.

Delivery is at-least-once everywhere, so the engine makes execution idempotent; a
dispatcher only has to get the blueprint there. `local` runs nodes in this process, a
thread per node (`threads`) or a greenlet per node on one asyncio loop (`greenlets`); the
cloud dispatchers live in `swarm_core.dispatchers` (lazy SDKs).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

from . import cooperative
from .models import NodeBlueprint

if TYPE_CHECKING:
    from .config import DispatcherSettings
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
        self._start(swarm_id, blueprint)

    def _start(self, swarm_id: str, blueprint: NodeBlueprint) -> None:
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
        # The node's record keeps its state; `swarm resume` retries it. BaseException too: a
        # handler's SystemExit must not end the worker (on greenlets, the loop every node runs on).
        except BaseException as exc:  # noqa: BLE001
            msg = f"{swarm_id} {blueprint.node_id}: {type(exc).__name__}: {exc}"
            self.errors.append(msg)
            log.error("execute_node failed: %s\n%s", msg, traceback.format_exc(limit=4))
        finally:
            self._finished()


class CooperativeDispatcher(LocalDispatcher):
    """The `greenlets` runner: every node is a greenlet on one asyncio loop, run on its own
    daemon thread started at the first dispatch (see `swarm_core.cooperative`). A node waiting
    for its LLM call holds no thread, and nodes never hand the GIL to each other at a system
    call. At most `concurrency` nodes run at once; the blocking calls they make through
    `cooperative.blocking` (cloud stores, the sandbox) run on the pool; the OpenAI request is
    awaited on the loop (`cooperative.awaiting`)."""

    def __init__(self, concurrency: int, name: str = "swarm-node"):
        super().__init__(concurrency, name)
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._loop_lock = threading.Lock()
        self._tasks: set[asyncio.Task] = set()  # the loop keeps only weak references to its tasks
        self._running = 0

    def _start(self, swarm_id: str, blueprint: NodeBlueprint) -> None:
        loop = self._loop or self._start_loop()
        if threading.current_thread() is self._loop_thread:  # a node spawning or resuming another
            self._spawn(swarm_id, blueprint)
            return
        try:
            loop.call_soon_threadsafe(self._spawn, swarm_id, blueprint)
        except RuntimeError:  # close() stopped the loop meanwhile
            self._finished()

    def _start_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._loop_thread = threading.Thread(target=cooperative.run_loop, args=(loop,), name="swarm-loop", daemon=True)
                self._loop_thread.start()
                self._loop = loop
            return self._loop

    def _spawn(self, swarm_id: str, blueprint: NodeBlueprint) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._node(swarm_id, blueprint))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _node(self, swarm_id: str, blueprint: NodeBlueprint) -> None:
        async with self._slots:
            with self._idle:  # stop() reads `stopped` and `_running` under the same lock
                start = not self.stopped
                self._running += start
            if not start:  # queued when stop() came: dropped, like LocalDispatcher's queued futures
                self._finished()
                return
            try:
                await cooperative.run_node(self._run, swarm_id, blueprint, executor=self._pool, label=f"{swarm_id} {blueprint.node_id}")
            finally:
                with self._idle:
                    self._running -= 1

    def stop(self) -> int:
        """As `LocalDispatcher.stop`; the pool stays up, since running nodes make their blocking calls on it."""
        with self._idle:
            self.stopped = True
            return self._running

    def close(self) -> None:
        """Wait for the nodes in flight, then stop the loop and the pool; later dispatches are ignored."""
        self.wait()
        self.stopped = True
        with self._loop_lock:
            loop, thread, self._loop = self._loop, self._loop_thread, None
        if loop is not None and thread is not None:
            asyncio.run_coroutine_threadsafe(cooperative.close_per_loop(), loop).result()  # the loop's HTTP clients
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
        super().close()


def local_dispatcher(settings: DispatcherSettings) -> LocalDispatcher:
    """The `local` kind's dispatcher for `[dispatcher] runner`."""
    runner = CooperativeDispatcher if settings.runner == "greenlets" else LocalDispatcher
    return runner(settings.concurrency)
