"""LlamaIndex's embedding events for a selection's query embedding.

LlamaIndex's own ``EmbeddingSingleSelector`` embeds the query with
``BaseEmbedding.get_query_embedding``, which dispatches ``EmbeddingStartEvent`` and
``EmbeddingEndEvent`` (instrumentation) around a ``CBEventType.EMBEDDING`` callback
event. :class:`~llama_index.selectors.synaptoroute.SynaptorouteSelector` embeds the
query inside its router instead: one place, ``AdaptiveRouter._embed``, serves
``query_top_k`` and the batching worker alike (through the router's query cache, and
for a batch of several callers' queries with one encoder call). So the selector
dispatches the same events itself, with :func:`query_embedding_events`: in the
selection's own context (under the caller's callback trace, which a worker thread would
not be), around the router call, with the vector the router embedded the query into,
which :class:`SelectionRouter` hands over. Nothing is embedded twice and the encoder is
called no more often. They go in a span of their own, named as LlamaIndex names the
embedding's call (``SynaptorouteEmbedding.get_query_embedding``, or
``aget_query_embedding`` under ``_aselect``), a child of the selection's span: tracers
such as OpenInference give a span the kind of the events in it, and the selection's
span is no embedding.
"""

from __future__ import annotations

import inspect
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import Token
from typing import Any, Literal, cast

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload

# Where LlamaIndex's own modules get them (the dispatcher's span decorator, its tags and
# drop event); these modules import them from llama-index-instrumentation without
# re-exporting them by name (mypy's no_implicit_reexport).
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.dispatcher import (  # type: ignore[attr-defined]
    active_instrument_tags,
)
from llama_index.core.instrumentation.events.embedding import (
    EmbeddingEndEvent,
    EmbeddingStartEvent,
)
from llama_index.core.instrumentation.events.span import (  # type: ignore[attr-defined]
    SpanDropEvent,
)
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.settings import Settings
from numpy.typing import NDArray
from typing_extensions import override

from synaptoroute import AdaptiveRouter, CallableEncoder, EncoderProtocol
from synaptoroute.encoder import EncoderWrapper
from synaptoroute.forking import APP_CACHE, hold_across_fork

from .embeddings import SynaptorouteEmbedding

__all__ = [
    "QueryEmbeddingCall",
    "QueryEmbeddingEvents",
    "SelectionRouter",
    "model_dict",
    "query_embedding_events",
]

_dispatcher = get_dispatcher(__name__)

#: The embedding call whose span a selection's events go in: ``_select``'s, ``_aselect``'s.
QueryEmbeddingCall = Literal["get_query_embedding", "aget_query_embedding"]


class _Wait:
    """One selection waiting for the vector of its query, in the thread that made it."""

    def __init__(self) -> None:
        self.vector: NDArray[np.float32] | None = None
        self.thread = threading.get_ident()


class _Waiting:
    """The selections waiting on a router, by query text.

    Its own lock (not the router's): taken around no other lock and no router call,
    registered so that a fork waits for it.
    """

    def __init__(self) -> None:
        self._by_text: dict[str, list[_Wait]] = {}
        self._lock = threading.Lock()
        hold_across_fork(self, APP_CACHE, in_child="_forked")

    def __bool__(self) -> bool:
        return bool(self._by_text)

    def _forked(self) -> None:
        # In a forked child, under the lock: only the thread that forked came along, so
        # the other threads' selections never end there to remove their waits, and a
        # router that kept them would hand every later query's vector over for nothing.
        me = threading.get_ident()
        kept = {text: [w for w in waits if w.thread == me] for text, waits in self._by_text.items()}
        self._by_text = {text: waits for text, waits in kept.items() if waits}

    @contextmanager
    def waiting_for(self, text: str) -> Iterator[_Wait]:
        """A :class:`_Wait` that receives the vector ``text`` is embedded into while
        the block runs."""
        wait = _Wait()
        with self._lock:
            self._by_text.setdefault(text, []).append(wait)
        try:
            yield wait
        finally:
            with self._lock:
                waits = self._by_text.get(text, [])
                if wait in waits:
                    waits.remove(wait)
                if not waits:
                    self._by_text.pop(text, None)

    def deliver(self, texts: Sequence[str], vectors: NDArray[np.float32]) -> None:
        """Hand ``vectors`` (one row per text) to the selections waiting for ``texts``."""
        with self._lock:
            for text, vector in zip(texts, vectors, strict=True):
                for wait in self._by_text.get(text, ()):
                    # Any embedding of the text will do: one text, one vector, whoever
                    # asked first (a concurrent selection of the same query included).
                    if wait.vector is None:
                        wait.vector = vector.copy()  # the router's array stays its own


class SelectionRouter(AdaptiveRouter):
    """An ``AdaptiveRouter`` that hands each waiting selection its query's vector.

    Every query embedding of a router, sync or through a batching worker, cached or
    encoded, goes through ``_embed``; this router passes the vectors it returns on to
    the selections registered with :meth:`waiting_for`, and changes nothing else.
    """

    def __init__(self, encoder: EncoderProtocol, *, threshold: float) -> None:
        self._waiting = _Waiting()
        super().__init__(encoder, threshold=threshold)

    def waiting_for(self, text: str) -> AbstractContextManager[_Wait]:
        """A context manager: its :class:`_Wait` gets ``text``'s vector when the router
        embeds ``text`` meanwhile (``None`` if it does not: an error, an empty query)."""
        return self._waiting.waiting_for(text)

    @override
    def _embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        vectors = super()._embed(texts)
        # Read without the lock: a selection registers before its query is queued or
        # run, so it is seen here; with none waiting, queries pay nothing more.
        if self._waiting:
            self._waiting.deliver(texts, vectors)
        return vectors


def _embeds_with_llama_index(encoder: object) -> bool:
    """Whether ``encoder``, or one it wraps, calls a LlamaIndex embedding, whose own
    calls dispatch the embedding events: a ``LlamaIndexEncoder``, or core's
    ``as_encoder`` adapter (a ``CallableEncoder`` over the embedding's
    ``get_text_embedding_batch``), bare or inside any ``EncoderWrapper`` (a
    ``RecordingEncoder``, a progress bar)."""
    while isinstance(encoder, EncoderWrapper):
        encoder = encoder.inner
    # Both adapters hold the embedding's bound method as their function.
    embed = encoder.embed_function if isinstance(encoder, CallableEncoder) else None
    return isinstance(getattr(embed, "__self__", None), BaseEmbedding)


def model_dict(embedding: BaseEmbedding) -> dict[str, Any]:
    """What the installed llama-index-core's ``get_query_embedding`` sends as an
    embedding's ``model_dict``: its ``to_payload()``, or, in the releases before that
    method (0.14.0 has none), its ``to_dict()`` less an ``api_key``."""
    to_payload = getattr(embedding, "to_payload", None)
    if to_payload is not None:
        return cast("dict[str, Any]", to_payload())
    payload = embedding.to_dict()
    payload.pop("api_key", None)
    return payload


class QueryEmbeddingEvents:
    """What a selector's query-embedding events name and where they go.

    Built from the ``SynaptorouteEmbedding`` the selector was given, it is the
    events' embedding: its ``to_payload()`` is their ``model_dict``, it is the
    instance of their span and its ``callback_manager`` gets the callback events, as
    for any LlamaIndex embedding. Built from an encoder, the embedding is a
    ``SynaptorouteEmbedding`` over it (made at the first event, so that building a
    selector stays free), and the callback manager LlamaIndex's global
    ``Settings.callback_manager`` (as ``Settings.embed_model``'s), read at each selection.

    Copies of a selector share it (a deep copy of the embedding would copy its
    callback handlers, and the copy's events go to the copies).
    """

    def __init__(self, source: EncoderProtocol | SynaptorouteEmbedding) -> None:
        self._embed_model = source if isinstance(source, SynaptorouteEmbedding) else None
        self._encoder = None if isinstance(source, SynaptorouteEmbedding) else source
        self._built: SynaptorouteEmbedding | None = None

    @classmethod
    def of(cls, encoder: EncoderProtocol) -> QueryEmbeddingEvents | None:
        """The events of a selector built with ``encoder``; ``None`` for an encoder over
        a LlamaIndex embedding (wrapped or not), whose own calls dispatch them."""
        return None if _embeds_with_llama_index(encoder) else cls(encoder)

    def embedding(self) -> SynaptorouteEmbedding:
        """The embedding the events are of: the one given, or one over the encoder."""
        if self._embed_model is not None:
            return self._embed_model
        if self._built is None:
            assert self._encoder is not None
            # Two first selections at once may both make one: either will do.
            self._built = SynaptorouteEmbedding(self._encoder)
        return self._built

    def payload(self) -> dict[str, Any]:
        """The ``model_dict`` of the events: :func:`model_dict` of the embedding."""
        return model_dict(self.embedding())

    @property
    def callback_manager(self) -> CallbackManager:
        """The callback manager that gets the ``EMBEDDING`` events."""
        if self._embed_model is not None:
            return self._embed_model.callback_manager
        return Settings.callback_manager


class _Call:
    """What a span's call returned (``None`` until it is known)."""

    result: list[float] | None = None


#: The signatures of the embedding calls a span stands for, by class and method: a
#: method's signature is its class's, and reading it on every selection is needless work.
_SIGNATURES: dict[tuple[type, str], inspect.Signature] = {}


def _signature(embed_model: BaseEmbedding, method: str) -> inspect.Signature:
    key = (type(embed_model), method)
    signature = _SIGNATURES.get(key)
    if signature is None:  # a race computes it twice, with the same result
        signature = _SIGNATURES[key] = inspect.signature(getattr(embed_model, method))
    return signature


@contextmanager
def _call_span(embed_model: BaseEmbedding, method: str, query: str) -> Iterator[_Call]:
    """A span for ``embed_model.<method>(query)``, opened and closed as LlamaIndex's
    ``@dispatcher.span`` does for that call: its id ``<Class>.<method>-<uuid>``, its
    parent the active span, the call's instance and bound arguments given to the span
    handlers; ended with ``_Call.result`` or, on an exception (a cancellation too),
    dropped with a ``SpanDropEvent``. The span is the active one inside the block."""
    bound_args = _signature(embed_model, method).bind(query)
    id_ = f"{type(embed_model).__name__}.{method}-{uuid.uuid4()}"
    token = active_span_id.set(id_)
    parent_id = None if token.old_value is Token.MISSING else token.old_value
    call = _Call()
    try:
        _dispatcher.span_enter(
            id_=id_,
            bound_args=bound_args,
            instance=embed_model,
            parent_id=parent_id,
            tags=active_instrument_tags.get(),
        )
        try:
            yield call
        except BaseException as exc:
            _dispatcher.event(SpanDropEvent(span_id=id_, err_str=str(exc)))
            _dispatcher.span_drop(id_=id_, bound_args=bound_args, instance=embed_model, err=exc)
            raise
        _dispatcher.span_exit(
            id_=id_, bound_args=bound_args, instance=embed_model, result=call.result
        )
    finally:
        active_span_id.reset(token)


@contextmanager
def query_embedding_events(
    events: QueryEmbeddingEvents,
    router: SelectionRouter,
    query: str,
    method: QueryEmbeddingCall = "get_query_embedding",
) -> Iterator[None]:
    """Dispatch LlamaIndex's events of one query embedding around a router call in
    the block, as ``BaseEmbedding.get_query_embedding`` (or, with ``method``,
    ``aget_query_embedding``) dispatches them: in a span of that call, an
    ``EmbeddingStartEvent``, a ``CBEventType.EMBEDDING`` callback event (ended with
    the query and its vector, or the exception), an ``EmbeddingEndEvent``."""
    embed_model = events.embedding()
    with _call_span(embed_model, method, query) as call:
        model_dict = events.payload()
        _dispatcher.event(EmbeddingStartEvent(model_dict=model_dict))
        with (
            events.callback_manager.event(
                CBEventType.EMBEDDING, payload={EventPayload.SERIALIZED: model_dict}
            ) as event,
            router.waiting_for(query) as wait,
        ):
            yield
            # The selector asks for events only for a query the router embeds.
            assert wait.vector is not None, "the router embedded no query"
            call.result = wait.vector.tolist()
            event.on_end(
                payload={EventPayload.CHUNKS: [query], EventPayload.EMBEDDINGS: [call.result]}
            )
        _dispatcher.event(EmbeddingEndEvent(chunks=[query], embeddings=[call.result]))
