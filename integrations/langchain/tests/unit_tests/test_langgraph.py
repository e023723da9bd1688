"""LangGraph routing on real graphs and the real model: edges, the router node, fan-out."""

from __future__ import annotations

import json
import operator
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langchain_core.runnables import ConfigurableField, RunnableLambda
from langchain_synaptoroute import SynaptorouteClassifier, SynaptorouteRouter
from langchain_synaptoroute.langgraph import (
    RouteDecision,
    SynaptorouteEdge,
    SynaptorouteFanOut,
    SynaptorouteNode,
)
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel
from typing_extensions import TypedDict

from synaptoroute import (
    AdaptiveRouter,
    InvalidInputError,
    MissingDependencyError,
    Route,
    RouteNotFoundError,
)

if TYPE_CHECKING:
    from conftest import RecordingEncoder

ROUTE_NAMES = ["billing", "tech", "smalltalk"]


class State(MessagesState):
    """Chat messages, the router node's decision, and what each agent node saw."""

    route: RouteDecision
    seen: Annotated[list[str], operator.add]


class QuestionState(TypedDict):
    """A state with the text under ``question`` and no messages."""

    question: str
    seen: Annotated[list[str], operator.add]


def _agent(name: str) -> Callable[[Any], dict[str, Any]]:
    def run(state: Any) -> dict[str, Any]:
        decision = state.get("route") if isinstance(state, dict) else None
        seen = name if decision is None else f"{name}:{decision['route']}"
        return {"seen": [seen]}

    return run


def _graph(state: type[Any] = State, nodes: tuple[str, ...] = (*ROUTE_NAMES, "general")) -> Any:
    graph = StateGraph(state)
    for name in nodes:
        graph.add_node(name, _agent(name))
        graph.add_edge(name, END)
    return graph


def _edges(compiled: CompiledStateGraph[Any, Any, Any, Any]) -> set[tuple[str, str]]:
    return {(e.source, e.target) for e in compiled.get_graph().edges}


def _ask(text: str) -> dict[str, Any]:
    return {"messages": [("user", text)]}


# -- the conditional edge ------------------------------------------------------------


def test_edge_draws_one_edge_per_route_without_a_path_map(
    adaptive_router: AdaptiveRouter,
) -> None:
    graph = _graph()
    edge = SynaptorouteEdge(adaptive_router, default="general")
    graph.add_conditional_edges(START, edge)
    from_start = {t for s, t in _edges(graph.compile()) if s == START}
    assert from_start == {*ROUTE_NAMES, "general"}
    assert edge.destinations == (*adaptive_router.route_names, "general")
    assert edge.path_map == {n: n for n in edge.destinations}


def test_edge_add_to_declares_the_same_edges(adaptive_router: AdaptiveRouter) -> None:
    graph = _graph()
    SynaptorouteEdge(adaptive_router, default="general").add_to(graph, START)
    from_start = {t for s, t in _edges(graph.compile()) if s == START}
    assert from_start == {*ROUTE_NAMES, "general"}


def test_edge_sends_each_text_to_its_route_or_the_default(
    adaptive_router: AdaptiveRouter, labelled: list[tuple[str, str | None]]
) -> None:
    graph = _graph()
    graph.add_conditional_edges(START, SynaptorouteEdge(adaptive_router, default="general"))
    app = graph.compile()
    for text, route in labelled:
        assert app.invoke(_ask(text))["seen"] == [route or "general"], text


async def test_edge_ainvoke_goes_through_the_batching_worker(
    fresh_router: AdaptiveRouter,
    recording_encoder: RecordingEncoder,
    labelled: list[tuple[str, str | None]],
) -> None:
    graph = _graph()
    graph.add_conditional_edges(START, SynaptorouteEdge(fresh_router, default="general"))
    app = graph.compile()
    loop_thread = threading.get_ident()
    for text, route in labelled:
        assert (await app.ainvoke(_ask(text)))["seen"] == [route or "general"], text
    assert fresh_router.worker.stats.items == len(labelled)
    assert recording_encoder.threads  # the worker encoded them, off the event loop
    assert loop_thread not in recording_encoder.threads
    assert app.invoke(_ask("I was charged twice"))["seen"] == ["billing"]
    assert fresh_router.worker.stats.items == len(labelled)  # sync: router.query


def test_edge_defaults_to_end_for_no_match(adaptive_router: AdaptiveRouter) -> None:
    graph = _graph()
    graph.add_conditional_edges(START, SynaptorouteEdge(adaptive_router))
    app = graph.compile()
    assert (START, END) in _edges(app)
    assert app.invoke(_ask("who won the world cup"))["seen"] == []
    assert app.invoke(_ask("I need a refund"))["seen"] == ["billing"]


def test_edge_maps_routes_to_nodes(adaptive_router: AdaptiveRouter) -> None:
    graph = _graph(nodes=("payments", "tech", "smalltalk", "general"))
    edge = SynaptorouteEdge(adaptive_router, default="general", routes={"billing": "payments"})
    graph.add_conditional_edges(START, edge)
    app = graph.compile()
    assert {t for s, t in _edges(app) if s == START} == {
        "payments",
        "tech",
        "smalltalk",
        "general",
    }
    assert app.invoke(_ask("I want a refund for my order"))["seen"] == ["payments"]


@pytest.mark.parametrize(
    "messages",
    [
        [HumanMessage("I want a refund"), AIMessage("Sure."), HumanMessage("the app crashes")],
        [("user", "I want a refund"), ("ai", "Sure."), ("user", "the app crashes")],
        [
            {"role": "user", "content": "I want a refund"},
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": "the app crashes"},
        ],
        [HumanMessage("the app crashes"), AIMessage("I want a refund")],
    ],
    ids=["objects", "tuples", "dicts", "last-is-ai"],
)
def test_edge_routes_the_last_human_message(
    adaptive_router: AdaptiveRouter, messages: list[Any]
) -> None:
    graph = _graph()
    graph.add_conditional_edges(START, SynaptorouteEdge(adaptive_router, default="general"))
    assert graph.compile().invoke({"messages": messages})["seen"] == ["tech"]


def test_edge_reads_a_key_or_a_callable(adaptive_router: AdaptiveRouter) -> None:
    by_key = _graph(QuestionState)
    by_key.add_conditional_edges(
        START, SynaptorouteEdge(adaptive_router, default="general", input_key="question")
    )
    assert by_key.compile().invoke({"question": "I was charged twice"})["seen"] == ["billing"]

    by_callable = _graph(QuestionState)
    extractor = SynaptorouteEdge(
        adaptive_router,
        default="general",
        input_key="not-used",
        text_extractor=lambda state: state["question"].split("|")[1],
    )
    by_callable.add_conditional_edges(START, extractor)
    app = by_callable.compile()
    assert app.invoke({"question": "I need a refund|Good morning"})["seen"] == ["smalltalk"]


def test_edge_takes_the_router_of_a_classifier_or_a_runnable_router(
    adaptive_router: AdaptiveRouter,
) -> None:
    classifier = SynaptorouteClassifier(router=adaptive_router, input_key="messages")
    runnable = SynaptorouteRouter(
        router=adaptive_router, runnables={n: (lambda x: x) for n in ROUTE_NAMES}
    )
    for wrapper in (classifier, runnable):
        graph = _graph()
        graph.add_conditional_edges(START, SynaptorouteEdge(wrapper, default="general"))
        assert graph.compile().invoke(_ask("Reset my password"))["seen"] == ["tech"]


@pytest.mark.parametrize("helper", [SynaptorouteEdge, SynaptorouteNode, SynaptorouteFanOut])
def test_a_wrapper_is_refused_naming_what_to_pass(
    adaptive_router: AdaptiveRouter, helper: Callable[..., Any]
) -> None:
    # A helper reads its router once and queries its AdaptiveRouter itself: what a
    # wrapper does per call (a per-call threshold, retries, fallbacks, config) would be
    # silently dropped. Every wrapper gets the same TypeError, naming what to pass,
    # instead of an AttributeError or a TypeError from deep inside (with_retry,
    # with_fallbacks) or a silent acceptance (with_config).
    runnable = SynaptorouteRouter(
        router=adaptive_router, runnables={n: (lambda x: x) for n in ROUTE_NAMES}
    )
    classifier = SynaptorouteClassifier(router=adaptive_router, input_key="messages")
    threshold = ConfigurableField(id="threshold")
    wrappers: list[Any] = [
        runnable.configurable_fields(threshold=threshold),
        classifier.configurable_fields(threshold=threshold),
        classifier.configurable_alternatives(ConfigurableField(id="which"), other=classifier),
        runnable.with_retry(),
        classifier.with_retry(),
        runnable.with_fallbacks([RunnableLambda(lambda x: x)]),
        runnable.with_config(tags=["support"]),
        runnable.as_multi_router(),
    ]
    for wrapper in wrappers:
        name = type(wrapper).__name__
        with pytest.raises(TypeError, match=rf"not {name}; .*pass the Runnable it wraps"):
            helper(wrapper, default="general")
    graph = _graph()
    graph.add_conditional_edges(START, SynaptorouteEdge(wrappers[0].default, default="general"))
    assert graph.compile().invoke(_ask("Reset my password"))["seen"] == ["tech"]


# -- errors ----------------------------------------------------------------------------


def test_state_without_messages_is_a_clear_error(adaptive_router: AdaptiveRouter) -> None:
    graph = _graph(QuestionState)
    graph.add_conditional_edges(START, SynaptorouteEdge(adaptive_router, default="general"))
    with pytest.raises(InvalidInputError, match=r"no key 'messages' \(keys: 'question'"):
        graph.compile().invoke({"question": "I need a refund"})


def test_a_dict_under_the_input_key_names_the_way_out(adaptive_router: AdaptiveRouter) -> None:
    # The message passed on extract_text's "set input_key= or text_extractor= on the
    # router": input_key already named the state's key, and there is no router option.
    edge = SynaptorouteEdge(adaptive_router, default="general", input_key="ticket")
    with pytest.raises(InvalidInputError) as info:
        edge.routing.text_of({"ticket": {"body": "I need a refund", "id": 3}})
    said = str(info.value)
    assert "'ticket': the input dict has no key 'input' (keys: 'body', 'id')" in said
    assert "pass text_extractor=" in said and "on the router" not in said
    # Nested deeper too: the advice is the graph helper's at every level.
    with pytest.raises(InvalidInputError, match="pass text_extractor=") as info:
        edge.routing.text_of({"ticket": {"input": {"body": "x"}}})
    assert "on the router" not in str(info.value)
    assert edge.routing.text_of({"ticket": {"input": "I need a refund"}}) == "I need a refund"


@pytest.mark.parametrize(
    "messages", [[], [AIMessage("Hello, how can I help?")]], ids=["empty", "only-ai"]
)
def test_messages_without_a_human_message_go_to_the_default(
    adaptive_router: AdaptiveRouter, messages: list[Any]
) -> None:
    # No question asked yet: no text, which matches no route, as an empty message
    # does. It raised, and failed the graph's run, where default= names the node.
    edge = _graph()
    edge.add_conditional_edges(START, SynaptorouteEdge(adaptive_router, default="general"))
    assert edge.compile().invoke({"messages": messages})["seen"] == ["general"]
    out = _node_graph(adaptive_router).compile().invoke({"messages": messages})
    assert out["seen"] == ["general:None"]
    assert (out["route"]["node"], out["route"]["reason"]) == ("general", "empty_query")
    fan = _fan_graph(SynaptorouteFanOut(adaptive_router, default="general"))
    assert fan.invoke({"messages": messages})["seen"] == ["general"]


def test_mapping_an_unknown_route_is_refused(adaptive_router: AdaptiveRouter) -> None:
    with pytest.raises(RouteNotFoundError, match="biling"):
        SynaptorouteEdge(adaptive_router, routes={"biling": "payments"})
    with pytest.raises(InvalidInputError, match="k must be at least 1"):
        SynaptorouteFanOut(adaptive_router, k=0)


def test_a_route_added_after_the_edge_is_a_clear_error(fresh_router: AdaptiveRouter) -> None:
    graph = _graph()
    graph.add_conditional_edges(START, SynaptorouteEdge(fresh_router, default="general"))
    app = graph.compile()
    fresh_router.add_route(Route(name="weather", utterances=["Will it rain tomorrow?"]))
    with pytest.raises(InvalidInputError, match="'weather' was added to the router after"):
        app.invoke(_ask("Will it rain tomorrow?"))


def test_missing_langgraph_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import langchain_synaptoroute

    for name in [m for m in sys.modules if m == "langgraph" or m.startswith("langgraph.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "langchain_synaptoroute.langgraph")
    monkeypatch.delitem(vars(langchain_synaptoroute), "SynaptorouteEdge", raising=False)
    with pytest.raises(
        MissingDependencyError,
        match=r"pip install 'integrations/langchain\[langgraph\]' in a checkout",
    ):
        _ = langchain_synaptoroute.SynaptorouteEdge


# -- the router node -------------------------------------------------------------------


def _node_graph(router: AdaptiveRouter) -> Any:
    graph = _graph()
    SynaptorouteNode(router, default="general").add_to(graph, "router")
    graph.add_edge(START, "router")
    return graph


def test_node_writes_the_decision_and_the_checkpointer_keeps_it(
    adaptive_router: AdaptiveRouter,
) -> None:
    app = _node_graph(adaptive_router).compile(checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": "t1"}}
    out = app.invoke(_ask("the app keeps crashing"), config)
    assert out["seen"] == ["tech:tech"]  # the agent node read the decision from the state
    saved = app.get_state(config).values["route"]
    expected = adaptive_router.query("the app keeps crashing")
    assert saved == {
        "route": "tech",
        "node": "tech",
        "score": expected.score,
        "candidate": "tech",
        "runner_up": expected.runner_up,
        "runner_up_score": expected.runner_up_score,
        "reason": "matched",
    }
    assert json.loads(json.dumps(saved)) == saved

    app.invoke(_ask("who won the world cup"), config)
    saved = app.get_state(config).values["route"]
    assert (saved["route"], saved["node"], saved["reason"]) == (
        None,
        "general",
        "below_threshold",
    )
    assert app.get_state(config).values["seen"] == ["tech:tech", "general:None"]


def test_node_declares_its_destinations(adaptive_router: AdaptiveRouter) -> None:
    edges = _edges(_node_graph(adaptive_router).compile())
    assert {t for s, t in edges if s == "router"} == {*ROUTE_NAMES, "general"}


async def test_node_ainvoke_uses_the_worker_with_a_checkpointer(
    fresh_router: AdaptiveRouter, labelled: list[tuple[str, str | None]]
) -> None:
    app = _node_graph(fresh_router).compile(checkpointer=InMemorySaver())
    for i, (text, route) in enumerate(labelled):
        config: Any = {"configurable": {"thread_id": f"t{i}"}}
        out = await app.ainvoke(_ask(text), config)
        assert out["seen"] == [f"{route or 'general'}:{route}"], text
        assert (await app.aget_state(config)).values["route"]["route"] == route
    assert fresh_router.worker.stats.items == len(labelled)


# -- fan-out -----------------------------------------------------------------------------

TWO_TOPICS = "I can't log in and I want a refund"


def _fan_graph(fan: SynaptorouteFanOut) -> CompiledStateGraph[Any, Any, Any, Any]:
    graph = _graph()
    graph.add_conditional_edges(START, fan)
    return graph.compile()


def test_fan_out_runs_every_matching_node_and_merges_their_updates(
    adaptive_router: AdaptiveRouter,
) -> None:
    top = adaptive_router.query_top_k(TWO_TOPICS, 3)
    assert [m.reason for m in top] == ["matched", "matched", "below_threshold"]
    app = _fan_graph(SynaptorouteFanOut(adaptive_router, default="general"))
    assert sorted(app.invoke(_ask(TWO_TOPICS))["seen"]) == ["billing", "tech"]
    # One topic: one node; none: the default.
    assert app.invoke(_ask("Good morning"))["seen"] == ["smalltalk"]
    assert app.invoke(_ask("who won the world cup"))["seen"] == ["general"]


def test_fan_out_k_and_min_score(adaptive_router: AdaptiveRouter) -> None:
    best = adaptive_router.query(TWO_TOPICS).name
    one = _fan_graph(SynaptorouteFanOut(adaptive_router, k=1, default="general"))
    assert one.invoke(_ask(TWO_TOPICS))["seen"] == [best]
    low = adaptive_router.query_top_k(TWO_TOPICS, 3)[-1].score
    every = _fan_graph(SynaptorouteFanOut(adaptive_router, min_score=low, default="general"))
    assert sorted(every.invoke(_ask(TWO_TOPICS))["seen"]) == sorted(ROUTE_NAMES)
    none = _fan_graph(SynaptorouteFanOut(adaptive_router, min_score=0.99, default="general"))
    assert none.invoke(_ask(TWO_TOPICS))["seen"] == ["general"]


def test_fan_out_payload_carries_each_decision(adaptive_router: AdaptiveRouter) -> None:
    def payload(state: Any, decision: RouteDecision) -> dict[str, Any]:
        return {**state, "route": decision}

    app = _fan_graph(SynaptorouteFanOut(adaptive_router, payload=payload, default="general"))
    assert sorted(app.invoke(_ask(TWO_TOPICS))["seen"]) == ["billing:billing", "tech:tech"]


def test_fan_out_declares_its_destinations(adaptive_router: AdaptiveRouter) -> None:
    app = _fan_graph(SynaptorouteFanOut(adaptive_router, default="general"))
    assert {t for s, t in _edges(app) if s == START} == {*ROUTE_NAMES, "general"}


async def test_fan_out_ainvoke_uses_the_worker(fresh_router: AdaptiveRouter) -> None:
    app = _fan_graph(SynaptorouteFanOut(fresh_router, default="general"))
    assert sorted((await app.ainvoke(_ask(TWO_TOPICS)))["seen"]) == ["billing", "tech"]
    assert (await app.ainvoke(_ask("who won the world cup")))["seen"] == ["general"]
    assert fresh_router.worker.stats.items == 2


async def test_fan_out_sends_nothing_for_a_negative_example(fresh_router: AdaptiveRouter) -> None:
    # query_top_k leaves the negative examples out: the fan-out sent billing a text
    # that the router (and SynaptorouteEdge) routes nowhere.
    negative = "I need a refund for my cat's vet surgery"
    fresh_router.add_negatives([negative])
    assert fresh_router.query(negative).reason == "negative_example"
    app = _fan_graph(SynaptorouteFanOut(fresh_router, min_score=0.3, default="general"))
    assert app.invoke(_ask(negative))["seen"] == ["general"]
    assert (await app.ainvoke(_ask(negative)))["seen"] == ["general"]
    assert "billing" in app.invoke(_ask("I need a refund for my order"))["seen"]
    await fresh_router.stop()


def test_importing_the_package_does_not_import_langgraph() -> None:
    code = (
        "import sys, langchain_synaptoroute as p; "
        "assert 'SynaptorouteEdge' in p.__all__; "
        "assert not any(m.split('.')[0] == 'langgraph' for m in sys.modules), 'imported'; "
        "p.SynaptorouteEdge; "
        "assert 'langgraph' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_classifier_as_path_replaces_the_keyerror_call(adaptive_router: AdaptiveRouter) -> None:
    classifier = SynaptorouteClassifier(router=adaptive_router, input_key="messages")
    # What a new user tries first: the RouteMatch is no key of the path map.
    raw = _graph()
    raw.add_conditional_edges(START, classifier, {n: n for n in (*ROUTE_NAMES, "general")})
    with pytest.raises(KeyError, match="RouteMatch"):
        raw.compile().invoke(_ask("I need a refund"))

    graph = _graph()
    graph.add_conditional_edges(START, classifier.as_path(default="general"))
    app = graph.compile()
    assert {t for s, t in _edges(app) if s == START} == {*ROUTE_NAMES, "general"}
    assert app.invoke(_ask("I need a refund"))["seen"] == ["billing"]
    assert app.invoke(_ask("who won the world cup"))["seen"] == ["general"]
    with pytest.raises(InvalidInputError, match="threshold"):
        classifier.model_copy(update={"threshold": 0.3}).as_path()
    # A state without the classifier's input_key: as_path takes no input_key=, so the
    # message names the classifier's, not options of as_path.
    path = SynaptorouteClassifier(router=adaptive_router).as_path(default="general")
    with pytest.raises(InvalidInputError, match=r"no key 'input'") as missing:
        path.invoke({"messages": [HumanMessage("I need a refund")]})
    assert "build the classifier with input_key=" in str(missing.value)
    assert "pass input_key=" not in str(missing.value)
    # Every helper refuses a wrapper's threshold rather than silently dropping it.
    with pytest.raises(InvalidInputError, match="threshold"):
        SynaptorouteFanOut(classifier.model_copy(update={"threshold": 0.3}))


async def test_fan_out_to_a_route_mapped_to_end_sends_nothing_there(
    adaptive_router: AdaptiveRouter,
) -> None:
    # It built Send("__end__", ...), which LangGraph refuses at run time: the first
    # message matching that route failed the graph (compile() had passed).
    fan = SynaptorouteFanOut(adaptive_router, default="general", routes={"billing": END})
    app = _fan_graph(fan)
    assert app.invoke(_ask(TWO_TOPICS))["seen"] == ["tech"]  # the others run
    assert app.invoke(_ask("I was charged twice")).get("seen", []) == []  # alone: END
    assert (await app.ainvoke(_ask(TWO_TOPICS)))["seen"] == ["tech"]
    assert (await app.ainvoke(_ask("I was charged twice"))).get("seen", []) == []
    assert app.invoke(_ask("who won the world cup"))["seen"] == ["general"]


def test_a_route_decision_in_a_pydantic_state_and_in_the_graphs_schemas(
    adaptive_router: AdaptiveRouter,
) -> None:
    # typing.TypedDict: pydantic refuses it nested in a model before Python 3.12, so a
    # pydantic state holding a RouteDecision failed at run time, and LangGraph's JSON
    # schemas of a graph whose state holds one (LangGraph Server, Studio) failed too.
    class PydanticState(BaseModel):
        messages: Annotated[list[AnyMessage], add_messages] = []
        route: RouteDecision | None = None

    graph = StateGraph(PydanticState)
    for name in (*ROUTE_NAMES, "general"):
        graph.add_node(name, lambda state: {})
        graph.add_edge(name, END)
    SynaptorouteNode(adaptive_router, default="general").add_to(graph, "router")
    graph.add_edge(START, "router")
    out = graph.compile().invoke(_ask("I was charged twice"))
    assert out["route"]["node"] == "billing"
    app = _node_graph(adaptive_router).compile()
    for schema in (app.get_input_jsonschema(), app.get_output_jsonschema()):
        assert "route" in schema["properties"]


def test_a_router_node_warns_of_a_state_key_the_state_lacks(
    adaptive_router: AdaptiveRouter,
) -> None:
    # LangGraph drops an update to a key the state lacks: the decision was lost, and
    # the graph ran as if nothing were wrong.
    plain = StateGraph(MessagesState)
    with pytest.warns(UserWarning, match=r"state_key 'route' is no key .*'messages'"):
        SynaptorouteNode(adaptive_router, default="general").add_to(plain, "router")
    with warnings.catch_warnings():  # a key the state has: no word
        warnings.simplefilter("error")
        SynaptorouteNode(adaptive_router, default="general").add_to(_graph(), "router")
    with pytest.raises(InvalidInputError, match="the key the text is read from"):
        SynaptorouteNode(adaptive_router, default="general", state_key="messages")
    SynaptorouteNode(  # the text comes from the extractor: the key is free
        adaptive_router, default="general", state_key="messages", text_extractor=str
    )
