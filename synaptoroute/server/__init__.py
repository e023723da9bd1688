"""The HTTP service (extra ``server``): a FastAPI app over :class:`~synaptoroute.AdaptiveRouter`.

Run it with ``synaptoroute serve`` or build it with :func:`create_app`. Importing
this package is cheap; FastAPI is imported when the app is first asked for, and a
missing extra raises :class:`~synaptoroute.MissingDependencyError` naming it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..exceptions import MissingDependencyError, install_hint

if TYPE_CHECKING:
    from .app import ServiceState, create_app, run
    from .routes_file import RoutesDocument, apply_routes, dump_routes, load_routes_file
    from .settings import API_KEY_ENV, ServerSettings

__all__ = [
    "API_KEY_ENV",
    "RoutesDocument",
    "ServerSettings",
    "ServiceState",
    "apply_routes",
    "create_app",
    "dump_routes",
    "load_routes_file",
    "run",
]

_HOMES = {
    "ServiceState": "app",
    "create_app": "app",
    "run": "app",
    "RoutesDocument": "routes_file",
    "apply_routes": "routes_file",
    "dump_routes": "routes_file",
    "load_routes_file": "routes_file",
    "API_KEY_ENV": "settings",
    "ServerSettings": "settings",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    try:
        module = importlib.import_module(f"{__name__}.{home}")
    except ImportError as exc:
        if isinstance(exc, MissingDependencyError) or exc.name not in {
            "fastapi",
            "starlette",
            "uvicorn",
            "anyio",
        }:
            raise
        msg = f"the HTTP service needs the 'server' extra: {install_hint('server')} ({exc})"
        raise MissingDependencyError(msg) from exc
    return getattr(module, name)
