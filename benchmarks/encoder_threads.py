"""Single-query latency of the bundled encoder by ONNX Runtime thread settings.

Backs the default ``Encoder(spin=True)`` and ``threads`` = all cores. Run:
``.venv/bin/python benchmarks/encoder_threads.py [--queries 300]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import machine_info

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
    args = parser.parse_args()
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
    print(f"# {machine_info()}")
    print("| spin | threads | p50 ms | p99 ms |\n|---|---|---|---|")
    for (spin, threads), values in times.items():
        p50, p99 = np.percentile(values, [50, 99])
        print(f"| {spin} | {threads} | {p50:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    main()
