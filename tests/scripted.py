"""A scripted LLM for tests and benchmarks: answers by schema name, deterministic."""

from __future__ import annotations

import json
import re


def task_of(messages) -> str:
    m = re.search(r"(?:Your task|Task|The task): (.*)", messages[-1]["content"])
    return m.group(1).strip() if m else ""


def default_responder(subtasks=("first part", "second part"), mode="parallel", action="write_text", done=True):
    """Plan `subtasks` for every manager, do each with a one-line report, supervise as `done`."""

    def respond(messages, schema_name, schema, key):
        if "subtasks" in schema.get("properties", {}):  # any manager's plan
            return {"subtasks": [{"task": t, "action": action} for t in subtasks], "mode": mode, "question": None}
        if schema_name == "route":
            return {"choice": schema["properties"]["choice"]["enum"][0], "reason": "first fits"}
        if schema_name == "supervise":
            return {"done": done, "report": "combined: " + json.dumps(task_of(messages)), "feedback": "" if done else "more"}
        if schema_name == "write_python":
            return {"code": "def f():\n    return 1\n", "function_name": "f", "explanation": "returns 1"}
        return {"report": f"did {task_of(messages)}", "question": None}

    return respond


def asks_colour():
    """Subtasks a and b; b asks the user "Which colour?" and, once answered, reports "did b in blue"."""

    def respond(messages, schema_name, schema, key):
        if schema_name == "write_text" and task_of(messages) == "b":
            if "The user answered" in messages[-1]["content"]:
                return {"report": "did b in blue", "question": None}
            return {"report": "", "question": "Which colour?"}
        return default_responder(subtasks=("a", "b"))(messages, schema_name, schema, key)

    return respond


NTH_PRIME = '''def nth_prime(n: int) -> int:
    """The n-th prime number, counting from nth_prime(1) == 2."""
    count, candidate = 0, 1
    while count < n:
        candidate += 1
        if all(candidate % d for d in range(2, int(candidate ** 0.5) + 1)):
            count += 1
    return candidate
'''
NTH_PRIME_SPEC = {"name": "nth_prime", "description": "Returns the n-th prime number (1-based).", "args": {"n": "integer"}, "returns": "integer"}
NTH_PRIME_TESTS = {
    "cases": [
        {"name": "first", "args": {"n": 1}, "expected": 2, "assertion": None},
        {"name": "sixth", "args": {"n": 6}, "expected": 13, "assertion": None},
        {"name": "tenth", "args": {"n": 10}, "expected": 29, "assertion": None},
        {"name": "is odd later", "args": {"n": 5}, "expected": None, "assertion": "result % 2 == 1"},
    ]
}


def scripted(answers: dict, fallback=None):
    """Answer by schema name from `answers`: a list is consumed in order (its last item repeats),
    a callable is called like a responder, anything else is the answer. Other schemas go to
    `fallback` (default_responder()). `calls` counts the calls per schema name."""
    import threading

    fallback = fallback or default_responder()
    queues = {k: list(v) for k, v in answers.items() if isinstance(v, list)}
    lock = threading.Lock()
    calls: dict[str, int] = {}

    def respond(messages, schema_name, schema, key):
        with lock:
            calls[schema_name] = calls.get(schema_name, 0) + 1
            if schema_name in queues:
                q = queues[schema_name]
                return q.pop(0) if len(q) > 1 else q[0]
        answer = answers.get(schema_name)
        if answer is None:
            return fallback(messages, schema_name, schema, key)
        return answer(messages, schema_name, schema, key) if callable(answer) else answer

    respond.calls = calls
    return respond
