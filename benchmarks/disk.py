"""What a file:// node asks of the file system, without the engine: 3 new files and 2 files
replaced by rename, as `backends/local.py` writes them (a node's record, its event and its join
marker; its claim and its final record). Prints ms per node for each block of nodes, once with
the 2 replacements and once with 2 more creations instead, so the cost of deleting inodes shows.

On ext4 without a journal, an inode deleted in the last seconds to minutes is skipped by every
later allocation in its group (benchmarks/README.md, "On this VM's disk"): the replacements
slow the creations down.

    python benchmarks/disk.py [--dir DIR] [--nodes 3000] [--block 500] [--pause 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

DATA = b"x" * 700  # about a node record


def _new(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, DATA)
    finally:
        os.close(fd)


def run(folder: str, nodes: int, replace: bool) -> list[float]:
    """Seconds per node, node by node."""
    for sub in ("nodes", "events", "joins"):
        os.makedirs(os.path.join(folder, sub))
    times = []
    for i in range(nodes):
        record = os.path.join(folder, "nodes", f"n{i}.json")
        t = time.perf_counter()
        _new(record)
        _new(os.path.join(folder, "events", f"e{i}.json"))
        _new(os.path.join(folder, "joins", f"m{i}"))
        for k in range(2):
            if replace:  # write aside, rename over: the old inode is deleted
                _new(f"{record}~tmp")
                os.replace(f"{record}~tmp", record)
            else:
                _new(f"{record}.{k}")
        times.append(time.perf_counter() - t)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where to write (default: the temp dir)")
    ap.add_argument("--nodes", type=int, default=3000)
    ap.add_argument("--block", type=int, default=500)
    ap.add_argument("--pause", type=float, default=30, help="seconds of quiet before each run")
    args = ap.parse_args()
    print(f"{args.nodes} nodes in {args.dir}; ms per node, per block of {args.block}")
    for replace in (False, True):
        time.sleep(args.pause)
        folder = tempfile.mkdtemp(prefix="swarm-disk-", dir=args.dir)
        try:
            times = run(folder, args.nodes, replace)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        blocks = [sum(times[a : a + args.block]) / len(times[a : a + args.block]) * 1e3 for a in range(0, len(times), args.block)]
        label = "3 creations + 2 replacements" if replace else "5 creations"
        print(f"{label:30s} " + " ".join(f"{b:6.3f}" for b in blocks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
