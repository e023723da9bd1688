"""How many CPUs this process may really use: the default for encoder threads.

``os.cpu_count()`` counts the host's cores. In a container limited to, say, two CPUs
on a 64-core host, ONNX Runtime would start 64 threads that the kernel throttles in
turn, which is slower than two. The limit is read from, in order:

1. ``SYNAPTOROUTE_THREADS`` (a positive integer), for an operator who knows better;
2. the cgroup CPU quota (v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us`` /
   ``cpu.cfs_period_us``), rounded up;
3. the CPU affinity mask (``taskset``, cpusets), else ``os.cpu_count()``.

The smaller of the quota and the affinity count wins.

It also holds the process's BLAS thread budget (:class:`BlasBudget`), which the
router's queries and ``fit`` share.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from .exceptions import InvalidInputError

_T = TypeVar("_T")
_R = TypeVar("_R")

__all__ = [
    "BLAS_BUDGET",
    "BLAS_PARALLEL_ROWS",
    "THREADS_ENV",
    "BlasBudget",
    "available_cpus",
    "blas_limit",
    "blas_threads",
    "cgroup_cpu_limit",
    "process_cpus",
    "side_by_side",
]

THREADS_ENV = "SYNAPTOROUTE_THREADS"
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


def _blas_libraries() -> list[Any]:
    """threadpoolctl's controllers of the BLAS libraries loaded now (a ~1.5 ms scan)."""
    from threadpoolctl import ThreadpoolController

    return list(ThreadpoolController().select(user_api="blas").lib_controllers)


class BlasBudget:
    """One process-wide BLAS thread count shared by every block that sets one.

    A BLAS library built with its own threads (OpenBLAS's pthreads build, numpy's)
    keeps one thread count per process, so threads that each set and restore it
    (threadpoolctl's ``limit``) race: when the blocks of two threads overlap without
    nesting, the one that leaves last restores the count the other had set, and the
    process keeps it after both are gone (one thread instead of two with
    threadpoolctl 3.8.0 and numpy's OpenBLAS). Here the blocks in flight are
    counted: the first one in saves the libraries' counts, the last one out restores
    them, and in between each thread's innermost block sets that thread's count (as
    nested threadpoolctl limits do: a fit's big product gets more threads than the
    fit around it) and the library runs the smallest count over the threads (blocks
    in flight in two threads already keep two cores busy, so more BLAS threads would
    only oversubscribe them). A count is set only when it changes, and a block costs
    about 60% of a threadpoolctl ``limit`` (``benchmarks/core_latency.py``).
    An OpenMP build keeps a count per calling thread: each block sets its own
    thread's and restores it.

    Args:
        scan: returns the BLAS libraries' controllers (objects with ``filepath``,
            ``get_num_threads`` and ``set_num_threads``, as threadpoolctl's); default
            threadpoolctl's scan of the libraries loaded in this process. Called on
            the first block and on each one entered with ``rescan=True``.
    """

    def __init__(self, scan: Callable[[], Sequence[Any]] = _blas_libraries) -> None:
        self._scan = scan
        self._lock = threading.Lock()
        self._libs: list[Any] | None = None  # libraries with one count per process
        self._own: list[Any] = []  # libraries with one count per thread (OpenMP)
        self._held: dict[int, list[int]] = {}  # thread id -> its blocks' counts, nested
        self._saved: dict[str, int] = {}  # each library's count before the first block
        self._set: dict[str, int] = {}  # what this budget last set, by library

    def limit(self, threads: int, *, rescan: bool = False) -> _BlasBlock:
        """A ``with`` block in which BLAS runs at most ``threads`` threads (at least 1).

        ``rescan`` looks for BLAS libraries loaded since the last scan first (a fit,
        which may load SciPy's); a query reuses the last scan.
        """
        return _BlasBlock(self, max(1, int(threads)), rescan)

    def threads(self) -> dict[str, int]:
        """Each scanned library's thread count now (this thread's for an OpenMP
        build), by its file path."""
        with self._lock:
            libs = [*(self._libs or ()), *self._own]
            return {lib.filepath: lib.get_num_threads() for lib in libs}

    def _enter(self, threads: int, rescan: bool) -> list[tuple[Any, int]]:
        """Returns the per-thread libraries' counts to restore on leaving."""
        with self._lock:
            if self._libs is None or rescan:
                scanned = list(self._scan())
                self._libs = [lib for lib in scanned if not _per_thread(lib)]
                self._own = [lib for lib in scanned if _per_thread(lib)]
            stack = self._held.setdefault(threading.get_ident(), [])
            stack.append(threads)
            try:
                self._apply(self._wanted())
            except BaseException:  # the block is not entered: it must not stay counted
                self._leave()
                raise
            own = self._own
        # OpenMP builds keep a count per calling thread: set here, for this block only.
        restore = [(lib, lib.get_num_threads()) for lib in own]
        for lib, _ in restore:
            lib.set_num_threads(threads)
        return restore

    def _exit(self) -> None:
        with self._lock:
            self._leave()

    def _leave(self) -> None:
        # Under the lock: drop this thread's innermost block; the last one out restores.
        me = threading.get_ident()
        stack = self._held[me]
        stack.pop()
        if not stack:
            del self._held[me]
        if self._held:
            self._apply(self._wanted())
            return
        saved, self._saved, self._set = self._saved, {}, {}
        for lib in self._libs or ():
            key = lib.filepath
            if key in saved and lib.get_num_threads() != saved[key]:
                _set_shared(lib, saved[key])

    def _wanted(self) -> int:
        return min(stack[-1] for stack in self._held.values())

    def _apply(self, threads: int) -> None:
        for lib in self._libs or ():
            key = lib.filepath
            if key not in self._saved:  # first block in, or a library found since
                self._saved[key] = self._set[key] = lib.get_num_threads()
            if self._set[key] != threads:
                _set_shared(lib, threads)
                self._set[key] = threads


def _per_thread(lib: Any) -> bool:
    # An OpenMP-threaded BLAS limits the calling thread only (threadpoolctl's docs).
    return getattr(lib, "threading_layer", None) == "openmp"


def _set_shared(lib: Any, threads: int) -> None:
    # threadpoolctl >= 3.6 lets only one "controlling" thread set a process-wide
    # OpenBLAS count (others silently do nothing); the budget's lock already orders
    # every change, so it calls the library directly where threadpoolctl has that.
    getattr(lib, "_real_set_num_threads", lib.set_num_threads)(threads)


class _BlasBlock:
    # A plain class, not @contextmanager: this runs around every query's product.
    __slots__ = ("_budget", "_rescan", "_restore", "_threads")

    def __init__(self, budget: BlasBudget, threads: int, rescan: bool) -> None:
        self._budget, self._threads, self._rescan = budget, threads, rescan
        self._restore: list[tuple[Any, int]] = []

    def __enter__(self) -> None:
        self._restore = self._budget._enter(self._threads, self._rescan)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for lib, threads in reversed(self._restore):
            lib.set_num_threads(threads)
        self._budget._exit()


#: The process's budget: the router's queries and fit share it.
BLAS_BUDGET = BlasBudget()


def blas_limit(threads: int, *, rescan: bool = False) -> _BlasBlock:
    """:meth:`BlasBudget.limit` of the process's budget (:data:`BLAS_BUDGET`)."""
    return BLAS_BUDGET.limit(threads, rescan=rescan)


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


def _own_cgroup_v2(root: Path, self_cgroup: Path) -> Path:
    """The process's own cgroup v2 folder (``/proc/self/cgroup``'s ``0::/path`` line)."""
    text = _read(self_cgroup) or ""
    for line in text.splitlines():
        if line.startswith("0::"):
            own = root / line[3:].lstrip("/")
            if own.is_dir():
                return own
    return root


def cgroup_cpu_limit(
    root: Path | str = "/sys/fs/cgroup", self_cgroup: Path | str = "/proc/self/cgroup"
) -> float | None:
    """The CPU quota of this process's cgroup, in CPUs, or ``None`` where there is none.

    Looks for cgroup v2 ``cpu.max`` in the process's own cgroup and then its ancestors
    up to ``root`` (a limit set on a parent applies), then for cgroup v1
    ``cpu/cpu.cfs_quota_us`` and ``cpu/cpu.cfs_period_us`` under ``root``.

    Args:
        root: where the cgroup filesystem is mounted (a test passes a folder of fake files).
        self_cgroup: the file naming this process's cgroups.

    Returns:
        The smallest quota found as a number of CPUs (may be fractional), or ``None``.
    """
    base = Path(root)
    limits: list[float] = []
    folder = _own_cgroup_v2(base, Path(self_cgroup))
    # Bounded walk: each step goes one folder up, and stops at the mount point.
    while True:
        text = _read(folder / "cpu.max")
        if text:
            parts = text.split()
            if len(parts) == 2:
                limit = _quota(parts[0], parts[1])
                if limit is not None:
                    limits.append(limit)
        if folder == base or base not in folder.parents:
            break
        folder = folder.parent
    if not limits:
        for v1 in (base / "cpu", base / "cpu,cpuacct", base):
            quota, period = _read(v1 / "cpu.cfs_quota_us"), _read(v1 / "cpu.cfs_period_us")
            if quota is not None and period is not None:
                limit = _quota(quota, period)
                if limit is not None:
                    limits.append(limit)
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
        try:
            threads = int(forced)
        except ValueError:
            threads = 0
        if threads < 1:
            msg = f"{THREADS_ENV} must be a positive integer, got {forced!r}"
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


def side_by_side(fn: Callable[[_T], _R], items: Sequence[_T], workers: int) -> list[_R]:
    """``fn`` of each item, in the items' order, on up to ``workers`` threads (in the
    calling thread below two); items start in the order given. For work that releases
    the GIL (numpy, BLAS, ONNX Runtime), so threads give the CPUs something to do."""
    workers = min(workers, len(items))
    if workers < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))
