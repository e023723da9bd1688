"""Routing to tools (arguments made from the text), and routers that mirror their dict."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import pytest
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.tools import (
    BaseTool,
    InjectedToolArg,
    InjectedToolCallId,
    StructuredTool,
    Tool,
    tool,
)
from langchain_synaptoroute import SynaptorouteRouter

from synaptoroute import AdaptiveRouter, Encoder, InvalidInputError, SQLiteStorage

if TYPE_CHECKING:
    from collections import OrderedDict

CALLS: list[tuple[str, dict[str, Any]]] = []


@tool
def get_weather(city: str) -> str:
    """Get the current weather forecast for a city."""
    CALLS.append(("get_weather", {"city": city}))
    return f"sunny in {city}"


@tool
def convert_currency(amount: float, currency: str) -> str:
    """Convert an amount of money into another currency."""
    CALLS.append(("convert_currency", {"amount": amount, "currency": currency}))
    return f"{amount:.2f} {currency}"


@tool
def tell_time() -> str:
    """Tell the current time of day."""
    return "noon"


def _money(text: str, chosen: BaseTool) -> dict[str, Any]:
    assert chosen.name == "convert_currency"
    amount = next(float(word) for word in text.split() if word.replace(".", "").isdigit())
    return {"amount": amount, "currency": text.split()[-1].upper()}


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    CALLS.clear()


def test_a_tool_with_one_text_field_gets_the_text(encoder: Encoder) -> None:
    router = SynaptorouteRouter.from_tools(
        [get_weather, convert_currency, tell_time],
        args_from_text={"convert_currency": _money},
        utterances={"get_weather": ["will it rain in Paris tomorrow?"]},
        encoder=encoder,
    )
    assert router.invoke({"input": "is it going to rain in Lisbon?"}) == (
        "sunny in is it going to rain in Lisbon?"
    )
    assert CALLS == [("get_weather", {"city": "is it going to rain in Lisbon?"})]
    assert router.invoke("what time is it now?") == "noon"
    assert router.invoke("convert 12.5 dollars into eur") == "12.50 EUR"
    assert CALLS[-1] == ("convert_currency", {"amount": 12.5, "currency": "EUR"})


async def test_tools_run_the_same_way_async(encoder: Encoder) -> None:
    router = SynaptorouteRouter.from_tools(
        [get_weather, convert_currency],
        args_from_text={"convert_currency": _money},
        encoder=encoder,
    )
    assert await router.ainvoke("convert 3 dollars to gbp") == "3.00 GBP"
    assert await router.abatch(
        ["convert 3 dollars to gbp", "current weather forecast in Rome"]
    ) == [
        "3.00 GBP",
        "sunny in current weather forecast in Rome",
    ]


def test_one_converter_for_every_tool(encoder: Encoder) -> None:
    seen: list[str] = []

    def args(text: str, chosen: BaseTool) -> dict[str, Any]:
        seen.append(chosen.name)
        return {"city": "Oslo"} if chosen.name == "get_weather" else {"amount": 1, "currency": "X"}

    router = SynaptorouteRouter.from_tools(
        [get_weather, convert_currency], args_from_text=args, encoder=encoder
    )
    assert router.invoke("weather forecast please") == "sunny in Oslo"
    assert seen == ["get_weather"]


def test_a_tool_needing_more_than_text_fails_at_build_time_naming_its_fields(
    encoder: Encoder,
) -> None:
    with pytest.raises(InvalidInputError, match=r"'convert_currency' takes \(amount: number"):
        SynaptorouteRouter.from_tools([get_weather, convert_currency], encoder=encoder)


@tool
def weather_for(city: str, user: Annotated[str, InjectedToolArg]) -> str:
    """Get the weather forecast for a city."""
    return city


@tool
def take_note(note: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> str:
    """Write a note in the notebook."""
    return note


@tool
def take_note_as(note: str, user: Annotated[str, InjectedToolArg] = "anon") -> str:
    """Write a note in the notebook for a user."""
    return f"{user}: {note}"


def _noted(
    query: str, order: OrderedDict[str, int], call_id: Annotated[str, InjectedToolCallId]
) -> str:
    """A function whose annotations do not all resolve (OrderedDict is imported for
    type checkers only)."""
    return query


def _noted_plainly(query: str, call_id: Annotated[str, InjectedToolCallId]) -> str:
    return query


def test_a_tool_needing_injected_arguments_fails_at_build_time(encoder: Encoder) -> None:
    # Built fine, then every routed call failed inside the tool (pydantic's "Field
    # required", LangChain's "must always be invoked with a full model ToolCall"):
    # tool_call_schema leaves injected arguments (a ToolRuntime too) out, and
    # args_from_text cannot give them.
    for injected, name in ((weather_for, "user"), (take_note, "tool_call_id")):
        with pytest.raises(InvalidInputError, match=f"needs arguments an agent injects \\({name}"):
            SynaptorouteRouter.from_tools([injected], encoder=encoder)
        with pytest.raises(InvalidInputError, match="an agent injects"):
            SynaptorouteRouter.from_tools(
                [injected], encoder=encoder, args_from_text=lambda text, _t: {"note": text}
            )
    # An injected argument with a default is no obstacle, nor a JSON schema (an MCP
    # adapter's tool: its input model has one generated "root" field, refused at first).
    router = SynaptorouteRouter.from_tools([take_note_as], encoder=encoder, threshold=0.0)
    assert router.invoke("write a note: buy milk") == "anon: write a note: buy milk"
    searched = StructuredTool.from_function(
        lambda query: f"found {query}",
        name="web_search",
        description="Search the web",
        args_schema={
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    )
    router = SynaptorouteRouter.from_tools([searched], encoder=encoder, threshold=0.0)
    assert router.invoke("search the web for cats") == "found search the web for cats"
    # With a JSON schema, what an agent injects is read from the function (as
    # LangGraph's ToolNode does): a required parameter the schema does not name.
    injected_search = StructuredTool.from_function(
        lambda query, runtime: f"found {query}",
        name="web_search",
        description="Search the web",
        args_schema={"type": "object", "properties": {"query": {"type": "string"}}},
    )
    with pytest.raises(InvalidInputError, match=r"an agent injects \(runtime"):
        SynaptorouteRouter.from_tools([injected_search], encoder=encoder)
    # Only what is injected: a RunnableConfig of any name, a single-input Tool's
    # parameter of another name, a schema without top-level properties all run.
    schema = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}

    def with_config(query: str, cfg: RunnableConfig) -> str:
        return f"found {query}"

    def look_up(text: str) -> str:
        return f"looked up {text}"

    # This module's annotations are strings (from __future__): read one by one when
    # one of them does not resolve, and through a functools.partial.
    for hidden in (_noted, functools.partial(_noted_plainly)):
        unresolved = StructuredTool(name="s", description="Note", args_schema=schema, func=hidden)
        with pytest.raises(InvalidInputError, match=r"an agent injects \(call_id"):
            SynaptorouteRouter.from_tools([unresolved], encoder=encoder)
    for valid in (
        StructuredTool(name="s", description="Search", args_schema=schema, func=with_config),
        Tool(name="s", description="Look a word up", args_schema=schema, func=look_up),
        StructuredTool(
            name="s",
            description="Search",
            args_schema={"$ref": "#/$defs/I", "$defs": {"I": schema}},
            func=lambda query: f"found {query}",
        ),
    ):
        assert SynaptorouteRouter.from_tools([valid], encoder=encoder, threshold=0.0)


def test_a_tool_with_one_optional_text_field_gets_the_text(encoder: Encoder) -> None:
    # Optional[str] is {"anyOf": [{"type": "string"}, {"type": "null"}]}: it was refused.
    @tool
    def search_web(query: str | None = None) -> str:
        """Search the web for pages about a topic."""
        return f"searched {query}"

    router = SynaptorouteRouter.from_tools(
        [search_web], utterances={"search_web": ["search the web for cats"]}, encoder=encoder
    )
    assert router.invoke("search the web for cats") == "searched search the web for cats"

    @tool
    def count(n: int | None = None) -> str:
        """Count things."""
        return str(n)

    with pytest.raises(InvalidInputError, match=r"'count' takes \(n: integer \| null\)"):
        SynaptorouteRouter.from_tools([count], encoder=encoder)


def test_unknown_tool_names_are_refused(encoder: Encoder) -> None:
    with pytest.raises(InvalidInputError, match=r"utterances names tools .*\['get_wether'\]"):
        SynaptorouteRouter.from_tools(
            [get_weather], utterances={"get_wether": ["rain?"]}, encoder=encoder
        )
    with pytest.raises(InvalidInputError, match="args_from_text"):
        SynaptorouteRouter.from_tools(
            [get_weather], args_from_text={"convert": _money}, encoder=encoder
        )
    with pytest.raises(InvalidInputError, match="several tools are named"):
        SynaptorouteRouter.from_tools([get_weather, get_weather], encoder=encoder)


def test_a_converter_returning_no_dict_is_reported(encoder: Encoder) -> None:
    router = SynaptorouteRouter.from_tools(
        [get_weather],
        args_from_text=lambda text, chosen: text,  # type: ignore[arg-type,return-value]
        encoder=encoder,
        threshold=0.0,
    )
    with pytest.raises(TypeError, match="must return a dict for tool 'get_weather'"):
        router.invoke("weather")


def _branches(names: list[str]) -> dict[str, tuple[list[str], RunnableLambda[Any, str]]]:
    examples = {"billing": ["I need a refund"], "tech": ["The app crashes"], "sales": ["A quote"]}
    return {n: (examples[n], RunnableLambda(lambda _x, n=n: n)) for n in names}


def test_a_router_with_storage_mirrors_its_dict(tmp_path: Path, encoder: Encoder) -> None:
    path = tmp_path / "routes.db"
    first = SynaptorouteRouter.from_branches(
        _branches(["billing", "tech"]), encoder=encoder, storage=SQLiteStorage(path)
    )
    assert sorted(first.router.route_names) == ["billing", "tech"]
    first.router.close()

    # "tech" removed from the code: the next build works and deletes it from the file.
    second = SynaptorouteRouter.from_branches(
        _branches(["billing", "sales"]), encoder=encoder, storage=SQLiteStorage(path)
    )
    assert sorted(second.router.route_names) == ["billing", "sales"]
    assert second.as_classifier().invoke("The app crashes").candidate != "tech"
    second.router.close()
    reopened = AdaptiveRouter(encoder, SQLiteStorage(path))
    assert sorted(reopened.route_names) == ["billing", "sales"]
    reopened.close()


def test_prune_false_keeps_stored_routes(tmp_path: Path, encoder: Encoder) -> None:
    path = tmp_path / "routes.db"
    SynaptorouteRouter.from_branches(
        _branches(["billing", "tech"]), encoder=encoder, storage=SQLiteStorage(path)
    ).router.close()
    with pytest.raises(InvalidInputError, match=r"routes without a Runnable: \['tech'\]"):
        SynaptorouteRouter.from_branches(
            _branches(["billing"]), encoder=encoder, storage=SQLiteStorage(path), prune=False
        )
    reopened = AdaptiveRouter(encoder, SQLiteStorage(path))
    assert sorted(reopened.route_names) == ["billing", "tech"]
    reopened.close()
