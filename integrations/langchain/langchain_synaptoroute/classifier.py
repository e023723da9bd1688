"""Runnables that classify their input and return :class:`~synaptoroute.RouteMatch` values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from langchain_core.runnables import RunnableConfig, RunnableSerializable
from pydantic import ConfigDict, Field
from typing_extensions import override

from synaptoroute import AdaptiveRouter, RouteMatch

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

if TYPE_CHECKING:
    from .langgraph import SynaptorouteEdge

__all__ = ["SynaptorouteClassifier", "SynaptorouteMultiClassifier"]

R = TypeVar("R")


class _Classifying(RunnableSerializable[Any, R], Generic[R]):
    """What both classifiers share: reading inputs, and the Runnable entry points.

    A subclass says how to answer one input and many inputs, sync and async; each
    answer is a result or the error that prevented it (raised here, or returned by
    ``batch(..., return_exceptions=True)``).
    """

    router: AdaptiveRouter
    """The router that decides."""
    input_key: str = "input"
    """Key of a dict input that holds the text (or the messages) to route."""
    text_extractor: TextExtractor | None = None
    """A function returning the text to route for an input; overrides ``input_key``."""
    timeout: float | None = None
    """Seconds an async call may wait for the batching worker."""
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Minimum score for this Runnable's calls (``None``: the router's own thresholds).

    Configurable per call with ``configurable_fields``; the shared router is not changed.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def text_of(self, value: Any) -> str:
        """The text this classifier routes for ``value``."""
        return extract_text(value, self.input_key, self.text_extractor)

    def _one(self, value: Any) -> R | Exception:
        raise NotImplementedError

    async def _aone(self, value: Any) -> R | Exception:
        raise NotImplementedError

    def _many(self, values: list[Any]) -> list[R | Exception]:
        raise NotImplementedError

    async def _amany(self, values: list[Any]) -> list[R | Exception]:
        raise NotImplementedError

    def _answer(self, value: Any) -> R:
        return _raise_or_return(self._one(value))

    async def _aanswer(self, value: Any) -> R:
        return _raise_or_return(await self._aone(value))

    @override
    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> R:
        return self._call_with_config(self._answer, input, config)

    @override
    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> R:
        return await self._acall_with_config(self._aanswer, input, config)

    @override
    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> list[R]:
        """Classify every input with one encoder call; results in input order."""
        if not inputs:
            return []
        return self._batch_with_config(
            self._many, inputs, config, return_exceptions=return_exceptions
        )

    @override
    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> list[R]:
        """Classify every input in one submission to the batching worker."""
        if not inputs:
            return []
        return await self._abatch_with_config(
            self._amany, inputs, config, return_exceptions=return_exceptions
        )


class SynaptorouteClassifier(_Classifying[RouteMatch]):
    """A Runnable that routes its input and returns the ``RouteMatch``; it calls nothing.

    Use it where the decision itself is wanted: to log it, to branch on
    ``match.name`` in your own code, or to compute the ``key`` of a
    ``RouterRunnable``. Inputs are read like :class:`SynaptorouteRouter` reads them
    (a str, a dict at ``input_key``, or chat messages). ``batch`` embeds every input
    in one call; ``ainvoke``/``abatch`` go through the router's batching worker.
    ``threshold`` (a field, so ``configurable_fields`` can set it per call) replaces
    the router's thresholds without changing the router.

    Example:
        ```python
        from synaptoroute import AdaptiveRouter, Route
        from langchain_synaptoroute import SynaptorouteClassifier

        router = AdaptiveRouter()
        router.add_route(Route(name="billing", utterances=["I need a refund"]))
        classifier = SynaptorouteClassifier(router=router)
        classifier.invoke("How do I get my money back?").name  # 'billing'
        classifier.invoke("What is the boiling point of mercury?").name  # None
        ```
    """

    @property
    @override
    def OutputType(self) -> type[RouteMatch]:
        """``RouteMatch`` (the generic base would give LangChain an unbound type)."""
        return RouteMatch

    @override
    def _one(self, value: Any) -> RouteMatch | Exception:
        return classify_one(self.router, value, self.text_of, self.threshold)

    @override
    async def _aone(self, value: Any) -> RouteMatch | Exception:
        return await aclassify_one(self.router, value, self.text_of, self.timeout, self.threshold)

    @override
    def _many(self, values: list[Any]) -> list[RouteMatch | Exception]:
        return classify_batch(self.router, values, self.text_of, self.threshold)

    @override
    async def _amany(self, values: list[Any]) -> list[RouteMatch | Exception]:
        return await aclassify_batch(
            self.router, values, self.text_of, self.timeout, self.threshold
        )

    def as_path(
        self, *, default: str = "__end__", routes: Mapping[str, str] | None = None
    ) -> SynaptorouteEdge:
        """This classifier as a LangGraph path for ``add_conditional_edges``.

        LangGraph looks a path's result up in the path map, and a ``RouteMatch`` is no
        node name (``KeyError: RouteMatch(...)``); the path returns the node instead,
        reading the state as this classifier reads its input. Needs the ``langgraph``
        extra; see :class:`~langchain_synaptoroute.langgraph.SynaptorouteEdge`.

        Args:
            default: the node for states that match no route (default ``END``).
            routes: route name -> node name, for routes whose node is named otherwise.

        Returns:
            The path; ``get_graph()`` draws one edge per route and the default.

        Raises:
            InvalidInputError: this classifier has a ``threshold``, which the path
                cannot apply (it follows the router's thresholds). A state without
                the classifier's ``input_key`` raises it when the path runs; the
                message says to build the classifier with ``input_key=`` or
                ``text_extractor=`` (``as_path`` takes neither).
        """
        from .langgraph import _classifier_path

        return _classifier_path(self, default=default, routes=routes)


class SynaptorouteMultiClassifier(_Classifying[list[RouteMatch]]):
    """A Runnable that returns every route its input matches, best first (at most ``top_k``).

    The multi-route counterpart of :class:`SynaptorouteClassifier`: each returned
    ``RouteMatch`` names a route whose score reaches ``threshold`` (or, without one,
    the route's own threshold in the router); an input that matches nothing gives
    ``[]``. ``top_k`` and ``threshold`` are fields, so ``configurable_fields`` can set
    them per call.

    Example:
        ```python
        classifier = SynaptorouteMultiClassifier(router=router, top_k=2, threshold=0.4)
        [m.name for m in classifier.invoke("refund me and fix the login")]
        # ['tech', 'billing'] (best first)
        ```
    """

    top_k: int = Field(default=3, ge=1)
    """The most routes returned per input."""

    @property
    @override
    def OutputType(self) -> Any:
        """``list[RouteMatch]`` (the generic base would give LangChain an unbound type)."""
        return list[RouteMatch]

    @override
    def _one(self, value: Any) -> list[RouteMatch] | Exception:
        return self._passing(rank_one(self.router, value, self.text_of, self.top_k))

    @override
    async def _aone(self, value: Any) -> list[RouteMatch] | Exception:
        ranked = await arank_one(self.router, value, self.text_of, self.top_k, self.timeout)
        return self._passing(ranked)

    @override
    def _many(self, values: list[Any]) -> list[list[RouteMatch] | Exception]:
        ranked = rank_batch(self.router, values, self.text_of, self.top_k)
        return [self._passing(r) for r in ranked]

    @override
    async def _amany(self, values: list[Any]) -> list[list[RouteMatch] | Exception]:
        ranked = await arank_batch(self.router, values, self.text_of, self.top_k, self.timeout)
        return [self._passing(r) for r in ranked]

    def _passing(self, ranked: list[RouteMatch] | Exception) -> list[RouteMatch] | Exception:
        return ranked if isinstance(ranked, Exception) else passing(ranked, self.threshold)


def _raise_or_return(answer: R | Exception) -> R:
    if isinstance(answer, Exception):
        raise answer
    return answer
