"""Route LlamaIndex queries by example utterances, offline (no API key, no network).

A ``RouterQueryEngine`` picks one of three query engines with ``SynaptorouteSelector``
(one local embedding per query instead of an LLM call), falls back to a general engine
when nothing fits, and a ``RouterRetriever`` picks among three small vector indexes
embedded with ``SynaptorouteEmbedding``. ``MockLLM`` stands in for a real LLM.

Run: pip install -e . -e integrations/llama-index && python examples/llamaindex_router.py
"""

from __future__ import annotations

import asyncio
import time

from llama_index.core import VectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import CustomQueryEngine, RouterQueryEngine
from llama_index.core.retrievers import RouterRetriever
from llama_index.core.schema import TextNode
from llama_index.core.tools import QueryEngineTool, RetrieverTool
from llama_index.selectors.synaptoroute import SynaptorouteEmbedding, SynaptorouteSelector

DESCRIPTIONS = {
    "billing": "Answers questions about invoices, payments and refunds",
    "tech_support": "Helps with log-in problems, crashes and bugs in the app",
    "general": "General questions about the company: opening hours, offices and jobs",
}
UTTERANCES = {
    "billing": ["I need a refund", "Where is my invoice?", "I was charged twice"],
    "tech_support": ["The app crashes on start", "I can't log in", "Reset my password"],
    "general": ["When are you open?", "Where is your office?", "Are you hiring?"],
}
DOCUMENTS = {
    "billing": ["Refunds are paid within five working days.", "Invoices are emailed monthly."],
    "tech_support": ["If the app crashes, reinstall it.", "Reset your password on the login page."],
    "general": ["The office opens at nine.", "We are hiring engineers in Lisbon."],
}
QUERIES = [
    "How do I get my money back?",
    "my password doesn't work anymore",
    "what time do you open on saturday",
    "what is the boiling point of mercury",  # fits nothing: falls back to "general"
]


class CannedEngine(CustomQueryEngine):
    """A stand-in query engine that says which team would answer."""

    team: str

    def custom_query(self, query_str: str) -> str:
        return f"the {self.team} team answers: {query_str!r}"


def main() -> None:
    """Route the sample queries through a RouterQueryEngine and a RouterRetriever."""
    embed_model = SynaptorouteEmbedding()  # the bundled offline model, shared below
    selector = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES,
        on_no_match="fallback",
        fallback="general",
        encoder=embed_model,
    )
    tools = [
        QueryEngineTool.from_defaults(CannedEngine(team=name), name=name, description=text)
        for name, text in DESCRIPTIONS.items()
    ]
    engine = RouterQueryEngine(selector=selector, query_engine_tools=tools, llm=MockLLM())

    start = time.perf_counter()
    selector.router_for([tool.metadata for tool in tools])  # optional: embed the choices now
    print(f"Model loaded and choices embedded in {(time.perf_counter() - start) * 1000:.0f} ms")

    print("RouterQueryEngine")
    for query in QUERIES:
        start = time.perf_counter()
        response = engine.query(query)
        ms = (time.perf_counter() - start) * 1000
        reason = response.metadata["selector_result"].reason  # type: ignore[index]
        print(f"  {query!r}\n    -> {response}  ({ms:.1f} ms)\n    why: {reason}")

    async def ask_concurrently() -> list[str]:
        answers = await asyncio.gather(*(engine.aquery(q) for q in QUERIES))
        await selector.aclose()
        return [str(a) for a in answers]

    print("RouterQueryEngine, async (queries share the batching worker)")
    for answer in asyncio.run(ask_concurrently()):
        print(f"  {answer}")

    # Several engines at once: RouterQueryEngine then summarises their answers with its
    # LLM (MockLLM here just echoes the summary prompt).
    multi = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, top_n=2, encoder=embed_model)
    both = RouterQueryEngine(selector=multi, query_engine_tools=tools, llm=MockLLM())
    response = both.query("I was charged twice and now the app crashes")
    print("Multi-selection:", response.metadata["selector_result"].reasons)  # type: ignore[index]

    retriever_tools = []
    for name, texts in DOCUMENTS.items():
        index = VectorStoreIndex(nodes=[TextNode(text=t) for t in texts], embed_model=embed_model)
        retriever_tools.append(
            RetrieverTool.from_defaults(
                retriever=index.as_retriever(similarity_top_k=1),
                name=name,
                description=DESCRIPTIONS[name],
            )
        )
    retriever = RouterRetriever(selector=selector, retriever_tools=retriever_tools, llm=MockLLM())
    print("RouterRetriever")
    for query in QUERIES:
        nodes = retriever.retrieve(query)
        print(f"  {query!r} -> {[n.node.get_content() for n in nodes]}")


if __name__ == "__main__":
    main()
