"""PostgreSQL storage and replicas, against a real PostgreSQL server (no mocks).

The server comes from ``scripts/postgres.sh`` (``.ci/run`` starts one and sets
``SYNAPTOROUTE_TEST_PG_DSN``). Without a DSN these tests skip; with
``SYNAPTOROUTE_TEST_PG_REQUIRED=1`` (CI) a missing server is a failure instead.

Replicas run in separate processes: this file doubles as the replica program
(``python tests/test_postgres.py --replica DSN SCHEMA ENCODER``), which reads one
JSON command per line on stdin and answers one JSON line on stdout.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from encoder_doubles import CountingEncoder
from forking import in_child, needs_fork
from numpy.typing import NDArray
from waiting import wait_until as _wait_until

from synaptoroute import (
    AdaptiveRouter,
    Encoder,
    HashingEncoder,
    InvalidInputError,
    NotADatabaseError,
    Route,
    RouteExistsError,
    RouteNotFoundError,
    SQLiteStorage,
    Storage,
    StorageError,
)
from synaptoroute.storage import ModelInfo, StoredRoute
from synaptoroute.storage.polling import PollingWatch
from synaptoroute.storage.postgres import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_DIR = os.environ.get("SYNAPTOROUTE_TEST_PG_DIR", "")
WAIT = 30.0  # generous upper bound for a replica to see a change; never a timing assertion

ROUTES = [
    Route(name="billing", utterances=["I need a refund", "where is my invoice"], threshold=0.3),
    Route(name="support", utterances=["the app crashes", "I cannot log in"], metadata={"t": 2}),
    Route(name="weather", utterances=["will it rain tomorrow"], description="forecasts"),
]


# -- what both sides compute ----------------------------------------------------------
def digest(texts: Sequence[str], vectors: NDArray[np.float32]) -> str:
    """A route's utterances with their exact vector bytes, order-independent."""
    pairs = sorted(
        (t, np.ascontiguousarray(v, np.float32).tobytes())
        for t, v in zip(texts, vectors, strict=True)
    )
    h = hashlib.sha256()
    for text, blob in pairs:
        h.update(text.encode())
        h.update(blob)
    return h.hexdigest()


def router_state(router: AdaptiveRouter) -> dict[str, Any]:
    """Routes as the router holds them, and what its compiled matrix holds per route."""
    snap = router._index.snapshot()
    index = {}
    for pos, rid in enumerate(snap.live_routes.tolist()):
        rows = snap._route_rows(pos)
        name = snap.names[rid]
        assert name is not None
        index[name] = digest([snap.texts[r] for r in rows], snap.matrix[rows])
    routes = {
        r.name: {
            "utterances": sorted(r.utterances),
            "threshold": r.threshold,
            "description": r.description,
            "metadata": r.metadata,
        }
        for r in router.list_routes()
    }
    return {"routes": routes, "index": index, "threshold": router.threshold}


def stored_state(stored: Sequence[StoredRoute], threshold: float) -> dict[str, Any]:
    """The same view computed from what the database holds."""
    routes = {
        s.route.name: {
            "utterances": sorted(s.route.utterances),
            "threshold": s.route.threshold,
            "description": s.route.description,
            "metadata": s.route.metadata,
        }
        for s in stored
    }
    index = {s.route.name: digest(s.route.utterances, s.vectors) for s in stored if len(s.vectors)}
    return {"routes": routes, "index": index, "threshold": threshold}


# -- the replica program (child process) ----------------------------------------------
def _burst(router: AdaptiveRouter, seed: int, n: int, names: list[str]) -> dict[str, int]:
    """``n`` random writes on overlapping route names; the other replica does the same."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "sigma", "omega", "kappa", "lambda", "theta"]
    outcome: dict[str, int] = {}
    for i in range(n):
        name = rng.choice(names)
        texts = [f"{rng.choice(words)} {rng.choice(words)} {seed} {i} {k}" for k in range(3)]
        op = rng.choice(["put", "put", "add", "add", "add", "del_utt", "threshold", "delete"])
        try:
            if op == "put":
                router.add_route(Route(name=name, utterances=texts), replace=True)
            elif op == "add":
                router.add_utterances(name, texts)
            elif op == "del_utt":
                route = router.get_route(name)
                router.delete_utterances(name, route.utterances[: rng.randint(1, 2)])
            elif op == "threshold":
                router.set_threshold(name, round(rng.uniform(0.1, 0.9), 3))
            else:
                router.delete_route(name)
            key = op
        except (RouteNotFoundError, RouteExistsError) as exc:
            key = type(exc).__name__
        outcome[key] = outcome.get(key, 0) + 1
    return outcome


def _replica_main(dsn: str, schema: str, encoder_kind: str) -> None:
    from synaptoroute.postgres import PostgresStorage

    inner = Encoder() if encoder_kind == "real" else HashingEncoder()
    encoder = CountingEncoder(inner)
    store = PostgresStorage(dsn, schema=schema, connect_timeout=10, poll_interval=1.0)
    router = AdaptiveRouter(encoder, store)

    def handle(op: str, args: dict[str, Any]) -> Any:
        if op == "query":
            return [
                [m.name, m.score, m.candidate, m.reason] for m in router.query_batch(args["texts"])
            ]
        if op == "wait":
            return store.wait_for_seq(args["seq"], args.get("timeout", WAIT))
        if op == "state":
            return {**router_state(router), "applied": store.applied_seq}
        if op == "encoded":
            return len(encoder.texts)
        if op == "connected":
            return bool(store.watching and store.watching.connected)
        if op == "burst":
            return _burst(router, **args)
        if op == "add_route":
            router.add_route(Route(**args["route"]), replace=args.get("replace", False))
        elif op == "add_utterances":
            router.add_utterances(args["name"], args["texts"])
        elif op == "delete_route":
            router.delete_route(args["name"])
        elif op == "delete_utterances":
            router.delete_utterances(args["name"], args["texts"])
        elif op == "set_threshold":
            router.set_threshold(args["name"], args["threshold"])
        elif op == "set_default_threshold":
            router.threshold = args["value"]
        else:
            raise ValueError(op)
        return store.last_write_seq  # what a write answers: its sequence number

    print(json.dumps({"ok": True, "result": store.applied_seq}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        try:
            out = {"ok": True, "result": handle(command["op"], command.get("args", {}))}
        except Exception as exc:
            out = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
        print(json.dumps(out), flush=True)
    router.close()


class Replica:
    """A router in another process, driven over pipes."""

    def __init__(self, dsn: str, schema: str, encoder: str = "hashing") -> None:
        # The program imports the shared test doubles from this folder, which is not on
        # its path when the tests run with PYTHONSAFEPATH (against installed wheels).
        path = os.pathsep.join(
            filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])
        )
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--replica", dsn, schema, encoder],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": path},
        )
        self.start_seq = self._read()

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            msg = f"replica exited with {self.proc.wait()}"
            raise RuntimeError(msg)
        out = json.loads(line)
        if not out["ok"]:
            raise ReplicaError(out["error"], out["message"])
        return out["result"]

    def send(self, op: str, **args: Any) -> None:
        """Send a command without waiting for its answer (see :meth:`receive`)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> Any:
        """The answer to the oldest command sent."""
        return self._read()

    def call(self, op: str, **args: Any) -> Any:
        """Run one command and return its result (:class:`ReplicaError` if it raised)."""
        self.send(op, **args)
        return self._read()

    def close(self) -> None:
        """End the replica process."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ReplicaError(Exception):
    """An exception raised inside a replica process."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


# -- fixtures (pg_dsn and schema: conftest.py) -----------------------------------------
@pytest.fixture
def replicas(pg_dsn: str, schema: str) -> Iterator[list[Replica]]:
    """A list the test appends :class:`Replica` processes to; all ended afterwards."""
    started: list[Replica] = []
    yield started
    for replica in started:
        replica.close()


def open_store(dsn: str, schema: str, **options: Any) -> Any:
    from synaptoroute.postgres import PostgresStorage

    return PostgresStorage(dsn, schema=schema, connect_timeout=10, **options)


def db_state(dsn: str, schema: str) -> dict[str, Any]:
    """What a fresh reader sees in the database."""
    store = open_store(dsn, schema)
    try:
        policy = store.get_state("policy") or {}
        return stored_state(store.load(), float(policy.get("threshold", 0.5)))
    finally:
        store.close()


def cluster(action: str) -> None:
    """Stop or start the test server (needs the cluster made by scripts/postgres.sh)."""
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "postgres.sh"), action, CLUSTER_DIR],
        check=True,
        timeout=120,
    )


def unit(rows: int, dim: int, seed: int) -> NDArray[np.float32]:
    v = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    out: NDArray[np.float32] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def wait_until(condition: Callable[[], object], what: str) -> None:
    """Wait for ``condition`` for up to WAIT seconds; fail the test if it never holds."""
    _wait_until(condition, what, WAIT)


_STORE_TABLES = ("meta", "routes", "utterances", "state", "changes")  # parents first


def back_up(dsn: str, schema: str) -> None:
    """What pg_dump keeps of a store: its rows and its sequences' positions."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(f'CREATE SCHEMA "{schema}_bk"')
        for table in _STORE_TABLES:
            conn.execute(f'CREATE TABLE "{schema}_bk".{table} AS TABLE "{schema}".{table}')
        conn.execute(
            f'CREATE TABLE "{schema}_bk".seqs AS SELECT sequencename, last_value, '
            "last_value IS NOT NULL AS called FROM pg_sequences WHERE schemaname = %s",
            (schema,),
        )


def restore(dsn: str, schema: str) -> None:
    """Put back what :func:`back_up` kept, as restoring a dump does: the log goes back."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("TRUNCATE " + ", ".join(f'"{schema}".{t}' for t in _STORE_TABLES) + " CASCADE")
        for table in _STORE_TABLES:
            conn.execute(f'INSERT INTO "{schema}".{table} TABLE "{schema}_bk".{table}')
        conn.execute(
            "SELECT setval(format('%%I.%%I', %s::text, sequencename), coalesce(last_value, 1), "
            f'called) FROM "{schema}_bk".seqs',
            (schema,),
        )


# -- errors within a bounded time (no server needed) ----------------------------------
def test_stopping_by_hand_without_a_cluster_says_so_and_names_the_ones_left(
    tmp_path: Path,
) -> None:
    # `bash scripts/postgres.sh stop` with neither DIR nor the variable stopped nothing
    # and said nothing, so servers started by hand kept running unnoticed.
    left = tmp_path / "synaptoroute-pg.abc123"
    left.mkdir()
    (left / "cluster.env").write_text("PG_PORT=1\n")
    env = {k: v for k, v in os.environ.items() if k != "SYNAPTOROUTE_TEST_PG_DIR"}
    env["TMPDIR"] = str(tmp_path)
    script = str(ROOT / "scripts" / "postgres.sh")
    done = subprocess.run(
        ["bash", script, "stop"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "no cluster to stop" in done.stderr and f"a cluster is left in {left}" in done.stderr
    assert (left / "cluster.env").exists()  # named, not touched
    missing = subprocess.run(
        ["bash", script, "stop", str(tmp_path / "gone")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and f"no cluster to stop: {tmp_path / 'gone'}" in missing.stderr


@pytest.mark.timeout(120)
def test_a_cluster_starts_under_a_locale_the_machine_lacks_and_a_private_tmpdir(
    tmp_path: Path,
) -> None:
    # initdb took its locale from LANG: one the machine has not generated (a CI image
    # without en_US.UTF-8, an SSH session's) stopped the script before any test ran.
    # As root the server runs as another user, who cannot enter a root-only TMPDIR.
    psycopg = pytest.importorskip("psycopg")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNAPTOROUTE_TEST_PG")}
    env.update(LANG="xx_XX.UTF-8", LC_ALL="", TMPDIR=str(private))
    script = str(ROOT / "scripts" / "postgres.sh")
    started = subprocess.run(
        ["bash", script, "start"], env=env, capture_output=True, text=True, timeout=100
    )
    if started.returncode != 0 and "no PostgreSQL" in started.stderr:
        pytest.skip(started.stderr.strip())
    assert started.returncode == 0, started.stderr
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines()
    )
    cluster = exports["SYNAPTOROUTE_TEST_PG_DIR"]
    try:
        with psycopg.connect(exports["SYNAPTOROUTE_TEST_PG_DSN"], connect_timeout=10) as conn:
            assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
    finally:
        stopped = subprocess.run(
            ["bash", script, "stop", cluster], env=env, capture_output=True, text=True, timeout=60
        )
    assert stopped.returncode == 0, stopped.stderr
    assert not Path(cluster).exists()


def psycopg_conninfo(dsn: str) -> dict[str, object]:
    import psycopg

    return dict(psycopg.conninfo.conninfo_to_dict(dsn))


@pytest.mark.timeout(60)
@pytest.mark.model
def test_bad_dsn_and_unreachable_servers_give_clear_errors() -> None:
    pytest.importorskip("psycopg")
    from synaptoroute.postgres import PostgresStorage

    with pytest.raises(StorageError, match="not a valid PostgreSQL DSN"):
        PostgresStorage("this is not a dsn")

    # Nothing listens on this port: refused at once.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(StorageError, match=r"cannot connect to PostgreSQL .*127\.0\.0\.1"):
        PostgresStorage(f"postgresql://nobody@127.0.0.1:{closed_port}/db", connect_timeout=2)

    # A server that accepts the connection and never answers: connect_timeout ends it.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        with pytest.raises(StorageError, match=r"gave up after \d+\.\d s") as info:
            PostgresStorage(f"postgresql://nobody:secret@127.0.0.1:{port}/db", connect_timeout=2)
    assert "secret" not in str(info.value)  # the password never reaches a message

    # A '/' or '@' left unencoded in a password: libpq read it as the host, port or
    # database, and every message naming the target showed it.
    for password in ("Xy7/Qw9Zk", "Xy7@Qw9Zk", "123/456"):
        with pytest.raises(StorageError, match="not percent-encoded") as info:
            PostgresStorage(f"postgresql://app:{password}@127.0.0.1:{closed_port}/db")
        assert "Xy7" not in str(info.value) and "Qw9Zk" not in str(info.value)
        assert "123" not in str(info.value) and info.value.__cause__ is None
    # Encoded, and a list of hosts and ports, are read as meant; so is an '@' that a
    # database name or a socket folder holds legitimately.
    from synaptoroute.storage.postgres import _misread_url

    for fine in (
        "postgresql://u@h/db%40x",
        "postgresql://u@h/db?host=/run/pg@x",
        "postgresql://u:p@[::1]:5432/db",
        "postgresql://u:p@h1:5432,h2:5433/db",
        "postgresql:///db?host=/var/run/postgresql",
        "postgresql://user%40srv:pw@h/db",
        "host=h password='a/b@c'",
    ):
        assert not _misread_url(fine, psycopg_conninfo(fine)), fine
    with pytest.raises(StorageError, match=r"cannot connect to PostgreSQL app@127\.0\.0\.1"):
        PostgresStorage(
            f"postgresql://app:Xy7%2FQw9Zk@127.0.0.1:{closed_port}/db", connect_timeout=2
        )


@pytest.mark.model
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"connect_timeout": 0}, "connect_timeout must be a finite number of seconds > 0"),
        ({"connect_timeout": "5"}, "connect_timeout must be"),
        ({"lock_timeout": -1.0}, "lock_timeout must be"),
        ({"lock_timeout": float("inf")}, "lock_timeout must be"),
        ({"poll_interval": 0.0}, "poll_interval must be"),
        ({"poll_interval": True}, "poll_interval must be"),
        # Past PostgreSQL's int milliseconds: the server refused the session's settings
        # with a raw psycopg error (connect_timeout: libpq's tcp_user_timeout).
        ({"lock_timeout": 3e6}, "lock_timeout must be at most 2147483 seconds"),
        ({"connect_timeout": 3e6}, "connect_timeout must be at most 2147483 seconds"),
        ({"poll_interval": 3e6}, "poll_interval must be at most 2147483 seconds"),
        # Past any wait Python takes (threading.TIMEOUT_MAX): refused by every store.
        # Past a lock's bound too, named by PostgreSQL's (it said "at most 9.22337e+09").
        ({"poll_interval": 1e300}, "poll_interval must be at most 2147483 seconds"),
        ({"lock_timeout": 1e10}, "lock_timeout must be at most 2147483 seconds"),
        ({"lock_timeout": float("nan")}, r"> 0 \(at most 2147483, PostgreSQL's limit\)"),
    ],
)
def test_bad_timeouts_are_refused_before_connecting(
    options: dict[str, object], message: str
) -> None:
    # A lock_timeout of 0 would reach PostgreSQL as "wait for good", a poll interval of
    # 0 would spin; refused by name, before any connection (nothing listens there).
    pytest.importorskip("psycopg")
    from synaptoroute.postgres import PostgresStorage

    with pytest.raises(InvalidInputError, match=message):
        PostgresStorage("postgresql://nobody@127.0.0.1:1/db", **options)  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="keep_changes must be at least 1"):
        PostgresStorage("postgresql://nobody@127.0.0.1:1/db", keep_changes=True)


def test_open_storage_picks_the_backend(pg_dsn: str, schema: str, tmp_path: Path) -> None:
    from synaptoroute.postgres import PostgresStorage, open_storage

    pg = open_storage(pg_dsn, schema=schema)
    lite = open_storage(tmp_path / "routes.sqlite")
    try:
        assert isinstance(pg, PostgresStorage)
        assert isinstance(lite, SQLiteStorage)
        assert isinstance(pg, Storage)
    finally:
        pg.close()
        lite.close()


# -- the storage on its own -----------------------------------------------------------
def test_storage_round_trip_is_exact(pg_dsn: str, schema: str) -> None:
    store = open_store(pg_dsn, schema)
    model = ModelInfo("m", 8)
    assert store.model_info() is None
    assert store.load() == []
    vectors = {r.name: unit(len(r.utterances), 8, i) for i, r in enumerate(ROUTES)}
    for route in ROUTES:
        store.put_route(route, vectors[route.name], model)
    extra = unit(2, 8, 9)
    store.add_utterances("support", ["my password is wrong", "reset it"], extra, model)
    store.delete_utterances("support", ["the app crashes"])
    store.update_route(ROUTES[2].model_copy(update={"threshold": 0.7, "metadata": {"k": "v"}}))
    store.set_state("policy", {"threshold": 0.42, "thresholds": {"billing": 0.2}})
    store.set_state("gone", {"x": 1})
    store.set_state("gone", None)
    store.close()

    again = open_store(pg_dsn, schema)  # a second connection, as another replica would
    try:
        assert again.model_info() == model
        assert again.schema_version == SCHEMA_VERSION == 2
        loaded = {s.route.name: s for s in again.load()}
        assert list(loaded) == ["billing", "support", "weather"]
        assert loaded["billing"].route == ROUTES[0]
        np.testing.assert_array_equal(loaded["billing"].vectors, vectors["billing"])
        assert loaded["support"].route.utterances == [
            "I cannot log in",
            "my password is wrong",
            "reset it",
        ]
        np.testing.assert_array_equal(
            loaded["support"].vectors, np.vstack([vectors["support"][1:], extra])
        )
        assert loaded["weather"].route.threshold == 0.7
        assert loaded["weather"].route.metadata == {"k": "v"}
        assert loaded["weather"].route.description == "forecasts"
        assert again.get_state("policy") == {"threshold": 0.42, "thresholds": {"billing": 0.2}}
        assert again.get_state("gone") is None

        other = ModelInfo("n", 4)
        again.replace_all([StoredRoute(ROUTES[2], unit(1, 4, 3))], other)
        assert again.model_info() == other
        assert [s.route.name for s in again.load()] == ["weather"]
    finally:
        again.close()


def test_stored_vectors_of_the_wrong_size_are_a_storage_error(pg_dsn: str, schema: str) -> None:
    import psycopg

    store = open_store(pg_dsn, schema)
    try:
        store.put_route(ROUTES[0], unit(2, 8, 1), ModelInfo("m", 8))
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # damaged outside the store
            conn.execute(f'UPDATE "{schema}".utterances SET vector = %s', (b"\0" * 12,))
        with pytest.raises(StorageError, match="not 8 float32s"):
            store.load()
    finally:
        store.close()


def test_rows_committed_after_the_count_still_load(
    pg_dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A write's resync reads under read committed: rows committed between the count
    # and the read must not be lost. A buffer sized for fewer rows stands in for that.
    import synaptoroute._buffers as buffers
    from synaptoroute._buffers import take_buffer, vector_buffer

    store = open_store(pg_dsn, schema)
    try:
        routes = [
            Route(name=f"r{i}", utterances=[f"u{i} {j}" for j in range(4)]) for i in range(10)
        ]
        vectors = [unit(4, 8, i) for i in range(10)]
        store.put_routes(
            [StoredRoute(r, v) for r, v in zip(routes, vectors, strict=True)], ModelInfo("m", 8)
        )
        sizes: list[int] = []

        def short_buffer(rows: int, dim: int) -> np.ndarray:
            sizes.append(rows)
            return vector_buffer(1 if len(sizes) == 1 else rows, dim)  # room for 16 rows

        monkeypatch.setattr(buffers, "vector_buffer", short_buffer)
        loaded = store.load()
        assert sizes == [40, 40]  # the counted rows, then a buffer with room for them all
        assert [s.route for s in loaded] == routes
        for got, want in zip(loaded, vectors, strict=True):
            np.testing.assert_array_equal(got.vectors, want)
        taken = take_buffer([s.vectors for s in loaded], 8)
        assert taken is not None and taken[1] == 40
    finally:
        store.close()


def test_failed_writes_change_nothing(pg_dsn: str, schema: str) -> None:
    store = open_store(pg_dsn, schema)
    try:
        model = ModelInfo("m", 8)
        store.put_route(ROUTES[0], unit(2, 8, 1), model)
        before, seq = store.load(), store.current_seq()
        with pytest.raises(StorageError, match="refusing to mix"):
            store.put_route(ROUTES[1], unit(2, 4, 1), ModelInfo("other", 4))
        with pytest.raises(RouteNotFoundError):
            store.add_utterances("nope", ["x"], unit(1, 8, 2), model)
        with pytest.raises(RouteNotFoundError):
            store.delete_route("nope")
        with pytest.raises(StorageError, match="expected vectors of shape"):
            store.put_route(ROUTES[1], unit(3, 8, 1), model)
        assert store.current_seq() == seq  # no change-log row for a rolled-back write
        after = store.load()
        assert [s.route for s in after] == [s.route for s in before]
        np.testing.assert_array_equal(after[0].vectors, before[0].vectors)
    finally:
        store.close()


def test_text_postgresql_cannot_store_is_bad_input_and_changes_nothing(
    pg_dsn: str, schema: str
) -> None:
    # NUL characters (text and jsonb refuse them) and an utterance or name too long for
    # the unique B-tree indexes were a StorageError, which the service answers with
    # 503 "retry": a retry can never succeed.
    enc = HashingEncoder()
    model, dim = ModelInfo(enc.model_id, enc.dimension), enc.dimension
    store = open_store(pg_dsn, schema)
    try:
        store.put_route(ROUTES[0], unit(2, dim, 1), model)
        before, seq = store.load(), store.current_seq()
        nul = "x\x00y"
        base = Route(name="r", utterances=["ok"])
        bad_routes = [
            base.model_copy(update={"utterances": ["ok", nul]}),
            base.model_copy(update={"name": nul}),
            base.model_copy(update={"description": nul}),
            base.model_copy(update={"metadata": {"k": [nul]}}),
            base.model_copy(update={"metadata": {nul: 1}}),
        ]
        for route in bad_routes:
            vectors = unit(len(route.utterances), dim, 2)
            with pytest.raises(InvalidInputError, match="NUL character"):
                store.put_route(route, vectors, model)
            with pytest.raises(InvalidInputError, match="NUL character"):
                store.replace_all([StoredRoute(route, vectors)], model)
        with pytest.raises(InvalidInputError, match="NUL character"):
            store.update_route(ROUTES[0].model_copy(update={"description": nul}))
        with pytest.raises(InvalidInputError, match="NUL character"):
            store.add_utterances("billing", [nul], unit(1, dim, 3), model)
        with pytest.raises(InvalidInputError, match="NUL character"):
            store.delete_utterances("billing", [nul])
        with pytest.raises(InvalidInputError, match="NUL character"):
            store.delete_route(nul)
        with pytest.raises(InvalidInputError, match="NUL character"):
            store.set_state("policy", {"info": {"note": nul}})
        with pytest.raises(InvalidInputError, match="NUL character"):
            store.set_state(nul, {})
        assert store.get_state(nul) is None
        # Random text does not compress: past the index's entry size at any length here.
        rng = random.Random(0)
        long = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(3000))
        huge = long * 3
        for route in (
            Route(name="r", utterances=[long]),
            Route(name="r", utterances=[huge]),
            Route(name=long, utterances=["x"]),
            Route(name=huge, utterances=["x"]),
        ):
            with pytest.raises(InvalidInputError, match="too long for the store's index") as info:
                store.put_route(route, unit(1, dim, 4), model)
            assert "nothing was changed" in str(info.value)
        with pytest.raises(InvalidInputError, match="too long for the store's index"):
            store.add_utterances("billing", [long], unit(1, dim, 5), model)
        assert store.current_seq() == seq  # rolled back: no change-log row
        after = store.load()
        assert [s.route for s in after] == [s.route for s in before]
        store.add_utterances("billing", ["still writable"], unit(1, dim, 6), model)
        assert store.current_seq() == seq + 1
    finally:
        store.close()
    # Through the router: refused, nothing served.
    router = AdaptiveRouter(enc, open_store(pg_dsn, schema))
    try:
        names = router.route_names
        with pytest.raises(InvalidInputError, match="NUL character"):
            router.add_route(Route(name="a", utterances=["x\x00y"]))
        with pytest.raises(InvalidInputError, match="too long for the store's index"):
            router.add_route(Route(name="a", utterances=[long]))
        assert router.route_names == names
    finally:
        router.close()


def test_a_current_store_opens_while_another_replica_holds_the_writers_lock(
    pg_dsn: str, schema: str
) -> None:
    # Opening took the writers' advisory lock even when the schema was current: a
    # replica could not start while another held it for a long write (a reencode).
    import psycopg

    open_store(pg_dsn, schema).close()
    with psycopg.connect(pg_dsn) as conn:  # a transaction holding the lock
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"synaptoroute:{schema}",))
        store = open_store(pg_dsn, schema, lock_timeout=1)
        try:
            assert store.schema_version == SCHEMA_VERSION and store.load() == []
        finally:
            store.close()
    new = f"{schema}_new"
    with psycopg.connect(pg_dsn) as conn:
        # Creating a store still takes turns with the lock's holder.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"synaptoroute:{new}",))
        with pytest.raises(StorageError, match="lock timeout"):
            open_store(pg_dsn, new, lock_timeout=1)
    open_store(pg_dsn, new).close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{new}" CASCADE')


def test_a_policy_write_failing_after_the_route_change_says_the_change_was_stored(
    pg_dsn: str, schema: str
) -> None:
    # delete_route stores the route change, then the policy without the route: two
    # transactions. The second failing raised "nothing was changed".
    import psycopg

    from synaptoroute import DecisionPolicy

    router = AdaptiveRouter(HashingEncoder(), open_store(pg_dsn, schema))
    try:
        router.add_routes(ROUTES)
        router.set_policy(DecisionPolicy(threshold=0.5, thresholds={"billing": 0.8}))
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                f'CREATE FUNCTION "{schema}".boom() RETURNS trigger LANGUAGE plpgsql '
                "AS $$BEGIN RAISE EXCEPTION 'simulated failure'; END$$"
            )
            conn.execute(
                f'CREATE TRIGGER boom BEFORE INSERT OR UPDATE ON "{schema}".state '
                f'FOR EACH ROW EXECUTE FUNCTION "{schema}".boom()'
            )
        with pytest.raises(StorageError, match="route change was stored and is served") as info:
            router.delete_route("billing")
        assert "simulated failure" in str(info.value)
        assert str(info.value).startswith("the route change was stored")
        assert "billing" not in router.route_names
        assert "billing" not in db_state(pg_dsn, schema)["routes"]
    finally:
        router.close()


@pytest.mark.skipif(not CLUSTER_DIR, reason="needs the cluster of scripts/postgres.sh to pause")
def test_close_does_not_wait_for_good_on_a_stalled_server(pg_dsn: str, schema: str) -> None:
    # A server process that stops answering (paused, a hung disk) while its host still
    # acknowledges the packets blocked a write for good, and close() behind it.
    import signal
    import threading

    store = open_store(pg_dsn, schema, lock_timeout=1)
    router = AdaptiveRouter(HashingEncoder(), store)
    router.add_route(ROUTES[0])
    pid = store._conn.info.backend_pid
    try:
        os.kill(pid, signal.SIGSTOP)
    except PermissionError:
        router.close()
        pytest.skip("cannot pause the server's processes")
    outcome: list[BaseException | None] = []

    def write() -> None:
        try:
            router.add_route(ROUTES[1])
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    closer = threading.Thread(target=router.close, daemon=True)
    try:
        writer.start()

        def blocked() -> bool:  # the write holds the connection, waiting for the server
            if store._conn_lock.acquire(blocking=False):
                store._conn_lock.release()
                return False
            return True

        wait_until(blocked, "the write to reach the server")
        closer.start()
        closer.join(WAIT)
        assert not closer.is_alive(), "close() waited for the stalled server"
        writer.join(WAIT)
        assert not writer.is_alive()
        assert isinstance(outcome[0], StorageError)
        assert "closed" in str(outcome[0])
        assert router.route_names == ["billing"]
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_follower_stopped_while_connecting_listens_to_nothing(
    pg_dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # stop() gives up waiting after its timeout; a follower still connecting then went
    # on to LISTEN and read the log, after close() had returned.
    import threading

    store = open_store(pg_dsn, schema)
    connect, entered, release = store._connect, threading.Event(), threading.Event()
    sessions: list[Any] = []

    def slow_connect() -> Any:
        entered.set()
        assert release.wait(WAIT)
        conn = connect()
        sessions.append(conn)
        return conn

    monkeypatch.setattr(store, "_connect", slow_connect)
    router = AdaptiveRouter(HashingEncoder(), store)
    assert entered.wait(WAIT)  # the follower is connecting
    watch = store._watch
    watch.stop(timeout=0)  # as close() does once its wait is over
    release.set()
    watch._thread.join(WAIT)
    assert not watch._thread.is_alive()
    assert len(sessions) == 1 and sessions[0].closed
    assert watch.backend_pid is None  # it never listened
    router.close()


def test_a_router_dropped_without_close_ends_its_follower_and_its_sessions(
    pg_dsn: str, schema: str
) -> None:
    # The follower thread held the router's method: a router dropped without close()
    # (one per request, a notebook cell run again) kept its thread and two PostgreSQL
    # sessions for the life of the process.
    import gc
    import weakref

    import psycopg

    router = AdaptiveRouter(HashingEncoder(), open_store(pg_dsn, schema))
    router.add_route(ROUTES[0])
    watch = router.storage.watching  # type: ignore[attr-defined]
    wait_until(watch._connected.is_set, "the follower to listen")
    pids = [watch.backend_pid, router.storage._conn.info.backend_pid]  # type: ignore[attr-defined]
    thread = watch._thread
    gone = weakref.ref(router)
    del router, watch
    # A delivery in flight holds the router for its length: collected once it ends.
    wait_until(lambda: (gc.collect(), gone() is None)[1], "the dropped router to be collected")
    thread.join(WAIT)
    assert not thread.is_alive()

    def sessions_ended() -> bool:
        gc.collect()  # the store, left behind with the router, closes its session when freed
        with psycopg.connect(pg_dsn) as admin:
            found = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            ).fetchone()
        return found is not None and found[0] == 0

    wait_until(sessions_ended, "the dropped router's sessions to end")


def test_a_store_whose_router_was_collected_takes_a_new_router(pg_dsn: str, schema: str) -> None:
    # It raised "already watched": the ended follower stayed registered.
    import gc
    import weakref

    store = open_store(pg_dsn, schema)
    router = AdaptiveRouter(HashingEncoder(), store)
    router.add_route(ROUTES[0])
    with pytest.raises(StorageError, match="already watched"):
        AdaptiveRouter(HashingEncoder(), store)  # one live router per store object
    first = store.watching
    gone = weakref.ref(router)
    del router
    wait_until(lambda: (gc.collect(), gone() is None)[1], "the dropped router to be collected")
    again = AdaptiveRouter(HashingEncoder(), store)
    assert store.watching is not None and store.watching is not first
    assert again.query(ROUTES[0].utterances[0]).name == ROUTES[0].name
    again.close()


def test_watch_holds_a_bound_method_strongly_unless_asked(pg_dsn: str, schema: str) -> None:
    # The weak hold meant for the router was applied to every bound method: a handler
    # on an object nobody else kept was collected at once and got no change.
    got: list[str] = []

    class Handler:
        __slots__ = ()  # no weak reference possible either: watch() raised TypeError

        def handle(self, changes: Sequence[Any]) -> None:
            got.extend(change.kind for change in changes)

    enc = HashingEncoder()
    writer = open_store(pg_dsn, schema)
    follower = open_store(pg_dsn, schema)
    try:
        follower.load()
        follower.watch(Handler().handle)
        writer.put_route(
            ROUTES[0], enc.encode(ROUTES[0].utterances), ModelInfo(enc.model_id, enc.dimension)
        )
        assert follower.wait_for_seq(writer.last_write_seq, WAIT)
        assert got == ["put_route"]
    finally:
        follower.close()
        writer.close()


def test_a_foreign_or_newer_schema_is_left_untouched(pg_dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".orders (id int)')
    with pytest.raises(NotADatabaseError, match="not a synaptoroute store"):
        open_store(pg_dsn, schema)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
        assert tables == [("orders",)]
        conn.execute(f'DROP TABLE "{schema}".orders')
    open_store(pg_dsn, schema).close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE \"{schema}\".meta SET value = '99' WHERE key = 'version'")
    with pytest.raises(StorageError, match="version 99, newer"):
        open_store(pg_dsn, schema)


def _as_0_2_0_left_it(dsn: str, schema: str, encoder: Encoder, *sql: str) -> None:
    """A store of one route at schema version 1, as 0.2.0 wrote it, then ``sql`` run."""
    import psycopg

    router = AdaptiveRouter(encoder, open_store(dsn, schema))
    router.add_route(Route(name="billing", utterances=["I need a refund", "my invoice"]))
    router.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in (f"UPDATE \"{schema}\".meta SET value = '1' WHERE key = 'version'", *sql):
            conn.execute(statement)


def _recorded_version(dsn: str, schema: str) -> str:
    """The version in the store's ``meta`` table, as 0.2.0 reads it at open."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f"SELECT value FROM \"{schema}\".meta WHERE key = 'version'")
        return str(row.fetchone()[0])


def test_a_version_1_store_is_marked_version_2_so_0_2_0_refuses_it(
    pg_dsn: str, schema: str, encoder: Encoder
) -> None:
    # 0.2.0 wrote version 1 and refuses a newer one at open; the store's version stayed
    # 1 while negative examples (the reserved route __negatives__) and fitted heads
    # with fields 0.2.0 does not know were added, so a 0.2.0 replica started on a store
    # a newer one had used answered queries with "__negatives__" and misread the head.
    _as_0_2_0_left_it(pg_dsn, schema, encoder)
    store = open_store(pg_dsn, schema)
    try:
        assert store.schema_version == 2
        assert [s.route.name for s in store.load()] == ["billing"]
    finally:
        store.close()
    assert _recorded_version(pg_dsn, schema) == "2"  # what 0.2.0 compares with its own 1


def test_a_version_1_store_with_a_route_of_the_reserved_name_is_refused_untouched(
    pg_dsn: str, schema: str, encoder: Encoder
) -> None:
    # A 0.2.0 user's route named __negatives__ would silently become negative
    # examples; SQLite refused such a store, PostgreSQL could not tell.
    rename = f"UPDATE \"{schema}\".routes SET name = '__negatives__'"
    _as_0_2_0_left_it(pg_dsn, schema, encoder, rename)
    with pytest.raises(StorageError, match="holds a route named '__negatives__'"):
        open_store(pg_dsn, schema)
    assert _recorded_version(pg_dsn, schema) == "1"  # nothing migrated


def test_a_schema_the_server_refuses_is_a_storage_error(pg_dsn: str) -> None:
    # The driver's own exception (psycopg.errors.ReservedName for pg_*; the same for a
    # role without CREATE) escaped from the constructor; code catching StorageError,
    # as for every other failure to open, missed it.
    import psycopg

    with pytest.raises(StorageError, match="cannot open the store in schema 'pg_sr_test'") as info:
        open_store(pg_dsn, "pg_sr_test")
    assert isinstance(info.value.__cause__, psycopg.Error)


def test_the_longest_timeouts_are_accepted(pg_dsn: str, schema: str) -> None:
    from synaptoroute.storage.postgres import MAX_SECONDS

    store = open_store(pg_dsn, schema, lock_timeout=MAX_SECONDS, poll_interval=MAX_SECONDS)
    try:
        assert store._run("test", lambda c: c.execute("SHOW lock_timeout").fetchone()) == (
            f"{MAX_SECONDS}s",
        )
    finally:
        store.close()
    from synaptoroute.postgres import PostgresStorage

    PostgresStorage(pg_dsn, schema=schema, connect_timeout=MAX_SECONDS).close()


def test_a_session_that_cannot_be_set_up_is_closed_and_a_storage_error(
    pg_dsn: str, schema: str
) -> None:
    # The session's settings ran outside the driver-error handling: the server's refusal
    # escaped as a raw psycopg error and the new session was never closed.
    import psycopg

    name = f"sr_{schema}"
    store = open_store(psycopg.conninfo.make_conninfo(pg_dsn, application_name=name), schema)
    try:
        store.lock_timeout = 3e6  # a setting this server refuses, past the constructor's checks
        store._conn.close()  # the next call opens a new session
        with pytest.raises(StorageError, match=r"cannot set up a session .*lock_timeout"):
            store.current_seq()
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            wait_until(lambda: admin.execute(sql, (name,)).fetchone() == (0,), "the session to end")
    finally:
        store.close()


@pytest.mark.parametrize(
    ("ddl", "kind"),
    [
        ("CREATE TABLE {s}.meta (id int, note text)", "tables"),
        (
            "CREATE TABLE {s}.meta (key int, value int); INSERT INTO {s}.meta VALUES (1, 2)",
            "tables",
        ),
        ("CREATE SEQUENCE {s}.ids", "sequences"),
        ("CREATE FUNCTION {s}.hello() RETURNS int LANGUAGE sql AS 'SELECT 1'", "functions"),
        ("CREATE VIEW {s}.report AS SELECT 1 AS x", "views"),
        ("CREATE TYPE {s}.mood AS ENUM ('ok')", "types"),
    ],
)
def test_a_schema_of_another_application_is_refused_whatever_it_holds(
    pg_dsn: str, schema: str, ddl: str, kind: str
) -> None:
    # Only information_schema's tables were counted, and a table named meta was read
    # without checking its columns: another application's meta gave a StorageError
    # from PostgreSQL, and a schema of sequences or functions got the store's tables.
    import psycopg

    def objects(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
        return conn.execute(
            "SELECT relname, relkind FROM pg_class WHERE relnamespace = %s::regnamespace "
            "UNION ALL SELECT proname, 'function' FROM pg_proc "
            "WHERE pronamespace = %s::regnamespace ORDER BY 1",
            (schema, schema),
        ).fetchall()

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(ddl.format(s=f'"{schema}"'))
        before = objects(conn)
    with pytest.raises(NotADatabaseError, match=f"holds {kind} that are not a synaptoroute store"):
        open_store(pg_dsn, schema)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert objects(conn) == before


def test_a_store_with_a_damaged_version_or_objects_added_by_its_user(
    pg_dsn: str, schema: str
) -> None:
    import psycopg

    open_store(pg_dsn, schema).close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        # Objects added to the store's own schema leave it the store.
        conn.execute(f'CREATE VIEW "{schema}".report AS SELECT count(*) FROM "{schema}".routes')
        conn.execute(f'CREATE SEQUENCE "{schema}".ids')
        open_store(pg_dsn, schema).close()
        for version in ("1.0", " 1", "", "0"):
            conn.execute(
                f'UPDATE "{schema}".meta SET value = %s WHERE key = %s', (version, "version")
            )
            with pytest.raises(StorageError, match="schema version is damaged") as info:
                open_store(pg_dsn, schema)
            assert not isinstance(info.value, NotADatabaseError)  # it is ours, only damaged
        conn.execute(f"DELETE FROM \"{schema}\".meta WHERE key = 'version'")
        with pytest.raises(StorageError, match=r"schema version is damaged \(None\)"):
            open_store(pg_dsn, schema)


def test_every_change_is_logged_in_order_and_notified(pg_dsn: str, schema: str) -> None:
    import psycopg

    store = open_store(pg_dsn, schema)
    try:
        model = ModelInfo("m", 8)
        with psycopg.connect(pg_dsn, autocommit=True) as listener:
            listener.execute(f'LISTEN "synaptoroute_{schema}"')
            store.put_route(ROUTES[0], unit(2, 8, 1), model)
            store.add_utterances("billing", ["a new one"], unit(1, 8, 2), model)
            store.set_state("policy", {"threshold": 0.6})
            store.delete_route("billing")
            notes = [int(n.payload) for n in listener.notifies(timeout=10, stop_after=4)]
            rows = listener.execute(
                f'SELECT seq, kind, name, origin FROM "{schema}".changes ORDER BY seq'
            ).fetchall()
        assert [r[1:3] for r in rows] == [
            ("put_route", "billing"),
            ("add_utterances", "billing"),
            ("set_state", "policy"),
            ("delete_route", "billing"),
        ]
        assert [r[0] for r in rows] == sorted({r[0] for r in rows})
        assert notes == [r[0] for r in rows]
        assert store.last_write_seq == rows[-1][0]
        assert {r[3] for r in rows} == {store.origin}
    finally:
        store.close()


def test_put_routes_is_one_transaction_with_a_log_row_per_route(pg_dsn: str, schema: str) -> None:
    import psycopg

    store = open_store(pg_dsn, schema)
    try:
        model = ModelInfo("m", 8)
        store.put_routes(
            [StoredRoute(r, unit(len(r.utterances), 8, i)) for i, r in enumerate(ROUTES)], model
        )
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            rows = conn.execute(
                f'SELECT seq, kind, name FROM "{schema}".changes ORDER BY seq'
            ).fetchall()
            assert [r[1:] for r in rows] == [("put_route", r.name) for r in ROUTES]
            assert store.last_write_seq == rows[-1][0]
            conn.execute(
                f'CREATE FUNCTION "{schema}".refuse() RETURNS trigger LANGUAGE plpgsql AS '
                "$$ BEGIN RAISE EXCEPTION 'refused by a trigger'; END $$"
            )
            conn.execute(
                f'CREATE TRIGGER refuse BEFORE INSERT ON "{schema}".routes FOR EACH ROW '
                f"WHEN (NEW.name = 'boom') EXECUTE FUNCTION \"{schema}\".refuse()"
            )
        seq = store.current_seq()
        fresh = Route(name="fresh", utterances=["a new route"])
        boom = Route(name="boom", utterances=["kaboom"])
        with pytest.raises(StorageError, match="refused by a trigger"):
            store.put_routes(
                [StoredRoute(fresh, unit(1, 8, 5)), StoredRoute(boom, unit(1, 8, 6))], model
            )
        assert store.current_seq() == seq  # nothing logged
        assert [s.route.name for s in store.load()] == [r.name for r in ROUTES]
    finally:
        store.close()


def test_a_follower_behind_a_pruned_log_reloads_everything(pg_dsn: str, schema: str) -> None:
    writer = open_store(pg_dsn, schema, keep_changes=2)
    writer.prune_every = 1
    reader = open_store(pg_dsn, schema)
    try:
        model = ModelInfo("m", 8)
        for i in range(6):
            writer.put_route(Route(name=f"r{i}", utterances=[f"text {i}"]), unit(1, 8, i), model)
        received: list[Any] = []

        reader.watch(received.extend, since=1)  # seq 2..4 are gone from the log
        assert reader.wait_for_seq(writer.last_write_seq, WAIT)
        assert received[0].kind == "reload"
        assert [s.route.name for s in received[0].routes] == [f"r{i}" for i in range(6)]
        np.testing.assert_array_equal(received[0].routes[3].vectors, unit(1, 8, 3))
    finally:
        reader.close()
        writer.close()


# -- replicas -------------------------------------------------------------------------
def test_replicas_in_separate_processes_route_identically(
    pg_dsn: str, schema: str, replicas: list[Replica], clinc_train: Any, clinc_val: Any
) -> None:
    a = Replica(pg_dsn, schema, "real")
    replicas.append(a)
    b = Replica(pg_dsn, schema, "real")
    replicas.append(b)
    labels = sorted({r["label"] for r in clinc_train if r["label"]})[:6]
    train = {lab: [r["text"] for r in clinc_train if r["label"] == lab][:12] for lab in labels}
    probes = [r["text"] for r in clinc_val if r["label"] in labels or r["label"] is None][:120]

    def same_answers() -> list[Any]:
        here: list[Any] = a.call("query", texts=probes)
        there: list[Any] = b.call("query", texts=probes)
        assert [m[0] for m in here] == [m[0] for m in there]
        assert [m[3] for m in here] == [m[3] for m in there]
        np.testing.assert_allclose([m[1] for m in here], [m[1] for m in there], atol=1e-6)
        return here

    # Added through A.
    for lab in labels[:5]:
        seq = a.call("add_route", route={"name": lab, "utterances": train[lab][:8]})
    assert b.call("wait", seq=seq)
    assert b.call("encoded") == 0  # B took the vectors from the database
    first = same_answers()
    assert sum(m[0] == labels[0] for m in first) > 5  # the route is really used

    # Changed through A: replaced, extended, re-thresholded.
    a.call("add_route", route={"name": labels[1], "utterances": train[labels[1]][4:]}, replace=True)
    a.call("add_utterances", name=labels[0], texts=train[labels[0]][8:])
    a.call("delete_utterances", name=labels[2], texts=train[labels[2]][:2])
    seq = a.call("set_threshold", name=labels[3], threshold=0.9)
    assert b.call("wait", seq=seq)
    same_answers()
    assert b.call("encoded") == len(set(probes))  # only B's own queries were encoded

    # Deleted through A: B stops routing there at once.
    seq = a.call("delete_route", name=labels[0])
    assert b.call("wait", seq=seq)
    after = same_answers()
    assert labels[0] not in {m[0] for m in after} | {m[2] for m in after}

    # And the other way round.
    seq = b.call("add_route", route={"name": labels[5], "utterances": train[labels[5]]})
    assert a.call("wait", seq=seq)
    same_answers()
    expected = db_state(pg_dsn, schema)
    for replica in (a, b):
        state = replica.call("state")
        del state["applied"]
        assert state == expected


def test_a_replica_started_late_catches_up(
    pg_dsn: str, schema: str, replicas: list[Replica]
) -> None:
    a = Replica(pg_dsn, schema)
    replicas.append(a)
    for i, route in enumerate(ROUTES):
        a.call("add_route", route=route.model_dump())
        a.call("add_utterances", name=route.name, texts=[f"extra {i}"])
    a.call("delete_route", name="weather")
    seq = a.call("set_default_threshold", value=0.35)
    late = Replica(pg_dsn, schema)
    replicas.append(late)
    assert late.start_seq == seq
    assert late.call("encoded") == 0
    state = late.call("state")
    assert state["threshold"] == 0.35
    del state["applied"]
    assert state == db_state(pg_dsn, schema)
    probes = ["I need my money back", "it crashes on start", "rain?"]
    assert late.call("query", texts=probes) == a.call("query", texts=probes)


def test_concurrent_writers_leave_database_and_matrices_consistent(
    pg_dsn: str, schema: str, replicas: list[Replica]
) -> None:
    a, b = Replica(pg_dsn, schema), Replica(pg_dsn, schema)
    replicas += [a, b]
    names = ["r0", "r1", "r2", "r3"]
    a.send("burst", seed=1, n=120, names=names)
    b.send("burst", seed=2, n=120, names=names)  # both run at once
    outcomes = [a.receive(), b.receive()]
    assert all(sum(o.values()) == 120 for o in outcomes)
    # Both really wrote, and some writes hit a route the other had just deleted.
    assert all(o.get("add", 0) + o.get("put", 0) > 10 for o in outcomes)
    seq = open_store(pg_dsn, schema).current_seq()
    assert a.call("wait", seq=seq) and b.call("wait", seq=seq)
    expected = db_state(pg_dsn, schema)
    for replica in (a, b):
        state = replica.call("state")
        del state["applied"]
        assert state == expected


def test_a_write_racing_an_unapplied_change_is_resynchronised(pg_dsn: str, schema: str) -> None:
    enc = HashingEncoder()
    a = AdaptiveRouter(enc, open_store(pg_dsn, schema))
    b = AdaptiveRouter(enc, open_store(pg_dsn, schema))
    try:
        a.add_route(ROUTES[0])
        assert b.storage.wait_for_seq(a.storage.last_write_seq, WAIT)  # type: ignore[attr-defined]
        # Holding B's lock keeps B's follower from applying A's change, so B writes on
        # top of a stale route, exactly as when the two writes race.
        with b._lock:
            a.add_utterances("billing", ["charged twice"])
            a.set_threshold("billing", 0.25)
            b.add_utterances("billing", ["wrong amount"])
            assert "charged twice" not in b.get_route("billing").utterances
        assert b.storage.wait_for_seq(b.storage.last_write_seq, WAIT)  # type: ignore[attr-defined]
        assert a.storage.wait_for_seq(b.storage.last_write_seq, WAIT)  # type: ignore[attr-defined]
        expected = db_state(pg_dsn, schema)
        assert router_state(a) == expected == router_state(b)
        assert b.get_route("billing").threshold == 0.25
    finally:
        a.close()
        b.close()


def test_a_write_behind_a_pruned_log_reloads_everything(pg_dsn: str, schema: str) -> None:
    # The writer reset only the routes named by the log rows it had missed; those the
    # pruning had removed were lost for good, since its position then moved past them.
    enc = HashingEncoder()
    a = AdaptiveRouter(enc, open_store(pg_dsn, schema, keep_changes=1))
    b = AdaptiveRouter(enc, open_store(pg_dsn, schema, keep_changes=1))
    for router in (a, b):
        router.storage.prune_every = 1  # type: ignore[attr-defined]
    try:
        a.add_routes(ROUTES)
        assert b.storage.wait_for_seq(a.storage.last_write_seq, WAIT)  # type: ignore[attr-defined]
        with b._lock:  # B's follower cannot apply A's changes
            a.add_utterances("billing", ["charged twice"])  # pruned by the next write
            a.set_threshold("support", 0.25)
            b.add_utterances("weather", ["is it sunny"])
        assert b.storage.wait_for_seq(b.storage.last_write_seq, WAIT)  # type: ignore[attr-defined]
        assert a.storage.wait_for_seq(b.storage.last_write_seq, WAIT)  # type: ignore[attr-defined]
        assert "charged twice" in b.get_route("billing").utterances
        assert router_state(a) == db_state(pg_dsn, schema) == router_state(b)
    finally:
        a.close()
        b.close()


def test_running_replicas_reload_a_store_restored_from_a_backup(
    pg_dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A restore takes the log back: the followers read only ``seq > applied``, so they
    # skipped every change numbered up to their old position and applied later ones
    # on top of routes the store no longer held.
    import psycopg

    enc = HashingEncoder()
    # A polls the log no more than once in the test: only a notification can tell it,
    # and the changes after the restore reuse the numbers of its own writes (skipping
    # its own writes by number hid the restore from it).
    a = AdaptiveRouter(enc, open_store(pg_dsn, schema, poll_interval=WAIT * 20))
    b = AdaptiveRouter(enc, open_store(pg_dsn, schema))
    c = None
    try:
        a.add_route(ROUTES[0])
        back_up(pg_dsn, schema)
        for i in range(3):
            a.add_route(Route(name=f"tmp{i}", utterances=[f"temporary {i}"]))
        assert b.storage.wait_for_seq(a.storage.last_write_seq, WAIT)  # type: ignore[attr-defined]
        restore(pg_dsn, schema)
        c = AdaptiveRouter(enc, open_store(pg_dsn, schema))
        c.add_route(ROUTES[1])  # numbered below what A and B have applied

        def in_step() -> bool:
            expected = db_state(pg_dsn, schema)
            return router_state(a) == expected == router_state(b)

        wait_until(in_step, "the replicas to reload the restored store")
        assert set(b.route_names) == {"billing", "support"}
        assert b.storage.applied_seq == c.storage.last_write_seq  # type: ignore[attr-defined]
        assert "change log of PostgreSQL" in caplog.text and "went back" in caplog.text
        # Followed on from there.
        c.add_route(ROUTES[2])
        assert b.storage.wait_for_seq(c.storage.last_write_seq, WAIT)  # type: ignore[attr-defined]
        assert router_state(b) == db_state(pg_dsn, schema)
    finally:
        for router in (a, b, c):
            if router is not None:
                router.close()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}_bk" CASCADE')


def test_a_replica_reloading_a_restored_store_without_a_policy_takes_its_default(
    pg_dsn: str, schema: str
) -> None:
    # The backup was taken before a policy was set: a running replica's reload kept the
    # policy it had (threshold 0.95) while a router opened on the store got the default.
    import psycopg

    from synaptoroute import DecisionPolicy

    enc = HashingEncoder()
    a = AdaptiveRouter(enc, open_store(pg_dsn, schema, poll_interval=0.2))
    b = AdaptiveRouter(enc, open_store(pg_dsn, schema, poll_interval=0.2), threshold=0.4)
    default = a.policy
    try:
        a.add_route(ROUTES[0])
        back_up(pg_dsn, schema)
        a.set_policy(DecisionPolicy(threshold=0.95, min_margin=0.1))
        a.add_route(ROUTES[1])
        assert b.storage.wait_for_seq(a.storage.last_write_seq, WAIT)  # type: ignore[attr-defined]
        assert b.threshold == 0.95
        restore(pg_dsn, schema)
        wait_until(lambda: b.route_names == ["billing"], "B to reload the restored store")
        assert b.policy == DecisionPolicy(threshold=0.4)  # its constructor's, as on opening
        wait_until(lambda: a.route_names == ["billing"], "A to reload the restored store")
        assert a.policy == default
        fresh = AdaptiveRouter(enc, open_store(pg_dsn, schema), threshold=0.4)
        assert fresh.policy == b.policy
        fresh.close()
    finally:
        a.close()
        b.close()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}_bk" CASCADE')


def test_a_write_right_after_a_restore_reloads_everything(pg_dsn: str, schema: str) -> None:
    # The writer took its new sequence number, one it had applied before the restore,
    # as progress: its position stayed ahead of the log, so the changes numbered up to
    # it were skipped.
    import psycopg

    enc = HashingEncoder()
    a = AdaptiveRouter(enc, open_store(pg_dsn, schema))
    b = AdaptiveRouter(enc, open_store(pg_dsn, schema))
    try:
        a.add_route(ROUTES[0])
        back_up(pg_dsn, schema)
        for i in range(3):
            a.add_route(Route(name=f"tmp{i}", utterances=[f"temporary {i}"]))
        old = a.storage.last_write_seq  # type: ignore[attr-defined]
        assert b.storage.wait_for_seq(old, WAIT)  # type: ignore[attr-defined]
        with b._lock:  # B's follower cannot notice the restore first
            restore(pg_dsn, schema)
            b.add_route(ROUTES[1])
            seq = b.storage.last_write_seq  # type: ignore[attr-defined]
            assert seq <= old
            assert b.storage.applied_seq == seq  # type: ignore[attr-defined]
            for i in range(3):
                a.add_utterances("billing", [f"more {i}"])
        assert a.storage.last_write_seq > old  # type: ignore[attr-defined]
        assert b.storage.wait_for_seq(a.storage.last_write_seq, WAIT)  # type: ignore[attr-defined]
        assert set(b.route_names) == {"billing", "support"}
        assert router_state(b) == db_state(pg_dsn, schema)
        wait_until(lambda: router_state(a) == router_state(b), "A to reload the restored store")
    finally:
        a.close()
        b.close()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}_bk" CASCADE')


def test_deleting_a_route_another_replica_is_routing_to(pg_dsn: str, schema: str) -> None:
    enc = HashingEncoder()
    a = AdaptiveRouter(enc, open_store(pg_dsn, schema))
    b = AdaptiveRouter(enc, open_store(pg_dsn, schema))
    try:
        a.add_routes(ROUTES)
        assert b.storage.wait_for_seq(a.storage.last_write_seq, WAIT)  # type: ignore[attr-defined]
        assert b.query("I need a refund").name == "billing"
        with b._lock:  # B has not heard of the deletion yet
            a.delete_route("billing")
            assert b.query("I need a refund").name == "billing"
            with pytest.raises(RouteNotFoundError):
                b.add_utterances("billing", ["refund now"])
            with pytest.raises(RouteNotFoundError):
                b.delete_route("billing")
        assert b.storage.wait_for_seq(a.storage.last_write_seq, WAIT)  # type: ignore[attr-defined]
        assert "billing" not in b
        assert b.query("I need a refund").candidate != "billing"
        assert router_state(b) == db_state(pg_dsn, schema) == router_state(a)
    finally:
        a.close()
        b.close()


@pytest.fixture
def database(pg_dsn: str) -> Iterator[Callable[[str], str]]:
    """Makes a database of the given encoding; returns its DSN. Dropped afterwards."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    made: list[str] = []

    def make(encoding: str) -> str:
        name = f"enc_{encoding.lower()}_{os.getpid()}_{len(made)}"
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(
                f"CREATE DATABASE {name} ENCODING '{encoding}' TEMPLATE template0 "
                "LC_COLLATE 'C' LC_CTYPE 'C'"
            )
        made.append(name)
        return make_conninfo(pg_dsn, dbname=name)

    yield make
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        for name in made:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_database_of_encoding_sql_ascii_is_refused_before_anything_is_made(
    database: Callable[[str], str],
) -> None:
    # psycopg reads such a database's text as bytes: a store made there opened once,
    # then every open failed with a bare TypeError (its own records read as bytes).
    import psycopg

    dsn = database("SQL_ASCII")
    for _ in range(2):
        with pytest.raises(StorageError, match=r"encoding SQL_ASCII.*ENCODING 'UTF8'"):
            open_store(dsn, "routes")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regnamespace('routes')").fetchone() == (None,)


def test_text_a_database_encoding_cannot_hold_is_bad_input(
    database: Callable[[str], str],
) -> None:
    enc = HashingEncoder()
    router = AdaptiveRouter(enc, open_store(database("LATIN1"), "routes"))
    try:
        router.add_route(Route(name="café", utterances=["crème brûlée"]))  # in Latin-1
        with pytest.raises(InvalidInputError, match=r"encoding cannot hold.*UTF8"):
            router.add_route(Route(name="日本", utterances=["こんにちは"]))
        assert router.route_names == ["café"]
    finally:
        router.close()


def test_a_replaced_route_keeps_its_place_in_the_writer_a_replica_and_a_reopen(
    pg_dsn: str, schema: str
) -> None:
    enc = HashingEncoder()
    a = AdaptiveRouter(enc, open_store(pg_dsn, schema))
    b = AdaptiveRouter(enc, open_store(pg_dsn, schema))
    try:
        a.add_routes(ROUTES)
        assert b.storage.wait_for_seq(a.storage.last_write_seq, WAIT)  # type: ignore[attr-defined]
        first = ROUTES[0]
        a.add_route(first.model_copy(update={"utterances": ["refund it now"]}), replace=True)
        assert b.storage.wait_for_seq(a.storage.last_write_seq, WAIT)  # type: ignore[attr-defined]
        a.add_utterances(ROUTES[1].name, ["my app froze"])
        assert b.storage.wait_for_seq(a.storage.last_write_seq, WAIT)  # type: ignore[attr-defined]
        order = [r.name for r in ROUTES]
        reopened = AdaptiveRouter(enc, open_store(pg_dsn, schema))
        try:
            for router in (a, b, reopened):
                assert router.route_names == order
        finally:
            reopened.close()
    finally:
        a.close()
        b.close()


def test_a_lost_connection_is_caught_up_from_the_last_sequence_number(
    pg_dsn: str, schema: str
) -> None:
    import psycopg

    enc = HashingEncoder()
    writer = open_store(pg_dsn, schema)
    follower = AdaptiveRouter(enc, open_store(pg_dsn, schema))
    watch = follower.storage.watching  # type: ignore[attr-defined]
    try:
        model = ModelInfo(enc.model_id, enc.dimension)
        writer.put_route(ROUTES[0], enc.encode(ROUTES[0].utterances), model)
        assert follower.storage.wait_for_seq(writer.last_write_seq, WAIT)  # type: ignore[attr-defined]
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            # Cut both of the follower's connections (its listener and its writer), then
            # write while it is away: it must find these changes in the log, not in NOTIFY.
            own = follower.storage._run("test", lambda conn: conn.info.backend_pid)  # type: ignore[attr-defined]
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid",
                ([own, watch.backend_pid],),
            ).fetchall()
            assert killed == [(True,), (True,)]
            for route in ROUTES[1:]:
                writer.put_route(route, enc.encode(route.utterances), model)
        assert follower.storage.wait_for_seq(writer.last_write_seq, WAIT)  # type: ignore[attr-defined]
        assert watch.reconnects >= 1
        assert router_state(follower) == db_state(pg_dsn, schema)
        # The follower's own store reconnects for writes too.
        follower.delete_route("weather")
        assert "weather" not in [s.route.name for s in writer.load()]
    finally:
        follower.close()
        writer.close()


def test_a_notification_that_is_not_a_seq_is_read_as_a_change_not_a_lost_connection(
    pg_dsn: str, schema: str
) -> None:
    import psycopg

    enc = HashingEncoder()
    writer = open_store(pg_dsn, schema)
    follower = AdaptiveRouter(enc, open_store(pg_dsn, schema))
    store: Any = follower.storage
    watch = store.watching
    try:
        model = ModelInfo(enc.model_id, enc.dimension)
        follower.add_route(ROUTES[0])  # its write session's pid is now its own
        assert watch._connected.wait(WAIT)
        channel = f"synaptoroute_{schema}"
        payloads = ["x", "", "-1", " 7", "1e3", "\u0663", "9" * 5000]
        # Any client that may connect can notify on the channel, with any payload; the
        # store's own write session too, where such a payload must not pass as its own.
        with psycopg.connect(pg_dsn, autocommit=True) as other:
            for payload in payloads:
                other.execute("SELECT pg_notify(%s, %s)", (channel, payload))
        for payload in payloads:
            store._run(
                "test",
                lambda conn, p=payload: conn.execute("SELECT pg_notify(%s, %s)", (channel, p)),
            )
        writer.put_route(ROUTES[1], enc.encode(ROUTES[1].utterances), model)
        assert store.wait_for_seq(writer.last_write_seq, WAIT)
        assert ROUTES[1].name in follower
        # Read as "read the log", never as a lost connection to reconnect from.
        assert watch.reconnects == 0 and watch.connected
        assert store.watching is watch
    finally:
        follower.close()
        writer.close()


@pytest.mark.parametrize(
    ("kind", "name", "data", "floats"),
    [
        ("put_route", "ghost", {"utterances": ["boo"]}, 5),  # vectors of the wrong size
        ("add_utterances", "billing", "refund please", None),  # data not a JSON object
        ("rename_route", "billing", {"to": "invoices"}, None),  # a kind of a newer writer
    ],
    ids=["wrong-size-vectors", "data-not-an-object", "unknown-kind"],
)
def test_a_change_log_row_that_cannot_be_read_reloads_the_store_and_following_goes_on(
    pg_dsn: str,
    schema: str,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    name: str,
    data: Any,
    floats: int | None,
) -> None:
    # Such a row used to escape the follower as if the connection were lost: it
    # reconnected and read the same row again, for good, and the replica stopped
    # following the store (an unknown kind was skipped without a word).
    import psycopg
    from psycopg.types.json import Jsonb

    enc = HashingEncoder()
    writer = open_store(pg_dsn, schema)  # not watching: only the follower reads the row
    follower = AdaptiveRouter(enc, open_store(pg_dsn, schema))
    store: Any = follower.storage
    watch = store.watching
    try:
        model = ModelInfo(enc.model_id, enc.dimension)
        writer.put_route(ROUTES[0], enc.encode(ROUTES[0].utterances), model)
        assert store.wait_for_seq(writer.last_write_seq, WAIT)
        vectors = None if floats is None else np.zeros(floats, np.float32).tobytes()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            row = conn.execute(
                f'INSERT INTO "{schema}".changes(origin, kind, name, data, vectors, model_id, '
                "dimension) VALUES ('another writer', %s, %s, %s, %s, %s, %s) RETURNING seq",
                (kind, name, Jsonb(data), vectors, model.model_id, model.dimension),
            ).fetchone()
        assert row is not None
        bad = int(row[0])
        writer.put_route(ROUTES[1], enc.encode(ROUTES[1].utterances), model)
        assert store.wait_for_seq(writer.last_write_seq, WAIT)
        assert router_state(follower) == db_state(pg_dsn, schema)
        assert set(follower.route_names) == {"billing", "support"}
        errors = [
            r.getMessage()
            for r in caplog.records
            if r.levelname == "ERROR" and f"row seq {bad} cannot be read" in r.getMessage()
        ]
        assert len(errors) == 1, errors
        assert "reading the whole store from its tables" in errors[0]
        # Not taken for a lost connection, and followed on from the log.
        assert watch.reconnects == 0 and watch.connected
        writer.put_route(ROUTES[2], enc.encode(ROUTES[2].utterances), model)
        writer.delete_route("billing")
        assert store.wait_for_seq(writer.last_write_seq, WAIT)
        assert router_state(follower) == db_state(pg_dsn, schema)
        assert set(follower.route_names) == {"support", "weather"}
        assert sum(f"row seq {bad} " in r.getMessage() for r in caplog.records) == 1
    finally:
        follower.close()
        writer.close()


@needs_fork
def test_only_the_live_write_session_counts_as_the_stores_own(pg_dsn: str, schema: str) -> None:
    # Notifications from the pid in _own_pid at or before the position applied are
    # skipped. A closed session's pid may be reused by another replica's session, and a
    # forked child's sessions are not the parent's: neither may stay its own.
    import psycopg

    store = open_store(pg_dsn, schema)
    try:
        model = ModelInfo("m", 8)
        store.put_route(ROUTES[0], unit(2, 8, 1), model)
        first = store._run("test", lambda conn: conn.info.backend_pid)
        assert store._own_pid == first
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            ended = admin.execute("SELECT pg_terminate_backend(%s)", (first,)).fetchone()
            assert ended == (True,)
            wait_until(
                lambda: (
                    not admin.execute(
                        "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (first,)
                    ).fetchall()
                ),
                "the write session to end",
            )
        store.put_route(ROUTES[1], unit(2, 8, 2), model)  # on a new session
        second = store._run("test", lambda conn: conn.info.backend_pid)
        assert second != first
        assert store._own_pid == second

        def child() -> None:
            assert store._own_pid is None  # the parent's session is not the child's
            store.put_route(ROUTES[2], unit(1, 8, 3), model)
            mine = store._run("test", lambda conn: conn.info.backend_pid)
            assert mine != second
            assert store._own_pid == mine
            store.close()

        assert in_child(child) == 0
        assert store._own_pid == second  # the parent's are its own still
    finally:
        store.close()


@needs_fork
def test_a_forked_replica_follows_and_writes_on_its_own_sessions(pg_dsn: str, schema: str) -> None:
    # A router built before a fork (gunicorn --preload): the child's follower thread
    # did not come along and its connections are the parent's sessions. The child must
    # connect anew and follow again; closing its router must not end the parent's.
    enc = HashingEncoder()
    router = AdaptiveRouter(enc, open_store(pg_dsn, schema))
    store: Any = router.storage
    router.add_route(ROUTES[0])
    watch = store.watching
    assert watch._connected.wait(WAIT)  # listening: its session is the parent's
    own = store._run("test", lambda conn: conn.info.backend_pid)
    listening = watch.backend_pid

    def child() -> None:
        assert store._run("test", lambda conn: conn.info.backend_pid) != own
        other = AdaptiveRouter(enc, open_store(pg_dsn, schema))  # another replica
        other.add_route(ROUTES[1])
        assert store.wait_for_seq(other.storage.last_write_seq, WAIT)  # type: ignore[attr-defined]
        assert ROUTES[1].name in router
        assert store.watching.backend_pid not in (None, listening)
        router.add_route(ROUTES[2])
        other.close()
        router.close()

    try:
        assert in_child(child) == 0
        reader = open_store(pg_dsn, schema)
        reader.load()
        assert store.wait_for_seq(reader.applied_seq, WAIT)  # the child's writes, followed
        reader.close()
        assert router_state(router) == db_state(pg_dsn, schema)
        assert set(router.route_names) == {route.name for route in ROUTES}
        # The parent's sessions are the ones it had: nothing ended them.
        assert store._run("test", lambda conn: conn.info.backend_pid) == own
        assert watch.backend_pid == listening and watch.reconnects == 0
    finally:
        router.close()


@pytest.mark.skipif(not CLUSTER_DIR, reason="needs the cluster of scripts/postgres.sh to restart")
def test_database_restart_while_both_replicas_run(
    pg_dsn: str, schema: str, replicas: list[Replica]
) -> None:
    a, b = Replica(pg_dsn, schema), Replica(pg_dsn, schema)
    replicas += [a, b]
    for route in ROUTES:
        seq = a.call("add_route", route=route.model_dump())
    assert b.call("wait", seq=seq)
    probes = ["I need a refund", "the app crashes again", "rain tomorrow?", "play jazz"]
    before = b.call("query", texts=probes)

    cluster("server-stop")
    try:
        # Queries keep working on the last known routes; changes fail clearly.
        assert b.call("query", texts=probes) == before
        assert a.call("query", texts=probes) == before
        with pytest.raises(ReplicaError) as info:
            a.call("add_utterances", name="billing", texts=["refund please"])
        assert info.value.kind == "StorageError"
        assert "nothing was changed" in info.value.message
        assert a.call("state")["routes"]["billing"]["utterances"] == sorted(ROUTES[0].utterances)
    finally:
        cluster("server-start")

    # The first write after the restart goes through, and B catches up.
    a.call("add_utterances", name="billing", texts=["refund please"])
    a.call("delete_route", name="weather")
    seq = a.call("add_route", route={"name": "music", "utterances": ["play some jazz"]})
    assert b.call("wait", seq=seq)
    expected = db_state(pg_dsn, schema)
    for replica in (a, b):
        state = replica.call("state")
        del state["applied"]
        assert state == expected
    assert b.call("query", texts=probes) == a.call("query", texts=probes)
    assert b.call("query", texts=["play jazz"])[0][0] == "music"


def test_a_memory_router_has_no_follower_and_a_sqlite_one_polls(tmp_path: Path) -> None:
    router = AdaptiveRouter(HashingEncoder())
    router.add_routes(ROUTES)
    assert not hasattr(router.storage, "watch")
    assert router.query("I need a refund").name == "billing"
    router.close()
    # SQLite has no change feed to listen to: its follower polls (test_sqlite_follow.py).
    router = AdaptiveRouter(HashingEncoder(), SQLiteStorage(tmp_path / "r.sqlite"))
    assert isinstance(router.storage.watching, PollingWatch)  # type: ignore[attr-defined]
    router.close()


if __name__ == "__main__" and sys.argv[1:2] == ["--replica"]:
    _replica_main(*sys.argv[2:5])


def test_negatives_and_a_hybrid_head_reach_a_replica_and_survive_reopen(
    pg_dsn: str, schema: str, encoder: Encoder
) -> None:
    """Issue 13: the negative examples (a reserved route) and a hybrid head (its beta
    and n-gram weights in the policy state; the lexical vectors rebuilt from the stored
    utterances) reach a replica through the change feed and a fresh router on the same
    schema."""
    codes = ["kx-1470-zq88", "kx-2583-pw41", "kx-3691-rb19"]
    templates = ["my {} is broken", "help me with the {}", "the {} won't turn on"]
    routes = [
        Route(name=f"r{i}", utterances=[t.format(c) for t in templates])
        for i, c in enumerate(codes)
    ]
    queries = [f"where can I buy a {c}" for c in codes] + ["tell me a joke about cats"]
    writer = AdaptiveRouter(encoder, open_store(pg_dsn, schema))
    replica = AdaptiveRouter(encoder, open_store(pg_dsn, schema))
    opened = [writer, replica]
    try:
        writer.add_routes(routes)
        assert writer.add_negatives(["tell me a joke about cats and dogs"])
        utterances = [u for r in routes for u in r.utterances]
        owners = [r.name for r in routes for _ in r.utterances]
        writer.fit(utterances, owners, head=True, hybrid=True)
        head = writer.policy.head
        assert head is not None and head.beta > 0
        expected = [(m.name, m.reason, m.confidence) for m in writer.query_batch(queries)]
        assert expected[-1][1] == "negative_example"
        assert replica.storage.wait_for_seq(writer.storage.last_write_seq, WAIT)  # type: ignore[attr-defined]
        assert replica.negatives == writer.negatives
        assert replica.policy.head is not None and replica.policy.head.beta == head.beta
        assert head.ngrams is not None and replica.policy.head.ngrams is not None
        assert np.array_equal(replica.policy.head.ngrams.ids, head.ngrams.ids)
        assert np.array_equal(replica.policy.head.ngram_weights, head.ngram_weights)  # type: ignore[arg-type]
        got = [(m.name, m.reason, m.confidence) for m in replica.query_batch(queries)]
        assert got == expected
        fresh = AdaptiveRouter(encoder, open_store(pg_dsn, schema))
        opened.append(fresh)
        assert fresh.negatives == writer.negatives
        assert [(m.name, m.reason, m.confidence) for m in fresh.query_batch(queries)] == expected
        writer.delete_negatives(writer.negatives)
        assert replica.storage.wait_for_seq(writer.storage.last_write_seq, WAIT)  # type: ignore[attr-defined]
        assert replica.negatives == []
        assert replica.query(queries[-1]).reason != "negative_example"
    finally:
        for router in opened:
            router.close()
