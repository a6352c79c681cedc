"""Sandbox latency: what one function call and one test run of generated code cost.

    python benchmarks/sandbox.py [--repeats 7]

Each measurement starts real sandboxed interpreters (as the factory and `swarm fn` do):
  - call_function: one call of a small function (a fresh sandboxed process);
  - run_tests: ten test cases of the same function (one process, each case isolated).
Prints best and median over `--repeats` runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from swarm_core.sandbox import TestCase, call_function, run_tests

CODE = "def divide(a: float, b: float) -> float:\n    return a / b\n"


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm the page cache
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    cases = [TestCase(name=f"case {i}", args={"a": i, "b": 1}, expected=i) for i in range(10)]

    def one_call():
        result = call_function(CODE, "divide", {"a": 6, "b": 3})
        assert result.error is None and result.value == 2, result

    def ten_cases():
        report = run_tests(CODE, "divide", cases)
        assert report.ok, report

    print(f"sandbox latency, {os.cpu_count()} CPUs, uid {os.geteuid()} ({'namespaces and uid drop' if os.geteuid() == 0 else 'unprivileged'}), "
          f"load {os.getloadavg()[0]:.2f}, {args.repeats} runs after a warm-up")
    for name, fn in (("call_function, 1 call", one_call), ("run_tests, 10 cases", ten_cases)):
        t = timed(fn, args.repeats)
        print(f"  {name:24s} best {min(t) * 1000:6.0f} ms   median {statistics.median(t) * 1000:6.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
