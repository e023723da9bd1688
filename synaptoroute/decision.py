"""The one decision function shared by every query path (sync, batch, async).

Given a query's best routes and their scores, :func:`decide` applies thresholds and
the ambiguity margin and returns a :class:`~synaptoroute.models.RouteMatch`. A fitted
policy (see :mod:`synaptoroute.fitting`) may add a :class:`Calibrator`, which fills
``RouteMatch.confidence``, and a :class:`LinearHead`, which then makes the decision
instead of the thresholds. Everything here is pure: no I/O, no locks, no awaiting.
The vectorised helpers (:func:`threshold_verdicts`, :meth:`LinearHead.judge`) are also
what fitting and evaluation call, so a fit predicts exactly what the router will do.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .index import RouteScores, Snapshot
from .models import MatchReason, RouteMatch

__all__ = [
    "Calibrator",
    "DecisionPolicy",
    "HeadVerdict",
    "LinearHead",
    "decide",
    "empty_match",
    "head_choice",
    "policy_for_routes",
    "threshold_verdicts",
]

#: Codes of :func:`threshold_verdicts`, in this order.
VERDICTS: tuple[MatchReason, ...] = ("matched", "below_threshold", "ambiguous")


def _encode_array(values: NDArray[Any]) -> dict[str, Any]:
    data = np.ascontiguousarray(values, dtype="<f4")
    return {"shape": list(data.shape), "f32le": base64.b64encode(data.tobytes()).decode("ascii")}


def _decode_array(doc: Mapping[str, Any]) -> NDArray[np.float32]:
    raw = base64.b64decode(doc["f32le"])
    array: NDArray[np.float32] = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    shape = tuple(int(n) for n in doc["shape"])
    return array.reshape(shape)


@dataclass(frozen=True, eq=False)
class Calibrator:
    """A monotone map from a raw score to the probability that the candidate is right.

    Attributes:
        kind: ``"isotonic"`` (piecewise linear through ``(xs, ys)``) or ``"platt"``
            (``1 / (1 + exp(-(a * x + b)))`` with ``xs = (a, b)``).
        xs: isotonic knots (increasing), or Platt's ``(a, b)``.
        ys: isotonic values at the knots (non-decreasing); empty for Platt.
        logit_input: apply ``log(x / (1 - x))`` to the raw value first (for raw
            probabilities).
    """

    kind: Literal["isotonic", "platt"]
    xs: tuple[float, ...]
    ys: tuple[float, ...] = ()
    logit_input: bool = False

    def __call__(self, raw: ArrayLike) -> NDArray[np.float64]:
        """Calibrated probabilities for ``raw`` (any shape)."""
        x = np.asarray(raw, dtype=np.float64)
        if self.logit_input:
            p = np.clip(x, 1e-9, 1 - 1e-9)
            x = np.log(p / (1 - p))
        if self.kind == "platt":
            a, b = self.xs
            # tanh form of the logistic: no overflow for large |a * x + b|.
            out: NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * (a * x + b)))
            return out
        return np.interp(x, self.xs, self.ys).astype(np.float64)

    def to_state(self) -> dict[str, Any]:
        """A JSON-serialisable description."""
        return {
            "kind": self.kind,
            "xs": list(self.xs),
            "ys": list(self.ys),
            "logit": self.logit_input,
        }

    @classmethod
    def from_state(cls, doc: Mapping[str, Any]) -> Calibrator:
        """The calibrator described by :meth:`to_state`."""
        return cls(
            kind=doc["kind"],
            xs=tuple(float(v) for v in doc["xs"]),
            ys=tuple(float(v) for v in doc.get("ys", ())),
            logit_input=bool(doc.get("logit", False)),
        )


@dataclass(frozen=True, eq=False)
class HeadVerdict:
    """What :meth:`LinearHead.judge` decided for ``m`` queries.

    Attributes:
        choice: position (``0..K-1``) of the chosen route among each query's ranked routes.
        raw: its probability under the head.
        confidence: ``raw`` calibrated.
        accepted: whether ``confidence`` reaches the head's ``cut``.
        ranked: ``(m, K)`` probabilities of the ranked routes.
    """

    choice: NDArray[np.intp]
    raw: NDArray[np.float64]
    confidence: NDArray[np.float64]
    accepted: NDArray[np.bool_]
    ranked: NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class LinearHead:
    """A linear model on the query embedding that picks among the best-ranked routes.

    For each class ``c`` the logit is ``vector @ weights[:, c] + bias[c]``; each route
    also gets ``alpha`` times its similarity score (routes outside the ``top_k``
    ranked ones get the lowest ranked score). A softmax over all classes (the routes,
    plus an out-of-scope class when ``has_oos``) gives probabilities; the candidate is
    the most probable of the ``top_k`` ranked routes; its probability, calibrated, is
    the confidence, and the route is taken when the confidence is at least ``cut``.

    Attributes:
        classes: route names in column order.
        weights: ``(dimension, len(classes) + has_oos)`` float32.
        bias: one per column.
        has_oos: the last column is the out-of-scope class.
        alpha: weight of the similarity score in a route's logit.
        top_k: how many ranked routes the head chooses among.
        cut: minimum calibrated confidence to take the candidate.
        calibrator: maps the candidate's probability to the confidence.
        model_id: the encoder whose embeddings the head was trained on.
    """

    classes: tuple[str, ...]
    weights: NDArray[np.float32]
    bias: NDArray[np.float32]
    has_oos: bool
    alpha: float
    top_k: int
    cut: float
    calibrator: Calibrator
    model_id: str
    _columns: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._columns.update({name: i for i, name in enumerate(self.classes)})

    def columns_of(self, names: Sequence[str | None]) -> NDArray[np.int64] | None:
        """Column of each route name, or ``None`` if any is unknown to the head."""
        try:
            return np.array([self._columns[n] for n in names], dtype=np.int64)  # type: ignore[index]
        except KeyError:
            return None

    def logits(self, vectors: NDArray[np.float32]) -> NDArray[np.float64]:
        """The linear part: ``vectors @ weights + bias``, shape ``(m, columns)``."""
        out = (np.asarray(vectors, dtype=np.float32) @ self.weights).astype(np.float64)
        out += self.bias
        return out

    def judge(
        self, vectors: NDArray[np.float32], columns: NDArray[np.int64], sims: NDArray[np.floating]
    ) -> HeadVerdict:
        """Decide for ``m`` queries at once.

        Args:
            vectors: ``(m, dimension)`` query embeddings.
            columns: ``(m, K)`` head column of each query's ranked routes, best first.
            sims: ``(m, K)`` their similarity scores.
        """
        choice, raw, ranked = head_choice(
            self.logits(vectors), columns, sims, self.alpha, len(self.classes)
        )
        confidence = self.calibrator(raw)
        return HeadVerdict(choice, raw, confidence, confidence >= self.cut, ranked)

    def to_state(self) -> dict[str, Any]:
        """A JSON-serialisable description (weights as base64 float32, exact)."""
        return {
            "classes": list(self.classes),
            "weights": _encode_array(self.weights),
            "bias": _encode_array(self.bias),
            "has_oos": self.has_oos,
            "alpha": self.alpha,
            "top_k": self.top_k,
            "cut": self.cut,
            "calibrator": self.calibrator.to_state(),
            "model_id": self.model_id,
        }

    @classmethod
    def from_state(cls, doc: Mapping[str, Any]) -> LinearHead:
        """The head described by :meth:`to_state`."""
        return cls(
            classes=tuple(doc["classes"]),
            weights=_decode_array(doc["weights"]),
            bias=_decode_array(doc["bias"]),
            has_oos=bool(doc["has_oos"]),
            alpha=float(doc["alpha"]),
            top_k=int(doc["top_k"]),
            cut=float(doc["cut"]),
            calibrator=Calibrator.from_state(doc["calibrator"]),
            model_id=str(doc["model_id"]),
        )


def head_choice(
    logits: NDArray[np.float64],
    columns: NDArray[np.int64],
    sims: NDArray[np.floating],
    alpha: float,
    n_routes: int,
) -> tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.float64]]:
    """The head's choice among each query's ranked routes (see :class:`LinearHead`).

    Args:
        logits: ``(m, columns)`` linear logits; the first ``n_routes`` columns are routes.
        columns: ``(m, K)`` column of each ranked route, best first.
        sims: ``(m, K)`` their similarity scores.
        alpha: weight of the similarity in a route's logit.
        n_routes: number of route columns (a last extra column is out of scope).

    Returns:
        The chosen position in ``0..K-1``, its probability, and the ``(m, K)``
        probabilities of the ranked routes.
    """
    m = len(logits)
    sims64 = np.asarray(sims, dtype=np.float64)
    z = np.array(logits, dtype=np.float64)
    # Routes outside the ranked K get the lowest ranked score: the index only
    # reports K routes per query, and this keeps fitting and routing identical.
    floor = sims64[:, -1:]
    z[:, :n_routes] += alpha * floor
    rows = np.arange(m)[:, None]
    z[rows, columns] += alpha * (sims64 - floor)
    z -= z.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    ranked = probs[rows, columns]
    choice = ranked.argmax(axis=1)
    return choice, ranked[np.arange(m), choice], ranked


@dataclass(frozen=True)
class DecisionPolicy:
    """What turns scores into a decision.

    Attributes:
        threshold: the router's default minimum score.
        min_margin: top-1 minus top-2 under this means "no route" (0 disables it).
        thresholds: per-route overrides (a route's own ``threshold`` wins over this).
        calibrator: fitted map from the best route's score to ``confidence``.
        head: a fitted :class:`LinearHead`; when set it decides instead of the thresholds.
        info: what the last fit did (objective, figures), for reports.
    """

    threshold: float
    min_margin: float = 0.0
    thresholds: Mapping[str, float] = field(default_factory=dict)
    calibrator: Calibrator | None = None
    head: LinearHead | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ranked_k(self) -> int:
        """How many ranked routes :func:`decide` needs for each query."""
        return max(2, self.head.top_k) if self.head is not None else 2

    def to_state(self) -> dict[str, Any]:
        """A JSON-serialisable description, stored by the router."""
        state: dict[str, Any] = {
            "threshold": self.threshold,
            "min_margin": self.min_margin,
            "thresholds": dict(self.thresholds),
        }
        if self.calibrator is not None:
            state["calibrator"] = self.calibrator.to_state()
        if self.head is not None:
            state["head"] = self.head.to_state()
        if self.info:
            state["info"] = dict(self.info)
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any], default: DecisionPolicy) -> DecisionPolicy:
        """The policy described by :meth:`to_state`; missing keys come from ``default``."""
        calibrator = state.get("calibrator")
        head = state.get("head")
        return cls(
            threshold=float(state.get("threshold", default.threshold)),
            min_margin=float(state.get("min_margin", default.min_margin)),
            thresholds={k: float(v) for k, v in state.get("thresholds", {}).items()},
            calibrator=Calibrator.from_state(calibrator) if calibrator else None,
            head=LinearHead.from_state(head) if head else None,
            info=dict(state.get("info", {})),
        )


def policy_for_routes(
    policy: DecisionPolicy, names: Sequence[str]
) -> tuple[DecisionPolicy, list[str]]:
    """Keep a fitted policy consistent with the router's current route names.

    Fitted thresholds of routes that are gone are dropped; the other routes keep
    theirs. A head trained on another set of routes is dropped, because its classes
    no longer match (a refit trains a new one).

    Returns:
        The policy (the same object if nothing changed) and notes on what changed.
    """
    present = set(names)
    notes: list[str] = []
    thresholds = {k: v for k, v in policy.thresholds.items() if k in present}
    head = policy.head
    if head is not None and set(head.classes) != present:
        added = sorted(present - set(head.classes))
        removed = sorted(set(head.classes) - present)
        notes.append(
            "the fitted head was dropped because the routes changed "
            f"(added {added[:5]}, removed {removed[:5]}); the fitted thresholds of the other "
            "routes still apply; call fit() again to train a new head"
        )
        head = None
    if head is policy.head and len(thresholds) == len(policy.thresholds):
        return policy, notes
    return replace(policy, thresholds=thresholds, head=head), notes


def empty_match(reason: str = "empty_query") -> RouteMatch:
    """The no-match returned without consulting the model."""
    return RouteMatch(name=None, score=0.0, reason=reason)  # type: ignore[arg-type]


def _verdict(score: Any, runner_score: Any, threshold: Any, min_margin: float) -> Any:
    # The threshold rule, written with operators only so one body serves Python
    # floats (decide, per query: no numpy call on the hot path) and arrays (fitting).
    below = score < threshold
    ambiguous = (score - runner_score < min_margin) * (min_margin > 0)
    return below + 2 * ambiguous * (1 - below)


def threshold_verdicts(
    score: ArrayLike, runner_score: ArrayLike, threshold: ArrayLike, min_margin: float
) -> NDArray[np.int8]:
    """Verdict codes (indexes into :data:`VERDICTS`) of the threshold rule.

    ``runner_score`` is ``-inf`` where there is no runner-up.
    """
    f64 = np.float64
    codes = _verdict(
        np.asarray(score, f64),
        np.asarray(runner_score, f64),
        np.asarray(threshold, f64),
        min_margin,
    )
    return np.asarray(codes, dtype=np.int8)


def decide(
    scores: RouteScores,
    snapshot: Snapshot,
    policy: DecisionPolicy,
    route_thresholds: Mapping[str, float | None],
    vector: NDArray[np.float32] | None = None,
) -> RouteMatch:
    """Choose a route (or none) from one query's ranked route scores.

    With a fitted head (and the query's ``vector``) the head decides among the
    ranked routes; otherwise the best route must reach its threshold (and the
    margin). ``vector`` is ``None`` in :meth:`~AdaptiveRouter.query_top_k`, which
    judges each route by its threshold.
    """
    if len(scores.route_ids) == 0:
        return empty_match("no_routes")
    head = policy.head
    if head is not None and vector is not None:
        k = min(head.top_k, len(scores.route_ids))
        names = [snapshot.names[int(r)] for r in scores.route_ids[:k]]
        columns = head.columns_of(names)
        # Routes the head never saw (changed by another replica) fall back to thresholds.
        if columns is not None:
            return _decide_by_head(head, scores, snapshot, names, columns, vector)
    best = snapshot.names[int(scores.route_ids[0])]
    assert best is not None
    score = float(scores.scores[0])
    own = route_thresholds.get(best)
    threshold = own if own is not None else policy.thresholds.get(best, policy.threshold)
    runner_up = runner_score = None
    if len(scores.route_ids) > 1:
        runner_up = snapshot.names[int(scores.route_ids[1])]
        runner_score = float(scores.scores[1])
    row = int(scores.nearest_rows[0])
    nearest = snapshot.texts[row] if row >= 0 else None
    runner = -math.inf if runner_score is None else runner_score
    reason = VERDICTS[_verdict(score, runner, threshold, policy.min_margin)]
    confidence = None if policy.calibrator is None else float(policy.calibrator(score))
    return RouteMatch(
        name=best if reason == "matched" else None,
        score=score,
        candidate=best,
        threshold=threshold,
        runner_up=runner_up,
        runner_up_score=runner_score,
        reason=reason,
        confidence=confidence,
        nearest_utterance=nearest,
    )


def _decide_by_head(
    head: LinearHead,
    scores: RouteScores,
    snapshot: Snapshot,
    names: list[str | None],
    columns: NDArray[np.int64],
    vector: NDArray[np.float32],
) -> RouteMatch:
    k = len(names)
    sims = scores.scores[:k]
    verdict = head.judge(vector[None, :], columns[None, :], sims[None, :])
    pos = int(verdict.choice[0])
    accepted = bool(verdict.accepted[0])
    # The runner-up is the head's second choice among the ranked routes.
    runner_up = runner_score = None
    if k > 1:
        ranked = verdict.ranked[0].copy()
        ranked[pos] = -1.0
        other = int(ranked.argmax())
        runner_up, runner_score = names[other], float(sims[other])
    row = int(scores.nearest_rows[pos])
    name = names[pos]
    return RouteMatch(
        name=name if accepted else None,
        score=float(sims[pos]),
        candidate=name,
        threshold=head.cut,
        runner_up=runner_up,
        runner_up_score=runner_score,
        reason="matched" if accepted else "rejected_by_head",
        confidence=float(verdict.confidence[0]),
        nearest_utterance=snapshot.texts[row] if row >= 0 else None,
    )
