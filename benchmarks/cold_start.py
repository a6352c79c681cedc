"""Cold start of the functions: how long a fresh interpreter takes to `import functions.main`
(what a new instance pays before its first request), median of N timed subprocesses, next
to a bare interpreter's start for reference. Also lists any cloud SDK the import pulled in.

    python benchmarks/cold_start.py [-n 15] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SDKS = ("openai", "httpx", "grpc", "boto3", "botocore", "gcsfs", "adlfs", "azure.", "google.cloud.", "google.api_core")
FRAMEWORK = ("google.cloud.functions",)  # functions-framework's own shim, not a cloud SDK
TARGET_MS = 300


def timed(code: str, n: int) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONPROFILE")}
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env, stdin=subprocess.DEVNULL)
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=15, help="runs per measurement (default 15)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    timed("import functions.main", 2)  # warm the OS file cache and the .pyc files
    bare = timed("pass", args.n)
    cold = timed("import functions.main", args.n)
    probe = "import sys, functions.main; print(' '.join(m for m in sys.modules if m.startswith(%r) and not m.startswith(%r)))" % (SDKS, FRAMEWORK)
    sdks = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True).stdout.split()
    result = {
        "import_functions_main_ms": round(statistics.median(cold), 1),
        "bare_interpreter_ms": round(statistics.median(bare), 1),
        "min_ms": round(min(cold), 1),
        "max_ms": round(max(cold), 1),
        "runs": args.n,
        "target_ms": TARGET_MS,
        "cloud_sdks_imported": sdks,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"import functions.main: median {result['import_functions_main_ms']} ms over {args.n} fresh interpreters "
            f"(min {result['min_ms']}, max {result['max_ms']}; a bare interpreter: {result['bare_interpreter_ms']} ms; "
            f"target ≤ {TARGET_MS} ms); cloud SDKs imported: {', '.join(sdks) or 'none'}"
        )
    return 0 if result["import_functions_main_ms"] <= TARGET_MS and not sdks else 1


if __name__ == "__main__":
    sys.exit(main())
