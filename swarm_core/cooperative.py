"""Nodes as greenlets on one asyncio loop: a node waiting for something holds no thread.

The `greenlets` runner of the local dispatcher (`dispatch.CooperativeDispatcher`) runs each
node's engine code, unchanged and synchronous, in a greenlet on the loop's thread. Where that
code would wait, it calls one of the helpers below: inside a node greenlet they switch to the
loop until the wait is over, so other nodes run meanwhile; anywhere else (the `threads`
runner, the CLI's main thread, a pool thread) they wait the ordinary way. This module is the
only one that knows about greenlets.

Every node shares the loop's thread, so a call that blocks it stalls them all: blocking I/O
goes through `blocking` (or `awaiting`, when an async twin exists), waits through `sleep`,
and no `threading.Lock` may be held across either (another node on the same thread would
wait for it forever).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Executor
from typing import Any, TypeVar

from greenlet import getcurrent, greenlet

T = TypeVar("T")
log = logging.getLogger("swarm")


class _Node(greenlet):
    """One node's greenlet; its parent is the loop's own greenlet, `executor` runs its blocking calls."""

    def __init__(self, run: Callable[..., Any], executor: Executor):
        super().__init__(run)
        self.executor = executor


_LOOP_THREADS: set[int] = set()  # threads running a node loop (`run_loop`): the only ones that touch greenlet


def run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Run `loop` on this thread until it stops, as a node loop. Only on such threads do the
    helpers below ask greenlet where they are: other threads (a pool, the CLI, the threads
    runner) never get greenlet's per-thread state, so nothing of greenlet's is left to tear down
    when they end."""
    me = threading.get_ident()
    _LOOP_THREADS.add(me)
    try:
        loop.run_forever()
    finally:
        _LOOP_THREADS.discard(me)


def _current() -> _Node | None:
    """The node greenlet this code runs in, if any."""
    if threading.get_ident() not in _LOOP_THREADS:
        return None
    node = getcurrent()
    return node if type(node) is _Node else None


def suspend(awaitable: Awaitable[T]) -> T:
    """From inside a node greenlet: let the loop await `awaitable`, then return its result or
    raise its exception here. Other nodes run in the meantime."""
    node = _current()
    if node is None:
        raise RuntimeError("cooperative.suspend called outside a node greenlet: there is no loop to switch to")
    return node.parent.switch(awaitable)


def blocking(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)`, which may block: inside a node greenlet it runs on the dispatcher's
    thread pool while the node is suspended; anywhere else it is simply called."""
    node = _current()
    if node is None:  # a set lookup, and on a loop's thread one C call: this is on every node's path
        return fn(*args, **kwargs)
    future = asyncio.get_running_loop().run_in_executor(node.executor, _outcome, functools.partial(fn, *args, **kwargs))
    value, error = node.parent.switch(future)
    if error is not None:  # raised here, not through the future: asyncio would hang on a StopIteration
        raise error
    return value


def _outcome(call: Callable[[], T]) -> tuple[T | None, BaseException | None]:
    try:
        return call(), None
    except BaseException as exc:  # noqa: BLE001 - handed to the node as it is, traceback and all
        return None, exc


def awaiting(coroutine: Callable[[], Awaitable[T]], fallback: Callable[[], T]) -> T:
    """Inside a node greenlet, await `coroutine()` on the loop (no thread waits for it);
    anywhere else, call `fallback()`, its blocking twin."""
    node = _current()
    if node is None:
        return fallback()
    return node.parent.switch(coroutine())


def sleep(seconds: float) -> None:
    """`asyncio.sleep` inside a node greenlet (no thread waits), `time.sleep` anywhere else."""
    node = _current()
    if node is None:
        time.sleep(seconds)
    else:
        node.parent.switch(asyncio.sleep(seconds))


def per_loop(key: Hashable, make: Callable[[], Any]) -> Any:
    """The running loop's own `make()` for `key`, made once: an object bound to the loop it first
    ran on (an httpx async client). `close_per_loop` closes them with the loop."""
    objects = _PER_LOOP.setdefault(asyncio.get_running_loop(), {})
    if key not in objects:
        objects[key] = make()
    return objects[key]


async def close_per_loop() -> None:
    """Close (`await obj.close()`) what `per_loop` made for the running loop: their open
    connections would otherwise keep the loop, and their sockets, alive."""
    for obj in _PER_LOOP.pop(asyncio.get_running_loop(), {}).values():
        await obj.close()


_PER_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, Any]] = weakref.WeakKeyDictionary()


HOLD_WARNING_S = 1.0  # a node that keeps the loop this long without suspending is named in a warning


async def run_node(run: Callable[..., Any], *args: Any, executor: Executor, label: str = "") -> None:
    """Run `run(*args)` in a new node greenlet until it returns, awaiting on its behalf whatever
    it suspends on. What `run` raises is raised here; `run` should catch what it can. A stretch
    of `HOLD_WARNING_S` or more without suspending stalled every other node: it is logged,
    naming `label`, since the usual cause is a blocking call made without `blocking`."""
    node = _Node(run, executor)
    started = time.monotonic()
    awaited = node.switch(*args)
    while True:
        if (held := time.monotonic() - started) >= HOLD_WARNING_S:
            log.warning("%s kept the greenlet runner's loop for %.1f s without yielding: every other node waited. "
                        "A blocking call? Make it through swarm_core.cooperative.blocking, or use runner = \"threads\"", label, held)
        if node.dead:
            return
        try:
            result = await awaited
        except BaseException as exc:  # noqa: BLE001 - cancellation too: raised where the node suspended
            started = time.monotonic()
            awaited = node.throw(type(exc), exc, exc.__traceback__)  # the frames where it was raised, kept
        else:
            started = time.monotonic()
            awaited = node.switch(result)
