"""Data and helpers shared by the LlamaIndex tests (a uniquely named module, not conftest)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from llama_index.core.query_engine import CustomQueryEngine
from numpy.typing import NDArray

from synaptoroute import EncoderProtocol

DESCRIPTIONS = {
    "billing": "Answers questions about invoices, payments and refunds",
    "tech_support": "Helps with log-in problems, crashes and bugs in the app",
    "general": "General questions about the company: opening hours, offices and jobs",
}
UTTERANCES = {
    "billing": ["I need a refund", "Where is my invoice?", "I was charged twice"],
    "tech_support": ["The app crashes on start", "I can't log in", "Reset my password"],
    "general": ["When are you open?", "Where is your office?", "Are you hiring?"],
}
#: Queries with one clear choice: (query, index of the expected choice).
CLEAR_QUERIES = [
    ("How do I get my money back?", 0),
    ("my password doesn't work anymore", 1),
    ("what time do you open on saturday", 2),
]
#: A query that touches billing and tech support.
TWO_TOPICS = "I was charged twice and now the app crashes"
#: A query that no choice is about.
OFF_TOPIC = "what is the boiling point of mercury"


class RecordingEncoder:
    """Wraps a real encoder and records every call: its texts and its thread."""

    def __init__(self, inner: EncoderProtocol) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []
        self.threads: list[int] = []
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    @property
    def texts_encoded(self) -> int:
        return sum(len(c) for c in self.calls)

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        with self._lock:
            self.calls.append(list(texts))
            self.threads.append(threading.get_ident())
        return self.inner.encode(texts)


class EchoEngine(CustomQueryEngine):
    """A query engine that answers with its own name and the query."""

    name: str

    def custom_query(self, query_str: str) -> str:
        return f"[{self.name}] {query_str}"

    async def acustom_query(self, query_str: str) -> str:
        return f"[{self.name}] {query_str}"
