"""The batching worker: the only asyncio scheduling code in synaptoroute.

Continuous micro-batching: a lone request is processed at once (no fixed sleep).
While one batch runs in a worker thread, the event loop keeps accepting requests;
they queue up and form the next batch. The queue is bounded: past
``max_queue_size`` a call is refused at once with :class:`RouterOverloadedError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .exceptions import (
    EventLoopMismatchError,
    InvalidInputError,
    RouterClosedError,
    RouterOverloadedError,
    RouterTimeoutError,
)

__all__ = ["BatchWorker", "WorkerStats"]

T = TypeVar("T")


@dataclass
class WorkerStats:
    """Counters for metrics and tests."""

    batches: int = 0
    items: int = 0
    rejected: int = 0
    failed_batches: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # the last 1,000 batch sizes


class BatchWorker(Generic[T]):
    """Runs ``process(texts)`` on batches of queued texts in one background thread.

    Args:
        process: a blocking function mapping a list of texts to one result each;
            it runs in a worker thread, never on the event loop.
        max_batch_size: most texts handed to ``process`` at once.
        max_wait_ms: extra time to wait for a batch to fill once work is queued
            (0: never wait; a lone request goes at once).
        max_queue_size: queued texts beyond which calls are refused.
    """

    def __init__(
        self,
        process: Callable[[list[str]], Sequence[T]],
        *,
        max_batch_size: int = 64,
        max_wait_ms: float = 0.0,
        max_queue_size: int = 10_000,
    ) -> None:
        if max_batch_size < 1 or max_queue_size < 1 or max_wait_ms < 0:
            msg = "max_batch_size and max_queue_size must be >= 1 and max_wait_ms >= 0"
            raise InvalidInputError(msg)
        self._process = process
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.max_queue_size = max_queue_size
        self.stats = WorkerStats()
        self._queue: deque[tuple[str, asyncio.Future[T]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._inflight: list[tuple[str, asyncio.Future[T]]] = []

    @property
    def running(self) -> bool:
        """Whether the worker task is alive."""
        return self._task is not None and not self._task.done()

    @property
    def queue_depth(self) -> int:
        """Texts waiting for a batch."""
        return len(self._queue)

    async def start(self) -> None:
        """Start the worker on the running event loop (no-op if already running there)."""
        loop = asyncio.get_running_loop()
        if self.running:
            self._check_loop(loop)
            return
        self._loop = loop
        self._closing = False
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synaptoroute-batch")
        self._task = loop.create_task(self._run(), name="synaptoroute-batch-worker")

    def _check_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not loop:
            msg = (
                "this router's batching worker runs on another event loop; "
                "use one router per loop, or stop() it before using it from a new loop"
            )
            raise EventLoopMismatchError(msg)

    async def stop(self, *, drain: bool = True, timeout: float | None = 30.0) -> None:
        """Stop the worker and resolve every pending call.

        With ``drain`` the queued calls are still served (up to ``timeout``
        seconds); whatever is left then fails with :class:`RouterClosedError`.
        The worker can be started again afterwards.
        """
        if self._task is None:
            return
        self._check_loop(asyncio.get_running_loop())
        self._closing = True
        if not drain:
            self._fail_queued(inflight=False)
        assert self._wakeup is not None
        self._wakeup.set()
        task = self._task
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except asyncio.TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_queued()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self._task = self._executor = self._loop = self._wakeup = None

    def _fail_queued(self, *, inflight: bool = True) -> None:
        pending = [*self._queue]
        if inflight:
            pending.extend(self._inflight)
            self._inflight = []
        self._queue.clear()
        for _, fut in pending:
            if not fut.done():
                fut.set_exception(
                    RouterClosedError("the router was stopped before this call was served")
                )

    async def submit(self, texts: Sequence[str], timeout: float | None = None) -> list[T]:
        """Queue ``texts`` and wait for their results (in order).

        Raises:
            RouterOverloadedError: the queue cannot take them; nothing was queued.
            RouterClosedError: the worker is stopping.
            RouterTimeoutError: ``timeout`` seconds passed first.
            EventLoopMismatchError: called from a loop other than the worker's.
        """
        loop = asyncio.get_running_loop()
        if not self.running:
            if self._closing and self._task is not None:
                raise RouterClosedError("the router is stopping")
            await self.start()
        self._check_loop(loop)
        if self._closing:
            raise RouterClosedError("the router is stopping")
        if len(self._queue) + len(texts) > self.max_queue_size:
            self.stats.rejected += len(texts)
            msg = f"queue full ({len(self._queue)} of {self.max_queue_size} queued); retry later"
            raise RouterOverloadedError(msg)
        futures: list[asyncio.Future[T]] = [loop.create_future() for _ in texts]
        self._queue.extend(zip(texts, futures, strict=True))
        assert self._wakeup is not None
        self._wakeup.set()
        gathered = asyncio.gather(*futures)
        try:
            if timeout is None:
                return list(await gathered)
            return list(await asyncio.wait_for(gathered, timeout))
        except asyncio.TimeoutError:
            msg = f"no result within {timeout} s"
            raise RouterTimeoutError(msg) from None
        finally:
            # A caller that gave up (timeout, cancellation) leaves cancelled futures
            # that the worker skips; the rest of its batch is unaffected.
            for fut in futures:
                if not fut.done():
                    fut.cancel()

    def _take_batch(self) -> list[tuple[str, asyncio.Future[T]]]:
        batch: list[tuple[str, asyncio.Future[T]]] = []
        while self._queue and len(batch) < self.max_batch_size:
            item = self._queue.popleft()
            if not item[1].done():
                batch.append(item)
        return batch

    async def _run(self) -> None:
        assert self._wakeup is not None and self._loop is not None
        wakeup, loop = self._wakeup, self._loop
        while True:
            if not self._queue:
                if self._closing:
                    return
                wakeup.clear()
                await wakeup.wait()
                continue
            if (
                self.max_wait_ms > 0
                and len(self._queue) < self.max_batch_size
                and not self._closing
            ):
                deadline = time.monotonic() + self.max_wait_ms / 1000
                while (
                    len(self._queue) < self.max_batch_size
                    and (left := deadline - time.monotonic()) > 0
                ):
                    wakeup.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(wakeup.wait(), left)
            batch = self._take_batch()
            if not batch:
                continue
            texts = [text for text, _ in batch]
            self._inflight = batch
            try:
                results = await loop.run_in_executor(self._executor, self._process, texts)
            except Exception as exc:
                # Only this batch's callers see the failure; the worker keeps serving.
                self.stats.failed_batches += 1
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                self._inflight = []
                continue
            self._inflight = []
            self.stats.batches += 1
            self.stats.items += len(batch)
            sizes = self.stats.batch_sizes
            sizes.append(len(batch))
            if len(sizes) > 1000:
                del sizes[:500]
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
