"""LangGraph routing step: the supervisor example's ``SynaptorouteNode`` vs a bare ``router.query``.

Builds the graph of ``examples/langgraph_supervisor.py`` (supervisor node, three
fake-model agents, a fallback, an in-memory checkpointer) and, in one process,
alternating per question, times:

- ``router.query(text)``: the bare router;
- ``supervisor.invoke(state)``: the routing step as a Runnable (reading the last human
  message, the query, the decision dict, the ``Command``, LangChain's run bookkeeping);
- the routing step inside the graph: the same node, wrapped in a node that times its
  call (LangGraph runs a lone task in the caller's thread, with the graph's config);
- the whole graph with that supervisor minus the same graph whose supervisor is a
  hand-written node returning the precomputed ``Command`` (so the difference is what
  routing adds inside LangGraph), paired per question, p50 of the differences; once
  with LangGraph's default ``durability="async"`` (the checkpoint of one step is
  written in a background thread while the next runs) and once with ``"sync"``.

Two modes: ``encode`` (query cache off: every call runs the model) and ``cached`` (the
router's query cache holds the text: what is left is the routing overhead itself).
The target: the routing step's p50 at most 1 ms above the bare query's.

Run: .venv/bin/python benchmarks/langgraph_routing.py [--rounds 200] [--no-spin]
(``--no-spin``: ``Encoder(spin=False)``).
"""

from __future__ import annotations

import argparse
import json
import sys
from time import perf_counter
from typing import Any

from common import REPO_ROOT, machine_info, summarize_ms, time_ms
from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.types import Command

from synaptoroute import AdaptiveRouter, Encoder, Route

sys.path.insert(0, str(REPO_ROOT / "examples"))
from langgraph_supervisor import AGENTS, QUESTIONS, build_graph, build_supervisor


def run_mode(encoder: Encoder, cache_size: int, rounds: int) -> dict[str, dict[str, float]]:
    """Time the measures over ``rounds`` passes of the example's questions."""
    router = AdaptiveRouter(encoder, cache_size=cache_size)
    router.add_routes(Route(name=name, utterances=utts) for name, (utts, _, _) in AGENTS.items())
    app, supervisor = build_supervisor(router)
    nodes = {q: supervisor.routing.node_of(router.query(q)) for q in QUESTIONS}
    fixed_app = build_graph(
        lambda state: Command(goto=nodes[_last(state)]), supervisor.destinations
    )
    inside: list[float] = []

    def timed_supervisor(state: Any, config: RunnableConfig) -> Any:
        start = perf_counter()
        out = supervisor.invoke(state, config)
        inside.append((perf_counter() - start) * 1000)
        return out

    timed_app = build_graph(RunnableLambda(timed_supervisor), supervisor.destinations)
    threads = iter(range(10**9))  # a fresh checkpointer thread per graph run

    def one(text: str) -> tuple[float, ...]:
        state = {"messages": [HumanMessage(text)]}
        configs: list[Any] = [{"configurable": {"thread_id": str(next(threads))}} for _ in "12345"]
        timed_app.invoke(state, configs[4])
        return (
            time_ms(lambda: router.query(text)),
            time_ms(lambda: supervisor.invoke(state)),
            inside[-1],
            time_ms(lambda: app.invoke(state, configs[0])),
            time_ms(lambda: fixed_app.invoke(state, configs[1])),
            time_ms(lambda: app.invoke(state, configs[2], durability="sync")),
            time_ms(lambda: fixed_app.invoke(state, configs[3], durability="sync")),
        )

    for text in QUESTIONS:  # warm every path up
        one(text)
    runs = [one(text) for _ in range(rounds) for text in QUESTIONS]
    return {
        "router.query": summarize_ms([t[0] for t in runs]),
        "SynaptorouteNode.invoke": summarize_ms([t[1] for t in runs]),
        "routing step in the graph": summarize_ms([t[2] for t in runs]),
        "graph (routed - fixed)": summarize_ms([t[3] - t[4] for t in runs]),
        "graph, durability=sync": summarize_ms([t[5] - t[6] for t in runs]),
    }


def _last(state: Any) -> str:
    return str(state["messages"][-1].text)


def main() -> None:
    """Run both modes and print a table and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="passes over the 4 questions")
    parser.add_argument(
        "--no-spin",
        action="store_true",
        help="Encoder(spin=False): ONNX Runtime threads sleep between calls instead of "
        "spin-waiting, leaving the cores to the graph's own work",
    )
    args = parser.parse_args()
    encoder = Encoder(spin=not args.no_spin)
    print(machine_info(), f"Encoder(spin={not args.no_spin})")
    out: dict[str, Any] = {}
    for mode, cache_size in (("encode", 0), ("cached", 10_000)):
        results = run_mode(encoder, cache_size, args.rounds)
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
