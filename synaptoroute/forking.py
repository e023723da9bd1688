"""Fork safety for code that takes its own lock around a router.

A worker process forked (gunicorn's pre-fork model, ``multiprocessing`` with the
``fork`` start method) while another thread holds a lock inherits that lock held,
with no thread to release it: the child's first call that takes it waits for good.
synaptoroute makes a fork wait for its own locks (docs/deployment.md, "Forked worker
processes"). An application or integration that holds a lock of its own while it
makes a router, changes its routes or queries it registers that lock here, so the
fork waits for it too, in the right order.

Levels: :data:`APP` for a lock held while calling into routers (taken before any of
synaptoroute's); :data:`APP_CACHE` for a lock around a collection of routers that is
taken while :data:`APP` may be held but never around a router call (it is taken after
synaptoroute's own locks, before the innermost ones). The LangChain and LlamaIndex
integrations register theirs this way.
"""

from __future__ import annotations

from . import _fork

__all__ = ["APP", "APP_CACHE", "hold_across_fork"]

#: A lock held while the code makes, changes or queries a router.
APP = _fork.APP
#: A lock around a cache of routers, taken under :data:`APP` but around no router call.
APP_CACHE = _fork.APP_CACHE


def hold_across_fork(
    owner: object, level: int = APP, lock: str = "_lock", in_child: str | None = None
) -> None:
    """Make every fork wait for ``owner``'s lock (its attribute named ``lock``) and
    give it back in the parent and the child; one lock per owner and level.

    ``in_child`` names a method of ``owner`` the child calls while it holds the lock,
    before giving it back (to drop what belonged to threads that did not come along).
    ``owner`` is held weakly: once collected, it is forgotten. On platforms without
    ``os.register_at_fork`` nothing happens. An attribute replaced later by something
    a fork cannot take is logged (logger ``synaptoroute.fork``) and skipped, the other
    locks still taken. ``ValueError`` for a level other than
    :data:`APP` and :data:`APP_CACHE` (the others are synaptoroute's own);
    ``TypeError`` when ``lock`` names no lock or ``in_child`` no method.
    """
    if level not in (APP, APP_CACHE):
        msg = f"level must be forking.APP or forking.APP_CACHE, got {level!r}"
        raise ValueError(msg)
    _fork.hold_across_fork(owner, level, lock, in_child)  # checks the lock and the method
