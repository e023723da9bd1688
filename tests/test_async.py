"""Async serving: the batching worker behind ``aquery``, on the real model.

Ordering and batch composition are asserted with a gated encoder (the real model
behind a thread gate that records every call), never with sleeps. The only waits
are on events or queues, each with a generous safety limit that fails the test.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import pytest
from encoder_doubles import LIMIT_S, HeldEncoder
from numpy.typing import NDArray

from synaptoroute import (
    AdaptiveRouter,
    Encoder,
    EncoderError,
    HashingEncoder,
    InvalidInputError,
    Route,
    RouteMatch,
    RouterClosedError,
    RouterOverloadedError,
    RouterTimeoutError,
)
from synaptoroute.batching import (
    DEFAULT_MAX_BATCH_COST,
    DEFAULT_MAX_QUEUE_COST,
    MAX_TEXT_COST,
    TEXT_COST_OVERHEAD,
    BatchWorker,
    runs_by_cost,
    text_cost,
    text_cost_cap,
)
from synaptoroute.exceptions import EventLoopMismatchError
from synaptoroute.router import RouterCache, counted_build
from synaptoroute.testing import RecordingEncoder

Rows = list[dict[str, str | None]]


def _routes(rows: Rows, per_route: int) -> list[Route]:
    by_label: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        label, text = row["label"], row["text"]
        if label is not None and text is not None and len(by_label[label]) < per_route:
            by_label[label].append(text)
    return [Route(name=name, utterances=texts) for name, texts in by_label.items()]


def _texts(rows: Rows) -> list[str]:
    return list(dict.fromkeys(str(row["text"]) for row in rows))


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition`` holds (a bounded number of turns, no timer)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    msg = "condition never became true"
    raise AssertionError(msg)


def only_this_task_left() -> bool:
    return asyncio.all_tasks() == {asyncio.current_task()}


def _long(text: str) -> str:
    """``text`` padded past what the model reads: the most a text can cost."""
    return f"{text} " + "padding words " * (MAX_TEXT_COST // 10)


# -- fixtures ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clinc_router(encoder: Encoder, clinc_train: Rows) -> AdaptiveRouter:
    """20 CLINC150 routes x 30 utterances on the real model, default batching."""
    router = AdaptiveRouter(encoder)
    router.add_routes(_routes(clinc_train, 30))
    return router


@pytest.fixture(scope="module")
def gated_router(encoder: Encoder, clinc_train: Rows) -> AdaptiveRouter:
    """A router whose encoder is the real model behind a :class:`HeldEncoder`."""
    router = AdaptiveRouter(HeldEncoder(encoder), max_queue_size=6)
    router.add_routes(_routes(clinc_train, 5))
    return router


@pytest.fixture
async def gated(gated_router: AdaptiveRouter) -> AsyncIterator[AdaptiveRouter]:
    """The gated router, clean for one test and stopped (gate opened) after it."""
    enc = gated_router.encoder
    assert isinstance(enc, HeldEncoder)
    enc.reset()
    gated_router.cache.clear()
    gated_router.worker.max_batch_size = 64
    gated_router.worker.max_queue_cost = DEFAULT_MAX_QUEUE_COST
    gated_router.worker.max_batch_cost = DEFAULT_MAX_BATCH_COST
    yield gated_router
    enc.reset()
    await gated_router.stop(drain=False, timeout=LIMIT_S)
    assert not gated_router.worker.running


@pytest.fixture
def val_texts(clinc_val: Rows) -> list[str]:
    return _texts(clinc_val)


def gate(router: AdaptiveRouter) -> HeldEncoder:
    enc = router.encoder
    assert isinstance(enc, HeldEncoder)
    return enc


# -- parity with the sync path (real model, many texts) ------------------------------------
async def test_aquery_equals_query_over_the_val_slice(
    clinc_router: AdaptiveRouter, val_texts: list[str]
) -> None:
    texts = [*val_texts, "", "   ", "🚀 ünïcödé テキスト"]
    clinc_router.cache.clear()
    expected = [clinc_router.query(t) for t in texts]
    assert any(m.name is not None for m in expected)
    assert any(m.name is None for m in expected)

    clinc_router.cache.clear()  # the async path must encode for itself, in batches
    one_by_one = await asyncio.gather(*(clinc_router.aquery(t) for t in texts))
    clinc_router.cache.clear()
    batched = await clinc_router.aquery_batch(texts)
    await clinc_router.stop()

    assert one_by_one == expected
    assert batched == expected
    assert max(clinc_router.worker.stats.batch_sizes) > 1  # it really batched


async def test_routers_sharing_one_encoder_each_answer_from_their_own_routes(
    encoder: Encoder,
) -> None:
    # docs/deployment.md, "Many tenants in one process": routers given one Encoder,
    # queried at once on one loop and from threads (each with its own loop), answer
    # each from its own routes, as their sync queries do.
    kinds = [
        {"billing": ["I need a refund", "I was charged twice"], "tech": ["the app crashes"]},
        {"weather": ["will it rain tomorrow", "how hot is it"], "music": ["play some jazz"]},
    ]
    tenants = [AdaptiveRouter(encoder) for _ in range(6)]
    for i, tenant in enumerate(tenants):
        tenant.add_routes(Route(name=n, utterances=u) for n, u in kinds[i % 2].items())
    queries = ["refund my order please", "is it going to rain", "the app keeps crashing"]
    expected = [[tenant.query(q) for q in queries] for tenant in tenants]

    def in_a_thread(tenant: AdaptiveRouter) -> list[RouteMatch]:
        async def ask() -> list[RouteMatch]:
            try:
                return list(await asyncio.gather(*(tenant.aquery(q) for q in queries)))
            finally:
                await tenant.stop()

        return asyncio.run(ask())

    here, there = tenants[:3], tenants[3:]
    threads = [asyncio.to_thread(in_a_thread, tenant) for tenant in there]
    on_this_loop = [tenant.aquery(q) for tenant in here for q in queries]
    answers = await asyncio.gather(*on_this_loop, *threads)
    for tenant in here:
        await tenant.stop()
    flat = answers[: len(on_this_loop)]
    got = [flat[i : i + len(queries)] for i in range(0, len(flat), len(queries))]
    got += answers[len(on_this_loop) :]
    assert got == expected
    assert {m.name for row in expected[::2] for m in row} <= {"billing", "tech", None}
    assert {m.name for row in expected[1::2] for m in row} <= {"weather", "music", None}


async def test_aquery_before_start_starts_the_worker_on_this_loop(
    clinc_router: AdaptiveRouter,
) -> None:
    assert not clinc_router.worker.running
    match = await clinc_router.aquery("what's the exchange rate for dollars to euros")
    assert isinstance(match, RouteMatch)
    assert clinc_router.worker.running
    await clinc_router.stop()
    assert not clinc_router.worker.running
    assert only_this_task_left()


async def test_async_with_starts_and_stops(clinc_router: AdaptiveRouter) -> None:
    async with clinc_router as router:
        assert router is clinc_router
        assert router.worker.running
        await router.aquery("please transfer money to my savings")
    assert not clinc_router.worker.running
    assert only_this_task_left()

    with pytest.raises(ZeroDivisionError):
        async with clinc_router:
            _ = 1 / 0
    assert not clinc_router.worker.running


async def test_restart_after_stop(clinc_router: AdaptiveRouter) -> None:
    text = "how do i say thank you in french"
    for _ in range(3):
        await clinc_router.start()
        await clinc_router.start()  # a second start is a no-op
        assert (await clinc_router.aquery(text)) == clinc_router.query(text)
        await clinc_router.stop()
        await clinc_router.stop()  # and so is a second stop
        assert only_this_task_left()


def test_a_new_asyncio_run_each_time(clinc_router: AdaptiveRouter) -> None:
    """A loop closed without stop() (asyncio.run returning) does not pin the router."""
    text = "can you translate this into spanish"

    async def once() -> RouteMatch:
        return await clinc_router.aquery(text)

    first = asyncio.run(once())
    second = asyncio.run(once())
    assert first == second == clinc_router.query(text)


async def test_input_errors_queue_nothing(clinc_router: AdaptiveRouter) -> None:
    with pytest.raises(TypeError):
        await clinc_router.aquery(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await clinc_router.aquery_batch("not a list")
    with pytest.raises(TypeError):
        await clinc_router.aquery_batch(["ok", None])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError):
        await clinc_router.aquery("hello", timeout=-1)
    assert clinc_router.worker.queue_depth == 0
    assert await clinc_router.aquery_batch([]) == []
    empty = await clinc_router.aquery("  ")
    assert empty.name is None
    assert empty.reason == "empty_query"
    await clinc_router.stop()


# -- batch composition and ordering ------------------------------------------------
async def test_a_lone_request_goes_at_once_and_later_ones_form_the_next_batch(
    gated: AdaptiveRouter, val_texts: list[str]
) -> None:
    enc = gate(gated)
    enc.hold = True
    a, b, c, d = val_texts[0:4]

    first = asyncio.create_task(gated.aquery(a))
    assert await enc.next_call() == [a]  # alone: nothing else was queued, nobody waited

    # The encoder is busy in the worker thread; the loop still takes requests.
    rest = [asyncio.create_task(gated.aquery(t)) for t in (b, c, d)]
    await until(lambda: gated.worker.queue_depth == 3)
    assert not first.done()

    enc.release()
    assert await enc.next_call() == [b, c, d]  # queued meanwhile: the next batch, in order
    enc.release()
    results = [await first, *await asyncio.gather(*rest)]
    assert results == [gated.query(t) for t in (a, b, c, d)]


async def test_top_k_calls_share_a_batch_with_queries_and_each_other(
    gated: AdaptiveRouter, val_texts: list[str]
) -> None:
    enc = gate(gated)
    enc.hold = True
    blocker, a, b, c = val_texts[30:34]
    first = asyncio.create_task(gated.aquery(blocker))
    await enc.next_call()
    calls = [
        asyncio.create_task(gated.aquery_top_k(a, k=3)),
        asyncio.create_task(gated.aquery(b)),
        asyncio.create_task(gated.aquery_top_k(c, k=1)),
        asyncio.create_task(gated.aquery_top_k("   ", k=2)),
    ]
    await until(lambda: gated.worker.queue_depth == 4)
    enc.release(2)
    assert await enc.next_call() == [a, b, c]  # one encoder call for all three kinds
    top_a, match_b, top_c, empty = await asyncio.gather(*calls)
    await first
    gated.cache.clear()
    enc.hold = False
    assert top_a == gated.query_top_k(a, k=3) and len(top_a) == 3
    assert match_b == gated.query(b)
    assert top_c == gated.query_top_k(c, k=1) and len(top_c) == 1
    assert empty == []
    with pytest.raises(InvalidInputError, match="k must be at least 1"):
        await gated.aquery_top_k(a, k=0)


async def test_duplicates_are_encoded_once_and_the_cache_is_consulted_first(
    gated: AdaptiveRouter, val_texts: list[str]
) -> None:
    enc = gate(gated)
    cached, a, b, blocker = val_texts[10:14]
    await gated.aquery(cached)
    assert await enc.next_call() == [cached]

    enc.hold = True
    first = asyncio.create_task(gated.aquery(blocker))
    await enc.next_call()
    batch = [asyncio.create_task(gated.aquery(t)) for t in (a, cached, b, a, a)]
    await until(lambda: gated.worker.queue_depth == 5)
    enc.release(2)
    assert await enc.next_call() == [a, b]  # one batch; duplicates once; the cached text not at all
    results = await asyncio.gather(*batch)
    await first
    assert results[0] == results[3] == results[4] == gated.query(a)
    assert results[1] == gated.query(cached)
    assert gated.worker.stats.batch_sizes[-1] == 5


@pytest.mark.parametrize("bound", ["size", "cost"])
async def test_a_batch_is_cut_by_size_or_cost_in_arrival_order(
    gated: AdaptiveRouter, val_texts: list[str], bound: str
) -> None:
    # By cost: long texts go to the encoder a few at a time, so a short query that
    # arrives meanwhile waits behind one cut, not behind all of them.
    enc = gate(gated)
    blocker, *texts = val_texts[20:25]
    if bound == "size":
        gated.worker.max_batch_size = 2
    else:
        texts = [_long(t) for t in texts]
        gated.worker.max_batch_cost = 2 * text_cost(texts[0])
    enc.hold = True
    first = asyncio.create_task(gated.aquery(blocker))
    await enc.next_call()
    batch = asyncio.create_task(gated.aquery_batch(texts))
    await until(lambda: gated.worker.queue_depth == 4)
    enc.release(3)
    read = [enc.truncate(t) for t in texts]  # the encoder gets the text it reads
    assert [await enc.next_call(), await enc.next_call()] == [read[:2], read[2:]]
    assert await batch == [gated.query(t) for t in texts]
    await first


# -- overload, timeout, cancellation, failure ------------------------------------------
async def test_a_full_queue_refuses_at_once_and_serves_what_it_holds(
    gated: AdaptiveRouter, val_texts: list[str]
) -> None:
    enc = gate(gated)
    blocker, *texts = val_texts[30:40]
    queued, refused = texts[:6], texts[6:]
    enc.hold = True
    first = asyncio.create_task(gated.aquery(blocker))
    await enc.next_call()
    held = [asyncio.create_task(gated.aquery(t)) for t in queued]
    await until(lambda: gated.worker.queue_depth == 6)  # max_queue_size=6

    rejected_before = gated.worker.stats.rejected
    with pytest.raises(RouterOverloadedError):
        await gated.aquery(refused[0])
    with pytest.raises(RouterOverloadedError):
        await gated.aquery_batch(refused[1:])
    assert gated.worker.stats.rejected == rejected_before + 3
    assert gated.worker.queue_depth == 6  # nothing of a refused call was queued

    enc.release(2)
    assert await asyncio.gather(*held) == [gated.query(t) for t in queued]
    await first
    assert all(t not in call for call in enc.calls for t in refused)


async def test_a_batch_larger_than_the_queue_is_refused(gated: AdaptiveRouter) -> None:
    # It could never be queued, so it is invalid input, not "overloaded, retry later".
    with pytest.raises(InvalidInputError, match="never fit the queue"):
        await gated.aquery_batch([f"text {i}" for i in range(7)])
    assert gate(gated).calls == []


def test_text_cost_counts_what_the_model_reads() -> None:
    assert text_cost("") == TEXT_COST_OVERHEAD
    assert text_cost("abc") == 3 + TEXT_COST_OVERHEAD
    assert text_cost("x" * 10 * MAX_TEXT_COST) == text_cost("x" * MAX_TEXT_COST)


async def test_a_text_costs_up_to_the_encoders_token_limit(encoder: Encoder) -> None:
    # The cost of a long text stopped at the default encoder's 256 tokens, so with
    # max_tokens=512 the queue held twice the work its bound says.
    assert text_cost_cap(encoder) == MAX_TEXT_COST
    assert text_cost_cap(HashingEncoder()) == MAX_TEXT_COST
    wide = Encoder(max_tokens=512)
    assert text_cost_cap(wide) == 2 * MAX_TEXT_COST

    class Odd:
        def __init__(self, tokens: object) -> None:
            self.tokens = tokens

        @property
        def max_tokens(self) -> object:
            if self.tokens is None:
                raise RuntimeError("model not loaded yet")
            return self.tokens

    assert text_cost_cap(Odd(None)) == MAX_TEXT_COST  # cannot be read: the default
    assert text_cost_cap(Odd(True)) == text_cost_cap(Odd(0)) == MAX_TEXT_COST
    assert text_cost_cap(Odd(10**9)) == 8192 * 16  # bounded
    long = "refund " * 2000
    assert text_cost(long, text_cost_cap(wide)) == 2 * MAX_TEXT_COST + TEXT_COST_OVERHEAD
    bound = MAX_TEXT_COST + TEXT_COST_OVERHEAD + 100
    router = AdaptiveRouter(wide, max_queue_cost=bound)
    assert router.text_cost_cap == 2 * MAX_TEXT_COST
    router.add_route(Route(name="billing", utterances=["I need a refund"]))
    with pytest.raises(InvalidInputError, match="can ever hold"):
        await router.aquery(long)
    await router.stop()
    usual = AdaptiveRouter(encoder, max_queue_cost=bound)
    usual.add_route(Route(name="billing", utterances=["I need a refund"]))
    assert (await usual.aquery(long)).candidate == "billing"  # admitted and scored
    await usual.stop()


async def test_the_queue_is_bounded_by_cost_not_only_by_count(
    gated: AdaptiveRouter, val_texts: list[str]
) -> None:
    # Issue 18: three long texts hold far more encoder work than three short ones,
    # so the queue refuses by what its texts cost while the count bound is still far.
    enc = gate(gated)
    blocker, short, *rest = val_texts[60:65]
    long_texts = [_long(t) for t in rest]
    gated.worker.max_queue_cost = 2 * text_cost(long_texts[0]) + text_cost(short)
    enc.hold = True
    first = asyncio.create_task(gated.aquery(blocker))
    await enc.next_call()
    held = [asyncio.create_task(gated.aquery(t)) for t in long_texts[:2]]
    await until(lambda: gated.worker.queue_depth == 2)
    assert gated.worker.queue_cost == 2 * text_cost(long_texts[0])

    with pytest.raises(RouterOverloadedError, match="queue full: texts costing"):
        await gated.aquery(long_texts[2])
    assert gated.worker.queue_depth == 2  # count bound (6) not reached; nothing queued
    fits = asyncio.create_task(gated.aquery(short))  # a short query still fits
    await until(lambda: gated.worker.queue_depth == 3)

    enc.release(10)
    assert await asyncio.gather(*held, fits) == [gated.query(t) for t in [*long_texts[:2], short]]
    await first
    assert gated.worker.queue_cost == 0
    assert all(long_texts[2] not in call for call in enc.calls)


async def test_texts_costing_more_than_the_queue_can_hold_are_invalid(
    gated: AdaptiveRouter, val_texts: list[str]
) -> None:
    gated.worker.max_queue_cost = 3 * text_cost(_long("x"))
    with pytest.raises(InvalidInputError, match="can ever hold"):
        await gated.aquery_batch([_long(t) for t in val_texts[70:74]])
    assert gate(gated).calls == []
    assert gated.worker.queue_cost == 0


def test_runs_by_cost_keep_order_and_bounds() -> None:
    texts = ["a" * 10, "b" * 10, "c" * 500, "d", "e", "f"]
    cost = text_cost
    for max_cost, max_count in ((None, None), (2 * cost("a" * 10), None), (100, 2), (None, 4)):
        runs = runs_by_cost(texts, max_cost, max_count, cost=cost)
        assert [t for run in runs for t in run] == texts and all(runs)
        for run in runs:
            assert max_count is None or len(run) <= max_count
            # Over the cost bound only as a text on its own.
            assert max_cost is None or sum(map(cost, run)) <= max_cost or len(run) == 1
    assert runs_by_cost(texts, 100, 2, cost=cost) == [
        ["a" * 10, "b" * 10],
        ["c" * 500],
        ["d", "e"],
        ["f"],
    ]
    assert runs_by_cost([], 100, cost=cost) == []


def test_cost_bounds_are_validated() -> None:
    for bad in (0, -1, True):
        with pytest.raises(InvalidInputError, match="max_queue_cost"):
            BatchWorker(lambda xs: xs, max_queue_cost=bad)
        with pytest.raises(InvalidInputError, match="max_batch_cost"):
            BatchWorker(lambda xs: xs, max_batch_cost=bad)


async def test_timeout_while_in_flight_and_while_queued(
    gated: AdaptiveRouter, val_texts: list[str]
) -> None:
    enc = gate(gated)
    in_flight, blocker, late, after = val_texts[60:64]
    enc.hold = True
    # The loop's clock stands still until the batch is held, so the timeout cannot fire
    # before the worker takes the call, however slow the machine.
    loop = asyncio.get_running_loop()
    now = loop.time()
    clock = [now]
    loop.time = lambda: clock[0]  # type: ignore[method-assign]
    try:
        caller = asyncio.create_task(gated.aquery(in_flight, timeout=0.01))
        assert await enc.next_call() == [in_flight]  # taken into a batch, then held there
        clock[0] = now + 1.0
        with pytest.raises(RouterTimeoutError) as info:
            await caller
    finally:
        del loop.time  # type: ignore[method-assign]
    assert isinstance(info.value, TimeoutError)
    enc.release()

    first = asyncio.create_task(gated.aquery(blocker))
    assert await enc.next_call() == [blocker]
    with pytest.raises(RouterTimeoutError):  # queued behind a held batch
        await gated.aquery(late, timeout=0.01)
    enc.release()
    assert await first == gated.query(blocker)

    enc.hold = False
    assert await gated.aquery(after, timeout=LIMIT_S) == gated.query(after)
    assert all(late not in call for call in enc.calls)  # dropped from the queue unencoded


async def test_a_cancelled_caller_does_not_break_its_batch(
    gated: AdaptiveRouter, val_texts: list[str]
) -> None:
    enc = gate(gated)
    blocker, a, b, c, queued = val_texts[70:75]
    enc.hold = True
    first = asyncio.create_task(gated.aquery(blocker))
    await enc.next_call()
    tasks = [asyncio.create_task(gated.aquery(t)) for t in (a, b, c)]
    await until(lambda: gated.worker.queue_depth == 3)
    enc.release()
    assert await enc.next_call() == [a, b, c]  # now in flight together

    tasks[1].cancel()  # b's caller gives up while its batch is being encoded
    dropped = asyncio.create_task(gated.aquery(queued))
    await until(lambda: gated.worker.queue_depth == 1)
    dropped.cancel()  # a queued caller gives up before its batch
    enc.release()
    assert await tasks[0] == gated.query(a)
    assert await tasks[2] == gated.query(c)
    with pytest.raises(asyncio.CancelledError):
        await tasks[1]
    with pytest.raises(asyncio.CancelledError):
        await dropped
    await first
    enc.hold = False
    assert await gated.aquery(b) == gated.query(b)  # and the worker keeps serving
    assert all(queued not in call for call in enc.calls)


async def test_callers_that_gave_up_stop_counting_against_the_queue_at_once() -> None:
    # Cancelled or timed-out callers kept their place in max_queue_size and
    # max_queue_cost until the batch in flight finished: new callers were refused as
    # overload (a 503 from the service) and queue_depth counted callers that were gone.
    enc = HeldEncoder(HashingEncoder(dimension=64))
    router = AdaptiveRouter(enc, max_queue_size=4)
    router.add_routes([Route(name="billing", utterances=["I need a refund"])])
    enc.hold = True
    first = asyncio.create_task(router.aquery("blocker"))
    await enc.next_call()  # in flight, held
    gone = [asyncio.create_task(router.aquery(f"refund {i}")) for i in range(4)]
    await until(lambda: router.worker.queue_depth == 4)
    with pytest.raises(RouterOverloadedError):
        await router.aquery("one more")
    for task in gone:
        task.cancel()
    await asyncio.gather(*gone, return_exceptions=True)
    assert (router.worker.queue_depth, router.worker.queue_cost) == (0, 0)
    waiting = [asyncio.create_task(router.aquery("I need a refund")) for _ in range(4)]
    await until(lambda: router.worker.queue_depth == 4)  # admitted: the four left room
    enc.hold = False  # later batches pass; however the worker splits them, none waits
    enc.release()  # the blocker
    await first
    assert [m.name for m in await asyncio.gather(*waiting)] == ["billing"] * 4
    assert all("refund 0" not in call for call in enc.calls)  # the gone were skipped
    await router.stop()


async def test_an_encoder_failure_fails_only_that_batch(
    gated: AdaptiveRouter, val_texts: list[str]
) -> None:
    enc = gate(gated)
    blocker, bad, neighbour, later = val_texts[80:84]
    enc.fail_on = {bad}
    enc.hold = True
    first = asyncio.create_task(gated.aquery(blocker))
    await enc.next_call()
    doomed = [asyncio.create_task(gated.aquery(t)) for t in (bad, neighbour)]
    await until(lambda: gated.worker.queue_depth == 2)
    enc.release()
    assert await enc.next_call() == [bad, neighbour]
    for task in doomed:
        with pytest.raises(EncoderError, match="injected"):
            await task
    assert await first == gated.query(blocker)  # the batch before is untouched
    enc.hold = False
    assert gated.worker.running
    assert await gated.aquery(later) == gated.query(later)  # and so is the next one
    assert gated.worker.stats.failed_batches >= 1


async def test_a_broken_batch_function_fails_its_callers_not_the_worker() -> None:
    """Pure algorithm: a batch function that returns too few results."""
    calls: list[list[str]] = []

    def short(texts: list[str]) -> list[int]:
        calls.append(texts)
        return [len(t) for t in texts][: 1 if "short" in texts else None]

    worker: BatchWorker[str, int] = BatchWorker(short)
    with pytest.raises(RuntimeError, match="returned 1 results for 2 texts"):
        await worker.submit(["short", "xx"])
    assert await worker.submit(["abc", "de"]) == [3, 2]
    await worker.stop()
    assert calls == [["short", "xx"], ["abc", "de"]]


async def test_a_batch_full_by_cost_does_not_wait_to_fill() -> None:
    """Pure algorithm: the wait for company ended only at max_batch_size requests, so
    a batch full by cost waited max_wait_ms (here ten minutes) for no one."""
    worker: BatchWorker[str, int] = BatchWorker(
        lambda texts: [len(t) for t in texts],
        max_wait_ms=600_000,
        max_batch_size=100,
        cost=len,
        max_batch_cost=10,
    )
    answer = await asyncio.wait_for(worker.submit(["aaaaa", "bbbbb"]), LIMIT_S)
    assert answer == [5, 5]
    assert worker.stats.batch_sizes == [2]
    await worker.stop()


async def test_a_timed_out_batch_logs_no_unretrieved_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Pure algorithm: a caller of several texts that times out cancels its gather(),
    whose CancelledError asyncio logged as "exception was never retrieved"."""
    import gc

    held = threading.Event()

    def slow(texts: list[str]) -> list[int]:
        held.wait(LIMIT_S)
        return [len(t) for t in texts]

    worker: BatchWorker[str, int] = BatchWorker(slow)
    with caplog.at_level("ERROR", logger="asyncio"), pytest.raises(RouterTimeoutError):
        await worker.submit(["one", "two"], timeout=0.01)  # held: it cannot finish first
    held.set()
    await worker.stop()
    gc.collect()
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_batch_functions_own_timeout_or_cancellation_is_its_batchs_error() -> None:
    """Pure algorithm: a TimeoutError the function raises is not the call's timeout,
    and a CancelledError it raises is not the worker being cancelled."""
    import concurrent.futures

    def flaky(texts: list[str]) -> list[int]:
        if "timeout" in texts:
            msg = "embedding API read timed out"
            raise TimeoutError(msg)
        if "cancelled" in texts:
            raise asyncio.CancelledError
        if "futures-cancelled" in texts:
            raise concurrent.futures.CancelledError
        return [len(t) for t in texts]

    worker: BatchWorker[str, int] = BatchWorker(flaky)
    for timeout in (None, 30.0):
        with pytest.raises(TimeoutError, match="read timed out") as caught:
            await worker.submit(["timeout"], timeout=timeout)
        assert not isinstance(caught.value, RouterTimeoutError)
    for text in ("cancelled", "futures-cancelled"):
        with pytest.raises(RuntimeError, match="raised CancelledError"):
            await worker.submit_one(text)
        assert worker.running  # it was stopped, failing every queued caller
    assert await worker.submit(["abc"], timeout=30.0) == [3]
    assert worker.stats.failed_batches == 4
    await worker.stop()


class _Abort(BaseException):
    """A framework's own BaseException (as gevent's or trio's)."""


@pytest.mark.parametrize(
    "raised", [StopIteration, _Abort, KeyboardInterrupt, SystemExit, GeneratorExit]
)
async def test_whatever_a_batch_function_raises_fails_its_batch_alone(
    raised: type[BaseException],
) -> None:
    """Pure algorithm: asyncio cannot set a StopIteration on a future (the await never
    ended: every later call hung), and a BaseException stopped the worker, failing
    every queued caller with "stopped" (KeyboardInterrupt and SystemExit ended the loop)."""

    def flaky(texts: list[str]) -> list[int]:
        if "bad" in texts:
            raise raised("from the batch function")
        return [len(t) for t in texts]

    worker: BatchWorker[str, int] = BatchWorker(flaky, max_batch_size=1)
    calls = [worker.submit_one(text) for text in ("bad", "good", "better")]
    # A bound for a hang, not a speed.
    outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 60)
    assert isinstance(outcomes[0], RuntimeError)
    assert f"raised {raised.__name__}: from the batch function" in str(outcomes[0])
    assert outcomes[1:] == [4, 6]  # queued behind it, served as usual
    assert worker.running
    assert worker.stats.failed_batches == 1
    assert await asyncio.wait_for(worker.submit_one("again"), 60) == 5
    await worker.stop()


async def test_an_encoders_timeout_reaches_aquery_as_query_raises_it(encoder: Encoder) -> None:
    class TimesOut(RecordingEncoder):
        def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
            if any("slow" in t for t in texts):
                msg = "embedding API read timed out"
                raise TimeoutError(msg)
            return super().encode(texts)

    router = AdaptiveRouter(TimesOut(encoder))
    router.add_route(Route(name="billing", utterances=["I need a refund"]))
    with pytest.raises(TimeoutError, match="read timed out"):
        router.query("a slow query")
    for timeout in (None, 30.0):
        with pytest.raises(TimeoutError, match="read timed out") as caught:
            await router.aquery("a slow query", timeout=timeout)
        assert not isinstance(caught.value, RouterTimeoutError)
    assert (await router.aquery("I need a refund")).name == "billing"
    await router.stop()


# -- stop --------------------------------------------------------------------------
async def test_stop_drains_calls_in_flight_and_queued(
    gated: AdaptiveRouter, val_texts: list[str]
) -> None:
    enc = gate(gated)
    blocker, a, b, refused = val_texts[90:94]
    enc.hold = True
    first = asyncio.create_task(gated.aquery(blocker))
    await enc.next_call()
    queued = [asyncio.create_task(gated.aquery(t)) for t in (a, b)]
    await until(lambda: gated.worker.queue_depth == 2)

    stopping = asyncio.create_task(gated.stop())
    await until(lambda: gated.worker.stopping)
    with pytest.raises(RouterClosedError):  # no new work while stopping
        await gated.aquery(refused)
    with pytest.raises(RouterClosedError):
        await gated.start()
    enc.release(2)
    await stopping
    assert await first == gated.query(blocker)
    assert await asyncio.gather(*queued) == [gated.query(a), gated.query(b)]
    assert not gated.worker.running
    assert gated.worker.queue_depth == 0
    assert only_this_task_left()


async def test_stop_without_drain_fails_the_queue_and_finishes_the_batch_in_flight(
    gated: AdaptiveRouter, val_texts: list[str]
) -> None:
    enc = gate(gated)
    blocker, a, b = val_texts[100:103]
    enc.hold = True
    first = asyncio.create_task(gated.aquery(blocker))
    await enc.next_call()
    queued = [asyncio.create_task(gated.aquery(t)) for t in (a, b)]
    await until(lambda: gated.worker.queue_depth == 2)

    stopping = asyncio.create_task(gated.stop(drain=False))
    await until(lambda: all(t.done() for t in queued))
    for task in queued:
        with pytest.raises(RouterClosedError):
            await task
    assert not first.done()
    enc.release()
    await stopping
    assert await first == gated.query(blocker)
    assert [call for call in enc.calls if a in call or b in call] == []
    assert only_this_task_left()


async def test_stop_timeout_fails_a_stuck_batch_and_the_router_restarts(
    gated: AdaptiveRouter, val_texts: list[str]
) -> None:
    enc = gate(gated)
    stuck, queued_text, fresh = val_texts[110:113]
    enc.hold = True
    first = asyncio.create_task(gated.aquery(stuck))
    await enc.next_call()
    queued = asyncio.create_task(gated.aquery(queued_text))
    await until(lambda: gated.worker.queue_depth == 1)

    await gated.stop(timeout=0.01)  # the held batch cannot finish in time
    for task in (first, queued):
        with pytest.raises(RouterClosedError):
            await task
    assert not gated.worker.running
    assert only_this_task_left()

    enc.release()  # let the abandoned thread finish
    enc.hold = False
    assert await gated.aquery(fresh) == gated.query(fresh)


async def test_a_cancelled_stop_still_completes(
    gated: AdaptiveRouter, val_texts: list[str]
) -> None:
    enc = gate(gated)
    blocker = val_texts[120]
    enc.hold = True
    first = asyncio.create_task(gated.aquery(blocker))
    await enc.next_call()
    stopping = asyncio.create_task(gated.stop())
    await until(lambda: gated.worker.stopping)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert gated.worker.stopping  # the shutdown goes on without its caller
    enc.release()
    assert await first == gated.query(blocker)
    await gated.stop()  # joins the shutdown in progress
    assert not gated.worker.running
    assert only_this_task_left()


# -- event loops -----------------------------------------------------------------------
T_ = TypeVar("T_")


async def test_a_bare_batch_worker_belongs_to_one_loop() -> None:
    worker: BatchWorker[int, int] = BatchWorker(lambda xs: xs)
    assert await worker.submit_one(1) == 1

    async def misuse() -> int:
        return await worker.submit_one(2)

    with pytest.raises(EventLoopMismatchError):
        await asyncio.to_thread(_in_a_new_loop, misuse)
    await worker.stop()
    assert await asyncio.to_thread(_in_a_new_loop, misuse) == 2  # free again after stop()


def _in_a_new_loop(coro_fn: Callable[[], Awaitable[T_]]) -> T_:
    """Run ``coro_fn()`` with ``asyncio.run`` in a fresh thread (a new event loop)."""
    out: list[T_] = []
    errors: list[BaseException] = []

    def main() -> None:
        try:
            out.append(asyncio.run(coro_fn()))  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=main)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return out[0]


async def test_each_event_loop_gets_its_own_worker(clinc_router: AdaptiveRouter) -> None:
    text = "how do you say goodbye in german"
    await clinc_router.aquery(text)
    here = clinc_router.worker
    assert here.running and here.loop is asyncio.get_running_loop()

    async def elsewhere() -> tuple[RouteMatch, list[RouteMatch], list[RouteMatch], bool]:
        one = await clinc_router.aquery(text)
        many = await clinc_router.aquery_batch([text, "what is my credit score"])
        top = await clinc_router.aquery_top_k(text, 2)
        other = clinc_router.worker
        assert other is not here and other.running
        await clinc_router.stop()  # stops this loop's worker only
        return one, many, top, other.running

    one, many, top, still_running = await asyncio.to_thread(_in_a_new_loop, elsewhere)
    assert one == clinc_router.query(text)
    assert many == clinc_router.query_batch([text, "what is my credit score"])
    assert top == clinc_router.query_top_k(text, 2)
    assert not still_running
    assert here.running  # the first loop's worker was not disturbed
    assert clinc_router.worker is here
    await clinc_router.stop()
    assert not here.running


async def test_a_worker_taken_but_not_yet_started_is_not_handed_to_another_loop(
    encoder: Encoder,
) -> None:
    # Loop A's first aquery takes the router's worker, then starts it; a loop B that
    # asked in between was handed the same worker (it was not running yet), and A's
    # call failed with EventLoopMismatchError.
    router = AdaptiveRouter(encoder)
    router.add_route(Route(name="billing", utterances=["I need a refund"]))
    taken = router._current_worker()  # what aquery does first, on this loop
    assert not taken.running

    async def elsewhere() -> tuple[str | None, bool]:
        match = await router.aquery("I need a refund")
        return match.name, router.worker is taken

    name, shared = await asyncio.to_thread(_in_a_new_loop, elsewhere)
    assert name == "billing" and not shared
    assert (await router.aquery("I need a refund")).name == "billing"
    assert router.worker is taken and taken.loop is asyncio.get_running_loop()
    await router.stop()


def test_four_threads_each_running_asyncio_run(
    clinc_router: AdaptiveRouter, val_texts: list[str]
) -> None:
    texts = (val_texts * 3)[:100]
    expected = [clinc_router.query(t) for t in texts]
    ready = threading.Barrier(4)

    async def serve() -> list[RouteMatch]:
        await clinc_router.start()
        await asyncio.to_thread(ready.wait)  # all four loops hold a live worker at once
        try:
            return list(await asyncio.gather(*(clinc_router.aquery(t) for t in texts)))
        finally:
            await clinc_router.stop()

    results: list[list[RouteMatch] | BaseException] = [[] for _ in range(4)]

    def run(slot: int) -> None:
        try:
            results[slot] = asyncio.run(serve())
        except BaseException as exc:
            results[slot] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        assert result == expected
    assert not any(w.running for w in clinc_router.workers)


def test_a_loop_closed_without_stop_releases_its_worker(clinc_router: AdaptiveRouter) -> None:
    text = "how do i say thank you in french"
    first = asyncio.run(clinc_router.aquery(text))  # the loop closes, no stop()
    second = asyncio.run(clinc_router.aquery(text))
    assert first == second == clinc_router.query(text)
    assert not any(w.running for w in clinc_router.workers)


async def test_loops_closed_without_stop_leave_no_worker_or_thread_behind() -> None:
    # This loop holds the first worker, so each asyncio.run below gets a worker of its
    # own; each kept its loop, its idle thread and its entry for good (100 runs: 100
    # threads), although "a loop closed without stop() releases its worker by itself".
    router = AdaptiveRouter(HashingEncoder(dimension=64))
    router.add_routes([Route(name="billing", utterances=["I need a refund"])])
    await router.aquery("refund")  # the first worker runs here, with its thread
    before = {t for t in threading.enumerate() if t.name.startswith("synaptoroute-batch")}

    def runs() -> list[str | None]:
        return [asyncio.run(router.aquery("I need a refund")).name for _ in range(20)]

    assert await asyncio.to_thread(runs) == ["billing"] * 20
    assert len(router._loop_workers) <= 2  # this loop's, and the last run's until the next
    left = [
        t
        for t in threading.enumerate()
        if t.name.startswith("synaptoroute-batch") and t not in before
    ]
    for thread in left:
        thread.join(LIMIT_S)  # an executor shut down lets its thread end
    assert not [t for t in left if t.is_alive()]
    assert router.worker.running and (await router.aquery("refund")).name == "billing"
    await router.stop()


def _batch_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("synaptoroute-batch")}


def _served_on(loop: asyncio.AbstractEventLoop, router: AdaptiveRouter) -> threading.Thread:
    """Query ``router`` on ``loop`` (left open) and return its worker's new thread."""
    before = _batch_threads()
    assert loop.run_until_complete(router.aquery("I need a refund")).name == "billing"
    [thread] = _batch_threads() - before
    return thread


def _collected(ref: weakref.ref[Any]) -> bool:
    """Whether ``ref``'s object is collected within LIMIT_S: the executor thread lets go
    of the batch function (a bound method of the worker) only after the caller has
    its answer, so one collection right away may come too early."""
    deadline = time.monotonic() + LIMIT_S
    while True:
        gc.collect()
        if ref() is None:
            return True
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.01)


async def _worker_here(router: AdaptiveRouter) -> BatchWorker[object, object]:
    return router.worker  # type: ignore[return-value]


@pytest.mark.filterwarnings("ignore:unclosed event loop:ResourceWarning")
def test_a_loop_dropped_without_close_takes_its_worker_and_thread_along(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The router maps each loop to its worker weakly by loop, but the worker (its task,
    # its wake-up event) held the loop: the entry kept its own key, and a loop never
    # closed stayed for good with the worker's thread and its own three fds (50 such
    # loops: 50 threads, 150 fds, 50 workers).
    router = AdaptiveRouter(HashingEncoder(dimension=64))
    router.add_routes([Route(name="billing", utterances=["I need a refund"])])
    first = asyncio.new_event_loop()
    first_thread = _served_on(first, router)
    primary = router.worker  # the first loop took the router's own worker
    assert primary.loop is first and primary.running
    second = asyncio.new_event_loop()
    thread = _served_on(second, router)
    worker = second.run_until_complete(_worker_here(router))
    assert worker is not primary and worker.running
    gone_loop, gone_worker = weakref.ref(second), weakref.ref(worker)
    del second, worker
    assert _collected(gone_loop) and _collected(gone_worker)
    thread.join(LIMIT_S)
    assert not thread.is_alive()
    assert router.workers == [primary]  # the other loop's is untouched

    # The first loop too: the router keeps its worker (settings, counts), set free.
    gone_loop = weakref.ref(first)
    del first
    assert _collected(gone_loop)
    first_thread.join(LIMIT_S)
    assert not first_thread.is_alive()
    assert not primary.running and primary.loop is None and router.workers == []
    assert asyncio.run(router.aquery("I need a refund")).name == "billing"
    assert router.worker is primary and primary.stats.items == 2
    # The worker's task went with its loop, idle: nothing was lost, nothing reported.
    assert not [r for r in caplog.records if r.name == "asyncio"]


@pytest.mark.filterwarnings("ignore:unclosed event loop:ResourceWarning")
def test_a_bare_worker_keeps_no_loop_alive() -> None:
    worker: BatchWorker[int, int] = BatchWorker(lambda batch: [n + 1 for n in batch])
    loop = asyncio.new_event_loop()
    assert loop.run_until_complete(worker.submit_one(1)) == 2
    assert worker.loop is loop and worker.running
    gone = weakref.ref(loop)
    del loop
    assert _collected(gone)
    assert worker.loop is None and not worker.running
    assert asyncio.run(worker.submit_one(2)) == 3  # starts afresh on another loop


class _RefusingLoop(asyncio.SelectorEventLoop):
    """A loop that takes no attribute of synaptoroute's."""

    def __setattr__(self, name: str, value: object) -> None:
        if name.startswith("_synaptoroute"):
            raise AttributeError(name)
        super().__setattr__(name, value)


def test_a_worker_runs_on_a_loop_that_takes_no_attributes() -> None:
    # The worker then holds what it runs on the loop itself, as it did before.
    worker: BatchWorker[int, int] = BatchWorker(lambda batch: [n + 1 for n in batch])
    loop = _RefusingLoop()
    try:
        assert loop.run_until_complete(worker.submit_one(1)) == 2
        assert worker.loop is loop and worker.running
        gc.collect()
        assert worker.running  # nothing but the worker holds its task
        assert loop.run_until_complete(worker.submit(list(range(5)))) == [1, 2, 3, 4, 5]
        loop.run_until_complete(worker.stop())
        assert not worker.running and worker.loop is None
    finally:
        loop.close()


async def test_a_router_dropped_while_its_loop_runs_takes_its_worker_and_thread_along() -> None:
    # What the loop holds of a worker (its task) holds no worker while it waits: a
    # loop that outlives its routers does not keep them, nor their threads.
    router = AdaptiveRouter(HashingEncoder(dimension=64))
    router.add_routes([Route(name="billing", utterances=["I need a refund"])])
    before = _batch_threads()
    assert (await router.aquery("I need a refund")).name == "billing"
    [thread] = _batch_threads() - before
    gone = weakref.ref(router.worker)
    del router
    assert await asyncio.to_thread(_collected, gone)
    await asyncio.to_thread(thread.join, LIMIT_S)
    assert not thread.is_alive()


async def test_settings_of_the_first_worker_reach_later_loops(gated: AdaptiveRouter) -> None:
    gated.worker.max_batch_size = 3
    gated.worker.max_queue_cost = 5000
    gated.worker.max_batch_cost = 700
    await gated.start()

    async def settings() -> tuple[int, int, int | None, int | None]:
        worker = gated.worker
        return (
            worker.max_batch_size,
            worker.max_queue_size,
            worker.max_queue_cost,
            worker.max_batch_cost,
        )

    assert await asyncio.to_thread(_in_a_new_loop, settings) == (3, 6, 5000, 700)


async def test_aquery_top_k_matches_query_top_k_off_the_event_loop(encoder: Encoder) -> None:
    recording = RecordingEncoder(encoder)
    router = AdaptiveRouter(recording, cache_size=0)  # nothing cached: every call encodes
    router.add_routes(
        [
            Route(name="billing", utterances=["I need a refund", "Where is my receipt?"]),
            Route(name="support", utterances=["The app crashes", "I can't log in"]),
            Route(name="weather", utterances=["Will it rain tomorrow?"]),
        ]
    )
    recording.clear()
    async with router:
        got = await router.aquery_top_k("How do I get my money back?", k=3)
        assert await router.aquery_top_k("   ", k=2) == []
        with pytest.raises(TypeError):
            await router.aquery_top_k(None)  # type: ignore[arg-type]
    assert got == router.query_top_k("How do I get my money back?", k=3)
    assert got[0].name == "billing" and len(got) == 3
    loop_thread = threading.current_thread().name
    assert recording.thread_names[0].startswith("synaptoroute-batch")
    assert recording.thread_names[0] != loop_thread


async def test_start_compiles_the_index_off_the_loop(encoder: Encoder) -> None:
    router = AdaptiveRouter(encoder)
    router.add_routes(
        [Route(name="a", utterances=["alpha one"]), Route(name="b", utterances=["beta"])]
    )
    assert router.index_stats.compiles == 0  # adds are lazy
    async with router:  # start()
        assert router.index_stats.compiles == 1
        assert (await router.aquery("alpha one")).name == "a"
        assert router.index_stats.compiles == 1  # the first query found it compiled


@pytest.mark.parametrize("cancelled", ["while building", "as the build returns"])
def test_counted_build_releases_a_cancelled_call_once(cancelled: str) -> None:
    # counted_build (the integrations' router caches): the build counts the call in
    # its thread; a call cancelled before it resumes is released exactly once, by
    # whichever of the call and the build ends second.
    released: list[str] = []
    entered, go = threading.Event(), threading.Event()
    tasks: list[asyncio.Task[str]] = []

    def build() -> str:
        entered.set()
        if cancelled == "while building":
            go.wait(LIMIT_S)
        else:  # queued on the loop before the build's result is
            tasks[0].get_loop().call_soon_threadsafe(tasks[0].cancel)
        return "router"

    async def main() -> None:
        tasks.append(asyncio.create_task(counted_build(build, released.append)))
        await asyncio.to_thread(entered.wait, LIMIT_S)
        tasks[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
        go.set()

    asyncio.run(main())  # returns once the build's thread has ended
    assert released == ["router"]


async def test_counted_build_returns_the_build_uncounted_by_itself() -> None:
    released: list[str] = []
    assert await counted_build(lambda: "router", released.append) == "router"
    assert released == []  # the caller releases it once done with it


def test_router_cache_stops_a_retired_router_once_its_last_call_is_done() -> None:
    # RouterCache (the integrations' caches): an evicted router's worker is a thread a
    # long-lived loop would keep; it is stopped at once when no async call is under way
    # on it, else by the last call's release; aclose() stops what is left.
    cache: RouterCache[str, AdaptiveRouter] = RouterCache(threading.Lock(), threading.Lock())
    made: list[AdaptiveRouter] = []

    def make() -> AdaptiveRouter:
        made.append(AdaptiveRouter(HashingEncoder(16)))
        made[-1].add_route(Route(name="greet", utterances=["hello there"]))
        return made[-1]

    async def stopped(router: AdaptiveRouter) -> bool:
        for _ in range(1200):  # a stop is scheduled on this loop: give it turns
            if not any(w.running for w in router.workers):
                return True
            await asyncio.sleep(0.05)
        return False

    async def main() -> None:
        first = cache.build("a", make, size=1, busy=True)  # counts this call
        assert cache.build("a", make, size=1) is first and len(made) == 1  # cached
        await first.aquery("hello")  # its worker starts
        second = cache.build("b", make, size=1)  # evicts the first, busy: not stopped
        assert len(cache) == 1 and cache.get("a") is None
        assert (await first.aquery("hello")).name == "greet"  # the call goes on
        cache.release(first)  # the last call out stops it
        assert await stopped(first) and first not in cache._busy
        await second.aquery("hello")
        third = cache.build("c", make, size=1)  # evicts the second, idle: stopped at once
        assert await stopped(second)
        # Not kept: it serves the call that made it, which stops it on release.
        fourth = cache.build("d", make, size=1, busy=True, keep=lambda: False)
        assert cache.routers() == [third]
        await fourth.aquery("hello")
        cache.release(fourth)
        assert await stopped(fourth)
        await third.aquery("hello")
        await cache.aclose()
        assert not any(w.running for w in third.workers)

    asyncio.run(main())
