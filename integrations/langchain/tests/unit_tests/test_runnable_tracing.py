"""The run tree: the router's own chain run, its decision and the chosen branch as child runs."""

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
    from conftest import Run, RunRecorder


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
    assert root.metadata["tenant"] == "acme"
    # The decision is made inside the router's run, as RunnableBranch's conditions are:
    # a first child run whose input is the router's and whose outputs are the decision.
    decision, branch = recorder.children(root)
    assert decision.name == "synaptoroute.route" and decision.kind == "chain"
    assert decision.inputs == {"input": "I was charged twice this month"}
    assert decision.ended and decision.error is None
    meta = decision.outputs
    assert meta["synaptoroute_route"] == "billing"
    assert meta["synaptoroute_candidate"] == "billing"
    assert meta["synaptoroute_reason"] == "matched"
    assert 0.5 <= meta["synaptoroute_score"] <= 1.0
    assert decision.tags == ["support"] and decision.metadata["tenant"] == "acme"

    assert branch.name == "billing"  # the chosen branch's run is named after its route
    assert sorted(branch.tags) == ["route:billing", "support"]
    assert branch.metadata["tenant"] == "acme"
    assert branch.metadata["synaptoroute_route"] == "billing"
    assert branch.metadata["synaptoroute_score"] == meta["synaptoroute_score"]
    steps = recorder.children(branch)
    assert [s.name for s in steps] == ["ChatPromptTemplate", "FakeListChatModel", "StrOutputParser"]
    assert all("support" in s.tags for s in steps)
    # The route reaches the grandchildren (the chat model's run too); the tag does not.
    assert all(s.metadata["synaptoroute_route"] == "billing" for s in steps)
    assert all("route:billing" not in s.tags for s in steps)


def test_unmatched_input_runs_the_default_tagged_route_default(
    adaptive_router: AdaptiveRouter, recorder: RunRecorder
) -> None:
    router = _support_router(adaptive_router)
    out = router.invoke({"input": "who won the world cup"}, {"callbacks": [recorder]})
    assert out == "general answer"
    (root,) = recorder.roots("SynaptorouteRouter")
    decision = recorder.decision(root).outputs
    assert decision["synaptoroute_route"] is None
    assert decision["synaptoroute_reason"] == "below_threshold"
    assert decision["synaptoroute_candidate"] in adaptive_router.route_names
    (branch,) = recorder.branches(root)
    assert branch.metadata["synaptoroute_route"] is None
    assert branch.tags == ["route:default"]
    assert branch.name == "default"


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
    assert recorder.decision(failed_branch).error is None
    assert [c.tags for c in recorder.branches(failed_branch)] == [["route:billing"]]
    assert isinstance(no_match.error, NoRouteMatchedError)
    assert recorder.decision(no_match).outputs["synaptoroute_route"] is None
    assert recorder.branches(no_match) == []
    # Input that could not be read: both runs open; the decision's ends with the error.
    assert isinstance(bad_input.error, TypeError)
    assert recorder.decision(bad_input).error is bad_input.error
    assert recorder.branches(bad_input) == []


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
    assert recorder.decision(router_run).outputs["synaptoroute_route"] == "tech"
    assert [c.tags for c in recorder.branches(router_run)] == [["route:tech"]]


def _nested_router(adaptive_router: AdaptiveRouter) -> SynaptorouteRouter[Any, Any]:
    """Each branch is a chain holding a chain that holds the chat model (two levels)."""

    def answer(topic: str) -> Any:
        prompt = ChatPromptTemplate.from_messages([("system", topic), ("human", "{input}")])
        inner = FakeListChatModel(responses=[f"{topic} answer"]) | StrOutputParser()
        return prompt | inner.with_config(run_name="inner")

    return SynaptorouteRouter(
        router=adaptive_router,
        runnables={name: answer(name) for name in adaptive_router.route_names},
        default=answer("general"),
    )


def _below(recorder: RunRecorder, run: Run) -> list[Run]:
    """Every run below ``run``, depth first."""
    out: list[Run] = []
    for child in recorder.children(run):
        out += [child, *_below(recorder, child)]
    return out


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_route_and_score_reach_every_run_below_the_router(
    adaptive_router: AdaptiveRouter, recorder: RunRecorder, mode: str
) -> None:
    router = _nested_router(adaptive_router)
    config: RunnableConfig = {"callbacks": [recorder], "metadata": {"tenant": "acme"}}
    value = {"input": "my password doesn't work anymore"}
    out = router.invoke(value, config) if mode == "sync" else await router.ainvoke(value, config)
    assert out == "tech answer"
    (root,) = recorder.roots("SynaptorouteRouter")
    decision = recorder.decision(root)
    (branch,) = recorder.branches(root)
    below = [branch, *_below(recorder, branch)]
    names = [run.name for run in below]
    assert names[:3] == ["tech", "ChatPromptTemplate", "inner"]
    assert "FakeListChatModel" in names
    (chat,) = [run for run in below if run.kind == "chat_model"]
    assert recorder.runs[chat.parent_run_id].name == "inner"  # type: ignore[index]
    for run in below:
        assert run.metadata["synaptoroute_route"] == "tech", run.name
        assert run.metadata["synaptoroute_score"] == decision.outputs["synaptoroute_score"]
        assert run.metadata["tenant"] == "acme"


def test_get_graph_draws_one_conditional_edge_per_route(adaptive_router: AdaptiveRouter) -> None:
    router = _support_router(adaptive_router)
    graph = router.get_graph()
    (router_id,) = [key for key, node in graph.nodes.items() if node.data is router]
    out_edges = [edge for edge in graph.edges if edge.source == router_id]
    assert sorted(str(edge.data) for edge in out_edges) == sorted(
        [*adaptive_router.route_names, "default"]
    )
    assert all(edge.conditional for edge in out_edges)
    # Each edge leads into its own branch: the prompt of that route's chain.
    assert [graph.nodes[edge.target].name for edge in out_edges] == ["ChatPromptTemplate"] * 4
    assert len({edge.target for edge in out_edges}) == len(out_edges)
    # Every branch ends in the router's output node.
    (last,) = [graph.last_node()]
    assert last is not None
    assert sum(1 for edge in graph.edges if edge.target == last.id) == len(out_edges)
