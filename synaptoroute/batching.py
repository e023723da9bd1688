"""The batching worker: the only asyncio scheduling code in synaptoroute.

Continuous micro-batching: a lone request is processed at once (no fixed sleep).
While one batch runs in a worker thread, the event loop keeps accepting requests;
they queue up and form the next batch. The queue is bounded by what its requests cost
the encoder as well as by their number: past ``max_queue_cost`` (characters the model
reads, see :func:`text_cost`) or ``max_queue_size`` a call is refused at once with
:class:`RouterOverloadedError`, and a batch is cut at ``max_batch_cost``, so one caller's
long texts cannot hold the encoder for long while short queries wait.

Lifecycle: a worker belongs to the event loop it was started on (the router keeps
one worker per loop, so callers never see that). ``stop()`` resolves every pending
call (result or :class:`RouterClosedError`) and releases the loop, so the worker can
be started again, on the same loop or another. If the loop that ran it is closed
without ``stop()`` (``asyncio.run`` returning), the next call from a new loop starts
afresh. What a started worker has of its loop (its task, its thread) belongs to the
loop, and the worker refers to it weakly: a loop dropped without ``close()`` is
collected with them, the worker's thread ends, and an idle worker's task keeps no
worker (nor router) alive.

Why one module over 400 lines: admission, batch cutting, the worker thread hand-off
and the lifecycle share one queue and one set of invariants; they are read together.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .checks import check_count, is_number
from .exceptions import (
    EventLoopMismatchError,
    InvalidInputError,
    RouterClosedError,
    RouterOverloadedError,
    RouterTimeoutError,
)

__all__ = [
    "DEFAULT_MAX_BATCH_COST",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_QUEUE_COST",
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEFAULT_MAX_WAIT_MS",
    "MAX_TEXT_COST",
    "TEXT_COST_OVERHEAD",
    "BatchWorker",
    "WorkerStats",
    "text_cost",
    "text_cost_cap",
]

#: The encoder sorts a batch by token length, so a batch needs a few hundred texts
#: before padding stops costing throughput (figures: BENCHMARKS.md, "Async serving").
#: A batch only grows this large when that many texts are already queued.
DEFAULT_MAX_BATCH_SIZE = 512
#: Continuous batching already gathers what arrived during the previous batch, so a
#: fill window only adds latency (BENCHMARKS.md, "Async serving").
DEFAULT_MAX_WAIT_MS = 0.0
DEFAULT_MAX_QUEUE_SIZE = 10_000
#: What a text at the default encoder's limit of 256 tokens costs, in characters (16
#: a token; the model's work is bounded by the tokens, though its cut keeps up to 19
#: characters a token, see ``Encoder.truncate``): a longer text costs no more.
MAX_TEXT_COST = 4096
#: Fixed cost of one text (tokenizer call, padding, the result), in characters.
TEXT_COST_OVERHEAD = 16
#: About as much encoder work as 10,000 typical queries; only ~240 texts of the
#: longest kind, so a queue of long texts cannot grow into minutes of work.
DEFAULT_MAX_QUEUE_COST = 1_000_000
#: Above a full batch of typical queries (512 x ~50 characters), so short-query
#: batching is untouched, while a batch of long texts is cut into several.
DEFAULT_MAX_BATCH_COST = 32_768


def text_cost(text: str, cap: int = MAX_TEXT_COST) -> int:
    """What one text costs the encoder, in characters (bounded by what it reads:
    ``cap``, the encoder's :func:`text_cost_cap`)."""
    return min(len(text), cap) + TEXT_COST_OVERHEAD


_MAX_COST_TOKENS = 8192


def text_cost_cap(encoder: object) -> int:
    """What a text at ``encoder``'s token limit costs: 16 characters a token of its
    ``max_tokens`` (the bundled encoder's; :data:`MAX_TEXT_COST` at its default of
    256; counted up to 8,192 tokens), or :data:`MAX_TEXT_COST` for an encoder without
    one (or whose ``max_tokens`` cannot be read)."""
    try:
        tokens = getattr(encoder, "max_tokens", None)
    except Exception:  # a property that cannot answer yet (a model not loaded)
        tokens = None
    if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens > 0:
        # Bounded: a limit of millions of tokens (a long-context API model) would make
        # one long text cost a whole queue's worth.
        return min(tokens, _MAX_COST_TOKENS) * (MAX_TEXT_COST // 256)
    return MAX_TEXT_COST


def runs_by_cost(
    texts: Sequence[str],
    max_cost: int | None,
    max_count: int | None = None,
    *,
    cost: Callable[[str], int],
) -> list[list[str]]:
    """``texts`` in order, cut into runs of at most ``max_cost`` (summed ``cost``, the
    router's :meth:`~synaptoroute.AdaptiveRouter.text_cost`) and ``max_count`` texts
    (``None``: no bound); a text costing more than ``max_cost`` alone is a run of its
    own. The pieces a caller submits one after another: to fit a worker's queue
    whole, or to let other calls in between."""
    runs: list[list[str]] = []
    run: list[str] = []
    total = 0
    for text in texts:
        c = cost(text)
        full = max_count is not None and len(run) >= max_count
        if run and (full or (max_cost is not None and total + c > max_cost)):
            runs.append(run)
            run, total = [], 0
        run.append(text)
        total += c
    if run:
        runs.append(run)
    return runs


def _unit_cost(_: object) -> int:
    return 1


#: The attribute of an event loop that holds its workers' runs (see :class:`_Run`).
_RUNS = "_synaptoroute_batch_runs"


class _Run:
    """What one start of a worker has of its event loop: the task, its wake-up event,
    the thread that runs the batches and, while it stops, the stopping task.

    The loop owns it (its attribute ``_RUNS``, keyed weakly by worker) and the worker
    refers to it weakly, and the task holds the worker only while there is work. So a
    loop dropped without ``close()`` is collected with its runs (a router's map of loops
    to workers, weak by loop, keeps neither: no worker holds its loop), and a worker
    collected while its loop lives (its router dropped) is not kept by the loop.
    """

    __slots__ = ("__weakref__", "executor", "loop", "stopper", "task", "wakeup")

    def __init__(self, worker: BatchWorker[Any, Any], loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.wakeup = asyncio.Event()
        self.executor = executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="synaptoroute-batch"
        )
        self.stopper: asyncio.Task[None] | None = None

        def collected(_: object) -> None:
            # The worker went while its loop lives: its thread ends now, not when a
            # later collection finds this run (a cycle through its task).
            executor.shutdown(wait=False, cancel_futures=True)

        self.task = loop.create_task(
            _work(weakref.ref(worker, collected), self), name="synaptoroute-batch-worker"
        )
        # Destroyed pending when its loop, or its worker, is collected: nobody can be
        # waiting on it then, so there is nothing to report.
        with contextlib.suppress(AttributeError):  # a task factory's own kind of task
            self.task._log_destroy_pending = False  # type: ignore[attr-defined]

    def owned_by_loop(self, worker: BatchWorker[Any, Any]) -> bool:
        """Hand this run to its loop; ``False`` where the loop takes no attribute."""
        runs: weakref.WeakKeyDictionary[BatchWorker[Any, Any], _Run] | None
        runs = getattr(self.loop, _RUNS, None)
        if runs is None:
            runs = weakref.WeakKeyDictionary()
            try:
                setattr(self.loop, _RUNS, runs)
            except (AttributeError, TypeError):  # a loop that takes no attributes
                return False
        runs[worker] = self
        return True

    def disown(self, worker: BatchWorker[Any, Any]) -> None:
        runs = getattr(self.loop, _RUNS, None)
        if runs is not None and runs.get(worker) is self:
            del runs[worker]


Q = TypeVar("Q")
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class WorkerStats:
    """Counters for metrics and tests."""

    batches: int = 0
    items: int = 0
    cost: int = 0  # summed cost of the requests taken into batches
    rejected: int = 0
    failed_batches: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # the last 500-1,000 batch sizes


class BatchWorker(Generic[Q, T]):
    """Runs ``process(requests)`` on batches of queued requests in one background thread.

    A request is whatever ``process`` takes: the router's are texts with, for top-k
    calls, how many routes to return, so every kind of call shares one encoder batch.
    ``cost`` says what one request costs (the router's: :func:`text_cost`); queue and
    batch are bounded in that unit as well as in requests.

    Args:
        process: a blocking function mapping a list of requests to one result each;
            it runs in a worker thread, never on the event loop.
        max_batch_size: most requests handed to ``process`` at once.
        max_wait_ms: extra time to wait for a batch to fill once work is queued
            (0: never wait; a lone request goes at once).
        max_queue_size: queued requests beyond which calls are refused.
        cost: the cost of one request (default: 1 each).
        max_queue_cost: queued cost beyond which calls are refused (``None``: no bound
            but ``max_queue_size``).
        max_batch_cost: most cost handed to ``process`` at once (a request costing
            more goes alone; ``None``: no bound but ``max_batch_size``).
    """

    def __init__(
        self,
        process: Callable[[list[Q]], Sequence[T]],
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        cost: Callable[[Q], int] = _unit_cost,
        max_queue_cost: int | None = None,
        max_batch_cost: int | None = None,
    ) -> None:
        max_batch_size = check_count(max_batch_size, "max_batch_size", 1)
        max_queue_size = check_count(max_queue_size, "max_queue_size", 1)
        # Finite: a batch that waits for good for company never answers a lone query.
        if not is_number(max_wait_ms) or not 0 <= max_wait_ms < math.inf:
            msg = f"max_wait_ms must be a finite number >= 0, got {max_wait_ms!r}"
            raise InvalidInputError(msg)
        if max_queue_cost is not None:
            max_queue_cost = check_count(max_queue_cost, "max_queue_cost", 1)
        if max_batch_cost is not None:
            max_batch_cost = check_count(max_batch_cost, "max_batch_cost", 1)
        self._process = process
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.max_queue_size = max_queue_size
        self.cost = cost
        self.max_queue_cost = max_queue_cost
        self.max_batch_cost = max_batch_cost
        self.stats = WorkerStats()
        self._queue: deque[tuple[Q, asyncio.Future[T]]] = deque()
        # The queued futures whose callers still wait, with each one's cost: a caller
        # that gives up leaves its entry in the deque (skipped when its turn comes)
        # but stops counting against the limits at once.
        self._waiting: dict[asyncio.Future[T], int] = {}
        self._queued_cost = 0
        self._inflight: list[tuple[Q, asyncio.Future[T]]] = []
        # The current start's loop-bound state, held by its loop (weakly here); held
        # here as well only where the loop could not take it.
        self._run: weakref.ref[_Run] | None = None
        self._kept: _Run | None = None

    def sibling(self) -> BatchWorker[Q, T]:
        """A new, unstarted worker with this one's function and current settings
        (for another event loop)."""
        return BatchWorker(
            self._process,
            max_batch_size=self.max_batch_size,
            max_wait_ms=self.max_wait_ms,
            max_queue_size=self.max_queue_size,
            cost=self.cost,
            max_queue_cost=self.max_queue_cost,
            max_batch_cost=self.max_batch_cost,
        )

    # -- state -----------------------------------------------------------------------
    def _current(self) -> _Run | None:
        """The current start's state; ``None`` when not started, stopped, or its loop
        was collected."""
        return None if self._run is None else self._run()

    @property
    def running(self) -> bool:
        """Whether the worker task is alive on an open event loop."""
        run = self._current()
        return run is not None and not run.task.done() and not run.loop.is_closed()

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the worker runs on, or ``None`` when it is not started."""
        run = self._current()
        return None if run is None else run.loop

    @property
    def stopping(self) -> bool:
        """Whether a ``stop()`` is in progress (new calls are refused meanwhile)."""
        run = self._current()
        return (
            run is not None
            and run.stopper is not None
            and not run.stopper.done()
            and not run.loop.is_closed()
        )

    @property
    def queue_depth(self) -> int:
        """Texts waiting for a batch (not counting the one being processed, nor callers
        that gave up)."""
        return len(self._waiting)

    @property
    def queue_cost(self) -> int:
        """The summed cost of the requests waiting for a batch."""
        return self._queued_cost

    def _check_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        if (self.running or self.stopping) and self.loop is not loop:
            msg = (
                "this batching worker runs on another event loop; await stop() on "
                "that loop before using it from a new one (a router gives each event "
                "loop a worker of its own)"
            )
            raise EventLoopMismatchError(msg)

    def release(self) -> None:
        """Drop what a worker keeps of a loop that was closed without ``stop()`` (its
        thread, its unanswerable futures); no-op while it runs or stops on an open
        loop."""
        if not self.running and not self.stopping:
            self._discard()

    def _discard(self) -> None:
        """Forget the loop-bound state (after a stop, or a loop that went away)."""
        run = self._current()
        self._run = self._kept = None
        if run is None:  # its loop was collected, and the run with it (its thread ends)
            return
        # Nothing is queued on it any more; an abandoned (timed-out) batch may still be
        # running and finishes on its own.
        run.executor.shutdown(wait=False, cancel_futures=True)
        if run.loop.is_closed():
            # Futures of a closed loop cannot be resolved (their callbacks would be
            # scheduled on it); their callers are gone with the loop.
            self._clear_queue()
            self._inflight = []
        run.disown(self)

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Start the worker on the running event loop (no-op if already running there).

        Raises:
            EventLoopMismatchError: it runs on another event loop.
            RouterClosedError: a ``stop()`` is still in progress.
        """
        self._ensure_started(asyncio.get_running_loop())

    def _ensure_started(self, loop: asyncio.AbstractEventLoop) -> None:
        self._check_loop(loop)
        if self.stopping:
            msg = "the router is stopping; await stop() before starting it again"
            raise RouterClosedError(msg)
        if self.running:
            return
        self._discard()  # leftovers of a loop that was closed without stop()
        run = _Run(self, loop)
        self._run = weakref.ref(run)
        if not run.owned_by_loop(self):
            # Held here then: such a loop, dropped without close(), is kept until the
            # worker starts again or goes.
            self._kept = run

    async def stop(self, *, drain: bool = True, timeout: float | None = 30.0) -> None:
        """Stop the worker and resolve every pending call.

        With ``drain`` the queued calls are still served (for up to ``timeout``
        seconds); without it they fail at once with :class:`RouterClosedError` and
        only the batch already being processed finishes. Whatever is left when
        ``timeout`` expires fails with :class:`RouterClosedError`. When this
        returns, no task or future of the worker is pending, and the worker can be
        started again. Concurrent ``stop()`` calls wait for the same shutdown;
        cancelling the caller does not interrupt it.

        Raises:
            EventLoopMismatchError: called from a loop other than the worker's.
            InvalidInputError: ``timeout`` is not ``None`` or a number >= 0.
        """
        check_timeout(timeout)
        run = self._current()
        if run is None or (not self.running and not self.stopping):
            self._discard()  # never started, stopped, or the loop that ran it is gone
            return
        loop = asyncio.get_running_loop()
        self._check_loop(loop)
        if not drain:
            self._fail(queued=True, inflight=False)
        stopper = run.stopper
        if stopper is None or stopper.done():
            stopper = loop.create_task(self._shutdown(run, timeout), name="synaptoroute-batch-stop")
            run.stopper = stopper
        await asyncio.shield(stopper)

    async def _shutdown(self, run: _Run, timeout: float | None) -> None:
        task = run.task
        try:
            run.wakeup.set()
            _, pending = await asyncio.wait({task}, timeout=timeout)
            if pending:
                task.cancel()
                await asyncio.wait({task})
            if not task.cancelled():
                # A crash of _run already failed its callers; retrieve it so asyncio
                # does not log "exception was never retrieved".
                task.exception()
        finally:
            self._fail(queued=True, inflight=True)
            self._discard()

    def _fail(self, *, queued: bool, inflight: bool) -> None:
        pending: list[tuple[Q, asyncio.Future[T]]] = []
        if queued:
            pending.extend(self._queue)
            self._clear_queue()
        if inflight:
            pending.extend(self._inflight)
            self._inflight = []
        for _, fut in pending:
            if not fut.done():
                fut.set_exception(RouterClosedError("the router was stopped before this call"))

    def _clear_queue(self) -> None:
        self._queue.clear()
        self._waiting.clear()
        self._queued_cost = 0

    def _forget(self, fut: asyncio.Future[T]) -> None:
        """Stop counting a queued future whose caller gave up (no-op once taken)."""
        cost = self._waiting.pop(fut, None)
        if cost is None:
            return
        self._queued_cost -= cost
        if len(self._queue) > 2 * len(self._waiting) + 64:
            # Callers keep giving up while a batch is stuck: drop their entries now,
            # so the deque stays within a constant factor of what waits.
            self._queue = deque(e for e in self._queue if e[1] in self._waiting)

    # -- submitting ------------------------------------------------------------------
    async def submit(self, requests: Sequence[Q], timeout: float | None = None) -> list[T]:
        """Queue ``requests`` and wait for their results (in order).

        All or nothing: either every request is queued or none is. They may be served
        in different batches.

        Raises:
            InvalidInputError: more requests, or more cost, than the queue can ever
                hold (``max_queue_size``, ``max_queue_cost``): a retry cannot succeed,
                so this is no overload.
            RouterOverloadedError: the queue cannot take them now; nothing was queued.
            RouterClosedError: the worker is stopping, or was stopped before serving them.
            RouterTimeoutError: ``timeout`` seconds passed first.
            EventLoopMismatchError: called from a loop other than the worker's.
        """
        check_timeout(timeout)
        if not requests:
            return []
        if len(requests) > self.max_queue_size:
            msg = (
                f"{len(requests)} texts can never fit the queue of {self.max_queue_size}; "
                "send them in smaller batches"
            )
            raise InvalidInputError(msg)
        futures = self._enqueue(requests, self._costs(requests))
        if len(futures) == 1:
            return [await self._wait(futures[0], futures, timeout)]
        return list(await self._wait(asyncio.gather(*futures), futures, timeout))

    async def submit_one(self, request: Q, timeout: float | None = None) -> T:
        """Queue one request and wait for its result; see :meth:`submit`."""
        check_timeout(timeout)
        futures = self._enqueue([request], self._costs([request]))
        return await self._wait(futures[0], futures, timeout)

    def _costs(self, requests: Sequence[Q]) -> list[int]:
        """Each request's cost; refused when no queue could ever take their sum."""
        costs = [self.cost(r) for r in requests]
        total = sum(costs)
        if self.max_queue_cost is not None and total > self.max_queue_cost:
            msg = (
                f"these texts cost {total} (characters the model reads), more than the "
                f"queue's {self.max_queue_cost} can ever hold; send fewer or shorter texts"
            )
            raise InvalidInputError(msg)
        return costs

    def _enqueue(self, requests: Sequence[Q], costs: list[int]) -> list[asyncio.Future[T]]:
        loop = asyncio.get_running_loop()
        self._ensure_started(loop)
        cost = sum(costs)
        if len(self._waiting) + len(requests) > self.max_queue_size:
            self.stats.rejected += len(requests)
            msg = (
                f"queue full: {len(self._waiting)} of {self.max_queue_size} texts queued, "
                f"{len(requests)} more refused; retry later"
            )
            raise RouterOverloadedError(msg)
        if self.max_queue_cost is not None and self._queued_cost + cost > self.max_queue_cost:
            self.stats.rejected += len(requests)
            msg = (
                f"queue full: texts costing {self._queued_cost} of {self.max_queue_cost} "
                f"queued, {cost} more refused; retry later"
            )
            raise RouterOverloadedError(msg)
        futures: list[asyncio.Future[T]] = [loop.create_future() for _ in requests]
        self._queue.extend(zip(requests, futures, strict=True))
        self._waiting.update(zip(futures, costs, strict=True))
        self._queued_cost += cost
        run = self._current()
        assert run is not None  # started above, on this (open) loop, which holds it
        run.wakeup.set()
        return futures

    async def _wait(
        self,
        waiter: Awaitable[R],
        futures: list[asyncio.Future[T]],
        timeout: float | None,
    ) -> R:
        # Not wait_for: its timeout and a TimeoutError the batch function raised (an
        # embedding API's read timeout) are both TimeoutError, and the latter must reach
        # the caller as itself, as query() raises it, not as RouterTimeoutError.
        task = asyncio.ensure_future(waiter)
        try:
            if timeout is None:
                return await task
            done, _ = await asyncio.wait((task,), timeout=timeout)
            if not done:
                msg = f"no result within {timeout} s"
                raise RouterTimeoutError(msg)
            return task.result()
        finally:
            if not task.done():
                task.cancel()
                # A cancelled gather() ends with CancelledError as its exception, which
                # asyncio logs as "never retrieved" unless someone reads it.
                task.add_done_callback(_retrieve)
            # A caller that gave up (timeout, cancellation, a sibling's error) leaves
            # cancelled futures that the worker skips; the rest of its batch is unaffected.
            for fut in futures:
                if not fut.done():
                    fut.cancel()
                # A cancelled caller's own future was cancelled with it: either way a
                # future still queued stops counting against the limits now.
                self._forget(fut)

    # -- the worker ------------------------------------------------------------------
    def _take_batch(self) -> list[tuple[Q, asyncio.Future[T]]]:
        batch: list[tuple[Q, asyncio.Future[T]]] = []
        queue, waiting, limit = self._queue, self._waiting, self.max_batch_cost
        cost = 0
        while queue and len(batch) < self.max_batch_size:
            request, fut = queue[0]
            c = waiting.get(fut)
            if c is None or fut.done():  # a caller that gave up: uncounted already
                queue.popleft()
                if c is not None:
                    del waiting[fut]
                    self._queued_cost -= c
                continue
            if batch and limit is not None and cost + c > limit:
                break
            queue.popleft()
            del waiting[fut]
            self._queued_cost -= c
            batch.append((request, fut))
            cost += c
        self.stats.cost += cost
        return batch

    async def _fill(self, wakeup: asyncio.Event) -> None:
        """Wait up to ``max_wait_ms`` for the queue to hold a full batch: as many
        requests as ``max_batch_size``, or as much cost as ``max_batch_cost``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_ms / 1000
        limit = self.max_batch_cost
        while len(self._waiting) < self.max_batch_size and (
            limit is None or self._queued_cost < limit
        ):
            left = deadline - loop.time()
            if left <= 0 or self.stopping:
                return
            wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wakeup.wait(), left)

    async def _next_batch(self, run: _Run) -> None:
        if self.max_wait_ms > 0 and not self.stopping:
            await self._fill(run.wakeup)
        batch = self._take_batch()
        if batch:
            await self._serve(batch, run.loop, run.executor)

    def _process_boxed(self, requests: list[Q]) -> Sequence[T]:
        # In the worker thread. What the awaiting task cannot take as this batch's
        # error is made one: a CancelledError (an encoder built on futures) read as the
        # worker itself being cancelled, which stopped it and failed every queued
        # caller; so did any other BaseException (KeyboardInterrupt and SystemExit
        # ended the loop); and asyncio cannot set a StopIteration on a future, so the
        # await never ended and every later call on the loop hung.
        try:
            return self._process(requests)
        except (StopIteration, concurrent.futures.CancelledError) as exc:
            raise _boxed(exc) from exc
        except Exception:
            raise
        except BaseException as exc:
            raise _boxed(exc) from exc

    async def _serve(
        self,
        batch: list[tuple[Q, asyncio.Future[T]]],
        loop: asyncio.AbstractEventLoop,
        executor: ThreadPoolExecutor,
    ) -> None:
        requests = [request for request, _ in batch]
        self._inflight = batch
        try:
            results = await loop.run_in_executor(executor, self._process_boxed, requests)
            if len(results) != len(batch):
                msg = f"batch function returned {len(results)} results for {len(batch)} texts"
                raise RuntimeError(msg)
        except Exception as exc:
            # Only this batch's callers see the failure; the worker keeps serving.
            self._inflight = []
            self.stats.failed_batches += 1
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self._inflight = []
        stats = self.stats
        stats.batches += 1
        stats.items += len(batch)
        stats.batch_sizes.append(len(batch))
        if len(stats.batch_sizes) > 1000:
            del stats.batch_sizes[:500]
        for (_, fut), result in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(result)


def _boxed(exc: BaseException) -> RuntimeError:
    return RuntimeError(f"the batch function raised {type(exc).__name__}: {exc}")


async def _work(ref: weakref.ref[BatchWorker[Any, Any]], run: _Run) -> None:
    """A started worker's task: serves its batches until it stops. Holds the worker
    only while there is work: idle, the loop that owns this task (through ``run``)
    keeps neither the worker nor its router alive."""
    try:
        while True:
            worker = ref()
            if worker is None:  # collected while this task waited to run
                return
            if worker._queue:
                await worker._next_batch(run)
                continue
            if worker.stopping:
                return
            run.wakeup.clear()
            worker = None  # not held while it waits
            await run.wakeup.wait()
    except BaseException:
        # Cancelled (a stop that timed out, or the loop shutting down) or a bug: nobody
        # may be left waiting on a future that will never be resolved.
        worker = ref()
        if worker is not None and worker._current() is run and not run.loop.is_closed():
            worker._fail(queued=True, inflight=True)
        # Its thread goes too: a loop closed without stop() (asyncio.run ends by
        # cancelling this task) would otherwise keep an idle thread for good. A start()
        # afterwards makes a new run.
        run.executor.shutdown(wait=False, cancel_futures=True)
        raise


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def check_timeout(timeout: float | None) -> None:
    """Refuse a timeout that is neither None nor a number of seconds >= 0 (one a float
    can hold: the event loop's clock is one)."""
    if timeout is None:
        return
    if is_number(timeout):
        try:
            if float(timeout) >= 0:
                return
        except OverflowError:  # an int past 1e308: OverflowError from the loop's timer
            msg = "timeout must be None or a number >= 0 a float can hold (None: no bound)"
            raise InvalidInputError(msg) from None
    msg = f"timeout must be None or a number >= 0, got {timeout!r}"
    raise InvalidInputError(msg)
