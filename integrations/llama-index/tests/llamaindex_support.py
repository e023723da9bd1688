"""Data and helpers shared by the LlamaIndex tests (a uniquely named module, not conftest)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

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


#: The repository's root (the docs are read from there).
ROOT = Path(__file__).resolve().parents[3]


def docs_example(marker: str) -> tuple[str, list[str]]:
    """Run docs/llamaindex.md's one Python block holding ``marker``, with a
    ``UserWarning`` as an error (the examples give enough utterances); return the block
    and the output lines its ``# ...`` comments show (those at a line's start)."""
    page = (ROOT / "docs" / "llamaindex.md").read_text(encoding="utf-8")
    blocks = [
        b
        for b in re.findall(r"^```python\n(.*?)^```", page, re.MULTILINE | re.DOTALL)
        if marker in b
    ]
    assert len(blocks) == 1, f"{len(blocks)} blocks hold {marker!r}"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        exec(compile(blocks[0], "docs/llamaindex.md", "exec"), {})
    return blocks[0], re.findall(r"^# (\S.*)$", blocks[0], re.MULTILINE)
