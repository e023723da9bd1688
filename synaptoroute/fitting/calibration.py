"""The head's probability calibrated into a confidence (isotonic or Platt)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ..decision import (
    Calibrator,
    logit,
)


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


def _newton_logistic(
    design: NDArray[np.float64],
    target: NDArray[np.float64],
    ridge: NDArray[np.float64],
    init: NDArray[np.float64],
    weight: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """Logistic regression by Newton's method: the weights minimising the summed
    log-loss of ``design @ w`` against ``target`` (probabilities), each row's loss
    times its ``weight`` (default 1), plus ``w' ridge w / 2``.
    """
    w = init.astype(np.float64)
    rw = np.ones(len(design)) if weight is None else weight
    for _ in range(100):
        p = 1 / (1 + np.exp(-np.clip(design @ w, -35, 35)))
        grad = design.T @ (rw * (p - target)) + ridge @ w
        hess = (design * (rw * p * (1 - p) + 1e-12)[:, None]).T @ design + ridge
        step = np.linalg.solve(hess + 1e-9 * np.eye(len(w)), grad)
        w -= step
        if float(np.abs(step).max()) < 1e-10:
            break
    return w


def _platt(x: NDArray[np.float64], y: NDArray[np.float64], logit_input: bool) -> Calibrator:
    """Platt scaling with Platt's smoothed targets."""
    if logit_input:
        x = logit(x)
    # Newton's method on standardised inputs (scores such as Mahalanobis distances
    # span hundreds); the result is mapped back to the raw scale at the end.
    mu, sd = float(x.mean()), float(x.std()) or 1.0
    design = np.c_[(x - mu) / sd, np.ones(len(x))]
    n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
    target = np.where(y > 0, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    a, b = _newton_logistic(design, target, np.zeros((2, 2)), np.array([1.0, 0.0]))
    return Calibrator("platt", (float(a / sd), float(b - a * mu / sd)), (), logit_input)


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
