"""A store that lives and dies with the process: the default when none is given."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._fork import STORE, hold_across_fork
from ..exceptions import RouteNotFoundError
from ..models import Route
from .base import (
    ModelInfo,
    StoredRoute,
    _check_vectors,
    _refuse_mixing,
    check_route,
    new_texts,
)

__all__ = ["MemoryStorage"]


class MemoryStorage:
    """A store that lives and dies with the process."""

    def __init__(self) -> None:
        self._routes: dict[str, StoredRoute] = {}
        self._model: ModelInfo | None = None
        self._state: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        hold_across_fork(self, STORE)

    def model_info(self) -> ModelInfo | None:
        """The model of the stored vectors."""
        return self._model

    def load(self) -> list[StoredRoute]:
        """Every stored route."""
        with self._lock:
            return list(self._routes.values())

    def put_route(self, route: Route, vectors: NDArray[np.float32], model: ModelInfo) -> None:
        """Create or replace one route (see :meth:`put_routes`)."""
        self.put_routes([StoredRoute(route, vectors)], model)

    def put_routes(self, routes: Sequence[StoredRoute], model: ModelInfo) -> None:
        """Create or replace routes, all at once."""
        for item in routes:
            _check_vectors(item.route.utterances, item.vectors, model)
            check_route(item.route)
        with self._lock:
            if routes:
                _refuse_mixing(self._model, model, self._holds_no_vector)
                self._model = model
            for item in routes:  # a route replaced keeps its place, as in the SQL stores
                self._routes[item.route.name] = StoredRoute(item.route, item.vectors.copy())

    def _holds_no_vector(self) -> bool:
        # As the SQL stores ask: routes left without utterances hold no vector either.
        return not any(len(item.vectors) for item in self._routes.values())

    def _get(self, name: str) -> StoredRoute:
        try:
            return self._routes[name]
        except KeyError:
            raise RouteNotFoundError(name) from None

    def add_utterances(
        self, name: str, texts: Sequence[str], vectors: NDArray[np.float32], model: ModelInfo
    ) -> None:
        """Append utterances (see :meth:`Storage.add_utterances`)."""
        _check_vectors(texts, vectors, model)
        with self._lock:
            old = self._get(name)
            _refuse_mixing(self._model, model, self._holds_no_vector)
            self._model = model
            keep = new_texts(old.route.utterances, texts)
            added = [texts[i] for i in keep]
            route = old.route.model_copy(update={"utterances": [*old.route.utterances, *added]})
            self._routes[name] = StoredRoute(route, np.vstack([old.vectors, vectors[keep]]))

    def delete_route(self, name: str) -> None:
        """Remove a route."""
        with self._lock:
            self._get(name)
            del self._routes[name]

    def delete_utterances(self, name: str, texts: Sequence[str]) -> None:
        """Remove utterances."""
        drop = set(texts)
        with self._lock:
            old = self._get(name)
            keep = [i for i, t in enumerate(old.route.utterances) if t not in drop]
            route = old.route.model_copy(
                update={"utterances": [old.route.utterances[i] for i in keep]}
            )
            self._routes[name] = StoredRoute(route, old.vectors[keep])

    def update_route(self, route: Route) -> None:
        """Store a route's settings."""
        check_route(route)
        with self._lock:
            old = self._get(route.name)
            new = route.model_copy(update={"utterances": old.route.utterances})
            self._routes[route.name] = StoredRoute(new, old.vectors)

    def replace_all(self, routes: Sequence[StoredRoute], model: ModelInfo) -> None:
        """Replace everything."""
        for item in routes:
            _check_vectors(item.route.utterances, item.vectors, model)
            check_route(item.route)
        with self._lock:
            self._routes = {item.route.name: item for item in routes}
            self._model = model

    def get_state(self, key: str) -> dict[str, Any] | None:
        """A stored JSON document."""
        value = self._state.get(key)
        return json.loads(json.dumps(value)) if value is not None else None

    def set_state(self, key: str, value: dict[str, Any] | None) -> None:
        """Store a JSON document."""
        with self._lock:
            if value is None:
                self._state.pop(key, None)
            else:
                self._state[key] = json.loads(json.dumps(value))

    def close(self) -> None:
        """Nothing to release."""
