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
