"""One contract, every storage back end: memory, SQLite and PostgreSQL behave alike.

The router relies only on the ``Storage`` protocol, so whatever one back end does on
a write, a refusal or a read, the others must do too. PostgreSQL runs against the
server of ``scripts/postgres.sh`` (``.ci/run`` starts it; without one these cases
skip, or fail under ``SYNAPTOROUTE_TEST_PG_REQUIRED=1``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from synaptoroute import (
    InvalidInputError,
    MemoryStorage,
    Route,
    RouteNotFoundError,
    SQLiteStorage,
    Storage,
    StorageError,
)
from synaptoroute.storage import ModelInfo, StoredRoute, WatchableStorage

MODEL = ModelInfo("contract-model", 8)
OTHER = ModelInfo("another-model", 8)
ROUTES = [
    Route(name="billing", utterances=["I need a refund", "where is my invoice"], threshold=0.3),
    Route(name="support", utterances=["the app crashes"], metadata={"team": "t2", "n": [1, 2]}),
    Route(name="weather", utterances=["will it rain", "is it sunny"], description="forecasts"),
]


def unit(rows: int, seed: int, dim: int = MODEL.dimension) -> NDArray[np.float32]:
    v = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    out: NDArray[np.float32] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def stored(routes: list[Route] = ROUTES) -> list[StoredRoute]:
    return [StoredRoute(r, unit(len(r.utterances), seed=i)) for i, r in enumerate(routes)]


def content(storage: Storage) -> dict[str, tuple[Route, list[list[float]]]]:
    """What a reader sees: each route with its vectors, in load order."""
    return {s.route.name: (s.route, s.vectors.tolist()) for s in storage.load()}


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.model)])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "memory":
        store: Storage = MemoryStorage()
    elif request.param == "sqlite":
        store = SQLiteStorage(tmp_path / "routes.db")
    else:
        from synaptoroute.postgres import PostgresStorage

        dsn = request.getfixturevalue("pg_dsn")
        store = PostgresStorage(dsn, schema=request.getfixturevalue("schema"), connect_timeout=10)
    yield store
    store.close()


def test_an_empty_store(storage: Storage) -> None:
    assert storage.load() == []
    assert storage.model_info() is None
    assert storage.get_state("policy") is None


def test_routes_come_back_whole_and_in_order(storage: Storage) -> None:
    items = stored()
    storage.put_routes(items, MODEL)
    assert storage.model_info() == MODEL
    loaded = storage.load()
    assert [s.route for s in loaded] == ROUTES
    for got, put in zip(loaded, items, strict=True):
        assert got.vectors.dtype == np.float32
        np.testing.assert_array_equal(got.vectors, put.vectors)


def test_a_load_writes_every_vector_once_into_one_buffer(storage: Storage) -> None:
    # SQLite and PostgreSQL stream their vectors into one buffer the router's index
    # takes over instead of copying (synaptoroute._buffers); the memory store keeps
    # its arrays, which are always copied. Rows come by route, then by insertion, also
    # for an utterance added to the first route after the others.
    from synaptoroute._buffers import take_buffer

    items = stored()
    storage.put_routes(items, MODEL)
    late = unit(1, seed=9)
    storage.add_utterances("billing", ["refund it now"], late, MODEL)
    loaded = storage.load()
    assert [s.route.utterances for s in loaded] == [
        [*ROUTES[0].utterances, "refund it now"],
        *(r.utterances for r in ROUTES[1:]),
    ]
    np.testing.assert_array_equal(loaded[0].vectors, np.vstack([items[0].vectors, late]))
    for got, put in zip(loaded[1:], items[1:], strict=True):
        np.testing.assert_array_equal(got.vectors, put.vectors)
    taken = take_buffer([s.vectors for s in loaded], MODEL.dimension)
    if isinstance(storage, MemoryStorage):
        assert taken is None
    else:
        assert taken is not None and taken[1] == 6


def test_add_utterances_keeps_a_text_once_in_its_first_place(storage: Storage) -> None:
    # A text the route has, or one repeated in the call, keeps its first row and
    # vector: memory appended a copy, SQLite moved it to the end, PostgreSQL replaced
    # its vector in place (the Storage API used directly, or two replicas at once).
    storage.put_routes(stored(), MODEL)
    before = content(storage)["billing"][1]
    extra = unit(3, seed=7)
    storage.add_utterances(
        "billing", ["refund it now", "I need a refund", "refund it now"], extra, MODEL
    )
    route, vectors = content(storage)["billing"]
    assert route.utterances == ["I need a refund", "where is my invoice", "refund it now"]
    assert vectors == [*before, extra[0].tolist()]


def test_a_replica_applies_add_utterances_as_the_stores_keep_it() -> None:
    # What a follower does with the change row of the call above: the same rows.
    from synaptoroute.index import RouteIndex
    from synaptoroute.storage.changes import Change, apply_change

    index = RouteIndex(MODEL.dimension)
    routes = apply_change(Change(seq=1, kind="reload", routes=tuple(stored())), {}, index)
    extra = unit(3, seed=7)
    change = Change(
        seq=2,
        kind="add_utterances",
        name="billing",
        texts=("refund it now", "I need a refund", "refund it now"),
        vectors=extra,
        model=MODEL,
    )
    routes = apply_change(change, routes, index)
    assert routes["billing"].utterances == [
        "I need a refund",
        "where is my invoice",
        "refund it now",
    ]
    snap = index.snapshot()
    live = [t for t, r in zip(snap.texts, snap.row_route.tolist(), strict=True) if r >= 0]
    assert sorted(live) == sorted(u for r in routes.values() for u in r.utterances)


def test_put_routes_replaces_a_route_of_the_same_name(storage: Storage) -> None:
    storage.put_routes(stored(), MODEL)
    new = Route(name="billing", utterances=["refund please"], description="money")
    storage.put_routes([StoredRoute(new, unit(1, seed=9))], MODEL)
    got = content(storage)
    assert got["billing"][0] == new
    assert got["billing"][1] == unit(1, seed=9).tolist()
    # In its place: every back end keeps a replaced route where it was.
    assert list(got) == ["billing", "support", "weather"]


def test_utterances_are_added_and_deleted_with_their_vectors(storage: Storage) -> None:
    storage.put_routes(stored(), MODEL)
    storage.add_utterances("support", ["I cannot log in"], unit(1, seed=5), MODEL)
    route, vectors = content(storage)["support"]
    assert route.utterances == ["the app crashes", "I cannot log in"]
    assert vectors[1] == unit(1, seed=5)[0].tolist()
    storage.delete_utterances("support", ["the app crashes"])
    route, vectors = content(storage)["support"]
    assert route.utterances == ["I cannot log in"]
    assert vectors == unit(1, seed=5).tolist()


def test_settings_change_without_touching_utterances(storage: Storage) -> None:
    storage.put_routes(stored(), MODEL)
    storage.update_route(Route(name="weather", threshold=0.7, metadata={"k": "v"}))
    route, vectors = content(storage)["weather"]
    assert route == Route(
        name="weather", utterances=ROUTES[2].utterances, threshold=0.7, metadata={"k": "v"}
    )
    assert vectors == unit(2, seed=2).tolist()


def test_deleting_a_route(storage: Storage) -> None:
    storage.put_routes(stored(), MODEL)
    storage.delete_route("support")
    assert list(content(storage)) == ["billing", "weather"]


@pytest.mark.parametrize(
    "change",
    ["add_utterances", "delete_utterances", "delete_route", "update_route"],
)
def test_an_unknown_route_is_refused_and_nothing_changes(storage: Storage, change: str) -> None:
    storage.put_routes(stored(), MODEL)
    before = content(storage)
    with pytest.raises(RouteNotFoundError):
        if change == "add_utterances":
            storage.add_utterances("nope", ["x"], unit(1, seed=1), MODEL)
        elif change == "delete_utterances":
            storage.delete_utterances("nope", ["x"])
        elif change == "delete_route":
            storage.delete_route("nope")
        else:
            storage.update_route(Route(name="nope"))
    assert content(storage) == before


def test_vectors_of_another_model_are_never_mixed_in(storage: Storage) -> None:
    storage.put_routes(stored(), MODEL)
    before = content(storage)
    other = StoredRoute(Route(name="music", utterances=["play jazz"]), unit(1, seed=3))
    with pytest.raises(StorageError, match="refusing to mix in 'another-model'"):
        storage.put_routes([other], OTHER)
    with pytest.raises(StorageError, match="refusing to mix in 'another-model'"):
        storage.add_utterances("billing", ["refund"], unit(1, seed=4), OTHER)
    assert content(storage) == before
    assert storage.model_info() == MODEL


def test_a_store_emptied_of_every_route_takes_another_model(storage: Storage) -> None:
    # Its model record outlived its vectors: a router of another model opened it
    # (nothing to mismatch) and then every write failed ("refusing to mix in"), with
    # no way out but deleting the store.
    storage.put_routes(stored(), MODEL)
    for route in ROUTES:
        storage.delete_route(route.name)
    small = ModelInfo("small-model", 4)
    music = StoredRoute(Route(name="music", utterances=["play jazz"]), unit(1, seed=3, dim=4))
    storage.put_routes([music], small)
    assert storage.model_info() == small
    assert content(storage) == {"music": (music.route, music.vectors.tolist())}
    with pytest.raises(StorageError, match="refusing to mix in 'contract-model'"):
        storage.put_routes(stored(), MODEL)  # it holds vectors again: no mixing


def test_a_store_whose_routes_hold_no_utterance_takes_another_model(storage: Storage) -> None:
    # Routes emptied of utterances keep no vector: as with no routes, the model record
    # is no one's (the memory back end asked whether routes were left, not vectors).
    storage.put_routes(stored(), MODEL)
    for route in ROUTES:
        storage.delete_utterances(route.name, route.utterances)
    small = ModelInfo("small-model", 4)
    music = StoredRoute(Route(name="music", utterances=["play jazz"]), unit(1, seed=3, dim=4))
    storage.put_routes([music], small)
    assert storage.model_info() == small


def test_replace_all_moves_the_store_to_another_model(storage: Storage) -> None:
    storage.put_routes(stored(), MODEL)
    items = [StoredRoute(ROUTES[0], unit(2, seed=7, dim=4))]
    storage.replace_all(items, ModelInfo("small-model", 4))
    assert storage.model_info() == ModelInfo("small-model", 4)
    assert content(storage) == {"billing": (ROUTES[0], unit(2, seed=7, dim=4).tolist())}


def test_a_bad_route_in_a_batch_writes_none_of_it(storage: Storage) -> None:
    storage.put_routes(stored()[:1], MODEL)
    before = content(storage)
    good = StoredRoute(Route(name="music", utterances=["play jazz"]), unit(1, seed=3))
    wrong_shape = StoredRoute(Route(name="news", utterances=["headlines"]), unit(2, seed=4))
    with pytest.raises(StorageError, match="expected vectors of shape"):
        storage.put_routes([good, wrong_shape], MODEL)
    bad_metadata = StoredRoute(
        Route(name="news", utterances=["headlines"], metadata={"k": "\ud800"}), unit(1, seed=4)
    )
    with pytest.raises(InvalidInputError):
        storage.put_routes([good, bad_metadata], MODEL)
    assert content(storage) == before


def test_state_documents(storage: Storage) -> None:
    doc = {"threshold": 0.42, "nested": {"list": [1, 2.5, "x", None, True]}}
    storage.set_state("policy", doc)
    assert storage.get_state("policy") == doc
    got = storage.get_state("policy")
    assert got is not None
    got["threshold"] = 0.9  # a copy: changing it changes nothing stored
    assert storage.get_state("policy") == doc
    storage.set_state("policy", None)
    assert storage.get_state("policy") is None


def test_only_a_store_with_a_change_feed_is_watchable(
    storage: Storage, request: pytest.FixtureRequest
) -> None:
    # The router follows a WatchableStorage (other replicas' changes, other processes'
    # commits to a SQLite file); the memory store is a plain one, read at start-up.
    assert isinstance(storage, Storage)
    expected = request.node.callspec.params["storage"] in ("postgres", "sqlite")
    assert isinstance(storage, WatchableStorage) is expected


def test_a_closed_store_refuses_reads_and_writes_by_name(storage: Storage) -> None:
    storage.put_routes(stored(), MODEL)
    storage.set_state("policy", {"threshold": 0.4})
    storage.close()
    if isinstance(storage, MemoryStorage):
        # Documented: nothing to release, so it stays usable.
        assert [s.route.name for s in storage.load()] == [r.name for r in ROUTES]
        return
    reads: dict[str, Callable[[], object]] = {
        "load": storage.load,
        "model_info": storage.model_info,
        "get_state": lambda: storage.get_state("policy"),
    }
    for read in reads.values():
        with pytest.raises(StorageError, match=r"store .+ is closed; cannot"):
            read()
    writes: dict[str, Callable[[], object]] = {
        "put_routes": lambda: storage.put_routes(stored([ROUTES[0]]), MODEL),
        "delete_route": lambda: storage.delete_route("billing"),
        "update_route": lambda: storage.update_route(ROUTES[1]),
        "set_state": lambda: storage.set_state("policy", None),
    }
    for write in writes.values():
        with pytest.raises(StorageError, match=r"store .+ is closed; cannot .*nothing was"):
            write()
    storage.close()  # closing twice is harmless
