"""A selection's query embedding dispatches LlamaIndex's embedding events.

As ``BaseEmbedding.get_query_embedding`` does for LlamaIndex's own
``EmbeddingSingleSelector``: an ``EmbeddingStartEvent`` and an ``EmbeddingEndEvent``
(instrumentation, under the selector's span) and a ``CBEventType.EMBEDDING`` callback
event (under the caller's trace), once per query, sync and async, with the encoder
called no more often than without them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from llama_index.core import Settings
from llama_index.core.bridge.pydantic import Field
from llama_index.core.callbacks import (
    CallbackManager,
    CBEventType,
    EventPayload,
    LlamaDebugHandler,
)
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.embedding import (
    EmbeddingEndEvent,
    EmbeddingStartEvent,
)
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RouterQueryEngine
from llama_index.core.tools import QueryEngineTool, ToolMetadata
from llama_index.selectors.synaptoroute import SynaptorouteEmbedding, SynaptorouteSelector
from llamaindex_support import UTTERANCES

from synaptoroute import Encoder
from synaptoroute.testing import RecordingEncoder

QUERY = "How do I get my money back?"
OTHER = "my password doesn't work anymore"


class EmbeddingEvents(BaseEventHandler):
    """Records the embedding events the root dispatcher sees."""

    events: list[BaseEvent] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "EmbeddingEvents"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, EmbeddingStartEvent | EmbeddingEndEvent):
            self.events.append(event)

    def of(self, kind: type[BaseEvent]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def instrumented() -> Iterator[EmbeddingEvents]:
    """An event handler on LlamaIndex's root dispatcher, removed afterwards."""
    handler = EmbeddingEvents()
    root = get_dispatcher()
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


def _close_to_the_model(embedding: list[float], encoder: Encoder, text: str) -> None:
    assert np.allclose(embedding, encoder.encode([text])[0], atol=1e-5)


def test_select_dispatches_one_embedding_pair_under_its_span(
    recording: RecordingEncoder,
    encoder: Encoder,
    choices: list[ToolMetadata],
    instrumented: EmbeddingEvents,
) -> None:
    selector = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=recording)
    selector.router_for(choices)  # the choices' embedding is no query's
    recording.clear()
    instrumented.events.clear()

    assert selector.select(choices, QUERY).ind == 0

    (start,) = instrumented.of(EmbeddingStartEvent)
    (end,) = instrumented.of(EmbeddingEndEvent)
    assert start.model_dict["class_name"] == "SynaptorouteEmbedding"
    assert start.model_dict["model_name"] == encoder.model_id
    assert end.chunks == [QUERY]
    _close_to_the_model(end.embeddings[0], encoder, QUERY)
    # Nested under the selector's own span, as get_query_embedding's under a selector's.
    assert start.span_id == end.span_id
    assert str(end.span_id).startswith("SynaptorouteSelector._select-")
    assert recording.calls == [[QUERY]]  # encoded once: the events cost no encoder call

    # A query the model reads nothing of is embedded by no one: no events.
    instrumented.events.clear()
    selector.select(choices, "   ")
    assert instrumented.events == []


async def test_aselect_dispatches_one_pair_per_query_in_its_own_span(
    recording: RecordingEncoder,
    encoder: Encoder,
    choices: list[ToolMetadata],
    make_selector: Callable[..., SynaptorouteSelector],
    instrumented: EmbeddingEvents,
) -> None:
    selector = make_selector(encoder=recording)
    await selector.aselect(choices, "warm up")  # builds the router, starts its worker
    recording.clear()
    instrumented.events.clear()

    # Concurrent: the worker may embed both queries in one encoder call.
    results = await asyncio.gather(
        selector.aselect(choices, QUERY), selector.aselect(choices, OTHER)
    )
    assert [r.ind for r in results] == [0, 1]

    starts, ends = instrumented.of(EmbeddingStartEvent), instrumented.of(EmbeddingEndEvent)
    assert len(starts) == len(ends) == 2
    by_query = {e.chunks[0]: e for e in ends}
    assert sorted(by_query) == sorted([QUERY, OTHER])
    for text, end in by_query.items():
        assert end.chunks == [text]
        _close_to_the_model(end.embeddings[0], encoder, text)
        assert str(end.span_id).startswith("SynaptorouteSelector._aselect-")
    # Each in its own selection's span (the worker's thread has none).
    assert len({e.span_id for e in ends}) == 2
    assert {s.span_id for s in starts} == {e.span_id for e in ends}
    encoded = [text for call in recording.calls for text in call]
    assert sorted(encoded) == sorted([QUERY, OTHER])  # each encoded once


def test_a_synaptoroute_embeddings_callback_manager_gets_the_embedding_events(
    encoder: Encoder,
    engine_tools: list[QueryEngineTool],
) -> None:
    debug = LlamaDebugHandler()
    callbacks = CallbackManager([debug])
    embed_model = SynaptorouteEmbedding(encoder, callback_manager=callbacks)
    selector = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=embed_model)
    engine = RouterQueryEngine(selector=selector, query_engine_tools=engine_tools, llm=MockLLM())
    engine.callback_manager = callbacks

    async def ask() -> None:
        await engine.aquery(OTHER)
        await selector.aclose()

    for run in (lambda: engine.query(QUERY), lambda: asyncio.run(ask())):
        debug.flush_event_logs()
        run()
        (pair,) = debug.get_event_pairs(CBEventType.EMBEDDING)
        start, end = pair
        assert start.payload is not None and end.payload is not None
        assert start.payload[EventPayload.SERIALIZED] == embed_model.to_payload()
        (text,) = end.payload[EventPayload.CHUNKS]
        _close_to_the_model(end.payload[EventPayload.EMBEDDINGS][0], encoder, text)
        # Under the engine's query event, in sync and async alike.
        (query_pair,) = debug.get_event_pairs(CBEventType.QUERY)
        assert callbacks.trace_map[query_pair[0].id_] == [start.id_]


async def test_without_an_embedding_the_global_callback_manager_gets_them(
    recording: RecordingEncoder,
    choices: list[ToolMetadata],
    make_selector: Callable[..., SynaptorouteSelector],
) -> None:
    debug = LlamaDebugHandler()
    before = Settings._callback_manager
    Settings.callback_manager = CallbackManager([debug])
    try:
        selector = make_selector(encoder=recording)  # the bundled model, no embedding
        selector.select(choices, QUERY)
        await selector.aselect(choices, OTHER)
    finally:
        Settings._callback_manager = before
    pairs = debug.get_event_pairs(CBEventType.EMBEDDING)
    assert [end.payload[EventPayload.CHUNKS] for _, end in pairs] == [[QUERY], [OTHER]]


def test_a_wrapped_llamaindex_embedding_dispatches_its_own_events_once(
    choices: list[ToolMetadata], instrumented: EmbeddingEvents
) -> None:
    # Its own get_text_embedding_batch dispatches them: the selector adds none. (A
    # guard against doubling them: it passed before the selector dispatched any.)
    selector = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES, encoder=MockEmbedding(embed_dim=8)
    )
    selector.router_for(choices)
    instrumented.events.clear()
    selector.select(choices, QUERY)
    assert len(instrumented.of(EmbeddingStartEvent)) == 1
    assert [e.chunks for e in instrumented.of(EmbeddingEndEvent)] == [[QUERY]]
