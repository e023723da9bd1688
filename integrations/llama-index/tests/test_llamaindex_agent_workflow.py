"""``SynaptorouteAgentWorkflow``: each run of an ``AgentWorkflow`` started at its agent.

Real bundled model, real ``FunctionAgent``s and ``AgentWorkflow`` machinery, LlamaIndex's
mock LLMs.
"""

from __future__ import annotations

import inspect
import re
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import llama_index.core.llms.mock
import llamaindex_support as support
import pytest
from llama_index.core.agent.workflow import AgentOutput, FunctionAgent
from llama_index.core.llms import ChatMessage, MockLLM
from llama_index.core.llms.llm import LLM
from llama_index.core.workflow import Context
from llama_index.selectors.synaptoroute import (
    AgentRouteEvent,
    SynaptorouteAgentWorkflow,
    SynaptorouteSelector,
)
from llama_index.selectors.synaptoroute.workflow import ROUTE_KEY, choose_agent
from llamaindex_support import docs_example

from synaptoroute import Encoder, InvalidInputError, RouteMatch
from synaptoroute.encoder import EncoderWrapper
from synaptoroute.testing import RecordingEncoder

# The support desk's billing and tech support (llamaindex_support), and a travel desk.
DESCRIPTIONS = {
    "billing": support.DESCRIPTIONS["billing"],
    "tech_support": support.DESCRIPTIONS["tech_support"],
    "travel": "Books flights, trains and hotels for business trips",
}
UTTERANCES = {
    "billing": support.UTTERANCES["billing"],
    "tech_support": support.UTTERANCES["tech_support"],
    "travel": [
        "Book me a flight to Tokyo",
        "Find a hotel in Rome for two nights",
        "I need a train ticket to Paris",
    ],
}
TRAVEL = "Can you find me a hotel in Rome?"
TECH = "the app crashes every time I log in"
OFF_TOPIC = "what is the boiling point of mercury"


def _function_calling_mock() -> Callable[..., LLM]:
    """LlamaIndex's ``MockFunctionCallingLLM`` (a ``FunctionAgent`` needs a
    function-calling LLM), or skip: llama-index-core 0.14.0 has none, and one without
    ``response_generator`` cannot be told to answer instead of calling every tool (the
    handoff tool included)."""
    mock = getattr(llama_index.core.llms.mock, "MockFunctionCallingLLM", None)
    if mock is None or "response_generator" not in inspect.signature(mock).parameters:
        pytest.skip("this llama-index-core has no MockFunctionCallingLLM(response_generator=)")
    return mock  # type: ignore[no-any-return]


def _agents(llm_for: Callable[[str], LLM]) -> list[FunctionAgent]:
    return [
        FunctionAgent(name=name, description=text, llm=llm_for(name))
        for name, text in DESCRIPTIONS.items()
    ]


@pytest.fixture
async def make(encoder: Encoder) -> AsyncIterator[Callable[..., SynaptorouteAgentWorkflow]]:
    """A workflow factory over agents with plain ``MockLLM``s (enough to route; a run
    needs :func:`answering`); stops the routing workers afterwards."""
    made: list[SynaptorouteAgentWorkflow] = []

    def build(**kwargs: Any) -> SynaptorouteAgentWorkflow:
        kwargs.setdefault("agents", _agents(lambda name: MockLLM()))
        kwargs.setdefault("root_agent", "billing")
        if "selector" not in kwargs:
            kwargs.setdefault("encoder", encoder)
            kwargs.setdefault("utterances", UTTERANCES)
        workflow = SynaptorouteAgentWorkflow(**kwargs)
        made.append(workflow)
        return workflow

    yield build
    for workflow in made:
        await workflow.aclose()


@pytest.fixture
def answering() -> tuple[Callable[[str], LLM], list[str]]:
    """An ``llm_for(agent name)`` giving each agent a function-calling mock that answers
    (no tool call, so no handoff), and the names of the agents whose LLM was called."""
    mock = _function_calling_mock()
    called: list[str] = []

    def llm_for(name: str) -> LLM:
        def respond(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
            called.append(name)
            return ChatMessage(role="assistant", content=f"[{name}] done")

        return mock(response_generator=respond)

    return llm_for, called


@pytest.fixture
def conversation(
    make: Callable[..., SynaptorouteAgentWorkflow],
    answering: tuple[Callable[[str], LLM], list[str]],
) -> tuple[SynaptorouteAgentWorkflow, Context, list[str]]:
    """A workflow whose agents answer, a new conversation (``Context``) on it, and the
    names of the agents whose LLM was called."""
    llm_for, called = answering
    workflow = make(agents=_agents(llm_for))
    return workflow, Context(workflow), called


async def _run(
    workflow: SynaptorouteAgentWorkflow, ctx: Context, message: str
) -> tuple[list[AgentRouteEvent], list[str]]:
    """The run's route events and the agents its ``AgentOutput`` events name."""
    handler = workflow.run(user_msg=message, ctx=ctx)
    events = [event async for event in handler.stream_events()]
    await handler
    routes = [e for e in events if isinstance(e, AgentRouteEvent)]
    return routes, [e.current_agent_name for e in events if isinstance(e, AgentOutput)]


# -- the decision ---------------------------------------------------------------------


def _match(index: int, score: float) -> RouteMatch:
    return RouteMatch(name=str(index), score=score, candidate=str(index), threshold=0.5)


def test_choose_agent() -> None:
    agents = ["billing", "tech_support", "travel"]
    assert choose_agent([_match(2, 0.8), _match(0, 0.3)], agents, 0.5) == "travel"
    assert choose_agent([_match(1, 0.5)], agents, 0.5) == "tech_support"  # reaches it
    assert choose_agent([_match(1, 0.49)], agents, 0.5) is None  # keep the current agent
    assert choose_agent([_match(1, 0.49)], agents, 0.4) == "tech_support"  # the one given
    assert choose_agent([], agents, 0.0) is None  # an empty message ranks nothing


# -- runs -----------------------------------------------------------------------------


async def test_a_matching_message_starts_at_its_agent(
    conversation: tuple[SynaptorouteAgentWorkflow, Context, list[str]],
) -> None:
    workflow, ctx, called = conversation
    routes, outputs = await _run(workflow, ctx, TRAVEL)
    assert [(r.agent_name, r.routed, r.best_agent) for r in routes] == [("travel", True, "travel")]
    assert routes[0].score is not None and routes[0].score >= routes[0].threshold == 0.5
    assert outputs == ["travel"]
    assert called == ["travel"]  # no LLM call at the root agent: no handoff
    assert await ctx.store.get("current_agent_name") == "travel"
    # The decision, readable after the run.
    assert await ctx.store.get(ROUTE_KEY) == routes[0].as_record()


async def test_a_message_below_the_threshold_stays_at_the_root_agent(
    conversation: tuple[SynaptorouteAgentWorkflow, Context, list[str]],
) -> None:
    workflow, ctx, called = conversation
    routes, outputs = await _run(workflow, ctx, OFF_TOPIC)
    (route,) = routes
    assert (route.agent_name, route.routed) == ("billing", False)
    assert route.best_agent in DESCRIPTIONS
    assert route.score is not None and route.score < route.threshold
    assert outputs == called == ["billing"]
    assert await ctx.store.get(ROUTE_KEY) == route.as_record()


async def test_each_run_on_a_context_is_routed_again(
    conversation: tuple[SynaptorouteAgentWorkflow, Context, list[str]],
) -> None:
    workflow, ctx, called = conversation
    started = []
    for message in (TRAVEL, TECH, OFF_TOPIC):
        routes, outputs = await _run(workflow, ctx, message)
        started.append((routes[0].agent_name, routes[0].routed, outputs))
    # Below the threshold, the conversation stays where it is, not at the root agent.
    assert started == [
        ("travel", True, ["travel"]),
        ("tech_support", True, ["tech_support"]),
        ("tech_support", False, ["tech_support"]),
    ]
    assert called == ["travel", "tech_support", "tech_support"]


async def test_an_empty_message_is_not_routed(
    conversation: tuple[SynaptorouteAgentWorkflow, Context, list[str]],
) -> None:
    workflow, ctx, called = conversation
    await _run(workflow, ctx, TRAVEL)
    # AgentWorkflow refuses "", not blanks: the model reads nothing of them.
    routes, outputs = await _run(workflow, ctx, "   ")
    assert [r.as_record() for r in routes] == [
        {
            "agent_name": "travel",
            "routed": False,
            "best_agent": None,
            "score": None,
            "threshold": 0.5,
        }
    ]
    assert outputs == ["travel"]
    assert called == ["travel", "travel"]


# -- routing without a run --------------------------------------------------------------


async def test_aroute_and_the_threshold(
    make: Callable[..., SynaptorouteAgentWorkflow], encoder: Encoder
) -> None:
    workflow = make()
    assert workflow.threshold == 0.5  # the router's default
    assert (await workflow.aroute(TECH, "billing")).agent_name == "tech_support"
    assert (await workflow.aroute("", "travel")).as_record()["agent_name"] == "travel"
    off = await workflow.aroute(OFF_TOPIC, "billing")
    assert not off.routed and off.score is not None
    # A threshold under the off-topic score routes it.
    low = make(threshold=off.score / 2)
    assert (await low.aroute(OFF_TOPIC, "billing")).agent_name == off.best_agent
    # A shared selector's threshold is the default; one given overrides it.
    selector = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES, encoder=encoder, threshold=0.3
    )
    assert make(selector=selector).threshold == 0.3
    assert make(selector=selector, threshold=0.7).threshold == 0.7
    await selector.aclose()


async def test_routes_are_built_at_construction(encoder: Encoder) -> None:
    recording = RecordingEncoder(encoder)
    workflow = SynaptorouteAgentWorkflow(
        _agents(lambda name: MockLLM()),
        root_agent="billing",
        utterances=UTTERANCES,
        encoder=recording,
    )
    assert len(recording.calls) == 1  # every agent's texts, in one call
    assert "Find a hotel in Rome for two nights" in recording.calls[0]
    await workflow.aroute(TRAVEL, "billing")
    assert recording.calls[1:] == [[TRAVEL]]  # a run costs its message's embedding
    await workflow.aclose()


async def test_one_agent_is_not_routed(encoder: Encoder) -> None:
    # from_tools_or_functions makes one agent and takes no utterances: its workflow
    # warned about the agent's few examples and embedded every message for nothing.
    recording = RecordingEncoder(encoder)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        workflow = SynaptorouteAgentWorkflow(_agents(lambda name: MockLLM())[:1], encoder=recording)
    route = await workflow.aroute(TRAVEL, "billing")
    assert (route.agent_name, route.routed, route.best_agent) == ("billing", False, None)
    assert recording.calls == []
    await workflow.aclose()


class _Held(EncoderWrapper):
    """Encodes the agents' texts, then holds every later call until ``release`` is set."""

    def __init__(self, inner: Encoder) -> None:
        super().__init__(inner)
        self.release = threading.Event()
        self.built = False

    def encode(self, texts: Sequence[str]) -> Any:
        if self.built:
            self.release.wait()
        self.built = True
        return self.inner.encode(texts)


async def test_a_busy_router_keeps_the_current_agent(
    make: Callable[..., SynaptorouteAgentWorkflow], encoder: Encoder
) -> None:
    # Routing saves a handoff, no more: a route_timeout that ran out failed the run.
    # The message's embedding is held until after the wait, so the timeout runs out on
    # any machine.
    held = _Held(encoder)
    workflow = make(encoder=held, route_timeout=0.01)
    try:
        route = await workflow.aroute(TRAVEL, "billing")
    finally:
        held.release.set()
    assert (route.agent_name, route.routed, route.score) == ("billing", False, None)


def test_few_utterances_are_warned_about_at_construction(
    make: Callable[..., SynaptorouteAgentWorkflow],
) -> None:
    with pytest.warns(UserWarning, match="fewer than 3 example utterances") as caught:
        make(utterances={"travel": UTTERANCES["travel"]})
    # Building the agents (workflows themselves) warns too, about pydantic.
    (warned,) = [w for w in caught if "fewer than 3" in str(w.message)]
    assert warned.filename == __file__  # this line, not the first run


# -- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"utterances": {**UTTERANCES, "travle": ["a flight"]}}, "'travle', which is no agent"),
        ({"utterances": {"sales": ["a discount"]}}, "its agents are"),
        ({"threshold": 1.5}, r"threshold must be a number in \[0.0, 1"),
        ({"threshold": -0.1}, "threshold must be a number"),
        ({"threshold": True}, "threshold must be a number"),
        ({"route_timeout": -1}, "route_timeout: timeout must be None or a number >= 0"),
        ({"utterances": {"travel": "a flight"}}, "travel"),
    ],
)
def test_bad_settings_are_refused(
    make: Callable[..., SynaptorouteAgentWorkflow], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        make(**kwargs)


def test_selector_with_encoder_or_utterances_is_refused(
    encoder: Encoder, make: Callable[..., SynaptorouteAgentWorkflow]
) -> None:
    selector = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=encoder)
    for extra in ({"encoder": encoder}, {"utterances": UTTERANCES}):
        with pytest.raises(InvalidInputError, match="pass selector= or encoder=/utterances="):
            make(selector=selector, **extra)
    with pytest.raises(InvalidInputError, match="selector must be a SynaptorouteSelector"):
        make(selector=encoder)


def test_agent_workflow_checks_still_apply(
    make: Callable[..., SynaptorouteAgentWorkflow],
) -> None:
    with pytest.raises(ValueError, match="root agent"):
        make(root_agent=None)


# -- docs -------------------------------------------------------------------------------


def test_the_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    _function_calling_mock()
    block, _ = docs_example("SynaptorouteAgentWorkflow(")
    shown = re.findall(r"^# (\S.*)$", block.split("asyncio.run(main())", 1)[1], re.MULTILINE)
    assert capsys.readouterr().out.splitlines() == shown
