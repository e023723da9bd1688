"""Issue 18's attacks, replayed against a local ``synaptoroute serve`` (loopback only).

Starts the service (default limits; a store of ``--utterances`` utterances for the
read attack), then for each attack runs legitimate traffic alongside it: one client on
127.0.0.2 sending ``POST /route`` one request after another (a distinct text each
time, so every one is encoded). It reports, per attack, the legitimate requests'
success rate and p50/p99 latency, and the server's RSS before, at peak (sampled every
50 ms) and after. The attacker uses 127.0.0.1, so per-client limits see two clients.

Attacks (sizes as in the issue unless scaled down with ``--scale``):

- ``idle``: 19,980 idle connections (as many as the client's descriptor limit allows).
- ``slow``: 500 connections sending ~1 MB bodies that stall after the first 100 KB, plus
  silent and unfinished-header connections.
- ``header``: one unterminated 200 MB header, then an 8 MB header.
- ``cache``: 500 distinct ~1 MB queries.
- ``cpu``: three clients each keeping a 1,024 x 1,000-character ``/route/batch`` in flight
  (refused by cost), then the largest admissible batches of such texts.
- ``poison``: ``PUT /routes/x`` with lone surrogates and 300-level metadata, then reads.
- ``reads``: unauthenticated ``GET /routes`` in a loop on the large store.

Usage::

    python benchmarks/attack.py [--duration 10] [--scale 1.0] [--utterances 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from common import machine_info, percentile

HOST, OTHER = "127.0.0.1", "127.0.0.2"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    """Peak RSS of ``pid`` while running."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_mb(pid)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, rss_mb(self.pid))


def build_store(path: Path, utterances: int) -> None:
    from synaptoroute import AdaptiveRouter, Route, SQLiteStorage

    router = AdaptiveRouter(storage=SQLiteStorage(path))
    router.add_routes(
        [
            Route(name="billing", utterances=["I need a refund", "Where is my receipt?"]),
            Route(name="tech", utterances=["The app crashes on start", "I can't log in"]),
        ]
    )
    per_route = 1000
    for r in range(max(0, utterances - 4) // per_route):
        texts = [
            f"topic {r} example {i} about subject {r * per_route + i}" for i in range(per_route)
        ]
        router.add_route(Route(name=f"bulk{r}", utterances=texts))
    router.close()


async def legit(url: str, stop: asyncio.Event, out: list[float | None]) -> None:
    transport = httpx.AsyncHTTPTransport(local_address=OTHER, retries=0)
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=30) as c:
        i = 0
        while not stop.is_set():
            i += 1
            start = time.perf_counter()
            try:
                r = await c.post(
                    "/route", json={"query": f"I need a refund for order {i} {time.time()}"}
                )
                out.append(time.perf_counter() - start if r.status_code == 200 else None)
            except httpx.HTTPError:
                out.append(None)


async def open_idle(port: int, count: int, keep: list[socket.socket]) -> None:
    for _ in range(count):
        try:
            s = socket.create_connection((HOST, port), 5)
        except OSError:
            break
        keep.append(s)
        await asyncio.sleep(0)


async def attack_idle(port: int, scale: float, stop: asyncio.Event) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    keep: list[socket.socket] = []
    wanted = min(int(19_980 * scale), soft - 200)
    await open_idle(port, wanted, keep)
    # Stops at the first refused connect: say how many were held, not how many were asked.
    print(f"idle attack: {len(keep)} connections held (asked {wanted})", flush=True)
    await stop.wait()
    for s in keep:
        s.close()


async def attack_slow(port: int, scale: float, stop: asyncio.Event) -> None:
    writers = []
    for i in range(int(500 * scale)):
        try:
            _, w = await asyncio.open_connection(HOST, port)
        except OSError:
            break
        if i % 3 == 0:  # a ~1 MB body that stalls after 100 KB
            head = (
                f"POST /route HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                "Content-Length: 1000000\r\n\r\n"
            )
            w.write(head.encode() + b'{"query": "' + b"a" * 100_000)
        elif i % 3 == 1:  # headers that never end
            w.write(b"GET / HTTP/1.1\r\nX-A: b")
        # else: silent
        writers.append(w)
    await stop.wait()
    for w in writers:
        w.close()


async def attack_header(port: int, scale: float, stop: asyncio.Event) -> None:
    for total in (int(200_000_000 * scale), int(8_000_000 * scale)):
        try:
            _, w = await asyncio.open_connection(HOST, port)
            w.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            sent = 0
            while sent < total and not stop.is_set():
                w.write(b"a" * 65536)
                await w.drain()
                sent += 65536
            w.close()
        except OSError:
            pass


async def attack_cache(url: str, scale: float, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        for i in range(int(500 * scale)):
            if stop.is_set():
                break
            with contextlib.suppress(httpx.HTTPError):
                await c.post("/route", json={"query": f"{i} " + "word " * 200_000})


async def attack_cpu(url: str, scale: float, stop: asyncio.Event) -> None:
    huge = {"queries": ["refund " * 143] * int(1024 * scale)}
    admissible = {"queries": ["refund " * 143] * 120}

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    r = await c.post("/route/batch", json=huge)
                    if r.status_code in (413, 429):
                        await c.post("/route/batch", json=admissible)

    await asyncio.gather(*(client() for _ in range(3)))


async def attack_poison(url: str, scale: float, stop: asyncio.Event) -> None:
    bodies = [
        b'{"utterances": ["a"], "metadata": {"k": "\\ud800"}}',
        b'{"utterances": ["a"], "metadata": ' + b'{"k": ' * 300 + b"1" + b"}" * 301,
    ]
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        while not stop.is_set():
            for body in bodies:
                await c.put("/routes/x", content=body, headers={"content-type": "application/json"})
            await c.get("/routes?limit=1")


async def attack_reads(url: str, scale: float, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                await c.get("/routes")


async def run_one(
    name: str,
    url: str,
    pid: int,
    attack: Callable[[asyncio.Event], Awaitable[None]],
    duration: float,
) -> dict[str, object]:
    before = rss_mb(pid)
    sampler = Sampler(pid)
    sampler.start()
    stop = asyncio.Event()
    results: list[float | None] = []
    tasks = [asyncio.create_task(attack(stop)), asyncio.create_task(legit(url, stop, results))]
    await asyncio.sleep(duration)
    stop.set()
    await asyncio.wait(tasks, timeout=120)
    await asyncio.sleep(2)  # let the server close what the attack left
    sampler.done.set()
    ok = [r * 1000 for r in results if r is not None]
    return {
        "attack": name,
        "requests": len(results),
        "success": len(ok) / max(1, len(results)),
        "p50_ms": percentile(ok, 50) if ok else float("nan"),
        "p99_ms": percentile(ok, 99) if ok else float("nan"),
        "rss_before": before,
        "rss_peak": sampler.peak,
        "rss_after": rss_mb(pid),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--utterances", type=int, default=100_000)
    parser.add_argument(
        "--attacks",
        nargs="*",
        default=["idle", "slow", "header", "cache", "cpu", "poison", "reads"],
        # A misspelt name ran as an idle phase and reported 100% success.
        choices=["none", "idle", "slow", "header", "cache", "cpu", "poison", "reads"],
        help="phases after the warm-up, in order ('none': legitimate traffic alone)",
    )
    args = parser.parse_args()
    print(machine_info(), flush=True)  # load at start: the run's own traffic raises it
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "routes.db"
        build_store(store, args.utterances)
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        url = f"http://{HOST}:{port}"
        cmd = [
            sys.executable,
            "-m",
            "synaptoroute",
            "serve",
            "--store",
            str(store),
            "--port",
            str(port),
            "--log-level",
            "error",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                time.sleep(0.2)
            else:
                raise SystemExit("the service did not become ready in 300 s")
            attacks: dict[str, Callable[[asyncio.Event], Awaitable[None]]] = {
                "idle": lambda stop: attack_idle(port, args.scale, stop),
                "slow": lambda stop: attack_slow(port, args.scale, stop),
                "header": lambda stop: attack_header(port, args.scale, stop),
                "cache": lambda stop: attack_cache(url, args.scale, stop),
                "cpu": lambda stop: attack_cpu(url, args.scale, stop),
                "poison": lambda stop: attack_poison(url, args.scale, stop),
                "reads": lambda stop: attack_reads(url, args.scale, stop),
            }
            rows = []
            # Two phases of legitimate traffic alone first: a fresh server's RSS
            # still settles during the second (measured with --attacks none none),
            # so "before the attacks" is read after it.
            for name in ["warm-up", "none", *args.attacks]:
                attack = attacks.get(name, lambda stop: stop.wait())
                rows.append(asyncio.run(run_one(name, url, proc.pid, attack, args.duration)))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait(60)
    print(
        f"\nload {os.getloadavg()[0]:.2f} at the end, cores {os.cpu_count()}, utterances {args.utterances}, duration {args.duration}s, scale {args.scale}"
    )
    print("| attack | legit requests | success | p50 ms | p99 ms | RSS before / peak / after MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['attack']} | {r['requests']} | {r['success']:.1%} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
            f"{r['rss_before']:.0f} / {r['rss_peak']:.0f} / {r['rss_after']:.0f} |"
        )
    if len(rows) > 2:
        first, last = rows[2], rows[-1]
        print(
            f"\nRSS before the attacks (after the 'none' phase) {first['rss_before']:.0f} MB, "
            f"after them {last['rss_after']:.0f} MB: "
            f"{float(last['rss_after']) - float(first['rss_before']):+.0f} MB"
        )


if __name__ == "__main__":
    main()
