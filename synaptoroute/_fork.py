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

import atexit
import contextlib
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, NoReturn

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


def keep_for_good(obj: Any, *, native_threads: bool = False) -> None:
    """Hold ``obj`` until the process exits (for what a forked child inherited).

    ``native_threads``: ``obj`` holds an onnxruntime session made before the fork.
    The interpreter's teardown frees it, and onnxruntime's own exit handlers destroy
    what its pool's threads waited on, which hangs for good in a child where those
    threads do not exist (or aborts): such a child ends without that teardown
    (:func:`_end_without_teardown`).
    """
    _KEPT.append(obj)
    if native_threads:
        _end_without_teardown()


# This process's exit status, as far as the child's guard can tell: sys.exit's in the
# main thread, or 1 for an exception the main thread did not catch.
_STATUS: dict[str, int] = {}


def _end_without_teardown() -> None:
    """Once per process: after the ``atexit`` handlers (the program's, run by this one,
    registered last, in their usual order), flush logging and the standard streams and
    end with :func:`os._exit`, so neither the interpreter's teardown nor the C
    library's exit handlers run. The exit status is the one ``sys.exit`` gave in the
    main thread (``raise SystemExit(n)`` itself is not seen: 0), or 1 after an
    uncaught exception. A gunicorn worker forked from a preloaded app ends with
    ``sys.exit``: it hung until its graceful timeout, then was killed."""
    if _STATUS.get("pid") == os.getpid():
        return
    _STATUS.update(pid=os.getpid(), status=0)
    plain_exit, plain_hook = sys.exit, sys.excepthook

    def recording_exit(status: Any = None) -> NoReturn:
        if threading.current_thread() is threading.main_thread():
            _STATUS["status"] = _status_of(status)
        plain_exit(status)

    def recording_hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        _STATUS["status"] = 1
        plain_hook(kind, value, tb)

    sys.exit = recording_exit
    sys.excepthook = recording_hook
    atexit.register(_end_now)


def _status_of(status: object) -> int:
    if status is None:
        return 0
    if isinstance(status, int):
        return status & 0xFF
    return 1  # Python prints any other value and exits with 1


def _end_now() -> None:
    atexit.unregister(_end_now)
    run_the_others = getattr(atexit, "_run_exitfuncs", None)
    if run_the_others is not None:
        run_the_others()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(_STATUS.get("status", 0))


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
            lock = getattr(owner, name)
            lock.acquire()
            _FORKING.append((lock, getattr(owner, hook) if hook else None))


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
