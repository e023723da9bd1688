"""PostgreSQL storage with a change feed: many router replicas, one source of truth.

:class:`PostgresStorage` keeps routes, utterances, vectors (with model id and
dimension), thresholds and JSON state in PostgreSQL, implementing the same
:class:`~synaptoroute.storage.Storage` protocol as SQLite. Every mutation is one
transaction that also appends a row to a change log (``changes``, increasing
``seq``) and sends ``NOTIFY``. A router on this store follows the log through
:meth:`PostgresStorage.watch`: it applies only what changed, with the vectors read
from the log, so it never re-encodes. After a lost connection or a database
restart the follower reconnects and catches up from the last sequence number it
applied.

Writers serialise on one advisory lock per store, so sequence numbers are handed
out in commit order and a follower reading ``seq > last`` never skips a change.

The change types live in :mod:`~synaptoroute.storage.changes` and the follower in
:mod:`~synaptoroute.storage.follower`. Why this module is still over 400 lines: each
mutation's SQL, its change-log row and its conflict handling belong in one
transaction, and reading them side by side is how their consistency is checked. Needs the optional extra ``postgres`` (psycopg 3): ``pip install '.[postgres]'`` in a
checkout of this repository.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast, get_args

import numpy as np
from numpy.typing import NDArray

from .._buffers import read_utterances, split_by_route
from .._fork import CONNECTION, LEAF, STORE, hold_across_fork
from ..checks import MAX_INT_MS_SECONDS, check_int_ms_seconds
from ..exceptions import (
    InvalidInputError,
    MissingDependencyError,
    NotADatabaseError,
    RouteNotFoundError,
    StorageError,
    install_hint,
)
from ..models import NEGATIVES_ROUTE, Route
from .base import (
    ModelInfo,
    StoredRoute,
    _check_vectors,
    _refuse_mixing,
    check_route,
    pre_negatives_route_error,
    stored_model,
)
from .changes import Change, ChangeKind
from .follower import UnreadableChangeError, Watch, disown, first_line, shut_down

if TYPE_CHECKING:
    import psycopg

__all__ = ["SCHEMA_VERSION", "PostgresStorage"]

_log = logging.getLogger("synaptoroute.postgres")

_APP_ID = "synaptoroute"
SCHEMA_VERSION = 2
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")
_T = TypeVar("_T")
# PostgreSQL and libpq hold their timeouts in a C int of milliseconds (lock_timeout,
# tcp_user_timeout) or seconds (connect_timeout): a longer duration is refused by the
# server or the driver, so it is refused here by name, before connecting.
_INT_MAX = 2**31 - 1
MAX_SECONDS = MAX_INT_MS_SECONDS  # 2,147,483 s: about 24.8 days
# Rows per fetch of the server-side cursor that loads utterances.
_LOAD_CHUNK = 4096


@dataclass(frozen=True)
class _LogEntry:
    """One row to append to the change log."""

    kind: ChangeKind
    name: str | None
    data: dict[str, Any] | None = None
    vectors: NDArray[np.float32] | None = None
    model: ModelInfo | None = None


def _refused_value(exc: Exception, data_error: type[Exception]) -> str | None:
    """What PostgreSQL refused to store, when ``exc`` says a value cannot be stored:
    bad input to report as such, not a failure of the store."""
    if isinstance(exc, data_error):  # psycopg's own (NUL in text), or class 22
        # One SQLSTATE (22P05) says both: jsonb's \u0000 and a character a LATIN1 database lacks.
        return (
            "a value PostgreSQL cannot store, such as text with a NUL character, or text "
            "the database's encoding cannot hold (a store's database should have "
            "ENCODING 'UTF8')"
        )
    if getattr(exc, "sqlstate", None) == _PROGRAM_LIMIT_EXCEEDED:
        return (
            "a value over PostgreSQL's size limit, most likely an utterance or name too "
            "long for the store's index"
        )
    return None


# SQLSTATE program_limit_exceeded: a value past a fixed limit of the server, on a write
# almost always an utterance or a name too long for a unique B-tree index's entry.
_PROGRAM_LIMIT_EXCEEDED = "54000"


def _misread_url(dsn: str, params: dict[str, Any]) -> bool:
    """Whether libpq read a URL's password as its host, port or database: an unencoded
    '/' or '@' in it ends the user information early (``app:Xy7/Qw9@host`` reads as host
    ``app``, port ``Xy7``), and every message naming the target then showed it."""
    text = dsn.strip()
    if not text.lower().startswith(("postgresql://", "postgres://")):
        return False
    rest = text.split("://", 1)[1]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    path = rest[len(authority) :].split("?", 1)[0].split("#", 1)[0]
    # Raw, before percent-decoding: an encoded %40 in a database name is no sign.
    port = str(params.get("port") or "")
    return authority.count("@") > 1 or "@" in path or not re.fullmatch(r"[0-9]*(,[0-9]*)*", port)


def _check_encoding(conn: psycopg.Connection[Any], target: str) -> None:
    """Refuse a database whose encoding is SQL_ASCII, before anything is created in it.

    Such a database stores bytes, not text: psycopg hands its text columns back as
    ``bytes``, so a store made there opened once and never again (its own records read
    back as bytes), and any non-ASCII text failed as an outage to retry.

    Raises:
        StorageError: the database's encoding is SQL_ASCII.
    """
    raw = conn.info.parameter_status("server_encoding")
    encoding = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    if encoding.upper() == "SQL_ASCII":
        msg = (
            f"the database at {target} has encoding SQL_ASCII, which holds bytes, not "
            "text: create the store's database with ENCODING 'UTF8' (for example "
            "CREATE DATABASE routes ENCODING 'UTF8' TEMPLATE template0)"
        )
        raise StorageError(msg)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - depends on the environment
        msg = f"PostgresStorage needs psycopg 3: {install_hint('postgres')}"
        raise MissingDependencyError(msg) from exc
    return psycopg


def _migration_1(cur: psycopg.Cursor[Any], s: str) -> None:
    for statement in (
        f"CREATE TABLE {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
        f"""CREATE TABLE {s}.routes (
            id bigserial PRIMARY KEY,
            name text NOT NULL UNIQUE,
            description text,
            threshold double precision,
            metadata jsonb NOT NULL DEFAULT '{{}}'
        )""",
        f"""CREATE TABLE {s}.utterances (
            id bigserial PRIMARY KEY,
            route_id bigint NOT NULL REFERENCES {s}.routes(id) ON DELETE CASCADE,
            text text NOT NULL,
            vector bytea NOT NULL,
            UNIQUE (route_id, text)
        )""",
        f"CREATE INDEX utterances_route ON {s}.utterances (route_id, id)",
        f"CREATE TABLE {s}.state (key text PRIMARY KEY, value jsonb NOT NULL)",
        f"""CREATE TABLE {s}.changes (
            seq bigserial PRIMARY KEY,
            origin text NOT NULL,
            kind text NOT NULL,
            name text,
            data jsonb,
            vectors bytea,
            model_id text,
            dimension integer,
            committed_at timestamptz NOT NULL DEFAULT now()
        )""",
    ):
        cur.execute(statement)


def _migration_2(cur: psycopg.Cursor[Any], s: str) -> None:
    """Version 2: no table changes; what the tables hold changed since 0.2.0 wrote
    version 1: negative examples as the reserved route ``__negatives__`` and fitted
    policies with fields 0.2.0 does not know (n-gram features, the out-of-scope
    scorer). 0.2.0 read them as a route it answered with and as a head without them;
    it refuses a newer version at open, so the number is what makes it refuse. A
    version-1 store holding a route of the reserved name (a 0.2.0 user's) is refused,
    nothing migrated, as SQLite's step to its version 3 refuses it."""
    cur.execute(f"SELECT 1 FROM {s}.routes WHERE name = %s", (NEGATIVES_ROUTE,))
    if cur.fetchone() is not None:
        raise pre_negatives_route_error()


# Index i holds the step from schema version i to i + 1. Append, never edit.
MIGRATIONS: list[Callable[[psycopg.Cursor[Any], str], None]] = [_migration_1, _migration_2]


def _route_doc(route: Route, *, utterances: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "description": route.description,
        "threshold": route.threshold,
        "metadata": route.metadata,
    }
    if utterances:
        doc["utterances"] = list(route.utterances)
    return doc


def _route_from_doc(name: str, doc: dict[str, Any], utterances: Sequence[str]) -> Route:
    return Route.model_construct(
        name=name,
        utterances=list(utterances),
        description=doc.get("description"),
        threshold=doc.get("threshold"),
        metadata=dict(doc.get("metadata") or {}),
    )


# The kinds of change a row of the log may hold ("reload" rows are read from the tables).
_LOGGED_KINDS = frozenset(get_args(ChangeKind)) - {"reload", "resync"}


def _texts(data: dict[str, Any], field: str) -> list[str]:
    texts = data.get(field, [])
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        msg = f"{field} is not a list of strings"
        raise ValueError(msg)
    return texts


def _change_from_row(
    seq: int,
    origin: str,
    kind: str,
    name: str | None,
    data: Any,
    blob: bytes | None,
    model_id: str | None,
    dim: int | None,
) -> Change:
    """A log row's change, checked as far as applying it needs: a ``ValueError`` or
    ``TypeError`` means a row this version cannot read."""
    data = {} if data is None else data
    if kind not in _LOGGED_KINDS or not isinstance(name, str) or not isinstance(data, dict):
        msg = f"{kind!r} is not a kind of change, or it has no name or no JSON object"
        raise ValueError(msg)
    model = ModelInfo(model_id, int(dim)) if model_id is not None and dim is not None else None
    vectors = None
    if blob is not None and model is not None:
        vectors = np.frombuffer(bytes(blob), dtype=np.float32).reshape(-1, model.dimension)
    change = cast(ChangeKind, kind)
    if kind == "set_state":
        value = data.get("value")
        if value is not None and not isinstance(value, dict):
            msg = f"state {name!r} is not a JSON object"
            raise ValueError(msg)
        return Change(seq, change, name, state={name: value}, origin=origin)
    if kind == "update_route":
        route = _route_from_doc(name, data, [])
        return Change(seq, change, name, route=route, origin=origin)
    texts = _texts(data, "utterances" if kind == "put_route" else "texts")
    rows = 0 if vectors is None else len(vectors)
    if kind in ("put_route", "add_utterances") and rows != len(texts):
        msg = f"{len(texts)} utterances but {rows} vectors"
        raise ValueError(msg)
    if kind == "put_route":
        route = _route_from_doc(name, data, texts)
        return Change(seq, change, name, route=route, vectors=vectors, model=model, origin=origin)
    return Change(
        seq, change, name, texts=tuple(texts), vectors=vectors, model=model, origin=origin
    )


class PostgresStorage:
    """Routes and vectors in PostgreSQL, with a change log that replicas follow.

    Tables live in their own schema (default ``synaptoroute``), created and migrated
    on open. An unreachable server or a bad DSN raises :class:`StorageError` within
    about ``connect_timeout`` seconds.

    Args:
        dsn: a libpq connection string or ``postgresql://`` URL.
        schema: the PostgreSQL schema holding the tables (lower-case identifier).
        connect_timeout: seconds to wait for a connection (libpq counts at least 2).
        lock_timeout: seconds a write waits for another replica's write.
        keep_changes: change-log rows kept at least (pruned back to them every
            ``prune_every`` changes); replicas further behind reload everything.
        poll_interval: seconds between safety-net reads of the log while listening.

    The durations must be above 0 and at most 2,147,483 seconds (PostgreSQL's limit).

    Example:
        >>> store = PostgresStorage("postgresql://app@db.internal/routes")  # doctest: +SKIP
        >>> router = AdaptiveRouter(storage=store)  # doctest: +SKIP
    """

    batch_size = 1000
    prune_every = 1000

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "synaptoroute",
        connect_timeout: float = 5.0,
        lock_timeout: float = 30.0,
        keep_changes: int = 100_000,
        poll_interval: float = 5.0,
    ) -> None:
        pg = _psycopg()
        if not _SCHEMA_NAME.match(schema):
            msg = f"schema must be a lower-case identifier of at most 40 characters, got {schema!r}"
            raise StorageError(msg)
        if isinstance(keep_changes, bool) or not isinstance(keep_changes, int) or keep_changes < 1:
            msg = f"keep_changes must be at least 1, as an int; got {keep_changes!r}"
            raise StorageError(msg)
        self.schema = schema
        self.connect_timeout = check_int_ms_seconds(
            connect_timeout, "connect_timeout", "PostgreSQL"
        )
        # PostgreSQL reads a lock_timeout of 0 ms as "wait for good": at least 1 ms.
        self.lock_timeout = max(
            check_int_ms_seconds(lock_timeout, "lock_timeout", "PostgreSQL"), 0.001
        )
        self.keep_changes = keep_changes
        self.poll_interval = check_int_ms_seconds(poll_interval, "poll_interval", "PostgreSQL")
        self.origin = uuid.uuid4().hex
        self._s = f'"{schema}"'
        self._channel = f"synaptoroute_{schema}"
        try:
            params = pg.conninfo.conninfo_to_dict(dsn)
            self._conninfo = pg.conninfo.make_conninfo(
                dsn,
                connect_timeout=max(2, math.ceil(self.connect_timeout)),
                application_name=params.get("application_name") or "synaptoroute",
                # Text goes out as UTF-8 whatever the database's encoding: the server
                # refuses what that encoding cannot hold (22P05: bad input), where a
                # client encoding of LATIN1 failed in the driver with a UnicodeEncodeError.
                client_encoding="UTF8",
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
                tcp_user_timeout=min(int(max(self.connect_timeout, 5) * 2000), _INT_MAX),
            )
        except pg.Error as exc:
            # libpq quotes the offending part of the string, which may be a password.
            reason = re.sub(r'"[^"]*"', '"..."', first_line(exc))
            msg = f"not a valid PostgreSQL DSN ({reason}; the DSN is not shown, it may hold a password)"
            raise StorageError(msg) from None
        if _misread_url(dsn, params):
            msg = (
                "not a valid PostgreSQL DSN (its user name or password holds a '/' or '@' "
                "that is not percent-encoded: write %2F and %40; the DSN is not shown, it "
                "may hold a password)"
            )
            raise StorageError(msg)
        self._target = "{}@{}:{}/{}".format(
            params.get("user") or os.environ.get("PGUSER", "?"),
            params.get("host") or os.environ.get("PGHOST", "localhost"),
            params.get("port") or os.environ.get("PGPORT", "5432"),
            params.get("dbname") or os.environ.get("PGDATABASE", "?"),
        )
        self._conn_lock = threading.RLock()
        self._apply_lock: threading.RLock = threading.RLock()
        self._cond = threading.Condition()
        self._conn: psycopg.Connection[Any] | None = None
        self._used = time.monotonic()
        self._committing = False
        self._closed = False
        self._applied: int | None = None  # last seq reflected in the follower's callback
        self._pending: Change | None = None  # a resync waiting for the follower
        self._watch: Watch | None = None
        self.last_write_seq: int | None = None
        # The server process of this store object's live write connection: notifications
        # it sent are its own writes, applied already, and need no read of the log. Only
        # the live session's: the pid of a closed one may be reused by another replica's
        # session, whose notifications must not be skipped (after a restore they carry a
        # seq at or before the one applied); a late one of a closed session of its own
        # costs no more than a read of the log.
        self._own_pid: int | None = None
        # A fork waits for a write (the apply lock; the router's once watched, which
        # the fork takes anyway), a call on the connection and a wake-up of waiters;
        # the child then opens its own sessions (_forked).
        hold_across_fork(self, STORE, lock="_apply_lock")
        hold_across_fork(self, CONNECTION, lock="_conn_lock", in_child="_forked")
        hold_across_fork(self, LEAF, lock="_cond")
        self._conn = self._connect()
        try:
            _check_encoding(self._conn, self._target)
            self._migrate(self._conn)
        except _psycopg().Error as exc:
            # A schema name PostgreSQL reserves (pg_*), a role that may not create
            # the schema or read its tables: a StorageError like every other failure
            # to open, not the driver's own exception.
            self._conn.close()
            msg = f"cannot open the store in schema {schema!r} at {self._target}: {first_line(exc)}"
            raise StorageError(msg) from exc
        except BaseException:
            self._conn.close()
            raise

    # -- connections -----------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        pg = _psycopg()
        start = time.monotonic()
        try:
            conn: psycopg.Connection[Any] = pg.connect(self._conninfo, autocommit=True)
        except pg.Error as exc:
            msg = (
                f"cannot connect to PostgreSQL {self._target} "
                f"(gave up after {time.monotonic() - start:.1f} s): {first_line(exc)}"
            )
            raise StorageError(msg) from exc
        try:
            conn.execute(
                "SELECT set_config('lock_timeout', %s, false)",
                (f"{int(self.lock_timeout * 1000)}ms",),
            )
        except BaseException as exc:
            # A session that cannot be set up is of no use, and nothing else would close it.
            conn.close()
            if isinstance(exc, pg.Error):
                msg = f"cannot set up a session on PostgreSQL {self._target}: {first_line(exc)}"
                raise StorageError(msg) from exc
            raise
        return conn

    def _run(
        self, doing: str, work: Callable[[psycopg.Connection[Any]], _T], *, write: bool = False
    ) -> _T:
        """Run ``work`` on the shared connection, turning database errors into StorageError.

        A connection that turns out to be dead (server restarted, connection killed)
        before a write reached COMMIT is replaced and the work retried once; the dead
        session's transaction was rolled back by the server, so nothing is doubled.
        """
        pg = _psycopg()
        after = "; nothing was changed" if write else ""
        with self._conn_lock:
            for attempt in (1, 2):
                if self._closed:
                    msg = f"PostgreSQL store {self._target} is closed; cannot {doing}{after}"
                    raise StorageError(msg)
                try:
                    conn = self._live_connection()
                except StorageError as exc:
                    msg = f"cannot {doing}: {exc}{after}"
                    raise StorageError(msg) from exc
                self._committing = False
                try:
                    return work(conn)
                except pg.Error as exc:
                    refused = _refused_value(exc, pg.DataError)
                    if write and not self._committing and refused:
                        # Bad input, not a store that may take a retry: the transaction
                        # was rolled back and the session is fine.
                        msg = (
                            f"PostgreSQL store {self._target}: cannot {doing}: {refused} "
                            f"({first_line(exc)}); nothing was changed"
                        )
                        raise InvalidInputError(msg) from exc
                    broken = conn.broken or conn.closed
                    if broken:
                        conn.close()
                        self._conn = None
                        self._own_pid = None  # its session is gone (see __init__)
                    if broken and attempt == 1 and not self._committing:
                        _log.info("PostgreSQL %s: connection lost; retrying", self._target)
                        continue
                    if self._committing:
                        after = (
                            "; the connection broke while committing, so the change may have "
                            "been stored (replicas then apply it from the change log)"
                        )
                    msg = f"PostgreSQL store {self._target}: cannot {doing}: {first_line(exc)}"
                    raise StorageError(msg + after) from exc
        raise AssertionError  # pragma: no cover - the loop returns or raises

    def _live_connection(self) -> psycopg.Connection[Any]:
        pg = _psycopg()
        conn = self._conn
        if conn is not None and not conn.closed and time.monotonic() - self._used > 1.0:
            # An idle connection may have died with a database restart; probing costs one
            # round trip and saves the next write from failing although the server is back.
            try:
                conn.execute("SELECT 1")
            except pg.Error:
                conn.close()
        if conn is None or conn.closed:
            # A new session replaces a closed one: the closed one's pid is no longer ours.
            self._own_pid = None
            if self._closed:  # close() shut a stalled session down under this call
                msg = f"PostgreSQL store {self._target} was closed"
                raise StorageError(msg)
            conn = self._conn = self._connect()
        self._used = time.monotonic()
        return conn

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        s = self._s
        # A current store (every open but the first) is only read: without the writers'
        # lock, so a replica opens while another holds it for a long write (a reencode).
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            if self._stored_schema_version(conn.cursor()) == SCHEMA_VERSION:
                return
        with conn.transaction():
            cur = conn.cursor()
            # Replicas starting together on an empty database take turns; the one that
            # waited finds the schema made (or migrated) by the other.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._lock_name,))
            version = self._stored_schema_version(cur)
            if version == SCHEMA_VERSION:
                return
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            for step in range(version, SCHEMA_VERSION):
                MIGRATIONS[step](cur, s)
            cur.execute(
                f"INSERT INTO {s}.meta(key, value) VALUES ('app', %s), ('version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (_APP_ID, str(SCHEMA_VERSION)),
            )

    def _stored_schema_version(self, cur: psycopg.Cursor[Any]) -> int:
        """The schema version of the store (0: no store yet, an empty schema).

        Raises:
            NotADatabaseError: the schema holds objects of another application.
            StorageError: the version is damaged, or newer than this code understands.
        """
        kinds = self._objects(cur)
        if not kinds:
            return 0
        meta = self._meta(cur)
        if meta is None or meta.get("app") != _APP_ID:
            msg = (
                f"schema {self.schema!r} in {self._target} holds {', '.join(kinds)} "
                "that are not a synaptoroute store; it was left untouched "
                "(pass another schema=)"
            )
            raise NotADatabaseError(msg)
        version = self._stored_version(meta.get("version"))
        if version > SCHEMA_VERSION:
            msg = (
                f"schema {self.schema!r} in {self._target} has version {version}, newer "
                f"than this synaptoroute understands ({SCHEMA_VERSION}); upgrade synaptoroute"
            )
            raise StorageError(msg)
        return version

    def _objects(self, cur: psycopg.Cursor[Any]) -> list[str]:
        """The kinds of objects the schema holds (empty for a missing or empty schema).

        Read from the catalogs, not information_schema: that lists only tables and views,
        and only those the role may use, so a schema holding another application's
        sequences or functions (or tables this role cannot see) passed as empty and got
        the store's tables created beside them.
        """
        in_schema = "IN (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s)"
        others = [
            ("operators", "pg_operator", "oprnamespace"),
            ("collations", "pg_collation", "collnamespace"),
            ("conversions", "pg_conversion", "connamespace"),
            ("text search objects", "pg_ts_config", "cfgnamespace"),
            ("text search objects", "pg_ts_dict", "dictnamespace"),
            ("text search objects", "pg_ts_parser", "prsnamespace"),
            ("text search objects", "pg_ts_template", "tmplnamespace"),
            ("operator classes", "pg_opclass", "opcnamespace"),
            ("operator classes", "pg_opfamily", "opfnamespace"),
            ("statistics objects", "pg_statistic_ext", "stxnamespace"),
            ("extensions", "pg_extension", "extnamespace"),
        ]
        parts = [
            # Indexes and TOAST tables belong to a table, which is counted itself.
            "SELECT CASE WHEN relkind IN ('v', 'm') THEN 'views' WHEN relkind = 'S' "
            "THEN 'sequences' WHEN relkind = 'c' THEN 'types' ELSE 'tables' END "
            f"FROM pg_class WHERE relnamespace {in_schema} AND relkind NOT IN ('i', 'I', 't')",
            f"SELECT 'functions' FROM pg_proc WHERE pronamespace {in_schema}",
            # A table's row type and every array type come with another object.
            f"SELECT 'types' FROM pg_type t WHERE typnamespace {in_schema} AND typrelid = 0 "
            "AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid)",
            *(
                f"SELECT '{kind}' FROM {table} WHERE {column} {in_schema}"
                for kind, table, column in others
            ),
        ]
        cur.execute(
            f"SELECT DISTINCT kind FROM ({' UNION ALL '.join(parts)}) AS objects(kind) ORDER BY 1",
            {"schema": self.schema},
        )
        return [row[0] for row in cur.fetchall()]

    def _meta(self, cur: psycopg.Cursor[Any]) -> dict[str, str] | None:
        """The store's ``app`` and ``version`` entries, or ``None`` when the schema has no
        table ``meta`` of text ``key`` and ``value`` (another application's, or none)."""
        cur.execute(
            "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = 'meta' AND c.relkind IN ('r', 'p') "
            "AND a.attnum > 0 AND NOT a.attisdropped AND a.atttypid = 'text'::regtype",
            (self.schema,),
        )
        if not {"key", "value"} <= {row[0] for row in cur.fetchall()}:
            return None
        cur.execute(f"SELECT key, value FROM {self._s}.meta WHERE key IN ('app', 'version')")
        return {str(k): str(v) for k, v in cur.fetchall()}

    def _stored_version(self, value: str | None) -> int:
        # int() would take " 1", "1_0" or other scripts' digits, and raise a bare
        # ValueError on anything else.
        if value is None or not re.fullmatch(r"[1-9][0-9]{0,8}", value):
            msg = (
                f"schema {self.schema!r} in {self._target} is a synaptoroute store whose "
                f"schema version is damaged ({value!r}); it was left untouched"
            )
            raise StorageError(msg)
        return int(value)

    @property
    def _lock_name(self) -> str:
        return f"synaptoroute:{self.schema}"

    @property
    def schema_version(self) -> int:
        """The schema version of the store."""
        sql = f"SELECT value FROM {self._s}.meta WHERE key='version'"
        row = self._run("read the schema version", lambda conn: conn.execute(sql).fetchone())
        return int(row[0]) if row else 0

    # -- reads -----------------------------------------------------------------------
    def model_info(self) -> ModelInfo | None:
        """The model that made the stored vectors, or ``None``."""
        return self._run("read the model", lambda conn: self._model(conn.cursor()))

    def _model(self, cur: psycopg.Cursor[Any]) -> ModelInfo | None:
        cur.execute(f"SELECT key, value FROM {self._s}.meta WHERE key IN ('model_id', 'dimension')")
        return stored_model(dict(cur.fetchall()), repr(self))

    def _read_routes(
        self, conn: psycopg.Connection[Any], names: Sequence[str] | None = None
    ) -> tuple[list[StoredRoute], ModelInfo | None]:
        s = self._s
        cur = conn.cursor(binary=True)
        model = self._model(cur)
        if names is None:
            cur.execute(f"SELECT id, name, description, threshold, metadata FROM {s}.routes")
        else:
            cur.execute(
                f"SELECT id, name, description, threshold, metadata FROM {s}.routes "
                "WHERE name = ANY(%s)",
                (list(names),),
            )
        routes = sorted(cur.fetchall(), key=lambda r: r[0])
        if not routes:
            return [], model
        ids = [r[0] for r in routes]
        route_ids, texts, matrix = self._read_utterances(conn, ids, model)
        out = []
        parts = split_by_route(route_ids, texts, matrix, ids)
        for (_, name, description, threshold, metadata), (utterances, vectors) in zip(
            routes, parts, strict=True
        ):
            route = _route_from_doc(
                name,
                {"description": description, "threshold": threshold, "metadata": metadata},
                utterances,
            )
            out.append(StoredRoute(route, vectors))
        return out, model

    def _read_utterances(
        self, conn: psycopg.Connection[Any], ids: Sequence[int], model: ModelInfo | None
    ) -> tuple[NDArray[np.int64], list[str], NDArray[np.float32]]:
        """The utterances of routes ``ids`` (ascending), by route and insertion order:
        their route ids, texts and vectors.

        Streamed through a server-side cursor into one buffer the router's index takes
        over (synaptoroute._buffers), as the SQLite store does: a client-side cursor
        held the whole result, then its rows' bytes, then a copy per route.
        """
        where = f"FROM {self._s}.utterances WHERE route_id = ANY(%s)"
        counted = conn.execute(f"SELECT count(*) {where}", (list(ids),)).fetchone()
        with conn.cursor(name=f"synaptoroute_load_{uuid.uuid4().hex}", binary=True) as cur:
            cur.execute(
                f"SELECT route_id, text, vector {where} ORDER BY route_id, id", (list(ids),)
            )
            chunks = iter(lambda: cur.fetchmany(_LOAD_CHUNK), [])
            count = int(counted[0]) if counted else 0
            dim = model.dimension if model else 0
            return read_utterances(chunks, count, dim, repr(self))

    def load(self) -> list[StoredRoute]:
        """Every route with its vectors, in insertion order, without any encoding.

        Also records the change-log position of what was read, so a follower started
        afterwards (:meth:`watch`) continues exactly from there.
        """
        with self._apply_lock:
            snap = self._run("load the routes", self._snapshot)
            if self._watch is None:
                self._applied = snap.seq
        return list(snap.routes)

    def _snapshot(self, conn: psycopg.Connection[Any]) -> Change:
        """The whole store and the log position it corresponds to, read consistently."""
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = conn.execute(f"SELECT coalesce(max(seq), 0) FROM {self._s}.changes").fetchone()
            return self._whole(conn, int(row[0]) if row else 0)

    def _whole(self, conn: psycopg.Connection[Any], seq: int) -> Change:
        routes, model = self._read_routes(conn)
        rows = conn.execute(f"SELECT key, value FROM {self._s}.state").fetchall()
        state: dict[str, dict[str, Any] | None] = {k: v for k, v in rows}
        return Change(seq, "reload", routes=tuple(routes), model=model, state=state)

    def get_state(self, key: str) -> dict[str, Any] | None:
        """A JSON document stored under ``key``."""
        if "\x00" in key:  # text cannot hold one: no such key is stored
            return None
        sql = f"SELECT value FROM {self._s}.state WHERE key=%s"
        row = self._run("read state", lambda conn: conn.execute(sql, (key,)).fetchone())
        return dict(row[0]) if row else None

    def current_seq(self) -> int:
        """The newest sequence number in the change log (0 for none)."""
        sql = f"SELECT coalesce(max(seq), 0) FROM {self._s}.changes"
        row = self._run("read the change log", lambda conn: conn.execute(sql).fetchone())
        return int(row[0]) if row else 0

    # -- writes ----------------------------------------------------------------------
    def _write(
        self,
        kind: ChangeKind,
        name: str | None,
        body: Callable[[psycopg.Cursor[Any]], None],
        *,
        data: dict[str, Any] | None = None,
        vectors: NDArray[np.float32] | None = None,
        model: ModelInfo | None = None,
    ) -> int:
        return self._write_many(body, [_LogEntry(kind, name, data, vectors, model)])

    def _write_many(
        self, body: Callable[[psycopg.Cursor[Any]], None], entries: Sequence[_LogEntry]
    ) -> int:
        """Run ``body`` and log ``entries`` (one change each) in one transaction.

        Returns the sequence number of the last entry.
        """
        pg = _psycopg()
        s = self._s
        rows = [
            (
                self.origin,
                e.kind,
                e.name,
                None if e.data is None else pg.types.json.Jsonb(e.data),
                None
                if e.vectors is None
                else np.ascontiguousarray(e.vectors, np.float32).tobytes(),
                e.model.model_id if e.model else None,
                e.model.dimension if e.model else None,
            )
            for e in entries
        ]

        def work(conn: psycopg.Connection[Any]) -> tuple[int, Change | None, bool]:
            with conn.transaction():
                cur = conn.cursor()
                # One writer at a time per store: sequence numbers follow commit order.
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._lock_name,))
                body(cur)
                seqs = []
                for row in rows:
                    cur.execute(
                        f"INSERT INTO {s}.changes(origin, kind, name, data, vectors, model_id, "
                        "dimension) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING seq",
                        row,
                    )
                    got = cur.fetchone()
                    assert got is not None
                    seqs.append(int(got[0]))
                seq = seqs[-1]
                cur.execute("SELECT pg_notify(%s, %s)", (self._channel, str(seq)))
                self._own_pid = conn.info.backend_pid
                resync = None
                # A sequence number this replica has applied already: the log went
                # back (the store was restored from a backup, or dropped and made anew).
                rewound = self._applied is not None and seqs[0] <= self._applied
                if self._applied is not None:
                    touched = [(e.kind, e.name) for e in entries]
                    resync = self._resync(conn, seqs[0], seq, touched, rewound=rewound)
                if any(n % self.prune_every == 0 for n in seqs):
                    self._prune(cur, seq)
                self._committing = True
            return seq, resync, rewound

        with self._apply_lock:
            label = entries[0].kind.replace("_", " ")
            seq, resync, rewound = self._run(label, work, write=True)
            self.last_write_seq = seq
            if self._applied is not None:
                if resync is not None:
                    self._pending = resync
                if rewound:
                    _log.warning(
                        "the change log of PostgreSQL %s went back: this write got seq %d, "
                        "at or before seq %d already applied here (was the store restored "
                        "from a backup?); reloading everything",
                        self._target,
                        seq,
                        self._applied_or_zero(),
                    )
                    self._rewind(seq)
                else:
                    self._advance(seq)
        return seq

    def _resync(
        self,
        conn: psycopg.Connection[Any],
        first: int,
        seq: int,
        own: Sequence[tuple[ChangeKind, str | None]],
        *,
        rewound: bool = False,
    ) -> Change | None:
        """What the follower must reset when this write raced writes it has not applied.

        The router applies its own write (log entries ``first`` to ``seq``, kinds and
        names ``own``) locally, on top of a state that may lack another replica's
        earlier write; afterwards the follower resets every route either touched to
        its exact state as of ``seq``, read in this transaction. When the log no longer
        tells what those writes were (pruned, or ``rewound``: it went back), the
        follower resets everything.
        """
        assert self._applied is not None
        missed = first > self._applied + 1
        if rewound or (missed and self._applied < self._pruned_through(conn)):
            # Rows this replica never applied were pruned (or belong to another history):
            # the rows left cannot name every route they touched. Once this write has
            # moved the position past them the follower's own check of the pruned log
            # no longer fires, so the whole store is read here, as the follower would.
            return self._whole(conn, seq)
        rows = conn.execute(
            f"SELECT kind, name FROM {self._s}.changes WHERE seq > %s AND seq < %s",
            (self._applied, first),
        ).fetchall()
        pending = self._pending
        if not rows and pending is None:
            return None
        touched = [*rows, *own]
        if any(k == "reload" for k, _ in touched) or (pending and pending.kind == "reload"):
            return self._whole(conn, seq)
        names = {n for k, n in touched if k != "set_state" and n is not None}
        keys = {n for k, n in touched if k == "set_state" and n is not None}
        if pending is not None:
            names.update(pending.names)
            keys.update(pending.state)
        routes, model = self._read_routes(conn, sorted(names))
        state: dict[str, dict[str, Any] | None] = {}
        for key in sorted(keys):
            row = conn.execute(f"SELECT value FROM {self._s}.state WHERE key=%s", (key,)).fetchone()
            state[key] = row[0] if row else None
        return Change(
            seq,
            "resync",
            names=tuple(sorted(names)),
            routes=tuple(routes),
            model=model,
            state=state,
        )

    def _prune(self, cur: psycopg.Cursor[Any], seq: int) -> None:
        through = seq - self.keep_changes
        if through <= 0:
            return
        cur.execute(f"DELETE FROM {self._s}.changes WHERE seq <= %s", (through,))
        cur.execute(
            f"INSERT INTO {self._s}.meta(key, value) VALUES ('pruned_through', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (str(through),),
        )

    def _set_model(self, cur: psycopg.Cursor[Any], model: ModelInfo) -> None:
        def is_empty() -> bool:
            cur.execute(f"SELECT 1 FROM {self._s}.utterances LIMIT 1")
            return cur.fetchone() is None

        _refuse_mixing(self._model(cur), model, is_empty)
        cur.execute(
            f"INSERT INTO {self._s}.meta(key, value) VALUES ('model_id', %s), ('dimension', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (model.model_id, str(model.dimension)),
        )

    def _route_id(self, cur: psycopg.Cursor[Any], name: str) -> int:
        cur.execute(f"SELECT id FROM {self._s}.routes WHERE name=%s", (name,))
        row = cur.fetchone()
        if row is None:
            raise RouteNotFoundError(name)
        return int(row[0])

    def _insert_route(
        self, cur: psycopg.Cursor[Any], route: Route, vectors: NDArray[np.float32]
    ) -> None:
        s = self._s
        pg = _psycopg()
        # A route replaced keeps its row, so its place among the routes (the ids' order),
        # as in the router that replaced it: every replica lists one order.
        cur.execute(
            f"INSERT INTO {s}.routes(name, description, threshold, metadata) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
            "description=EXCLUDED.description, threshold=EXCLUDED.threshold, "
            "metadata=EXCLUDED.metadata RETURNING id",
            (route.name, route.description, route.threshold, pg.types.json.Jsonb(route.metadata)),
        )
        row = cur.fetchone()
        assert row is not None
        rid = int(row[0])
        cur.execute(f"DELETE FROM {s}.utterances WHERE route_id=%s", (rid,))
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        with cur.copy(
            f"COPY {s}.utterances (route_id, text, vector) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "text", "bytea"])
            for text, vec in zip(route.utterances, matrix, strict=True):
                copy.write_row((rid, text, vec.tobytes()))

    def put_route(self, route: Route, vectors: NDArray[np.float32], model: ModelInfo) -> None:
        """Create or replace one route and its utterances (see :meth:`put_routes`)."""
        self.put_routes([StoredRoute(route, vectors)], model)

    def put_routes(self, routes: Sequence[StoredRoute], model: ModelInfo) -> None:
        """Create or replace routes and their utterances, all in one transaction.

        The change log gets one ``put_route`` entry per route, committed together.
        """
        for item in routes:
            _check_vectors(item.route.utterances, item.vectors, model)
            check_route(item.route)
        if not routes:
            return

        def body(cur: psycopg.Cursor[Any]) -> None:
            self._set_model(cur, model)
            for item in routes:
                self._insert_route(cur, item.route, item.vectors)

        entries = [
            _LogEntry(
                "put_route",
                item.route.name,
                _route_doc(item.route, utterances=True),
                item.vectors,
                model,
            )
            for item in routes
        ]
        self._write_many(body, entries)

    def add_utterances(
        self, name: str, texts: Sequence[str], vectors: NDArray[np.float32], model: ModelInfo
    ) -> None:
        """Append utterances to a route in one transaction (see :meth:`Storage.add_utterances`)."""
        _check_vectors(texts, vectors, model)
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)

        def body(cur: psycopg.Cursor[Any]) -> None:
            self._set_model(cur, model)
            rid = self._route_id(cur, name)
            cur.executemany(
                f"INSERT INTO {self._s}.utterances(route_id, text, vector) VALUES (%s, %s, %s) "
                "ON CONFLICT (route_id, text) DO NOTHING",
                [(rid, t, v.tobytes()) for t, v in zip(texts, matrix, strict=True)],
            )

        data = {"texts": list(texts)}
        self._write("add_utterances", name, body, data=data, vectors=matrix, model=model)

    def delete_route(self, name: str) -> None:
        """Remove a route and its utterances."""

        def body(cur: psycopg.Cursor[Any]) -> None:
            cur.execute(f"DELETE FROM {self._s}.routes WHERE id=%s", (self._route_id(cur, name),))

        self._write("delete_route", name, body)

    def delete_utterances(self, name: str, texts: Sequence[str]) -> None:
        """Remove some utterances of a route."""

        def body(cur: psycopg.Cursor[Any]) -> None:
            cur.execute(
                f"DELETE FROM {self._s}.utterances WHERE route_id=%s AND text = ANY(%s)",
                (self._route_id(cur, name), list(texts)),
            )

        self._write("delete_utterances", name, body, data={"texts": list(texts)})

    def update_route(self, route: Route) -> None:
        """Store a route's description, threshold and metadata."""
        check_route(route)
        pg = _psycopg()

        def body(cur: psycopg.Cursor[Any]) -> None:
            rid = self._route_id(cur, route.name)
            cur.execute(
                f"UPDATE {self._s}.routes SET description=%s, threshold=%s, metadata=%s "
                "WHERE id=%s",
                (route.description, route.threshold, pg.types.json.Jsonb(route.metadata), rid),
            )

        self._write("update_route", route.name, body, data=_route_doc(route, utterances=False))

    def replace_all(self, routes: Sequence[StoredRoute], model: ModelInfo) -> None:
        """Replace every route and the model record in one transaction."""
        for item in routes:
            _check_vectors(item.route.utterances, item.vectors, model)
            check_route(item.route)

        def body(cur: psycopg.Cursor[Any]) -> None:
            cur.execute(f"DELETE FROM {self._s}.routes")
            cur.execute(f"DELETE FROM {self._s}.meta WHERE key IN ('model_id', 'dimension')")
            self._set_model(cur, model)
            for item in routes:
                self._insert_route(cur, item.route, item.vectors)

        # Followers read the new content from the tables rather than from the log.
        self._write("reload", None, body, model=model)

    def set_state(self, key: str, value: dict[str, Any] | None) -> None:
        """Store (or with ``None`` delete) a JSON document."""
        pg = _psycopg()

        def body(cur: psycopg.Cursor[Any]) -> None:
            if value is None:
                cur.execute(f"DELETE FROM {self._s}.state WHERE key=%s", (key,))
            else:
                cur.execute(
                    f"INSERT INTO {self._s}.state(key, value) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    (key, pg.types.json.Jsonb(value)),
                )

        self._write("set_state", key, body, data={"value": value})

    # -- the change feed -------------------------------------------------------------
    def watch(
        self,
        callback: Callable[[Sequence[Change]], None],
        *,
        lock: threading.RLock | None = None,
        since: int | None = None,
        weak: bool = False,
    ) -> Watch:
        """Call ``callback`` with every change committed after ``since``, in order.

        ``since`` defaults to the position of the last :meth:`load`. Changes this
        store writes itself are not delivered (the writer applied them already),
        except when they raced another replica's write: then a ``resync`` follows.
        ``lock`` is held while ``callback`` runs and during every write, so pass the
        lock that guards the state the callback updates (the router's). With
        ``weak`` (the router's own follower), a bound-method ``callback`` is held
        weakly: once its object is collected, the follower ends and closes its
        session.

        Raises:
            StorageError: the store is already watched for a router that is still
                alive, or was never loaded and no ``since`` was given.
        """
        with self._apply_lock:
            # A watch whose router is gone (collected without close()) is ending: replaced.
            if self._watch is not None and self._watch.callback is not None:
                msg = "this PostgresStorage is already watched; open one store per router"
                raise StorageError(msg)
            if since is not None:
                self._applied = since
            if self._applied is None:
                msg = "call load() first or pass since= to watch()"
                raise StorageError(msg)
            self._watch = Watch(
                self, callback, lock if lock is not None else self._apply_lock, weak=weak
            )
            if lock is not None:
                self._apply_lock = lock
            return self._watch

    @property
    def watching(self) -> Watch | None:
        """The running follower, if any."""
        return self._watch

    @property
    def applied_seq(self) -> int:
        """The last change-log position reflected in the watcher's state (0 if none)."""
        return self._applied_or_zero()

    def wait_for_seq(self, seq: int, timeout: float | None = None) -> bool:
        """Block until every change up to ``seq`` is applied; ``False`` on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._applied_or_zero() >= seq and self._pending is None, timeout
            )

    def _applied_or_zero(self) -> int:
        return self._applied or 0

    def _advance(self, seq: int) -> None:
        with self._cond:
            self._applied = max(self._applied_or_zero(), seq)
            self._cond.notify_all()

    def _rewind(self, seq: int) -> None:
        """Set the position back to ``seq``: the log went back (a restored backup)."""
        with self._cond:
            self._applied = seq
            self._cond.notify_all()

    def _newest(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(f"SELECT coalesce(max(seq), 0) FROM {self._s}.changes").fetchone()
        return int(row[0]) if row else 0

    def _read_log(self, conn: psycopg.Connection[Any], since: int) -> list[tuple[Any, ...]]:
        cur = conn.cursor(binary=True)
        cur.execute(
            "SELECT seq, origin, kind, name, data, vectors, model_id, dimension "
            f"FROM {self._s}.changes WHERE seq > %s ORDER BY seq LIMIT %s",
            (since, self.batch_size),
        )
        return list(cur.fetchall())

    def _pruned_through(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(
            f"SELECT value FROM {self._s}.meta WHERE key = 'pruned_through'"
        ).fetchone()
        return int(row[0]) if row else 0

    def _row_to_change(self, row: tuple[Any, ...]) -> Change:
        """The change a row of the log holds (``seq, origin, kind, name, data,
        vectors, model_id, dimension``; not a ``reload``, which the follower reads from
        the tables).

        Raises:
            UnreadableChangeError: the row is not one this version writes (another
                version's writer, a damaged or hand-made row); the follower then reads
                the whole store from the tables instead.
        """
        try:
            return _change_from_row(*row)
        except (TypeError, ValueError) as exc:
            msg = f"the change-log row seq {row[0]} cannot be read: {first_line(exc)}"
            raise UnreadableChangeError(msg) from exc

    def _forked(self) -> None:
        # In a forked child, under every registered lock: the inherited connections
        # are the parent's sessions. They are disowned (closing them here cannot end
        # the parent's sessions), the next call connects anew, and a watched store's
        # follower, whose thread did not come along, starts again on its own session.
        if self._conn is not None:
            disown(self._conn)
            self._conn = None
        # The parent's session pid: the child's own writes go through new sessions.
        self._own_pid = None
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.disown()
            callback = watch.callback
            if callback is not None:
                self._watch = Watch(self, callback, watch.lock, weak=watch.weak)

    # -- lifetime --------------------------------------------------------------------
    def close(self) -> None:
        """Stop the follower and close the connection.

        Waits for a call running on the connection for at most ``lock_timeout`` plus
        ``connect_timeout`` seconds; one still running then (a stalled server) has
        its socket shut down and fails with :class:`StorageError`.
        """
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
        if not self._conn_lock.acquire(timeout=self.lock_timeout + self.connect_timeout):
            self._closed = True  # the blocked call, woken, reconnects no more
            conn = self._conn
            if conn is not None:
                _log.warning(
                    "PostgreSQL %s: closing the store while a call still waits for the "
                    "server; its connection was shut down",
                    self._target,
                )
                shut_down(conn)  # the call then closes the connection itself
            return
        try:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        finally:
            self._conn_lock.release()

    def __repr__(self) -> str:
        return f"PostgresStorage({self._target!r}, schema={self.schema!r})"
