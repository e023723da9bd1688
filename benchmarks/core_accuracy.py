"""Routing accuracy of each per-route aggregation on CLINC150, BANKING77 and SNIPS (issue 2).

Train rows are the routes' utterances, val rows the queries. Every dataset is
encoded once with the default :class:`~synaptoroute.encoder.Encoder`; each
aggregation then gets its own :class:`~synaptoroute.router.AdaptiveRouter` fed the
same vectors through :class:`common.PrecomputedEncoder`, so queries take the
router's real path (``query_batch`` -> score -> ``decide``) without re-encoding.

Reported per dataset and aggregation:

* top-1: in-scope val rows whose best route is their label (no threshold);
* @thr: in-scope rows that match their label at the router's default threshold;
* for CLINC150, out-of-scope recall and accuracy over all val rows (OOS counted
  as correct when no route passes), at the default threshold and at the threshold
  that maximises it on CLINC150 val;
* the same with 10 utterances per intent (CLINC150, BANKING77), mean over seeds.

Usage::

    python benchmarks/core_accuracy.py [--data DIR] [--cache DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from common import (
    DATASETS,
    Example,
    PrecomputedEncoder,
    add_data_argument,
    by_label,
    encode_cached,
    load_split,
    machine_info,
)
from numpy.typing import NDArray

from synaptoroute.encoder import Encoder
from synaptoroute.index import Aggregation
from synaptoroute.models import Route
from synaptoroute.router import DEFAULT_THRESHOLD, AdaptiveRouter


@dataclass(frozen=True)
class Config:
    """One aggregation setting."""

    aggregation: Aggregation
    top_k: int = 3

    @property
    def label(self) -> str:
        """Name shown in the tables."""
        return f"mean_topk k={self.top_k}" if self.aggregation == "mean_topk" else self.aggregation


CONFIGS = (
    Config("max"),
    Config("mean_topk", 3),
    Config("mean_topk", 5),
    Config("centroid"),
)
THRESHOLDS = np.round(np.arange(0.0, 1.0001, 0.01), 2)
QUERY_CHUNK = 256


@dataclass
class Predictions:
    """Best route and its score for every val row."""

    candidates: list[str | None]
    scores: NDArray[np.float64]
    labels: list[str | None]

    def top1(self) -> float:
        """In-scope accuracy ignoring the threshold."""
        pairs = [(c, y) for c, y in zip(self.candidates, self.labels, strict=True) if y]
        return sum(c == y for c, y in pairs) / len(pairs)

    def predicted(self, threshold: float) -> list[str | None]:
        """The route each row gets at ``threshold`` (``None`` below it)."""
        return [
            c if s >= threshold else None
            for c, s in zip(self.candidates, self.scores.tolist(), strict=True)
        ]

    def in_scope_at(self, threshold: float) -> float:
        """In-scope rows routed to their label at ``threshold``."""
        pairs = [(p, y) for p, y in zip(self.predicted(threshold), self.labels, strict=True) if y]
        return sum(p == y for p, y in pairs) / len(pairs)

    def oos_recall_at(self, threshold: float) -> float:
        """Out-of-scope rows given no route at ``threshold`` (nan without OOS rows)."""
        pairs = zip(self.predicted(threshold), self.labels, strict=True)
        preds = [p for p, y in pairs if y is None]
        return sum(p is None for p in preds) / len(preds) if preds else float("nan")

    def overall_at(self, threshold: float) -> float:
        """All rows correct at ``threshold``, an OOS row being correct when unrouted."""
        preds = self.predicted(threshold)
        return sum(p == y for p, y in zip(preds, self.labels, strict=True)) / len(preds)

    def best_threshold(self) -> tuple[float, float]:
        """The grid threshold with the best overall accuracy (lowest on ties) and that accuracy."""
        accs = [self.overall_at(float(t)) for t in THRESHOLDS]
        best = int(np.argmax(accs))
        return float(THRESHOLDS[best]), accs[best]


def build_router(
    encoder: PrecomputedEncoder, groups: dict[str, list[str]], config: Config
) -> AdaptiveRouter:
    """A router holding one route per label; vectors come from ``encoder``'s table."""
    router = AdaptiveRouter(
        encoder, aggregation=config.aggregation, top_k=config.top_k, cache_size=0
    )
    router.add_routes([Route(name=label, utterances=texts) for label, texts in groups.items()])
    return router


def predict(router: AdaptiveRouter, rows: Sequence[Example]) -> Predictions:
    """Run every val row through ``router.query_batch``."""
    candidates: list[str | None] = []
    scores: list[float] = []
    texts = [r.text for r in rows]
    for start in range(0, len(texts), QUERY_CHUNK):
        for match in router.query_batch(texts[start : start + QUERY_CHUNK]):
            candidates.append(match.candidate)
            scores.append(match.score)
    return Predictions(candidates, np.asarray(scores), [r.label for r in rows])


def few_shot(groups: dict[str, list[str]], per_intent: int, seed: int) -> dict[str, list[str]]:
    """``per_intent`` utterances sampled per label (labels in sorted order, ``Random(seed)``)."""
    rng = random.Random(seed)
    return {
        label: rng.sample(groups[label], min(per_intent, len(groups[label])))
        for label in sorted(groups)
    }


def pct(x: float) -> str:
    """A fraction as a percentage with one decimal."""
    return "n/a" if x != x else f"{100 * x:.1f}"


def summary(values: Sequence[float]) -> str:
    """Mean as a percentage, with the standard deviation when there are several runs."""
    text = pct(float(np.mean(values)))
    if len(values) > 1:
        text += f" ± {100 * float(np.std(values)):.1f}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print Markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_argument(parser)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--few-shot", type=int, default=10, help="utterances per intent")
    parser.add_argument("--seeds", type=int, default=5, help="samples for the few-shot rows")
    parser.add_argument("--cache", default=None, help="folder to keep encoded vectors in")
    parser.add_argument("--json", default=None, help="write all numbers to this file")
    args = parser.parse_args(argv)

    print(f"# machine: {machine_info()}")
    print(f"# command: python benchmarks/core_accuracy.py {' '.join(sys.argv[1:])}".rstrip())
    encoder = Encoder()
    results: dict[str, object] = {"machine": machine_info(), "default_threshold": DEFAULT_THRESHOLD}
    full: dict[str, dict[str, list[Predictions]]] = {}
    clinc_best: dict[str, float] = {}
    for dataset in args.datasets:
        train = load_split(dataset, "train", args.data)
        val = load_split(dataset, "val", args.data)
        groups = by_label(train)
        texts = list(dict.fromkeys([t for g in groups.values() for t in g] + [r.text for r in val]))
        t0 = time.perf_counter()
        vectors = encode_cached(encoder, texts, args.cache)
        took = time.perf_counter() - t0
        print(
            f"# {dataset}: {sum(map(len, groups.values()))} utterances in {len(groups)} routes, "
            f"{len(val)} val rows; {len(texts)} distinct texts encoded in {took:.1f} s"
        )
        lookup = PrecomputedEncoder(encoder.model_id, dict(zip(texts, vectors, strict=True)))
        full[dataset] = {c.label: [predict(build_router(lookup, groups, c), val)] for c in CONFIGS}
        if dataset == "clinc150":
            clinc_best = {c: p[0].best_threshold()[0] for c, p in full[dataset].items()}
        if dataset in ("clinc150", "banking77") and args.few_shot:
            few: dict[str, list[Predictions]] = {c.label: [] for c in CONFIGS}
            for seed in range(args.seeds):
                sample = few_shot(groups, args.few_shot, seed)
                for c in CONFIGS:
                    few[c.label].append(predict(build_router(lookup, sample, c), val))
            full[f"{dataset} ({args.few_shot}/intent)"] = few

    # -- tables ----------------------------------------------------------------------
    thr = DEFAULT_THRESHOLD
    table: list[dict[str, object]] = []
    print()
    print(
        f"| data | aggregation | top-1 in-scope | in-scope @{thr} | "
        f"CLINC OOS recall @{thr} | CLINC all rows @{thr} | t* (CLINC) | in-scope @t* | "
        "CLINC OOS recall @t* | CLINC all rows @t* |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, per_config in full.items():
        for label, runs in per_config.items():
            t = clinc_best.get(label, thr)
            is_clinc = name.startswith("clinc150")
            row = {
                "data": name,
                "aggregation": label,
                "top1": summary([p.top1() for p in runs]),
                "in_scope_at_default": summary([p.in_scope_at(thr) for p in runs]),
                "oos_recall_at_default": summary([p.oos_recall_at(thr) for p in runs])
                if is_clinc
                else "",
                "overall_at_default": summary([p.overall_at(thr) for p in runs])
                if is_clinc
                else "",
                "t_star": t,
                "in_scope_at_t_star": summary([p.in_scope_at(t) for p in runs]),
                "oos_recall_at_t_star": summary([p.oos_recall_at(t) for p in runs])
                if is_clinc
                else "",
                "overall_at_t_star": summary([p.overall_at(t) for p in runs]) if is_clinc else "",
            }
            table.append(row)
            print("| " + " | ".join(str(v) for v in row.values()) + " |")

    # The default threshold: CLINC150 val swept for each aggregation.
    if "clinc150" in full:
        grid = [float(t) for t in THRESHOLDS if 0.3 <= t <= 0.8 and round(t * 100) % 5 == 0]
        print()
        print("CLINC150 val by threshold: all rows (OOS counted) / in-scope / OOS recall, %")
        print(
            "| aggregation | metric | " + " | ".join(f"{t:.2f}" for t in grid) + " | best (all) |"
        )
        print("|---|---|" + "---|" * (len(grid) + 1))
        sweep: dict[str, dict[str, list[float]]] = {}
        for label, [preds] in full["clinc150"].items():
            best_t, best_acc = preds.best_threshold()
            metrics = {
                "all rows": [preds.overall_at(t) for t in grid],
                "in-scope": [preds.in_scope_at(t) for t in grid],
                "OOS recall": [preds.oos_recall_at(t) for t in grid],
            }
            sweep[label] = {**metrics, "best": [best_t, best_acc, preds.oos_recall_at(best_t)]}
            for metric, values in metrics.items():
                best = f"{best_t:.2f}: {pct(best_acc)}" if metric == "all rows" else ""
                cells = " | ".join(pct(v) for v in values)
                print(f"| {label} | {metric} | {cells} | {best} |")
        results["clinc150_sweep"] = {"grid": grid, **sweep}
    results["table"] = table
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
