"""Fitting a router's decision policy on labelled texts.

:meth:`AdaptiveRouter.fit` (:func:`fit_policy` on the router's :class:`FitInputs`, under
its lock; :func:`fit_router` for 0.2.0 callers) encodes the labelled texts once
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

The code is split by stage: :mod:`.scores`, :mod:`.cuts`, :mod:`.calibration`,
:mod:`.head`, :mod:`.report` and :mod:`.fit`.
"""

from __future__ import annotations

from ..datasets import routes_from_labelled
from .cuts import Objective
from .fit import FitInputs, fit_policy, fit_router
from .report import FitReport

__all__ = [
    "FitInputs",
    "FitReport",
    "Objective",
    "fit_policy",
    "fit_router",
    "routes_from_labelled",
]
