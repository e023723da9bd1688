"""SynaptorouteSelector vs LlamaIndex's EmbeddingSingleSelector on CLINC150 (issue 6).

20 CLINC150 intents become 20 tools whose description is the intent name written as
a phrase (``"book_flight"`` -> ``"book flight"``). Every val row of those intents is a
query. Three selectors, one model (the bundled all-MiniLM-L6-v2 INT8 encoder, loaded
once and shared):

* ``EmbeddingSingleSelector`` over ``SynaptorouteEmbedding`` (LlamaIndex's own
  embedding selector: it embeds every description again on every query);
* ``SynaptorouteSelector`` on the descriptions alone;
* ``SynaptorouteSelector`` with the first ``--utterances`` train rows of each intent.

All use ``on_no_match="best"`` semantics (always select one), so accuracy is top-1
over in-scope queries. Latency is per ``select`` call, measured interleaved (each
query goes through every selector in turn) so load changes on a shared machine hit
all of them alike; each selector gets one untimed warm-up call first (for ours it
embeds the choices, reported separately). The async line sends every query at once
through ``aselect`` (the batching worker).

Usage::

    python benchmarks/llamaindex_selector.py [--data DIR] [--utterances 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from common import REPO_ROOT, add_data_argument, by_label, load_split, machine_info, summarize_ms
from llama_index.core.base.base_selector import BaseSelector
from llama_index.core.selectors import EmbeddingSingleSelector
from llama_index.core.tools import ToolMetadata
from llama_index.selectors.synaptoroute import SynaptorouteEmbedding, SynaptorouteSelector

from synaptoroute import Encoder

_FIXTURE = REPO_ROOT / "tests/fixtures/clinc150_val_slice.jsonl"


def _intents(path: Path) -> list[str]:
    # The same 20 intents as the test fixtures (chosen there with random.Random(0)).
    labels: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        label = json.loads(line)["label"] if line.strip() else None
        if label is not None:
            labels.setdefault(label, None)
    return list(labels)


def _time_select(
    selector: BaseSelector, choices: list[ToolMetadata], query: str
) -> tuple[int, float]:
    start = time.perf_counter()
    result = selector.select(choices, query)
    return result.ind, (time.perf_counter() - start) * 1000.0


def main() -> None:
    """Run the comparison and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_argument(parser)
    parser.add_argument("--utterances", type=int, default=10, help="train rows per intent")
    parser.add_argument("--limit", type=int, default=None, help="val queries per intent")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    print(f"machine: {machine_info()}")
    intents = _intents(_FIXTURE)
    train = by_label(load_split("clinc150", "train", args.data))
    val = by_label(load_split("clinc150", "val", args.data))
    choices = [ToolMetadata(name=i, description=i.replace("_", " ")) for i in intents]
    queries = [(text, index) for index, i in enumerate(intents) for text in val[i][: args.limit]]
    utterances = {i: train[i][: args.utterances] for i in intents}

    encoder = Encoder()
    encoder.load()
    selectors: dict[str, BaseSelector] = {
        "EmbeddingSingleSelector (descriptions)": EmbeddingSingleSelector.from_defaults(
            embed_model=SynaptorouteEmbedding(encoder)
        ),
        "SynaptorouteSelector (descriptions)": SynaptorouteSelector.from_defaults(encoder=encoder),
        f"SynaptorouteSelector (+{args.utterances} utterances/intent)": (
            SynaptorouteSelector.from_defaults(utterances=utterances, encoder=encoder)
        ),
    }
    warmup: dict[str, float] = {}
    for name, selector in selectors.items():
        warmup[name] = _time_select(selector, choices, "warm-up question")[1]

    correct = dict.fromkeys(selectors, 0)
    times: dict[str, list[float]] = {name: [] for name in selectors}
    for text, label in queries:
        for name, selector in selectors.items():
            ind, ms = _time_select(selector, choices, text)
            correct[name] += ind == label
            times[name].append(ms)

    ours = selectors[f"SynaptorouteSelector (+{args.utterances} utterances/intent)"]
    assert isinstance(ours, SynaptorouteSelector)

    async def all_at_once() -> tuple[float, int]:
        # Fresh texts (suffix) so the router's query cache cannot answer them.
        start = time.perf_counter()
        results = await asyncio.gather(*(ours.aselect(choices, f"{t} ") for t, _ in queries))
        elapsed = time.perf_counter() - start
        await ours.aclose()
        hits = sum(r.ind == label for r, (_, label) in zip(results, queries, strict=True))
        return elapsed, hits

    elapsed, async_hits = asyncio.run(all_at_once())

    baseline = "EmbeddingSingleSelector (descriptions)"
    base_mean = summarize_ms(times[baseline])["mean"]
    base_acc = correct[baseline] / len(queries)
    rows: dict[str, dict[str, float]] = {}
    print(f"{len(intents)} intents as tools, {len(queries)} val queries, one model for all\n")
    print(
        "| selector | accuracy | vs baseline | mean ms | p50 ms | p99 ms | speed-up | warm-up ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in selectors:
        stats = summarize_ms(times[name])
        acc = correct[name] / len(queries)
        row = {
            "accuracy": acc,
            "points_vs_baseline": 100 * (acc - base_acc),
            "speedup": base_mean / stats["mean"],
            "warmup_ms": warmup[name],
            **{f"{k}_ms": v for k, v in stats.items() if k != "n"},
        }
        rows[name] = row
        print(
            f"| {name} | {100 * acc:.1f}% | {row['points_vs_baseline']:+.1f} pts "
            f"| {stats['mean']:.2f} | {stats['p50']:.2f} | {stats['p99']:.2f} "
            f"| {row['speedup']:.1f}x | {warmup[name]:.0f} |"
        )
    print(
        f"\nasync: {len(queries)} aselect calls at once through the batching worker: "
        f"{elapsed * 1000:.0f} ms in all, {elapsed * 1000 / len(queries):.2f} ms per selection, "
        f"accuracy {100 * async_hits / len(queries):.1f}%"
    )
    if args.json:
        report = {
            "machine": machine_info(),
            "queries": len(queries),
            "intents": intents,
            "rows": rows,
            "async": {"total_ms": elapsed * 1000, "accuracy": async_hits / len(queries)},
        }
        Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
