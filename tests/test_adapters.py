"""``synaptoroute.adapters.as_encoder``: what callers may pass as ``encoder=``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from synaptoroute import CallableEncoder, HashingEncoder
from synaptoroute.adapters import as_encoder


def test_an_encoder_is_recognised_without_running_its_model() -> None:
    # isinstance() with the runtime protocol reads `dimension` before Python 3.12: a
    # CallableEncoder then embedded a probe text, and a remote API that was down made
    # as_encoder raise EncoderError instead of returning the encoder.
    calls: list[list[str]] = []

    def remote(texts: Sequence[str]) -> list[list[float]]:
        calls.append(list(texts))
        raise ConnectionError("API down")

    encoder = CallableEncoder(remote, model_id="remote")
    assert as_encoder(encoder) is encoder
    assert calls == []

    class Lazy:
        model_id = "lazy"

        @property
        def dimension(self) -> int:
            raise AssertionError("dimension was read")

        def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
            raise AssertionError("encode was called")

    lazy = Lazy()
    assert as_encoder(lazy) is lazy


def test_a_proxy_encoder_and_a_non_encoder() -> None:
    class Proxy:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    proxy = Proxy(HashingEncoder())
    assert as_encoder(proxy) is proxy
    # A pydantic Embeddings (its class has __getattr__) with a model_id field and an
    # encode helper of its own is an Embeddings, not a proxy: wrapped, as before.
    from pydantic import BaseModel, ConfigDict

    class TitanLike(BaseModel):  # LangChain's Embeddings by its methods
        model_config = ConfigDict(protected_namespaces=())
        model_id: str = "amazon.titan-embed-text-v2:0"

        def encode(self, text: str) -> list[float]:
            return [0.6, 0.8]

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [self.encode(t) for t in texts]

        def embed_query(self, text: str) -> list[float]:
            return self.encode(text)

    wrapped = as_encoder(TitanLike())
    assert isinstance(wrapped, CallableEncoder) and wrapped.dimension == 2
    with pytest.raises(TypeError, match="encoder must be a synaptoroute encoder"):
        as_encoder(object())
    with pytest.raises(TypeError):
        as_encoder("all-MiniLM-L6-v2")
