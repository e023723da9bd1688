"""Issue 18 in the library: bad texts fail alone, a bounded cache, the smaller items."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from encoder_doubles import CountingEncoder, NaNEncoder

from synaptoroute import (
    AdaptiveRouter,
    Encoder,
    EncoderError,
    InvalidInputError,
    Route,
    SQLiteStorage,
)
from synaptoroute.encoder import _CHARS_PER_TOKEN_BOUND, CallableEncoder, HashingEncoder, check_text
from synaptoroute.router import EmbeddingCache

ROUTES = [
    Route(name="billing", utterances=["I need a refund", "Where is my receipt?"]),
    Route(name="tech", utterances=["The app crashes on start", "I can't log in"]),
]
LIMIT_S = 60.0
CUT = 256 * _CHARS_PER_TOKEN_BOUND  # characters the default encoder's cut keeps


@pytest.fixture
def router(encoder: Encoder) -> AdaptiveRouter:
    r = AdaptiveRouter(encoder)
    r.add_routes(ROUTES)
    return r


@pytest.mark.parametrize("bad", ["\ud83d", "ok \ud800 ok", "\udfff"])
def test_a_lone_surrogate_is_invalid_input(router: AdaptiveRouter, bad: str) -> None:
    with pytest.raises(InvalidInputError, match="valid Unicode"):
        check_text(bad)
    with pytest.raises(InvalidInputError, match="valid Unicode"):
        router.query(bad)
    with pytest.raises(InvalidInputError, match="valid Unicode"):
        router.query_batch(["refund", bad])
    with pytest.raises(InvalidInputError, match="valid Unicode"):
        router.encoder.encode([bad])
    assert check_text("caf\u00e9 \U0001f600") == "caf\u00e9 \U0001f600"


async def test_one_bad_text_never_fails_the_other_callers(router: AdaptiveRouter) -> None:
    await router.start()
    try:
        good = [router.aquery(f"I need a refund for order {i}") for i in range(200)]
        results = await asyncio.wait_for(
            asyncio.gather(
                *good[:100], router.aquery("\ud83d"), *good[100:], return_exceptions=True
            ),
            LIMIT_S,
        )
        bad = results.pop(100)
        assert isinstance(bad, InvalidInputError)
        assert all(not isinstance(r, BaseException) and r.name == "billing" for r in results)
        with pytest.raises(InvalidInputError):
            await router.aquery_batch(["refund", "\ud800"])
        with pytest.raises(InvalidInputError):
            await router.aquery_top_k("\ud800")
        assert router.worker.queue_depth == 0  # nothing of a refused call was queued
    finally:
        await router.stop()


async def test_a_batch_larger_than_the_queue_is_invalid_not_overload(encoder: Encoder) -> None:
    router = AdaptiveRouter(encoder, max_queue_size=4)
    router.add_routes(ROUTES)
    try:
        with pytest.raises(InvalidInputError, match="never fit the queue of 4"):
            await router.aquery_batch(["refund"] * 5)
        assert [m.name for m in await router.aquery_batch(["refund"] * 4)] == ["billing"] * 4
    finally:
        await router.stop()


def test_cache_is_keyed_by_what_the_encoder_reads(encoder: Encoder) -> None:
    enc = CountingEncoder(encoder)
    router = AdaptiveRouter(enc)
    router.add_routes(ROUTES)
    calls = enc.calls
    head = "I need a refund " * 400  # longer than the model reads
    for i in range(20):
        assert router.query(head + f"tail {i} " * 10_000).candidate == "billing"
    assert len(router.cache) == 1
    assert enc.calls == calls + 1
    (key,) = router.cache._data
    assert len(key) <= encoder.max_tokens * _CHARS_PER_TOKEN_BOUND


def test_words_after_a_long_whitespace_run_are_read(encoder: Encoder) -> None:
    text = "my app" + " \t\n" * 3000 + "crashes on start"
    assert encoder.truncate(text) == "my app crashes on start"
    np.testing.assert_allclose(
        encoder.encode([text]), encoder.encode(["my app crashes on start"]), atol=1e-6
    )
    short = "  keeps\tits   spacing "
    assert encoder.truncate(short) == short  # a text that fits is read as it is


@pytest.mark.parametrize("pad", ["\u2028", "\x0c", "\x85", "\u200b", "\x00", "\u0301", "\ue000"])
def test_words_after_a_long_run_the_tokenizer_drops_are_read(encoder: Encoder, pad: str) -> None:
    # Line separators split words; control, format, private-use characters and
    # combining marks are deleted: 5,000 of them took the whole cut, and the query
    # was read as empty.
    text = pad * 5000 + "I need a refund"
    assert encoder.truncate(text) == "I need a refund"
    np.testing.assert_allclose(
        encoder.encode([text]), encoder.encode(["I need a refund"]), atol=1e-6
    )


class _CountingPattern:
    """A compiled pattern that counts its ``sub`` calls."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.subs = 0

    def sub(self, repl: str, text: str) -> str:
        self.subs += 1
        return self.pattern.sub(repl, text)


def test_a_long_text_of_words_the_tokenizer_drops_is_cut_in_few_steps(encoder: Encoder) -> None:
    # Words of deleted characters only took no room, so the cut walked the whole text,
    # a Python step per word (0.17 s a megabyte, twice a query).
    counting = _CountingPattern(encoder._deleted_characters())
    copy = Encoder()
    copy._deleted = counting  # type: ignore[assignment]
    text = "\u200b " * 100_000 + "I need\u200b a refund " + "\x00 " * 1000
    assert copy.truncate(text) == "I need a refund"
    assert counting.subs <= 300
    mixed = ("\u200b " * 300 + "word ") * 2000  # runs of them between words
    assert copy.truncate(mixed) == " ".join(["word"] * 2000)[:CUT]


@pytest.mark.model
def test_a_tokenizer_without_a_normalizer_deletes_nothing() -> None:
    # An export whose tokenizer.json has "normalizer": null (model_path=): every text
    # longer than the cut raised AttributeError.
    from tokenizers import Tokenizer

    encoder = Encoder()
    encoder.load()
    exported = json.loads(encoder._tokenizer.to_str())
    exported["normalizer"] = None  # as such a tokenizer.json has it
    encoder._tokenizer = Tokenizer.from_str(json.dumps(exported))
    assert encoder._tokenizer.normalizer is None
    text = "I need a refund " * 400
    assert encoder.truncate(text) == text[:CUT]
    assert encoder.encode([text]).shape == (1, encoder.dimension)


@pytest.mark.parametrize("word", ["x" * 120, "Ünïcödé" * 20, "a1" * 60])
def test_words_the_tokenizer_reads_as_one_unknown_token_take_one_place(
    encoder: Encoder, word: str
) -> None:
    # Such a word (over 100 letters and digits) is one [UNK]: forty of them are 47
    # tokens with the query, well within what the model reads, but the cut by length
    # kept only them, and every query after them read the same.
    refund, joke = (f"{word} " * 40 + q for q in ("I need a refund", "tell me a joke"))
    tokenizer = encoder._tokenizer
    for text in (refund, joke):
        assert tokenizer.encode(encoder.truncate(text)).ids == tokenizer.encode(text).ids
    a, b = encoder.encode([refund, joke])
    assert float(a @ b) < 0.95
    # Not such words: punctuation or CJK splits them, and a text that fits is as it is.
    for other in ("ab-" * 40, "返金" * 60, "x" * 100):
        text = f"{other} " * 40 + "I need a refund"
        assert tokenizer.encode(encoder.truncate(text)).ids == tokenizer.encode(text).ids


def test_what_truncate_drops_the_tokenizer_drops(encoder: Encoder) -> None:
    dropped = encoder._deleted_characters()
    normalizer = encoder._tokenizer.normalizer
    checked = 0
    for cp in [*range(0x10000), *range(0xE0000, 0xE0200), 0xF0000, 0x10FFFD]:
        c = chr(cp)
        if 0xD800 <= cp <= 0xDFFF or not dropped.fullmatch(c):
            continue
        assert normalizer.normalize_str(f"a{c}b") == "ab", hex(cp)
        checked += 1
    assert checked > 1000
    for sep in " \t\n\r\u00a0\u2028\u2029\u3000":
        assert normalizer.normalize_str(f"a{sep}b") == "a b"
        cut = encoder.truncate(("a" + sep) * 3000)
        assert cut.split(" ") == ["a"] * (CUT // 2) + [""] and len(cut) == CUT


def test_cache_is_bounded_in_bytes() -> None:
    cache = EmbeddingCache(maxsize=1000, max_bytes=200_000)
    vector = np.zeros(384, np.float32)
    for i in range(200):
        cache.put(f"{i} " + "x" * 10_000, vector)
        assert cache.nbytes <= 200_000
    assert 0 < len(cache) < 200
    assert cache.get("199 " + "x" * 10_000) is not None  # the most recent stay
    assert cache.get("0 " + "x" * 10_000) is None
    cache.put("huge" * 100_000, vector)  # larger than the whole cache: not kept
    assert cache.get("huge" * 100_000) is None
    cache.clear()
    assert cache.nbytes == 0 and len(cache) == 0


def test_nan_from_an_encoder_is_an_error_not_a_match() -> None:
    router = AdaptiveRouter(NaNEncoder())
    router.add_route(Route(name="a", utterances=["hello there"]))
    with pytest.raises(EncoderError, match="NaN"):
        router.query("banana")
    with pytest.raises(EncoderError, match="NaN"):
        router.add_route(Route(name="b", utterances=["nan bread"]))
    assert router.route_names == ["a"]


class _Misbehaving:
    """A bare EncoderProtocol object over HashingEncoder, its output changed by ``how``."""

    model_id = "misbehaving"

    def __init__(self, how: str = "") -> None:
        self.how = how
        self.dimension = 16
        self._inner = HashingEncoder(dimension=16)
        self._buffer = np.zeros((64, 16), dtype=np.float32)

    def encode(self, texts: list[str]) -> Any:
        rows = self._inner.encode(texts)
        if self.how == "reused buffer":  # pooled output: the next call writes over it
            self._buffer[: len(rows)] = rows
            return self._buffer[: len(rows)]
        if self.how == "scaled":  # a model that does not normalise
            return rows * 10
        if self.how == "short":  # an API that dropped an item
            return rows[:-1]
        if self.how == "lists":
            return rows.tolist()
        if self.how == "ragged":  # rows of two lengths: numpy's own ValueError before
            return [row.tolist()[: 1 + i % 2] for i, row in enumerate(rows)]
        if self.how == "bfloat16":  # normalised, then rounded to bfloat16's 8-bit mantissa
            bits = rows.view(np.uint32) + np.uint32(0x8000)
            return (bits & np.uint32(0xFFFF0000)).view(np.float32)
        return rows


def test_an_encoder_reusing_its_output_buffer_does_not_change_the_index() -> None:
    router = AdaptiveRouter(_Misbehaving("reused buffer"))
    router.add_route(Route(name="a", utterances=["alpha beta"]))
    router.add_utterances("a", ["gamma delta"])  # its rows were the buffer the next call fills
    router.add_route(Route(name="b", utterances=["epsilon zeta"]))
    # This query's encode writes the buffer again before the index takes in its rows.
    assert router.query("epsilon zeta").name == "b"
    assert router.query("gamma delta").name == "a"
    assert router.query_top_k("gamma delta", 1)[0].score == pytest.approx(1.0)


def test_an_encoder_fault_is_an_encoder_error_and_changes_nothing() -> None:
    for fine in ("lists", "bfloat16"):  # lists of floats; unit rows at 16-bit precision
        good = AdaptiveRouter(_Misbehaving(fine))
        good.add_route(Route(name="a", utterances=["alpha beta", "one two three"]))
        assert good.query("alpha beta").name == "a"
    for how, message in (
        # Scores of 100 passed every threshold: a score is a cosine.
        ("scaled", r"a row of L2 norm 10 \(text 0\); the router needs unit rows"),
        # Was a ModelMismatchError: HTTP 409, "the store holds another model".
        ("short", r"returned shape \(0, 16\), expected \(1, 16\)"),
    ):
        encoder = _Misbehaving()
        router = AdaptiveRouter(encoder)
        router.add_route(Route(name="a", utterances=["alpha beta"]))
        encoder.how = how
        with pytest.raises(EncoderError, match=message):
            router.add_route(Route(name="b", utterances=["gamma delta"]))
        with pytest.raises(EncoderError, match=message):
            router.query("something new")
        assert router.route_names == ["a"]
    # Rows of two lengths: numpy's ValueError, which the CLI told as bad input (exit
    # code 2); the fault is the model's.
    ragged = AdaptiveRouter(_Misbehaving("ragged"))
    with pytest.raises(EncoderError, match="returned rows that are not a matrix of numbers"):
        ragged.add_route(Route(name="a", utterances=["alpha beta", "gamma delta"]))
    assert ragged.route_names == []
    # A row of zeros (a text with nothing to hash) is no fault: it scores 0.
    zero = AdaptiveRouter(HashingEncoder(dimension=16))
    zero.add_route(Route(name="a", utterances=["alpha beta"]))
    assert zero.query("!!!").score == 0.0
    # The dimension is the router's, fixed: an encoder that changes its own is refused.
    changing = _Misbehaving()
    router = AdaptiveRouter(changing)
    router.add_route(Route(name="a", utterances=["alpha beta"]))
    changing._inner, changing.dimension = HashingEncoder(dimension=8), 8
    with pytest.raises(EncoderError, match=r"expected \(1, 16\)"):
        router.query("something else")


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("model_id", None, "'s model_id must be a non-empty str"),
        ("model_id", 5, "'s model_id must be a non-empty str"),  # stored '5', then refused
        ("model_id", " ", "'s model_id must be a non-empty str"),
        ("dimension", "8", " needs a dimension, a positive int"),
        ("dimension", 0, " needs a dimension, a positive int"),
        ("dimension", True, " needs a dimension, a positive int"),
    ],
)
def test_an_encoder_without_a_usable_id_or_dimension_is_refused_at_once(
    attribute: str, value: object, message: str
) -> None:
    encoder = _Misbehaving()
    setattr(encoder, attribute, value)
    with pytest.raises(InvalidInputError, match=f"the encoder \\(_Misbehaving\\){message}"):
        AdaptiveRouter(encoder)


def test_a_callable_encoder_needs_an_id_and_vectors_of_some_length() -> None:
    with pytest.raises(InvalidInputError, match="model_id must be a non-empty str"):
        CallableEncoder(lambda texts: [[1.0, 0.0]] * len(texts), model_id=None)  # type: ignore[arg-type]
    empty = CallableEncoder(lambda texts: [[] for _ in texts], model_id="empty-api")
    with pytest.raises(EncoderError, match="vectors of length 0"):
        AdaptiveRouter(empty)


def test_a_callable_encoder_refuses_ids_no_store_can_write(tmp_path: Path) -> None:
    # A lone surrogate passed, and the first write to a SQLite store failed with a
    # UnicodeEncodeError from inside the store, naming neither the id nor the encoder.
    def embed(texts: list[str]) -> list[list[float]]:
        return [[1.0, 0.0]] * len(texts)

    with pytest.raises(InvalidInputError, match=r"model_id must be valid Unicode"):
        CallableEncoder(embed, model_id="\ud800")
    for former, field in (([None], "former_model_ids\\[0\\]"), (["a", "\udfff"], "\\[1\\]")):
        with pytest.raises(InvalidInputError, match=field):
            CallableEncoder(embed, model_id="x", former_model_ids=former)  # type: ignore[arg-type]
    good = CallableEncoder(embed, model_id="caf\u00e9/\u2603", former_model_ids=["old"])
    router = AdaptiveRouter(good, SQLiteStorage(tmp_path / "r.db"))
    router.add_route(Route(name="a", utterances=["hello"]))
    router.close()


def test_any_encoder_with_an_id_no_store_can_write_is_refused_at_once() -> None:
    # A custom encoder class (the documented extension point) failed the first write.
    class Surrogate(HashingEncoder):
        @property
        def model_id(self) -> str:
            return "my-model\ud800"

    with pytest.raises(InvalidInputError, match=r"\(Surrogate\)'s model_id must be valid Unicode"):
        AdaptiveRouter(Surrogate())


def test_blas_threads_are_bounded_as_the_encoders_are() -> None:
    # 2**31 was taken: the int8 copy's session refused it (the pre-filter was dropped
    # for good, said only in a log), and ctypes cut 2**32 + 1 to one BLAS thread.
    for bad in (2**31, 2**32 + 1, 65_536):
        with pytest.raises(InvalidInputError, match="blas_threads must be at most 65535"):
            AdaptiveRouter(HashingEncoder(), blas_threads=bad)
    assert AdaptiveRouter(HashingEncoder(), blas_threads=65_535).blas_threads == 65_535


def test_an_encoders_spin_is_a_bool() -> None:
    # "false" was true, and spun.
    for bad in ("false", "no", 0, None):
        with pytest.raises(InvalidInputError, match="spin must be True or False"):
            Encoder(spin=bad)  # type: ignore[arg-type]


def test_strings_are_not_lists_of_utterances(router: AdaptiveRouter) -> None:
    with pytest.raises(TypeError, match="not a str"):
        router.add_utterances("tech", "hello")
    with pytest.raises(TypeError, match="not a str"):
        router.delete_utterances("tech", "The app crashes on start")
    assert router.get_route("tech").utterances == ROUTES[1].utterances


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ("hello", "not a str"),
        (b"hello", "not a bytes"),  # iterated, it gave "query must be str, got int"
        (bytearray(b"hello"), "not a bytearray"),
        (None, "got NoneType"),
        (5, "got int"),
    ],
)
def test_batch_calls_take_a_list_of_texts(
    router: AdaptiveRouter, texts: object, message: str
) -> None:
    calls = {
        "query_batch": lambda: router.query_batch(texts),  # type: ignore[arg-type]
        "query_top_k_batch": lambda: router.query_top_k_batch(texts),  # type: ignore[arg-type]
        "aquery_batch": lambda: asyncio.run(router.aquery_batch(texts)),  # type: ignore[arg-type]
        "aquery_top_k_batch": lambda: asyncio.run(
            router.aquery_top_k_batch(texts)  # type: ignore[arg-type]
        ),
    }
    for method, call in calls.items():
        with pytest.raises(TypeError, match=f"^{method} takes a list of texts, {message}"):
            call()


def test_a_bad_k_is_refused_for_an_empty_batch_too(router: AdaptiveRouter) -> None:
    # query_top_k_batch([], k=0) returned [] while one text got "k must be at least 1".
    with pytest.raises(InvalidInputError, match="k must be at least 1"):
        router.query_top_k_batch([], k=0)
    with pytest.raises(InvalidInputError, match="k must be at least 1"):
        asyncio.run(router.aquery_top_k_batch([], k=0))
    assert router.query_top_k_batch([], k=2) == []


@pytest.mark.parametrize("value", [True, False, float("nan"), "0.5", 1.5])
def test_threshold_must_be_a_real_number_in_range(router: AdaptiveRouter, value: object) -> None:
    with pytest.raises(InvalidInputError):
        router.threshold = value  # type: ignore[assignment]
    with pytest.raises(InvalidInputError):
        router.set_threshold("tech", value)  # type: ignore[arg-type]
    assert router.threshold == 0.5
    router.threshold = 1  # an int is a number
    assert router.threshold == 1


def _rss_after_trim() -> int:
    from synaptoroute.server.memory import malloc_trim, rss_bytes

    malloc_trim()
    rss = rss_bytes()
    assert rss is not None
    return rss


def test_a_batch_of_long_texts_does_not_pin_its_memory(encoder: Encoder) -> None:
    # Issue 18 (RSS after the attacks): 16 texts of 256 tokens need a few hundred MB
    # inside ONNX Runtime while they are encoded; kept by its arena, that memory
    # stayed with the process for good after the request was gone.
    from synaptoroute.server.memory import _libc_trim, rss_bytes

    if _libc_trim() is None or rss_bytes() is None:
        pytest.skip("needs glibc and /proc")
    encoder.encode(["a short warm-up query"])
    before = _rss_after_trim()
    vectors = encoder.encode([f"{i} " + "word " * 2000 for i in range(16)])
    assert vectors.shape == (16, encoder.dimension)
    grown = _rss_after_trim() - before
    assert grown < 64 * 1024 * 1024, f"{grown / 2**20:.0f} MiB kept after the batch"


def test_metadata_tuples_are_the_lists_a_store_reads_back(tmp_path: Path) -> None:
    # The router kept the tuple and the store gave a list: after a restart the same
    # add_routes (a start-up script's) raised RouteExistsError.
    routes = [
        Route(name="billing", utterances=["refund my money"], metadata={"tags": ("a", ("b",))})
    ]
    assert routes[0].metadata == {"tags": ["a", ["b"]]}
    # A copy: equal tuples may be one object, and were one shared list.
    twice = Route(name="r", utterances=["x"], metadata={"x": (1, 2), "y": (1, 2)}).metadata
    twice["x"].append(3)
    assert twice == {"x": [1, 2, 3], "y": [1, 2]}
    # Metadata deeper than the stores take is left to their refusal, at once: a shared
    # structure of 40 levels has 2^40 paths, which a walk by paths never finished.
    shared: Any = ("leaf",)
    for _ in range(40):
        shared = (shared, shared)
    deep = Route(name="r", utterances=["x"], metadata={"k": shared})
    with pytest.raises(InvalidInputError, match="nests deeper than 32 levels"):
        AdaptiveRouter(HashingEncoder(dimension=16)).add_route(deep)
    # So is metadata of more values than the stores' 64 KiB could hold (a structure
    # of 20 shared levels: 2^20 paths, copied one by one before).
    wide: Any = ["leaf"]
    for _ in range(20):
        wide = [wide, wide]
    assert Route(name="r", utterances=["x"], metadata={"k": wide}).metadata["k"] is wide
    # And the stores refuse it by counting values, not by writing 2^20 paths of JSON.
    with pytest.raises(InvalidInputError, match="more values than 65536 bytes of JSON can"):
        AdaptiveRouter(HashingEncoder(dimension=16)).add_route(
            Route(name="r", utterances=["x"], metadata={"k": wide})
        )
    path = tmp_path / "routes.db"
    for _ in range(2):
        router = AdaptiveRouter(HashingEncoder(dimension=16), SQLiteStorage(path))
        router.add_routes(routes)  # a no-op the second time
        assert router.get_route("billing").metadata == {"tags": ["a", ["b"]]}
        router.close()


def test_policy_thresholds_are_keyed_by_route_names() -> None:
    # An int key was kept in memory and read back as a str; a tuple key failed the
    # store's JSON with a bare TypeError.
    router = AdaptiveRouter(HashingEncoder(dimension=16))
    for key in (1, ("billing",)):
        with pytest.raises(InvalidInputError, match="route names \\(str\\)"):
            router.set_policy(replace(router.policy, thresholds={key: 0.5}))
