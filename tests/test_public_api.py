"""The public API is a promise: these names, importable cheaply, and 0.1.0's still there.

Adding a name is a decision made here on purpose; removing one breaks users (see
docs/versioning.md for how names are deprecated first).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

import synaptoroute

PUBLIC = [
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

#: The public submodules (docs/reference/core.md) and their names.
PUBLIC_SUBMODULES = {
    "synaptoroute.checks": [
        "MAX_INT_MS_SECONDS",
        "check_count",
        "check_int_ms_seconds",
        "check_seconds",
        "check_text",
        "check_threshold",
        "check_utterances",
        "is_number",
        "misspelt_key",
        "reads_nothing_of",
        "refuse_misspelt_key",
    ],
    "synaptoroute.forking": ["APP", "APP_CACHE", "hold_across_fork"],
    "synaptoroute.testing": [
        "GatedEncoder",
        "RecordingEncoder",
        "hold_until_the_fork",
        "in_forked_child",
        "wait_for_the_fork",
    ],
}

#: What ``import synaptoroute`` must not load: the model runtime, the service, the
#: database driver and the fitting code come when they are first used.
HEAVY = [
    "onnxruntime",
    "tokenizers",
    "fastapi",
    "uvicorn",
    "psycopg",
    "usearch",
    "synaptoroute.fitting",
    "synaptoroute.evaluation",
    "synaptoroute.postgres",
    "synaptoroute.storage.postgres",
    "synaptoroute.server",
]


def test_the_public_names_are_pinned() -> None:
    assert synaptoroute.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(synaptoroute, name) is not None, name


@pytest.mark.parametrize("module", sorted(PUBLIC_SUBMODULES))
def test_the_public_submodules_names_are_pinned(module: str) -> None:
    imported = importlib.import_module(module)
    assert imported.__all__ == PUBLIC_SUBMODULES[module]
    for name in imported.__all__:
        value = getattr(imported, name)
        assert not callable(value) or value.__doc__, f"{module}.{name} has no docstring"


def test_the_0_1_0_api_is_still_there() -> None:
    from synaptoroute import AdaptiveRouter, Encoder, Route, SQLiteStorage

    for method in ("add_route", "start", "aquery", "stop", "query"):
        assert callable(getattr(AdaptiveRouter, method)), method
    assert callable(Encoder) and callable(SQLiteStorage)
    assert "name" in synaptoroute.RouteMatch.model_fields
    assert Route(name="billing", utterances=["refund"]).name == "billing"


def test_lazy_names_are_the_submodules_objects() -> None:
    from synaptoroute.evaluation import EvaluationReport
    from synaptoroute.fitting import FitReport
    from synaptoroute.postgres import PostgresStorage
    from synaptoroute.storage import open_storage

    assert synaptoroute.FitReport is FitReport
    assert synaptoroute.EvaluationReport is EvaluationReport
    assert synaptoroute.PostgresStorage is PostgresStorage
    assert synaptoroute.open_storage is open_storage


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        synaptoroute.NoSuchThing  # noqa: B018


def test_importing_the_package_loads_nothing_heavy() -> None:
    code = (
        "import json, sys, synaptoroute; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout) == []


def test_typed_user_code_runs() -> None:
    # tests/typed_usage.py is type-checked by mypy in CI; here it runs.
    from typed_usage import route_with_a_custom_encoder

    assert route_with_a_custom_encoder("I need a refund").name == "billing"


def test_typed_subclass_code_runs() -> None:
    import asyncio

    from typed_usage import route_in_a_subclass, route_in_an_opened_subclass

    assert asyncio.run(route_in_a_subclass("I need a refund")) == "acme:billing"
    assert asyncio.run(route_in_an_opened_subclass("I need a refund")) == "acme:billing"
