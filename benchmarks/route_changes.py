"""What a change to the stored routes costs the index at a size (issue 17: adds and deletes).

A :class:`~synaptoroute.index.RouteIndex` of N utterances in routes of 10 (random unit
vectors: the work measured here does not depend on their values; exact scoring, no
int8 copy and no graph, so nothing else runs), then, repeated ``--repeat`` times on
different routes, each change followed by the compile the next query would do
(``RouteIndex.snapshot()``):

- ``add_route``: a new route of 10 utterances;
- ``add_utterances``: two more utterances for a stored route (its rows then lie in
  two places);
- ``delete_utterance``: one utterance from the middle of a stored route;
- ``delete_route``: a stored route.

Each line gives the medians of the call and of the compile after it, in ms. This is
the index's bookkeeping only (the segment tables and the snapshot); ``scale.py`` times
the same changes through the router, with the graph and the first query after each.

Usage::

    python benchmarks/route_changes.py [--sizes 100000 1000000] [--repeat 50]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
from common import machine_info
from scale import PER_ROUTE

from synaptoroute.index import RouteIndex

DIM = 384  # the bundled model's


def build(n: int, rng: np.random.Generator) -> RouteIndex:
    """An exact index of ``n`` rows in routes of :data:`PER_ROUTE`, compiled once."""
    index = RouteIndex(DIM, int8_min_rows=None, capacity=n + 1024)
    block = rng.standard_normal((PER_ROUTE, DIM)).astype(np.float32)
    block /= np.linalg.norm(block, axis=1, keepdims=True)
    texts = [f"u{j}" for j in range(PER_ROUTE)]
    index.load([(f"r{i}", block, texts) for i in range(n // PER_ROUTE)])
    index.snapshot()
    return index


def timed(change: Callable[[], object], index: RouteIndex) -> tuple[float, float]:
    """Milliseconds of ``change()`` and of the compile after it."""
    start = time.perf_counter()
    change()
    mid = time.perf_counter()
    index.snapshot()
    return 1e3 * (mid - start), 1e3 * (time.perf_counter() - mid)


def run_size(n: int, repeat: int) -> dict[str, object]:
    rng = np.random.default_rng(0)
    index = build(n, rng)
    routes = n // PER_ROUTE
    picks = rng.choice(routes, size=4 * repeat, replace=False).tolist()
    extra = rng.standard_normal((PER_ROUTE, DIM)).astype(np.float32)
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    changes: dict[str, Callable[[int, int], object]] = {
        "add_route": lambda i, _: index.add(f"new{i}", extra, [f"n{j}" for j in range(PER_ROUTE)]),
        "add_utterances": lambda i, r: index.add(f"r{r}", extra[:2], [f"more{i}a", f"more{i}b"]),
        "delete_utterance": lambda _, r: index.delete_texts(f"r{r}", [f"u{PER_ROUTE // 2}"]),
        "delete_route": lambda _, r: index.delete_route(f"r{r}"),
    }
    out: dict[str, object] = {"utterances": n, "routes": routes}
    for k, (name, change) in enumerate(changes.items()):
        times = [
            timed(lambda i=i, r=r, change=change: change(i, r), index)
            for i, r in enumerate(picks[k * repeat : (k + 1) * repeat])
        ]
        call, compile_ = zip(*times, strict=True)
        out[name] = {
            "call_ms": round(float(np.median(call)), 3),
            "compile_ms": round(float(np.median(compile_)), 3),
        }
    out["full_compiles"] = index.stats.full_compiles
    out["full_rebuilds"] = index.stats.full_rebuilds
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    fewest = 4 * args.repeat * PER_ROUTE  # each repeat changes four distinct routes
    if min(args.sizes) < fewest:
        parser.error(f"--sizes must be at least {fewest:,} with --repeat {args.repeat}")
    print(machine_info())
    for n in args.sizes:
        print(json.dumps(run_size(n, args.repeat)))


if __name__ == "__main__":
    main()
