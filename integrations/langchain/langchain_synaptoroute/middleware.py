"""Zero-token tool selection for LangChain 1.x agents (``create_agent`` middleware).

Needs the ``agents`` extra: ``pip install 'integrations/langchain[agents]'`` in a checkout
of this repository.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.embeddings import Embeddings
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.tools import BaseTool
from typing_extensions import override

from synaptoroute import (
    AdaptiveRouter,
    EncoderProtocol,
    InvalidInputError,
    Route,
    RouteMatch,
    RouteNotFoundError,
)

# The same repository's core (pinned below 0.3): a fork waits for this selector's lock
# like the router's own, so a child never inherits it held.
from synaptoroute.checks import (
    check_count,
    check_threshold,
    check_utterances,
    reads_nothing_of,
    refuse_misspelt_key,
)
from synaptoroute.forking import APP, hold_across_fork

from ._inputs import last_human_text
from ._tools import check_offered, check_tool_keys, tool_utterances
from .embeddings import as_encoder

__all__ = ["SynaptorouteToolSelectorMiddleware"]

#: What to bind when no tool reaches the threshold: every tool, or only ``always_include``.
NoMatch = Literal["all", "none"]
#: What becomes of the tools not selected: dropped from the call, or deferred behind a
#: provider's tool search.
Unselected = Literal["drop", "defer"]

#: The metadata key of a route this selector generated: a digest of the examples it was
#: built from. A stored route (``router=`` on a persistent store) whose digest differs
#: from its tool's examples now is rebuilt; a route without the key is the user's, kept.
GENERATED_FROM = "synaptoroute_tool_examples"


@dataclass(frozen=True)
class _Selection:
    """One model call's selection problem: the user's text and the tools to choose among."""

    text: str
    candidates: list[BaseTool]
    k: int
    #: Whether tools stay bound whatever is selected (``always_include`` tools offered,
    #: provider tool dicts, or a response format's tool), so a demanded tool call never
    #: needs a selected one.
    others: bool = False


class SynaptorouteToolSelectorMiddleware(AgentMiddleware):
    """Binds only the tools that match the latest user message, before each model call.

    The zero-token counterpart of LangChain's ``LLMToolSelectorMiddleware``: each
    tool is a route whose examples are its name and description plus any
    ``utterances`` given for it; the last human message is embedded locally and the
    ``max_tools`` best tools whose score reaches ``threshold`` are bound to the model.
    No model is called to select. Tools in ``always_include`` are always bound and
    do not count against ``max_tools``; provider tool dicts are passed through.

    The routes are built on the first model call from the agent's tools and rebuilt
    only for tools that are new or whose name or description changed (also across
    restarts, with a persisted ``router=``); a tool that disappears is dropped from
    later selections.

    A tool the request forces (``tool_choice`` naming it, set by the caller or an
    earlier middleware) is always bound; it takes one of the ``max_tools`` places
    unless it is in ``always_include``. So are the tools a provider ``tool_choice``
    restricts the call to (OpenAI's ``{"type": "allowed_tools", ...}``, Gemini's
    ``{"function_calling_config": {"allowed_function_names": [...]}}``) or names
    (``{"tool": {"name": ...}}``, Bedrock's spelling, as well as OpenAI's and Anthropic's).

    With no human message in the conversation, or no tool reaching ``threshold``
    (``on_no_match="all"``), every tool is bound, so the agent works as it would
    without this middleware; ``on_no_match="none"`` binds only ``always_include``.
    But when the request demands a tool call without naming one (``tool_choice``
    ``"any"``, ``"required"``, ``True``, ``{"type": "any"}``/``{"type": "required"}``,
    Bedrock's ``{"any": {}}``, OpenAI's ``allowed_tools`` in mode ``"required"`` or
    Gemini's ``function_calling_config`` in mode ``"ANY"``)
    and that would leave no tool bound (no ``always_include`` tool offered, no provider
    tool dict), the best-ranked tool is bound even under ``threshold``: a demanded tool
    call needs a tool to call.

    ``unselected="defer"`` keeps the tools not selected bound, deferred behind the
    provider's tool search (``extras["defer_loading"]``) instead of dropping them: with
    LangChain's ``ProviderToolSearchMiddleware`` listed after this one (Anthropic and
    OpenAI models), the model gets the selected tools' schemas and can still search
    for any other. Tools already deferred are passed through either way.

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
        unselected: Unselected = "drop",
    ) -> None:
        """Configure the selector.

        Args:
            utterances: tool name -> example requests that should select the tool
                (a list of strings per name). Agents with other tools may share this
                instance, so a name no call has offered yet is taken for another
                agent's tool, unless it looks like a misspelling of an offered tool
                that has no utterances of its own: that raises ``InvalidInputError``.
            max_tools: the most tools selected per call (``None``: no limit).
            always_include: tool names bound on every call, outside ``max_tools``.
            threshold: minimum similarity score of a selected tool (``None``: the
                ``max_tools`` best are selected whatever their score).
            on_no_match: ``"all"`` binds every tool when none reaches
                ``threshold``; ``"none"`` binds only ``always_include`` (or, when the
                request demands a tool call and nothing else would be bound, the one
                best-ranked tool).
            router: the router holding the tool routes (for instance persisted
                with ``SQLiteStorage``). A route this selector generated is rebuilt
                when its tool's examples changed, even after a restart; a route of
                the tool's name that it did not generate (one you curated) is kept
                as it is. Default a new in-memory router.
            encoder: the encoder of the default router (a synaptoroute encoder or a
                LangChain ``Embeddings``); default the bundled local model.
            timeout: seconds an async call may wait for the batching worker.
            unselected: ``"drop"`` leaves the tools not selected out of the model
                call; ``"defer"`` binds them deferred behind the provider's tool
                search (``extras["defer_loading"]``, for ``ProviderToolSearchMiddleware``
                listed after this one to serve): the model sees the selected tools'
                schemas and can still search for the others.

        Raises:
            InvalidInputError: ``max_tools`` is under 1, ``threshold`` is outside
                ``[0, 1]``, ``on_no_match`` or ``unselected`` is unknown, both ``router`` and
                ``encoder`` are given, or ``utterances`` or ``always_include`` is not
                what it should be (one str instead of a list of them, a text that is
                no str, blank, or not valid Unicode); the message names the key.
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
        if unselected not in ("drop", "defer"):
            msg = f"unselected must be 'drop' or 'defer', got {unselected!r}"
            raise InvalidInputError(msg)
        if unselected == "defer" and "extras" not in BaseTool.model_fields:
            msg = (
                "unselected='defer' marks tools with BaseTool.extras, which this "
                "langchain-core lacks: upgrade it (pip install -U langchain-core)"
            )
            raise InvalidInputError(msg)
        if router is not None and encoder is not None:
            msg = "pass router= or encoder=, not both (the router has its encoder)"
            raise InvalidInputError(msg)
        # Converted once: the utterances are checked with the encoder the routes will
        # have (the router's, or the shared bundled one: only its tokenizer's rules are
        # read, the model is not loaded).
        model = router.encoder if router is not None else as_encoder(encoder)
        self.utterances = check_utterances(utterances, reads_nothing=reads_nothing_of(model))
        self.max_tools = max_tools
        self.always_include = _check_names(always_include, "always_include")
        self.threshold = threshold
        self.on_no_match: NoMatch = on_no_match
        self.timeout = timeout
        self.unselected: Unselected = unselected
        self._encoder = model
        self._router = router
        # The (name, description) signatures of tool sets whose routes all hold what
        # those tools need: a call offering one of them changes nothing and takes no
        # lock. A set, not the last one, so agents with other tools sharing this
        # instance do not re-check (under the lock) on every call.
        self._checked: set[tuple[tuple[str, str], ...]] = set()
        # Every tool name offered so far (under the lock): an utterances key none of
        # them has is another agent's tool, or a typo when it is close to one offered.
        self._seen_names: set[str] = set()
        # The routes this instance generated, least recently built or checked first:
        # past _MAX_GENERATED the oldest not offered now are deleted, or per-user or
        # per-session tool names grew the router (and every ranking) without end.
        self._generated: OrderedDict[str, None] = OrderedDict()
        # Held while it makes the router, changes routes or records offered names.
        self._lock = threading.Lock()
        hold_across_fork(self, APP)

    @property
    def router(self) -> AdaptiveRouter:
        """The router holding one route per tool (created on first use)."""
        router = self._router
        if router is not None:  # no lock: another call may hold it while it encodes
            return router
        with self._lock:
            if self._router is None:
                self._router = AdaptiveRouter(encoder=self._encoder)
            return self._router

    # -- the selection, shared by the sync and async paths ---------------------------
    def _sync_routes(self, tools: Sequence[BaseTool], deferred: Sequence[str] = ()) -> None:
        """Give every tool a route; (re)build only routes that are new or changed.

        A route is rebuilt when the digest of the examples it was generated from
        (its :data:`GENERATED_FROM` metadata) differs from its tool's examples now; a
        route without that digest was not made here and is kept.

        Raises:
            InvalidInputError: tool names repeat, ``always_include`` names a tool this
                call does not offer (``deferred``: the names of its deferred tools,
                which have no route but may be always included), or an ``utterances`` key looks like a misspelt
                name of one of this call's tools (see :meth:`_check_utterance_keys`).
        """
        if self._routes_ready(tools):
            return
        signature = _signature(tools)
        router = self.router
        names = [tool.name for tool in tools]
        check_tool_keys(names, None, "utterances")  # no given keys: tools sharing a name
        offered = [*names, *deferred]
        check_offered(offered, self.always_include, "always_include")
        with self._lock:
            self._check_utterance_keys(names)
            if not self._generated:
                # A stored router= holds routes generated by earlier processes: they
                # count towards the bound too, oldest (stored first) first.
                self._generated.update(
                    (route.name, None)
                    for route in router.list_routes()
                    if route.metadata.get(GENERATED_FROM) is not None
                )
            changed = []
            for tool in tools:
                examples = tool_utterances(tool, self.utterances.get(tool.name, ()))
                digest = _digest(examples)
                if tool.name in router:
                    made_from = router.get_route(tool.name).metadata.get(GENERATED_FROM)
                    if made_from is None:
                        continue  # the user's own route
                    self._generated[tool.name] = None
                    self._generated.move_to_end(tool.name)
                    if made_from == digest:
                        continue  # built from these examples
                changed.append(
                    Route(name=tool.name, utterances=examples, metadata={GENERATED_FROM: digest})
                )
            if changed:
                router.add_routes(changed, replace=True)
                self._generated.update((route.name, None) for route in changed)
                self._forget_oldest(router, set(names))
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

    def _forget_oldest(self, router: AdaptiveRouter, offered: set[str]) -> None:
        """Delete the routes generated longest ago past :data:`_MAX_GENERATED`, but
        none of ``offered``, none of a tool set checked lately (those take the fast
        path, which records no use: a set in use, maybe being ranked now) and none a
        user has since replaced with a route of their own (call with the lock held).
        A tool set offered again rebuilds its routes."""
        excess = len(self._generated) - _MAX_GENERATED
        if excess <= 0:
            return
        in_use = offered.union(name for checked in self._checked for name, _ in checked)
        dropped: set[str] = set()
        for name in list(self._generated):
            if excess <= 0:
                break
            if name in in_use:
                continue
            del self._generated[name]
            excess -= 1
            with contextlib.suppress(RouteNotFoundError):
                if router.get_route(name).metadata.get(GENERATED_FROM) is not None:
                    router.delete_route(name)
                    dropped.add(name)
        if dropped:
            self._checked = {
                checked for checked in self._checked if not any(n in dropped for n, _ in checked)
            }

    def _routes_ready(self, tools: Sequence[BaseTool]) -> bool:
        """Whether ``tools`` need no route built: there are none (a call offering only
        provider tool dicts), or the set was checked before (agents offer the same
        tools on every call: one lookup skips the rest) and no tool's route was deleted
        from a shared ``router=`` since (it is then built again: a tool without a route
        could never be selected)."""
        if not tools:
            return True
        return _signature(tools) in self._checked and all(
            tool.name in self.router for tool in tools
        )

    def _check_utterance_keys(self, names: Sequence[str]) -> None:
        """Record this call's tool names; refuse an ``utterances`` key that looks like a
        misspelt name of one of them (call with the lock held).

        One instance may serve agents with other tools, and a call may offer a subset
        of the agent's tools (another middleware filters them), so a key that names
        no tool of this call may be meant for another call's tools, not yet seen. It
        is refused only when it looks like a typo here: no call so far offered a tool
        of that name, and it is close to the name of a tool of this call that has no
        utterances of its own (the tool the key was meant for).
        """
        refuse_misspelt_key(self.utterances, self._seen_names, names, "tool")

    def _plan(
        self,
        offered: Sequence[BaseTool | dict[str, Any]],
        messages: Sequence[BaseMessage],
        response_format: Any = None,
    ) -> _Selection | None:
        """What to select among for a model call, or ``None`` when its tools stay as they are."""
        tools = _selectable(offered)
        if tools:
            deferred = [t.name for t in offered if isinstance(t, BaseTool) and _deferred(t)]
            self._sync_routes(tools, deferred)  # validates the names on every call
        candidates = [tool for tool in tools if tool.name not in self.always_include]
        text = last_human_text(messages)
        # A text the model reads nothing of (blank, or only a BOM or zero-width
        # spaces) ranks no tool: it leaves the tools as they are, as no text does.
        if not candidates or text is None or reads_nothing_of(self.router.encoder)(text):
            return None
        # Routes of tools that are no candidate (absent from this call, or always
        # included) may rank above the candidates; ask for enough that max_tools
        # candidates remain.
        stored = len(self.router)
        wanted = len(candidates) if self.max_tools is None else self.max_tools
        k = max(1, min(stored, wanted + max(stored - len(candidates), 0)))
        # With a response format, create_agent binds its structured-output tool and
        # forces "any" itself (ToolStrategy), or drops tool_choice (ProviderStrategy):
        # a request's demand for a tool call never lacks a tool to call.
        others = (
            len(candidates) < len(tools) or len(tools) < len(offered) or response_format is not None
        )
        return _Selection(text=text, candidates=candidates, k=k, others=others)

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

    def _chosen(
        self, plan: _Selection, ranked: Sequence[RouteMatch], tool_choice: Any = None
    ) -> list[str] | None:
        """The names of the selected tools, best first; ``None`` binds every tool.

        Candidates that ``tool_choice`` forces come first and take their places among
        ``max_tools`` (all of them, should they be more); the best ranked fill the rest.
        A ``tool_choice`` demanding a tool call keeps the best-ranked candidate, under
        ``threshold`` too, when nothing would be bound otherwise.
        """
        present = {tool.name for tool in plan.candidates}
        names = [
            m.candidate
            for m in ranked
            if m.candidate is not None
            and m.candidate in present
            and (self.threshold is None or m.score >= self.threshold)
        ]
        if not names and self.on_no_match == "all":
            return None
        forced = _forced(tool_choice)
        pinned = [tool.name for tool in plan.candidates if tool.name in forced]
        names = [*pinned, *(name for name in names if name not in pinned)]
        if not names and not plan.others and _demands_call(tool_choice):
            # A demanded tool call needs a tool: providers refuse a forced choice of none.
            best = next(
                (m.candidate for m in ranked if m.candidate is not None and m.candidate in present),
                plan.candidates[0].name,
            )
            names = [best]
        if self.max_tools is not None:
            names = names[: max(self.max_tools, len(pinned))]
        return names

    def _ranked(self, plan: _Selection) -> list[RouteMatch]:
        """The routes ranked for ``plan`` (sync; the async hook awaits the same two steps)."""
        ranked = self.router.query_top_k(plan.text, plan.k)
        wider = self._wider(plan, ranked)
        return ranked if wider is None else self.router.query_top_k(plan.text, wider)

    async def _aplan(
        self,
        offered: Sequence[BaseTool | dict[str, Any]],
        messages: Sequence[BaseMessage],
        response_format: Any = None,
    ) -> _Selection | None:
        """Like :meth:`_plan`; new routes are encoded off the event loop (and when there
        are none to encode, nothing leaves it: no thread hop)."""
        if self._routes_ready(_selectable(offered)):
            return self._plan(offered, messages, response_format)
        return await asyncio.to_thread(self._plan, offered, messages, response_format)

    async def _aranked(self, plan: _Selection) -> list[RouteMatch]:
        """Like :meth:`_ranked`, embedding through the router's batching worker."""
        ranked = await self.router.aquery_top_k(plan.text, plan.k, timeout=self.timeout)
        wider = self._wider(plan, ranked)
        if wider is None:
            return ranked
        return await self.router.aquery_top_k(plan.text, wider, timeout=self.timeout)

    def _apply(
        self,
        request: ModelRequest,
        chosen: list[str] | None,
    ) -> ModelRequest:
        if chosen is None:
            return request
        keep = set(chosen) | set(self.always_include)
        tools = []
        for tool in request.tools:
            if not isinstance(tool, BaseTool) or _deferred(tool) or tool.name in keep:
                tools.append(tool)
            elif self.unselected == "defer":
                extras = {**(tool.extras or {}), "defer_loading": True}
                tools.append(tool.model_copy(update={"extras": extras}))
        return request.override(tools=tools)

    def select_tools(
        self,
        text: str,
        tools: Sequence[BaseTool],
        *,
        tool_choice: Any = None,
        response_format: Any = None,
    ) -> list[str]:
        """The names of the tools this middleware would bind for ``text``, best first.

        ``always_include`` tools come last; every tool when nothing is selected and
        ``on_no_match="all"``. A tool that ``tool_choice`` (a model request's) forces
        comes first; one that demands a tool call (``"any"``, ``"required"``...) keeps
        the best-ranked tool when nothing else would be bound (a ``response_format``,
        as a model request's, binds its own tool or drops ``tool_choice``). Tools
        already deferred (``extras["defer_loading"]``) are bound as they are: they come
        last. With ``unselected="defer"`` the tools this middleware defers are not
        listed. Used by the middleware itself, and handy for checks.
        """
        plan = self._plan(tools, [HumanMessage(text)], response_format)
        if plan is None:
            return [tool.name for tool in tools]
        chosen = self._chosen(plan, self._ranked(plan), tool_choice)
        if chosen is None:
            return [tool.name for tool in tools]
        bound = [*chosen, *(name for name in self.always_include if name not in chosen)]
        return [*bound, *(t.name for t in tools if _deferred(t) and t.name not in bound)]

    # -- the middleware hooks ----------------------------------------------------------
    @override
    def wrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], ModelResponse],
    ) -> ModelResponse | AIMessage:
        """Bind the selected tools, then call the model."""
        plan = self._plan(request.tools, request.messages, request.response_format)
        if plan is None:
            return handler(request)
        chosen = self._chosen(plan, self._ranked(plan), request.tool_choice)
        return handler(self._apply(request, chosen))

    @override
    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse | AIMessage:
        """Like :meth:`wrap_model_call`; new routes are encoded off the event loop."""
        plan = await self._aplan(request.tools, request.messages, request.response_format)
        if plan is None:
            return await handler(request)
        ranked = await self._aranked(plan)
        return await handler(self._apply(request, self._chosen(plan, ranked, request.tool_choice)))


#: Tool sets remembered as checked (agents sharing one instance); past it, all are
#: forgotten and checked again once.
_MAX_CHECKED = 256
#: Routes generated for tools that one instance keeps (see ``_forget_oldest``).
_MAX_GENERATED = 4096


def _selectable(offered: Sequence[BaseTool | dict[str, Any]]) -> list[BaseTool]:
    """The offered tools this middleware selects among: ``BaseTool`` objects not
    deferred. Provider tool dicts and deferred tools are passed through as they are."""
    return [tool for tool in offered if isinstance(tool, BaseTool) and not _deferred(tool)]


def _deferred(tool: BaseTool) -> bool:
    """Whether ``tool`` is deferred behind a provider's tool search
    (``extras["defer_loading"]``, as ``ProviderToolSearchMiddleware`` marks it): the
    provider loads its schema only when the model searches for it, so it costs no
    place among the bound tools, and dropping it would leave the search nothing to find."""
    extras = getattr(tool, "extras", None)
    return isinstance(extras, dict) and extras.get("defer_loading") is True


def _signature(tools: Sequence[BaseTool]) -> tuple[tuple[str, str], ...]:
    """What the routes of ``tools`` depend on: each tool's name and description."""
    return tuple((tool.name, tool.description) for tool in tools)


def _digest(examples: Sequence[str]) -> str:
    """What a generated route is marked with: a digest of the examples it holds."""
    return hashlib.sha256(json.dumps(list(examples)).encode("ascii")).hexdigest()


def _forced(tool_choice: Any) -> set[str]:
    """The tool names a model request's ``tool_choice`` may force.

    A str (a tool's name; ``"auto"``, ``"any"``, ``"required"`` and ``"none"`` name no
    offered tool, unless one is so called), the provider dicts
    ``{"type": "function", "function": {"name": ...}}`` (OpenAI),
    ``{"type": "tool", "name": ...}`` (Anthropic), ``{"tool": {"name": ...}}`` (Bedrock)
    or ``{"name": ...}``, a list of tool names, or the provider dicts that restrict a
    call to some tools: OpenAI's ``{"type": "allowed_tools", ...}`` (Responses and
    Chat Completions spellings) and Gemini's ``{"function_calling_config":
    {"allowed_function_names": [...]}}``. Anything else forces none.
    """
    if isinstance(tool_choice, str):
        return {tool_choice}
    if isinstance(tool_choice, Mapping):
        allowed = _allowed(tool_choice)
        if allowed is not None:
            return {name for name in map(_tool_name, allowed) if name is not None}
        name = _tool_name(tool_choice.get("tool", tool_choice))  # Bedrock nests it
        return set() if name is None else {name}
    if isinstance(tool_choice, (list, tuple)):
        return {name for name in tool_choice if isinstance(name, str)}
    return set()


def _tool_name(spec: Any) -> str | None:
    """The tool name in one provider spelling of a tool (``{"name": ...}``,
    ``{"function": {"name": ...}}``, or the name itself), else ``None``."""
    if isinstance(spec, str):
        return spec
    if not isinstance(spec, Mapping):
        return None
    function = spec.get("function")
    name = function.get("name") if isinstance(function, Mapping) else spec.get("name")
    return name if isinstance(name, str) else None


def _restriction(tool_choice: Mapping[Any, Any]) -> Mapping[Any, Any] | None:
    """The part of a provider ``tool_choice`` dict that restricts a call to some tools
    and says its mode: OpenAI's ``allowed_tools`` (the Responses API spells it flat,
    Chat Completions under an ``allowed_tools`` key) or Gemini's
    ``function_calling_config``; ``None`` for other dicts."""
    if tool_choice.get("type") == "allowed_tools":
        nested = tool_choice.get("allowed_tools")
        return nested if isinstance(nested, Mapping) else tool_choice
    config = tool_choice.get("function_calling_config")
    return config if isinstance(config, Mapping) else None


def _allowed(tool_choice: Mapping[Any, Any]) -> list[Any] | None:
    """The tools a restricting ``tool_choice`` dict allows (see :func:`_restriction`);
    ``None`` when it restricts nothing."""
    restriction = _restriction(tool_choice)
    if restriction is None:
        return None
    tools = restriction.get("tools", restriction.get("allowed_function_names"))
    return list(tools) if isinstance(tools, (list, tuple)) else None


#: The ``tool_choice`` values that demand a tool call without naming one: LangChain's
#: and OpenAI's strings, ``True``, Anthropic's ``{"type": "any"}``, Bedrock's
#: ``{"any": {}}``, OpenAI's ``allowed_tools`` in mode ``"required"`` and Gemini's
#: ``function_calling_config`` in mode ``"ANY"``.
_DEMANDING = ("any", "required")


def _demands_call(tool_choice: Any) -> bool:
    """Whether ``tool_choice`` demands some tool call: ``"any"``, ``"required"``,
    ``True``, or a provider dict that does (see :data:`_DEMANDING`)."""
    if tool_choice is True:
        return True
    if isinstance(tool_choice, str):
        return tool_choice in _DEMANDING
    if isinstance(tool_choice, Mapping):
        restriction = _restriction(tool_choice)
        if restriction is not None:
            mode = restriction.get("mode")
            return isinstance(mode, str) and mode.lower() in _DEMANDING
        if len(tool_choice) == 1 and "any" in tool_choice:  # Bedrock's {"any": {}}
            return True
        kind = tool_choice.get("type")
        return isinstance(kind, str) and kind in _DEMANDING
    return False


def _check_names(names: Sequence[str], what: str) -> list[str]:
    """``names`` as a list of tool names; one str (not a list of them) is refused."""
    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        msg = f"{what} must be a list of tool names, got {type(names).__name__} {names!r:.80}"
        raise InvalidInputError(msg)
    out = list(names)
    for index, name in enumerate(out):
        if not isinstance(name, str):
            msg = f"{what}[{index}] must be a tool name (a str), got {name!r:.80}"
            raise InvalidInputError(msg)
    return out
