"""Evaluation: route labelled texts and report how the router did.

:func:`evaluate_router` (also :meth:`AdaptiveRouter.evaluate`) routes the texts
through the router's own query path and returns an :class:`EvaluationReport`:
accuracy, in-scope accuracy, out-of-scope precision/recall/F1, macro-F1, per-route
precision/recall/F1, the most confused route pairs and the misrouted examples with
their scores. :func:`figures` computes the headline figures from label indexes; the
fitting code uses the same function, so a fit optimises exactly what is reported.

Conventions: a label ``None`` means the text belongs to no route (out of scope); a
prediction ``None`` means the router chose no route. Macro-F1 is the mean F1 of the
routes that occur as a label or a prediction (out of scope has its own F1).

Why one module over 400 lines: the report, its figures and its plot are one data
type with its computations; fitting imports the same figures.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from .checks import check_count
from .datasets import NONE, check_labelled, label_indexes
from .exceptions import InvalidInputError, MissingDependencyError, install_hint
from .models import RouteMatch

#: The reasons for which a router gives no route without judging the query's scope.
_TURNED_AWAY = frozenset({"empty_query", "no_routes", "negative_example"})

if TYPE_CHECKING:
    from .decision import DecisionPolicy

__all__ = [
    "HEADLINE_FIGURES",
    "ConfusedPair",
    "EvaluationReport",
    "Figures",
    "Misrouted",
    "RouteFigures",
    "auroc",
    "evaluate_matches",
    "evaluate_router",
    "expected_calibration_error",
    "figures",
    "label_indexes",
    "oos_curve",
]

_PLOT_HINT = install_hint("plot")


@dataclass(frozen=True)
class Figures:
    """Headline figures; ``None`` where a figure is undefined (e.g. no out-of-scope rows)."""

    accuracy: float | None
    in_scope_accuracy: float | None
    oos_precision: float | None
    oos_recall: float | None
    oos_f1: float | None
    macro_f1: float | None
    rows: int
    in_scope: int
    out_of_scope: int


@dataclass(frozen=True)
class RouteFigures:
    """Precision, recall and F1 of one route (``0.0`` where nothing was predicted)."""

    precision: float
    recall: float
    f1: float
    support: int  # rows labelled with the route
    predicted: int  # rows routed to it


@dataclass(frozen=True)
class ConfusedPair:
    """``count`` rows labelled ``label`` went to ``predicted`` (``None``: no route)."""

    label: str | None
    predicted: str | None
    count: int


@dataclass(frozen=True)
class Misrouted:
    """One text whose route differs from its label, with what the router saw."""

    index: int
    text: str
    label: str | None
    predicted: str | None
    candidate: str | None
    score: float
    confidence: float | None
    reason: str
    runner_up: str | None
    runner_up_score: float | None


def _rows(values: object, name: str, like: NDArray[Any] | None = None) -> NDArray[Any]:
    """``values`` as a 1-D array (a mask as booleans: 0/1 integers indexed rows, and
    ``~`` of them is -1/-2), as long as ``like``.

    Raises:
        InvalidInputError: not one number per row.
    """
    try:
        array = np.asarray(values, dtype=np.float64 if like is None else np.bool_)
    except (TypeError, ValueError) as exc:  # text, ragged rows
        msg = f"{name} must be numbers, one per row ({exc})"
        raise InvalidInputError(msg) from exc
    if like is None and np.isnan(array).any():  # None reads as NaN, which ranks nowhere
        msg = f"{name} must be numbers, one per row (not NaN or None)"
        raise InvalidInputError(msg)
    if array.ndim != 1 or (like is not None and len(array) != len(like)):
        expected = "a 1-D sequence" if like is None else f"{len(like)} values, one per score"
        msg = f"{name} must be {expected}, got shape {array.shape}"
        raise InvalidInputError(msg)
    return array


def auroc(score: NDArray[np.floating], positive: NDArray[np.bool_]) -> float | None:
    """Area under the ROC curve of ``score`` ranking ``positive`` rows above the others
    (ties count half); ``None`` without both kinds of rows.

    Raises:
        InvalidInputError: the two are not 1-D and of one length.
    """
    values = _rows(score, "score")
    positive = _rows(positive, "positive", values)
    n_pos = int(positive.sum())
    n_neg = len(values) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    # Not np.diff: -inf minus -inf is NaN, which would split a tie of -inf scores.
    starts = np.r_[0, np.flatnonzero(ordered[1:] != ordered[:-1]) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)  # average 1-based ranks
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def oos_curve(
    score: NDArray[np.floating],
    correct: NDArray[np.bool_],
    oos: NDArray[np.bool_],
    *,
    route_nothing: bool = False,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """In-scope accuracy and out-of-scope recall at every cut of ``score``.

    A row is routed (to its candidate) when its score is at least the cut; a row
    scored ``-inf`` (turned away before its scope was judged) never is.

    Args:
        score: each row's score (higher: more in scope).
        correct: the row's candidate is its label.
        oos: the row is out of scope.
        route_nothing: end with the cut ``+inf``, which routes nothing (in-scope
            accuracy 0, out-of-scope recall 1): where a cut above every score lies.

    Returns:
        Cuts (increasing), in-scope accuracy and out-of-scope recall at each.

    Raises:
        InvalidInputError: the three are not 1-D and of one length.
    """
    values = _rows(score, "score")
    correct, oos = _rows(correct, "correct", values), _rows(oos, "oos", values)
    cuts = np.unique(values[values > -np.inf])
    # Every row turned away: the one operating point routes none.
    if (route_nothing or not len(cuts)) and not (len(cuts) and cuts[-1] == np.inf):
        cuts = np.append(cuts, np.inf)
    n_in, n_out = int((~oos).sum()), int(oos.sum())
    right = np.sort(values[correct & ~oos])
    outside = np.sort(values[oos])
    in_acc = (len(right) - np.searchsorted(right, cuts, "left")) / max(n_in, 1)
    recall = np.searchsorted(outside, cuts, "left") / max(n_out, 1)
    return cuts, in_acc.astype(np.float64), recall.astype(np.float64)


def expected_calibration_error(
    confidence: NDArray[np.floating], correct: NDArray[np.bool_], bins: int = 10
) -> float | None:
    """Expected calibration error: the row-weighted mean gap between the mean
    confidence and the share correct in equal-width confidence bins.

    Raises:
        InvalidInputError: the two are not 1-D and of one length, a confidence is
            not a number in [0, 1], or ``bins`` is not a whole number of at least 1.
    """
    bins = check_count(bins, "bins", 1)
    conf = _rows(confidence, "confidence")
    correct = _rows(correct, "correct", conf)
    if not ((conf >= 0) & (conf <= 1)).all():  # NaN too
        msg = "confidence must be numbers in [0, 1]"
        raise InvalidInputError(msg)
    if len(conf) == 0:
        return None
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    mean_conf = np.bincount(which, weights=conf, minlength=bins)
    hits = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    return float(np.abs(mean_conf - hits).sum() / len(conf))


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def per_route_counts(
    y_true: NDArray[np.int64], y_pred: NDArray[np.int64], n_routes: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """True positives, support and predicted count of each route (``NONE`` excluded)."""
    hit = (y_true == y_pred) & (y_true != NONE)
    tp = np.bincount(y_true[hit], minlength=n_routes)
    support = np.bincount(y_true[y_true != NONE], minlength=n_routes)
    predicted = np.bincount(y_pred[y_pred != NONE], minlength=n_routes)
    return tp, support, predicted


def macro_f1_from_counts(
    tp: NDArray[np.int64], support: NDArray[np.int64], predicted: NDArray[np.int64]
) -> float | None:
    """Mean F1 over the routes that occur as a label or a prediction."""
    present = (support > 0) | (predicted > 0)
    if not present.any():
        return None
    f1 = 2.0 * tp[present] / (support[present] + predicted[present])
    return float(f1.mean())


def figures(y_true: NDArray[np.int64], y_pred: NDArray[np.int64], n_routes: int) -> Figures:
    """Headline figures of predictions against labels (route indexes, ``NONE`` for none)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    n = len(y_true)
    oos = y_true == NONE
    rejected = y_pred == NONE
    correct = y_true == y_pred
    n_oos = int(oos.sum())
    n_rejected = int(rejected.sum())
    n_hit = int((oos & rejected).sum())
    oos_precision = _ratio(n_hit, n_rejected)
    oos_recall = _ratio(n_hit, n_oos)
    tp, support, predicted = per_route_counts(y_true, y_pred, n_routes)
    return Figures(
        accuracy=_ratio(int(correct.sum()), n),
        in_scope_accuracy=_ratio(int((correct & ~oos).sum()), n - n_oos),
        oos_precision=oos_precision,
        oos_recall=oos_recall,
        # 2 TP / (2 TP + FP + FN): defined (0.0) when no row was rejected, too.
        oos_f1=2 * n_hit / (n_oos + n_rejected) if n_oos else None,
        macro_f1=macro_f1_from_counts(tp, support, predicted),
        rows=n,
        in_scope=n - n_oos,
        out_of_scope=n_oos,
    )


#: The figures every report leads with (attributes of :class:`Figures` and of
#: :class:`EvaluationReport`), in the order it prints them.
HEADLINE_FIGURES = (
    "accuracy",
    "in_scope_accuracy",
    "oos_precision",
    "oos_recall",
    "oos_f1",
    "macro_f1",
)


@dataclass
class EvaluationReport:
    """What :func:`evaluate_router` found. ``to_json()`` and ``plot(path)`` export it."""

    figures: Figures
    per_route: dict[str, RouteFigures]
    confused_pairs: list[ConfusedPair]
    misrouted: list[Misrouted]
    routes: list[str]
    confusion: NDArray[np.int64] = field(repr=False)  # (routes + none) x (routes + none)
    scores: NDArray[np.float64] = field(repr=False)  # RouteMatch.score of each row
    outcomes: NDArray[np.int8] = field(repr=False)  # 0 correct, 1 wrong, 2 out of scope
    #: RouteMatch.confidence of each row (NaN where the router gave none).
    confidences: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0), repr=False)
    #: Whether each row's candidate (best route, passed or not) is its label.
    candidate_correct: NDArray[np.bool_] = field(
        default_factory=lambda: np.zeros(0, dtype=bool), repr=False
    )
    #: The router's cut: the head's confidence cut, or the default score threshold;
    #: ``None`` when routes are cut at thresholds of their own or by a margin.
    cut: float | None = None
    #: What ``cut`` applies to: ``"confidence"`` or ``"score"``.
    cut_on: str = "score"
    #: Rows the router turned away before judging their scope: an empty query, a
    #: router with no routes, or a negative example nearer than every route.
    turned_away: NDArray[np.bool_] = field(
        default_factory=lambda: np.zeros(0, dtype=bool), repr=False
    )

    def _judged(self) -> NDArray[np.bool_]:
        # The rows whose scope the router judged by a score or a confidence.
        if len(self.turned_away) == len(self.scores):
            return ~self.turned_away
        return np.ones(len(self.scores), dtype=bool)

    @property
    def ood_on(self) -> Literal["confidence", "score"]:
        """What :attr:`ood_scores` holds: ``"confidence"`` where every judged row has
        one (after a fit), else ``"score"`` (the best route's similarity)."""
        conf, judged = self.confidences, self._judged()
        if len(conf) == len(self.scores) and judged.any() and not np.isnan(conf[judged]).any():
            return "confidence"
        return "score"

    @property
    def ood_scores(self) -> NDArray[np.float64]:
        """What the router judges scope by (:attr:`ood_on`), per row; ``-inf`` for a
        row it turned away (:attr:`turned_away`), which no cut routes."""
        values = self.confidences if self.ood_on == "confidence" else self.scores
        out: NDArray[np.float64] = np.where(self._judged(), values, -np.inf)
        return out

    @property
    def oos_auroc(self) -> float | None:
        """AUROC of :attr:`ood_scores` separating in-scope from out-of-scope rows."""
        return auroc(self.ood_scores, self.outcomes != 2)

    @property
    def ece(self) -> float | None:
        """Expected calibration error of ``confidence`` (10 bins) against whether the
        candidate was right, over the rows the router judged (not those it turned
        away); ``None`` if the router gives no confidence (before a fit)."""
        if self.ood_on != "confidence":
            return None
        judged = self._judged()
        return expected_calibration_error(self.confidences[judged], self.candidate_correct[judged])

    def oos_curve(self) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """In-scope accuracy and out-of-scope recall at every cut of
        :attr:`ood_scores` (see :func:`oos_curve`), ending with the cut ``+inf``, which
        routes nothing (in-scope accuracy 0, out-of-scope recall 1)."""
        return oos_curve(
            self.ood_scores, self.candidate_correct, self.outcomes == 2, route_nothing=True
        )

    def _cut_curve(
        self,
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], int | None]:
        """The curve of :meth:`oos_curve` on what the router's :attr:`cut` applies to,
        and the index of the cut on it (``None`` where the cut cannot be placed).

        After a fit without a head every row has a confidence (:attr:`ood_on` is
        ``"confidence"``) but the router cuts the score: the curve is then drawn over
        the scores (the confidence is a non-decreasing map of the score, so every cut
        of the confidence is a cut of the score, and only the score's curve holds every
        point a threshold can reach). A cut above every value lands on the final
        ``+inf`` cut, which routes nothing.
        """
        on, values = self.ood_on, self.ood_scores
        if self.cut_on == "score" and on == "confidence":
            on, values = "score", np.where(self._judged(), self.scores, -np.inf)
        cuts, in_acc, recall = oos_curve(
            values, self.candidate_correct, self.outcomes == 2, route_nothing=True
        )
        at = None
        if self.cut is not None and self.cut_on == on:
            # The first cut at or above the router's routes the same rows (none between).
            at = min(int(np.searchsorted(cuts, self.cut, "left")), len(cuts) - 1)
        return cuts, in_acc, recall, at

    @property
    def accuracy(self) -> float | None:
        """Share of rows routed as labelled (a rejected out-of-scope row counts as right)."""
        return self.figures.accuracy

    @property
    def in_scope_accuracy(self) -> float | None:
        """Share of in-scope rows routed to their route."""
        return self.figures.in_scope_accuracy

    @property
    def oos_precision(self) -> float | None:
        """Share of the rows given no route that are out of scope (``None`` when no
        row was given no route)."""
        return self.figures.oos_precision

    @property
    def oos_recall(self) -> float | None:
        """Share of out-of-scope rows given no route."""
        return self.figures.oos_recall

    @property
    def oos_f1(self) -> float | None:
        """F1 of giving no route to the out-of-scope rows (0 when out-of-scope rows
        exist but none was given no route; ``None`` without out-of-scope rows)."""
        return self.figures.oos_f1

    @property
    def macro_f1(self) -> float | None:
        """Mean F1 of the routes that occur as a label or a prediction."""
        return self.figures.macro_f1

    def to_dict(self) -> dict[str, Any]:
        """Everything but the confusion matrix and raw score arrays, JSON-ready."""
        return {
            **asdict(self.figures),
            "oos_auroc": self.oos_auroc,
            "ece": self.ece,
            "cut": self.cut,
            "cut_on": self.cut_on,
            "per_route": {name: asdict(f) for name, f in self.per_route.items()},
            "confused_pairs": [asdict(p) for p in self.confused_pairs],
            "misrouted": [asdict(m) for m in self.misrouted],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)

    def __str__(self) -> str:
        f = self.figures
        lines = [f"rows {f.rows} (in scope {f.in_scope}, out of scope {f.out_of_scope})"]
        for key in HEADLINE_FIGURES:
            value = getattr(f, key)
            lines.append(f"{key:18} {'-' if value is None else f'{value:.4f}'}")
        for key, value in (("oos_auroc", self.oos_auroc), ("ece", self.ece), ("cut", self.cut)):
            lines.append(f"{key:18} {'-' if value is None else f'{value:.4f}'}")
        if self.confused_pairs:
            lines.append("most confused (label -> predicted: count):")
            for p in self.confused_pairs[:10]:
                lines.append(f"  {p.label or '(none)'} -> {p.predicted or '(none)'}: {p.count}")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Write a PNG: a confusion heatmap, the score distributions of correct,
        wrong and out-of-scope queries, and (with out-of-scope rows) the in-scope
        accuracy / out-of-scope recall curve with the router's cut marked.

        Raises:
            MissingDependencyError: matplotlib is not installed (extra ``plot``).
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as exc:
            msg = f"plotting needs matplotlib: {_PLOT_HINT}"
            raise MissingDependencyError(msg) from exc
        out = Path(path)
        curve = self.figures.out_of_scope > 0 and self.figures.in_scope > 0
        fig = Figure(figsize=(20 if curve else 14, 6.5), dpi=110)
        FigureCanvasAgg(fig)
        ratios = [1.15, 1, 1] if curve else [1.15, 1]
        axes = fig.subplots(1, len(ratios), gridspec_kw={"width_ratios": ratios})
        ax_heat, ax_hist = axes[0], axes[1]
        if curve:
            self._plot_curve(axes[2])
        ticks = [*self.routes, "(none)"]
        # Rows normalised by label count, so small routes are as visible as large ones.
        totals = self.confusion.sum(axis=1, keepdims=True)
        shares = np.divide(
            self.confusion, totals, out=np.zeros(self.confusion.shape), where=totals > 0
        )
        image = ax_heat.imshow(shares, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        fig.colorbar(image, ax=ax_heat, fraction=0.046, pad=0.04, label="share of label's rows")
        if len(ticks) <= 40:
            ax_heat.set_xticks(range(len(ticks)), ticks, rotation=90, fontsize=7)
            ax_heat.set_yticks(range(len(ticks)), ticks, fontsize=7)
        ax_heat.set_xlabel("predicted route")
        ax_heat.set_ylabel("label")
        acc = self.figures.accuracy
        ax_heat.set_title(f"confusion ({len(self.routes)} routes; accuracy {acc or 0:.3f})")
        bins = np.linspace(
            min(0.0, float(self.scores.min(initial=0.0))),
            max(1.0, float(self.scores.max(initial=1.0))),
            41,
        )
        for code, label, color in (
            (0, "correct", "tab:green"),
            (1, "wrong (in scope)", "tab:red"),
            (2, "out of scope", "tab:gray"),
        ):
            values = self.scores[self.outcomes == code]
            if len(values):
                ax_hist.hist(
                    values, bins=bins, alpha=0.55, color=color, label=f"{label} ({len(values)})"
                )
        ax_hist.set_xlabel("score of the best route (cosine similarity)")
        ax_hist.set_ylabel("queries")
        ax_hist.set_title("score distributions")
        ax_hist.legend()
        fig.tight_layout()
        fig.savefig(out, format="png")
        return out

    def _plot_curve(self, ax: Any) -> None:
        _, in_acc, recall, at = self._cut_curve()
        ax.plot(recall, in_acc, color="tab:blue", label="every cut")
        if at is not None and self.cut is not None:
            ax.scatter(
                [recall[at]],
                [in_acc[at]],
                color="tab:red",
                zorder=3,
                label=f"router's cut ({self.cut_on} {self.cut:.3f})",
            )
        elif self.cut is None and None not in (self.oos_recall, self.in_scope_accuracy):
            ax.scatter(
                [self.oos_recall],
                [self.in_scope_accuracy],
                color="tab:red",
                zorder=3,
                label="router (thresholds of its routes, or a margin)",
            )
        auc = self.oos_auroc
        ax.set_xlabel("out-of-scope recall")
        ax.set_ylabel("in-scope accuracy")
        ax.set_title(f"in scope / out of scope (AUROC {auc or 0:.3f})")
        ax.legend(loc="lower left")


def evaluate_matches(
    texts: Sequence[str],
    labels: Sequence[str | None],
    matches: Sequence[RouteMatch],
    routes: Sequence[str],
    *,
    top_pairs: int = 20,
) -> EvaluationReport:
    """Build a report from routing results that are already known.

    Args:
        texts: the queries.
        labels: the expected route of each (``None``: no route).
        matches: what the router returned for each.
        routes: every route name (the report's route order).
        top_pairs: how many confused pairs to keep.
    """
    check_labelled(texts, labels)
    if len(matches) != len(texts):
        msg = f"texts and matches differ in length ({len(texts)} != {len(matches)})"
        raise InvalidInputError(msg)
    names = list(routes)
    y_true = label_indexes(labels, names)
    y_pred = label_indexes([m.name for m in matches], names)
    n_routes = len(names)
    headline = figures(y_true, y_pred, n_routes)
    tp, support, predicted = per_route_counts(y_true, y_pred, n_routes)
    per_route = {}
    for i, name in enumerate(names):
        if support[i] == 0 and predicted[i] == 0:
            continue
        precision = tp[i] / predicted[i] if predicted[i] else 0.0
        recall = tp[i] / support[i] if support[i] else 0.0
        per_route[name] = RouteFigures(
            precision=float(precision),
            recall=float(recall),
            f1=float(2 * tp[i] / (support[i] + predicted[i])),
            support=int(support[i]),
            predicted=int(predicted[i]),
        )
    # Column n_routes of the confusion matrix stands for "none".
    true_col = np.where(y_true == NONE, n_routes, y_true)
    pred_col = np.where(y_pred == NONE, n_routes, y_pred)
    confusion = np.zeros((n_routes + 1, n_routes + 1), dtype=np.int64)
    np.add.at(confusion, (true_col, pred_col), 1)
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:top_pairs]
    pairs = []
    for cell in flat.tolist():
        t, p = divmod(cell, n_routes + 1)
        if off[t, p] == 0:
            break
        pairs.append(
            ConfusedPair(
                label=names[t] if t < n_routes else None,
                predicted=names[p] if p < n_routes else None,
                count=int(off[t, p]),
            )
        )
    misrouted = [
        Misrouted(
            index=i,
            text=texts[i],
            label=labels[i],
            predicted=m.name,
            candidate=m.candidate,
            score=m.score,
            confidence=m.confidence,
            reason=m.reason,
            runner_up=m.runner_up,
            runner_up_score=m.runner_up_score,
        )
        for i, m in enumerate(matches)
        if y_true[i] != y_pred[i]
    ]
    outcomes = np.where(y_true == NONE, 2, np.where(y_true == y_pred, 0, 1)).astype(np.int8)
    known = set(names)  # once, not once per row
    y_cand = label_indexes([m.candidate if m.candidate in known else None for m in matches], names)
    return EvaluationReport(
        figures=headline,
        per_route=per_route,
        confused_pairs=pairs,
        misrouted=misrouted,
        routes=names,
        confusion=confusion,
        scores=np.array([m.score for m in matches], dtype=np.float64),
        outcomes=outcomes,
        confidences=np.array(
            [np.nan if m.confidence is None else m.confidence for m in matches], dtype=np.float64
        ),
        candidate_correct=(y_cand == y_true) & (y_true != NONE),
        turned_away=np.array([m.reason in _TURNED_AWAY for m in matches], dtype=bool),
    )


class Routes(Protocol):
    """What :func:`evaluate_router` reads of a router (an :class:`AdaptiveRouter` has it)."""

    @property
    def route_names(self) -> list[str]:
        """The routes' names."""
        ...

    @property
    def policy(self) -> DecisionPolicy:
        """The decision policy in force."""
        ...

    def query_batch(self, texts: Sequence[str]) -> list[RouteMatch]:
        """Route each text."""
        ...


def evaluate_router(
    router: Routes,
    texts: Sequence[str],
    labels: Sequence[str | None],
    *,
    batch_size: int = 256,
    top_pairs: int = 20,
) -> EvaluationReport:
    """Route ``texts`` with ``router`` (its normal query path) and compare with ``labels``.

    Args:
        router: the router to evaluate; nothing in it changes (its query cache fills).
        texts: the queries.
        labels: the expected route of each; ``None`` for texts that fit no route.
        batch_size: texts per ``query_batch`` call.
        top_pairs: how many confused pairs to keep.

    Raises:
        InvalidInputError: lengths differ, a label names no route of the router, or
            ``batch_size`` or ``top_pairs`` is not a whole number >= 1 (>= 0).
    """
    batch_size = check_count(batch_size, "batch_size", 1)
    top_pairs = check_count(top_pairs, "top_pairs", 0)
    check_labelled(texts, labels)
    names = router.route_names
    label_indexes(labels, names)  # fail before any encoding
    matches: list[RouteMatch] = []
    for start in range(0, len(texts), batch_size):
        matches.extend(router.query_batch(list(texts[start : start + batch_size])))
    report = evaluate_matches(texts, labels, matches, names, top_pairs=top_pairs)
    policy = router.policy
    cut, on = (
        (policy.threshold, "score") if policy.head is None else (policy.head.cut, "confidence")
    )
    # Routes cut at thresholds of their own (a head's choice too), or by a margin: no
    # single cut is where the router works (the plot marks its own figures instead).
    single = (policy.head is not None or policy.min_margin == 0) and all(
        m.threshold == cut for m in matches if m.threshold is not None
    )
    report.cut, report.cut_on = (cut if single else None), on
    return report
