"""Any framework's embedding model as a synaptoroute encoder, without importing the framework.

Both integration packages accept "an encoder" in the same forms, so a LangChain
router can route with a LlamaIndex embedding model and a LlamaIndex selector with
a LangChain one. The frameworks are recognised by their methods (``embed_documents``
for LangChain ``Embeddings``, ``get_text_embedding_batch`` for LlamaIndex
``BaseEmbedding``), so the core depends on neither.
"""

from __future__ import annotations

import inspect
from typing import Any, TypeGuard

from .encoder import CallableEncoder, EncoderProtocol, default_encoder

__all__ = [
    "as_encoder",
    "langchain_former_model_ids",
    "langchain_model_id",
    "llama_index_former_model_ids",
    "llama_index_model_id",
]


def langchain_model_id(embeddings: Any) -> str:
    """``langchain:<class>:<model name>`` for a LangChain ``Embeddings`` (stored with
    vectors). The name is its ``model``, ``model_name`` or ``model_id`` (Bedrock,
    watsonx), the first that is a non-empty str; ``langchain:<class>`` without one."""
    kind = type(embeddings).__name__
    for attr in ("model", "model_name", "model_id"):
        name = getattr(embeddings, attr, None)
        if isinstance(name, str) and name:
            return f"langchain:{kind}:{name}"
    return f"langchain:{kind}"


def langchain_former_model_ids(embeddings: Any) -> tuple[str, ...]:
    """The ids versions before 0.3 stored for ``embeddings`` where
    :func:`langchain_model_id` now names it otherwise: ``langchain:<class>`` for a
    class named by ``model_id`` only. A store of such an id opens with it
    (:attr:`CallableEncoder.former_model_ids`)."""
    named = [getattr(embeddings, attr, None) for attr in ("model", "model_name", "model_id")]
    if any(isinstance(name, str) and name for name in named[:2]):
        return ()  # named as before
    model_id = named[2]
    return (
        (f"langchain:{type(embeddings).__name__}",)
        if isinstance(model_id, str) and model_id
        else ()
    )


def llama_index_model_id(embed_model: Any) -> str:
    """``llama-index/<class>/<model name>`` for a LlamaIndex ``BaseEmbedding``: the
    class as its ``class_name()`` gives it, or the Python class's qualified name where
    that is LlamaIndex's inherited default (``base_component``), which every custom
    embedding class without its own shared."""
    kind = embed_model.class_name()
    if kind == _LLAMA_INDEX_DEFAULT_CLASS:
        kind = type(embed_model).__qualname__
    return f"llama-index/{kind}/{embed_model.model_name}"


def llama_index_former_model_ids(embed_model: Any) -> tuple[str, ...]:
    """The id versions before 0.3 stored for ``embed_model`` where
    :func:`llama_index_model_id` now names it otherwise (a class without its own
    ``class_name()``): a store of that id opens with it, as it did."""
    old = f"llama-index/{embed_model.class_name()}/{embed_model.model_name}"
    return () if old == llama_index_model_id(embed_model) else (old,)


_LLAMA_INDEX_DEFAULT_CLASS = "base_component"  # BaseComponent.class_name()


def _is_encoder(source: object) -> TypeGuard[EncoderProtocol]:
    """Whether ``source`` has an :class:`EncoderProtocol`'s members (a proxy's asked)."""
    return _has_encoder_members(source) or _is_proxy_encoder(source)


def _has_encoder_members(source: object) -> TypeGuard[EncoderProtocol]:
    """Whether ``source`` has an :class:`EncoderProtocol`'s members, looked up without
    running them: ``isinstance`` with the runtime protocol reads ``dimension`` before
    Python 3.12, which embeds a probe text through a remote model's API."""
    missing = object()
    model_id, dimension, encode = (
        inspect.getattr_static(source, name, missing)
        for name in ("model_id", "dimension", "encode")
    )
    return model_id is not missing and dimension is not missing and callable(encode)


def _is_proxy_encoder(source: object) -> TypeGuard[EncoderProtocol]:
    """Whether ``source`` forwards an encoder's members through ``__getattr__``: it can
    only be asked, and is asked here (``isinstance`` with the runtime protocol looks
    members up statically from Python 3.12 on, so it refused every proxy there). Its
    dimension is not read (it may embed a probe text); the router reads it. A LangChain
    or LlamaIndex embeddings object is none: every pydantic model's class has
    ``__getattr__``, and one with a ``model_id`` field and an ``encode`` helper of its
    own would pass."""
    return (
        hasattr(type(source), "__getattr__")
        and hasattr(source, "model_id")
        and callable(getattr(source, "encode", None))
        and not _is_langchain_embeddings(source)
        and not _is_llama_index_embedding(source)
    )


def _is_langchain_embeddings(source: Any) -> bool:
    return callable(getattr(source, "embed_documents", None)) and callable(
        getattr(source, "embed_query", None)
    )


def _is_llama_index_embedding(source: Any) -> bool:
    return callable(getattr(source, "get_text_embedding_batch", None)) and callable(
        getattr(source, "class_name", None)
    )


def as_encoder(source: Any) -> EncoderProtocol:
    """A synaptoroute encoder for what a user passes as ``encoder=``.

    - ``None``: the process's shared bundled model (:func:`default_encoder`);
    - either integration's synaptoroute adapter (``SynaptorouteEmbeddings``,
      ``SynaptorouteEmbedding``): the encoder it wraps, so the model is not wrapped twice;
    - a synaptoroute encoder: itself;
    - a LangChain ``Embeddings`` or a LlamaIndex ``BaseEmbedding``: wrapped, with
      its model named in the id stored next to every vector.

    Raises:
        TypeError: ``source`` is none of these.
    """
    if source is None:
        return default_encoder()
    inner = getattr(source, "synaptoroute_encoder", None)
    if _is_encoder(inner):
        return inner
    if _has_encoder_members(source):
        return source
    if _is_langchain_embeddings(source):
        return CallableEncoder(
            source.embed_documents,
            model_id=langchain_model_id(source),
            former_model_ids=langchain_former_model_ids(source),
        )
    if _is_llama_index_embedding(source):
        return CallableEncoder(
            source.get_text_embedding_batch,
            model_id=llama_index_model_id(source),
            former_model_ids=llama_index_former_model_ids(source),
        )
    if _is_proxy_encoder(source):
        return source
    msg = (
        "encoder must be a synaptoroute encoder (model_id, dimension, encode), a LangChain "
        f"Embeddings or a LlamaIndex BaseEmbedding, got {type(source).__name__}"
    )
    raise TypeError(msg)
