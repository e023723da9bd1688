"""LlamaIndex's embedding events for a selection's query embedding.

LlamaIndex's own ``EmbeddingSingleSelector`` embeds the query with
``BaseEmbedding.get_query_embedding``, which dispatches ``EmbeddingStartEvent`` and
``EmbeddingEndEvent`` (instrumentation) around a ``CBEventType.EMBEDDING`` callback
event. :class:`~llama_index.selectors.synaptoroute.SynaptorouteSelector` embeds the
query inside its router instead: one place, ``AdaptiveRouter._embed``, serves
``query_top_k`` and the batching worker alike (through the router's query cache, and
for a batch of several callers' queries with one encoder call). So the selector
dispatches the same events itself, with :func:`query_embedding_events`: in the
selection's own context (nested under its ``_select``/``_aselect`` span and under the
caller's callback trace, which a worker thread would not be), around the router call,
with the vector the router embedded the query into, which :class:`SelectionRouter`
hands over. Nothing is embedded twice and the encoder is called no more often.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import numpy as np
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload

# Where LlamaIndex's own modules get their dispatchers; that module imports it without
# re-exporting it by name (mypy's no_implicit_reexport).
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.events.embedding import (
    EmbeddingEndEvent,
    EmbeddingStartEvent,
)
from llama_index.core.settings import Settings
from numpy.typing import NDArray
from typing_extensions import override

from synaptoroute import AdaptiveRouter, EncoderProtocol
from synaptoroute.forking import APP_CACHE, hold_across_fork

from .embeddings import LlamaIndexEncoder, SynaptorouteEmbedding

__all__ = ["QueryEmbeddingEvents", "SelectionRouter", "query_embedding_events"]

_dispatcher = get_dispatcher(__name__)


class _Wait:
    """One selection waiting for the vector of its query."""

    def __init__(self) -> None:
        self.vector: NDArray[np.float32] | None = None


class _Waiting:
    """The selections waiting on a router, by query text.

    Its own lock (not the router's): taken around no other lock and no router call,
    registered so that a fork waits for it.
    """

    def __init__(self) -> None:
        self._by_text: dict[str, list[_Wait]] = {}
        self._lock = threading.Lock()
        hold_across_fork(self, APP_CACHE)

    def __bool__(self) -> bool:
        return bool(self._by_text)

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


class QueryEmbeddingEvents:
    """What a selector's query-embedding events name and where they go.

    Built from the ``SynaptorouteEmbedding`` the selector was given, its
    ``to_payload()`` is the events' ``model_dict`` and its ``callback_manager`` gets
    the callback events, as for any LlamaIndex embedding. Built from an encoder, the
    payload is that of a ``SynaptorouteEmbedding`` over it (made at the first event, so
    that building a selector stays free), and the callback manager LlamaIndex's global
    ``Settings.callback_manager`` (as ``Settings.embed_model``'s), read at each selection.

    Copies of a selector share it: a deep copy would have copied the embedding's
    callback handlers, and the copy's events gone to the copies.
    """

    def __init__(self, source: EncoderProtocol | SynaptorouteEmbedding) -> None:
        self._embed_model = source if isinstance(source, SynaptorouteEmbedding) else None
        self._encoder = None if isinstance(source, SynaptorouteEmbedding) else source
        self._payload: dict[str, Any] | None = None

    @classmethod
    def of(cls, encoder: EncoderProtocol) -> QueryEmbeddingEvents | None:
        """The events of a selector built with ``encoder``; ``None`` for a wrapped
        LlamaIndex embedding (``LlamaIndexEncoder``), whose own calls dispatch them."""
        return None if isinstance(encoder, LlamaIndexEncoder) else cls(encoder)

    def __deepcopy__(self, memo: dict[int, Any]) -> QueryEmbeddingEvents:
        return self

    def payload(self) -> dict[str, Any]:
        """The ``model_dict`` of the events (the embedding's current ``to_payload()``)."""
        if self._embed_model is not None:
            return self._embed_model.to_payload()
        if self._payload is None:
            assert self._encoder is not None
            self._payload = SynaptorouteEmbedding(self._encoder).to_payload()
        return dict(self._payload)

    @property
    def callback_manager(self) -> CallbackManager:
        """The callback manager that gets the ``EMBEDDING`` events."""
        if self._embed_model is not None:
            return self._embed_model.callback_manager
        return Settings.callback_manager


@contextmanager
def query_embedding_events(
    events: QueryEmbeddingEvents, router: SelectionRouter, query: str
) -> Iterator[None]:
    """Dispatch LlamaIndex's events of one query embedding around a router call in
    the block, as ``BaseEmbedding.get_query_embedding`` dispatches them: an
    ``EmbeddingStartEvent``, a ``CBEventType.EMBEDDING`` callback event (ended with
    the query and its vector, or the exception), an ``EmbeddingEndEvent``."""
    model_dict = events.payload()
    _dispatcher.event(EmbeddingStartEvent(model_dict=model_dict))
    with (
        events.callback_manager.event(
            CBEventType.EMBEDDING, payload={EventPayload.SERIALIZED: model_dict}
        ) as event,
        router.waiting_for(query) as wait,
    ):
        yield
        if wait.vector is None:  # pragma: no cover - the router embedded no query
            return
        embedding: list[float] = wait.vector.tolist()
        event.on_end(payload={EventPayload.CHUNKS: [query], EventPayload.EMBEDDINGS: [embedding]})
    _dispatcher.event(EmbeddingEndEvent(chunks=[query], embeddings=[embedding]))
