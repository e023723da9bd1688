"""SynaptorouteSelector on its own: selection, multi-selection, no-match policies, caching."""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Callable

import numpy as np
import pytest
from llama_index.core.base.base_selector import SelectorResult
from llama_index.core.tools import ToolMetadata
from llama_index.selectors.synaptoroute import (
    SelectionPolicy,
    SynaptorouteSelector,
    decide_selection,
)
from llamaindex_support import CLEAR_QUERIES, OFF_TOPIC, TWO_TOPICS, UTTERANCES

from synaptoroute import Encoder, InvalidInputError, NoRouteMatchedError, RouteMatch
from synaptoroute.testing import RecordingEncoder, hold_until_the_fork, in_forked_child

_SCORE = re.compile(r"scored (-?\d\.\d{3})")


def _scores(result: SelectorResult) -> list[float]:
    return [float(m.group(1)) for r in result.reasons if (m := _SCORE.search(r))]


# -- the pure decision function (no model) -------------------------------------------


def _match(index: int, score: float, threshold: float = 0.5) -> RouteMatch:
    return RouteMatch(
        name=str(index),
        score=score,
        candidate=str(index),
        threshold=threshold,
        reason="matched" if score >= threshold else "below_threshold",
        nearest_utterance=f"example {index}",
    )


_CHOICES = [
    ToolMetadata(name="a", description="first"),
    ToolMetadata(name="b", description="second"),
    ToolMetadata(name="c", description="third"),
]


def test_decide_keeps_all_passing_up_to_top_n_best_first() -> None:
    ranked = [_match(2, 0.9), _match(0, 0.7), _match(1, 0.6)]
    result = decide_selection(ranked, _CHOICES, SelectionPolicy(top_n=2), "q")
    assert result.inds == [2, 0]
    assert "'c' scored 0.900 (threshold 0.500)" in result.reasons[0]
    assert "'a' scored 0.700" in result.reasons[1]


def test_decide_prints_the_digits_that_tell_the_side() -> None:
    # A threshold calibrated to four decimals: at three, "scored 0.809 (threshold
    # 0.809)" could be a pass or a miss.
    passed = decide_selection([_match(1, 0.8090, 0.8089)], _CHOICES, SelectionPolicy(), "q")
    assert "'b' scored 0.8090 (threshold 0.8089)" in passed.reason
    missed = decide_selection([_match(1, 0.8088, 0.8089)], _CHOICES, SelectionPolicy(), "q")
    assert "the threshold 0.8089; the best was 'b' with score 0.8088" in missed.reason
    level = decide_selection([_match(1, 0.7, 0.7)], _CHOICES, SelectionPolicy(), "q")
    assert "scored 0.700 (threshold 0.700)" in level.reason


def test_decide_stops_at_the_threshold() -> None:
    ranked = [_match(1, 0.8), _match(0, 0.4), _match(2, 0.3)]
    assert decide_selection(ranked, _CHOICES, SelectionPolicy(top_n=3), "q").inds == [1]


def test_decide_no_match_policies() -> None:
    ranked = [_match(1, 0.4), _match(2, 0.3)]
    best = decide_selection(ranked, _CHOICES, SelectionPolicy(on_no_match="best"), "q")
    assert best.inds == [1]
    assert "no choice reached the threshold 0.50" in best.reason
    assert "'b' with score 0.400" in best.reason
    fallback = decide_selection(
        ranked, _CHOICES, SelectionPolicy(on_no_match="fallback", fallback="c"), "q"
    )
    assert fallback.inds == [2]
    assert "fell back to 'c'" in fallback.reason
    with pytest.raises(NoRouteMatchedError, match=r"threshold 0\.50.*'b' with score 0\.400"):
        decide_selection(ranked, _CHOICES, SelectionPolicy(on_no_match="raise"), "q")


def test_decide_unknown_fallback_name_lists_the_choices() -> None:
    policy = SelectionPolicy(on_no_match="fallback", fallback="zzz")
    with pytest.raises(InvalidInputError, match=r"'zzz' is not among.*\['a', 'b', 'c'\]"):
        decide_selection([_match(0, 0.1)], _CHOICES, policy, "q")


def test_decide_with_nothing_scored() -> None:
    assert decide_selection([], _CHOICES, SelectionPolicy(), "").inds == [0]
    with pytest.raises(NoRouteMatchedError, match="empty"):
        decide_selection([], _CHOICES, SelectionPolicy(on_no_match="raise"), "")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_n": 0}, "top_n"),
        ({"top_n": True}, "top_n"),
        ({"max_choice_sets": True}, "max_choice_sets"),
        ({"threshold": True}, "threshold"),
        ({"threshold": "0.3"}, "threshold"),
        ({"on_no_match": "first"}, "on_no_match"),
        ({"on_no_match": "fallback"}, "fallback="),
        # Ignored before: an unmatched query went to the best choice, not this one.
        ({"fallback": "general"}, r"only with on_no_match='fallback'.*'best'"),
        ({"fallback": "general", "on_no_match": "raise"}, "only with on_no_match"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"max_choice_sets": 2.5}, "max_choice_sets"),
        ({"utterances": {"billing": "I need a refund"}}, "list of strings"),
        ({"utterances": {"billing": ["  "]}}, "empty"),
        # Only zero-width characters: once refused at the first selection, naming route '0'.
        ({"utterances": {"billing": ["ok", "\u200b"]}}, r"\['billing'\]\[1\].*empty to the model"),
        # A bare TypeError; a lone surrogate passed and failed every selection later.
        ({"utterances": {"billing": None}}, r"utterances\['billing'\] must be a list.*NoneType"),
        ({"utterances": {"billing": {"a refund"}}}, r"utterances\['billing'\] must be a list"),
        ({"utterances": {"billing": ["ok", 3]}}, r"utterances\['billing'\]\[1\] must be a str"),
        (
            {"utterances": {"billing": ["ok", "refund \ud800"]}},
            r"utterances\['billing'\]\[1\] \('refund \\ud800'\): .*valid Unicode",
        ),
        ({"utterances": {3: ["I need a refund"]}}, "keyed by tool name"),
        ({"utterances": [("billing", ["I need a refund"])]}, "must be a dict"),
    ],
)
def test_bad_arguments_fail_at_construction(
    encoder: Encoder, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        SynaptorouteSelector.from_defaults(encoder=encoder, **kwargs)  # type: ignore[arg-type]


def test_numpy_arguments_are_numbers(encoder: Encoder, choices: list[ToolMetadata]) -> None:
    # Arguments computed with numpy (np.int64 is no int to isinstance) were refused.
    selector = SynaptorouteSelector.from_defaults(
        encoder=encoder, top_n=np.int64(2), threshold=np.float32(0.25), max_choice_sets=np.int32(3)
    )
    assert (selector.policy.top_n, selector.max_choice_sets) == (2, 3)
    assert type(selector.policy.top_n) is int and type(selector.threshold) is float
    assert selector.threshold == pytest.approx(0.25)
    query, expected = CLEAR_QUERIES[0]
    assert selector.select(choices, query).inds[0] == expected


# -- with the real model ---------------------------------------------------------------


def test_single_selection(encoder: Encoder, choices: list[ToolMetadata]) -> None:
    selector = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=encoder)
    for query, expected in CLEAR_QUERIES:
        result = selector.select(choices, query)
        assert result.inds == [expected], (query, result.reasons)
        assert _scores(result)[0] >= 0.5


def test_copies_and_pickles_are_selectors_of_their_own(
    encoder: Encoder, choices: list[ToolMetadata]
) -> None:
    # A shallow copy shared the cache of routers: its threshold changed the original's
    # answers. deepcopy and pickle failed on the settings' read-only mapping.
    import copy
    import pickle

    selector = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES, encoder=encoder, top_n=2, max_choice_sets=3
    )
    query, expected = CLEAR_QUERIES[0]
    assert selector.select(choices, query).inds[0] == expected  # a cached router
    shallow = copy.copy(selector)
    shallow.threshold = 0.999
    assert "0.999" in " ".join(shallow.select(choices, query).reasons)
    assert selector.threshold is None
    assert "0.999" not in " ".join(selector.select(choices, query).reasons)
    copies = [shallow, copy.deepcopy(selector), pickle.loads(pickle.dumps(selector))]
    for other in copies:
        assert other is not selector
        assert (other.policy, other.max_choice_sets) == (selector.policy, 3)
        assert other.utterances == selector.utterances
        assert other.select(choices, query).inds[0] == expected
    assert copies[0].encoder is encoder and copies[1].encoder is encoder

    class Tagged(SynaptorouteSelector):  # a subclass with a constructor and state of its own
        def __init__(self, utterances: dict[str, list[str]], encoder: Encoder, tag: str) -> None:
            super().__init__(encoder, utterances=utterances)
            self.tag = tag
            self.seen: list[str] = []

    tagged = Tagged(UTTERANCES, encoder, "custom")
    tagged.seen.append("x")
    for other in (copy.copy(tagged), copy.deepcopy(tagged)):
        assert type(other) is Tagged and other.tag == "custom" and other.seen == ["x"]
        assert other.select(choices, query).inds[0] == expected
    assert copy.deepcopy(tagged).seen is not tagged.seen
    # What a copy starts afresh is exactly what _start_cache makes.
    from llama_index.selectors.synaptoroute import selector as module

    blank = SynaptorouteSelector.__new__(SynaptorouteSelector)
    blank._start_cache()
    assert set(vars(blank)) == module._CACHE_STATE


def test_routes_on_descriptions_alone(encoder: Encoder, choices: list[ToolMetadata]) -> None:
    selector = SynaptorouteSelector.from_defaults(encoder=encoder, threshold=0.2)
    assert selector.select(choices, "Where can I download my invoices?").inds == [0]
    assert selector.select(choices, "The app shows a bug when I log in").inds == [1]


def test_string_choices_without_names(encoder: Encoder) -> None:
    selector = SynaptorouteSelector.from_defaults(encoder=encoder, threshold=0.2)
    result = selector.select(["Refunds and invoices", "Bugs and crashes"], "my app crashes")
    assert result.inds == [1]
    assert result.reason.startswith("choice 1 scored")


def test_multi_selection_best_first_above_threshold(
    encoder: Encoder, choices: list[ToolMetadata]
) -> None:
    selector = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES, encoder=encoder, top_n=3, threshold=0.5
    )
    result = selector.select(choices, TWO_TOPICS)
    assert sorted(result.inds) == [0, 1]
    scores = _scores(result)
    assert scores == sorted(scores, reverse=True)
    assert all(s >= 0.5 for s in scores)
    # A query on one topic selects only that one, even with top_n=3.
    assert selector.select(choices, CLEAR_QUERIES[0][0]).inds == [0]
    # top_n caps the number selected.
    one = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=encoder, top_n=1)
    assert one.select(choices, TWO_TOPICS).inds == result.inds[:1]


def test_no_match_policies_with_the_model(encoder: Encoder, choices: list[ToolMetadata]) -> None:
    best = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=encoder)
    expected = int(best.router_for(choices).query_top_k(OFF_TOPIC, 1)[0].name or "")
    result = best.select(choices, OFF_TOPIC)
    assert result.inds == [expected]
    assert "no choice reached the threshold 0.50" in result.reason
    fallback = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES, encoder=encoder, on_no_match="fallback", fallback="general"
    )
    assert fallback.select(choices, OFF_TOPIC).inds == [2]
    assert fallback.select(choices, CLEAR_QUERIES[0][0]).inds == [0]
    # A misspelt fallback surfaced only at the first query that matched nothing.
    misspelt = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES, encoder=encoder, on_no_match="fallback", fallback="genral"
    )
    for _ in range(2):
        with pytest.raises(InvalidInputError, match=r"'genral' is not among"):
            misspelt.select(choices, CLEAR_QUERIES[0][0])
    strict = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES, encoder=encoder, on_no_match="raise"
    )
    with pytest.raises(NoRouteMatchedError, match="boiling point"):
        strict.select(choices, OFF_TOPIC)
    assert strict.select(choices, CLEAR_QUERIES[1][0]).inds == [1]


def test_choices_embedded_once_per_choice_set(
    recording: RecordingEncoder, choices: list[ToolMetadata]
) -> None:
    selector = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=recording)
    queries = [q for q, _ in CLEAR_QUERIES] + [TWO_TOPICS, OFF_TOPIC]
    for query in queries:
        selector.select(choices, query)
    # One call embedded every choice text; after it each query cost one text.
    choice_texts = 3 + 3 + sum(len(u) for u in UTTERANCES.values())  # descriptions, names
    assert len(recording.calls[0]) == choice_texts
    assert recording.calls[1:] == [[q] for q in queries]
    # Equal choices (new ToolMetadata objects) reuse the cache; another set is built once.
    copies = [ToolMetadata(name=c.name, description=c.description) for c in choices]
    selector.select(copies, "one more question about my bill")
    assert len(recording.calls) == 1 + len(queries) + 1
    selector.select(copies[:2], "and one about a crash")
    assert [len(c) for c in recording.calls[-2:]] == [2 + 2 + 6, 1]


async def test_async_matches_sync_and_runs_off_the_loop(
    recording: RecordingEncoder,
    choices: list[ToolMetadata],
    make_selector: Callable[..., SynaptorouteSelector],
) -> None:
    selector = make_selector(encoder=recording, top_n=2)
    queries = [q for q, _ in CLEAR_QUERIES] + [TWO_TOPICS, OFF_TOPIC]
    async_results = [await selector.aselect(choices, q) for q in queries]
    # Every model call, the choices' included, ran outside the event loop's thread.
    assert recording.threads
    assert threading.get_ident() not in recording.threads
    assert recording.calls[1:] == [[q] for q in queries]
    assert selector.router_for(choices).worker.running  # the queries went through it
    sync_results = [selector.select(choices, q) for q in queries]
    assert async_results == sync_results


async def test_concurrent_async_selections_share_batches(
    recording: RecordingEncoder,
    choices: list[ToolMetadata],
    make_selector: Callable[..., SynaptorouteSelector],
) -> None:
    selector = make_selector(encoder=recording)
    selector.router_for(choices)  # embed the choices now
    queries = [f"{q} ({i})" for i in range(4) for q, _ in CLEAR_QUERIES]
    results = await asyncio.gather(*(selector.aselect(choices, q) for q in queries))
    assert [r.ind for r in results] == [e for _ in range(4) for _, e in CLEAR_QUERIES]
    assert recording.texts_encoded - len(recording.calls[0]) == len(queries)


def test_async_across_event_loops(encoder: Encoder, choices: list[ToolMetadata]) -> None:
    selector = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=encoder)
    # Each asyncio.run is a new loop; the router's worker follows the current one.
    first = asyncio.run(selector.aselect(choices, CLEAR_QUERIES[0][0]))
    second = asyncio.run(selector.aselect(choices, CLEAR_QUERIES[1][0]))
    assert (first.ind, second.ind) == (0, 1)


def test_no_prompts(encoder: Encoder) -> None:
    selector = SynaptorouteSelector.from_defaults(encoder=encoder)
    assert selector.get_prompts() == {}


def test_least_recently_used_choice_set_is_dropped(
    recording: RecordingEncoder, choices: list[ToolMetadata]
) -> None:
    selector = SynaptorouteSelector.from_defaults(encoder=recording, max_choice_sets=1)
    first, second = choices[:2], choices[1:]
    selector.select(first, "a refund please")
    selector.select(second, "a crash please")
    selector.select(first, "another refund please")
    # Three choice sets built (the first one twice), each followed by its query.
    assert [len(c) for c in recording.calls] == [4, 1, 4, 1, 4, 1]
    # No worker ran: of the two evicted routers only the newest is kept for aclose().
    assert len(selector._cache._retired) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.parametrize("which", ["_build_lock", "_lock"])
def test_a_child_forked_while_the_selector_holds_a_lock_selects(
    encoder: Encoder, choices: list[ToolMetadata], which: str
) -> None:
    # A worker process forked while another thread builds a choice set's router (the
    # build lock) or reads the cache (the cache lock) must not inherit the lock held.
    selector = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=encoder)
    query, expected = CLEAR_QUERIES[0]
    assert selector.select(choices, query).inds == [expected]
    lock = getattr(selector, which)
    holder = hold_until_the_fork(lock)

    def child() -> None:
        assert lock.acquire(timeout=30)  # free in the child: the fork waited for it
        lock.release()
        assert selector.select(choices, query).inds == [expected]
        assert selector.select(choices[1:], CLEAR_QUERIES[1][0]).inds == [0]  # a new build

    try:
        assert in_forked_child(child) == 0
    finally:
        holder.join(60)


# -- settings assigned after the first selection -------------------------------------

#: A query no example of UTTERANCES is about (billing, the nearest, scores ~0.19).
_GIFT_CARD = "Can I buy a gift card for a friend?"
_GIFT_UTTERANCES = {
    **UTTERANCES,
    "general": [*UTTERANCES["general"], "Do you sell gift cards?", "Can I buy a voucher?"],
}


def test_threshold_assigned_later_reaches_cached_choice_sets(
    recording: RecordingEncoder, choices: list[ToolMetadata]
) -> None:
    # A plain attribute: routers already cached kept the threshold they were built
    # with, so an assignment reached only choice sets seen for the first time after it.
    selector = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES, encoder=recording, top_n=3, on_no_match="raise"
    )
    query = CLEAR_QUERIES[0][0]  # billing ~0.64, tech_support ~0.36
    assert selector.select(choices, query).inds == [0]
    selector.threshold = 0.9
    assert selector.threshold == 0.9
    with pytest.raises(NoRouteMatchedError, match=r"threshold 0\.900"):
        selector.select(choices, query)
    selector.threshold = np.float32(0.3)  # type: ignore[assignment]
    assert type(selector.threshold) is float
    result = selector.select(choices, query)
    assert result.inds == [0, 1]
    assert "(threshold 0.300)" in result.reasons[1]
    assert asyncio.run(selector.aselect(choices, query)).inds == [0, 1]
    selector.threshold = None  # the router's default again
    assert selector.select(choices, query).inds == [0]
    # The cached router took each threshold: the choices were embedded once.
    assert [len(call) > 1 for call in recording.calls] == [
        True,
        *[False] * (len(recording.calls) - 1),
    ]


def test_utterances_assigned_later_reach_cached_choice_sets(
    encoder: Encoder, choices: list[ToolMetadata]
) -> None:
    # A plain attribute: the cached choice sets kept routing on the old utterances.
    selector = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=encoder)
    assert selector.select(choices, _GIFT_CARD).inds == [0]  # best of nothing matched
    assert selector.select(choices[1:], _GIFT_CARD).inds == [1]  # a second cached set
    selector.utterances = _GIFT_UTTERANCES
    assert selector.utterances["general"][-1] == "Can I buy a voucher?"
    result = selector.select(choices, _GIFT_CARD)
    assert result.inds == [2], result.reasons
    assert "'general' scored" in result.reason and "gift cards" in result.reason
    assert selector.select(choices[1:], _GIFT_CARD).inds == [1]  # general, here index 1
    assert "'general' scored" in selector.select(choices[1:], _GIFT_CARD).reason
    # A copy, a dict of lists as 0.2's: changed in place, it changes nothing (the
    # attribute's lists reached only choice sets built afterwards); assigned, it does.
    assert selector.utterances == _GIFT_UTTERANCES
    selector.utterances["general"].clear()
    assert selector.utterances["general"][-1] == "Can I buy a voucher?"
    selector.utterances = {**selector.utterances, "general": ["the weather"]}
    assert selector.select(choices, _GIFT_CARD).inds == [0]


async def test_utterances_assigned_between_async_selections_reach_them(
    choices: list[ToolMetadata], make_selector: Callable[..., SynaptorouteSelector]
) -> None:
    selector = make_selector()
    assert (await selector.aselect(choices, _GIFT_CARD)).inds == [0]
    old = selector.router_for(choices)
    assert old.worker.running
    selector.utterances = _GIFT_UTTERANCES
    results = await asyncio.gather(*(selector.aselect(choices, _GIFT_CARD) for _ in range(3)))
    assert [r.inds for r in results] == [[2]] * 3
    new = selector.router_for(choices)
    assert new is not old and new.worker.running
    await selector.aclose()
    assert not old.worker.running and not new.worker.running


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("threshold", 1.5, "threshold must be a number"),
        ("threshold", True, "threshold must be a number"),
        ("threshold", "0.3", "threshold must be a number"),
        ("threshold", float("nan"), "threshold must be a number"),
        ("utterances", {"billing": "I need a refund"}, "list of strings"),
        ("utterances", {"billing": ["ok", "\u200b"]}, r"\['billing'\]\[1\].*empty to the model"),
        ("utterances", {3: ["I need a refund"]}, "keyed by tool name"),
        ("utterances", [("billing", ["I need a refund"])], "must be a dict"),
    ],
)
def test_a_bad_value_assigned_is_refused_and_the_old_one_kept(
    encoder: Encoder, choices: list[ToolMetadata], attribute: str, value: object, message: str
) -> None:
    selector = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES, encoder=encoder, threshold=0.6
    )
    query, expected = CLEAR_QUERIES[0]  # billing ~0.64
    before = selector.select(choices, query)
    old = getattr(selector, attribute)
    # The error construction raises for the same value.
    with pytest.raises(InvalidInputError, match=message):
        SynaptorouteSelector.from_defaults(encoder=encoder, **{attribute: value})  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=message):
        setattr(selector, attribute, value)
    assert getattr(selector, attribute) == old
    assert before.inds == [expected]
    assert selector.select(choices, query) == before


def test_a_set_built_from_utterances_assigned_over_is_not_cached(
    encoder: Encoder, choices: list[ToolMetadata]
) -> None:
    # The race, played in order: a first selection reads the utterances and makes its
    # routes, the utterances are assigned, then the selection builds its router. It
    # serves that selection, but cached it would serve the old utterances for good.
    selector = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=encoder)
    key, old = selector.choice_key(choices), selector._utterances
    routes = selector._routes(choices, old)
    selector.utterances = _GIFT_UTTERANCES
    stale = selector._build(key, routes, utterances=old)
    assert stale.query_top_k(_GIFT_CARD, 1)[0].name == "0"  # the old utterances
    assert selector.router_for(choices) is not stale
    assert selector.select(choices, _GIFT_CARD).inds == [2]
