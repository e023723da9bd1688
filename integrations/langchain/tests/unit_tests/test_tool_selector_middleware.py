"""The tool-selector middleware in a real ``create_agent``: the model sees only selected tools."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain.agents.structured_output import ProviderStrategy, ToolStrategy
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langchain_synaptoroute import SynaptorouteToolSelectorMiddleware
from langchain_synaptoroute import middleware as middleware_module
from pydantic import BaseModel, Field

from synaptoroute import AdaptiveRouter, InvalidInputError, Route, RouteMatch, SQLiteStorage
from synaptoroute.testing import hold_until_the_fork, in_forked_child

if TYPE_CHECKING:
    from conftest import RecordingEncoder

LIMIT_S = 30.0  # a hang guard: reaching it fails the test


@tool
def get_weather(city: str) -> str:
    """Get the current weather forecast for a city."""
    return f"sunny in {city}"


@tool
def convert_currency(amount: float, currency: str) -> str:
    """Convert an amount of money into another currency."""
    return f"{amount} {currency}"


@tool
def book_flight(destination: str) -> str:
    """Book a plane ticket to a destination."""
    return f"booked to {destination}"


@tool
def send_email(to: str, body: str) -> str:
    """Send an email message to someone."""
    return "sent"


@tool
def set_timer(minutes: int) -> str:
    """Set a countdown timer for some minutes."""
    return "timer set"


@tool
def search_docs(query: str) -> str:
    """Search the company's internal documentation."""
    return "found"


TOOLS: list[BaseTool] = [
    get_weather,
    convert_currency,
    book_flight,
    send_email,
    set_timer,
    search_docs,
]


class RecordingChatModel(GenericFakeChatModel):
    """A fake chat model that records the tool names (and the tool choice) it is bound
    with on each call."""

    bound: list[list[str]] = Field(default_factory=list)
    choices: list[Any] = Field(default_factory=list)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> RecordingChatModel:  # type: ignore[override]
        """Record the tools' names; the model itself answers from its script."""
        self.bound.append([t.name if isinstance(t, BaseTool) else str(t) for t in tools])
        self.choices.append(kwargs.get("tool_choice"))
        return self


def _model(*replies: AIMessage | str) -> RecordingChatModel:
    return RecordingChatModel(messages=iter(replies))


def _selector(encoder: RecordingEncoder, **kwargs: Any) -> SynaptorouteToolSelectorMiddleware:
    return SynaptorouteToolSelectorMiddleware(encoder=encoder, **kwargs)


def test_the_model_sees_only_the_selected_tools(recording_encoder: RecordingEncoder) -> None:
    model = _model("It will be sunny.")
    agent = create_agent(model, tools=TOOLS, middleware=[_selector(recording_encoder, max_tools=2)])
    agent.invoke({"messages": [HumanMessage("Will it rain in Paris tomorrow?")]})
    (bound,) = model.bound
    assert len(bound) == 2
    assert "get_weather" in bound
    # The selected tools keep the agent's order.
    assert bound == [t.name for t in TOOLS if t.name in bound]


def test_a_message_the_harness_added_is_not_routed_on(recording_encoder: RecordingEncoder) -> None:
    # A background task's update (add_notification_metadata) or SummarizationMiddleware's
    # summary is a human message the user did not type: the selector routed on it and
    # dropped the tools of the user's request.
    text = "Will it rain in Paris tomorrow?"
    selector = _selector(recording_encoder, max_tools=2)
    expected = selector.select_tools(text, TOOLS)
    update = HumanMessage(
        "Background task finished: the email to Bob was sent.",
        additional_kwargs={"lc_source": "async_subagent"},
    )
    model = _model("It will be sunny.")
    create_agent(model, tools=TOOLS, middleware=[selector]).invoke(
        {"messages": [HumanMessage(text), update]}
    )
    assert model.bound == [[t.name for t in TOOLS if t.name in expected]]
    # Only the harness's message: no user text, every tool stays bound.
    summary = HumanMessage("Summary: emails", additional_kwargs={"lc_source": "summarization"})
    model = _model("Done.")
    create_agent(model, tools=TOOLS, middleware=[selector]).invoke({"messages": [summary]})
    assert model.bound == [[t.name for t in TOOLS]]


def test_deferred_tools_pass_through(recording_encoder: RecordingEncoder) -> None:
    # A tool deferred behind a provider's tool search (extras["defer_loading"], as
    # ProviderToolSearchMiddleware marks it) was dropped like any unselected tool,
    # leaving the provider's search nothing to find; always_include naming it raised.
    deferred = send_email.model_copy(update={"extras": {"defer_loading": True}})
    tools = [deferred if t.name == "send_email" else t for t in TOOLS]
    for options in ({"max_tools": 1}, {"max_tools": 1, "always_include": ["send_email"]}):
        model = _model("It will be sunny.")
        selector = _selector(recording_encoder, **options)
        create_agent(model, tools=tools, middleware=[selector]).invoke(
            {"messages": [HumanMessage("Will it rain in Paris tomorrow?")]}
        )
        assert model.bound == [["get_weather", "send_email"]]
        # select_tools names what is bound: the deferred tool too, last.
        assert selector.select_tools("Will it rain in Paris tomorrow?", tools) == [
            "get_weather",
            "send_email",
        ]


class DeferralRecordingModel(RecordingChatModel):
    """Records, besides the names, which bound tools are deferred."""

    deferred: list[list[str]] = Field(default_factory=list)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> DeferralRecordingModel:  # type: ignore[override]
        """Record the deferred tools' names, then as the parent."""
        self.deferred.append(
            [t.name for t in tools if (getattr(t, "extras", None) or {}).get("defer_loading")]
        )
        super().bind_tools(tools, **kwargs)
        return self


def test_unselected_tools_can_be_deferred(recording_encoder: RecordingEncoder) -> None:
    # For ProviderToolSearchMiddleware (listed after this one) to serve: the model gets
    # the selected tools' schemas and can search for the others.
    if "extras" not in BaseTool.model_fields:
        with pytest.raises(InvalidInputError, match=r"BaseTool\.extras"):
            _selector(recording_encoder, unselected="defer")
        return
    selector = _selector(
        recording_encoder, max_tools=1, always_include=["search_docs"], unselected="defer"
    )
    model = DeferralRecordingModel(messages=iter(["It will be sunny."]))
    create_agent(model, tools=TOOLS, middleware=[selector]).invoke(
        {"messages": [HumanMessage("Will it rain in Paris tomorrow?")]}
    )
    assert model.bound == [[t.name for t in TOOLS]]
    assert model.deferred == [
        [t.name for t in TOOLS if t.name not in ("get_weather", "search_docs")]
    ]
    assert not any(getattr(t, "extras", None) for t in TOOLS)  # copies were marked
    with pytest.raises(InvalidInputError, match="unselected must be"):
        _selector(recording_encoder, unselected="hide")


class ChatAnthropic(DeferralRecordingModel):
    """Named as the model ProviderToolSearchMiddleware recognises as Anthropic's."""


def test_composes_with_provider_tool_search(recording_encoder: RecordingEncoder) -> None:
    # Both orders: the provider's search defers tools the selector passes through, and
    # the selector's deferred tools get the provider's search tool.
    search = pytest.importorskip("langchain.agents.middleware.provider_tool_search")
    text = "Will it rain in Paris tomorrow?"
    for middleware, deferred in [
        (
            [
                search.ProviderToolSearchMiddleware(searchable_tools=["send_email"]),
                _selector(recording_encoder, max_tools=1),
            ],
            ["send_email"],
        ),
        (
            [
                _selector(recording_encoder, max_tools=1, unselected="defer"),
                search.ProviderToolSearchMiddleware(),
            ],
            [t.name for t in TOOLS if t.name != "get_weather"],
        ),
    ]:
        model = ChatAnthropic(messages=iter(["It will be sunny."]))
        create_agent(model, tools=TOOLS, middleware=middleware).invoke(
            {"messages": [HumanMessage(text)]}
        )
        ((*names, search_tool),) = model.bound
        assert "tool_search" in search_tool
        assert names == [t.name for t in TOOLS if t.name == "get_weather" or t.name in deferred]
        assert model.deferred == [deferred]


def test_max_tools_and_always_include(recording_encoder: RecordingEncoder) -> None:
    model = _model("Booked.")
    selector = _selector(recording_encoder, max_tools=1, always_include=["search_docs"])
    agent = create_agent(model, tools=TOOLS, middleware=[selector])
    agent.invoke({"messages": [HumanMessage("Book me a plane ticket to Tokyo")]})
    assert model.bound == [["book_flight", "search_docs"]]


def test_an_always_included_tool_takes_no_slot_when_it_ranks_first(
    recording_encoder: RecordingEncoder,
) -> None:
    # The message is about the always-included tool: it ranked first and took the one
    # slot, so no candidate remained and every tool was bound (on_no_match="all").
    selector = _selector(recording_encoder, max_tools=1, always_include=["search_docs"])
    text = "Search the company documentation for how to send an email"
    chosen = selector.select_tools(text, TOOLS)
    assert len(chosen) == 2 and chosen[-1] == "search_docs", chosen
    model = _model("Found it.")
    create_agent(model, tools=TOOLS, middleware=[selector]).invoke(
        {"messages": [HumanMessage(text)]}
    )
    assert len(model.bound[0]) == 2 and "search_docs" in model.bound[0]
    top = selector.router.query_top_k(text, 1)[0].candidate
    assert top == "search_docs"  # the case: the always-included tool ranks first
    nothing = _selector(
        recording_encoder, max_tools=1, always_include=["search_docs"], on_no_match="none"
    )
    assert len(nothing.select_tools(text, TOOLS)) == 2  # a candidate, not only search_docs


def test_a_tool_left_out_of_a_later_call_keeps_its_utterances(
    recording_encoder: RecordingEncoder,
) -> None:
    # Another middleware filters the tools per call: a tool with utterances missing
    # from the second call raised "utterances names tools that do not exist".
    selector = _selector(
        recording_encoder, max_tools=1, utterances={"get_weather": ["will it rain tomorrow"]}
    )
    assert selector.select_tools("will it rain tomorrow", TOOLS) == ["get_weather"]
    without = [t for t in TOOLS if t.name != "get_weather"]
    assert selector.select_tools("convert 20 euros to dollars", without) == ["convert_currency"]
    assert selector.select_tools("will it rain tomorrow", without) != ["get_weather"]
    # A key no call offered, close to an offered tool without utterances, is a typo.
    typo = _selector(recording_encoder, utterances={"get_wether": ["rain?"]})
    with pytest.raises(InvalidInputError, match=r"'get_wether'.*did you mean 'get_weather'"):
        typo.select_tools("rain?", TOOLS)


def test_routes_of_tools_no_longer_offered_are_dropped_past_a_bound(
    recording_encoder: RecordingEncoder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Every tool name ever offered kept its route, and each call ranked them all:
    # per-session tool names grew memory and the time of every call without end.
    from langchain_core.tools import StructuredTool
    from langchain_synaptoroute import middleware

    monkeypatch.setattr(middleware, "_MAX_GENERATED", 12)
    monkeypatch.setattr(middleware, "_MAX_CHECKED", 3)  # the sets kept as in use
    router = AdaptiveRouter(recording_encoder, SQLiteStorage(tmp_path / "tools.db"))
    router.add_route(Route(name="curated", utterances=["my own route"]))  # the user's
    selector = SynaptorouteToolSelectorMiddleware(max_tools=1, router=router)
    hot = [get_weather, send_email]  # an agent's own tools, offered between sessions

    def session(i: int) -> list[BaseTool]:
        kinds = {"weather": "Get the weather forecast", "mail": "Send an email"}
        return [
            StructuredTool.from_function(
                func=lambda q: q, name=f"s{i}_{kind}", description=description
            )
            for kind, description in kinds.items()
        ]

    assert selector.select_tools("will it rain tomorrow", hot) == ["get_weather"]
    hot_texts = set(router.get_route("get_weather").utterances)
    for i in range(30):
        assert selector.select_tools("will it rain tomorrow", session(i)) == [f"s{i}_weather"]
        assert selector.select_tools("will it rain tomorrow", hot) == ["get_weather"]
        # The bound, the sets checked lately (3 of 2 tools), this call's, the user's.
        assert len(router) <= 12 + 3 * 2 + 2 + 1
    assert "curated" in router and "s29_weather" in router and "s0_weather" not in router
    # The set in use between the others was never dropped, so never encoded again.
    assert sum(bool(hot_texts & set(call)) for call in recording_encoder.calls) == 1
    # A set offered again has its routes built again.
    assert selector.select_tools("send an email to Bob", session(0)) == ["s0_mail"]
    assert "s0_mail" in router
    # A new process on the stored router counts the routes earlier ones generated.
    router.close()
    again = AdaptiveRouter(recording_encoder, SQLiteStorage(tmp_path / "tools.db"))
    later = SynaptorouteToolSelectorMiddleware(max_tools=1, router=again)
    for i in range(100, 110):
        later.select_tools("will it rain tomorrow", session(i))
    assert len(again) <= 12 + 3 * 2 + 2 + 1
    again.close()


def test_a_tool_call_loop_keeps_the_selection_and_runs_the_tool(
    recording_encoder: RecordingEncoder,
) -> None:
    call = AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Oslo"}, "id": "1"}])
    model = _model(call, "Sunny in Oslo.")
    agent = create_agent(model, tools=TOOLS, middleware=[_selector(recording_encoder, max_tools=3)])
    result = agent.invoke({"messages": [HumanMessage("What's the weather like in Oslo?")]})
    assert [m.content for m in result["messages"] if isinstance(m, ToolMessage)] == [
        "sunny in Oslo"
    ]
    assert len(model.bound) == 2
    assert model.bound[0] == model.bound[1]
    assert "get_weather" in model.bound[0] and len(model.bound[0]) == 3


async def test_async_agent_selects_the_same_tools(recording_encoder: RecordingEncoder) -> None:
    texts = ["Convert 20 dollars to euros", "Set a timer for ten minutes"]
    sync_model, async_model = _model("a", "b"), _model("a", "b")
    selector = _selector(recording_encoder, max_tools=2)
    sync_agent = create_agent(sync_model, tools=TOOLS, middleware=[selector])
    async_agent = create_agent(async_model, tools=TOOLS, middleware=[selector])
    for text in texts:
        sync_agent.invoke({"messages": [HumanMessage(text)]})
        await async_agent.ainvoke({"messages": [HumanMessage(text)]})
    assert async_model.bound == sync_model.bound
    assert [b for b in async_model.bound if len(b) == 2] == async_model.bound
    assert "convert_currency" in async_model.bound[0]
    assert "set_timer" in async_model.bound[1]


def test_routes_are_built_once_and_rebuilt_only_for_changed_tools(
    recording_encoder: RecordingEncoder,
) -> None:
    selector = _selector(recording_encoder, max_tools=2)
    agent = create_agent(_model("a", "b"), tools=TOOLS, middleware=[selector])
    agent.invoke({"messages": [HumanMessage("Send an email to Bob")]})
    encoded = [text for call in recording_encoder.calls for text in call]
    assert len(encoded) == len(TOOLS) + 1  # one example per tool, then the query
    recording_encoder.calls.clear()
    agent.invoke({"messages": [HumanMessage("Search the internal docs for the VPN guide")]})
    assert recording_encoder.calls == [["Search the internal docs for the VPN guide"]]

    # A tool whose description changed gets its route rebuilt; the others are kept.
    renamed = book_flight.model_copy(update={"description": "Reserve seats on a flight."})
    recording_encoder.calls.clear()
    agent2 = create_agent(
        _model("c"), tools=[*TOOLS[:2], renamed, *TOOLS[3:]], middleware=[selector]
    )
    agent2.invoke({"messages": [HumanMessage("Reserve two seats to Rome")]})
    encoded = [text for call in recording_encoder.calls for text in call]
    assert encoded == ["book flight: Reserve seats on a flight.", "Reserve two seats to Rome"]


def test_only_present_tools_are_selected(recording_encoder: RecordingEncoder) -> None:
    selector = _selector(recording_encoder, max_tools=2)
    create_agent(_model("a"), tools=TOOLS, middleware=[selector]).invoke(
        {"messages": [HumanMessage("hello")]}
    )
    model = _model("b")
    # The same selector in an agent without the weather tool never binds it.
    create_agent(model, tools=TOOLS[1:], middleware=[selector]).invoke(
        {"messages": [HumanMessage("Will it rain in Paris tomorrow?")]}
    )
    (bound,) = model.bound
    assert len(bound) == 2
    assert "get_weather" not in bound


def test_utterances_steer_the_selection(recording_encoder: RecordingEncoder) -> None:
    text = "I'm off to Lisbon next week"
    plain = _selector(recording_encoder, max_tools=1)
    steered = _selector(
        recording_encoder,
        max_tools=1,
        utterances={"book_flight": ["I'm travelling to Rome next month"]},
    )
    assert plain.select_tools(text, TOOLS) == ["get_weather"]
    assert steered.select_tools(text, TOOLS) == ["book_flight"]


def test_no_user_message_binds_every_tool(recording_encoder: RecordingEncoder) -> None:
    model = _model("Hello!")
    agent = create_agent(model, tools=TOOLS, middleware=[_selector(recording_encoder)])
    agent.invoke({"messages": [AIMessage("Welcome, how can I help?")]})
    assert model.bound == [[t.name for t in TOOLS]]


@pytest.mark.parametrize("text", ["   ", "\u200b\ufeff", "\x00 \u200b"])
def test_a_text_the_model_reads_nothing_of_binds_every_tool(
    recording_encoder: RecordingEncoder, text: str
) -> None:
    # Like no text: an invisible-only message ranked no tool, so with on_no_match
    # "none" only the always-included tools were bound.
    selector = _selector(recording_encoder, on_no_match="none", always_include=["search_docs"])
    assert selector.select_tools(text, TOOLS) == [t.name for t in TOOLS]


@pytest.mark.parametrize(
    ("on_no_match", "expected"),
    [("all", [t.name for t in TOOLS]), ("none", ["search_docs"])],
)
def test_nothing_above_the_threshold(
    recording_encoder: RecordingEncoder, on_no_match: Any, expected: list[str]
) -> None:
    model = _model("?")
    selector = _selector(
        recording_encoder, threshold=0.9, on_no_match=on_no_match, always_include=["search_docs"]
    )
    create_agent(model, tools=TOOLS, middleware=[selector]).invoke(
        {"messages": [HumanMessage("What is the boiling point of mercury?")]}
    )
    (bound,) = model.bound
    assert sorted(bound) == sorted(expected)


def test_a_threshold_drops_weak_tools(recording_encoder: RecordingEncoder) -> None:
    selector = _selector(recording_encoder, max_tools=5, threshold=0.45)
    assert selector.select_tools("Set a timer for ten minutes", TOOLS) == ["set_timer"]


def test_numpy_settings_are_numbers(recording_encoder: RecordingEncoder) -> None:
    # Settings computed with numpy (np.int64 is no int to isinstance) were refused.
    selector = _selector(recording_encoder, max_tools=np.int64(5), threshold=np.float32(0.45))
    assert type(selector.max_tools) is int and type(selector.threshold) is float
    assert selector.select_tools("Set a timer for ten minutes", TOOLS) == ["set_timer"]


def test_misnamed_settings_fail_clearly(recording_encoder: RecordingEncoder) -> None:
    bad = _selector(recording_encoder, utterances={"get_wether": ["rain?"]})
    with pytest.raises(InvalidInputError, match=r"'get_wether'.*did you mean 'get_weather'"):
        create_agent(_model("x"), tools=TOOLS, middleware=[bad]).invoke(
            {"messages": [HumanMessage("rain?")]}
        )
    missing = _selector(recording_encoder, always_include=["search"])
    with pytest.raises(
        InvalidInputError,
        match=r"always_include names tools that this model call does not offer: \['search'\] "
        r"\(tools: .*\); a middleware listed before this one may have removed them",
    ):
        missing.select_tools("rain?", TOOLS)
    for bad_count in (0, True, 2.5):
        with pytest.raises(InvalidInputError, match="max_tools"):
            SynaptorouteToolSelectorMiddleware(max_tools=bad_count)  # type: ignore[arg-type]
    for bad_threshold in (True, "0.4", 1.5, float("nan")):
        with pytest.raises(InvalidInputError, match="threshold must be a number"):
            SynaptorouteToolSelectorMiddleware(threshold=bad_threshold)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="not both"):
        SynaptorouteToolSelectorMiddleware(router=AdaptiveRouter(recording_encoder), encoder=1)


def test_a_given_router_keeps_its_routes(recording_encoder: RecordingEncoder) -> None:
    router = AdaptiveRouter(recording_encoder)
    router.add_route(Route(name="get_weather", utterances=["should I take an umbrella"]))
    recording_encoder.calls.clear()
    selector = SynaptorouteToolSelectorMiddleware(router=router, max_tools=1)
    assert selector.router is router
    assert selector.select_tools("Should I take an umbrella today?", TOOLS) == ["get_weather"]
    encoded = [text for call in recording_encoder.calls for text in call]
    # The other tools got routes; the router's own get_weather route was kept as it was.
    assert len(encoded) == len(TOOLS)
    assert not any(text.startswith("get weather") for text in encoded)
    assert router.get_route("get_weather").utterances == ["should I take an umbrella"]


def test_a_tool_route_deleted_from_a_shared_router_is_built_again(
    recording_encoder: RecordingEncoder,
) -> None:
    # The cached tool-set signature (and the remembered examples) skipped the rebuild:
    # the deleted tool could never be selected again, and another tool was bound.
    router = AdaptiveRouter(recording_encoder)
    selector = SynaptorouteToolSelectorMiddleware(router=router, max_tools=1)
    question = "Should I take an umbrella today?"
    assert selector.select_tools(question, TOOLS) == ["get_weather"]
    router.delete_route("get_weather")
    assert selector.select_tools(question, TOOLS) == ["get_weather"]
    assert "get_weather" in router


async def test_a_deleted_tool_route_is_built_again_off_the_event_loop(
    recording_encoder: RecordingEncoder,
) -> None:
    # The async hook skipped the thread hop on the tool set's signature alone: a route
    # deleted from a shared router was built again, encoding, on the event loop.
    router = AdaptiveRouter(recording_encoder)
    selector = SynaptorouteToolSelectorMiddleware(router=router, max_tools=1)
    agent = create_agent(_model("a", "b"), tools=TOOLS, middleware=[selector])
    question = {"messages": [HumanMessage("Should I take an umbrella today?")]}
    await agent.ainvoke(question)
    router.delete_route("get_weather")
    recording_encoder.clear()
    await agent.ainvoke(question)
    assert "get_weather" in router
    rebuilt = [
        thread
        for call, thread in zip(recording_encoder.calls, recording_encoder.threads, strict=True)
        if any(text.startswith("get weather") for text in call)
    ]
    assert rebuilt and threading.get_ident() not in rebuilt
    await router.stop()


def test_routes_another_call_adds_while_one_ranks_do_not_crowd_out_its_tools(
    recording_encoder: RecordingEncoder,
) -> None:
    # The plan sized k from the routes stored before ranking; another agent's first
    # call adding routes in between pushed this call's tools out of the top k, and
    # on_no_match="all" bound every tool.
    others = [Route(name=f"rain_tool_{i}", utterances=[f"will it rain tomorrow {i}"])
              for i in range(8)]  # fmt: skip

    class Meanwhile(AdaptiveRouter):
        def query_top_k(self, text: str, k: int = 3) -> list[RouteMatch]:
            if others[0].name not in self:
                self.add_routes(others)
            return super().query_top_k(text, k)

    selector = SynaptorouteToolSelectorMiddleware(router=Meanwhile(recording_encoder), max_tools=1)
    tools = [get_weather, convert_currency, set_timer]
    assert selector.select_tools("Will it rain in Paris tomorrow?", tools) == ["get_weather"]


def test_the_router_is_reachable_while_another_call_builds_routes(
    recording_encoder: RecordingEncoder,
) -> None:
    # awrap_model_call's fast path reads the router on the event loop; it waited for
    # the lock another call held while encoding its new tools (seconds, on the loop).
    selector = _selector(recording_encoder)
    router = selector.router
    got: list[AdaptiveRouter] = []
    with selector._lock:  # another call is building routes
        reader = threading.Thread(target=lambda: got.append(selector.router))
        reader.start()
        reader.join(LIMIT_S)  # a hang guard only
        assert got == [router]


def test_a_tool_with_nothing_to_route_by_is_named(recording_encoder: RecordingEncoder) -> None:
    selector = _selector(recording_encoder)
    for name in ("_", "- _"):
        blank = get_weather.model_copy(update={"name": name, "description": ""})
        with pytest.raises(InvalidInputError, match="nothing to route by"):
            selector.select_tools("rain?", [blank, set_timer])
    unnamed = get_weather.model_copy(update={"name": "  "})
    with pytest.raises(InvalidInputError, match="blank"):
        selector.select_tools("rain?", [unnamed, set_timer])
    # Utterances alone are enough to route by.
    helper = get_weather.model_copy(update={"name": "_", "description": ""})
    chosen = _selector(recording_encoder, utterances={"_": ["will it rain"]}, max_tools=1)
    assert chosen.select_tools("will it rain tomorrow", [helper, set_timer]) == ["_"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_while_the_selector_builds_routes_selects(
    recording_encoder: RecordingEncoder,
) -> None:
    # A worker process forked while another thread holds the selector's lock (making
    # the router or changing its routes) must not inherit the lock held.
    selector = _selector(recording_encoder, max_tools=2)
    holder = hold_until_the_fork(selector._lock)

    def child() -> None:
        assert selector._lock.acquire(timeout=30)  # free in the child: the fork waited
        selector._lock.release()
        model = _model("It will be sunny.")
        agent = create_agent(model, tools=TOOLS, middleware=[selector])
        agent.invoke({"messages": [HumanMessage("Will it rain in Paris tomorrow?")]})
        assert "get_weather" in model.bound[0]

    try:
        assert in_forked_child(child) == 0
    finally:
        holder.join(60)


def test_agents_with_other_tools_share_one_instance(recording_encoder: RecordingEncoder) -> None:
    # Every utterances key had to name a tool some call had already offered, checked
    # before the call recorded its own tools: each agent's first call raised
    # "utterances names tools that do not exist" for the other agent's tool.
    selector = _selector(
        recording_encoder,
        max_tools=1,
        utterances={"get_weather": ["will it rain tomorrow"], "send_email": ["mail Bob"]},
    )
    first, second = _model("a"), _model("b")
    create_agent(first, tools=[get_weather, book_flight], middleware=[selector]).invoke(
        {"messages": [HumanMessage("Will it rain in Paris tomorrow?")]}
    )
    create_agent(second, tools=[send_email], middleware=[selector]).invoke(
        {"messages": [HumanMessage("mail Bob the report")]}
    )
    assert first.bound == [["get_weather"]]
    assert second.bound == [["send_email"]]
    # A key close to a tool that has utterances of its own is another agent's tool...
    near = _selector(
        recording_encoder,
        utterances={"get_weather": ["rain?"], "get_weathers": ["rain in two cities?"]},
    )
    assert near.select_tools("rain?", TOOLS)
    # ... and one close to an offered tool without utterances is a typo, named.
    typo = _selector(recording_encoder, utterances={"send_emial": ["mail Bob"]})
    with pytest.raises(InvalidInputError, match=r"'send_emial'.*did you mean 'send_email'"):
        typo.select_tools("mail Bob", [send_email])


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"utterances": {"get_weather": "forecast"}}, r"utterances\['get_weather'\].*one str"),
        ({"utterances": {"get_weather": ["rain?", 3]}}, r"utterances\['get_weather'\]\[1\]"),
        ({"utterances": {"get_weather": ["rain \ud800"]}}, r"utterances\['get_weather'\]\[0\]"),
        ({"utterances": {"get_weather": ["rain?", " "]}}, r"utterances\['get_weather'\]\[1\]"),
        (
            {"utterances": {"get_weather": ["rain?", "\u200b\ufeff"]}},
            r"utterances\['get_weather'\]\[1\].*empty to the model",
        ),
        ({"utterances": {1: ["rain?"]}}, "keyed by tool name"),
        ({"utterances": ["rain?"]}, "must be a dict"),
        ({"always_include": "search_docs"}, "always_include must be a list"),
        ({"always_include": ["search_docs", None]}, r"always_include\[1\]"),
    ],
)
def test_malformed_utterances_and_always_include_are_refused_at_construction(
    recording_encoder: RecordingEncoder, settings: dict[str, Any], named: str
) -> None:
    # list("forecast") made eight one-letter examples before the "not one str" check
    # could fire; always_include="search_docs" became eleven one-letter tool names.
    with pytest.raises(InvalidInputError, match=named):
        _selector(recording_encoder, **settings)


class _ForceTool(AgentMiddleware):
    """An earlier middleware that forces the model to call a tool."""

    def __init__(self, choice: Any) -> None:
        super().__init__()
        self.choice = choice

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        return handler(request.override(tool_choice=self.choice))

    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse:
        return await handler(request.override(tool_choice=self.choice))


@pytest.mark.parametrize(
    "choice",
    [
        "set_timer",
        {"type": "function", "function": {"name": "set_timer"}},
        {"type": "tool", "name": "set_timer"},
        {"name": "set_timer"},
        # Provider spellings: Bedrock's, and those restricting a call to some tools
        # (OpenAI Responses, OpenAI Chat Completions, Gemini).
        {"tool": {"name": "set_timer"}},
        {
            "type": "allowed_tools",
            "mode": "auto",
            "tools": [{"type": "function", "name": "set_timer"}],
        },
        {
            "type": "allowed_tools",
            "allowed_tools": {
                "mode": "required",
                "tools": [{"type": "function", "function": {"name": "set_timer"}}],
            },
        },
        {"function_calling_config": {"mode": "ANY", "allowed_function_names": ["set_timer"]}},
    ],
)
async def test_a_tool_the_request_forces_stays_bound(
    recording_encoder: RecordingEncoder, choice: Any
) -> None:
    # The filter ignored tool_choice: the forced set_timer (ranked 4th for this text)
    # was dropped, and a provider rejects a tool_choice naming no bound tool.
    text = "Will it rain in Paris tomorrow?"
    for max_tools, expected in ((2, ["get_weather", "set_timer"]), (1, ["set_timer"])):
        selector = _selector(recording_encoder, max_tools=max_tools)
        sync_model, async_model = await _both_agents([_ForceTool(choice), selector], text)
        assert sync_model.bound == async_model.bound == [expected]
        assert sync_model.choices == [choice]
    # A forced always_include tool takes no max_tools place; "auto" forces nothing.
    selector = _selector(recording_encoder, max_tools=1, always_include=["set_timer"])
    assert selector.select_tools(text, TOOLS, tool_choice=choice) == ["get_weather", "set_timer"]
    assert _selector(recording_encoder, max_tools=1).select_tools(
        text, TOOLS, tool_choice="auto"
    ) == ["get_weather"]


async def _both_agents(
    middleware: list[Any], text: str
) -> tuple[RecordingChatModel, RecordingChatModel]:
    """A sync and an async agent over ``middleware``, each run once on ``text``: their
    recording models."""
    sync_model, async_model = _model("a"), _model("b")
    create_agent(sync_model, tools=TOOLS, middleware=middleware).invoke(
        {"messages": [HumanMessage(text)]}
    )
    await create_agent(async_model, tools=TOOLS, middleware=middleware).ainvoke(
        {"messages": [HumanMessage(text)]}
    )
    return sync_model, async_model


@pytest.mark.parametrize(
    "choice",
    [
        "any",
        "required",
        {"type": "any"},
        True,
        {"any": {}},  # Bedrock
        {"function_calling_config": {"mode": "ANY"}},  # Gemini
        {"type": "allowed_tools", "mode": "required", "tools": []},  # OpenAI Responses
    ],
)
async def test_a_demanded_tool_call_keeps_the_best_tool_under_the_threshold(
    recording_encoder: RecordingEncoder, choice: Any
) -> None:
    # With on_no_match="none" and no tool reaching the threshold, a request demanding
    # a tool call (naming none) was left with no tool: the model was called with a
    # forced tool call and nothing to call.
    text = "What is the boiling point of mercury?"
    (best,) = _selector(recording_encoder, max_tools=1).select_tools(text, TOOLS)
    selector = _selector(recording_encoder, threshold=0.9, on_no_match="none")
    middleware = [_ForceTool(choice), selector]
    sync_model, async_model = await _both_agents(middleware, text)
    assert sync_model.bound == async_model.bound == [[best]]
    assert sync_model.choices == async_model.choices == [choice]
    assert selector.select_tools(text, TOOLS, tool_choice=choice) == [best]
    # Nothing is added when another tool stays bound, nor when no call is demanded.
    included = _selector(
        recording_encoder, threshold=0.9, on_no_match="none", always_include=["search_docs"]
    )
    assert included.select_tools(text, TOOLS, tool_choice=choice) == ["search_docs"]
    for auto in ("auto", {"auto": {}}, {"function_calling_config": {"mode": "AUTO"}}):
        assert selector.select_tools(text, TOOLS, tool_choice=auto) == []
    web_search = {"type": "web_search"}
    with_dict = _model("c")
    create_agent(with_dict, tools=[*TOOLS, web_search], middleware=middleware).invoke(
        {"messages": [HumanMessage(text)]}
    )
    assert with_dict.bound == [[str(web_search)]]


class Forecast(BaseModel):
    """The agent's structured answer."""

    summary: str


async def test_a_response_format_s_tool_answers_a_demanded_call(
    recording_encoder: RecordingEncoder,
) -> None:
    # With a structured response format create_agent binds its own tool and forces
    # "any" (ToolStrategy), or drops tool_choice (ProviderStrategy): the selector bound
    # a tool under its threshold for a demand that never lacked a tool to call.
    text = "What is the boiling point of mercury?"
    selector = _selector(recording_encoder, threshold=0.9, on_no_match="none")
    for response_format in (ToolStrategy(Forecast), ProviderStrategy(Forecast)):
        assert (
            selector.select_tools(text, TOOLS, tool_choice="any", response_format=response_format)
            == []
        )
    model = _model("a")
    agent = create_agent(
        model,
        tools=TOOLS,
        middleware=[_ForceTool("any"), selector],
        response_format=ToolStrategy(Forecast),
    )
    await agent.ainvoke({"messages": [HumanMessage(text)]})
    assert model.bound == [["Forecast"]]
    assert model.choices == ["any"]


async def test_no_thread_hop_when_nothing_needs_encoding(
    recording_encoder: RecordingEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A call offering only provider tool dicts hopped to a thread on every call: the
    # empty tool set was never recorded as checked.
    hops: list[Callable[..., Any]] = []
    to_thread = asyncio.to_thread

    async def recording_to_thread(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if getattr(func, "__self__", None) is selector:
            hops.append(func)
        return await to_thread(func, *args, **kwargs)

    monkeypatch.setattr(middleware_module.asyncio, "to_thread", recording_to_thread)
    selector = _selector(recording_encoder, max_tools=2)
    question = {"messages": [HumanMessage("Will it rain in Paris tomorrow?")]}
    web_search = {"type": "web_search"}
    dicts_only = _model("a", "b")
    agent = create_agent(dicts_only, tools=[web_search], middleware=[selector])
    await agent.ainvoke(question)
    await agent.ainvoke(question)
    assert hops == []
    assert dicts_only.bound == [[str(web_search)]] * 2
    # New tools to encode still go to a thread, once.
    agent = create_agent(_model("a", "b"), tools=[*TOOLS, web_search], middleware=[selector])
    await agent.ainvoke(question)
    assert len(hops) == 1
    await agent.ainvoke(question)
    assert len(hops) == 1


def test_a_stored_tool_route_is_rebuilt_after_a_restart_when_its_tool_changed(
    tmp_path: Path, recording_encoder: RecordingEncoder
) -> None:
    # With router= on a persistent store, the routes found at start were kept for
    # good: a tool whose description changed before the restart kept its old route.
    path = tmp_path / "tools.sqlite"
    router = AdaptiveRouter(recording_encoder, SQLiteStorage(path))
    router.add_route(Route(name="get_weather", utterances=["should I take an umbrella"]))
    _selector_on(router).select_tools("Book me a plane ticket to Tokyo", TOOLS)
    router.close()

    # Restarted with new descriptions for a generated route and for the curated one.
    changed = book_flight.model_copy(update={"description": "Reserve seats on a flight."})
    moved = get_weather.model_copy(update={"description": "Tell the temperature."})
    tools = [moved, convert_currency, changed, *TOOLS[3:]]
    recording_encoder.calls.clear()
    router = AdaptiveRouter(recording_encoder, SQLiteStorage(path))
    chosen = _selector_on(router).select_tools("Reserve two seats to Rome", tools)
    assert chosen == ["book_flight"]
    encoded = [text for call in recording_encoder.calls for text in call]
    assert encoded[0] == "book flight: Reserve seats on a flight."  # only the changed tool
    assert encoded[1:] == ["Reserve two seats to Rome"]
    router.close()
    router = AdaptiveRouter(recording_encoder, SQLiteStorage(path))
    assert router.get_route("book_flight").utterances == ["book flight: Reserve seats on a flight."]
    assert router.get_route("get_weather").utterances == ["should I take an umbrella"]
    router.close()


def _selector_on(router: AdaptiveRouter) -> SynaptorouteToolSelectorMiddleware:
    return SynaptorouteToolSelectorMiddleware(router=router, max_tools=1)
