"""LangGraph routing: conditional edges, a router node and ``Send`` fan-out.

Three ways to let an :class:`~synaptoroute.AdaptiveRouter` pick the next node of a
``StateGraph``, locally and without an LLM call:

- :class:`SynaptorouteEdge`, a path for ``add_conditional_edges`` that returns the
  node of the matched route (or ``default``);
- :class:`SynaptorouteNode`, a node that returns ``Command(goto=..., update=...)`` and
  writes the decision (:class:`RouteDecision`, plain JSON values) into the state, so
  later nodes and checkpointers see it;
- :class:`SynaptorouteFanOut`, a path that sends the state to every route that
  matches (top-k, by threshold or a minimum score) as ``list[Send]``.

Each reads the text to route from the state (by default the last human message of
``messages``), runs ``router.query`` when the graph is invoked and ``router.aquery``
(the batching worker) when it is awaited, and declares its destinations so that
``graph.get_graph()`` draws one edge per route. Needs the ``langgraph`` extra:
``pip install 'integrations/langchain[langgraph]'`` in a checkout of this repository.

Why one module over 400 lines: the three helpers share reading the state and naming
nodes (``_Routing``) and the one guard that turns a missing LangGraph into a clear
error; split, each module would repeat that guard.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

from langchain_core.runnables import RunnableLambda

# typing_extensions': pydantic refuses typing's TypedDict before Python 3.12, so a
# pydantic state with a RouteDecision field, and LangGraph's JSON schemas of a graph
# whose state holds one (LangGraph Server, Studio), failed on 3.10 and 3.11.
from typing_extensions import TypedDict

from synaptoroute import AdaptiveRouter, InvalidInputError, MissingDependencyError, RouteMatch
from synaptoroute.exceptions import RouteNotFoundError, install_hint

from ._inputs import (
    NoHumanMessageError,
    TextExtractor,
    atop_routes,
    extract_text,
    passing,
    top_routes,
)
from .classifier import SynaptorouteClassifier
from .router import SynaptorouteRouter

try:
    from langgraph.constants import END
    from langgraph.graph import StateGraph
    from langgraph.types import Command, Send
except ImportError as exc:  # pragma: no cover - exercised by a test that hides langgraph
    if not (exc.name or "").startswith("langgraph"):
        raise
    _msg = (
        "langchain_synaptoroute.langgraph needs LangGraph: "
        f"{install_hint('langgraph', 'integrations/langchain')} ({exc})"
    )
    raise MissingDependencyError(_msg) from exc

__all__ = [
    "PayloadBuilder",
    "RouteDecision",
    "RouterLike",
    "SynaptorouteEdge",
    "SynaptorouteFanOut",
    "SynaptorouteNode",
    "decision_of",
]

#: What the graph helpers route with: the core router, or a LangChain Runnable over one
#: (not a wrapper of that Runnable, such as ``configurable_fields`` or ``with_retry``).
RouterLike = AdaptiveRouter | SynaptorouteRouter[Any, Any] | SynaptorouteClassifier
#: The classes of :data:`RouterLike`, which the helpers check (anything else is refused).
_ROUTERS = (AdaptiveRouter, SynaptorouteRouter, SynaptorouteClassifier)


class RouteDecision(TypedDict):
    """One routing decision, as written into the graph state (JSON-serialisable)."""

    route: str | None
    """The matched route, or ``None`` when none passed."""
    node: str
    """The node the graph goes to (the route's node, or the default)."""
    score: float
    """The best route's score (the matched route's, when one matched)."""
    candidate: str | None
    """The best-scoring route, whether or not it passed."""
    runner_up: str | None
    """The second-best route."""
    runner_up_score: float | None
    """The second-best route's score."""
    reason: str
    """Why: ``matched``, ``below_threshold``, ``ambiguous``, ``empty_query`` ..."""


#: Builds the input a ``Send`` carries to a route's node from the state and decision.
PayloadBuilder = Callable[[Any, RouteDecision], Any]


def decision_of(match: RouteMatch, node: str) -> RouteDecision:
    """The plain-value decision for ``match``, going to ``node``.

    Args:
        match: the router's answer.
        node: the node the graph goes to for it.

    Returns:
        The decision: route, node, score, candidate, runner-up, its score, reason.
    """
    return {
        "route": match.name,
        "node": node,
        "score": float(match.score),
        "candidate": match.candidate,
        "runner_up": match.runner_up,
        "runner_up_score": (
            None if match.runner_up_score is None else float(match.runner_up_score)
        ),
        "reason": str(match.reason),
    }


class _Routing:
    """What the edge, the node and the fan-out share: reading the state and naming nodes.

    The destinations are fixed when the helper is built, because LangGraph fixes a
    graph's edges when they are added; a route added to the router later raises a
    clear error instead of LangGraph's ``KeyError``.
    """

    #: What the caller can do about a state the text cannot be read from.
    remedy = "pass input_key= or text_extractor="

    def __init__(
        self,
        router: RouterLike,
        default: str,
        routes: Mapping[str, str] | None,
        input_key: str,
        text_extractor: TextExtractor | None,
        timeout: float | None,
        kind: str,
    ) -> None:
        if not isinstance(router, _ROUTERS):
            # A wrapper (configurable_fields/alternatives, with_retry, with_fallbacks,
            # with_config, ...) forwards some attributes to what it wraps, but a helper
            # reads the router once, when built, and then queries its AdaptiveRouter
            # directly: what the wrapper does per call (values chosen per call, retries,
            # fallbacks, config) could never apply, so it is refused, whatever it is.
            msg = (
                f"{kind} routes with an AdaptiveRouter, a SynaptorouteRouter or a "
                f"SynaptorouteClassifier, not {type(router).__name__}; a wrapper of one "
                "(configurable_fields, configurable_alternatives, with_retry, "
                "with_fallbacks, with_config, ...) is refused: the helper reads the "
                "router once, when built, and queries its AdaptiveRouter itself, so what "
                "the wrapper does per call could not apply; pass the Runnable it wraps "
                "or that Runnable's AdaptiveRouter"
            )
            raise TypeError(msg)
        if not isinstance(router, AdaptiveRouter) and router.threshold is not None:
            msg = (
                f"{kind} follows the router's thresholds and cannot apply the "
                f"{type(router).__name__}'s threshold=; set it on the routes instead"
            )
            raise InvalidInputError(msg)
        core = router if isinstance(router, AdaptiveRouter) else router.router
        mapping = dict(routes or {})
        unknown = [name for name in mapping if name not in core]
        if unknown:
            raise RouteNotFoundError(unknown[0])
        self.router = core
        self.default = default
        self.input_key = input_key
        self.text_extractor = text_extractor
        self.timeout = timeout
        self.kind = kind
        self.nodes = {name: mapping.get(name, name) for name in core.route_names}
        self.destinations = tuple(dict.fromkeys([*self.nodes.values(), default]))

    def text_of(self, state: Any) -> str:
        """The text to route for ``state``: the extractor's, or the value at ``input_key``."""
        if self.text_extractor is not None:
            return extract_text(state, extractor=self.text_extractor)
        if isinstance(state, Mapping):
            if self.input_key not in state:
                keys = ", ".join(repr(k) for k in state) or "none"
                msg = (
                    f"{self.kind}: the graph state has no key {self.input_key!r} "
                    f"(keys: {keys}); {self.remedy}"
                )
                raise InvalidInputError(msg)
            value = state[self.input_key]
        else:
            # Pydantic and dataclass state schemas hold their channels as attributes.
            missing = object()
            value = getattr(state, self.input_key, missing)
            if value is missing:
                msg = (
                    f"{self.kind}: the graph state ({type(state).__name__}) has no "
                    f"{self.input_key!r}; {self.remedy}"
                )
                raise InvalidInputError(msg)
        try:
            # A dict at input_key is read at its "input" key: the router's advice
            # (set input_key= ... on the router) is not this state's way out.
            return extract_text(value, remedy="pass text_extractor= to say where its text is")
        except NoHumanMessageError:
            # No question asked yet (an empty thread, only AI or tool messages): no
            # text, which matches no route and goes to the default node, as an empty
            # message does, instead of failing the graph's run.
            return ""
        except (InvalidInputError, TypeError) as exc:
            msg = f"{self.kind}: cannot read the text to route from {self.input_key!r}: {exc}"
            raise type(exc)(msg) from exc

    def node_of(self, match: RouteMatch) -> str:
        """The node for ``match``: its route's node, or the default for no match."""
        if match.name is None:
            return self.default
        node = self.nodes.get(match.name)
        if node is None:
            msg = (
                f"{self.kind}: route {match.name!r} was added to the router after this "
                "helper was built; build it (and the graph's edges) again"
            )
            raise InvalidInputError(msg)
        return node

    def decide(self, state: Any) -> RouteDecision:
        """Route ``state`` with ``router.query``."""
        match = self.router.query(self.text_of(state))
        return decision_of(match, self.node_of(match))

    async def adecide(self, state: Any) -> RouteDecision:
        """Route ``state`` with ``router.aquery`` (the batching worker)."""
        match = await self.router.aquery(self.text_of(state), timeout=self.timeout)
        return decision_of(match, self.node_of(match))

    def returns(self, annotation: Any, *funcs: Callable[..., Any]) -> None:
        """Annotate ``funcs``' return type, where LangGraph reads a path's destinations."""
        for func in funcs:
            func.__annotations__ = {"state": Any, "return": annotation}


def _literal(names: Sequence[str]) -> Any:
    """``Literal[names...]``, built at run time from the router's routes."""
    return cast(Any, Literal).__getitem__(tuple(names))


class _Destinations:
    """The destinations every helper declares, and the path map of the two edges."""

    routing: _Routing

    @property
    def destinations(self) -> tuple[str, ...]:
        """Every node this may go to: each route's node (in route order), then the default."""
        return self.routing.destinations

    @property
    def path_map(self) -> dict[str, str]:
        """``{node: node}`` for every destination, for ``add_conditional_edges``."""
        return {node: node for node in self.destinations}


class _Path(_Destinations):
    def add_to(self, graph: StateGraph[Any, Any, Any, Any], source: str) -> None:
        """Add this path to ``graph`` after ``source``, with its path map.

        Args:
            graph: the graph being built.
            source: the node (or ``START``) the edge leaves from.
        """
        graph.add_conditional_edges(source, cast(Any, self), list(self.destinations))


class SynaptorouteEdge(_Path, RunnableLambda[Any, str]):
    """A path for ``StateGraph.add_conditional_edges``: the node of the matched route.

    Returns the route's node name (the route's own name unless ``routes`` maps it),
    or ``default`` when no route passes. ``graph.invoke`` runs ``router.query``;
    ``graph.ainvoke`` awaits ``router.aquery``, batched with concurrent graphs. The
    return type names every destination, so ``add_conditional_edges(source, edge)``
    needs no path map and ``get_graph()`` draws one edge per route.

    Example:
        ```python
        from langgraph.graph import START, MessagesState, StateGraph
        from langchain_synaptoroute import SynaptorouteEdge

        graph = StateGraph(MessagesState)
        ...  # one node per route, plus "general"
        graph.add_conditional_edges(START, SynaptorouteEdge(router, default="general"))
        ```
    """

    def __init__(
        self,
        router: RouterLike,
        *,
        default: str = END,
        routes: Mapping[str, str] | None = None,
        input_key: str = "messages",
        text_extractor: TextExtractor | None = None,
        timeout: float | None = None,
        name: str = "SynaptorouteEdge",
    ) -> None:
        """Route with ``router``'s current routes.

        Args:
            router: an ``AdaptiveRouter``, or a ``SynaptorouteRouter``/``Classifier``
                (its router is used).
            default: the node for states that match no route (default ``END``).
            routes: route name -> node name, for routes whose node is named otherwise.
            input_key: the state key holding the text or the chat messages (their
                last human message is routed).
            text_extractor: returns the text to route for a state; overrides
                ``input_key``.
            timeout: seconds an awaited call may wait for the batching worker.
            name: the run name in traces.

        Raises:
            RouteNotFoundError: ``routes`` names a route the router lacks.
            InvalidInputError: ``router`` is a wrapper with a ``threshold``, which
                the graph helpers cannot apply (they follow the router's thresholds).
            TypeError: ``router`` is none of those three, e.g. a wrapper of one
                (``configurable_fields``, ``with_retry``, ``with_fallbacks``, ...);
                pass the Runnable it wraps.
        """
        self.routing = _Routing(router, default, routes, input_key, text_extractor, timeout, name)
        routing = self.routing

        def route(state: Any) -> str:
            return routing.decide(state)["node"]

        async def aroute(state: Any) -> str:
            return (await routing.adecide(state))["node"]

        routing.returns(_literal(routing.destinations), route, aroute)
        super().__init__(route, aroute, name=name)


class SynaptorouteNode(_Destinations, RunnableLambda[Any, Command[str]]):
    """A graph node that routes and records: ``Command(goto=node, update={key: decision})``.

    The decision (:class:`RouteDecision`: route, node, score, candidate, runner-up
    and its score, reason) is written under ``state_key``, so the state schema needs
    that key (e.g. ``route: RouteDecision``); later nodes, ``get_state`` and
    checkpointers see it. Add it with :meth:`add_to` (or pass
    ``destinations=node.destinations`` to ``add_node``) so ``get_graph()`` draws an
    edge per route; like :class:`SynaptorouteEdge`, it awaits ``router.aquery`` in
    async graphs.
    """

    def __init__(
        self,
        router: RouterLike,
        *,
        default: str = END,
        routes: Mapping[str, str] | None = None,
        state_key: str = "route",
        input_key: str = "messages",
        text_extractor: TextExtractor | None = None,
        timeout: float | None = None,
        name: str = "SynaptorouteNode",
    ) -> None:
        """Route with ``router``'s current routes.

        Args:
            router: as for :class:`SynaptorouteEdge`, like ``default``, ``routes``,
                ``input_key``, ``text_extractor``, ``timeout`` and ``name``.
            state_key: the state key the decision is written under.

        Raises:
            RouteNotFoundError: ``routes`` names a route the router lacks.
            InvalidInputError: ``state_key`` is ``input_key``, the key the text is read
                from (with no ``text_extractor``): the decision would replace it.
        """
        if state_key == input_key and text_extractor is None:
            msg = f"state_key {state_key!r} is the key the text is read from (input_key)"
            raise InvalidInputError(msg)
        self.routing = _Routing(router, default, routes, input_key, text_extractor, timeout, name)
        self.state_key = state_key
        routing = self.routing

        def command(decision: RouteDecision) -> Command[str]:
            return Command(goto=decision["node"], update={state_key: decision})

        def route(state: Any) -> Command[str]:
            return command(routing.decide(state))

        async def aroute(state: Any) -> Command[str]:
            return command(await routing.adecide(state))

        routing.returns(Command[_literal(routing.destinations)], route, aroute)  # type: ignore[misc]
        super().__init__(route, aroute, name=name)

    def add_to(self, graph: StateGraph[Any, Any, Any, Any], name: str = "router") -> None:
        """Add this node to ``graph`` as ``name``, declaring its destinations.

        Args:
            graph: the graph being built.
            name: the node's name.

        Warns when ``state_key`` is no key of the graph's state yet (LangGraph drops
        an update to such a key: the decision was lost without a word), unless a node
        added later declares it (a private schema's key).
        """
        channels = getattr(graph, "channels", None)
        if isinstance(channels, Mapping) and self.state_key not in channels:
            warnings.warn(
                f"state_key {self.state_key!r} is no key of the graph's state (keys: "
                f"{', '.join(map(repr, channels)) or 'none'}): unless a node added later "
                "declares it, LangGraph drops the decision; add it to the state schema "
                "(e.g. route: RouteDecision | None) or pass state_key= naming one",
                UserWarning,
                stacklevel=2,
            )
        graph.add_node(name, self, destinations=self.destinations)


class SynaptorouteFanOut(_Path, RunnableLambda[Any, str | list[Send]]):
    """A path that sends the state to every matching route's node at once (``Send``).

    Takes the ``k`` best routes; a route is sent when it passes its threshold (or,
    with ``min_score``, when its score reaches it). Each ``Send`` carries the state
    (or what ``payload(state, decision)`` returns) to its node; the nodes run in the
    same step and their updates merge through the state's reducers. With no route
    selected the path returns ``default``. Add it with ``add_conditional_edges`` (or
    :meth:`add_to`); ``get_graph()`` draws one edge per route. A route mapped to
    ``END`` sends nothing (no packet can go to ``END``): selected alone, the path
    returns ``END``.

    From ``START``, LangGraph hands a path the graph's raw input: each ``Send`` then
    carries the messages as given (tuples or dicts, without ids), and a subgraph
    agent that returns them adds them to the parent's messages again. Fan out after
    a first node, or send only what each agent needs with ``payload``.
    """

    def __init__(
        self,
        router: RouterLike,
        *,
        k: int = 3,
        min_score: float | None = None,
        default: str = END,
        routes: Mapping[str, str] | None = None,
        payload: PayloadBuilder | None = None,
        input_key: str = "messages",
        text_extractor: TextExtractor | None = None,
        timeout: float | None = None,
        name: str = "SynaptorouteFanOut",
    ) -> None:
        """Fan out over ``router``'s current routes.

        Args:
            router: as for :class:`SynaptorouteEdge`, like ``default`` (here: for
                states that select no route), ``routes``, ``input_key``,
                ``text_extractor``, ``timeout`` and ``name``.
            k: the most routes sent to.
            min_score: send to routes scoring at least this, instead of each route's
                own threshold.
            payload: builds each ``Send``'s input from the state and that route's
                decision; default the state unchanged.

        Raises:
            InvalidInputError: ``k`` is under 1.
            RouteNotFoundError: ``routes`` names a route the router lacks.
        """
        if k < 1:
            msg = f"k must be at least 1, got {k}"
            raise InvalidInputError(msg)
        self.routing = _Routing(router, default, routes, input_key, text_extractor, timeout, name)
        self.k = k
        self.min_score = min_score
        self.payload = payload
        routing = self.routing

        def route(state: Any) -> str | list[Send]:
            return self._sends(state, top_routes(routing.router, routing.text_of(state), k))

        async def aroute(state: Any) -> str | list[Send]:
            text = routing.text_of(state)
            return self._sends(state, await atop_routes(routing.router, text, k, routing.timeout))

        routing.returns(_literal(routing.destinations), route, aroute)
        super().__init__(route, aroute, name=name)

    def _sends(self, state: Any, top: Sequence[RouteMatch]) -> str | list[Send]:
        # ``top_routes`` gives no routes for a text nearest to a negative example.
        sends: dict[str, Send] = {}
        # "ambiguous" still passes: fanning out is the answer to ambiguity.
        ends = False
        for match in passing(top, self.min_score):
            if match.name is None:
                continue
            node = self.routing.node_of(match)
            if node == END:  # no packet can go to END (LangGraph refuses it at run time)
                ends = True
                continue
            if node in sends:  # two routes of one node: the best one's decision is kept
                continue
            decision = decision_of(match, node)
            arg = state if self.payload is None else self.payload(state, decision)
            sends[node] = Send(node, arg)
        if sends:
            return list(sends.values())  # a route to END among others: the others run
        return END if ends else self.routing.default


def _classifier_path(
    classifier: SynaptorouteClassifier, *, default: str, routes: Mapping[str, str] | None
) -> SynaptorouteEdge:
    """``classifier.as_path()``: an edge reading the state as ``classifier`` reads its input.

    ``as_path`` takes no ``input_key=`` or ``text_extractor=`` of its own, so a state
    the text cannot be read from names the classifier's instead.
    """
    edge = SynaptorouteEdge(
        classifier,
        default=default,
        routes=routes,
        input_key=classifier.input_key,
        text_extractor=classifier.text_extractor,
        timeout=classifier.timeout,
    )
    edge.routing.remedy = (
        "as_path() reads the state as the SynaptorouteClassifier reads its input: build "
        "the classifier with input_key= (e.g. 'messages') or text_extractor=, or use "
        "SynaptorouteEdge(classifier.router, input_key=...)"
    )
    return edge
