"""The process's BLAS thread budget, shared by the router's queries and ``fit``.

A BLAS library built with its own threads keeps one thread count per process, so
threads that each set and restore it race (see :class:`BlasBudget`); every BLAS
limit in the package goes through :data:`BLAS_BUDGET` instead. How many threads a
product gets is :func:`synaptoroute._cpu.blas_threads`'s rule.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from ._fork import LEAF, hold_across_fork

__all__ = ["BLAS_BUDGET", "BlasBudget", "blas_limit"]


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
    A block asked ``at_most_found`` never raises a library above the count it had
    when the first block entered: the count an application set
    (``OPENBLAS_NUM_THREADS=1`` in each worker of a prefork server, an enclosing
    threadpoolctl limit) holds against the library's default rule.
    An OpenMP build keeps a count per calling thread: each block sets its own
    thread's and restores it.

    Fork-safe: a fork waits for the budget's lock (held only for the few calls that
    change a count, never around BLAS work), so a child process never inherits it
    held, and the child drops the blocks of the threads that did not come with it
    (restoring the count found first if none of its own is open).

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
        # thread id -> its blocks' counts (and whether each is capped at the count
        # found), nested
        self._held: dict[int, list[tuple[int, bool]]] = {}
        self._saved: dict[str, int] = {}  # each library's count before the first block
        # thread id -> its per-thread (OpenMP) libraries' counts before its first block
        self._own_found: dict[int, dict[str, int]] = {}
        self._set: dict[str, int] = {}  # what this budget last set, by library
        hold_across_fork(self, LEAF, in_child="_forked")

    def limit(
        self, threads: int, *, rescan: bool = False, at_most_found: bool = False
    ) -> _BlasBlock:
        """A ``with`` block in which BLAS runs at most ``threads`` threads (at least 1).

        ``rescan`` looks for BLAS libraries loaded since the last scan first (a fit,
        which may load SciPy's); a query reuses the last scan. ``at_most_found``:
        never more than the library had when the first block entered (a count
        chosen by a default rule, not asked for).
        """
        return _BlasBlock(self, max(1, int(threads)), rescan, at_most_found)

    def threads(self) -> dict[str, int]:
        """Each scanned library's thread count now (this thread's for an OpenMP
        build), by its file path."""
        with self._lock:
            libs = [*(self._libs or ()), *self._own]
            return {lib.filepath: lib.get_num_threads() for lib in libs}

    def _enter(self, threads: int, rescan: bool, capped: bool) -> list[tuple[Any, int]]:
        """Returns the per-thread libraries' counts to restore on leaving."""
        with self._lock:
            if self._libs is None or rescan:
                scanned = list(self._scan())
                self._libs = [lib for lib in scanned if not _per_thread(lib)]
                self._own = [lib for lib in scanned if _per_thread(lib)]
            me = threading.get_ident()
            stack = self._held.setdefault(me, [])
            stack.append((threads, capped))
            try:
                self._apply()
            except BaseException:  # the block is not entered: it must not stay counted
                self._leave()
                raise
            own = self._own
            # A capped block is held to the count this thread had before its first
            # block, not to an enclosing block's (a fit's one thread around its scoring).
            found = self._own_found.get(me)
            if found is None:  # read once per outermost block, not at each nested one
                found = self._own_found[me] = {lib.filepath: lib.get_num_threads() for lib in own}
        # OpenMP builds keep a count per calling thread: set here, for this block only.
        restore: list[tuple[Any, int]] = []
        try:
            for lib in own:
                current = lib.get_num_threads()
                restore.append((lib, current))
                base = found.setdefault(lib.filepath, current)  # one found by a rescan since
                lib.set_num_threads(min(threads, base) if capped else threads)
        except BaseException:  # not entered: nothing of it may stay set or counted
            try:
                for lib, count in reversed(restore):
                    with contextlib.suppress(Exception):  # the library that just failed
                        lib.set_num_threads(count)
            finally:
                self._exit()
            raise
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
            self._own_found.pop(me, None)
        self._settle()

    def _settle(self) -> None:
        # Under the lock: the count the open blocks want, or none open: the saved one.
        if self._held:
            self._apply()
            return
        saved, self._saved, self._set = self._saved, {}, {}
        for lib in self._libs or ():
            key = lib.filepath
            if key in saved and lib.get_num_threads() != saved[key]:
                _set_shared(lib, saved[key])

    def _forked(self) -> None:
        # In a child process, the lock held since the fork began: only the thread
        # that forked runs here, so the other threads' blocks will never leave.
        me = threading.get_ident()
        self._held = {me: self._held[me]} if me in self._held else {}
        self._own_found = {me: self._own_found[me]} if me in self._own_found else {}
        self._settle()

    def _apply(self) -> None:
        # Under the lock: each library runs the smallest count of the threads'
        # innermost blocks (a capped one at most the library's count found).
        innermost = [stack[-1] for stack in self._held.values()]
        for lib in self._libs or ():
            key = lib.filepath
            if key not in self._saved:  # first block in, or a library found since
                self._saved[key] = self._set[key] = lib.get_num_threads()
            found = self._saved[key]
            threads = min(min(n, found) if capped else n for n, capped in innermost)
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
    __slots__ = ("_budget", "_capped", "_rescan", "_restore", "_threads")

    def __init__(self, budget: BlasBudget, threads: int, rescan: bool, capped: bool) -> None:
        self._budget, self._threads, self._rescan = budget, threads, rescan
        self._capped = capped
        self._restore: list[tuple[Any, int]] = []

    def __enter__(self) -> None:
        self._restore = self._budget._enter(self._threads, self._rescan, self._capped)

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


def blas_limit(threads: int, *, rescan: bool = False, at_most_found: bool = False) -> _BlasBlock:
    """:meth:`BlasBudget.limit` of the process's budget (:data:`BLAS_BUDGET`)."""
    return BLAS_BUDGET.limit(threads, rescan=rescan, at_most_found=at_most_found)
