"""synaptoroute: a local semantic router.

Sends a text to one of several named routes by comparing its embedding with each
route's example utterances, in milliseconds, on a CPU.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

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
from .storage import MemoryStorage, SQLiteStorage, Storage

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
    "EventLoopMismatchError",
    "HashingEncoder",
    "InvalidInputError",
    "MemoryStorage",
    "MissingDependencyError",
    "ModelMismatchError",
    "ModelNotAvailableError",
    "NoRouteMatchedError",
    "NotADatabaseError",
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
]
