"""Adapters cross frameworks: the LlamaIndex selector routes with a LangChain ``Embeddings``
and the LangChain router with a LlamaIndex ``BaseEmbedding``; each package's synaptoroute
adapter is unwrapped by the other, so the model is shared, not wrapped twice."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.embeddings import Embeddings
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.tools import ToolMetadata
from llama_index.selectors.synaptoroute import SynaptorouteEmbedding, SynaptorouteSelector
from llamaindex_support import CLEAR_QUERIES, UTTERANCES

from synaptoroute import Encoder

lc = pytest.importorskip("langchain_synaptoroute")


class LangChainModel(Embeddings):
    """A plain LangChain ``Embeddings`` (not synaptoroute's) over the real model."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.model = "minilm-via-langchain"

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [[float(x) for x in row] for row in self.inner.encode(texts)]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


class LlamaIndexModel(BaseEmbedding):
    """A plain LlamaIndex ``BaseEmbedding`` (not synaptoroute's) over the real model."""

    _inner: Any = PrivateAttr()

    def __init__(self, inner: Encoder) -> None:
        super().__init__(model_name="minilm-via-llamaindex")
        self._inner = inner

    def _get_query_embedding(self, query: str) -> Embedding:
        return [float(x) for x in self._inner.encode([query])[0]]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_query_embedding(text)


def test_the_selector_routes_with_a_langchain_embeddings(
    encoder: Encoder, choices: list[ToolMetadata]
) -> None:
    selector = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES, encoder=LangChainModel(encoder)
    )
    assert selector.encoder.model_id == "langchain:LangChainModel:minilm-via-langchain"
    direct = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=encoder)
    for query, expected in CLEAR_QUERIES:
        result = selector.select(choices, query)
        assert result.ind == expected
        assert result == direct.select(choices, query)


def test_the_selector_unwraps_langchains_synaptoroute_embeddings(encoder: Encoder) -> None:
    wrapped = lc.SynaptorouteEmbeddings(encoder=encoder)
    assert SynaptorouteSelector.from_defaults(encoder=wrapped).encoder is encoder


def test_the_langchain_router_routes_with_a_llama_index_embedding(encoder: Encoder) -> None:
    branches = {name: (texts, lambda q, n=name: n) for name, texts in UTTERANCES.items()}
    model = LlamaIndexModel(encoder)
    router = lc.SynaptorouteRouter.from_branches(branches, encoder=model)
    # Named by its Python class: it has no class_name() of its own.
    assert router.router.encoder.model_id == "llama-index/LlamaIndexModel/minilm-via-llamaindex"
    names = list(UTTERANCES)
    for query, expected in CLEAR_QUERIES:
        assert router.invoke(query) == names[expected]


def test_the_langchain_router_unwraps_llama_indexs_synaptoroute_embedding(
    encoder: Encoder,
) -> None:
    branches = {name: (texts, lambda q, n=name: n) for name, texts in UTTERANCES.items()}
    router = lc.SynaptorouteRouter.from_branches(branches, encoder=SynaptorouteEmbedding(encoder))
    assert router.router.encoder is encoder


def test_something_else_is_refused_with_a_clear_error() -> None:
    with pytest.raises(TypeError, match="LangChain Embeddings or a LlamaIndex BaseEmbedding"):
        SynaptorouteSelector.from_defaults(encoder=object())
