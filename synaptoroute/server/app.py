"""The FastAPI application: its state, and the assembly of middleware, handlers and routers.

:func:`create_app` builds the service from its parts: the raw ASGI middleware
(:mod:`~synaptoroute.server.middleware`, :mod:`~synaptoroute.server.guards`), the
exception handlers (:mod:`~synaptoroute.server.errors`), the guards on reads and
changes (a bearer token, the read-only switch), and the endpoint routers
(:mod:`~synaptoroute.server.endpoints`, :mod:`~synaptoroute.server.negatives`,
:mod:`~synaptoroute.server.console`, :mod:`~synaptoroute.server.operations`). The
application's lifespan opens the router and starts its batching worker, and drains
and stops it; :func:`run` serves it with uvicorn.

Why one module over 400 lines: :func:`create_app`'s guards, handlers and lifespan are
closures over one state (the router, the key, the metrics), and :func:`run` serves
exactly what it builds; split, each part would take that whole state as arguments.
"""

from __future__ import annotations

import hmac
import logging
import math
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from .. import __version__
from ..encoder import Encoder
from ..exceptions import InvalidInputError, RouterClosedError, SynaptorouteError
from ..router import AdaptiveRouter
from ..routes_file import RoutesDocument, apply_routes, check_readable, load_routes_file
from .endpoints import _blocking, _check_addressable, endpoints_router
from .errors import _install_error_handlers, _responses, require_json_body
from .guards import (
    BatchAdmission,
    HostGuardMiddleware,
    InternalErrorMiddleware,
    RateLimitMiddleware,
)
from .listen import check_bindable as _check_bindable
from .memory import MemoryTrimmer
from .metrics import Gauge, ServiceMetrics
from .middleware import BodyLimitMiddleware, HeadMiddleware, MetricsMiddleware
from .negatives import negatives_router
from .operations import operations_router
from .protocol import ConnectionLimits, guarded_protocol
from .settings import ServerSettings

__all__ = ["ServiceState", "build_router", "create_app", "run"]

log = logging.getLogger("synaptoroute.server")


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

    #: Set when the lifespan first starts: Starlette runs none for an app mounted in
    #: another, and such an app must say so rather than "retry later" for ever.
    lifespan_ran: bool = False

    def get_router(self) -> AdaptiveRouter:
        """The router, while the lifespan holds it open.

        Raises:
            HTTPException: 503 without ``Retry-After``: the lifespan never ran.
            RouterClosedError: the service is starting or has stopped (a router
                given to :func:`create_app` is not served past its lifespan: a request
                then would start its batching worker again, never to be stopped).
        """
        if not self.lifespan_ran:
            raise HTTPException(503, _NO_LIFESPAN)
        if self.router is None or not self.ready:
            raise RouterClosedError("the service is starting or stopping")
        return self.router


_NO_LIFESPAN = (
    "the service's lifespan has not run: an app mounted in another app needs the "
    "parent's lifespan to run it, a test client must run it (`with TestClient(app)`) "
    "(docs/server.md, 'Inside your own application')"
)


def build_router(settings: ServerSettings, encoder: Encoder | None = None) -> AdaptiveRouter:
    """Open the store named in ``settings`` (memory when ``None``) with the bundled model
    (``encoder``, when given, is one made by :func:`service_encoder`)."""
    return AdaptiveRouter.open(
        settings.store or None,
        encoder if encoder is not None else service_encoder(settings),
        storage_options=settings.storage_options,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queue_size=settings.max_queue_size,
        max_queue_cost=settings.max_queue_cost,
    )


def service_encoder(settings: ServerSettings) -> Encoder:
    """The bundled model, with the service's thread settings."""
    return Encoder(threads=settings.encoder_threads, spin=settings.encoder_spin)


def check_routes_file(doc: RoutesDocument, settings: ServerSettings) -> None:
    """Refuse, as ``POST /routes`` does, a route of ``settings.routes_file`` that no URL
    can address: it could be served but never read, changed or deleted over HTTP (or
    the console). ``synaptoroute serve`` runs it before the store is opened.

    Raises:
        InvalidInputError: the first such route, named with the file.
    """
    for route in doc.routes:
        try:
            _check_addressable(route.name, settings.max_header_bytes)
        except InvalidInputError as exc:
            msg = f"routes file {settings.routes_file!r}: route {route.name!r}: {exc}"
            raise InvalidInputError(msg) from exc


def create_app(
    settings: ServerSettings | None = None, *, router: AdaptiveRouter | None = None
) -> FastAPI:
    """Build the service.

    Args:
        settings: service settings; default :meth:`ServerSettings.from_env`.
        router: serve this router instead of opening ``settings.store``. The app
            starts and stops its batching worker but does not close it.

    Raises:
        InvalidInputError: the API key is set but blank (``SYNAPTOROUTE_API_KEY=``),
            which would otherwise leave route changes open, ``auth_reads`` is set
            without a key (the reads would be open), or ``settings.host`` is not a
            loopback address while changes are enabled without a key
            (:meth:`ServerSettings.check_safe`).

    Example:
        >>> app = create_app(ServerSettings(store="routes.db"))  # doctest: +SKIP
        >>> # uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    settings = settings if settings is not None else ServerSettings.from_env()
    # As run() does: settings naming a host other than loopback without a key were
    # served with changes open to whoever reached the host app.
    settings.check_safe()

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

    async def start_up() -> AdaptiveRouter:
        doc = None
        if settings.routes_file:
            doc = await _blocking(load_routes_file, settings.routes_file)
            check_routes_file(doc, settings)
        if state.router is None:
            encoder = service_encoder(settings)
            if doc is not None:  # before the store is opened (or made)
                await _blocking(check_readable, doc, settings.routes_file, encoder)
            state.router = await _blocking(build_router, settings, encoder)
        r = state.router
        try:
            if doc is not None:
                report = await _blocking(apply_routes, r, doc)
                log.info("routes file %s applied: %s", settings.routes_file, report.to_dict())
            # Load the model and compile the index (with its int8 copy), so the first
            # request is not the slow one; start() then runs the batching worker.
            await _blocking(r.warm)
            await r.start()
        except BaseException:
            release(r)
            raise
        return r

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.lifespan_ran = True
        try:
            r = await start_up()
        except SynaptorouteError as exc:
            app.state.startup_error = exc  # run() reports it in one line
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
        # Replaced by /docs (operations.py): a pinned Swagger UI with integrity hashes.
        docs_url=None,
        redoc_url=None,
        # No "/routes/" -> "/routes" redirect: its Location named whatever Host the
        # request gave (an open redirect, a poisoned cache in front).
        redirect_slashes=False,
    )
    app.state.synaptoroute = state
    app.state.memory_trimmer = trimmer
    _install_error_handlers(app, state)
    # Innermost first: the last added runs first.
    app.add_middleware(HeadMiddleware)
    app.add_middleware(
        InternalErrorMiddleware,
        retry_after=settings.retry_after,
        on_stopped=lambda: metrics.rejections.inc(("shutting_down",)),
    )
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
    app.state.batch_admission = admission  # /route/batch's and the console's evaluations

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
    changes = {id(d.dependency) for d in change}
    guarded = changes | {id(d.dependency) for d in read}

    def precheck(request: Request) -> HTTPException | None:
        route = request.scope.get("route")
        needs = {id(d.dependency) for d in getattr(route, "dependencies", ())}
        if not needs & guarded:
            return None
        try:
            # Only what changes routes: a read sent by POST (the console's) is no change.
            if needs & changes:
                refuse_if_read_only()
            if key is not None:
                scheme, _, token = request.headers.get("authorization", "").partition(" ")
                given = HTTPAuthorizationCredentials(scheme=scheme, credentials=token.strip())
                check_token(given if scheme.lower() == "bearer" else None)
        except HTTPException as exc:
            return exc
        return None

    state.precheck = precheck
    json_body = [Depends(require_json_body)]
    app.include_router(endpoints_router(state, admission, change, read), dependencies=json_body)
    app.include_router(
        negatives_router(state.get_router, change, read, _responses), dependencies=json_body
    )

    if settings.console:
        from .console import console_router

        app.include_router(
            console_router(
                settings,
                metrics,
                state.get_router,
                change,
                read,
                admission,
                keyed=[] if key is None else [Depends(checked_reads)],
            )
        )

    app.include_router(operations_router(state, store_up))
    return app


class _ExpectedStartupError(logging.Filter):
    """Drops the traceback that uvicorn logs for a start-up error of synaptoroute's own
    (``run`` raises that error, and the command line prints it in one line); other
    start-up failures keep their traceback."""

    def __init__(self, app: FastAPI) -> None:
        super().__init__()
        self.app = app

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(self.app.state, "startup_error", None) is None:
            return True
        return not str(record.msg).startswith("Traceback (most recent call last)")


def run(settings: ServerSettings, *, access_log: bool = False) -> None:
    """Serve ``settings`` with uvicorn until SIGINT/SIGTERM; requests in flight finish first.

    Raises:
        InvalidInputError: an exposed host with changes enabled and no API key.
        SynaptorouteError: the service could not start (the store is not a database
            or holds another model's vectors, the routes file cannot be applied): the
            error itself, not uvicorn's exit, so the command line reports it in one
            line.
        SystemExit: 1 when uvicorn could not start otherwise (the port is taken);
            uvicorn logs why.
    """
    import uvicorn

    limits = ConnectionLimits.from_settings(settings)
    app = create_app(settings)  # refuses an exposed host first (check_safe)
    config = uvicorn.Config(
        app,
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
        # The client is the connection's peer: uvicorn's default took X-Forwarded-For
        # from any local peer, so a local process or a same-host proxy passing the
        # header on chose its own rate-limit bucket (and access-log address).
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises a captured SIGTERM once it has drained; with this handler
        # in place that ends in a normal return (exit status 0), not death by signal.
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn_log = logging.getLogger("uvicorn.error")
    quiet = _ExpectedStartupError(app)
    uvicorn_log.addFilter(quiet)
    exit_code: str | int | None = None
    try:
        # Tried before the app starts: a port in use, or a host no address resolves
        # to, failed only after the start-up had opened the store and applied the
        # routes file (a failed deployment changed the store other replicas serve).
        _check_bindable(settings.host, settings.port)
        server.run()
    except SystemExit as exc:
        # Recent uvicorn exits with 3 ("startup failure") whatever the cause; older
        # releases return with started false. Either way an error of ours (a bad
        # store, a routes file the store refuses) is raised as itself below.
        exit_code = exc.code
    finally:
        uvicorn_log.removeFilter(quiet)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    error = getattr(app.state, "startup_error", None)
    if error is not None:
        raise error
    if exit_code not in (0, None):
        raise SystemExit(1)
    if not server.started:
        # uvicorn logs why (port taken, start-up failure) and returns instead of raising.
        raise SystemExit(1)
