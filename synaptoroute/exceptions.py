"""Errors raised by synaptoroute.

Every error derives from :class:`SynaptorouteError` and also from the builtin it
resembles, so ``except KeyError`` or ``except ValueError`` written for 0.1.0 keeps
working::

    SynaptorouteError
    ├── InvalidInputError (ValueError)        bad query or argument; nothing was changed
    ├── RouteNotFoundError (KeyError)         an unknown route name
    ├── RouteExistsError (ValueError)         add_route on an existing name without replace=True
    ├── NoRouteMatchedError (ValueError)      an integration was asked to route and nothing matched
    ├── MissingDependencyError (ImportError)  an optional extra is not installed
    │   └── AnnUnavailableError               index="ann" without usearch (synaptoroute.ann)
    ├── EncoderError (RuntimeError)           the model failed to load or to encode
    │   └── ModelNotAvailableError (OSError)  a model cannot be found or downloaded
    ├── StorageError (RuntimeError)           the store cannot be read or written
    │   ├── NotADatabaseError                 the file is not a synaptoroute store, or corrupt
    │   ├── PolicyNotStoredError              a route change stored, its policy not
    │   └── ModelMismatchError (ValueError)   stored vectors come from another model/dimension
    ├── RouterOverloadedError (RuntimeError)  the batching queue is full; retry later
    ├── RouterClosedError (RuntimeError)      the router was stopped while the call waited
    ├── RouterTimeoutError (TimeoutError)     a per-call timeout expired
    └── EventLoopMismatchError (RuntimeError) a bare BatchWorker used from a second event loop
"""

from __future__ import annotations

__all__ = [
    "EncoderError",
    "EventLoopMismatchError",
    "InvalidInputError",
    "MissingDependencyError",
    "ModelMismatchError",
    "ModelNotAvailableError",
    "NoRouteMatchedError",
    "NotADatabaseError",
    "PolicyNotStoredError",
    "RouteExistsError",
    "RouteNotFoundError",
    "RouterClosedError",
    "RouterOverloadedError",
    "RouterTimeoutError",
    "StorageError",
    "SynaptorouteError",
]


class SynaptorouteError(Exception):
    """Base class of every error raised by synaptoroute."""


class InvalidInputError(SynaptorouteError, ValueError):
    """An argument or query is not acceptable; nothing was changed."""


class RouteNotFoundError(SynaptorouteError, KeyError):
    """A route name that the router does not hold."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown route: {self.name!r}"


class RouteExistsError(SynaptorouteError, ValueError):
    """``add_route`` was called with an existing name and ``replace=False``."""


class NoRouteMatchedError(SynaptorouteError, ValueError):
    """Routing was required (no default or fallback) and no route passed its threshold."""


class MissingDependencyError(SynaptorouteError, ImportError):
    """An optional extra is needed; the message names the ``pip install`` command."""


#: This project's source. The package index's ``synaptoroute`` is another publisher's
#: project, so install commands name a checkout of this repository, never the index.
SOURCE_URL = "https://github.com/synaptoroute/synaptoroute"


def install_hint(extra: str, folder: str = ".") -> str:
    """The command that adds an optional extra of one of this project's packages.

    Args:
        extra: the extra's name, e.g. ``"plot"``.
        folder: the package's folder in the checkout (``"."`` for the core,
            ``"integrations/langchain"`` for the LangChain package).

    Returns:
        e.g. ``pip install '.[plot]'`` run in a checkout of this repository.
    """
    return f"pip install '{folder}[{extra}]' in a checkout of {SOURCE_URL}"


class EncoderError(SynaptorouteError, RuntimeError):
    """The embedding model failed to load or to encode."""


class ModelNotAvailableError(EncoderError, OSError):
    """A model cannot be found locally or fetched; the message says how to supply it."""


class StorageError(SynaptorouteError, RuntimeError):
    """The store cannot be opened, read or written; the store is left as it was."""


class PolicyNotStoredError(StorageError):
    """A route change was stored and is served, but storing the decision policy
    reconciled with it failed: the router and the store keep the previous policy until
    the next change of the routes or of the policy. The route change is done: retrying
    it would find it made (a 409 or 404 over HTTP)."""


class NotADatabaseError(StorageError):
    """The file is not a synaptoroute store, or it is corrupt. It is left untouched."""


class ModelMismatchError(StorageError, ValueError):
    """Stored vectors were made by a different model or have a different dimension."""


class RouterOverloadedError(SynaptorouteError, RuntimeError):
    """The batching queue is full; the call was refused at once. Retry later."""


class RouterClosedError(SynaptorouteError, RuntimeError):
    """The router was stopped before the call could be served."""


class RouterTimeoutError(SynaptorouteError, TimeoutError):
    """The call's ``timeout`` expired before its batch was served."""


class EventLoopMismatchError(SynaptorouteError, RuntimeError):
    """A bare :class:`~synaptoroute.batching.BatchWorker` runs on one event loop and was
    called from another. A router never raises it: it gives each loop its own worker."""
