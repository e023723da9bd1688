"""batch: one encoder call, one branch batch per group, input order, errors, concurrency."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_synaptoroute import SynaptorouteRouter
from typing_extensions import override

from synaptoroute import AdaptiveRouter, InvalidInputError, NoRouteMatchedError

if TYPE_CHECKING:
    from conftest import RecordingEncoder, RunRecorder


class GroupRecorder(RunnableLambda[Any, Any]):
    """A RunnableLambda that records the inputs and configs of each ``batch`` call."""

    def __init__(self, func: Callable[[Any], Any], name: str) -> None:
        super().__init__(func, name=name)
        self.batches: list[list[Any]] = []
        self.configs: list[list[RunnableConfig]] = []

    @override
    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> list[Any]:
        self.batches.append(list(inputs))
        assert isinstance(config, list)
        self.configs.append(config)
        return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)


def _fail_on_boom(name: str) -> Callable[[str], str]:
    def run(text: str) -> str:
        if "boom" in text:
            msg = f"{name} failed on {text!r}"
            raise RuntimeError(msg)
        return f"{name}:{text}"

    return run


INPUTS = [
    "I want a refund for my order",  # billing
    "the app keeps crashing",  # tech
    "who won the world cup",  # default
    "I was charged twice, boom",  # billing, and its branch raises
    "hello, how's it going?",  # smalltalk
    "my password doesn't work anymore",  # tech
    "What is the boiling point of mercury?",  # default
]


def test_one_encoder_call_and_one_branch_batch_per_group(
    fresh_router: AdaptiveRouter, recording_encoder: RecordingEncoder
) -> None:
    branches = {n: GroupRecorder(_fail_on_boom(n), n) for n in fresh_router.route_names}
    default = GroupRecorder(_fail_on_boom("default"), "default")
    router = SynaptorouteRouter(router=fresh_router, runnables=branches, default=default)

    results = router.batch(INPUTS, return_exceptions=True)

    assert recording_encoder.calls == [INPUTS]  # every input embedded in one call
    assert branches["billing"].batches == [[INPUTS[0], INPUTS[3]]]
    assert branches["tech"].batches == [[INPUTS[1], INPUTS[5]]]
    assert branches["smalltalk"].batches == [[INPUTS[4]]]
    assert default.batches == [[INPUTS[2], INPUTS[6]]]
    assert results[:3] == [f"billing:{INPUTS[0]}", f"tech:{INPUTS[1]}", f"default:{INPUTS[2]}"]
    assert isinstance(results[3], RuntimeError)
    assert results[4:] == [f"smalltalk:{INPUTS[4]}", f"tech:{INPUTS[5]}", f"default:{INPUTS[6]}"]


def test_errors_are_returned_in_place_or_the_first_one_raised(
    adaptive_router: AdaptiveRouter, recorder: RunRecorder
) -> None:
    runnables = {n: RunnableLambda(_fail_on_boom(n)) for n in adaptive_router.route_names}
    strict = SynaptorouteRouter(router=adaptive_router, runnables=runnables)
    inputs: list[Any] = ["Reset my password", 42, "who won the world cup", "boom, I need a refund"]

    results = strict.batch(inputs, {"callbacks": [recorder]}, return_exceptions=True)
    assert results[0] == "tech:Reset my password"
    assert isinstance(results[1], TypeError)  # unreadable input
    assert isinstance(results[2], NoRouteMatchedError)  # no match, no default
    assert isinstance(results[3], RuntimeError)  # the branch failed

    runs = recorder.roots("SynaptorouteRouter")
    assert [r.inputs for r in runs] == inputs
    assert [type(r.error) for r in runs] == [
        type(None),
        TypeError,
        NoRouteMatchedError,
        RuntimeError,
    ]
    assert all(r.ended for r in runs)

    with pytest.raises(TypeError, match="cannot route an input of type int"):
        strict.batch(inputs)
    assert strict.batch([]) == []


def test_a_text_that_is_not_valid_unicode_fails_only_its_own_input(
    adaptive_router: AdaptiveRouter,
) -> None:
    # The core refuses a whole batch for one lone surrogate: every input of the batch
    # got that one error, though each failure must stay at its position.
    runnables = {n: RunnableLambda(lambda _x, n=n: n) for n in adaptive_router.route_names}
    router = SynaptorouteRouter(router=adaptive_router, runnables=runnables)
    inputs = ["I want a refund for my order", "refund \ud83d", "the app keeps crashing"]
    results = router.batch(inputs, return_exceptions=True)
    assert results[0] == "billing"
    assert isinstance(results[1], InvalidInputError)
    assert results[2] == "tech"
    classified = router.as_classifier().batch(inputs, return_exceptions=True)
    assert [getattr(m, "name", None) for m in classified] == ["billing", None, "tech"]
    assert isinstance(classified[1], InvalidInputError)


def test_batch_traces_one_run_per_input(
    adaptive_router: AdaptiveRouter, recorder: RunRecorder
) -> None:
    runnables = {n: RunnableLambda(_fail_on_boom(n)) for n in adaptive_router.route_names}
    router = SynaptorouteRouter(
        router=adaptive_router, runnables=runnables, default=RunnableLambda(lambda x: "none")
    )
    configs: list[RunnableConfig] = [
        {"callbacks": [recorder], "tags": [f"item-{i}"], "metadata": {"i": i}} for i in range(3)
    ]
    inputs = ["I need a refund", "Reset my password", "who won the world cup"]
    router.batch(inputs, configs)

    runs = recorder.roots("SynaptorouteRouter")
    assert [r.tags for r in runs] == [["item-0"], ["item-1"], ["item-2"]]
    decisions = [recorder.decision(r) for r in runs]
    assert [d.outputs["synaptoroute_route"] for d in decisions] == ["billing", "tech", None]
    assert [d.inputs for d in decisions] == inputs
    assert [r.metadata["i"] for r in runs] == [0, 1, 2]
    assert [d.metadata["i"] for d in decisions] == [0, 1, 2]
    children = [recorder.branches(r) for r in runs]
    assert [sorted(c.tags) for (c,) in children] == [
        ["item-0", "route:billing"],
        ["item-1", "route:tech"],
        ["item-2", "route:default"],
    ]


def test_kwargs_reach_each_group(adaptive_router: AdaptiveRouter) -> None:
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()

    def record(x: str, **kwargs: Any) -> str:
        with lock:
            seen.append(kwargs)
        return x

    runnables = {n: RunnableLambda(record) for n in adaptive_router.route_names}
    router = SynaptorouteRouter(router=adaptive_router, runnables=runnables)
    router.batch(["I need a refund", "Reset my password"], stop=["\n"])
    assert seen == [{"stop": ["\n"]}] * 2


def _meeting_branches(
    adaptive_router: AdaptiveRouter, wait_s: float
) -> tuple[SynaptorouteRouter[Any, Any], list[str]]:
    """Billing waits (at most ``wait_s``) for tech to start: it only sees it if they overlap."""
    tech_started = threading.Event()
    log: list[str] = []

    def billing(x: str) -> str:
        log.append("billing saw tech" if tech_started.wait(wait_s) else "billing alone")
        return x

    def tech(x: str) -> str:
        tech_started.set()
        return x

    runnables: dict[str, Any] = {
        n: RunnableLambda(lambda x: x) for n in adaptive_router.route_names
    }
    runnables.update(billing=RunnableLambda(billing), tech=RunnableLambda(tech))
    return SynaptorouteRouter(router=adaptive_router, runnables=runnables), log


def test_groups_run_concurrently_without_a_limit(adaptive_router: AdaptiveRouter) -> None:
    router, log = _meeting_branches(adaptive_router, wait_s=30)
    router.batch(["I need a refund", "Reset my password"])
    assert log == ["billing saw tech"]


def test_max_concurrency_runs_groups_one_after_another(adaptive_router: AdaptiveRouter) -> None:
    router, log = _meeting_branches(adaptive_router, wait_s=0.3)
    router.batch(["I need a refund", "Reset my password"], {"max_concurrency": 1})
    assert log == ["billing alone"]


def test_max_concurrency_reaches_each_group_batch(adaptive_router: AdaptiveRouter) -> None:
    branches = {n: GroupRecorder(lambda x: x, n) for n in adaptive_router.route_names}
    router = SynaptorouteRouter(router=adaptive_router, runnables=branches)
    router.batch(
        ["I need a refund", "I was charged twice", "Reset my password"], {"max_concurrency": 2}
    )
    configs = branches["billing"].configs[0] + branches["tech"].configs[0]
    assert [c["max_concurrency"] for c in configs] == [2, 2, 2]


def test_batch_as_completed_embeds_once_and_yields_each_result(
    fresh_router: AdaptiveRouter, recording_encoder: RecordingEncoder, recorder: RunRecorder
) -> None:
    release = threading.Event()

    def slow_tech(text: str) -> str:
        # Held until the three other results have been yielded: they come as completed.
        assert release.wait(30), "the other results were not yielded first"
        return f"tech:{text}"

    runnables: dict[str, Any] = {
        n: RunnableLambda(_fail_on_boom(n)) for n in fresh_router.route_names
    }
    runnables["tech"] = RunnableLambda(slow_tech)
    router = SynaptorouteRouter(
        router=fresh_router, runnables=runnables, default=RunnableLambda(_fail_on_boom("default"))
    )
    inputs = INPUTS[:4]  # billing, tech (slow), default, billing that raises
    seen: dict[int, Any] = {}
    order: list[int] = []
    for i, out in router.batch_as_completed(
        inputs, {"callbacks": [recorder], "max_concurrency": 4}, return_exceptions=True
    ):
        seen[i] = out
        order.append(i)
        if len(order) == 3:
            release.set()
    assert recording_encoder.calls == [inputs]  # one encoder call for all of them
    assert order[-1] == 1 and sorted(order) == [0, 1, 2, 3]
    assert seen[0] == f"billing:{inputs[0]}" and seen[1] == f"tech:{inputs[1]}"
    assert seen[2] == f"default:{inputs[2]}" and isinstance(seen[3], RuntimeError)
    runs = recorder.roots("SynaptorouteRouter")
    routes = [str(recorder.decision(r).outputs["synaptoroute_route"]) for r in runs]
    assert sorted(routes) == ["None", "billing", "billing", "tech"]
    assert all(r.ended for r in runs)
    with pytest.raises(RuntimeError, match="billing failed"):
        list(router.batch_as_completed(inputs[3:]))
    assert list(router.batch_as_completed([])) == []
