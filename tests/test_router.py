from __future__ import annotations

import math
import subprocess
import sys
import threading
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from encoder_doubles import CountingEncoder
from numpy.typing import NDArray

from synaptoroute import (
    AdaptiveRouter,
    DecisionPolicy,
    Encoder,
    HashingEncoder,
    InvalidInputError,
    MemoryStorage,
    PolicyNotStoredError,
    Route,
    RouteExistsError,
    RouteNotFoundError,
    SQLiteStorage,
    StorageError,
)
from synaptoroute.batching import DEFAULT_MAX_BATCH_SIZE
from synaptoroute.index import RouteIndex
from synaptoroute.models import NEGATIVES_ROUTE
from synaptoroute.router import _Request, _top_k_request
from synaptoroute.storage.base import StoredRoute
from synaptoroute.storage.changes import Change, apply_change

BILLING = Route(name="billing", utterances=["I need a refund", "Where is my receipt?"])
SUPPORT = Route(name="support", utterances=["The app crashes", "I can't log in"])


@pytest.fixture
def router(encoder: Encoder) -> AdaptiveRouter:
    r = AdaptiveRouter(CountingEncoder(encoder))  # type: ignore[arg-type]
    r.add_routes([BILLING, SUPPORT])
    return r


def test_clinc_slice_accuracy(
    encoder: Encoder,
    clinc_train: list[dict[str, str | None]],
    clinc_val: list[dict[str, str | None]],
) -> None:
    by_label: dict[str, list[str]] = defaultdict(list)
    for row in clinc_train:
        if row["label"] is not None:
            by_label[row["label"]].append(str(row["text"]))
    assert len(by_label) >= 20
    router = AdaptiveRouter(encoder, threshold=-1.0)
    router.add_routes(Route(name=k, utterances=v) for k, v in by_label.items())
    rows = [r for r in clinc_val if r["label"] is not None]
    matches = router.query_batch([str(r["text"]) for r in rows])
    accuracy = np.mean([m.name == r["label"] for m, r in zip(matches, rows, strict=True)])
    assert accuracy >= 0.85


def test_query_explains_the_decision(router: AdaptiveRouter) -> None:
    match = router.query("How do I get my money back?")
    assert match.name == "billing"
    assert match.reason == "matched"
    assert match.runner_up == "support"
    assert match.score > match.runner_up_score  # type: ignore[operator]
    assert match.nearest_utterance == "I need a refund"
    assert match.threshold == router.threshold


def test_threshold_and_margin_reject(router: AdaptiveRouter) -> None:
    assert router.query("What is the capital of Mongolia?").name is None
    unrelated = router.query("What is the capital of Mongolia?")
    assert unrelated.reason == "below_threshold"
    assert unrelated.candidate is not None
    router.set_threshold("billing", 0.99)
    strict = router.query("How do I get my money back?")
    assert strict.name is None and strict.threshold == 0.99
    router.set_threshold("billing", None)
    margin_router = AdaptiveRouter(router.encoder, min_margin=0.9)
    margin_router.add_routes([BILLING, SUPPORT])
    ambiguous = margin_router.query("How do I get my money back?")
    assert ambiguous.name is None and ambiguous.reason == "ambiguous"


def test_empty_query_does_not_call_the_model(router: AdaptiveRouter) -> None:
    calls = router.encoder.calls  # type: ignore[attr-defined]
    for text in ["", "   ", "\n\t"]:
        match = router.query(text)
        assert match.name is None and match.reason == "empty_query"
    assert router.query_batch(["", " "])[1].reason == "empty_query"
    assert router.query_top_k("  ") == []
    assert router.encoder.calls == calls  # type: ignore[attr-defined]


INVISIBLE = ["\ufeff", "\u200b\u200b", "\x00", "\u0301", "\ue000", "\u200b \u2060" * 3000]


async def test_a_text_the_model_reads_nothing_of_is_an_empty_query(encoder: Encoder) -> None:
    # The tokenizer deletes these characters, so the model read each text as it reads
    # "", and that vector passed the threshold: "greet matched 0.526".
    counting = CountingEncoder(encoder)
    router = AdaptiveRouter(counting)  # type: ignore[arg-type]
    router.add_routes(
        [
            Route(name="greet", utterances=["hi", "hello", "hey"]),
            Route(name="refund", utterances=["I need a refund", "Where is my money?"]),
        ]
    )
    calls = counting.calls
    for text in INVISIBLE:
        match = router.query(text)
        assert match.name is None and match.reason == "empty_query", repr(text[:4])
        assert router.query_top_k(text) == []
    assert [m.reason for m in router.query_batch([*INVISIBLE, "hello"])] == [
        *["empty_query"] * len(INVISIBLE),
        "matched",
    ]
    assert [r == [] for r in router.query_top_k_batch(INVISIBLE)] == [True] * len(INVISIBLE)
    try:
        assert (await router.aquery("\ufeff")).reason == "empty_query"
        batch = await router.aquery_batch(["\x00", "\u200b"])
        assert [m.reason for m in batch] == ["empty_query"] * 2
        assert await router.aquery_top_k("\u200b\u200b") == []
    finally:
        await router.stop()
    assert counting.calls == calls + 1  # "hello" alone reached the model
    assert router.query("\u200bhello\ufeff").name == "greet"  # visible words are read


def test_an_encoder_without_reads_nothing_keeps_whitespace_as_empty() -> None:
    router = AdaptiveRouter(HashingEncoder())
    router.add_routes([BILLING])
    assert router.query(" \n").reason == "empty_query"
    assert router.encoder.calls == 1  # type: ignore[attr-defined]
    router.query("\u200b")  # no tokenizer to ask: embedded like any text
    assert router.encoder.calls == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", [None, 42, b"bytes", ["list"]])
def test_non_string_query_raises_type_error(router: AdaptiveRouter, bad: object) -> None:
    with pytest.raises(TypeError):
        router.query(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        router.query_batch(["ok", bad])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        router.query_batch("not a list")


def test_huge_and_unusual_queries(router: AdaptiveRouter) -> None:
    huge = "I need a refund for my last order. " * 40_000  # > 1 MB
    assert len(huge) > 1_000_000
    assert router.query(huge).candidate == "billing"
    for text in ["🍕🙂🎉", "返金してください", "x" * 5000, "\u200b\u200b", "Ünïcödé rëfünd"]:
        match = router.query(text)
        assert -1.0 <= match.score <= 1.0


def test_query_batch_uses_one_encoder_call_and_dedupes(router: AdaptiveRouter) -> None:
    enc = router.encoder
    before = enc.calls  # type: ignore[attr-defined]
    texts = ["money back please", "app won't start", "money back please", ""]
    matches = router.query_batch(texts)
    assert [m.name for m in matches] == ["billing", "support", "billing", None]
    assert enc.calls == before + 1  # type: ignore[attr-defined]
    assert enc.texts[-2:] == ["money back please", "app won't start"]  # type: ignore[attr-defined]
    assert matches == [router.query(t) for t in texts]


def test_query_cache_avoids_re_encoding(router: AdaptiveRouter) -> None:
    enc = router.encoder
    router.query("cached question about refunds")
    calls = enc.calls  # type: ignore[attr-defined]
    router.query("cached question about refunds")
    assert enc.calls == calls  # type: ignore[attr-defined]
    assert router.cache.hits >= 1


def test_cache_is_bounded(encoder: Encoder) -> None:
    router = AdaptiveRouter(encoder, cache_size=3)
    router.add_route(BILLING)
    for i in range(10):
        router.query(f"question {i}")
    assert len(router.cache) == 3


def test_top_k_is_a_separate_call_returning_a_list(router: AdaptiveRouter) -> None:
    top = router.query_top_k("How do I get my money back?", k=5)
    assert [m.name for m in top] == ["billing", "support"]
    assert top[0].reason == "matched"
    assert top[1].reason == "below_threshold"
    assert top[0].score >= top[1].score
    with pytest.raises(InvalidInputError):
        router.query_top_k("x", k=0)


def test_route_management(router: AdaptiveRouter) -> None:
    with pytest.raises(RouteExistsError):
        router.add_route(Route(name="billing", utterances=["other"]))
    router.add_route(BILLING)  # identical: no-op
    router.add_route(Route(name="billing", utterances=["pay my invoice"]), replace=True)
    assert router.get_route("billing").utterances == ["pay my invoice"]
    assert router.add_utterances("billing", ["I want my money back", "pay my invoice"]) == [
        "I want my money back"
    ]
    assert router.query("money back").nearest_utterance == "I want my money back"
    assert router.delete_utterances("billing", ["I want my money back", "never there"]) == 1
    assert router.get_route("billing").utterances == ["pay my invoice"]
    router.delete_route("support")
    assert router.route_names == ["billing"]
    assert "support" not in router and len(router) == 1
    for call in (
        lambda: router.delete_route("nope"),
        lambda: router.get_route("nope"),
        lambda: router.add_utterances("nope", ["x"]),
        lambda: router.set_threshold("nope", 0.3),
        lambda: router.delete_utterances("nope", ["x"]),
    ):
        with pytest.raises(RouteNotFoundError) as info:
            call()
        assert isinstance(info.value, KeyError)
    with pytest.raises(InvalidInputError):
        router.set_threshold("billing", 2.0)
    with pytest.raises(ValueError):
        router.add_utterances("billing", ["  "])


def test_a_route_is_named_as_route_keeps_its_name(router: AdaptiveRouter) -> None:
    # Route strips its name: every method that names a route reads the name that way,
    # or "  billing " was both unknown (get_route) and already there (add_route).
    padded = "  billing \t"
    assert router.get_route(padded).name == "billing"
    assert router.add_utterances(padded, ["Refund my order"]) == ["Refund my order"]
    assert router.delete_utterances(padded, ["Refund my order"]) == 1
    assert router.set_threshold(padded, 0.4).threshold == 0.4
    assert router.get_route("billing").threshold == 0.4
    router.delete_route(padded)
    assert router.route_names == ["support"]
    with pytest.raises(RouteNotFoundError):
        router.get_route("  ")


def test_a_long_ranking_judges_each_route_once_not_its_whole_tail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # query_top_k judged position i by deciding on the ranking's tail from i, which
    # walked that whole tail again for negative examples: O(k^2), 1.2 s for k = 4,000.
    import synaptoroute.decision as decision

    router = AdaptiveRouter(HashingEncoder(), threshold=-1.0)
    router.add_routes(
        Route(name=f"r{i}", utterances=[f"topic{i} alpha{i % 7} beta{i % 13}"]) for i in range(300)
    )
    router.add_negatives(["nothing alike here"])
    walked: list[int] = []
    real = decision.without_negatives

    def counted(scores: Any, snapshot: Any) -> Any:
        walked.append(len(scores.route_ids))
        return real(scores, snapshot)

    monkeypatch.setattr(decision, "without_negatives", counted)
    ranked = router.query_top_k("alpha3 beta5", 300)
    assert len(ranked) == 300 and all(m.name is not None for m in ranked)
    assert [m.score for m in ranked] == sorted((m.score for m in ranked), reverse=True)
    assert sum(walked) == 0  # the ranking's negatives were left out once, before


def test_no_routes_gives_a_documented_no_match(encoder: Encoder) -> None:
    match = AdaptiveRouter(encoder).query("hello")
    assert match.name is None and match.reason == "no_routes"


def test_invalid_router_settings(encoder: Encoder) -> None:
    with pytest.raises(InvalidInputError):
        AdaptiveRouter(encoder, aggregation="median")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        AdaptiveRouter(encoder, threshold=3)


def test_thresholds_take_numpy_scalars_and_refuse_bools(encoder: Encoder, tmp_path: Path) -> None:
    # A threshold computed with numpy (np.float32 is no Python float) is a number; it
    # is stored as a float, so a SQLite store can write it and a reopen reads it back.
    path = tmp_path / "routes.db"
    router = AdaptiveRouter.open(path, encoder, threshold=np.float32(0.25))
    assert router.threshold == pytest.approx(0.25) and type(router.threshold) is float
    router.add_routes([BILLING])
    router.set_threshold("billing", np.float64(0.5))
    router.threshold = np.float32(0.375)
    for bad in (True, "0.5", float("nan"), None):
        with pytest.raises(InvalidInputError, match="threshold must be a number"):
            AdaptiveRouter(encoder, threshold=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="threshold must be a number"):
            router.threshold = bad  # type: ignore[assignment]
        if bad is not None:  # None clears a route's own threshold
            with pytest.raises(InvalidInputError, match="threshold must be a number"):
                router.set_threshold("billing", bad)  # type: ignore[arg-type]
    assert router.get_route("billing").threshold == 0.5 and router.threshold == 0.375
    router.close()
    reopened = AdaptiveRouter.open(path, encoder)
    assert reopened.get_route("billing").threshold == 0.5
    reopened.close()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"top_k": True}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_k": 0}, "top_k"),
        ({"cache_size": -1}, "cache_size"),
        ({"cache_size": "10"}, "cache_size"),
        ({"blas_threads": 0}, "blas_threads"),
        ({"blas_threads": "2"}, "blas_threads"),
        ({"ann_threshold": True}, "ann_threshold"),
        ({"ann_depth": 64.5}, "ann_depth"),
        ({"max_batch_size": True}, "max_batch_size"),
        ({"max_queue_size": "64"}, "max_queue_size"),
        ({"max_queue_cost": 0}, "max_queue_cost"),
        ({"max_batch_cost": True}, "max_batch_cost"),
    ],
)
def test_router_counts_are_ints_in_range(options: dict[str, object], field: str) -> None:
    # Each was taken before and failed later, if at all (a str cache size at the
    # first query, a negative BLAS count inside the BLAS library).
    with pytest.raises(InvalidInputError, match=f"{field} must be at least"):
        AdaptiveRouter(HashingEncoder(dimension=64), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("hint", [0, -5, True, 2.5, "64", None])
def test_an_encoders_unusable_batch_size_hint_is_ignored(hint: object) -> None:
    # It was taken as max_batch_size, whose refusal named a setting never passed.
    class Hinting(HashingEncoder):
        preferred_batch_size = hint

    router = AdaptiveRouter(Hinting(dimension=64))
    assert router.worker.max_batch_size == DEFAULT_MAX_BATCH_SIZE
    assert AdaptiveRouter(Hinting(dimension=64), max_batch_size=3).worker.max_batch_size == 3


def test_an_encoders_batch_size_hint_sizes_the_batches() -> None:
    class Hinting(HashingEncoder):
        preferred_batch_size = 64

    assert AdaptiveRouter(Hinting(dimension=64)).worker.max_batch_size == 64


def test_blas_threads_set_later_are_checked_as_at_construction() -> None:
    # An assignment was taken as it came: 0 or "2" failed inside the BLAS library at
    # the next query; a numpy int is kept as a plain int.
    router = AdaptiveRouter(HashingEncoder(dimension=64), blas_threads=np.int64(2))
    assert router.blas_threads == 2 and type(router.blas_threads) is int
    for bad in (0, "2", True, 1.5):
        with pytest.raises(InvalidInputError, match="blas_threads must be at least 1"):
            router.blas_threads = bad  # type: ignore[assignment]
    assert router.blas_threads == 2
    router.blas_threads = None
    router.add_routes([BILLING, SUPPORT])
    assert router.query("I need a refund").name == "billing"


@pytest.mark.parametrize("wait", [True, "1", -1.0, float("nan"), float("inf")])
def test_the_batching_wait_is_a_number(wait: object) -> None:
    with pytest.raises(InvalidInputError, match="max_wait_ms must be a finite number"):
        AdaptiveRouter(HashingEncoder(dimension=64), max_wait_ms=wait)  # type: ignore[arg-type]


def test_the_reserved_name_of_the_negatives_is_no_route_to_any_method() -> None:
    # Each of these replaced, changed or wiped every negative example as if it were a
    # route (add_route, add_routes(replace=True) and delete_route took the name).
    router = AdaptiveRouter(HashingEncoder(dimension=64))
    router.add_routes([BILLING])
    router.add_negatives(["tell me a joke", "what is the weather"])
    held = router.negatives
    for replace in (False, True):
        with pytest.raises(InvalidInputError, match="reserved for the negative examples"):
            router.add_route(Route(name=NEGATIVES_ROUTE, utterances=["oops"]), replace=replace)
        with pytest.raises(InvalidInputError, match="reserved"):  # all or nothing
            router.add_routes([SUPPORT, Route(name=NEGATIVES_ROUTE, utterances=["x"])])
    for change in (
        lambda: router.get_route(NEGATIVES_ROUTE),
        lambda: router.delete_route(NEGATIVES_ROUTE),
        lambda: router.add_utterances(NEGATIVES_ROUTE, ["oops"]),
        lambda: router.delete_utterances(NEGATIVES_ROUTE, ["tell me a joke"]),
        lambda: router.set_threshold(NEGATIVES_ROUTE, 0.9),
    ):
        with pytest.raises(RouteNotFoundError, match=NEGATIVES_ROUTE):
            change()
    assert router.negatives == held and router.route_names == ["billing"]
    # The negatives' own methods still manage them, down to the last one.
    assert router.add_negatives(["who won the match"]) == ["who won the match"]
    assert router.delete_negatives([*held, "who won the match"]) == 3
    assert router.negatives == [] and router.route_names == ["billing"]


def test_deleting_every_negative_example_is_one_write() -> None:
    # Emptying the reserved route, then deleting it, was two writes: a failure of the
    # second left the store with an empty reserved route and the router without
    # negatives. All of them go in one delete of the route, which fails as a whole.
    from synaptoroute.exceptions import StorageError

    class Failing(MemoryStorage):
        writes: list[str] = []  # noqa: RUF012

        def delete_route(self, name: str) -> None:
            self.writes.append("delete_route")
            raise StorageError("disk full")

        def delete_utterances(self, name: str, texts: Sequence[str]) -> None:
            self.writes.append("delete_utterances")
            super().delete_utterances(name, texts)

    storage = Failing()
    router = AdaptiveRouter(HashingEncoder(dimension=64), storage)
    router.add_routes([BILLING])
    router.add_negatives(["tell me a joke", "what is the weather"])
    with pytest.raises(StorageError, match="disk full"):
        router.delete_negatives(["what is the weather", "tell me a joke", "unknown"])
    assert storage.writes == ["delete_route"]
    assert router.negatives == ["tell me a joke", "what is the weather"]
    stored = {r.route.name: r.route.utterances for r in storage.load()}
    assert stored[NEGATIVES_ROUTE] == ["tell me a joke", "what is the weather"]
    # Some of them: their utterances alone.
    assert router.delete_negatives(["tell me a joke"]) == 1
    assert storage.writes == ["delete_route", "delete_utterances"]
    assert router.negatives == ["what is the weather"]


@pytest.mark.model
def test_utterances_equal_under_nfc_are_one_utterance(encoder: Encoder, tmp_path: Path) -> None:
    # The model reads "résiliation" typed decomposed (NFD) as the composed one: the
    # copy was added as a second row, and deleting the form the user saw left the
    # other, which still matched the "deleted" text at 1.0.
    import unicodedata

    nfc = unicodedata.normalize("NFC", "résiliation")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    assert Route(name="cancel", utterances=[nfc, nfd, f" {nfc} "]).utterances == [nfc]
    path = tmp_path / "routes.db"
    router = AdaptiveRouter(encoder, SQLiteStorage(path))
    router.add_routes([Route(name="cancel", utterances=[nfc, "je veux annuler"]), BILLING])
    assert router.add_utterances("cancel", [nfd]) == []
    assert router.add_negatives(["tell me a joke"]) == ["tell me a joke"]
    joke = unicodedata.normalize("NFD", "tell me a joké")
    assert router.add_negatives([joke]) == [joke]
    assert router.add_negatives([unicodedata.normalize("NFC", joke)]) == []
    # add_routes(negatives=...) is what a routes file's negatives go through.
    assert router.add_routes([], negatives=[unicodedata.normalize("NFC", joke)]) == []
    # A store written before holds both forms: a delete of either removes both.
    router.storage.add_utterances("cancel", [nfd], np.asarray(encoder.encode([nfd])), router.model)
    router.close()
    router = AdaptiveRouter(encoder, SQLiteStorage(path))
    assert router.get_route("cancel").utterances == [nfc, "je veux annuler", nfd]
    assert router.delete_utterances("cancel", [nfc]) == 2
    assert router.get_route("cancel").utterances == ["je veux annuler"]
    assert router.query(nfc).score < 0.99
    assert router.delete_negatives([unicodedata.normalize("NFC", joke), "tell me a joke"]) == 2
    assert router.negatives == []
    router.close()
    reopened = AdaptiveRouter(encoder, SQLiteStorage(path))
    assert reopened.get_route("cancel").utterances == ["je veux annuler"]
    reopened.close()


def test_a_reencode_committed_while_the_routes_load_is_not_mixed_up() -> None:
    # Another process re-encodes the store with the new model between the read of the
    # routes and the read of the model: the routes (old vectors) must not be taken for
    # the new model's, as the model read afterwards would say.
    from synaptoroute.storage import MemoryStorage, ModelInfo, StoredRoute

    old, new = HashingEncoder(dimension=64), HashingEncoder(dimension=32)

    class Raced(MemoryStorage):
        raced = True  # armed once the store holds the old model's routes

        def load(self) -> list[StoredRoute]:
            routes = super().load()
            if not self.raced:
                self.raced = True
                fresh = [
                    StoredRoute(r.route, new.encode(r.route.utterances)) for r in routes
                ]  # fmt: skip
                self.replace_all(fresh, ModelInfo(new.model_id, new.dimension))
            return routes

    storage = Raced()
    AdaptiveRouter(old, storage).add_routes([BILLING, SUPPORT])
    storage.raced = False
    router = AdaptiveRouter(new, storage)
    assert storage.raced
    assert router.query("The app crashes").name == "support"
    assert router.query(BILLING.utterances[0]).score == pytest.approx(1.0, abs=1e-5)


def test_a_route_written_while_the_store_is_reencoded_is_kept(tmp_path: Path) -> None:
    # reencode=True encodes every utterance (minutes on a large store) while processes
    # still on the old model keep writing; replace_all used to drop what they wrote.
    path = tmp_path / "s.db"
    old, new = HashingEncoder(dimension=64), HashingEncoder(dimension=32)
    writer = AdaptiveRouter(old, SQLiteStorage(path))
    writer.add_routes([BILLING])
    music = Route(name="music", utterances=["play some jazz", "next song"])

    class WritesMeanwhile(CountingEncoder):
        def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
            if self.calls == 0 and len(texts):
                writer.add_routes([music])  # another process, during the first encode
            return super().encode(texts)

    encoder = WritesMeanwhile(new)
    router = AdaptiveRouter(encoder, SQLiteStorage(path), reencode=True)
    assert router.route_names == ["billing", "music"]
    # Only the new route's texts were encoded again.
    assert sorted(encoder.texts) == sorted([*BILLING.utterances, *music.utterances])
    assert router.query("play some jazz").name == "music"
    router.close()
    writer.close()
    reopened = AdaptiveRouter(new, SQLiteStorage(path))
    assert reopened.route_names == ["billing", "music"]
    reopened.close()


def test_a_store_whose_routes_hold_no_utterance_opens_with_a_new_encoder(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    first = AdaptiveRouter(HashingEncoder(dimension=64), SQLiteStorage(path))
    first.add_routes([BILLING])
    first.delete_utterances("billing", BILLING.utterances)
    first.close()
    # No vector to mismatch: it opens (it raised ModelMismatchError) and writes.
    second = AdaptiveRouter(HashingEncoder(dimension=32), SQLiteStorage(path))
    second.add_routes([SUPPORT])
    second.close()
    third = AdaptiveRouter(HashingEncoder(dimension=32), SQLiteStorage(path))
    assert third.route_names == ["billing", "support"]
    assert third.query("The app crashes").name == "support"
    third.close()


def test_a_store_whose_routes_were_all_deleted_takes_a_new_encoder(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    first = AdaptiveRouter(HashingEncoder(dimension=64), SQLiteStorage(path))
    first.add_routes([BILLING])
    first.delete_route("billing")
    first.close()
    # It opened (no vectors to mismatch), then every write failed: "refusing to mix".
    second = AdaptiveRouter(HashingEncoder(dimension=32), SQLiteStorage(path))
    second.add_routes([SUPPORT])
    second.close()
    third = AdaptiveRouter(HashingEncoder(dimension=32), SQLiteStorage(path))
    assert third.route_names == ["support"] and third.query("The app crashes").name == "support"
    third.close()


def test_set_policy_refuses_what_the_rest_of_the_api_refuses(tmp_path: Path) -> None:
    # A threshold of 5 or inf made every query answer None, for good (it was stored);
    # a negative margin was taken; numpy numbers in info raised a bare TypeError.
    router = AdaptiveRouter(HashingEncoder(dimension=64), SQLiteStorage(tmp_path / "s.db"))
    router.add_routes([BILLING])
    held = router.policy
    for bad, field in (
        (DecisionPolicy(threshold=5.0), "threshold"),
        (DecisionPolicy(threshold=math.inf), "threshold"),
        (DecisionPolicy(threshold=0.3, thresholds={"billing": -2.0}), "thresholds"),
        (DecisionPolicy(threshold=0.3, min_margin=-1.0), "min_margin"),
        (DecisionPolicy(threshold=0.3, info={"x": np.float32(1)}), "info must be JSON"),
        # Stored by SQLite and the memory store, refused by PostgreSQL's JSON.
        (DecisionPolicy(threshold=0.3, info={"x": [math.nan]}), "info must be JSON"),
        (DecisionPolicy(threshold=0.3, info={"x": -math.inf}), "info must be JSON"),
    ):
        with pytest.raises(InvalidInputError, match=field):
            router.set_policy(bad)
    assert router.policy is held and router.query("I need a refund").name == "billing"
    router.set_policy(DecisionPolicy(threshold=1.0001, thresholds={"billing": -1.0001}))
    router.close()


class _SpyLock:
    """The router's lock, telling when another thread than the holder waits for it."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.holder: int | None = None
        self.waited = threading.Event()

    def acquire(self) -> bool:
        # A lock still (a fork takes every registered router's, this one's included,
        # until the router is collected).
        if self.holder is not None and threading.get_ident() != self.holder:
            self.waited.set()
        return bool(self.lock.acquire())

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_the_threshold_setter_keeps_a_policy_set_while_it_waited(tmp_path: Path) -> None:
    # It read the policy before taking the lock: a fit (or a route change's
    # reconciliation) that held the lock then was overwritten by the old policy with
    # the new threshold, in memory and in the store, silently.
    router = AdaptiveRouter(HashingEncoder(dimension=64), SQLiteStorage(tmp_path / "t.db"))
    router.add_routes([BILLING, SUPPORT])
    spy = _SpyLock(router._lock)
    router._lock = spy  # type: ignore[assignment]
    with spy:
        spy.holder = threading.get_ident()
        setter = threading.Thread(target=setattr, args=(router, "threshold", 0.42))
        setter.start()
        assert spy.waited.wait(60)  # the setter waits for the lock (as for a fit)
        router.set_policy(DecisionPolicy(threshold=0.3, min_margin=0.05))
    setter.join(60)
    router._lock = spy.lock
    assert (router.policy.threshold, router.policy.min_margin) == (0.42, 0.05)
    router.close()


def test_set_policy_reconciles_the_policy_with_the_routes(tmp_path: Path) -> None:
    # A policy read before a route change (router.policy kept by user code) brought
    # back thresholds and a head of a deleted route, stored too.
    router = AdaptiveRouter(HashingEncoder(dimension=64), SQLiteStorage(tmp_path / "r.db"))
    router.add_routes([BILLING, SUPPORT])
    # Distinct texts: copies of one text share a fold, and held out together they do
    # not make a head win.
    rows = [(t, r.name) for r in (BILLING, SUPPORT) for t in r.utterances]
    texts = [f"{t} {'please ' * i}" for i in range(5) for t, _ in rows]
    router.fit(texts, [name for _ in range(5) for _, name in rows])
    old = DecisionPolicy(
        threshold=0.3, thresholds={"billing": 0.4, "support": 0.5}, head=router.policy.head
    )
    assert router.policy.head is not None
    with pytest.warns(UserWarning, match="fitted head was dropped"):
        router.delete_route("support")
    with pytest.warns(UserWarning, match="fitted head was dropped"):
        router.set_policy(old)
    # Thresholds are kept as given: a route they name may be added after.
    kept = {"billing": 0.4, "support": 0.5}
    assert router.policy.head is None and router.policy.thresholds == kept
    router.close()
    again = AdaptiveRouter(HashingEncoder(dimension=64), SQLiteStorage(tmp_path / "r.db"))
    assert again.policy.head is None and again.policy.thresholds == kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say about thresholds alone
        again.set_policy(DecisionPolicy(threshold=0.5, thresholds={"refunds": 0.9}))
    again.add_routes([Route(name="refunds", utterances=["money back please"])])
    assert again.policy.thresholds == {"refunds": 0.9}
    again.close()


async def test_stop_checks_its_timeout() -> None:
    router = AdaptiveRouter(HashingEncoder(dimension=64))
    router.add_routes([BILLING])
    await router.aquery("refund")
    for bad in ("5", -1, math.nan, 10**400):  # 10**400: OverflowError from the timer
        with pytest.raises(InvalidInputError, match="timeout must be None or a number"):
            await router.stop(timeout=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="timeout must be None or a number"):
            await router.aquery("refund", timeout=bad)  # type: ignore[arg-type]
    assert router.worker.running  # nothing was stopped
    assert (await router.aquery("refund", timeout=math.inf)).name == "billing"
    await router.stop(timeout=5)
    assert not router.worker.running


def test_add_routes_names_what_is_not_a_route() -> None:
    router = AdaptiveRouter(HashingEncoder(dimension=64))
    with pytest.raises(TypeError, match="add_routes takes Route objects, got dict"):
        router.add_route({"name": "billing", "utterances": ["refund"]})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="add_routes takes a list of routes"):
        router.add_routes(BILLING)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got NoneType"):
        router.add_routes([BILLING, None])  # type: ignore[list-item]
    assert router.route_names == []  # all or nothing


def test_counts_accept_numpy_ints_and_k_refuses_a_bool() -> None:
    router = AdaptiveRouter(HashingEncoder(dimension=64), top_k=np.int64(2), cache_size=np.int32(5))
    whole = AdaptiveRouter(HashingEncoder(dimension=64), cache_size=1e4, ann_threshold=5e4)
    assert whole.cache.maxsize == 10_000  # a float with no fraction is a count too
    router.add_routes([BILLING, SUPPORT])
    assert len(router.query_top_k("I need a refund", np.int64(2))) == 2
    with pytest.raises(InvalidInputError, match="k must be at least 1"):
        router.query_top_k("I need a refund", True)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="target_oos_recall must be a number"):
        router.fit(
            ["I need a refund", "the app crashes", "tell me a joke"],
            ["billing", "support", None],
            objective="oos_recall",
            target_oos_recall=True,
        )


def test_a_policy_is_checked_wherever_it_is_made(tmp_path: Path) -> None:
    # The router's constructor, set_policy, fit and a stored state all make a
    # DecisionPolicy: it refuses what is not a number and keeps floats, so a policy of
    # numpy scalars is stored as JSON and read back. The router checks the ranges.
    encoder = HashingEncoder(dimension=64)
    for bad in (True, "0.1", float("nan"), -0.1, 2.5):
        with pytest.raises(InvalidInputError, match="min_margin must be a number"):
            AdaptiveRouter(encoder, min_margin=bad)  # type: ignore[arg-type]
    for bad in (True, "0.1", float("nan")):
        with pytest.raises(InvalidInputError, match="threshold must be a number"):
            DecisionPolicy(threshold=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="min_margin must be a number"):
            DecisionPolicy(threshold=0.4, min_margin=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="thresholds must map route names"):
        DecisionPolicy(threshold=0.4, thresholds={"billing": "high"})  # type: ignore[dict-item]
    path = tmp_path / "routes.db"
    router = AdaptiveRouter.open(path, encoder)
    router.add_routes([BILLING])
    router.set_policy(
        DecisionPolicy(
            threshold=np.float32(0.25),
            min_margin=np.float64(0.05),
            thresholds={"billing": np.float32(0.5)},
        )
    )
    router.close()
    policy = AdaptiveRouter.open(path, encoder).policy
    assert (policy.threshold, policy.min_margin, dict(policy.thresholds)) == (
        0.25,
        0.05,
        {"billing": 0.5},
    )


def test_concurrent_queries_during_adds_and_deletes(encoder: Encoder) -> None:
    router = AdaptiveRouter(HashingEncoder())
    router.add_route(Route(name="billing", utterances=["refund my order please"]))
    errors: list[BaseException] = []
    done = threading.Event()

    def churn() -> None:
        for i in range(200):
            router.add_route(Route(name=f"tmp{i}", utterances=[f"temporary topic {i}"]))
            if i >= 3:
                router.delete_route(f"tmp{i - 3}")
        done.set()

    def ask() -> None:
        try:
            while not done.is_set():
                match = router.query("refund my order")
                assert match.name == "billing"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn)] + [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(router) == 4


def test_a_ranked_route_is_judged_the_same_whatever_k() -> None:
    router = AdaptiveRouter(HashingEncoder(64), threshold=0.3, min_margin=0.1)
    router.add_routes(
        [
            Route(name="a", utterances=["refund my order please"]),
            Route(name="b", utterances=["refund my order now"]),
            Route(name="c", utterances=["the weather is nice today"]),
        ]
    )
    query = "refund my order"
    decision = router.query(query)
    assert decision.reason == "ambiguous"  # a and b tie
    ranked = router.query_top_k(query, 3)
    # The first is judged as the decision judges it; the last route a ranking returns
    # was taken for matched with no runner-up to measure its margin against.
    assert ranked[0].reason == "ambiguous"
    for k in (1, 2):
        assert router.query_top_k(query, k) == ranked[:k], k
    assert router.query_top_k_batch([query], 1) == [ranked[:1]]


def _snapshot_seen_from_another_thread(index: RouteIndex) -> list[str] | None:
    """The routes a query arriving now would see, or None when it would wait for the
    change in progress (the index is held)."""
    seen: list[list[str] | None] = []

    def look() -> None:
        if not index._lock.acquire(blocking=False):
            seen.append(None)
            return
        try:
            seen.append(index.snapshot().layout.names)
        finally:
            index._lock.release()

    thread = threading.Thread(target=look)
    thread.start()
    thread.join()
    return seen[0]


def test_a_route_replaced_while_serving_is_never_missing(
    router: AdaptiveRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Replacing deletes the route's rows and adds the new ones: a query compiling in
    # between would see no route of that name and answer another (or none).
    index = router._index
    seen: list[list[str] | None] = []
    add = index.add

    def add_and_look(name: str, vectors: NDArray[np.float32], texts: Sequence[str]) -> None:
        seen.append(_snapshot_seen_from_another_thread(index))
        add(name, vectors, texts)

    monkeypatch.setattr(index, "add", add_and_look)
    router.add_route(BILLING.model_copy(update={"threshold": 0.4}), replace=True)
    router.add_routes(
        [
            BILLING.model_copy(update={"threshold": 0.3}),
            SUPPORT.model_copy(update={"threshold": 0.3}),
        ],
        replace=True,
    )
    assert len(seen) == 3
    assert all(names is None or {"billing", "support"} <= set(names) for names in seen), seen
    monkeypatch.undo()
    assert router.query("I need a refund").name == "billing"
    assert router.get_route("billing").threshold == 0.3


def test_a_replica_reload_is_seen_whole_or_not_at_all(encoder: Encoder) -> None:
    index = RouteIndex(encoder.dimension)
    vectors = encoder.encode(["I need a refund", "The app crashes"])
    routes = apply_change(
        Change(
            seq=1,
            kind="reload",
            routes=(
                StoredRoute(Route(name="billing", utterances=["I need a refund"]), vectors[:1]),
                StoredRoute(Route(name="support", utterances=["The app crashes"]), vectors[1:]),
            ),
        ),
        {},
        index,
    )
    seen: list[list[str] | None] = []
    delete_texts = index.delete_texts

    def delete_and_look(name: str, texts: Sequence[str]) -> int:
        removed = delete_texts(name, texts)
        seen.append(_snapshot_seen_from_another_thread(index))
        return removed

    index.delete_texts = delete_and_look  # type: ignore[method-assign]
    # Both routes changed (a route the replica holds as it is keeps its rows: not deleted).
    reload = Change(
        seq=2,
        kind="reload",
        routes=tuple(
            StoredRoute(routes[n].model_copy(update={"threshold": 0.5}), vectors[i : i + 1])
            for i, n in enumerate(routes)
        ),
    )
    apply_change(reload, routes, index)
    assert len(seen) == 2 and seen == [None, None], seen
    assert sorted(index.snapshot().layout.names) == ["billing", "support"]


def test_sync_methods_are_thread_safe_with_the_real_model(encoder: Encoder) -> None:
    router = AdaptiveRouter(encoder)
    router.add_routes([BILLING, SUPPORT])
    results: list[str | None] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        name = router.query(f"I want a refund for order {i}").name
        router.add_utterances("support", [f"error code {i}"])
        with lock:
            results.append(name)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["billing"] * 8
    assert len(router.get_route("support").utterances) == 10


QUICKSTART_010 = """
import asyncio
from synaptoroute.router import AdaptiveRouter
from synaptoroute.encoder import Encoder
from synaptoroute.storage import SQLiteStorage
from synaptoroute.models import Route

async def main():
    encoder = Encoder()
    storage = SQLiteStorage("data/memory.sqlite")
    router = AdaptiveRouter(encoder, storage)
    router.add_route(Route(name="billing", utterances=["I need a refund", "Where is my receipt?", "Cancel my subscription"]))
    await router.start()
    result = await router.aquery("How do I get my money back?")
    print(f"Matched Intent: {result.name}")
    await router.stop()

asyncio.run(main())
"""


def test_010_quickstart_runs_unchanged_from_a_fresh_directory(tmp_path: Path) -> None:
    script = tmp_path / "quickstart.py"
    script.write_text(QUICKSTART_010)
    for _ in range(2):  # and again on the existing store
        out = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "Matched Intent: billing"
    assert (tmp_path / "data" / "memory.sqlite").is_file()


def test_router_adds_never_copy_the_whole_matrix() -> None:
    router = AdaptiveRouter(HashingEncoder())
    for i in range(300):
        router.add_route(Route(name=f"topic{i}", utterances=[f"subject {i} alpha", f"subject {i}"]))
        router.query(f"subject {i}")  # compiles after every add
    stats = router.index_stats
    assert stats.full_rebuilds == 0
    assert stats.rows_written == 600
    assert stats.rows_copied < 2 * 600  # capacity doubling only


def test_default_aggregation_keeps_small_routes_matchable(encoder: Encoder) -> None:
    # Why the default stays "max" (BENCHMARKS.md): with a route of three utterances,
    # mean_topk averages in unrelated ones and the 0.1.0 quick start stops matching.
    billing = Route(
        name="billing",
        utterances=["I need a refund", "Where is my receipt?", "Cancel my subscription"],
    )
    scores = {}
    for aggregation in ("max", "mean_topk", "centroid"):
        router = AdaptiveRouter(encoder, aggregation=aggregation)  # type: ignore[arg-type]
        router.add_route(billing)
        scores[aggregation] = router.query("How do I get my money back?").score
    assert AdaptiveRouter(encoder).policy.threshold == 0.5
    assert scores["max"] == pytest.approx(0.643, abs=0.01)
    assert scores["mean_topk"] == pytest.approx(0.443, abs=0.01)
    assert scores["mean_topk"] < 0.45 < 0.5 < scores["max"]


def test_open_names_the_store_and_closes_it_when_the_router_cannot_be_built(
    encoder: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synaptoroute import MemoryStorage, SQLiteStorage
    from synaptoroute import router as router_module

    assert isinstance(AdaptiveRouter.open(None, encoder).storage, MemoryStorage)
    path = tmp_path / "sub" / "routes.db"
    opened = AdaptiveRouter.open(path, encoder, threshold=0.6)
    assert isinstance(opened.storage, SQLiteStorage) and path.exists()
    assert opened.threshold == 0.6
    opened.add_routes([BILLING])
    opened.close()
    assert AdaptiveRouter.open(str(path), encoder).route_names == ["billing"]

    closed: list[bool] = []

    class Tracked(SQLiteStorage):
        def close(self) -> None:
            closed.append(True)
            super().close()

    monkeypatch.setattr(router_module, "open_storage", lambda target: Tracked(target))
    with pytest.raises(InvalidInputError, match="threshold"):
        AdaptiveRouter.open(path, encoder, threshold=7)
    assert closed == [True]  # a failed open leaves nothing open


def test_warm_loads_the_model_and_compiles_the_index(encoder: Encoder, tmp_path: Path) -> None:
    path = tmp_path / "routes.db"
    writer = AdaptiveRouter.open(path, encoder)
    writer.add_routes([BILLING, SUPPORT])
    writer.close()
    fresh = Encoder()  # not loaded yet
    router = AdaptiveRouter.open(path, fresh)
    assert not fresh.loaded and router.index_stats.compiles == 0
    router.warm()
    assert fresh.loaded and router.index_stats.compiles == 1
    router.query("How do I get my money back?")
    assert router.index_stats.compiles == 1  # the first query found it compiled
    router.close()


def test_replacing_a_route_encodes_only_its_new_utterances(router: AdaptiveRouter) -> None:
    enc = router.encoder
    assert isinstance(enc, CountingEncoder)
    before = router._index.vectors_of("billing")
    kept = list(BILLING.utterances[:1])
    enc.texts.clear()
    router.add_route(
        BILLING.model_copy(update={"utterances": [*kept, "charge reversed"]}), replace=True
    )
    assert enc.texts == ["charge reversed"]  # the kept utterance keeps its stored vector
    after = router._index.vectors_of("billing")
    assert set(after) == {*kept, "charge reversed"}
    np.testing.assert_array_equal(after[kept[0]], before[kept[0]])
    assert router.query(kept[0]).name == "billing"


def test_a_replica_change_whose_policy_cannot_be_read_still_applies_its_routes(
    encoder: Encoder, caplog: pytest.LogCaptureFixture
) -> None:
    # The index took the change and the route list did not (the policy was read in
    # between and raised): every later change was applied on the wrong base.
    router = AdaptiveRouter(encoder)
    router.add_route(BILLING)
    other = DecisionPolicy(threshold=0.2, info={"model": "another-model"})
    reload = Change(
        seq=1,
        kind="reload",
        routes=(StoredRoute(SUPPORT, encoder.encode(SUPPORT.utterances)),),
        state={"policy": other.to_state()},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the "fitted on another model" warning raises
        router._apply_changes([reload])
    assert router.route_names == ["support"]
    assert [m.name for m in router.query_top_k("I need a refund", 3)] == ["support"]
    assert router.query("The app crashes").name == "support"
    assert router.query("I need a refund").name != "billing"
    assert router.policy.threshold == 0.5  # the policy this replica had
    assert "could not be read" in caplog.text


class _LiveRoutes(dict[str, Route]):
    """The router's routes, refusing a Python-level walk: route changes add and delete
    names in place, so a walk that another thread's change interleaves with raises
    "dictionary changed size during iteration" (or skips a route)."""

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the live routes were walked")

    def items(self) -> Any:
        raise AssertionError("the live routes were walked")


async def test_a_ranking_that_respects_negatives_gives_the_decision_when_one_is_nearest(
    encoder: Encoder,
) -> None:
    # The LangChain routers asked query_top_k and then query for every input while the
    # router held negative examples: two scorings, possibly on two snapshots.
    router = AdaptiveRouter(encoder)
    router.add_routes([BILLING, SUPPORT], negatives=["What is the weather like?"])
    negative, routed = "what's the weather like today", "I need a refund please"
    decision = router.query(negative)
    assert decision.reason == "negative_example"
    assert decision.nearest_utterance == "What is the weather like?"
    # By default a ranking lists routes only.
    plain = router.query_top_k(negative, 2)
    assert sorted(str(m.name) for m in plain) == ["billing", "support"]
    assert router.query_top_k(negative, 2, respect_negatives=True) == [decision]
    # A text nearest to a route ranks as it does without the option.
    assert router.query_top_k(routed, 2, respect_negatives=True) == router.query_top_k(routed, 2)
    texts = [negative, routed, ""]
    expected = [[decision], router.query_top_k(routed, 2), []]
    assert router.query_top_k_batch(texts, 2, respect_negatives=True) == expected
    assert await router.aquery_top_k(negative, 2, respect_negatives=True) == [decision]
    assert await router.aquery_top_k_batch(texts, 2, respect_negatives=True) == expected
    # Mixed in one batch (as the worker hands them over) with a plain ranking and a
    # decision, each gets its own.
    mixed = [_top_k_request(negative, 2, True), _top_k_request(negative, 2), _Request(negative)]
    assert router._answer(mixed) == [[decision], plain, decision]
    await router.stop()


def test_readers_never_walk_the_routes_a_change_may_be_changing(encoder: Encoder) -> None:
    # list_routes(), route_names (GET /routes, the console) and the thresholds mapping
    # read the routes without the router's lock; they walked the live dict.
    router = AdaptiveRouter(encoder)
    router.add_routes([BILLING, SUPPORT])
    router._routes = _LiveRoutes(router._routes)
    router.add_negatives(["What is the weather like?"])
    router.add_utterances("support", ["The screen is blank"])
    router.delete_route("billing")
    router.add_route(BILLING)
    assert [r.name for r in router.list_routes()] == ["support", "billing"]
    assert router.route_names == ["support", "billing"]
    assert sorted(router._route_thresholds()) == sorted(["support", "billing", NEGATIVES_ROUTE])
    assert router.query("I need a refund").name == "billing"


def test_a_query_whose_compile_waits_for_a_change_reads_its_policy(
    encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A query read the policy, then waited for the index a change held: it decided
    # the new routes with the policy from before the change.
    router = AdaptiveRouter(encoder)
    router.add_route(BILLING)
    assert router.query("I want my money back").name == "billing"
    strict = DecisionPolicy(threshold=0.999)
    snapshot = router._index.snapshot
    changed: list[bool] = []

    def change_meanwhile() -> Any:
        if not changed:  # the change this query's compile waits for
            changed.append(True)
            router._apply_changes(
                [
                    Change(
                        seq=1, kind="set_state", name="policy", state={"policy": strict.to_state()}
                    )
                ]
            )
        return snapshot()

    monkeypatch.setattr(router._index, "snapshot", change_meanwhile)
    result = router.query("I want my money back")
    assert changed
    assert result.name is None and result.reason == "below_threshold"


class _PolicyWriteFails(MemoryStorage):
    """A store whose policy writes fail (a full disk, a lost connection)."""

    failing = False

    def set_state(self, key: str, value: dict[str, Any] | None) -> None:
        if self.failing:
            raise StorageError("the policy could not be written")
        super().set_state(key, value)


def test_a_policy_write_that_fails_leaves_the_store_and_the_router_agreeing(
    encoder: Encoder,
) -> None:
    # The route change was stored, then storing the reconciled policy raised before
    # the change was served: the store had lost the route, the router still routed to
    # it (and a second delete said it did not exist).
    store = _PolicyWriteFails()
    router = AdaptiveRouter(encoder, store)
    router.add_routes([BILLING, SUPPORT])
    router.set_policy(DecisionPolicy(threshold=0.5, thresholds={"billing": 0.3, "support": 0.3}))
    store.failing = True
    with pytest.raises(StorageError):
        router.delete_route("billing")
    assert [s.route.name for s in store.load()] == router.route_names == ["support"]
    assert router.query("I need a refund").name != "billing"
    assert router.policy.thresholds == {"billing": 0.3, "support": 0.3}  # as stored
    store.failing = False
    router.add_route(BILLING)
    assert router.query("I need a refund").name == "billing"
    assert AdaptiveRouter(encoder, store).policy == router.policy


def test_a_policy_write_that_fails_after_the_route_change_says_the_change_was_stored() -> None:
    # A route change and the policy change it causes are two writes: when the second
    # failed, the error said "nothing was changed" although the route change was stored
    # and served (and the service answered so).
    store = _PolicyWriteFails()
    router = AdaptiveRouter(HashingEncoder(), store)
    router.add_routes([BILLING, SUPPORT])
    router.set_policy(DecisionPolicy(threshold=0.5, thresholds={"billing": 0.3, "support": 0.3}))
    store.failing = True
    with pytest.raises(PolicyNotStoredError, match="route change was stored and is served") as info:
        router.delete_route("billing")
    assert isinstance(info.value, StorageError)
    assert str(info.value).startswith("the route change was stored and is served")
    assert "the policy could not be written" in str(info.value)  # the store's reason
    assert isinstance(info.value.__cause__, StorageError)
    assert router.route_names == [s.route.name for s in store.load()] == ["support"]


def test_a_reload_finding_no_stored_policy_goes_back_to_the_constructors() -> None:
    # A replica's reload (a store restored from a backup taken before any policy was
    # set) kept the policy it had, while a router opened on the store got the default.
    enc = HashingEncoder()
    router = AdaptiveRouter(enc, threshold=0.3, min_margin=0.1)
    router.add_route(BILLING)
    router.set_policy(DecisionPolicy(threshold=0.95, thresholds={"billing": 0.9}))
    routes = (StoredRoute(SUPPORT, enc.encode(SUPPORT.utterances)),)
    router._apply_changes([Change(seq=1, kind="reload", routes=routes, state={})])
    assert router.route_names == ["support"]
    assert router.policy == DecisionPolicy(threshold=0.3, min_margin=0.1)
    # So does a change that deletes the stored policy, and a resync that finds none.
    for change in (
        Change(seq=2, kind="set_state", name="policy", state={"policy": None}),
        Change(seq=3, kind="resync", names=(), state={"policy": None}),
    ):
        router.set_policy(DecisionPolicy(threshold=0.95))
        router._apply_changes([change])
        assert router.policy == DecisionPolicy(threshold=0.3, min_margin=0.1)
    # A change of another state key leaves the policy alone.
    router.set_policy(DecisionPolicy(threshold=0.95))
    router._apply_changes([Change(seq=4, kind="set_state", name="other", state={"other": None})])
    assert router.threshold == 0.95


def test_a_replica_change_with_vectors_that_are_not_finite_leaves_those_routes_as_they_were(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Applied, a NaN made the route's every score NaN, read as no score: the route was
    # never chosen again, and nothing said why (opening such a store refuses it).
    enc = HashingEncoder()
    router = AdaptiveRouter(enc, threshold=0.1)
    router.add_routes([BILLING, SUPPORT])
    before = router.query_top_k("I need a refund", 2)
    damaged = enc.encode(["I need my money back"])
    damaged[0, 3] = np.nan
    new = Route(name="new", utterances=["a new route"])
    for change in (
        Change(seq=1, kind="put_route", name="billing", route=BILLING, vectors=damaged),
        Change(seq=2, kind="add_utterances", name="billing", texts=("money back",),
               vectors=damaged),
        # A reload drops every route it lacks: the damaged one is kept as it was, the
        # rest applies (a route gone, a route new).
        Change(seq=3, kind="reload", state={}, routes=(
            StoredRoute(BILLING.model_copy(update={"utterances": ["I need my money back"]}),
                        damaged),
            StoredRoute(new, enc.encode(new.utterances)),
        )),
    ):  # fmt: skip
        caplog.clear()
        router._apply_changes([change])
        assert "not finite numbers" in caplog.text and "'billing'" in caplog.text
        assert router.get_route("billing") == BILLING
        best = router.query_top_k("I need a refund", 1)[0]
        assert (best.name, best.score) == (before[0].name, before[0].score)
    assert router.route_names == ["billing", "new"]
    # A resync applies all but the damaged route.
    router._apply_changes([Change(seq=4, kind="resync", names=("billing", "new"), routes=(
        StoredRoute(BILLING, damaged[[0, 0]]),
        StoredRoute(SUPPORT, enc.encode(SUPPORT.utterances)),
    ))])  # fmt: skip
    assert router.route_names == ["billing", "support"]
    best = router.query_top_k("I need a refund", 1)[0]
    assert (best.name, best.score) == (before[0].name, before[0].score)
