from __future__ import annotations

import copy as copying
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from synaptoroute import (
    AdaptiveRouter,
    CallableEncoder,
    Encoder,
    EncoderError,
    EncoderProtocol,
    HashingEncoder,
    InvalidInputError,
    Route,
    default_encoder,
)
from synaptoroute import encoder as encoder_module
from synaptoroute.encoder import (
    _CHARS_PER_TOKEN_BOUND,
    DEFAULT_MODEL_ID,
    EncoderWrapper,
    ModelNotAvailableError,
    _default_model_files,
    former_model_ids_of,
)


def test_default_encoder_is_offline_int8_minilm(encoder: Encoder) -> None:
    assert isinstance(encoder, EncoderProtocol)
    assert encoder.model_id == DEFAULT_MODEL_ID
    assert encoder.dimension == 384
    vectors = encoder.encode(["I need a refund", "How do I get my money back?", "Play jazz"])
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    # a paraphrase is closer than an unrelated request
    assert sims[0, 1] > 0.5 > sims[0, 2]


def test_encoding_is_independent_of_batch_composition(encoder: Encoder) -> None:
    texts = ["short", "a much longer sentence about cancelling my gym membership today", "hi"]
    together = encoder.encode(texts)
    alone = np.vstack([encoder.encode([t]) for t in texts])
    assert np.allclose(together, alone, atol=1e-4)


@pytest.mark.model
def test_a_bulk_call_runs_its_batches_side_by_side_with_the_same_vectors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    words = [
        "please",
        "move",
        "my",
        "dentist",
        "appointment",
        "to",
        "next",
        "friday",
        "afternoon",
        "if",
        "you",
        "can",
    ]
    texts = [" ".join(words[: 1 + i % len(words)]) + f" {i}" for i in range(90)]
    enc = Encoder(threads=2, batch_size=4)
    monkeypatch.setattr(encoder_module, "BULK_MIN_TEXTS", 10**9)
    one_at_a_time = enc.encode(texts)
    assert enc._bulk is None
    monkeypatch.setattr(encoder_module, "BULK_MIN_TEXTS", 64)
    enc.encode(texts[:63])
    assert enc._bulk is None  # below the size
    side_by_side = enc.encode(texts)
    assert enc._bulk is not None
    # The same batches, so the same vectors (bit for bit here; a tolerance in case
    # a kernel splits its sums by thread count elsewhere), in the callers' order.
    assert np.allclose(side_by_side, one_at_a_time, rtol=0, atol=1e-6)
    single = Encoder(threads=1, batch_size=4)  # nothing to run side by side on
    assert np.allclose(single.encode(texts), one_at_a_time, rtol=0, atol=1e-6)
    assert single._bulk is None


def test_known_vector_is_stable(encoder: Encoder) -> None:
    # golden values: the first components of a fixed sentence (guards model/tokenizer drift)
    vec = encoder.encode(["The quick brown fox jumps over the lazy dog."])[0]
    again = Encoder().encode(["The quick brown fox jumps over the lazy dog."])[0]
    assert np.allclose(vec, again, atol=1e-5)
    assert vec[:6] == pytest.approx([0.0418, 0.0587, 0.0513, 0.0754, 0.0258, -0.0375], abs=1e-3)


def test_huge_text_is_truncated_to_the_token_limit(encoder: Encoder) -> None:
    base = "please route this message to the billing team "
    huge = base * 25_000  # > 1 MB
    assert len(huge) > 1_000_000
    vec_huge = encoder.encode([huge])[0]
    # the same first 256 tokens give the same vector
    vec_prefix = encoder.encode([base * 60])[0]
    assert np.allclose(vec_huge, vec_prefix, atol=1e-4)


def test_the_cut_holds_the_longest_piece_of_the_vocabulary(encoder: Encoder) -> None:
    # The cut was 16 characters a token, but the vocabulary has longer pieces: 256
    # tokens of "telecommunications" were cut to 220.
    vocabulary = json.loads(encoder._tokenizer.to_str())["model"]["vocab"]
    longest = max(len(piece.removeprefix("##")) for piece in vocabulary)
    assert longest == 18
    assert longest + 1 <= _CHARS_PER_TOKEN_BOUND  # and a space between words
    tokenizer = encoder._tokenizer
    for text in (" telecommunications" * 600, "telecommunications! " * 600):
        cut = encoder.truncate(text)
        assert len(cut) < len(text)
        assert tokenizer.encode(cut).ids == tokenizer.encode(text).ids


@pytest.mark.model
def test_the_cut_of_an_export_holds_its_own_longest_piece(tmp_path: Path) -> None:
    # An export of its own (model_path) was cut at the bundled vocabulary's 19
    # characters a token: 300 words of a 40-character piece kept 133 of 256 tokens.
    model, tokenizer = _default_model_files()
    shutil.copy(model, tmp_path / "model.onnx")
    spec = json.loads(tokenizer.read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    vocab["x" * 40] = vocab.pop("[unused0]")
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    export = Encoder(model_path=tmp_path)
    text = " ".join(["x" * 40] * 300)
    export.load()
    read = export._tokenizer.encode(text).ids
    assert len(read) == export.max_tokens
    assert export._tokenizer.encode(export.truncate(text)).ids == read
    assert np.allclose(export.encode([text]), export.encode([text + " more words"]), atol=1e-6)


class _CleaningCounter:
    """The tokenizer's deleted characters, counting how many characters are cleaned."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.cleaned = 0

    def sub(self, repl: str, text: str) -> str:
        self.cleaned += len(text)
        return self.pattern.sub(repl, text)


def test_a_long_word_is_cleaned_only_as_far_as_the_cut_keeps_it(encoder: Encoder) -> None:
    # A word without a space was cleaned whole: a megabyte of "!" or "a" cost a
    # hundred times a megabyte of words, holding the GIL for 0.1 s.
    counter = _CleaningCounter(encoder._deleted_characters())
    copy = Encoder()
    copy._deleted = counter  # type: ignore[assignment]
    cut = 256 * _CHARS_PER_TOKEN_BOUND
    tokenizer = encoder._tokenizer
    for word, read in [
        ("a" * 1_000_000, "\u2603"),  # one unknown token
        ("\u00e9" * 1_000_000, "\u2603"),
        ("e\u0301" * 500_000, "\u2603"),  # decomposed: letters and combining marks
        ("e\u0301" * 500_000 + "!", None),  # then punctuation: not one token
        ("!" * 1_000_000, None),
        ("\u200b!" * 500_000, None),
    ]:
        counter.cleaned = 0
        text = f"I need a refund {word} tail"
        got = copy.truncate(text)
        assert counter.cleaned <= 4 * cut, (word[:3], counter.cleaned)
        if read is None:  # cut inside the word
            assert len(got) == cut and got.startswith("I need a refund ")
        else:  # read whole
            assert got == f"I need a refund {read} tail"
            assert tokenizer.encode(got).ids == tokenizer.encode(text).ids


def test_unicode_and_emoji(encoder: Encoder) -> None:
    vectors = encoder.encode(["🍕🍕🍕", "¿Dónde está mi reembolso?", "返金してください", "\u200b"])
    assert np.isfinite(vectors).all()
    assert vectors.shape == (4, 384)


def test_non_string_raises_type_error(encoder: Encoder) -> None:
    with pytest.raises(TypeError, match="str"):
        encoder.encode(["ok", b"bytes"])  # type: ignore[list-item]
    assert encoder.encode([]).shape == (0, 384)


def test_a_str_is_not_a_list_of_texts(encoder: Encoder) -> None:
    # encode("hello") embedded each character: an array of shape (5, 384).
    callable_encoder = CallableEncoder(lambda texts: [[1.0, 0.0]] * len(texts), model_id="c")
    encoders = [encoder, callable_encoder, HashingEncoder(), EncoderWrapper(HashingEncoder())]
    for enc in encoders:
        with pytest.raises(TypeError, match="list of texts, not a str"):
            enc.encode("hello")
        for data in (b"abc", bytearray(b"abc")):  # "query must be str, got int" before
            with pytest.raises(TypeError, match=f"not a {type(data).__name__}"):
                enc.encode(data)  # type: ignore[arg-type]
        assert enc.encode(["hello"]).shape[0] == 1


@pytest.mark.parametrize(
    "text",
    [
        "",
        " \t\n",
        "\ufeff",
        "\u200b\u200b",
        "\x00",
        "\u0301",
        "\ue000",
        "\u200b " * 5000,
        " \u1734 ",
    ],
)
def test_a_text_of_characters_the_tokenizer_deletes_reads_nothing(
    encoder: Encoder, text: str
) -> None:
    # The model reads such a text as it reads "": the router answers it as empty.
    tokenizer = encoder._tokenizer
    assert tokenizer.encode(text).ids == tokenizer.encode("").ids
    assert encoder.reads_nothing(text)
    assert EncoderWrapper(encoder).reads_nothing(text)


@pytest.mark.parametrize(
    "text", ["hi", "\u200bhi", "\U0001f355", "?", "\u00e9", "\u200b " * 5000 + "!"]
)
def test_a_text_with_anything_the_model_reads_reads_something(encoder: Encoder, text: str) -> None:
    tokenizer = encoder._tokenizer
    assert tokenizer.encode(text).ids != tokenizer.encode("").ids
    assert not encoder.reads_nothing(text)


def test_reads_nothing_agrees_with_the_tokenizer_on_every_character(encoder: Encoder) -> None:
    # The tokenizer's Unicode tables are not Python's: U+1734 is a spacing mark (Mc)
    # in Python's and deleted by the tokenizer as a non-spacing one (Mn), so a text of
    # it was read as "" by the model but not answered as an empty query.
    tokenizer = encoder._tokenizer
    empty = sum(tokenizer.encode("").attention_mask)
    chars = [
        chr(c)
        for first, last in ((0, 0x2FFFF), (0xE0000, 0xE01FF))
        for c in range(first, last + 1)
        if not 0xD800 <= c <= 0xDFFF
    ]
    read = tokenizer.encode_batch(chars)
    wrong = [
        f"U+{ord(c):04X}"
        for c, ids in zip(chars, read, strict=True)
        if (sum(ids.attention_mask) == empty) != encoder.reads_nothing(c)
    ]
    assert wrong == []


def test_reads_nothing_loads_no_model_for_whitespace_or_letters() -> None:
    fresh = Encoder()
    assert fresh.reads_nothing(" \n") and not fresh.reads_nothing("hello")
    assert not fresh.reads_nothing("\u200bcaf\u00e9")
    assert not fresh.loaded
    # Another encoder knows only whitespace (a fastembed model's tokenizer is its own).
    assert EncoderWrapper(HashingEncoder()).reads_nothing(" ")
    assert not EncoderWrapper(HashingEncoder()).reads_nothing("\u200b")


@pytest.mark.model
def test_tampered_model_file_is_refused(tmp_path: Path) -> None:
    model, tokenizer = _default_model_files()
    shutil.copy(tokenizer, tmp_path / "tokenizer.json")
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(EncoderError, match="could not load"):
        Encoder(model_path=tmp_path).load()
    with pytest.raises(ModelNotAvailableError, match="not found"):
        Encoder(model_path=tmp_path / "missing").load()
    assert model.is_file()


@pytest.mark.model
def test_a_folders_export_is_known_by_its_files_not_as_the_bundled_model(
    tmp_path: Path,
) -> None:
    # model_path without a model name read every folder as the bundled model: a store
    # written by Encoder() opened with another export's vectors mixed in (a score of
    # 0.03 for a stored utterance), and an export of another width failed every encode
    # with numpy's broadcast error while reporting a dimension of 384.
    from synaptoroute import AdaptiveRouter, ModelMismatchError, Route, SQLiteStorage

    model, tokenizer = _default_model_files()
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(model, copy / "model.onnx")
    shutil.copy(tokenizer, copy / "tokenizer.json")
    assert Encoder(model_path=copy).model_id == DEFAULT_MODEL_ID  # the same files
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    shutil.copy(Path(__file__).parent / "fixtures" / "tiny_onnx" / "model.onnx", tiny)
    shutil.copy(tokenizer, tiny / "tokenizer.json")
    other = Encoder(model_path=tiny)
    assert other.model_id.startswith("onnx-") and other.model_id != DEFAULT_MODEL_ID
    assert Encoder(model_path=tiny).model_id == other.model_id  # its files decide
    assert other.dimension == 8
    vectors = other.encode(["I need a refund", "play some jazz"])
    assert vectors.shape == (2, 8)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    store = tmp_path / "routes.db"
    bundled = AdaptiveRouter(Encoder(model_path=copy), SQLiteStorage(store))
    bundled.add_route(Route(name="billing", utterances=["I need a refund"]))
    bundled.storage.close()
    with pytest.raises(ModelMismatchError):
        AdaptiveRouter(other, SQLiteStorage(store))
    (tiny / "tokenizer.json").write_text("{not json")
    with pytest.raises(EncoderError, match="could not read the tokenizer"):
        Encoder(model_path=tiny).load()


@pytest.mark.model
def test_an_export_whose_inputs_the_encoder_cannot_feed_is_refused_at_load(
    tmp_path: Path,
) -> None:
    # It loaded, and every encode then failed with onnxruntime's own message about a
    # missing input: the export is refused when it loads, naming the inputs it has.
    _, tokenizer = _default_model_files()
    tiny = (Path(__file__).parent / "fixtures" / "tiny_onnx" / "model.onnx").read_bytes()
    assert tiny.count(b"input_ids") == 2  # the graph's input and the node reading it
    (tmp_path / "model.onnx").write_bytes(tiny.replace(b"input_ids", b"token_ids"))
    shutil.copy(tokenizer, tmp_path / "tokenizer.json")
    with pytest.raises(
        EncoderError,
        match=r"inputs must be input_ids and attention_mask.*"
        r"'token_ids', 'attention_mask'",
    ):
        Encoder(model_path=tmp_path).load()


@pytest.mark.model
def test_the_bulk_session_checks_the_model_file_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = _default_model_files()
    shutil.copy(model, tmp_path / "model.onnx")
    shutil.copy(tokenizer, tmp_path / "tokenizer.json")
    monkeypatch.setenv(encoder_module.MODEL_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(encoder_module, "BULK_MIN_TEXTS", 8)
    enc = Encoder(threads=2, batch_size=2)
    enc.load()  # checked here
    (tmp_path / "model.onnx").write_bytes(model.read_bytes()[:-1] + b"\0")
    with pytest.raises(EncoderError, match="sha256"):
        enc.encode([f"text {i}" for i in range(8)])  # the second session reads it again
    assert enc._bulk is None
    assert enc.encode(["a call below the size"]).shape == (1, 384)  # the checked session


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.model
def test_unreachable_fastembed_model_fails_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The hub is made unreachable and the cache empty, so this holds on a machine that is
    # online or has the model cached too.
    monkeypatch.setattr(encoder_module, "_FASTEMBED_HOST", ("127.0.0.1", _closed_port()))
    monkeypatch.setenv("FASTEMBED_CACHE_PATH", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = Encoder("BAAI/bge-small-en-v1.5", download_timeout=60)
    with pytest.raises(ModelNotAvailableError) as info:
        enc.encode(["hello"])
    message = str(info.value)
    assert "BAAI/bge-small-en-v1.5" in message
    assert "model_path" in message


def test_a_model_name_that_is_no_name_is_refused_when_the_encoder_is_made() -> None:
    # Accepted, then reported at load as "not available ... fetched from the hub on
    # first use; offline, download it elsewhere": advice that cannot help.
    for model in ("", "   ", " BAAI/bge-small-en-v1.5 ", 123, b"BAAI/bge-small-en-v1.5"):
        with pytest.raises(InvalidInputError, match="model must be a model name"):
            Encoder(model)  # type: ignore[arg-type]


@pytest.mark.model
def test_a_fastembed_model_loads_from_a_local_folder(tmp_path: Path) -> None:
    # fastembed before 0.6 took no specific_model_path and dropped it silently: the
    # folder was ignored and the model fetched from the hub (offline: "not available").
    pytest.importorskip("fastembed")
    model, tokenizer = _default_model_files()
    (tmp_path / "model.onnx").symlink_to(model)
    (tmp_path / "tokenizer.json").symlink_to(tokenizer)
    # The configuration files of the model's sentence-transformers export, in short.
    special = {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]",
               "sep_token": "[SEP]", "unk_token": "[UNK]"}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps({"pad_token_id": 0}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(special))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 512, "do_lower_case": True, **special})
    )
    name = "sentence-transformers/all-MiniLM-L6-v2"  # the same model, as fastembed runs it
    local = Encoder(name, model_path=tmp_path, download_timeout=60)
    texts = ["I need a refund", "play some jazz"]
    vectors = local.encode(texts)
    assert local.model_id == name and local.dimension == 384
    assert np.allclose(vectors, Encoder().encode(texts), atol=1e-4)


@pytest.mark.model
def test_a_stalled_name_lookup_is_bounded_by_the_download_timeout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The hub probe ran before the timed fetch, and a connect timeout does not cover
    # name resolution: a resolver that stalled held the call for as long as it did.
    pytest.importorskip("fastembed")
    release = threading.Event()

    def stalled(*args: object, **kwargs: object) -> socket.socket:
        release.wait(30)
        raise OSError("name resolution failed")

    monkeypatch.setenv("FASTEMBED_CACHE_PATH", str(tmp_path))
    for name in ("HF_HUB_OFFLINE", *encoder_module._HUB_ROUTES_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(encoder_module.socket, "create_connection", stalled)
    try:
        with pytest.raises(ModelNotAvailableError, match="no answer within"):
            Encoder("BAAI/bge-small-en-v1.5", download_timeout=0.2).encode(["hello"])
    finally:
        release.set()


@pytest.mark.model
def test_a_hub_mirror_is_asked_even_where_the_hub_is_out_of_reach(tmp_path: Path) -> None:
    # The probe of huggingface.co decided "offline" and forced local files only: a
    # mirror (HF_ENDPOINT) or a proxy where direct egress is closed was never asked.
    pytest.importorskip("fastembed")
    import http.server

    asked = threading.Event()

    class Mirror(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.set()
            self.send_error(404)

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # A process of its own: the hub client reads HF_ENDPOINT when it is imported.
    env = {k: v for k, v in os.environ.items() if k not in encoder_module._HUB_ROUTES_ENV}
    env.pop("HF_HUB_OFFLINE", None)
    env.update(
        FASTEMBED_CACHE_PATH=str(tmp_path),
        HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}",
    )
    script = (
        "import synaptoroute.encoder as m\n"
        f"m._FASTEMBED_HOST = ('127.0.0.1', {_closed_port()})  # the hub: out of reach\n"
        "m.Encoder('BAAI/bge-small-en-v1.5', download_timeout=120).encode(['hello'])\n"
    )
    # Asked, or not, within the fetch's own wait: no pace of the machine decides.
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        for _ in range(1200):  # a hang bound: the child ends alone when it gives up
            if asked.wait(0.1) or child.poll() is not None:
                break
        asked_it = asked.is_set()
    finally:
        child.kill()
        _, err = child.communicate(timeout=60)
        server.shutdown()
        server.server_close()
    assert asked_it, f"the mirror was never asked: {err.decode(errors='replace')[-2000:]}"


@pytest.mark.model
def test_a_model_fetch_that_never_answers_is_abandoned(monkeypatch: pytest.MonkeyPatch) -> None:
    fastembed = pytest.importorskip("fastembed")
    release = threading.Event()

    class Hanging:
        def __init__(self, **kwargs: object) -> None:
            release.wait()  # a hub that never answers

    monkeypatch.setattr(fastembed, "TextEmbedding", Hanging)
    try:
        with pytest.raises(ModelNotAvailableError, match="no answer within"):
            Encoder("BAAI/bge-small-en-v1.5", download_timeout=0.05).encode(["hello"])
    finally:
        release.set()


@pytest.mark.model
def test_the_longest_input_the_bundled_model_takes_encodes() -> None:
    longest = Encoder(max_tokens=512).encode(["I need a refund", "word " * 600])
    assert longest.shape == (2, 384) and np.allclose(np.linalg.norm(longest, axis=1), 1.0)


def _two_dims(texts: list[str]) -> list[list[float]]:
    return [[float(len(t)), 1.0] for t in texts]


@pytest.mark.model
def test_an_encoder_pickles_as_the_arguments_it_was_made_with(
    encoder: Encoder, tmp_path: Path
) -> None:
    # Its lock and ONNX session never pickled, so an Encoder could not reach a process
    # pool, and the integrations' copies rebuilt one by name (other max_tokens, path).
    model, tokenizer = _default_model_files()
    (tmp_path / "model.onnx").symlink_to(model)
    (tmp_path / "tokenizer.json").symlink_to(tokenizer)
    short = Encoder(model_path=tmp_path, max_tokens=8, threads=1, batch_size=7, spin=False)
    text = ["I need a refund for the weather in the mountains and a new invoice please"]
    vector = short.encode(text)
    copy = pickle.loads(pickle.dumps(short))
    assert type(copy) is Encoder and copy is not short and not copy.loaded
    assert (copy.max_tokens, copy.threads, copy.batch_size, copy.spin) == (8, 1, 7, False)
    assert np.allclose(copy.encode(text), vector, atol=1e-6)
    assert not np.allclose(encoder.encode(text), vector, atol=1e-3)  # 8 tokens differ
    # Threads and batch sizes left to the encoder are resolved again where it lands.
    assert pickle.loads(pickle.dumps(Encoder()))._arguments["threads"] is None
    # The process's shared model stays shared: a copy does not load a second one.
    assert pickle.loads(pickle.dumps(default_encoder())) is default_encoder()
    # In the same process a copy is the encoder itself (copy used __reduce__ too, and
    # loaded a second model).
    assert copying.copy(short) is short and copying.deepcopy({"e": short})["e"] is short

    class Shorter(Encoder):
        pass

    with pytest.raises(TypeError, match="subclass of Encoder pickles only with"):
        pickle.dumps(Shorter())


def test_a_callable_encoder_pickles_when_its_function_does() -> None:
    # Its lock never pickled, so no CallableEncoder could reach a process pool.
    encoder = CallableEncoder(_two_dims, model_id="lengths")
    copy = pickle.loads(pickle.dumps(encoder))
    assert copy.model_id == "lengths" and copy.dimension == 2
    np.testing.assert_array_equal(copy.encode(["ab", "abc"]), encoder.encode(["ab", "abc"]))
    assert copy._lock is not encoder._lock
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(CallableEncoder(lambda texts: _two_dims(texts), model_id="lambda"))


def test_invalid_settings() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        Encoder(max_tokens=2)
    # Past the bundled model's 512 positions every long text failed in onnxruntime,
    # and took the rest of its batch down with it.
    with pytest.raises(InvalidInputError, match="max_tokens must be at most 512"):
        Encoder(max_tokens=513)
    with pytest.raises(ValueError, match="batch_size"):
        Encoder(batch_size=0)
    # Each of these was taken and failed at the model's load, or ran as 1.
    # Past a C int, onnxruntime refused the count only when the model loaded.
    with pytest.raises(InvalidInputError, match="threads must be at most 65535"):
        Encoder(threads=10**12)
    for options in ({"threads": "2"}, {"threads": 0}, {"threads": True}, {"batch_size": True}):
        name = next(iter(options))
        with pytest.raises(ValueError, match=rf"{name} must be at least 1 \(a whole number\)"):
            Encoder(**options)  # type: ignore[arg-type]
    for dimension in (0, True, 8.5):
        with pytest.raises(ValueError, match="dimension must be at least 1"):
            HashingEncoder(dimension=dimension)  # type: ignore[arg-type]
    assert Encoder(threads=np.int64(2), batch_size=np.int32(16)).threads == 2
    for wait in (0, -1, "10", float("inf")):  # a fetch must give up: a bound in seconds
        with pytest.raises(ValueError, match="download_timeout must be a finite number"):
            Encoder("BAAI/bge-small-en-v1.5", download_timeout=wait)  # type: ignore[arg-type]


def test_hashing_encoder_is_deterministic_and_bag_of_words() -> None:
    enc = HashingEncoder(dimension=64)
    a, b, c = enc.encode(["refund my order", "my order refund please", "weather tomorrow"])
    assert float(a @ b) > 0.5
    assert float(a @ c) < 0.3
    assert np.array_equal(enc.encode(["refund my order"])[0], a)
    assert isinstance(enc, EncoderProtocol)


def test_callable_encoder_adapts_any_embedding_function(encoder: Encoder) -> None:
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> list[list[float]]:
        calls.append(texts)
        return (encoder.encode(texts) * 3.0).tolist()  # not normalised, plain lists

    adapted = CallableEncoder(embed, model_id="hosted/minilm")
    assert isinstance(adapted, EncoderProtocol)
    assert adapted.dimension == 384  # probed once
    vectors = adapted.encode(["I need a refund", "Play jazz"])
    assert np.allclose(vectors, encoder.encode(["I need a refund", "Play jazz"]), atol=1e-5)
    assert adapted.encode([]).shape == (0, 384)
    assert len(calls) == 2
    with pytest.raises(TypeError):
        adapted.encode([None])  # type: ignore[list-item]


def test_callable_encoder_reports_bad_functions() -> None:
    def broken(texts: list[str]) -> list[list[float]]:
        raise ConnectionError("service unavailable")

    with pytest.raises(EncoderError, match=r"hosted failed to embed a probe text .*: service un"):
        CallableEncoder(broken, model_id="hosted").encode(["x"])
    short = CallableEncoder(lambda texts: [[1.0, 0.0]], model_id="short", dimension=2)
    with pytest.raises(EncoderError, match=r"shape \(1, 2\) for 2 texts"):
        short.encode(["a", "b"])
    wide = CallableEncoder(lambda texts: [[1.0, 0.0, 0.0]], model_id="wide", dimension=2)
    with pytest.raises(EncoderError, match="3 dimensions, expected 2"):
        wide.encode(["a"])
    # numpy's ValueError escaped, which callers catching EncoderError missed.
    ragged = CallableEncoder(lambda texts: [[1.0, 2.0], [1.0]], model_id="ragged", dimension=2)
    with pytest.raises(EncoderError, match="ragged returned vectors that are not a table"):
        ragged.encode(["a", "b"])
    words = CallableEncoder(lambda texts: [["a", "b"]] * len(texts), model_id="words")
    with pytest.raises(EncoderError, match="words returned vectors that are not a table"):
        words.encode(["a"])
    # "4" failed at the first comparison with a TypeError; True was taken as 1.
    for dimension in (0, "4", True, 2.5):
        with pytest.raises(ValueError, match=r"dimension must be at least 1 \(a whole number\)"):
            CallableEncoder(broken, model_id="x", dimension=dimension)  # type: ignore[arg-type]
    assert CallableEncoder(broken, model_id="x", dimension=np.int64(3)).dimension == 3
    with pytest.raises(ValueError, match="former_model_ids must be a list"):
        CallableEncoder(broken, model_id="x", former_model_ids="old")
    assert CallableEncoder(broken, model_id="x", former_model_ids=["x", "o"]).former_model_ids == (
        "o",
    )


def test_former_model_ids_are_read_alike_everywhere() -> None:
    # The router (opening a store of a former id) and EncoderWrapper read them here.
    class With:
        def __init__(self, former: object) -> None:
            self.former_model_ids = former

    assert former_model_ids_of(With(["a", "b"])) == ("a", "b")
    assert former_model_ids_of(With(("a",))) == ("a",)
    assert former_model_ids_of(With("ab")) == ()  # one str is not two ids "a" and "b"
    assert former_model_ids_of(With(None)) == ()
    assert former_model_ids_of(object()) == ()
    assert EncoderWrapper(With(["a"])).former_model_ids == ("a",)  # type: ignore[arg-type]


@pytest.mark.model
def test_warm_builds_what_a_first_query_of_deleted_characters_needs() -> None:
    # warm() encoded "warm-up" (letters), so the first "\u200b" or "?" query built the
    # tokenizer's rules (about 0.2 s) under the encoder's lock.
    from synaptoroute import AdaptiveRouter

    fresh = Encoder()
    AdaptiveRouter(fresh).warm()
    assert fresh._read_as is not None


def test_rows_past_float32s_range_once_squared_are_made_unit_not_zero() -> None:
    # Their float32 norm was infinite (components of 1e19 and up) or 0 (1e-23 and
    # down): each became a silent zero row, and a router answered "below_threshold"
    # for a query identical to an utterance.
    from synaptoroute.encoder import l2_normalize

    rows = np.array([[1e25, 1e25, 0.0], [1e-30, 0.0, -1e-30], [3.0, 4.0, 0.0], [0, 0, 0]])
    out = l2_normalize(rows)
    assert out.dtype == np.float32
    s = np.float32(np.sqrt(0.5))
    np.testing.assert_allclose(out, [[s, s, 0], [s, 0, -s], [0.6, 0.8, 0], [0, 0, 0]], rtol=1e-6)
    for c in (1e-21, 3e-22, 1e-22, 3e-23, 1e-23, 1e-30):  # squares below float32's normal
        row = l2_normalize(np.full((1, 384), c))
        assert abs(float(np.linalg.norm(row.astype(np.float64))) - 1.0) < 1e-5, c
    encoder = CallableEncoder(lambda texts: [[1e25, 1e25, 0.0]] * len(texts), model_id="big")
    router = AdaptiveRouter(encoder)
    router.add_route(Route(name="r", utterances=["x"]))
    assert router.query("x").name == "r"


def test_a_failing_probe_is_named_as_such() -> None:
    def down(texts: list[str]) -> list[list[float]]:
        raise ConnectionError("api down")

    with pytest.raises(EncoderError, match=r"failed to embed a probe text \(to learn its "):
        CallableEncoder(down, model_id="remote").encode(["hello", "world"])
    with pytest.raises(EncoderError, match="failed to embed 2 texts: api down"):
        CallableEncoder(down, model_id="remote", dimension=3).encode(["hello", "world"])
