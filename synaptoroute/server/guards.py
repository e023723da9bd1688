"""What keeps the service answering under abuse: raw ASGI middleware and admission.

- :class:`InternalErrorMiddleware`: an unexpected error becomes one logged traceback
  and a 500, and the keep-alive connection stays open (Starlette's own handler
  re-raises, so uvicorn logged it a second time and closed the connection).
- :class:`HostGuardMiddleware`: a keyless (loopback) service answers only requests
  addressed to a loopback name, so a page on another site cannot reach it through
  DNS rebinding.
- :class:`RateLimitMiddleware`: a token bucket per client address (429).
- :class:`BatchAdmission`: ``/route/batch`` admitted by cost (characters the encoder
  will read), not by number of texts, and fed to the batching worker in chunks (each
  small enough for its queue) so a single ``/route`` never waits behind a whole large
  batch; one deadline bounds the whole request.

Connection-level limits (header and body read timeouts, header size, connection
counts) live in :mod:`synaptoroute.server.protocol`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..batching import TEXT_COST_OVERHEAD, runs_by_cost
from ..exceptions import RouterTimeoutError, SynaptorouteError
from .paths import within_root

if TYPE_CHECKING:
    from ..models import RouteMatch
    from ..router import AdaptiveRouter

__all__ = [
    "TEXT_COST_OVERHEAD",
    "AdmissionError",
    "BatchAdmission",
    "HostGuardMiddleware",
    "InternalErrorMiddleware",
    "RateLimitMiddleware",
    "host_allowed",
]

log = logging.getLogger("synaptoroute.server")

#: Paths that stay open to every client: probes must not be rate limited.
_PROBES = frozenset({"/healthz", "/readyz", "/healthz/store"})
# What answers any Host: the probes, and the metrics a scraper reads by the pod's
# address (counts only, no route names; as the probes, nothing a rebound page can use).
_ANY_HOST = _PROBES | {"/metrics"}
# The longest Retry-After the rate limit sends: a day. A longer wait tells a client
# nothing more, and a rate too small for a float makes the wait infinite.
_MAX_RETRY_AFTER_S = 86_400
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def app_path(scope: Scope) -> str:
    """The request's path inside this app (:func:`~synaptoroute.server.paths.within_root`):
    ``/api/healthz`` under a mount or ``--root-path`` of ``/api`` is its ``/healthz``."""
    return within_root(scope["path"], scope.get("root_path", ""))


def _json_error(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _never_receive() -> Message:
    return {"type": "http.disconnect"}


class InternalErrorMiddleware:
    """Turns an exception that no handler took into one logged 500, connection kept,
    and a request cut short by the end of the drain (uvicorn cancels what still runs
    when ``drain_timeout`` is over) into the service's 503 for stopping."""

    def __init__(
        self,
        app: ASGIApp,
        retry_after: int = 1,
        on_stopped: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.retry_after = retry_after
        self.on_stopped = on_stopped

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError as cancel:
            # Only uvicorn's cancel at the end of the drain (it says so): another (an
            # enclosing timeout of a host app, a force quit) must reach its owner.
            if started or not _drain_over(cancel):
                raise
            task = asyncio.current_task()
            if task is not None and hasattr(task, "uncancel"):  # Python 3.11+
                task.uncancel()
            # uvicorn answered a plain-text 500 and logged a traceback: every error of
            # the service is JSON, and a stopping one says when to retry.
            log.warning("%s %s cut short: the drain timed out", scope["method"], scope["path"])
            if self.on_stopped is not None:
                self.on_stopped()
            response = _json_error(
                503,
                "the service stopped before it answered (drain timeout); a route change "
                "may have been applied; retry later",
                {"Retry-After": str(self.retry_after), "Connection": "close"},
            )
            await response(scope, _never_receive, send)
        except Exception as exc:
            # The traceback goes to the server log once, never to the client.
            log.error("unhandled error on %s %s", scope["method"], scope["path"], exc_info=exc)
            if started:  # nothing sensible can follow a half-sent response
                return
            response = _json_error(500, "internal server error")
            await response(scope, _never_receive, send)


def _drain_over(cancel: asyncio.CancelledError) -> bool:
    """Whether ``cancel`` is uvicorn's at the end of its graceful shutdown
    (``timeout_graceful_shutdown``): the message it cancels the tasks still running with."""
    return any("graceful shutdown" in str(arg) for arg in cancel.args)


def _is_port(text: str) -> bool:
    # RFC 9110's port is *DIGIT (ASCII): str.isdigit() alone also takes "²" and other
    # scripts' digits.
    return not text or (text.isascii() and text.isdigit())


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # [::1] or [::1]:8000, nothing else after the bracket
        end = value.find("]")
        rest = value[end + 1 :] if end > 0 else "?"
        if rest and not (rest.startswith(":") and _is_port(rest[1:])):
            return value  # not a bracketed address: matches no allowed name
        return value[1:end]
    if value.count(":") == 1:
        name, port = value.split(":")
        # "127.0.0.1:80@evil.com" is not a loopback name with a port: a port is digits.
        return name if _is_port(port) else value
    return value


def _is_loopback_address(name: str) -> bool:
    # An address, not a name that starts like one: "127.attacker.example" is a DNS
    # name its owner can point at 127.0.0.1 (DNS rebinding).
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_allowed(host_header: str, allowed: Sequence[str]) -> bool:
    """Whether a ``Host`` header names a loopback name or address, or one of
    ``allowed`` (port ignored; a leading ``*.`` in one matches any name under it)."""
    name = _host_name(host_header)
    return (
        name in _LOOPBACK_NAMES
        or _is_loopback_address(name)
        or name in allowed
        # "*.example.com" answers any name under example.com, not example.com itself
        # (as Starlette's TrustedHostMiddleware reads it).
        or any(a.startswith("*.") and name.endswith(a[1:]) and name != a[1:] for a in allowed)
    )


class HostGuardMiddleware:
    """Answers 421 to requests whose ``Host`` is not this machine's (DNS rebinding)."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str]) -> None:
        self.app = app
        self.allowed = tuple(_host_name(h) for h in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            hosts = [value.decode("latin-1") for key, value in scope["headers"] if key == b"host"]
            # Two Host headers are a malformed request (RFC 9112 section 3.2): a proxy
            # and this guard could each read a different one.
            host = hosts[0] if len(hosts) == 1 else ""
            # Probes and metrics pass: an orchestrator and a scraper ask by the pod's
            # address, and they tell nothing but up, down and counts.
            if app_path(scope) not in _ANY_HOST and not host_allowed(host, self.allowed):
                response = _json_error(
                    421,
                    "this service only answers requests addressed to a loopback name "
                    "(set an API key, or --allowed-host, to serve other names)",
                )
                await response(scope, _never_receive, send)
                return
        await self.app(scope, receive, send)


class RateLimitMiddleware:
    """A token bucket per client address: ``rate`` requests a second, bursts of ``burst``.

    Health probes are never limited. At most ``max_clients`` buckets are kept (the
    least recently seen are dropped first), so many addresses cannot grow memory.
    """

    def __init__(
        self,
        app: ASGIApp,
        rate: float,
        burst: int,
        on_refuse: Callable[[], None],
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.rate = rate
        self.burst = burst
        self.on_refuse = on_refuse
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _take(self, client: str) -> float:
        """Take a token; 0 when granted, else the seconds until one is available."""
        now = self.clock()
        tokens, last = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and app_path(scope) not in _PROBES:
            client = scope.get("client")
            wait = self._take(client[0] if client else "")
            if wait > 0:
                self.on_refuse()
                response = _json_error(
                    429,
                    f"more than {self.rate:g} requests a second from this client; retry later",
                    {"Retry-After": str(max(1, math.ceil(min(wait, _MAX_RETRY_AFTER_S))))},
                )
                await response(scope, _never_receive, send)
                return
        await self.app(scope, receive, send)


class AdmissionError(SynaptorouteError):
    """A batch refused by cost: ``status`` 413 (never admissible) or 429 (retry later)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class BatchAdmission:
    """Admits ``/route/batch`` requests by what they cost the encoder.

    Args:
        max_cost: most a single request may cost (characters, see :func:`text_cost`);
            more is refused at once with 413, since it could never be admitted.
        max_in_flight: batches served at once; one more is refused at once with 429.
        chunk_cost: each batch reaches the batching worker in chunks of about this
            cost, one after the other, so queries that arrive meanwhile are served
            between two chunks instead of after the whole batch.
        clock: seconds, for the deadline of :meth:`run`'s ``timeout``.

    Each chunk is queued on its own (the worker takes it whole or refuses it): a
    chunk refused after earlier ones were answered fails the request, and the
    earlier chunks' work is lost.
    """

    def __init__(
        self,
        max_cost: int,
        max_in_flight: int,
        chunk_cost: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_cost = max_cost
        self.max_in_flight = max_in_flight
        self.chunk_cost = chunk_cost
        self.clock = clock
        self.in_flight = 0

    def check_cost(self, texts: Sequence[str], cost: Callable[[str], int]) -> None:
        """Refuse a batch costing more than ``max_cost`` (it could never be admitted);
        ``cost``: the router's :meth:`~synaptoroute.AdaptiveRouter.text_cost`.

        Raises:
            AdmissionError: 413.
        """
        total = sum(map(cost, texts))
        if total > self.max_cost:
            msg = (
                f"this batch costs {total} (characters the model reads, plus "
                f"{TEXT_COST_OVERHEAD} a text), more than the {self.max_cost} a request may "
                "cost; send fewer or shorter texts"
            )
            raise AdmissionError(413, msg)

    async def run(
        self,
        texts: Sequence[str],
        router: AdaptiveRouter,
        timeout: float | None,
        *,
        per_chunk: bool = False,
    ) -> list[RouteMatch]:
        """Route ``texts`` through ``router``'s batching worker chunk by chunk (each
        at most ``chunk_cost`` and what the worker's queue can ever hold, one text at
        least); results in input order.

        ``timeout`` bounds the whole request, each chunk getting what is left of it,
        or with ``per_chunk`` each chunk on its own (``None``: no bound).

        Raises:
            AdmissionError: 429 (``max_in_flight`` batches running).
            RouterTimeoutError: a chunk's turn came with no time left.
        """
        worker = router.worker
        queue_cost = worker.max_queue_cost
        cost = self.chunk_cost if queue_cost is None else min(self.chunk_cost, queue_cost)
        chunks = runs_by_cost(texts, cost, worker.max_queue_size, cost=router.text_cost)
        if self.in_flight >= self.max_in_flight:
            msg = f"{self.in_flight} batches are being served, the most at once; retry later"
            raise AdmissionError(429, msg)
        deadline = None if timeout is None or per_chunk else self.clock() + timeout
        self.in_flight += 1
        try:
            results: list[RouteMatch] = []
            for chunk in chunks:
                left = timeout if deadline is None else deadline - self.clock()
                if left is not None and left <= 0:
                    msg = f"no result within {timeout} s"
                    raise RouterTimeoutError(msg)
                results.extend(await router.aquery_batch(chunk, timeout=left))
            return results
        finally:
            self.in_flight -= 1
