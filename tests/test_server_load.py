"""A bounded load test on loopback: 5,000 concurrent requests against ``synaptoroute serve``.

Every request must be answered, with a route (200) or an explicit 503 carrying
``Retry-After`` (the queue is kept small so refusals really happen), while route
changes land in the middle of the traffic; none of those changes may be lost, in
the service or in the SQLite file. The whole run is bounded in time and count.
"""

from __future__ import annotations

import asyncio
import os
import resource
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_server_e2e import KEY, Server

from synaptoroute import SQLiteStorage

# Integration tier: the real model (and, for some, a real server).
pytestmark = pytest.mark.model

N_REQUESTS = 5_000
N_CHANGES = 40
BOUND_S = 240.0  # the whole burst must finish within this, or the test fails


@pytest.fixture
def open_files_for_the_burst() -> Iterator[None]:
    """Room for the burst's connections, in this process and the server it starts: a
    soft limit of 1,024 open files (many login shells and services) failed requests
    with "connection failed", not the service."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = N_REQUESTS + N_CHANGES + 1_000
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs {need} open files per process; the hard limit is {hard}")
    if soft == resource.RLIM_INFINITY or soft >= need:
        yield
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.timeout(400)
@pytest.mark.usefixtures("open_files_for_the_burst")
def test_5000_concurrent_requests_all_answered_nothing_lost(tmp_path: Path) -> None:
    srv = Server(
        tmp_path,
        "--max-queue",
        "1000",
        "--log-level",
        "warning",
        # One client's 5,000 connections: this test is about the queue, not the
        # per-client connection limit (tests/test_server_attacks.py covers that).
        "--max-connections",
        "10000",
        "--max-connections-per-client",
        "10000",
        # Nor about slow clients: a busy machine may accept a connection long before this
        # client's loop, busy with 5,000 others, writes its request (headers and body
        # are two writes, so the body may wait too) or reads its answer.
        "--header-timeout",
        str(BOUND_S),
        "--body-timeout",
        str(BOUND_S),
        env={"SYNAPTOROUTE_API_KEY": KEY},
    )
    auth = {"Authorization": f"Bearer {KEY}"}

    async def burst() -> tuple[list[httpx.Response | BaseException], list[int]]:
        limits = httpx.Limits(max_connections=N_REQUESTS + N_CHANGES, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=srv.url, limits=limits, timeout=BOUND_S) as c:
            queries = [
                c.post("/route", json={"query": f"I need a refund for order {i}"})
                for i in range(N_REQUESTS)
            ]
            changes = [
                c.put(f"/routes/load{i}", json={"utterances": [f"load topic {i}"]}, headers=auth)
                for i in range(N_CHANGES)
            ]
            results = await asyncio.wait_for(
                asyncio.gather(*queries, *changes, return_exceptions=True), BOUND_S
            )
        answers = results[:N_REQUESTS]
        change_codes = [
            r.status_code if isinstance(r, httpx.Response) else -1 for r in results[N_REQUESTS:]
        ]
        return answers, change_codes

    try:
        answers, change_codes = asyncio.run(burst())
        errors = [r for r in answers if isinstance(r, BaseException)]
        assert not errors, f"{len(errors)} requests got no answer, e.g. {errors[0]!r}"
        responses = [r for r in answers if isinstance(r, httpx.Response)]
        codes = Counter(r.status_code for r in responses)
        assert set(codes) <= {200, 503}, codes
        assert codes[200] > 0
        for r in responses:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1"
                assert r.json() == {"detail": "the router is overloaded; retry later"}
            else:
                assert r.json()["route"] == "billing"
        # A route change is never refused for load: it does not go through the queue.
        assert change_codes == [201] * N_CHANGES, Counter(change_codes)
        listed = {r["name"] for r in httpx.get(f"{srv.url}/routes", timeout=60).json()}
        assert {f"load{i}" for i in range(N_CHANGES)} <= listed
        metrics = httpx.get(f"{srv.url}/metrics", timeout=60).text
        rejected = f'synaptoroute_rejections_total{{reason="overloaded"}} {codes[503]}'
        assert codes[503] == 0 or rejected in metrics
    finally:
        assert srv.stop() == 0
    store = SQLiteStorage(srv.store)
    try:
        names = {item.route.name for item in store.load()}
    finally:
        store.close()
    assert names == {"billing", "tech"} | {f"load{i}" for i in range(N_CHANGES)}
    print(f"\nstatuses: {dict(codes)}; cores: {os.cpu_count()}")
