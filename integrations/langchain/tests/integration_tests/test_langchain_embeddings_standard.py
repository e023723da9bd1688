"""The langchain-tests integration suite for SynaptorouteEmbeddings (the real local model)."""

from __future__ import annotations

from langchain_synaptoroute import SynaptorouteEmbeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests


class TestSynaptorouteEmbeddingsIntegration(EmbeddingsIntegrationTests):
    """Embeds real texts with the bundled model, sync and async."""

    @property
    def embeddings_class(self) -> type[SynaptorouteEmbeddings]:
        return SynaptorouteEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, object]:
        return {}
