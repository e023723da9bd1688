"""Async entry points: the batching worker, off the event loop, with the sync results."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_synaptoroute import SynaptorouteRouter

from synaptoroute import AdaptiveRouter, NoRouteMatchedError, RouterTimeoutError

if TYPE_CHECKING:
    from conftest import RecordingEncoder, RunRecorder


def _chain_router(adaptive_router: AdaptiveRouter, **options: Any) -> SynaptorouteRouter[Any, Any]:
    def answer(topic: str) -> Any:
        prompt = ChatPromptTemplate.from_messages([("system", topic), ("human", "{input}")])
        model = FakeListChatModel(responses=[f"{topic} answer"])
        return prompt | model | StrOutputParser() | (lambda s: f"{s} ({topic})")

    return SynaptorouteRouter(
        router=adaptive_router,
        runnables={name: answer(name) for name in adaptive_router.route_names},
        **options,
    )


def _constant(value: str) -> RunnableLambda[Any, str]:
    return RunnableLambda(lambda x: value)


def _tree(recorder: RunRecorder) -> list[tuple[str, list[str], Any, Any, Any]]:
    """Every run as (name, sorted tags, parent's name, route metadata, decided route),
    in start order; the decided route is the ``synaptoroute.route`` run's output."""
    out = []
    for run_id in recorder.order:
        run = recorder.runs[run_id]
        parent = recorder.runs[run.parent_run_id].name if run.parent_run_id else None
        decided = run.outputs["synaptoroute_route"] if run.name == "synaptoroute.route" else None
        route = run.metadata.get("synaptoroute_route")
        out.append((run.name, sorted(run.tags), parent, route, decided))
    return out


async def test_invoke_and_ainvoke_agree(
    adaptive_router: AdaptiveRouter, labelled: list[tuple[str, str | None]]
) -> None:
    router = _chain_router(adaptive_router, default=RunnableLambda(lambda x: "default"))
    for text, _ in labelled:
        value = {"input": text}
        assert await router.ainvoke(value) == router.invoke(value)


async def test_sync_and_async_trace_the_same_tree(
    adaptive_router: AdaptiveRouter, recorder: RunRecorder
) -> None:
    router = _chain_router(adaptive_router)
    sync_rec, async_rec = recorder, type(recorder)()
    router.invoke({"input": "I need a refund"}, {"callbacks": [sync_rec], "tags": ["t"]})
    await router.ainvoke({"input": "I need a refund"}, {"callbacks": [async_rec], "tags": ["t"]})
    assert _tree(sync_rec) == _tree(async_rec)
    assert _tree(sync_rec)[:3] == [
        ("SynaptorouteRouter", ["t"], None, None, None),
        ("synaptoroute.route", ["t"], "SynaptorouteRouter", None, "billing"),
        ("billing", ["route:billing", "t"], "SynaptorouteRouter", "billing", None),
    ]


async def test_batch_and_abatch_agree_on_mixed_inputs(adaptive_router: AdaptiveRouter) -> None:
    router = _chain_router(adaptive_router)
    inputs: list[Any] = [
        {"input": "I was charged twice"},
        {"input": "who won the world cup"},
        {"question": "wrong key"},
        {"input": "the app keeps crashing"},
    ]
    sync = router.batch(inputs, return_exceptions=True)
    asyn = await router.abatch(inputs, return_exceptions=True)
    assert [repr(r) for r in asyn] == [repr(r) for r in sync]
    assert sync[0] == "billing answer (billing)"
    assert isinstance(sync[1], NoRouteMatchedError)
    assert sync[3] == "tech answer (tech)"
    with pytest.raises(NoRouteMatchedError):
        await router.abatch(inputs)


async def test_stream_and_astream_agree(adaptive_router: AdaptiveRouter) -> None:
    router = _chain_router(adaptive_router)
    value = {"input": "hello, how's it going?"}
    chunks = [c async for c in router.astream(value)]
    assert chunks == list(router.stream(value))
    assert "".join(chunks) == "smalltalk answer (smalltalk)"


async def test_ainvoke_and_abatch_use_the_worker_off_the_loop(
    fresh_router: AdaptiveRouter, recording_encoder: RecordingEncoder
) -> None:
    router = SynaptorouteRouter(
        router=fresh_router,
        runnables={n: _constant(n) for n in fresh_router.route_names},
        default=RunnableLambda(lambda x: "default"),
    )
    loop_thread = threading.get_ident()
    texts = ["I want a refund for my order", "the app keeps crashing", "who won the world cup"]
    assert await router.abatch(texts) == ["billing", "tech", "default"]
    assert recording_encoder.calls == [texts]  # one submission, one encoder call
    assert await router.ainvoke("tell me something funny") == "smalltalk"
    assert fresh_router.worker.stats.items == 4
    assert loop_thread not in recording_encoder.threads


async def test_concurrent_ainvokes_share_the_worker(adaptive_router: AdaptiveRouter) -> None:
    router = _chain_router(adaptive_router, default=RunnableLambda(lambda x: "default"))
    texts = ["I need a refund", "Reset my password", "Good morning", "who won the world cup"] * 3
    results = await asyncio.gather(*(router.ainvoke({"input": t}) for t in texts))
    assert results == [router.invoke({"input": t}) for t in texts]


async def test_timeout_reaches_the_worker(adaptive_router: AdaptiveRouter) -> None:
    router = _chain_router(adaptive_router, timeout=0.0)
    with pytest.raises(RouterTimeoutError):
        await router.ainvoke({"input": "a text never seen before by the cache"})
