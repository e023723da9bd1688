"""A LlamaIndex selector that routes by example utterances, built on synaptoroute.

``SynaptorouteSelector`` plugs into ``RouterQueryEngine`` and ``RouterRetriever``;
``SynaptorouteToolRetriever`` is an agent's ``tool_retriever``;
``SynaptorouteAgentWorkflow`` starts each run of an ``AgentWorkflow`` at the agent its
user message matches (``AgentRouteEvent`` records the decision);
``SynaptorouteEmbedding`` exposes the bundled offline model as a LlamaIndex
embedding; ``LlamaIndexEncoder`` lets any LlamaIndex embedding drive the router.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

from .embeddings import LlamaIndexEncoder, SynaptorouteEmbedding
from .selector import NoMatchPolicy, SelectionPolicy, SynaptorouteSelector, decide_selection
from .tools import SynaptorouteToolRetriever
from .workflow import AgentRouteEvent, SynaptorouteAgentWorkflow

try:  # the version is written once, in pyproject.toml; the installed metadata carries it
    __version__ = _distribution_version("llama-index-selectors-synaptoroute")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
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
