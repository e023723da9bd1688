""":func:`fit_policy`: encode once, score once, fit every candidate on folds, keep the winner.

It reads a router only through :class:`FitInputs` (a snapshot of its index and an embed
function), so fitting sits below the router: :meth:`AdaptiveRouter.fit` takes its lock,
calls :func:`fit_policy` and installs the policy it returns.

Why one module over 400 lines: :func:`fit_policy` is the orchestration of the stages
in :mod:`.scores`, :mod:`.cuts`, :mod:`.calibration` and :mod:`.head` (every candidate
on the same folds and the same scores); the arithmetic lives in those modules.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from .._blas import blas_limit
from .._cpu import blas_threads, process_cpus, side_by_side
from ..checks import _empty_to_the_model, check_count, is_number, reads_nothing_of
from ..datasets import NONE, check_labelled, label_indexes
from ..decision import (
    KNN_K,
    NEGATIVE_TIE,
    DecisionPolicy,
    LinearHead,
    mahalanobis_score,
)
from ..evaluation import figures
from ..exceptions import InvalidInputError, MissingDependencyError
from ..lexical import NgramFeatures, text_features
from ..models import NEGATIVES_ROUTE, utterance_key
from .calibration import _calibrate
from .cuts import (
    Objective,
    _fit_thresholds,
    _objective_value,
    _Scored,
    _single_cut,
    _threshold_predictions,
    _ThresholdFit,
)
from .head import (
    _FIT_HINT,
    _choose_head,
    _folds,
    _HeadFit,
    _mahalanobis_fit,
    _softmax_regression,
    _unpack,
)
from .report import FitReport
from .scores import _rank

if TYPE_CHECKING:
    from ..index import Pairs, RouteLayout, Snapshot
    from ..lexical import LexicalView

#: Weights of the lexical score in the head's logits (0: dense only), tried likewise.
_BETAS = (0.0, 2.5, 5.0, 10.0, 20.0)
#: The norm of a row of n-gram features next to the unit embedding (NgramFeatures.scale).
#: Whether the features help a given router is decided on folds.
_NGRAM_SCALE = 0.5
#: A stored utterance at least ``1 - _SAME`` similar to a labelled text is the same
#: text to the model (it differs in case or spacing, say): left out of its scores.
_SAME = 1e-6
#: Labelled rows per product when looking for them.
_CHUNK = 1024
#: Quantiles of the occurring top-1/top-2 gaps tried as the ambiguity margin.
_MARGIN_QUANTILES = (0.01, 0.02, 0.05, 0.1, 0.2)
_OBJECTIVES = ("auto", "balanced", "accuracy", "macro_f1", "oos_recall")
_CALIBRATIONS = ("auto", "isotonic", "platt")


_Features = tuple[NDArray[np.int64], NDArray[np.float32]]
_T = TypeVar("_T")

#: The head's ``C`` values a fit chooses among on held-out folds by default.
DEFAULT_REGULARIZATION = (10.0, 30.0)
#: The share of out-of-scope traffic the default objective, ``"balanced"``, assumes.
DEFAULT_OOS_SHARE = 0.2


def _tokenise(texts: Sequence[str]) -> list[_Features]:
    return [text_features(t) for t in texts]


#: The empty-text test of an encoder that has none of its own.
_WHITESPACE_ONLY = reads_nothing_of(None)


@dataclass(frozen=True)
class FitInputs:
    """What a fit reads of a router, taken under the router's lock."""

    #: The compiled index: the stored vectors the labelled texts are scored against.
    snapshot: Snapshot
    #: Encodes texts the index does not hold (the router's cached encode path).
    embed: Callable[[list[str]], NDArray[np.float32]]
    #: The policy in force: the fit reports "before" from it and may keep it.
    policy: DecisionPolicy
    #: Each route's own threshold (``Route.threshold``; ``None``: the policy decides).
    route_thresholds: Mapping[str, float | None]
    #: The lexical view of ``snapshot`` (called only when the hybrid head is tried).
    lexical: Callable[[], LexicalView]
    #: The encoder's model id, recorded in a fitted head.
    model_id: str
    #: The router's BLAS thread setting (``None``: the shared rule decides).
    blas_threads: int | None = None
    #: :func:`~synaptoroute.lexical.text_features` of each text (the router's reads
    #: its cache of the utterances' features).
    features: Callable[[Sequence[str]], list[_Features]] = _tokenise
    #: Whether the encoder reads nothing of a text (``checks.reads_nothing_of``): such
    #: a text is refused, as a blank one is (a query of it is an empty query).
    reads_nothing: Callable[[str], bool] = _WHITESPACE_ONLY
    #: The router's ``hybrid``: whether its queries read the lexical signals (off, the
    #: current head is judged on dense terms, as it then decides).
    hybrid: bool = True


class _Fits(Protocol):
    def fit(self, texts: Sequence[str], labels: Sequence[str | None], **options: Any) -> Any: ...


def fit_router(
    router: _Fits, texts: Sequence[str], labels: Sequence[str | None], **options: Any
) -> FitReport:
    """Fit ``router`` on labelled texts: the same as ``router.fit(texts, labels, **options)``.

    Kept for callers of 0.2.0; the options are those of :func:`fit_policy`.
    """
    report: FitReport = router.fit(texts, labels, **options)
    return report


def fit_policy(
    inputs: FitInputs,
    texts: Sequence[str],
    labels: Sequence[str | None],
    *,
    objective: Objective = "auto",
    target_oos_recall: float = 0.9,
    oos_share: float = DEFAULT_OOS_SHARE,
    head: bool | Literal["auto"] = "auto",
    hybrid: bool | Literal["auto"] = "auto",
    per_route: bool | Literal["auto"] = "auto",
    margin: bool = True,
    calibration: Literal["auto", "isotonic", "platt"] = "auto",
    folds: int = 3,
    top_k: int = 5,
    regularization: float | Sequence[float] = DEFAULT_REGULARIZATION,
    min_support: int = 10,
    max_iter: int = 100,
    seed: int = 0,
) -> tuple[DecisionPolicy, FitReport]:
    """Fit a decision policy on labelled texts; nothing is changed or saved here.

    Args:
        inputs: what the fit reads of the router (:class:`FitInputs`); the labels
            name its routes.
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
        hybrid: give the head the lexical signals (:mod:`synaptoroute.lexical`): its
            n-gram features as inputs, and the lexical score in its logits.
            ``"auto"`` uses each if it does better on held-out data, ``True`` both
            always (the score at its best positive weight), ``False`` neither.
        per_route: one threshold per route (``True``), a single one (``False``), or
            whichever does better on held-out data (``"auto"``).
        margin: also search the ambiguity margin (top-1 minus top-2).
        calibration: ``"isotonic"``, ``"platt"``, or ``"auto"`` (the score calibrator
            isotonic from 1,000 rows on, else Platt; the head's always Platt).
        folds: folds for the held-out estimates (at least 2).
        top_k: how many ranked routes the head chooses among.
        regularization: the head's inverse L2 strength (scikit-learn's ``C``), or
            several, chosen among on held-out folds like the features (the default:
            10 and 30); each costs one regression per fold and feature set.
        min_support: a route needs this many rows where it ranks first to get its own
            threshold; the others share the fitted default.
        max_iter: L-BFGS iterations per head fit.
        seed: fold assignment seed.

    Returns:
        The fitted policy (the current one, recalibrated, when no fitted candidate
        beats it on held-out rows), and a :class:`FitReport` of what changed, with
        before/after figures.

    Raises:
        InvalidInputError: bad rows, unknown labels, or bad options.
        MissingDependencyError: ``head=True`` without the ``fit`` extra (SciPy, for
            the n-gram features' sparse rows) unless ``hybrid=False``.
    """
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    notes: list[str] = []
    if objective not in _OBJECTIVES:
        msg = f"objective must be one of {_OBJECTIVES}, got {objective!r}"
        raise InvalidInputError(msg)
    if not is_number(oos_share) or not 0.0 < oos_share < 1.0:
        msg = f"oos_share must be a number in (0, 1), got {oos_share!r}"
        raise InvalidInputError(msg)
    if not is_number(target_oos_recall) or not 0.0 < target_oos_recall <= 1.0:
        msg = f"target_oos_recall must be a number in (0, 1], got {target_oos_recall!r}"
        raise InvalidInputError(msg)
    for option, value in (("head", head), ("hybrid", hybrid), ("per_route", per_route)):
        if not (value is True or value is False or (isinstance(value, str) and value == "auto")):
            msg = f"{option} must be True, False or 'auto', got {value!r}"
            raise InvalidInputError(msg)
    if calibration not in _CALIBRATIONS:
        msg = f"calibration must be one of {_CALIBRATIONS}, got {calibration!r}"
        raise InvalidInputError(msg)
    folds = check_count(folds, "folds", 2)
    top_k = check_count(top_k, "top_k", 1)
    min_support = check_count(min_support, "min_support", 0)
    max_iter = check_count(max_iter, "max_iter", 1)
    seed = check_count(seed, "seed", 0)
    strengths = _strengths(regularization)
    check_labelled(texts, labels)
    for i, text in enumerate(texts):
        if not text.strip():
            msg = f"text {i} is empty"
            raise InvalidInputError(msg)
        if inputs.reads_nothing(text):
            raise _empty_to_the_model(f"text {i}", text)
    snapshot = inputs.snapshot
    with _fit_threads(len(snapshot.layout.live), len(texts), inputs.blas_threads):
        layout = snapshot.layout
        names = layout.names
        # The negative examples' route is no class: its utterances are out-of-scope rows.
        # Classes in name order, not the order routes were added: the same routes,
        # labels and seed fit the same policy however the router was built.
        keep_cols = np.array(
            sorted(
                (i for i, name in enumerate(names) if name != NEGATIVES_ROUTE),
                key=names.__getitem__,
            ),
            dtype=np.intp,
        )
        remap = np.full(len(names) + 1, NONE, dtype=np.int64)
        remap[keep_cols] = np.arange(len(keep_cols))
        names = [names[i] for i in keep_cols.tolist()]
        n_routes = len(names)
        if n_routes == 0:
            msg = "the router has no routes to fit; add routes first"
            raise InvalidInputError(msg)
        # Routes without utterances are in no snapshot: a label naming one is told so.
        hollow = set(inputs.route_thresholds) - set(layout.names) - {NEGATIVES_ROUTE}
        y_fit = label_indexes(labels, names, empty=hollow)
        n = len(texts)
        n_oos = int((y_fit == NONE).sum())
        if n_oos == n:
            # Nothing weighs against turning queries away: every search would raise the
            # cuts until all rows are rejected, and in-scope routing would pay for it.
            msg = (
                "a fit needs rows labelled with a route: these are all out of scope "
                "(label None); add labelled rows (texts that must route nowhere are "
                "negative examples: add_negatives, or synaptoroute negatives add)"
            )
            raise InvalidInputError(msg)
        if objective == "auto":
            objective = "balanced" if n_oos else "accuracy"
        # The searches take one number: the recall to reach, or the out-of-scope share.
        target = oos_share if objective == "balanced" else target_oos_recall
        if objective == "oos_recall" and n_oos == 0:
            msg = "objective 'oos_recall' needs out-of-scope rows (label None)"
            raise InvalidInputError(msg)
        want_head = head is not False and n_routes >= 2
        if head is True and not want_head:
            notes.append("no head was fitted: a head needs at least two routes to choose among")
            warnings.warn(notes[-1], stacklevel=3)
        if want_head and head == "auto":
            try:
                import scipy.sparse  # type: ignore[import-untyped]  # noqa: F401
            except ImportError:
                want_head = False
                notes.append(f"no head was tried: the 'fit' extra is missing ({_FIT_HINT})")
                warnings.warn(notes[-1], stacklevel=3)

        # Rows: the labelled ones, then (for the head) utterances not among them.
        t0 = time.perf_counter()
        # Stripped as utterances are, so a labelled row that is an utterance is known
        # as one (its vector reused, itself left out of its scores).
        fit_texts = [text.strip() for text in texts]
        fit_vectors = np.empty((n, snapshot.matrix.shape[1]), dtype=np.float32)
        missing: list[int] = []
        for i, text in enumerate(fit_texts):
            rows = layout.text_rows.get(text)
            if rows is None:
                missing.append(i)
            else:
                fit_vectors[i] = snapshot.matrix[_owner_rows(layout, rows)[0]]
        if missing:
            fit_vectors[missing] = inputs.embed([fit_texts[i] for i in missing])
        # Utterances the model cannot tell from a labelled text (the same text cased or
        # spaced otherwise, for an uncased model) are left out of its scores like the
        # text itself: scored against themselves, they made every row look easy.
        with _scoring_threads(len(layout.live), n, inputs.blas_threads):
            near = _same_rows(snapshot, fit_vectors)
        # The head's extra rows: one per route holding each utterance, in (text, route
        # name) order, so neither the rows nor the folds they are dealt into depend on
        # the order routes were added.
        extra_rows: list[int] = []
        if want_head:
            known = set(fit_texts).union(snapshot.texts[r] for r in near[1].tolist())
            for text in sorted(layout.text_rows.keys() - known):
                extra_rows += _owner_rows(layout, layout.text_rows[text])
        all_texts = fit_texts + [snapshot.texts[r] for r in extra_rows]
        extra = np.array(extra_rows, dtype=np.int64)
        y_all = np.concatenate([y_fit, remap[layout.row_pos[extra]]])
        vectors = np.concatenate([fit_vectors, snapshot.matrix[extra]])
        seconds["encode"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        k = min(max(2, top_k), n_routes)
        old = inputs.policy
        k_rank = min(max(k, old.ranked_k), n_routes)
        # What the heads read, the new one's and the current one's (for 'before').
        need_knn = want_head or (old.head is not None and old.head.needs_knn)
        need_lex = (want_head and hybrid is not False) or bool(
            inputs.hybrid and old.head and old.head.beta
        )
        # The head's k-NN input (the fit rows' k-th neighbour) from the same products.
        with _scoring_threads(len(layout.live), len(all_texts), inputs.blas_threads):
            scores_all, knn = snapshot.scores_and_knn(
                vectors, all_texts, KNN_K if need_knn else 0, knn_rows=n, also=near
            )
        scores = scores_all[:, keep_cols]
        # Rows a negative example outranks every route for are rejected at query time.
        blocked = np.zeros(n, dtype=bool)
        if len(keep_cols) < scores_all.shape[1]:
            neg = int(np.setdiff1d(np.arange(scores_all.shape[1]), keep_cols)[0])
            blocked = scores_all[:n, neg] >= scores[:n].max(axis=1) - NEGATIVE_TIE
        top_ids, top_vals = _rank(scores, k_rank)
        data = _Scored(top_ids, top_vals, y_all, n_routes, blocked=blocked)
        found: list[_Features] | None = None  # the texts' n-gram features, read once
        seconds["score"] = time.perf_counter() - t0
        if need_knn:
            data.knn = knn
        if need_lex:
            t0 = time.perf_counter()
            view = inputs.lexical()
            found = inputs.features(all_texts)
            lex_all = view.scores_many(fit_texts, found[:n])
            lex = lexical_left_out(
                view, lex_all, layout, fit_texts, near, snapshot.texts, inputs.features
            )[:, keep_cols]
            data.lex = np.take_along_axis(lex, top_ids[:n], axis=1)
            seconds["lexical"] = time.perf_counter() - t0

        fit_rows = np.arange(n, dtype=np.intp)
        # Copies of one text (the model reads case and NFC forms alike) share a fold.
        copies = np.array([utterance_key(t).casefold() for t in all_texts])
        fold_all = _folds(y_all, folds, seed, copies)
        fold = fold_all[:n]
        own_thresholds = [inputs.route_thresholds.get(name) for name in names]
        fixed = np.array([np.nan if t is None else float(t) for t in own_thresholds])
        before_pred = _policy_predictions(
            old, data, fit_rows, names, fixed, vectors[:n], fit_texts if inputs.hybrid else None
        )
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

        # The head, when some fold can be held out (not when every row falls in one).
        if want_head and not any(0 < (fold_all != f).sum() < len(fold_all) for f in range(folds)):
            want_head = False
            notes.append("no head was fitted: too few rows to hold any out; label more rows")
            if head is True:
                warnings.warn(notes[-1], stacklevel=3)
        head_fit: _HeadFit | None = None
        final_head: LinearHead | None = None
        if want_head:
            t0 = time.perf_counter()
            has_oos = bool((y_all == NONE).any())
            n_cols = n_routes + int(has_oos)
            cols_all = np.where(y_all == NONE, n_routes, y_all)
            dim = vectors.shape[1]
            grams: NgramFeatures | None = None
            sparse: Any = None  # a SciPy CSR matrix of the n-gram rows
            if hybrid is not False:
                if found is None:
                    found = inputs.features(all_texts)
                grams, sparse = _ngram_inputs(all_texts, found)
            feature_sets = {"auto": ["dense", "ngrams"], True: ["ngrams"], False: ["dense"]}
            tried = [i for i in feature_sets[hybrid] if sparse is not None or i == "dense"]
            if not tried:
                tried = ["dense"]
                notes.append("no n-gram feature is frequent enough: the head reads no n-grams")
            models = [(feats, c) for feats in tried for c in strengths]
            oofs = {model: np.zeros((len(y_all), n_cols)) for model in models}
            solutions: dict[tuple[str, float], list[NDArray[np.float32]]] = {
                model: [] for model in models
            }
            maha = np.zeros(n)
            used = [f for f in range(folds) if 0 < (fold_all != f).sum() < len(fold_all)]
            # The n-gram models first: the longest jobs start first when two run at once.
            runs = [
                (f, feats, c)
                for feats in sorted(tried, key="ngrams".__ne__)
                for f in used
                for c in strengths
            ]

            def fold_model(f: int, feats: str, c: float) -> NDArray[np.float32]:
                # Each C from zero: L-BFGS started from another C's solution stops at
                # once, as the penalty's share of the gradient is under its tolerance.
                train = fold_all != f
                # Float32, as the optimiser leaves it: every fold model is kept until
                # the choice, and a hybrid head has millions of weights.
                return _softmax_regression(
                    vectors[train], cols_all[train], n_cols, c, None, max_iter,
                    sparse[train] if feats == "ngrams" else None,
                )  # fmt: skip

            thetas = _side_by_side([partial(fold_model, *run) for run in runs])
            for (f, feats, c), theta in zip(runs, thetas, strict=True):
                train = fold_all != f
                solutions[feats, c].append(theta)
                oofs[feats, c][~train] = _logits(
                    theta, vectors[~train], sparse[~train] if feats == "ngrams" else None, n_cols
                )
            for f in used:
                train = fold_all != f
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
                {model: oof[:n] for model, oof in oofs.items()}, data, fit_rows, fold,
                folds, k, objective, target, calibration, maha, betas,
            )  # fmt: skip
            # Routes' own thresholds turn away some of the head's choices, as decide
            # does: the head is judged (and chosen) with them.
            gated = _below_own_thresholds(head_fit.pred, data, fit_rows, fixed)
            held_head = figures(y_fit, gated, n_routes)
            head_value = head_fit.value
            if not np.array_equal(gated, head_fit.pred):
                head_value = _objective_value(held_head, objective, target)
            head_fit = replace(head_fit, pred=gated)
            candidates["head"] = {
                "objective": head_value,
                "held_out": asdict(held_head),
                "alpha": head_fit.alpha,
                "beta": head_fit.beta,
                "features": _features(head_fit.inputs == "ngrams", head_fit.beta),
                "regularization": head_fit.regularization,
                "scorer": head_fit.scorer,
                "scorers": head_fit.scorers,
            }
            use_head = head is True or head_value > candidates[best_key]["objective"] + 1e-9
            if use_head:
                # The mean of the fold models, not a refit on all rows: its logits
                # are on the scale the calibrator and the cut were fitted on, and it
                # saves a fit.
                theta = np.mean(
                    solutions[head_fit.inputs, head_fit.regularization], axis=0, dtype=np.float64
                )
                ood: dict[str, NDArray[np.float32]] = {}
                if head_fit.scorer in ("mahalanobis", "combined"):
                    ood.update(_mahalanobis_fit(vectors, y_all, n_routes))
                if head_fit.scorer == "combined":
                    assert head_fit.combination is not None
                    assert head_fit.center is not None and head_fit.scale is not None
                    ood["combination"] = head_fit.combination.astype(np.float32)
                    ood["center"] = head_fit.center.astype(np.float32)
                    ood["scale"] = head_fit.scale.astype(np.float32)
                head_grams = grams if head_fit.inputs == "ngrams" else None
                w, bias = _unpack(theta, dim + (len(head_grams) if head_grams else 0), n_cols)
                # float16 values: what is stored, so a reopened head is this head.
                ngram_weights = (
                    w[dim:].astype(np.float16).astype(np.float32) if head_grams else None
                )
                final_head = LinearHead(
                    classes=tuple(names),
                    weights=w[:dim].astype(np.float32),
                    bias=bias.astype(np.float32),
                    has_oos=has_oos,
                    alpha=head_fit.alpha,
                    top_k=k,
                    cut=head_fit.cut,
                    calibrator=head_fit.calibrator,
                    model_id=inputs.model_id,
                    beta=head_fit.beta,
                    scorer=head_fit.scorer,
                    ood=ood,
                    ngrams=head_grams,
                    ngram_weights=ngram_weights,
                )
            seconds["head"] = time.perf_counter() - t0
        if final_head is not None and not inputs.hybrid and _head_features(final_head) != "dense":
            # hybrid=True was asked for: obeyed, but the figures are not what this
            # router serves until its hybrid is on.
            notes.append(
                "the head reads the lexical signals, which this router's queries leave out "
                "(router.hybrid is False): set router.hybrid = True to route as fitted"
            )
            warnings.warn(notes[-1], stacklevel=3)

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
                "features": "dense" if final_head is None else _head_features(final_head),
                "scorer": final_head.scorer if final_head is not None else "similarity",
                "rows": n,
                "model": inputs.model_id,  # the scores its cuts were chosen on
                # ... and how a route's score was made of its utterances' similarities
                "aggregation": inputs.snapshot.aggregation,
                "aggregation_top_k": (
                    inputs.snapshot.top_k if inputs.snapshot.aggregation == "mean_topk" else None
                ),
                "fitted_at": time.time(),
            },
        )  # fmt: skip
        after_pred = (
            head_fit.pred if final_head is not None and head_fit is not None else held[best_key]
        )
        after = figures(y_fit, np.where(blocked, NONE, after_pred), n_routes)
        unfitted = old.head is None and not old.thresholds and "fitted_at" not in old.info
        fitted_value = _objective_value(after, objective, target)
        current_value = _objective_value(before, objective, target)
        # Equal at nothing right (too few rows to judge any): the search broke a tie of
        # zeros, which is no evidence for its cuts.
        worse = fitted_value < current_value or fitted_value == current_value <= 0
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

    if old.head is not None:
        notes.append(
            "'before' includes the previous head, which was probably trained on these "
            "rows: its figures are in-sample and flattering"
        )
    if any(not np.isnan(v) for v in fixed):
        notes.append(
            "routes with their own threshold (Route.threshold) kept it (a head's choice "
            "of such a route scoring below it is no route); clear it with "
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
            "features": _head_features(final_head),
            "scorer": final_head.scorer,
            "regularization": candidates["head"]["regularization"],
            "calibration": final_head.calibrator.kind,
            "training_rows": len(y_all),
        }
    report = FitReport(
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
    return new_policy, report


def lexical_left_out(
    view: LexicalView,
    scores: NDArray[np.float64],
    layout: RouteLayout,
    texts: Sequence[str],
    also: Pairs | None = None,
    row_texts: Sequence[str] | None = None,
    features: Callable[[Sequence[str]], list[_Features]] = _tokenise,
) -> NDArray[np.float64]:
    """The lexical ``scores`` of ``texts`` with each text left out of every route that
    holds it as an utterance, as the dense scores leave it out, and so are the rows of
    ``also`` ((text index, matrix row) pairs; ``row_texts``: the snapshot's texts)."""
    query, rows = layout.hidden_pairs(texts, also)
    if not len(query):
        return scores
    if row_texts is None:
        if also is not None and len(also[0]):
            msg = "lexical_left_out needs row_texts to leave out the rows of 'also'"
            raise ValueError(msg)
        held = [texts[q] for q in query.tolist()]  # rows found by their text
    else:
        held = [row_texts[r] for r in rows.tolist()]
    return view.leave_rows_out(scores, features(texts), query, layout.row_pos[rows], features(held))


def _same_rows(snapshot: Snapshot, vectors: NDArray[np.float32]) -> Pairs:
    """(vector index, matrix row) of each live utterance at least ``1 - _SAME`` similar
    to one of ``vectors``: one the model does not tell from it, whatever its text."""
    found_q, found_r = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for start in range(0, len(vectors), _CHUNK):
        # Dead rows' columns are -inf: only live utterances are found.
        sims = snapshot.products_by_name(vectors[start : start + _CHUNK])
        q, r = np.nonzero(sims >= 1.0 - _SAME)
        found_q.append(q.astype(np.int64) + start)
        found_r.append(r.astype(np.int64))
    return np.concatenate(found_q), np.concatenate(found_r)


def _owner_rows(layout: RouteLayout, rows: Sequence[int]) -> list[int]:
    """Of ``rows`` (those holding one text), the first of each route, in route-name
    order: a choice that does not depend on the order routes were added."""
    first: dict[str, int] = {}
    for row in sorted(rows):
        first.setdefault(layout.names[int(layout.row_pos[row])], int(row))
    return [first[name] for name in sorted(first)]


def _side_by_side(jobs: Sequence[Callable[[], _T]]) -> list[_T]:
    """The fold models' regressions, in order, two at a time on one BLAS thread each
    when a second CPU is there: much of each is one thread anyway (SciPy's sparse
    kernel, numpy's elementwise steps), so a second CPU would idle. Two, not one per
    CPU: each holds its L-BFGS history, ten copies of its weights. Jobs start in the
    order given."""
    workers = min(2, process_cpus())
    if workers < 2 or len(jobs) < 2:
        return [job() for job in jobs]
    with _blas_limit(1):
        return side_by_side(lambda job: job(), jobs, workers)


def _strengths(regularization: float | Sequence[float]) -> tuple[float, ...]:
    """The head's ``C`` values to try, strongest penalty (smallest ``C``) first: the
    order held-out ties are broken in."""
    if is_number(regularization):
        values: list[Any] = [regularization]
    elif isinstance(regularization, Iterable) and not isinstance(regularization, str | bytes):
        values = list(regularization)
    else:
        values = []
    if not values or not all(is_number(c) and math.isfinite(c) and c > 0 for c in values):
        msg = (
            "regularization must be a positive number or a non-empty sequence of them, "
            f"got {regularization!r}"
        )
        raise InvalidInputError(msg)
    return tuple(sorted({float(c) for c in values}))


def _fit_threads(index_rows: int, rows: int, setting: int | None) -> AbstractContextManager[Any]:
    """BLAS threads for the fit, by the router's rule: waking a second thread costs
    more than it saves on small products (and much more on a busy machine)."""
    return _blas_limit(blas_threads(max(index_rows, rows), setting), setting is not None)


def _scoring_threads(
    index_rows: int, rows: int, setting: int | None
) -> AbstractContextManager[Any]:
    """BLAS threads for scoring every fit text against the index at once: by the
    same rule, ``rows`` queries' products over ``index_rows`` rows each. Only this
    product gets them: the regressions' results would change with the thread count."""
    return _blas_limit(blas_threads(index_rows * rows, setting), setting is not None)


def _blas_limit(threads: int, configured: bool = True) -> AbstractContextManager[Any]:
    # The router's budget (_blas.BlasBudget), so queries served during a fit do not
    # undo its limits; rescanned, since a fit may have loaded SciPy's BLAS. The
    # default rule never raises the count the process had.
    return blas_limit(threads, rescan=True, at_most_found=not configured)


def _slack(
    data: _Scored, rows: NDArray[np.intp], fit: _ThresholdFit, fixed: NDArray[np.float64]
) -> NDArray[np.float64]:
    """How far each row's best score is above its threshold (``-inf`` if ambiguous)."""
    thr = fit.vector(fixed)
    top1 = data.top_ids[rows, 0]
    out: NDArray[np.float64] = data.s1[rows] - thr[top1]
    if fit.margin > 0:
        out[data.s1[rows] - data.s2[rows] < fit.margin] = -np.inf
    out[data.blocked_at(rows)] = -np.inf  # a negative example rejects it at any shift
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
    pooled = _single_cut(slack, cand, y, np.isfinite(slack), n_routes, objective, target)
    return {
        "objective": _objective_value(figures(y, pooled.pred, n_routes), objective, target),
        "held_out": asdict(figures(y, pred, n_routes)),
    }


def _ngram_inputs(
    texts: Sequence[str], found: Sequence[_Features]
) -> tuple[NgramFeatures | None, Any]:
    """The n-gram vocabulary of ``texts`` (``found``: their :func:`text_features`) and
    their rows as a SciPy CSR matrix; ``(None, None)`` when no feature is frequent
    enough."""
    try:
        from scipy.sparse import csr_matrix
    except ImportError as exc:
        msg = f"fitting a head needs scipy: {_FIT_HINT}"
        raise MissingDependencyError(msg) from exc
    grams = NgramFeatures.learn(texts, _NGRAM_SCALE, found=found)
    if not len(grams):
        return None, None
    indptr, indices, values = grams.rows(texts, found)
    return grams, csr_matrix((values, indices, indptr), shape=(len(texts), len(grams)))


def _logits(
    theta: NDArray[np.float32], vectors: NDArray[np.float32], sparse: Any, n_cols: int
) -> NDArray[np.float64]:
    """The logits of a :func:`_softmax_regression` solution (``sparse``: its n-gram
    rows), computed in float64."""
    dim = vectors.shape[1]
    theta64 = theta.astype(np.float64)
    w, bias = _unpack(theta64, dim + (0 if sparse is None else int(sparse.shape[1])), n_cols)
    out: NDArray[np.float64] = vectors.astype(np.float64) @ w[:dim] + bias
    if sparse is not None:
        out += sparse @ w[dim:]
    return out


def _features(ngrams: bool, beta: float) -> str:
    """What a head reads: ``dense``, then ``+ngrams`` and ``+lexical`` when it uses them."""
    return "dense" + "+ngrams" * ngrams + "+lexical" * bool(beta)


def _head_features(head: LinearHead) -> str:
    return _features(head.ngrams is not None, head.beta)


def _policy_predictions(
    policy: DecisionPolicy,
    data: _Scored,
    rows: NDArray[np.intp],
    names: list[str],
    fixed: NDArray[np.float64],
    vectors: NDArray[np.float32],
    texts: Sequence[str] | None,
) -> NDArray[np.int64]:
    """What ``policy`` decides for ``rows`` (as :func:`~synaptoroute.decision.decide`);
    ``texts`` ``None``: dense terms only, as a router whose ``hybrid`` is off."""
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
    lex = None if data.lex is None or texts is None else data.lex[rows, :k]
    knn = None if data.knn is None else data.knn[rows]
    if head.needs_knn and knn is None:
        return pred
    verdict = head.judge(vectors, cols, data.top_vals[rows, :k], lex, knn, texts)
    chosen = data.top_ids[rows, :k][np.arange(len(rows)), verdict.choice]
    out: NDArray[np.int64] = np.where(verdict.accepted, chosen, NONE).astype(np.int64)
    return _below_own_thresholds(out, data, rows, fixed)


def _below_own_thresholds(
    pred: NDArray[np.int64], data: _Scored, rows: NDArray[np.intp], fixed: NDArray[np.float64]
) -> NDArray[np.int64]:
    """``pred`` with no route for the rows a head sent to a route with a threshold of
    its own (``fixed``, NaN: none) that they score below, as ``decide`` answers them."""
    routed = pred != NONE
    own = np.full(len(pred), np.nan)
    own[routed] = fixed[pred[routed]]
    sim = np.where(data.top_ids[rows] == pred[:, None], data.top_vals[rows], -np.inf).max(axis=1)
    out: NDArray[np.int64] = np.where(~np.isnan(own) & (sim < own), NONE, pred)
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
