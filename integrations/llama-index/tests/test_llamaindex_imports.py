"""The public names and the PEP 420 namespace layout of the package."""

from __future__ import annotations

import importlib
from importlib.metadata import version
from pathlib import Path

import llama_index.selectors.synaptoroute as package

EXPECTED_ALL = [
    "AgentRouteEvent",
    "LlamaIndexEncoder",
    "NoMatchPolicy",
    "SelectionPolicy",
    "SynaptorouteAgentWorkflow",
    "SynaptorouteEmbedding",
    "SynaptorouteSelector",
    "SynaptorouteToolRetriever",
    "__version__",
    "decide_selection",
]


def test_all() -> None:
    assert package.__all__ == EXPECTED_ALL
    for name in EXPECTED_ALL:
        assert hasattr(package, name)


def test_version_matches_distribution() -> None:
    assert package.__version__ == version("llama-index-selectors-synaptoroute")


def test_namespace_package_layout() -> None:
    root = Path(package.__file__).parent
    assert (root / "py.typed").is_file()
    # No __init__.py at the namespace levels: llama_index stays shared with core.
    assert not (root.parent / "__init__.py").exists()
    assert not (root.parent.parent / "__init__.py").exists()
    # A PEP 420 namespace (no __init__, no __file__) whose portions hold both packages:
    # two folders with an editable install, one site-packages folder with wheels.
    llama_index = importlib.import_module("llama_index")
    assert getattr(llama_index, "__file__", None) is None
    portions = [Path(p).resolve() for p in llama_index.__path__]
    core = importlib.import_module("llama_index.core")
    for module in (core, package):
        assert any(p in Path(module.__file__ or "").resolve().parents for p in portions)
    assert importlib.import_module("llama_index.core.query_engine").RouterQueryEngine
