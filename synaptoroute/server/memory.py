"""Giving freed memory back to the operating system after a burst.

CPython returns freed objects to the C allocator, but glibc keeps freed pages inside
its heaps (and in the per-thread arenas of the worker threads) unless they happen to
sit at a heap's top. Its mmap threshold also rises after the first large buffer is
freed, so later large buffers (request bodies, parsed JSON) come from the heap too.
After a flood of large bodies or connections the service's RSS therefore stayed up
for good, though nothing held the memory any more. ``malloc_trim(0)`` gives every
whole free page back; it costs well under a millisecond when there is little to give.

:class:`MemoryTrimmer` calls it from a thread when the RSS has grown by
``min_growth`` since the last trim, checking every ``interval`` seconds. Where there
is no glibc (musl, macOS, Windows) or no ``/proc``, it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache

__all__ = ["MemoryTrimmer", "malloc_trim", "rss_bytes"]

log = logging.getLogger("synaptoroute.server")

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@cache
def _libc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        func = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    func.argtypes = [ctypes.c_size_t]
    func.restype = ctypes.c_int
    return func


def malloc_trim() -> bool:
    """Give the C allocator's free pages back to the OS; ``False`` where it cannot."""
    trim = _libc_trim()
    if trim is None:
        return False
    trim(0)  # ctypes releases the GIL for the call
    return True


def rss_bytes() -> int | None:
    """The process's resident set size, or ``None`` without ``/proc``."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class MemoryTrimmer:
    """Trims the C heap when the RSS has grown since the last trim.

    Args:
        interval: seconds between two checks (``0`` disables the trimmer).
        min_growth: bytes the RSS must have grown by since the last trim.
    """

    def __init__(self, interval: float, min_growth: int = 8 * 1024 * 1024) -> None:
        self.interval = interval
        self.min_growth = min_growth
        self.trims = 0
        self._baseline = rss_bytes()
        self._task: asyncio.Task[None] | None = None
        # Its own thread: the loop's default executor may be shut down before this
        # task is cancelled when a loop closes without the service's shutdown.
        self._executor: ThreadPoolExecutor | None = None

    @property
    def enabled(self) -> bool:
        """Whether this platform and the settings let it trim."""
        return self.interval > 0 and self._baseline is not None and _libc_trim() is not None

    async def check(self) -> bool:
        """Trim now if the RSS grew by ``min_growth``; whether it trimmed."""
        rss = rss_bytes()
        if rss is None or self._baseline is None or rss - self._baseline < self.min_growth:
            if rss is not None and self._baseline is not None:
                self._baseline = min(self._baseline, rss)
            return False
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="synaptoroute-trim")
        await asyncio.get_running_loop().run_in_executor(self._executor, malloc_trim)
        self.trims += 1
        self._baseline = rss_bytes()
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # never let housekeeping take the service down
                log.exception("memory trim failed")

    def start(self) -> None:
        """Start checking on the running loop (no-op when not :attr:`enabled`)."""
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="synaptoroute-memory-trim"
            )

    async def stop(self) -> None:
        """Stop checking."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)
