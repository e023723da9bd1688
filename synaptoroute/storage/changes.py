"""The changes a store with a change feed delivers to the routers that follow it, and
how one is applied to a router's routes and index (:func:`apply_change`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from ..models import Route
from .base import ModelInfo, StoredRoute, new_texts

if TYPE_CHECKING:
    from ..index import RouteIndex

__all__ = ["Change", "ChangeKind", "apply_change", "install_route"]

ChangeKind = Literal[
    "put_route",  # a route created or replaced, with all its utterances and vectors
    "add_utterances",  # utterances (and vectors) appended to a route
    "delete_route",
    "delete_utterances",
    "update_route",  # description, threshold, metadata; utterances unchanged
    "set_state",  # a JSON document set (or deleted) under a key
    "reload",  # everything: the whole store as of ``seq``
    "resync",  # exact state of the routes in ``names`` (and keys in ``state``) as of ``seq``
]


@dataclass(frozen=True)
class Change:
    """One committed change, as a follower receives it. Carries vectors, never text to encode.

    ``resync`` and ``reload`` are made by the storage rather than read from the log:
    ``reload`` after another replica replaced everything or the log was pruned past
    the follower; ``resync`` after this replica's write raced another replica's.
    """

    seq: int
    kind: ChangeKind
    name: str | None = None  # the route, or the state key for ``set_state``
    route: Route | None = None  # ``put_route`` (with utterances) and ``update_route``
    texts: tuple[str, ...] = ()
    vectors: NDArray[np.float32] | None = None
    model: ModelInfo | None = None  # the model of ``vectors`` / ``routes``
    routes: tuple[StoredRoute, ...] = ()  # ``reload``: all routes; ``resync``: those that exist
    names: tuple[str, ...] = ()  # ``resync``: every route to reset (absent from routes: deleted)
    # ``resync``/``reload``: routes deleted and created again since the follower's last
    # look (a new row, last in the store): installed anew, last, not in their old place.
    moved: tuple[str, ...] = ()
    state: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    origin: str = ""


def install_route(
    routes: dict[str, Route], index: RouteIndex, route: Route, vectors: NDArray[np.float32]
) -> None:
    """Put ``route`` and its utterances' ``vectors`` into ``routes`` and ``index``,
    replacing a route of the same name: the one step of a local add and of a
    replica's ``put_route`` / ``reload``. Queries never see the route missing.

    A route already held as it is keeps its rows (its own write read back by a SQLite
    poll, most of a reload): same model, same texts, same vectors. Only if the index
    holds exactly its texts: a reload still repairs an index a failed change left
    apart from the routes."""
    if routes.get(route.name) == route and sorted(index.texts_of(route.name)) == sorted(
        route.utterances
    ):
        return
    with index.changing():
        if route.name in routes:
            # Its rows go, the route stays: a replaced route keeps its place among the
            # routes (ties go to the earlier one), as the stores keep its row, so a
            # writer, its followers and a reopened router rank and list alike.
            index.delete_texts(route.name, index.texts_of(route.name))
        routes[route.name] = route
        index.add(route.name, vectors, route.utterances)


def apply_change(
    change: Change, routes: Mapping[str, Route], index: RouteIndex
) -> dict[str, Route]:
    """Apply ``change`` to ``index`` and to a copy of ``routes``; return the new routes.

    The vectors come with the change: nothing is encoded. A change to a route this
    replica does not have (it was deleted since) changes nothing. The caller holds the
    lock that guards both and checks that the change's model is its own.

    Args:
        change: the committed change.
        routes: the router's routes by name (not modified).
        index: the router's index (modified).
    """
    out = dict(routes)
    name = change.name or ""
    current = out.get(name)
    vectors = (
        change.vectors
        if change.vectors is not None
        else np.zeros((0, index.dimension), dtype=np.float32)
    )
    if change.kind == "put_route" and change.route is not None:
        install_route(out, index, change.route, vectors)
    elif change.kind == "add_utterances" and current is not None:
        new = new_texts(current.utterances, change.texts)
        if new:
            texts = [change.texts[i] for i in new]
            index.add(name, vectors[new], texts)
            out[name] = current.model_copy(update={"utterances": [*current.utterances, *texts]})
    elif change.kind == "delete_route" and current is not None:
        del out[name]
        index.delete_route(name)
    elif change.kind == "delete_utterances" and current is not None:
        drop = set(change.texts) & set(current.utterances)
        if drop:
            index.delete_texts(name, sorted(drop))
            out[name] = current.model_copy(
                update={"utterances": [u for u in current.utterances if u not in drop]}
            )
    elif change.kind == "update_route" and current is not None and change.route is not None:
        out[name] = change.route.model_copy(update={"utterances": current.utterances})
    elif change.kind in ("reload", "resync"):
        reset = list(out) if change.kind == "reload" else list(change.names)
        kept = {item.route.name for item in change.routes}  # install_route replaces them
        with index.changing():  # queries see the routes before or after, never between
            # Deleted, or deleted and created again (installed anew below, last).
            for old in [*(n for n in reset if n not in kept), *change.moved]:
                if out.pop(old, None) is not None:
                    index.delete_route(old)
            for item in change.routes:
                install_route(out, index, item.route, item.vectors)
    return out
