"""The default thread count (the container's CPU quota, read from fake cgroup files)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from synaptoroute import InvalidInputError, _cpu
from synaptoroute._cpu import (
    THREADS_ENV,
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


def test_cgroup_v1_limit_on_the_processs_own_cgroup_and_its_parents(tmp_path: Path) -> None:
    # A v1 host (a systemd slice, a container without its own cgroup namespace): the
    # quota sits on the process's own cgroup, not on the mount's root, which has none.
    root = tmp_path / "cgroup"
    mount = root / "cpu,cpuacct"
    for folder in (mount, mount / "system.slice"):
        write(folder / "cpu.cfs_quota_us", "-1")
        write(folder / "cpu.cfs_period_us", "100000")
    write(mount / "system.slice/app.service/cpu.cfs_quota_us", "150000")
    write(mount / "system.slice/app.service/cpu.cfs_period_us", "100000")
    proc = tmp_path / "proc_self_cgroup"
    write(proc, "5:memory:/system.slice/app.service\n4:cpu,cpuacct:/system.slice/app.service")
    assert cgroup_cpu_limit(root, proc) == 1.5
    # A limit on a parent applies, the smaller one wins.
    write(mount / "system.slice/cpu.cfs_quota_us", "100000")
    assert cgroup_cpu_limit(root, proc) == 1.0
    # A container shows its own cgroup at the mount's root, and /proc/self/cgroup a
    # host path that does not exist under it: the root's quota applies.
    container = tmp_path / "container"
    write(container / "cpu/cpu.cfs_quota_us", "200000")
    write(container / "cpu/cpu.cfs_period_us", "100000")
    write(proc, "4:cpu,cpuacct:/docker/0123abcd")
    assert cgroup_cpu_limit(container, proc) == 2.0


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


# int() took "4_0" as 40 and other scripts' digits; a count past a C int failed only
# when the model loaded, in onnxruntime's words.
@pytest.mark.parametrize("value", ["0", "-2", "two", "4_0", "\u0663", "+3", "99999999999", "65536"])
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


def test_a_forked_child_counts_its_own_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    # Read once per process: a worker forked from a parent that had read it, then
    # pinned to one CPU, kept the parent's count for its BLAS products and builds.
    # Two CPUs by count, the container's quota included (a --cpus=1 container on a
    # many-core host has two in its affinity and counts one).
    if not hasattr(os, "fork") or available_cpus({}) < 2:
        pytest.skip("needs fork and at least two CPUs")
    monkeypatch.delenv(THREADS_ENV, raising=False)
    process_cpus.cache_clear()
    assert process_cpus() >= 2
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's cleanup
        try:
            os.sched_setaffinity(0, {next(iter(os.sched_getaffinity(0)))})
            os.write(write, str(process_cpus()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    assert child == "1"
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
