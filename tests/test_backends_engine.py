"""The engine's invariants on every backend, against the real emulators (tests/emulators.py):

- 200 siblings finishing at the same instant resume their parent exactly once, with all 200 reports;
- re-delivering every node of a finished swarm (twice, concurrently) changes no stored byte;
- one blueprint may put each concern on a different backend;
- a user's own adapter (here SQLite) plugs in by dotted path or by a `swarm_core.backends`
  entry point, and keeps the same invariants.
"""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import FANOUT, REPO, make_engine, run_goal
from emulators import *  # noqa: F401,F403  (fresh_store and the session emulators)
from emulators import BACKENDS
from scripted import default_responder
from test_lifecycle import Recorder

from swarm_core.config import load_blueprint
from swarm_core.engine import Engine, Stores
from swarm_core.llm import FunctionTransport
from swarm_core.store import KeyNotFound, Store, check_key, open_store

pytestmark = pytest.mark.emulator

SIBLINGS = 200


class SQLiteStore(Store):
    """A user's own adapter: one SQLite file, a row per key with a write counter as its version.

    Each statement is atomic in SQLite, so `create` (INSERT OR IGNORE) and `swap`
    (UPDATE ... WHERE version = ?) hold across threads and processes alike.
    """

    def __init__(self, path: str = ""):
        self.uri = f"sqlite://{path}"
        self.db = sqlite3.connect(path or ":memory:", check_same_thread=False, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode = WAL")  # readers do not block the writer; commits stay durable
        self.db.execute("CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, data BLOB, version INTEGER)")
        self.lock = threading.Lock()  # one connection shared by this process's threads

    def _run(self, sql: str, *args) -> sqlite3.Cursor:
        with self.lock:
            return self.db.execute(sql, args)

    def read_versioned(self, key):
        row = self._run("SELECT data, version FROM objects WHERE key = ?", check_key(key)).fetchone()
        if row is None:
            raise KeyNotFound(f"{key} not found in {self.uri}")
        return bytes(row[0]), str(row[1])

    def read(self, key):
        return self.read_versioned(key)[0]

    def version(self, key):
        return self.read_versioned(key)[1]

    def write(self, key, data):
        self._run("INSERT INTO objects VALUES (?, ?, 1) ON CONFLICT(key) DO UPDATE "
                  "SET data = excluded.data, version = version + 1", check_key(key), bytes(data))

    def create(self, key, data):
        return self._run("INSERT OR IGNORE INTO objects VALUES (?, ?, 1)", check_key(key), bytes(data)).rowcount == 1

    def swap(self, key, data, expected_version):
        if not expected_version.isdigit():
            return False
        return self._run("UPDATE objects SET data = ?, version = version + 1 WHERE key = ? AND version = ?",
                         bytes(data), check_key(key), int(expected_version)).rowcount == 1

    def list(self, prefix):
        folder = prefix.strip("/") + "/" if prefix.strip("/") else ""
        rows = self._run("SELECT key FROM objects WHERE substr(key, 1, ?) = ? ORDER BY key", len(folder), folder)
        return [row[0] for row in rows]

    def delete(self, key):
        if self._run("DELETE FROM objects WHERE key = ?", check_key(key)).rowcount == 0:
            raise KeyNotFound(f"{key} not found in {self.uri}")


@pytest.fixture(params=BACKENDS + ["custom"])
def engine_store(request, fresh_store, tmp_path):
    """A fresh location on every backend, plus a user's adapter opened by dotted path."""
    if request.param == "custom":
        return f"{__name__}:SQLiteStore?{tmp_path / 'swarm.db'}"
    return fresh_store(request.param)


def everything(stores: Stores) -> dict[str, dict[str, bytes]]:
    """Every object of every distinct store the engine uses."""
    distinct = {id(s): s for s in (stores.state, stores.history, stores.actions, stores.memory)}
    return {s.uri: {k: s.read(k) for k in s.list("")} for s in distinct.values()}


def test_200_siblings_finish_at_once_and_the_parent_resumes_once(engine_store):
    dispatcher = Recorder()
    engine = make_engine(default_responder(subtasks=[f"part {i}" for i in range(SIBLINGS)]),
                         store=engine_store, blueprint=FANOUT, dispatcher=dispatcher)
    sid, _ = engine.load_goal("Fan out wide")
    engine.execute_node(*dispatcher.queue.pop())
    children, dispatcher.queue = dispatcher.queue, []
    assert len(children) == SIBLINGS
    barrier = threading.Barrier(SIBLINGS)

    def finish(delivery):
        barrier.wait()
        return engine.execute_node(*delivery)

    with ThreadPoolExecutor(SIBLINGS) as pool:
        statuses = list(pool.map(finish, children))
    assert statuses == ["done"] * SIBLINGS
    resumes = [bp for _, bp in dispatcher.queue if bp.node_id == "root"]
    assert len(resumes) == 1 and resumes[0].round == 1
    assert len(engine.read_join(sid, "root", 0)) == SIBLINGS
    assert engine.state.exists(f"swarms/{sid}/joins/root/0/resumed")
    while dispatcher.queue:  # the resumed manager hands all 200 reports to its supervisor
        engine.execute_node(*dispatcher.queue.pop(0))
    assert engine.status(sid)["status"] == "done"
    sup = next(e for e in engine.events(sid) if e.node_id == "root.1.0" and e.kind == "outcome")
    prompt = sup.llm_calls[0].messages[-1]["content"] + "\n"
    assert all(f"did part {i}\n" in prompt for i in range(SIBLINGS))
    assert [e.round for e in engine.events(sid) if e.kind == "resumed"] == [1, 2]
    # every leaf's usage reached the swarm's counters through the parent's one resume
    assert engine.counters(sid)[0].llm_calls == SIBLINGS + 2 == engine.status(sid)["usage"]["llm_calls"]


def test_redelivering_every_node_changes_nothing(engine_store):
    engine = make_engine(default_responder(subtasks=("a", "b", "c")), store=engine_store)
    sid = run_goal(engine)
    assert engine.status(sid)["status"] == "done"
    before = everything(engine.stores)
    deliveries = [n.blueprint.model_copy(update={"round": r}).model_dump()
                  for n in engine.nodes(sid) for r in range(n.blueprint.round + 2)]  # past, current, next round
    with ThreadPoolExecutor(16) as pool:  # every delivery twice, all at once
        list(pool.map(lambda bp: engine.execute_node(sid, bp), deliveries * 2))
    engine.resume(sid)
    assert engine.dispatcher.wait(30) and not engine.dispatcher.errors
    assert everything(engine.stores) == before


def test_each_concern_on_its_own_backend(fresh_store, tmp_path):
    uris = {"state": fresh_store("firestore"), "history": fresh_store("s3"),
            "actions": fresh_store("gcs"), "memory": fresh_store("azure")}
    blueprint = tmp_path / "blueprint.toml"
    blueprint.write_text(
        'name = "mixed"\n'
        'root_action = "fan_out"\n'
        f'action_dirs = ["{REPO / "blueprints/default/actions"}", "{FANOUT / "actions"}"]\n'
        "[stores]\n" + "".join(f'{concern} = "{uri}"\n' for concern, uri in uris.items()))
    bp = load_blueprint(blueprint)
    engine = Engine(bp, transport=FunctionTransport(default_responder(subtasks=[f"part {i}" for i in range(20)])))
    # each wrapped so that its network calls leave the greenlet runner's loop
    assert [type(s.inner).__name__ for s in (engine.stores.state, engine.stores.history, engine.stores.actions,
                                             engine.stores.memory)] == ["FirestoreStore", "S3Store", "GCSStore", "AzureStore"]
    sid = run_goal(engine, "Fan out over four clouds")
    assert engine.status(sid)["status"] == "done" and engine.status(sid)["nodes"] == 22
    state, history, memory = engine.stores.state, engine.stores.history, engine.stores.memory
    assert len(state.list(f"swarms/{sid}/nodes/")) == 22 and not state.list(f"swarms/{sid}/events/")
    events = history.list(f"swarms/{sid}/events/")
    assert len(events) >= 22 and history.list("") == events
    assert memory.list("") == [f"reports/{sid}.md"] and not engine.stores.actions.list("swarms/")
    assert memory.read(f"reports/{sid}.md").startswith(b"# Fan out over four clouds")
    # the same wiring given as a Stores object
    stores = Stores(**{concern: open_store(uri) for concern, uri in uris.items()})
    again = Engine(load_blueprint(FANOUT), stores=stores, transport=FunctionTransport(default_responder()))
    assert again.status(sid)["status"] == "done" and len(again.events(sid)) == len(engine.events(sid))


def test_a_users_adapter_by_dotted_path_and_by_entry_point(tmp_path, monkeypatch):
    db = tmp_path / "swarm.db"
    # an installed package's entry point, as `pip install` would leave it
    dist = tmp_path / "site" / "swarm_sqlite-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: swarm-sqlite\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[swarm_core.backends]\nsqlite = {__name__}:SQLiteStore\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for spec in (f"{__name__}:SQLiteStore?{db}", f"{__name__}.SQLiteStore?{db}", f"sqlite://{db}"):
        store = open_store(spec)
        assert isinstance(store, SQLiteStore) and store.uri == f"sqlite://{db}"
    # a blueprint naming it for one concern: state in SQLite, history on the file store
    blueprint = tmp_path / "blueprint.toml"
    blueprint.write_text(f'root_action = "fan_out"\naction_dirs = ["{REPO / "blueprints/default/actions"}", '
                         f'"{FANOUT / "actions"}"]\n[stores]\nstate = "sqlite://{db}"\n'
                         f'history = "file://{tmp_path / "history"}"\n')
    engine = Engine(load_blueprint(blueprint), transport=FunctionTransport(default_responder(subtasks=("a", "b", "c"))))
    assert type(engine.state.inner).__name__ == "SQLiteStore" and type(engine.history).__name__ == "FileStore"  # only SQLite offloaded
    sid = run_goal(engine)
    assert engine.status(sid)["status"] == "done"
    rows = sqlite3.connect(db).execute("SELECT count(*) FROM objects WHERE key LIKE ?", (f"swarms/{sid}/nodes/%",))
    assert rows.fetchone()[0] == 5
    assert engine.history.list(f"swarms/{sid}/events/") and not engine.state.list(f"swarms/{sid}/events/")
    fresh = make_engine(store=f"sqlite://{db}")  # another process's view: everything is in the file
    assert fresh.status(sid)["status"] == "done"

