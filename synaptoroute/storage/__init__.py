"""Persistence: routes, utterances, their vectors (with model id and dimension), and state.

:class:`SQLiteStorage` keeps everything in one SQLite file (WAL mode, one transaction
per mutation, a versioned schema). :class:`MemoryStorage` keeps it in dicts and is
used when no storage is given. Both satisfy :class:`Storage`, which the PostgreSQL
back end (:mod:`synaptoroute.postgres`) implements too.
"""

from .base import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    ModelInfo,
    Storage,
    StoredRoute,
    WatchableStorage,
    check_route,
    is_database_url,
    metadata_json,
    open_storage,
)
from .memory import MemoryStorage
from .sqlite import MIGRATIONS, SCHEMA_VERSION, Durability, SQLiteStorage

__all__ = [
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Durability",
    "MemoryStorage",
    "ModelInfo",
    "SQLiteStorage",
    "Storage",
    "StoredRoute",
    "WatchableStorage",
    "check_route",
    "is_database_url",
    "metadata_json",
    "open_storage",
]
