"""The default thread count (the container's CPU quota, read from fake cgroup files)
and the process's BLAS thread budget."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from synaptoroute import InvalidInputError, _cpu
from synaptoroute._cpu import (
    THREADS_ENV,
    BlasBudget,
    available_cpus,
    cgroup_cpu_limit,
    process_cpus,
)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


@pytest.fixture
def self_cgroup(tmp_path: Path) -> Path:
    """A /proc/self/cgroup naming the process's v2 cgroup as /kubepods/pod1/ctr."""
    path = tmp_path / "proc_self_cgroup"
    write(path, "0::/kubepods/pod1/ctr")
    return path


@pytest.fixture
def many_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host with 64 usable cores, so every quota below is the smaller number."""
    monkeypatch.setattr(_cpu, "_affinity_count", lambda: 64)


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("200000 100000", 2.0), ("150000 100000", 1.5), ("50000 100000", 0.5), ("max 100000", None)],
)
def test_cgroup_v2_quota(
    tmp_path: Path, self_cgroup: Path, cpu_max: str, expected: float | None
) -> None:
    root = tmp_path / "cgroup"
    write(root / "kubepods/pod1/ctr/cpu.max", cpu_max)
    assert cgroup_cpu_limit(root, self_cgroup) == expected


def test_cgroup_v2_limit_on_a_parent_applies(tmp_path: Path, self_cgroup: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "kubepods/pod1/ctr/cpu.max", "max 100000")
    write(root / "kubepods/pod1/cpu.max", "300000 100000")
    write(root / "kubepods/cpu.max", "800000 100000")
    assert cgroup_cpu_limit(root, self_cgroup) == 3.0


def test_cgroup_v2_at_the_root_of_a_container_namespace(tmp_path: Path) -> None:
    # Inside a container with its own cgroup namespace the process sees "0::/".
    root = tmp_path / "cgroup"
    write(root / "cpu.max", "400000 100000")
    proc = tmp_path / "proc_self_cgroup"
    write(proc, "0::/")
    assert cgroup_cpu_limit(root, proc) == 4.0


@pytest.mark.parametrize(
    ("quota", "expected"), [("250000", 2.5), ("-1", None), ("junk", None), ("0", None)]
)
def test_cgroup_v1_quota(tmp_path: Path, quota: str, expected: float | None) -> None:
    root = tmp_path / "cgroup"
    write(root / "cpu/cpu.cfs_quota_us", quota)
    write(root / "cpu/cpu.cfs_period_us", "100000")
    assert cgroup_cpu_limit(root, tmp_path / "no_such_file") == expected


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path / "empty", tmp_path / "no_such_file") is None


@pytest.mark.usefixtures("many_cores")
@pytest.mark.parametrize(("cpu_max", "expected"), [("150000 100000", 2), ("10000 100000", 1)])
def test_available_cpus_rounds_the_quota_up(
    tmp_path: Path, self_cgroup: Path, cpu_max: str, expected: int
) -> None:
    root = tmp_path / "cgroup"
    write(root / "kubepods/pod1/ctr/cpu.max", cpu_max)
    assert available_cpus({}, root, self_cgroup) == expected


@pytest.mark.usefixtures("many_cores")
def test_available_cpus_without_quota_is_the_affinity_count(tmp_path: Path) -> None:
    assert available_cpus({}, tmp_path / "empty", tmp_path / "none") == 64


def test_a_quota_above_the_affinity_count_changes_nothing(
    tmp_path: Path, self_cgroup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_cpu, "_affinity_count", lambda: 2)
    root = tmp_path / "cgroup"
    write(root / "kubepods/pod1/ctr/cpu.max", "800000 100000")
    assert available_cpus({}, root, self_cgroup) == 2


@pytest.mark.usefixtures("many_cores")
def test_the_environment_variable_wins(tmp_path: Path, self_cgroup: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "kubepods/pod1/ctr/cpu.max", "100000 100000")
    assert available_cpus({THREADS_ENV: "6"}, root, self_cgroup) == 6


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_environment_variable_is_refused(value: str) -> None:
    with pytest.raises(InvalidInputError, match=THREADS_ENV):
        available_cpus({THREADS_ENV: value})


def test_the_real_machine_gives_a_usable_count() -> None:
    cpus = available_cpus({})
    assert 1 <= cpus <= (os.cpu_count() or 1)


def test_the_index_and_blas_count_ignores_a_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Read once for the BLAS product, the int8/graph builds and fits: a query never
    # fails on the variable (the encoder refuses it instead).
    process_cpus.cache_clear()
    monkeypatch.setenv(THREADS_ENV, "zero")
    try:
        assert process_cpus() == available_cpus({})
    finally:
        process_cpus.cache_clear()


def test_the_encoder_defaults_to_available_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from synaptoroute import Encoder

    monkeypatch.setenv(THREADS_ENV, "3")
    assert Encoder().threads == 3  # the model is loaded lazily: nothing is read here
    assert Encoder(threads=1).threads == 1


def test_one_blas_rule_for_the_router_and_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    from synaptoroute._cpu import BLAS_PARALLEL_ROWS, blas_threads

    monkeypatch.setenv(THREADS_ENV, "6")
    process_cpus.cache_clear()
    try:
        assert blas_threads(BLAS_PARALLEL_ROWS - 1) == 1  # a second thread costs more
        assert blas_threads(BLAS_PARALLEL_ROWS) == 6  # the CPUs the process may use
        assert blas_threads(10, configured=3) == 3  # the router's setting wins
    finally:
        process_cpus.cache_clear()


def test_side_by_side_keeps_the_order_and_uses_threads_only_when_told() -> None:
    import threading

    from synaptoroute._cpu import side_by_side

    started = threading.Barrier(2, timeout=30)

    def both_running(item: int) -> tuple[int, str]:
        if item < 2:
            started.wait()  # only returns once two items run at the same time
        return item * item, threading.current_thread().name

    results = side_by_side(both_running, list(range(6)), workers=2)
    assert [r[0] for r in results] == [0, 1, 4, 9, 16, 25]
    assert threading.current_thread().name not in {r[1] for r in results}
    alone = side_by_side(lambda item: (item, threading.current_thread().name), [3, 1, 2], 1)
    assert alone == [(i, threading.current_thread().name) for i in (3, 1, 2)]


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


def test_a_query_runs_its_product_at_its_budget_and_restores_blas(
    two_blas_threads: BlasBudget, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real OpenBLAS, the router's own budget: during the scoring BLAS runs the one
    # thread blas_threads asks for; after it the count the process had.
    from synaptoroute import AdaptiveRouter, HashingEncoder, Route
    from synaptoroute.index import Snapshot

    seen: list[set[int]] = []
    real_score = Snapshot.score

    def score(self: Snapshot, *args: Any, **kwargs: Any) -> Any:
        seen.append(set(_cpu.BLAS_BUDGET.threads().values()))
        return real_score(self, *args, **kwargs)

    monkeypatch.setattr(Snapshot, "score", score)
    router = AdaptiveRouter(HashingEncoder(), blas_threads=1)
    router.add_route(Route(name="weather", utterances=["is it raining", "weather today"]))
    assert router.query("is it raining").name == "weather"
    assert seen == [{1}]
    assert set(_cpu.BLAS_BUDGET.threads().values()) == {2}


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
    assert set(_cpu.BLAS_BUDGET.threads().values()) == {2}
