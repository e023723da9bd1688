"""Locks that a fork waits for, so that no child process inherits one held.

A thread that holds a lock when another thread forks does not exist in the child, so
the child's copy of the lock stays held and the next call that takes it waits for
good. :func:`hold_across_fork` registers an object's lock: before a fork the forking
thread takes every registered lock, outer levels first (the order the code itself
takes them in: a router's, then its index's, then the BLAS budget's), and gives them
back in the parent and in the child once it has forked. A child hook runs first,
under the lock, to drop what belonged to threads that did not come along.

The locks registered are held only briefly (a route change while it encodes, an
index compile, a BLAS count change), so a fork waits at most for the one call in
flight. Nothing is registered on platforms without ``os.register_at_fork``.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["BUDGET", "INDEX", "ROUTER", "hold_across_fork"]

#: Levels, outermost first: a lock of one level is taken in code while those of the
#: levels before it may be held, never the other way round.
ROUTER, INDEX, BUDGET = 0, 1, 2

_Lock = Any  # threading.Lock or threading.RLock: both acquire() and release()
_HELD: dict[int, weakref.WeakKeyDictionary[Any, tuple[str, str | None]]] = {
    level: weakref.WeakKeyDictionary() for level in (ROUTER, INDEX, BUDGET)
}
_FORKING: list[tuple[_Lock, Callable[[], None] | None]] = []  # taken by the fork
_STATE = {"forking": False}


def hold_across_fork(
    owner: object, level: int, lock: str = "_lock", in_child: str | None = None
) -> None:
    """Make a fork wait for ``owner``'s lock (the attribute ``lock``) at ``level``.

    ``in_child`` names a method of ``owner`` that the child calls, holding the lock,
    before giving it back. ``owner`` is held weakly: a collected owner is forgotten.
    """
    _HELD[level][owner] = (lock, in_child)


def forking() -> bool:
    """Whether a fork has begun taking the registered locks (for tests)."""
    return _STATE["forking"]


def _before() -> None:
    _FORKING.clear()
    _STATE["forking"] = True
    for level in (ROUTER, INDEX, BUDGET):
        for owner, (name, hook) in list(_HELD[level].items()):
            lock = getattr(owner, name)
            lock.acquire()
            _FORKING.append((lock, getattr(owner, hook) if hook else None))


def _after_in_parent() -> None:
    for lock, _ in reversed(_FORKING):
        lock.release()
    _FORKING.clear()
    _STATE["forking"] = False


def _after_in_child() -> None:
    for lock, hook in reversed(_FORKING):
        try:
            if hook is not None:
                hook()
        finally:
            lock.release()
    _FORKING.clear()
    _STATE["forking"] = False


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(
        before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child
    )
