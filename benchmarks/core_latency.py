"""Router overhead, add-route cost and reopen-vs-re-encode (issue 2).

Parts (``--parts``, default all):

``overhead``
    Single-query latency of ``router.query(text)`` against the raw
    ``encoder.encode([text])`` on the same text, with 1k, 10k and 100k utterances,
    for each ``blas_threads`` setting (default, 1, 2). The router runs with
    ``cache_size=0`` so every query is encoded. The overhead is also measured
    directly: the same router fed the query's vector by a zero-cost
    :class:`common.PrecomputedEncoder` (validation + cache + scoring + decision),
    and ``router._score`` alone.
``add``
    Time of ``add_route`` (10 utterances) while the router holds 1k, 10k and 100k
    utterances, alone and followed by the query that compiles the index, against an
    eager ``numpy.vstack`` of the matrix (and vstack + the matrix product) in the
    same run. The encoder is a zero-cost precomputed one so the index and the store
    are what is timed (the real encoder would add ~1.5 ms per utterance at every size).
``reopen``
    Reopening a SQLite store of 10,000 real utterances against encoding them again
    with the real :class:`~synaptoroute.encoder.Encoder`.
``profile``
    Where a query's time goes from 10k utterances up: each step timed right after an
    encoder call (as in a real query, with the CPU caches cold) and warm.

Utterance sets: the real vectors of the first 20 CLINC150 intents (100 train rows
each, 2,000 vectors) form copy 0; further copies are the same vectors under a
random orthogonal rotation, which keeps each route's internal geometry but makes
the copies unrelated to the queries. Routes have 100 utterances; N utterances are
the first N/100 routes (1k: 10 real routes; 100k: 20 real + 980 rotated). Queries
are CLINC150 val rows of the first 10 intents, so every size holds their route.

Usage::

    python benchmarks/core_latency.py [--data DIR] [--parts overhead add reopen profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    PrecomputedEncoder,
    by_label,
    encode_cached,
    load_split,
    machine_info,
    summarize_ms,
    time_ms,
    time_wall_cpu_ms,
)
from numpy.typing import NDArray
from threadpoolctl import ThreadpoolController

from synaptoroute.encoder import Encoder
from synaptoroute.index import Aggregation
from synaptoroute.int8 import Int8Scan
from synaptoroute.models import Route
from synaptoroute.router import AdaptiveRouter, _blas_limit
from synaptoroute.storage import MemoryStorage, ModelInfo, SQLiteStorage, StoredRoute

SIZES = (1_000, 10_000, 100_000)
ROUTE_SIZE = 100
BASE_INTENTS = 20
QUERY_INTENTS = 10
ADD_UTTERANCES = 10
BLAS_SETTINGS: tuple[int | None, ...] = (None, 1, 2)

Vectors = NDArray[np.float32]


class Workload:
    """The encoded base block, its rotated copies and the query texts."""

    def __init__(self, encoder: Encoder, data: str | None, cache: str | None, seed: int) -> None:
        groups = by_label(load_split("clinc150", "train", data))
        intents = list(groups)[:BASE_INTENTS]
        self.base_texts = [groups[i][:ROUTE_SIZE] for i in intents]
        self.intents = intents
        flat = [t for g in self.base_texts for t in g]
        self.base = encode_cached(encoder, flat, cache).reshape(BASE_INTENTS, ROUTE_SIZE, -1)
        wanted = set(intents[:QUERY_INTENTS])
        val = load_split("clinc150", "val", data)
        self.queries = [r.text for r in val if r.label in wanted]
        self.query_vectors = encode_cached(encoder, self.queries, cache)
        self.rng = np.random.default_rng(seed)
        self._rotations: list[Vectors] = []
        self.model = ModelInfo(encoder.model_id, encoder.dimension)

    def _rotation(self, copy: int) -> Vectors:
        dim = self.base.shape[-1]
        while len(self._rotations) < copy:
            q, _ = np.linalg.qr(self.rng.standard_normal((dim, dim)))
            self._rotations.append(q.astype(np.float32))
        return self._rotations[copy - 1]

    def routes(self, n_utterances: int) -> list[StoredRoute]:
        """The first ``n_utterances / ROUTE_SIZE`` routes with their vectors."""
        out = []
        for r in range(n_utterances // ROUTE_SIZE):
            copy, intent = divmod(r, BASE_INTENTS)
            vectors = self.base[intent]
            if copy:
                vectors = vectors @ self._rotation(copy)
            texts = [f"{t} #{copy}" if copy else t for t in self.base_texts[intent]]
            name = f"{self.intents[intent]}#{copy}" if copy else self.intents[intent]
            route = Route.model_construct(
                name=name, utterances=texts, description=None, threshold=None, metadata={}
            )
            out.append(StoredRoute(route, np.ascontiguousarray(vectors, dtype=np.float32)))
        return out

    def memory_store(self, n_utterances: int) -> MemoryStorage:
        """A :class:`MemoryStorage` holding ``n_utterances``."""
        store = MemoryStorage()
        store.replace_all(self.routes(n_utterances), self.model)
        return store

    def lookup(self, extra: dict[str, Vectors] | None = None) -> PrecomputedEncoder:
        """A zero-cost encoder that knows the queries (and ``extra``)."""
        table = dict(zip(self.queries, self.query_vectors, strict=True))
        table.update(extra or {})
        return PrecomputedEncoder(self.model.model_id, table)


#: The index every router here scores with: this script is about the exact index and
#: its int8 pre-filter (the approximate graph past 50,000 rows is benchmarks/scale.py's);
#: with the default ("auto") a 100k router would build the graph in the background
#: while the add and profile parts time it.
INDEX = "exact"


def fmt(summary: dict[str, float]) -> str:
    """``p50 / p99`` in ms."""
    return f"{summary['p50']:.3f} / {summary['p99']:.3f}"


def blas_name(threads: int | None) -> str:
    """How a ``blas_threads`` setting is shown."""
    return "default" if threads is None else str(threads)


# -- (a) overhead ---------------------------------------------------------------------
def part_overhead(
    work: Workload,
    encoder: Encoder,
    sizes: Sequence[int],
    n_queries: int,
    aggregations: Sequence[Aggregation],
) -> list[dict[str, Any]]:
    """Query vs raw encode, overhead measured directly, and ``_score`` alone."""
    rows: list[dict[str, Any]] = []
    texts = (work.queries * (n_queries // len(work.queries) + 1))[:n_queries]
    vectors = dict(zip(work.queries, work.query_vectors, strict=True))
    print("\n## overhead: query vs raw encode (ms, p50 / p99)")
    print(
        "| utterances | aggregation | blas_threads | encode | query | query - encode (p50) "
        "| overhead (direct) | overhead CPU p50 | _score | _score CPU p50 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        store = work.memory_store(n)
        for aggregation in aggregations:
            for threads in BLAS_SETTINGS:
                kwargs: dict[str, Any] = {
                    "aggregation": aggregation,
                    "blas_threads": threads,
                    "cache_size": 0,
                    "index": INDEX,
                }
                real = AdaptiveRouter(encoder, store, **kwargs)
                zero = AdaptiveRouter(work.lookup(), store, **kwargs)
                for text in work.queries[:20]:  # warm-up, compiles both snapshots
                    real.query(text)
                    zero.query(text)
                # Past ann_threshold the graph builds in the background: time the
                # router that serves, not one still building.
                real.wait_for_index(timeout=None)
                zero.wait_for_index(timeout=None)
                enc, query = [], []
                direct: list[tuple[float, float]] = []
                score: list[tuple[float, float]] = []
                gc.collect()
                gc.disable()
                try:
                    for text in texts:
                        vec = vectors[text][None, :]
                        enc.append(time_ms(partial(encoder.encode, [text])))
                        query.append(time_ms(partial(real.query, text)))
                        direct.append(time_wall_cpu_ms(partial(zero.query, text)))
                        score.append(time_wall_cpu_ms(partial(zero._score, vec, 2)))
                finally:
                    gc.enable()
                s_enc, s_q = summarize_ms(enc), summarize_ms(query)
                s_d, s_s = summarize_ms([w for w, _ in direct]), summarize_ms([w for w, _ in score])
                cpu_d = summarize_ms([c for _, c in direct])["p50"]
                cpu_s = summarize_ms([c for _, c in score])["p50"]
                row = {
                    "utterances": n,
                    "aggregation": aggregation,
                    "blas_threads": blas_name(threads),
                    "encode": s_enc,
                    "query": s_q,
                    "query_minus_encode_p50": s_q["p50"] - s_enc["p50"],
                    "overhead_direct": s_d,
                    "overhead_cpu_p50": cpu_d,
                    "score": s_s,
                    "score_cpu_p50": cpu_s,
                }
                rows.append(row)
                print(
                    f"| {n:,} | {aggregation} | {blas_name(threads)} | {fmt(s_enc)} | {fmt(s_q)} "
                    f"| {row['query_minus_encode_p50']:.3f} | {fmt(s_d)} | {cpu_d:.3f} "
                    f"| {fmt(s_s)} | {cpu_s:.3f} |",
                    flush=True,
                )
    return rows


# -- (b) add-route cost ------------------------------------------------------------------
def part_add(work: Workload, sizes: Sequence[int], repeats: int) -> list[dict[str, Any]]:
    """add_route alone and with the compiling query, against an eager vstack."""
    rng = np.random.default_rng(1)
    dim = work.model.dimension
    rows: list[dict[str, Any]] = []
    print(f"\n## add one route of {ADD_UTTERANCES} utterances (ms, p50 / max over {repeats} adds)")
    print(
        "| utterances held | add_route (memory) | add_route (SQLite) | add_route + query "
        "| vstack | vstack + product |"
    )
    print("|---|---|---|---|---|---|")
    query_text = work.queries[0]
    q = work.query_vectors[0]
    for n in sizes:
        new_routes: list[tuple[Route, Vectors]] = []
        extra: dict[str, Vectors] = {}
        for r in range(3 * repeats):
            texts = [f"new route {r} utterance {j}" for j in range(ADD_UTTERANCES)]
            vecs = rng.standard_normal((ADD_UTTERANCES, dim)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            new_routes.append((Route(name=f"new-{r}", utterances=texts), vecs))
            extra.update(zip(texts, vecs, strict=True))
        lookup = work.lookup(extra)

        router = AdaptiveRouter(lookup, work.memory_store(n), cache_size=0, index=INDEX)
        router.query(query_text)  # compile the loaded routes first
        alone = [time_ms(partial(router.add_route, r)) for r, _ in new_routes[:repeats]]

        def add_and_query(router: AdaptiveRouter, route: Route) -> None:
            router.add_route(route)
            router.query(query_text)

        router.query(query_text)
        with_query = [
            time_ms(partial(add_and_query, router, route))
            for route, _ in new_routes[repeats : 2 * repeats]
        ]
        with tempfile.TemporaryDirectory() as tmp:
            store = SQLiteStorage(Path(tmp) / "bench.sqlite")
            store.replace_all(work.routes(n), work.model)
            sql_router = AdaptiveRouter(lookup, store, cache_size=0, index=INDEX)
            sql_router.query(query_text)
            sqlite = [
                time_ms(partial(sql_router.add_route, route))
                for route, _ in new_routes[2 * repeats :]
            ]
            sql_router.close()

        matrix = np.concatenate([s.vectors for s in work.routes(n)])
        vstack, vstack_product = [], []
        # One BLAS thread, as the router uses below 20k rows: waking a second OpenBLAS
        # thread on the busy 2-core machine cost ~8 ms per product.
        with _blas_limit(1):
            for _, vecs in new_routes[:repeats]:
                t0 = time.perf_counter()
                matrix = np.vstack([matrix, vecs])
                vstack.append((time.perf_counter() - t0) * 1000)
            for _, vecs in new_routes[repeats : 2 * repeats]:
                t0 = time.perf_counter()
                matrix = np.vstack([matrix, vecs])
                int(np.argmax(matrix @ q))
                vstack_product.append((time.perf_counter() - t0) * 1000)

        cells = {
            "add_route_memory": alone,
            "add_route_sqlite": sqlite,
            "add_route_plus_query": with_query,
            "vstack": vstack,
            "vstack_plus_product": vstack_product,
        }
        row: dict[str, Any] = {"utterances": n}
        row.update({k: {**summarize_ms(v), "max": max(v)} for k, v in cells.items()})
        rows.append(row)
        print(
            f"| {n:,} | "
            + " | ".join(f"{row[k]['p50']:.3f} / {row[k]['max']:.3f}" for k in cells)
            + " |",
            flush=True,
        )
    first, last = rows[0], rows[-1]
    for key in ("add_route_memory", "add_route_sqlite", "add_route_plus_query", "vstack"):
        ratio = last[key]["p50"] / first[key]["p50"]
        print(f"ratio p50 {sizes[-1]:,} / {sizes[0]:,} for {key}: {ratio:.2f}x")
    return rows


# -- (c) reopen vs re-encode -----------------------------------------------------------
def part_reopen(encoder: Encoder, data: str | None, repeats: int) -> dict[str, Any]:
    """Reopen a 10,000-utterance SQLite store vs encoding the texts again."""
    groups = by_label(load_split("clinc150", "train", data))
    picked = dict(list(groups.items())[:100])  # 100 intents x 100 = 10,000 utterances
    texts = [t for g in picked.values() for t in g]
    encoder.encode(texts[:64])  # model loaded and warm before timing
    t0 = time.perf_counter()
    vectors = encoder.encode(texts)
    encode_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reopen.sqlite"
        lookup = PrecomputedEncoder(encoder.model_id, dict(zip(texts, vectors, strict=True)))
        writer = AdaptiveRouter(lookup, SQLiteStorage(path), index=INDEX)
        writer.add_routes([Route(name=k, utterances=v) for k, v in picked.items()])
        writer.close()
        reopen, compiled = [], []
        calls = 0
        for _ in range(repeats):
            fresh = Encoder()
            t0 = time.perf_counter()
            router = AdaptiveRouter(fresh, SQLiteStorage(path), index=INDEX)
            t1 = time.perf_counter()
            router._index.snapshot()
            t2 = time.perf_counter()
            reopen.append(t1 - t0)
            compiled.append(t2 - t0)
            calls += int(fresh.loaded)  # encoding needs the model: unloaded, nothing encoded
            assert sum(len(r.utterances) for r in router.list_routes()) == len(texts)
            router.close()
    out = {
        "utterances": len(texts),
        "encode_s": encode_s,
        "reopen_s_median": float(np.median(reopen)),
        "reopen_compile_s_median": float(np.median(compiled)),
        "encoder_calls_on_reopen": calls,
    }
    out["speedup"] = encode_s / out["reopen_s_median"]
    out["speedup_with_compile"] = encode_s / out["reopen_compile_s_median"]
    print(f"\n## reopen a SQLite store of {len(texts):,} utterances vs re-encoding them")
    print(
        "| re-encode (s) | reopen (ms, median) | reopen + compile (ms) | speed-up | encoder calls |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| {encode_s:.2f} | {1000 * out['reopen_s_median']:.1f} | "
        f"{1000 * out['reopen_compile_s_median']:.1f} | {out['speedup']:.0f}x "
        f"({out['speedup_with_compile']:.0f}x with compile) | {calls} |",
        flush=True,
    )
    return out


# -- profile ------------------------------------------------------------------------
def part_profile(work: Workload, encoder: Encoder, n: int, n_queries: int) -> dict[str, Any]:
    """Where a query's time goes at ``n`` utterances, right after the encoder ran.

    The encoder's run evicts the matrix, and the code and data of everything that runs
    after it, from the CPU caches, so a real query pays for steps that a tight loop
    would find warm. Each step is timed right after its own ``encoder.encode`` call
    ("after encode") and then again at once ("warm"), for every query in turn.
    """
    store = work.memory_store(n)
    zero = AdaptiveRouter(work.lookup(), store, cache_size=0, index=INDEX)
    zero.query(work.queries[0])  # compile the snapshot
    snap = zero._index.snapshot()
    qs = work.query_vectors[:n_queries]
    texts = work.queries[:n_queries]

    def product(i: int) -> object:
        with _blas_limit(1):
            return snap.matrix @ qs[i]

    def blas_limit(i: int) -> None:
        with _blas_limit(1):
            pass

    # What the router did before the budget (0.2.0): threadpoolctl's limit, same run.
    controller = ThreadpoolController()

    def threadpoolctl_limit(i: int) -> None:
        with controller.limit(limits=1, user_api="blas"):
            pass

    # A memory baseline: summing as many bytes as the int8 copy holds.
    raw = np.ones(snap.matrix.size, dtype=np.int8).view(np.int64)
    steps: dict[str, Callable[[int], object]] = {
        "float32 product `matrix @ q` (BLAS)": product,
        "BLAS thread limit (the router's budget, enter + exit)": blas_limit,
        "BLAS thread limit (threadpoolctl's limit, enter + exit; 0.2.0)": threadpoolctl_limit,
        "numpy sum over the int8 copy's bytes (memory baseline)": lambda i: raw.sum(),
    }
    if snap.int8 is not None:
        int8 = snap.int8
        steps["int8 scan `Int8Scan.approx` (onnxruntime)"] = lambda i: int8.approx(qs[i])
    steps["`Snapshot.score` (scan, exact top-2)"] = lambda i: snap.score(qs[i][None, :], 2)
    steps["`router.query`, zero-cost encoder"] = lambda i: zero.query(texts[i])
    cold: dict[str, list[float]] = {name: [] for name in steps}
    warm: dict[str, list[float]] = {name: [] for name in steps}
    stats = zero._index.stats
    stats.int8_queries = stats.rows_rescored = 0
    gc.collect()
    gc.disable()
    try:
        for i in range(len(qs)):
            for name, fn in steps.items():
                encoder.encode([texts[i]])
                cold[name].append(time_ms(partial(fn, i)))
                warm[name].append(time_ms(partial(fn, i)))
    finally:
        gc.enable()
    mb = snap.matrix.nbytes / 1e6
    int8_mb = mb / 4 if snap.int8 is not None else 0.0
    print(f"\n## profile at {n:,} utterances ({mb:.1f} MB float32 matrix, {int8_mb:.1f} MB int8)")
    print("| step | after encode, ms p50 | warm, ms p50 |")
    print("|---|---|---|")
    out: dict[str, Any] = {"utterances": n, "matrix_mb": mb, "steps": {}}
    for name in steps:
        c, w = summarize_ms(cold[name])["p50"], summarize_ms(warm[name])["p50"]
        out["steps"][name] = {"after_encode": c, "warm": w}
        print(f"| {name} | {c:.3f} | {w:.3f} |")
    if stats.int8_queries:
        out["rows_rescored_per_query"] = stats.rows_rescored / stats.int8_queries
        print(f"rows re-scored in float32 per int8 query: {out['rows_rescored_per_query']:.1f}")
        builds = [time_ms(partial(Int8Scan, snap.matrix, 1 if n < 20_000 else 2)) for _ in range(3)]
        out["int8_build_ms"] = summarize_ms(builds)["p50"]
        print(f"building the int8 copy ({len(snap.matrix):,} rows): {out['int8_build_ms']:.0f} ms")

    # Where the rest goes: own time of the top functions over the same queries.
    profiler = cProfile.Profile()
    profiler.enable()
    for text in texts:
        zero.query(text)
    profiler.disable()
    print(f"\ncProfile of {len(texts)} router.query calls (zero-cost encoder), top own time:")
    _print_profile(profiler, 6)
    profiler = cProfile.Profile()
    rng = np.random.default_rng(2)
    profiler.enable()
    for r in range(10):
        vecs = rng.standard_normal((ADD_UTTERANCES, work.model.dimension)).astype(np.float32)
        zero._index.add(f"profile-{r}", vecs, [f"p{r} {j}" for j in range(ADD_UTTERANCES)])
        zero._index.snapshot()
    profiler.disable()
    print("\ncProfile of 10 x (add 10 rows to the index + compile), top own time:")
    _print_profile(profiler, 6)
    return out


def _print_profile(profiler: cProfile.Profile, top: int) -> None:
    stats = pstats.Stats(profiler)
    entries = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])  # type: ignore[attr-defined]
    total = sum(v[2] for _, v in entries)
    print("| function | own ms total | share |")
    print("|---|---|---|")
    for (path, line, func), (_, calls, own, _, _) in entries[:top]:
        where = f"{Path(path).name}:{line}({func})" if line else func
        print(f"| {where} x{calls} | {1000 * own:.1f} | {100 * own / total:.0f}% |")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected parts and print Markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="data folder (see common.data_dir)")
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["overhead", "add", "reopen", "profile"],
        choices=["overhead", "add", "reopen", "profile"],
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=int,
        default=list(SIZES),
        help="utterance counts (multiples of 100)",
    )
    parser.add_argument("--queries", type=int, default=200, help="timed queries per setting")
    parser.add_argument("--repeats", type=int, default=20, help="timed adds per size")
    parser.add_argument(
        "--aggregations",
        nargs="+",
        default=["max", "mean_topk"],
        choices=["max", "mean_topk", "centroid"],
    )
    parser.add_argument("--cache", default=None, help="folder to keep encoded vectors in")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write all numbers to this file")
    args = parser.parse_args(argv)

    print(f"# machine: {machine_info()}")
    print(f"# command: python benchmarks/core_latency.py {' '.join(sys.argv[1:])}".rstrip())
    encoder = Encoder()
    encoder.load()
    results: dict[str, Any] = {"machine": machine_info()}
    needs_work = set(args.parts) - {"reopen"}
    work = Workload(encoder, args.data, args.cache, args.seed) if needs_work else None
    if "overhead" in args.parts and work is not None:
        results["overhead"] = part_overhead(
            work, encoder, args.sizes, args.queries, args.aggregations
        )
    if "add" in args.parts and work is not None:
        results["add"] = part_add(work, args.sizes, args.repeats)
    if "reopen" in args.parts:
        results["reopen"] = part_reopen(encoder, args.data, 5)
    if "profile" in args.parts and work is not None:
        big = [n for n in args.sizes if n >= 10_000] or [max(args.sizes)]
        results["profile"] = [part_profile(work, encoder, n, args.queries) for n in big]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
