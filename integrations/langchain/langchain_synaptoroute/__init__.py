"""LangChain integration for synaptoroute.

``SynaptorouteRouter`` is a Runnable that sends its input to one of several Runnables
by comparing it with each route's example utterances, locally and without an LLM
call; ``SynaptorouteClassifier`` returns the decision itself. ``SynaptorouteEmbeddings``
exposes synaptoroute's local encoder as LangChain ``Embeddings``, and
``LangChainEncoder`` lets any LangChain ``Embeddings`` serve as a synaptoroute encoder.
``SynaptorouteMultiRouter`` runs every matching branch, ``SynaptorouteMultiClassifier``
returns every matching route, and ``SynaptorouteToolSelectorMiddleware`` binds only the
tools that match the user's message in a LangChain 1.x agent (extra ``agents``);
``SynaptorouteToolSearchMiddleware`` gives such an agent a local ``search_tools`` tool
to find the tools it lacks, on any provider.
``SynaptorouteEdge``, ``SynaptorouteNode`` and ``SynaptorouteFanOut`` route LangGraph
graphs (extra ``langgraph``; imported only when used). ``SynaptorouteDecisions`` is a
local LangChain decision model answering ``Choice`` questions (``ModelRouterMiddleware``'s
classifier); it needs langchain-core >= 1.8, so it is imported only when used and, on an
older core, its import raises an ``ImportError`` naming the release needed.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .classifier import SynaptorouteClassifier, SynaptorouteMultiClassifier
    from .decisions import SynaptorouteDecisions
    from .embeddings import LangChainEncoder, SynaptorouteEmbeddings
    from .langgraph import SynaptorouteEdge, SynaptorouteFanOut, SynaptorouteNode
    from .middleware import SynaptorouteToolSelectorMiddleware
    from .router import SynaptorouteMultiRouter, SynaptorouteRouter
    from .tool_search import SynaptorouteToolSearchMiddleware

try:  # the version is written once, in pyproject.toml; the installed metadata carries it
    __version__ = _distribution_version("langchain-synaptoroute")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
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

# Imported on first use, so that `import langchain_synaptoroute` stays cheap.
_DYNAMIC_IMPORTS = {
    "LangChainEncoder": "embeddings",
    "SynaptorouteClassifier": "classifier",
    "SynaptorouteDecisions": "decisions",
    "SynaptorouteEdge": "langgraph",
    "SynaptorouteEmbeddings": "embeddings",
    "SynaptorouteFanOut": "langgraph",
    "SynaptorouteMultiClassifier": "classifier",
    "SynaptorouteMultiRouter": "router",
    "SynaptorouteNode": "langgraph",
    "SynaptorouteRouter": "router",
    "SynaptorouteToolSearchMiddleware": "tool_search",
    "SynaptorouteToolSelectorMiddleware": "middleware",
}


def __getattr__(name: str) -> object:
    module_name = _DYNAMIC_IMPORTS.get(name)
    if module_name is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
