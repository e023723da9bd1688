"""Fitting a router's decision policy on labelled texts.

:func:`fit_router` (also :meth:`AdaptiveRouter.fit`) encodes the labelled texts once
(texts that are already utterances of a route reuse the stored vectors), scores them
once against every route, and then only does arithmetic on those scores:

* Thresholds: an exact search over the scores that occur. Sorted once, every cut
  of every route is evaluated with cumulative sums, so the best per-route thresholds
  (and the best single threshold) are found exactly, not sampled. The ambiguity
  margin is searched over a few quantiles of the occurring top-1/top-2 gaps.
* A head (needs the ``fit`` extra): a multinomial logistic regression on the frozen
  embeddings, trained on the route utterances plus the labelled rows (out-of-scope
  rows form their own class), whose logits are added to ``alpha`` times each route's
  similarity; its probability is calibrated (isotonic or Platt) into a confidence
  with a fitted cut.
* Which of these the router then uses is decided on held-out data: the rows are
  split into folds, each candidate is fitted without a fold and judged on it.

A text that is itself an utterance of a route is scored as if that utterance were
not there (leave-one-out); otherwise a route's own utterances would score 1.0 and
every threshold would look perfect.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from ._cpu import blas_threads
from .datasets import NONE, check_labelled, label_indexes, routes_from_labelled
from .decision import (
    KNN_K,
    Calibrator,
    DecisionPolicy,
    LinearHead,
    head_scores,
    logit,
    mahalanobis_score,
    scorer_features,
    threshold_verdicts,
)
from .evaluation import Figures, auroc, figures
from .exceptions import InvalidInputError, MissingDependencyError, install_hint
from .index import Snapshot
from .models import NEGATIVES_ROUTE, SCORE_MIN

if TYPE_CHECKING:
    from .router import AdaptiveRouter

__all__ = ["FitReport", "Objective", "fit_router", "routes_from_labelled"]

Objective = Literal["auto", "balanced", "accuracy", "macro_f1", "oos_recall"]
_OBJECTIVES = ("auto", "balanced", "accuracy", "macro_f1", "oos_recall")
_FIT_HINT = install_hint("fit")
#: Weights of the similarity score in the head's logits, tried on held-out data.
_ALPHAS = (0.0, 2.5, 5.0, 10.0, 20.0, 40.0)
#: Weights of the lexical score in the head's logits (0: dense only), tried likewise.
_BETAS = (0.0, 2.5, 5.0, 10.0, 20.0)
#: Shrinkage of the shared covariance towards a multiple of the identity (Mahalanobis).
_SHRINK = 0.05
#: Quantiles of the occurring top-1/top-2 gaps tried as the ambiguity margin.
_MARGIN_QUANTILES = (0.01, 0.02, 0.05, 0.1, 0.2)
# A cut above all (or below all) of a segment's values sits this far beyond them.
_BEYOND = 1e-4
_CHUNK = 1024


# -- the report ------------------------------------------------------------------------
@dataclass
class FitReport:
    """What a fit changed and how the figures moved.

    ``before`` holds the figures of the previous policy on the labelled rows;
    ``after`` the held-out estimate of the new one (each row judged by a policy
    fitted without its fold), so the two are honest to compare. Both score every
    text that is a route's utterance as if it were not (leave-one-out).
    """

    objective: str
    target_oos_recall: float | None
    decision: Literal["head", "thresholds"]
    rows: int
    in_scope: int
    out_of_scope: int
    reused_vectors: int
    encoded: int
    before: Figures
    after: Figures
    candidates: dict[str, dict[str, Any]]
    threshold: tuple[float, float]
    min_margin: tuple[float, float]
    thresholds_changed: dict[str, tuple[float, float]]
    head: dict[str, Any] | None
    calibration: str | None
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; headline figures also appear flat as ``<figure>_before/_after``."""
        flat: dict[str, Any] = {
            "objective": self.objective,
            "target_oos_recall": self.target_oos_recall,
            "decision": self.decision,
            "rows": self.rows,
            "in_scope": self.in_scope,
            "out_of_scope": self.out_of_scope,
            "reused_vectors": self.reused_vectors,
            "encoded": self.encoded,
        }
        for key in ("accuracy", "in_scope_accuracy", "oos_recall", "oos_precision", "macro_f1"):
            flat[f"{key}_before"] = getattr(self.before, key)
            flat[f"{key}_after"] = getattr(self.after, key)
        flat["threshold_before"], flat["threshold_after"] = self.threshold
        flat["min_margin_before"], flat["min_margin_after"] = self.min_margin
        flat["routes_with_new_threshold"] = len(self.thresholds_changed)
        flat["seconds_total"] = self.seconds.get("total")
        return {
            **flat,
            "before": asdict(self.before),
            "after": asdict(self.after),
            "candidates": self.candidates,
            "thresholds_changed": {k: list(v) for k, v in self.thresholds_changed.items()},
            "head": self.head,
            "calibration": self.calibration,
            "notes": self.notes,
            "seconds": self.seconds,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)

    def __str__(self) -> str:
        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.4f}"

        lines = [
            f"fit on {self.rows} rows ({self.in_scope} in scope, {self.out_of_scope} out of "
            f"scope; {self.reused_vectors} vectors reused, {self.encoded} encoded), "
            f"objective {self.objective}"
            + (f" (target OOS recall {self.target_oos_recall})" if self.target_oos_recall else ""),
            f"decision now by: {self.decision}",
            f"{'':20}{'before':>10}{'after':>10}  (after: held-out estimate)",
        ]
        for key in ("accuracy", "in_scope_accuracy", "oos_recall", "oos_precision", "macro_f1"):
            lines.append(
                f"{key:20}{fmt(getattr(self.before, key)):>10}{fmt(getattr(self.after, key)):>10}"
            )
        lines.append(
            f"default threshold {self.threshold[0]:.4f} -> {self.threshold[1]:.4f}; "
            f"margin {self.min_margin[0]:.4f} -> {self.min_margin[1]:.4f}; "
            f"{len(self.thresholds_changed)} routes got a new threshold"
        )
        for name, values in self.candidates.items():
            lines.append(f"  candidate {name}: held-out objective {fmt(values.get('objective'))}")
        lines.extend(f"note: {note}" for note in self.notes)
        lines.append(f"took {self.seconds.get('total', 0.0):.1f} s")
        return "\n".join(lines)


# -- scoring the labelled rows against every route -----------------------------------
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


# -- exact cut search ------------------------------------------------------------------
@dataclass
class _Cuts:
    """The best cut of each segment and the predictions it gives."""

    cut: NDArray[np.float64]  # per segment id
    pred: NDArray[np.int64]  # per row


def _segment_order(
    values: NDArray[np.float64], seg: NDArray[np.int64], rows: NDArray[np.intp]
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.bool_]]:
    """Rows sorted by segment then descending value; segment starts; tie-group ends."""
    order = rows[np.lexsort((-values[rows], seg[rows]))]
    s = seg[order]
    v = values[order]
    n = len(order)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if n else np.zeros(0, np.intp)
    last = np.r_[s[1:] != s[:-1], True] if n else np.zeros(0, bool)
    ends = last | np.r_[v[:-1] != v[1:], True] if n else np.zeros(0, bool)
    return order, starts.astype(np.intp), ends


def _best_per_segment(
    gain: NDArray[np.float64], starts: NDArray[np.intp], ends: NDArray[np.bool_], n: int
) -> NDArray[np.int64]:
    """Accepted count per segment maximising ``gain`` (the value of accepting through
    each sorted row; accepting none is worth 0); the smallest count among ties."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    masked = np.where(ends, gain, -np.inf)
    best = np.maximum.reduceat(masked, starts)
    seg_of = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    hit = ends & (masked == best[seg_of]) & (best[seg_of] > 0)
    idx = np.where(hit, np.arange(n), n)
    first = np.minimum.reduceat(idx, starts)
    return np.where(first < n, first - starts + 1, 0).astype(np.int64)


def _segment_cumsum(
    x: NDArray[np.float64], starts: NDArray[np.intp], n: int
) -> NDArray[np.float64]:
    total = np.cumsum(x)
    before = np.r_[0.0, total][starts]
    seg_of = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    out: NDArray[np.float64] = total - before[seg_of]
    return out


def _cut_values(
    v: NDArray[np.float64], starts: NDArray[np.intp], taken: NDArray[np.int64], n: int
) -> NDArray[np.float64]:
    sizes = np.diff(np.r_[starts, n])
    cuts = np.empty(len(starts))
    for i, (start, size, j) in enumerate(
        zip(starts.tolist(), sizes.tolist(), taken.tolist(), strict=True)
    ):
        if j == 0:
            cuts[i] = v[start] + _BEYOND
        elif j == size:
            cuts[i] = v[start + size - 1] - _BEYOND
        else:
            cuts[i] = (v[start + j - 1] + v[start + j]) / 2
    return cuts


def _search(
    values: NDArray[np.float64],
    cand: NDArray[np.int64],
    y: NDArray[np.int64],
    active: NDArray[np.bool_],
    forced: NDArray[np.int64],
    seg: NDArray[np.int64],
    n_seg: int,
    n_routes: int,
    objective: Objective,
    target: float,
    separable_f1: bool,
) -> _Cuts:
    """Best cut per segment: an active row is routed to ``cand`` iff its value is at
    least its segment's cut; an inactive row's prediction is ``forced``.

    Accuracy and (per segment) macro-F1 are separable over segments and are searched
    exactly; the target out-of-scope recall is met through a Lagrange multiplier on
    rejected out-of-scope rows, bisected.
    """
    rows = np.flatnonzero(active)
    order, starts, ends = _segment_order(values, seg, rows)
    n = len(order)
    c, t = cand[order], y[order]
    v = values[order]
    seg_ids = seg[order][starts] if n else np.zeros(0, dtype=np.int64)

    def finish(taken: NDArray[np.int64]) -> _Cuts:
        cut = np.full(n_seg, np.inf)
        cut[seg_ids] = _cut_values(v, starts, taken, n)
        pred = forced.copy()
        pred[rows] = np.where(values[rows] >= cut[seg[rows]], cand[rows], NONE)
        return _Cuts(cut, pred)

    right = (t == c).astype(np.float64)
    oos = (t == NONE).astype(np.float64)
    if objective == "accuracy":
        return finish(_best_per_segment(_segment_cumsum(right - oos, starts, n), starts, ends, n))
    if objective == "balanced":
        # (1 - share) * in-scope accuracy + share * out-of-scope recall is accuracy
        # with each in-scope row weighted (1 - share) / n_in, each other share / n_oos.
        n_in = max(int((y != NONE).sum()), 1)
        n_out = max(int((y == NONE).sum()), 1)
        gain = _segment_cumsum((1 - target) * right / n_in - target * oos / n_out, starts, n)
        return finish(_best_per_segment(gain, starts, ends, n))
    if objective == "oos_recall":
        total_oos = int((y == NONE).sum())
        if total_oos == 0:
            return finish(_best_per_segment(_segment_cumsum(right, starts, n), starts, ends, n))

        def solve(lam: float) -> tuple[NDArray[np.int64], float]:
            taken = _best_per_segment(
                _segment_cumsum(right - lam * oos, starts, n), starts, ends, n
            )
            pred = finish(taken).pred
            return taken, float(((pred == NONE) & (y == NONE)).sum()) / total_oos

        lo, hi = 0.0, float(n + 1)
        taken, recall = solve(lo)
        if recall >= target:
            return finish(taken)
        best, _ = solve(hi)
        for _ in range(40):
            mid = (lo + hi) / 2
            taken, recall = solve(mid)
            if recall >= target:
                hi, best = mid, taken
            else:
                lo = mid
        return finish(best)
    # macro-F1
    support = np.bincount(y[y != NONE], minlength=n_routes).astype(np.float64)
    if separable_f1:
        tp = _segment_cumsum(right, starts, n)
        accepted = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n])) + 1
        n_r = support[c]
        gain = np.where(n_r > 0, 2 * tp / (accepted + n_r), -1.0)
        return finish(_best_per_segment(gain, starts, ends, n))
    return finish(_global_f1(c, t, ends, forced, y, support, n_routes, starts, n))


def _global_f1(
    c: NDArray[np.int64],
    t: NDArray[np.int64],
    ends: NDArray[np.bool_],
    forced: NDArray[np.int64],
    y: NDArray[np.int64],
    support: NDArray[np.float64],
    n_routes: int,
    starts: NDArray[np.intp],
    n: int,
) -> NDArray[np.int64]:
    """Accepted count of one segment maximising macro-F1 (not separable: incremental)."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    base_tp = np.bincount(forced[(forced == y) & (forced != NONE)], minlength=n_routes)
    base_pred = np.bincount(forced[forced != NONE], minlength=n_routes)
    # How many earlier sorted rows went to the same route: counts before each row.
    same = np.argsort(c, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    group_start = np.r_[0, np.flatnonzero(np.diff(c[same])) + 1]
    sizes = np.diff(np.r_[group_start, n])
    rank[same] = np.arange(n) - np.repeat(group_start, sizes)
    hits = (t == c).astype(np.int64)
    cum_hits = np.empty(n, dtype=np.int64)
    cum_hits[same] = np.cumsum(hits[same]) - np.repeat(
        np.r_[0, np.cumsum(hits[same])][group_start], sizes
    )
    pred_before = base_pred[c] + rank
    tp_after = base_tp[c] + cum_hits
    tp_before = tp_after - hits
    n_r = support[c]
    f_before = np.where(pred_before + n_r > 0, 2 * tp_before / np.maximum(pred_before + n_r, 1), 0)
    f_after = 2 * tp_after / (pred_before + 1 + n_r)
    newly = ((pred_before == 0) & (n_r == 0)).astype(np.float64)
    present0 = float(((base_pred > 0) | (support > 0)).sum())
    f0 = float((2 * base_tp / np.maximum(base_pred + support, 1)).sum())
    macro = (f0 + np.cumsum(f_after - f_before)) / np.maximum(present0 + np.cumsum(newly), 1)
    base = f0 / max(present0, 1.0)
    gain = macro - base
    return _best_per_segment(gain, starts, ends, n)


def _objective_value(fig: Figures, objective: Objective, target: float) -> float:
    if objective == "accuracy":
        return fig.accuracy or 0.0
    if objective == "balanced":  # target: the out-of-scope share
        if fig.oos_recall is None:
            return fig.in_scope_accuracy or 0.0
        return (1 - target) * (fig.in_scope_accuracy or 0.0) + target * fig.oos_recall
    if objective == "macro_f1":
        return fig.macro_f1 or 0.0
    # In-scope accuracy, minus any shortfall from the target recall.
    recall = fig.oos_recall if fig.oos_recall is not None else 1.0
    return (fig.in_scope_accuracy or 0.0) - max(0.0, target - recall)


# -- threshold policies ------------------------------------------------------------------
@dataclass
class _Scored:
    """The labelled rows as scored once."""

    top_ids: NDArray[np.int64]  # (n, K) route positions, best first
    top_vals: NDArray[np.float32]  # (n, K)
    y: NDArray[np.int64]
    n_routes: int
    lex: NDArray[np.float64] | None = None  # (n_labelled, K) lexical scores of the ranked
    knn: NDArray[np.float64] | None = None  # (n_labelled,) k-th nearest utterance similarity

    @property
    def s1(self) -> NDArray[np.float64]:
        return self.top_vals[:, 0].astype(np.float64)

    @property
    def s2(self) -> NDArray[np.float64]:
        if self.top_vals.shape[1] < 2:
            return np.full(len(self.y), -np.inf)
        return self.top_vals[:, 1].astype(np.float64)


@dataclass
class _ThresholdFit:
    default: float
    per_route: dict[int, float]  # route position -> threshold
    margin: float


def _threshold_predictions(
    data: _Scored, rows: NDArray[np.intp], fit: _ThresholdFit, fixed: NDArray[np.float64]
) -> NDArray[np.int64]:
    thr = np.full(data.n_routes, fit.default)
    for p, value in fit.per_route.items():
        thr[p] = value
    thr = np.where(np.isnan(fixed), thr, fixed)
    top1 = data.top_ids[rows, 0]
    verdict = threshold_verdicts(data.s1[rows], data.s2[rows], thr[top1], fit.margin)
    return np.where(verdict == 0, top1, NONE).astype(np.int64)


def _fit_thresholds(
    data: _Scored,
    rows: NDArray[np.intp],
    fixed: NDArray[np.float64],
    objective: Objective,
    target: float,
    per_route: bool,
    min_support: int,
    margins: Sequence[float],
) -> _ThresholdFit:
    """The best thresholds (and margin) for ``rows``, judged on those same rows."""
    y = data.y[rows]
    top1 = data.top_ids[rows, 0]
    s1 = data.s1[rows]
    gap = s1 - data.s2[rows]
    is_fixed = ~np.isnan(fixed[top1])
    fixed_pass = is_fixed & (s1 >= np.nan_to_num(fixed[top1], nan=np.inf))
    best: tuple[float, _ThresholdFit] | None = None
    for margin in margins:
        ambiguous = (gap < margin) if margin > 0 else np.zeros(len(rows), dtype=bool)
        forced = np.where(fixed_pass & ~ambiguous, top1, NONE).astype(np.int64)
        active = ~is_fixed & ~ambiguous
        zeros = np.zeros(len(rows), dtype=np.int64)
        glob = _search(
            s1, top1, y, active, forced, zeros, 1, data.n_routes, objective, target, False
        )
        default = float(glob.cut[0]) if np.isfinite(glob.cut[0]) else 1.0
        fit = _ThresholdFit(default, {}, float(margin))
        pred = glob.pred
        if per_route:
            counts = np.bincount(top1[active], minlength=data.n_routes)
            own = active & (counts[top1] >= min_support)
            shared = active & ~own
            forced_pr = forced.copy()
            forced_pr[shared] = np.where(s1[shared] >= default, top1[shared], NONE)
            local = _search(
                s1, top1, y, own, forced_pr, top1, data.n_routes, data.n_routes,
                objective, target, True,
            )  # fmt: skip
            searched = np.unique(top1[own])
            fit.per_route = {int(p): float(local.cut[p]) for p in searched}
            pred = local.pred
        value = _objective_value(figures(y, pred, data.n_routes), objective, target)
        if best is None or value > best[0] + 1e-12:
            best = (value, fit)
    assert best is not None
    return best[1]


# -- calibration ---------------------------------------------------------------------------
def _isotonic(x: NDArray[np.float64], y: NDArray[np.float64]) -> Calibrator:
    """Pool-adjacent-violators on ``(x, y)``; knots at each block's ends."""
    ux, inverse = np.unique(x, return_inverse=True)
    weight = np.bincount(inverse).astype(np.float64)
    total = np.bincount(inverse, weights=y)
    blocks: list[list[float]] = []  # [sum_y, sum_w, x_first, x_last]
    for i in range(len(ux)):
        blocks.append([total[i], weight[i], ux[i], ux[i]])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            merged = blocks.pop()
            prev = blocks[-1]
            prev[0] += merged[0]
            prev[1] += merged[1]
            prev[3] = merged[3]
    xs: list[float] = []
    ys: list[float] = []
    # Like Platt's smoothed targets: a finite sample never shows certainty.
    low, high = 1 / (len(x) + 2), (len(x) + 1) / (len(x) + 2)
    for sum_y, sum_w, first, last in blocks:
        value = min(max(sum_y / sum_w, low), high)
        xs.append(float(first))
        ys.append(value)
        if last > first:
            xs.append(float(last))
            ys.append(value)
    return Calibrator("isotonic", tuple(xs), tuple(ys))


def _platt(x: NDArray[np.float64], y: NDArray[np.float64], logit_input: bool) -> Calibrator:
    """Platt scaling with Platt's smoothed targets, fitted by Newton's method."""
    if logit_input:
        x = logit(x)
    # Newton's method on standardised inputs (scores such as Mahalanobis distances
    # span hundreds); the result is mapped back to the raw scale at the end.
    mu, sd = float(x.mean()), float(x.std()) or 1.0
    x = (x - mu) / sd
    n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
    target = np.where(y > 0, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    a, b = 1.0, 0.0
    for _ in range(100):
        z = np.clip(a * x + b, -35, 35)
        p = 1 / (1 + np.exp(-z))
        g = p - target
        w = p * (1 - p) + 1e-12
        grad = np.array([float((g * x).sum()), float(g.sum())])
        hess = np.array(
            [[float((w * x * x).sum()) + 1e-9, float((w * x).sum())], [float((w * x).sum()), float(w.sum()) + 1e-9]]
        )  # fmt: skip
        step = np.linalg.solve(hess, grad)
        a, b = a - float(step[0]), b - float(step[1])
        if float(np.abs(step).max()) < 1e-10:
            break
    return Calibrator("platt", (a / sd, b - a * mu / sd), (), logit_input)


def _calibrate(
    raw: NDArray[np.float64], correct: NDArray[np.bool_], kind: str, logit_input: bool
) -> Calibrator:
    y = correct.astype(np.float64)
    if kind == "auto":
        both = 0 < y.sum() < len(y)
        kind = "isotonic" if len(y) >= 1000 or not both else "platt"
    if kind == "platt" and 0 < y.sum() < len(y):
        return _platt(raw, y, logit_input)
    return _isotonic(raw, y)


# -- the head ----------------------------------------------------------------------------
def _softmax_regression(
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    n_cols: int,
    c: float,
    init: NDArray[np.float64] | None,
    max_iter: int,
) -> NDArray[np.float64]:
    """Multinomial logistic regression, mean log-loss plus ``|W|^2 / (2 C n)`` (the
    objective of scikit-learn's ``LogisticRegression(C=c)``), by L-BFGS in float32."""
    try:
        from scipy.optimize import minimize  # type: ignore[import-untyped]
    except ImportError as exc:
        msg = f"fitting a head needs scipy: {_FIT_HINT}"
        raise MissingDependencyError(msg) from exc
    n, d = x.shape
    onehot = np.zeros((n, n_cols), dtype=np.float32)
    onehot[np.arange(n), y] = 1.0
    lam = 1.0 / (c * n)

    def loss_grad(theta: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        w = theta[: d * n_cols].reshape(d, n_cols).astype(np.float32)
        b = theta[d * n_cols :].astype(np.float32)
        z = x @ w
        z += b
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        loss = float(np.log(s).sum() - (z * onehot).sum()) / n
        loss += 0.5 * lam * float(np.dot(theta[: d * n_cols], theta[: d * n_cols]))
        e /= s
        e -= onehot
        grad_w = (x.T @ e) / n + lam * w
        grad_b = e.sum(axis=0) / n
        return loss, np.concatenate([grad_w.ravel(), grad_b]).astype(np.float64)

    theta0 = np.zeros(d * n_cols + n_cols) if init is None else init
    result = minimize(
        loss_grad,
        theta0,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": 1e-4},
    )
    out: NDArray[np.float64] = result.x
    return out


def _folds(y: NDArray[np.int64], k: int, seed: int) -> NDArray[np.int64]:
    """Stratified fold of each row: within each label, rows are dealt round-robin."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    order = perm[np.argsort(y[perm], kind="stable")]
    fold = np.empty(len(y), dtype=np.int64)
    labels = y[order]
    starts = np.r_[0, np.flatnonzero(np.diff(labels)) + 1]
    rank = np.arange(len(y)) - np.repeat(starts, np.diff(np.r_[starts, len(y)]))
    offset = rng.integers(k)
    fold[order] = (rank + offset) % k
    return fold


@dataclass
class _HeadFit:
    alpha: float
    beta: float
    scorer: str
    calibrator: Calibrator
    cut: float
    pred: NDArray[np.int64]  # held-out predictions on the labelled rows
    value: float  # the objective at the best single cut of the pooled held-out values
    scorers: dict[str, dict[str, Any]]  # each scorer's held-out figures
    center: NDArray[np.float64] | None = None  # the combination's standardisation
    scale: NDArray[np.float64] | None = None
    combination: NDArray[np.float64] | None = None


def _head_pred(
    logits: NDArray[np.float64],
    data: _Scored,
    rows: NDArray[np.intp],
    k: int,
    alpha: float,
    beta: float = 0.0,
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Candidate route, its probability, the energy and the candidate's similarity."""
    cols = data.top_ids[rows, :k]
    sims = data.top_vals[rows, :k]
    lex = None if data.lex is None or not beta else data.lex[rows, :k]
    choice, raw, _, energy = head_scores(logits, cols, sims, alpha, data.n_routes, lex, beta)
    pick = np.arange(len(rows))
    return cols[pick, choice], raw, energy, sims[pick, choice].astype(np.float64)


def _mahalanobis_fit(
    x: NDArray[np.float32], y: NDArray[np.int64], n_routes: int
) -> dict[str, NDArray[np.float32]]:
    """Route means and a shared, shrunk precision matrix (Podolskiy et al. 2021)."""
    keep = y != NONE
    xs = x[keep].astype(np.float64)
    ys = y[keep]
    counts = np.bincount(ys, minlength=n_routes).astype(np.float64)
    sums = np.zeros((n_routes, x.shape[1]))
    np.add.at(sums, ys, xs)
    means = sums / np.maximum(counts, 1.0)[:, None]
    centred = xs - means[ys]
    cov = centred.T @ centred / max(len(xs) - 1, 1)
    # Shrinking towards the mean variance keeps the inverse stable with few rows.
    cov = (1 - _SHRINK) * cov + _SHRINK * float(np.trace(cov)) / len(cov) * np.eye(len(cov))
    precision = np.linalg.inv(cov)
    projected = precision @ means.T
    terms = np.einsum("ij,ji->i", means, projected)
    # A route with no rows here can never be the nearest mean.
    terms[counts == 0] = np.inf
    return {
        "precision": precision.astype(np.float32),
        "projected_means": projected.astype(np.float32),
        "mean_terms": terms.astype(np.float32),
    }


def _knn_loo(
    snapshot: Snapshot, layout: _Layout, vectors: NDArray[np.float32], texts: Sequence[str]
) -> NDArray[np.float64]:
    """The k-th nearest live utterance's similarity of each text, its own rows left out."""
    live = np.flatnonzero(layout.row_pos >= 0)
    matrix = snapshot.matrix[live]
    where = np.full(len(layout.row_pos), -1, dtype=np.int64)
    where[live] = np.arange(len(live))
    out = np.full(len(texts), -1.0)
    kk = min(KNN_K, len(live))
    if kk == 0:
        return out
    for start in range(0, len(texts), _CHUNK):
        stop = min(start + _CHUNK, len(texts))
        sims = vectors[start:stop] @ matrix.T
        for i in range(start, stop):
            for row in layout.text_rows.get(texts[i], ()):
                if where[row] >= 0:
                    sims[i - start, where[row]] = -np.inf
        top = np.partition(sims, len(live) - kk, axis=1)[:, len(live) - kk]
        out[start:stop] = np.where(np.isfinite(top), top, -1.0)
    return out


def _logistic(x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    """L2-regularised logistic regression by Newton's method; weights then bias."""
    design = np.c_[x, np.ones(len(x))]
    w = np.zeros(design.shape[1])
    ridge = np.eye(len(w)) * 1e-2
    ridge[-1, -1] = 0.0
    for _ in range(50):
        p = 0.5 * (1.0 + np.tanh(0.5 * (design @ w)))
        grad = design.T @ (p - y) + ridge @ w
        hess = (design * (p * (1 - p) + 1e-9)[:, None]).T @ design + ridge + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return w


def _held_out_cuts(
    conf: NDArray[np.float64],
    cand: NDArray[np.int64],
    y: NDArray[np.int64],
    fold: NDArray[np.int64],
    folds: int,
    n_routes: int,
    objective: Objective,
    target: float,
) -> NDArray[np.int64]:
    """Predictions where each fold's rows are cut at a value chosen on the other folds
    (their out-of-scope rows included), so no row judges the cut it chose."""
    zeros = np.zeros(len(y), dtype=np.int64)
    nowhere = np.full(len(y), NONE, dtype=np.int64)
    pred = np.empty(len(y), dtype=np.int64)
    for f in range(folds):
        test = fold == f
        if not test.any():
            continue
        part = _search(conf, cand, y, ~test, nowhere, zeros, 1, n_routes, objective, target, False)
        pred[test] = np.where(conf[test] >= part.cut[0], cand[test], NONE)
    return pred


def _pooled_cut(
    conf: NDArray[np.float64],
    cand: NDArray[np.int64],
    y: NDArray[np.int64],
    n_routes: int,
    objective: Objective,
    target: float,
) -> tuple[float, float]:
    """The objective at the best single cut of all rows, and that cut."""
    zeros = np.zeros(len(y), dtype=np.int64)
    nowhere = np.full(len(y), NONE, dtype=np.int64)
    everywhere = np.ones(len(y), dtype=bool)
    whole = _search(
        conf, cand, y, everywhere, nowhere, zeros, 1, n_routes, objective, target, False
    )
    value = _objective_value(figures(y, whole.pred, n_routes), objective, target)
    cut = float(whole.cut[0]) if np.isfinite(whole.cut[0]) else 1.0 + _BEYOND
    return value, cut


def _choose_head(
    oof: NDArray[np.float64],
    data: _Scored,
    rows: NDArray[np.intp],
    fold: NDArray[np.int64],
    folds: int,
    k: int,
    objective: Objective,
    target: float,
    calibration: str,
    maha: NDArray[np.float64] | None,
    betas: Sequence[float],
) -> _HeadFit:
    """Pick ``alpha`` and ``beta``, then the out-of-scope scorer, on held-out logits.

    ``alpha`` and ``beta`` are chosen by the objective at the best single cut of the
    pooled held-out probabilities. Each scorer is then judged by held-out
    predictions: each fold's rows are cut at a value chosen on the other folds, so
    the out-of-scope rows a cut is judged on were not used to choose it (the
    ``combined`` scorer's weights are also learned without the fold). The scorer
    with the best held-out objective wins; ``max_prob`` wins ties.
    """
    y = data.y[rows]
    n_routes = data.n_routes
    # Platt keeps the order of the raw values, so a cut on the confidence is as fine
    # as a cut on the raw value; isotonic steps would tie many rows.
    kind = "platt" if calibration == "auto" else calibration
    best: tuple[float, float, float] | None = None
    for alpha in _ALPHAS:
        for beta in betas:
            cand, raw, _, _ = _head_pred(oof, data, rows, k, alpha, beta)
            conf = _calibrate(raw, cand == y, kind, True)(raw)
            value, _ = _pooled_cut(conf, cand, y, n_routes, objective, target)
            if best is None or value > best[0] + 1e-12:
                best = (value, alpha, beta)
    assert best is not None
    _, alpha, beta = best
    cand, prob, energy, nearest = _head_pred(oof, data, rows, k, alpha, beta)
    raws: dict[str, NDArray[np.float64]] = {"max_prob": prob, "energy": energy, "nearest": nearest}
    if maha is not None:
        raws["mahalanobis"] = maha
    if data.knn is not None:
        raws["knn"] = data.knn[rows]
    center = scale = combination = None
    if len(raws) == 5 and 0 < int((cand == y).sum()) < len(y):
        feats = scorer_features(prob, energy, nearest, raws["mahalanobis"], raws["knn"])
        center, scale = feats.mean(axis=0), feats.std(axis=0) + 1e-9
        z = (feats - center) / scale
        good = (cand == y).astype(np.float64)
        combined = np.empty(len(y))
        for f in range(folds):
            test = fold == f
            if test.any() and (~test).any():
                w = _logistic(z[~test], good[~test])
                combined[test] = z[test] @ w[:-1] + w[-1]
        raws["combined"] = combined
        combination = _logistic(z, good)
    chosen: tuple[float, str, Calibrator, NDArray[np.int64]] | None = None
    report: dict[str, dict[str, Any]] = {}
    for scorer, raw in raws.items():
        calibrator = _calibrate(raw, cand == y, kind, scorer == "max_prob")
        conf = calibrator(raw)
        pred = _held_out_cuts(conf, cand, y, fold, folds, n_routes, objective, target)
        held = figures(y, pred, n_routes)
        value = _objective_value(held, objective, target)
        report[scorer] = {
            "objective": value,
            "in_scope_accuracy": held.in_scope_accuracy,
            "oos_recall": held.oos_recall,
            "oos_auroc": auroc(raw, y != NONE),
        }
        if chosen is None or value > chosen[0] + 1e-12:
            chosen = (value, scorer, calibrator, pred)
    assert chosen is not None
    _, scorer, calibrator, pred = chosen
    conf = calibrator(raws[scorer])
    value, cut = _pooled_cut(conf, cand, y, n_routes, objective, target)
    return _HeadFit(
        alpha, beta, scorer, calibrator, cut, pred, value, report, center, scale, combination
    )


# -- the fit ------------------------------------------------------------------------------
def fit_router(
    router: AdaptiveRouter,
    texts: Sequence[str],
    labels: Sequence[str | None],
    *,
    objective: Objective = "auto",
    target_oos_recall: float = 0.9,
    oos_share: float = 0.2,
    head: bool | Literal["auto"] = "auto",
    hybrid: bool | Literal["auto"] = "auto",
    per_route: bool | Literal["auto"] = "auto",
    margin: bool = True,
    calibration: Literal["auto", "isotonic", "platt"] = "auto",
    folds: int = 3,
    top_k: int = 5,
    regularization: float = 10.0,
    min_support: int = 10,
    max_iter: int = 100,
    seed: int = 0,
) -> FitReport:
    """Fit ``router``'s decision policy on labelled texts and save it in its storage.

    Args:
        router: the router; its routes must exist (labels name them).
        texts: example queries.
        labels: the route each should go to; ``None`` for a query that fits no route.
        objective: ``"auto"`` (the default: ``"balanced"`` when some labels are
            ``None``, else ``"accuracy"``), ``"balanced"`` (the accuracy expected
            when ``oos_share`` of the traffic is out of scope:
            ``(1 - oos_share) * in-scope accuracy + oos_share * out-of-scope
            recall``, whatever the share of ``None`` labels), ``"accuracy"`` (all rows, a rejected
            out-of-scope row counts as right), ``"macro_f1"`` (mean F1 over routes),
            or ``"oos_recall"`` (best in-scope accuracy while rejecting at least
            ``target_oos_recall`` of the out-of-scope rows; needs rows labelled
            ``None``).
        target_oos_recall: the recall ``"oos_recall"`` must reach.
        oos_share: the share of out-of-scope traffic ``"balanced"`` assumes (0.2: about
            CLINC150's test split, 1,000 of 5,500 queries; 0.5 is the plain mean).
        head: ``"auto"`` trains a head and uses it if it does better on held-out
            data; ``True`` uses it regardless; ``False`` fits thresholds only.
        hybrid: add the lexical score (:mod:`synaptoroute.lexical`) to the head's
            logits: ``"auto"`` if it does better on held-out data, ``True`` always
            (the best positive weight), ``False`` never.
        per_route: one threshold per route (``True``), a single one (``False``), or
            whichever does better on held-out data (``"auto"``).
        margin: also search the ambiguity margin (top-1 minus top-2).
        calibration: ``"isotonic"``, ``"platt"``, or ``"auto"`` (the score calibrator
            isotonic from 1,000 rows on, else Platt; the head's always Platt).
        folds: folds for the held-out estimates (at least 2).
        top_k: how many ranked routes the head chooses among.
        regularization: the head's inverse L2 strength (scikit-learn's ``C``).
        min_support: a route needs this many rows where it ranks first to get its own
            threshold; the others share the fitted default.
        max_iter: L-BFGS iterations per head fit.
        seed: fold assignment seed.

    Returns:
        A :class:`FitReport` of what changed, with before/after figures.

    Raises:
        InvalidInputError: bad rows, unknown labels, or bad options.
        MissingDependencyError: ``head=True`` without the ``fit`` extra.
    """
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    notes: list[str] = []
    if objective not in _OBJECTIVES:
        msg = f"objective must be one of {_OBJECTIVES}, got {objective!r}"
        raise InvalidInputError(msg)
    if not 0.0 < oos_share < 1.0:
        msg = f"oos_share must be in (0, 1), got {oos_share!r}"
        raise InvalidInputError(msg)
    if not 0.0 < target_oos_recall <= 1.0:
        msg = f"target_oos_recall must be in (0, 1], got {target_oos_recall!r}"
        raise InvalidInputError(msg)
    if folds < 2:
        msg = "folds must be at least 2"
        raise InvalidInputError(msg)
    if top_k < 1:
        msg = "top_k must be at least 1"
        raise InvalidInputError(msg)
    check_labelled(texts, labels)
    for i, text in enumerate(texts):
        if not text.strip():
            msg = f"text {i} is empty"
            raise InvalidInputError(msg)
    with router._lock, _fit_threads(router, len(texts), head is not False):
        snapshot = router._index.snapshot()
        layout = _layout(snapshot)
        names = layout.names
        n_routes = len(names)
        if n_routes == 0:
            msg = "the router has no routes to fit; add routes first"
            raise InvalidInputError(msg)
        # The negative examples' route is no class: its utterances are out-of-scope rows.
        keep_cols = np.array([i for i, name in enumerate(names) if name != NEGATIVES_ROUTE])
        remap = np.full(len(names) + 1, NONE, dtype=np.int64)
        remap[keep_cols] = np.arange(len(keep_cols))
        names = [names[i] for i in keep_cols.tolist()]
        n_routes = len(names)
        if n_routes == 0:
            msg = "the router has no routes to fit; add routes first"
            raise InvalidInputError(msg)
        y_fit = label_indexes(labels, names)
        n = len(texts)
        n_oos = int((y_fit == NONE).sum())
        if objective == "auto":
            objective = "balanced" if n_oos else "accuracy"
        # The searches take one number: the recall to reach, or the out-of-scope share.
        target = oos_share if objective == "balanced" else target_oos_recall
        if objective == "oos_recall" and n_oos == 0:
            msg = "objective 'oos_recall' needs out-of-scope rows (label None)"
            raise InvalidInputError(msg)
        want_head = head is not False and n_routes >= 2
        if want_head and head == "auto":
            try:
                import scipy.optimize  # type: ignore[import-untyped]  # noqa: F401
            except ImportError:
                want_head = False
                notes.append(f"no head was tried: the 'fit' extra is missing ({_FIT_HINT})")
                warnings.warn(notes[-1], stacklevel=3)

        # Rows: the labelled ones, then (for the head) utterances not among them.
        t0 = time.perf_counter()
        fit_texts = list(texts)
        extra_rows: list[int] = []
        if want_head:
            seen = set(fit_texts)
            extra_rows = [
                int(rows[0]) for text, rows in layout.text_rows.items() if text not in seen
            ]
        all_texts = fit_texts + [snapshot.texts[r] for r in extra_rows]
        y_all = np.concatenate([y_fit, remap[layout.row_pos[np.array(extra_rows, dtype=np.int64)]]])
        vectors = np.empty((len(all_texts), router.encoder.dimension), dtype=np.float32)
        missing = [i for i, t in enumerate(fit_texts) if t not in layout.text_rows]
        reused = [i for i in range(len(all_texts)) if i >= n or fit_texts[i] in layout.text_rows]
        for i in reused:
            row = extra_rows[i - n] if i >= n else layout.text_rows[all_texts[i]][0]
            vectors[i] = snapshot.matrix[row]
        if missing:
            vectors[missing] = router._encode([fit_texts[i] for i in missing])
        seconds["encode"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        k = min(max(2, top_k), n_routes)
        old = router.policy
        k_rank = min(max(k, old.ranked_k), n_routes)
        scores_all = _route_scores(snapshot, layout, vectors, all_texts)
        scores = scores_all[:, keep_cols]
        # Rows a negative example outranks every route for are rejected at query time.
        blocked = np.zeros(n, dtype=bool)
        if len(keep_cols) < scores_all.shape[1]:
            neg = int(np.setdiff1d(np.arange(scores_all.shape[1]), keep_cols)[0])
            blocked = scores_all[:n, neg] >= scores[:n].max(axis=1)
        top_ids, top_vals = _rank(scores, k_rank)
        data = _Scored(top_ids, top_vals, y_all, n_routes)
        seconds["score"] = time.perf_counter() - t0
        if want_head:
            t0 = time.perf_counter()
            data.knn = _knn_loo(snapshot, layout, vectors[:n], fit_texts)
            seconds["knn"] = time.perf_counter() - t0
            if hybrid is not False:
                t0 = time.perf_counter()
                view = router._lexical.view(snapshot)
                lex_all = view.scores_many(fit_texts)
                own = np.array(
                    [layout.row_pos[layout.text_rows[t][0]] if t in layout.text_rows else -1
                     for t in fit_texts],
                    dtype=np.int64,
                )  # fmt: skip
                lex = view.leave_one_out(lex_all, own)[:, keep_cols]
                data.lex = np.take_along_axis(lex, top_ids[:n], axis=1)
                seconds["lexical"] = time.perf_counter() - t0

        fit_rows = np.arange(n, dtype=np.intp)
        fold_all = _folds(y_all, folds, seed)
        fold = fold_all[:n]
        fixed = np.array(
            [
                np.nan if router.get_route(name).threshold is None
                else float(router.get_route(name).threshold)  # type: ignore[arg-type]
                for name in names
            ]
        )  # fmt: skip
        before_pred = _policy_predictions(old, data, fit_rows, names, fixed, vectors[:n])
        before = figures(y_fit, np.where(blocked, NONE, before_pred), n_routes)

        # Threshold candidates, judged on held-out folds.
        t0 = time.perf_counter()
        gaps = (data.s1 - data.s2)[:n]
        gaps = gaps[np.isfinite(gaps)]
        margins = [0.0]
        if margin and len(gaps):
            margins += sorted({float(q) for q in np.quantile(gaps, _MARGIN_QUANTILES) if q > 0})
        modes = {"auto": [False, True], True: [True], False: [False]}[per_route]
        candidates: dict[str, dict[str, Any]] = {}
        fits: dict[str, _ThresholdFit] = {}
        held: dict[str, NDArray[np.int64]] = {}
        for mode in modes:
            key = "per_route_thresholds" if mode else "global_threshold"
            pred = np.empty(n, dtype=np.int64)
            slack = np.empty(n)
            for f in range(folds):
                train, test = fit_rows[fold != f], fit_rows[fold == f]
                if len(test) == 0:
                    continue
                part = _fit_thresholds(
                    data, train, fixed, objective, target, mode, min_support, margins
                )
                pred[test] = _threshold_predictions(data, test, part, fixed)
                slack[test] = _slack(data, test, part, fixed)
            held[key] = pred
            candidates[key] = _candidate(
                slack, data.top_ids[:n, 0], y_fit, pred, n_routes, objective, target
            )
            fits[key] = _fit_thresholds(
                data, fit_rows, fixed, objective, target, mode, min_support, margins
            )
        best_key = max(fits, key=lambda key: candidates[key]["objective"])
        chosen = fits[best_key]
        top1_correct = data.top_ids[:n, 0] == y_fit
        sim_calibrator = _calibrate(data.s1[:n], top1_correct, calibration, False)
        seconds["thresholds"] = time.perf_counter() - t0

        # The head.
        head_fit: _HeadFit | None = None
        final_head: LinearHead | None = None
        if want_head:
            t0 = time.perf_counter()
            has_oos = bool((y_all == NONE).any())
            n_cols = n_routes + int(has_oos)
            cols_all = np.where(y_all == NONE, n_routes, y_all)
            dim = vectors.shape[1]
            oof = np.zeros((len(y_all), n_cols))
            maha = np.zeros(n)
            solutions = []
            for f in range(folds):
                train = fold_all != f
                if not train.any() or train.all():
                    continue
                theta = _softmax_regression(
                    vectors[train], cols_all[train], n_cols, regularization, None, max_iter
                )
                solutions.append(theta)
                w = theta[: dim * n_cols].reshape(dim, n_cols)
                b = theta[dim * n_cols :]
                oof[~train] = vectors[~train].astype(np.float64) @ w + b
                test = np.flatnonzero(~train[:n])
                params = _mahalanobis_fit(vectors[train], y_all[train], n_routes)
                maha[test] = mahalanobis_score(
                    vectors[test],
                    params["precision"],
                    params["projected_means"],
                    params["mean_terms"],
                )
            betas = {"auto": _BETAS, True: _BETAS[1:], False: (0.0,)}[hybrid]
            head_fit = _choose_head(
                oof[:n], data, fit_rows, fold, folds, k, objective, target,
                calibration, maha, betas,
            )  # fmt: skip
            candidates["head"] = {
                "objective": head_fit.value,
                "held_out": asdict(figures(y_fit, head_fit.pred, n_routes)),
                "alpha": head_fit.alpha,
                "beta": head_fit.beta,
                "features": "dense+lexical" if head_fit.beta else "dense",
                "scorer": head_fit.scorer,
                "scorers": head_fit.scorers,
            }
            use_head = head is True or head_fit.value > candidates[best_key]["objective"] + 1e-9
            if use_head:
                # The mean of the fold models, not a refit on all rows: its logits
                # are on the scale the calibrator and the cut were fitted on, and it
                # saves a fit.
                theta = np.mean(solutions, axis=0)
                ood: dict[str, NDArray[np.float32]] = {}
                if head_fit.scorer in ("mahalanobis", "combined"):
                    ood.update(_mahalanobis_fit(vectors, y_all, n_routes))
                if head_fit.scorer == "combined":
                    assert head_fit.combination is not None
                    assert head_fit.center is not None and head_fit.scale is not None
                    ood["combination"] = head_fit.combination.astype(np.float32)
                    ood["center"] = head_fit.center.astype(np.float32)
                    ood["scale"] = head_fit.scale.astype(np.float32)
                final_head = LinearHead(
                    classes=tuple(names),
                    weights=theta[: dim * n_cols].reshape(dim, n_cols).astype(np.float32),
                    bias=theta[dim * n_cols :].astype(np.float32),
                    has_oos=has_oos,
                    alpha=head_fit.alpha,
                    top_k=k,
                    cut=head_fit.cut,
                    calibrator=head_fit.calibrator,
                    model_id=router.model.model_id,
                    beta=head_fit.beta,
                    scorer=head_fit.scorer,
                    ood=ood,
                )
            seconds["head"] = time.perf_counter() - t0

        new_policy = DecisionPolicy(
            threshold=chosen.default,
            min_margin=chosen.margin,
            thresholds={names[p]: v for p, v in chosen.per_route.items()},
            calibrator=sim_calibrator,
            head=final_head,
            info={
                "objective": objective,
                "target_oos_recall": target_oos_recall if objective == "oos_recall" else None,
                "oos_share": oos_share if objective == "balanced" else None,
                "decision": "head" if final_head is not None else best_key,
                "features": "dense+lexical" if final_head is not None and final_head.beta
                else "dense",
                "scorer": final_head.scorer if final_head is not None else "similarity",
                "rows": n,
                "fitted_at": time.time(),
            },
        )  # fmt: skip
        after_pred = (
            head_fit.pred if final_head is not None and head_fit is not None else held[best_key]
        )
        after = figures(y_fit, np.where(blocked, NONE, after_pred), n_routes)
        unfitted = old.head is None and not old.thresholds and "fitted_at" not in old.info
        worse = _objective_value(after, objective, target) < _objective_value(
            before, objective, target
        )
        if unfitted and worse:
            # Few rows can make every fitted candidate worse than the defaults on held-out
            # rows; then the fit changes nothing (the defaults are judged without fitting).
            notes.append(
                "no fitted candidate beat the current policy on held-out rows; it was kept"
            )
            # The confidence calibrator changes no decision, so it is still installed.
            info = {**new_policy.info, "decision": "unchanged", "features": "dense"}
            new_policy = replace(old, calibrator=sim_calibrator, info=info)
            final_head = None
            after = before
        changed = _threshold_changes(old, new_policy, names, fixed)
        router.set_policy(new_policy)

    if old.head is not None:
        notes.append(
            "'before' includes the previous head, which was probably trained on these "
            "rows: its figures are in-sample and flattering"
        )
    if any(not np.isnan(v) for v in fixed):
        notes.append(
            "routes with their own threshold (Route.threshold) kept it; clear it with "
            "set_threshold(name, None) to let fit choose"
        )
    seconds["total"] = time.perf_counter() - started
    head_info = None
    if final_head is not None:
        head_info = {
            "alpha": final_head.alpha,
            "cut": final_head.cut,
            "top_k": final_head.top_k,
            "has_oos_class": final_head.has_oos,
            "beta": final_head.beta,
            "features": "dense+lexical" if final_head.beta else "dense",
            "scorer": final_head.scorer,
            "calibration": final_head.calibrator.kind,
            "training_rows": len(y_all),
        }
    return FitReport(
        objective=objective,
        target_oos_recall=target_oos_recall if objective == "oos_recall" else None,
        decision="head" if final_head is not None else "thresholds",
        rows=n,
        in_scope=n - n_oos,
        out_of_scope=n_oos,
        reused_vectors=n - len(missing),
        encoded=len(missing),
        before=before,
        after=after,
        candidates=candidates,
        threshold=(old.threshold, new_policy.threshold),
        min_margin=(old.min_margin, new_policy.min_margin),
        thresholds_changed=changed,
        head=head_info,
        calibration=sim_calibrator.kind,
        notes=notes,
        seconds={key: round(value, 3) for key, value in seconds.items()},
    )


def _fit_threads(router: AdaptiveRouter, rows: int, head: bool) -> AbstractContextManager[Any]:
    """BLAS threads for the fit, by the router's rule: waking a second thread costs
    more than it saves on small products (and much more on a busy machine)."""
    from threadpoolctl import threadpool_limits

    if head:
        # scipy brings its own BLAS: load it first, so that the limit covers it too
        # (unlimited, its threads fight the others for the cores on a busy machine).
        with suppress(ImportError):
            import scipy.optimize  # noqa: F401
    threads = blas_threads(max(len(router._index), rows), router.blas_threads)
    return threadpool_limits(limits=threads, user_api="blas")  # type: ignore[no-any-return]


def _slack(
    data: _Scored, rows: NDArray[np.intp], fit: _ThresholdFit, fixed: NDArray[np.float64]
) -> NDArray[np.float64]:
    """How far each row's best score is above its threshold (``-inf`` if ambiguous)."""
    thr = np.full(data.n_routes, fit.default)
    for p, value in fit.per_route.items():
        thr[p] = value
    thr = np.where(np.isnan(fixed), thr, fixed)
    top1 = data.top_ids[rows, 0]
    out: NDArray[np.float64] = data.s1[rows] - thr[top1]
    if fit.margin > 0:
        out[data.s1[rows] - data.s2[rows] < fit.margin] = -np.inf
    return out


def _candidate(
    slack: NDArray[np.float64],
    cand: NDArray[np.int64],
    y: NDArray[np.int64],
    pred: NDArray[np.int64],
    n_routes: int,
    objective: Objective,
    target: float,
) -> dict[str, Any]:
    """A threshold candidate's held-out figures and its comparison value.

    The value is the objective at the best single shift of all its (held-out)
    thresholds, as for the head, so candidates are compared on how well they rank
    rows rather than on where one noisy cut fell.
    """
    active = np.isfinite(slack)
    nowhere = np.full(len(y), NONE, dtype=np.int64)
    zeros = np.zeros(len(y), dtype=np.int64)
    pooled = _search(slack, cand, y, active, nowhere, zeros, 1, n_routes, objective, target, False)
    return {
        "objective": _objective_value(figures(y, pooled.pred, n_routes), objective, target),
        "held_out": asdict(figures(y, pred, n_routes)),
    }


def _policy_predictions(
    policy: DecisionPolicy,
    data: _Scored,
    rows: NDArray[np.intp],
    names: list[str],
    fixed: NDArray[np.float64],
    vectors: NDArray[np.float32],
) -> NDArray[np.int64]:
    """What ``policy`` decides for ``rows`` (as :func:`~synaptoroute.decision.decide`)."""
    thr = np.array([policy.thresholds.get(name, policy.threshold) for name in names])
    fit = _ThresholdFit(
        policy.threshold, {p: float(v) for p, v in enumerate(thr)}, policy.min_margin
    )
    pred = _threshold_predictions(data, rows, fit, fixed)
    head = policy.head
    if head is None:
        return pred
    k = min(head.top_k, data.top_ids.shape[1])
    column_of = head.columns_of(names)
    if column_of is None:  # the head does not know every route: thresholds decide
        return pred
    cols = column_of[data.top_ids[rows, :k]]
    lex = None if data.lex is None else data.lex[rows, :k]
    knn = None if data.knn is None else data.knn[rows]
    if head.needs_knn and knn is None:
        return pred
    verdict = head.judge(vectors, cols, data.top_vals[rows, :k], lex, knn)
    chosen = data.top_ids[rows, :k][np.arange(len(rows)), verdict.choice]
    out: NDArray[np.int64] = np.where(verdict.accepted, chosen, NONE).astype(np.int64)
    return out


def _threshold_changes(
    old: DecisionPolicy, new: DecisionPolicy, names: list[str], fixed: NDArray[np.float64]
) -> dict[str, tuple[float, float]]:
    changed = {}
    for p, name in enumerate(names):
        if not np.isnan(fixed[p]):
            continue
        before = float(old.thresholds.get(name, old.threshold))
        after = float(new.thresholds.get(name, new.threshold))
        if not math.isclose(before, after, abs_tol=1e-9):
            changed[name] = (before, after)
    return changed
