"""The console: a browser UI at ``/console`` to see, try and fix routes.

The page itself is three static files shipped in the wheel (``console/``: HTML, CSS
and JavaScript, no build step). This module serves them under a strict
Content-Security-Policy and adds the read-only endpoints the page needs under
``/console/api``: an overview of the routes, a route's details, a query explained
(top routes, their nearest utterances, the threshold and what decided), an
evaluation of uploaded labelled JSON lines, a 2-D map of every stored utterance
(PCA of the stored vectors, nothing re-encoded) and live figures from the service's
own metrics. Changes made in the console go through the service's authenticated
route endpoints, exactly as ``curl`` would.

Why one module over 400 lines: the console's endpoints and the views they compute
(projection, nearest utterances, live figures) serve one page and change with it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from ..checks import reads_nothing_of
from ..datasets import label_indexes, parse_jsonl
from ..evaluation import evaluate_matches
from ..exceptions import InvalidInputError
from ..index import Snapshot
from ..models import NEGATIVES_ROUTE, Route, RouteMatch
from ..router import AdaptiveRouter, _finite_json
from .endpoints import _gone, _unless_gone
from .errors import require_json_body
from .guards import BatchAdmission
from .metrics import ServiceMetrics
from .paths import RouteName, RouteNameRoute, _check_name
from .schemas import RouteResult, Text
from .settings import ServerSettings

__all__ = [
    "CONSOLE_CSP",
    "Projection",
    "console_router",
    "histogram_quantile",
    "project",
]

#: Sent with every console response: scripts, styles and requests from this origin only,
#: nothing inline, no framing, no plugins, no form posts elsewhere.
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONSOLE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The page is small and changes with the package: always revalidate.
    "Cache-Control": "no-cache",
}
_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
#: Most labelled rows one evaluation upload may hold (each is routed: it bounds the work).
MAX_EVALUATION_ROWS = 10_000
#: Most misrouted rows an evaluation answers with (the figures count every row).
MAX_MISROUTED = 500
#: Up to this many utterances the map answers each point's text (shown on hover).
MAP_TEXTS_MAX = 3000
#: Seconds of history behind the live figures.
LIVE_WINDOW_S = 10.0
#: Seconds between two samples taken after requests (see ``_Live``).
_TICK_S = 1.0
# Paths the live figures leave out, so the console does not measure its own polling.
_UNCOUNTED = ("/console", "/metrics")
_JSON = "application/json"


# -- pure parts (unit-tested without a server) ------------------------------------------
@dataclass(frozen=True)
class Projection:
    """A 2-D PCA projection of one index snapshot.

    Attributes:
        coords: ``(n, 2)`` position of each live utterance.
        route_ids: the route (index into ``routes``) of each point.
        texts: each point's utterance.
        routes: the route names, in the order ``route_ids`` refers to.
        mean: the centre of the vectors (subtracted before projecting).
        components: ``(2, dim)`` principal axes.
        explained: share of the variance each axis explains.
    """

    coords: NDArray[np.float32]
    route_ids: NDArray[np.int64]
    texts: list[str]
    routes: list[str]
    mean: NDArray[np.float32]
    components: NDArray[np.float32]
    explained: tuple[float, float]

    def place(self, vector: NDArray[np.float32]) -> tuple[float, float]:
        """Where a new vector (a query) falls on the map."""
        x, y = (np.asarray(vector, dtype=np.float32) - self.mean) @ self.components.T
        return float(x), float(y)


def project(
    vectors: NDArray[np.float32], route_ids: NDArray[np.int64], texts: list[str], routes: list[str]
) -> Projection:
    """Project utterance vectors onto their first two principal axes.

    The SVD runs on the ``dim x dim`` scatter matrix rather than on the vectors, so
    its cost grows with the number of utterances only through one matrix product.
    Each axis is oriented so its largest loading is positive: the same vectors give
    the same picture every time.
    """
    dim = vectors.shape[1]
    x = np.asarray(vectors, dtype=np.float32)
    mean = x.mean(axis=0, dtype=np.float64) if len(x) else np.zeros(dim)
    # float32 for the one large product (a picture needs no more); the SVD in float64.
    centred = x - mean.astype(np.float32)
    _, singular, vt = np.linalg.svd((centred.T @ centred).astype(np.float64))
    axes = vt[:2] if len(vt) >= 2 else np.zeros((2, dim))
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    total = float(singular.sum())
    shares = [float(s / total) if total > 0 else 0.0 for s in singular[:2]] + [0.0, 0.0]
    return Projection(
        coords=centred @ axes.T.astype(np.float32),
        route_ids=route_ids,
        texts=texts,
        routes=routes,
        mean=mean.astype(np.float32),
        components=axes.astype(np.float32),
        explained=(shares[0], shares[1]),
    )


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """The ``q`` quantile of histogram counts, interpolated inside its bucket.

    Args:
        q: the quantile, between 0 and 1.
        bounds: upper bounds of the finite buckets, ascending.
        counts: observations per bucket (not cumulative); one more than ``bounds``
            (the last is the ``+Inf`` bucket).

    Returns:
        The estimate, ``None`` without observations. In the ``+Inf`` bucket it is the
        largest finite bound (the histogram knows no more).
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(bounds):
                return float(bounds[-1])
            low = bounds[i - 1] if i > 0 else 0.0
            return float(low + (bounds[i] - low) * (rank - seen) / n)
        seen += n
    return float(bounds[-1])


# -- request bodies ----------------------------------------------------------------------
class TryRequest(BaseModel):
    """``POST /console/api/try``: a query to explain."""

    model_config = ConfigDict(extra="forbid")

    query: Text = Field(max_length=10_000)
    k: int = Field(default=5, ge=1, le=20, description="How many routes to rank.")
    nearest: int = Field(default=3, ge=1, le=10, description="Utterances shown per route.")


class MapRequest(BaseModel):
    """``POST /console/api/map``: optionally, a query to place on the map."""

    model_config = ConfigDict(extra="forbid")

    query: Text | None = Field(default=None, max_length=10_000)


# -- service state the console keeps -------------------------------------------------------
class _ChangeTimes:
    """When this service first saw each route in its current form.

    Routes are immutable and every change (here or from a replica's change feed)
    swaps in a new object, so comparing objects finds changes without a store column.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[Route, float | None]] = {}
        self._first = True

    def observe(self, routes: Sequence[Route]) -> dict[str, float | None]:
        """Update from the router's current routes; answers each route's change time."""
        now = time.time()
        with self._lock:
            seen: dict[str, tuple[Route, float | None]] = {}
            for route in routes:
                old = self._seen.get(route.name)
                if old is not None and old[0] is route:
                    seen[route.name] = old
                else:
                    # Routes already there when the console first looked changed earlier.
                    seen[route.name] = (route, None if self._first else now)
            self._seen = seen
            self._first = False
            return {name: stamp for name, (_, stamp) in seen.items()}


@dataclass(frozen=True)
class _Sample:
    at: float
    requests: float
    buckets: tuple[int, ...]


class _Live:
    """Request rate and latency quantiles over the last :data:`LIVE_WINDOW_S` seconds.

    Sampled when a request comes (before it is counted) at most every :data:`_TICK_S`,
    and on each poll: a request counted after the newest sample came within
    :data:`_TICK_S` of it (a later one would have taken a sample), so the counts are
    known at every time since, and traffic from before the window is never reported as
    the last seconds'.
    """

    def __init__(
        self, metrics: ServiceMetrics, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        self._lock = threading.Lock()
        zero = (0,) * (len(metrics.latency.buckets) + 1)
        self._samples: deque[_Sample] = deque([_Sample(clock(), 0.0, zero)])
        metrics.on_request.append(self.tick)

    def tick(self) -> None:
        """Take a sample when the newest is :data:`_TICK_S` old (as a request comes,
        before it is counted)."""
        with self._lock:
            if self.clock() - self._samples[-1].at < _TICK_S:
                return
        self._add(self._sample())

    def _add(self, sample: _Sample) -> _Sample:
        # The window's base: the newest sample at least LIVE_WINDOW_S old (or the oldest).
        with self._lock:
            samples = self._samples
            idle_since = samples[-1].at + _TICK_S
            if idle_since < sample.at:
                # Nothing was counted from then on (it would have taken a sample).
                samples.append(_Sample(idle_since, sample.requests, sample.buckets))
            while len(samples) > 1 and samples[1].at <= sample.at - LIVE_WINDOW_S:
                samples.popleft()
            base = samples[0]
            if len(samples) > 1 and (samples[1].requests, samples[1].buckets) == (
                base.requests,
                base.buckets,
            ):
                # Nothing was counted between the two: the window starts its length ago.
                base = _Sample(max(base.at, sample.at - LIVE_WINDOW_S), base.requests, base.buckets)
            samples.append(sample)
        return base

    def _sample(self) -> _Sample:
        def counted(labels: tuple[str, ...]) -> bool:
            return not labels[1].startswith(_UNCOUNTED)

        buckets = [0] * (len(self.metrics.latency.buckets) + 1)
        for labels, counts in self.metrics.latency.series().items():
            if counted(labels):
                buckets = [a + b for a, b in zip(buckets, counts, strict=True)]
        requests = sum(n for labels, n in self.metrics.requests.series().items() if counted(labels))
        return _Sample(self.clock(), requests, tuple(buckets))

    def figures(self) -> dict[str, float | None]:
        """Requests per second, p50 and p99 latency (ms) since the window's start."""
        now = self._sample()
        base = self._add(now)
        span = max(now.at - base.at, 1e-9)
        delta = [b - a for a, b in zip(base.buckets, now.buckets, strict=True)]
        bounds = self.metrics.latency.buckets
        p50, p99 = (histogram_quantile(q, bounds, delta) for q in (0.5, 0.99))
        return {
            "window_s": span,
            "requests_per_s": (now.requests - base.requests) / span,
            "p50_ms": None if p50 is None else p50 * 1000.0,
            "p99_ms": None if p99 is None else p99 * 1000.0,
        }


class _Views:
    """What the console derives from the latest index snapshot, computed once per version."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # The snapshot the map was computed from, by identity: a version number is
        # the index's own, and a router opened again (a lifespan restart) counts from
        # the start, so the old map came back. Weak: the map must not keep an old
        # snapshot's matrix alive.
        self._of: weakref.ref[Snapshot] | None = None
        self._map: tuple[Projection, list[dict[str, Any]]] | None = None

    def projection(self, snapshot: Snapshot) -> tuple[Projection, list[dict[str, Any]]]:
        """The 2-D map and the closest route pairs."""
        with self._lock:
            if self._map is None or self._of is None or self._of() is not snapshot:
                layout = snapshot.layout
                live, route_ids, names = layout.live, layout.row_pos[layout.live], layout.names
                if NEGATIVES_ROUTE in names:
                    # The negative examples are held as a route but are none: off the map.
                    held = names.index(NEGATIVES_ROUTE)
                    keep = route_ids != held
                    live, route_ids = live[keep], route_ids[keep]
                    route_ids = np.where(route_ids > held, route_ids - 1, route_ids)
                    names = [name for name in names if name != NEGATIVES_ROUTE]
                vectors = snapshot.matrix[live]
                texts = [snapshot.texts[i] for i in live.tolist()]
                projection = project(vectors, route_ids, texts, names)
                self._map = (projection, _closest_pairs(projection, vectors))
                self._of = weakref.ref(snapshot)
            return self._map


def _snapshot(router: AdaptiveRouter) -> Snapshot:
    # The compiled index the queries read: the stored vectors, no re-encoding.
    return router._index.snapshot()


def _nearest(
    snapshot: Snapshot, vector: NDArray[np.float32], names: Sequence[str], n: int
) -> dict[str, list[dict[str, Any]]]:
    """The ``n`` utterances of each named route most similar to ``vector``."""
    layout = snapshot.layout
    out: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        pos = layout.position.get(name)
        if pos is None:
            out[name] = []
            continue
        rows = layout.route_rows[pos]
        sims = snapshot.matrix[rows] @ np.asarray(vector, dtype=np.float32)
        best = np.argsort(-sims, kind="stable")[:n]
        out[name] = [
            {"text": snapshot.texts[int(rows[i])], "score": float(sims[i])} for i in best.tolist()
        ]
    return out


def _closest_pairs(
    projection: Projection, vectors: NDArray[np.float32], top: int = 10
) -> list[dict[str, Any]]:
    """Route pairs whose centroids are most alike: the overlaps worth a look."""
    names = projection.routes
    if len(names) < 2:
        return []
    # Sum each route's rows in one pass (np.add.at is an order of magnitude slower).
    order = np.argsort(projection.route_ids, kind="stable")
    starts = np.searchsorted(projection.route_ids[order], np.arange(len(names)))
    centroids = np.add.reduceat(vectors[order].astype(np.float64), starts, axis=0)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    sims = centroids @ centroids.T
    i, j = np.triu_indices(len(names), k=1)
    order = np.argsort(-sims[i, j], kind="stable")[:top]
    return [
        {"a": names[int(i[o])], "b": names[int(j[o])], "similarity": float(sims[i[o], j[o]])}
        for o in order.tolist()
    ]


#: The console's API answers hold routes and texts, read with a key where one is set:
#: kept out of the browser's disk cache, where "no-cache" let them be stored.
_API_HEADERS = {**_SECURITY_HEADERS, "Cache-Control": "no-store"}


def _json(payload: Any) -> Response:
    return Response(
        json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")),
        media_type=_JSON,
        headers=_API_HEADERS,
    )


def _rounded(values: NDArray[np.float32]) -> list[float]:
    # Four decimals are finer than a pixel at any map size, and keep 15k points small.
    return [float(v) for v in np.round(values.astype(np.float64), 4).tolist()]


def _asset(name: str) -> bytes:
    return (
        resources.files(__package__ or "synaptoroute.server")
        .joinpath("console")
        .joinpath(name)
        .read_bytes()
    )


def console_router(
    settings: ServerSettings,
    metrics: ServiceMetrics,
    get_router: Callable[[], AdaptiveRouter],
    change: Sequence[Any],
    read: Sequence[Any],
    admission: BatchAdmission,
    keyed: Sequence[Any] = (),
) -> APIRouter:
    """The console's pages and read-only API, to include in the service's app.

    Args:
        settings: the service's settings (what the page may offer to change).
        metrics: the service's metrics, read by the live figures.
        get_router: the open router (raises while the service starts or stops).
        change: the dependencies of the service's route-changing endpoints.
        read: the dependencies guarding the service's reads (``--auth-reads``): the
            console's data endpoints take them too; the page and its assets stay open.
        admission: the service's ``/route/batch`` admission: an evaluation upload is
            served through it (in chunks its queue can hold, counted among the batches
            in flight).
        keyed: the service's check of the bearer key alone (empty without a key): the
            page's key check uses it, so it accepts exactly the keys the route
            endpoints accept, on a read-only service too (where ``--auth-reads`` needs
            the key to read at all).
    """
    api = APIRouter(prefix="/console", include_in_schema=False, route_class=RouteNameRoute)
    changes = _ChangeTimes()
    live = _Live(metrics)
    views = _Views()
    if settings.read_only:
        access: Literal["open", "token", "read_only"] = "read_only"
    else:
        access = "token" if settings.api_key is not None else "open"
    assets = {name: _asset(name) for name in _ASSETS}  # read once: a missing file fails here

    @api.get("")
    async def console_root() -> Response:
        # Relative asset URLs in the page need the trailing slash. The Location is
        # relative too: "/console/" left a mount's prefix (or --root-path) behind.
        return RedirectResponse("console/", status_code=307, headers=_SECURITY_HEADERS)

    @api.get("/")
    async def console_page() -> Response:
        return Response(
            assets["index.html"], media_type=_ASSETS["index.html"], headers=_SECURITY_HEADERS
        )

    @api.get("/{asset}")
    async def console_asset(asset: str) -> Response:
        if asset not in _ASSETS or asset == "index.html":
            raise HTTPException(404, "Not Found")
        return Response(assets[asset], media_type=_ASSETS[asset], headers=_SECURITY_HEADERS)

    @api.get("/api/overview", dependencies=list(read))
    async def overview() -> Response:
        r = get_router()
        routes = r.list_routes()
        stamps = changes.observe(routes)
        default = r.threshold
        return _json(
            {
                "access": access,
                "threshold": default,
                "head": r.policy.head is not None,
                "routes": [
                    {
                        "name": route.name,
                        "utterances": len(route.utterances),
                        "threshold": route.threshold,
                        "effective_threshold": _effective(r, route),
                        "description": route.description,
                        "changed_at": stamps.get(route.name),
                    }
                    for route in routes
                ],
            }
        )

    @api.get("/api/routes/{name:path}", dependencies=list(read))
    async def route_details(name: RouteName) -> Response:
        r = get_router()
        route = r.get_route(_check_name(name))
        stamps = changes.observe(r.list_routes())
        return _json(
            {
                "name": route.name,
                "utterances": list(route.utterances),
                "description": route.description,
                "threshold": route.threshold,
                "effective_threshold": _effective(r, route),
                "metadata": dict(route.metadata),
                "changed_at": stamps.get(route.name),
            }
        )

    @api.get("/api/access", dependencies=list(keyed))
    async def check_access() -> Response:
        # Reached only past the key check: the key is right (or none is needed). Not
        # the change endpoints' checks: on a read-only service they refuse every key,
        # and with --auth-reads the page could then never be unlocked to read.
        return _json({"changes": not settings.read_only})

    @api.post("/api/try", dependencies=[*read, Depends(require_json_body)])
    async def try_query(body: TryRequest, request: Request) -> Response:
        r = get_router()
        timeout = settings.request_timeout
        # Queued together, so both usually ride in the same batch (one encoding).
        both = asyncio.gather(
            r.aquery(body.query, timeout=timeout),
            r.aquery_top_k(body.query, body.k, timeout=timeout),
        )
        answers = await _unless_gone(request, both)
        if answers is None:
            return _gone()
        decision, ranked = answers
        vector = await _query_vector(r, body.query)
        explained = await anyio.to_thread.run_sync(_explain, r, body, decision, ranked, vector)
        return _json(explained)

    @api.post("/api/evaluate", dependencies=list(read))
    async def evaluate(request: Request) -> Response:
        _check_upload_type(request.headers.get("content-type"))
        texts, labels = parse_jsonl(await request.body(), "upload")
        if len(texts) > MAX_EVALUATION_ROWS:
            msg = f"an evaluation upload holds at most {MAX_EVALUATION_ROWS} rows, got {len(texts)}"
            raise InvalidInputError(msg)
        r = get_router()
        # The routes as the upload starts: its labels are checked against them now,
        # not after the whole run (and a route deleted meanwhile is no bad label).
        routes = r.route_names
        label_indexes(labels, routes)
        # Through the batching worker like /route/batch: chunks of batch_chunk_cost
        # that its queue can hold (queries are served between two), at most
        # --max-batches-in-flight batches and evaluations at once (429 beyond). Each
        # chunk may wait the request timeout: an upload is bounded by its rows and the
        # body limit, not by --max-batch-cost or one query's timeout.
        run = admission.run(texts, r, settings.request_timeout, per_chunk=True)
        matches = await _unless_gone(request, run)  # a client gone gives its slot back
        if matches is None:
            return _gone()
        # And the routes answers name that were created while it ran.
        known = set(routes)
        routes += list(dict.fromkeys(m.name for m in matches if m.name and m.name not in known))
        report = await anyio.to_thread.run_sync(
            lambda: evaluate_matches(texts, labels, matches, routes)
        )
        doc = report.to_dict()
        doc["misrouted_total"] = len(doc["misrouted"])
        doc["misrouted"] = doc["misrouted"][:MAX_MISROUTED]
        return _json(_finite_json(doc))

    @api.post("/api/map", dependencies=[*read, Depends(require_json_body)])
    async def utterance_map(body: MapRequest, request: Request) -> Response:
        r = get_router()
        vector = None
        if body.query:
            # Encoded by the batching worker like any query, so its queue limits and
            # overload refusals apply; the vector is then read from the router's cache.
            query = r.aquery(body.query, timeout=settings.request_timeout)
            if await _unless_gone(request, query) is None:
                return _gone()
            vector = await _query_vector(r, body.query)
        return _json(await anyio.to_thread.run_sync(_map, r, views, vector, body.query))

    @api.get("/api/stats", dependencies=list(read))
    async def stats() -> Response:
        routes = get_router().list_routes()
        changes.observe(routes)
        return _json(
            {
                **live.figures(),
                "queue_depth": metrics.queue_depth.value,
                "in_flight": max(metrics.in_flight.value - 1, 0.0),  # not this request
                "routes": len(routes),
                "utterances": sum(len(route.utterances) for route in routes),
            }
        )

    return api


def _effective(router: AdaptiveRouter, route: Route) -> float:
    if route.threshold is not None:
        return route.threshold
    return float(router.policy.thresholds.get(route.name, router.threshold))


async def _query_vector(router: AdaptiveRouter, query: str) -> NDArray[np.float32] | None:
    """The query's embedding through the router's own cache (keyed by the text the
    encoder reads), so a query the router has just answered is not encoded again."""
    if reads_nothing_of(router.encoder)(query):  # an empty query: nothing to place
        return None
    vectors = await anyio.to_thread.run_sync(router._embed, [query])
    first: NDArray[np.float32] = vectors[0]
    return first


#: Media types an evaluation upload may declare: none a cross-site form or "simple"
#: request can send, so a browser asks the service first (CORS) and it refuses.
UPLOAD_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/json"})


def _check_upload_type(content_type: str | None) -> None:
    """Refuse an evaluation upload not declared as JSON lines (415).

    Raises:
        HTTPException: 415, naming the types taken.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in UPLOAD_TYPES:
        taken = ", ".join(sorted(UPLOAD_TYPES))
        got = media or "none"
        raise HTTPException(415, f"an evaluation upload must be sent as {taken}, not {got}")


def _explain(
    router: AdaptiveRouter,
    body: TryRequest,
    decision: RouteMatch,
    ranked: list[RouteMatch],
    vector: NDArray[np.float32] | None,
) -> dict[str, Any]:
    """The decision, the ranked routes with their nearest utterances, and what decided."""
    names = [m.name for m in ranked if m.name is not None]
    nearest: dict[str, list[dict[str, Any]]] = {}
    if vector is not None:
        nearest = _nearest(_snapshot(router), vector, names, body.nearest)
    head = router.policy.head
    # The router asks the head only when it ranked routes and no negative example
    # decided first: an empty query was shown as "decided by the head".
    by_head = (
        head is not None
        and bool(names)
        and decision.reason not in ("empty_query", "no_routes", "negative_example")
        and head.columns_of(names[: head.top_k]) is not None
    )
    # A hybrid head also weighs each route's lexical (word overlap) score, and reads
    # the query's n-gram features.
    lexical = float(head.beta) if head is not None and by_head else 0.0
    ngrams = head.ngrams if head is not None and by_head else None
    return {
        "decision": RouteResult.from_match(decision).model_dump(),
        "margin": decision.margin,
        "decided_by": (
            "negative_example"
            if decision.reason == "negative_example"
            else "head"
            if by_head
            else "threshold"
        ),
        "lexical_weight": lexical or None,
        "ngram_features": None if ngrams is None else len(ngrams),
        "top": [
            {
                "route": m.name,
                "score": m.score,
                "threshold": m.threshold,
                "passed": m.reason == "matched",
                "nearest": nearest.get(m.name or "", []),
            }
            for m in ranked
        ],
    }


def _map(
    router: AdaptiveRouter, views: _Views, vector: NDArray[np.float32] | None, query: str | None
) -> dict[str, Any]:
    projection, pairs = views.projection(_snapshot(router))
    placed = None
    if vector is not None and len(projection.texts):
        x, y = projection.place(vector)
        placed = {"text": query, "x": x, "y": y}
    return {
        "routes": projection.routes,
        "x": _rounded(projection.coords[:, 0]),
        "y": _rounded(projection.coords[:, 1]),
        "route": projection.route_ids.tolist(),
        # Point labels for hovering only while they stay a small part of the answer.
        "texts": projection.texts if len(projection.texts) <= MAP_TEXTS_MAX else None,
        "explained": list(projection.explained),
        "query": placed,
        "closest_pairs": pairs,
    }
