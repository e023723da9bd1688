"""PostgreSQL storage with a change feed: many router replicas, one source of truth.

The code lives in :mod:`synaptoroute.storage.postgres` (the store),
:mod:`synaptoroute.storage.follower` (its follower) and
:mod:`synaptoroute.storage.changes` (what followers receive); this module keeps the
0.2.0 import path. Needs the optional extra ``postgres`` (psycopg 3).
"""

from .storage.base import is_database_url, open_storage
from .storage.changes import Change, ChangeKind
from .storage.follower import Watch
from .storage.postgres import SCHEMA_VERSION, PostgresStorage

__all__ = [
    "SCHEMA_VERSION",
    "Change",
    "ChangeKind",
    "PostgresStorage",
    "Watch",
    "is_database_url",
    "open_storage",
]
