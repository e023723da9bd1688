"""Thresholds: an exact search over the scores that occur, and the threshold policies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from ..datasets import NONE
from ..decision import (
    threshold_verdicts,
)
from ..evaluation import Figures, figures

Objective = Literal["auto", "balanced", "accuracy", "macro_f1", "oos_recall"]
# A cut above all (or below all) of a segment's values sits this far beyond them.
_BEYOND = 1e-4


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
    exactly, and so is the target out-of-scope recall of one segment (one cut); with
    several, the target is met through a Lagrange multiplier on rejected out-of-scope
    rows, bisected (which finds the cuts on the hull of the trade-off only, so it may
    reject more than the target needs).
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

        if len(starts) == 1:
            # The inactive out-of-scope rows forced nowhere are rejected whatever the cut.
            rejected = int(((forced == NONE) & (y == NONE) & ~active).sum())
            return finish(_best_recall_cut(right, oos, starts, ends, rejected, total_oos, target))

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


def _best_recall_cut(
    right: NDArray[np.float64],
    oos: NDArray[np.float64],
    starts: NDArray[np.intp],
    ends: NDArray[np.bool_],
    rejected: int,
    total: int,
    target: float,
) -> NDArray[np.int64]:
    """:func:`_best_per_segment` for one segment under a target out-of-scope recall:
    the most rows right among the cuts that reject at least ``target`` of the ``total``
    out-of-scope rows (``rejected`` of them whatever the cut). Every cut is tried (the
    multiplier sees only the hull); a target out of reach takes the most recall."""
    accepted_oos = np.cumsum(oos)
    recall = (rejected + accepted_oos[-1] - accepted_oos) / total
    most = (rejected + accepted_oos[-1]) / total  # accepting none
    gain = np.where(recall >= min(target, most), np.cumsum(right), -np.inf)
    return _best_per_segment(gain, starts, ends, len(right))


def _single_cut(
    values: NDArray[np.float64],
    cand: NDArray[np.int64],
    y: NDArray[np.int64],
    active: NDArray[np.bool_],
    n_routes: int,
    objective: Objective,
    target: float,
) -> _Cuts:
    """:func:`_search` with one cut for every ``active`` row; the other rows go
    nowhere."""
    nowhere = np.full(len(y), NONE, dtype=np.int64)
    zeros = np.zeros(len(y), dtype=np.int64)
    return _search(values, cand, y, active, nowhere, zeros, 1, n_routes, objective, target, False)


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
    # (n_labelled,) rows a negative example ties or outranks every route for: rejected
    # at query time before any threshold or head, so every search holds them at NONE.
    blocked: NDArray[np.bool_] | None = None

    def blocked_at(self, rows: NDArray[np.intp]) -> NDArray[np.bool_]:
        """Which of ``rows`` a negative example rejects whatever the policy (rows past
        the labelled ones, a head's extra route utterances, never)."""
        out = np.zeros(len(rows), dtype=bool)
        if self.blocked is not None:
            inside = rows < len(self.blocked)
            out[inside] = self.blocked[rows[inside]]
        return out

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

    def vector(self, fixed: NDArray[np.float64]) -> NDArray[np.float64]:
        """Each route position's threshold: its own (``fixed``, NaN: none), else fitted."""
        thr = np.full(len(fixed), self.default)
        for p, value in self.per_route.items():
            thr[p] = value
        out: NDArray[np.float64] = np.where(np.isnan(fixed), thr, fixed)
        return out


def _threshold_predictions(
    data: _Scored, rows: NDArray[np.intp], fit: _ThresholdFit, fixed: NDArray[np.float64]
) -> NDArray[np.int64]:
    thr = fit.vector(fixed)
    top1 = data.top_ids[rows, 0]
    verdict = threshold_verdicts(data.s1[rows], data.s2[rows], thr[top1], fit.margin)
    return np.where((verdict == 0) & ~data.blocked_at(rows), top1, NONE).astype(np.int64)


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
    blocked = data.blocked_at(rows)
    best: tuple[float, _ThresholdFit] | None = None
    for margin in margins:
        ambiguous = (gap < margin) if margin > 0 else np.zeros(len(rows), dtype=bool)
        # Rows a negative example rejects go nowhere whatever the cut: searched as
        # routable, they pushed the threshold up for nothing.
        forced = np.where(fixed_pass & ~ambiguous & ~blocked, top1, NONE).astype(np.int64)
        active = ~is_fixed & ~ambiguous & ~blocked
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
