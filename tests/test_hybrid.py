"""Issue 13: hybrid lexical + dense routing, out-of-scope scorers, negative examples,
the default objective with out-of-scope labels, and the new evaluation figures.

Real model, real SQLite files, the CLINC150 fixture slices, a real ASGI app and the
real CLI. The lexical module's own arithmetic is checked against a direct
computation; everything else goes through the public API.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from clinc import Rows, split
from pydantic import SecretStr

from synaptoroute import (
    AdaptiveRouter,
    Encoder,
    HashingEncoder,
    InvalidInputError,
    Route,
    SQLiteStorage,
)
from synaptoroute import lexical as lexical_module
from synaptoroute.cli import main
from synaptoroute.decision import OOD_SCORERS, Calibrator, LinearHead, knn_similarity
from synaptoroute.evaluation import auroc, expected_calibration_error, oos_curve
from synaptoroute.fitting import routes_from_labelled
from synaptoroute.fitting.head import _mahalanobis_fit
from synaptoroute.index import Snapshot
from synaptoroute.lexical import (
    MAX_CHARS,
    N_FEATURES,
    LexicalIndex,
    NgramFeatures,
    text_features,
)
from synaptoroute.models import NEGATIVES_ROUTE
from synaptoroute.server import ServerSettings, create_app

KEY = "negatives-test-key"

# Routes told apart only by a product code: each route's utterances use their own
# sentence templates, and the queries put each code into the other routes'
# templates, so the nearest utterance by meaning is (almost always) the wrong route.
TEMPLATES = [
    "my {} is broken",
    "help me with the {}",
    "the {} won't turn on",
    "I want to return my {}",
    "how do I set up the {}",
    "{} keeps crashing",
    "where can I buy a {}",
    "is the {} waterproof",
    "reset the {} to factory settings",
    "update the {} software",
    "the {} battery is dead",
    "how much does the {} cost",
]
CODES = ["kx-1470-zq88-mm31", "kx-2583-pw41-tt72", "kx-3691-rb19-ha55", "kx-4702-lc63-dv04"]


@pytest.fixture
def store(clinc_store: Path, tmp_path: Path) -> Path:
    path = tmp_path / "routes.db"
    shutil.copy(clinc_store, path)
    return path


@pytest.fixture
def opened() -> Iterator[list[AdaptiveRouter]]:
    routers: list[AdaptiveRouter] = []
    yield routers
    for router in routers:
        router.close()


def open_at(path: Path, encoder: Encoder, opened: list[AdaptiveRouter]) -> AdaptiveRouter:
    router = AdaptiveRouter(encoder, SQLiteStorage(path))
    opened.append(router)
    return router


def code_routes() -> tuple[list[Route], list[str], list[str]]:
    routes = [
        Route(name=f"r{i}", utterances=[TEMPLATES[3 * i + j].format(code) for j in range(3)])
        for i, code in enumerate(CODES)
    ]
    texts, labels = [], []
    for i, code in enumerate(CODES):
        for k, template in enumerate(TEMPLATES):
            if k // 3 != i:
                texts.append(template.format(code))
                labels.append(f"r{i}")
    return routes, texts, labels


# -- hybrid routing -------------------------------------------------------------------
def test_hybrid_beats_dense_only_when_only_the_words_separate_routes(encoder: Encoder) -> None:
    routes, texts, labels = code_routes()
    figures = {}
    for hybrid in (False, True):
        router = AdaptiveRouter(encoder)
        router.add_routes(routes)
        dense_nearest = router.evaluate(texts, labels).in_scope_accuracy
        utterances = [u for r in routes for u in r.utterances]
        owners = [r.name for r in routes for _ in r.utterances]
        report = router.fit(utterances, owners, head=True, hybrid=hybrid)
        assert report.head is not None
        assert (report.head["beta"] > 0) is hybrid
        assert report.head["features"] == ("dense+ngrams+lexical" if hybrid else "dense")
        figures[hybrid] = router.evaluate(texts, labels).in_scope_accuracy
        # The same decisions through the batch, single and async-worker paths.
        singles = [router.query(t).name for t in texts[:6]]
        assert singles == [m.name for m in router.query_batch(texts[:6])]
    assert dense_nearest is not None and dense_nearest < 0.5  # the templates mislead
    assert figures[True] is not None and figures[False] is not None
    assert figures[True] > figures[False]
    assert figures[True] == 1.0


def test_the_heads_ngram_features_alone_separate_the_routes(encoder: Encoder) -> None:
    """The n-gram features are the head's own inputs: with the lexical score's weight
    set to 0 they still tell the routes apart, which the dense-only head cannot."""
    routes, texts, labels = code_routes()
    utterances = [u for r in routes for u in r.utterances]
    owners = [r.name for r in routes for _ in r.utterances]
    figures = {}
    for hybrid in (False, True):
        router = AdaptiveRouter(encoder)
        router.add_routes(routes)
        router.fit(utterances, owners, head=True, hybrid=hybrid)
        head = router.policy.head
        assert head is not None and (head.ngrams is not None) is hybrid
        router.set_policy(replace(router.policy, head=replace(head, beta=0.0)))
        figures[hybrid] = router.evaluate(texts, labels).in_scope_accuracy
    assert figures[True] is not None and figures[False] is not None
    assert figures[True] == 1.0 and figures[True] > figures[False]


def test_ngram_rows_match_a_direct_computation() -> None:
    texts = ["reset my password", "password reset please", "reset the router", "hello"]
    grams = NgramFeatures.learn(texts, scale=0.5, min_df=2)
    found = [text_features(t) for t in texts]
    df: Counter[int] = Counter(int(f) for ids, _ in found for f in ids)
    assert grams.ids.tolist() == sorted(f for f, c in df.items() if c >= 2)
    assert grams.tokeniser == 2
    query = "please reset my modem"
    ids, weights = text_features(query)
    expected = {
        int(f): float(w) * (math.log((1 + 4) / (1 + df[int(f)])) + 1)
        for f, w in zip(ids, weights, strict=True)
        if df.get(int(f), 0) >= 2
    }
    norm = math.sqrt(sum(v * v for v in expected.values()))
    pos, values = grams.row(query)
    got = {int(grams.ids[p]): float(v) for p, v in zip(pos, values, strict=True)}
    assert got.keys() == expected.keys() and got
    for feature, value in expected.items():
        assert got[feature] == pytest.approx(0.5 * value / norm, rel=1e-5)
    # A text with no known feature has an empty row and adds nothing to the logits.
    assert len(grams.row("zzzz qqqq")[0]) == 0
    weights_table = np.arange(len(grams) * 3, dtype=np.float32).reshape(len(grams), 3)
    products = grams.products([query, "zzzz qqqq"], weights_table)
    np.testing.assert_allclose(products[0], values @ weights_table[pos], rtol=1e-6)
    assert not products[1].any()
    indptr, indices, flat = grams.rows([query, "zzzz qqqq"])
    assert indptr.tolist() == [0, len(pos), len(pos)]
    assert indices.tolist() == pos.tolist() and np.array_equal(flat, values)


def _small_head(
    rng: np.random.Generator, grams: NgramFeatures, weights: Any, *, has_oos: bool
) -> LinearHead:
    """A head over two classes (and out of scope) with n-gram ``weights`` for ``grams``."""
    outputs = weights.shape[1]
    return LinearHead(
        classes=("a", "b"),
        weights=rng.standard_normal((4, outputs)).astype(np.float32),
        bias=np.zeros(outputs, dtype=np.float32),
        has_oos=has_oos,
        alpha=5.0,
        top_k=2,
        cut=0.5,
        calibrator=Calibrator("platt", (1.0, 0.0)),
        model_id="m",
        ngrams=grams,
        ngram_weights=weights,
    )


def test_head_state_round_trips_its_ngrams_and_reads_older_states() -> None:
    rng = np.random.default_rng(0)
    grams = NgramFeatures.learn(["reset my password", "reset the router"], scale=0.5, min_df=1)
    weights = rng.standard_normal((len(grams), 3)).astype(np.float16).astype(np.float32)
    head = _small_head(rng, grams, weights, has_oos=True)
    state = json.loads(json.dumps(head.to_state()))
    back = LinearHead.from_state(state)
    assert back.ngrams is not None and back.ngram_weights is not None
    assert np.array_equal(back.ngrams.ids, grams.ids) and back.ngrams.ids.dtype == np.int64
    assert np.array_equal(back.ngrams.idf, grams.idf) and back.ngrams.scale == 0.5
    assert np.array_equal(back.ngram_weights, weights)
    vectors = rng.standard_normal((1, 4)).astype(np.float32)
    query = ["reset my router"]
    assert np.array_equal(back.logits(vectors, query), head.logits(vectors, query))
    assert not np.array_equal(head.logits(vectors, query), head.logits(vectors))
    # A 0.2 state has no n-grams; a state whose array lost its data is refused.
    del state["ngrams"]
    assert LinearHead.from_state(state).ngrams is None
    state["weights"] = {"shape": [4, 3]}
    with pytest.raises(KeyError, match="stored array"):
        LinearHead.from_state(state)


def test_text_features_match_a_direct_tokenisation(monkeypatch: pytest.MonkeyPatch) -> None:
    def direct(text: str) -> dict[int, float]:
        # Words of NFC, case-folded text: letters, digits and their combining marks.
        folded = unicodedata.normalize("NFC", text).casefold()
        word = "".join(c for c in folded if c.isalnum() or c == "_" or _is_mark(c))
        words = re.findall(rf"[\w{re.escape(word)}]+", folded) if word else []
        grams = [f"w {w}" for w in words] + [f"b {a} {b}" for a, b in pairwise(words)]
        for w in words:
            marked = f"<{w}>"
            grams += [marked[i : i + n] for n in (3, 4) for i in range(len(marked) - n + 1)]
        counts = Counter(zlib.crc32(g.encode()) & (N_FEATURES - 1) for g in grams)
        return {k: 1.0 + math.log(c) for k, c in counts.items()}

    texts = [
        "Reset my password",
        "reset reset RESET my my password",  # repeated words and n-grams
        "Straße ünïcödé 東京 x_y 42",
        unicodedata.normalize("NFD", "crème brûlée"),  # decomposed: marks within words
        "नमस्ते दुनिया दिन दान",  # vowel signs and a virama are marks, within words
        "a b",
        "",
        "   ",
        "the the the the the",
    ]
    # A word cache of three words: cleared when full, same features either way.
    monkeypatch.setattr(lexical_module, "_WORD_CACHE_SIZE", 3)
    monkeypatch.setattr(lexical_module, "_word_cache", {})
    for _ in range(2):
        for text in texts:
            ids, weights = lexical_module._features.__wrapped__(text)
            assert len(lexical_module._word_cache) <= 3
            assert ids.dtype == np.int64 and weights.dtype == np.float32
            assert np.all(np.diff(ids) > 0)
            want = direct(text)
            assert ids.tolist() == sorted(want)
            np.testing.assert_allclose(weights, [want[i] for i in ids.tolist()], rtol=1e-6)


def test_the_word_cache_is_bounded_by_ids_not_only_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A text without spaces is one word of up to MAX_CHARS characters (about 8,000
    # ids): 20,000 such words held about 6.5 GB within the word count.
    monkeypatch.setattr(lexical_module, "_word_cache", {})
    monkeypatch.setattr(lexical_module, "_word_cache_ids", 0)
    rng = np.random.default_rng(7)
    for _ in range(120):
        text = "".join(chr(c) for c in rng.integers(0x4E00, 0x9FFF, lexical_module.MAX_CHARS))
        ids, _ = lexical_module._features.__wrapped__(text)
        held = sum(len(v) for v in lexical_module._word_cache.values())
        assert held == lexical_module._word_cache_ids <= lexical_module._WORD_CACHE_IDS
    # The features do not depend on what the cache held.
    monkeypatch.setattr(lexical_module, "_word_cache", {})
    monkeypatch.setattr(lexical_module, "_word_cache_ids", 0)
    again, _ = lexical_module._features.__wrapped__(text)
    assert again.tolist() == ids.tolist()


def _is_mark(char: str) -> bool:
    return unicodedata.category(char).startswith("M")


def test_canonically_equal_texts_have_the_same_lexical_features() -> None:
    # The encoder embeds NFC and NFD alike, but the features differed: "\w+" split a
    # decomposed "crème" into "cre" and "me", and cut Devanagari words at each vowel
    # sign, so "दिन" (day) and "दान" (gift) were both the letters "द" and "न".
    for text in ["café crème brûlée", "नमस्ते दुनिया", "Ελληνικά ΚΑΙ ελληνικά", "Straße"]:
        nfc, nfd = (unicodedata.normalize(form, text) for form in ("NFC", "NFD"))
        assert np.array_equal(text_features(nfc)[0], text_features(nfd)[0])
    crème = unicodedata.normalize("NFD", "crème")
    assert lexical_module._WORD.findall(crème) == [crème]  # one word, not "cre", "me"
    # Marks alone are no word: "❤️" and "⚠️" (each emoji, no word character, then the
    # variation selector U+FE0F) shared the selector's features, and a hybrid head sent
    # "⚠️" to a route of "I ❤️ this app".
    assert not len(text_features("\u26a0\ufe0f")[0])
    # The zero-width joiner continues a word: Bengali "র‍্যাব" (ra, ZWJ, hasant, ya) was
    # the letter "র" and the word "যাব" ("will go").
    assert lexical_module._WORD.findall("\u09b0\u200d\u09cd\u09af\u09be\u09ac") == [
        "\u09b0\u200d\u09cd\u09af\u09be\u09ac"
    ]
    assert np.array_equal(text_features("i \u2764\ufe0f pizza")[0], text_features("i pizza")[0])
    assert not np.intersect1d(text_features("दिन")[0], text_features("दान")[0]).size
    assert np.array_equal(text_features("STRASSE")[0], text_features("straße")[0])
    # Past the read prefix too: a decomposed Hangul text is three times as long.
    long = "한국어 " * 2_000
    nfc, nfd = (unicodedata.normalize(form, long) for form in ("NFC", "NFD"))
    assert len(nfd) > 2 * len(nfc) > 2 * lexical_module.MAX_CHARS
    for got, want in zip(text_features(nfd), text_features(nfc), strict=True):
        assert np.array_equal(got, want)
    # The lexical scores too, route by route.
    router = AdaptiveRouter(HashingEncoder())
    router.add_routes([Route(name="food", utterances=["un café crème", "crème brûlée"]),
                       Route(name="days", utterances=["आज का दिन", "अच्छा दिन"]),
                       Route(name="gifts", utterances=["दान करना", "बड़ा दान"])])  # fmt: skip
    view = LexicalIndex().view(router._index.snapshot())
    for query in ["crème brûlée au café", "दिन", "दान"]:
        nfd = unicodedata.normalize("NFD", query)
        np.testing.assert_array_equal(view.scores(query), view.scores(nfd))
    names = router._index.snapshot().layout.names
    assert names[int(view.scores("दिन").argmax())] == "days"
    assert names[int(view.scores("दान").argmax())] == "gifts"


def test_a_head_fitted_before_the_tokeniser_changed_reads_queries_as_it_was_fitted() -> None:
    # A stored head's vocabulary holds the ids of the tokeniser that learned it; read
    # with the new one, a Devanagari query matched none of them. A vocabulary of a
    # head stored before (no tokeniser recorded) reads queries as version 1 did.
    texts = ["दिन अच्छा है", "आज का दिन", "दिन भर काम", "café crème", "crème brûlée"]
    legacy_found = [lexical_module.legacy_text_features(t) for t in texts]
    old = NgramFeatures.learn(texts, scale=0.5, min_df=2, found=legacy_found)
    old = replace(old, tokeniser=1)
    new = NgramFeatures.learn(texts, scale=0.5, min_df=2)
    assert old.legacy and not new.legacy and lexical_module.TOKENISER == 2
    query = "दिन"
    pos = old.row(query)[0]
    legacy_ids, _ = lexical_module.legacy_text_features(query)
    assert len(pos) and set(old.ids[pos].tolist()) <= set(legacy_ids.tolist())
    # Its features as a caller passes them (the new tokeniser's) are not what it reads.
    assert not np.array_equal(np.sort(text_features(query)[0]), np.sort(legacy_ids))
    assert np.array_equal(old.row(query, text_features(query))[0], pos)
    pos = new.row(query)[0]
    assert len(pos) and set(new.ids[pos].tolist()) <= set(text_features(query)[0].tolist())
    # A head with the old vocabulary survives its state round trip as such.
    rng = np.random.default_rng(0)
    head = _small_head(rng, old, np.ones((len(old), 2), dtype=np.float32), has_oos=False)
    stored = json.loads(json.dumps(head.to_state()))
    del stored["ngrams"]["tokeniser"]  # as 0.2 stored it
    back = LinearHead.from_state(stored)
    assert back.ngrams is not None and back.ngrams.legacy
    vectors = rng.standard_normal((1, 4)).astype(np.float32)
    assert np.array_equal(back.logits(vectors, [query]), head.logits(vectors, [query]))
    again = LinearHead.from_state(
        json.loads(
            json.dumps(
                replace(
                    head, ngrams=new, ngram_weights=np.ones((len(new), 2), dtype=np.float32)
                ).to_state()
            )
        )
    )
    assert again.ngrams is not None and not again.ngrams.legacy


def test_text_features_read_a_bounded_prefix_and_share_read_only_results() -> None:
    huge = "reset the kx-1470 router " * 50_000  # 1.25 MB, like a hostile query
    ids, weights = text_features(huge)
    prefix_ids, prefix_weights = text_features(huge[:MAX_CHARS])
    assert np.array_equal(ids, prefix_ids) and np.array_equal(weights, prefix_weights)
    assert not ids.flags.writeable and not weights.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        weights *= 2


def test_text_features_read_the_words_after_a_long_whitespace_run() -> None:
    # The encoder reads the words after a run of whitespace (its tokenizer keeps
    # nothing of the run); the lexical features were cut first: none at all.
    words = text_features("reset my router please")
    for text in [
        " " * (2 * MAX_CHARS) + "reset my router please",
        "reset my" + "\n\t " * MAX_CHARS + "router   please",
        "\u3000" * (5 * MAX_CHARS) + "reset my router please  ",
    ]:
        got = text_features(text)
        assert np.array_equal(got[0], words[0]) and np.array_equal(got[1], words[1])
    # Past the cut the words are still cut: the whitespace counts one character a run.
    many = " ".join(f"w{i}" for i in range(3 * MAX_CHARS))
    spaced = many.replace(" ", " " * 7)
    assert np.array_equal(text_features(spaced)[0], text_features(many)[0])
    assert np.array_equal(text_features(many)[0], text_features(many[:MAX_CHARS])[0])


def test_a_hybrid_fit_on_a_handful_of_rows_reads_no_ngrams_and_says_so(
    encoder: Encoder,
) -> None:
    # One utterance per route: no n-gram occurs in 3 rows, and the Mahalanobis
    # scorer's covariance has no variance at all; the fit still trains a head.
    router = AdaptiveRouter(encoder)
    router.add_routes(
        [Route(name="a", utterances=["cats purr"]), Route(name="b", utterances=["dogs bark"])]
    )
    report = router.fit(["kittens meow", "puppies woof"], ["a", "b"], head=True, hybrid=True)
    head = router.policy.head
    assert head is not None and head.ngrams is None and head.beta > 0
    assert any("n-gram" in note for note in report.notes)
    assert router.query("kittens meow").candidate == "a"


def test_switching_hybrid_off_routes_dense_only(encoder: Encoder) -> None:
    routes, texts, labels = code_routes()
    router = AdaptiveRouter(encoder)
    router.add_routes(routes)
    utterances = [u for r in routes for u in r.utterances]
    router.fit(utterances, [r.name for r in routes for _ in r.utterances], head=True, hybrid=True)
    head = router.policy.head
    assert head is not None and head.beta > 0
    hybrid = router.evaluate(texts, labels).in_scope_accuracy
    router.hybrid = False
    dense = router.evaluate(texts, labels).in_scope_accuracy
    assert hybrid is not None and dense is not None
    assert hybrid == 1.0 and dense < hybrid


def test_a_fit_judges_the_current_head_as_a_router_with_hybrid_off_decides(
    encoder: Encoder,
) -> None:
    # With hybrid off, queries judge the head on dense terms; the fit's "before" read
    # the n-grams and the lexical score anyway, and reported the hybrid figures.
    routes, texts, labels = code_routes()
    router = AdaptiveRouter(encoder)
    router.add_routes(routes)
    utterances = [u for r in routes for u in r.utterances]
    router.fit(utterances, [r.name for r in routes for _ in r.utterances], head=True, hybrid=True)
    router.hybrid = False
    served = router.evaluate(texts, labels)
    report = router.fit(texts, labels, head=True)
    assert report.before.accuracy == served.accuracy < 1.0
    assert report.before.in_scope_accuracy == served.in_scope_accuracy


def test_a_router_with_hybrid_off_fits_a_dense_head(
    encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # hybrid="auto" could choose the n-gram features and the lexical score on held-out
    # folds though this router's queries leave both out (the head decided without them).
    import synaptoroute.fitting.fit as fitting

    asked: list[object] = []
    real = fitting.fit_policy

    def spy(*args: Any, **options: Any) -> Any:
        asked.append(options.get("hybrid", "auto"))
        return real(*args, **options)

    monkeypatch.setattr(fitting, "fit_policy", spy)
    routes, texts, labels = code_routes()
    router = AdaptiveRouter(encoder)
    router.add_routes(routes)
    router.fit(texts, labels, head=True)
    router.hybrid = False
    report = router.fit(texts, labels, head=True)
    assert report.head is not None and report.head["features"] == "dense"
    router.fit(texts, labels, head=True, hybrid="auto")
    with pytest.warns(UserWarning, match="router.hybrid is False"):
        asked_for = router.fit(texts, labels, head=True, hybrid=True)  # kept, and said
    assert asked == ["auto", False, False, True]
    assert asked_for.head is not None and asked_for.head["features"] != "dense"
    assert any("set router.hybrid = True" in note for note in asked_for.notes)


def test_lexical_scores_match_a_direct_tfidf_computation(encoder: Encoder) -> None:
    routes = [
        Route(name="a", utterances=["reset my password", "password reset please"]),
        Route(name="b", utterances=["update the firmware", "new firmware version"]),
    ]
    router = AdaptiveRouter(encoder)
    router.add_routes(routes)
    snapshot = router._index.snapshot()
    view = LexicalIndex().view(snapshot)
    texts = [u for r in routes for u in r.utterances]
    feats = [text_features(t) for t in texts]
    df: Counter[int] = Counter(int(f) for ids, _ in feats for f in ids)
    n = len(texts)

    def tfidf(text: str) -> dict[int, float]:
        ids, w = text_features(text)
        vec = {
            int(f): float(x) * (math.log((1 + n) / (1 + df.get(int(f), 0))) + 1)
            for f, x in zip(ids, w, strict=True)
        }
        norm = math.sqrt(sum(v * v for v in vec.values()))
        return {k: v / norm for k, v in vec.items()}

    sums = []
    for route in routes:
        total: dict[int, float] = {}
        for u in route.utterances:
            for k, v in tfidf(u).items():
                total[k] = total.get(k, 0.0) + v
        sums.append(total)
    query = "please reset the firmware password"
    q = tfidf(query)
    expected = [
        sum(q.get(k, 0.0) * v for k, v in s.items()) / math.sqrt(sum(v * v for v in s.values()))
        for s in sums
    ]
    np.testing.assert_allclose(view.scores(query), expected, rtol=1e-5)
    # A query's ranked routes only (the decision's path), in any order.
    for positions in ([1, 0], [1], []):
        got = view.route_scores(query, np.array(positions, dtype=np.int64))
        np.testing.assert_allclose(got, np.array(expected)[positions], rtol=1e-5)
    assert view.route_scores("", np.array([0, 1])).tolist() == [0.0, 0.0]
    assert view.route_scores("zebra giraffe", np.array([0, 1])).tolist() == [0.0, 0.0]
    # Leave-one-out: an utterance scored as if it were not in its route.
    own = texts[0]
    rest = tfidf(routes[0].utterances[1])
    loo_expected = sum(tfidf(own).get(k, 0.0) * v for k, v in rest.items())
    loo = view.leave_one_out(view.scores_many([own]), np.array([0]))
    assert loo[0, 0] == pytest.approx(loo_expected, rel=1e-4)


def test_an_utterance_without_ngrams_is_left_out_as_nothing() -> None:
    # An emoji has no n-gram feature: its vector is zero, and its route's vector is the
    # same without it, so its left-out score is 0. It was (0 - 1) / |S| (a unit vector
    # assumed): the fit trained beta on negative scores no query can have.
    router = AdaptiveRouter(HashingEncoder(dimension=64))
    router.add_routes([Route(name="yes", utterances=["👍", "sure thing", "sure please"])])
    view = LexicalIndex().view(router._index.snapshot())
    assert len(text_features("👍")[0]) == 0
    raw = view.scores_many(["👍", "sure thing"])
    loo = view.leave_one_out(raw, np.array([0, 0]))
    assert loo[0, 0] == 0.0
    assert 0.0 < loo[1, 0] < raw[1, 0]  # a text with n-grams is still left out


def test_fit_leaves_a_text_out_of_every_route_that_holds_it() -> None:
    # Duplicate texts with conflicting labels make one utterance of two routes: its
    # lexical score was left out of the first route only (the dense one, of both).
    from synaptoroute import HashingEncoder
    from synaptoroute.fitting.fit import lexical_left_out

    text = "reset my router password"
    router = AdaptiveRouter(HashingEncoder())
    router.add_routes([Route(name="a", utterances=[text, "wifi is down again"]),
                       Route(name="b", utterances=["cancel my plan", text])])  # fmt: skip
    snapshot = router._index.snapshot()
    view = LexicalIndex().view(snapshot)
    texts = [text, "wifi router"]  # the second is no utterance: left as it is
    raw = view.scores_many(texts)
    got = lexical_left_out(view, raw, snapshot.layout, texts)
    for name in ("a", "b"):
        p = snapshot.layout.names.index(name)
        alone = view.leave_one_out(raw, np.array([p, -1], dtype=np.int64))[0, p]
        # (Route a's rest shares no n-gram with the text: both are 0 up to rounding.)
        assert got[0, p] == pytest.approx(alone, abs=1e-6) and alone < raw[0, p]
    np.testing.assert_array_equal(got[1], raw[1])


def test_several_rows_left_out_of_one_route_are_left_out_together() -> None:
    # A labelled text and a stored variant the encoder cannot tell from it (another
    # case) in one route: both rows out of the route's vector at once, the score that
    # of the rest of the route (removing them one at a time assumed the full route).
    from synaptoroute import HashingEncoder
    from synaptoroute.fitting.fit import lexical_left_out

    router = AdaptiveRouter(HashingEncoder())
    utterances = ["reset my router password", "Reset My Router Password", "wifi router down"]
    router.add_routes([Route(name="a", utterances=utterances),
                       Route(name="b", utterances=["cancel my plan", "router for sale"])])  # fmt: skip
    snapshot = router._index.snapshot()
    view = LexicalIndex().view(snapshot)
    layout = snapshot.layout
    texts = [utterances[0]]
    variant = layout.text_rows[utterances[1]][0]
    raw = view.scores_many(texts)
    got = lexical_left_out(
        view, raw, layout, texts, (np.array([0]), np.array([variant])), snapshot.texts
    )
    ids, values = view.query_vector(texts[0])
    rest_ids, rest_values = view.query_vector(utterances[2])
    q = dict(zip(ids.tolist(), values.tolist(), strict=True))
    rest = dict(zip(rest_ids.tolist(), rest_values.tolist(), strict=True))
    want = sum(q.get(k, 0.0) * v for k, v in rest.items())  # |rest| is 1: one row
    a, b = layout.names.index("a"), layout.names.index("b")
    assert got[0, a] == pytest.approx(want, rel=1e-5) and want < raw[0, a]
    assert got[0, b] == raw[0, b]


def test_lexical_view_follows_route_changes_without_reencoding(encoder: Encoder) -> None:
    router = AdaptiveRouter(encoder)
    router.add_routes([Route(name="a", utterances=["zebra crossing"])])
    lexical = LexicalIndex()
    first = lexical.view(router._index.snapshot())
    assert first.n_routes == 1 and first.scores("giraffe neck")[0] == 0.0
    router.add_routes([Route(name="b", utterances=["giraffe neck"])])
    second = lexical.view(router._index.snapshot())
    assert second.version != first.version and second.n_routes == 2
    assert second.scores("giraffe neck")[1] == pytest.approx(1.0, rel=1e-5)
    router.delete_route("a")
    third = lexical.view(router._index.snapshot())
    assert third.n_routes == 1 and third.scores("giraffe neck")[0] == pytest.approx(1.0, rel=1e-5)


def test_lexical_features_come_from_the_utterances_cache(
    encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = AdaptiveRouter(encoder)
    router.add_routes([Route(name="a", utterances=["zebra crossing", "zebra stripes"])])
    lexical = LexicalIndex()
    lexical.view(router._index.snapshot())
    texts = ["zebra crossing", "a new text", "zebra stripes"]
    want = [text_features(t) for t in texts]
    # The utterances come from the cache (no tokenising); other texts are tokenised.
    tokenised: list[str] = []
    real = text_features

    def counted(text: str) -> tuple[np.ndarray, np.ndarray]:
        tokenised.append(text)
        return real(text)

    monkeypatch.setattr("synaptoroute.lexical.text_features", counted)
    got = lexical.features(texts)
    assert tokenised == ["a new text"]
    for (ids, weights), (want_ids, want_weights) in zip(got, want, strict=True):
        assert np.array_equal(ids, want_ids) and np.array_equal(weights, want_weights)
    view = lexical.view(router._index.snapshot())
    np.testing.assert_array_equal(view.scores_many(texts, got), view.scores_many(texts))


def test_a_hybrid_head_survives_reopen(
    store: Path, encoder: Encoder, opened: list[AdaptiveRouter], clinc_train: Rows, clinc_val: Rows
) -> None:
    router = open_at(store, encoder, opened)
    report = router.fit(*split(clinc_train), head=True, hybrid=True)
    assert report.head is not None and report.head["beta"] > 0
    texts = split(clinc_val)[0]
    before = [(m.name, m.confidence) for m in router.query_batch(texts)]
    router.close()
    again = open_at(store, encoder, opened)
    head = again.policy.head
    assert head is not None and head.beta == report.head["beta"]
    assert head.scorer == report.head["scorer"]
    # The n-gram vocabulary, its IDF and weights come back bit for bit.
    fitted = router.policy.head
    assert fitted is not None and fitted.ngrams is not None and head.ngrams is not None
    assert np.array_equal(head.ngrams.ids, fitted.ngrams.ids)
    assert np.array_equal(head.ngrams.idf, fitted.ngrams.idf)
    assert head.ngrams.scale == fitted.ngrams.scale
    assert np.array_equal(head.ngram_weights, fitted.ngram_weights)  # type: ignore[arg-type]
    after = [(m.name, m.confidence) for m in again.query_batch(texts)]
    assert after == before


# -- out-of-scope scoring and the objective ------------------------------------------
def test_fit_compares_every_scorer_on_held_out_folds(
    store: Path, encoder: Encoder, opened: list[AdaptiveRouter], clinc_train: Rows
) -> None:
    router = open_at(store, encoder, opened)
    report = router.fit(*split(clinc_train), head=True)
    head = report.candidates["head"]
    assert set(head["scorers"]) == set(OOD_SCORERS)
    scorers = head["scorers"]
    best = max(scorers, key=lambda s: scorers[s]["objective"])
    chosen = scorers[head["scorer"]]
    # The best held-out objective, or a scorer statistically tied with it that
    # separates out-of-scope rows better (fitting.head._pick_scorer).
    assert head["scorer"] == best or (
        chosen["oos_auroc"] >= scorers[best]["oos_auroc"]
        and chosen["objective"] <= scorers[best]["objective"]
    )
    assert router.policy.info["scorer"] == head["scorer"]
    for values in head["scorers"].values():
        assert 0.5 < values["oos_auroc"] <= 1.0


@pytest.mark.parametrize("scorer", ["energy", "nearest", "mahalanobis", "knn", "combined"])
def test_each_scorer_decides_as_fitting_predicted(
    store: Path,
    encoder: Encoder,
    opened: list[AdaptiveRouter],
    clinc_train: Rows,
    clinc_val: Rows,
    scorer: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router = open_at(store, encoder, opened)
    router.fit(*split(clinc_train), head=True)
    head = router.policy.head
    assert head is not None
    # Swap in another scorer: the query path must compute that scorer's value
    # exactly as the vectorised judge does.
    texts = split(clinc_val)[0]
    vectors = router._embed(texts)
    ood = dict(head.ood)
    if scorer in ("mahalanobis", "combined"):
        rows = [u for r in router.list_routes() for u in r.utterances]
        ys = np.array([i for i, r in enumerate(router.list_routes()) for _ in r.utterances])
        ood.update(_mahalanobis_fit(router._embed(rows), ys, len(router.route_names)))
    if scorer == "combined":
        ood["combination"] = np.array([1, 0.5, 0.5, 0.01, 0.5, 0], dtype=np.float32)
        ood["center"] = np.zeros(5, dtype=np.float32)
        ood["scale"] = np.ones(5, dtype=np.float32)
    swapped: LinearHead = replace(
        head, scorer=scorer, ood=ood, calibrator=Calibrator("platt", (1.0, 0.0)), cut=0.5
    )
    router.set_policy(replace(router.policy, head=swapped))
    scans: list[int] = []
    real_scan = Snapshot.knn_similarity

    def counted(self: Snapshot, *args: Any, **kwargs: Any) -> Any:
        scans.append(1)
        return real_scan(self, *args, **kwargs)

    monkeypatch.setattr(Snapshot, "knn_similarity", counted)
    matches = router.query_batch(texts)
    # The k-th neighbour comes from the scan that ranked the routes: no second scan.
    assert not scans
    monkeypatch.undo()
    assert {m.reason for m in matches} <= {"matched", "rejected_by_head"}
    snapshot = router._index.snapshot()
    view = router._lexical.view(snapshot)
    for text, vector, match in zip(texts[:30], vectors[:30], matches[:30], strict=True):
        ranked = snapshot.score(vector[None, :], head.top_k)[0]
        names = [snapshot.names[int(r)] for r in ranked.route_ids]
        columns = swapped.columns_of(names)
        assert columns is not None
        lex = view.scores(text)[np.searchsorted(snapshot.live_routes, ranked.route_ids)]
        knn = np.array([knn_similarity(snapshot, vector)])
        verdict = swapped.judge(
            vector[None, :], columns[None, :], ranked.scores[None, :], lex[None, :], knn, [text]
        )
        assert match.confidence == pytest.approx(float(verdict.confidence[0]), rel=1e-6)
        assert (match.name is not None) == bool(verdict.accepted[0])


def test_default_objective_rejects_more_out_of_scope_than_accuracy(
    clinc_store: Path,
    tmp_path: Path,
    encoder: Encoder,
    opened: list[AdaptiveRouter],
    clinc_train: Rows,
    clinc_val: Rows,
) -> None:
    recalls = {}
    for objective in ("auto", "accuracy"):
        path = tmp_path / f"{objective}.db"
        shutil.copy(clinc_store, path)
        router = open_at(path, encoder, opened)
        report = router.fit(*split(clinc_train), objective=objective, head=False)
        assert report.objective == ("balanced" if objective == "auto" else "accuracy")
        recalls[objective] = router.evaluate(*split(clinc_val)).oos_recall
    assert recalls["auto"] is not None and recalls["accuracy"] is not None
    assert recalls["auto"] > recalls["accuracy"]


def test_without_none_labels_the_default_objective_is_accuracy(
    store: Path, encoder: Encoder, opened: list[AdaptiveRouter], clinc_train: Rows
) -> None:
    in_scope = [r for r in clinc_train if r["label"] is not None]
    router = open_at(store, encoder, opened)
    auto = router.fit(*split(in_scope), head=False)
    policy = router.policy
    other = open_at(store, encoder, opened)
    explicit = other.fit(*split(in_scope), head=False, objective="accuracy")
    assert auto.objective == explicit.objective == "accuracy"
    assert other.policy.threshold == policy.threshold
    assert dict(other.policy.thresholds) == dict(policy.thresholds)


def test_ten_utterances_per_route_never_fit_worse_than_unfitted(
    encoder: Encoder, clinc_train: Rows
) -> None:
    by_label: dict[str | None, list[str]] = {}
    for row in clinc_train:
        by_label.setdefault(row["label"], []).append(str(row["text"]))
    texts = [t for label, ts in by_label.items() for t in ts[:10]]
    labels = [label for label, ts in by_label.items() for _ in ts[:10]]
    router = AdaptiveRouter(encoder)
    router.add_routes(routes_from_labelled(texts, labels))
    report = router.fit(texts, labels)
    before = report.before
    after = report.after
    share = 0.2
    value_before = (1 - share) * (before.in_scope_accuracy or 0) + share * (before.oos_recall or 0)
    value_after = (1 - share) * (after.in_scope_accuracy or 0) + share * (after.oos_recall or 0)
    assert value_after >= value_before


# -- negative examples ------------------------------------------------------------------
def test_negative_examples_reject_what_they_cover_and_survive_reopen(
    store: Path, encoder: Encoder, opened: list[AdaptiveRouter]
) -> None:
    router = open_at(store, encoder, opened)
    query = "what is the meaning of life"
    negatives = ["what is the meaning of life, the universe and everything"]
    assert router.query(query).reason != "negative_example"
    assert router.add_negatives(negatives) == negatives
    assert router.add_negatives(negatives) == []
    match = router.query(query)
    assert match.name is None and match.reason == "negative_example"
    assert match.nearest_utterance == negatives[0]
    # Queries nearer to a route still route; the reserved route is never listed.
    assert router.query("transfer 20 dollars to my savings account").name == "transfer"
    assert NEGATIVES_ROUTE not in router.route_names
    assert NEGATIVES_ROUTE not in router and len(router) == len(router.route_names)
    with pytest.raises(TypeError, match="not a str"):
        router.add_negatives("spam")  # not four one-letter negatives
    assert all(r.name != NEGATIVES_ROUTE for r in router.list_routes())
    assert all(m.candidate != NEGATIVES_ROUTE for m in router.query_top_k(query, 3))
    router.close()
    again = open_at(store, encoder, opened)
    assert again.negatives == negatives and again.has_negatives
    assert again.query(query).reason == "negative_example"
    assert again.delete_negatives(negatives) == 1
    assert again.negatives == [] and not again.has_negatives
    assert again.query(query).reason != "negative_example"


def test_a_negative_example_that_is_a_routes_utterance_wins_whatever_the_order(
    tmp_path: Path, encoder: Encoder
) -> None:
    # A tie went to whichever was added first, and adding an unrelated negative (which
    # rebuilds the reserved route after the routes) flipped the answer, also on reopen.
    text = "please set a 4 minute timer"
    timer = Route(name="timer", utterances=[text, "start a timer"])
    hotel = Route(name="hotel", utterances=["book a hotel"])
    for n, negatives_first in enumerate((True, False)):
        router = AdaptiveRouter(encoder, SQLiteStorage(tmp_path / f"{n}.db"))
        if negatives_first:
            router.add_negatives([text])
        router.add_routes([timer, hotel])
        if not negatives_first:
            router.add_negatives([text])
        for _ in range(2):
            assert router.query(text).reason == "negative_example"
            assert router.query_batch([text])[0].reason == "negative_example"
            ranked = router.query_top_k(text, 2, respect_negatives=True)
            assert [m.reason for m in ranked] == ["negative_example"]
            router.add_routes([], negatives=["tell me a joke"])
        router.close()
        again = AdaptiveRouter(encoder, SQLiteStorage(tmp_path / f"{n}.db"))
        assert again.query(text).reason == "negative_example"
        again.close()


@pytest.mark.parametrize("index", ["exact", "ann"])
async def test_a_negative_example_wins_a_tie_with_more_routes_than_are_ranked(
    encoder: Encoder, index: str
) -> None:
    # Ties rank by position and a query ranks three routes (five for a top 3): with
    # the text in more routes than that, the negative examples fell out of the
    # ranking and the first route won, though the fit and the docs give it to them.
    text = "hello there"
    if index == "ann":
        pytest.importorskip("usearch")
    for n in (1, 3, 8):
        router = AdaptiveRouter(encoder, index=index)  # type: ignore[arg-type]
        router.add_routes(
            [Route(name=f"r{i}", utterances=[text, f"topic {i} stuff"]) for i in range(n)]
        )
        router.add_negatives([text])
        router.wait_for_index()
        assert router.query(text).reason == "negative_example", n
        batch = router.query_batch([text, "topic 0 stuff"])
        assert [(m.name, m.reason) for m in batch] == [
            (None, "negative_example"),
            ("r0", "matched"),
        ]
        assert (await router.aquery(text)).reason == "negative_example"
        ranked = router.query_top_k(text, 3, respect_negatives=True)
        assert [m.reason for m in ranked] == ["negative_example"]
        # Without respect_negatives the ranking is the routes, tied, in their order.
        assert [m.candidate for m in router.query_top_k(text, 3)] == [
            f"r{i}" for i in range(min(n, 3))
        ]
        assert router.evaluate([text], [None]).oos_recall == 1.0
        await router.stop()
        router.close()


@pytest.mark.parametrize("aggregation", ["max", "mean_topk", "centroid"])
def test_a_tie_without_a_negative_example_in_it_scans_once(
    encoder: Encoder, aggregation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Routes sharing "help" tie on it; an unrelated negative example is in the store.
    # The first fix re-ranked the whole index, doubling k, on every such query (87 ms
    # at 10,000 routes); the negative examples' route alone is scored instead.
    router = AdaptiveRouter(encoder, aggregation=aggregation)  # type: ignore[arg-type]
    router.add_routes([Route(name=f"r{i}", utterances=["help"]) for i in range(8)])
    router.add_negatives(["tell me a joke about cats"])
    scans = 0
    score = Snapshot.score

    def counted(self: Snapshot, *args: Any, **kwargs: Any) -> Any:
        nonlocal scans
        scans += 1
        return score(self, *args, **kwargs)

    monkeypatch.setattr(Snapshot, "score", counted)
    assert router.query("help").name == "r0"
    assert scans == 1
    # The negative examples' route is scored by the aggregation too: "help" alone ties.
    router.delete_negatives(["tell me a joke about cats"])
    router.add_negatives(["help"])
    assert router.query("help").reason == "negative_example"
    assert router.query_top_k("help", 3, respect_negatives=True)[0].reason == "negative_example"
    router.close()


def test_fit_trains_the_head_to_reject_negative_examples(
    store: Path, encoder: Encoder, opened: list[AdaptiveRouter], clinc_train: Rows
) -> None:
    router = open_at(store, encoder, opened)
    in_scope = [r for r in clinc_train if r["label"] is not None]
    oos = [str(r["text"]) for r in clinc_train if r["label"] is None]
    router.add_negatives(oos)
    report = router.fit(*split(in_scope), head=True)
    assert report.head is not None and report.head["has_oos_class"]
    assert NEGATIVES_ROUTE not in (router.policy.head.classes if router.policy.head else ())


async def test_negatives_over_http_with_the_change_guard(
    encoder: Encoder, store: Path, opened: list[AdaptiveRouter]
) -> None:
    router = open_at(store, encoder, opened)
    app = create_app(ServerSettings(api_key=SecretStr(KEY)), router=router)
    transport = httpx.ASGITransport(app=app)
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"texts": ["tell me a joke about cats"]}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        refused = await client.post("/negatives", json=body)
        assert refused.status_code == 401
        added = await client.post("/negatives", json=body, headers=auth)
        assert added.status_code == 200 and added.json() == {"added": body["texts"]}
        listed = await client.get("/negatives", headers=auth)
        assert listed.json() == {"negatives": body["texts"]}
        routed = await client.post("/route", json={"query": "tell me a joke about cats"})
        assert routed.json()["route"] is None
        bad = await client.post("/negatives", json={"texts": []}, headers=auth)
        assert bad.status_code == 422
        # The reserved route that holds them is no route: it cannot be written,
        # read or deleted as one (a PUT replaced every negative, a DELETE wiped them).
        route = {"utterances": ["oops"]}
        put = await client.put(f"/routes/{NEGATIVES_ROUTE}", json=route, headers=auth)
        assert put.status_code == 422 and "reserved" in put.text
        post = await client.post("/routes", json={"name": NEGATIVES_ROUTE, **route}, headers=auth)
        assert post.status_code == 422
        for method in ("GET", "DELETE"):
            gone = await client.request(method, f"/routes/{NEGATIVES_ROUTE}", headers=auth)
            assert gone.status_code == 404, method
        listed = await client.get("/negatives", headers=auth)
        assert listed.json() == {"negatives": body["texts"]}
        deleted = await client.request("DELETE", "/negatives", json=body, headers=auth)
        assert deleted.json() == {"deleted": 1}
    assert router.negatives == []


def test_negatives_from_the_cli(
    store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["synaptoroute"])
    args = ["--store", str(store), "--json"]
    assert main(["negatives", "add", "tell me a joke", "sing a song", *args]) == 0
    assert json.loads(capsys.readouterr().out) == {"added": ["tell me a joke", "sing a song"]}
    assert main(["negatives", "list", *args]) == 0
    assert json.loads(capsys.readouterr().out) == {"negatives": ["tell me a joke", "sing a song"]}
    assert main(["negatives", "delete", "sing a song", *args]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": 1}
    assert main(["negatives", "list", *args]) == 0
    assert json.loads(capsys.readouterr().out) == {"negatives": ["tell me a joke"]}
    # The reserved route is no route to the route commands.
    assert main(["routes", "add", NEGATIVES_ROUTE, "oops", *args]) == 2
    assert "reserved" in capsys.readouterr().err
    assert main(["routes", "delete", NEGATIVES_ROUTE, *args]) == 2  # unknown: nothing deleted
    labelled = store.parent / "labelled.jsonl"
    labelled.write_text(json.dumps({"text": "oops", "label": NEGATIVES_ROUTE}) + "\n")
    assert main(["import", str(labelled), *args]) == 2
    capsys.readouterr()
    assert main(["negatives", "list", *args]) == 0
    assert json.loads(capsys.readouterr().out) == {"negatives": ["tell me a joke"]}
    # The text output keeps one negative a line: a line break inside is escaped.
    assert main(["negatives", "add", "two\nlines", "tab\there", "--store", str(store)]) == 0
    capsys.readouterr()
    assert main(["negatives", "list", "--store", str(store)]) == 0
    assert capsys.readouterr().out.splitlines() == ["tell me a joke", "two\\nlines", "tab\\there"]


# -- evaluation figures -------------------------------------------------------------------
def test_auroc_curve_and_ece_against_direct_computations() -> None:
    score = np.array([0.9, 0.8, 0.8, 0.3, 0.2, 0.7])
    inside = np.array([True, True, False, True, False, False])
    # Pairs (in, out) ranked right, ties half: 3 in x 3 out.
    pairs = [(a, b) for a in score[inside] for b in score[~inside]]
    expected = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert auroc(score, inside) == pytest.approx(expected)
    correct = np.array([True, False, False, True, False, False])
    cuts, in_acc, recall = oos_curve(score, correct, ~inside)
    for cut, acc, rec in zip(cuts, in_acc, recall, strict=True):
        assert acc == pytest.approx(((score >= cut) & correct & inside).sum() / inside.sum())
        assert rec == pytest.approx(((score < cut) & ~inside).sum() / (~inside).sum())
    conf = np.array([0.95, 0.95, 0.15, 0.15])
    right = np.array([True, False, False, False])
    assert expected_calibration_error(conf, right) == pytest.approx((0.45 * 2 + 0.15 * 2) / 4)
    # 0/1 masks and plain lists are the same masks (integers indexed rows: 1.75).
    assert auroc(list(score), inside.astype(int)) == pytest.approx(expected)
    assert np.array_equal(
        np.array(oos_curve(score, correct.astype(int), (~inside).astype(int))),
        np.array([cuts, in_acc, recall]),
    )
    assert expected_calibration_error(list(conf), list(right.astype(int))) == pytest.approx(0.3)
    for bad in ([-0.1, 0.5, 0.5, 0.5], [1.5, 0.5, 0.5, 0.5]):
        with pytest.raises(InvalidInputError, match=r"confidence must be numbers in \[0, 1\]"):
            expected_calibration_error(np.array(bad), right)
    with pytest.raises(InvalidInputError, match=r"confidence must be numbers.*NaN"):
        expected_calibration_error(np.array([np.nan, 0.5, 0.5, 0.5]), right)
    for bins in (0, -1, 1.5, True):  # numpy's errors before ("'minlength' must not be ...")
        with pytest.raises(InvalidInputError, match="bins must be at least 1"):
            expected_calibration_error(conf, right, bins=bins)  # type: ignore[arg-type]
    assert expected_calibration_error(conf, right, bins=1) == pytest.approx(0.3)
    with pytest.raises(InvalidInputError, match="positive must be 6 values"):
        auroc(score, inside[:3])
    with pytest.raises(InvalidInputError, match="score must be numbers"):
        auroc([0.5, None, 0.2], [True, False, True])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="oos must be 6 values"):
        oos_curve(score, correct, ~inside[:5])


def test_evaluate_reports_auroc_ece_curve_and_cut(
    store: Path,
    encoder: Encoder,
    opened: list[AdaptiveRouter],
    clinc_train: Rows,
    clinc_val: Rows,
    tmp_path: Path,
) -> None:
    router = open_at(store, encoder, opened)
    before = router.evaluate(*split(clinc_val))
    assert before.ece is None and before.cut == router.threshold and before.cut_on == "score"
    router.fit(*split(clinc_train), head=True)
    report = router.evaluate(*split(clinc_val))
    head = router.policy.head
    assert head is not None and report.cut == head.cut and report.cut_on == "confidence"
    assert report.oos_auroc is not None and 0.8 < report.oos_auroc <= 1.0
    assert report.ece is not None and 0.0 <= report.ece < 0.2
    cuts, in_acc, recall = report.oos_curve()
    at = int(np.searchsorted(cuts, head.cut))
    # At the router's cut the curve gives the router's own figures.
    assert in_acc[at] == pytest.approx(report.in_scope_accuracy)
    assert recall[at] == pytest.approx(report.oos_recall)
    doc = json.loads(report.to_json())
    assert {"oos_auroc", "ece", "cut", "cut_on"} <= set(doc)
    pytest.importorskip("matplotlib")
    path = report.plot(tmp_path / "report.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rows_turned_away_count_as_out_of_scope_in_the_curves(
    store: Path, encoder: Encoder, opened: list[AdaptiveRouter], clinc_train: Rows, clinc_val: Rows
) -> None:
    # A negative example or an empty query turns a row away before its scope is judged:
    # it carries no confidence, and a negative's score is its similarity to the negative
    # (high). Neither may read as the most in-scope row, nor take the ECE away.
    router = open_at(store, encoder, opened)
    router.fit(*split(clinc_train), head=True)
    texts, labels = split(clinc_val)
    plain = router.evaluate(texts, labels)
    oos = [t for t, label in zip(texts, labels, strict=True) if label is None]
    router.add_negatives(oos[:5])
    with_negatives = router.evaluate(texts, labels)
    assert with_negatives.turned_away.sum() >= 5
    assert with_negatives.ood_on == "confidence" and with_negatives.ece is not None
    assert with_negatives.oos_auroc is not None and plain.oos_auroc is not None
    assert with_negatives.oos_auroc >= plain.oos_auroc
    cuts, in_acc, recall = with_negatives.oos_curve()
    at = int(np.searchsorted(cuts, with_negatives.cut))
    assert in_acc[at] == pytest.approx(with_negatives.in_scope_accuracy)
    assert recall[at] == pytest.approx(with_negatives.oos_recall)
    router.delete_negatives(oos[:5])
    blank = router.evaluate([*texts, "   "], [*labels, None])
    assert blank.ood_on == "confidence" and blank.ece == pytest.approx(plain.ece)
    assert blank.turned_away.tolist() == [False] * len(texts) + [True]
    with pytest.raises(InvalidInputError, match="batch_size"):
        router.evaluate(texts, labels, batch_size=0)


def test_auroc_and_curve_take_rows_scored_minus_infinity() -> None:
    score = np.array([0.9, -np.inf, 0.4, -np.inf, 0.2])
    inside = np.array([True, False, True, True, False])
    # Ties of -inf count half, as other ties do.
    pairs = [(a, b) for a in score[inside] for b in score[~inside]]
    expected = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert auroc(score, inside) == pytest.approx(expected)
    cuts, in_acc, recall = oos_curve(score, inside, ~inside)
    assert np.isfinite(cuts).all()  # no cut routes a row scored -inf
    assert in_acc[0] == pytest.approx(2 / 3) and recall[0] == pytest.approx(0.5)
    cuts, in_acc, recall = oos_curve(np.full(3, -np.inf), inside[:3], ~inside[:3])
    assert in_acc.tolist() == [0.0] and recall.tolist() == [1.0]
