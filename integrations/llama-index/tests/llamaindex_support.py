"""Data and helpers shared by the LlamaIndex tests (a uniquely named module, not conftest)."""

from __future__ import annotations

from llama_index.core.query_engine import CustomQueryEngine

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
#: Queries with one clear choice: (query, index of the expected choice).
CLEAR_QUERIES = [
    ("How do I get my money back?", 0),
    ("my password doesn't work anymore", 1),
    ("what time do you open on saturday", 2),
]
#: A query that touches billing and tech support.
TWO_TOPICS = "I was charged twice and now the app crashes"
#: A query that no choice is about.
OFF_TOPIC = "what is the boiling point of mercury"


class EchoEngine(CustomQueryEngine):
    """A query engine that answers with its own name and the query."""

    name: str

    def custom_query(self, query_str: str) -> str:
        return f"[{self.name}] {query_str}"

    async def acustom_query(self, query_str: str) -> str:
        return f"[{self.name}] {query_str}"
