"""Shared fixtures: the real bundled encoder (loaded once), a recording wrapper and tools."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from llama_index.core import Settings
from llama_index.core.tools import QueryEngineTool, ToolMetadata
from llama_index.selectors.synaptoroute import SynaptorouteSelector
from llamaindex_support import DESCRIPTIONS, UTTERANCES, EchoEngine

from synaptoroute import Encoder
from synaptoroute.testing import RecordingEncoder


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    """The real bundled model, loaded once for the whole session."""
    enc = Encoder()
    enc.load()
    return enc


@pytest.fixture
def recording(encoder: Encoder) -> RecordingEncoder:
    """A fresh recording wrapper around the shared real encoder."""
    return RecordingEncoder(encoder)


@pytest.fixture
def engine_tools() -> list[QueryEngineTool]:
    """Three echo engines wrapped as tools: billing, tech_support, general."""
    return [
        QueryEngineTool.from_defaults(EchoEngine(name=name), name=name, description=text)
        for name, text in DESCRIPTIONS.items()
    ]


@pytest.fixture
def choices(engine_tools: list[QueryEngineTool]) -> list[ToolMetadata]:
    """The tools' metadata, as the routers hand it to the selector."""
    return [tool.metadata for tool in engine_tools]


@pytest.fixture
async def make_selector(
    encoder: Encoder,
) -> AsyncIterator[Callable[..., SynaptorouteSelector]]:
    """A selector factory for async tests; stops the selectors' workers afterwards."""
    made: list[SynaptorouteSelector] = []

    def make(**kwargs: Any) -> SynaptorouteSelector:
        kwargs.setdefault("encoder", encoder)
        kwargs.setdefault("utterances", UTTERANCES)
        selector = SynaptorouteSelector.from_defaults(**kwargs)
        made.append(selector)
        return selector

    yield make
    for selector in made:
        await selector.aclose()


@pytest.fixture(autouse=True)
def _settings_untouched() -> Iterator[None]:
    """Fail a test that leaves LlamaIndex's global Settings changed."""
    before = (Settings._llm, Settings._embed_model)
    yield
    assert (Settings._llm, Settings._embed_model) == before, "a test changed global Settings"
