"""The one decision function shared by every query path (sync, batch, async).

Given a query's best routes and their scores, :func:`decide` applies thresholds and
the ambiguity margin and returns a :class:`~synaptoroute.models.RouteMatch`. It is
pure: no I/O, no locks, no awaiting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from .index import RouteScores, Snapshot
from .models import RouteMatch

__all__ = ["DecisionPolicy", "decide", "empty_match"]


@dataclass(frozen=True)
class DecisionPolicy:
    """What turns scores into a decision.

    Attributes:
        threshold: the router's default minimum score.
        min_margin: top-1 minus top-2 under this means "no route" (0 disables it).
        thresholds: per-route overrides (a route's own ``threshold`` wins over this).
    """

    threshold: float
    min_margin: float = 0.0
    thresholds: Mapping[str, float] = field(default_factory=dict)


def empty_match(reason: str = "empty_query") -> RouteMatch:
    """The no-match returned without consulting the model."""
    return RouteMatch(name=None, score=0.0, reason=reason)  # type: ignore[arg-type]


def decide(
    scores: RouteScores,
    snapshot: Snapshot,
    policy: DecisionPolicy,
    route_thresholds: Mapping[str, float | None],
    vector: NDArray[np.float32] | None = None,
) -> RouteMatch:
    """Choose a route (or none) from one query's ranked route scores."""
    if len(scores.route_ids) == 0:
        return empty_match("no_routes")
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
    if score < threshold:
        reason = "below_threshold"
    elif (
        policy.min_margin > 0
        and runner_score is not None
        and score - runner_score < policy.min_margin
    ):
        reason = "ambiguous"
    else:
        reason = "matched"
    return RouteMatch(
        name=best if reason == "matched" else None,
        score=score,
        candidate=best,
        threshold=threshold,
        runner_up=runner_up,
        runner_up_score=runner_score,
        reason=reason,  # type: ignore[arg-type]
        nearest_utterance=nearest,
    )
