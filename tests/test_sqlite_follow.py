"""A router on a SQLite file follows other connections' commits (another process's
``synaptoroute routes add``, another worker of the service) by polling
``PRAGMA data_version``; see ``SQLiteStorage.watch`` and docs/deployment.md."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray
from threaded_server import ThreadedServer
from waiting import LIMIT_S, wait_until

from synaptoroute import (
    AdaptiveRouter,
    Encoder,
    InvalidInputError,
    Route,
    SQLiteStorage,
    StorageError,
)
from synaptoroute.encoder import HashingEncoder
from synaptoroute.index import RouteIndex
from synaptoroute.server import ServerSettings, create_app
from synaptoroute.storage import ModelInfo, StoredRoute
from synaptoroute.storage.changes import Change, apply_change
from synaptoroute.storage.polling import PollingWatch
from synaptoroute.testing import in_forked_child


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "routes.db"


@pytest.fixture
def pair(path: Path) -> Iterator[tuple[AdaptiveRouter, AdaptiveRouter]]:
    """Two routers on one file, each on its own connection; polled by hand."""
    enc = HashingEncoder(dimension=64)
    a = AdaptiveRouter(enc, SQLiteStorage(path, poll_interval=None))
    b = AdaptiveRouter(enc, SQLiteStorage(path, poll_interval=None))
    yield a, b
    a.close()
    b.close()


def poll(router: AdaptiveRouter) -> bool:
    store = router.storage
    assert isinstance(store, SQLiteStorage)
    return store.poll()


def same(a: AdaptiveRouter, b: AdaptiveRouter) -> bool:
    # By name: two routers that each added a route before seeing the other's list
    # them in the order each added them (the order of one writer's changes is
    # test_a_changed_or_replaced_route_keeps_its_place_in_every_router's).
    def held(r: AdaptiveRouter) -> dict[str, Route]:
        return {route.name: route for route in r.list_routes()}

    return held(a) == held(b) and a.policy == b.policy


@contextmanager
def reopened(path: Path) -> Iterator[AdaptiveRouter]:
    """A router opened afresh on the file (the pair's encoder, polled by hand): what a
    restart serves."""
    router = AdaptiveRouter(HashingEncoder(dimension=64), SQLiteStorage(path, poll_interval=None))
    try:
        yield router
    finally:
        router.close()


def test_a_route_deleted_and_created_again_between_two_polls_is_last_everywhere(
    pair: tuple[AdaptiveRouter, AdaptiveRouter], path: Path
) -> None:
    # A poll sees only the route as it is now: the follower put a route deleted and
    # created again back in its old place, where the writer, the store and a reopened
    # router hold it last (a new row), and ties went another way there.
    writer, follower = pair
    writer.add_routes(
        [
            Route(name="one", utterances=["alpha beta"]),
            Route(name="two", utterances=["see you"]),
            Route(name="three", utterances=["gamma"]),
        ]
    )
    assert poll(follower)
    writer.delete_route("one")
    writer.add_route(Route(name="one", utterances=["see you"]))
    writer.add_route(Route(name="four", utterances=["delta"]))
    assert poll(follower)
    poll(writer)  # its own writes read back: no news, nothing moves
    with reopened(path) as fresh:
        for router in (writer, follower, fresh):
            assert router.route_names == ["two", "three", "one", "four"]
            assert [m.name for m in router.query_top_k("see you", 2)] == ["two", "one"]


def test_a_query_never_pairs_the_routes_before_a_poll_with_the_policy_after_it(
    pair: tuple[AdaptiveRouter, AdaptiveRouter],
) -> None:
    # A query took the cached snapshot without a lock, then read the policy: a poll
    # applied in between paired the old routes with the new policy.
    writer, follower = pair
    writer.add_route(Route(name="a", utterances=["alpha one"]))
    assert poll(follower)
    assert follower.query("alpha one").name == "a"  # the snapshot is cached now
    writer.add_route(Route(name="r", utterances=["tie words"]))
    writer.set_policy(dataclasses.replace(writer.policy, thresholds={"r": 0.99}))
    index = follower._index
    real = index.snapshot
    polled: list[bool] = []

    def snapshot_then_poll() -> Any:
        taken = real()
        if not polled:  # the poll lands right after the cached snapshot is taken
            thread = threading.Thread(target=lambda: polled.append(poll(follower)))
            thread.start()
            thread.join(LIMIT_S)
        return taken

    index.snapshot = snapshot_then_poll  # type: ignore[method-assign]
    match = follower.query("tie words")
    assert polled == [True]
    assert (match.name, match.threshold) == ("r", 0.99)


def test_routes_without_utterances_take_their_place_in_the_store_order(
    pair: tuple[AdaptiveRouter, AdaptiveRouter],
) -> None:
    # Routes with vectors and routes without came in two changes of one poll, so an
    # empty route went after routes created after it, and, once it had utterances,
    # ties went another way than in the writer.
    writer, follower = pair
    writer.add_route(Route(name="a", utterances=["alpha"]))
    writer.add_route(Route(name="empty"))
    assert poll(follower)
    writer.delete_route("empty")
    writer.add_route(Route(name="empty"))  # created again: last, before "z"
    writer.add_route(Route(name="z", utterances=["tie words"]))
    assert poll(follower)
    writer.add_utterances("empty", ["tie words"])
    assert poll(follower)
    for router in (writer, follower):
        assert router.route_names == ["a", "empty", "z"]
        assert router.query("tie words").candidate == "empty"


def test_two_writers_agree_on_a_route_one_replaced_after_the_other_made_it_again(
    pair: tuple[AdaptiveRouter, AdaptiveRouter], path: Path
) -> None:
    # W replaced "a" in place before polling, over the row X had just made again: W
    # took the new row's id as known, so its poll never moved "a" last.
    w, x = pair
    w.add_routes([Route(name=n, utterances=["tie words"]) for n in ("a", "b", "c")])
    assert poll(x)
    x.delete_route("a")
    x.add_route(Route(name="a", utterances=["tie words"]))
    w.add_route(Route(name="a", utterances=["tie words", "more"]), replace=True)
    poll(w)
    poll(x)
    with reopened(path) as fresh:
        for router in (w, x, fresh):
            assert router.route_names == ["b", "c", "a"]
            assert router.query("tie words").candidate == "b"


def test_a_follower_gets_the_routes_and_the_policy_they_came_with_at_once(path: Path) -> None:
    # A writer stores a route, then the policy it leads to; one poll that finds both
    # handed the policy over first, in a change of its own, so a query between the two
    # could meet a fitted head knowing a route the follower did not hold yet.
    enc = HashingEncoder(dimension=64)
    writer = AdaptiveRouter(enc, SQLiteStorage(path, poll_interval=None))
    follower = SQLiteStorage(path, poll_interval=None)
    seen: list[Change] = []
    follower.load()
    follower.watch(seen.extend)
    try:
        writer.add_route(Route(name="one", utterances=["hello there"]))
        writer.set_policy(dataclasses.replace(writer.policy, thresholds={"one": 0.4}))
        assert follower.poll()
        assert [(bool(c.routes), bool(c.state)) for c in seen] == [(True, True)]
    finally:
        follower.close()
        writer.close()


def test_a_changed_or_replaced_route_keeps_its_place_in_every_router(
    pair: tuple[AdaptiveRouter, AdaptiveRouter], path: Path
) -> None:
    # The writer kept a replaced route in its place while the store (a new row) and
    # so every reopened router listed it last: 'routes list' differed between the
    # workers of one service, and before and after a restart. A follower that saw
    # the add and the replace in one poll listed it last too.
    a, early = pair
    a.add_route(Route(name="one", utterances=["hello there", "hi"]))
    a.add_route(Route(name="two", utterances=["bye now"]))
    assert poll(early)
    with reopened(path) as late:  # opened before the changes below, polled after
        a.add_route(Route(name="one", utterances=["yo", "see you"]), replace=True)
        a.add_route(Route(name="three", utterances=["good night"]))
        a.add_utterances("two", ["see you"])
        a.set_threshold("one", 0.7)
        a.delete_utterances("three", ["good night"])
        assert poll(early) and poll(late)
        with reopened(path) as fresh:
            for router in (a, early, late, fresh):
                assert router.route_names == ["one", "two", "three"]
                assert router.list_routes() == a.list_routes()
                # Ties ("see you" is in both) go to the earlier route in every one.
                first, second = router.query_top_k("see you", 2)
                assert (first.name, second.name) == ("one", "two")
                assert first.score == second.score


def test_every_kind_of_change_reaches_the_other_router(
    pair: tuple[AdaptiveRouter, AdaptiveRouter],
) -> None:
    a, b = pair
    assert not poll(b)  # nothing committed yet
    a.add_route(Route(name="billing", utterances=["I need a refund", "where is my invoice"]))
    a.add_route(Route(name="weather", utterances=["will it rain"], description="forecasts"))
    assert b.list_routes() == []
    assert poll(b) and same(a, b)
    assert b.query("I need a refund").name == "billing"
    assert not poll(b)  # read once

    a.add_utterances("weather", ["is it sunny"])
    a.delete_utterances("billing", ["where is my invoice"])
    a.set_threshold("weather", 0.42)
    assert poll(b) and same(a, b)
    assert b.get_route("weather").threshold == 0.42
    assert b.query("is it sunny").name == "weather"

    a.set_policy(dataclasses.replace(a.policy, threshold=0.33, min_margin=0.05))
    assert poll(b) and b.policy.threshold == 0.33 and b.policy.min_margin == 0.05

    a.delete_route("billing")
    assert poll(b) and same(a, b)
    assert b.query("I need a refund").name != "billing"


def test_a_route_written_here_and_deleted_there_is_gone_here(
    pair: tuple[AdaptiveRouter, AdaptiveRouter],
) -> None:
    a, b = pair
    b.add_route(Route(name="bye", utterances=["goodbye", "see you"]))
    assert poll(a)
    a.delete_route("bye")
    assert poll(b)
    assert b.list_routes() == [] and b.query("goodbye").name is None


def test_own_writes_are_not_read_back_unless_another_commit_came_first(path: Path) -> None:
    mine, other = SQLiteStorage(path, poll_interval=None), SQLiteStorage(path, poll_interval=None)
    model = ModelInfo("m", 4)

    def put(store: SQLiteStorage, name: str) -> None:
        store.put_routes([StoredRoute(Route(name=name, utterances=[name]), unit(1))], model)

    got: list[Change] = []
    mine.load()
    mine.watch(got.extend)
    put(mine, "a")  # no other commit since the load: noted as seen
    put(other, "b")
    assert mine.poll()
    assert [c.names for c in got] == [("b",)]  # a's vectors were not read back
    put(other, "c")  # then a write here after another connection's commit: compared
    put(mine, "a")
    got.clear()
    assert mine.poll()
    assert sorted(got[0].names) == ["a", "c"]
    mine.delete_route("a")
    mine.set_state("policy", {"threshold": 0.5})
    put(other, "d")
    got.clear()
    assert mine.poll()
    assert [(c.names, c.state) for c in got] == [(("d",), {})]
    mine.close()
    other.close()


def test_a_poll_hands_over_the_routes_each_kind_of_write_touched(path: Path) -> None:
    # Schema 4: the routes a commit touched are recorded by triggers, whatever wrote
    # them, and a poll reads those alone (it compared every route's fingerprint).
    mine, other = SQLiteStorage(path, poll_interval=None), SQLiteStorage(path, poll_interval=None)
    model = ModelInfo("m", 4)
    other.put_routes(
        [StoredRoute(Route(name=f"r{i}", utterances=["x", "y"]), unit(2)) for i in range(50)],
        model,
    )
    got: list[Change] = []
    mine.load()
    mine.watch(got.extend)
    writes = {
        "r1": lambda: other.add_utterances("r1", ["z"], unit(1), model),
        "r2": lambda: other.delete_utterances("r2", ["x"]),
        "r3": lambda: other.update_route(Route(name="r3", utterances=[], threshold=0.7)),
        "r4": lambda: other.delete_route("r4"),
        "new": lambda: other.put_routes(
            [StoredRoute(Route(name="new", utterances=["n"]), unit(1))], model
        ),
    }
    for name, write in writes.items():
        got.clear()
        write()
        assert mine.poll(), name
        assert [c.names for c in got] == [(name,)]
        assert [s.route.name for c in got for s in c.routes] == ([] if name == "r4" else [name])
    # A row written by another program (or an older synaptoroute that opened the
    # file before it was migrated) is seen too.
    raw = sqlite3.connect(path)
    with raw:
        raw.execute("DELETE FROM utterances WHERE text = 'y' AND route_id = "
                    "(SELECT id FROM routes WHERE name = 'r5')")  # fmt: skip
    raw.close()
    got.clear()
    assert mine.poll()
    assert [(s.route.name, s.route.utterances) for c in got for s in c.routes] == [("r5", ["x"])]
    assert not mine.poll()  # nothing since
    mine.close()
    other.close()


def test_a_backup_restored_into_the_file_reloads_the_follower(
    path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The change numbers go back with the content: reading on from the last one seen
    # found nothing, and the follower kept routes the file no longer held.
    mine, other = SQLiteStorage(path, poll_interval=None), SQLiteStorage(path, poll_interval=None)
    model = ModelInfo("m", 4)
    other.put_routes([StoredRoute(Route(name="a", utterances=["hello"]), unit(1))], model)
    other.set_state("policy", {"threshold": 0.3})
    backup = sqlite3.connect(tmp_path / "backup.db")
    live = sqlite3.connect(path)
    live.backup(backup)
    got: list[Change] = []
    mine.load()
    mine.watch(got.extend)
    for i in range(3):
        other.add_utterances("a", [f"more {i}"], unit(1), model)
    other.put_routes([StoredRoute(Route(name="b", utterances=["bee"]), unit(1))], model)
    other.set_state("policy", None)
    assert mine.poll()
    got.clear()
    backup.backup(live)  # restored in place: same file, older content
    backup.close()
    live.close()
    # Writes after the restore carry the numbers past the last one seen again: the
    # follower read on from there, and kept route b the file no longer holds.
    many = [f"c{i}" for i in range(20)]
    other.put_routes([StoredRoute(Route(name="c", utterances=many), unit(20))], model)
    with caplog.at_level(logging.WARNING, logger="synaptoroute.sqlite"):
        assert mine.poll()
    assert "went back" in caplog.text
    (change,) = got
    assert change.kind == "reload"
    assert [(s.route.name, s.route.utterances) for s in change.routes] == [
        ("a", ["hello"]),
        ("c", many),
    ]
    assert change.state == {"policy": {"threshold": 0.3}}
    got.clear()
    other.add_utterances("a", ["after"], unit(1), model)  # and it follows on from there
    assert mine.poll()
    assert [s.route.utterances for c in got for s in c.routes] == [["hello", "after"]]
    mine.close()
    other.close()


def test_a_poll_reads_the_state_documents_touched_alone(path: Path) -> None:
    # Every state document (a fitted policy holds megabytes) was read at every poll.
    mine, other = SQLiteStorage(path, poll_interval=None), SQLiteStorage(path, poll_interval=None)
    model = ModelInfo("m", 4)
    other.set_state("big", {"weights": "x" * 100_000})
    got: list[Change] = []
    mine.load()
    mine.watch(got.extend)
    read: list[str] = []
    mine._db.set_trace_callback(read.append)
    other.put_routes([StoredRoute(Route(name="a", utterances=["hello"]), unit(1))], model)
    assert mine.poll()
    assert [c.state for c in got] == [{}]
    assert not [sql for sql in read if "FROM state" in sql]
    got.clear()
    other.set_state("small", {"k": 1})
    other.set_state("gone", {"k": 2})
    other.set_state("gone", None)
    assert mine.poll()
    assert [c.state for c in got] == [{"gone": None, "small": {"k": 1}}]
    mine.close()
    other.close()


def unit(rows: int, dim: int = 4) -> NDArray[np.float32]:
    out = np.zeros((rows, dim), dtype=np.float32)
    out[:, 0] = 1.0
    return out


def test_a_change_without_vectors_is_applied_whatever_model_the_store_records(
    path: Path,
) -> None:
    # A store whose routes hold no utterance still records the model of whoever last
    # wrote vectors; such a store is no one's model's (as a router opening it decides).
    earlier = AdaptiveRouter(HashingEncoder(dimension=32), SQLiteStorage(path))
    earlier.add_route(Route(name="old", utterances=["hello"]))
    earlier.delete_route("old")
    earlier.close()
    enc = HashingEncoder(dimension=64)
    a = AdaptiveRouter(enc, SQLiteStorage(path, poll_interval=None))
    b = AdaptiveRouter(enc, SQLiteStorage(path, poll_interval=None))
    b.set_policy(dataclasses.replace(b.policy, threshold=0.77))
    b.add_route(Route(name="empty", utterances=[]))
    assert poll(a)
    assert a.policy.threshold == 0.77 and a.route_names == ["empty"]
    a.close()
    b.close()


def test_a_policy_set_here_and_deleted_there_is_the_default_here(
    pair: tuple[AdaptiveRouter, AdaptiveRouter],
) -> None:
    a, b = pair
    default = a.policy
    a.set_policy(dataclasses.replace(default, threshold=0.6))
    assert poll(b) and b.policy.threshold == 0.6
    b.storage.set_state("policy", None)  # as a restored backup without a policy
    assert poll(a) and a.policy == default


def test_a_load_after_watch_keeps_what_the_next_poll_delivers(
    pair: tuple[AdaptiveRouter, AdaptiveRouter],
) -> None:
    a, b = pair
    a.add_route(Route(name="billing", utterances=["I need a refund"]))
    assert [s.route.name for s in b.storage.load()] == ["billing"]  # an export, say
    assert poll(b) and b.query("I need a refund").name == "billing"


def test_writes_on_both_sides_converge(pair: tuple[AdaptiveRouter, AdaptiveRouter]) -> None:
    a, b = pair
    a.add_route(Route(name="billing", utterances=["I need a refund"]))
    b.add_route(Route(name="tech", utterances=["the app crashes"]))
    b.add_route(Route(name="billing", utterances=["money back please"]), replace=True)
    a.set_threshold("billing", 0.3)  # a's copy of billing is out of date here
    poll(a)
    poll(b)
    assert same(a, b)
    stored = {s.route.name: s.route for s in a.storage.load()}
    assert {r.name: r for r in a.list_routes()} == stored
    assert stored["billing"].utterances == ["money back please"]
    assert stored["billing"].threshold == 0.3


def test_a_route_read_back_unchanged_keeps_its_rows() -> None:
    # A SQLite poll hands back routes this replica wrote itself (it cannot tell them
    # from others' changes); they must not be taken out of the index and put back.
    index = RouteIndex(4)
    route = Route(name="billing", utterances=["refund", "invoice"])
    vectors = np.eye(4, dtype=np.float32)[:2]
    index.add("billing", vectors, route.utterances)
    deleted: list[str] = []
    real = index.delete_texts

    def spy(name: str, texts: Sequence[str]) -> int:
        deleted.append(name)
        return real(name, texts)

    index.delete_texts = spy  # type: ignore[method-assign]
    changed = route.model_copy(update={"utterances": ["refund"]})
    change = Change(
        1,
        "resync",
        routes=(
            StoredRoute(route, vectors),
            StoredRoute(changed.model_copy(update={"name": "x"}), vectors[:1]),
        ),
        names=("billing", "x"),
        model=ModelInfo("m", 4),
    )
    out = apply_change(change, {"billing": route}, index)
    assert deleted == [] and set(out) == {"billing", "x"}
    out = apply_change(
        Change(2, "resync", routes=(StoredRoute(changed, vectors[:1]),), names=("billing",)),
        out,
        index,
    )
    assert deleted == ["billing"] and out["billing"].utterances == ["refund"]
    # An index that a failed change left apart from the routes is repaired by a reload.
    real("x", ["refund"])
    apply_change(
        Change(3, "reload", routes=tuple(StoredRoute(r, vectors[:1]) for r in out.values())),
        out,
        index,
    )
    assert deleted == ["billing", "x"] and index.texts_of("x") == ["refund"]


def test_the_follower_thread_applies_changes_by_itself(path: Path) -> None:
    enc = HashingEncoder(dimension=64)
    follower = AdaptiveRouter(enc, SQLiteStorage(path, poll_interval=0.01))
    writer = AdaptiveRouter(enc, SQLiteStorage(path, poll_interval=None))
    try:
        store = follower.storage
        assert isinstance(store, SQLiteStorage) and store.watching is not None
        assert store.watching.running
        writer.add_route(Route(name="billing", utterances=["I need a refund"]))
        wait_until(lambda: follower.query("I need a refund").name == "billing", "following")
    finally:
        writer.close()
        follower.close()
    assert store.watching is None


def test_a_dropped_router_ends_its_follower_and_frees_the_store_for_another(
    path: Path,
) -> None:
    enc = HashingEncoder(dimension=64)
    store = SQLiteStorage(path, poll_interval=0.01)
    router = AdaptiveRouter(enc, store)
    watch = store.watching
    assert watch is not None and watch.running
    with pytest.raises(StorageError, match="already watched"):
        AdaptiveRouter(enc, store)  # one live router per store object, as with PostgreSQL
    gone = weakref.ref(router)
    del router

    def collected() -> bool:
        gc.collect()
        return gone() is None  # the follower holds the router weakly

    wait_until(collected, "the dropped router's collection")
    wait_until(lambda: not watch.running, "the follower's end")
    again = AdaptiveRouter(enc, store)  # the ended watch is replaced
    assert store.watching is not watch and store.watching is not None
    assert store.watching.running
    again.close()
    assert store.watching is None


def test_watch_refuses_what_it_cannot_do(path: Path) -> None:
    store = SQLiteStorage(path, poll_interval=None)
    with pytest.raises(StorageError, match="load"):
        store.watch(lambda changes: None)
    store.load()
    with pytest.raises(StorageError, match="no change log"):
        store.watch(lambda changes: None, since=3)
    store.watch(lambda changes: None)
    with pytest.raises(StorageError, match="already watched"):
        store.watch(lambda changes: None)
    store.close()
    assert store.watching is None and not store.poll()


def test_poll_of_a_closed_store_is_refused_by_name(path: Path) -> None:
    store = SQLiteStorage(path, poll_interval=None)
    store.load()
    watch = store.watch(lambda changes: None)
    store._watch = watch  # close() let go of it; poll as a thread caught mid-way would
    store.close()
    store._watch = watch
    with pytest.raises(StorageError, match="closed"):
        store.poll()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_file_deleted_or_replaced_is_reported_and_routing_goes_on(
    path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The open connection goes on reading the old file: without a check, a poll saw
    # no change for good, and a file made anew at the path was never followed.
    enc = HashingEncoder(dimension=64)
    router = AdaptiveRouter(enc, SQLiteStorage(path, poll_interval=None))
    router.add_route(Route(name="billing", utterances=["I need a refund"]))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if how == "replaced":
        AdaptiveRouter(enc, SQLiteStorage(path, poll_interval=None)).add_route(
            Route(name="tech", utterances=["the app crashes"])
        )
    with pytest.raises(StorageError, match="deleted or replaced"):
        poll(router)
    assert router.query("I need a refund").name == "billing"  # routing goes on
    store = router.storage
    assert isinstance(store, SQLiteStorage)
    store._watch = None  # the follower thread, on the same file, logs it once
    store.poll_interval = 0.01
    with caplog.at_level(logging.WARNING, logger="synaptoroute.sqlite"):
        store.watch(router._apply_changes, lock=router._lock, weak=True)

        def warned() -> bool:
            return any("deleted or replaced" in r.getMessage() for r in caplog.records)

        wait_until(warned, "the follower's warning")
    router.close()
    assert sum("deleted or replaced" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_write_to_a_file_deleted_or_replaced_is_refused(path: Path, how: str) -> None:
    # The connection still writes to the file it opened: the write was acknowledged
    # and served, and lost when the process started again on the file at the path.
    enc = HashingEncoder(dimension=64)
    router = AdaptiveRouter(enc, SQLiteStorage(path, poll_interval=None))
    router.add_route(Route(name="billing", utterances=["I need a refund"]))
    moved = path.with_name("moved.db")
    if how == "replaced":
        SQLiteStorage(moved, poll_interval=None).close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
        if how == "replaced" and Path(f"{moved}{suffix}").exists():
            os.replace(f"{moved}{suffix}", f"{path}{suffix}")
    with pytest.raises(StorageError, match=r"deleted or replaced.*nothing was written"):
        router.add_route(Route(name="tech", utterances=["the app crashes"]))
    assert router.route_names == ["billing"]  # the router holds what the store took
    assert router.query("I need a refund").name == "billing"  # routing goes on
    router.close()
    if how == "replaced":
        store = SQLiteStorage(path, poll_interval=None)
        assert store.load() == []
        store.close()


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "1", True])
def test_poll_interval_must_be_seconds(path: Path, bad: object) -> None:
    with pytest.raises(InvalidInputError, match="poll_interval"):
        SQLiteStorage(path, poll_interval=bad)  # type: ignore[arg-type]
    assert not path.exists()


def test_an_in_memory_store_runs_no_thread() -> None:
    router = AdaptiveRouter(HashingEncoder(dimension=64), SQLiteStorage(":memory:"))
    store = router.storage
    assert isinstance(store, SQLiteStorage) and store.watching is not None
    assert not store.watching.running and not store.poll()
    router.close()


def test_vectors_of_another_model_are_not_applied(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    follower = AdaptiveRouter(HashingEncoder(dimension=64), SQLiteStorage(path, poll_interval=None))
    other = AdaptiveRouter(HashingEncoder(dimension=32), SQLiteStorage(path, poll_interval=None))
    other.add_route(Route(name="billing", utterances=["I need a refund"]))
    other.add_route(Route(name="later", description="no utterances yet"))
    other.set_policy(dataclasses.replace(other.policy, threshold=0.66))
    with caplog.at_level(logging.ERROR, logger="synaptoroute"):
        assert poll(follower)
    assert "restart this replica with the store's model" in caplog.text
    # What holds no vectors is still applied, from the same change.
    assert follower.route_names == ["later"]
    assert follower.policy.threshold == 0.66
    other.close()
    follower.close()


def test_a_failing_poll_is_logged_once_and_following_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []
    recovered = threading.Event()

    def flaky() -> bool:
        calls.append(1)
        if len(calls) <= 3:
            raise StorageError("database is locked")
        recovered.set()
        return False

    with caplog.at_level(logging.WARNING, logger="synaptoroute.sqlite"):
        watch = PollingWatch(flaky, lambda changes: None, threading.RLock(), interval=0.001)
        assert recovered.wait(LIMIT_S)
        watch.stop(timeout=LIMIT_S)  # the thread logs "again" after the poll returns
    messages = [r.getMessage() for r in caplog.records]
    assert sum("could not read other processes' changes" in m for m in messages) == 1
    assert "database is locked" in messages[0]
    assert any("reading other processes' changes again" in m for m in messages)
    assert not watch.running


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_a_forked_child_follows_on_its_own_connection(path: Path) -> None:
    enc = HashingEncoder(dimension=64)
    router = AdaptiveRouter(enc, SQLiteStorage(path, poll_interval=0.01))
    router.add_route(Route(name="billing", utterances=["I need a refund"]))
    parent_watch = router.storage.watching  # type: ignore[attr-defined]

    def check() -> None:
        store = router.storage
        assert isinstance(store, SQLiteStorage)
        assert store.watching is not None and store.watching is not parent_watch
        assert store.watching.running  # the parent's thread did not come along
        writer = AdaptiveRouter(enc, SQLiteStorage(path, poll_interval=None))
        writer.add_route(Route(name="tech", utterances=["the app crashes"]))
        wait_until(lambda: router.query("the app crashes").name == "tech", "the child following")
        assert router.query("I need a refund").name == "billing"

    assert in_forked_child(check) == 0
    assert router.storage.watching is parent_watch  # type: ignore[attr-defined]
    router.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_a_commit_just_before_the_fork_reaches_the_child(path: Path) -> None:
    # The child's connection counts data_version anew: compared with the parent's
    # count, a commit the parent had not polled for yet could look like none.
    enc = HashingEncoder(dimension=64)
    router = AdaptiveRouter(enc, SQLiteStorage(path, poll_interval=None))
    writer = AdaptiveRouter(enc, SQLiteStorage(path, poll_interval=None))
    writer.add_route(Route(name="tech", utterances=["the app crashes"]))

    def check() -> None:
        assert poll(router)
        assert router.query("the app crashes").name == "tech"

    assert in_forked_child(check) == 0
    writer.close()
    router.close()


# -- the real model, the real CLI in another process, the real service ------------------
def cli(*args: str, store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "synaptoroute", *args, "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.model
def test_a_route_added_by_the_cli_reaches_a_router_that_is_open(
    encoder: Encoder, path: Path
) -> None:
    router = AdaptiveRouter(encoder, SQLiteStorage(path, poll_interval=None))
    router.add_route(Route(name="billing", utterances=["I need a refund", "where is my invoice"]))
    done = cli("routes", "add", "weather", "will it rain tomorrow", "is it sunny", store=path)
    assert done.returncode == 0, done.stderr
    assert router.query("is it going to rain today").name != "weather"
    assert poll(router)
    assert router.query("is it going to rain today").name == "weather"
    assert router.query("I want my money back").name == "billing"
    done = cli("routes", "delete", "billing", store=path)
    assert done.returncode == 0, done.stderr
    assert poll(router)
    assert router.route_names == ["weather"]
    router.close()


def test_the_store_poll_interval_reaches_a_sqlite_store_only(path: Path) -> None:
    settings = ServerSettings(store=str(path), store_poll_interval=0.25)
    assert settings.storage_options == {"poll_interval": 0.25}
    assert ServerSettings().storage_options == {}  # memory
    url = ServerSettings(store="postgresql://u@127.0.0.1/db", store_poll_interval=0.25)
    assert url.storage_options == {}  # told by notifications; keeps its own safety net
    router = AdaptiveRouter.open(
        path, HashingEncoder(dimension=64), storage_options=settings.storage_options
    )
    store = router.storage
    assert isinstance(store, SQLiteStorage) and store.poll_interval == 0.25
    router.close()
    router = AdaptiveRouter.open(
        path, HashingEncoder(dimension=64), storage_options={"poll_interval": None}
    )
    assert router.storage.watching is not None  # type: ignore[attr-defined]
    assert not router.storage.watching.running  # type: ignore[attr-defined]
    router.close()


@pytest.mark.model
def test_the_service_serves_a_route_the_cli_added_while_it_runs(path: Path) -> None:
    app = create_app(ServerSettings(store=str(path), store_poll_interval=0.05))
    server = ThreadedServer(app)
    try:
        with httpx.Client(base_url=server.url, timeout=LIMIT_S) as client:
            wait_until(lambda: client.get("/readyz").status_code == 200, "readiness")
            assert client.get("/routes").json() == []
            done = cli("routes", "add", "weather", "will it rain tomorrow", store=path)
            assert done.returncode == 0, done.stderr

            def routed() -> bool:
                r = client.post("/route", json={"query": "is it going to rain today"})
                return bool(r.status_code == 200 and r.json()["route"] == "weather")

            wait_until(routed, "the service following the CLI's change")
            store = app.state.synaptoroute.router.storage
            assert isinstance(store, SQLiteStorage) and store.poll_interval == 0.05
    finally:
        server.stop()


def test_a_poll_bringing_vectors_that_are_not_finite_leaves_those_routes_as_they_were(
    pair: tuple[AdaptiveRouter, AdaptiveRouter], path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Another process's write of a damaged vector reached a running replica: the
    # route's every score was NaN, read as no score, and it was never chosen again.
    writer, follower = pair
    writer.add_routes(
        [
            Route(name="billing", utterances=["refund please"]),
            Route(name="weather", utterances=["will it rain"]),
        ]
    )
    assert poll(follower)
    assert follower.query("will it rain").name == "weather"
    vector = writer.encoder.encode(["will it snow"])
    vector[0, 0] = np.nan
    other = SQLiteStorage(path, poll_interval=None)
    other.add_utterances("weather", ["will it snow"], vector, writer.model)
    other.close()
    writer.add_route(Route(name="music", utterances=["play jazz"]))
    caplog.clear()
    assert poll(follower)
    assert "not finite numbers" in caplog.text and "'weather'" in caplog.text
    assert follower.get_route("weather").utterances == ["will it rain"]
    assert follower.query("will it rain").name == "weather"
    assert follower.query("play jazz").name == "music"  # the rest applied


def test_negatives_changed_on_a_replica_that_missed_their_deletion_elsewhere(
    pair: tuple[AdaptiveRouter, AdaptiveRouter],
) -> None:
    # The replica held negatives another process had deleted since: its add and delete
    # raised RouteNotFoundError for '__negatives__', a route no caller knows of.
    writer, follower = pair
    writer.add_route(Route(name="greet", utterances=["hello there"]))
    writer.add_negatives(["what is the weather"])
    assert poll(follower) and follower.negatives == ["what is the weather"]
    writer.delete_negatives(["what is the weather"])
    assert follower.delete_negatives(["what is the weather"]) == 0
    assert follower.add_negatives(["tell me a joke"]) == ["tell me a joke"]
    assert follower.negatives == ["tell me a joke"]
    poll(writer)
    poll(follower)
    with reopened(follower.storage.path) as fresh:  # type: ignore[attr-defined]
        for router in (writer, follower, fresh):
            assert router.negatives == ["tell me a joke"]
            assert router.query("tell me a joke").reason == "negative_example"
