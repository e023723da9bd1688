"""Reading the text to route from a Runnable's input, and classifying inputs in bulk.

Kept apart from the Runnables so that the classifier and the router read inputs the
same way, and so that sync and async classification share everything but the wait.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from langchain_core.messages import BaseMessage, ChatMessage, convert_to_messages
from langchain_core.prompt_values import PromptValue

from synaptoroute import AdaptiveRouter, InvalidInputError, RouteMatch
from synaptoroute.batching import runs_by_cost
from synaptoroute.decision import VERDICTS, empty_match, threshold_verdicts
from synaptoroute.encoder import check_text

__all__ = [
    "NoHumanMessageError",
    "TextExtractor",
    "aclassify_batch",
    "aclassify_one",
    "arank_batch",
    "arank_one",
    "at_threshold",
    "atop_routes",
    "classify_batch",
    "classify_one",
    "extract_text",
    "last_human_text",
    "passing",
    "rank_batch",
    "rank_one",
    "top_routes",
]

T = TypeVar("T")

#: A function that returns the text to route for one input.
TextExtractor = Callable[[Any], str]


#: What a caller of :func:`extract_text` can do about a dict without its key.
ROUTER_REMEDY = "set input_key= or text_extractor= on the router"


def extract_text(
    value: Any,
    input_key: str = "input",
    extractor: TextExtractor | None = None,
    *,
    remedy: str = ROUTER_REMEDY,
) -> str:
    """The text to route for one Runnable input.

    ``extractor`` wins when given. Otherwise a ``str`` is routed as is; a dict is read
    at ``input_key`` (and its value read by these same rules); one message is routed
    on its text, whatever its type (so ``chat_model | router`` routes on the model's
    answer), and so is one message dict (a message ``role`` or ``type``, and
    ``content``, without ``input_key``); a prompt value or a list of messages (or message-like tuples and dicts)
    is routed on the text of its last human message.

    Raises:
        InvalidInputError: a dict lacks ``input_key`` (the message ends with
            ``remedy``, what the caller's user can do about it), or messages hold no
            human message.
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
        if input_key not in value and "content" in value and _is_message_role(value):
            # One message written as a dict (``{"role": "user", "content": ...}``):
            # routed on its text, whatever its role, as one message object is.
            return message_text(_messages([value])[0])
        if input_key not in value:
            keys = ", ".join(repr(k) for k in value)
            msg = f"the input dict has no key {input_key!r} (keys: {keys}); {remedy}"
            raise InvalidInputError(msg)
        return extract_text(value[input_key], input_key, remedy=remedy)
    if isinstance(value, PromptValue):
        return _last_human_text(value.to_messages())
    if isinstance(value, BaseMessage):
        return message_text(value)
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        # A lone tuple is a sequence, as LangChain reads a chat model's input: each
        # str in it is a human message. One ("ai", "...") tuple goes in a list.
        return _last_human_text(_messages(value))
    msg = (
        f"cannot route an input of type {type(value).__name__}: pass a str, a dict, "
        "chat messages, or set text_extractor= on the router"
    )
    raise TypeError(msg)


#: The roles (``role``) and types (``type``) LangChain reads a message dict by.
_MESSAGE_ROLES = frozenset(
    {"human", "user", "ai", "assistant", "system", "developer", "tool", "function"}
)


def _is_message_role(value: Mapping[Any, Any]) -> bool:
    # By its role only: an application's own dict ({"type": "question", "content":
    # ...}) stays an input dict, refused for lacking input_key as before.
    role = value.get("role", value.get("type"))
    return isinstance(role, str) and role in _MESSAGE_ROLES


def _messages(value: Sequence[Any]) -> list[BaseMessage]:
    try:
        return convert_to_messages(value)
    except (ValueError, TypeError, NotImplementedError) as exc:
        msg = f"cannot read the input as chat messages: {exc}"
        raise TypeError(msg) from exc


def last_human_text(messages: Sequence[BaseMessage]) -> str | None:
    """The text of the last human message the user wrote, or ``None`` when there is none.

    A ``ChatMessage`` whose role is ``"user"`` or ``"human"`` is one (chat models send
    it as the user's). A human message the agent harness added is not: LangChain marks
    those with ``additional_kwargs["lc_source"]`` (``SummarizationMiddleware``'s
    summary of the conversation, ``add_notification_metadata``'s background-task
    updates), and routing on them followed text the user never typed.
    """
    for message in reversed(messages):
        if (
            message.type == "human"
            or (isinstance(message, ChatMessage) and message.role in _HUMAN_ROLES)
        ) and not _from_harness(message):
            return message_text(message)
    return None


def _from_harness(message: BaseMessage) -> bool:
    # Read from additional_kwargs itself: the key predates langchain-core 1.7.2's
    # notification helpers (SummarizationMiddleware sets it), and older cores lack them.
    return isinstance(message.additional_kwargs.get("lc_source"), str)


def message_text(message: BaseMessage) -> str:
    """A message's text: its str content, or its text blocks (and str parts) joined
    with line breaks.

    LangChain's ``message.text`` joins the blocks with nothing between them, so a
    message sent as ``"will it rain"`` and ``"tomorrow in Oslo?"`` read "will it
    raintomorrow in Oslo?". Other blocks (images, audio, files, reasoning, tool calls)
    hold no text to route by and are left out, as ``message.text`` leaves them.
    """
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
    return "\n".join(parts)


#: The roles a ``ChatMessage`` holds a human message by (as ``convert_to_messages``
#: reads a message dict's role).
_HUMAN_ROLES = frozenset({"human", "user"})


class NoHumanMessageError(InvalidInputError):
    """The messages to route on hold no human message."""


def _last_human_text(messages: Sequence[BaseMessage]) -> str:
    text = last_human_text(messages)
    if text is None:
        msg = "the messages hold no human message to route on"
        raise NoHumanMessageError(msg)
    return text


def at_threshold(
    ranked: Sequence[RouteMatch], threshold: float, min_margin: float = 0.0
) -> RouteMatch:
    """One query's decision from its ranked routes, judged by a per-call ``threshold``.

    Pure, so a per-call threshold never touches the shared router: the best route is
    taken when its similarity score reaches ``threshold`` and leads the runner-up by
    ``min_margin`` (the router's; 0 disables it), by the router's own rule. No ranked
    routes (an empty text) is a no-match.
    """
    if not ranked:
        return empty_match()
    best = ranked[0]
    # The router judged ``ambiguous`` only above its own threshold; a per-call one
    # below it must apply the margin afresh, by the core's rule.
    runner = ranked[1].score if len(ranked) > 1 else -math.inf
    reason = VERDICTS[int(threshold_verdicts(best.score, runner, threshold, min_margin))]
    return best.model_copy(
        update={
            "name": best.candidate if reason == "matched" else None,
            "threshold": threshold,
            "reason": reason,
        }
    )


def passing(ranked: Sequence[RouteMatch], threshold: float | None = None) -> list[RouteMatch]:
    """The ranked routes that pass, best first.

    With ``threshold`` a route passes when its score reaches it; without, when it
    reaches its own threshold in the router. Closeness to another route does not
    exclude one here: running several close routes is what a multi-route call is for.
    """
    if threshold is None:
        return [m for m in ranked if m.reason != "below_threshold"]
    # Each reports the threshold it passed, as at_threshold's match does (the router's
    # verdict said "below_threshold" of a route the per-call threshold let through).
    return [
        m.model_copy(update={"name": m.candidate, "threshold": threshold, "reason": "matched"})
        for m in ranked
        if m.score >= threshold
    ]


#: Routes ranked for one decision under a per-call threshold: the best and the
#: runner-up (for the margin and for tracing).
_DECISION_K = 2


def _negative(ranked: Sequence[RouteMatch]) -> RouteMatch | None:
    """The router's ``negative_example`` no-match when ``ranked`` (asked with
    ``respect_negatives=True``) finds the query nearest to a negative example."""
    if ranked and ranked[0].reason == "negative_example":
        return ranked[0]
    return None


def _decision(router: AdaptiveRouter, ranked: Sequence[RouteMatch], threshold: float) -> RouteMatch:
    """One query's decision under a per-call ``threshold``.

    A query nearest to a negative example routes nowhere, as ``router.query``
    answers, whatever the threshold. Otherwise :func:`at_threshold` decides.
    """
    negative = _negative(ranked)
    if negative is not None:
        return negative.model_copy(update={"threshold": threshold})
    return at_threshold(ranked, threshold, router.policy.min_margin)


def _decisions(
    router: AdaptiveRouter, ranked: Sequence[Sequence[RouteMatch]], threshold: float
) -> list[RouteMatch]:
    """:func:`_decision` for each query of a batch."""
    return [_decision(router, r, threshold) for r in ranked]


def _unless_negative(ranked: list[RouteMatch]) -> list[RouteMatch]:
    """``ranked``, or no routes when the query is nearest to a negative example: such
    a text routes nowhere, however many routes a call may run."""
    return [] if _negative(ranked) is not None else ranked


def top_routes(router: AdaptiveRouter, text: str, k: int) -> list[RouteMatch]:
    """The ``k`` best routes of ``text`` (``query_top_k``); none when it is nearest to a
    negative example."""
    return _unless_negative(router.query_top_k(text, k, respect_negatives=True))


async def atop_routes(
    router: AdaptiveRouter, text: str, k: int, timeout: float | None = None
) -> list[RouteMatch]:
    """Like :func:`top_routes`, through the router's batching worker."""
    best = await router.aquery_top_k(text, k, timeout=timeout, respect_negatives=True)
    return _unless_negative(best)


def rank_one(
    router: AdaptiveRouter, value: Any, read: Callable[[Any], str], k: int
) -> list[RouteMatch] | Exception:
    """One input's :func:`top_routes` routes, or the error that prevented them."""
    try:
        return top_routes(router, read(value), k)
    except Exception as exc:
        return exc


async def arank_one(
    router: AdaptiveRouter,
    value: Any,
    read: Callable[[Any], str],
    k: int,
    timeout: float | None = None,
) -> list[RouteMatch] | Exception:
    """Like :func:`rank_one`, through the router's batching worker."""
    try:
        return await atop_routes(router, read(value), k, timeout)
    except Exception as exc:
        return exc


def classify_one(
    router: AdaptiveRouter,
    value: Any,
    read: Callable[[Any], str],
    threshold: float | None = None,
) -> RouteMatch | Exception:
    """One input's match, or the error that prevented it (for the caller to raise).

    ``threshold`` replaces the router's thresholds for this call (see :func:`at_threshold`);
    an input nearest to a negative example still routes nowhere (``negative_example``).
    """
    try:
        text = read(value)
        if threshold is None:
            return router.query(text)
        ranked = router.query_top_k(text, _DECISION_K, respect_negatives=True)
    except Exception as exc:
        return exc
    return _decision(router, ranked, threshold)


async def aclassify_one(
    router: AdaptiveRouter,
    value: Any,
    read: Callable[[Any], str],
    timeout: float | None = None,
    threshold: float | None = None,
) -> RouteMatch | Exception:
    """Like :func:`classify_one`, through the router's batching worker."""
    try:
        text = read(value)
        if threshold is None:
            return await router.aquery(text, timeout=timeout)
        ranked = await router.aquery_top_k(
            text, _DECISION_K, timeout=timeout, respect_negatives=True
        )
    except Exception as exc:
        return exc
    return _decision(router, ranked, threshold)


def _read_all(
    inputs: Sequence[Any], read: Callable[[Any], str]
) -> tuple[list[str], list[Exception | None]]:
    """The readable texts, and per input the error that kept it out (or ``None``)."""
    texts: list[str] = []
    errors: list[Exception | None] = []
    for value in inputs:
        try:
            # Checked here, per input: the core refuses a whole batch for one text
            # that is not valid Unicode, which would fail every input with it.
            texts.append(check_text(read(value)))
        except Exception as exc:
            errors.append(exc)
        else:
            errors.append(None)
    return texts, errors


def _merge(errors: list[Exception | None], answers: Sequence[T] | Exception) -> list[T | Exception]:
    served = iter(() if isinstance(answers, Exception) else answers)
    out: list[T | Exception] = []
    for error in errors:
        if error is not None:
            out.append(error)
        elif isinstance(answers, Exception):
            out.append(answers)
        else:
            out.append(next(served))
    return out


def _ask_all(
    inputs: Sequence[Any], read: Callable[[Any], str], ask: Callable[[list[str]], list[T]]
) -> list[T | Exception]:
    """Read every input, ask once for all readable texts; a failure stays with its input.

    An input whose text cannot be read gets its own error; an error of the whole
    query (the encoder failed) is given to every input that reached it.
    """
    texts, errors = _read_all(inputs, read)
    answers: list[T] | Exception = []
    if texts:
        try:
            answers = ask(texts)
        except Exception as exc:
            answers = exc
    return _merge(errors, answers)


async def _aask_all(
    inputs: Sequence[Any],
    read: Callable[[Any], str],
    ask: Callable[[list[str]], Awaitable[list[T]]],
) -> list[T | Exception]:
    """Like :func:`_ask_all`, awaiting the answers."""
    texts, errors = _read_all(inputs, read)
    answers: list[T] | Exception = []
    if texts:
        try:
            answers = await ask(texts)
        except Exception as exc:
            answers = exc
    return _merge(errors, answers)


def rank_batch(
    router: AdaptiveRouter, inputs: Sequence[Any], read: Callable[[Any], str], k: int
) -> list[list[RouteMatch] | Exception]:
    """Every input's ``k`` best routes with one ``query_top_k_batch`` call (none for an
    input nearest to a negative example, as :func:`rank_one`)."""

    def ask(texts: list[str]) -> list[list[RouteMatch]]:
        return [
            _unless_negative(r) for r in router.query_top_k_batch(texts, k, respect_negatives=True)
        ]

    return _ask_all(inputs, read, ask)


async def _asubmit(
    router: AdaptiveRouter, texts: list[str], submit: Callable[[list[str]], Awaitable[list[T]]]
) -> list[T]:
    # One submission per run, each all or nothing: a batch larger than the worker's
    # queue is served (as the sync batch is), not refused as one that can never fit.
    worker = router.worker
    out: list[T] = []
    runs = runs_by_cost(texts, worker.max_queue_cost, worker.max_queue_size, cost=router.text_cost)
    for run in runs:
        out.extend(await submit(run))
    return out


async def arank_batch(
    router: AdaptiveRouter,
    inputs: Sequence[Any],
    read: Callable[[Any], str],
    k: int,
    timeout: float | None = None,
) -> list[list[RouteMatch] | Exception]:
    """Like :func:`rank_batch`, through the router's batching worker (a submission per
    run of inputs its queue can hold whole)."""

    async def ask(texts: list[str]) -> list[list[RouteMatch]]:
        ranked = await _asubmit(
            router,
            texts,
            lambda run: router.aquery_top_k_batch(run, k, timeout=timeout, respect_negatives=True),
        )
        return [_unless_negative(r) for r in ranked]

    return await _aask_all(inputs, read, ask)


def classify_batch(
    router: AdaptiveRouter,
    inputs: Sequence[Any],
    read: Callable[[Any], str],
    threshold: float | None = None,
) -> list[RouteMatch | Exception]:
    """Route every input with one encoder call; a failure stays with its input.

    ``threshold`` replaces the router's thresholds for this call (see :func:`at_threshold`);
    an input nearest to a negative example still routes nowhere (``negative_example``).
    """
    if threshold is None:
        return _ask_all(inputs, read, router.query_batch)
    cut = threshold

    def ask(texts: list[str]) -> list[RouteMatch]:
        ranked = router.query_top_k_batch(texts, _DECISION_K, respect_negatives=True)
        return _decisions(router, ranked, cut)

    return _ask_all(inputs, read, ask)


async def aclassify_batch(
    router: AdaptiveRouter,
    inputs: Sequence[Any],
    read: Callable[[Any], str],
    timeout: float | None = None,
    threshold: float | None = None,
) -> list[RouteMatch | Exception]:
    """Like :func:`classify_batch`, through the router's batching worker."""

    async def ask(texts: list[str]) -> list[RouteMatch]:
        return await _asubmit(router, texts, lambda run: router.aquery_batch(run, timeout=timeout))

    if threshold is None:
        return await _aask_all(inputs, read, ask)
    cut = threshold

    async def ask_at_threshold(texts: list[str]) -> list[RouteMatch]:
        ranked = await _asubmit(
            router,
            texts,
            lambda run: router.aquery_top_k_batch(
                run, _DECISION_K, timeout=timeout, respect_negatives=True
            ),
        )
        return _decisions(router, ranked, cut)

    return await _aask_all(inputs, read, ask_at_threshold)
