"""Helpers for testing code that routes with synaptoroute.

:class:`RecordingEncoder` wraps any encoder and records what reaches it, so a test can
check what a cache, a batcher or an integration sent to the model, and on which
thread, without timing anything; :class:`GatedEncoder` holds every call until the
test opens its gate, so a test can act while a build or a query is under way.
:func:`in_forked_child` and :func:`hold_until_the_fork` test fork safety (a child
forked while another thread holds a lock must not inherit it held) by events, not by
sleeping. The project's own tests and both integration packages use them.
"""

from __future__ import annotations

import os
import signal
import threading
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import _fork
from ._fork import LEAF, hold_across_fork
from .encoder import EncoderProtocol, EncoderWrapper
from .exceptions import EncoderError

__all__ = [
    "GatedEncoder",
    "RecordingEncoder",
    "hold_until_the_fork",
    "in_forked_child",
    "wait_for_the_fork",
]


def in_forked_child(check: Callable[[], None], timeout: int = 60) -> int:
    """Run ``check`` in a forked child (POSIX only) and return its exit code: 0 when it
    passed, 1 when it raised (the traceback goes to the child's stderr), and -14 when
    SIGALRM killed it after ``timeout`` seconds, so a child stuck on an inherited lock
    fails the test instead of hanging the suite."""
    with warnings.catch_warnings():  # 3.12+ warns that forking a threaded process may hang
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's test runner
        code = 1
        try:
            # The default action, not a handler inherited from the parent (pytest-timeout
            # sets one): a Python handler never runs while a thread waits in native code.
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(timeout)
            check()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def wait_for_the_fork(timeout: float = 60.0) -> bool:
    """Wait until a fork in this process has begun taking synaptoroute's registered
    locks; ``False`` if none did within ``timeout`` seconds."""
    pause = threading.Event()
    for _ in range(max(1, int(timeout * 100))):
        if _fork.forking():
            return True
        pause.wait(0.01)
    return False


def hold_until_the_fork(lock: Any, timeout: float = 60.0) -> threading.Thread:
    """Start a thread that holds ``lock`` until a fork has begun taking the registered
    locks (so that fork must wait for it), then lets go; returns once it holds it.

    Raises:
        TimeoutError: the thread could not take ``lock`` within ``timeout`` seconds.
    """
    held = threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            wait_for_the_fork(timeout)

    thread = threading.Thread(target=hold, name="synaptoroute-holds-until-fork", daemon=True)
    thread.start()
    if not held.wait(timeout):
        msg = f"could not take {lock!r} within {timeout} s"
        raise TimeoutError(msg)
    return thread


class RecordingEncoder(EncoderWrapper):
    """Wraps an encoder and records every ``encode`` call: its texts and its thread.

    Recording is thread-safe. The wrapper reads texts as the wrapped encoder does
    (:class:`~synaptoroute.encoder.EncoderWrapper`).

    Example:
        >>> from synaptoroute import AdaptiveRouter, HashingEncoder, Route
        >>> recording = RecordingEncoder(HashingEncoder())
        >>> router = AdaptiveRouter(recording)
        >>> router.add_route(Route(name="greet", utterances=["hello", "hi there"]))
        >>> _ = router.query("hello again"), router.query("hello again")
        >>> recording.calls  # the second query came from the cache
        [['hello', 'hi there'], ['hello again']]
    """

    def __init__(self, inner: EncoderProtocol) -> None:
        super().__init__(inner)
        #: The texts of each call, in call order.
        self.calls: list[list[str]] = []
        #: The ``threading.get_ident()`` of each call's thread.
        self.threads: list[int] = []
        #: The name of each call's thread.
        self.thread_names: list[str] = []
        self._lock = threading.Lock()
        hold_across_fork(self, LEAF)  # a forked child records too

    @property
    def texts_encoded(self) -> int:
        """How many texts reached the wrapped encoder."""
        with self._lock:
            return sum(len(call) for call in self.calls)

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Record the call, then encode with the wrapped encoder."""
        if isinstance(texts, str | bytes):
            # The wrapped encoder's refusal, unrecorded.
            return self.inner.encode(texts)  # type: ignore[arg-type]
        items = list(texts)  # read once: an iterator handed on was found empty
        thread = threading.current_thread()
        with self._lock:
            self.calls.append(items)
            self.threads.append(thread.ident or 0)
            self.thread_names.append(thread.name)
        return self.inner.encode(items)

    def clear(self) -> None:
        """Forget what was recorded."""
        with self._lock:
            self.calls.clear()
            self.threads.clear()
            self.thread_names.clear()


class GatedEncoder(EncoderWrapper):
    """Wraps an encoder and holds each ``encode`` call at a gate until :meth:`open`.

    :attr:`entered` is set when a call reaches the gate, so a test can act while a
    router is built or queried (cancel the call, evict the router) by events, not by
    sleeping. A call held longer than ``limit`` seconds raises :class:`EncoderError`:
    a test that never opens the gate fails instead of hanging.

    Example:
        >>> from synaptoroute import HashingEncoder
        >>> gated = GatedEncoder(HashingEncoder(8))
        >>> gated.open()  # a call made now passes at once
        >>> gated.encode(["hello"]).shape, gated.entered.is_set()
        ((1, 8), True)
    """

    def __init__(self, inner: EncoderProtocol, *, limit: float = 60.0) -> None:
        super().__init__(inner)
        #: Set once a call has reached the gate.
        self.entered = threading.Event()
        self.limit = limit
        self._gate = threading.Event()

    def open(self) -> None:
        """Let every call held now or made later through."""
        self._gate.set()

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Wait at the gate, then encode with the wrapped encoder."""
        self.entered.set()
        if not self._gate.wait(self.limit):
            msg = f"the test never opened the gate ({self.limit} s)"
            raise EncoderError(msg)
        return super().encode(texts)
