"""PostgreSQL replicas: propagation delay between two replicas, and replica start-up.

1. Propagation: replica A (this process) commits 1,000 changes (new routes, added
   utterances, thresholds, deletions) through its router; replica B (a second
   process) follows the change feed. For each change, the delay is from the moment
   A's write returned (committed) to the moment B had applied it and compiled its
   matrix, so B's next query routes with it. Both processes read ``time.monotonic()``
   (CLOCK_MONOTONIC, one clock for the whole machine on Linux).
2. Start-up: a replica opening a store of 100,000 utterances (vectors read from
   PostgreSQL, no encoding) against re-encoding those utterances. The re-encoding
   time is estimated as 50 x the measured time to encode 2,000 of the texts, unless
   ``--full-reencode`` is given.

Needs a PostgreSQL server: ``--dsn``, else ``$SYNAPTOROUTE_TEST_PG_DSN``, else one is
started with ``scripts/postgres.sh`` for the run. Both parts use the real bundled
model. Each run works in a fresh schema and drops it afterwards.

The texts are CLINC150 train's (repeated with a suffix when more are needed) from the
data folder: ``--data``, else ``$SYNAPTOROUTE_DATA``, else ``../shared/data``; when
neither option is set and the default folder has no CLINC150, the test slice in
``tests/fixtures`` is used instead. The run says which file it read.

    .venv/bin/python benchmarks/postgres_replicas.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, add_data_argument, data_dir, machine_info, percentile

from synaptoroute import AdaptiveRouter, Encoder, Route
from synaptoroute.postgres import PostgresStorage
from synaptoroute.storage import ModelInfo, StoredRoute

FIXTURE = REPO_ROOT / "tests/fixtures/clinc150_train_slice.jsonl"


def text_source(data: str | None = None) -> Path:
    """CLINC150 train in the data folder (``--data``, else ``$SYNAPTOROUTE_DATA``, else
    ``../shared/data``); the test slice only when no folder was asked for and the
    default one has no CLINC150.

    Raises:
        FileNotFoundError: the folder asked for (``--data`` or the environment
            variable) does not exist or holds no ``clinc150/train.jsonl``.
    """
    asked = data or os.environ.get("SYNAPTOROUTE_DATA")
    try:
        path = data_dir(data) / "clinc150" / "train.jsonl"
    except FileNotFoundError:
        if asked:
            raise
        return FIXTURE
    if path.is_file():
        return path
    if asked:
        msg = f"no CLINC150 train split in the data folder: {path} not found"
        raise FileNotFoundError(msg)
    return FIXTURE


def sample_texts(n: int, source: Path) -> list[str]:
    """``n`` distinct, realistic texts: the rows of ``source`` (CLINC150 train, see
    :func:`text_source`), repeated with a numbered suffix when there are too few."""
    rows: list[str] = []
    with source.open(encoding="utf-8") as fh:
        rows = [json.loads(line)["text"] for line in fh if line.strip()]
    out: list[str] = []
    seen: set[str] = set()
    k = 0
    while len(out) < n:
        for text in rows:
            candidate = text if k == 0 else f"{text} ({k})"
            if candidate not in seen:
                seen.add(candidate)
                out.append(candidate)
                if len(out) == n:
                    break
        k += 1
    return out


# -- replica B ------------------------------------------------------------------------
def follower_main(dsn: str, schema: str, count: int) -> None:
    """Follow the store until ``count`` changes after start-up are applied; print timings."""
    store = PostgresStorage(dsn, schema=schema)
    router = AdaptiveRouter(Encoder(), store)
    start = store.applied_seq
    print(json.dumps({"ready": start}), flush=True)
    applied: list[tuple[int, float, float]] = []
    last = start
    while last < start + count:
        if not store.wait_for_seq(last + 1, timeout=60):
            break
        t_applied = time.monotonic()
        now = store.applied_seq
        router._index.snapshot()  # compile now: what the next query would do first
        t_routable = time.monotonic()
        applied += [(seq, t_applied, t_routable) for seq in range(last + 1, now + 1)]
        last = now
    print(json.dumps({"applied": applied, "routes": router.route_names}), flush=True)
    router.close()


# -- replica A and the measurements ---------------------------------------------------
def propagation(dsn: str, schema: str, changes: int, seed: int, source: Path) -> dict[str, Any]:
    """Time from a commit on A to the change being routable on B, for ``changes`` changes."""
    encoder = Encoder()
    encoder.load()
    a = AdaptiveRouter(encoder, PostgresStorage(dsn, schema=schema))
    b = subprocess.Popen(
        [sys.executable, __file__, "--follower", dsn, schema, str(changes)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert b.stdout is not None
    json.loads(b.stdout.readline())  # B has loaded the store and follows it
    rng = random.Random(seed)
    texts = sample_texts(4 * changes, source)
    commits: dict[int, tuple[str, float]] = {}
    live: list[str] = []
    for i in range(changes):
        kind = rng.choices(["route", "utterances", "threshold", "delete"], [5, 3, 1, 1])[0]
        if len(live) < 5:
            kind = "route"
        if kind == "route":
            name = f"route_{i}"
            a.add_route(Route(name=name, utterances=texts[4 * i : 4 * i + 3]))
            live.append(name)
        elif kind == "utterances":
            a.add_utterances(rng.choice(live), [texts[4 * i]])
        elif kind == "threshold":
            a.set_threshold(rng.choice(live), round(rng.uniform(0.3, 0.7), 3))
        else:
            a.delete_route(live.pop(rng.randrange(len(live))))
        t_commit = time.monotonic()
        seq = a.storage.last_write_seq  # type: ignore[attr-defined]
        commits[seq] = (kind, t_commit)
        time.sleep(rng.uniform(0.0, 0.004))  # spread the writes; a burst measures queueing
    out = json.loads(b.stdout.readline())
    b.wait()
    delays: dict[str, list[float]] = {"applied": [], "routable": []}
    per_kind: dict[str, list[float]] = {}
    for seq, t_applied, t_routable in out["applied"]:
        if seq in commits:
            kind, t_commit = commits[seq]
            delays["applied"].append((t_applied - t_commit) * 1000)
            delays["routable"].append((t_routable - t_commit) * 1000)
            per_kind.setdefault(kind, []).append((t_routable - t_commit) * 1000)
    same = sorted(out["routes"]) == sorted(a.route_names)
    a.close()
    return {
        "changes": changes,
        "measured": len(delays["routable"]),
        "same_routes": same,
        "applied_ms": delays["applied"],
        "routable_ms": delays["routable"],
        "per_kind": per_kind,
    }


def startup(
    dsn: str, schema: str, size: int, sample: int, full: bool, source: Path
) -> dict[str, Any]:
    """Open a replica on ``size`` stored utterances vs encoding them."""
    encoder = Encoder()
    encoder.load()
    texts = sample_texts(size, source)
    t0 = time.perf_counter()
    sample_vectors = encoder.encode(texts[:sample])
    sample_s = time.perf_counter() - t0
    if full:
        t0 = time.perf_counter()
        encoder.encode(texts)
        reencode_s = time.perf_counter() - t0
    elif sample >= size:
        reencode_s, full = sample_s, True  # the sample was all of them
    else:
        reencode_s = sample_s * size / sample
    # Store real vectors of the model (the sample's, repeated): start-up does not depend
    # on their values, only on their number.
    vectors = np.resize(sample_vectors, (size, sample_vectors.shape[1])).astype(np.float32)
    per_route = 1000
    routes = [
        StoredRoute(
            Route.model_construct(
                name=f"route_{r}",
                utterances=texts[r * per_route : (r + 1) * per_route],
                description=None,
                threshold=None,
                metadata={},
            ),
            vectors[r * per_route : (r + 1) * per_route],
        )
        for r in range(size // per_route)
    ]
    seeder = PostgresStorage(dsn, schema=schema)
    t0 = time.perf_counter()
    seeder.replace_all(routes, ModelInfo(encoder.model_id, encoder.dimension))
    seed_s = time.perf_counter() - t0
    seeder.close()
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        store = PostgresStorage(dsn, schema=schema)
        router = AdaptiveRouter(encoder, store)
        t_loaded = time.perf_counter()
        router._index.snapshot()  # the matrix compiled, as the first query would
        t_ready = time.perf_counter()
        assert len(router._index) == size
        runs.append((t_loaded - t0, t_ready - t0))
        router.close()
    load_s = float(np.median([r[0] for r in runs]))
    ready_s = float(np.median([r[1] for r in runs]))
    return {
        "size": size,
        "sample": sample,
        "sample_encode_s": sample_s,
        "reencode_s": reencode_s,
        "reencode_measured": full,
        "seed_s": seed_s,
        "load_s": load_s,
        "ready_s": ready_s,
        "runs": runs,
        "speedup": reencode_s / ready_s,
    }


def report(prop: dict[str, Any] | None, start: dict[str, Any] | None, command: str) -> str:
    """The Markdown section for BENCHMARKS.md."""
    lines = [f"Command: `{command}`", f"Machine: {machine_info()}", ""]
    if prop is not None:
        lines += [
            f"**Propagation** ({prop['measured']} of {prop['changes']} changes measured; "
            f"replica B ended with the same routes as A: {prop['same_routes']}). Delay from "
            "the commit on A to the change applied on B, and to B's matrix compiled "
            "(routable):",
            "",
            "| delay | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|",
        ]
        for key, label in (("applied_ms", "applied on B"), ("routable_ms", "routable on B")):
            v = prop[key]
            lines.append(
                f"| {label} | {percentile(v, 50):.2f} | {percentile(v, 99):.2f} | {max(v):.2f} |"
            )
        lines += ["", "| change | n | p50 ms | p99 ms |", "|---|---|---|---|"]
        for kind, v in sorted(prop["per_kind"].items()):
            lines.append(
                f"| {kind} | {len(v)} | {percentile(v, 50):.2f} | {percentile(v, 99):.2f} |"
            )
        lines.append("")
    if start is not None:
        how = (
            "measured"
            if start["reencode_measured"]
            else f"estimated: {start['sample']:,} texts encoded in {start['sample_encode_s']:.2f} s"
            f" x {start['size'] / start['sample']:g}"
        )
        lines += [
            f"**Start-up on {start['size']:,} stored utterances** (median of 3 opens; the "
            "encoder is loaded beforehand in both cases):",
            "",
            "| | seconds |",
            "|---|---|",
            f"| open store + load routes and vectors | {start['load_s']:.2f} |",
            f"| ... + matrix compiled (ready to route) | {start['ready_s']:.2f} |",
            f"| re-encoding the utterances instead ({how}) | {start['reencode_s']:.1f} |",
            f"| **speed-up** | **{start['speedup']:.0f}x** |",
            "",
            f"(Seeding the store with `replace_all` took {start['seed_s']:.1f} s.)",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the Markdown results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_argument(parser)
    parser.add_argument("--dsn", default=os.environ.get("SYNAPTOROUTE_TEST_PG_DSN"))
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument(
        "--size", type=int, default=100_000, help="stored utterances: a multiple of 1,000"
    )
    parser.add_argument(
        "--sample", type=int, default=2000, help="texts encoded to estimate a re-encode"
    )
    parser.add_argument("--full-reencode", action="store_true")
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["propagation", "startup"],
        choices=["propagation", "startup"],
        help="what to measure (default: both)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write all numbers to this file")
    args = parser.parse_args(argv)
    if args.size < 1000 or args.size % 1000:
        # Routes of 1,000 utterances each: the rest was dropped, and a bare
        # AssertionError ended the run after the propagation part.
        parser.error(f"--size must be a positive multiple of 1,000, got {args.size}")
    if args.sample < 1:
        parser.error(f"--sample must be at least 1, got {args.sample}")
    args.sample = min(args.sample, args.size)  # more encodes all of them: measured
    try:
        source = text_source(args.data)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    print(f"texts: {source}", flush=True)
    started = None
    if not args.dsn:
        out = subprocess.run(
            ["bash", str(REPO_ROOT / "scripts/postgres.sh"), "start"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        env = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())
        args.dsn, started = env["SYNAPTOROUTE_TEST_PG_DSN"], env["SYNAPTOROUTE_TEST_PG_DIR"]
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    prop = start = None
    try:
        if "propagation" in args.parts:
            prop = propagation(args.dsn, schema, args.changes, args.seed, source)
        if "startup" in args.parts:
            start = startup(
                args.dsn, schema + "_s", args.size, args.sample, args.full_reencode, source
            )
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}_s" CASCADE')
        if started:
            subprocess.run(["bash", str(REPO_ROOT / "scripts/postgres.sh"), "stop", started])
    shown = list(argv if argv is not None else sys.argv[1:])
    if "--dsn" in shown:  # keep credentials out of the results
        shown[shown.index("--dsn") + 1] = "DSN"
    command = "python benchmarks/postgres_replicas.py " + shlex.join(shown)
    print(report(prop, start, command.strip()))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"texts": str(source), "propagation": prop, "startup": start}, indent=2)
        )
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--follower"]:
        follower_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(main())
