"""Embeddings both ways: synaptoroute's encoder as LangChain ``Embeddings``, and back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, PrivateAttr, SkipValidation, field_validator
from typing_extensions import Self, override

from synaptoroute import CallableEncoder, Encoder, EncoderProtocol, InvalidInputError
from synaptoroute import default_encoder as _default_encoder
from synaptoroute.adapters import _is_encoder, langchain_former_model_ids, langchain_model_id
from synaptoroute.adapters import as_encoder as _core_as_encoder

__all__ = ["LangChainEncoder", "SynaptorouteEmbeddings", "as_encoder"]


class SynaptorouteEmbeddings(BaseModel, Embeddings):
    """LangChain ``Embeddings`` on synaptoroute's local encoder.

    With no arguments it runs the bundled all-MiniLM-L6-v2 INT8 ONNX model on the
    CPU, offline; vectors have 384 dimensions and unit length. The model loads on
    the first call, not when the object is built, and is shared with every router,
    adapter and selector in the process built without an explicit encoder.

    Args:
        model: ``None`` for the bundled model, or a fastembed model name (needs
            ``synaptoroute[fastembed]``).
        model_path: a local folder holding that model, instead of downloading it.
        threads: ONNX Runtime threads (default: every core).
        encoder: any synaptoroute encoder to expose instead (then leave ``model``,
            ``model_path`` and ``threads`` unset).

    The fields are fixed once it is built (assigning one raises); ``model_copy(update=
    {...})`` builds a copy with other fields, and its own encoder.

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
    # Checked by _check_encoder, not by pydantic: its isinstance with the runtime
    # protocol reads ``dimension`` before Python 3.12, which embeds a probe text through
    # a wrapped model (a remote API called when the object is built, or failing it).
    encoder: Annotated[EncoderProtocol | None, SkipValidation] = None
    """An encoder to expose instead of building one."""

    # Frozen: the encoder is built from the fields once; an assigned field left it as
    # it was (vectors of another model than the fields said).
    model_config = ConfigDict(
        arbitrary_types_allowed=True, extra="forbid", protected_namespaces=(), frozen=True
    )

    _encoder: EncoderProtocol = PrivateAttr()

    @field_validator("encoder")
    @classmethod
    def _check_encoder(cls, value: object) -> object:
        if value is not None and not _is_encoder(value):
            msg = (
                f"encoder must be a synaptoroute encoder, got {type(value).__name__}; "
                "as_encoder() makes one of a LangChain Embeddings"
            )
            raise ValueError(msg)
        return value

    @override
    def model_post_init(self, context: Any, /) -> None:
        self._build()

    @override
    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; one with ``update`` is built from the fields, its encoder with them
        (pydantic's copy kept the old encoder under the new fields)."""
        fields = type(self).model_fields
        if not update or all(
            name in fields and getattr(self, name) == value for name, value in update.items()
        ):
            # Nothing changes: the copy shares the model.
            return super().model_copy(update=update, deep=deep)
        return type(self)(**{**{name: getattr(self, name) for name in fields}, **update})

    def _build(self) -> None:
        if self.encoder is not None:
            if self.model is not None or self.model_path is not None or self.threads is not None:
                msg = "pass either encoder= or model/model_path/threads, not both"
                raise InvalidInputError(msg)
            self._encoder = self.encoder
        elif self.model is None and self.model_path is None and self.threads is None:
            self._encoder = _default_encoder()
        else:
            self._encoder = Encoder(self.model, model_path=self.model_path, threads=self.threads)

    @override
    def __getstate__(self) -> dict[Any, Any]:
        # The loaded model holds a lock and an ONNX session: a copy (pickle, a process
        # pool's worker) loads its own from the fields, or shares the process's bundled
        # one. An ``encoder=`` travels as a field, when it pickles.
        state: dict[Any, Any] = super().__getstate__()
        private = {k: v for k, v in (state.get("__pydantic_private__") or {}).items()}
        private.pop("_encoder", None)
        return {**state, "__pydantic_private__": private}

    @override
    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._build()

    @override
    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> SynaptorouteEmbeddings:
        # The fields are settings and a model: the copy shares the model (an
        # ``encoder=`` too), as copies of the other LangChain embeddings share clients.
        return self.model_copy()

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
            model_id=model_id or langchain_model_id(embeddings),
            dimension=dimension,
            former_model_ids=() if model_id else langchain_former_model_ids(embeddings),
        )
        self.embeddings = embeddings


def as_encoder(source: Any) -> EncoderProtocol:
    """A synaptoroute encoder for what a user passes as ``encoder=``.

    ``None`` gives the process's shared bundled model; ``SynaptorouteEmbeddings``
    (or the LlamaIndex package's ``SynaptorouteEmbedding``) gives back its own
    encoder (no round trip through Python lists); any other LangChain
    ``Embeddings`` is wrapped in :class:`LangChainEncoder`; a LlamaIndex
    ``BaseEmbedding`` is wrapped too, so either framework's model can route.

    Raises:
        TypeError: ``source`` is not an encoder or an embedding model.
    """
    if isinstance(source, Embeddings) and not isinstance(source, SynaptorouteEmbeddings):
        return LangChainEncoder(source)
    return _core_as_encoder(source)
