"""A Runnable that classifies its input and returns the :class:`~synaptoroute.RouteMatch`."""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableConfig, RunnableSerializable
from pydantic import ConfigDict
from typing_extensions import override

from synaptoroute import AdaptiveRouter, RouteMatch

from ._inputs import (
    TextExtractor,
    aclassify_batch,
    aclassify_one,
    classify_batch,
    classify_one,
    extract_text,
)

__all__ = ["SynaptorouteClassifier"]


class SynaptorouteClassifier(RunnableSerializable[Any, RouteMatch]):
    """A Runnable that routes its input and returns the ``RouteMatch``; it calls nothing.

    Use it where the decision itself is wanted: to log it, to branch on
    ``match.name`` in your own code, or to compute the ``key`` of a
    ``RouterRunnable``. Inputs are read like :class:`SynaptorouteRouter` reads them
    (a str, a dict at ``input_key``, or chat messages). ``batch`` embeds every input
    in one call; ``ainvoke``/``abatch`` go through the router's batching worker.

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

    router: AdaptiveRouter
    """The router that decides."""
    input_key: str = "input"
    """Key of a dict input that holds the text (or the messages) to route."""
    text_extractor: TextExtractor | None = None
    """A function returning the text to route for an input; overrides ``input_key``."""
    timeout: float | None = None
    """Seconds an async call may wait for the batching worker."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def text_of(self, value: Any) -> str:
        """The text this classifier routes for ``value``."""
        return extract_text(value, self.input_key, self.text_extractor)

    def _classify(self, value: Any) -> RouteMatch:
        return _raise_or_return(classify_one(self.router, value, self.text_of))

    async def _aclassify(self, value: Any) -> RouteMatch:
        match = await aclassify_one(self.router, value, self.text_of, self.timeout)
        return _raise_or_return(match)

    def _classify_many(self, values: list[Any]) -> list[RouteMatch | Exception]:
        return classify_batch(self.router, values, self.text_of)

    async def _aclassify_many(self, values: list[Any]) -> list[RouteMatch | Exception]:
        return await aclassify_batch(self.router, values, self.text_of, self.timeout)

    @override
    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> RouteMatch:
        return self._call_with_config(self._classify, input, config)

    @override
    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> RouteMatch:
        return await self._acall_with_config(self._aclassify, input, config)

    @override
    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> list[RouteMatch]:
        """Classify every input with one encoder call; results in input order."""
        if not inputs:
            return []
        return self._batch_with_config(
            self._classify_many, inputs, config, return_exceptions=return_exceptions
        )

    @override
    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> list[RouteMatch]:
        """Classify every input in one submission to the batching worker."""
        if not inputs:
            return []
        return await self._abatch_with_config(
            self._aclassify_many, inputs, config, return_exceptions=return_exceptions
        )


def _raise_or_return(match: RouteMatch | Exception) -> RouteMatch:
    if isinstance(match, Exception):
        raise match
    return match
