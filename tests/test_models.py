from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from encoder_doubles import CountingEncoder
from pydantic import ValidationError

from synaptoroute import (
    AdaptiveRouter,
    Encoder,
    HashingEncoder,
    InvalidInputError,
    Route,
    RouteMatch,
    SQLiteStorage,
)
from synaptoroute.decision import DecisionPolicy
from synaptoroute.routes_file import RoutesDocument, apply_routes


def test_route_strips_and_dedupes_utterances() -> None:
    route = Route(name="  billing ", utterances=[" refund ", "refund", "receipt", "receipt "])
    assert route.name == "billing"
    assert route.utterances == ["refund", "receipt"]
    assert route.metadata == {}
    assert route.threshold is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "   ", "utterances": ["x"]}, "name"),
        # Split the CLI's tab-separated output into other columns and lines.
        ({"name": "bad\tname", "utterances": ["x"]}, "control character ('\\t')"),
        ({"name": "multi\nline", "utterances": ["x"]}, "control character"),
        ({"name": "nul\x00", "utterances": ["x"]}, "control character"),
        ({"name": "c1\x85c1", "utterances": ["x"]}, "control character"),
        # Line breaks to splitlines(), YAML and JavaScript: they split the CLI's records.
        ({"name": "bill\u2028ing", "utterances": ["x"]}, "control character ('\\u2028')"),
        ({"name": "x\u2029y", "utterances": ["x"]}, "control character"),
        ({"name": "a", "utterances": ["ok", "  "]}, "utterances"),
        ({"name": "a", "utterances": ["ok", 3]}, "utterances"),
        ({"name": "a", "utterances": ["ok"], "threshold": 1.5}, "threshold"),
        ({"name": "a", "utterances": ["ok"], "threshold": -1.01}, "threshold"),
        ({"name": "a", "utterances": ["ok"], "threshold": True}, "threshold"),
        # pydantic read these as 0.5 and 1.0; set_threshold refuses them.
        ({"name": "a", "utterances": ["ok"], "threshold": "0.5"}, "not a bool or a string"),
        ({"name": "a", "utterances": ["ok"], "threshold": np.True_}, "not a bool or a string"),
        ({"name": "a", "utterances": ["ok"], "colour": "red"}, "colour"),
    ],
)
def test_invalid_route_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Route(**kwargs)  # type: ignore[arg-type]
    assert field in str(info.value)
    # pydantic's ValidationError is a ValueError: 0.1.0 except clauses still work
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r.add_utterances("a", [" "]), "utterance 0 is empty"),
        (lambda r: r.add_utterances("a", ["ok", 1]), "utterance 1 must be a string, got int"),
        (lambda r: r.add_negatives([""]), "utterance 0 is empty"),
        (lambda r: r.add_routes([], negatives=[" "]), "utterance 0 is empty"),
    ],
    ids=["blank-utterance", "non-str-utterance", "blank-negative", "blank-add-routes-negative"],
)
def test_bad_utterances_of_router_calls_raise_invalid_input(
    call: Callable[[AdaptiveRouter], object], message: str
) -> None:
    router = AdaptiveRouter(HashingEncoder())
    router.add_route(Route(name="a", utterances=["x"]))
    with pytest.raises(InvalidInputError, match=message):
        call(router)
    assert router.get_route("a").utterances == ["x"]  # nothing was changed
    assert router.negatives == []


#: Only characters the bundled tokenizer deletes: the model reads it as it reads "".
UNREAD = "\u200b\ufeff"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda r: r.add_route(Route(name="b", utterances=["hello there", UNREAD])),
            f"route 'b': utterance ({UNREAD!r})",
        ),
        (
            lambda r: r.add_route(Route(name="a", utterances=["x", UNREAD]), replace=True),
            f"route 'a': utterance ({UNREAD!r})",
        ),
        (
            lambda r: r.add_routes(
                [Route(name="b", utterances=["hello"]), Route(name="c", utterances=[UNREAD])]
            ),
            f"route 'c': utterance ({UNREAD!r})",
        ),
        (
            lambda r: r.add_utterances("a", ["my money back", UNREAD]),
            f"route 'a': utterance ({UNREAD!r})",
        ),
        (lambda r: r.add_negatives(["tell me a joke", UNREAD]), f"negative example ({UNREAD!r})"),
        (
            lambda r: r.add_routes([Route(name="b", utterances=["hello"])], negatives=[UNREAD]),
            f"negative example ({UNREAD!r})",
        ),
        (
            lambda r: apply_routes(
                r, RoutesDocument(routes=[Route(name="b", utterances=[UNREAD])])
            ),
            f"route 'b': utterance ({UNREAD!r})",
        ),
    ],
    ids=[
        "add-route",
        "add-route-replace",
        "add-routes",
        "add-utterances",
        "add-negatives",
        "add-routes-negatives",
        "routes-file",
    ],
)
def test_an_utterance_the_model_reads_nothing_of_is_refused_and_nothing_is_stored(
    encoder: Encoder,
    tmp_path: Path,
    call: Callable[[AdaptiveRouter], object],
    message: str,
) -> None:
    # The model reads such an utterance as it reads "": its vector was stored and
    # matched queries, while the same text as a query is an empty query.
    assert encoder.reads_nothing(UNREAD)
    path = tmp_path / "routes.db"
    counting = CountingEncoder(encoder)
    router = AdaptiveRouter(counting, SQLiteStorage(path))  # type: ignore[arg-type]
    router.add_route(Route(name="a", utterances=["x"]))
    router.add_negatives(["what is the weather"])
    calls = counting.calls
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        call(router)
    assert counting.calls == calls  # refused before the model was called
    assert router.list_routes() == [Route(name="a", utterances=["x"])]
    assert router.negatives == ["what is the weather"]
    router.close()
    reopened = AdaptiveRouter.open(path, encoder)
    try:
        assert reopened.list_routes() == [Route(name="a", utterances=["x"])]
        assert reopened.negatives == ["what is the weather"]
        assert reopened.query(UNREAD).reason == "empty_query"
    finally:
        reopened.close()


def test_fit_refuses_a_text_the_model_reads_nothing_of(encoder: Encoder) -> None:
    # Such a query is an empty query; the fit trained on its embedding of "".
    router = AdaptiveRouter(encoder)
    router.add_routes(
        [
            Route(name="billing", utterances=["I need a refund", "where is my invoice"]),
            Route(name="tech", utterances=["the app crashes", "I cannot log in"]),
        ]
    )
    before = router.policy
    with pytest.raises(InvalidInputError, match=r"text 2 .*empty to the model"):
        router.fit(
            ["refund please", "app crash", "\u200b\ufeff", "my invoice"],
            ["billing", "tech", None, "billing"],
        )
    assert router.policy == before


def test_an_encoder_without_reads_nothing_refuses_only_blank_utterances() -> None:
    # No tokenizer to ask: the whitespace rule, as for its queries.
    router = AdaptiveRouter(HashingEncoder())
    router.add_route(Route(name="a", utterances=[UNREAD]))
    assert router.add_utterances("a", ["\x00"]) == ["\x00"]
    with pytest.raises(InvalidInputError, match="utterance 0 is empty"):
        router.add_utterances("a", [" \n"])


def test_route_threshold_takes_numpy_scalars_as_floats() -> None:
    route = Route(name="a", utterances=["x"], threshold=np.float32(0.25))
    assert route.threshold == 0.25 and type(route.threshold) is float


@pytest.mark.parametrize("thresholds", [None, [0.5], "billing"])
def test_a_policy_whose_thresholds_are_no_mapping_is_bad_input(thresholds: object) -> None:
    # None raised AttributeError, where every other bad policy value is InvalidInputError.
    with pytest.raises(InvalidInputError, match="thresholds must map route names"):
        DecisionPolicy(threshold=0.5, thresholds=thresholds)  # type: ignore[arg-type]


def test_route_is_immutable() -> None:
    route = Route(name="a", utterances=["x"])
    with pytest.raises(ValidationError):
        route.name = "b"


def test_route_match_explains_itself() -> None:
    match = RouteMatch(
        name=None,
        score=0.41,
        candidate="billing",
        threshold=0.5,
        runner_up="support",
        runner_up_score=0.30,
        reason="below_threshold",
    )
    assert not match.matched
    assert match.margin == pytest.approx(0.11)
    assert RouteMatch(name="x", score=0.9).matched
    assert RouteMatch(name="x", score=0.9).margin is None


def test_a_route_takes_text_not_bytes() -> None:
    for fields in [
        {"name": b"greet", "utterances": ["hello"]},
        {"name": "greet", "utterances": ["hello", b"hi"]},
        {"name": "greet", "utterances": ["hello"], "description": b"greetings"},
    ]:
        with pytest.raises(ValidationError, match="Input should be a valid string"):
            Route(**fields)  # type: ignore[arg-type]
