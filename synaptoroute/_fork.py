"""Locks that a fork waits for, so that no child process inherits one held.

A thread that holds a lock when another thread forks does not exist in the child, so
the child's copy of the lock stays held and the next call that takes it waits for
good. :func:`hold_across_fork` registers an object's lock: before a fork the forking
thread takes every registered lock, outer levels first (the order the code itself
takes them in: an integration's, held while it makes or changes a router, then a
router's, its store's, a PostgreSQL store's connection's, an encoder's, a lexical
index's, a route index's, its graph's, an integration's cache of routers, then the
leaves that nothing is taken under), and gives them
back in the parent and in the child once it has forked. A child hook runs first,
under the lock, to drop what belonged to threads that did not come along (a route
index restarts its background builds that way, a PostgreSQL store its follower).

Each registered lock is held for one call (a route change, for as long as it encodes
its new utterances; a store write or read; a model load; an index compile; one graph
search, insert or save; a BLAS count change), so a fork waits for the calls in
flight, never for a thread's whole life. Nothing is registered on platforms without
``os.register_at_fork``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

__all__ = [
    "APP",
    "APP_CACHE",
    "CONNECTION",
    "ENCODER",
    "GRAPH",
    "INDEX",
    "LEAF",
    "LEXICAL",
    "ROUTER",
    "STORE",
    "cached_property",
    "hold_across_fork",
    "keep_for_good",
]

#: Levels, outermost first: a lock of one level is taken in code while those of the
#: levels before it may be held, never the other way round. ``APP`` is an
#: integration's lock held while it makes a router or changes its routes (the
#: LangChain tool selector's, the LlamaIndex selector's build lock); ``APP_CACHE`` an
#: integration's lock around its routers, which reads their ``LEAF``-guarded state
#: (the LlamaIndex selector's cache). ``STORE`` is a store's write lock,
#: ``CONNECTION`` a PostgreSQL store's connection lock (taken inside its write lock).
#: ``LEAF`` locks (the BLAS budget's, a graph's read gate, the embedding cache's) are
#: held around a few statements that take no other lock.
APP, ROUTER, STORE, CONNECTION, ENCODER, LEXICAL, INDEX, GRAPH, APP_CACHE, LEAF = range(10)
_LEVELS = (APP, ROUTER, STORE, CONNECTION, ENCODER, LEXICAL, INDEX, GRAPH, APP_CACHE, LEAF)

_log = logging.getLogger("synaptoroute.fork")

_HELD: dict[int, weakref.WeakKeyDictionary[Any, tuple[str, str | None]]] = {
    level: weakref.WeakKeyDictionary() for level in _LEVELS
}
# Guards _HELD: a registration (any thread that makes a router, an encoder, a cache)
# and the fork's copy of it. Iterating a WeakKeyDictionary runs Python code, so another
# thread's registration could change its size under the fork, which then lost the
# locks it had not reached yet (a hook's exception only gets logged, the fork goes on).
# Held only around the dict itself: never while a registered lock is taken, so a thread
# that registers while it holds one of them cannot deadlock with a fork.
_REGISTRY = threading.Lock()
# The locks the fork has taken, with their child hooks; None outside a fork (a list,
# possibly empty, from the fork's first step on, before it waits for any lock).
_FORKING: list[tuple[Any, Callable[[], None] | None]] | None = None


def hold_across_fork(
    owner: object, level: int, lock: str = "_lock", in_child: str | None = None
) -> None:
    """Make a fork wait for ``owner``'s lock (the attribute ``lock``) at ``level``
    (one lock per owner and level).

    ``in_child`` names a method of ``owner`` that the child calls, holding the lock,
    before giving it back (a name, not a bound method, so that ``owner`` stays held
    weakly: a collected owner is forgotten). ``TypeError`` when ``lock`` names no lock
    or ``in_child`` no method: checked here, as the fork itself could only fail in its
    hooks, in every process.
    """
    held = getattr(owner, lock, None)
    if not (callable(getattr(held, "acquire", None)) and callable(getattr(held, "release", None))):
        msg = f"{type(owner).__name__}.{lock} is not a lock (no acquire and release)"
        raise TypeError(msg)
    if in_child is not None and not callable(getattr(owner, in_child, None)):
        msg = f"{type(owner).__name__}.{in_child} is not a method"
        raise TypeError(msg)
    with _REGISTRY:
        _HELD[level][owner] = (lock, in_child)


#: What forked children inherited and must never free, whatever becomes of its owner:
#: an onnxruntime session whose thread pool did not come along (destroying it can hang
#: joining those threads, onnxruntime#31961), an SQLite connection whose locks are the
#: parent's. Held by the owner instead, it was freed when a garbage collection in the
#: child took the owner (a router dropped before the fork, not yet collected): the
#: child hung in whatever allocation ran that collection.
_KEPT: list[Any] = []


def keep_for_good(obj: Any) -> None:
    """Hold ``obj`` until the process exits (for what a forked child inherited)."""
    _KEPT.append(obj)


def _end_without_native_teardown() -> None:
    """In a child forked from a process that loaded onnxruntime, skip the teardown
    that hangs there: the C library's exit handlers (onnxruntime's own destroy what
    its threads waited on, and glibc's ``pthread_cond_destroy`` waits for good for
    waiters that did not come along; it aborts at times) and the interpreter's freeing
    of the sessions kept for good. A gunicorn worker of a preloaded app ends with
    ``sys.exit`` and hung until it was killed. glibc's ``on_exit`` hands ``_exit`` the
    status ``exit`` was given, once the interpreter's own finalisation (``atexit``
    handlers, logging, open files) is done, so the status and the program's cleanup
    stay what they are. Nothing is done elsewhere (no ``on_exit``: not glibc, whose
    condition variables are the ones that wait)."""
    if "onnxruntime" not in sys.modules:
        return
    try:
        libc = ctypes.CDLL(None)
        on_exit, end = libc.on_exit, libc._exit
    except (AttributeError, OSError):
        return
    # _exit(int) called as on_exit's void (*)(int, void *): the extra argument is
    # ignored by every C calling convention glibc runs on.
    if on_exit(ctypes.cast(end, ctypes.c_void_p), None) == 0:
        # Never freed, even by the interpreter's finalisation: sessions kept here
        # would be destroyed then, which hangs as above.
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(_KEPT))


def forking() -> bool:
    """Whether a fork has begun taking the registered locks (for tests)."""
    return _FORKING is not None


def _before() -> None:
    global _FORKING
    _FORKING = []
    # A copy, under the registry lock, taken before any registered lock: the owners are
    # then held (strongly) for the fork, and a registration meanwhile waits only for the
    # copy. One made after it is not taken: its owner was made during the fork.
    with _REGISTRY:
        held = [list(_HELD[level].items()) for level in _LEVELS]
    for owners in held:  # outer levels first
        for owner, (name, hook) in owners:
            try:
                lock = getattr(owner, name)
                reset = getattr(owner, hook) if hook else None
                lock.acquire()
            except Exception:
                # Registration checked a lock, but the attribute can be replaced later
                # (a test's spy, user code). A hook's exception ends the hook, and the
                # fork goes on: stopping here left every lock after this one untaken
                # and its child reset unrun, so one odd owner made all of them unsafe.
                _log.exception(
                    "a fork could not take %s.%s; it takes the other locks",
                    type(owner).__name__,
                    name,
                )
                continue
            _FORKING.append((lock, reset))


def _after_in_parent() -> None:
    global _FORKING
    for lock, _ in reversed(_FORKING or ()):
        lock.release()
    _FORKING = None


def _after_in_child() -> None:
    global _FORKING, _REGISTRY
    # Another thread may have been registering when the process forked: that thread is
    # gone, and the child's copy of the lock would stay held (the dict itself is whole:
    # the insertion is one step under the GIL).
    _REGISTRY = threading.Lock()
    try:
        _end_without_native_teardown()
    except Exception:  # the child goes on; only its exit is at stake
        _log.exception("a forked child could not guard its exit")
    for lock, hook in reversed(_FORKING or ()):
        try:
            if hook is not None:
                hook()
        except Exception:  # every lock is still given back; the child goes on as it can
            _log.exception("a forked child could not reset %r", hook)
        finally:
            lock.release()
    _FORKING = None


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(
        before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child
    )


_T = TypeVar("_T")


class cached_property(Generic[_T]):
    """:func:`functools.cached_property` without its lock.

    Before Python 3.12 ``functools.cached_property`` holds one lock per property, for
    every instance of the class, while it computes: a child forked while a thread of
    the parent computed one (a query's first look at a new snapshot's live rows)
    inherited that lock held, and hung at its first use of the property, on any
    snapshot, for good. No registered lock can cover it. The values cached here are
    pure functions of an immutable object, so two threads computing one at once only
    compute it twice; the first one stored is kept.
    """

    def __init__(self, func: Callable[[Any], _T]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> cached_property[_T]: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> _T: ...

    def __get__(
        self, instance: object | None, owner: type | None = None
    ) -> cached_property[_T] | _T:
        if instance is None:
            return self
        # Not a data descriptor: once stored, the instance's own attribute is found
        # first and this is not called again.
        value: _T = instance.__dict__.setdefault(self.name, self.func(instance))
        return value
