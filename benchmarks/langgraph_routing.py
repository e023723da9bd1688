"""LangGraph routing step: the supervisor example's ``SynaptorouteNode`` vs a bare ``router.query``.

Builds the graph of ``examples/langgraph_supervisor.py`` (supervisor node, three
fake-model agents, a fallback, an in-memory checkpointer) and, in one process,
alternating per question, times:

- ``router.query(text)``: the bare router;
- ``supervisor.invoke(state)``: the routing step as a Runnable (reading the last human
  message, the query, the decision dict, the ``Command``, LangChain's run bookkeeping);
- the whole graph with that supervisor minus the same graph whose supervisor is a
  hand-written node returning the precomputed ``Command`` (so the difference is what
  routing adds inside LangGraph), paired per question, p50 of the differences; once
  with LangGraph's default ``durability="async"`` (the checkpoint of one step is
  written in a background thread while the next runs) and once with ``"sync"``.

Two modes: ``encode`` (query cache off: every call runs the model) and ``cached`` (the
router's query cache holds the text: what is left is the routing overhead itself).
The target: the routing step's p50 at most 1 ms above the bare query's.

Run: .venv/bin/python benchmarks/langgraph_routing.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from time import perf_counter
from typing import Any

from common import REPO_ROOT, machine_info, summarize_ms
from langchain_core.messages import HumanMessage
from langgraph.types import Command

from synaptoroute import AdaptiveRouter, Route

sys.path.insert(0, str(REPO_ROOT / "examples"))
from langgraph_supervisor import AGENTS, QUESTIONS, build_graph, build_supervisor


def timed(fn: Callable[[], object]) -> float:
    """Milliseconds one call of ``fn`` takes."""
    start = perf_counter()
    fn()
    return (perf_counter() - start) * 1000


def run_mode(cache_size: int, rounds: int) -> dict[str, dict[str, float]]:
    """Time the measures over ``rounds`` passes of the example's questions."""
    router = AdaptiveRouter(cache_size=cache_size)
    router.add_routes(Route(name=name, utterances=utts) for name, (utts, _, _) in AGENTS.items())
    app, supervisor = build_supervisor(router)
    nodes = {q: supervisor.routing.node_of(router.query(q)) for q in QUESTIONS}
    fixed_app = build_graph(
        lambda state: Command(goto=nodes[_last(state)]), supervisor.destinations
    )
    threads = iter(range(10**9))  # a fresh checkpointer thread per graph run

    def one(text: str) -> tuple[float, ...]:
        state = {"messages": [HumanMessage(text)]}
        configs: list[Any] = [{"configurable": {"thread_id": str(next(threads))}} for _ in "1234"]
        return (
            timed(lambda: router.query(text)),
            timed(lambda: supervisor.invoke(state)),
            timed(lambda: app.invoke(state, configs[0])),
            timed(lambda: fixed_app.invoke(state, configs[1])),
            timed(lambda: app.invoke(state, configs[2], durability="sync")),
            timed(lambda: fixed_app.invoke(state, configs[3], durability="sync")),
        )

    for text in QUESTIONS:  # warm every path up
        one(text)
    runs = [one(text) for _ in range(rounds) for text in QUESTIONS]
    return {
        "router.query": summarize_ms([t[0] for t in runs]),
        "SynaptorouteNode.invoke": summarize_ms([t[1] for t in runs]),
        "in graph (routed - fixed)": summarize_ms([t[2] - t[3] for t in runs]),
        "in graph, durability=sync": summarize_ms([t[4] - t[5] for t in runs]),
    }


def _last(state: Any) -> str:
    return str(state["messages"][-1].text)


def main() -> None:
    """Run both modes and print a table and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="passes over the 4 questions")
    args = parser.parse_args()
    print(machine_info())
    out: dict[str, Any] = {}
    for mode, cache_size in (("encode", 0), ("cached", 10_000)):
        results = run_mode(cache_size, args.rounds)
        out[mode] = results
        bare = results["router.query"]["p50"]
        print(f"\n{mode}: {args.rounds * len(QUESTIONS)} calls each, p50 / p99 ms")
        for name, stats in results.items():
            above = stats["p50"] - bare
            print(
                f"  {name:28} {stats['p50']:7.3f} / {stats['p99']:7.3f}   p50 {above:+.3f} vs bare"
            )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
