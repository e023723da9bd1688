"""The one decision function shared by every query path (sync, batch, async).

Given a query's best routes and their scores, :func:`decide` applies thresholds and
the ambiguity margin and returns a :class:`~synaptoroute.models.RouteMatch`. A fitted
policy (see :mod:`synaptoroute.fitting`) may add a :class:`Calibrator`, which fills
``RouteMatch.confidence``, and a :class:`LinearHead`, which then makes the decision
instead of the thresholds. Everything here is pure: no I/O, no locks, no awaiting.
The vectorised helpers (:func:`threshold_verdicts`, :meth:`LinearHead.judge`) are also
what fitting and evaluation call, so a fit predicts exactly what the router will do.

Why one module over 400 lines: the policy, its calibrator, the head and its
out-of-scope scorers are what :func:`decide` applies, and they must stay in step with
it; keeping them together keeps the one decision path in one place.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .checks import is_number
from .exceptions import InvalidInputError
from .index import RouteScores, Snapshot
from .lexical import LexicalView, NgramFeatures
from .models import NEGATIVES_ROUTE, MatchReason, RouteMatch

__all__ = [
    "OOD_SCORERS",
    "Calibrator",
    "DecisionPolicy",
    "HeadVerdict",
    "LinearHead",
    "decide",
    "empty_match",
    "head_choice",
    "head_scores",
    "policy_for_routes",
    "threshold_verdicts",
    "without_head",
]

#: Out-of-scope scorers a head can judge its candidate by (see :class:`LinearHead`).
OOD_SCORERS = ("max_prob", "energy", "nearest", "mahalanobis", "knn", "combined")
#: Neighbours of the ``knn`` scorer: the k-th nearest utterance's similarity.
KNN_K = 5

#: Codes of :func:`threshold_verdicts`, in this order.
VERDICTS: tuple[MatchReason, ...] = ("matched", "below_threshold", "ambiguous")


# Array encodings of the stored state: the key names the little-endian type.
_CODES = {"f32le": "<f4", "f16le": "<f2", "i32le": "<i4"}


def _encode_array(values: NDArray[Any], code: str = "f32le") -> dict[str, Any]:
    data = np.ascontiguousarray(values, dtype=_CODES[code])
    return {"shape": list(data.shape), code: base64.b64encode(data.tobytes()).decode("ascii")}


def _decode_array(doc: Mapping[str, Any]) -> NDArray[Any]:
    """The array of :func:`_encode_array`: float32 from either float code, else int64."""
    code = next((c for c in _CODES if c in doc), None)
    if code is None:
        msg = f"a stored array needs one of {sorted(_CODES)}"
        raise KeyError(msg)
    array = np.frombuffer(base64.b64decode(doc[code]), dtype=_CODES[code])
    shape = tuple(int(n) for n in doc["shape"])
    kind = np.int64 if code == "i32le" else np.float32
    return array.astype(kind).reshape(shape)


def logit(prob: NDArray[np.float64]) -> NDArray[np.float64]:
    """``log(p / (1 - p))``, with ``p`` clipped to ``[1e-9, 1 - 1e-9]``."""
    p = np.clip(prob, 1e-9, 1 - 1e-9)
    out: NDArray[np.float64] = np.log(p / (1 - p))
    return out


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
            x = logit(x)
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
        raw: the value the head's scorer gives it (with ``max_prob``, its probability).
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
    the most probable of the ``top_k`` ranked routes. With ``ngrams`` the query's
    n-gram features add ``row @ ngram_weights`` to the logits, and with ``beta > 0``
    each ranked route also gets ``beta`` times its lexical score (hybrid routing, see
    :mod:`synaptoroute.lexical`). The candidate is judged by the out-of-scope
    ``scorer`` (one of :data:`OOD_SCORERS`): its probability (``max_prob``), the
    log-sum-exp of the route logits (``energy``), its dense similarity
    (``nearest``), minus the Mahalanobis distance to the nearest route mean under a
    shared covariance (``mahalanobis``), the similarity of the k-th nearest
    utterance (``knn``), or a logistic combination of these (``combined``). That
    value, calibrated, is the confidence, and the route is taken when the confidence
    is at least ``cut``.

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
        beta: weight of the lexical score in a route's logit (0: dense only).
        scorer: the out-of-scope scorer (see above).
        ood: the scorer's parameters: ``precision`` ``(d, d)``, ``projected_means``
            ``(d, routes)`` and ``mean_terms`` for Mahalanobis; ``combination``
            (weights over :data:`OOD_SCORERS` minus itself, then a bias) and
            ``center``/``scale`` for ``combined``.
        ngrams: the n-gram feature vocabulary (``None``: the embedding only).
        ngram_weights: ``(len(ngrams), columns)`` weights of those features, float16
            values (stored as such, so a reopened head decides identically).
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
    beta: float = 0.0
    scorer: str = "max_prob"
    ood: Mapping[str, NDArray[np.float32]] = field(default_factory=dict)
    ngrams: NgramFeatures | None = None
    ngram_weights: NDArray[np.float32] | None = None
    _columns: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    # ``ood`` in float64, converted once here rather than on every query.
    _ood64: dict[str, NDArray[np.float64]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._columns.update({name: i for i, name in enumerate(self.classes)})
        self._ood64.update({k: np.asarray(v, dtype=np.float64) for k, v in self.ood.items()})

    def columns_of(self, names: Sequence[str | None]) -> NDArray[np.int64] | None:
        """Column of each route name, or ``None`` if any is unknown to the head."""
        try:
            return np.array([self._columns[n] for n in names], dtype=np.int64)  # type: ignore[index]
        except KeyError:
            return None

    def logits(
        self, vectors: NDArray[np.float32], texts: Sequence[str] | None = None
    ) -> NDArray[np.float64]:
        """The linear part: ``vectors @ weights + bias``, plus the n-gram features'
        products when the head has them and ``texts`` are given; ``(m, columns)``."""
        out = (np.asarray(vectors, dtype=np.float32) @ self.weights).astype(np.float64)
        out += self.bias
        if self.ngrams is not None and self.ngram_weights is not None and texts is not None:
            out += self.ngrams.products(texts, self.ngram_weights)
        return out

    @property
    def needs_knn(self) -> bool:
        """Whether the scorer reads the k-th nearest utterance's similarity."""
        return self.scorer in ("knn", "combined")

    def judge(
        self,
        vectors: NDArray[np.float32],
        columns: NDArray[np.int64],
        sims: NDArray[np.floating],
        lexical: NDArray[np.floating] | None = None,
        knn: NDArray[np.floating] | None = None,
        texts: Sequence[str] | None = None,
    ) -> HeadVerdict:
        """Decide for ``m`` queries at once.

        Args:
            vectors: ``(m, dimension)`` query embeddings.
            columns: ``(m, K)`` head column of each query's ranked routes, best first.
            sims: ``(m, K)`` their similarity scores.
            lexical: ``(m, K)`` their lexical scores (read when ``beta > 0``).
            knn: ``(m,)`` similarity of each query's k-th nearest utterance (read by
                the ``knn`` and ``combined`` scorers).
            texts: the queries, for the n-gram features (``None``: left out, as when
                the router's ``hybrid`` is off).
        """
        logits = self.logits(vectors, texts)
        lex = lexical if self.beta else None
        choice, prob, ranked, energy = head_scores(
            logits, columns, sims, self.alpha, len(self.classes), lex, self.beta
        )
        sims64 = np.asarray(sims, dtype=np.float64)
        nearest = sims64[np.arange(len(choice)), choice]
        raw = ood_score(self, vectors, prob, energy, nearest, knn)
        confidence = self.calibrator(raw)
        return HeadVerdict(choice, raw, confidence, confidence >= self.cut, ranked)

    def mahalanobis(self, vectors: NDArray[np.float32]) -> NDArray[np.float64]:
        """Minus the squared Mahalanobis distance to the nearest route mean."""
        ood = self._ood64
        return mahalanobis_score(
            vectors, ood["precision"], ood["projected_means"], ood["mean_terms"]
        )

    def to_state(self) -> dict[str, Any]:
        """A JSON-serialisable description (weights as base64 float32, the n-gram
        weights as float16, which is what they hold: exact either way)."""
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
            "beta": self.beta,
            "scorer": self.scorer,
            "ood": {key: _encode_array(value) for key, value in self.ood.items()},
            **self._ngrams_state(),
        }

    def _ngrams_state(self) -> dict[str, Any]:
        if self.ngrams is None or self.ngram_weights is None:
            return {}
        return {
            "ngrams": {
                "ids": _encode_array(self.ngrams.ids, "i32le"),
                "idf": _encode_array(self.ngrams.idf),
                "scale": self.ngrams.scale,
                "tokeniser": self.ngrams.tokeniser,
                "weights": _encode_array(self.ngram_weights, "f16le"),
            }
        }

    @classmethod
    def from_state(cls, doc: Mapping[str, Any]) -> LinearHead:
        """The head described by :meth:`to_state`."""
        grams = doc.get("ngrams")
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
            beta=float(doc.get("beta", 0.0)),
            scorer=str(doc.get("scorer", "max_prob")),
            ood={key: _decode_array(value) for key, value in doc.get("ood", {}).items()},
            ngrams=None if grams is None else NgramFeatures(
                _decode_array(grams["ids"]), _decode_array(grams["idf"]), float(grams["scale"]),
                int(grams.get("tokeniser", 1)),  # heads stored before it was recorded: 1
            ),
            ngram_weights=None if grams is None else _decode_array(grams["weights"]),
        )  # fmt: skip


def mahalanobis_score(
    vectors: NDArray[np.floating],
    precision: NDArray[np.floating],
    projected_means: NDArray[np.floating],
    mean_terms: NDArray[np.floating],
) -> NDArray[np.float64]:
    """Minus the smallest squared Mahalanobis distance ``(x - mu)' P (x - mu)`` over
    the route means, computed as ``x'Px - 2 x'(P mu) + mu'P mu``."""
    x = np.asarray(vectors, dtype=np.float64)
    quad = np.einsum("ij,ij->i", x @ np.asarray(precision, dtype=np.float64), x)
    cross = x @ np.asarray(projected_means, dtype=np.float64)
    dist = quad[:, None] - 2 * cross + np.asarray(mean_terms, dtype=np.float64)[None, :]
    out: NDArray[np.float64] = -dist.min(axis=1)
    return out


def scorer_features(
    prob: NDArray[np.float64],
    energy: NDArray[np.float64],
    nearest: NDArray[np.float64],
    maha: NDArray[np.float64],
    knn: NDArray[np.float64],
) -> NDArray[np.float64]:
    """The ``(m, 5)`` inputs of the ``combined`` scorer, in :data:`OOD_SCORERS` order
    (the probability as a logit, so that every input is on an open scale)."""
    return np.stack([logit(prob), energy, nearest, maha, knn], axis=1)


def ood_score(
    head: LinearHead,
    vectors: NDArray[np.float32],
    prob: NDArray[np.float64],
    energy: NDArray[np.float64],
    nearest: NDArray[np.float64],
    knn: NDArray[np.floating] | None,
) -> NDArray[np.float64]:
    """The value ``head.scorer`` judges each candidate by (higher: more in scope)."""
    scorer = head.scorer
    if scorer == "max_prob":
        return prob
    if scorer == "energy":
        return energy
    if scorer == "nearest":
        return nearest
    if scorer == "mahalanobis":
        return head.mahalanobis(vectors)
    knn64 = np.zeros(len(prob)) if knn is None else np.asarray(knn, dtype=np.float64)
    if scorer == "knn":
        return knn64
    feats = scorer_features(prob, energy, nearest, head.mahalanobis(vectors), knn64)
    ood = head._ood64
    feats = (feats - ood["center"]) / ood["scale"]
    weights = ood["combination"]
    out: NDArray[np.float64] = feats @ weights[:-1] + weights[-1]
    return out


def head_choice(
    logits: NDArray[np.float64],
    columns: NDArray[np.int64],
    sims: NDArray[np.floating],
    alpha: float,
    n_routes: int,
) -> tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.float64]]:
    """The head's choice among each query's ranked routes, dense terms only (0.2's
    form): the first three values of :func:`head_scores`."""
    choice, prob, ranked, _ = head_scores(logits, columns, sims, alpha, n_routes)
    return choice, prob, ranked


def head_scores(
    logits: NDArray[np.float64],
    columns: NDArray[np.int64],
    sims: NDArray[np.floating],
    alpha: float,
    n_routes: int,
    lexical: NDArray[np.floating] | None = None,
    beta: float = 0.0,
) -> tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """The head's choice among each query's ranked routes (see :class:`LinearHead`).

    Args:
        logits: ``(m, columns)`` linear logits; the first ``n_routes`` columns are routes.
        columns: ``(m, K)`` column of each ranked route, best first.
        sims: ``(m, K)`` their similarity scores.
        alpha: weight of the similarity in a route's logit.
        n_routes: number of route columns (a last extra column is out of scope).
        lexical: ``(m, K)`` lexical scores of the ranked routes, or ``None``.
        beta: weight of the lexical score in a route's logit.

    Returns:
        The chosen position in ``0..K-1``, its probability, the ``(m, K)``
        probabilities of the ranked routes, and the energy (log-sum-exp of the route
        logits) of each query.
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
    if lexical is not None and beta:
        # Unranked routes get no lexical term: the same rule at fit and query time.
        z[rows, columns] += beta * np.asarray(lexical, dtype=np.float64)
    top = z.max(axis=1, keepdims=True)
    z -= top
    probs = np.exp(z)
    energy = np.log(probs[:, :n_routes].sum(axis=1)) + top[:, 0]
    probs /= probs.sum(axis=1, keepdims=True)
    ranked = probs[rows, columns]
    choice = ranked.argmax(axis=1)
    return choice, ranked[np.arange(m), choice], ranked, energy


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

    def __post_init__(self) -> None:
        # Wherever a policy is made (the router, set_policy, fit, a stored state): numbers
        # only, kept as Python floats (stores write JSON). Ranges are the router's to
        # check: a fitted cut may lie just past a score's bounds, meaning "none pass".
        for name in ("threshold", "min_margin"):
            value = getattr(self, name)
            if not is_number(value) or math.isnan(value):
                msg = f"{name} must be a number, got {value!r}"
                raise InvalidInputError(msg)
            object.__setattr__(self, name, float(value))
        if not isinstance(self.thresholds, Mapping):
            msg = f"thresholds must map route names to numbers, got {self.thresholds!r}"
            raise InvalidInputError(msg)
        keys = [k for k in self.thresholds if not isinstance(k, str)]
        if keys:  # a store writes JSON: an int key came back a str, a tuple failed
            msg = f"thresholds must map route names (str) to numbers, got the key {keys[0]!r}"
            raise InvalidInputError(msg)
        bad = {k: v for k, v in self.thresholds.items() if not is_number(v) or math.isnan(v)}
        if bad:
            msg = f"thresholds must map route names to numbers, got {bad!r}"
            raise InvalidInputError(msg)
        object.__setattr__(self, "thresholds", {k: float(v) for k, v in self.thresholds.items()})

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
    def from_state(
        cls, state: Mapping[str, Any], default: DecisionPolicy, *, lenient: bool = False
    ) -> DecisionPolicy:
        """The policy described by :meth:`to_state`; missing keys come from ``default``.

        The stored values are checked as any policy's are (no conversion first), unless
        ``lenient``: then thresholds and the margin are read with ``float()``, as 0.2 read
        them (its ``set_policy`` stored a bool or a numeric string).

        Raises:
            InvalidInputError: a threshold or margin is a bool, not a number, or NaN
                (with ``lenient``: one ``float()`` cannot read), or ``thresholds`` is not
                a mapping.
        """
        calibrator = state.get("calibrator")
        head = state.get("head")
        thresholds = state.get("thresholds", {})
        if not isinstance(thresholds, Mapping):
            msg = f"thresholds must map route names to numbers, got {thresholds!r}"
            raise InvalidInputError(msg)
        threshold = state.get("threshold", default.threshold)
        min_margin = state.get("min_margin", default.min_margin)
        if lenient:
            try:
                threshold, min_margin = float(threshold), float(min_margin)
                thresholds = {k: float(v) for k, v in thresholds.items()}
            except (TypeError, ValueError) as exc:
                msg = f"the stored decision policy cannot be read: {exc}"
                raise InvalidInputError(msg) from exc
        return cls(
            threshold=threshold,
            min_margin=min_margin,
            thresholds=dict(thresholds),
            calibrator=Calibrator.from_state(calibrator) if calibrator else None,
            head=LinearHead.from_state(head) if head else None,
            info=dict(state.get("info", {})),
        )


def policy_for_routes(
    policy: DecisionPolicy, names: Sequence[str], scored: Sequence[str] | None = None
) -> tuple[DecisionPolicy, list[str]]:
    """Keep a fitted policy consistent with the router's current route names.

    Fitted thresholds of routes that are gone are dropped; the other routes keep
    theirs. A head is dropped when a route it does not know can be scored (``scored``:
    the routes with utterances, all of ``names`` if not given) or a route it knows is
    gone, because its classes no longer match (a refit trains a new one). A route
    without utterances is no class of a fit, and one emptied since scores nothing: the
    head keeps working around either.

    Returns:
        The policy (the same object if nothing changed) and notes on what changed.
    """
    present = set(names)
    notes: list[str] = []
    thresholds = {k: v for k, v in policy.thresholds.items() if k in present}
    head = policy.head
    if head is not None:
        known = set(head.classes)
        added = sorted(set(names if scored is None else scored) - known)
        removed = sorted(known - present)
        if added or removed:
            notes.append(
                "the fitted head was dropped because the routes changed "
                f"(added {added[:5]}, removed {removed[:5]}); the fitted thresholds of the "
                "other routes still apply; call fit() again to train a new head"
            )
            head = None
    if head is policy.head and len(thresholds) == len(policy.thresholds):
        return policy, notes
    if head is None and policy.head is not None:
        policy = without_head(policy)
    return replace(policy, thresholds=thresholds), notes


def without_head(policy: DecisionPolicy) -> DecisionPolicy:
    """``policy`` without its head, its ``info`` saying what decides now (as a fit
    that kept no head would say)."""
    info = dict(policy.info)
    if info.get("decision") == "head":
        info.update(decision="thresholds", features="dense", scorer="similarity")
    return replace(policy, head=None, info=info)


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
    *,
    text: str | None = None,
    lexical: LexicalView | None = None,
    negatives: bool = True,
) -> RouteMatch:
    """Choose a route (or none) from one query's ranked route scores.

    If the best-ranked route is the negative examples' route
    (:data:`~synaptoroute.models.NEGATIVES_ROUTE`), the answer is no route (reason
    ``negative_example``); otherwise that route is ignored. With a fitted head (and
    the query's ``vector``) the head decides among the ranked routes (reading the
    n-gram features of ``text`` when it has them, and its lexical scores from
    ``lexical`` when it uses them; ``text=None`` leaves both out); otherwise the best
    route must reach its threshold (and the margin). ``vector`` is ``None`` in
    :meth:`~AdaptiveRouter.query_top_k`, which judges each route by its threshold.
    ``negatives=False``: ``scores`` hold no negative examples (the caller left them
    out), so judging each of k positions costs O(k), not O(k^2).
    """
    if len(scores.route_ids) == 0:
        return empty_match("no_routes")
    # O(k) in the ranked routes, never O(routes): this runs for every query.
    at = _negative_at(scores, snapshot) if negatives else None
    if at is not None:
        row = int(scores.nearest_rows[at])
        return RouteMatch(
            name=None,
            score=float(scores.scores[at]),
            reason="negative_example",
            nearest_utterance=snapshot.texts[row] if row >= 0 else None,
        )
    if negatives:
        scores = without_negatives(scores, snapshot)
        if len(scores.route_ids) == 0:
            return empty_match("no_routes")
    head = policy.head
    if head is not None and vector is not None:
        k = min(head.top_k, len(scores.route_ids))
        names = [snapshot.names[int(r)] for r in scores.route_ids[:k]]
        columns = head.columns_of(names)
        # Routes the head never saw (changed by another replica) fall back to thresholds.
        if columns is not None:
            lex = None
            if head.beta and lexical is not None and text is not None:
                positions = np.searchsorted(snapshot.live_routes, scores.route_ids[:k])
                lex = lexical.route_scores(text, positions)
            knn = None
            if head.needs_knn:
                found = scores.knn  # from the scan that ranked the routes, if it saw every row
                knn = np.array([knn_similarity(snapshot, vector) if found is None else found])
            return _decide_by_head(
                head, scores, snapshot, names, columns, vector, lex, knn, text, route_thresholds
            )
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
    names: list[str],
    columns: NDArray[np.int64],
    vector: NDArray[np.float32],
    lexical: NDArray[np.float64] | None,
    knn: NDArray[np.float64] | None,
    text: str | None,
    route_thresholds: Mapping[str, float | None],
) -> RouteMatch:
    k = len(names)
    sims = scores.scores[:k]
    lex = None if lexical is None else lexical[None, :]
    texts = None if text is None else [text]
    verdict = head.judge(vector[None, :], columns[None, :], sims[None, :], lex, knn, texts)
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
    reason: MatchReason = "matched" if accepted else "rejected_by_head"
    threshold = head.cut
    own = route_thresholds.get(name)
    if accepted and own is not None and sims[pos] < own:
        # A route's own threshold comes first, whoever decides (the head's
        # probabilities do not know it was set).
        reason, threshold = "below_threshold", own
    return RouteMatch(
        name=name if reason == "matched" else None,
        score=float(sims[pos]),
        candidate=name,
        threshold=threshold,
        runner_up=runner_up,
        runner_up_score=runner_score,
        reason=reason,
        confidence=float(verdict.confidence[0]),
        nearest_utterance=snapshot.texts[row] if row >= 0 else None,
    )


#: Scores this close are one text to the model (the last bits of a product depend on
#: where its row sits): a negative example this close to the best route's score wins.
NEGATIVE_TIE = 1e-6


def negative_first(scores: RouteScores, snapshot: Snapshot) -> bool:
    """Whether the negative examples' route ranks first in ``scores``, alone or tied
    with routes (:func:`decide` then answers ``negative_example``)."""
    return _negative_at(scores, snapshot) is not None


def _negative_at(scores: RouteScores, snapshot: Snapshot) -> int | None:
    """The negative examples' place in ``scores`` if they score as high as the best
    route: a tie (a negative example that is also a route's utterance) goes to them,
    as the fit counts it, not to whichever was added first."""
    ids, values = scores.route_ids, scores.scores
    for i in range(len(ids)):
        if values[i] < values[0] - NEGATIVE_TIE:
            return None
        if snapshot.names[int(ids[i])] == NEGATIVES_ROUTE:
            return i
    return None


def without_negatives(scores: RouteScores, snapshot: Snapshot) -> RouteScores:
    """``scores`` without the negative examples' route (if it is among them)."""
    names = snapshot.names
    keep = [names[r] != NEGATIVES_ROUTE for r in scores.route_ids.tolist()]
    if all(keep):
        return scores
    mask = np.array(keep, dtype=bool)
    return RouteScores(
        scores.route_ids[mask], scores.scores[mask], scores.nearest_rows[mask], scores.knn
    )


def knn_similarity(snapshot: Snapshot, vector: NDArray[np.float32], k: int = KNN_K) -> float:
    """Similarity of the k-th nearest live utterance to ``vector`` (Sun et al. 2022).

    This scans every utterance row, so only the ``knn`` and ``combined`` scorers
    pay for it, and only when the scan that ranked the routes did not give it
    (:attr:`~synaptoroute.index.RouteScores.knn`: an uncertified graph answer,
    ``centroid``).
    """
    query = np.asarray(vector, dtype=np.float32)[None, :]
    return float(snapshot.knn_similarity(query, k)[0])
