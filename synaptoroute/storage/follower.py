"""The follower of a PostgreSQL store's change feed: one thread per watched store.

It listens for ``NOTIFY``, reads the change log past the last sequence number it
applied and hands the changes to the router's callback; after a lost connection it
reconnects and catches up. (SQLite's follower polls instead: ``polling``.)
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .changes import Change

if TYPE_CHECKING:
    import psycopg

    from .postgres import PostgresStorage

__all__ = [
    "Following",
    "UnreadableChangeError",
    "Watch",
    "disown",
    "first_line",
    "shut_down",
]

_log = logging.getLogger("synaptoroute.postgres")


class UnreadableChangeError(ValueError):
    """A row of the change log that cannot be turned into a change (written by another
    version, damaged, or made by hand): the follower reads the whole store instead."""


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (a driver's can run to many lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def disown(conn: psycopg.Connection[Any]) -> None:
    """Close a connection inherited across a fork without ending the parent's session.

    Closing, or merely collecting, a libpq connection sends the server a terminate
    message on its socket, which the child shares with the parent: that would end the
    parent's session. The child's descriptor is pointed at ``/dev/null`` first, so the
    message goes nowhere and the socket stays the parent's alone. Where that fails,
    the connection is kept, never closed or collected, for the child's lifetime.
    """
    try:
        fd = conn.fileno()
    except Exception:  # closed or broken: no socket left to share
        return
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)
    except OSError:
        _KEPT.append(conn)
        return
    with contextlib.suppress(Exception):
        conn.close()


def shut_down(conn: psycopg.Connection[Any]) -> None:
    """End a connection's socket under a call blocked on it in another thread.

    For a server that stalls (its process paused, its disk hung) while its host still
    acknowledges the packets: no keepalive or TCP timeout notices that, and the call
    waits for an answer for good. Shutting the socket down wakes it with an error, and
    that thread then closes the connection itself: closing it here, under a call that
    uses it, would free what the call still reads.
    """
    try:
        fd = conn.fileno()
        sock = socket.socket(fileno=os.dup(fd))
    except Exception:  # closed or broken already: nothing blocks on it
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()  # the duplicate only; the connection keeps its descriptor


#: Inherited connections a forked child could not disown (see :func:`disown`).
_KEPT: list[Any] = []


def _needs_read(note: psycopg.Notify, applied: int, own: int | None) -> bool:
    """Whether a notification calls for a read of the log: all do but those of this
    store's own writes at or before the position applied.

    Any client that may connect can notify on the channel, with any payload. One that
    is not a plain non-negative integer (a store's writes send the ``seq``) is read as
    "read the log": it must not raise, since the follower would take that for a lost
    connection and reconnect, once per such notification.
    """
    if note.pid != own:
        return True
    try:
        return int(note.payload) > applied
    except ValueError:  # not a number, or more digits than int() accepts
        return True


class Following:
    """What every follower has: the callback it hands changes to, the lock held
    meanwhile, and the event that stops it.

    With ``weak``, a bound-method callback (a router's) is held weakly, so that a
    router dropped without ``close()`` is collected; the event is then set and its
    follower ends (a strong reference from the follower's thread kept both alive for
    good).
    """

    def __init__(
        self, callback: Callable[[Sequence[Change]], None], lock: threading.RLock, weak: bool
    ) -> None:
        self.lock = lock
        self.weak = weak
        self._stop = threading.Event()
        self._callback: Callable[[], Callable[[Sequence[Change]], None] | None]
        if weak and inspect.ismethod(callback):
            weakref.finalize(callback.__self__, self._stop.set)
            self._callback = weakref.WeakMethod(callback)
        else:
            self._callback = lambda: callback

    @property
    def callback(self) -> Callable[[Sequence[Change]], None] | None:
        """What changes are handed to; ``None`` once stopped, or once the router it
        belonged to is gone."""
        return None if self._stop.is_set() else self._callback()


class Watch(Following):
    """A running follower of a store's change feed; :meth:`stop` ends it."""

    def __init__(
        self,
        storage: PostgresStorage,
        callback: Callable[[Sequence[Change]], None],
        lock: threading.RLock,
        *,
        weak: bool = False,
    ) -> None:
        # weak: once the router is collected its follower ends and closes its session.
        super().__init__(callback, lock, weak)
        self._storage = storage
        self._conn: psycopg.Connection[Any] | None = None  # the listening session
        self._connected = threading.Event()
        self.reconnects = 0
        self.backend_pid: int | None = None  # the listening session, for pg_stat_activity
        self._thread = threading.Thread(
            target=self._run, name="synaptoroute-pg-follower", daemon=True
        )
        self._thread.start()

    @property
    def connected(self) -> bool:
        """Whether the follower currently listens on a live connection."""
        return self._connected.is_set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop following; the thread exits within about ``timeout`` seconds."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            conn = self._conn
            if self._thread.is_alive() and conn is not None:
                # Blocked on a stalled server: wake it, so that it ends and closes its session.
                shut_down(conn)

    def disown(self) -> None:
        """In a forked child: let go of the parent's listening session without ending
        it (the thread that used it did not come along)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            disown(conn)

    # -- the follower thread ---------------------------------------------------------
    def _run(self) -> None:
        store = self._storage
        delay = 0.05
        down_since: float | None = None
        while not self._stop.is_set():
            conn = None
            try:
                conn = self._conn = store._connect()
                if self._stop.is_set():
                    # Stopped while connecting (a slow server): stop() may have returned
                    # already, and close() with it; the session is closed below.
                    break
                self.backend_pid = conn.info.backend_pid
                conn.execute(f'LISTEN "{store._channel}"')
                if down_since is not None:
                    # Counted before the catch-up: whoever sees its changes applied
                    # (wait_for_seq) also sees the reconnection that brought them.
                    self.reconnects += 1
                # LISTEN first, then read the log: a change committed in between is
                # both notified and read, never neither.
                self._catch_up(conn)
                self._connected.set()
                if down_since is not None:
                    _log.warning(
                        "reconnected to PostgreSQL %s after %.1f s; caught up to seq %d",
                        store._target,
                        time.monotonic() - down_since,
                        store.applied_seq,
                    )
                    down_since = None
                delay = 0.05
                self._listen(conn)
            except Exception as exc:  # the follower must outlive any outage
                self._connected.clear()
                if down_since is None:
                    down_since = time.monotonic()
                    _log.warning(
                        "lost the change feed of PostgreSQL %s (%s); routing goes on with "
                        "the last known routes while reconnecting",
                        store._target,
                        first_line(exc),
                    )
                self._stop.wait(delay)
                delay = min(delay * 2, 2.0)
            finally:
                self._conn = None
                if conn is not None:
                    conn.close()
        self._connected.clear()

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        store = self._storage
        last_poll = time.monotonic()
        while not self._stop.is_set():
            notes = list(conn.notifies(timeout=0.2, stop_after=1))
            if notes:  # the rest of a burst too: one read of the log for all of them
                notes += conn.notifies(timeout=0)
            applied = store._applied_or_zero()
            own = store._own_pid
            # A change at or before the position applied leads to a read too, unless
            # this replica's own connection wrote it: after a restore from a backup the
            # other replicas' changes come with such numbers, and only the read notices
            # that the log went back.
            notified = any(_needs_read(n, applied, own) for n in notes)
            now = time.monotonic()
            # Polling the log by index is the safety net; notifications carry the latency.
            poll = now - last_poll >= store.poll_interval
            if notified or poll or store._pending is not None:
                self._catch_up(conn)
                last_poll = now

    def _catch_up(self, conn: psycopg.Connection[Any]) -> None:
        store = self._storage
        while not self._stop.is_set():
            since = store._applied_or_zero()
            rows = store._read_log(conn, since)
            changes: list[Change] = []
            reloaded = False
            if not rows and since > 0 and store._newest(conn) < since:
                # The log ends before the position applied here: the store was restored
                # from a backup (or dropped and made anew). Reading on past ``since``
                # would skip the changes now numbered up to it and apply later ones on
                # top of routes the store no longer holds.
                snap = store._snapshot(conn)
                if self._rewind(snap, since):
                    _log.warning(
                        "the change log of PostgreSQL %s went back from seq %d to %d (was "
                        "the store restored from a backup?); reloaded everything",
                        store._target,
                        since,
                        snap.seq,
                    )
                continue
            if rows and rows[0][0] > since + 1 and since < store._pruned_through(conn):
                # The log no longer holds what this replica missed: take the whole store.
                changes.append(store._snapshot(conn))
                reloaded = True
            else:
                for row in rows:
                    if row[2] == "reload":
                        # Another replica replaced everything: read it from the tables.
                        changes.append(store._snapshot(conn))
                        reloaded = True
                        break
                    try:
                        changes.append(store._row_to_change(row))
                    except UnreadableChangeError as exc:
                        # Not a lost connection: reading the row again would fail again
                        # and stall the follower. The tables hold its effect: read them.
                        snap = store._snapshot(conn)
                        _log.error(
                            "PostgreSQL %s: %s; reading the whole store from its tables instead",
                            store._target,
                            exc,
                        )
                        changes.append(snap)
                        reloaded = True
                        break
            self._deliver(changes)
            if not reloaded and len(rows) < store.batch_size:
                return

    def _rewind(self, snap: Change, since: int) -> bool:
        """Apply ``snap``, the whole store at a position before ``since``, and move the
        position back to it; ``False`` if a write here moved the position meanwhile
        (it handled the same rewind itself, or the next read decides again)."""
        store = self._storage
        with self.lock:
            if store._applied_or_zero() != since:
                return False
            store._pending = None  # the snapshot holds everything a pending reset would
            callback = self.callback
            if callback is None:  # its router is gone: this follower is ending
                return False
            try:
                callback([snap])
            except Exception:
                _log.exception("applying the reload at seq %d failed", snap.seq)
            store._rewind(snap.seq)
            return True

    def _deliver(self, changes: Sequence[Change]) -> None:
        store = self._storage
        with self.lock:
            batch: list[Change] = []
            pending, store._pending = store._pending, None
            if pending is not None:
                batch.append(pending)
            applied = store._applied_or_zero()
            batch.extend(c for c in changes if c.seq > applied)
            callback = self.callback
            if not batch or callback is None:
                return
            try:
                callback(batch)
            except Exception:
                _log.exception("applying changes up to seq %d failed", batch[-1].seq)
            store._advance(max(c.seq for c in batch))
