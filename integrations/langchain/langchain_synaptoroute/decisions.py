"""A local, zero-token LangChain decision model: ``Choice`` questions answered by similarity.

``SynaptorouteDecisions`` is a ``langchain_core.decisions.BaseDecisionModel``, so it
can serve as the ``classifier`` of LangChain's ``ModelRouterMiddleware`` in place of a
provider's decision model (paid per token, called over the network).

Why a version guard: decision models exist only in langchain-core 1.8 and later (a beta
API there), while this package supports langchain-core 1.0 and later. Only this
module needs them, and the package imports it on first use, so ``import
langchain_synaptoroute`` keeps working on older cores; importing
``SynaptorouteDecisions`` there raises an ``ImportError`` that names the release needed.

Why one module over 400 lines: the decision model, its per-question router cache, the
reading of states and criteria and the answer they make are only this class's; split,
every part would import ``langchain_core.decisions`` behind the same guard.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

try:
    from langchain_core.decisions import (
        BaseDecisionModel,
        Choice,
        ChoiceAnswer,
        ClassifierResponse,
        Question,
        State,
    )
except ImportError as exc:  # langchain-core < 1.8
    from importlib.metadata import version as _version

    raise ImportError(
        "SynaptorouteDecisions needs langchain-core >= 1.8 (its decision models, "
        f"langchain_core.decisions); langchain-core {_version('langchain-core')} is "
        "installed: pip install -U 'langchain-core>=1.8'"
    ) from exc

from langchain_core.embeddings import Embeddings
from pydantic import ConfigDict, JsonValue, PrivateAttr, TypeAdapter
from typing_extensions import override

from synaptoroute import AdaptiveRouter, EncoderProtocol, InvalidInputError, Route, RouteMatch
from synaptoroute.checks import (
    _empty_to_the_model,
    check_count,
    check_seconds,
    check_utterances,
    is_number,
    reads_nothing_of,
    refuse_misspelt_key,
)
from synaptoroute.forking import APP, APP_CACHE, hold_across_fork
from synaptoroute.router import RouterCache, counted_build

from ._inputs import extract_text
from ._tools import named_utterances
from .embeddings import as_encoder

__all__ = ["DEFAULT_TEMPERATURE", "SynaptorouteDecisions", "UnsupportedQuestionError"]

#: The softmax temperature of ``probabilities``. On the support-desk labels of
#: tests/unit_tests/test_decisions.py (descriptions only, no utterances) the bundled
#: model scores the right label 0.15 to 0.35 above the next on clear requests, and
#: only 0.03 to 0.04 above it on texts that fit two labels (a refund for a crash, an
#: invoice's wrong price) or none ("hello"). At 0.05 the clear ones give their label
#: 0.94 to 1.0 of the mass and the mixed ones 0.47 to 0.69, so the distribution says
#: which answers are close; at 0.1 a clear lead of 0.15 kept only 0.74, at 0.02 a lead
#: of 0.03 already took 0.81.
DEFAULT_TEMPERATURE = 0.05


class UnsupportedQuestionError(InvalidInputError, NotImplementedError):
    """A question this decision model does not answer (a ``Noul``, ``Score`` or ``Box``).

    An ``InvalidInputError`` (so a ``ValueError``), as every refusal of this package
    is, and a ``NotImplementedError``, as LangChain models refuse a feature they lack:
    either ``except`` catches it. ``BaseDecisionModel.invoke`` reports it to the
    callbacks as the run's error and raises it as it is.
    """


#: A question's cache key: its labels with their criteria (as JSON), in label order.
_Key = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _Asked:
    """One ``Choice`` question as this model answers it: its labels, in the question's
    order, and its cache key (the labels with their criteria, in label order)."""

    labels: tuple[str, ...]
    key: _Key
    criteria: Mapping[str, JsonValue]

    @property
    def routed(self) -> tuple[str, ...]:
        """The labels in the key's order: route ``i`` of the question's router is
        ``routed[i]``, whatever order the question (or the one that built the
        cached router) listed them in."""
        return tuple(label for label, _ in self.key)


class SynaptorouteDecisions(BaseDecisionModel):
    """Answers ``Choice`` questions locally, by similarity, with no model call and no tokens.

    Each label of a ``Choice`` question (a key of its ``criteria``) is a route of an
    ``AdaptiveRouter`` whose examples are the label as a phrase joined with its
    description (``"needs_refund": "Refund requests"`` -> ``"needs refund: Refund
    requests"``, as a tool's name and description make its route), then
    ``utterances[label]``. A description that is no str (JSON) is flattened to text;
    ``None`` is none. The state's text is embedded once per question and compared
    with every label's examples; the best label is the choice.

    The question's ``instructions`` are not read: similarity cannot follow an
    instruction, so the labels, their criteria and the utterances carry the meaning.

    Answers (``ChoiceAnswer``):

    - ``choice``: the label whose examples are most similar to the text.
    - ``probabilities``: a softmax of every label's similarity score divided by
      ``temperature``; every label appears, and they sum to 1. They rank the labels as
      their scores do, but they are not calibrated probabilities.
    - ``confidence``: the chosen label's similarity score (the router's ``score``,
      the value a router's ``threshold`` is compared with; 0.5 by default), clipped to
      ``[0, 1]``. Not a probability either: a threshold on it is a similarity cut.

    Only ``Choice`` questions are answered. A ``Noul`` (yes/no), a ``Score`` (an
    ordinal rubric) or a ``Box`` (an image region) needs a model that reads the
    question's ``instructions``: they raise :class:`UnsupportedQuestionError` (an
    ``InvalidInputError`` and a ``NotImplementedError``), before anything is embedded.
    In particular this class must not be ``AutoModeMiddleware``'s risk classifier: it
    asks ``Noul`` questions, whose answer similarity cannot give.

    The state: a str; a message (its text); a list of messages (the last human
    message's text); a dict with ``"messages"`` (an agent's state, read the same way).
    Anything else raises ``InvalidInputError`` naming what is accepted, and so does a
    text the model reads nothing of (blank, or only zero-width characters).

    A question's router is built (its examples embedded) the first time it is asked
    and kept for the next ones: ``max_question_sets`` distinct label sets (with their
    criteria), the least recently used dropped first. ``ainvoke`` embeds the text on
    each router's batching worker (waiting at most ``timeout`` seconds), off the event
    loop; a first build runs in a thread.

    Example:
        ```python
        from langchain.agents import create_agent
        from langchain.agents.middleware import ModelChoice, ModelRouterMiddleware
        from langchain_synaptoroute import SynaptorouteDecisions

        router = ModelRouterMiddleware(
            choices={
                "fast": ModelChoice(model=small_model, criteria="Simple, short questions"),
                "powerful": ModelChoice(model=big_model, criteria="Complex reasoning"),
            },
            instructions="Choose the least costly model suited to the task.",
            classifier=SynaptorouteDecisions(
                utterances={"powerful": ["prove that the algorithm terminates"]}
            ),
        )
        agent = create_agent(small_model, middleware=[router])
        ```
    """

    model: str = ""
    """The model id reported to tracing (default ``synaptoroute:<encoder model id>``)."""
    utterances: Mapping[str, Sequence[str]] | None = None
    """Label -> example texts, for any question that has that label."""
    encoder: Any = None
    """The encoder given (a synaptoroute encoder or a LangChain ``Embeddings``)."""
    temperature: float = DEFAULT_TEMPERATURE
    """Softmax temperature of ``probabilities`` (> 0; lower is peakier)."""
    max_question_sets: int = 16
    """How many distinct questions keep their routers (least recently used dropped)."""
    timeout: float | None = None
    """Seconds an async call may wait for a router's batching worker (``None``: no bound)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    _encoder: EncoderProtocol = PrivateAttr()
    _cache: _QuestionRouters = PrivateAttr()

    def __init__(
        self,
        *,
        utterances: Mapping[str, Sequence[str]] | None = None,
        encoder: EncoderProtocol | Embeddings | Any | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
        max_question_sets: int = 16,
        timeout: float | None = None,
        model: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Configure the decision model.

        Args:
            utterances: label -> example texts (a list of strings per label); a label
                of any question. A key close to a label of an asked question that has
                no utterances, and no question has had as a label, is taken for a
                typo of it: that question raises ``InvalidInputError``.
            encoder: a synaptoroute encoder or a LangChain ``Embeddings``; default
                the bundled local model, shared by the process.
            temperature: softmax temperature of ``probabilities`` (> 0).
            max_question_sets: the most questions whose routers are kept.
            timeout: seconds an async call may wait for a batching worker.
            model: the id reported to tracing; default
                ``synaptoroute:<encoder model id>``.
            **kwargs: passed to the ``Runnable`` (``name``...).

        Raises:
            InvalidInputError: ``temperature`` is not a finite number > 0,
                ``max_question_sets`` is under 1, ``timeout`` is no number of seconds
                > 0, or ``utterances`` is not ``{label: [text, ...]}``.
        """
        if not is_number(temperature) or not 0 < temperature < math.inf:
            msg = f"temperature must be a finite number > 0, got {temperature!r}"
            raise InvalidInputError(msg)
        max_question_sets = check_count(max_question_sets, "max_question_sets", 1)
        if timeout is not None:
            timeout = check_seconds(timeout, "timeout")
        model_encoder = as_encoder(encoder)
        checked = check_utterances(utterances, reads_nothing=reads_nothing_of(model_encoder))
        # Through a dict: the fields are this class's, unknown to the base __init__.
        fields: dict[str, Any] = {
            "model": model or f"synaptoroute:{model_encoder.model_id}",
            "utterances": checked,
            "encoder": encoder,
            "temperature": float(temperature),
            "max_question_sets": max_question_sets,
            "timeout": timeout,
        }
        super().__init__(**fields, **kwargs)
        self._encoder = model_encoder
        self._cache = _shared_cache(encoder, model_encoder, checked, max_question_sets)

    def __setattr__(self, name: str, value: Any) -> None:
        # The routers are built from these when a question is first asked, and they
        # are checked once, here: a later assignment would be half applied, unchecked.
        if name in _FIXED:
            msg = (
                f"{name} is fixed when a SynaptorouteDecisions is made (its routers are "
                "built from the settings): make a new one"
            )
            raise InvalidInputError(msg)
        super().__setattr__(name, value)

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in type(self).model_fields}

    @override
    def model_copy(
        self, *, update: Mapping[str, Any] | None = None, deep: bool = False
    ) -> SynaptorouteDecisions:
        """A copy built from the fields and ``update``, checked as the constructor
        checks them (pydantic's copy skipped the checks and kept the routers of the old
        utterances). It shares the encoder (``deep`` too, as LangChain's models share
        their clients) and, with the same utterances, the routers."""
        return type(self)(**{**self._fields(), **(update or {})})

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> SynaptorouteDecisions:
        return self.model_copy()

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from the fields in the new process (the routers hold locks and
        # threads): the encoder pickles, the routers are built again when asked.
        return (_rebuilt, (type(self), self._fields()))

    @property
    def _provider(self) -> str:
        return "synaptoroute"

    # -- questions and the state ------------------------------------------------------
    def _asked(self, questions: Mapping[str, Question]) -> dict[str, _Asked]:
        """Each question as asked; any that is no ``Choice`` refuses the whole request."""
        if not questions:
            msg = "the request has no questions"
            raise InvalidInputError(msg)
        questions = {
            # A question written as a dict ({"type": "choice", ...}) is read as one.
            qid: _QUESTION.validate_python(q) if isinstance(q, Mapping) else q
            for qid, q in questions.items()
        }
        asked = {}
        for qid, question in questions.items():
            if not isinstance(question, Choice):
                kind = getattr(question, "type", type(question).__name__)
                msg = (
                    f"question {qid!r} is a {kind!r} question: SynaptorouteDecisions "
                    "answers Choice questions only, by similarity to each label's "
                    "criteria and utterances; a yes/no (noul), ordinal (score) or image "
                    "(box) judgment needs a model that reads the instructions"
                )
                raise UnsupportedQuestionError(msg)
            asked[qid] = _Asked(
                labels=tuple(question.criteria),
                key=tuple(
                    sorted(
                        (label, json.dumps(value, ensure_ascii=False))
                        for label, value in question.criteria.items()
                    )
                ),
                criteria=question.criteria,
            )
        return asked

    def _text(self, state: State) -> str:
        """The state's text, or ``InvalidInputError`` when there is none to compare."""
        text = state_text(state)
        if reads_nothing_of(self._encoder)(text):
            raise _empty_to_the_model("the state's text", text)
        return text

    # -- the routers, one per question ---------------------------------------------
    def _routes(self, asked: _Asked) -> list[Route]:
        """One route per label: the label as a phrase with its description, then its
        utterances (see :func:`~langchain_synaptoroute._tools.named_utterances`)."""
        skip = reads_nothing_of(self._encoder)
        routes: list[Route] = []
        for label in asked.routed:
            description = _readable(asked.criteria[label])
            # A description the model reads nothing of is no text to route by.
            examples = named_utterances(
                label,
                "" if skip(description) else description,
                (self.utterances or {}).get(label, ()),
                what="Choice label",
            )
            # Named by the label's place in the key's order (see _Asked.routed): a
            # label may be any str (spaces around it, control characters), a route
            # name may not.
            routes.append(Route(name=str(len(routes)), utterances=examples))
        return routes

    def _router_for(self, asked: _Asked, *, busy: bool = False) -> AdaptiveRouter:
        """The router of ``asked``: cached, or built (its examples embedded) and cached
        (``busy``: counted as an async call under way on it, see ``_QuestionRouters``)."""
        router = self._cache.get(asked.key, busy=busy)
        if router is not None:
            return router
        self._cache.check_labels(self.utterances or {}, asked.labels)
        routes = self._routes(asked)

        def made() -> AdaptiveRouter:
            router = AdaptiveRouter(self._encoder)
            router.add_routes(routes)
            return router

        return self._cache.build(asked.key, made, size=self._cache.size, busy=busy)

    # -- BaseDecisionModel ------------------------------------------------------------
    @override
    def _classify(self, state: State, questions: dict[str, Question]) -> ClassifierResponse:
        asked = self._asked(questions)
        text = self._text(state)
        ranked = {
            qid: self._router_for(a).query_top_k(text, len(a.labels)) for qid, a in asked.items()
        }
        return self._response(asked, ranked)

    @override
    async def _aclassify(self, state: State, questions: dict[str, Question]) -> ClassifierResponse:
        asked = self._asked(questions)
        text = self._text(state)

        async def rank(a: _Asked) -> list[RouteMatch]:
            router = self._cache.get(a.key, busy=True)
            if router is None:  # a first build embeds every label's examples
                router = await counted_build(
                    functools.partial(self._router_for, a, busy=True), self._cache.release
                )
            try:
                return await router.aquery_top_k(text, len(a.labels), timeout=self.timeout)
            finally:
                self._cache.release(router)

        ranked = await asyncio.gather(*(rank(a) for a in asked.values()))
        return self._response(asked, dict(zip(asked, ranked, strict=True)))

    def _response(
        self, asked: Mapping[str, _Asked], ranked: Mapping[str, Sequence[RouteMatch]]
    ) -> ClassifierResponse:
        answers: dict[str, Any] = {
            qid: choice_answer(a.labels, a.routed, ranked[qid], self.temperature)
            for qid, a in asked.items()
        }
        # No tokens: usage stays None, so nothing is recorded as token usage.
        return ClassifierResponse(model=self.model, answers=answers, usage=None)


class _QuestionRouters(RouterCache[_Key, AdaptiveRouter]):
    """The routers of the questions asked (the core's cache), its size, and the
    labels seen; both locks are held across a fork, so a child never inherits one
    held."""

    def __init__(self, size: int, *, keep: Any = None) -> None:
        super().__init__(threading.Lock(), threading.Lock())
        self.size = size
        self._keep = keep  # the encoder as given, kept alive with the cache (its id keys it)
        # Every label asked so far that has utterances (see refuse_misspelt_key).
        self._seen: set[str] = set()
        hold_across_fork(self, APP, "build_lock")
        hold_across_fork(self, APP_CACHE, "lock")

    def check_labels(self, utterances: Mapping[str, Sequence[str]], labels: Sequence[str]) -> None:
        """Refuse an ``utterances`` key that looks like a misspelt label of ``labels``."""
        with self.lock:
            refuse_misspelt_key(utterances, self._seen, labels, "choice label")


#: The routers of every instance made with one encoder, the same utterances and the
#: same ``max_question_sets``: LangChain makes an instance per call to apply
#: ``configurable_fields`` (a temperature, a timeout), which otherwise embedded every
#: label again on each call.
_SHARED: weakref.WeakValueDictionary[tuple[int, str, int], _QuestionRouters] = (
    weakref.WeakValueDictionary()
)
_SHARED_LOCK = threading.Lock()


def _shared_cache(
    given: Any, encoder: EncoderProtocol, utterances: Mapping[str, Sequence[str]], size: int
) -> _QuestionRouters:
    """The router cache for these settings, shared while an instance holds it."""
    # The encoder as given (a LangChain Embeddings is wrapped anew by each instance);
    # the cache keeps it alive, so its id is not reused while the entry exists.
    key = (id(encoder if given is None else given), json.dumps(utterances, sort_keys=True), size)
    with _SHARED_LOCK:
        cache = _SHARED.get(key)
        if cache is None:
            cache = _SHARED[key] = _QuestionRouters(size, keep=given)
        return cache


def _rebuilt(cls: type[SynaptorouteDecisions], fields: dict[str, Any]) -> SynaptorouteDecisions:
    return cls(**fields)


def choice_answer(
    labels: Sequence[str],
    routed: Sequence[str],
    ranked: Sequence[RouteMatch],
    temperature: float,
) -> ChoiceAnswer:
    """A ``Choice`` question's answer from its labels ranked by a router (every label,
    best first): the best label, a softmax of the scores over ``temperature`` for every
    label (in the question's order, ``labels``), and the best score clipped to
    ``[0, 1]`` as the confidence. Route ``i`` is the label ``routed[i]``.

    Shared by the sync and async paths, which differ only in how they rank.
    """
    # The router holds one route per label and ranks them all (k is their number).
    scores = {routed[int(str(m.candidate))]: m.score for m in ranked}
    best = ranked[0]
    top = best.score
    # Shifted by the best score, so that no exponent overflows.
    weights = {label: math.exp((scores[label] - top) / temperature) for label in labels}
    total = math.fsum(weights.values())
    return ChoiceAnswer(
        type="choice",
        choice=routed[int(str(best.candidate))],
        probabilities={label: weight / total for label, weight in weights.items()},
        confidence=min(max(top, 0.0), 1.0),
    )


def state_text(state: Any) -> str:
    """The text a decision is made on: a str as is; a message's text; the last human
    message's text of a list of messages (or message dicts); a dict's ``"messages"``
    (read as the Runnables read their input, :func:`~langchain_synaptoroute._inputs.extract_text`).

    Raises:
        InvalidInputError: any other state, or messages without a human one.
    """
    try:
        return extract_text(state, "messages", remedy=_ACCEPTED)
    except TypeError as exc:  # the Runnables' advice (text_extractor=) is not ours
        msg = f"cannot read a text from a state of type {type(state).__name__}. {_ACCEPTED}"
        raise InvalidInputError(msg) from exc


_QUESTION: TypeAdapter[Question] = TypeAdapter(Question)

#: The settings fixed at construction (see ``SynaptorouteDecisions.__setattr__``).
_FIXED = frozenset(
    {"model", "utterances", "encoder", "temperature", "max_question_sets", "timeout"}
)

_ACCEPTED = (
    "SynaptorouteDecisions takes a str, a message, a list of messages (the last "
    'human message is read) or a dict with "messages"'
)

#: LangChain's standard media blocks: no text to compare with.
_MEDIA = frozenset({"image", "audio", "video", "file"})


def _readable(value: JsonValue) -> str:
    """A label's criteria as text: a str as is; JSON flattened (``key: value`` pairs
    and list items joined with ``"; "``); ``None`` and media blocks give nothing."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        if value.get("type") in _MEDIA:
            return ""
        parts = []
        for key, item in value.items():
            text = _readable(item)
            if text:
                parts.append(f"{key}: {text}")
        return "; ".join(parts)
    if isinstance(value, list):
        return "; ".join(text for text in map(_readable, value) if text)
    return str(value)  # a number or a bool
