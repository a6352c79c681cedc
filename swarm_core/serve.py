"""`swarm serve`: the two functions on this machine, as the cloud runs them.

Starts functions-framework twice — `load_goal` on PORT, `execute_node` on PORT+1 — as
separate processes with the `http` dispatcher, so every node is its own HTTP invocation
and nothing survives in memory between them: `curl -X POST localhost:PORT -H 'Content-Type:
application/json' -d '{"goal": …}'` runs a whole swarm, and `swarm status ID` / `swarm tree ID` show it from the store.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .config import ConfigError, load_blueprint
from .runtime import llm_configured

TARGETS = ("load_goal", "execute_node")


def add_serve_parser(subparsers, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register `swarm serve` on the CLI's subparsers (`common` carries --store/--blueprint/--json/-v)."""
    p = subparsers.add_parser(
        "serve",
        help="run load_goal and execute_node locally under functions-framework (http dispatcher)",
        description=__doc__.split("\n\n")[1],
        parents=[common],
        allow_abbrev=False,  # as every other command: `--js` is not `--json`
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1, loopback)")
    p.add_argument("--port", type=_port, default=8080, help="load_goal's port; execute_node gets PORT+1 (default 8080)")
    p.add_argument("--threads", type=_threads, default=64, help="request threads per function (default 64): one per running node")
    p.set_defaults(func=cmd_serve)
    return p


def _whole(name: str, low: int, high: int, wants: str):
    """An argparse type: a whole number from `low` to `high`, else "`wants`, got ..."."""

    def parse(text: str) -> int:
        if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
            raise argparse.ArgumentTypeError(f"{wants}, got {text[:40]!r}")
        return int(text)

    parse.__name__ = name  # argparse names the type in its messages
    return parse


_port = _whole("PORT", 1, 65534, "wants a port from 1 to 65534 (execute_node takes PORT+1)")
# a manager holds its request thread while its children's deliveries need another one
_threads = _whole("N", 2, 100_000, "wants at least 2 threads (a manager waits on one for its children's)")


def main_source() -> Path:
    spec = importlib.util.find_spec("functions.main")
    if spec is None or not spec.origin:
        raise ConfigError("functions/main.py is not importable: install swarm (pip install -e .)")
    return Path(spec.origin)


def _store_uri(args, blueprint) -> str:
    uri = getattr(args, "store", None) or os.environ.get("SWARM_STORE") or blueprint.stores.state
    if uri.startswith("memory://"):
        raise ConfigError("swarm serve runs two processes: use a store both see (file://, gs://, az://, s3://), not memory://")
    if uri.startswith("file://"):
        return "file://" + os.path.abspath(os.path.expanduser(uri[len("file://"):] or "./.swarm"))
    return uri


def check_free(host: str, ports: range) -> None:
    """Refuse a port something already listens on: `wait_ready` would take that server for ours."""
    for port in ports:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds: TIME_WAIT is no obstacle
                s.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot serve on {host} port {port}: {exc.strerror or exc}; choose another --port (serve takes PORT and PORT+1)") from None


def _wait_port(host: str, port: int, proc: subprocess.Popen, deadline: float) -> bool:
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"  # an IPv6 address needs brackets


def function_env(host: str, port: int, *, store: str, blueprint: str | None = None, threads: int = 64, env: dict | None = None) -> dict:
    """The environment both functions run with: the http dispatcher pointing at PORT+1."""
    base = dict(os.environ if env is None else env)
    base.pop("SWARM_DISPATCHER_RUNNER", None)  # a local runner: the functions dispatch over http
    base.update(
        SWARM_DISPATCHER="http",
        SWARM_EXECUTE_NODE_URL=_url(host, port + 1),
        SWARM_STORE=store,
        THREADS=str(threads),
        PYTHONUNBUFFERED="1",
    )
    if blueprint:
        base["SWARM_BLUEPRINT"] = str(Path(blueprint).resolve()) if Path(blueprint).exists() else blueprint
    return base


def spawn(target: str, host: str, port: int, env: dict, **popen) -> subprocess.Popen:
    """One functions-framework process serving `target` (a function of functions/main.py)."""
    env = {**env, "XDG_RUNTIME_DIR": tempfile.mkdtemp(prefix=f"swarm-{target}-")}  # a gunicorn control socket each
    cmd = [sys.executable, "-m", "functions_framework", "--target", target, "--source", str(main_source()), "--host", host, "--port", str(port)]
    popen.setdefault("start_new_session", True)  # Ctrl-C reaches `swarm serve`, which stops them gracefully
    return subprocess.Popen(cmd, env=env, **popen)


def wait_ready(host: str, port: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    if not _wait_port(host, port, proc, time.time() + timeout_s):
        raise ConfigError(f"functions-framework did not start on {host}:{port} (port in use? see its output)")


def start(host: str, port: int, env: dict, **popen) -> tuple[list[subprocess.Popen], dict[str, str]]:
    """Start both functions (load_goal on PORT, execute_node on PORT+1); returns processes and URLs."""
    check_free(host, range(port, port + len(TARGETS)))
    urls = {t: _url(host, port + i) for i, t in enumerate(TARGETS)}
    procs = [spawn(t, host, port + i, env, **popen) for i, t in enumerate(TARGETS)]
    try:
        for i, proc in enumerate(procs):
            wait_ready(host, port + i, proc)
    except ConfigError:
        stop(procs)
        raise
    return procs, urls


def stop(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.time() + grace_s
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cmd_serve(args) -> int:
    blueprint = load_blueprint(getattr(args, "blueprint", None))
    store = _store_uri(args, blueprint)
    env = function_env(args.host, args.port, store=store, blueprint=getattr(args, "blueprint", None), threads=args.threads)
    procs, urls = start(args.host, args.port, env)
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    token = bool(os.environ.get("SWARM_API_TOKEN"))
    if getattr(args, "json", False):
        print(json.dumps({**urls, "store": store, "dispatcher": "http", "bearer_token": token, "pids": [p.pid for p in procs]}), flush=True)
    else:
        auth = " -H 'Authorization: Bearer $SWARM_API_TOKEN'" if token else ""
        print(f"swarm serve · store {store} · http dispatcher · {args.threads} threads per function", flush=True)
        print(f"  load_goal     {urls['load_goal']}", flush=True)
        print(f"  execute_node  {urls['execute_node']}", flush=True)
        print(f"""try: curl -X POST {urls['load_goal']}{auth} -H 'Content-Type: application/json' -d '{{"goal": "…"}}'""", flush=True)
        print(f"then: swarm status ID --store {store} · swarm tree ID --store {store}   (Ctrl-C stops both)", flush=True)
    if not llm_configured(blueprint):  # the functions read this environment: every other goal would answer 500
        print("swarm serve: no LLM configured: only the recorded demo goal runs; set OPENAI_API_KEY, or OPENAI_BASE_URL "
              "for any OpenAI-compatible server, before `swarm serve`", file=sys.stderr, flush=True)
    code = 0
    while not stopping:
        if any(p.poll() is not None for p in procs):
            dead = [t for t, p in zip(TARGETS, procs) if p.poll() is not None]
            print(f"swarm serve: {', '.join(dead)} exited; stopping", file=sys.stderr, flush=True)
            code = 1
            break
        time.sleep(0.2)
    stop(procs)
    return code


def main(argv: list[str] | None = None) -> int:
    """`python -m swarm_core.serve ARGS`: `swarm serve ARGS`, with the same options and errors."""
    from .cli import main as cli_main  # the CLI imports this module

    return cli_main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
