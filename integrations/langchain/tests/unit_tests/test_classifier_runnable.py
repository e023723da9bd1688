"""SynaptorouteClassifier: the decision as a Runnable, alone or feeding RouterRunnable."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from langchain_core.runnables import RouterRunnable, RunnableLambda, RunnablePassthrough
from langchain_synaptoroute import (
    SynaptorouteClassifier,
    SynaptorouteMultiClassifier,
    SynaptorouteRouter,
)

from synaptoroute import AdaptiveRouter, Encoder, Route, RouteMatch
from synaptoroute.encoder import EncoderWrapper

if TYPE_CHECKING:
    from conftest import RecordingEncoder, RunRecorder


def test_invoke_returns_the_route_match(
    adaptive_router: AdaptiveRouter, recorder: RunRecorder
) -> None:
    classifier = SynaptorouteClassifier(router=adaptive_router)
    match = classifier.invoke("I want a refund for my order", {"callbacks": [recorder]})
    assert isinstance(match, RouteMatch)
    assert match == adaptive_router.query("I want a refund for my order")
    assert match.name == "billing"
    assert classifier.invoke({"input": "who won the world cup"}).name is None
    (run,) = recorder.roots("SynaptorouteClassifier")
    assert run.outputs == match


def test_batch_is_one_encoder_call_and_keeps_errors_in_place(
    fresh_router: AdaptiveRouter, recording_encoder: RecordingEncoder
) -> None:
    classifier = SynaptorouteClassifier(router=fresh_router, input_key="q")
    inputs: list[Any] = [{"q": "Reset my password"}, {"x": 1}, {"q": "Good morning"}]
    results = classifier.batch(inputs, return_exceptions=True)
    assert recording_encoder.calls == [["Reset my password", "Good morning"]]
    assert [getattr(r, "name", None) for r in results] == ["tech", None, "smalltalk"]
    assert isinstance(results[1], ValueError)
    with pytest.raises(ValueError, match="no key 'q'"):
        classifier.batch(inputs)


async def test_async_matches_sync(adaptive_router: AdaptiveRouter) -> None:
    classifier = SynaptorouteClassifier(router=adaptive_router)
    texts = ["I need a refund", "tell me something funny", "who won the world cup"]
    assert await classifier.abatch(texts) == classifier.batch(texts)
    assert await classifier.ainvoke(texts[0]) == classifier.invoke(texts[0])


async def test_abatch_larger_than_the_workers_queue_is_served_as_batch_is(
    encoder: Encoder, routes: dict[str, list[str]]
) -> None:
    # abatch was refused whole ("can never fit the queue") past max_queue_size, and with
    # a threshold every input got RouterOverloadedError after a partial gather.
    router = AdaptiveRouter(encoder, max_queue_size=8, max_queue_cost=600)
    router.add_routes(Route(name=name, utterances=utts) for name, utts in routes.items())
    texts = [f"{t} {i}" for i in range(4) for t in ("I need a refund", "Reset my password",
             "tell me something funny", "who won the world cup", "x" * 150)]  # fmt: skip
    for threshold in (None, 0.4):
        classifier = SynaptorouteClassifier(router=router, threshold=threshold)
        assert await classifier.abatch(texts) == classifier.batch(texts)
    assert router.worker.queue_depth == 0 and router.worker.queue_cost == 0
    await router.stop()


class _WideTokens(EncoderWrapper):
    """The shared encoder, declaring twice its token limit: its long texts cost twice."""

    max_tokens = 512  # type: ignore[assignment]


async def test_abatch_runs_are_cut_by_what_the_queue_charges_a_long_text(
    encoder: Encoder, routes: dict[str, list[str]]
) -> None:
    # The runs were cut at 4,096 characters a text while the worker charges up to the
    # encoder's token limit (8,192 here): a run that "fit" was refused whole.
    router = AdaptiveRouter(_WideTokens(encoder), max_queue_cost=3 * 4112 + 100)
    assert router.text_cost_cap == 8192
    router.add_routes(Route(name=name, utterances=utts) for name, utts in routes.items())
    texts = [f"I need a refund {i} " + "x" * 8000 for i in range(3)]
    classifier = SynaptorouteClassifier(router=router)
    assert await classifier.abatch(texts) == classifier.batch(texts)
    await router.stop()


def test_output_types_are_route_matches(adaptive_router: AdaptiveRouter) -> None:
    # The generic base left LangChain an unbound TypeVar (an empty output schema).
    one = SynaptorouteClassifier(router=adaptive_router)
    assert one.OutputType is RouteMatch
    assert one.get_output_jsonschema()["properties"]["reason"]["enum"]
    many = SynaptorouteMultiClassifier(router=adaptive_router)
    assert many.OutputType == list[RouteMatch]
    assert many.get_output_jsonschema()["type"] == "array"


def test_as_classifier_shares_router_and_input_reading(adaptive_router: AdaptiveRouter) -> None:
    router = SynaptorouteRouter(
        router=adaptive_router,
        runnables={n: RunnableLambda(lambda x: x) for n in adaptive_router.route_names},
        input_key="question",
    )
    classifier = router.as_classifier()
    assert classifier.router is adaptive_router
    assert classifier.invoke({"question": "Reset my password"}).name == "tech"


def test_computes_the_key_of_a_router_runnable(adaptive_router: AdaptiveRouter) -> None:
    classifier = SynaptorouteClassifier(router=adaptive_router)

    def prefix(name: str) -> RunnableLambda[str, str]:
        return RunnableLambda(lambda x: f"{name}:{x}")

    targets = {name: prefix(name) for name in [*adaptive_router.route_names, "none"]}
    chain = {
        "key": classifier | (lambda m: m.name or "none"),
        "input": RunnablePassthrough(),
    } | RouterRunnable(targets)
    assert chain.invoke("I was charged twice") == "billing:I was charged twice"
    assert chain.invoke("who won the world cup") == "none:who won the world cup"
