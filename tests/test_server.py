"""The HTTP service in process, over httpx's ASGI transport, on the real model.

Each test runs the app's lifespan (the batching worker starts and stops with it)
around a router built on the session's real encoder and a real SQLite file.
Ordering is arranged with a gated encoder and events, never with sleeps.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import anyio
import anyio.to_thread
import httpx
import pytest
from encoder_doubles import CountingEncoder, GatedEncoder
from pydantic import SecretStr, ValidationError

import synaptoroute.router as router_module
from synaptoroute import AdaptiveRouter, Encoder, InvalidInputError, Route, SQLiteStorage
from synaptoroute.batching import text_cost
from synaptoroute.models import NEGATIVES_ROUTE
from synaptoroute.routes_file import (
    apply_routes,
    dump_routes,
    load_routes_file,
    parse_routes,
    render_routes,
)
from synaptoroute.server import ServerSettings, create_app
from synaptoroute.server import app as app_module
from synaptoroute.server.operations import SharedStoreCheck
from synaptoroute.server.schemas import MAX_BATCH_QUERIES
from synaptoroute.server.settings import is_loopback

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMIT_S = 30.0  # safety limit of every wait; reaching it fails the test

ROUTES = [
    Route(name="billing", utterances=["I need a refund", "Where is my receipt?"]),
    Route(name="tech", utterances=["The app crashes on start", "I can't log in"]),
    Route(name="greeting", utterances=["Hi there!", "Good morning"]),
]


@pytest.fixture
def gated(encoder: Encoder) -> GatedEncoder:
    return GatedEncoder(encoder)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "routes.db"


def make_router(encoder: Any, path: Path, **kwargs: Any) -> AdaptiveRouter:
    router = AdaptiveRouter(encoder, SQLiteStorage(path), **kwargs)
    router.add_routes(ROUTES)
    return router


class Service:
    """An app with its lifespan running, a client, and the router behind it."""

    def __init__(self, app: Any, client: httpx.AsyncClient, router: AdaptiveRouter) -> None:
        self.app = app
        self.client = client
        self.router = router


async def _service(
    router: AdaptiveRouter, settings: ServerSettings, *, raise_errors: bool = True
) -> AsyncIterator[Service]:
    app = create_app(settings, router=router)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_errors)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        yield Service(app, client, router)


@pytest.fixture
async def svc(encoder: Encoder, store_path: Path) -> AsyncIterator[Service]:
    router = make_router(encoder, store_path)
    async for s in _service(router, ServerSettings(api_key=SecretStr(KEY))):
        yield s
    router.close()


# -- queries -------------------------------------------------------------------------
async def test_route_answers_route_score_and_runner_up(svc: Service) -> None:
    r = await svc.client.post("/route", json={"query": "How do I get my money back?"})
    assert r.status_code == 200
    body = r.json()
    assert body["route"] == "billing"
    assert body["reason"] == "matched"
    assert body["runner_up"] in {"tech", "greeting"}
    assert body["score"] > body["runner_up_score"]
    assert body["nearest_utterance"] == "I need a refund"
    # Identical to the library's own answer.
    lib = svc.router.query("How do I get my money back?")
    assert body["score"] == pytest.approx(lib.score, abs=1e-6)


async def test_route_keeps_010_request_shape_and_ignores_extra_fields(svc: Service) -> None:
    r = await svc.client.post("/route", json={"query": "hello there", "client": "0.1.0"})
    assert r.status_code == 200
    assert r.json()["route"] == "greeting"


async def test_empty_query_is_no_route_not_an_error(svc: Service) -> None:
    r = await svc.client.post("/route", json={"query": "   "})
    assert r.status_code == 200
    assert r.json()["route"] is None
    assert r.json()["reason"] == "empty_query"


async def test_batch_answers_in_order_and_matches_sync_library(svc: Service) -> None:
    texts = ["refund please", "the app keeps crashing", "good morning!", "", "quantum physics"]
    r = await svc.client.post("/route/batch", json={"queries": texts})
    assert r.status_code == 200
    results = r.json()["results"]
    expected = svc.router.query_batch(texts)
    assert [x["route"] for x in results] == [m.name for m in expected]
    assert [x["route"] for x in results][:3] == ["billing", "tech", "greeting"]
    for got, want in zip(results, expected, strict=True):
        assert got["score"] == pytest.approx(want.score, abs=1e-5)


async def test_batch_over_the_limit_is_422(svc: Service) -> None:
    r = await svc.client.post("/route/batch", json={"queries": ["x"] * (MAX_BATCH_QUERIES + 1)})
    assert r.status_code == 422


# -- route management and hot reload --------------------------------------------------
async def test_put_route_is_visible_to_the_next_query_and_persisted(
    svc: Service, store_path: Path
) -> None:
    q = {"query": "what will the weather be tomorrow?"}
    assert (await svc.client.post("/route", json=q)).json()["route"] is None
    body = {"utterances": ["is it going to rain", "weather forecast for today"]}
    r = await svc.client.put("/routes/weather", json=body, headers=AUTH)
    assert r.status_code == 201
    assert r.json()["utterances"] == body["utterances"]
    assert (await svc.client.post("/route", json=q)).json()["route"] == "weather"

    # Replacing answers 200; the replaced content is what the next query sees.
    r = await svc.client.put(
        "/routes/weather", json={"utterances": ["play some jazz music"]}, headers=AUTH
    )
    assert r.status_code == 200
    assert (await svc.client.post("/route", json=q)).json()["route"] is None

    reopened = SQLiteStorage(store_path)
    try:
        stored = {item.route.name: item.route for item in reopened.load()}
    finally:
        reopened.close()
    assert stored["weather"].utterances == ["play some jazz music"]


async def test_a_write_answers_what_it_wrote_when_another_change_follows_at_once(
    svc: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A DELETE of the same route landing between a write and its answer made the
    # answer of a successful PUT, POST or threshold change a 404 (it read the route
    # back); and a PUT told 201 or 200 from a check made before the write. The
    # concurrent changes happen here inside the write, on the router's reentrant
    # lock, so the order is fixed.
    router = svc.router
    real_install = router_module.install_route
    follow: list[Callable[[], None]] = []

    def install_then_follow(*args: Any) -> None:
        real_install(*args)
        while follow:
            follow.pop()()

    monkeypatch.setattr(router_module, "install_route", install_then_follow)
    body = {"utterances": ["play some jazz music"]}
    for method, url, payload in (
        ("PUT", "/routes/music", body),
        ("POST", "/routes", {"name": "music", **body}),
    ):
        follow.append(lambda: router.delete_route("music"))
        r = await svc.client.request(method, url, json=payload, headers=AUTH)
        assert r.status_code == 201, (method, r.text)
        assert r.json()["utterances"] == body["utterances"] and "music" not in router
    real_set = router.set_threshold

    def set_then_delete(name: str, threshold: float | None) -> Route:
        changed = real_set(name, threshold)
        router.delete_route(name)
        return changed

    monkeypatch.setattr(router, "set_threshold", set_then_delete)
    r = await svc.client.put("/routes/tech/threshold", json={"threshold": 0.7}, headers=AUTH)
    assert r.status_code == 200 and r.json()["threshold"] == 0.7
    # Another writer creates the route after this PUT's check, before its write:
    # this PUT replaced it (200), it did not create it.
    real_vectors = router._vectors_for
    nested: list[bool] = []

    def another_put_first(routes: Any) -> Any:
        if not nested:
            nested.append(True)
            router.add_route(Route(name="radio", utterances=["turn on the radio"]))
        return real_vectors(routes)

    monkeypatch.setattr(router, "_vectors_for", another_put_first)
    r = await svc.client.put("/routes/radio", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert router.get_route("radio").utterances == body["utterances"]


async def test_list_get_create_delete(svc: Service) -> None:
    names = [r["name"] for r in (await svc.client.get("/routes")).json()]
    assert names == ["billing", "tech", "greeting"]
    r = await svc.client.get("/routes/tech")
    assert r.status_code == 200
    assert r.json()["utterances"] == ["The app crashes on start", "I can't log in"]

    new = {"name": "music", "utterances": ["play a song"], "metadata": {"team": "media"}}
    r = await svc.client.post("/routes", json=new, headers=AUTH)
    assert r.status_code == 201
    assert r.json()["metadata"] == {"team": "media"}
    r = await svc.client.post("/routes", json=new, headers=AUTH)
    assert r.status_code == 409

    q = {"query": "I can't log in to my account"}
    assert (await svc.client.post("/route", json=q)).json()["route"] == "tech"
    r = await svc.client.delete("/routes/tech", headers=AUTH)
    assert r.status_code == 204
    assert (await svc.client.get("/routes/tech")).status_code == 404
    assert (await svc.client.post("/route", json=q)).json()["route"] != "tech"
    assert "tech" not in svc.router


async def test_concurrent_identical_creates_answer_one_201_and_one_409(
    gated: GatedEncoder, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The "name taken" check ran outside the router's lock, and add_route takes a
    # route equal to the stored one as a no-op: two identical POST /routes at once
    # both answered 201. The second is held after its check, while the first is
    # encoding (under the lock), so both pass the check before either has created.
    router = make_router(gated, store_path)
    checks: list[object] = []
    contains = AdaptiveRouter.__contains__

    def recorded(self: AdaptiveRouter, name: object) -> bool:
        checks.append(name)
        return contains(self, name)

    monkeypatch.setattr(AdaptiveRouter, "__contains__", recorded)
    new = {"name": "music", "utterances": ["play a song"]}
    async for s in _service(router, ServerSettings()):
        gated.gate.clear()
        gated.entered.clear()
        first = asyncio.create_task(s.client.post("/routes", json=new))
        assert await anyio.to_thread.run_sync(gated.entered.wait, LIMIT_S)
        checks.clear()
        second = asyncio.create_task(s.client.post("/routes", json=new))

        async def checked() -> None:
            while "music" not in checks:
                await asyncio.sleep(0)

        await asyncio.wait_for(checked(), LIMIT_S)  # a hang bound, not a pace
        assert not contains(router, "music")  # the second passed the check
        gated.gate.set()
        answers = sorted([(await first).status_code, (await second).status_code])
        assert answers == [201, 409]
        assert router.get_route("music").utterances == ["play a song"]
    router.close()


async def test_an_utterance_the_model_reads_nothing_of_is_a_422_that_changes_nothing(
    svc: Service,
) -> None:
    # Only a BOM and zero-width spaces: the schema admits it (no portable pattern says
    # what a tokenizer deletes), the router refuses it, naming it, before any write.
    unread = "\ufeff\u200b"
    before = (await svc.client.get("/routes")).json()
    calls = [
        svc.client.post(
            "/routes", json={"name": "music", "utterances": ["play", unread]}, headers=AUTH
        ),
        svc.client.post(
            "/routes/billing/utterances", json={"utterances": ["refund", unread]}, headers=AUTH
        ),
        svc.client.post("/negatives", json={"texts": ["tell me a joke", unread]}, headers=AUTH),
    ]
    for call in calls:
        r = await call
        assert r.status_code == 422, r.text
        assert "is empty to the model" in r.text and repr(unread) in r.json()["detail"]
    assert (await svc.client.get("/routes")).json() == before
    assert (await svc.client.get("/negatives")).json()["negatives"] == []


async def test_add_and_delete_utterances(svc: Service) -> None:
    q = {"query": "my parcel never arrived"}
    assert (await svc.client.post("/route", json=q)).json()["route"] is None
    r = await svc.client.post(
        "/routes/billing/utterances",
        json={"utterances": ["my package did not arrive", "I need a refund"]},
        headers=AUTH,
    )
    assert r.status_code == 200
    assert r.json() == {"added": ["my package did not arrive"]}
    after = (await svc.client.post("/route", json=q)).json()
    assert after["route"] == "billing"
    assert after["nearest_utterance"] == "my package did not arrive"

    r = await svc.client.request(
        "DELETE",
        "/routes/billing/utterances",
        json={"utterances": ["my package did not arrive"]},
        headers=AUTH,
    )
    assert r.json() == {"deleted": 1}
    assert (await svc.client.post("/route", json=q)).json()["route"] is None


async def test_thresholds(svc: Service) -> None:
    q = {"query": "How do I get my money back?"}
    assert (await svc.client.post("/route", json=q)).json()["route"] == "billing"
    r = await svc.client.put("/routes/billing/threshold", json={"threshold": 0.99}, headers=AUTH)
    assert r.status_code == 200
    assert r.json()["threshold"] == 0.99
    body = (await svc.client.post("/route", json=q)).json()
    assert body["route"] is None
    assert body["reason"] == "below_threshold"
    assert body["threshold"] == 0.99
    await svc.client.put("/routes/billing/threshold", json={"threshold": None}, headers=AUTH)
    assert (await svc.client.post("/route", json=q)).json()["route"] == "billing"

    r = await svc.client.put("/threshold", json={"threshold": 0.95}, headers=AUTH)
    assert r.json() == {"threshold": 0.95}
    assert (await svc.client.get("/threshold")).json() == {"threshold": 0.95}
    assert (await svc.client.post("/route", json=q)).json()["route"] is None


async def test_unknown_route_is_404_everywhere(svc: Service) -> None:
    c = svc.client
    assert (await c.get("/routes/nope")).status_code == 404
    assert (await c.delete("/routes/nope", headers=AUTH)).status_code == 404
    r = await c.post("/routes/nope/utterances", json={"utterances": ["x"]}, headers=AUTH)
    assert r.status_code == 404
    r = await c.put("/routes/nope/threshold", json={"threshold": 0.3}, headers=AUTH)
    assert r.status_code == 404
    assert r.json() == {"detail": "unknown route: 'nope'"}


async def test_a_route_name_of_invalid_utf8_in_the_url_is_refused_not_replaced(
    svc: Service,
) -> None:
    # The server decodes percent-escapes with errors="replace": PUT /routes/%FF made a
    # route named "\ufffd", which /routes/%FE then read and deleted.
    c = svc.client
    body = {"utterances": ["play some jazz"]}
    for bad in ("%FF", "%ED%A0%80", "a%C3", "%FF/utterances", "%FF/threshold"):
        for method in ("PUT", "GET", "DELETE", "POST"):
            r = await c.request(method, f"/routes/{bad}", json=body, headers=AUTH)
            if r.status_code == 405:  # no such method on that path
                continue
            assert r.status_code == 422, (method, bad, r.text)
            assert r.json()["detail"][0]["loc"] == ["path", "name"]
            assert "unicode" in r.text
    assert svc.router.route_names == [r.name for r in ROUTES]
    r = await c.put("/routes/%EF%BF%BD", json=body, headers=AUTH)  # U+FFFD itself is fine
    assert r.status_code == 201 and r.json()["name"] == "\ufffd"
    assert (await c.get("/routes/%FE")).status_code == 422
    assert svc.router.get_route("\ufffd").utterances == body["utterances"]


# -- security ---------------------------------------------------------------------------
async def test_changes_need_the_bearer_token(svc: Service) -> None:
    body = {"utterances": ["hello"]}
    r = await svc.client.put("/routes/x", json=body)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    r = await svc.client.put("/routes/x", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = await svc.client.put("/routes/x", json=body, headers={"Authorization": f"Basic {KEY}"})
    assert r.status_code == 401
    for method, path in [("DELETE", "/routes/billing"), ("PUT", "/threshold")]:
        r = await svc.client.request(method, path, json={"threshold": 0.1})
        assert r.status_code == 401
    assert "x" not in svc.router
    assert "billing" in svc.router
    # Reading needs no token.
    assert (await svc.client.get("/routes")).status_code == 200
    assert (await svc.client.post("/route", json={"query": "hi"})).status_code == 200


async def test_read_only_refuses_every_change(encoder: Encoder, store_path: Path) -> None:
    router = make_router(encoder, store_path)
    async for s in _service(router, ServerSettings(read_only=True, api_key=SecretStr(KEY))):
        r = await s.client.put("/routes/x", json={"utterances": ["a"]}, headers=AUTH)
        assert r.status_code == 403
        assert (await s.client.delete("/routes/billing", headers=AUTH)).status_code == 403
        assert (await s.client.post("/route", json={"query": "hi"})).status_code == 200
    assert router.route_names == ["billing", "tech", "greeting"]
    router.close()


async def test_read_only_with_guarded_reads_refuses_no_read(
    encoder: Encoder, store_path: Path
) -> None:
    # The console's reads sent by POST were taken for changes before their body was
    # read: a malformed one got 403 "route changes are disabled", counted as such.
    router = make_router(encoder, store_path)
    settings = ServerSettings(read_only=True, auth_reads=True, api_key=SecretStr(KEY))
    async for s in _service(router, settings):
        for path in ("/console/api/try", "/console/api/map"):
            bad = await s.client.post(path, json={"query": "hi", "bogus": 1}, headers=AUTH)
            assert bad.status_code == 422, path
            json_type = {**AUTH, "content-type": "application/json"}
            broken = await s.client.post(path, content=b"garbage{", headers=json_type)
            assert broken.status_code == 422, path
            assert (await s.client.post(path, json={"query": "hi"})).status_code == 401
            assert (await s.client.post(path, json={"query": "hi"}, headers=AUTH)).is_success
        r = await s.client.put("/routes/x", json={"utterances": ["a"]}, headers=AUTH)
        assert r.status_code == 403
        # HEAD, answered as GET, takes GET's key check.
        for path in ("/routes", "/routes/billing", "/console/api/overview"):
            head = await s.client.head(path)
            assert head.status_code == 401 and head.content == b"", path
            head = await s.client.head(path, headers=AUTH)
            get = await s.client.get(path, headers=AUTH)
            assert head.status_code == get.status_code == 200 and head.content == b"", path
            assert head.headers["content-length"] == str(len(get.content)), path
        metrics = (await s.client.get("/metrics")).text
        assert 'synaptoroute_rejections_total{reason="read_only"} 1\n' in metrics
    router.close()


async def test_loopback_without_key_allows_changes(encoder: Encoder, store_path: Path) -> None:
    router = make_router(encoder, store_path)
    async for s in _service(router, ServerSettings()):
        r = await s.client.put("/routes/x", json={"utterances": ["a"]})
        assert r.status_code == 201
    router.close()


def test_refuses_exposed_host_with_changes_and_no_key() -> None:
    with pytest.raises(InvalidInputError, match="SYNAPTOROUTE_API_KEY"):
        ServerSettings(host="0.0.0.0").check_safe()
    with pytest.raises(InvalidInputError):
        ServerSettings(host="example.internal").check_safe()
    with pytest.raises(InvalidInputError, match="empty"):
        ServerSettings(host="127.0.0.1", api_key=SecretStr("")).check_safe()
    ServerSettings(host="0.0.0.0", api_key=SecretStr("k")).check_safe()
    ServerSettings(host="0.0.0.0", read_only=True).check_safe()
    ServerSettings(host="::1").check_safe()


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize(
    "field",
    [
        "drain_timeout",
        "request_timeout",
        "max_wait_ms",
        "memory_trim_interval",
        "rate_limit",
        "store_poll_interval",
    ],
)
def test_float_settings_refuse_inf_and_nan(field: str, value: float) -> None:
    # --drain-timeout inf passed (nan did not) and crashed start-up with OverflowError
    # (uvicorn takes whole seconds); no limit means "for ever" by inf.
    with pytest.raises(ValueError, match=f"(?s){field}.*finite number"):
        ServerSettings(**{field: value})


def test_serve_refuses_an_infinite_drain_timeout_as_bad_input(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    from synaptoroute.cli import EXIT_BAD_INPUT, main

    code = main(["serve", "--store", str(store_path), "--drain-timeout", "inf"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, err
    assert "--drain-timeout: Input should be a finite number" in err
    assert not store_path.exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_serve_refuses_a_store_poll_interval_that_is_no_duration(
    capsys: pytest.CaptureFixture[str], store_path: Path, value: str
) -> None:
    from synaptoroute.cli import EXIT_BAD_INPUT, main

    code = main(["serve", "--store", str(store_path), "--store-poll-interval", value])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, err
    assert "--store-poll-interval: Input should be" in err
    assert not store_path.exists()


@pytest.mark.parametrize("value", ["", "  "])
def test_a_set_but_blank_key_is_refused_not_taken_as_none(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # SYNAPTOROUTE_API_KEY= (a deploy whose secret did not arrive) read as unset would
    # serve route changes to anyone on loopback; it is refused wherever it is read.
    monkeypatch.setenv("SYNAPTOROUTE_API_KEY", value)
    settings = ServerSettings.from_env()
    assert settings.api_key is not None
    with pytest.raises(InvalidInputError, match="empty"):
        settings.check_safe()
    with pytest.raises(InvalidInputError, match="empty"):
        create_app()
    with pytest.raises(InvalidInputError, match="empty"):
        create_app(ServerSettings(api_key=SecretStr(value)))


@pytest.mark.parametrize("value", ["clé-ключ", "two words", "tab\tkey"])
def test_a_key_no_client_could_send_is_refused(value: str) -> None:
    # A header carries bytes that Starlette reads as latin-1: a non-ASCII key (or one
    # with spaces) could never be presented, and every change would be refused for good.
    with pytest.raises(InvalidInputError, match="printable ASCII"):
        create_app(ServerSettings(api_key=SecretStr(value)))
    ServerSettings(api_key=SecretStr("Az09-._~+/=!")).check_key()


def test_settings_print_no_secret() -> None:
    # repr() and str() are what a log prints: a PostgreSQL URL's password was in them
    # (the key was masked), and a key given as a number was echoed by the error.
    settings = ServerSettings(
        store="postgresql://pwuser:TopSecretPW@db:5432/routes?password=AlsoSecret",
        api_key=SecretStr("KeySecret"),
    )
    for shown in (repr(settings), str(settings)):
        assert "pwuser:***@db:5432/routes" in shown
        for secret in ("TopSecretPW", "AlsoSecret", "KeySecret"):
            assert secret not in shown
    assert settings.store is not None and "TopSecretPW" in settings.store  # the value as set
    assert (
        ServerSettings(store="routes.db").__repr__().startswith("ServerSettings(store='routes.db'")
    )
    with pytest.raises(ValidationError) as exc:
        ServerSettings(api_key=123456789)  # type: ignore[arg-type]
    assert "123456789" not in str(exc.value)
    # A server named so that no redaction knows it is refused, unshown.
    with pytest.raises(ValidationError, match="not shown") as exc:
        ServerSettings(store="postgresql+psycopg://pwuser:TopSecretPW@db/routes")
    assert "TopSecretPW" not in str(exc.value)


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNAPTOROUTE_API_KEY", "from-env")
    settings = ServerSettings.from_env(host="0.0.0.0")
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "from-env"
    assert "from-env" not in repr(settings)
    settings.check_safe()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.4", False),
        ("myhost", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# -- limits and bad input -------------------------------------------------------------
async def test_declared_large_body_is_413_before_reading(svc: Service) -> None:
    consumed = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal consumed
        for _ in range(64):
            consumed += 1
            yield b"x" * 65536

    r = await svc.client.post(
        "/route",
        content=body(),
        headers={"content-type": "application/json", "content-length": str(64 * 65536)},
    )
    assert r.status_code == 413
    assert consumed == 0


async def test_streamed_large_body_is_413_without_reading_the_rest(svc: Service) -> None:
    consumed = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal consumed
        for _ in range(64):  # 4 MiB, chunked: no Content-Length
            consumed += 1
            yield b"[" * 65536

    r = await svc.client.post(
        "/route", content=body(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert r.json() == {"detail": "request body larger than 1048576 bytes"}
    assert consumed <= 17  # stopped just past 1 MiB, not at 4 MiB


async def test_body_just_under_the_limit_is_read(svc: Service) -> None:
    text = "I need a refund. " * ((1 << 20) // 17 - 10)
    raw = json.dumps({"query": text}).encode()
    assert 1_000_000 < len(raw) < 1 << 20
    r = await svc.client.post("/route", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert r.json()["candidate"] == "billing"


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b"[" * 50_000,  # nesting deeper than the parser's recursion limit
        b"\xff\xfe\x00",
        b'{"query": 5}',
        b'{"query": null}',
        b'{"query": ["a"]}',
        b'{"text": "hello"}',
        b'["hello"]',
        b'{"query": "\\ud800"}',  # a lone surrogate cannot be tokenised
    ],
)
async def test_bad_json_or_shape_is_422_without_echo(svc: Service, raw: bytes) -> None:
    r = await svc.client.post("/route", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert "Traceback" not in r.text
    assert "input" not in r.json()["detail"][0] if isinstance(r.json()["detail"], list) else True


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/routes/x", b'{"utterances": ["  "]}'),
        ("/routes/x", b'{"utterances": "not a list"}'),
        ("/routes/x", b'{"utterances": ["a"], "threshold": 2}'),
        ("/routes/x", b'{"utterances": ["a"], "threshold": NaN}'),
        ("/routes/x", b'{"utterances": ["a"], "metadata": {"v": NaN}}'),
        ("/routes/x", b'{"utterances": ["a"], "colour": "red"}'),
        ("/routes/%20x", b'{"utterances": ["a"]}'),
        ("/routes/billing/threshold", b'{"threshold": "high"}'),
        ("/threshold", b'{"threshold": -3}'),
    ],
)
async def test_invalid_changes_are_422_and_change_nothing(
    svc: Service, path: str, raw: bytes
) -> None:
    before = dump_routes(svc.router)
    r = await svc.client.put(
        path, content=raw, headers={**AUTH, "content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert dump_routes(svc.router) == before


async def test_unknown_path_and_method(svc: Service) -> None:
    assert (await svc.client.get("/nope")).status_code == 404
    assert (await svc.client.get("/route")).status_code == 405


# -- overload, timeouts, failures ------------------------------------------------------
async def test_overload_is_503_with_retry_after(gated: GatedEncoder, store_path: Path) -> None:
    router = make_router(gated, store_path, max_queue_size=1)
    async for s in _service(router, ServerSettings(retry_after=3)):
        gated.gate.clear()
        gated.entered.clear()
        first = asyncio.create_task(s.client.post("/route", json={"query": "refund one"}))
        assert await anyio.to_thread.run_sync(gated.entered.wait, LIMIT_S)
        second = asyncio.create_task(s.client.post("/route", json={"query": "refund two"}))

        async def queued() -> None:
            while router.worker.queue_depth < 1:
                await asyncio.sleep(0)

        await asyncio.wait_for(queued(), LIMIT_S)
        r = await s.client.post("/route", json={"query": "refund three"})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "3"
        gated.gate.set()
        assert (await first).status_code == 200
        assert (await second).json()["route"] == "billing"
        metrics = (await s.client.get("/metrics")).text
        assert 'synaptoroute_rejections_total{reason="overloaded"} 1' in metrics
    router.close()


async def test_the_queue_refuses_by_cost_with_503(gated: GatedEncoder, store_path: Path) -> None:
    # Issue 18: the queue's bound counts what texts cost the model, so a few long
    # queries fill it while many short ones would not.
    long_query = "refund my order please " * 200  # past what the model reads
    router = make_router(gated, store_path, max_queue_cost=text_cost(long_query) + 100)
    async for s in _service(router, ServerSettings(retry_after=2)):
        gated.gate.clear()
        gated.entered.clear()
        first = asyncio.create_task(s.client.post("/route", json={"query": "refund one"}))
        assert await anyio.to_thread.run_sync(gated.entered.wait, LIMIT_S)
        second = asyncio.create_task(s.client.post("/route", json={"query": long_query}))

        async def queued() -> None:
            while router.worker.queue_depth < 1:
                await asyncio.sleep(0)

        await asyncio.wait_for(queued(), LIMIT_S)
        r = await s.client.post("/route", json={"query": long_query + " again"})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "2"
        metrics = (await s.client.get("/metrics")).text
        assert f"synaptoroute_queue_cost {text_cost(long_query)}\n" in metrics
        gated.gate.set()
        assert (await first).status_code == 200
        assert (await second).status_code == 200
        assert all(long_query + " again" not in call for call in gated.calls)
    router.close()


def test_max_queue_cost_reaches_the_router(store_path: Path) -> None:
    settings = ServerSettings(store=str(store_path), max_queue_cost=50_000)
    router = app_module.build_router(settings)
    try:
        assert router.worker.max_queue_cost == 50_000
    finally:
        router.close()
    with pytest.raises(ValueError, match="max_queue_cost"):
        ServerSettings(max_queue_cost=100)  # less than one text can cost


async def test_request_timeout_is_503(gated: GatedEncoder, store_path: Path) -> None:
    router = make_router(gated, store_path)
    async for s in _service(router, ServerSettings(request_timeout=0.05)):
        gated.gate.clear()
        r = await s.client.post("/route", json={"query": "refund"})
        assert r.status_code == 503
        assert "retry-after" in r.headers
        gated.gate.set()
    router.close()


async def test_internal_errors_never_reach_the_client(
    gated: GatedEncoder, store_path: Path
) -> None:
    router = make_router(gated, store_path)
    async for s in _service(router, ServerSettings(), raise_errors=False):
        gated.fail_with = RuntimeError("secret detail at /srv/model.onnx line 42")
        r = await s.client.post("/route", json={"query": "refund"})
        assert r.status_code == 500
        assert r.json() == {"detail": "internal server error"}
        r = await s.client.put("/routes/new", json={"utterances": ["a b c"]})
        assert r.status_code == 500
        assert "secret" not in r.text
        assert "Traceback" not in r.text
        assert "new" not in router  # a failed change left nothing behind
        gated.fail_with = None
        # The service keeps serving after a failure.
        assert (await s.client.post("/route", json={"query": "refund"})).status_code == 200
    router.close()


async def test_queries_keep_flowing_while_routes_change(svc: Service) -> None:
    texts = [f"refund number {i}" for i in range(120)]

    async def change(i: int) -> int:
        r = await svc.client.put(f"/routes/r{i}", json={"utterances": [f"topic {i}"]}, headers=AUTH)
        return r.status_code

    queries = [svc.client.post("/route", json={"query": t}) for t in texts]
    changes = [change(i) for i in range(12)]
    results = await asyncio.gather(*queries, *changes)
    answers, statuses = results[: len(texts)], results[len(texts) :]
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in answers)
    assert statuses == [201] * 12
    names = [r["name"] for r in (await svc.client.get("/routes")).json()]
    assert {f"r{i}" for i in range(12)} <= set(names)


# -- operations -------------------------------------------------------------------------
async def test_health_and_readiness(encoder: Encoder, store_path: Path) -> None:
    from synaptoroute.server.schemas import Readiness, StoreHealth

    router = make_router(encoder, store_path)
    app = create_app(ServerSettings(), router=router)
    transport = httpx.ASGITransport(app=app)
    # The probes' bodies are their own, 503 included (declared as ErrorBody before,
    # whose `detail` they lack): what the schema says is what comes.
    spec = app.openapi()["paths"]
    for path, model in (("/readyz", Readiness), ("/healthz/store", StoreHealth)):
        for status in ("200", "503"):
            body = spec[path]["get"]["responses"][status]["content"]["application/json"]
            assert body["schema"]["$ref"].endswith(f"/{model.__name__}"), (path, status)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        r = await c.get("/readyz")  # lifespan not started: the worker is not running
        assert r.status_code == 503
        assert Readiness.model_validate(r.json()).checks.started is False
        async with app.router.lifespan_context(app):
            r = await c.get("/readyz")
            assert r.status_code == 200
            assert r.json()["checks"] == {"started": True, "model": True, "worker": True}
            assert (await c.get("/healthz/store")).json() == {"store": "ok"}
            router.storage.close()  # the store goes away under the service
            # Queries are served from memory: still ready, so a database blip does not
            # take every replica out of the load balancer; the store check says it.
            assert (await c.get("/readyz")).status_code == 200
            assert (await c.post("/route", json={"query": "I need a refund"})).status_code == 200
            r = await c.get("/healthz/store")
            assert r.status_code == 503
            assert StoreHealth.model_validate(r.json()).store == "unavailable"
            assert "synaptoroute_store_up 0" in (await c.get("/metrics")).text


async def test_the_store_probe_says_when_the_file_was_replaced(
    encoder: Encoder, store_path: Path
) -> None:
    # The probe read through the connection still open on the old, unlinked file and
    # said "ok" (store_up 1) while every route change failed with 503 until a restart.
    router = make_router(encoder, store_path)
    app = create_app(ServerSettings(), router=router)
    transport = httpx.ASGITransport(app=app)
    client = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")
    async with client as c, app.router.lifespan_context(app):
        assert (await c.get("/healthz/store")).status_code == 200
        for suffix in ("", "-wal", "-shm"):
            moved = Path(f"{store_path}{suffix}")
            if moved.exists():
                moved.rename(f"{moved}.gone")
        r = await c.get("/healthz/store")
        assert r.status_code == 503 and r.json()["store"] == "unavailable"
        assert "synaptoroute_store_up 0" in (await c.get("/metrics")).text
        refused = await c.post("/routes/billing/utterances", json={"utterances": ["x"]})
        assert refused.status_code == 503
        assert (await c.post("/route", json={"query": "I need a refund"})).status_code == 200


def _hanging_store(
    router: AdaptiveRouter, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Event, list[int]]:
    """Make ``router``'s store check hang until the event is set; each call is listed."""
    held, calls = threading.Event(), []

    def hanging() -> Any:
        calls.append(1)
        assert held.wait(LIMIT_S)
        return None

    monkeypatch.setattr(router.storage, "model_info", hanging)
    return held, calls


async def test_store_checks_are_shared_while_one_runs(
    encoder: Encoder, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Against a store that hangs, each /healthz/store probe took a thread of the pool
    # that route changes need: monitors probing every second could take them all.
    router = make_router(encoder, store_path)
    other = make_router(encoder, store_path.with_name("other.db"))
    held, calls = _hanging_store(router, monkeypatch)
    check = SharedStoreCheck()
    probes = [asyncio.ensure_future(check(router)) for _ in range(20)]
    with anyio.fail_after(LIMIT_S):
        while check.waiting < 20:  # every call waits on the check in flight
            await asyncio.sleep(0.01)
    quitter = probes.pop()
    quitter.cancel()  # one that gives up leaves the others' check running
    # Another router (a lifespan restart) gets a check of its own, not the old one's.
    assert await check(other) is True
    held.set()
    assert await asyncio.gather(*probes) == [True] * 19
    assert calls == [1]
    assert await check(router) is True  # a later call checks again
    assert calls == [1, 1]
    router.close()
    other.close()


async def test_store_probes_answer_through_the_shared_check(
    encoder: Encoder, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = make_router(encoder, store_path)
    app = create_app(ServerSettings(), router=router)
    held, calls = _hanging_store(router, monkeypatch)
    in_flight = app.state.synaptoroute.metrics.in_flight
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c,
        app.router.lifespan_context(app),
    ):
        probes = [asyncio.ensure_future(c.get("/healthz/store")) for _ in range(20)]
        with anyio.fail_after(LIMIT_S):
            while in_flight.value < 20:
                await asyncio.sleep(0.01)
        held.set()
        answers = await asyncio.gather(*probes)
        assert [r.status_code for r in answers] == [200] * 20
        assert [r.json() for r in answers] == [{"store": "ok"}] * 20
        checks = len(calls)
        assert (await c.get("/healthz/store")).json() == {"store": "ok"}
        assert len(calls) == checks + 1
    router.close()


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


async def test_metrics_in_prometheus_text_format(svc: Service) -> None:
    await svc.client.post("/route", json={"query": "refund"})
    await svc.client.post("/route/batch", json={"queries": ["hi", "crash", "zzz qqq"]})
    await svc.client.put("/routes/x", json={"utterances": ["a"]})  # 401
    big = b'{"query": "' + b"a" * (2 << 20) + b'"}'
    await svc.client.post("/route", content=big)  # 413
    await svc.client.get("/openapi.json")  # a plain Starlette route: it was "unmatched"
    await svc.client.get("/no/such/page")
    await svc.client.head("/routes/billing")  # answered as GET, counted as HEAD
    r = await svc.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            assert line.split()[3] in {"counter", "gauge", "histogram"}
        elif line and not line.startswith("# HELP"):
            _name, value = line.rsplit(" ", 1)
            assert not math.isnan(float(value))
    s = _samples(text)
    assert s['synaptoroute_http_requests_total{method="POST",path="/route",status="200"}'] == 1
    assert (
        s['synaptoroute_http_requests_total{method="PUT",path="/routes/{name}",status="401"}'] == 1
    )
    assert (
        s['synaptoroute_http_requests_total{method="GET",path="/openapi.json",status="200"}'] == 1
    )
    assert s['synaptoroute_http_requests_total{method="GET",path="unmatched",status="404"}'] == 1
    assert (
        s['synaptoroute_http_requests_total{method="HEAD",path="/routes/{name}",status="200"}'] == 1
    )
    assert s['synaptoroute_rejections_total{reason="unauthorized"}'] == 1
    assert s['synaptoroute_rejections_total{reason="body_too_large"}'] == 1
    assert s['synaptoroute_queries_total{outcome="matched"}'] >= 2
    assert s['synaptoroute_queries_total{outcome="no_route"}'] >= 1
    assert s["synaptoroute_batch_size_count"] >= 2
    assert s["synaptoroute_batch_size_sum"] == 4  # one text, then a batch of three
    assert s["synaptoroute_queue_depth"] == 0
    assert s["synaptoroute_routes"] == 3
    assert s["synaptoroute_ready"] == 1
    assert s["synaptoroute_http_requests_in_flight"] == 1  # this scrape
    count = 'synaptoroute_http_request_duration_seconds_count{method="POST",path="/route"}'
    inf = 'synaptoroute_http_request_duration_seconds_bucket{method="POST",path="/route",le="+Inf"}'
    assert s[count] == s[inf] == 1


async def test_openapi_and_docs(svc: Service) -> None:
    spec = (await svc.client.get("/openapi.json")).json()
    assert {"/route", "/route/batch", "/routes", "/routes/{name}", "/metrics"} <= set(spec["paths"])
    assert spec["paths"]["/route"]["post"]["requestBody"]
    docs = await svc.client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    # Only an exact Swagger UI version, each file with an integrity hash, nothing else
    # from a third party (issue 18).
    scripts = re.findall(r"<script src=[^>]*>", docs.text)
    links = re.findall(r"<link [^>]*stylesheet[^>]*>", docs.text)
    assert len(scripts) == 1 and len(links) == 1
    for tag in (*scripts, *links):
        assert "swagger-ui-dist@5.17.14/" in tag
        assert re.search(r'integrity="sha384-[A-Za-z0-9+/]{64}"', tag), tag
        assert 'crossorigin="anonymous"' in tag
    assert "fastapi.tiangolo.com" not in docs.text
    assert (await svc.client.get("/redoc")).status_code == 404


# -- routes files ---------------------------------------------------------------------
def test_routes_file_yaml_and_json_agree(tmp_path: Path) -> None:
    yaml_text = """
threshold: 0.45
routes:
  - name: billing
    utterances: [I need a refund, Where is my receipt]
    threshold: 0.6
    metadata: {team: payments}
  - name: tech
    utterances:
      - The app crashes on start
"""
    (tmp_path / "r.yaml").write_text(yaml_text)
    doc = load_routes_file(tmp_path / "r.yaml")
    (tmp_path / "r.json").write_text(render_routes(doc.model_dump(), "json"))
    assert load_routes_file(tmp_path / "r.json") == doc
    assert doc.threshold == 0.45
    assert doc.routes[0].threshold == 0.6
    assert doc.routes[0].metadata == {"team": "payments"}
    # A bare list of routes is accepted too.
    assert parse_routes('[{"name": "a", "utterances": ["x"]}]', "json").routes[0].name == "a"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("routes: [{name: a, utterances: [x]}, {name: a}]", "'a' appears more than once"),
        ("routes: [{name: a, utterances: [x, '  ']}]", "routes.0.utterances"),
        ("routes: [{utterances: [x]}]", "routes.0.name"),
        ("routes: [{name: a, threshold: 3}]", "routes.0.threshold"),
        ("routes: [{name: a, threshold: true}]", "routes.0.threshold: .*not a bool"),
        ("threshold: yes", "threshold: .*not a bool"),
        ("routes: [{name: a, colour: red}]", "routes.0.colour"),
        ("thresold: 0.3", "thresold"),
        ("routes: [a, b", "not valid YAML"),
        (
            "routes: [{name: __negatives__, utterances: [x]}]",
            "reserved; texts that must route nowhere",
        ),
        ("negatives: [ok, '  ']", "negatives: .*utterance 1 is empty"),
    ],
)
def test_routes_file_errors_name_the_field(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_routes(text, "yaml", source="r.yaml")


@pytest.mark.parametrize(
    ("text", "fmt", "message"),
    [
        (
            '{"routes": [{"name": "s", "utterances": ["\\ud800"]}]}',
            "json",
            r"routes\.0 \('s'\): utterance",
        ),
        (
            '{"routes": [{"name": "s", "utterances": ["x"], "metadata": {"v": NaN}}]}',
            "json",
            "routes.0 .*NaN",
        ),
        ('{"negatives": ["ok", "\\udfff"]}', "json", "negatives.1: text must be valid Unicode"),
        ("routes: " + "[" * 5000 + "]" * 5000, "yaml", "not valid YAML: it nests too deeply"),
    ],
)
def test_routes_file_errors_the_store_would_raise_name_the_field(
    text: str, fmt: Literal["json", "yaml"], message: str
) -> None:
    # These passed the file check and failed later, without the field (for serve:
    # inside the service's start-up); a YAML nested too deeply was "not valid JSON".
    with pytest.raises(InvalidInputError, match=message):
        parse_routes(text, fmt, source="r")


def test_apply_routes_creates_replaces_and_skips(encoder: Encoder, store_path: Path) -> None:
    counting = CountingEncoder(encoder)
    router = make_router(counting, store_path)
    doc = parse_routes(
        json.dumps(
            {
                "threshold": 0.4,
                "routes": [
                    ROUTES[0].model_dump(),
                    {"name": "tech", "utterances": ["printer on fire"]},
                    {"name": "music", "utterances": ["play jazz"]},
                ],
                "negatives": ["tell me a joke", "tell me a joke "],
            }
        ),
        "json",
    )
    router.add_negatives(["what is the weather"])
    writes: list[str] = []
    for method in ("put_routes", "add_utterances"):  # the two ways the store takes texts
        real = getattr(router.storage, method)

        def counted(*args: Any, _real: Any = real, _name: str = method, **kwargs: Any) -> None:
            writes.append(_name)
            _real(*args, **kwargs)

        setattr(router.storage, method, counted)
    counting.texts.clear()
    report = apply_routes(router, doc)
    assert writes == ["put_routes"]  # routes and negative examples: one transaction
    # Only what is new is encoded; the stored negative keeps its vector.
    assert sorted(counting.texts) == ["play jazz", "printer on fire", "tell me a joke"]
    assert report.to_dict() == {
        "created": ["music"],
        "replaced": ["tech"],
        "unchanged": ["billing"],
        "threshold_changed": True,
        "negatives_added": ["tell me a joke"],
    }
    assert router.threshold == 0.4
    assert router.get_route("greeting")  # routes not in the file are kept
    assert router.negatives == ["what is the weather", "tell me a joke"]  # added, none removed
    assert dump_routes(router)["negatives"] == router.negatives
    again = apply_routes(router, doc)
    assert again.created == again.replaced == again.negatives_added == []
    router.close()


def test_apply_routes_keeps_negatives_added_while_it_runs(
    encoder: Encoder, store_path: Path
) -> None:
    # Another caller adds a negative example after apply_routes has read the file but
    # before its write: the merge with the held negatives happens under the router's
    # lock, inside the write, so that example is kept (it used to be overwritten).
    router = make_router(encoder, store_path)
    router.add_negatives(["what is the weather"])
    real_add_routes = router.add_routes

    def add_routes_after_a_concurrent_add(*args: Any, **kwargs: Any) -> list[str]:
        router.add_negatives(["who won the match"])
        return real_add_routes(*args, **kwargs)

    router.add_routes = add_routes_after_a_concurrent_add  # type: ignore[method-assign]
    doc = parse_routes(json.dumps({"negatives": ["tell me a joke", "who won the match"]}), "json")
    report = apply_routes(router, doc)
    assert report.negatives_added == ["tell me a joke"]
    assert router.negatives == ["what is the weather", "who won the match", "tell me a joke"]
    with pytest.raises(InvalidInputError, match="reserved for the negative examples"):
        real_add_routes([Route(name=NEGATIVES_ROUTE, utterances=["x"])], negatives=["y"])
    with pytest.raises(TypeError, match="not a str"):
        real_add_routes([], negatives="spam")
    router.close()


async def test_lifespan_applies_the_routes_file(
    encoder: Encoder, store_path: Path, tmp_path: Path
) -> None:
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text("routes:\n  - name: music\n    utterances: [play some jazz]\n")
    router = make_router(encoder, store_path)
    async for s in _service(router, ServerSettings(routes_file=str(routes_file))):
        r = await s.client.post("/route", json={"query": "put on some jazz music"})
        assert r.json()["route"] == "music"
    router.close()


async def test_a_routes_file_route_no_url_can_address_is_refused_at_start(
    encoder: Encoder, store_path: Path, tmp_path: Path
) -> None:
    # POST /routes refuses '..' (URLs drop the segment); a routes file loaded it, and
    # the console listed a route it could not open (its edits reached other URLs).
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text("routes:\n  - name: '..'\n    utterances: [play some jazz]\n")
    router = make_router(encoder, store_path)
    with pytest.raises(InvalidInputError, match=r"route '\.\.': a route name may not hold"):
        async for _ in _service(router, ServerSettings(routes_file=str(routes_file))):
            pass
    assert ".." not in router
    # Nor one ending in a sub-resource ('/utterances' reaches the route's utterances).
    routes_file.write_text("routes:\n  - name: a/utterances\n    utterances: [jazz]\n")
    with pytest.raises(InvalidInputError, match="may not end in /utterances"):
        async for _ in _service(router, ServerSettings(routes_file=str(routes_file))):
            pass
    router.close()


def test_public_names() -> None:
    import synaptoroute.server as server

    assert server.__all__ == [
        "API_KEY_ENV",
        "RoutesDocument",
        "ServerSettings",
        "ServiceState",
        "apply_routes",
        "create_app",
        "dump_routes",
        "load_routes_file",
        "run",
    ]
    for name in server.__all__:
        assert getattr(server, name) is not None
    with pytest.raises(AttributeError):
        _ = server.nothing_here


async def test_route_names_with_slashes_are_addressable(svc: Service) -> None:
    c = svc.client
    new = {"name": "billing/refunds", "utterances": ["I want my money back"]}
    assert (await c.post("/routes", json=new, headers=AUTH)).status_code == 201
    r = await c.get("/routes/billing/refunds")
    assert r.status_code == 200 and r.json()["name"] == "billing/refunds"
    assert (await c.get("/routes/billing%2Frefunds")).json()["name"] == "billing/refunds"
    r = await c.post(
        "/routes/billing/refunds/utterances", json={"utterances": ["refund please"]}, headers=AUTH
    )
    assert r.json() == {"added": ["refund please"]}
    r = await c.put("/routes/billing/refunds/threshold", json={"threshold": 0.7}, headers=AUTH)
    assert r.json()["name"] == "billing/refunds" and r.json()["threshold"] == 0.7
    body = {"utterances": ["I want my money back", "a refund"]}
    r = await c.put("/routes/billing/refunds", json=body, headers=AUTH)
    assert r.status_code == 200 and r.json()["utterances"] == body["utterances"]
    assert svc.router.get_route("billing").utterances == ROUTES[0].utterances  # untouched
    assert (await c.delete("/routes/billing/refunds", headers=AUTH)).status_code == 204
    assert "billing/refunds" not in svc.router and "billing" in svc.router
    assert (await c.get("/routes/")).status_code in (404, 307)  # never an empty name
    # "<name>/utterances" and "<name>/threshold" stay sub-resources: other methods are 405
    # and such names are refused, so no path means two things.
    r = await c.put("/routes/billing/utterances", json={"utterances": ["x"]}, headers=AUTH)
    assert r.status_code == 405 and "POST" in r.headers["allow"]
    assert (await c.get("/routes/billing/threshold")).status_code == 405
    bad = {"name": "billing/threshold", "utterances": ["x"]}
    r = await c.post("/routes", json=bad, headers=AUTH)
    assert r.status_code == 422 and "sub-resources" in r.text
    assert "billing/threshold" not in svc.router


@pytest.mark.parametrize("name", ["..", ".", "a/../billing", "a/./b", "../billing", "b/.."])
async def test_route_names_with_dot_segments_are_refused(svc: Service, name: str) -> None:
    # Clients and browsers (the console) drop "." and ".." from a URL's path: such a
    # route could not be reached, and "a/../billing" addressed route "billing".
    c = svc.client
    r = await c.post("/routes", json={"name": name, "utterances": ["x"]}, headers=AUTH)
    assert r.status_code == 422 and "'..'" in r.json()["detail"]
    # Percent-encoded dots pass the client and reach the server as written.
    escaped = quote(name, safe="").replace(".", "%2E")
    r = await c.put(f"/routes/{escaped}", json={"utterances": ["x"]}, headers=AUTH)
    assert r.status_code == 422 and "'..'" in r.json()["detail"]
    assert name not in svc.router
    assert svc.router.route_names == [r.name for r in ROUTES]
    ok = {"name": "a..b/.c/d.", "utterances": ["x"]}  # dots inside a segment are fine
    assert (await c.post("/routes", json=ok, headers=AUTH)).status_code == 201


async def test_lifespan_compiles_the_index_before_the_first_request(svc: Service) -> None:
    # The fixture added the routes (lazily); the lifespan's start() compiled them.
    assert svc.router.index_stats.compiles == 1
    assert svc.router._index._snapshot is not None


@pytest.mark.parametrize(("drain", "expected"), [(0.0, 0), (0.5, 1), (30.0, 30)])
def test_run_hands_uvicorn_the_drain_timeout_rounded_up(
    monkeypatch: pytest.MonkeyPatch, drain: float, expected: int
) -> None:
    import uvicorn

    seen: list[object] = []

    def capture(self: uvicorn.Server) -> None:
        seen.append(self.config.timeout_graceful_shutdown)

    monkeypatch.setattr(uvicorn.Server, "run", capture)
    monkeypatch.setattr(app_module, "_check_bindable", lambda host, port: None)
    from fastapi import FastAPI

    monkeypatch.setattr(app_module, "create_app", lambda settings: FastAPI())
    with pytest.raises(SystemExit):  # the captured server never started
        app_module.run(ServerSettings(drain_timeout=drain))
    assert seen == [expected]  # never None: uvicorn reads that as "wait for ever"


def test_the_route_name_convertors_never_replace_another_apps(tmp_path: Path) -> None:
    # Issue 15: Starlette's convertor registry is global; route names in paths are
    # matched by the routes themselves (server/paths.py), so nothing is registered
    # there, on import or when an app is built, and another application's stays.
    import subprocess
    import sys

    code = """
import json
from starlette.convertors import CONVERTOR_TYPES, StringConvertor, register_url_convertor
theirs = StringConvertor()
register_url_convertor("route_name", theirs)
before = sorted(CONVERTOR_TYPES)
import synaptoroute.server.app as app_module
on_import = sorted(k for k in CONVERTOR_TYPES if k.startswith("synaptoroute_"))
from synaptoroute.server import ServerSettings, create_app
create_app(ServerSettings(store=":memory:"))
print(json.dumps({
    "on_import": on_import,
    "after": sorted(k for k in CONVERTOR_TYPES if k.startswith("synaptoroute_")),
    "unchanged": sorted(CONVERTOR_TYPES) == before,
    "theirs_kept": CONVERTOR_TYPES["route_name"] is theirs,
}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout) == {
        "on_import": [],
        "after": [],
        "unchanged": True,
        "theirs_kept": True,
    }


async def test_building_and_serving_an_app_leaves_starlettes_convertors_alone(
    encoder: Encoder, store_path: Path
) -> None:
    from starlette.convertors import CONVERTOR_TYPES

    before = dict(CONVERTOR_TYPES)
    router = make_router(encoder, store_path)
    router.add_route(Route(name="billing/refunds", utterances=["I want my money back"]))
    try:
        async for s in _service(router, ServerSettings(api_key=SecretStr(KEY))):
            assert (await s.client.get("/routes/billing/refunds")).status_code == 200
            r = await s.client.get("/console/api/routes/billing/refunds")
            assert r.json()["name"] == "billing/refunds"
            r = await s.client.put("/routes/billing/refunds/utterances", headers=AUTH)
            assert r.status_code == 405  # a sub-resource, not a route of that name
    finally:
        router.close()
    assert sorted(CONVERTOR_TYPES) == sorted(before)
    assert all(CONVERTOR_TYPES[k] is v for k, v in before.items())


def test_routes_files_keep_their_0_2_0_import_path() -> None:
    import synaptoroute.routes_file as core
    import synaptoroute.server.routes_file as old
    from synaptoroute import server

    for name in old.__all__:
        assert getattr(old, name) is getattr(core, name)
    assert server.load_routes_file is core.load_routes_file
