"""Running a check in a forked child process, for the tests of fork safety (the
helpers live in :mod:`synaptoroute.testing`, which the integrations' tests use too)."""

from __future__ import annotations

import os

import pytest

from synaptoroute.testing import hold_until_the_fork, wait_for_the_fork
from synaptoroute.testing import in_forked_child as in_child

__all__ = ["hold_until_the_fork", "in_child", "needs_fork", "wait_for_the_fork"]

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
