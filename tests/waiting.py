"""One bounded wait for the tests: for an event, never a timing assertion."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

#: A hang bound only: a wait ends as soon as its condition holds.
LIMIT_S = 60.0


def wait_until(condition: Callable[[], object], what: str, limit: float = LIMIT_S) -> None:
    """Wait until ``condition()`` is true; fail the test after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {limit:g} s waiting for {what}")
        time.sleep(0.01)
