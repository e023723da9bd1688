"""A selection's query embedding dispatches LlamaIndex's embedding events.

As ``BaseEmbedding.get_query_embedding`` does for LlamaIndex's own
``EmbeddingSingleSelector``: an ``EmbeddingStartEvent`` and an ``EmbeddingEndEvent``
(instrumentation, in a ``SynaptorouteEmbedding.get_query_embedding`` span, a child of
the selector's) and a ``CBEventType.EMBEDDING`` callback event (under the caller's
trace), once per query, sync and async, with the encoder called no more often than
without them; none of the selector's own when the encoder calls a LlamaIndex embedding.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

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
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RouterQueryEngine
from llama_index.core.tools import QueryEngineTool, ToolMetadata
from llama_index.selectors.synaptoroute import (
    LlamaIndexEncoder,
    SynaptorouteEmbedding,
    SynaptorouteSelector,
)
from llama_index.selectors.synaptoroute.observability import SelectionRouter, model_dict
from llamaindex_support import UTTERANCES
from numpy.typing import NDArray

from synaptoroute import Encoder, EncoderProtocol
from synaptoroute.adapters import as_encoder
from synaptoroute.encoder import EncoderWrapper
from synaptoroute.testing import RecordingEncoder, in_forked_child

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
    yield from _on_root(EmbeddingEvents(), get_dispatcher().event_handlers)


H = TypeVar("H")


def _on_root(handler: H, handlers: list[Any]) -> Iterator[H]:
    """``handler`` in one of the root dispatcher's lists of handlers while the test runs."""
    handlers.append(handler)
    try:
        yield handler
    finally:
        handlers.remove(handler)


class Spans(SimpleSpanHandler):
    """Records the spans the root dispatcher opens, with each one's instance, bound
    arguments and result (what tracers such as OpenInference read)."""

    calls: dict[str, tuple[Any, dict[str, Any], Any]] = Field(default_factory=dict)

    def span_enter(
        self, id_: str, bound_args: inspect.BoundArguments, instance: Any = None, **kw: Any
    ) -> None:
        self.calls[id_] = (instance, dict(bound_args.arguments), None)
        super().span_enter(id_, bound_args, instance, **kw)

    def span_exit(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any = None,
        result: Any = None,
        **kw: Any,
    ) -> None:
        self.calls[id_] = (*self.calls[id_][:2], result)
        super().span_exit(id_, bound_args, instance, result, **kw)

    def named(self, prefix: str, *, dropped: bool = False) -> list[Any]:
        """The spans ended (or dropped) whose id starts with ``prefix``."""
        spans = self.dropped_spans if dropped else self.completed_spans
        return [s for s in spans if s.id_.startswith(prefix)]

    def parent_of(self, id_: str) -> str | None:
        """The parent id of the ended or dropped span ``id_``."""
        (span,) = [s for s in [*self.completed_spans, *self.dropped_spans] if s.id_ == id_]
        return span.parent_id


@pytest.fixture
def spans() -> Iterator[Spans]:
    """A span handler on LlamaIndex's root dispatcher, removed afterwards."""
    yield from _on_root(Spans(), get_dispatcher().span_handlers)


def _close_to_the_model(embedding: list[float], encoder: Encoder, text: str) -> None:
    assert np.allclose(embedding, encoder.encode([text])[0], atol=1e-5)


def test_select_dispatches_one_embedding_pair_in_an_embedding_span_under_its_own(
    recording: RecordingEncoder,
    encoder: Encoder,
    choices: list[ToolMetadata],
    instrumented: EmbeddingEvents,
    spans: Spans,
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
    # In a span of their own, a child of the selector's, as get_query_embedding's
    # under EmbeddingSingleSelector._select: tracers (OpenInference) label a span by the
    # events in it, and the selection's is no embedding.
    (selection,) = spans.named("SynaptorouteSelector._select-")
    (embedding,) = spans.named("SynaptorouteEmbedding.get_query_embedding-")
    assert start.span_id == end.span_id == embedding.id_ != selection.id_
    assert spans.parent_of(embedding.id_) == selection.id_
    instance, arguments, result = spans.calls[embedding.id_]
    assert isinstance(instance, SynaptorouteEmbedding)
    assert model_dict(instance) == start.model_dict
    assert arguments == {"query": QUERY}
    assert result == end.embeddings[0]
    assert spans.open_spans == {}
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
    spans: Spans,
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
    selections = {s.id_ for s in spans.named("SynaptorouteSelector._aselect-")}
    for text, end in by_query.items():
        assert end.chunks == [text]
        _close_to_the_model(end.embeddings[0], encoder, text)
        # An aget_query_embedding span, a child of its selection's _aselect span.
        assert str(end.span_id).startswith("SynaptorouteEmbedding.aget_query_embedding-")
        assert spans.parent_of(str(end.span_id)) in selections
        assert spans.calls[str(end.span_id)][1:] == ({"query": text}, end.embeddings[0])
    # Each in its own selection's span (the worker's thread has none).
    assert len({spans.parent_of(str(e.span_id)) for e in ends}) == 2
    assert {s.span_id for s in starts} == {e.span_id for e in ends}
    assert spans.open_spans == {}
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
        assert start.payload[EventPayload.SERIALIZED] == model_dict(embed_model)
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


class Gated(EncoderWrapper):
    """The real encoder, whose call for the text ``GATED`` waits for ``gate`` (after
    setting ``entered``) and raises for the text ``FAILING``."""

    GATED, FAILING = "a query held up in the encoder", "a query the encoder fails on"

    def __init__(self, inner: EncoderProtocol) -> None:
        super().__init__(inner)
        self.entered, self.gate = threading.Event(), threading.Event()

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if self.FAILING in texts:
            raise RuntimeError("the model is down")
        if self.GATED in texts:
            self.entered.set()
            assert self.gate.wait(60)
        return super().encode(texts)


def test_an_error_drops_the_embedding_span_and_restores_the_active_one(
    encoder: Encoder, choices: list[ToolMetadata], instrumented: EmbeddingEvents, spans: Spans
) -> None:
    selector = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=Gated(encoder))
    selector.router_for(choices)
    instrumented.events.clear()
    with pytest.raises(RuntimeError, match="the model is down"):
        selector.select(choices, Gated.FAILING)
    (dropped,) = spans.named("SynaptorouteEmbedding.get_query_embedding-", dropped=True)
    (selection,) = spans.named("SynaptorouteSelector._select-", dropped=True)
    assert spans.parent_of(dropped.id_) == selection.id_
    assert "the model is down" in dropped.metadata["error"]
    assert spans.open_spans == {}
    assert active_span_id.get() is None
    (start,) = instrumented.of(EmbeddingStartEvent)
    assert start.span_id == dropped.id_
    assert instrumented.of(EmbeddingEndEvent) == []


async def test_a_cancelled_aselect_drops_its_embedding_span(
    encoder: Encoder,
    choices: list[ToolMetadata],
    make_selector: Callable[..., SynaptorouteSelector],
    spans: Spans,
) -> None:
    gated = Gated(encoder)
    selector = make_selector(encoder=gated)
    await selector.aselect(choices, "warm up")
    selection = asyncio.create_task(selector.aselect(choices, Gated.GATED))
    try:
        assert await asyncio.to_thread(gated.entered.wait, 60)  # in the worker's encoder call
        selection.cancel()
        with pytest.raises(asyncio.CancelledError):
            await selection
    finally:
        gated.gate.set()
    (dropped,) = spans.named("SynaptorouteEmbedding.aget_query_embedding-", dropped=True)
    (cancelled,) = spans.named("SynaptorouteSelector._aselect-", dropped=True)
    assert spans.parent_of(dropped.id_) == cancelled.id_
    assert [s for s in spans.open_spans if "get_query_embedding" in s] == []


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda model: model, id="the package wraps it"),
        pytest.param(as_encoder, id="core as_encoder"),
        pytest.param(lambda model: RecordingEncoder(as_encoder(model)), id="wrapped as_encoder"),
        pytest.param(
            lambda model: RecordingEncoder(LlamaIndexEncoder(model)), id="wrapped LlamaIndexEncoder"
        ),
    ],
)
def test_a_wrapped_llamaindex_embedding_dispatches_its_own_events_once(
    choices: list[ToolMetadata],
    instrumented: EmbeddingEvents,
    wrap: Callable[[MockEmbedding], Any],
) -> None:
    # Its own get_text_embedding_batch dispatches them: the selector adds none, however
    # the embedding reaches it (core's adapter, inside an EncoderWrapper).
    selector = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES, encoder=wrap(MockEmbedding(embed_dim=8))
    )
    selector.router_for(choices)
    instrumented.events.clear()
    selector.select(choices, QUERY)
    (start,) = instrumented.of(EmbeddingStartEvent)
    assert start.model_dict["class_name"] == "MockEmbedding"
    assert [e.chunks for e in instrumented.of(EmbeddingEndEvent)] == [[QUERY]]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_during_a_selection_keeps_no_wait_of_it(
    encoder: Encoder, choices: list[ToolMetadata]
) -> None:
    # A selection in flight in another thread at the fork never ends in the child (its
    # thread did not come along): its wait must not stay registered there for good.
    gated = Gated(encoder)
    selector = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=gated)
    router = selector.router_for(choices)
    assert isinstance(router, SelectionRouter)
    in_flight = threading.Thread(target=selector.select, args=(choices, Gated.GATED))
    in_flight.start()
    try:
        assert gated.entered.wait(60)  # registered, in the encoder call

        def child() -> None:
            # The forking thread's own wait stays: its block goes on in the child.
            assert list(router._waiting._by_text) == ["mine"]
            assert selector.select(choices, QUERY).ind == 0
            assert list(router._waiting._by_text) == ["mine"]

        with router.waiting_for("mine"):
            assert sorted(router._waiting._by_text) == sorted([Gated.GATED, "mine"])
            assert in_forked_child(child) == 0
    finally:
        gated.gate.set()
        in_flight.join(60)
    assert not router._waiting  # the parent's selection ended, its wait with it
