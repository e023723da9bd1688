"""Shared fixtures: the real bundled encoder (loaded once), routes, and a run recorder."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from synaptoroute import AdaptiveRouter, Encoder, Route
from synaptoroute.testing import RecordingEncoder

#: Three routes with four example utterances each; small, so tests encode little.
ROUTES: dict[str, list[str]] = {
    "billing": [
        "I need a refund",
        "I was charged twice",
        "Cancel my subscription",
        "Where is my invoice?",
    ],
    "tech": [
        "The app crashes on start",
        "I can't log in",
        "Reset my password",
        "The page shows an error",
    ],
    "smalltalk": ["Hi there!", "How are you today?", "Tell me a joke", "Good morning"],
}

#: Inputs and the route the bundled model gives each (None: no route passes 0.5).
LABELLED: list[tuple[str, str | None]] = [
    ("How do I get my money back?", "billing"),
    ("my password doesn't work anymore", "tech"),
    ("hello, how's it going?", "smalltalk"),
    ("What is the boiling point of mercury?", None),
    ("I want a refund for my order", "billing"),
    ("the app keeps crashing", "tech"),
    ("tell me something funny", "smalltalk"),
    ("who won the world cup", None),
]


@pytest.fixture(scope="session")
def routes() -> dict[str, list[str]]:
    """Route name -> example utterances."""
    return ROUTES


@pytest.fixture(scope="session")
def labelled() -> list[tuple[str, str | None]]:
    """Inputs and the route each should take (None: none)."""
    return LABELLED


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    """The real bundled model, loaded once for the whole session."""
    enc = Encoder()
    enc.load()
    return enc


@pytest.fixture
def recording_encoder(encoder: Encoder) -> RecordingEncoder:
    """A fresh recorder over the shared real encoder."""
    return RecordingEncoder(encoder)


@pytest.fixture
def fresh_router(recording_encoder: RecordingEncoder) -> AdaptiveRouter:
    """An AdaptiveRouter holding :data:`ROUTES` with an empty query cache; its
    ``recording_encoder`` has its calls cleared after the routes were encoded."""
    router = AdaptiveRouter(recording_encoder)
    router.add_routes(Route(name=name, utterances=utts) for name, utts in ROUTES.items())
    recording_encoder.clear()
    return router


@pytest.fixture(scope="session")
def adaptive_router(encoder: Encoder) -> AdaptiveRouter:
    """An AdaptiveRouter holding :data:`ROUTES`, shared by tests that only read it."""
    router = AdaptiveRouter(encoder)
    router.add_routes(Route(name=name, utterances=utts) for name, utts in ROUTES.items())
    return router


@dataclass
class Run:
    """One run seen by :class:`RunRecorder`."""

    run_id: UUID
    parent_run_id: UUID | None
    name: str
    kind: str
    tags: list[str]
    metadata: dict[str, Any]
    inputs: Any
    outputs: Any = None
    error: BaseException | None = None
    ended: bool = False


class RunRecorder(BaseCallbackHandler):
    """A callback handler that records the run tree: names, tags, metadata, outcomes."""

    # Called in the caller's thread, in event order, also from async callback managers;
    # a failing handler fails the test instead of logging a warning.
    run_inline = True
    raise_error = True

    def __init__(self) -> None:
        self.runs: dict[UUID, Run] = {}
        self.order: list[UUID] = []
        self.lock = threading.Lock()

    def _start(self, kind: str, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        name = kwargs.get("name") or (serialized or {}).get("name") or "?"
        run = Run(
            run_id=kwargs["run_id"],
            parent_run_id=kwargs.get("parent_run_id"),
            name=name,
            kind=kind,
            tags=list(kwargs.get("tags") or []),
            metadata=dict(kwargs.get("metadata") or {}),
            inputs=inputs,
        )
        with self.lock:
            self.runs[run.run_id] = run
            self.order.append(run.run_id)

    def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        """Record a chain (any Runnable) run."""
        self._start("chain", serialized, inputs, **kwargs)

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        """Record a chat model run."""
        self._start("chat_model", serialized, messages, **kwargs)

    def on_chain_end(self, outputs: Any, **kwargs: Any) -> None:
        """Mark a run as ended with its outputs."""
        run = self.runs[kwargs["run_id"]]
        run.outputs, run.ended = outputs, True

    def on_chain_error(self, error: BaseException, **kwargs: Any) -> None:
        """Mark a run as failed."""
        run = self.runs[kwargs["run_id"]]
        run.error, run.ended = error, True

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        """Mark a model run as ended."""
        run = self.runs[kwargs["run_id"]]
        run.outputs, run.ended = response, True

    def roots(self, name: str) -> list[Run]:
        """Top-level runs called ``name``, in start order."""
        return [
            self.runs[i]
            for i in self.order
            if self.runs[i].parent_run_id is None and self.runs[i].name == name
        ]

    def children(self, run: Run) -> list[Run]:
        """Direct children of ``run``, in start order."""
        return [self.runs[i] for i in self.order if self.runs[i].parent_run_id == run.run_id]

    def decision(self, run: Run) -> Run:
        """The ``synaptoroute.route`` run a router's ``run`` decided in: its first child."""
        first, *_ = self.children(run)
        assert first.name == "synaptoroute.route", first.name
        return first

    def branches(self, run: Run) -> list[Run]:
        """The children of a router's ``run`` after its decision: the branches it ran."""
        return [child for child in self.children(run) if child is not self.decision(run)]


@pytest.fixture
def recorder() -> RunRecorder:
    """A fresh run recorder."""
    return RunRecorder()
