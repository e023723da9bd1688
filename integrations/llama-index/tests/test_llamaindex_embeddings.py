"""Embeddings both ways: SynaptorouteEmbedding (LlamaIndex side) and LlamaIndexEncoder."""

from __future__ import annotations

import pickle
import threading
import warnings
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.embeddings import BaseEmbedding, MockEmbedding
from llama_index.core.schema import TextNode
from llama_index.core.tools import ToolMetadata
from llama_index.selectors.synaptoroute import (
    LlamaIndexEncoder,
    SynaptorouteEmbedding,
    SynaptorouteSelector,
)
from llama_index.selectors.synaptoroute.embeddings import as_encoder
from llamaindex_support import CLEAR_QUERIES, UTTERANCES
from numpy.typing import NDArray

from synaptoroute import (
    DEFAULT_MODEL_ID,
    AdaptiveRouter,
    CallableEncoder,
    Encoder,
    EncoderProtocol,
    HashingEncoder,
    InvalidInputError,
    ModelNotAvailableError,
    Route,
    default_encoder,
)
from synaptoroute.encoder import _default_model_files
from synaptoroute.testing import RecordingEncoder

TEXTS = ["Refunds are paid within five days.", "The app crashes on start", "hello"]


def test_embedding_matches_the_encoder(encoder: Encoder) -> None:
    embed_model = SynaptorouteEmbedding(encoder)
    assert embed_model.model_name == DEFAULT_MODEL_ID
    assert embed_model.class_name() == "SynaptorouteEmbedding"
    expected = encoder.encode(TEXTS)
    query = embed_model.get_query_embedding(TEXTS[0])
    assert len(query) == 384
    assert np.allclose(query, expected[0], atol=1e-5)
    assert np.allclose(embed_model.get_text_embedding(TEXTS[1]), expected[1], atol=1e-5)
    assert np.allclose(embed_model.get_text_embedding_batch(TEXTS), expected, atol=1e-5)


def test_a_copy_embeds_with_the_same_model(encoder: Encoder) -> None:
    # LlamaIndex unpickles (IngestionPipeline workers) and loads from_dict by calling
    # __init__ with the fields: the copy ran the bundled 384-d model whatever the
    # original ran, and model_name= was ignored.
    hashing = SynaptorouteEmbedding(HashingEncoder(dimension=16))
    copy = pickle.loads(pickle.dumps(hashing))
    assert isinstance(copy.encoder, HashingEncoder) and copy.model_name == "hashing-bow-16"
    assert copy.get_text_embedding(TEXTS[0]) == hashing.get_text_embedding(TEXTS[0])
    bundled = SynaptorouteEmbedding(encoder)
    for again in (
        pickle.loads(pickle.dumps(bundled)),
        SynaptorouteEmbedding.from_json(bundled.to_json()),
    ):
        assert again.model_name == DEFAULT_MODEL_ID
        assert np.allclose(
            again.get_text_embedding(TEXTS[0]), encoder.encode(TEXTS[:1])[0], atol=1e-5
        )
    named = SynaptorouteEmbedding(model_name="BAAI/bge-small-en-v1.5")  # loads on first use
    assert isinstance(named.encoder, Encoder) and named.encoder.model_id == "BAAI/bge-small-en-v1.5"
    with pytest.raises(ValueError, match="is not the encoder's model"):
        SynaptorouteEmbedding(HashingEncoder(dimension=16), model_name=DEFAULT_MODEL_ID)
    # A bare AttributeError before: a LlamaIndex embedding is no synaptoroute encoder.
    with pytest.raises(TypeError, match=r"synaptoroute encoder, got MockEmbedding.*as_encoder"):
        SynaptorouteEmbedding(MockEmbedding(embed_dim=8))  # type: ignore[arg-type]


def test_a_chunk_is_read_up_to_the_encoders_token_limit(encoder: Encoder) -> None:
    # As documented: the bundled model reads a text's first 256 tokens, so a fact
    # further into a long chunk moves nothing; an encoder reading 512 sees it.
    filler = " ".join(f"Section {i} covers shipping zones and parcel sizes." for i in range(40))
    fact = " Refunds take five business days to reach your card."
    short = SynaptorouteEmbedding(encoder)
    assert np.allclose(
        short.get_text_embedding(filler + fact), short.get_text_embedding(filler), atol=1e-6
    )
    wide = SynaptorouteEmbedding(Encoder(max_tokens=512))
    assert not np.allclose(
        wide.get_text_embedding(filler + fact), wide.get_text_embedding(filler), atol=1e-3
    )


def test_a_copy_with_another_token_limit_reads_that_many_and_the_fields_are_fixed(
    encoder: Encoder,
) -> None:
    # pydantic's copy, and an assignment, left the encoder as it was under the new
    # field: vectors of a 256-token encoder filed under max_tokens=512.
    filler = " ".join(f"Section {i} covers shipping zones and parcel sizes." for i in range(40))
    fact = " Refunds take five business days to reach your card."
    short = SynaptorouteEmbedding(encoder)
    wide = short.model_copy(update={"max_tokens": 512})
    assert wide.to_dict()["max_tokens"] == wide.encoder.max_tokens == 512  # type: ignore[attr-defined]
    assert not np.allclose(
        wide.get_text_embedding(filler + fact), wide.get_text_embedding(filler), atol=1e-3
    )
    assert short.model_copy(update={"embed_batch_size": 8}).encoder is encoder
    # The encoder's other settings go with it; an encoder without settings cannot.
    tuned = SynaptorouteEmbedding(Encoder(threads=1, batch_size=8))
    copied = tuned.model_copy(update={"max_tokens": 128, "embed_batch_size": 4})
    assert copied.encoder._arguments["threads"] == 1  # type: ignore[attr-defined]
    assert copied.encoder._arguments["batch_size"] == 8  # type: ignore[attr-defined]
    assert (copied.max_tokens, copied.embed_batch_size) == (128, 4)
    # Another model, and back: its own token limit; back to the bundled default, the
    # shared model (a copy built by default shares it, as SynaptorouteEmbedding() does).
    other = short.model_copy(update={"model_name": "BAAI/bge-small-en-v1.5"})
    assert (other.model_name, other.encoder._arguments["model"]) == (  # type: ignore[attr-defined]
        "BAAI/bge-small-en-v1.5",
        "BAAI/bge-small-en-v1.5",
    )
    back = other.model_copy(update={"model_name": DEFAULT_MODEL_ID})
    assert back.encoder is default_encoder() and back.to_dict()["max_tokens"] == 256
    assert wide.model_copy(update={"max_tokens": 256}).encoder is default_encoder()
    hashing = SynaptorouteEmbedding(HashingEncoder(dimension=8))
    with pytest.raises(InvalidInputError, match=r"cannot make a copy .* of a HashingEncoder"):
        hashing.model_copy(update={"max_tokens": 64})
    with pytest.raises(AttributeError, match="max_tokens is fixed"):
        short.max_tokens = 512
    with pytest.raises(AttributeError, match="model_name is fixed"):
        short.model_name = "BAAI/bge-small-en-v1.5"
    short.embed_batch_size = 16  # not the encoder's: may change
    short.max_tokens = short.max_tokens  # the same value: nothing changes
    assert (short.to_dict()["max_tokens"], short.encoder.max_tokens) == (256, 256)  # type: ignore[attr-defined]


def test_an_ingestion_cache_tells_two_token_limits_apart(encoder: Encoder) -> None:
    # IngestionPipeline keys its cache by the transformation's to_dict(), which named
    # the model alone: a 512-token encoder got the 256-token encoder's vectors.
    from llama_index.core.ingestion import IngestionCache, IngestionPipeline

    filler = " ".join(f"Section {i} covers shipping zones and parcel sizes." for i in range(40))
    text = filler + " Refunds take five business days to reach your card."
    short, wide = SynaptorouteEmbedding(encoder), SynaptorouteEmbedding(Encoder(max_tokens=512))
    assert (short.max_tokens, wide.max_tokens) == (256, 512)
    assert short.to_dict() != wide.to_dict()
    cache = IngestionCache()
    got = [
        IngestionPipeline(transformations=[model], cache=cache)
        .run(nodes=[TextNode(text=text, id_="n")])[0]
        .embedding
        for model in (short, wide)
    ]
    assert np.allclose(got[1], wide.get_text_embedding(text), atol=1e-6)
    assert not np.allclose(got[0], got[1], atol=1e-3)
    # from_dict and pickling rebuild the setting; a mismatch with the encoder is refused.
    again = SynaptorouteEmbedding.from_dict(wide.to_dict())
    assert isinstance(again.encoder, Encoder) and again.encoder.max_tokens == 512
    assert SynaptorouteEmbedding.from_dict(short.to_dict()).encoder is default_encoder()
    assert pickle.loads(pickle.dumps(wide)).max_tokens == 512
    assert SynaptorouteEmbedding(HashingEncoder(dimension=16)).max_tokens is None
    with pytest.raises(ValueError, match="max_tokens 256 is not the encoder's 512"):
        SynaptorouteEmbedding(Encoder(max_tokens=512), max_tokens=256)


def _lengths(texts: list[str]) -> list[list[float]]:
    """A module-level embedding function: the function itself pickles."""
    return [[float(len(t)), 1.0, 0.5] for t in texts]


async def test_a_pickled_copy_carries_its_encoder_or_says_it_stayed_behind() -> None:
    # A CallableEncoder of a module-level function travels (it pickles, its lock does
    # not: the copy makes its own) and embeds as the original does.
    original = SynaptorouteEmbedding(CallableEncoder(_lengths, model_id="my-length-model"))
    copy = pickle.loads(pickle.dumps(original))
    assert copy.get_text_embedding(TEXTS[0]) == original.get_text_embedding(TEXTS[0])
    # One over a lambda cannot: the copy was rebuilt as Encoder("my-length-model"),
    # which failed on first use as an unknown fastembed model (or, under a real
    # model's name, would embed with another model). It says what happened now.
    lambda_based = SynaptorouteEmbedding(
        CallableEncoder(lambda texts: _lengths(texts), model_id="my-length-model")
    )
    copy = pickle.loads(pickle.dumps(lambda_based))
    assert copy.model_name == "my-length-model"
    stayed = r"'my-length-model', a CallableEncoder .*could not be pickled.*num_workers=None"
    with pytest.raises(ModelNotAvailableError, match=stayed):
        copy.get_text_embedding(TEXTS[0])
    with pytest.raises(ModelNotAvailableError, match=stayed):
        await copy.aget_query_embedding(TEXTS[0])
    assert len(lambda_based.get_text_embedding(TEXTS[0])) == 3  # the original is untouched


class _FirstWordsEncoder(Encoder):
    """An Encoder subclass: what it changes is not among the Encoder's settings."""

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return super().encode([" ".join(t.split()[:2]) for t in texts])


def test_a_pickled_copy_of_an_encoder_keeps_its_settings(encoder: Encoder, tmp_path: Path) -> None:
    # The copy was Encoder(model_name): max_tokens, model_path, device... were dropped,
    # so IngestionPipeline(num_workers=N)'s workers embedded otherwise than the parent.
    model, tokenizer = _default_model_files()
    (tmp_path / "model.onnx").symlink_to(model)
    (tmp_path / "tokenizer.json").symlink_to(tokenizer)
    short = Encoder(model_path=tmp_path, max_tokens=16, threads=1, batch_size=7, spin=False)
    original = SynaptorouteEmbedding(short)
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy.encoder) is Encoder and copy.encoder is not short
    assert copy.encoder._arguments == short._arguments
    assert (copy.encoder.max_tokens, copy.encoder.threads, copy.encoder.batch_size) == (16, 1, 7)
    long_text = "I need a refund for " + "the weather in the mountains " * 8  # > 16 tokens
    vector = copy.get_text_embedding(long_text)
    assert np.allclose(vector, original.get_text_embedding(long_text), atol=1e-5)
    assert not np.allclose(vector, encoder.encode([long_text])[0], atol=1e-3)
    # The device asked for travels too (not loaded here: whatever this machine has).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no CUDA in this onnxruntime
        on_gpu = SynaptorouteEmbedding(Encoder(device="cuda:1"))
        copy = pickle.loads(pickle.dumps(on_gpu))
    assert copy.encoder.device == "cuda"
    assert copy.encoder._arguments == on_gpu.encoder._arguments
    # The process's shared bundled model is the copy's process's shared one.
    shared = SynaptorouteEmbedding(default_encoder())
    assert pickle.loads(pickle.dumps(shared)).encoder is default_encoder()


def test_a_pickled_copy_of_an_encoder_subclass_says_it_stayed_behind(encoder: Encoder) -> None:
    # It was rebuilt as a plain Encoder by name, and embedded otherwise, silently.
    original = SynaptorouteEmbedding(_FirstWordsEncoder())
    copy = pickle.loads(pickle.dumps(original))
    with pytest.raises(
        ModelNotAvailableError, match=r"a _FirstWordsEncoder .*could not be pickled"
    ):
        copy.get_text_embedding(TEXTS[0])
    assert len(original.get_text_embedding(TEXTS[0])) == 384


def test_a_deep_copy_shares_the_encoder(encoder: Encoder) -> None:
    # deepcopy raised TypeError (the Encoder's lock), unlike LangChain's embeddings.
    original = SynaptorouteEmbedding(encoder, embed_batch_size=8)
    twin = deepcopy(original)
    assert twin.encoder is encoder and twin is not original
    assert twin.embed_batch_size == 8 and twin.callback_manager is not original.callback_manager
    assert twin.get_text_embedding(TEXTS[0]) == original.get_text_embedding(TEXTS[0])


def test_every_public_method_has_a_docstring() -> None:
    # SynaptorouteEmbedding.class_name had none.
    for cls in (SynaptorouteEmbedding, LlamaIndexEncoder, SynaptorouteSelector):
        for name, attr in vars(cls).items():
            function = getattr(attr, "__func__", getattr(attr, "fget", attr))
            if name.startswith("_") or not callable(function):
                continue
            if function.__module__.startswith("llama_index.selectors.synaptoroute"):
                assert function.__doc__, f"{cls.__name__}.{name}"


async def test_async_embedding_runs_off_the_loop(recording: RecordingEncoder) -> None:
    embed_model = SynaptorouteEmbedding(recording)
    query = await embed_model.aget_query_embedding(TEXTS[0])
    texts = await embed_model.aget_text_embedding_batch(TEXTS)
    assert np.allclose(query, texts[0], atol=1e-5)
    assert np.allclose(texts, recording.inner.encode(TEXTS), atol=1e-5)
    assert recording.threads and threading.get_ident() not in recording.threads


def test_vector_index_with_synaptoroute_embedding(encoder: Encoder) -> None:
    nodes = [TextNode(text=t) for t in TEXTS]
    index = VectorStoreIndex(nodes=nodes, embed_model=SynaptorouteEmbedding(encoder))
    hits = index.as_retriever(similarity_top_k=1).retrieve("my application keeps crashing")
    assert [h.node.get_content() for h in hits] == [TEXTS[1]]


def test_llamaindex_encoder_over_a_llamaindex_model(encoder: Encoder) -> None:
    wrapped = LlamaIndexEncoder(SynaptorouteEmbedding(encoder))
    assert isinstance(wrapped, EncoderProtocol)
    assert wrapped.model_id == f"llama-index/SynaptorouteEmbedding/{DEFAULT_MODEL_ID}"
    assert wrapped.dimension == 384
    vectors = wrapped.encode(TEXTS)
    assert vectors.dtype == np.float32
    assert np.allclose(vectors, encoder.encode(TEXTS), atol=1e-5)
    assert wrapped.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        wrapped.encode([b"bytes"])  # type: ignore[list-item]
    router = AdaptiveRouter(encoder=wrapped)
    router.add_routes(Route(name=n, utterances=u) for n, u in UTTERANCES.items())
    assert router.query("How do I get my money back?").name == "billing"


class _Letters(BaseEmbedding):
    """A custom embedding class without its own class_name(), as users write them."""

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return [1.0 + text.count("a"), 1.0 + text.count("e"), 1.0]


class _Digits(_Letters):
    def _get_text_embedding(self, text: str) -> list[float]:
        return [1.0 + sum(c.isdigit() for c in text), 1.0, 2.0]


def test_custom_embedding_classes_are_told_apart_by_a_store(tmp_path: Path) -> None:
    # Every class without its own class_name() was "llama-index/base_component/
    # unknown": a store written with one opened with another's vectors, unnoticed.
    from synaptoroute import ModelMismatchError, SQLiteStorage

    letters, digits = LlamaIndexEncoder(_Letters()), LlamaIndexEncoder(_Digits())
    assert letters.model_id != digits.model_id
    assert "_Letters" in letters.model_id and "_Digits" in digits.model_id
    store = str(tmp_path / "routes.db")
    router = AdaptiveRouter(encoder=letters, storage=SQLiteStorage(store))
    router.add_route(Route(name="greeting", utterances=["hello there"]))
    router.storage.close()
    with pytest.raises(ModelMismatchError):
        AdaptiveRouter(encoder=digits, storage=SQLiteStorage(store))
    # A store the earlier id named opens with the class, as before (its former id).
    assert letters.former_model_ids == ("llama-index/base_component/unknown",)
    from synaptoroute.adapters import as_encoder as any_framework  # LangChain's way in

    core = any_framework(_Letters())
    assert (core.model_id, core.former_model_ids) == (letters.model_id, letters.former_model_ids)


def test_llamaindex_encoder_normalises_any_model() -> None:
    wrapped = LlamaIndexEncoder(MockEmbedding(embed_dim=8), model_id="mock")
    assert (wrapped.model_id, wrapped.dimension) == ("mock", 8)
    vectors = wrapped.encode(["a", "b"])
    assert vectors.shape == (2, 8)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)


def test_as_encoder(encoder: Encoder) -> None:
    assert isinstance(as_encoder(None), Encoder)
    assert as_encoder(SynaptorouteEmbedding(encoder)) is encoder
    assert as_encoder(encoder) is encoder
    assert isinstance(as_encoder(MockEmbedding(embed_dim=4)), LlamaIndexEncoder)
    with pytest.raises(TypeError, match="BaseEmbedding"):
        as_encoder("all-MiniLM-L6-v2")  # type: ignore[arg-type]


def test_selector_with_a_llamaindex_embedding(encoder: Encoder) -> None:
    # Shares the model of a SynaptorouteEmbedding rather than loading a second one.
    shared = SynaptorouteSelector.from_defaults(encoder=SynaptorouteEmbedding(encoder))
    assert shared.encoder is encoder
    # Any other BaseEmbedding goes through LlamaIndexEncoder and routes the same.
    generic = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES, encoder=LlamaIndexEncoder(SynaptorouteEmbedding(encoder))
    )
    choices = [
        ToolMetadata(name="billing", description="Invoices, payments and refunds"),
        ToolMetadata(name="tech_support", description="Log-in problems, crashes and bugs"),
        ToolMetadata(name="general", description="Opening hours, offices and jobs"),
    ]
    for query, expected in CLEAR_QUERIES:
        assert generic.select(choices, query).inds == [expected]
