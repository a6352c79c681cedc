"""`swarm`: run goals and inspect swarms from a terminal or a script.

Exit codes: 0 swarm done (or command succeeded), 1 swarm failed or incomplete, 2 bad usage or
unknown id, 3 swarm waiting for a user's answer, 130 interrupted (Ctrl-C), 141 the output's
reader left early (`| head`), 143 terminated (SIGTERM). `--json` prints exactly one JSON object.
`swarm fn …` and `swarm actions …` work on the deployment's functions and action space:
0 ok, 1 the function or its tests failed (a draft, an invalid space), 2 bad usage or unknown name.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import time
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.markup import escape
from rich.tree import Tree

from .actions import ActionError, ActionSpec, FolderSpec
from .config import ConfigError
from .dispatchers import RemoteDispatcher
from .engine import CorruptRecord, Engine, SwarmError, UnknownSwarm, check_goal
from .executor import FunctionError
from .factory import Functions
from .llm import LLMError
from .models import Budgets, InvalidId, NodeRecord
from .runtime import build_engine, llm_configured, llm_source_for
from .serve import add_serve_parser
from .space import SpaceError, signature, space_tree
from .store import StoreError

EXIT = {"done": 0, "failed": 1, "running": 1, "waiting_user": 3}
STYLE = {
    "pending": ("·", "dim"),
    "running": ("▶", "yellow"),
    "waiting_children": ("…", "cyan"),
    "waiting_user": ("?", "magenta"),
    "done": ("✓", "green"),
    "failed": ("✗", "red"),
    "cancelled": ("-", "dim"),
}


# Every control character but tab and newline. ESC in a model's question or report would otherwise
# reach the terminal as a command (a window title, a screen clear, an OSC 52 clipboard write).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _shown(text: str) -> str:
    """`text` as it may be written to a terminal: control characters shown as U+FFFD."""
    return _CONTROL.sub("\ufffd", text)


class _Console(Console):
    def on_broken_pipe(self) -> None:  # rich would exit 1 (a failed swarm): `main` exits 141 instead
        raise BrokenPipeError

    def render_str(self, text: str, **kwargs: Any):  # every string printed, tree labels included
        return super().render_str(_shown(text), **kwargs)


err = _Console(stderr=True, soft_wrap=True)
out = _Console(soft_wrap=True)


class UsageError(Exception):
    pass


class Interrupted(Exception):
    """Ctrl-C or SIGTERM while a swarm ran here: nothing new was started, what was running
    finished its step. `code` is 128 + the signal's number, as a shell reports it. With a
    `remote` dispatcher the nodes run elsewhere: this process only stops following them."""

    def __init__(self, swarm_id: str, code: int, remote: bool = False):
        super().__init__(
            f"stopped following the swarm; it goes on where its nodes run (`swarm status {swarm_id}`)"
            if remote
            else f"interrupted; `swarm resume {swarm_id}` finishes the swarm"
        )
        self.swarm_id, self.code = swarm_id, code


class Terminated(KeyboardInterrupt):
    """SIGTERM (a container stopping, `timeout`, `kill`) while a swarm runs: handled as Ctrl-C."""


def _on_sigterm(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        if sys.stdout is not None:  # None: started with stdout closed
            sys.stdout.flush()  # a reader gone early fails here, not in Python's flush at exit
        return code
    except BrokenPipeError:  # `swarm tree ID | head`: the reader has what it wanted; exit as a shell reports SIGPIPE
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.dup2(devnull, sys.stderr.fileno())
        return 128 + signal.SIGPIPE


def _main(argv: list[str] | None) -> int:
    json_asked = "--json" in (sys.argv[1:] if argv is None else argv)
    parser = _parser(json_asked)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return _fail(argparse.Namespace(json=json_asked), str(exc), 2)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    # -v: the swarm's own lines only; httpx's INFO lines carry the request URL, credentials and all
    logging.getLogger("swarm").setLevel(logging.INFO if args.verbose else logging.WARNING)
    if not getattr(args, "func", None):
        return _help(parser, args)
    try:
        return args.func(args)
    except Interrupted as exc:
        return _fail(args, str(exc), exc.code, swarm_id=exc.swarm_id)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", 130)
    except UnknownSwarm as exc:  # the default store depends on the current folder: say which was searched
        return _fail(args, f"{exc} in {args.engine.state.uri}" if getattr(args, "engine", None) else str(exc), 2)
    except (UsageError, SwarmError, InvalidId, ConfigError, SpaceError) as exc:
        code = 1 if isinstance(exc, CorruptRecord) else 2
        return _fail(args, str(exc), code)
    except FunctionError as exc:
        return _fail(args, str(exc), 2 if exc.usage else 1)
    except (LLMError, ActionError) as exc:
        return _fail(args, str(exc), 1)
    except StoreError as exc:
        return _fail(args, f"storage: {exc}", 1)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("swarm")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def _fail(args, message: str, code: int, **extra: Any) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"error": message, "exit_code": code, **extra}), flush=True)
    print(f"swarm: error: {_shown(message)}", file=sys.stderr)
    return code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would exit here; `main` reports it, as JSON too with --json
        self.print_usage(sys.stderr)
        raise UsageError(message)


def _help(parser: argparse.ArgumentParser, args) -> int:
    """`swarm` or a command group without its command: the help, or with --json one JSON error."""
    if args.json:
        return _fail(args, f"{parser.prog} needs a command; {parser.prog} --help lists them", 2)
    parser.print_help()
    return 2


def _parser(json_asked: bool = False) -> argparse.ArgumentParser:
    """The command line; `json_asked`: `--json` is on it (`--version` then prints JSON too)."""
    def options(suppress: bool) -> argparse.ArgumentParser:
        # Accepted before and after the command; the command's copy must not reset the other's value.
        p = argparse.ArgumentParser(add_help=False, allow_abbrev=False, argument_default=argparse.SUPPRESS if suppress else None)
        p.add_argument("--store", help="storage URI (default: $SWARM_STORE or the blueprint's, file://./.swarm)")
        p.add_argument("--blueprint", help="blueprint folder or file (default: $SWARM_BLUEPRINT or blueprints/default)")
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS if suppress else False, help="print one JSON object")
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS if suppress else False, help="log every node invocation to stderr")
        return p

    common = options(suppress=True)
    # allow_abbrev=False: `--js` is not `--json` (a usage error must know whether JSON was asked for)
    parser = _Parser(prog="swarm", description=__doc__.split("\n")[0], parents=[options(suppress=False)], allow_abbrev=False)
    version = json.dumps({"version": _version()}) if json_asked else f"swarm {_version()}"
    parser.add_argument("--version", action="version", version=version)
    sub = parser.add_subparsers(metavar="COMMAND")

    def command(parsers, name, func, help, *arguments):
        p = parsers.add_parser(name, help=help, description=help, parents=[common], allow_abbrev=False)
        for spec in arguments:
            p.add_argument(*spec[0], **spec[1])
        p.set_defaults(func=func)
        return p

    def cmd(name, func, help, *arguments):
        return command(sub, name, func, help, *arguments)

    swarm_id = (["swarm_id"], {"metavar": "ID", "help": "swarm id (sw_…)"})
    cmd(
        "run",
        cmd_run,
        "run a goal to the end, showing the tree live",
        (["goal"], {"help": "what the swarm should achieve (-: read it from standard input)"}),
        (["--budget"], {"action": "append", "default": [], "metavar": "NAME=N", "help": f"override a budget ({', '.join(Budgets.model_fields)}), e.g. max_nodes=50"}),
    )
    cmd("status", cmd_status, "show a swarm's status, usage and waiting questions", swarm_id)
    cmd("tree", cmd_tree, "show a swarm's node tree", swarm_id)
    cmd(
        "history",
        cmd_history,
        "list a swarm's events (append-only history)",
        swarm_id,
        (["--llm"], {"action": "store_true", "help": "include LLM requests and answers"}),
    )
    cmd("resume", cmd_resume, "finish a swarm whose process died (re-delivers what was in flight)", swarm_id)
    cmd("replay", cmd_replay, "re-run a swarm offline from its recorded LLM answers (zero API calls)", swarm_id)
    cmd(
        "snapshot",
        cmd_snapshot,
        "print the whole tree as one JSON object and store it under snapshots/",
        swarm_id,
        (["--out"], {"metavar": "FILE", "help": "also write it to FILE"}),
    )
    cmd(
        "list",
        cmd_list,
        "list swarms, newest first",
        (["--limit"], {"type": _at_least_one, "default": 50, "metavar": "N", "help": "list at most N swarms (default: 50)"}),
    )
    cmd(
        "answer",
        cmd_answer,
        "answer a node's question and let its branch go on",
        swarm_id,
        (["node_id"], {"metavar": "NODE"}),
        (["text"], {"metavar": "TEXT", "help": "the answer (-: read it from standard input)"}),
    )
    add_serve_parser(sub, common)

    def group(name, help):
        p = sub.add_parser(name, help=help, description=help, parents=[common], allow_abbrev=False)
        inner = p.add_subparsers(metavar="COMMAND")
        p.set_defaults(func=lambda args: _help(p, args))

        return lambda cmd_name, func, cmd_help, *arguments: command(inner, cmd_name, func, cmd_help, *arguments)

    name = (["name"], {"metavar": "NAME", "help": "function (action) id"})
    version = (["--version"], {"type": int, "metavar": "N", "help": "a given version (default: the active one)"})
    fn = group("fn", "create, inspect, test and run the deployment's functions")
    fn("create", cmd_fn_create, "write, test, repair and save a function from a description", (["text"], {"metavar": "TEXT"}))
    fn("list", cmd_fn_list, "list the deployment's functions")
    fn("show", cmd_fn_show, "show a function: spec, code, tests and last report", name, version)
    fn("test", cmd_fn_test, "run a function's saved tests again in the sandbox", name, version)
    fn("run", cmd_fn_run, "run a function with JSON arguments", name, version, (["--args"], {"default": "{}", "metavar": "JSON"}))
    act = group("actions", "inspect and edit the action space (folders and actions)")
    act("tree", cmd_actions_tree, "show the action space as a tree (built-ins and the deployment's own)")
    act("validate", cmd_actions_validate, "check the whole space: parents, ids, names, schemas, versions, code")
    act(
        "add",
        cmd_actions_add,
        "add a folder (--folder) or an action (--spec FILE.json [--code FILE.py])",
        (["id"], {"metavar": "ID"}),
        (["--folder"], {"action": "store_true", "help": "add a folder"}),
        (["--spec"], {"metavar": "FILE", "help": "the action's spec as JSON (ActionSpec fields)"}),
        (["--code"], {"metavar": "FILE", "help": "a python action's module"}),
        (["--name"], {"help": "display name (default: the id)"}),
        (["--description"], {"help": "what it is for: the router reads this"}),
        (["--parent"], {"help": "the folder it goes in (default: root)"}),
        (["--fallback"], {"help": "a folder's fallback action when nothing in it fits"}),
    )
    act("move", cmd_actions_move, "move an entry into another folder", (["id"], {"metavar": "ID"}), (["parent"], {"metavar": "FOLDER"}))
    act("rm", cmd_actions_rm, "remove an entry (its versions stay in storage)", (["id"], {"metavar": "ID"}))
    return parser


def _at_least_one(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 18) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"wants a number of at least 1, got {_short(text, 40)!r}")
    return int(text)


_at_least_one.__name__ = "N"  # argparse names the type in its messages


def _engine(args) -> Engine:
    args.engine = build_engine(args.blueprint, store=args.store)
    return args.engine


# --- rendering ---------------------------------------------------------------------


def render_tree(nodes: list[NodeRecord], title: str) -> Tree:
    """The node tree under `title` (markup) and a count per status: on a terminal a wide swarm's
    tree is cut at the screen's height, and the counts still show how far it has got. Tasks,
    errors and questions are escaped: a model's `list[int]` is text, not a style."""
    counts: dict[str, int] = {}
    for n in nodes:
        counts[n.status] = counts.get(n.status, 0) + 1
    tree = Tree(f"{title}\n{len(nodes)} nodes: {_by_status(counts, styled=True)}" if nodes else title)
    branches: dict[str, Tree] = {}
    for n in nodes:
        icon, color = STYLE[n.status]
        task = str(n.blueprint.input.get("task", ""))
        label = f"[{color}]{icon} {n.node_id}[/] [bold]{n.blueprint.action}[/] [dim]{escape(_short(task, 70))}[/]"
        if n.status == "failed" and n.error:
            label += f"\n[red]{escape(_short(n.error, 160))}[/]"
        elif n.status == "waiting_user":
            label += f"\n[magenta]asks: {escape(_short(n.question or '', 160))}[/]"
        parent = branches.get(n.blueprint.parent_id or "", tree)
        branches[n.node_id] = parent.add(label)
    return tree


def _by_status(counts: dict[str, int], styled: bool = False) -> str:
    """`2 running, 3 done`: the count of nodes per status, in the order a node goes through them."""
    return ", ".join(
        f"[{STYLE[s][1]}]{counts[s]} {s.replace('_', ' ')}[/]" if styled else f"{counts[s]} {s.replace('_', ' ')}"
        for s in STYLE
        if s in counts
    )


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _node_rows(nodes: list[NodeRecord]) -> list[dict[str, Any]]:
    return [
        {
            "node_id": n.node_id,
            "parent_id": n.blueprint.parent_id,
            "action": n.blueprint.action,
            "status": n.status,
            "round": n.blueprint.round,
            "depth": n.blueprint.depth,
            "task": n.blueprint.input.get("task"),
            "report": n.report,
            "error": n.error,
            "question": n.question,
            "usage": n.usage.model_dump(),
        }
        for n in nodes
    ]


def _drive(engine: Engine, swarm_id: str, args, label: str = "") -> dict[str, Any]:
    """Wait for the local dispatcher to go idle, showing the tree live on a terminal.
    Ctrl-C or SIGTERM stops it (see `_stop`) and raises Interrupted."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _watch(engine, swarm_id, args, label)
    except KeyboardInterrupt as exc:
        code = 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
        _stop(engine, swarm_id, args, code)
        raise Interrupted(swarm_id, code, remote=isinstance(engine.dispatcher, RemoteDispatcher)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(engine: Engine, swarm_id: str, args, code: int) -> None:
    """First Ctrl-C (or SIGTERM): start no more nodes and let the running ones finish their
    step, so no LLM answer already paid for is lost. A second one quits at once, like a crash:
    every record is written atomically and `swarm resume` re-runs what was cut off."""
    stop = getattr(engine.dispatcher, "stop", None)
    if stop is None:
        return
    running = stop()
    if running:
        err.print(f"interrupted: waiting for {running} running node(s) to finish their step; nothing new starts "
                  "(Ctrl-C again to quit at once)", highlight=False)
    try:
        engine.dispatcher.wait()
    except KeyboardInterrupt:
        _fail(args, f"quit; `swarm resume {swarm_id}` finishes the swarm", code, swarm_id=swarm_id)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # the pool's threads would otherwise be joined at exit


def _watch(engine: Engine, swarm_id: str, args, label: str) -> dict[str, Any]:
    settled = _Settled(engine, swarm_id)
    if args.json or not err.is_terminal:
        seen: dict[str, str] = {}
        progress = _Paced(lambda: _print_changes(engine, swarm_id, seen), interval=0.5)
        while not settled(0.5):
            if not args.json:
                progress()
        if not args.json:
            _print_changes(engine, swarm_id, seen)
    else:
        title = f"[bold]{swarm_id}[/] {label}"
        with Live(render_tree(engine.nodes(swarm_id), title), console=err, refresh_per_second=4) as live:
            tree = _Paced(lambda: live.update(render_tree(engine.nodes(swarm_id), title)), interval=0.3)
            while not settled(0.3):
                tree()
            live.update(render_tree(engine.nodes(swarm_id), title))
    return engine.status(swarm_id)


class _Paced:
    """Runs `step` (a read of every node, to show progress) at most every `interval` seconds, and
    at most a `share` of the time: if reading a thousand nodes from a cloud store takes 2 s, the
    next read starts 20 s later. So following a swarm costs a bounded number of requests a second
    whatever its size, while a local store still refreshes every `interval`."""

    def __init__(self, step, interval: float, share: float = 0.1, clock=time.monotonic):
        self.step, self.interval, self.share, self.clock = step, interval, share, clock
        self.next_at = 0.0

    def __call__(self) -> bool:
        """Run `step` if it is due; True if it ran."""
        start = self.clock()
        if start < self.next_at:
            return False
        self.step()
        self.next_at = start + max(self.interval, (self.clock() - start) / self.share)
        return True


class _Settled:
    """`settled(timeout)` waits up to `timeout`: True once nothing more happens for this process
    to show. That is when the local dispatcher is idle. A remote one hands nodes to functions that
    write to the same store: then it is when the swarm no longer runs, read from its header (one
    read a poll on a cloud store), and, paced like the progress (every 5 s at most), from its
    nodes, which alone say that every branch left is waiting for the user."""

    def __init__(self, engine: Engine, swarm_id: str):
        self.engine, self.swarm_id, self.ended = engine, swarm_id, False
        self.check_nodes = _Paced(self._check_nodes, interval=5.0)

    def _check_nodes(self) -> None:
        self.ended = self.engine.status(self.swarm_id)["status"] != "running"

    def __call__(self, timeout: float) -> bool:
        engine = self.engine
        if not engine.dispatcher.wait(timeout=timeout):
            return False
        if not isinstance(engine.dispatcher, RemoteDispatcher) or engine.header(self.swarm_id).status != "running":
            return True
        self.check_nodes()
        if self.ended:
            return True
        time.sleep(timeout)
        return False


def _print_changes(engine: Engine, swarm_id: str, seen: dict[str, str]) -> None:
    for n in engine.nodes(swarm_id):
        if seen.get(n.node_id) != n.status:
            seen[n.node_id] = n.status
            err.print(f"{n.node_id:<24} {n.blueprint.action:<16} {n.status}", markup=False, highlight=False)


def _print_report(report: str) -> None:
    """Rendered and wrapped to a terminal's width; the Markdown itself, whole, into a pipe or file
    (`out` soft-wraps, which makes rich crop list items at the console's width)."""
    if out.is_terminal:
        out.print(Markdown(_shown(report)), soft_wrap=False)
    else:
        sys.stdout.write(_shown(report).rstrip("\n") + "\n")
        sys.stdout.flush()


def _finish(engine: Engine, swarm_id: str, args, status: dict[str, Any], extra: dict | None = None) -> int:
    errors = getattr(engine.dispatcher, "errors", [])
    if errors:  # whatever the status: a node answered but still `waiting_user` did not run either
        failed = f"{len(errors)} invocation(s) failed, first: {errors[0]}; finish with `swarm resume {swarm_id}`"
        status["error"] = f"{status['error']}; {failed}" if status["error"] else failed
    elif status["status"] == "running" and not isinstance(engine.dispatcher, RemoteDispatcher):
        # idle here, and not ended: another process (a `swarm run`, another `swarm resume`) holds nodes
        held = [n.node_id for n in engine.nodes(swarm_id) if n.status == "running"]
        if held:
            names = ", ".join(held[:5]) + (", …" if len(held) > 5 else "")
            status["error"] = (f"{len(held)} node(s) still running in another process ({names}): it finishes the "
                               f"swarm; `swarm status {swarm_id}` follows it, `swarm resume {swarm_id}` if it died")
    if args.json:
        nodes = _node_rows(engine.nodes(swarm_id))
        print(json.dumps({**{k: status[k] for k in ("swarm_id", "status", "report", "error", "usage", "waiting")}, "nodes": nodes, **(extra or {})}))
    else:
        if status["report"]:
            _print_report(status["report"])
        if status["error"]:
            err.print(f"[red]error:[/] {escape(status['error'])}", highlight=False)
        target = status["replay_of"] or swarm_id  # a replay waits where its original does: answered there
        for w in status["waiting"]:
            err.print(f"[magenta]{w['node_id']} asks:[/] {escape(w['question'])}\n  answer with: swarm answer {target} {w['node_id']} \"…\"")
        if status["replay_of"] and status["waiting"]:
            err.print(f"  then replay {target} again")
        u = status["usage"]
        err.print(
            f"[dim]{swarm_id} {status['status']} · {status['nodes']} nodes · {u['llm_calls']} LLM calls · "
            f"{u['prompt_tokens'] + u['completion_tokens']} tokens · llm: {escape(status['llm_source'])}[/]"
        )
    if errors and status["status"] == "waiting_user":
        return 1  # incomplete, not waiting: what failed needs `swarm resume`, not another answer
    return EXIT.get(status["status"], 1)


# --- commands ----------------------------------------------------------------------


def _budgets(engine: Engine, items: list[str]) -> dict[str, int]:
    """`--budget NAME=N` overrides, checked before anything is printed or a model is needed."""
    names = ", ".join(Budgets.model_fields)
    budgets = {}
    for item in items:
        name, _, value = (part.strip() for part in item.partition("="))
        if not name:
            raise UsageError(f"--budget {item!r}: the budget's name is missing (one of {names})")
        if name not in Budgets.model_fields:
            raise UsageError(f"--budget {item!r}: unknown budget {name!r} (one of {names})")
        if not (value.isascii() and value.isdigit() and len(value) <= 18):  # "²".isdigit() is True, int("²") fails
            raise UsageError(f"--budget wants NAME=N with N a whole number, got {_short(item, 60)!r}")
        budgets[name] = int(value)
    try:
        Budgets.model_validate({**engine.blueprint.budgets.model_dump(), **budgets})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"--budget {first['loc'][0]}: {first['msg']}") from None
    return budgets


def _text(value: str, what: str) -> str:
    """A goal or an answer as given, or read from standard input when given as `-` (a long
    text from a file or another command). Bytes that are not UTF-8 reach `check_text`, which says so."""
    if value != "-":
        return value
    if sys.stdin is None:  # started with stdin closed
        raise UsageError(f"the {what} - is read from standard input, which is closed")
    return sys.stdin.buffer.read().decode("utf-8", "surrogateescape").strip()


def cmd_run(args) -> int:
    args.goal = _text(args.goal, "goal")
    engine = _engine(args)
    budgets = _budgets(engine, args.budget)
    source = llm_source_for(check_goal(args.goal), engine.blueprint)
    if source.startswith("recording:") and not args.json:
        err.print(
            "[yellow]No OPENAI_API_KEY / OPENAI_BASE_URL set: replaying the shipped recording of this goal "
            "(offline, no model is called). Set a key to run it live.[/]"
        )
    swarm_id, _ = engine.load_goal(args.goal, budgets=budgets, llm_source=source)
    if not args.json:
        err.print(f"[bold]{swarm_id}[/] started · store {escape(engine.state.uri)}")
    status = _drive(engine, swarm_id, args)
    return _finish(engine, swarm_id, args, status)


def cmd_status(args) -> int:
    engine = _engine(args)
    status = engine.status(args.swarm_id)
    if args.json:
        print(json.dumps(status))
    else:
        u = status["usage"]
        out.print(f"[bold]{status['swarm_id']}[/] {status['status']}  {escape(status['goal'])}", highlight=False)
        out.print(f"{status['nodes']} nodes: {_by_status(status['by_status'])} · llm: {status['llm_source']}", highlight=False, markup=False)
        out.print(f"usage: {u['llm_calls']} LLM calls, {u['prompt_tokens']}+{u['completion_tokens']} tokens, {u['seconds']} s", highlight=False)
        for w in status["waiting"]:
            out.print(f"{w['node_id']} asks: {w['question']}", highlight=False, markup=False)
        if status["error"]:
            out.print(f"error: {status['error']}", highlight=False, markup=False)
    return EXIT.get(status["status"], 1) if status["status"] != "running" else 0


def cmd_tree(args) -> int:
    engine = _engine(args)
    nodes = engine.nodes(args.swarm_id)
    if args.json:
        print(json.dumps({"swarm_id": args.swarm_id, "nodes": _node_rows(nodes)}))
    else:
        _print_tree(render_tree(nodes, f"[bold]{args.swarm_id}[/] {escape(engine.header(args.swarm_id).goal)}"))
    return 0


def _print_tree(tree: Tree) -> None:
    """`out` soft-wraps, which makes rich crop each label at the console's width (80 in a pipe):
    on a terminal labels wrap inside the tree; into a pipe each label stays one whole line."""
    (out if out.is_terminal else _Console(width=100_000)).print(tree, soft_wrap=False)


def cmd_history(args) -> int:
    engine = _engine(args)
    events = engine.events(args.swarm_id)
    if args.json:
        exclude = None if args.llm else {"llm_calls"}
        print(json.dumps({"swarm_id": args.swarm_id, "events": [e.model_dump(exclude=exclude) for e in events]}))
        return 0
    for e in events:
        detail = e.data.get("outcome", {}).get("kind", "") if e.kind == "outcome" else ""
        calls = f" llm×{len(e.llm_calls)}" if e.llm_calls else ""
        out.print(f"{e.at}  {e.node_id:<20} r{e.round} {e.kind:<10} {detail}{calls}", highlight=False, markup=False)
        if args.llm:
            for c in e.llm_calls:
                out.print(f"    [{c.seq}] {c.schema_name}: {_short(c.response or c.error or '', 200)}", highlight=False, markup=False)
    return 0


def cmd_resume(args) -> int:
    engine = _engine(args)
    before = engine.status(args.swarm_id)
    if before["status"] in ("done", "failed"):
        return _finish(engine, args.swarm_id, args, before)
    _need_model(engine, args.swarm_id)
    sent = engine.resume(args.swarm_id)
    if not args.json:
        err.print(f"resumed {args.swarm_id}: {sent} deliveries")
    return _finish(engine, args.swarm_id, args, _drive(engine, args.swarm_id, args))


def cmd_replay(args) -> int:
    engine = _engine(args)
    original = engine.header(args.swarm_id)
    before = engine.nodes(args.swarm_id)  # an unreadable original is refused before a new swarm is made
    if not engine.recorded_answers(args.swarm_id):
        raise UsageError(f"swarm {args.swarm_id} has no recorded LLM answers to replay")
    swarm_id, _ = engine.load_goal(
        original.goal, budgets=original.budgets.model_dump(), llm_source=f"replay:{args.swarm_id}", replay_of=args.swarm_id
    )
    if not args.json:
        err.print(f"[bold]{swarm_id}[/] replays {args.swarm_id} from its history (offline, no model is called)")
    try:
        status = _drive(engine, swarm_id, args, "replay")
        shape = lambda nodes: [(n.node_id, n.blueprint.action, n.status) for n in nodes]  # noqa: E731
        identical = shape(engine.nodes(swarm_id)) == shape(before)
        if not args.json:
            err.print(f"tree identical to {args.swarm_id}: {'yes' if identical else 'NO'}")
        code = _finish(engine, swarm_id, args, status, {"replay_of": args.swarm_id, "identical": identical})
    except (SwarmError, StoreError) as exc:  # the new swarm exists now: say which it is
        # the base type, not type(exc): an adapter's own error type may take other arguments
        kind = StoreError if isinstance(exc, StoreError) else SwarmError
        raise kind(f"replay {swarm_id} of {args.swarm_id}: {exc}") from None
    return code if identical else max(code, 1)


def cmd_snapshot(args) -> int:
    if args.out is not None:  # checked before anything is stored
        folder = os.path.dirname(os.path.abspath(args.out))
        if not args.out or os.path.isdir(args.out):
            raise UsageError(f"--out {args.out!r}: give a file name")
        if not os.path.isdir(folder):
            raise UsageError(f"--out {args.out}: folder {folder} not found")
        if not os.access(folder, os.W_OK):
            raise UsageError(f"--out {args.out}: folder {folder} is not writable")
    engine = _engine(args)
    snap = engine.snapshot(args.swarm_id)
    text = json.dumps(snap, indent=None if args.json else 2)
    key = engine.key(args.swarm_id, "snapshots", f"{time.time_ns():020d}.json")
    engine.state.create(key, text.encode())
    if args.out:
        _write(args.out, text)
    print(text)
    if not args.json:
        err.print(f"snapshot of {len(snap['nodes'])} nodes written to {engine.state.uri}/{key}" + (f" and {args.out}" if args.out else ""), markup=False)
    return 0


def cmd_list(args) -> int:
    engine = _engine(args)
    rows = []
    ids = engine.swarm_ids()
    more = max(len(ids) - args.limit, 0)
    for sid in ids[: args.limit]:
        try:
            h = engine.header(sid)
            rows.append({"swarm_id": sid, "status": h.status, "goal": h.goal, "created_at": h.created_at, "llm_source": h.llm_source})
        except SwarmError as exc:
            rows.append({"swarm_id": sid, "status": "unreadable", "goal": str(exc), "created_at": None, "llm_source": None})
    if args.json:
        print(json.dumps({"swarms": rows, "more": more}))
    else:
        for r in rows:
            out.print(f"{r['swarm_id']}  {r['status']:<10} {r['created_at'] or '':<30} {_short(r['goal'], 70)}", highlight=False, markup=False)
        if more:
            err.print(f"{more} more swarm(s); --limit N lists more", highlight=False)
        if not rows:
            err.print(f"no swarms in {engine.state.uri}", markup=False)
    return 0


def cmd_answer(args) -> int:
    args.text = _text(args.text, "answer")
    engine = _engine(args)
    _need_model(engine, args.swarm_id)  # before the answer is stored: stored, it cannot be given again
    engine.answer(args.swarm_id, args.node_id, args.text)
    if not args.json:
        err.print(f"answered {args.node_id}; continuing {args.swarm_id}")
    return _finish(engine, args.swarm_id, args, _drive(engine, args.swarm_id, args))


# --- functions and the action space ------------------------------------------------------


def _need_model(engine: Engine, swarm_id: str | None = None) -> None:
    """Refuse up front what needs a live model when none is configured: the factory, or going on
    with a swarm that was started on one (a replay or the shipped recording needs none)."""
    if swarm_id and engine.header(swarm_id).llm_source.startswith(("replay:", "recording:")):
        return
    if not llm_configured(engine.blueprint):
        who = f"swarm {swarm_id} was started on a live model and" if swarm_id else "the factory"
        raise ConfigError(
            f"no LLM configured: {who} needs one. Set OPENAI_API_KEY, or OPENAI_BASE_URL for any "
            "OpenAI-compatible server (Ollama, vLLM, llama.cpp)"
        )


def _functions(args, llm: bool = False) -> Functions:
    engine = _engine(args)
    if llm:
        _need_model(engine)
    return engine.functions()


def _print(args, payload: dict[str, Any], text: str = "") -> None:
    if args.json:
        print(json.dumps(payload, default=str))
    elif text:
        out.print(text, highlight=False, markup=False)


def cmd_fn_create(args) -> int:
    functions = _functions(args, llm=True)
    steps = []
    rounds, samples = functions.config.factory.max_repairs, functions.config.factory.samples

    def progress(step: str, info: dict[str, Any]) -> None:
        steps.append({"step": step, **{k: v for k, v in info.items() if k != "code"}})
        if args.json:
            return
        line = {
            "code": lambda: f"1/5 code: {info.get('lines')} lines",
            "spec": lambda: f"2/5 spec: {info['signature']}" if "signature" in info else f"2/5 spec: {info.get('warning')}",
            "tests": lambda: f"3/5 tests: {info.get('cases')} cases" + (f" ({info['error']})" if info.get("error") else ""),
            "run": lambda: f"4/5 run: {info['passed']}/{info['passed'] + info['failed']} passed" + (f": {info['error'].splitlines()[0]}" if info.get("error") else ""),
            "sample": lambda: f"    draft {info['draft']}/{samples}: " + (info["error"].splitlines()[0] if "passed" not in info else f"{info['passed']}/{info['passed'] + info['failed']} passed"),
            "repair": lambda: f"    repair {info['round']}/{rounds}" + (f": {info['problem']}" if info.get("problem") else ""),
            "saved": lambda: f"5/5 saved {info['id']} v{info['version']} ({info['status']})",
        }[step]()
        err.print(line, highlight=False, markup=False)

    record = functions.create(args.text, progress=progress)
    usage = functions.llm.usage if functions.llm else None
    payload = {
        "function": record.spec.id,
        "version": record.spec.version,
        "status": record.spec.status,
        "signature": record.signature,
        "summary": record.summary(),
        "repairs": record.repairs,
        "tests": {"passed": record.report.passed, "total": record.report.total, "error": record.report.error} if record.report else None,
        "usage": usage.model_dump() if usage else None,
        "steps": steps,
    }
    _print(args, payload, record.summary())
    if not args.json and usage:
        err.print(f"[dim]{usage.llm_calls} LLM calls · {usage.tokens} tokens[/]")
    return 0 if record.spec.status == "active" else 1


def cmd_fn_list(args) -> int:
    functions = _functions(args)
    rows = []
    for entry in sorted(functions.space.own().values(), key=lambda e: e.id):
        if isinstance(entry, ActionSpec):
            rows.append(
                {
                    "id": entry.id,
                    "version": entry.version,
                    "versions": functions.space.versions(entry.id),
                    "status": entry.status,
                    "type": entry.type,
                    "folder": entry.parent,
                    "signature": signature_of(entry),
                    "description": entry.description,
                }
            )
    text = "\n".join(f"{r['id']:<24} v{r['version']:<3} {r['status']:<7} {r['signature']}" for r in rows)
    _print(args, {"functions": rows}, text)
    if not rows and not args.json:
        err.print(f"no functions in {functions.space.store.uri}; create one with: swarm fn create \"…\"", markup=False)
    return 0


def signature_of(spec: ActionSpec) -> str:
    return signature(spec) if spec.type == "python" else f"{spec.id} ({spec.type})"


def cmd_fn_show(args) -> int:
    functions = _functions(args)
    record = functions.space.version(args.name, args.version)
    versions = functions.space.versions(args.name)
    if args.json:
        print(json.dumps({**record.model_dump(mode="json"), "versions": versions}))
        return 0
    s = record.spec
    out.print(f"{s.id} v{s.version} ({s.status}) · versions {versions} · folder {s.parent}", highlight=False, markup=False)
    out.print(signature_of(s), highlight=False, markup=False)
    out.print(s.description, highlight=False, markup=False)
    if record.code:
        out.print(f"\n{record.code}", highlight=False, markup=False)
    for case in s.tests:
        out.print(f"test {case['name']}: {json.dumps(case.get('args'))} -> {case.get('expected', case.get('assertion'))}", highlight=False, markup=False)
    if record.report:
        out.print(f"last report: {record.report.passed}/{record.report.total} passed" + (f" · {record.report.error}" if record.report.error else ""), highlight=False, markup=False)
    return 0


def cmd_fn_test(args) -> int:
    functions = _functions(args)
    record, report = functions.test(args.name, args.version)
    lines = [f"{'✓' if c.passed else '✗'} {c.name}" + ("" if c.passed else f": {c.error}") for c in report.cases]
    if report.error:
        lines.append(f"error: {report.error}")
    lines.append(f"{record.spec.id} v{record.spec.version}: {report.passed}/{report.total} passed")
    _print(args, {"function": record.spec.id, "version": record.spec.version, "ok": report.ok, "report": report.model_dump()}, "\n".join(lines))
    return 0 if report.ok else 1


def cmd_fn_run(args) -> int:
    try:
        call = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--args is not JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise UsageError("--args is nested too deeply") from None
    result = _functions(args).run(args.name, call, args.version)
    if args.json:
        print(json.dumps(result.model_dump()))
    else:
        if result.stdout:
            err.print(result.stdout.rstrip(), highlight=False, markup=False)
        print(json.dumps(result.result, ensure_ascii=False))
    return 0


def cmd_actions_tree(args) -> int:
    space = _engine(args).actions.load()
    nodes = space_tree(space)
    if args.json:
        print(json.dumps({"tree": nodes}))
        return 0
    root = Tree("[bold]actions[/]")

    def add(branch: Tree, items: list[dict[str, Any]]) -> None:
        for item in items:
            tag = " [dim](built-in)[/]" if item["builtin"] else ""
            if item["kind"] == "folder":
                fallback = f" [dim]· fallback {item['fallback']}[/]" if item.get("fallback") else ""
                add(branch.add(f"[bold]{item['id']}/[/] {escape(_short(item['description'], 70))}{tag}{fallback}"), item["children"])
            else:
                state = " [yellow]draft[/]" if item["status"] == "draft" else ""
                branch.add(f"{item['id']} [dim]{item['type']} v{item['version']}[/]{state} {escape(_short(item['description'], 70))}{tag}")

    add(root, nodes)
    _print_tree(root)
    return 0


def cmd_actions_validate(args) -> int:
    engine = _engine(args)
    problems = engine.actions.validate()
    entries = len(engine.actions.load().entries)
    text = "\n".join(problems) if problems else f"valid: {entries} entries"
    _print(args, {"valid": not problems, "problems": problems, "entries": entries}, text)
    return 1 if problems else 0


def cmd_actions_add(args) -> int:
    space = _engine(args).actions
    fields = {k: v for k, v in {"name": args.name, "description": args.description, "parent": args.parent}.items() if v}
    try:
        if args.folder:
            if args.spec or args.code:
                raise UsageError("--folder takes no --spec or --code")
            if not args.description:
                raise UsageError("a folder needs --description: the router chooses by it")
            entry: Any = FolderSpec(id=args.id, **{"name": args.id, **fields}, fallback=args.fallback)
            added = space.add(entry)
        else:
            if not args.spec:
                raise UsageError("give --folder, or --spec FILE.json for an action")
            if args.fallback:
                raise UsageError("--fallback is a folder's: an action takes none")
            raw = json.loads(_read(args.spec))
            if not isinstance(raw, dict):
                raise UsageError(f"--spec must hold a JSON object (ActionSpec fields), not {type(raw).__name__}")
            entry = ActionSpec.model_validate({**raw, "id": args.id, **fields, "name": fields.get("name") or raw.get("name") or args.id})
            added = space.add(entry, code=_read(args.code) if args.code else "")
    except RecursionError:
        raise UsageError("--spec is nested too deeply") from None
    except (ValueError, OSError) as exc:
        if isinstance(exc, SpaceError):
            raise
        raise UsageError(str(exc).splitlines()[0] if not hasattr(exc, "errors") else f"invalid spec: {exc}") from None
    _print(args, {"added": added.model_dump()}, f"added {added.kind} {added.id} in {added.parent}")
    return 0


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


def cmd_actions_move(args) -> int:
    moved = _engine(args).actions.move(args.id, args.parent)
    _print(args, {"moved": moved.model_dump()}, f"moved {moved.id} to {moved.parent}")
    return 0


def cmd_actions_rm(args) -> int:
    removed = _engine(args).actions.remove(args.id)
    _print(args, {"removed": removed.id}, f"removed {removed.id} (its versions stay in storage)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
