"""The store under attack: poison values, torn reads, id reuse, kill -9, durability.

Cross-process tests coordinate through pipes and line protocols (a child says what
it has done; the parent acts on that), never through sleeps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synaptoroute import (
    AdaptiveRouter,
    HashingEncoder,
    InvalidInputError,
    MemoryStorage,
    NotADatabaseError,
    Route,
    SQLiteStorage,
    StorageError,
)
from synaptoroute.storage import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MIGRATIONS,
    SCHEMA_VERSION,
    ModelInfo,
    StoredRoute,
)

LIMIT_S = 60.0  # upper bound of every wait on a child; reaching it fails the test
MODEL = ModelInfo("m", 4)


def _nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for _ in range(depth - 1):
        doc = {"k": doc}
    return doc


POISON: list[tuple[dict[str, Any], str]] = [
    ({"k": "\ud800"}, "lone surrogates"),
    ({"\udfff": 1}, "lone surrogates"),
    ({"k": float("nan")}, "NaN"),
    ({"k": {1, 2}}, "JSON"),
    (_nested(MAX_METADATA_DEPTH + 1), "deeper"),
    (_nested(300), "deeper"),
    ({"k": "x" * MAX_METADATA_BYTES}, "bytes"),
    # JSON makes these keys strings (1 and "1" one key): the route read back would differ.
    ({"limits": {1: "one", "1": "uno", None: "n"}}, "keys must be strings, got 1"),
    ({"k": [{None: 1}]}, "keys must be strings, got None"),
    ({"k": ({True: 1},)}, "keys must be strings, got True"),
]


@pytest.mark.parametrize(("metadata", "message"), POISON)
def test_poison_metadata_is_refused_before_anything_is_written(
    tmp_path: Path, metadata: dict[str, Any], message: str
) -> None:
    path = tmp_path / "poison.db"
    for store in (SQLiteStorage(path), MemoryStorage()):
        router = AdaptiveRouter(HashingEncoder(), store)
        router.add_route(Route(name="x", utterances=["hello"], metadata={"ok": 1}))
        bad = Route.model_construct(name="x", utterances=["hello"], metadata=metadata)
        with pytest.raises(InvalidInputError, match=message):
            router.add_route(bad, replace=True)
        with pytest.raises(InvalidInputError, match=message):
            store.update_route(bad)
        with pytest.raises(InvalidInputError, match=message):
            store.put_routes([StoredRoute(bad, np.zeros((1, 4), np.float32))], MODEL)
        assert router.get_route("x").metadata == {"ok": 1}
        assert [s.route.metadata for s in store.load()] == [{"ok": 1}]
    reopened = SQLiteStorage(path)
    assert [s.route.metadata for s in reopened.load()] == [{"ok": 1}]


def test_an_utterance_that_is_not_unicode_is_refused_by_the_store(tmp_path: Path) -> None:
    for store in (SQLiteStorage(tmp_path / "u.db"), MemoryStorage()):
        ok = Route(name="x", utterances=["hello"])
        store.put_routes([StoredRoute(ok, np.zeros((1, 4), np.float32))], MODEL)
        with pytest.raises(InvalidInputError, match="lone surrogates"):
            store.add_utterances("x", ["a\ud800b"], np.zeros((1, 4), np.float32), MODEL)
        assert [s.route.utterances for s in store.load()] == [["hello"]]


def test_metadata_at_the_limits_is_stored_and_read_back(tmp_path: Path) -> None:
    store = SQLiteStorage(tmp_path / "limits.db")
    deep = _nested(MAX_METADATA_DEPTH)
    big = {"k": "é" * ((MAX_METADATA_BYTES - 16) // 2)}
    for i, metadata in enumerate([deep, big, {"emoji": "\U0001f600"}]):
        route = Route(name=f"r{i}", utterances=["a"], metadata=metadata)
        store.put_routes([StoredRoute(route, np.zeros((1, 4), np.float32))], MODEL)
    assert [s.route.metadata for s in SQLiteStorage(store.path).load()] == [
        deep,
        big,
        {"emoji": "\U0001f600"},
    ]


def test_a_route_stored_before_the_metadata_limits_is_named_when_changed(
    tmp_path: Path,
) -> None:
    # 0.2.0 stored any metadata. Such a route opens and routes; a change of it (a
    # threshold set, by a caller who gave no metadata) was refused as "metadata is
    # 100012 bytes as JSON", naming neither the route nor the way out.
    path = tmp_path / "old.db"
    router = AdaptiveRouter(HashingEncoder(), SQLiteStorage(path))
    router.add_route(Route(name="big", utterances=["hello there"]))
    router.close()
    raw = sqlite3.connect(path)
    with raw:
        big = json.dumps({"k": "x" * MAX_METADATA_BYTES})
        raw.execute("UPDATE routes SET metadata = ? WHERE name = 'big'", (big,))
    raw.close()
    router = AdaptiveRouter(HashingEncoder(), SQLiteStorage(path))
    assert router.query("hello there").name == "big"
    with pytest.raises(InvalidInputError, match=r"route 'big': metadata is \d+ bytes") as info:
        router.set_threshold("big", 0.5)
    assert "changed only by replacing it with smaller metadata" in str(info.value)
    router.add_route(Route(name="big", utterances=["hello there"], metadata={}), replace=True)
    assert router.set_threshold("big", 0.5).threshold == 0.5
    router.close()


def test_route_ids_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "ids.db"
    router = AdaptiveRouter(HashingEncoder(), SQLiteStorage(path))
    router.add_routes([Route(name="a", utterances=["x"]), Route(name="b", utterances=["y", "z"])])
    db = sqlite3.connect(path)
    (b_id,) = db.execute("SELECT id FROM routes WHERE name='b'").fetchone()
    (last_utterance,) = db.execute("SELECT max(id) FROM utterances").fetchone()
    router.delete_route("b")  # the highest ids: a plain rowid table would hand them out again
    router.add_route(Route(name="c", utterances=["w"]))
    (c_id,) = db.execute("SELECT id FROM routes WHERE name='c'").fetchone()
    (c_utterance,) = db.execute("SELECT max(id) FROM utterances").fetchone()
    db.close()
    assert c_id > b_id
    assert c_utterance > last_utterance


def _version_2_store(path: Path, route: tuple[int, str, str]) -> sqlite3.Connection:
    """A store of schema 2 (0.2.0) holding ``route`` (id, name, metadata), left open
    for more rows; the caller commits and closes."""
    db = sqlite3.connect(path)
    for step in MIGRATIONS[:2]:
        step(db)
    db.execute("INSERT INTO meta(key, value) VALUES ('app', 'synaptoroute')")
    db.execute("INSERT INTO meta(key, value) VALUES ('model_id', 'm'), ('dimension', '4')")
    db.execute("INSERT INTO routes(id, name, metadata) VALUES (?, ?, ?)", route)
    db.execute("PRAGMA user_version=2")
    return db


def test_a_version_2_store_is_migrated_with_its_routes(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    db = _version_2_store(path, (7, "old", '{"a": 1}'))
    vector = np.ones(4, np.float32).tobytes()
    db.execute("INSERT INTO utterances(route_id, text, vector) VALUES (7, 'hi', ?)", (vector,))
    db.commit()
    db.close()
    store = SQLiteStorage(path)
    assert store.schema_version == SCHEMA_VERSION == 4
    (loaded,) = store.load()
    assert loaded.route == Route(name="old", utterances=["hi"], metadata={"a": 1})
    assert loaded.vectors.tolist() == [[1.0] * 4]
    # Migrated stores record what a commit touches (schema 4): a follower sees it.
    follower = SQLiteStorage(path, poll_interval=None)
    follower.load()
    got: list[Any] = []
    follower.watch(got.extend)
    store.add_utterances("old", ["hello"], np.ones((1, 4), np.float32), ModelInfo("m", 4))
    assert follower.poll()
    assert [s.route.utterances for c in got for s in c.routes] == [["hi", "hello"]]
    follower.close()
    store.delete_route("old")  # foreign keys are back on: the utterance goes with it
    check = sqlite3.connect(path)
    assert check.execute("SELECT count(*) FROM utterances").fetchone() == (0,)
    assert check.execute("PRAGMA foreign_key_list(utterances)").fetchone()[2] == "routes"
    check.close()


def test_a_version_2_route_of_the_negatives_name_stops_the_migration(tmp_path: Path) -> None:
    # 0.2.0 took any name; the current code read such a route as negative examples:
    # hidden (its metadata too) and rejecting the queries it matched, silently.
    path = tmp_path / "v2.db"
    db = _version_2_store(path, (1, "__negatives__", "{}"))
    db.commit()
    db.close()
    with pytest.raises(StorageError, match="holds a route named '__negatives__'") as refused:
        SQLiteStorage(path)
    assert str(path) in str(refused.value)  # which file to take back to 0.2.0
    check = sqlite3.connect(path)  # nothing migrated: the version that wrote it can rename it
    assert check.execute("PRAGMA user_version").fetchone() == (2,)
    assert check.execute("SELECT name FROM routes").fetchall() == [("__negatives__",)]
    check.close()


def test_a_store_made_by_another_process_while_this_one_looks_is_no_foreign_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Opening read the file's objects, then its schema version, in two reads: another
    # process creating the store between them made it look half made (a version, no
    # tables) and the open failed with "not a synaptoroute store" (seen in CI).
    path = tmp_path / "new.db"
    real_connect = sqlite3.connect
    other: list[str] = []

    class Looking(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            cursor = super().execute(sql, *args)
            if sql.startswith("SELECT type, name FROM sqlite_master") and not other:
                try:  # the other process creates the store now, between the reads
                    SQLiteStorage(path, timeout=0).close()
                    other.append("created it")
                except StorageError:
                    other.append("waited")  # the reads hold the file: it must wait
            return cursor

    connections: list[int] = []

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connections.append(1)
        if len(connections) == 1:  # this store's; the other's is a plain one
            kwargs["factory"] = Looking
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    store = SQLiteStorage(path)
    assert other == ["waited"]
    assert store.schema_version == SCHEMA_VERSION
    store.close()
    monkeypatch.undo()
    SQLiteStorage(path).close()  # and the other opens it once it may


def test_concurrent_creation_of_a_new_store_succeeds_everywhere(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    count = 8
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []
    stores: list[SQLiteStorage] = []
    lock = threading.Lock()

    def open_it() -> None:
        barrier.wait(LIMIT_S)
        try:
            store = SQLiteStorage(path)
        except BaseException as exc:  # collected and asserted below
            with lock:
                errors.append(exc)
        else:
            with lock:
                stores.append(store)

    threads = [threading.Thread(target=open_it) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LIMIT_S)
    assert errors == []
    assert len(stores) == count
    assert {s.schema_version for s in stores} == {SCHEMA_VERSION}
    for s in stores:
        s.close()


def test_durability_setting_is_applied_and_checked(tmp_path: Path) -> None:
    assert SQLiteStorage(tmp_path / "f.db")._db.execute("PRAGMA synchronous").fetchone() == (2,)
    normal = SQLiteStorage(tmp_path / "n.db", durability="normal")
    assert normal._db.execute("PRAGMA synchronous").fetchone() == (1,)
    with pytest.raises(InvalidInputError, match="durability"):
        SQLiteStorage(tmp_path / "x.db", durability="off")  # type: ignore[arg-type]


_SYNC_SCRIPT = """
import sys
from synaptoroute import AdaptiveRouter, HashingEncoder, Route, SQLiteStorage
path, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = SQLiteStorage(path) if mode == "default" else SQLiteStorage(path, durability=mode)
router = AdaptiveRouter(HashingEncoder(), store)
router.add_route(Route(name="warm", utterances=["x"]))
print("BEGIN", flush=True)
for i in range(count):
    router.add_route(Route(name=f"r{i}", utterances=[f"text {i}"]))
print("END", flush=True)
"""


def _syncs_per_change(tmp_path: Path, mode: str, count: int) -> int:
    """fsync/fdatasync calls made by ``count`` acknowledged changes, counted by strace."""
    script = tmp_path / "sync.py"
    script.write_text(_SYNC_SCRIPT)
    trace = tmp_path / f"{mode}.trace"
    db = tmp_path / f"{mode}.db"
    subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=fsync,fdatasync,write",
            "-o",
            str(trace),
            sys.executable,
            str(script),
            str(db),
            mode,
            str(count),
        ],
        check=True,
        timeout=LIMIT_S * 2,
        capture_output=True,
    )
    # Count only between the markers the script writes to stdout (fd 1).
    lines = trace.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.search(r'write\(1, "BEGIN', line))
    end = next(i for i, line in enumerate(lines) if re.search(r'write\(1, "END', line))
    return sum(1 for line in lines[start:end] if re.search(r"\b(fsync|fdatasync)\(", line))


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (apt-get install strace)")
def test_every_acknowledged_change_is_synced_by_default(tmp_path: Path) -> None:
    count = 20
    full = _syncs_per_change(tmp_path, "default", count)
    normal = _syncs_per_change(tmp_path, "normal", count)
    assert full >= count  # at least one sync per commit: a power loss cannot roll it back
    assert normal < count  # the cheaper mode really is different (the test can tell)


_WRITER_SCRIPT = """
import sys
from synaptoroute import AdaptiveRouter, HashingEncoder, Route, SQLiteStorage
router = AdaptiveRouter(HashingEncoder(), SQLiteStorage(sys.argv[1]))
for i in range(100_000):
    router.add_route(Route(name=f"r{i}", utterances=[f"text {i}", f"more {i}"]))
    print(f"r{i}", flush=True)
"""


def test_kill_9_loses_no_acknowledged_change(tmp_path: Path) -> None:
    path = tmp_path / "kill.db"
    for cycle in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER_SCRIPT.replace("r{i}", f"c{cycle}-{{i}}"), str(path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        acknowledged = [child.stdout.readline().strip() for _ in range(15 + cycle)]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(LIMIT_S)
        loaded = {s.route.name: s for s in SQLiteStorage(path).load()}
        for name in acknowledged:
            assert name in loaded
            assert len(loaded[name].route.utterances) == 2
            assert loaded[name].vectors.shape == (2, HashingEncoder().dimension)


_CHURN_SCRIPT = """
import sys
import numpy as np
from synaptoroute import Route, SQLiteStorage
from synaptoroute.storage import ModelInfo, StoredRoute
from pathlib import Path
store = SQLiteStorage(sys.argv[1])
stop = Path(sys.argv[2])
model = ModelInfo("m", 4)
print("ready", flush=True)
# Until the parent has done its loads (the bound only guards against a hang).
for i in range(1_000_000):
    if stop.exists():
        break
    # Delete and re-create both routes: with reused ids and separate reads, a reader
    # would see "hot" with no utterances or with "cold"'s.
    for name, value in (("hot", 1.0), ("cold", 2.0)):
        store.delete_route(name)
        route = Route(name=name, utterances=[f"{name} a", f"{name} b"])
        store.put_routes([StoredRoute(route, np.full((2, 4), value, np.float32))], model)
print(i, flush=True)
"""


def test_loads_are_consistent_snapshots_while_another_process_writes(tmp_path: Path) -> None:
    path = tmp_path / "torn.db"
    store = SQLiteStorage(path)
    for name, value in (("hot", 1.0), ("cold", 2.0)):
        route = Route(name=name, utterances=[f"{name} a", f"{name} b"])
        store.put_routes([StoredRoute(route, np.full((2, 4), value, np.float32))], MODEL)
    stop = tmp_path / "stop"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHURN_SCRIPT, str(path), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    try:
        # The child churns until told to stop: every load overlaps its writes,
        # however the two processes are scheduled.
        for _ in range(2_000):
            for item in store.load():
                name = item.route.name
                expected = 1.0 if name == "hot" else 2.0
                assert item.route.utterances == [f"{name} a", f"{name} b"]
                assert item.vectors.tolist() == [[expected] * 4] * 2
    finally:
        stop.touch()
        child.wait(LIMIT_S * 2)
    assert child.returncode == 0
    assert int(child.stdout.read()) < 999_999  # stopped by the parent, not by its bound


@pytest.mark.parametrize(
    "dsn",
    ["postgresql://bob:hunter2@[db/x", "postgresql://bob:hunter2@db/x?hunter2", "hunter2 x"],
)
def test_a_bad_dsn_is_refused_without_showing_its_password(dsn: str) -> None:
    pytest.importorskip("psycopg")
    from synaptoroute import StorageError
    from synaptoroute.postgres import PostgresStorage

    with pytest.raises(StorageError, match="not a valid PostgreSQL DSN") as caught:
        PostgresStorage(dsn)
    assert "hunter2" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_poison_committed_by_an_older_version_is_read_back_repaired(tmp_path: Path) -> None:
    path = tmp_path / "old-poison.db"
    store = SQLiteStorage(path)
    route = Route(name="x", utterances=["a"], metadata={"ok": "é"})
    store.put_routes([StoredRoute(route, np.zeros((1, 4), np.float32))], MODEL)
    store.close()
    db = sqlite3.connect(path)  # what 0.2 wrote for {"k": "\ud800"}: an ASCII escape
    db.execute("""UPDATE routes SET metadata='{"k": "a\\ud800b", "ok": "\\u00e9"}'""")
    db.commit()
    db.close()
    (loaded,) = SQLiteStorage(path).load()
    assert loaded.route.metadata == {"k": "a\ufffdb", "ok": "é"}
    json.dumps(loaded.route.metadata, ensure_ascii=False).encode("utf-8")  # serialisable


def test_a_busy_open_is_tried_again_not_called_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Opening a new file while other connections switch it to WAL can answer "database
    # is locked" without SQLite's busy handler waiting: that is contention, so the
    # open is tried again (it was a NotADatabaseError, and failed a CI run once).
    real_open = SQLiteStorage._open
    calls: list[int] = []

    def busy_twice(self: SQLiteStorage) -> None:
        calls.append(1)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        real_open(self)

    monkeypatch.setattr(SQLiteStorage, "_open", busy_twice)
    store = SQLiteStorage(tmp_path / "new.db")
    assert len(calls) == 3 and store.schema_version == SCHEMA_VERSION
    store.close()

    def always_busy(self: SQLiteStorage) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(SQLiteStorage, "_open", always_busy)
    with pytest.raises(StorageError, match="stayed locked") as caught:
        SQLiteStorage(tmp_path / "other.db", timeout=0.05)
    assert not isinstance(caught.value, NotADatabaseError)

    def corrupt(self: SQLiteStorage) -> None:
        raise sqlite3.DatabaseError("file is not a database")

    monkeypatch.setattr(SQLiteStorage, "_open", corrupt)
    with pytest.raises(NotADatabaseError, match="not a readable SQLite database"):
        SQLiteStorage(tmp_path / "third.db")


def test_a_write_sqlite_rolled_back_itself_reports_its_own_error(tmp_path: Path) -> None:
    # SQLite ends the transaction itself on some failures (an interrupt, some I/O
    # errors); the store's ROLLBACK then raised "no transaction is active" over the cause.
    store = SQLiteStorage(tmp_path / "r.db")
    with pytest.raises(sqlite3.OperationalError, match=r"^interrupted$"):  # noqa: SIM117
        with store._transaction() as tx:
            tx.execute("ROLLBACK")  # as SQLite's own
            raise sqlite3.OperationalError("interrupted")
    assert not store._db.in_transaction
    store.put_routes(
        [StoredRoute(Route(name="a", utterances=["x"]), np.ones((1, 4), np.float32))],
        MODEL,
    )
    assert [item.route.name for item in store.load()] == ["a"]
    store.close()


@pytest.mark.parametrize(
    "target",
    [
        "postgresql+psycopg://pwuser:TopSecretPW@127.0.0.1:1/db",
        "PostgreSQL://pwuser:TopSecretPW@127.0.0.1:1/db",
        "host=127.0.0.1 port=1 user=pwuser password=TopSecretPW dbname=db",
        "dbname=db password=TopSecretPW",
    ],
)
def test_a_server_named_another_way_is_no_sqlite_path(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Opened as a path, it made a file (and folders) named after it, password included,
    # and the router served an empty store instead of the database.
    from synaptoroute.storage import open_storage

    monkeypatch.chdir(tmp_path)
    for opening in (SQLiteStorage, open_storage):
        with pytest.raises(InvalidInputError, match="not shown") as exc:
            opening(target)
        assert "TopSecretPW" not in str(exc.value)
    assert list(tmp_path.iterdir()) == []
    # A file of such a name, asked for as one, still opens; so does a path that holds
    # "user=" but is no connection string from end to end.
    SQLiteStorage("./host=a.db").close()
    SQLiteStorage("./a user=b.db").close()
    assert (tmp_path / "host=a.db").exists() and (tmp_path / "a user=b.db").exists()
