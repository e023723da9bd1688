"""The route index: a lazily compiled matrix of utterance vectors (pure numpy).

Adding utterances appends to a pending list in time proportional to what was added.
The next query *compiles* once: pending rows are written into the free tail of a
capacity-doubling buffer (amortised O(1) per row, never a copy of the whole matrix
per add). Deleting marks rows dead; dead rows are compacted away once they are a
quarter of the buffer. Each compile publishes an immutable :class:`Snapshot`, so a
query in another thread always sees a complete matrix.

A route's rows form one or more contiguous *segments*; per-route maxima come from
two ``np.maximum.reduceat`` passes, so scoring is one matrix product plus O(n).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["Aggregation", "IndexStats", "RouteIndex", "RouteScores", "Snapshot"]

Aggregation = Literal["max", "mean_topk", "centroid"]
_NEG = np.float32(-np.inf)


@dataclass
class IndexStats:
    """Counters that tests and benchmarks read (no timing involved)."""

    compiles: int = 0
    full_rebuilds: int = 0  # compactions: every live row copied into a new buffer
    reallocations: int = 0  # capacity doublings
    rows_copied: int = 0  # rows moved by rebuilds and reallocations
    rows_written: int = 0  # pending rows written into the buffer tail
    int8_builds: int = 0  # int8 copies of the matrix made for the pre-filter


@dataclass(frozen=True)
class RouteScores:
    """Scores of the best routes for one query, best first."""

    route_ids: NDArray[np.int64]
    scores: NDArray[np.float32]
    nearest_rows: NDArray[np.int64]  # best utterance row of each route, -1 for centroid


# A one-node ONNX graph, MatMulInteger(A: uint8[1, d], B: int8[d, n]) -> int32[1, n],
# serialised once with the onnx package (so the library does not need it at run time).
_INT8_SCAN_MODEL = (
    b'\x08\x08\x12\x0csynaptoroute:h\n\x18\n\x01A\n\x01B\x12\x01Y"\rMatMulInteger\x12\t'
    b"int8_scanZ\x14\n\x01A\x12\x0f\n\r\x08\x02\x12\t\n\x02\x08\x01\n\x03\x12\x01dZ\x15\n\x01B"
    b"\x12\x10\n\x0e\x08\x03\x12\n\n\x03\x12\x01d\n\x03\x12\x01nb\x14\n\x01Y\x12\x0f\n\r\x08\x06"
    b"\x12\t\n\x02\x08\x01\n\x03\x12\x01nB\x04\n\x00\x10\r"
)
# Below this many rows the float32 product is already a fraction of the encoder's time.
INT8_MIN_ROWS = 4096
_log = logging.getLogger("synaptoroute.index")


class Int8Scan:
    """An int8 copy of the first ``n`` matrix rows, scanned by onnxruntime.

    It reads a quarter of the bytes of the float32 product; at 100k rows that product
    is memory-bound. Each approximate score comes with a rigorous rounding bound, so
    :meth:`Snapshot.score` re-scores in float32 only the rows that could matter and
    returns exactly the routes and scores of the float32 ``max`` aggregation.
    """

    def __init__(self, rows: NDArray[np.float32], threads: int) -> None:
        import onnxruntime as ort

        self.n = len(rows)
        peak = float(np.abs(rows).max()) if self.n else 1.0
        self.scale = 127.0 / max(peak, 1e-12)
        m8 = np.clip(np.rint(rows * self.scale), -127, 127).astype(np.int8)
        self.columns = np.ascontiguousarray(m8.T)  # (dim, n): onnxruntime's fast layout
        # The query goes in as uint8 (q8 + 128); 128 x each row's sum undoes the shift.
        self.shift = 128 * m8.astype(np.int32).sum(axis=1)
        self.l1 = np.abs(rows).sum(axis=1).astype(np.float32)
        self.err = np.abs(rows - m8.astype(np.float32) / self.scale).max(axis=1)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            _INT8_SCAN_MODEL, opts, providers=["CPUExecutionProvider"]
        )

    def bounds(self, query: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Lower and upper bounds of the exact scores of the first ``n`` rows."""
        peak = float(np.abs(query).max())
        sq = 127.0 / max(peak, 1e-12)
        q8 = np.rint(query * sq).astype(np.int32)
        raw = self.session.run(None, {"A": (q8 + 128).astype(np.uint8)[None, :], "B": self.columns})
        approx = (raw[0][0] - self.shift).astype(np.float32) / np.float32(self.scale * sq)
        # |q.m - q~.m~| <= |q - q~|_inf |m|_1 + |q~|_1 |m - m~|_inf ; plus float slack.
        eps = (0.5 / sq) * self.l1 + float(np.abs(q8).sum() / sq) * self.err + 1e-5
        return approx - eps, approx + eps


def _build_int8(rows: NDArray[np.float32]) -> Int8Scan | None:
    try:
        return Int8Scan(rows, threads=1 if len(rows) < 20_000 else (os.cpu_count() or 1))
    except Exception:  # no int8 kernel here: the float32 product still gives the answer
        _log.warning("int8 pre-filter unavailable; scoring in float32", exc_info=True)
        return None


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
    names: tuple[str | None, ...]  # route id -> name
    aggregation: Aggregation
    top_k: int
    version: int
    int8: Int8Scan | None = None  # covers the first int8.n rows; the rest scored exactly

    @property
    def n_routes(self) -> int:
        """Number of live routes."""
        return len(self.live_routes)

    def route_max(self, sims: NDArray[np.float32]) -> NDArray[np.float32]:
        """Per-live-route maximum similarity, shape ``(m, n_routes)``."""
        seg_max = np.maximum.reduceat(sims, self.seg_starts, axis=1)
        return np.maximum.reduceat(seg_max[:, self.seg_order], self.route_starts, axis=1)

    def _route_rows(self, pos: int) -> NDArray[np.intp]:
        first = self.route_starts[pos]
        last = (
            self.route_starts[pos + 1] if pos + 1 < len(self.route_starts) else len(self.seg_order)
        )
        segs = self.seg_order[first:last]
        return np.concatenate([np.arange(self.seg_starts[s], self.seg_ends[s]) for s in segs])

    def score(self, queries: NDArray[np.float32], k: int) -> list[RouteScores]:
        """Top-``k`` routes for each row of ``queries`` under the snapshot's aggregation."""
        m = len(queries)
        empty = RouteScores(
            np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        )
        if self.n_routes == 0:
            return [empty] * m
        k = min(k, self.n_routes)
        if self.aggregation == "centroid":
            sims = _similarities(self.centroids, queries)
            out = []
            for row in sims:
                top = _top_indices(row, k)
                out.append(
                    RouteScores(
                        self.live_routes[top],
                        row[top].astype(np.float32),
                        np.full(k, -1, dtype=np.int64),
                    )
                )
            return out
        if self.aggregation == "max" and self.int8 is not None:
            return [self._max_prefiltered(query, k) for query in queries]
        sims = _similarities(self.matrix, queries)
        maxima = self.route_max(sims)
        results = []
        for qi in range(m):
            if self.aggregation == "max":
                top = _top_indices(maxima[qi], k)
                scores = maxima[qi][top]
            else:
                top, scores = self._mean_topk(sims[qi], maxima[qi], k)
            nearest = np.array(
                [
                    int(rows[np.argmax(sims[qi][rows])])
                    for rows in (self._route_rows(p) for p in top)
                ],
                dtype=np.int64,
            )
            results.append(RouteScores(self.live_routes[top], scores.astype(np.float32), nearest))
        return results

    def _max_prefiltered(self, query: NDArray[np.float32], k: int) -> RouteScores:
        # Exact top-k of the max aggregation: a route's true maximum is at least the
        # largest lower bound of its rows, so the k-th largest such value is a floor for
        # the k-th best route; only rows whose upper bound reaches it are re-scored.
        assert self.int8 is not None
        lower, upper = self.int8.bounds(query)
        if len(self.matrix) > self.int8.n:
            tail = self.matrix[self.int8.n :] @ query
            lower, upper = np.concatenate([lower, tail]), np.concatenate([upper, tail])
        floors = self.route_max(lower[None, :])[0]
        floor = float(np.partition(floors, len(floors) - k)[len(floors) - k])
        rows = np.flatnonzero(upper >= floor)
        route = self.seg_route[np.searchsorted(self.seg_starts, rows, side="right") - 1]
        rows, route = rows[route >= 0], route[route >= 0]
        exact = self.matrix[rows] @ query
        order = np.lexsort((-exact, route))
        firsts = order[np.concatenate(([True], route[order][1:] != route[order][:-1]))]
        top = firsts[np.argsort(-exact[firsts], kind="stable")[:k]]
        return RouteScores(route[top], exact[top].astype(np.float32), rows[top].astype(np.int64))

    def _mean_topk(
        self, sims: NDArray[np.float32], maxima: NDArray[np.float32], k: int
    ) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
        # A route's top-k mean never exceeds its maximum, so visiting routes by
        # descending maximum and stopping once the maximum falls under the k-th best
        # mean found is exact and touches few routes.
        order = np.argsort(-maxima, kind="stable")
        best: list[tuple[float, int]] = []
        for pos in order:
            if len(best) >= k and maxima[pos] < best[k - 1][0]:
                break
            vals = sims[self._route_rows(int(pos))]
            t = min(self.top_k, len(vals))
            mean = float(np.partition(vals, len(vals) - t)[len(vals) - t :].mean())
            best.append((mean, int(pos)))
            best.sort(key=lambda item: -item[0])
        best = best[:k]
        return (
            np.array([p for _, p in best], dtype=np.intp),
            np.array([s for s, _ in best], dtype=np.float32),
        )


def _similarities(matrix: NDArray[np.float32], queries: NDArray[np.float32]) -> NDArray[np.float32]:
    # One matrix-vector product per query, never one matrix-matrix product for the
    # batch: BLAS rounds gemm and gemv differently, and a query must score the same
    # whether it came alone or in a batch (query/aquery parity).
    out = np.empty((len(queries), len(matrix)), dtype=np.float32)
    for i, query in enumerate(queries):
        np.dot(matrix, query, out=out[i])
    return out


def _top_indices(row: NDArray[np.float32], k: int) -> NDArray[np.intp]:
    if k >= len(row):
        return np.argsort(-row, kind="stable")
    part = np.argpartition(-row, k - 1)[:k]
    return part[np.argsort(-row[part], kind="stable")]


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
    ) -> None:
        self.dimension = dimension
        self.aggregation: Aggregation = aggregation
        self.top_k = top_k
        self.stats = IndexStats()
        self._lock = threading.RLock()
        self._buf = np.zeros((max(capacity, 16), dimension), dtype=np.float32)
        self._row_route = np.full(len(self._buf), -1, dtype=np.int64)
        self._texts: list[str] = []
        self._n = 0
        self._dead = 0
        self._pending: list[tuple[int, NDArray[np.float32], list[str]]] = []
        self._ids: dict[str, int] = {}
        self._names: list[str | None] = []
        self._rows: dict[int, list[int]] = {}  # route id -> its rows in the buffer
        self._sums: dict[int, NDArray[np.float64]] = {}
        self._counts: dict[int, int] = {}
        self._snapshot: Snapshot | None = None
        self._version = 0
        self.int8_min_rows = int8_min_rows  # None: never use the int8 pre-filter
        self._int8: Int8Scan | None = None

    # -- mutations (O(added) or O(deleted); no matrix copies) -----------------------
    def add(self, name: str, vectors: NDArray[np.float32], texts: Sequence[str]) -> None:
        """Append utterance vectors to route ``name`` (created if new)."""
        if len(vectors) != len(texts):
            msg = "vectors and texts differ in length"
            raise ValueError(msg)
        with self._lock:
            rid = self._ids.get(name)
            if rid is None:
                rid = len(self._names)
                self._ids[name] = rid
                self._names.append(name)
                self._rows[rid] = []
                self._sums[rid] = np.zeros(self.dimension, dtype=np.float64)
                self._counts[rid] = 0
            if len(vectors):
                self._pending.append((rid, np.asarray(vectors, dtype=np.float32), list(texts)))
                self._sums[rid] += vectors.sum(axis=0)
                self._counts[rid] += len(vectors)
            self._snapshot = None

    def delete_route(self, name: str) -> None:
        """Remove a route; its rows are masked now and compacted later."""
        with self._lock:
            rid = self._ids.pop(name)
            self._names[rid] = None
            rows = self._rows.pop(rid)
            self._row_route[rows] = -1
            self._dead += len(rows)
            self._pending = [p for p in self._pending if p[0] != rid]
            del self._sums[rid], self._counts[rid]
            self._snapshot = None

    def delete_texts(self, name: str, texts: Sequence[str]) -> int:
        """Mask the rows of ``texts`` in route ``name``; returns how many were removed."""
        drop = set(texts)
        with self._lock:
            rid = self._ids[name]
            self._flush_pending()
            keep: list[int] = []
            removed = 0
            for row in self._rows[rid]:
                if self._texts[row] in drop:
                    self._row_route[row] = -1
                    self._sums[rid] -= self._buf[row]
                    self._counts[rid] -= 1
                    removed += 1
                else:
                    keep.append(row)
            self._rows[rid] = keep
            self._dead += removed
            self._snapshot = None
            return removed

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
            end = self._n + len(vectors)
            self._buf[self._n : end] = vectors
            self._row_route[self._n : end] = rid
            self._rows[rid].extend(range(self._n, end))
            self._texts.extend(texts)
            self.stats.rows_written += len(vectors)
            self._n = end
        self._pending = []

    def _grow(self, need: int) -> None:
        capacity = len(self._buf)
        while capacity < need:
            capacity *= 2
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
        self.stats.compiles += 1
        self._version += 1
        n = self._n
        route = self._row_route[:n]
        if n:
            cuts = np.flatnonzero(np.diff(route)) + 1
            seg_starts = np.concatenate(([0], cuts)).astype(np.intp)
        else:
            seg_starts = np.zeros(0, dtype=np.intp)
        seg_ends = np.append(seg_starts[1:], n).astype(np.intp)
        seg_route = route[seg_starts] if n else np.zeros(0, dtype=np.int64)
        live = np.flatnonzero(seg_route >= 0)
        seg_order = live[np.argsort(seg_route[live], kind="stable")].astype(np.intp)
        sorted_routes = seg_route[seg_order]
        if len(seg_order):
            firsts = np.concatenate(([0], np.flatnonzero(np.diff(sorted_routes)) + 1)).astype(
                np.intp
            )
        else:
            firsts = np.zeros(0, dtype=np.intp)
        live_routes = sorted_routes[firsts].astype(np.int64)
        if self.aggregation == "centroid":
            sums = np.array([self._sums[r] for r in live_routes.tolist()]).reshape(
                -1, self.dimension
            )
            norms = np.linalg.norm(sums, axis=1, keepdims=True)
            centroids = (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        else:  # only the centroid aggregation reads them
            centroids = np.zeros((0, self.dimension), dtype=np.float32)
        self._refresh_int8(n)
        return Snapshot(
            matrix=self._buf[:n],
            seg_starts=seg_starts,
            seg_ends=seg_ends,
            seg_route=seg_route,
            seg_order=seg_order,
            route_starts=firsts,
            live_routes=live_routes,
            centroids=centroids,
            texts=self._texts,
            names=tuple(self._names),
            aggregation=self.aggregation,
            top_k=self.top_k,
            version=self._version,
            int8=self._int8,
        )

    def _refresh_int8(self, n: int) -> None:
        if self.aggregation != "max" or self.int8_min_rows is None or n < self.int8_min_rows:
            self._int8 = None
            return
        # Rows added since the last int8 copy are scored exactly; re-quantise only once
        # they are an eighth of the matrix, so each row is quantised O(1) times.
        covered = self._int8.n if self._int8 is not None else 0
        if self._int8 is None or n - covered > max(self.int8_min_rows, n // 8):
            self._int8 = _build_int8(self._buf[:n])
            self.stats.int8_builds += 1
