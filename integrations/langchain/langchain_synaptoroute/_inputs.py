"""Reading the text to route from a Runnable's input, and classifying inputs in bulk.

Kept apart from the Runnables so that the classifier and the router read inputs the
same way, and so that sync and async classification share everything but the wait.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.messages import BaseMessage, convert_to_messages
from langchain_core.prompt_values import PromptValue

from synaptoroute import AdaptiveRouter, InvalidInputError, RouteMatch

__all__ = [
    "TextExtractor",
    "aclassify_batch",
    "aclassify_one",
    "classify_batch",
    "classify_one",
    "extract_text",
]

#: A function that returns the text to route for one input.
TextExtractor = Callable[[Any], str]


def extract_text(
    value: Any, input_key: str = "input", extractor: TextExtractor | None = None
) -> str:
    """The text to route for one Runnable input.

    ``extractor`` wins when given. Otherwise a ``str`` is routed as is; a dict is read
    at ``input_key`` (and its value read by these same rules); a message, a prompt
    value or a list of messages (or message-like tuples and dicts) is routed on the
    text of its last human message.

    Raises:
        InvalidInputError: a dict lacks ``input_key``, or messages hold no human message.
        TypeError: the input (or the extractor's result) is of an unsupported type.
    """
    if extractor is not None:
        text = extractor(value)
        if not isinstance(text, str):
            msg = f"text_extractor must return a str, got {type(text).__name__}"
            raise TypeError(msg)
        return text
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        if input_key not in value:
            keys = ", ".join(repr(k) for k in value)
            msg = (
                f"the input dict has no key {input_key!r} (keys: {keys}); "
                "set input_key= or text_extractor= on the router"
            )
            raise InvalidInputError(msg)
        return extract_text(value[input_key], input_key)
    if isinstance(value, PromptValue):
        return _last_human_text(value.to_messages())
    if isinstance(value, BaseMessage):
        return value.text
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        try:
            messages = convert_to_messages(value)
        except (ValueError, TypeError, NotImplementedError) as exc:
            msg = f"cannot read a list input as chat messages: {exc}"
            raise TypeError(msg) from exc
        return _last_human_text(messages)
    msg = (
        f"cannot route an input of type {type(value).__name__}: pass a str, a dict, "
        "chat messages, or set text_extractor= on the router"
    )
    raise TypeError(msg)


def _last_human_text(messages: Sequence[BaseMessage]) -> str:
    for message in reversed(messages):
        if message.type == "human":
            return message.text
    msg = "the messages hold no human message to route on"
    raise InvalidInputError(msg)


def classify_one(
    router: AdaptiveRouter, value: Any, read: Callable[[Any], str]
) -> RouteMatch | Exception:
    """One input's match, or the error that prevented it (for the caller to raise)."""
    try:
        return router.query(read(value))
    except Exception as exc:
        return exc


async def aclassify_one(
    router: AdaptiveRouter, value: Any, read: Callable[[Any], str], timeout: float | None = None
) -> RouteMatch | Exception:
    """Like :func:`classify_one`, through the router's batching worker."""
    try:
        return await router.aquery(read(value), timeout=timeout)
    except Exception as exc:
        return exc


def _read_all(
    inputs: Sequence[Any], read: Callable[[Any], str]
) -> tuple[list[str], list[Exception | None]]:
    """The readable texts, and per input the error that kept it out (or ``None``)."""
    texts: list[str] = []
    errors: list[Exception | None] = []
    for value in inputs:
        try:
            texts.append(read(value))
        except Exception as exc:
            errors.append(exc)
        else:
            errors.append(None)
    return texts, errors


def _merge(
    errors: list[Exception | None], matches: Sequence[RouteMatch] | Exception
) -> list[RouteMatch | Exception]:
    served = iter(() if isinstance(matches, Exception) else matches)
    out: list[RouteMatch | Exception] = []
    for error in errors:
        if error is not None:
            out.append(error)
        elif isinstance(matches, Exception):
            out.append(matches)
        else:
            out.append(next(served))
    return out


def classify_batch(
    router: AdaptiveRouter, inputs: Sequence[Any], read: Callable[[Any], str]
) -> list[RouteMatch | Exception]:
    """Route every input with one ``query_batch`` call; a failure stays with its input.

    An input whose text cannot be read gets its own error; an error of the whole
    query (the encoder failed) is given to every input that reached it.
    """
    texts, errors = _read_all(inputs, read)
    matches: list[RouteMatch] | Exception = []
    if texts:
        try:
            matches = router.query_batch(texts)
        except Exception as exc:
            matches = exc
    return _merge(errors, matches)


async def aclassify_batch(
    router: AdaptiveRouter,
    inputs: Sequence[Any],
    read: Callable[[Any], str],
    timeout: float | None = None,
) -> list[RouteMatch | Exception]:
    """Like :func:`classify_batch`, through the router's batching worker."""
    texts, errors = _read_all(inputs, read)
    matches: list[RouteMatch] | Exception = []
    if texts:
        try:
            matches = await router.aquery_batch(texts, timeout=timeout)
        except Exception as exc:
            matches = exc
    return _merge(errors, matches)
