"""Zero-token tool selection for LangChain 1.x agents (``create_agent`` middleware).

Needs the ``agents`` extra: ``pip install 'integrations/langchain[agents]'`` in a checkout
of this repository.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.embeddings import Embeddings
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.tools import BaseTool
from typing_extensions import override

from synaptoroute import AdaptiveRouter, EncoderProtocol, InvalidInputError, Route, RouteMatch

# The same repository's core (pinned below 0.3): a fork waits for this selector's lock
# like the router's own, so a child never inherits it held.
from synaptoroute.checks import check_count, check_threshold
from synaptoroute.forking import APP, hold_across_fork

from ._inputs import last_human_text
from ._tools import check_tool_keys, tool_utterances
from .embeddings import as_encoder

__all__ = ["SynaptorouteToolSelectorMiddleware"]

#: What to bind when no tool reaches the threshold: every tool, or only ``always_include``.
NoMatch = Literal["all", "none"]


@dataclass(frozen=True)
class _Selection:
    """One model call's selection problem: the user's text and the tools to choose among."""

    text: str
    candidates: list[BaseTool]
    k: int


class SynaptorouteToolSelectorMiddleware(AgentMiddleware):
    """Binds only the tools that match the latest user message, before each model call.

    The zero-token counterpart of LangChain's ``LLMToolSelectorMiddleware``: each
    tool is a route whose examples are its name and description plus any
    ``utterances`` given for it; the last human message is embedded locally and the
    ``max_tools`` best tools whose score reaches ``threshold`` are bound to the model.
    No model is called to select. Tools in ``always_include`` are always bound and
    do not count against ``max_tools``; provider tool dicts are passed through.

    The routes are built on the first model call from the agent's tools and rebuilt
    only for tools that are new or whose name or description changed; a tool that
    disappears is dropped from later selections.

    With no human message in the conversation, or no tool reaching ``threshold``
    (``on_no_match="all"``), every tool is bound, so the agent works as it would
    without this middleware; ``on_no_match="none"`` binds only ``always_include``.

    ``wrap_model_call`` and ``awrap_model_call`` share one selection; the async one
    embeds through the router's batching worker.

    Example:
        ```python
        from langchain.agents import create_agent
        from langchain_synaptoroute import SynaptorouteToolSelectorMiddleware

        agent = create_agent(
            model,
            tools=[get_weather, convert_currency, search_flights, ...],
            middleware=[
                SynaptorouteToolSelectorMiddleware(
                    max_tools=3,
                    always_include=["search_docs"],
                    utterances={"get_weather": ["will it rain tomorrow?"]},
                )
            ],
        )
        ```
    """

    def __init__(
        self,
        *,
        utterances: Mapping[str, Sequence[str]] | None = None,
        max_tools: int | None = 5,
        always_include: Sequence[str] = (),
        threshold: float | None = None,
        on_no_match: NoMatch = "all",
        router: AdaptiveRouter | None = None,
        encoder: EncoderProtocol | Embeddings | Any | None = None,
        timeout: float | None = None,
    ) -> None:
        """Configure the selector.

        Args:
            utterances: tool name -> example requests that should select the tool.
            max_tools: the most tools selected per call (``None``: no limit).
            always_include: tool names bound on every call, outside ``max_tools``.
            threshold: minimum similarity score of a selected tool (``None``: the
                ``max_tools`` best are selected whatever their score).
            on_no_match: ``"all"`` binds every tool when none reaches
                ``threshold``; ``"none"`` binds only ``always_include``.
            router: the router holding the tool routes (for instance persisted
                with ``SQLiteStorage``); a tool whose name is already a route in it
                keeps that route. Default a new in-memory router.
            encoder: the encoder of the default router (a synaptoroute encoder or a
                LangChain ``Embeddings``); default the bundled local model.
            timeout: seconds an async call may wait for the batching worker.

        Raises:
            InvalidInputError: ``max_tools`` is under 1, ``threshold`` is outside
                ``[0, 1]``, ``on_no_match`` is unknown, or both ``router`` and
                ``encoder`` are given.
        """
        super().__init__()
        # The core's checks: numpy scalars are numbers, a bool is none.
        if max_tools is not None:
            max_tools = check_count(max_tools, "max_tools", 1)
        if threshold is not None:
            threshold = check_threshold(threshold, "threshold", low=0.0, high=1.0)
        if on_no_match not in ("all", "none"):
            msg = f"on_no_match must be 'all' or 'none', got {on_no_match!r}"
            raise InvalidInputError(msg)
        if router is not None and encoder is not None:
            msg = "pass router= or encoder=, not both (the router has its encoder)"
            raise InvalidInputError(msg)
        self.utterances = {name: list(texts) for name, texts in (utterances or {}).items()}
        self.max_tools = max_tools
        self.always_include = list(always_include)
        self.threshold = threshold
        self.on_no_match: NoMatch = on_no_match
        self.timeout = timeout
        self._encoder = encoder
        self._router = router
        # Route name -> the examples this selector stored for it; a tool whose
        # examples change gets its route replaced, others are never re-encoded.
        self._built: dict[str, list[str]] = {}
        # The (name, description) signatures of tool sets whose routes all hold what
        # those tools need: a call offering one of them changes nothing and takes no
        # lock. A set, not the last one, so agents with other tools sharing this
        # instance do not re-check (under the lock) on every call.
        self._checked: set[tuple[tuple[str, str], ...]] = set()
        # Every tool name offered so far: an utterances key must name one of them.
        self._seen_names: set[str] = set()
        self._lock = threading.Lock()  # held while it makes the router or changes routes
        hold_across_fork(self, APP)

    @property
    def router(self) -> AdaptiveRouter:
        """The router holding one route per tool (created on first use)."""
        router = self._router
        if router is not None:  # no lock: another call may hold it while it encodes
            return router
        with self._lock:
            if self._router is None:
                self._router = AdaptiveRouter(encoder=as_encoder(self._encoder))
            return self._router

    # -- the selection, shared by the sync and async paths ---------------------------
    def _sync_routes(self, tools: Sequence[BaseTool]) -> None:
        """Give every tool a route; (re)build only routes that are new or changed.

        Raises:
            InvalidInputError: tool names repeat, ``always_include`` names a tool this
                call does not offer, or ``utterances`` names a tool no call offered.
        """
        # Agents offer the same tools on every call: one lookup skips the rest.
        signature = _signature(tools)
        router = self.router
        # ... unless a tool's route was deleted from a shared ``router=`` since: then
        # it is built again (a tool without a route could never be selected).
        if signature in self._checked and all(tool.name in router for tool in tools):
            return
        names = [tool.name for tool in tools]
        # A call may offer a subset of the tools (another middleware filters them, or
        # agents with other tools share this instance): an utterances key only has to
        # name a tool some call offered; a key none did is a typo or a stale name.
        seen = self._seen_names | set(names)
        check_tool_keys(names, None, "utterances")
        check_tool_keys(sorted(seen), self.utterances, "utterances")
        check_tool_keys(names, dict.fromkeys(self.always_include), "always_include")
        self._seen_names = seen
        with self._lock:
            changed = []
            for tool in tools:
                examples = tool_utterances(tool, self.utterances.get(tool.name, ()))
                known = self._built.get(tool.name)
                if tool.name in router and (known is None or known == examples):
                    continue
                changed.append(Route(name=tool.name, utterances=examples))
                self._built[tool.name] = examples
            if changed:
                router.add_routes(changed, replace=True)
                # A replaced route may be another tool set's (same name, another
                # description): the sets naming it are checked again on their next call.
                names_changed = {route.name for route in changed}
                self._checked = {
                    checked
                    for checked in self._checked
                    if not any(name in names_changed for name, _ in checked)
                }
            if len(self._checked) >= _MAX_CHECKED:
                self._checked.clear()
            self._checked.add(signature)

    def _plan(
        self, offered: Sequence[BaseTool | dict[str, Any]], messages: Sequence[BaseMessage]
    ) -> _Selection | None:
        """What to select among for a model call, or ``None`` when its tools stay as they are."""
        tools = [tool for tool in offered if isinstance(tool, BaseTool)]
        if tools:
            self._sync_routes(tools)  # validates the names on every call
        candidates = [tool for tool in tools if tool.name not in self.always_include]
        text = last_human_text(messages)
        if not candidates or text is None or not text.strip():
            return None
        # Routes of tools that are no candidate (absent from this call, or always
        # included) may rank above the candidates; ask for enough that max_tools
        # candidates remain.
        stored = len(self.router)
        wanted = len(candidates) if self.max_tools is None else self.max_tools
        k = max(1, min(stored, wanted + max(stored - len(candidates), 0)))
        return _Selection(text=text, candidates=candidates, k=k)

    def _wider(self, plan: _Selection, ranked: Sequence[RouteMatch]) -> int | None:
        """A larger k when ``ranked`` was cut before it held ``max_tools`` candidates:
        routes another call added after the plan (another agent's tools) outranked
        them, and every tool would have been bound. ``None`` when ``ranked`` will do."""
        present = {tool.name for tool in plan.candidates}
        wanted = len(present) if self.max_tools is None else min(self.max_tools, len(present))
        found = sum(1 for m in ranked if m.candidate in present)
        stored = len(self.router)
        if found >= wanted or len(ranked) < plan.k or stored <= plan.k:
            return None
        return stored

    def _chosen(self, plan: _Selection, ranked: Sequence[RouteMatch]) -> list[str] | None:
        """The names of the selected tools, best first; ``None`` binds every tool."""
        present = {tool.name for tool in plan.candidates}
        names = [
            m.candidate
            for m in ranked
            if m.candidate in present and (self.threshold is None or m.score >= self.threshold)
        ]
        if self.max_tools is not None:
            names = names[: self.max_tools]
        if not names and self.on_no_match == "all":
            return None
        return [name for name in names if name is not None]

    def _ranked(self, plan: _Selection) -> list[RouteMatch]:
        """The routes ranked for ``plan`` (sync; the async hook awaits the same two steps)."""
        ranked = self.router.query_top_k(plan.text, plan.k)
        wider = self._wider(plan, ranked)
        return ranked if wider is None else self.router.query_top_k(plan.text, wider)

    def _apply(
        self,
        request: ModelRequest,
        chosen: list[str] | None,
    ) -> ModelRequest:
        if chosen is None:
            return request
        keep = set(chosen) | set(self.always_include)
        tools = [
            tool for tool in request.tools if not isinstance(tool, BaseTool) or tool.name in keep
        ]
        return request.override(tools=tools)

    def select_tools(self, text: str, tools: Sequence[BaseTool]) -> list[str]:
        """The names of the tools this middleware would bind for ``text``, best first.

        ``always_include`` tools come last; every tool when nothing is selected and
        ``on_no_match="all"``. Used by the middleware itself, and handy for checks.
        """
        plan = self._plan(tools, [HumanMessage(text)])
        if plan is None:
            return [tool.name for tool in tools]
        chosen = self._chosen(plan, self._ranked(plan))
        if chosen is None:
            return [tool.name for tool in tools]
        return [*chosen, *(name for name in self.always_include if name not in chosen)]

    # -- the middleware hooks ----------------------------------------------------------
    @override
    def wrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], ModelResponse],
    ) -> ModelResponse | AIMessage:
        """Bind the selected tools, then call the model."""
        plan = self._plan(request.tools, request.messages)
        if plan is None:
            return handler(request)
        return handler(self._apply(request, self._chosen(plan, self._ranked(plan))))

    @override
    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse | AIMessage:
        """Like :meth:`wrap_model_call`; new routes are encoded off the event loop."""
        offered = [tool for tool in request.tools if isinstance(tool, BaseTool)]
        if _signature(offered) in self._checked:  # nothing to encode: no thread hop
            plan = self._plan(request.tools, request.messages)
        else:
            plan = await asyncio.to_thread(self._plan, request.tools, request.messages)
        if plan is None:
            return await handler(request)
        ranked = await self.router.aquery_top_k(plan.text, plan.k, timeout=self.timeout)
        wider = self._wider(plan, ranked)
        if wider is not None:
            ranked = await self.router.aquery_top_k(plan.text, wider, timeout=self.timeout)
        return await handler(self._apply(request, self._chosen(plan, ranked)))


#: Tool sets remembered as checked (agents sharing one instance); past it, all are
#: forgotten and checked again once.
_MAX_CHECKED = 256


def _signature(tools: Sequence[BaseTool]) -> tuple[tuple[str, str], ...]:
    """What the routes of ``tools`` depend on: each tool's name and description."""
    return tuple((tool.name, tool.description) for tool in tools)
