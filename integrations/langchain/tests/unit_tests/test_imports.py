"""The public API: exactly these names, each importable, and the version in sync."""

from __future__ import annotations

from importlib.metadata import version

import langchain_synaptoroute
import pytest

EXPECTED_ALL = [
    "LangChainEncoder",
    "SynaptorouteClassifier",
    "SynaptorouteEdge",
    "SynaptorouteEmbeddings",
    "SynaptorouteFanOut",
    "SynaptorouteMultiClassifier",
    "SynaptorouteMultiRouter",
    "SynaptorouteNode",
    "SynaptorouteRouter",
    "SynaptorouteToolSelectorMiddleware",
    "__version__",
]


def test_all_imports() -> None:
    assert sorted(langchain_synaptoroute.__all__) == sorted(EXPECTED_ALL)
    assert langchain_synaptoroute.__all__ == sorted(langchain_synaptoroute.__all__)
    for name in langchain_synaptoroute.__all__:
        assert getattr(langchain_synaptoroute, name) is not None


def test_unknown_attribute_raises() -> None:
    with pytest.raises(AttributeError, match="NotAThing"):
        _ = langchain_synaptoroute.NotAThing


def test_version_matches_distribution() -> None:
    assert langchain_synaptoroute.__version__ == version("langchain-synaptoroute")
