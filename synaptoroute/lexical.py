"""The lexical signals of hybrid routing: hashed word and character n-gram TF-IDF.

A fitted head (see :mod:`synaptoroute.fitting`) can read two of them:

* **n-gram features** (:class:`NgramFeatures`): the query's sparse TF-IDF row over a
  vocabulary learned by the fit, with one learned weight per feature and route, added
  to the route logits like the embedding's. The vocabulary, its IDF and the weights
  are stored with the head, so they survive a reopen and reach replicas.
* **a lexical score per route** (:class:`LexicalView`): the cosine between the
  query's TF-IDF vector and the sum of the route's utterances' unit TF-IDF vectors,
  added ``beta`` times to each ranked route's logit next to ``alpha`` times the dense
  similarity (``beta = 0``, or no head, leaves it out).

The per-route vectors are not persisted: they are derived from the stored
utterances. Each distinct text is tokenised once and its features cached (a route
change only tokenises the new texts, nothing is re-encoded); the per-route vectors
are assembled again, over every utterance, when a query first needs a new index
snapshot: that query waits for it, and the wait grows with the number of utterances
(not with the change). Reopening a store or a replica rebuilds the same state from
the same texts. Hashing keeps the feature space fixed (no vocabulary to grow); the
hash is ``zlib.crc32``, so features do not depend on the process's string hash seed.

Why one module over 400 lines: the tokeniser (and its versions), the fitted vocabulary
and the per-route view must read a text the same way, or a head would score queries
with features other than those it was fitted on; keeping them together keeps that one
reading.
"""

from __future__ import annotations

import functools
import math
import re
import sys
import threading
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._fork import LEAF, LEXICAL, cached_property, hold_across_fork
from .index import Snapshot

__all__ = ["LexicalIndex", "LexicalView", "NgramFeatures", "text_features"]

#: Size of the hashed feature space (collisions are rare at this size and harmless).
N_FEATURES = 1 << 18
_MASK = N_FEATURES - 1


def _mark_ranges() -> str:
    """The combining marks (Unicode category M) as a regular expression class body.
    Scanned where marks are (none before U+0300, in the CJK ideographs, the Hangul
    syllables or the private use areas, nor past the variation selectors), so the
    scan costs milliseconds at import."""
    spans = [(0x0300, 0x4E00), (0xA000, 0xAC00), (0xD7A4, 0xD800), (0xF900, 0x20000),
             (0xE0100, 0xE01F0)]  # fmt: skip
    out: list[str] = []
    for lo, hi in spans:
        start = None
        for code in range(lo, hi + 1):
            mark = code < hi and unicodedata.category(chr(code)).startswith("M")
            if mark and start is None:
                start = code
            elif not mark and start is not None:
                out.append(f"{re.escape(chr(start))}-{re.escape(chr(code - 1))}")
                start = None
    return "".join(out)


#: A word: a letter or digit, then letters, digits and the combining marks inside it (a
#: vowel sign, an accent left decomposed): ``\w`` alone split "दिन" into "द" and "न", as
#: it did "दान". Marks alone are no word: the emoji variation selector (U+FE0F) left by
#: "❤️", "⚠️" or "☀️" (the emoji is no ``\w``) made them all share one. The zero-width
#: joiner and non-joiner continue a word: Bengali "র‍্যাব" (ra, ZWJ, hasant, ya) is one
#: word, not "র" and the word "যাব".
_WORD = re.compile(rf"\w[\w{_mark_ranges()}\u200c\u200d]*")
#: How words were read before 0.3 (see :data:`TOKENISER`); kept for the heads fitted then.
_LEGACY_WORD = re.compile(r"\w+")
#: The version of the tokeniser: 2 reads the NFC normal form, case-folded, and keeps
#: combining marks in words that start with a letter or digit (1, before: ``str.lower``
#: and ``\w+`` on the text as given, so canonically equal texts could get different
#: features). A vocabulary records the
#: version that learned it (:attr:`NgramFeatures.tokeniser`; a head stored before has
#: none, read as 1) and reads queries with it, so a head decides as it was fitted to
#: until the next fit.
TOKENISER = 2


#: Characters of a text that its features are read from: about what the encoder reads
#: (it truncates long texts), and a bound on the work a hostile megabyte query costs.
MAX_CHARS = 4096


def text_features(text: str) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """The hashed features of the first :data:`MAX_CHARS` characters of ``text`` (in
    Unicode normal form NFC, case-folded; a whitespace run counts as one character
    there): word uni- and bigrams and the character 3-
    and 4-grams of each word (with boundary marks), with sublinear counts. Canonically
    equivalent texts (NFC and NFD, say) have the same features, as they have the same
    embedding.

    Returns:
        Sorted unique feature ids and their weights ``1 + log(count)`` (read-only
        arrays: recent results are shared).
    """
    # An NFC character is at most 4 in any other form (Greek with three marks; a
    # Hangul syllable is 3): this cut keeps MAX_CHARS of the NFC text whatever the form.
    return _features(_squeezed(text)[: 4 * MAX_CHARS])


_NOT_SPACE = re.compile(r"\S+")


def _squeezed(text: str) -> str:
    """``text`` with its whitespace runs as one space, when it is longer than the cut.

    The encoder reads the words after a long whitespace run (its tokenizer keeps
    nothing of the run); cut first, a text starting with 4,096 spaces had no features.
    Words and their order are those of ``text``, so a text within the cut, whose
    features are read whole, is returned as it is. The work stops at the cut's length
    of words (the scan through whitespace is the regex engine's).
    """
    if len(text) <= MAX_CHARS:
        return text
    pieces: list[str] = []
    kept = 0
    for match in _NOT_SPACE.finditer(text):
        pieces.append(match.group())
        kept += len(pieces[-1]) + 1
        if kept > 4 * MAX_CHARS:
            break
    return " ".join(pieces)


def legacy_text_features(text: str) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """:func:`text_features` as version 1 of the tokeniser read them (see
    :data:`TOKENISER`): what a head fitted before reads."""
    return _legacy_features(text[:MAX_CHARS])


# A few recent texts: a query's two lexical signals (a head's n-gram features and the
# per-route scores) tokenise the same text once.
@functools.lru_cache(maxsize=32)
def _features(text: str) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    # Normalised before the cut, so a decomposed text (longer) keeps as many characters.
    folded = unicodedata.normalize("NFC", text)[:MAX_CHARS].casefold()
    return _counted(_WORD.findall(folded))


@functools.lru_cache(maxsize=32)
def _legacy_features(text: str) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    return _counted(_LEGACY_WORD.findall(text.lower()))


def _counted(words: list[str]) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """The sorted feature ids of ``words`` and their weights."""
    grams: list[int] = []
    for word in words:
        grams.extend(_word_ids(word))
    grams.extend(zlib.crc32(f"b {a} {b}".encode()) & _MASK for a, b in pairwise(words))
    # Sorted ids and run lengths by hand: np.unique's own overhead was a fifth of a
    # query's lexical cost (a query has some tens of n-grams).
    hashes = np.array(grams, dtype=np.int64)
    hashes.sort()
    first = np.ones(len(hashes), dtype=bool)
    np.not_equal(hashes[1:], hashes[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    ids = hashes[starts]
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[-1:] = len(hashes)
    weights = (1.0 + np.log(ends - starts)).astype(np.float32)
    ids.flags.writeable = False
    weights.flags.writeable = False
    return ids, weights


#: Words whose feature ids are kept (a query's words repeat across queries; hashing
#: each of a word's n-grams again was most of a query's lexical cost). Cleared when
#: full, so a hostile stream of new words costs memory for at most this many words
#: and :data:`_WORD_CACHE_IDS` ids (about 16 MB): a text without spaces (Chinese,
#: Thai, a long token) is one word of up to 4,096 characters, with 8,000 ids, and a
#: stream of them held 6.5 GB under the word count alone.
_WORD_CACHE_SIZE = 20_000
_WORD_CACHE_IDS = 400_000
_word_cache: dict[str, tuple[int, ...]] = {}
_word_cache_ids = 0
_word_cache_lock = threading.Lock()
# Held for one insertion: a fork waits for it, so no child inherits it held.
hold_across_fork(sys.modules[__name__], LEAF, "_word_cache_lock")


def _word_ids(word: str) -> tuple[int, ...]:
    """The feature ids of one word: its unigram and its character 3- and 4-grams."""
    global _word_cache_ids
    ids = _word_cache.get(word)
    if ids is None:
        marked = f"<{word}>"
        grams = [f"w {word}"]
        for n in (3, 4):
            grams += [marked[i : i + n] for i in range(len(marked) - n + 1)]
        ids = tuple(zlib.crc32(g.encode()) & _MASK for g in grams)
        # Queries run in several threads: the count and the cache change together.
        with _word_cache_lock:
            if len(_word_cache) >= _WORD_CACHE_SIZE or _word_cache_ids + len(ids) > _WORD_CACHE_IDS:
                _word_cache.clear()
                _word_cache_ids = 0
            if word not in _word_cache:
                _word_cache[word] = ids
                _word_cache_ids += len(ids)
    return ids


@dataclass(frozen=True, eq=False)
class NgramFeatures:
    """A fixed vocabulary of hashed n-gram features: the sparse inputs of a head.

    A text's row holds, for each of its features in the vocabulary, ``1 + log(count)``
    times the feature's IDF, scaled to Euclidean norm ``scale`` (features outside the
    vocabulary are dropped). The vocabulary and IDF are learned once, from a fit's
    rows, and stored with the head, so routing a query does not depend on the routes
    added or deleted since.

    Attributes:
        ids: sorted feature ids (see :func:`text_features`).
        idf: inverse document frequency of each, over the rows it was learned from.
        scale: the norm of a row (the features' weight next to the unit embedding).
        tokeniser: the version of the tokeniser that learned it (:data:`TOKENISER`),
            which reads texts for it.
    """

    ids: NDArray[np.int64]
    idf: NDArray[np.float32]
    scale: float
    tokeniser: int = TOKENISER

    @classmethod
    def learn(
        cls,
        texts: Sequence[str],
        scale: float,
        min_df: int = 3,
        found: Sequence[tuple[NDArray[np.int64], NDArray[np.float32]]] | None = None,
    ) -> NgramFeatures:
        """The features found in at least ``min_df`` of ``texts``, with their IDF
        (``found``: their :func:`text_features`, if the caller has them)."""
        found = [text_features(t) for t in texts] if found is None else found
        every = np.concatenate([ids for ids, _ in found]) if found else np.zeros(0, np.int64)
        ids, df = np.unique(every, return_counts=True)
        keep = df >= min_df
        idf = np.log((1.0 + len(texts)) / (1.0 + df[keep])) + 1.0
        return cls(ids[keep], idf.astype(np.float32), float(scale))

    @property
    def legacy(self) -> bool:
        """Whether the vocabulary was learned by version 1 of the tokeniser (a head
        fitted before :data:`TOKENISER` 2): its rows read texts as version 1 did."""
        return self.tokeniser < 2

    def __len__(self) -> int:
        """The number of features (the rows of a head's n-gram weights)."""
        return len(self.ids)

    def row(
        self,
        text: str,
        features: tuple[NDArray[np.int64], NDArray[np.float32]] | None = None,
    ) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
        """Positions in the vocabulary of ``text``'s features, and their values
        (``features``: its :func:`text_features`, if the caller has them; a legacy
        vocabulary reads the text itself)."""
        if self.legacy:
            ids, weights = legacy_text_features(text)
        else:
            ids, weights = text_features(text) if features is None else features
        pos = np.minimum(np.searchsorted(self.ids, ids), max(len(self.ids) - 1, 0))
        known = self.ids[pos] == ids if len(self.ids) else np.zeros(len(ids), dtype=bool)
        pos = pos[known]
        values = weights[known] * self.idf[pos]
        norm = float(np.sqrt(np.dot(values, values)))
        if norm > 0:
            values *= self.scale / norm
        return pos.astype(np.intp, copy=False), values.astype(np.float32, copy=False)

    def rows(
        self,
        texts: Sequence[str],
        found: Sequence[tuple[NDArray[np.int64], NDArray[np.float32]]] | None = None,
    ) -> tuple[NDArray[np.int64], NDArray[np.intp], NDArray[np.float32]]:
        """The rows of ``texts`` in compressed sparse row form: ``(indptr, indices,
        values)`` (``found``: their :func:`text_features`, if the caller has them)."""
        parts = [self.row(t, None if found is None else found[i]) for i, t in enumerate(texts)]
        indptr = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(p) for p, _ in parts], out=indptr[1:])
        if not parts:
            return indptr, np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.float32)
        indices = np.concatenate([p for p, _ in parts])
        return indptr, indices, np.concatenate([v for _, v in parts])

    def products(self, texts: Sequence[str], weights: NDArray[np.float32]) -> NDArray[np.float64]:
        """Each text's row times ``weights`` (``(len(self), columns)``): shape
        ``(len(texts), columns)``."""
        out = np.zeros((len(texts), weights.shape[1]))
        for i, text in enumerate(texts):
            pos, values = self.row(text)
            if len(pos):
                out[i] = values @ weights[pos]
        return out


@dataclass(frozen=True)
class LexicalView:
    """Per-route TF-IDF vectors of one index snapshot, stored by route: each route's
    features sorted, as the keys ``route * N_FEATURES + feature``.

    A query needs only its ranked routes' scores (:meth:`route_scores`: one sorted
    search of its features in those routes); the by-feature postings that score every
    route at once (:meth:`scores`, :meth:`scores_many`, what a fit reads) are derived
    on first use.

    Attributes:
        version: the snapshot version this view was built from.
        idf: ``(N_FEATURES,)`` inverse document frequency over the live utterances.
        keys: sorted ``route position * N_FEATURES + feature id`` of every nonzero
            weight (route positions in ``live_routes`` order).
        weights: the route vector's weight for each key's feature, over its norm.
        route_norm: Euclidean norm of each route's summed vector (for leave-one-out).
        n_routes: number of live routes.
    """

    version: int
    idf: NDArray[np.float32]
    keys: NDArray[np.int64]
    weights: NDArray[np.float32]
    route_norm: NDArray[np.float64]
    n_routes: int

    @cached_property
    def _postings(self) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]:
        """By feature: each feature's start, then the route and weight of each posting."""
        route, feature = np.divmod(self.keys, N_FEATURES)
        order = np.argsort(feature, kind="stable")
        ptr = np.zeros(N_FEATURES + 1, dtype=np.int64)
        np.cumsum(np.bincount(feature, minlength=N_FEATURES), out=ptr[1:])
        return ptr, route[order], self.weights[order]

    def query_vector(
        self,
        text: str,
        features: tuple[NDArray[np.int64], NDArray[np.float32]] | None = None,
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """The unit TF-IDF vector of ``text`` under this view's IDF (``features``: its
        :func:`text_features`, if the caller has them)."""
        ids, weights = text_features(text) if features is None else features
        values = weights * self.idf[ids]
        norm = float(np.sqrt(np.dot(values, values)))
        return ids, (values / norm if norm > 0 else values)

    def scores(self, text: str) -> NDArray[np.float64]:
        """Cosine of ``text`` with every route's vector, shape ``(n_routes,)``."""
        ids, values = self.query_vector(text)
        return self._scores(ids, values)

    def _scores(self, ids: NDArray[np.int64], values: NDArray[np.float32]) -> NDArray[np.float64]:
        post_ptr, post_route, post_weight = self._postings
        starts, ends = post_ptr[ids], post_ptr[ids + 1]
        lengths = ends - starts
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(self.n_routes)
        # Positions of every posting of the query's features, without a Python loop.
        offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
        contrib = np.repeat(values.astype(np.float64), lengths) * post_weight[offsets]
        out: NDArray[np.float64] = np.bincount(
            post_route[offsets], weights=contrib, minlength=self.n_routes
        ).astype(np.float64)
        return out

    def route_scores(self, text: str, positions: NDArray[np.integer[Any]]) -> NDArray[np.float64]:
        """:meth:`scores` of the routes at ``positions`` only (a query's ranked routes):
        each of the query's features is looked up in each route's sorted keys."""
        ids, values = self.query_vector(text)
        if not len(ids) or not len(positions) or not len(self.keys):
            return np.zeros(len(positions))
        wanted = (np.asarray(positions, dtype=np.int64)[:, None] * N_FEATURES + ids).ravel()
        at = np.minimum(np.searchsorted(self.keys, wanted), len(self.keys) - 1)
        found = np.where(self.keys[at] == wanted, self.weights[at], 0.0)
        out: NDArray[np.float64] = found.reshape(len(positions), len(ids)) @ values.astype(
            np.float64
        )
        return out

    def scores_many(
        self,
        texts: Sequence[str],
        found: Sequence[tuple[NDArray[np.int64], NDArray[np.float32]]] | None = None,
    ) -> NDArray[np.float64]:
        """:meth:`scores` of each text, shape ``(len(texts), n_routes)`` (``found``:
        their :func:`text_features`, if the caller has them)."""
        out = np.zeros((len(texts), self.n_routes))
        for i, text in enumerate(texts):
            out[i] = self._scores(*self.query_vector(text, None if found is None else found[i]))
        return out

    def leave_one_out(
        self, scores: NDArray[np.float64], position: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        """Scores of texts that are utterances of route ``position`` (one per row),
        recomputed as if that utterance were not in its route's vector.

        With ``q`` the utterance's unit vector and ``S`` its route's sum, the score
        ``q.S/|S|`` becomes ``(q.S - 1) / |S - q|`` with ``|S - q|^2 = |S|^2 - 2 q.S + 1``.
        """
        out: NDArray[np.float64] = scores.copy()
        rows = np.flatnonzero(position >= 0)
        pos = position[rows]
        norm = self.route_norm[pos]
        dot = scores[rows, pos] * norm
        rest = norm * norm - 2 * dot + 1.0
        left = np.where(rest > 1e-9, (dot - 1.0) / np.sqrt(np.maximum(rest, 1e-18)), 0.0)
        # Weights are not negative and S holds q, so q.S >= q.q = 1 for a unit q; below
        # that q is the zero vector of a text with no n-gram (an emoji): S is the same
        # without it, and its score stays 0 (not (0 - 1) / |S|).
        out[rows, pos] = np.where(dot < 0.5, scores[rows, pos], left)
        return out

    def leave_rows_out(
        self,
        scores: NDArray[np.float64],
        queries: Sequence[tuple[NDArray[np.int64], NDArray[np.float32]]],
        query: NDArray[np.int64],
        position: NDArray[np.int64],
        rows: Sequence[tuple[NDArray[np.int64], NDArray[np.float32]]],
    ) -> NDArray[np.float64]:
        """``scores`` (of texts with :func:`text_features` ``queries``) with utterances
        left out of their routes' vectors: the utterance with features ``rows[j]`` out
        of route ``position[j]`` for text ``query[j]`` (the text itself, or one the
        encoder cannot tell from it).

        With ``q`` a text's unit vector, ``S`` its route's sum and ``R`` the sum of the
        unit vectors left out of it, the score ``q.S/|S|`` becomes ``(q.S - q.R) /
        |S - R|``, with ``|S - R|^2 = |S|^2 - 2 R.S + |R|^2``; a route left with nothing
        scores 0. (An utterance with no n-gram is the zero vector: nothing changes.)
        """
        out: NDArray[np.float64] = scores.copy()
        groups: dict[tuple[int, int], list[int]] = {}
        for j, (qi, pos) in enumerate(zip(query.tolist(), position.tolist(), strict=True)):
            groups.setdefault((qi, pos), []).append(j)
        for (qi, pos), members in groups.items():
            parts = [self.query_vector("", rows[j]) for j in members]
            every = np.concatenate([ids for ids, _ in parts])
            r_ids, inverse = np.unique(every, return_inverse=True)
            r_vals = np.bincount(
                inverse, weights=np.concatenate([v for _, v in parts]), minlength=len(r_ids)
            )
            q_ids, q_vals = self.query_vector("", queries[qi])
            common, at_q, at_r = np.intersect1d(
                q_ids, r_ids, assume_unique=True, return_indices=True
            )
            q_r = (
                float(np.dot(q_vals[at_q].astype(np.float64), r_vals[at_r])) if len(common) else 0.0
            )
            norm = float(self.route_norm[pos])
            r_s = float(self._key_weights(pos, r_ids) @ r_vals) * norm
            rest = norm * norm - 2.0 * r_s + float(np.dot(r_vals, r_vals))
            q_s = float(scores[qi, pos]) * norm
            out[qi, pos] = (q_s - q_r) / math.sqrt(rest) if rest > 1e-9 else 0.0
        return out

    def _key_weights(self, position: int, ids: NDArray[np.int64]) -> NDArray[np.float64]:
        """Route ``position``'s (normalised) weight of each feature of ``ids``."""
        if not len(self.keys) or not len(ids):
            return np.zeros(len(ids))
        wanted = position * N_FEATURES + ids
        at = np.minimum(np.searchsorted(self.keys, wanted), len(self.keys) - 1)
        found: NDArray[np.float64] = np.where(
            self.keys[at] == wanted, self.weights[at], 0.0
        ).astype(np.float64)
        return found


class LexicalIndex:
    """Builds (and caches) the :class:`LexicalView` of each index snapshot.

    Thread-safe: queries on any thread may ask for a view; at most one build runs,
    and a finished view is immutable.
    """

    def __init__(self) -> None:
        self._features: dict[str, tuple[NDArray[np.int64], NDArray[np.float32]]] = {}
        self._view: LexicalView | None = None
        self._lock = threading.Lock()
        hold_across_fork(self, LEXICAL)  # held while a view is built

    def features(self, texts: Sequence[str]) -> list[tuple[NDArray[np.int64], NDArray[np.float32]]]:
        """:func:`text_features` of each text, from the cache of the utterances' features
        (filled by the last :meth:`view`) where it has them: a fit over the routes' own
        utterances does not tokenise them again. Other texts are tokenised, not cached."""
        # Read without the lock: a build adds entries or swaps in a pruned dict, and a
        # text missing from the one read is simply tokenised.
        cache = self._features
        return [cache.get(text) or text_features(text) for text in texts]

    def view(self, snapshot: Snapshot) -> LexicalView:
        """The view of ``snapshot`` (built on first use of each snapshot version)."""
        view = self._view
        if view is not None and view.version == snapshot.version:
            return view
        with self._lock:
            view = self._view
            if view is None or view.version != snapshot.version:
                view = self._build(snapshot)
                self._view = view
            return view

    def _build(self, snapshot: Snapshot) -> LexicalView:
        n_routes = snapshot.n_routes
        row_ids: list[NDArray[np.int64]] = []
        row_weights: list[NDArray[np.float32]] = []
        row_route: list[int] = []
        live_texts: set[str] = set()
        for pos, start in enumerate(snapshot.route_starts.tolist()):
            end = snapshot.route_starts[pos + 1] if pos + 1 < n_routes else len(snapshot.seg_order)
            for seg in snapshot.seg_order[start:end].tolist():
                for row in range(int(snapshot.seg_starts[seg]), int(snapshot.seg_ends[seg])):
                    text = snapshot.texts[row]
                    live_texts.add(text)
                    feats = self._features.get(text)
                    if feats is None:
                        feats = text_features(text)
                        self._features[text] = feats
                    row_ids.append(feats[0])
                    row_weights.append(feats[1])
                    row_route.append(pos)
        # Forget the features of texts no longer in any route (bounded memory).
        if len(self._features) > len(live_texts):
            self._features = {t: f for t, f in self._features.items() if t in live_texts}
        lengths = np.array([len(ids) for ids in row_ids], dtype=np.int64)
        ids = np.concatenate(row_ids) if row_ids else np.zeros(0, dtype=np.int64)
        tf = np.concatenate(row_weights) if row_weights else np.zeros(0, dtype=np.float32)
        n_rows = len(row_ids)
        df = np.bincount(ids, minlength=N_FEATURES)
        idf = (np.log((1.0 + n_rows) / (1.0 + df)) + 1.0).astype(np.float32)
        values = (tf * idf[ids]).astype(np.float64)
        row_of = np.repeat(np.arange(n_rows), lengths)
        norms = np.sqrt(np.bincount(row_of, weights=values * values, minlength=n_rows))
        values /= np.where(norms > 0, norms, 1.0)[row_of]
        # Sum the unit rows of each route: merge equal (route, feature) pairs.
        route = np.array(row_route, dtype=np.int64)[row_of]
        key = route * N_FEATURES + ids
        keys, inverse = np.unique(key, return_inverse=True)
        summed = np.bincount(inverse, weights=values, minlength=len(keys))
        k_route = keys // N_FEATURES
        route_norm = np.sqrt(np.bincount(k_route, weights=summed * summed, minlength=n_routes))
        weight = summed / np.where(route_norm > 0, route_norm, 1.0)[k_route]
        return LexicalView(
            version=snapshot.version,
            idf=idf,
            keys=keys,
            weights=weight.astype(np.float32),
            route_norm=route_norm,
            n_routes=n_routes,
        )
