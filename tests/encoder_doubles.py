"""Test doubles around the real encoder, shared by the service tests."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from synaptoroute import Encoder

LIMIT_S = 30.0  # safety limit of every wait; reaching it fails the test


class WrappedEncoder:
    """The real encoder, seen through a wrapper; subclasses change :meth:`encode`."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    @property
    def loaded(self) -> bool:
        return self.inner.loaded

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self.inner.encode(texts)


class CountingEncoder(WrappedEncoder):
    """Counts the calls that reach the model and records their texts; reads texts as
    the real encoder does."""

    def __init__(self, inner: Encoder) -> None:
        super().__init__(inner)
        self.calls = 0
        self.texts: list[str] = []

    def truncate(self, text: str) -> str:
        return self.inner.truncate(text)

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if len(texts):
            self.calls += 1
            self.texts.extend(texts)
        return self.inner.encode(texts)


class GatedEncoder(WrappedEncoder):
    """Records each call's texts; clearing ``gate`` holds calls, ``fail_with`` fails them."""

    def __init__(self, inner: Encoder) -> None:
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
