"""Forked children never inherit a lock held by a thread that did not come along:
the order a fork takes the registered locks in, and a real router forked during a
route change and during an index compile (the model, SQLite-free in-memory store);
a router on the approximate graph forked while the graph is built, searched or read,
and every other registered lock (encoder, lexical index, cache, store, the testing
encoder's record)."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from forking import hold_until_the_fork, in_child, needs_fork, wait_for_the_fork
from waiting import LIMIT_S

from synaptoroute import (
    AdaptiveRouter,
    Encoder,
    HashingEncoder,
    Route,
    SQLiteStorage,
    StorageError,
    _fork,
)
from synaptoroute import encoder as encoder_module
from synaptoroute import forking as fork_api  # tests/forking.py is the helpers
from synaptoroute import index as index_module
from synaptoroute.testing import RecordingEncoder


class Owner:
    """An object with a lock that records the order in which a fork takes it."""

    def __init__(self, name: str, taken: list[str]) -> None:
        self.name, self.taken, self.children = name, taken, 0
        self._lock = threading.Lock()
        self._real = self._lock

    def in_child(self) -> None:
        assert self._real.locked()  # the hook runs holding the lock
        self.children += 1


class RecordingLock:
    def __init__(self, owner: Owner) -> None:
        self.owner = owner

    def acquire(self) -> bool:
        self.owner.taken.append(self.owner.name)
        return self.owner._real.acquire()

    def release(self) -> None:
        self.owner._real.release()


@needs_fork
def test_a_fork_takes_the_locks_outer_level_first_and_gives_them_back() -> None:
    taken: list[str] = []
    names = ("budget", "cache", "index", "router", "app")
    budget, cache, index, router, app = owners = [Owner(name, taken) for name in names]
    for owner in owners:
        owner._lock = RecordingLock(owner)  # type: ignore[assignment]
    # Registered innermost first, as imports would: the fork still goes outer first
    # (an integration's build lock, a router's, an index's, an integration's cache of
    # routers, then a leaf).
    _fork.hold_across_fork(budget, _fork.LEAF, in_child="in_child")
    _fork.hold_across_fork(cache, _fork.APP_CACHE)
    _fork.hold_across_fork(index, _fork.INDEX)
    _fork.hold_across_fork(router, _fork.ROUTER)
    _fork.hold_across_fork(app, _fork.APP)

    def child() -> None:
        assert budget.children == 1
        assert not any(owner._real.locked() for owner in owners)

    assert in_child(child) == 0
    mine = [name for name in taken if name in names]
    assert mine == ["app", "router", "index", "cache", "budget"]
    assert budget.children == 0  # the hook runs in the child only
    assert not any(owner._real.locked() for owner in owners)


class Failing(Owner):
    def in_child(self) -> None:
        raise RuntimeError("this reset failed")


@needs_fork
def test_a_child_hook_that_fails_still_gives_back_every_lock() -> None:
    taken: list[str] = []
    outer, failing = Owner("outer", taken), Failing("failing", taken)
    _fork.hold_across_fork(outer, _fork.ROUTER, in_child="in_child")
    _fork.hold_across_fork(failing, _fork.LEAF, in_child="in_child")

    def child() -> None:
        assert outer.children == 1  # the outer hook ran after the inner one failed
        assert not outer._lock.locked() and not failing._lock.locked()

    assert in_child(child) == 0


@needs_fork
def test_a_lock_a_fork_cannot_take_leaves_it_the_other_locks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A spy that replaced a router's lock (no acquire) made the fork's first step raise
    # there: every lock after it went untaken and its child hook unrun (a later test's
    # child used its parent's int8 copy).
    taken: list[str] = []
    broken, inner = Owner("broken", taken), Owner("inner", taken)
    _fork.hold_across_fork(broken, _fork.ROUTER)
    _fork.hold_across_fork(inner, _fork.LEAF, in_child="in_child")
    broken._lock = object()  # type: ignore[assignment]  # replaced after registration

    def child() -> None:
        assert inner.children == 1  # its hook ran, holding its lock
        assert not inner._real.locked()

    try:
        with caplog.at_level("ERROR", logger="synaptoroute.fork"):
            assert in_child(child) == 0
    finally:
        broken._lock = broken._real
    assert "a fork could not take Owner._lock; it takes the other locks" in caplog.text
    assert not inner._real.locked()  # given back in the parent too


class Contended:
    """A lock that reports a thread having to wait for it (stands in for the registry's)."""

    def __init__(self, waiting: threading.Event) -> None:
        self._lock, self._waiting = threading.Lock(), waiting

    def __enter__(self) -> Contended:
        if not self._lock.acquire(blocking=False):
            self._waiting.set()
            self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_a_registration_while_a_fork_copies_the_registry_loses_the_fork_no_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A router, encoder or cache made in another thread registers its lock while the
    # fork reads the registry: iterating the WeakKeyDictionary raised "dictionary
    # changed size during iteration", the hook's error was only logged, and the child
    # was forked without the rest of that level's locks or any later level's.
    taken: list[str] = []
    first, second, leaf, newcomer = (Owner(n, taken) for n in ("1", "2", "leaf", "new"))
    landed = threading.Event()  # the registration is done, or waits for the copy

    def register() -> None:
        try:
            _fork.hold_across_fork(newcomer, _fork.ROUTER)
        finally:
            landed.set()

    registering = threading.Thread(target=register)

    class Interleaved(weakref.WeakKeyDictionary[Any, tuple[str, "str | None"]]):
        """A level whose copy lets the other thread register once it is under way."""

        def items(self) -> Iterator[tuple[Any, tuple[str, str | None]]]:
            entries = super().items()
            yield next(entries)
            registering.start()
            assert landed.wait(60)
            yield from entries

    registry: dict[int, weakref.WeakKeyDictionary[Any, tuple[str, str | None]]] = {
        level: weakref.WeakKeyDictionary() for level in _fork._LEVELS
    }
    registry[_fork.ROUTER] = Interleaved()
    monkeypatch.setattr(_fork, "_HELD", registry)
    monkeypatch.setattr(_fork, "_REGISTRY", Contended(landed), raising=False)
    for owner, level in ((first, _fork.ROUTER), (second, _fork.ROUTER), (leaf, _fork.LEAF)):
        _fork.hold_across_fork(owner, level)
    try:
        _fork._before()
        assert first._lock.locked() and second._lock.locked() and leaf._lock.locked()
        assert not newcomer._lock.locked()  # made during the fork: not the fork's to take
    finally:
        _fork._after_in_parent()
        registering.join(60)
    assert not any(o._lock.locked() for o in (first, second, leaf, newcomer))
    assert newcomer in registry[_fork.ROUTER]  # it waited for the copy, then registered


@needs_fork
def test_a_child_forked_while_another_thread_registers_can_register() -> None:
    # The registration takes the registry lock; a child forked while another thread
    # held it would inherit it held, and its first router or encoder would wait for good.
    inside, let_go = threading.Event(), threading.Event()

    class Stalls(Owner):
        def __hash__(self) -> int:  # hashed inside the registry lock, as it is stored
            inside.set()
            let_go.wait(60)
            return id(self)

    stalls = Stalls("stalls", [])
    registering = threading.Thread(target=_fork.hold_across_fork, args=(stalls, _fork.LEAF))

    class StartsARegistration:
        """A registered lock: once the fork has read the registry and takes this one,
        another thread registers and is halfway through when the process forks."""

        def acquire(self) -> bool:
            if registering.ident is None:  # the first fork only
                registering.start()
            assert inside.wait(60)
            return True

        def release(self) -> None:
            pass

    starter = Owner("starter", [])
    starter._lock = StartsARegistration()  # type: ignore[assignment]
    _fork.hold_across_fork(starter, _fork.LEAF)

    def child() -> None:
        _fork.hold_across_fork(Owner("made in the child", []), _fork.LEAF)

    try:
        assert in_child(child, timeout=30) == 0
    finally:
        let_go.set()
        registering.join(60)
    assert stalls in _fork._HELD[_fork.LEAF]


@pytest.fixture
def router(encoder: Any) -> Any:
    router = AdaptiveRouter(encoder)
    router.add_route(Route(name="weather", utterances=["is it raining", "weather today"]))
    router.add_route(Route(name="music", utterances=["play a song", "next track"]))
    yield router
    router.close()


class WaitsForTheFork:
    """The real encoder, whose encoding of ``text`` waits until a fork has begun: a
    route change is then in flight, under the router's lock, when another thread forks."""

    def __init__(self, encoder: Any, text: str) -> None:
        self._encoder, self._text = encoder, text
        self.waiting = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def encode(self, texts: Any, *args: Any, **kwargs: Any) -> Any:
        if self._text in list(texts):
            self.waiting.set()
            wait_for_the_fork()
        return self._encoder.encode(texts, *args, **kwargs)


@needs_fork
def test_a_child_forked_during_a_route_change_gets_it_whole_and_changes_routes(
    encoder: Any,
) -> None:
    # Before the fork waited for it, the child inherited the router's lock held and
    # its first route change waited for good (30 of 30 tries by hand).
    slow = WaitsForTheFork(encoder, "hello there")
    router = AdaptiveRouter(slow)  # type: ignore[arg-type]
    router.add_route(Route(name="weather", utterances=["is it raining", "weather today"]))
    adding = threading.Thread(
        target=router.add_route,
        args=(Route(name="greeting", utterances=["hello there", "good morning"]),),
    )
    adding.start()
    assert slow.waiting.wait(60)

    def child() -> None:
        assert "greeting" in router.route_names  # the change in flight, finished
        assert router.query("hi, good morning to you").name == "greeting"
        router.add_route(Route(name="music", utterances=["play a song", "next track"]))
        assert router.query("put on some music").name == "music"

    try:
        assert in_child(child) == 0
    finally:
        adding.join(60)
    assert "greeting" in router.route_names and "music" not in router.route_names
    router.close()


@needs_fork
def test_a_child_forked_during_an_index_compile_queries(router: Any) -> None:
    thread = hold_until_the_fork(router._index._lock)

    def child() -> None:
        router.add_route(Route(name="greeting", utterances=["hello there", "good morning"]))
        assert router.query("hi, good morning to you").name == "greeting"
        assert router.query("will it rain").name == "weather"

    try:
        assert in_child(child) == 0
    finally:
        thread.join(60)
    assert router.query("play some music").name == "music"


@needs_fork
def test_a_child_neither_uses_nor_frees_the_parents_int8_copy() -> None:
    # From 20,000 rows the int8 copy's onnxruntime session has worker threads, which do
    # not come along into a child: the child scored with it, and its first re-quantise
    # (or a compaction) freed it there, which never returned (onnxruntime#31961).
    router = AdaptiveRouter(HashingEncoder(dimension=64))
    router.add_routes(
        [Route(name=f"r{i}", utterances=[f"r{i} text {j}" for j in range(600)]) for i in range(40)]
    )
    assert router.query("r3 text 5").name == "r3"
    index = router._index
    inherited = index._int8
    assert inherited is not None  # built by the compile of that query

    def child() -> None:
        assert router.query("r3 text 5").name == "r3"
        assert index._int8 is not inherited and any(kept is inherited for kept in _fork._KEPT)
        router.add_utterances("r0", [f"r0 more {j}" for j in range(5000)])
        assert router.query("r0 more 7").name == "r0"
        assert router.query("r3 text 5").name == "r3"

    assert in_child(child) == 0
    assert router.query("r3 text 5").name == "r3" and index._int8 is inherited


def test_a_child_makes_its_int8_copy_in_the_background_not_in_its_first_query() -> None:
    # A worker forked after wait_for_index() built the copy inside its first query,
    # which waited for it (0.5 s at 100,000 rows).
    router = AdaptiveRouter(HashingEncoder(dimension=64), index="exact")
    router.add_routes(
        [Route(name=f"r{i}", utterances=[f"r{i} text {j}" for j in range(600)]) for i in range(40)]
    )
    assert router.query("r3 text 5").name == "r3"
    assert router.wait_for_index(LIMIT_S)
    index = router._index
    assert index._int8 is not None and index.stats.int8_builds == 1
    release = threading.Event()

    def child() -> None:
        real = index_module._build_int8

        def held(*args: Any) -> Any:  # the child's build waits until the query is answered
            assert release.wait(LIMIT_S)
            return real(*args)

        index_module._build_int8 = held
        try:
            assert router.query("r3 text 5").name == "r3"  # scored exactly meanwhile
            assert index._int8 is None and index.stats.int8_builds == 1
            release.set()
            assert router.wait_for_index(LIMIT_S)
            assert index._int8 is not None and index.stats.int8_builds == 2
            assert router.query("r3 text 5").name == "r3"
        finally:
            index_module._build_int8 = real

    assert in_child(child) == 0


needs_usearch = pytest.mark.skipif(
    importlib.util.find_spec("usearch") is None, reason="the ann extra is not installed"
)

TOPICS = {
    "weather": ["is it raining", "weather today", "will it be sunny", "how cold is it"],
    "music": ["play a song", "next track", "turn the music up", "put on some jazz"],
    "greeting": ["hello there", "good morning", "hi how are you", "hey nice to see you"],
}


@pytest.fixture
def graph_router(encoder: Any, tmp_path: Path) -> Any:
    """A router whose every query goes through the approximate graph, saved to a cache
    file."""
    router = AdaptiveRouter(encoder, index="ann", ann_cache=tmp_path / "graph.usearch")
    router.add_routes([Route(name=name, utterances=texts) for name, texts in TOPICS.items()])
    yield router
    router.close()


def _graph_answers(router: Any) -> None:
    # The child's graph holds every row and answers as the exact scan does.
    index = router._index
    assert index.wait_for_ann(60)
    assert index._ann is not None and index._ann.covered == len(index)
    queries = ["will it rain tomorrow", "skip to the next song", "good morning to you"]
    vectors = router.encoder.encode(queries)
    snapshot = index.snapshot()
    answered = index.stats.ann_queries
    by_graph = snapshot.score(vectors, 1)
    assert index.stats.ann_queries > answered  # the graph answered, not the exact scan
    exact = snapshot.score(vectors, 1, exact=True)
    assert [int(s.route_ids[0]) for s in by_graph] == [int(s.route_ids[0]) for s in exact]
    assert [router.query(q).name for q in queries] == ["weather", "music", "greeting"]


@needs_fork
@needs_usearch
def test_a_child_forked_during_a_graph_build_builds_its_own(
    graph_router: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before the child restarted it, a build in flight at the fork never ended there:
    # the child's index thought it still ran and scored every query exactly for good.
    import synaptoroute.ann as ann

    index = graph_router._index
    assert index.wait_for_ann(60)  # the graph of the routes above, saved to the cache file
    real_build = ann.AnnGraph.build.__func__  # type: ignore[attr-defined]
    started, forked = threading.Event(), threading.Event()

    def build_after_the_fork(cls: Any, *args: Any, **kwargs: Any) -> Any:
        if not started.is_set():  # the parent's build: in flight until the child is done
            started.set()
            forked.wait(120)
        return real_build(cls, *args, **kwargs)

    monkeypatch.setattr(ann.AnnGraph, "build", classmethod(build_after_the_fork))
    graph_router.add_route(Route(name="travel", utterances=["book a flight", "a hotel in rome"]))
    index._ann = None  # as if the graph was dropped (a compaction): the next compile builds
    index._snapshot = None
    graph_router.query("book me a flight")
    assert started.wait(60)

    builds, loads = index.stats.ann_builds, index.stats.ann_cache_loads

    def child() -> None:
        assert graph_router.query("book me a flight to paris").name == "travel"
        _graph_answers(graph_router)
        # From the cache file the parent saved (a prefix of these rows, fed the rest),
        # not built again.
        assert index.stats.ann_cache_loads == loads + 1
        assert index.stats.ann_builds == builds

    try:
        assert in_child(child) == 0
    finally:
        forked.set()
    assert index.wait_for_ann(60)
    assert index.stats.ann_builds == builds + 1  # the parent's build went on


@needs_fork
@needs_usearch
def test_a_child_forked_during_a_graph_search_or_read_searches(graph_router: Any) -> None:
    index = graph_router._index
    assert index.wait_for_ann(60)
    graph = index._ann
    reading, forked = threading.Event(), threading.Event()

    def read_until_the_child_is_done() -> None:  # a query in flight in another thread
        with index.reading():
            reading.set()
            forked.wait(120)

    reader = threading.Thread(target=read_until_the_child_is_done)
    reader.start()
    assert reading.wait(60)
    searcher = hold_until_the_fork(graph._lock)

    def child() -> None:
        assert graph.gate.readers == 0  # the other thread's read did not come along
        graph_router.add_route(Route(name="travel", utterances=["book a flight"]))
        _graph_answers(graph_router)

    try:
        assert in_child(child) == 0
    finally:
        forked.set()
        searcher.join(60)
        reader.join(60)
    assert graph.gate.readers == 0


def _held_locks(router: Any, store: Any) -> dict[str, tuple[Any, Callable[[], Any]]]:
    # Each registered lock, and a call in the child that takes it.
    index = router._index
    return {
        "encoder": (router.encoder._lock, router.encoder.load),
        "lexical": (router._lexical._lock, lambda: router._lexical.view(index.snapshot())),
        "cache": (router.cache._lock, lambda: router.query("is it raining")),
        "workers": (router._workers_lock, lambda: asyncio.run(router.aquery("play a song"))),
        "store": (store._lock, lambda: router.add_route(Route(name="x", utterances=["a b"]))),
        # The process's shared encoder, made under a module lock.
        "default": (encoder_module._default_lock, encoder_module.default_encoder),
    }


@needs_fork
@pytest.mark.parametrize("which", ["encoder", "lexical", "cache", "workers", "store", "default"])
def test_a_fork_waits_for_every_registered_lock(encoder: Any, tmp_path: Path, which: str) -> None:
    store = SQLiteStorage(tmp_path / "routes.db")
    router = AdaptiveRouter(encoder, store)
    router.add_routes([Route(name=name, utterances=texts) for name, texts in TOPICS.items()])
    lock, call = _held_locks(router, store)[which]
    holder = hold_until_the_fork(lock)

    def child() -> None:
        assert lock.acquire(timeout=30)  # free in the child: the fork waited for it
        lock.release()
        call()
        assert router.query("turn the music up").name == "music"

    try:
        assert in_child(child) == 0
    finally:
        holder.join(60)
    router.close()


@needs_fork
@pytest.mark.model
def test_a_child_never_frees_what_an_owner_collected_there_inherited() -> None:
    # The parent's sessions and connections were held by their owners: a router
    # dropped before the fork (a reference cycle, not yet collected) was collected in
    # the child, and destroying its encoder's onnxruntime session there hung the
    # child (onnxruntime#31961) in whatever allocation ran that collection.
    gc.collect()
    gc.disable()  # the dropped router stays garbage, uncollected, until the child
    try:
        dropped = Encoder()
        router = AdaptiveRouter(dropped)
        router.add_route(Route(name="a", utterances=["hello there"]))
        # A cycle of its own: garbage only a collection frees, whether or not the
        # router happens to hold one.
        cycle: list[object] = [router]
        cycle.append(cycle)
        session = weakref.ref(dropped._session)
        del dropped, router, cycle

        def child() -> None:
            gc.collect()  # takes the router and its encoder
            assert session() is not None  # the parent's session was not freed here

        assert in_child(child) == 0
    finally:
        gc.enable()


@needs_fork
def test_a_forked_child_loads_its_own_model_session(encoder: Any) -> None:
    # An ONNX Runtime session's thread pool is the parent's threads: the child must not
    # run it (a run can wait for them for good) nor destroy it (onnxruntime#31961).
    encoder.load()
    parent = encoder._session

    def child() -> None:
        assert not encoder.loaded  # the parent's session is set aside
        # and kept, never destroyed (beside what other objects of the suite set aside)
        assert any(isinstance(k, tuple) and k[0] is parent for k in _fork._KEPT)
        assert encoder.encode(["turn the music up"]).shape == (1, encoder.dimension)
        assert encoder._session is not None and encoder._session is not parent

    assert in_child(child) == 0
    assert encoder._session is parent and encoder.loaded  # the parent's is untouched


@needs_fork
@pytest.mark.model
def test_a_forked_worker_pinned_to_fewer_cpus_loads_with_its_own_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The count made in the parent (a preloaded gunicorn app) ran a worker pinned to
    # one CPU (its post_fork hook) on the parent's threads.
    from synaptoroute._cpu import available_cpus

    if available_cpus({}) < 2:  # the container's quota counted too, as Encoder does
        pytest.skip("needs at least two CPUs")
    monkeypatch.delenv("SYNAPTOROUTE_THREADS", raising=False)
    counted, given = Encoder(), Encoder(threads=2)
    counted.load()
    assert counted.threads >= 2

    def child() -> None:
        os.sched_setaffinity(0, {next(iter(os.sched_getaffinity(0)))})
        assert counted.encode(["hello"]).shape == (1, counted.dimension)
        assert counted.threads == 1
        given.load()
        assert given.threads == 2  # given: kept

    assert in_child(child) == 0
    assert counted.threads >= 2  # the parent's is untouched


@needs_fork
def test_a_fork_waits_for_a_recording_encoders_lock(encoder: Any) -> None:
    recording = RecordingEncoder(encoder)
    router = AdaptiveRouter(recording)
    router.add_routes([Route(name=name, utterances=texts) for name, texts in TOPICS.items()])
    holder = hold_until_the_fork(recording._lock)

    def child() -> None:
        assert router.query("turn the music up").name == "music"  # records the call
        assert recording.calls[-1] == ["turn the music up"]

    try:
        assert in_child(child) == 0
    finally:
        holder.join(60)


class Dispatcher:
    """An application's own object that queries a router under its own lock."""

    def __init__(self, router: AdaptiveRouter) -> None:
        self.router = router
        self._lock = threading.Lock()
        self.resets = 0
        fork_api.hold_across_fork(self, fork_api.APP, in_child="_forked")

    def _forked(self) -> None:
        self.resets += 1

    def route(self, text: str) -> str | None:
        with self._lock:
            return self.router.query(text).name


@needs_fork
def test_an_applications_lock_registered_with_forking_is_free_in_the_child(
    encoder: Any,
) -> None:
    router = AdaptiveRouter(encoder)
    router.add_routes([Route(name=name, utterances=texts) for name, texts in TOPICS.items()])
    dispatcher = Dispatcher(router)
    holder = hold_until_the_fork(dispatcher._lock)

    def child() -> None:
        assert dispatcher._lock.acquire(timeout=30)  # held in the parent by another thread
        dispatcher._lock.release()
        assert dispatcher.route("turn the music up") == "music"
        assert dispatcher.resets == 1  # the child hook ran, once

    try:
        assert in_child(child) == 0
    finally:
        holder.join(60)
    assert dispatcher.resets == 0  # not in the parent


def test_forking_refuses_what_a_fork_could_not_take() -> None:
    owner = Dispatcher.__new__(Dispatcher)
    owner._lock = threading.Lock()
    with pytest.raises(ValueError, match=r"APP or forking\.APP_CACHE"):
        fork_api.hold_across_fork(owner, _fork.INDEX)  # synaptoroute's own level
    with pytest.raises(TypeError, match="is not a lock"):
        fork_api.hold_across_fork(owner, fork_api.APP, lock="router")
    with pytest.raises(TypeError, match="is not a method"):
        fork_api.hold_across_fork(owner, fork_api.APP, in_child="resets")
    assert all(owner not in held for held in _fork._HELD.values())  # nothing registered


@needs_fork
def test_a_forked_child_opens_its_own_sqlite_connection(encoder: Any, tmp_path: Path) -> None:
    # SQLite's locks and its record of them are per process: a connection must not
    # cross a fork. The child writes through its own, and closing its router does
    # not touch the parent's.
    store = SQLiteStorage(tmp_path / "routes.db")
    router = AdaptiveRouter(encoder, store)
    router.add_routes([Route(name=name, utterances=texts) for name, texts in TOPICS.items()])
    inherited = store._db

    def child() -> None:
        assert store._db is not inherited and any(k is inherited for k in _fork._KEPT)
        router.add_route(Route(name="travel", utterances=["book a flight", "a hotel in rome"]))
        router.close()

    assert in_child(child) == 0
    assert store._db is inherited
    assert "travel" in {stored.route.name for stored in store.load()}  # the child's write
    router.add_route(Route(name="cooking", utterances=["a recipe for soup"]))
    assert len(SQLiteStorage(tmp_path / "routes.db").load()) == 5
    router.close()


@needs_fork
def test_a_child_forked_after_the_store_file_was_deleted_makes_no_empty_store(
    encoder: Any, tmp_path: Path
) -> None:
    # The child reopens the store by its path; a file deleted since the parent opened
    # it must not come back empty for the child to write into (and to leave behind
    # for the next process to open as an empty store).
    path = tmp_path / "routes.db"
    store = SQLiteStorage(path)
    router = AdaptiveRouter(encoder, store)
    router.add_routes([Route(name=name, utterances=texts) for name, texts in TOPICS.items()])
    for name in ("routes.db", "routes.db-wal", "routes.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)

    def child() -> None:
        assert router.query("turn the music up").name == "music"  # routes are in memory
        with pytest.raises(StorageError, match="cannot be opened in this forked process"):
            router.add_route(Route(name="travel", utterances=["book a flight"]))
        assert "travel" not in router
        with pytest.raises(StorageError, match="cannot be opened in this forked process"):
            store.load()  # a read says why too, not "Cannot operate on a closed database"
        assert not path.exists()

    assert in_child(child) == 0
    assert not path.exists()
    router.close()


@needs_fork
def test_a_child_forked_after_a_chdir_writes_to_the_parents_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A store opened by a relative path was reopened in the child against the new
    # working directory: a missing file made the child's writes fail, an existing one
    # took them silently (another database).
    monkeypatch.chdir(tmp_path)
    store = SQLiteStorage("routes.db")
    router = AdaptiveRouter(HashingEncoder(dimension=64), store)
    router.add_routes([Route(name="billing", utterances=["I need a refund"])])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    SQLiteStorage("routes.db").close()  # the decoy: a store of the same name here

    def child() -> None:
        router.add_route(Route(name="travel", utterances=["book a flight"]))

    assert in_child(child) == 0
    names = {item.route.name for item in SQLiteStorage(tmp_path / "routes.db").load()}
    assert names == {"billing", "travel"}
    assert SQLiteStorage(elsewhere / "routes.db").load() == []
    router.close()


class InheritedConnection:
    """A connection whose socket a child shares with its parent; ``close`` sends a
    goodbye on it, as libpq's terminate message does."""

    def __init__(self, sock: Any) -> None:
        self.sock, self.closed = sock, False

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def close(self) -> None:
        self.closed = True
        os.write(self.fileno(), b"goodbye")


def test_disowning_a_connection_sends_nothing_to_the_shared_socket() -> None:
    from synaptoroute.storage.follower import disown

    ours, server = socket.socketpair()
    parents = os.dup(ours.fileno())  # the parent's descriptor of the same socket
    conn = InheritedConnection(ours)
    disown(conn)
    assert conn.closed
    server.setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing arrived, and the socket is still open
        server.recv(16)
    os.write(parents, b"still here")
    assert os.read(server.fileno(), 16) == b"still here"
    os.close(parents)
    ours.close()
    server.close()


def test_a_connection_that_cannot_be_disowned_is_kept_open(monkeypatch: pytest.MonkeyPatch) -> None:
    from synaptoroute.storage import follower

    class NoDescriptorLeft:
        devnull, open, close, O_RDWR = os.devnull, os.open, os.close, os.O_RDWR

        @staticmethod
        def dup2(*_: Any) -> None:
            raise OSError("no descriptor left")

    ours, server = socket.socketpair()
    conn = InheritedConnection(ours)
    monkeypatch.setattr(follower, "os", NoDescriptorLeft)
    monkeypatch.setattr(follower, "_KEPT", [])
    follower.disown(conn)
    assert not conn.closed
    kept = follower._KEPT
    assert kept == [conn]
    ours.close()
    server.close()


@needs_fork
def test_a_fork_inside_an_embedding_function_does_not_wait_for_itself() -> None:
    # The function runs under the encoder's lock, which a fork takes: a function that
    # forks (a process pool) must not make the fork wait for its own thread.
    from synaptoroute import CallableEncoder

    children: list[int] = []

    def embed(texts: list[str]) -> Any:
        children.append(in_child(lambda: None))
        return [[1.0, 0.0, 0.0]] * len(texts)

    encoder = CallableEncoder(embed, model_id="forks-inside")
    asking = threading.Thread(target=lambda: encoder.dimension, daemon=True)
    asking.start()
    asking.join(60)
    assert not asking.is_alive()
    assert encoder.dimension == 3
    assert children == [0]


_NESTED_ENCODERS = """
import os, sys, threading, time
from synaptoroute import CallableEncoder

inner = CallableEncoder(lambda t: [[1.0, 0.0]] * len(t), model_id="inner")  # registered first
entered, gate, forked = threading.Event(), threading.Event(), threading.Event()

def outer_embed(texts):
    entered.set()
    gate.wait(30)
    return inner.encode(texts)  # finds inner's dimension, under inner's lock

outer = CallableEncoder(outer_embed, model_id="outer")
asking = threading.Thread(target=lambda: outer.dimension, daemon=True)
asking.start()
entered.wait(30)

def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    forked.set()

forking = threading.Thread(target=fork, daemon=True)
forking.start()
deadline = time.monotonic() + 30
while not forked.is_set() and time.monotonic() < deadline:
    if not inner._lock.acquire(blocking=False):
        break  # the fork holds inner's lock and takes outer's next
    inner._lock.release()
    time.sleep(0.001)
gate.set()
asking.join(30)
forking.join(30)
print("ok" if forked.is_set() and not asking.is_alive() else "deadlock", flush=True)
os._exit(0)
"""


@needs_fork
def test_a_fork_while_one_encoder_probes_through_another_does_not_deadlock() -> None:
    # A CallableEncoder over another encoder held its lock while its function ran:
    # a fork took the inner encoder's lock (registered first), then waited for the
    # outer one's, held by a thread that waited for the inner one's. Run apart, so a
    # deadlock ends with its process.
    result = subprocess.run(
        [sys.executable, "-c", _NESTED_ENCODERS],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout.strip() == "ok", result.stderr


_EXITS = r"""
import atexit, gc, logging, os, signal, sys
from synaptoroute import AdaptiveRouter, Encoder, HashingEncoder, Route

marks, session = sys.argv[1], sys.argv[2]
logging.basicConfig(filename=os.path.join(marks, "log.txt"), level=logging.INFO)
atexit.register(lambda: open(os.path.join(marks, f"parent-handler-{os.getpid()}"), "a").write("x"))
if session == "model":  # the encoder's session, loaded before the fork
    router = AdaptiveRouter(Encoder())
    router.add_route(Route(name="billing", utterances=["I need a refund"]))
elif session == "import":  # onnxruntime imported, no session ever made
    import onnxruntime  # noqa: F401

    router = AdaptiveRouter(HashingEncoder(dimension=64))
    router.add_route(Route(name="r3", utterances=["r3 text 5"]))
else:  # the int8 copy's session (a hashing encoder runs no onnxruntime)
    router = AdaptiveRouter(HashingEncoder(dimension=64))
    router.add_routes(
        [Route(name=f"r{i}", utterances=[f"r{i} text {j}" for j in range(200)]) for i in range(25)]
    )
    router.query("r3 text 5")  # a compile builds the copy
    assert router._index.wait_for_int8(60) and router._index.stats.int8_builds >= 1
    assert "onnxruntime" in sys.modules
    if session == "none":  # below the int8 size again: no session, onnxruntime loaded
        for i in range(5, 12):
            router.delete_route(f"r{i}")
        router.query("r3 text 5")
        assert router._index._int8 is None
        gc.collect()  # the copy's session is freed: its threads are gone
first = router.query_top_k("r3 text 5", 1)[0].candidate
for how in ("exit 0", "exit 3", "builtin 4", "raise 1", "return 0"):
    pid = os.fork()
    if pid == 0:
        signal.alarm(60)  # a hang ends as -14: the bound of a hang, not a speed
        atexit.register(
            lambda: open(os.path.join(marks, f"child-handler-{os.getpid()}"), "a").write("x")
        )
        assert router.query_top_k("r3 text 5", 1)[0].candidate == first
        logging.getLogger("child").info("child %s", how)
        if how == "raise 1":
            raise RuntimeError("an uncaught exception")
        if how == "builtin 4":
            exit(4)
        if how in ("exit 0", "exit 3"):
            sys.exit(int(how.split()[1]))
        break  # return 0: the end of the script
    _, status = os.waitpid(pid, 0)
    print(how, os.waitstatus_to_exitcode(status), pid, flush=True)
"""


@needs_fork
@pytest.mark.model
@pytest.mark.parametrize("session", ["model", "int8", "none", "import"])
def test_a_child_of_a_process_that_loaded_onnxruntime_exits_as_it_should(
    tmp_path: Path, session: str
) -> None:
    # onnxruntime's exit handlers (and freeing a session the parent's threads waited
    # on) wait for good where those threads do not exist, or abort: a gunicorn worker
    # of a preloaded app (it ends with sys.exit) hung until killed. The child now ends
    # with the status and the cleanup (atexit handlers, logging) it would have had.
    done = subprocess.run(
        [sys.executable, "-c", _EXITS, str(tmp_path), session],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = [line.rsplit(" ", 2) for line in done.stdout.splitlines()]
    statuses = {how: int(status) for how, status, _ in lines}
    expected = {"exit 0": 0, "exit 3": 3, "builtin 4": 4, "raise 1": 1, "return 0": 0}
    assert statuses == expected, done.stdout + done.stderr
    for _, _, pid in lines:  # each handler ran once: the child's and the inherited one
        assert (tmp_path / f"child-handler-{pid}").read_text() == "x"
        assert (tmp_path / f"parent-handler-{pid}").read_text() == "x"
    logged = (tmp_path / "log.txt").read_text()
    assert all(f"child {how}" in logged for how in statuses)
    assert "an uncaught exception" in done.stderr  # told as Python tells it


@needs_fork
def test_a_child_forked_while_a_thread_computes_a_cached_property_uses_it() -> None:
    # Before Python 3.12 functools.cached_property holds one lock per property, for
    # every instance, while it computes: a child forked while a parent thread computed
    # a snapshot's live rows (a query with a k-NN head) hung at its first use of it.
    from synaptoroute import _fork
    from synaptoroute.lexical import LexicalView

    inside, release = threading.Event(), threading.Event()

    class Holder:
        @_fork.cached_property
        def value(self) -> int:
            if self.slow:
                inside.set()
                release.wait(LIMIT_S)
            return 7

        def __init__(self, slow: bool) -> None:
            self.slow = slow

    thread = threading.Thread(target=lambda: Holder(slow=True).value)
    thread.start()
    try:
        assert inside.wait(LIMIT_S)

        def child() -> None:
            assert Holder(slow=False).value == 7

        assert in_child(child, timeout=30) == 0
    finally:
        release.set()
        thread.join(LIMIT_S)
    holder = Holder(slow=False)
    assert holder.value == 7 and holder.__dict__["value"] == 7  # cached as before
    # Every cached property of the index and the lexical view is this one.
    import functools

    for cls in (index_module.Snapshot, index_module.RouteLayout, LexicalView):
        kinds = {type(v) for v in vars(cls).values()}
        assert functools.cached_property not in kinds, cls
        assert _fork.cached_property in kinds, cls
