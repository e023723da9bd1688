"""One SQLite file: WAL mode, one transaction per mutation, a versioned schema.

Why one module over 400 lines: the schema, its migrations and every mutation's
transaction are checked against each other here, as in the PostgreSQL store."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from .._buffers import read_utterances, split_by_route
from .._fork import STORE, hold_across_fork, keep_for_good
from ..checks import check_seconds
from ..exceptions import InvalidInputError, NotADatabaseError, RouteNotFoundError, StorageError
from ..models import Route
from .base import (
    ModelInfo,
    StoredRoute,
    _check_vectors,
    _read_metadata,
    _refuse_mixing,
    check_route,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Durability", "SQLiteStorage"]

_APP_ID = "synaptoroute"
#: Utterance rows fetched at a time when loading the store.
_LOAD_CHUNK = 4096
SCHEMA_VERSION = 3
#: ``"full"``: every acknowledged change survives a power loss (an fsync per commit).
#: ``"normal"``: WAL's cheaper mode; the last commits can roll back after a power
#: loss (never after a process crash).
Durability = Literal["full", "normal"]


def _busy(exc: sqlite3.DatabaseError) -> bool:
    """Whether ``exc`` is SQLITE_BUSY or SQLITE_LOCKED (another connection's lock)."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (primary codes)
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _not_writable(exc: sqlite3.DatabaseError) -> bool:
    """Whether ``exc`` is SQLITE_READONLY: SQLite could not write the file, or create
    its ``-wal``/``-shm`` files beside it (which it does even to read a WAL store)."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return bool(code & 0xFF == 8)  # SQLITE_READONLY (primary code)
    return "readonly database" in str(exc).lower()


def _run_script(db: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT the migration's transaction; run statements one by one.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _migration_1(db: sqlite3.Connection) -> None:
    _run_script(
        db,
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE routes (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            description TEXT,
            threshold REAL,
            metadata TEXT NOT NULL DEFAULT '{}'
        );
        CREATE TABLE utterances (
            id INTEGER PRIMARY KEY,
            route_id INTEGER NOT NULL REFERENCES routes(id) ON DELETE CASCADE,
            text TEXT NOT NULL,
            vector BLOB NOT NULL,
            UNIQUE (route_id, text)
        );
        CREATE INDEX utterances_route ON utterances(route_id, id);
        """,
    )


def _migration_2(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


def _migration_3(db: sqlite3.Connection) -> None:
    # AUTOINCREMENT: a deleted route's id is never given to a new one, so an id read
    # in one statement can never name another route in the next. Runs with foreign
    # keys off (see _open), so dropping the old tables cascades nothing.
    _run_script(
        db,
        """
        CREATE TABLE routes_v3 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            description TEXT,
            threshold REAL,
            metadata TEXT NOT NULL DEFAULT '{}'
        );
        INSERT INTO routes_v3 SELECT id, name, description, threshold, metadata FROM routes;
        CREATE TABLE utterances_v3 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            route_id INTEGER NOT NULL REFERENCES routes(id) ON DELETE CASCADE,
            text TEXT NOT NULL,
            vector BLOB NOT NULL,
            UNIQUE (route_id, text)
        );
        INSERT INTO utterances_v3 SELECT id, route_id, text, vector FROM utterances;
        DROP TABLE utterances;
        DROP TABLE routes;
        ALTER TABLE routes_v3 RENAME TO routes;
        ALTER TABLE utterances_v3 RENAME TO utterances;
        CREATE INDEX utterances_route ON utterances(route_id, id);
        """,
    )


# Index i holds the step from schema version i to i + 1. Append, never edit.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _migration_1,
    _migration_2,
    _migration_3,
]


class SQLiteStorage:
    """Routes and vectors in one SQLite file.

    The parent folder is created if missing. A file that is not a synaptoroute
    store (or is corrupt) raises :class:`NotADatabaseError` and is not modified.
    Older schemas are migrated in one transaction on open.

    Every read (:meth:`load`, :meth:`model_info`) is one snapshot: a concurrent
    writer's change is seen whole or not at all.

    Args:
        path: the database file (``~`` is expanded; a relative path is resolved
            against the working directory of the moment it is opened, so a later
            ``chdir`` changes nothing, in this process or a forked child), or
            ``":memory:"``.
        timeout: seconds to wait for another writer's lock.
        durability: ``"full"`` (default): when a change returns, it survives a power
            loss. ``"normal"``: fewer fsyncs; the last changes can roll back after a
            power loss, never after a crash of the process.

    Example:
        >>> store = SQLiteStorage("data/routes.sqlite")  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 10.0,
        durability: Durability = "full",
    ) -> None:
        if durability not in ("full", "normal"):
            msg = f"durability must be 'full' or 'normal', got {durability!r}"
            raise InvalidInputError(msg)
        self.path = str(path)
        if not self.path.strip():  # sqlite3 would open a private temporary file
            msg = "SQLiteStorage needs a file path (or ':memory:'), got an empty one"
            raise InvalidInputError(msg)
        #: The file every connection opens: ``path`` with ``~`` expanded, made
        #: absolute when the store is opened (``":memory:"`` stays itself).
        self.file = (
            self.path if self.path == ":memory:" else str(Path(self.path).expanduser().absolute())
        )
        self.durability = durability
        self._timeout = check_seconds(timeout, "timeout", zero=True)
        self._closed = False
        self._gone: str | None = None  # why a forked child has no connection
        self._lock = threading.RLock()
        # Held for one read or write; a forked child opens its own connection.
        hold_across_fork(self, STORE, in_child="_forked")
        if self.path != ":memory:":
            Path(self.file).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._connect()
        except sqlite3.Error as exc:
            msg = f"cannot open SQLite store {self.path!r}: {exc}"
            raise StorageError(msg) from exc
        # Opening reads and may set WAL mode and migrate. While other connections do
        # the same to a new file, SQLite can answer "locked" without waiting (its busy
        # handler does not cover every lock of a journal-mode change), so a busy open
        # is tried again until ``timeout``: it is contention, never a corrupt file.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._open()
                return
            except sqlite3.DatabaseError as exc:
                if _busy(exc) and time.monotonic() < deadline:
                    time.sleep(0.005)
                    continue
                self._db.close()
                if _busy(exc):
                    msg = (
                        f"SQLite store {self.path!r} stayed locked by other connections for "
                        f"{timeout:g} s ({exc}); nothing was changed"
                    )
                    raise StorageError(msg) from exc
                if _not_writable(exc):
                    msg = (
                        f"SQLite store {self.path!r} cannot be opened: the file or its folder "
                        f"is not writable ({exc}); SQLite writes the file and its -wal and "
                        "-shm files beside it, even to read it. It was left untouched"
                    )
                    raise StorageError(msg) from exc
                msg = (
                    f"{self.path!r} is not a readable SQLite database ({exc}); "
                    "it was left untouched"
                )
                raise NotADatabaseError(msg) from exc
            except StorageError:
                self._db.close()
                raise

    def _connect(self, existing: bool = False) -> sqlite3.Connection:
        # existing: open the file only if it is there (mode=rw), never create it.
        path, uri = self.file, False
        if existing:
            path, uri = Path(self.file).as_uri() + "?mode=rw", True
        return sqlite3.connect(
            path, timeout=self._timeout, isolation_level=None, check_same_thread=False, uri=uri
        )

    def _configure(self, db: sqlite3.Connection) -> None:
        # The settings each connection has to be given (the file keeps none of them).
        db.execute(f"PRAGMA synchronous={self.durability.upper()}")
        db.execute("PRAGMA foreign_keys=ON")

    def _forked(self) -> None:
        # In a forked child, under the lock: SQLite keeps its locks, and its record of
        # them, per process, so a connection must not cross a fork (sqlite.org,
        # "How To Corrupt An SQLite Database File", 2.6). The child opens its own; the
        # inherited one stays open and unused, since closing it could act on the
        # parent's locks. An in-memory database is the child's own copy: kept.
        if self._closed or self.path == ":memory:":
            return
        keep_for_good(self._db)
        try:
            # A file deleted since the parent opened it is not made again, empty, for
            # the child to write routes into and leave behind.
            db = self._connect(existing=True)
            self._configure(db)
        except sqlite3.Error as exc:
            self._gone = (
                f"SQLite store {self.path!r} cannot be opened in this forked process "
                f"({exc}; was its file deleted?)"
            )
            self._closed = True
            db = sqlite3.connect(":memory:", check_same_thread=False)
            db.close()  # reads fail as on a closed store
        self._db = db

    def _open(self) -> None:
        db = self._db
        # Reading before any write: a foreign or corrupt file fails here, unmodified.
        # One read transaction: another process creating the store between two reads
        # made it look half made (a schema version, no tables): "not a synaptoroute
        # store".
        db.execute("BEGIN")
        try:
            objects = {
                (kind, name) for kind, name in db.execute("SELECT type, name FROM sqlite_master")
            }
            tables = {name for kind, name in objects if kind == "table"}
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            app = None
            if "meta" in tables:
                row = db.execute("SELECT value FROM meta WHERE key='app'").fetchone()
                app = row[0] if row else None
        finally:
            if db.in_transaction:  # a read: nothing to commit
                db.execute("ROLLBACK")
        # Only a file with nothing in it (no table, view, index or trigger, and no
        # schema version of its own) is a new store; anything else must prove it is one.
        if objects or version:
            if app != _APP_ID:
                msg = (
                    f"{self.path!r} is a SQLite database but not a synaptoroute store; "
                    "it was left untouched"
                )
                raise NotADatabaseError(msg)
            if version > SCHEMA_VERSION:
                msg = (
                    f"{self.path!r} has schema version {version}, newer than this synaptoroute "
                    f"understands ({SCHEMA_VERSION}); upgrade synaptoroute"
                )
                raise StorageError(msg)
        if self.path != ":memory:":
            db.execute("PRAGMA journal_mode=WAL")
        self._configure(db)
        if version < SCHEMA_VERSION:
            # Foreign keys stay off while tables are rebuilt (the pragma is a no-op
            # inside a transaction, so it is set around it).
            db.execute("PRAGMA foreign_keys=OFF")
            with self._transaction() as tx:
                # Another process may have created or migrated the file since the
                # first look: read the version again under the write lock.
                version = int(tx.execute("PRAGMA user_version").fetchone()[0])
                for step in range(version, SCHEMA_VERSION):
                    MIGRATIONS[step](tx)
                if version == 0:
                    tx.execute("INSERT INTO meta(key, value) VALUES ('app', ?)", (_APP_ID,))
                if version < SCHEMA_VERSION:
                    tx.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def _refuse_if_closed(self, doing: str) -> None:
        # Under the lock. A closed store says so, as PostgresStorage does, instead of
        # sqlite3's "Cannot operate on a closed database".
        if self._closed:
            why = self._gone or f"SQLite store {self.path!r} is closed"
            msg = f"{why}; cannot {doing}"
            raise StorageError(msg)

    def _write(self, body: Callable[[sqlite3.Connection], object]) -> None:
        with self._lock:
            self._refuse_if_closed("write: nothing was written")
            try:
                with self._transaction() as tx:
                    body(tx)
            except sqlite3.Error as exc:
                msg = f"SQLite store {self.path!r}: {exc}; nothing was written"
                raise StorageError(msg) from exc

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for one read, under the lock; sqlite3 errors become StorageError."""
        with self._lock:
            self._refuse_if_closed("read")
            try:
                yield self._db
            except sqlite3.Error as exc:
                msg = f"SQLite store {self.path!r} cannot be read: {exc}"
                raise StorageError(msg) from exc

    @property
    def schema_version(self) -> int:
        """The schema version of the open file."""
        with self._reading() as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])

    def model_info(self) -> ModelInfo | None:
        """The model that made the stored vectors, or ``None``."""
        with self._reading() as db:
            return self._model_info(db)

    @staticmethod
    def _model_info(db: sqlite3.Connection) -> ModelInfo | None:
        rows = dict(
            db.execute("SELECT key, value FROM meta WHERE key IN ('model_id', 'dimension')")
        )
        if "model_id" not in rows:
            return None
        return ModelInfo(rows["model_id"], int(rows["dimension"]))

    @staticmethod
    def _set_model(tx: sqlite3.Connection, model: ModelInfo) -> None:
        row = tx.execute("SELECT value FROM meta WHERE key='model_id'").fetchone()
        dim = tx.execute("SELECT value FROM meta WHERE key='dimension'").fetchone()
        _refuse_mixing(
            None if row is None else ModelInfo(row[0], int(dim[0])),
            model,
            lambda: tx.execute("SELECT 1 FROM utterances LIMIT 1").fetchone() is None,
        )
        tx.executemany(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            [("model_id", model.model_id), ("dimension", str(model.dimension))],
        )

    def load(self) -> list[StoredRoute]:
        """Every route with its vectors, in insertion order, without any encoding.

        One read transaction: another process's change is seen whole or not at all.
        """
        with self._reading() as db:
            db.execute("BEGIN")
            try:
                info = self._model_info(db)
                routes = db.execute(
                    "SELECT id, name, description, threshold, metadata FROM routes ORDER BY id"
                ).fetchall()
                route_ids, texts, matrix = self._read_utterances(info)
            finally:
                db.execute("COMMIT")  # a read: ends the snapshot, writes nothing
        if not routes:
            return []
        out = []
        parts = split_by_route(route_ids, texts, matrix, [r[0] for r in routes])
        for (_, name, description, threshold, metadata), (utterances, vectors) in zip(
            routes, parts, strict=True
        ):
            route = Route.model_construct(
                name=name,
                utterances=utterances,
                description=description,
                threshold=threshold,
                metadata=_read_metadata(metadata, name),
            )
            out.append(StoredRoute(route, vectors))
        return out

    def _read_utterances(
        self, info: ModelInfo | None
    ) -> tuple[NDArray[np.int64], list[str], NDArray[np.float32]]:
        # Streamed into one buffer the router's index takes over (synaptoroute._buffers):
        # fetchall() and a join held every vector twice more.
        (count,) = self._db.execute("SELECT COUNT(*) FROM utterances").fetchone()
        cursor = self._db.execute(
            "SELECT route_id, text, vector FROM utterances ORDER BY route_id, id"
        )
        chunks = iter(lambda: cursor.fetchmany(_LOAD_CHUNK), [])
        dim = info.dimension if info else 0
        return read_utterances(chunks, count, dim, f"SQLite store {self.path!r}")

    def _route_id(self, tx: sqlite3.Connection, name: str) -> int:
        row = tx.execute("SELECT id FROM routes WHERE name=?", (name,)).fetchone()
        if row is None:
            raise RouteNotFoundError(name)
        return int(row[0])

    @staticmethod
    def _insert_utterances(
        tx: sqlite3.Connection,
        rid: int,
        texts: Sequence[str],
        vectors: NDArray[np.float32],
        *,
        keep: bool = False,
    ) -> None:
        # keep: a text the route has keeps its row (and place), as Storage.add_utterances
        # says; only that conflict (OR IGNORE would also skip any other constraint's)
        tx.executemany(
            f"INSERT {'' if keep else 'OR REPLACE '}INTO utterances(route_id, text, vector) "
            f"VALUES (?, ?, ?){' ON CONFLICT (route_id, text) DO NOTHING' if keep else ''}",
            [
                (rid, t, np.ascontiguousarray(v, dtype=np.float32).tobytes())
                for t, v in zip(texts, vectors, strict=True)
            ],
        )

    def _insert_route(
        self, tx: sqlite3.Connection, route: Route, vectors: NDArray[np.float32], metadata: str
    ) -> None:
        tx.execute("DELETE FROM routes WHERE name=?", (route.name,))
        cur = tx.execute(
            "INSERT INTO routes(name, description, threshold, metadata) VALUES (?, ?, ?, ?)",
            (route.name, route.description, route.threshold, metadata),
        )
        assert cur.lastrowid is not None
        self._insert_utterances(tx, cur.lastrowid, route.utterances, vectors)

    def put_route(self, route: Route, vectors: NDArray[np.float32], model: ModelInfo) -> None:
        """Create or replace one route and its utterances (see :meth:`put_routes`)."""
        self.put_routes([StoredRoute(route, vectors)], model)

    def put_routes(self, routes: Sequence[StoredRoute], model: ModelInfo) -> None:
        """Create or replace routes and their utterances, all in one transaction."""
        metadata = []
        for item in routes:
            _check_vectors(item.route.utterances, item.vectors, model)
            metadata.append(check_route(item.route))
        if not routes:
            return

        def body(tx: sqlite3.Connection) -> None:
            self._set_model(tx, model)
            for item, meta in zip(routes, metadata, strict=True):
                self._insert_route(tx, item.route, item.vectors, meta)

        self._write(body)

    def add_utterances(
        self, name: str, texts: Sequence[str], vectors: NDArray[np.float32], model: ModelInfo
    ) -> None:
        """Append utterances to a route in one transaction (see :meth:`Storage.add_utterances`)."""
        _check_vectors(texts, vectors, model)

        def body(tx: sqlite3.Connection) -> None:
            self._set_model(tx, model)
            self._insert_utterances(tx, self._route_id(tx, name), texts, vectors, keep=True)

        self._write(body)

    def delete_route(self, name: str) -> None:
        """Remove a route and its utterances."""
        self._write(
            lambda tx: tx.execute("DELETE FROM routes WHERE id=?", (self._route_id(tx, name),))
        )

    def delete_utterances(self, name: str, texts: Sequence[str]) -> None:
        """Remove some utterances of a route."""

        def body(tx: sqlite3.Connection) -> None:
            rid = self._route_id(tx, name)
            tx.executemany(
                "DELETE FROM utterances WHERE route_id=? AND text=?", [(rid, t) for t in texts]
            )

        self._write(body)

    def update_route(self, route: Route) -> None:
        """Store a route's description, threshold and metadata."""
        metadata = check_route(route)

        def body(tx: sqlite3.Connection) -> None:
            rid = self._route_id(tx, route.name)
            tx.execute(
                "UPDATE routes SET description=?, threshold=?, metadata=? WHERE id=?",
                (route.description, route.threshold, metadata, rid),
            )

        self._write(body)

    def replace_all(self, routes: Sequence[StoredRoute], model: ModelInfo) -> None:
        """Replace every route and the model record in one transaction."""
        metadata = []
        for item in routes:
            _check_vectors(item.route.utterances, item.vectors, model)
            metadata.append(check_route(item.route))

        def body(tx: sqlite3.Connection) -> None:
            tx.execute("DELETE FROM routes")
            tx.execute("DELETE FROM meta WHERE key IN ('model_id', 'dimension')")
            self._set_model(tx, model)
            for item, meta in zip(routes, metadata, strict=True):
                self._insert_route(tx, item.route, item.vectors, meta)

        self._write(body)

    def get_state(self, key: str) -> dict[str, Any] | None:
        """A JSON document stored under ``key``."""
        with self._reading() as db:
            row = db.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_state(self, key: str, value: dict[str, Any] | None) -> None:
        """Store (or delete) a JSON document."""
        if value is None:
            self._write(lambda tx: tx.execute("DELETE FROM state WHERE key=?", (key,)))
        else:
            text = json.dumps(value)
            self._write(
                lambda tx: tx.execute(
                    "INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)", (key, text)
                )
            )

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._closed = True
            self._db.close()

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.path!r})"
