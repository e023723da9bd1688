"""``synaptoroute.checks``: the example-utterance checks both integrations share."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from synaptoroute import InvalidInputError
from synaptoroute.checks import (
    check_seconds,
    check_utterances,
    misspelt_key,
    refuse_misspelt_key,
)


def test_utterances_are_cleaned_as_routes_hold_them() -> None:
    given = {"billing": ["  I need a refund ", "I need a refund", "invoice"], "tech": ()}
    assert check_utterances(given) == {"billing": ["I need a refund", "invoice"], "tech": []}
    assert check_utterances(None) == {}


@pytest.mark.parametrize(
    ("utterances", "message"),
    [
        (["billing"], "must be a dict of"),
        ({3: ["x"]}, "keyed by tool name"),
        (
            {"billing": "I need a refund"},
            r"utterances\['billing'\] must be a list of strings, got one str",
        ),
        ({"billing": {"a", "b"}}, "must be a list of strings, got set"),
        ({"billing": None}, "must be a list of strings, got NoneType"),
        ({"billing": ["ok", 3]}, r"utterances\['billing'\]\[1\] must be a str, got int"),
        ({"billing": ["ok", "  "]}, r"utterances\['billing'\]\[1\] is empty"),
        ({"billing": ["refund \ud800"]}, r"utterances\['billing'\]\[0\] .*valid Unicode"),
    ],
)
def test_bad_utterances_are_refused_naming_the_key(utterances: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        check_utterances(utterances)


def test_a_key_is_a_typo_only_when_close_to_a_name_without_utterances() -> None:
    # "billing_eu" beside a "billing" that has utterances is another set's choice.
    assert misspelt_key({"biling", "general"}, set(), ["billing", "general"]) == (
        "biling",
        "billing",
    )
    assert misspelt_key({"billing_eu", "billing"}, set(), ["billing", "general"]) is None
    assert misspelt_key({"weather"}, {"billing", "general"}, ["billing", "general"]) is None
    assert misspelt_key({"biling"}, {"biling"}, ["billing"]) is None  # another set's name
    assert misspelt_key(set(), set(), ["billing"]) is None


def test_a_misspelt_key_is_refused_and_the_offered_names_are_seen_either_way() -> None:
    seen: set[str] = set()
    keys = {"biling", "tech"}
    with pytest.raises(InvalidInputError, match=r"'biling'.*choice 'billing'.*did you mean"):
        refuse_misspelt_key(keys, seen, ["billing", "tech"], "choice")
    assert seen == {"tech"}  # a refused call's names were offered too
    refuse_misspelt_key({"weather", "biling"}, seen, ["biling"], "tool")  # another call's
    assert seen == {"tech", "biling"}
    # Only keys are recorded (no other name is ever asked about): per-user names offered
    # by a long-running service grew the set without end.
    for i in range(10_000):
        refuse_misspelt_key(keys, seen, [f"user{i}_search", f"user{i}_mail"], "tool")
    assert seen == {"tech", "biling"}


@pytest.mark.parametrize(
    "value", [10**400, 1e300, threading.TIMEOUT_MAX * 2, float("nan"), -1, True, "5"]
)
def test_seconds_a_wait_cannot_take_are_refused(value: object) -> None:
    # 10**400 raised OverflowError from the check; 1e300 passed it and raised
    # OverflowError from the first wait (a timeout, a poll interval), far from here.
    with pytest.raises(InvalidInputError, match="timeout must be a finite number of seconds"):
        check_seconds(value, "timeout")


def test_seconds_up_to_the_longest_wait_are_taken() -> None:
    assert check_seconds(threading.TIMEOUT_MAX, "t") == threading.TIMEOUT_MAX
    assert check_seconds(np.float32(0.5), "t") == 0.5
    assert check_seconds(0, "t", zero=True) == 0.0
