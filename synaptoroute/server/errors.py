"""How failures become answers: the service's exception handlers and documented errors.

:func:`_install_error_handlers` maps the library's exceptions to HTTP statuses (404,
409, 422, 503 with ``Retry-After``), counts refusals in the service's metrics, keeps a
request without a valid token from learning anything about its body (401 before 422),
never echoes the offending input back, and lists every allowed method in a 405's
``Allow``. :func:`_responses` gives the endpoints' OpenAPI descriptions of those error
statuses, so the schema and the handlers say the same thing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from ..exceptions import (
    InvalidInputError,
    ModelMismatchError,
    PolicyNotStoredError,
    RouteExistsError,
    RouteNotFoundError,
    RouterClosedError,
    RouterOverloadedError,
    RouterTimeoutError,
    StorageError,
)
from .guards import AdmissionError, _json_error
from .schemas import ErrorBody

if TYPE_CHECKING:
    from .app import ServiceState

log = logging.getLogger("synaptoroute.server")

#: Methods a 405 may list for a route that does not declare its own (below).
_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "\0"})
        if match is Match.NONE:
            continue
        declared = getattr(route, "methods", None)
        if declared is not None:
            methods |= set(declared)
        elif match is Match.PARTIAL:
            # Newer FastAPI keeps an included router as one route that declares no
            # methods; it still answers which methods it takes at this path.
            methods |= {
                method
                for method in _METHODS
                if route.matches({**request.scope, "method": method})[0] is Match.FULL
            }
    if "GET" in methods:
        methods.add("HEAD")  # answered as GET (middleware.HeadMiddleware)
    return sorted(methods)


_JSON_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def require_json_body(request: Request) -> None:
    """Refuse a request body not declared as JSON (``application/json`` or
    ``application/*+json``): 415, naming the type sent.

    FastAPI hands such a body to the model as bytes, and the client was told "Input
    should be a valid dictionary" about what may be a valid JSON object. Versions
    before its strict content type read a body sent without a type as JSON: a web
    page could then send a route change to a keyless loopback service without the
    browser asking the service first (no CORS preflight).

    Raises:
        HTTPException: 415 for a non-empty body of another type (or none).
    """
    if request.method not in _JSON_BODY_METHODS or not await request.body():
        return
    media = request.headers.get("content-type", "").split(";", 1)[0].strip()
    kind = media.lower()
    if kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json")):
        return
    got = f"not {media[:80]!r}" if media else "no Content-Type was sent"
    raise HTTPException(415, f"send the body as JSON with Content-Type: application/json ({got})")


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
        if exc.status_code in (400, 415) and (refusal := await refused(request)) is not None:
            return refusal
        if exc.status_code == 400:
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

    async def policy_not_stored(request: Request, exc: Exception) -> JSONResponse:
        # The route change is stored and served: no "nothing was changed", no retry
        # (it would find the change made: 409 or 404).
        log.error("store error after a route change was stored", exc_info=exc)
        rejections.inc(("store_unavailable",))
        return _json_error(500, str(exc))

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
    app.add_exception_handler(PolicyNotStoredError, policy_not_stored)
    app.add_exception_handler(AdmissionError, admission)
    # Any other exception: InternalErrorMiddleware (one traceback, connection kept).


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        401: "Missing or wrong bearer token.",
        403: "Route changes are disabled (read-only service).",
        404: "No such route.",
        409: "The route exists (use PUT to replace it), or the store holds another model.",
        413: "Request body too large, or a batch costing more than max_batch_cost.",
        415: "The body was not sent as JSON (Content-Type: application/json).",
        421: "A keyless service answers only loopback Host names.",
        422: "Malformed JSON or a body of the wrong shape.",
        429: "Too many requests from this client, or batches in flight; see Retry-After.",
        500: "Internal error (details only in the server log).",
        503: "Overloaded, timed out, starting, stopping or the store unavailable "
        "(nothing changed); see Retry-After.",
    }
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}
