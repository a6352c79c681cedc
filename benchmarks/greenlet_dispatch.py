"""Design probe: what a dispatcher that holds no thread while an LLM call is pending buys.

The local dispatcher runs each node on its own thread (concurrency = N), and a thread
waits out the node's LLM call. Here the same Engine, unchanged, runs every node in a
greenlet on one asyncio loop; the scripted LLM's wait is an `asyncio.sleep` the greenlet
switches out of, so a thousand pending calls hold no thread. Both dispatchers run the
fan-out workload of `fanout.py` in this process, alternately, median of `--repeats`.

This is a measurement, not a shipped dispatcher: a real one would also have to keep
every other blocking call (HTTP to the model, cloud stores, the sandbox's subprocesses,
retry back-off) off the loop, or one such call stalls every node.

    pip install greenlet
    python benchmarks/greenlet_dispatch.py [--n 1000] [--latency 0.05] [--repeats 3] [--store memory|file]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fanout import StoreLocation, make_swarm_engine  # also puts the repo on sys.path

from swarm_core.llm import FunctionTransport

try:
    import greenlet
except ImportError:
    sys.exit("this probe needs greenlet: pip install greenlet")


def suspend(awaitable):
    """From inside a node's greenlet: let the loop await `awaitable`, resume with its result."""
    return greenlet.getcurrent().parent.switch(awaitable)


class SleepingTransport(FunctionTransport):
    """The scripted LLM of fanout.py, waiting with asyncio.sleep instead of time.sleep."""

    def __init__(self, fn, delay_s: float = 0.0):
        super().__init__(fn)  # no blocking sleep in FunctionTransport.complete
        self.wait_s = delay_s

    def complete(self, messages, schema_name, schema, key, **kw):
        if self.wait_s:
            suspend(asyncio.sleep(self.wait_s))
        return super().complete(messages, schema_name, schema, key, **kw)


class GreenletDispatcher:
    """Dispatcher protocol: every node is a task on the running loop, its engine code a greenlet."""

    def __init__(self) -> None:
        self.pending = 0
        self.errors: list[str] = []
        self.idle = asyncio.Event()

    def bind(self, engine) -> None:
        self.engine = engine

    def dispatch(self, swarm_id, blueprint) -> None:
        self.pending += 1
        asyncio.get_running_loop().create_task(self._run(swarm_id, blueprint))

    async def _run(self, swarm_id, blueprint) -> None:
        node = greenlet.greenlet(self.engine.execute_node)
        try:
            awaited = node.switch(swarm_id, blueprint)
            while not node.dead:
                try:
                    result = await awaited
                except Exception as exc:
                    awaited = node.throw(exc)
                else:
                    awaited = node.switch(result)
        except Exception as exc:
            self.errors.append(f"{blueprint.node_id}: {type(exc).__name__}: {exc}")
        self.pending -= 1
        if not self.pending:
            self.idle.set()


def _check(engine, swarm_id, n, errors) -> None:
    status = engine.status(swarm_id)
    if status["status"] != "done" or status["nodes"] != n + 2 or errors:
        raise RuntimeError(f"run did not finish cleanly: {status['status']}, {status['nodes']}/{n + 2} nodes, {errors[:3]}")


def run_greenlet(store: str, n: int, latency: float) -> float:
    async def go() -> float:
        loc = StoreLocation(store)
        try:
            dispatcher = GreenletDispatcher()
            engine, _ = make_swarm_engine(loc.uri, n, latency, dispatcher=dispatcher, count=False,
                                          transport_cls=SleepingTransport)
            gc.collect()
            t0 = time.perf_counter()
            swarm_id, _ = engine.load_goal("Fan out wide")
            await dispatcher.idle.wait()
            wall = time.perf_counter() - t0
            _check(engine, swarm_id, n, dispatcher.errors)
            return wall
        finally:
            loc.cleanup()

    return asyncio.run(go())


def run_threads(store: str, n: int, latency: float) -> float:
    loc = StoreLocation(store)
    try:
        engine, _ = make_swarm_engine(loc.uri, n, latency, count=False)
        gc.collect()
        t0 = time.perf_counter()
        swarm_id, _ = engine.load_goal("Fan out wide")
        engine.dispatcher.wait(timeout=600)
        wall = time.perf_counter() - t0
        engine.dispatcher.close()
        _check(engine, swarm_id, n, engine.dispatcher.errors)
        return wall
    finally:
        loc.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--store", choices=("memory", "file"), default="memory")
    args = ap.parse_args()
    runners = {"threads (LocalDispatcher)": run_threads, "greenlets on one loop": run_greenlet}
    walls: dict[str, dict[float, list[float]]] = {k: {0.0: [], args.latency: []} for k in runners}
    for _ in range(args.repeats):
        for lat in (0.0, args.latency):
            for name, run in runners.items():
                walls[name][lat].append(run(args.store, args.n, lat))
    print(f"swarm {args.store}://, N={args.n}, median of {args.repeats}")
    print(f"{'dispatcher':28s} {'ms/node L=0':>12s} {f'wall L={args.latency:g}':>12s} {'efficiency':>11s}")
    for name in runners:
        idle, busy = (statistics.median(walls[name][lat]) for lat in (0.0, args.latency))
        print(f"{name:28s} {1000 * idle / (args.n + 2):12.3f} {busy:11.3f}s {3 * args.latency / busy:11.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
