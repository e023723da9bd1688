"""The bundled model on an accelerator (issue 17): batch-size scaling, 1 query and 1,000 concurrent.

For each encoder batch size (texts per ONNX call, which is also the batching
worker's batch) it measures, on one device:

- one query at a time through ``router.query``: p50 and p99 latency;
- 1,000 distinct CLINC150 val texts as 1,000 concurrent ``aquery`` calls: throughput.

Run on a machine with an NVIDIA GPU and ``onnxruntime-gpu`` installed in place of
``onnxruntime`` (``pip install -e ".[gpu]"`` after ``pip uninstall onnxruntime``)::

    python benchmarks/gpu.py --device cuda [--write]

``--device cpu`` gives the same table on the CPU for comparison. If the provider is
missing the encoder falls back to the CPU with a warning; the script then stops
rather than report CPU figures as the device's. ``--write`` replaces the "GPU (issue
17)" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time
import warnings

from common import (
    add_data_argument,
    by_label,
    command_line,
    load_split,
    machine_info,
    percentile,
    replace_section,
)

from synaptoroute import AdaptiveRouter, Encoder, Route

SECTION = "## GPU (issue 17)"
BATCHES = (1, 8, 32, 128, 256, 512, 1024, 2048)
N_ROUTES = 20
N_UTTERANCES = 10
N_SINGLE = 200
N_CONCURRENT = 1000


def measure(
    device: str, batch: int, routes: list[Route], texts: list[str]
) -> tuple[float, float, float]:
    """p50 and p99 single-query latency (ms), and concurrent throughput (queries/s)."""
    with warnings.catch_warnings():
        # No silent CPU fallback: the encoder warns of a missing provider when it is
        # made, and onnxruntime may still fall back at load (checked below).
        warnings.simplefilter("error", RuntimeWarning)
        encoder = Encoder(device=device, batch_size=batch)
        encoder.load()
    if device != "cpu" and encoder.device == "cpu":
        msg = f"asked for {device!r}, the session runs on {encoder.providers}: not a GPU figure"
        raise SystemExit(msg)
    router = AdaptiveRouter(encoder, max_batch_size=batch, cache_size=0)
    router.add_routes(routes)
    for text in texts[:20]:
        router.query(text)
    single = []
    for text in texts[:N_SINGLE]:
        start = time.perf_counter()
        router.query(text)
        single.append((time.perf_counter() - start) * 1000)

    async def burst() -> float:
        await router.start()
        start = time.perf_counter()
        await asyncio.gather(*(router.aquery(t) for t in texts[:N_CONCURRENT]))
        elapsed = time.perf_counter() - start
        await router.stop()
        return N_CONCURRENT / elapsed

    return percentile(single, 50), percentile(single, 99), asyncio.run(burst())


def accelerator() -> str:
    """The GPUs as ``nvidia-smi`` names them (the machine line names only the CPU)."""
    query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "unknown (no nvidia-smi)"
    return "; ".join(line.strip() for line in out.stdout.splitlines() if line.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_data_argument(parser)
    parser.add_argument("--device", default="cuda", help="cpu, cuda, cuda:<n>, tensorrt, ...")
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=list(BATCHES),
        help="encoder batch sizes to measure, one table row each (default: %(default)s)",
    )
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    if any(batch < 1 for batch in args.batches):
        # nargs="+" refuses an empty list (an empty table); a size below 1 is no batch.
        parser.error(f"--batches must be positive integers, got {args.batches}")

    machine = machine_info()
    groups = by_label(load_split("clinc150", "train", args.data))
    routes = [Route(name=n, utterances=groups[n][:N_UTTERANCES]) for n in sorted(groups)[:N_ROUTES]]
    texts = list(dict.fromkeys(row.text for row in load_split("clinc150", "val", args.data)))
    rows = []
    for batch in args.batches:
        p50, p99, qps = measure(args.device, batch, routes, texts)
        rows.append(f"| {batch} | {p50:.2f} | {p99:.2f} | {qps:,.0f} |")
        print(rows[-1], flush=True)
    lines = [
        SECTION,
        "",
        f"Command: `{command_line('gpu.py')}`. Machine: {machine}; accelerator: {accelerator()}.",
        "",
        "| batch size | 1 query p50 (ms) | 1 query p99 (ms) | 1,000 concurrent (queries/s) |",
        "|---|---|---|---|",
        *rows,
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_section(SECTION, text)


if __name__ == "__main__":
    main()
