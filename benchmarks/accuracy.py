"""Routing accuracy (issue 4): fit on train, report on val, side by side with semantic-router.

For CLINC150 (with out-of-scope rows), BANKING77 and SNIPS from the shared data folder,
and for 10 labelled rows per intent of CLINC150 and BANKING77 (a seeded random sample):

* routes are built from the train rows (``routes_from_labelled``);
* synaptoroute is measured before fitting (default threshold), after a
  thresholds-only fit (``head=False``) and after the full fit (``head="auto"``),
  always fitted on the same train rows and evaluated on val;
* semantic-router's ``IndexedRouter`` gets the same routes and the same vectors (the
  bundled all-MiniLM-L6-v2 INT8 model, wrapped as its ``DenseEncoder``), before its
  ``fit`` (no threshold) and after it (Platt calibration, 0.5 confidence cut, its
  documented recipe), fitted on the same train rows.

Every text is encoded once with the real model and the vectors are shared by both
routers (``PrecomputedEncoder``), so the comparison is about decisions, not encoders.
A separate timed run fits CLINC150's full train split from scratch with the real
encoder (import + fit), for the "under 60 s on 2 cores" requirement, and a small
latency run shows what the head adds per query.

semantic-router is a peer, never a project dependency: run this script from a venv
that has it (``benchmarks/requirements-peers.txt``), or pass ``--no-peer``::

    python -m venv /tmp/bench-venv-acc
    /tmp/bench-venv-acc/bin/pip install -e '.[fit,plot]' -r benchmarks/requirements-peers.txt
    /tmp/bench-venv-acc/bin/python benchmarks/accuracy.py --cache /tmp/sr-cache
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from common import (
    Example,
    PrecomputedEncoder,
    add_data_argument,
    command_line,
    encode_cached,
    load_split,
    machine_info,
)

from synaptoroute import AdaptiveRouter, Encoder
from synaptoroute.evaluation import Figures, figures, label_indexes
from synaptoroute.fitting import routes_from_labelled

SECTION = "## Routing accuracy: fit and evaluation (issue 4)"
SHOTS_SEED = 0
PEER_FIT_ROWS = 2000
#: (title, dataset, rows per label (random; negative: the first ones) or None, fit options)
SETTINGS: tuple[tuple[str, str, int | None, dict[str, Any]], ...] = (
    ("CLINC150", "clinc150", None, {"objective": "oos_recall", "target_oos_recall": 0.8}),
    ("CLINC150 (objective accuracy)", "clinc150", None, {"objective": "accuracy"}),
    ("CLINC150, 10 per intent", "clinc150", 10, {"objective": "accuracy"}),
    # The first rows of each intent in file order: the source lists similar paraphrases
    # together, so this sample is less varied than a random one.
    ("CLINC150, first 10 per intent", "clinc150", -10, {"objective": "accuracy"}),
    ("BANKING77", "banking77", None, {"objective": "accuracy"}),
    ("BANKING77, 10 per intent", "banking77", 10, {"objective": "accuracy"}),
    ("SNIPS", "snips", None, {"objective": "accuracy"}),
)


def sample_per_label(rows: Sequence[Example], k: int, seed: int) -> list[Example]:
    """``k`` rows of each label (``None`` included), seeded, kept in file order;
    ``-k``: the first ``k`` rows of each label."""
    by: dict[str | None, list[int]] = {}
    for i, row in enumerate(rows):
        by.setdefault(row.label, []).append(i)
    rng = random.Random(seed)
    keep: list[int] = []
    for label in sorted(by, key=lambda x: (x is None, str(x))):
        if k < 0:
            keep.extend(by[label][:-k])
        else:
            keep.extend(rng.sample(by[label], min(k, len(by[label]))))
    return [rows[i] for i in sorted(keep)]


def score(
    names: Sequence[str], labels: Sequence[str | None], pred: Sequence[str | None]
) -> Figures:
    """Figures of predictions, with the same function synaptoroute's reports use."""
    return figures(label_indexes(labels, names), label_indexes(pred, names), len(names))


# -- semantic-router ---------------------------------------------------------------------
def peer_available() -> str | None:
    try:
        return version("semantic-router")
    except PackageNotFoundError:
        return None


def run_peer(
    encoder: PrecomputedEncoder,
    train: Sequence[Example],
    val: Sequence[Example],
    *,
    hybrid: bool = False,
) -> dict[str, Any]:
    """semantic-router before and after its own fit, on the same vectors.

    ``hybrid`` adds its sparse side: a ``TfidfEncoder`` fitted on the routes, mixed
    with the dense score by its default ``alpha`` (0.7 dense) in a ``HybridLocalIndex``
    (1.1.1's form of the older ``HybridRouter``).

    Its ``fit`` is a Platt calibration (two parameters) of the top score; on a busy
    2-core machine it scores ~15 queries/s, so with more than ``PEER_FIT_ROWS`` train
    rows it is fitted on a seeded sample of 10 rows per label (the routes still hold
    every train row). Val rows are scored once with its own batch path
    (``_scores_many``, which its ``evaluate`` uses) and decided with its ``_choose``
    before and after the fit.
    """
    from pydantic import PrivateAttr
    from semantic_router import IndexedRouter
    from semantic_router import Route as SrRoute
    from semantic_router.encoders import DenseEncoder
    from semantic_router.routers.base import run

    class SharedModelEncoder(DenseEncoder):  # type: ignore[misc]
        """The vectors synaptoroute's bundled model made, behind ``DenseEncoder``."""

        name: str = "all-MiniLM-L6-v2-onnx-int8"
        type: str = "synaptoroute-onnx"
        _inner: Any = PrivateAttr()

        def __init__(self, inner: PrecomputedEncoder, **data: Any) -> None:
            super().__init__(**data)
            self._inner = inner

        def __call__(self, docs: list[Any]) -> list[list[float]]:
            return [row.tolist() for row in self._inner.encode([str(d) for d in docs])]

    routes = routes_from_labelled([r.text for r in train], [r.label for r in train])
    names = [r.name for r in routes]
    sparse: dict[str, Any] = {}
    if hybrid:
        from semantic_router.encoders import TfidfEncoder

        sparse["sparse_encoder"] = TfidfEncoder()
    router = IndexedRouter(
        encoder=SharedModelEncoder(encoder),
        routes=[SrRoute(name=r.name, utterances=list(r.utterances)) for r in routes],
        **sparse,
    )
    val_labels = [r.label for r in val]
    scored = run(router._scores_many([r.text for r in val]))

    def predict() -> list[str | None]:
        return [getattr(router._choose(s, 1, None), "name", None) for s in scored]

    before = score(names, val_labels, predict())
    fit_rows = list(train)
    if len(fit_rows) > PEER_FIT_ROWS:
        fit_rows = sample_per_label(fit_rows, 10, SHOTS_SEED)
    start = time.perf_counter()
    out: dict[str, Any] = {"before": asdict(before), "fit_rows": len(fit_rows)}
    try:
        router.fit([r.text for r in fit_rows], [r.label for r in fit_rows], method="platt")
    except ValueError as exc:
        # Rows that are stored utterances match themselves, so all can be "correct".
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    out["fit_s"] = time.perf_counter() - start
    router.confidence_threshold = 0.5
    out["after"] = asdict(score(names, val_labels, predict()))
    return out


# -- synaptoroute ------------------------------------------------------------------------
def run_ours(
    encoder: PrecomputedEncoder,
    train: Sequence[Example],
    val: Sequence[Example],
    options: dict[str, Any],
    aggregation: str | None,
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {} if aggregation is None else {"aggregation": aggregation}
    router = AdaptiveRouter(encoder, **kwargs)
    train_texts, train_labels = [r.text for r in train], [r.label for r in train]
    router.add_routes(routes_from_labelled(train_texts, train_labels))
    val_texts, val_labels = [r.text for r in val], [r.label for r in val]
    out: dict[str, Any] = {"aggregation": router._index.aggregation}
    out["before"] = asdict(router.evaluate(val_texts, val_labels).figures)
    for key, head in (("thresholds", False), ("full", "auto")):
        start = time.perf_counter()
        report = router.fit(train_texts, train_labels, head=head, **options)
        out[f"{key}_fit_s"] = time.perf_counter() - start
        out[key] = asdict(router.evaluate(val_texts, val_labels).figures)
        out[f"{key}_decision"] = report.decision
        out[f"{key}_report"] = report.to_dict()
    return out


def timed_clinc_fit(data: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """CLINC150 train from scratch with the real encoder: import (encode) then fit."""
    train = load_split("clinc150", "train", data)
    texts, labels = [r.text for r in train], [r.label for r in train]
    encoder = Encoder()
    encoder.load()
    router = AdaptiveRouter(encoder)
    # CPU seconds (all threads of this process) are what a busy machine disturbs least.
    start, cpu0 = time.perf_counter(), time.process_time()
    router.add_routes(routes_from_labelled(texts, labels))
    imported, cpu1 = time.perf_counter(), time.process_time()
    report = router.fit(texts, labels, **options)
    done, cpu2 = time.perf_counter(), time.process_time()
    return {
        "rows": len(texts),
        "import_s": imported - start,
        "fit_s": done - imported,
        "total_s": done - start,
        "import_cpu_s": cpu1 - cpu0,
        "fit_cpu_s": cpu2 - cpu1,
        "load_after": os.getloadavg()[0],
        "fit_seconds": report.seconds,
        "encoded_in_fit": report.encoded,
        "decision": report.decision,
    }


def head_latency(encoder: PrecomputedEncoder, data: str | None) -> dict[str, float]:
    """Median in-process ``query`` time (embedding cached) with thresholds vs the head.

    The two fitted policies alternate round by round on one router, so drifting load
    on a shared machine hits both alike.
    """
    train = load_split("clinc150", "train", data)
    val = load_split("clinc150", "val", data)[:1000]
    router = AdaptiveRouter(encoder)
    texts, labels = [r.text for r in train], [r.label for r in train]
    router.add_routes(routes_from_labelled(texts, labels))
    queries = [r.text for r in val]
    options: dict[str, Any] = {"objective": "oos_recall", "target_oos_recall": 0.8}
    policies = {}
    for key, head in (("thresholds", False), ("head", True)):
        router.fit(texts, labels, head=head, **options)
        policies[key] = router.policy
    router.query_batch(queries)  # fill the embedding cache: time the decision path only
    times: dict[str, list[float]] = {key: [] for key in policies}
    for _ in range(3):
        for key, policy in policies.items():
            router.set_policy(policy)
            for q in queries:
                start = time.perf_counter()
                router.query(q)
                times[key].append(time.perf_counter() - start)
    return {f"{key}_p50_us": statistics.median(t) * 1e6 for key, t in times.items()}


# -- output ------------------------------------------------------------------------------
def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def render(results: dict[str, Any], command: str) -> str:
    lines = [
        SECTION,
        "",
        f"Command: `{command}`  ",
        f"Machine: {results['machine']}. The machine was shared with other jobs (load in "
        "the line above); accuracy figures do not depend on it, times do.",
        "",
        "Routes are built from the train split; both routers are fitted on the same "
        "train rows and measured on val, with the same vectors (bundled all-MiniLM-L6-v2 "
        f"INT8 model; semantic-router {results.get('peer_version') or 'not run'} wraps it "
        "as its `DenseEncoder`). Figures in %: in-scope accuracy (a rejected in-scope row "
        "counts as wrong), out-of-scope recall, accuracy over all rows, macro-F1 over "
        "routes. '10 per intent': a seeded random sample (`random.Random(0)`) of 10 "
        "train rows per label, out of scope counted as a label.",
        "",
        "| setting | router | in-scope | OOS recall | accuracy | macro-F1 | fit s |",
        "|---|---|---|---|---|---|---|",
    ]
    for title, res in results["settings"].items():
        rows = [
            ("synaptoroute, no fit (threshold 0.5)", res["ours"]["before"], None),
            ("synaptoroute, thresholds fit", res["ours"]["thresholds"], "thresholds_fit_s"),
            (
                f"synaptoroute, full fit (uses {res['ours']['full_decision']})",
                res["ours"]["full"],
                "full_fit_s",
            ),
        ]
        for label, fig, key in rows:
            secs = f"{res['ours'][key]:.1f}" if key else ""
            lines.append(
                f"| {title} | {label} | {pct(fig['in_scope_accuracy'])} | "
                f"{pct(fig['oos_recall'])} | {pct(fig['accuracy'])} | {pct(fig['macro_f1'])} "
                f"| {secs} |"
            )
        peer = res.get("peer")
        if peer:
            fitted = f"semantic-router, fit (Platt, 0.5; {peer['fit_rows']} fit rows)"
            done = [("semantic-router, no fit", peer["before"], "")]
            if "error" not in peer:
                done.append((fitted, peer["after"], f"{peer['fit_s']:.1f}"))
            for label, fig, secs in done:
                lines.append(
                    f"| {title} | {label} | {pct(fig['in_scope_accuracy'])} | "
                    f"{pct(fig['oos_recall'])} | {pct(fig['accuracy'])} | "
                    f"{pct(fig['macro_f1'])} | {secs} |"
                )
            if "error" in peer:
                lines.append(f"| {title} | {fitted} | fit failed: {peer['error']} |||||")
    lines += ["", "Fit options per setting:", ""]
    for title, res in results["settings"].items():
        lines.append(f"- {title}: `{res['options']}`, aggregation `{res['ours']['aggregation']}`")
    if "aggregations" in results:
        lines += [
            "",
            "CLINC150, full fit, by aggregation (same options as the first row):",
            "",
            "| aggregation | no fit in-scope / OOS recall | full fit in-scope / OOS recall "
            "| decision |",
            "|---|---|---|---|",
        ]
        for agg, res in results["aggregations"].items():
            lines.append(
                f"| {agg} | {pct(res['before']['in_scope_accuracy'])} / "
                f"{pct(res['before']['oos_recall'])} | {pct(res['full']['in_scope_accuracy'])} / "
                f"{pct(res['full']['oos_recall'])} | {res['full_decision']} |"
            )
    if "timed" in results:
        t = results["timed"]
        lines += [
            "",
            f"Fitting CLINC150's full train split from scratch ({t['rows']} rows, real "
            f"encoder): import (encode the utterances) {t['import_s']:.1f} s, then fit "
            f"{t['fit_s']:.1f} s (it encodes only the {t['encoded_in_fit']} rows that are not "
            f"utterances; stages {t['fit_seconds']}); total {t['total_s']:.1f} s wall. CPU "
            f"time of the process (all threads): import {t['import_cpu_s']:.1f} s, fit "
            f"{t['fit_cpu_s']:.1f} s. 1-minute load average when it ended: "
            f"{t['load_after']:.1f}.",
        ]
    if "latency" in results:
        lat = results["latency"]
        lines += [
            "",
            "Decision cost per `query` (CLINC150 routes, embedding cached, median of 3,000 "
            f"calls): thresholds {lat['thresholds_p50_us']:.0f} µs, head "
            f"{lat['head_p50_us']:.0f} µs.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_argument(parser)
    parser.add_argument("--cache", help="keep encoded vectors here (.npy)")
    parser.add_argument("--no-peer", action="store_true", help="skip semantic-router")
    parser.add_argument("--no-timed", action="store_true", help="skip the timed CLINC150 fit")
    parser.add_argument(
        "--timed-only",
        action="store_true",
        help="only the timed CLINC150 fit and the decision latency",
    )
    parser.add_argument("--only", nargs="*", help="run the settings whose title starts so")
    parser.add_argument("--aggregation", help="router aggregation (default: the router's default)")
    parser.add_argument("--json", help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    titles = [title for title, *_ in SETTINGS]
    unmatched = [o for o in args.only or () if not any(t.startswith(o) for t in titles)]
    if unmatched:  # a mistyped title ran nothing and exited 0 with an empty table
        parser.error(f"--only {unmatched!r} starts no setting's title: {'; '.join(titles)}")
    command = command_line("accuracy.py", argv)
    results: dict[str, Any] = {"machine": machine_info(), "settings": {}}
    peer_version = None if args.no_peer else peer_available()
    if not args.no_peer and peer_version is None:
        print("semantic-router is not installed: peer skipped", file=sys.stderr)
    results["peer_version"] = peer_version
    model = Encoder()
    encoders: dict[str, PrecomputedEncoder] = {}
    splits: dict[str, tuple[list[Example], list[Example]]] = {}
    peers: dict[tuple[str, int | None], dict[str, Any]] = {}
    for title, dataset, shots, options in SETTINGS:
        if args.timed_only or (args.only and not any(title.startswith(o) for o in args.only)):
            continue
        if dataset not in encoders:
            train = load_split(dataset, "train", args.data)
            val = load_split(dataset, "val", args.data)
            texts = list(dict.fromkeys([r.text for r in train] + [r.text for r in val]))
            vectors = encode_cached(model, texts, args.cache)
            encoders[dataset] = PrecomputedEncoder(
                model.model_id, dict(zip(texts, vectors, strict=True))
            )
            splits[dataset] = (train, val)
        train, val = splits[dataset]
        if shots is not None:
            train = sample_per_label(train, shots, SHOTS_SEED)
        print(f"{title}: {len(train)} train rows", file=sys.stderr, flush=True)
        res: dict[str, Any] = {"options": options, "train_rows": len(train)}
        res["ours"] = run_ours(encoders[dataset], train, val, options, args.aggregation)
        if peer_version:
            if (dataset, shots) not in peers:
                peers[dataset, shots] = run_peer(encoders[dataset], train, val)
            res["peer"] = peers[dataset, shots]
        results["settings"][title] = res
        print(json.dumps({k: v for k, v in res["ours"].items() if not k.endswith("report")}),
              file=sys.stderr, flush=True)  # fmt: skip
    if "clinc150" in encoders and not args.only:
        train, val = splits["clinc150"]
        results["aggregations"] = {
            agg: run_ours(encoders["clinc150"], train, val, SETTINGS[0][3], agg)
            for agg in ("max", "mean_topk", "centroid")
        }
    if args.timed_only:
        train = load_split("clinc150", "train", args.data)
        val = load_split("clinc150", "val", args.data)
        texts = list(dict.fromkeys([r.text for r in train] + [r.text for r in val]))
        vectors = encode_cached(model, texts, args.cache)
        encoders["clinc150"] = PrecomputedEncoder(
            model.model_id, dict(zip(texts, vectors, strict=True))
        )
    if "clinc150" in encoders and (args.timed_only or not args.only):
        results["latency"] = head_latency(encoders["clinc150"], args.data)
    if not args.no_timed and (args.timed_only or not args.only):
        results["timed"] = timed_clinc_fit(args.data, SETTINGS[0][3])
    text = render(results, command)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
