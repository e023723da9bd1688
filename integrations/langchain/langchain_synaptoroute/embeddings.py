"""Embeddings both ways: synaptoroute's encoder as LangChain ``Embeddings``, and back."""

from __future__ import annotations

from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, PrivateAttr
from typing_extensions import override

from synaptoroute import CallableEncoder, Encoder, EncoderProtocol, InvalidInputError

__all__ = ["LangChainEncoder", "SynaptorouteEmbeddings", "as_encoder"]


class SynaptorouteEmbeddings(BaseModel, Embeddings):
    """LangChain ``Embeddings`` on synaptoroute's local encoder.

    With no arguments it runs the bundled all-MiniLM-L6-v2 INT8 ONNX model on the
    CPU, offline; vectors have 384 dimensions and unit length. The model loads on
    the first call, not when the object is built.

    Args:
        model: ``None`` for the bundled model, or a fastembed model name (needs
            ``synaptoroute[fastembed]``).
        model_path: a local folder holding that model, instead of downloading it.
        threads: ONNX Runtime threads (default: every core).
        encoder: any synaptoroute encoder to expose instead (then leave ``model``,
            ``model_path`` and ``threads`` unset).

    Example:
        ```python
        from langchain_synaptoroute import SynaptorouteEmbeddings

        embeddings = SynaptorouteEmbeddings()
        vector = embeddings.embed_query("How do I get my money back?")
        len(vector)  # 384
        ```
    """

    model: str | None = None
    """A fastembed model name; ``None`` for the bundled model."""
    model_path: str | None = None
    """A local folder holding ``model``."""
    threads: int | None = None
    """ONNX Runtime threads; default every core."""
    encoder: EncoderProtocol | None = None
    """An encoder to expose instead of building one."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", protected_namespaces=())

    _encoder: EncoderProtocol = PrivateAttr()

    @override
    def model_post_init(self, context: Any, /) -> None:
        if self.encoder is not None:
            if self.model is not None or self.model_path is not None or self.threads is not None:
                msg = "pass either encoder= or model/model_path/threads, not both"
                raise InvalidInputError(msg)
            self._encoder = self.encoder
        else:
            self._encoder = Encoder(self.model, model_path=self.model_path, threads=self.threads)

    @property
    def synaptoroute_encoder(self) -> EncoderProtocol:
        """The encoder underneath; hand it to ``AdaptiveRouter(encoder=...)``."""
        return self._encoder

    @property
    def model_id(self) -> str:
        """The encoder's model identifier."""
        return self._encoder.model_id

    @property
    def dimension(self) -> int:
        """Length of each vector."""
        return self._encoder.dimension

    @override
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed texts in batches; each vector has unit length."""
        vectors: list[list[float]] = self._encoder.encode(texts).tolist()
        return vectors

    @override
    def embed_query(self, text: str) -> list[float]:
        """Embed one text; the vector has unit length."""
        return self.embed_documents([text])[0]


class LangChainEncoder(CallableEncoder):
    """A synaptoroute encoder over any LangChain ``Embeddings``.

    For users who already embed with a hosted or local LangChain model: routes,
    stored vectors and queries then all come from that model. Vectors are cast to
    float32 and scaled to unit length. Utterances and queries are both embedded
    with ``embed_documents`` (so a batch is one request); a model that embeds
    queries differently is still compared like with like.

    Args:
        embeddings: the LangChain model.
        model_id: stored next to every vector, so that a store built with another
            model is refused; default ``langchain:<class>:<model name>``.
        dimension: vector length; default measured by embedding one probe text.

    Example:
        ```python
        from synaptoroute import AdaptiveRouter
        from langchain_openai import OpenAIEmbeddings
        from langchain_synaptoroute import LangChainEncoder

        router = AdaptiveRouter(LangChainEncoder(OpenAIEmbeddings()), threshold=0.4)
        ```
    """

    def __init__(
        self,
        embeddings: Embeddings,
        *,
        model_id: str | None = None,
        dimension: int | None = None,
    ) -> None:
        super().__init__(
            embeddings.embed_documents,
            model_id=model_id or _default_model_id(embeddings),
            dimension=dimension,
        )
        self.embeddings = embeddings


def _default_model_id(embeddings: Embeddings) -> str:
    name = getattr(embeddings, "model", None) or getattr(embeddings, "model_name", None)
    kind = type(embeddings).__name__
    return f"langchain:{kind}:{name}" if isinstance(name, str) and name else f"langchain:{kind}"


def as_encoder(source: EncoderProtocol | Embeddings | None) -> EncoderProtocol | None:
    """A synaptoroute encoder for ``source``: unwrapped, adapted, or ``None`` for the default.

    ``SynaptorouteEmbeddings`` gives back its own encoder (no round trip through
    Python lists); any other ``Embeddings`` is wrapped in :class:`LangChainEncoder`.
    """
    if source is None:
        return None
    if isinstance(source, SynaptorouteEmbeddings):
        return source.synaptoroute_encoder
    if isinstance(source, Embeddings):
        return LangChainEncoder(source)
    if isinstance(source, EncoderProtocol):
        return source
    msg = f"encoder must be a synaptoroute encoder or LangChain Embeddings, got {source!r}"
    raise TypeError(msg)
