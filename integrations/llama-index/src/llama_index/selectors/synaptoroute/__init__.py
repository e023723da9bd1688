"""A LlamaIndex selector that routes by example utterances, built on synaptoroute.

``SynaptorouteSelector`` plugs into ``RouterQueryEngine`` and ``RouterRetriever``;
``SynaptorouteEmbedding`` exposes the bundled offline model as a LlamaIndex
embedding; ``LlamaIndexEncoder`` lets any LlamaIndex embedding drive the router.
"""

from __future__ import annotations

from .embeddings import LlamaIndexEncoder, SynaptorouteEmbedding
from .selector import NoMatchPolicy, SelectionPolicy, SynaptorouteSelector, decide_selection

__all__ = [
    "LlamaIndexEncoder",
    "NoMatchPolicy",
    "SelectionPolicy",
    "SynaptorouteEmbedding",
    "SynaptorouteSelector",
    "decide_selection",
]
