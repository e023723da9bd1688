"""Local tool search for LangChain 1.x agents on any provider (``create_agent`` middleware).

The provider-agnostic counterpart of LangChain's ``ProviderToolSearchMiddleware``: the
model gets a ``search_tools`` tool, run here against the same tool routes (and the same
ranking) as :class:`~langchain_synaptoroute.SynaptorouteToolSelectorMiddleware`, and the
tools it finds are bound from its next call on. Needs the ``agents`` extra.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse
from langchain.tools import ToolRuntime
from langchain_core.embeddings import Embeddings
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool
from langgraph.types import Command
from typing_extensions import NotRequired, override

from synaptoroute import AdaptiveRouter, EncoderProtocol, InvalidInputError
from synaptoroute.checks import check_count
from synaptoroute.forking import APP, hold_across_fork

from ._tools import check_offered, check_tool_keys
from .middleware import (
    SynaptorouteToolSelectorMiddleware,
    _check_names,
    _forced,
    _selectable,
)

__all__ = ["FOUND_TOOLS_KEY", "SynaptorouteToolSearchMiddleware", "ToolSearchState"]

#: The agent-state key holding the names of the tools the model found so far.
FOUND_TOOLS_KEY = "synaptoroute_found_tools"

DEFAULT_TOOL_NAME = "search_tools"
DEFAULT_TOOL_DESCRIPTION = (
    "Search for more tools. Only some of your tools are available now; when you need "
    "a capability none of them has, call this with a short description of what you "
    "want to do (e.g. 'convert currencies'). The tools found become available on your "
    "next step: call them then."
)

QUERY_DESCRIPTION = "What you need a tool for, in a few words."

#: Search tool calls whose searchable tools are remembered (see ``_catalogs``).
_MAX_CATALOGS = 1024


def _union(left: Sequence[str] | None, right: Sequence[str] | None) -> list[str]:
    """The reducer of :data:`FOUND_TOOLS_KEY`: the names of both, first seen first."""
    return list(dict.fromkeys([*(left or ()), *(right or ())]))


class ToolSearchState(AgentState):
    """The agent state with the tools found by searching (kept per thread by a checkpointer)."""

    synaptoroute_found_tools: NotRequired[Annotated[list[str], _union]]


def _format_results(query: str, found: Sequence[BaseTool]) -> str:
    """The search tool's answer: the tools found (``name: description``), or that none matched."""
    if not found:
        return f"No tool matches {query!r}. Try other words, or go on with the tools you have."
    lines = [f"- {tool.name}: {' '.join((tool.description or '').split())}" for tool in found]
    return "\n".join(
        [f"Found {len(found)} tool(s); you can call them from your next step:", *lines]
    )


class SynaptorouteToolSearchMiddleware(AgentMiddleware):
    """Defers tools behind a local ``search_tools`` tool the model calls to find them.

    The model starts with the tools that are not searchable and a search tool; calling
    it with a description of what it needs lists the ``max_results`` best-matching
    searchable tools (name and description), and those are bound from the next model
    call on, for the rest of the thread (the state key :data:`FOUND_TOOLS_KEY`, kept
    across turns by a checkpointer). The search is the tool selector's: each tool is a
    route built from its name, description and ``utterances``, embedded locally, so it
    works with every chat model, not only Anthropic's and OpenAI's.

    ``preselect=n`` also binds, on each call, the ``n`` searchable tools that best match
    the latest user message (what ``SynaptorouteToolSelectorMiddleware`` would pick), so
    the model often needs no search. ``threshold`` leaves out search results (and
    preselected tools) scoring under it. Provider tool dicts and tools already deferred
    (``extras["defer_loading"]``) pass through; a tool the request's ``tool_choice``
    forces stays bound.

    Example:
        ```python
        from langchain.agents import create_agent
        from langchain_synaptoroute import SynaptorouteToolSearchMiddleware

        agent = create_agent(
            model,
            tools=[get_weather, convert_currency, search_flights, ...],
            middleware=[SynaptorouteToolSearchMiddleware(always_bound=["get_weather"])],
        )
        ```
    """

    state_schema = ToolSearchState

    def __init__(
        self,
        *,
        searchable_tools: Sequence[str] | None = None,
        always_bound: Sequence[str] = (),
        max_results: int = 5,
        preselect: int = 0,
        threshold: float | None = None,
        utterances: Mapping[str, Sequence[str]] | None = None,
        router: AdaptiveRouter | None = None,
        encoder: EncoderProtocol | Embeddings | Any | None = None,
        timeout: float | None = None,
        tool_name: str = DEFAULT_TOOL_NAME,
        tool_description: str = DEFAULT_TOOL_DESCRIPTION,
    ) -> None:
        """Configure the search.

        Args:
            searchable_tools: the names of the tools deferred behind the search
                (``None``: every agent tool not in ``always_bound``).
            always_bound: tool names never deferred.
            max_results: the most tools one search lists.
            preselect: how many searchable tools matching the latest user message
                to bind on each call besides (``0``: none).
            threshold: minimum similarity score of a tool found or preselected
                (``None``: the best are listed whatever their score).
            utterances: tool name -> example requests that should find the tool.
            router: the router holding the tool routes (see the tool selector's).
            encoder: the encoder of the default router; default the bundled model.
            timeout: seconds an async search may wait for the batching worker.
            tool_name: the search tool's name.
            tool_description: the search tool's description, what the model reads.

        Raises:
            InvalidInputError: ``max_results`` is under 1, ``preselect`` under 0, a
                setting the tool selector checks is wrong (``threshold``, ``router``
                with ``encoder``, ``utterances``), the names are no list of str, a
                name is both searchable and always bound, or the tool's name or
                description is blank. Names no agent tool has are refused on the
                first model call that offers the agent's tools.
        """
        super().__init__()
        self.max_results = check_count(max_results, "max_results", 1)
        self.preselect = check_count(preselect, "preselect", 0)
        # One ranking for the search and the preselection: the selector's, asking the
        # router for as many tools as either takes (each caller keeps its own count).
        self.selector = SynaptorouteToolSelectorMiddleware(
            utterances=utterances,
            max_tools=max(self.max_results, self.preselect),
            threshold=threshold,
            on_no_match="none",
            router=router,
            encoder=encoder,
            timeout=timeout,
        )
        self.searchable_tools = (
            None if searchable_tools is None else _check_names(searchable_tools, "searchable_tools")
        )
        self.always_bound = _check_names(always_bound, "always_bound")
        both = sorted(set(self.searchable_tools or ()) & set(self.always_bound))
        if both:
            msg = f"tools both searchable and always bound: {both}"
            raise InvalidInputError(msg)
        for what, text in (("tool_name", tool_name), ("tool_description", tool_description)):
            if not isinstance(text, str) or not text.strip():
                msg = f"{what} must be a non-blank str, got {text!r:.80}"
                raise InvalidInputError(msg)
        if tool_name in (*(self.searchable_tools or ()), *self.always_bound):
            msg = f"tool_name {tool_name!r} is the search tool's: it cannot be deferred or bound"
            raise InvalidInputError(msg)
        self.tool_name = tool_name
        self.tools = [self._search_tool(tool_name, tool_description)]
        # The searchable tools of the model call that asked for each search, by the
        # id of the model's message and the search's tool call id (ids alone repeat
        # across agents sharing this instance with some servers): the search runs in
        # the tool node, which does not see the model call's tools. A search whose
        # model call this process did not see (a run resumed after a restart) searches
        # the tool node's own tools where LangGraph hands them over (runtime.tools),
        # else asks the model to search again (see _catalog).
        self._catalogs: OrderedDict[tuple[str | None, str], list[BaseTool]] = OrderedDict()
        self._lock = threading.Lock()
        hold_across_fork(self, APP)

    # -- which tools a model call binds --------------------------------------------
    def _searchable(self, offered: Sequence[BaseTool | dict[str, Any]]) -> list[BaseTool]:
        """The searchable tools of a model call; its names are checked first.

        Raises:
            InvalidInputError: tool names repeat, an agent tool has the search tool's
                name, or ``searchable_tools`` or ``always_bound`` names a tool the
                call does not offer.
        """
        names = [tool.name for tool in offered if isinstance(tool, BaseTool)]
        check_tool_keys(names, None, "tools")
        (own,) = self.tools
        ours = getattr(own, "func", None)  # a copy of the search tool (marked) is still it
        if any(
            isinstance(t, BaseTool) and t.name == own.name and getattr(t, "func", None) is not ours
            for t in offered
        ):
            # create_agent keeps one tool per name: an agent tool so named replaced ours.
            msg = f"an agent tool is named {own.name!r}, as the search tool: pass tool_name="
            raise InvalidInputError(msg)
        for what, given in (
            ("searchable_tools", self.searchable_tools),
            ("always_bound", self.always_bound),
        ):
            check_offered(names, given, what)
        return self._deferrable(offered)

    def _deferrable(self, offered: Sequence[BaseTool | dict[str, Any]]) -> list[BaseTool]:
        """The tools of ``offered`` that the search defers (no check)."""
        return [
            tool
            for tool in _selectable(offered)
            if tool.name != self.tool_name
            and tool.name not in self.always_bound
            and (self.searchable_tools is None or tool.name in self.searchable_tools)
        ]

    def _bind(
        self, request: ModelRequest, searchable: Sequence[BaseTool], preselected: Sequence[str]
    ) -> ModelRequest:
        """``request`` with the searchable tools not found, preselected or forced left out."""
        deferred = {tool.name for tool in searchable}
        keep = {
            *_found(request.state),
            *preselected,
            *_forced(request.tool_choice),
        }
        tools = [
            tool
            for tool in request.tools
            if not isinstance(tool, BaseTool) or tool.name not in deferred or tool.name in keep
        ]
        return request if len(tools) == len(request.tools) else request.override(tools=tools)

    def _remember(self, response: Any, searchable: list[BaseTool]) -> None:
        """Record ``searchable`` for each search the model's ``response`` asks for."""
        keys = [
            (message.id, call_id)
            for message in _ai_messages(response)
            for call in message.tool_calls
            if call["name"] == self.tool_name and (call_id := call.get("id"))
        ]
        if not keys:
            return
        with self._lock:
            for key in keys:
                self._catalogs[key] = searchable
            while len(self._catalogs) > _MAX_CATALOGS:
                self._catalogs.popitem(last=False)

    def _catalog(self, runtime: ToolRuntime) -> list[BaseTool] | None:
        """The tools the search call of ``runtime`` searches: its model call's
        searchable tools, or, for a model call this process did not see (a run resumed
        after a restart, or a forgotten one), the tool node's deferrable tools where
        LangGraph hands them over (``runtime.tools``, langgraph 1.2 on); ``None`` when
        neither is known."""
        call_id = runtime.tool_call_id or ""
        asking = _asking_message_id(runtime.state, call_id)
        with self._lock:
            found = self._catalogs.get((asking, call_id))
            if found is None:
                # A model message that had no id when the model returned it: the graph
                # gave it one afterwards (add_messages), so it was kept by its call id.
                found = self._catalogs.get((None, call_id))
        if found is not None:
            return found
        tools = getattr(runtime, "tools", None)
        if isinstance(tools, list):
            return self._deferrable(tools)
        return None

    # -- the ranking, shared by the search and the preselection ----------------------
    def _rank(
        self, tools: Sequence[BaseTool], messages: Sequence[BaseMessage], n: int
    ) -> list[str]:
        """The names of the ``n`` best of ``tools`` for the last user text of ``messages``."""
        plan = self.selector._plan(tools, messages)
        if plan is None:  # no tools, or no text to rank them by
            return []
        return self._first(self.selector._chosen(plan, self.selector._ranked(plan)), n)

    async def _arank(
        self, tools: Sequence[BaseTool], messages: Sequence[BaseMessage], n: int
    ) -> list[str]:
        """Like :meth:`_rank`; routes are encoded off the event loop."""
        plan = await self.selector._aplan(tools, messages)
        if plan is None:
            return []
        return self._first(self.selector._chosen(plan, await self.selector._aranked(plan)), n)

    @staticmethod
    def _first(chosen: list[str] | None, n: int) -> list[str]:
        # on_no_match="none": the selector's choice is never None (every tool).
        assert chosen is not None
        return chosen[:n]

    def _answer(
        self, query: str, catalog: Sequence[BaseTool], names: Sequence[str], call_id: str | None
    ) -> Command[Any]:
        """The search tool's result: its message, and the names found for the state."""
        by_name = {tool.name: tool for tool in catalog}
        found = [by_name[name] for name in names]
        message = ToolMessage(
            _format_results(query, found), tool_call_id=call_id or "", name=self.tool_name
        )
        return Command(update={FOUND_TOOLS_KEY: list(names), "messages": [message]})

    def _unknown(self, call_id: str | None) -> Command[Any]:
        """The answer to a search whose tools are not known here (see :meth:`_catalog`):
        not "nothing matches", which would tell the model the capability is missing."""
        message = ToolMessage(
            f"The tool list is not available to this search. Call {self.tool_name} "
            "again, with the same words, on your next step.",
            tool_call_id=call_id or "",
            name=self.tool_name,
        )
        return Command(update={"messages": [message]})

    def _search_tool(self, name: str, description: str) -> BaseTool:
        """The search tool the agent's tool node runs (sync and async paths)."""

        def search(query: Annotated[str, QUERY_DESCRIPTION], runtime: ToolRuntime) -> Command[Any]:
            catalog = self._catalog(runtime)
            if catalog is None:
                return self._unknown(runtime.tool_call_id)
            names = self._rank(catalog, [HumanMessage(query)], self.max_results)
            return self._answer(query, catalog, names, runtime.tool_call_id)

        async def asearch(
            query: Annotated[str, QUERY_DESCRIPTION], runtime: ToolRuntime
        ) -> Command[Any]:
            catalog = self._catalog(runtime)
            if catalog is None:
                return self._unknown(runtime.tool_call_id)
            names = await self._arank(catalog, [HumanMessage(query)], self.max_results)
            return self._answer(query, catalog, names, runtime.tool_call_id)

        return StructuredTool.from_function(
            func=search, coroutine=asearch, name=name, description=description
        )

    # -- the middleware hooks ----------------------------------------------------------
    @override
    def wrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], ModelResponse],
    ) -> ModelResponse | AIMessage:
        """Bind the tools not searchable and those found so far, then call the model."""
        searchable = self._searchable(request.tools)
        preselected = (
            self._rank(searchable, request.messages, self.preselect) if self.preselect else []
        )
        response = handler(self._bind(request, searchable, preselected))
        self._remember(response, searchable)
        return response

    @override
    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse | AIMessage:
        """Like :meth:`wrap_model_call`; routes are encoded off the event loop."""
        searchable = self._searchable(request.tools)
        preselected = (
            await self._arank(searchable, request.messages, self.preselect)
            if self.preselect
            else []
        )
        response = await handler(self._bind(request, searchable, preselected))
        self._remember(response, searchable)
        return response


def _found(state: Mapping[str, Any]) -> list[str]:
    """The names of the tools found so far in the thread whose ``state`` this is."""
    names = state.get(FOUND_TOOLS_KEY)
    return [name for name in names if isinstance(name, str)] if isinstance(names, list) else []


def _asking_message_id(state: Any, call_id: str) -> str | None:
    """The id of the AI message in ``state`` that made the tool call ``call_id`` (the
    last one: ids may repeat across turns with some servers)."""
    messages = state.get("messages", ()) if isinstance(state, Mapping) else ()
    for message in reversed(messages):
        if isinstance(message, AIMessage) and any(
            call.get("id") == call_id for call in message.tool_calls
        ):
            return message.id
    return None


def _ai_messages(response: Any) -> list[AIMessage]:
    """The AI messages of a model call's result: an ``AIMessage``, a ``ModelResponse``
    (its ``result``), or a response wrapping one (``model_response``)."""
    if isinstance(response, AIMessage):
        return [response]
    inner = getattr(response, "model_response", None)
    if inner is not None:
        return _ai_messages(inner)
    result = getattr(response, "result", None)
    if isinstance(result, list):
        return [message for message in result if isinstance(message, AIMessage)]
    return []
