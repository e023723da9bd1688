"""Ranking the routes' scores of the labelled rows (the scores come from the index)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def _rank(scores: NDArray[np.float32], k: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """The ``k`` best routes of each row, best first (ties: the lower position)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order.astype(np.int64), np.take_along_axis(scores, order, axis=1)
