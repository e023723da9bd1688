"""Helpers for testing code that routes with synaptoroute.

:class:`RecordingEncoder` wraps any encoder and records what reaches it, so a test can
check what a cache, a batcher or an integration sent to the model, and on which
thread, without timing anything. The project's own tests and both integration
packages use it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from .encoder import EncoderProtocol, EncoderWrapper

__all__ = ["RecordingEncoder"]


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

    @property
    def texts_encoded(self) -> int:
        """How many texts reached the wrapped encoder."""
        with self._lock:
            return sum(len(call) for call in self.calls)

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Record the call, then encode with the wrapped encoder."""
        thread = threading.current_thread()
        with self._lock:
            self.calls.append(list(texts))
            self.threads.append(thread.ident or 0)
            self.thread_names.append(thread.name)
        return self.inner.encode(texts)

    def clear(self) -> None:
        """Forget what was recorded."""
        with self._lock:
            self.calls.clear()
            self.threads.clear()
            self.thread_names.clear()
