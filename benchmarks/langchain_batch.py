"""LangChain ``batch`` throughput: SynaptorouteRouter vs the docs' RunnableLambda cosine recipe.

Both Runnables route the same distinct CLINC150 val inputs (in scope and out of scope)
between 150 branches, with the same model (the bundled encoder; the recipe reaches it
through ``SynaptorouteEmbeddings``), in one process, alternating, each run timed with
an empty query cache. The recipe is the one from the LangChain docs ("routing by
semantic similarity"): ``RunnableLambda`` embeds the query with ``embed_query``, takes
the cosine argmax over one vector per route, and returns that route's Runnable; it has
no threshold and no fallback. We give it the centroid of each route's examples, its
best case. Branches are identical trivial Runnables, so the time is the routing.

Run: .venv/bin/python benchmarks/langchain_batch.py [--inputs 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from statistics import median
from time import perf_counter, process_time
from typing import Any

import numpy as np
from common import add_data_argument, command_line, load_split, machine_info
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_synaptoroute import SynaptorouteEmbeddings, SynaptorouteRouter
from numpy.typing import NDArray

from synaptoroute import Encoder

FALLBACK = "(fallback)"


def cosine_similarity(x: Any, y: Any) -> NDArray[np.float64]:
    """Row-wise cosine similarity, as ``langchain_community.utils.math`` computes it."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    norms = np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))
    return np.asarray((a @ b.T) / norms)


def branch(name: str) -> Runnable[Any, str]:
    """What each route runs: trivial, so the benchmark measures the routing."""
    return RunnableLambda(lambda x: name)


def build_inputs(n: int, seed: int) -> tuple[list[str], list[str | None]]:
    """``n`` distinct val texts: all 100 out-of-scope rows, the rest in scope, shuffled."""
    val = load_split("clinc150", "val", ARGS.data)
    rng = random.Random(seed)
    oos = [r for r in val if r.label is None]
    in_scope = [r for r in val if r.label is not None]
    rng.shuffle(in_scope)
    chosen: dict[str, str | None] = {}
    for row in oos[: n // 10] + in_scope:
        if len(chosen) == n:
            break
        chosen.setdefault(row.text, row.label)
    items = list(chosen.items())
    rng.shuffle(items)
    return [t for t, _ in items], [label for _, label in items]


def main() -> None:
    """Build both Runnables, time ``batch`` on the same inputs, print Markdown."""
    encoder = Encoder(spin=not ARGS.no_spin)
    embeddings = SynaptorouteEmbeddings(encoder=encoder)
    train = load_split("clinc150", "train", ARGS.data)
    examples: dict[str, list[str]] = {}
    spare: list[str] = []  # train texts left over, for warm-up
    for row in train:
        if row.label is None:
            continue
        bucket = examples.setdefault(row.label, [])
        (bucket if len(bucket) < ARGS.per_intent else spare).append(row.text)
    texts, labels = build_inputs(ARGS.inputs, ARGS.seed)
    if len(set(texts)) != len(texts) or len(texts) != ARGS.inputs:
        sys.exit(f"wanted {ARGS.inputs} distinct inputs, got {len(set(texts))}")
    inputs = [{"query": t} for t in texts]
    branches = {name: branch(name) for name in examples}

    ours = SynaptorouteRouter.from_branches(
        {name: (utts, branches[name]) for name, utts in examples.items()},
        default=branch(FALLBACK),
        input_key="query",
        encoder=encoder,
    )

    names = list(examples)
    centroids = np.stack(
        [np.mean(embeddings.embed_documents(examples[name]), axis=0) for name in names]
    )

    def prompt_router(x: dict[str, str]) -> Runnable[Any, str]:
        query_embedding = embeddings.embed_query(x["query"])
        similarity = cosine_similarity([query_embedding], centroids)[0]
        return branches[names[int(similarity.argmax())]]

    recipe: Runnable[Any, str] = RunnableLambda(prompt_router)

    warm = [{"query": t} for t in spare[:32]]
    ours.batch(warm)
    recipe.batch(warm)

    runs: dict[str, list[float]] = {"synaptoroute": [], "recipe": []}
    cpu: dict[str, list[float]] = {"synaptoroute": [], "recipe": []}
    outputs: dict[str, list[str]] = {}
    for rep in range(ARGS.repeats):
        order = ["synaptoroute", "recipe"] if rep % 2 == 0 else ["recipe", "synaptoroute"]
        for which in order:
            ours.router.cache.clear()  # every input is new to the router on every run
            runnable: Runnable[Any, str] = ours if which == "synaptoroute" else recipe
            start, start_cpu = perf_counter(), process_time()
            outputs[which] = runnable.batch(inputs)
            runs[which].append(perf_counter() - start)
            cpu[which].append(process_time() - start_cpu)

    n = len(inputs)
    ratios = [a / b for a, b in zip(runs["recipe"], runs["synaptoroute"], strict=True)]
    best_ratio = min(runs["recipe"]) / min(runs["synaptoroute"])
    oos_rows = [i for i, label in enumerate(labels) if label is None]
    in_rows = [i for i, label in enumerate(labels) if label is not None]

    def accuracy(out: list[str]) -> tuple[float, float, float]:
        hit = sum(out[i] == labels[i] for i in in_rows) / len(in_rows)
        lost = sum(out[i] == FALLBACK for i in in_rows) / len(in_rows)
        fell_back = sum(out[i] == FALLBACK for i in oos_rows) / len(oos_rows)
        return hit, lost, fell_back

    print(f"### {n} distinct inputs through `batch` ({len(in_rows)} in scope, {len(oos_rows)} out)")
    print()
    print(f"Machine: {machine_info()}")
    print(f"Command: `{command_line('langchain_batch.py')}`")
    print(
        f"Routes: {len(names)} CLINC150 intents x {ARGS.per_intent} train examples; "
        f"{ARGS.repeats} timed runs of each Runnable, alternating; "
        f"Encoder(spin={not ARGS.no_spin}) shared by both"
    )
    print()
    print(
        "| Runnable | inputs/s, best run | inputs/s, median | wall s per run | CPU s per run "
        "(median) | in scope: right branch | in scope: to fallback | out of scope: to fallback |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for which, label in (
        ("synaptoroute", "`SynaptorouteRouter.batch` (threshold 0.5, default branch)"),
        ("recipe", "docs recipe: `RunnableLambda` cosine argmax, `.batch`"),
    ):
        hit, lost, fell_back = accuracy(outputs[which])
        secs = ", ".join(f"{s:.2f}" for s in runs[which])
        print(
            f"| {label} | {n / min(runs[which]):.0f} | {n / median(runs[which]):.0f} | {secs} "
            f"| {median(cpu[which]):.2f} | {hit:.1%} | {lost:.1%} | {fell_back:.1%} |"
        )
    candidates = ours.router.query_batch(texts)
    top1 = sum(candidates[i].candidate == labels[i] for i in in_rows) / len(in_rows)
    print()
    print(
        f"Throughput ratio (recipe wall time / synaptoroute wall time): best runs "
        f"{best_ratio:.2f}x; per run {', '.join(f'{r:.2f}x' for r in ratios)} "
        f"(median {median(ratios):.2f}x). CPU time of the process (all threads), recipe / "
        f"synaptoroute, medians: {median(cpu['recipe']) / median(cpu['synaptoroute']):.2f}x."
    )
    print(
        f"SynaptorouteRouter's top-1 candidate before the threshold is right for {top1:.1%} "
        "of in-scope inputs; the threshold trades some of them for the out-of-scope fallback."
    )
    if ARGS.json:
        with open(ARGS.json, "w", encoding="utf-8") as fh:
            json.dump({"wall_s": runs, "cpu_s": cpu, "ratios": ratios, "inputs": n}, fh, indent=2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--inputs", type=int, default=1000, help="distinct inputs to route")
    parser.add_argument("--per-intent", type=int, default=10, help="examples per route")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each Runnable")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-spin",
        action="store_true",
        help="Encoder(spin=False): ONNX Runtime threads sleep between calls (both Runnables)",
    )
    parser.add_argument("--json", default=None, help="also write the timings here")
    ARGS = parser.parse_args()
    main()
