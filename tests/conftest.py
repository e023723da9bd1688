"""Shared fixtures: the real default encoder (loaded once) and the CLINC150 slices."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clinc import split

from synaptoroute import AdaptiveRouter, Encoder, SQLiteStorage
from synaptoroute.datasets import routes_from_labelled
from synaptoroute.exceptions import install_hint

FIXTURES = Path(__file__).parent / "fixtures"


def load_rows(name: str) -> list[dict[str, str | None]]:
    """Rows of a fixture JSON-lines file."""
    with (FIXTURES / name).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    """The real bundled model, shared by every test in the session."""
    enc = Encoder()
    enc.load()
    return enc


@pytest.fixture(scope="session")
def clinc_train() -> list[dict[str, str | None]]:
    """20 CLINC150 intents x 30 train rows, plus 30 out-of-scope rows (label None)."""
    return load_rows("clinc150_train_slice.jsonl")


@pytest.fixture(scope="session")
def clinc_val() -> list[dict[str, str | None]]:
    """The same 20 intents x 20 val rows, plus 40 out-of-scope rows (label None)."""
    return load_rows("clinc150_val_slice.jsonl")


@pytest.fixture(scope="session")
def clinc_store(
    tmp_path_factory: pytest.TempPathFactory,
    encoder: Encoder,
    clinc_train: list[dict[str, str | None]],
) -> Path:
    """A SQLite store holding one route per intent of the train slice, encoded once per
    session; tests copy the file before opening a router on it."""
    path = tmp_path_factory.mktemp("clinc") / "routes.db"
    router = AdaptiveRouter(encoder, SQLiteStorage(path))
    router.add_routes(routes_from_labelled(*split(clinc_train)))
    router.close()
    return path


# -- PostgreSQL: the server of scripts/postgres.sh (.ci/run starts one) ----------------
PG_DSN = os.environ.get("SYNAPTOROUTE_TEST_PG_DSN", "")
PG_REQUIRED = os.environ.get("SYNAPTOROUTE_TEST_PG_REQUIRED") == "1"


def _pg_unavailable(reason: str) -> None:
    if PG_REQUIRED:
        pytest.fail(f"PostgreSQL is required here (SYNAPTOROUTE_TEST_PG_REQUIRED=1): {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The test server's DSN; skips (or fails under CI) without a reachable server."""
    try:
        import psycopg
    except ImportError:
        _pg_unavailable(f"psycopg is not installed: {install_hint('postgres')}")
    if not PG_DSN:
        _pg_unavailable(
            'no PostgreSQL server: run `eval "$(bash scripts/postgres.sh start)"` '
            "(sets SYNAPTOROUTE_TEST_PG_DSN) to run these tests"
        )
    try:
        psycopg.connect(PG_DSN, connect_timeout=5).close()
    except psycopg.Error as exc:
        _pg_unavailable(f"PostgreSQL at SYNAPTOROUTE_TEST_PG_DSN is unreachable: {exc}")
    return PG_DSN


@pytest.fixture
def schema(pg_dsn: str) -> Iterator[str]:
    """A fresh PostgreSQL schema for one test, dropped afterwards."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


# -- test tiers ------------------------------------------------------------------------
# The unit tier (``pytest tests -m "not model"``) runs without the model and without
# the network: a test that needs either is marked ``model``, by hand or, when it asks
# for the ``encoder`` fixture, here. In every run an unmarked test that reaches the
# real model or opens an internet socket fails, so a missing mark is found at once.
_HERE = Path(__file__).parent
_INTEGRATION_FIXTURES = {"encoder", "pg_dsn"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this folder that uses the real model or a server through a fixture."""
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if _HERE in Path(str(item.path)).parents and uses & _INTEGRATION_FIXTURES:
            item.add_marker(pytest.mark.model)


def _refuse_model(*_: object, **__: object) -> Any:
    msg = "this test reaches the real model: mark it @pytest.mark.model (integration tier)"
    raise RuntimeError(msg)


@pytest.fixture
def read_only_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A valid store that SQLite may read but not write, as in a folder the process
    cannot write (tests run as root, whom permission bits do not stop): its
    connections open it with ``mode=ro``, and it is in rollback-journal mode, so the
    open's switch to WAL is a write that SQLite refuses with SQLITE_READONLY, as it
    refuses to create the -wal and -shm files of a WAL store in such a folder."""
    path = tmp_path / "ro.db"
    SQLiteStorage(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=DELETE")
    db.close()

    def connect(self: SQLiteStorage, existing: bool = False) -> sqlite3.Connection:
        uri = Path(self.file).as_uri() + "?mode=ro"
        return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)

    monkeypatch.setattr(SQLiteStorage, "_connect", connect)
    return path


@pytest.fixture(autouse=True)
def _unit_tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("model") is not None:
        return
    monkeypatch.setattr(Encoder, "load", _refuse_model)
    monkeypatch.setattr(Encoder, "encode", _refuse_model)
    connect, bind = socket.socket.connect, socket.socket.bind

    def local_only(real: Any) -> Any:
        def call(self: socket.socket, address: Any) -> Any:
            if self.family in (socket.AF_INET, socket.AF_INET6):
                msg = "this test opens a network socket: mark it @pytest.mark.model"
                raise RuntimeError(msg)
            return real(self, address)

        return call

    monkeypatch.setattr(socket.socket, "connect", local_only(connect))
    monkeypatch.setattr(socket.socket, "bind", local_only(bind))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item (``item.rep_call``), for fixtures that
    save artefacts (the console's screenshots) when the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
