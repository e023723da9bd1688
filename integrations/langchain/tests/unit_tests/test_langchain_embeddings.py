"""Embeddings both ways: SynaptorouteEmbeddings (standard suite) and LangChainEncoder."""

from __future__ import annotations

import copy
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_synaptoroute import LangChainEncoder, SynaptorouteEmbeddings, SynaptorouteRouter
from langchain_tests.unit_tests import EmbeddingsUnitTests
from pydantic import ValidationError

from synaptoroute import (
    DEFAULT_MODEL_ID,
    AdaptiveRouter,
    CallableEncoder,
    Encoder,
    EncoderError,
    EncoderProtocol,
    HashingEncoder,
    InvalidInputError,
    ModelMismatchError,
    Route,
    SQLiteStorage,
    default_encoder,
)
from synaptoroute.adapters import as_encoder
from synaptoroute.storage import ModelInfo
from synaptoroute.testing import RecordingEncoder


class TestSynaptorouteEmbeddingsStandard(EmbeddingsUnitTests):
    """The langchain-tests unit suite for embeddings."""

    @property
    def embeddings_class(self) -> type[SynaptorouteEmbeddings]:
        return SynaptorouteEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, object]:
        return {}


def test_vectors_are_the_encoders(encoder: Encoder) -> None:
    embeddings = SynaptorouteEmbeddings(encoder=encoder)
    texts = ["I need a refund", "Reset my password"]
    docs = np.asarray(embeddings.embed_documents(texts))
    assert np.allclose(docs, encoder.encode(texts), atol=1e-6)
    assert np.allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)
    assert np.allclose(embeddings.embed_query(texts[0]), docs[0], atol=1e-6)
    assert embeddings.embed_documents([]) == []
    assert embeddings.model_id == DEFAULT_MODEL_ID
    assert embeddings.dimension == 384
    assert embeddings.synaptoroute_encoder is encoder


async def test_async_embeddings_match_sync(encoder: Encoder) -> None:
    embeddings = SynaptorouteEmbeddings(encoder=encoder)
    assert await embeddings.aembed_query("hello") == embeddings.embed_query("hello")


def test_default_builds_the_bundled_encoder_lazily() -> None:
    embeddings = SynaptorouteEmbeddings()
    encoder = embeddings.synaptoroute_encoder
    assert isinstance(encoder, Encoder)
    assert encoder is default_encoder()  # one model per process
    own = SynaptorouteEmbeddings(threads=1).synaptoroute_encoder
    assert own is not encoder
    assert not own.loaded  # nothing touched the model file yet
    with pytest.raises(ValueError, match="either encoder= or model"):
        SynaptorouteEmbeddings(encoder=encoder, threads=1)


def test_copies_share_or_reload_the_model(encoder: Encoder) -> None:
    # The loaded model holds a lock: pickling and deepcopy raised TypeError.
    embeddings = SynaptorouteEmbeddings()
    vector = embeddings.embed_query("refund")
    for copy_of in (copy.deepcopy, lambda e: pickle.loads(pickle.dumps(e))):
        twin = copy_of(embeddings)
        assert twin.synaptoroute_encoder is default_encoder()
        assert twin.embed_query("refund") == vector
    given = SynaptorouteEmbeddings(encoder=HashingEncoder(dimension=64))
    twin = pickle.loads(pickle.dumps(given))
    assert isinstance(twin.synaptoroute_encoder, HashingEncoder)
    assert twin.synaptoroute_encoder is twin.encoder
    assert twin.embed_query("refund") == given.embed_query("refund")
    assert copy.deepcopy(given).synaptoroute_encoder is given.synaptoroute_encoder
    shared = SynaptorouteEmbeddings(encoder=encoder)
    assert copy.deepcopy(shared).synaptoroute_encoder is encoder


def test_a_copy_with_other_fields_gets_its_own_encoder_and_fields_are_fixed() -> None:
    # pydantic's copy kept the old encoder under the new fields, and an assigned field
    # left the encoder as it was: vectors of another model than the fields said.
    eight = SynaptorouteEmbeddings(encoder=HashingEncoder(dimension=8))
    four = eight.model_copy(update={"encoder": HashingEncoder(dimension=4)})
    assert four.model_id == four.encoder.model_id == "hashing-bow-4"  # type: ignore[union-attr]
    assert len(four.embed_query("a")) == 4 and len(eight.embed_query("a")) == 8
    assert eight.model_copy().synaptoroute_encoder is eight.synaptoroute_encoder
    same = eight.model_copy(update={"encoder": eight.encoder, "threads": None})
    assert same.synaptoroute_encoder is eight.synaptoroute_encoder  # no second model
    with pytest.raises(ValidationError, match="modle"):  # a typo is refused, None or not
        eight.model_copy(update={"modle": None})
    with pytest.raises(ValueError, match="not both"):  # as the constructor refuses it
        eight.model_copy(update={"threads": 2})
    with pytest.raises(ValidationError, match="frozen"):
        eight.encoder = HashingEncoder(dimension=4)
    assert eight.model_id == "hashing-bow-8"


def test_an_encoder_given_is_not_asked_to_embed_when_it_is_built() -> None:
    # Pydantic's isinstance with the runtime protocol read `dimension` before Python
    # 3.12: a remote model was called (or failed) when the object was built.
    calls: list[list[str]] = []

    def remote(texts: list[str]) -> list[list[float]]:
        calls.append(list(texts))
        return [[1.0, 0.0]] * len(texts)

    embeddings = SynaptorouteEmbeddings(encoder=CallableEncoder(remote, model_id="remote"))
    assert calls == []
    assert embeddings.embed_query("hi") == [1.0, 0.0] and len(calls) == 2  # probe, text
    with pytest.raises(ValidationError, match="must be a synaptoroute encoder"):
        SynaptorouteEmbeddings(encoder=DeterministicFakeEmbedding(size=4))  # type: ignore[arg-type]
    # Nor is a pydantic Embeddings with a model_id field and an encode helper (its
    # class has __getattr__, as every pydantic model's): it passed for a proxy.

    class TitanLike(DeterministicFakeEmbedding):
        model_id: str = "amazon.titan-embed-text-v2:0"

        def encode(self, text: str) -> list[float]:
            return self.embed_query(text)

    with pytest.raises(ValidationError, match="must be a synaptoroute encoder"):
        SynaptorouteEmbeddings(encoder=TitanLike(size=4))  # type: ignore[arg-type]


def test_langchain_encoder_normalises_any_embeddings() -> None:
    fake = DeterministicFakeEmbedding(size=16)
    adapter = LangChainEncoder(fake)
    assert isinstance(adapter, EncoderProtocol)
    assert adapter.model_id == "langchain:DeterministicFakeEmbedding"
    assert adapter.dimension == 16  # measured with one probe text
    vectors = adapter.encode(["a", "b", "a"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, 16)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    raw = np.asarray(fake.embed_documents(["a"]), dtype=np.float32)[0]
    assert np.allclose(vectors[0], raw / np.linalg.norm(raw), atol=1e-6)
    assert np.array_equal(vectors[0], vectors[2])
    assert adapter.encode([]).shape == (0, 16)
    with pytest.raises(TypeError):
        adapter.encode([b"bytes"])  # type: ignore[list-item]


def test_langchain_encoder_names_and_checks() -> None:
    class Named(DeterministicFakeEmbedding):
        model: str = "text-embed-3"

    assert LangChainEncoder(Named(size=4)).model_id == "langchain:Named:text-embed-3"
    assert LangChainEncoder(Named(size=4), model_id="mine", dimension=4).model_id == "mine"
    with pytest.raises(InvalidInputError):
        LangChainEncoder(Named(size=4), dimension=0)
    with pytest.raises(EncoderError, match="8 dimensions, expected 4"):
        LangChainEncoder(DeterministicFakeEmbedding(size=8), dimension=4).encode(["x"])

    class Broken(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            if texts == ["fail"]:
                msg = "service unavailable"
                raise ConnectionError(msg)
            return [[1.0, 0.0]]  # one vector whatever the number of texts

        def embed_query(self, text: str) -> list[float]:
            return [1.0, 0.0]

    with pytest.raises(EncoderError, match="service unavailable"):
        LangChainEncoder(Broken(), dimension=2).encode(["fail"])
    with pytest.raises(EncoderError, match=r"shape \(1, 2\) for 2 texts"):
        LangChainEncoder(Broken(), dimension=2).encode(["a", "b"])


def test_a_router_on_langchain_embeddings_routes_like_the_encoder(encoder: Encoder) -> None:
    # SynaptorouteEmbeddings stands in for any hosted model here: wrapped as a plain
    # Embeddings, it must give the same decisions as the encoder it wraps.
    adapter = LangChainEncoder(SynaptorouteEmbeddings(encoder=encoder))
    routes = [
        Route(name="billing", utterances=["I need a refund", "I was charged twice"]),
        Route(name="tech", utterances=["I can't log in", "The app crashes on start"]),
    ]
    via_adapter, direct = AdaptiveRouter(adapter), AdaptiveRouter(encoder)
    via_adapter.add_routes(routes)
    direct.add_routes(routes)
    texts = ["How do I get my money back?", "the app keeps crashing", "who won the world cup"]
    for a, b in zip(via_adapter.query_batch(texts), direct.query_batch(texts), strict=True):
        assert a.name == b.name
        assert a.score == pytest.approx(b.score, abs=1e-5)


def test_from_branches_rejects_other_encoders() -> None:
    with pytest.raises(TypeError, match="LangChain Embeddings"):
        SynaptorouteRouter.from_branches({"a": (["x"], lambda x: x)}, encoder=42)  # type: ignore[arg-type]


class _ByModelId(DeterministicFakeEmbedding):
    """Named like BedrockEmbeddings and watsonx's: by ``model_id`` alone."""

    model_id: str = "amazon.titan-embed-text-v2:0"


def _store(path: Path, encoder: EncoderProtocol) -> None:
    router = AdaptiveRouter(encoder, SQLiteStorage(path))
    router.add_route(Route(name="billing", utterances=["refund", "invoice"]))
    router.close()


def test_a_class_named_by_model_id_stores_that_name(tmp_path: Path) -> None:
    # Two Bedrock models of one dimension shared the id "langchain:<class>", so a store
    # of one opened with the other and mixed their vectors.
    titan, cohere = _ByModelId(size=8), _ByModelId(size=8, model_id="cohere.embed-v3")
    assert LangChainEncoder(titan).model_id == "langchain:_ByModelId:amazon.titan-embed-text-v2:0"
    assert as_encoder(cohere).model_id == "langchain:_ByModelId:cohere.embed-v3"
    assert LangChainEncoder(titan).former_model_ids == ("langchain:_ByModelId",)
    assert LangChainEncoder(titan, model_id="mine").former_model_ids == ()
    assert LangChainEncoder(DeterministicFakeEmbedding(size=8)).former_model_ids == ()
    path = tmp_path / "routes.db"
    _store(path, LangChainEncoder(titan))
    with pytest.raises(ModelMismatchError, match=r"cohere\.embed-v3"):
        AdaptiveRouter(LangChainEncoder(cohere), SQLiteStorage(path))


def test_a_store_of_the_id_earlier_versions_gave_opens_and_keeps_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    titan = _ByModelId(size=8)
    old_id = "langchain:_ByModelId"  # what versions before 0.3 stored for it
    path = tmp_path / "routes.db"
    _store(path, LangChainEncoder(titan, model_id=old_id))
    with caplog.at_level("WARNING", logger="synaptoroute.router"):
        router = AdaptiveRouter(as_encoder(titan), SQLiteStorage(path))
    assert "reopen with reencode=True" in caplog.text
    assert router.model == ModelInfo(old_id, 8)
    assert router.query("refund").name == "billing"
    router.add_route(Route(name="tech", utterances=["it crashes"]))  # written under old_id
    router.close()
    # Nothing was rewritten: a replica of the earlier version still opens the store.
    again = AdaptiveRouter(LangChainEncoder(titan, model_id=old_id), SQLiteStorage(path))
    assert again.route_names == ["billing", "tech"]
    again.close()
    # reencode=True re-encodes it under the id that names the model.
    recording = RecordingEncoder(LangChainEncoder(titan))
    router = AdaptiveRouter(recording, SQLiteStorage(path), reencode=True)
    assert recording.texts_encoded == 3
    assert router.model == ModelInfo("langchain:_ByModelId:amazon.titan-embed-text-v2:0", 8)
    router.close()
    # A head fitted under the former id is this model's: kept, without a warning.
    fitted = tmp_path / "fitted.db"
    router = AdaptiveRouter(
        LangChainEncoder(titan, model_id="langchain:_ByModelId"), SQLiteStorage(fitted)
    )
    words = ["refund", "invoice", "charge", "crash", "login", "error"]
    router.add_route(
        Route(name="billing", utterances=[f"{w} {i}" for w in words[:3] for i in range(4)])
    )
    router.add_route(
        Route(name="tech", utterances=[f"{w} {i}" for w in words[3:] for i in range(4)])
    )
    texts = [f"{w} {i}" for w in words for i in range(4, 8)]
    # Dense only: the lexical head needs SciPy, which the "latest" CI job leaves out.
    router.fit(texts, ["billing"] * 12 + ["tech"] * 12, head=True, hybrid=False)
    assert router.policy.head is not None
    router.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        router = AdaptiveRouter(as_encoder(titan), SQLiteStorage(fitted))
    assert router.policy.head is not None
    router.close()
    # Only the former id of this same class, at its dimension, is taken for it.
    other, wide = tmp_path / "other.db", tmp_path / "wide.db"
    _store(other, LangChainEncoder(titan, model_id="langchain:Other"))
    _store(wide, LangChainEncoder(_ByModelId(size=16), model_id="langchain:_ByModelId"))
    for path in (other, wide):
        with pytest.raises(ModelMismatchError):
            AdaptiveRouter(LangChainEncoder(titan), SQLiteStorage(path))
