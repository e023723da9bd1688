"""The head: softmax regression on the frozen embeddings, the out-of-scope scorers, and
the choice between them on held-out folds.

Why one module over 400 lines: the folds, the fold models, the scorers and the held-out
cut are one procedure; each step reads the previous one's arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from .._cpu import process_cpus, side_by_side
from ..datasets import NONE
from ..decision import Calibrator, head_scores, scorer_features
from ..evaluation import auroc, figures
from ..exceptions import install_hint
from .calibration import _calibrate, _newton_logistic
from .cuts import _BEYOND, Objective, _objective_value, _Scored, _single_cut
from .optimize import lbfgs

#: Weights of the similarity score in the head's logits, tried on held-out data.
_ALPHAS = (0.0, 2.5, 5.0, 10.0, 20.0, 40.0)
_FIT_HINT = install_hint("fit")
#: Shrinkage of the shared covariance towards a multiple of the identity (Mahalanobis).
_SHRINK = 0.05
_F = TypeVar("_F", np.float32, np.float64)


def _unpack(theta: NDArray[_F], width: int, n_cols: int) -> tuple[NDArray[_F], NDArray[_F]]:
    """The ``(width, n_cols)`` weights and the bias of a :func:`_softmax_regression`
    solution (the embedding's rows first, then the n-gram features')."""
    return theta[: width * n_cols].reshape(width, n_cols), theta[width * n_cols :]


def _softmax_regression(
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    n_cols: int,
    c: float,
    init: NDArray[np.float64] | None,
    max_iter: int,
    sparse: Any = None,
) -> NDArray[np.float32]:
    """Multinomial logistic regression, mean log-loss plus ``|W|^2 / (2 C n)`` (as
    scikit-learn's ``LogisticRegression(C=c)``), by :func:`.optimize.lbfgs` in float32
    (the solution is returned as it is: a hybrid head's has millions of weights).

    ``sparse`` (a SciPy CSR matrix, one row per row of ``x``) adds features after the
    dense ones: the weights are ``(d + sparse columns, n_cols)``, then the bias.
    """
    n, d = x.shape
    extra = 0 if sparse is None else int(sparse.shape[1])
    width = d + extra
    sparse_t = None if sparse is None else sparse.T.tocsr()
    onehot = np.zeros((n, n_cols), dtype=np.float32)
    onehot[np.arange(n), y] = 1.0
    lam = np.float32(1.0 / (c * n))

    def loss_grad(theta: NDArray[np.float32]) -> tuple[float, NDArray[np.float32]]:
        w, b = _unpack(theta, width, n_cols)
        z = x @ w[:d]
        if sparse is not None:
            z += sparse @ w[d:]
        z += b
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        loss = float(np.log(s).sum(dtype=np.float64) - (z * onehot).sum(dtype=np.float64)) / n
        weights = theta[: width * n_cols]
        loss += 0.5 * float(lam) * float(weights @ weights)
        e /= s
        e -= onehot
        grad = np.empty_like(theta)
        grad_w, grad_b = _unpack(grad, width, n_cols)
        np.matmul(x.T, e, out=grad_w[:d])
        if sparse_t is not None:
            grad_w[d:] = sparse_t @ e
        grad_w /= n
        grad_w += lam * w
        grad_b[:] = e.sum(axis=0) / n
        return loss, grad

    theta0 = np.zeros(width * n_cols + n_cols, np.float32) if init is None else init
    return lbfgs(loss_grad, theta0.astype(np.float32), max_iter, gtol=1e-4)


def _folds(
    y: NDArray[np.int64], k: int, seed: int, groups: NDArray[Any] | None = None
) -> NDArray[np.int64]:
    """Stratified fold of each row: within each label, rows are dealt round-robin.

    Rows with equal ``groups`` (copies of one text) then take the fold of the first
    of them: a held-out row whose copy sat in the training folds made the held-out
    figures optimistic (logs repeat queries). Every other row keeps its fold, so a
    few copies move only themselves.
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    order = perm[np.argsort(y[perm], kind="stable")]
    fold = np.empty(len(y), dtype=np.int64)
    labels = y[order]
    starts = np.r_[0, np.flatnonzero(np.diff(labels)) + 1]
    rank = np.arange(len(y)) - np.repeat(starts, np.diff(np.r_[starts, len(y)]))
    offset = rng.integers(k)
    fold[order] = (rank + offset) % k
    if groups is not None:
        _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
        fold = fold[first[inverse.ravel()]]
    return fold


@dataclass
class _HeadFit:
    inputs: str  # "dense" or "ngrams": the fold models it was chosen with
    regularization: float  # their C
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
    # Shrinking towards the mean variance keeps the inverse stable with few rows (and
    # a floor under it with one row per route, where there is no variance at all).
    spread = max(float(np.trace(cov)) / len(cov), 1e-6)
    cov = (1 - _SHRINK) * cov + _SHRINK * spread * np.eye(len(cov))
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


def _logistic(
    x: NDArray[np.float64], y: NDArray[np.float64], weight: NDArray[np.float64] | None = None
) -> NDArray[np.float64]:
    """L2-regularised logistic regression (the bias unpenalised), each row's loss
    times its ``weight``; weights then bias."""
    ridge = np.eye(x.shape[1] + 1) * 1e-2
    ridge[-1, -1] = 0.0
    design = np.c_[x, np.ones(len(x))]
    return _newton_logistic(design, y, ridge, np.zeros(x.shape[1] + 1), weight)


def _row_weights(y: NDArray[np.int64], objective: Objective, target: float) -> NDArray[np.float64]:
    """Weights (mean 1) that give the out-of-scope rows the share of the loss that
    ``objective`` gives out-of-scope recall: ``target`` under ``balanced``, half under
    ``oos_recall``, their share of the rows otherwise. With few out-of-scope rows
    among many, an unweighted loss would learn to spot in-scope mistakes and
    nearly ignore what tells out-of-scope queries apart."""
    oos = y == NONE
    n_oos = int(oos.sum())
    share = {"balanced": target, "oos_recall": 0.5}.get(objective)
    if share is None or n_oos in (0, len(y)):
        return np.ones(len(y))
    return np.where(oos, share / n_oos, (1 - share) / (len(y) - n_oos)) * len(y)


def _held_out_cuts(
    conf: NDArray[np.float64],
    cand: NDArray[np.int64],
    y: NDArray[np.int64],
    fold: NDArray[np.int64],
    folds: int,
    n_routes: int,
    objective: Objective,
    target: float,
    blocked: NDArray[np.bool_],
) -> NDArray[np.int64]:
    """Predictions where each fold's rows are cut at a value chosen on the other folds
    (their out-of-scope rows included), so no row judges the cut it chose. ``blocked``
    rows (a negative example rejects them first) go nowhere whatever the cut."""
    pred = np.empty(len(y), dtype=np.int64)
    for f in range(folds):
        test = fold == f
        if not test.any():
            continue
        # The other folds alone: this fold's rows, given as inactive, were counted as
        # rejected whatever the cut (an out-of-scope recall met for free).
        t = ~test
        part = _single_cut(conf[t], cand[t], y[t], ~blocked[t], n_routes, objective, target)
        pred[test] = np.where((conf[test] >= part.cut[0]) & ~blocked[test], cand[test], NONE)
    return pred


def _pooled_cut(
    conf: NDArray[np.float64],
    cand: NDArray[np.int64],
    y: NDArray[np.int64],
    n_routes: int,
    objective: Objective,
    target: float,
    blocked: NDArray[np.bool_],
) -> tuple[float, float]:
    """The objective at the best single cut of all rows (``blocked`` ones held at no
    route), and that cut."""
    whole = _single_cut(conf, cand, y, ~blocked, n_routes, objective, target)
    value = _objective_value(figures(y, whole.pred, n_routes), objective, target)
    cut = float(whole.cut[0]) if np.isfinite(whole.cut[0]) else 1.0 + _BEYOND
    return value, cut


def _credits(
    pred: NDArray[np.int64], y: NDArray[np.int64], objective: Objective, target: float
) -> NDArray[np.float64] | None:
    """Each row's share of the objective (it sums to the objective), or ``None`` for an
    objective that is not a sum over rows (``macro_f1``). Under ``oos_recall`` the
    recall term counts only while the recall is short of the target."""
    oos = y == NONE
    n_oos, n_in = int(oos.sum()), int((~oos).sum())
    right = np.where(oos, pred == NONE, pred == y).astype(np.float64)
    weight: NDArray[np.float64]
    if objective == "accuracy":
        weight = np.full(len(y), 1.0 / len(y))
    elif objective == "balanced":
        share = target if n_oos else 0.0
        weight = np.where(oos, share / max(n_oos, 1), (1 - share) / max(n_in, 1))
    elif objective == "oos_recall":
        short = n_oos > 0 and float(right[oos].mean()) < target
        weight = np.where(oos, float(short) / max(n_oos, 1), 1.0 / max(n_in, 1))
    else:
        return None
    out: NDArray[np.float64] = right * weight
    return out


def _pick_scorer(
    report: Mapping[str, Mapping[str, Any]],
    preds: Mapping[str, NDArray[np.int64]],
    raws: Mapping[str, NDArray[np.float64]],
    cand: NDArray[np.int64],
    y: NDArray[np.int64],
    objective: Objective,
    target: float,
) -> str:
    """The scorer to keep: among those whose held-out objective is within one standard
    error of the best one's (the paired difference over rows, within the in-scope and
    the out-of-scope rows), the one with the best AUROC separating in-scope from
    out-of-scope rows (without out-of-scope rows: the rows the head gets right from
    the rest); ``max_prob`` first on exact ties.

    With about a hundred out-of-scope rows, one row moves the objective by more than
    the gap between good scorers, so the best held-out objective alone picks by
    chance; the separation over every cut is the steadier judge among the tied.
    """
    order = sorted(report, key=lambda s: (-report[s]["objective"], s != "max_prob"))
    best = order[0]
    base = _credits(preds[best], y, objective, target)
    if base is None:
        return best
    oos = y == NONE
    right = cand == y
    tied = []
    for scorer in order:
        diff = base - _credits(preds[scorer], y, objective, target)  # type: ignore[operator]
        var = sum(float(diff[g].var(ddof=1)) * int(g.sum()) for g in (oos, ~oos) if g.sum() > 1)
        if float(diff.sum()) <= np.sqrt(var) + 1e-12:
            tied.append(scorer)
    # Out-of-scope rows, where there are some, are the scarce ones.
    positive = ~oos if oos.any() else right
    separation = {s: auroc(raws[s], positive) or 0.0 for s in tied}
    return max(tied, key=lambda s: (separation[s], s == "max_prob"))


def _choose_head(
    oofs: dict[tuple[str, float], NDArray[np.float64]],
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
    """Pick the inputs, ``alpha`` and ``beta``, then the out-of-scope scorer, on
    held-out logits.

    ``oofs`` holds each candidate model's held-out logits by its inputs (``"dense"``:
    the embedding; ``"ngrams"``: the embedding and the n-gram features) and its ``C``.
    The model, ``alpha`` and ``beta`` are chosen by the objective at the best single
    cut of the pooled held-out probabilities (earlier inputs win ties). Each scorer is then
    judged by held-out predictions: each fold's rows are cut at a value chosen on the
    other folds, so the out-of-scope rows a cut is judged on were not used to choose
    it (the ``combined`` scorer's weights are also learned without the fold), and
    :func:`_pick_scorer` keeps one.
    """
    y = data.y[rows]
    n_routes = data.n_routes
    blocked = data.blocked_at(rows)
    # Platt keeps the order of the raw values, so a cut on the confidence is as fine
    # as a cut on the raw value; isotonic steps would tie many rows.
    kind = "platt" if calibration == "auto" else calibration
    grid = [(model, alpha, beta) for model in oofs for alpha in _ALPHAS for beta in betas]

    def value_of(point: tuple[tuple[str, float], float, float]) -> float:
        model, alpha, beta = point
        cand, raw, _, _ = _head_pred(oofs[model], data, rows, k, alpha, beta)
        conf = _calibrate(raw, cand == y, kind, True)(raw)
        return _pooled_cut(conf, cand, y, n_routes, objective, target, blocked)[0]

    # Each point is mostly numpy over every row, so two run side by side; not one per
    # CPU, as each holds a few rows x classes float64 arrays (about 18 MB each here).
    best: tuple[float, tuple[str, float], float, float] | None = None
    values = side_by_side(value_of, grid, min(2, process_cpus()))
    for value, point in zip(values, grid, strict=True):
        if best is None or value > best[0] + 1e-12:
            best = (value, *point)
    assert best is not None
    _, model, alpha, beta = best
    oof = oofs[model]
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
        weight = _row_weights(y, objective, target)
        combined = np.empty(len(y))
        for f in range(folds):
            test = fold == f
            if test.any() and (~test).any():
                w = _logistic(z[~test], good[~test], weight[~test])
                combined[test] = z[test] @ w[:-1] + w[-1]
        raws["combined"] = combined
        combination = _logistic(z, good, weight)
    report: dict[str, dict[str, Any]] = {}
    held_preds: dict[str, NDArray[np.int64]] = {}
    calibrators: dict[str, Calibrator] = {}
    for scorer, raw in raws.items():
        calibrators[scorer] = _calibrate(raw, cand == y, kind, scorer == "max_prob")
        conf = calibrators[scorer](raw)
        pred = _held_out_cuts(conf, cand, y, fold, folds, n_routes, objective, target, blocked)
        held = figures(y, pred, n_routes)
        held_preds[scorer] = pred
        report[scorer] = {
            "objective": _objective_value(held, objective, target),
            "in_scope_accuracy": held.in_scope_accuracy,
            "oos_recall": held.oos_recall,
            "oos_auroc": auroc(raw, y != NONE),
        }
    scorer = _pick_scorer(report, held_preds, raws, cand, y, objective, target)
    calibrator, pred = calibrators[scorer], held_preds[scorer]
    conf = calibrator(raws[scorer])
    value, cut = _pooled_cut(conf, cand, y, n_routes, objective, target, blocked)
    return _HeadFit(
        model[0],
        model[1],
        alpha,
        beta,
        scorer,
        calibrator,
        cut,
        pred,
        value,
        report,
        center,
        scale,
        combination,
    )
