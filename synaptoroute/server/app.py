"""The FastAPI application: routing, route management with hot reload, health, metrics.

Queries go through the router's batching worker, which starts and stops with the
application's lifespan. Route changes run the blocking library calls in a thread
so the event loop keeps serving queries; each change is one store transaction, and
the next query sees it.
"""

from __future__ import annotations

import functools
import hmac
import logging
import math
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.convertors import CONVERTOR_TYPES, Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..encoder import Encoder
from ..exceptions import (
    InvalidInputError,
    ModelMismatchError,
    RouteExistsError,
    RouteNotFoundError,
    RouterClosedError,
    RouterOverloadedError,
    RouterTimeoutError,
    StorageError,
)
from ..models import RouteMatch
from ..router import AdaptiveRouter
from ..routes_file import apply_routes, load_routes_file
from .guards import (
    AdmissionError,
    BatchAdmission,
    HostGuardMiddleware,
    InternalErrorMiddleware,
    RateLimitMiddleware,
    _json_error,
    _never_receive,
)
from .memory import MemoryTrimmer
from .metrics import CONTENT_TYPE, Gauge, ServiceMetrics
from .negatives import negatives_router
from .protocol import ConnectionLimits, guarded_protocol
from .schemas import (
    NAME_PATTERN,
    BatchRequest,
    BatchResponse,
    DefaultThreshold,
    ErrorBody,
    NewRoute,
    QueryRequest,
    RouteBody,
    RouteOut,
    RouteResult,
    ThresholdBody,
    UtteranceChange,
    UtterancesAdded,
    UtterancesDeleted,
)
from .settings import ServerSettings

__all__ = ["ServiceState", "build_router", "create_app", "run"]

log = logging.getLogger("synaptoroute.server")
T = TypeVar("T")

_JSON = "application/json"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class ServiceState:
    """What the endpoints share; ``app.state.synaptoroute`` holds it."""

    settings: ServerSettings
    router: AdaptiveRouter | None
    owns_router: bool
    metrics: ServiceMetrics
    ready: bool = False
    #: Checks a request's token before its body is judged (401 before 422).
    precheck: Callable[[Request], HTTPException | None] | None = None

    def get_router(self) -> AdaptiveRouter:
        """The router, once the lifespan has opened it."""
        if self.router is None:
            raise RouterClosedError("the service is starting")
        return self.router


def build_router(settings: ServerSettings) -> AdaptiveRouter:
    """Open the store named in ``settings`` (memory when ``None``) with the bundled model."""
    return AdaptiveRouter.open(
        settings.store or None,
        Encoder(threads=settings.encoder_threads, spin=settings.encoder_spin),
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queue_size=settings.max_queue_size,
        max_queue_cost=settings.max_queue_cost,
    )


async def _blocking(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    # Library mutations encode and write SQLite: keep them off the event loop. A
    # cancelled request still waits for its thread, so a change is never cut short.
    return await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs))


# -- raw ASGI middleware (cheaper than BaseHTTPMiddleware on the hot path) -------------
class BodyLimitMiddleware:
    """Answers 413 once a request body passes ``limit`` bytes, without reading the rest.

    A declared ``Content-Length`` over the limit is refused before any byte is
    read; otherwise the body is counted as it streams in (chunked uploads too).
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
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = value
                break
        if declared is not None and declared.strip().isdigit() and int(declared) > self.limit:
            await self._refuse(send)
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
        response = _json_error(
            413, f"request body larger than {self.limit} bytes", {"Connection": "close"}
        )
        await response({"type": "http"}, _never_receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


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
            route = scope.get("route")
            # Unmatched paths share one label so random URLs cannot grow the series.
            # path_format: the template without convertors ("/routes/{name}").
            path = getattr(route, "path_format", None) or "unmatched"
            method = scope["method"]
            metrics.requests.inc((method, path, str(status)))
            metrics.latency.observe(time.perf_counter() - start, (method, path))


# -- errors ------------------------------------------------------------------------
def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "\0"})
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def _install_error_handlers(app: FastAPI, state: ServiceState) -> None:
    retry = {"Retry-After": str(state.settings.retry_after)}
    rejections = state.metrics.rejections

    async def refused(request: Request) -> Response | None:
        # A request without a valid token learns nothing about its body: 401 first.
        refusal = state.precheck(request) if state.precheck is not None else None
        return await http_error(request, refusal) if refusal is not None else None

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if (refusal := await refused(request)) is not None:
            return refusal
        # Only where and what: the offending input is not echoed back.
        detail = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        return _json_error(422, detail)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 400:
            if (refusal := await refused(request)) is not None:
                return refusal
            # FastAPI answers 400 when a body cannot be decoded at all (bad UTF-8, or
            # nesting too deep): to a client that is just more bad JSON.
            detail = [{"loc": ["body"], "msg": "body is not valid JSON", "type": "json_invalid"}]
            return _json_error(422, detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path; list them all.
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return _json_error(exc.status_code, exc.detail, headers or None)

    async def invalid_value(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ValidationError)
        detail = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        return _json_error(422, detail)

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return _json_error(404, str(exc))

    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        return _json_error(409, str(exc))

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        return _json_error(422, str(exc))

    async def overloaded(request: Request, exc: Exception) -> JSONResponse:
        rejections.inc(("overloaded",))
        return _json_error(503, "the router is overloaded; retry later", retry)

    async def timed_out(request: Request, exc: Exception) -> JSONResponse:
        rejections.inc(("timeout",))
        return _json_error(503, "no answer within the request timeout; retry later", retry)

    async def closed(request: Request, exc: Exception) -> JSONResponse:
        rejections.inc(("shutting_down",))
        return _json_error(503, "the service is starting or stopping; retry later", retry)

    async def storage(request: Request, exc: Exception) -> JSONResponse:
        # Every store change is one transaction: a failed one changed nothing, and the
        # store may well take the retry (a lock held too long, a database restarting).
        log.error("store error", exc_info=exc)
        rejections.inc(("store_unavailable",))
        return _json_error(503, "the store could not be updated; nothing was changed", retry)

    async def admission(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AdmissionError)
        rejections.inc(("too_costly" if exc.status == 413 else "busy",))
        return _json_error(exc.status, exc.detail, retry if exc.status == 429 else None)

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ValidationError, invalid_value)
    app.add_exception_handler(RouteNotFoundError, not_found)
    app.add_exception_handler(RouteExistsError, conflict)
    app.add_exception_handler(InvalidInputError, invalid)
    app.add_exception_handler(RouterOverloadedError, overloaded)
    app.add_exception_handler(RouterTimeoutError, timed_out)
    app.add_exception_handler(RouterClosedError, closed)
    app.add_exception_handler(ModelMismatchError, conflict)
    app.add_exception_handler(StorageError, storage)
    app.add_exception_handler(AdmissionError, admission)
    # Any other exception: InternalErrorMiddleware (one traceback, connection kept).


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        401: "Missing or wrong bearer token.",
        403: "Route changes are disabled (read-only service).",
        404: "No such route.",
        409: "The route exists (use PUT to replace it), or the store holds another model.",
        413: "Request body too large, or a batch costing more than max_batch_cost.",
        421: "A keyless service answers only loopback Host names.",
        422: "Malformed JSON or a body of the wrong shape.",
        429: "Too many requests from this client, or batches in flight; see Retry-After.",
        500: "Internal error (details only in the server log).",
        503: "Overloaded, timed out, starting, stopping or the store unavailable "
        "(nothing changed); see Retry-After.",
    }
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}


#: A route name in the URL: not empty, no surrounding whitespace.
RouteName = Annotated[str, Path(pattern=NAME_PATTERN, description="The route's name.")]


#: Route names in paths may contain "/"; the sub-resources "/utterances" and
#: "/threshold" keep their meaning, so a name may not end in either.
_SUB_RESOURCES = ("utterances", "threshold")


class _RouteNameConvertor(Convertor[str]):
    """A route name in front of a sub-resource: one or more characters, ``/`` included."""

    regex = r"[\s\S]+"  # any character, newlines included (names are any non-blank text)

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class _RoutePathConvertor(_RouteNameConvertor):
    """A route name that is the whole rest of the path: never ``<name>/<sub-resource>``,
    so an undeclared method on a sub-resource is a 405, not a route named ``x/threshold``."""

    regex = rf"(?![\s\S]*/(?:{'|'.join(_SUB_RESOURCES)})\Z)[\s\S]+"


#: Starlette looks path convertors up in one registry for the whole process, and
#: FastAPI compiles paths when requests arrive, so ours must stay registered; their
#: names carry the package's prefix so that they never replace another application's.
_CONVERTORS: dict[str, Convertor[Any]] = {
    "synaptoroute_route_name": _RouteNameConvertor(),
    "synaptoroute_route_path": _RoutePathConvertor(),
}


def _register_convertors() -> None:
    """Register the route-name convertors (when the first app is built, not on import)."""
    for key, convertor in _CONVERTORS.items():
        if key not in CONVERTOR_TYPES:
            register_url_convertor(key, convertor)


def _check_name(name: str) -> str:
    if not name.strip() or name != name.strip():
        msg = "route name must be non-empty and without surrounding whitespace"
        raise InvalidInputError(msg)
    if name.rsplit("/", 1)[-1] in _SUB_RESOURCES and "/" in name:
        msg = f"a route name may not end in /{' or /'.join(_SUB_RESOURCES)} (sub-resources)"
        raise InvalidInputError(msg)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        msg = "route name must be valid Unicode"
        raise InvalidInputError(msg) from None
    return name


# -- the app -----------------------------------------------------------------------
def create_app(
    settings: ServerSettings | None = None, *, router: AdaptiveRouter | None = None
) -> FastAPI:
    """Build the service.

    Args:
        settings: service settings; default :meth:`ServerSettings.from_env`.
        router: serve this router instead of opening ``settings.store``. The app
            starts and stops its batching worker but does not close it.

    Example:
        >>> app = create_app(ServerSettings(store="routes.db"))  # doctest: +SKIP
        >>> # uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    settings = settings if settings is not None else ServerSettings.from_env()
    _register_convertors()

    def queue_depth() -> float:
        return float(state.router.worker.queue_depth) if state.router is not None else 0.0

    def queue_cost() -> float:
        return float(state.router.worker.queue_cost) if state.router is not None else 0.0

    def route_count() -> float:
        return float(len(state.router)) if state.router is not None else 0.0

    metrics = ServiceMetrics(queue_depth, route_count, queue_cost)
    trimmer = MemoryTrimmer(settings.memory_trim_interval)
    state = ServiceState(settings, router, owns_router=router is None, metrics=metrics)

    def release(r: AdaptiveRouter) -> None:
        if state.owns_router:
            r.close()
            state.router = None  # a restarted lifespan opens the store again

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.router is None:
            state.router = await _blocking(build_router, settings)
        r = state.router
        try:
            if settings.routes_file:
                doc = await _blocking(load_routes_file, settings.routes_file)
                report = await _blocking(apply_routes, r, doc)
                log.info("routes file %s applied: %s", settings.routes_file, report.to_dict())
            # Load the model and compile the index (with its int8 copy), so the first
            # request is not the slow one; start() then runs the batching worker.
            await _blocking(r.warm)
            await r.start()
        except BaseException:
            release(r)
            raise
        state.ready = True
        metrics.ready.set(1)
        store_up.set(1)  # it was just read; /healthz/store checks again
        trimmer.start()
        try:
            yield
        finally:
            await trimmer.stop()
            state.ready = False
            metrics.ready.set(0)
            # uvicorn has already waited for requests in flight; this drains the queue.
            await r.stop(drain=True, timeout=settings.drain_timeout)
            release(r)

    app = FastAPI(
        title="synaptoroute",
        version=__version__,
        description=(
            "Routes a text to one of several named routes by embedding similarity. "
            "Route-changing endpoints need `Authorization: Bearer $SYNAPTOROUTE_API_KEY` "
            "when the key is set."
        ),
        lifespan=lifespan,
        # Replaced below by a page that loads a pinned Swagger UI with integrity hashes.
        docs_url=None,
        redoc_url=None,
    )
    app.state.synaptoroute = state
    app.state.memory_trimmer = trimmer
    _install_error_handlers(app, state)
    # Innermost first: the last added runs first.
    app.add_middleware(InternalErrorMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes, metrics=metrics)
    key = settings.api_key.get_secret_value().encode() if settings.api_key else None
    if key is None:
        app.add_middleware(HostGuardMiddleware, allowed=settings.allowed_hosts)
    if settings.rate_limit is not None:
        app.add_middleware(
            RateLimitMiddleware,
            rate=settings.rate_limit,
            burst=settings.rate_burst,
            on_refuse=lambda: metrics.rejections.inc(("rate_limited",)),
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    store_up = Gauge("synaptoroute_store_up", "1 when the last store check could read the store.")
    metrics.registry.register(store_up)
    admission = BatchAdmission(
        settings.max_batch_cost, settings.max_batches_in_flight, settings.batch_chunk_cost
    )

    def refuse_if_read_only() -> None:
        if settings.read_only:
            metrics.rejections.inc(("read_only",))
            raise HTTPException(403, "route changes are disabled on this service")

    async def open_changes() -> None:
        refuse_if_read_only()

    bearer = HTTPBearer(auto_error=False, description="the value of SYNAPTOROUTE_API_KEY")

    def check_token(credentials: HTTPAuthorizationCredentials | None) -> None:
        given = credentials.credentials.encode("utf-8", "surrogateescape") if credentials else b""
        # Constant-time, so the token cannot be guessed byte by byte from timings.
        if key is None or not hmac.compare_digest(given, key):
            metrics.rejections.inc(("unauthorized",))
            raise HTTPException(
                401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
            )

    async def checked_changes(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        refuse_if_read_only()
        check_token(credentials)

    async def checked_reads(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        check_token(credentials)

    # Without a key (a loopback service) changes are open, and the schema says so.
    change = [Depends(open_changes if key is None else checked_changes)]
    read = [Depends(checked_reads)] if settings.auth_reads and key is not None else []
    guarded = {id(d.dependency) for d in (*change, *read)}

    def precheck(request: Request) -> HTTPException | None:
        route = request.scope.get("route")
        if not any(id(d.dependency) in guarded for d in getattr(route, "dependencies", ())):
            return None
        try:
            if route is not None and "GET" not in getattr(route, "methods", ()):
                refuse_if_read_only()
            if key is not None:
                scheme, _, token = request.headers.get("authorization", "").partition(" ")
                given = HTTPAuthorizationCredentials(scheme=scheme, credentials=token.strip())
                check_token(given if scheme.lower() == "bearer" else None)
        except HTTPException as exc:
            return exc
        return None

    state.precheck = precheck
    timeout = settings.request_timeout

    def record(matches: list[RouteMatch]) -> None:
        for m in matches:
            metrics.queries.inc(("matched" if m.name is not None else "no_route",))
        metrics.fold_batches(state.get_router().worker.stats)

    # -- queries -------------------------------------------------------------------
    @app.post(
        "/route",
        response_model=RouteResult,
        tags=["routing"],
        responses=_responses(413, 422, 500, 503),
    )
    async def route_query(body: QueryRequest) -> Response:
        """Route one text: the route (or `null`), its score and the runner-up."""
        match = await state.get_router().aquery(body.query, timeout=timeout)
        record([match])
        # The hot path: serialised once by pydantic's core, not validated again.
        return Response(RouteResult.from_match(match).model_dump_json(), media_type=_JSON)

    @app.post(
        "/route/batch",
        response_model=BatchResponse,
        tags=["routing"],
        responses=_responses(413, 422, 500, 503),
    )
    async def route_batch(body: BatchRequest) -> Response:
        """Route several texts; results come in the order of `queries`.

        Admitted by cost (characters the model reads), not by count: a batch costing
        more than `max_batch_cost` is refused with 413, one more than
        `max_batches_in_flight` with 429.
        """
        r = state.get_router()

        async def serve_chunk(chunk: list[str]) -> list[RouteMatch]:
            return await r.aquery_batch(chunk, timeout=timeout)

        matches = await admission.run(body.queries, serve_chunk)
        record(matches)
        answer = BatchResponse(results=[RouteResult.from_match(m) for m in matches])
        return Response(answer.model_dump_json(), media_type=_JSON)

    # -- route management -----------------------------------------------------------
    page_size = settings.routes_page_size

    @app.get(
        "/routes",
        response_model=list[RouteOut],
        tags=["routes"],
        dependencies=read,
        responses=_responses(401, 422),
    )
    async def list_routes(
        request: Request,
        offset: Annotated[int, Query(ge=0, description="Routes to skip.")] = 0,
        limit: Annotated[
            int | None, Query(ge=1, description="Routes in this page (at most the page size).")
        ] = None,
    ) -> Response:
        """Routes with their utterances, in insertion order, one page at a time.

        `X-Total-Count` gives the number of routes; `Link: <...>; rel="next"` the next
        page while there is one.
        """
        size = min(limit or page_size, page_size)
        routes = state.get_router().list_routes()
        page = routes[offset : offset + size]

        def render() -> bytes:
            return (
                b"["
                + b",".join(RouteOut.from_route(r).model_dump_json().encode() for r in page)
                + b"]"
            )

        # Large pages are serialised in a thread: the event loop keeps serving probes.
        body = await _blocking(render)
        headers = {"X-Total-Count": str(len(routes))}
        if offset + size < len(routes):
            url = request.url.include_query_params(offset=offset + size, limit=size)
            headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
        return Response(body, media_type=_JSON, headers=headers)

    @app.post(
        "/routes",
        response_model=RouteOut,
        tags=["routes"],
        dependencies=change,
        status_code=201,
        responses=_responses(401, 403, 409, 413, 422, 500, 503),
    )
    async def create_route(body: NewRoute) -> RouteOut:
        """Create a route; 409 if the name is taken."""
        name = _check_name(body.name)
        r = state.get_router()
        if name in r:
            msg = f"route {name!r} exists; PUT /routes/{{name}} replaces it"
            raise RouteExistsError(msg)
        await _blocking(r.add_route, body.to_route(name))
        return RouteOut.from_route(r.get_route(name))

    @app.post(
        "/routes/{name:synaptoroute_route_name}/utterances",
        response_model=UtterancesAdded,
        tags=["routes"],
        dependencies=change,
        responses=_responses(401, 403, 404, 413, 422, 500, 503),
    )
    async def add_utterances(name: RouteName, body: UtteranceChange) -> UtterancesAdded:
        """Add example utterances to a route; answers those that were new."""
        added = await _blocking(state.get_router().add_utterances, name, body.utterances)
        return UtterancesAdded(added=added)

    @app.delete(
        "/routes/{name:synaptoroute_route_name}/utterances",
        response_model=UtterancesDeleted,
        tags=["routes"],
        dependencies=change,
        responses=_responses(401, 403, 404, 413, 422, 500, 503),
    )
    async def delete_utterances(name: RouteName, body: UtteranceChange) -> UtterancesDeleted:
        """Remove utterances from a route; answers how many were there."""
        deleted = await _blocking(state.get_router().delete_utterances, name, body.utterances)
        return UtterancesDeleted(deleted=deleted)

    @app.put(
        "/routes/{name:synaptoroute_route_name}/threshold",
        response_model=RouteOut,
        tags=["routes"],
        dependencies=change,
        responses=_responses(401, 403, 404, 413, 422, 500, 503),
    )
    async def set_route_threshold(name: RouteName, body: ThresholdBody) -> RouteOut:
        """Set a route's own threshold (`null` clears it)."""
        r = state.get_router()
        await _blocking(r.set_threshold, name, body.threshold)
        return RouteOut.from_route(r.get_route(name))

    @app.get(
        "/routes/{name:synaptoroute_route_path}",
        response_model=RouteOut,
        tags=["routes"],
        dependencies=read,
        responses=_responses(401, 404),
    )
    async def get_route(name: RouteName) -> RouteOut:
        """One route."""
        return RouteOut.from_route(state.get_router().get_route(name))

    @app.put(
        "/routes/{name:synaptoroute_route_path}",
        response_model=RouteOut,
        tags=["routes"],
        dependencies=change,
        status_code=200,
        responses={
            201: {"model": RouteOut, "description": "Created."},
            **_responses(401, 403, 413, 422, 500, 503),
        },
    )
    async def put_route(name: RouteName, body: RouteBody, response: Response) -> RouteOut:
        """Create or replace a route; the next query sees it."""
        route = body.to_route(_check_name(name))
        r = state.get_router()
        created = name not in r
        await _blocking(r.add_route, route, replace=True)
        response.status_code = 201 if created else 200
        return RouteOut.from_route(r.get_route(name))

    @app.delete(
        "/routes/{name:synaptoroute_route_path}",
        status_code=204,
        tags=["routes"],
        dependencies=change,
        responses=_responses(401, 403, 404, 500, 503),
    )
    async def delete_route(name: RouteName) -> Response:
        """Remove a route."""
        await _blocking(state.get_router().delete_route, name)
        return Response(status_code=204)

    @app.get(
        "/threshold",
        response_model=DefaultThreshold,
        tags=["routes"],
        dependencies=read,
        responses=_responses(401),
    )
    async def get_default_threshold() -> DefaultThreshold:
        """The default threshold of routes without their own."""
        return DefaultThreshold(threshold=state.get_router().threshold)

    @app.put(
        "/threshold",
        response_model=DefaultThreshold,
        tags=["routes"],
        dependencies=change,
        responses=_responses(401, 403, 413, 422, 500, 503),
    )
    async def set_default_threshold(body: DefaultThreshold) -> DefaultThreshold:
        """Set the default threshold of routes without their own."""
        r = state.get_router()
        await _blocking(setattr, r, "threshold", body.threshold)
        return DefaultThreshold(threshold=r.threshold)

    app.include_router(negatives_router(state.get_router, change, read, _responses))

    if settings.console:
        from .console import console_router

        app.include_router(console_router(settings, metrics, state.get_router, change, read))

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return _swagger_page(app.title)

    # -- operations -------------------------------------------------------------------
    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is up and answering."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"model": ErrorBody}})
    async def readyz() -> JSONResponse:
        """Ready to route: started, model loaded, batching worker running.

        Queries are answered from memory, so the store's health is not part of it
        (see `/healthz/store`): a database blip must not take every replica out of
        a load balancer. This is the Docker HEALTHCHECK's and a readiness probe's URL.
        """
        checks = {"started": state.ready, "model": False, "worker": False}
        r = state.router
        if r is not None:
            checks["model"] = bool(getattr(r.encoder, "loaded", True))
            checks["worker"] = r.worker.running
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks},
            status_code=200 if ok else 503,
        )

    @app.get("/healthz/store", tags=["operations"], responses={503: {"model": ErrorBody}})
    async def store_health() -> JSONResponse:
        """Whether the store can be read now (route changes need it; queries do not).

        Also exported as the `synaptoroute_store_up` gauge.
        """
        r = state.router
        ok = False
        if r is not None:
            try:
                await _blocking(r.storage.model_info)
                ok = True
            except Exception:
                log.warning("store check: the store cannot be read", exc_info=True)
        store_up.set(1 if ok else 0)
        return JSONResponse(
            {"store": "ok" if ok else "unavailable"}, status_code=200 if ok else 503
        )

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text."}},
    )
    async def prometheus() -> Response:
        """Metrics in the Prometheus text format."""
        r = state.router
        text = metrics.render(r.worker.stats) if r is not None else metrics.registry.render()
        return Response(text, media_type=CONTENT_TYPE)

    return app


#: Swagger UI for ``/docs``: an exact version from the CDN, each file checked by the
#: browser against its sha384 (Subresource Integrity), computed from the npm package
#: ``swagger-ui-dist`` of that version.
SWAGGER_UI_VERSION = "5.17.14"
_SWAGGER_CDN = f"https://cdn.jsdelivr.net/npm/swagger-ui-dist@{SWAGGER_UI_VERSION}"
_SWAGGER_JS_SRI = "sha384-wmyclcVGX/WhUkdkATwhaK1X1JtiNrr2EoYJ+diV3vj4v6OC5yCeSu+yW13SYJep"
_SWAGGER_CSS_SRI = "sha384-wxLW6kwyHktdDGr6Pv1zgm/VGJh99lfUbzSn6HNHBENZlCN7W602k9VkGdxuFvPn"


def _swagger_page(title: str) -> HTMLResponse:
    js, css = f"{_SWAGGER_CDN}/swagger-ui-bundle.js", f"{_SWAGGER_CDN}/swagger-ui.css"
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{title} - Swagger UI",
        swagger_js_url=js,
        swagger_css_url=css,
        swagger_favicon_url="data:,",  # no third-party icon either
    )
    html = bytes(page.body).decode()
    tagged = {
        f'<script src="{js}"></script>': (
            f'<script src="{js}" integrity="{_SWAGGER_JS_SRI}" crossorigin="anonymous"></script>'
        ),
        f'href="{css}">': f'href="{css}" integrity="{_SWAGGER_CSS_SRI}" crossorigin="anonymous">',
    }
    for plain, checked in tagged.items():
        if plain not in html:  # FastAPI changed its template: fail loudly, never unchecked
            msg = "cannot add integrity hashes to FastAPI's Swagger UI page"
            raise RuntimeError(msg)
        html = html.replace(plain, checked)
    return HTMLResponse(html)


def run(settings: ServerSettings, *, access_log: bool = False) -> None:
    """Serve ``settings`` with uvicorn until SIGINT/SIGTERM; requests in flight finish first.

    Raises:
        InvalidInputError: an exposed host with changes enabled and no API key.
    """
    import uvicorn

    settings.check_safe()
    limits = ConnectionLimits.from_settings(settings)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=access_log,
        lifespan="on",
        # uvicorn takes whole seconds (None: wait for ever); round up, keep 0 as 0.
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout),
        timeout_keep_alive=settings.keep_alive_timeout,
        http=guarded_protocol(limits),
        backlog=4096,
    )
    server = uvicorn.Server(config)
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises a captured SIGTERM once it has drained; with this handler
        # in place that ends in a normal return (exit status 0), not death by signal.
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    if not server.started:
        # uvicorn logs why (port taken, start-up failure) and returns instead of raising.
        raise SystemExit(1)
