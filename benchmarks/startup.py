"""Start-up of a large SQLite store with the graph cache file (issue 17): each opening
in a fresh process, as a service starts.

The store is ``benchmarks/scale.py``'s noisy data of ``--size`` utterances (10 per
route), written once into ``--store`` with its graph cache file (the first opening
builds the graph and saves it, in a child process of the package timed, so the cache
file is that package's format). Each of ``--repeat`` timed openings then runs in a new
process: ``AdaptiveRouter(encoder, SQLiteStorage(path), index="ann")`` and its first
query, with a zero-cost precomputed encoder. It reports the opening, the first query,
the two together (ready to route), and the process's peak resident memory.

``--package DIR`` times another checkout's package (put first on ``PYTHONPATH`` of the
child processes) on its own ``--store``, e.g. a ``git worktree`` of an earlier commit.

Usage::

    python benchmarks/startup.py [--size 1000000] [--repeat 3] [--store DIR] [--package DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import machine_info
from scale import dataset, real_vectors, stored_routes

from synaptoroute import SQLiteStorage
from synaptoroute.storage import ModelInfo

MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # the id of the model that made the vectors
DIMENSION = 384

# The child: open the store, answer one query, report. ``build`` waits for the graph
# (written to the cache file) instead of timing.
CHILD = """
import json, resource, sys, time
import numpy as np
t0 = time.perf_counter()
from synaptoroute import AdaptiveRouter, SQLiteStorage
imported = time.perf_counter() - t0
sys.path.insert(0, {bench!r})
from common import PrecomputedEncoder
query = np.zeros({dim}, np.float32)
query[0] = 1.0
encoder = PrecomputedEncoder({model!r}, {{"q": query}})
start = time.perf_counter()
router = AdaptiveRouter(encoder, SQLiteStorage({path!r}), index="ann", cache_size=0)
opened = time.perf_counter() - start
router.query("q")
ready = time.perf_counter() - start
if {build!r}:
    assert router.wait_for_index(timeout=None)
stats = router.index_stats
print(json.dumps({{
    "import_s": round(imported, 2),
    "open_s": round(opened, 2),
    "first_query_s": round(ready - opened, 2),
    "ready_s": round(ready, 2),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    "ann_cache_loads": stats.ann_cache_loads,
    "ann_builds": stats.ann_builds,
    "rows_taken": getattr(stats, "rows_taken", None),
    "package": sys.modules["synaptoroute"].__file__,
}}))
router.close()
"""


def child(path: Path, package: Path | None, *, build: bool) -> dict[str, object]:
    code = CHILD.format(
        bench=str(Path(__file__).resolve().parent),
        dim=DIMENSION,
        model=MODEL,
        path=str(path),
        build=build,
    )
    env = dict(os.environ)
    if package is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package), env.get("PYTHONPATH")]))
    out = subprocess.run(  # not run from the checkout: its package would come first
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=path.parent,
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/sr-scale"))
    parser.add_argument("--store", type=Path, help="default: CACHE/startup-SIZE")
    parser.add_argument("--package", type=Path, help="a checkout whose package to time")
    args = parser.parse_args()
    folder = args.store or args.cache / f"startup-{args.size}"
    path = folder / "routes.db"
    print(machine_info(), f"size {args.size}, package {args.package or 'this checkout'}")
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        data = dataset(real_vectors(args.cache), args.size, 1)
        storage = SQLiteStorage(path, durability="normal")
        storage.put_routes(stored_routes(data), ModelInfo(MODEL, DIMENSION))
        storage.close()
        del data
    if not path.with_name(path.name + ".ann").exists():
        print("build (writes the cache file):", json.dumps(child(path, args.package, build=True)))
    for i in range(args.repeat):
        print(f"opening {i + 1}:", json.dumps(child(path, args.package, build=False)))
    print(f"load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
