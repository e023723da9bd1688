"""Zero-token tool selection (issue 12): CLINC150's 150 intents as 150 agent tools.

Each intent becomes a LangChain tool named after it (``book_flight``), described only
by its name in words (CLINC150 has no descriptions: "Tool for: book flight"). The
selector is ``SynaptorouteToolSelectorMiddleware`` with ``max_tools=5`` (the number
of tools an agent would bind), measured through ``select_tools``, the function its
``wrap_model_call`` runs, on every in-scope CLINC150 val row:

* recall@k: the row's intent is among the ``k`` tools selected (k = 1, 3, 5);
* selection time per message (wall, ``perf_counter``; the message is embedded by the
  bundled model, each val text once, so no cache hit), p50 and p99.

Side by side in the same run, on the same rows: the selector with up to
``--examples`` train rows per tool as ``utterances``, and the same selector with only
the tools' names and descriptions. Routes are built before timing (the first model
call builds them; later calls reuse them).

Run: .venv/bin/python benchmarks/tool_selection.py [--examples 100] [--limit 0] [--write]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

from common import (
    add_data_argument,
    by_label,
    command_line,
    intent_description,
    load_split,
    machine_info,
    measure_selection,
    replace_section,
    selection_table,
)
from langchain_core.tools import BaseTool, StructuredTool
from langchain_synaptoroute import SynaptorouteToolSelectorMiddleware

from synaptoroute import Encoder

SECTION = "## Tool selection for agents: CLINC150 as 150 tools (issue 12)"
MAX_TOOLS = 5


def make_tools(intents: Sequence[str]) -> list[BaseTool]:
    """One tool per intent, named after it and described by its name in words."""

    def run(query: str) -> str:
        return query

    return [
        StructuredTool.from_function(run, name=intent, description=intent_description(intent))
        for intent in intents
    ]


def selection(
    selector: SynaptorouteToolSelectorMiddleware, tools: list[BaseTool]
) -> Callable[[], Callable[[str], list[str]]]:
    """What :func:`measure_selection` builds and times: ``selector``'s routes (the
    first model call builds them; later calls reuse them), then its selection."""

    def build() -> Callable[[str], list[str]]:
        selector.select_tools("warm up: build the routes", tools)
        return lambda text: selector.select_tools(text, tools)

    return build


def main(argv: Sequence[str] | None = None) -> int:
    """Run both selectors on the same rows and print (optionally write) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--examples", type=int, default=100, help="train rows per tool")
    parser.add_argument("--limit", type=int, default=0, help="val rows (0: all in scope)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)

    machine = machine_info()
    train = by_label(load_split("clinc150", "train", args.data))
    val = [(r.text, r.label) for r in load_split("clinc150", "val", args.data) if r.label]
    rows = val[: args.limit] if args.limit else val
    tools = make_tools(list(train))
    encoder = Encoder()
    encoder.load()

    results: dict[str, dict[str, Any]] = {}
    with_examples = SynaptorouteToolSelectorMiddleware(
        encoder=encoder,
        max_tools=MAX_TOOLS,
        utterances={name: texts[: args.examples] for name, texts in train.items()},
    )
    names_only = SynaptorouteToolSelectorMiddleware(encoder=encoder, max_tools=MAX_TOOLS)
    results[f"names + descriptions + {args.examples} examples per tool"] = measure_selection(
        selection(with_examples, tools), rows
    )
    results["names + descriptions only"] = measure_selection(selection(names_only, tools), rows)

    command = command_line("tool_selection.py", argv)
    lines = [
        SECTION,
        "",
        f"`{command.strip()}`; {machine}. {len(tools)} tools, {len(rows)} in-scope "
        f"CLINC150 val rows, max_tools={MAX_TOOLS}, bundled all-MiniLM-L6-v2 INT8; "
        "selection time is `select_tools` (the body of `wrap_model_call`) per message, "
        "embedding included.",
        "",
        *selection_table("tool examples", results),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    print(json.dumps(results, indent=1, default=str))
    if args.write:
        replace_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
