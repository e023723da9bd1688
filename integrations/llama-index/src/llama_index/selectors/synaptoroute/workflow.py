"""``SynaptorouteAgentWorkflow``: each user message of an ``AgentWorkflow`` sent straight to its agent.

LlamaIndex's ``AgentWorkflow`` starts every conversation at its ``root_agent`` and keeps
the current agent across runs on the same ``Context``; reaching another agent costs a
handoff, an LLM call that calls the handoff tool. This subclass ranks each run's user
message against the agents (each one a choice: its name, its ``description`` and the
``utterances`` given for it), as :class:`~llama_index.selectors.synaptoroute.SynaptorouteSelector`
ranks choices, locally, and starts the run at the best agent when its score reaches
the threshold: no LLM call, one local embedding per run.

It overrides the ``init_run`` step the way LlamaIndex workflows let a subclass change
a step: a ``@step`` method of the same name, which runs the base step and then routes.
The decision is one pure function, :func:`choose_agent`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.agent.workflow import AgentWorkflow
from llama_index.core.agent.workflow.base_agent import BaseWorkflowAgent
from llama_index.core.agent.workflow.workflow_events import AgentInput, AgentWorkflowStartEvent
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.tools.types import ToolMetadata
from llama_index.core.workflow import Context, Event, step

from synaptoroute import (
    EncoderProtocol,
    InvalidInputError,
    RouteMatch,
    RouterOverloadedError,
    RouterTimeoutError,
)
from synaptoroute.batching import check_timeout
from synaptoroute.checks import check_threshold

from .selector import SynaptorouteSelector, _index

__all__ = ["ROUTE_KEY", "AgentRouteEvent", "SynaptorouteAgentWorkflow", "choose_agent"]

#: The ``ctx.store`` key of the last run's routing decision (a dict, see
#: :meth:`AgentRouteEvent.as_record`).
ROUTE_KEY = "synaptoroute_route"


class AgentRouteEvent(Event):
    """How a run's user message was routed; written to the event stream before the
    run's first agent step, and kept as a dict under ``ctx.store["synaptoroute_route"]``.

    Attributes:
        agent_name: the agent the run starts at.
        routed: ``True`` when the message's best agent reached ``threshold`` and the run
            starts there; ``False`` when the current agent was kept (the root agent in a
            new conversation).
        best_agent: the best-scoring agent (``None``: nothing was ranked, e.g. an empty
            message).
        score: ``best_agent``'s score (``None`` with it).
        threshold: the least score that routes.
    """

    agent_name: str
    routed: bool
    best_agent: str | None
    score: float | None
    threshold: float

    def as_record(self) -> dict[str, Any]:
        """The decision as a plain dict (what ``ctx.store`` keeps: it serialises with
        the context)."""
        return {
            "agent_name": self.agent_name,
            "routed": self.routed,
            "best_agent": self.best_agent,
            "score": self.score,
            "threshold": self.threshold,
        }


def choose_agent(
    ranked: Sequence[RouteMatch], agents: Sequence[str], threshold: float
) -> str | None:
    """The agent a run's message goes to, or ``None`` to keep the current agent.

    Pure. ``ranked`` is what :meth:`SynaptorouteSelector.arank` returns for the agents
    (best first, each route named by its agent's index in ``agents``): the best agent
    when its score reaches ``threshold``, else ``None`` (as for ``[]``, an empty
    message).
    """
    if not ranked or ranked[0].score < threshold:
        return None
    return agents[_index(ranked[0])]


class SynaptorouteAgentWorkflow(AgentWorkflow):
    """An ``AgentWorkflow`` that starts each run at the agent its user message matches.

    Each agent is a route whose texts are its ``description``, its name as a phrase
    and the ``utterances`` given for its name (built by a :class:`SynaptorouteSelector`
    when the workflow is made: one encoder call). At the start of each run, once the
    base ``init_run`` has stored the user's text, that text is ranked (on the router's
    batching worker, off the event loop): when the best agent's score reaches
    ``threshold``, it becomes ``ctx.store["current_agent_name"]`` and the run starts
    there, with no handoff; below it, for an empty message, with a single agent, or
    when the router is too busy (``route_timeout`` passed, or the text refused as
    overload), the current agent is kept (the root agent in a new conversation, else
    the agent the last run ended at).
    Handoffs work as in ``AgentWorkflow``, and the next run is routed again. Routing
    ignores ``can_handoff_to``, which limits handoffs only.

    The decision is written to the event stream as an :class:`AgentRouteEvent` and
    kept under ``ctx.store["synaptoroute_route"]`` (:data:`ROUTE_KEY`).

    Example:
        >>> workflow = SynaptorouteAgentWorkflow(
        ...     agents=[billing, tech_support, travel],
        ...     root_agent="billing",
        ...     utterances={"travel": ["book me a flight", "find a hotel in Rome"]},
        ...     threshold=0.45,
        ... )
        >>> handler = workflow.run(user_msg="I need a train to Paris", ctx=ctx)
    """

    def __init__(
        self,
        agents: Sequence[BaseWorkflowAgent],
        *args: Any,
        utterances: Mapping[str, Sequence[str]] | None = None,
        threshold: float | None = None,
        selector: SynaptorouteSelector | None = None,
        encoder: EncoderProtocol | BaseEmbedding | Any | None = None,
        route_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Build the workflow and its agents' routes (one encoder call, or none when
        ``selector`` has them).

        Args:
            agents, args, kwargs: what ``AgentWorkflow`` takes (``timeout`` included:
                the workflow's, not the routing's).
            utterances: agent name -> example messages that should start a run at the
                agent. A key that names no agent is refused.
            threshold: the least score, in ``[0, 1]``, that routes a message (``None``:
                the selector's threshold, by default the router's 0.5).
            selector: a selector whose encoder, utterances and cache of routes to share;
                not with ``encoder`` or ``utterances``.
            encoder: a synaptoroute encoder or any LlamaIndex ``BaseEmbedding``, as
                :meth:`SynaptorouteSelector.from_defaults` takes it; default the bundled
                local model.
            route_timeout: seconds a run's routing may wait for the batching worker
                (``None``: no bound); past it, or when the worker refuses the text
                as overloaded, the run starts at the current agent (routing only
                saves a handoff) and the decision says ``routed=False``.

        Raises:
            InvalidInputError: ``threshold`` or ``route_timeout`` is out of range,
                ``selector`` is given with ``encoder`` or ``utterances`` or is no
                selector, an ``utterances`` key names no agent, or an agent has nothing
                to route by.
            ValueError: what ``AgentWorkflow`` refuses (no agents, no root agent, ...).
        """
        # Checked before the base class does its work: they need no agent.
        self._threshold = (
            None if threshold is None else check_threshold(threshold, "threshold", low=0.0)
        )
        try:
            check_timeout(route_timeout)
        except InvalidInputError as error:
            raise InvalidInputError(f"route_timeout: {error}") from None
        self._route_timeout = route_timeout
        given = selector
        # Checks the utterances' types (a mapping of lists of strings) first.
        selector = SynaptorouteSelector.given_or_made(
            selector, encoder=encoder, utterances=utterances
        )
        super().__init__(list(agents), *args, **kwargs)
        if given is None:
            unknown = sorted(set(utterances or {}) - set(self.agents))
            if unknown:
                # The agents are fixed here: a key for no agent is a typo or a leftover.
                msg = (
                    f"utterances are given for {unknown[0]!r}, which is no agent of this "
                    f"workflow; its agents are {sorted(self.agents)}"
                )
                raise InvalidInputError(msg)
        self._selector = selector
        self._agent_names = tuple(self.agents)
        self._choices = tuple(
            ToolMetadata(name=agent.name, description=agent.description)
            for agent in self.agents.values()
        )
        # Built now, as SynaptorouteToolRetriever builds its tools' routes: an agent with
        # nothing to route by, or a warning about few examples, comes from this line,
        # not from the first run. One agent has nothing to choose from: no routes (and
        # no warning about its examples, which from_tools_or_functions cannot pass).
        if len(self._choices) > 1:
            selector.router_for(self._choices)

    @property
    def selector(self) -> SynaptorouteSelector:
        """The selector that builds and ranks the agents' routes."""
        return self._selector

    @property
    def threshold(self) -> float:
        """The least score that routes a message: the one given, else the selector's,
        else the router's default (0.5)."""
        if self._threshold is not None:
            return self._threshold
        return self._selector.effective_threshold

    @property
    def route_timeout(self) -> float | None:
        """Seconds a run's routing may wait for the batching worker (``None``: no bound)."""
        return self._route_timeout

    async def aroute(self, text: str, current_agent_name: str) -> AgentRouteEvent:
        """The routing decision for ``text`` in a conversation now at ``current_agent_name``
        (what each run's start does, without a run): the best agent if it reaches
        :attr:`threshold`, else the current one. An empty text ranks nothing."""
        threshold = self.threshold
        ranked: list[RouteMatch] = []
        if text and len(self._choices) > 1:
            try:
                ranked = await self._selector.arank(
                    self._choices, text, 1, timeout=self._route_timeout
                )
            except (RouterTimeoutError, RouterOverloadedError):
                # Routing saves a handoff, no more: a busy router does not fail the run.
                ranked = []
        chosen = choose_agent(ranked, self._agent_names, threshold)
        best = ranked[0] if ranked else None
        return AgentRouteEvent(
            agent_name=current_agent_name if chosen is None else chosen,
            routed=chosen is not None,
            best_agent=None if best is None else self._agent_names[_index(best)],
            score=None if best is None else best.score,
            threshold=threshold,
        )

    @step
    async def init_run(self, ctx: Context, ev: AgentWorkflowStartEvent) -> AgentInput:
        """``AgentWorkflow``'s ``init_run``, then the run sent to the agent its user
        message matches (see the class docstring)."""
        agent_input: AgentInput = await super().init_run(ctx, ev)
        text: str | None = await ctx.store.get("user_msg_str", default="")
        route = await self.aroute(text or "", agent_input.current_agent_name)
        await ctx.store.set(ROUTE_KEY, route.as_record())
        ctx.write_event_to_stream(route)
        if not route.routed:
            return agent_input
        await ctx.store.set("current_agent_name", route.agent_name)
        return AgentInput(input=agent_input.input, current_agent_name=route.agent_name)

    async def aclose(self) -> None:
        """Stop the batching workers routing started on the running loop (the
        selector's: with a shared selector, its other choice sets' too)."""
        await self._selector.aclose()
