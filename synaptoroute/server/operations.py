"""The service's operations endpoints: health, readiness, the store's health, metrics, docs.

:func:`operations_router` builds ``/healthz`` (the process answers), ``/readyz``
(started, model loaded, batching worker running: the readiness probe), ``/healthz/store``
(the store can be read, also the ``synaptoroute_store_up`` gauge), ``/metrics`` (the
Prometheus text) and ``/docs``: a Swagger UI page of an exact version whose files the
browser checks against their sha384 hashes. None of them takes the service's token.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from .endpoints import _blocking
from .metrics import CONTENT_TYPE, Gauge
from .schemas import Readiness, StoreHealth

if TYPE_CHECKING:
    from ..router import AdaptiveRouter
    from .app import ServiceState

__all__ = ["SWAGGER_UI_VERSION", "SharedStoreCheck", "operations_router"]

log = logging.getLogger("synaptoroute.server")

#: Swagger UI for ``/docs``: an exact version from the CDN, each file checked by the
#: browser against its sha384 (Subresource Integrity), computed from the npm package
#: ``swagger-ui-dist`` of that version.
SWAGGER_UI_VERSION = "5.17.14"
_SWAGGER_CDN = f"https://cdn.jsdelivr.net/npm/swagger-ui-dist@{SWAGGER_UI_VERSION}"
_SWAGGER_JS_SRI = "sha384-wmyclcVGX/WhUkdkATwhaK1X1JtiNrr2EoYJ+diV3vj4v6OC5yCeSu+yW13SYJep"
_SWAGGER_CSS_SRI = "sha384-wxLW6kwyHktdDGr6Pv1zgm/VGJh99lfUbzSn6HNHBENZlCN7W602k9VkGdxuFvPn"


def operations_router(state: ServiceState, store_up: Gauge) -> APIRouter:
    """The health, readiness, metrics and docs endpoints.

    Args:
        state: the service's state (``router`` stays ``None`` while it starts).
        store_up: the gauge that ``/healthz/store`` sets.
    """
    api = APIRouter()
    metrics = state.metrics
    check = SharedStoreCheck()

    @api.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        # Under a mount or uvicorn's --root-path the schema is below that prefix too.
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return _swagger_page(request.app.title, f"{root}/openapi.json")

    @api.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is up and answering."""
        return {"status": "ok"}

    @api.get(
        "/readyz",
        tags=["operations"],
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Not ready"}},
    )
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

    @api.get(
        "/healthz/store",
        tags=["operations"],
        response_model=StoreHealth,
        responses={503: {"model": StoreHealth, "description": "The store cannot be read"}},
    )
    async def store_health() -> JSONResponse:
        """Whether the store can be read now (route changes need it; queries do not).

        Also exported as the `synaptoroute_store_up` gauge.
        """
        r = state.router
        ok = await check(r) if r is not None else False
        store_up.set(1 if ok else 0)
        return JSONResponse(
            {"store": "ok" if ok else "unavailable"}, status_code=200 if ok else 503
        )

    @api.get(
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

    return api


class SharedStoreCheck:
    """Whether a router's store answers a read: one check at a time, whose answer the
    calls that come while it runs share.

    Against a store that hangs (a database not answering), each probe of
    ``/healthz/store`` took a thread of its own, until the pool that route changes
    need ran dry; now the store holds one.
    """

    def __init__(self) -> None:
        self._task: asyncio.Future[bool] | None = None
        self._router: AdaptiveRouter | None = None
        #: Calls waiting for the check in flight now.
        self.waiting = 0

    async def __call__(self, router: AdaptiveRouter) -> bool:
        """Whether ``router``'s store can be read now (the check in flight, if any)."""
        task = self._task
        if (
            task is None
            or task.done()
            or self._router is not router  # another router since (a lifespan restart)
            or task.get_loop() is not asyncio.get_running_loop()
        ):
            task = self._task = asyncio.ensure_future(_store_readable(router))
            self._router = router
        self.waiting += 1
        try:
            # Shielded: a caller that gives up does not cancel the others' check.
            return await asyncio.shield(task)
        finally:
            self.waiting -= 1


async def _store_readable(router: AdaptiveRouter) -> bool:
    """Whether ``router``'s store answers a read (in a thread: it may block), and can
    take writes as far as it can tell without one (a SQLite file deleted or replaced
    under the service still reads, but refuses every change)."""
    check = getattr(router.storage, "check_health", None)
    try:
        await _blocking(check if callable(check) else router.storage.model_info)
    except Exception:
        log.warning("store check: the store cannot be read", exc_info=True)
        return False
    return True


def _swagger_page(title: str, openapi_url: str) -> HTMLResponse:
    js, css = f"{_SWAGGER_CDN}/swagger-ui-bundle.js", f"{_SWAGGER_CDN}/swagger-ui.css"
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
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
    # Never framed: in a frame of another site, the page's "Try it out" buttons would
    # change routes of a keyless local service for the clicks they lure.
    return HTMLResponse(html, headers=_NO_FRAMING)


_NO_FRAMING = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}
