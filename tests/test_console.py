"""The console at ``/console``: its API over real HTTP, and the page in a real Chromium.

The service runs in uvicorn on 127.0.0.1 with the real model and a real SQLite
file. Browser tests drive the distribution's Chromium (``scripts/chromium.sh``
installs it; they skip without it, or fail under ``SYNAPTOROUTE_TEST_BROWSER_REQUIRED=1``
as in CI) through Playwright and wait only on DOM states, each with a generous
limit that fails the test instead of pacing it. When a browser test fails, a
screenshot of the page and of every console view is saved and its folder printed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import numpy as np
import pytest
from encoder_doubles import CountingEncoder
from threaded_server import ThreadedServer

from synaptoroute import AdaptiveRouter, Encoder, Route
from synaptoroute.datasets import DatasetError, parse_jsonl
from synaptoroute.server import ServerSettings, create_app
from synaptoroute.server.console import (
    CONSOLE_CSP,
    MAX_EVALUATION_ROWS,
    _Live,
    histogram_quantile,
    project,
)
from synaptoroute.server.metrics import ServiceMetrics
from synaptoroute.storage import SQLiteStorage

KEY = "console-test-key"
NDJSON = {"Content-Type": "application/x-ndjson"}
LIMIT_S = 60.0  # a hang bound for every wait; reaching it fails the test
LIMIT_MS = LIMIT_S * 1000
XSS = '<img src=x onerror="window.__xss = 1">'
BASE = [
    Route(
        name="billing",
        utterances=[
            "I need a refund",
            "Where is my invoice?",
            "I was charged twice",
            "How do I update my credit card?",
        ],
    ),
    Route(
        name="tech",
        utterances=[
            "The app crashes on start",
            "I can't log in",
            "The page does not load",
            "Error message when uploading a file",
        ],
    ),
    Route(
        name="shipping",
        utterances=["Where is my parcel?", "When will my order arrive?", "Track my delivery"],
    ),
]


# -- a real service on 127.0.0.1 -----------------------------------------------------------
class Service(ThreadedServer):
    """uvicorn serving ``create_app`` in a thread, on a port of its own."""

    def __init__(self, router: AdaptiveRouter, settings: ServerSettings) -> None:
        self.router = router
        super().__init__(create_app(settings, router=router))

    def reset(self, routes: list[Route]) -> None:
        """Put the router back to ``routes`` (the router is thread-safe)."""
        for name in self.router.route_names:
            self.router.delete_route(name)
        if self.router.negatives:
            self.router.delete_negatives(self.router.negatives)
        self.router.add_routes(routes)


def _service(
    tmp: Path, encoder: Encoder, **settings: Any
) -> tuple[Service, AdaptiveRouter, SQLiteStorage]:
    storage = SQLiteStorage(tmp / "routes.db")
    router = AdaptiveRouter(CountingEncoder(encoder), storage)
    router.add_routes(BASE)
    return Service(router, ServerSettings(**settings)), router, storage


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Iterator[Service]:
    """The console with an API key: read-only without it."""
    svc, _, storage = _service(tmp_path_factory.mktemp("console"), encoder, api_key=KEY)
    yield svc
    svc.stop()
    storage.close()


@pytest.fixture
def live(service: Service) -> Service:
    """The module's service, with the base routes back in place."""
    service.reset(BASE)
    return service


@pytest.fixture
def client(live: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=LIMIT_S) as c:
        yield c


AUTH = {"Authorization": f"Bearer {KEY}"}


# -- pure parts ---------------------------------------------------------------------------------
def test_project_finds_the_axis_of_spread_and_places_new_points() -> None:
    rng = np.random.default_rng(0)
    along = rng.normal(size=(200, 1)) * np.array([[3.0, 0.0, 0.0, 0.0]])
    vectors = (along + rng.normal(scale=0.01, size=(200, 4))).astype(np.float32)
    routes = np.zeros(200, dtype=np.int64)
    p = project(vectors, routes, [f"t{i}" for i in range(200)], ["only"])
    assert p.explained[0] > 0.99
    assert abs(p.components[0, 0]) > 0.99 and p.components[0, 0] > 0  # oriented
    # Placing a stored vector gives the point it already has.
    x, y = p.place(vectors[7])
    assert np.allclose((x, y), p.coords[7], atol=1e-4)
    again = project(vectors, routes, p.texts, p.routes)
    assert np.array_equal(again.coords, p.coords)


def test_project_handles_one_point_and_none() -> None:
    one = project(np.ones((1, 3), dtype=np.float32), np.zeros(1, dtype=np.int64), ["a"], ["r"])
    assert one.coords.shape == (1, 2) and np.allclose(one.coords, 0)
    none = project(np.zeros((0, 3), dtype=np.float32), np.zeros(0, dtype=np.int64), [], [])
    assert none.coords.shape == (0, 2) and none.explained == (0.0, 0.0)


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    bounds = [0.001, 0.01, 0.1]
    assert histogram_quantile(0.5, bounds, [0, 0, 0, 0]) is None
    assert histogram_quantile(0.5, bounds, [10, 0, 0, 0]) == pytest.approx(0.0005)
    # 4 rows under 1 ms, 4 in (1, 10] ms: the median is the top of the first bucket.
    assert histogram_quantile(0.5, bounds, [4, 4, 0, 0]) == pytest.approx(0.001)
    assert histogram_quantile(0.99, bounds, [4, 4, 0, 0]) == pytest.approx(0.00982)
    assert histogram_quantile(0.99, bounds, [0, 0, 0, 5]) == 0.1  # +Inf: the last bound


def test_parse_jsonl_reads_an_upload_like_a_file() -> None:
    data = b'\xef\xbb\xbf{"text": "hi", "label": "a"}\n\n{"text": "x", "label": null}\n'
    assert parse_jsonl(data) == (["hi", "x"], ["a", None])
    with pytest.raises(DatasetError, match=r"up: 2 malformed lines: line 1: .*line 2: "):
        parse_jsonl(b'{"text": 1, "label": "a"}\nnot json\n', "up")
    with pytest.raises(DatasetError, match="no labelled rows"):
        parse_jsonl(b"\n")
    # Text reads as its UTF-8 bytes (it raised a bare AttributeError); a lone
    # surrogate is that line's error, anything else a TypeError naming the type.
    # (split as a file is: U+2028 is no line break there)
    assert parse_jsonl('{"text": "caf\u00e9\u2028x", "label": "a"}\n') == (
        ["caf\u00e9\u2028x"],
        ["a"],
    )
    assert parse_jsonl(bytearray(data)) == (["hi", "x"], ["a", None])
    with pytest.raises(DatasetError, match="line 2: not valid UTF-8"):
        parse_jsonl('{"text": "a", "label": "a"}\n{"text": "\ud800", "label": "a"}\n')
    with pytest.raises(TypeError, match="parse_jsonl takes bytes or str, not list"):
        parse_jsonl([b"{}"])  # type: ignore[arg-type]


# -- the API over HTTP --------------------------------------------------------------------------
def test_pages_are_served_with_a_strict_policy(client: httpx.Client) -> None:
    assert client.get("/console").status_code == 307
    for path in (
        "/console/",
        "/console/console.js",
        "/console/console.css",
        "/console/api/overview",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == CONSOLE_CSP
        assert response.headers["x-content-type-options"] == "nosniff"
        # The pages revalidate; the API's answers (routes, texts) are never stored.
        cache = "no-store" if "/api/" in path else "no-cache"
        assert response.headers["cache-control"] == cache, path
    assert "'unsafe-inline'" not in CONSOLE_CSP and "script-src 'self'" in CONSOLE_CSP
    page = client.get("/console/").text
    assert '<script src="console.js" defer></script>' in page
    assert "<style" not in page and " style=" not in page and "onclick" not in page
    assert client.get("/console/index.html").status_code == 404
    assert client.get("/console/secrets.py").status_code == 404


def test_overview_and_route_details(client: httpx.Client) -> None:
    doc = client.get("/console/api/overview").json()
    assert doc["access"] == "token"
    assert [(r["name"], r["utterances"]) for r in doc["routes"]] == [
        ("billing", 4),
        ("tech", 4),
        ("shipping", 3),
    ]
    assert all(r["effective_threshold"] == doc["threshold"] for r in doc["routes"])
    details = client.get("/console/api/routes/tech").json()
    assert details["utterances"] == BASE[1].utterances
    assert client.get("/console/api/routes/nope").status_code == 404
    # A name the API refuses is refused here the same way, not looked up.
    for bad in ("%FF", "%20tech"):
        assert client.get(f"/console/api/routes/{bad}").status_code == 422, bad
        assert client.get(f"/routes/{bad}").status_code == 422, bad


def test_last_change_is_stamped_when_a_route_changes(client: httpx.Client) -> None:
    before = {
        r["name"]: r["changed_at"] for r in client.get("/console/api/overview").json()["routes"]
    }
    assert before["tech"] is None  # there before the console first looked
    added = client.post(
        "/routes/tech/utterances", json={"utterances": ["The screen stays black"]}, headers=AUTH
    )
    assert added.status_code == 200
    after = {
        r["name"]: r["changed_at"] for r in client.get("/console/api/overview").json()["routes"]
    }
    assert after["tech"] is not None and after["billing"] is None


def test_try_explains_the_decision(client: httpx.Client) -> None:
    answer = client.post("/console/api/try", json={"query": "I want my money back", "k": 3}).json()
    decision = answer["decision"]
    assert decision["route"] == "billing"
    assert answer["decided_by"] == "threshold" and answer["lexical_weight"] is None
    assert answer["ngram_features"] is None
    assert answer["top"][0]["route"] == "billing"
    assert len(answer["top"]) == 3
    assert answer["margin"] == pytest.approx(decision["score"] - decision["runner_up_score"])
    best = answer["top"][0]
    assert best["passed"] and best["score"] == pytest.approx(decision["score"])
    assert best["nearest"][0]["text"] == decision["nearest_utterance"]
    assert best["nearest"][0]["score"] == pytest.approx(decision["score"], abs=1e-5)
    assert {n["text"] for t in answer["top"] for n in t["nearest"]} <= {
        u for r in BASE for u in r.utterances
    }
    assert client.post("/console/api/try", json={"query": 3}).status_code == 422


def test_try_names_a_hybrid_heads_lexical_signals(client: httpx.Client, live: Service) -> None:
    router = live.router
    policy = router.policy
    utterances = [u for r in BASE for u in r.utterances]
    owners = [r.name for r in BASE for _ in r.utterances]
    try:
        router.fit(utterances, owners, head=True, hybrid=True)
        head = router.policy.head
        assert head is not None and head.ngrams is not None
        answer = client.post("/console/api/try", json={"query": "I was charged twice"}).json()
        assert answer["decided_by"] == "head"
        assert answer["lexical_weight"] == head.beta > 0
        assert answer["ngram_features"] == len(head.ngrams) > 0
        # An empty query ranks nothing and asks no head (it said "the fitted head").
        empty = client.post("/console/api/try", json={"query": "\u200b"}).json()
        assert empty["decision"]["reason"] == "empty_query"
        assert empty["decided_by"] == "threshold" and empty["lexical_weight"] is None
    finally:
        router.set_policy(policy)


def test_try_encodes_a_long_query_once(client: httpx.Client, live: Service) -> None:
    # The explanation reads the vector the router cached for its answer; the cache is
    # keyed by the text the model reads, so a query longer than that is no exception.
    query = "I want my money back " * 400
    calls = live.router.encoder.calls  # type: ignore[attr-defined]
    assert client.post("/console/api/try", json={"query": query, "k": 2}).status_code == 200
    assert live.router.encoder.calls == calls + 1  # type: ignore[attr-defined]


def test_evaluate_reports_confusions(client: httpx.Client) -> None:
    rows = [
        {"text": "I was charged twice on my card", "label": "tech"},  # billing, labelled tech
        {"text": "My parcel has not arrived", "label": "shipping"},
        {"text": "What is the capital of Peru?", "label": None},
    ]
    body = "\n".join(json.dumps(r) for r in rows).encode()
    report = client.post("/console/api/evaluate", headers=NDJSON, content=body).json()
    assert report["rows"] == 3 and report["in_scope"] == 2
    assert {"label": "tech", "predicted": "billing", "count": 1} in report["confused_pairs"]
    assert report["misrouted"][0]["text"] == rows[0]["text"]
    assert report["misrouted_total"] == len(report["misrouted"])
    bad = client.post("/console/api/evaluate", headers=NDJSON, content=b'{"text": "x"}\n')
    assert bad.status_code == 422 and "line 1" in bad.json()["detail"]
    # JSON the parser gives up on (too deep, a number past Python's digit limit) is a
    # malformed line too, not a 500.
    for line in (b"[" * 5000, b'{"text": "x", "label": ' + b"1" * 5000 + b"}"):
        hostile = client.post("/console/api/evaluate", headers=NDJSON, content=line + b"\n")
        assert hostile.status_code == 422 and "line 1: invalid JSON" in hostile.json()["detail"]
    unknown = client.post(
        "/console/api/evaluate", headers=NDJSON, content=b'{"text": "x", "label": "nope"}\n'
    )
    assert unknown.status_code == 422
    many = b'{"text": "x", "label": null}\n' * (MAX_EVALUATION_ROWS + 1)
    too_many = client.post("/console/api/evaluate", headers=NDJSON, content=many)
    assert too_many.status_code == 422 and "at most" in too_many.json()["detail"]


def test_an_upload_not_declared_as_json_lines_is_refused(client: httpx.Client) -> None:
    # A cross-site page could POST text/plain (no CORS preflight) and make the service
    # route up to 10,000 rows per request.
    body = b'{"text": "I need a refund", "label": "billing"}\n'
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "multipart/form-data"}, {}):
        refused = client.post("/console/api/evaluate", headers=headers, content=body)
        assert refused.status_code == 415, headers
        assert "application/x-ndjson" in refused.json()["detail"]
    for media in ("application/x-ndjson", "application/json; charset=utf-8"):
        taken = client.post("/console/api/evaluate", headers={"Content-Type": media}, content=body)
        assert taken.status_code == 200 and taken.json()["rows"] == 1


def test_try_says_when_a_negative_example_decided(client: httpx.Client, live: Service) -> None:
    negative = "I need a refund for my cat's vet surgery"
    live.router.add_negatives([negative])
    answer = client.post("/console/api/try", json={"query": negative}).json()
    assert answer["decision"]["reason"] == "negative_example"
    assert answer["decided_by"] == "negative_example"


def test_map_projects_the_stored_vectors(client: httpx.Client, live: Service) -> None:
    doc = client.post("/console/api/map", json={"query": "I need a refund"}).json()
    assert doc["routes"] == ["billing", "tech", "shipping"]
    n = sum(len(r.utterances) for r in BASE)
    assert len(doc["x"]) == len(doc["y"]) == len(doc["route"]) == n
    # The query is a stored utterance: it lands on that utterance's point.
    i = doc["texts"].index("I need a refund")
    assert (doc["query"]["x"], doc["query"]["y"]) == pytest.approx(
        (doc["x"][i], doc["y"][i]), abs=1e-3
    )
    assert doc["route"][i] == 0
    assert len(doc["closest_pairs"]) == 3
    # No re-encoding: the map reads the stored vectors (the query is in the cache).
    calls = live.router.encoder.calls  # type: ignore[attr-defined]
    again = client.post("/console/api/map", json={}).json()
    assert again["x"] == doc["x"] and again["query"] is None
    assert live.router.encoder.calls == calls  # type: ignore[attr-defined]
    # A query the model reads nothing of is an empty query: nothing to place, nothing
    # encoded (it was embedded as "" and drawn).
    empty = client.post("/console/api/map", json={"query": "\u200b\ufeff"}).json()
    assert empty["query"] is None
    assert live.router.encoder.calls == calls  # type: ignore[attr-defined]
    # A new query is encoded once, by the batching worker (its limits apply).
    items = sum(w.stats.items for w in live.router.workers)
    placed = client.post("/console/api/map", json={"query": "my parcel never came"}).json()
    assert placed["query"]["text"] == "my parcel never came"
    assert sum(w.stats.items for w in live.router.workers) == items + 1
    assert live.router.encoder.calls == calls + 1  # type: ignore[attr-defined]


async def test_the_map_follows_a_router_opened_again(tmp_path: Path, encoder: Encoder) -> None:
    # The map was cached by the snapshot's version, which a router opened again (a
    # lifespan restart) counts from the start: the old routes came back.
    path = tmp_path / "routes.db"

    def change(delete: str | None, route: Route) -> None:
        writer = AdaptiveRouter(encoder, SQLiteStorage(path))
        if delete is not None:
            writer.delete_route(delete)
        writer.add_routes([route])
        writer.close()

    change(None, Route(name="alpha", utterances=["first text", "second text"]))
    app = create_app(ServerSettings(store=str(path)))
    for delete, route in ((None, None), ("alpha", Route(name="beta", utterances=["third text"]))):
        if route is not None:
            change(delete, route)  # another process, between the two lifespans
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c,
        ):
            doc = (await c.post("/console/api/map", json={})).json()
            expected = ["alpha"] if route is None else ["beta"]
            assert doc["routes"] == expected
            assert doc["texts"] == (
                ["first text", "second text"] if route is None else ["third text"]
            )


def test_an_evaluation_keeps_a_route_deleted_while_it_runs(
    tmp_path: Path, encoder: Encoder
) -> None:
    # The names were read after the run: a row routed to a route deleted meanwhile
    # failed the upload with a 422 blaming its labels (all null here).
    armed: dict[str, Any] = {}

    class DeletesOnce:
        model_id, dimension = encoder.model_id, encoder.dimension

        def encode(self, texts: list[str]) -> Any:
            vectors = encoder.encode(texts)
            if "router" in armed:
                armed["calls"] += 1
                if armed["calls"] == 2:  # the first row was routed to tech: it goes now
                    armed.pop("router").delete_route("tech")
            return vectors

    storage = SQLiteStorage(tmp_path / "routes.db")
    router = AdaptiveRouter(DeletesOnce(), storage)
    router.add_routes(BASE)
    svc = Service(router, ServerSettings(batch_chunk_cost=1))  # one row a chunk
    try:
        armed.update(router=router, calls=0)
        body = "".join(
            json.dumps({"text": f"the app crashes when I open screen {i}", "label": None}) + "\n"
            for i in range(5)
        )
        with httpx.Client(base_url=svc.url, timeout=LIMIT_S) as c:
            answer = c.post("/console/api/evaluate", content=body.encode(), headers=NDJSON)
        assert answer.status_code == 200, answer.text
        assert "tech" not in router and "router" not in armed
        assert answer.json()["rows"] == 5
    finally:
        svc.stop()
        storage.close()


def test_map_leaves_the_negative_examples_out(client: httpx.Client, live: Service) -> None:
    live.router.add_negatives(["tell me a joke", "what is the weather like"])
    doc = client.post("/console/api/map", json={"query": "tell me a joke"}).json()
    # Held as a reserved route, they are no route: not named, not drawn, not paired.
    assert doc["routes"] == ["billing", "tech", "shipping"]
    assert len(doc["x"]) == sum(len(r.utterances) for r in BASE)
    assert "tell me a joke" not in doc["texts"]
    assert sorted(set(doc["route"])) == [0, 1, 2]
    assert doc["texts"][doc["route"].index(2)] in BASE[2].utterances
    assert all("__negatives__" not in (p["a"], p["b"]) for p in doc["closest_pairs"])
    assert client.get("/console/api/routes/__negatives__").status_code == 404


def test_stats_count_the_service_not_the_console(client: httpx.Client) -> None:
    for _ in range(5):
        assert client.post("/route", json={"query": "Where is my parcel?"}).status_code == 200
    stats = client.get("/console/api/stats").json()
    assert stats["requests_per_s"] > 0
    assert stats["p50_ms"] is not None and 0 < stats["p50_ms"] <= stats["p99_ms"]
    assert stats["routes"] == 3 and stats["utterances"] == 11
    assert stats["queue_depth"] == 0
    # Since then only console requests: they are not counted, so the window's request
    # count cannot grow (it may shrink as the window slides on).
    quiet = client.get("/console/api/stats").json()
    assert quiet["requests_per_s"] * quiet["window_s"] <= (
        stats["requests_per_s"] * stats["window_s"] + 1e-6
    )


def test_live_figures_leave_out_traffic_from_before_the_window() -> None:
    # Sampled only when polled, the first poll after an idle gap reported the gap's
    # traffic as the last seconds' (30 requests an hour ago: "2.5 requests/s").
    clock = [100.0]
    metrics = ServiceMetrics(lambda: 0.0, lambda: 0.0)
    live = _Live(metrics, lambda: clock[0])

    def served(n: int) -> None:  # what the metrics middleware does for each request
        for _ in range(n):
            for hook in metrics.on_request:
                hook()
            metrics.requests.inc(("POST", "/route", "200"))
            metrics.latency.observe(0.001, ("POST", "/route"))

    clock[0] = 100.5
    served(30)  # within a second of the last sample: none taken
    clock[0] = 112.0
    idle = live.figures()
    assert idle["requests_per_s"] == 0.0
    assert idle["p50_ms"] is None
    clock[0] = 113.0
    served(10)
    clock[0] = 115.0
    busy = live.figures()
    assert busy["window_s"] == pytest.approx(10.0)
    assert busy["requests_per_s"] == pytest.approx(1.0)
    # One request within a second of a sample, then none until one 94 s later: the
    # first is not in the window of a poll 5 s after the second.
    clock[0] = 200.5
    served(1)
    clock[0] = 295.0
    served(1)
    clock[0] = 300.0
    late = live.figures()
    assert late["window_s"] == pytest.approx(10.0)
    assert late["requests_per_s"] == pytest.approx(0.1)


def test_the_key_check_accepts_only_the_key(client: httpx.Client) -> None:
    assert client.get("/console/api/access").status_code == 401
    assert (
        client.get("/console/api/access", headers={"Authorization": "Bearer no"}).status_code == 401
    )
    assert client.get("/console/api/access", headers=AUTH).json() == {"changes": True}


def test_console_can_be_turned_off_and_is_read_only_with_read_only(
    tmp_path: Path, encoder: Encoder
) -> None:
    off, _, storage = _service(tmp_path, encoder, console=False)
    try:
        assert httpx.get(off.url + "/console/").status_code == 404
        assert httpx.get(off.url + "/console/api/overview").status_code == 404
        assert httpx.get(off.url + "/readyz").status_code == 200
    finally:
        off.stop()
        storage.close()
    (tmp_path / "ro").mkdir()
    ro, _, storage = _service(tmp_path / "ro", encoder, read_only=True)
    try:
        assert httpx.get(ro.url + "/console/api/overview").json()["access"] == "read_only"
        assert httpx.get(ro.url + "/console/api/access").json() == {"changes": False}
    finally:
        ro.stop()
        storage.close()


def test_a_read_only_service_with_auth_reads_takes_the_key_to_read(
    tmp_path: Path, encoder: Encoder
) -> None:
    # The key check answered 403 "route changes are disabled" to every key on a
    # read-only service, so under --auth-reads the console never stored the key and
    # could never read.
    ro, _, storage = _service(tmp_path, encoder, read_only=True, auth_reads=True, api_key=KEY)
    try:
        assert httpx.get(ro.url + "/console/api/overview").status_code == 401
        wrong = {"Authorization": "Bearer no"}
        assert httpx.get(ro.url + "/console/api/access", headers=wrong).status_code == 401
        access = httpx.get(ro.url + "/console/api/access", headers=AUTH)
        assert access.status_code == 200 and access.json() == {"changes": False}
        overview = httpx.get(ro.url + "/console/api/overview", headers=AUTH)
        assert overview.status_code == 200 and overview.json()["access"] == "read_only"
        # Changes stay refused, with the key too.
        refused = httpx.post(
            ro.url + "/routes", headers=AUTH, json={"name": "x", "utterances": ["y"]}
        )
        assert refused.status_code == 403
    finally:
        ro.stop()
        storage.close()


def test_serve_turns_the_console_off_with_no_console() -> None:
    from synaptoroute.cli import build_parser

    assert build_parser().parse_args(["serve"]).console is True
    assert build_parser().parse_args(["serve", "--no-console"]).console is False
    assert ServerSettings().console is True


# -- the page in a real browser ---------------------------------------------------------------
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWS = ("routes", "try", "evaluate", "map", "live")


def _chromium() -> str | None:
    for candidate in (os.environ.get("SYNAPTOROUTE_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return found


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("SYNAPTOROUTE_TEST_BROWSER_REQUIRED") == "1":
        # CI installs the browser (.ci/run): without it the setup is broken, not skippable.
        pytest.fail(f"a browser is required here (SYNAPTOROUTE_TEST_BROWSER_REQUIRED=1): {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright import sync_api
    except ImportError:
        _unavailable("playwright is not installed (the dev extra)")
    path = _chromium()
    if path is None:
        _unavailable("no Chromium: run `bash scripts/chromium.sh` (installs the distribution's)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class Console:
    """A browser page on the console, recording what the page did."""

    def __init__(self, page: Any, url: str) -> None:
        self.page = page
        self.url = url
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on(
            "console",
            lambda msg: self.errors.append(msg.text) if msg.type == "error" else None,
        )
        page.on("dialog", self._dialog)
        page.on("request", lambda r: self.requests.append((r.method, r.url, r.headers)))
        page.set_default_timeout(LIMIT_MS)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, view: str = "routes") -> Any:
        """Load the console on ``view`` and wait until it has rendered."""
        response = self.page.goto(f"{self.url}/console/#/{view}")
        self.wait(view.split("/")[0])
        return response

    def go(self, view: str) -> None:
        """Switch view in the loaded page."""
        self.page.evaluate("delete document.body.dataset.ready")
        self.page.evaluate("view => { location.hash = '#/' + view; }", view)
        self.wait(view.split("/")[0])

    def wait(self, view: str) -> None:
        self.page.wait_for_function(
            "view => document.body.dataset.ready === view", arg=view, timeout=LIMIT_MS
        )

    def use_key(self, key: str = KEY) -> None:
        from playwright.sync_api import expect

        self.page.fill("#key-input", key)
        self.page.click("#key-form button[type=submit]")
        expect(self.page.locator("#access-status")).to_have_text(
            "Changes enabled with your key (kept in this tab only).", timeout=LIMIT_MS
        )

    def screenshots(self, folder: Path) -> None:
        """The page as it is, then every view."""
        self.page.screenshot(path=str(folder / "failure.png"), full_page=True)
        for view in VIEWS:
            try:
                self.go(view)
            finally:
                self.page.screenshot(path=str(folder / f"{view}.png"), full_page=True)


@pytest.fixture
def console(browser: Any, live: Service, request: pytest.FixtureRequest) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1024, "height": 800})
    c = Console(context.new_page(), live.url)
    yield c
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        folder = Path(tempfile.mkdtemp(prefix=f"console-{request.node.name}-"))
        try:
            c.screenshots(folder)
        finally:
            print(f"console screenshots of the failure: {folder}")
    context.close()


def _expect() -> Any:
    from playwright.sync_api import expect

    expect.set_options(timeout=LIMIT_MS)  # a hang bound, not a pace
    return expect


def test_console_loads_with_the_routes(console: Console) -> None:
    expect = _expect()
    response = console.open()
    assert response.headers["content-security-policy"] == CONSOLE_CSP
    rows = console.page.locator("#routes-table tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_contain_text("billing")
    expect(rows.nth(0).locator("td").nth(1)).to_have_text("4")
    expect(console.page.locator("#access-status")).to_have_text(
        "Read-only: enter the API key to change routes."
    )
    for view in ("try", "evaluate", "map", "live"):
        console.go(view)
    assert console.errors == [] and console.dialogs == []


def test_a_tried_query_shows_its_route(console: Console) -> None:
    expect = _expect()
    console.open("try")
    # A refused query first: its error went on showing beside the next one's answer.
    console.page.fill("#try-input", "x" * 10_001)
    console.page.press("#try-input", "Enter")
    expect(console.page.locator("#message")).to_contain_text("Error 422")
    console.page.fill("#try-input", "How do I get my money back?")
    console.page.press("#try-input", "Enter")  # the keyboard is enough
    expect(console.page.locator("#try-route")).to_have_text("billing")
    expect(console.page.locator("#message")).to_be_hidden()
    expect(console.page.locator("#try-top tbody tr")).to_have_count(3)
    expect(console.page.locator("#try-top tbody tr").nth(0)).to_contain_text("I need a refund")
    expect(console.page.locator("#try-top .bar .line")).to_have_count(3)  # the threshold lines
    expect(console.page.locator("#try-top .bar .passed-fill")).to_have_count(1)
    # The map places the last tried query.
    console.go("map")
    expect(console.page.locator("#map-info")).to_contain_text(
        "The last tried query is the black cross."
    )
    expect(console.page.locator("#map-legend button")).to_have_count(3)
    assert [e for e in console.errors if "status of 422" not in e] == []  # the refused one


def test_with_the_key_an_added_utterance_changes_the_route(console: Console, live: Service) -> None:
    expect = _expect()
    query = "Can I pay with a gift voucher at the door?"
    console.open("try")
    console.page.fill("#try-input", query)
    console.page.click("#try-form button")
    expect(console.page.locator("#try-route")).not_to_have_text("")
    before = console.page.locator("#try-route").text_content()
    assert before != "shipping"
    console.use_key()
    console.go("route/shipping")
    console.page.fill("#add-utterance-input", query)
    console.page.press("#add-utterance-input", "Enter")
    expect(console.page.locator("#utterance-list li")).to_have_count(4)
    expect(console.page.locator("#notice")).to_have_text("Utterance added.")
    assert query in live.router.get_route("shipping").utterances
    console.go("try")
    console.page.fill("#try-input", query)
    console.page.click("#try-form button")
    expect(console.page.locator("#try-route")).to_have_text("shipping")
    # The key went only in the Authorization header, never in a URL.
    changes = [r for r in console.requests if r[0] == "POST" and "/routes/" in r[1]]
    assert changes and all(h.get("authorization") == f"Bearer {KEY}" for _, _, h in changes)
    assert all(KEY not in url for _, url, _ in console.requests)
    assert console.page.evaluate("sessionStorage.length") == 1
    assert KEY not in console.page.url
    assert console.errors == []


def test_with_the_key_routes_and_utterances_are_edited(console: Console, live: Service) -> None:
    expect = _expect()
    page = console.page
    console.open()
    console.use_key()
    page.fill("#new-route-name", "returns")
    page.fill("#new-route-utterances", "I want to return a jacket\nHow do I send it back?")
    page.click("#new-route-form button[type=submit]")
    expect(page.locator("#route-title")).to_have_text("returns")
    expect(page.locator("#utterance-list li")).to_have_count(2)
    expect(page.locator("#notice")).to_have_text("Route returns created.")
    assert live.router.get_route("returns").utterances == [
        "I want to return a jacket",
        "How do I send it back?",
    ]
    # Edit an utterance from the keyboard: the new text replaces the old one.
    page.get_by_role("button", name="Edit: How do I send it back?").click()
    page.fill("#utterance-list input", "How do I send a parcel back?")
    page.press("#utterance-list input", "Enter")
    expect(page.locator("#notice")).to_have_text("Utterance changed.")
    expect(page.locator("#utterance-list .utterance").nth(1)).to_have_text(
        "How do I send a parcel back?"
    )
    # Focus stays in the route's controls (the list was rebuilt: it fell to the body).
    expect(page.locator("#add-utterance-input")).to_be_focused()
    page.get_by_role("button", name="Delete: I want to return a jacket").click()
    expect(page.locator("#utterance-list li")).to_have_count(1)
    expect(page.locator("#add-utterance-input")).to_be_focused()
    page.fill("#threshold-input", "0.7")
    page.click("#threshold-form button[type=submit]")
    expect(page.locator("#notice")).to_have_text("Threshold set.")
    expect(page.locator("#route-info dd").nth(1)).to_have_text("0.70")
    route = live.router.get_route("returns")
    assert route.utterances == ["How do I send a parcel back?"] and route.threshold == 0.7
    # Any precision the API takes: the field's step of 0.01 made the browser refuse
    # 0.7351 ("the two nearest valid values are 0.73 and 0.74") and send nothing.
    page.fill("#threshold-input", "0.7351")
    page.click("#threshold-form button[type=submit]")
    expect(page.locator("#route-info dd").nth(1)).to_have_text("0.74")
    assert live.router.get_route("returns").threshold == 0.7351
    page.click("#delete-route")
    page.click("#delete-route-confirm")
    expect(page.locator("#routes-table tbody tr")).to_have_count(3)
    expect(page.locator("#notice")).to_have_text("Route returns deleted.")
    expect(page.locator("#routes-heading")).to_be_focused()
    assert "returns" not in live.router
    assert console.errors == []


def test_without_the_key_no_edit_controls_and_the_api_refuses(console: Console) -> None:
    expect = _expect()
    console.open("route/billing")
    expect(console.page.locator("#utterance-list li")).to_have_count(4)
    for selector in ("#add-utterance-form", "#threshold-form", "#delete-route-box"):
        expect(console.page.locator(selector)).to_be_hidden()
    expect(console.page.get_by_role("button", name="Delete")).to_have_count(0)
    expect(console.page.get_by_role("button", name="Edit")).to_have_count(0)
    console.go("routes")
    expect(console.page.locator("#new-route-form")).to_be_hidden()
    status = console.page.evaluate(
        """async () => (await fetch('../routes/billing/utterances', {method: 'POST',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({utterances: ['sneaky']})})).status"""
    )
    assert status == 401
    # A wrong key is refused and not kept.
    console.page.fill("#key-input", "wrong")
    console.page.click("#key-form button[type=submit]")
    expect(console.page.locator("#message")).to_have_text("The API key was refused.")
    assert console.page.evaluate("sessionStorage.length") == 0
    expect(console.page.locator("#new-route-form")).to_be_hidden()


def test_a_route_that_fails_to_load_leaves_no_controls_of_the_one_before(
    console: Console, live: Service
) -> None:
    # The title, utterances and edit controls of the route shown before stayed, and
    # "Add" or "Delete route" then acted on it.
    expect = _expect()
    page = console.page
    console.open("route/billing")
    console.use_key()
    expect(page.locator("#add-utterance-form")).to_be_visible()
    console.go("route/no-such-route")
    expect(page.locator("#message")).to_contain_text("404")
    expect(page.locator("#route-title")).to_have_text("")
    expect(page.locator("#utterance-list li")).to_have_count(0)
    for selector in ("#add-utterance-form", "#threshold-form", "#delete-route-box"):
        expect(page.locator(selector)).to_be_hidden()
    console.go("route/billing")
    expect(page.locator("#add-utterance-form")).to_be_visible()
    assert live.router.get_route("billing").utterances == BASE[0].utterances


def test_with_auth_reads_the_key_form_unlocks_the_page(
    browser: Any, tmp_path: Path, encoder: Encoder
) -> None:
    # Reads need the key: the overview's 401 left the page "Loading…" with the key
    # form hidden (only a loaded overview revealed it), so it could not be unlocked.
    expect = _expect()
    svc, _, storage = _service(tmp_path, encoder, api_key=KEY, auth_reads=True)
    context = browser.new_context()
    try:
        console = Console(context.new_page(), svc.url)
        console.open("routes")
        expect(console.page.locator("#key-form")).to_be_visible()
        expect(console.page.locator("#access-status")).to_have_text(
            "This service needs the API key to read: enter it."
        )
        console.use_key()  # the page renders its view again with the key
        expect(console.page.locator("#routes-table tbody tr")).to_have_count(len(BASE))
    finally:
        context.close()
        svc.stop()
        storage.close()


def test_a_read_only_service_with_auth_reads_unlocks_to_read_and_forgets_the_key(
    browser: Any, tmp_path: Path, encoder: Encoder
) -> None:
    # The key check refused every key on a read-only service (so the page stayed
    # blank), and once it took one "Forget key" was hidden (shown only with changes).
    expect = _expect()
    svc, _, storage = _service(tmp_path, encoder, api_key=KEY, auth_reads=True, read_only=True)
    context = browser.new_context()
    try:
        console = Console(context.new_page(), svc.url)
        console.open("routes")
        page = console.page
        expect(page.locator("#key-form")).to_be_visible()
        page.fill("#key-input", KEY)
        page.click("#key-form button[type=submit]")
        expect(page.locator("#access-status")).to_have_text(
            "Read-only service: route changes are disabled.", timeout=LIMIT_MS
        )
        expect(page.locator("#routes-table tbody tr")).to_have_count(len(BASE))
        assert page.locator(".edit:visible").count() == 0
        forget = page.locator("#key-forget")
        expect(forget).to_be_visible()
        forget.click()
        expect(page.locator("#key-form")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0
    finally:
        context.close()
        svc.stop()
        storage.close()


def test_route_text_is_escaped(console: Console, live: Service) -> None:
    expect = _expect()
    live.router.add_route(
        Route(name="<b>x</b>", utterances=[XSS, "<script>window.__xss=2</script>"])
    )
    console.open()
    expect(console.page.locator("#routes-table tbody tr")).to_have_count(4)
    expect(console.page.locator("#routes-table tbody tr").nth(3).locator("a")).to_have_text(
        "<b>x</b>"
    )
    console.page.click("text=<b>x</b>")
    console.wait("route")
    items = console.page.locator("#utterance-list li")
    expect(items).to_have_count(2)
    expect(items.nth(0)).to_have_text(XSS)
    assert console.page.locator("main img, main script, main b").count() == 0
    console.go("try")
    console.page.fill("#try-input", XSS)
    console.page.click("#try-form button")
    expect(console.page.locator("#try-route")).to_have_text("<b>x</b>")
    expect(console.page.locator("#try-top .nearest").first).to_contain_text(XSS)
    assert console.page.evaluate("window.__xss === undefined")
    assert console.dialogs == [] and console.errors == []


def test_an_evaluation_upload_shows_the_confusions(console: Console, live: Service) -> None:
    expect = _expect()
    rows = [
        {"text": "I was charged twice on my card", "label": "tech"},
        {"text": "My parcel has not arrived", "label": "shipping"},
        {"text": "What is the capital of Peru?", "label": None},
    ]
    data = "\n".join(json.dumps(r) for r in rows).encode()
    console.open("evaluate")
    console.use_key()
    console.page.set_input_files(
        "#eval-file", files=[{"name": "val.jsonl", "mimeType": "application/json", "buffer": data}]
    )
    console.page.click("#eval-form button[type=submit]")
    expect(console.page.locator("#confused-pairs li").first).to_have_text("tech → billing: 1")
    expect(console.page.locator("#eval-figures")).to_contain_text("In-scope accuracy")
    misrouted = console.page.locator("#misrouted tbody tr")
    expect(misrouted.first).to_contain_text("I was charged twice on my card")
    console.page.get_by_role("button", name="Add to tech").click()
    expect(console.page.get_by_role("button", name="Added to tech")).to_be_disabled()
    assert "I was charged twice on my card" in live.router.get_route("tech").utterances
    assert console.errors == []


def test_large_answers_are_drawn_or_said_to_be_cut(console: Console) -> None:
    # The API's answers, as large as a big store makes them (served by the page's own
    # interception: encoding that many utterances here would take hours). The map's
    # Math.min(...xs) threw "Maximum call stack size exceeded" past about 125,000
    # points; a misrouted list cut at the API's 500 rows did not say so.
    expect = _expect()
    n = 200_000
    points = {
        "routes": ["a", "b"],
        "x": [i / n for i in range(n)],
        "y": [(i % 997) / 997 for i in range(n)],
        "route": [i % 2 for i in range(n)],
        "texts": None,
        "explained": [0.5, 0.25],
        "query": None,
        "closest_pairs": [],
    }
    misrouted = [
        {"text": f"row {i}", "label": None, "predicted": "billing", "score": 0.9}
        for i in range(500)
    ]
    report = {
        "rows": 600,
        "in_scope": 0,
        "out_of_scope": 600,
        "in_scope_accuracy": None,
        "oos_recall": 0.0,
        "accuracy": 0.0,
        "macro_f1": 0.0,
        "confused_pairs": [{"label": None, "predicted": "billing", "count": 600}],
        "misrouted_total": 600,
        "misrouted": misrouted,
    }
    answers = {"api/map": json.dumps(points), "api/evaluate": json.dumps(report)}

    def fulfil(route: Any) -> None:
        path = next(p for p in answers if route.request.url.endswith(p))
        route.fulfill(status=200, content_type="application/json", body=answers[path])

    console.page.route("**/console/api/map", fulfil)
    console.page.route("**/console/api/evaluate", fulfil)
    console.open("map")
    expect(console.page.locator("#map-info")).to_contain_text("200000 utterances of 2 routes")
    expect(console.page.locator("#message")).to_be_hidden()
    console.go("evaluate")
    console.page.fill("#eval-text", '{"text": "x", "label": null}')
    console.page.click("#eval-form button[type=submit]")
    expect(console.page.locator("#misrouted tbody tr")).to_have_count(500)
    expect(console.page.locator("#misrouted-shown")).to_have_text("Showing the first 500 of 600.")
    assert console.errors == []


def test_live_figures_and_a_narrow_screen(console: Console) -> None:
    expect = _expect()
    console.page.set_viewport_size({"width": 320, "height": 640})
    console.open("live")
    expect(console.page.locator("#live-queue")).to_have_text("0")
    for view in ("routes", "try", "evaluate", "map", "live", "route/billing"):
        console.go(view)
        width = console.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 320, (view, width)
    # Every control has a label.
    unlabelled = console.page.evaluate(
        """() => [...document.querySelectorAll('input, textarea, select')]
            .filter(e => e.labels.length === 0 && !e.getAttribute('aria-label')).map(e => e.id)"""
    )
    assert unlabelled == []
    assert console.errors == []
