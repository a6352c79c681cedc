"""Storage cost of the engine on every backend, against the same emulators the tests use.

Workload: the engine's fan-out (tests/blueprints/fanout): one manager plans N subtasks,
N leaves run on the local dispatcher (64 threads), the manager resumes once, a
supervisor joins, the manager ends the swarm: N + 2 nodes. The LLM is scripted and
answers at once, so the wall time is the engine plus its storage.

Every call the engine makes goes through a counting Store wrapper: read,
read_versioned, version (also what `exists` costs), list, write, create, swap and
delete, counted separately; `create`/`swap` calls that returned False count too
(a request was made) and again as create_lost / swap_lost. Per node = count / (N + 2).
"retries" are the lost swaps of the swarm's counters object (`_bump` re-reads and tries
again: two calls each), so "base" = total - 2 x retries is what a node costs without
contention. "listed" is the number of keys the list calls returned, per node.

    python benchmarks/storage.py                 # N=200 on all six backends, N=2000 on file, memory, gcs
    python benchmarks/storage.py --quick         # N=20 on all six, N=200 on file and memory
    python benchmarks/storage.py --json          # one JSON object on stdout (progress on stderr)
    python benchmarks/storage.py --backends file s3 --scale-backends file --n 200 --scale-n 2000

Cloud emulators (moto, fake-gcs-server, Azurite, the Firestore emulator) are started
and stopped by tests/emulators.py's functions, once per backend; no pytest involved.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import emulators  # noqa: E402  (tests/emulators.py: start/stop the emulators, fresh locations)
from scripted import default_responder  # noqa: E402  (tests/scripted.py: the scripted LLM)

from benchmarks.counting import CountingStore  # noqa: E402
from swarm_core.config import load_blueprint  # noqa: E402
from swarm_core.engine import Engine, Stores  # noqa: E402
from swarm_core.llm import FunctionTransport  # noqa: E402

FANOUT = REPO / "tests" / "blueprints" / "fanout"
OPS = ("read", "read_versioned", "version", "list", "write", "create", "swap", "delete")
BACKENDS = emulators.BACKENDS


def forget_memory(uri: str) -> None:
    """fsspec's memory filesystem is one dict per process: drop a finished run's objects."""
    import fsspec

    fs, prefix = fsspec.filesystem("memory"), f"/{uri.partition('://')[2]}/"
    for key in [k for k in fs.store if k.startswith(prefix)]:
        fs.store.pop(key, None)
    fs.pseudo_dirs[:] = [d for d in fs.pseudo_dirs if not (d + "/").startswith(prefix)]


def run_fanout(uri: str, n: int) -> dict[str, Any]:
    """One swarm of N + 2 nodes on the store at `uri`; its counts and wall time."""
    bp = load_blueprint(FANOUT)
    bp.stores.state = uri
    counting = CountingStore(Stores.open(bp).state)  # every concern defaults to the state store
    stores = Stores(state=counting, history=counting, actions=counting, memory=counting)
    llm = FunctionTransport(default_responder(subtasks=[f"part {i}" for i in range(n)]))
    engine = Engine(bp, stores=stores, transport=llm)
    t0 = time.perf_counter()
    swarm_id, _ = engine.load_goal("Fan out wide")
    finished = engine.dispatcher.wait(timeout=3600)
    wall = time.perf_counter() - t0
    counts = collections.Counter(counting.counts)  # before the checks below read the store
    engine.dispatcher.close()
    status, nodes = engine.status(swarm_id), n + 2
    if not (finished and status["status"] == "done" and status["nodes"] == nodes and not engine.dispatcher.errors):
        raise RuntimeError(f"{uri}: the swarm did not finish cleanly: finished={finished} status={status['status']} "
                           f"nodes={status['nodes']}/{nodes} errors={engine.dispatcher.errors[:3]}")
    total = sum(counts[op] for op in OPS)
    return {
        "n": n, "nodes": nodes, "wall_s": round(wall, 3), "ms_per_node": round(1000 * wall / nodes, 3),
        "ops": {op: counts[op] for op in OPS}, "total": total,
        "per_node": {**{op: round(counts[op] / nodes, 3) for op in OPS}, "total": round(total / nodes, 3)},
        "create_lost": counts["create_lost"], "swap_lost": counts["swap_lost"],
        "counter_retries": counts["counter_retries"],
        "base_per_node": round((total - 2 * counts["counter_retries"]) / nodes, 3),
        "listed_per_node": round(counts["listed_keys"] / nodes, 1),
    }


class Backend:
    """A backend's emulator (if any) running and its variables set, for the `with` block."""

    def __init__(self, name: str):
        self.name, self.emulator, self.saved = name, None, {}

    def __enter__(self):
        if self.name in emulators.CLOUDS:
            self.emulator = emulators.start_emulator(self.name)
            for var in (*emulators.AMBIENT, *self.emulator.env):
                self.saved[var] = os.environ.pop(var, None)
            os.environ.update(self.emulator.env)
        return self

    def location(self) -> str:
        return emulators.fresh_location(self.name)

    def __exit__(self, *exc) -> None:
        for var, value in self.saved.items():
            os.environ.pop(var, None)
            if value is not None:
                os.environ[var] = value
        if self.emulator is not None:
            emulators.stop_emulator(self.emulator)


def cleanup(uri: str) -> None:
    if uri.startswith("memory://"):
        forget_memory(uri)
    elif uri.startswith("file://"):
        import shutil

        shutil.rmtree(uri.partition("://")[2], ignore_errors=True)


def measure(backends, n: int, scale_backends, scale_n: int, log=print) -> list[dict[str, Any]]:
    rows = []
    for name in backends:
        sizes = [n] + ([scale_n] if name in scale_backends and scale_n else [])
        with Backend(name) as backend:
            for size in sizes:
                uri = backend.location()
                log(f"  {name:9s} N={size:<5d} ...", end="", flush=True)
                try:
                    row = {"backend": name, **run_fanout(uri, size)}
                finally:
                    cleanup(uri)
                log(f" {row['wall_s']:7.2f}s  {row['per_node']['total']:.2f} ops/node")
                rows.append(row)
    return rows


def render(report: dict[str, Any]) -> str:
    cfg, rows = report["config"], report["results"]
    cols = ("read_versioned", "read", "version", "list", "create", "swap", "write", "delete")
    short = {"read_versioned": "rd_ver", "read": "read", "version": "ver", "list": "list", "create": "create",
             "swap": "swap", "write": "write", "delete": "del"}
    out = [(f"Storage operations per node, fan-out swarm of N leaves (+2 nodes), local dispatcher "
            f"({cfg['concurrency']} threads), scripted LLM, emulators on 127.0.0.1"),
           f"python {cfg['python']}, {cfg['cpus']} CPUs, {cfg['benchmark_s']}s in all", ""]
    head = (f"{'backend':10s} {'N':>5s} " + " ".join(f"{short[c]:>6s}" for c in cols)
            + f" {'total':>6s} {'retry':>6s} {'base':>6s} {'listed':>7s} {'ms/node':>8s} {'wall':>8s}")
    out += [head, "-" * len(head)]
    for r in rows:
        p = r["per_node"]
        retries = r["counter_retries"] / r["nodes"]
        out.append(f"{r['backend']:10s} {r['n']:5d} " + " ".join(f"{p[c]:6.2f}" for c in cols)
                   + f" {p['total']:6.2f} {retries:6.2f} {r['base_per_node']:6.2f} {r['listed_per_node']:7.1f}"
                   + f" {r['ms_per_node']:8.2f}"
                   + f" {r['wall_s']:7.2f}s")
    out += ["", ("Calls per node through the Store interface. retry = lost compare-and-swaps of the swarm's "
                 "counters (each also costs a re-read);"),
            "base = total - 2 x retry, the cost without contention; listed = keys returned by list calls, per node."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=20 on every backend, N=200 on file and memory")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--backends", nargs="+", choices=BACKENDS, help="backends at N (default: all six)")
    ap.add_argument("--scale-backends", nargs="*", choices=BACKENDS, help="backends also run at --scale-n")
    ap.add_argument("--n", type=int, help="leaves of the swarm (default 200; --quick 20)")
    ap.add_argument("--scale-n", type=int, help="the larger swarm (default 2000; --quick 200)")
    args = ap.parse_args(argv)
    n = args.n or (20 if args.quick else 200)
    scale_n = args.scale_n if args.scale_n is not None else (200 if args.quick else 2000)
    scale = args.scale_backends if args.scale_backends is not None else (
        ["file", "memory"] if args.quick else ["file", "memory", "gcs"])
    backends = args.backends or BACKENDS
    log = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if args.json else print
    t0 = time.perf_counter()
    log(f"fan-out N={n} on {', '.join(backends)}; N={scale_n} on {', '.join(scale) or 'none'}")
    try:
        rows = measure(backends, n, scale, scale_n, log=log)
    except emulators.EmulatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = {
        "config": {"n": n, "scale_n": scale_n, "backends": backends, "scale_backends": scale,
                   "concurrency": load_blueprint(FANOUT).dispatcher.concurrency, "quick": args.quick,
                   "python": platform.python_version(), "cpus": os.cpu_count(),
                   "benchmark_s": round(time.perf_counter() - t0, 1)},
        "results": rows,
    }
    print(json.dumps(report, indent=1) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
