"""A cancellation or an interrupt, wherever it lands after the router's run started, ends it.

LangChain's ``RunnableBranch`` ends its run when a condition's callbacks are
interrupted; the routers must too, whether the interruption comes while a callback
handler handles the ``synaptoroute.route`` run (a slow, non-inline handler awaited
by the task being cancelled, or a handler raising ``KeyboardInterrupt``) or while
the inputs of a batch wait for a ``max_concurrency`` slot. Every test stops at a
known point: a handler or a branch holds on an ``asyncio.Event`` that is never set,
signals that it got there, and the test cancels the task then.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_synaptoroute import SynaptorouteRouter
from langchain_synaptoroute.router import ROUTE_RUN_NAME

from synaptoroute import AdaptiveRouter

if TYPE_CHECKING:
    from conftest import Run, RunRecorder

REFUND = "I want a refund for my order"
CRASH = "the app keeps crashing"


def _router(adaptive_router: AdaptiveRouter, branch: Any = None) -> SynaptorouteRouter[Any, Any]:
    """Each route (and the default) runs ``branch``; by default it echoes its input."""
    run = branch or (lambda x: x)
    return SynaptorouteRouter(
        router=adaptive_router,
        runnables={name: RunnableLambda(run, name=name) for name in adaptive_router.route_names},
        default=RunnableLambda(run),
    )


def _roots(recorder: RunRecorder) -> list[Run]:
    return [run for run in recorder.runs.values() if run.parent_run_id is None]


def _check_ended(recorder: RunRecorder, error: type[BaseException]) -> None:
    """Every router run (a root run) ended, failed with ``error``."""
    for root in _roots(recorder):
        assert root.ended and isinstance(root.error, error), root


def _route_runs(recorder: RunRecorder) -> list[Run]:
    return [run for run in recorder.runs.values() if run.name == ROUTE_RUN_NAME]


# -- async: a cancellation while a handler handles the route run -----------------------


class _Holding(AsyncCallbackHandler):
    """Holds the route run's start (or end) callback until the awaiting task is cancelled.

    Not inline (``AsyncCallbackHandler``'s default), as a handler that sends runs to a
    remote store: the callback manager awaits it after the inline handlers ran.
    """

    def __init__(self, event: str) -> None:
        self.event = event
        self.route_runs: set[UUID] = set()
        self.reached = asyncio.Event()

    async def _hold(self) -> None:
        self.reached.set()
        await asyncio.Event().wait()  # never set: only the cancellation ends it

    async def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        """Hold a route run's start, when asked to."""
        if kwargs.get("name") == ROUTE_RUN_NAME:
            self.route_runs.add(kwargs["run_id"])
            if self.event == "start":
                await self._hold()

    async def on_chain_end(self, outputs: Any, **kwargs: Any) -> None:
        """Hold a route run's end, when asked to."""
        if self.event == "end" and kwargs["run_id"] in self.route_runs:
            await self._hold()


async def _consume(runnable: Any, config: RunnableConfig) -> list[Any]:
    return [chunk async for chunk in runnable.astream(REFUND, config)]


_AsyncEntry = Callable[[SynaptorouteRouter[Any, Any], RunnableConfig], Awaitable[Any]]
ASYNC_ENTRIES: dict[str, _AsyncEntry] = {
    "router.ainvoke": lambda r, c: r.ainvoke(REFUND, c),
    "router.abatch": lambda r, c: r.abatch([REFUND, CRASH], c),
    "router.astream": lambda r, c: _consume(r, c),
    "multi.ainvoke": lambda r, c: r.as_multi_router().ainvoke(REFUND, c),
    "multi.abatch": lambda r, c: r.as_multi_router().abatch([REFUND, CRASH], c),
}


@pytest.mark.parametrize("event", ["start", "end"])
@pytest.mark.parametrize("entry", list(ASYNC_ENTRIES))
async def test_a_cancellation_in_the_route_runs_callbacks_ends_the_router_runs(
    adaptive_router: AdaptiveRouter, recorder: RunRecorder, entry: str, event: str
) -> None:
    holding = _Holding(event)
    call = ASYNC_ENTRIES[entry](_router(adaptive_router), {"callbacks": [recorder, holding]})
    task = asyncio.ensure_future(call)
    await asyncio.wait_for(holding.reached.wait(), 60)  # a guard: it is reached at once
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(_roots(recorder)) == (2 if entry.endswith("abatch") else 1)
    _check_ended(recorder, asyncio.CancelledError)
    if event == "end":
        # Every route run had ended (inline handlers are called first) with its
        # decision, and is not ended a second time with the cancellation.
        for route_run in _route_runs(recorder):
            assert route_run.ended and route_run.error is None and route_run.outputs
    # With event == "start" the route runs stay open in the inline recorder: the
    # cancellation lands inside LangChain's own on_chain_start, which never returns
    # their run managers (RunnableBranch's conditions' runs stay open alike).


class _HoldingOneStart(AsyncCallbackHandler):
    """Holds the router run's start of one input of a batch (a remote exporter stalled)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.reached = asyncio.Event()

    async def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        """Hold the start of the router run of ``text``."""
        if kwargs.get("parent_run_id") is None and inputs == self.text:
            self.reached.set()
            await asyncio.Event().wait()  # never set: only the cancellation ends it


@pytest.mark.parametrize("multi", [False, True])
async def test_a_cancellation_while_a_batch_starts_its_runs_ends_those_started(
    adaptive_router: AdaptiveRouter, recorder: RunRecorder, multi: bool
) -> None:
    # The batch's router runs were started side by side and kept only once all had
    # started: a cancellation while one start was held lost the others, started and
    # never ended.
    holding = _HoldingOneStart(CRASH)
    router = _router(adaptive_router)
    runnable = router.as_multi_router() if multi else router
    task = asyncio.ensure_future(
        runnable.abatch([REFUND, CRASH], {"callbacks": [recorder, holding]})
    )
    await asyncio.wait_for(holding.reached.wait(), 60)  # a guard: it is reached at once
    # No thread takes part (the recorder is inline, the holder a coroutine): these loop
    # turns let the first input's start return its run manager, whatever the order.
    for _ in range(50):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (first,) = [root for root in _roots(recorder) if root.inputs == REFUND]
    assert first.ended and isinstance(first.error, asyncio.CancelledError)
    # The held input's run stays open: the cancellation landed inside LangChain's own
    # on_chain_start, which never returned its run manager.


@pytest.mark.parametrize("helper", ["_aopen_and_decide", "_aend_runs"])
async def test_a_batch_cancelled_at_any_loop_turn_leaves_no_run_open(
    recorder: RunRecorder, helper: str
) -> None:
    # The two helpers every async entry point opens and ends its runs with, driven
    # with real callback managers and an inline recorder (LangChain's callbacks then
    # never suspend) and a decision or work that takes one loop turn: their own
    # gathers are the only places a cancellation lands, and it is tried at every loop
    # turn until they finish. A gather's tasks cancelled before their first step
    # dropped the ends they were to make, and starts made in advance warned "never
    # awaited". No thread takes part: the turn a cancellation lands at is fixed.
    from langchain_core.callbacks.manager import AsyncCallbackManager
    from langchain_synaptoroute import router as module

    inputs = [REFUND, CRASH, "hi there"]
    owner = RunnableLambda(lambda x: x, name="owner")

    async def decide() -> list[Any]:
        await asyncio.sleep(0)
        return [*inputs[:2], ValueError("unreadable")]

    async def attempt(turns: int) -> bool:
        recorder.runs.clear()
        if helper == "_aopen_and_decide":
            configs: list[RunnableConfig] = [{"callbacks": [recorder]} for _ in inputs]
            call = module._aopen_and_decide(owner, inputs, configs, decide, lambda d: {"d": d})
        else:
            manager = AsyncCallbackManager(handlers=[recorder])
            runs = [await manager.on_chain_start(None, value, name="run") for value in inputs]
            call = module._aend_runs(runs, decide())
        task = asyncio.ensure_future(call)
        # Its first step (as the entry points, which await the helpers in their own
        # task, always take), then ``turns`` more.
        for _ in range(1 + turns):
            await asyncio.sleep(0)
        finished = task.done()
        task.cancel()
        try:
            result = await task
        except asyncio.CancelledError:
            pass
        else:  # the router's runs are the caller's to end once they are returned
            if helper == "_aopen_and_decide":
                for run in result[0]:
                    await run.on_chain_end({})
        still_open = [run for run in recorder.runs.values() if not run.ended]
        assert still_open == [], (turns, still_open)
        return finished

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        turns = 0
        while not await attempt(turns):
            turns += 1
        recorder.runs.clear()
        await asyncio.sleep(0)
        gc.collect()
    assert turns > 1  # the cancellation was tried inside the helper's gathers too
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


async def test_a_cancelled_multi_router_abatch_ends_the_runs_of_inputs_still_queued(
    adaptive_router: AdaptiveRouter, recorder: RunRecorder
) -> None:
    # With max_concurrency=1 one input runs and the others wait for a slot; a
    # cancellation then must end every input's run (each opened before the ranking),
    # not only the running one's, and leave no coroutine unawaited.
    entered = asyncio.Event()

    async def held(value: str) -> str:
        entered.set()
        await asyncio.Event().wait()  # never set: only the cancellation ends it
        return value

    multi = _router(adaptive_router, held).as_multi_router(top_k=1)
    inputs = [REFUND, CRASH, "hello, how's it going?", "tell me something funny"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = asyncio.ensure_future(
            multi.abatch(inputs, {"callbacks": [recorder], "max_concurrency": 1})
        )
        await asyncio.wait_for(entered.wait(), 60)  # a guard: it is reached at once
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sorted(root.inputs for root in _roots(recorder)) == sorted(inputs)
        _check_ended(recorder, asyncio.CancelledError)
        # A coroutine never awaited warns when it is collected: drop what keeps the
        # batch's frames alive (the task, the recorded errors' tracebacks), let the
        # loop run the callback that drops the cancelled tasks, then collect.
        del task
        recorder.runs.clear()
        await asyncio.sleep(0)
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


# -- sync: an interrupt raised by a handler of the route run ---------------------------


class _Interrupting(BaseCallbackHandler):
    """Raises ``KeyboardInterrupt`` in the first route run's start (or end) callback."""

    def __init__(self, event: str) -> None:
        self.event = event
        self.route_runs: set[UUID] = set()

    def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        """Interrupt a route run's start, when asked to."""
        if kwargs.get("name") == ROUTE_RUN_NAME:
            self.route_runs.add(kwargs["run_id"])
            if self.event == "start":
                raise KeyboardInterrupt

    def on_chain_end(self, outputs: Any, **kwargs: Any) -> None:
        """Interrupt a route run's end, when asked to."""
        if self.event == "end" and kwargs["run_id"] in self.route_runs:
            raise KeyboardInterrupt


_SyncEntry = Callable[[SynaptorouteRouter[Any, Any], RunnableConfig], Any]
SYNC_ENTRIES: dict[str, _SyncEntry] = {
    "router.invoke": lambda r, c: r.invoke(REFUND, c),
    "router.batch": lambda r, c: r.batch([REFUND, CRASH], c),
    "router.stream": lambda r, c: list(r.stream(REFUND, c)),
    "router.batch_as_completed": lambda r, c: list(r.batch_as_completed([REFUND, CRASH], c)),
    "multi.invoke": lambda r, c: r.as_multi_router().invoke(REFUND, c),
    "multi.batch": lambda r, c: r.as_multi_router().batch([REFUND, CRASH], c),
}


@pytest.mark.parametrize("event", ["start", "end"])
@pytest.mark.parametrize("entry", list(SYNC_ENTRIES))
def test_an_interrupt_in_the_route_runs_callbacks_ends_the_router_runs(
    adaptive_router: AdaptiveRouter, recorder: RunRecorder, entry: str, event: str
) -> None:
    config: RunnableConfig = {"callbacks": [recorder, _Interrupting(event)]}
    with pytest.raises(KeyboardInterrupt):
        SYNC_ENTRIES[entry](_router(adaptive_router), config)
    assert len(_roots(recorder)) == (2 if "batch" in entry else 1)
    _check_ended(recorder, KeyboardInterrupt)
    first, *others = _route_runs(recorder)
    if event == "end":
        # The first route run ended with its decision before the handler interrupted;
        # it is not ended again. A batch's other route runs end with the interrupt.
        assert first.ended and first.error is None
        for route_run in others:
            assert route_run.ended and isinstance(route_run.error, KeyboardInterrupt)
    else:
        # The interrupt came inside LangChain's on_chain_start of the first route run
        # (its manager never returned): no other route run was started.
        assert others == []
