"""The decision is traced inside the router's run, as a ``synaptoroute.route`` child run.

LangChain's own tracer (``BaseTracer``) records the runs here, and the shared real
encoder is wrapped to count its calls: each run's start and end is logged with the
number of encoder calls made by then, so the order of embedding and runs is checked
without timing anything.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, cast

import pytest
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.tracers import BaseTracer
from langchain_synaptoroute import SynaptorouteMultiRouter, SynaptorouteRouter
from langchain_synaptoroute.router import ROUTE_RUN_NAME

from synaptoroute import AdaptiveRouter

if TYPE_CHECKING:
    from langchain_core.tracers.schemas import Run

    from synaptoroute.testing import RecordingEncoder

REFUND = "I want a refund for my order"
CRASH = "the app keeps crashing"
#: Matches billing and tech well above 0.4 (as in test_runnable_multi).
BOTH = "I was charged twice and now the app crashes on start"


class _Timeline(BaseTracer):
    """A LangChain tracer that logs (event, run name, encoder calls so far) per chain run."""

    run_inline = True  # in event order, also under async callback managers

    def __init__(self, encoder: RecordingEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.events: list[tuple[str, str, int]] = []
        self.traces: list[Run] = []

    def _persist_run(self, run: Run) -> None:
        self.traces.append(run)  # a finished root run, its child runs filled in

    def _log(self, event: str, run: Run) -> None:
        self.events.append((event, run.name, len(self.encoder.calls)))

    def _on_chain_start(self, run: Run) -> None:
        self._log("start", run)

    def _on_chain_end(self, run: Run) -> None:
        self._log("end", run)

    def _on_chain_error(self, run: Run) -> None:
        self._log("error", run)


def _router(adaptive_router: AdaptiveRouter, **branches: Any) -> SynaptorouteRouter[Any, str]:
    """Each route's branch answers ``"<route>: <input>"``, unless given in ``branches``."""

    def answer(route: str) -> RunnableLambda[str, str]:
        return RunnableLambda(lambda x: f"{route}: {x}")

    runnables: dict[str, Any] = {n: answer(n) for n in adaptive_router.route_names}
    return SynaptorouteRouter(
        router=adaptive_router,
        runnables={**runnables, **branches},
        default=RunnableLambda(lambda x: "general"),
    )


def _check_tree(root: Run, text: str, route: str) -> None:
    """``root`` is a router run whose first child decided ``text`` for ``route``."""
    decision, branch = root.child_runs
    assert decision.name == ROUTE_RUN_NAME and decision.run_type == "chain"
    assert decision.parent_run_id == root.id and decision.error is None
    assert decision.inputs == {"input": text}  # the router's input, as LangChain records it
    assert decision.outputs is not None
    assert decision.outputs["synaptoroute_route"] == route
    assert decision.outputs["synaptoroute_candidate"] == route
    assert decision.outputs["synaptoroute_reason"] == "matched"
    assert 0.5 <= decision.outputs["synaptoroute_score"] <= 1.0
    assert decision.end_time is not None  # ended, before the branch started (the timeline)
    # The branch still carries the decision as metadata (as before, for every run below).
    assert branch.name == route and branch.tags == [f"route:{route}"]
    assert branch.extra["metadata"]["synaptoroute_route"] == route
    assert branch.extra["metadata"]["synaptoroute_score"] == decision.outputs["synaptoroute_score"]


@pytest.mark.parametrize("mode", ["invoke", "ainvoke", "stream", "astream"])
async def test_one_input_is_embedded_inside_the_route_run(
    fresh_router: AdaptiveRouter, recording_encoder: RecordingEncoder, mode: str
) -> None:
    router = _router(fresh_router)
    tracer = _Timeline(recording_encoder)
    config: RunnableConfig = {"callbacks": [tracer]}
    if mode == "invoke":
        out = router.invoke(REFUND, config)
    elif mode == "ainvoke":
        out = await router.ainvoke(REFUND, config)
    elif mode == "stream":
        out = "".join(router.stream(REFUND, config))
    else:
        out = "".join([chunk async for chunk in router.astream(REFUND, config)])
    assert out == f"billing: {REFUND}"
    assert recording_encoder.calls == [[REFUND]]
    # The router's run opens before the embedding, the route run spans it.
    assert tracer.events == [
        ("start", "SynaptorouteRouter", 0),
        ("start", ROUTE_RUN_NAME, 0),
        ("end", ROUTE_RUN_NAME, 1),
        ("start", "billing", 1),
        ("end", "billing", 1),
        ("end", "SynaptorouteRouter", 1),
    ]
    (root,) = tracer.traces
    _check_tree(root, REFUND, "billing")


@pytest.mark.parametrize("mode", ["batch", "abatch", "batch_as_completed"])
async def test_a_batch_is_embedded_once_inside_every_route_run(
    fresh_router: AdaptiveRouter, recording_encoder: RecordingEncoder, mode: str
) -> None:
    router = _router(fresh_router)
    tracer = _Timeline(recording_encoder)
    inputs = [REFUND, CRASH]
    config: RunnableConfig = {"callbacks": [tracer], "max_concurrency": 1}
    if mode == "batch":
        outs = router.batch(inputs, config)
    elif mode == "abatch":
        outs = await router.abatch(inputs, config)
    else:
        outs = [out for _, out in sorted(router.batch_as_completed(inputs, config))]
    assert outs == [f"billing: {REFUND}", f"tech: {CRASH}"]
    assert recording_encoder.calls == [inputs]  # one encoder call for the batch
    # Both runs and both route runs open before the one embedding; each route run ends
    # after it, before any branch starts.
    opened = [e for e in tracer.events if e[2] == 0]
    assert sorted(opened) == sorted(
        [("start", "SynaptorouteRouter", 0)] * 2 + [("start", ROUTE_RUN_NAME, 0)] * 2
    )
    assert tracer.events[4:6] == [("end", ROUTE_RUN_NAME, 1)] * 2
    by_input = {root.inputs["input"]: root for root in tracer.traces}
    _check_tree(by_input[REFUND], REFUND, "billing")
    _check_tree(by_input[CRASH], CRASH, "tech")


@pytest.mark.parametrize("mode", ["invoke", "ainvoke", "batch", "abatch"])
async def test_the_multi_router_ranks_inside_the_route_run(
    fresh_router: AdaptiveRouter, recording_encoder: RecordingEncoder, mode: str
) -> None:
    multi = _router(fresh_router).as_multi_router(top_k=3, threshold=0.4)
    assert isinstance(multi, SynaptorouteMultiRouter)
    tracer = _Timeline(recording_encoder)
    config: RunnableConfig = {"callbacks": [tracer]}
    if mode == "invoke":
        outs = [multi.invoke(BOTH, config)]
    elif mode == "ainvoke":
        outs = [await multi.ainvoke(BOTH, config)]
    elif mode == "batch":
        outs = multi.batch([BOTH], config)
    else:
        outs = await multi.abatch([BOTH], config)
    (out,) = outs
    assert sorted(out) == ["billing", "tech"]
    assert recording_encoder.calls == [[BOTH]]
    assert tracer.events[:3] == [
        ("start", "SynaptorouteMultiRouter", 0),
        ("start", ROUTE_RUN_NAME, 0),
        ("end", ROUTE_RUN_NAME, 1),
    ]
    (root,) = tracer.traces
    decision, *branches = root.child_runs
    assert decision.name == ROUTE_RUN_NAME and decision.inputs == {"input": BOTH}
    assert decision.outputs is not None
    assert decision.outputs["synaptoroute_routes"] == list(out)
    assert len(decision.outputs["synaptoroute_scores"]) == 2
    assert sorted(b.name for b in branches) == ["billing", "tech"]


def test_an_unreadable_input_fails_the_route_run_and_the_router_run(
    fresh_router: AdaptiveRouter, recording_encoder: RecordingEncoder
) -> None:
    tracer = _Timeline(recording_encoder)
    with pytest.raises(TypeError):
        _router(fresh_router).invoke(12, {"callbacks": [tracer]})
    assert tracer.events == [
        ("start", "SynaptorouteRouter", 0),
        ("start", ROUTE_RUN_NAME, 0),
        ("error", ROUTE_RUN_NAME, 0),
        ("error", "SynaptorouteRouter", 0),
    ]
    (root,) = tracer.traces
    (decision,) = root.child_runs
    assert decision.error is not None and "TypeError" in decision.error


async def test_astream_events_shows_the_route_run_under_the_router(
    fresh_router: AdaptiveRouter,
) -> None:
    router = _router(fresh_router).with_config(run_name="support")
    events = [e async for e in router.astream_events(REFUND, version="v2")]
    (start,) = [e for e in events if e["event"] == "on_chain_start" and e["name"] == "support"]
    (decided,) = [e for e in events if e["event"] == "on_chain_end" and e["name"] == ROUTE_RUN_NAME]
    assert decided["parent_ids"] == [start["run_id"]]
    assert decided["data"]["output"]["synaptoroute_route"] == "billing"
    names = [e["name"] for e in events if e["event"] == "on_chain_start"]
    assert names == ["support", ROUTE_RUN_NAME, "billing"]


def test_batch_as_completed_ends_the_runs_of_inputs_it_never_runs(
    fresh_router: AdaptiveRouter, recording_encoder: RecordingEncoder
) -> None:
    # Every input's run opens before the one embedding; a caller that stops early
    # leaves queued inputs unrun, whose runs must still end (with CancelledError).
    release = threading.Event()

    class Releasing(_Timeline):
        def _on_chain_error(self, run: Run) -> None:
            super()._on_chain_error(run)
            release.set()  # the cancelled input's run ended: let the running one finish

    def held(x: str) -> str:
        release.wait(30)
        return f"tech: {x}"

    router = _router(fresh_router, tech=RunnableLambda(held))
    tracer = Releasing(recording_encoder)
    inputs = [REFUND, CRASH, "Reset my password"]  # one worker: billing, then held tech
    results = cast(
        "Generator[tuple[int, str], None, None]",
        router.batch_as_completed(inputs, {"callbacks": [tracer], "max_concurrency": 1}),
    )
    assert next(results) == (0, f"billing: {REFUND}")
    results.close()
    assert len(tracer.traces) == 3  # every router run ended
    by_input = {root.inputs["input"]: root for root in tracer.traces}
    assert by_input[REFUND].error is None
    # The second input was running (it finished) or still queued (cancelled).
    second = by_input[CRASH].error
    assert second is None or "CancelledError" in second
    cancelled = by_input["Reset my password"]
    assert cancelled.error is not None and "CancelledError" in cancelled.error
    assert [c.name for c in cancelled.child_runs] == [ROUTE_RUN_NAME]
