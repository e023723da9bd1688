"""DecisionPolicy: what a stored state may hold."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from synaptoroute import (
    AdaptiveRouter,
    HashingEncoder,
    InvalidInputError,
    Route,
    SQLiteStorage,
    StorageError,
)
from synaptoroute.decision import DecisionPolicy

DEFAULT = DecisionPolicy(0.5, min_margin=0.1)


@pytest.mark.parametrize(
    "state",
    [
        {"threshold": True},
        {"threshold": "0.3"},
        {"threshold": None},
        {"threshold": float("nan")},
        {"min_margin": False},
        {"min_margin": "0.1"},
        {"thresholds": {"a": True}},
        {"thresholds": {"a": "0.3"}},
        {"thresholds": {"a": None}},
        {"thresholds": [["a", 0.3]]},
    ],
)
def test_a_stored_policy_is_checked_as_any_policy_is(state: dict[str, Any]) -> None:
    # docs/concepts.md: the policy refuses a bool, a non-number or NaN wherever one is
    # made, a stored state included; nothing is converted first.
    with pytest.raises(InvalidInputError, match="must"):
        DecisionPolicy.from_state(state, DEFAULT)


def test_a_stored_policy_round_trips_and_missing_keys_come_from_the_default() -> None:
    policy = DecisionPolicy(0.4, min_margin=0.05, thresholds={"a": 0.6})
    assert DecisionPolicy.from_state(policy.to_state(), DEFAULT) == policy
    partial = DecisionPolicy.from_state({"threshold": 1}, DEFAULT)
    assert (partial.threshold, partial.min_margin, partial.thresholds) == (1.0, 0.1, {})
    assert type(partial.threshold) is float


def test_a_store_with_an_older_versions_policy_values_still_opens(tmp_path: Path) -> None:
    # 0.2's set_policy stored a bool or a numeric string and its reader converted them:
    # the strict reader refused such a store whole. Read as 0.2 did, with a warning.
    path = tmp_path / "routes.db"
    router = AdaptiveRouter(HashingEncoder(), SQLiteStorage(path))
    router.add_route(Route(name="a", utterances=["x"]))
    router.close()
    storage = SQLiteStorage(path)
    storage.set_state(
        "policy", {"threshold": "0.4", "min_margin": True, "thresholds": {"a": "0.3"}}
    )
    try:
        with pytest.warns(UserWarning, match="not numbers .* read as numbers"):
            reopened = AdaptiveRouter(HashingEncoder(), storage)
        assert reopened.policy.threshold == 0.4 and reopened.policy.min_margin == 1.0
        assert reopened.policy.thresholds == {"a": 0.3}
        # What float() cannot read is refused, naming the value, the store and a way out.
        storage.set_state("policy", {"threshold": "high"})
        with pytest.raises(StorageError, match=r"SQLiteStorage.* is damaged .*cannot be read"):
            AdaptiveRouter(HashingEncoder(), storage)
        # So is a head or a calibrator missing a part (a bare KeyError: 'classes').
        for damaged in ({"head": {"weights": "x"}}, {"calibrator": {"kind": "platt"}}):
            storage.set_state("policy", damaged)
            with pytest.raises(
                StorageError, match=r"damaged \(KeyError.*set_state\('policy', None\)"
            ):
                AdaptiveRouter(HashingEncoder(), storage)
            assert storage.get_state("policy") == damaged  # left as it is
        # Not even a mapping, and through open() (the CLI's and the service's way).
        with sqlite3.connect(path) as db:  # as an outside tool could write it
            db.execute("UPDATE state SET value='[1, 2]' WHERE key='policy'")
        db.close()
        with pytest.raises(StorageError, match=r"damaged \(TypeError: a mapping"):
            AdaptiveRouter.open(path, HashingEncoder())
        storage.set_state("policy", None)  # the way out the message gives
        fresh = AdaptiveRouter(HashingEncoder(), SQLiteStorage(path))
        assert fresh.policy.threshold == 0.5
        fresh.close()
    finally:
        storage.close()
