"""SynaptorouteRouter: construction, decisions, errors, schemas, and LCEL composition."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import (
    ConfigurableField,
    RunnableConfig,
    RunnableLambda,
    RunnablePassthrough,
)
from langchain_synaptoroute import SynaptorouteEmbeddings, SynaptorouteRouter

from synaptoroute import (
    AdaptiveRouter,
    Encoder,
    InvalidInputError,
    NoRouteMatchedError,
    Route,
    RouteNotFoundError,
)


def _tagger(name: str) -> RunnableLambda[Any, str]:
    return RunnableLambda(lambda x: f"{name}:{x}")


def test_from_branches_routes_and_falls_back_to_default(
    encoder: Encoder, routes: dict[str, list[str]], labelled: list[tuple[str, str | None]]
) -> None:
    router = SynaptorouteRouter.from_branches(
        {name: (utts, _tagger(name)) for name, utts in routes.items()},
        default=_tagger("default"),
        encoder=encoder,
    )
    for text, expected in labelled:
        assert router.invoke(text) == f"{expected or 'default'}:{text}"
    assert router.invoke("") == "default:"  # an empty query matches nothing


def test_existing_adaptive_router(adaptive_router: AdaptiveRouter) -> None:
    router = SynaptorouteRouter(
        router=adaptive_router,
        runnables={name: _tagger(name) for name in adaptive_router.route_names},
        default=lambda x: "plain function as default",
    )
    assert router.router is adaptive_router
    assert router.invoke("the app keeps crashing") == "tech:the app keeps crashing"
    assert router.invoke("who won the world cup") == "plain function as default"


def test_no_default_and_no_match_raises_a_clear_error(adaptive_router: AdaptiveRouter) -> None:
    router = SynaptorouteRouter(
        router=adaptive_router,
        runnables={name: _tagger(name) for name in adaptive_router.route_names},
    )
    with pytest.raises(NoRouteMatchedError, match=r"best candidate '\w+' scored 0\.\d+") as info:
        router.invoke("What is the boiling point of mercury?")
    assert "pass default=" in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(NoRouteMatchedError, match="empty_query"):
        router.invoke("   ")


def test_construction_checks_runnables_against_routes(adaptive_router: AdaptiveRouter) -> None:
    runnables = {name: _tagger(name) for name in adaptive_router.route_names}
    with pytest.raises(RouteNotFoundError, match="shipping"):
        SynaptorouteRouter(router=adaptive_router, runnables={**runnables, "shipping": _tagger("")})
    with pytest.raises(InvalidInputError, match=r"routes without a Runnable: \['smalltalk'\]"):
        SynaptorouteRouter(
            router=adaptive_router,
            runnables={k: v for k, v in runnables.items() if k != "smalltalk"},
        )


def test_a_route_added_later_without_runnable_is_reported(encoder: Encoder) -> None:
    adaptive = AdaptiveRouter(encoder)
    adaptive.add_route(Route(name="billing", utterances=["I need a refund"]))
    router = SynaptorouteRouter(router=adaptive, runnables={"billing": _tagger("billing")})
    adaptive.add_route(Route(name="tech", utterances=["The app crashes on start"]))
    with pytest.raises(RouteNotFoundError, match="tech"):
        router.invoke("the app keeps crashing")


def test_from_branches_takes_routes_thresholds_and_router_options(encoder: Encoder) -> None:
    strict = Route(name="billing", utterances=["I need a refund"], threshold=0.95)
    router = SynaptorouteRouter.from_branches(
        {"billing": (strict, _tagger("billing")), "tech": (["I can't log in"], _tagger("tech"))},
        default=_tagger("default"),
        encoder=encoder,
        threshold=0.3,
    )
    assert router.router.threshold == 0.3
    # Close to the billing example, but under the route's own 0.95 threshold.
    assert router.invoke("I want a refund please").startswith("default:")
    assert router.invoke("I cannot log in").startswith("tech:")

    with pytest.raises(InvalidInputError, match="filed under 'refunds'"):
        SynaptorouteRouter.from_branches({"refunds": (strict, _tagger("x"))}, encoder=encoder)
    with pytest.raises(InvalidInputError, match="not one str"):
        SynaptorouteRouter.from_branches({"billing": ("I need a refund", _tagger("x"))})


def test_from_branches_accepts_langchain_embeddings(encoder: Encoder) -> None:
    embeddings = SynaptorouteEmbeddings(encoder=encoder)
    router = SynaptorouteRouter.from_branches(
        {"billing": (["I need a refund"], _tagger("billing"))}, encoder=embeddings
    )
    # SynaptorouteEmbeddings is unwrapped to its encoder rather than adapted.
    assert router.router.encoder is encoder
    assert router.invoke("I want my money back") == "billing:I want my money back"


def test_input_schema_and_config_specs_delegate_to_branches(
    adaptive_router: AdaptiveRouter,
) -> None:
    prompt = ChatPromptTemplate.from_template("Answer about billing: {input}")
    model = FakeListChatModel(responses=["fixed"]).configurable_fields(
        responses=ConfigurableField(id="answers", name="Canned answers")
    )
    runnables = {name: _tagger(name) for name in adaptive_router.route_names}
    runnables["billing"] = prompt | model | StrOutputParser()  # type: ignore[assignment]
    router = SynaptorouteRouter(router=adaptive_router, runnables=runnables)

    schema = router.get_input_jsonschema()
    assert schema["properties"] == {"input": {"title": "Input", "type": "string"}}
    assert [spec.id for spec in router.config_specs] == ["answers"]

    # The configurable value reaches the chosen branch.
    config: RunnableConfig = {"configurable": {"answers": ["configured"]}}
    assert router.invoke({"input": "I need a refund"}, config) == "configured"
    assert router.invoke({"input": "I need a refund"}) == "fixed"


def test_composes_with_pipe_fallbacks_retry_and_config(adaptive_router: AdaptiveRouter) -> None:
    runnables = {name: _tagger(name) for name in adaptive_router.route_names}
    strict = SynaptorouteRouter(router=adaptive_router, runnables=runnables)

    chain = {"input": RunnablePassthrough()} | strict | (lambda s: s.upper())
    assert (
        chain.invoke("I want a refund for my order")
        == "BILLING:{'INPUT': 'I WANT A REFUND FOR MY ORDER'}"
    )

    llm_fallback: RunnableLambda[Any, str] = RunnableLambda(lambda x: "asked the LLM")
    guarded = strict.with_fallbacks([llm_fallback], exceptions_to_handle=(NoRouteMatchedError,))
    assert guarded.invoke("who won the world cup") == "asked the LLM"
    assert guarded.invoke("the app keeps crashing") == "tech:the app keeps crashing"

    attempts: list[str] = []

    def flaky(x: str) -> str:
        attempts.append(x)
        if len(attempts) == 1:
            msg = "transient"
            raise ConnectionError(msg)
        return "recovered"

    retrying = SynaptorouteRouter(
        router=adaptive_router, runnables={**runnables, "tech": RunnableLambda(flaky)}
    ).with_retry(stop_after_attempt=2, retry_if_exception_type=(ConnectionError,))
    assert retrying.invoke("the app keeps crashing") == "recovered"
    assert attempts == ["the app keeps crashing"] * 2

    seen: list[RunnableConfig] = []

    def capture(x: str, config: RunnableConfig) -> str:
        seen.append(config)
        return x

    configured = SynaptorouteRouter(
        router=adaptive_router, runnables={**runnables, "billing": RunnableLambda(capture)}
    ).with_config(tags=["support"], metadata={"tenant": "acme"}, recursion_limit=7)
    configured.invoke("I need a refund")
    assert "support" in seen[0]["tags"]
    assert seen[0]["metadata"]["tenant"] == "acme"
    assert seen[0]["recursion_limit"] == 7


def test_kwargs_reach_the_chosen_runnable(adaptive_router: AdaptiveRouter) -> None:
    received: list[dict[str, Any]] = []

    def record(x: str, **kwargs: Any) -> str:
        received.append(kwargs)
        return x

    runnables = {name: RunnableLambda(record) for name in adaptive_router.route_names}
    router = SynaptorouteRouter(router=adaptive_router, runnables=runnables)
    router.invoke("I need a refund", None, stop=["\n"])
    assert received == [{"stop": ["\n"]}]
