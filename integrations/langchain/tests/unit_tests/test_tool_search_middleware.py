"""The tool-search middleware in a real ``create_agent``: the model finds tools by searching."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain.tools import ToolRuntime
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_synaptoroute import (
    SynaptorouteToolSearchMiddleware,
    SynaptorouteToolSelectorMiddleware,
)
from langchain_synaptoroute.tool_search import FOUND_TOOLS_KEY
from langgraph.checkpoint.memory import InMemorySaver

# The selector's tests' tools and recording model: one set of fixtures for both middlewares.
from test_tool_selector_middleware import (
    TOOLS,
    RecordingChatModel,
    book_flight,
    get_weather,
    send_email,
)

from synaptoroute import InvalidInputError

if TYPE_CHECKING:
    from conftest import RecordingEncoder

CONVERT = {"name": "convert_currency", "args": {"amount": 5, "currency": "EUR"}}


def _search(query: str, call_id: str = "s1") -> AIMessage:
    return AIMessage(
        "", tool_calls=[{"name": "search_tools", "args": {"query": query}, "id": call_id}]
    )


def _call(tool_call: dict[str, Any], call_id: str = "c1") -> AIMessage:
    return AIMessage("", tool_calls=[{**tool_call, "id": call_id}])


def _model(*replies: AIMessage | str) -> RecordingChatModel:
    return RecordingChatModel(messages=iter(replies))


def _search_mw(encoder: RecordingEncoder, **kwargs: Any) -> SynaptorouteToolSearchMiddleware:
    return SynaptorouteToolSearchMiddleware(encoder=encoder, **kwargs)


def _tool_texts(result: dict[str, Any]) -> list[str]:
    return [str(m.content) for m in result["messages"] if isinstance(m, ToolMessage)]


def _check_the_search_flow(model: RecordingChatModel, result: dict[str, Any]) -> None:
    # Call 1: the tools not searchable and the search tool; call 2 (after the search)
    # binds the tool found too, the model calls it, and the tool runs.
    assert model.bound[0] == ["search_tools", "get_weather"]
    assert model.bound[1] == ["search_tools", "get_weather", "convert_currency"]
    assert model.bound[2] == model.bound[1]
    search_text, tool_text = _tool_texts(result)
    assert "convert_currency: Convert an amount of money into another currency." in search_text
    assert "book_flight" not in search_text  # max_results=1
    assert tool_text == "5.0 EUR"
    assert result[FOUND_TOOLS_KEY] == ["convert_currency"]


def test_the_model_finds_a_tool_by_searching(recording_encoder: RecordingEncoder) -> None:
    model = _model(_search("convert currencies"), _call(CONVERT), "5 dollars are 5 euros.")
    search = _search_mw(recording_encoder, always_bound=["get_weather"], max_results=1)
    agent = create_agent(model, tools=TOOLS, middleware=[search])
    result = agent.invoke({"messages": [HumanMessage("How much is 5 dollars in euros?")]})
    _check_the_search_flow(model, result)


async def test_the_async_agent_finds_a_tool_by_searching(
    recording_encoder: RecordingEncoder,
) -> None:
    model = _model(_search("convert currencies"), _call(CONVERT), "5 dollars are 5 euros.")
    search = _search_mw(recording_encoder, always_bound=["get_weather"], max_results=1)
    agent = create_agent(model, tools=TOOLS, middleware=[search])
    result = await agent.ainvoke({"messages": [HumanMessage("How much is 5 dollars in euros?")]})
    _check_the_search_flow(model, result)


def test_found_tools_stay_bound_in_their_thread_only(recording_encoder: RecordingEncoder) -> None:
    model = _model(
        _search("convert currencies"),
        "Which amount?",
        _call(CONVERT),
        "5 dollars are 5 euros.",
        "Hello!",
    )
    search = _search_mw(recording_encoder, always_bound=["get_weather"], max_results=1)
    agent = create_agent(model, tools=TOOLS, middleware=[search], checkpointer=InMemorySaver())
    one = {"configurable": {"thread_id": "one"}}
    agent.invoke({"messages": [HumanMessage("I need to convert money")]}, one)
    result = agent.invoke({"messages": [HumanMessage("5 dollars in euros")]}, one)
    assert _tool_texts(result)[-1] == "5.0 EUR"
    agent.invoke({"messages": [HumanMessage("Hi")]}, {"configurable": {"thread_id": "two"}})
    with_found = ["search_tools", "get_weather", "convert_currency"]
    # The second turn starts with the tool found in the first; another thread does not.
    assert model.bound == [
        ["search_tools", "get_weather"],
        with_found,
        with_found,
        with_found,
        ["search_tools", "get_weather"],
    ]


def test_preselect_binds_the_best_tools_for_the_user_message(
    recording_encoder: RecordingEncoder,
) -> None:
    text = "Book a flight to Rome"
    searchable = [t for t in TOOLS if t.name != "get_weather"]
    # The tool selector's ranking: what it would bind with max_tools=1.
    (best,) = SynaptorouteToolSelectorMiddleware(
        encoder=recording_encoder, max_tools=1
    ).select_tools(text, searchable)
    assert best == "book_flight"
    model = _model("Booked.")
    search = _search_mw(recording_encoder, always_bound=["get_weather"], preselect=1)
    create_agent(model, tools=TOOLS, middleware=[search]).invoke({"messages": [HumanMessage(text)]})
    assert model.bound == [["search_tools", "get_weather", "book_flight"]]


async def test_preselect_on_the_async_path(recording_encoder: RecordingEncoder) -> None:
    model = _model("Booked.")
    search = _search_mw(recording_encoder, always_bound=["get_weather"], preselect=1)
    await create_agent(model, tools=TOOLS, middleware=[search]).ainvoke(
        {"messages": [HumanMessage("Book a flight to Rome")]}
    )
    assert model.bound == [["search_tools", "get_weather", "book_flight"]]


def test_a_threshold_leaves_weak_results_out(recording_encoder: RecordingEncoder) -> None:
    model = _model(_search("bake a chocolate cake"), _search("convert currencies", "s2"), "Done.")
    search = _search_mw(recording_encoder, always_bound=["get_weather"], threshold=0.5)
    result = create_agent(model, tools=TOOLS, middleware=[search]).invoke(
        {"messages": [HumanMessage("Bake me a cake, then convert 5 dollars")]}
    )
    nothing, found = _tool_texts(result)
    assert nothing.startswith("No tool matches 'bake a chocolate cake'")
    # Only the tool over the threshold is listed, though max_results is 5.
    assert found.splitlines()[1:] == [
        "- convert_currency: Convert an amount of money into another currency."
    ]
    assert model.bound[1] == ["search_tools", "get_weather"]
    assert model.bound[2] == ["search_tools", "get_weather", "convert_currency"]
    assert result[FOUND_TOOLS_KEY] == ["convert_currency"]


def test_searchable_tools_names_the_deferred_ones(recording_encoder: RecordingEncoder) -> None:
    model = _model("Hi.")
    search = _search_mw(recording_encoder, searchable_tools=["convert_currency", "book_flight"])
    create_agent(model, tools=TOOLS, middleware=[search]).invoke({"messages": [HumanMessage("Hi")]})
    assert model.bound == [
        [
            "search_tools",
            *(t.name for t in TOOLS if t.name not in ("convert_currency", "book_flight")),
        ]
    ]


def test_agents_sharing_an_instance_search_their_own_tools(
    recording_encoder: RecordingEncoder,
) -> None:
    # The search runs in the tool node, which does not see the agent's tools: it
    # searches those of the model call that asked for it, not another agent's.
    search = _search_mw(recording_encoder, always_bound=["get_weather"], max_results=1)
    create_agent(_model("Hi."), tools=TOOLS, middleware=[search]).invoke(
        {"messages": [HumanMessage("Hi")]}
    )
    model = _model(_search("convert currencies"), "I cannot convert money.")
    result = create_agent(model, tools=[get_weather, book_flight], middleware=[search]).invoke(
        {"messages": [HumanMessage("5 dollars in euros?")]}
    )
    (text,) = _tool_texts(result)
    assert "book_flight" in text
    assert "convert_currency" not in text


def test_provider_dicts_and_deferred_tools_pass_through(
    recording_encoder: RecordingEncoder,
) -> None:
    web_search = {"type": "web_search"}
    tools: list[BaseTool | dict[str, Any]] = [get_weather, book_flight, web_search]
    expected = ["search_tools", "get_weather", str(web_search)]
    if "extras" in BaseTool.model_fields:  # a core with provider tool search (>= 1.1)
        deferred = send_email.model_copy(update={"extras": {"defer_loading": True}})
        tools.append(deferred)
        expected.insert(2, "send_email")  # create_agent binds tool objects first
    model = _model("Hi.")
    search = _search_mw(recording_encoder, always_bound=["get_weather"])
    create_agent(model, tools=tools, middleware=[search]).invoke({"messages": [HumanMessage("Hi")]})
    assert model.bound == [expected]


class _ForceTool(AgentMiddleware):
    """Forces a call of one tool, as a caller's or an earlier middleware's tool_choice."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.choice = name

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        return handler(request.override(tool_choice=self.choice))


def test_a_forced_tool_stays_bound(recording_encoder: RecordingEncoder) -> None:
    model = _model("Hi.")
    search = _search_mw(recording_encoder, always_bound=["get_weather"])
    agent = create_agent(model, tools=TOOLS, middleware=[_ForceTool("set_timer"), search])
    agent.invoke({"messages": [HumanMessage("Hi")]})
    assert model.bound == [["search_tools", "get_weather", "set_timer"]]
    assert model.choices == ["set_timer"]


def test_the_search_tool_is_what_a_model_sees(recording_encoder: RecordingEncoder) -> None:
    (default,) = _search_mw(recording_encoder).tools
    spec = convert_to_openai_tool(default)["function"]
    assert spec["name"] == "search_tools"
    assert "capability" in spec["description"]
    assert list(spec["parameters"]["properties"]) == ["query"]
    assert spec["parameters"]["properties"]["query"]["type"] == "string"
    assert spec["parameters"]["required"] == ["query"]
    (custom,) = _search_mw(
        recording_encoder, tool_name="find_tools", tool_description="Find."
    ).tools
    spec = convert_to_openai_tool(custom)["function"]
    assert (spec["name"], spec["description"]) == ("find_tools", "Find.")
    assert list(spec["parameters"]["properties"]) == ["query"]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_results": 0}, "max_results"),
        ({"preselect": -1}, "preselect"),
        ({"threshold": 1.5}, "threshold"),
        ({"searchable_tools": "convert_currency"}, "searchable_tools must be a list"),
        ({"always_bound": [3]}, r"always_bound\[0\]"),
        ({"searchable_tools": ["book_flight"], "always_bound": ["book_flight"]}, "both"),
        ({"tool_name": " "}, "tool_name"),
        ({"tool_description": ""}, "tool_description"),
        ({"always_bound": ["search_tools"]}, "search tool"),
        ({"utterances": {"book_flight": "fly me"}}, "book_flight"),
    ],
)
def test_malformed_settings_are_refused_at_construction(
    recording_encoder: RecordingEncoder, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        _search_mw(recording_encoder, **options)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (
            {"searchable_tools": ["convert_curency"]},
            r"searchable_tools names tools that this model call does not offer: "
            r"\['convert_curency'\].*a middleware listed before this one may have removed",
        ),
        ({"always_bound": ["get_wether"]}, r"always_bound.*get_wether"),
    ],
)
def test_unknown_tool_names_are_refused_when_the_tools_are_seen(
    recording_encoder: RecordingEncoder, options: dict[str, Any], match: str
) -> None:
    agent = create_agent(
        _model("Hi."), tools=TOOLS, middleware=[_search_mw(recording_encoder, **options)]
    )
    with pytest.raises(InvalidInputError, match=match):
        agent.invoke({"messages": [HumanMessage("Hi")]})


def test_a_tool_named_as_the_search_tool_is_refused(recording_encoder: RecordingEncoder) -> None:
    clash = book_flight.model_copy(update={"name": "search_tools"})
    model = _model("Hi.")
    try:
        agent = create_agent(
            model, tools=[get_weather, clash], middleware=[_search_mw(recording_encoder)]
        )
    except ValueError:  # some langchain releases refuse the clash themselves
        return
    with pytest.raises(InvalidInputError, match="search_tools"):
        agent.invoke({"messages": [HumanMessage("Hi")]})


def test_a_search_resumed_in_a_new_process(recording_encoder: RecordingEncoder) -> None:
    # The search tool runs in the tool node, which does not see the model call's tools:
    # a run interrupted before it and resumed by another middleware instance (another
    # process after a restart) searched nothing and answered "No tool matches", telling
    # the model the capability did not exist.
    saver = InMemorySaver()
    config: Any = {"configurable": {"thread_id": "t"}}
    question = {"messages": [HumanMessage("How much is 5 dollars in euros?")]}
    first = create_agent(
        _model(_search("convert currencies")),
        tools=TOOLS,
        middleware=[_search_mw(recording_encoder, always_bound=["get_weather"])],
        checkpointer=saver,
        interrupt_before=["tools"],
    )
    first.invoke(question, config)
    resumed = create_agent(
        _model("Done."),
        tools=TOOLS,
        middleware=[_search_mw(recording_encoder, always_bound=["get_weather"])],
        checkpointer=saver,
    )
    (answer,) = _tool_texts(resumed.invoke(None, config))
    state = resumed.get_state(config).values
    if "tools" in {f.name for f in dataclasses.fields(ToolRuntime)}:
        # LangGraph hands the tool node's tools over: this agent's tools are searched.
        assert "convert_currency" in answer and "get_weather" not in answer
        assert "convert_currency" in state[FOUND_TOOLS_KEY]
    else:
        assert "not available" in answer and "search_tools again" in answer
        assert not state.get(FOUND_TOOLS_KEY)


def test_agents_sharing_an_instance_with_repeated_call_ids(
    recording_encoder: RecordingEncoder,
) -> None:
    # The searchable tools were kept by tool call id alone: two agents sharing the
    # instance whose models repeat ids (some servers, scripted models) searched each
    # other's tools.
    search = _search_mw(recording_encoder)
    saver = InMemorySaver()
    travel = create_agent(
        _model(_search("book a plane ticket", "same"), "ok"),
        tools=[get_weather, book_flight],
        middleware=[search],
        checkpointer=saver,
        interrupt_before=["tools"],
    )
    office = create_agent(
        _model(_search("book a plane ticket", "same"), "ok"),
        tools=[send_email],
        middleware=[search],
        checkpointer=saver,
        interrupt_before=["tools"],
    )
    one: Any = {"configurable": {"thread_id": "travel"}}
    two: Any = {"configurable": {"thread_id": "office"}}
    travel.invoke({"messages": [HumanMessage("fly me to Rome")]}, one)
    office.invoke({"messages": [HumanMessage("write to Bob")]}, two)  # the later model call
    (travel_answer,) = _tool_texts(travel.invoke(None, one))
    (office_answer,) = _tool_texts(office.invoke(None, two))
    assert "book_flight" in travel_answer and "send_email" not in travel_answer
    assert "send_email" in office_answer and "book_flight" not in office_answer


def test_a_search_from_a_model_message_without_an_id(recording_encoder: RecordingEncoder) -> None:
    # A model message returned without an id gets one from the graph afterwards
    # (add_messages): its search was kept under no id and must still be found by its
    # tool call's id, not be taken for a search from an unseen model call.
    search = _search_mw(recording_encoder)
    asked = _search("convert currencies", "call-9")
    assert asked.id is None
    search._remember(asked, [book_flight])
    stamped = asked.model_copy(update={"id": "given-by-the-graph"})
    runtime = SimpleNamespace(state={"messages": [stamped]}, tool_call_id="call-9", tools=None)
    assert search._catalog(runtime) == [book_flight]  # type: ignore[arg-type]
    runtime.tool_call_id = "call-10"  # a search this process never saw, no tool node's tools
    assert search._catalog(runtime) is None  # type: ignore[arg-type]


def test_a_search_asks_the_router_for_the_tools_it_lists(
    recording_encoder: RecordingEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The selector inside had no max_tools: every search (and every preselection)
    # scored all the stored tools to keep max_results of them.
    search = _search_mw(recording_encoder, max_results=2)
    asked: list[int] = []
    ranked = search.selector.router.query_top_k

    def spy(text: str, k: int) -> Any:
        asked.append(k)
        return ranked(text, k)

    monkeypatch.setattr(search.selector.router, "query_top_k", spy)
    found = search._rank(TOOLS, [HumanMessage("convert currencies")], 2)
    assert found[0] == "convert_currency" and len(found) == 2
    assert asked == [2] and len(TOOLS) > 2
