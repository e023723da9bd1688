"""stream/astream/transform/atransform pass the chosen Runnable's chunks through one by one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.runnables import RunnableGenerator, RunnableLambda
from langchain_synaptoroute import SynaptorouteRouter

from synaptoroute import AdaptiveRouter, NoRouteMatchedError

if TYPE_CHECKING:
    from conftest import RunRecorder

WORDS = ["one", "two", "three"]


def _logged_generator(log: list[str]) -> RunnableGenerator[Any, str]:
    """Yields WORDS, logging each one as it is produced."""

    def produce(inputs: Iterator[Any]) -> Iterator[str]:
        for _ in inputs:
            pass
        for word in WORDS:
            log.append(f"produced {word}")
            yield word

    async def aproduce(inputs: AsyncIterator[Any]) -> AsyncIterator[str]:
        async for _ in inputs:
            pass
        for word in WORDS:
            log.append(f"produced {word}")
            yield word

    return RunnableGenerator(produce, aproduce)


def _router(adaptive_router: AdaptiveRouter, log: list[str]) -> SynaptorouteRouter[Any, Any]:
    runnables: dict[str, Any] = {
        n: RunnableLambda(lambda x: "other") for n in adaptive_router.route_names
    }
    runnables["tech"] = _logged_generator(log)
    return SynaptorouteRouter(router=adaptive_router, runnables=runnables)


INTERLEAVED = [f"{what} {w}" for w in WORDS for what in ("produced", "consumed")]


def test_stream_yields_each_chunk_before_the_next_is_produced(
    adaptive_router: AdaptiveRouter, recorder: RunRecorder
) -> None:
    log: list[str] = []
    router = _router(adaptive_router, log)
    for chunk in router.stream("the app keeps crashing", {"callbacks": [recorder]}):
        log.append(f"consumed {chunk}")
    assert log == INTERLEAVED
    (root,) = recorder.roots("SynaptorouteRouter")
    assert root.outputs == "onetwothree"  # chunks added up, like RunnableBranch
    assert recorder.decision(root).outputs["synaptoroute_route"] == "tech"
    assert [c.tags for c in recorder.branches(root)] == [["route:tech"]]


async def test_astream_yields_each_chunk_before_the_next_is_produced(
    adaptive_router: AdaptiveRouter, recorder: RunRecorder
) -> None:
    log: list[str] = []
    router = _router(adaptive_router, log)
    async for chunk in router.astream("the app keeps crashing", {"callbacks": [recorder]}):
        log.append(f"consumed {chunk}")
    assert log == INTERLEAVED
    (root,) = recorder.roots("SynaptorouteRouter")
    assert root.outputs == "onetwothree"
    assert recorder.decision(root).outputs["synaptoroute_route"] == "tech"
    assert [c.tags for c in recorder.branches(root)] == [["route:tech"]]


def test_transform_routes_the_gathered_input(adaptive_router: AdaptiveRouter) -> None:
    log: list[str] = []
    router = _router(adaptive_router, log)
    assert list(router.transform(iter(["the app ", "keeps crashing"]))) == WORDS


async def test_atransform_routes_the_gathered_input(adaptive_router: AdaptiveRouter) -> None:
    log: list[str] = []
    router = _router(adaptive_router, log)

    async def pieces() -> AsyncIterator[str]:
        for piece in ["the app ", "keeps crashing"]:
            yield piece

    assert [c async for c in router.atransform(pieces())] == WORDS


def test_streams_a_chat_model_token_by_token(adaptive_router: AdaptiveRouter) -> None:
    def model(text: str) -> GenericFakeChatModel:
        return GenericFakeChatModel(messages=iter([AIMessage(text)]))

    runnables = {n: model(f"{n} says hello to you") for n in adaptive_router.route_names}
    router = SynaptorouteRouter(router=adaptive_router, runnables=runnables)
    chunks = list(router.stream([HumanMessage("tell me something funny")]))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert len(chunks) > 1
    assert "".join(str(c.content) for c in chunks) == "smalltalk says hello to you"


def test_stream_without_match_raises_before_any_chunk(adaptive_router: AdaptiveRouter) -> None:
    log: list[str] = []
    stream = _router(adaptive_router, log).stream("who won the world cup")
    with pytest.raises(NoRouteMatchedError):
        next(stream)
    assert log == []


async def test_astream_events_show_the_router_and_the_branch(
    adaptive_router: AdaptiveRouter,
) -> None:
    log: list[str] = []
    router = _router(adaptive_router, log)
    events = [
        (e["event"], e["name"], e["tags"])
        async for e in router.astream_events("the app keeps crashing", version="v2")
    ]
    assert events[0] == ("on_chain_start", "SynaptorouteRouter", [])
    assert events[-1] == ("on_chain_end", "SynaptorouteRouter", [])
    streamed = [name for kind, name, _ in events if kind == "on_chain_stream"]
    assert streamed.count("SynaptorouteRouter") == len(WORDS)
    # The branch's run is named after its route.
    assert ("on_chain_start", "tech", ["route:tech"]) in events
