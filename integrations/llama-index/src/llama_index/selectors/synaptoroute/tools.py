"""``SynaptorouteToolRetriever``: the tools of a LlamaIndex agent retrieved by example utterances.

LlamaIndex agents (``FunctionAgent``, ``ReActAgent``, ``CodeActAgent``,
``AgentWorkflow``) take a ``tool_retriever: ObjectRetriever[BaseTool]`` and, before
each LLM call, bind their ``tools=`` plus what it retrieves for the user's message.
This one ranks the tools as :class:`~llama_index.selectors.synaptoroute.SynaptorouteSelector`
ranks choices (each tool's ``ToolMetadata`` is a choice; the selector builds, caches
and queries the routes), locally: no embedding API call per query or per tool.

It is a plain ``ObjectRetriever``: its ``retriever`` is a real ``BaseRetriever``
(:class:`_ToolRouteRetriever`) that returns one ``NodeWithScore`` per selected tool,
and its ``object_node_mapping`` a ``SimpleToolNodeMapping``, so ``retrieve`` and
``aretrieve`` are LlamaIndex's own: its retrieval spans and events fire, and the
``node_postprocessors`` apply. Sync and async rank alike and share one pure decision
function, :func:`choose_tools`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.objects import ObjectRetriever
from llama_index.core.objects.tool_node_mapping import SimpleToolNodeMapping
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle, QueryType
from llama_index.core.settings import Settings
from llama_index.core.tools import BaseTool, FunctionTool
from llama_index.core.tools.types import ToolMetadata
from typing_extensions import override

from synaptoroute import EncoderProtocol, InvalidInputError, RouteMatch
from synaptoroute.batching import check_timeout
from synaptoroute.checks import check_count, check_threshold

from .selector import SynaptorouteSelector, _index

__all__ = ["SynaptorouteToolRetriever", "ToolNoMatch", "ToolPolicy", "choose_tools"]

#: What to retrieve when no tool reaches the threshold: every tool, or none.
ToolNoMatch = Literal["all", "none"]


@dataclass(frozen=True)
class ToolPolicy:
    """How ranked tools become the retrieved ones.

    Attributes:
        max_tools: the most tools retrieved (``None``: no limit).
        threshold: the least score of a retrieved tool (``None``: the ``max_tools``
            best, whatever their score).
        on_no_match: when no tool reaches ``threshold`` (or the query is empty):
            ``"all"`` retrieves every tool, ``"none"`` none.
    """

    max_tools: int | None = 5
    threshold: float | None = None
    on_no_match: ToolNoMatch = "all"

    def __post_init__(self) -> None:
        # The core's checks (numpy scalars are numbers, a bool is none); frozen, so the
        # checked values are set as the dataclass sets them.
        if self.max_tools is not None:
            object.__setattr__(self, "max_tools", check_count(self.max_tools, "max_tools", 1))
        if self.threshold is not None:
            threshold = check_threshold(self.threshold, "threshold", low=0.0, high=1.0)
            object.__setattr__(self, "threshold", threshold)
        if self.on_no_match not in ("all", "none"):
            msg = f"on_no_match must be 'all' or 'none', got {self.on_no_match!r}"
            raise InvalidInputError(msg)

    def k(self, count: int) -> int:
        """How many of ``count`` tools to rank: with a threshold, the ones that pass
        are among the best ``max_tools`` anyway."""
        return count if self.max_tools is None else min(self.max_tools, count)


def choose_tools(
    ranked: Sequence[RouteMatch], count: int, policy: ToolPolicy
) -> list[tuple[int, float | None]]:
    """The retrieved tools, as (index among the ``count`` tools, score) pairs, best first.

    Pure; sync and async retrieval share it. ``ranked`` is what
    :meth:`SynaptorouteSelector.rank` returns for the tools (each route named by its
    tool's index): the tools reaching ``policy.threshold``, up to ``policy.max_tools``.
    When none does (or nothing was ranked: an empty query), ``on_no_match="all"``
    gives every tool in its given order, each with the score ``None`` (retrieved
    unscored, as the agent would bind them without a retriever), and ``"none"`` gives
    ``[]``.
    """
    threshold = policy.threshold
    passed: list[tuple[int, float | None]] = [
        (_index(m), m.score) for m in ranked if threshold is None or m.score >= threshold
    ]
    if not passed:
        return [(index, None) for index in range(count)] if policy.on_no_match == "all" else []
    return passed if policy.max_tools is None else passed[: policy.max_tools]


class _ToolRouteRetriever(BaseRetriever):
    """The ``BaseRetriever`` under :class:`SynaptorouteToolRetriever`: one
    ``NodeWithScore`` per retrieved tool (its ``SimpleToolNodeMapping`` node, the
    route's score), ranked by the selector."""

    def __init__(
        self,
        selector: SynaptorouteSelector,
        choices: Sequence[ToolMetadata],
        nodes: Sequence[BaseNode],
        policy: ToolPolicy,
        timeout: float | None,
        postprocessors: Sequence[BaseNodePostprocessor],
    ) -> None:
        # The global callback manager, as LlamaIndex's index retrievers take by default.
        super().__init__(callback_manager=Settings.callback_manager)
        self.selector = selector
        self.policy = policy
        self.timeout = timeout
        self.postprocessors = list(postprocessors)
        self._choices = tuple(choices)
        self._nodes = tuple(nodes)
        self._by_name = {choice.name: index for index, choice in enumerate(self._choices)}

    def _nodes_of(self, chosen: Sequence[tuple[int, float | None]]) -> list[NodeWithScore]:
        # The tools' own nodes: ObjectRetriever reads only their names to map them back
        # (the postprocessors get copies, see _chosen).
        return [NodeWithScore(node=self._nodes[index], score=score) for index, score in chosen]

    def _named(self, query: str) -> list[NodeWithScore] | None:
        """The tool a query names exactly, alone, with the score 1.0; ``None`` for a
        query that is no tool's name.

        Before running a tool call an agent asks for its tools again, with the tool's
        name as the query (``get_tools(ev.tool_name)``), and answers "Tool ... not
        found" when the tool is not among them: that lookup must not depend on a
        ranking, a threshold or ``on_no_match``."""
        index = self._by_name.get(query)
        return None if index is None else self._nodes_of([(index, 1.0)])

    @override
    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = query_bundle.query_str
        named = self._named(query)
        if named is not None:
            return named
        ranked = self.selector.rank(self._choices, query, self.policy.k(len(self._choices)))
        return self._chosen(ranked, query_bundle)

    @override
    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = query_bundle.query_str
        named = self._named(query)
        if named is not None:
            return named
        k = self.policy.k(len(self._choices))
        ranked = await self.selector.arank(self._choices, query, k, timeout=self.timeout)
        return self._chosen(ranked, query_bundle)

    def _chosen(
        self, ranked: Sequence[RouteMatch], query_bundle: QueryBundle
    ) -> list[NodeWithScore]:
        """The nodes of the tools :func:`choose_tools` retrieves, the postprocessors
        applied to ranked ones only: the no-match fallback's unscored tools (every
        tool, so the agent works as without the retriever) would fall to a score cutoff
        such as ``SimilarityPostprocessor``'s, leaving the agent no tool at all."""
        chosen = choose_tools(ranked, len(self._nodes), self.policy)
        nodes = self._nodes_of(chosen)
        if self.postprocessors and chosen and chosen[0][1] is not None:  # ranked ones
            # Copies: a postprocessor may change the nodes it is given.
            nodes = [NodeWithScore(node=n.node.model_copy(deep=True), score=n.score) for n in nodes]
            for postprocessor in self.postprocessors:
                nodes = postprocessor.postprocess_nodes(nodes, query_bundle=query_bundle)
        return nodes


def _checked_tools(tools: Sequence[BaseTool | Callable[..., Any]]) -> tuple[BaseTool, ...]:
    """``tools`` as a tuple of named tools with distinct names, else InvalidInputError.

    A plain function is made a ``FunctionTool``, as agents make the ``tools=`` they are
    given (its docstring is its description)."""
    if isinstance(tools, (str, bytes, BaseTool)) or not isinstance(tools, Sequence):
        msg = f"tools must be a list of LlamaIndex tools, got {type(tools).__name__}"
        raise InvalidInputError(msg)
    if not tools:
        msg = "tools is empty: give the retriever the tools to retrieve from"
        raise InvalidInputError(msg)
    checked: list[BaseTool] = []
    for index, given in enumerate(tools):
        if isinstance(given, BaseTool):
            tool = given
        elif callable(given):
            tool = FunctionTool.from_defaults(given)
        else:
            msg = (
                f"tools[{index}] must be a LlamaIndex BaseTool or a function, got "
                f"{type(given).__name__}"
            )
            raise InvalidInputError(msg)
        if not isinstance(tool.metadata.name, str) or not tool.metadata.name:
            msg = f"tools[{index}] has no name: the retriever maps tools by name"
            raise InvalidInputError(msg)
        checked.append(tool)
    names = [str(tool.metadata.name) for tool in checked]
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        msg = (
            f"several tools share the name {repeated[0]!r}: the retriever maps tools by "
            "name, so give each its own (e.g. FunctionTool.from_defaults(fn, name=...))"
        )
        raise InvalidInputError(msg)
    return tuple(checked)


def _query(value: object) -> QueryType:
    """A query ``ObjectRetriever`` takes: a str or a ``QueryBundle`` whose
    ``query_str`` is one (checked further when ranked), else InvalidInputError."""
    if isinstance(value, str) or (
        isinstance(value, QueryBundle) and isinstance(value.query_str, str)
    ):
        return value
    what = type(value).__name__
    if isinstance(value, QueryBundle):
        what = f"a QueryBundle whose query_str is {type(value.query_str).__name__}"
    msg = f"the query must be a str or a QueryBundle with a str query_str, got {what}"
    raise InvalidInputError(msg)


class SynaptorouteToolRetriever(ObjectRetriever[BaseTool]):
    """Retrieve an agent's tools by similarity to example utterances, locally.

    The zero-API-call counterpart of
    ``ObjectIndex.from_objects(tools, index_cls=VectorStoreIndex).as_retriever()``:
    each tool is a route whose texts are its description, its name as a phrase and
    the ``utterances`` given for its name (built by a :class:`SynaptorouteSelector`,
    as it builds a choice's, and embedded once, when the retriever is made); a query
    costs one local embedding. Give it to an agent as ``tool_retriever=``: before
    each LLM call the agent binds its ``tools=`` plus the tools retrieved for the
    user's message.

    The ``max_tools`` best tools whose score reaches ``threshold`` are retrieved,
    best first; with ``threshold=None``, the ``max_tools`` best whatever their score
    (as ``similarity_top_k`` does). When no tool reaches ``threshold``, or the query is
    empty (an agent asks with ``""`` when there is no user input) or the model reads
    nothing of it, ``on_no_match="all"`` retrieves every tool, so the agent works as
    it would without this retriever, and ``"none"`` retrieves none. Each retrieved
    node's score is its tool's route score (``None`` for the tools ``"all"`` gives).
    A query that is exactly a tool's name retrieves that tool alone (score 1.0): an
    agent looks each tool it is about to call up so, by name.

    ``retrieve`` and ``aretrieve`` are ``ObjectRetriever``'s own, over a real
    ``BaseRetriever`` (``.retriever``) and a ``SimpleToolNodeMapping``
    (``.object_node_mapping``): LlamaIndex's retrieval events fire and the
    ``node_postprocessors`` apply, in order, to the retrieved nodes. They route on the
    query's ``query_str``; ``aretrieve`` embeds on the router's batching worker, off the
    event loop.

    Example:
        >>> from llama_index.core.agent.workflow import FunctionAgent
        >>> retriever = SynaptorouteToolRetriever(
        ...     [get_weather, convert_currency, search_flights, ...],
        ...     utterances={"get_weather": ["will it rain tomorrow?"]},
        ...     max_tools=3,
        ... )
        >>> agent = FunctionAgent(tools=[search_docs], tool_retriever=retriever, llm=llm)
    """

    def __init__(
        self,
        tools: Sequence[BaseTool | Callable[..., Any]],
        *,
        utterances: Mapping[str, Sequence[str]] | None = None,
        max_tools: int | None = 5,
        threshold: float | None = None,
        on_no_match: ToolNoMatch = "all",
        encoder: EncoderProtocol | BaseEmbedding | Any | None = None,
        selector: SynaptorouteSelector | None = None,
        timeout: float | None = None,
        node_postprocessors: list[BaseNodePostprocessor] | None = None,
    ) -> None:
        """Build the tools' routes (one encoder call, or none when ``selector`` has them).

        Args:
            tools: the tools to retrieve from (a plain function is made a
                ``FunctionTool``, as an agent's ``tools=`` are); each needs a name of
                its own.
            utterances: tool name -> example requests that should retrieve the tool. A
                name of no tool that looks like a misspelling of a tool without
                utterances of its own is refused (the selector's rule).
            max_tools: the most tools retrieved (``None``: no limit).
            threshold: the least score, in ``[0, 1]``, of a retrieved tool (``None``:
                the ``max_tools`` best whatever their score).
            on_no_match: ``"all"`` retrieves every tool when none reaches
                ``threshold`` (or the query is empty); ``"none"`` retrieves none.
            encoder: a synaptoroute encoder or any LlamaIndex ``BaseEmbedding``, as
                :meth:`SynaptorouteSelector.from_defaults` takes it; default the
                bundled local model.
            selector: a selector whose encoder and cache of routes to share (its
                utterances are used; its threshold, ``top_n`` and no-match policy are
                not); not with ``encoder`` or ``utterances``.
            timeout: seconds ``aretrieve`` may wait for the batching worker
                (``None``: no bound).
            node_postprocessors: applied to the retrieved nodes, as by any
                ``ObjectRetriever``.

        Raises:
            InvalidInputError: a setting is out of range or of the wrong type, tools
                are missing, unnamed or share a name, ``selector`` is given with
                ``encoder`` or ``utterances``, an ``utterances`` key looks misspelt, or
                a tool has nothing to route by.
        """
        tools = _checked_tools(tools)
        policy = ToolPolicy(max_tools=max_tools, threshold=threshold, on_no_match=on_no_match)
        check_timeout(timeout)
        selector = SynaptorouteSelector.given_or_made(
            selector, encoder=encoder, utterances=utterances
        )
        choices = [tool.metadata for tool in tools]
        # Built now, as ObjectIndex embeds its tools when made: a misspelt utterances key,
        # a tool with nothing to route by or a warning about few examples comes from this
        # line, not from the agent's first step.
        selector.router_for(choices)
        mapping = SimpleToolNodeMapping.from_objects(tools)
        nodes = [mapping.to_node(tool) for tool in tools]
        # The postprocessors run inside the BaseRetriever, on ranked tools only (see
        # _ToolRouteRetriever._chosen), not after it as ObjectRetriever would run them.
        retriever = _ToolRouteRetriever(
            selector, choices, nodes, policy, timeout, node_postprocessors or []
        )
        super().__init__(retriever=retriever, object_node_mapping=mapping)
        self._route_retriever = retriever
        self._tools = tools

    @property
    def tools(self) -> tuple[BaseTool, ...]:
        """The tools retrieved from, in the order given."""
        return self._tools

    @property
    def selector(self) -> SynaptorouteSelector:
        """The selector that builds and ranks the tools' routes."""
        return self._route_retriever.selector

    @property
    @override
    def node_postprocessors(self) -> list[BaseNodePostprocessor]:
        """The postprocessors applied to ranked tools (not to the no-match fallback's
        tools, nor to a tool looked up by its name)."""
        return self._route_retriever.postprocessors

    @property
    def policy(self) -> ToolPolicy:
        """``max_tools``, ``threshold`` and ``on_no_match``, as checked."""
        return self._route_retriever.policy

    @property
    def timeout(self) -> float | None:
        """Seconds ``aretrieve`` may wait for the batching worker (``None``: no bound)."""
        return self._route_retriever.timeout

    @override
    def retrieve(self, str_or_query_bundle: QueryType) -> list[BaseTool]:
        """The tools retrieved for a query (a str or a ``QueryBundle``), best first.

        Raises:
            InvalidInputError: the query is neither, or its text is not valid Unicode.
        """
        return super().retrieve(_query(str_or_query_bundle))

    @override
    async def aretrieve(self, str_or_query_bundle: QueryType) -> list[BaseTool]:
        """:meth:`retrieve`, the query embedded on the batching worker (what agents call)."""
        return await super().aretrieve(_query(str_or_query_bundle))

    async def aclose(self) -> None:
        """Stop the batching workers ``aretrieve`` started on the running loop (the
        selector's: with a shared selector, its other choice sets' too; they start
        again at the next call)."""
        await self.selector.aclose()
