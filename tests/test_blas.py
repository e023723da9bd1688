"""The process's BLAS thread budget: fake libraries for each rule, the real OpenBLAS
for the router's queries, and forked children."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from forking import hold_until_the_fork, in_child, needs_fork

from synaptoroute import _blas
from synaptoroute._blas import BlasBudget


class FakeBlas:
    """A BLAS library's thread count, as threadpoolctl's controllers expose it."""

    def __init__(self, filepath: str, threads: int) -> None:
        self.filepath, self.count, self.sets = filepath, threads, 0

    def get_num_threads(self) -> int:
        return self.count

    def set_num_threads(self, threads: int) -> None:
        self.count = threads
        self.sets += 1


class BlockInThread:
    """A ``with`` block held open by its own thread: ``enter()`` and ``leave()`` return
    once that thread has done them, so tests order blocks of several threads."""

    def __init__(self, block: AbstractContextManager[object]) -> None:
        self._block = block
        self._go = {step: threading.Event() for step in ("enter", "leave")}
        self._done = {step: threading.Event() for step in ("enter", "leave")}
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        self._go["enter"].wait(60)
        with self._block:
            self._done["enter"].set()
            self._go["leave"].wait(60)
        self._done["leave"].set()

    def _step(self, step: str) -> None:
        self._go[step].set()
        assert self._done[step].wait(60)

    def enter(self) -> None:
        self._step("enter")

    def leave(self) -> None:
        self._step("leave")
        self._thread.join(60)


def test_blocks_overlapping_in_two_threads_restore_the_count_found_first() -> None:
    # threadpoolctl's limit, entered in thread A then B and left by A then B, leaves
    # the process at the count B found (A's) for good; the budget restores the first.
    lib = FakeBlas("openblas", 4)
    budget = BlasBudget(lambda: [lib])
    a, b = BlockInThread(budget.limit(1)), BlockInThread(budget.limit(2))
    seen = []
    for step in (a.enter, b.enter, a.leave, b.leave):
        step()
        seen.append(lib.count)
    assert seen == [1, 1, 2, 4]  # both in: the smaller; B alone: its own; none: 4


def test_nested_blocks_in_one_thread_take_the_innermost_count() -> None:
    # A fit runs at one thread and gives its big scoring product all the CPUs.
    lib = FakeBlas("openblas", 4)
    budget = BlasBudget(lambda: [lib])
    with budget.limit(1):
        assert lib.count == 1
        with budget.limit(3):
            assert lib.count == 3
            other = BlockInThread(budget.limit(2))  # a query served meanwhile
            other.enter()
            assert lib.count == 2
            other.leave()
            assert lib.count == 3
        assert lib.count == 1
    assert lib.count == 4


def test_a_default_rule_never_raises_the_count_the_process_had() -> None:
    # OPENBLAS_NUM_THREADS=1 in each prefork worker (or an enclosing threadpoolctl
    # limit): the router's default rule raised it to every CPU for large products.
    lib, per_thread = FakeBlas("openblas", 1), FakeBlas("omp", 1)
    per_thread.threading_layer = "openmp"  # type: ignore[attr-defined]
    budget = BlasBudget(lambda: [lib, per_thread])
    with budget.limit(2, at_most_found=True):
        assert (lib.count, per_thread.count) == (1, 1)
        other = BlockInThread(budget.limit(3, at_most_found=True))
        other.enter()
        assert lib.count == 1
        other.leave()
    with budget.limit(2):  # asked for (router.blas_threads): given
        assert (lib.count, per_thread.count) == (2, 2)
    assert (lib.count, per_thread.count) == (1, 1)
    # Capped at the count found before the thread's first block, not at an enclosing
    # block's: a fit at one thread gives its scoring product every CPU it had.
    wide_omp = FakeBlas("omp", 4)
    wide_omp.threading_layer = "openmp"  # type: ignore[attr-defined]
    budget = BlasBudget(lambda: [wide_omp])
    with budget.limit(1, at_most_found=True):
        with budget.limit(2, at_most_found=True):
            assert wide_omp.count == 2
        assert wide_omp.count == 1
    assert wide_omp.count == 4
    wide = FakeBlas("openblas", 4)
    budget = BlasBudget(lambda: [wide])
    with budget.limit(2, at_most_found=True):  # lowering is still the rule's to do
        assert wide.count == 2
    assert wide.count == 4


def test_a_block_whose_per_thread_count_cannot_be_set_is_not_entered() -> None:
    # The per-thread libraries were set after the block was counted: a library that
    # raised left the block counted for good, and the shared library at its count.
    class Failing(FakeBlas):
        threading_layer = "openmp"

        def set_num_threads(self, threads: int) -> None:
            raise RuntimeError("cannot set")

    lib = FakeBlas("openblas", 4)
    budget = BlasBudget(lambda: [lib, Failing("omp", 4)])
    with pytest.raises(RuntimeError, match="cannot set"), budget.limit(1):
        pass
    assert lib.count == 4 and not budget._held and not budget._own_found


def test_the_count_is_set_only_when_it_changes_and_restored_after_an_error() -> None:
    lib = FakeBlas("openblas", 1)
    budget = BlasBudget(lambda: [lib])
    for _ in range(3):
        with budget.limit(1), budget.limit(1):
            pass
    assert lib.sets == 0  # already at one thread: no library call at all
    with pytest.raises(RuntimeError), budget.limit(2):
        assert lib.count == 2
        raise RuntimeError
    assert (lib.count, lib.sets) == (1, 2)
    with budget.limit(0):  # at least one thread
        assert lib.count == 1


def test_a_block_whose_limit_fails_is_not_left_counted() -> None:
    class Failing(FakeBlas):
        fail = True

        def set_num_threads(self, threads: int) -> None:
            if self.fail:
                self.fail = False
                raise OSError("the library refused")
            super().set_num_threads(threads)

    lib = Failing("openblas", 4)
    budget = BlasBudget(lambda: [lib])
    with pytest.raises(OSError, match="refused"), budget.limit(1):
        pass
    with budget.limit(2):
        assert lib.count == 2  # not the failed block's 1, which would be the smaller
    assert lib.count == 4


def test_a_rescan_finds_libraries_loaded_since_and_restores_them_too() -> None:
    numpy_blas, scipy_blas = FakeBlas("numpy", 2), FakeBlas("scipy", 3)
    loaded = [numpy_blas]
    budget = BlasBudget(lambda: list(loaded))
    with budget.limit(1):
        loaded.append(scipy_blas)  # a fit imports SciPy
        with budget.limit(1):  # a query: the last scan
            assert scipy_blas.count == 3
        with budget.limit(1, rescan=True):  # a fit's block
            assert (numpy_blas.count, scipy_blas.count) == (1, 1)
    assert (numpy_blas.count, scipy_blas.count) == (2, 3)


class FakeOpenMPBlas(FakeBlas):
    """An OpenMP build: each calling thread has its own count."""

    threading_layer = "openmp"

    def __init__(self, filepath: str, threads: int) -> None:
        super().__init__(filepath, threads)
        self._local = threading.local()

    def get_num_threads(self) -> int:
        return getattr(self._local, "count", self.count)

    def set_num_threads(self, threads: int) -> None:
        self._local.count = threads
        self.sets += 1


def test_an_openmp_blas_is_limited_in_each_blocks_own_thread() -> None:
    lib = FakeOpenMPBlas("openblas-openmp", 4)
    budget = BlasBudget(lambda: [lib])
    other = BlockInThread(budget.limit(2))
    other.enter()
    with budget.limit(1):
        assert lib.get_num_threads() == 1  # this thread's, not the smaller of the two
        with budget.limit(3):
            assert lib.get_num_threads() == 3
        assert lib.get_num_threads() == 1
    assert lib.get_num_threads() == 4
    other.leave()


@pytest.fixture
def two_blas_threads() -> Iterator[BlasBudget]:
    """The process's real BLAS at two threads, and a budget over it (skipped where
    the library cannot hold two)."""
    from threadpoolctl import threadpool_limits

    budget = BlasBudget()
    with threadpool_limits(limits=2, user_api="blas"):
        with budget.limit(2):
            counts = set(budget.threads().values())
        if counts != {2}:
            pytest.skip(f"BLAS here cannot hold two threads: {counts}")
        yield budget


def test_the_real_blas_is_restored_after_overlapping_blocks(two_blas_threads: BlasBudget) -> None:
    from threadpoolctl import threadpool_info

    budget = two_blas_threads
    a, b = BlockInThread(budget.limit(1)), BlockInThread(budget.limit(1))
    a.enter()
    b.enter()
    assert set(budget.threads().values()) == {1}
    a.leave()
    b.leave()
    assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == {2}


def _blas_counts_while_scoring(monkeypatch: pytest.MonkeyPatch) -> list[set[int]]:
    """The budget's BLAS counts seen at each scoring of the index, appended as it runs."""
    from synaptoroute.index import Snapshot

    seen: list[set[int]] = []
    real_score = Snapshot.score

    def score(self: Snapshot, *args: Any, **kwargs: Any) -> Any:
        seen.append(set(_blas.BLAS_BUDGET.threads().values()))
        return real_score(self, *args, **kwargs)

    monkeypatch.setattr(Snapshot, "score", score)
    return seen


def test_a_query_runs_its_product_at_its_budget_and_restores_blas(
    two_blas_threads: BlasBudget, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real OpenBLAS, the router's own budget: during the scoring BLAS runs the one
    # thread blas_threads asks for; after it the count the process had.
    from synaptoroute import AdaptiveRouter, HashingEncoder, Route

    seen = _blas_counts_while_scoring(monkeypatch)
    router = AdaptiveRouter(HashingEncoder(), blas_threads=1)
    router.add_route(Route(name="weather", utterances=["is it raining", "weather today"]))
    assert router.query("is it raining").name == "weather"
    assert seen == [{1}]
    assert set(_blas.BLAS_BUDGET.threads().values()) == {2}


def test_a_query_by_the_default_rule_keeps_a_limit_the_application_set(
    two_blas_threads: BlasBudget, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past BLAS_PARALLEL_ROWS the rule asks for every CPU: under the application's
    # own limit of one thread (OPENBLAS_NUM_THREADS=1, threadpoolctl) the product
    # ran two.
    from threadpoolctl import threadpool_limits

    from synaptoroute import AdaptiveRouter, HashingEncoder, Route, _cpu

    seen = _blas_counts_while_scoring(monkeypatch)
    monkeypatch.setattr(_cpu, "BLAS_PARALLEL_ROWS", 1)  # every product "large"
    monkeypatch.setattr(_cpu, "process_cpus", lambda: 2)
    router = AdaptiveRouter(HashingEncoder())
    router.add_route(Route(name="weather", utterances=["is it raining", "weather today"]))
    assert router.query("is it raining").name == "weather"  # the rule's two threads
    with threadpool_limits(limits=1, user_api="blas"):
        assert router.query("weather today").name == "weather"
    assert seen == [{2}, {1}]


def test_queries_from_many_threads_leave_blas_as_they_found_it(
    two_blas_threads: BlasBudget,
) -> None:
    # Below the int8 copy's rows every query takes a limit: four threads querying at
    # once overlap their limits in every order the scheduler picks.
    from synaptoroute import AdaptiveRouter, HashingEncoder, Route

    router = AdaptiveRouter(HashingEncoder(), blas_threads=1)
    router.add_route(Route(name="weather", utterances=["is it raining", "weather today"]))
    router.add_route(Route(name="music", utterances=["play a song", "next track"]))
    start = threading.Barrier(4, timeout=60)

    def ask(i: int) -> list[str | None]:
        start.wait()
        return [router.query(f"is it raining {i} {j}").name for j in range(200)]

    answers: list[list[str | None]] = []
    threads = [threading.Thread(target=lambda i=i: answers.append(ask(i))) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert [set(names) for names in answers] == [{"weather"}] * 4
    assert set(_blas.BLAS_BUDGET.threads().values()) == {2}


@needs_fork
def test_a_child_drops_the_blocks_of_threads_it_did_not_inherit() -> None:
    # Forked while another thread's block is open: that thread does not exist in the
    # child, so its block would hold the child's count at 1 for good.
    lib = FakeBlas("openblas", 4)
    budget = BlasBudget(lambda: [lib])
    other = BlockInThread(budget.limit(1))
    other.enter()
    assert lib.count == 1

    def child() -> None:
        assert lib.count == 4  # the count found first, restored at the fork
        with budget.limit(2):
            assert lib.count == 2
        assert lib.count == 4

    assert in_child(child) == 0
    assert lib.count == 1  # the parent's block is still open
    other.leave()
    assert lib.count == 4


@needs_fork
def test_a_fork_waits_for_a_thread_holding_the_budgets_lock() -> None:
    # A thread in the middle of a budget call when another forks: without the fork
    # handler the child inherits the lock held, and its next block hangs for good.
    lib = FakeBlas("openblas", 4)
    budget = BlasBudget(lambda: [lib])
    thread = hold_until_the_fork(budget._lock)  # in the middle of a budget call

    def child() -> None:
        with budget.limit(2):
            assert lib.count == 2
        assert lib.count == 4

    try:
        assert in_child(child) == 0
    finally:
        thread.join(60)
    with budget.limit(1):  # and the parent's lock was given back
        assert lib.count == 1
    assert lib.count == 4


@needs_fork
def test_a_router_forked_while_another_thread_queries_routes_in_the_child(
    encoder: Any, two_blas_threads: BlasBudget
) -> None:
    # Prefork servers (gunicorn --preload, Celery) fork a process whose router was
    # built, and may be in use, before the fork: the real model and the real OpenBLAS.
    from synaptoroute import AdaptiveRouter, Route

    router = AdaptiveRouter(encoder, blas_threads=1)
    router.add_route(Route(name="weather", utterances=["is it raining", "weather today"]))
    router.add_route(Route(name="music", utterances=["play a song", "next track"]))
    assert router.query("will it rain tomorrow").name == "weather"
    other = BlockInThread(_blas.blas_limit(1))  # a query's product, open in another thread
    other.enter()

    def child() -> None:
        assert set(_blas.BLAS_BUDGET.threads().values()) == {2}
        assert router.query("put on some music").name == "music"
        router.add_route(Route(name="greeting", utterances=["hello there", "good morning"]))
        assert router.query("hi, good morning to you").name == "greeting"
        assert set(_blas.BLAS_BUDGET.threads().values()) == {2}

        async def batched() -> str | None:  # threads do not survive a fork: start here
            await router.start()
            try:
                return (await router.aquery("skip to the next track")).name
            finally:
                await router.stop()

        assert asyncio.run(batched()) == "music"

    try:
        assert in_child(child) == 0
    finally:
        other.leave()
    assert set(_blas.BLAS_BUDGET.threads().values()) == {2}
    router.close()
