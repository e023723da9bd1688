"""Approximate search past a size (issue 17): overhead, agreement, adds, start-up, memory.

For each size N (``--sizes``, default 100000), the same routes are served by a router
with ``index="exact"`` (float32 + the int8 pre-filter) and one with ``index="ann"``
(the usearch graph, docs/scale.md), in the same run:

- router overhead per query: ``router.query(text)`` with a zero-cost precomputed
  encoder (validation, cache, scoring, decision; the encoder excluded), p50 and p99;
- agreement of the approximate router's route with the exact router's: of the
  decision (``agreement``: a query both leave unrouted agrees) and of the route each
  ranked first whether or not it passed (``candidate_agreement``), and the share of
  queries the graph answered itself (the rest took the exact path); our overhead
  over the peer's queries too (``*_overhead_ms_peer_queries``);
- adding a route of 10 utterances, and the first query after it (medians over 20
  adds), against the same on a 1k-utterance router; ``*_added_ms`` is what the change
  added to that query: its time minus the same query's just before the change;
- start-up: opening a SQLite store of N utterances with the graph cache file present
  (load + first query), against the build from stored vectors without it;
- deleting one of those routes, and the first query after it;
- queries served while the graph is fed the rows of 100 routes added in one call
  (``ann_overhead_during_feed_ms``);
- two more utterances for a stored route (its rows then lie in two places), and
  deleting one utterance from the middle of a stored route's rows, each with the
  first query after it (medians over 20 changes);
- memory per utterance: the float32 matrix, the int8 copy, the graph (usearch's
  ``memory_usage``);
- semantic-router's ``IndexedRouter`` (max aggregation) on the same vectors, up to
  ``--peer-max`` utterances, when it is installed (a separate venv:
  ``pip install -e . -r benchmarks/requirements-peers.txt``): its overhead per query,
  the time to add a route, and how often its top route is the brute-force one.

Data (``--vectors``): ``noisy`` (default): the bundled model's embeddings of the
1,070 fixture texts (tests/fixtures), replicated with noise: each route (10
utterances) is centred on a noisy copy of one real vector, its utterances noisy
copies of the centre; queries are noisy copies of random route centres. ``text``:
real text encoded by the bundled model: the train rows of CLINC150, BANKING77 and
SNIPS (``--data``, default ../shared/data), one route per label, then 10-utterance
routes of random word sequences drawn from the same words up to N; queries are
the three datasets' val texts. The vectors are cached in ``--cache`` (default
/tmp/sr-scale).

Usage::

    python benchmarks/scale.py [--sizes 100000 1000000] [--queries 1000] [--ann-margin 0]
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from common import (
    DATASETS,
    PrecomputedEncoder,
    add_data_argument,
    by_label,
    encode_cached,
    load_split,
    machine_info,
    summarize_ms,
)
from numpy.typing import NDArray

from synaptoroute import AdaptiveRouter, Route, SQLiteStorage, ann
from synaptoroute.encoder import default_encoder, l2_normalize
from synaptoroute.storage import MemoryStorage, ModelInfo, StoredRoute

ROOT = Path(__file__).resolve().parent.parent
PER_ROUTE = 10
ADDS = 20  # routes added per router; the add figures are their medians
# The model id the stores are written under (the precomputed vectors are its).
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def real_vectors(cache: Path) -> NDArray[np.float32]:
    """Embeddings of every fixture text by the bundled model (cached)."""
    path = cache / "real.npy"
    if path.is_file():
        return np.load(path)
    texts = [
        json.loads(line)["text"]
        for name in ("clinc150_train_slice.jsonl", "clinc150_val_slice.jsonl")
        for line in (ROOT / "tests" / "fixtures" / name).read_text().splitlines()
        if line.strip()
    ]
    vectors = np.asarray(default_encoder().encode(texts), dtype=np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def noisy(rng: np.random.Generator, base: NDArray[np.float32], sigma: float) -> NDArray[np.float32]:
    noise = rng.standard_normal(base.shape, dtype=np.float32) * sigma / np.sqrt(base.shape[1])
    return l2_normalize(base + noise)


@dataclass
class Data:
    """Route vectors (``rows``, each route a run starting at ``starts``) and queries."""

    rows: NDArray[np.float32]
    starts: NDArray[np.int64]
    asked: NDArray[np.float32]
    # For real text: each dataset's routes, (first route number, past-last).
    sources: dict[str, tuple[int, int]] = field(default_factory=dict)

    def routes(self, limit: int | None = None) -> list[tuple[int, int, int]]:
        """(route number, first row, past-last row) of each route (within ``limit`` rows)."""
        n = len(self.rows) if limit is None else min(limit, len(self.rows))
        starts = self.starts[self.starts < n].tolist()
        return [
            (i, lo, hi) for i, (lo, hi) in enumerate(zip(starts, [*starts[1:], n], strict=True))
        ]

    def route_of(self, rows: NDArray[np.int64]) -> NDArray[np.int64]:
        """The route number of each row."""
        return np.searchsorted(self.starts, rows, side="right") - 1


def dataset(real: NDArray[np.float32], n: int, queries: int) -> Data:
    rng = np.random.default_rng(n)
    centres = noisy(rng, real[rng.integers(0, len(real), n // PER_ROUTE)], 1.0)
    rows = noisy(rng, np.repeat(centres, PER_ROUTE, axis=0), 0.5)
    asked = noisy(rng, centres[rng.integers(0, len(centres), queries)], 0.6)
    return Data(rows, np.arange(0, len(rows), PER_ROUTE), asked)


def text_dataset(n: int, queries: int, cache: Path, data: str | None) -> Data:
    """Real text, encoded by the bundled model: one route per label of CLINC150,
    BANKING77 and SNIPS train (234 routes, 37k utterances), then routes of 10 random
    word sequences drawn from the same words, up to ``n``; queries are the three
    datasets' val texts (out-of-scope ones too)."""
    rng = np.random.default_rng(n)
    texts: list[str] = []
    starts: list[int] = []
    sources: dict[str, tuple[int, int]] = {}
    for name in DATASETS:
        first = len(starts)
        for group in by_label(load_split(name, "train", data)).values():
            if len(texts) + len(group) <= n:
                starts.append(len(texts))
                texts.extend(group)
        sources[name] = (first, len(starts))
    words = [w for text in texts for w in text.split()]
    fillers = len(texts)
    while len(texts) < n:
        if (len(texts) - fillers) % PER_ROUTE == 0:
            starts.append(len(texts))
        size = int(rng.integers(4, 13))
        texts.append(" ".join(words[i] for i in rng.integers(0, len(words), size)))
    asked = [row.text for name in DATASETS for row in load_split(name, "val", data)]
    asked = [asked[i] for i in rng.permutation(len(asked))[:queries]]
    vectors = encode_cached(default_encoder(), texts + asked, cache)
    return Data(vectors[:n], np.array(starts, dtype=np.int64), vectors[n:], sources)


def unseen_dataset(data: Data, name: str, queries: int) -> Data:
    """``data`` without dataset ``name``'s routes; ``queries`` of their rows (seeded)
    are the queries: text of a domain no route covers, none of them val texts."""
    first, past = data.sources[name]
    bounds = [*data.starts.tolist(), len(data.rows)]
    lo, hi = bounds[first], bounds[past]
    if hi <= lo:  # the size cut the data before that dataset's rows
        sys.exit(f"{len(data.rows):,} rows hold none of {name}'s routes: give a larger size")
    picks = np.random.default_rng(queries).permutation(hi - lo)[:queries] + lo
    keep = np.ones(len(data.rows), dtype=bool)
    keep[lo:hi] = False
    starts = np.concatenate([data.starts[:first], data.starts[past:] - (hi - lo)])
    return Data(data.rows[keep], starts, data.rows[picks])


def stored_routes(data: Data, limit: int | None = None) -> list[StoredRoute]:
    return [
        StoredRoute(
            Route(name=f"r{i}", utterances=[f"r{i} u{j}" for j in range(hi - lo)]),
            data.rows[lo:hi],
        )
        for i, lo, hi in data.routes(limit)
    ]


ANN_DEPTH = [128]  # --ann-depth
ANN_MARGIN = [ann.CLOSE_MARGIN]  # --ann-margin


def make_router(
    encoder: PrecomputedEncoder, data: Data, index: str, limit: int | None = None
) -> AdaptiveRouter:
    storage = MemoryStorage()
    storage.put_routes(stored_routes(data, limit), ModelInfo(encoder.model_id, encoder.dimension))
    router = AdaptiveRouter(
        encoder,  # type: ignore[arg-type]
        storage,
        index=index,  # type: ignore[arg-type]
        cache_size=0,
        ann_depth=ANN_DEPTH[0],
        ann_margin=ANN_MARGIN[0],
    )
    assert router.wait_for_index(timeout=None)
    return router


class Timed(NamedTuple):
    """Queries timed one by one: the summary, each time (ms), each decision (its route
    or None) and each candidate (the best route, whether or not it passed)."""

    summary: dict[str, float]
    times: list[float]
    names: list[str]
    candidates: list[str]


def time_queries(router: AdaptiveRouter, texts: list[str]) -> Timed:
    times, names, candidates = [], [], []
    for text in texts:
        start = time.perf_counter()
        match = router.query(text)
        times.append((time.perf_counter() - start) * 1000.0)
        names.append(str(match.name))
        candidates.append(str(match.candidate))
    return Timed(summarize_ms(times), times, names, candidates)


Change = tuple[float, float, float]


def time_change(
    router: AdaptiveRouter, change: Callable[[int], None], queries: list[str]
) -> Change:
    """p50 over ``ADDS`` calls of ``change(a)``; of the first query after each; and of
    what the change added to that query: its time minus the same query's just before
    the change (queries differ in cost, e.g. near-ties take the exact path, so the
    first query's time alone mixes the change's cost with the query's own). A few more
    queries run between changes, as in service. The group starts once the index has
    settled, so it does not pay for the previous group's background feed."""
    assert router.wait_for_index(timeout=None)
    changes, firsts, added = [], [], []
    for a in range(ADDS):
        text = queries[a % len(queries)]
        start = time.perf_counter()
        router.query(text)
        steady = (time.perf_counter() - start) * 1000.0
        start = time.perf_counter()
        change(a)
        changes.append((time.perf_counter() - start) * 1000.0)
        start = time.perf_counter()
        router.query(text)
        firsts.append((time.perf_counter() - start) * 1000.0)
        added.append(firsts[-1] - steady)
        for other in queries[:5]:
            router.query(other)
    return float(np.median(changes)), float(np.median(firsts)), float(np.median(added))


def record(out: dict[str, object], change: str, after: str, timed: Change) -> None:
    """:func:`time_change`'s three figures as ``{change}_ms``, ``{after}_ms`` and
    ``{after}_added_ms``."""
    out[f"{change}_ms"], out[f"{after}_ms"], out[f"{after}_added_ms"] = timed


def time_add(router: AdaptiveRouter, prefix: str, queries: list[str]) -> Change:
    """Adding a 10-utterance route ``prefix{a}``, and the first query after it."""

    def add(a: int) -> None:
        name = f"{prefix}{a}"
        router.add_route(Route(name=name, utterances=[f"{name} u{j}" for j in range(PER_ROUTE)]))

    return time_change(router, add, queries)


def time_delete(router: AdaptiveRouter, prefix: str, queries: list[str]) -> Change:
    """Deleting the routes :func:`time_add` added, and the first query after each."""
    return time_change(router, lambda a: router.delete_route(f"{prefix}{a}"), queries)


def grown_route(a: int) -> str:
    """The stored route that change ``a`` of the utterance-level timings edits."""
    return f"r{7 * a + 1}"


#: The fewest utterances a size may hold: the routes :func:`grown_route` edits exist.
MIN_SIZE = (7 * (ADDS - 1) + 2) * PER_ROUTE


def time_add_utterances(router: AdaptiveRouter, prefix: str, queries: list[str]) -> Change:
    """Two more utterances for a stored route (not the newest: its rows are no longer
    the last ones), and the first query after them."""

    def add(a: int) -> None:
        router.add_utterances(grown_route(a), [f"{prefix}{a} u{j}" for j in range(2)])

    return time_change(router, add, queries)


def time_delete_utterance(router: AdaptiveRouter, queries: list[str]) -> Change:
    """Deleting one stored utterance from the middle of a route's rows, and the first
    query after it."""
    return time_change(
        router,
        lambda a: router.delete_utterances(grown_route(a), [f"{grown_route(a)} u3"]),
        queries,
    )


FEED_ROUTES = 100  # routes added in one call for the during-a-feed timings


def time_during_feed(router: AdaptiveRouter, texts: list[str]) -> dict[str, float]:
    """Queries served while the graph is fed the rows of ``FEED_ROUTES`` new routes
    added in one call (the first query compiles and starts the feed): their p50, p99
    and count, and how long the feed took."""
    target = router.index_stats.ann_rows_fed + FEED_ROUTES * PER_ROUTE
    router.add_routes(
        [
            Route(name=f"feed-{i}", utterances=[f"feed-{i} u{j}" for j in range(PER_ROUTE)])
            for i in range(FEED_ROUTES)
        ]
    )
    times: list[float] = []
    began = time.perf_counter()
    while router.index_stats.ann_rows_fed < target and len(times) < 1_000_000:
        start = time.perf_counter()
        router.query(texts[len(times) % len(texts)])
        times.append((time.perf_counter() - start) * 1000.0)
    feed_s = time.perf_counter() - began
    assert router.wait_for_index(timeout=None)
    return {**summarize_ms(times), "feed_s": round(feed_s, 2)}


def peer(
    data: Data, table: dict[str, NDArray[np.float32]], texts: list[str]
) -> dict[str, object] | str:
    """semantic-router's ``IndexedRouter`` (max aggregation) on the same vectors: its
    overhead per query, its routes, and the time to add a 10-utterance route."""
    try:
        from semantic_router import IndexedRouter
        from semantic_router import Route as SrRoute
        from semantic_router.encoders import DenseEncoder
    except ImportError:
        return "not installed (pip install -r benchmarks/requirements-peers.txt)"

    def vector(text: str) -> NDArray[np.float32]:
        if text in table:
            return table[text]
        route, utterance = text.split(" u")  # "r{i} u{j}"
        return data.rows[int(data.starts[int(route[1:])]) + int(utterance)]

    class Precomputed(DenseEncoder):  # type: ignore[misc]
        name: str = "precomputed"
        type: str = "precomputed"
        score_threshold: float = -1.0  # always the top route: compared with brute force

        def __call__(self, docs: list[Any]) -> list[list[float]]:
            return [vector(str(d)).tolist() for d in docs]

    routes = [
        SrRoute(name=f"r{i}", utterances=[f"r{i} u{j}" for j in range(hi - lo)])
        for i, lo, hi in data.routes()
    ]
    start = time.perf_counter()
    router = IndexedRouter(encoder=Precomputed(), routes=routes, top_k=5, aggregation="max")
    ready = time.perf_counter() - start
    router(texts[0])  # warm-up
    times, names = [], []
    for text in texts:
        start = time.perf_counter()
        choice = router(text)
        times.append((time.perf_counter() - start) * 1000.0)
        names.append(str(choice.name))
    adds = []
    for a in range(3):
        name = f"new-peer-{a}"
        start = time.perf_counter()
        router.add(SrRoute(name=name, utterances=[f"{name} u{j}" for j in range(PER_ROUTE)]))
        adds.append((time.perf_counter() - start) * 1000.0)
    return {
        "ready_s": round(ready, 1),
        "overhead_ms": summarize_ms(times),
        "names": names,
        "add_route_ms": float(np.median(adds)),
        "version": importlib.metadata.version("semantic-router"),
    }


def run_size(
    args: argparse.Namespace, n: int, real: NDArray[np.float32] | None
) -> dict[str, object]:
    cache, peer_max = args.cache, args.peer_max
    if real is None:
        data = text_dataset(n, args.queries, cache, args.data)
    else:
        data = dataset(real, n, args.queries)
    held = len(data.routes())
    if held < 7 * (ADDS - 1) + 2:
        # With --vectors text the routes are the datasets' labels (about 160 rows
        # each), so MIN_SIZE rows hold too few: it failed after the first timings.
        sys.exit(
            f"scale.py: {n:,} rows make {held} routes, fewer than the utterance-level "
            f"timings edit ({grown_route(ADDS - 1)}); give a larger --sizes"
        )
    rows, asked = data.rows, data.asked
    n_queries = len(asked)
    texts = [f"q{i}" for i in range(n_queries)]
    rng = np.random.default_rng(1)
    table = dict(zip(texts, asked, strict=True))
    extra = noisy(rng, np.repeat(rows[:1], PER_ROUTE, axis=0), 0.5)
    for name in (
        f"{what}-{kind}-{a}"
        for what in ("new", "more")
        for kind in ("exact", "ann", "small", "peer")
        for a in range(ADDS)
    ):
        table.update({f"{name} u{j}": extra[j] for j in range(PER_ROUTE)})
    fed = noisy(rng, rows[rng.integers(0, len(rows), FEED_ROUTES * PER_ROUTE)], 0.05)
    table.update(
        {
            f"feed-{i} u{j}": fed[i * PER_ROUTE + j]
            for i in range(FEED_ROUTES)
            for j in range(PER_ROUTE)
        }
    )
    encoder = PrecomputedEncoder(MODEL, table)
    out: dict[str, object] = {"utterances": n}
    timed: dict[str, Timed] = {}
    for kind in ("exact", "ann"):
        start = time.perf_counter()
        router = make_router(encoder, data, kind)
        out[f"{kind}_ready_s"] = round(time.perf_counter() - start, 1)
        time_queries(router, texts[:50])  # warm-up
        stats = router.index_stats
        before = (stats.ann_queries, stats.ann_fallbacks)
        timed[kind] = time_queries(router, texts)
        out[f"{kind}_overhead_ms"] = timed[kind].summary
        if kind == "ann":
            out["ann_answered"] = (stats.ann_queries - before[0]) / n_queries
            out["ann_graph_bytes_per_utterance"] = round(router._index.ann_bytes / n, 1)
            out["ann_overhead_during_feed_ms"] = time_during_feed(router, texts)
        after = f"{kind}_first_query_after"
        record(out, f"{kind}_add_route", after, time_add(router, f"new-{kind}-", texts))
        record(
            out,
            f"{kind}_delete_route",
            f"{after}_delete",
            time_delete(router, f"new-{kind}-", texts),
        )
        record(
            out,
            f"{kind}_add_utterances",
            f"{after}_add_utterances",
            time_add_utterances(router, f"more-{kind}-", texts),
        )
        record(
            out,
            f"{kind}_delete_utterance",
            f"{after}_delete_utterance",
            time_delete_utterance(router, texts),
        )
        router.close()
        del router
        gc.collect()
    ann, exact = timed["ann"], timed["exact"]
    # The decision (a query both routers leave unrouted agrees), and the route each
    # ranked first whether or not it passed (such queries are the near-ties).
    agree = sum(a == b for a, b in zip(ann.names, exact.names, strict=True))
    out["agreement"] = agree / n_queries
    same = sum(a == b for a, b in zip(ann.candidates, exact.candidates, strict=True))
    out["candidate_agreement"] = same / n_queries
    if n <= peer_max:  # its Python lists of floats make 1M utterances impractical
        asked_peer = min(n_queries, 300)
        peer_out = peer(data, table, texts[:asked_peer])
        # Ours over the same queries as the peer's, for a ratio of like with like.
        out["ann_overhead_ms_peer_queries"] = summarize_ms(ann.times[:asked_peer])
        out["exact_overhead_ms_peer_queries"] = summarize_ms(exact.times[:asked_peer])
        if isinstance(peer_out, dict):
            peer_names = peer_out.pop("names")
            assert isinstance(peer_names, list)
            # the exact max-aggregation route (its thresholds differ from ours)
            best = data.route_of(np.argmax(asked[: len(peer_names)] @ rows.T, axis=1))
            same = sum(a == f"r{i}" for a, i in zip(peer_names, best.tolist(), strict=True))
            peer_out["top_route_agreement_with_brute_force"] = same / len(peer_names)
        out["semantic_router"] = peer_out
    small = make_router(encoder, data, "ann", limit=1000)
    time_queries(small, texts[:50])
    record(
        out, "ann_1k_add_route", "ann_1k_first_query_after", time_add(small, "new-small-", texts)
    )
    out["bytes_per_utterance"] = {"float32": 4 * rows.shape[1], "int8": rows.shape[1]}
    out["startup"] = startup(encoder, data, cache / f"store-{n}")
    return out


def startup(encoder: PrecomputedEncoder, data: Data, folder: Path) -> dict[str, float]:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    path = folder / "routes.db"
    storage = SQLiteStorage(path, durability="normal")
    storage.put_routes(stored_routes(data), ModelInfo(encoder.model_id, encoder.dimension))
    storage.close()
    out = {}
    for label in ("build_s", "cache_s"):  # the first open builds and writes the cache
        start = time.perf_counter()
        router = AdaptiveRouter(
            encoder,
            SQLiteStorage(path),
            index="ann",
            cache_size=0,
            ann_depth=ANN_DEPTH[0],
            ann_margin=ANN_MARGIN[0],
        )
        router.query("q0")
        if label == "build_s":
            assert router.wait_for_index(timeout=None)
        out[label] = round(time.perf_counter() - start, 1)
        out[label.replace("_s", "_cache_loads")] = router.index_stats.ann_cache_loads
        router.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[100_000], help=f"at least {MIN_SIZE} each"
    )
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/sr-scale"))
    parser.add_argument(
        "--peer-max",
        type=int,
        default=100_000,
        help="run semantic-router side by side up to this size (if installed)",
    )
    parser.add_argument("--ann-depth", type=int, default=128, help="the router's ann_depth")
    parser.add_argument(
        "--ann-margin", type=float, default=ann.CLOSE_MARGIN, help="the router's ann_margin"
    )
    parser.add_argument(
        "--vectors",
        choices=("noisy", "text"),
        default="noisy",
        help="noisy copies of real embeddings (default), or encoded real and filler text",
    )
    add_data_argument(parser)
    args = parser.parse_args()
    if min(args.sizes) < MIN_SIZE:
        # Smaller stores lack the routes the utterance-level timings edit.
        parser.error(f"--sizes must be at least {MIN_SIZE}")
    ANN_DEPTH[0] = args.ann_depth
    ANN_MARGIN[0] = args.ann_margin
    print(
        machine_info(),
        f"ann_depth {args.ann_depth}, ann_margin {args.ann_margin}, vectors {args.vectors}",
    )
    real = real_vectors(args.cache) if args.vectors == "noisy" else None
    for n in args.sizes:
        print(json.dumps(run_size(args, n, real), indent=1))


if __name__ == "__main__":
    main()
