"""The changes a store with a change feed delivers to the routers that follow it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ..models import Route
from .base import ModelInfo, StoredRoute

__all__ = ["Change", "ChangeKind"]

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
    state: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    origin: str = ""
