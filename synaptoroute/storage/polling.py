"""The follower of a store without a change log (SQLite): one polling thread.

It calls the store's ``poll`` every ``interval`` seconds; the store asks SQLite
whether another connection committed and hands over what differs
(:meth:`SQLiteStorage.poll <synaptoroute.storage.sqlite.SQLiteStorage.poll>`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from .changes import Change
from .follower import Following, first_line

__all__ = ["PollingWatch"]

_log = logging.getLogger("synaptoroute.sqlite")


class PollingWatch(Following):
    """A running follower of a store without a log (SQLite); :meth:`stop` ends it.

    Every ``interval`` seconds it calls ``poll``, which reads what other connections
    committed and hands it to the callback. With ``interval=None`` no thread runs:
    the owner's ``poll()`` is called by hand.
    """

    def __init__(
        self,
        poll: Callable[[], object],
        callback: Callable[[Sequence[Change]], None],
        lock: threading.RLock,
        *,
        interval: float | None,
        weak: bool = False,
    ) -> None:
        super().__init__(callback, lock, weak)
        self.interval = interval
        self._poll = poll
        self._thread: threading.Thread | None = None
        if interval is not None:
            self._thread = threading.Thread(
                target=self._run, name="synaptoroute-sqlite-follower", daemon=True
            )
            self._thread.start()

    @property
    def running(self) -> bool:
        """Whether its polling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop following; the thread exits after the poll under way, if any."""
        self._stop.set()
        thread = self._thread
        if thread is not None and threading.current_thread() is not thread:
            thread.join(timeout)

    def _run(self) -> None:
        assert self.interval is not None
        failing = False
        while not self._stop.wait(self.interval):
            try:
                self._poll()
            except Exception as exc:  # the follower must outlive a locked or vanished file
                if self._stop.is_set():
                    return
                if not failing:
                    _log.warning(
                        "could not read other processes' changes (%s); routing goes on "
                        "with the last known routes and tries again every %g s",
                        first_line(exc),
                        self.interval,
                    )
                failing = True
            else:
                if failing:
                    _log.warning("reading other processes' changes again")
                failing = False
