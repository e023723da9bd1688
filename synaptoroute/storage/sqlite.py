"""One SQLite file: WAL mode, one transaction per mutation, a versioned schema.

Why one module over 400 lines: the schema, its migrations and every mutation's
transaction are checked against each other here, as in the PostgreSQL store."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import numpy as np
from numpy.typing import NDArray

from .._buffers import read_utterances, split_by_route
from .._fork import STORE, hold_across_fork, keep_for_good
from ..checks import check_int_ms_seconds, check_seconds
from ..exceptions import InvalidInputError, NotADatabaseError, RouteNotFoundError, StorageError
from ..models import NEGATIVES_ROUTE, Route
from .base import (
    ModelInfo,
    StoredRoute,
    _check_vectors,
    _read_metadata,
    _refuse_mixing,
    check_route,
    check_store_path,
    pre_negatives_route_error,
    stored_model,
)
from .changes import Change, ChangeKind
from .polling import PollingWatch

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Durability", "SQLiteStorage"]

_log = logging.getLogger("synaptoroute.sqlite")
_APP_ID = "synaptoroute"
#: Utterance rows fetched at a time when loading the store.
_LOAD_CHUNK = 4096
SCHEMA_VERSION = 4
#: ``"full"``: every acknowledged change survives a power loss (an fsync per commit).
#: ``"normal"``: WAL's cheaper mode; the last commits can roll back after a power
#: loss (never after a process crash).
Durability = Literal["full", "normal"]
#: A route row's columns, in the order every reader takes them.
_ROUTE_ROWS = "SELECT id, name, description, threshold, metadata FROM routes"
_ROUTES_SQL = f"{_ROUTE_ROWS} ORDER BY id"
#: ``add_utterances``: a text the route has keeps its row (and place), as
#: Storage.add_utterances says; only that conflict is skipped (OR IGNORE would skip
#: any other constraint's too).
_INSERT_KEEP = (
    "INSERT INTO utterances(route_id, text, vector) VALUES (?, ?, ?) "
    "ON CONFLICT (route_id, text) DO NOTHING"
)
#: A route's utterances written whole (``put_routes``, ``replace_all``).
_INSERT_REPLACE = "INSERT OR REPLACE INTO utterances(route_id, text, vector) VALUES (?, ?, ?)"
#: More changed routes than this are read with every other route (one ``IN`` list
#: stays under SQLite's older limit of 999 bound parameters).
_IN_LIST_MAX = 900


def _in_list(
    column: str, values: Sequence[Any], every: bool = False
) -> tuple[str, tuple[Any, ...]]:
    """A ``WHERE column IN (...)`` clause and its arguments; none (every row, for the
    caller to filter) with ``every`` or past :data:`_IN_LIST_MAX` values."""
    if every or len(values) > _IN_LIST_MAX:
        return "", ()
    if not values:
        return " WHERE 0", ()
    return f" WHERE {column} IN ({', '.join('?' * len(values))})", tuple(values)


@dataclass
class _Seen:
    """Where this connection last looked at the store: what a poll reads on from."""

    version: int | None  # PRAGMA data_version then; None: unknown (look at the store)
    seq: int  # the largest change number of ``touched`` then
    # The (kind, name) holding ``seq`` then: a backup restored into the file takes it
    # back, or away, even once later writes carry the numbers past ``seq`` again.
    mark: tuple[str, str] | None = None


def _file_id(path: str) -> tuple[int, int] | None:
    """Which file ``path`` names now (device, inode); ``None`` if none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


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


def _cannot_open(exc: sqlite3.DatabaseError) -> bool:
    """Whether ``exc`` is SQLITE_CANTOPEN."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return bool(code & 0xFF == 14)
    return "unable to open database file" in str(exc).lower()


def _cannot_write_beside(file: str) -> bool:
    """Whether ``file`` exists but its folder cannot be written (a read-only mount):
    SQLite then says it cannot open the file, not that it is read-only, as it cannot
    make the ``-wal`` and ``-shm`` files."""
    folder = os.path.dirname(os.path.realpath(file))  # a link: SQLite writes by its target
    return os.path.isfile(file) and not os.access(folder, os.W_OK)


#: Bytes of a SQLite file's header: a shorter file that is not empty is no database.
_HEADER_BYTES = 100


def _refuse_a_stub(file: str, shown: str) -> None:
    """Refuse a file too short to be a database (``echo > routes.db``): SQLite reads a
    one-byte file as empty and would make a new store of it.

    Raises:
        NotADatabaseError: the file holds 1 to 99 bytes.
    """
    try:
        size = os.stat(file).st_size
    except OSError:
        return  # none yet (or unreadable: connecting says so)
    if 0 < size < _HEADER_BYTES and os.path.isfile(file):
        msg = (
            f"{shown!r} is not a readable SQLite database ({size} bytes, shorter than "
            "a SQLite header); it was left untouched"
        )
        raise NotADatabaseError(msg)


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
    # The step every store written before negative examples existed (0.2.0) takes: a
    # route of their reserved name would silently become negative examples (hidden,
    # its metadata too, and rejecting what it matched). Refused, nothing migrated.
    if db.execute("SELECT 1 FROM routes WHERE name = ?", (NEGATIVES_ROUTE,)).fetchone():
        raise pre_negatives_route_error()
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


#: Records a route name or a state key (``{name}``: an expression of the trigger's
#: row; ``{kind}``: :data:`_ROUTE` or :data:`_KEY`) as touched, with the next change
#: number.
_TOUCH = (
    "INSERT INTO touched(kind, name, seq) SELECT '{kind}', {name}, "
    "(SELECT IFNULL(MAX(seq), 0) + 1 FROM touched) WHERE {name} IS NOT NULL "
    "ON CONFLICT (kind, name) DO UPDATE SET seq = excluded.seq"
)
_ROUTE, _KEY = "r", "s"
#: The route name of an utterance row (``NEW`` or ``OLD``); NULL once its route is
#: gone (a route deleted with its utterances is recorded by the routes' trigger).
_ROUTE_OF = "(SELECT name FROM routes WHERE id = {row}.route_id)"


def _migration_4(db: sqlite3.Connection) -> None:
    # Each route name and state key a commit touched, with the store's change number
    # then, written by triggers (by any connection, whatever writes the rows): a
    # follower reads what was touched since it last looked, O(changes), where
    # comparing every route's count of utterances (and every state document) cost
    # O(store) a poll (336 ms at 1M utterances, BENCHMARKS.md "SQLite: following
    # another process's commits"). One row per name or key ever written.
    db.execute(
        "CREATE TABLE touched (kind TEXT NOT NULL, name TEXT NOT NULL, seq INTEGER NOT NULL, "
        "PRIMARY KEY (kind, name))"
    )
    db.execute("CREATE INDEX touched_seq ON touched(seq)")
    both = {"INSERT": ["NEW.{}"], "UPDATE": ["OLD.{}", "NEW.{}"], "DELETE": ["OLD.{}"]}
    on_utterances = {
        "INSERT": [_ROUTE_OF.format(row="NEW")],
        "UPDATE": [_ROUTE_OF.format(row="OLD"), _ROUTE_OF.format(row="NEW")],
        "DELETE": [_ROUTE_OF.format(row="OLD")],
    }
    tables = (
        ("routes", _ROUTE, {e: [n.format("name") for n in ns] for e, ns in both.items()}),
        ("utterances", _ROUTE, on_utterances),
        ("state", _KEY, {e: [n.format("key") for n in ns] for e, ns in both.items()}),
    )
    for table, kind, events in tables:
        for event, names in events.items():
            body = "; ".join(_TOUCH.format(kind=kind, name=name) for name in names)
            db.execute(
                f"CREATE TRIGGER {table}_touched_{event.lower()} AFTER {event} ON {table} "
                f"BEGIN {body}; END"
            )


# Index i holds the step from schema version i to i + 1. Append, never edit.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
]


class SQLiteStorage:
    """Routes and vectors in one SQLite file.

    The parent folder is created if missing. A file that is not a synaptoroute
    store (or is corrupt) raises :class:`NotADatabaseError` and is not modified.
    Older schemas are migrated in one transaction on open.

    Every read (:meth:`load`, :meth:`model_info`) is one snapshot: a concurrent
    writer's change is seen whole or not at all.

    A router on this store follows other connections' commits (another process's
    ``synaptoroute routes add``, another worker of the service): every
    ``poll_interval`` seconds its follower asks SQLite whether another connection
    committed (``PRAGMA data_version``, one cheap call) and, if so, hands the router
    the routes and state that differ from what it last read, with their vectors.

    Args:
        path: the database file (``~`` is expanded; a relative path is resolved
            against the working directory of the moment it is opened, so a later
            ``chdir`` changes nothing, in this process or a forked child), or
            ``":memory:"``.
        timeout: seconds to wait for another writer's lock.
        durability: ``"full"`` (default): when a change returns, it survives a power
            loss. ``"normal"``: fewer fsyncs; the last changes can roll back after a
            power loss, never after a crash of the process.
        poll_interval: seconds between checks for other connections' commits while
            a router follows the store (:meth:`watch`); ``None``: no thread checks,
            :meth:`poll` does on demand.

    Example:
        >>> store = SQLiteStorage("data/routes.sqlite")  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 10.0,
        durability: Durability = "full",
        poll_interval: float | None = 1.0,
    ) -> None:
        if durability not in ("full", "normal"):
            msg = f"durability must be 'full' or 'normal', got {durability!r}"
            raise InvalidInputError(msg)
        self.poll_interval = (
            None if poll_interval is None else check_seconds(poll_interval, "poll_interval")
        )
        self._watch: PollingWatch | None = None
        self._seen: _Seen | None = None  # set by load(): the base a poll compares with
        # Each route's row id in that base, and after this connection's own writes: a
        # route a poll finds under another id was deleted and created again (last).
        self._row_ids: dict[str, int] = {}
        self._polls = 0  # the seq of the changes a poll delivers
        self._opened: tuple[int, int] | None = None  # the file opened (device, inode)
        self.path = str(path)
        if not self.path.strip():  # sqlite3 would open a private temporary file
            msg = "SQLiteStorage needs a file path (or ':memory:'), got an empty one"
            raise InvalidInputError(msg)
        if self.path[:5].lower() == "file:":
            # Opened as a path: "file:///srv/x.db" made a folder "file:" here and a
            # store in it, and "file:x.db?mode=ro" a file of that name, writable.
            meant = unquote(urlsplit(self.path).path) if self.path[5:7] == "//" else None
            hint = f"{meant!r}" if meant else f"'./{self.path}' for a file named so"
            msg = (
                f"SQLiteStorage takes a file path, not a SQLite URI: got {self.path!r}; "
                f"pass the path itself ({hint})"
            )
            raise InvalidInputError(msg)
        check_store_path(self.path)
        #: The file every connection opens: ``path`` with ``~`` expanded, made
        #: absolute when the store is opened (``":memory:"`` stays itself).
        self.file = (
            self.path if self.path == ":memory:" else str(Path(self.path).expanduser().absolute())
        )
        self.durability = durability
        # SQLite keeps it in int milliseconds: a longer one wrapped to 0, "never wait".
        self._timeout = check_int_ms_seconds(timeout, "timeout", "SQLite", zero=True)
        self._closed = False
        self._gone: str | None = None  # why a forked child has no connection
        self._lock = threading.RLock()
        # Held for one read or write; a forked child opens its own connection.
        hold_across_fork(self, STORE, in_child="_forked")
        if self.path != ":memory:":
            folder = Path(self.file).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a path through a file: a bare FileExistsError
                msg = f"cannot open SQLite store {self.path!r}: its folder cannot be made ({exc})"
                raise StorageError(msg) from exc
            _refuse_a_stub(self.file, self.path)
        try:
            self._db = self._connect()
        except sqlite3.Error as exc:
            # SQLite says "unable to open database file" for a folder too.
            why = "it is a folder" if Path(self.file).is_dir() else str(exc)
            msg = f"cannot open SQLite store {self.path!r}: {why}"
            raise StorageError(msg) from exc
        # Opening reads and may set WAL mode and migrate. While other connections do
        # the same to a new file, SQLite can answer "locked" without waiting (its busy
        # handler does not cover every lock of a journal-mode change), so a busy open
        # is tried again until ``timeout``: it is contention, never a corrupt file.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._open()
                self._opened = self._file_identity()
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
                if _not_writable(exc) or (_cannot_open(exc) and _cannot_write_beside(self.file)):
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
        self._opened = self._file_identity()
        # A new connection counts data_version anew: the next poll looks at the store.
        if self._seen is not None:
            self._seen.version = None
        # The follower's thread did not come along: the child's follows on its own.
        watch, self._watch = self._watch, None
        if watch is not None and not self._closed:
            callback = watch.callback
            if callback is not None:
                self._watch = self._follower(callback, watch.lock, watch.weak)

    def _file_identity(self) -> tuple[int, int] | None:
        return None if self.path == ":memory:" else _file_id(self.file)

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
                    try:
                        MIGRATIONS[step](tx)
                    except StorageError as exc:  # a store it must not migrate: named
                        msg = f"{self.path!r}: {exc}"
                        raise StorageError(msg) from None
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
                # SQLite rolls some failures back itself (an interrupt, I/O errors);
                # a ROLLBACK then would raise "no transaction is active" and hide why.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            else:
                try:
                    self._db.execute("COMMIT")
                except BaseException:
                    # A COMMIT that fails (disk full, I/O error) may leave the
                    # transaction open, and every later BEGIN would then fail.
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise

    def _refuse_if_closed(self, doing: str) -> None:
        # Under the lock. A closed store says so, as PostgresStorage does, instead of
        # sqlite3's "Cannot operate on a closed database".
        if self._closed:
            why = self._gone or f"SQLite store {self.path!r} is closed"
            msg = f"{why}; cannot {doing}"
            raise StorageError(msg)

    def _refuse_if_moved(self, outcome: str) -> None:
        """Raise :class:`StorageError` (``outcome`` says what follows) when the file at
        the path was deleted or replaced since it was opened: the connection still
        reads and writes the old one. A write there would be acknowledged into a file
        nobody opens again (lost at the next start), and a poll never sees a change."""
        if self._opened is not None and _file_id(self.file) != self._opened:
            msg = (
                f"SQLite store {self.path!r} was deleted or replaced since this process "
                f"opened it; {outcome}"
            )
            raise StorageError(msg)

    def _write(
        self,
        body: Callable[[sqlite3.Connection], object],
        then: Callable[[], None] | None = None,
    ) -> None:
        """Run ``body`` in one write transaction (the ``touched`` triggers record the
        routes and state keys it changes), and ``then`` once it is committed, under the
        same lock (no poll in between)."""
        with self._lock:
            self._refuse_if_closed("write: nothing was written")
            self._refuse_if_moved("nothing was written: restart the process on the file there now")
            seen, noted = self._seen, None
            try:
                with self._transaction() as tx:
                    # A poll never sees this connection's own commits (data_version
                    # counts other connections'). If no other connection committed
                    # since the last look (checked under the write lock, so none can
                    # now), every change number up to this write's last is one seen
                    # or this write's: a poll does not read them back. Otherwise they
                    # are left for the next poll, which hands the routes back as the
                    # writer holds them (left as they are: install_route).
                    current = seen is not None and self._data_version(tx) == seen.version
                    body(tx)
                    if current:
                        noted = self._position(tx)
            except sqlite3.Error as exc:
                msg = f"SQLite store {self.path!r}: {exc}; nothing was written"
                raise StorageError(msg) from exc
            if seen is not None and noted is not None:
                seen.seq, seen.mark = noted
            if then is not None:
                then()

    @staticmethod
    def _position(db: sqlite3.Connection) -> tuple[int, tuple[str, str] | None]:
        """The store's last change number (``touched``) and the (kind, name) holding it."""
        row = db.execute("SELECT seq, kind, name FROM touched ORDER BY seq DESC LIMIT 1").fetchone()
        return (0, None) if row is None else (int(row[0]), (row[1], row[2]))

    @staticmethod
    def _went_back(db: sqlite3.Connection, seen: _Seen) -> bool:
        """Whether the change last seen is gone or older now: the file's content was
        replaced in place (a backup restored into it), so ``seen.seq`` names nothing."""
        if seen.mark is None:
            return False
        row = db.execute(
            "SELECT seq FROM touched WHERE kind = ? AND name = ?", seen.mark
        ).fetchone()
        return row is None or int(row[0]) < seen.seq

    def _all_routes(
        self, db: sqlite3.Connection, info: ModelInfo | None
    ) -> tuple[list[StoredRoute], dict[str, int]]:
        """Every route with its vectors, and each one's row id, read in ``db``'s transaction."""
        rows = db.execute(_ROUTES_SQL).fetchall()
        ids = {row[1]: int(row[0]) for row in rows}
        return self._stored_routes(rows, *self._read_utterances(info)), ids

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

    def check_health(self) -> None:
        """Read the store, and refuse one whose file was deleted or replaced since it
        was opened: reads still answer from the old file, but every write fails until
        the process is restarted (the service's ``/healthz/store``).

        Raises:
            StorageError: the store is closed, cannot be read, or its file moved.
        """
        self.model_info()
        with self._lock:
            self._refuse_if_moved("route changes fail until the process is restarted on it")

    def _model_info(self, db: sqlite3.Connection) -> ModelInfo | None:
        rows = dict(
            db.execute("SELECT key, value FROM meta WHERE key IN ('model_id', 'dimension')")
        )
        return stored_model(rows, repr(self))

    def _set_model(self, tx: sqlite3.Connection, model: ModelInfo) -> None:
        _refuse_mixing(
            self._model_info(tx),
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
        It is also where a follower's :meth:`poll` reads on from.
        """
        with self._reading() as db:
            # Read before the snapshot: a commit after it changes it, so the next
            # poll looks (a commit already in the snapshot then shows no change).
            version = self._data_version(db)
            db.execute("BEGIN")
            try:
                out, ids = self._all_routes(db, self._model_info(db))
                if self._watch is None:  # once followed, only a poll moves the base
                    self._seen = _Seen(version, *self._position(db))
                    self._row_ids = ids
            finally:
                db.execute("COMMIT")  # a read: ends the snapshot, writes nothing
        return out

    @staticmethod
    def _stored_routes(
        routes: Sequence[Any],
        route_ids: NDArray[np.int64],
        texts: list[str],
        matrix: NDArray[np.float32],
    ) -> list[StoredRoute]:
        """Route rows (``_ROUTES_SQL``'s, ascending ids) with their utterances' rows."""
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
        self, info: ModelInfo | None, ids: Sequence[int] | None = None
    ) -> tuple[NDArray[np.int64], list[str], NDArray[np.float32]]:
        # Streamed into one buffer the router's index takes over (synaptoroute._buffers):
        # fetchall() and a join held every vector twice more. ids: only those routes'.
        where, args = _in_list("route_id", ids or (), ids is None)
        (count,) = self._db.execute(f"SELECT COUNT(*) FROM utterances{where}", args).fetchone()
        cursor = self._db.execute(
            f"SELECT route_id, text, vector FROM utterances{where} ORDER BY route_id, id", args
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
        tx.executemany(
            _INSERT_KEEP if keep else _INSERT_REPLACE,
            [
                (rid, t, np.ascontiguousarray(v, dtype=np.float32).tobytes())
                for t, v in zip(texts, vectors, strict=True)
            ],
        )

    def _insert_route(
        self, tx: sqlite3.Connection, route: Route, vectors: NDArray[np.float32], metadata: str
    ) -> int:
        # A route replaced keeps its row, so its place among the routes (the ids' order),
        # as in the router that replaced it: every process lists one order.
        row = tx.execute("SELECT id FROM routes WHERE name=?", (route.name,)).fetchone()
        if row is not None:
            rid = int(row[0])
            tx.execute(
                "UPDATE routes SET description=?, threshold=?, metadata=? WHERE id=?",
                (route.description, route.threshold, metadata, rid),
            )
            tx.execute("DELETE FROM utterances WHERE route_id=?", (rid,))
        else:
            cur = tx.execute(
                "INSERT INTO routes(name, description, threshold, metadata) VALUES (?, ?, ?, ?)",
                (route.name, route.description, route.threshold, metadata),
            )
            assert cur.lastrowid is not None
            rid = cur.lastrowid
        self._insert_utterances(tx, rid, route.utterances, vectors)
        return rid

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

        made: dict[str, int] = {}

        def body(tx: sqlite3.Connection) -> None:
            self._set_model(tx, model)
            for item, meta in zip(routes, metadata, strict=True):
                made[item.route.name] = self._insert_route(tx, item.route, item.vectors, meta)

        def note() -> None:
            # Routes this connection made are no news to a poll. A route it already
            # knew keeps the id it knew: one another connection deleted and created
            # again (a new row, found here and replaced in place) is news, and the next
            # poll moves it last, where the store has it.
            for name, rid in made.items():
                self._row_ids.setdefault(name, rid)

        self._write(body, note)

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

        def forget() -> None:
            self._row_ids.pop(name, None)

        self._write(
            lambda tx: tx.execute("DELETE FROM routes WHERE id=?", (self._route_id(tx, name),)),
            forget,
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

        made: dict[str, int] = {}

        def body(tx: sqlite3.Connection) -> None:
            made.clear()  # a retried body starts again
            tx.execute("DELETE FROM routes")
            tx.execute("DELETE FROM meta WHERE key IN ('model_id', 'dimension')")
            self._set_model(tx, model)
            for item, meta in zip(routes, metadata, strict=True):
                made[item.route.name] = self._insert_route(tx, item.route, item.vectors, meta)

        def note() -> None:
            self._row_ids = made

        self._write(body, note)

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

    # -- following other connections' commits ----------------------------------------
    def watch(
        self,
        callback: Callable[[Sequence[Change]], None],
        *,
        lock: threading.RLock | None = None,
        since: int | None = None,
        weak: bool = False,
    ) -> PollingWatch:
        """Call ``callback`` with what other connections commit, every ``poll_interval``.

        SQLite keeps no change log, so a change is not each write but a ``resync``:
        the routes (with their vectors) and the state keys touched since this store
        last read (schema 4's ``touched`` table), the names of the routes gone, and
        the model of the vectors; a ``reload`` of everything when the change numbers
        went back (a backup restored into the file). Commits through this store's own
        connection are not delivered (the writer applied them already), except what a
        write changed after another connection's commit, which comes back as the
        writer holds it. ``lock`` is held while the store is read and ``callback`` runs, so pass the lock the writer holds around its writes (the
        router's): a poll then never hands over a state older than a write already
        applied. With ``weak``, a bound-method ``callback`` is held weakly.

        Raises:
            StorageError: already watched for a router that is still alive, never
                loaded (the base to compare with is the last :meth:`load`), or
                ``since`` given (there is no log to read from).
        """
        with self._lock:
            if since is not None:
                msg = "a SQLite store keeps no change log: watch() takes no since="
                raise StorageError(msg)
            # A watch whose router is gone (collected without close()) has ended: replaced.
            if self._watch is not None and self._watch.callback is not None:
                msg = "this SQLiteStorage is already watched; open one store per router"
                raise StorageError(msg)
            if self._seen is None:
                msg = "call load() before watch(): a poll compares the store with it"
                raise StorageError(msg)
            self._watch = self._follower(callback, lock or self._lock, weak)
            return self._watch

    def _follower(
        self, callback: Callable[[Sequence[Change]], None], lock: threading.RLock, weak: bool
    ) -> PollingWatch:
        # No other connection can reach an in-memory database: nothing to poll for.
        interval = None if self.path == ":memory:" else self.poll_interval
        return PollingWatch(self.poll, callback, lock, interval=interval, weak=weak)

    @property
    def watching(self) -> PollingWatch | None:
        """The running follower, if any."""
        return self._watch

    def poll(self) -> bool:
        """Hand what other connections committed since the last look to the watcher's
        callback now; whether anything differed. The follower's thread calls it every
        ``poll_interval`` seconds; call it yourself to see a change at once.

        Raises:
            StorageError: the store is closed or cannot be read, or its file was
                deleted or replaced since it was opened; nothing was applied.
        """
        watch = self._watch
        if watch is None:
            return False
        # The store's lock alone for the usual answer, "nothing": the router's lock (a
        # route change holds it while it encodes) only to read and apply a change.
        with self._reading() as db:
            if self._committed_since(db) is None:
                return False
        with watch.lock, self._reading() as db:
            version = self._committed_since(db)
            seen = self._seen
            if version is None or seen is None or watch is not self._watch:
                return False
            # Only now: a reference to a router held at every tick would keep a dropped
            # router alive through a collection that lands in it.
            callback = watch.callback
            if callback is None:
                return False
            changes = self._read_changes(db, seen, version)
            if not changes:
                return False
            try:
                callback(changes)
            except Exception:
                _log.exception("applying the changes up to %d failed", changes[-1].seq)
            return True

    def _committed_since(self, db: sqlite3.Connection) -> int | None:
        """``PRAGMA data_version`` if another connection committed since the last
        look, else ``None``. Under the store's lock.

        Raises:
            StorageError: the file was deleted or replaced since it was opened: this
                connection still reads the old one and would never see a change.
        """
        self._refuse_if_moved(
            "it goes on routing with the routes it has; restart it to follow the file there now"
        )
        version = self._data_version(db)
        seen = self._seen
        return None if seen is None or version == seen.version else version

    @staticmethod
    def _data_version(db: sqlite3.Connection) -> int:
        # Changes when another connection commits, never for this one's own commits.
        return int(db.execute("PRAGMA data_version").fetchone()[0])

    def _read_changes(self, db: sqlite3.Connection, seen: _Seen, version: int) -> list[Change]:
        """What changed since ``seen`` (one snapshot), as ``resync`` changes; ``seen``
        becomes the store as read now. Only the routes and keys touched since are read."""
        db.execute("BEGIN")
        try:
            info = self._model_info(db)
            position = self._position(db)
            if self._went_back(db, seen):
                _log.warning(
                    "the change numbers of SQLite store %r went back (change %d seen "
                    "here is gone): was a backup restored into it? Reloading everything",
                    self.path,
                    seen.seq,
                )
                return [self._whole(db, info, version, position)]
            touched = db.execute(
                "SELECT kind, name FROM touched WHERE seq > ? ORDER BY seq", (seen.seq,)
            ).fetchall()
            names = [name for kind, name in touched if kind == _ROUTE]
            keys = sorted(name for kind, name in touched if kind == _KEY)
            where, args = _in_list("name", names)
            rows = db.execute(f"{_ROUTE_ROWS}{where} ORDER BY id", args).fetchall() if names else []
            wanted = set(names)
            changed = [row for row in rows if row[1] in wanted]
            stored = (
                self._stored_routes(changed, *self._read_utterances(info, [r[0] for r in changed]))
                if changed
                else []
            )
            where, args = _in_list("key", keys)
            state = dict(db.execute(f"SELECT key, value FROM state{where}", args)) if keys else {}
        finally:
            db.execute("COMMIT")  # a read: ends the snapshot, writes nothing
        self._seen = _Seen(version, *position)
        ids = {row[1]: int(row[0]) for row in changed}
        # Touched and not there: deleted (a router that never held it ignores it).
        gone = [name for name in names if name not in ids]
        moved = self._moved(ids)
        self._row_ids.update(ids)
        for name in gone:
            self._row_ids.pop(name, None)
        if not changed and not gone and not keys:
            return []
        # One change, its routes in the store's order (positions of new routes follow
        # it), routes and the policy they lead to applied together. The model matters
        # only for vectors: a router refuses those of another model (another process
        # re-encoded the store) and applies the rest (routes gone, routes without
        # utterances, the state). A store whose routes hold none keeps the record of
        # whoever wrote vectors last, which is no one's (as in _load).
        has_vectors = any(len(item.vectors) for item in stored)
        return [
            self._change(
                "resync",
                routes=tuple(stored),
                names=(*(item.route.name for item in stored), *gone),
                state={k: json.loads(state[k]) if k in state else None for k in keys},
                model=info if has_vectors else None,
                moved=moved,
            )
        ]

    def _whole(
        self,
        db: sqlite3.Connection,
        info: ModelInfo | None,
        version: int,
        position: tuple[int, tuple[str, str] | None],
    ) -> Change:
        """The whole store (read in ``db``'s snapshot) as a ``reload``; it becomes the
        base of the next poll."""
        stored, ids = self._all_routes(db, info)
        state = {key: json.loads(text) for key, text in db.execute("SELECT key, value FROM state")}
        self._seen = _Seen(version, *position)
        moved = self._moved(ids)
        self._row_ids = ids
        return self._change("reload", routes=tuple(stored), model=info, state=state, moved=moved)

    def _moved(self, ids: dict[str, int]) -> tuple[str, ...]:
        """The routes of ``ids`` (name: row id, as read now) held under another row id
        in the base: deleted and created again since, so now last."""
        return tuple(name for name, rid in ids.items() if self._row_ids.get(name, rid) != rid)

    def _change(self, kind: ChangeKind, **fields: Any) -> Change:
        self._polls += 1
        return Change(self._polls, kind, origin=self.path, **fields)

    def close(self) -> None:
        """Stop the follower, if any, and close the connection."""
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()  # before the lock: a poll under way holds it
        with self._lock:
            self._closed = True
            self._db.close()

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.path!r})"
