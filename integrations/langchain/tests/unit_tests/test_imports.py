"""The public API: exactly these names, each importable, and the version in sync."""

from __future__ import annotations

import importlib.util
from importlib.metadata import version

import langchain_synaptoroute
import pytest

EXPECTED_ALL = [
    "LangChainEncoder",
    "SynaptorouteClassifier",
    "SynaptorouteDecisions",
    "SynaptorouteEdge",
    "SynaptorouteEmbeddings",
    "SynaptorouteFanOut",
    "SynaptorouteMultiClassifier",
    "SynaptorouteMultiRouter",
    "SynaptorouteNode",
    "SynaptorouteRouter",
    "SynaptorouteToolSearchMiddleware",
    "SynaptorouteToolSelectorMiddleware",
    "__version__",
]

#: Names whose module needs langchain-core >= 1.8 (its decision models), above the
#: package's floor: the minimum-versions tier imports them to see them refused.
NEEDS_DECISIONS = {"SynaptorouteDecisions"}
HAS_DECISIONS = importlib.util.find_spec("langchain_core.decisions") is not None


def test_all_imports() -> None:
    assert sorted(langchain_synaptoroute.__all__) == sorted(EXPECTED_ALL)
    assert langchain_synaptoroute.__all__ == sorted(langchain_synaptoroute.__all__)
    for name in langchain_synaptoroute.__all__:
        if name in NEEDS_DECISIONS and not HAS_DECISIONS:
            continue  # test_decisions_import_names_the_core_needed
        assert getattr(langchain_synaptoroute, name) is not None


@pytest.mark.skipif(HAS_DECISIONS, reason="langchain-core has decision models (>= 1.8)")
def test_decisions_import_names_the_core_needed() -> None:
    for name in NEEDS_DECISIONS:
        with pytest.raises(ImportError, match=r"langchain-core >= 1\.8"):
            getattr(langchain_synaptoroute, name)


def test_unknown_attribute_raises() -> None:
    with pytest.raises(AttributeError, match="NotAThing"):
        _ = langchain_synaptoroute.NotAThing


def test_version_matches_distribution() -> None:
    assert langchain_synaptoroute.__version__ == version("langchain-synaptoroute")
