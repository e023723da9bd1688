"""``SynaptorouteToolRetriever``: an agent's tools retrieved by example utterances.

Real bundled model, real LlamaIndex tools, postprocessors, agents and mock LLM.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import llama_index.core.llms.mock
import pytest
from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.retrieval import RetrievalEndEvent
from llama_index.core.llms import MockLLM
from llama_index.core.objects.tool_node_mapping import SimpleToolNodeMapping
from llama_index.core.postprocessor import SimilarityPostprocessor
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.tools import BaseTool, FunctionTool
from llama_index.selectors.synaptoroute import (
    SynaptorouteEmbedding,
    SynaptorouteSelector,
    SynaptorouteToolRetriever,
)
from llamaindex_support import docs_example
from pydantic import Field

from synaptoroute import Encoder, InvalidInputError


def get_weather(city: str = "Paris") -> str:
    """Current weather and forecast for a city: temperature, rain, wind."""
    return f"sunny in {city}"


def convert_currency(amount: float = 1.0, to: str = "EUR") -> str:
    """Convert an amount of money between currencies at today's exchange rate."""
    return f"{amount} {to}"


def search_flights(origin: str = "", destination: str = "") -> str:
    """Search flights between two airports, with prices and times."""
    return f"flights {origin}-{destination}"


def book_hotel(city: str = "") -> str:
    """Book a hotel room in a city for given dates."""
    return f"hotel in {city}"


def send_email(to: str = "", body: str = "") -> str:
    """Send an email message to a contact."""
    return f"sent to {to}"


def calendar_events(day: str = "") -> str:
    """List the meetings and events in the user's calendar for a day."""
    return f"events on {day}"


def stock_price(ticker: str = "") -> str:
    """Latest stock market price of a company's shares by ticker symbol."""
    return f"{ticker}: 100"


def translate_text(text: str = "", language: str = "") -> str:
    """Translate a text into another language."""
    return f"{text} in {language}"


def search_docs(question: str = "") -> str:
    """Search the company's internal documentation."""
    return f"docs about {question}"


FUNCTIONS: list[Callable[..., str]] = [
    get_weather,
    convert_currency,
    search_flights,
    book_hotel,
    send_email,
    calendar_events,
    stock_price,
    translate_text,
]
UTTERANCES = {
    "get_weather": ["will it rain tomorrow?", "how hot is it in Rome", "do I need an umbrella"],
    "convert_currency": [
        "how many euros is 100 dollars",
        "exchange rate yen to pounds",
        "convert 50 GBP to USD",
    ],
    "search_flights": [
        "find me a flight to Tokyo",
        "cheapest plane ticket to Berlin",
        "flights from Paris to London on Friday",
    ],
    "book_hotel": [
        "reserve a room in Madrid",
        "I need a hotel for two nights",
        "book accommodation near the airport",
    ],
    "send_email": ["email Bob the report", "write a message to my boss", "send a mail to the team"],
    "calendar_events": [
        "what meetings do I have today",
        "am I free on Tuesday afternoon",
        "show my schedule",
    ],
    "stock_price": [
        "how is Apple stock doing",
        "price of TSLA",
        "what's the share price of Microsoft",
    ],
    "translate_text": [
        "translate this into Spanish",
        "how do you say thank you in Japanese",
        "French for good morning",
    ],
}
#: Queries with one clear tool (none of them an utterance).
CLEAR = [
    ("Is it going to snow in Oslo this weekend?", "get_weather"),
    ("How much is 20 dollars in yen?", "convert_currency"),
    ("Get me a plane to New York", "search_flights"),
    ("Tell Alice by email that the meeting moved", "send_email"),
    ("What does 'gracias' mean in English?", "translate_text"),
    ("How did Nvidia shares close?", "stock_price"),
    ("Do I have anything scheduled Monday?", "calendar_events"),
    ("Find a place to stay in Lisbon", "book_hotel"),
]
#: No tool is about it: every score under 0.3 (0.22 the best).
OFF_TOPIC = "what is the boiling point of mercury"


@pytest.fixture
def tools() -> list[BaseTool]:
    """Eight real function tools, named after their functions."""
    return [FunctionTool.from_defaults(fn) for fn in FUNCTIONS]


@pytest.fixture
async def make(
    encoder: Encoder, tools: list[BaseTool]
) -> AsyncIterator[Callable[..., SynaptorouteToolRetriever]]:
    """A retriever factory (the real encoder, the eight tools, their utterances);
    stops the retrievers' batching workers afterwards."""
    made: list[SynaptorouteToolRetriever] = []

    def build(**kwargs: Any) -> SynaptorouteToolRetriever:
        if "selector" not in kwargs:
            kwargs.setdefault("encoder", encoder)
            kwargs.setdefault("utterances", UTTERANCES)
        retriever = SynaptorouteToolRetriever(kwargs.pop("tools", tools), **kwargs)
        made.append(retriever)
        return retriever

    yield build
    for retriever in made:
        await retriever.aclose()


def _names(tools: list[BaseTool]) -> list[str | None]:
    return [tool.metadata.name for tool in tools]


# -- selection ------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "expected"), CLEAR)
def test_retrieve_ranks_the_right_tool_first(
    make: Callable[..., SynaptorouteToolRetriever], query: str, expected: str
) -> None:
    retrieved = make(max_tools=3).retrieve(query)
    assert len(retrieved) == 3
    assert _names(retrieved)[0] == expected


async def test_aretrieve_ranks_as_retrieve(
    make: Callable[..., SynaptorouteToolRetriever],
) -> None:
    retriever = make(max_tools=3)
    for query, expected in CLEAR:
        retrieved = await retriever.aretrieve(query)
        assert _names(retrieved) == _names(retriever.retrieve(query))
        assert _names(retrieved)[0] == expected
    # Through the router's batching worker, with the retriever's timeout.
    assert retriever.selector.router_for([t.metadata for t in retriever.tools]).worker.running


def test_retrieved_objects_are_the_tools_themselves(
    make: Callable[..., SynaptorouteToolRetriever], tools: list[BaseTool]
) -> None:
    retriever = make(max_tools=None)
    retrieved = retriever.retrieve(CLEAR[0][0])
    assert sorted(map(id, retrieved)) == sorted(map(id, tools))
    # ObjectRetriever's own parts: a BaseRetriever whose nodes map back through a
    # SimpleToolNodeMapping (by the tool name in each node's metadata).
    assert isinstance(retriever.retriever, BaseRetriever)
    assert isinstance(retriever.object_node_mapping, SimpleToolNodeMapping)
    nodes = retriever.retriever.retrieve(CLEAR[0][0])
    assert [n.node.metadata["name"] for n in nodes] == _names(retrieved)
    assert all(
        retriever.object_node_mapping.from_node(n.node) is t
        for n, t in zip(nodes, retrieved, strict=True)
    )
    # Each node is the mapping's text of its tool, scored by its route, best first.
    assert nodes[0].node.get_content().startswith("Tool name: get_weather\n")
    scores = [n.score for n in nodes]
    assert all(isinstance(s, float) for s in scores)
    assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]


def test_max_tools(make: Callable[..., SynaptorouteToolRetriever]) -> None:
    assert len(make(max_tools=1).retrieve(CLEAR[1][0])) == 1
    assert _names(make(max_tools=1).retrieve(CLEAR[1][0])) == ["convert_currency"]
    assert len(make().retrieve(CLEAR[1][0])) == 5  # the default
    assert len(make(max_tools=None).retrieve(CLEAR[1][0])) == len(FUNCTIONS)
    assert len(make(max_tools=50).retrieve(CLEAR[1][0])) == len(FUNCTIONS)


def test_threshold_keeps_the_tools_that_reach_it(
    make: Callable[..., SynaptorouteToolRetriever],
) -> None:
    # convert_currency scores 0.68, the next tool 0.36.
    retriever = make(threshold=0.5, max_tools=None)
    assert _names(retriever.retrieve(CLEAR[1][0])) == ["convert_currency"]
    assert all(
        n.score is not None and n.score >= 0.5 for n in retriever.retriever.retrieve(CLEAR[1][0])
    )


async def test_no_match_all_retrieves_every_tool_unscored(
    make: Callable[..., SynaptorouteToolRetriever], tools: list[BaseTool]
) -> None:
    retriever = make(threshold=0.5, max_tools=2, on_no_match="all")
    # Every tool, in the given order, past max_tools: as without the retriever.
    assert retriever.retrieve(OFF_TOPIC) == tools
    assert await retriever.aretrieve(OFF_TOPIC) == tools
    assert all(n.score is None for n in retriever.retriever.retrieve(OFF_TOPIC))


async def test_no_match_none_retrieves_nothing(
    make: Callable[..., SynaptorouteToolRetriever],
) -> None:
    retriever = make(threshold=0.5, on_no_match="none")
    assert retriever.retrieve(OFF_TOPIC) == []
    assert await retriever.aretrieve(OFF_TOPIC) == []
    assert _names(await retriever.aretrieve(CLEAR[1][0])) == ["convert_currency"]


@pytest.mark.parametrize("query", ["", "   ", "\u200b"])
async def test_empty_query_is_a_no_match(
    make: Callable[..., SynaptorouteToolRetriever], tools: list[BaseTool], query: str
) -> None:
    # An agent asks with "" when there is no user input; the model reads nothing of
    # blanks or a zero-width space either.
    assert make(max_tools=2).retrieve(query) == tools
    assert await make(max_tools=2).aretrieve(query) == tools
    assert await make(on_no_match="none").aretrieve(query) == []


def test_utterances_change_the_selection(
    make: Callable[..., SynaptorouteToolRetriever],
) -> None:
    query = "I need a room near the airport"
    with pytest.warns(UserWarning, match="fewer than 3 example utterances"):
        bare = make(utterances=None, max_tools=1)
    assert _names(bare.retrieve(query)) == ["search_flights"]
    assert _names(make(max_tools=1).retrieve(query)) == ["book_hotel"]


def test_node_postprocessors_apply(make: Callable[..., SynaptorouteToolRetriever]) -> None:
    query = CLEAR[1][0]  # convert_currency 0.68, then 0.36 and below
    assert len(make(max_tools=None).retrieve(query)) == len(FUNCTIONS)
    cut = make(max_tools=None, node_postprocessors=[SimilarityPostprocessor(similarity_cutoff=0.5)])
    assert _names(cut.retrieve(query)) == ["convert_currency"]
    assert len(cut.node_postprocessors) == 1


async def test_postprocessors_leave_the_fallback_and_a_name_lookup_alone(
    make: Callable[..., SynaptorouteToolRetriever],
) -> None:
    # The no-match fallback's tools are unscored: a SimilarityPostprocessor dropped them
    # all, and on_no_match="all" ("the agent works as without the retriever") bound no
    # tool; a name lookup must not depend on a postprocessor either.
    drop_all = SimilarityPostprocessor(similarity_cutoff=1.1)
    cut = make(threshold=0.4, node_postprocessors=[drop_all])
    for query in ("", OFF_TOPIC):
        assert len(cut.retrieve(query)) == len(FUNCTIONS)
        assert len(await cut.aretrieve(query)) == len(FUNCTIONS)
    assert _names(cut.retrieve("get_weather")) == ["get_weather"]
    assert cut.retrieve(CLEAR[0][0]) == []  # ranked tools are postprocessed


class _Rename(BaseNodePostprocessor):
    """A postprocessor that changes the nodes it is given."""

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        for node in nodes:
            node.node.metadata["name"] = "renamed"
        return nodes


def test_a_postprocessor_changes_copies_only(
    make: Callable[..., SynaptorouteToolRetriever],
) -> None:
    # The retriever hands the tools' own nodes over when nothing may change them (no
    # postprocessor, a name lookup, the fallback): a postprocessor gets copies.
    query = CLEAR[0][0]
    changing = make(max_tools=1)
    changing.retriever.postprocessors.append(_Rename())
    assert [n.node.metadata["name"] for n in changing.retriever.retrieve(query)] == ["renamed"]
    assert [n.node.metadata["name"] for n in changing.retriever.retrieve(query)] == ["renamed"]
    assert _names(changing.retrieve("get_weather")) == ["get_weather"]  # the originals


def test_plain_functions_are_tools(make: Callable[..., SynaptorouteToolRetriever]) -> None:
    # Agents take plain functions as tools=; the retriever refused them.
    retriever = make(tools=list(FUNCTIONS))
    assert _names(retriever.retrieve(CLEAR[0][0]))[0] == CLEAR[0][1]
    assert all(isinstance(tool, FunctionTool) for tool in retriever.tools)


class _Retrievals(BaseEventHandler):
    """Records LlamaIndex's retrieval end events."""

    ends: list[RetrievalEndEvent] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "_Retrievals"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, RetrievalEndEvent):
            self.ends.append(event)


@pytest.fixture
def retrievals() -> Iterator[_Retrievals]:
    """An event handler on LlamaIndex's root dispatcher, removed afterwards."""
    handler = _Retrievals()
    handlers = get_dispatcher().event_handlers
    handlers.append(handler)
    try:
        yield handler
    finally:
        handlers.remove(handler)


async def test_llama_index_retrieval_events_fire(
    make: Callable[..., SynaptorouteToolRetriever], retrievals: _Retrievals
) -> None:
    retriever = make(max_tools=2)
    retriever.retrieve(CLEAR[0][0])
    await retriever.aretrieve(CLEAR[1][0])
    assert [[n.node.metadata["name"] for n in e.nodes] for e in retrievals.ends] == [
        _names(retriever.retrieve(CLEAR[0][0])),
        _names(retriever.retrieve(CLEAR[1][0])),
    ]


# -- sharing a selector ---------------------------------------------------------------


async def test_a_shared_selector_builds_and_ranks_the_routes(
    encoder: Encoder,
    make: Callable[..., SynaptorouteToolRetriever],
    tools: list[BaseTool],
) -> None:
    # A selector with a fallback (for its RouterQueryEngine) that no tool is named:
    # the fallback is the selector's selections' business, not the tools' routes'.
    selector = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES, encoder=encoder, on_no_match="fallback", fallback="general"
    )
    try:
        retriever = make(selector=selector, max_tools=1)
        assert retriever.selector is selector
        router = selector.router_for([t.metadata for t in tools])  # built by the retriever
        assert len(router) == len(FUNCTIONS)
        assert _names(await retriever.aretrieve("I need a room near the airport")) == ["book_hotel"]
        # The routes are the selector's: ranked as it ranks the same choices.
        ranked = selector.rank([t.metadata for t in tools], CLEAR[2][0], 1)
        assert _names(retriever.retrieve(CLEAR[2][0])) == [
            tools[int(ranked[0].name or "")].metadata.name
        ]
    finally:
        await selector.aclose()


def test_an_embedding_as_encoder(tools: list[BaseTool]) -> None:
    # A LlamaIndex BaseEmbedding, as SynaptorouteSelector.from_defaults takes it.
    retriever = SynaptorouteToolRetriever(
        tools, utterances=UTTERANCES, encoder=SynaptorouteEmbedding(), max_tools=1
    )
    assert _names(retriever.retrieve(CLEAR[0][0])) == ["get_weather"]


# -- refused --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_tools": 0}, "max_tools must be at least 1"),
        ({"max_tools": True}, "max_tools"),
        ({"max_tools": 2.5}, "max_tools"),
        ({"threshold": 1.5}, r"threshold must be a number in \[0.0, 1.0\]"),
        ({"threshold": True}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"on_no_match": "best"}, "on_no_match must be 'all' or 'none'"),
        ({"timeout": -1}, "timeout must be None or a number >= 0"),
        ({"utterances": {"get_weather": "will it rain"}}, "get_weather"),
        ({"utterances": {"get_wether": ["will it rain?"]}}, "did you mean 'get_weather'"),
    ],
)
def test_bad_settings_are_refused(
    make: Callable[..., SynaptorouteToolRetriever], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        make(**{"utterances": {}, **kwargs})


def test_a_key_far_from_every_tool_is_another_agents(
    make: Callable[..., SynaptorouteToolRetriever],
) -> None:
    # The selector's rule: only a key close to a tool without utterances is a typo.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tools without utterances are warned about
        make(utterances={"lookup_invoice": ["where is my invoice"]})


def test_few_utterances_are_warned_about_at_construction(
    make: Callable[..., SynaptorouteToolRetriever],
) -> None:
    with pytest.warns(UserWarning, match="fewer than 3 example utterances") as caught:
        make(utterances={})
    assert caught[0].filename == __file__  # this line, not the agent's first step


def test_selector_with_encoder_or_utterances_is_refused(
    encoder: Encoder, make: Callable[..., SynaptorouteToolRetriever]
) -> None:
    selector = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=encoder)
    for extra in ({"encoder": encoder}, {"utterances": UTTERANCES}):
        with pytest.raises(InvalidInputError, match="pass selector= or encoder=/utterances="):
            SynaptorouteToolRetriever(
                [FunctionTool.from_defaults(get_weather)], selector=selector, **extra
            )
    with pytest.raises(InvalidInputError, match="selector must be a SynaptorouteSelector"):
        make(selector=encoder)


@pytest.mark.parametrize(
    ("tools", "match"),
    [
        ([], "tools is empty"),
        ("get_weather", "tools must be a list of LlamaIndex tools"),
        ([get_weather, 3], r"tools\[1\] must be a LlamaIndex BaseTool or a function, got int"),
        (
            [
                FunctionTool.from_defaults(get_weather),
                FunctionTool.from_defaults(stock_price, name="get_weather"),
            ],
            "several tools share the name 'get_weather'",
        ),
    ],
)
def test_bad_tools_are_refused(
    make: Callable[..., SynaptorouteToolRetriever], tools: Any, match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        make(tools=tools)


@pytest.mark.parametrize(
    ("query", "match"),
    [
        (123, "must be a str or a QueryBundle"),
        (QueryBundle(query_str=b"rain"), "QueryBundle whose query_str is bytes"),  # type: ignore[arg-type]
        ("rain \ud800", "valid Unicode"),
    ],
)
async def test_a_bad_query_is_refused(
    make: Callable[..., SynaptorouteToolRetriever], query: Any, match: str
) -> None:
    retriever = make()
    with pytest.raises(InvalidInputError, match=match):
        retriever.retrieve(query)
    with pytest.raises(InvalidInputError, match=match):
        await retriever.aretrieve(query)


# -- agents ---------------------------------------------------------------------------


async def test_function_agent_binds_its_tools_and_the_retrieved_ones(
    make: Callable[..., SynaptorouteToolRetriever],
) -> None:
    # get_tools is what the agent calls before each LLM call (and before each tool call).
    docs = FunctionTool.from_defaults(search_docs)
    retriever = make(max_tools=1, threshold=0.4, on_no_match="none")
    agent = FunctionAgent(tools=[docs], tool_retriever=retriever, llm=MockLLM())
    assert [t.metadata.name for t in await agent.get_tools(CLEAR[0][0])] == [
        "search_docs",
        "get_weather",
    ]
    assert [t.metadata.name for t in await agent.get_tools(OFF_TOPIC)] == ["search_docs"]
    assert [t.metadata.name for t in await agent.get_tools(None)] == ["search_docs"]


@pytest.mark.parametrize("name", [fn.__name__ for fn in FUNCTIONS])
async def test_a_tool_name_retrieves_its_tool(
    make: Callable[..., SynaptorouteToolRetriever], name: str
) -> None:
    # Before running a tool call, an agent looks the tool up with its name as the query
    # (get_tools(ev.tool_name)) and answers "Tool ... not found" without it: whatever the
    # threshold (a name scores 0.81 to 0.93 against its own route here) or no-match policy.
    retriever = make(max_tools=3, threshold=0.99, on_no_match="none")
    assert _names(await retriever.aretrieve(name)) == [name]
    assert _names(retriever.retrieve(name)) == [name]
    assert [n.score for n in retriever.retriever.retrieve(name)] == [1.0]
    # Only the exact name: another text is ranked.
    assert retriever.retrieve(name.upper()) == []


async def test_function_agent_run_calls_the_retrieved_tools(
    make: Callable[..., SynaptorouteToolRetriever],
) -> None:
    # A real function-calling mock LLM (llama-index-core 0.14.x after 0.14.0) that calls
    # every tool it is given, with their defaults.
    mock = getattr(llama_index.core.llms.mock, "MockFunctionCallingLLM", None)
    if mock is None:
        pytest.skip("this llama-index-core has no MockFunctionCallingLLM")
    docs = FunctionTool.from_defaults(search_docs)
    retriever = make(max_tools=1, threshold=0.4, on_no_match="none")
    agent = FunctionAgent(tools=[docs], tool_retriever=retriever, llm=mock())
    for message, called in [
        (CLEAR[1][0], ["search_docs", "convert_currency"]),
        (OFF_TOPIC, ["search_docs"]),
    ]:
        handler = agent.run(user_msg=message)
        events = [e async for e in handler.stream_events() if isinstance(e, ToolCallResult)]
        await handler
        # The workflow runs the calls concurrently: their results come in either order.
        assert sorted(e.tool_name for e in events) == sorted(called)
        assert all(not e.tool_output.is_error for e in events)


# -- docs -----------------------------------------------------------------------------


def test_the_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    if not hasattr(llama_index.core.llms.mock, "MockFunctionCallingLLM"):
        pytest.skip("the example's mock LLM came after llama-index-core 0.14.0")
    _, shown = docs_example("SynaptorouteToolRetriever(")
    assert capsys.readouterr().out.splitlines() == [line for line in shown if line.startswith("[")]
