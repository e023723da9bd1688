"""Async serving (issue 3): synaptoroute's batching worker side by side with semantic-router.

Both routers run in one process on the same ONNX model: synaptoroute's bundled
``Encoder`` (all-MiniLM-L6-v2 INT8), wrapped as a semantic-router ``DenseEncoder``
the way its own local encoders are (sync ``__call__``, ``acall`` on a thread), so
only the routers differ. 10 routes x 10 utterances (CLINC150 train), 1,000
distinct CLINC150 val texts as queries. Speed figures are medians of interleaved
rounds and are reported as ratios.

semantic-router is a peer, never a project dependency; install it in a separate
environment::

    python3 -m venv /tmp/bench-venv
    /tmp/bench-venv/bin/pip install -e . -r benchmarks/requirements-peers.txt
    /tmp/bench-venv/bin/python benchmarks/async_serving.py --write

``--write`` replaces the "Async serving (issue 3)" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import string
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from importlib.metadata import version
from pathlib import Path
from statistics import median
from typing import Any

from common import (
    REPO_ROOT,
    add_data_argument,
    by_label,
    command_line,
    load_split,
    machine_info,
    percentile,
)
from pydantic import PrivateAttr
from semantic_router import IndexedRouter
from semantic_router import Route as SrRoute
from semantic_router.encoders import DenseEncoder

from synaptoroute import AdaptiveRouter, Encoder, Route, RouterOverloadedError
from synaptoroute.encoder import EncoderProtocol

SECTION = "## Async serving (issue 3)"
N_ROUTES = 10
N_UTTERANCES = 10
N_QUERIES = 1000
LEVELS = (1, 8, 64, 1000)
SWEEP_CALLERS = (8, 1000)
SWEEP = ((64, 0.0), (256, 0.0), (512, 0.0), (1024, 0.0), (512, 2.0))
PROBE_UTTERANCES = 3  # the route added and deleted 2,000 times
THRESHOLD = 0.5


class SharedModelEncoder(DenseEncoder):  # type: ignore[misc]
    """synaptoroute's ONNX encoder behind semantic-router's ``DenseEncoder`` API.

    Mirrors semantic-router's own ``FastEmbedEncoder``: a sync ``__call__`` and an
    ``acall`` that runs it on a thread.
    """

    name: str = "all-MiniLM-L6-v2-onnx-int8"
    type: str = "synaptoroute-onnx"
    _encoder: Any = PrivateAttr()

    def __init__(self, encoder: EncoderProtocol, **data: Any) -> None:
        super().__init__(**data)
        self._encoder = encoder

    def __call__(self, docs: list[Any]) -> list[list[float]]:
        """Embed ``docs`` with the shared model."""
        vectors = self._encoder.encode([str(d) for d in docs])
        return [row.tolist() for row in vectors]

    async def acall(self, docs: list[Any]) -> list[list[float]]:
        """Embed ``docs`` on a worker thread."""
        return await asyncio.to_thread(self.__call__, docs)


# -- measurement helpers ---------------------------------------------------------------
def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def ms(seconds: float) -> float:
    return seconds * 1000.0


async def concurrent(
    call: Callable[[str], Awaitable[object]], texts: Sequence[str], callers: int
) -> dict[str, float]:
    """``callers`` coroutines share ``texts``, each awaiting one call after another."""
    latencies: list[float] = []
    it = iter(texts)

    async def caller() -> None:
        for text in it:
            start = time.perf_counter()
            await call(text)
            latencies.append(time.perf_counter() - start)

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return {
        **rates(len(texts), start, cpu),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
    }


def rates(n: int, start: float, cpu: float) -> dict[str, float]:
    """Wall-clock queries/s and this process's CPU ms per query since ``start``/``cpu``.

    CPU time (all threads) is the figure least disturbed by other jobs on the machine.
    """
    return {
        "qps": n / (time.perf_counter() - start),
        "cpu_ms": ms(time.process_time() - cpu) / n,
    }


def encode_run(encoder: Encoder, texts: Sequence[str], batch_size: int) -> dict[str, float]:
    """One ``encode`` call over all ``texts`` at ``batch_size``."""
    saved = encoder.batch_size
    encoder.batch_size = batch_size
    try:
        start, cpu = time.perf_counter(), time.process_time()
        encoder.encode(list(texts))
        return rates(len(texts), start, cpu)
    finally:
        encoder.batch_size = saved


def atypical_inputs() -> dict[str, str]:
    rng = random.Random(0)
    noise = "".join(rng.choice(string.printable) for _ in range(5000))
    return {
        "empty": "",
        "whitespace": " \t\n  \u3000 ",
        "1 MB text": ("please transfer money between my accounts " * 25_000)[:1_000_000],
        "5,000 chars of noise": noise,
        "emoji": "🚀🔥😂💸 🏦➡️🏦 🙏",
        "Chinese": "请把一百美元从我的支票账户转到储蓄账户",
        "Arabic": "أريد تحويل مئة دولار إلى حساب التوفير",
        "Russian": "переведи сто долларов на мой сберегательный счёт",
        "Hindi": "मेरे बचत खाते में सौ डॉलर भेज दो",
    }


# -- the benchmark ---------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        train = by_label(load_split("clinc150", "train", args.data))
        labels = list(train)[:N_ROUTES]
        self.routes = [Route(name=n, utterances=train[n][:N_UTTERANCES]) for n in labels]
        stored = {u for r in self.routes for u in r.utterances}
        val = [e.text for e in load_split("clinc150", "val", args.data)]
        self.queries = [t for t in dict.fromkeys(val) if t not in stored][: args.queries]
        pool = [e.text for e in load_split("clinc150", "train", args.data)] + val
        self.burst_texts = [pool[i % len(pool)] for i in range(args.burst)]
        self.spare = train[list(train)[N_ROUTES]][:PROBE_UTTERANCES]

        self.encoder = Encoder()
        self.encoder.load()
        self.router = AdaptiveRouter(self.encoder, threshold=THRESHOLD)
        self.router.add_routes(self.routes)
        self.defaults = (self.router.worker.max_batch_size, self.router.worker.max_wait_ms)
        self.sr = IndexedRouter(
            encoder=SharedModelEncoder(self.encoder),
            routes=[SrRoute(name=r.name, utterances=list(r.utterances)) for r in self.routes],
            top_k=5,
            aggregation="max",
            confidence_threshold=THRESHOLD,
        )
        self.results: dict[str, Any] = {}

    async def aquery(self, text: str) -> object:
        return await self.router.aquery(text)

    async def sr_acall(self, text: str) -> object:
        return await self.sr.acall(text)

    async def warm_up(self) -> None:
        for text in self.queries[:20]:
            self.router.query(text)
            await self.router.aquery(text)
            self.sr(text)
            await self.sr.acall(text)
        self.router.cache.clear()

    # 0. worker defaults
    # Each setting is paired with an encoder-ceiling run just before it, and reported
    # as a fraction of it, so that load from other jobs cancels out.
    async def sweep(self, best: int) -> None:
        rows = []
        worker = self.router.worker
        for size, wait in SWEEP:
            worker.max_batch_size, worker.max_wait_ms = size, wait
            row: dict[Any, Any] = {"max_batch_size": size, "max_wait_ms": wait}
            for callers in SWEEP_CALLERS:
                ceiling = encode_run(self.encoder, self.queries, best)
                self.router.cache.clear()
                run = await concurrent(self.aquery, self.queries, callers)
                run["of_ceiling"] = run["qps"] / ceiling["qps"]
                run["of_ceiling_cpu"] = ceiling["cpu_ms"] / run["cpu_ms"]
                row[callers] = run
            rows.append(row)
            print(f"sweep {size:>4} {wait:g}:", {c: row[c] for c in SWEEP_CALLERS})
        worker.max_batch_size, worker.max_wait_ms = self.defaults
        self.results["sweep"] = rows

    # encoder ceiling: the best batch size for one call over the same 1,000 texts
    def best_batch_size(self) -> int:
        sizes = {b: encode_run(self.encoder, self.queries, b) for b in (8, 16, 32, 64, 128)}
        self.results["ceiling_by_batch_size"] = sizes
        print("ceiling by batch size:", sizes)
        return max(sizes, key=lambda b: sizes[b]["qps"])

    # 1. sequential single queries, interleaved per text so drift hits all four alike
    async def sequential(self) -> None:
        times: dict[str, list[float]] = {k: [] for k in ("query", "aquery", "sr", "sr_async")}
        for text in self.queries[: self.args.sequential]:
            self.router.cache.clear()
            start = time.perf_counter()
            self.router.query(text)
            times["query"].append(time.perf_counter() - start)
            self.router.cache.clear()
            start = time.perf_counter()
            await self.router.aquery(text)
            times["aquery"].append(time.perf_counter() - start)
            start = time.perf_counter()
            self.sr(text)
            times["sr"].append(time.perf_counter() - start)
            start = time.perf_counter()
            await self.sr.acall(text)
            times["sr_async"].append(time.perf_counter() - start)
        self.results["sequential"] = {
            k: {"p50_ms": ms(percentile(v, 50)), "p99_ms": ms(percentile(v, 99))}
            for k, v in times.items()
        }
        print("sequential:", self.results["sequential"])

    # 2. concurrent callers, and the ceiling, in interleaved rounds
    async def rounds(self, best: int) -> None:
        runs: list[dict[str, Any]] = []
        for r in range(self.args.rounds):
            # The four runs the targets compare come first and back to back.
            run: dict[str, Any] = {"ceiling": encode_run(self.encoder, self.queries, best)}
            for callers in sorted(LEVELS, reverse=True):
                self.router.cache.clear()
                run[f"syn_{callers}"] = await concurrent(self.aquery, self.queries, callers)
                if callers == max(LEVELS):
                    self.router.cache.clear()
                    start, cpu = time.perf_counter(), time.process_time()
                    for text in self.queries:
                        self.router.query(text)
                    run["sync"] = rates(len(self.queries), start, cpu)
                run[f"sr_{callers}"] = await concurrent(self.sr_acall, self.queries, callers)
            top = run[f"syn_{max(LEVELS)}"]["qps"]
            ratios = {
                "vs_sync": top / run["sync"]["qps"],
                "vs_sr": top / run[f"sr_{max(LEVELS)}"]["qps"],
                "vs_ceiling": top / run["ceiling"]["qps"],
            }
            print(f"round {r}:", {k: round(v["qps"]) for k, v in run.items()}, ratios)
            runs.append({**run, "ratios": ratios})
        med = {key: {m: median(r[key][m] for r in runs) for m in runs[0][key]} for key in runs[0]}
        self.results["rounds"] = runs
        self.results["median"] = med

    # 3. a burst larger than the queue
    async def burst(self) -> None:
        self.router.cache.clear()
        outcome = {"processed": 0, "rejected": 0, "failed_otherwise": 0, "never_finished": 0}
        rejected_at: list[float] = []
        start = time.perf_counter()

        async def one(text: str) -> None:
            try:
                await self.router.aquery(text)
                outcome["processed"] += 1
            except RouterOverloadedError:
                rejected_at.append(time.perf_counter() - start)
                outcome["rejected"] += 1
            except Exception:
                outcome["failed_otherwise"] += 1

        tasks = [asyncio.create_task(one(t)) for t in self.burst_texts]
        _, pending = await asyncio.wait(tasks, timeout=self.args.burst_timeout)
        outcome["never_finished"] = len(pending)
        for task in pending:
            task.cancel()
        self.results["burst"] = {
            **outcome,
            "calls": len(tasks),
            "max_queue_size": self.router.worker.max_queue_size,
            "last_rejection_ms": ms(max(rejected_at)) if rejected_at else 0.0,
            "wall_s": time.perf_counter() - start,
        }
        print("burst:", self.results["burst"])

    # 4. memory over add/delete cycles
    def memory(self) -> None:
        name = "rss_probe"

        def syn_cycle() -> None:
            self.router.add_route(Route(name=name, utterances=self.spare))
            self.router.delete_route(name)

        def sr_cycle() -> None:
            self.sr.add(SrRoute(name=name, utterances=list(self.spare)))
            self.sr.remove(name)

        out = {}
        for label, cycle in (("synaptoroute", syn_cycle), ("semantic-router", sr_cycle)):
            for _ in range(50):  # let allocators and caches reach their steady size
                cycle()
            gc.collect()
            before = rss_mb()
            for _ in range(self.args.cycles):
                cycle()
            gc.collect()
            after = rss_mb()
            out[label] = {"before_mb": before, "after_mb": after, "growth_mb": after - before}
            print("rss:", label, out[label])
        self.results["memory"] = out

    # 5. atypical inputs
    async def atypical(self) -> None:
        out: dict[str, dict[str, str]] = {}
        reps = 5
        for label, text in atypical_inputs().items():
            row: dict[str, str] = {}
            calls: dict[str, Callable[[], Any]] = {
                "query": partial(self.router.query, text),
                "aquery": partial(self.router.aquery, text),
                "sr": partial(self.sr, text),
                "sr_async": partial(self.sr.acall, text),
            }
            for key, fn in calls.items():
                times = []
                try:
                    for _ in range(reps):
                        self.router.cache.clear()
                        start = time.perf_counter()
                        result = fn()
                        if asyncio.iscoroutine(result):
                            result = await result
                        times.append(time.perf_counter() - start)
                    name = getattr(result, "name", None)
                    row[key] = f"{ms(median(times)):.2f} ms → {name}"
                except Exception as exc:
                    row[key] = f"error: {type(exc).__name__}"
            out[label] = row
        self.results["atypical"] = out
        print("atypical:", out)

    async def run(self) -> None:
        await self.warm_up()
        best = self.best_batch_size()
        self.results["best_batch_size"] = best
        if not self.args.no_sweep:
            await self.sweep(best)
        await self.sequential()
        await self.rounds(best)
        await self.burst()
        await self.router.stop()
        self.memory()
        await self.atypical()
        await self.router.stop()


# -- report ------------------------------------------------------------------------------
def report(res: dict[str, Any], command: str, machine: str, load_end: float) -> str:
    med, seq, burst, mem = res["median"], res["sequential"], res["burst"], res["memory"]
    s1000, r1000 = med["syn_1000"]["qps"], med["sr_1000"]["qps"]
    sync, ceiling = med["sync"]["qps"], med["ceiling"]["qps"]
    cpu = {k: v["cpu_ms"] for k, v in med.items() if "cpu_ms" in v}
    ratio = med["ratios"]
    spread = {
        k: (min(r["ratios"][k] for r in res["rounds"]), max(r["ratios"][k] for r in res["rounds"]))
        for k in ratio
    }

    def ratio_text(key: str, percent: bool = False) -> str:
        lo, hi = spread[key]
        if percent:
            return f"**{100 * ratio[key]:.0f}%** (rounds: {100 * lo:.0f}-{100 * hi:.0f}%)"
        return f"**{ratio[key]:.2f}x** (rounds: {lo:.2f}-{hi:.2f}x)"

    gap = seq["aquery"]["p50_ms"] - seq["query"]["p50_ms"]

    def yes(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    lines = [
        f"Command: `{command}` (semantic-router {res['sr_version']} from "
        "`benchmarks/requirements-peers.txt`, in its own venv).",
        f"Machine: {machine}; load {load_end:.2f} at the end. The 2 cores were shared with "
        "other agents' jobs during the run, so absolute figures are noisy; compare ratios.",
        f"Setup: both routers on the same ONNX model (synaptoroute `Encoder`, INT8 "
        f"all-MiniLM-L6-v2, wrapped as a semantic-router `DenseEncoder`); {N_ROUTES} routes x "
        f"{N_UTTERANCES} utterances (CLINC150 train); {len(res['queries'])} distinct CLINC150 "
        f"val queries; synaptoroute's query cache cleared before every run. Worker defaults "
        f"`max_batch_size={res['defaults'][0]}`, `max_wait_ms={res['defaults'][1]:g}`. "
        f"Throughput figures are medians of {res['rounds_n']} rounds; each ratio is the median "
        "of the per-round ratios of runs made back to back, so that load from other jobs "
        "largely cancels out. "
        "Next to wall-clock q/s, *CPU ms/q* is this process's CPU time (all threads) per "
        "query: the figure other jobs on the machine disturb least.",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| 1,000 callers ≥ 1.5x own sequential `query` | {ratio_text('vs_sync')}; medians "
        f"{s1000:.0f} vs {sync:.0f} q/s | {yes(ratio['vs_sync'] >= 1.5)} |",
        f"| 1,000 callers ≥ 1.3x semantic-router async | {ratio_text('vs_sr')}; medians "
        f"{s1000:.0f} vs {r1000:.0f} q/s | {yes(ratio['vs_sr'] >= 1.3)} |",
        f"| 1,000 callers ≥ 90% of the encoder ceiling | {ratio_text('vs_ceiling', True)}; "
        f"medians {s1000:.0f} vs {ceiling:.0f} q/s; by CPU time "
        f"{100 * cpu['ceiling'] / cpu['syn_1000']:.0f}% | {yes(ratio['vs_ceiling'] >= 0.9)} |",
        f"| lone `aquery` p50 within 0.5 ms of `query` p50 | {seq['aquery']['p50_ms']:.2f} vs "
        f"{seq['query']['p50_ms']:.2f} ms (+{gap:.2f}) | {yes(gap <= 0.5)} |",
        f"| burst: 0 failed otherwise, 0 never finished | {burst['failed_otherwise']}, "
        f"{burst['never_finished']} | "
        f"{yes(burst['failed_otherwise'] == 0 and burst['never_finished'] == 0)} |",
        f"| RSS growth over {res['cycles']:,} add/delete cycles < 10 MB | "
        f"{mem['synaptoroute']['growth_mb']:+.1f} MB | "
        f"{yes(mem['synaptoroute']['growth_mb'] < 10)} |",
        "",
        "**1. Sequential single queries** (idle routers, interleaved per text, "
        f"{res['sequential_n']} texts)",
        "",
        "| call | p50 ms | p99 ms |",
        "|---|---|---|",
    ]
    names = {
        "query": "synaptoroute `query`",
        "aquery": "synaptoroute `aquery` (idle worker)",
        "sr": "semantic-router `router(text)`",
        "sr_async": "semantic-router `await router.acall(text)`",
    }
    for key, label in names.items():
        lines.append(f"| {label} | {seq[key]['p50_ms']:.2f} | {seq[key]['p99_ms']:.2f} |")
    lines += [
        "",
        "**2. Concurrent callers** (closed loop: each caller awaits one query after another "
        f"over the shared {len(res['queries'])} texts; async calls)",
        "",
        "| callers | synaptoroute q/s | p99 ms | CPU ms/q | semantic-router q/s | p99 ms "
        "| CPU ms/q | ratio q/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in LEVELS:
        a, b = med[f"syn_{n}"], med[f"sr_{n}"]
        lines.append(
            f"| {n:,} | {a['qps']:.0f} | {a['p99_ms']:.1f} | {a['cpu_ms']:.2f} | "
            f"{b['qps']:.0f} | {b['p99_ms']:.1f} | {b['cpu_ms']:.2f} | "
            f"{a['qps'] / b['qps']:.2f}x |"
        )
    ceil = res["ceiling_by_batch_size"]
    lines += [
        f"| sync `query`, one after another | {sync:.0f} | | {cpu['sync']:.2f} | | | | |",
        f"| encoder ceiling: one `encode` of all {len(res['queries'])} texts, batch size "
        f"{res['best_batch_size']} | {ceiling:.0f} | | {cpu['ceiling']:.2f} | | | | |",
        "",
        "Encoder ceiling by batch size (one run each, q/s and CPU ms/q): "
        + ", ".join(f"{b}: {q['qps']:.0f} ({q['cpu_ms']:.2f})" for b, q in ceil.items())
        + ".",
        "",
        f"**3. Burst**: {burst['calls']:,} concurrent `aquery` calls, queue of "
        f"{burst['max_queue_size']:,}: {burst['processed']:,} processed, "
        f"{burst['rejected']:,} rejected with `RouterOverloadedError` (the last after "
        f"{burst['last_rejection_ms']:.0f} ms), {burst['failed_otherwise']} failed otherwise, "
        f"{burst['never_finished']} never finished; all settled in {burst['wall_s']:.1f} s. "
        "semantic-router has no admission limit (every call is accepted onto its thread "
        "pool), so it was not run through the burst.",
        "",
        f"**4. Memory** over {res['cycles']:,} add-route/delete-route cycles of a "
        f"{PROBE_UTTERANCES}-utterance route, after 50 warm-up cycles, `gc.collect()` "
        "before each reading:",
        "",
        "| router | RSS before MB | after MB | growth MB |",
        "|---|---|---|---|",
    ]
    for label, m in mem.items():
        lines.append(
            f"| {label} | {m['before_mb']:.1f} | {m['after_mb']:.1f} | {m['growth_mb']:+.1f} |"
        )
    lines += [
        "",
        "**5. Atypical inputs** (median of 5 calls, cache cleared; → the route returned)",
        "",
        "| input | synaptoroute `query` | `aquery` | semantic-router sync | async |",
        "|---|---|---|---|---|",
    ]
    for label, row in res["atypical"].items():
        lines.append(
            f"| {label} | {row['query']} | {row['aquery']} | {row['sr']} | {row['sr_async']} |"
        )
    lines += [
        "",
        "**Worker defaults by measurement**: `max_batch_size` x `max_wait_ms`, one run "
        "each, as a fraction of an encoder-ceiling run made just before it (batch size "
        f"{res['best_batch_size']}), by wall clock / by CPU time; then q/s, p99 ms.",
        "",
        "| max_batch_size | max_wait_ms | "
        + " | ".join(f"{c:,} callers" for c in SWEEP_CALLERS)
        + " |",
        "|---|---|" + "---|" * len(SWEEP_CALLERS),
    ]
    for row in res.get("sweep", []):
        cells = [
            f"{100 * row[c]['of_ceiling']:.0f}% / {100 * row[c]['of_ceiling_cpu']:.0f}% "
            f"({row[c]['qps']:.0f} q/s, {row[c]['p99_ms']:.0f} ms)"
            for c in SWEEP_CALLERS
        ]
        lines.append(
            f"| {row['max_batch_size']} | {row['max_wait_ms']:g} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


NOTES = """\
Notes. Every `aquery` crosses two threads (event loop to the worker thread and back).
On a calm machine that costs little (the lone-`aquery` row above); when other jobs
keep the cores busy, each crossing waits for a core. Earlier runs of this script on
this machine at a 1-minute load of 8-13 showed the lone-`aquery` gap growing to
several ms, and semantic-router's pool of encoding threads winning a larger share of
the contended cores (higher wall-clock q/s than the single worker thread). The figures
above come from a calmer period; rerun when comparing.
"""


def write_section(body: str) -> None:
    path = REPO_ROOT / "BENCHMARKS.md"
    text = path.read_text(encoding="utf-8")
    start = text.index(SECTION) + len(SECTION)
    end = text.find("\n## ", start)
    end = len(text) if end < 0 else end + 1
    path.write_text(text[:start] + "\n\n" + body + "\n" + text[end:], encoding="utf-8")


def main() -> None:
    """Run every part and print (or write) the Markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_argument(parser)
    parser.add_argument("--queries", type=int, default=N_QUERIES, help="distinct query texts")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds")
    parser.add_argument("--sequential", type=int, default=300, help="texts for part 1")
    parser.add_argument("--burst", type=int, default=20_000, help="calls in the burst")
    parser.add_argument("--burst-timeout", type=float, default=300.0)
    parser.add_argument("--cycles", type=int, default=2000, help="add/delete cycles")
    parser.add_argument("--no-sweep", action="store_true", help="skip the defaults sweep")
    parser.add_argument("--json", type=Path, help="also write every number here")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()

    command = command_line("async_serving.py")
    machine = machine_info()
    print(machine)
    started = time.perf_counter()
    bench = Bench(args)
    asyncio.run(bench.run())
    res = bench.results
    res.update(
        sr_version=version("semantic-router"),
        queries=bench.queries,
        defaults=bench.defaults,
        rounds_n=args.rounds,
        sequential_n=min(args.sequential, len(bench.queries)),
        cycles=args.cycles,
    )
    body = report(res, command.strip(), machine, os.getloadavg()[0])
    body += f"\nWhole run: {time.perf_counter() - started:.0f} s.\n\n{NOTES}"
    print(body)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str), encoding="utf-8")
    if args.write:
        write_section(body)


if __name__ == "__main__":
    main()
