"""Function-factory benchmark: one-shot code vs the full factory, judged by reference tests
the model never sees (benchmarks/functions/tasks.py).

    python -m benchmarks.functions.run --quick          # scripted model: checks the pipeline (CI)
    python -m benchmarks.functions.run --smollm2        # SmolLM2-135M served by llama-cpp-python on loopback
                                                        # (its settings: mode json_object_schema, code_answer text)
    python -m benchmarks.functions.run --base-url URL --model NAME [--mode json_schema]   # any OpenAI-compatible server
    options: --limit N (first N tasks), --tasks ID,ID, --repeat R, --json (one object on stdout),
    --samples N, --code-answer json|text, --max-repairs N (the factory's settings),
    --out FILE (rewritten after every task, so a run that dies keeps its rows)

Each task runs `create_function(description)` once. (a) one-shot = the code its first call
wrote (step 1 alone); (b) factory = the code it ends with, after generated tests and up to
`max_repairs` repairs. Both are judged by the task's reference tests in the sandbox; the pair
shares step 1, so (b) - (a) measures what generated tests + repair add. A task counts as
passed when every reference test passes; the per-case rate is reported too.

With --quick the "model" is a script: step 1 writes the reference solution for even tasks and a
stub that raises for odd ones, a smoke test catches the stub, the fresh drafts are the stub
again, and one repair writes the solution.
Expected: (a) 50 %, (b) 100 % — the reference tests pass on every reference solution.
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.functions.tasks import TASKS  # noqa: E402
from swarm_core.actions import ActionSpace  # noqa: E402
from swarm_core.config import SwarmBlueprint, load_blueprint  # noqa: E402
from swarm_core.factory import create_function  # noqa: E402
from swarm_core.llm import FunctionTransport, LLMError, LLMSession, OpenAITransport, Transport  # noqa: E402
from swarm_core.sandbox import Limits, TestCase, run_tests  # noqa: E402
from swarm_core.space import SpaceStore  # noqa: E402
from swarm_core.store import open_store  # noqa: E402


def reference_score(code: str, task: dict, entry: str | None = None) -> tuple[int, int]:
    """(reference cases passed, total) for `code`: its function is called with positional args,
    so the model's parameter names do not matter; the name is the task's, else `entry`."""
    total = len(task["reference"])
    try:
        defined = [n.name for n in ast.parse(code).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    except SyntaxError:
        return 0, total
    name = task["id"] if task["id"] in defined else entry if entry in defined else (defined[-1] if defined else None)
    if name is None:
        return 0, total
    wrapped = f"{code}\n\ndef _reference_call(args):\n    return {name}(*args)\n"
    cases = []
    for i, (args, expected) in enumerate(task["reference"]):
        cases.append(TestCase(name=f"ref {i}", args={"args": args}, expected=expected, assertion="result is None" if expected is None else None))
    report = run_tests(wrapped, "_reference_call", cases, limits=Limits(wall_s=20), case_timeout_s=2)
    return report.passed, total


def scripted_model(tasks: list[dict]) -> Any:
    """The --quick model: right first time on even tasks, a raising stub on odd ones, repaired once."""
    index = {t["id"]: i for i, t in enumerate(tasks)}

    def task_in(text: str) -> dict:
        for t in tasks:
            if t["description"] in text or f"def {t['id']}(" in text:
                return t
        raise AssertionError(f"no task in prompt: {text[:200]}")

    def respond(messages, schema_name, schema, key):
        task = task_in(messages[-1]["content"])
        fn = next(n for n in ast.parse(task["solution"]).body if isinstance(n, ast.FunctionDef))
        params = [a.arg for a in fn.args.args]
        if schema_name == "write_code":
            if index[task["id"]] % 2:
                return {"code": f"def {task['id']}({', '.join(params)}):\n    raise NotImplementedError('not written yet')\n"}
            return {"code": task["solution"]}
        if schema_name == "repair_code":
            return {"code": task["solution"]}
        if schema_name == "extract_spec":
            return {"name": task["id"], "description": task["description"][:300], "args": {p: "any" for p in params}, "returns": "any"}
        if schema_name == "write_tests":
            args = dict(zip(params, task["reference"][0][0]))
            return {"cases": [{"name": "runs", "args": args, "expected": None, "assertion": None}]}
        raise AssertionError(f"unexpected call {schema_name}")

    return respond


def run_task(task: dict, transport: Transport, config: SwarmBlueprint) -> dict[str, Any]:
    session = LLMSession(transport=transport, settings=config.llm, key_prefix=f"bench-{task['id']}/0")
    space = SpaceStore(open_store(f"memory://bench-{uuid.uuid4().hex}"), ActionSpace.from_dirs(config.action_paths))
    first: dict[str, str] = {}
    started = time.monotonic()
    record, error = None, None
    try:
        record = create_function(
            task["description"], space=space, llm=session, config=config,
            progress=lambda step, info: first.setdefault("code", info["code"]) if step == "code" else None,
        )  # fmt: skip
    except LLMError as exc:  # no valid code at all: both columns score zero
        error = str(exc)[:300]
    seconds = time.monotonic() - started
    one_shot = [c for c in session.calls if c.schema_name == "write_code"][:1]  # step 1: later ones are fresh drafts
    a = reference_score(first.get("code", ""), task)
    b = reference_score(record.code, task, record.spec.entry) if record else (0, len(task["reference"]))
    return {
        "task": task["id"],
        "one_shot": {"passed": a[0], "total": a[1], "ok": a[0] == a[1]},
        "factory": {"passed": b[0], "total": b[1], "ok": b[0] == b[1]},
        "status": record.spec.status if record else "error",
        "repairs": record.repairs if record else 0,
        "generated_tests": record.report.total if record and record.report else 0,
        "error": error,
        "calls": session.usage.llm_calls,
        "tokens": session.usage.tokens,
        "one_shot_calls": len(one_shot),
        "one_shot_tokens": sum(c.prompt_tokens + c.completion_tokens for c in one_shot),
        "seconds": round(seconds, 2),
    }


def summarize(rows: list[dict], label: str) -> dict[str, Any]:
    n = len(rows)

    def rate(column: str) -> dict[str, Any]:
        ok = sum(r[column]["ok"] for r in rows)
        cases = sum(r[column]["passed"] for r in rows), sum(r[column]["total"] for r in rows)
        return {"tasks_passed": ok, "pass_rate": round(100 * ok / n, 1), "case_rate": round(100 * cases[0] / max(cases[1], 1), 1)}

    active = [r for r in rows if r["status"] == "active"]
    return {
        "model": label,
        "runs": n,
        "one_shot": {**rate("one_shot"), "calls_per_function": round(statistics.mean(r["one_shot_calls"] for r in rows), 2), "tokens_per_function": round(statistics.mean(r["one_shot_tokens"] for r in rows))},
        "factory": {**rate("factory"), "calls_per_function": round(statistics.mean(r["calls"] for r in rows), 2), "tokens_per_function": round(statistics.mean(r["tokens"] for r in rows))},
        "gain_points": round(rate("factory")["pass_rate"] - rate("one_shot")["pass_rate"], 1),
        "saved_active": len(active),
        "active_and_correct": sum(r["factory"]["ok"] for r in active),
        "errors": sum(r["status"] == "error" for r in rows),
        "seconds_per_function": round(statistics.mean(r["seconds"] for r in rows), 2),
        "rows": rows,
    }


def table(s: dict[str, Any]) -> str:
    a, b = s["one_shot"], s["factory"]
    return "\n".join(
        [
            f"model: {s['model']} · {s['runs']} functions · {s['seconds_per_function']} s per function",
            "| | (a) one-shot | (b) factory |",
            "|---|---|---|",
            f"| functions passing all reference tests | {a['tasks_passed']}/{s['runs']} ({a['pass_rate']} %) | {b['tasks_passed']}/{s['runs']} ({b['pass_rate']} %) |",
            f"| reference test cases passed | {a['case_rate']} % | {b['case_rate']} % |",
            f"| LLM calls per function | {a['calls_per_function']} | {b['calls_per_function']} |",
            f"| tokens per function | {a['tokens_per_function']} | {b['tokens_per_function']} |",
            f"gain: {s['gain_points']:+} points · saved active: {s['saved_active']} (of which correct by the reference tests: "
            f"{s['active_and_correct']}) · no valid code: {s['errors']}",
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="scripted model: checks the pipeline")
    p.add_argument("--smollm2", action="store_true", help="serve SmolLM2-135M with llama-cpp-python and measure it")
    p.add_argument("--base-url", help="an OpenAI-compatible server (else $OPENAI_BASE_URL / OpenAI)")
    p.add_argument("--model", default=None)
    p.add_argument("--mode", default=None, help="llm.mode (json_object_schema for llama-cpp-python)")
    p.add_argument("--max-tokens", type=int, default=700)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--max-repairs", type=int, default=None)
    p.add_argument("--samples", type=int, default=None, help="factory.samples: fresh drafts when the first code fails")
    p.add_argument("--code-answer", choices=["json", "text"], default=None, help="factory.code_answer (--smollm2: text)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--tasks", help="comma-separated task ids (default: all)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)

    tasks = [t for t in TASKS if t["id"] in args.tasks.split(",")] if args.tasks else TASKS
    tasks = tasks[: args.limit] if args.limit else tasks
    config = load_blueprint()
    code_answer = args.code_answer or ("text" if args.smollm2 else None)
    factory = {"max_repairs": args.max_repairs, "samples": args.samples, "code_answer": code_answer}
    config.factory = config.factory.model_copy(update={k: v for k, v in factory.items() if v is not None})
    server = None
    if args.quick:
        label, transport = "scripted", FunctionTransport(scripted_model(tasks))
    else:
        base_url = args.base_url
        if args.smollm2:
            sys.path.insert(0, str(REPO / "tests"))
            from llm_servers import smollm2_gguf, start_llama_server

            server, base_url, _ = start_llama_server(smollm2_gguf())
        updates: dict[str, Any] = {"max_tokens": args.max_tokens, "max_retries": 1, "timeout_s": 300}
        updates.update({k: v for k, v in {"base_url": base_url, "model": args.model or ("smollm2" if args.smollm2 else None), "mode": args.mode or ("json_object_schema" if args.smollm2 else None), "temperature": args.temperature}.items() if v is not None})
        config.llm = config.llm.model_copy(update=updates)
        label, transport = config.llm.model, OpenAITransport(config.llm)
    try:
        rows = []
        for r in range(args.repeat):
            for task in tasks:
                row = run_task(task, transport, config)
                rows.append(row)
                if args.out:  # kept up to date: a long real-model run that dies leaves its rows
                    Path(args.out).write_text(json.dumps(summarize(rows, label), indent=1))
                if not args.json:
                    print(f"[{r + 1}/{args.repeat}] {task['id']:<22} a={row['one_shot']['passed']}/{row['one_shot']['total']} "
                          f"b={row['factory']['passed']}/{row['factory']['total']} {row['status']:<6} repairs={row['repairs']} "
                          f"calls={row['calls']} tokens={row['tokens']} {row['seconds']}s", file=sys.stderr, flush=True)  # fmt: skip
    finally:
        if server is not None:
            from llm_servers import stop_server

            stop_server(server)
    summary = summarize(rows, label)
    summary["settings"] = {**config.factory.model_dump(include={"max_repairs", "max_tests", "samples", "sample_temperature", "code_answer"}), "mode": config.llm.mode, "temperature": config.llm.temperature, "max_tokens": config.llm.max_tokens}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary) if args.json else table(summary))
    return summary


if __name__ == "__main__":
    main()
