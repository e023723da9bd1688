"""Where an approximate query's time goes (issue 17).

Opens the SQLite store that ``benchmarks/scale.py`` leaves in ``--cache`` for
``--size`` utterances (``store-<size>/routes.db`` with its graph cache file; the same
``--vectors`` and ``--cache``), with ``index="ann"`` at each ``--depths`` value
(``ann_depth``), and times ``router.query`` over ``--queries`` of scale.py's queries
(zero-cost precomputed encoder: router overhead, as in scale.py). Each query's time is
split into the parts the decision path calls, timed by wrapping them:

- ``sample_stats``: the product with the graph's lost-search sample
  (``AnnGraph.sample_stats``);
- ``search``: the graph's searches (``AnnGraph.search``, all rounds);
- ``full_routes``: re-scoring every row of the candidate routes (``Snapshot._full_routes``);
- ``exact_scan`` and ``exact_rescore``: the exact path's int8 scan and its float32
  re-scoring (``Snapshot._approximate``, ``Snapshot._max_prefiltered``);
- ``other``: the rest (validation, the query cache, the candidates' re-scoring and
  certification, the decision).

Queries are grouped by how they were answered (by the graph, or by the exact path)
and by the number of graph searches they ran; for each group the script prints its
share of the queries and the medians of the total and of each part (ms). A missing
store is built as scale.py builds it (its graph build is the slow part: about 25
minutes at 1M on 2 cores); one that holds other data than the arguments describe
stops the script.

Usage::

    python benchmarks/ann_breakdown.py --vectors text --size 1000000 --depths 128 256 \\
        --cache /tmp/sr-scale
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from common import PrecomputedEncoder, add_data_argument, machine_info
from scale import MODEL, Data, dataset, real_vectors, startup, text_dataset

from synaptoroute import AdaptiveRouter, SQLiteStorage
from synaptoroute import ann as ann_module
from synaptoroute import index as index_module

PARTS: dict[str, tuple[Any, str]] = {
    "sample_stats": (ann_module.AnnGraph, "sample_stats"),
    "search": (ann_module.AnnGraph, "search"),
    "full_routes": (index_module.Snapshot, "_full_routes"),
    "exact_scan": (index_module.Snapshot, "_approximate"),
    "exact_rescore": (index_module.Snapshot, "_max_prefiltered"),
}
WARM = 200  # queries asked before the timed ones (caches, the first compile)


@contextmanager
def timed_parts(spent: dict[str, float], calls: dict[str, int]) -> Iterator[None]:
    """Wrap each of :data:`PARTS` so its seconds and calls add up in ``spent`` and
    ``calls``; the originals are back after the block."""
    originals = {name: getattr(owner, attr) for name, (owner, attr) in PARTS.items()}

    def wrap(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start
                calls[name] += 1

        return wrapper

    for name, (owner, attr) in PARTS.items():
        setattr(owner, attr, wrap(name, originals[name]))
    try:
        yield
    finally:
        for name, (owner, attr) in PARTS.items():
            setattr(owner, attr, originals[name])


def holds(router: AdaptiveRouter, data: Data) -> bool:
    """Whether the opened store holds ``data``'s routes: their count, and the vectors
    of the first, a middle and the last route (a store of other data, or of the same
    data encoded by another model, differs in them)."""
    routes = data.routes()
    if len(router.route_names) != len(routes):
        return False
    for i in (0, len(routes) // 2, len(routes) - 1):
        _, lo, hi = routes[i]
        stored = router._index.vectors_of(f"r{i}")
        wanted = {f"r{i} u{j}": data.rows[lo + j] for j in range(hi - lo)}
        if stored.keys() != wanted.keys() or not all(
            np.allclose(stored[text], vector, atol=1e-6) for text, vector in wanted.items()
        ):
            return False
    return True


def breakdown(
    encoder: PrecomputedEncoder, path: Path, data: Data, texts: list[str], depth: int
) -> dict[str, Any]:
    """Open the store at ``depth`` and split each query's time into :data:`PARTS`."""
    start = time.perf_counter()
    router = AdaptiveRouter(
        encoder,  # type: ignore[arg-type]
        SQLiteStorage(path),
        index="ann",
        cache_size=0,
        ann_depth=depth,
    )
    router.query(texts[0])
    assert router.wait_for_index(timeout=None)
    opened = time.perf_counter() - start
    try:
        if not holds(router, data):
            raise SystemExit(f"{path} holds other data: remove its folder or use another --cache")
        for text in texts[:WARM]:
            router.query(text)
        spent: dict[str, float] = defaultdict(float)
        calls: dict[str, int] = defaultdict(int)
        per_query: list[dict[str, float]] = []
        stats = router.index_stats
        counted = {name: getattr(stats, name) for name in ("ann_fallbacks", "ann_hard", "ann_lost")}
        with timed_parts(spent, calls):
            for text in texts:
                before, before_calls = dict(spent), dict(calls)
                fallbacks = stats.ann_fallbacks
                t0 = time.perf_counter()
                router.query(text)
                total = time.perf_counter() - t0
                parts = {name: spent[name] - before.get(name, 0.0) for name in PARTS}
                parts["total"] = total
                parts["other"] = total - sum(parts[name] for name in PARTS)
                parts["searches"] = calls["search"] - before_calls.get("search", 0)
                parts["exact"] = stats.ann_fallbacks - fallbacks
                per_query.append(parts)
        counted = {name: getattr(stats, name) - value for name, value in counted.items()}
    finally:
        router.close()
    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    for parts in per_query:
        path_taken = "exact path" if parts["exact"] else "graph"
        groups[f"{path_taken}, {int(parts['searches'])} search(es)"].append(parts)
    totals = [parts["total"] for parts in per_query]
    out: dict[str, Any] = {
        "ann_depth": depth,
        "opened_s": round(opened, 1),
        "queries": len(per_query),
        "total_p50_ms": round(1000 * float(np.median(totals)), 3),
        "total_mean_ms": round(1000 * float(np.mean(totals)), 3),
        **counted,  # the timed queries' own
    }
    for key in sorted(groups):
        rows = groups[key]
        out[key] = {"share": round(len(rows) / len(per_query), 4)} | {
            f"{name}_p50_ms": round(1000 * float(np.median([r[name] for r in rows])), 3)
            for name in ("total", *PARTS, "other")
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--depths", type=int, nargs="+", default=[ann_module.DEFAULT_DEPTH])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/sr-scale"))
    parser.add_argument("--vectors", choices=("noisy", "text"), default="noisy")
    add_data_argument(parser)
    args = parser.parse_args()
    print(machine_info(), f"size {args.size}, vectors {args.vectors}", flush=True)
    if args.vectors == "text":
        data = text_dataset(args.size, args.queries, args.cache, args.data)
    else:
        data = dataset(real_vectors(args.cache), args.size, args.queries)
    texts = [f"q{i}" for i in range(len(data.asked))]
    encoder = PrecomputedEncoder(MODEL, dict(zip(texts, data.asked, strict=True)))
    folder = args.cache / f"store-{args.size}"
    path = folder / "routes.db"
    if not path.with_name(path.name + ".ann").is_file():
        print("building the store and its graph:", startup(encoder, data, folder), flush=True)
    for depth in args.depths:
        print(json.dumps(breakdown(encoder, path, data, texts, depth), indent=1), flush=True)


if __name__ == "__main__":
    main()
