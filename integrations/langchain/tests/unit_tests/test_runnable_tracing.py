"""The run tree: the router's own chain run, the chosen branch as a tagged child run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_synaptoroute import SynaptorouteRouter

from synaptoroute import AdaptiveRouter, NoRouteMatchedError

if TYPE_CHECKING:
    from conftest import RunRecorder


def _support_router(adaptive_router: AdaptiveRouter) -> SynaptorouteRouter[Any, Any]:
    def answer(topic: str) -> Any:
        prompt = ChatPromptTemplate.from_messages([("system", topic), ("human", "{input}")])
        return prompt | FakeListChatModel(responses=[f"{topic} answer"]) | StrOutputParser()

    return SynaptorouteRouter(
        router=adaptive_router,
        runnables={name: answer(name) for name in adaptive_router.route_names},
        default=answer("general"),
    )


def test_invoke_traces_like_runnable_branch(
    adaptive_router: AdaptiveRouter, recorder: RunRecorder
) -> None:
    router = _support_router(adaptive_router)
    config: RunnableConfig = {
        "callbacks": [recorder],
        "tags": ["support"],
        "metadata": {"tenant": "acme"},
        "run_name": "support-router",
    }
    out = router.invoke({"input": "I was charged twice this month"}, config)
    assert out == "billing answer"

    (root,) = recorder.roots("support-router")
    assert root.ended and root.error is None and root.outputs == "billing answer"
    assert root.tags == ["support"]
    meta = root.metadata
    assert meta["tenant"] == "acme"
    assert meta["synaptoroute_route"] == "billing"
    assert meta["synaptoroute_candidate"] == "billing"
    assert meta["synaptoroute_reason"] == "matched"
    assert 0.5 <= meta["synaptoroute_score"] <= 1.0

    (branch,) = recorder.children(root)
    assert branch.name == "RunnableSequence"
    assert sorted(branch.tags) == ["route:billing", "support"]
    # Config metadata reaches the branch; the route fields describe the router's run only.
    assert branch.metadata["tenant"] == "acme"
    assert "synaptoroute_route" not in branch.metadata
    steps = recorder.children(branch)
    assert [s.name for s in steps] == ["ChatPromptTemplate", "FakeListChatModel", "StrOutputParser"]
    assert all("support" in s.tags for s in steps)


def test_unmatched_input_runs_the_default_tagged_route_default(
    adaptive_router: AdaptiveRouter, recorder: RunRecorder
) -> None:
    router = _support_router(adaptive_router)
    out = router.invoke({"input": "who won the world cup"}, {"callbacks": [recorder]})
    assert out == "general answer"
    (root,) = recorder.roots("SynaptorouteRouter")
    assert root.metadata["synaptoroute_route"] is None
    assert root.metadata["synaptoroute_reason"] == "below_threshold"
    assert root.metadata["synaptoroute_candidate"] in adaptive_router.route_names
    (branch,) = recorder.children(root)
    assert branch.tags == ["route:default"]


def test_errors_end_the_router_run(adaptive_router: AdaptiveRouter, recorder: RunRecorder) -> None:
    def boom(x: str) -> str:
        msg = "branch failed"
        raise RuntimeError(msg)

    runnables = {name: RunnableLambda(boom) for name in adaptive_router.route_names}
    router: SynaptorouteRouter[Any, str] = SynaptorouteRouter(
        router=adaptive_router, runnables=runnables
    )
    config: RunnableConfig = {"callbacks": [recorder]}
    with pytest.raises(RuntimeError, match="branch failed"):
        router.invoke("I need a refund", config)
    with pytest.raises(NoRouteMatchedError):
        router.invoke("who won the world cup", config)
    with pytest.raises(TypeError):
        router.invoke(12, config)

    failed_branch, no_match, bad_input = recorder.roots("SynaptorouteRouter")
    assert isinstance(failed_branch.error, RuntimeError)
    assert [c.tags for c in recorder.children(failed_branch)] == [["route:billing"]]
    assert isinstance(no_match.error, NoRouteMatchedError)
    assert no_match.metadata["synaptoroute_route"] is None
    assert recorder.children(no_match) == []
    # Input that could not be read: the run still opens and records the error.
    assert isinstance(bad_input.error, TypeError)
    assert "synaptoroute_route" not in bad_input.metadata


def test_nested_in_a_chain_the_router_is_a_child_run(
    adaptive_router: AdaptiveRouter, recorder: RunRecorder
) -> None:
    wrap: RunnableLambda[str, dict[str, str]] = RunnableLambda(lambda x: {"input": x})
    chain = wrap | _support_router(adaptive_router)
    assert chain.invoke("Reset my password", {"callbacks": [recorder]}) == "tech answer"
    (sequence,) = recorder.roots("RunnableSequence")
    _first_step, router_run = recorder.children(sequence)
    assert router_run.name == "SynaptorouteRouter"
    assert router_run.tags == ["seq:step:2"]
    assert router_run.metadata["synaptoroute_route"] == "tech"
    assert [c.tags for c in recorder.children(router_run)] == [["route:tech"]]
