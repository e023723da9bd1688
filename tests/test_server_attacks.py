"""The attacks of issue 18, each bounded, against a real uvicorn server on 127.0.0.1.

The server runs in a thread with the service's own protocol and limits (set low so
the attacks stay small). Each test checks that the attack is refused and that the
service still answers ``/healthz`` and ``/route`` to another client (a second
loopback address, 127.0.0.2). Waits are bounded by ``LIMIT_S`` and only guard
against hangs: what is asserted is always a state (closed, refused, answered), never
how long it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from encoder_doubles import FailingEncoder, GatedEncoder
from pydantic import SecretStr
from threaded_server import ThreadedServer

from synaptoroute import AdaptiveRouter, DecisionPolicy, Encoder, Route, SQLiteStorage
from synaptoroute.exceptions import InvalidInputError
from synaptoroute.server import ServerSettings, create_app
from synaptoroute.server.protocol import ConnectionLimits, guarded_protocol

HOST = "127.0.0.1"
OTHER = "127.0.0.2"  # a second client address on the same machine
LIMIT_S = 30.0
KEY = "attack-key"
ROUTES = [
    Route(name="billing", utterances=["I need a refund", "Where is my receipt?"]),
    Route(name="tech", utterances=["The app crashes on start", "I can't log in"]),
]


class LiveServer(ThreadedServer):
    """uvicorn serving the app in a thread, with the service's guarded protocol."""

    def __init__(self, router: AdaptiveRouter, settings: ServerSettings) -> None:
        super().__init__(
            create_app(settings, router=router),
            timeout_keep_alive=settings.keep_alive_timeout,
            http=guarded_protocol(ConnectionLimits.from_settings(settings)),
        )

    def connect(self, source: str = HOST) -> socket.socket:
        sock = socket.create_connection((HOST, self.port), LIMIT_S, (source, 0))
        sock.settimeout(LIMIT_S)
        return sock

    def client(self, source: str = OTHER) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=source)
        return httpx.Client(base_url=self.url, transport=transport, timeout=LIMIT_S)

    def still_serves(self, source: str = OTHER) -> None:
        with self.client(source) as c:
            assert c.get("/healthz").status_code == 200
            r = c.post("/route", json={"query": "I want my money back"})
            assert r.status_code == 200
            assert r.json()["route"] == "billing"


def closed_by_server(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by LIMIT_S)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


@pytest.fixture
def router(encoder: Encoder, tmp_path: Path) -> Iterator[AdaptiveRouter]:
    r = AdaptiveRouter(encoder, SQLiteStorage(tmp_path / "routes.db"))
    r.add_routes(ROUTES)
    yield r
    r.close()


def gated_router(
    encoder: Encoder, path: Path, **options: Any
) -> tuple[GatedEncoder, AdaptiveRouter]:
    """A router on ``path`` holding ROUTES, its encoder behind a gate."""
    gated = GatedEncoder(encoder)
    r = AdaptiveRouter(gated, SQLiteStorage(path), **options)
    r.add_routes(ROUTES)
    return gated, r


def serve(router: AdaptiveRouter, **values: Any) -> LiveServer:
    return LiveServer(router, ServerSettings(**values))


# -- connections -----------------------------------------------------------------------
def test_idle_connections_of_one_client_do_not_starve_others(router: AdaptiveRouter) -> None:
    # The idle connections within the limit must outlive the test: bound their header
    # timeout by LIMIT_S, not the 10 s default, so a slow machine cannot close them.
    srv = serve(router, max_connections_per_client=20, header_timeout=LIMIT_S)
    try:
        idle = [srv.connect() for _ in range(200)]
        srv.still_serves()
        # The connections over the client's limit are closed by the server.
        closed = sum(1 for s in idle[20:] if closed_by_server(s) == b"")
        assert closed == 180
        # One over the limit that does send a request is answered 503, not reset.
        extra = srv.connect()
        extra.sendall(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        answer = closed_by_server(extra)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"retry-after: 1" in answer.lower()
        for s in idle:
            s.close()
    finally:
        srv.stop()


def test_websocket_upgrade_requests_do_not_leak_their_clients_connection_count(
    router: AdaptiveRouter,
) -> None:
    # An upgraded connection left the guarded protocol without its connection_lost, so
    # each upgrade request kept a count of its client: after max_connections_per_client
    # of them, every request from that address got 503 for good.
    # keep_alive_timeout: older uvicorn keeps such a connection open after answering.
    srv = serve(router, max_connections_per_client=5, keep_alive_timeout=1)
    upgrade = (
        f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade, close\r\n"
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    ).encode()
    try:
        for _ in range(8):  # more than the client's limit: leaked counts would refuse it
            sock = srv.connect(HOST)
            sock.sendall(upgrade)
            answer = closed_by_server(sock)
            assert answer.startswith(b"HTTP/1.1 200"), answer  # plain HTTP, no switch
            sock.close()
        srv.still_serves(HOST)
    finally:
        srv.stop()


def test_over_the_total_connection_limit_is_refused_not_queued(router: AdaptiveRouter) -> None:
    srv = serve(router, max_connections=30, max_connections_per_client=1000, header_timeout=LIMIT_S)
    try:
        idle = [srv.connect() for _ in range(29)]
        with srv.client() as c:  # the thirtieth connection: still served
            assert c.get("/healthz").status_code == 200
            over = srv.connect(OTHER)
            over.sendall(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            assert closed_by_server(over).startswith(b"HTTP/1.1 503")
        for s in idle:
            s.close()
        srv.still_serves()
    finally:
        srv.stop()


def test_silent_and_slow_header_connections_are_closed(router: AdaptiveRouter) -> None:
    srv = serve(router, header_timeout=2.0)  # margin for a legitimate request on a busy runner
    try:
        silent = srv.connect()
        slow = srv.connect()
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")  # never ends
        assert closed_by_server(silent) == b""
        assert closed_by_server(slow) == b""
        srv.still_serves()
    finally:
        srv.stop()


def test_a_body_that_never_arrives_is_dropped(router: AdaptiveRouter) -> None:
    srv = serve(router, body_timeout=2.0)  # margin for a legitimate request on a busy runner
    try:
        stalled = srv.connect()
        stalled.sendall(
            b"POST /route HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100000\r\n\r\n{"query": "'
        )
        assert b"200 OK" not in closed_by_server(stalled)
        srv.still_serves()
    finally:
        srv.stop()


def test_a_client_that_never_reads_its_responses_gives_its_connection_back(
    router: AdaptiveRouter,
) -> None:
    # uvicorn waits for the socket to drain without a limit, so a connection whose
    # client read nothing of its responses outlived every timeout: a few addresses
    # held all of max_connections, and the probes got 503.
    srv = serve(router, body_timeout=2.0)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind((HOST, 0))
        sock.settimeout(LIMIT_S)
        sock.connect((HOST, srv.port))
        request = f"GET /openapi.json HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        with contextlib.suppress(OSError):  # the server may give up on it meanwhile
            sock.sendall(request * 300)  # responses of megabytes, never read
        assert _dropped(srv, HOST)  # counted, then dropped by the server
        sock.close()
        srv.still_serves()
    finally:
        srv.stop()


def _answering(size: int) -> Any:
    """An ASGI app answering every request with ``size`` bytes in one write (as a
    Starlette ``Response`` sends a ``GET /routes`` page)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = [(b"content-length", str(size).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x" * size})

    return app


def _dropped(srv: ThreadedServer, client: str) -> bool:
    """Wait (bounded by LIMIT_S) until the server counted a connection of ``client``,
    then until it counts none; whether it did."""
    state = srv.server.server_state

    def counted() -> int:
        return int(getattr(state, "synaptoroute_clients", {}).get(client, 0))

    deadline = time.monotonic() + LIMIT_S  # bounds a hang; the states are what count
    seen = False  # the server accepted it (its loop may not have yet)
    while (not seen or counted()) and time.monotonic() < deadline:
        seen = seen or counted() > 0
        time.sleep(0.05)
    return seen and not counted()


@pytest.mark.model
@pytest.mark.parametrize(("size", "requests"), [(60_000, 1), (5_000, 30)])
def test_an_unread_response_of_any_size_gives_its_connection_back(size: int, requests: int) -> None:
    # One response that leaves under the transport's 64 KiB high-water mark unsent
    # never paused writing, so no deadline ran, and uvicorn's keep-alive close waited
    # for ever on what the client did not read. Pipelined requests: the one running
    # when the connection was dropped wrote to the closed transport and logged a
    # traceback (uvicorn marks only the newest one disconnected).
    limits = ConnectionLimits(body_timeout=1.0, header_timeout=1.0)
    srv = ThreadedServer(_answering(size), http=guarded_protocol(limits), timeout_keep_alive=1)
    errors: list[logging.LogRecord] = []
    handler = logging.Handler()  # after uvicorn configured its loggers (it resets them)
    handler.emit = errors.append  # type: ignore[method-assign]
    logging.getLogger("uvicorn.error").addHandler(handler)
    # A small send buffer (accepted connections inherit it): the kernel takes a known
    # little of the response, as a loaded link would.
    srv.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(LIMIT_S)
        sock.connect((HOST, srv.port))
        with contextlib.suppress(OSError):
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode() * requests)
        assert _dropped(srv, HOST)
        sock.close()
    finally:
        srv.stop()
        logging.getLogger("uvicorn.error").removeHandler(handler)
    assert [r.getMessage() for r in errors if r.levelno >= logging.ERROR] == []


@pytest.mark.model
def test_a_slow_but_steady_reader_gets_its_whole_response() -> None:
    # The send deadline must not cut off a client that reads: one write fills the
    # buffer, which stays above the low-water mark until nearly all of it is read, so
    # a deadline armed once aborted a reader slower than size / body_timeout. The
    # kernel's send buffers as they are (megabytes on loopback): what it keeps unsent
    # is bounded, so the client's reading shows in the transport's buffer.
    srv = ThreadedServer(
        _answering(4 << 20), http=guarded_protocol(ConnectionLimits(body_timeout=8.0))
    )
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.settimeout(LIMIT_S)
        sock.connect((HOST, srv.port))
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(16384)):
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        body = len(rest)
        # At most about 230 KB/s: 18 s or more, well past one deadline (a deadline
        # armed once cuts it off at 8 s); only a stall of the reader of 8 s would lose
        # it, so a loaded machine does not fail it.
        while body < 4 << 20:
            chunk = sock.recv(16384)
            if not chunk:
                break
            body += len(chunk)
            time.sleep(0.07)
        sock.close()
        assert head.startswith(b"HTTP/1.1 200") and body == 4 << 20
    finally:
        srv.stop()


@pytest.mark.model
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_one_unsent_byte_pauses_writing(loop: str) -> None:
    # What arms the send deadline: a socket transport pauses at size > high, so the
    # limit must be 0 (1 let a last byte wait, unwatched, for ever).
    from synaptoroute.server.protocol import _send_in_view

    class Counting(asyncio.Protocol):
        paused = 0

        def pause_writing(self) -> None:
            self.paused += 1

    async def one_byte() -> tuple[int, int]:
        ours, theirs = socket.socketpair()  # theirs never reads
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ours.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:  # the kernel's buffers full: the transport keeps what follows
                ours.send(b"x" * 4096)
        running = asyncio.get_running_loop()
        transport, protocol = await running.connect_accepted_socket(Counting, ours)
        _send_in_view(transport)  # type: ignore[arg-type]
        transport.write(b"y")
        left = transport.get_write_buffer_size()
        transport.abort()
        theirs.close()
        return left, protocol.paused

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        left, paused = uvloop.run(one_byte())
    else:
        left, paused = asyncio.run(one_byte())
    assert (left, paused) == (1, 1)


def refused_before_8_mb(sock: socket.socket, piece: int) -> bool:
    """Send ``piece`` bytes of ``a`` at a time until the server closes the connection;
    whether it did so before 8 MB, answering 431 (or nothing, if it closed first)."""
    sent = 0
    try:
        while sent < 8 << 20:
            sock.sendall(b"a" * piece)
            sent += piece
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = closed_by_server(sock)
    return sent < 8 << 20 and (answer.startswith(b"HTTP/1.1 431") or answer == b"")


def test_chunk_trailers_are_bounded_like_headers(router: AdaptiveRouter) -> None:
    # After a chunked body, trailer bytes were neither header nor body bytes: the
    # parser held an unterminated trailer until the body timeout, however long.
    srv = serve(router, max_header_bytes=1024, max_body_bytes=1024, body_timeout=LIMIT_S)
    head = (
        b"POST /route HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    body = b'{"query": "I need a refund"}'
    try:
        sock = srv.connect()
        sock.sendall(head + b"%x\r\n%s\r\n" % (len(body), body) + b"0\r\nX-Trailer: ")
        assert refused_before_8_mb(sock, 1024)  # an unterminated trailer
        # Many small chunks are framing too, but an honest body in a few is served.
        ok = srv.connect()
        ok.sendall(head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        assert ok.recv(65536).startswith(b"HTTP/1.1 200")
        ok.close()
        srv.still_serves()
    finally:
        srv.stop()


def test_oversized_headers_get_431_without_being_buffered(router: AdaptiveRouter) -> None:
    srv = serve(router, max_header_bytes=16 * 1024)
    try:
        sock = srv.connect()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        assert refused_before_8_mb(sock, 65536)  # an unterminated header
        big = srv.connect()
        big.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
        )
        answer = closed_by_server(big)
        assert answer.startswith(b"HTTP/1.1 431")
        # The JSON error body every error has (it was plain text).
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"content-type: application/json" in head.lower()
        assert json.loads(body) == {"detail": "request headers too large"}
        ok = srv.connect()  # headers under the limit are served
        ok.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Ok: " + b"a" * 8_000 + b"\r\n\r\n"
        )
        assert ok.recv(65536).startswith(b"HTTP/1.1 200")
        ok.close()
        srv.still_serves()
    finally:
        srv.stop()


def test_a_request_the_parser_cannot_read_gets_the_json_error_body(
    router: AdaptiveRouter,
) -> None:
    # uvicorn answered these with a text/plain 400: a client reading every error's
    # JSON "detail" failed on them.
    head = b"POST /route HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    body = b'{"query": "refund"}'
    srv = serve(router)
    try:
        for request in (
            head + b"Content-Length: -1\r\n\r\n" + body,
            head + b"Content-Length: 19\r\nTransfer-Encoding: chunked\r\n\r\n" + body,
            head + b"Content-Length: 19\r\nContent-Length: 20\r\n\r\n" + body,
            head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + body,
            b"GET /routes?q=\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        ):
            sock = srv.connect()
            sock.sendall(request)
            answer = closed_by_server(sock)
            sock.close()
            status, _, rest = answer.partition(b"\r\n")
            assert status == b"HTTP/1.1 400 Bad Request", (request, answer)
            headers, _, payload = rest.partition(b"\r\n\r\n")
            assert b"content-type: application/json" in headers.lower(), answer
            assert json.loads(payload) == {"detail": "malformed HTTP request"}
        srv.still_serves()
    finally:
        srv.stop()


def test_a_pipelined_requests_headers_are_bounded_too(router: AdaptiveRouter) -> None:
    # A read holding the end of one request and the start of the next one's headers
    # counted none of them: an unterminated header pipelined behind a GET stayed
    # buffered, however long, until the header timeout.
    srv = serve(router, max_header_bytes=16 * 1024, header_timeout=LIMIT_S)
    try:
        sock = srv.connect()
        first = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        big = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 60_000
        sock.sendall(first + big)  # more than twice the limit, never terminated
        answer = closed_by_server(sock)  # the server closes it, nothing more is sent
        assert b"HTTP/1.1 431" in answer, answer[:200]
        # Behind many small requests too: each once widened the limit by a whole one.
        sock = srv.connect()
        small = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        sock.sendall(small * 300 + b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 40_000)
        answer = closed_by_server(sock)
        assert b"HTTP/1.1 431" in answer, answer[-200:]
        # An honest chunked body of tiny chunks (more framing than the limit) and, in
        # the same read, the start of the next request's head: the framing is no head.
        body = b'{"query": "refund"' + b" " * 4_000 + b"}"
        chunked = b"".join(b"1\r\n" + body[i : i + 1] + b"\r\n" for i in range(len(body)))
        sock = srv.connect()
        sock.sendall(
            b"POST /route HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        )
        answered = sock.recv(65536)  # the POST's answer: the first read was judged
        sock.sendall(b"Connection: close\r\n\r\n")
        answered += closed_by_server(sock)
        assert answered.count(b"HTTP/1.1 200") == 2, answered[:200]
        ok = srv.connect()  # honest pipelined requests are still served
        ok.sendall(first + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Ok: " + b"a" * 8_000)
        ok.sendall(b"\r\nConnection: close\r\n\r\n")
        assert closed_by_server(ok).count(b"HTTP/1.1 200") == 2
        srv.still_serves()
    finally:
        srv.stop()


def test_a_refusal_is_answered_after_the_pipelined_requests_before_it(
    router: AdaptiveRouter,
) -> None:
    # The 431 was written at once: a client read it as the answer of the request before
    # it, whose own answer never came (a route created by a POST it took as refused).
    srv = serve(router, max_header_bytes=16 * 1024, max_body_bytes=1024, header_timeout=LIMIT_S)
    body = b'{"utterances": ["play some jazz"]}'
    create = (
        b"PUT /routes/music HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    try:
        # A head past the limit behind it.
        sock = srv.connect()
        sock.sendall(
            create + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 60_000
        )
        answer = closed_by_server(sock)
        assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
        assert answer.count(b"HTTP/1.1 ") == 2
        assert b"HTTP/1.1 431" in answer
        assert "music" in [r.name for r in router.list_routes()]
        # So was a head the parser cannot read (two lengths): the change ran, and its
        # client read only "400 malformed HTTP request".
        sock = srv.connect()
        sock.sendall(
            create.replace(b"music", b"jazz") + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab"
        )
        answer = closed_by_server(sock)
        assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"201", b"400"], answer[:300]
        assert "jazz" in [r.name for r in router.list_routes()]
        srv.still_serves()
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("framing", "status"),
    [
        (b"".join(b"1;" + b"x" * 200 + b"\r\n \r\n" for _ in range(200)), b"431"),
        (b"zz\r\n", b"400"),  # a chunk size the parser cannot read: malformed
    ],
)
def test_a_refused_chunked_body_is_answered_after_the_request_before_it(
    encoder: Encoder, tmp_path: Path, framing: bytes, status: bytes
) -> None:
    # More framing (chunk extensions) than head and body limits allow, or framing the
    # parser cannot read, in a request queued behind one being answered: refused
    # after that answer, and never run.
    held, r = gated_router(encoder, tmp_path / "held.db")
    srv = serve(r, max_header_bytes=16 * 1024, max_body_bytes=1024, header_timeout=LIMIT_S)
    body = b'{"utterances": ["play some jazz"]}'
    try:
        held.gate.clear()
        held.entered.clear()
        sock = srv.connect()
        sock.sendall(
            b"PUT /routes/jazz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s"
            % (len(body), body)
            + b"PUT /routes/never HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        assert held.entered.wait(LIMIT_S)  # the first is being answered
        sock.sendall(framing)
        held.gate.set()
        answer = closed_by_server(sock)
        assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"201", status], answer[:300]
        assert [x.name for x in r.list_routes()][-1] == "jazz"
        srv.still_serves()
    finally:
        srv.stop()


def test_per_client_rate_limit(router: AdaptiveRouter) -> None:
    # A rate so low that no token comes back during the test: the fourth request is over.
    srv = serve(router, rate_limit=0.001, rate_burst=3, retry_after=1)
    try:
        with srv.client(HOST) as c:
            codes = [c.post("/route", json={"query": "refund"}).status_code for _ in range(4)]
            assert codes == [200, 200, 200, 429]
            refused = c.get("/routes")
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 1
            assert c.get("/healthz").status_code == 200  # probes are never limited
            assert c.get("/readyz").status_code == 200
        srv.still_serves()  # another client has its own bucket
    finally:
        srv.stop()


def test_a_rate_too_small_for_a_float_still_answers_429(router: AdaptiveRouter) -> None:
    # 1e-320 is above 0, as the setting requires, but the wait it gives is infinite:
    # math.ceil raised OverflowError and the client got a plain-text 500.
    srv = serve(router, rate_limit=1e-320, rate_burst=1)
    try:
        with srv.client(HOST) as c:
            assert c.get("/routes").status_code == 200
            refused = c.get("/routes")
            assert refused.status_code == 429
            assert "requests a second" in refused.json()["detail"]
            assert refused.headers["retry-after"] == "86400"  # a day at most
    finally:
        srv.stop()


def test_a_body_not_sent_as_json_is_415_and_changes_nothing(router: AdaptiveRouter) -> None:
    # A web page can send a POST with a text/plain body, or with none declared,
    # without the browser asking the service first (no CORS preflight). FastAPI
    # before its strict content type read a body without a type as JSON: a page
    # could add a route to a keyless service on the user's machine.
    srv = serve(router)
    body = json.dumps({"name": "evil", "utterances": ["hello"]}).encode()
    try:
        with srv.client(HOST) as c:
            for headers in ({}, {"content-type": "text/plain;charset=UTF-8"}):
                r = c.post("/routes", content=body, headers=headers)
                assert r.status_code == 415, headers
                assert "Content-Type: application/json" in r.json()["detail"]
            r = c.post(
                "/route", content=b'{"query": "refund"}', headers={"content-type": "text/plain"}
            )
            assert (r.status_code, r.json()["detail"]) == (
                415,
                "send the body as JSON with Content-Type: application/json (not 'text/plain')",
            )
            r = c.post("/negatives", content=b'{"texts": ["x"]}')
            assert r.status_code == 415
            r = c.post("/console/api/try", content=b'{"query": "refund"}')
            assert r.status_code == 415
            # JSON under its parameters or a +json type is JSON; an empty body is
            # missing (422), as before.
            for kind in ("application/json; charset=utf-8", "application/merge-patch+json"):
                r = c.post("/route", content=b'{"query": "refund"}', headers={"content-type": kind})
                assert r.json()["route"] == "billing", kind
            assert c.post("/route").status_code == 422
            # A compressed body was read as plain: gzipped JSON was "not valid JSON"
            # (422) and a plain body labelled gzip was served. Both 415 now.
            kind = {"content-type": "application/json"}
            for coding, content in (
                ("gzip", gzip.compress(body)),
                ("gzip", body),
                ("deflate", zlib.compress(body)),
                ("br, gzip", body),
            ):
                r = c.post("/routes", content=content, headers={**kind, "content-encoding": coding})
                assert r.status_code == 415, coding
                assert r.headers["accept-encoding"] == "identity"
                assert f"Content-Encoding {coding!r} is not taken" in r.json()["detail"]
            # Two header lines are one list: "identity" then "gzip" is gzip.
            two = [*kind.items(), ("content-encoding", "identity"), ("content-encoding", "gzip")]
            r = c.post("/routes", content=body, headers=two)
            assert r.status_code == 415
            assert "Content-Encoding 'identity, gzip'" in r.json()["detail"]
            plain = {**kind, "content-encoding": "Identity"}
            r = c.post("/route", content=b'{"query": "refund"}', headers=plain)
            assert r.json()["route"] == "billing"
            # A request without a body has nothing to decode, whatever it names.
            r = c.delete("/routes/nothing", headers={"content-encoding": "gzip"})
            assert r.status_code == 404
        assert router.route_names == ["billing", "tech"]
        assert router.negatives == []
    finally:
        srv.stop()
    # With a key: a client without the token learns nothing of its body, 401 first.
    srv = serve(router, api_key=SecretStr(KEY))
    try:
        with srv.client(HOST) as c:
            assert c.post("/routes", content=body).status_code == 401
            auth = {"authorization": f"Bearer {KEY}"}
            assert c.post("/routes", content=body, headers=auth).status_code == 415
    finally:
        srv.stop()


# -- errors ------------------------------------------------------------------------------
def test_an_unexpected_error_logs_one_traceback_and_keeps_the_connection(
    encoder: Encoder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = AdaptiveRouter(FailingEncoder(encoder), SQLiteStorage(tmp_path / "e.db"))
    r.add_routes(ROUTES)
    srv = serve(r)
    try:
        with caplog.at_level(logging.ERROR), srv.client(HOST) as c:
            first = c.post("/route", json={"query": "boom"})
            second = c.post("/route", json={"query": "boom again"})
            ok = c.post("/route", json={"query": "refund"})
        assert first.status_code == second.status_code == 500
        assert first.json() == {"detail": "internal server error"}
        assert ok.status_code == 200
        # One keep-alive connection carried all three requests.
        assert first.headers.get("connection") != "close"
        assert second.headers.get("connection") != "close"
        tracebacks = [rec for rec in caplog.records if rec.exc_info is not None]
        assert len(tracebacks) == 2
    finally:
        srv.stop()
        r.close()


def test_a_route_name_with_a_control_character_is_422(router: AdaptiveRouter) -> None:
    srv = serve(router)
    try:
        with srv.client(HOST) as c:
            for name in ("bad%09name", "multi%0Aline", "c1%C2%96"):
                r = c.put(f"/routes/{name}", json={"utterances": ["hello"]})
                assert r.status_code == 422, r.text
                assert r.json()["detail"][0]["loc"] == ["path", "name"]
            r = c.post("/routes", json={"name": "bad\tname", "utterances": ["hello"]})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "name"
            assert [route["name"] for route in c.get("/routes").json()] == ["billing", "tech"]
    finally:
        srv.stop()


def test_a_poisoned_change_never_commits_over_http(router: AdaptiveRouter) -> None:
    srv = serve(router)
    try:
        bodies = [
            b'{"utterances": ["a"], "metadata": {"k": "\\ud800"}}',
            b'{"utterances": ["a"], "metadata": {"\\udfff": 1}}',
            b'{"utterances": ["a"], "metadata": ' + b'{"k": ' * 300 + b"1" + b"}" * 301,
            b'{"utterances": ["a"], "description": "\\ud83d"}',
            b'{"utterances": ["a"], "metadata": {"k": "' + b"x" * 70_000 + b'"}}',
        ]
        with srv.client(HOST) as c:
            for body in bodies:
                r = c.put("/routes/x", content=body, headers={"content-type": "application/json"})
                assert r.status_code == 422, r.text
            listed = c.get("/routes")
            assert listed.status_code == 200
            assert [route["name"] for route in listed.json()] == ["billing", "tech"]
        srv.still_serves()
    finally:
        srv.stop()
    reopened = SQLiteStorage(router.storage.path)  # type: ignore[attr-defined]
    assert [s.route.name for s in reopened.load()] == ["billing", "tech"]
    reopened.close()


# -- in process: admission, pagination, hosts, auth --------------------------------------


async def _asgi(app: Any, host: str = HOST) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}")


def test_requests_whose_clients_hung_up_are_dropped_not_served(
    encoder: Encoder, tmp_path: Path
) -> None:
    # A client that hung up (a timeout, a retry) still had its query encoded and its
    # batch chunk after chunk, holding queue places and the batch slots live clients
    # then got 429 for. Cancelled now: its texts still queued never reach the model.
    import threading

    rec, r = gated_router(encoder, tmp_path / "gone.db")
    srv = serve(r, max_batches_in_flight=2)  # the batch and the evaluation
    try:
        rec.calls.clear()
        rec.gate.clear()
        rec.entered.clear()
        live: list[httpx.Response] = []
        holder = threading.Thread(
            target=lambda: live.append(
                srv.client().post("/route", json={"query": "my app crashes"})
            )
        )
        holder.start()
        assert rec.entered.wait(LIMIT_S), "the live query never reached the model"
        gone = [f"abandoned query {i}" for i in range(20)]
        bodies = [("/route", {"query": text}) for text in gone]
        bodies.append(("/route/batch", {"queries": [f"abandoned batch {i}" for i in range(5)]}))
        evaluated = [f"abandoned evaluation {i}" for i in range(5)]
        upload = "".join(json.dumps({"text": t, "label": "billing"}) + "\n" for t in evaluated)
        sent = [(path, "application/json", json.dumps(body)) for path, body in bodies]
        sent.append(("/console/api/evaluate", "application/x-ndjson", upload))
        for path, kind, text in sent:
            data = text.encode()
            sock = srv.connect()
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: {kind}"
                f"\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                + data
            )
            sock.close()
        # With the model held, every one of them is answered 499 (cancelled) and the
        # queue empties: only the hang-ups can do that (the wait is a bound, not a pace).
        wanted = (
            'path="/route",status="499"} 20\n',
            'path="/route/batch",status="499"} 1\n',
            'path="/console/api/evaluate",status="499"} 1\n',
        )
        deadline = time.monotonic() + LIMIT_S
        with srv.client() as c:
            while time.monotonic() < deadline:
                metrics = c.get("/metrics").text
                if all(w in metrics for w in wanted):
                    break
                time.sleep(0.05)
        assert all(w in metrics for w in wanted), metrics
        assert r.worker.queue_depth == 0
        rec.gate.set()
        holder.join(LIMIT_S)
        assert live and live[0].json()["route"] == "tech"
        with srv.client() as c:  # the gone batch and evaluation gave their slots back
            assert c.post("/route/batch", json={"queries": ["refund"]}).status_code == 200
        encoded = {text for call in rec.calls for text in call}
        assert not encoded & {*gone, *evaluated, *bodies[-1][1]["queries"]}  # type: ignore[arg-type]
    finally:
        rec.gate.set()
        srv.stop()
        r.close()


async def test_batch_cost_is_refused_at_once_and_single_queries_pass_between_chunks(
    encoder: Encoder, tmp_path: Path
) -> None:
    rec, r = gated_router(encoder, tmp_path / "b.db")
    settings = ServerSettings(max_batch_cost=4096, batch_chunk_cost=1024, max_batches_in_flight=1)
    app = create_app(settings, router=r)
    async with app.router.lifespan_context(app), await _asgi(app) as c:
        rec.calls.clear()
        # 10 texts of 1,000 characters cost more than 4,096: refused, nothing encoded.
        big = await c.post("/route/batch", json={"queries": ["refund " * 143] * 10})
        assert big.status_code == 413
        assert "costs" in big.json()["detail"]
        assert rec.calls == []
        # Four texts of ~700 characters: admitted, fed to the model one chunk at a time.
        texts = [f"{i} " + "refund please " * 50 for i in range(4)]
        rec.gate.clear()
        rec.entered.clear()
        batch = asyncio.create_task(c.post("/route/batch", json={"queries": texts}))
        assert await asyncio.to_thread(rec.entered.wait, LIMIT_S), "no chunk reached the model"
        busy = await c.post("/route/batch", json={"queries": ["hello"]})
        assert busy.status_code == 429
        assert "retry-after" in busy.headers
        single = asyncio.create_task(c.post("/route", json={"query": "my app crashes"}))

        async def queued() -> None:
            while r.worker.queue_depth < 1:
                await asyncio.sleep(0)

        await asyncio.wait_for(queued(), LIMIT_S)  # a hang bound, not a pace
        rec.gate.set()
        assert (await batch).status_code == 200
        assert (await single).json()["route"] == "tech"
        calls = [call for call in rec.calls if call]
        first_chunk = next(i for i, call in enumerate(calls) if texts[0] in call)
        single_call = next(i for i, call in enumerate(calls) if "my app crashes" in call)
        last_chunk = next(i for i, call in enumerate(calls) if texts[-1] in call)
        assert texts[-1] not in calls[first_chunk]  # the batch was cut into chunks
        assert first_chunk < single_call <= last_chunk  # the query did not wait for it all
    r.close()


@pytest.mark.model
async def test_batch_cost_is_what_the_routers_encoder_reads(tmp_path: Path) -> None:
    # An encoder reading 512 tokens charges a long text up to 8,192 characters: the
    # service judged /route/batch by whatever cap its caller remembered to pass.
    wide = Encoder(max_tokens=512)
    r = AdaptiveRouter(wide, SQLiteStorage(tmp_path / "w.db"))
    long = "refund " * 2000
    assert r.text_cost(long) == 8192 + 16 and r.text_cost("abc") == 3 + 16
    settings = ServerSettings(max_batch_cost=12_000)
    app = create_app(settings, router=r)
    async with app.router.lifespan_context(app), await _asgi(app) as c:
        # Two texts at the default model's cap (4,112 each) would fit; at this one's
        # (8,208 each) they cannot.
        refused = await c.post("/route/batch", json={"queries": [long, long]})
        assert refused.status_code == 413
        assert "costs 16416" in refused.json()["detail"]
    r.close()


@pytest.mark.parametrize(
    ("queue", "texts"),
    [
        ({"max_queue_size": 100}, [f"refund please {i}" for i in range(300)]),
        ({"max_queue_cost": 5000}, [f"{i} " + "x" * 2000 for i in range(3)]),
    ],
)
async def test_a_batch_is_cut_into_chunks_the_workers_queue_can_hold(
    encoder: Encoder, tmp_path: Path, queue: dict[str, int], texts: list[str]
) -> None:
    # Chunks were cut by batch_chunk_cost alone: a queue smaller than one chunk (300
    # short texts past --max-queue 100, two 2,000-character texts past a queue cost
    # of 5,000) refused a valid batch with 422 ("can never fit the queue").
    rec, r = gated_router(encoder, tmp_path / "q.db", **queue)
    app = create_app(ServerSettings(), router=r)
    async with app.router.lifespan_context(app), await _asgi(app) as c:
        rec.calls.clear()
        answer = await c.post("/route/batch", json={"queries": texts})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["results"]) == len(texts)
        encoded = [t for call in rec.calls for t in call]
        assert set(texts) <= set(encoded)
        assert all(len(call) <= 100 for call in rec.calls)
    r.close()


class _FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("spent", "status", "given"), [(40.0, 200, [100.0, 60.0, 20.0]), (50.0, 503, [100.0, 50.0])]
)
async def test_the_request_timeout_bounds_the_whole_batch_not_each_chunk(
    encoder: Encoder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spent: float,
    status: int,
    given: list[float],
) -> None:
    # Each chunk was given the whole --request-timeout, one chunk after the other: a
    # batch of n chunks could take n times it. One deadline now bounds the request,
    # each chunk gets what is left, and a chunk whose turn comes with nothing left
    # is a 503, like a query that timed out. A fake clock says how long each chunk
    # took: nothing here depends on how fast the machine is.
    rec, r = gated_router(encoder, tmp_path / "t.db")
    settings = ServerSettings(request_timeout=100.0, batch_chunk_cost=1024)
    app = create_app(settings, router=r)
    clock = _FakeClock()
    app.state.batch_admission.clock = clock
    timeouts: list[float | None] = []
    real = r.aquery_batch

    async def timed(texts: Any, *, timeout: float | None = None) -> Any:
        timeouts.append(timeout)
        answer = await real(texts, timeout=timeout)
        clock.now += spent  # what this chunk took
        return answer

    monkeypatch.setattr(r, "aquery_batch", timed)
    # Three texts of ~700 characters: one chunk each at a chunk cost of 1,024.
    texts = [f"{i} " + "refund please " * 50 for i in range(3)]
    async with app.router.lifespan_context(app), await _asgi(app) as c:
        rec.calls.clear()
        answer = await c.post("/route/batch", json={"queries": texts})
        assert answer.status_code == status, answer.text
        assert timeouts == pytest.approx(given)
        encoded = [t for call in rec.calls for t in call]
        if status == 503:
            assert "retry-after" in answer.headers
            assert texts[-1] not in encoded  # the last chunk was never queued
            metrics = (await c.get("/metrics")).text
            assert 'synaptoroute_rejections_total{reason="timeout"} 1' in metrics
        else:
            assert len(answer.json()["results"]) == 3
    r.close()


async def test_console_evaluations_are_admitted_and_chunked_like_batches(
    encoder: Encoder, tmp_path: Path
) -> None:
    # The console's evaluation queued slices of 256 rows, whatever they cost: an upload
    # of long rows got 422 ("can never fit the queue"), and it bypassed the batch
    # admission (a reader's uploads could fill the queue and delay /route).
    rec, r = gated_router(encoder, tmp_path / "e.db", max_queue_cost=5000)
    settings = ServerSettings(batch_chunk_cost=1024, max_batches_in_flight=1)
    app = create_app(settings, router=r)
    rows = [{"text": f"{i} " + "refund please " * 150, "label": "billing"} for i in range(3)]
    upload = "".join(json.dumps(row) + "\n" for row in rows).encode()
    texts = [str(row["text"]) for row in rows]
    async with app.router.lifespan_context(app), await _asgi(app) as c:
        rec.calls.clear()
        report = await c.post(
            "/console/api/evaluate",
            headers={"Content-Type": "application/x-ndjson"},
            content=upload,
        )
        assert report.status_code == 200, report.text
        assert report.json()["rows"] == 3
        # One row a chunk (each costs more than half of 1,024), never the whole upload.
        assert all(
            sum(t in call for t in texts) == 1 for call in rec.calls if set(call) & set(texts)
        )
        # It counts among the batches in flight: with one /route/batch being served,
        # an evaluation is refused at once with 429, like another batch.
        rec.gate.clear()
        rec.entered.clear()
        batch = asyncio.create_task(c.post("/route/batch", json={"queries": ["a refund"]}))
        assert await asyncio.to_thread(rec.entered.wait, LIMIT_S), "the batch never arrived"
        busy = await c.post(
            "/console/api/evaluate",
            headers={"Content-Type": "application/x-ndjson"},
            content=upload,
        )
        assert busy.status_code == 429
        assert "retry-after" in busy.headers
        rec.gate.set()
        assert (await batch).status_code == 200
    r.close()


async def test_routes_are_paginated(encoder: Encoder, tmp_path: Path) -> None:
    r = AdaptiveRouter(encoder, SQLiteStorage(tmp_path / "p.db"))
    r.add_routes([Route(name=f"r{i}", utterances=[f"topic {i}"]) for i in range(5)])
    app = create_app(ServerSettings(routes_page_size=2), router=r)
    async with app.router.lifespan_context(app), await _asgi(app) as c:
        names: list[str] = []
        url: str | None = "/routes"
        pages = 0
        while url is not None and pages < 10:
            page = await c.get(url)
            assert page.status_code == 200
            assert page.headers["x-total-count"] == "5"
            assert len(page.json()) <= 2
            names += [route["name"] for route in page.json()]
            link = page.headers.get("link")
            url = link[1 : link.index(">")] if link else None
            pages += 1
        assert names == [f"r{i}" for i in range(5)]
        assert pages == 3
        assert [x["name"] for x in (await c.get("/routes?offset=4&limit=100")).json()] == ["r4"]
        assert (await c.get("/routes?limit=0")).status_code == 422
    r.close()


async def test_a_mounted_service_runs_under_its_prefix(router: AdaptiveRouter) -> None:
    # Mounted in a user's app (docs/server.md, "Inside your own application"): the
    # probes and /metrics under the prefix got 421 by the pod's address and 429 from
    # the rate limit (their exemptions compared the full path), /docs loaded the
    # parent's /openapi.json, and /console redirected out of the prefix.
    from fastapi import FastAPI

    service = create_app(ServerSettings(rate_limit=0.01, rate_burst=2), router=router)
    parent = FastAPI()
    parent.mount("/router", service)
    async with (
        service.router.lifespan_context(service),
        await _asgi(parent, "10.244.1.7:8000") as c,
    ):
        assert (await c.get("/router/metrics")).status_code == 200  # one of the 2
        for _ in range(3):  # past the burst: the probes are never limited
            for probe in ("/healthz", "/readyz", "/healthz/store"):
                assert (await c.get(f"/router{probe}")).status_code == 200, probe
        assert (await c.get("/router/routes")).status_code == 421
    service = create_app(ServerSettings(), router=router)
    parent = FastAPI()
    parent.mount("/router", service)
    async with service.router.lifespan_context(service), await _asgi(parent) as c:
        docs = (await c.get("/router/docs")).text
        assert re.findall(r"url: '([^']*)'", docs) == ["/router/openapi.json"]
        moved = await c.get("/router/console")
        assert moved.status_code == 307
        target = moved.url.join(moved.headers["location"])
        assert target.path == "/router/console/"
        assert (await c.get(target)).status_code == 200
    # uvicorn's --root-path: the path keeps the prefix, as a mount's does.
    app = create_app(ServerSettings(), router=router)
    transport = httpx.ASGITransport(app=app, root_path="/api")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://10.244.1.7:8000") as c,
    ):
        assert (await c.get("/api/healthz")).status_code == 200
        assert (await c.get("/api/metrics")).status_code == 200
        assert (await c.get("/api/routes")).status_code == 421


async def test_a_service_whose_lifespan_never_ran_says_so(router: AdaptiveRouter) -> None:
    # Starlette runs no lifespan of a mounted app: every request got "starting or
    # stopping; retry later" (with Retry-After) for ever, and a router given as
    # router= was served with /readyz at 503 (its worker started by the first query).
    from fastapi import FastAPI

    service = create_app(ServerSettings(), router=router)
    parent = FastAPI()
    parent.mount("/router", service)
    async with await _asgi(parent) as c:
        r = await c.post("/router/route", json={"query": "I need a refund"})
        assert r.status_code == 503 and "retry-after" not in r.headers
        assert "lifespan has not run" in r.json()["detail"]
        assert (await c.get("/router/routes")).status_code == 503
        assert (await c.get("/router/readyz")).status_code == 503
    assert not router.worker.running
    async with service.router.lifespan_context(service), await _asgi(parent) as c:
        assert (await c.post("/router/route", json={"query": "I need a refund"})).json()[
            "route"
        ] == "billing"
        assert (await c.get("/router/readyz")).status_code == 200
    # After the lifespan: refused, and the worker is not started again.
    async with await _asgi(parent) as c:
        r = await c.post("/router/route", json={"query": "I need a refund"})
        assert r.status_code == 503 and "stopping" in r.json()["detail"]
    assert not router.worker.running
    assert router.query("I need a refund").name == "billing"  # the router itself is open


def test_create_app_refuses_what_serve_refuses() -> None:
    # run() checked the host; create_app (embedded in a user's app) did not.
    with pytest.raises(InvalidInputError, match="no API key"):
        create_app(ServerSettings(host="0.0.0.0"))
    create_app(ServerSettings(host="0.0.0.0", read_only=True))
    create_app(ServerSettings(host="0.0.0.0", api_key=SecretStr(KEY)))


async def test_keyless_service_refuses_foreign_host_names(router: AdaptiveRouter) -> None:
    app = create_app(ServerSettings(allowed_hosts=("router.internal",)), router=router)
    async with app.router.lifespan_context(app):
        for host, status in [
            ("127.0.0.1:8000", 200),
            ("localhost", 200),
            ("[::1]:8000", 200),
            ("router.internal:8000", 200),
            ("attacker.example", 421),
            ("attacker.example:8000", 421),
            ("localhost.attacker.example", 421),
            ("127.5.6.7:8000", 200),
            # Names that start like a loopback address are DNS names an attacker owns.
            ("127.attacker.example", 421),
            ("127.0.0.1.attacker.example:8000", 421),
            ("[::1].attacker.example", 421),
            ("[::1]x:8000", 421),
            # A port is ASCII digits: these are not loopback names with a port.
            ("127.0.0.1:80@attacker.example", 421),
            ("localhost:8000@attacker.example", 421),
            ("[::1]:80@attacker.example", 421),
            ("localhost:8\u00b2", 421),
            ("localhost:", 200),
        ]:
            async with await _asgi(app) as c:
                raw = {"host": host.encode("latin-1")}
                r = await c.get("/routes", headers=raw)
                assert r.status_code == status, host
                change = await c.put("/routes/evil", json={"utterances": ["x"]}, headers=raw)
                assert change.status_code in ((200, 201) if status == 200 else (421,)), host
    assert "evil" in router  # only the loopback requests changed anything
    # Two Host headers (a proxy and the guard could each read another) are refused.
    async with app.router.lifespan_context(app), await _asgi(app) as c:
        for hosts in (["localhost", "attacker.example"], ["attacker.example", "localhost"]):
            r = await c.get("/routes", headers=[("host", h) for h in hosts])
            assert r.status_code == 421, hosts
    # A leading "*." answers every name under the domain, not the domain itself.
    wild = create_app(ServerSettings(allowed_hosts=("*.Internal.Example",)), router=router)
    async with wild.router.lifespan_context(wild):
        for host, status in [
            ("router.internal.example", 200),
            ("a.b.internal.example:8000", 200),
            ("ROUTER.INTERNAL.EXAMPLE", 200),
            ("internal.example", 421),
            (".internal.example", 421),
            ("routerinternal.example", 421),
            ("router.internal.example.attacker.example", 421),
        ]:
            async with await _asgi(wild) as c:
                assert (await c.get("/routes", headers={"host": host})).status_code == status, host
    # Probes pass whatever the Host: an orchestrator asks by the pod's address (the
    # documented read-only deployment never turned ready), and they tell only up/down.
    async with app.router.lifespan_context(app), await _asgi(app, "10.244.1.7:8000") as c:
        for probe in ("/healthz", "/readyz", "/healthz/store"):
            assert (await c.get(probe)).status_code == 200, probe
        # So do the metrics: a Prometheus scrape by the pod's address got 421.
        metrics = await c.get("/metrics")
        assert metrics.status_code == 200 and "synaptoroute_routes" in metrics.text
        assert (await c.get("/routes")).status_code == 421
    keyed = create_app(ServerSettings(api_key=SecretStr(KEY)), router=router)
    async with keyed.router.lifespan_context(keyed), await _asgi(keyed, "router.example") as c:
        assert (await c.get("/routes")).status_code == 200  # a keyed service may be exposed


async def test_no_redirect_names_the_host_and_the_api_page_is_never_framed(
    router: AdaptiveRouter,
) -> None:
    # "/routes/" answered 307 to http://<any Host>/routes (an open redirect, a poisoned
    # cache in front), and /docs could be framed by another site, whose page could then
    # lure the clicks of its "Try it out" buttons into changing a keyless service.
    app = create_app(ServerSettings(api_key=SecretStr(KEY)), router=router)
    async with app.router.lifespan_context(app), await _asgi(app, "evil.example") as c:
        for path in ("/routes/", "/threshold/", "/route/", "/console/api/overview/"):
            answer = await c.get(path)
            assert answer.status_code == 404 and "location" not in answer.headers, path
        docs = await c.get("/docs")
        assert docs.status_code == 200 and docs.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in docs.headers["content-security-policy"]


async def test_a_route_named_past_the_header_limit_is_refused_by_put_too(
    router: AdaptiveRouter,
) -> None:
    # POST /routes and routes files refused a name no browser URL could carry back;
    # PUT /routes/{name} took it (201): a route then never read, changed or deleted.
    settings = ServerSettings(max_header_bytes=8192)
    app = create_app(settings, router=router)
    async with app.router.lifespan_context(app), await _asgi(app) as c:
        name = "b" * 9000
        answer = await c.put(f"/routes/{name}", json={"utterances": ["x"]})
        assert answer.status_code == 422 and "leaves for it" in answer.json()["detail"]
    assert name not in router


async def test_auth_reads_and_401_before_422(router: AdaptiveRouter) -> None:
    app = create_app(ServerSettings(api_key=SecretStr(KEY), auth_reads=True), router=router)
    auth = {"Authorization": f"Bearer {KEY}"}
    async with app.router.lifespan_context(app), await _asgi(app) as c:
        for path in (
            "/routes",
            "/routes/billing",
            "/threshold",
            "/negatives",
            "/console/api/overview",
            "/console/api/routes/billing",
            "/console/api/stats",
        ):
            assert (await c.get(path)).status_code == 401, path
            assert (await c.get(path, headers=auth)).status_code == 200, path
        tried = await c.post("/console/api/try", json={"query": "refund"})
        assert tried.status_code == 401
        assert (await c.get("/console/")).status_code == 200  # the page itself stays open
        assert (await c.post("/route", json={"query": "refund"})).status_code == 200
        assert (await c.get("/healthz")).status_code == 200
        # Malformed or mis-shaped bodies without the token: 401, never 422.
        json_headers = {"content-type": "application/json"}
        for raw in (b"{not json", b'{"utterances": 5}', b"\xff\xfe"):
            r = await c.put("/routes/x", content=raw, headers=json_headers)
            assert r.status_code == 401, raw
            r = await c.put("/routes/x", content=raw, headers={**json_headers, **auth})
            assert r.status_code == 422, raw
    with pytest.raises(ValueError, match=r"--auth-reads \(auth_reads\) needs an API key"):
        ServerSettings(auth_reads=True).check_safe()
    # An app built in code (uvicorn.run(create_app(...))) left those reads open.
    with pytest.raises(ValueError, match=r"--auth-reads \(auth_reads\) needs an API key"):
        create_app(ServerSettings(auth_reads=True), router=router)


async def test_store_failure_mid_change_is_503_and_leaves_nothing(
    router: AdaptiveRouter,
) -> None:
    # Fault injection: a real trigger makes the store fail after the route row is
    # written, while its utterances are being inserted.
    import sqlite3

    db = sqlite3.connect(router.storage.path)  # type: ignore[attr-defined]
    db.execute(
        "CREATE TRIGGER fail_mid_change BEFORE INSERT ON utterances "
        "WHEN NEW.text = 'poisoned' BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    )
    db.commit()
    db.close()
    app = create_app(ServerSettings(), router=router)
    async with app.router.lifespan_context(app), await _asgi(app) as c:
        before = (await c.get("/routes")).json()
        r = await c.put("/routes/billing", json={"utterances": ["fine", "poisoned"]})
        assert r.status_code == 503
        assert r.json() == {"detail": "the store could not be updated; nothing was changed"}
        assert "retry-after" in r.headers
        r = await c.put("/routes/new", json={"utterances": ["poisoned"]})
        assert r.status_code == 503
        assert (await c.get("/routes")).json() == before
        assert (await c.post("/route", json={"query": "refund"})).json()["route"] == "billing"
    reopened = SQLiteStorage(router.storage.path)  # type: ignore[attr-defined]
    assert [(s.route.name, s.route.utterances) for s in reopened.load()] == [
        (x["name"], x["utterances"]) for x in before
    ]
    reopened.close()


async def test_a_policy_write_failing_after_a_route_change_is_500_saying_it_was_stored(
    router: AdaptiveRouter,
) -> None:
    # The route change and the policy it needs are two writes: when the second failed
    # the service answered 503 "nothing was changed" and invited a retry, though the
    # route was deleted (a retry got 404).
    import sqlite3

    router.set_policy(DecisionPolicy(threshold=0.5, thresholds={"billing": 0.3}))
    db = sqlite3.connect(router.storage.path)  # type: ignore[attr-defined]
    for event in ("INSERT", "UPDATE"):
        db.execute(
            f"CREATE TRIGGER fail_policy_{event.lower()} BEFORE {event} ON state "
            "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    db.commit()
    db.close()
    app = create_app(ServerSettings(), router=router)
    async with app.router.lifespan_context(app), await _asgi(app) as c:
        r = await c.delete("/routes/billing")
        assert r.status_code == 500
        assert r.json()["detail"].startswith("the route change was stored and is served")
        assert "retry-after" not in r.headers
        assert (await c.get("/routes/billing")).status_code == 404


def test_metrics_report_the_new_rejections(router: AdaptiveRouter) -> None:
    srv = serve(router, rate_limit=0.001, rate_burst=1)
    try:
        with srv.client(HOST) as c:
            c.get("/threshold")
            assert c.get("/threshold").status_code == 429
            text = c.get("/healthz/store").text
            assert json.loads(text) == {"store": "ok"}
        with srv.client(OTHER) as c:
            # Methods outside HTTP's usual set share one label: no series per method
            # (ones every httptools version parses; QUERY is refused by older ones).
            for method in ("PURGE", "PROPFIND", "MKCOL", "LOCK"):
                c.request(method, "/healthz")
            metrics = c.get("/metrics").text
        assert 'synaptoroute_rejections_total{reason="rate_limited"} 1' in metrics
        assert "synaptoroute_store_up 1" in metrics
        assert 'method="other",path="/healthz",status="405"} 4' in metrics
        assert "PURGE" not in metrics and "PROPFIND" not in metrics and "LOCK" not in metrics
    finally:
        srv.stop()


# -- behind the shipped nginx configuration ------------------------------------------------
NGINX_CONF = Path(__file__).resolve().parents[1] / "deploy" / "nginx.conf"


def _nginx() -> str:
    for candidate in (
        os.environ.get("SYNAPTOROUTE_NGINX"),
        shutil.which("nginx"),
        "/usr/sbin/nginx",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if os.environ.get("SYNAPTOROUTE_TEST_NGINX_REQUIRED") == "1":
        pytest.fail("nginx is required here: bash scripts/hardening_tools.sh")
    pytest.skip("needs nginx (bash scripts/hardening_tools.sh installs the distribution's)")


class Proxy:
    """nginx with deploy/nginx.conf in front of ``upstream``; ``lower`` shrinks its limits."""

    def __init__(self, upstream: LiveServer, tmp: Path, lower: dict[str, str]) -> None:
        nginx = _nginx()
        sock = socket.socket()
        sock.bind((HOST, 0))
        self.port = int(sock.getsockname()[1])
        sock.close()
        text = NGINX_CONF.read_text()
        replacements = {
            "listen 127.0.0.1:8080;": f"listen {HOST}:{self.port};",
            "server 127.0.0.1:8000;": f"server {HOST}:{upstream.port};",
            **lower,
        }
        for old, new in replacements.items():
            assert old in text, old  # the shipped file still says what the test changes
            text = text.replace(old, new)
        conf = tmp / "nginx.conf"
        conf.write_text(text)
        self.proc = subprocess.Popen(
            [
                nginx,
                "-p",
                str(tmp),
                "-c",
                str(conf),
                "-g",
                f"daemon off; pid {tmp / 'nginx.pid'}; error_log {tmp / 'error.log'};",
            ],
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + LIMIT_S
        while True:
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            assert time.monotonic() < deadline, "nginx did not start"
            try:
                socket.create_connection((HOST, self.port), 1).close()
                break
            except OSError:
                time.sleep(0.01)
        self.url = f"http://{HOST}:{self.port}"

    def connect(self) -> socket.socket:
        sock = socket.create_connection((HOST, self.port), LIMIT_S)
        sock.settimeout(LIMIT_S)
        return sock

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(LIMIT_S)


@pytest.fixture
def proxied(router: AdaptiveRouter, tmp_path: Path) -> Iterator[Proxy]:
    # Skip before a server starts: a skip raised after it left its (non-daemon) thread
    # serving, and the test process never exited on a machine without nginx.
    _nginx()
    srv = serve(router)
    lower = {
        "client_header_timeout 10s;": "client_header_timeout 1s;",
        "client_body_timeout 30s;": "client_body_timeout 1s;",
        "rate=50r/s;": "rate=1r/m;",
        "burst=50 nodelay;": "burst=2 nodelay;",
    }
    try:
        proxy = Proxy(srv, tmp_path, lower)
        try:
            yield proxy
        finally:
            proxy.stop()
    finally:
        srv.stop()


def test_nginx_config_rate_limits_and_keeps_probes_open(proxied: Proxy) -> None:
    with httpx.Client(base_url=proxied.url, timeout=LIMIT_S) as c:
        codes = [c.post("/route", json={"query": "refund"}).status_code for _ in range(4)]
        assert codes[:3] == [200, 200, 200]  # one at the rate, two of burst
        assert codes[3] == 429
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200


def test_nginx_config_closes_slow_clients_and_refuses_big_headers(proxied: Proxy) -> None:
    idle = [proxied.connect() for _ in range(200)]
    silent = proxied.connect()
    stalled = proxied.connect()
    stalled.sendall(
        b"POST /route HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100000\r\n\r\n{"query": "'
    )
    big = proxied.connect()
    big.sendall(
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    )
    with httpx.Client(base_url=proxied.url, timeout=LIMIT_S) as c:
        assert c.get("/healthz").status_code == 200  # 200 idle connections changed nothing
    assert closed_by_server(silent) == b""
    stalled_answer = closed_by_server(stalled)  # nginx logs a 408 and closes, sending nothing
    assert stalled_answer == b"" or stalled_answer.startswith(b"HTTP/1.1 408")
    assert closed_by_server(big).startswith(b"HTTP/1.1 400")
    for s in idle:
        s.close()


def test_a_request_cut_short_by_the_drain_timeout_gets_the_services_503(
    encoder: Encoder, tmp_path: Path
) -> None:
    # uvicorn cancels what still runs when the drain is over: the client got its
    # plain-text 500 ("Internal Server Error") and the log a traceback.
    import threading

    gated, router = gated_router(encoder, tmp_path / "r.db")
    srv = ThreadedServer(create_app(ServerSettings(), router=router), timeout_graceful_shutdown=1)
    gated.gate.clear()
    gated.entered.clear()
    answers: list[httpx.Response] = []
    asking = threading.Thread(
        target=lambda: answers.append(
            httpx.post(
                f"{srv.url}/route", json={"query": "a query held at the model"}, timeout=LIMIT_S
            )
        )
    )
    asking.start()
    try:
        assert gated.entered.wait(LIMIT_S)
        stopping = threading.Thread(target=srv.stop)
        stopping.start()
        asking.join(LIMIT_S)
    finally:
        gated.gate.set()
    stopping.join(LIMIT_S)
    (answer,) = answers
    assert answer.status_code == 503
    assert "the service stopped before it answered" in answer.json()["detail"]
    assert answer.headers["retry-after"] == "1"


async def test_only_the_drains_cancel_is_answered_503() -> None:
    # A host app's own timeout around the service, or a force quit, cancels the request
    # too: that cancel was swallowed as the drain's (the owner's timeout never fired,
    # and the client was told the service was stopping).
    from synaptoroute.server.guards import InternalErrorMiddleware

    entered = asyncio.Event()

    async def forever(scope: Any, receive: Any, send: Any) -> None:
        entered.set()
        await asyncio.Event().wait()

    async def answered(message: str | None) -> tuple[bool, list[dict[str, Any]]]:
        sent: list[dict[str, Any]] = []

        async def send(item: dict[str, Any]) -> None:
            sent.append(item)

        async def receive() -> dict[str, Any]:
            return {"type": "http.disconnect"}

        middleware = InternalErrorMiddleware(forever)
        scope = {"type": "http", "method": "POST", "path": "/route"}
        entered.clear()
        task = asyncio.ensure_future(middleware(scope, receive, send))
        await asyncio.wait_for(entered.wait(), LIMIT_S)
        task.cancel(msg=message)
        await asyncio.wait((task,), timeout=LIMIT_S)
        return task.cancelled(), sent

    cancelled, sent = await answered(None)  # an enclosing timeout's cancel
    assert cancelled and not sent
    cancelled, sent = await answered("Task cancelled, timeout graceful shutdown exceeded")
    assert not cancelled and sent[0]["status"] == 503  # uvicorn's, at the end of the drain
