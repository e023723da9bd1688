"""The service's own raw ASGI middleware: the request body limit and request metrics.

Raw ASGI rather than Starlette's ``BaseHTTPMiddleware``, which costs more on the hot
path. :class:`BodyLimitMiddleware` answers 413 as soon as a body passes the limit,
without reading the rest, and hands the application a body it has already read
(``_replay``); :class:`MetricsMiddleware` counts and times every request by method,
path template and status. The middleware that guards against abuse (internal errors,
Host names, rate limits) lives in :mod:`synaptoroute.server.guards`.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .guards import _json_error, _never_receive
from .metrics import ServiceMetrics

__all__ = ["BodyLimitMiddleware", "HeadMiddleware", "MetricsMiddleware"]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Methods counted under their own name; the others (the parser takes some thirty:
#: WebDAV's, PURGE...) share "other", so a client cannot grow the series with them.
_COUNTED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class BodyLimitMiddleware:
    """Answers 413 once a request body passes ``limit`` bytes, without reading the rest.

    A declared ``Content-Length`` over the limit is refused before any byte is
    read; otherwise the body is counted as it streams in (chunked uploads too).

    A body sent compressed (a ``Content-Encoding`` other than ``identity``) gets 415
    with ``Accept-Encoding: identity`` (RFC 9110 15.5.16), unread: it was read as
    uncompressed, so gzipped JSON was "not valid JSON" and a plain body labelled gzip
    was served.
    """

    def __init__(self, app: ASGIApp, limit: int, metrics: ServiceMetrics) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = None
        codings: list[bytes] = []  # every line's: "identity" then "gzip" is gzip
        chunked = False
        for key, value in scope["headers"]:
            if key == b"content-length" and declared is None:
                declared = value
            elif key == b"content-encoding":
                codings.extend(c.strip() for c in value.split(b","))
            elif key == b"transfer-encoding":
                chunked = True
        if declared is not None and declared.strip().isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        has_body = chunked or (declared is not None and declared.strip().strip(b"0") != b"")
        if has_body and any(c and c.lower() != b"identity" for c in codings):
            shown = b", ".join(c for c in codings if c).decode("latin-1")[:80]
            detail = f"send the body uncompressed (Content-Encoding {shown!r} is not taken)"
            await _unread(send, 415, detail, {"Accept-Encoding": "identity"})
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _refuse(self, send: Send) -> None:
        self.metrics.rejections.inc(("body_too_large",))
        await _unread(send, 413, f"request body larger than {self.limit} bytes")


async def _unread(
    send: Send, status: int, detail: str, headers: dict[str, str] | None = None
) -> None:
    """Answer a request whose body is left unread: the connection closes after it (it
    cannot serve another request)."""
    response = _json_error(status, detail, {**(headers or {}), "Connection": "close"})
    await response({"type": "http"}, _never_receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


#: What routing leaves in the scope that outer middleware reads (the metrics' path
#: template): copied back from the GET scope a HEAD request is answered with.
_ROUTING_KEYS = ("route", "endpoint", "router", "path_params")


class HeadMiddleware:
    """Answers ``HEAD`` as ``GET`` without the body (RFC 9110: a server that answers
    ``GET`` for a resource answers ``HEAD`` for it), with the same status and headers
    (``Content-Length`` included) and the same checks: keys, Host names, limits.

    FastAPI routes a ``GET`` route for ``GET`` only, so every resource but the probes
    answered ``HEAD`` with 405. The application sees a ``GET`` in a copy of the
    scope; the server's own scope keeps ``HEAD`` (uvicorn then sends no body either).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def bodiless_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        inner = {**scope, "method": "GET"}
        try:
            await self.app(inner, receive, bodiless_send)
        finally:
            for key in _ROUTING_KEYS:
                if key in inner:
                    scope[key] = inner[key]


class MetricsMiddleware:
    """Counts requests by method, path template and status, and times them."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.metrics
        start = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        metrics.in_flight.add(1)
        try:
            await self.app(scope, receive, recording_send)
        finally:
            metrics.in_flight.add(-1)
            # Unmatched paths share one label so random URLs cannot grow the series.
            # path_format: the template without convertors ("/routes/{name}").
            path = getattr(_matched_route(scope), "path_format", None) or "unmatched"
            method = scope["method"] if scope["method"] in _COUNTED_METHODS else "other"
            for hook in metrics.on_request:  # before the request is counted
                hook()
            metrics.requests.inc((method, path, str(status)))
            metrics.latency.observe(time.perf_counter() - start, (method, path))


def _matched_route(scope: Scope) -> Any:
    """The route that answered: FastAPI's own routes say so in the scope; a plain
    Starlette route (FastAPI's ``/openapi.json``) only names its endpoint."""
    route = scope.get("route")
    endpoint = scope.get("endpoint")
    if route is not None or endpoint is None:
        return route
    router = scope.get("router")
    return next(
        (r for r in getattr(router, "routes", ()) if getattr(r, "endpoint", None) is endpoint),
        None,
    )
