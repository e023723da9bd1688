"""Any event loop, one model per process (issue 12): throughput across loops, and RSS.

1. **Event loops.** One router (20 CLINC150 intents x 10 utterances, bundled model)
   answers 1,000 distinct CLINC150 val texts: once from one event loop with 1,000
   concurrent ``aquery`` calls, and once from four threads, each running its own
   ``asyncio.run`` with 250 concurrent ``aquery`` calls (every loop gets its own
   batching worker). Rounds alternate, the cache is cleared before each, and the
   figure is the median of the rounds' throughputs; their ratio is the result.
2. **Ten default routers.** A fresh process builds one ``AdaptiveRouter()`` (no
   encoder given), routes a query and reads its RSS; then nine more, each routing a
   query, and reads it again. Before 0.3 every router loaded its own model.

    .venv/bin/python benchmarks/event_loops.py [--rounds 5] [--write]

``--write`` replaces the "Event loops and one model per process (issue 12)" section
of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import threading
import time
from statistics import median

from common import (
    add_data_argument,
    by_label,
    command_line,
    load_split,
    machine_info,
    replace_section,
)

from synaptoroute import AdaptiveRouter, Route

SECTION = "## Event loops and one model per process (issue 12)"
N_ROUTES = 20
N_UTTERANCES = 10
N_QUERIES = 1000
N_LOOPS = 4

_RSS_SCRIPT = """
import json
from synaptoroute import AdaptiveRouter, Route

def rss_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")

def build(i):
    router = AdaptiveRouter()
    router.add_route(Route(name=f"billing{i}", utterances=["I need a refund", "refund my order"]))
    router.query("How do I get my money back?")
    return router

routers = [build(0)]
one = rss_mb()
routers += [build(i) for i in range(1, 10)]
print(json.dumps({"one": one, "ten": rss_mb()}))
"""


def one_loop(router: AdaptiveRouter, texts: list[str]) -> float:
    """Seconds to answer ``texts`` concurrently from one event loop."""

    async def main() -> float:
        await router.start()
        start = time.perf_counter()
        await asyncio.gather(*(router.aquery(t) for t in texts))
        elapsed = time.perf_counter() - start
        await router.stop()
        return elapsed

    return asyncio.run(main())


def many_loops(router: AdaptiveRouter, texts: list[str], loops: int) -> float:
    """Seconds to answer ``texts`` split over ``loops`` threads, each with its own loop."""
    share = len(texts) // loops
    ready = threading.Barrier(loops + 1)
    done = threading.Barrier(loops + 1)

    async def serve(part: list[str]) -> None:
        await router.start()
        await asyncio.to_thread(ready.wait)
        await asyncio.gather(*(router.aquery(t) for t in part))
        await asyncio.to_thread(done.wait)
        await router.stop()

    threads = [
        threading.Thread(target=asyncio.run, args=(serve(texts[i * share : (i + 1) * share]),))
        for i in range(loops)
    ]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    done.wait()
    elapsed = time.perf_counter() - start
    for thread in threads:
        thread.join()
    return elapsed


def rss() -> dict[str, float]:
    """RSS (MB) of a fresh process after one and after ten default routers."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT], capture_output=True, text=True, check=True
    )
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_data_argument(parser)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()

    machine = machine_info()
    groups = by_label(load_split("clinc150", "train", args.data))
    names = sorted(groups)[:N_ROUTES]
    router = AdaptiveRouter(cache_size=N_QUERIES * 2)
    router.add_routes(Route(name=n, utterances=groups[n][:N_UTTERANCES]) for n in names)
    seen: set[str] = set()
    texts = []
    for row in load_split("clinc150", "val", args.data):
        if row.text not in seen:
            seen.add(row.text)
            texts.append(row.text)
        if len(texts) == N_QUERIES:
            break
    expected = router.query_batch(texts)
    router.cache.clear()
    one_loop(router, texts[:50])  # warm-up: model, index, threads

    single, multi = [], []
    for _ in range(args.rounds):
        router.cache.clear()
        single.append(N_QUERIES / one_loop(router, texts))
        router.cache.clear()
        multi.append(N_QUERIES / many_loops(router, texts, N_LOOPS))
    router.cache.clear()
    assert asyncio.run(_gather(router, texts)) == expected  # parity check
    memory = rss()

    one_qps, multi_qps = median(single), median(multi)
    lines = [
        SECTION,
        "",
        f"Command: `{command_line('event_loops.py')}`. Machine: {machine}.",
        "",
        "| workload | queries/s (median of rounds) |",
        "|---|---|",
        f"| 1 event loop, {N_QUERIES} concurrent `aquery` | {one_qps:,.0f} |",
        f"| {N_LOOPS} event loops (threads, `asyncio.run` each), "
        f"{N_QUERIES // N_LOOPS} concurrent `aquery` each | {multi_qps:,.0f} |",
        f"| ratio, {N_LOOPS} loops / 1 loop (target >= 0.85) | **{multi_qps / one_qps:.2f}** |",
        "",
        "| process | RSS |",
        "|---|---|",
        f"| 1 default router | {memory['one']:.0f} MB |",
        f"| 10 default routers | {memory['ten']:.0f} MB |",
        f"| ratio (target <= 1.15) | **{memory['ten'] / memory['one']:.3f}** |",
        "",
        f"Rounds: one loop {', '.join(f'{q:,.0f}' for q in single)}; "
        f"{N_LOOPS} loops {', '.join(f'{q:,.0f}' for q in multi)} queries/s.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_section(SECTION, text)


async def _gather(router: AdaptiveRouter, texts: list[str]) -> list[object]:
    try:
        return list(await asyncio.gather(*(router.aquery(t) for t in texts)))
    finally:
        await router.stop()


if __name__ == "__main__":
    main()
