"""The service's routing and route-management endpoints: ``/route``, ``/routes``, ``/threshold``.

:func:`endpoints_router` builds them as an ``APIRouter`` over the service's state, the
batch admission of ``/route/batch`` and the dependencies that guard reads and changes.
Queries go through the router's batching worker; route changes run the blocking
library calls in a thread (:func:`_blocking`) so the event loop keeps serving queries,
each change is one store transaction, and the next query sees it. Route names in
paths may contain ``/`` (:mod:`synaptoroute.server.paths`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from urllib.parse import quote

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response

from ..exceptions import InvalidInputError, RouteExistsError
from ..models import RouteMatch
from .errors import _responses
from .guards import BatchAdmission
from .paths import RouteName, RouteNameRoute, _check_name
from .schemas import (
    BatchRequest,
    BatchResponse,
    DefaultThreshold,
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

if TYPE_CHECKING:
    from .app import ServiceState

__all__ = ["endpoints_router"]

T = TypeVar("T")

_JSON = "application/json"


def _gone() -> Response:
    """The answer to a client that hung up before its result (nginx's "client closed
    request"): no one reads it, and uvicorn logs no response to a client that is gone;
    the metrics count it. A new one each time: a response's header list travels with
    its messages, where a middleware may add to it."""
    return Response(status_code=499)


async def _unless_gone(request: Request, work: Awaitable[T]) -> T | None:
    """``work``'s result, or ``None`` when the client hangs up first: ``work`` is then
    cancelled, so its texts still queued are never encoded and a batch gives back its
    slot, instead of serving a client that is gone while live ones wait or get 429."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    # Its queued texts are dropped, its slot given back, before we go; how it ended
    # (cancelled, or an error past the cancel) has no one to be told to.
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


async def _disconnected(request: Request) -> None:
    # The body is read: what comes next on this request is its end, the client leaving.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _blocking(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    # Library mutations encode and write SQLite: keep them off the event loop. A
    # cancelled request still waits for its thread, so a change is never cut short.
    return await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs))


#: Room kept in the request head for all but the route name's part of the URL: the
#: method, ``/routes/``, ``/utterances``, the protocol and the headers (a browser's
#: user agent, client hints and cookies: the console's requests).
_HEAD_ROOM = 4096


def _check_addressable(name: str, max_header_bytes: int | None = None) -> str:
    """``name``, checked as every route name (:func:`_check_name`), and refused when a URL
    cannot address it (422): a path segment ``.`` or ``..``
    (browsers, the console's included, and HTTP clients remove them, so ``a/../b``
    reached route ``b``), or, given ``max_header_bytes``, one whose URL would not fit
    in this service's request head (a request naming it gets 431): the route could be
    created but never read, changed or deleted over HTTP."""
    name = _check_name(name)
    if any(part in (".", "..") for part in name.split("/")):
        msg = "a route name may not hold a path segment '.' or '..' (URLs drop them)"
        raise InvalidInputError(msg)
    if max_header_bytes is None:
        return name
    # Every reserved character escaped, '/' too: the console sends names so.
    size = len(quote(name, safe=""))
    # Half of a small head (--max-header-bytes may be 1,024): names still fit.
    room = max_header_bytes - min(_HEAD_ROOM, max_header_bytes // 2)
    if size > room:
        msg = (
            f"route name is {size} bytes in a URL, more than the {room} this service's "
            f"request head leaves for it (--max-header-bytes {max_header_bytes})"
        )
        raise InvalidInputError(msg)
    return name


def endpoints_router(
    state: ServiceState,
    admission: BatchAdmission,
    change: Sequence[Any],
    read: Sequence[Any],
) -> APIRouter:
    """The routing and route-management endpoints.

    Args:
        state: the service's state (its router is read at each request).
        admission: admits ``/route/batch`` requests by cost.
        change: dependencies guarding changes (token, read-only switch).
        read: dependencies guarding reads.
    """
    api = APIRouter(route_class=RouteNameRoute)
    metrics = state.metrics
    timeout = state.settings.request_timeout

    def record(matches: list[RouteMatch]) -> None:
        for m in matches:
            metrics.queries.inc(("matched" if m.name is not None else "no_route",))
        router = state.router  # answered already: a stop begun meanwhile refuses nothing
        if router is not None:
            metrics.fold_batches(router.worker.stats)

    # -- queries -------------------------------------------------------------------
    @api.post(
        "/route",
        response_model=RouteResult,
        tags=["routing"],
        responses=_responses(413, 415, 422, 429, 500, 503),
    )
    async def route_query(body: QueryRequest, request: Request) -> Response:
        """Route one text: the route (or `null`), its score and the runner-up."""
        query = state.get_router().aquery(body.query, timeout=timeout)
        match = await _unless_gone(request, query)
        if match is None:
            return _gone()
        record([match])
        # The hot path: serialised once by pydantic's core, not validated again.
        return Response(RouteResult.from_match(match).model_dump_json(), media_type=_JSON)

    @api.post(
        "/route/batch",
        response_model=BatchResponse,
        tags=["routing"],
        responses=_responses(413, 415, 422, 429, 500, 503),
    )
    async def route_batch(body: BatchRequest, request: Request) -> Response:
        """Route several texts; results come in the order of `queries`.

        Admitted by cost (characters the model reads), not by count: a batch costing
        more than `max_batch_cost` is refused with 413, one more than
        `max_batches_in_flight` with 429. The request timeout bounds the whole batch.
        """
        router = state.get_router()
        admission.check_cost(body.queries, router.text_cost)
        # Chunks the worker's queue can hold (it refuses more texts, or more cost, than
        # it may ever hold with 422), each given what is left of one deadline.
        matches = await _unless_gone(request, admission.run(body.queries, router, timeout))
        if matches is None:
            return _gone()
        record(matches)
        answer = BatchResponse(results=[RouteResult.from_match(m) for m in matches])
        return Response(answer.model_dump_json(), media_type=_JSON)

    # -- route management -----------------------------------------------------------
    page_size = state.settings.routes_page_size

    @api.get(
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

    @api.post(
        "/routes",
        response_model=RouteOut,
        tags=["routes"],
        dependencies=change,
        status_code=201,
        responses=_responses(401, 403, 409, 413, 415, 422, 500, 503),
    )
    async def create_route(body: NewRoute) -> RouteOut:
        """Create a route; 409 if the name is taken."""
        name = _check_addressable(body.name, state.settings.max_header_bytes)
        r = state.get_router()
        msg = f"route {name!r} exists; PUT /routes/{{name}} replaces it"
        if name in r:  # refused before anything is encoded
            raise RouteExistsError(msg)
        route = body.to_route(name)
        try:  # decided under the router's lock
            created = await _blocking(r._store_route, route, replace=False)
        except RouteExistsError:  # another route of this name came first
            raise RouteExistsError(msg) from None
        if not created:  # an equal one came first
            raise RouteExistsError(msg)
        # What was written, not a read after it: a concurrent DELETE may come between.
        return RouteOut.from_route(route)

    @api.post(
        "/routes/{name:path}/utterances",
        response_model=UtterancesAdded,
        tags=["routes"],
        dependencies=change,
        responses=_responses(401, 403, 404, 413, 415, 422, 500, 503),
    )
    async def add_utterances(name: RouteName, body: UtteranceChange) -> UtterancesAdded:
        """Add example utterances to a route; answers those that were new."""
        added = await _blocking(state.get_router().add_utterances, name, body.utterances)
        return UtterancesAdded(added=added)

    @api.delete(
        "/routes/{name:path}/utterances",
        response_model=UtterancesDeleted,
        tags=["routes"],
        dependencies=change,
        responses=_responses(401, 403, 404, 413, 415, 422, 500, 503),
    )
    async def delete_utterances(name: RouteName, body: UtteranceChange) -> UtterancesDeleted:
        """Remove utterances from a route; answers how many were there."""
        deleted = await _blocking(state.get_router().delete_utterances, name, body.utterances)
        return UtterancesDeleted(deleted=deleted)

    @api.put(
        "/routes/{name:path}/threshold",
        response_model=RouteOut,
        tags=["routes"],
        dependencies=change,
        responses=_responses(401, 403, 404, 413, 415, 422, 500, 503),
    )
    async def set_route_threshold(name: RouteName, body: ThresholdBody) -> RouteOut:
        """Set a route's own threshold (`null` clears it)."""
        changed = await _blocking(state.get_router().set_threshold, name, body.threshold)
        return RouteOut.from_route(changed)

    @api.get(
        "/routes/{name:path}",
        response_model=RouteOut,
        tags=["routes"],
        dependencies=read,
        responses=_responses(401, 404),
    )
    async def get_route(name: RouteName) -> RouteOut:
        """One route."""
        return RouteOut.from_route(state.get_router().get_route(name))

    @api.put(
        "/routes/{name:path}",
        response_model=RouteOut,
        tags=["routes"],
        dependencies=change,
        status_code=200,
        responses={
            201: {"model": RouteOut, "description": "Created."},
            **_responses(401, 403, 413, 415, 422, 500, 503),
        },
    )
    async def put_route(name: RouteName, body: RouteBody, response: Response) -> RouteOut:
        """Create or replace a route; the next query sees it."""
        # A URL held it, but encoded dots pass clients, and one too long for the header
        # limit arrived in a plain client's URL that browsers and the console exceed.
        name = _check_addressable(name, state.settings.max_header_bytes)
        route = body.to_route(name)
        # Created or replaced, decided under the router's lock; the body is what was
        # written (a concurrent DELETE after it made a read answer 404).
        created = await _blocking(state.get_router()._store_route, route, replace=True)
        response.status_code = 201 if created else 200
        return RouteOut.from_route(route)

    @api.delete(
        "/routes/{name:path}",
        status_code=204,
        tags=["routes"],
        dependencies=change,
        responses=_responses(401, 403, 404, 500, 503),
    )
    async def delete_route(name: RouteName) -> Response:
        """Remove a route."""
        await _blocking(state.get_router().delete_route, name)
        return Response(status_code=204)

    @api.get(
        "/threshold",
        response_model=DefaultThreshold,
        tags=["routes"],
        dependencies=read,
        responses=_responses(401),
    )
    async def get_default_threshold() -> DefaultThreshold:
        """The default threshold of routes without their own."""
        return DefaultThreshold(threshold=state.get_router().threshold)

    @api.put(
        "/threshold",
        response_model=DefaultThreshold,
        tags=["routes"],
        dependencies=change,
        responses=_responses(401, 403, 413, 415, 422, 500, 503),
    )
    async def set_default_threshold(body: DefaultThreshold) -> DefaultThreshold:
        """Set the default threshold of routes without their own."""
        r = state.get_router()
        await _blocking(setattr, r, "threshold", body.threshold)
        return DefaultThreshold(threshold=r.threshold)

    return api
