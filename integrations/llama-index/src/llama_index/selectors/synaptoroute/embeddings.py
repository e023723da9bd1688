"""Embeddings both ways between LlamaIndex and synaptoroute.

:class:`SynaptorouteEmbedding` is a LlamaIndex ``BaseEmbedding`` backed by a
synaptoroute encoder (by default the bundled, offline all-MiniLM-L6-v2 INT8 model),
usable wherever LlamaIndex takes an ``embed_model``. :class:`LlamaIndexEncoder` goes
the other way: it makes any LlamaIndex ``BaseEmbedding`` a synaptoroute encoder
(:class:`synaptoroute.EncoderProtocol`), so the selector can route with it.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from numpy.typing import NDArray
from typing_extensions import Self, override

from synaptoroute import (
    DEFAULT_MODEL_ID,
    CallableEncoder,
    Encoder,
    EncoderProtocol,
    InvalidInputError,
    ModelNotAvailableError,
    default_encoder,
)
from synaptoroute.adapters import _is_encoder, llama_index_former_model_ids, llama_index_model_id
from synaptoroute.adapters import as_encoder as _core_as_encoder

__all__ = ["LlamaIndexEncoder", "SynaptorouteEmbedding", "as_encoder"]


#: The fields the encoder is built for (see ``SynaptorouteEmbedding.__setattr__``).
_ENCODER_FIELDS = ("model_name", "max_tokens")


class SynaptorouteEmbedding(BaseEmbedding):
    """A LlamaIndex embedding model backed by a synaptoroute encoder.

    Queries and documents are embedded the same way (the model is symmetric); the
    vectors have unit length. Async methods run the encoder in a worker thread, so
    they never block the event loop.

    Args:
        encoder: any :class:`synaptoroute.EncoderProtocol`; default the model named
            by ``model_name``.
        **kwargs: ``BaseEmbedding`` fields such as ``embed_batch_size``, and
            ``model_name``: without ``encoder``, the model to run (the bundled one,
            ``DEFAULT_MODEL_ID``, by default: loaded on first use, fully offline, and
            shared with every router, adapter and selector in the process built
            without an explicit encoder; any other name is a fastembed model, fetched
            on first use); with ``encoder``, it must be the encoder's ``model_id``.
            ``max_tokens`` likewise: without ``encoder``, the tokens of a text the
            model reads; with it, the encoder's (``None`` for an encoder that does not
            say). A field, so ``to_dict()``, by which LlamaIndex's ``IngestionCache``
            keys a transformation, tells two settings of one model apart.

    A copy made by pickling (LlamaIndex sends transformations to worker processes
    that way) embeds as the original does. An ``Encoder`` (the bundled model, a
    fastembed one) is built again with the arguments it was made with
    (``model_path``, ``max_tokens``, ``device``...; the shared
    ``synaptoroute.default_encoder()`` is the copy's process's shared one); any
    other encoder is taken along when it can be pickled (``HashingEncoder``, a
    ``CallableEncoder`` of a module-level function). One that cannot be (a
    ``CallableEncoder`` of a lambda or closure, a wrapped model that does not pickle,
    a subclass of ``Encoder`` that does not pickle) stays behind: the pickled copy
    raises ``ModelNotAvailableError`` when it is first asked to embed, saying so. A
    ``copy.deepcopy`` shares the encoder. A copy made by ``from_dict``/``from_json``
    has the fields alone: it loads the model by its name and ``max_tokens``, with
    default settings otherwise.

    Raises:
        ValueError: ``model_name`` is not the given encoder's model.
        TypeError: ``encoder`` is not a synaptoroute encoder (a LlamaIndex
            ``BaseEmbedding``, say: :func:`as_encoder` wraps one).

    Example:
        >>> from llama_index.core import Document, VectorStoreIndex
        >>> embed_model = SynaptorouteEmbedding()
        >>> index = VectorStoreIndex.from_documents(
        ...     [Document(text="Refunds take five days.")], embed_model=embed_model
        ... )
        >>> len(embed_model.get_query_embedding("refund"))
        384
    """

    model_name: str = Field(default=DEFAULT_MODEL_ID, description="The synaptoroute model id.")
    max_tokens: int | None = Field(
        default=None,
        description="The tokens of a text the encoder reads (None: it does not say).",
    )
    embed_batch_size: int = Field(
        default=64, gt=0, le=2048, description="Texts handed to the encoder at once."
    )
    _encoder: EncoderProtocol = PrivateAttr()

    def __init__(self, encoder: EncoderProtocol | None = None, **kwargs: Any) -> None:
        left_behind = kwargs.pop(_LEFT_BEHIND, None)
        name = kwargs.get("model_name")
        tokens = kwargs.get("max_tokens")
        if encoder is None and left_behind is not None:
            # A pickled copy whose encoder could not travel: loading a model by the
            # encoder's name would fail, or run another model, and vectors of two
            # models would be mixed in one index.
            encoder = _LeftBehind(str(name), str(left_behind), tokens)
        elif encoder is None:
            # The name decides: a copy rebuilt from its fields (unpickling, from_dict)
            # gets its model back, not silently the bundled one; and so does max_tokens.
            shared = default_encoder() if name in (None, DEFAULT_MODEL_ID) else None
            if shared is not None and tokens in (None, _tokens_of(shared)):
                encoder = shared
            else:
                options = {} if tokens is None else {"max_tokens": tokens}
                encoder = Encoder(name, **options)
        elif not _is_encoder(encoder):
            # A bare AttributeError on model_id before.
            msg = (
                f"encoder must be a synaptoroute encoder, got {type(encoder).__name__}; "
                "a LlamaIndex embedding is an embed_model already (use it as it is), and "
                "as_encoder() makes one a synaptoroute encoder"
            )
            raise TypeError(msg)
        elif name is not None and name != encoder.model_id:
            msg = (
                f"model_name {name!r} is not the encoder's model {encoder.model_id!r}; "
                "pass the encoder alone, or model_name alone"
            )
            raise ValueError(msg)
        elif tokens is not None and tokens != _tokens_of(encoder):
            msg = (
                f"max_tokens {tokens!r} is not the encoder's {_tokens_of(encoder)!r}; "
                "pass the encoder alone, or max_tokens alone"
            )
            raise ValueError(msg)
        kwargs["model_name"] = encoder.model_id
        # A field, so to_dict() tells two settings of one model apart: LlamaIndex's
        # IngestionCache keys a transformation by it, and handed the vectors of a
        # 256-token encoder to a 512-token one.
        kwargs["max_tokens"] = _tokens_of(encoder)
        super().__init__(**kwargs)
        self._encoder = encoder

    def __getstate__(self) -> dict[str, Any]:
        # LlamaIndex unpickles by calling __init__ with the fields. An encoder that
        # pickles rides along (an Encoder pickles as the arguments it was made with,
        # the process's default one as that process's); any other cannot be rebuilt
        # faithfully from its name, so the copy is told it stayed behind.
        state: dict[str, Any] = super().__getstate__()
        extra: dict[str, Any]
        try:
            pickle.dumps(self._encoder)
        except Exception as exc:  # any failure: the encoder does not travel
            why = f"{type(self._encoder).__name__} ({type(exc).__name__}: {exc})"
            extra = {_LEFT_BEHIND: why}
        else:
            extra = {"encoder": self._encoder}
        state["__dict__"] = {**state["__dict__"], **extra}
        return state

    @override
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _ENCODER_FIELDS and getattr(self, name, value) != value:
            # The encoder was built for them: assigned, the vectors stayed the old
            # encoder's under the new field (the key LlamaIndex's IngestionCache files).
            msg = (
                f"{name} is fixed when a SynaptorouteEmbedding is built: make another "
                f"(or model_copy(update={{{name!r}: ...}}))"
            )
            raise AttributeError(msg)
        super().__setattr__(name, value)

    @override
    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; one whose ``update`` changes ``model_name`` or ``max_tokens`` gets an
        ``Encoder`` for them, with the original's other settings (threads, device...;
        another model drops ``model_path``).

        Raises:
            InvalidInputError: such an ``update`` on an encoder that is not an
                ``Encoder`` (a ``CallableEncoder``, say), which has no settings to
                rebuild it with: make a new ``SynaptorouteEmbedding`` with one.
        """
        if not update or all(
            name not in update or update[name] == getattr(self, name) for name in _ENCODER_FIELDS
        ):
            return super().model_copy(update=update, deep=deep)
        if type(self._encoder) is not Encoder:
            msg = (
                f"cannot make a copy with other {', '.join(_ENCODER_FIELDS)} of a "
                f"{type(self._encoder).__name__}: make a SynaptorouteEmbedding with an "
                "encoder for them"
            )
            raise InvalidInputError(msg)
        arguments = dict(self._encoder._arguments)
        name = update.get("model_name", self.model_name)
        if name != self.model_name:  # another model: its own path and token limit
            arguments.update(model=None if name == DEFAULT_MODEL_ID else name, model_path=None)
            del arguments["max_tokens"]
        if update.get("max_tokens") is not None:
            arguments["max_tokens"] = update["max_tokens"]
        encoder = Encoder(**arguments)
        if encoder._arguments == default_encoder()._arguments:
            encoder = default_encoder()  # the bundled model as built by default: shared
        fields = {name: getattr(self, name) for name in type(self).model_fields}
        fields.update(update)
        for key in _ENCODER_FIELDS:  # read from the new encoder
            fields.pop(key)
        return type(self)(encoder, **fields)

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        # The encoder (a loaded model, with a lock) is shared, as by the LangChain
        # package's SynaptorouteEmbeddings; the fields are copied.
        memo = {} if memo is None else memo
        memo[id(self._encoder)] = self._encoder
        return super().__deepcopy__(memo)

    @classmethod
    @override
    def class_name(cls) -> str:
        """The name LlamaIndex records for this class (``to_dict``'s ``class_name``)."""
        return "SynaptorouteEmbedding"

    @property
    def encoder(self) -> EncoderProtocol:
        """The synaptoroute encoder behind this model."""
        return self._encoder

    @property
    def synaptoroute_encoder(self) -> EncoderProtocol:
        """The same as :attr:`encoder`, under the name both integrations' adapters share."""
        return self._encoder

    def _embed(self, texts: list[str]) -> list[Embedding]:
        vectors: list[Embedding] = self._encoder.encode(texts).tolist()
        return vectors

    @override
    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([query])[0]

    @override
    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await asyncio.to_thread(self._embed, [query]))[0]

    @override
    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed([text])[0]

    @override
    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await asyncio.to_thread(self._embed, [text]))[0]

    @override
    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embed(texts)

    @override
    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._embed, texts)


#: The field a pickled SynaptorouteEmbedding carries when its encoder did not travel.
_LEFT_BEHIND = "synaptoroute_encoder_left_behind"


def _tokens_of(encoder: EncoderProtocol) -> int | None:
    """The tokens of a text ``encoder`` reads, if it says (``Encoder.max_tokens``)."""
    tokens = getattr(encoder, "max_tokens", None)
    return tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None


class _LeftBehind:
    """The encoder of a pickled copy whose original encoder could not be pickled.

    It keeps the model id (the copy's ``model_name``) and fails on use, naming what
    happened and what to do instead.
    """

    def __init__(self, model_id: str, why: str, max_tokens: int | None = None) -> None:
        self._model_id = model_id
        self._why = why
        self.max_tokens = max_tokens  # the original's, so the copy's fields match it

    @property
    def model_id(self) -> str:
        """The original encoder's model id."""
        return self._model_id

    @property
    def dimension(self) -> int:
        """Unknown here: raises as :meth:`encode` does."""
        raise self._error()

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Raise: this copy has no encoder."""
        raise self._error()

    def _error(self) -> ModelNotAvailableError:
        msg = (
            f"this SynaptorouteEmbedding is a pickled copy (e.g. for a worker process of "
            f"IngestionPipeline(num_workers=...)) and its encoder {self._model_id!r}, a "
            f"{self._why}, could not be pickled, so it did not travel; embed in the "
            "original's process (num_workers=None), or give the SynaptorouteEmbedding an "
            "encoder that pickles or loads by name (model_name=...)"
        )
        return ModelNotAvailableError(msg)


class LlamaIndexEncoder(CallableEncoder):
    """A synaptoroute encoder backed by any LlamaIndex ``BaseEmbedding``.

    Utterances and queries are both embedded with ``get_text_embedding_batch`` (the
    router compares queries with example queries, so the symmetric side is the
    right one) and L2-normalised.

    Args:
        embed_model: the LlamaIndex embedding model.
        model_id: stored next to every vector; default
            ``"llama-index/<class name>/<model name>"`` (the class's ``class_name()``, or
            its Python name where it has none of its own).
        dimension: vector length; if omitted, one probe text is embedded the
            first time it is needed.

    Example:
        >>> from synaptoroute import AdaptiveRouter
        >>> router = AdaptiveRouter(encoder=LlamaIndexEncoder(SynaptorouteEmbedding()))
    """

    def __init__(
        self,
        embed_model: BaseEmbedding,
        *,
        model_id: str | None = None,
        dimension: int | None = None,
    ) -> None:
        super().__init__(
            embed_model.get_text_embedding_batch,
            model_id=model_id if model_id is not None else llama_index_model_id(embed_model),
            dimension=dimension,
            former_model_ids=llama_index_former_model_ids(embed_model) if model_id is None else (),
        )
        self.embed_model = embed_model


def as_encoder(model: Any) -> EncoderProtocol:
    """Turn what a user passes as ``encoder`` into a synaptoroute encoder.

    ``None`` gives the process's shared bundled model; a
    :class:`SynaptorouteEmbedding` (or the LangChain package's
    ``SynaptorouteEmbeddings``) gives back its own encoder (no double wrapping);
    any other ``BaseEmbedding`` is wrapped in :class:`LlamaIndexEncoder`; a
    LangChain ``Embeddings`` is wrapped too, so either framework's model can route.

    Raises:
        TypeError: ``model`` is not an encoder or an embedding model.
    """
    if isinstance(model, BaseEmbedding) and not isinstance(model, SynaptorouteEmbedding):
        return LlamaIndexEncoder(model)
    return _core_as_encoder(model)
