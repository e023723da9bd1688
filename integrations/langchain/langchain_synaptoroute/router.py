"""A Runnable that sends its input to one of several Runnables by semantic similarity.

Why one module over 400 lines: the single-route and the multi-route Runnables share
how a decision is traced (:func:`_open_and_decide`, the ``synaptoroute.route`` child
run), the branch's config and the graph drawing; split, these helpers would be
private names imported across modules.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, wait
from contextlib import AbstractAsyncContextManager, nullcontext
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast, overload

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
)
from langchain_core.embeddings import Embeddings
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnableSerializable,
    ensure_config,
    get_config_list,
    patch_config,
)
from langchain_core.runnables.base import RunnableLike, coerce_to_runnable
from langchain_core.runnables.config import (
    get_async_callback_manager_for_config,
    get_callback_manager_for_config,
    get_executor_for_config,
)
from langchain_core.runnables.configurable import RunnableConfigurableFields
from langchain_core.runnables.graph import Graph
from langchain_core.runnables.utils import (
    AnyConfigurableField,
    ConfigurableFieldSpec,
    Input,
    Output,
    get_unique_config_specs,
)
from langchain_core.tools import BaseTool
from langchain_core.utils.pydantic import TypeBaseModel
from pydantic import ConfigDict, Field
from typing_extensions import override

from synaptoroute import (
    AdaptiveRouter,
    EncoderProtocol,
    InvalidInputError,
    NoRouteMatchedError,
    Route,
    RouteMatch,
    RouteNotFoundError,
)
from synaptoroute.decision import empty_match

from ._inputs import (
    TextExtractor,
    aclassify_batch,
    aclassify_one,
    arank_batch,
    arank_one,
    classify_batch,
    classify_one,
    extract_text,
    passing,
    rank_batch,
    rank_one,
)
from ._tools import ArgsFromText, check_tool_keys, tool_runnable, tool_utterances
from .classifier import SynaptorouteClassifier, SynaptorouteMultiClassifier
from .embeddings import as_encoder

if TYPE_CHECKING:
    from synaptoroute.fitting import FitReport

__all__ = ["DEFAULT_BRANCH", "ROUTE_RUN_NAME", "SynaptorouteMultiRouter", "SynaptorouteRouter"]

T = TypeVar("T")
D = TypeVar("D")

#: Name of the default branch in tags (``route:default``) and run metadata.
DEFAULT_BRANCH = "default"

#: Name of the child run in which a router decides: its input is the router's input,
#: its outputs the decision (the ``synaptoroute_*`` fields).
ROUTE_RUN_NAME = "synaptoroute.route"


class SynaptorouteRouter(RunnableSerializable[Input, Output]):
    """Runs the Runnable of the route its input matches; ``default`` when none matches.

    A drop-in for ``RunnableBranch`` (hand-written conditions) and for an LLM call
    that classifies: each route is described by example utterances, and the input
    is embedded locally and compared with them in a few milliseconds. The chosen
    Runnable receives the original input unchanged.

    The text to route is read from the input: a ``str`` as is, a dict at
    ``input_key`` (default ``"input"``), chat messages (or a prompt value) by their
    last human message, or anything through ``text_extractor``.

    Tracing follows ``RunnableBranch``: one chain run for the router, in which the
    decision runs first as a child chain run named ``synaptoroute.route`` (so the
    embedding and the batching worker's wait are timed inside the router's run),
    whose outputs are ``synaptoroute_route``, ``synaptoroute_score``,
    ``synaptoroute_candidate`` and ``synaptoroute_reason``; the chosen Runnable runs
    as the next child, named after the route (or ``default``) and tagged
    ``route:<name>``, with the caller's config and kwargs. The route fields are
    metadata of the branch's run and are inherited by every run below it (the chat
    model's run inside a chain branch too), so traces can be sliced by route.
    ``get_graph()`` draws an edge from the router to each branch.

    ``threshold`` replaces the router's thresholds for this Runnable's calls without
    changing the shared ``AdaptiveRouter``; as a field it can be set per call:
    ``router.configurable_fields(threshold=ConfigurableField(id="threshold"))``.

    ``batch``/``abatch`` embed every input in one call, then call each chosen
    Runnable's own ``batch`` once on its group of inputs; results come back in input
    order. Groups run concurrently unless the config sets ``max_concurrency``, in
    which case they run one after another and each group's batch honours it.

    Example:
        ```python
        from langchain_core.runnables import RunnableLambda
        from langchain_synaptoroute import SynaptorouteRouter

        router = SynaptorouteRouter.from_branches(
            {
                "billing": (
                    ["I need a refund", "I was charged twice"],
                    RunnableLambda(lambda q: f"billing: {q}"),
                ),
                "tech": (
                    ["The app crashes", "I can't log in"],
                    RunnableLambda(lambda q: f"tech: {q}"),
                ),
            },
            default=RunnableLambda(lambda q: f"general: {q}"),
        )
        router.invoke("How do I get my money back?")  # 'billing: How do I get ...'
        router.invoke("What is the boiling point of mercury?")  # 'general: ...'
        ```
    """

    router: AdaptiveRouter
    """The router that decides; it may be shared and persisted (``SQLiteStorage``)."""
    runnables: dict[str, Runnable[Input, Output]]
    """The Runnable to run for each route name."""
    default: Runnable[Input, Output] | None = None
    """Runs on inputs that match no route; without it they raise ``NoRouteMatchedError``."""
    input_key: str = "input"
    """Key of a dict input that holds the text (or the messages) to route."""
    text_extractor: TextExtractor | None = None
    """A function returning the text to route for an input; overrides ``input_key``."""
    timeout: float | None = None
    """Seconds an async call may wait for the router's batching worker."""
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Minimum score for this Runnable's calls (``None``: the router's own thresholds)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def __init__(
        self,
        *,
        router: AdaptiveRouter,
        runnables: Mapping[str, RunnableLike[Input, Output]],
        default: RunnableLike[Input, Output] | None = None,
        input_key: str = "input",
        text_extractor: TextExtractor | None = None,
        timeout: float | None = None,
        threshold: float | None = None,
        name: str | None = None,
    ) -> None:
        """Route with an existing ``AdaptiveRouter``.

        Args:
            router: holds the routes; every route needs an entry in ``runnables``.
            runnables: route name -> Runnable (or a function, or a dict of them).
            default: runs on inputs that match no route.
            input_key: key of a dict input holding the text to route.
            text_extractor: returns the text to route for an input.
            timeout: seconds an async call may wait for the batching worker.
            threshold: minimum score for this Runnable's calls; default the
                router's own thresholds.
            name: the run name (default ``SynaptorouteRouter``).

        Raises:
            RouteNotFoundError: ``runnables`` names a route the router lacks.
            InvalidInputError: a route of the router has no Runnable.
        """
        source = _REBUILT_FROM.get()
        # A per-call copy made by configurable_fields keeps its original's branches; the
        # shared router may have changed since, which must not fail every configured
        # call (the original serves on: a deleted route stops matching, one added
        # without a Runnable raises when an input matches it). Branches set per call
        # are checked as at construction.
        if source is None or runnables is not source.runnables or router is not source.router:
            _check_branches(router, runnables)
        # Through a dict: the fields are this class's, unknown to the base __init__.
        fields: dict[str, Any] = {
            "router": router,
            "runnables": {key: coerce_to_runnable(value) for key, value in runnables.items()},
            "default": coerce_to_runnable(default) if default is not None else None,
            "input_key": input_key,
            "text_extractor": text_extractor,
            "timeout": timeout,
            "threshold": threshold,
            "name": name,
        }
        super().__init__(**fields)

    @classmethod
    def from_branches(
        cls,
        branches: Mapping[str, tuple[Sequence[str] | Route, RunnableLike[Any, Any]]],
        *,
        default: RunnableLike[Any, Any] | None = None,
        encoder: EncoderProtocol | Embeddings | Any | None = None,
        input_key: str = "input",
        text_extractor: TextExtractor | None = None,
        timeout: float | None = None,
        name: str | None = None,
        prune: bool = True,
        **router_kwargs: Any,
    ) -> SynaptorouteRouter[Any, Any]:
        """Build the router and its routes from ``{name: (utterances, runnable)}``.

        The router mirrors ``branches``: with a persistent ``storage=``, routes stored
        by an earlier build that ``branches`` no longer names are deleted (a branch
        removed from the code is removed from the store), unless ``prune=False``.

        Args:
            branches: route name -> (example utterances, or a ``Route``; the Runnable).
            default: runs on inputs that match no route.
            encoder: a synaptoroute encoder, any LangChain ``Embeddings`` or any
                LlamaIndex ``BaseEmbedding``; default the bundled local model, shared
                by every router in the process built without one.
            input_key: key of a dict input holding the text to route.
            text_extractor: returns the text to route for an input.
            timeout: seconds an async call may wait for the batching worker.
            name: the run name (default ``SynaptorouteRouter``).
            prune: delete stored routes that ``branches`` does not name.
            **router_kwargs: passed to ``AdaptiveRouter`` (``threshold``,
                ``storage``, ``aggregation``, ``min_margin``, ...).

        Raises:
            InvalidInputError: a ``Route`` is filed under another name, or (with
                ``prune=False``) the store holds a route without a branch.
        """
        routes: list[Route] = []
        for key, (examples, _) in branches.items():
            if isinstance(examples, Route):
                if examples.name != key:
                    msg = f"the Route named {examples.name!r} is filed under {key!r}"
                    raise InvalidInputError(msg)
                routes.append(examples)
            else:
                if isinstance(examples, str):
                    msg = f"route {key!r}: pass a list of utterances, not one str"
                    raise InvalidInputError(msg)
                routes.append(Route(name=key, utterances=list(examples)))
        router = _mirrored_router(routes, as_encoder(encoder), prune, router_kwargs)
        return cls(
            router=router,
            runnables={key: runnable for key, (_, runnable) in branches.items()},
            default=default,
            input_key=input_key,
            text_extractor=text_extractor,
            timeout=timeout,
            name=name,
        )

    @classmethod
    def from_tools(
        cls,
        tools: Sequence[BaseTool],
        *,
        utterances: Mapping[str, Sequence[str]] | None = None,
        args_from_text: ArgsFromText | Mapping[str, ArgsFromText] | None = None,
        default: RunnableLike[Any, Any] | None = None,
        encoder: EncoderProtocol | Embeddings | Any | None = None,
        input_key: str = "input",
        text_extractor: TextExtractor | None = None,
        timeout: float | None = None,
        name: str | None = None,
        prune: bool = True,
        **router_kwargs: Any,
    ) -> SynaptorouteRouter[Any, Any]:
        """Route to LangChain tools; each tool is called with arguments made from the text.

        Each tool's route is described by its name and description plus any
        ``utterances`` given for it. The chosen tool never receives the raw input:
        the text to route is turned into the tool's arguments by ``args_from_text``
        (one function ``(text, tool) -> dict`` for every tool, or a dict of them by
        tool name); a tool without one is called as ``{field: text}`` when its schema
        has exactly one field and it is a string (``{}`` when it has none).

        Args:
            tools: the tools to route to; their names must be distinct.
            utterances: tool name -> extra example utterances.
            args_from_text: how to turn the text into a tool's arguments.
            default: runs on inputs that match no tool.
            encoder: as in :meth:`from_branches`.
            input_key: key of a dict input holding the text to route.
            text_extractor: returns the text to route for an input.
            timeout: seconds an async call may wait for the batching worker.
            name: the run name (default ``SynaptorouteRouter``).
            prune: delete stored routes that name no tool (see :meth:`from_branches`).
            **router_kwargs: passed to ``AdaptiveRouter``.

        Raises:
            InvalidInputError: two tools share a name; ``utterances`` or
                ``args_from_text`` name no tool; a tool's schema needs more than one
                text (the message names the tool and its fields) and no
                ``args_from_text`` covers it.
        """
        names = [tool.name for tool in tools]
        check_tool_keys(names, utterances, "utterances")
        converters = args_from_text if isinstance(args_from_text, Mapping) else None
        check_tool_keys(names, converters, "args_from_text")

        def read(value: Any) -> str:
            return extract_text(value, input_key, text_extractor)

        branches: dict[str, tuple[Sequence[str] | Route, RunnableLike[Any, Any]]] = {}
        for tool in tools:
            convert = converters.get(tool.name) if converters is not None else args_from_text
            examples = tool_utterances(tool, (utterances or {}).get(tool.name, ()))
            branches[tool.name] = (examples, tool_runnable(tool, read, cast("Any", convert)))
        return cls.from_branches(
            branches,
            default=default,
            encoder=encoder,
            input_key=input_key,
            text_extractor=text_extractor,
            timeout=timeout,
            name=name,
            prune=prune,
            **router_kwargs,
        )

    @override
    def configurable_fields(
        self, **kwargs: AnyConfigurableField
    ) -> RunnableSerializable[Input, Output]:
        """This router with fields set per call (``configurable_fields`` of LangChain).

        Each configured call runs a copy of this router with the call's values; the
        copy keeps this router's branches even when the shared ``AdaptiveRouter``
        gained or lost routes since this router was built.

        Raises:
            ValueError: a key is not a field of this router.
        """
        super().configurable_fields(**kwargs)  # LangChain's checks of the keys
        return _ConfiguredRouter(default=self, fields=kwargs)

    def fit(self, texts: Sequence[str], labels: Sequence[str | None], **options: Any) -> FitReport:
        """Fit the router's decision policy on labelled texts (``AdaptiveRouter.fit``).

        Args:
            texts: example inputs.
            labels: the route each should take (``None``: no route).
            **options: passed to ``AdaptiveRouter.fit``.

        Returns:
            The fit's report. The fitted policy is the shared router's, so every
            Runnable over that router (and its storage) uses it from now on.
        """
        return self.router.fit(texts, labels, **options)

    def as_classifier(self) -> SynaptorouteClassifier:
        """A Runnable over the same router that returns the ``RouteMatch`` and runs nothing."""
        return SynaptorouteClassifier(
            router=self.router,
            input_key=self.input_key,
            text_extractor=self.text_extractor,
            timeout=self.timeout,
            threshold=self.threshold,
        )

    def as_multi_classifier(
        self, *, top_k: int = 3, threshold: float | None = None
    ) -> SynaptorouteMultiClassifier:
        """A Runnable over the same router that returns every matching route (at most ``top_k``)."""
        return SynaptorouteMultiClassifier(
            router=self.router,
            input_key=self.input_key,
            text_extractor=self.text_extractor,
            timeout=self.timeout,
            top_k=top_k,
            threshold=threshold if threshold is not None else self.threshold,
        )

    def as_multi_router(
        self, *, top_k: int = 3, threshold: float | None = None
    ) -> SynaptorouteMultiRouter[Input, Output]:
        """A Runnable over the same routes that runs every matching branch in parallel.

        Args:
            top_k: the most branches run per input.
            threshold: minimum score of a branch; default each route's own threshold.
        """
        return SynaptorouteMultiRouter(
            routing=self,
            top_k=top_k,
            threshold=threshold if threshold is not None else self.threshold,
            name=self.name,
        )

    # -- schema ----------------------------------------------------------------------
    def _branches(self) -> list[Runnable[Input, Output]]:
        return [*([self.default] if self.default is not None else []), *self.runnables.values()]

    @override
    def get_input_schema(self, config: RunnableConfig | None = None) -> TypeBaseModel:
        for runnable in self._branches():
            if runnable.get_input_jsonschema(config).get("type") is not None:
                return runnable.get_input_schema(config)
        return super().get_input_schema(config)

    @property
    @override
    def config_specs(self) -> list[ConfigurableFieldSpec]:
        return get_unique_config_specs(
            spec for runnable in self._branches() for spec in runnable.config_specs
        )

    @override
    def get_graph(self, config: RunnableConfig | None = None) -> Graph:
        """The router node with one conditional edge to each branch, named after its route."""
        return _route_graph(self, self.runnables, self.default, config)

    # -- the decision (shared by every entry point) -------------------------------------
    def text_of(self, value: Any) -> str:
        """The text this router routes for ``value``."""
        return extract_text(value, self.input_key, self.text_extractor)

    def _select(self, match: RouteMatch | Exception) -> tuple[str, Runnable[Input, Output]]:
        """The branch name and Runnable for a classification, or its error raised."""
        if isinstance(match, Exception):
            raise match
        if match.name is None:
            if self.default is None:
                raise NoRouteMatchedError(_no_match_message(match))
            return DEFAULT_BRANCH, self.default
        runnable = self.runnables.get(match.name)
        if runnable is None:
            # A route added to the AdaptiveRouter after this Runnable was built.
            raise RouteNotFoundError(match.name)
        return match.name, runnable

    @staticmethod
    def _child_config(
        config: RunnableConfig,
        run_manager: CallbackManagerForChainRun | AsyncCallbackManagerForChainRun,
        branch: str,
        match: RouteMatch | Exception,
    ) -> RunnableConfig:
        return _branch_config(config, run_manager, branch, _route_metadata(match))

    def _decide(
        self, inputs: Sequence[Input], configs: list[RunnableConfig], *, batch: bool = False
    ) -> tuple[list[CallbackManagerForChainRun], list[RouteMatch | Exception]]:
        """Open each input's run and classify the inputs inside it.

        Every entry point decides here. A ``batch`` classifies every input with one
        encoder call (``query_batch``); a single input is asked with ``query``.
        """

        def decide() -> list[RouteMatch | Exception]:
            if batch:
                return classify_batch(self.router, inputs, self.text_of, self.threshold)
            (value,) = inputs
            return [classify_one(self.router, value, self.text_of, self.threshold)]

        return _open_and_decide(self, inputs, configs, decide, _route_metadata)

    async def _adecide(
        self, inputs: Sequence[Input], configs: list[RunnableConfig], *, batch: bool = False
    ) -> tuple[list[AsyncCallbackManagerForChainRun], list[RouteMatch | Exception]]:
        """Like :meth:`_decide`, through the router's batching worker."""

        async def decide() -> list[RouteMatch | Exception]:
            router, read, timeout, cut = self.router, self.text_of, self.timeout, self.threshold
            if batch:
                return await aclassify_batch(router, inputs, read, timeout, cut)
            (value,) = inputs
            return [await aclassify_one(router, value, read, timeout, cut)]

        return await _aopen_and_decide(self, inputs, configs, decide, _route_metadata)

    # -- single input ----------------------------------------------------------------
    @override
    def invoke(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> Output:
        """Route ``input`` and invoke the chosen Runnable on it.

        Raises:
            NoRouteMatchedError: nothing matched and there is no ``default``.
        """
        config = ensure_config(config)
        (run_manager,), (match,) = self._decide([input], [config])
        return self._invoke_matched(input, config, run_manager, match, **kwargs)

    def _invoke_matched(
        self,
        input: Input,
        config: RunnableConfig,
        run_manager: CallbackManagerForChainRun,
        match: RouteMatch | Exception,
        **kwargs: Any,
    ) -> Output:
        """Invoke the branch ``match`` chose for ``input`` and end this router's run."""
        try:
            branch, runnable = self._select(match)
            output = runnable.invoke(
                input, self._child_config(config, run_manager, branch, match), **kwargs
            )
        except BaseException as exc:
            run_manager.on_chain_error(exc)
            raise
        run_manager.on_chain_end(output)
        return output

    @override
    async def ainvoke(
        self, input: Input, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Output:
        """Like :meth:`invoke`; the input is embedded by the router's batching worker."""
        config = ensure_config(config)
        (run_manager,), (match,) = await self._adecide([input], [config])
        try:
            branch, runnable = self._select(match)
            output = await runnable.ainvoke(
                input, self._child_config(config, run_manager, branch, match), **kwargs
            )
        except BaseException as exc:
            await run_manager.on_chain_error(exc)
            raise
        await run_manager.on_chain_end(output)
        return output

    @override
    def stream(
        self, input: Input, config: RunnableConfig | None = None, **kwargs: Any | None
    ) -> Iterator[Output]:
        """Route ``input`` and yield the chosen Runnable's chunks as they come."""
        config = ensure_config(config)
        (run_manager,), (match,) = self._decide([input], [config])
        final = _Accumulator[Output]()
        try:
            branch, runnable = self._select(match)
            for chunk in runnable.stream(
                input, self._child_config(config, run_manager, branch, match), **kwargs
            ):
                yield chunk
                final.add(chunk)
        except BaseException as exc:
            run_manager.on_chain_error(exc)
            raise
        run_manager.on_chain_end(final.value)

    @override
    async def astream(
        self, input: Input, config: RunnableConfig | None = None, **kwargs: Any | None
    ) -> AsyncIterator[Output]:
        """Like :meth:`stream`; the input is embedded by the router's batching worker."""
        config = ensure_config(config)
        (run_manager,), (match,) = await self._adecide([input], [config])
        final = _Accumulator[Output]()
        try:
            branch, runnable = self._select(match)
            async for chunk in runnable.astream(
                input, self._child_config(config, run_manager, branch, match), **kwargs
            ):
                yield chunk
                final.add(chunk)
        except BaseException as exc:
            await run_manager.on_chain_error(exc)
            raise
        await run_manager.on_chain_end(final.value)

    # -- many inputs -----------------------------------------------------------------
    @override
    def batch(
        self,
        inputs: list[Input],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> list[Output]:
        """Embed every input in one call, then batch each chosen Runnable on its group.

        Raises:
            Exception: without ``return_exceptions``, the first error in input order,
                after every input has run.
        """
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        run_managers, matches = self._decide(inputs, configs, batch=True)
        plan = _Plan(self, matches)

        def run_group(branch: str, rows: list[int]) -> None:
            runnable = plan.runnables[branch]
            outputs: Sequence[Output | Exception]
            try:
                outputs = runnable.batch(
                    [inputs[i] for i in rows],
                    [
                        self._child_config(configs[i], run_managers[i], branch, matches[i])
                        for i in rows
                    ],
                    return_exceptions=True,
                    **kwargs,
                )
            except Exception as exc:
                outputs = [exc for _ in rows]
            plan.record(rows, outputs)

        def run_groups() -> list[Output | Exception]:
            groups = list(plan.groups.items())
            if len(groups) > 1 and _groups_in_parallel(configs):
                with get_executor_for_config(configs[0]) as executor:
                    list(executor.map(lambda group: run_group(*group), groups))
            else:
                for branch, rows in groups:
                    run_group(branch, rows)
            return plan.results

        return _raise_first(_end_runs(run_managers, run_groups), return_exceptions)

    @overload
    def batch_as_completed(
        self,
        inputs: Sequence[Input],
        config: RunnableConfig | Sequence[RunnableConfig] | None = None,
        *,
        return_exceptions: Literal[False] = False,
        **kwargs: Any,
    ) -> Iterator[tuple[int, Output]]: ...

    @overload
    def batch_as_completed(
        self,
        inputs: Sequence[Input],
        config: RunnableConfig | Sequence[RunnableConfig] | None = None,
        *,
        return_exceptions: Literal[True],
        **kwargs: Any,
    ) -> Iterator[tuple[int, Output | Exception]]: ...

    @override
    def batch_as_completed(
        self,
        inputs: Sequence[Input],
        config: RunnableConfig | Sequence[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> Iterator[tuple[int, Output | Exception]]:
        """Embed every input in one call, then yield ``(index, output)`` as branches finish.

        The chosen Runnables run in parallel (``max_concurrency`` in the config bounds
        them), each as in :meth:`invoke`.
        """
        if not inputs:
            return
        configs = get_config_list(config, len(inputs))
        run_managers, matches = self._decide(inputs, configs, batch=True)

        def run(i: int) -> tuple[int, Output | Exception]:
            try:
                return i, self._invoke_matched(
                    inputs[i], configs[i], run_managers[i], matches[i], **kwargs
                )
            except Exception as exc:
                if return_exceptions:
                    return i, exc
                raise

        with get_executor_for_config(configs[0]) as executor:
            rows: dict[Future[tuple[int, Output | Exception]], int] = {
                executor.submit(run, i): i for i in range(len(inputs))
            }
            pending = set(rows)
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield future.result()
            finally:
                for future in pending:
                    # Each input's run opened before the decision; one that will
                    # never run (the caller stopped early, or an error was raised)
                    # is ended here rather than left open in the trace.
                    if future.cancel():
                        run_managers[rows[future]].on_chain_error(CancelledError())

    @override
    async def abatch(
        self,
        inputs: list[Input],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> list[Output]:
        """Like :meth:`batch`; every input is submitted to the batching worker at once."""
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        run_managers, matches = await self._adecide(inputs, configs, batch=True)
        plan = _Plan(self, matches)

        async def run_group(branch: str, rows: list[int]) -> None:
            runnable = plan.runnables[branch]
            outputs: Sequence[Output | Exception]
            try:
                outputs = await runnable.abatch(
                    [inputs[i] for i in rows],
                    [
                        self._child_config(configs[i], run_managers[i], branch, matches[i])
                        for i in rows
                    ],
                    return_exceptions=True,
                    **kwargs,
                )
            except Exception as exc:
                outputs = [exc for _ in rows]
            plan.record(rows, outputs)

        async def run_groups() -> list[Output | Exception]:
            groups = list(plan.groups.items())
            if len(groups) > 1 and _groups_in_parallel(configs):
                await asyncio.gather(*(run_group(branch, rows) for branch, rows in groups))
            else:
                for branch, rows in groups:
                    await run_group(branch, rows)
            return plan.results

        outcomes = await _aend_runs(run_managers, run_groups())
        return _raise_first(outcomes, return_exceptions)


#: The router that :class:`_ConfiguredRouter` is copying for one call, while it does.
_REBUILT_FROM: ContextVar[SynaptorouteRouter[Any, Any] | None] = ContextVar(
    "synaptoroute_rebuilt_from", default=None
)


def _check_branches(router: AdaptiveRouter, runnables: Mapping[str, Any]) -> None:
    """Raise unless ``runnables`` has exactly one entry per route of ``router``."""
    unknown = [key for key in runnables if key not in router]
    if unknown:
        raise RouteNotFoundError(unknown[0])
    missing = [key for key in router.route_names if key not in runnables]
    if missing:
        msg = (
            f"routes without a Runnable: {missing}; give each route of the router an "
            "entry in runnables= (inputs that match no route go to default=)"
        )
        raise InvalidInputError(msg)


class _ConfiguredRouter(RunnableConfigurableFields[Input, Output]):
    """``configurable_fields`` of a :class:`SynaptorouteRouter`.

    LangChain builds a new router per configured call through ``__init__``; this
    marks that build so that it skips the branch checks its original passed when
    it was built (see ``SynaptorouteRouter.__init__``).
    """

    @classmethod
    @override
    def is_lc_serializable(cls) -> bool:
        # The router it wraps is not serializable either.
        return False

    @override
    def _prepare(
        self, config: RunnableConfig | None = None
    ) -> tuple[Runnable[Input, Output], RunnableConfig]:
        token = _REBUILT_FROM.set(cast("SynaptorouteRouter[Any, Any]", self.default))
        try:
            return super()._prepare(config)
        finally:
            _REBUILT_FROM.reset(token)


# -- helpers shared by the sync and async paths -------------------------------------------
def _open_and_decide(
    owner: Runnable[Any, Any],
    inputs: Sequence[Any],
    configs: Sequence[RunnableConfig],
    decide: Callable[[], Sequence[D | Exception]],
    describe: Callable[[D], dict[str, Any]],
) -> tuple[list[CallbackManagerForChainRun], list[D | Exception]]:
    """Open ``owner``'s run for each input, then ``decide`` inside it, as a child run.

    As ``RunnableBranch`` evaluates its conditions: the decision is a child chain run
    of the router's run, named :data:`ROUTE_RUN_NAME`, whose input is the router's
    input and whose outputs are ``describe(decision)`` (or whose error is the one
    that prevented it). So the routing time (the embedding; on the async path the
    wait in the batching worker's queue) falls inside the router's run. One
    ``decide`` call serves every input (one encoder call for a batch), and each
    input's child run spans it. The decision cannot go into the router's run's
    metadata: LangChain fixes a run's metadata when the run starts.
    """
    runs: dict[int, CallbackManagerForChainRun] = {}
    routing: dict[int, CallbackManagerForChainRun] = {}  # route runs started, not ended
    # Once a router run has started, anything raised until the decision is returned
    # (an interrupt in a callback handler included) ends it, as RunnableBranch ends
    # its run when a condition fails; the caller takes over from there. A run is taken
    # out of ``routing`` as its end starts: ended once, even when a handler interrupts.
    try:
        for i, (c, value) in enumerate(zip(configs, inputs, strict=True)):
            runs[i] = get_callback_manager_for_config(c).on_chain_start(
                None,
                value,
                name=c.get("run_name") or owner.get_name(),
                run_id=c.pop("run_id", None),
            )
        for i, value in enumerate(inputs):
            routing[i] = runs[i].get_child().on_chain_start(None, value, name=ROUTE_RUN_NAME)
        decisions = list(decide())  # returns the errors it expects; raises an interrupt
        for i, decision in enumerate(decisions):
            _end(routing.pop(i), _described(decision, describe))
    except BaseException as exc:
        for manager in [*routing.values(), *runs.values()]:
            manager.on_chain_error(exc)
        raise
    return [runs[i] for i in range(len(inputs))], decisions


async def _aopen_and_decide(
    owner: Runnable[Any, Any],
    inputs: Sequence[Any],
    configs: Sequence[RunnableConfig],
    decide: Callable[[], Awaitable[Sequence[D | Exception]]],
    describe: Callable[[D], dict[str, Any]],
) -> tuple[list[AsyncCallbackManagerForChainRun], list[D | Exception]]:
    """Like :func:`_open_and_decide`, awaiting the callbacks and the decision.

    A cancellation while a callback handler is awaited (a slow or non-inline one, in
    any run's start or end) ends the runs already started. One landing inside
    LangChain's own ``on_chain_start`` leaves that one run open, as for any LangChain
    Runnable: its run manager is never returned, so nothing can end it.
    """
    runs: dict[int, AsyncCallbackManagerForChainRun] = {}
    routing: dict[int, AsyncCallbackManagerForChainRun] = {}  # started and not yet ended

    # Each run is recorded as soon as its start returns, and taken out as its end
    # starts: a cancellation of the others (a gather) still finds every run started
    # and not yet ended, and a run whose end a handler interrupted is ended once.
    # Each start's coroutine is made when its task runs (one made before and dropped
    # by a cancellation warns "never awaited").
    async def start_run(i: int, config: RunnableConfig, value: Any) -> None:
        runs[i] = await get_async_callback_manager_for_config(config).on_chain_start(
            None,
            value,
            name=config.get("run_name") or owner.get_name(),
            run_id=config.pop("run_id", None),
        )

    async def start_route(i: int, value: Any) -> None:
        routing[i] = await runs[i].get_child().on_chain_start(None, value, name=ROUTE_RUN_NAME)

    async def end_route(i: int, decision: D | Exception) -> None:
        await _aend(routing.pop(i), _described(decision, describe))

    try:
        await _aeach(
            [start_run(i, c, v) for i, (c, v) in enumerate(zip(configs, inputs, strict=True))]
        )
        await _aeach([start_route(i, value) for i, value in enumerate(inputs)])
        decisions = list(await decide())  # returns the errors it expects
        await _aeach([end_route(i, decision) for i, decision in enumerate(decisions)])
    except BaseException as exc:  # a cancellation or timeout of the awaiting task
        for managers in (routing, runs):
            await _aeach([manager.on_chain_error(exc) for manager in managers.values()])
        raise
    return [runs[i] for i in range(len(inputs))], decisions


def _described(decision: D | Exception, describe: Callable[[D], dict[str, Any]]) -> Any:
    """What a route run ends with: the decision described, or the error in its place."""
    return decision if isinstance(decision, Exception) else describe(decision)


def _end(run_manager: CallbackManagerForChainRun, outcome: Any) -> None:
    """End a run with ``outcome``: its error if it is one, else its output."""
    if isinstance(outcome, Exception):
        run_manager.on_chain_error(outcome)
    else:
        run_manager.on_chain_end(outcome)


async def _aend(run_manager: AsyncCallbackManagerForChainRun, outcome: Any) -> None:
    """Like :func:`_end`, awaited."""
    if isinstance(outcome, Exception):
        await run_manager.on_chain_error(outcome)
    else:
        await run_manager.on_chain_end(outcome)


async def _aeach(calls: list[Awaitable[Any]]) -> None:
    """Await ``calls``, side by side when there are several (a single call is awaited
    directly: a gather would wrap it in a task and cost it loop turns)."""
    if len(calls) == 1:
        await calls[0]
    elif calls:
        await asyncio.gather(*calls)


def _route_metadata(match: RouteMatch | Exception) -> dict[str, Any]:
    if isinstance(match, Exception):
        return {}
    return {
        "synaptoroute_route": match.name,
        "synaptoroute_score": match.score,
        "synaptoroute_candidate": match.candidate,
        "synaptoroute_reason": match.reason,
    }


def _no_match_message(match: RouteMatch) -> str:
    if match.candidate is None:
        why = f"({match.reason})"
    else:
        why = (
            f"best candidate {match.candidate!r} scored {match.score:.3f} "
            f"(threshold {match.threshold}, {match.reason})"
        )
    return f"no route matched the input: {why}; pass default= to handle such inputs"


def _groups_in_parallel(configs: Sequence[RunnableConfig]) -> bool:
    # With a concurrency limit, groups run one after another so the limit holds
    # overall (each group's own batch enforces it within the group).
    return all(c.get("max_concurrency") is None for c in configs)


class _Plan(Generic[Input, Output]):
    """Which branch each input of a batch takes, and the results as they come in."""

    def __init__(
        self, owner: SynaptorouteRouter[Input, Output], matches: list[RouteMatch | Exception]
    ) -> None:
        self.results: list[Output | Exception] = []
        self.groups: dict[str, list[int]] = {}
        self.runnables: dict[str, Runnable[Input, Output]] = {}
        for i, match in enumerate(matches):
            try:
                branch, runnable = owner._select(match)
            except Exception as exc:
                self.results.append(exc)
                continue
            self.results.append(cast("Output", None))
            self.groups.setdefault(branch, []).append(i)
            self.runnables[branch] = runnable

    def record(self, rows: list[int], outputs: Sequence[Output | Exception]) -> None:
        """Store a group's outputs (or errors) at their inputs' positions."""
        for i, output in zip(rows, outputs, strict=True):
            self.results[i] = output


class _Accumulator(Generic[T]):
    """Adds streamed chunks up into the run's final output, as ``RunnableBranch`` does."""

    def __init__(self) -> None:
        self.value: T | None = None
        self._addable = True

    def add(self, chunk: T) -> None:
        """Fold in one chunk; chunks that do not support ``+`` leave no final output."""
        if not self._addable:
            return
        if self.value is None:
            self.value = chunk
            return
        try:
            self.value = self.value + chunk  # type: ignore[operator]
        except TypeError:
            self.value = None
            self._addable = False


def _branch_config(
    config: RunnableConfig,
    run_manager: CallbackManagerForChainRun | AsyncCallbackManagerForChainRun,
    branch: str,
    metadata: dict[str, Any],
) -> RunnableConfig:
    """The config a chosen branch runs with: a child run named after the route.

    The route's metadata is inheritable, so it reaches every run below the branch
    (a chat model inside a chain too); the ``route:<name>`` tag marks the branch itself.
    """
    child = run_manager.get_child(tag=f"route:{branch}")
    child.add_metadata(metadata, inherit=True)
    patched = patch_config(config, callbacks=child, run_name=branch)
    # Also in the config's metadata, which every run below inherits whatever the
    # langchain-core version does with a child manager's inheritable metadata.
    patched["metadata"] = {**patched.get("metadata", {}), **metadata}
    return patched


def _route_graph(
    owner: Runnable[Any, Any],
    runnables: Mapping[str, Runnable[Any, Any]],
    default: Runnable[Any, Any] | None,
    config: RunnableConfig | None,
) -> Graph:
    """``owner``'s node with one conditional edge per route (and ``default``) to its branch."""
    graph = Graph()
    input_node = graph.add_node(owner.get_input_schema(config))
    router_node = graph.add_node(owner, metadata=config.get("metadata") if config else None)
    output_node = graph.add_node(owner.get_output_schema(config))
    graph.add_edge(input_node, router_node)
    branches = {**runnables, **({DEFAULT_BRANCH: default} if default is not None else {})}
    for branch, runnable in branches.items():
        sub = runnable.get_graph(config)
        sub.trim_first_node()
        sub.trim_last_node()
        first, last = graph.extend(sub, prefix=branch)
        if first is None or last is None:
            graph.add_edge(router_node, output_node, data=branch, conditional=True)
            continue
        graph.add_edge(router_node, first, data=branch, conditional=True)
        graph.add_edge(last, output_node)
    return graph


def _mirrored_router(
    routes: Sequence[Route],
    encoder: EncoderProtocol | None,
    prune: bool,
    router_kwargs: Mapping[str, Any],
) -> AdaptiveRouter:
    """A router holding ``routes``; with ``prune``, holding nothing else (stored routes included)."""
    router = AdaptiveRouter(encoder=encoder, **router_kwargs)
    if prune:
        wanted = {route.name for route in routes}
        for stale in [name for name in router.route_names if name not in wanted]:
            router.delete_route(stale)
    router.add_routes(routes, replace=True)
    return router


class SynaptorouteMultiRouter(RunnableSerializable[Input, dict[str, Output]]):
    """Runs every branch its input matches, in parallel, and returns ``{route: output}``.

    Built from a :class:`SynaptorouteRouter` (``router.as_multi_router(top_k=3)``): the
    input is compared with the routes once; each route among the ``top_k`` best whose
    score reaches ``threshold`` (without one, the route's own threshold) runs on the
    unchanged input. The dict holds the routes best first. An input that matches no
    route runs ``default`` (key ``"default"``), or raises ``NoRouteMatchedError``.

    The ranking runs first, as a child run named ``synaptoroute.route`` of the router's
    run whose outputs list ``synaptoroute_routes`` and ``synaptoroute_scores``. Each
    branch runs as a child of the router's run, named after its route and tagged
    ``route:<name>``; its route and score are inherited by every run below it.
    ``top_k`` and ``threshold`` are fields, so ``configurable_fields`` can set them per
    call. ``invoke`` runs the branches in threads, ``ainvoke`` as concurrent tasks.

    Example:
        ```python
        multi = router.as_multi_router(top_k=2, threshold=0.4)
        multi.invoke("refund me and fix the login")
        # {'tech': 'tech: ...', 'billing': 'billing: ...'} (best first)
        ```
    """

    routing: SynaptorouteRouter[Input, Output]
    """The routes, their branches, the default and how inputs are read."""
    top_k: int = Field(default=3, ge=1)
    """The most branches run per input."""
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Minimum score of a branch (``None``: each route's own threshold)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @override
    def get_input_schema(self, config: RunnableConfig | None = None) -> TypeBaseModel:
        return self.routing.get_input_schema(config)

    @property
    @override
    def config_specs(self) -> list[ConfigurableFieldSpec]:
        return self.routing.config_specs

    @override
    def get_graph(self, config: RunnableConfig | None = None) -> Graph:
        """The router node with one conditional edge to each branch, named after its route."""
        return _route_graph(self, self.routing.runnables, self.routing.default, config)

    def _chosen(
        self, ranked: list[RouteMatch] | Exception
    ) -> list[tuple[str, Runnable[Input, Output], RouteMatch]]:
        """The branches to run, best first: the passing routes, else the default."""
        if isinstance(ranked, Exception):
            raise ranked
        matches = passing(ranked, self.threshold)
        if matches:
            return [(*self.routing._select(m), m) for m in matches]
        best = ranked[0] if ranked else empty_match()
        if self.routing.default is None:
            raise NoRouteMatchedError(_no_match_message(best))
        return [(DEFAULT_BRANCH, self.routing.default, best)]

    def _summary(self, ranked: list[RouteMatch]) -> dict[str, Any]:
        """The decision, as the ``synaptoroute.route`` run's outputs."""
        matches = passing(ranked, self.threshold)
        return {
            "synaptoroute_routes": [m.name for m in matches],
            "synaptoroute_scores": [m.score for m in matches],
        }

    def _decide(
        self, inputs: Sequence[Input], configs: list[RunnableConfig], *, batch: bool = False
    ) -> tuple[list[CallbackManagerForChainRun], list[list[RouteMatch] | Exception]]:
        """Open each input's run and rank the inputs inside it (a batch: one encoder call)."""
        routing = self.routing

        def decide() -> list[list[RouteMatch] | Exception]:
            if batch:
                return rank_batch(routing.router, inputs, routing.text_of, self.top_k)
            (value,) = inputs
            return [rank_one(routing.router, value, routing.text_of, self.top_k)]

        return _open_and_decide(self, inputs, configs, decide, self._summary)

    async def _adecide(
        self, inputs: Sequence[Input], configs: list[RunnableConfig], *, batch: bool = False
    ) -> tuple[list[AsyncCallbackManagerForChainRun], list[list[RouteMatch] | Exception]]:
        """Like :meth:`_decide`, through the router's batching worker."""
        routing = self.routing
        router, read, k, timeout = routing.router, routing.text_of, self.top_k, routing.timeout

        async def decide() -> list[list[RouteMatch] | Exception]:
            if batch:
                return await arank_batch(router, inputs, read, k, timeout)
            (value,) = inputs
            return [await arank_one(router, value, read, k, timeout)]

        return await _aopen_and_decide(self, inputs, configs, decide, self._summary)

    @override
    def invoke(
        self, input: Input, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Output]:
        """Run every branch ``input`` matches, in parallel threads.

        Raises:
            NoRouteMatchedError: nothing matched and there is no ``default``.
        """
        config = ensure_config(config)
        (run_manager,), (ranked,) = self._decide([input], [config])
        try:
            result = self._run_ranked(input, config, run_manager, ranked, **kwargs)
        except BaseException as exc:
            run_manager.on_chain_error(exc)
            raise
        run_manager.on_chain_end(result)
        return result

    def _run_ranked(
        self,
        input: Input,
        config: RunnableConfig,
        run_manager: CallbackManagerForChainRun,
        ranked: list[RouteMatch] | Exception,
        **kwargs: Any,
    ) -> dict[str, Output]:
        """Run the branches ``ranked`` chose for ``input``; the caller ends the run."""
        chosen = self._chosen(ranked)

        def run(item: tuple[str, Runnable[Input, Output], RouteMatch]) -> Output:
            branch, runnable, match = item
            child = _branch_config(config, run_manager, branch, _route_metadata(match))
            return runnable.invoke(input, child, **kwargs)

        if len(chosen) == 1:
            outputs = [run(chosen[0])]
        else:
            with get_executor_for_config(config) as executor:
                outputs = list(executor.map(run, chosen))
        return {branch: out for (branch, _, _), out in zip(chosen, outputs, strict=True)}

    @override
    async def ainvoke(
        self, input: Input, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Output]:
        """Like :meth:`invoke`; the branches run as concurrent tasks."""
        config = ensure_config(config)
        (run_manager,), (ranked,) = await self._adecide([input], [config])
        try:
            result = await self._arun_ranked(input, config, run_manager, ranked, **kwargs)
        except BaseException as exc:
            await run_manager.on_chain_error(exc)
            raise
        await run_manager.on_chain_end(result)
        return result

    async def _arun_ranked(
        self,
        input: Input,
        config: RunnableConfig,
        run_manager: AsyncCallbackManagerForChainRun,
        ranked: list[RouteMatch] | Exception,
        **kwargs: Any,
    ) -> dict[str, Output]:
        """Like :meth:`_run_ranked`, awaiting the branches."""
        chosen = self._chosen(ranked)
        outputs = await asyncio.gather(
            *(
                runnable.ainvoke(
                    input,
                    _branch_config(config, run_manager, branch, _route_metadata(match)),
                    **kwargs,
                )
                for branch, runnable, match in chosen
            )
        )
        return {branch: out for (branch, _, _), out in zip(chosen, outputs, strict=True)}

    @override
    def batch(
        self,
        inputs: list[Input],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> list[dict[str, Output]]:
        """Rank every input with one encoder call, then run each as :meth:`invoke` does.

        Inputs run in LangChain's executor (bounded by ``max_concurrency``); results in
        input order. Every input's run is open from the ranking on and ends, as in
        ``SynaptorouteRouter.batch``, once every input has run (an interrupt ends
        every run with it). Without ``return_exceptions`` the first error in input
        order is then raised. The sync and async twins differ only in how they wait:
        threads, or tasks.
        """
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        run_managers, ranked = self._decide(inputs, configs, batch=True)

        def run(i: int) -> dict[str, Output] | Exception:
            try:
                return self._run_ranked(inputs[i], configs[i], run_managers[i], ranked[i], **kwargs)
            except Exception as exc:
                return exc

        def run_all() -> list[dict[str, Output] | Exception]:
            with get_executor_for_config(configs[0]) as executor:
                return list(executor.map(run, range(len(inputs))))

        return _raise_first(_end_runs(run_managers, run_all), return_exceptions)

    @override
    async def abatch(
        self,
        inputs: list[Input],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> list[dict[str, Output]]:
        """Like :meth:`batch`; every input is submitted to the batching worker at once.

        A cancellation (``asyncio.wait_for``, a task's ``cancel``) ends every input's
        run, those still waiting for a ``max_concurrency`` slot included.
        """
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        run_managers, ranked = await self._adecide(inputs, configs, batch=True)
        limit = configs[0].get("max_concurrency")
        # The slot is taken inside each task (not around it, as gather_with_concurrency
        # does): a task cancelled while it waits then never leaves a coroutine unawaited.
        slots: AbstractAsyncContextManager[Any] = (
            nullcontext() if limit is None else asyncio.Semaphore(limit)
        )

        async def run(i: int) -> dict[str, Output] | Exception:
            try:
                async with slots:
                    return await self._arun_ranked(
                        inputs[i], configs[i], run_managers[i], ranked[i], **kwargs
                    )
            except Exception as exc:
                return exc

        outcomes = await _aend_runs(
            run_managers, asyncio.gather(*(run(i) for i in range(len(inputs))))
        )
        return _raise_first(outcomes, return_exceptions)


def _end_runs(
    run_managers: Sequence[CallbackManagerForChainRun],
    work: Callable[[], Sequence[T | Exception]],
) -> list[T | Exception]:
    """``work()``'s outcome for each input of a batch, each input's run ended with its own.

    ``work`` returns each input's output or error; anything it raises (an interrupt),
    or a handler raises while the runs are ended, ends every run not yet ended with
    it and is raised, so no run is left open whatever stopped the batch. Both
    routers' ``batch`` and ``abatch`` end their runs here.
    """
    pending = dict(enumerate(run_managers))  # not yet ended
    try:
        outcomes = list(work())
        for i, outcome in enumerate(outcomes):
            _end(pending.pop(i), outcome)  # taken out first: ended once, even if interrupted
    except BaseException as exc:
        for run_manager in pending.values():
            run_manager.on_chain_error(exc)
        raise
    return outcomes


async def _aend_runs(
    run_managers: Sequence[AsyncCallbackManagerForChainRun],
    work: Awaitable[Sequence[T | Exception]],
) -> list[T | Exception]:
    """Like :func:`_end_runs`, awaiting ``work``: a cancellation ends every run with it."""
    pending = dict(enumerate(run_managers))  # not yet ended

    async def end(i: int, outcome: T | Exception) -> None:
        await _aend(pending.pop(i), outcome)  # taken out first: ended once, even if interrupted

    try:
        outcomes = list(await work)
        await _aeach([end(i, outcome) for i, outcome in enumerate(outcomes)])
    except BaseException as exc:
        await _aeach([run_manager.on_chain_error(exc) for run_manager in pending.values()])
        raise
    return outcomes


def _raise_first(outputs: Sequence[T | Exception], return_exceptions: bool) -> list[T]:
    """``outputs``, or the first error among them when errors are not returned."""
    if not return_exceptions:
        for output in outputs:
            if isinstance(output, Exception):
                raise output
    return cast("list[T]", list(outputs))
