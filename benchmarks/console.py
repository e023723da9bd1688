"""The console's figures (issue 16): first load, try-it round trip, the 15,000-point map.

Builds a store of the 15,000 labelled CLINC150 train rows (150 routes of 100
utterances; the vectors are encoded once, or read from ``--cache``), starts
``synaptoroute serve`` on 127.0.0.1 in its own process, then measures:

- **first load**: the bytes a fresh browser transfers to show the routes page
  (the page, its script, style and icon, and the overview of 150 routes), and the
  time from navigation start until the page has rendered the routes table (the
  page marks ``body[data-ready]``), in the distribution's Chromium driven by
  Playwright; each load in a new browser context (no cache), median of ``--loads``;
- **try it**: ``POST /console/api/try`` round trips (decision, top 5 routes with 3
  nearest utterances each), every query a different CLINC150 val text so each one is
  encoded, against the same texts sent to ``POST /route`` in the same run (the peer:
  the plain routing request); sequential keep-alive requests, p50 and p99;
- **map**: ``POST /console/api/map`` for all 15,000 utterances, first call (PCA from
  the stored vectors, computed on the server) and a repeated call (cached for the
  index version), as client round trips including the JSON; and the projection alone
  (:func:`synaptoroute.server.console.project`) in this process.

Usage::

    python benchmarks/console.py [--data DIR] [--cache DIR] [--queries 300] [--loads 5]

Traffic goes only to 127.0.0.1. Chromium comes from ``scripts/chromium.sh``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import (
    PrecomputedEncoder,
    add_data_argument,
    by_label,
    encode_cached,
    load_split,
    machine_info,
    percentile,
)

from synaptoroute import AdaptiveRouter, Encoder, Route
from synaptoroute.server.console import project
from synaptoroute.storage import SQLiteStorage

HOST = "127.0.0.1"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def build_store(path: Path, data: str | None, cache: str | None) -> tuple[int, int]:
    """Write the 150 CLINC150 intents' train rows to a SQLite store; answers (routes, rows)."""
    groups = {k: v for k, v in by_label(load_split("clinc150", "train", data)).items() if k}
    texts = [t for rows in groups.values() for t in rows]
    encoder = Encoder()
    vectors = encode_cached(encoder, texts, cache)
    table = dict(zip(texts, vectors, strict=True))
    storage = SQLiteStorage(path)
    try:
        router = AdaptiveRouter(PrecomputedEncoder(encoder.model_id, table), storage)
        router.add_routes(Route(name=name, utterances=rows) for name, rows in groups.items())
        return len(router), sum(len(r.utterances) for r in router.list_routes())
    finally:
        storage.close()


class Served:
    """``synaptoroute serve`` in a child process."""

    def __init__(self, store: Path) -> None:
        self.port = _free_port()
        self.url = f"http://{HOST}:{self.port}"
        exe = shutil.which("synaptoroute") or str(Path(sys.executable).parent / "synaptoroute")
        cmd = [exe, "serve", "--store", str(store), "--port", str(self.port)]
        cmd += ["--log-level", "warning"]
        env = {k: v for k, v in os.environ.items() if k != "SYNAPTOROUTE_API_KEY"}
        self.proc = subprocess.Popen(cmd, env=env)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # bounded wait for readiness
            if self.proc.poll() is not None:
                msg = f"serve exited with {self.proc.returncode}"
                raise RuntimeError(msg)
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        msg = "serve did not become ready"
        raise RuntimeError(msg)

    def stop(self) -> None:
        """Terminate and reap the child."""
        self.proc.terminate()
        self.proc.wait(60)


def first_load(url: str, loads: int) -> dict[str, Any]:
    """Bytes transferred and time to the rendered routes table, each load uncached."""
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("SYNAPTOROUTE_CHROMIUM") or "/usr/bin/chromium"
    ready_ms: list[float] = []
    transferred: list[int] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            for _ in range(loads + 1):  # the first warms the server's and browser's code paths
                context = browser.new_context()
                page = context.new_page()
                page.goto(url + "/console/#/routes")
                page.wait_for_function(
                    "() => document.body.dataset.ready === 'routes'", timeout=60_000
                )
                doc = page.evaluate(
                    """() => {
                        const nav = performance.getEntriesByType('navigation')[0];
                        const res = performance.getEntriesByType('resource');
                        const bytes = nav.transferSize + res.reduce((s, r) => s + r.transferSize, 0);
                        return {ready: Number(document.body.dataset.readyAt), bytes,
                                names: res.map(r => r.name.split('/').pop())};
                    }"""
                )
                ready_ms.append(doc["ready"])
                transferred.append(doc["bytes"])
                context.close()
        finally:
            browser.close()
    return {
        "bytes": int(np.median(transferred[1:])),
        "ready_ms_median": float(np.median(ready_ms[1:])),
        "ready_ms_max": float(np.max(ready_ms[1:])),
        "cold_ready_ms": ready_ms[0],
        "resources": doc["names"],
    }


def round_trips(url: str, requests: list[tuple[str, dict[str, Any]]]) -> dict[str, list[float]]:
    """Sequential keep-alive POSTs of ``(path, body)``; each one's wall time in ms, by path.

    Give the paths interleaved, so the server's warm-up and the machine's load hit
    every path alike.
    """
    out: dict[str, list[float]] = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for path, body in requests:
            start = time.perf_counter()
            response = client.post(path, json=body)
            out.setdefault(path, []).append((time.perf_counter() - start) * 1000.0)
            response.raise_for_status()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--cache", help="folder for the encoded train vectors (.npy)")
    parser.add_argument("--queries", type=int, default=300, help="try-it queries per endpoint")
    parser.add_argument("--loads", type=int, default=5, help="measured page loads")
    args = parser.parse_args()
    print(machine_info())
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "routes.db"
        routes, rows = build_store(store, args.data, args.cache)
        print(f"store: {routes} routes, {rows} utterances")

        # The projection alone, in this process, from the stored vectors.
        storage = SQLiteStorage(store)
        stored = storage.load()
        storage.close()
        vectors = np.vstack([s.vectors for s in stored]).astype(np.float32)
        ids = np.concatenate([np.full(len(s.vectors), i) for i, s in enumerate(stored)])
        names = [s.route.name for s in stored]
        texts = [t for s in stored for t in s.route.utterances]
        pca_ms = []
        for _ in range(5):
            start = time.perf_counter()
            project(vectors, ids.astype(np.int64), texts, names)
            pca_ms.append((time.perf_counter() - start) * 1000.0)

        served = Served(store)
        try:
            val = [e.text for e in load_split("clinc150", "val", args.data)]
            half = args.queries
            # Different texts for each endpoint, so neither answers from the other's cache;
            # the two endpoints alternate.
            timed = round_trips(
                served.url,
                [
                    (path, {"query": text})
                    for pair in zip(val[:half], val[half : 2 * half], strict=True)
                    for path, text in zip(("/console/api/try", "/route"), pair, strict=True)
                ],
            )
            try_ms, route_ms = timed["/console/api/try"], timed["/route"]
            with httpx.Client(base_url=served.url, timeout=60) as client:
                start = time.perf_counter()
                first = client.post("/console/api/map", json={"query": val[0]})
                map_first_ms = (time.perf_counter() - start) * 1000.0
                repeat_ms = []
                for text in val[1:6]:
                    start = time.perf_counter()
                    client.post("/console/api/map", json={"query": text}).raise_for_status()
                    repeat_ms.append((time.perf_counter() - start) * 1000.0)
            first.raise_for_status()
            points = len(first.json()["x"])
            map_bytes = len(first.content)
            load = first_load(served.url, args.loads)
        finally:
            served.stop()
    result = {
        "first_load": load,
        "try_ms": {"p50": percentile(try_ms, 50), "p99": percentile(try_ms, 99)},
        "route_ms": {"p50": percentile(route_ms, 50), "p99": percentile(route_ms, 99)},
        "try_over_route_p50": percentile(try_ms, 50) / percentile(route_ms, 50),
        "map": {
            "points": points,
            "bytes": map_bytes,
            "first_ms": map_first_ms,
            "repeat_ms_median": float(np.median(repeat_ms)),
            "projection_ms_median": float(np.median(pca_ms)),
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
