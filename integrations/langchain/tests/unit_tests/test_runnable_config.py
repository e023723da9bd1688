"""Per-call settings: threshold and top_k as configurable fields; fit through the Runnable."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

import pytest
from langchain_core.runnables import ConfigurableField, RunnableConfig, RunnableLambda
from langchain_synaptoroute import (
    SynaptorouteClassifier,
    SynaptorouteMultiClassifier,
    SynaptorouteRouter,
)

from synaptoroute import (
    AdaptiveRouter,
    Encoder,
    HashingEncoder,
    InvalidInputError,
    Route,
    RouteNotFoundError,
)
from synaptoroute.decision import DecisionPolicy

if TYPE_CHECKING:
    from conftest import RecordingEncoder

TEXT = "How do I get my money back?"  # billing, scoring between 0.5 and 0.95


def _echo_router(adaptive_router: AdaptiveRouter) -> SynaptorouteRouter[Any, str]:
    return SynaptorouteRouter(
        router=adaptive_router,
        runnables={n: RunnableLambda(lambda _x, n=n: n) for n in adaptive_router.route_names},
        default=RunnableLambda(lambda _x: "default"),
    )


def test_threshold_is_configurable_per_call_without_touching_the_router(
    adaptive_router: AdaptiveRouter,
) -> None:
    score = adaptive_router.query(TEXT).score
    assert 0.5 < score < 0.95
    before = adaptive_router.threshold
    router = _echo_router(adaptive_router).configurable_fields(
        threshold=ConfigurableField(id="threshold", name="Routing threshold")
    )
    assert router.invoke(TEXT) == "billing"
    assert router.invoke(TEXT, {"configurable": {"threshold": 0.95}}) == "default"
    assert router.invoke(TEXT, {"configurable": {"threshold": score - 0.01}}) == "billing"
    assert router.batch([TEXT, TEXT], {"configurable": {"threshold": 0.95}}) == ["default"] * 2
    assert adaptive_router.threshold == before
    assert adaptive_router.query(TEXT).name == "billing"


async def test_async_calls_with_different_thresholds_run_side_by_side(
    adaptive_router: AdaptiveRouter,
) -> None:
    router = _echo_router(adaptive_router).configurable_fields(
        threshold=ConfigurableField(id="threshold")
    )
    strict, loose, plain = await asyncio.gather(
        router.ainvoke(TEXT, {"configurable": {"threshold": 0.95}}),
        router.ainvoke(TEXT, {"configurable": {"threshold": 0.2}}),
        router.ainvoke(TEXT),
    )
    assert (strict, loose, plain) == ("default", "billing", "billing")
    assert await router.abatch([TEXT], {"configurable": {"threshold": 0.95}}) == ["default"]


def test_classifier_threshold_reports_the_per_call_threshold(
    adaptive_router: AdaptiveRouter,
) -> None:
    classifier = SynaptorouteClassifier(router=adaptive_router).configurable_fields(
        threshold=ConfigurableField(id="threshold")
    )
    match = classifier.invoke(TEXT, {"configurable": {"threshold": 0.95}})
    assert match.name is None
    assert match.candidate == "billing"
    assert match.reason == "below_threshold"
    assert match.threshold == 0.95
    assert match.runner_up is not None  # ranked with the runner-up, as a plain query is
    assert classifier.invoke(TEXT).name == "billing"
    assert classifier.invoke("", {"configurable": {"threshold": 0.1}}).reason == "empty_query"


def test_threshold_out_of_range_is_refused(adaptive_router: AdaptiveRouter) -> None:
    router = _echo_router(adaptive_router).configurable_fields(
        threshold=ConfigurableField(id="threshold")
    )
    with pytest.raises(ValueError, match="threshold"):
        router.invoke(TEXT, {"configurable": {"threshold": 1.5}})


def test_top_k_and_threshold_of_the_multi_classifier_are_configurable(
    adaptive_router: AdaptiveRouter,
) -> None:
    classifier = SynaptorouteMultiClassifier(router=adaptive_router, threshold=0.0)
    configurable = classifier.configurable_fields(
        top_k=ConfigurableField(id="top_k"), threshold=ConfigurableField(id="threshold")
    )
    assert configurable.invoke(TEXT)[0].name == "billing"
    assert len(configurable.invoke(TEXT)) == 3
    assert len(configurable.invoke(TEXT, {"configurable": {"top_k": 1}})) == 1
    assert configurable.invoke(TEXT, {"configurable": {"threshold": 0.99}}) == []


def test_configured_calls_follow_routes_added_or_deleted_later(
    fresh_router: AdaptiveRouter,
) -> None:
    # LangChain builds a new router for each configured call: the shared router's
    # changes since the original was built failed every such call at construction.
    plain = _echo_router(fresh_router)
    router = plain.configurable_fields(threshold=ConfigurableField(id="threshold"))
    classifier = SynaptorouteClassifier(router=fresh_router).configurable_fields(
        threshold=ConfigurableField(id="threshold")
    )
    multi = plain.as_multi_router(top_k=1).configurable_fields(
        threshold=ConfigurableField(id="threshold")
    )
    loose = {"configurable": {"threshold": 0.3}}
    fresh_router.delete_route("billing")
    assert router.invoke("the app keeps crashing", loose) == "tech"
    assert router.invoke(TEXT, {"configurable": {"threshold": 0.95}}) == "default"
    assert classifier.invoke("the app keeps crashing", loose).name == "tech"
    assert multi.invoke("the app keeps crashing", loose) == {"tech": "tech"}
    fresh_router.add_route(Route(name="shipping", utterances=["Where is my parcel?"]))
    assert router.batch(["the app keeps crashing"], loose) == ["tech"]
    # As in the plain router, a route without a Runnable fails only the inputs it wins.
    for runnable in (plain, router):
        with pytest.raises(RouteNotFoundError, match="shipping"):
            runnable.invoke("where is my parcel", loose)


def test_branches_set_per_call_are_checked_against_the_routes(
    adaptive_router: AdaptiveRouter,
) -> None:
    router = _echo_router(adaptive_router).configurable_fields(
        runnables=ConfigurableField(id="runnables")
    )
    stale = {"billing": RunnableLambda(lambda _x: "billing")}
    with pytest.raises(
        InvalidInputError, match=r"routes without a Runnable: \['tech', 'smalltalk'\]"
    ):
        router.invoke(TEXT, {"configurable": {"runnables": stale}})


def test_a_per_call_threshold_under_the_routers_keeps_its_min_margin() -> None:
    # "a" and "b" tie at 0.408 on QUERY: under the router's 0.5, where the router
    # itself never judges the margin, a per-call 0.3 took "a" as if there were none.
    adaptive = AdaptiveRouter(HashingEncoder(dimension=4096), threshold=0.5, min_margin=0.1)
    adaptive.add_routes(
        [Route(name="a", utterances=["alpha beta"]), Route(name="b", utterances=["alpha gamma"])]
    )
    query = "alpha delta epsilon"
    assert [round(m.score, 3) for m in adaptive.query_top_k(query, 2)] == [0.408, 0.408]
    classifier = SynaptorouteClassifier(router=adaptive, threshold=0.3)
    match = classifier.invoke(query)
    assert (match.name, match.candidate, match.reason) == (None, "a", "ambiguous")
    assert match.threshold == 0.3
    assert [m.reason for m in classifier.batch([query, "alpha beta"])] == ["ambiguous", "matched"]
    configurable = SynaptorouteClassifier(router=adaptive).configurable_fields(
        threshold=ConfigurableField(id="threshold")
    )
    assert configurable.invoke(query, {"configurable": {"threshold": 0.3}}).reason == "ambiguous"
    router = _echo_router(adaptive).model_copy(update={"threshold": 0.3})
    assert router.invoke(query) == "default"
    assert asyncio.run(router.ainvoke(query)) == "default"
    # Without a margin the per-call threshold alone decides.
    adaptive.set_policy(DecisionPolicy(threshold=0.5))
    assert classifier.invoke(query).reason == "matched"


#: A negative example of the billing route's vocabulary, and a text near that route.
NEGATIVE = "refund my invoice please now"
NEAR = "I want a refund for my order"


def _with_negative(router: AdaptiveRouter) -> None:
    router.add_negatives([NEGATIVE])
    assert router.query(NEGATIVE).reason == "negative_example"
    assert router.query(NEAR).name == "billing"


def _reasons(matches: list[Any]) -> list[tuple[str | None, str, float | None]]:
    return [(m.name, m.reason, m.threshold) for m in matches]


#: What a per-call 0.3 gives NEGATIVE and NEAR: no route for the negative example.
KEPT = [(None, "negative_example", 0.3), ("billing", "matched", 0.3)]
LOOSE: RunnableConfig = {"configurable": {"threshold": 0.3}}


def test_a_per_call_threshold_keeps_the_negative_examples(
    fresh_router: AdaptiveRouter, recording_encoder: RecordingEncoder
) -> None:
    # query_top_k leaves the negative examples out: a per-call threshold matched
    # billing for a text the router itself routes nowhere, and ran billing's branch.
    _with_negative(fresh_router)
    classifier = SynaptorouteClassifier(router=fresh_router, threshold=0.3)
    assert _reasons([classifier.invoke(NEGATIVE), classifier.invoke(NEAR)]) == KEPT
    assert classifier.invoke(NEGATIVE).nearest_utterance == NEGATIVE
    # A batch is still one encoder call (the router's own decision reads the cache),
    # and an input that cannot be read keeps its own error.
    recording_encoder.clear()
    results = classifier.batch([NEGATIVE, TEXT, {"x": 1}], return_exceptions=True)
    assert recording_encoder.calls == [[TEXT]]
    assert _reasons(results[:2]) == KEPT  # TEXT is billing too
    assert isinstance(results[2], ValueError)
    configurable = SynaptorouteClassifier(router=fresh_router).configurable_fields(
        threshold=ConfigurableField(id="threshold")
    )
    assert _reasons(configurable.batch([NEGATIVE, NEAR], LOOSE)) == KEPT
    router = _echo_router(fresh_router).configurable_fields(
        threshold=ConfigurableField(id="threshold")
    )
    assert router.invoke(NEGATIVE, LOOSE) == "default"
    assert router.invoke(NEAR, LOOSE) == "billing"
    assert router.batch([NEGATIVE, NEAR], LOOSE) == ["default", "billing"]
    # Without negative examples the per-call decision is the ranking's alone.
    fresh_router.delete_negatives([NEGATIVE])
    assert classifier.invoke(NEGATIVE).name == "billing"


async def test_an_async_per_call_threshold_keeps_the_negative_examples(
    fresh_router: AdaptiveRouter,
) -> None:
    _with_negative(fresh_router)
    classifier = SynaptorouteClassifier(router=fresh_router, threshold=0.3)
    assert _reasons([await classifier.ainvoke(NEGATIVE), await classifier.ainvoke(NEAR)]) == KEPT
    assert _reasons(await classifier.abatch([NEGATIVE, NEAR])) == KEPT
    assert await classifier.abatch([NEGATIVE, NEAR]) == classifier.batch([NEGATIVE, NEAR])
    router = _echo_router(fresh_router).configurable_fields(
        threshold=ConfigurableField(id="threshold")
    )
    assert await router.ainvoke(NEGATIVE, LOOSE) == "default"
    assert await router.ainvoke(NEAR, LOOSE) == "billing"
    assert await router.abatch([NEGATIVE, NEAR], LOOSE) == ["default", "billing"]
    await fresh_router.stop()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_multi_route_runnables_keep_the_negative_examples(
    fresh_router: AdaptiveRouter, mode: str
) -> None:
    # query_top_k leaves the negative examples out: the multi-route Runnables ran
    # billing's branch (and classified billing) for a text the router routes nowhere.
    _with_negative(fresh_router)
    classifier = SynaptorouteMultiClassifier(router=fresh_router, top_k=3, threshold=0.3)
    multi = _echo_router(fresh_router).as_multi_router(top_k=3, threshold=0.3)
    inputs = [NEGATIVE, NEAR]
    if mode == "sync":
        one, many = classifier.invoke(NEGATIVE), classifier.batch(inputs)
        ran, runs = multi.invoke(NEGATIVE), multi.batch(inputs)
    else:
        one, many = await classifier.ainvoke(NEGATIVE), await classifier.abatch(inputs)
        ran, runs = await multi.ainvoke(NEGATIVE), await multi.abatch(inputs)
        await fresh_router.stop()
    assert one == []
    assert [[m.name for m in matches][:1] for matches in many] == [[], ["billing"]]
    assert ran == {"default": "default"}
    assert runs[0] == ran
    assert runs[1]["billing"] == "billing"


async def test_each_input_is_scored_once_while_the_router_holds_negative_examples(
    fresh_router: AdaptiveRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each input was ranked (query_top_k) and then decided (query) to see whether a
    # negative example was nearest: two scorings, each on its own snapshot.
    _with_negative(fresh_router)
    scored: list[str] = []
    rank_and_decide = fresh_router._rank_and_decide

    def counting(requests: Any, live: list[int], *args: Any) -> None:
        scored.extend(requests[i].text for i in live)
        rank_and_decide(requests, live, *args)

    monkeypatch.setattr(fresh_router, "_rank_and_decide", counting)
    classifier = SynaptorouteClassifier(router=fresh_router, threshold=0.3)
    multi = SynaptorouteMultiClassifier(router=fresh_router, top_k=3, threshold=0.3)
    inputs = [NEGATIVE, NEAR]
    assert _reasons([classifier.invoke(NEGATIVE), *classifier.batch([NEAR])]) == KEPT
    assert [m.name for m in multi.invoke(NEAR)][:1] == ["billing"]
    assert multi.batch(inputs)[0] == []
    assert _reasons(await classifier.abatch(inputs)) == KEPT
    assert await multi.ainvoke(NEGATIVE) == []
    assert scored == [NEGATIVE, NEAR, NEAR, *inputs, *inputs, NEGATIVE]
    await fresh_router.stop()


def test_a_runnable_threshold_does_not_race_other_threads(
    adaptive_router: AdaptiveRouter,
) -> None:
    # Two Runnables over one router with different thresholds, called from threads that
    # start together: each sees its own threshold on every call.
    strict = _echo_router(adaptive_router).model_copy(update={"threshold": 0.95})
    loose = _echo_router(adaptive_router)
    barrier = threading.Barrier(2)
    seen: dict[str, list[str]] = {"strict": [], "loose": []}

    def run(name: str, runnable: SynaptorouteRouter[Any, str]) -> None:
        barrier.wait()
        seen[name] = [runnable.invoke(TEXT) for _ in range(20)]

    threads = [
        threading.Thread(target=run, args=("strict", strict)),
        threading.Thread(target=run, args=("loose", loose)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"strict": ["default"] * 20, "loose": ["billing"] * 20}


def test_fit_is_reachable_from_the_runnable(encoder: Encoder) -> None:
    router = SynaptorouteRouter.from_branches(
        {
            "billing": (["I need a refund", "I was charged twice"], RunnableLambda(lambda x: 1)),
            "tech": (["The app crashes", "I can't log in"], RunnableLambda(lambda x: 2)),
        },
        encoder=encoder,
    )
    texts = [
        "give me my money back",
        "refund my last payment",
        "my account is locked",
        "the app closes by itself",
        "what's the capital of peru",
        "how tall is everest",
    ]
    labels: list[str | None] = ["billing", "billing", "tech", "tech", None, None]
    policy_before = router.router.policy
    report = router.fit(texts, labels, head=False)
    assert report.rows == len(texts)
    assert router.router.policy is not policy_before
    assert isinstance(router.router.policy, DecisionPolicy)


def test_route_added_later_has_no_branch(adaptive_router: AdaptiveRouter, encoder: Encoder) -> None:
    # A multi-route call names only routes with a branch; a route added to the router
    # afterwards is reported clearly rather than silently skipped.
    router = AdaptiveRouter(encoder)
    router.add_routes(Route(name=n, utterances=u) for n, u in [("a", ["I need a refund"])])
    runnable = SynaptorouteRouter(router=router, runnables={"a": RunnableLambda(lambda x: "a")})
    router.add_route(Route(name="b", utterances=["I was charged twice"]))
    multi = runnable.as_multi_router(top_k=2, threshold=0.0)
    with pytest.raises(Exception, match="b"):
        multi.invoke("I was charged twice")
