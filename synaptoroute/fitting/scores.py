"""The labelled rows scored against every route (leave-one-out for a route's own utterances)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ..index import Snapshot
from ..models import SCORE_MIN

_CHUNK = 1024


@dataclass
class _Layout:
    """Where each live route's utterance rows are in the snapshot's matrix."""

    names: list[str]  # route name of each position (positions follow snapshot.live_routes)
    row_pos: NDArray[np.int64]  # matrix row -> route position, -1 for dead rows
    route_rows: list[NDArray[np.intp]]
    text_rows: dict[str, list[int]]


def _layout(snapshot: Snapshot) -> _Layout:
    n = len(snapshot.matrix)
    row_pos = np.full(n, -1, dtype=np.int64)
    pos_of = {int(rid): p for p, rid in enumerate(snapshot.live_routes.tolist())}
    for start, end, rid in zip(
        snapshot.seg_starts.tolist(),
        snapshot.seg_ends.tolist(),
        snapshot.seg_route.tolist(),
        strict=True,
    ):
        if rid >= 0:
            row_pos[start:end] = pos_of[rid]
    order = np.argsort(row_pos, kind="stable")
    counts = np.bincount(row_pos[row_pos >= 0], minlength=len(pos_of))
    live = order[n - int(counts.sum()) :]
    route_rows = np.split(live, np.cumsum(counts)[:-1]) if len(pos_of) else []
    text_rows: dict[str, list[int]] = {}
    for row in live.tolist():
        text_rows.setdefault(snapshot.texts[row], []).append(row)
    names = [str(snapshot.names[int(rid)]) for rid in snapshot.live_routes.tolist()]
    return _Layout(names, row_pos, [r.astype(np.intp) for r in route_rows], text_rows)


def _route_scores(
    snapshot: Snapshot, layout: _Layout, vectors: NDArray[np.float32], texts: Sequence[str]
) -> NDArray[np.float32]:
    """``(n, routes)`` scores under the snapshot's aggregation, each text left out."""
    n, n_routes = len(vectors), len(layout.names)
    out = np.empty((n, n_routes), dtype=np.float32)
    # (query, matrix row) pairs to hide: the rows holding the query's own text.
    q_idx, r_idx = [], []
    for i, text in enumerate(texts):
        for row in layout.text_rows.get(text, ()):
            q_idx.append(i)
            r_idx.append(row)
    hide_q = np.array(q_idx, dtype=np.int64)
    hide_r = np.array(r_idx, dtype=np.int64)
    if snapshot.aggregation == "centroid":
        return _centroid_scores(snapshot, layout, vectors, hide_q, hide_r)
    matrix = snapshot.matrix
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        sims = vectors[start:stop] @ matrix.T
        sel = (hide_q >= start) & (hide_q < stop)
        sims[hide_q[sel] - start, hide_r[sel]] = -np.inf
        if snapshot.aggregation == "max":
            out[start:stop] = snapshot.route_max(sims)
        else:
            for p, rows in enumerate(layout.route_rows):
                vals = sims[:, rows]
                t = min(snapshot.top_k, len(rows))
                top = np.partition(vals, len(rows) - t, axis=1)[:, len(rows) - t :]
                finite = np.isfinite(top)
                count = finite.sum(axis=1)
                total = np.where(finite, top, 0.0).sum(axis=1)
                out[start:stop, p] = np.where(count > 0, total / np.maximum(count, 1), SCORE_MIN)
    # A route whose only utterance was left out has no score: the lowest possible.
    out[~np.isfinite(out)] = SCORE_MIN
    return out


def _centroid_scores(
    snapshot: Snapshot,
    layout: _Layout,
    vectors: NDArray[np.float32],
    hide_q: NDArray[np.int64],
    hide_r: NDArray[np.int64],
) -> NDArray[np.float32]:
    matrix = snapshot.matrix.astype(np.float64)
    sums = np.stack([matrix[rows].sum(axis=0) for rows in layout.route_rows])
    norms = np.linalg.norm(sums, axis=1)
    centroids = (sums / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)
    out: NDArray[np.float32] = vectors @ centroids.T
    if len(hide_q):
        pos = layout.row_pos[hide_r]
        keys, inverse = np.unique(hide_q * len(layout.names) + pos, return_inverse=True)
        removed = np.zeros((len(keys), matrix.shape[1]))
        np.add.at(removed, inverse, matrix[hide_r])
        q, p = np.divmod(keys, len(layout.names))
        rest = sums[p] - removed
        rest_norm = np.linalg.norm(rest, axis=1)
        sim = np.einsum("ij,ij->i", vectors[q].astype(np.float64), rest)
        out[q, p] = np.where(rest_norm > 1e-9, sim / np.maximum(rest_norm, 1e-12), SCORE_MIN)
    return out


def _rank(scores: NDArray[np.float32], k: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order.astype(np.int64), np.take_along_axis(scores, order, axis=1)
