"""The head's optimiser: L-BFGS for smooth, strictly convex losses with millions of
float32 weights (a hybrid head's n-gram columns)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

__all__ = ["lbfgs"]

#: L-BFGS stops when a step lowers the loss by less than this share of it (SciPy's
#: L-BFGS-B default, ``factr=1e7`` times the float64 epsilon).
_FTOL = 1e7 * float(np.finfo(np.float64).eps)


def lbfgs(
    fun: Callable[[NDArray[np.float32]], tuple[float, NDArray[np.float32]]],
    x0: NDArray[np.float32],
    max_iter: int,
    gtol: float,
    pairs: int = 5,
) -> NDArray[np.float32]:
    """Minimise a smooth, strictly convex ``fun`` (its value and gradient) by L-BFGS.

    Float32 vectors, ``pairs`` correction pairs, the two-loop recursion and a
    backtracking (Armijo) line search that tries the full step first. Stops when the
    largest gradient entry is at most ``gtol`` (SciPy's ``pgtol`` test), when a step
    no longer lowers the value, or after ``max_iter`` iterations. Why not SciPy's
    L-BFGS-B: its bookkeeping for bounds this problem does not have cost more than the
    loss itself with n-gram features (millions of weights), about 80 ms a call.
    """
    xk: NDArray[np.float32] = x0.copy()
    f, g = fun(xk)
    # Newest last. Each vector is millions of floats for a hybrid head, so every step
    # below writes into buffers held for the whole run instead of new arrays.
    history: list[tuple[NDArray[np.float32], NDArray[np.float32], float]] = []
    spare = (np.empty_like(xk), np.empty_like(xk))
    q, tmp, x_new = np.empty_like(xk), np.empty_like(xk), np.empty_like(xk)
    alpha = [0.0] * pairs
    for _ in range(max_iter):
        if max(float(g.max()), -float(g.min())) <= gtol:
            break
        np.copyto(q, g)
        for j in range(len(history) - 1, -1, -1):
            s, y, rho = history[j]
            alpha[j] = rho * float(s @ q)
            np.multiply(y, np.float32(alpha[j]), out=tmp)
            q -= tmp
        if history:
            _, y, rho = history[-1]
            q *= np.float32(1.0 / (rho * float(y @ y)))
        for j, (s, y, rho) in enumerate(history):
            np.multiply(s, np.float32(alpha[j] - rho * float(y @ q)), out=tmp)
            q += tmp
        slope = -float(g @ q)  # along the direction -q
        if slope >= 0:  # not a descent direction (rounding): restart from the gradient
            np.copyto(q, g)
            slope = -float(g @ g)
            history.clear()
        step = 1.0 if history else min(1.0, 1.0 / max(float(np.sqrt(-slope)), 1e-12))
        for _ in range(30):
            np.multiply(q, np.float32(-step), out=x_new)
            x_new += xk
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            break  # no step lowers the value any more
        s, y = spare
        np.subtract(x_new, xk, out=s)
        np.subtract(g_new, g, out=y)
        sy = float(s @ y)
        if sy > 1e-12:  # else the pair is dropped and its buffers serve again
            history.append((s, y, 1.0 / sy))
            if len(history) > pairs:
                spare = history.pop(0)[:2]
            else:
                spare = (np.empty_like(xk), np.empty_like(xk))
        converged = f - f_new <= _FTOL * max(abs(f), abs(f_new), 1.0)
        xk, x_new = x_new, xk
        f, g = f_new, g_new
        if converged:
            break
    return xk
