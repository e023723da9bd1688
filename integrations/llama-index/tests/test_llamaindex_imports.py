"""The public names and the PEP 420 namespace layout of the package."""

from __future__ import annotations

import importlib
from importlib.metadata import version
from pathlib import Path

import llama_index.selectors.synaptoroute as package

EXPECTED_ALL = [
    "LlamaIndexEncoder",
    "NoMatchPolicy",
    "SelectionPolicy",
    "SynaptorouteEmbedding",
    "SynaptorouteSelector",
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
    llama_index = importlib.import_module("llama_index")
    assert len(list(llama_index.__path__)) >= 2
    core = importlib.import_module("llama_index.core")
    assert Path(core.__file__ or "").parent.parent != root.parent.parent
    assert importlib.import_module("llama_index.core.query_engine").RouterQueryEngine
