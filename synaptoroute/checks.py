"""Input checks for numbers given by callers: counts, seconds and score thresholds.

The core uses them for every count, timeout and threshold it takes, and so do the
LangChain and LlamaIndex integrations, so a value is accepted or refused the same way
(and with the same kind of message) wherever it is given: numpy's scalars count as
numbers, a float with no fraction counts as a whole number, and a bool is never a
number (Python counts ``True`` as the int 1). Each check raises
:class:`~synaptoroute.exceptions.InvalidInputError` naming the field.
"""

from __future__ import annotations

import math
import numbers
from typing import TypeGuard

from .exceptions import InvalidInputError
from .models import SCORE_MAX, SCORE_MIN

__all__ = ["check_count", "check_seconds", "check_threshold", "is_number"]


def is_number(value: object) -> TypeGuard[float]:
    """Whether ``value`` is a real number, numpy's scalars included; a bool is not one
    (Python counts ``True`` as the int 1, but it is no threshold, timeout or margin)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_count(value: object, field: str, minimum: int) -> int:
    """``value`` as an int if it is a whole number (an int, numpy's included, or a
    float such as ``1e5`` with no fraction; not a bool) of at least ``minimum``; else
    :class:`~synaptoroute.exceptions.InvalidInputError` naming ``field``."""
    count: int | None = None
    if (isinstance(value, numbers.Integral) and not isinstance(value, bool)) or (
        is_number(value) and math.isfinite(value) and float(value).is_integer()
    ):
        count = int(value)
    if count is None or count < minimum:
        msg = f"{field} must be at least {minimum} (a whole number), got {value!r}"
        raise InvalidInputError(msg)
    return count


def check_seconds(value: object, field: str, *, zero: bool = False) -> float:
    """``value`` as a float if it is a finite number of seconds, above 0 (or at least 0
    with ``zero``); else :class:`~synaptoroute.exceptions.InvalidInputError` naming
    ``field``."""
    if not is_number(value) or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        msg = f"{field} must be a finite number of seconds {bound}, got {value!r}"
        raise InvalidInputError(msg)
    return float(value)


def check_threshold(
    value: object, field: str, *, low: float = SCORE_MIN, high: float = SCORE_MAX
) -> float:
    """``value`` as a Python float if it is a score threshold: a number in ``[low,
    high]`` (by default a cosine similarity's range, [-1, 1]), numpy scalars included,
    not a bool and not NaN; else :class:`~synaptoroute.exceptions.InvalidInputError`
    naming ``field``."""
    if not is_number(value) or not low <= value <= high:
        msg = f"{field} must be a number in [{low}, {high}], got {value!r}"
        raise InvalidInputError(msg)
    return float(value)
