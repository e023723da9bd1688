from __future__ import annotations

import inspect

import synaptoroute.exceptions as exc_module
from synaptoroute.exceptions import (
    MissingDependencyError,
    ModelMismatchError,
    RouteNotFoundError,
    RouterTimeoutError,
    SynaptorouteError,
)


def test_every_error_has_the_base_and_is_exported() -> None:
    classes = [
        obj
        for _, obj in inspect.getmembers(exc_module, inspect.isclass)
        if obj.__module__ == exc_module.__name__
    ]
    assert classes
    for cls in classes:
        assert issubclass(cls, SynaptorouteError)
        assert cls.__name__ in exc_module.__all__
        assert cls.__doc__


def test_errors_subclass_the_builtin_they_resemble() -> None:
    assert issubclass(RouteNotFoundError, KeyError)
    assert issubclass(ModelMismatchError, ValueError)
    assert issubclass(MissingDependencyError, ImportError)
    assert issubclass(RouterTimeoutError, TimeoutError)
    assert str(RouteNotFoundError("x")) == "unknown route: 'x'"
