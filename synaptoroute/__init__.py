"""synaptoroute: a local semantic router.

Sends a text to one of several named routes by comparing its embedding with each
route's example utterances, in milliseconds, on a CPU.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version
from typing import TYPE_CHECKING, Any

from .decision import DecisionPolicy
from .encoder import (
    DEFAULT_MODEL_ID,
    CallableEncoder,
    Encoder,
    EncoderProtocol,
    HashingEncoder,
    default_encoder,
)
from .exceptions import (
    EncoderError,
    EventLoopMismatchError,
    InvalidInputError,
    MissingDependencyError,
    ModelMismatchError,
    ModelNotAvailableError,
    NoRouteMatchedError,
    NotADatabaseError,
    PolicyNotStoredError,
    RouteExistsError,
    RouteNotFoundError,
    RouterClosedError,
    RouterOverloadedError,
    RouterTimeoutError,
    StorageError,
    SynaptorouteError,
)
from .models import Route, RouteMatch
from .router import AdaptiveRouter
from .storage import MemoryStorage, SQLiteStorage, Storage, open_storage

if TYPE_CHECKING:
    from .evaluation import EvaluationReport
    from .fitting import FitReport
    from .storage.postgres import PostgresStorage

# Imported on first use, so that ``import synaptoroute`` stays light (no fitting,
# evaluation or PostgreSQL code until they are needed).
_LAZY = {
    "EvaluationReport": "evaluation",
    "FitReport": "fitting",
    "PostgresStorage": "storage.postgres",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'synaptoroute' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


try:  # the version is written once, in pyproject.toml; the installed metadata carries it
    __version__ = _distribution_version("synaptoroute")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_MODEL_ID",
    "AdaptiveRouter",
    "CallableEncoder",
    "DecisionPolicy",
    "Encoder",
    "EncoderError",
    "EncoderProtocol",
    "EvaluationReport",
    "EventLoopMismatchError",
    "FitReport",
    "HashingEncoder",
    "InvalidInputError",
    "MemoryStorage",
    "MissingDependencyError",
    "ModelMismatchError",
    "ModelNotAvailableError",
    "NoRouteMatchedError",
    "NotADatabaseError",
    "PolicyNotStoredError",
    "PostgresStorage",
    "Route",
    "RouteExistsError",
    "RouteMatch",
    "RouteNotFoundError",
    "RouterClosedError",
    "RouterOverloadedError",
    "RouterTimeoutError",
    "SQLiteStorage",
    "Storage",
    "StorageError",
    "SynaptorouteError",
    "__version__",
    "default_encoder",
    "open_storage",
]
