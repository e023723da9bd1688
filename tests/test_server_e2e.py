"""End to end: ``synaptoroute serve`` in a subprocess on 127.0.0.1, driven over HTTP.

Covers routing, hot reload visible to the next query, auth refusals, limits, start-up
refusals, and SIGTERM draining a request in flight. Waits poll a condition (the
server's own readiness or metrics) under a safety limit that fails the test; no
assertion depends on timing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from waiting import wait_until

from synaptoroute import SQLiteStorage

# Integration tier: the real model (and, for some, a real server).
pytestmark = pytest.mark.model

HOST = "127.0.0.1"
KEY = "e2e-secret-token"
LIMIT_S = 120.0  # safety limit of every wait (model load on a busy 2-core machine)

ROUTES_YAML = """\
routes:
  - name: billing
    utterances: [I need a refund, Where is my receipt, Cancel my subscription]
  - name: tech
    utterances: [The app crashes on start, I can't log in, Reset my password]
"""


def synaptoroute_cmd() -> list[str]:
    """The installed console script, or the module when it is not installed."""
    script = Path(sys.executable).with_name("synaptoroute")
    return [str(script)] if script.exists() else [sys.executable, "-m", "synaptoroute.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], what: str, limit: float = LIMIT_S) -> None:
    wait_until(condition, what, limit)


class Server:
    """A ``synaptoroute serve`` process."""

    def __init__(self, tmp: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.store = tmp / "routes.db"
        routes = tmp / "routes.yaml"
        routes.write_text(ROUTES_YAML)
        self.log_path = tmp / "server.log"
        self.log = self.log_path.open("w")
        cmd = [
            *synaptoroute_cmd(),
            "serve",
            "--store",
            str(self.store),
            "--routes",
            str(routes),
            "--port",
            str(self.port),
            *extra,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        wait_for(self.ready, "the server to be ready")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"server exited with {self.proc.returncode}: {self.output()}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def output(self) -> str:
        return self.log_path.read_text()

    def metric(self, name: str) -> float | None:
        """The metric's value, 0 if the scrape lists it not, ``None`` if no scrape
        came back (a loaded server may take longer than the scrape's timeout)."""
        try:
            text = httpx.get(f"{self.url}/metrics", timeout=10).text
        except httpx.TransportError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    def stop(self, *, signal_it: bool = True) -> int:
        if signal_it and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=LIMIT_S)
        finally:
            self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("e2e"), env={"SYNAPTOROUTE_API_KEY": KEY})
    yield srv
    assert srv.stop() == 0


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def test_routes_a_query(client: httpx.Client) -> None:
    r = client.post("/route", json={"query": "how do I get my money back"})
    assert r.status_code == 200
    body = r.json()
    assert body["route"] == "billing"
    assert body["runner_up"] == "tech"
    assert body["score"] > body["runner_up_score"]


def test_hot_reload_is_visible_to_the_next_query(client: httpx.Client, server: Server) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    q = {"query": "will it rain tomorrow?"}
    assert client.post("/route", json=q).json()["route"] is None
    r = client.put("/routes/weather", json={"utterances": ["weather forecast"]}, headers=auth)
    assert r.status_code == 201
    r = client.post(
        "/routes/weather/utterances", json={"utterances": ["is it going to rain"]}, headers=auth
    )
    assert r.status_code == 200
    assert client.post("/route", json=q).json()["route"] == "weather"
    assert client.delete("/routes/weather", headers=auth).status_code == 204
    assert client.post("/route", json=q).json()["route"] is None


def test_auth_refusals(client: httpx.Client) -> None:
    body = {"utterances": ["anything"]}
    assert client.put("/routes/evil", json=body).status_code == 401
    wrong = {"Authorization": "Bearer e2e-secret-tokem"}
    assert client.put("/routes/evil", json=body, headers=wrong).status_code == 401
    assert client.delete("/routes/billing", headers=wrong).status_code == 401
    assert client.get("/routes/evil").status_code == 404
    assert client.get("/routes/billing").status_code == 200


def test_limits_and_bad_input(client: httpx.Client) -> None:
    big = b'{"query": "' + b"a" * (3 << 20) + b'"}'
    r = client.post("/route", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(48):
            yield b" " * 65536

    r = client.post("/route", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = client.post("/route", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert client.post("/route", json={"query": 42}).status_code == 422
    assert "Traceback" not in r.text
    # Invalid UTF-8 in a route name's percent-escapes (uvicorn decodes it to U+FFFD).
    auth = {"Authorization": f"Bearer {KEY}"}
    r = client.put("/routes/%FF?x=1", json={"utterances": ["jazz"]}, headers=auth)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "name"]
    # The service is unharmed.
    assert client.post("/route", json={"query": "refund"}).status_code == 200


def test_metrics_and_docs(client: httpx.Client) -> None:
    text = client.get("/metrics").text
    assert "synaptoroute_http_request_duration_seconds_bucket" in text
    assert "synaptoroute_queue_depth" in text
    assert client.get("/docs").status_code == 200


def test_every_get_resource_answers_head_like_get_without_a_body(
    server: Server, client: httpx.Client
) -> None:
    # Only the probes took HEAD: every other resource answered 405 (RFC 9110: a
    # server answering GET for a resource answers HEAD for it).
    name = client.get("/routes").json()[0]["name"]
    paths = ["/healthz", "/readyz", "/healthz/store", "/routes", f"/routes/{quote(name)}"]
    paths += ["/negatives", "/openapi.json", "/docs", "/metrics", "/routes/no-such-route"]
    for path in paths:
        got = client.get(path)
        with socket.create_connection((HOST, server.port), timeout=LIMIT_S) as s:
            s.sendall(f"HEAD {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):  # the server closes after answering
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        assert lines[0].startswith(f"HTTP/1.1 {got.status_code} "), (path, lines[0])
        assert body == b"", path
        assert headers["content-type"] == got.headers["content-type"], path
        if path != "/metrics":  # its counters moved between the two requests
            assert headers["content-length"] == str(len(got.content)), path
    assert client.get(f"/routes/{quote(name)}").status_code == 200
    assert client.get("/routes/no-such-route").status_code == 404
    # A resource that takes no GET takes no HEAD, and says which methods it takes.
    r = client.head("/route")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.content == b""
    r = client.put("/routes")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, POST"


def test_a_route_is_created_only_with_a_name_its_url_can_carry(client: httpx.Client) -> None:
    # A name too long for the request head (431) was created and could then never be
    # read, changed or deleted over HTTP.
    auth = {"Authorization": f"Bearer {KEY}"}
    room = 16 * 1024 - 4096  # the default --max-header-bytes, less the head's other parts
    longest = "日" * (room // len(quote("日")))
    too_long = longest + "日"
    r = client.post("/routes", json={"name": too_long, "utterances": ["x"]}, headers=auth)
    assert r.status_code == 422 and "--max-header-bytes" in r.json()["detail"]
    assert too_long not in [x["name"] for x in client.get("/routes").json()]
    r = client.post("/routes", json={"name": longest, "utterances": ["x"]}, headers=auth)
    assert r.status_code == 201
    path = "/routes/" + quote(longest)
    assert client.get(path).json()["name"] == longest
    assert client.post(path + "/utterances", json={"utterances": ["y"]}, headers=auth).is_success
    assert client.delete(path, headers=auth).status_code == 204
    # "/" counts as the console sends it (encodeURIComponent: %2F, 3 bytes), not as 1.
    slashed = "a/" * (room // 3) + "a"
    r = client.post("/routes", json={"name": slashed, "utterances": ["x"]}, headers=auth)
    assert r.status_code == 422 and "--max-header-bytes" in r.json()["detail"]
    slashed = "a/" * ((room - 1) // 4) + "a"
    r = client.post("/routes", json={"name": slashed, "utterances": ["x"]}, headers=auth)
    assert r.status_code == 201
    path = "/routes/" + quote(slashed, safe="")
    assert client.get(path).json()["name"] == slashed
    assert client.delete(path, headers=auth).status_code == 204


def test_refuses_exposed_host_without_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SYNAPTOROUTE_API_KEY"}
    out = subprocess.run(
        [*synaptoroute_cmd(), "serve", "--store", str(tmp_path / "x.db"), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=LIMIT_S,
    )
    assert out.returncode == 2
    assert "SYNAPTOROUTE_API_KEY" in out.stderr
    assert not (tmp_path / "x.db").exists()


def serve_until_it_fails(*args: str) -> subprocess.CompletedProcess[str]:
    """``synaptoroute serve ARGS`` run to its exit (each caller's case stops it)."""
    return subprocess.run(
        [*synaptoroute_cmd(), "serve", *args], capture_output=True, text=True, timeout=LIMIT_S
    )


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "routes.yaml",
            "routes:\n  - name: a\n    utterances: [ok, '   ']\n",
            "routes.0.utterances",
        ),
        # Valid JSON that the store refuses: it passed the file check and failed inside
        # uvicorn's start-up (exit code 3, "extra missing", and a traceback).
        (
            "routes.json",
            '{"routes": [{"name": "s", "utterances": ["ok", "\\ud800"]}]}',
            "routes.0 ('s'): utterance must be valid Unicode",
        ),
    ],
)
def test_refuses_a_bad_routes_file_before_it_listens(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    bad = tmp_path / name
    bad.write_text(content)
    out = serve_until_it_fails("--store", str(tmp_path / "x.db"), "--routes", str(bad))
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr


def test_start_up_failures_exit_as_documented_without_a_traceback(tmp_path: Path) -> None:
    # Each exited with uvicorn's 3 ("an optional extra is missing" in our table) and
    # a traceback: a store that is no database is bad input (2), a port that is
    # taken a failed operation (1).
    notdb = tmp_path / "notdb.db"
    notdb.write_text("not a database")
    out = serve_until_it_fails("--store", str(notdb), "--port", str(free_port()))
    assert out.returncode == 2, out.stderr
    assert "is not a readable SQLite database" in out.stderr and "Traceback" not in out.stderr
    assert notdb.read_text() == "not a database"
    # The port is bound first: a taken one failed after the start-up had made the
    # store and applied the routes file (a failed deployment changed the store).
    routes = tmp_path / "routes.yaml"
    routes.write_text("routes:\n  - name: greet\n    utterances: [hello there]\n")
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        out = serve_until_it_fails(
            "--store",
            str(tmp_path / "y.db"),
            "--routes",
            str(routes),
            "--port",
            str(taken.getsockname()[1]),
        )
    assert out.returncode == 1, out.stderr
    assert "address already in use" in out.stderr.lower()
    assert "Application startup complete" not in out.stderr
    assert not (tmp_path / "y.db").exists()


async def _partial_request(
    port: int, body: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    head = (
        f"POST /route HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    writer.write(head + body[:5])
    await writer.drain()
    return reader, writer


def test_a_forwarded_for_header_does_not_choose_the_rate_limit_bucket(tmp_path: Path) -> None:
    # uvicorn took X-Forwarded-For from any local peer: a local process, or a same-host
    # proxy passing the header on, got a fresh bucket per forged address.
    srv = Server(tmp_path, "--rate-limit", "0.001", "--rate-burst", "2")
    try:
        codes = [
            httpx.get(
                f"{srv.url}/threshold", headers={"X-Forwarded-For": f"10.0.0.{i}"}, timeout=60
            ).status_code
            for i in range(4)
        ]
        assert codes == [200, 200, 429, 429]
        assert "10.0.0." not in srv.log_path.read_text()  # nor does it reach the log
    finally:
        assert srv.stop() == 0


def test_sigterm_drains_requests_in_flight(tmp_path: Path) -> None:
    srv = Server(
        tmp_path,
        *("--max-batches-in-flight", "8"),  # all eight batches admitted
        # The partial request's body waits for the signal: bounded by LIMIT_S like every
        # other wait here, not by the 30 s default meant for slow clients.
        *("--body-timeout", str(LIMIT_S)),
    )
    auth_free_change = httpx.put(
        f"{srv.url}/routes/music", json={"utterances": ["play some jazz"]}, timeout=60
    )
    assert auth_free_change.status_code == 201  # loopback without a key accepts changes

    async def scenario() -> tuple[bytes, list[int]]:
        body = b'{"query": "please play some jazz music"}'
        # A request whose body is still arriving is in flight as far as the server knows.
        reader, writer = await _partial_request(srv.port, body)
        async with httpx.AsyncClient(base_url=srv.url, timeout=LIMIT_S) as c:
            texts = [f"I want a refund for order number {i}" for i in range(512)]
            batches = [
                asyncio.create_task(c.post("/route/batch", json={"queries": texts[i::8]}))
                for i in range(8)
            ]
            # In flight: the partial request, at least one batch, and the scrape itself.
            await asyncio.to_thread(
                wait_for,
                lambda: (srv.metric("synaptoroute_http_requests_in_flight") or 0) >= 3,
                "requests to be in flight",
            )
            srv.proc.send_signal(signal.SIGTERM)

            def refuses_new_connections() -> bool:
                try:
                    socket.create_connection((HOST, srv.port), timeout=1).close()
                except OSError:
                    return True
                return False

            await asyncio.to_thread(wait_for, refuses_new_connections, "shutdown to begin")
            writer.write(body[5:])  # finish the request after the signal
            await writer.drain()
            response = await asyncio.wait_for(reader.read(), LIMIT_S)
            writer.close()
            statuses = []
            for task in batches:
                try:
                    statuses.append((await task).status_code)
                except httpx.ConnectError:
                    statuses.append(-1)  # sent after the listener closed: never accepted
            return response, statuses

    response, statuses = asyncio.run(scenario())
    assert response.startswith(b"HTTP/1.1 200"), response
    assert b'"route":"music"' in response
    # Every batch that reached the server was answered in full; none was cut off.
    assert all(s in (200, -1) for s in statuses), statuses
    assert 200 in statuses
    # Wait for the exit the first SIGTERM began: a second one, sent while the drain
    # ends, can meet the default handler and kill the process (status -15).
    assert srv.stop(signal_it=False) == 0
    output = srv.output()
    assert "Traceback" not in output
    store = SQLiteStorage(srv.store)
    try:
        assert {item.route.name for item in store.load()} == {"billing", "tech", "music"}
    finally:
        store.close()
