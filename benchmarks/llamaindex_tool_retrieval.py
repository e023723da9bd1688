"""LlamaIndex agents' tool retrieval: CLINC150's 150 intents as 150 tools.

Each intent becomes a LlamaIndex ``FunctionTool`` named after it (``book_flight``),
described only by its name in words (CLINC150 has no descriptions: "Tool for: book
flight"). Retrievers, all with the same bundled model (all-MiniLM-L6-v2 INT8), each
retrieving 5 tools (what an agent would bind), on every in-scope CLINC150 val row
(or the first ``--limit``):

* ``SynaptorouteToolRetriever`` with up to ``--examples`` train rows per tool as
  ``utterances``, and the same retriever with the tools' names and descriptions only;
* LlamaIndex's usual tool retriever,
  ``ObjectIndex.from_objects(tools, index_cls=VectorStoreIndex, embed_model=...)
  .as_retriever(similarity_top_k=5)``, its embedding model the same bundled model
  (``SynaptorouteEmbedding``), so only the retrieval differs; it embeds one text per
  tool (LlamaIndex's tool node text: the name, the description and the arguments'
  schema) and cannot take examples.

Reported: recall@k (the row's intent is among the first ``k`` tools retrieved, k = 1,
3, 5), ``retrieve`` time per message (p50 and p99; each val text once, so no cache
hit; the message's embedding included) and build time.

Run: .venv/bin/python benchmarks/llamaindex_tool_retrieval.py [--examples 100] [--limit 0]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence

import llama_index.core
from common import (
    add_data_argument,
    by_label,
    command_line,
    intent_description,
    load_split,
    machine_info,
    measure_selection,
    selection_table,
)
from llama_index.core import VectorStoreIndex
from llama_index.core.objects import ObjectIndex
from llama_index.core.tools import BaseTool, FunctionTool
from llama_index.selectors.synaptoroute import SynaptorouteEmbedding, SynaptorouteToolRetriever

from synaptoroute import Encoder

TOP = 5


def make_tools(intents: Sequence[str]) -> list[BaseTool]:
    """One tool per intent, named after it and described by its name in words."""

    def run(query: str) -> str:
        return query

    return [
        FunctionTool.from_defaults(run, name=intent, description=intent_description(intent))
        for intent in intents
    ]


def names(retrieve: Callable[[str], list[BaseTool]]) -> Callable[[str], list[str]]:
    """A retriever's ``retrieve`` as :func:`measure_selection` takes it: tool names."""
    return lambda text: [str(tool.metadata.name) for tool in retrieve(text)]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the three retrievers on the same rows and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--examples", type=int, default=100, help="train rows per tool")
    parser.add_argument("--limit", type=int, default=0, help="val rows (0: all in scope)")
    args = parser.parse_args(argv)

    machine = f"{machine_info()}, llama-index-core {llama_index.core.__version__}"
    train = by_label(load_split("clinc150", "train", args.data))
    val = [(r.text, r.label) for r in load_split("clinc150", "val", args.data) if r.label]
    rows = val[: args.limit] if args.limit else val
    tools = make_tools(list(train))
    encoder = Encoder()
    encoder.load()
    utterances = {name: texts[: args.examples] for name, texts in train.items()}

    def ours(examples: bool) -> Callable[[], Callable[[str], list[str]]]:
        def build() -> Callable[[str], list[str]]:
            given = utterances if examples else None
            return names(
                SynaptorouteToolRetriever(
                    tools, utterances=given, encoder=encoder, max_tools=TOP
                ).retrieve
            )

        return build

    def object_index() -> Callable[[str], list[str]]:
        index = ObjectIndex.from_objects(
            tools, index_cls=VectorStoreIndex, embed_model=SynaptorouteEmbedding(encoder=encoder)
        )
        return names(index.as_retriever(similarity_top_k=TOP).retrieve)

    results = {
        f"SynaptorouteToolRetriever, names + descriptions + {args.examples} examples per tool": (
            measure_selection(ours(True), rows)
        ),
        "SynaptorouteToolRetriever, names + descriptions only": measure_selection(
            ours(False), rows
        ),
        "ObjectIndex + VectorStoreIndex retriever, same model": measure_selection(
            object_index, rows
        ),
    }

    command = command_line("llamaindex_tool_retrieval.py", argv)
    lines = [
        f"`{command.strip()}`; {machine}. {len(tools)} tools, {len(rows)} in-scope "
        f"CLINC150 val rows, {TOP} tools retrieved per message, bundled all-MiniLM-L6-v2 "
        "INT8 for every retriever; time is `retrieve` per message, embedding included.",
        "",
        *selection_table("retriever", results),
    ]
    print("\n".join(lines))
    print(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
