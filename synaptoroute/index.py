"""The route index: a lazily compiled matrix of utterance vectors (pure numpy).

Adding utterances appends to a pending list in time proportional to what was added.
The next query *compiles* once: pending rows are written into the free tail of a
capacity-doubling buffer (amortised O(1) per row, never a copy of the whole matrix
per add). Deleting marks rows dead; dead rows are compacted away once they are a
quarter of the buffer. Each compile publishes an immutable :class:`Snapshot`, so a
query in another thread always sees a complete matrix.

A route's rows form one or more contiguous *segments*; per-route maxima come from
two ``np.maximum.reduceat`` passes, so scoring is one matrix product plus O(n).

Why one module over 400 lines: :class:`Snapshot` reads the segment layout that
:class:`RouteIndex` compiles, and every scoring path (exact, int8 pre-filter, graph,
all routes with leave-one-out) must agree on it; the int8 scan and the graph live in
:mod:`~synaptoroute.int8` and :mod:`~synaptoroute.ann`.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from ._buffers import buffer_capacity, take_buffer
from ._cpu import process_cpus
from ._fork import INDEX, LEAF, cached_property, hold_across_fork, keep_for_good
from .ann import (  # stdlib and numpy only: usearch loads on use
    CLOSE_MARGIN,
    DEFAULT_DEPTH,
    FEED_CHUNK,
    FEED_TAIL_MAX,
    HARD_CONTRAST,
    LOST_ROUND,
    RESCORE_BUDGET,
    AnnUnavailableError,
    ReadGate,
    candidate_routes,
    rounds_for,
)
from .int8 import Int8Scan
from .int8 import build as _build_int8
from .models import SCORE_MIN

if TYPE_CHECKING:
    from .ann import AnnGraph

__all__ = ["Aggregation", "IndexStats", "RouteIndex", "RouteLayout", "RouteScores", "Snapshot"]

Aggregation = Literal["max", "mean_topk", "centroid"]
#: (vector index, matrix row) pairs: rows left out of those vectors' scores.
Pairs = tuple[NDArray[np.int64], NDArray[np.int64]]
_NEG = np.float32(-np.inf)
#: Queries per matrix product when scoring many vectors against every row.
_CHUNK = 1024
_CANONICAL_BLOCK = 4096  # matrix rows gathered per product (see Snapshot.products_by_name)


@dataclass
class IndexStats:
    """Counters that tests and benchmarks read (no timing involved)."""

    compiles: int = 0
    full_compiles: int = 0  # compiles that rebuilt the segment arrays (not an append)
    full_rebuilds: int = 0  # compactions: every live row copied into a new buffer
    renumbers: int = 0  # live routes given ids 0..k-1 again, deleted routes' ids dropped
    reallocations: int = 0  # capacity doublings
    rows_copied: int = 0  # rows moved by rebuilds and reallocations
    rows_written: int = 0  # pending rows written into the buffer tail
    rows_taken: int = 0  # rows of a store's handed-over buffer taken without a copy
    int8_builds: int = 0  # int8 copies of the matrix made for the pre-filter
    int8_queries: int = 0  # queries scored through the int8 copy
    rows_rescored: int = 0  # rows those queries re-scored exactly in float32
    ann_builds: int = 0  # approximate graphs built from the matrix (docs/scale.md)
    ann_cache_loads: int = 0  # graphs loaded from the cache file instead
    ann_rows_fed: int = 0  # rows inserted into a serving graph
    ann_queries: int = 0  # queries answered from the graph's candidates
    ann_searches: int = 0  # graph searches run (rounds of ann.rounds_for, all queries)
    ann_fallbacks: int = 0  # queries the graph could not certify: scored exactly
    ann_lost: int = 0  # graph searches below the sample's best row (AnnGraph.sample_stats)
    ann_hard: int = 0  # certified first rounds confirmed by the second (ann.HARD_CONTRAST)


@dataclass(frozen=True)
class RouteScores:
    """Scores of the best routes for one query, best first."""

    route_ids: NDArray[np.int64]
    scores: NDArray[np.float32]
    nearest_rows: NDArray[np.int64]  # best utterance row of each route, -1 for centroid
    # Similarity of the query's k-th nearest live utterance, when Snapshot.score was
    # asked for it and its path scored every row (None: not computed).
    knn: float | None = None


@dataclass(frozen=True)
class RouteLayout:
    """Where each live route's utterance rows are in a snapshot's matrix."""

    names: list[str]  # route name of each position (positions follow live_routes)
    row_pos: NDArray[np.int64]  # matrix row -> route position, -1 for dead rows
    route_rows: list[NDArray[np.intp]]  # the rows of each position
    text_rows: dict[str, list[int]]  # a live utterance's text -> its rows

    @cached_property
    def live(self) -> NDArray[np.intp]:
        """The rows of live utterances, in matrix order."""
        return np.flatnonzero(self.row_pos >= 0)

    @cached_property
    def position(self) -> dict[str, int]:
        """Each live route name's position (built once per snapshot)."""
        return {name: i for i, name in enumerate(self.names)}

    def hidden_pairs(
        self, texts: Sequence[str], also: Pairs | None = None
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """(text index, matrix row) of every row that holds one of ``texts``, and the
        pairs ``also`` (rows found otherwise to be the same as a text), each pair once."""
        q_idx, r_idx = [], []
        for i, text in enumerate(texts):
            for row in self.text_rows.get(text, ()):
                q_idx.append(i)
                r_idx.append(row)
        q = np.array(q_idx, dtype=np.int64)
        r = np.array(r_idx, dtype=np.int64)
        if also is None or not len(also[0]):
            return q, r
        n_rows = len(self.row_pos)
        keys = np.unique(np.concatenate([q, also[0]]) * n_rows + np.concatenate([r, also[1]]))
        q, r = np.divmod(keys, n_rows)
        return q, r


_NO_ROUTES = RouteScores(
    np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
)
# Below this many rows the float32 product is already a fraction of the encoder's time.
INT8_MIN_ROWS = 4096
_log = logging.getLogger("synaptoroute.index")

# Background work (int8 copies, graph builds and feeds) runs in daemon threads, inside
# C++ calls that release the GIL. A daemon thread that returns from one while the
# interpreter finalises is unwound by pthread_exit through C++ frames, and the process
# aborted ("terminate called without an active exception", status 134): a script or a
# CLI command on a store past ann_threshold that exits while its graph builds. So at
# exit the work is told to stop (graph builds and feeds stop at their next chunk) and
# joined, before finalisation begins.
_STOPPING = threading.Event()
_BACKGROUND: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
#: Seconds the interpreter waits at exit for background work to stop.
EXIT_WAIT = 60.0


def _start_background(target: Any, name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    _BACKGROUND.add(thread)
    thread.start()
    return thread


def stop_background(timeout: float = EXIT_WAIT) -> bool:
    """Tell background index work to stop and wait for it (run at interpreter exit).

    Returns:
        ``True`` if every background thread ended within ``timeout`` seconds.
    """
    _STOPPING.set()
    deadline = time.monotonic() + timeout
    for thread in list(_BACKGROUND):
        if thread is not threading.current_thread():
            thread.join(max(deadline - time.monotonic(), 0.0))
    return not any(t.is_alive() for t in _BACKGROUND)


def stopping() -> bool:
    """Whether background index work has been told to stop."""
    return _STOPPING.is_set()


atexit.register(stop_background)


@dataclass(frozen=True)
class Snapshot:
    """An immutable, compiled view of the index. Safe to read from any thread."""

    matrix: NDArray[np.float32]  # (n, dim) view; rows of dead utterances are ignored
    seg_starts: NDArray[np.intp]  # start row of each segment
    seg_ends: NDArray[np.intp]
    seg_route: NDArray[np.int64]  # route id per segment, -1 for dead rows
    seg_order: NDArray[np.intp]  # live segments sorted by route id
    route_starts: NDArray[np.intp]  # into seg_order: first segment of each live route
    live_routes: NDArray[np.int64]  # route id for each entry of route_starts
    centroids: NDArray[np.float32]  # (len(live_routes), dim)
    texts: list[str]
    names: Sequence[str]  # route id -> name (ids of deleted routes too)
    aggregation: Aggregation
    top_k: int
    version: int
    int8: Int8Scan | None = None  # covers the first int8.n rows; the rest scored exactly
    # Each row's route id (-1: dead), and each route id's position in live_routes (-1:
    # not live); row_pos combines them.
    row_route: NDArray[np.intp] = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    route_pos: NDArray[np.intp] = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    stats: IndexStats | None = None  # the index's counters (int8 queries count here)
    ann: AnnGraph | None = None  # graph over the leading rows ("max" only)
    ann_rounds: tuple[tuple[int, int], ...] = rounds_for(DEFAULT_DEPTH)
    # Best two routes closer than this after the graph's rounds: scored exactly.
    ann_margin: float = CLOSE_MARGIN
    # A certified first round whose best row stands fewer deviations than this above
    # the mean of the graph's sample gets the second round (0: never).
    ann_contrast: float = HARD_CONTRAST
    # (n_routes, 2): each live route's first and past-last row when its rows are one
    # segment (the usual case: a route added at once), -1 when they are split. Kept
    # by the compile (appended for new routes), not derived per snapshot: O(routes).
    route_spans: NDArray[np.intp] = field(default_factory=lambda: np.zeros((0, 2), dtype=np.intp))

    @property
    def n_routes(self) -> int:
        """Number of live routes."""
        return len(self.live_routes)

    @property
    def blas_rows(self) -> int:
        """The most rows a query's float32 BLAS products cover (0: the int8 scan covers
        all); the router sizes its BLAS threads by it (``_cpu.blas_threads``)."""
        if self.aggregation == "centroid":
            return len(self.centroids)
        exact = len(self.matrix) - self.int8.n if self.int8 is not None else len(self.matrix)
        if self.ann is not None:
            # The lost-search sample and the rows not held yet; a query the graph cannot
            # certify takes the exact path's products.
            graph = self.ann.sample_rows + max(len(self.matrix) - self.ann.covered, 0)
            return max(graph, exact)
        return exact

    @cached_property
    def live_rows(self) -> NDArray[np.bool_]:
        """Whether each row of ``matrix`` is a live utterance (computed once per snapshot)."""
        return self.row_pos >= 0

    @cached_property
    def all_live(self) -> bool:
        """Whether every row of ``matrix`` is live (no deleted rows awaiting compaction)."""
        return bool(self.live_rows.all())

    @cached_property
    def row_pos(self) -> NDArray[np.intp]:
        """Each row's route position in ``live_routes``, ``-1`` for dead rows (computed
        once per snapshot; the query paths look up only the rows they score)."""
        return self.positions(np.arange(len(self.matrix)))

    def positions(self, rows: NDArray[np.integer[Any]]) -> NDArray[np.intp]:
        """The route position of each of ``rows`` (``-1``: a dead row)."""
        rids = self.row_route[rows]
        return np.where(rids >= 0, self.route_pos[rids], -1)

    def route_max(self, sims: NDArray[np.float32]) -> NDArray[np.float32]:
        """Per-live-route maximum similarity, shape ``(m, n_routes)``."""
        seg_max = np.maximum.reduceat(sims, self.seg_starts, axis=1)
        return np.maximum.reduceat(seg_max[:, self.seg_order], self.route_starts, axis=1)

    @cached_property
    def _live_positions(self) -> dict[str, int]:
        # Built on first use only (O(routes)): route_score's callers are rare.
        return {str(self.names[rid]): pos for pos, rid in enumerate(self.live_routes.tolist())}

    def route_score(self, query: NDArray[np.float32], name: str) -> RouteScores | None:
        """The live route ``name``'s exact score for ``query`` alone, by the aggregation
        (with its nearest row), or ``None`` if no live route has that name. It costs
        the route's rows, not the index's."""
        pos = self._live_positions.get(name)
        if pos is None:
            return None
        rid = self.live_routes[pos : pos + 1]
        if self.aggregation == "centroid":
            value = np.float32(self.centroids[pos] @ query)
            return RouteScores(rid, np.array([value], np.float32), np.full(1, -1, np.int64))
        rows = self._route_rows(pos)
        vals = self.matrix[rows] @ query
        nearest = np.array([rows[int(np.argmax(vals))]], dtype=np.int64)
        if self.aggregation == "max":
            value = np.float32(vals.max())
        else:
            t = min(self.top_k, len(vals))
            value = np.float32(np.partition(vals, len(vals) - t)[len(vals) - t :].mean())
        return RouteScores(rid, np.array([value], np.float32), nearest)

    def _route_rows(self, pos: int) -> NDArray[np.intp]:
        first, last = _group(self.route_starts, len(self.seg_order), pos)
        segs = self.seg_order[first:last]
        return np.concatenate([np.arange(self.seg_starts[s], self.seg_ends[s]) for s in segs])

    @cached_property
    def layout(self) -> RouteLayout:
        """Each live route's rows and each live text's rows (computed once per snapshot)."""
        n = len(self.matrix)
        row_pos = self.row_pos.astype(np.int64)
        n_routes = self.n_routes
        order = np.argsort(row_pos, kind="stable")
        counts = np.bincount(row_pos[row_pos >= 0], minlength=n_routes)
        live = order[n - int(counts.sum()) :]
        route_rows = np.split(live, np.cumsum(counts)[:-1]) if n_routes else []
        text_rows: dict[str, list[int]] = {}
        for row in live.tolist():
            text_rows.setdefault(self.texts[row], []).append(row)
        names = [str(self.names[int(rid)]) for rid in self.live_routes.tolist()]
        return RouteLayout(names, row_pos, [r.astype(np.intp) for r in route_rows], text_rows)

    def all_scores(
        self, vectors: NDArray[np.float32], leave_out: Sequence[str] | None = None
    ) -> NDArray[np.float32]:
        """``(n, n_routes)``: every live route's score for each vector, by the aggregation.

        Args:
            vectors: one vector per row.
            leave_out: a text per vector; the rows holding that text are left out of
                that vector's scores (so a route's own utterance is judged as if it
                were not there). A route left with no row scores ``SCORE_MIN``.
        """
        return self.scores_and_knn(vectors, leave_out)[0]

    def scores_and_knn(
        self,
        vectors: NDArray[np.float32],
        leave_out: Sequence[str] | None = None,
        k: int = 0,
        knn_rows: int | None = None,
        also: Pairs | None = None,
    ) -> tuple[NDArray[np.float32], NDArray[np.float64] | None]:
        """:meth:`all_scores`, and with ``k > 0`` also :meth:`knn_similarity` of the first
        ``knn_rows`` vectors (all by default) with the same ``leave_out``, from the same
        products (a fit needs both; one pass over the matrix instead of two). ``also``:
        more (vector index, matrix row) pairs left out (with ``leave_out``).

        Returns:
            The scores, and the ``k``-th neighbour similarities (``None`` when ``k``
            is 0).
        """
        layout = self.layout
        n = len(vectors)
        m = n if knn_rows is None else min(knn_rows, n)
        if leave_out is None:
            hide_q = hide_r = np.zeros(0, dtype=np.int64)
        else:
            hide_q, hide_r = layout.hidden_pairs(leave_out, also)
        if self.aggregation == "centroid":  # no per-row products to share
            cut = None if leave_out is None else leave_out[:m]
            near = None if also is None else (also[0][also[0] < m], also[1][also[0] < m])
            knn = self.knn_similarity(vectors[:m], k, cut, near) if k else None
            return self._centroid_scores(vectors, hide_q, hide_r), knn
        knn_out = np.full(m, -1.0) if k else None
        out = np.empty((n, self.n_routes), dtype=np.float32)
        for start in range(0, n, _CHUNK):
            stop = min(start + _CHUNK, n)
            sims = self.products_by_name(vectors[start:stop])
            sel = (hide_q >= start) & (hide_q < stop)
            sims[hide_q[sel] - start, hide_r[sel]] = -np.inf
            if self.aggregation == "max":
                out[start:stop] = self.route_max(sims)
            else:
                for p, rows in enumerate(layout.route_rows):
                    vals = sims[:, rows]
                    t = min(self.top_k, len(rows))
                    top = np.partition(vals, len(rows) - t, axis=1)[:, len(rows) - t :]
                    finite = np.isfinite(top)
                    count = finite.sum(axis=1)
                    total = np.where(finite, top, 0.0).sum(axis=1)
                    out[start:stop, p] = np.where(
                        count > 0, total / np.maximum(count, 1), SCORE_MIN
                    )
            if knn_out is not None and start < m:
                # The scores are taken: the products can be partitioned in place.
                knn_out[start : min(stop, m)] = self._kth_live(sims[: min(stop, m) - start], k)
        out[~np.isfinite(out)] = SCORE_MIN
        return out, knn_out

    def products_by_name(self, vectors: NDArray[np.float32]) -> NDArray[np.float32]:
        """``vectors @ matrix.T`` (``-inf`` in dead rows' columns), each product computed
        with its matrix row at a place that follows (route name, text), not the order
        routes were added: BLAS's blocked products round a row's last bit by where it
        sits (AVX-512 kernels do), and a fit must not depend on that order."""
        rows = self.canonical_rows
        out = np.full((len(vectors), len(self.matrix)), -np.inf, dtype=np.float32)
        for first in range(0, len(rows), _CANONICAL_BLOCK):
            cols = rows[first : first + _CANONICAL_BLOCK]
            out[:, cols] = vectors @ self.matrix[cols].T
        return out

    @cached_property
    def canonical_rows(self) -> NDArray[np.intp]:
        """The live rows by route name, then text (computed once per snapshot)."""
        layout = self.layout
        order = sorted(
            (layout.names[pos], self.texts[row], row)
            for pos, rows in enumerate(layout.route_rows)
            for row in rows.tolist()
        )
        return np.array([row for _, _, row in order], dtype=np.intp)

    def _centroid_scores(
        self,
        vectors: NDArray[np.float32],
        hide_q: NDArray[np.int64],
        hide_r: NDArray[np.int64],
    ) -> NDArray[np.float32]:
        # A hidden row is subtracted from its route's sum, and the rest renormalised.
        out: NDArray[np.float32] = np.asarray(vectors @ self.centroids.T, dtype=np.float32)
        if not len(hide_q):
            return out
        layout = self.layout
        matrix = self.matrix.astype(np.float64)
        sums = np.stack([matrix[rows].sum(axis=0) for rows in layout.route_rows])
        pos = layout.row_pos[hide_r]
        n_routes = len(layout.names)
        keys, inverse = np.unique(hide_q * n_routes + pos, return_inverse=True)
        removed = np.zeros((len(keys), matrix.shape[1]))
        np.add.at(removed, inverse, matrix[hide_r])
        q, p = np.divmod(keys, n_routes)
        rest = sums[p] - removed
        rest_norm = np.linalg.norm(rest, axis=1)
        sim = np.einsum("ij,ij->i", vectors[q].astype(np.float64), rest)
        out[q, p] = np.where(rest_norm > 1e-9, sim / np.maximum(rest_norm, 1e-12), SCORE_MIN)
        return out

    def knn_similarity(
        self,
        vectors: NDArray[np.float32],
        k: int,
        leave_out: Sequence[str] | None = None,
        also: Pairs | None = None,
    ) -> NDArray[np.float64]:
        """Similarity of each vector's ``k``-th nearest live utterance (Sun et al. 2022).

        Args:
            vectors: one vector per row.
            k: which neighbour.
            leave_out: a text per vector whose rows are not its neighbours.
            also: more (vector index, matrix row) pairs that are not (with ``leave_out``).

        Returns:
            ``(n,)`` similarities: with fewer than ``k`` live utterances, the farthest
            one's; ``-1.0`` where there is none (left out included).
        """
        # Per query (leave_out None) only the cached live-row mask is read: no layout.
        out = np.full(len(vectors), -1.0)
        if min(k, self.n_live) == 0:
            return out
        if leave_out is None:
            hide_q = hide_r = np.zeros(0, dtype=np.int64)
        else:
            hide_q, hide_r = self.layout.hidden_pairs(leave_out, also)
        for start in range(0, len(vectors), _CHUNK):
            stop = min(start + _CHUNK, len(vectors))
            sims = vectors[start:stop] @ self.matrix.T
            sel = (hide_q >= start) & (hide_q < stop)
            sims[hide_q[sel] - start, hide_r[sel]] = -np.inf
            out[start:stop] = self._kth_live(sims, k)
        return out

    @cached_property
    def n_live(self) -> int:
        """Number of live rows of ``matrix`` (computed once per snapshot)."""
        return len(self.matrix) if self.all_live else int(self.live_rows.sum())

    def _kth_live(self, sims: NDArray[np.float32], k: int) -> NDArray[np.float64]:
        """Each row's ``k``-th largest value over the live columns of ``sims`` (products
        with every matrix row; left-out pairs already ``-inf``), ``-1.0`` where it is
        not finite; the farthest live value with fewer than ``k`` live rows. ``sims``
        is partitioned in place: a partitioned copy would cost as much again."""
        kk = min(k, self.n_live)
        if kk == 0:
            return np.full(len(sims), -1.0)
        near = sims if self.all_live else sims[:, self.live_rows]
        near.partition(self.n_live - kk, axis=1)
        top = near[:, self.n_live - kk]
        return np.where(np.isfinite(top), top, -1.0)

    def score(
        self, queries: NDArray[np.float32], k: int, *, exact: bool = False, knn: int = 0
    ) -> list[RouteScores]:
        """Top-``k`` routes for each row of ``queries`` under the snapshot's aggregation.

        Args:
            queries: query vectors, one per row.
            k: routes wanted per query.
            exact: score without the approximate graph even if the snapshot has one.
            knn: when positive, also each query's ``knn``-th nearest live utterance
                similarity (:attr:`RouteScores.knn`, what :meth:`knn_similarity`
                gives) from the paths that score every row anyway (the float32 and
                int8 scans), or from the graph's candidates when their horizon
                certifies it; otherwise (and with ``centroid``) it is ``None``.

        Returns:
            One :class:`RouteScores` per query.
        """
        m = len(queries)
        if self.n_routes == 0:
            return [_NO_ROUTES] * m
        k = min(k, self.n_routes)
        if (
            self.ann is not None
            and not exact
            and self.aggregation == "max"
            and len(self.matrix) - self.ann.covered <= FEED_TAIL_MAX
        ):
            return self._score_ann(queries, k, knn)
        # BLAS rounds a row's product by where the row sits (its kernel's blocks), so
        # the same utterance in two routes scored an ulp apart and their tie went by
        # row blocking, not by place, and changed once the int8 path took over. The
        # rows that could rank within the products' rounding (_rounding) are scored
        # again as that path scores them, which no position changes.
        rounding = _rounding(self.matrix.shape[1])
        if self.aggregation == "centroid":
            sims = _similarities(self.centroids, queries)
            out = []
            for query, row in zip(queries, sims, strict=True):
                top, scores = _top_rescored(row, k, rounding, self.centroids, query)
                out.append(
                    RouteScores(self.live_routes[top], scores, np.full(k, -1, dtype=np.int64))
                )
            return out
        if self.int8 is not None:
            out = []
            for query in queries:
                approx, eps, route_max = self._approximate(query)
                if self.aggregation == "max":
                    ranked = self._max_prefiltered(approx, eps, route_max, query, k)
                else:
                    ranked = self._mean_topk(approx, route_max, k, eps, query)
                out.append(self._with_knn(ranked, approx, eps, query, knn))
            return out
        sims = _similarities(self.matrix, queries)
        maxima = self.route_max(sims)
        results = []
        for qi, query in enumerate(queries):
            if self.aggregation == "mean_topk":
                ranked = self._mean_topk(sims[qi], maxima[qi], k, query=query, rounding=rounding)
            else:
                ranked = self._max_prefiltered(
                    sims[qi], rounding, maxima[qi], query, k, counted=False
                )
            results.append(self._with_knn(ranked, sims[qi], 0.0, query, knn))
        return results

    def _with_knn(
        self,
        ranked: RouteScores,
        values: NDArray[np.float32],
        eps: float,
        query: NDArray[np.float32],
        k: int,
    ) -> RouteScores:
        """``ranked`` with the exact ``k``-th largest live score (``k`` > 0), from every
        row's ``values``, each within ``eps`` of its exact score: only rows that could
        be among the ``k`` largest are re-scored."""
        if k <= 0:
            return ranked
        kk = min(k, self.n_live)
        if kk == 0:
            return replace(ranked, knn=-1.0)
        vals = values if self.all_live else np.where(self.live_rows, values, -np.inf)
        kth = float(np.partition(vals, len(vals) - kk)[len(vals) - kk])
        if eps > 0:
            # The k-th largest exact score is at least kth - eps, so each row among the
            # k largest scores at least kth - 2 eps here.
            rows = np.flatnonzero(vals >= kth - 2 * eps)
            self._count_rescored(len(rows))
            exact = (self.matrix[rows] * query).sum(axis=1)  # not BLAS, as below
            kth = float(np.partition(exact, len(exact) - kk)[len(exact) - kk])
        return replace(ranked, knn=kth)

    def _score_ann(self, queries: NDArray[np.float32], k: int, knn: int) -> list[RouteScores]:
        assert self.ann is not None
        # Below its floor a search is lost; the margin absorbs rounding. Below its bar
        # a certified first round is confirmed by the second.
        contrast = self.ann_contrast
        answers = [
            self._max_ann(
                query,
                best - 1e-5,
                mean + contrast * spread if contrast > 0 else -np.inf,  # <= 0: off
                k,
                knn,
            )
            for query, (best, mean, spread) in zip(
                queries, self.ann.sample_stats(queries).tolist(), strict=True
            )
        ]
        missing = [i for i, answer in enumerate(answers) if answer is None]
        if self.stats is not None:  # unlocked: counters for tests and benchmarks
            self.stats.ann_queries += len(answers) - len(missing)
            self.stats.ann_fallbacks += len(missing)
        if missing:
            exact = self.score(queries[missing], k, exact=True, knn=knn)
            for i, answer in zip(missing, exact, strict=True):
                answers[i] = answer
        return [answer for answer in answers if answer is not None]

    def _max_ann(
        self, query: NDArray[np.float32], floor: float, bar: float, k: int, knn: int = 0
    ) -> RouteScores | None:
        # The graph proposes rows; they are re-scored in float32 (not BLAS, as in the
        # int8 path) with the rows it does not hold yet, and the answer stands only if
        # the horizon certifies it (ann.candidate_routes) and the search was not lost
        # (ann.AnnGraph.sample_stats: ``floor``); else the caller scores the query exactly. A
        # first round whose best row is below ``bar`` (a query in a sparse region,
        # ann.HARD_CONTRAST) is confirmed by the second round even when certified.
        assert self.ann is not None
        graph = self.ann
        n = len(self.matrix)
        covered = min(graph.covered, n)  # rows past it: scored exactly below
        lost = False
        for round_no, (count, depth) in enumerate(self.ann_rounds):
            if round_no >= LOST_ROUND and not lost:
                return None  # not lost, just uncertain: only the exact path settles it
            keys, sims = graph.search(query, count, depth)
            if self.stats is not None:  # unlocked: counters for tests and benchmarks
                self.stats.ann_searches += 1
            complete = len(keys) < count
            if covered == n and graph.covered == covered:
                # The usual case, without a numpy call to spare (each costs several
                # microseconds after the search): the graph held exactly this
                # snapshot's rows during the search (it only grows, under its lock).
                rows, approx, held = keys, sims, len(keys)
            else:  # keys past covered came after this snapshot; rows past it are not held
                inside = keys < covered
                tail = np.arange(covered, n, dtype=np.int64)
                rows = np.concatenate([keys[inside], tail])
                approx = np.concatenate([sims[inside], np.full(len(tail), np.nan, np.float32)])
                held = int(inside.sum())
            pos = self.positions(rows)  # -1: a dead row
            exact = (self.matrix[rows] * query).sum(axis=1)
            self._count_rescored(len(rows))
            # Dead rows count here: the question is where the search went, not the answer.
            best_found = float(exact[:held].max()) if held else -np.inf
            lost = not complete and (not held or best_found < floor)
            if lost:
                if self.stats is not None:
                    self.stats.ann_lost += 1
                continue
            order, horizon = candidate_routes(exact, approx, pos, complete)
            if len(order) >= max(k, 2):
                # Two routes at least: a second within ann_margin sends the query to the
                # exact path (BENCHMARKS.md, "The close margin").
                top = self._full_routes(order[: max(k, 2) + 2], query, max(k, 2), RESCORE_BUDGET)
                if top.scores[-1] > horizon:
                    if top.scores[0] - top.scores[1] < self.ann_margin:
                        # Certified near-tie: a deeper round finds the same two routes
                        # with the same gap, so it would only delay the exact path.
                        return None
                    if round_no == 0 and not complete and best_found < bar:
                        if self.stats is not None:
                            self.stats.ann_hard += 1
                        continue
                    return RouteScores(
                        top.route_ids[:k],
                        top.scores[:k],
                        top.nearest_rows[:k],
                        _kth_above(exact[pos >= 0], knn, horizon) if knn > 0 else None,
                    )
            if complete:
                return None
        return None

    def _full_routes(
        self, positions: list[int], query: NDArray[np.float32], k: int, budget: int
    ) -> RouteScores:
        # The graph may have found a route but not its best row: every row of the
        # candidate routes is re-scored (best candidates first, the first k always,
        # the others within the budget), so their scores are their exact maxima.
        best: list[tuple[float, int, int]] = []
        scored = 0
        for p, (start, end) in zip(positions, self.route_spans[positions].tolist(), strict=True):
            rows = None if start >= 0 else self._route_rows(p)  # split: gathered
            size = end - start if rows is None else len(rows)
            if len(best) >= k and size > budget:
                break
            block = self.matrix[start:end] if rows is None else self.matrix[rows]
            sims = (block * query).sum(axis=1)  # not BLAS, as in the int8 path
            i = int(sims.argmax())
            best.append((float(sims[i]), p, start + i if rows is None else int(rows[i])))
            budget -= size
            scored += size
        self._count_rescored(scored)
        best.sort(key=lambda item: (-item[0], item[1]))
        best = best[:k]
        return RouteScores(
            self.live_routes[[p for _, p, _ in best]],
            np.array([score for score, _, _ in best], dtype=np.float32),
            np.array([row for _, _, row in best], dtype=np.int64),
        )

    def _approximate(
        self, query: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], float, NDArray[np.float32]]:
        """Every row's int8 score (exact past the int8 copy), their error bound, and
        each live route's approximate maximum."""
        assert self.int8 is not None
        if self.stats is not None:
            self.stats.int8_queries += 1
        approx, eps = self.int8.approx(query)
        if len(self.matrix) > self.int8.n:  # rows added since the int8 copy: exact
            approx = np.concatenate([approx, self.matrix[self.int8.n :] @ query])
        seg_max = np.maximum.reduceat(approx, self.seg_starts)
        return approx, eps, np.maximum.reduceat(seg_max[self.seg_order], self.route_starts)

    def _max_prefiltered(
        self,
        approx: NDArray[np.float32],
        eps: float,
        route_max: NDArray[np.float32],
        query: NDArray[np.float32],
        k: int,
        *,
        counted: bool = True,
    ) -> RouteScores:
        # Exact top-k of the max aggregation. Every approximate score is within eps of
        # the exact one, so a route's true maximum lies within eps of its approximate
        # maximum, and the k-th largest approximate maximum minus eps is a floor for
        # the k-th best route. A row is re-scored only if it could reach that floor
        # *and* could be its own route's maximum: typically a few rows per query.
        # Right after the encoder has run every numpy call is slow (cold caches), so
        # the few surviving rows are ranked in plain Python.
        two = 2 * eps
        kth = np.partition(route_max, -k)[-k]
        rows = np.flatnonzero(approx >= kth - two)
        pos = self.positions(rows)  # dead rows have position -1: their bar is +inf
        keep = approx[rows] >= np.append(route_max - two, np.inf)[pos]
        rows, pos = rows[keep], pos[keep]
        if counted:
            self._count_rescored(len(rows))
        # Not BLAS: re-scoring a few rows must not wake BLAS threads (see the router).
        exact = (self.matrix[rows] * query).sum(axis=1)
        if len(rows) > _PLAIN_RANKING_ROWS:  # many routes tied: numpy ranks them
            by_score = np.lexsort((rows, -exact))  # best first, ties by the lowest row
            # Each route's first row in that order is its best.
            firsts = by_score[np.unique(pos[by_score], return_index=True)[1]]
            top_rows = firsts[np.lexsort((pos[firsts], -exact[firsts]))][:k]
            return RouteScores(
                self.live_routes[pos[top_rows]],
                exact[top_rows].astype(np.float32),
                rows[top_rows].astype(np.int64),
            )
        best: dict[int, tuple[float, int]] = {}  # route position -> (score, row)
        for row, p, score in zip(rows.tolist(), pos.tolist(), exact.tolist(), strict=True):
            if p not in best or score > best[p][0]:  # ties keep the lowest row
                best[p] = (score, row)
        top = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))[:k]
        return RouteScores(
            self.live_routes[[p for p, _ in top]],
            np.array([score for _, (score, _) in top], dtype=np.float32),
            np.array([row for _, (_, row) in top], dtype=np.int64),
        )

    def _count_rescored(self, rows: int) -> None:
        if self.stats is not None:  # unlocked: counters for tests and benchmarks
            self.stats.rows_rescored += rows

    def _mean_topk(
        self,
        values: NDArray[np.float32],
        maxima: NDArray[np.float32],
        k: int,
        eps: float = 0.0,
        query: NDArray[np.float32] | None = None,
        *,
        rounding: float = 0.0,
    ) -> RouteScores:
        # ``values`` are every row's exact scores (eps 0), or int8 scores within eps of
        # them, with ``maxima`` each route's maximum of ``values``. A route's top-t mean
        # never exceeds its exact maximum (at most maxima + eps), so visiting routes by
        # descending maximum and stopping once that bound falls under the k-th best
        # mean found is exact and touches few routes. With eps > 0, a row can be in a
        # route's exact top t only if its value is within 2 eps of the route's t-th
        # largest value (order statistics move by at most eps): only those rows are
        # re-scored, exactly. ``rounding``: the values are BLAS products, each within
        # it of a position-independent one; routes whose means lie that close to
        # another's are scored again so (_rescored_ties), the rest keep their order.
        order = np.argsort(-maxima, kind="stable")
        best: list[tuple[float, int, int]] = []  # (-mean, route position, nearest row)
        room = eps + 2 * rounding
        for pos in order.tolist():
            if len(best) >= k and maxima[pos] + room < -best[k - 1][0]:
                break
            rows = self._route_rows(pos)
            vals = values[rows]
            t = min(self.top_k, len(vals))
            if eps > 0:
                assert query is not None
                rows = rows[vals >= np.partition(vals, len(vals) - t)[len(vals) - t] - 2 * eps]
                self._count_rescored(len(rows))
                vals = (self.matrix[rows] * query).sum(axis=1)  # not BLAS, as above
            bisect.insort(best, self._top_mean(pos, rows, vals))  # ties by place
            if len(best) > k:  # what can no longer rank goes (a sort of all was O(n^2))
                floor = -best[k - 1][0] - 2 * rounding
                while len(best) > k and -best[-1][0] < floor:
                    best.pop()
        if rounding > 0:
            assert query is not None
            best = self._rescored_ties(best, rounding, query)
        best = best[:k]
        return RouteScores(
            self.live_routes[[p for _, p, _ in best]],
            np.array([-s for s, _, _ in best], dtype=np.float32),
            np.array([r for _, _, r in best], dtype=np.int64),
        )

    def _rescored_ties(
        self, best: list[tuple[float, int, int]], rounding: float, query: NDArray[np.float32]
    ) -> list[tuple[float, int, int]]:
        """``best`` ((-mean, position, nearest row), ranked) with every route whose
        mean lies within 2 ``rounding`` of a neighbour's scored again
        position-independently, ranked again: the others' order cannot change."""
        near: set[int] = set()
        for i in range(len(best) - 1):
            if best[i + 1][0] - best[i][0] <= 2 * rounding:
                near.update((i, i + 1))
        if not near:
            return best
        out = list(best)
        for i in near:
            pos = best[i][1]
            rows = self._route_rows(pos)
            out[i] = self._top_mean(pos, rows, (self.matrix[rows] * query).sum(axis=1))
        return sorted(out)

    def _top_mean(
        self, pos: int, rows: NDArray[np.intp], vals: NDArray[np.float32]
    ) -> tuple[float, int, int]:
        """(-mean of the route's ``top_k`` best ``vals``, ``pos``, its best row): how
        :meth:`_mean_topk` ranks a route."""
        t = min(self.top_k, len(vals))
        mean = float(np.partition(vals, len(vals) - t)[len(vals) - t :].mean())
        return (-mean, pos, int(rows[np.argmax(vals)]))


def _kth_above(values: NDArray[np.float32], k: int, horizon: float) -> float | None:
    """The ``k``-th largest of the candidates' exact ``values`` if it beats the graph's
    horizon (then no row outside the candidates can be among the ``k`` nearest, as
    for the routes in :func:`~synaptoroute.ann.candidate_routes`), else ``None``."""
    if k <= 0 or len(values) < k:
        return None
    kth = float(np.partition(values, len(values) - k)[len(values) - k])
    return kth if kth > horizon else None


def _similarities(matrix: NDArray[np.float32], queries: NDArray[np.float32]) -> NDArray[np.float32]:
    # One matrix-vector product per query, never one matrix-matrix product for the
    # batch: BLAS rounds gemm and gemv differently, and a query must score the same
    # whether it came alone or in a batch (query/aquery parity).
    out = np.empty((len(queries), len(matrix)), dtype=np.float32)
    for i, query in enumerate(queries):
        np.dot(matrix, query, out=out[i])
    return out


def _rounding(dimension: int) -> float:
    """How far two float32 dot products of unit vectors of ``dimension`` summed in
    different orders can differ: each is within ``dimension`` units of rounding
    (2**-24) of the exact value (the standard bound, the sum of |x_i y_i| being at
    most 1), so twice that, doubled again for room."""
    return 4.0 * dimension * 2.0**-24


def _top_rescored(
    row: NDArray[np.float32],
    k: int,
    rounding: float,
    vectors: NDArray[np.float32],
    query: NDArray[np.float32],
) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
    """The ``k`` best positions of ``row`` (products of ``vectors`` with ``query``)
    and their scores, those within ``rounding`` of the ``k``-th scored again
    position-independently; ties by position."""
    kth = np.partition(row, len(row) - k)[len(row) - k]
    rows = np.flatnonzero(row >= kth - 2 * rounding)
    exact = (vectors[rows] * query).sum(axis=1)  # not BLAS, as in Snapshot._max_prefiltered
    order = np.lexsort((rows, -exact))[:k]
    return rows[order], exact[order].astype(np.float32)


def _group(route_starts: NDArray[np.intp], n_order: int, pos: int) -> tuple[int, int]:
    """The first and past-last entries of route position ``pos`` in the segment order."""
    end = int(route_starts[pos + 1]) if pos + 1 < len(route_starts) else n_order
    return int(route_starts[pos]), end


class _Segments:
    """The compiled segment arrays in growable buffers, so a compile after adding
    routes only writes the new rows' entries (O(added), not O(n)); deleting a route,
    adding utterances to one or deleting some rewrites the per-segment and per-route
    arrays only (O(segments), no per-row work but one copy of the row ids when rows
    die).

    Rows carry their route id (``row_route``, written once per row); ``route_pos``
    maps a route id to its live position. A snapshot holds views of the prefixes:
    appends write past them, and a delete writes new buffers, so those views never
    change.
    """

    _ARRAYS = ("seg_starts", "seg_ends", "seg_route", "seg_order", "route_starts", "live_routes")

    def __init__(self) -> None:
        self.n_rows = 0
        self.n_segs = 0  # entries of seg_starts / seg_ends / seg_route
        self.n_live = 0  # entries of seg_order
        self.n_routes = 0  # entries of route_starts / live_routes
        self.n_ids = 0  # entries of route_pos (route ids seen)
        self.last_rid = -1  # the largest live route id
        self.bufs: dict[str, NDArray[Any]] = {
            name: np.zeros(16, dtype=np.intp)
            for name in (*self._ARRAYS, "route_pos", "row_route", "route_span")
        }

    # Which counter gives each array's current length.
    _SIZE: ClassVar[dict[str, str]] = {
        "seg_starts": "n_segs",
        "seg_ends": "n_segs",
        "seg_route": "n_segs",
        "seg_order": "n_live",
        "route_starts": "n_routes",
        "live_routes": "n_routes",
        "route_pos": "n_ids",
        "row_route": "n_rows",
    }

    def view(self, name: str) -> NDArray[Any]:
        """The current prefix of one array."""
        if name == "route_span":  # two entries per route: (n_routes, 2)
            return self.bufs[name][: 2 * self.n_routes].reshape(-1, 2)
        size: int = getattr(self, self._SIZE[name])
        return self.bufs[name][:size]

    def _spans_from_arrays(self) -> None:
        # Every route's span from the segment arrays, into a new buffer: O(routes).
        route_starts, seg_order = self.view("route_starts"), self.view("seg_order")
        counts = np.diff(np.append(route_starts, len(seg_order)))
        first = seg_order[route_starts]
        spans = np.stack(
            [self.view("seg_starts")[first], self.view("seg_ends")[first]], axis=1
        ).astype(np.intp)
        spans[counts > 1] = -1
        self.bufs["route_span"] = spans.ravel()

    def _put(self, name: str, at: int, values: NDArray[Any] | int) -> None:
        buf = self.bufs[name]
        size = at + (values if isinstance(values, int) else len(values))
        if size > len(buf):  # a new buffer: views of the old one stay valid
            grown = np.empty(max(2 * len(buf), size), dtype=buf.dtype)
            grown[:at] = buf[:at]
            self.bufs[name] = buf = grown
        if not isinstance(values, int):
            buf[at:size] = values

    def _set_ids(self, n_ids: int) -> None:
        # New route ids (routes created since, some maybe deleted already): not live.
        if n_ids > self.n_ids:
            self._put("route_pos", self.n_ids, n_ids - self.n_ids)
            self.bufs["route_pos"][self.n_ids : n_ids] = -1
            self.n_ids = n_ids

    def extended(self, route: NDArray[np.int64], start: int, n_ids: int) -> _Segments | None:
        """The table with rows ``start..`` of route ids ``route`` (``-1``: dead) added.

        New routes' rows (the case of adding routes) are appended in O(added); rows of
        live routes (more utterances for a route) rewrite the segment order and the
        routes' starts into new arrays, O(segments). Rows deleted before this compile,
        or the first rows of a route created before the last live one, give a new
        table rebuilt from the segments, also O(segments). Never O(rows). ``None``
        when the rows do not follow this table's (the caller rebuilds it).
        """
        if start != self.n_rows:
            return None
        cuts = np.flatnonzero(np.diff(route)) + 1
        firsts = np.concatenate(([0], cuts)).astype(np.intp)
        rids = route[firsts]
        starts = firsts + start
        self._set_ids(n_ids)
        pos = np.where(rids >= 0, self.bufs["route_pos"][np.maximum(rids, 0)], -1)
        fresh = (rids >= 0) & (pos < 0)
        if (rids < 0).any() or (rids[fresh] <= self.last_rid).any():
            out = _Segments()
            out._set_ids(n_ids)
            out.bufs["row_route"] = self.bufs["row_route"]  # its prefix never changes
            out._put("row_route", start, route)
            seg_starts = np.concatenate([self.view("seg_starts"), starts])
            seg_route = np.concatenate([self.view("seg_route"), rids])
            out._fill(seg_starts, seg_route, start + len(route))
            return out
        new_rids = np.unique(rids[fresh])
        pos[fresh] = self.n_routes + np.searchsorted(new_rids, rids[fresh])
        self._add_segments(starts, rids, pos, new_rids, start + len(route))
        self._put("row_route", start, route)
        return self

    def _add_segments(
        self,
        starts: NDArray[np.intp],
        rids: NDArray[np.int64],
        pos: NDArray[np.intp],
        new_rids: NDArray[np.int64],
        n_rows: int,
    ) -> None:
        # Segments past the last one, of live routes (pos < n_routes) or of new ones
        # (new_rids, sorted, take the next positions).
        count = len(starts)
        seg_ids = np.arange(self.n_segs, self.n_segs + count)
        n_total = self.n_routes + len(new_rids)
        ends = np.append(starts[1:], n_rows)
        self._put("seg_starts", self.n_segs, starts)
        self._put("seg_ends", self.n_segs, ends)
        self._put("seg_route", self.n_segs, rids)
        appended = len(new_rids) == count and bool((np.diff(pos) > 0).all())  # one each, in order
        if appended:
            self._put("seg_order", self.n_live, seg_ids)
            self._put("route_starts", self.n_routes, np.arange(self.n_live, self.n_live + count))
            self._put("route_span", 2 * self.n_routes, np.stack([starts, ends], axis=1).ravel())
        else:  # new arrays: snapshots taken earlier keep their views of the old ones
            route_starts = self.view("route_starts")
            group_ends = np.append(route_starts[1:], self.n_live)
            where = np.append(group_ends, self.n_live)[np.minimum(pos, self.n_routes)]
            order = np.lexsort((seg_ids, pos))  # by route, then row
            seg_order = np.insert(self.view("seg_order"), where[order], seg_ids[order])
            counts = np.bincount(pos, minlength=n_total)
            counts[: self.n_routes] += np.diff(group_ends, prepend=0)
            new_starts = np.zeros(n_total, dtype=np.intp)
            np.cumsum(counts[:-1], out=new_starts[1:])
            self.bufs["seg_order"], self.bufs["route_starts"] = seg_order, new_starts
            # Spans change only for the routes given segments: a stored route now has
            # two or more (-1); a new one has its segment's bounds if it got one.
            spans = np.full((n_total, 2), -1, dtype=np.intp)
            spans[: self.n_routes] = self.view("route_span")
            new = pos >= self.n_routes
            single = new & (counts[pos] == 1)
            spans[pos[single]] = np.stack([starts[single], ends[single]], axis=1)
            spans[pos[~new]] = -1
            self.bufs["route_span"] = spans.ravel()
        self._put("live_routes", self.n_routes, new_rids)
        self.bufs["route_pos"][new_rids] = np.arange(self.n_routes, n_total)
        self.n_segs += count
        self.n_live += count
        self.n_routes = n_total
        self.n_rows = n_rows
        if len(new_rids):
            self.last_rid = int(new_rids[-1])

    def without_rows(self, rows: NDArray[np.intp]) -> _Segments:
        """A new table where the live ``rows`` (all in this table) are dead.

        Only the segments holding them are split (into runs of live and dead rows),
        and only the routes holding them change in the per-route arrays: a few passes
        over the segment arrays (O(segments + deleted), no sort) and one copy of the
        row ids (snapshots taken earlier keep theirs). A route left without rows
        makes it a rebuild from the segments, also O(segments).
        """
        out = _Segments()
        out._set_ids(self.n_ids)
        buf = np.empty_like(self.bufs["row_route"])  # one copy, with the old spare room
        buf[: self.n_rows] = self.view("row_route")
        buf[rows] = -1
        out.bufs["row_route"] = buf
        row_route = buf[: self.n_rows]
        seg_starts, seg_ends = self.view("seg_starts"), self.view("seg_ends")
        hit = np.unique(np.searchsorted(seg_starts, rows, side="right") - 1)
        # A split segment keeps its id for its first run of rows; the other runs are
        # inserted after it. Other segments keep their route ids (-1 for deleted
        # routes, whose rows still carry their ids).
        seg_route = self.view("seg_route").copy()
        route_pos = self.view("route_pos")
        at: list[NDArray[np.intp]] = []
        starts: list[NDArray[np.intp]] = []
        routes: list[NDArray[np.int64]] = []
        # New segment ids of the split: (route position, id) of the live runs after a
        # segment's first, and of the segments whose first run died.
        gained: list[tuple[int, int]] = []
        lost: list[tuple[int, int]] = []
        touched: list[int] = []  # every split segment's route: its span may change
        inserted = 0
        for seg in hit.tolist():  # the deleted rows' segments: a few per call
            first, end = int(seg_starts[seg]), int(seg_ends[seg])
            run = row_route[first:end]
            firsts = np.concatenate(([0], np.flatnonzero(np.diff(run)) + 1))
            pos = int(route_pos[seg_route[seg]])  # a live route's segment: rows were live
            base = seg + inserted
            touched.append(pos)
            if run[0] < 0:
                lost.append((pos, base))
            gained.extend(
                (pos, base + 1 + j) for j, rid in enumerate(run[firsts[1:]].tolist()) if rid >= 0
            )
            inserted += len(firsts) - 1
            seg_route[seg] = run[0]
            at.append(np.full(len(firsts) - 1, seg + 1, dtype=np.intp))
            starts.append((firsts[1:] + first).astype(np.intp))
            routes.append(run[firsts[1:]])
        where = np.concatenate(at)
        new_starts = np.insert(seg_starts, where, np.concatenate(starts))
        new_route = np.insert(seg_route, where, np.concatenate(routes))
        if not out._split(self, where, touched, gained, lost, new_starts, new_route):
            out._fill(new_starts, new_route, self.n_rows)
        return out

    def _split(
        self,
        old: _Segments,
        where: NDArray[np.intp],
        touched: list[int],
        gained: list[tuple[int, int]],
        lost: list[tuple[int, int]],
        seg_starts: NDArray[np.intp],
        seg_route: NDArray[np.int64],
    ) -> bool:
        # The rest of a fresh table after old's segments were split (without_rows):
        # old's segment ids shift past the runs inserted before them (``where``), the
        # routes' groups gain the ``gained`` ids and lose the ``lost`` ones, and only
        # the ``touched`` routes' starts and spans move (a span shrinks when only a
        # segment's trailing rows died). False (nothing written) when a route
        # loses its last segment: its position would go, so the caller rebuilds.
        route_starts = old.view("route_starts")
        order = old.view("seg_order")
        groups = {pos: _group(route_starts, len(order), pos) for pos in touched}
        count = {pos: last - first for pos, (first, last) in groups.items()}  # then after
        for pos, _ in gained:
            count[pos] += 1
        for pos, _ in lost:
            count[pos] -= 1
        if any(c <= 0 for c in count.values()):
            return False
        order = order + np.searchsorted(where, order, side="right")
        if gained:  # into their routes' groups, in id order as the groups are
            at = [
                groups[pos][0] + int(np.searchsorted(order[slice(*groups[pos])], sid))
                for pos, sid in gained
            ]
            order = np.insert(order, at, [sid for _, sid in gained])
        if lost:
            order = order[~np.isin(order, [sid for _, sid in lost])]
        shift = np.zeros(len(route_starts) + 1, dtype=np.intp)
        for pos, (first, last) in groups.items():
            shift[pos + 1] = count[pos] - (last - first)
        starts = route_starts + np.cumsum(shift[:-1])
        n = old.n_rows
        seg_ends = np.append(seg_starts[1:], n).astype(np.intp)
        spans = old.view("route_span").copy()
        for pos in groups:
            if count[pos] == 1:
                sid = int(order[starts[pos]])
                spans[pos] = (seg_starts[sid], seg_ends[sid])
            else:
                spans[pos] = -1
        for name, values in (
            ("seg_starts", seg_starts),
            ("seg_ends", seg_ends),
            ("seg_route", seg_route),
            ("seg_order", order),
            ("route_starts", starts),
            ("live_routes", old.view("live_routes").copy()),
            ("route_pos", old.view("route_pos").copy()),
            ("route_span", spans.ravel()),
        ):
            self.bufs[name] = values
        self.n_rows, self.n_segs, self.n_live = n, len(seg_starts), len(order)
        self.n_routes, self.last_rid = old.n_routes, old.last_rid
        return True

    def without(self, rid: int) -> _Segments:
        """A new table without route ``rid`` (its rows stay, as dead rows)."""
        out = _Segments()
        out.n_rows, out.n_segs, out.n_ids = self.n_rows, self.n_segs, self.n_ids
        out.bufs["row_route"] = self.bufs["row_route"]  # ids never change: shared
        live_routes = self.view("live_routes")
        route_pos = self.view("route_pos").copy()
        p = int(route_pos[rid]) if rid < self.n_ids else -1
        seg_route = self.view("seg_route").copy()
        seg_order, route_starts = self.view("seg_order"), self.view("route_starts")
        spans = self.view("route_span")
        if p >= 0:
            spans = np.delete(spans, p, axis=0)
            first, last = _group(route_starts, len(seg_order), p)
            seg_route[seg_order[first:last]] = -1
            seg_order = np.delete(seg_order, np.s_[first:last])
            route_starts = np.delete(route_starts, p)
            route_starts[p:] -= last - first
            live_routes = np.delete(live_routes, p)
            route_pos[rid] = -1
            route_pos[route_pos > p] -= 1
        # The segments' bounds do not change: shared, as the row ids are (this table
        # is dropped, so only ``out`` appends past their prefixes). The arrays made
        # above are new: taken as they are, not copied again.
        out.bufs["seg_starts"] = self.bufs["seg_starts"]
        out.bufs["seg_ends"] = self.bufs["seg_ends"]
        for name, values in (
            ("seg_route", seg_route),
            ("seg_order", seg_order),
            ("route_starts", route_starts),
            ("live_routes", live_routes),
            ("route_pos", route_pos),
            ("route_span", spans.ravel()),
        ):
            out.bufs[name] = values
        out.n_live, out.n_routes = len(seg_order), len(live_routes)
        out.last_rid = int(live_routes[-1]) if len(live_routes) else -1
        return out

    @classmethod
    def full(cls, route: NDArray[np.int64], n_ids: int) -> _Segments:
        """The table of rows with route ids ``route`` (``-1``: dead), from scratch."""
        table = cls()
        table._set_ids(n_ids)
        if len(route) == 0:
            return table
        table._put("row_route", 0, route)
        cuts = np.flatnonzero(np.diff(route)) + 1
        seg_starts = np.concatenate(([0], cuts)).astype(np.intp)
        table._fill(seg_starts, route[seg_starts], len(route))
        return table

    def _fill(self, seg_starts: NDArray[np.intp], seg_route: NDArray[np.int64], n: int) -> None:
        # Everything but row_route and the route ids' count, from the segments of a
        # fresh table (O(segments)). Segments are runs of rows of one route id (-1:
        # dead); a route's segments need not be adjacent.
        seg_ends = np.append(seg_starts[1:], n).astype(np.intp)
        live = np.flatnonzero(seg_route >= 0)
        live_route = seg_route[live]
        if (np.diff(live_route) >= 0).all():  # the usual order: no sort
            seg_order, sorted_routes = live.astype(np.intp), live_route
        else:
            by_route = np.argsort(live_route, kind="stable")
            seg_order, sorted_routes = live[by_route].astype(np.intp), live_route[by_route]
        if len(seg_order):
            firsts = np.concatenate(([0], np.flatnonzero(np.diff(sorted_routes)) + 1))
        else:
            firsts = np.zeros(0, dtype=np.intp)
        live_routes = sorted_routes[firsts]
        for name, values in zip(
            self._ARRAYS,
            (seg_starts, seg_ends, seg_route, seg_order, firsts, live_routes),
            strict=True,
        ):
            self._put(name, 0, values)
        self.bufs["route_pos"][live_routes] = np.arange(len(live_routes))
        self.n_rows, self.n_segs, self.n_live = n, len(seg_starts), len(seg_order)
        self.n_routes = len(firsts)
        self.last_rid = int(live_routes[-1]) if len(live_routes) else -1
        self._spans_from_arrays()


# Re-scored rows ranked in plain Python up to this many (cheaper right after the
# encoder, when numpy calls are slow); past it, numpy ranks them (many routes tied).
_PLAIN_RANKING_ROWS = 64

# Deletes between two compiles patched into the last compile's arrays (each O(routes)
# and O(segments)); past this many, the next compile rebuilds them once (O(rows)).
_PATCHED_DELETES = 16


class RouteIndex:
    """Utterance vectors grouped by route, compiled lazily into a :class:`Snapshot`.

    Not a public API: :class:`~synaptoroute.router.AdaptiveRouter` owns one. All
    methods are thread-safe.
    """

    def __init__(
        self,
        dimension: int,
        aggregation: Aggregation = "max",
        top_k: int = 3,
        capacity: int = 1024,
        int8_min_rows: int | None = INT8_MIN_ROWS,
        ann_min_rows: int | None = None,
        ann_cache: str | os.PathLike[str] | None = None,
        ann_depth: int = 128,
        ann_margin: float = CLOSE_MARGIN,
        ann_cache_mode_of: str | os.PathLike[str] | None = None,
    ) -> None:
        self.dimension = dimension
        self.aggregation: Aggregation = aggregation
        self.top_k = top_k
        self.stats = IndexStats()
        self._lock = threading.RLock()
        # A compile holds it; so do the builds' swaps. The child restarts the builds.
        hold_across_fork(self, INDEX, in_child="_forked")
        self._buf = np.zeros((max(capacity, 16), dimension), dtype=np.float32)
        self._row_route = np.full(len(self._buf), -1, dtype=np.int64)
        self._texts: list[str] = []
        self._n = 0
        self._dead = 0
        self._pending: list[tuple[int, NDArray[np.float32], list[str]]] = []
        self._ids: dict[str, int] = {}
        self._names: list[str] = []  # route id -> name, deleted ones included
        self._dead_ids = 0  # ids of deleted routes in _names (see _renumber_routes)
        self._deletes_since_compile = 0
        self._rows: dict[int, list[int]] = {}  # route id -> its rows in the buffer
        self._sums: dict[int, NDArray[np.float64]] = {}  # "centroid" only: 3 kB a route
        self._counts: dict[int, int] = {}
        self._snapshot: Snapshot | None = None
        self._segments: _Segments | None = None  # the last compile's arrays
        self._version = 0
        self.int8_min_rows = int8_min_rows  # None: never use the int8 pre-filter
        # Threads of the int8 copies built from now on (None: by their rows; the
        # router's blas_threads, which it sets here).
        self.blas_threads: int | None = None
        self._int8: Int8Scan | None = None
        self._int8_generation = 0  # bumped when row positions move (compaction)
        self._int8_builder: threading.Thread | None = None
        # A forked child whose parent held an int8 copy builds its own in the background
        # (scoring exactly meanwhile), not in its first query: a worker forked after
        # wait_for_index() took 0.5 s at 100,000 rows for its first answer.
        self._int8_aside = False
        # The approximate graph ("max" only; docs/scale.md): built or loaded once the
        # index holds ann_min_rows rows, fed new rows in the background, dropped when
        # a compaction moves rows. None: never.
        self.ann_min_rows = ann_min_rows
        self.ann_cache = Path(ann_cache) if ann_cache is not None else None
        # The cache holds the store's vectors: its files take the store file's mode.
        self._ann_cache_mode_of = Path(ann_cache_mode_of) if ann_cache_mode_of else None

        self._ann_rounds = rounds_for(ann_depth)
        self._ann_margin = ann_margin
        self._ann: AnnGraph | None = None
        self._ann_worker: threading.Thread | None = None
        self._ann_cache_tried = False
        # Rows the cache file covers as this index last loaded or tried to write it (0:
        # none): a write that failed is tried again only after as many rows again.
        self._ann_saved = 0
        self._gate = ReadGate()  # shared with every graph this index builds or loads
        # close(): background work stops (a build at its next chunk, a feed at its next
        # row), none starts, and no cache file is replaced. A cache write checks the flag
        # and replaces its files under _cache_lock, which close() takes after setting it.
        self._closed = False
        self._cache_lock = threading.Lock()
        hold_across_fork(self, LEAF, lock="_cache_lock")  # held for two renames

    # -- mutations (O(added) or O(deleted); no matrix copies) -----------------------
    def changing(self) -> AbstractContextManager[Any]:
        """Hold the index while several changes are made, so that queries see all of
        them or none: a route replaced (deleted, then added) is never seen missing.
        Re-entrant: the changes take the same lock."""
        return self._lock

    def add(self, name: str, vectors: NDArray[np.float32], texts: Sequence[str]) -> None:
        """Append utterance vectors to route ``name`` (created if new)."""
        if len(vectors) != len(texts):
            msg = "vectors and texts differ in length"
            raise ValueError(msg)
        with self._lock:
            rid = self._ids.get(name)
            if rid is None:
                rid = self._new_route(name)
            if len(vectors):
                self._pending.append((rid, np.asarray(vectors, dtype=np.float32), list(texts)))
                if self.aggregation == "centroid":
                    self._sums[rid] += vectors.sum(axis=0)
                self._counts[rid] += len(vectors)
            self._snapshot = None

    def load(self, routes: Sequence[tuple[str, NDArray[np.float32], Sequence[str]]]) -> None:
        """Add many routes (a store opening) with one write of their vectors at most.

        When the vectors are consecutive rows of a buffer a store's loader handed over
        (:mod:`synaptoroute._buffers`), the index takes that buffer and copies nothing;
        otherwise, or when the index is not empty, this is :meth:`add` per route.
        """
        with self._lock:
            names = [name for name, _, _ in routes]
            taken = None
            if (
                self._n == 0  # not names: renumbering leaves dead rows and no name
                and not self._names
                and self.aggregation != "centroid"
                and len(set(names)) == len(names)
                and all(len(t) == len(v) for _, v, t in routes)
            ):
                taken = take_buffer([v for _, v, _ in routes], self.dimension)
            if taken is None:  # add() also refuses vectors and texts of unequal lengths
                for name, vectors, texts in routes:
                    self.add(name, vectors, texts)
                return
            buf, n = taken
            self._buf = buf  # the vectors are in place: only the bookkeeping is written
            self._row_route = np.full(len(buf), -1, dtype=np.int64)
            for name, _, texts in routes:
                rid = self._new_route(name)
                self._counts[rid] = len(texts)
                self._place(rid, texts)
            self.stats.rows_taken += n
            self._snapshot = None

    def delete_route(self, name: str) -> None:
        """Remove a route; its rows are masked now and compacted later."""
        with self._lock:
            rid = self._ids.pop(name)
            # Snapshots share the names list, and a query in flight on an older one
            # still names the route: its id stays until _renumber_routes.
            rows = self._rows.pop(rid)
            self._row_route[rows] = -1
            self._dead_ids += 1
            self._deletes_since_compile += 1
            if self._segments is not None:
                if self._deletes_since_compile <= _PATCHED_DELETES:
                    # O(routes): the next compile only appends
                    self._segments = self._segments.without(rid)
                else:  # many in one go (a bulk replace): one full compile, not O(routes) each
                    self._segments = None
            self._dead += len(rows)
            self._pending = [p for p in self._pending if p[0] != rid]
            self._sums.pop(rid, None)
            del self._counts[rid]
            self._snapshot = None

    def vectors_of(self, name: str) -> dict[str, NDArray[np.float32]]:
        """The stored vector of each utterance of route ``name`` (copies; ``{}`` if unknown)."""
        with self._lock:
            return {self._texts[row]: self._buf[row].copy() for row in self._route_rows(name)}

    def texts_of(self, name: str) -> list[str]:
        """The utterances route ``name`` has rows for, in row order (``[]`` if unknown)."""
        with self._lock:
            return [self._texts[row] for row in self._route_rows(name)]

    def _route_rows(self, name: str) -> list[int]:
        # Under the lock: route ``name``'s rows, pending appends included ([] if unknown).
        rid = self._ids.get(name)
        if rid is None:
            return []
        self._flush_pending()
        return list(self._rows[rid])

    def delete_texts(self, name: str, texts: Sequence[str]) -> int:
        """Mask the rows of ``texts`` in route ``name``; returns how many were removed."""
        drop = set(texts)
        with self._lock:
            rid = self._ids[name]
            self._flush_pending()
            keep: list[int] = []
            gone: list[int] = []
            for row in self._rows[rid]:
                if self._texts[row] in drop:
                    self._row_route[row] = -1
                    if self.aggregation == "centroid":
                        self._sums[rid] -= self._buf[row]
                    self._counts[rid] -= 1
                    gone.append(row)
                else:
                    keep.append(row)
            self._rows[rid] = keep
            if not keep and self.aggregation == "centroid":
                # Emptied (a replace empties a route, then adds): no rounding of its
                # earlier rows left in the sum, which a new router's would not hold.
                self._sums[rid] = np.zeros_like(self._sums[rid])
            self._dead += len(gone)
            table = self._segments
            # Rows the table does not hold yet come in dead; "centroid" always rebuilds.
            if gone and table is not None and self.aggregation != "centroid":
                self._deletes_since_compile += 1
                if self._deletes_since_compile > _PATCHED_DELETES:
                    # Many in one go (a bulk replace empties each route): one full
                    # compile, not a patch of the whole table each (quadratic).
                    self._segments = None
                else:
                    inside = np.array([r for r in gone if r < table.n_rows], dtype=np.intp)
                    if len(inside):
                        self._segments = table.without_rows(inside)
            self._snapshot = None
            return len(gone)

    def __contains__(self, name: object) -> bool:
        return name in self._ids

    def __len__(self) -> int:
        """Number of live utterance rows, pending ones included."""
        with self._lock:
            return sum(self._counts.values())

    # -- compilation ---------------------------------------------------------------
    def _flush_pending(self) -> None:
        if not self._pending:
            return
        need = self._n + sum(len(v) for _, v, _ in self._pending)
        if need > len(self._buf):
            self._grow(need)
        for rid, vectors, texts in self._pending:
            self._buf[self._n : self._n + len(vectors)] = vectors
            self.stats.rows_written += len(vectors)
            self._place(rid, texts)
        self._pending = []

    def _new_route(self, name: str) -> int:
        rid = len(self._names)
        self._ids[name] = rid
        self._names.append(name)
        self._rows[rid] = []
        if self.aggregation == "centroid":
            self._sums[rid] = np.zeros(self.dimension, dtype=np.float64)
        self._counts[rid] = 0
        return rid

    def _place(self, rid: int, texts: Sequence[str]) -> None:
        """Book the buffer's next ``len(texts)`` rows, already written, to route ``rid``."""
        end = self._n + len(texts)
        self._row_route[self._n : end] = rid
        self._rows[rid].extend(range(self._n, end))
        self._texts.extend(texts)
        self._n = end

    def _grow(self, need: int) -> None:
        capacity = max(buffer_capacity(need), 2 * len(self._buf))
        buf = np.zeros((capacity, self.dimension), dtype=np.float32)
        buf[: self._n] = self._buf[: self._n]
        route = np.full(capacity, -1, dtype=np.int64)
        route[: self._n] = self._row_route[: self._n]
        self._buf, self._row_route = buf, route
        self.stats.reallocations += 1
        self.stats.rows_copied += self._n

    def _compact(self) -> None:
        alive = np.flatnonzero(self._row_route[: self._n] >= 0)
        capacity = max(
            16, len(self._buf) if len(alive) > len(self._buf) // 4 else len(self._buf) // 2
        )
        buf = np.zeros((capacity, self.dimension), dtype=np.float32)
        buf[: len(alive)] = self._buf[alive]
        route = np.full(capacity, -1, dtype=np.int64)
        route[: len(alive)] = self._row_route[alive]
        self._texts = [self._texts[i] for i in alive]
        self._buf, self._row_route, self._n, self._dead = buf, route, len(alive), 0
        self._rows = {rid: [] for rid in self._rows}
        for row, rid in enumerate(route[: self._n].tolist()):
            self._rows[rid].append(row)
        self.stats.full_rebuilds += 1
        self.stats.rows_copied += len(alive)
        self._int8 = None  # row positions moved
        self._ann = None  # its keys are row numbers too
        self._segments = None
        self._int8_generation += 1  # a copy being built now is of the old positions

    def _renumber_routes(self) -> None:
        """Give the live routes ids ``0..k-1``, in their order, dropping the deleted
        routes' ids: otherwise a router that adds and deletes (or replaces) routes all
        day keeps every name it ever held, and each compile and delete costs O(ids).

        Rows stay where they are; the row-to-route array and the names list are new
        objects, so snapshots taken before keep theirs.
        """
        live = sorted(self._rows)
        remap = np.full(len(self._names) + 1, -1, dtype=np.int64)  # [-1]: dead rows stay -1
        remap[live] = np.arange(len(live))
        self._row_route = remap[self._row_route]
        self._names = [self._names[rid] for rid in live]
        self._ids = {name: int(remap[rid]) for name, rid in self._ids.items()}
        self._rows = {int(remap[rid]): rows for rid, rows in self._rows.items()}
        self._counts = {int(remap[rid]): n for rid, n in self._counts.items()}
        self._sums = {int(remap[rid]): v for rid, v in self._sums.items()}
        self._pending = [(int(remap[rid]), v, t) for rid, v, t in self._pending]
        self._segments = None
        self._dead_ids = 0
        self.stats.renumbers += 1

    def _forked(self) -> None:
        # In a forked child, under the lock: the graph's and the int8 copy's background
        # threads did not come along, so none runs; the next compile starts what is
        # missing (a graph build or feed, an int8 copy) in the child, loading the graph
        # from the cache file first if the parent has saved one since.
        self._ann_worker = None
        self._int8_builder = None
        if self._ann is None:
            self._ann_cache_tried = False
        # The int8 copy's onnxruntime session has the parent's thread pool, which did
        # not come along: a run may wait for it for good, and destroying the session
        # can hang joining it (onnxruntime#31961, as for the encoder's sessions). Kept
        # referenced, never used: the child's next compile builds its own copy.
        if self._int8 is not None:
            keep_for_good(self._int8)
            self._int8 = None
            self._int8_aside = True
        self._snapshot = None

    def reading(self) -> AbstractContextManager[None]:
        """Mark a query in flight for a ``with`` block around its compile and scoring:
        a graph feed inserts no row meanwhile (it waits ``ann.FEED_YIELD`` per row at
        most), so the query whose compile starts a feed does not wait for its rows."""
        return self._gate.reading()

    def snapshot(self) -> Snapshot:
        """The current compiled view, compiling first if anything changed."""
        snap = self._snapshot
        if snap is not None:
            return snap
        with self._lock:
            if self._snapshot is None:
                self._snapshot = self._compile()
            return self._snapshot

    def _compile(self) -> Snapshot:
        self._flush_pending()
        if self._dead and self._dead >= max(1024, self._n // 4):
            self._compact()
        if self._dead_ids >= max(1024, len(self._ids)):
            self._renumber_routes()
        self._deletes_since_compile = 0
        self.stats.compiles += 1
        self._version += 1
        n = self._n
        table = self._segments
        if table is not None and n > table.n_rows and self.aggregation != "centroid":
            table = table.extended(
                self._row_route[table.n_rows : n], table.n_rows, len(self._names)
            )
        if table is None or self.aggregation == "centroid" or n < table.n_rows:
            table = _Segments.full(self._row_route[:n], len(self._names))
            self.stats.full_compiles += 1
        self._segments = table
        live_routes = table.view("live_routes")
        if self.aggregation == "centroid":
            sums = np.array([self._sums[r] for r in live_routes.tolist()]).reshape(
                -1, self.dimension
            )
            norms = np.linalg.norm(sums, axis=1, keepdims=True)
            centroids = (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        else:  # only the centroid aggregation reads them
            centroids = np.zeros((0, self.dimension), dtype=np.float32)
        self._refresh_ann(n)
        self._refresh_int8(n)
        return Snapshot(
            matrix=self._buf[:n],
            seg_starts=table.view("seg_starts"),
            seg_ends=table.view("seg_ends"),
            seg_route=table.view("seg_route"),
            seg_order=table.view("seg_order"),
            route_starts=table.view("route_starts"),
            live_routes=live_routes,
            centroids=centroids,
            texts=self._texts,
            names=self._names,
            aggregation=self.aggregation,
            top_k=self.top_k,
            version=self._version,
            int8=self._int8,
            row_route=table.view("row_route"),
            route_pos=table.view("route_pos"),
            route_spans=table.view("route_span"),
            stats=self.stats,
            ann=self._ann,
            ann_rounds=self._ann_rounds,
            ann_margin=self._ann_margin,
        )

    def _refresh_int8(self, n: int) -> None:
        if self.aggregation == "centroid" or self.int8_min_rows is None or n < self.int8_min_rows:
            self._int8 = None
            return
        if self._int8 is None and (self._ann is not None or self._int8_aside):
            # A graph (loaded from the cache file at start-up) answers the queries, or
            # this is a forked child (_forked): the first copy is built in the background
            # (4 s at 1M utterances) instead of in the first query.
            if self._int8_builder is None:
                self._start_int8_build(n)
            return
        if self._int8 is None:  # the first copy, or the first after a compaction
            self._int8 = _build_int8(self._buf[:n], self.blas_threads)
            if self._int8 is None:  # no int8 kernel here: stop trying
                self.int8_min_rows = None
                return
            self.stats.int8_builds += 1
            return
        # Rows added since the last int8 copy are scored exactly; re-quantise only once
        # they are an eighth of the matrix, so each row is quantised O(1) times. That
        # runs in the background (it takes long at large sizes): until the new copy is
        # in, queries use the old one plus the exact tail, so none waits for it.
        if n - self._int8.n > max(self.int8_min_rows, n // 8) and self._int8_builder is None:
            self._start_int8_build(n)

    def _start_int8_build(self, n: int) -> None:
        if self._stopped():  # closed, or exiting: queries keep the current copy
            return
        # Rows below n never change in place (appends go past n, deletes only mark
        # rows, a reallocation copies them), so this view stays valid; a compaction
        # moves rows and bumps the generation, and a copy of the old rows is dropped.
        rows, generation, threads = self._buf[:n], self._int8_generation, self.blas_threads

        def build() -> None:
            scan = _build_int8(rows, threads)
            with self._lock:
                self._int8_builder = None
                if scan is None:  # no int8 kernel here: stop trying
                    self.int8_min_rows = None
                elif generation == self._int8_generation:
                    self._int8 = scan
                    self._int8_aside = False
                    self.stats.int8_builds += 1
                    self._snapshot = None  # the next query compiles with the new copy

        self._int8_builder = _start_background(build, "synaptoroute-int8")

    def wait_for_int8(self, timeout: float | None = None) -> bool:
        """Wait for a background int8 re-quantisation; ``True`` once none is running."""
        thread = self._int8_builder
        if thread is not None:
            thread.join(timeout)
        return self._int8_builder is None

    # -- the approximate graph (synaptoroute.ann) ----------------------------------
    def close(self) -> None:
        """Stop the background graph work for good, without waiting for its thread.

        A graph build ends before its next chunk of rows (``ann.BUILD_CHUNK``: about a
        second on 2 cores), a feed before its next row, and neither starts again; no
        int8 copy starts either (one under way finishes, and is kept). Once this
        returns, no cache file is replaced: a write under way is discarded (its
        temporary files are removed). Queries keep answering from the rows and the
        graph in memory, scoring exactly what the graph does not hold.
        """
        self._closed = True
        # Replacements in flight end first; a write that takes the lock later sees the flag.
        with self._cache_lock:
            pass

    def _stopped(self) -> bool:
        """Whether background work must stop: this index was closed, or the
        interpreter is exiting (:func:`stopping`)."""
        return self._closed or stopping()

    def _refresh_ann(self, n: int) -> None:
        if self.aggregation != "max" or self.ann_min_rows is None or n < self.ann_min_rows:
            self._ann = None
            return
        if self._ann_worker is not None or self._stopped():
            return  # a build or a feed is running (it republishes when done), or stopped
        if self._ann is None and not self._ann_cache_tried and self.ann_cache is not None:
            # Start-up: a graph saved over a prefix of these rows is loaded here (fast)
            # instead of rebuilt; a change another replica made to that prefix gives
            # another content key, and the graph is rebuilt below.
            from .ann import AnnGraph

            self._ann_cache_tried = True
            try:
                self._ann = AnnGraph.load(self.ann_cache, self._buf[:n], gate=self._gate)
            except AnnUnavailableError:  # a store made where the ann extra is installed
                self._ann_unavailable()
                return
            if self._ann is not None:
                self.stats.ann_cache_loads += 1
                self._ann_saved = self._ann.covered
        if self._ann is None:
            self._start_ann_worker(n, build=True)
        elif self._ann.covered < n:
            self._start_ann_worker(n, build=False)

    def _start_ann_worker(self, n: int, *, build: bool) -> None:
        # Like the int8 rebuild: rows below n never change in place and a compaction
        # bumps the generation, so a graph of old row positions is never published.
        generation = self._int8_generation
        rows = self._buf[:n]

        def run() -> None:
            try:
                if build:
                    self._build_ann(rows, generation)
                else:
                    self._feed_ann(generation)
            except Exception:  # queries keep the exact path
                with self._lock:
                    self._ann_unavailable()
            finally:
                with self._lock:
                    self._ann_worker = None
                    self._snapshot = None  # the next query compiles with the new graph

        self._ann_worker = _start_background(run, "synaptoroute-ann")

    def _ann_unavailable(self) -> None:
        # Under the lock: no graph from now on (usearch missing, or a build that
        # failed); queries keep the exact path. Logged once: nothing retries.
        _log.warning("approximate index unavailable; scoring exactly", exc_info=True)
        self.ann_min_rows = None
        self._ann = None

    def _build_ann(self, rows: NDArray[np.float32], generation: int) -> None:
        from .ann import AnnGraph

        graph = AnnGraph.build(rows, threads=process_cpus(), stop=self._stopped, gate=self._gate)
        if graph is None:  # closed, or the interpreter is exiting
            return
        with self._lock:
            if generation != self._int8_generation:
                return
            self._ann = graph
            self.stats.ann_builds += 1
        self._save_ann(graph, rows)
        self._feed_ann(generation)

    def _save_ann(self, graph: AnnGraph, rows: NDArray[np.float32]) -> None:
        # Asked here before hashing every row for the key, and again under _cache_lock
        # before the files are replaced (close() may come in between).
        from .ann import content_key

        if self.ann_cache is None or self._stopped():
            return
        self._ann_saved = len(rows)
        try:
            graph.save(
                self.ann_cache,
                content_key(rows),
                stop=self._stopped,
                lock=self._cache_lock,
                mode_of=self._ann_cache_mode_of,
            )
        except OSError:
            _log.warning("could not write the approximate index cache", exc_info=True)

    def _feed_ann(self, generation: int) -> None:
        # Chunks are copied under the index lock (the buffer may be reallocated) and
        # inserted under the graph's lock only, so a query waits for one chunk at most.
        # While the graph lacks more than FEED_TAIL_MAX rows no query searches it (but
        # one compiled just before): the rows go in chunks of as many, with every thread.
        while not self._stopped():
            with self._lock:
                graph = self._ann
                if graph is None or generation != self._int8_generation:
                    return
                start = graph.covered
                bulk = self._n - start > FEED_TAIL_MAX
                size = FEED_TAIL_MAX if bulk else FEED_CHUNK
                chunk = self._buf[start : min(start + size, self._n)].copy()
                # Rows below n never change in place: a view stays right if reallocated.
                held = self._buf[:start]
            if not len(chunk):
                # Caught up. The cache file is written again once it lacks many rows,
                # so a restart does not insert them all again (a share of it, so a
                # store growing row by row writes it O(log n) times).
                if start - self._ann_saved >= max(FEED_TAIL_MAX, self._ann_saved // 8):
                    self._save_ann(graph, held)
                return
            if not graph.feed(chunk, start, threads=process_cpus() if bulk else 1):
                return
            self.stats.ann_rows_fed += len(chunk)

    def wait_for_ann(self, timeout: float | None = None) -> bool:
        """Wait until no graph build or feed runs and the graph holds every row.

        Args:
            timeout: seconds to wait for each background step.

        Returns:
            ``True`` once the graph (if any) is complete and nothing runs, or nothing
            runs and nothing will (closed, or the interpreter is exiting).
        """
        for _ in range(64):  # bounded: each round either finishes a worker or starts one
            thread = self._ann_worker
            if thread is not None:
                thread.join(timeout)
                if thread.is_alive():
                    return False
            self.snapshot()  # publishes a finished graph; starts a feed if rows are missing
            with self._lock:
                graph = self._ann
                done = self._ann_worker is None and (
                    graph is None or graph.covered >= self._n or self._stopped()
                )
            if done:
                return True
        return False

    @property
    def ann_bytes(self) -> int:
        """Bytes the approximate graph holds (0 without one)."""
        graph = self._ann
        return graph.memory_bytes if graph is not None else 0
