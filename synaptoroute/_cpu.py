"""How many CPUs this process may really use: the default for encoder threads.

``os.cpu_count()`` counts the host's cores. In a container limited to, say, two CPUs
on a 64-core host, ONNX Runtime would start 64 threads that the kernel throttles in
turn, which is slower than two. The limit is read from, in order:

1. ``SYNAPTOROUTE_THREADS`` (a positive integer), for an operator who knows better;
2. the cgroup CPU quota (v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us`` /
   ``cpu.cfs_period_us``), rounded up;
3. the CPU affinity mask (``taskset``, cpusets), else ``os.cpu_count()``.

The smaller of the quota and the affinity count wins.

The process's BLAS thread budget, which holds BLAS at the counts this module chooses,
is :mod:`synaptoroute._blas`.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from .exceptions import InvalidInputError

_T = TypeVar("_T")
_R = TypeVar("_R")

__all__ = [
    "BLAS_PARALLEL_ROWS",
    "MAX_THREADS",
    "THREADS_ENV",
    "available_cpus",
    "blas_threads",
    "cgroup_cpu_limit",
    "process_cpus",
    "side_by_side",
]

THREADS_ENV = "SYNAPTOROUTE_THREADS"
#: The most threads one may ask of ONNX Runtime: far past any machine's CPUs. A count
#: past a C int failed only when the model loaded, in onnxruntime's own words.
MAX_THREADS = 65_535
#: Below this many matrix rows one BLAS thread is faster than waking a second one
#: (and much faster on a busy machine).
BLAS_PARALLEL_ROWS = 20_000


def blas_threads(rows: int, configured: int | None = None) -> int:
    """BLAS threads for a product over ``rows`` rows: the one rule of the router and of fit.

    ``configured`` (the router's ``blas_threads``) wins when set; otherwise one thread
    under :data:`BLAS_PARALLEL_ROWS`, and above it the CPUs the process may use.
    """
    if configured is not None:
        return configured
    return 1 if rows < BLAS_PARALLEL_ROWS else process_cpus()


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota(quota: str, period: str) -> float | None:
    """CPUs allowed by a quota and a period, or ``None`` for no limit or a bad value."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None  # "max" (v2) or garbage
    if q <= 0 or p <= 0:  # v1 writes -1 for no limit
        return None
    return q / p


def _own_path(self_cgroup: Path, v1: bool) -> str:
    """The process's cgroup path in ``/proc/self/cgroup``: the v2 line (``0::/path``),
    or the v1 line of the hierarchy holding the ``cpu`` controller
    (``4:cpu,cpuacct:/path``); ``""`` where there is none."""
    for line in (_read(self_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        v2_line = hierarchy == "0" and not controllers
        if ("cpu" in controllers.split(",")) if v1 else v2_line:
            return path.strip().lstrip("/")
    return ""


def _limits_up(mount: Path, own: str, read: Callable[[Path], float | None]) -> list[float]:
    """The limits ``read`` finds in the process's own cgroup folder under ``mount`` and
    in each folder above it up to ``mount`` (a limit set on a parent applies). Inside a
    container the own path may not exist under the mount (it shows the container's
    own cgroup at its root): the walk then starts at the root."""
    folder = mount / own if own and (mount / own).is_dir() else mount
    limits: list[float] = []
    # Bounded walk: each step goes one folder up, and stops at the mount point.
    while True:
        limit = read(folder)
        if limit is not None:
            limits.append(limit)
        if folder == mount or mount not in folder.parents:
            break
        folder = folder.parent
    return limits


def _v2_limit(folder: Path) -> float | None:
    parts = (_read(folder / "cpu.max") or "").split()
    return _quota(parts[0], parts[1]) if len(parts) == 2 else None


def _v1_limit(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    return None if quota is None or period is None else _quota(quota, period)


def cgroup_cpu_limit(
    root: Path | str = "/sys/fs/cgroup", self_cgroup: Path | str = "/proc/self/cgroup"
) -> float | None:
    """The CPU quota of this process's cgroup, in CPUs, or ``None`` where there is none.

    Looks for cgroup v2 ``cpu.max`` in the process's own cgroup and then its ancestors
    up to ``root`` (a limit set on a parent applies), then for cgroup v1
    ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` the same way under the ``cpu``
    controller's mount (``root/cpu``, ``root/cpu,cpuacct`` or ``root``).

    Args:
        root: where the cgroup filesystem is mounted (a test passes a folder of fake files).
        self_cgroup: the file naming this process's cgroups.

    Returns:
        The smallest quota found as a number of CPUs (may be fractional), or ``None``.
    """
    base, own = Path(root), Path(self_cgroup)
    limits = _limits_up(base, _own_path(own, v1=False), _v2_limit)
    if not limits:
        for mount in (base / "cpu", base / "cpu,cpuacct", base):
            if _read(mount / "cpu.cfs_period_us") is not None:
                limits = _limits_up(mount, _own_path(own, v1=True), _v1_limit)
                break
    return min(limits) if limits else None


def _affinity_count() -> int:
    sched = getattr(os, "sched_getaffinity", None)
    if sched is not None:
        try:
            return max(1, len(sched(0)))
        except OSError:
            pass
    return os.cpu_count() or 1


def available_cpus(
    env: Mapping[str, str] | None = None,
    cgroup_root: Path | str = "/sys/fs/cgroup",
    self_cgroup: Path | str = "/proc/self/cgroup",
) -> int:
    """How many CPUs to give ONNX Runtime by default: the container's share, not the host's.

    Args:
        env: the environment to read ``SYNAPTOROUTE_THREADS`` from (default ``os.environ``).
        cgroup_root: the cgroup mount point (tests pass a folder of fake files).
        self_cgroup: the file naming this process's cgroups.

    Returns:
        ``SYNAPTOROUTE_THREADS`` if set, else the smaller of the cgroup CPU quota (rounded
        up, at least 1) and the CPUs this process may run on.

    Raises:
        InvalidInputError: ``SYNAPTOROUTE_THREADS`` is set but is not a positive integer
            (a ``ValueError``).
    """
    environ = os.environ if env is None else env
    forced = environ.get(THREADS_ENV, "").strip()
    if forced:
        # ASCII digits only: int() also takes "4_0" (40) and other scripts' digits.
        threads = int(forced) if forced.isascii() and forced.isdigit() else 0
        if not 1 <= threads <= MAX_THREADS:
            msg = f"{THREADS_ENV} must be a whole number from 1 to {MAX_THREADS}, got {forced!r}"
            raise InvalidInputError(msg)
        return threads
    cpus = _affinity_count()
    quota = cgroup_cpu_limit(cgroup_root, self_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus


@functools.lru_cache(maxsize=1)
def process_cpus() -> int:
    """:func:`available_cpus` of this process, read once: the thread count of the BLAS
    product over a large index, of the int8 and approximate-graph builds and of a fit.

    A bad ``SYNAPTOROUTE_THREADS`` is ignored here (the encoder refuses it), so a
    query never fails on it.
    """
    try:
        return available_cpus()
    except InvalidInputError:
        return available_cpus({})


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    # A forked worker (gunicorn, Celery prefork, a pool) may be pinned to fewer CPUs
    # than its parent, which read the count first: each process reads its own.
    os.register_at_fork(after_in_child=process_cpus.cache_clear)


def side_by_side(fn: Callable[[_T], _R], items: Sequence[_T], workers: int) -> list[_R]:
    """``fn`` of each item, in the items' order, on up to ``workers`` threads (in the
    calling thread below two); items start in the order given. For work that releases
    the GIL (numpy, BLAS, ONNX Runtime), so threads give the CPUs something to do."""
    workers = min(workers, len(items))
    if workers < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))
