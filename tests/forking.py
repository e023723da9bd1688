"""Running a check in a forked child process, for the tests of fork safety."""

from __future__ import annotations

import os
import signal
import threading
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from synaptoroute import _fork


def in_child(check: Callable[[], None]) -> int:
    """Run ``check`` in a forked child; its exit code (0: passed, 1: failed; killed by
    SIGALRM, -14, if it hangs for a minute, instead of hanging the suite)."""
    with warnings.catch_warnings():  # 3.12+ warns that forking a threaded process may hang
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            signal.alarm(60)
            check()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")


def wait_for_the_fork() -> None:
    """Return once a fork has begun taking the registered locks (or after a minute)."""
    pause = threading.Event()
    for _ in range(6000):
        if _fork.forking():
            return
        pause.wait(0.01)


def hold_until_the_fork(lock: Any) -> threading.Thread:
    """A thread that holds ``lock`` until a fork has begun taking the registered locks
    (so the fork must wait for it), then lets go; returned once it holds the lock."""
    held = threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            wait_for_the_fork()

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(60)
    return thread
