"""What every storage back end shares: the protocol, the stored types, validation.

The back ends are :class:`~synaptoroute.storage.memory.MemoryStorage`,
:class:`~synaptoroute.storage.sqlite.SQLiteStorage` and
:class:`~synaptoroute.postgres.PostgresStorage`; ``tests/test_storage_contract.py``
runs one suite over the three.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from numpy.typing import NDArray

from ..exceptions import InvalidInputError, StorageError
from ..models import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    NEGATIVES_ROUTE,
    Route,
    metadata_shape_problem,
)

if TYPE_CHECKING:
    from .changes import Change

__all__ = [
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "ModelInfo",
    "Storage",
    "StoredRoute",
    "WatchableStorage",
    "check_route",
    "check_store_path",
    "is_database_url",
    "metadata_json",
    "open_storage",
    "pre_negatives_route_error",
    "redact_url",
    "stored_model",
]

_log = logging.getLogger("synaptoroute.storage")
_SURROGATE = re.compile("[\ud800-\udfff]")
# MAX_METADATA_DEPTH (models): the deepest nesting of a route's metadata. JSON
# encoders and pydantic serialisers recurse per level, so an unbounded depth would
# fail when the route is read back.


def metadata_json(metadata: dict[str, Any]) -> str:
    """Serialise route metadata for the store, refusing what could not be read back.

    Raises:
        InvalidInputError: a string is not valid Unicode (a lone surrogate), a
            number is NaN or infinite, a value is not JSON, a key is not a ``str``,
            the nesting is deeper than :data:`MAX_METADATA_DEPTH` or the text longer than
            :data:`MAX_METADATA_BYTES`. Nothing is written.
    """
    problem = metadata_shape_problem(metadata)
    if problem is not None:
        raise InvalidInputError(problem)
    try:
        text = json.dumps(metadata, ensure_ascii=False, allow_nan=False)
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        msg = "metadata must be valid Unicode (no lone surrogates)"
        raise InvalidInputError(msg) from None
    except (TypeError, ValueError) as exc:
        msg = f"metadata must be JSON without NaN or infinite numbers ({exc})"
        raise InvalidInputError(msg) from None
    if size > MAX_METADATA_BYTES:
        msg = f"metadata is {size} bytes as JSON, more than {MAX_METADATA_BYTES}"
        raise InvalidInputError(msg)
    return text


def _read_metadata(text: str, route: str) -> dict[str, Any]:
    """Stored metadata; lone surrogates that older versions let in become U+FFFD."""
    if text == "{}":  # most routes: skips a JSON parse per route when a store opens
        return {}
    value: dict[str, Any] = json.loads(text)
    if "\\ud" not in text.lower():  # the only way a surrogate is stored: an escape
        return value
    dumped = json.dumps(value, ensure_ascii=False)
    try:
        dumped.encode("utf-8")
    except UnicodeEncodeError:
        _log.warning("route %r: invalid Unicode in stored metadata replaced by U+FFFD", route)
        repaired: dict[str, Any] = json.loads(_SURROGATE.sub("\ufffd", dumped))
        return repaired
    return value


def _check_unicode(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        msg = f"{what} must be valid Unicode (no lone surrogates)"
        raise InvalidInputError(msg) from None


def check_route(route: Route) -> str:
    """Check that ``route`` can be stored and read back; returns its metadata as JSON.

    Raises:
        InvalidInputError: see :func:`metadata_json`; also a name, description or
            utterance that is not valid Unicode.
    """
    _check_unicode(route.name, "route name")
    if route.description is not None:
        _check_unicode(route.description, "description")
    for text in route.utterances:
        _check_unicode(text, "utterance")
    try:
        return metadata_json(route.metadata)
    except InvalidInputError as exc:
        # Named: a route stored before the limits existed is refused on its next change
        # (a threshold set), whose caller gave no metadata at all.
        msg = (
            f"route {route.name!r}: {exc} (limits since 0.3: a route stored before "
            "with more is changed only by replacing it with smaller metadata)"
        )
        raise InvalidInputError(msg) from None


@dataclass(frozen=True)
class ModelInfo:
    """Which encoder made the stored vectors."""

    model_id: str
    dimension: int


def stored_model(rows: dict[str, Any], store: str) -> ModelInfo | None:
    """The model record of a store's ``meta`` rows (``model_id``, ``dimension``), or
    ``None`` for a store that records none yet.

    Raises:
        StorageError: the record was damaged outside the library (a dimension that is
            not a positive whole number, or missing); it names ``store``.
    """
    model_id, dimension = rows.get("model_id"), rows.get("dimension")
    if model_id is None:
        return None
    # Any str id: 0.2 stored ids unchecked (an empty one too), and reencode=True must
    # still be able to move such a store to a model of its own.
    if not isinstance(model_id, str) or not re.fullmatch(
        r"[1-9][0-9]{0,8}", str(dimension) if dimension is not None else ""
    ):
        # int() of it raised a bare ValueError, or a KeyError (a RouteNotFoundError's
        # parent) for a missing row, naming no store.
        msg = (
            f"{store} records a damaged model (model_id {model_id!r}, dimension "
            f"{dimension!r}); it was left untouched"
        )
        raise StorageError(msg)
    return ModelInfo(model_id, int(str(dimension)))


@dataclass(frozen=True)
class StoredRoute:
    """A route as stored: its model and one vector per utterance (same order)."""

    route: Route
    vectors: NDArray[np.float32]


@runtime_checkable
class Storage(Protocol):
    """What the router needs from a store. Every mutation is atomic."""

    def model_info(self) -> ModelInfo | None:
        """The model that made the stored vectors, or ``None`` for an empty store."""
        ...

    def load(self) -> list[StoredRoute]:
        """Every route with its vectors, in insertion order."""
        ...

    def put_routes(self, routes: Sequence[StoredRoute], model: ModelInfo) -> None:
        """Create or replace these routes and all their utterances, in one transaction."""
        ...

    def add_utterances(
        self, name: str, texts: Sequence[str], vectors: NDArray[np.float32], model: ModelInfo
    ) -> None:
        """Append utterances to an existing route.

        A text the route already has, or one repeated in ``texts``, is stored once:
        the first row stays where it is, with its vector (every back end, and a
        replica applying the change, agree).
        """
        ...

    def delete_route(self, name: str) -> None:
        """Remove a route and its utterances."""
        ...

    def delete_utterances(self, name: str, texts: Sequence[str]) -> None:
        """Remove some utterances of a route."""
        ...

    def update_route(self, route: Route) -> None:
        """Store a route's description, threshold and metadata (not its utterances)."""
        ...

    def replace_all(self, routes: Sequence[StoredRoute], model: ModelInfo) -> None:
        """Replace the whole content (used to re-encode under a new model)."""
        ...

    def get_state(self, key: str) -> dict[str, Any] | None:
        """A JSON document stored under ``key`` (fitted state, settings)."""
        ...

    def set_state(self, key: str, value: dict[str, Any] | None) -> None:
        """Store (or with ``None`` delete) a JSON document."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...


@runtime_checkable
class WatchableStorage(Storage, Protocol):
    """A storage with a change feed (:class:`~synaptoroute.postgres.PostgresStorage`).

    A router on such a store follows it: other replicas' committed changes reach the
    router through :meth:`watch` and are applied from the vectors they carry, without
    encoding and without writing back.
    """

    def watch(
        self,
        callback: Callable[[Sequence[Change]], None],
        *,
        lock: threading.RLock | None = None,
        since: int | None = None,
        weak: bool = False,
    ) -> Any:
        """Call ``callback`` with every change other writers commit, in order; with
        ``weak``, a bound method is held weakly, and following ends once its object
        is collected (a router dropped without ``close()``)."""
        ...


def _refuse_mixing(
    stored: ModelInfo | None, model: ModelInfo, is_empty: Callable[[], bool]
) -> None:
    """Every backend refuses to store vectors of another model beside the stored ones.

    ``is_empty`` (asked only when the models differ, so a write of the same model
    pays nothing): whether the store holds no vector any more (every route was
    deleted), in which case the model it records is no one's and the new one takes
    its place.
    """
    if stored is not None and stored != model and not is_empty():
        msg = (
            f"store holds vectors of {stored.model_id!r} (dimension {stored.dimension}), "
            f"refusing to mix in {model.model_id!r} (dimension {model.dimension})"
        )
        raise StorageError(msg)


def new_texts(have: Sequence[str], texts: Sequence[str]) -> list[int]:
    """Positions in ``texts`` of the texts an ``add_utterances`` keeps: not in
    ``have``, and not repeated earlier in ``texts``."""
    seen = set(have)
    keep = []
    for i, text in enumerate(texts):
        if text not in seen:
            seen.add(text)
            keep.append(i)
    return keep


def _check_vectors(texts: Sequence[str], vectors: NDArray[np.float32], model: ModelInfo) -> None:
    """Check utterances about to be written with their vectors (every backend calls it)."""
    if vectors.shape != (len(texts), model.dimension):
        msg = f"expected vectors of shape ({len(texts)}, {model.dimension}), got {vectors.shape}"
        raise StorageError(msg)
    for text in texts:
        _check_unicode(text, "utterance")


_URL_PREFIXES = ("postgresql://", "postgres://")


def pre_negatives_route_error() -> StorageError:
    """The refusal of a store written before negative examples existed (0.2.0) that
    holds a route of their reserved name: migrated, that route would silently become
    negative examples (hidden, its metadata too, rejecting what it matched)."""
    msg = (
        f"the store (written before negative examples existed, by 0.2.0 or "
        f"earlier) holds a route named {NEGATIVES_ROUTE!r}, a name this version "
        "keeps for negative examples; rename that route with the version that "
        "wrote the store (delete it and add it under another name), then open it again"
    )
    return StorageError(msg)


def is_database_url(target: str | os.PathLike[str]) -> bool:
    """Whether ``target`` names a PostgreSQL server rather than a SQLite file."""
    return os.fspath(target).startswith(_URL_PREFIXES)


def redact_url(target: str) -> str:
    """``target`` with a PostgreSQL URL's password (in its user part or its query)
    shown as ``***``; any other ``target`` as it is."""
    if not is_database_url(target):
        return target
    parts = urlsplit(target)
    user, at, host = parts.netloc.rpartition("@")
    if at and ":" in user:
        user = user.split(":", 1)[0] + ":***"
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urlunsplit(parts._replace(netloc=f"{user}{at}{host}", query=query))


# A URL of another scheme ("postgresql+psycopg://", "PostgreSQL://") or a libpq
# "key=value" string is no SQLite path: opened as one, it made a file (and folders)
# named after it, password included, and the router served an empty store.
_OTHER_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_CONNINFO = re.compile(r"\s*(?:\w+\s*=\s*(?:'(?:[^'\\]|\\.)*'|\S+)\s*)+")
_CONNINFO_KEYS = re.compile(
    r"(?:^|\s)(?:host|hostaddr|port|dbname|user|password|passfile|service|sslmode)\s*=",
    re.IGNORECASE,
)


def check_store_path(target: str | os.PathLike[str]) -> None:
    """Refuse, as a SQLite path, what names a server another way than
    ``postgresql://``: the message does not show it (it may hold a password).

    Raises:
        InvalidInputError: ``target`` starts with a URL scheme other than
            ``postgresql://``/``postgres://``, or reads as a libpq connection string.
    """
    path = os.fspath(target)
    if is_database_url(path):
        return
    scheme = _OTHER_URL.match(path)
    # A connection string is key=value pairs from end to end ("./a user=b.db" is a path).
    conninfo = _CONNINFO.fullmatch(path) is not None and _CONNINFO_KEYS.search(path) is not None
    if scheme is None and not conninfo:
        return
    what = f"a URL ({path[: scheme.end()]}...)" if scheme else "a libpq connection string"
    msg = (
        f"a store is a SQLite path or a 'postgresql://' URL (lower case), not {what}: give "
        "a server as postgresql://user@host:port/db (what was given is not shown: it may "
        "hold a password); for a file whose name holds '://' or '=', start the path with './'"
    )
    raise InvalidInputError(msg)


def open_storage(target: str | os.PathLike[str], **options: Any) -> Storage:
    """Open a store from a URL or path: ``postgresql://...`` or a SQLite file.

    Args:
        target: a ``postgresql://`` / ``postgres://`` URL, or a SQLite path.
        options: passed to :class:`~synaptoroute.postgres.PostgresStorage` or
            :class:`SQLiteStorage`.
    """
    if is_database_url(target):
        from .postgres import PostgresStorage  # the driver only when it is needed

        return PostgresStorage(os.fspath(target), **options)
    from .sqlite import SQLiteStorage

    return SQLiteStorage(target, **options)
