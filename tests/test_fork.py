"""Forked children never inherit a lock held by a thread that did not come along:
the order a fork takes the registered locks in, and a real router forked during a
route change and during an index compile (the model, SQLite-free in-memory store)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from forking import hold_until_the_fork, in_child, needs_fork, wait_for_the_fork

from synaptoroute import AdaptiveRouter, Route, _fork


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
    budget, index, router = (Owner(name, taken) for name in ("budget", "index", "router"))
    for owner in (budget, index, router):
        owner._lock = RecordingLock(owner)  # type: ignore[assignment]
    # Registered innermost first, as imports would: the fork still goes outer first.
    _fork.hold_across_fork(budget, _fork.BUDGET, in_child="in_child")
    _fork.hold_across_fork(index, _fork.INDEX)
    _fork.hold_across_fork(router, _fork.ROUTER)

    def child() -> None:
        assert budget.children == 1
        assert not any(owner._real.locked() for owner in (budget, index, router))

    assert in_child(child) == 0
    mine = [name for name in taken if name in {"router", "index", "budget"}]
    assert mine == ["router", "index", "budget"]
    assert budget.children == 0  # the hook runs in the child only
    assert not any(owner._real.locked() for owner in (budget, index, router))


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
