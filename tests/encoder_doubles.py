"""Every test double of an encoder the core's tests use, in one module; the recording
encoder that the integration packages' tests use too is
:class:`synaptoroute.testing.RecordingEncoder`.

Most wrap the real encoder and change what :meth:`encode` does; waits have a safety
limit that fails the test, never paces it.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from synaptoroute import EncoderError, HashingEncoder
from synaptoroute.encoder import EncoderProtocol, EncoderWrapper

LIMIT_S = 30.0  # safety limit of every wait; reaching it fails the test


class CountingEncoder(EncoderWrapper):
    """Counts the calls that reach the model and records their texts; reads texts as
    the real encoder does."""

    def __init__(self, inner: EncoderProtocol) -> None:
        super().__init__(inner)
        self.calls = 0
        self.texts: list[str] = []

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if len(texts):
            self.calls += 1
            self.texts.extend(texts)
        return self.inner.encode(texts)


class GatedEncoder(EncoderWrapper):
    """Records each call's texts; clearing ``gate`` holds calls, ``fail_with`` fails them."""

    def __init__(self, inner: EncoderProtocol) -> None:
        super().__init__(inner)
        self.calls: list[list[str]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.fail_with: Exception | None = None

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        self.calls.append(list(texts))
        self.entered.set()
        if not self.gate.wait(LIMIT_S):
            msg = "gate never opened"
            raise RuntimeError(msg)
        if self.fail_with is not None:
            raise self.fail_with
        return self.inner.encode(texts)


class HeldEncoder(EncoderWrapper):
    """The real encoder behind a gate: records calls, can hold or fail them.

    Every call puts its texts on ``entered``. While ``hold`` is set, a call then
    waits for one ``release()`` permit. A call containing a text of ``fail_on``
    raises :class:`EncoderError` instead.
    """

    def __init__(self, inner: EncoderProtocol) -> None:
        super().__init__(inner)
        self.calls: list[list[str]] = []
        self.entered: queue.Queue[list[str]] = queue.Queue()
        self.hold = False
        self.fail_on: set[str] = set()
        self._permits = threading.Semaphore(0)

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        batch = list(texts)
        self.calls.append(batch)
        self.entered.put(batch)
        if self.fail_on.intersection(batch):
            msg = "injected encoder failure"
            raise EncoderError(msg)
        if self.hold and not self._permits.acquire(timeout=LIMIT_S):
            msg = "the test never released this batch"
            raise EncoderError(msg)
        return self.inner.encode(batch)

    def release(self, n: int = 1) -> None:
        """Let ``n`` held calls proceed."""
        for _ in range(n):
            self._permits.release()

    async def next_call(self) -> list[str]:
        """Wait (off the loop) until the worker hands the encoder its next batch."""
        return await asyncio.to_thread(self.entered.get, True, LIMIT_S)

    def reset(self) -> None:
        """Open the gate for good and forget the record."""
        self.hold = False
        self.fail_on = set()
        self.release(1000)
        self._permits = threading.Semaphore(0)
        self.calls.clear()
        while not self.entered.empty():
            self.entered.get_nowait()


class FailingEncoder(EncoderWrapper):
    """The real encoder, except that a text containing ``boom`` raises."""

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if any("boom" in t for t in texts):
            msg = "an unexpected failure"
            raise RuntimeError(msg)
        return self.inner.encode(texts)


class NaNEncoder:
    """Returns NaN rows for texts containing "nan", like a broken custom model."""

    model_id = "nan-model"
    dimension = 8

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        out = HashingEncoder(8).encode(texts)
        for i, text in enumerate(texts):
            if "nan" in text:
                out[i] = np.nan
        return out
