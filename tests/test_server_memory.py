"""The service gives freed C-heap memory back after a burst (issue 18: RSS after attacks).

The heap is driven directly through libc (``malloc``/``free``), so what glibc keeps
after a free is known exactly: freed chunks below one still in use stay in the
process until ``malloc_trim``. Skipped where there is no glibc.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from synaptoroute.server import ServerSettings, create_app
from synaptoroute.server.memory import MemoryTrimmer, _libc_trim, malloc_trim, rss_bytes

pytestmark = pytest.mark.skipif(
    _libc_trim() is None or rss_bytes() is None, reason="needs glibc and /proc"
)

MiB = 1024 * 1024


def test_rss_bytes_reads_the_process_rss() -> None:
    rss = rss_bytes()
    assert rss is not None
    status = Path("/proc/self/status").read_text()
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    assert abs(rss - kib * 1024) < 16 * MiB


_TRIM_SCENARIO = """
import asyncio
import ctypes
import ctypes.util

from synaptoroute.server.memory import MemoryTrimmer, malloc_trim, rss_bytes

MiB = 1024 * 1024
CHUNK = 64 * 1024  # below glibc's mmap threshold: served from the heap


def _libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c")
    assert name is not None
    libc = ctypes.CDLL(name)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def _fragment(libc: ctypes.CDLL, total: int) -> int:
    # Touch total bytes of heap, free all but the last chunk; returns that chunk.
    pointers = [libc.malloc(CHUNK) for _ in range(total // CHUNK)]
    assert all(pointers)
    for p in pointers:
        ctypes.memset(p, 1, CHUNK)
    for p in pointers[:-1]:
        libc.free(p)
    return int(pointers[-1])  # in use above the freed ones: the heap top cannot shrink


async def main() -> None:
    libc = _libc()
    assert malloc_trim()
    trimmer = MemoryTrimmer(interval=1.0, min_growth=8 * MiB)
    assert trimmer.enabled
    assert not await trimmer.check()  # nothing grew yet
    pin = _fragment(libc, 96 * MiB)
    try:
        held = rss_bytes()
        assert held is not None
        assert await trimmer.check()
        assert trimmer.trims == 1
        after = rss_bytes()
        assert after is not None
        assert held - after > 64 * MiB, (held, after)  # the freed pages went back
        assert not await trimmer.check()  # the new baseline is the trimmed RSS
    finally:
        libc.free(pin)
        await trimmer.stop()
    assert trimmer._executor is None
    print("trimmed")

asyncio.run(main())
"""


def test_a_grown_heap_is_trimmed_and_the_rss_falls(tmp_path: Path) -> None:
    # In a process of its own: the RSS is the whole process's, and threads an earlier
    # test left running (an index build, a server) could allocate between two readings.
    done = subprocess.run(
        [sys.executable, "-c", _TRIM_SCENARIO],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "trimmed"


def test_malloc_trim_is_safe_to_call_any_time() -> None:
    assert malloc_trim()
    assert malloc_trim()


def test_the_trimmer_can_be_switched_off() -> None:
    assert not MemoryTrimmer(interval=0).enabled
    with pytest.raises(ValueError, match="memory_trim_interval"):
        ServerSettings(memory_trim_interval=-1)


@pytest.mark.model
async def test_the_service_runs_the_trimmer_while_it_serves(tmp_path: Path) -> None:
    for interval, running in ((0.5, True), (0.0, False)):
        app = create_app(
            ServerSettings(store=str(tmp_path / f"{interval}.db"), memory_trim_interval=interval)
        )
        trimmer = app.state.memory_trimmer
        async with app.router.lifespan_context(app):
            assert (trimmer._task is not None) is running
            if running:
                assert not trimmer._task.done()
        assert trimmer._task is None  # stopped with the service
