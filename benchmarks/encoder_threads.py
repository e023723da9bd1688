"""Single-query latency of the bundled encoder by ONNX Runtime thread settings, and
bulk encoding side by side against one call at a time.

Backs the default ``Encoder(spin=True)``, ``threads`` = all cores, and
``BULK_MIN_TEXTS``. Run:
``.venv/bin/python benchmarks/encoder_threads.py [--queries 300] [--bulk-rounds 3]``
(the bulk part encodes CLINC150 train from ``--data``; ``--bulk-rounds 0`` skips it).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import add_data_argument, load_split, machine_info

import synaptoroute.encoder as encoder_module
from synaptoroute import Encoder

TEXTS = [
    "How do I get my money back?",
    "my password doesn't work anymore",
    "will it rain in Paris tomorrow",
    "book a table for two at 8pm",
]


def main() -> None:
    """Print p50/p99 of ``encode([text])`` for spin on/off x 1/2 threads, interleaved."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--bulk-rounds", type=int, default=3)
    add_data_argument(parser)
    args = parser.parse_args()
    info = machine_info()
    if args.bulk_rounds:
        bulk(args.data, args.bulk_rounds, info)
    if not args.queries:
        return
    settings = [(spin, threads) for spin in (True, False) for threads in (1, 2)]
    encoders = {s: Encoder(spin=s[0], threads=s[1]) for s in settings}
    for enc in encoders.values():
        enc.encode(TEXTS)  # load and warm up
    times: dict[tuple[bool, int], list[float]] = {s: [] for s in settings}
    for i in range(args.queries):  # interleaved, so every setting sees the same load
        for setting, enc in encoders.items():
            start = time.perf_counter()
            enc.encode([TEXTS[i % len(TEXTS)]])
            times[setting].append((time.perf_counter() - start) * 1000)
    print(f"# {info}")
    print("| spin | threads | p50 ms | p99 ms |\n|---|---|---|---|")
    for (spin, threads), values in times.items():
        p50, p99 = np.percentile(values, [50, 99])
        print(f"| {spin} | {threads} | {p50:.2f} | {p99:.2f} |")


def bulk(data: str | None, rounds: int, info: str) -> None:
    """Seconds to encode CLINC150 train in one call, batches side by side on single-
    threaded workers vs one ONNX call at a time on all threads, alternated."""
    from synaptoroute.server.memory import malloc_trim, rss_bytes

    texts = [r.text for r in load_split("clinc150", "train", data)]
    enc = Encoder()
    enc.encode(texts[:64])  # the main session loaded and warm
    malloc_trim()
    before = rss_bytes()
    enc.encode(texts[: encoder_module.BULK_MIN_TEXTS])  # opens the second session
    malloc_trim()
    after = rss_bytes()
    threshold = encoder_module.BULK_MIN_TEXTS
    seconds: dict[str, list[float]] = {"side by side": [], "one at a time": []}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for mode in seconds:
            encoder_module.BULK_MIN_TEXTS = threshold if mode == "side by side" else 10**9
            start = time.perf_counter()
            vectors[mode] = enc.encode(texts)
            seconds[mode].append(time.perf_counter() - start)
    encoder_module.BULK_MIN_TEXTS = threshold
    same = np.array_equal(vectors["side by side"], vectors["one at a time"])
    print(f"# {info}")
    print(f"# {len(texts)} texts, threads={enc.threads}, same vectors: {same}")
    if before is not None and after is not None:
        print(
            f"# RSS added by the first bulk call (second session): {(after - before) / 2**20:.0f} MiB"
        )
    print("| bulk encode | seconds per round | ms per text (best) |\n|---|---|---|")
    for mode, values in seconds.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {mode} | {runs} | {1000 * min(values) / len(texts):.2f} |")


if __name__ == "__main__":
    main()
