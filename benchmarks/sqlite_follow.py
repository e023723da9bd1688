"""What following a SQLite file costs a process, by the number of stored utterances.

A router on a SQLite file polls it (``SQLiteStorage(poll_interval=1.0)``) for other
processes' commits. Two connections to one real file, as two processes would have:
a writer, and a follower that loaded the store and watches it (its callback records
what it is handed; the router's apply of those changes is the index bookkeeping that
``route_changes.py`` times). Routes of 10 utterances with random 384-dimension
vectors, as the bundled model's. Timed, ``--repeat`` times each:

- ``idle poll``: a poll when no other connection committed (what a follower does
  every interval; under the store's own lock only, never the router's);
- ``poll after add_utterances``: the poll after the writer added 2 utterances to a
  stored route: it reads the names of the routes touched since it last looked
  (schema 4's ``touched`` table), then that route with its vectors (the router's lock
  is held for this and the apply);
- ``poll after add route``: the same after the writer stored a new route of 10;
- ``seed``: seconds the writer took to store the routes, in batches of 1,000 routes
  made beforehand (the ``touched`` triggers' cost on a bulk write shows here).

The store also holds a 4 MB state document, as a fitted policy with a head does: a
poll that read every state document would pay for it.

To compare with another version, run the same script with that version first on
``PYTHONPATH`` (a checkout of it: ``git archive REV | tar -x -C DIR``) and write its
table under a heading of its own (``--section "## ..."``).

Usage::

    python benchmarks/sqlite_follow.py [--sizes 10000 100000 1000000] [--repeat 20] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from common import command_line, machine_info, replace_section
from scale import PER_ROUTE

from synaptoroute import Route
from synaptoroute.storage import SQLiteStorage
from synaptoroute.storage.base import ModelInfo, StoredRoute
from synaptoroute.storage.changes import Change

DIM = 384  # the bundled model's
MODEL = ModelInfo("benchmark/random", DIM)
SECTION = "## SQLite: following another process's commits"
#: A fitted policy with a hybrid head stores megabytes of weights as state.
STATE_BYTES = 4_000_000


def _vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def seed(path: Path, n: int, rng: np.random.Generator) -> float:
    """Store ``n`` utterances in routes of :data:`PER_ROUTE` and a state document of
    :data:`STATE_BYTES` (a fitted policy's size); seconds the writes took (the routes
    are made before the clock starts)."""
    routes = n // PER_ROUTE
    batches = [
        [
            StoredRoute(
                Route(name=f"r{i}", utterances=[f"utterance {i} {j}" for j in range(PER_ROUTE)]),
                _vectors(rng, PER_ROUTE),
            )
            for i in range(first, min(routes, first + 1000))
        ]
        for first in range(0, routes, 1000)
    ]
    store = SQLiteStorage(path, poll_interval=None)
    start = time.perf_counter()
    for batch in batches:
        store.put_routes(batch, MODEL)
    seconds = time.perf_counter() - start
    store.set_state("policy", {"head": "x" * STATE_BYTES})
    store.close()
    return seconds


def _ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def measure(path: Path, n: int, repeat: int, rng: np.random.Generator) -> dict[str, float]:
    """Median ms of each kind of poll on a store of ``n`` utterances."""
    follower = SQLiteStorage(path, poll_interval=None)
    writer = SQLiteStorage(path, poll_interval=None)
    handed: list[Sequence[Change]] = []
    load_s = _ms(follower.load) / 1000
    follower.watch(handed.append)
    idle = [_ms(follower.poll) for _ in range(10 * repeat)]
    added, routes = [], []
    for k in range(repeat):
        name = f"r{(k * 7919) % (n // PER_ROUTE)}"
        writer.add_utterances(name, [f"more {k} a", f"more {k} b"], _vectors(rng, 2), MODEL)
        added.append(_ms(follower.poll))
        route = Route(name=f"new{k}", utterances=[f"new {k} {j}" for j in range(PER_ROUTE)])
        writer.put_routes([StoredRoute(route, _vectors(rng, PER_ROUTE))], MODEL)
        routes.append(_ms(follower.poll))
    writer.close()
    follower.close()
    # Each poll after a commit handed the one change over, and nothing else.
    assert len(handed) == 2 * repeat, len(handed)
    assert all(len(c) == 1 and len(c[0].routes) == 1 for c in handed)
    return {
        "load s": load_s,
        "idle poll": statistics.median(idle),
        "poll after add_utterances": statistics.median(added),
        "poll after add route": statistics.median(routes),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; with ``--write``, put the table into BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument(
        "--section", default=SECTION, help="the BENCHMARKS.md heading to write under"
    )
    args = parser.parse_args(argv)
    if min(args.sizes) < PER_ROUTE:
        parser.error(f"--sizes must be at least {PER_ROUTE} (one route)")
    machine = machine_info()
    rng = np.random.default_rng(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"follow-{n}.db"
            seed_s = seed(path, n, rng)
            result = measure(path, n, args.repeat, rng)
            size_mb = path.stat().st_size / 1e6
            print(f"{n}: seeded in {seed_s:.1f} s ({size_mb:.0f} MB), {result}", flush=True)
            rows.append((n, size_mb, seed_s, result))
    cmd = command_line("sqlite_follow.py", argv)
    lines = [
        args.section,
        "",
        f"Command: `{cmd}`",
        f"Machine: {machine}",
        "",
        f"Medians in ms ({args.repeat} changes; idle polls x10). Routes of {PER_ROUTE} "
        "utterances, random 384-dimension vectors, and a 4 MB state document; the "
        "follower's callback only records what it is handed (applying it to a router is "
        "`route_changes.py`'s bookkeeping).",
        "",
        "| utterances | file MB | idle poll | poll after add_utterances "
        "| poll after add route | seed, s | follower's load, s |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, size_mb, seed_s, r in rows:
        lines.append(
            f"| {n:,} | {size_mb:.0f} | {r['idle poll']:.3f} | "
            f"{r['poll after add_utterances']:.2f} | {r['poll after add route']:.2f} | "
            f"{seed_s:.1f} | {r['load s']:.1f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write:
        replace_section(args.section, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
