"""Multi-route: every matching branch runs, in parallel, and the outputs come back by route."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_synaptoroute import (
    SynaptorouteMultiClassifier,
    SynaptorouteMultiRouter,
    SynaptorouteRouter,
)

from synaptoroute import AdaptiveRouter, InvalidInputError, NoRouteMatchedError

if TYPE_CHECKING:
    from conftest import RecordingEncoder, RunRecorder

#: Matches billing and tech well above 0.4, smalltalk below it.
BOTH = "I was charged twice and now the app crashes on start"


def _chat(topic: str) -> Any:
    prompt = ChatPromptTemplate.from_messages([("system", topic), ("human", "{input}")])
    return prompt | FakeListChatModel(responses=[f"{topic} answer"]) | StrOutputParser()


def _router(adaptive_router: AdaptiveRouter, **kwargs: Any) -> SynaptorouteRouter[Any, Any]:
    return SynaptorouteRouter(
        router=adaptive_router,
        runnables={name: _chat(name) for name in adaptive_router.route_names},
        **kwargs,
    )


def test_multi_classifier_returns_every_passing_route(adaptive_router: AdaptiveRouter) -> None:
    ranked = adaptive_router.query_top_k(BOTH, 3)
    assert {m.name for m in ranked[:2]} == {"billing", "tech"}
    assert ranked[1].score > 0.4 > ranked[2].score
    classifier = SynaptorouteMultiClassifier(router=adaptive_router, top_k=3, threshold=0.4)
    matches = classifier.invoke({"input": BOTH})
    assert [m.name for m in matches] == [m.name for m in ranked[:2]]
    assert [(m.threshold, m.reason) for m in matches] == [(0.4, "matched")] * 2
    assert classifier.invoke("who won the world cup") == []
    assert classifier.batch([BOTH, "who won the world cup"]) == [matches, []]


def test_a_route_passing_a_per_call_threshold_reports_it(
    adaptive_router: AdaptiveRouter,
) -> None:
    # Below the router's own 0.5, these kept its verdict: "below_threshold", 0.5.
    text = "who won the world cup"
    ranked = adaptive_router.query_top_k(text, 3)
    assert all(m.reason == "below_threshold" and m.score > 0.01 for m in ranked)
    matches = SynaptorouteMultiClassifier(router=adaptive_router, top_k=3, threshold=0.01).invoke(
        text
    )
    assert [m.name for m in matches] == [m.candidate for m in ranked]
    assert [(m.threshold, m.reason) for m in matches] == [(0.01, "matched")] * 3


async def test_multi_classifier_async_agrees(adaptive_router: AdaptiveRouter) -> None:
    classifier = SynaptorouteMultiClassifier(router=adaptive_router, threshold=0.4)
    inputs = [BOTH, "I need a refund", "who won the world cup"]
    assert await classifier.abatch(inputs) == classifier.batch(inputs)
    assert await classifier.ainvoke(BOTH) == classifier.invoke(BOTH)


def test_without_threshold_each_route_keeps_its_own(adaptive_router: AdaptiveRouter) -> None:
    classifier = SynaptorouteMultiClassifier(router=adaptive_router, top_k=3)
    assert [m.name for m in classifier.invoke("I want a refund for my order")] == ["billing"]


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_multi_router_runs_every_matching_branch(
    adaptive_router: AdaptiveRouter, recorder: RunRecorder, mode: str
) -> None:
    multi = _router(adaptive_router).as_multi_router(top_k=3, threshold=0.4)
    assert isinstance(multi, SynaptorouteMultiRouter)
    config: RunnableConfig = {"callbacks": [recorder]}
    value = {"input": BOTH}
    out = multi.invoke(value, config) if mode == "sync" else await multi.ainvoke(value, config)
    assert out == {"billing": "billing answer", "tech": "tech answer"}
    assert list(out) == [m.name for m in adaptive_router.query_top_k(BOTH, 2)]

    (root,) = recorder.roots("SynaptorouteMultiRouter")
    assert recorder.decision(root).outputs["synaptoroute_routes"] == list(out)
    branches = recorder.branches(root)
    assert sorted(b.name for b in branches) == ["billing", "tech"]
    for branch in branches:
        assert branch.tags == [f"route:{branch.name}"]
        for run in [branch, *recorder.children(branch)]:
            assert run.metadata["synaptoroute_route"] == branch.name


def test_multi_router_branches_run_in_parallel(adaptive_router: AdaptiveRouter) -> None:
    # Each branch waits until both have started: run one after another, this would fail.
    both_started = threading.Barrier(2, timeout=30)

    def branch(name: str) -> RunnableLambda[Any, str]:
        def run(_value: Any) -> str:
            both_started.wait()
            return name

        return RunnableLambda(run)

    router = SynaptorouteRouter(
        router=adaptive_router,
        runnables={name: branch(name) for name in adaptive_router.route_names},
    )
    out = router.as_multi_router(threshold=0.4).invoke(BOTH)
    assert out == {"billing": "billing", "tech": "tech"}


async def test_multi_router_async_branches_run_concurrently(
    adaptive_router: AdaptiveRouter,
) -> None:
    started: dict[str, asyncio.Event] = {n: asyncio.Event() for n in adaptive_router.route_names}

    def branch(name: str) -> RunnableLambda[Any, str]:
        async def run(_value: Any) -> str:
            started[name].set()
            other = "tech" if name == "billing" else "billing"
            await asyncio.wait_for(started[other].wait(), 30)
            return name

        return RunnableLambda(lambda x: x, afunc=run)

    router = SynaptorouteRouter(
        router=adaptive_router,
        runnables={name: branch(name) for name in adaptive_router.route_names},
    )
    out = await router.as_multi_router(threshold=0.4).ainvoke(BOTH)
    assert sorted(out) == ["billing", "tech"]


def test_no_match_runs_the_default_or_raises(adaptive_router: AdaptiveRouter) -> None:
    with_default = _router(adaptive_router, default=RunnableLambda(lambda x: "general"))
    multi = with_default.as_multi_router(threshold=0.4)
    assert multi.invoke("who won the world cup") == {"default": "general"}
    with pytest.raises(NoRouteMatchedError, match="default="):
        _router(adaptive_router).as_multi_router(threshold=0.4).invoke("who won the world cup")


def test_multi_router_graph_has_one_edge_per_route(adaptive_router: AdaptiveRouter) -> None:
    multi = _router(adaptive_router).as_multi_router()
    graph = multi.get_graph()
    (node_id,) = [key for key, node in graph.nodes.items() if node.data is multi]
    assert sorted(str(e.data) for e in graph.edges if e.source == node_id) == sorted(
        adaptive_router.route_names
    )


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_multi_router_batch_ranks_every_input_in_one_encoder_call(
    fresh_router: AdaptiveRouter, recording_encoder: RecordingEncoder, mode: str
) -> None:
    router = SynaptorouteRouter(
        router=fresh_router,
        runnables={n: RunnableLambda(lambda _x, n=n: n) for n in fresh_router.route_names},
    )
    multi = router.as_multi_router(threshold=0.4)
    inputs: list[Any] = [BOTH, "I need a refund", "who won the world cup", {"nope": 1}]
    if mode == "sync":
        out = multi.batch(inputs, return_exceptions=True)
    else:
        out = await multi.abatch(inputs, return_exceptions=True)
    assert out[0] == {"billing": "billing", "tech": "tech"}
    assert out[1] == {"billing": "billing"}
    assert isinstance(out[2], NoRouteMatchedError)
    assert isinstance(out[3], InvalidInputError)
    readable = [t for t in inputs if isinstance(t, str)]
    if mode == "sync":
        assert recording_encoder.calls == [readable]
    else:  # the batching worker may split the submission, never re-encode a text
        assert sorted(t for call in recording_encoder.calls for t in call) == sorted(readable)
    with pytest.raises(NoRouteMatchedError):
        multi.batch(["who won the world cup"])
