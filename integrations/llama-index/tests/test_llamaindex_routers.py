"""The selector inside LlamaIndex's RouterQueryEngine and RouterRetriever (real objects)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.base.base_selector import SelectorResult
from llama_index.core.base.response.schema import RESPONSE_TYPE
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RouterQueryEngine
from llama_index.core.retrievers import RouterRetriever
from llama_index.core.schema import TextNode
from llama_index.core.tools import QueryEngineTool, RetrieverTool
from llama_index.selectors.synaptoroute import SynaptorouteEmbedding, SynaptorouteSelector
from llamaindex_support import CLEAR_QUERIES, DESCRIPTIONS, OFF_TOPIC, TWO_TOPICS, UTTERANCES

from synaptoroute import Encoder, NoRouteMatchedError
from synaptoroute.testing import RecordingEncoder

NAMES = list(DESCRIPTIONS)
DOCUMENTS = {
    "billing": ["Refunds are paid within five working days.", "Invoices are emailed monthly."],
    "tech_support": [
        "If the app crashes, reinstall it.",
        "Reset your password from the login page.",
    ],
    "general": ["The office opens at nine.", "We are hiring engineers."],
}


def _selection(response: RESPONSE_TYPE) -> SelectorResult:
    assert response.metadata is not None
    result = response.metadata["selector_result"]
    assert isinstance(result, SelectorResult)
    return result


def _engine(selector: SynaptorouteSelector, tools: list[QueryEngineTool]) -> RouterQueryEngine:
    return RouterQueryEngine(selector=selector, query_engine_tools=tools, llm=MockLLM())


@pytest.fixture(scope="module")
def retriever_tools(encoder: Encoder) -> list[RetrieverTool]:
    """One small in-memory vector index per topic, embedded with SynaptorouteEmbedding."""
    embed_model = SynaptorouteEmbedding(encoder)
    tools = []
    for name, texts in DOCUMENTS.items():
        nodes = [TextNode(text=t, metadata={"topic": name}) for t in texts]
        index = VectorStoreIndex(nodes=nodes, embed_model=embed_model)
        tools.append(
            RetrieverTool.from_defaults(
                retriever=index.as_retriever(similarity_top_k=1),
                name=name,
                description=DESCRIPTIONS[name],
            )
        )
    return tools


def test_query_engine_routes_and_reports_selection(
    encoder: Encoder, engine_tools: list[QueryEngineTool]
) -> None:
    selector = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=encoder)
    engine = _engine(selector, engine_tools)
    for query, expected in CLEAR_QUERIES:
        response = engine.query(query)
        assert str(response) == f"[{NAMES[expected]}] {query}"
        result = _selection(response)
        assert result.inds == [expected]
        assert f"'{NAMES[expected]}' scored" in result.reason


async def test_query_engine_async(
    recording: RecordingEncoder,
    engine_tools: list[QueryEngineTool],
    make_selector: Callable[..., SynaptorouteSelector],
) -> None:
    engine = _engine(make_selector(encoder=recording), engine_tools)
    for query, expected in CLEAR_QUERIES:
        response = await engine.aquery(query)
        assert str(response) == f"[{NAMES[expected]}] {query}"
        assert _selection(response).inds == [expected]
    assert threading.get_ident() not in recording.threads
    # The choices were embedded once; each query cost one embedding of itself.
    assert recording.calls[1:] == [[q] for q, _ in CLEAR_QUERIES]


def test_query_engine_does_not_re_embed_choices(
    recording: RecordingEncoder, engine_tools: list[QueryEngineTool]
) -> None:
    selector = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=recording)
    engine = _engine(selector, engine_tools)
    # Distinct texts: a repeated one would be served from the router's query cache.
    queries = [f"{q} ({i})" for i in range(2) for q, _ in CLEAR_QUERIES]
    for query in queries:
        engine.query(query)
    assert len(recording.calls) == 1 + len(queries)
    assert recording.calls[1:] == [[q] for q in queries]


async def test_query_engine_multi_selection_summarises_with_the_llm(
    encoder: Encoder,
    engine_tools: list[QueryEngineTool],
    make_selector: Callable[..., SynaptorouteSelector],
) -> None:
    selector = make_selector(top_n=2)
    engine = _engine(selector, engine_tools)
    for response in (engine.query(TWO_TOPICS), await engine.aquery(TWO_TOPICS)):
        result = _selection(response)
        assert sorted(result.inds) == [0, 1]
        # MockLLM echoes the summary prompt, which holds both engines' answers.
        text = str(response)
        assert f"[billing] {TWO_TOPICS}" in text
        assert f"[tech_support] {TWO_TOPICS}" in text
        assert "[general]" not in text


def test_query_engine_no_match_policies(
    encoder: Encoder, engine_tools: list[QueryEngineTool]
) -> None:
    fallback = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES, encoder=encoder, on_no_match="fallback", fallback="general"
    )
    response = _engine(fallback, engine_tools).query(OFF_TOPIC)
    assert str(response) == f"[general] {OFF_TOPIC}"
    assert "fell back to 'general'" in _selection(response).reason

    best = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=encoder)
    top = best.router_for([t.metadata for t in engine_tools]).query_top_k(OFF_TOPIC, 1)[0]
    response = _engine(best, engine_tools).query(OFF_TOPIC)
    assert _selection(response).inds == [int(top.name or "")]

    strict = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES, encoder=encoder, on_no_match="raise"
    )
    with pytest.raises(NoRouteMatchedError, match="no choice reached the threshold"):
        _engine(strict, engine_tools).query(OFF_TOPIC)


def test_retriever_routes_sync(encoder: Encoder, retriever_tools: list[RetrieverTool]) -> None:
    selector = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=encoder)
    retriever = RouterRetriever(selector=selector, retriever_tools=retriever_tools, llm=MockLLM())
    for query, expected in CLEAR_QUERIES:
        nodes = retriever.retrieve(query)
        assert [n.node.metadata["topic"] for n in nodes] == [NAMES[expected]]


async def test_retriever_routes_async_and_multi(
    retriever_tools: list[RetrieverTool],
    make_selector: Callable[..., SynaptorouteSelector],
) -> None:
    single = RouterRetriever(
        selector=make_selector(), retriever_tools=retriever_tools, llm=MockLLM()
    )
    for query, expected in CLEAR_QUERIES:
        nodes = await single.aretrieve(query)
        assert [n.node.metadata["topic"] for n in nodes] == [NAMES[expected]]
    multi = RouterRetriever(
        selector=make_selector(top_n=3), retriever_tools=retriever_tools, llm=MockLLM()
    )
    for nodes in (multi.retrieve(TWO_TOPICS), await multi.aretrieve(TWO_TOPICS)):
        assert sorted(n.node.metadata["topic"] for n in nodes) == ["billing", "tech_support"]


async def test_retriever_no_match_fallback(
    retriever_tools: list[RetrieverTool],
    make_selector: Callable[..., SynaptorouteSelector],
) -> None:
    selector = make_selector(on_no_match="fallback", fallback="general")
    retriever = RouterRetriever(selector=selector, retriever_tools=retriever_tools, llm=MockLLM())
    for nodes in (retriever.retrieve(OFF_TOPIC), await retriever.aretrieve(OFF_TOPIC)):
        assert [n.node.metadata["topic"] for n in nodes] == ["general"]
