from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synaptoroute import (
    AdaptiveRouter,
    Encoder,
    HashingEncoder,
    InvalidInputError,
    MemoryStorage,
    ModelMismatchError,
    NotADatabaseError,
    Route,
    RouteNotFoundError,
    SQLiteStorage,
    StorageError,
)
from synaptoroute.storage import SCHEMA_VERSION, ModelInfo, StoredRoute

ROUTES = [
    Route(name="billing", utterances=["I need a refund", "Where is my receipt?"], threshold=0.4),
    Route(
        name="support", utterances=["The app crashes", "I can't log in"], metadata={"team": "t2"}
    ),
    Route(name="weather", utterances=["Will it rain tomorrow?"], description="forecasts"),
]
QUERIES = ["How do I get my money back?", "my login fails", "is it sunny today", "play jazz"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip_in_a_fresh_process_without_encoding(tmp_path: Path, encoder: Encoder) -> None:
    db = tmp_path / "nested" / "dir" / "routes.sqlite"  # parent folders are created
    router = AdaptiveRouter(encoder, SQLiteStorage(db))
    router.add_routes(ROUTES)
    router.add_utterances("weather", ["Do I need an umbrella?"])
    router.delete_utterances("billing", ["Where is my receipt?"])
    router.set_threshold("support", 0.45)
    expected = [m.model_dump() for m in router.query_batch(QUERIES)]
    router.close()

    script = f"""
import json
from synaptoroute import AdaptiveRouter, Encoder, SQLiteStorage
enc = Encoder()
router = AdaptiveRouter(enc, SQLiteStorage({str(db)!r}))
loaded_on_open = enc.loaded  # encoding needs the model: unloaded, nothing encoded
routes = [r.model_dump() for r in router.list_routes()]
matches = [m.model_dump() for m in router.query_batch({QUERIES!r})]
print(json.dumps({{"loaded": loaded_on_open, "routes": routes, "matches": matches}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["loaded"] is False  # reopening never calls the encoder
    # identical decisions; scores equal up to float rounding between processes
    for got, want in zip(data["matches"], expected, strict=True):
        assert {k: v for k, v in got.items() if "score" not in k} == {
            k: v for k, v in want.items() if "score" not in k
        }
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
    by_name = {r["name"]: r for r in data["routes"]}
    assert list(by_name) == ["billing", "support", "weather"]
    assert by_name["billing"]["utterances"] == ["I need a refund"]
    assert by_name["billing"]["threshold"] == 0.4
    assert by_name["support"]["threshold"] == 0.45
    assert by_name["support"]["metadata"] == {"team": "t2"}
    assert by_name["weather"]["description"] == "forecasts"
    assert by_name["weather"]["utterances"] == ["Will it rain tomorrow?", "Do I need an umbrella?"]


def test_sqlite_settings_and_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SQLiteStorage(tmp_path / "s.db")
    assert store.schema_version == SCHEMA_VERSION
    mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert store.model_info() is None
    store.close()
    never_waits = SQLiteStorage(tmp_path / "s.db", timeout=0)
    assert never_waits._timeout == 0.0  # 0: never wait
    never_waits.close()
    for bad in (-1, "10", True, float("nan")):
        with pytest.raises(InvalidInputError, match="timeout must be a finite number"):
            SQLiteStorage(tmp_path / "t.db", timeout=bad)  # type: ignore[arg-type]
    # Past SQLite's int milliseconds the busy timeout wrapped to 0: never wait.
    with pytest.raises(InvalidInputError, match="timeout must be at most 2147483 seconds"):
        SQLiteStorage(tmp_path / "t.db", timeout=3e6)
    assert not (tmp_path / "t.db").exists()  # refused before the file was made
    for empty in ("", "  "):
        with pytest.raises(InvalidInputError, match="needs a file path"):
            SQLiteStorage(empty)

    # A SQLite URI was opened as a path: a folder "file:" and a store in it.
    for uri, hint in (
        ("file:///srv/my%20routes.db?mode=ro", "'/srv/my routes.db'"),
        ("FILE:routes.db?mode=ro", "'./FILE:routes.db?mode=ro' for a file named so"),
    ):
        with pytest.raises(InvalidInputError, match="a file path, not a SQLite URI") as info:
            SQLiteStorage(uri)
        assert f"pass the path itself ({hint})" in str(info.value)
    folder = tmp_path / "here"
    folder.mkdir()
    monkeypatch.chdir(folder)
    with pytest.raises(InvalidInputError, match=r"\./file:x\.db"):
        SQLiteStorage("file:x.db")
    SQLiteStorage("./file:x.db").close()  # a file named so, when meant
    assert sorted(p.name for p in folder.iterdir()) == ["file:x.db"]


def test_old_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    from synaptoroute.storage import MIGRATIONS

    MIGRATIONS[0](db)
    db.execute("INSERT INTO meta(key, value) VALUES ('app', 'synaptoroute')")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    store = SQLiteStorage(path)
    assert store.schema_version == SCHEMA_VERSION
    store.set_state("policy", {"threshold": 0.3})
    assert store.get_state("policy") == {"threshold": 0.3}


def test_model_mismatch_names_both_and_can_reencode(tmp_path: Path, encoder: Encoder) -> None:
    path = tmp_path / "m.db"
    hashing = HashingEncoder(dimension=64)
    router = AdaptiveRouter(hashing, SQLiteStorage(path))
    router.add_routes(ROUTES)
    router.close()
    before = sha(path)
    with pytest.raises(ModelMismatchError) as info:
        AdaptiveRouter(encoder, SQLiteStorage(path))
    message = str(info.value)
    assert "hashing-bow-64" in message and "64" in message
    assert encoder.model_id in message and "384" in message
    assert "reencode=True" in message
    assert isinstance(info.value, ValueError)
    assert sha(path) == before  # nothing written
    router = AdaptiveRouter(encoder, SQLiteStorage(path), reencode=True)
    assert router.query("How do I get my money back?").name == "billing"
    router.close()
    assert SQLiteStorage(path).model_info() == ModelInfo(encoder.model_id, 384)


def test_corrupt_file_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not sqlite at all" * 100)
    before = sha(path)
    with pytest.raises(NotADatabaseError, match="left untouched"):
        SQLiteStorage(path)
    assert sha(path) == before
    assert not Path(str(path) + "-wal").exists()


@pytest.mark.parametrize(
    "setup",
    [
        "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)",
        # Another application's database need not hold a table: a schema version or a
        # view says the file is not empty, and it must not be turned into a store.
        "PRAGMA user_version=7",
        "PRAGMA user_version=3",
        "CREATE VIEW answers AS SELECT 42 AS x",
    ],
)
def test_foreign_sqlite_database_is_refused_and_untouched(tmp_path: Path, setup: str) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute(setup)
    db.commit()
    db.close()
    before = sha(path)
    with pytest.raises(NotADatabaseError, match="not a synaptoroute store"):
        SQLiteStorage(path)
    assert sha(path) == before
    assert isinstance(NotADatabaseError("x"), StorageError)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    SQLiteStorage(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StorageError, match="newer"):
        SQLiteStorage(path)


def test_failed_write_leaves_store_and_router_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "atomic.db"
    router = AdaptiveRouter(HashingEncoder(), SQLiteStorage(path))
    router.add_route(ROUTES[0])
    other = sqlite3.connect(path, timeout=0)
    other.execute("BEGIN EXCLUSIVE")  # another writer holds the lock
    router.storage._db.execute("PRAGMA busy_timeout=50")  # type: ignore[attr-defined]
    with pytest.raises(StorageError, match="nothing was written"):
        router.add_route(ROUTES[1])
    other.rollback()
    other.close()
    assert router.route_names == ["billing"]
    assert router.query("The app crashes").candidate == "billing"
    fresh = AdaptiveRouter(HashingEncoder(), SQLiteStorage(path))
    assert fresh.route_names == ["billing"]


def test_add_routes_is_one_transaction(tmp_path: Path) -> None:
    # A real SQLite failure partway through a batch: a trigger refuses the third route.
    path = tmp_path / "batch.db"
    router = AdaptiveRouter(HashingEncoder(), SQLiteStorage(path))
    router.add_route(ROUTES[2])
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON routes WHEN NEW.name = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
    )
    db.commit()
    db.close()
    boom = Route(name="boom", utterances=["kaboom"])
    with pytest.raises(StorageError, match=r"refused by a trigger.*nothing was written"):
        router.add_routes([ROUTES[0], ROUTES[1], boom])
    assert router.route_names == ["weather"]
    assert AdaptiveRouter(HashingEncoder(), SQLiteStorage(path)).route_names == ["weather"]
    router.add_routes([ROUTES[0], ROUTES[1]])  # without the refused route: all land
    fresh = AdaptiveRouter(HashingEncoder(), SQLiteStorage(path))
    assert sorted(fresh.route_names) == ["billing", "support", "weather"]


def test_a_failed_commit_is_rolled_back_and_the_store_goes_on(tmp_path: Path) -> None:
    # A real COMMIT failure: a deferred foreign key is checked at COMMIT, which then
    # fails and leaves the transaction open. Without a rollback every later write
    # failed with "cannot start a transaction within a transaction".
    path = tmp_path / "commit.db"
    store = SQLiteStorage(path)
    router = AdaptiveRouter(HashingEncoder(), store)
    router.add_route(ROUTES[0])

    def orphan(tx: sqlite3.Connection) -> None:
        tx.execute("PRAGMA defer_foreign_keys=ON")
        tx.execute("INSERT INTO utterances(route_id, text, vector) VALUES (999, 'x', x'00')")

    with pytest.raises(StorageError, match=r"FOREIGN KEY.*nothing was written"):
        store._write(orphan)
    assert not store._db.in_transaction
    router.add_route(ROUTES[1])
    fresh = AdaptiveRouter(HashingEncoder(), SQLiteStorage(path))
    assert sorted(fresh.route_names) == sorted([ROUTES[0].name, ROUTES[1].name])


def test_memory_put_routes_checks_every_route_before_writing() -> None:
    store = MemoryStorage()
    model = ModelInfo("m", 4)
    good = StoredRoute(ROUTES[0], np.zeros((2, 4), np.float32))
    bad = StoredRoute(ROUTES[1], np.zeros((1, 4), np.float32))  # two utterances, one vector
    with pytest.raises(StorageError, match="shape"):
        store.put_routes([good, bad], model)
    assert store.load() == [] and store.model_info() is None
    store.put_routes([good], model)
    assert [s.route.name for s in store.load()] == ["billing"]


def test_storage_errors_for_unknown_routes(tmp_path: Path) -> None:
    for store in (SQLiteStorage(tmp_path / "u.db"), MemoryStorage()):
        with pytest.raises(RouteNotFoundError):
            store.delete_route("ghost")
        with pytest.raises(RouteNotFoundError):
            store.add_utterances("ghost", ["x"], np.zeros((1, 4), np.float32), ModelInfo("m", 4))
        with pytest.raises(StorageError, match="shape"):
            store.put_route(
                Route(name="a", utterances=["x"]), np.zeros((2, 4), np.float32), ModelInfo("m", 4)
            )


def test_memory_storage_is_the_default(encoder: Encoder) -> None:
    router = AdaptiveRouter(encoder)
    assert isinstance(router.storage, MemoryStorage)
    router.add_route(ROUTES[0])
    again = AdaptiveRouter(encoder, router.storage)  # shares the in-memory store
    assert again.route_names == ["billing"]


def test_reopened_router_takes_the_loaded_vectors_without_a_copy(
    tmp_path: Path, encoder: Encoder
) -> None:
    # Opening a store writes its vectors once: the index takes the loader's buffer.
    path = tmp_path / "routes.db"
    first = AdaptiveRouter(encoder, SQLiteStorage(path))
    first.add_routes(ROUTES)
    first.add_utterances("weather", ["Do I need an umbrella?"])
    expected = [m.model_dump() for m in first.query_batch(QUERIES)]
    first.close()

    reopened = AdaptiveRouter(encoder, SQLiteStorage(path))
    assert [m.model_dump() for m in reopened.query_batch(QUERIES)] == expected
    stats = reopened.index_stats
    assert stats.rows_taken == 6 and stats.rows_written == 0
    # Changes after the opening write into the taken buffer's free rows.
    reopened.add_route(Route(name="music", utterances=["play some jazz", "put on a song"]))
    reopened.add_utterances("billing", ["refund my order"])
    reopened.delete_utterances("support", ["The app crashes"])
    assert reopened.query("play jazz").name == "music"
    assert reopened.query("I want a refund for my order").name == "billing"
    assert reopened.index_stats.rows_written == 3
    changed = [m.model_dump() for m in reopened.query_batch(QUERIES)]
    reopened.close()

    # The store holds what the router changed, and a third opening answers the same.
    third = AdaptiveRouter(encoder, SQLiteStorage(path))
    assert [m.model_dump() for m in third.query_batch(QUERIES)] == changed
    assert third.index_stats.rows_taken == 8
    third.close()


def test_stored_vector_of_the_wrong_size_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "routes.db"
    store = SQLiteStorage(path)
    store.put_routes([StoredRoute(ROUTES[2], np.ones((1, 8), np.float32))], ModelInfo("hash", 8))
    store.close()
    for blobs in ([b"\0" * 12], [b"\0" * 28, b"\0" * 36]):  # the second: 2 x 32 bytes in all
        with sqlite3.connect(path) as db:
            db.execute("DELETE FROM utterances")
            db.executemany(
                "INSERT INTO utterances(route_id, text, vector) VALUES (1, ?, ?)",
                [(f"u{i}", blob) for i, blob in enumerate(blobs)],
            )
        db.close()
        with pytest.raises(StorageError, match="not 8 float32s"):
            SQLiteStorage(path).load()


def test_a_store_path_with_a_tilde_is_the_home_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "~" was expanded to make the folder but not to open the file: the open failed
    # ("unable to open database file") and left the empty folder behind (a store path
    # from an environment variable is never expanded by a shell).
    monkeypatch.setenv("HOME", str(tmp_path))
    store = SQLiteStorage("~/sub/routes.db")
    assert store.file == str(tmp_path / "sub" / "routes.db")
    store.put_routes(
        [StoredRoute(Route(name="a", utterances=["x"]), np.ones((1, 4), np.float32))],
        ModelInfo("m", 4),
    )
    store.close()
    assert [item.route.name for item in SQLiteStorage(tmp_path / "sub" / "routes.db").load()] == [
        "a"
    ]


@pytest.mark.parametrize("content", [b"\n", b"x", b"{" * 99])
def test_a_file_too_short_to_be_a_database_is_refused_and_untouched(
    tmp_path: Path, content: bytes
) -> None:
    # SQLite reads a one-byte file (echo > routes.db) as empty: it was made a new
    # store, by read-only commands too.
    path = tmp_path / "stub.db"
    path.write_bytes(content)
    with pytest.raises(NotADatabaseError, match=r"shorter than a SQLite header.*left untouched"):
        SQLiteStorage(path)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stub.db"]
    empty = tmp_path / "empty.db"
    empty.touch()  # an empty file is a new store, as documented
    SQLiteStorage(empty).close()


@pytest.mark.parametrize("dimension", ["abc", "-4", "0", None])
def test_a_damaged_model_record_is_a_storage_error_naming_the_store(
    tmp_path: Path, dimension: str | None
) -> None:
    # int() of it raised a bare ValueError, or a KeyError (a RouteNotFoundError's
    # parent) for a missing row, naming no store.
    path = _store_with_meta(tmp_path, "dimension", dimension)
    damaged = SQLiteStorage(path)
    with pytest.raises(StorageError, match=r"routes\.db'\) records a damaged model"):
        damaged.model_info()
    with pytest.raises(StorageError, match="records a damaged model"):
        damaged.load()
    damaged.close()


def test_a_store_recording_an_empty_model_id_is_read_not_damaged(tmp_path: Path) -> None:
    # 0.2 stored ids unchecked, an empty one too: such a store must still move to a
    # model of its own (it is a model mismatch, not damage).
    path = _store_with_meta(tmp_path, "model_id", "")
    assert SQLiteStorage(path).model_info() == ModelInfo("", 4)


def _store_with_meta(tmp_path: Path, key: str, value: str | None) -> Path:
    """A store of one 4-d route whose ``meta`` row ``key`` was then set to ``value``
    (``None``: deleted) by an outside tool."""
    path = tmp_path / "routes.db"
    store = SQLiteStorage(path)
    route = Route(name="a", utterances=["x"])
    store.put_routes([StoredRoute(route, np.ones((1, 4), np.float32) / 2)], ModelInfo("m", 4))
    store.close()
    with sqlite3.connect(path) as db:
        if value is None:
            db.execute("DELETE FROM meta WHERE key=?", (key,))
        else:
            db.execute("UPDATE meta SET value=? WHERE key=?", (value, key))
    db.close()
    return path


def test_a_store_path_through_a_file_is_a_storage_error(tmp_path: Path) -> None:
    # mkdir raised a bare FileExistsError (the CLI: "error: [Errno 17] File exists").
    (tmp_path / "plain").write_text("x")
    with pytest.raises(StorageError, match="its folder cannot be made"):
        SQLiteStorage(tmp_path / "plain" / "routes.db")


def test_a_store_on_a_read_only_mount_is_said_not_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a read-only mount SQLite cannot make the -wal and -shm files and says it
    # cannot open the file (SQLITE_CANTOPEN), which read as a corrupt database. A
    # mount needs privileges tests do not have: SQLite's answer and the folder's
    # access are played here.
    import synaptoroute.storage.sqlite as sqlite_module

    path = tmp_path / "routes.db"
    SQLiteStorage(path).close()
    cantopen = sqlite3.OperationalError("unable to open database file")
    cantopen.sqlite_errorcode = 14  # type: ignore[attr-defined]

    def refuse(self: SQLiteStorage) -> None:
        raise cantopen

    monkeypatch.setattr(SQLiteStorage, "_open", refuse)
    monkeypatch.setattr(sqlite_module.os, "access", lambda *_: False)
    with pytest.raises(StorageError, match="is not writable") as caught:
        SQLiteStorage(path)
    assert not isinstance(caught.value, NotADatabaseError)
    monkeypatch.setattr(sqlite_module.os, "access", lambda *_: True)  # a writable folder
    with pytest.raises(NotADatabaseError):
        SQLiteStorage(path)


def test_a_store_path_naming_a_folder_is_said_to_be_one(tmp_path: Path) -> None:
    # SQLite's own message is "unable to open database file", which names no cause.
    with pytest.raises(StorageError, match=r"cannot open SQLite store '.*': it is a folder$"):
        SQLiteStorage(str(tmp_path))
