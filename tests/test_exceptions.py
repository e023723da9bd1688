from __future__ import annotations

import inspect
import sys

import pytest

import synaptoroute.exceptions as exc_module
from synaptoroute import AdaptiveRouter, HashingEncoder
from synaptoroute.ann import AnnUnavailableError
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


def test_a_missing_ann_extra_is_a_missing_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    # README: every error derives from SynaptorouteError; a missing extra is a
    # MissingDependencyError (an ImportError), the approximate index's too.
    monkeypatch.setitem(sys.modules, "usearch", None)
    monkeypatch.setitem(sys.modules, "usearch.index", None)
    with pytest.raises(AnnUnavailableError, match=r"'\.\[ann\]' in a checkout") as info:
        AdaptiveRouter(HashingEncoder(), index="ann")
    assert isinstance(info.value, MissingDependencyError)
    assert isinstance(info.value, SynaptorouteError)
    assert isinstance(info.value, ImportError)
