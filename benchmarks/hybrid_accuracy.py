"""Routing accuracy 2 (issue 13): hybrid lexical + dense routing and out-of-scope scorers.

Routes and the fit come from train, figures from val (``../shared/data``), the bundled
model, **default** ``fit()`` arguments unless a row says otherwise. Every text is
encoded once (``PrecomputedEncoder``), so rows differ only in decisions.

Sections (``--only`` picks some):

* ``main``: CLINC150, BANKING77, SNIPS: default fit (hybrid auto) vs ``hybrid=False``
  (dense only), and scikit-learn ``LogisticRegression`` on the same embeddings
  (C=10, the head's regularisation; no out-of-scope handling beyond a class);
  for CLINC150 the fit report's held-out figures of every out-of-scope scorer.
  Without scikit-learn (or semantic-router) installed, that comparison's entry is
  ``{"skipped": "<why>"}`` and the run says so on stdout.
* ``few``: CLINC150 with 10 utterances per intent (the first 10, and a seeded random
  10), fitted on those rows, before and after fitting.
* ``folds``: CLINC150 train+val in 5 stratified folds; each fold's rows (its
  out-of-scope rows included) are unseen by the fit that is judged on them.
* ``head``: is the head under-fitted? The head's own softmax regression fitted once on
  all of CLINC150 train (out of scope a class) at several ``C`` and iteration limits,
  top-1 on val with no rejection, beside scikit-learn's ``LogisticRegression``.
* ``latency``: query p50 with the hybrid head's lexical term on and off (same run,
  each query both ways back to back), and the median of those pairs' differences,
  10,000 CLINC150 utterances, embeddings cached.
* ``norms``: the head's softmax regression on all of train, without and with n-gram
  features at several norms (the fit uses 0.5), top-1 on val with no rejection, for
  each of ``--datasets``: how the features' norm was chosen.
* ``regularization``: the whole default ``fit()`` at each of ``REGULARIZATIONS``
  (the head's ``C``: 10 alone, 30 alone, and the default, both chosen among on the
  fit's folds), for each of ``--datasets`` and CLINC150's two
  10-per-intent sets: val in scope, out-of-scope recall and the default "balanced"
  objective side by side.
* ``e2e``: CLINC150 end to end with the bundled model and no cache: the routes from
  train (every text encoded), then the default ``fit()``, each timed; then, on the
  same router, ``fit(regularization=10)`` (one ``C``, as before 0.3.0), timed too.
* ``ceiling``: how high in-scope accuracy can go on the sets whose targets the fit
  misses (the two 10-per-intent sets, BANKING77): top-1 on val's in-scope rows with
  **no rejection** (out-of-scope rows left out of training and of the figures) for
  the head's softmax regression with and without n-gram features (alone, and with
  the best of the fit's similarity weights chosen on val itself), scikit-learn's
  ``LogisticRegression`` at several ``C`` and the nearest utterance. Rejecting
  anything can only lower these, so each is a ceiling for a router that rejects
  with that classifier's ranking.
* ``pooling``: would other poolings of the same frozen model help the head? The
  model's token states pooled by mean (the bundled embedding), mean and max, mean and
  the first token, each part unit-norm; the head's softmax regression (C=10, 100
  iterations) on train's in-scope rows, top-1 on val's in-scope rows with no
  rejection, for each of ``--datasets`` (``--datasets clinc150 banking77``: the sets
  whose targets the fit misses).
* ``oos_scores``: would more out-of-scope scores help CLINC150? The default fit on
  train; on val, the best in-scope accuracy of any single cut that rejects 85% of the
  out-of-scope rows (chosen on val: an upper bound), for the router's own score
  (``RouteMatch.confidence``) alone and mixed (rank average, each weight's result
  shown) with scores the fit does not use: relative Mahalanobis distance (Ren et al.
  2021) and the norm of the embedding's residual outside the top principal
  components of train (the "virtual logit" part of ViM, Wang et al. 2022).

Usage::

    python benchmarks/hybrid_accuracy.py --cache /tmp/sr-cache [--only main few folds]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from common import (
    Example,
    PrecomputedEncoder,
    add_data_argument,
    cache_file,
    encode_cached,
    load_split,
    machine_info,
    percentile,
)
from numpy.typing import NDArray

from synaptoroute.encoder import Encoder
from synaptoroute.fitting import routes_from_labelled
from synaptoroute.fitting.fit import DEFAULT_OOS_SHARE
from synaptoroute.router import AdaptiveRouter

OOS_SHARE = DEFAULT_OOS_SHARE  # the default objective's ("balanced")

#: Stands in the numbers for a comparison that could not run, and says why.
SKLEARN_SKIPPED = {"skipped": "scikit-learn is not installed"}
SEMANTIC_ROUTER_SKIPPED = {"skipped": "semantic-router is not installed"}


def shared_encoder(rows: Sequence[Example], cache: str | None) -> PrecomputedEncoder:
    """Encode every distinct text once with the bundled model."""
    encoder = Encoder()
    texts = sorted({r.text for r in rows})
    vectors = encode_cached(encoder, texts, cache)
    return PrecomputedEncoder(encoder.model_id, dict(zip(texts, vectors, strict=True)))


def figures_of(router: AdaptiveRouter, rows: Sequence[Example]) -> dict[str, Any]:
    report = router.evaluate([r.text for r in rows], [r.label for r in rows])
    f = report.figures
    best_at_85 = None
    if f.out_of_scope and f.in_scope:
        # The in-scope / out-of-scope curve: the best in-scope accuracy of any single
        # cut (chosen on these rows, so an upper bound) that rejects 85% of them.
        _, in_scope, recall = report.oos_curve()
        best_at_85 = float(in_scope[recall >= 0.85].max())
    return {
        "in_scope": f.in_scope_accuracy,
        "oos_recall": f.oos_recall,
        "accuracy": f.accuracy,
        "oos_auroc": report.oos_auroc,
        "ece": report.ece,
        "best_in_scope_at_85_recall": best_at_85,
    }


def fitted(
    encoder: PrecomputedEncoder,
    train: Sequence[Example],
    val: Sequence[Example],
    **options: Any,
) -> dict[str, Any]:
    router = AdaptiveRouter(encoder)
    texts, labels = [r.text for r in train], [r.label for r in train]
    router.add_routes(routes_from_labelled(texts, labels))
    before = figures_of(router, val)
    start = time.perf_counter()
    report = router.fit(texts, labels, **options)
    seconds = time.perf_counter() - start
    head = report.candidates.get("head", {})
    return {
        "before": before,
        "after": figures_of(router, val),
        "fit_s": round(seconds, 1),
        "decision": report.decision,
        "objective": report.objective,
        "features": head.get("features") if report.decision == "head" else "dense",
        "scorer": head.get("scorer") if report.decision == "head" else "similarity",
        "regularization": head.get("regularization") if report.decision == "head" else None,
        "scorers_held_out": head.get("scorers"),
    }


def logistic_peer(
    encoder: PrecomputedEncoder, train: Sequence[Example], val: Sequence[Example]
) -> dict[str, Any]:
    """scikit-learn LogisticRegression on the same embeddings (out of scope = a class),
    or ``SKLEARN_SKIPPED`` when scikit-learn is not installed."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return dict(SKLEARN_SKIPPED)
    x = encoder.encode([r.text for r in train])
    y = [r.label or "<oos>" for r in train]
    model = LogisticRegression(C=10.0, max_iter=300)
    model.fit(x, y)
    pred = model.predict(encoder.encode([r.text for r in val]))
    inside = [(p, r.label) for p, r in zip(pred, val, strict=True) if r.label is not None]
    outside = [p for p, r in zip(pred, val, strict=True) if r.label is None]
    return {
        "in_scope": sum(p == t for p, t in inside) / len(inside),
        "oos_recall": (sum(p == "<oos>" for p in outside) / len(outside)) if outside else None,
    }


DATASETS = ("clinc150", "banking77", "snips")


def semantic_router_peer(
    encoder: PrecomputedEncoder, train: Sequence[Example], val: Sequence[Example]
) -> dict[str, Any]:
    """semantic-router 1.1.1, dense and hybrid (TF-IDF), before and after its ``fit``
    (``SEMANTIC_ROUTER_SKIPPED`` when it is not installed)."""
    from accuracy import peer_available, run_peer

    if peer_available() is None:
        return dict(SEMANTIC_ROUTER_SKIPPED)
    return {
        "dense": run_peer(encoder, train, val),
        "hybrid_tfidf": run_peer(encoder, train, val, hybrid=True),
    }


def section_main(
    data: str | None,
    cache: str | None,
    out: dict[str, Any],
    datasets: Sequence[str] = DATASETS,
    peers: bool = True,
) -> None:
    for name in datasets:
        train, val = load_split(name, "train", data), load_split(name, "val", data)
        encoder = shared_encoder([*train, *val], cache)
        out[name] = {
            "hybrid_auto": fitted(encoder, train, val),
            "dense_only": fitted(encoder, train, val, hybrid=False),
            "sklearn_logreg": logistic_peer(encoder, train, val),
        }
        if peers:
            out[name]["semantic_router"] = semantic_router_peer(encoder, train, val)
        print(name, json.dumps(out[name], indent=1), flush=True)


#: The head's inverse L2 strengths ``--only regularization`` compares: each alone, and
#: both chosen among on the fit's folds (the default).
REGULARIZATIONS: tuple[float | tuple[float, ...], ...] = (10.0, 30.0, (10.0, 30.0))


def section_regularization(
    data: str | None, cache: str | None, out: dict[str, Any], datasets: Sequence[str]
) -> None:
    """The default ``fit()`` but for ``regularization``, on each dataset (and on
    CLINC150's 10-per-label sets): val in scope, out-of-scope recall and the fit's
    default objective, side by side."""
    for name in datasets:
        train, val = load_split(name, "train", data), load_split(name, "val", data)
        encoder = shared_encoder([*train, *val], cache)
        sets = {name: train}
        if name == "clinc150":
            sets.update({f"{name}_{key}": rows for key, rows in few_sets(train).items()})
        for key, rows in sets.items():
            runs = {}
            for c in REGULARIZATIONS:
                run = fitted(encoder, rows, val, regularization=c)
                after = run["after"]
                recall = after["oos_recall"]
                # The default objective, "balanced", at the fit's default oos_share.
                balanced = (
                    after["in_scope"]
                    if recall is None
                    else (1 - OOS_SHARE) * after["in_scope"] + OOS_SHARE * recall
                )
                label = (
                    f"C={c:g}"
                    if isinstance(c, float)
                    else "C on folds: " + "|".join(f"{v:g}" for v in c)
                )
                runs[label] = {**run, "balanced": balanced}
            out[f"regularization_{key}"] = runs
            print(key, json.dumps(runs, indent=1), flush=True)


def few_sets(train: Sequence[Example]) -> dict[str, list[Example]]:
    """The 10-per-label sets (out of scope a label too): the first 10 and a seeded random 10."""
    groups: dict[str | None, list[Example]] = {}
    for row in train:
        groups.setdefault(row.label, []).append(row)
    first = [r for label, rows in groups.items() for r in rows[:10]]
    rng = random.Random(0)
    sampled = [r for label, rows in groups.items() for r in rng.sample(rows, min(10, len(rows)))]
    return {"first_10": first, "random_10_seed0": sampled}


def section_few(data: str | None, cache: str | None, out: dict[str, Any]) -> None:
    train, val = load_split("clinc150", "train", data), load_split("clinc150", "val", data)
    encoder = shared_encoder([*train, *val], cache)
    for key, rows in few_sets(train).items():
        out[f"clinc150_{key}"] = fitted(encoder, rows, val)
        print(key, json.dumps(out[f"clinc150_{key}"], indent=1), flush=True)


def section_folds(data: str | None, cache: str | None, out: dict[str, Any]) -> None:
    rows = [*load_split("clinc150", "train", data), *load_split("clinc150", "val", data)]
    encoder = shared_encoder(rows, cache)
    rng = np.random.default_rng(0)
    fold = np.empty(len(rows), dtype=np.int64)
    by: dict[str | None, list[int]] = {}
    for i, row in enumerate(rows):
        by.setdefault(row.label, []).append(i)
    for members in by.values():
        perm = rng.permutation(members)
        fold[perm] = np.arange(len(perm)) % 5
    results = []
    for f in range(5):
        train = [r for r, g in zip(rows, fold, strict=True) if g != f]
        test = [r for r, g in zip(rows, fold, strict=True) if g == f]
        results.append(fitted(encoder, train, test)["after"])
        print(f"fold {f}", results[-1], flush=True)
    out["clinc150_5fold"] = {
        "folds": results,
        "mean_in_scope": float(np.mean([r["in_scope"] for r in results])),
        "mean_oos_recall": float(np.mean([r["oos_recall"] for r in results])),
    }


def section_head(data: str | None, cache: str | None, out: dict[str, Any]) -> None:
    """The head's regression alone on all of CLINC150 train: top-1 on val, no cut."""
    from threadpoolctl import threadpool_limits

    from synaptoroute.fitting.head import _softmax_regression, _unpack

    train, val = load_split("clinc150", "train", data), load_split("clinc150", "val", data)
    encoder = shared_encoder([*train, *val], cache)
    names = sorted({r.label or "" for r in train})  # "" is the out-of-scope class
    col = {name: i for i, name in enumerate(names)}
    x = encoder.encode([r.text for r in train])
    y = np.array([col[r.label or ""] for r in train])
    xv = encoder.encode([r.text for r in val])
    yv = np.array([col[r.label or ""] for r in val])
    inside = yv != col[""]
    dim, n_cols = x.shape[1], len(names)
    rows = []
    with threadpool_limits(limits=1, user_api="blas"):
        for c, iterations in ((10.0, 100), (10.0, 1000), (30.0, 1000), (100.0, 1000)):
            start = time.perf_counter()
            theta = _softmax_regression(x, y, n_cols, c, None, iterations).astype(np.float64)
            w, bias = _unpack(theta, dim, n_cols)
            logits = xv @ w + bias
            pred = logits.argmax(axis=1)
            rows.append(
                {
                    "C": c,
                    "max_iter": iterations,
                    "in_scope_top1": float((pred[inside] == yv[inside]).mean()),
                    "oos_recall_as_class": float((pred[~inside] == col[""]).mean()),
                    "fit_s": round(time.perf_counter() - start, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    out["head_alone"] = {"rows": rows, "sklearn_logreg": logistic_peer(encoder, train, val)}
    print(json.dumps(out["head_alone"]["sklearn_logreg"]), flush=True)


def ngram_matrix(grams: Any, texts: Sequence[str]) -> Any:
    """The n-gram features of ``texts`` as a SciPy CSR matrix (the head's input)."""
    from scipy.sparse import csr_matrix

    indptr, indices, values = grams.rows(texts)
    return csr_matrix((values, indices, indptr), shape=(len(texts), len(grams)))


def section_norms(
    data: str | None, cache: str | None, out: dict[str, Any], datasets: Sequence[str]
) -> None:
    """Top-1 on val of the head's regression on all of train, per n-gram norm."""
    from threadpoolctl import threadpool_limits

    from synaptoroute.fitting.fit import _logits
    from synaptoroute.fitting.head import _softmax_regression
    from synaptoroute.lexical import NgramFeatures

    for name in datasets:
        train, val = load_split(name, "train", data), load_split(name, "val", data)
        encoder = shared_encoder([*train, *val], cache)
        labels = sorted({r.label or "" for r in train})  # "" is the out-of-scope class
        col = {label: i for i, label in enumerate(labels)}
        x, xv = encoder.encode([r.text for r in train]), encoder.encode([r.text for r in val])
        y = np.array([col[r.label or ""] for r in train])
        inside = [i for i, r in enumerate(val) if r.label is not None and r.label in col]
        yv = np.array([col[val[i].label or ""] for i in inside])
        rows = []
        for scale in (0.0, 0.25, 0.5, 1.0, 1.5):  # 0: the embedding alone
            start = time.perf_counter()
            sparse = sparse_v = None
            if scale:
                grams = NgramFeatures.learn([r.text for r in train], scale)
                sparse = ngram_matrix(grams, [r.text for r in train])
                sparse_v = ngram_matrix(grams, [r.text for r in val])
            with threadpool_limits(limits=1, user_api="blas"):
                theta = _softmax_regression(x, y, len(labels), 10.0, None, 100, sparse)
            pred = _logits(theta, xv, sparse_v, len(labels)).argmax(axis=1)[inside]
            rows.append(
                {
                    "ngram_norm": scale,
                    "in_scope_top1": float((pred == yv).mean()),
                    "fit_s": round(time.perf_counter() - start, 1),
                }
            )
            print(name, json.dumps(rows[-1]), flush=True)
        out[f"{name}_norms"] = rows


@dataclass
class InScope:
    """Train's and val's in-scope rows: texts, embeddings and label columns."""

    labels: list[str]
    texts: list[str]
    val_texts: list[str]
    x: NDArray[np.float32]
    xv: NDArray[np.float32]
    y: NDArray[np.intp]
    yv: NDArray[np.intp]

    @classmethod
    def of(
        cls, encoder: PrecomputedEncoder, train: Sequence[Example], val: Sequence[Example]
    ) -> InScope:
        train = [r for r in train if r.label is not None]
        val = [r for r in val if r.label is not None]
        labels = sorted({r.label for r in train if r.label is not None})
        col = {label: i for i, label in enumerate(labels)}
        texts, val_texts = [r.text for r in train], [r.text for r in val]
        return cls(
            labels,
            texts,
            val_texts,
            encoder.encode(texts),
            encoder.encode(val_texts),
            np.array([col[r.label] for r in train if r.label is not None]),
            np.array([col[r.label] for r in val if r.label is not None]),
        )


def top1_ceilings(
    encoder: PrecomputedEncoder, train: Sequence[Example], val: Sequence[Example]
) -> dict[str, Any]:
    """Top-1 on val's in-scope rows, nothing rejected, of classifiers fitted on train's
    in-scope rows (see ``ceiling`` in the module docstring)."""
    from threadpoolctl import threadpool_limits

    from synaptoroute.fitting.fit import _logits
    from synaptoroute.fitting.head import _ALPHAS, _softmax_regression
    from synaptoroute.lexical import NgramFeatures

    s = InScope.of(encoder, train, val)
    labels, texts, val_texts, x, xv, y, yv = s.labels, s.texts, s.val_texts, s.x, s.xv, s.y, s.yv
    out: dict[str, Any] = {}
    sims = xv @ x.T
    route_sims = np.stack([sims[:, y == c].max(axis=1) for c in range(len(labels))], axis=1)
    grams = NgramFeatures.learn(texts, 0.5)
    with threadpool_limits(limits=1, user_api="blas"):
        for key, sparse, sparse_v in (
            ("head_dense", None, None),
            ("head_dense_ngrams", ngram_matrix(grams, texts), ngram_matrix(grams, val_texts)),
        ):
            theta = _softmax_regression(x, y, len(labels), 10.0, None, 100, sparse)
            logits = _logits(theta, xv, sparse_v, len(labels))
            out[key] = float((logits.argmax(axis=1) == yv).mean())
            # The fit's head adds alpha x each route's similarity (max aggregation):
            # the best alpha of its grid, chosen on val itself (so a ceiling).
            out[f"{key}_best_alpha"] = max(
                float(((logits + alpha * route_sims).argmax(axis=1) == yv).mean())
                for alpha in _ALPHAS
            )
    out["nearest_utterance"] = float((y[sims.argmax(axis=1)] == yv).mean())
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        out["sklearn_logreg"] = dict(SKLEARN_SKIPPED)
        return out
    for c in (1.0, 10.0, 100.0):
        model = LogisticRegression(C=c, max_iter=1000).fit(x, y)
        out[f"sklearn_logreg_C{c:g}"] = float((model.predict(xv) == yv).mean())
    return out


def section_ceiling(data: str | None, cache: str | None, out: dict[str, Any]) -> None:
    train, val = load_split("clinc150", "train", data), load_split("clinc150", "val", data)
    encoder = shared_encoder([*train, *val], cache)
    for key, rows in few_sets(train).items():
        out[f"ceiling_clinc150_{key}"] = top1_ceilings(encoder, rows, val)
        print(key, json.dumps(out[f"ceiling_clinc150_{key}"]), flush=True)
    out["ceiling_clinc150"] = top1_ceilings(encoder, train, val)
    print("clinc150", json.dumps(out["ceiling_clinc150"]), flush=True)
    train, val = load_split("banking77", "train", data), load_split("banking77", "val", data)
    encoder = shared_encoder([*train, *val], cache)
    out["ceiling_banking77"] = top1_ceilings(encoder, train, val)
    print("banking77", json.dumps(out["ceiling_banking77"]), flush=True)


def pooled_states(texts: Sequence[str], cache: str | None) -> dict[str, NDArray[np.float32]]:
    """The bundled model's token states of ``texts`` pooled three ways, each unit-norm:
    ``mean`` (the router's embedding), ``max`` and ``first`` (the [CLS] token).

    Reads the encoder's session directly (a benchmark-only view of its internals);
    ``mean`` is checked against :meth:`Encoder.encode`.
    """
    from synaptoroute.encoder import l2_normalize

    encoder = Encoder()
    path = cache_file(cache, "pooled", encoder.model_id, texts, "npz") if cache else None
    if path is not None and path.is_file():
        with np.load(path) as saved:
            return {key: saved[key] for key in saved.files}
    encoder.load()
    pools = {key: np.empty((len(texts), encoder.dimension), np.float32) for key in POOLS}
    tokens = encoder._tokenizer.encode_batch(list(texts))
    for start in range(0, len(texts), 64):
        chunk = tokens[start : start + 64]
        width = max(len(t.ids) for t in chunk)
        ids = np.zeros((len(chunk), width), dtype=np.int64)
        for row, tok in enumerate(chunk):
            ids[row, : len(tok.ids)] = tok.ids
        mask = np.arange(width)[None, :] < np.array([len(t.ids) for t in chunk])[:, None]
        feeds = {"input_ids": ids, "attention_mask": mask.astype(np.int64)}
        if "token_type_ids" in encoder._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        states = encoder._session.run(None, feeds)[0]
        weights = mask[:, :, None].astype(np.float32)
        end = start + len(chunk)
        pools["mean"][start:end] = (states * weights).sum(axis=1) / weights.sum(axis=1)
        pools["max"][start:end] = np.where(mask[:, :, None], states, -np.inf).max(axis=1)
        pools["first"][start:end] = states[:, 0]
    pools = {key: l2_normalize(value) for key, value in pools.items()}
    check = encoder.encode(list(texts[:32]))
    assert np.allclose(check, pools["mean"][:32], atol=1e-4), "mean pooling differs from encode"
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **pools)
    return pools


POOLS = ("mean", "max", "first")


def section_pooling(
    data: str | None, cache: str | None, out: dict[str, Any], datasets: Sequence[str]
) -> None:
    """Top-1 on val, no rejection, of the head's regression on other poolings."""
    from threadpoolctl import threadpool_limits

    from synaptoroute.fitting.head import _softmax_regression, _unpack

    for name in datasets:
        train = [r for r in load_split(name, "train", data) if r.label is not None]
        val = [r for r in load_split(name, "val", data) if r.label is not None]
        pooled = pooled_states([r.text for r in [*train, *val]], cache)
        labels = sorted({r.label for r in train if r.label is not None})
        col = {label: i for i, label in enumerate(labels)}
        y = np.array([col[r.label] for r in train if r.label is not None])
        yv = np.array([col.get(r.label or "", -1) for r in val])
        rows = []
        for parts in (("mean",), ("mean", "max"), ("mean", "first"), ("mean", "max", "first")):
            both = np.hstack([pooled[p] for p in parts])
            x, xv = both[: len(train)], both[len(train) :]
            start = time.perf_counter()
            with threadpool_limits(limits=1, user_api="blas"):
                theta = _softmax_regression(x, y, len(labels), 10.0, None, 100)
            w, bias = _unpack(theta, x.shape[1], len(labels))
            pred = (xv @ w + bias).argmax(axis=1)
            rows.append(
                {
                    "pooling": "+".join(parts),
                    "in_scope_top1": float((pred == yv).mean()),
                    "fit_s": round(time.perf_counter() - start, 1),
                }
            )
            print(name, json.dumps(rows[-1]), flush=True)
        out[f"{name}_pooling"] = rows


def section_oos_scores(data: str | None, cache: str | None, out: dict[str, Any]) -> None:
    """CLINC150: does any out-of-scope score the fit does not use add to its own?"""
    from scipy.stats import rankdata

    from synaptoroute.decision import mahalanobis_score
    from synaptoroute.evaluation import auroc, oos_curve
    from synaptoroute.fitting.head import _mahalanobis_fit

    train, val = load_split("clinc150", "train", data), load_split("clinc150", "val", data)
    encoder = shared_encoder([*train, *val], cache)
    router = AdaptiveRouter(encoder)
    texts, labels = [r.text for r in train], [r.label for r in train]
    router.add_routes(routes_from_labelled(texts, labels))
    fit = router.fit(texts, labels)
    report = router.evaluate([r.text for r in val], [r.label for r in val])
    own, correct, oos = report.ood_scores, report.candidate_correct, report.outcomes == 2

    def best_at_85(score: NDArray[np.float64]) -> float:
        _, in_scope, recall = oos_curve(score, correct, oos)
        return float(in_scope[recall >= 0.85].max())

    inside = [r for r in train if r.label is not None]
    x = encoder.encode([r.text for r in inside])
    xv = encoder.encode([r.text for r in val])
    col = {name: i for i, name in enumerate(sorted({r.label or "" for r in inside}))}
    y = np.array([col[r.label or ""] for r in inside])
    # The fit's own Mahalanobis scorer (route means, shared shrunk covariance); one
    # "route" holding every row gives the background distance (Ren et al. 2021).
    routes = _mahalanobis_fit(x, y, len(col))
    background = _mahalanobis_fit(x, np.zeros(len(x), dtype=np.int64), 1)
    center = x.mean(axis=0)
    # Each score is minus a squared distance: the relative distance is the route
    # distance minus the background one.
    extra = {
        "relative_mahalanobis": mahalanobis_score(xv, **routes)
        - mahalanobis_score(xv, **background)
    }
    _, _, components = np.linalg.svd(x - center, full_matrices=False)
    for k in (50, 100, 200):
        basis = components[:k]
        residual = (xv - center) - ((xv - center) @ basis.T) @ basis
        extra[f"residual_{k}"] = -np.linalg.norm(residual, axis=1)
    rows: dict[str, Any] = {
        "scorer": fit.candidates.get("head", {}).get("scorer"),
        "own_auroc": auroc(own, ~oos),
        "own_best_in_scope_at_85": best_at_85(own),
    }
    rank_own = rankdata(own) / len(own)
    for key, score in extra.items():
        rank = rankdata(score) / len(score)
        rows[key] = {
            "auroc": auroc(score, ~oos),
            "alone_best_in_scope_at_85": best_at_85(score),
            "mixed_best_in_scope_at_85": {
                str(w): best_at_85(rank_own + w * rank) for w in (0.1, 0.25, 0.5, 1.0)
            },
        }
        print(key, json.dumps(rows[key]), flush=True)
    out["clinc150_oos_scores"] = rows
    print(json.dumps({k: v for k, v in rows.items() if not isinstance(v, dict)}), flush=True)


def section_e2e(data: str | None, out: dict[str, Any]) -> None:
    """CLINC150 from texts: routes from train with the bundled model, then ``fit()``."""
    train = load_split("clinc150", "train", data)
    texts, labels = [r.text for r in train], [r.label for r in train]
    start = time.perf_counter()
    router = AdaptiveRouter(Encoder())
    router.add_routes(routes_from_labelled(texts, labels))
    routes_s = time.perf_counter() - start
    start = time.perf_counter()
    report = router.fit(texts, labels)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    router.fit(texts, labels, regularization=10.0)
    one_c_s = time.perf_counter() - start
    out["clinc150_e2e"] = {
        "texts": len(texts),
        "model_and_routes_s": round(routes_s, 1),
        "fit_s": round(fit_s, 1),
        "total_s": round(routes_s + fit_s, 1),
        "decision": report.decision,
        "fit_one_c_s": round(one_c_s, 1),
    }
    print(json.dumps(out["clinc150_e2e"]), flush=True)


def section_latency(data: str | None, cache: str | None, out: dict[str, Any]) -> None:
    """Query p50 with the hybrid head's lexical term on and off, 10k utterances."""
    train, val = load_split("clinc150", "train", data), load_split("clinc150", "val", data)
    train = [r for r in train if r.label is not None][:10_000]
    encoder = shared_encoder([*train, *val], cache)
    router = AdaptiveRouter(encoder)
    texts, labels = [r.text for r in train], [r.label for r in train]
    router.add_routes(routes_from_labelled(texts, labels))
    router.fit(texts, labels, head=True, hybrid=True)
    queries = [r.text for r in val][:1000]
    router.query_batch(queries)  # fill the embedding cache: time the library, not the model
    times: dict[bool, list[float]] = {True: [], False: []}
    for rep in range(3):
        for q in queries:
            # Each query both ways, back to back, first one way then the other: drift
            # and the machine's noise hit both alike, and the pairs can be compared.
            for hybrid in (True, False) if rep % 2 == 0 else (False, True):
                router.hybrid = hybrid
                start = time.perf_counter()
                router.query(q)
                times[hybrid].append((time.perf_counter() - start) * 1000)
    p50 = {k: percentile(v, 50) for k, v in times.items()}
    paired = [h - d for h, d in zip(times[True], times[False], strict=True)]
    out["latency_10k"] = {
        "utterances": len(router._index),
        "scorer": router.policy.head.scorer if router.policy.head else None,
        "p50_ms_hybrid": p50[True],
        "p50_ms_dense": p50[False],
        "overhead_ms": p50[True] - p50[False],
        "overhead_ms_paired_median": percentile(paired, 50),
    }
    print(json.dumps(out["latency_10k"]), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_argument(parser)
    parser.add_argument("--cache", help="keep encoded vectors here (.npy)")
    parser.add_argument(
        "--only",
        nargs="+",
        default=["main", "few", "folds", "latency"],
        choices=_SECTION_NAMES,
        help="sections to run, in this order",
    )
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--json", help="write all numbers to this file")
    parser.add_argument("--no-peer", action="store_true", help="skip semantic-router")
    args = parser.parse_args(argv)
    machine = machine_info()
    print(f"machine: {machine}", flush=True)
    out: dict[str, Any] = {"machine": machine, "command": " ".join(sys.argv)}
    sections = {
        "few": section_few,
        "folds": section_folds,
        "head": section_head,
        "ceiling": section_ceiling,
        "oos_scores": section_oos_scores,
        "latency": section_latency,
    }
    try:
        _run_sections(args, out, sections)
    finally:  # what ran is kept: the later sections take many minutes each
        if args.json and len(out) > 2:  # not over an earlier file, when nothing ran
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(out, fh, indent=1)
    return 0


_SECTION_NAMES = [
    "main", "regularization", "norms", "pooling", "e2e",
    "few", "folds", "head", "ceiling", "oos_scores", "latency",
]  # fmt: skip


def _run_sections(
    args: argparse.Namespace, out: dict[str, Any], sections: dict[str, Callable[..., None]]
) -> None:
    for key in args.only:
        if key == "main":
            section_main(args.data, args.cache, out, args.datasets, not args.no_peer)
        elif key == "regularization":
            section_regularization(args.data, args.cache, out, args.datasets)
        elif key == "norms":
            section_norms(args.data, args.cache, out, args.datasets)
        elif key == "pooling":
            section_pooling(args.data, args.cache, out, args.datasets)
        elif key == "e2e":
            section_e2e(args.data, out)
        else:
            sections[key](args.data, args.cache, out)


if __name__ == "__main__":
    raise SystemExit(main())
