"""The approximate graph's settings (issue 17): vector type, construction depth and
search rounds.

For the data of ``benchmarks/scale.py`` at ``--size`` utterances (``--vectors noisy``:
noisy copies of the bundled model's embeddings of the fixture texts; ``text``: real
text encoded by the bundled model, as ``scale.py --vectors text``; ``text_unseen``: the
same without SNIPS's seven routes, ``--queries`` of their train rows asked, a domain no
route covers and no val text), builds the usearch
graph with each vector type (``f16`` with the inner product, the 0.2 choice; ``i8``
with cosine, the current one) and each construction depth (``--expansions``, HNSW
``ef_construction``; default the library's ``ann.EXPANSION_ADD``), and reports, per graph:

- the build time and usearch's ``memory_usage`` per utterance;
- for each (rows, depth): the search alone (p50, one thread) and how often the true
  nearest row is among the rows returned;
- for each ``ann_depth`` (the router's option; its rounds are ``ann.rounds_for``),
  with and without the lost-search check (the floor of ``AnnGraph.sample_stats`` and the deeper round it
  calls for; which of the two runs first alternates from one depth to the next, so the
  order does not favour either): ``Snapshot.score`` p50, p99 and mean (the search, the float32
  re-scoring and the certification, with the BLAS threads the router would allow;
  router overhead excluded), how often its top
  route is the brute-force one over ``--queries`` queries, the rounds found lost, the
  queries that took the exact path, the graph searches per query
  (``IndexStats.ann_searches``) and the mean time of the queries the graph answered
  and of those it sent to the exact path; for the queries where the route is not the
  brute-force one, the medians of the true nearest row's similarity and of the
  answer's score;
- for each ``--margins`` value (``Snapshot.ann_margin``: best two routes closer than
  it send the query to the exact path; default the library's ``ann.CLOSE_MARGIN``),
  the same per ``ann_depth``;
- for each ``--contrasts`` value (``Snapshot.ann_contrast``: a certified first round
  whose best row stands fewer deviations than it above the mean of the graph's sample
  gets the second round; default the library's ``ann.HARD_CONTRAST``, 0 turns it off),
  the same, with the count of first rounds it confirmed. ``--lost-check on`` skips
  the runs without the lost-search check;
- for each ``--samples`` value (the most rows in the graph's lost-search sample, one
  in ``ann.LOST_EVERY`` below it; default the library's ``ann.LOST_SAMPLE``), the
  same on a graph object sharing the built graph with a sample of that size.

Usage::

    python benchmarks/ann_settings.py [--size 100000] [--queries 5000]
        [--vectors noisy|text|text_unseen] [--types i8] [--expansions 128 256]
        [--depths 128] [--margins 0 0.02] [--contrasts 0 6] [--lost-check both|on]
        [--samples 4096 1024]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from common import machine_info
from scale import dataset, real_vectors, text_dataset, unseen_dataset
from threadpoolctl import threadpool_limits

import synaptoroute.ann as ann
from synaptoroute._cpu import blas_threads
from synaptoroute.index import RouteIndex

SEARCHES = ((64, 128), (128, 128), (32, 64), (16, 32))
DEPTHS = (64, 128, 192, 256)  # the router's ann_depth
TYPES = {"f16": "ip", "i8": "cos"}


@contextmanager
def floor_checked(on: bool) -> Iterator[None]:
    """With ``on`` false, no search is ever found lost (the floor of
    ``AnnGraph.sample_stats`` is -inf; its mean and deviation stay)."""
    real = ann.AnnGraph.sample_stats

    def no_floor(self: ann.AnnGraph, queries: Any) -> Any:
        stats = real(self, queries)
        stats[:, 0] = -np.inf
        return stats

    if not on:
        ann.AnnGraph.sample_stats = no_floor  # type: ignore[method-assign]
    try:
        yield
    finally:
        ann.AnnGraph.sample_stats = real  # type: ignore[method-assign]


def check_orders(depths: list[int]) -> Iterator[tuple[int, bool]]:
    """(ann_depth, lost check on) pairs, the check's run first at every other depth."""
    for i, depth in enumerate(depths):
        for lost_check in (True, False) if i % 2 == 0 else (False, True):
            yield depth, lost_check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/sr-scale"))
    parser.add_argument("--types", nargs="+", choices=sorted(TYPES), default=sorted(TYPES))
    parser.add_argument("--vectors", choices=("noisy", "text", "text_unseen"), default="noisy")
    parser.add_argument("--data", help="the datasets' folder for --vectors text")
    parser.add_argument("--expansions", nargs="+", type=int, default=[ann.EXPANSION_ADD])
    parser.add_argument("--depths", nargs="+", type=int, default=list(DEPTHS))
    parser.add_argument("--margins", nargs="+", type=float, default=[ann.CLOSE_MARGIN])
    parser.add_argument("--contrasts", nargs="+", type=float, default=[ann.HARD_CONTRAST])
    parser.add_argument("--lost-check", choices=("both", "on"), default="both")
    parser.add_argument("--samples", nargs="+", type=int, default=[ann.LOST_SAMPLE])
    args = parser.parse_args()
    print(machine_info())
    if args.vectors == "text":
        data = text_dataset(args.size, args.queries, args.cache, args.data)
    elif args.vectors == "text_unseen":  # SNIPS's routes left out, their rows asked
        data = text_dataset(args.size, args.queries, args.cache, args.data)
        data = unseen_dataset(data, "snips", args.queries)
    else:
        data = dataset(real_vectors(args.cache), args.size, args.queries)
    rows, asked = data.rows, data.asked
    nearest = np.empty(len(asked), dtype=np.int64)
    for start in range(0, len(asked), 500):
        nearest[start : start + 500] = np.argmax(asked[start : start + 500] @ rows.T, axis=1)
    truth = data.route_of(nearest)  # route ids follow insertion order
    nearest_sim = (asked * rows[nearest]).sum(axis=1)
    usearch = ann.load_usearch()
    for dtype, expansion in [(t, e) for t in args.types for e in args.expansions]:
        metric = TYPES[dtype]

        def new_graph(
            ndim: int, dtype: str = dtype, metric: str = metric, expansion: int = expansion
        ) -> Any:
            return usearch.Index(
                ndim=ndim,
                metric=metric,
                dtype=dtype,
                connectivity=ann.CONNECTIVITY,
                expansion_add=expansion,
            )

        ann._new_graph = new_graph  # type: ignore[assignment]
        index = RouteIndex(rows.shape[1], ann_min_rows=1)
        for r, lo, hi in data.routes():
            index.add(f"r{r}", rows[lo:hi], [f"r{r} u{j}" for j in range(hi - lo)])
        start = time.perf_counter()
        snapshot = index.snapshot()
        assert index.wait_for_ann(None)
        build = time.perf_counter() - start
        snapshot = index.snapshot()
        graph = snapshot.ann
        assert graph is not None
        out: dict[str, Any] = {
            "type": f"{dtype} ({metric})",
            "vectors": args.vectors,
            "construction_depth": expansion,
            "build_s": round(build, 1),
            "graph_bytes_per_utterance": round(graph.memory_bytes / len(rows), 1),
        }
        for count, depth in SEARCHES:
            times, found = [], 0
            for q, query in enumerate(asked):
                start = time.perf_counter()
                keys, _ = graph.search(query, count, depth)
                times.append(time.perf_counter() - start)
                found += int(nearest[q] in keys)
            out[f"search {count}/{depth}"] = {
                "p50_ms": round(float(np.median(times)) * 1000, 3),
                "nearest_row_found": found / len(asked),
            }
        # The same graph under each sample size (the lost-search floor and the spread).
        sampled = {
            size: ann.AnnGraph(graph._graph, snapshot.matrix[: graph.covered], sample=size)
            for size in args.samples
        }
        for margin, contrast, size, (depth, lost_check) in [
            (m, c, s, order)
            for m in args.margins
            for c in args.contrasts
            for s in args.samples
            for order in check_orders(args.depths)
            if order[1] or args.lost_check == "both"
        ]:
            rounds = ann.rounds_for(depth)
            if not lost_check:  # as before the sample's floor: no lost round
                rounds = rounds[: ann.LOST_ROUND]
            deep = dataclasses.replace(
                snapshot,
                ann=sampled[size],
                ann_rounds=rounds,
                ann_margin=margin,
                ann_contrast=contrast,
            )
            times, agree, missed, fell_back = [], 0, [], []
            stats = index.stats
            stats.ann_lost = stats.ann_fallbacks = stats.ann_searches = stats.ann_hard = 0
            # BLAS threads as the router budgets them for this snapshot (its _score).
            threads = blas_threads(deep.blas_rows)
            with floor_checked(lost_check), threadpool_limits(threads, user_api="blas"):
                for q, query in enumerate(asked):
                    fallbacks = stats.ann_fallbacks
                    start = time.perf_counter()
                    got = deep.score(query[None], 2)[0]
                    times.append(time.perf_counter() - start)
                    fell_back.append(stats.ann_fallbacks > fallbacks)
                    if int(got.route_ids[0]) == int(truth[q]):
                        agree += 1
                    else:
                        missed.append((float(nearest_sim[q]), float(got.scores[0])))
            taken, exact = np.asarray(times), np.asarray(fell_back)
            check = "with" if lost_check else "without"
            label = f"ann_depth {depth}, {check} the lost check: rounds {rounds}"
            if args.margins != [ann.CLOSE_MARGIN]:
                label += f", close margin {margin}"
            if args.contrasts != [ann.HARD_CONTRAST]:
                label += f", hard contrast {contrast}"
            if args.samples != [ann.LOST_SAMPLE]:
                label += f", sample of {sampled[size].sample_rows} rows"
            out[label] = {
                "score_p50_p99_mean_ms": [
                    round(float(v) * 1000, 3)
                    for v in (np.median(times), np.quantile(times, 0.99), np.mean(times))
                ],
                "route_agreement": agree / len(asked),
                "lost_rounds": stats.ann_lost,
                "hard_first_rounds_confirmed": stats.ann_hard,
                "exact_fallbacks": stats.ann_fallbacks,
                "graph_searches_per_query": round(stats.ann_searches / len(asked), 3),
                # Where the time goes: queries the graph answered, and those it sent
                # to the exact path after its rounds.
                "mean_ms_answered_fallen_back": [
                    round(float(np.mean(part)) * 1000, 3) if len(part) else None
                    for part in (taken[~exact], taken[exact])
                ],
                # How far a wrong answer is from the query's true neighbourhood: a
                # near-tie (answer just below) or a search lost elsewhere (far below).
                "misses: nearest row's similarity, the answer's (medians)": [
                    round(float(np.median([m[i] for m in missed])), 3) if missed else None
                    for i in (0, 1)
                ],
            }
        print(json.dumps(out, indent=1), flush=True)


if __name__ == "__main__":
    main()
