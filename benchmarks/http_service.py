"""HTTP service throughput and latency over loopback (issue 7).

Starts ``synaptoroute serve`` on 127.0.0.1 (routes: the first 20 CLINC150 intents,
30 train rows each), then, for each concurrency level, runs a load generator in a
separate process: C keep-alive connections, each sending ``POST /route`` one after
another, until the level's request count is spent. Every query text is sent once in
the whole run (CLINC150 val + train rows), so the router's embedding cache never
answers and every request is encoded.

The texts of the concurrency-512 level are then routed in another fresh process by
``router.aquery`` from 512 concurrent tasks (no HTTP), with the same routes and encoder
settings: the ratio of the two throughputs is the HTTP layer's cost. Because the
machine may be shared, that comparison is repeated ``--rounds`` times, HTTP and
in-process alternating (each HTTP round on texts the server has not seen), and the
ratio of the summed throughputs is reported with each round's.

Usage::

    python benchmarks/http_service.py [--data DIR] [--levels 1 64 512] [--counts 800 4000 3000]
        [--rounds 3]

The load generator is a minimal HTTP/1.1 client on asyncio streams, much cheaper
per request than a general client, so it takes as little of the shared cores as
possible. Traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import REPO_ROOT, by_label, load_split, machine_info, percentile

HOST = "127.0.0.1"
N_ROUTES = 20
PER_ROUTE = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _texts(data: str | None) -> tuple[dict[str, list[str]], list[str]]:
    train = load_split("clinc150", "train", data)
    groups = by_label(train)
    names = list(groups)[:N_ROUTES]
    routes = {n: groups[n][:PER_ROUTE] for n in names}
    used = {t for ts in routes.values() for t in ts}
    queries: list[str] = []
    seen: set[str] = set()
    for row in [*load_split("clinc150", "val", data), *train]:
        if row.text not in used and row.text not in seen:
            seen.add(row.text)
            queries.append(row.text)
    return routes, queries


# -- load generator (runs in its own process) ---------------------------------------
async def _one_connection(
    port: int, bodies: list[bytes], lat: list[float], codes: dict[int, int]
) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for body in bodies:
            head = (
                f"POST /route HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            start = time.perf_counter()
            writer.write(head + body)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            lat.append((time.perf_counter() - start) * 1000)
            code = int(status_line.split()[1])
            codes[code] = codes.get(code, 0) + 1
    finally:
        writer.close()


async def _client(port: int, concurrency: int, texts: list[str]) -> dict[str, Any]:
    bodies = [json.dumps({"query": t}).encode() for t in texts]
    # Connection i sends requests i, i + C, i + 2C, ...: the whole set, no overlap.
    shares = [bodies[i::concurrency] for i in range(concurrency)]
    lat: list[float] = []
    codes: dict[int, int] = {}
    start = time.perf_counter()
    await asyncio.gather(*(_one_connection(port, s, lat, codes) for s in shares if s))
    wall = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "seconds": wall,
        "rps": len(lat) / wall,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "status": {str(k): v for k, v in sorted(codes.items())},
    }


async def _inprocess(
    routes_file: str, concurrency: int, texts: list[str], threads: int | None, spin: bool
) -> dict[str, Any]:
    from synaptoroute import AdaptiveRouter, Encoder
    from synaptoroute.server.routes_file import apply_routes, load_routes_file

    # The server's encoder settings (its defaults: every core, no spinning), so the
    # ratio measures the HTTP layer and nothing else.
    router = AdaptiveRouter(Encoder(threads=threads, spin=spin))
    apply_routes(router, load_routes_file(routes_file))
    router.encoder.encode(["warm-up"])
    shares = [texts[i::concurrency] for i in range(concurrency)]
    lat: list[float] = []

    async def one(share: list[str]) -> None:
        for text in share:
            t0 = time.perf_counter()
            await router.aquery(text)
            lat.append((time.perf_counter() - t0) * 1000)

    async with router:
        start = time.perf_counter()
        await asyncio.gather(*(one(s) for s in shares if s))
        wall = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "seconds": wall,
        "rps": len(lat) / wall,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
    }


def _child(args: argparse.Namespace) -> None:
    texts = json.loads(Path(args.texts).read_text(encoding="utf-8"))
    if args.role == "client":
        result = asyncio.run(_client(args.port, args.concurrency, texts))
    else:
        result = asyncio.run(
            _inprocess(args.routes_file, args.concurrency, texts, args.threads, args.spin)
        )
    print(json.dumps(result))


def _run_child(role: str, concurrency: int, texts: list[str], tmp: Path, **extra: Any) -> Any:
    path = tmp / f"texts-{role}-{concurrency}.json"
    path.write_text(json.dumps(texts), encoding="utf-8")
    cmd = [
        sys.executable,
        __file__,
        "--role",
        role,
        "--concurrency",
        str(concurrency),
        "--texts",
        str(path),
    ]
    for key, value in extra.items():
        flag = f"--{key.replace('_', '-')}"
        if value is True:
            cmd.append(flag)
        elif value not in (False, None):
            cmd += [flag, str(value)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    if out.returncode:  # its traceback, which check=True kept to itself
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"server exited with {proc.returncode}"
            raise RuntimeError(msg)
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    msg = "server not ready in time"
    raise RuntimeError(msg)


def main() -> None:
    """Run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data folder (default ../shared/data)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 64, 512])
    parser.add_argument("--counts", type=int, nargs="+", default=[800, 4000, 3000])
    parser.add_argument("--rounds", type=int, default=3, help="HTTP/in-process pairs at the top")
    parser.add_argument("--threads", type=int, default=None, help="ONNX threads (both sides)")
    parser.add_argument("--spin", action="store_true", help="ONNX spinning (both sides)")
    parser.add_argument("--role", choices=("client", "inprocess"), help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--texts", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--routes-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        _child(args)
        return
    if len(args.counts) != len(args.levels):
        parser.error("--counts needs one count per level")

    print(f"machine: {machine_info()}", flush=True)
    routes, queries = _texts(args.data)
    need = sum(args.counts) + args.counts[-1] * (args.rounds - 1) + 200
    if need > len(queries):
        parser.error(f"only {len(queries)} distinct query texts; lower --counts or --rounds")
    slices, start = [], 200  # the first 200 texts warm the server up
    for count in [*args.counts, *[args.counts[-1]] * (args.rounds - 1)]:
        slices.append(queries[start : start + count])
        start += count

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        routes_file = tmp / "routes.json"
        routes_file.write_text(
            json.dumps({"routes": [{"name": n, "utterances": u} for n, u in routes.items()]}),
            encoding="utf-8",
        )
        port = _free_port()
        exe = Path(sys.executable).with_name("synaptoroute")
        cmd = [
            str(exe),
            "serve",
            "--store",
            ":memory:",
            "--routes",
            str(routes_file),
            "--port",
            str(port),
            "--log-level",
            "warning",
            # One load generator holds every connection: the per-client limit (100 by
            # default, since the service's connection limits) refused the rest.
            "--max-connections-per-client",
            str(max(args.levels) + 16),
            "--max-connections",
            str(max(args.levels) + 16),
        ]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.spin:
            cmd.append("--spin")
        server = subprocess.Popen(cmd, cwd=REPO_ROOT, env={**os.environ})
        results: list[dict[str, Any]] = []
        pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
        top = args.levels[-1]
        try:
            _wait_ready(port, server)
            _run_child("client", 8, queries[:200], tmp, port=port)
            for level, texts in zip(args.levels, slices, strict=False):
                results.append(_run_child("client", level, texts, tmp, port=port))
                print(json.dumps(results[-1]), flush=True)
            # The top level's run is the first round's HTTP half; the server idles
            # while the in-process half runs.
            extra = slices[len(args.levels) :]
            for i, texts in enumerate([slices[len(args.levels) - 1], *extra]):
                http = results[-1] if i == 0 else _run_child("client", top, texts, tmp, port=port)
                base = _run_child(
                    "inprocess",
                    top,
                    texts,
                    tmp,
                    routes_file=routes_file,
                    threads=args.threads,
                    spin=args.spin,
                )
                pairs.append((http, base))
                print(json.dumps({"round": i, "http": http, "inprocess": base}), flush=True)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)

    print()
    print("| concurrency | requests | req/s | p50 ms | p99 ms | statuses |")
    print("|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(
            f"| {r['concurrency']} | {r['requests']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['status']} |"
        )
    base = pairs[0][1]
    print(
        f"| in-process aquery, {top} | {base['requests']} | {base['rps']:.0f} | "
        f"{base['p50_ms']:.1f} | {base['p99_ms']:.1f} | - |"
    )
    print(f"\nHTTP vs in-process aquery at concurrency {top}, alternating rounds:\n")
    print("| round | HTTP req/s | in-process req/s | ratio |")
    print("|---:|---:|---:|---:|")
    for i, (http, base) in enumerate(pairs):
        print(f"| {i} | {http['rps']:.0f} | {base['rps']:.0f} | {http['rps'] / base['rps']:.2f} |")
    ratio = sum(h["rps"] for h, _ in pairs) / sum(b["rps"] for _, b in pairs)
    print(f"\nHTTP / in-process throughput at concurrency {top}: {ratio:.2f} (target >= 0.7)")


if __name__ == "__main__":
    main()
